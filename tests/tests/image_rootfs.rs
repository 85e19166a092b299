//! Two containers' root file systems from one image are private copies: a write in one is not
//! seen by the other nor by the shared layer, and removal leaves no mount behind.
mod image_support;

use flotilla_agent::image::ImageError;
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use image_support::{entries, mounts_under, open_store, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rootfs_of_one_image_are_isolated() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (record, _) = pull(&store, &reference).await;
    let record = record.expect("pull");
    let layer = store.layer_path(&record.layers[0].diff_id).expect("layer");
    let _cleanup = image_support::RootfsCleanup {
        store: store.clone(),
        ids: vec!["ctr-a", "ctr-b"],
    };

    let a = store.create_rootfs(&reference, "ctr-a").expect("rootfs a");
    let b = store.create_rootfs(&reference, "ctr-b").expect("rootfs b");
    assert_ne!(a, b);
    assert!(a.join("bin/busybox").is_file() && b.join("bin/busybox").is_file());

    std::fs::write(a.join("tmp/only-in-a"), b"a").expect("write in a");
    std::fs::write(a.join("etc/passwd"), b"changed\n").expect("modify in a");
    std::fs::remove_file(a.join("bin/sh")).expect("delete in a");
    assert!(!b.join("tmp/only-in-a").exists(), "b sees a's new file");
    assert_ne!(
        std::fs::read(b.join("etc/passwd")).expect("passwd b"),
        b"changed\n"
    );
    assert!(
        b.join("bin/sh").symlink_metadata().is_ok(),
        "b lost a's deleted file"
    );
    assert!(
        !layer.join("tmp/only-in-a").exists(),
        "write reached the shared layer"
    );
    assert_ne!(
        std::fs::read(layer.join("etc/passwd")).expect("passwd layer"),
        b"changed\n"
    );

    let err = store
        .create_rootfs(&reference, "ctr-a")
        .expect_err("duplicate");
    assert!(matches!(err, ImageError::RootfsExists { .. }), "{err:?}");
    let err = store
        .create_rootfs(&reference, "../escape")
        .expect_err("bad id");
    assert!(
        matches!(err, ImageError::InvalidContainerId { .. }),
        "{err:?}"
    );

    let store_root = dir.path().join("store");
    assert_eq!(mounts_under(&store_root).len(), 2);
    store.remove_rootfs("ctr-a").expect("remove a");
    store.remove_rootfs("ctr-b").expect("remove b");
    store.remove_rootfs("ctr-b").expect("remove is idempotent");
    assert!(mounts_under(&store_root).is_empty(), "mounts left");
    assert!(entries(&store_root.join("snapshots")).is_empty());
    assert!(
        layer.join("bin/sh").symlink_metadata().is_ok(),
        "layer damaged"
    );
}

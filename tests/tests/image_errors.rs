//! Pull failures are typed and say what failed: invalid reference, unknown tag or repository,
//! unreachable registry, and a corrupted blob in the registry (digest mismatch, nothing kept).
mod image_support;

use flotilla_agent::image::ImageError;
use flotilla_tests::registry::{free_port, push_busybox, Registry, RegistryOptions};
use image_support::{entries, open_store, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_and_repository_are_not_found() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    push_busybox(&registry, "busybox:latest").expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());

    for name in ["busybox:nosuchtag", "nosuchrepo:latest"] {
        let reference = registry.reference(name);
        let (res, _) = pull(&store, &reference).await;
        let err = res.expect_err("must fail");
        assert!(matches!(err, ImageError::RemoteNotFound { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&reference) && text.contains("404"), "{text}");
    }
    assert!(store.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reference_names_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    for bad in ["Busybox:Latest", "busybox@sha256:1234", "a b", ""] {
        let (res, _) = pull(&store, bad).await;
        let err = res.expect_err("must fail");
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_is_unreachable_with_its_address() {
    let mut registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");
    registry.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (res, _) = pull(&store, &reference).await;
    let err = res.expect_err("must fail");
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&registry.addr()), "{err}");

    // A port nobody listens on.
    let addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let (res, _) = pull(&store, &format!("{addr}/x:1")).await;
    let err = res.expect_err("must fail");
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_a_digest_mismatch_and_nothing_is_kept() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");
    // Learn the layer digest with a pull into a scratch store.
    let scratch = tempfile::tempdir().expect("tempdir");
    let layer = {
        let s = open_store(scratch.path());
        let (rec, _) = pull(&s, &reference).await;
        rec.expect("pull").layers[0].digest.clone()
    };
    // Flip bytes in the registry's copy of the layer (same length).
    let path = registry.blob_data_path(&layer).expect("blob path");
    let mut data = std::fs::read(&path).expect("read blob");
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &data).expect("corrupt blob");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (res, _) = pull(&store, &reference).await;
    let err = res.expect_err("must fail");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    let text = err.to_string();
    eprintln!("corrupt: {text}");
    assert!(text.contains(&layer), "{text}");
    let root = dir.path().join("store");
    let hex = layer.trim_start_matches("sha256:").to_string();
    assert!(
        !entries(&root.join("blobs/sha256")).contains(&hex),
        "corrupt blob kept"
    );
    assert!(entries(&root.join("ingest")).is_empty(), "ingest leftovers");
    assert!(
        entries(&root.join("layers")).is_empty(),
        "layer unpacked from corrupt data"
    );
    assert!(store.list().is_empty());
}

/// Unmounts on drop.
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_reported_and_partial_files_are_removed() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=512k"),
    )
    .expect("mount a small tmpfs (needs root)");
    let _guard = TmpfsGuard(small.clone());

    let store = open_store(&small);
    let (res, _) = pull(&store, &reference).await;
    let err = res.expect_err("busybox does not fit in 512k");
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("disk full"), "{err}");
    let root = small.join("store");
    assert!(
        entries(&root.join("ingest")).is_empty(),
        "partial download kept"
    );
    assert!(
        entries(&root.join("layers")).is_empty(),
        "partial layer kept"
    );
    assert!(store.list().is_empty());
    drop(store);

    // Room for the blob but not for the unpacked layer.
    let medium = dir.path().join("medium");
    std::fs::create_dir(&medium).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &medium,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1600k"),
    )
    .expect("mount a tmpfs");
    let _guard2 = TmpfsGuard(medium.clone());
    let store = open_store(&medium);
    let (res, _) = pull(&store, &reference).await;
    let err = res.expect_err("unpacked busybox does not fit in 1600k");
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err:?}");
    let root = medium.join("store");
    assert!(
        entries(&root.join("layers")).is_empty(),
        "partial layer kept"
    );
    assert!(entries(&root.join("ingest")).is_empty());
    assert!(store.list().is_empty());
}

//! Removing images keeps what other images and containers still use; gc drops the rest.
mod image_support;

use flotilla_tests::registry::{push_layout, Registry, RegistryOptions};
use image_support::{entries, layer_tar, open_store, pull, Blobs, Comp, Entry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_gc_keep_shared_content_and_drop_the_rest() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    // A = [base], B = [base, extra]: the base layer blob is shared.
    let base = layer_tar(&[
        Entry::Dir("etc"),
        Entry::File("etc/os-release", b"ID=test\n"),
    ]);
    let extra = layer_tar(&[Entry::Dir("app"), Entry::File("app/bin", b"app\n")]);
    let mut blobs = Blobs::default();
    let (a, _) = blobs.image(&[(base.clone(), Comp::Gzip)], &["/bin/sh"], false);
    let (b, _) = blobs.image(
        &[(base, Comp::Gzip), (extra, Comp::Gzip)],
        &["/app/bin"],
        false,
    );
    let layout_dir = tempfile::tempdir().expect("tempdir");
    let layout = blobs.write_layout(layout_dir.path(), &[(&a, "a"), (&b, "b")]);
    let ref_a = push_layout(&registry, &layout, "a", "gc/a:1").expect("push a");
    let ref_b = push_layout(&registry, &layout, "b", "gc/b:1").expect("push b");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let rec_a = pull(&store, &ref_a).await.0.expect("pull a");
    let rec_b = pull(&store, &ref_b).await.0.expect("pull b");
    let _cleanup = image_support::RootfsCleanup {
        store: store.clone(),
        ids: vec!["gc-c1"],
    };
    assert_eq!(rec_a.layers[0], rec_b.layers[0], "base layer shared");
    let root = dir.path().join("store");
    let blob_dir = root.join("blobs/sha256");
    let layer_dir = root.join("layers");
    assert_eq!(
        entries(&blob_dir).len(),
        6,
        "2 manifests, 2 configs, 2 layers"
    );
    assert_eq!(entries(&layer_dir).len(), 2);

    // gc with everything referenced does nothing.
    let report = store.gc().expect("gc");
    assert!(report.deleted_blobs.is_empty() && report.deleted_layers.is_empty());

    // rm A: only A's manifest and config go.
    let removed = store.rm_report(&ref_a);
    let mut expected = vec![rec_a.manifest_digest.clone(), rec_a.config_digest.clone()];
    expected.sort();
    assert_eq!(removed.0, expected);
    assert!(removed.1.is_empty(), "shared layer deleted");
    assert_eq!(entries(&blob_dir).len(), 4);
    assert_eq!(entries(&layer_dir).len(), 2);

    // A container pins B's layers through rm B and gc.
    let rootfs = store.create_rootfs(&ref_b, "gc-c1").expect("rootfs");
    let removed = store.rm_report(&ref_b);
    assert_eq!(removed.0.len(), 4, "B's blobs all go: {:?}", removed.0);
    assert!(
        removed.1.is_empty(),
        "pinned layers deleted: {:?}",
        removed.1
    );
    assert!(store.list().is_empty());
    let report = store.gc().expect("gc");
    assert!(report.deleted_layers.is_empty(), "gc took pinned layers");
    assert!(rootfs.join("app/bin").is_file());

    // An orphan blob (e.g. from an interrupted pull) is collected.
    let orphan = b"orphan".to_vec();
    let orphan_digest = image_support::sha256(&orphan);
    std::fs::write(blob_dir.join(&orphan_digest[7..]), &orphan).expect("write orphan");

    store.remove_rootfs("gc-c1").expect("remove rootfs");
    let report = store.gc().expect("gc");
    assert_eq!(report.deleted_layers.len(), 2);
    assert_eq!(report.deleted_blobs, vec![orphan_digest]);
    assert!(entries(&blob_dir).is_empty());
    assert!(entries(&layer_dir).is_empty());
    assert!(entries(&root.join("snapshots")).is_empty());
}

trait RmReport {
    fn rm_report(&self, r: &str) -> (Vec<String>, Vec<String>);
}

impl RmReport for flotilla_agent::image::ImageStore {
    fn rm_report(&self, r: &str) -> (Vec<String>, Vec<String>) {
        let report = self.remove(r).expect("rm");
        (report.deleted_blobs, report.deleted_layers)
    }
}

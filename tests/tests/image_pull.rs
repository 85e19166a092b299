//! Pull busybox from a real registry: content lands verified and unpacked, a re-pull downloads
//! nothing, and two names of the same content store it once.
mod image_support;

use flotilla_agent::image::PullProgress;
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use image_support::{entries, open_store, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_then_repull_is_a_noop_and_layers_are_shared() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let first = push_busybox(&registry, "busybox:latest").expect("push busybox");
    let second = push_busybox(&registry, "tools/bb:v1").expect("push busybox again");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());

    // First pull downloads and unpacks.
    let (record, events) = pull(&store, &first).await;
    let record = record.expect("pull busybox");
    assert_eq!(record.reference, first);
    assert_eq!(record.layers.len(), 1);
    assert!(
        matches!(
            events.first(),
            Some(PullProgress::Resolved { layers: 1, .. })
        ),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::LayerStarted { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::LayerDone { .. })));
    assert!(
        matches!(events.last(), Some(PullProgress::Done { downloaded_bytes, .. }) if *downloaded_bytes > 0)
    );
    let layer = store
        .layer_path(&record.layers[0].diff_id)
        .expect("layer path");
    let busybox = layer.join("bin/busybox");
    assert!(busybox.is_file(), "{} missing", busybox.display());
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).expect("sh link"),
        std::path::Path::new("/bin/busybox")
    );
    let tmp = std::fs::metadata(layer.join("tmp")).expect("tmp");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&tmp.permissions()) & 0o7777,
        0o1777
    );

    // Re-pull: nothing downloaded, record unchanged.
    let (again, events) = pull(&store, &first).await;
    let again = again.expect("re-pull");
    assert_eq!(again, record);
    assert!(
        !events.iter().any(|e| matches!(
            e,
            PullProgress::LayerStarted { .. } | PullProgress::LayerBytes { .. }
        )),
        "re-pull downloaded something: {events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::LayerAlreadyPresent { .. })));
    assert!(matches!(
        events.last(),
        Some(PullProgress::Done {
            downloaded_bytes: 0,
            ..
        })
    ));

    // A second name of the same image: stored once.
    let (other, events) = pull(&store, &second).await;
    let other = other.expect("pull second name");
    assert_eq!(other.manifest_digest, record.manifest_digest);
    assert!(!events
        .iter()
        .any(|e| matches!(e, PullProgress::LayerStarted { .. })));
    let store_root = dir.path().join("store");
    assert_eq!(
        entries(&store_root.join("layers")).len(),
        1,
        "layer stored once"
    );
    assert_eq!(
        entries(&store_root.join("blobs/sha256")).len(),
        3,
        "manifest, config, layer"
    );
    assert!(entries(&store_root.join("ingest")).is_empty());

    // Both names list; short names and ids resolve.
    let names: Vec<String> = store.list().into_iter().map(|r| r.reference).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&first) && names.contains(&second));
    let by_id = store
        .get(&record.config_digest[7..19])
        .expect("by short id");
    assert_eq!(by_id.config_digest, record.config_digest);
    let by_digest = store
        .get(&format!(
            "{}/busybox@{}",
            registry.addr(),
            record.manifest_digest
        ))
        .expect("by digest");
    assert_eq!(by_digest.manifest_digest, record.manifest_digest);

    // Removing by id is refused while the image has two names.
    let err = store
        .remove(&record.config_digest)
        .expect_err("ambiguous removal");
    assert!(err.to_string().contains(&second), "{err}");

    // Pull by digest works too.
    let (by_digest, _) = pull(
        &store,
        &format!("{}/busybox@{}", registry.addr(), record.manifest_digest),
    )
    .await;
    assert_eq!(
        by_digest.expect("pull by digest").manifest_digest,
        record.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_the_work_safely() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let a = push_busybox(&registry, "busybox:a").expect("push");
    let b = push_busybox(&registry, "busybox:b").expect("push");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let gc_store = store.clone();
    let gc = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            gc_store.gc().expect("gc during pulls");
        }
    });
    let (ra, rb, ra2) = tokio::join!(pull(&store, &a), pull(&store, &b), pull(&store, &a));
    gc.await.expect("gc task");
    let (ra, rb, ra2) = (ra.0.expect("a"), rb.0.expect("b"), ra2.0.expect("a again"));
    assert_eq!(ra.manifest_digest, rb.manifest_digest);
    assert_eq!(ra, ra2);
    assert!(store
        .layer_path(&ra.layers[0].diff_id)
        .expect("layer")
        .join("bin/busybox")
        .is_file());
    let root = dir.path().join("store");
    assert_eq!(entries(&root.join("layers")).len(), 1);
    assert!(entries(&root.join("ingest")).is_empty());
    // Nothing referenced was collected by the concurrent gc.
    let report = store.gc().expect("gc");
    assert!(report.deleted_blobs.is_empty() && report.deleted_layers.is_empty());
    assert_eq!(entries(&root.join("blobs/sha256")).len(), 3);
}

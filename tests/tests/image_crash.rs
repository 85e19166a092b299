//! Crash safety: a store left with an interrupted download, a half-unpacked layer, an
//! interrupted record write, an interrupted layer removal and a snapshot pin without snapshot
//! opens clean, and the pull finishes the work.
mod image_support;

use std::fs;

use flotilla_agent::image::PullProgress;
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use image_support::{entries, open_store, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_a_crash_is_clean_and_pull_completes() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");

    // Learn the image and keep its layer blob from a scratch store.
    let scratch = tempfile::tempdir().expect("tempdir");
    let (layer_digest, layer_blob, diff_id) = {
        let s = open_store(scratch.path());
        let rec = pull(&s, &reference).await.0.expect("pull");
        let l = &rec.layers[0];
        let blob = fs::read(s.blob_path(&l.digest).expect("path")).expect("read blob");
        (l.digest.clone(), blob, l.diff_id.clone())
    };

    // The state a crash mid-pull leaves: the layer blob committed, a partial download in
    // ingest/, a half-unpacked layer under a temp name, a temp record file, a half-removed
    // layer, a pin of a snapshot that never got mounted; no record.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open_store(dir.path()));
    let root = dir.path().join("store");
    fs::write(
        root.join("blobs/sha256").join(&layer_digest[7..]),
        &layer_blob,
    )
    .expect("blob");
    fs::write(
        root.join("ingest/blob-partial"),
        &layer_blob[..layer_blob.len() / 3],
    )
    .expect("ingest");
    let half = root.join("layers/.tmp-unpack-crashed");
    fs::create_dir_all(half.join("bin")).expect("half layer");
    fs::write(half.join("bin/busybox"), b"trunc").expect("half file");
    let removing = root.join(format!("layers/.tmp-rm-{}-1", &diff_id[7..]));
    fs::create_dir_all(removing.join("etc")).expect("half removed layer");
    fs::write(root.join(".tmp-records"), b"{\"version\":1,").expect("temp record");
    fs::write(
        root.join("snapshots/.pin-ghost.json"),
        br#"{"image":"x","layers":[]}"#,
    )
    .expect("dangling pin");

    let store = open_store(dir.path());
    let recovery = store.recovery().clone();
    assert_eq!(
        (recovery.ingest_files, recovery.layer_temps, recovery.other),
        (1, 2, 2),
        "{recovery:?}"
    );
    assert!(
        entries(&root.join("ingest")).is_empty(),
        "ingest not cleaned"
    );
    assert!(
        entries(&root.join("layers")).is_empty(),
        "temp layers not cleaned"
    );
    assert!(
        !root.join(".tmp-records").exists(),
        "temp record not cleaned"
    );
    assert!(
        entries(&root.join("snapshots")).is_empty(),
        "dangling pin kept"
    );
    assert!(store.list().is_empty());

    // The pull finishes: the layer blob is reused, the layer gets unpacked, the record written.
    let (record, events) = pull(&store, &reference).await;
    let record = record.expect("pull after crash");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PullProgress::LayerStarted { .. })),
        "layer blob downloaded again: {events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::LayerDone { .. })));
    assert_eq!(record.layers[0].diff_id, diff_id);
    assert!(store
        .layer_path(&diff_id)
        .expect("layer")
        .join("bin/busybox")
        .is_file());
    drop(store);

    // And the completed store reopens as it was.
    let store = open_store(dir.path());
    assert_eq!(store.get(&reference).expect("record"), record);
}

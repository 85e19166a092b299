//! Push a pulled image to a second registry (under auth), skip what is already there on a
//! second push, and pull it back from there with identical digests.
mod image_support;

use flotilla_agent::image::{Credentials, ImageError, PullOptions, PushOptions, PushProgress};
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use image_support::{open_store, pull, pull_with};
use std::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_second_registry_and_pull_back() {
    let source = Registry::start(RegistryOptions::default()).expect("start source registry");
    let target = Registry::start(RegistryOptions::with_basic_auth("pusher", "pw"))
        .expect("start target registry");
    let reference = push_busybox(&source, "busybox:latest").expect("push busybox");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (original, _) = pull(&store, &reference).await;
    let original = original.expect("pull from source");
    let copy = target.reference("mirror/busybox:1");
    store.tag(&reference, &copy).expect("tag for the target");

    let events = Mutex::new(Vec::new());
    let report = |p: PushProgress| events.lock().expect("events").push(p);

    // Without credentials the target refuses.
    let err = store
        .push(&copy, &PushOptions::default(), &report)
        .await
        .expect_err("anonymous push must fail");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("requires credentials"), "{err}");

    let creds = Credentials::Basic {
        username: "pusher".into(),
        password: "pw".into(),
    };
    let opts = PushOptions {
        credentials: creds.clone(),
        ..Default::default()
    };
    events.lock().expect("events").clear();
    let digest = store.push(&copy, &opts, &report).await.expect("push");
    assert_eq!(digest, original.manifest_digest);
    let first: Vec<PushProgress> = std::mem::take(&mut *events.lock().expect("events"));
    let pushed = first
        .iter()
        .filter(|e| matches!(e, PushProgress::BlobPushed { .. }))
        .count();
    assert_eq!(pushed, 2, "layer and config: {first:?}");
    assert!(matches!(
        first.last(),
        Some(PushProgress::ManifestPushed { .. })
    ));

    // Second push: every blob already there.
    store.push(&copy, &opts, &report).await.expect("push again");
    let second: Vec<PushProgress> = std::mem::take(&mut *events.lock().expect("events"));
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, PushProgress::BlobPushed { .. })),
        "{second:?}"
    );
    assert_eq!(
        second
            .iter()
            .filter(|e| matches!(e, PushProgress::BlobExists { .. }))
            .count(),
        2
    );

    // Pull back into a fresh store.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = open_store(dir2.path());
    let (back, _) = pull_with(
        &store2,
        &copy,
        &PullOptions {
            credentials: creds,
            ..Default::default()
        },
    )
    .await;
    let back = back.expect("pull back");
    assert_eq!(back.manifest_digest, original.manifest_digest);
    assert_eq!(back.config_digest, original.config_digest);
    assert_eq!(back.layers, original.layers);
}

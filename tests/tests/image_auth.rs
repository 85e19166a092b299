//! Pull from a registry behind basic auth: the right password works, a wrong one or none gives
//! an unauthorized error that says so and keeps nothing.
mod image_support;

use flotilla_agent::image::{Credentials, ImageError, PullOptions};
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use image_support::{entries, open_store, pull, pull_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_accepts_the_password_and_rejects_others() {
    let registry = Registry::start(RegistryOptions::with_basic_auth("tester", "s3cret"))
        .expect("start registry with auth");
    let reference = push_busybox(&registry, "private/bb:1").expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());

    // Wrong password.
    let wrong = PullOptions {
        credentials: Credentials::Basic {
            username: "tester".into(),
            password: "nope".into(),
        },
        ..Default::default()
    };
    let (res, _) = pull_with(&store, &reference, &wrong).await;
    let err = res.expect_err("wrong password must fail");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains(&registry.addr()),
        "{text}"
    );
    assert!(text.contains("credentials"), "{text}");
    eprintln!("wrong password: {text}");

    // No credentials at all.
    let (res, _) = pull(&store, &reference).await;
    let err = res.expect_err("anonymous must fail");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(store.list().is_empty());
    assert!(entries(&dir.path().join("store/blobs/sha256")).is_empty());

    // Right password.
    let right = PullOptions {
        credentials: Credentials::Basic {
            username: "tester".into(),
            password: "s3cret".into(),
        },
        ..Default::default()
    };
    let (res, _) = pull_with(&store, &reference, &right).await;
    let record = res.expect("pull with the right password");
    assert_eq!(record.reference, reference);
    assert!(store
        .layer_path(&record.layers[0].diff_id)
        .expect("layer")
        .join("bin/busybox")
        .is_file());

    // Credentials never show in debug output.
    assert!(!format!("{right:?}").contains("s3cret"));
}

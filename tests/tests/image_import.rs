//! Import rootfs tarballs (plain and gzip) as single-layer images with config changes, and
//! create runtime bundles from them: process from the image config, overrides, errors.
mod image_support;

use flotilla_agent::image::{bundle, ConfigChange, ImageError};
use image_support::{compress, layer_tar, mounts_under, open_store, sha256, Comp, Entry};

fn rootfs_tar() -> Vec<u8> {
    layer_tar(&[
        Entry::Dir("bin"),
        Entry::File("bin/app", b"#!/bin/sh\necho app\n"),
        Entry::Dir("srv"),
        Entry::File("srv/data", b"data\n"),
    ])
}

#[test]
fn import_plain_and_gzip_rootfs_with_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let tar = rootfs_tar();
    let plain = dir.path().join("rootfs.tar");
    std::fs::write(&plain, &tar).expect("write tar");
    let changes: Vec<ConfigChange> = [
        r#"ENTRYPOINT ["/bin/app"]"#,
        "CMD=--serve --port 80",
        "ENV=FOO=bar",
        "WORKDIR=/srv",
        "USER=1000:1000",
    ]
    .iter()
    .map(|c| ConfigChange::parse(c).expect("change"))
    .collect();
    let record = store
        .import(&plain, "imported/app:1", &changes)
        .expect("import");
    assert_eq!(record.reference, "docker.io/imported/app:1");
    assert_eq!(record.layers.len(), 1);
    assert_eq!(
        record.layers[0].diff_id,
        sha256(&tar),
        "plain tar: diff id is the blob digest"
    );
    assert_eq!(record.layers[0].digest, sha256(&tar));
    let layer = store.layer_path(&record.layers[0].diff_id).expect("layer");
    assert_eq!(
        std::fs::read(layer.join("srv/data")).expect("data"),
        b"data\n"
    );

    let config = store.inspect("imported/app:1").expect("inspect").config;
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/app"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["--serve", "--port", "80"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(config["config"]["User"], "1000:1000");
    let env = config["config"]["Env"].as_array().expect("env").clone();
    assert!(env.contains(&serde_json::json!("FOO=bar")), "{env:?}");
    assert!(env
        .iter()
        .any(|e| e.as_str().is_some_and(|s| s.starts_with("PATH="))));
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([sha256(&tar)])
    );

    // gzip: blob is the compressed file, diff id the uncompressed tar.
    let gz = dir.path().join("rootfs.tar.gz");
    std::fs::write(&gz, compress(&tar, Comp::Gzip)).expect("write gz");
    let record_gz = store
        .import(&gz, "imported/app:gz", &[])
        .expect("import gzip");
    assert_eq!(record_gz.layers[0].diff_id, sha256(&tar));
    assert_ne!(record_gz.layers[0].digest, sha256(&tar));
    assert!(record_gz.layers[0].media_type.ends_with("+gzip"));
    assert_eq!(
        image_support::entries(&dir.path().join("store/layers")).len(),
        1,
        "same content, one layer"
    );

    // Bad input.
    let err = store
        .import(&dir.path().join("missing.tar"), "x:1", &[])
        .expect_err("missing file");
    assert!(err.to_string().contains("missing.tar"), "{err}");
    let err = store.import(&plain, "Bad Name", &[]).expect_err("bad ref");
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
}

#[test]
fn bundle_from_an_imported_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let tar = dir.path().join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar()).expect("write tar");
    let changes: Vec<ConfigChange> = [
        r#"ENTRYPOINT ["/bin/app"]"#,
        "CMD=--default",
        "ENV=FOO=bar",
        "WORKDIR=/srv",
        "USER=1000:100",
    ]
    .iter()
    .map(|c| ConfigChange::parse(c).expect("change"))
    .collect();
    store.import(&tar, "app:1", &changes).expect("import");
    let _cleanup = image_support::RootfsCleanup {
        store: store.clone(),
        ids: vec!["c1", "c2", "c3"],
    };

    let bundle_dir = dir.path().join("bundles/c1");
    let config_path = bundle::create(&store, "app:1", "c1", &bundle_dir, None).expect("bundle");
    assert_eq!(
        config_path,
        bundle_dir
            .canonicalize()
            .expect("canon")
            .join("config.json")
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("read")).expect("json");
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/bin/app", "--default"])
    );
    assert_eq!(spec["process"]["cwd"], "/srv");
    assert_eq!(spec["process"]["user"]["uid"], 1000);
    assert_eq!(spec["process"]["user"]["gid"], 100);
    assert_eq!(spec["process"]["terminal"], false);
    assert!(spec["process"]["env"]
        .as_array()
        .expect("env")
        .contains(&serde_json::json!("FOO=bar")));
    let rootfs = std::path::PathBuf::from(spec["root"]["path"].as_str().expect("root path"));
    assert!(rootfs.is_absolute());
    assert_eq!(
        std::fs::read(rootfs.join("srv/data")).expect("data"),
        b"data\n"
    );
    assert!(
        spec["linux"]["namespaces"].is_array(),
        "runtime defaults missing"
    );

    // Args replace Cmd, keep Entrypoint.
    let config2 = bundle::create(
        &store,
        "app:1",
        "c2",
        &dir.path().join("bundles/c2"),
        Some(vec!["--other".into()]),
    )
    .expect("bundle with args");
    let spec2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config2).expect("read")).expect("json");
    assert_eq!(
        spec2["process"]["args"],
        serde_json::json!(["/bin/app", "--other"])
    );

    // Same id twice is refused; a named user is refused before anything is mounted.
    let err = bundle::create(&store, "app:1", "c1", &dir.path().join("bundles/x"), None)
        .expect_err("duplicate id");
    assert!(matches!(err, ImageError::RootfsExists { .. }), "{err:?}");
    assert!(
        !dir.path().join("bundles/x").exists(),
        "failed bundle left its dir"
    );
    store
        .import(
            &tar,
            "named:1",
            &[ConfigChange::parse("USER=nobody").expect("change")],
        )
        .expect("import");
    let err = bundle::create(
        &store,
        "named:1",
        "c3",
        &dir.path().join("bundles/c3"),
        None,
    )
    .expect_err("no command");
    assert!(matches!(err, ImageError::NoCommand { .. }), "{err:?}");
    let err = bundle::create(
        &store,
        "named:1",
        "c3",
        &dir.path().join("bundles/c3"),
        Some(vec!["/bin/app".into()]),
    )
    .expect_err("named user");
    assert!(matches!(err, ImageError::UnsupportedUser { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody"), "{err}");

    bundle::remove(&store, "c1").expect("remove c1");
    bundle::remove(&store, "c2").expect("remove c2");
    bundle::remove(&store, "c2").expect("remove is idempotent");
    assert!(!bundle_dir.exists(), "empty bundle dir kept");
    assert!(mounts_under(&dir.path().join("store")).is_empty());
    assert!(image_support::entries(&dir.path().join("store/snapshots")).is_empty());
}

//! Save images as an OCI layout archive and load them into another store; load what skopeo
//! writes (bare tag: a name must be given); refuse archives that are not OCI layouts.
mod image_support;

use std::process::Command;

use flotilla_agent::image::ImageError;
use flotilla_tests::registry::{
    busybox_image_layout, push_busybox, require_binary, Registry, RegistryOptions,
};
use image_support::{entries, open_store, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_then_load_round_trips() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let reference = push_busybox(&registry, "busybox:latest").expect("push busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (original, _) = pull(&store, &reference).await;
    let original = original.expect("pull");
    store.tag(&reference, "local/bb:2").expect("tag");

    let archive = dir.path().join("images.tar");
    store
        .save(&[reference.as_str(), "local/bb:2"], &archive)
        .expect("save");
    // Nothing but the archive next to it (no temp files).
    assert_eq!(
        entries(dir.path()),
        vec!["images.tar".to_string(), "store".to_string()]
    );
    let listing = Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .expect("tar tf");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for needed in ["oci-layout", "index.json", "blobs/sha256/"] {
        assert!(
            listing.lines().any(|l| l == needed),
            "{needed} missing:\n{listing}"
        );
    }

    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = open_store(dir2.path());
    let loaded = store2.load(&archive, None).expect("load");
    assert_eq!(loaded.len(), 2);
    let names: Vec<String> = store2.list().into_iter().map(|r| r.reference).collect();
    assert!(names.contains(&reference), "{names:?}");
    assert!(
        names.contains(&"docker.io/local/bb:2".to_string()),
        "{names:?}"
    );
    let back = store2.get(&reference).expect("loaded record");
    assert_eq!(back.manifest_digest, original.manifest_digest);
    assert_eq!(back.config_digest, original.config_digest);
    assert_eq!(back.layers, original.layers);
    assert!(store2
        .layer_path(&back.layers[0].diff_id)
        .expect("layer")
        .join("bin/busybox")
        .is_file());
    // Loading again is harmless.
    store2.load(&archive, None).expect("load again");
    assert_eq!(store2.list().len(), 2);
}

#[test]
fn skopeo_archive_needs_a_name_and_loads_with_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = busybox_image_layout(dir.path()).expect("busybox layout");
    let skopeo = require_binary("skopeo", "skopeo").expect("skopeo");
    let archive = dir.path().join("skopeo.tar");
    let out = Command::new(skopeo)
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("oci-archive:{}:latest", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = open_store(dir.path());
    let err = store.load(&archive, None).expect_err("bare tag");
    assert!(matches!(err, ImageError::InvalidArchive { .. }), "{err:?}");
    assert!(err.to_string().contains("--name"), "{err}");
    let loaded = store
        .load(&archive, Some("busybox:skopeo"))
        .expect("load with a name");
    assert_eq!(loaded[0].reference, "docker.io/library/busybox:skopeo");
    assert_eq!(store.list().len(), 1);

    // Not an OCI layout: refused, and nothing stays behind.
    let bogus = dir.path().join("bogus.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&bogus).expect("create"));
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "manifest.json", &b"[]"[..])
        .expect("append");
    b.into_inner().expect("finish");
    let err = store.load(&bogus, None).expect_err("docker legacy archive");
    assert!(err.to_string().contains("index.json"), "{err}");
    assert!(entries(&dir.path().join("store/ingest")).is_empty());
}

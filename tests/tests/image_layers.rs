//! Multi-layer images built by code, pulled from a real registry: gzip, zstd and plain layers,
//! overlay whiteouts and opaque directories, an image index (linux/amd64 picked, the other
//! platform never fetched), and Docker schema 2 media types.
mod image_support;

use std::fs;

use flotilla_agent::image::{ImageError, PullProgress};
use flotilla_tests::registry::{Registry, RegistryOptions};
use image_support::{layer_tar, mounts_under, open_store, pull, Blobs, Comp, Entry};

fn three_layers() -> Vec<(Vec<u8>, Comp)> {
    let base = layer_tar(&[
        Entry::Dir("etc"),
        Entry::File("etc/hostname", b"base\n"),
        Entry::Dir("a"),
        Entry::File("a/gone", b"removed by layer 2\n"),
        Entry::File("a/kept", b"kept\n"),
        Entry::Dir("d"),
        Entry::File("d/old1", b"1"),
        Entry::File("d/old2", b"2"),
        Entry::Symlink("link", "/etc/hostname"),
    ]);
    let top = layer_tar(&[
        Entry::Whiteout("a/gone"),
        Entry::Opaque("d"),
        Entry::File("d/new", b"new\n"),
        Entry::File("etc/hostname", b"top\n"),
    ]);
    let plain = layer_tar(&[Entry::Dir("z"), Entry::File("z/plain", b"plain layer\n")]);
    vec![(base, Comp::Gzip), (top, Comp::Zstd), (plain, Comp::None)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_zstd_plain_layers_with_whiteouts_through_an_index() {
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let mut blobs = Blobs::default();
    let (amd64, diff_ids) = blobs.image(&three_layers(), &["/bin/true"], false);
    // An arm64 image whose layer must never be downloaded.
    let arm_layer = layer_tar(&[Entry::File("arm", b"arm64 only")]);
    let (arm64, _) = blobs.image(&[(arm_layer.clone(), Comp::Gzip)], &["/arm"], false);
    let index = blobs.index(
        &[(&arm64, "linux", "arm64"), (&amd64, "linux", "amd64")],
        false,
    );
    let layout_dir = tempfile::tempdir().expect("tempdir");
    let layout = blobs.write_layout(layout_dir.path(), &[(&index, "multi")]);
    let reference = copy_all(&registry, &layout, "multi", "layers/multi:1");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (record, events) = pull(&store, &reference).await;
    let _cleanup = image_support::RootfsCleanup {
        store: store.clone(),
        ids: vec!["layers-c1"],
    };
    let record = record.expect("pull multi-layer image through the index");
    assert_eq!(
        record.manifest_digest, amd64.digest,
        "linux/amd64 manifest picked"
    );
    assert_eq!(record.index_digest.as_deref(), Some(index.digest.as_str()));
    assert_eq!(
        record
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
        diff_ids
    );
    let started: Vec<&PullProgress> = events
        .iter()
        .filter(|e| matches!(e, PullProgress::LayerStarted { .. }))
        .collect();
    assert_eq!(started.len(), 3, "{events:?}");
    let arm_digest = image_support::sha256(&image_support::compress(&arm_layer, Comp::Gzip));
    assert!(
        !store.blob_path(&arm_digest).expect("path").exists(),
        "arm64 layer fetched"
    );

    // The merged view applies the whiteouts.
    let rootfs = store
        .create_rootfs(&reference, "layers-c1")
        .expect("create rootfs");
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).ok();
    assert_eq!(read("etc/hostname").as_deref(), Some("top\n"));
    assert_eq!(read("a/kept").as_deref(), Some("kept\n"));
    assert!(!rootfs.join("a/gone").exists(), "whiteout not applied");
    assert_eq!(
        image_support::entries(&rootfs.join("d")),
        vec!["new"],
        "opaque dir not applied"
    );
    assert_eq!(read("z/plain").as_deref(), Some("plain layer\n"));
    assert_eq!(
        fs::read_link(rootfs.join("link")).expect("link"),
        std::path::Path::new("/etc/hostname")
    );
    store.remove_rootfs("layers-c1").expect("remove rootfs");
    assert!(mounts_under(&dir.path().join("store")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_manifest_and_list_pull() {
    // skopeo's oci: transport ignores Docker media types, so the image goes in through our own
    // load + push, and the manifest list by a plain PUT.
    let registry = Registry::start(RegistryOptions::default()).expect("start registry");
    let mut blobs = Blobs::default();
    let layers = vec![(
        layer_tar(&[Entry::Dir("bin"), Entry::File("bin/tool", b"#!/bin/sh\n")]),
        Comp::Gzip,
    )];
    let (manifest, _) = blobs.image(&layers, &["/bin/tool"], true);
    let list = blobs.index(&[(&manifest, "linux", "amd64")], true);
    let work = tempfile::tempdir().expect("tempdir");
    let archive = work.path().join("docker.tar");
    let single = registry.reference("docker/single:1");
    let mut ann = std::collections::BTreeMap::new();
    ann.insert("io.containerd.image.name".to_string(), single.clone());
    blobs.write_archive(&archive, &[(&manifest, ann)]);

    let src = tempfile::tempdir().expect("tempdir");
    let src_store = open_store(src.path());
    let loaded = src_store.load(&archive, None).expect("load docker archive");
    assert_eq!(
        loaded[0].manifest_media_type,
        image_support::DOCKER_MANIFEST
    );
    let nothing = |_p: flotilla_agent::image::PushProgress| {};
    src_store
        .push(&single, &Default::default(), &nothing)
        .await
        .expect("push docker schema 2");
    // The list's repository needs the manifest too.
    let list_child = registry.reference("docker/list:child");
    src_store.tag(&single, &list_child).expect("tag");
    src_store
        .push(&list_child, &Default::default(), &nothing)
        .await
        .expect("push to the list repository");
    let list_bytes = blobs.0.get(&list.digest).expect("list blob").clone();
    let status = image_support::http_put(
        &registry.addr(),
        "/v2/docker/list/manifests/1",
        image_support::DOCKER_LIST,
        &list_bytes,
    );
    assert_eq!(status, 201, "PUT manifest list");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (record, _) = pull(&store, &single).await;
    let record = record.expect("pull docker schema 2");
    assert_eq!(record.manifest_digest, manifest.digest);
    assert_eq!(record.manifest_media_type, image_support::DOCKER_MANIFEST);
    assert_eq!(
        record.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert!(store
        .layer_path(&record.layers[0].diff_id)
        .expect("layer")
        .join("bin/tool")
        .is_file());

    let (listed, _) = pull(&store, &registry.reference("docker/list:1")).await;
    let listed = listed.expect("pull through a docker manifest list");
    assert_eq!(listed.manifest_digest, manifest.digest);
    assert_eq!(listed.index_digest.as_deref(), Some(list.digest.as_str()));

    // A platform missing from an index is a clear error.
    let mut blobs2 = Blobs::default();
    let (arm, _) = blobs2.image(&layers, &["/x"], false);
    let arm_only = blobs2.index(&[(&arm, "linux", "arm64")], false);
    let layout2_dir = tempfile::tempdir().expect("tempdir");
    let layout2 = blobs2.write_layout(layout2_dir.path(), &[(&arm_only, "arm")]);
    let arm_ref = copy_all(&registry, &layout2, "arm", "docker/armonly:1");
    let (res, _) = pull(&store, &arm_ref).await;
    let err = res.expect_err("no amd64");
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

/// `skopeo copy --all` of a layout tag (indexes included).
fn copy_all(registry: &Registry, layout: &std::path::Path, tag: &str, name: &str) -> String {
    let skopeo = flotilla_tests::registry::require_binary("skopeo", "skopeo").expect("skopeo");
    let reference = registry.reference(name);
    let out = std::process::Command::new(skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

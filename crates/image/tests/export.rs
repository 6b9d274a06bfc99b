//! Exporters checked by skopeo, umoci and a real dockerd 20.10 `docker load`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use kbuild_image::{
    export::{
        docker_archive, docker_archive_file, oci_layout_dir, oci_layout_tar, oci_layout_tar_file,
    },
    tarball::TarOptions,
    Compression, ContentStore, Descriptor, DescriptorPlatform, Digest, Error, Index,
    ANNOTATION_REF_NAME,
};

fn skopeo(args: &[&str]) -> String {
    common::run(
        Command::new("skopeo")
            .args(["--insecure-policy"])
            .args(args),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn image(dir: &Path, compression: Compression) -> (ContentStore, Descriptor) {
    let store = ContentStore::open(dir.join("store")).unwrap();
    let tree = dir.join("tree");
    if !tree.exists() {
        common::make_tree(&tree);
    }
    let m = common::build_image(&store, &tree, compression, &["/hello"]);
    (store, m)
}

#[test]
fn oci_layout_dir_is_read_by_skopeo_and_umoci() {
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = image(dir.path(), Compression::Gzip(6));
    let dest = dir.path().join("out/layout");
    oci_layout_dir(&store, &manifest, &dest, Some("v1")).unwrap();
    assert_eq!(
        fs::read(dest.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = json(&fs::read_to_string(dest.join("index.json")).unwrap());
    assert_eq!(
        index["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
        "v1"
    );
    assert_eq!(index["manifests"][0]["digest"], manifest.digest.to_string());
    assert_eq!(fs::read_dir(dest.join("blobs/sha256")).unwrap().count(), 3);

    let layout = format!("oci:{}:v1", dest.display());
    let inspect = json(&skopeo(&["inspect", &layout]));
    assert_eq!(inspect["Digest"], manifest.digest.to_string());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    // skopeo copy verifies every blob's digest while copying.
    let copy = dir.path().join("copy");
    skopeo(&["copy", &layout, &format!("dir:{}", copy.display())]);
    assert!(copy.join("manifest.json").is_file());

    // umoci unpacks the layer: the tar entries are what we put in.
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:v1", dest.display())])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read(rootfs.join("hello")).unwrap(),
        b"hello from kbuild\n"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/app/conf")).unwrap(),
        b"key=value\n"
    );
    assert_eq!(
        fs::read_link(rootfs.join("etc/hello-link")).unwrap(),
        Path::new("../hello")
    );
    assert_eq!(
        fs::read(rootfs.join("hello-hard")).unwrap(),
        b"hello from kbuild\n"
    );

    // Exporting again replaces the directory.
    fs::write(dest.join("stray"), b"x").unwrap();
    oci_layout_dir(&store, &manifest, &dest, Some("v2")).unwrap();
    assert!(!dest.join("stray").exists());
    json(&skopeo(&["inspect", &format!("oci:{}:v2", dest.display())]));
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["layout"], "no temp dirs left");
}

#[test]
fn multi_platform_index_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (store, amd64) = image(dir.path(), Compression::Gzip(6));
    fs::write(dir.path().join("tree/hello"), b"arm64 hello\n").unwrap();
    let arm64 = common::build_image(
        &store,
        &dir.path().join("tree"),
        Compression::Zstd(3),
        &["/hello"],
    );
    let mut index = Index::new();
    for (m, arch) in [(&amd64, "amd64"), (&arm64, "arm64")] {
        index.push_manifest(
            m.clone(),
            &DescriptorPlatform {
                os: "linux".into(),
                architecture: arch.into(),
                ..Default::default()
            },
        );
    }
    let root = index.write(&store).unwrap();
    let dest = dir.path().join("multi");
    oci_layout_dir(&store, &root, &dest, Some("latest")).unwrap();
    assert_eq!(
        fs::read_dir(dest.join("blobs/sha256")).unwrap().count(),
        1 + 3 + 3
    );
    let raw = json(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:latest", dest.display()),
    ]));
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(raw["manifests"][1]["platform"]["architecture"], "arm64");
    let copy = dir.path().join("copy");
    skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:latest", dest.display()),
        &format!("oci:{}:latest", copy.display()),
    ]);
    // The tar variant holds the same files, deterministically.
    let tar_a = oci_layout_tar(
        &store,
        &root,
        Vec::new(),
        Some("latest"),
        &TarOptions::default(),
    )
    .unwrap();
    let tar_b = oci_layout_tar(
        &store,
        &root,
        Vec::new(),
        Some("latest"),
        &TarOptions::default(),
    )
    .unwrap();
    assert_eq!(tar_a, tar_b);
    let file = dir.path().join("multi.tar");
    oci_layout_tar_file(&store, &root, &file, Some("latest"), &TarOptions::default()).unwrap();
    assert_eq!(fs::read(&file).unwrap(), tar_a);
    let listing = common::run(Command::new("tar").arg("-tf").arg(&file));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(names[names.len() - 2..], ["index.json", "oci-layout"]);
    let inspect = json(&skopeo(&[
        "inspect",
        "--override-arch",
        "arm64",
        &format!("oci-archive:{}:latest", file.display()),
    ]));
    // skopeo picks the arm64 manifest from the index: its layer is listed.
    let arm64_layer = kbuild_image::Manifest::parse(&store.read(&arm64.digest).unwrap())
        .unwrap()
        .layers[0]
        .digest;
    assert_eq!(inspect["Layers"][0], arm64_layer.to_string());
}

#[test]
fn failed_export_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = image(dir.path(), Compression::Gzip(6));
    let parsed = kbuild_image::Manifest::parse(&store.read(&manifest.digest).unwrap()).unwrap();
    let layer = parsed.layers[0].digest;
    fs::remove_file(store.path(&layer)).unwrap();
    let out = dir.path().join("out");
    let err = oci_layout_dir(&store, &manifest, &out.join("layout"), None).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { digest, .. } if digest == layer),
        "{err}"
    );
    let err = docker_archive_file(
        &store,
        &manifest,
        &[],
        &out.join("img.tar"),
        &TarOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(
        fs::read_dir(&out).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing half-written"
    );
    // A docker archive needs a manifest, not an index.
    let mut index = Index::new();
    index.manifests.push(manifest.clone());
    let root = index.write(&store).unwrap();
    let err = docker_archive(&store, Vec::new(), &root, &[], &TarOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pick the platform"), "{err}");
    let missing = Descriptor::new(
        kbuild_image::MEDIA_TYPE_OCI_MANIFEST,
        Digest::of(b"none"),
        4,
    );
    assert!(oci_layout_tar(&store, &missing, Vec::new(), None, &TarOptions::default()).is_err());
}

#[test]
fn docker_archive_is_read_by_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = image(dir.path(), Compression::Gzip(6));
    let file = dir.path().join("img.tar");
    let tags = [
        "example.test:5000/team/app:1.0".to_string(),
        "app:latest".to_string(),
    ];
    docker_archive_file(&store, &manifest, &tags, &file, &TarOptions::default()).unwrap();
    let listing = common::run(Command::new("tar").arg("-tf").arg(&file));
    assert!(listing.lines().any(|l| l == "manifest.json"), "{listing}");
    let manifest_json = common::run(
        Command::new("tar")
            .arg("-xOf")
            .arg(&file)
            .arg("manifest.json"),
    );
    let m = json(&manifest_json);
    assert_eq!(m[0]["RepoTags"][0], tags[0]);
    let index = json(&common::run(
        Command::new("tar").arg("-xOf").arg(&file).arg("index.json"),
    ));
    assert_eq!(
        index["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
        "1.0"
    );
    assert_eq!(
        index["manifests"][1]["annotations"][ANNOTATION_REF_NAME],
        "latest"
    );
    let inspect = json(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", file.display()),
    ]));
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    // skopeo reads the layers back through manifest.json and checks them.
    let copy = dir.path().join("copy");
    skopeo(&[
        "copy",
        &format!("docker-archive:{}:app:latest", file.display()),
        &format!("oci:{}:x", copy.display()),
    ]);
    // Deterministic with SOURCE_DATE_EPOCH.
    let opts = TarOptions {
        source_date_epoch: Some(1_700_000_000),
    };
    let a = docker_archive(&store, Vec::new(), &manifest, &tags, &opts).unwrap();
    let b = docker_archive(&store, Vec::new(), &manifest, &tags, &opts).unwrap();
    assert_eq!(a, b);
}

#[test]
fn docker_load_and_run_in_dockerd_20_10() {
    let Some(busybox) = kbuild_testkit::fixtures::busybox_binary("amd64") else {
        return;
    };
    let daemon = match kbuild_testkit::dockerd::Dockerd::start() {
        Ok(d) => d,
        Err(e) => {
            kbuild_testkit::fixtures::skip_or_fail(&format!("no private dockerd: {e}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::copy(&busybox, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/cat")).unwrap();
    fs::write(tree.join("hello"), b"hello from kbuild\n").unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    for (compression, tag) in [
        (Compression::Gzip(6), "kbuild-test/gzip:1"),
        (Compression::None, "kbuild-test/plain:1"),
    ] {
        let manifest = common::build_image(&store, &tree, compression, &["/bin/cat", "/hello"]);
        let file = dir
            .path()
            .join(format!("{}.tar", tag.replace(['/', ':'], "-")));
        docker_archive_file(
            &store,
            &manifest,
            &[tag.to_string()],
            &file,
            &TarOptions::default(),
        )
        .unwrap();
        let loaded = daemon
            .docker_ok(["load", "-i", &file.display().to_string()])
            .unwrap();
        assert!(loaded.contains(tag), "{loaded}");
        let inspect = json(&daemon.docker_ok(["image", "inspect", tag]).unwrap());
        let config = kbuild_image::ImageConfig::parse(
            &store
                .read(
                    &kbuild_image::Manifest::parse(&store.read(&manifest.digest).unwrap())
                        .unwrap()
                        .config
                        .digest,
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            inspect[0]["RootFS"]["Layers"][0],
            config.rootfs.diff_ids[0].to_string()
        );
        let out = daemon
            .docker_ok(["run", "--rm", "--network", "none", tag])
            .unwrap();
        assert_eq!(out, "hello from kbuild\n");
    }
}

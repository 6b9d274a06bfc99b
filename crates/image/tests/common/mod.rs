//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use kbuild_image::{
    tarball::{DeterministicTar, TarOptions},
    Compression, ContentStore, Descriptor, History, ImageConfig, LayerWriter, Manifest,
    MEDIA_TYPE_OCI_CONFIG,
};

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256sum` of a file as `sha256:<hex>`.
pub fn sha256sum(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    format!("sha256:{}", out.split_whitespace().next().unwrap_or(""))
}

/// A small tree: a file, a nested file, a symlink, a hard link.
pub fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/app")).unwrap();
    std::fs::write(dir.join("hello"), b"hello from kbuild\n").unwrap();
    std::fs::write(dir.join("etc/app/conf"), b"key=value\n").unwrap();
    std::os::unix::fs::symlink("../hello", dir.join("etc/hello-link")).unwrap();
    std::fs::hard_link(dir.join("hello"), dir.join("hello-hard")).unwrap();
}

/// Builds a one-layer image of `tree` in `store` and returns the manifest
/// descriptor.
pub fn build_image(
    store: &ContentStore,
    tree: &Path,
    compression: Compression,
    cmd: &[&str],
) -> Descriptor {
    let mut tar = DeterministicTar::new(
        LayerWriter::new(store, compression).unwrap(),
        TarOptions {
            source_date_epoch: Some(1_700_000_000),
        },
    );
    tar.append_dir_tree(tree, "").unwrap();
    let layer = tar.finish().unwrap().finish().unwrap();
    let mut config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        created: Some("2023-11-14T22:13:20Z".into()),
        ..ImageConfig::default()
    };
    config.config = Some(kbuild_image::ContainerConfig {
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        env: Some(vec!["PATH=/bin".into()]),
        ..Default::default()
    });
    config.push_layer(
        layer.diff_id,
        History {
            created_by: Some("COPY . / # buildkit".into()),
            comment: Some("buildkit.dockerfile.v0".into()),
            ..Default::default()
        },
    );
    let config = config.write(store, MEDIA_TYPE_OCI_CONFIG).unwrap();
    Manifest::new(config, vec![layer.descriptor])
        .write(store)
        .unwrap()
}

//! OCI / Docker documents: canonical bytes, round trips of Docker extension
//! fields, parsing both flavours (golden files under tests/golden/).

mod common;

use std::path::Path;
use std::process::Command;

use kbuild_image::{
    canonical_json, ContainerConfig, ContentStore, Descriptor, DescriptorPlatform, Digest,
    Document, HealthConfig, ImageConfig, Index, Manifest, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
    )
    .unwrap()
}

/// Python's json module with sorted keys and compact separators: an
/// independent canonical encoder to compare against.
fn python_canonical(input: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.json");
    std::fs::write(&path, input).unwrap();
    common::run(Command::new("python3").args([
        "-c",
        "import json,sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1])), sort_keys=True, separators=(',',':'), ensure_ascii=False))",
    ]).arg(&path))
    .into_bytes()
}

#[test]
fn docker_config_round_trips_extension_fields() {
    let input = golden("docker-config.json");
    let config = ImageConfig::parse(&input).unwrap();
    let c = config.config.as_ref().unwrap();
    assert_eq!(c.user.as_deref(), Some("app:app"));
    assert_eq!(
        c.shell.as_ref().unwrap(),
        &["/bin/bash", "-o", "pipefail", "-c"]
    );
    assert_eq!(c.on_build.as_ref().unwrap().len(), 2);
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test[0], "CMD-SHELL");
    assert_eq!(
        (hc.interval, hc.timeout, hc.start_period, hc.retries),
        (
            Some(30_000_000_000),
            Some(5_000_000_000),
            Some(10_000_000_000),
            Some(3)
        )
    );
    assert_eq!(c.exposed_ports.as_ref().unwrap().len(), 2);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.args_escaped, Some(true));
    // Unknown fields survive, at both levels.
    assert!(c.extra.contains_key("Hostname") && c.extra.contains_key("Image"));
    assert!(
        config.extra.contains_key("container_config")
            && config.extra.contains_key("docker_version")
    );
    assert_eq!(config.history[1].empty_layer, Some(true));
    assert_eq!(config.rootfs.diff_ids.len(), 1);

    // Written back: the same JSON value, in canonical form, byte-identical to
    // an independent canonical encoder's output.
    let written = config.to_bytes().unwrap();
    assert_eq!(written, python_canonical(&input));
    assert_eq!(ImageConfig::parse(&written).unwrap(), config);
    assert_eq!(config.rootfs.diff_ids.len(), 1);
}

#[test]
fn built_config_is_canonical_and_deterministic() {
    let mut config = ImageConfig::for_platform(&DescriptorPlatform {
        os: "linux".into(),
        architecture: "arm".into(),
        variant: Some("v7".into()),
        ..Default::default()
    });
    config.created = Some("2024-01-01T00:00:00Z".into());
    config.config = Some(ContainerConfig {
        env: Some(vec!["A=1".into()]),
        labels: Some(
            [
                ("z".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
            ]
            .into(),
        ),
        healthcheck: Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    config.push_empty_layer(kbuild_image::History {
        created_by: Some("ENV A=1".into()),
        ..Default::default()
    });
    let bytes = config.to_bytes().unwrap();
    assert_eq!(bytes, config.clone().to_bytes().unwrap());
    assert_eq!(bytes, python_canonical(&bytes));
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with(r#"{"architecture":"arm","config":{"Env":["A=1"],"Healthcheck":{"Test":["NONE"]},"Labels":{"a":"2","z":"1"}},"created":"#), "{text}");
    assert!(
        text.contains(r#""variant":"v7""#)
            && text.contains(r#""rootfs":{"diff_ids":[],"type":"layers"}"#),
        "{text}"
    );
    assert_eq!(config.platform().variant.as_deref(), Some("v7"));
}

#[test]
fn documents_of_both_flavours_parse() {
    let table = String::from_utf8(golden("documents/expectations.txt")).unwrap();
    let mut cases = 0;
    for line in table
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.splitn(3, ' ');
        let (file, kind, detail) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let parsed = Document::parse(&golden(&format!("documents/{file}")));
        match (kind, parsed) {
            ("index", Ok(Document::Index(i))) => {
                assert_eq!(i.manifests.len().to_string(), detail, "{file}")
            }
            ("manifest", Ok(Document::Manifest(m))) => {
                assert_eq!(m.layers.len().to_string(), detail, "{file}")
            }
            ("error", Err(e)) => assert!(e.to_string().contains(detail), "{file}: {e}"),
            (_, other) => panic!("{file}: expected {kind}, got {other:?}"),
        }
        cases += 1;
    }
    assert_eq!(cases, 5);

    let list = Index::parse(&golden("documents/docker-manifest-list.json")).unwrap();
    let windows = list.manifests[2].platform.as_ref().unwrap();
    assert_eq!(windows.os_version.as_deref(), Some("10.0.20348.2227"));
    assert_eq!(windows.os_features, ["win32k"]);
    assert_eq!(
        list.manifests[1]
            .platform
            .as_ref()
            .unwrap()
            .variant
            .as_deref(),
        Some("v7")
    );
    // os.version survives writing (oci-spec 0.10 would write "os_version").
    let written = String::from_utf8(list.to_bytes().unwrap()).unwrap();
    assert!(
        written.contains(r#""os.version":"10.0.20348.2227""#),
        "{written}"
    );
    let m = Manifest::parse(&golden("documents/docker-manifest.json")).unwrap();
    assert_eq!(m.layers[1].urls, ["https://example.invalid/layer"]);
    assert!(Manifest::parse(&golden("documents/docker-manifest-list.json")).is_err());
    assert!(Index::parse(&golden("documents/oci-manifest.json")).is_err());
    let oci = Manifest::parse(&golden("documents/oci-manifest.json")).unwrap();
    assert!(oci.subject.is_some());
}

#[test]
fn manifest_and_index_builders_write_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree);
    let manifest = common::build_image(
        &store,
        &tree,
        kbuild_image::Compression::Gzip(6),
        &["/hello"],
    );
    assert_eq!(manifest.media_type, MEDIA_TYPE_OCI_MANIFEST);
    let bytes = store.read(&manifest.digest).unwrap();
    assert_eq!(bytes.len() as u64, manifest.size);
    assert_eq!(bytes, python_canonical(&bytes));
    let parsed = Manifest::parse(&bytes).unwrap();
    assert_eq!(parsed.config.media_type, MEDIA_TYPE_OCI_CONFIG);
    assert_eq!(parsed.layers.len(), 1);

    let mut index = Index::new();
    index.push_manifest(
        manifest.clone(),
        &DescriptorPlatform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        },
    );
    index.annotations.insert(
        "org.opencontainers.image.created".into(),
        "2024-01-01T00:00:00Z".into(),
    );
    let desc = index.write(&store).unwrap();
    assert_eq!(desc.media_type, MEDIA_TYPE_OCI_INDEX);
    assert_eq!(
        Index::parse(&store.read(&desc.digest).unwrap()).unwrap(),
        index
    );
    // The same index written again is the same blob.
    assert_eq!(index.write(&store).unwrap(), desc);
}

#[test]
fn descriptors_keep_every_field_through_their_json() {
    let d = Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        Digest::of(b"m"),
        42,
    )
    .with_annotation("b", "2")
    .with_annotation("a", "1")
    .with_platform(DescriptorPlatform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
        ..Default::default()
    });
    let back: Descriptor = serde_json::from_slice(&canonical_json(&d).unwrap()).unwrap();
    assert_eq!(back, d);
    // Canonical JSON orders annotation keys.
    let json = String::from_utf8(canonical_json(&d).unwrap()).unwrap();
    assert!(
        json.contains(r#""annotations":{"a":"1","b":"2"}"#),
        "{json}"
    );
}

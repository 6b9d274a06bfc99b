//! Push, pull and error paths against a real `docker-registry` process.

mod common;

use common::*;
use kbuild_image::{ContentStore, Digest};
use kbuild_platform::Platform;
use kbuild_registry::{Credentials, Error, Reference};
use kbuild_testkit::registry::TestRegistry;

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn r(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

struct MultiArch {
    root: kbuild_image::Descriptor,
    index: Vec<u8>,
    /// (platform, manifest digest, manifest bytes)
    manifests: Vec<(&'static str, Digest, Vec<u8>)>,
    distinct_blobs: u64,
}

/// Three platforms sharing one big layer (chunked upload) plus a small own layer each.
fn multi_arch(store: &ContentStore) -> MultiArch {
    let shared = noise(1, 200 << 10);
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    for (i, (name, arch, variant)) in [
        ("linux/amd64", "amd64", None),
        ("linux/arm64", "arm64", None),
        ("linux/arm/v7", "arm", Some("v7")),
    ]
    .into_iter()
    .enumerate()
    {
        let own = noise(10 + i as u64, 3000 + i);
        let (digest, bytes) = manifest(store, "linux", arch, variant, &[&shared, &own]);
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push((platform, digest, bytes.clone()));
        manifests.push((name, digest, bytes));
    }
    // An attestation-like entry, as BuildKit adds: pushed along, never picked or listed.
    let (digest, bytes) = manifest(store, "unknown", "unknown", None, &[b"{\"provenance\":1}"]);
    entries.push((
        serde_json::json!({"os": "unknown", "architecture": "unknown"}),
        digest,
        bytes,
    ));
    let (root, index) = index(store, &entries);
    MultiArch {
        root,
        index,
        manifests,
        // one shared layer + 3 own layers + 3 configs + the attestation's config and layer
        distinct_blobs: 9,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_multi_platform_index_read_back_and_pull_by_platform() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let image = multi_arch(&src);
    let client = client(Credentials::anonymous());
    let targets = [
        r(&format!("{host}/team/multi:v1")),
        r(&format!("{host}/team/multi:latest")),
    ];
    client.push(&targets, &image.root, &src).await.unwrap();

    let stats = client.stats();
    assert_eq!(
        stats.blobs_uploaded, image.distinct_blobs,
        "each distinct blob uploaded once: {stats:?}"
    );
    assert_eq!(
        stats.chunked_uploads, 1,
        "the 200 KiB shared layer goes in chunks: {stats:?}"
    );
    // 4 manifests + index by digest, then 2 tags
    assert_eq!(stats.manifests_pushed, 7, "{stats:?}");

    // What the registry serves is exactly what we stored.
    assert_eq!(
        skopeo_raw(&format!("{host}/team/multi:v1"), None),
        image.index
    );
    assert_eq!(
        skopeo_raw(&format!("{host}/team/multi:latest"), None),
        image.index
    );
    let (_, arm64_digest, arm64_bytes) = &image.manifests[1];
    assert_eq!(
        skopeo_raw(&format!("{host}/team/multi@{arm64_digest}"), None),
        *arm64_bytes
    );

    // resolve gives the index descriptor and bytes
    let (desc, bytes) = client.resolve(&targets[0]).await.unwrap();
    assert_eq!(desc.digest.to_string(), image.root.digest.to_string());
    assert_eq!(desc.media_type, OCI_INDEX);
    assert_eq!(bytes.as_ref(), image.index.as_slice());

    // Pull one platform into a fresh store with a fresh client.
    let (_d2, dst) = store();
    let puller = common::client(Credentials::anonymous());
    let arm = Platform::parse("linux/arm/v7").unwrap();
    let pulled = puller.pull_image(&targets[0], &arm, &dst).await.unwrap();
    assert_eq!(pulled.manifest_digest, image.manifests[2].1);
    assert_eq!(
        pulled.root_digest.to_string(),
        image.root.digest.to_string()
    );
    assert_eq!(pulled.config.architecture, "arm");
    assert_eq!(pulled.platform.to_string(), "linux/arm/v7");
    for layer in &pulled.manifest.layers {
        let d = layer.digest;
        assert!(dst.has(&d), "layer {d} stored");
    }
    assert!(dst.has(&pulled.config_digest));
    assert_eq!(puller.stats().blobs_downloaded, 3, "config + 2 layers");

    // A second platform only downloads what the store lacks: the shared layer is cached.
    let arm64 = Platform::parse("linux/arm64").unwrap();
    let pulled = puller.pull_image(&targets[1], &arm64, &dst).await.unwrap();
    assert_eq!(pulled.manifest_digest, *arm64_digest);
    let stats = puller.stats();
    assert_eq!(
        (stats.blobs_downloaded, stats.blobs_cached),
        (5, 1),
        "{stats:?}"
    );

    // No such platform: the error lists what the index has.
    let s390x = Platform::parse("linux/s390x").unwrap();
    let err = puller
        .pull_image(&targets[0], &s390x, &dst)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformNotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("it provides: linux/amd64, linux/arm64, linux/arm/v7;")
            && text.contains("linux/s390x"),
        "{text}"
    );

    // Pushing to another repository of the same registry mounts every blob.
    client
        .push(&[r(&format!("{host}/other/copy:v1"))], &image.root, &src)
        .await
        .unwrap();
    let after = client.stats();
    assert_eq!(after.blobs_mounted, image.distinct_blobs, "{after:?}");
    assert_eq!(
        after.blobs_uploaded, image.distinct_blobs,
        "nothing uploaded again: {after:?}"
    );
    assert_eq!(
        skopeo_raw(&format!("{host}/other/copy:v1"), None),
        image.index
    );

    // Pushing again to the same repository finds every blob in place.
    client
        .push(&[r(&format!("{host}/team/multi:v2"))], &image.root, &src)
        .await
        .unwrap();
    let again = client.stats();
    assert_eq!(again.blobs_existing, image.distinct_blobs, "{again:?}");
    assert_eq!(again.blobs_uploaded, image.distinct_blobs, "{again:?}");
}

#[tokio::test]
async fn missing_tag_is_manifest_unknown() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let client = client(Credentials::anonymous());
    let err = client
        .resolve(&r(&format!("{host}/nothing/here:nope")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.contains("nope") && text.contains("nothing/here"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_registry_names_it() {
    let port = kbuild_testkit::registry::free_port().unwrap();
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        max_attempts: 2,
        retry_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap();
    let err = client
        .resolve(&r(&format!("127.0.0.1:{port}/a:b")))
        .await
        .unwrap_err();
    assert!(
        matches!(err.first_cause(), Error::Unreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(client.stats().retries, 1);
}

#[tokio::test]
async fn single_manifest_image_checks_the_config_platform() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let (digest, bytes) = manifest(&src, "linux", "arm64", None, &[&noise(3, 1000)]);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    );
    let client = client(Credentials::anonymous());
    let target = r(&format!("{host}/single/app:1"));
    client
        .push(std::slice::from_ref(&target), &root, &src)
        .await
        .unwrap();
    assert_eq!(client.stats().manifests_pushed, 2);
    let (_d2, dst) = store();
    let pulled = client
        .pull_image(&target, &Platform::parse("linux/arm64/v8").unwrap(), &dst)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    let err = client
        .pull_image(&target, &Platform::parse("linux/amd64").unwrap(), &dst)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("it provides: linux/arm64"),
        "{err}"
    );
}

#[tokio::test]
async fn interrupted_download_resumes_from_the_partial_ingest() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let layer = noise(7, 300 << 10);
    let (digest, bytes) = manifest(&src, "linux", "amd64", None, &[&layer]);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    );
    let target = r(&format!("{host}/resume/app:1"));
    client(Credentials::anonymous())
        .push(std::slice::from_ref(&target), &root, &src)
        .await
        .unwrap();

    // An earlier pull died after 100000 bytes of the layer.
    let (_d2, dst) = store();
    let layer_digest = Digest::of(&layer);
    {
        use std::io::Write;
        let (mut ingest, offset) = dst.writer_resumable(&layer_digest.to_string()).unwrap();
        assert_eq!(offset, 0);
        ingest.write_all(&layer[..100_000]).unwrap();
        ingest.flush().unwrap();
    }
    let puller = client(Credentials::anonymous());
    let pulled = puller
        .pull_image(&target, &Platform::parse("linux/amd64").unwrap(), &dst)
        .await
        .unwrap();
    assert!(dst.has(&layer_digest));
    assert_eq!(dst.read(&layer_digest).unwrap(), layer);
    let stats = puller.stats();
    assert_eq!(stats.bytes_resumed, 100_000, "{stats:?}");
    let config_size = pulled.manifest.config.size;
    assert_eq!(
        stats.bytes_downloaded,
        layer.len() as u64 - 100_000 + config_size,
        "{stats:?}"
    );
}

#[tokio::test]
async fn wrong_bytes_from_the_server_are_refused() {
    let (_d, scratch) = store();
    let (manifest_digest, manifest_bytes) =
        manifest(&scratch, "linux", "amd64", None, &[b"real layer"]);
    let served_manifest = manifest_bytes.clone();
    let server = TinyServer::start(move |req| {
        if req.target.starts_with("/v2/bad/app/manifests/") {
            // By tag: the real manifest. By digest: something else.
            if req.target.ends_with("/tag") {
                Canned::ok(OCI_MANIFEST, served_manifest.clone())
            } else {
                Canned::ok(
                    OCI_MANIFEST,
                    b"{\"schemaVersion\":2,\"config\":null}".to_vec(),
                )
            }
        } else if req.target.starts_with("/v2/bad/app/blobs/") {
            Canned::ok(
                "application/octet-stream",
                b"definitely not the config".to_vec(),
            )
        } else {
            Canned::ok("application/json", b"{}".to_vec())
        }
    })
    .await;
    let host = format!("127.0.0.1:{}", server.port);
    let client = client(Credentials::anonymous());
    let (_d2, dst) = store();
    let err = client
        .pull_image(
            &r(&format!("{host}/bad/app:tag")),
            &Platform::parse("linux/amd64").unwrap(),
            &dst,
        )
        .await
        .unwrap_err();
    // The wrong config is also of the wrong length: said as such.
    assert!(
        matches!(err, Error::SizeMismatch { expected, actual, .. } if expected != actual),
        "{err}"
    );
    assert!(err.to_string().contains(&host), "{err}");
    assert!(err.to_string().starts_with("size mismatch"), "{err}");

    let err = client
        .resolve(&r(&format!("{host}/bad/app@{manifest_digest}")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&manifest_digest.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn transient_errors_are_retried() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let calls = std::sync::Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    let server = TinyServer::start(move |_| match calls2.fetch_add(1, Ordering::SeqCst) {
        0 => Canned {
            status: 503,
            ..Default::default()
        },
        // Asks for a 1 s pause, shorter than the client's own backoff.
        1 => Canned {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
            ..Default::default()
        },
        _ => Canned::ok(OCI_INDEX, body.clone()),
    })
    .await;
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        retry_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap();
    let reference = r(&format!("127.0.0.1:{}/flaky/app:1", server.port));
    let started = std::time::Instant::now();
    let (desc, _) = client.resolve(&reference).await.unwrap();
    assert_eq!(desc.media_type, OCI_INDEX);
    assert_eq!(client.stats().retries, 2);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Bounded: a registry that keeps failing gets max_attempts tries, then an error.
    let failing = TinyServer::start(|_| Canned {
        status: 502,
        ..Default::default()
    })
    .await;
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        retry_delay: std::time::Duration::from_millis(5),
        max_attempts: 3,
        ..Default::default()
    })
    .unwrap();
    let err = client
        .resolve(&r(&format!("127.0.0.1:{}/down/app:1", failing.port)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.first_cause(), Error::Registry { status: 502, .. }),
        "{err}"
    );
    assert_eq!(failing.seen.lock().unwrap().len(), 3);
}

/// A local IPv4 address that is not loopback, so the client treats it as remote.
fn non_loopback_ip() -> std::net::Ipv4Addr {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("run hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback())
        .expect("this test needs a non-loopback IPv4 address on some interface")
}

#[tokio::test]
async fn remote_registries_need_tls_unless_marked_insecure() {
    let registry = TestRegistry::start_on(non_loopback_ip()).unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let (digest, bytes) = manifest(&src, "linux", "amd64", None, &[&noise(9, 500)]);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    );
    let target = r(&format!("{host}/plain/app:1"));

    // HTTPS to a plain-HTTP registry fails, and the error says what to do.
    let strict = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        max_attempts: 1,
        ..Default::default()
    })
    .unwrap();
    let err = strict
        .push(std::slice::from_ref(&target), &root, &src)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("https://{host}/"))
            && text.contains(&format!("--insecure-registry {host}")),
        "{text}"
    );

    // Marked insecure: HTTPS without verification fails too, so plain HTTP is used.
    let insecure = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        insecure: vec![host.clone()],
        ..Default::default()
    })
    .unwrap();
    insecure
        .push(std::slice::from_ref(&target), &root, &src)
        .await
        .unwrap();
    let (desc, _) = insecure.resolve(&target).await.unwrap();
    assert_eq!(desc.digest.to_string(), digest.to_string());
}

#[tokio::test]
async fn tags_are_put_only_after_every_target_has_the_content() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let (digest, bytes) = manifest(&src, "linux", "amd64", None, &[&noise(11, 500)]);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    );
    // The second target's registry is down: the first must not get its tag.
    let dead = kbuild_testkit::registry::free_port().unwrap();
    let targets = [
        r(&format!("{host}/first/app:1")),
        r(&format!("127.0.0.1:{dead}/second/app:1")),
    ];
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        max_attempts: 1,
        ..Default::default()
    })
    .unwrap();
    let err = client.push(&targets, &root, &src).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let err = client.resolve(&targets[0]).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");
    // The content itself is there, by digest.
    let (desc, _) = client
        .resolve(&targets[0].with_digest(desc_digest(&digest)))
        .await
        .unwrap();
    assert_eq!(desc.digest.to_string(), digest.to_string());

    // A blob missing from the store stops the push before any manifest or tag.
    let (broken_digest, broken) = manifest(&src, "linux", "arm64", None, &[&noise(12, 500)]);
    let doc: serde_json::Value = serde_json::from_slice(&broken).unwrap();
    let layer = Digest::parse(doc["layers"][0]["digest"].as_str().unwrap()).unwrap();
    std::fs::remove_file(src.path(&layer)).unwrap();
    let broken_root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        broken_digest,
        broken.len() as u64,
    );
    let target = r(&format!("{host}/broken/app:1"));
    let err = client
        .push(std::slice::from_ref(&target), &broken_root, &src)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotInStore { .. }), "{err}");
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    let err = client.resolve(&target).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");
}

fn desc_digest(d: &Digest) -> Digest {
    *d
}

#[tokio::test]
async fn docker_schema2_manifest_lists_push_and_pull() {
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let (_d, src) = store();
    let layer = noise(21, 4000);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64", "variant": "v8", "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": descriptor("application/vnd.docker.container.image.v1+json", &put(&src, &config), config.len()),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &put(&src, &layer), layer.len())],
    }))
    .unwrap();
    let manifest_digest = put(&src, &manifest);
    let mut entry = descriptor(
        "application/vnd.docker.distribution.manifest.v2+json",
        &manifest_digest,
        manifest.len(),
    );
    entry["platform"] =
        serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [entry],
    }))
    .unwrap();
    let list_digest = put(&src, &list);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.docker.distribution.manifest.list.v2+json",
        list_digest,
        list.len() as u64,
    );
    let target = r(&format!("{host}/docker/list:1"));
    let client = client(Credentials::anonymous());
    client
        .push(std::slice::from_ref(&target), &root, &src)
        .await
        .unwrap();
    assert_eq!(skopeo_raw(&target.to_string(), None), list);

    let (desc, _) = client.resolve(&target).await.unwrap();
    assert_eq!(
        desc.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let (_d2, dst) = store();
    // linux/arm64 matches the list's arm64/v8 entry.
    let pulled = client
        .pull_image(&target, &Platform::parse("linux/arm64").unwrap(), &dst)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, manifest_digest);
    assert_eq!(pulled.config.architecture, "arm64");
    assert!(dst.has(&Digest::of(&layer)));
}

#[tokio::test]
async fn download_broken_off_mid_stream_resumes_with_a_range_request() {
    let (_d, scratch) = store();
    let layer = noise(31, 120_000);
    let (_, manifest_bytes) = manifest(&scratch, "linux", "amd64", None, &[&layer]);
    let doc: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let config_digest = doc["config"]["digest"].as_str().unwrap().to_string();
    let config = scratch
        .read(&Digest::parse(&config_digest).unwrap())
        .unwrap();
    let config_size = config.len();
    let layer_digest = Digest::of(&layer).to_string();
    let served_layer = layer.clone();
    let server = TinyServer::start(move |req| {
        let path = req.target.as_str();
        if path == "/v2/flaky/app/manifests/1" {
            Canned::ok(OCI_MANIFEST, manifest_bytes.clone())
        } else if path == format!("/v2/flaky/app/blobs/{config_digest}") {
            Canned::ok("application/octet-stream", config.clone())
        } else if path == format!("/v2/flaky/app/blobs/{layer_digest}") {
            match req
                .headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
            {
                // First try: the connection dies after 50000 bytes.
                None => Canned {
                    cut: Some(50_000),
                    ..Canned::ok("application/octet-stream", served_layer.clone())
                },
                Some(range) => {
                    let start: usize = range.trim_end_matches('-').parse().unwrap();
                    let total = served_layer.len();
                    Canned {
                        status: 206,
                        headers: vec![(
                            "Content-Range".into(),
                            format!("bytes {start}-{}/{total}", total - 1),
                        )],
                        body: served_layer[start..].to_vec(),
                        cut: None,
                    }
                }
            }
        } else {
            Canned {
                status: 404,
                ..Default::default()
            }
        }
    })
    .await;
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        retry_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap();
    let (_d2, dst) = store();
    let reference = r(&format!("127.0.0.1:{}/flaky/app:1", server.port));
    client
        .pull_image(&reference, &Platform::parse("linux/amd64").unwrap(), &dst)
        .await
        .unwrap();
    assert_eq!(dst.read(&Digest::of(&layer)).unwrap(), layer);
    let stats = client.stats();
    assert!(stats.retries >= 1, "{stats:?}");
    assert_eq!(
        stats.bytes_downloaded,
        (layer.len() + config_size) as u64,
        "nothing downloaded twice: {stats:?}"
    );
    let ranges: Vec<String> = server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.headers.get("range").cloned())
        .collect();
    assert_eq!(ranges, vec!["bytes=50000-".to_string()]);
}

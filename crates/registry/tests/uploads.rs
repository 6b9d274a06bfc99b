//! Blob uploads that start before the push (as a build commits its layers),
//! against a real `docker-registry`, some through `kbuild-fault-proxy`: each
//! blob goes up once, the push waits for those under way, uploads run side by
//! side up to the client's bound, and a failed upload fails the push before
//! any manifest or tag. A layer streams to the registry while it is
//! compressed, or goes up in one PUT once complete where the registry
//! refuses chunked uploads.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use kbuild_image::{Compression, ContentStore, Digest, LayerWriter};
use kbuild_registry::{Client, ClientOptions, Credentials, Error, Reference, Timeouts};
use kbuild_testkit::faults::{FaultProxy, Logged};
use kbuild_testkit::fixtures::skip_or_fail;
use kbuild_testkit::registry::TestRegistry;

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn registry() -> Option<TestRegistry> {
    match TestRegistry::start() {
        Ok(r) => Some(r),
        Err(e) => {
            skip_or_fail(&e.to_string());
            None
        }
    }
}

fn proxy(registry: &TestRegistry, rules: &[&str]) -> Option<FaultProxy> {
    let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    match FaultProxy::start(
        &registry.host(),
        1,
        &rules,
        (4096, Duration::from_millis(20)),
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            skip_or_fail(&e.to_string());
            None
        }
    }
}

fn client(concurrency: usize, max_attempts: u32, response: Duration) -> Client {
    Client::new(ClientOptions {
        credentials: Credentials::anonymous(),
        chunk_threshold: 64 << 10,
        chunk_size: 48 << 10,
        concurrency,
        max_attempts,
        retry_delay: Duration::from_millis(20),
        timeouts: Timeouts {
            response,
            ..Timeouts::default()
        },
        ..ClientOptions::default()
    })
    .expect("client")
}

struct Image {
    root: kbuild_image::Descriptor,
    index: Vec<u8>,
    /// (digest, size) of every layer, as a build would report them: the
    /// shared layer once per platform.
    layers: Vec<(Digest, u64)>,
    /// Distinct blobs: layers and configs.
    distinct_blobs: u64,
}

/// `platforms` platforms sharing a 100 KiB layer (chunked), each with a
/// small layer and a config of its own.
fn image(store: &ContentStore, seed: u64, platforms: usize) -> Image {
    let shared = noise(seed * 100, 100 << 10);
    let mut entries = Vec::new();
    let mut layers = Vec::new();
    for i in 0..platforms {
        let own = noise(seed * 100 + 1 + i as u64, 2000 + i);
        let arch = format!("arch{i}");
        let (digest, bytes) = manifest(store, "linux", &arch, None, &[&shared, &own]);
        for l in [&shared, &own] {
            layers.push((Digest::of(l), l.len() as u64));
        }
        entries.push((
            serde_json::json!({"os": "linux", "architecture": arch}),
            digest,
            bytes,
        ));
    }
    let (root, index) = index(store, &entries);
    Image {
        root,
        index,
        layers,
        distinct_blobs: 1 + 2 * platforms as u64,
    }
}

/// Whether the registry's storage holds the blob (read from its directory,
/// not through the API).
fn stored(registry: &TestRegistry, digest: &Digest) -> bool {
    let hex = digest.hex();
    registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
        .is_file()
}

fn tag_exists(reference: &str) -> bool {
    std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_started_early_go_up_once_and_the_push_waits_for_them() {
    let Some(registry) = registry() else { return };
    let host = registry.host();
    let (_d, src) = store();
    let img = image(&src, 7, 3);
    let client = client(4, 5, Duration::from_secs(30));
    let target = Reference::parse(&format!("{host}/early/img:1")).unwrap();
    let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
    // Every platform reports its layers, the shared one three times.
    for (digest, size) in &img.layers {
        uploads.start(digest, *size);
    }
    let distinct_layers = 1 + 3;
    assert_eq!(
        uploads.started(),
        distinct_layers,
        "each layer started once"
    );

    // They arrive without any push being asked for, and nothing names them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !img.layers.iter().all(|(d, _)| stored(&registry, d)) {
        assert!(Instant::now() < deadline, "early uploads never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!tag_exists(&target.to_string()), "no tag before the push");

    client
        .push_with(std::slice::from_ref(&target), &img.root, &uploads)
        .await
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        stats.blobs_uploaded, img.distinct_blobs,
        "each distinct blob uploaded once: {stats:?}"
    );
    assert_eq!(
        stats.blobs_existing, 0,
        "the push waited for the early uploads instead of checking them again: {stats:?}"
    );
    // 3 manifests, the index by digest, the tag.
    assert_eq!(stats.manifests_pushed, 5, "{stats:?}");
    assert_eq!(skopeo_raw(&target.to_string(), None), img.index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_run_side_by_side_up_to_the_bound() {
    let Some(registry) = registry() else { return };
    // Every closing PUT is read and never answered: each upload that gets
    // that far holds its place until the push is dropped.
    let Some(proxy) = proxy(&registry, &["blob-put=hang"]) else {
        return;
    };
    let (_d, src) = store();
    let img = image(&src, 8, 4);
    let bound = 3;
    let client = client(bound, 1, Duration::from_secs(60));
    let target = Reference::parse(&format!("{}/bound/img:1", proxy.host())).unwrap();
    let push = tokio::spawn({
        let (client, src, root) = (client.clone(), src.clone(), img.root.clone());
        async move { client.push(&[target], &root, &src).await }
    });
    let closing_puts = || proxy.log().iter().filter(|l| l.kind == "blob-put").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while closing_puts() < bound {
        assert!(
            Instant::now() < deadline,
            "uploads did not overlap: {:?}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other uploads wait for a place: none gets to its closing PUT.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(closing_puts(), bound, "{:?}", proxy.log());
    assert!(img.distinct_blobs > bound as u64 + 2);
    assert!(!push.is_finished());
    push.abort();
    assert!(
        proxy.log().iter().all(|l| l.kind != "manifest-put"),
        "{:?}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_early_upload_fails_the_push_before_any_manifest() {
    let Some(registry) = registry() else { return };
    let Some(proxy) = proxy(&registry, &["blob-put=500"]) else {
        return;
    };
    let (_d, src) = store();
    let img = image(&src, 9, 2);
    let client = client(2, 1, Duration::from_secs(30));
    let target = Reference::parse(&format!("{}/failed/img:1", proxy.host())).unwrap();
    let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
    for (digest, size) in &img.layers {
        uploads.start(digest, *size);
    }
    let err = client
        .push_with(std::slice::from_ref(&target), &img.root, &uploads)
        .await
        .unwrap_err();
    assert!(
        matches!(err.first_cause(), Error::Registry { status: 500, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    let log = proxy.log();
    assert!(log.iter().any(|l| l.kind == "blob-put"), "{log:?}");
    assert!(log.iter().all(|l| l.kind != "manifest-put"), "{log:?}");
    assert!(!tag_exists(&format!("{}/failed/img:1", registry.host())));
}

/// Bytes of noise written before a test looks for the upload of a layer
/// still open: more than the compressor holds (2 threads, 8 blocks of
/// 128 KiB each in flight) plus the 1 MiB the watch is told about at once,
/// so that chunks of it are in the file.
const BEFORE: usize = 6 << 20;

/// A gzip layer written through [`LayerWriter::watched`] with the upload's
/// watch, `before` bytes of noise first; returns the writer, still open.
async fn start_layer(
    src: &ContentStore,
    uploads: &kbuild_registry::BlobUploads,
    seed: u64,
    before: usize,
) -> LayerWriter {
    let watch = uploads.stream().expect("a stream inside the runtime");
    let src = src.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = LayerWriter::watched(&src, Compression::Gzip(6), 2, Some(watch)).unwrap();
        w.write_all(&noise(seed, before)).unwrap();
        w
    })
    .await
    .unwrap()
}

/// Writes `after` more bytes and commits the layer.
async fn finish_layer(mut w: LayerWriter, seed: u64, after: usize) -> kbuild_image::Layer {
    tokio::task::spawn_blocking(move || {
        w.write_all(&noise(seed + 1, after)).unwrap();
        w.finish().unwrap()
    })
    .await
    .unwrap()
}

/// Waits until the proxy has logged a request that `pred` accepts.
async fn logged(proxy: &FaultProxy, what: &str, pred: impl Fn(&Logged) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.log().iter().any(&pred) {
        assert!(Instant::now() < deadline, "no {what}: {:?}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An image of the one layer `layer` (its bytes read back from the store).
fn image_of(
    src: &ContentStore,
    layer: &kbuild_image::Layer,
) -> (kbuild_image::Descriptor, Vec<u8>) {
    let bytes = src.read(&layer.descriptor.digest).unwrap();
    let (digest, manifest_bytes) = manifest(src, "linux", "amd64", None, &[&bytes]);
    index(
        src,
        &[(
            serde_json::json!({"os": "linux", "architecture": "amd64"}),
            digest,
            manifest_bytes,
        )],
    )
}

fn closes(l: &Logged, digest: &Digest) -> bool {
    l.kind == "blob-put" && l.target.replace("%3A", ":").contains(&digest.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_uploads_while_it_is_compressed_and_the_tag_comes_last() {
    let Some(registry) = registry() else { return };
    let Some(proxy) = proxy(&registry, &[]) else {
        return;
    };
    let (_d, src) = store();
    let client = client(2, 3, Duration::from_secs(30));
    let target = Reference::parse(&format!("{}/stream/img:1", proxy.host())).unwrap();
    let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
    // Noise does not compress: what leaves the compressor is about as
    // large as what went in.
    let w = start_layer(&src, &uploads, 21, BEFORE).await;
    // Chunks go up while the layer is still open, with no closing PUT.
    logged(&proxy, "PATCH while compressing", |l| l.kind == "patch").await;
    assert!(
        proxy.log().iter().all(|l| l.kind != "blob-put"),
        "{:?}",
        proxy.log()
    );
    let layer = finish_layer(w, 21, 1 << 20).await;
    let digest = layer.descriptor.digest;
    // The build reports the layer once it is committed: it is the streamed
    // upload's, not a new one.
    uploads.start(&digest, layer.descriptor.size);
    assert_eq!(uploads.started(), 1);

    let (root, index_bytes) = image_of(&src, &layer);
    client
        .push_with(std::slice::from_ref(&target), &root, &uploads)
        .await
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        stats.blobs_uploaded, 2,
        "the layer and the config: {stats:?}"
    );
    assert_eq!(stats.chunked_uploads, 1, "{stats:?}");
    assert_eq!(stats.blobs_existing, 0, "{stats:?}");
    let log = proxy.log();
    assert_eq!(
        log.iter().filter(|l| closes(l, &digest)).count(),
        1,
        "{log:?}"
    );
    let patches = log.iter().filter(|l| l.kind == "patch").count() as u64;
    assert!(
        patches >= layer.descriptor.size / (48 << 10),
        "{patches} PATCHes for {} bytes: {log:?}",
        layer.descriptor.size
    );
    // The blob the registry keeps is the store's, byte for byte; the tag
    // is the last request.
    let hex = digest.hex();
    let kept = registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    assert!(std::fs::read(kept).unwrap() == src.read(&digest).unwrap());
    assert_eq!(log.last().map(|l| l.kind.as_str()), Some("manifest-put"));
    assert!(
        log.last().unwrap().target.ends_with("/manifests/1"),
        "{log:?}"
    );
    let direct = format!("{}/stream/img:1", registry.host());
    assert_eq!(skopeo_raw(&direct, None), index_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_chunks_gets_the_layer_in_one_put_once_it_is_complete() {
    let Some(registry) = registry() else { return };
    let Some(proxy) = proxy(&registry, &["patch=405"]) else {
        return;
    };
    let (_d, src) = store();
    let client = client(2, 3, Duration::from_secs(30));
    let target = Reference::parse(&format!("{}/refuse/img:1", proxy.host())).unwrap();
    let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
    let w = start_layer(&src, &uploads, 31, BEFORE).await;
    logged(&proxy, "refused PATCH", |l| {
        l.kind == "patch" && l.fault == "405"
    })
    .await;
    let layer = finish_layer(w, 31, 1 << 20).await;
    let digest = layer.descriptor.digest;
    uploads.start(&digest, layer.descriptor.size);
    let (root, index_bytes) = image_of(&src, &layer);
    client
        .push_with(std::slice::from_ref(&target), &root, &uploads)
        .await
        .unwrap();
    let stats = client.stats();
    assert_eq!(stats.blobs_uploaded, 2, "{stats:?}");
    assert_eq!(stats.chunked_uploads, 0, "{stats:?}");
    let log = proxy.log();
    assert_eq!(
        log.iter().filter(|l| l.kind == "patch").count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| closes(l, &digest)).count(),
        1,
        "{log:?}"
    );
    assert!(stored(&registry, &digest));
    let direct = format!("{}/refuse/img:1", registry.host());
    assert_eq!(skopeo_raw(&direct, None), index_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_layer_closes_no_upload() {
    let Some(registry) = registry() else { return };
    let Some(proxy) = proxy(&registry, &[]) else {
        return;
    };
    let (_d, src) = store();
    let client = client(2, 3, Duration::from_secs(30));
    let target = Reference::parse(&format!("{}/abandon/img:1", proxy.host())).unwrap();
    let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
    let w = start_layer(&src, &uploads, 41, BEFORE).await;
    logged(&proxy, "PATCH while compressing", |l| l.kind == "patch").await;
    // The step fails: its layer writer is dropped without a commit.
    drop(w);
    let settled = proxy.log().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = proxy.log();
    assert!(log.iter().all(|l| l.kind != "blob-put"), "{log:?}");
    assert!(log.len() <= settled + 1, "the upload went on: {log:?}");
    assert_eq!(uploads.started(), 0);
}

/// The same layer built again without the cache (identical bytes) streams
/// again, since its digest is unknown while it is compressed; once the
/// digest is known, a HEAD finds the blob in the repository and the
/// session is cancelled (`DELETE`) instead of closed, so the rest of the
/// blob is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_layer_the_repository_has_is_not_sent_twice() {
    let Some(registry) = registry() else { return };
    let Some(proxy) = proxy(&registry, &[]) else {
        return;
    };
    let target = Reference::parse(&format!("{}/again/img:1", proxy.host())).unwrap();
    let mut patches = Vec::new();
    let mut digests = Vec::new();
    for build in 0..2 {
        // Each build with its own store and client, as two processes.
        let (_d, src) = store();
        let client = client(2, 3, Duration::from_secs(30));
        let uploads = client.blob_uploads(std::slice::from_ref(&target), &src);
        let before = proxy.log().len();
        let w = start_layer(&src, &uploads, 51, BEFORE).await;
        logged(&proxy, "PATCH while compressing", |l| l.kind == "patch").await;
        let layer = finish_layer(w, 51, 1 << 20).await;
        let digest = layer.descriptor.digest;
        uploads.start(&digest, layer.descriptor.size);
        let (root, _) = image_of(&src, &layer);
        client
            .push_with(std::slice::from_ref(&target), &root, &uploads)
            .await
            .unwrap();
        let log: Vec<Logged> = proxy.log().split_off(before);
        let stats = client.stats();
        if build == 0 {
            assert_eq!(stats.blobs_existing, 0, "{stats:?}");
            assert_eq!(log.iter().filter(|l| closes(l, &digest)).count(), 1);
            assert!(log.iter().all(|l| l.method != "DELETE"), "{log:?}");
        } else {
            assert_eq!(
                stats.blobs_existing, 2,
                "the layer and the config: {stats:?}"
            );
            assert_eq!(stats.blobs_uploaded, 0, "{stats:?}");
            assert_eq!(
                log.iter().filter(|l| closes(l, &digest)).count(),
                0,
                "{log:?}"
            );
            assert_eq!(
                log.iter()
                    .filter(|l| l.method == "DELETE" && l.target.contains("/blobs/uploads/"))
                    .count(),
                1,
                "the session is cancelled: {log:?}"
            );
        }
        patches.push(log.iter().filter(|l| l.kind == "patch").count());
        digests.push(digest);
    }
    assert_eq!(digests[0], digests[1], "the same bytes");
    // The first build sent the whole blob; the second stopped once the
    // digest was known, at least the last write's worth of chunks sooner.
    assert!(
        patches[1] + ((1 << 20) / (48 << 10)) <= patches[0],
        "PATCHes: {patches:?}"
    );
    assert!(stored(&registry, &digests[0]));
}

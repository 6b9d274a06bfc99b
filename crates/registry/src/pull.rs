//! Resolving references and pulling one platform's image into the content store.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use kbuild_image::{ContentStore, Descriptor, Digest, ImageConfig, Ingest, Manifest};
use kbuild_platform::Platform;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256, Sha512};
use url::Url;

use crate::client::{Client, Counters, Req, Retry, Scope};
use crate::error::{Error, ManifestProblem, Result};
use crate::manifest::{self, Document, Entry};
use crate::reference::Reference;

/// Manifests and indexes larger than this are refused (the spec suggests 4 MiB).
const MAX_MANIFEST: usize = 8 << 20;

/// One platform's image, pulled into the content store.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// Digest of the index or manifest the reference resolved to.
    pub root_digest: Digest,
    /// Digest of the platform's manifest (equal to `root_digest` for a single-manifest image).
    pub manifest_digest: Digest,
    /// The platform's manifest.
    pub manifest: Manifest,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// The platform the image is for, as the index or config states it.
    pub platform: Platform,
}

fn sha_digest(algorithm: &str, bytes: &[u8]) -> String {
    match algorithm {
        "sha512" => format!("sha512:{}", hex::encode(Sha512::digest(bytes))),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
    }
}

fn store_digest(text: &str, what: &str, source: &str) -> Result<Digest> {
    Digest::parse(text).map_err(|e| Error::InvalidManifest {
        what: what.to_string(),
        source_name: source.to_string(),
        reason: Box::new(ManifestProblem::Digest {
            text: text.to_string(),
            source: e,
        }),
    })
}

fn store_error(what: String) -> impl FnOnce(kbuild_image::Error) -> Error {
    move |source| Error::Store { what, source }
}

impl Client {
    /// Resolves a reference to the index or manifest it names: its descriptor
    /// (media type, digest of the exact bytes, size) and the bytes themselves.
    /// A reference pinned by digest is verified against it.
    pub async fn resolve(&self, reference: &Reference) -> Result<(Descriptor, Bytes)> {
        let key = reference.manifest_key();
        self.fetch_manifest(reference, &key, reference.digest().map(|d| d.to_string()))
            .await
    }

    async fn fetch_manifest(
        &self,
        reference: &Reference,
        key: &str,
        expected: Option<String>,
    ) -> Result<(Descriptor, Bytes)> {
        let registry = reference.registry();
        let repository = reference.repository();
        let url = self
            .api_url(registry, repository, &format!("manifests/{key}"))
            .await?;
        let operation = format!("GET manifest {key} of {repository}");
        let req = Req::new(Method::GET, url, operation.clone()).header(ACCEPT, manifest::ACCEPT);
        let scope = Scope::pull(registry, repository);
        let mut retry = self.retry(registry, operation.clone());
        // The body is part of the attempt: one that breaks off is fetched again.
        let (transport_type, bytes) = loop {
            let response = self.send_with(&scope, &req, &mut retry).await?;
            match response.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => {
                    return Err(Error::ManifestUnknown {
                        reference: reference.to_string(),
                        registry: registry.to_string(),
                        repository: repository.to_string(),
                        key: key.to_string(),
                    })
                }
                _ => {
                    let e = self.unexpected(response, registry, operation).await;
                    return Err(retry.give_up(e));
                }
            }
            if response
                .content_length()
                .is_some_and(|l| l > MAX_MANIFEST as u64)
            {
                return Err(Error::InvalidManifest {
                    what: format!("{reference}"),
                    source_name: registry.to_string(),
                    reason: Box::new(ManifestProblem::TooLarge {
                        limit: MAX_MANIFEST,
                    }),
                });
            }
            let transport_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
            match self.read_body(registry, &operation, response).await {
                Ok(bytes) => break (transport_type, bytes),
                Err(e) if e.is_transient() => retry.again(self, e, None).await?,
                Err(e) => return Err(retry.give_up(e)),
            }
        };
        let algorithm = expected
            .as_deref()
            .and_then(|e| e.split_once(':'))
            .map_or("sha256", |(a, _)| a);
        let actual = sha_digest(algorithm, &bytes);
        if let Some(expected) = expected {
            if expected != actual {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {key} of {repository}"),
                    registry: registry.to_string(),
                    expected,
                    actual,
                });
            }
        }
        let doc = Document::parse(&bytes).map_err(|reason| Error::InvalidManifest {
            what: format!("{reference}"),
            source_name: registry.to_string(),
            reason: Box::new(reason),
        })?;
        let media_type = doc.media_type(transport_type.as_deref());
        // The bytes were checked against a pinned digest of any algorithm
        // above; the descriptor names them by sha256, as the store does.
        let descriptor = Descriptor::new(media_type, Digest::of(&bytes), bytes.len() as u64);
        Ok((descriptor, bytes))
    }

    /// Pulls the image for `platform`: resolves the reference, picks the best
    /// matching manifest of an index, and stores the index, manifest, config and
    /// layers in `store` (digests verified; blobs the store has are skipped;
    /// interrupted downloads resume; layers download in parallel).
    pub async fn pull_image(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &ContentStore,
    ) -> Result<PulledImage> {
        self.pull(reference, platform, store, true).await
    }

    /// [`Client::pull_image`] without the layers: the index, manifest and
    /// config of `platform`'s image go into `store` (a client planning a
    /// build that a builder daemon runs needs the config alone).
    pub async fn pull_config(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &ContentStore,
    ) -> Result<PulledImage> {
        self.pull(reference, platform, store, false).await
    }

    async fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &ContentStore,
        layers: bool,
    ) -> Result<PulledImage> {
        let registry = reference.registry();
        let (root, root_bytes) = self.resolve(reference).await?;
        let root_digest = root.digest;
        store
            .put_bytes(&root_bytes)
            .map_err(store_error(format!("storing the manifest of {reference}")))?;
        let (manifest_digest, manifest_bytes, index_platform) = self
            .platform_manifest(reference, platform, store, root, root_bytes)
            .await?;
        let invalid = |reason: ManifestProblem| Error::InvalidManifest {
            what: format!("{reference} (manifest {manifest_digest})"),
            source_name: registry.to_string(),
            reason: Box::new(reason),
        };
        let doc = Document::parse(&manifest_bytes).map_err(invalid)?;
        let manifest =
            Manifest::parse(&manifest_bytes).map_err(|e| invalid(ManifestProblem::Model(e)))?;
        let Some(config_entry) = doc.config.clone() else {
            return Err(invalid(ManifestProblem::NoConfig));
        };
        let mut blobs = vec![config_entry.clone()];
        blobs.extend(
            doc.layers
                .iter()
                .filter(|l| layers && !l.non_distributable())
                .cloned(),
        );
        self.fetch_blobs(reference, &blobs, store).await?;
        let (config_digest, config) = stored_config(reference, &config_entry, store)?;
        let config_platform = Platform::from(&config.platform());
        let image_platform = match index_platform {
            Some(p) => p,
            None => {
                // A lone manifest is only right if its config says so (containerd does the same).
                if !platform.matches(&config_platform) {
                    return Err(Error::PlatformNotFound {
                        reference: reference.to_string(),
                        wanted: platform.to_string(),
                        available: vec![config_platform.to_string()],
                    });
                }
                config_platform
            }
        };
        Ok(PulledImage {
            root_digest,
            manifest_digest,
            manifest,
            config_digest,
            config,
            platform: image_platform,
        })
    }

    /// The manifest of `platform` under the root `reference` resolved to:
    /// the root itself when it is a manifest, else the best match of the
    /// index, fetched and stored. Its digest, bytes and the platform the
    /// index names for it.
    async fn platform_manifest(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &ContentStore,
        root: Descriptor,
        root_bytes: Bytes,
    ) -> Result<(Digest, Bytes, Option<Platform>)> {
        let registry = reference.registry();
        if manifest::is_manifest(&root.media_type) {
            return Ok((root.digest, root_bytes, None));
        }
        if !manifest::is_index(&root.media_type) {
            return Err(Error::InvalidManifest {
                what: reference.to_string(),
                source_name: registry.to_string(),
                reason: Box::new(ManifestProblem::MediaType(root.media_type)),
            });
        }
        let doc = Document::parse(&root_bytes).map_err(|reason| Error::InvalidManifest {
            what: reference.to_string(),
            source_name: registry.to_string(),
            reason: Box::new(reason),
        })?;
        let entry = best_entry(reference, platform, &doc)?;
        let (descriptor, bytes) = self
            .fetch_manifest(reference, &entry.digest, Some(entry.digest.clone()))
            .await?;
        let digest = descriptor.digest;
        store.put_bytes(&bytes).map_err(store_error(format!(
            "storing manifest {digest} of {reference}"
        )))?;
        Ok((digest, bytes, entry.platform.clone()))
    }

    /// Downloads one blob of `reference`'s repository into the store, digest
    /// and size verified (nothing to do when the store has it): a cache
    /// config or a layer of an imported build cache.
    pub async fn pull_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        store: &ContentStore,
    ) -> Result<()> {
        let entry = Entry {
            media_type: String::new(),
            digest: digest.to_string(),
            size,
            platform: None,
        };
        self.fetch_blob(reference, &entry, store).await
    }

    /// Downloads blobs of `reference`'s repository into the store, `concurrency` at a time.
    pub(crate) async fn fetch_blobs(
        &self,
        reference: &Reference,
        blobs: &[Entry],
        store: &ContentStore,
    ) -> Result<()> {
        let limit = self.inner.opts.concurrency.max(1);
        stream::iter(blobs.iter().map(Ok))
            .try_for_each_concurrent(limit, |entry| self.fetch_blob(reference, entry, store))
            .await
    }

    /// Downloads one blob, resuming a partial ingest with a Range request.
    async fn fetch_blob(
        &self,
        reference: &Reference,
        entry: &Entry,
        store: &ContentStore,
    ) -> Result<()> {
        let registry = reference.registry();
        let repository = reference.repository();
        let digest = store_digest(&entry.digest, &format!("blob of {reference}"), registry)?;
        let counters = &self.inner.counters;
        self.note_blob_source(&digest, registry, repository);
        let what = format!("blob {digest} of {repository}");
        let Some(part) = Partial::open(store, &digest, entry.size, &what).await? else {
            Counters::add(&counters.blobs_cached, 1);
            return Ok(());
        };
        Counters::add(&counters.bytes_resumed, part.offset);
        let url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        let download = Download {
            registry,
            store,
            scope: Scope::pull(registry, repository),
            operation: format!("GET {what}"),
            digest,
            size: entry.size,
            url,
            what,
        };
        let part = self.download(&download, part).await?;
        download.commit(part.ingest)?;
        Counters::add(&counters.blobs_downloaded, 1);
        Ok(())
    }

    /// GETs the rest of the blob into `part`, from where it stops: one retry
    /// budget for the whole blob (failed requests and broken-off bodies), and
    /// at most `max_attempts` range answers in a row it cannot use.
    async fn download(&self, d: &Download<'_>, mut part: Partial) -> Result<Partial> {
        let mut retry = self.retry(d.registry, d.operation.clone());
        let attempts = self.inner.opts.max_attempts.max(1);
        let mut attempt = 0;
        while part.offset < d.size {
            attempt += 1;
            if attempt > attempts {
                return Err(Error::UnusableRanges {
                    registry: d.registry.to_string(),
                    url: d.url.to_string(),
                    what: d.what.clone(),
                    attempts,
                });
            }
            let (resumed, response) = self.ranged_get(d, part, &mut retry).await?;
            part = resumed;
            let Some(mut response) = response else {
                continue;
            };
            match self.copy_body(d, &mut response, &mut part).await? {
                Some(e) if part.offset < d.size => {
                    let (what, offset) = (&d.what, part.offset);
                    tracing::debug!(%what, error = %e, offset, "download interrupted, resuming");
                    // A body that moved does not use up the attempts for bad range answers.
                    attempt = 0;
                    retry.again(self, e, None).await?;
                }
                Some(e) => return Err(retry.give_up(e)),
                None => break,
            }
        }
        Ok(part)
    }

    /// One GET of the blob from `part`'s offset (a Range request past its
    /// start). The response whose body continues `part`, or `None` when the
    /// registry ignored or could not honour the range: `part` then starts
    /// over, and a full answer of a blob started over is used as it is.
    async fn ranged_get(
        &self,
        d: &Download<'_>,
        part: Partial,
        retry: &mut Retry,
    ) -> Result<(Partial, Option<Response>)> {
        let offset = part.offset;
        let mut req = Req::new(Method::GET, d.url.clone(), d.operation.clone());
        if offset > 0 {
            req = req.header(RANGE, &format!("bytes={offset}-"));
        }
        let response = self.send_with(&d.scope, &req, retry).await?;
        let status = response.status();
        let resumed_at = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        match status {
            StatusCode::PARTIAL_CONTENT if resumed_at == Some(offset) => {
                return Ok((part, Some(response)))
            }
            StatusCode::OK if offset == 0 => return Ok((part, Some(response))),
            // The server ignored or could not honour the range: start over.
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::Registry {
                    registry: d.registry.to_string(),
                    action: d.operation.clone(),
                    status: 404,
                    message: "the blob is unknown although a manifest lists it; the repository is incomplete, push the image again".into(),
                })
            }
            _ => {
                let e = self
                    .unexpected(response, d.registry, d.operation.clone())
                    .await;
                return Err(retry.give_up(e));
            }
        }
        let part = part.restart(d.store, &d.digest, &d.what)?;
        if status == StatusCode::OK && part.offset == 0 {
            // A full answer for a blob started over: its body is used.
            return Ok((part, Some(response)));
        }
        Ok((part, None))
    }

    /// Appends `response`'s body to `part` until it ends, breaks off, or
    /// runs past the blob's size. The transport error it broke off with.
    async fn copy_body(
        &self,
        d: &Download<'_>,
        response: &mut Response,
        part: &mut Partial,
    ) -> Result<Option<Error>> {
        use std::io::Write;
        let counters = &self.inner.counters;
        loop {
            match self.next_chunk(d.registry, &d.operation, response).await {
                Ok(None) => return Ok(None),
                Ok(Some(chunk)) => {
                    part.ingest
                        .write_all(&chunk)
                        .map_err(|source| Error::StoreIo {
                            what: format!("writing {}", d.what),
                            source,
                        })?;
                    Counters::add(&counters.bytes_downloaded, chunk.len() as u64);
                    part.offset += chunk.len() as u64;
                    if part.offset > d.size {
                        return Ok(None);
                    }
                }
                Err(e) => return Ok(Some(e)),
            }
        }
    }
}

/// One blob being downloaded: what the steps of [`Client::fetch_blob`] share.
struct Download<'a> {
    registry: &'a str,
    store: &'a ContentStore,
    scope: Scope,
    /// `GET blob DIGEST of REPOSITORY`.
    operation: String,
    digest: Digest,
    /// The size its descriptor gives.
    size: u64,
    url: Url,
    /// `blob DIGEST of REPOSITORY`.
    what: String,
}

impl Download<'_> {
    /// Commits the downloaded blob, checked against its digest and size.
    fn commit(&self, ingest: Ingest) -> Result<()> {
        let what = &self.what;
        match ingest.commit_exact(&self.digest, self.size) {
            Ok(_) => Ok(()),
            Err(kbuild_image::Error::DigestMismatch { expected, actual }) => {
                Err(Error::DigestMismatch {
                    what: what.clone(),
                    registry: self.registry.to_string(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                })
            }
            Err(kbuild_image::Error::SizeMismatch {
                expected, actual, ..
            }) => Err(Error::SizeMismatch {
                what: format!("{what} {}", self.digest),
                registry: self.registry.to_string(),
                expected,
                actual,
            }),
            Err(e) => Err(store_error(format!("committing {what}"))(e)),
        }
    }
}

/// The part of a blob in its ingest file so far.
struct Partial {
    ingest: Ingest,
    /// Bytes written.
    offset: u64,
}

impl Partial {
    /// The blob's ingest, resumed where an earlier download stopped (started
    /// over when it holds more than `size` bytes); `None` when the store has
    /// the blob. Waits while another task or process downloads it.
    async fn open(
        store: &ContentStore,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Option<Partial>> {
        let part = loop {
            if store.has(digest) {
                return Ok(None);
            }
            match store.writer_resumable(&digest.to_string()) {
                Ok((ingest, offset)) => break Partial { ingest, offset },
                // Another task or process downloads the same blob: wait for it.
                Err(kbuild_image::Error::IngestBusy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(store_error(format!("starting the download of {what}"))(e)),
            }
        };
        if part.offset > size {
            return part.restart(store, digest, what).map(Some);
        }
        Ok(Some(part))
    }

    /// Discards what was written and starts the blob again.
    fn restart(self, store: &ContentStore, digest: &Digest, what: &str) -> Result<Partial> {
        self.ingest
            .abort()
            .map_err(store_error(format!("discarding the partial {what}")))?;
        let (ingest, offset) = store
            .writer_resumable(&digest.to_string())
            .map_err(store_error(format!("restarting the download of {what}")))?;
        Ok(Partial { ingest, offset })
    }
}

/// The entry of `platform`'s manifest in `doc`, the index `reference`
/// resolved to.
fn best_entry<'d>(
    reference: &Reference,
    platform: &Platform,
    doc: &'d Document,
) -> Result<&'d Entry> {
    let entries: Vec<&Entry> = doc
        .manifests
        .iter()
        .flatten()
        .filter(|e| manifest::is_manifest(&e.media_type) && e.platform.is_some())
        .collect();
    let platforms: Vec<&Platform> = entries.iter().filter_map(|e| e.platform.as_ref()).collect();
    match platform.best_match(platforms.iter().copied()) {
        Some(pick) => Ok(entries[pick]),
        None => Err(Error::PlatformNotFound {
            reference: reference.to_string(),
            wanted: platform.to_string(),
            // Attestation manifests say unknown/unknown: not worth listing.
            available: available(
                platforms
                    .iter()
                    .filter(|p| p.os != "unknown")
                    .map(|p| p.to_string()),
            ),
        }),
    }
}

/// The image config `entry` names, read back from the store it was pulled into.
fn stored_config(
    reference: &Reference,
    entry: &Entry,
    store: &ContentStore,
) -> Result<(Digest, ImageConfig)> {
    let registry = reference.registry();
    let config_digest = store_digest(&entry.digest, "config", registry)?;
    let config_bytes = store
        .read(&config_digest)
        .map_err(store_error(format!("reading config {config_digest}")))?;
    let config = ImageConfig::parse(&config_bytes).map_err(|e| Error::InvalidManifest {
        what: format!("config {config_digest} of {reference}"),
        source_name: registry.to_string(),
        reason: Box::new(ManifestProblem::Model(e)),
    })?;
    Ok((config_digest, config))
}

/// Distinct platform names in index order.
fn available(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

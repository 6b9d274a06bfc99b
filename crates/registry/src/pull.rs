//! Resolving references and pulling one platform's image into the content store.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use kbuild_image::{ContentStore, Descriptor, Digest, ImageConfig, Manifest};
use kbuild_platform::Platform;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256, Sha512};

use crate::client::{Client, Counters, Req, Scope};
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
        let root_type = root.media_type.clone();
        let (manifest_digest, manifest_bytes, index_platform) = if manifest::is_index(&root_type) {
            let doc = Document::parse(&root_bytes).map_err(|reason| Error::InvalidManifest {
                what: reference.to_string(),
                source_name: registry.to_string(),
                reason: Box::new(reason),
            })?;
            let entries: Vec<&Entry> = doc
                .manifests
                .iter()
                .flatten()
                .filter(|e| manifest::is_manifest(&e.media_type) && e.platform.is_some())
                .collect();
            let platforms: Vec<&Platform> =
                entries.iter().filter_map(|e| e.platform.as_ref()).collect();
            let Some(pick) = platform.best_match(platforms.iter().copied()) else {
                return Err(Error::PlatformNotFound {
                    reference: reference.to_string(),
                    wanted: platform.to_string(),
                    // Attestation manifests say unknown/unknown: not worth listing.
                    available: available(
                        platforms
                            .iter()
                            .filter(|p| p.os != "unknown")
                            .map(|p| p.to_string()),
                    ),
                });
            };
            let entry = entries[pick];
            let (descriptor, bytes) = self
                .fetch_manifest(reference, &entry.digest, Some(entry.digest.clone()))
                .await?;
            let digest = descriptor.digest;
            store.put_bytes(&bytes).map_err(store_error(format!(
                "storing manifest {digest} of {reference}"
            )))?;
            (digest, bytes, entry.platform.clone())
        } else if manifest::is_manifest(&root_type) {
            (root_digest, root_bytes, None)
        } else {
            return Err(Error::InvalidManifest {
                what: reference.to_string(),
                source_name: registry.to_string(),
                reason: Box::new(ManifestProblem::MediaType(root_type)),
            });
        };
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
        let config_digest = store_digest(&config_entry.digest, "config", registry)?;
        let config_bytes = store
            .read(&config_digest)
            .map_err(store_error(format!("reading config {config_digest}")))?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| Error::InvalidManifest {
            what: format!("config {config_digest} of {reference}"),
            source_name: registry.to_string(),
            reason: Box::new(ManifestProblem::Model(e)),
        })?;
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
        let (mut ingest, mut offset) = loop {
            if store.has(&digest) {
                Counters::add(&counters.blobs_cached, 1);
                return Ok(());
            }
            match store.writer_resumable(&digest.to_string()) {
                Ok(pair) => break pair,
                // Another task or process downloads the same blob: wait for it.
                Err(kbuild_image::Error::IngestBusy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(store_error(format!("starting the download of {what}"))(e)),
            }
        };
        if offset > entry.size {
            ingest
                .abort()
                .map_err(store_error(format!("discarding the partial {what}")))?;
            (ingest, offset) = store
                .writer_resumable(&digest.to_string())
                .map_err(store_error(format!("restarting the download of {what}")))?;
        }
        Counters::add(&counters.bytes_resumed, offset);
        let url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        let scope = Scope::pull(registry, repository);
        let operation = format!("GET {what}");
        // One budget for the whole blob: failed requests and broken-off bodies.
        let mut retry = self.retry(registry, operation.clone());
        let attempts = self.inner.opts.max_attempts.max(1);
        let mut attempt = 0;
        while offset < entry.size {
            attempt += 1;
            if attempt > attempts {
                return Err(Error::UnusableRanges {
                    registry: registry.to_string(),
                    url: url.to_string(),
                    what: what.to_string(),
                    attempts,
                });
            }
            let mut req = Req::new(Method::GET, url.clone(), operation.clone());
            if offset > 0 {
                req = req.header(RANGE, &format!("bytes={offset}-"));
            }
            let mut response = self.send_with(&scope, &req, &mut retry).await?;
            let status = response.status();
            let resumed_at = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            let restart = match status {
                StatusCode::PARTIAL_CONTENT if resumed_at == Some(offset) => false,
                StatusCode::OK if offset == 0 => false,
                // The server ignored or could not honour the range: start over.
                StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => true,
                StatusCode::NOT_FOUND => {
                    return Err(Error::Registry {
                        registry: registry.to_string(),
                        action: format!("GET {what}"),
                        status: 404,
                        message: "the blob is unknown although a manifest lists it; the repository is incomplete, push the image again".into(),
                    })
                }
                _ => {
                    let e = self.unexpected(response, registry, operation.clone()).await;
                    return Err(retry.give_up(e));
                }
            };
            if restart {
                ingest
                    .abort()
                    .map_err(store_error(format!("discarding the partial {what}")))?;
                (ingest, offset) = store
                    .writer_resumable(&digest.to_string())
                    .map_err(store_error(format!("restarting the download of {what}")))?;
                if status == StatusCode::OK && offset == 0 {
                    // Fall through and use this full answer.
                } else {
                    continue;
                }
            }
            let mut broken = None;
            loop {
                match self.next_chunk(registry, &operation, &mut response).await {
                    Ok(None) => break,
                    Ok(Some(chunk)) => {
                        use std::io::Write;
                        ingest.write_all(&chunk).map_err(|source| Error::StoreIo {
                            what: format!("writing {what}"),
                            source,
                        })?;
                        Counters::add(&counters.bytes_downloaded, chunk.len() as u64);
                        offset += chunk.len() as u64;
                        if offset > entry.size {
                            break;
                        }
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            match broken {
                Some(e) if offset < entry.size => {
                    tracing::debug!(%what, error = %e, offset, "download interrupted, resuming");
                    // A body that moved does not use up the attempts for bad range answers.
                    attempt = 0;
                    retry.again(self, e, None).await?;
                }
                Some(e) => return Err(retry.give_up(e)),
                None => break,
            }
        }
        match ingest.commit_exact(&digest, entry.size) {
            Ok(_) => {}
            Err(kbuild_image::Error::DigestMismatch { expected, actual }) => {
                return Err(Error::DigestMismatch {
                    what,
                    registry: registry.to_string(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                })
            }
            Err(kbuild_image::Error::SizeMismatch {
                expected, actual, ..
            }) => {
                return Err(Error::SizeMismatch {
                    what: format!("{what} {digest}"),
                    registry: registry.to_string(),
                    expected,
                    actual,
                })
            }
            Err(e) => return Err(store_error(format!("committing {what}"))(e)),
        }
        Counters::add(&counters.blobs_downloaded, 1);
        Ok(())
    }
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

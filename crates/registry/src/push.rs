//! Pushing an index or manifest with everything it references; tags go last.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kbuild_image::Descriptor;
use kbuild_image::{ContentStore, Digest};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::watch;
use url::Url;

use crate::client::{Client, Counters, Failed, Req, Retry, Scope};
use crate::error::{Error, ManifestProblem, ReferenceProblem, Result};
use crate::manifest::{self, Document};
use crate::reference::Reference;
use crate::uploads::BlobUploads;

/// An upload URL with the `digest` parameter that closes the upload.
fn with_digest(mut url: Url, digest: &Digest) -> Url {
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    url
}

/// Why one upload session ended early.
struct UploadFailure {
    error: Error,
    /// The pause the registry asked for.
    pause: Option<std::time::Duration>,
    /// Whether the closing PUT failed: the registry may have kept the blob.
    closing: bool,
}

/// What a mount attempt left the push of a blob to do.
enum Mount {
    /// The repository has the blob now.
    Mounted,
    /// Upload it, in the session the registry opened for the mount if any.
    Upload(Option<Url>),
}

/// Nesting limit for indexes of indexes.
const MAX_DEPTH: usize = 8;

/// Everything under a root, in push order.
#[derive(Default)]
struct Plan {
    /// Distinct blobs (configs and layers) by digest, with their sizes.
    blobs: BTreeMap<Digest, u64>,
    /// Manifests and indexes below the root, children before parents, each once.
    manifests: Vec<(Digest, String, Bytes)>,
}

fn store_err(what: String) -> impl FnOnce(kbuild_image::Error) -> Error {
    move |source| Error::Store { what, source }
}

fn parse_digest(text: &str, what: &str) -> Result<Digest> {
    Digest::parse(text).map_err(|e| Error::InvalidManifest {
        what: what.to_string(),
        source_name: "the content store".into(),
        reason: Box::new(ManifestProblem::Digest {
            text: text.to_string(),
            source: e,
        }),
    })
}

impl Plan {
    fn walk(
        &mut self,
        store: &ContentStore,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
        depth: usize,
    ) -> Result<()> {
        let invalid = |reason: ManifestProblem| Error::InvalidManifest {
            what: digest.to_string(),
            source_name: "the content store".into(),
            reason: Box::new(reason),
        };
        if depth > MAX_DEPTH {
            return Err(invalid(ManifestProblem::TooDeep(MAX_DEPTH)));
        }
        let doc = Document::parse(bytes).map_err(invalid)?;
        if manifest::is_index(media_type) {
            for child in doc.manifests.iter().flatten() {
                let child_digest =
                    parse_digest(&child.digest, &format!("entry of index {digest}"))?;
                if self.manifests.iter().any(|(d, _, _)| *d == child_digest) {
                    continue;
                }
                let child_bytes = store.read(&child_digest).map_err(store_err(format!(
                    "reading manifest {child_digest} listed by index {digest}"
                )))?;
                let child_type = if child.media_type.is_empty() {
                    Document::parse(&child_bytes)
                        .map_err(invalid)?
                        .media_type(None)
                } else {
                    child.media_type.clone()
                };
                self.walk(store, &child_digest, &child_type, &child_bytes, depth + 1)?;
                self.manifests
                    .push((child_digest, child_type, Bytes::from(child_bytes)));
            }
        } else if manifest::is_manifest(media_type) {
            let config = doc
                .config
                .as_ref()
                .ok_or_else(|| invalid(ManifestProblem::NoConfig))?;
            for blob in std::iter::once(config).chain(doc.layers.iter()) {
                if blob.non_distributable() {
                    continue;
                }
                let d = parse_digest(&blob.digest, &format!("blob of manifest {digest}"))?;
                self.blobs.insert(d, blob.size);
            }
        } else {
            return Err(invalid(ManifestProblem::MediaType(media_type.to_string())));
        }
        Ok(())
    }
}

impl Client {
    /// Pushes `root` (an index or a manifest in `store`) with all it references
    /// to every reference in `targets`: [`Client::push_with`] with uploads
    /// that start now.
    pub async fn push(
        &self,
        targets: &[Reference],
        root: &Descriptor,
        store: &ContentStore,
    ) -> Result<()> {
        let uploads = self.blob_uploads(targets, store);
        self.push_with(targets, root, &uploads).await
    }

    /// Pushes `root` (an index or a manifest in the store of `uploads`) with
    /// all it references to every reference in `targets`.
    ///
    /// For each target repository: every distinct blob once (HEAD first, then a
    /// cross-repository mount when the blob is known to be in another repository
    /// of the same registry, else a monolithic or chunked upload), at most
    /// `concurrency` at a time, uploads already started through `uploads`
    /// (while the image was being built) waited for rather than repeated;
    /// then the manifests below the root by digest, exact bytes; then the
    /// root by digest. Only when every target has all that are the tags put,
    /// so no tag ever names content whose blobs are missing.
    pub async fn push_with(
        &self,
        targets: &[Reference],
        root: &Descriptor,
        uploads: &BlobUploads,
    ) -> Result<()> {
        let store = uploads.store();
        let root_digest = root.digest;
        let root_bytes = Bytes::from(
            store
                .read(&root_digest)
                .map_err(store_err(format!("reading the root {root_digest} to push")))?,
        );
        let root_type = root.media_type.clone();
        let mut plan = Plan::default();
        plan.walk(store, &root_digest, &root_type, &root_bytes, 0)?;

        for target in targets {
            if let Some(pinned) = target.digest() {
                if pinned != root_digest.to_string() {
                    return Err(Error::InvalidReference {
                        reference: target.to_string(),
                        reason: ReferenceProblem::PinnedDigest {
                            pinned: pinned.to_string(),
                            what: "image",
                            pushed: root_digest,
                        },
                    });
                }
            }
        }
        // Distinct target repositories, in the order given.
        let mut repositories: Vec<(&str, &str)> = Vec::new();
        for t in targets {
            let key = (t.registry(), t.repository());
            if !repositories.contains(&key) {
                repositories.push(key);
            }
        }

        for (registry, repository) in &repositories {
            let scope = Scope::push(registry, repository);
            uploads.finish(registry, repository, &plan.blobs).await?;
            for (digest, media_type, bytes) in &plan.manifests {
                self.put_manifest(&scope, &digest.to_string(), digest, media_type, bytes)
                    .await?;
            }
            self.put_manifest(
                &scope,
                &root_digest.to_string(),
                &root_digest,
                &root_type,
                &root_bytes,
            )
            .await?;
        }
        for target in targets {
            if let Some(tag) = target.tag() {
                let scope = Scope::push(target.registry(), target.repository());
                self.put_manifest(&scope, tag, &root_digest, &root_type, &root_bytes)
                    .await?;
            }
        }
        Ok(())
    }

    /// Puts a manifest under `key` (its digest or a tag). A put that failed in
    /// a way that may have reached the registry (a lost reply, a timeout, 5xx)
    /// is checked with HEAD before it is retried: when the registry has `key`
    /// as `digest`, the put is done.
    pub(crate) async fn put_manifest(
        &self,
        scope: &Scope,
        key: &str,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<()> {
        let operation = if key == digest.to_string() {
            format!("PUT manifest {digest} in {}", scope.repository)
        } else {
            format!("PUT manifest {key} ({digest}) in {}", scope.repository)
        };
        let url = self
            .api_url(
                &scope.registry,
                &scope.repository,
                &format!("manifests/{key}"),
            )
            .await?;
        let req = Req::new(Method::PUT, url.clone(), operation.clone())
            .header(CONTENT_TYPE, media_type)
            .body(bytes.clone());
        let mut retry = self.retry(&scope.registry, operation.clone());
        loop {
            let failure = match self.send_once(scope, &req).await {
                Ok(response) if response.status().is_success() => {
                    self.check_echoed_digest(scope, key, digest, &response)?;
                    Counters::add(&self.inner.counters.manifests_pushed, 1);
                    return Ok(());
                }
                Ok(response) => Failed::from(
                    self.unexpected(response, &scope.registry, operation.clone())
                        .await,
                ),
                Err(failed) => failed,
            };
            if !failure.error.is_transient() {
                return Err(retry.give_up(failure.error));
            }
            if self.manifest_is(scope, &url, key, digest, media_type).await {
                tracing::debug!(%operation, error = %failure.error, "the put failed but the registry has the manifest");
                Counters::add(&self.inner.counters.manifests_pushed, 1);
                return Ok(());
            }
            retry.again(self, failure.error, failure.pause).await?;
        }
    }

    fn check_echoed_digest(
        &self,
        scope: &Scope,
        key: &str,
        digest: &Digest,
        response: &Response,
    ) -> Result<()> {
        if let Some(echoed) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if echoed.starts_with("sha256:") && echoed != digest.to_string() {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {key} pushed to {}", scope.repository),
                    registry: scope.registry.clone(),
                    expected: digest.to_string(),
                    actual: echoed.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Whether the registry serves `digest` under `key` (one HEAD, no retries:
    /// a failure only means "not known").
    async fn manifest_is(
        &self,
        scope: &Scope,
        url: &Url,
        key: &str,
        digest: &Digest,
        media_type: &str,
    ) -> bool {
        let head = Req::new(
            Method::HEAD,
            url.clone(),
            format!("HEAD manifest {key} in {}", scope.repository),
        )
        .header(ACCEPT, &format!("{media_type}, {}", manifest::ACCEPT));
        match self.send_once(scope, &head).await {
            Ok(response) if response.status() == StatusCode::OK => response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|d| d == digest.to_string()),
            _ => false,
        }
    }

    /// Whether the repository has the blob (one HEAD, no retries).
    async fn blob_is_there(&self, scope: &Scope, url: &Url, what: &str) -> bool {
        let head = Req::new(Method::HEAD, url.clone(), format!("HEAD {what}"));
        matches!(self.send_once(scope, &head).await, Ok(r) if r.status() == StatusCode::OK)
    }

    /// Pushes one blob unless the repository has it: HEAD, then a mount from
    /// another repository of the registry when one is known to have it, else an
    /// upload. An upload that fails is restarted from a fresh session, within
    /// the retry budget; when the request that closes it fails or goes
    /// unanswered, a HEAD decides whether the registry kept the blob.
    pub(crate) async fn push_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
        size: u64,
        store: &ContentStore,
    ) -> Result<()> {
        let counters = &self.inner.counters;
        let scope = Scope::push(registry, repository);
        let what = format!("blob {digest} to {repository}");
        let mut retry = self.retry(registry, format!("pushing {what}"));
        let blob_url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        if self
            .blob_exists(&scope, &blob_url, &what, &mut retry)
            .await?
        {
            Counters::add(&counters.blobs_existing, 1);
            self.note_blob_source(digest, registry, repository);
            return Ok(());
        }
        if !store.has(digest) {
            return Err(Error::NotInStore {
                what: format!("pushing {what}"),
            });
        }
        let mut location = match self.mount_blob(&scope, digest, &what, &mut retry).await? {
            Mount::Mounted => return Ok(()),
            Mount::Upload(session) => session,
        };
        loop {
            let failure = match self
                .upload(
                    &scope,
                    digest,
                    size,
                    store,
                    &what,
                    location.take(),
                    &mut retry,
                    false,
                )
                .await
            {
                Ok(()) => break,
                Err(failure) => failure,
            };
            let UploadFailure {
                error,
                pause,
                closing,
            } = failure;
            if closing && self.blob_is_there(&scope, &blob_url, &what).await {
                tracing::debug!(%what, %error, "closing the upload failed but the registry has the blob");
                break;
            }
            if !restarts(&error) {
                return Err(retry.give_up(error));
            }
            retry.again(self, error, pause).await?;
        }
        self.uploaded(registry, repository, digest, size);
        Ok(())
    }

    /// The HEAD before a push (within the push's retry budget): whether the
    /// repository has the blob.
    async fn blob_exists(
        &self,
        scope: &Scope,
        blob_url: &Url,
        what: &str,
        retry: &mut Retry,
    ) -> Result<bool> {
        let head = Req::new(Method::HEAD, blob_url.clone(), format!("HEAD {what}"));
        let response = self.send_with(scope, &head, retry).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                let e = self
                    .unexpected(response, &scope.registry, format!("HEAD {what}"))
                    .await;
                Err(retry.give_up(e))
            }
        }
    }

    /// Mounts the blob from another repository of the registry known to
    /// have it, if any. A refused or failed mount is not fatal: the upload
    /// still works, in the session the registry opened instead when it did
    /// (a failed mount leaves the upload a fresh retry budget).
    async fn mount_blob(
        &self,
        scope: &Scope,
        digest: &Digest,
        what: &str,
        retry: &mut Retry,
    ) -> Result<Mount> {
        let (registry, repository) = (scope.registry.as_str(), scope.repository.as_str());
        let Some(from) = self.mount_source(&digest.to_string(), registry, repository) else {
            return Ok(Mount::Upload(None));
        };
        let mut url = self.api_url(registry, repository, "blobs/uploads/").await?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", &from);
        let mount_scope = Scope {
            also_pull: vec![from.clone()],
            ..scope.clone()
        };
        let req = Req::new(Method::POST, url, format!("mounting {what} from {from}"));
        match self.send_with(&mount_scope, &req, retry).await {
            Ok(response) if response.status() == StatusCode::CREATED => {
                Counters::add(&self.inner.counters.blobs_mounted, 1);
                self.note_blob_source(digest, registry, repository);
                Ok(Mount::Mounted)
            }
            Ok(response) if response.status() == StatusCode::ACCEPTED => {
                Ok(Mount::Upload(self.location(registry, &response).await.ok()))
            }
            Ok(response) => {
                tracing::debug!(%what, status = %response.status(), "mount refused, uploading");
                Ok(Mount::Upload(None))
            }
            Err(e) => {
                tracing::debug!(%what, %from, error = %e, "mount failed, uploading");
                *retry = self.retry(registry, format!("pushing {what}"));
                Ok(Mount::Upload(None))
            }
        }
    }

    /// One upload session: POST (unless a session is given), PATCH chunks or
    /// nothing, then the closing PUT; `monolithic` sends the whole blob in the
    /// closing PUT whatever its size. Uploading requests are not retried here
    /// (a lost reply makes a resend wrong); the caller restarts the session.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        scope: &Scope,
        digest: &Digest,
        size: u64,
        store: &ContentStore,
        what: &str,
        session: Option<Url>,
        retry: &mut Retry,
        monolithic: bool,
    ) -> std::result::Result<(), UploadFailure> {
        let mut location = match session {
            Some(l) => l,
            None => self.start_session(scope, what, retry).await?,
        };
        let path = store.path(digest);
        // Read from the file a piece at a time as each request is sent.
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            plain(Error::StoreIo {
                what: format!("reading {what} from {}", path.display()),
                source: e,
            })
        })?;
        let file = Arc::new(file.into_std().await);
        let opts = &self.inner.opts;
        if monolithic || size <= opts.chunk_threshold {
            // Monolithic: the whole blob in the closing PUT.
            return self
                .close(scope, location, digest, Some((file, size)), what)
                .await;
        }
        // Chunked: PATCH each chunk to the latest Location, then an empty PUT.
        let chunk = opts.chunk_size.max(1);
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            location = self
                .patch(scope, &location, &file, offset, len, what)
                .await?;
            offset += len;
        }
        Counters::add(&self.inner.counters.chunked_uploads, 1);
        self.close(scope, location, digest, None, what).await
    }

    /// Starts an upload session (POST); returns its location.
    async fn start_session(
        &self,
        scope: &Scope,
        what: &str,
        retry: &mut Retry,
    ) -> std::result::Result<Url, UploadFailure> {
        let registry = &scope.registry;
        let url = self
            .api_url(registry, &scope.repository, "blobs/uploads/")
            .await
            .map_err(plain)?;
        let req = Req::new(Method::POST, url, format!("starting the upload of {what}"));
        let response = self.send_with(scope, &req, retry).await.map_err(plain)?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(plain(
                self.unexpected(response, registry, req.operation).await,
            ));
        }
        self.location(registry, &response).await.map_err(plain)
    }

    /// PATCHes `len` bytes of `file` from `offset` to the session at
    /// `location`; returns the session's next location.
    async fn patch(
        &self,
        scope: &Scope,
        location: &Url,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: u64,
        what: &str,
    ) -> std::result::Result<Url, UploadFailure> {
        let registry = &scope.registry;
        let action = format!("PATCH chunk at {offset} of {what}");
        let req = Req::new(Method::PATCH, location.clone(), action.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, &format!("{}-{}", offset, offset + len - 1))
            .file_range(file.clone(), offset, len);
        let response = self
            .send_once(scope, &req)
            .await
            .map_err(|f| UploadFailure {
                error: f.error,
                pause: f.pause,
                closing: false,
            })?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(plain(self.unexpected(response, registry, action).await));
        }
        self.location(registry, &response).await.map_err(plain)
    }

    /// The PUT that closes the session at `location` as blob `digest`, with
    /// the whole blob as its body (`file` of `size` bytes) or none.
    async fn close(
        &self,
        scope: &Scope,
        location: Url,
        digest: &Digest,
        body: Option<(Arc<std::fs::File>, u64)>,
        what: &str,
    ) -> std::result::Result<(), UploadFailure> {
        let operation = format!("finishing the upload of {what}");
        let req = Req::new(Method::PUT, with_digest(location, digest), operation);
        let finish = match body {
            Some((file, size)) => req
                .header(CONTENT_TYPE, "application/octet-stream")
                .file_range(file, 0, size),
            None => req.header(CONTENT_LENGTH, "0"),
        };
        let closing = |error: Error, pause| UploadFailure {
            error,
            pause,
            closing: true,
        };
        let response = self
            .send_once(scope, &finish)
            .await
            .map_err(|f| closing(f.error, f.pause))?;
        if response.status() != StatusCode::CREATED {
            let error = self
                .unexpected(response, &scope.registry, finish.operation)
                .await;
            return Err(closing(error, None));
        }
        Ok(())
    }

    /// Uploads a blob while it is being written (a layer still being
    /// compressed, told through `feed`): a chunked upload that PATCHes each
    /// chunk as soon as the file has it and closes with `PUT ?digest=` once
    /// the blob is complete and its digest known. A blob complete before its
    /// first chunk is uploaded as a finished one. Where the registry refuses
    /// the chunked upload (a 4xx other than 404 and 416), the blob goes up in
    /// one PUT once it is complete. Failures restart from a fresh session,
    /// within one retry budget, as [`Client::push_blob`] does. Ends with
    /// nothing done when the writer abandons the blob.
    pub(crate) async fn stream_blob(
        &self,
        registry: &str,
        repository: &str,
        mut feed: watch::Receiver<Feed>,
        store: &ContentStore,
    ) -> Result<()> {
        let scope = Scope::push(registry, repository);
        let growing = format!("a layer being built to {repository}");
        let mut retry = self.retry(registry, format!("pushing {growing}"));
        let mut monolithic = false;
        loop {
            let outcome = if monolithic {
                match grown(&mut feed, u64::MAX).await.and_then(|f| f.done) {
                    Some((digest, _)) if self.already_there(&scope, &digest).await => return Ok(()),
                    Some((digest, size)) => {
                        let what = format!("blob {digest} to {repository}");
                        self.upload(&scope, &digest, size, store, &what, None, &mut retry, true)
                            .await
                            .map(|()| Some((digest, size)))
                    }
                    None => Ok(None),
                }
            } else {
                self.upload_growing(&scope, &mut feed, store, &growing, &mut retry)
                    .await
            };
            let failure = match outcome {
                Ok(Some((digest, size))) => {
                    self.uploaded(registry, repository, &digest, size);
                    return Ok(());
                }
                // Abandoned (the build that wrote it failed), or found in
                // the repository once its digest was known.
                Ok(None) => return Ok(()),
                Err(failure) => failure,
            };
            let UploadFailure {
                error,
                pause,
                closing,
            } = failure;
            let done = feed.borrow().done;
            if let (true, Some((digest, size))) = (closing, done) {
                let what = format!("blob {digest} to {repository}");
                let url = self
                    .api_url(registry, repository, &format!("blobs/{digest}"))
                    .await?;
                if self.blob_is_there(&scope, &url, &what).await {
                    tracing::debug!(%what, %error, "closing the upload failed but the registry has the blob");
                    self.uploaded(registry, repository, &digest, size);
                    return Ok(());
                }
            }
            if restarts(&error) {
                retry.again(self, error, pause).await?;
                continue;
            }
            if !monolithic && !closing && refuses_chunks(&error) {
                tracing::debug!(%growing, %error, "chunked upload refused; uploading in one request once complete");
                monolithic = true;
                continue;
            }
            return Err(retry.give_up(error));
        }
    }

    /// One session of [`Client::stream_blob`]: `Some((digest, size))` when
    /// the blob went up, `None` when the writer abandoned it or the
    /// repository turned out to have it. The digest of a blob still being
    /// written is not known when its upload starts, so no HEAD can come
    /// first: it comes as soon as the digest is known, before the rest of
    /// the blob is sent, and a blob the repository has (identical bytes
    /// built again without the cache) cancels the session (`DELETE`)
    /// instead of closing it.
    async fn upload_growing(
        &self,
        scope: &Scope,
        feed: &mut watch::Receiver<Feed>,
        store: &ContentStore,
        what: &str,
        retry: &mut Retry,
    ) -> std::result::Result<Option<(Digest, u64)>, UploadFailure> {
        let chunk = self.inner.opts.chunk_size.max(1);
        let Some(first) = grown(feed, chunk).await else {
            return Ok(None);
        };
        if let Some((digest, size)) = first.done {
            if self.already_there(scope, &digest).await {
                return Ok(None);
            }
            let what = format!("blob {digest} to {}", scope.repository);
            return self
                .upload(scope, &digest, size, store, &what, None, retry, false)
                .await
                .map(|()| Some((digest, size)));
        }
        let Some(file) = first.file else {
            return Ok(None);
        };
        let mut location = self.start_session(scope, what, retry).await?;
        let mut offset = 0u64;
        let mut looked = false;
        loop {
            let Some(now) = grown(feed, offset + chunk).await else {
                return Ok(None);
            };
            if let (false, Some((digest, _))) = (looked, now.done) {
                looked = true;
                if self.already_there(scope, &digest).await {
                    self.cancel(scope, &location, what).await;
                    return Ok(None);
                }
            }
            let end = match now.done {
                Some((_, size)) => size.min(offset + chunk),
                None => offset + chunk,
            };
            if end > offset {
                location = self
                    .patch(scope, &location, &file, offset, end - offset, what)
                    .await?;
                offset = end;
            }
            if let Some((digest, size)) = now.done {
                if offset >= size {
                    Counters::add(&self.inner.counters.chunked_uploads, 1);
                    let what = format!("blob {digest} to {}", scope.repository);
                    self.close(scope, location, &digest, None, &what).await?;
                    return Ok(Some((digest, size)));
                }
            }
        }
    }

    /// Whether the repository of `scope` has the blob `digest` (one HEAD,
    /// no retries: without an answer the upload goes on); counted and
    /// remembered as a mount source when it has.
    async fn already_there(&self, scope: &Scope, digest: &Digest) -> bool {
        let what = format!("blob {digest} to {}", scope.repository);
        let Ok(url) = self
            .api_url(
                &scope.registry,
                &scope.repository,
                &format!("blobs/{digest}"),
            )
            .await
        else {
            return false;
        };
        if !self.blob_is_there(scope, &url, &what).await {
            return false;
        }
        tracing::debug!(%what, "the repository has the blob already; not uploading it");
        Counters::add(&self.inner.counters.blobs_existing, 1);
        self.note_blob_source(digest, &scope.registry, &scope.repository);
        true
    }

    /// Cancels the upload session at `location` (`DELETE`). A failure is
    /// only logged: the registry drops sessions left open by itself.
    async fn cancel(&self, scope: &Scope, location: &Url, what: &str) {
        let req = Req::new(
            Method::DELETE,
            location.clone(),
            format!("cancelling the upload of {what}"),
        );
        match self.send_once(scope, &req).await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::debug!(status = %r.status(), %what, "the registry kept the upload session")
            }
            Err(f) => {
                tracing::debug!(error = %f.error, %what, "cancelling the upload session failed")
            }
        }
    }

    /// Counts an uploaded blob and remembers where it is.
    fn uploaded(&self, registry: &str, repository: &str, digest: &Digest, size: u64) {
        let counters = &self.inner.counters;
        Counters::add(&counters.blobs_uploaded, 1);
        Counters::add(&counters.bytes_uploaded, size);
        self.note_blob_source(digest, registry, repository);
    }

    /// The upload URL from a `Location` header, resolved against the registry's base URL.
    async fn location(&self, registry: &str, response: &Response) -> Result<Url> {
        let Some(location) = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(Error::Registry {
                registry: registry.to_string(),
                action: "starting a blob upload".into(),
                status: response.status().as_u16(),
                message: "the answer has no Location header".into(),
            });
        };
        let base = self.base_url(registry).await?;
        base.join(location).map_err(|e| Error::Registry {
            registry: registry.to_string(),
            action: "starting a blob upload".into(),
            status: response.status().as_u16(),
            message: format!("the Location header {location:?} is not a URL: {e}"),
        })
    }
}

/// A failure of the upload session itself, not of the blob: a transient
/// error, or 404 (the registry forgot the session) or 416 (a chunk it has
/// seen was sent again). A fresh session starts over.
fn restarts(error: &Error) -> bool {
    error.is_transient()
        || matches!(
            error,
            Error::Registry {
                status: 404 | 416,
                ..
            }
        )
}

/// A refusal that a monolithic upload may not meet: a 4xx answer to a
/// chunked upload other than those that restart it.
fn refuses_chunks(error: &Error) -> bool {
    matches!(error, Error::Registry { status, .. } if (400..500).contains(status))
        && !restarts(error)
}

/// An error that is not the registry's answer to an uploading request.
fn plain(error: Error) -> UploadFailure {
    UploadFailure {
        error,
        pause: None,
        closing: false,
    }
}

/// How far a blob being written has come: the file it is written to, how
/// many of its bytes are there, and its digest and size once it is complete.
#[derive(Clone, Debug, Default)]
pub(crate) struct Feed {
    pub file: Option<Arc<std::fs::File>>,
    pub len: u64,
    pub done: Option<(Digest, u64)>,
}

/// Waits until the blob of `feed` has at least `want` bytes in its file or
/// is complete; `None` when its writer stopped without completing it.
async fn grown(feed: &mut watch::Receiver<Feed>, want: u64) -> Option<Feed> {
    loop {
        {
            let now = feed.borrow_and_update();
            if now.done.is_some() || (now.file.is_some() && now.len >= want) {
                return Some(now.clone());
            }
        }
        if feed.changed().await.is_err() {
            let last = feed.borrow();
            return last.done.is_some().then(|| last.clone());
        }
    }
}

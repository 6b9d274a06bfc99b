//! Blob uploads that run in the background, a bounded number at a time and
//! each (repository, blob) once, so that a build can hand over its layers as
//! it commits them and the push that follows only waits for what is under
//! way ([`Client::blob_uploads`], [`BlobUploads::start`], [`Client::push_with`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kbuild_image::{BlobWatch, ContentStore, Digest};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::push::Feed;
use crate::reference::Reference;

/// Environment variable for [`crate::ClientOptions::concurrency`]: how many
/// blobs are uploaded or downloaded at the same time (1 to
/// [`MAX_PARALLELISM`]).
pub const PARALLELISM_ENV: &str = "KUBECTL_BUILD_REGISTRY_PARALLELISM";

/// The most blob transfers at the same time that may be asked for.
pub const MAX_PARALLELISM: usize = 64;

/// A value of [`PARALLELISM_ENV`] that is not a number from 1 to [`MAX_PARALLELISM`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{PARALLELISM_ENV}={value:?} is not a number of blob transfers from 1 to {MAX_PARALLELISM}"
)]
pub struct ParallelismError {
    /// The value as given.
    pub value: String,
}

/// How many blobs to transfer at the same time according to
/// [`PARALLELISM_ENV`]; `None` when it is unset or empty.
pub fn parallelism_from_env() -> std::result::Result<Option<usize>, ParallelismError> {
    match std::env::var(PARALLELISM_ENV) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PARALLELISM).contains(&n) => Ok(Some(n)),
            _ => Err(ParallelismError { value: v }),
        },
        _ => Ok(None),
    }
}

/// (registry, repository, blob).
type Key = (String, String, Digest);

/// An upload running as its own task; stopped when dropped.
struct Task(JoinHandle<Result<()>>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
struct State {
    running: BTreeMap<Key, Task>,
    done: BTreeSet<Key>,
    /// Uploads of blobs still being written, by a number of their own
    /// until their digest is known ([`BlobUploads::stream`]).
    streaming: BTreeMap<u64, Task>,
    next_stream: u64,
}

/// Blob uploads of one push, at most [`crate::ClientOptions::concurrency`] at
/// a time, each blob once per repository.
///
/// Made by [`Client::blob_uploads`] before the image is complete:
/// [`BlobUploads::start`] hands over a blob as soon as it is in the content
/// store (a build calls it for each layer it commits), and
/// [`Client::push_with`] later waits for those uploads, does the rest and
/// then writes the manifests and tags. Nothing here writes a manifest or a
/// tag, so uploads of a build that then fails leave only unreferenced blobs.
/// Dropping it stops the uploads still running.
pub struct BlobUploads {
    client: Client,
    store: ContentStore,
    /// The repository that [`BlobUploads::start`] uploads to: the first
    /// target's (the push mounts from there into the other targets).
    early: Option<(String, String)>,
    limit: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for BlobUploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("BlobUploads")
            .field("early", &self.early)
            .field("running", &state.running.len())
            .field("done", &state.done.len())
            .finish()
    }
}

impl Client {
    /// Uploads for a push of blobs of `store` to `targets`, sharing one
    /// bound of [`crate::ClientOptions::concurrency`] uploads at a time.
    pub fn blob_uploads(&self, targets: &[Reference], store: &ContentStore) -> BlobUploads {
        BlobUploads {
            client: self.clone(),
            store: store.clone(),
            early: targets
                .first()
                .map(|t| (t.registry().to_string(), t.repository().to_string())),
            limit: Arc::new(Semaphore::new(self.inner.opts.concurrency.max(1))),
            state: Arc::new(Mutex::new(State::default())),
        }
    }
}

impl BlobUploads {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A [`BlobWatch`] for a layer about to be written: its blob uploads to
    /// the first target's repository while it is written
    /// ([`Client::stream_blob`]), under the same bound as the other
    /// uploads. Once the layer is committed, the upload counts as that
    /// blob's (a later [`BlobUploads::start`] of it waits for it rather than
    /// uploading again); a layer abandoned stops it. `None` outside a tokio
    /// runtime or without a target.
    pub fn stream(&self) -> Option<Box<dyn BlobWatch>> {
        let (registry, repository) = self.early.clone()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(Feed::default());
        let (client, store, limit) = (self.client.clone(), self.store.clone(), self.limit.clone());
        let (reg, repo) = (registry.clone(), repository.clone());
        let handle = runtime.spawn(async move {
            let _permit = limit.acquire_owned().await.ok();
            client.stream_blob(&reg, &repo, rx, &store).await
        });
        let mut state = self.lock();
        let id = state.next_stream;
        state.next_stream += 1;
        state.streaming.insert(id, Task(handle));
        Some(Box::new(LayerStream {
            feed: tx,
            state: Arc::downgrade(&self.state),
            id,
            registry,
            repository,
            done: false,
        }))
    }

    /// Starts uploading the blob `digest` of `size` bytes, which must be in
    /// the content store, to the first target's repository in the
    /// background, unless it is already uploading or uploaded. A failure is
    /// reported by the push that waits for it. Outside a tokio runtime this
    /// does nothing (the push uploads the blob then).
    pub fn start(&self, digest: &Digest, size: u64) {
        if let Some((registry, repository)) = &self.early {
            self.spawn(registry, repository, digest, size);
        }
    }

    /// The content store the blobs are read from.
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    /// How many uploads were started so far (running or finished).
    pub fn started(&self) -> usize {
        let state = self.lock();
        state.running.len() + state.done.len()
    }

    /// Starts one upload task unless that blob is known to the session;
    /// false when no runtime can run it.
    fn spawn(&self, registry: &str, repository: &str, digest: &Digest, size: u64) -> bool {
        let key = (registry.to_string(), repository.to_string(), *digest);
        let mut state = self.lock();
        if state.running.contains_key(&key) || state.done.contains(&key) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let (client, store, limit) = (self.client.clone(), self.store.clone(), self.limit.clone());
        let (registry, repository, digest) = key.clone();
        let handle = runtime.spawn(async move {
            // The semaphore is never closed; without a permit the upload
            // would only run unbounded.
            let _permit = limit.acquire_owned().await.ok();
            client
                .push_blob(&registry, &repository, &digest, size, &store)
                .await
        });
        state.running.insert(key, Task(handle));
        true
    }

    /// Uploads `blobs` to `registry/repository`: waits for those already
    /// under way, starts the others. Ends at the first failure; the other
    /// uploads it started stop.
    pub(crate) async fn finish(
        &self,
        registry: &str,
        repository: &str,
        blobs: &BTreeMap<Digest, u64>,
    ) -> Result<()> {
        let mut inline = Vec::new();
        for (digest, size) in blobs {
            if !self.spawn(registry, repository, digest, *size) {
                inline.push((*digest, *size));
            }
        }
        for (digest, size) in inline {
            self.client
                .push_blob(registry, repository, &digest, size, &self.store)
                .await?;
        }
        let tasks: Vec<(Key, Task)> = {
            let mut state = self.lock();
            blobs
                .keys()
                .filter_map(|d| {
                    let key = (registry.to_string(), repository.to_string(), *d);
                    state.running.remove(&key).map(|t| (key, t))
                })
                .collect()
        };
        let mut pending: FuturesUnordered<_> = tasks
            .into_iter()
            .map(|(key, mut task)| async move {
                let outcome = (&mut task.0).await;
                (key, task, outcome)
            })
            .collect();
        while let Some((key, _task, outcome)) = pending.next().await {
            match outcome {
                Ok(Ok(())) => {
                    self.lock().done.insert(key);
                }
                Ok(Err(e)) => return Err(e),
                Err(source) => {
                    return Err(Error::UploadStopped {
                        what: format!("blob {} to {}", key.2, key.1),
                        registry: key.0,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The [`BlobWatch`] of [`BlobUploads::stream`]: passes the blob's progress
/// to its upload task and, once the digest is known, files the task under it.
struct LayerStream {
    feed: watch::Sender<Feed>,
    state: Weak<Mutex<State>>,
    id: u64,
    registry: String,
    repository: String,
    done: bool,
}

impl BlobWatch for LayerStream {
    fn start(&mut self, file: std::fs::File) {
        let file = Arc::new(file);
        self.feed.send_modify(|f| f.file = Some(file));
    }

    fn grown(&mut self, len: u64) {
        self.feed.send_modify(|f| f.len = len);
    }

    fn done(&mut self, digest: &Digest, size: u64) {
        self.done = true;
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = lock(&state);
        let Some(task) = state.streaming.remove(&self.id) else {
            return;
        };
        let key = (self.registry.clone(), self.repository.clone(), *digest);
        if state.running.contains_key(&key) || state.done.contains(&key) {
            // The same blob is already on its way: this upload is not needed.
            drop(task);
            return;
        }
        state.running.insert(key, task);
        drop(state);
        self.feed.send_modify(|f| {
            f.len = size;
            f.done = Some((*digest, size));
        });
    }
}

impl Drop for LayerStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Abandoned: its upload stops.
        if let Some(state) = self.state.upgrade() {
            let task = lock(&state).streaming.remove(&self.id);
            drop(task);
        }
    }
}

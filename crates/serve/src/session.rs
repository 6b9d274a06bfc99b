//! One `Builder.Build` session on the daemon: receive the build options,
//! sync the context (ask only for the contents it lacks, write them to its
//! file cache, materialise the context directory), run the build with the
//! same solver and outputs as a local build under `--root`, stream progress
//! and file outputs back, ask the client for credentials and secrets when
//! needed (kept in memory only), and cancel when the client says so or goes
//! away.

use crate::Config;
use kbuild_proto::v1::{
    self, build_client_message::Message as In, build_server_message::Message as Out,
};
use kbuild_solver::engine::{Context, SolveOptions, Solver};
use kbuild_solver::options::{
    Output, OutputKind, ProvideSecret, SecretProvider, SecretSource, SecretSpec,
};
use kbuild_solver::progress::{Event, Progress};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;

/// Where the server messages go (the response stream).
pub(crate) type Tx = mpsc::Sender<Result<v1::BuildServerMessage, tonic::Status>>;

/// Digests asked for in one FileRequest.
const REQUEST_BATCH: usize = 4096;
/// Bytes of a streamed output in one ResultChunk.
const RESULT_CHUNK: usize = 256 * 1024;
/// How long the daemon waits for the client to answer a question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{0}")]
    Protocol(String),
    #[error("the client closed the session")]
    Gone,
    #[error("context {path}: {source}")]
    Context {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Option(#[from] kbuild_solver::options::OptionError),
    #[error(transparent)]
    Compression(#[from] kbuild_solver::options::CompressionConflict),
    #[error(transparent)]
    Store(#[from] kbuild_image::Error),
    #[error("snapshots: {0}")]
    Snapshots(#[from] kbuild_worker::snapshot::Error),
    #[error(transparent)]
    Registry(#[from] kbuild_registry::Error),
    #[error(transparent)]
    Timeouts(#[from] kbuild_registry::TimeoutsError),
    #[error(transparent)]
    Solve(#[from] kbuild_solver::engine::SolveError),
    #[error("the client's .dockerignore: {0}")]
    Ignore(#[source] kbuild_ignore::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("the builder's daemon is shutting down (SIGTERM): the build was cancelled; nothing was tagged")]
    ShuttingDown,
}

fn proto(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
}

/// Questions waiting for the client's answer, by number.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    credentials: Mutex<HashMap<u64, std::sync::mpsc::Sender<v1::CredentialsResponse>>>,
    secrets: Mutex<HashMap<u64, std::sync::mpsc::Sender<v1::SecretResponse>>>,
}

/// Messages to the client that must never block the solver (progress,
/// questions): queued without bound, forwarded in order.
#[derive(Clone)]
struct Queue(Arc<Mutex<Option<mpsc::UnboundedSender<v1::BuildServerMessage>>>>);

impl Queue {
    fn send(&self, m: Out) {
        if let Ok(q) = self.0.lock() {
            if let Some(q) = q.as_ref() {
                let _ = q.send(v1::BuildServerMessage { message: Some(m) });
            }
        }
    }
    fn close(&self) {
        if let Ok(mut q) = self.0.lock() {
            q.take();
        }
    }
}

struct WireProgress(Queue);

impl Progress for WireProgress {
    fn event(&self, e: Event) {
        let mut p = v1::ProgressEvent::default();
        use v1::progress_event::Event as E;
        match e {
            Event::Start { id, name } => {
                p.vertex = id;
                p.name = name;
                p.event = Some(E::Started(true));
            }
            Event::Cached { id, name } => {
                p.vertex = id;
                p.name = name;
                p.event = Some(E::Cached(true));
            }
            Event::Done { id, elapsed } => {
                p.vertex = id;
                p.elapsed_nanos = elapsed.as_nanos() as u64;
                p.event = Some(E::Done(true));
            }
            Event::Failed { id, elapsed } => {
                p.vertex = id;
                p.elapsed_nanos = elapsed.as_nanos() as u64;
                p.event = Some(E::Failed(true));
            }
            Event::Log { id, line } => {
                p.vertex = id;
                p.event = Some(E::Log(line));
            }
            Event::Note(s) => p.event = Some(E::Note(s)),
        }
        self.0.send(Out::Progress(p));
    }
}

/// The daemon's credential source: asks the client of this session.
struct ClientCredentials {
    queue: Queue,
    pending: Arc<Pending>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCredentials")
    }
}

impl kbuild_registry::CredentialSource for ClientCredentials {
    fn login(
        &self,
        registry: &str,
        scopes: &[String],
        limit: Duration,
    ) -> kbuild_registry::Result<Option<kbuild_registry::RegistryLogin>> {
        let id = self.pending.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        if let Ok(mut p) = self.pending.credentials.lock() {
            p.insert(id, tx);
        }
        self.queue
            .send(Out::CredentialsRequest(v1::CredentialsRequest {
                host: registry.to_string(),
                scopes: scopes.to_vec(),
                id,
            }));
        let err = |reason: String| kbuild_registry::Error::Credentials {
            source_name: self.describe(),
            reason,
        };
        let answer = rx
            .recv_timeout(limit.max(ANSWER_TIMEOUT))
            .map_err(|_| err(format!("no answer for {registry}")))?;
        if !answer.error.is_empty() {
            return Err(err(answer.error));
        }
        let some = |s: String| (!s.is_empty()).then_some(s);
        let login = kbuild_registry::RegistryLogin {
            username: some(answer.username),
            password: some(answer.secret),
            identity_token: some(answer.token),
        };
        Ok((login != kbuild_registry::RegistryLogin::default()).then_some(login))
    }

    fn describe(&self) -> String {
        "the build's client".to_string()
    }
}

/// `--secret` values, asked from the client when a RUN mounts one.
struct ClientSecrets {
    queue: Queue,
    pending: Arc<Pending>,
}

impl ProvideSecret for ClientSecrets {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let request = self.pending.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        if let Ok(mut p) = self.pending.secrets.lock() {
            p.insert(request, tx);
        }
        self.queue.send(Out::SecretRequest(v1::SecretRequest {
            id: id.to_string(),
            request,
        }));
        let answer = rx
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| "the client did not send it".to_string())?;
        if !answer.error.is_empty() {
            return Err(format!("on the client: {}", answer.error));
        }
        Ok((!answer.missing).then_some(answer.data))
    }
}

/// One entry of a materialised context, as recorded for the next session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Recorded {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    digest: String,
    link: String,
}

impl From<&v1::ContextEntry> for Recorded {
    fn from(e: &v1::ContextEntry) -> Recorded {
        Recorded {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime_unix_nanos,
            digest: e.digest.clone(),
            link: e.link_target.clone(),
        }
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn valid_rel(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// Files and bytes received, for the session's BuildDone and logs.
#[derive(Default, Clone, Copy)]
struct Transfer {
    files: u64,
    bytes: u64,
}

/// Runs one session to its end; every outcome ends with BuildDone unless
/// the client is gone.
pub(crate) async fn run(
    config: Arc<Config>,
    mut inbound: Streaming<v1::BuildClientMessage>,
    tx: Tx,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let start = match inbound.message().await {
        Ok(Some(v1::BuildClientMessage {
            message: Some(In::Start(s)),
        })) => s,
        Ok(_) => {
            let _ = tx
                .send(Err(tonic::Status::invalid_argument(
                    "a build session starts with BuildStart",
                )))
                .await;
            return;
        }
        Err(_) => return,
    };
    let (queue_tx, mut queue_rx) = mpsc::unbounded_channel();
    let queue = Queue(Arc::new(Mutex::new(Some(queue_tx))));
    // Forwards queued messages (progress, questions) in order.
    let forward_tx = tx.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(m) = queue_rx.recv().await {
            if forward_tx.send(Ok(m)).await.is_err() {
                break;
            }
        }
    });
    let mut transfer = Transfer::default();
    let pending = Arc::new(Pending::default());
    let cancel = kbuild_worker::executor::Cancel::new();
    let outcome = session(
        &config,
        &start,
        inbound,
        &tx,
        &queue,
        &pending,
        &cancel,
        &mut transfer,
        stopping,
    )
    .await;
    queue.close();
    let _ = forwarder.await;
    let mut done = v1::BuildDone {
        files_received: transfer.files,
        bytes_received: transfer.bytes,
        ..Default::default()
    };
    match outcome {
        Ok((d, results, _dir)) => {
            done = v1::BuildDone {
                files_received: transfer.files,
                bytes_received: transfer.bytes,
                ..d
            };
            for (index, path) in results {
                if let Err(e) = stream_result(&tx, index, &path).await {
                    done.error = format!("stream output {index}: {e}");
                    break;
                }
            }
        }
        Err(SessionError::Gone) => {
            tracing::info!("build cancelled: the client went away");
            return;
        }
        Err(SessionError::Cancelled) => {
            tracing::info!("build cancelled by the client");
            done.cancelled = true;
            done.error = "build cancelled (interrupted); nothing was tagged".into();
        }
        Err(SessionError::Solve(e)) => {
            if let kbuild_solver::engine::SolveError::EntitlementDenied { entitlement, .. } = &e {
                done.entitlement = entitlement.to_string();
            }
            tracing::info!(error = %e, "build failed");
            done.error = e.to_string();
        }
        Err(e) => {
            tracing::info!(error = %e, "build failed");
            done.error = e.to_string();
        }
    }
    let _ = tx
        .send(Ok(v1::BuildServerMessage {
            message: Some(Out::Done(done)),
        }))
        .await;
}

async fn stream_result(tx: &Tx, output: u32, path: &Path) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; RESULT_CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        let last = n == 0;
        let m = Out::Result(v1::ResultChunk {
            output,
            data: buf[..n].to_vec(),
            last,
        });
        if tx
            .send(Ok(v1::BuildServerMessage { message: Some(m) }))
            .await
            .is_err()
        {
            return Err(std::io::Error::other("the client went away"));
        }
        if last {
            return Ok(());
        }
    }
}

/// Where this session writes: removed when it ends.
struct SessionDir(PathBuf);

impl Drop for SessionDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished build sends: BuildDone (without the counters), the
/// files to stream back (output index, path), and the directory holding
/// them (removed once sent).
type Finished = (v1::BuildDone, Vec<(u32, PathBuf)>, SessionDir);

async fn next(inbound: &mut Streaming<v1::BuildClientMessage>) -> Result<In, SessionError> {
    match inbound.message().await {
        Ok(Some(v1::BuildClientMessage { message: Some(m) })) => Ok(m),
        Ok(Some(_)) => Err(proto("an empty message")),
        Ok(None) | Err(_) => Err(SessionError::Gone),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &Arc<Config>,
    start: &v1::BuildStart,
    mut inbound: Streaming<v1::BuildClientMessage>,
    tx: &Tx,
    queue: &Queue,
    pending: &Arc<Pending>,
    cancel: &kbuild_worker::executor::Cancel,
    transfer: &mut Transfer,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Finished, SessionError> {
    let root = config.root.clone();
    // The context: its entries first, then the contents the daemon lacks.
    let mut entries = Vec::new();
    loop {
        match next(&mut inbound).await? {
            In::Manifest(m) => {
                entries.extend(m.entries);
                if m.complete {
                    break;
                }
            }
            In::Cancel(_) => return Err(SessionError::Cancelled),
            _ => return Err(proto("expected the context manifest")),
        }
    }
    let mut context_lock = None;
    let context_dir = if start.has_context {
        let key = hex::encode(Sha256::digest(
            format!("{}\0{}", start.client_hostname, start.context_path).as_bytes(),
        ));
        let state = root.join("contexts").join(key);
        let files = root.join("context-files");
        // Held until the build ends: no other session of this context
        // changes the copy while the build reads it.
        let lock = sync_context(&state, &files, &entries, &mut inbound, tx, transfer).await?;
        context_lock = Some(lock);
        tracing::info!(
            context = %start.context_path,
            client = %start.client_hostname,
            files = transfer.files,
            bytes = transfer.bytes,
            "context: received {} files ({} bytes)",
            transfer.files,
            transfer.bytes
        );
        Some(state.join("dir"))
    } else {
        None
    };
    // From here on the client only answers questions or cancels.
    let cancelled = Arc::new(tokio::sync::Notify::new());
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let pending = pending.clone();
        let cancel = cancel.clone();
        let cancelled = cancelled.clone();
        let gone = gone.clone();
        tokio::spawn(async move {
            loop {
                match next(&mut inbound).await {
                    Ok(In::Credentials(c)) => {
                        if let Some(tx) = pending
                            .credentials
                            .lock()
                            .ok()
                            .and_then(|mut p| p.remove(&c.id))
                        {
                            let _ = tx.send(c);
                        }
                    }
                    Ok(In::Secret(s)) => {
                        if let Some(tx) = pending
                            .secrets
                            .lock()
                            .ok()
                            .and_then(|mut p| p.remove(&s.request))
                        {
                            let _ = tx.send(s);
                        }
                    }
                    Ok(In::Cancel(_)) => {
                        cancel.cancel();
                        cancelled.notify_one();
                        return;
                    }
                    Err(_) => {
                        gone.store(true, Ordering::Relaxed);
                        cancel.cancel();
                        cancelled.notify_one();
                        return;
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    let work = build(config, start, context_dir, queue, pending, cancel);
    let outcome = tokio::select! {
        r = work => { reader.abort(); r }
        _ = cancelled.notified() => {
            cancel.cancel();
            if gone.load(Ordering::Relaxed) {
                Err(SessionError::Gone)
            } else {
                Err(SessionError::Cancelled)
            }
        }
        _ = stopping.wait_for(|s| *s) => {
            cancel.cancel();
            Err(SessionError::ShuttingDown)
        }
    };
    drop(context_lock);
    outcome
}

/// Brings `state/dir` to the client's context: asks for the contents
/// missing from the file cache (`files/<hex>`, shared by all contexts),
/// writes them there as they stream in, then creates, replaces and removes
/// entries so the directory holds exactly `entries`.
async fn sync_context(
    state: &Path,
    files: &Path,
    entries: &[v1::ContextEntry],
    inbound: &mut Streaming<v1::BuildClientMessage>,
    tx: &Tx,
    transfer: &mut Transfer,
) -> Result<kbuild_image::lock::FileLock, SessionError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SessionError::Context { path, source }
    };
    std::fs::create_dir_all(state).map_err(io(state))?;
    std::fs::create_dir_all(files).map_err(io(files))?;
    // One session per context at a time.
    let lock_path = state.join("lock");
    let lock = tokio::task::spawn_blocking(move || {
        kbuild_image::lock::FileLock::acquire(&lock_path, kbuild_image::lock::LockMode::Exclusive)
    })
    .await
    .map_err(|e| proto(format!("lock the context: {e}")))?
    .map_err(io(state))?;
    let mut seen = HashSet::new();
    for e in entries {
        if !valid_rel(&e.path) {
            return Err(proto(format!(
                "context entry {:?}: not a relative path",
                e.path
            )));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(proto(format!("context entry {:?} listed twice", e.path)));
        }
        if e.mode & S_IFMT == S_IFREG && hex_of(&e.digest).is_none() {
            return Err(proto(format!(
                "context entry {:?}: bad digest {:?}",
                e.path, e.digest
            )));
        }
    }
    // Every entry's parent must be a listed directory: nothing is ever
    // written through a symbolic link.
    let dirs: HashSet<&str> = entries
        .iter()
        .filter(|e| e.mode & S_IFMT == S_IFDIR)
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(proto(format!(
                    "context entry {:?}: its directory is not listed",
                    e.path
                )));
            }
        }
    }
    let mut missing: Vec<String> = Vec::new();
    let mut asked = HashSet::new();
    for e in entries.iter().filter(|e| e.mode & S_IFMT == S_IFREG) {
        let hex = hex_of(&e.digest).unwrap_or_default();
        if !files.join(hex).exists() && asked.insert(e.digest.clone()) {
            missing.push(e.digest.clone());
        }
    }
    for batch in missing.chunks(REQUEST_BATCH) {
        tx.send(Ok(v1::BuildServerMessage {
            message: Some(Out::FileRequest(v1::FileRequest {
                digests: batch.to_vec(),
            })),
        }))
        .await
        .map_err(|_| SessionError::Gone)?;
    }
    for digest in &missing {
        let hex = hex_of(digest).unwrap_or_default();
        let mut temp = tempfile::Builder::new()
            .prefix(".in-")
            .tempfile_in(files)
            .map_err(io(files))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let chunk = match next(inbound).await? {
                In::File(c) => c,
                In::Cancel(_) => return Err(SessionError::Cancelled),
                _ => return Err(proto("expected file content")),
            };
            if chunk.digest != *digest || chunk.offset != size {
                return Err(proto(format!(
                    "expected {digest} at offset {size}, got {} at {}",
                    chunk.digest, chunk.offset
                )));
            }
            hasher.update(&chunk.data);
            temp.write_all(&chunk.data).map_err(io(temp.path()))?;
            size += chunk.data.len() as u64;
            transfer.bytes += chunk.data.len() as u64;
            if chunk.last {
                break;
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != *digest {
            return Err(proto(format!(
                "a context file changed while it was sent (expected {digest}, got {got}); build again"
            )));
        }
        let target = files.join(hex);
        temp.persist(&target).map_err(|e| SessionError::Context {
            path: target.display().to_string(),
            source: e.error,
        })?;
        transfer.files += 1;
    }
    let state = state.to_path_buf();
    let files = files.to_path_buf();
    let entries = entries.to_vec();
    tokio::task::spawn_blocking(move || materialise(&state, &files, &entries))
        .await
        .map_err(|e| proto(format!("materialise the context: {e}")))??;
    Ok(lock)
}

fn set_times(path: &Path, nanos: i64) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let t = Timespec {
        tv_sec: nanos.div_euclid(1_000_000_000),
        tv_nsec: nanos.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn materialise(
    state: &Path,
    files: &Path,
    entries: &[v1::ContextEntry],
) -> Result<(), SessionError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SessionError::Context { path, source }
    };
    let dir = state.join("dir");
    let record_path = state.join("entries.json");
    // What the last session left; anything unreadable is rebuilt.
    let mut before: Option<BTreeMap<String, Recorded>> = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    // Gone while the copy changes: a session that dies half-way leaves no
    // record, and the next one compares nothing with it.
    match std::fs::remove_file(&record_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&record_path)(e)),
    }
    // Without a record of what the copy holds, it starts afresh.
    if before.is_none() || !dir.is_dir() {
        before = None;
        remove_any(&dir).map_err(io(&dir))?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let before = before.unwrap_or_default();
    let mut sorted: Vec<&v1::ContextEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let wanted: HashSet<&str> = sorted.iter().map(|e| e.path.as_str()).collect();
    // Remove what is no longer listed (deepest first: reverse order).
    for (path, _) in before.iter().rev() {
        if !wanted.contains(path.as_str()) {
            let p = dir.join(path);
            remove_any(&p).map_err(io(&p))?;
        }
    }
    for e in &sorted {
        let target = dir.join(&e.path);
        let record = Recorded::from(*e);
        let current = std::fs::symlink_metadata(&target).ok();
        let kind = e.mode & S_IFMT;
        let unchanged = before.get(&e.path) == Some(&record)
            && current.as_ref().is_some_and(|m| match kind {
                S_IFDIR => m.is_dir(),
                S_IFLNK => m.file_type().is_symlink(),
                _ => m.is_file(),
            });
        if unchanged {
            continue;
        }
        match kind {
            S_IFDIR => {
                if !current.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&target).map_err(io(&target))?;
                    std::fs::create_dir(&target).map_err(io(&target))?;
                }
            }
            S_IFLNK => {
                remove_any(&target).map_err(io(&target))?;
                std::os::unix::fs::symlink(&e.link_target, &target).map_err(io(&target))?;
            }
            S_IFREG => {
                let src = files.join(hex_of(&e.digest).unwrap_or_default());
                let parent = target.parent().unwrap_or(&dir);
                let temp = tempfile::Builder::new()
                    .prefix(".sync-")
                    .tempfile_in(parent)
                    .map_err(io(parent))?;
                std::fs::copy(&src, temp.path()).map_err(io(&src))?;
                remove_any(&target).map_err(io(&target))?;
                temp.persist(&target).map_err(|e| SessionError::Context {
                    path: target.display().to_string(),
                    source: e.error,
                })?;
            }
            _ => {
                // Other kinds (sockets, devices) are not sent: skipped.
                continue;
            }
        }
        std::os::unix::fs::lchown(&target, Some(e.uid), Some(e.gid)).map_err(io(&target))?;
        if kind != S_IFLNK {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(io(&target))?;
        }
        if kind != S_IFDIR {
            set_times(&target, e.mtime_unix_nanos).map_err(io(&target))?;
        }
    }
    // Directory times last, deepest first: filling them changed them.
    for e in sorted.iter().rev().filter(|e| e.mode & S_IFMT == S_IFDIR) {
        let target = dir.join(&e.path);
        set_times(&target, e.mtime_unix_nanos).map_err(io(&target))?;
    }
    let record: BTreeMap<&str, Recorded> = sorted
        .iter()
        .filter(|e| matches!(e.mode & S_IFMT, S_IFDIR | S_IFREG | S_IFLNK))
        .map(|e| (e.path.as_str(), Recorded::from(*e)))
        .collect();
    let json =
        serde_json::to_vec(&record).map_err(|e| proto(format!("record the context: {e}")))?;
    kbuild_image::write_atomic(&record_path, &json)?;
    Ok(())
}

/// Runs the build as a local one does (see the CLI's build), with this
/// session's progress, credentials and secrets.
async fn build(
    config: &Arc<Config>,
    start: &v1::BuildStart,
    context_dir: Option<PathBuf>,
    queue: &Queue,
    pending: &Arc<Pending>,
    cancel: &kbuild_worker::executor::Cancel,
) -> Result<Finished, SessionError> {
    use kbuild_image::ContentStore;
    use kbuild_worker::snapshot::Snapshotter;
    let root = &config.root;
    let store = Arc::new(ContentStore::open(root.join("content"))?);
    let _lock = store.lock_shared()?;
    let snaps = Snapshotter::new(root.join("snapshots"))?;
    let session_dir = SessionDir(
        tempfile::Builder::new()
            .prefix("session-")
            .tempdir_in({
                let d = root.join("sessions");
                std::fs::create_dir_all(&d).map_err(|source| SessionError::Context {
                    path: d.display().to_string(),
                    source,
                })?;
                d
            })
            .map_err(|source| SessionError::Context {
                path: root.join("sessions").display().to_string(),
                source,
            })?
            .keep(),
    );
    // Outputs the client writes come back as files of this session.
    let mut outputs = Vec::new();
    let mut streamed = Vec::new();
    for (i, spec) in start.outputs.iter().enumerate() {
        let mut o = Output::parse(spec, &start.tags)?;
        match o.kind {
            OutputKind::Registry | OutputKind::Image | OutputKind::Containerd => {}
            OutputKind::Docker if o.dest.is_none() => {
                return Err(proto(
                    "--load into a Docker daemon is not served by a remote builder yet; use -o type=docker,dest=FILE and docker load",
                ))
            }
            OutputKind::Oci if o.as_directory => {
                return Err(proto(
                    "-o type=oci,tar=false is not served by a remote builder yet; use the tarball form",
                ))
            }
            OutputKind::Local => {
                o.kind = OutputKind::Tar;
                o.preserve_special = true;
                o.dest = Some(session_dir.0.join(format!("out-{i}")));
                streamed.push((i as u32, session_dir.0.join(format!("out-{i}"))));
            }
            _ => {
                o.dest = Some(session_dir.0.join(format!("out-{i}")));
                streamed.push((i as u32, session_dir.0.join(format!("out-{i}"))));
            }
        }
        outputs.push(o);
    }
    let (compression, force_compression) = kbuild_solver::options::layer_compression(&outputs)?;
    let credentials = kbuild_registry::Credentials::from_source(Arc::new(ClientCredentials {
        queue: queue.clone(),
        pending: pending.clone(),
    }));
    let timeouts = if start.registry_timeouts.is_empty() {
        kbuild_registry::Timeouts::default()
    } else {
        kbuild_registry::Timeouts::parse(&start.registry_timeouts)?
    };
    let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        insecure: start.insecure_registries.clone(),
        credentials,
        timeouts,
        ..Default::default()
    })?;
    let provider = SecretProvider(Arc::new(ClientSecrets {
        queue: queue.clone(),
        pending: pending.clone(),
    }));
    let secrets = start
        .secret_ids
        .iter()
        .map(|id| SecretSpec {
            id: id.clone(),
            source: SecretSource::Provided(provider.clone()),
        })
        .collect();
    let add_hosts = start
        .add_hosts
        .iter()
        .map(|h| kbuild_solver::options::parse_add_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let network = if start.network.is_empty() {
        Default::default()
    } else {
        kbuild_solver::options::parse_network(&start.network)?
    };
    let allow_insecure = start.allow.iter().any(|a| a == "security.insecure");
    let progress: Arc<dyn Progress> = Arc::new(WireProgress(queue.clone()));
    // With a push output, layers upload while the build goes on (each new
    // one while it is compressed), as in a local build.
    let early_push = kbuild_solver::outputs::EarlyPush::new(&registry, &store, &outputs)?;
    let solver = Solver::new(
        store.clone(),
        Arc::new(snaps),
        Arc::new(registry),
        SolveOptions {
            no_cache: start.no_cache,
            pull: start.pull,
            compression,
            force_compression,
            source_date_epoch: start.source_date_epoch,
            secrets,
            ssh: Vec::new(),
            add_hosts,
            network,
            allow_insecure,
            network_timeouts: timeouts,
            cache_mounts: root.join("cache-mounts"),
            executor: kbuild_worker::executor::Executor::current_exe(),
            cancel: cancel.clone(),
            on_layer: early_push.as_ref().map(|e| e.hook()).unwrap_or_default(),
            annotations: start
                .annotations
                .iter()
                .map(|a| kbuild_solver::options::Annotation::parse_flag(a))
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
            shm_size: match start.shm_size {
                0 => kbuild_worker::executor::DEFAULT_SHM_SIZE,
                n => n,
            },
            provenance: provenance_request(start, &outputs)?,
            outputs_gate: Default::default(),
        },
        progress,
    );
    let ignore = if start.dockerignore.is_empty() {
        None
    } else {
        Some(kbuild_ignore::Matcher::parse(&start.dockerignore).map_err(SessionError::Ignore)?)
    };
    let checksums = context_dir
        .as_ref()
        .map(|dir| kbuild_solver::checksums::ChecksumCache::load(&root.join("checksums"), dir));
    let ctx = Context {
        dir: context_dir.clone(),
        ignore,
        checksums,
        named: Default::default(),
    };
    let platforms = start
        .platforms
        .iter()
        .map(kbuild_platform::Platform::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| proto(e.to_string()))?;
    let build_platform = match &start.build_platform {
        Some(p) => kbuild_platform::Platform::try_from(p).map_err(|e| proto(e.to_string()))?,
        None => kbuild_platform::Platform::host(),
    };
    let plan_options = kbuild_dockerfile::plan::PlanOptions {
        platforms,
        build_platform,
        build_args: start.build_args.clone().into_iter().collect(),
        target: (!start.target.is_empty()).then(|| start.target.clone()),
        labels: start.labels.clone().into_iter().collect(),
        named_contexts: start
            .named_images
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    kbuild_dockerfile::plan::NamedContext::Image(r.clone()),
                )
            })
            .collect(),
    };
    let dockerfile = String::from_utf8(start.dockerfile.clone())
        .map_err(|_| proto("the Dockerfile is not UTF-8"))?;
    let name = if start.dockerfile_path.is_empty() {
        "Dockerfile".to_string()
    } else {
        start.dockerfile_path.clone()
    };
    let result = solver
        .build(&dockerfile, &name, &plan_options, &ctx)
        .await?;
    if start.push_by_digest {
        // Blobs and manifests go up, pinned to the root digest: no tag is
        // written (the coordinator merging several daemons' results does).
        let pinned: oci_spec::image::Digest = result
            .root
            .digest
            .to_string()
            .parse()
            .map_err(|e| proto(format!("root digest: {e}")))?;
        for o in outputs.iter_mut().filter(|o| o.push) {
            o.names = o
                .names
                .iter()
                .map(|n| {
                    kbuild_registry::Reference::parse(n)
                        .map(|r| r.with_digest(pinned.clone()).to_string())
                })
                .collect::<Result<_, _>>()?;
        }
    }
    let report =
        kbuild_solver::outputs::export_with(&solver, &result, &outputs, early_push.as_ref())
            .await?;
    if let (Some(cache), Some(dir)) = (&ctx.checksums, &ctx.dir) {
        if let Err(e) = cache.save(dir) {
            tracing::warn!(error = %e, "could not keep the context checksum cache");
        }
    }
    let descriptor = |d: &kbuild_image::Descriptor| v1::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        platform: None,
    };
    let config_digest = match result.images.as_slice() {
        [one] => store
            .read(&one.manifest.digest)
            .ok()
            .and_then(|b| kbuild_image::Manifest::parse(&b).ok())
            .map(|m| m.config.digest.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let done = v1::BuildDone {
        root: Some(descriptor(&result.root)),
        pushed: report.pushed,
        stored: report.stored,
        loaded: report.containerd,
        manifests: result
            .images
            .iter()
            .map(|i| v1::Descriptor {
                platform: Some(v1::Platform::from(&i.platform)),
                ..descriptor(&i.manifest)
            })
            .collect(),
        warnings: result
            .plan
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect(),
        config_digest,
        ..Default::default()
    };
    Ok((done, streamed, session_dir))
}

/// The provenance a session's client asked for, recorded as the client
/// would (`--provenance`, through `BuildStart.provenance`).
fn provenance_request(
    start: &v1::BuildStart,
    outputs: &[kbuild_solver::options::Output],
) -> Result<Option<kbuild_solver::provenance::ProvenanceRequest>, SessionError> {
    use kbuild_solver::provenance::{parse_mode, Invocation, ProvenanceRequest};
    let mode = if start.provenance.is_empty() {
        None
    } else {
        parse_mode(&start.provenance).map_err(|e| proto(e.to_string()))?
    };
    Ok(mode.map(|mode| {
        let inv = Invocation {
            build_args: start
                .build_args
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            labels: start
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            target: (!start.target.is_empty()).then_some(start.target.as_str()),
            contexts: start
                .named_images
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            context_dirs: Vec::new(),
            has_context: start.has_context,
            dockerfile: &start.dockerfile_path,
            names: outputs
                .iter()
                .flat_map(|o| o.names.iter().map(String::as_str))
                .collect(),
        };
        ProvenanceRequest::new(mode, &inv)
    }))
}

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
use kbuild_solver::checksums::{ChecksumCache, TreeChecksums};
use kbuild_solver::options::{ProvideSecret, SecretError};
use kbuild_solver::progress::{Event, Progress};
use kbuild_worker::executor::Cancel;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;

mod build;

/// Where the server messages go (the response stream).
pub(crate) type Tx = mpsc::Sender<Result<v1::BuildServerMessage, tonic::Status>>;

/// Bytes of a streamed output in one ResultChunk.
const RESULT_CHUNK: usize = 256 * 1024;
/// How long the daemon waits for the client to answer a question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The client broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// `BuildStart.provenance` does not parse (the client checks
    /// `--provenance` before sending it: an older or foreign client).
    #[error("the client's provenance request: {0}")]
    Provenance(#[source] kbuild_solver::provenance::ProvenanceError),
    #[error("the client closed the session")]
    Gone,
    /// A blocking task of the session panicked or was dropped.
    #[error("{what}: {source}")]
    Join {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("context {path}: {source}")]
    Context {
        path: String,
        source: std::io::Error,
    },
    /// A file of the content cache could not be placed into the copy.
    #[error("context {} (the content of {entry}; build again): {source}", file.display())]
    CachedContent {
        file: PathBuf,
        entry: String,
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
    #[error(transparent)]
    CacheExport(Box<kbuild_solver::cache_export::CacheExportError>),
    #[error("serve the --ssh agent sockets: {0}")]
    Ssh(#[source] std::io::Error),
    #[error("the client's op graph: {0}")]
    Graph(#[source] kbuild_dockerfile::graph::DecodeError),
    #[error(transparent)]
    WirePlatform(kbuild_proto::Error),
    #[error("the Dockerfile is not UTF-8")]
    DockerfileNotUtf8,
    /// `-o type=docker` without `dest`: the client's Docker daemon is out
    /// of this daemon's reach.
    #[error("--load into a Docker daemon is not served by a remote builder yet; use -o type=docker,dest=FILE and docker load")]
    DockerLoad,
    /// `-o type=oci,tar=false`: a directory output is not streamed back.
    #[error("-o type=oci,tar=false is not served by a remote builder yet; use the tarball form")]
    OciDirectory,
    /// A `type=local` `--cache-from` or `--cache-to` (the client refuses
    /// them before sending: an older or foreign client).
    #[error("a type=local cache is a directory of the client, which the builder cannot reach")]
    LocalCache,
    #[error("cancelled")]
    Cancelled,
    #[error("the daemon is stopping (SIGTERM or SIGINT); nothing was tagged")]
    ShuttingDown,
}

/// How the client broke the session's protocol: each names what came, in
/// the words the client is sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("an empty message")]
    EmptyMessage,
    /// A manifest with entries in a session without a context.
    #[error("context entries without a context")]
    EntriesWithoutContext,
    /// Another message than the empty manifest of a session without a
    /// context.
    #[error("expected the context manifest")]
    ExpectedManifest,
    #[error("a context manifest after the complete one")]
    ManifestAfterComplete,
    #[error("expected the context manifest or file content")]
    ExpectedManifestOrContent,
    #[error("context entry {path:?}: not a relative path")]
    NotRelative { path: String },
    #[error("context entry {path:?} after {after:?}: entries must come once each, in walk order")]
    OutOfOrder { path: String, after: String },
    #[error("context entry {path:?}: its directory is not listed")]
    UnlistedDirectory { path: String },
    #[error("context entry {path:?}: bad digest {digest:?}")]
    BadDigest { path: String, digest: String },
    #[error("bad digest {digest:?}")]
    UndecodableDigest {
        digest: String,
        #[source]
        source: hex::FromHexError,
    },
    #[error("content {digest} that was not asked for")]
    NotAskedFor { digest: String },
    /// A content chunk that is not the next one of the content asked for
    /// first.
    #[error("expected {expected} at offset {offset}, got {got} at {got_offset}")]
    OutOfSequence {
        expected: String,
        offset: u64,
        got: String,
        got_offset: u64,
    },
    /// The content received does not have the digest the manifest listed.
    #[error(
        "a context file changed while it was sent (expected {expected}, got {got}); build again"
    )]
    ContentChanged { expected: String, got: String },
}

/// Questions waiting for the client's answer, by number.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    credentials: Waiters<v1::CredentialsResponse>,
    secrets: Waiters<v1::SecretResponse>,
    /// Agent connections of `--ssh` (see [`crate::ssh`]).
    ssh: Arc<crate::ssh::Streams>,
}

impl Pending {
    /// The session is over: every question still waiting (on a blocking
    /// thread of a step the session's end cancelled) gets no answer at once,
    /// and later questions none either, so no thread waits out its timeout
    /// and holds up the daemon's shutdown.
    fn close(&self) {
        self.credentials.close();
        self.secrets.close();
        self.ssh.close();
    }
}

/// Threads waiting for one kind of answer, by question number; `None`
/// once the session is over.
struct Waiters<T>(Mutex<Option<HashMap<u64, std::sync::mpsc::Sender<T>>>>);

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters(Mutex::new(Some(HashMap::new())))
    }
}

impl<T> Waiters<T> {
    /// Where question `id`'s answer will arrive; `None` after [`close`].
    ///
    /// [`close`]: Waiters::close
    fn wait_for(&self, id: u64) -> Option<std::sync::mpsc::Receiver<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut waiting = self.0.lock().ok()?;
        waiting.as_mut()?.insert(id, tx);
        Some(rx)
    }

    /// Hands question `id`'s answer to its waiter, if it still waits.
    fn answer(&self, id: u64, answer: T) {
        let waiter = self
            .0
            .lock()
            .ok()
            .and_then(|mut w| w.as_mut().and_then(|w| w.remove(&id)));
        if let Some(tx) = waiter {
            let _ = tx.send(answer);
        }
    }

    /// Wakes every waiter with no answer and refuses later questions.
    fn close(&self) {
        if let Ok(mut w) = self.0.lock() {
            *w = None;
        }
    }
}

/// Messages to the client that must never block the solver (progress,
/// questions): queued without bound, forwarded in order.
#[derive(Clone)]
struct Queue(Arc<Mutex<Option<mpsc::UnboundedSender<v1::BuildServerMessage>>>>);

impl Queue {
    /// A queue and the task that forwards its messages to `tx` in order,
    /// until it is closed or the client is gone.
    fn forwarding(tx: Tx) -> (Queue, tokio::task::JoinHandle<()>) {
        let (queue_tx, mut queue_rx) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(async move {
            while let Some(m) = queue_rx.recv().await {
                if tx.send(Ok(m)).await.is_err() {
                    break;
                }
            }
        });
        (Queue(Arc::new(Mutex::new(Some(queue_tx)))), forwarder)
    }

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

/// Why the client of a session gave no credentials.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    /// The session ended before the question went out.
    #[error("the session ended before asking for {registry}")]
    SessionEnded { registry: String },
    /// The answer did not come in time, or the session ended waiting.
    #[error("no answer for {registry}")]
    NoAnswer {
        registry: String,
        #[source]
        source: std::sync::mpsc::RecvTimeoutError,
    },
    /// The client's own error, as it sent it.
    #[error("{0}")]
    Client(String),
}

impl ClientCredentials {
    /// Sends one question and waits for its answer (errors the client
    /// reports included).
    fn ask(
        &self,
        question: v1::CredentialsRequest,
        limit: Duration,
    ) -> kbuild_registry::Result<v1::CredentialsResponse> {
        let registry = question.host.clone();
        let err = |problem: Unanswered| kbuild_registry::Error::CredentialsSource {
            source_name: kbuild_registry::CredentialSource::describe(self),
            what: "",
            source: Box::new(problem),
        };
        let rx = self
            .pending
            .credentials
            .wait_for(question.id)
            .ok_or_else(|| {
                err(Unanswered::SessionEnded {
                    registry: registry.clone(),
                })
            })?;
        self.queue.send(Out::CredentialsRequest(question));
        let answer = rx
            .recv_timeout(limit.max(ANSWER_TIMEOUT))
            .map_err(|source| err(Unanswered::NoAnswer { registry, source }))?;
        if !answer.error.is_empty() {
            return Err(err(Unanswered::Client(answer.error)));
        }
        Ok(answer)
    }
}

/// The login fields of an answer (`None`: anonymous).
fn login_of(answer: v1::CredentialsResponse) -> Option<kbuild_registry::RegistryLogin> {
    let some = |s: String| (!s.is_empty()).then_some(s);
    let login = kbuild_registry::RegistryLogin {
        username: some(answer.username),
        password: some(answer.secret),
        identity_token: some(answer.token),
    };
    (login != kbuild_registry::RegistryLogin::default()).then_some(login)
}

impl kbuild_registry::CredentialSource for ClientCredentials {
    fn login(
        &self,
        registry: &str,
        scopes: &[String],
        limit: Duration,
    ) -> kbuild_registry::Result<Option<kbuild_registry::RegistryLogin>> {
        let answer = self.ask(
            v1::CredentialsRequest {
                host: registry.to_string(),
                scopes: scopes.to_vec(),
                id: self.pending.next.fetch_add(1, Ordering::Relaxed),
                ..Default::default()
            },
            limit,
        )?;
        // What kind of answer came, never its content.
        tracing::debug!(
            registry,
            "credentials from the client: a login (Basic authentication)"
        );
        Ok(login_of(answer))
    }

    /// The registry's Bearer challenge goes to the client, which answers
    /// with a token for exactly these scopes; a client older than that
    /// answers with its login, which the registry client then exchanges.
    fn token(
        &self,
        registry: &str,
        request: &kbuild_registry::TokenRequest,
        limit: Duration,
    ) -> kbuild_registry::Result<Option<kbuild_registry::TokenAnswer>> {
        let answer = self.ask(
            v1::CredentialsRequest {
                host: registry.to_string(),
                scopes: request.scopes.clone(),
                id: self.pending.next.fetch_add(1, Ordering::Relaxed),
                realm: request.realm.clone(),
                service: request.service.clone().unwrap_or_default(),
            },
            limit,
        )?;
        let scopes = request.scopes.join(" ");
        if !answer.registry_token.is_empty() {
            let expires_in = match answer.expires_in_seconds {
                0 => kbuild_registry::DEFAULT_TOKEN_LIFETIME,
                secs => Duration::from_secs(secs),
            };
            tracing::debug!(
                registry,
                scopes = %scopes,
                expires_in = expires_in.as_secs(),
                "credentials from the client: a registry token"
            );
            return Ok(Some(kbuild_registry::TokenAnswer::Token(
                kbuild_registry::RegistryToken {
                    token: answer.registry_token,
                    expires_in,
                },
            )));
        }
        let login = login_of(answer);
        tracing::debug!(
            registry,
            scopes = %scopes,
            "credentials from the client: {} (a client without token answers)",
            if login.is_some() { "a login" } else { "none" }
        );
        Ok(Some(kbuild_registry::TokenAnswer::Login(login)))
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

/// Why the client of a session gave no secret.
#[derive(Debug, thiserror::Error)]
enum SecretUnanswered {
    /// The session ended before the question went out.
    #[error("the session ended before asking for it")]
    SessionEnded,
    /// The answer did not come in time, or the session ended waiting.
    #[error("the client did not send it")]
    NoAnswer(#[source] std::sync::mpsc::RecvTimeoutError),
    /// The client's own error, as it sent it.
    #[error("on the client: {0}")]
    Client(String),
}

impl ProvideSecret for ClientSecrets {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, SecretError> {
        let request = self.pending.next.fetch_add(1, Ordering::Relaxed);
        let rx = self
            .pending
            .secrets
            .wait_for(request)
            .ok_or(SecretUnanswered::SessionEnded)?;
        self.queue.send(Out::SecretRequest(v1::SecretRequest {
            id: id.to_string(),
            request,
        }));
        let answer = rx
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(SecretUnanswered::NoAnswer)?;
        if !answer.error.is_empty() {
            return Err(SecretUnanswered::Client(answer.error).into());
        }
        Ok((!answer.missing).then_some(answer.data))
    }
}

/// Files and bytes received and entries written into the context's copy,
/// for the session's BuildDone and logs.
#[derive(Default, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    pub(crate) written: u64,
}

/// Runs one session to its end; every outcome ends with BuildDone unless
/// the client is gone.
pub(crate) async fn run(
    config: Arc<Config>,
    trees: Arc<TreeChecksums>,
    mut inbound: Streaming<v1::BuildClientMessage>,
    tx: Tx,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let Some(start) = receive_start(&mut inbound, &tx).await else {
        return;
    };
    let (queue, forwarder) = Queue::forwarding(tx.clone());
    let session = Session {
        config,
        start,
        tx,
        queue,
        pending: Arc::new(Pending::default()),
        cancel: Cancel::new(),
    };
    let mut transfer = Transfer::default();
    let outcome = session.run(trees, inbound, &mut transfer, stopping).await;
    session.pending.close();
    session.queue.close();
    let _ = forwarder.await;
    let Some(done) = session.done(outcome, transfer).await else {
        return;
    };
    let _ = session
        .tx
        .send(Ok(v1::BuildServerMessage {
            message: Some(Out::Done(done)),
        }))
        .await;
    collect_contexts(&session.config).await;
}

/// The session's first message, which must be its BuildStart; `None` when
/// the session ends there (refused, or the client went away).
async fn receive_start(
    inbound: &mut Streaming<v1::BuildClientMessage>,
    tx: &Tx,
) -> Option<v1::BuildStart> {
    match inbound.message().await {
        Ok(Some(v1::BuildClientMessage {
            message: Some(In::Start(s)),
        })) => Some(s),
        Ok(_) => {
            let _ = tx
                .send(Err(tonic::Status::invalid_argument(
                    "a build session starts with BuildStart",
                )))
                .await;
            None
        }
        Err(_) => None,
    }
}

/// Bounds the kept client contexts once a session is over (see [`crate::gc`]).
async fn collect_contexts(config: &Arc<Config>) {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let sweep = SESSIONS.fetch_add(1, Ordering::Relaxed) % crate::gc::SWEEP_EVERY == 0;
    let (root, keep) = (config.root.clone(), config.keep_contexts);
    match tokio::task::spawn_blocking(move || crate::gc::collect(&root, keep, sweep)).await {
        Ok(Ok(Some(c))) if c.contexts > 0 || c.files > 0 => tracing::info!(
            contexts = c.contexts,
            files = c.files,
            bytes = c.bytes,
            "context state: removed {} contexts and {} files ({} bytes)",
            c.contexts,
            c.files,
            c.bytes
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not collect old contexts"),
        Err(e) => tracing::warn!(error = %e, "could not collect old contexts"),
    }
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

impl SessionDir {
    /// A new directory under `root/sessions`.
    fn create(root: &Path) -> Result<SessionDir, SessionError> {
        let sessions = root.join("sessions");
        let err = |source| SessionError::Context {
            path: sessions.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&sessions).map_err(err)?;
        let dir = tempfile::Builder::new()
            .prefix("session-")
            .tempdir_in(&sessions)
            .map_err(err)?;
        Ok(SessionDir(dir.keep()))
    }
}

impl Drop for SessionDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file outputs a build streams back: output index and file.
type Streamed = Vec<(u32, PathBuf)>;

/// What a finished build sends: BuildDone (without the counters), the
/// files to stream back, and the directory holding them (removed once
/// sent).
type Finished = (v1::BuildDone, Streamed, SessionDir);

pub(crate) async fn next(
    inbound: &mut Streaming<v1::BuildClientMessage>,
) -> Result<In, SessionError> {
    match inbound.message().await {
        Ok(Some(v1::BuildClientMessage { message: Some(m) })) => Ok(m),
        Ok(Some(_)) => Err(ProtocolError::EmptyMessage.into()),
        Ok(None) | Err(_) => Err(SessionError::Gone),
    }
}

/// One session once its BuildStart came: where its messages go, the
/// questions waiting for the client's answers, and the cancellation of
/// its build.
struct Session {
    config: Arc<Config>,
    start: v1::BuildStart,
    tx: Tx,
    queue: Queue,
    pending: Arc<Pending>,
    cancel: Cancel,
}

/// The client context of a session, synced into its copy.
struct ContextCopy {
    dir: PathBuf,
    checksums: ChecksumCache,
    /// Held until the build ends: no other session of this context
    /// changes the copy while the build reads it.
    lock: kbuild_image::lock::FileLock,
}

/// The client once its context is in: it only answers questions or
/// cancels, which a task hands on while the build runs.
struct Listening {
    reader: tokio::task::JoinHandle<()>,
    /// Notified when the client cancels or goes away.
    cancelled: Arc<tokio::sync::Notify>,
    /// Whether it went away (else it cancelled).
    gone: Arc<AtomicBool>,
}

impl Listening {
    fn start(
        mut inbound: Streaming<v1::BuildClientMessage>,
        pending: &Arc<Pending>,
        cancel: &Cancel,
    ) -> Listening {
        let cancelled = Arc::new(tokio::sync::Notify::new());
        let gone = Arc::new(AtomicBool::new(false));
        let (pending, cancel) = (pending.clone(), cancel.clone());
        let (notify, went) = (cancelled.clone(), gone.clone());
        let reader = tokio::spawn(async move {
            loop {
                match next(&mut inbound).await {
                    Ok(In::Credentials(c)) => pending.credentials.answer(c.id, c),
                    Ok(In::Secret(s)) => pending.secrets.answer(s.request, s),
                    Ok(In::Ssh(d)) => pending.ssh.deliver(d),
                    Ok(In::Cancel(_)) => {
                        cancel.cancel();
                        notify.notify_one();
                        return;
                    }
                    Err(_) => {
                        went.store(true, Ordering::Relaxed);
                        cancel.cancel();
                        notify.notify_one();
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        Listening {
            reader,
            cancelled,
            gone,
        }
    }
}

impl Session {
    /// Receives the context, then runs the build while the client answers
    /// its questions, until the build ends, the client cancels or goes
    /// away, or the daemon stops.
    async fn run(
        &self,
        trees: Arc<TreeChecksums>,
        mut inbound: Streaming<v1::BuildClientMessage>,
        transfer: &mut Transfer,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Finished, SessionError> {
        let (context_dir, checksums, context_lock) = if self.start.has_context {
            let copy = self.sync_context(trees, &mut inbound, transfer).await?;
            (Some(copy.dir), Some(copy.checksums), Some(copy.lock))
        } else {
            empty_context(&mut inbound).await?;
            (None, None, None)
        };
        let client = Listening::start(inbound, &self.pending, &self.cancel);
        let work = self.build(context_dir, checksums);
        let outcome = tokio::select! {
            r = work => { client.reader.abort(); r }
            _ = client.cancelled.notified() => {
                self.cancel.cancel();
                if client.gone.load(Ordering::Relaxed) {
                    Err(SessionError::Gone)
                } else {
                    Err(SessionError::Cancelled)
                }
            }
            _ = stopping.wait_for(|s| *s) => {
                self.cancel.cancel();
                Err(SessionError::ShuttingDown)
            }
        };
        drop(context_lock);
        outcome
    }

    /// Brings the daemon's copy of the client's context up to date (see
    /// [`crate::context`]).
    async fn sync_context(
        &self,
        trees: Arc<TreeChecksums>,
        inbound: &mut Streaming<v1::BuildClientMessage>,
        transfer: &mut Transfer,
    ) -> Result<ContextCopy, SessionError> {
        let (root, start) = (&self.config.root, &self.start);
        let key = hex::encode(Sha256::digest(
            format!("{}\0{}", start.client_hostname, start.context_path).as_bytes(),
        ));
        let state = root.join("contexts").join(key);
        let files = root.join("context-files");
        let dir = state.join("dir");
        // The solver's checksum cache of the copy: the sync enters the
        // client's digest of every file it writes.
        let cache = ChecksumCache::load(&root.join("checksums"), &dir);
        let sync_guard = hold_context_files(root).await?;
        let began = std::time::Instant::now();
        let synced = crate::context::sync(
            &state,
            &files,
            &start.dockerignore,
            cache,
            inbound,
            &self.tx,
            transfer,
        )
        .await?;
        let took = began.elapsed().as_secs_f64();
        drop(sync_guard);
        tracing::info!(
            context = %start.context_path,
            client = %start.client_hostname,
            files = transfer.files,
            bytes = transfer.bytes,
            written = transfer.written,
            "context: received {} files ({} bytes), wrote {} entries into its copy in {took:.3} s",
            transfer.files,
            transfer.bytes,
            transfer.written
        );
        Ok(ContextCopy {
            dir,
            // The copy is written only by the sync, under the context's
            // lock (RUN binds it read-only or as a throwaway copy): the
            // checksums over this generation hold as long as the lock is
            // held.
            checksums: synced.checksums.with_tree(synced.generation, trees),
            lock: synced.lock,
        })
    }

    /// The BuildDone that ends the session, after a finished build's file
    /// outputs were streamed; `None` when the client is gone.
    async fn done(
        &self,
        outcome: Result<Finished, SessionError>,
        transfer: Transfer,
    ) -> Option<v1::BuildDone> {
        let counted = |done: v1::BuildDone| v1::BuildDone {
            files_received: transfer.files,
            bytes_received: transfer.bytes,
            context_entries_written: transfer.written,
            ..done
        };
        let mut done = counted(v1::BuildDone::default());
        match outcome {
            Ok((d, results, _dir)) => {
                done = counted(d);
                for (index, path) in results {
                    if let Err(e) = stream_result(&self.tx, index, &path).await {
                        done.error = format!("stream output {index}: {e}");
                        break;
                    }
                }
            }
            Err(SessionError::Gone) => {
                tracing::info!("build cancelled: the client went away");
                return None;
            }
            Err(SessionError::ShuttingDown) => {
                tracing::info!("build cancelled: the daemon is shutting down");
                done.shutting_down = true;
                done.error = SessionError::ShuttingDown.to_string();
            }
            Err(SessionError::Cancelled) => {
                tracing::info!("build cancelled by the client");
                done.cancelled = true;
                done.error = "build cancelled (interrupted); nothing was tagged".into();
            }
            Err(SessionError::Solve(e)) => {
                if let kbuild_solver::engine::SolveError::EntitlementDenied {
                    entitlement, ..
                } = &e
                {
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
        Some(done)
    }
}

/// Holds off the collection of context files while this session syncs
/// its context (see [`crate::gc`]).
async fn hold_context_files(root: &Path) -> Result<kbuild_image::lock::FileLock, SessionError> {
    let gc_root = root.to_path_buf();
    tokio::task::spawn_blocking(move || crate::gc::hold_for_sync(&gc_root))
        .await
        .map_err(|source| SessionError::Join {
            what: "lock the context files",
            source,
        })?
        .map_err(|source| SessionError::Context {
            path: root.display().to_string(),
            source,
        })
}

/// A session without a context: the client sends one empty manifest.
async fn empty_context(
    inbound: &mut Streaming<v1::BuildClientMessage>,
) -> Result<(), SessionError> {
    loop {
        match next(inbound).await? {
            In::Manifest(m) if m.entries.is_empty() => {
                if m.complete {
                    return Ok(());
                }
            }
            In::Manifest(_) => return Err(ProtocolError::EntriesWithoutContext.into()),
            In::Cancel(_) => return Err(SessionError::Cancelled),
            _ => return Err(ProtocolError::ExpectedManifest.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of `secrets` on its own thread: answers each question
    /// with `answer(id)` until the queue closes.
    fn client(
        pending: Arc<Pending>,
        mut rx: mpsc::UnboundedReceiver<v1::BuildServerMessage>,
        answer: fn(&str) -> v1::SecretResponse,
    ) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut asked = Vec::new();
            while let Some(m) = rx.blocking_recv() {
                if let Some(Out::SecretRequest(q)) = m.message {
                    let mut a = answer(&q.id);
                    a.request = q.request;
                    asked.push(q.id);
                    pending.secrets.answer(q.request, a);
                }
            }
            asked
        })
    }

    fn secrets() -> (
        ClientSecrets,
        mpsc::UnboundedReceiver<v1::BuildServerMessage>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let secrets = ClientSecrets {
            queue: Queue(Arc::new(Mutex::new(Some(tx)))),
            pending: Arc::new(Pending::default()),
        };
        (secrets, rx)
    }

    #[test]
    fn a_client_error_is_kept_with_its_text() {
        let (secrets, rx) = secrets();
        let asker = client(secrets.pending.clone(), rx, |id| v1::SecretResponse {
            id: id.to_string(),
            error: format!("open /home/u/{id}: permission denied"),
            ..Default::default()
        });
        let Err(e) = secrets.secret("tok") else {
            panic!("a secret the client could not read was given")
        };
        assert_eq!(
            e.to_string(),
            "on the client: open /home/u/tok: permission denied"
        );
        assert!(matches!(
            e.downcast_ref::<SecretUnanswered>(),
            Some(SecretUnanswered::Client(text)) if text == "open /home/u/tok: permission denied"
        ));
        secrets.queue.close();
        assert_eq!(asker.join().expect("client thread"), vec!["tok"]);
    }

    #[test]
    fn a_missing_secret_is_none_and_a_value_is_given() {
        let (secrets, rx) = secrets();
        let asker = client(secrets.pending.clone(), rx, |id| v1::SecretResponse {
            id: id.to_string(),
            missing: id != "tok",
            data: if id == "tok" {
                b"s3cret".to_vec()
            } else {
                Vec::new()
            },
            ..Default::default()
        });
        assert_eq!(
            secrets.secret("tok").expect("tok"),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(secrets.secret("other").expect("other"), None);
        secrets.queue.close();
        assert_eq!(asker.join().expect("client thread"), vec!["tok", "other"]);
    }

    /// After the session's end a RUN's question fails at once, not after
    /// the answer timeout.
    #[test]
    fn a_closed_session_refuses_at_once() {
        let (secrets, _rx) = secrets();
        secrets.pending.close();
        let started = std::time::Instant::now();
        let Err(e) = secrets.secret("tok") else {
            panic!("a closed session gave a secret")
        };
        assert!(
            started.elapsed() < ANSWER_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.to_string(), "the session ended before asking for it");
        assert!(matches!(
            e.downcast_ref::<SecretUnanswered>(),
            Some(SecretUnanswered::SessionEnded)
        ));
    }
}

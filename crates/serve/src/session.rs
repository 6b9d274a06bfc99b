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
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;

/// Where the server messages go (the response stream).
pub(crate) type Tx = mpsc::Sender<Result<v1::BuildServerMessage, tonic::Status>>;

/// Bytes of a streamed output in one ResultChunk.
const RESULT_CHUNK: usize = 256 * 1024;
/// How long the daemon waits for the client to answer a question.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The client broke the protocol; the text says how (no source).
    #[error("{0}")]
    Protocol(String),
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
    #[error("cancelled")]
    Cancelled,
    #[error("the daemon is stopping (SIGTERM or SIGINT); nothing was tagged")]
    ShuttingDown,
}

pub(crate) fn proto(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
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

impl ProvideSecret for ClientSecrets {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let request = self.pending.next.fetch_add(1, Ordering::Relaxed);
        let rx = self
            .pending
            .secrets
            .wait_for(request)
            .ok_or_else(|| "the session ended before asking for it".to_string())?;
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
    trees: Arc<kbuild_solver::checksums::TreeChecksums>,
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
        trees,
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
    pending.close();
    queue.close();
    let _ = forwarder.await;
    let mut done = v1::BuildDone {
        files_received: transfer.files,
        bytes_received: transfer.bytes,
        context_entries_written: transfer.written,
        ..Default::default()
    };
    match outcome {
        Ok((d, results, _dir)) => {
            done = v1::BuildDone {
                files_received: transfer.files,
                bytes_received: transfer.bytes,
                context_entries_written: transfer.written,
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
    collect_contexts(&config).await;
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

impl Drop for SessionDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished build sends: BuildDone (without the counters), the
/// files to stream back (output index, path), and the directory holding
/// them (removed once sent).
type Finished = (v1::BuildDone, Vec<(u32, PathBuf)>, SessionDir);

pub(crate) async fn next(
    inbound: &mut Streaming<v1::BuildClientMessage>,
) -> Result<In, SessionError> {
    match inbound.message().await {
        Ok(Some(v1::BuildClientMessage { message: Some(m) })) => Ok(m),
        Ok(Some(_)) => Err(proto("an empty message")),
        Ok(None) | Err(_) => Err(SessionError::Gone),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &Arc<Config>,
    trees: Arc<kbuild_solver::checksums::TreeChecksums>,
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
    let mut context_lock = None;
    let mut checksums = None;
    let context_dir = if start.has_context {
        let key = hex::encode(Sha256::digest(
            format!("{}\0{}", start.client_hostname, start.context_path).as_bytes(),
        ));
        let state = root.join("contexts").join(key);
        let files = root.join("context-files");
        let dir = state.join("dir");
        // The solver's checksum cache of the copy: the sync enters the
        // client's digest of every file it writes.
        let cache = kbuild_solver::checksums::ChecksumCache::load(&root.join("checksums"), &dir);
        // Held until the build ends: no other session of this context
        // changes the copy while the build reads it.
        // No collection of context files while this sync runs.
        let gc_root = root.clone();
        let sync_guard = tokio::task::spawn_blocking(move || crate::gc::hold_for_sync(&gc_root))
            .await
            .map_err(|source| SessionError::Join {
                what: "lock the context files",
                source,
            })?
            .map_err(|source| SessionError::Context {
                path: root.display().to_string(),
                source,
            })?;
        let began = std::time::Instant::now();
        let synced = crate::context::sync(
            &state,
            &files,
            &start.dockerignore,
            cache,
            &mut inbound,
            tx,
            transfer,
        )
        .await?;
        let took = began.elapsed().as_secs_f64();
        drop(sync_guard);
        context_lock = Some(synced.lock);
        // The copy is written only by the sync, under the context's lock
        // (RUN binds it read-only or as a throwaway copy): the checksums
        // over this generation hold as long as the lock is held.
        checksums = Some(synced.checksums.with_tree(synced.generation, trees));
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
        Some(dir)
    } else {
        // No context: one empty manifest.
        loop {
            match next(&mut inbound).await? {
                In::Manifest(m) if m.entries.is_empty() => {
                    if m.complete {
                        break;
                    }
                }
                In::Manifest(_) => return Err(proto("context entries without a context")),
                In::Cancel(_) => return Err(SessionError::Cancelled),
                _ => return Err(proto("expected the context manifest")),
            }
        }
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
                    Ok(In::Credentials(c)) => pending.credentials.answer(c.id, c),
                    Ok(In::Secret(s)) => pending.secrets.answer(s.request, s),
                    Ok(In::Ssh(d)) => pending.ssh.deliver(d),
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
    let work = build(
        config,
        start,
        context_dir,
        checksums,
        queue,
        pending,
        cancel,
    );
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

/// Runs the build as a local one does (see the CLI's build), with this
/// session's progress, credentials and secrets.
async fn build(
    config: &Arc<Config>,
    start: &v1::BuildStart,
    context_dir: Option<PathBuf>,
    checksums: Option<kbuild_solver::checksums::ChecksumCache>,
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
    // `--ssh`: the client's agents, relayed through sockets of this session.
    let (_agents, ssh) = {
        let q = queue.clone();
        crate::ssh::serve(
            &start.ssh_ids,
            &session_dir.0,
            &pending.ssh,
            Arc::new(move |m| q.send(m)),
        )
        .map_err(SessionError::Ssh)?
    };
    let ssh = ssh
        .into_iter()
        .map(|(id, path)| kbuild_solver::options::SshSpec {
            id,
            paths: vec![path],
        })
        .collect();
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
    // Registry and inline caches; a local one is a directory of the client.
    let cache_from = start
        .cache_from
        .iter()
        .map(|s| kbuild_solver::remote_cache::CacheFrom::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_to = start
        .cache_to
        .iter()
        .map(|s| kbuild_solver::remote_cache::CacheTo::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if cache_from
        .iter()
        .any(|c| matches!(c, kbuild_solver::remote_cache::CacheFrom::Local { .. }))
        || cache_to.iter().any(|c| {
            matches!(
                c.destination,
                kbuild_solver::remote_cache::CacheDestination::Local { .. }
            )
        })
    {
        return Err(proto(
            "a type=local cache is a directory of the client, which the builder cannot reach",
        ));
    }
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
            ssh,
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
    )
    .with_cache(cache_from, cache_to);
    let ignore = if start.dockerignore.is_empty() {
        None
    } else {
        Some(kbuild_ignore::Matcher::parse(&start.dockerignore).map_err(SessionError::Ignore)?)
    };
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
        .map_err(SessionError::WirePlatform)?;
    // One line per build in the daemon's log (`kubectl logs` of a builder
    // pod): which platforms this daemon builds for which client.
    tracing::info!(
        client = %start.client_hostname,
        "build: platforms {}",
        platforms
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    // A containerd output without unpack= unpacks what this daemon builds
    // of its own native platforms (a node of a mixed cluster loads its
    // own platform), not the host's, which an emulating node differs from.
    // Read once, and only when such an output exists (binfmt is probed).
    let mut native = None;
    for t in outputs
        .iter_mut()
        .filter_map(|o| o.containerd.as_mut())
        .filter(|t| t.unpack.is_empty())
    {
        let native: &Vec<kbuild_platform::Platform> =
            native.get_or_insert_with(|| crate::platforms(config.platforms.as_deref()).native);
        t.unpack = platforms
            .iter()
            .filter(|p| native.iter().any(|n| n.matches_strict(p)))
            .cloned()
            .collect();
    }
    let crate::Ran {
        solved: result,
        warnings,
    } = crate::solve_start(&solver, start, &ctx).await?;
    if start.push_by_digest {
        // Blobs and manifests go up, pinned to the root digest: no tag is
        // written (the coordinator merging several daemons' results does).
        let pinned = result.root.digest;
        for o in outputs.iter_mut().filter(|o| o.push) {
            o.names = o
                .names
                .iter()
                .map(|n| {
                    kbuild_registry::Reference::parse(n).map(|r| r.with_digest(pinned).to_string())
                })
                .collect::<Result<_, _>>()?;
        }
    }
    let report =
        kbuild_solver::outputs::export_with(&solver, &result, &outputs, early_push.as_ref())
            .await?;
    let mut hashed = 0;
    let mut cache_exports = Vec::new();
    let mut cache_warnings = Vec::new();
    for c in solver
        .export_cache()
        .await
        .map_err(|e| SessionError::CacheExport(Box::new(e)))?
    {
        match &c.ignored {
            Some(e) => {
                cache_warnings.push(format!("{e} (ignore-error=true: the build still succeeds)"))
            }
            None => cache_exports.push(format!(
                "{}: {} records, {} layers",
                c.to, c.records, c.layers
            )),
        }
    }
    if let (Some(cache), Some(dir)) = (&ctx.checksums, &ctx.dir) {
        hashed = cache.hashed_bytes();
        let (looked_up, remembered) = (cache.looked_up(), cache.tree_hits());
        tracing::info!(
            hashed,
            looked_up,
            remembered,
            "context: read {hashed} bytes of context content to compute checksums; looked up {looked_up} files, {remembered} checksums remembered for this copy"
        );
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
        warnings: warnings.into_iter().chain(cache_warnings).collect(),
        cache_exports,
        config_digest,
        context_bytes_hashed: hashed,
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
        parse_mode(&start.provenance).map_err(SessionError::Provenance)?
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

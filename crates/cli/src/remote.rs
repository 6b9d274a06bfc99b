//! A build sent to a remote builder (`--builder NAME` of a `kubectl-build
//! serve` daemon): the request becomes a BuildStart with the op graph
//! planned here ([`crate::planner`]), the session
//! ([`kbuild_driver::session`]) syncs the context and answers the daemon's
//! questions from this machine's credentials and secrets, progress is
//! rendered as for a local build, and file outputs stream back and are
//! written here atomically.

use crate::args::{BuildArgs, GlobalArgs, Progress as ProgressMode};
use crate::build::{progress_renderer, BuildError};
use crate::planner::Planner;
use crate::request::BuildRequest;
use crate::signals::StopSignals;
use crate::split_outputs::{Root, SplitOutputs};
use kbuild_driver::session::{ContextSource, Local, LocalError};
use kbuild_proto::v1;
use kbuild_solver::options::{Output, OutputKind, SecretSource};
use kbuild_solver::progress::{Event, Progress};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What this side could not answer or take of a daemon's requests: the
/// daemon gets a question's text back; an output's error ends the session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    /// A `--secret` file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon streamed an output the build did not send it.
    #[error("the builder sent output {output}, which was not asked for")]
    NotAsked {
        /// Its index.
        output: u32,
    },
    /// A node of a split build streamed an output it was not sent.
    #[error("node {node} sent output {output}, which the build did not ask for")]
    NotAskedOfNode {
        /// The node.
        node: String,
        /// Its index.
        output: u32,
    },
    /// An output's writer thread failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// An output to standard output could not be written.
    #[error("standard output: {0}")]
    Stdout(#[source] std::io::Error),
    /// A filesystem output (`type=local`) could not be written.
    #[error(transparent)]
    Filesystem(Box<kbuild_solver::engine::SolveError>),
    /// A file output could not be written.
    #[error(transparent)]
    File(kbuild_image::Error),
}

fn output_error(e: crate::split_outputs::SplitOutputError) -> BuildError {
    BuildError::Fanout(Box::new(crate::fanout::FanoutError::Output(Box::new(e))))
}

/// One output being written here.
type Sink = WriterThread<Result<Vec<String>, AnswerError>>;

/// What went wrong with an output's writer thread (not what it wrote).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriterError {
    /// An output's writer is not there.
    #[error("output writer missing")]
    Missing,
    /// An output's writer ended before its output did.
    #[error("the output writer stopped")]
    Stopped,
    /// An output's writer panicked.
    #[error("the output writer panicked")]
    Panicked,
    /// A thread panicked while it held the outputs' writers.
    #[error("poisoned lock: another task failed inside")]
    Poisoned,
}

/// A thread writing one streamed output, fed through a channel: the
/// pieces as they arrive, then `None` at the end (see [`ChannelReader`]).
pub(crate) struct WriterThread<T> {
    tx: SyncSender<Option<Vec<u8>>>,
    thread: std::thread::JoinHandle<T>,
}

impl<T: Send + 'static> WriterThread<T> {
    /// Starts `write` on its own thread, reading what [`send`](Self::send)
    /// passes.
    pub(crate) fn spawn(write: impl FnOnce(ChannelReader) -> T + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(8);
        let thread = std::thread::spawn(move || write(ChannelReader::new(rx)));
        WriterThread { tx, thread }
    }

    /// Passes one piece (nothing for an empty one).
    pub(crate) fn send(&self, data: Vec<u8>) -> Result<(), WriterError> {
        if data.is_empty() {
            return Ok(());
        }
        self.tx.send(Some(data)).map_err(|_| WriterError::Stopped)
    }

    /// Marks the end and waits for the writer's result.
    pub(crate) fn finish(self) -> Result<T, WriterError> {
        let _ = self.tx.send(None);
        drop(self.tx);
        self.thread.join().map_err(|_| WriterError::Panicked)
    }
}

/// Reads what the session hands over; a sender gone before the end marker
/// is an error, so a broken session never leaves a cut file.
pub(crate) struct ChannelReader {
    rx: Receiver<Option<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl ChannelReader {
    /// Reads what `rx` receives until its end marker (`None`).
    pub(crate) fn new(rx: Receiver<Option<Vec<u8>>>) -> ChannelReader {
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            ended: false,
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Some(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(None) => self.ended = true,
                Err(_) => {
                    return Err(std::io::Error::other(
                        "the builder stopped sending before the output was complete",
                    ))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// This side of the session(s): progress, credentials, secrets and
/// streamed outputs, shared by every node of a fanned-out build.
pub(crate) struct Client {
    progress: Arc<dyn Progress>,
    /// The build's credentials (a kubernetes builder's cluster secret
    /// included), for the merged index too.
    pub(crate) credentials: kbuild_registry::Credentials,
    helper_limit: Duration,
    /// Gets registry tokens for the daemons' Bearer challenges with
    /// `credentials` (and caches them per scope).
    tokens: kbuild_registry::Client,
    secrets: Vec<kbuild_solver::options::SecretSpec>,
    ssh: Vec<kbuild_solver::options::SshSpec>,
    outputs: Vec<Output>,
    sinks: Mutex<HashMap<u32, Sink>>,
    /// `-o type=oci,tar=false` of a one-node build: the blobs the node
    /// streams, written as a layout directory once it has finished.
    layouts: Option<Arc<SplitOutputs>>,
    pub(crate) notes: Mutex<Vec<String>>,
}

impl Client {
    /// Renders a note that belongs to no step.
    pub(crate) fn note(&self, text: String) {
        self.progress.event(Event::Note(text));
    }
}

impl Local for Client {
    fn progress(&self, p: v1::ProgressEvent) {
        use v1::progress_event::Event as E;
        let elapsed = Duration::from_nanos(p.elapsed_nanos);
        let id = p.vertex;
        let event = match p.event {
            Some(E::Started(_)) => Event::Start { id, name: p.name },
            Some(E::Cached(_)) => Event::Cached { id, name: p.name },
            Some(E::Done(_)) => Event::Done { id, elapsed },
            Some(E::Failed(_)) => Event::Failed { id, elapsed },
            Some(E::Log(line)) => Event::Log { id, line },
            Some(E::Note(n)) => Event::Note(n),
            None => return,
        };
        self.progress.event(event);
    }

    fn credentials(
        &self,
        host: &str,
    ) -> Result<Option<kbuild_registry::RegistryLogin>, LocalError> {
        Ok(self.credentials.login(host, self.helper_limit)?)
    }

    fn registry_token(
        &self,
        host: &str,
        request: &kbuild_registry::TokenRequest,
    ) -> Result<Option<kbuild_registry::RegistryToken>, LocalError> {
        // Called on a blocking thread of the session's runtime.
        let token = tokio::runtime::Handle::current()
            .block_on(self.tokens.registry_token(host, request))?;
        Ok(Some(token))
    }

    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, LocalError> {
        match self.secrets.iter().find(|s| s.id == id).map(|s| &s.source) {
            Some(SecretSource::File(p)) => match std::fs::read(p) {
                Ok(data) => Ok(Some(data)),
                Err(source) => Err(Box::new(AnswerError::SecretFile {
                    path: p.clone(),
                    source,
                })),
            },
            Some(SecretSource::Env(v)) => Ok(std::env::var_os(v).map(|v| v.into_encoded_bytes())),
            Some(SecretSource::Provided(p)) => Ok(p.0.secret(id)?),
            None => Ok(None),
        }
    }

    fn ssh_agent(&self, id: &str) -> Option<PathBuf> {
        // As a local build: the first path given, else $SSH_AUTH_SOCK.
        self.ssh.iter().find(|s| s.id == id).and_then(|s| {
            s.paths
                .first()
                .cloned()
                .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
        })
    }

    fn result(&self, output: u32, data: Vec<u8>, last: bool) -> Result<(), LocalError> {
        if let Some(l) = self.layouts.as_ref().filter(|l| l.has(output)) {
            return Ok(l.chunk(0, output, data, last)?);
        }
        Ok(self.write_output(output, data, last)?)
    }
}

impl Client {
    /// Passes a piece of output `output` to its writer (opened at its
    /// first piece); at the `last`, waits for the writer and keeps its
    /// notes.
    fn write_output(&self, output: u32, data: Vec<u8>, last: bool) -> Result<(), AnswerError> {
        let mut sinks = self.sinks.lock().map_err(|_| WriterError::Poisoned)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = sinks.entry(output) {
            let out = self
                .outputs
                .get(output as usize)
                .cloned()
                .ok_or(AnswerError::NotAsked { output })?;
            slot.insert(open_sink(out));
        }
        sinks.get(&output).ok_or(WriterError::Missing)?.send(data)?;
        if last {
            let sink = sinks.remove(&output).ok_or(WriterError::Missing)?;
            let notes = sink.finish()??;
            if let Ok(mut n) = self.notes.lock() {
                n.extend(notes);
            }
        }
        Ok(())
    }
}

fn open_sink(out: Output) -> Sink {
    WriterThread::spawn(move |mut reader| -> Result<Vec<String>, AnswerError> {
        let dest = out.dest.clone().unwrap_or_else(|| PathBuf::from("-"));
        let shown = dest.display().to_string();
        if dest == Path::new("-") {
            let mut stdout = std::io::stdout().lock();
            std::io::copy(&mut reader, &mut stdout).map_err(AnswerError::Stdout)?;
            stdout.flush().map_err(AnswerError::Stdout)?;
            return Ok(Vec::new());
        }
        if out.kind == OutputKind::Local {
            let apply = kbuild_worker::snapshot::ApplyOptions {
                preserve_special: out.preserve_special,
            };
            let r = kbuild_solver::outputs::local_from_tar(&mut reader, &dest, apply)
                .map_err(|e| AnswerError::Filesystem(Box::new(e)))?;
            let mut notes = Vec::new();
            if r.devices_skipped > 0 {
                notes.push(format!("{shown}: left out {} device node(s); add preserve-special=true to -o type=local to create them", r.devices_skipped));
            }
            if r.privileges_dropped > 0 {
                notes.push(format!("{shown}: cleared setuid/setgid bits or capabilities of {} file(s); add preserve-special=true to -o type=local to keep them", r.privileges_dropped));
            }
            return Ok(notes);
        }
        kbuild_image::export::write_file_atomically(&dest, |w| {
            std::io::copy(&mut reader, w)
                .map(drop)
                .map_err(|source| kbuild_image::Error::Io {
                    action: "write",
                    path: dest.clone(),
                    source,
                })
        })
        .map_err(AnswerError::File)?;
        Ok(Vec::new())
    })
}

/// Refuses a `type=local` cache: it is a directory of this machine, which
/// is not streamed.
fn refuse_local_cache(req: &BuildRequest, builder: &str) -> Result<(), BuildError> {
    let local_cache = req
        .cache_from
        .iter()
        .filter(|c| matches!(c, kbuild_solver::remote_cache::CacheFrom::Local { .. }))
        .map(|c| format!("--cache-from {c}"))
        .chain(
            req.cache_to
                .iter()
                .filter(|c| {
                    matches!(
                        c.destination,
                        kbuild_solver::remote_cache::CacheDestination::Local { .. }
                    )
                })
                .map(|c| format!("--cache-to {c}")),
        )
        .next();
    match local_cache {
        Some(flag) => Err(BuildError::LocalCache {
            flag,
            builder: builder.to_string(),
        }),
        None => Ok(()),
    }
}

/// A registry client with the build's credentials and timeouts.
fn registry_client(
    req: &BuildRequest,
    a: &BuildArgs,
    credentials: &kbuild_registry::Credentials,
) -> Result<kbuild_registry::Client, BuildError> {
    kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        insecure: a.insecure_registries.clone(),
        credentials: credentials.clone(),
        timeouts: req.registry_timeouts,
        ..Default::default()
    })
    .map_err(BuildError::Credentials)
}

/// The BuildStart every node is sent, before its platforms, its build
/// platform and its op graph.
fn start_message(
    req: &BuildRequest,
    a: &BuildArgs,
    source_date_epoch: Option<i64>,
) -> v1::BuildStart {
    v1::BuildStart {
        dockerfile: req.dockerfile.clone().into_bytes(),
        dockerfile_path: req.dockerfile_name.clone(),
        platforms: req.platforms.iter().map(v1::Platform::from).collect(),
        build_args: req.build_args.clone().into_iter().collect(),
        target: req.target.clone().unwrap_or_default(),
        labels: req.labels.clone().into_iter().collect(),
        no_cache: a.no_cache,
        pull: a.pull,
        outputs: req.outputs.iter().map(Output::daemon_spec).collect(),
        tags: a.tags.clone(),
        network: a.network.clone().unwrap_or_default(),
        allow: if req.allow_insecure {
            vec!["security.insecure".to_string()]
        } else {
            Vec::new()
        },
        add_hosts: req
            .add_hosts
            .iter()
            .map(|(h, ip)| format!("{h}={ip}"))
            .collect(),
        secret_ids: req.secrets.iter().map(|s| s.id.clone()).collect(),
        ssh_ids: req.ssh.iter().map(|s| s.id.clone()).collect(),
        cache_from: a.cache_from.clone(),
        cache_to: a.cache_to.clone(),
        source_date_epoch,
        build_platform: Some(v1::Platform::from(&kbuild_platform::Platform::host())),
        registry_timeouts: a.registry_timeout.clone().unwrap_or_default(),
        insecure_registries: a.insecure_registries.clone(),
        named_images: req.named_images(),
        annotations: req.annotations.iter().map(|a| a.to_flag()).collect(),
        shm_size: req.shm_size,
        provenance: a.provenance.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// The client's own checksum cache of the context, beside the local
/// store's (the daemon has its own).
fn client_checksums(
    req: &BuildRequest,
    g: &GlobalArgs,
) -> Option<Arc<kbuild_solver::checksums::ChecksumCache>> {
    req.context.as_ref().and_then(|dir| {
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        let base = g.root.clone().or_else(kbuild_image::default_root)?;
        Some(Arc::new(kbuild_solver::checksums::ChecksumCache::load(
            &base.join("checksums"),
            &abs,
        )))
    })
}

/// What every build on a remote builder sets up before its session(s):
/// the runtime (with the stop signals), the progress renderer, this side of
/// the session and the BuildStart every node is sent (per node, its
/// platforms and build platform change).
pub(crate) struct Setup {
    pub(crate) mode: ProgressMode,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) signals: StopSignals,
    pub(crate) client: Arc<Client>,
    pub(crate) start: v1::BuildStart,
    /// The graphs sent instead of the Dockerfile, planned here once.
    pub(crate) planner: Arc<Planner>,
    /// The build's registry client (the planner's, and the one that
    /// pushes a split build's index).
    pub(crate) registry: kbuild_registry::Client,
    ignore: Option<(kbuild_ignore::Matcher, String)>,
    checksums: Option<Arc<kbuild_solver::checksums::ChecksumCache>>,
    pub(crate) started: Instant,
}

impl Setup {
    /// Prepares the sessions of `req` on a remote builder (`builder`:
    /// its name, for messages).
    pub(crate) fn new(
        req: &BuildRequest,
        a: &BuildArgs,
        g: &GlobalArgs,
        builder: &str,
        credentials: Option<kbuild_registry::Credentials>,
    ) -> Result<Setup, BuildError> {
        refuse_local_cache(req, builder)?;
        let mode = crate::build::progress_mode(a);
        let credentials = match credentials {
            Some(c) => c,
            None => {
                kbuild_registry::Credentials::from_registry_secret(a.registry_secret.as_deref())
                    .map_err(BuildError::Credentials)?
            }
        };
        // Dockerfile errors that need no image stop the build before any
        // node is dialled.
        // One registry client per build, with the build's credentials: the
        // planner resolves base images with it and a split build pushes
        // its index with it.
        let registry = registry_client(req, a, &credentials)?;
        let planner = Arc::new(Planner::new(req, a, g, registry.clone())?);
        let source_date_epoch = crate::build::source_date_epoch()?;
        let ignore = crate::build::read_ignore(req)?;
        let (rt, signals) = crate::build::runtime_with_signals()?;
        let progress = progress_renderer(mode);
        let start = start_message(req, a, source_date_epoch);
        let checksums = client_checksums(req, g);
        let client = Arc::new(Client {
            progress,
            tokens: registry_client(req, a, &credentials)?,
            credentials,
            helper_limit: req.registry_timeouts.helper,
            secrets: req.secrets.clone(),
            ssh: req.ssh.clone(),
            outputs: req.outputs.clone(),
            sinks: Mutex::new(HashMap::new()),
            layouts: SplitOutputs::for_outputs(&req.outputs, source_date_epoch, |o| {
                o.kind == OutputKind::Oci && o.as_directory
            })
            .map_err(output_error)?
            .map(Arc::new),
            notes: Mutex::new(Vec::new()),
        });
        Ok(Setup {
            mode,
            rt,
            signals,
            client,
            start,
            planner,
            registry,
            ignore,
            checksums,
            started: Instant::now(),
        })
    }

    /// The context to send to one node.
    pub(crate) fn context(&self, req: &BuildRequest) -> Option<ContextSource> {
        req.context.as_ref().map(|dir| ContextSource {
            dir: dir.clone(),
            ignore: self.ignore.clone(),
            checksums: self.checksums.clone(),
        })
    }

    /// Makes the context to send to each node of a split build.
    pub(crate) fn contexts(&self, req: &BuildRequest) -> impl Fn() -> Option<ContextSource> {
        let dir = req.context.clone();
        let ignore = self.ignore.clone();
        let checksums = self.checksums.clone();
        move || {
            dir.as_ref().map(|dir| ContextSource {
                dir: dir.clone(),
                ignore: ignore.clone(),
                checksums: checksums.clone(),
            })
        }
    }

    /// Keeps the context checksums for the next build and stops the
    /// runtime.
    pub(crate) fn finish(self, req: &BuildRequest) -> (ProgressMode, Arc<Client>, Instant) {
        self.rt.shutdown_timeout(Duration::from_secs(2));
        if let (Some(cache), Some(dir)) = (&self.checksums, &req.context) {
            let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            if let Err(e) = cache.save(&abs) {
                tracing::warn!(error = %e, "could not keep the context checksum cache");
            }
        }
        (self.mode, self.client, self.started)
    }
}

/// Runs `req` on remote builder `name`: on its only node, or split over
/// its nodes by platform ([`crate::fanout::build`]).
pub fn run(
    req: BuildRequest,
    a: &BuildArgs,
    g: &GlobalArgs,
    name: &str,
    builder: &kbuild_driver::Builder,
) -> Result<(), BuildError> {
    crate::fanout::build(
        req,
        a,
        g,
        name,
        builder.nodes.clone(),
        Arc::new(kbuild_driver::Direct),
        None,
    )
}

/// Runs the whole of `req` on `node` of builder `name` in one session;
/// `build_platform` is the node's when it is known (from its Info).
pub(crate) fn single(
    req: BuildRequest,
    a: &BuildArgs,
    mut setup: Setup,
    name: &str,
    node: &kbuild_driver::Node,
    dialer: &dyn kbuild_driver::Dialer,
    build_platform: Option<&kbuild_platform::Platform>,
) -> Result<(), BuildError> {
    let start = planned_start(&setup, &req, build_platform)?;
    let warnings = setup.planner.clone();
    let context = setup.context(&req);
    let signals = &mut setup.signals;
    let outcome = setup.rt.block_on(kbuild_driver::session::build(
        name,
        node,
        dialer,
        start,
        context,
        setup.client.clone(),
        async move {
            let signal = signals.recv().await;
            tracing::debug!(%signal, "cancelling the remote build");
        },
    ));
    let (mode, client, started) = setup.finish(&req);
    let done = outcome.map_err(|e| BuildError::Remote(Box::new(e)))?;
    check_done(name, &done)?;
    if let Some(layouts) = &client.layouts {
        write_layout(layouts, name, &done)?;
    }
    print_warnings(&warnings, &done.warnings);
    let root = done.root.clone().unwrap_or_default();
    let digest = root.digest.clone();
    crate::build::write_result_files(
        &req,
        a.iidfile.as_deref(),
        a.metadata_file.as_deref(),
        &digest,
        serde_json::json!({"mediaType": root.media_type, "digest": root.digest, "size": root.size}),
        Some(done.config_digest.clone()).filter(|c| !c.is_empty()),
    )?;
    let stdout_is_output = crate::build::stdout_is_output(&req);
    if mode == ProgressMode::Quiet {
        if !stdout_is_output {
            println!("{digest}");
        }
        return Ok(());
    }
    print_summary(&req, name, &digest, &done, &client, started);
    Ok(())
}

/// The start message of a one-session build: the graph of the whole
/// build, planned for the build platform sent.
fn planned_start(
    setup: &Setup,
    req: &BuildRequest,
    build_platform: Option<&kbuild_platform::Platform>,
) -> Result<v1::BuildStart, BuildError> {
    let mut start = setup.start.clone();
    if let Some(p) = build_platform {
        start.build_platform = Some(v1::Platform::from(p));
    }
    let build_platform = build_platform
        .cloned()
        .unwrap_or_else(kbuild_platform::Platform::host);
    setup
        .rt
        .block_on(setup.planner.resolve(std::slice::from_ref(&build_platform)));
    setup
        .planner
        .apply(&mut start, &build_platform, &req.platforms)?;
    Ok(start)
}

/// The daemon's verdict on the build: its error, if it reported one.
fn check_done(name: &str, done: &v1::BuildDone) -> Result<(), BuildError> {
    if done.error.is_empty() {
        return Ok(());
    }
    if !done.entitlement.is_empty() {
        return Err(BuildError::FailedEntitlement {
            error: done.error.clone(),
            entitlement: done.entitlement.clone(),
        });
    }
    Err(BuildError::Failed {
        builder: name.to_string(),
        error: done.error.clone(),
    })
}

/// Writes the `type=oci,tar=false` layout of the blobs node `name`
/// streamed, under the root it reported.
fn write_layout(
    layouts: &SplitOutputs,
    name: &str,
    done: &v1::BuildDone,
) -> Result<(), BuildError> {
    let root = done.root.clone().unwrap_or_default();
    let digest =
        kbuild_image::Digest::parse(&root.digest).map_err(|source| BuildError::BadRoot {
            builder: name.to_string(),
            source,
        })?;
    let root = kbuild_image::Descriptor::new(root.media_type, digest, root.size.max(0) as u64);
    layouts
        .finish(
            &[(0, name.to_string(), Vec::new())],
            &Root::Streamed(Box::new(root)),
        )
        .map_err(output_error)?;
    Ok(())
}

/// What the one-session build on builder `name` did, one `=>` line each.
fn print_summary(
    req: &BuildRequest,
    name: &str,
    digest: &str,
    done: &v1::BuildDone,
    client: &Client,
    started: Instant,
) {
    let platforms: Vec<String> = done
        .manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .filter_map(|p| kbuild_platform::Platform::try_from(p).ok())
        .map(|p| p.to_string())
        .collect();
    eprintln!(
        "=> built {} on builder {name} in {:.1}s: {digest}",
        platforms.join(", "),
        started.elapsed().as_secs_f64(),
    );
    eprintln!(
        "=> context: sent {} files ({} bytes) to builder {name}",
        done.files_received, done.bytes_received
    );
    for n in &done.pushed {
        eprintln!("=> pushed {n}@{digest}");
    }
    for n in &done.loaded {
        eprintln!("=> {n} (builder {name})");
    }
    for n in &done.stored {
        eprintln!("=> stored {n}@{digest} in the store of builder {name}");
    }
    for c in &done.cache_exports {
        eprintln!("=> exported cache {c} (builder {name})");
    }
    for o in &req.outputs {
        if let Some(d) = &o.dest {
            if d != Path::new("-") {
                eprintln!("=> wrote {}", d.display());
            }
        }
    }
    if let Ok(notes) = client.notes.lock() {
        for n in notes.iter() {
            eprintln!("=> {n}");
        }
    }
}

/// The plan's warnings (made here) and a daemon's (when it planned), each
/// once.
pub(crate) fn print_warnings(planner: &Planner, from_daemon: &[String]) {
    let mut seen = planner.warnings();
    for w in &seen {
        eprintln!("WARNING: {w}");
    }
    for w in from_daemon {
        if !seen.contains(w) {
            eprintln!("WARNING: {w}");
            seen.push(w.clone());
        }
    }
}

//! Running a build: open the store, set up credentials, render progress,
//! export, and print the summary.

use crate::args::{BuildArgs, GlobalArgs, Progress as ProgressMode};
use crate::request::BuildRequest;
use crate::signals::StopSignals;
use kbuild_image::ContentStore;
use kbuild_solver::engine::{Context, SolveOptions, Solver};
use kbuild_solver::options::OutputKind;
use kbuild_solver::outputs;
use kbuild_solver::progress::{Event, Progress};
use kbuild_worker::snapshot::Snapshotter;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A build that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No store directory could be chosen.
    #[error("cannot find a data directory for the local store; set --root DIR or $XDG_DATA_HOME")]
    NoRoot,
    /// The store could not be opened.
    #[error("local store {path}: {source}")]
    Store {
        /// Its root.
        path: PathBuf,
        /// Why.
        source: kbuild_image::Error,
    },
    /// The snapshots could not be opened or collected.
    #[error("snapshots under {path}: {source}")]
    Snapshots {
        /// Its root.
        path: PathBuf,
        /// Why.
        source: kbuild_worker::snapshot::Error,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(kbuild_registry::Error),
    /// `KUBECTL_BUILD_REGISTRY_PARALLELISM` is not a usable number.
    #[error(transparent)]
    Parallelism(#[from] kbuild_registry::ParallelismError),
    /// The `.dockerignore` file is malformed.
    #[error("{path}: {source}")]
    Ignore {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kbuild_ignore::Error,
    },
    /// The `.dockerignore` file cannot be read.
    #[error("{path}: {source}")]
    IgnoreRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The build failed.
    #[error(transparent)]
    Solve(kbuild_solver::engine::SolveError),
    /// A step needs an entitlement the command line did not grant.
    #[error("{source}; pass --allow {entitlement} to grant it")]
    Entitlement {
        /// The solver's refusal (names the step).
        source: Box<kbuild_solver::engine::SolveError>,
        /// The entitlement to pass.
        entitlement: &'static str,
    },
    /// The builder list could not be read.
    #[error(transparent)]
    BuilderList(Box<kbuild_driver::Error>),
    /// Contexts of this machine's files for a builder daemon.
    #[error("--build-context {contexts}: directory and oci-layout:// contexts are not sent to builder daemons yet (builder {builder}); build with --builder local, or use docker-image:// contexts")]
    LocalContexts {
        /// The `--build-context` names, comma-separated.
        contexts: String,
        /// The builder.
        builder: String,
    },
    /// A `type=local` cache for a builder daemon.
    #[error("{flag}: a type=local cache is a directory of this machine, which builder {builder} cannot reach; remote builders import and export type=registry and type=inline caches (or build with --builder local)")]
    LocalCache {
        /// The flag and its value (`--cache-from type=local,...`).
        flag: String,
        /// The builder.
        builder: String,
    },
    /// A builder with no node to build on.
    #[error("builder {builder} has no node; add one with kubectl build create {builder} --append --endpoint ...")]
    NoNodes {
        /// The builder.
        builder: String,
    },
    /// The build failed on a builder daemon (its message).
    #[error("builder {builder}: {error}")]
    Failed {
        /// The builder.
        builder: String,
        /// What the daemon reported.
        error: String,
    },
    /// A step on a builder daemon needs an entitlement the command line
    /// did not grant.
    #[error("{error}; pass --allow {entitlement} to grant it")]
    FailedEntitlement {
        /// What the daemon reported (names the step).
        error: String,
        /// The entitlement to pass.
        entitlement: String,
    },
    /// A builder daemon's result names no valid root.
    #[error("builder {builder} sent a bad root digest: {source}")]
    BadRoot {
        /// The builder.
        builder: String,
        /// Why the digest is not valid.
        source: kbuild_image::Error,
    },
    /// The embedded builder runs as an ordinary user.
    #[error("the local builder needs root: it mounts overlay filesystems and runs RUN steps in new namespaces; run kubectl build as root (e.g. with sudo), or use --dry-run to check a Dockerfile")]
    NotRoot,
    /// SIGINT (Ctrl-C) or SIGTERM.
    #[error("build cancelled (interrupted); nothing was tagged or written")]
    Cancelled,
    /// SIGINT (Ctrl-C) or SIGTERM after some outputs had been written.
    #[error("build cancelled (interrupted) after writing {0}; nothing else was tagged or written")]
    CancelledAfter(String),
    /// Writing a result file failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// SIGINT and SIGTERM could not be caught.
    #[error("install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The outputs disagree on the layers' compression.
    #[error(transparent)]
    Compression(#[from] kbuild_solver::options::CompressionConflict),
    /// `SOURCE_DATE_EPOCH` is not a number.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")]
    SourceDateEpoch {
        /// Its value.
        value: String,
        /// Why it does not parse.
        source: std::num::ParseIntError,
    },
    /// The op graph sent to a builder daemon could not be serialised.
    #[error("serialise the op graph: {0}")]
    Graph(#[source] serde_json::Error),
    /// A session with a remote builder broke (names the builder).
    #[error(transparent)]
    Remote(Box<kbuild_driver::Error>),
    /// A build split over several nodes failed (names the node).
    #[error(transparent)]
    Fanout(Box<crate::fanout::FanoutError>),
    /// A `--cache-to` export failed (names the flag value).
    #[error(transparent)]
    CacheExport(Box<kbuild_solver::cache_export::CacheExportError>),
    /// A flag this builder cannot honour (`--load` of several platforms
    /// into a Docker daemon).
    #[error(transparent)]
    Request(Box<crate::request::RequestError>),
    /// The kubernetes driver could not pick, reach or use its builder.
    #[error(transparent)]
    Kube(Box<crate::kube::KubeError>),
}

impl From<crate::request::RequestError> for BuildError {
    fn from(e: crate::request::RequestError) -> Self {
        BuildError::Request(Box::new(e))
    }
}

impl From<kbuild_solver::cache_export::CacheExportError> for BuildError {
    fn from(e: kbuild_solver::cache_export::CacheExportError) -> Self {
        BuildError::CacheExport(Box::new(e))
    }
}

impl From<kbuild_solver::engine::SolveError> for BuildError {
    fn from(source: kbuild_solver::engine::SolveError) -> Self {
        use kbuild_solver::engine::SolveError;
        if let SolveError::EntitlementDenied { entitlement, .. } = &source {
            let entitlement = *entitlement;
            return BuildError::Entitlement {
                source: Box::new(source),
                entitlement,
            };
        }
        BuildError::Solve(source)
    }
}

/// Where a build runs.
enum Chosen {
    /// The embedded builder.
    Local,
    /// A remote builder: its name and definition.
    Remote(String, kbuild_driver::Builder),
    /// A kubernetes builder (see [`crate::kube::route`]).
    Kubernetes(crate::kube::Route),
}

/// The builder a build runs on: `--builder`, else the one `kubectl build
/// use` chose; `local` is the embedded builder; a remote builder builds
/// through its daemon; any other name (and no choice at all, as
/// `buildkit`) is a kubernetes builder when a kubeconfig context is
/// usable ([`crate::kube::route`]), else the embedded builder with a note.
fn choose_builder(flag: Option<&str>, g: &GlobalArgs) -> Result<Chosen, BuildError> {
    if flag == Some(LOCAL_BUILDER) {
        return Ok(Chosen::Local);
    }
    let config = match kbuild_driver::config::default_path()
        .and_then(|p| kbuild_driver::config::Config::load(&p))
    {
        Ok(c) => c,
        // Without a readable builder list only the embedded builder and
        // the cluster's builders exist.
        Err(_) if flag.map_or(true, |f| f == DEFAULT_BUILDER) => {
            return crate::kube::route(flag, g).map(Chosen::Kubernetes)
        }
        Err(e) => return Err(BuildError::BuilderList(Box::new(e))),
    };
    let chosen = flag.or(config.current.as_deref());
    if chosen == Some(LOCAL_BUILDER) {
        return Ok(Chosen::Local);
    }
    match chosen.and_then(|n| config.builders.get(n).map(|b| (n, b))) {
        Some((name, b)) if b.driver == "remote" => Ok(Chosen::Remote(name.to_string(), b.clone())),
        _ => crate::kube::route(chosen, g).map(Chosen::Kubernetes),
    }
}

/// What `--dry-run` shows of the builder a build would use: which node
/// (or pod) would build which platform; `None` for the embedded builder.
/// Creates nothing.
pub enum Schedule {
    /// A remote builder's nodes.
    Remote(crate::fanout::Report),
    /// A kubernetes builder's pods.
    Kubernetes(crate::kube::Preview),
}

impl Schedule {
    /// The text printed after the plan.
    pub fn to_text(&self) -> String {
        match self {
            Schedule::Remote(r) => r.to_text(),
            Schedule::Kubernetes(p) => p.to_text(),
        }
    }

    /// The `schedule` object of `--dry-run=json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Schedule::Remote(r) => r.to_json(),
            Schedule::Kubernetes(p) => p.to_json(),
        }
    }

    /// The nodes that did not answer.
    pub fn unreachable(&self) -> Vec<&kbuild_driver::Error> {
        match self {
            Schedule::Remote(r) | Schedule::Kubernetes(crate::kube::Preview::Pods(r)) => {
                r.unreachable().collect()
            }
            Schedule::Kubernetes(_) => Vec::new(),
        }
    }
}

/// The schedule `--dry-run` prints for the builder `req` would run on.
pub fn dry_run_schedule(
    req: &BuildRequest,
    g: &GlobalArgs,
) -> Result<Option<Schedule>, BuildError> {
    match choose_builder(g.builder.as_deref(), g)? {
        Chosen::Local | Chosen::Kubernetes(crate::kube::Route::Local(_)) => {
            req.check_load()?;
            Ok(None)
        }
        Chosen::Remote(name, builder) => {
            req.check_load()?;
            crate::fanout::assign(req, &name, &builder)
                .map(|r| Some(Schedule::Remote(r)))
                .map_err(|e| BuildError::Fanout(Box::new(e)))
        }
        Chosen::Kubernetes(crate::kube::Route::Kubernetes {
            name,
            namespace,
            auto,
        }) => crate::kube::preview(req, g, &name, namespace.as_deref(), auto)
            .map(|p| Some(Schedule::Kubernetes(p))),
    }
}

const LOCAL_BUILDER: &str = kbuild_driver::config::LOCAL;
const DEFAULT_BUILDER: &str = "buildkit";

/// Open the local store (shared by builds; see `--root`).
pub fn open_store(g: &GlobalArgs) -> Result<(Arc<ContentStore>, PathBuf), BuildError> {
    let root = match &g.root {
        Some(r) => r.clone(),
        None => kbuild_image::default_root().ok_or(BuildError::NoRoot)?,
    };
    let store = ContentStore::open(root.join("content")).map_err(|source| BuildError::Store {
        path: root.clone(),
        source,
    })?;
    Ok((Arc::new(store), root))
}

/// Run the build and its outputs. Returns the exit code.
pub fn run(req: BuildRequest, a: &BuildArgs, g: &GlobalArgs) -> Result<(), BuildError> {
    let chosen = choose_builder(g.builder.as_deref(), g)?;
    check_for_builder(&req, &chosen)?;
    // Remote and kubernetes builders check their cache flags in
    // `remote::Setup` (a type=local cache is a directory of this machine).
    match chosen {
        Chosen::Remote(name, builder) => return crate::remote::run(req, a, g, &name, &builder),
        Chosen::Kubernetes(crate::kube::Route::Kubernetes {
            name,
            namespace,
            auto,
        }) => return crate::kube::run(req, a, g, &name, namespace.as_deref(), auto),
        Chosen::Kubernetes(crate::kube::Route::Local(note)) => {
            if let Some(note) = note.filter(|_| !a.quiet && a.progress != ProgressMode::Quiet) {
                eprintln!("=> {note}");
            }
        }
        Chosen::Local => {}
    }
    run_local(req, a, g)
}

/// Refuses what the chosen builder cannot do: `--load` it cannot honour
/// (a kubernetes builder checks its own), and contexts of this machine's
/// files on a builder daemon.
fn check_for_builder(req: &BuildRequest, chosen: &Chosen) -> Result<(), BuildError> {
    if !matches!(
        chosen,
        Chosen::Kubernetes(crate::kube::Route::Kubernetes { .. })
    ) {
        req.check_load()?;
    }
    let local_contexts = req.local_only_contexts();
    match chosen {
        Chosen::Remote(name, _)
        | Chosen::Kubernetes(crate::kube::Route::Kubernetes { name, .. })
            if !local_contexts.is_empty() =>
        {
            Err(BuildError::LocalContexts {
                contexts: local_contexts.join(", "),
                builder: name.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The progress mode of the command line (`--quiet` is `--progress quiet`).
pub(crate) fn progress_mode(a: &BuildArgs) -> ProgressMode {
    if a.quiet {
        ProgressMode::Quiet
    } else {
        a.progress
    }
}

/// The runtime a build runs on, and from then on the stop signals, which
/// cancel the build instead of killing it.
pub(crate) fn runtime_with_signals() -> Result<(tokio::runtime::Runtime, StopSignals), BuildError> {
    let rt = crate::builders::runtime().map_err(BuildError::Runtime)?;
    let signals = {
        let _in_runtime = rt.enter();
        StopSignals::install().map_err(BuildError::Signals)?
    };
    Ok((rt, signals))
}

/// A build on the embedded builder.
fn run_local(req: BuildRequest, a: &BuildArgs, g: &GlobalArgs) -> Result<(), BuildError> {
    if !rustix::process::geteuid().is_root() {
        return Err(BuildError::NotRoot);
    }
    let mode = progress_mode(a);
    let (rt, mut signals) = runtime_with_signals()?;
    let build = LocalBuild::prepare(&req, a, g, mode)?;
    let started = Instant::now();
    let outcome = rt.block_on(async {
        tokio::select! {
            r = build.solve_and_export(&req) => r,
            signal = signals.recv() => {
                tracing::debug!(%signal, "cancelling the build");
                Err(build.cancel())
            }
        }
    });
    // Blocking work still running (a killed RUN step unmounting its root
    // filesystem) gets time to clean up; nothing else is waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    build.keep_checksums();
    let (result, report, caches) = outcome?;
    for w in &result.plan.warnings {
        eprintln!("WARNING: {w}");
    }
    let digest = result.solved.root.digest.to_string();
    write_result_files(
        &req,
        a.iidfile.as_deref(),
        a.metadata_file.as_deref(),
        &digest,
        serde_json::to_value(&result.solved.root).unwrap_or_default(),
        build.config_digest(&result.solved),
    )?;
    if mode == ProgressMode::Quiet {
        // Standard output may be the archive (`-o -`): nothing else goes there.
        if !stdout_is_output(&req) {
            println!("{digest}");
        }
    } else {
        print_summary(&result.solved, &report, &digest, started);
    }
    print_cache_exports(&caches, mode);
    Ok(())
}

/// What a build on the embedded builder holds while it runs: the store
/// (under its shared lock), the solver and the context, and what cancels
/// it.
struct LocalBuild {
    store: Arc<ContentStore>,
    _lock: kbuild_image::StoreLock,
    solver: Solver,
    early_push: Option<outputs::EarlyPush>,
    ctx: Context,
    cancel: kbuild_worker::executor::Cancel,
    gate: kbuild_image::CommitGate,
}

type Built = (
    kbuild_solver::engine::BuildResult,
    outputs::ExportReport,
    Vec<kbuild_solver::cache_export::CacheExported>,
);

impl LocalBuild {
    /// Opens the store and reclaims what dead builds left, then sets up
    /// the registry client, the solver and the context of `req`.
    fn prepare(
        req: &BuildRequest,
        a: &BuildArgs,
        g: &GlobalArgs,
        mode: ProgressMode,
    ) -> Result<LocalBuild, BuildError> {
        let (store, root) = open_store(g)?;
        let lock = store.lock_shared().map_err(|source| BuildError::Store {
            path: root.clone(),
            source,
        })?;
        let snaps_root = root.join("snapshots");
        let snaps = Snapshotter::new(&snaps_root).map_err(|source| BuildError::Snapshots {
            path: snaps_root.clone(),
            source,
        })?;
        recover(&store, &snaps);
        let registry = local_registry(req, a)?;
        // With --push, layers upload while the build goes on.
        let early_push = outputs::EarlyPush::new(&registry, &store, &req.outputs)?;
        let cancel = kbuild_worker::executor::Cancel::new();
        let gate = kbuild_image::CommitGate::new();
        let mut options = solve_options(req, a, &root, cancel.clone(), gate.clone())?;
        options.on_layer = early_push.as_ref().map(|e| e.hook()).unwrap_or_default();
        let solver = Solver::new(
            store.clone(),
            Arc::new(snaps),
            Arc::new(registry),
            options,
            progress_renderer(mode),
        )
        .with_cache(req.cache_from.clone(), req.cache_to.clone());
        let ctx = local_context(req, &root)?;
        Ok(LocalBuild {
            store,
            _lock: lock,
            solver,
            early_push,
            ctx,
            cancel,
            gate,
        })
    }

    /// Builds `req`, writes its outputs and exports its caches.
    async fn solve_and_export(&self, req: &BuildRequest) -> Result<Built, BuildError> {
        // An unreachable push registry fails before any step runs.
        outputs::check_push_targets(self.solver.registry(), &req.outputs).await?;
        let result = self
            .solver
            .build(
                &req.dockerfile,
                &req.dockerfile_name,
                &req.plan_options(),
                &self.ctx,
            )
            .await?;
        // The checksums are all known once the steps ran: kept while the
        // image is exported (the end of a push waits on the registry).
        let keeping = self.keep_checksums_aside();
        let exported = outputs::export_with(
            &self.solver,
            &result.solved,
            &req.outputs,
            self.early_push.as_ref(),
        )
        .await;
        if let Some(keeping) = keeping {
            let _ = keeping.await;
        }
        let report = exported?;
        let caches = self.solver.export_cache().await?;
        Ok((result, report, caches))
    }

    /// Saves the checksum cache on a blocking thread.
    fn keep_checksums_aside(&self) -> Option<tokio::task::JoinHandle<()>> {
        let cache = self.ctx.checksums.clone()?;
        let dir = self.ctx.dir.clone()?;
        Some(tokio::task::spawn_blocking(move || {
            save_checksums(&cache, &dir)
        }))
    }

    /// Stops the build on a signal: kills running steps (dropping the
    /// build stops a push where it is; tags go last, so none is written)
    /// and closes the gate, which stops every export thread before its
    /// rename: what it reports is all that was written.
    fn cancel(&self) -> BuildError {
        self.cancel.cancel();
        let written = self.gate.close();
        if written.is_empty() {
            BuildError::Cancelled
        } else {
            BuildError::CancelledAfter(written.join(", "))
        }
    }

    /// Keeps the context's checksums for the next build (what a failed or
    /// cancelled build learned too; a no-op when they were kept already).
    fn keep_checksums(&self) {
        if let (Some(cache), Some(dir)) = (&self.ctx.checksums, &self.ctx.dir) {
            tracing::debug!(bytes = cache.hashed_bytes(), "context file content hashed");
            save_checksums(cache, dir);
        }
    }

    /// The config digest of a one-platform image (`--metadata-file`).
    fn config_digest(&self, solved: &kbuild_solver::engine::Solved) -> Option<String> {
        match solved.images.as_slice() {
            [one] => self
                .store
                .read(&one.manifest.digest)
                .ok()
                .and_then(|bytes| kbuild_image::Manifest::parse(&bytes).ok())
                .map(|man| man.config.digest.to_string()),
            _ => None,
        }
    }
}

/// The registry client of a local build: a secret named like the builder
/// is looked up only where builders run in a cluster; the embedded
/// builder reads --registry-secret and Docker's config.
fn local_registry(
    req: &BuildRequest,
    a: &BuildArgs,
) -> Result<kbuild_registry::Client, BuildError> {
    let creds = kbuild_registry::Credentials::from_registry_secret(a.registry_secret.as_deref())
        .map_err(BuildError::Credentials)?;
    kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        insecure: a.insecure_registries.clone(),
        credentials: creds,
        timeouts: req.registry_timeouts,
        concurrency: kbuild_registry::parallelism_from_env()?
            .unwrap_or(kbuild_registry::ClientOptions::default().concurrency),
        ..Default::default()
    })
    .map_err(BuildError::Credentials)
}

/// The solver's options for `req` (the early push's hook is set by the
/// caller).
fn solve_options(
    req: &BuildRequest,
    a: &BuildArgs,
    root: &std::path::Path,
    cancel: kbuild_worker::executor::Cancel,
    gate: kbuild_image::CommitGate,
) -> Result<SolveOptions, BuildError> {
    // Layers are compressed once, while they are built: every output of
    // one build shares that compression.
    let (compression, force_compression) = kbuild_solver::options::layer_compression(&req.outputs)?;
    Ok(SolveOptions {
        no_cache: a.no_cache,
        pull: a.pull,
        compression,
        force_compression,
        source_date_epoch: source_date_epoch()?,
        secrets: req.secrets.clone(),
        ssh: req.ssh.clone(),
        add_hosts: req.add_hosts.clone(),
        network: req.network,
        allow_insecure: req.allow_insecure,
        network_timeouts: req.registry_timeouts,
        cache_mounts: root.join("cache-mounts"),
        executor: kbuild_worker::executor::Executor::current_exe(),
        cancel,
        on_layer: Default::default(),
        annotations: req.annotations.clone(),
        shm_size: req.shm_size,
        provenance: req.provenance_request(),
        outputs_gate: gate,
    })
}

/// Saves the checksum cache of context `dir` for the next build.
fn save_checksums(cache: &kbuild_solver::checksums::ChecksumCache, dir: &std::path::Path) {
    // Only a speed-up for the next build: a failure to keep it is no
    // reason to fail this one.
    if let Err(e) = cache.save(dir) {
        tracing::warn!(error = %e, "could not keep the context checksum cache");
    }
}

/// The context of a local build, with its `.dockerignore` and the
/// checksum cache of its directory (keyed by the absolute context path,
/// so `.` and its full name share one cache).
fn local_context(req: &BuildRequest, root: &std::path::Path) -> Result<Context, BuildError> {
    let ignore = read_ignore(req)?.map(|(m, _)| m);
    let checksums = req.context.as_ref().map(|dir| {
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        Arc::new(kbuild_solver::checksums::ChecksumCache::load(
            &root.join("checksums"),
            &abs,
        ))
    });
    Ok(Context {
        dir: req.context.clone(),
        ignore,
        checksums,
        named: req.context_dirs.clone(),
    })
}

/// What a finished local build did, one `=>` line each.
fn print_summary(
    solved: &kbuild_solver::engine::Solved,
    report: &outputs::ExportReport,
    digest: &str,
    started: Instant,
) {
    eprintln!(
        "=> built {} in {:.1}s: {}",
        solved
            .images
            .iter()
            .map(|i| i.platform.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        digest
    );
    for n in &report.pushed {
        eprintln!("=> pushed {n}@{digest}");
    }
    for n in &report.stored {
        eprintln!("=> stored {n}@{digest} in the local store");
    }
    for p in &report.written {
        eprintln!("=> wrote {}", p.display());
    }
    for n in &report.loaded {
        eprintln!("=> loaded {n} into the Docker daemon");
    }
    for n in &report.containerd {
        eprintln!("=> {n}");
    }
    for n in &report.notes {
        eprintln!("=> {n}");
    }
}

/// The `--cache-to` exports: a warning for each that failed with
/// `ignore-error=true`, a line for each written (not when quiet).
fn print_cache_exports(caches: &[kbuild_solver::cache_export::CacheExported], mode: ProgressMode) {
    for c in caches {
        match &c.ignored {
            Some(e) => eprintln!("WARNING: {e} (ignore-error=true: the build still succeeds)"),
            None if mode != ProgressMode::Quiet => eprintln!(
                "=> exported cache {}: {} records, {} layers",
                c.to, c.records, c.layers
            ),
            None => {}
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, checked.
pub(crate) fn source_date_epoch() -> Result<Option<i64>, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.parse::<i64>() {
            Ok(n) => Ok(Some(n)),
            Err(source) => Err(BuildError::SourceDateEpoch { value: v, source }),
        },
        _ => Ok(None),
    }
}

/// The renderer of `--progress` (quiet, plain, tty, auto), for local and
/// remote builds alike.
pub(crate) fn progress_renderer(mode: ProgressMode) -> Arc<dyn Progress> {
    match mode {
        ProgressMode::Quiet => Arc::new(kbuild_solver::progress::Silent),
        ProgressMode::Plain => Arc::new(Plain::default()),
        ProgressMode::Tty => Arc::new(Tty::new()),
        ProgressMode::Auto if std::io::stderr().is_terminal() => Arc::new(Tty::new()),
        ProgressMode::Auto => Arc::new(Plain::default()),
    }
}

/// The `.dockerignore` that applies to the request's context (beside the
/// Dockerfile or at the context root), parsed, with its text.
pub(crate) fn read_ignore(
    req: &BuildRequest,
) -> Result<Option<(kbuild_ignore::Matcher, String)>, BuildError> {
    let Some(ctx) = &req.context else {
        return Ok(None);
    };
    let df = req
        .dockerfile_path
        .clone()
        .unwrap_or_else(|| ctx.join("Dockerfile"));
    let Some(p) = kbuild_ignore::find_ignore_file(ctx, &df) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&p).map_err(|source| BuildError::IgnoreRead {
        path: p.clone(),
        source,
    })?;
    let matcher = kbuild_ignore::Matcher::parse(&text).map_err(|source| BuildError::Ignore {
        path: p.clone(),
        source,
    })?;
    Ok(Some((matcher, text)))
}

/// Whether an output writes to standard output (`-o -`): then nothing
/// else may go there.
pub(crate) fn stdout_is_output(req: &BuildRequest) -> bool {
    req.outputs
        .iter()
        .any(|o| o.dest.as_deref() == Some(std::path::Path::new("-")))
}

/// Writes `--iidfile` (the root digest) and `--metadata-file` (buildx's
/// keys: digest, descriptor `root`, the config digest of a one-platform
/// image, the pushed or stored names) of a finished build.
pub(crate) fn write_result_files(
    req: &BuildRequest,
    iidfile: Option<&std::path::Path>,
    metadata_file: Option<&std::path::Path>,
    digest: &str,
    root: serde_json::Value,
    config_digest: Option<String>,
) -> Result<(), BuildError> {
    if let Some(p) = iidfile {
        write_atomic(p, digest.as_bytes())?;
    }
    if let Some(p) = metadata_file {
        let mut m = serde_json::Map::new();
        m.insert("containerimage.digest".into(), digest.into());
        m.insert("containerimage.descriptor".into(), root);
        if let Some(c) = config_digest {
            m.insert("containerimage.config.digest".into(), c.into());
        }
        let names: Vec<String> = req
            .outputs
            .iter()
            .filter(|o| matches!(o.kind, OutputKind::Registry | OutputKind::Image))
            .flat_map(|o| o.names.clone())
            .collect();
        if !names.is_empty() {
            m.insert("image.name".into(), names.join(",").into());
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap_or_default();
        write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}

/// `--iidfile`, `--metadata-file`: written beside and renamed into place.
pub(crate) fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<(), BuildError> {
    kbuild_image::write_atomic(path, data).map_err(|e| BuildError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// `--progress plain`: one line per event, numbered like BuildKit's.
#[derive(Default)]
struct Plain {
    names: Mutex<HashMap<u64, String>>,
}

impl Progress for Plain {
    fn event(&self, e: Event) {
        match e {
            Event::Start { id, name } => {
                if let Ok(mut n) = self.names.lock() {
                    n.insert(id, name.clone());
                }
                eprintln!("#{id} {name}");
            }
            Event::Cached { id, .. } => eprintln!("#{id} CACHED"),
            Event::Done { id, elapsed } => eprintln!("#{id} DONE {:.1}s", elapsed.as_secs_f64()),
            Event::Failed { id, elapsed } => {
                eprintln!("#{id} ERROR after {:.1}s", elapsed.as_secs_f64())
            }
            Event::Log { id, line } => eprintln!("#{id} {line}"),
            Event::Note(s) => eprintln!("#0 {s}"),
        }
    }
}

/// `--progress tty`: a live view, one line per running step.
struct Tty {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<u64, indicatif::ProgressBar>>,
}

impl Tty {
    fn new() -> Tty {
        Tty {
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Tty {
    fn event(&self, e: Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match e {
            Event::Start { id, name } => {
                let pb = self.multi.add(indicatif::ProgressBar::new_spinner());
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                pb.set_message(format!("#{id} {name}"));
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                bars.insert(id, pb);
            }
            Event::Cached { id, name } => {
                if let Some(pb) = bars.remove(&id) {
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("=> {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    pb.finish_with_message(format!("#{id} CACHED {name}"));
                }
            }
            Event::Done { id, elapsed } => {
                if let Some(pb) = bars.remove(&id) {
                    let msg = pb.message();
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("=> {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    pb.finish_with_message(format!("{msg} {:.1}s", elapsed.as_secs_f64()));
                }
            }
            Event::Failed { id, elapsed } => {
                if let Some(pb) = bars.remove(&id) {
                    let msg = pb.message();
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("=> {msg:.red}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    pb.finish_with_message(format!("ERROR {msg} {:.1}s", elapsed.as_secs_f64()));
                }
            }
            Event::Log { id, line } => {
                // Labelled like plain mode, printed above the live bars.
                let text = format!("#{id} {line}");
                match bars.get(&id) {
                    Some(pb) => pb.println(text),
                    None => {
                        let _ = self.multi.println(text);
                    }
                }
            }
            Event::Note(s) => {
                let _ = self.multi.println(format!("=> {s}"));
            }
        }
    }
}

/// Reclaims what crashed builds left in the store (ingest files, mounts,
/// snapshot directories); entries of live builds are locked and kept. A
/// failure here does not stop the build: it is reported and the next build
/// or `prune` tries again.
pub(crate) fn recover(store: &ContentStore, snaps: &Snapshotter) {
    match store.recover() {
        Ok(r) if !r.removed_ingests.is_empty() || !r.removed_temps.is_empty() => tracing::debug!(
            ingest_files = r.removed_ingests.len(),
            bytes = r.freed_bytes,
            ref_temp_files = r.removed_temps.len(),
            "removed temporary files of dead builds"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot clean up the ingest files of dead builds"),
    }
    match snaps.recover() {
        Ok(r) if !r.is_empty() => tracing::debug!(
            unmounted = r.unmounted.len(),
            removed = r.removed.len(),
            "reclaimed the mounts and directories of dead builds"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot clean up the snapshots of dead builds"),
    }
}

/// `kubectl build prune`: drop what no image or cache record references
/// (with `all`, the cache records too), blobs and unpacked layers alike,
/// and what crashed builds left behind. Runs under the store's exclusive
/// lock: it fails at once, touching nothing, while a build runs.
pub fn prune(g: &GlobalArgs, all: bool) -> Result<String, BuildError> {
    let (store, root) = open_store(g)?;
    let report = kbuild_solver::prune::prune(&store, &root, all).map_err(|e| match e {
        kbuild_solver::prune::PruneError::Store { path, source } => {
            BuildError::Store { path, source }
        }
        kbuild_solver::prune::PruneError::Snapshots { path, source } => {
            BuildError::Snapshots { path, source }
        }
    })?;
    Ok(prune_summary(&report, all))
}

/// The one line a prune prints (`removed 3 blobs (1.2 MB), ...`).
pub(crate) fn prune_summary(report: &kbuild_solver::prune::PruneReport, all: bool) -> String {
    format!(
        "removed {} blobs ({:.1} MB), {} unpacked layers ({:.1} MB){}; kept {} blobs",
        report.blobs_removed,
        report.blob_bytes as f64 / 1e6,
        report.layers_removed,
        report.layer_bytes as f64 / 1e6,
        if all {
            format!(", {} cache records", report.cache_records_removed)
        } else {
            String::new()
        },
        report.blobs_kept
    )
}

//! Running a build: open the store, set up credentials, render progress,
//! export, and print the summary.

use crate::args::{BuildArgs, GlobalArgs, Progress as ProgressMode};
use crate::request::BuildRequest;
use kbuild_image::{Compression, ContentStore};
use kbuild_solver::engine::{BuildResult, Context, SolveOptions, Solver};
use kbuild_solver::options::{LayerCompression, OutputKind};
use kbuild_solver::outputs::{self, ExportReport};
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
    /// The snapshotter could not be opened.
    #[error("snapshots under {path}: {reason}")]
    Snapshots {
        /// Its root.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(kbuild_registry::Error),
    /// The `.dockerignore` file is malformed.
    #[error("{path}: {reason}")]
    Ignore {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The build failed.
    #[error(transparent)]
    Solve(#[from] kbuild_solver::engine::SolveError),
    /// Ctrl-C.
    #[error("build cancelled (interrupted); nothing was tagged or written")]
    Cancelled,
    /// Writing a result file failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something outside the build failed.
    #[error("{0}")]
    Other(String),
}

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
    let mode = a.progress;
    let (registry_secret, insecure, no_cache, pull) = (
        a.registry_secret.as_deref(),
        &a.insecure_registries,
        a.no_cache,
        a.pull,
    );
    let (iidfile, metadata_file) = (a.iidfile.clone(), a.metadata_file.clone());
    let (store, root) = open_store(g)?;
    let _lock = store.lock_shared().map_err(|source| BuildError::Store {
        path: root.clone(),
        source,
    })?;
    let snaps_root = root.join("snapshots");
    let snaps = Snapshotter::new(&snaps_root).map_err(|e| BuildError::Snapshots {
        path: snaps_root.clone(),
        reason: e.to_string(),
    })?;
    let secret = registry_secret.or(Some(g.builder.as_str()));
    let creds = kbuild_registry::Credentials::from_registry_secret(secret)
        .map_err(BuildError::Credentials)?;
    let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        insecure: insecure.to_vec(),
        credentials: creds,
        timeouts: req.registry_timeouts,
        ..Default::default()
    })
    .map_err(BuildError::Credentials)?;

    let compression = match req
        .outputs
        .first()
        .map(|o| o.compression)
        .unwrap_or_default()
    {
        LayerCompression::Gzip => Compression::Gzip(6),
        LayerCompression::Zstd => Compression::Zstd(3),
        LayerCompression::Uncompressed => Compression::None,
    };
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.parse::<i64>().map_err(|_| {
            BuildError::Other(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        })?),
        _ => None,
    };
    let cancel = kbuild_worker::executor::Cancel::new();
    let progress: Arc<dyn Progress> = match mode {
        ProgressMode::Quiet => Arc::new(kbuild_solver::progress::Silent),
        ProgressMode::Plain => Arc::new(Plain::default()),
        ProgressMode::Tty => Arc::new(Tty::new()),
        ProgressMode::Auto if std::io::stderr().is_terminal() => Arc::new(Tty::new()),
        ProgressMode::Auto => Arc::new(Plain::default()),
    };
    let solver = Solver::new(
        store.clone(),
        Arc::new(snaps),
        Arc::new(registry),
        SolveOptions {
            no_cache,
            pull,
            compression,
            source_date_epoch,
            secrets: req.secrets.clone(),
            ssh: req.ssh.clone(),
            add_hosts: req.add_hosts.clone(),
            network: req.network,
            cache_mounts: root.join("cache-mounts"),
            executor: kbuild_worker::executor::Executor::current_exe(),
            cancel: cancel.clone(),
        },
        progress.clone(),
    );
    let ignore = match &req.context {
        Some(ctx) => {
            let df = req
                .dockerfile_path
                .clone()
                .unwrap_or_else(|| ctx.join("Dockerfile"));
            match kbuild_ignore::find_ignore_file(ctx, &df) {
                Some(p) => {
                    let text = std::fs::read_to_string(&p).map_err(|e| BuildError::Ignore {
                        path: p.clone(),
                        reason: e.to_string(),
                    })?;
                    Some(
                        kbuild_ignore::Matcher::parse(&text).map_err(|e| BuildError::Ignore {
                            path: p.clone(),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            }
        }
        None => None,
    };
    let ctx = Context {
        dir: req.context.clone(),
        ignore,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BuildError::Other(format!("start the runtime: {e}")))?;
    let started = Instant::now();
    let outcome = rt.block_on(async {
        let work = async {
            let result = solver
                .build(
                    &req.dockerfile,
                    &req.dockerfile_name,
                    &req.plan_options(),
                    &ctx,
                )
                .await?;
            let report = outputs::export(&solver, &result, &req.outputs).await?;
            Ok::<(BuildResult, ExportReport), BuildError>((result, report))
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => {
                // Kill running steps; dropping the build stops a push where
                // it is (tags go last, so none is written).
                cancel.cancel();
                Err(BuildError::Cancelled)
            }
        }
    });
    // Blocking work still running (a killed RUN step unmounting its root
    // filesystem) gets time to clean up; nothing else is waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    let (result, report) = outcome?;
    for w in &result.plan.warnings {
        eprintln!("WARNING: {w}");
    }
    let digest = result.root.digest.to_string();
    if let Some(p) = iidfile {
        write_atomic(&p, digest.as_bytes())?;
    }
    if let Some(p) = metadata_file {
        let mut m = serde_json::Map::new();
        m.insert("containerimage.digest".into(), digest.clone().into());
        m.insert(
            "containerimage.descriptor".into(),
            serde_json::to_value(&result.root).unwrap_or_default(),
        );
        if result.images.len() == 1 {
            if let Ok(bytes) = store.read(&result.images[0].manifest.digest) {
                if let Ok(man) = kbuild_image::Manifest::parse(&bytes) {
                    m.insert(
                        "containerimage.config.digest".into(),
                        man.config.digest.to_string().into(),
                    );
                }
            }
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
        write_atomic(&p, text.as_bytes())?;
    }
    if mode == ProgressMode::Quiet {
        println!("{digest}");
    } else {
        eprintln!(
            "=> built {} in {:.1}s: {}",
            result
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
    }
    Ok(())
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension("kbuild-tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| BuildError::Write {
            path: path.to_path_buf(),
            source,
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
                pb.set_message(name);
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                bars.insert(id, pb);
            }
            Event::Cached { id, name } => {
                if let Some(pb) = bars.remove(&id) {
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("=> {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    pb.finish_with_message(format!("CACHED {name}"));
                }
            }
            Event::Done { id, elapsed } | Event::Failed { id, elapsed } => {
                if let Some(pb) = bars.remove(&id) {
                    let msg = pb.message();
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("=> {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    pb.finish_with_message(format!("{msg} {:.1}s", elapsed.as_secs_f64()));
                }
            }
            Event::Log { id, line } => {
                if let Some(pb) = bars.get(&id) {
                    pb.println(format!("   {line}"));
                }
            }
            Event::Note(s) => {
                let _ = self.multi.println(format!("=> {s}"));
            }
        }
    }
}

/// `kubectl build prune`: drop what no image or cache record references
/// (with `all`, the cache records too), blobs and unpacked layers alike.
pub fn prune(g: &GlobalArgs, all: bool) -> Result<String, BuildError> {
    let (store, root) = open_store(g)?;
    let serr = |source| BuildError::Store {
        path: root.clone(),
        source,
    };
    let mut dropped_records = 0;
    if all {
        for (name, _) in store.list_refs().map_err(serr)? {
            if name.starts_with("cache/") {
                store.remove_ref(&name).map_err(serr)?;
                dropped_records += 1;
            }
        }
    }
    let report = store.prune(&[]).map_err(serr)?;
    // Unpacked layers whose diff id no remaining config lists.
    let roots: Vec<kbuild_image::Digest> = store
        .list_refs()
        .map_err(serr)?
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut keep = std::collections::HashSet::new();
    for d in store.reachable(roots).map_err(serr)? {
        if let Ok(bytes) = store.read(&d) {
            if let Ok(cfg) = kbuild_image::ImageConfig::parse(&bytes) {
                for id in cfg.rootfs.diff_ids {
                    keep.insert(id.hex());
                }
            }
        }
    }
    let layers = root.join("snapshots").join("layers");
    let (mut removed_layers, mut layer_bytes) = (0u64, 0u64);
    if let Ok(rd) = std::fs::read_dir(&layers) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            layer_bytes += dir_size(&e.path());
            if std::fs::remove_dir_all(e.path()).is_ok() {
                removed_layers += 1;
            }
        }
    }
    Ok(format!(
        "removed {} blobs ({:.1} MB), {} unpacked layers ({:.1} MB){}; kept {} blobs",
        report.removed_blobs.len(),
        report.freed_bytes as f64 / 1e6,
        removed_layers,
        layer_bytes as f64 / 1e6,
        if all {
            format!(", {dropped_records} cache records")
        } else {
            String::new()
        },
        report.kept
    ))
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}

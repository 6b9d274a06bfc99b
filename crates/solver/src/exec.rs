//! Exec ops: a process run in the sandbox (a re-exec of our own binary,
//! natively or under QEMU) on the parent state mounted with overlayfs,
//! with the op's mounts; its output goes to the progress view line by
//! line and its last lines into the error. The upper directory becomes
//! the op's layer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kbuild_dockerfile::graph::{ExecMount, ExecOp, Op, SecurityMode};
use kbuild_platform::Platform;
use kbuild_worker::executor::{RunSpec, Security, User as RunUser};
use kbuild_worker::snapshot::{Mount, Snapshotter};

use crate::assemble::now_rfc3339;
use crate::cache::{self, KeyParts};
use crate::copy;
use crate::engine::{SolveOptions, State};
use crate::error::{SolveError, StepError};
use crate::layer::{self, LayerOptions};
use crate::mounts;
use crate::progress::{Event, Progress};
use crate::scheduler::{step_error, Exec, Value, Vertex};
use crate::users;

/// Where an input a mount reads comes from.
enum MountFrom {
    /// A state's layers, mounted for the op.
    Layers(Vec<PathBuf>),
    /// A host directory (the context, a download).
    Dir(PathBuf),
}

/// Everything the blocking part of an exec op needs.
struct Job {
    spec: ExecOp,
    platform: Platform,
    lowers: Vec<PathBuf>,
    froms: Vec<Option<MountFrom>>,
    opts: SolveOptions,
    progress: Arc<dyn Progress>,
    vertex: Option<u64>,
}

/// Run an exec op on `parent`. Returns the state and whether it came
/// from the cache.
pub(crate) async fn run(
    x: &Exec<'_>,
    op: &Op,
    e: &ExecOp,
    parent: Arc<State>,
    inputs: &[Value],
    vertex: &Vertex<'_>,
) -> Result<(Arc<State>, bool), SolveError> {
    let solver = x.solver;
    let fail = |err: StepError| step_error(op, err);
    let key = key(x, op, e, inputs).map_err(fail)?;
    if !solver.opts.no_cache {
        if let Some(st) = cache::cached(&solver.store, &key, &parent, solver.opts.compression)? {
            vertex.start();
            return Ok((Arc::new(st), true));
        }
        // --cache-from: the layer comes from the imported cache.
        if let Some(hit) = x.imported.lookup(solver, &key).await {
            let created = hit
                .created
                .unwrap_or_else(|| now_rfc3339(solver.opts.source_date_epoch));
            let st = result_state(&parent, e, hit.layer.as_ref(), &created, key);
            cache::record(&solver.store, &st, hit.layer)?;
            vertex.start();
            return Ok((Arc::new(st), true));
        }
    }
    let platform = match &op.platform {
        Some(p) => Platform::parse(p).map_err(|source| SolveError::OpPlatform {
            op: op.id.clone(),
            value: p.clone(),
            source: Box::new(source),
        })?,
        None => Platform::host(),
    };
    let lowers = solver.layer_dirs(&parent.layers).await?;
    let mut froms = Vec::with_capacity(inputs.len());
    for (i, value) in inputs.iter().enumerate() {
        let read = e.mounts.iter().any(|m| match m {
            ExecMount::Bind { input, .. } => *input == i,
            ExecMount::Cache { input, .. } => *input == Some(i),
            _ => false,
        });
        froms.push(match value {
            _ if !read => None,
            Value::State(s) => Some(MountFrom::Layers(solver.layer_dirs(&s.layers).await?)),
            Value::Context { name, .. } => Some(MountFrom::Dir(
                x.ctx.root(name.as_deref()).map_err(fail)?.to_path_buf(),
            )),
            Value::Download(d) => Some(MountFrom::Dir(d.dir().await.map_err(fail)?)),
        });
    }
    let permit = solver.cpu.clone().acquire_owned().await?;
    vertex.start();
    let job = Job {
        spec: e.clone(),
        platform: platform.clone(),
        lowers,
        froms,
        opts: solver.opts.clone(),
        progress: solver.progress.clone(),
        vertex: vertex.shown().then_some(vertex.id),
    };
    let snaps = solver.snaps.clone();
    let store = solver.store.clone();
    let layer_opts = LayerOptions {
        compression: solver.opts.compression,
        source_date_epoch: solver.opts.source_date_epoch,
        windows: platform.os == "windows",
    };
    let watch = x.layer_watch(op);
    let layer = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mount = snaps
            .mount(&job.lowers)
            .map_err(|source| StepError::Mount {
                what: "root",
                source,
            })?;
        if let Err(err) = run_in(&snaps, mount.merged(), &job) {
            let _ = mount.unmount();
            return Err(err);
        }
        layer::commit(&snaps, &store, mount, &job.lowers, &layer_opts, watch)
    })
    .await?
    .map_err(fail)?;
    let created = now_rfc3339(solver.opts.source_date_epoch);
    let st = result_state(&parent, e, layer.as_ref(), &created, key);
    cache::record(&solver.store, &st, layer)?;
    Ok((Arc::new(st), false))
}

/// The state after an exec op that added `layer` to `parent`, its history
/// entry dated `created`.
fn result_state(
    parent: &State,
    e: &ExecOp,
    layer: Option<&layer::LayerRef>,
    created: &str,
    key: String,
) -> State {
    let mut st = parent.clone();
    match layer {
        Some(l) => {
            st.layers.push(l.clone());
            st.config.push_layer(
                l.diff_id,
                crate::config::history(created, &e.history, false),
            );
        }
        None => st
            .config
            .push_empty_layer(crate::config::history(created, &e.history, true)),
    }
    st.key = key;
    st
}

/// The cache key: the op (argv, env with the build args, user, cwd,
/// mounts, network, security), its inputs' keys, `SOURCE_DATE_EPOCH`, the
/// build's network and `--add-host`s (they change what the command
/// resolves) and the checksum of every context directory it bind-mounts.
/// Secrets are not keyed.
pub(crate) fn key(x: &Exec, op: &Op, e: &ExecOp, inputs: &[Value]) -> Result<String, StepError> {
    let opts = &x.solver.opts;
    let mut key = KeyParts::default();
    key.push(op.id.0.as_bytes());
    key.push(format!("source-date-epoch:{:?}", opts.source_date_epoch));
    for i in inputs {
        key.push(i.key().as_bytes());
    }
    key.push(format!("{:?}", opts.network));
    // BuildKit's /dev/shm is a tmpfs mount of the exec: its size is part of
    // the key. The default adds nothing, so earlier keys stay valid.
    if opts.shm_size != kbuild_worker::executor::DEFAULT_SHM_SIZE {
        key.push(format!("shm-size:{}", opts.shm_size));
    }
    for (host, ip) in &opts.add_hosts {
        key.push(format!("add-host:{host}={ip}"));
    }
    for m in &e.mounts {
        let ExecMount::Bind { input, source, .. } = m else {
            continue;
        };
        if let Some(Value::Context { dockerignore, name }) = inputs.get(*input) {
            let req = copy::Request {
                sources: vec![source.clone()],
                ..Default::default()
            };
            key.push(crate::fileop::context_checksum(
                x.ctx,
                *dockerignore,
                name.as_deref(),
                &req,
            )?);
        }
    }
    Ok(key.finish())
}

/// Mount the inputs the op's bind and cache mounts read; their roots by
/// input index.
fn mount_inputs(
    snaps: &Snapshotter,
    froms: &[Option<MountFrom>],
) -> Result<(Vec<Mount>, Vec<Option<PathBuf>>), StepError> {
    let mut mounted = Vec::new();
    let mut roots = Vec::with_capacity(froms.len());
    for from in froms {
        roots.push(match from {
            None => None,
            Some(MountFrom::Dir(d)) => Some(d.clone()),
            Some(MountFrom::Layers(lowers)) => {
                let m = snaps.mount(lowers).map_err(|source| StepError::Mount {
                    what: "--mount source",
                    source,
                })?;
                let root = m.merged().to_path_buf();
                mounted.push(m);
                Some(root)
            }
        });
    }
    Ok((mounted, roots))
}

/// Run the process on the mounted root `merged`.
fn run_in(snaps: &Snapshotter, merged: &Path, job: &Job) -> Result<(), StepError> {
    let (mounted, roots) = mount_inputs(snaps, &job.froms)?;
    let result = run_process(merged, job, &roots);
    for m in mounted {
        let _ = m.unmount();
    }
    result
}

fn run_process(merged: &Path, job: &Job, roots: &[Option<PathBuf>]) -> Result<(), StepError> {
    let e = &job.spec;
    let opts = &job.opts;
    let res = mounts::prepare(
        &e.mounts,
        &mounts::Inputs {
            roots,
            cache_dir: &opts.cache_mounts,
            secrets: &opts.secrets,
            ssh: &opts.ssh,
        },
    )?;
    let ids = users::user_ids(merged, &e.user)?;
    let mut spec = RunSpec::new(merged, e.argv.clone());
    spec.env = e.env.clone();
    spec.env.extend(res.env.iter().cloned());
    // runc (BuildKit's executor) sets HOME from /etc/passwd when Env has none.
    mounts::set_home(&mut spec.env, merged, &e.user);
    spec.cwd = e.cwd.clone();
    spec.user = RunUser {
        uid: ids.uid,
        gid: ids.gid,
        additional_gids: ids.groups.clone(),
    };
    spec.extra_hosts = opts
        .add_hosts
        .iter()
        .map(|(h, ip)| (h.clone(), ip.to_string()))
        .collect();
    spec.network = mounts::network(e.network, opts.network);
    spec.security = match e.security {
        SecurityMode::Sandbox => Security::Sandbox,
        SecurityMode::Insecure => Security::Insecure,
    };
    spec.platform = job.platform.clone();
    spec.mounts = res.mounts.clone();
    spec.shm_size = opts.shm_size;
    let mut out = Output::new(&*job.progress, job.vertex);
    let status = opts
        .executor
        .run(&spec, &opts.cancel, &mut |_stream, bytes| out.push(bytes));
    out.end();
    drop(res);
    let status = status?;
    if !status.success() {
        // The process as BuildKit names it: its argv (`/bin/sh -c false`),
        // not the instruction text, which may carry --mount/--network flags.
        return Err(StepError::Failed {
            argv: e.argv.join(" "),
            status,
            last: out.tail.into_iter().collect(),
        });
    }
    Ok(())
}

/// A process's output, split into lines for the progress view; the last
/// five are kept for the error.
struct Output<'a> {
    progress: &'a dyn Progress,
    vertex: Option<u64>,
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

impl<'a> Output<'a> {
    fn new(progress: &'a dyn Progress, vertex: Option<u64>) -> Self {
        Output {
            progress,
            vertex,
            partial: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
    }

    fn end(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest);
        }
    }

    fn emit(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        if let Some(id) = self.vertex {
            self.progress.event(Event::Log {
                id,
                line: line.clone(),
            });
        }
        self.tail.push_back(line);
        if self.tail.len() > 5 {
            self.tail.pop_front();
        }
    }
}

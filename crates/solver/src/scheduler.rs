//! The scheduler: one build's memo table over the graph's ops. Every op is
//! a future computed at most once (keyed by its id) that first awaits its
//! inputs concurrently, then runs by its kind: [`crate::source`],
//! [`crate::exec`], [`crate::fileop`] or a config patch. Ops with a
//! progress name are shown as vertices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::BoxFuture;
use kbuild_dockerfile::graph::{ConfigOp, Graph, Op, OpId, OpKind};
use tokio::sync::OnceCell;

use crate::assemble::now_rfc3339;
use crate::base::Images;
use crate::engine::{Context, Solver, State};
use crate::error::{share, GraphProblem, Shared, SolveError, StepError};
use crate::progress::{Event, Progress};

/// What an op gives the ops that read it.
#[derive(Clone)]
pub(crate) enum Value {
    /// A filesystem as layers, with an image config.
    State(Arc<State>),
    /// Files of the build context (`.dockerignore` applied or not).
    Context {
        /// Whether `.dockerignore` applies.
        dockerignore: bool,
        /// The `--build-context` directory; the main context when `None`.
        name: Option<String>,
    },
    /// A downloaded file.
    Download(Arc<Downloaded>),
}

/// The files of an `http` or `git` source: fetched already, or known by
/// their identity (`--checksum`, a server answering "not modified", a
/// commit from `ls-remote`) and fetched only when an op that reads them
/// misses the cache.
pub(crate) struct Downloaded {
    /// What it contributes to its readers' cache keys.
    pub key: String,
    /// How to fetch it when needed.
    pub fetch: Fetch,
    /// The temporary directory holding it (removed when the build is
    /// done) and the root to read from.
    pub dir: tokio::sync::OnceCell<(tempfile::TempDir, std::path::PathBuf)>,
}

/// Where a [`Downloaded`] comes from.
pub(crate) enum Fetch {
    /// One URL.
    Http(crate::download::Fetch),
    /// A repository at a commit (`None`: known only after the checkout).
    Git(crate::git::Checkout, Option<String>),
}

impl Downloaded {
    /// The directory to read from, fetching it on first use.
    pub async fn dir(&self) -> Result<std::path::PathBuf, StepError> {
        let (_, root) = self
            .dir
            .get_or_try_init(|| async {
                match &self.fetch {
                    Fetch::Http(f) => f
                        .to_temp_dir()
                        .await
                        .map(|(dir, _)| {
                            let root = dir.path().to_path_buf();
                            (dir, root)
                        })
                        .map_err(StepError::from),
                    Fetch::Git(c, commit) => c
                        .to_temp_dir(commit.as_deref())
                        .await
                        .map(|(dir, root, _)| (dir, root))
                        .map_err(StepError::from),
                }
            })
            .await?;
        Ok(root.clone())
    }
}

impl Value {
    /// What the value contributes to its readers' cache keys. The files
    /// of the context are keyed by each reader, by what it reads.
    pub fn key(&self) -> &str {
        match self {
            Value::State(s) => &s.key,
            Value::Context {
                dockerignore: true, ..
            } => "context",
            Value::Context {
                dockerignore: false,
                ..
            } => "context-all",
            Value::Download(d) => &d.key,
        }
    }
}

/// The memo table of one build.
pub(crate) struct Exec<'a> {
    pub solver: &'a Solver,
    pub ctx: &'a Context,
    pub images: Images,
    ops: HashMap<&'a OpId, (&'a Op, OnceCell<Shared<Value>>)>,
    /// The ops whose states become the targets' images: each target's
    /// result and its parents (`inputs[0]`) down to the source. Their new
    /// layers are reported to `SolveOptions::on_layer` as they finish.
    in_image: std::collections::HashSet<&'a OpId>,
    /// The caches of `--cache-from`, looked up after the local cache.
    pub imported: crate::cache_import::Imported,
    /// Each op's cache key, computed from its inputs' keys without running
    /// them (see [`Exec::key_only`]).
    keys: HashMap<&'a OpId, OnceCell<Shared<Value>>>,
}

impl<'a> Exec<'a> {
    pub fn new(solver: &'a Solver, graph: &'a Graph, ctx: &'a Context, images: Images) -> Self {
        let ops = graph
            .ops
            .iter()
            .map(|op| (&op.id, (op, OnceCell::new())))
            .collect();
        let mut in_image = std::collections::HashSet::new();
        for t in &graph.targets {
            let mut next = Some(&t.result);
            while let Some(id) = next.filter(|id| in_image.insert(*id)) {
                next = graph.op(id).and_then(|op| match op.op {
                    OpKind::Source(_) => None,
                    _ => op.inputs.first(),
                });
            }
        }
        Exec {
            solver,
            ctx,
            images,
            keys: graph
                .ops
                .iter()
                .map(|op| (&op.id, OnceCell::new()))
                .collect(),
            ops,
            in_image,
            imported: Default::default(),
        }
    }

    /// The image state a target's result op gives.
    pub async fn target_state(&'a self, id: &'a OpId) -> Shared<Arc<State>> {
        match self.value(id, None).await? {
            Value::State(s) => Ok(s),
            _ => Err(Arc::new(SolveError::InvalidOp {
                op: id.clone(),
                problem: GraphProblem::NotAnImage,
            })),
        }
    }

    /// The value of op `id`, computed once; `reader` is the op that asks
    /// first (its name goes into errors of sources it reads).
    fn value(&'a self, id: &'a OpId, reader: Option<&'a Op>) -> BoxFuture<'a, Shared<Value>> {
        Box::pin(async move {
            let Some((op, cell)) = self.ops.get(id) else {
                return Err(Arc::new(SolveError::InvalidOp {
                    op: reader.map_or_else(|| id.clone(), |r| r.id.clone()),
                    problem: GraphProblem::MissingInput(id.clone()),
                }));
            };
            cell.get_or_init(|| async move { self.compute(op, reader).await.map_err(share) })
                .await
                .clone()
        })
    }

    async fn compute(&'a self, op: &'a Op, reader: Option<&'a Op>) -> Result<Value, SolveError> {
        let inputs = match self.hit_without_sources(op).await? {
            Some(inputs) => inputs,
            None => futures_util::future::try_join_all(
                op.inputs.iter().map(|i| self.value(i, Some(op))),
            )
            .await
            .map_err(SolveError::Shared)?,
        };
        let parent = || state_input(op, &inputs, 0);
        let vertex = Vertex::new(self.solver, op);
        let result = match &op.op {
            OpKind::Source(s) => {
                let value = crate::source::value(self, op, s, reader).await?;
                if let Value::State(st) = &value {
                    self.report_layers(op, &[], st);
                }
                return Ok(value);
            }
            OpKind::Config(c) => self.config_op(op, c, parent()?, &vertex),
            OpKind::File(f) => crate::fileop::run(self, op, f, parent()?, &inputs, &vertex).await,
            OpKind::Exec(e) => crate::exec::run(self, op, e, parent()?, &inputs, &vertex).await,
        };
        vertex.finish(&result);
        let (state, _) = result?;
        if let Ok(p) = parent() {
            self.report_layers(op, &p.layers, &state);
            let in_image = self.in_image.contains(&op.id);
            self.solver.external.record(op, &p, &state, in_image);
        }
        Ok(Value::State(state))
    }

    /// With `--cache-from`, as BuildKit computes cache keys before running
    /// anything: when a file or exec op's key (made from its inputs' keys
    /// alone) is in the local or an imported cache, only its parent is
    /// needed to rebuild its state; the states it reads besides (`COPY
    /// --from`, `RUN --mount=from=`) are not run. Returns the inputs to
    /// run the op with (the parent's real state, the others' keys), or
    /// `None` to run every input.
    async fn hit_without_sources(&'a self, op: &'a Op) -> Result<Option<Vec<Value>>, SolveError> {
        let solver = self.solver;
        if solver.opts.no_cache
            || self.imported.is_empty()
            || op.inputs.len() < 2
            || !matches!(op.op, OpKind::File(_) | OpKind::Exec(_))
        {
            return Ok(None);
        }
        // Inputs already computed cost nothing: only a missing one matters.
        let missing = op.inputs[1..].iter().any(|i| {
            self.ops
                .get(i)
                .map_or(true, |(_, cell)| cell.get().is_none())
        });
        if !missing {
            return Ok(None);
        }
        let Ok(Value::State(key_only)) = self.key_only(&op.id).await else {
            return Ok(None);
        };
        let key = &key_only.key;
        // A miss must not wait for the parent before the other inputs
        // start: look at the records first, the parent only on a hit.
        let recorded = solver
            .store
            .get_ref(&format!("cache/{key}"))
            .ok()
            .flatten()
            .is_some()
            || self.imported.lookup_now(key).is_some();
        if !recorded {
            return Ok(None);
        }
        let parent = match self.value(&op.inputs[0], Some(op)).await {
            Ok(Value::State(p)) => p,
            _ => return Ok(None),
        };
        let hit = crate::cache::cached(&solver.store, key, &parent, solver.opts.compression)?
            .is_some()
            || self.imported.lookup(solver, key).await.is_some();
        if !hit {
            return Ok(None);
        }
        let mut inputs = vec![Value::State(parent)];
        for i in &op.inputs[1..] {
            inputs.push(self.key_only(i).await.map_err(SolveError::Shared)?);
        }
        Ok(Some(inputs))
    }

    /// The value of op `id` as far as its readers' keys need it: a source's
    /// real value, an op already computed, or else a state holding only the
    /// op's cache key, computed from its inputs' keys without running it.
    fn key_only(&'a self, id: &'a OpId) -> BoxFuture<'a, Shared<Value>> {
        Box::pin(async move {
            let Some((op, cell)) = self.ops.get(id) else {
                return self.value(id, None).await;
            };
            if let Some(v) = cell.get() {
                return v.clone();
            }
            if matches!(op.op, OpKind::Source(_)) {
                return self.value(id, None).await;
            }
            let Some(keys) = self.keys.get(id) else {
                return self.value(id, None).await;
            };
            keys.get_or_init(|| async move {
                let mut inputs = Vec::with_capacity(op.inputs.len());
                for i in &op.inputs {
                    inputs.push(self.key_only(i).await?);
                }
                let key = match &op.op {
                    OpKind::Config(_) => {
                        let parent = state_input(op, &inputs, 0).map_err(share)?;
                        config_key(self.solver, op, &parent.key)
                    }
                    OpKind::File(f) => {
                        crate::fileop::key(self, op, f, &inputs, crate::fileop::instruction_of(op))
                            .map_err(|e| share(step_error(op, e)))?
                    }
                    OpKind::Exec(e) => crate::exec::key(self, op, e, &inputs)
                        .map_err(|err| share(step_error(op, err)))?,
                    OpKind::Source(_) => return self.value(id, None).await,
                };
                Ok(Value::State(Arc::new(State {
                    layers: Vec::new(),
                    config: Default::default(),
                    key,
                })))
            })
            .await
            .clone()
        })
    }

    /// Tells `SolveOptions::on_layer` about the layers `state` adds to
    /// `parent`, when `op`'s state goes into an image (so a push can
    /// upload them while the build goes on).
    fn report_layers(&self, op: &Op, parent: &[crate::engine::LayerRef], state: &State) {
        if self.in_image.contains(&op.id) {
            self.solver.opts.on_layer.added(parent, &state.layers);
        }
    }

    /// A watch for the layer `op` is about to write, when its state goes
    /// into an image and the layer hook follows layers as they are written.
    pub(crate) fn layer_watch(&self, op: &Op) -> Option<Box<dyn kbuild_image::BlobWatch>> {
        if self.in_image.contains(&op.id) {
            self.solver.opts.on_layer.stream()
        } else {
            None
        }
    }

    /// A config op: patches and a history entry, no vertex of its own
    /// unless it has a progress name (`WORKDIR /`).
    fn config_op(
        &self,
        op: &Op,
        c: &ConfigOp,
        parent: Arc<State>,
        vertex: &Vertex,
    ) -> Result<(Arc<State>, bool), SolveError> {
        let solver = self.solver;
        // SOURCE_DATE_EPOCH sets the history time: part of the key, as for
        // every other op.
        let key = config_key(solver, op, &parent.key);
        if !solver.opts.no_cache {
            if let Some(st) =
                crate::cache::cached(&solver.store, &key, &parent, solver.opts.compression)?
            {
                vertex.start();
                return Ok((Arc::new(st), true));
            }
        }
        let imported = match solver.opts.no_cache {
            false => self.imported.lookup_now(&key),
            true => None,
        };
        vertex.start();
        let mut st = (*parent).clone();
        crate::config::apply(&mut st.config, &c.patches).map_err(|e| step_error(op, e))?;
        if let Some(h) = &c.history {
            let created = imported
                .clone()
                .flatten()
                .unwrap_or_else(|| now_rfc3339(solver.opts.source_date_epoch));
            st.config
                .push_empty_layer(crate::config::history(&created, h, true));
        }
        st.key = key;
        crate::cache::record(&solver.store, &st, None)?;
        Ok((Arc::new(st), imported.is_some()))
    }
}

/// A config op's cache key: the op, its parent's key and
/// `SOURCE_DATE_EPOCH` (it sets the history time).
fn config_key(solver: &Solver, op: &Op, parent_key: &str) -> String {
    let sde = format!("source-date-epoch:{:?}", solver.opts.source_date_epoch);
    crate::cache::key(&[op.id.0.as_bytes(), parent_key.as_bytes(), sde.as_bytes()])
}

/// Input `i` of `op` as a filesystem state.
pub(crate) fn state_input(op: &Op, inputs: &[Value], i: usize) -> Result<Arc<State>, SolveError> {
    let invalid = |problem| SolveError::InvalidOp {
        op: op.id.clone(),
        problem,
    };
    match inputs.get(i) {
        Some(Value::State(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(GraphProblem::NotAState(i))),
        None if i == 0 => Err(invalid(GraphProblem::NoParent)),
        None => Err(invalid(GraphProblem::InputIndex(i))),
    }
}

/// How errors and progress name an op: its progress name, else its
/// Dockerfile text, else its id.
pub(crate) fn op_name(op: &Op) -> String {
    op.meta
        .progress
        .first()
        .or(op.meta.display.as_ref())
        .cloned()
        .unwrap_or_else(|| op.id.to_string())
}

/// A failure inside `op`.
pub(crate) fn step_error(op: &Op, source: impl Into<StepError>) -> SolveError {
    SolveError::Step {
        step: op_name(op),
        source: source.into(),
    }
}

/// The progress vertex of an op (none when the op has no progress name).
/// It starts when its work does (after the cache lookup and once it has a
/// CPU slot), so its time is its own.
pub(crate) struct Vertex<'a> {
    pub id: u64,
    name: Option<&'a str>,
    progress: &'a dyn Progress,
    started: Mutex<Option<Instant>>,
}

impl<'a> Vertex<'a> {
    fn new(solver: &'a Solver, op: &'a Op) -> Self {
        // Sources show their own vertices (one per stage starting FROM an image).
        let name = match op.op {
            OpKind::Source(_) => None,
            _ => op.meta.progress.first().map(String::as_str),
        };
        Vertex {
            id: if name.is_some() { solver.vertex() } else { 0 },
            name,
            progress: &*solver.progress,
            started: Mutex::new(None),
        }
    }

    /// The work begins.
    pub fn start(&self) {
        let Some(name) = self.name else { return };
        self.progress.event(Event::Start {
            id: self.id,
            name: name.to_string(),
        });
        if let Ok(mut s) = self.started.lock() {
            *s = Some(Instant::now());
        }
    }

    /// Whether output lines go to a vertex.
    pub fn shown(&self) -> bool {
        self.name.is_some()
    }

    fn finish<T>(&self, result: &Result<(T, bool), SolveError>) {
        let Some(name) = self.name else { return };
        let started = match self.started.lock().ok().and_then(|s| *s) {
            Some(t) => t,
            None => {
                self.progress.event(Event::Start {
                    id: self.id,
                    name: name.to_string(),
                });
                Instant::now()
            }
        };
        let elapsed = started.elapsed();
        self.progress.event(match result {
            Ok((_, true)) => Event::Cached {
                id: self.id,
                name: name.to_string(),
            },
            Ok(_) => Event::Done {
                id: self.id,
                elapsed,
            },
            Err(_) => Event::Failed {
                id: self.id,
                elapsed,
            },
        });
    }
}

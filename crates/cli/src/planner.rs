//! The plan of a build that builder daemons run, made here once: the
//! Dockerfile is planned and lowered to its op graph
//! (`kbuild_dockerfile::graph`) on this machine, base-image configs
//! resolved with this machine's credentials (the local store first, then
//! the registry: manifest and config only, the daemon pulls the layers),
//! and each node is sent the graph of its platforms, planned for its build
//! platform (`BuildStart.graph`, protocol 3), its image sources pinned to
//! the digests resolved here: every node builds on the same bases however
//! the tags move, and no node resolves a tag again.
//!
//! [`Planner::new`] plans without base-image configs before any connection,
//! so Dockerfile errors that need no image (a bad `--chmod`, an unknown
//! instruction, a missing stage) stop the build before a node is dialled.
//! Configs are resolved once per build platform over every requested
//! platform ([`Planner::resolve`]) and graphs lowered once per (build
//! platform, platforms) ([`Planner::graph`]). An image this machine cannot
//! resolve (one kept only in a builder's store, a registry only the builder
//! reaches) leaves the planning to the daemon, as with an older daemon: the
//! node is sent the Dockerfile. The registry client is the build's one
//! ([`crate::remote::Setup`]), which also pushes a split build's index.

use crate::args::{BuildArgs, GlobalArgs};
use crate::build::BuildError;
use crate::request::BuildRequest;
use kbuild_dockerfile::graph::{self, Pins};
use kbuild_dockerfile::plan::{self, BaseImageConfig, PlanOptions};
use kbuild_image::ContentStore;
use kbuild_platform::Platform;
use kbuild_proto::v1;
use kbuild_solver::engine::SolveError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// What `--dry-run` prints: `first` (planned without base-image configs)
/// planned again with the configs of the base images the local store
/// holds under their names, and its graph with those images pinned to
/// their digests, as a build without `--pull` would take them. Nothing is
/// fetched or written: images the store lacks stay unpinned (a build
/// resolves them), and with `--pull` nothing is pinned (a build asks the
/// registry).
pub(crate) fn dry_run(
    req: &BuildRequest,
    a: &BuildArgs,
    g: &GlobalArgs,
    first: plan::BuildPlan,
) -> Result<(plan::BuildPlan, graph::Graph), BuildError> {
    let in_file =
        |e: plan::Error| BuildError::Solve(SolveError::Plan(e.in_file(&req.dockerfile_name)));
    let content = g
        .root
        .clone()
        .or_else(kbuild_image::default_root)
        .map(|root| root.join("content"))
        .filter(|c| c.is_dir() && !a.pull);
    let store = content.and_then(|c| ContentStore::open(c).ok());
    let stored = match store {
        Some(store) => {
            let wanted = kbuild_solver::engine::images_needed(&first).map_err(BuildError::Solve)?;
            kbuild_solver::engine::stored_configs(&store, &wanted).map_err(BuildError::Solve)?
        }
        None => Default::default(),
    };
    if stored.pins.is_empty() {
        let lowered = graph::lower(&first).map_err(in_file)?;
        return Ok((first, lowered));
    }
    let planned =
        plan::plan(&req.dockerfile, &req.plan_options(), &stored.configs).map_err(in_file)?;
    let lowered = graph::lower_pinned(&planned, &stored.pins).map_err(in_file)?;
    Ok((planned, lowered))
}

/// This machine's plans of one build.
pub(crate) struct Planner {
    dockerfile: String,
    file_name: String,
    options: PlanOptions,
    pull: bool,
    store: Option<ContentStore>,
    registry: kbuild_registry::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Base-image configs by `reference@platform`.
    configs: BTreeMap<String, BaseImageConfig>,
    /// The digests each image resolved to.
    pins: Pins,
    /// Build platforms whose images are resolved.
    resolved: BTreeSet<Platform>,
    /// Why the daemons plan instead (an image not resolved here).
    unresolved: Option<String>,
    /// Serialised graphs by (build platform, platforms).
    graphs: HashMap<(Platform, Vec<Platform>), Vec<u8>>,
    /// The planner's warnings, each once, in order.
    warnings: Vec<String>,
}

impl Planner {
    /// Plans `req` without base-image configs for this machine's platform
    /// and lowers it: the Dockerfile errors that need no image, and a base
    /// image wanted for an unknown platform, are reported here. Base
    /// images are resolved through `registry`, the build's client.
    pub(crate) fn new(
        req: &BuildRequest,
        a: &BuildArgs,
        g: &GlobalArgs,
        registry: kbuild_registry::Client,
    ) -> Result<Planner, BuildError> {
        let options = req.plan_options();
        let in_file =
            |e: plan::Error| BuildError::Solve(SolveError::Plan(e.in_file(&req.dockerfile_name)));
        let first =
            plan::plan(&req.dockerfile, &options, &plan::NoImageConfigs).map_err(in_file)?;
        graph::lower(&first).map_err(in_file)?;
        kbuild_solver::engine::images_needed(&first).map_err(BuildError::Solve)?;
        let store = g
            .root
            .clone()
            .or_else(kbuild_image::default_root)
            .and_then(|root| ContentStore::open(root.join("content")).ok());
        Ok(Planner {
            dockerfile: req.dockerfile.clone(),
            file_name: req.dockerfile_name.clone(),
            options,
            pull: a.pull,
            store,
            registry,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn plan_for(
        &self,
        build_platform: &Platform,
        platforms: &[Platform],
        configs: &dyn plan::ImageConfigSource,
    ) -> Result<plan::BuildPlan, SolveError> {
        let mut options = self.options.clone();
        options.build_platform = build_platform.clone();
        options.platforms = platforms.to_vec();
        plan::plan(&self.dockerfile, &options, configs)
            .map_err(|e| SolveError::Plan(e.in_file(&self.file_name)))
    }

    /// Resolves the base-image configs the build needs on each of
    /// `build_platforms` (every requested platform), each image once.
    pub(crate) async fn resolve(&self, build_platforms: &[Platform]) {
        for b in build_platforms {
            let wanted = {
                let state = self.state();
                if state.unresolved.is_some() || state.resolved.contains(b) {
                    continue;
                }
                let wanted = self
                    .plan_for(b, &self.options.platforms, &plan::NoImageConfigs)
                    .and_then(|p| kbuild_solver::engine::images_needed(&p));
                match wanted {
                    Ok(w) => w
                        .into_iter()
                        .filter(|(r, p)| !state.configs.contains_key(&format!("{r}@{p}")))
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        drop(state);
                        self.leave_to_daemon(e.to_string());
                        return;
                    }
                }
            };
            let resolved = match (&self.store, wanted.is_empty()) {
                (_, true) => Ok(Default::default()),
                (None, false) => {
                    self.leave_to_daemon("no local store to keep base-image configs in".into());
                    return;
                }
                (Some(store), false) => {
                    let _lock = store.lock_shared();
                    kbuild_solver::engine::resolve_configs(
                        store,
                        &self.registry,
                        &wanted,
                        self.pull,
                    )
                    .await
                }
            };
            match resolved {
                Ok(resolved) => {
                    let mut state = self.state();
                    state.configs.extend(resolved.configs);
                    state.pins.extend(resolved.pins);
                    state.resolved.insert(b.clone());
                }
                Err(e) => {
                    self.leave_to_daemon(e.to_string());
                    return;
                }
            }
        }
    }

    fn leave_to_daemon(&self, why: String) {
        tracing::info!(reason = %why, "the builder plans the Dockerfile");
        self.state().unresolved.get_or_insert(why);
    }

    /// The serialised op graph of `platforms` planned for `build_platform`
    /// (resolved first with [`Planner::resolve`]); `None` when the daemon
    /// is to plan (an image not resolved here).
    pub(crate) fn graph(
        &self,
        build_platform: &Platform,
        platforms: &[Platform],
    ) -> Result<Option<Vec<u8>>, BuildError> {
        let key = (build_platform.clone(), platforms.to_vec());
        let (configs, pins) = {
            let state = self.state();
            if state.unresolved.is_some() || !state.resolved.contains(build_platform) {
                return Ok(None);
            }
            if let Some(g) = state.graphs.get(&key) {
                return Ok(Some(g.clone()));
            }
            (state.configs.clone(), state.pins.clone())
        };
        let planned = self
            .plan_for(build_platform, platforms, &configs)
            .map_err(BuildError::Solve)?;
        let lowered = graph::lower_pinned(&planned, &pins)
            .map_err(|e| BuildError::Solve(SolveError::Plan(e.in_file(&self.file_name))))?;
        let json = lowered.to_json().map_err(BuildError::Graph)?;
        let mut state = self.state();
        for w in &planned.warnings {
            let w = w.to_string();
            if !state.warnings.contains(&w) {
                state.warnings.push(w);
            }
        }
        state.graphs.insert(key, json.clone());
        Ok(Some(json))
    }

    /// Puts the graph of `start`'s platforms for `build_platform` in
    /// `start` (the session sends it instead of the Dockerfile to a daemon
    /// of protocol 3); leaves `start` as it is when the daemon plans.
    pub(crate) fn apply(
        &self,
        start: &mut v1::BuildStart,
        build_platform: &Platform,
        platforms: &[Platform],
    ) -> Result<(), BuildError> {
        start.graph = self.graph(build_platform, platforms)?.unwrap_or_default();
        Ok(())
    }

    /// The warnings of the plans made here, each once.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.state().warnings.clone()
    }
}

//! One build over the nodes of a remote builder. Every node is asked for
//! its `Info` at once, the Dockerfile's op graph is lowered once per build
//! platform among the nodes, and `kbuild_driver::schedule` decides which
//! node builds which platform (`--dry-run` shows it and builds nothing).
//!
//! [`build`] then runs one session per node, all at once, each for its
//! platforms only; with a push output each node pushes its blobs and
//! manifests by digest, and this side merges the index from the manifest
//! descriptors the nodes return (platforms in request order), pushes it
//! and writes the tags last. A node whose build fails stops the build
//! (the others are cancelled, nothing is tagged); a node lost mid-build
//! has its platforms scheduled once more over the other nodes.

use crate::args::{BuildArgs, GlobalArgs, Progress as ProgressMode};
use crate::build::BuildError;
use crate::remote::{self, Setup};
use crate::request::{BuildRequest, RequestError};
use crate::split_outputs::SplitOutputs;
use kbuild_driver::config::{self, Builder};
use kbuild_driver::session::{Local, LocalError};
use kbuild_driver::{Assignment, Candidate, Dialer, ScheduleError};
use kbuild_platform::Platform;
use kbuild_proto::v1;
use kbuild_solver::options::OutputKind;
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn left_out(unreachable: &[kbuild_driver::Error]) -> String {
    if unreachable.is_empty() {
        return String::new();
    }
    let list: Vec<String> = unreachable.iter().map(|e| e.to_string()).collect();
    format!("; left out: {}", list.join("; "))
}

/// How long each node may take to answer `Info` (as `ls`'s default).
pub const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the assignment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The Dockerfile does not plan for a node's build platform.
    #[error(transparent)]
    Plan(RequestError),
    /// Every node is down.
    #[error("builder {builder} has no reachable node: {}", unreachable.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoReachableNode {
        /// The builder.
        builder: String,
        /// Why each node could not be asked.
        unreachable: Vec<kbuild_driver::Error>,
    },
    /// Some platform has no capable node.
    #[error("{source}{}", left_out(unreachable))]
    Schedule {
        /// The scheduler's answer.
        source: ScheduleError,
        /// The nodes that could not be asked.
        unreachable: Vec<kbuild_driver::Error>,
    },
    /// The async runtime could not start or lost a task.
    #[error("asking the nodes: {0}")]
    Runtime(std::io::Error),
    /// A node's build failed: the build stops there, nothing is tagged.
    #[error(
        "node {node} of builder {builder} failed building {platforms}: {error}; nothing was tagged"
    )]
    NodeFailed {
        /// The builder.
        builder: String,
        /// The node.
        node: String,
        /// The platforms it was building.
        platforms: String,
        /// The daemon's error, one line.
        error: String,
    },
    /// A node's session could not go on for a reason that is not the
    /// node being lost (a context file, a result, the protocol).
    #[error("node {node} (building {platforms}): {source}; nothing was tagged")]
    NodeError {
        /// The node.
        node: String,
        /// The platforms it was building.
        platforms: String,
        /// Why.
        source: Box<kbuild_driver::Error>,
    },
    /// A node was lost and its platforms could not be built elsewhere.
    #[error("{source} (node {node}, building {platforms}); {}; nothing was tagged", retry_text(.retry))]
    NodeLost {
        /// The node.
        node: String,
        /// The platforms it was building.
        platforms: String,
        /// How the connection was lost.
        source: Box<kbuild_driver::Error>,
        /// Why no other node took them (`None`: this was their retry).
        retry: Option<Box<ScheduleError>>,
    },
    /// A docker archive of a build split over several nodes (it holds one
    /// platform).
    #[error("-o type={kind} holds one platform, but the build has several (builder {builder}: {split}); build one --platform, or use -o type=oci")]
    SplitOutput {
        /// The output's type.
        kind: &'static str,
        /// The builder.
        builder: String,
        /// Which node would build which platforms.
        split: String,
    },
    /// A node said its build succeeded without the manifest of a platform.
    #[error("node {node} of builder {builder} returned no manifest for {platform}")]
    MissingManifest {
        /// The builder.
        builder: String,
        /// The node.
        node: String,
        /// The platform.
        platform: String,
    },
    /// A registry cache export of a build split over several nodes: each
    /// node would replace the others' records under the one reference.
    #[error("--cache-to {cache} is not exported from a build split over several nodes (builder {builder}): each node would replace the others' records; use --cache-to type=inline, or build a --platform subset that one node builds")]
    SplitCacheExport {
        /// The flag's value.
        cache: String,
        /// The builder.
        builder: String,
    },
    /// A file output could not be assembled from the nodes' parts.
    #[error(transparent)]
    Output(Box<crate::split_outputs::SplitOutputError>),
    /// The merged index could not be made.
    #[error("merge the index of the nodes' images: {0}")]
    Index(kbuild_image::Error),
    /// The merged index could not be pushed (no tag was written).
    #[error("push the merged index to {targets}: {source}")]
    Push {
        /// The names pushed to.
        targets: String,
        /// Why (boxed: it is large).
        source: Box<kbuild_registry::Error>,
    },
}

fn retry_text(retry: &Option<Box<ScheduleError>>) -> String {
    match retry {
        Some(e) => format!("no other node can build them: {e}"),
        None => "they were already being retried there".to_string(),
    }
}

/// A node as asked.
pub struct NodeStatus {
    /// Its definition.
    pub node: config::Node,
    /// What it said, or why it did not.
    pub result: Result<Candidate, kbuild_driver::Error>,
}

/// The assignment of a build's platforms over a builder's nodes.
pub struct Report {
    /// The builder.
    pub builder: String,
    /// Its nodes in order.
    pub nodes: Vec<NodeStatus>,
    /// One per target platform, in request order; `node` indexes the
    /// reachable nodes ([`Report::reachable`]).
    pub assignments: Vec<Assignment>,
    /// What each target executes per build platform (to schedule again).
    exec: Exec,
}

/// Asks every node of `builder` and assigns `req`'s platforms.
pub fn assign(req: &BuildRequest, name: &str, builder: &Builder) -> Result<Report, FanoutError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FanoutError::Runtime)?;
    rt.block_on(assign_nodes(
        req,
        name,
        &builder.nodes,
        &kbuild_driver::Direct,
    ))
}

/// Asks every node through `dialer` at once (each within
/// [`INFO_TIMEOUT`]), lowers the op graph once per build platform among
/// the nodes that answered, and assigns `req`'s platforms.
pub async fn assign_nodes(
    req: &BuildRequest,
    name: &str,
    nodes: &[config::Node],
    dialer: &dyn Dialer,
) -> Result<Report, FanoutError> {
    let asked = futures_util::future::join_all(nodes.iter().map(|node| async move {
        let result = dialer
            .dial(name, node, INFO_TIMEOUT)
            .await
            .map(|(_, info)| Candidate {
                name: node.name.clone(),
                endpoint: node.endpoint.clone(),
                assigned: node
                    .platforms
                    .iter()
                    .filter_map(|p| Platform::parse(p).ok())
                    .collect(),
                info,
            });
        NodeStatus {
            node: node.clone(),
            result,
        }
    }))
    .await;
    let nodes = asked;
    let candidates: Vec<Candidate> = nodes
        .iter()
        .filter_map(|n| n.result.as_ref().ok().cloned())
        .collect();
    if candidates.is_empty() {
        return Err(FanoutError::NoReachableNode {
            builder: name.to_string(),
            unreachable: nodes.into_iter().filter_map(|n| n.result.err()).collect(),
        });
    }
    // The op graph per build platform: `FROM --platform=$BUILDPLATFORM`
    // stages run on each node's own platform.
    let mut exec: Exec = BTreeMap::new();
    let build_platforms: BTreeSet<Platform> = candidates
        .iter()
        .filter_map(|c| c.build_platform().cloned())
        .collect();
    for b in build_platforms {
        let mut opts = req.plan_options();
        opts.build_platform = b.clone();
        let in_file = |e: kbuild_dockerfile::plan::Error| {
            FanoutError::Plan(RequestError::Plan(e.in_file(&req.dockerfile_name)))
        };
        let plan = kbuild_dockerfile::plan::plan(
            &req.dockerfile,
            &opts,
            &kbuild_dockerfile::plan::NoImageConfigs,
        )
        .map_err(in_file)?;
        let graph = kbuild_dockerfile::graph::lower(&plan).map_err(in_file)?;
        for (t, platforms) in req.platforms.iter().zip(graph.exec_platforms()) {
            let set = platforms
                .iter()
                .filter_map(|p| Platform::parse(p).ok())
                .collect();
            exec.insert((b.clone(), t.clone()), set);
        }
    }
    let scheduled = schedule_with(name, &candidates, &req.platforms, &exec);
    let assignments = match scheduled {
        Ok(a) => a,
        Err(source) => {
            return Err(FanoutError::Schedule {
                source,
                unreachable: nodes.into_iter().filter_map(|n| n.result.err()).collect(),
            })
        }
    };
    Ok(Report {
        builder: name.to_string(),
        nodes,
        assignments,
        exec,
    })
}

/// Which platforms a target's exec ops run on, per (build platform, target).
type Exec = BTreeMap<(Platform, Platform), BTreeSet<Platform>>;

/// [`kbuild_driver::schedule`] with the exec platforms of the op graph.
fn schedule_with(
    name: &str,
    candidates: &[Candidate],
    targets: &[Platform],
    exec: &Exec,
) -> Result<Vec<Assignment>, ScheduleError> {
    // The graph has one target per requested platform; should one be
    // missing, assume it runs on its own platform (never wrongly "cross").
    kbuild_driver::schedule(name, candidates, targets, |b, t| {
        exec.get(&(b.clone(), t.clone()))
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([t.clone()]))
    })
}

impl Report {
    /// The reachable nodes, which [`Assignment::node`] indexes.
    pub fn reachable(&self) -> Vec<&Candidate> {
        self.nodes
            .iter()
            .filter_map(|n| n.result.as_ref().ok())
            .collect()
    }

    /// The nodes that did not answer, for warnings.
    pub fn unreachable(&self) -> impl Iterator<Item = &kbuild_driver::Error> {
        self.nodes.iter().filter_map(|n| n.result.as_ref().err())
    }

    pub(crate) fn reason_text(a: &Assignment) -> String {
        let list = |l: &[Platform]| {
            l.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match a.reason {
            kbuild_driver::Reason::Cross if a.exec_platforms.is_empty() => {
                "cross (runs nothing)".to_string()
            }
            kbuild_driver::Reason::Cross => {
                format!("cross (runs on {})", list(&a.exec_platforms))
            }
            r => r.to_string(),
        }
    }

    /// The text `--dry-run` prints after the plan.
    pub fn to_text(&self) -> String {
        let mut out = format!("\nbuilder {}:\n", self.builder);
        for n in &self.nodes {
            match &n.result {
                Ok(c) => {
                    let emulated: Vec<String> =
                        c.info.emulated.iter().map(|(p, _)| p.to_string()).collect();
                    out.push_str(&format!(
                        "  {} {}: native {}; emulated {}; {} builds, {:.1}/{} cores free\n",
                        n.node.name,
                        n.node.endpoint,
                        c.native_platforms().join(", "),
                        if emulated.is_empty() {
                            "none".to_string()
                        } else {
                            emulated.join(", ")
                        },
                        c.info.running_builds,
                        c.info.free_cores,
                        c.info.cpus
                    ));
                }
                Err(e) => out.push_str(&format!(
                    "  {} {}: left out: {e}\n",
                    n.node.name, n.node.endpoint
                )),
            }
        }
        let nodes = self.reachable();
        let rows: Vec<[String; 4]> = self
            .assignments
            .iter()
            .map(|a| {
                let node = nodes[a.node];
                [
                    a.platform.to_string(),
                    node.name.clone(),
                    node.endpoint.clone(),
                    Self::reason_text(a),
                ]
            })
            .collect();
        let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        out.push_str("platforms:\n");
        for r in rows {
            out.push_str(&format!(
                "  {:<w0$}  {:<w1$}  {:<w2$}  {}\n",
                r[0], r[1], r[2], r[3]
            ));
        }
        out
    }

    /// The `schedule` object of `--dry-run=json`.
    pub fn to_json(&self) -> serde_json::Value {
        let strings = |l: &[Platform]| l.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| match &n.result {
                Ok(c) => serde_json::json!({
                    "name": n.node.name,
                    "endpoint": n.node.endpoint,
                    "status": "running",
                    "build_platform": c.build_platform().map(|p| p.to_string()),
                    "native_platforms": c.native_platforms(),
                    "emulated_platforms": c.info.emulated.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(),
                    "load": {"running_builds": c.info.running_builds, "cpus": c.info.cpus, "free_cores": c.info.free_cores},
                }),
                Err(e) => serde_json::json!({
                    "name": n.node.name,
                    "endpoint": n.node.endpoint,
                    "status": "unreachable",
                    "error": e.to_string(),
                }),
            })
            .collect();
        let reachable = self.reachable();
        let assignments: Vec<serde_json::Value> = self
            .assignments
            .iter()
            .map(|a| {
                let node = reachable[a.node];
                serde_json::json!({
                    "platform": a.platform.to_string(),
                    "node": node.name,
                    "endpoint": node.endpoint,
                    "reason": a.reason,
                    "build_platform": a.build_platform.as_ref().map(|p| p.to_string()),
                    "exec_platforms": strings(&a.exec_platforms),
                })
            })
            .collect();
        serde_json::json!({
            "builder": self.builder,
            "nodes": nodes,
            "assignments": assignments,
        })
    }
}

/// Whether a session ended because its node went away (connection broken,
/// daemon killed, not reachable any more), as opposed to the build failing.
fn is_lost(e: &kbuild_driver::Error) -> bool {
    matches!(
        e,
        kbuild_driver::Error::Lost { .. }
            | kbuild_driver::Error::ShuttingDown { .. }
            | kbuild_driver::Error::Unreachable { .. }
            | kbuild_driver::Error::Timeout { .. }
            | kbuild_driver::Error::Refused { .. }
    )
}

fn list(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn fail(e: FanoutError) -> BuildError {
    BuildError::Fanout(Box::new(e))
}

/// Runs `req` on builder `name`, whose `nodes` are reached through
/// `dialer` (the remote driver dials addresses; the kubernetes driver its
/// builder pods). One node, or every platform scheduled on one node: one
/// session with the whole build. Otherwise one session per node with its
/// platforms, concurrently, and the index merged here.
pub fn build(
    req: BuildRequest,
    a: &BuildArgs,
    g: &GlobalArgs,
    name: &str,
    nodes: Vec<config::Node>,
    dialer: Arc<dyn Dialer>,
    credentials: Option<kbuild_registry::Credentials>,
) -> Result<(), BuildError> {
    let Some(first) = nodes.first().cloned() else {
        return Err(BuildError::NoNodes {
            builder: name.to_string(),
        });
    };
    let setup = Setup::new(&req, a, g, name, credentials)?;
    if nodes.len() == 1 {
        return remote::single(req, a, setup, name, &first, &*dialer, None);
    }
    let report = setup
        .rt
        .block_on(assign_nodes(&req, name, &nodes, &*dialer))
        .map_err(fail)?;
    for e in report.unreachable() {
        eprintln!("WARNING: {e}; its platforms go to the other nodes");
    }
    let candidates: Vec<Candidate> = report.reachable().into_iter().cloned().collect();
    let defs: Vec<config::Node> = report
        .nodes
        .iter()
        .filter(|n| n.result.is_ok())
        .map(|n| n.node.clone())
        .collect();
    for asg in &report.assignments {
        setup.client.note(format!(
            "{} → node {} ({})",
            asg.platform,
            candidates[asg.node].name,
            Report::reason_text(asg)
        ));
    }
    let used: BTreeSet<usize> = report.assignments.iter().map(|a| a.node).collect();
    if let [only] = used.into_iter().collect::<Vec<_>>().as_slice() {
        let build_platform = candidates[*only].build_platform().cloned();
        return remote::single(
            req,
            a,
            setup,
            name,
            &defs[*only],
            &*dialer,
            build_platform.as_ref(),
        );
    }
    if let Some(o) = req.outputs.iter().find(|o| {
        // A docker archive holds one platform; the other file outputs are
        // assembled here from the nodes' parts.
        o.kind == OutputKind::Docker
    }) {
        let mut by_node: BTreeMap<usize, Vec<Platform>> = BTreeMap::new();
        for asg in &report.assignments {
            by_node
                .entry(asg.node)
                .or_default()
                .push(asg.platform.clone());
        }
        let split = by_node
            .iter()
            .map(|(n, p)| format!("{} on node {}", list(p), candidates[*n].name))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(fail(FanoutError::SplitOutput {
            kind: o.kind.name(),
            builder: name.to_string(),
            split,
        }));
    }
    if let Some(c) = req.cache_to.iter().find(|c| {
        matches!(
            c.destination,
            kbuild_solver::remote_cache::CacheDestination::Registry { .. }
        )
    }) {
        return Err(fail(FanoutError::SplitCacheExport {
            cache: c.to_string(),
            builder: name.to_string(),
        }));
    }
    split(req, a, setup, name, report, candidates, defs, dialer)
}

/// This side of one node's session: progress with the node's name and
/// vertex numbers unique over the whole build; questions answered by the
/// shared client.
struct NodeLocal {
    client: Arc<remote::Client>,
    node: String,
    /// This session's part, and where its file outputs go.
    part: usize,
    outputs: Option<Arc<SplitOutputs>>,
    ids: Mutex<HashMap<u64, u64>>,
    next: Arc<AtomicU64>,
}

impl Local for NodeLocal {
    fn progress(&self, mut p: v1::ProgressEvent) {
        use v1::progress_event::Event as E;
        if p.vertex != 0 {
            let Ok(mut ids) = self.ids.lock() else {
                return;
            };
            p.vertex = *ids
                .entry(p.vertex)
                .or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed));
        }
        if !p.name.is_empty() {
            p.name = format!("[node {}] {}", self.node, p.name);
        }
        if let Some(E::Note(n)) = &mut p.event {
            *n = format!("node {}: {n}", self.node);
        }
        self.client.progress(p);
    }
    fn credentials(
        &self,
        host: &str,
    ) -> Result<Option<kbuild_registry::RegistryLogin>, LocalError> {
        self.client.credentials(host)
    }
    fn registry_token(
        &self,
        host: &str,
        request: &kbuild_registry::TokenRequest,
    ) -> Result<Option<kbuild_registry::RegistryToken>, LocalError> {
        self.client.registry_token(host, request)
    }
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, LocalError> {
        self.client.secret(id)
    }
    fn ssh_agent(&self, id: &str) -> Option<std::path::PathBuf> {
        self.client.ssh_agent(id)
    }
    fn result(&self, output: u32, data: Vec<u8>, last: bool) -> Result<(), LocalError> {
        match &self.outputs {
            Some(o) => Ok(o.chunk(self.part, output, data, last)?),
            None => Err(Box::new(remote::AnswerError::NotAskedOfNode {
                node: self.node.clone(),
                output,
            })),
        }
    }
}

/// One node's share: its platforms, in request order.
struct Part {
    /// Index into the reachable nodes.
    node: usize,
    platforms: Vec<Platform>,
    /// A second attempt after the first node was lost.
    retry: bool,
}

type Joined = (usize, Result<v1::BuildDone, kbuild_driver::Error>);

/// Adds `platform` to node `node`'s part in `parts` (a new part if it
/// has none yet).
fn add_platform(parts: &mut Vec<Part>, node: usize, platform: &Platform, retry: bool) {
    match parts.iter_mut().find(|p| p.node == node) {
        Some(p) => p.platforms.push(platform.clone()),
        None => parts.push(Part {
            node,
            platforms: vec![platform.clone()],
            retry,
        }),
    }
}

/// What the sessions of a split build share.
struct SplitBuild<'a> {
    name: &'a str,
    candidates: &'a [Candidate],
    report: &'a Report,
    client: &'a Arc<remote::Client>,
    /// The build's start message, before a node's platforms and graph.
    template: v1::BuildStart,
    planner: &'a crate::planner::Planner,
    /// The nodes as defined (`candidates` in the same order).
    defs: &'a [config::Node],
    files: Option<Arc<SplitOutputs>>,
    next_id: Arc<AtomicU64>,
    contexts: &'a dyn Fn() -> Option<kbuild_driver::session::ContextSource>,
    dialer: Arc<dyn Dialer>,
    /// Set once the build is cancelled.
    cancel: tokio::sync::watch::Receiver<bool>,
    /// Whether the nodes push their images by digest.
    push: bool,
}

impl SplitBuild<'_> {
    /// Starts the session of `part` (number `id`) on its node in `set`.
    fn spawn(&self, set: &mut tokio::task::JoinSet<Joined>, id: usize, part: &Part) {
        let candidate = &self.candidates[part.node];
        let mut start = self.template.clone();
        start.platforms = part.platforms.iter().map(v1::Platform::from).collect();
        start.build_platform = candidate.build_platform().map(v1::Platform::from);
        if let Some(b) = candidate.build_platform() {
            if let Err(e) = self.planner.apply(&mut start, b, &part.platforms) {
                // The node plans the Dockerfile and reports the same error.
                tracing::warn!(error = %e, "no op graph for node {}", candidate.name);
            }
        }
        start.push_by_digest = self.push;
        let node = self.defs[part.node].clone();
        let local: Arc<dyn Local> = Arc::new(NodeLocal {
            client: self.client.clone(),
            node: node.name.clone(),
            part: id,
            outputs: self.files.clone(),
            ids: Mutex::new(HashMap::new()),
            next: self.next_id.clone(),
        });
        let context = (self.contexts)();
        let dialer = self.dialer.clone();
        let builder = self.name.to_string();
        let mut cancelled = self.cancel.clone();
        set.spawn(async move {
            let interrupt = async move {
                if cancelled.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let r = kbuild_driver::session::build(
                &builder, &node, &*dialer, start, context, local, interrupt,
            )
            .await;
            (id, r)
        });
    }

    /// The parts that build once more, over the nodes not `dead`, the
    /// platforms of `part`, whose node `node` was lost (`e`).
    fn retry(
        &self,
        dead: &BTreeSet<usize>,
        part: &Part,
        node: &str,
        e: &kbuild_driver::Error,
    ) -> Result<Vec<Part>, ScheduleError> {
        let alive: Vec<usize> = (0..self.candidates.len())
            .filter(|i| !dead.contains(i))
            .collect();
        let others: Vec<Candidate> = alive.iter().map(|i| self.candidates[*i].clone()).collect();
        let again = schedule_with(self.name, &others, &part.platforms, &self.report.exec)?;
        self.client.note(format!("lost node {node}: {e}"));
        let mut retries: Vec<Part> = Vec::new();
        for asg in &again {
            let to = alive[asg.node];
            self.client.note(format!(
                "{} → node {} ({}, retried after losing node {node})",
                asg.platform,
                self.candidates[to].name,
                Report::reason_text(asg)
            ));
            add_platform(&mut retries, to, &asg.platform, true);
        }
        Ok(retries)
    }
}

/// What the sessions of a split build came to so far.
#[derive(Default)]
struct Sessions {
    /// The nodes lost.
    dead: BTreeSet<usize>,
    /// (part, node, result) of the sessions that built their part.
    finished: Vec<(usize, usize, v1::BuildDone)>,
    /// The first failure: the build stops.
    failure: Option<FanoutError>,
}

impl Sessions {
    /// Takes in the end of session `id` (of `part`): finished, failed, or
    /// lost; the platforms of a lost node build once more on the others,
    /// in the parts returned.
    fn joined(
        &mut self,
        split: &SplitBuild<'_>,
        part: &Part,
        id: usize,
        outcome: Result<v1::BuildDone, kbuild_driver::Error>,
    ) -> Vec<Part> {
        let node = split.candidates[part.node].name.clone();
        let platforms = list(&part.platforms);
        match outcome {
            Ok(done) if done.error.is_empty() => self.finished.push((id, part.node, done)),
            Ok(done) => {
                let error = if done.entitlement.is_empty() {
                    done.error
                } else {
                    format!(
                        "{}; pass --allow {} to grant it",
                        done.error, done.entitlement
                    )
                };
                self.failure = Some(FanoutError::NodeFailed {
                    builder: split.name.to_string(),
                    node,
                    platforms,
                    error,
                });
            }
            Err(e) if is_lost(&e) => {
                self.dead.insert(part.node);
                let retry = if part.retry {
                    None
                } else {
                    match split.retry(&self.dead, part, &node, &e) {
                        Ok(retries) => return retries,
                        Err(source) => Some(Box::new(source)),
                    }
                };
                self.failure = Some(FanoutError::NodeLost {
                    node,
                    platforms,
                    source: Box::new(e),
                    retry,
                });
            }
            Err(e) => {
                self.failure = Some(FanoutError::NodeError {
                    node,
                    platforms,
                    source: Box::new(e),
                });
            }
        }
        Vec::new()
    }
}

/// The sessions of a build split over several nodes, the merged index and
/// its push.
#[allow(clippy::too_many_arguments)]
fn split(
    req: BuildRequest,
    a: &BuildArgs,
    mut setup: Setup,
    name: &str,
    report: Report,
    candidates: Vec<Candidate>,
    defs: Vec<config::Node>,
    dialer: Arc<dyn Dialer>,
) -> Result<(), BuildError> {
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let mut parts: Vec<Part> = Vec::new();
    for asg in &report.assignments {
        add_platform(&mut parts, asg.node, &asg.platform, false);
    }
    let files = match SplitOutputs::new(&req.outputs, setup.start.source_date_epoch) {
        Ok(f) => f.map(Arc::new),
        Err(e) => {
            setup.finish(&req);
            return Err(fail(FanoutError::Output(Box::new(e))));
        }
    };
    let contexts = setup.contexts(&req);
    let client = setup.client.clone();
    let planner = setup.planner.clone();
    plan_graphs(&setup, &candidates, &parts)?;
    let split = SplitBuild {
        name,
        candidates: &candidates,
        report: &report,
        client: &client,
        template: setup.start.clone(),
        planner: &planner,
        defs: &defs,
        files: files.clone(),
        next_id: Arc::new(AtomicU64::new(1)),
        contexts: &contexts,
        dialer,
        cancel: cancel_rx,
        push: req.outputs.iter().any(|o| o.push),
    };
    let outcome = setup.rt.block_on(run_sessions(
        &split,
        &mut parts,
        &mut setup.signals,
        &cancel_tx,
    ));
    let (finished_parts, finished): (Vec<usize>, Vec<(usize, v1::BuildDone)>) = match outcome {
        Ok(f) => f.into_iter().map(|(id, n, d)| (id, (n, d))).unzip(),
        Err(e) => {
            setup.finish(&req);
            return Err(e);
        }
    };
    let targets = push_targets(&req);
    let (bytes, media_type, by_node) =
        match merge_and_push(&req, &setup, name, &candidates, &finished, &targets) {
            Ok(m) => m,
            Err(e) => {
                setup.finish(&req);
                return Err(e);
            }
        };
    // File outputs last, from every node's part and the merged index.
    let done = done_parts(&finished_parts, &parts, &candidates);
    let written = match write_files(files.as_deref(), &done, &bytes, &media_type, &client) {
        Ok(w) => w,
        Err(e) => {
            setup.finish(&req);
            return Err(fail(FanoutError::Output(Box::new(e))));
        }
    };
    let digest = kbuild_image::Digest::of(&bytes).to_string();
    let (mode, client, started) = setup.finish(&req);
    let index = serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
    write_results(&req, a, &planner, &finished, &digest, index)?;
    if mode == ProgressMode::Quiet {
        // Nothing but the archive when standard output is one.
        if !crate::build::stdout_is_output(&req) {
            println!("{digest}");
        }
        return Ok(());
    }
    let summary = Summary {
        name,
        candidates: &candidates,
        req: &req,
        digest: &digest,
        by_node: &by_node,
        finished: &finished,
        targets: &targets,
        written: &written,
    };
    print_summary(&summary, started, &client);
    Ok(())
}

/// Shows the nodes' warnings and writes `--iidfile` and
/// `--metadata-file` for the merged index (`digest`, descriptor `index`).
fn write_results(
    req: &BuildRequest,
    a: &BuildArgs,
    planner: &crate::planner::Planner,
    finished: &[(usize, v1::BuildDone)],
    digest: &str,
    index: serde_json::Value,
) -> Result<(), BuildError> {
    let from_daemons: Vec<String> = finished
        .iter()
        .flat_map(|(_, done)| done.warnings.iter().cloned())
        .collect();
    remote::print_warnings(planner, &from_daemons);
    crate::build::write_result_files(
        req,
        a.iidfile.as_deref(),
        a.metadata_file.as_deref(),
        digest,
        index,
        None,
    )?;
    Ok(())
}

/// Writes the file outputs from the `done` parts and the merged index
/// (`bytes`, `media_type`), their notes kept for the end; the files written.
fn write_files(
    files: Option<&SplitOutputs>,
    done: &[(usize, String, Vec<Platform>)],
    bytes: &[u8],
    media_type: &str,
    client: &remote::Client,
) -> Result<Vec<std::path::PathBuf>, crate::split_outputs::SplitOutputError> {
    let Some(files) = files else {
        return Ok(Vec::new());
    };
    let root = crate::split_outputs::Root::Merged {
        index: bytes,
        media_type,
    };
    let (notes, written) = files.finish(done, &root)?;
    if let Ok(mut n) = client.notes.lock() {
        n.extend(notes);
    }
    Ok(written)
}

/// (part, node name, platforms) of each finished part.
fn done_parts(
    finished_parts: &[usize],
    parts: &[Part],
    candidates: &[Candidate],
) -> Vec<(usize, String, Vec<Platform>)> {
    finished_parts
        .iter()
        .map(|id| {
            let p = &parts[*id];
            (*id, candidates[p.node].name.clone(), p.platforms.clone())
        })
        .collect()
}

/// Plans each part's graph here for its node's build platform (base-image
/// configs resolved once per build platform, for every node a lost node's
/// platforms may go to).
fn plan_graphs(setup: &Setup, candidates: &[Candidate], parts: &[Part]) -> Result<(), BuildError> {
    let build_platforms: Vec<Platform> = candidates
        .iter()
        .filter_map(|c| c.build_platform().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    setup.rt.block_on(setup.planner.resolve(&build_platforms));
    for part in parts {
        if let Some(b) = candidates[part.node].build_platform() {
            setup.planner.graph(b, &part.platforms)?;
        }
    }
    Ok(())
}

/// Runs every part's session until all have ended: a lost node's
/// platforms go once more to the nodes left (new parts), the first failure
/// or a signal cancels the others. Returns (part, node, result) of each.
async fn run_sessions(
    split: &SplitBuild<'_>,
    parts: &mut Vec<Part>,
    signals: &mut crate::signals::StopSignals,
    cancel_tx: &tokio::sync::watch::Sender<bool>,
) -> Result<Vec<(usize, usize, v1::BuildDone)>, BuildError> {
    let mut set = tokio::task::JoinSet::new();
    for (id, part) in parts.iter().enumerate() {
        split.spawn(&mut set, id, part);
    }
    let mut sessions = Sessions::default();
    let mut interrupted = false;
    loop {
        let joined = tokio::select! {
            j = set.join_next() => match j {
                Some(j) => j,
                None => break,
            },
            signal = signals.recv(), if !interrupted => {
                tracing::debug!(%signal, "cancelling the build on every node");
                interrupted = true;
                cancel_tx.send_replace(true);
                continue;
            }
        };
        let (id, outcome) = match joined {
            Ok(j) => j,
            Err(e) => {
                sessions
                    .failure
                    .get_or_insert(FanoutError::Runtime(std::io::Error::other(e)));
                cancel_tx.send_replace(true);
                continue;
            }
        };
        if sessions.failure.is_some() || interrupted {
            // Draining: the other sessions end cancelled.
            continue;
        }
        let retries = sessions.joined(split, &parts[id], id, outcome);
        if sessions.failure.is_some() {
            cancel_tx.send_replace(true);
        }
        for r in retries {
            parts.push(r);
            let id = parts.len() - 1;
            split.spawn(&mut set, id, &parts[id]);
        }
    }
    if interrupted {
        return Err(BuildError::Cancelled);
    }
    match sessions.failure {
        Some(f) => Err(fail(f)),
        None => Ok(sessions.finished),
    }
}

/// The names the build pushes.
fn push_targets(req: &BuildRequest) -> Vec<String> {
    req.outputs
        .iter()
        .filter(|o| o.push)
        .flat_map(|o| o.names.clone())
        .collect()
}

/// The merged index of the `finished` parts, pushed as `targets` (if
/// any): its bytes, media type and the platforms each node built.
#[allow(clippy::type_complexity)]
fn merge_and_push(
    req: &BuildRequest,
    setup: &Setup,
    name: &str,
    candidates: &[Candidate],
    finished: &[(usize, v1::BuildDone)],
    targets: &[String],
) -> Result<(Vec<u8>, String, BTreeMap<usize, Vec<String>>), BuildError> {
    let merged = merge(req, name, candidates, finished);
    // Tags last: only now, once every node has pushed its part.
    match merged {
        Ok((bytes, media_type, by_node)) if !targets.is_empty() => setup
            .rt
            .block_on(push_index(&setup.registry, targets, &bytes, &media_type))
            .map(|()| (bytes, media_type, by_node)),
        Ok(m) => Ok(m),
        Err(e) => Err(fail(e)),
    }
}

/// What the end of a split build reports.
struct Summary<'a> {
    name: &'a str,
    candidates: &'a [Candidate],
    req: &'a BuildRequest,
    digest: &'a str,
    /// The platforms each node built.
    by_node: &'a BTreeMap<usize, Vec<String>>,
    /// (node, result) of each part.
    finished: &'a [(usize, v1::BuildDone)],
    /// The names pushed.
    targets: &'a [String],
    /// The files written.
    written: &'a [std::path::PathBuf],
}

/// Prints what a split build did: where each platform was built, what was
/// sent, exported, stored, loaded, pushed and written, and the client's
/// notes.
fn print_summary(s: &Summary<'_>, started: std::time::Instant, client: &remote::Client) {
    let Summary {
        name,
        candidates,
        req,
        digest,
        by_node,
        finished,
        targets,
        written,
    } = *s;
    let split = by_node
        .iter()
        .map(|(n, p)| format!("{} on node {}", p.join(", "), candidates[*n].name))
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!(
        "=> built {} on builder {name} in {:.1}s ({split}): {digest}",
        list(&req.platforms),
        started.elapsed().as_secs_f64(),
    );
    for (n, done) in finished {
        eprintln!(
            "=> context: sent {} files ({} bytes) to node {}",
            done.files_received, done.bytes_received, candidates[*n].name
        );
        for c in &done.cache_exports {
            eprintln!("=> exported cache {c} (node {})", candidates[*n].name);
        }
        for s in &done.stored {
            eprintln!(
                "=> stored {s} ({}) in the store of node {}",
                done.manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .filter_map(|p| Platform::try_from(p).ok())
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                candidates[*n].name
            );
        }
        for l in &done.loaded {
            eprintln!("=> {l} (node {})", candidates[*n].name);
        }
    }
    for n in targets {
        eprintln!("=> pushed {n}@{digest}");
    }
    for w in written {
        eprintln!("=> wrote {}", w.display());
    }
    if let Ok(notes) = client.notes.lock() {
        for n in notes.iter() {
            eprintln!("=> {n}");
        }
    }
}

/// The index of the nodes' images: one manifest per platform, in request
/// order, as a one-node build writes it. Returns its bytes, its media type
/// and which platforms each node built.
#[allow(clippy::type_complexity)]
fn merge(
    req: &BuildRequest,
    name: &str,
    candidates: &[Candidate],
    finished: &[(usize, v1::BuildDone)],
) -> Result<(Vec<u8>, String, BTreeMap<usize, Vec<String>>), FanoutError> {
    let mut index = kbuild_image::Index::new();
    let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for p in &req.platforms {
        let found = finished.iter().find_map(|(node, done)| {
            done.manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .and_then(|mp| Platform::try_from(mp).ok())
                        .is_some_and(|mp| mp == *p)
                })
                .map(|m| (*node, m))
        });
        let Some((node, m)) = found else {
            return Err(FanoutError::MissingManifest {
                builder: name.to_string(),
                node: finished
                    .iter()
                    .map(|(n, _)| candidates[*n].name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                platform: p.to_string(),
            });
        };
        by_node.entry(node).or_default().push(p.to_string());
        let digest = kbuild_image::Digest::parse(&m.digest).map_err(FanoutError::Index)?;
        let desc =
            kbuild_image::Descriptor::new(m.media_type.clone(), digest, m.size.max(0) as u64);
        index.push_manifest(desc, p);
    }
    let bytes = index.to_bytes().map_err(FanoutError::Index)?;
    Ok((bytes, index.descriptor_media_type().to_string(), by_node))
}

/// Puts the merged index and then the tags through the build's registry
/// client, with the build's credentials (those the nodes were given: a
/// kubernetes builder's cluster secret, else this machine's).
async fn push_index(
    client: &kbuild_registry::Client,
    targets: &[String],
    index: &[u8],
    media_type: &str,
) -> Result<(), BuildError> {
    let push_err = |source| {
        fail(FanoutError::Push {
            targets: targets.join(", "),
            source: Box::new(source),
        })
    };
    let refs = targets
        .iter()
        .map(|t| kbuild_registry::Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(push_err)?;
    client
        .push_index(&refs, index, media_type)
        .await
        .map_err(push_err)?;
    Ok(())
}

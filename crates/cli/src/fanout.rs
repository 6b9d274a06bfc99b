//! Which node of a remote builder builds which platform, as `--dry-run`
//! shows it: every node is asked for its `Info` at once, the Dockerfile's
//! op graph is lowered once per build platform among the nodes, and
//! `kbuild_driver::schedule` decides. Nothing is built.

use crate::request::{BuildRequest, RequestError};
use kbuild_driver::config::{self, Builder, Config};
use kbuild_driver::{Assignment, Candidate, ScheduleError};
use kbuild_platform::Platform;
use std::collections::{BTreeMap, BTreeSet};
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
    /// The builder list could not be read, or names no such builder.
    #[error(transparent)]
    Config(kbuild_driver::Error),
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
}

/// The remote builder a build would use (`--builder`, else the one `use`
/// chose), or `None` for the embedded one (`local`, and `buildkit`, the
/// kubernetes driver's default name, while no cluster is used).
pub fn remote_builder(flag: Option<&str>) -> Result<Option<(String, Builder)>, FanoutError> {
    let local = |name: &str| name == config::LOCAL || name == "buildkit";
    let config = match config::default_path().and_then(|p| Config::load(&p)) {
        Ok(c) => c,
        Err(_) if flag.map_or(true, local) => return Ok(None),
        Err(e) => return Err(FanoutError::Config(e)),
    };
    let name = flag.unwrap_or_else(|| config.current());
    if local(name) {
        return Ok(None);
    }
    match config.builders.get(name) {
        Some(b) => Ok(Some((name.to_string(), b.clone()))),
        None => Err(FanoutError::Config(kbuild_driver::Error::NotFound {
            name: name.to_string(),
        })),
    }
}

/// Asks every node of `builder` and assigns `req`'s platforms.
pub fn assign(req: &BuildRequest, name: &str, builder: &Builder) -> Result<Report, FanoutError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FanoutError::Runtime)?;
    // Every node at once, each within the timeout.
    let nodes: Vec<NodeStatus> = rt
        .block_on(async {
            let tasks: Vec<_> = builder
                .nodes
                .iter()
                .map(|node| {
                    let (name, node) = (name.to_string(), node.clone());
                    tokio::spawn(async move {
                        let result =
                            kbuild_driver::info(&name, &node, INFO_TIMEOUT)
                                .await
                                .map(|info| Candidate {
                                    name: node.name.clone(),
                                    endpoint: node.endpoint.clone(),
                                    assigned: node
                                        .platforms
                                        .iter()
                                        .filter_map(|p| Platform::parse(p).ok())
                                        .collect(),
                                    info,
                                });
                        NodeStatus { node, result }
                    })
                })
                .collect();
            let mut nodes = Vec::new();
            for t in tasks {
                nodes.push(t.await);
            }
            nodes
        })
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| FanoutError::Runtime(std::io::Error::other(e)))?;
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
    let mut exec: BTreeMap<(Platform, Platform), BTreeSet<Platform>> = BTreeMap::new();
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
    // The graph has one target per requested platform; should one be
    // missing, assume it runs on its own platform (never wrongly "cross").
    let scheduled = kbuild_driver::schedule(name, &candidates, &req.platforms, |b, t| {
        exec.get(&(b.clone(), t.clone()))
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([t.clone()]))
    });
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

    fn reason_text(a: &Assignment) -> String {
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

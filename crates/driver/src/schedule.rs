//! Which node of a builder builds which target platform.
//!
//! Pure: the caller queries every node ([`crate::info`]) and says, for a
//! build platform, which platforms each target's exec ops run on (the op
//! graph lowered with that build platform:
//! `kbuild_dockerfile::graph::Graph::exec_platforms`). A node's build
//! platform (`BUILDPLATFORM`) is the first native platform it advertises,
//! so the same Dockerfile can execute differently per node.
//!
//! Each target goes, in this order of preference, to
//! 1. **native**: a node whose native platforms include it (the platforms
//!    the user gave the node with `create --platform`, then those it
//!    advertises) and that runs every other exec platform of the target
//!    natively or by emulation (mixed-cluster mode);
//! 2. **cross**: a node whose native platforms run every exec op of the
//!    target when the target platform itself executes nothing there: the
//!    cross-compilation pattern (`FROM --platform=$BUILDPLATFORM` builder,
//!    COPY-only release stage), or a target that runs nothing at all;
//! 3. **emulated**: a node that runs every exec platform of the target,
//!    some by emulation;
//!
//! and among the nodes of the best class to the one with the lowest load
//! share: `(running builds + targets given to it so far + 1) / free cores`
//! (free cores at least [`MIN_CORES`]), ties to the node listed first. Native
//! targets are placed first, then cross, then emulated ones, each in
//! request order, so the result depends only on the inputs. A target no
//! node can build is a [`ScheduleError`] naming every node's native and
//! emulated platforms.

use crate::NodeInfo;
use kbuild_platform::Platform;
use std::collections::BTreeSet;
use std::fmt;

/// The least free cores a node counts with, so that busy nodes still share
/// work by their running builds.
pub const MIN_CORES: f64 = 0.5;

/// A reachable node of the builder.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The node's name (`NAME0`).
    pub name: String,
    /// Its endpoint, for people.
    pub endpoint: String,
    /// The platforms the user gave it (`create --platform`).
    pub assigned: Vec<Platform>,
    /// What it said about itself.
    pub info: NodeInfo,
}

impl Candidate {
    /// The platform its builds run `FROM --platform=$BUILDPLATFORM` stages
    /// on: the first native platform it advertises (else the first given
    /// to it).
    pub fn build_platform(&self) -> Option<&Platform> {
        self.info.native.first().or(self.assigned.first())
    }

    fn native(&self, p: &Platform) -> bool {
        self.assigned
            .iter()
            .chain(&self.info.native)
            .any(|n| n.matches_strict(p))
    }

    fn emulates(&self, p: &Platform) -> bool {
        self.info.emulated.iter().any(|(e, _)| e.matches_strict(p))
    }

    fn runs(&self, p: &Platform) -> bool {
        self.native(p) || self.emulates(p)
    }

    /// The platforms it runs natively, for messages.
    pub fn native_platforms(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.assigned.iter().chain(&self.info.native) {
            let s = p.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// Why a target went to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The node runs the platform natively.
    Native,
    /// Nothing runs on the target platform; the node runs the build
    /// platform's work natively.
    Cross,
    /// The node runs (some of) the work by emulation.
    Emulated,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Native => "native",
            Reason::Cross => "cross",
            Reason::Emulated => "emulated",
        })
    }
}

/// Where one target platform is built.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// The target platform.
    pub platform: Platform,
    /// The index of its node in the candidates.
    pub node: usize,
    /// Why.
    pub reason: Reason,
    /// The node's build platform.
    pub build_platform: Option<Platform>,
    /// The platforms its exec ops run on there, sorted.
    pub exec_platforms: Vec<Platform>,
}

/// No node can build some target platforms.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The builder has no reachable node.
    #[error("builder {builder} has no reachable node")]
    NoNodes {
        /// The builder.
        builder: String,
    },
    /// Platforms no node runs.
    #[error(
        "no node of builder {builder} can build {}: {}",
        join(platforms),
        nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("; ")
    )]
    NoCapableNode {
        /// The builder.
        builder: String,
        /// The targets no node can take.
        platforms: Vec<String>,
        /// What every node runs.
        nodes: Vec<NodeSummary>,
    },
}

/// A node's platforms, for [`ScheduleError`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSummary {
    /// Its name.
    pub name: String,
    /// What it runs natively.
    pub native: Vec<String>,
    /// What it runs by emulation.
    pub emulated: Vec<String>,
}

impl fmt::Display for NodeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[String]| {
            if l.is_empty() {
                "none".to_string()
            } else {
                l.join(", ")
            }
        };
        write!(
            f,
            "{} runs {} natively and {} by emulation",
            self.name,
            list(&self.native),
            list(&self.emulated)
        )
    }
}

fn join(l: &[String]) -> String {
    l.join(", ")
}

/// Assigns every target to a node (see the module documentation).
/// `exec(build_platform, target)` gives the platforms the target's exec
/// ops run on when built on a node of that build platform; a node with no
/// native platform at all (hence no build platform) gets nothing.
pub fn schedule(
    builder: &str,
    nodes: &[Candidate],
    targets: &[Platform],
    exec: impl Fn(&Platform, &Platform) -> BTreeSet<Platform>,
) -> Result<Vec<Assignment>, ScheduleError> {
    if nodes.is_empty() {
        return Err(ScheduleError::NoNodes {
            builder: builder.to_string(),
        });
    }
    // What each target executes on each node.
    let work: Vec<Vec<BTreeSet<Platform>>> = targets
        .iter()
        .map(|t| {
            nodes
                .iter()
                .map(|n| n.build_platform().map(|b| exec(b, t)).unwrap_or_default())
                .collect()
        })
        .collect();
    let best = best_classes(nodes, targets, &work);
    refuse_missing(builder, nodes, targets, &best)?;
    let chosen = spread(nodes, targets.len(), &best);
    Ok(targets
        .iter()
        .zip(chosen)
        .enumerate()
        .filter_map(|(t, (platform, c))| {
            let (node, reason) = c?;
            Some(Assignment {
                platform: platform.clone(),
                node,
                reason,
                build_platform: nodes[node].build_platform().cloned(),
                exec_platforms: work[t][node].iter().cloned().collect(),
            })
        })
        .collect())
}

/// Each target's best class (native, cross, emulated) and, in node order,
/// the nodes that offer it; `work[t][n]`: what target `t` executes on
/// node `n`.
fn best_classes(
    nodes: &[Candidate],
    targets: &[Platform],
    work: &[Vec<BTreeSet<Platform>>],
) -> Vec<Option<(Reason, Vec<usize>)>> {
    let class = |t: usize, n: usize| -> Option<Reason> {
        let node = &nodes[n];
        // Without a build platform what would run there is unknown.
        node.build_platform()?;
        let e = &work[t][n];
        if node.native(&targets[t]) && e.iter().all(|p| node.runs(p)) {
            Some(Reason::Native)
        } else if e.iter().all(|p| node.native(p)) {
            Some(Reason::Cross)
        } else if e.iter().all(|p| node.runs(p)) {
            Some(Reason::Emulated)
        } else {
            None
        }
    };
    (0..targets.len())
        .map(|t| {
            let classes: Vec<Option<Reason>> = (0..nodes.len()).map(|n| class(t, n)).collect();
            let reason = classes.iter().flatten().min().copied()?;
            let which = (0..nodes.len())
                .filter(|&n| classes[n] == Some(reason))
                .collect();
            Some((reason, which))
        })
        .collect()
}

/// An error naming the targets no node can build, with every node's
/// platforms.
fn refuse_missing(
    builder: &str,
    nodes: &[Candidate],
    targets: &[Platform],
    best: &[Option<(Reason, Vec<usize>)>],
) -> Result<(), ScheduleError> {
    let missing: Vec<String> = targets
        .iter()
        .zip(best)
        .filter(|(_, b)| b.is_none())
        .map(|(t, _)| t.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ScheduleError::NoCapableNode {
        builder: builder.to_string(),
        platforms: missing,
        nodes: nodes
            .iter()
            .map(|n| NodeSummary {
                name: n.name.clone(),
                native: n.native_platforms(),
                emulated: n.info.emulated.iter().map(|(p, _)| p.to_string()).collect(),
            })
            .collect(),
    })
}

/// The node and class chosen for each of `count` targets: class by class
/// (native first), each target to the node of its best class with the
/// smallest share of builds per free core (the first of equal ones).
fn spread(
    nodes: &[Candidate],
    count: usize,
    best: &[Option<(Reason, Vec<usize>)>],
) -> Vec<Option<(usize, Reason)>> {
    let mut given = vec![0u32; nodes.len()];
    let mut chosen: Vec<Option<(usize, Reason)>> = vec![None; count];
    for pass in [Reason::Native, Reason::Cross, Reason::Emulated] {
        for (t, b) in best.iter().enumerate() {
            let Some((reason, which)) = b else { continue };
            if *reason != pass {
                continue;
            }
            let share = |n: usize| {
                let node = &nodes[n].info;
                f64::from(node.running_builds + given[n] + 1) / node.free_cores.max(MIN_CORES)
            };
            // `which` is in node order: the first of equal shares wins.
            let mut pick = which[0];
            for &n in &which[1..] {
                if share(n).total_cmp(&share(pick)).is_lt() {
                    pick = n;
                }
            }
            given[pick] += 1;
            chosen[t] = Some((pick, *reason));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use kbuild_dockerfile::graph::lower;
    use kbuild_dockerfile::plan::{plan, NoImageConfigs, PlanOptions};
    use std::collections::BTreeMap;

    /// A Dockerfile's exec platforms per build platform and target, from
    /// its real op graph lowered once for each build platform of `nodes`.
    fn exec_of(
        dockerfile: &str,
        targets: &[Platform],
        nodes: &[Candidate],
    ) -> impl Fn(&Platform, &Platform) -> BTreeSet<Platform> {
        let mut table: BTreeMap<(String, String), BTreeSet<Platform>> = BTreeMap::new();
        for b in nodes.iter().filter_map(Candidate::build_platform) {
            let opts = PlanOptions {
                platforms: targets.to_vec(),
                build_platform: b.clone(),
                build_args: BTreeMap::new(),
                target: None,
                labels: BTreeMap::new(),
                named_contexts: Default::default(),
            };
            let graph = lower(&plan(dockerfile, &opts, &NoImageConfigs).unwrap()).unwrap();
            for (t, e) in targets.iter().zip(graph.exec_platforms()) {
                let e = e.iter().map(|p| Platform::parse(p).unwrap()).collect();
                table.insert((b.to_string(), t.to_string()), e);
            }
        }
        move |b: &Platform, t: &Platform| table[&(b.to_string(), t.to_string())].clone()
    }

    fn platforms(list: &str) -> Vec<Platform> {
        kbuild_platform::parse_list(list).unwrap()
    }

    fn node(name: &str, native: &str, emulated: &str, free_cores: f64, running: u32) -> Candidate {
        Candidate {
            name: name.to_string(),
            endpoint: format!("tcp://{name}:1234"),
            assigned: Vec::new(),
            info: NodeInfo {
                protocol: 1,
                version: "0".into(),
                hostname: name.into(),
                native: if native.is_empty() {
                    Vec::new()
                } else {
                    platforms(native)
                },
                emulated: if emulated.is_empty() {
                    Vec::new()
                } else {
                    platforms(emulated)
                        .into_iter()
                        .map(|p| (p, "/usr/bin/qemu".to_string()))
                        .collect()
                },
                running_builds: running,
                cpus: 2,
                free_cores,
            },
        }
    }

    const RUNS: &str = "FROM busybox\nRUN uname -m > /m\n";
    const CROSS: &str = "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETARCH\nRUN GOARCH=$TARGETARCH go build -o /out/app .\n\nFROM scratch\nCOPY --from=build /out/app /app\n";
    const SEVEN: &str =
        "linux/amd64,linux/arm64,linux/arm/v7,linux/arm/v6,linux/386,linux/ppc64le,linux/s390x";
    const EMULATED: &str = "linux/arm64,linux/arm/v7,linux/arm/v6,linux/ppc64le,linux/s390x";

    struct Case {
        name: &'static str,
        dockerfile: &'static str,
        targets: &'static str,
        nodes: Vec<Candidate>,
        /// `platform node reason`, one per target in order.
        want: &'static [&'static str],
    }

    fn render(nodes: &[Candidate], a: &[Assignment]) -> Vec<String> {
        a.iter()
            .map(|a| format!("{} {} {}", a.platform, nodes[a.node].name, a.reason))
            .collect()
    }

    /// Schedules every case and checks the answer, and that the same
    /// inputs give the same answer.
    fn check(cases: Vec<Case>) {
        for c in cases {
            let targets = platforms(c.targets);
            let exec = exec_of(c.dockerfile, &targets, &c.nodes);
            let got = schedule("bx", &c.nodes, &targets, &exec)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(render(&c.nodes, &got), c.want, "{}", c.name);
            // The same inputs give the same answer.
            let again = schedule("bx", &c.nodes, &targets, &exec).unwrap();
            assert_eq!(got, again, "{}", c.name);
        }
    }

    #[test]
    fn native_and_emulated_table() {
        check(vec![
            Case {
                name: "mixed cluster: each platform goes to the node that runs it natively",
                dockerfile: RUNS,
                targets: "linux/amd64,linux/386,linux/arm64,linux/arm/v7",
                nodes: vec![
                    node("a", "linux/amd64,linux/386", EMULATED, 2.0, 0),
                    node("b", "linux/arm64,linux/arm/v7", "linux/amd64", 2.0, 0),
                ],
                want: &[
                    "linux/amd64 a native",
                    "linux/386 a native",
                    "linux/arm64 b native",
                    "linux/arm/v7 b native",
                ],
            },
            Case {
                name: "emulation when no node is native, least loaded first",
                dockerfile: RUNS,
                targets: "linux/arm64,linux/s390x,linux/amd64",
                nodes: vec![
                    node("a", "linux/amd64", "linux/arm64,linux/s390x", 2.0, 2),
                    node("b", "linux/amd64", "linux/arm64", 2.0, 0),
                ],
                want: &[
                    "linux/arm64 b emulated",
                    "linux/s390x a emulated",
                    "linux/amd64 b native",
                ],
            },
            Case {
                name: "a native node is preferred over a less loaded emulating one",
                dockerfile: RUNS,
                targets: "linux/arm64",
                nodes: vec![
                    node("a", "linux/amd64", "linux/arm64", 8.0, 0),
                    node("b", "linux/arm64", "", 0.0, 5),
                ],
                want: &["linux/arm64 b native"],
            },
        ]);
    }

    #[test]
    fn cross_table() {
        check(vec![
            Case {
                name: "cross-only over two amd64 nodes: seven platforms spread, natives first",
                dockerfile: CROSS,
                targets: SEVEN,
                nodes: vec![
                    node("a", "linux/amd64,linux/386", EMULATED, 0.0, 0),
                    node("b", "linux/amd64,linux/386", EMULATED, 0.0, 0),
                ],
                want: &[
                    "linux/amd64 a native",
                    "linux/arm64 a cross",
                    "linux/arm/v7 b cross",
                    "linux/arm/v6 a cross",
                    "linux/386 b native",
                    "linux/ppc64le b cross",
                    "linux/s390x a cross",
                ],
            },
            Case {
                name: "cross work is shared by free cores: 3 free cores take 5 of 6",
                dockerfile: CROSS,
                targets:
                    "linux/arm64,linux/arm/v7,linux/arm/v6,linux/ppc64le,linux/s390x,linux/riscv64",
                nodes: vec![
                    node("a", "linux/amd64", "", 3.0, 0),
                    node("b", "linux/amd64", "", 1.0, 0),
                ],
                want: &[
                    "linux/arm64 a cross",
                    "linux/arm/v7 a cross",
                    "linux/arm/v6 a cross",
                    "linux/ppc64le b cross",
                    "linux/s390x a cross",
                    "linux/riscv64 a cross",
                ],
            },
            Case {
                name: "the build platform is each node's: an arm64 node cross-builds arm/v7 too",
                dockerfile: CROSS,
                targets: "linux/arm64,linux/arm/v7,linux/s390x",
                nodes: vec![
                    node("a", "linux/amd64", "", 2.0, 0),
                    node("b", "linux/arm64", "", 4.0, 0),
                ],
                want: &[
                    "linux/arm64 b native",
                    "linux/arm/v7 a cross",
                    "linux/s390x b cross",
                ],
            },
            Case {
                name: "COPY-only targets run nothing: any node, spread",
                dockerfile: "FROM scratch\nCOPY a /a\n",
                targets: "linux/riscv64,windows/amd64,linux/mips64le",
                nodes: vec![
                    node("a", "linux/amd64", "", 1.0, 0),
                    node("b", "linux/amd64", "", 1.0, 0),
                ],
                want: &[
                    "linux/riscv64 a cross",
                    "windows/amd64 b cross",
                    "linux/mips64le a cross",
                ],
            },
        ]);
    }

    #[test]
    fn cross_assignments_say_where_the_work_runs() {
        let nodes = vec![node("a", "linux/amd64", "", 1.0, 0)];
        let targets = platforms("linux/arm64");
        let exec = exec_of(CROSS, &targets, &nodes);
        let got = schedule("bx", &nodes, &targets, exec).unwrap();
        assert_eq!(got[0].reason, Reason::Cross);
        assert_eq!(
            got[0].build_platform,
            Some(platforms("linux/amd64")[0].clone())
        );
        assert_eq!(got[0].exec_platforms, platforms("linux/amd64"));
    }

    #[test]
    fn user_assigned_platforms_count_as_native() {
        let mut b = node("b", "linux/amd64", "linux/arm64", 2.0, 0);
        b.assigned = platforms("linux/arm64");
        let nodes = vec![node("a", "linux/amd64", "linux/arm64", 2.0, 0), b];
        let targets = platforms("linux/arm64");
        let exec = exec_of(RUNS, &targets, &nodes);
        let got = schedule("bx", &nodes, &targets, exec).unwrap();
        assert_eq!(render(&nodes, &got), ["linux/arm64 b native"]);
    }

    #[test]
    fn no_capable_node_lists_every_node() {
        let nodes = vec![
            node("a", "linux/amd64,linux/386", "linux/arm64", 2.0, 0),
            node("b", "linux/arm64", "", 2.0, 0),
        ];
        let targets = platforms("linux/amd64,linux/s390x,linux/ppc64le");
        let exec = exec_of(RUNS, &targets, &nodes);
        let err = schedule("bx", &nodes, &targets, exec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node of builder bx can build linux/s390x, linux/ppc64le: \
             a runs linux/amd64, linux/386 natively and linux/arm64 by emulation; \
             b runs linux/arm64 natively and none by emulation"
        );
        assert!(
            matches!(err, ScheduleError::NoCapableNode { ref platforms, .. } if platforms.len() == 2)
        );
        // A Windows RUN needs a Windows node.
        let win = platforms("windows/amd64");
        let exec = exec_of(RUNS, &win, &nodes);
        assert!(schedule("bx", &nodes, &win, exec).is_err());
        // A node that runs nothing natively has no build platform: it
        // takes nothing, not even COPY-only targets.
        let bare = vec![node("z", "", "linux/arm64", 2.0, 0)];
        let copy = platforms("linux/arm64");
        assert!(schedule("bx", &bare, &copy, |_, _| BTreeSet::new()).is_err());
        let none = schedule("bx", &[], &targets, |_, _| BTreeSet::new()).unwrap_err();
        assert_eq!(none.to_string(), "builder bx has no reachable node");
    }
}

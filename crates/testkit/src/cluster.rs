//! The real two-node Kubernetes cluster of `scripts/cluster.sh`, shared by
//! every test that needs one.
//!
//! [`shared`] runs `scripts/cluster.sh up` once per test process (the script
//! itself holds a file lock, so test processes that run at the same time
//! share one cluster, and `up` on a running cluster only checks it). The
//! cluster stays up after the tests: `scripts/cluster.sh down` stops it.
//!
//! When the cluster cannot start, a developer's run skips (the reason and the
//! end of the script's output on stderr); under `CI=true` it is a failure, as
//! every missing prerequisite is (see [`crate::fixtures::skip_or_fail`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use crate::client::Run;
use crate::error::StartError;

/// The node names `scripts/cluster.sh` registers.
pub const NODES: [&str; 2] = ["kbuild-node1", "kbuild-node2"];

/// The node that carries `kubernetes.io/arch=arm64`.
pub const ARM64_NODE: &str = "kbuild-node2";

/// The namespace the restricted user may work in.
pub const NAMESPACE: &str = "kbuild-test";

/// The restricted user's name (the CN of its client certificate).
pub const USER: &str = "kbuild-test-user";

/// A running test cluster: where its files are.
#[derive(Clone, Debug)]
pub struct Cluster {
    dir: PathBuf,
    registry: String,
}

/// The checkout this testkit was built from (`crates/testkit/../..`).
fn checkout() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// Runs `scripts/cluster.sh up` with `kbuild_bin` as the tool that builds
/// the sandbox image, and reads back what it wrote under `target/cluster`.
pub fn up(kbuild_bin: &Path) -> Result<Cluster, StartError> {
    let root = checkout();
    let script = root.join("scripts/cluster.sh");
    let dir = root.join("target/cluster");
    std::fs::create_dir_all(&dir).map_err(StartError::io(format!("create {}", dir.display())))?;
    let log_path = dir.join("up.log");
    let log = std::fs::File::create(&log_path)
        .map_err(StartError::io(format!("create {}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(StartError::io(format!("open {} twice", log_path.display())))?;
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .arg("up")
        .env("KBUILD_BIN", kbuild_bin)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(StartError::io(format!("run {}", script.display())))?;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(StartError::Failed {
            what: format!(
                "scripts/cluster.sh up (after {:.0?}, output in {})",
                started.elapsed(),
                log_path.display()
            ),
            status,
            log: tail.join("\n"),
        });
    }
    eprintln!(
        "scripts/cluster.sh up: {:.1?} (output in {})",
        started.elapsed(),
        log_path.display()
    );
    let registry_file = dir.join("registry");
    let registry = std::fs::read_to_string(&registry_file)
        .map_err(StartError::io(format!("read {}", registry_file.display())))?
        .trim()
        .to_string();
    let cluster = Cluster { dir, registry };
    for file in [
        cluster.kubectl(),
        cluster.admin_kubeconfig(),
        cluster.user_kubeconfig(),
    ] {
        if !file.is_file() {
            return Err(StartError::Incomplete {
                what: "scripts/cluster.sh up",
                missing: file,
            });
        }
    }
    Ok(cluster)
}

/// The cluster, started by the first caller in this process (see the module
/// documentation); `None` after [`crate::fixtures::skip_or_fail`] when it
/// cannot start (a panic under CI).
pub fn shared(kbuild_bin: &Path) -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, StartError>> = OnceLock::new();
    let started = CLUSTER.get_or_init(|| {
        if !crate::fixtures::is_root() {
            return Err(StartError::NotRoot {
                what: "the test cluster (containerd, kubelets, cgroups)",
            });
        }
        up(kbuild_bin)
    });
    match started {
        Ok(cluster) => Some(cluster),
        Err(reason) => {
            crate::fixtures::skip_or_fail(&reason.to_string());
            None
        }
    }
}

impl Cluster {
    /// `target/cluster` of the checkout.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// kubectl of the cluster's release.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("bin/kubectl")
    }

    /// A kubeconfig of a cluster admin (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A kubeconfig of [`USER`], whose only rights are the Role of
    /// `deploy/rbac/role.yaml` in [`NAMESPACE`] (its default namespace).
    pub fn user_kubeconfig(&self) -> PathBuf {
        self.dir.join("user.kubeconfig")
    }

    /// `HOST:PORT` of the plain-HTTP registry both nodes pull from.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// A kubectl command as `kubeconfig`'s user (the caller adds arguments).
    pub fn kubectl_command(&self, kubeconfig: &Path) -> Command {
        let mut command = Command::new(self.kubectl());
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--request-timeout=60s")
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl as the admin.
    ///
    /// # Panics
    /// When kubectl cannot be started.
    pub fn admin(&self, args: &[&str]) -> Run {
        run(self.kubectl_command(&self.admin_kubeconfig()).args(args))
    }

    /// Runs kubectl as the restricted [`USER`].
    ///
    /// # Panics
    /// When kubectl cannot be started.
    pub fn user(&self, args: &[&str]) -> Run {
        run(self.kubectl_command(&self.user_kubeconfig()).args(args))
    }

    /// Runs kubectl as the admin in [`NAMESPACE`] (`-n NAMESPACE ARGS`).
    ///
    /// # Panics
    /// When kubectl cannot be started.
    pub fn admin_in(&self, args: &[&str]) -> Run {
        run(self
            .kubectl_command(&self.admin_kubeconfig())
            .args(["-n", NAMESPACE])
            .args(args))
    }

    /// The log of `pod` in [`NAMESPACE`], read as the admin through the API
    /// server and the pod's kubelet.
    ///
    /// # Panics
    /// When kubectl fails.
    pub fn logs(&self, pod: &str) -> String {
        self.admin_in(&["logs", pod]).ok().stdout
    }

    /// The containerd socket of node `n` (1 for [`NODES`]`[0]`, 2 for
    /// [`NODES`]`[1]`), which `ctr --address` reaches.
    pub fn containerd_socket(&self, n: u8) -> PathBuf {
        self.dir.join(format!("node{n}/containerd.sock"))
    }
}

/// Objects of one kind in [`NAMESPACE`] that a test made, deleted as the
/// admin (not waited for) however the test ends: a failing assertion leaves
/// nothing running.
pub struct Owned<'a> {
    cluster: &'a Cluster,
    kind: &'static str,
    names: Vec<String>,
}

impl<'a> Owned<'a> {
    /// None yet of `kind` (`deployment`, `pod`, `secret`, ...).
    pub fn new(cluster: &'a Cluster, kind: &'static str) -> Owned<'a> {
        Owned {
            cluster,
            kind,
            names: Vec::new(),
        }
    }

    /// One more object to delete at the end.
    pub fn push(&mut self, name: impl Into<String>) {
        self.names.push(name.into());
    }

    /// The objects' names, in the order they were added.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = vec!["delete", self.kind];
        args.extend(self.names.iter().map(String::as_str));
        args.extend(["--ignore-not-found", "--wait=false"]);
        // Best effort: the test's own outcome is what it reports.
        let _ = self.cluster.admin_in(&args);
    }
}

fn run(command: &mut Command) -> Run {
    command
        .output()
        .map(Run::from)
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()))
}

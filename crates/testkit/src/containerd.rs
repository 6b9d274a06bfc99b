//! A private containerd (Debian's `containerd` package) for tests that load
//! images into it and run them with `ctr`.
//!
//! Each [`Containerd`] has its own root, state, gRPC and ttrpc sockets and
//! config in a fresh directory under `/tmp` (unix socket paths are limited
//! to 107 bytes), with the overlayfs snapshotter and the runc v2 runtime as
//! `scripts/cluster.sh` configures its nodes; the CRI plugin is disabled (no
//! CNI here). Dropping it kills the tasks of its namespaces, stops the
//! daemon, kills shims left behind, removes their sockets and unmounts
//! whatever is still mounted under its directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{CommandError, StartError};

/// The daemon program (package containerd).
pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
/// Its client (same package).
pub const CTR_BIN: &str = "/usr/bin/ctr";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running private containerd, stopped and cleaned up on drop.
pub struct Containerd {
    child: Child,
    dir: TempDir,
}

impl Containerd {
    /// Starts a daemon and waits until `ctr version` answers. The error
    /// says why it could not (not installed, not root, the end of its log).
    pub fn start() -> Result<Containerd, StartError> {
        for bin in [CONTAINERD_BIN, CTR_BIN] {
            if !Path::new(bin).is_file() {
                return Err(StartError::NotInstalled {
                    program: bin.into(),
                    package: "containerd",
                });
            }
        }
        if !crate::fixtures::is_root() {
            return Err(StartError::NotRoot { what: "containerd" });
        }
        let dir = tempfile::Builder::new()
            .prefix("kbc")
            .tempdir_in("/tmp")
            .map_err(StartError::io(
                "create a directory for containerd under /tmp",
            ))?;
        let d = dir.path().display().to_string();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, config)
            .map_err(StartError::io(format!("write {}", config_path.display())))?;
        let log = fs::File::create(dir.path().join("log"))
            .map_err(StartError::io("create containerd's log"))?;
        let log_err = log
            .try_clone()
            .map_err(StartError::io("open containerd's log twice"))?;
        let started = Instant::now();
        let child = Command::new(CONTAINERD_BIN)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(StartError::io(format!("start {CONTAINERD_BIN}")))?;
        let mut daemon = Containerd { child, dir };
        loop {
            if daemon.ctr("default", ["version"]).status.success() {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(StartError::Exited {
                    what: "containerd".into(),
                    status,
                    log: daemon.log(),
                });
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::NoAnswer {
                    what: "containerd".into(),
                    waited: START_TIMEOUT,
                    log: daemon.log(),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs `ctr` against this daemon in `namespace`.
    pub fn ctr<I, S>(&self, namespace: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(CTR_BIN)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {CTR_BIN}: {e}"))
    }

    /// Like [`Containerd::ctr`]; a failure is an error with ctr's stderr,
    /// success gives its stdout.
    pub fn ctr_ok<I, S>(&self, namespace: &str, args: I) -> Result<String, CommandError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.ctr(namespace, &args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CommandError::failed(
                &format!("ctr -n {namespace}"),
                &args,
                &out,
            ))
        }
    }

    fn stop(&mut self) -> Vec<PathBuf> {
        let mut shim_sockets = Vec::new();
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return shim_sockets;
        }
        let namespaces = self.ctr("default", ["namespaces", "ls", "-q"]);
        for ns in String::from_utf8_lossy(&namespaces.stdout).split_whitespace() {
            let tasks = self.ctr(ns, ["tasks", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = self.ctr(ns, ["tasks", "kill", "-s", "KILL", id]);
                let _ = self.ctr(ns, ["tasks", "delete", "-f", id]);
                shim_sockets.extend(shim_socket(&self.socket(), ns, id));
            }
            let containers = self.ctr(ns, ["containers", "ls", "-q"]);
            for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
                let _ = self.ctr(ns, ["containers", "delete", id]);
                shim_sockets.extend(shim_socket(&self.socket(), ns, id));
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return shim_sockets;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        shim_sockets
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shim_sockets = self.stop();
        // Shims name the daemon's socket on their command line.
        let marker = self.socket().display().to_string();
        crate::dockerd::clear_leftovers(&marker, shim_sockets, self.dir.path());
    }
}

/// containerd 1.6 puts a shim's socket at `/run/containerd/s/<sha256 of
/// "<address>/<namespace>/<id>">`; a killed shim leaves it.
fn shim_socket(address: &Path, namespace: &str, id: &str) -> Option<PathBuf> {
    let key = format!("{}/{namespace}/{id}", address.display());
    let mut hasher = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    hasher.stdin.take()?.write_all(key.as_bytes()).ok()?;
    let out = hasher.wait_with_output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(Path::new("/run/containerd/s").join(text.split_whitespace().next()?))
}

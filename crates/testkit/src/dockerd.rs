//! A private Docker daemon (Debian's `docker.io`) for tests that check what
//! Docker itself makes of our output: `docker load` of a docker-archive,
//! `docker run` of the loaded image, `docker pull` from a test registry.
//!
//! Each [`Dockerd`] shares nothing with a system Docker or with another test:
//! its socket, data root, exec root (where dockerd starts its own containerd),
//! pidfile, `daemon.json`, identity key and CLI config all live in a fresh
//! directory under `/tmp` (short, because unix socket paths are limited to 107
//! bytes). There is no bridge and no iptables rule: run containers with
//! `--network none` or `--network host`. Registries on `127.0.0.0/8` are
//! insecure (plain HTTP), so a `TestRegistry` can be pushed to and pulled from.
//!
//! Dropping it kills running containers, stops dockerd (which stops its
//! containerd), then removes whatever a crash could leave behind: runc
//! containers, containerd shims and their sockets in `/run/containerd/s`,
//! mounts under its directory, the directory.
//!
//! Needs root (dockerd does). Starting takes well under a second here.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{CommandError, StartError};

/// The daemon program (package docker.io).
pub const DOCKERD_BIN: &str = "/usr/sbin/dockerd";

/// How long to wait for the daemon to answer `docker version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long dockerd gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The Docker CLI to drive the daemon with: the docker.io package's own
/// `/usr/bin/docker` (it matches the daemon's API), else `docker` from `PATH`.
pub fn docker_cli() -> PathBuf {
    let packaged = PathBuf::from("/usr/bin/docker");
    if packaged.is_file() {
        packaged
    } else {
        PathBuf::from("docker")
    }
}

/// A running private `dockerd`. Stopped, and everything it left cleaned up, on
/// drop.
pub struct Dockerd {
    child: Child,
    dir: TempDir,
    startup: Duration,
}

impl Dockerd {
    /// Starts a daemon and waits until it answers. The error says why it could
    /// not (not installed, not root, the end of the daemon's log, ...).
    pub fn start() -> Result<Dockerd, StartError> {
        if !Path::new(DOCKERD_BIN).is_file() {
            return Err(StartError::NotInstalled {
                program: DOCKERD_BIN.into(),
                package: "docker.io",
            });
        }
        if !crate::fixtures::is_root() {
            return Err(StartError::NotRoot { what: "dockerd" });
        }
        let dir = tempfile::Builder::new()
            .prefix("kbd")
            .tempdir_in("/tmp")
            .map_err(StartError::io("create a directory for dockerd under /tmp"))?;
        let root = dir.path();
        let config = serde_json::json!({ "deprecated-key-path": root.join("key.json") });
        fs::write(root.join("daemon.json"), config.to_string()).map_err(StartError::io(
            format!("write {}", root.join("daemon.json").display()),
        ))?;
        let log = fs::File::create(root.join("log")).map_err(StartError::io(format!(
            "create {}",
            root.join("log").display()
        )))?;
        let log_err = log
            .try_clone()
            .map_err(StartError::io("open dockerd's log twice"))?;

        let started = Instant::now();
        let child = Command::new(DOCKERD_BIN)
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("pid"))
            .arg("--host")
            .arg(format!("unix://{}", root.join("docker.sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--insecure-registry", "127.0.0.0/8"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Not in the test runner's process group: a Ctrl-C reaches the
            // runner, whose drops then stop the daemon in order.
            .process_group(0)
            .spawn()
            .map_err(StartError::io(format!("start {DOCKERD_BIN}")))?;
        // From here on, dropping `daemon` cleans up whatever happens.
        let mut daemon = Dockerd {
            child,
            dir,
            startup: Duration::ZERO,
        };
        loop {
            if daemon.docker(["version"]).status.success() {
                daemon.startup = started.elapsed();
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(StartError::Exited {
                    what: "dockerd".into(),
                    status,
                    log: tail(&daemon.log(), 20),
                });
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::NoAnswer {
                    what: "dockerd".into(),
                    waited: START_TIMEOUT,
                    log: tail(&daemon.log(), 20),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The `DOCKER_HOST` value of the daemon: `unix:///tmp/kbd.../docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The daemon's private directory (data, exec root, log, ...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long the daemon took from spawn to its first answer.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon (never a system one: `DOCKER_*`
    /// variables are cleared and the CLI config is private) and returns what it
    /// did. A CLI that cannot be run shows as exit status 127 with the reason
    /// in stderr.
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cli = docker_cli();
        let result = Command::new(&cli)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .arg("--host")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output();
        result.unwrap_or_else(|e| Output {
            status: ExitStatus::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot run {}: {e}", cli.display()).into_bytes(),
        })
    }

    /// Like [`Dockerd::docker`], but a failure is an error naming the command
    /// with the CLI's stderr; success gives its stdout.
    pub fn docker_ok<I, S>(&self, args: I) -> Result<String, CommandError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.docker(&args);
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(CommandError::failed("docker", &args, &output))
        }
    }

    /// Kills running containers (dockerd would give each 10 s on SIGTERM),
    /// then stops dockerd, killing it if it takes longer than [`STOP_TIMEOUT`].
    fn stop_daemon(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let running = self.docker(["ps", "--quiet"]);
        let ids: Vec<String> = String::from_utf8_lossy(&running.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["kill".to_string()];
            args.extend(ids);
            let _ = self.docker(&args);
        }
        let pid = self.child.id().to_string();
        let termed = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What a dockerd that died without cleaning up leaves: runc containers
    /// (with their processes), containerd and its shims (their command lines
    /// name our exec root), the shims' sockets, and mounts under our directory.
    fn remove_leftovers(&self) {
        let root = self.dir.path();
        let runc_root = root.join("exec/runtime-runc/moby");
        let mut shim_sockets = Vec::new();
        if runc_root.is_dir() {
            let listed = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["list", "--quiet"])
                .stderr(Stdio::null())
                .output();
            if let Ok(listed) = listed {
                for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                    let _ = Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force", id])
                        .stderr(Stdio::null())
                        .status();
                    shim_sockets.extend(shim_socket(root, id));
                }
            }
        }
        let marker = format!("{}/", root.join("exec").display());
        clear_leftovers(&marker, shim_sockets, root);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop_daemon();
        self.remove_leftovers();
        // TempDir's own drop then removes the directory.
    }
}

/// Where containerd 1.6 puts the socket of the shim of container `id`:
/// `/run/containerd/s/<sha256 of "<containerd address>/moby/<id>">`. The shim
/// removes it when it exits normally, not when it is killed.
fn shim_socket(root: &Path, id: &str) -> Option<PathBuf> {
    let key = root.join("exec/containerd/containerd.sock/moby").join(id);
    let mut hasher = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    hasher
        .stdin
        .take()?
        .write_all(key.as_os_str().as_encoded_bytes())
        .ok()?;
    let output = hasher.wait_with_output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let hex = text.split_whitespace().next()?;
    Some(Path::new("/run/containerd/s").join(hex))
}

/// What a stopped daemon's containers may leave behind: kills the processes
/// whose command line holds `marker` (shims name their daemon's paths),
/// removes `shim_sockets`, and unmounts everything under `root` (lazily
/// where a plain unmount is refused).
pub(crate) fn clear_leftovers(marker: &str, shim_sockets: Vec<PathBuf>, root: &Path) {
    for pid in processes_mentioning(marker) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    for socket in shim_sockets {
        let _ = fs::remove_file(socket);
    }
    for mount_point in mounts_under(root) {
        let unmounted = Command::new("umount")
            .arg(&mount_point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mount_point)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Process ids whose command line contains `needle`, except our own.
pub(crate) fn processes_mentioning(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    let text: Vec<u8> = cmdline
                        .iter()
                        .map(|&b| if b == 0 { b' ' } else { b })
                        .collect();
                    String::from_utf8_lossy(&text).contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort();
    found.dedup();
    found.reverse();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/tmp/tab\011x\134y"), "/tmp/tab\tx\\y");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        // a backslash without three octal digits stays as it is
        assert_eq!(unescape_mountinfo(r"/odd\04"), r"/odd\04");
        assert_eq!(unescape_mountinfo(r"/odd\"), r"/odd\");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }
}

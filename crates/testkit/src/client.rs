//! The `kubectl-build` client for tests: a [`Client`] is a scratch
//! directory with its own store (`root`) and builder list (`config`, as
//! `XDG_CONFIG_HOME`), and [`Build`] one run of the binary with the
//! environment every test wants (no inherited `SOURCE_DATE_EPOCH` nor
//! `DOCKER_DEFAULT_PLATFORM`, stdin closed), waited for ([`Build::run`])
//! or running in the background ([`Build::spawn`]).
//!
//! ```no_run
//! # use kbuild_testkit::client::Client;
//! # use kbuild_testkit::node::Node;
//! # fn demo(bin: &std::path::Path) {
//! let client = Client::new(bin);
//! let a = Node::spec(bin, client.dir(), "a").start();
//! client.create("one", &[a.via_unix()]);
//! let ctx = client.context("ctx", "FROM scratch\n");
//! let out = client.kb([ctx.as_str(), "--builder", "one"]).epoch().plain().ok();
//! assert!(out.stderr.contains("=> built"));
//! # }
//! ```

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What one finished run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when a signal ended it).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the run failed.
    pub fn fails(self) -> Run {
        assert_ne!(
            self.code, 0,
            "command should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `error:` lines of standard error (a failing command should
    /// print exactly one).
    pub fn error_lines(&self) -> Vec<&str> {
        error_lines(&self.stderr)
    }

    /// The one `error:` line of standard error, asserting there is
    /// exactly one.
    pub fn error_line(&self) -> &str {
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "{}", self.stderr);
        lines[0]
    }

    /// Standard output parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("no JSON on standard output ({e}):\n{}", self.stdout))
    }
}

impl From<Output> for Run {
    /// What a program run to its end printed: any program's, so helpers
    /// that run kubectl, skopeo or tar check it as a client run.
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The `error:` lines of a command's standard error.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

/// A client's scratch directory: store, builder list and whatever the
/// test writes beside them (contexts, outputs, the nodes' stores).
pub struct Client {
    bin: PathBuf,
    dir: tempfile::TempDir,
    env: Vec<(OsString, OsString)>,
}

impl Client {
    /// A new client of binary `bin` in a fresh temporary directory.
    pub fn new(bin: &Path) -> Client {
        Client {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().expect("make a temporary directory"),
            env: Vec::new(),
        }
    }

    /// The same client with environment variable `key` set for every run
    /// (a `KUBECONFIG`, say, or `HOME`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Client {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `p` in the scratch directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The client's store.
    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    /// The client's `XDG_CONFIG_HOME`, holding its builder list.
    pub fn config(&self) -> PathBuf {
        self.path("config")
    }

    /// `kubectl-build ARGS` as this client (the builder is yet to run).
    pub fn kb<I, S>(&self, args: I) -> Build
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(&self.bin)
            .arg("--root")
            .arg(self.root())
            .args(args)
    }

    /// `program` in this client's environment (its builder list and
    /// [`Client::env`]), without `--root`: kubectl-build reached through
    /// another program, such as `kubectl build` with the plugin on `PATH`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Build {
        let build = Build::program(program).env("XDG_CONFIG_HOME", self.config());
        self.env.iter().fold(build, |build, (k, v)| build.env(k, v))
    }

    /// Creates builder `name` of one node per item of `nodes`, each the
    /// `create` arguments that reach it (such as
    /// [`Node::via_unix`](crate::node::Node::via_unix) or
    /// [`Node::via_tls`](crate::node::Node::via_tls)), in order: `create`,
    /// then `create --append` for each further node.
    pub fn create(&self, name: &str, nodes: &[Vec<String>]) {
        for (i, node) in nodes.iter().enumerate() {
            let append = (i > 0).then_some("--append");
            self.kb(["create", name]).args(append).args(node).ok();
        }
    }

    /// Writes `DIR/NAME/Dockerfile` (a context directory) and returns the
    /// directory.
    pub fn context(&self, name: &str, dockerfile: &str) -> String {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let file = dir.join("Dockerfile");
        std::fs::write(&file, dockerfile).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        dir.to_str()
            .expect("a UTF-8 temporary directory")
            .to_string()
    }
}

/// One run of `kubectl-build --root STORE ARGS`, put together by its
/// methods and started by [`Build::run`] (or [`Build::ok`],
/// [`Build::fails`], [`Build::spawn`]).
pub struct Build {
    cmd: Command,
    input: Option<Vec<u8>>,
}

impl Build {
    /// `bin --root STORE`, without the inherited `SOURCE_DATE_EPOCH` and
    /// `DOCKER_DEFAULT_PLATFORM`.
    pub fn new(bin: &Path, store: &Path) -> Build {
        Build::program(bin).arg("--root").arg(store)
    }

    /// `program` alone (the caller adds every argument), with the same
    /// environment as [`Build::new`].
    pub fn program(program: impl AsRef<OsStr>) -> Build {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("DOCKER_DEFAULT_PLATFORM");
        Build { cmd, input: None }
    }

    /// `bytes` on standard input (a Dockerfile given as `-`, say) instead
    /// of none.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Build {
        self.input = Some(bytes.into());
        self
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Build {
        self.cmd.arg(arg);
        self
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Build
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// One environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Build {
        self.cmd.env(key, value);
        self
    }

    /// Environment variables.
    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, vars: &[(K, V)]) -> Build {
        for (k, v) in vars {
            self.cmd.env(k, v);
        }
        self
    }

    /// `SOURCE_DATE_EPOCH=0`: reproducible timestamps.
    pub fn epoch(self) -> Build {
        self.env("SOURCE_DATE_EPOCH", "0")
    }

    /// `--progress plain`.
    pub fn plain(self) -> Build {
        self.args(["--progress", "plain"])
    }

    /// `--progress quiet`.
    pub fn quiet(self) -> Build {
        self.args(["--progress", "quiet"])
    }

    /// `--builder NAME`.
    pub fn builder(self, name: &str) -> Build {
        self.args(["--builder", name])
    }

    /// `--platform PLATFORMS`.
    pub fn platform(self, platforms: &str) -> Build {
        self.args(["--platform", platforms])
    }

    /// `-o OUTPUT`.
    pub fn output(self, output: impl AsRef<OsStr>) -> Build {
        self.arg("-o").arg(output)
    }

    /// `-t TAG --push --insecure-registry REGISTRY`: a push to a test
    /// registry (plain HTTP).
    pub fn push_to(self, tag: &str, registry: &str) -> Build {
        self.args(["-t", tag, "--push", "--insecure-registry", registry])
    }

    /// Runs it to the end.
    pub fn run(self) -> Run {
        Run::from(self.raw())
    }

    /// Runs it to the end; what it printed as bytes (an archive on
    /// standard output, say).
    pub fn raw(mut self) -> Output {
        let program = self.cmd.get_program().to_owned();
        let fail = |e: std::io::Error| -> ! { panic!("run {program:?}: {e}") };
        let Some(input) = self.input.take() else {
            return self.cmd.output().unwrap_or_else(|e| fail(e));
        };
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(e));
        if let Some(mut stdin) = child.stdin.take() {
            // It may exit before reading all of it: its output says why.
            let _ = stdin.write_all(&input);
        }
        child.wait_with_output().unwrap_or_else(|e| fail(e))
    }

    /// Runs it, asserting it succeeds.
    pub fn ok(self) -> Run {
        self.run().ok()
    }

    /// Runs it, asserting it fails.
    pub fn fails(self) -> Run {
        self.run().fails()
    }

    /// Runs it, asserting it succeeds, and parses its standard output as
    /// JSON.
    pub fn json(self) -> serde_json::Value {
        self.ok().json()
    }

    /// Starts it in the background (standard output discarded), its
    /// standard error read line by line.
    pub fn spawn(mut self) -> Running {
        let mut child = self
            .cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl-build");
        let lines = crate::daemon::stderr_lines(&mut child);
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }
}

/// A `kubectl-build` running in the background ([`Build::spawn`]).
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal (`INT`, `KILL`…).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} kubectl-build");
    }

    /// Waits (90 s at most) for a standard error line containing all of
    /// `parts`; returns it.
    pub fn wait_line(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = parts.iter().all(|p| line.contains(p));
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {parts:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits (120 s at most) for it to end: its exit code (-1 when a
    /// signal ended it) and every line of its standard error.
    pub fn finish(mut self) -> (i32, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait for kubectl-build") {
                break s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kubectl-build did not end; stderr so far:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.iter());
        (code, std::mem::take(&mut self.seen))
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

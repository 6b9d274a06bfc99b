//! A builder node for tests: a `kubectl-build serve` daemon with its own
//! store, on a unix socket and, when asked, on mutual TLS (certificates
//! made by [`make_pki`] for its address), optionally in its own test
//! [`Host`]. Dropping it stops the daemon, removes the host, then runs
//! `prune` on its store, which reclaims what a daemon killed mid-build
//! left behind (a RUN's overlay mount).
//!
//! ```no_run
//! # use kbuild_testkit::node::Node;
//! # use kbuild_testkit::netns::Host;
//! # fn demo(bin: &std::path::Path, dir: &std::path::Path) -> Option<()> {
//! let a = Node::spec(bin, dir, "a").host(Host::create()?).tls().start();
//! let b = Node::spec(bin, dir, "b").args(["--keep-contexts", "1"]).start();
//! println!("{} {} {}", a.tcp(), a.driver_opt(), b.unix());
//! # Some(())
//! # }
//! ```

use crate::daemon::{make_pki, Daemon};
use crate::netns::Host;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What [`NodeSpec::start`] starts; made by [`Node::spec`].
pub struct NodeSpec {
    bin: PathBuf,
    dir: PathBuf,
    name: String,
    host: Option<Host>,
    tls: bool,
    args: Vec<String>,
}

/// A running `kubectl-build serve` daemon (see the module documentation).
pub struct Node {
    name: String,
    bin: PathBuf,
    root: PathBuf,
    pki: PathBuf,
    unix: String,
    tcp: Option<String>,
    // Taken out by `terminate`; dropped before the host.
    daemon: Option<Daemon>,
    host: Option<Host>,
}

impl Node {
    /// A node named `name` run by binary `bin`: its store is
    /// `DIR/NAME-root`, its socket `DIR/NAME.sock`, its certificates (with
    /// [`NodeSpec::tls`]) `DIR/pki/NAME-*`.
    pub fn spec(bin: &Path, dir: &Path, name: &str) -> NodeSpec {
        NodeSpec {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            host: None,
            tls: false,
            args: Vec::new(),
        }
    }
}

impl NodeSpec {
    /// Runs the daemon in test host `host` (and its TLS listener on the
    /// host's address); the node owns the host from then on.
    pub fn host(mut self, host: Host) -> NodeSpec {
        self.host = Some(host);
        self
    }

    /// Also listens on mutual TLS: `tcp://IP:0`, IP the host's address or
    /// 127.0.0.1 without a host.
    pub fn tls(mut self) -> NodeSpec {
        self.tls = true;
        self
    }

    /// Extra arguments of `serve`.
    pub fn args<I, S>(mut self, args: I) -> NodeSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Makes the certificates, starts the daemon and waits until it
    /// listens on every address.
    ///
    /// # Panics
    /// When the daemon does not start or the certificates cannot be made.
    pub fn start(self) -> Node {
        let pki = self.dir.join("pki");
        let root = self.dir.join(format!("{}-root", self.name));
        let unix = format!(
            "unix://{}",
            self.dir.join(format!("{}.sock", self.name)).display()
        );
        let mut cmd = match &self.host {
            Some(host) => host.command(&self.bin),
            None => Command::new(&self.bin),
        };
        cmd.arg("--root")
            .arg(&root)
            .arg("serve")
            .args(["--addr", &unix]);
        let ip = self
            .host
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |h| h.ip().to_string());
        if self.tls {
            std::fs::create_dir_all(&pki)
                .unwrap_or_else(|e| panic!("create {}: {e}", pki.display()));
            make_pki(&pki, &self.name, &ip);
            let file = |f: &str| pki.join(format!("{}-{f}", self.name));
            cmd.args(["--addr", &format!("tcp://{ip}:0")])
                .arg("--tls-cert")
                .arg(file("server.pem"))
                .arg("--tls-key")
                .arg(file("server.key"))
                .arg("--tls-ca")
                .arg(file("ca.pem"));
        }
        cmd.args(&self.args);
        let mut daemon = Daemon::spawn(cmd);
        daemon.listening("unix://");
        let tcp = self.tls.then(|| daemon.listening(&format!("tcp://{ip}:")));
        Node {
            name: self.name,
            bin: self.bin,
            root,
            pki,
            unix,
            tcp,
            daemon: Some(daemon),
            host: self.host,
        }
    }
}

impl Node {
    /// The node's name (its certificates' prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unix socket endpoint, `unix://PATH`.
    pub fn unix(&self) -> &str {
        &self.unix
    }

    /// The mutual TLS endpoint, `tcp://IP:PORT`.
    ///
    /// # Panics
    /// When the node was started without [`NodeSpec::tls`].
    pub fn tcp(&self) -> &str {
        self.tcp
            .as_deref()
            .unwrap_or_else(|| panic!("node {} was started without tls()", self.name))
    }

    /// The path of the certificate file `NAME-FILE` (`ca.pem`,
    /// `client.pem`, `client.key`, `server.pem`…).
    pub fn pki_file(&self, file: &str) -> PathBuf {
        self.pki.join(format!("{}-{file}", self.name))
    }

    /// The `--driver-opt` of a client holding this node's client
    /// certificate.
    pub fn driver_opt(&self) -> String {
        format!(
            "cacert={},cert={},key={}",
            self.pki_file("ca.pem").display(),
            self.pki_file("client.pem").display(),
            self.pki_file("client.key").display()
        )
    }

    /// The `create` arguments of a client reaching this node over its
    /// unix socket.
    pub fn via_unix(&self) -> Vec<String> {
        vec!["--endpoint".into(), self.unix.clone()]
    }

    /// The `create` arguments of a client reaching this node over mutual
    /// TLS with its client certificate.
    pub fn via_tls(&self) -> Vec<String> {
        let tcp = self.tcp().to_string();
        vec![
            "--endpoint".into(),
            tcp,
            "--driver-opt".into(),
            self.driver_opt(),
        ]
    }

    /// The test host the daemon runs in.
    ///
    /// # Panics
    /// When the node runs on this machine.
    pub fn host(&self) -> &Host {
        self.host
            .as_ref()
            .unwrap_or_else(|| panic!("node {} runs in no test host", self.name))
    }

    /// The running daemon (to wait for its log lines).
    ///
    /// # Panics
    /// After [`Node::terminate`].
    pub fn daemon(&mut self) -> &mut Daemon {
        let name = &self.name;
        self.daemon
            .as_mut()
            .unwrap_or_else(|| panic!("the daemon of node {name} was stopped"))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("the daemon of node {} was stopped", self.name))
            .pid()
    }

    /// Sends a signal (`KILL`, `TERM`…) to the daemon, leaving it to end.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} the daemon of {}",
            self.name
        );
    }

    /// Kills the daemon at once (SIGKILL): its connections break mid-build.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    /// Stops the daemon with SIGTERM and returns its exit code and its
    /// whole stderr; the host and the store stay until the node is dropped.
    ///
    /// # Panics
    /// When the daemon does not stop, or was stopped already.
    pub fn terminate(&mut self) -> (i32, String) {
        let daemon = self
            .daemon
            .take()
            .unwrap_or_else(|| panic!("the daemon of node {} was stopped", self.name));
        daemon.terminate()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.host.take());
        if self.root.exists() {
            let _ = Command::new(&self.bin)
                .arg("--root")
                .arg(&self.root)
                .arg("prune")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

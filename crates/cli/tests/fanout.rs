//! One build over many nodes: which node builds which platform, as
//! `--dry-run` shows it, against real `kubectl-build serve` daemons on test
//! hosts (network namespaces with their own addresses, see
//! `kbuild_testkit::netns`), reached over mutual TLS on those addresses and
//! over unix sockets.

mod common;

use common::{bin, run, Run, SEVEN};
use kbuild_testkit::daemon::{make_pki, Daemon};
use kbuild_testkit::netns::Host;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scratch directory: the client's builder list, the PKI, the daemons'
/// stores and sockets.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(env.path("pki")).expect("pki dir");
        env
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn pki(&self, file: &str) -> String {
        self.path("pki")
            .join(file)
            .to_str()
            .expect("utf-8")
            .to_string()
    }
    fn kb(&self, args: &[&str]) -> Run {
        let config = self.path("config");
        run(
            &self.path("client-root"),
            args,
            &[("XDG_CONFIG_HOME", config.to_str().expect("utf-8 path"))],
        )
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.kb(args).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", out.stdout))
    }
    /// `--driver-opt` for the client certificate of host `name`'s PKI.
    fn mtls(&self, name: &str) -> String {
        format!(
            "cacert={},cert={},key={}",
            self.pki(&format!("{name}-ca.pem")),
            self.pki(&format!("{name}-client.pem")),
            self.pki(&format!("{name}-client.key"))
        )
    }
}

/// A test host running `kubectl-build serve` on mutual TLS at its own
/// address and on a unix socket.
struct Node {
    daemon: Daemon,
    tcp: String,
    unix: String,
    // Dropped after the daemon: the host kills what is left in it.
    _host: Host,
}

impl Node {
    /// Starts a daemon in a new host, its certificates made for the host's
    /// address; `None` when test hosts cannot be made here (after
    /// `skip_or_fail`).
    fn start(env: &Env, name: &str, cpu: Option<usize>, extra: &[&str]) -> Option<Node> {
        let mut host = Host::create()?;
        if let Some(cpu) = cpu {
            host = host.pin(cpu);
        }
        let ip = host.ip().to_string();
        make_pki(&env.path("pki"), name, &ip);
        let unix = format!("unix://{}", env.path(&format!("{name}.sock")).display());
        let mut cmd = host.command(bin());
        cmd.arg("--root")
            .arg(env.path(&format!("{name}-root")))
            .arg("serve")
            .args(["--addr", &format!("tcp://{ip}:0"), "--addr", &unix])
            .args(["--tls-cert", &env.pki(&format!("{name}-server.pem"))])
            .args(["--tls-key", &env.pki(&format!("{name}-server.key"))])
            .args(["--tls-ca", &env.pki(&format!("{name}-ca.pem"))])
            .args(extra);
        let mut daemon = Daemon::spawn(cmd);
        let tcp = daemon.listening(&format!("tcp://{ip}:"));
        daemon.listening("unix://");
        Some(Node {
            daemon,
            tcp,
            unix,
            _host: host,
        })
    }
}

fn builder<'a>(ls: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ls.as_array()
        .expect("ls lists builders")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no builder {name}: {ls:#}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// A context directory holding `Dockerfile`.
fn context(env: &Env, dockerfile: &str) -> String {
    let dir = env.path("context");
    common::write(&dir.join("Dockerfile"), dockerfile);
    dir.to_str().expect("utf-8").to_string()
}

/// `platform -> (node, endpoint, reason)` from `--dry-run=json`'s `schedule`.
fn assignments(dry: &serde_json::Value) -> Vec<(String, String, String, String)> {
    dry["schedule"]["assignments"]
        .as_array()
        .unwrap_or_else(|| panic!("no schedule in the dry run: {dry:#}"))
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("platform"), s("node"), s("endpoint"), s("reason"))
        })
        .collect()
}

#[test]
fn mixed_cluster_sends_each_platform_to_its_native_node() {
    let env = Env::new();
    let Some(a) = Node::start(&env, "a", None, &[]) else {
        return;
    };
    let Some(b) = Node::start(&env, "b", None, &["--platform", "linux/arm64,linux/arm/v7"]) else {
        return;
    };
    env.kb(&[
        "create",
        "mix",
        "--endpoint",
        &a.tcp,
        "--driver-opt",
        &env.mtls("a"),
    ])
    .ok();
    env.kb(&[
        "create",
        "mix",
        "--append",
        "--endpoint",
        &b.tcp,
        "--driver-opt",
        &env.mtls("b"),
    ])
    .ok();

    // ls shows both nodes, running, with their own platforms.
    let ls = env.json(&["ls", "--format", "json"]);
    let nodes = builder(&ls, "mix")["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(nodes.len(), 2, "{ls:#}");
    let here = kbuild_serve::platforms(None);
    let host_native: Vec<String> = here.native.iter().map(|p| p.to_string()).collect();
    assert_eq!(nodes[0]["name"], "mix0");
    assert_eq!(nodes[0]["endpoint"], a.tcp.as_str());
    assert_eq!(nodes[0]["status"], "running", "{ls:#}");
    assert_eq!(strings(&nodes[0]["native_platforms"]), host_native);
    assert_eq!(nodes[1]["name"], "mix1");
    assert_eq!(nodes[1]["endpoint"], b.tcp.as_str());
    assert_eq!(nodes[1]["status"], "running", "{ls:#}");
    assert_eq!(
        strings(&nodes[1]["native_platforms"]),
        ["linux/arm64", "linux/arm/v7"]
    );
    let table = env.kb(&["ls"]).ok().stdout;
    for (node, endpoint) in [("mix0", &a.tcp), ("mix1", &b.tcp)] {
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{table}"));
        assert!(
            row.contains(endpoint.as_str()) && row.contains("running"),
            "{table}"
        );
    }

    // RUN steps on every platform: each goes to the node that runs it natively.
    let ctx = context(&env, "FROM busybox\nRUN uname -m > /m\n");
    let platforms = "linux/amd64,linux/386,linux/arm64,linux/arm/v7";
    let dry = env.json(&[
        "--builder",
        "mix",
        "--dry-run=json",
        "--platform",
        platforms,
        &ctx,
    ]);
    let to_a = |p: &str| (p.to_string(), "mix0".into(), a.tcp.clone(), "native".into());
    let to_b = |p: &str| (p.to_string(), "mix1".into(), b.tcp.clone(), "native".into());
    assert!(
        host_native.iter().any(|p| p == "linux/386"),
        "this machine does not run linux/386 natively: {host_native:?}"
    );
    assert_eq!(
        assignments(&dry),
        [
            to_a("linux/amd64"),
            to_a("linux/386"),
            to_b("linux/arm64"),
            to_b("linux/arm/v7")
        ],
        "{:#}",
        dry["schedule"]
    );
    assert_eq!(dry["schedule"]["builder"], "mix");
    // The plan and the graph are still there.
    assert_eq!(dry["targets"].as_array().map(Vec::len), Some(4));
    assert!(dry["graph"]["ops"].is_array());

    // The text form: one row per platform with node, endpoint and reason.
    let text = env
        .kb(&[
            "--builder",
            "mix",
            "--dry-run",
            "--platform",
            platforms,
            &ctx,
        ])
        .ok()
        .stdout;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| *l != "platforms:")
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["linux/amd64", "mix0", a.tcp.as_str(), "native"],
            vec!["linux/386", "mix0", a.tcp.as_str(), "native"],
            vec!["linux/arm64", "mix1", b.tcp.as_str(), "native"],
            vec!["linux/arm/v7", "mix1", b.tcp.as_str(), "native"],
        ],
        "{text}"
    );
    assert!(text.contains("builder mix:"), "{text}");
    drop(b);
    drop(a);
}

#[test]
fn cross_dockerfile_spreads_over_two_amd64_nodes() {
    let env = Env::new();
    // Each host's daemon on its own CPU: a one-core node.
    let Some(a) = Node::start(&env, "a", Some(0), &[]) else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(c) = Node::start(&env, "c", Some(1 % cpus), &[]) else {
        return;
    };
    // One node over its unix socket, the other over mutual TLS.
    env.kb(&["create", "pair", "--endpoint", &a.unix]).ok();
    env.kb(&[
        "create",
        "pair",
        "--append",
        "--endpoint",
        &c.tcp,
        "--driver-opt",
        &env.mtls("c"),
    ])
    .ok();
    let ls = env.json(&["ls", "--format", "json"]);
    for n in builder(&ls, "pair")["nodes"].as_array().expect("nodes") {
        assert_eq!(n["status"], "running", "{ls:#}");
        assert_eq!(n["load"]["cpus"], 1, "pinned to one CPU: {ls:#}");
    }

    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let dockerfile = hello.join("Dockerfile.cross");
    let dry = env.json(&[
        "--builder",
        "pair",
        "--dry-run=json",
        "-f",
        dockerfile.to_str().expect("utf-8"),
        "--platform",
        SEVEN,
        hello.to_str().expect("utf-8"),
    ]);
    let got = assignments(&dry);
    assert_eq!(got.len(), 7, "{:#}", dry["schedule"]);
    let host = kbuild_platform::Platform::host().to_string();
    let native = kbuild_serve::platforms(None).native;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for (platform, node, endpoint, reason) in &got {
        *per_node.entry(node.clone()).or_default() += 1;
        let expected_endpoint = if node == "pair0" { &a.unix } else { &c.tcp };
        assert_eq!(endpoint, expected_endpoint);
        let runs_here = native.iter().any(|p| p.to_string() == *platform);
        assert_eq!(
            reason,
            if runs_here { "native" } else { "cross" },
            "{platform}: {:#}",
            dry["schedule"]
        );
    }
    // The compiles run on the build platform, on either node.
    for a in dry["schedule"]["assignments"]
        .as_array()
        .expect("assignments")
    {
        assert_eq!(a["build_platform"], host.as_str());
        assert_eq!(strings(&a["exec_platforms"]), vec![host.as_str()], "{a:#}");
    }
    assert_eq!(per_node.len(), 2, "both nodes build: {per_node:?}");
    assert!(
        per_node.values().all(|n| *n >= 3),
        "seven platforms over two equal nodes: {per_node:?}"
    );
    let text = env
        .kb(&[
            "--builder",
            "pair",
            "--dry-run",
            "-f",
            dockerfile.to_str().expect("utf-8"),
            "--platform",
            SEVEN,
            hello.to_str().expect("utf-8"),
        ])
        .ok()
        .stdout;
    assert!(
        text.lines()
            .any(|l| l.contains("linux/s390x") && l.ends_with(&format!("cross (runs on {host})"))),
        "{text}"
    );
}

#[test]
fn a_tls_client_without_a_certificate_is_refused_by_the_host() {
    let env = Env::new();
    let Some(a) = Node::start(&env, "a", None, &[]) else {
        return;
    };
    let cacert = format!("cacert={}", env.pki("a-ca.pem"));
    env.kb(&[
        "create",
        "nocert",
        "--endpoint",
        &a.tcp,
        "--driver-opt",
        &cacert,
    ])
    .ok();
    let ls = env.json(&["ls", "--format", "json"]);
    let node = &builder(&ls, "nocert")["nodes"][0];
    assert_eq!(node["status"], "unreachable", "{ls:#}");
    let error = node["error"].as_str().expect("an error");
    assert!(
        error.starts_with(&format!(
            "builder nocert at {} refused the connection: it requires a client certificate",
            a.tcp
        )),
        "{error}"
    );
    // A dry run over that builder stops with the same reason, on one line.
    let ctx = context(&env, "FROM busybox\nRUN true\n");
    let out = env
        .kb(&[
            "--builder",
            "nocert",
            "--dry-run",
            "--platform",
            "linux/amd64",
            &ctx,
        ])
        .fails();
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!(
            "error: builder nocert has no reachable node: builder nocert at {} refused the connection: it requires a client certificate",
            a.tcp
        )),
        "{line}"
    );
    // The daemon saw the refused handshakes and still serves.
    env.kb(&[
        "create",
        "ok",
        "--endpoint",
        &a.tcp,
        "--driver-opt",
        &env.mtls("a"),
    ])
    .ok();
    let ls = env.json(&["ls", "--format", "json"]);
    assert_eq!(builder(&ls, "ok")["nodes"][0]["status"], "running");
}

#[test]
fn dead_and_silent_nodes_give_a_clear_error_within_10_seconds() {
    let env = Env::new();
    let Some(a) = Node::start(&env, "a", None, &[]) else {
        return;
    };
    let Some(d) = Node::start(&env, "d", None, &[]) else {
        return;
    };
    // A listener in host d that accepts connections and never answers.
    let silent_port = "4433";
    let silent_ip = d.tcp["tcp://".len()..]
        .rsplit_once(':')
        .expect("host:port")
        .0
        .to_string();
    let mut silent = d
        ._host
        .command("busybox")
        .args(["nc", "-l", "-p", silent_port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start busybox nc in host d");
    let silent_endpoint = format!("tcp://{silent_ip}:{silent_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = d
            ._host
            .command("busybox")
            .args(["netstat", "-ltn"])
            .output()
            .expect("run busybox netstat in host d");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{silent_port} ")) {
            break;
        }
        assert!(Instant::now() < deadline, "nc never listened in host d");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.kb(&[
        "create",
        "two",
        "--endpoint",
        &a.tcp,
        "--driver-opt",
        &env.mtls("a"),
    ])
    .ok();
    env.kb(&[
        "create",
        "two",
        "--append",
        "--endpoint",
        &d.tcp,
        "--driver-opt",
        &env.mtls("d"),
    ])
    .ok();
    env.kb(&["create", "silent", "--endpoint", &silent_endpoint])
        .ok();
    let dead_endpoint = d.tcp.clone();
    let (code, stderr) = d.daemon.terminate();
    assert_eq!(code, 0, "{stderr}");

    let ctx = context(&env, "FROM busybox\nRUN true\n");
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = env.kb(args);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        out
    };
    // One node of two is dead: the other builds everything, with a warning.
    let out = timed(&[
        "--builder",
        "two",
        "--dry-run=json",
        "--platform",
        "linux/amd64,linux/arm64",
        &ctx,
    ])
    .ok();
    let warning = out
        .stderr
        .lines()
        .find(|l| l.starts_with("WARNING: builder two at"))
        .unwrap_or_else(|| panic!("no warning about the dead node:\n{}", out.stderr));
    assert!(
        warning.contains(&dead_endpoint) && warning.contains("is unreachable"),
        "{warning}"
    );
    let dry: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    for (platform, node, _, _) in assignments(&dry) {
        assert_eq!(node, "two0", "{platform}");
    }
    assert_eq!(dry["schedule"]["nodes"][1]["status"], "unreachable");
    // A platform no reachable node runs: every node's platforms, and the
    // dead one, in the error.
    let out = timed(&[
        "--builder",
        "two",
        "--dry-run",
        "--platform",
        "freebsd/amd64",
        &ctx,
    ])
    .fails();
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "error: no node of builder two can build freebsd/amd64: two0 runs {}",
            kbuild_platform::Platform::host()
        )) && line.contains(" by emulation; left out: builder two at ")
            && line.contains(&dead_endpoint),
        "{}",
        out.stderr
    );

    // Only dead nodes: an error naming the builder, endpoint and cause.
    env.kb(&[
        "create",
        "dead",
        "--endpoint",
        &dead_endpoint,
        "--driver-opt",
        &env.mtls("d"),
    ])
    .ok();
    for (builder, endpoint, cause) in [
        ("dead", &dead_endpoint, "is unreachable"),
        ("silent", &silent_endpoint, "did not answer within 5s"),
    ] {
        let out = timed(&[
            "--builder",
            builder,
            "--dry-run",
            "--platform",
            "linux/amd64",
            &ctx,
        ])
        .fails();
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with(&format!(
                "error: builder {builder} has no reachable node: builder {builder} at {endpoint} {cause}"
            )),
            "{line}"
        );
    }
    let _ = silent.kill();
    let _ = silent.wait();
}

//! `kubectl-build serve` and the builder list (`create`, `ls`, `rm`, `use`),
//! against the real daemon binary: unix sockets, mutual TLS over TCP with
//! certificates made by the `openssl` CLI, version mismatches, dead
//! endpoints and SIGTERM.

mod common;

use common::{bin, Client};
use kbuild_testkit::daemon::{make_pki, Daemon};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

/// `ls --format json` of the client's builders.
fn ls_json(env: &Client) -> serde_json::Value {
    env.kb(["ls", "--format", "json"]).json()
}

fn builder<'a>(ls: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    ls.as_array()
        .expect("ls lists builders")
        .iter()
        .find(|b| b["name"] == name)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn unix_socket_builder_create_ls_use_rm_and_sigterm() {
    let env = common::client();
    let socket = env.path("run/nested/builder.sock");
    let addr = format!("unix://{}", socket.display());
    let mut daemon = Daemon::start(&bin(), &env.path("daemon-root"), &["--addr", &addr]);
    assert_eq!(daemon.listening("unix://"), addr);
    let meta = std::fs::symlink_metadata(&socket).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // Only the embedded builder, which is the default.
    let ls = ls_json(&env);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls:#}");
    let local = builder(&ls, "local").expect("local is listed");
    assert_eq!(local["current"], true);
    let host = kbuild_platform::Platform::host().to_string();
    assert!(strings(&local["nodes"][0]["native_platforms"]).contains(&host));

    env.kb(["create", "remote1", "--endpoint", &addr])
        .platform("linux/arm64,linux/amd64")
        .ok();
    let again = env.kb(["create", "remote1", "--endpoint", &addr]).fails();
    assert!(again.stderr.contains("--append"), "{}", again.stderr);

    let ls = ls_json(&env);
    let node = &builder(&ls, "remote1").expect("remote1 listed")["nodes"][0];
    assert_eq!(node["status"], "running", "{ls:#}");
    assert_eq!(node["name"], "remote10");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["protocol"], kbuild_proto::PROTOCOL_VERSION);
    assert_eq!(strings(&node["platforms"]), ["linux/arm64", "linux/amd64"]);
    // The daemon runs on this machine: it reports what this machine runs.
    let here = kbuild_serve::platforms(None);
    let native: Vec<String> = here.native.iter().map(|p| p.to_string()).collect();
    assert_eq!(strings(&node["native_platforms"]), native);
    let emulated: Vec<String> = here.emulated.iter().map(|(p, _)| p.to_string()).collect();
    let got: Vec<String> = node["emulated_platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["platform"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, emulated);
    assert_eq!(node["load"]["running_builds"], 0);
    assert!(node["load"]["cpus"].as_u64().unwrap() >= 1);

    // The table shows the same.
    let table = env.kb(["ls"]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("remote10"))
        .unwrap_or_else(|| panic!("no row for remote10:\n{table}"));
    assert!(row.contains(&addr) && row.contains("running"), "{table}");
    assert!(row.contains("linux/arm64*"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("local*")), "{table}");

    // --append adds a node; `use` makes the builder the default.
    env.kb(["create", "remote1", "--append", "--endpoint", &addr])
        .ok();
    env.kb(["use", "remote1"]).ok();
    let ls = ls_json(&env);
    let b = builder(&ls, "remote1").unwrap();
    assert_eq!(b["current"], true);
    assert_eq!(builder(&ls, "local").unwrap()["current"], false);
    assert_eq!(b["nodes"][1]["name"], "remote11");
    assert_eq!(b["nodes"][1]["status"], "running");

    // rm removes it, the default goes back to local, local stays.
    env.kb(["rm", "remote1"]).ok();
    let ls = ls_json(&env);
    assert!(builder(&ls, "remote1").is_none(), "{ls:#}");
    assert_eq!(builder(&ls, "local").unwrap()["current"], true);
    let again = env.kb(["rm", "remote1"]).fails();
    assert!(
        again.stderr.contains("no builder named remote1"),
        "{}",
        again.stderr
    );
    let local = env.kb(["rm", "local"]).fails();
    assert_eq!(
        local.stderr.trim(),
        "error: the local builder is built in and cannot be removed"
    );

    // A second daemon on the same socket is refused while the first runs.
    let second = env.kb(["serve", "--addr", &addr]).fails();
    assert!(second.stderr.contains("in use"), "{}", second.stderr);

    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!socket.exists(), "the socket file is left behind");
}

#[test]
fn tcp_needs_a_client_certificate_signed_by_the_daemons_ca() {
    let env = common::client();
    let pki = env.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki, "good", "127.0.0.1");
    make_pki(&pki, "rogue", "127.0.0.1");
    let f = |name: &str| pki.join(name).to_str().unwrap().to_string();
    let mut daemon = Daemon::start(
        &bin(),
        &env.path("daemon-root"),
        &[
            "--addr",
            "tcp://127.0.0.1:0",
            "--tls-cert",
            &f("good-server.pem"),
            "--tls-key",
            &f("good-server.key"),
            "--tls-ca",
            &f("good-ca.pem"),
        ],
    );
    let endpoint = daemon.listening("tcp://");
    assert!(!daemon.stderr_seen().contains("INSECURE"));

    let opts = |client: &str| {
        format!(
            "cacert={},cert={},key={}",
            f("good-ca.pem"),
            f(&format!("{client}-client.pem")),
            f(&format!("{client}-client.key"))
        )
    };
    env.kb([
        "create",
        "good",
        "--endpoint",
        &endpoint,
        "--driver-opt",
        &opts("good"),
    ])
    .ok();
    env.kb([
        "create",
        "rogue",
        "--endpoint",
        &endpoint,
        "--driver-opt",
        &opts("rogue"),
    ])
    .ok();
    let cacert = format!("cacert={}", f("good-ca.pem"));
    env.kb([
        "create",
        "nocert",
        "--endpoint",
        &endpoint,
        "--driver-opt",
        &cacert,
    ])
    .ok();
    env.kb(["create", "plain", "--endpoint", &endpoint]).ok();

    let started = Instant::now();
    let ls = ls_json(&env);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ls took {:?}",
        started.elapsed()
    );
    let node = |b: &str| builder(&ls, b).unwrap()["nodes"][0].clone();
    assert_eq!(node("good")["status"], "running", "{ls:#}");
    for refused in ["rogue", "nocert", "plain"] {
        let n = node(refused);
        assert_eq!(n["status"], "unreachable", "{refused}: {ls:#}");
        let error = n["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("builder {refused} at {endpoint} ")),
            "{refused}: {error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }
    // What the client can tell: the daemon asked for a certificate it did
    // not get, or did not accept the one it got.
    let hint = |name: &str, text: &str| {
        let error = node(name)["error"].as_str().unwrap().to_string();
        assert!(error.contains(text), "{name}: {error}");
    };
    hint(
        "nocert",
        "refused the connection: it requires a client certificate",
    );
    hint(
        "rogue",
        "refused the connection: it did not accept the client certificate",
    );
    hint("plain", "refused the connection: the daemon may serve TLS");

    // A client that does not trust the daemon's CA refuses the daemon.
    let rogue_ca = format!("cacert={}", f("rogue-ca.pem"));
    env.kb([
        "create",
        "untrusted",
        "--endpoint",
        &endpoint,
        "--driver-opt",
        &rogue_ca,
    ])
    .ok();
    let ls = ls_json(&env);
    let n = &builder(&ls, "untrusted").unwrap()["nodes"][0];
    assert_eq!(n["status"], "unreachable");
    assert!(
        n["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{n:#}"
    );

    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn plain_tcp_is_refused_without_insecure_and_warned_with_it() {
    let env = common::client();
    let refused = env.kb(["serve", "--addr", "tcp://127.0.0.1:0"]).fails();
    let line = refused.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("error: tcp://127.0.0.1:0 would accept anyone")
            && line.contains("--tls-cert")
            && line.contains("--insecure"),
        "{line}"
    );
    let incomplete = env
        .kb([
            "serve",
            "--addr",
            "tcp://127.0.0.1:0",
            "--tls-cert",
            "x.pem",
        ])
        .fails();
    assert!(
        incomplete.stderr.contains("--tls-key is missing"),
        "{}",
        incomplete.stderr
    );

    let mut daemon = Daemon::start(
        &bin(),
        &env.path("daemon-root"),
        &["--addr", "tcp://127.0.0.1:0", "--insecure"],
    );
    let warning = daemon.wait_for("INSECURE");
    assert!(warning.contains("WARN"), "{warning}");
    let endpoint = daemon.listening("tcp://");
    env.kb(["create", "open", "--endpoint", &endpoint]).ok();
    let ls = ls_json(&env);
    assert_eq!(
        builder(&ls, "open").unwrap()["nodes"][0]["status"],
        "running",
        "{ls:#}"
    );
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_daemon_of_another_protocol_is_refused_with_the_versions() {
    let env = common::client();
    let mut daemon = common::serve_builder(&env, "future", &["--test-protocol-version", "99"]);
    let addr = daemon.unix().to_string();
    let socket = env.path("future.sock");
    let ls = ls_json(&env);
    let node = &builder(&ls, "future").unwrap()["nodes"][0];
    assert_eq!(node["status"], "version mismatch", "{ls:#}");
    assert_eq!(
        node["error"],
        format!(
            "builder future at {addr} speaks protocol 99, this kubectl-build speaks {}; upgrade this kubectl-build",
            kbuild_proto::PROTOCOL_VERSION
        )
    );
    let table = env.kb(["ls"]).ok().stdout;
    assert!(table.contains("version mismatch"), "{table}");
    assert!(table.contains("speaks protocol 99"), "{table}");
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn dead_endpoints_are_unreachable_within_10_seconds() {
    let env = common::client();
    let missing = format!("unix://{}", env.path("nobody.sock").display());
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    // A listener that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("tcp://{}", silent.local_addr().unwrap());
    env.kb(["create", "missing", "--endpoint", &missing]).ok();
    env.kb(["create", "closed", "--endpoint", &closed]).ok();
    env.kb(["create", "silent", "--endpoint", &silent_addr])
        .ok();

    let started = Instant::now();
    let ls = ls_json(&env);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "ls took {took:?}");
    for (name, endpoint) in [
        ("missing", &missing),
        ("closed", &closed),
        ("silent", &silent_addr),
    ] {
        let node = &builder(&ls, name).unwrap()["nodes"][0];
        assert_eq!(node["status"], "unreachable", "{ls:#}");
        let error = node["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("builder {name} at {endpoint}")),
            "{error}"
        );
    }
    let error = |name| {
        builder(&ls, name).unwrap()["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
    };
    assert!(
        error("missing").contains("no such file"),
        "{}",
        error("missing")
    );
    assert!(error("closed").contains("refused"), "{}", error("closed"));
    assert!(
        error("silent").contains("did not answer within 5s"),
        "{}",
        error("silent")
    );
    // local is always there and running.
    let local = &builder(&ls, "local").unwrap()["nodes"][0];
    assert_eq!(local["status"], "running");
    drop(silent);
}

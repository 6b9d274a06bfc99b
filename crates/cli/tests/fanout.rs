//! One build over many nodes, against real `kubectl-build serve` daemons on
//! test hosts (network namespaces with their own addresses, see
//! `kbuild_testkit::netns`), reached over mutual TLS on those addresses and
//! over unix sockets: which node builds which platform (`--dry-run`), and
//! real builds split over the nodes, pushed to a registry the hosts reach,
//! with one index and the tag written last; a failing node, and a node
//! killed mid-build.

mod common;

use common::{Client, Run, SEVEN};
use kbuild_testkit::netns::Host;
use kbuild_testkit::node::Node;
use kbuild_testkit::registry::TestRegistry;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A node in a new test host (its own address), on mutual TLS at that
/// address and on a unix socket, its daemon pinned to CPU `cpu` if given;
/// `None` when test hosts cannot be made here (after `skip_or_fail`).
fn host_node(env: &Client, name: &str, cpu: Option<usize>, extra: &[&str]) -> Option<Node> {
    let mut host = Host::create()?;
    if let Some(cpu) = cpu {
        host = host.pin(cpu);
    }
    let node = common::node(env.dir(), name).host(host).tls();
    Some(node.args(extra.iter().copied()).start())
}

/// Two nodes in their own test hosts, each daemon pinned to its own CPU
/// (a one-core node), made builder `pair`: `a` reached over its unix
/// socket, `c` over mutual TLS. `None` after `skip_or_fail` without test
/// hosts.
fn pinned_pair(env: &Client) -> Option<(Node, Node)> {
    let a = host_node(env, "a", Some(0), &[])?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let c = host_node(env, "c", Some(1 % cpus), &[])?;
    env.create("pair", &[a.via_unix(), c.via_tls()]);
    Some((a, c))
}

/// A context whose Dockerfile builds on the build platform from `base`
/// (after `PAUSE` seconds, 0 by default) a file naming the target
/// platform, and copies it into an empty final stage.
fn cross_context(env: &Client, base: &str) -> String {
    env.context(
        "context",
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS build\n\
             ARG TARGETPLATFORM PAUSE=0\n\
             RUN mkdir /out && sleep $PAUSE && echo \"built for $TARGETPLATFORM\" > /out/target\n\
             FROM scratch\n\
             COPY --from=build /out/target /target\n"
        ),
    )
}

/// The platforms of the builds that lose a node.
const FOUR: &str = "linux/amd64,linux/arm64,linux/s390x,linux/ppc64le";

/// Builds [`cross_context`] `ctx` with a 3 s pause for [`FOUR`] on builder
/// `pair`, pushed as `tag`; calls `stop` once node pair1 runs its RUN step.
/// Returns the client's exit code and standard error lines.
fn pair1_lost_mid_build(
    env: &Client,
    ctx: &str,
    tag: &str,
    registry: &str,
    stop: impl FnOnce(),
) -> (i32, Vec<String>) {
    let mut client = env
        .kb(["--build-arg", "PAUSE=3", ctx])
        .builder("pair")
        .platform(FOUR)
        .push_to(tag, registry)
        .plain()
        .spawn();
    client.wait_line(&["[node pair1] [", "RUN mkdir /out && sleep 3"]);
    stop();
    client.finish()
}

/// A registry every test host reaches (on `host`'s gateway address, which
/// the other hosts reach through their own default route), holding the
/// busybox fixture as `HOST/base/busybox:1` for `platforms`, pushed by the
/// local builder. `None` after `skip_or_fail` without the fixtures.
fn registry_with_base(
    env: &Client,
    host: &Host,
    platforms: &str,
) -> Option<(TestRegistry, String)> {
    let reg = TestRegistry::start_on(host.gateway()).expect("start docker-registry");
    let ctx = common::busybox_context()?;
    let base = format!("{}/base/busybox:1", reg.host());
    env.kb([ctx])
        .builder("local")
        .platform(platforms)
        .push_to(&base, &reg.host())
        .quiet()
        .ok();
    Some((reg, base))
}

/// The digests tag `tag` of `repo` has ever named, from the registry's
/// storage (its tag index keeps each one): one entry for a tag written
/// once, none for a tag never written.
fn tag_history(reg: &TestRegistry, repo: &str, tag: &str) -> Vec<String> {
    let dir = reg
        .storage()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags")
        .join(tag)
        .join("index/sha256");
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| {
                format!(
                    "sha256:{}",
                    e.expect("tag index entry").file_name().to_string_lossy()
                )
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    }
}

/// The platforms of a pushed index, in order.
fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    common::index_entries(index)
        .into_iter()
        .map(|(platform, _)| platform)
        .collect()
}

/// Asserts the build's summary line (`=> built ...`) names both nodes of
/// builder `pair`.
fn assert_split_over_the_pair(stderr: &str) {
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("=> built "))
        .unwrap_or_default();
    assert!(
        summary.contains("on node pair0") && summary.contains("on node pair1"),
        "split over both nodes:\n{stderr}"
    );
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
    let env = common::client();
    let Some(a) = host_node(&env, "a", None, &[]) else {
        return;
    };
    let Some(b) = host_node(&env, "b", None, &["--platform", "linux/arm64,linux/arm/v7"]) else {
        return;
    };
    env.create("mix", &[a.via_tls(), b.via_tls()]);

    // ls shows both nodes, running, with their own platforms.
    let ls = env.kb(["ls", "--format", "json"]).json();
    let nodes = builder(&ls, "mix")["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(nodes.len(), 2, "{ls:#}");
    let here = kbuild_serve::platforms(None);
    let host_native: Vec<String> = here.native.iter().map(|p| p.to_string()).collect();
    assert_eq!(nodes[0]["name"], "mix0");
    assert_eq!(nodes[0]["endpoint"], a.tcp());
    assert_eq!(nodes[0]["status"], "running", "{ls:#}");
    assert_eq!(strings(&nodes[0]["native_platforms"]), host_native);
    assert_eq!(nodes[1]["name"], "mix1");
    assert_eq!(nodes[1]["endpoint"], b.tcp());
    assert_eq!(nodes[1]["status"], "running", "{ls:#}");
    assert_eq!(
        strings(&nodes[1]["native_platforms"]),
        ["linux/arm64", "linux/arm/v7"]
    );
    let table = env.kb(["ls"]).ok().stdout;
    for (node, endpoint) in [("mix0", a.tcp()), ("mix1", b.tcp())] {
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{table}"));
        assert!(row.contains(endpoint) && row.contains("running"), "{table}");
    }

    // RUN steps on every platform: each goes to the node that runs it natively.
    let ctx = env.context("context", "FROM busybox\nRUN uname -m > /m\n");
    let platforms = "linux/amd64,linux/386,linux/arm64,linux/arm/v7";
    let dry = env
        .kb(["--dry-run=json", &ctx])
        .builder("mix")
        .platform(platforms)
        .json();
    let to_a = |p: &str| {
        (
            p.to_string(),
            "mix0".into(),
            a.tcp().to_string(),
            "native".into(),
        )
    };
    let to_b = |p: &str| {
        (
            p.to_string(),
            "mix1".into(),
            b.tcp().to_string(),
            "native".into(),
        )
    };
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
        .kb(["--dry-run", &ctx])
        .builder("mix")
        .platform(platforms)
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
            vec!["linux/amd64", "mix0", a.tcp(), "native"],
            vec!["linux/386", "mix0", a.tcp(), "native"],
            vec!["linux/arm64", "mix1", b.tcp(), "native"],
            vec!["linux/arm/v7", "mix1", b.tcp(), "native"],
        ],
        "{text}"
    );
    assert!(text.contains("builder mix:"), "{text}");

    // The real build: each platform's RUN on its node, one index pushed.
    let Some((reg, base)) = registry_with_base(&env, a.host(), platforms) else {
        return;
    };
    let insecure = reg.host();
    let ctx = env.context("context", &format!("FROM {base}\nRUN uname -m > /m\n"));
    let tag = format!("{}/mix/app:1", reg.host());
    let out = env
        .kb([&ctx])
        .builder("mix")
        .platform(platforms)
        .push_to(&tag, &insecure)
        .plain()
        .ok();
    for (platform, node) in [
        ("linux/amd64", "mix0"),
        ("linux/386", "mix0"),
        ("linux/arm64", "mix1"),
        ("linux/arm/v7", "mix1"),
    ] {
        assert!(
            out.stderr
                .contains(&format!("{platform} → node {node} (native)")),
            "{}",
            out.stderr
        );
        // Its RUN step ran there.
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&format!("[node {node}] [{platform}"))
                    && l.contains("RUN uname -m")),
            "{platform} on {node}: {}",
            out.stderr
        );
        let other = if node == "mix0" { "mix1" } else { "mix0" };
        assert!(
            !out.stderr
                .lines()
                .any(|l| l.contains(&format!("[node {other}] [{platform}"))),
            "{platform} also on {other}: {}",
            out.stderr
        );
    }
    let index = common::skopeo_raw(&tag);
    assert_eq!(
        index_platforms(&index),
        ["linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7"]
    );
    let unames: std::collections::BTreeMap<String, String> =
        common::last_layer_file(env.dir(), &tag, "m")
            .into_iter()
            .collect();
    assert_eq!(unames["linux/amd64"], "x86_64", "{unames:?}");
    assert_eq!(unames["linux/arm64"], "aarch64", "{unames:?}");
    assert!(unames["linux/arm/v7"].starts_with("armv7"), "{unames:?}");
    assert!(
        unames["linux/386"].starts_with('i') && unames["linux/386"].ends_with("86"),
        "{unames:?}"
    );
    assert_eq!(tag_history(&reg, "mix/app", "1").len(), 1);

    // A RUN failing on one node fails the build: no index, no tag, and the
    // error names the node and the platform.
    let ctx = env.context(
        "context",
        &format!(
            "FROM {base}\nARG TARGETARCH\nRUN if [ \"$TARGETARCH\" = arm64 ]; then echo broken >&2; exit 3; fi; sleep 1\n"
        ),
    );
    let failing = format!("{}/mix/fail:1", reg.host());
    let out = env
        .kb([&ctx])
        .builder("mix")
        .platform("linux/amd64,linux/arm64")
        .push_to(&failing, &insecure)
        .plain()
        .fails();
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: node mix1 of builder mix failed building linux/arm64: ")
            && line.ends_with("nothing was tagged"),
        "{}",
        out.stderr
    );
    assert!(!common::registry_has(&failing), "{failing} was tagged");
    assert!(tag_history(&reg, "mix/fail", "1").is_empty());

    // Node mix0 killed mid-build, and no other node builds linux/amd64
    // (mix1 neither runs nor emulates it): a clear error, no tag.
    let ctx = env.context(
        "context",
        &format!("FROM {base}\nRUN sleep 3 && uname -m > /m\n"),
    );
    let lost = format!("{}/mix/lost:1", reg.host());
    let mut client = env
        .kb([&ctx])
        .builder("mix")
        .platform("linux/amd64,linux/arm64")
        .push_to(&lost, &insecure)
        .plain()
        .spawn();
    client.wait_line(&["[node mix0] [linux/amd64", "RUN sleep 3"]);
    a.kill();
    let (code, seen) = client.finish();
    let stderr = seen.join("\n");
    assert_ne!(code, 0, "{stderr}");
    let line = seen.last().cloned().unwrap_or_default();
    assert!(
        line.starts_with("error: lost the connection to builder mix (")
            && line.contains(&format!("at {}) during the build", a.tcp()))
            && line.contains("(node mix0, building linux/amd64); no other node can build them: no node of builder mix can build linux/amd64: mix1 runs linux/arm64, linux/arm/v7 natively")
            && line.ends_with("nothing was tagged"),
        "{stderr}"
    );
    assert!(!common::registry_has(&lost), "{lost} was tagged");
    assert!(tag_history(&reg, "mix/lost", "1").is_empty());
    drop(b);
    drop(a);
}

#[test]
fn cross_dockerfile_spreads_over_two_amd64_nodes() {
    let env = common::client();
    let Some((a, c)) = pinned_pair(&env) else {
        return;
    };
    let ls = env.kb(["ls", "--format", "json"]).json();
    for n in builder(&ls, "pair")["nodes"].as_array().expect("nodes") {
        assert_eq!(n["status"], "running", "{ls:#}");
        assert_eq!(n["load"]["cpus"], 1, "pinned to one CPU: {ls:#}");
    }

    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    let dockerfile = hello.join("Dockerfile.cross");
    let dry_run = |mode: &str| {
        env.kb([mode, "-f"])
            .args([&dockerfile, &hello])
            .builder("pair")
            .platform(SEVEN)
            .ok()
    };
    let dry = dry_run("--dry-run=json").json();
    let got = assignments(&dry);
    assert_eq!(got.len(), 7, "{:#}", dry["schedule"]);
    let host = kbuild_platform::Platform::host().to_string();
    let native = kbuild_serve::platforms(None).native;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for (platform, node, endpoint, reason) in &got {
        *per_node.entry(node.clone()).or_default() += 1;
        let expected_endpoint = if node == "pair0" { a.unix() } else { c.tcp() };
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
    let text = dry_run("--dry-run").stdout;
    assert!(
        text.lines()
            .any(|l| l.contains("linux/s390x") && l.ends_with(&format!("cross (runs on {host})"))),
        "{text}"
    );

    // The real build of a cross Dockerfile for seven platforms, split over
    // both nodes, gives the index a one-node build of it gives.
    let Some((reg, base)) = registry_with_base(&env, a.host(), &host) else {
        return;
    };
    let insecure = reg.host();
    let ctx = cross_context(&env, &base);
    env.create("one", &[a.via_unix()]);
    let digest_of = |stderr: &str| -> String {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("=> built "))
            .unwrap_or_else(|| panic!("no summary: {stderr}"));
        line.rsplit(": ").next().unwrap_or_default().to_string()
    };
    let build = |builder: &str, tag: &str| -> Run {
        env.kb([&ctx])
            .builder(builder)
            .platform(SEVEN)
            .push_to(tag, &insecure)
            .plain()
            .epoch()
            .ok()
    };
    let split_tag = format!("{}/cross/split:1", reg.host());
    let split = build("pair", &split_tag);
    let one_tag = format!("{}/cross/one:1", reg.host());
    let one = build("one", &one_tag);
    assert_split_over_the_pair(&split.stderr);
    let digest = digest_of(&split.stderr);
    assert!(digest.starts_with("sha256:"), "{}", split.stderr);
    assert_eq!(
        digest,
        digest_of(&one.stderr),
        "{}\n{}",
        split.stderr,
        one.stderr
    );
    let index = common::skopeo_raw(&split_tag);
    assert_eq!(index, common::skopeo_raw(&one_tag));
    assert_eq!(
        index_platforms(&index),
        SEVEN.split(',').collect::<Vec<_>>()
    );
    for (platform, text) in common::last_layer_file(env.dir(), &split_tag, "target") {
        assert_eq!(text, format!("built for {platform}"));
    }

    // Node pair1's daemon killed mid-build: its platforms go to pair0 once,
    // the build succeeds, and the tag is written once.
    let retried = format!("{}/cross/retried:1", reg.host());
    let (code, seen) = pair1_lost_mid_build(&env, &ctx, &retried, &insecure, || c.kill());
    let stderr = seen.join("\n");
    assert_eq!(code, 0, "{stderr}");
    let moved: Vec<&str> = seen
        .iter()
        .filter(|l| l.contains("→ node pair0") && l.contains("retried after losing node pair1"))
        .map(String::as_str)
        .collect();
    assert!(!moved.is_empty(), "{stderr}");
    assert!(
        seen.iter()
            .any(|l| l.contains("lost node pair1: lost the connection to builder pair")),
        "{stderr}"
    );
    assert_eq!(tag_history(&reg, "cross/retried", "1").len(), 1);
    let index = common::skopeo_raw(&retried);
    assert_eq!(index_platforms(&index), FOUR.split(',').collect::<Vec<_>>());
}

#[test]
fn a_tls_client_without_a_certificate_is_refused_by_the_host() {
    let env = common::client();
    let Some(a) = host_node(&env, "a", None, &[]) else {
        return;
    };
    let cacert = format!("cacert={}", a.pki_file("ca.pem").display());
    env.kb([
        "create",
        "nocert",
        "--endpoint",
        a.tcp(),
        "--driver-opt",
        &cacert,
    ])
    .ok();
    let ls = env.kb(["ls", "--format", "json"]).json();
    let node = &builder(&ls, "nocert")["nodes"][0];
    assert_eq!(node["status"], "unreachable", "{ls:#}");
    let error = node["error"].as_str().expect("an error");
    assert!(
        error.starts_with(&format!(
            "builder nocert at {} refused the connection: it requires a client certificate",
            a.tcp()
        )),
        "{error}"
    );
    // A dry run over that builder stops with the same reason, on one line.
    let ctx = env.context("context", "FROM busybox\nRUN true\n");
    let out = env
        .kb(["--dry-run", &ctx])
        .builder("nocert")
        .platform("linux/amd64")
        .fails();
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!(
            "error: builder nocert has no reachable node: builder nocert at {} refused the connection: it requires a client certificate",
            a.tcp()
        )),
        "{line}"
    );
    // The daemon saw the refused handshakes and still serves.
    env.create("ok", &[a.via_tls()]);
    let ls = env.kb(["ls", "--format", "json"]).json();
    assert_eq!(builder(&ls, "ok")["nodes"][0]["status"], "running");
}

#[test]
fn dead_and_silent_nodes_give_a_clear_error_within_10_seconds() {
    let env = common::client();
    let Some(a) = host_node(&env, "a", None, &[]) else {
        return;
    };
    let Some(mut d) = host_node(&env, "d", None, &[]) else {
        return;
    };
    // A listener in host d that accepts connections and never answers.
    let silent_port = "4433";
    let silent_ip = d.tcp()["tcp://".len()..]
        .rsplit_once(':')
        .expect("host:port")
        .0
        .to_string();
    let mut silent = d
        .host()
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
            .host()
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
    env.create("two", &[a.via_tls(), d.via_tls()]);
    env.kb(["create", "silent", "--endpoint", &silent_endpoint])
        .ok();
    let dead_endpoint = d.tcp().to_string();
    let (code, stderr) = d.terminate();
    assert_eq!(code, 0, "{stderr}");

    let ctx = env.context("context", "FROM busybox\nRUN true\n");
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = env.kb(args).run();
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
    env.kb([
        "create",
        "dead",
        "--endpoint",
        &dead_endpoint,
        "--driver-opt",
        &d.driver_opt(),
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

/// File outputs of a build split over two nodes: one OCI layout (a file,
/// and on standard output) holding the merged index and every platform's
/// blobs, one directory or tarball per platform, byte for byte what a
/// one-node build writes; a docker archive (one platform) is refused.
#[test]
fn split_file_outputs_are_those_of_one_node() {
    let env = common::client();
    let Some((a, _c)) = pinned_pair(&env) else {
        return;
    };
    env.create("one", &[a.via_unix()]);
    let host = kbuild_platform::Platform::host().to_string();
    let Some((reg, base)) = registry_with_base(&env, a.host(), &host) else {
        return;
    };
    let insecure = reg.host();
    let ctx = env.context(
        "context",
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS build\n\
             ARG TARGETPLATFORM\n\
             RUN mkdir /out && echo \"built for $TARGETPLATFORM\" > /out/target\n\
             FROM scratch\n\
             COPY --from=build /out/target /target\n"
        ),
    );
    let out = |b: &str, f: &str| env.path(&format!("{b}-{f}")).display().to_string();
    let build = |builder: &str, extra: &[&str]| -> Run {
        env.kb([
            "-t",
            "example.test/split/app:1",
            "--insecure-registry",
            &insecure,
        ])
        .builder(builder)
        .platform(FOUR)
        .plain()
        .args(extra)
        .arg(&ctx)
        .epoch()
        .run()
    };
    let outputs = |b: &str| -> Vec<String> {
        vec![
            "-o".into(),
            format!("type=oci,dest={}", out(b, "oci.tar")),
            "-o".into(),
            format!("type=tar,dest={}", out(b, "fs.tar")),
            "-o".into(),
            format!("type=local,dest={}", out(b, "fs")),
        ]
    };
    let split_args = outputs("pair");
    let split = build(
        "pair",
        &split_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .ok();
    assert_split_over_the_pair(&split.stderr);
    let one_args = outputs("one");
    build(
        "one",
        &one_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .ok();
    let bytes = |p: String| std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let oci = bytes(out("pair", "oci.tar"));
    assert_eq!(oci, bytes(out("one", "oci.tar")), "the OCI layouts differ");
    assert_eq!(
        bytes(out("pair", "fs.tar")),
        bytes(out("one", "fs.tar")),
        "the filesystem tarballs differ"
    );
    // The layout holds the merged index and each platform's blobs.
    let layout = env.path("layout");
    std::fs::create_dir_all(&layout).expect("layout dir");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(out("pair", "oci.tar"))
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("run tar");
    assert!(untar.success());
    let manifests = common::layout_manifests(&layout);
    let platforms: Vec<String> = manifests.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(platforms, FOUR.split(',').collect::<Vec<_>>());
    for (platform, manifest) in &manifests {
        for l in manifest["layers"].as_array().expect("layers") {
            let blob = common::layout_blob(&layout, l["digest"].as_str().expect("digest"));
            let text = Command::new("tar")
                .arg("-xOf")
                .arg(&blob)
                .arg("target")
                .output()
                .expect("run tar");
            assert_eq!(
                String::from_utf8_lossy(&text.stdout).trim(),
                format!("built for {platform}")
            );
        }
    }
    // One directory per platform, as from one node.
    for p in FOUR.split(',') {
        let file = Path::new(&out("pair", "fs"))
            .join(p.replace('/', "_"))
            .join("target");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
            format!("built for {p}\n")
        );
    }
    let diff = Command::new("diff")
        .arg("-r")
        .arg(out("pair", "fs"))
        .arg(out("one", "fs"))
        .output()
        .expect("run diff");
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // `-o type=oci,dest=-`: the same layout on standard output.
    let stdout = build("pair", &["-o", "type=oci,dest=-"]).ok().stdout;
    assert_eq!(stdout.len(), String::from_utf8_lossy(&oci).len());
    assert!(
        stdout == String::from_utf8_lossy(&oci),
        "the layout on standard output differs"
    );

    // `-o -` (the filesystems as a tarball), quiet: only the archive.
    let stdout = build("pair", &["-o", "-", "-q"]).ok().stdout;
    let fs_tar = bytes(out("one", "fs.tar"));
    assert_eq!(stdout.len(), String::from_utf8_lossy(&fs_tar).len());
    assert!(
        stdout == String::from_utf8_lossy(&fs_tar),
        "the tarball on standard output differs"
    );

    // A docker archive holds one platform.
    let docker = format!("type=docker,dest={}", out("pair", "docker.tar"));
    let refused = build("pair", &["-o", &docker]).fails();
    assert!(
        refused
            .stderr
            .contains("-o type=docker and --load hold one platform, but --platform asks for"),
        "{}",
        refused.stderr
    );
    assert!(!Path::new(&out("pair", "docker.tar")).exists());
}

/// A node's daemon stopped with SIGTERM mid-build says so (not a build
/// failure): its platforms are built once more on the other node, the
/// build succeeds and the tag is written once.
#[test]
fn a_node_stopped_with_sigterm_is_lost_not_failed() {
    let env = common::client();
    let Some((a, c)) = pinned_pair(&env) else {
        return;
    };
    let host = kbuild_platform::Platform::host().to_string();
    let Some((reg, base)) = registry_with_base(&env, a.host(), &host) else {
        return;
    };
    let insecure = reg.host();
    let ctx = cross_context(&env, &base);
    let tag = format!("{}/stopped/app:1", reg.host());
    let (code, seen) = pair1_lost_mid_build(&env, &ctx, &tag, &insecure, || c.signal("TERM"));
    let stderr = seen.join("\n");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        seen.iter()
            .any(|l| l.contains("lost node pair1: builder pair (")
                && l.contains("is shutting down and cancelled the build")),
        "{stderr}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("→ node pair0") && l.contains("retried after losing node pair1")),
        "{stderr}"
    );
    assert_eq!(tag_history(&reg, "stopped/app", "1").len(), 1);
    let index = common::skopeo_raw(&tag);
    assert_eq!(index_platforms(&index), FOUR.split(',').collect::<Vec<_>>());
    for (platform, text) in common::last_layer_file(env.dir(), &tag, "target") {
        assert_eq!(text, format!("built for {platform}"));
    }
}

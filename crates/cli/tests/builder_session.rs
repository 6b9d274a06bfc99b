//! What a builder daemon is handed and what it keeps: registry tokens
//! scoped to what it needs instead of the client's login (the daemon on a
//! test host of its own, so every token request shows where it came
//! from), and `prune --builder` over `Builder.Prune` on every node.

mod common;

use common::{bin, require_root, unique, write, Client};
use kbuild_testkit::daemon::Daemon;
use kbuild_testkit::netns::Host;
use kbuild_testkit::registry::TestRegistry;
use kbuild_testkit::token::{docker_config, TokenServer};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// The scopes of each token the daemon's log says it was handed.
fn tokens_handed(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("credentials from the client: a registry token"))
        .filter_map(|l| {
            let at = l.find("scopes=")? + "scopes=".len();
            let end = l[at..].find(" expires_in=")? + at;
            Some(l[at..end].to_string())
        })
        .collect()
}

/// A push through a daemon on another host to a registry that wants Bearer
/// tokens: the daemon gets tokens from the client for exactly the scopes
/// it needs (the base image's pull, the target's push, the mount of the
/// base's layer from the base repository), never the password, and never
/// talks to the token server itself.
#[test]
fn a_daemon_gets_scoped_tokens_and_never_the_login() {
    if !require_root() {
        return;
    }
    let Some(host) = Host::create() else { return };
    let env = common::client();
    let gateway = host.gateway();
    let (user, password) = ("tokenuser", unique("tokenpw"));
    let keys = env.path("token-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (tokens, files) = match TokenServer::start(gateway, &keys, user, &password) {
        Ok(t) => t,
        Err(e) => {
            kbuild_testkit::fixtures::skip_or_fail(&format!("token server: {e}"));
            return;
        }
    };
    let registry = match TestRegistry::start_with_token_auth_on(gateway, &files) {
        Ok(r) => r,
        Err(e) => {
            kbuild_testkit::fixtures::skip_or_fail(&format!("registry: {e}"));
            return;
        }
    };
    let reg = registry.host();
    // The daemon, logging what kind of credentials it is handed.
    let addr = format!("unix://{}", env.path("tokens.sock").display());
    let mut cmd = host.command("env");
    cmd.arg("KUBECTL_BUILD_LOG=kbuild_serve=debug,kbuild_registry=debug")
        .arg(bin())
        .arg("--root")
        .arg(env.path("daemon-root"))
        .args(["serve", "--addr", &addr]);
    let mut daemon = Daemon::spawn(cmd);
    daemon.listening("unix://");
    env.kb(["create", "tokens", "--endpoint", &addr]).ok();

    let (auth, config) = docker_config(&reg, user, &password);
    let docker_config = env.path("docker-config");
    write(&docker_config.join("config.json"), &config);
    let docker = ("DOCKER_CONFIG", docker_config.to_str().unwrap());
    // The base image, pushed by the client with the embedded builder.
    let base_ctx = env.path("base");
    write(
        &base_ctx.join("Dockerfile"),
        "FROM scratch\nCOPY base.txt /\n",
    );
    write(&base_ctx.join("base.txt"), "the base layer\n");
    let base = format!("{reg}/bearer/base:1");
    env.kb([
        base_ctx.to_str().unwrap(),
        "--builder",
        "local",
        "-t",
        &base,
        "--push",
        "--insecure-registry",
        &reg,
        "--progress",
        "quiet",
    ])
    .envs(&[docker])
    .ok();
    let before = tokens.requests().len();
    // The build through the daemon: pulls the base, pushes the image.
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nCOPY hello /\n"),
    );
    write(&ctx.join("hello"), "hello over scoped tokens\n");
    let app = format!("{reg}/bearer/app:1");
    let r = env
        .kb([
            ctx.to_str().unwrap(),
            "--builder",
            "tokens",
            "-t",
            &app,
            "--push",
            "--insecure-registry",
            &reg,
        ])
        .envs(&[docker])
        .ok();
    assert!(
        r.stderr.contains(&format!("=> pushed {app}@sha256:")),
        "{}",
        r.stderr
    );
    let after = tokens.requests().len();
    // (c) skopeo reads it.
    common::assert_readable_with(&app, user, &password);
    let (_, log) = daemon.terminate();

    // (a) Every token request came from the client's address (the gateway
    // side of the host's link) with the client's credentials; none from
    // the daemon's host.
    let requests = tokens.requests();
    assert!(requests.len() > before, "{requests:?}");
    for seen in &requests {
        assert_eq!(seen.peer, IpAddr::V4(gateway), "{seen:?}");
        assert_ne!(seen.peer, IpAddr::V4(host.ip()), "{seen:?}");
        assert!(seen.granted, "{seen:?}");
    }
    // The daemon was handed tokens and no login; the password and the
    // encoded login are in none of its files and not in its log.
    let handed = tokens_handed(&log);
    assert!(!handed.is_empty(), "{log}");
    assert!(
        !log.contains("credentials from the client: a login"),
        "{log}"
    );
    assert!(!log.contains(&password) && !log.contains(&auth), "{log}");
    assert!(common::files_containing(&env.path("daemon-root"), password.as_bytes()).is_empty());
    assert!(common::files_containing(&env.path("daemon-root"), auth.as_bytes()).is_empty());

    // (b) The tokens the daemon used covered only what it needed: pull of
    // the base, push of the target, and the mount of the base's layer
    // (push on the target, pull on the base), each asked for as such.
    let needed = [
        "repository:bearer/app:pull,push",
        "repository:bearer/app:pull,push repository:bearer/base:pull",
        "repository:bearer/base:pull",
    ];
    // Each asked for once (tokens are cached per scope for their lifetime).
    let mut sorted = handed.clone();
    sorted.sort();
    assert_eq!(sorted, needed, "{log}");
    // And the token server granted nothing wider during that build.
    for seen in &requests[before..after] {
        for s in &seen.scopes {
            assert!(
                [
                    "repository:bearer/base:pull",
                    "repository:bearer/app:pull,push"
                ]
                .contains(&s.as_str()),
                "{s}: {seen:?}"
            );
        }
    }
}

/// A daemon on a unix socket with its own store.
fn daemon(env: &Client, name: &str, keep_contexts: &str) -> (Daemon, String) {
    let addr = format!("unix://{}", env.path(&format!("{name}.sock")).display());
    let mut d = Daemon::start(
        &bin(),
        &env.path(&format!("{name}-root")),
        &["--addr", &addr, "--keep-contexts", keep_contexts],
    );
    d.listening("unix://");
    (d, addr)
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// `prune --builder` prunes every node of a remote builder, each report
/// saying what it freed; the contexts a daemon keeps beyond
/// `--keep-contexts` go with their files and checksum caches (a node
/// running a build refuses: see `remote.rs`).
#[test]
fn prune_builder_prunes_every_node() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let (one, one_addr) = daemon(&env, "one", "4");
    let (_two, two_addr) = daemon(&env, "two", "4");
    env.kb(["create", "one", "--endpoint", &one_addr]).ok();
    env.kb(["create", "two", "--endpoint", &two_addr]).ok();
    env.kb(["create", "both", "--endpoint", &one_addr]).ok();
    env.kb(["create", "both", "--append", "--endpoint", &two_addr])
        .ok();
    // Two contexts on node one, one on node two; results only in the
    // builders' caches.
    for (i, builder) in [(0, "one"), (1, "one"), (2, "two")] {
        let ctx = env.path(&format!("ctx{i}"));
        write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY data /\n");
        write(
            &ctx.join("data"),
            &format!("context {i} {}\n", "x".repeat(4096)),
        );
        env.kb([
            ctx.to_str().unwrap(),
            "--builder",
            builder,
            "--progress",
            "quiet",
        ])
        .ok();
    }
    let one_root = env.path("one-root");
    assert_eq!(entries(&one_root.join("contexts")), 2);
    assert_eq!(entries(&one_root.join("checksums")), 2);
    // Node one now keeps one context.
    let _ = one.terminate();
    let (_one, _) = daemon(&env, "one", "1");

    let r = env.kb(["prune", "--builder", "both", "--all"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    for node in ["both0", "both1"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{node}: ")))
            .unwrap_or_else(|| panic!("no line for {node}: {}", r.stdout));
        // Each node freed its blobs (the cache records went with --all).
        assert!(
            line.contains("removed ") && !line.contains("removed 0 blobs"),
            "{line}"
        );
        assert!(line.contains("cache records"), "{line}");
    }
    let one_line = lines.iter().find(|l| l.starts_with("both0: ")).unwrap();
    assert!(
        one_line.contains("1 client contexts") && one_line.contains("1 checksum caches"),
        "{one_line}"
    );
    assert!(
        lines[2].starts_with("builder both: 2 of 2 nodes pruned"),
        "{}",
        r.stdout
    );
    assert_eq!(entries(&one_root.join("contexts")), 1);
    assert_eq!(entries(&one_root.join("checksums")), 1);
    // Nothing is left to prune.
    let again = env.kb(["prune", "--builder", "two", "--all"]).ok();
    assert!(again.stdout.contains("removed 0 blobs"), "{}", again.stdout);
}

/// A client from before registry tokens answers the daemon's Bearer
/// question with its login (it ignores the challenge): the daemon then
/// gets the tokens itself with that login, and the push works.
#[test]
fn a_client_without_token_answers_still_pushes_with_its_login() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let (user, password) = ("olduser", unique("oldpw"));
    let keys = env.path("token-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (tokens, files) =
        match TokenServer::start(std::net::Ipv4Addr::LOCALHOST, &keys, user, &password) {
            Ok(t) => t,
            Err(e) => {
                kbuild_testkit::fixtures::skip_or_fail(&format!("token server: {e}"));
                return;
            }
        };
    let registry = match TestRegistry::start_with_token_auth(&files) {
        Ok(r) => r,
        Err(e) => {
            kbuild_testkit::fixtures::skip_or_fail(&format!("registry: {e}"));
            return;
        }
    };
    let reg = registry.host();
    let addr = format!("unix://{}", env.path("old.sock").display());
    let mut cmd = Command::new("env");
    cmd.arg("KUBECTL_BUILD_LOG=kbuild_serve=debug")
        .arg(bin())
        .arg("--root")
        .arg(env.path("daemon-root"))
        .args(["serve", "--addr", &addr]);
    let mut daemon = Daemon::spawn(cmd);
    daemon.listening("unix://");
    let node = kbuild_driver::config::Node {
        name: "old0".into(),
        endpoint: addr,
        platforms: Vec::new(),
        tls: Default::default(),
    };
    let app = format!("{reg}/old/app:1");
    let start = kbuild_proto::v1::BuildStart {
        dockerfile: b"FROM scratch\nLABEL made.by=an-older-client\n".to_vec(),
        dockerfile_path: "Dockerfile".into(),
        platforms: vec![kbuild_proto::v1::Platform::from(
            &kbuild_platform::Platform::parse("linux/amd64").unwrap(),
        )],
        outputs: vec![format!("type=image,\"name={app}\",push=true")],
        ..Default::default()
    };
    let login = kbuild_registry::RegistryLogin {
        username: Some(user.to_string()),
        password: Some(password.clone()),
        identity_token: None,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let done = rt
        .block_on(kbuild_driver::session::build(
            "old",
            &node,
            &kbuild_driver::Direct,
            start,
            None,
            std::sync::Arc::new(common::CredentialsOnly(move |_: &str| {
                Ok(Some(login.clone()))
            })),
            std::future::pending::<()>(),
        ))
        .expect("the session ends with BuildDone");
    assert_eq!(done.error, "", "{done:?}");
    let (_, log) = daemon.terminate();
    assert!(
        log.contains("credentials from the client: a login (a client without token answers)"),
        "{log}"
    );
    assert!(!log.contains("a registry token"), "{log}");
    // The daemon fetched the tokens itself, with the login it was handed.
    assert!(tokens.requests().iter().all(|s| s.granted));
    assert!(!tokens.requests().is_empty());
    common::assert_readable_with(&app, user, &password);
}

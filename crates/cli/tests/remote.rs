//! Builds sent to a real `kubectl-build serve` daemon (protocols 2 and 3, the
//! Build session): the same outputs as local builds, the context synced by
//! digest, credentials and secrets that stay on the client, Ctrl-C and a
//! daemon that dies mid-build.

mod common;

use common::{busybox_context, require_root, serve_builder, unique, write, Client, Run};
use kbuild_testkit::client::Running;
use kbuild_testkit::node::Node;
use kbuild_testkit::registry::TestRegistry;
use kbuild_testkit::token::docker_config;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The busybox fixture as `kbuild.test/busybox:latest` for `platforms`,
/// built into both stores with SOURCE_DATE_EPOCH: once locally, once
/// through `builder` (`-o type=image` keeps it in the daemon's store). The
/// two root digests must be equal.
fn base_image(env: &Client, builder: &str, platforms: &str) -> Option<()> {
    let ctx = busybox_context()?;
    let build = |b: &str| -> Run {
        env.kb([ctx.as_os_str()])
            .platform(platforms)
            .args(["-t", common::BUSYBOX, "-o", "type=image"])
            .quiet()
            .builder(b)
            .epoch()
            .ok()
    };
    let (local, remote) = (build("local"), build(builder));
    assert_eq!(local.stdout.trim(), remote.stdout.trim());
    assert!(
        local.stdout.trim().starts_with("sha256:"),
        "{}",
        local.stdout
    );
    Some(())
}

const DOCKERFILE: &str = r#"FROM kbuild.test/busybox:latest AS build
ARG TARGETARCH
COPY app/ /src/
RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok > /secret.sum && echo "$TARGETARCH" > /arch && cat /src/a.txt >> /arch
RUN <<EOF
set -e
mkdir -p /out
uname -m > /out/uname
ls /src > /out/files
EOF

FROM kbuild.test/busybox:latest
COPY --from=build /out/ /out/
COPY --from=build /arch /secret.sum /
LABEL stage=final
"#;

/// A context with files .dockerignore leaves out.
fn context(dir: &Path) {
    write(&dir.join("Dockerfile"), DOCKERFILE);
    write(&dir.join(".dockerignore"), "**/*.log\nsecret-dir\n");
    write(&dir.join("app/a.txt"), "hello\n");
    write(&dir.join("app/b/c.txt"), "nested\n");
    write(&dir.join("app/debug.log"), "must not be sent\n");
    write(&dir.join("secret-dir/key"), "must not be sent either\n");
    std::os::unix::fs::symlink("a.txt", dir.join("app/link")).unwrap();
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn builds_through_a_daemon_match_local_builds() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "remote1", &[]);
    let platforms = "linux/amd64,linux/arm64";
    if base_image(&env, "remote1", platforms).is_none() {
        return;
    }
    let ctx = env.path("ctx");
    context(&ctx);
    let secret_value = unique("remote-secret");
    let secret_file = env.path("tok");
    std::fs::write(&secret_file, &secret_value).unwrap();
    let secret = format!("id=tok,src={}", secret_file.display());
    let build = |builder: &str, name: &str| -> (Vec<u8>, Vec<u8>, PathBuf) {
        let oci = env.path(&format!("{name}.oci.tar"));
        let tar = env.path(&format!("{name}.fs.tar"));
        let local = env.path(&format!("{name}.dir"));
        let r = env
            .kb([ctx.to_str().unwrap(), "--secret", &secret])
            .builder(builder)
            .platform(platforms)
            .plain()
            .output(format!("type=oci,dest={}", oci.display()))
            .epoch()
            .ok();
        assert!(
            r.stderr.contains("RUN <<EOF") || r.stderr.contains("RUN"),
            "{}",
            r.stderr
        );
        let layout = env.path(&format!("{name}.ocidir"));
        for (spec, _) in [
            (format!("type=tar,dest={}", tar.display()), ()),
            (format!("type=local,dest={}", local.display()), ()),
            (format!("type=oci,tar=false,dest={}", layout.display()), ()),
        ] {
            env.kb([ctx.to_str().unwrap(), "--secret", &secret])
                .builder(builder)
                .platform(platforms)
                .quiet()
                .output(&spec)
                .epoch()
                .ok();
        }
        (read(&oci), read(&tar), local)
    };
    let (local_oci, local_tar, local_dir) = build("local", "local");
    let (remote_oci, remote_tar, remote_dir) = build("remote1", "remote");
    assert!(local_oci == remote_oci, "OCI archives differ");
    assert!(local_tar == remote_tar, "filesystem tars differ");
    // `tar=false`: the same layout directory.
    assert!(env.path("remote.ocidir").join("index.json").is_file());
    let diff = Command::new("diff")
        .arg("-r")
        .arg(env.path("local.ocidir"))
        .arg(env.path("remote.ocidir"))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "OCI layout directories differ: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
    for arch in ["linux_amd64", "linux_arm64"] {
        let a = read(&local_dir.join(arch).join("out/files"));
        let b = read(&remote_dir.join(arch).join("out/files"));
        assert_eq!(a, b);
        // .dockerignore applied: the log file never reached the build.
        assert_eq!(String::from_utf8_lossy(&b), "a.txt\nb\nlink\n");
        let uname = String::from_utf8_lossy(&read(&remote_dir.join(arch).join("out/uname")))
            .trim()
            .to_string();
        assert_eq!(
            uname,
            if arch == "linux_amd64" {
                "x86_64"
            } else {
                "aarch64"
            }
        );
    }
    // Nothing ignored was sent, and the secret is nowhere on the daemon.
    let root = daemon.root();
    assert!(common::files_containing(root, b"must not be sent").is_empty());
    assert!(
        common::files_containing(root, secret_value.as_bytes()).is_empty(),
        "the secret was written under the daemon's root"
    );
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains(&secret_value));
    // The client planned (the base image's config from its own store) and
    // the daemon ran the graph.
    assert!(
        stderr.contains("building the client's op graph"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("planning the client's Dockerfile"),
        "{stderr}"
    );
}

#[test]
fn mutual_tls_build_matches_local() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = common::node(env.dir(), "t").tls().start();
    env.create("tls", &[daemon.via_tls()]);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n");
    write(&ctx.join("f/x.txt"), "x\n");
    let out = |b: &str| {
        let dest = env.path(&format!("{b}.tar"));
        env.kb([ctx.to_str().unwrap()])
            .builder(b)
            .quiet()
            .output(format!("type=oci,dest={}", dest.display()))
            .epoch()
            .ok();
        read(&dest)
    };
    assert!(out("local") == out("tls"), "OCI archives differ");
    let docker = |b: &str| {
        let dest = env.path(&format!("{b}.docker.tar"));
        env.kb([ctx.to_str().unwrap(), "-t", "demo:1"])
            .builder(b)
            .quiet()
            .output(format!("type=docker,dest={}", dest.display()))
            .epoch()
            .ok();
        read(&dest)
    };
    assert!(docker("local") == docker("tls"), "docker archives differ");
    let _ = daemon.terminate();
}

/// The daemon's two context lines of the next session: what came and what
/// it wrote into its copy, then the context content it read to compute
/// checksums.
fn context_counters(node: &mut Node) -> (String, String) {
    let sync = node.daemon().wait_for("context: received");
    let hashed = node
        .daemon()
        .wait_for("bytes of context content to compute checksums");
    (sync, hashed)
}

#[test]
fn a_rebuild_with_one_file_changed_sends_one_file() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "sync", &[]);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n");
    for i in 0..20_000 {
        write(
            &ctx.join(format!("d{}/f{i}.txt", i % 20)),
            &format!("file {i}\n"),
        );
    }
    // The image stays in the daemon's store; the last build also writes
    // its files here, to check the copy.
    let out = env.path("out.tar");
    let tar_output = format!("type=tar,dest={}", out.display());
    let build_to = |output: &str| {
        let t = Instant::now();
        let stderr = env
            .kb([ctx.to_str().unwrap()])
            .builder("sync")
            .plain()
            .output(output)
            .epoch()
            .ok()
            .stderr;
        eprintln!("build: {:.2} s", t.elapsed().as_secs_f64());
        stderr
    };
    let build = || build_to("type=image,name=kbuild.test/sync:1");
    let first = build();
    // 20,000 files and the Dockerfile, all different contents, in 20
    // directories; the daemon takes their digests from the client and
    // reads none of them again to compute its cache keys.
    assert!(first.contains("=> context: sent 20001 files"), "{first}");
    let (sync, hashed) = context_counters(&mut daemon);
    assert!(
        sync.contains("context: received 20001 files") && sync.contains("wrote 20021 entries"),
        "{sync}"
    );
    assert!(hashed.contains("read 0 bytes of context"), "{hashed}");
    assert!(hashed.contains("looked up 20001 files"), "{hashed}");
    // Nothing changed: metadata only; the daemon writes nothing into its
    // copy, and takes the COPY's checksum over the copy from the first
    // build (the same manifest, the same copy): it looks at no file.
    let again = build();
    assert!(
        again.contains("=> context: sent 0 files (0 bytes)"),
        "{again}"
    );
    let (sync, hashed) = context_counters(&mut daemon);
    assert!(
        sync.contains("context: received 0 files (0 bytes), wrote 0 entries"),
        "{sync}"
    );
    assert!(hashed.contains("read 0 bytes of context"), "{hashed}");
    assert!(
        hashed.contains("looked up 0 files, 1 checksums remembered"),
        "{hashed}"
    );
    write(&ctx.join("d7/f7.txt"), "changed\n");
    let changed = build();
    assert!(
        changed.contains("=> context: sent 1 files (8 bytes)"),
        "{changed}"
    );
    let (sync, hashed) = context_counters(&mut daemon);
    assert!(
        sync.contains("context: received 1 files (8 bytes), wrote 1 entries"),
        "{sync}"
    );
    // A new copy: its checksum is computed again (from the digests the
    // sync entered, no content read).
    assert!(hashed.contains("read 0 bytes of context"), "{hashed}");
    assert!(
        hashed.contains("looked up 20001 files, 0 checksums remembered"),
        "{hashed}"
    );
    // A removed file is gone from the daemon's copy too; a file whose
    // content the daemon already holds (a copy of another) is not sent.
    std::fs::remove_file(ctx.join("d3/f3.txt")).unwrap();
    std::fs::copy(ctx.join("d4/f4.txt"), ctx.join("d5/copy.txt")).unwrap();
    let moved = build_to(&tar_output);
    assert!(
        moved.contains("=> context: sent 0 files (0 bytes)"),
        "{moved}"
    );
    // The new file, and the two directories whose times changed.
    let (sync, _) = context_counters(&mut daemon);
    assert!(sync.contains("wrote 3 entries"), "{sync}");
    // The daemon's copy of the context is the client's.
    let changed = Command::new("tar")
        .arg("-xOf")
        .arg(&out)
        .arg("ctx/d7/f7.txt")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&changed.stdout), "changed\n");
    let listing = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(!names.contains("ctx/d3/f3.txt\n"), "{names}");
    assert!(names.contains("ctx/d3/f23.txt\n"), "{names}");
    let copy = Command::new("tar")
        .arg("-xOf")
        .arg(&out)
        .arg("ctx/d5/copy.txt")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&copy.stdout), "file 4\n");
}

#[test]
fn push_with_credentials_only_on_the_client() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let user = "builder";
    let password = unique("pw");
    let Some(registry) = kbuild_testkit::fixtures::started(
        "registry",
        TestRegistry::start_with_htpasswd(user, &password),
    ) else {
        return;
    };
    let mut daemon = serve_builder(&env, "push", &[]);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello /\n");
    write(&ctx.join("hello"), "hello\n");
    let host = registry.host();
    let (auth, config) = docker_config(&host, user, &password);
    let secret = env.path("dockerconfig.json");
    write(&secret, &config);
    let reference = format!("{host}/remote/app:1");
    let r = env
        .kb([
            ctx.to_str().unwrap(),
            "--registry-secret",
            &format!("file:{}", secret.display()),
            "-t",
            &reference,
            "--push",
        ])
        .builder("push")
        .env("DOCKER_CONFIG", env.path("no-docker"))
        .ok();
    assert!(
        r.stderr.contains(&format!("=> pushed {reference}@sha256:")),
        "{}",
        r.stderr
    );
    common::assert_readable_with(&reference, user, &password);
    // Without the client's answer the daemon has no credentials: nothing
    // of them in its store or its logs.
    assert_stopped_without(&mut daemon, &[&password, &auth]);
}

/// Asserts none of `secrets` is in a file of the daemon's store, then
/// stops the daemon and asserts none is in its log.
fn assert_stopped_without(daemon: &mut Node, secrets: &[&str]) {
    for secret in secrets {
        assert!(common::files_containing(daemon.root(), secret.as_bytes()).is_empty());
    }
    let (_, stderr) = daemon.terminate();
    assert!(!secrets.iter().any(|s| stderr.contains(s)), "{stderr}");
}

/// Pids whose command line contains `needle`.
fn pids_running(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd: Vec<u8> = cmd.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        if String::from_utf8_lossy(&cmd).contains(needle) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client building a RUN that sleeps until stopped, and the sleep's
/// marker (its argument).
fn sleeping_build(env: &Client, builder: &str) -> Option<(Running, String)> {
    let ctx = busybox_context()?;
    env.kb([ctx.to_str().unwrap(), "-t", common::BUSYBOX])
        .output("type=image")
        .quiet()
        .builder(builder)
        .ok();
    let dir = env.path("sleep");
    // A number of seconds no other process uses: tests of this binary run
    // in one process, so each call takes its own.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seconds = 86_000 + (std::process::id() % 400) * 16 + call;
    write(
        &dir.join("Dockerfile"),
        &format!("FROM {}\nRUN sleep {seconds}\n", common::BUSYBOX),
    );
    let client = env.kb([&dir]).builder(builder).plain().spawn();
    let marker = format!("sleep {seconds}");
    wait_until("the RUN step to start", Duration::from_secs(60), || {
        !pids_running(&marker).is_empty()
    });
    Some((client, marker))
}

#[test]
fn ctrl_c_on_the_client_cancels_the_daemons_build() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "cancel", &[]);
    let Some((child, marker)) = sleeping_build(&env, "cancel") else {
        return;
    };
    child.signal("INT");
    let (code, lines) = child.finish();
    let stderr = lines.join("\n");
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("cancelled") && stderr.contains("cancel"),
        "{stderr}"
    );
    wait_until("the RUN process to end", Duration::from_secs(20), || {
        pids_running(&marker).is_empty()
    });
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_daemon_killed_mid_build_is_a_clear_error_naming_the_builder() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let daemon = serve_builder(&env, "doomed", &[]);
    let Some((child, marker)) = sleeping_build(&env, "doomed") else {
        return;
    };
    let killed = Instant::now();
    daemon.kill();
    let (code, lines) = child.finish();
    let took = killed.elapsed();
    let stderr = lines.join("\n");
    assert_ne!(code, 0, "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let errors = common::error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("builder doomed"), "{stderr}");
    assert!(errors[0].contains("lost the connection"), "{stderr}");
    // The sandbox of the killed daemon's RUN is ours to clean up.
    for pid in pids_running(&marker) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    drop(daemon);
}

#[test]
fn a_daemon_of_protocol_1_answers_info_but_is_not_sent_builds() {
    let env = common::client();
    let daemon = serve_builder(&env, "old", &["--test-protocol-version", "1"]);
    let addr = daemon.unix();
    // Info still works: ls shows the node running.
    let ls = env.kb(["ls"]).ok();
    assert!(ls.stdout.contains("old"), "{}", ls.stdout);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\n");
    let r = env.kb([ctx.to_str().unwrap()]).builder("old").fails();
    let error = r.error_line();
    assert!(
        error.contains(&format!("builder old at {addr} speaks protocol 1"))
            && error.contains("building needs protocol 2"),
        "{}",
        r.stderr
    );
}

#[test]
fn sigterm_to_the_daemon_cancels_its_builds_and_tells_the_client() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "stopping", &[]);
    let Some((child, marker)) = sleeping_build(&env, "stopping") else {
        return;
    };
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
    let (code, lines) = child.finish();
    let stderr = lines.join("\n");
    assert_ne!(code, 0, "{stderr}");
    let errors = common::error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("builder stopping") && errors[0].contains("shutting down"),
        "{stderr}"
    );
    wait_until("the RUN process to end", Duration::from_secs(20), || {
        pids_running(&marker).is_empty()
    });
}

#[test]
fn a_client_that_dies_cancels_its_build_on_the_daemon() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "orphan", &[]);
    let Some((child, marker)) = sleeping_build(&env, "orphan") else {
        return;
    };
    child.kill();
    wait_until("the RUN process to end", Duration::from_secs(20), || {
        pids_running(&marker).is_empty()
    });
    daemon.daemon().wait_for("the client went away");
}

/// A program that asks the agent at `$SSH_AUTH_SOCK` for its identities
/// (SSH2_AGENTC_REQUEST_IDENTITIES, 11) and prints their comments.
const AGENT_LIST: &str = r#"package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	c, err := net.Dial("unix", os.Getenv("SSH_AUTH_SOCK"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	c.Write([]byte{0, 0, 0, 1, 11})
	var n uint32
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(1)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 12 {
		fmt.Fprintln(os.Stderr, "bad answer:", err)
		os.Exit(1)
	}
	keys := binary.BigEndian.Uint32(b[1:5])
	p := 5
	fmt.Printf("keys: %d\n", keys)
	for i := 0; i < int(keys); i++ {
		p += 4 + int(binary.BigEndian.Uint32(b[p:]))
		l := int(binary.BigEndian.Uint32(b[p:]))
		p += 4
		fmt.Printf("key: %s\n", b[p:p+l])
		p += l
	}
}
"#;

/// `--ssh` through a daemon: the RUN's agent socket is the client's real
/// `ssh-agent`, relayed over the session; the key never reaches the
/// builder's disk.
#[test]
fn ssh_agent_of_the_client_serves_a_run_on_the_daemon() {
    if !require_root() {
        return;
    }
    // Go from PATH (Debian's golang-go), else the official toolchain's place.
    let go = ["go", "/usr/local/go/bin/go"]
        .into_iter()
        .map(PathBuf::from)
        .find(|g| {
            Command::new(g)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let agent_present = Command::new("ssh-agent").arg("-h").output().is_ok();
    let (Some(go), true) = (go, agent_present) else {
        kbuild_testkit::fixtures::skip_or_fail(
            "go (golang-go) and ssh-agent (openssh-client) are needed",
        );
        return;
    };
    let env = common::client();
    let daemon = serve_builder(&env, "agent", &[]);
    let host = kbuild_platform::Platform::host().to_string();
    if base_image(&env, "agent", &host).is_none() {
        return;
    }
    // A real agent holding a fresh key.
    let key = env.path("id_test");
    let keygen = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kbuild-agent-key",
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(keygen.success());
    let sock = env.path("ssh-agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ssh-agent");
    // The socket exists from bind(), before the agent listens: retry.
    wait_until(
        "ssh-add to reach the agent",
        Duration::from_secs(10),
        || {
            Command::new("ssh-add")
                .arg(&key)
                .env("SSH_AUTH_SOCK", &sock)
                .stderr(Stdio::null())
                .status()
                .expect("run ssh-add")
                .success()
        },
    );

    let ctx = env.path("ctx");
    write(&ctx.join("main.go"), AGENT_LIST);
    let built = Command::new(&go)
        .args(["build", "-o"])
        .arg(ctx.join("agentls"))
        .arg(ctx.join("main.go"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", std::env::temp_dir().join("kbuild-test-gocache"))
        .env("GOPATH", env.path("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("run go build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    write(
        &ctx.join("Dockerfile"),
        "FROM kbuild.test/busybox:latest\n\
         COPY agentls /agentls\n\
         RUN --mount=type=ssh /agentls > /keys\n",
    );
    let out = env.path("out");
    let sock_arg = format!("default={}", sock.display());
    let dest = format!("type=local,dest={}", out.display());
    let r = env
        .kb([ctx.to_str().unwrap(), "--ssh", &sock_arg])
        .builder("agent")
        .platform(&host)
        .output(&dest)
        .plain()
        .ok();
    let keys = std::fs::read_to_string(out.join("keys"))
        .unwrap_or_else(|e| panic!("no /keys ({e}):\n{}", r.stderr));
    assert_eq!(keys, "keys: 1\nkey: kbuild-agent-key\n");
    // Without --ssh the RUN has no agent (the mount is optional, as in
    // BuildKit): the program finds no socket.
    let r = env
        .kb([ctx.to_str().unwrap(), "--no-cache"])
        .builder("agent")
        .platform(&host)
        .fails();
    assert!(
        r.stderr.contains("dial unix: missing address"),
        "{}",
        r.stderr
    );
    let _ = agent.kill();
    let _ = agent.wait();
    // The private key's lines are nowhere in the daemon's store.
    let private = std::fs::read_to_string(&key).expect("private key");
    for line in private.lines().filter(|l| !l.starts_with("-----")) {
        let grep = Command::new("grep")
            .args(["-r", "-F", "-l", "-e", line])
            .arg(daemon.root())
            .output()
            .expect("run grep");
        assert!(
            grep.stdout.is_empty(),
            "the key is on the builder's disk: {}",
            String::from_utf8_lossy(&grep.stdout)
        );
    }
}

/// A push through a daemon to a registry that wants Bearer tokens, where
/// only the client holds the token server's credentials: the daemon asks
/// the client per registry and scope, the push works, and the password is
/// in none of the daemon's files nor its log.
#[test]
fn push_with_bearer_tokens_only_on_the_client() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let user = "tokenuser";
    let password = unique("tokenpw");
    let keys = env.path("token-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let Some((tokens, files)) = kbuild_testkit::fixtures::started(
        "token server",
        kbuild_testkit::token::TokenServer::start(
            std::net::Ipv4Addr::LOCALHOST,
            &keys,
            user,
            &password,
        ),
    ) else {
        return;
    };
    let Some(registry) =
        kbuild_testkit::fixtures::started("registry", TestRegistry::start_with_token_auth(&files))
    else {
        return;
    };
    let mut daemon = serve_builder(&env, "bearer", &[]);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello /\n");
    write(&ctx.join("hello"), "hello over tokens\n");
    let host = registry.host();
    let (auth, config) = docker_config(&host, user, &password);
    let docker_config = env.path("docker-config");
    write(&docker_config.join("config.json"), &config);
    let reference = format!("{host}/bearer/app:1");
    let r = env
        .kb([ctx.to_str().unwrap(), "-t", &reference, "--push"])
        .builder("bearer")
        .env("DOCKER_CONFIG", &docker_config)
        .ok();
    assert!(
        r.stderr.contains(&format!("=> pushed {reference}@sha256:")),
        "{}",
        r.stderr
    );
    // The token server issued tokens for the push's scope.
    let scopes = tokens.scopes();
    assert!(
        scopes
            .iter()
            .any(|s| s == "repository:bearer/app:pull,push"),
        "{scopes:?}"
    );
    assert_eq!(
        tokens.denied(),
        0,
        "every token request had the credentials"
    );
    // Readable with a token from the same server.
    common::assert_readable_with(&reference, user, &password);
    // Without the client's credentials the daemon cannot push: the client's
    // answer is all it has.
    let r = env
        .kb([
            ctx.to_str().unwrap(),
            "-t",
            &format!("{host}/bearer/app:2"),
            "--push",
        ])
        .builder("bearer")
        .env("DOCKER_CONFIG", env.path("no-docker"))
        .fails();
    assert!(r.stderr.contains(&host), "{}", r.stderr);
    assert!(tokens.denied() > 0);
    assert_stopped_without(&mut daemon, &[&password, &auth]);
}

/// `--cache-to type=registry` from one daemon and `--cache-from` on a
/// second daemon with an empty store: the RUN step hits, and the image is
/// the same. A `type=local` cache is refused, naming why.
#[test]
fn registry_cache_through_daemons_hits_on_an_empty_daemon() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let Some(registry) = kbuild_testkit::fixtures::started("registry", TestRegistry::start())
    else {
        return;
    };
    let host = registry.host();
    let platform = kbuild_platform::Platform::host().to_string();
    let Some(busybox) = busybox_context() else {
        return;
    };
    let base = format!("{host}/base/busybox:1");
    env.kb([busybox.to_str().unwrap(), "-t", &base, "--push"])
        .builder("local")
        .platform(&platform)
        .quiet()
        .epoch()
        .ok();
    let _first = serve_builder(&env, "first", &[]);
    let _second = serve_builder(&env, "second", &[]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nRUN echo expensive > /made && sleep 1\n"),
    );
    let cache_ref = format!("{host}/cache/app:buildcache");
    let build = |builder: &str, extra: &[&str]| -> Run {
        let iid = env.path(&format!("{builder}.iid"));
        env.kb([ctx.as_os_str()])
            .builder(builder)
            .platform(&platform)
            .plain()
            .arg("--iidfile")
            .arg(iid)
            .args(extra)
            .epoch()
            .run()
    };
    let to = format!("type=registry,ref={cache_ref},mode=max");
    let first = build("first", &["--cache-to", &to]).ok();
    assert!(
        first
            .stderr
            .contains(&format!("=> exported cache type=registry,ref={cache_ref}")),
        "{}",
        first.stderr
    );
    assert!(
        common::cached_steps(&first.stderr).is_empty(),
        "{}",
        first.stderr
    );
    let from = format!("type=registry,ref={cache_ref}");
    let second_run = build("second", &["--cache-from", &from]).ok();
    let hits = common::cached_steps(&second_run.stderr);
    assert!(
        hits.iter().any(|n| n.contains("] RUN echo expensive")),
        "no cache hit on the empty daemon: {hits:?}\n{}",
        second_run.stderr
    );
    let iid = |b: &str| std::fs::read_to_string(env.path(&format!("{b}.iid"))).unwrap();
    assert_eq!(iid("first"), iid("second"));
    // A local cache is a directory of the client.
    let local = format!("type=local,dest={}", env.path("cache-dir").display());
    let r = build("second", &["--cache-to", &local]).fails();
    assert!(
        r.stderr.contains(
            "a type=local cache is a directory of this machine, which builder second cannot reach"
        ),
        "{}",
        r.stderr
    );
}

/// The daemon keeps the last `--keep-contexts` client contexts: an older
/// context's copy and the files only it used are removed after a build, and
/// building it again sends its files again.
#[test]
fn the_daemon_keeps_only_the_last_contexts() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "gc", &["--keep-contexts", "1"]);
    let root = daemon.root().to_path_buf();
    let make = |name: &str| -> PathBuf {
        let dir = env.path(name);
        write(&dir.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
        write(&dir.join("only.txt"), &format!("content only {name} has\n"));
        write(&dir.join("shared.txt"), "content both have\n");
        dir
    };
    let (a, b) = (make("ctx-a"), make("ctx-b"));
    let build = |dir: &Path| -> Run { env.kb([dir.to_str().unwrap()]).builder("gc").ok() };
    let sent = |r: &Run| -> String {
        r.stderr
            .lines()
            .find(|l| l.starts_with("=> context: sent "))
            .unwrap_or_else(|| panic!("no transfer line:\n{}", r.stderr))
            .to_string()
    };
    let count = |dir: &str| -> usize {
        std::fs::read_dir(root.join(dir))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    let first = build(&a);
    assert!(sent(&first).contains("sent 3 files"), "{}", first.stderr);
    let again = build(&a);
    assert!(sent(&again).contains("sent 0 files"), "{}", again.stderr);
    let other = build(&b);
    // b's Dockerfile and shared.txt are a's: only its own file came.
    assert!(sent(&other).contains("sent 1 files"), "{}", other.stderr);
    // The collection runs once the build has ended.
    daemon.daemon().wait_for("removed 1 contexts and 1 files");
    assert_eq!(count("contexts"), 1, "one context kept");
    // Left: b's three files; a's own file went with its context.
    assert_eq!(count("context-files"), 3);
    let only_a = std::fs::read_dir(root.join("context-files"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| std::fs::read(e.path()).unwrap() == b"content only ctx-a has\n");
    assert!(!only_a, "a's file is still cached");
    let back = build(&a);
    assert!(sent(&back).contains("sent 1 files"), "{}", back.stderr);
    daemon.daemon().wait_for("removed 1 contexts and 1 files");
    assert_eq!(count("contexts"), 1, "one context kept");
}

/// A protocol-3 daemon is sent the op graph planned on the client; a
/// daemon speaking protocol 2 is sent the Dockerfile and plans it itself
/// (what an older client sends a new daemon): both give a local build's
/// bytes.
#[test]
fn the_client_sends_the_graph_and_a_protocol_2_daemon_the_dockerfile() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut new = serve_builder(&env, "new", &[]);
    let mut old = serve_builder(&env, "old", &["--test-protocol-version", "2"]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nARG V=1\nCOPY --chmod=u=rw,go=r f/ /ctx/\nWORKDIR /ctx/$V\nLABEL v=$V\n",
    );
    write(&ctx.join("f/x.txt"), "x\n");
    let out = |b: &str| {
        let dest = env.path(&format!("{b}.tar"));
        env.kb([ctx.to_str().unwrap(), "--build-arg", "V=2"])
            .builder(b)
            .platform("linux/amd64,linux/arm64")
            .quiet()
            .output(format!("type=oci,dest={}", dest.display()))
            .epoch()
            .ok();
        read(&dest)
    };
    let local = out("local");
    assert!(
        local == out("new"),
        "the graph's build differs from the local one"
    );
    assert!(
        local == out("old"),
        "the protocol-2 build differs from the local one"
    );
    let (code, new_log) = new.terminate();
    assert_eq!(code, 0, "{new_log}");
    assert!(
        new_log.contains("building the client's op graph")
            && !new_log.contains("planning the client's Dockerfile"),
        "{new_log}"
    );
    let (code, old_log) = old.terminate();
    assert_eq!(code, 0, "{old_log}");
    assert!(
        old_log.contains("planning the client's Dockerfile")
            && !old_log.contains("building the client's op graph"),
        "{old_log}"
    );
}

/// Dockerfile errors that need no image come from the client before it
/// dials a node: the builder's only node here does not exist.
#[test]
fn dockerfile_errors_come_before_any_node_is_dialled() {
    let env = common::client();
    let addr = format!("unix://{}", env.path("nobody.sock").display());
    env.kb(["create", "gone", "--endpoint", &addr]).ok();
    let ctx = env.path("ctx");
    for (dockerfile, error) in [
        (
            "FROM scratch\nCOPY --chmod=u+q a /\n",
            "error: Dockerfile:2: COPY --chmod=u+q a /: invalid --chmod=u+q: \"u+q\" is not a mode clause; use an octal mode such as 0755 or clauses such as u+x,go-w",
        ),
        ("FROM scratch\nFROBNICATE a\n", "error: Dockerfile:2: unknown instruction: FROBNICATE"),
    ] {
        write(&ctx.join("Dockerfile"), dockerfile);
        write(&ctx.join("a"), "a\n");
        let r = env.kb([ctx.to_str().unwrap()]).builder("gone")
            .fails();
        let errors = common::error_lines(&r.stderr);
        assert_eq!(errors, [error], "{}", r.stderr);
    }
}

/// A graph of a format version the daemon does not read is refused before
/// anything runs, naming both versions.
#[test]
fn a_graph_of_another_format_version_is_refused_by_the_daemon() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let _daemon = serve_builder(&env, "graphs", &[]);
    let addr = format!("unix://{}", env.path("graphs.sock").display());
    let node = kbuild_driver::config::Node {
        name: "graphs0".into(),
        endpoint: addr,
        platforms: Vec::new(),
        tls: Default::default(),
    };
    let future = kbuild_dockerfile::graph::FORMAT_VERSION + 1;
    let start = kbuild_proto::v1::BuildStart {
        dockerfile_path: "Dockerfile".into(),
        platforms: vec![kbuild_proto::v1::Platform::from(
            &kbuild_platform::Platform::parse("linux/amd64").unwrap(),
        )],
        graph: format!(r#"{{"version":{future},"ops":[{{"op":"teleport"}}],"targets":[]}}"#)
            .into_bytes(),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let done = rt
        .block_on(kbuild_driver::session::build(
            "graphs",
            &node,
            &kbuild_driver::Direct,
            start,
            None,
            std::sync::Arc::new(common::CredentialsOnly(|_: &str| Ok(None))),
            std::future::pending::<()>(),
        ))
        .expect("the session ends with BuildDone");
    assert_eq!(
        done.error,
        format!(
            "the client's op graph: graph format version {future} is not supported; this builder reads version {}",
            kbuild_dockerfile::graph::FORMAT_VERSION
        )
    );
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// `prune --builder` of a node that is running a build is refused, as a
/// local prune is while a build holds the store, and changes nothing;
/// once the build is gone it prunes.
#[test]
fn prune_builder_is_refused_while_the_node_builds() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = serve_builder(&env, "busy", &[]);
    let Some((child, marker)) = sleeping_build(&env, "busy") else {
        return;
    };
    let content = daemon.root().join("content");
    let before = files_under(&content);
    let r = env.kb(["prune", "--builder", "busy", "--all"]).fails();
    let error = r.error_line();
    assert!(
        error.contains("builder busy") && error.contains("a build is running"),
        "{}",
        r.stderr
    );
    assert_eq!(files_under(&content), before);
    child.signal("INT");
    let _ = child.finish();
    wait_until("the RUN process to end", Duration::from_secs(20), || {
        pids_running(&marker).is_empty()
    });
    let r = env.kb(["prune", "--builder", "busy", "--all"]).ok();
    assert!(r.stdout.starts_with("busy0: removed "), "{}", r.stdout);
    assert!(files_under(&content) < before, "{}", r.stdout);
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
}

/// The client pins the base images of the graph it sends: a daemon builds
/// on the image the client resolved, not on what the tag names when the
/// daemon pulls. Here the client's store holds the tag's first image and
/// the registry's tag has moved on: the daemon (an empty store) still
/// builds on the first, pulled by digest; with `--pull` the client asks
/// the registry and the daemon builds on the new one. `--dry-run=json`
/// shows the pin a build would use.
#[test]
fn the_daemon_builds_on_the_base_the_client_pinned() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let Some(registry) = kbuild_testkit::fixtures::started(
        "registry",
        kbuild_testkit::registry::TestRegistry::start(),
    ) else {
        return;
    };
    let base = format!("{}/pin/base:moving", registry.host());
    let push_base = |text: &str| {
        let ctx = env.path(&format!("base-{text}"));
        write(
            &ctx.join("Dockerfile"),
            &format!("FROM scratch\nCOPY <<EOF /base\n{text}\nEOF\n"),
        );
        env.kb([ctx.to_str().unwrap(), "-t", &base, "--push"])
            .builder("local")
            .platform("linux/amd64")
            .quiet()
            .ok();
    };
    push_base("one");
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nLABEL app=1\n"),
    );
    let build = |builder: &str, extra: &[&str]| -> String {
        let dest = env.path(&format!("out-{builder}-{}", extra.len()));
        let out = format!("type=local,dest={}", dest.display());
        let mut args = vec![
            ctx.to_str().unwrap(),
            "--builder",
            builder,
            "--platform",
            "linux/amd64",
            "--progress",
            "quiet",
            "-o",
            &out,
        ];
        args.extend_from_slice(extra);
        env.kb(args).ok();
        String::from_utf8(read(&dest.join("base"))).unwrap()
    };
    // A local build pulls the first image into the client's store.
    assert_eq!(build("local", &[]), "one\n");
    let dry = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            ctx.to_str().unwrap(),
            "--platform",
            "linux/amd64",
            "--dry-run=json",
        ];
        args.extend_from_slice(extra);
        let r = env.kb(args).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let sources: Vec<serde_json::Value> = v["graph"]["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["op"]["source"] == "image")
            .map(|o| o["op"]["pin"].clone())
            .collect();
        assert_eq!(sources.len(), 1, "{}", r.stdout);
        sources[0].clone()
    };
    let pin = dry(&["--builder", "local"]);
    let manifest = pin["manifest"].as_str().unwrap_or_default().to_string();
    assert!(manifest.starts_with("sha256:"), "{pin}");
    assert_eq!(
        dry(&["--builder", "local", "--pull"]),
        serde_json::Value::Null
    );

    push_base("two");
    let _daemon = serve_builder(&env, "pinned", &[]);
    assert_eq!(
        build("pinned", &[]),
        "one\n",
        "the daemon built on the tag's new image, not the one the client planned with"
    );
    assert_eq!(
        build("pinned", &["--pull"]),
        "two\n",
        "--pull resolves the tag again"
    );
}

/// A session that ends while the daemon waits for the client's answer to a
/// credentials question (here the client cancels instead of answering)
/// leaves no thread of the daemon waiting for that answer: the daemon then
/// stops on SIGTERM within its drain time, not after the question's
/// minute-long timeout.
#[test]
fn a_question_left_unanswered_does_not_hold_up_the_daemons_shutdown() {
    if !require_root() {
        return;
    }
    let Some(registry) = kbuild_testkit::fixtures::started(
        "registry",
        TestRegistry::start_with_htpasswd("user", "password"),
    ) else {
        return;
    };
    let env = common::client();
    let mut daemon = serve_builder(&env, "asking", &[]);
    let node = kbuild_driver::config::Node {
        name: "asking0".into(),
        endpoint: format!("unix://{}", env.path("asking.sock").display()),
        platforms: Vec::new(),
        tls: Default::default(),
    };
    let start = kbuild_proto::v1::BuildStart {
        dockerfile: format!("FROM {}/private/base:1\n", registry.host()).into_bytes(),
        dockerfile_path: "Dockerfile".into(),
        platforms: vec![kbuild_proto::v1::Platform::from(
            &kbuild_platform::Platform::parse("linux/amd64").unwrap(),
        )],
        ..Default::default()
    };
    let (asked_tx, asked_rx) = std::sync::mpsc::sync_channel(1);
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let session = rt.spawn(async move {
        kbuild_driver::session::build(
            "asking",
            &node,
            &kbuild_driver::Direct,
            start,
            None,
            std::sync::Arc::new(common::CredentialsOnly(move |_: &str| {
                // Asked: tell the test, which cancels the build, and never answer.
                let _ = asked_tx.try_send(());
                std::thread::sleep(Duration::from_secs(3));
                Err("not answered".into())
            })),
            async {
                let _ = cancel_rx.await;
            },
        )
        .await
        .map(|done| done.error)
        .map_err(|e| e.to_string())
    });
    asked_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon asks the client for the registry's credentials");
    let _ = cancel_tx.send(());
    let ended = rt.block_on(session).expect("the session task");
    assert!(
        ended.as_ref().err().is_some_and(|e| e.contains("cancel"))
            || ended.as_ref().is_ok_and(|e| e.contains("cancel")),
        "{ended:?}"
    );
    let stopping = Instant::now();
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(
        stopping.elapsed() < kbuild_serve::DRAIN_TIMEOUT,
        "the daemon took {:?} to stop:\n{log}",
        stopping.elapsed()
    );
}

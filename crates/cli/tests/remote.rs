//! Builds sent to a real `kubectl-build serve` daemon (protocol 2, the
//! Build session): the same outputs as local builds, the context synced by
//! digest, credentials and secrets that stay on the client, Ctrl-C and a
//! daemon that dies mid-build.

mod common;

use common::{bin, busybox_context, require_root, run, unique, write, Run};
use kbuild_testkit::daemon::{make_pki, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory: the client's store (`root`), the builder list
/// (`config`), the daemon's store (`daemon-root`) and its socket.
struct Env {
    dir: tempfile::TempDir,
}

impl Drop for Env {
    /// A daemon a test killed or stopped mid-build may leave its RUN's
    /// overlay mount behind: `prune` on its store reclaims what dead
    /// processes left (the daemons are gone by now: they are dropped first).
    fn drop(&mut self) {
        let root = self.path("daemon-root");
        if root.exists() {
            let _ = std::process::Command::new(bin())
                .arg("--root")
                .arg(&root)
                .arg("prune")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "XDG_CONFIG_HOME",
            self.path("config").to_str().unwrap().to_string(),
        )]
    }
    /// `kubectl-build ARGS` as the client, with extra environment.
    fn kb(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let base = self.env();
        let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        run(&self.path("root"), args, &env)
    }
    /// A daemon on a unix socket, registered as builder `name`.
    fn daemon(&self, name: &str) -> Daemon {
        let addr = format!("unix://{}", self.path(&format!("{name}.sock")).display());
        let mut d = Daemon::start(&bin(), &self.path("daemon-root"), &["--addr", &addr]);
        d.listening("unix://");
        self.kb(&["create", name, "--endpoint", &addr], &[]).ok();
        d
    }
}

const EPOCH: (&str, &str) = ("SOURCE_DATE_EPOCH", "0");

/// The busybox fixture as `kbuild.test/busybox:latest` for `platforms`,
/// built into both stores with SOURCE_DATE_EPOCH: once locally, once
/// through `builder` (`-o type=image` keeps it in the daemon's store). The
/// two root digests must be equal.
fn base_image(env: &Env, builder: &str, platforms: &str) -> Option<()> {
    let ctx = busybox_context()?;
    let args = |b: &str| -> Vec<String> {
        vec![
            ctx.to_str().unwrap().to_string(),
            "--platform".into(),
            platforms.into(),
            "-t".into(),
            common::BUSYBOX.into(),
            "-o".into(),
            "type=image".into(),
            "--progress".into(),
            "quiet".into(),
            "--builder".into(),
            b.into(),
        ]
    };
    let local: Vec<String> = args("local");
    let local = env
        .kb(
            &local.iter().map(String::as_str).collect::<Vec<_>>(),
            &[EPOCH],
        )
        .ok();
    let remote: Vec<String> = args(builder);
    let remote = env
        .kb(
            &remote.iter().map(String::as_str).collect::<Vec<_>>(),
            &[EPOCH],
        )
        .ok();
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
    let env = Env::new();
    let daemon = env.daemon("remote1");
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
            .kb(
                &[
                    ctx.to_str().unwrap(),
                    "--builder",
                    builder,
                    "--platform",
                    platforms,
                    "--secret",
                    &secret,
                    "--progress",
                    "plain",
                    "-o",
                    &format!("type=oci,dest={}", oci.display()),
                ],
                &[EPOCH],
            )
            .ok();
        assert!(
            r.stderr.contains("RUN <<EOF") || r.stderr.contains("RUN"),
            "{}",
            r.stderr
        );
        for (spec, _) in [
            (format!("type=tar,dest={}", tar.display()), ()),
            (format!("type=local,dest={}", local.display()), ()),
        ] {
            env.kb(
                &[
                    ctx.to_str().unwrap(),
                    "--builder",
                    builder,
                    "--platform",
                    platforms,
                    "--secret",
                    &secret,
                    "--progress",
                    "quiet",
                    "-o",
                    &spec,
                ],
                &[EPOCH],
            )
            .ok();
        }
        (read(&oci), read(&tar), local)
    };
    let (local_oci, local_tar, local_dir) = build("local", "local");
    let (remote_oci, remote_tar, remote_dir) = build("remote1", "remote");
    assert!(local_oci == remote_oci, "OCI archives differ");
    assert!(local_tar == remote_tar, "filesystem tars differ");
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
    let root = env.path("daemon-root");
    assert!(common::files_containing(&root, b"must not be sent").is_empty());
    assert!(
        common::files_containing(&root, secret_value.as_bytes()).is_empty(),
        "the secret was written under the daemon's root"
    );
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains(&secret_value));
}

#[test]
fn mutual_tls_build_matches_local() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pki = env.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki, "t", "127.0.0.1");
    let f = |n: &str| pki.join(n).to_str().unwrap().to_string();
    let mut daemon = Daemon::start(
        &bin(),
        &env.path("daemon-root"),
        &[
            "--addr",
            "tcp://127.0.0.1:0",
            "--tls-cert",
            &f("t-server.pem"),
            "--tls-key",
            &f("t-server.key"),
            "--tls-ca",
            &f("t-ca.pem"),
        ],
    );
    let endpoint = daemon.listening("tcp://");
    env.kb(
        &[
            "create",
            "tls",
            "--endpoint",
            &endpoint,
            "--driver-opt",
            &format!(
                "cacert={},cert={},key={}",
                f("t-ca.pem"),
                f("t-client.pem"),
                f("t-client.key")
            ),
        ],
        &[],
    )
    .ok();
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n");
    write(&ctx.join("f/x.txt"), "x\n");
    let out = |b: &str| {
        let dest = env.path(&format!("{b}.tar"));
        env.kb(
            &[
                ctx.to_str().unwrap(),
                "--builder",
                b,
                "--progress",
                "quiet",
                "-o",
                &format!("type=oci,dest={}", dest.display()),
            ],
            &[EPOCH],
        )
        .ok();
        read(&dest)
    };
    assert!(out("local") == out("tls"), "OCI archives differ");
    let docker = |b: &str| {
        let dest = env.path(&format!("{b}.docker.tar"));
        env.kb(
            &[
                ctx.to_str().unwrap(),
                "--builder",
                b,
                "--progress",
                "quiet",
                "-t",
                "demo:1",
                "-o",
                &format!("type=docker,dest={}", dest.display()),
            ],
            &[EPOCH],
        )
        .ok();
        read(&dest)
    };
    assert!(docker("local") == docker("tls"), "docker archives differ");
    let _ = daemon.terminate();
}

/// The daemon's two context lines of the next session: what came and what
/// it wrote into its copy, then the context content it read to compute
/// checksums.
fn context_counters(daemon: &mut Daemon) -> (String, String) {
    let sync = daemon.wait_for("context: received");
    let hashed = daemon.wait_for("bytes of context content to compute checksums");
    (sync, hashed)
}

#[test]
fn a_rebuild_with_one_file_changed_sends_one_file() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let mut daemon = env.daemon("sync");
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
            .kb(
                &[
                    ctx.to_str().unwrap(),
                    "--builder",
                    "sync",
                    "--progress",
                    "plain",
                    "-o",
                    output,
                ],
                &[EPOCH],
            )
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
    // Nothing changed: metadata only; the daemon writes nothing into its
    // copy and reads no content.
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
    assert!(hashed.contains("read 0 bytes of context"), "{hashed}");
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
    let env = Env::new();
    let user = "builder";
    let password = unique("pw");
    let registry =
        match kbuild_testkit::registry::TestRegistry::start_with_htpasswd(user, &password) {
            Ok(r) => r,
            Err(e) => {
                kbuild_testkit::fixtures::skip_or_fail(&format!("registry: {e}"));
                return;
            }
        };
    let daemon = env.daemon("push");
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY hello /\n");
    write(&ctx.join("hello"), "hello\n");
    let host = registry.host();
    let auth = base64(&format!("{user}:{password}"));
    let secret = env.path("dockerconfig.json");
    std::fs::write(
        &secret,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let reference = format!("{host}/remote/app:1");
    let r = env
        .kb(
            &[
                ctx.to_str().unwrap(),
                "--builder",
                "push",
                "--registry-secret",
                &format!("file:{}", secret.display()),
                "-t",
                &reference,
                "--push",
            ],
            &[("DOCKER_CONFIG", env.path("no-docker").to_str().unwrap())],
        )
        .ok();
    assert!(
        r.stderr.contains(&format!("=> pushed {reference}@sha256:")),
        "{}",
        r.stderr
    );
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{user}:{password}"),
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the client's answer the daemon has no credentials: nothing
    // of them in its store or its logs.
    assert!(common::files_containing(&env.path("daemon-root"), password.as_bytes()).is_empty());
    assert!(common::files_containing(&env.path("daemon-root"), auth.as_bytes()).is_empty());
    let (_, stderr) = daemon.terminate();
    assert!(
        !stderr.contains(&password) && !stderr.contains(&auth),
        "{stderr}"
    );
}

fn base64(s: &str) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
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
fn sleeping_build(env: &Env, builder: &str) -> Option<(std::process::Child, String)> {
    let ctx = busybox_context()?;
    env.kb(
        &[
            ctx.to_str().unwrap(),
            "-t",
            common::BUSYBOX,
            "-o",
            "type=image",
            "--progress",
            "quiet",
            "--builder",
            builder,
        ],
        &[],
    )
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
    let child = Command::new(bin())
        .arg("--root")
        .arg(env.path("root"))
        .args([
            dir.to_str().unwrap(),
            "--builder",
            builder,
            "--progress",
            "plain",
        ])
        .env("XDG_CONFIG_HOME", env.path("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("sleep {seconds}");
    wait_until("the RUN step to start", Duration::from_secs(60), || {
        !pids_running(&marker).is_empty()
    });
    Some((child, marker))
}

#[test]
fn ctrl_c_on_the_client_cancels_the_daemons_build() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let daemon = env.daemon("cancel");
    let Some((child, marker)) = sleeping_build(&env, "cancel") else {
        return;
    };
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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
    let env = Env::new();
    let daemon = env.daemon("doomed");
    let Some((child, marker)) = sleeping_build(&env, "doomed") else {
        return;
    };
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &daemon.pid().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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
    let env = Env::new();
    let addr = format!("unix://{}", env.path("old.sock").display());
    let mut daemon = Daemon::start(
        &bin(),
        &env.path("daemon-root"),
        &["--addr", &addr, "--test-protocol-version", "1"],
    );
    daemon.listening("unix://");
    env.kb(&["create", "old", "--endpoint", &addr], &[]).ok();
    // Info still works: ls shows the node running.
    let ls = env.kb(&["ls"], &[]).ok();
    assert!(ls.stdout.contains("old"), "{}", ls.stdout);
    let ctx = env.path("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\n");
    let r = env
        .kb(&[ctx.to_str().unwrap(), "--builder", "old"], &[])
        .fails();
    let errors = common::error_lines(&r.stderr);
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains(&format!("builder old at {addr} speaks protocol 1"))
            && errors[0].contains("building needs protocol 2"),
        "{}",
        r.stderr
    );
}

#[test]
fn sigterm_to_the_daemon_cancels_its_builds_and_tells_the_client() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let daemon = env.daemon("stopping");
    let Some((child, marker)) = sleeping_build(&env, "stopping") else {
        return;
    };
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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
    let env = Env::new();
    let mut daemon = env.daemon("orphan");
    let Some((mut child, marker)) = sleeping_build(&env, "orphan") else {
        return;
    };
    child.kill().unwrap();
    let _ = child.wait();
    wait_until("the RUN process to end", Duration::from_secs(20), || {
        pids_running(&marker).is_empty()
    });
    daemon.wait_for("the client went away");
}

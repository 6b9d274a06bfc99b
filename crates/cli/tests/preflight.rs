//! Errors that come before any build work: they name the problem and the
//! fix, and nothing is written.

mod common;

use common::{bin, require_root, write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_docker_archive_of_several_platforms_is_refused_before_building() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    let out = t.path().join("out.tar");
    let r = common::kb(&t.path().join("store"), [ctx.to_str().unwrap()])
        .platform("linux/amd64,linux/arm64")
        .output(format!("type=docker,dest={}", out.display()))
        .fails();
    assert!(
        r.stderr.contains("hold one platform") && r.stderr.contains("linux/amd64, linux/arm64"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    assert!(!t.path().join("store").exists(), "no store was made");
}

#[test]
fn an_ordinary_user_is_told_at_once_that_the_local_builder_needs_root() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    // As nobody: setpriv (util-linux) drops to its uid and groups.
    let as_nobody = || {
        common::Build::program("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
    };
    let out = as_nobody().arg("--root").arg(&store).arg(&ctx).fails();
    assert!(
        out.stderr.contains("the local builder needs root"),
        "{}",
        out.stderr
    );
    out.error_line();
    assert!(!store.exists(), "nothing was written");

    let doctor = as_nobody().arg("doctor").fails();
    assert!(doctor.stdout.contains("not root"), "{}", doctor.stdout);
}

#[test]
fn unsupported_buildx_flags_are_named() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    let store = t.path().join("store");
    for flag in [
        "--sbom=true",
        "--attest=type=sbom",
        "--ulimit=nofile=1024:1024",
        "--cgroup-parent=build",
    ] {
        let name = flag.split('=').next().unwrap();
        let r = common::kb(&store, [ctx.to_str().unwrap(), flag, "--dry-run"]).fails();
        assert!(
            r.stderr.contains(&format!("{name} is not implemented yet")),
            "{flag}: {}",
            r.stderr
        );
    }
    // Turning an attestation off asks for nothing.
    common::kb(
        &store,
        [
            ctx.to_str().unwrap(),
            "--provenance=false",
            "--sbom=false",
            "--dry-run",
        ],
    )
    .ok();
}

#[test]
fn quiet_prints_the_image_id_and_nothing_after_an_archive_on_stdout() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    let r = common::kb(&store, [ctx.to_str().unwrap(), "-q"]).ok();
    assert!(
        r.stdout.starts_with("sha256:") && r.stdout.lines().count() == 1,
        "{:?}",
        r.stdout
    );
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.starts_with('#') || l.starts_with("=>")),
        "no progress in quiet mode: {}",
        r.stderr
    );
    // The archive is all there is on stdout: tar reads it to the end.
    let out = common::kb(&store, [&ctx])
        .args(["-q", "-o", "type=tar,dest=-"])
        .raw();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = t.path().join("fs.tar");
    std::fs::write(&archive, &out.stdout).unwrap();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "Dockerfile"
    );
    let tail = &out.stdout[out.stdout.len().saturating_sub(1024)..];
    assert!(
        tail.iter().all(|b| *b == 0),
        "bytes after the tar's end blocks"
    );
}

#[test]
fn archives_get_the_mode_of_any_new_file() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    // SAFETY: umask has no failure mode; this test reads it back at once.
    let umask = unsafe { libc_umask(0o022) };
    for (kind, name) in [("docker", "d.tar"), ("oci", "o.tar"), ("tar", "t.tar")] {
        let dest = t.path().join(name);
        let output = format!("type={kind},dest={}", dest.display());
        common::kb(&store, [ctx.to_str().unwrap(), "-t", "x/y:1"])
            .output(&output)
            .ok();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{kind}");
    }
    // SAFETY: as above, puts the mask back.
    unsafe { libc_umask(umask) };
}

extern "C" {
    #[link_name = "umask"]
    fn libc_umask(mask: u32) -> u32;
}

#[test]
fn add_from_a_server_that_never_answers_fails_within_the_timeout() {
    if !require_root() {
        return;
    }
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming().take(4) {
            open.push(conn);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM scratch\nADD http://{addr}/file.txt /file.txt\n"),
    );
    let started = std::time::Instant::now();
    let r = common::kb(
        &t.path().join("store"),
        [ctx.to_str().unwrap(), "--registry-timeout", "2s"],
    )
    .fails();
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    let errors = common::error_lines(&r.stderr);
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains(&addr.to_string()) && errors[0].contains("no answer"),
        "{}",
        errors[0]
    );
    drop(held);
}

#[test]
fn builder_names_are_checked_before_building() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n");
    let store = t.path().join("store");
    let config = t.path().join("config");
    let env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];
    let r = common::kb(&store, [ctx.to_str().unwrap()])
        .builder("nosuch")
        .envs(&env)
        .fails();
    assert!(
        common::error_lines(&r.stderr)
            .first()
            .is_some_and(|l| l.contains("no builder nosuch; kubectl build ls lists them")),
        "{}",
        r.stderr
    );
    let socket = t.path().join("b.sock");
    common::kb(
        &store,
        [
            "create",
            "far",
            "--driver",
            "remote",
            "--endpoint",
            &format!("unix://{}", socket.display()),
        ],
    )
    .envs(&env)
    .ok();
    let r = common::kb(&store, [ctx.to_str().unwrap()])
        .builder("far")
        .envs(&env)
        .fails();
    // A remote builder builds through its daemon: none runs here.
    assert!(
        common::error_lines(&r.stderr)
            .first()
            .is_some_and(|l| l.contains(&format!(
                "builder far at unix://{} is unreachable",
                socket.display()
            ))),
        "{}",
        r.stderr
    );
    // The default builder name of the kubernetes driver, without a
    // cluster, is the embedded builder; its secret is not required.
    if require_root() {
        for name in ["buildkit", "local"] {
            common::kb(&store, [ctx.to_str().unwrap()])
                .builder(name)
                .envs(&env)
                .ok();
        }
    }
}

#[test]
fn an_unreachable_push_registry_fails_before_any_step_runs() {
    if !require_root() {
        return;
    }
    // A loopback port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "never built\n");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /marker-step\n",
    );
    let tag = format!("127.0.0.1:{port}/nowhere/img:1");
    let r = common::kb(&t.path().join("store"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", &tag, "--push"])
        .plain()
        .fails();
    let error = r.error_line();
    assert!(
        error.contains(&format!("cannot reach registry 127.0.0.1:{port}"))
            && error.contains("http://")
            && error.contains("check that the registry runs at that address"),
        "{}",
        error
    );
    // Plain HTTP was already used: no advice to allow it.
    assert!(!error.contains("--insecure-registry"), "{}", error);
    // No step ran: the COPY never shows in the progress.
    assert!(!r.stderr.contains("marker-step"), "{}", r.stderr);
}

//! A private dockerd really starts, loads and runs an image made from the
//! busybox fixture, pulls from a test registry, and leaves nothing behind, even
//! when it crashed. Skips (or fails under CI=true) when dockerd or the fixtures
//! are not available.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kbuild_testkit::dockerd::Dockerd;
use kbuild_testkit::fixtures::{self, BUSYBOX_APPLETS};
use kbuild_testkit::registry::TestRegistry;

const IMAGE: &str = "kbuild-testkit/busybox:latest";

fn start_dockerd() -> Option<Dockerd> {
    match Dockerd::start() {
        Ok(daemon) => {
            eprintln!("dockerd ready in {:?}", daemon.startup_time());
            Some(daemon)
        }
        Err(reason) => {
            fixtures::skip_or_fail(&reason.to_string());
            None
        }
    }
}

/// The fixture directory and `uname -m` of the host's architecture.
fn host_busybox() -> Option<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Some(("amd64", "x86_64")),
        "aarch64" => Some(("arm64", "aarch64")),
        "s390x" => Some(("s390x", "s390x")),
        "powerpc64" => Some(("ppc64le", "ppc64le")),
        _ => None,
    }
}

fn run(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sha256_of(file: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(file));
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum printed nothing for {}", file.display()))
        .to_string()
}

/// Writes a one-layer docker-archive (`docker save` format) of the busybox
/// fixture for `dir`, with GNU tar and sha256sum, independently of our image
/// crate: this checks the testkit, not the product.
fn busybox_docker_archive(dir: &str, arch: &str, work: &Path) -> Option<PathBuf> {
    let binary = fixtures::busybox_binary(dir)?;
    let rootfs = binary.parent()?.parent()?.to_path_buf();
    let archive = work.join("archive");
    fs::create_dir_all(&archive).expect("create archive dir");
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let diff_id = sha256_of(&layer);
    fs::create_dir_all(archive.join(&diff_id)).expect("create layer dir");
    fs::rename(&layer, archive.join(&diff_id).join("layer.tar")).expect("move layer");
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let config_path = work.join("config.json");
    fs::write(&config_path, config.to_string()).expect("write config");
    let config_name = format!("{}.json", sha256_of(&config_path));
    fs::rename(&config_path, archive.join(&config_name)).expect("move config");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [IMAGE],
        "Layers": [format!("{diff_id}/layer.tar")],
    }]);
    fs::write(archive.join("manifest.json"), manifest.to_string()).expect("write manifest");
    let tarball = work.join("busybox.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&archive)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    Some(tarball)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && entry.file_name() != "self" {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Loads the hand-made busybox image into `daemon`; None when skipped.
fn load_busybox(daemon: &Dockerd, work: &Path) -> Option<&'static str> {
    let Some((dir, uname)) = host_busybox() else {
        fixtures::skip_or_fail(&format!(
            "no busybox fixture runs natively on {}",
            std::env::consts::ARCH
        ));
        return None;
    };
    let arch = fixtures::busybox_platform(dir)?
        .platform
        .rsplit('/')
        .next()?;
    let tarball = busybox_docker_archive(dir, arch, work)?;
    let loaded = daemon
        .docker_ok(["load", "--input", &tarball.display().to_string()])
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert!(
        loaded.contains(&format!("Loaded image: {IMAGE}")),
        "{loaded}"
    );
    Some(uname)
}

#[test]
fn daemon_is_private_and_leaves_nothing_behind() {
    let Some(daemon) = start_dockerd() else {
        return;
    };
    let dir = daemon.dir().to_path_buf();
    let pid = daemon.pid();
    let root = daemon
        .docker_ok(["info", "--format", "{{.DockerRootDir}}"])
        .expect("docker info");
    assert_eq!(root.trim(), dir.join("data").display().to_string());
    assert!(daemon.socket().starts_with(&dir));
    assert!(daemon.host().starts_with("unix:///tmp/"));
    // a CLI error names the command
    let err = daemon
        .docker_ok(["image", "inspect", "kbuild-testkit/absent:none"])
        .expect_err("inspecting an absent image must fail")
        .to_string();
    assert!(
        err.contains("docker image inspect kbuild-testkit/absent:none"),
        "{err}"
    );

    drop(daemon);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dockerd {pid} still there"
    );
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
}

#[test]
fn loads_and_runs_a_hand_made_busybox_image() {
    let Some(daemon) = start_dockerd() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let Some(uname) = load_busybox(&daemon, work.path()) else {
        return;
    };

    let out = daemon
        .docker_ok([
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo \"$(whoami) $(uname -m) $(ls /bin | wc -l) $PATH\"",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(
        out.trim(),
        format!("root {uname} {} /bin", BUSYBOX_APPLETS.len() + 1)
    );
    // CMD ["sh"] from the config: sh reads the script from stdin (none: exits 0)
    let status = daemon
        .docker(["run", "--rm", "--network", "none", IMAGE])
        .status;
    assert!(status.success(), "default command failed: {status}");
    // a failing command's exit code comes back through docker run
    let failed = daemon.docker([
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3));
}

#[test]
fn pulls_from_a_test_registry() {
    let Some(daemon) = start_dockerd() else {
        return;
    };
    let registry = match TestRegistry::start() {
        Ok(registry) => registry,
        Err(e) => {
            fixtures::skip_or_fail(&e.to_string());
            return;
        }
    };
    let work = tempfile::tempdir().expect("tempdir");
    if load_busybox(&daemon, work.path()).is_none() {
        return;
    }
    let remote = format!("{}/testkit/busybox:pushed", registry.host());
    let docker = |args: &[&str]| {
        daemon
            .docker_ok(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
    };
    docker(&["tag", IMAGE, &remote]);
    docker(&["push", &remote]);
    docker(&["rmi", &remote, IMAGE]);
    docker(&["pull", &remote]);
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &remote,
        "echo",
        "pulled",
    ]);
    assert_eq!(out.trim(), "pulled");
}

#[test]
fn crashed_daemon_is_cleaned_up() {
    let Some(daemon) = start_dockerd() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    if load_busybox(&daemon, work.path()).is_none() {
        return;
    }
    let dir = daemon.dir().to_path_buf();
    // the marker makes the container's shell findable in /proc
    let marker = format!("crash-test-{}", dir.display());
    let script = format!("sleep 600; : {marker}");
    daemon
        .docker_ok([
            "run",
            "--detach",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            &script,
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let exec_root = format!("{}/", dir.join("exec").display());
    let shim_sockets = || -> Vec<String> {
        fs::read_dir("/run/containerd/s")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let sockets_before = shim_sockets();
    assert!(
        !processes_mentioning(&exec_root).is_empty(),
        "no containerd or shim under {exec_root}"
    );
    assert_eq!(
        processes_mentioning(&marker).len(),
        1,
        "container not running"
    );
    assert!(!mounts_under(&dir).is_empty());
    let ours: Vec<String> = shim_sockets()
        .into_iter()
        .filter(|s| !sockets_before.contains(s))
        .collect();

    run(Command::new("kill").args(["-KILL", &daemon.pid().to_string()]));
    drop(daemon);
    assert_eq!(processes_mentioning(&exec_root), Vec::<String>::new());
    assert_eq!(processes_mentioning(&marker), Vec::<String>::new());
    let remaining: Vec<String> = shim_sockets()
        .into_iter()
        .filter(|s| ours.contains(s))
        .collect();
    assert_eq!(remaining, Vec::<String>::new(), "shim sockets left");
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert!(!dir.exists(), "{} still exists", dir.display());
}

//! Whole builds with the real binary: a real registry process, real
//! overlay mounts, the busybox fixtures built from Debian's packages, and
//! dockerd as a consumer of what we export.

mod common;

use common::{kb, require_root, run, skopeo_raw, write, SEVEN};
use kbuild_testkit::registry::TestRegistry;
use std::path::Path;

/// Digests of the platform manifests in an index, keyed by platform.
fn manifest_digests(index: &serde_json::Value) -> Vec<(String, String)> {
    let mut v = common::index_entries(index);
    v.sort();
    v
}

#[test]
fn seven_platforms_push_one_index_cache_and_reproduce() {
    if !require_root() {
        return;
    }
    let Some(ctx) = common::busybox_context() else {
        return;
    };
    let reg = TestRegistry::start().expect("start docker-registry");
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let tag = format!("{}/demo/busybox:1", reg.host());
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let ctx_s = ctx.to_str().unwrap();

    let push = || {
        kb(&store, [ctx_s])
            .platform(SEVEN)
            .args(["-t", &tag, "--push"])
            .plain()
            .envs(&env)
            .ok()
    };
    let first = push();
    assert!(first.stderr.contains("DONE"), "{}", first.stderr);

    let index = skopeo_raw(&tag);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let got: Vec<String> = manifest_digests(&index)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let mut want: Vec<String> = SEVEN.split(',').map(String::from).collect();
    want.sort();
    assert_eq!(got, want, "platforms of the pushed index");

    // Each platform manifest's config names its own architecture and variant.
    for (plat, digest) in manifest_digests(&index) {
        let repo = tag.rsplit_once(':').unwrap().0;
        let m = skopeo_raw(&format!("{repo}@{digest}"));
        assert_eq!(
            m["layers"].as_array().unwrap().len(),
            1,
            "{plat}: one COPY layer"
        );
        let cfg = common::skopeo_config_raw(&format!("{repo}@{digest}"));
        assert_eq!(common::platform_name(&cfg), plat);
        assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
        assert!(
            cfg["config"]["Env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "PATH=/bin"),
            "{cfg}"
        );
    }

    // Second run: every step from the cache, same digest.
    let second = push();
    let cached = second
        .stderr
        .lines()
        .filter(|l| l.ends_with(" CACHED"))
        .count();
    assert_eq!(cached, 7, "{}", second.stderr);
    assert!(
        !second.stderr.contains(" DONE "),
        "nothing rebuilt:\n{}",
        second.stderr
    );

    // The same build to an OCI layout tarball, in a fresh store, gives the same manifests.
    let oci = t.path().join("x.tar");
    let third = kb(&t.path().join("store2"), [ctx_s])
        .platform(SEVEN)
        .output(format!("type=oci,dest={}", oci.display()))
        .quiet()
        .envs(&env)
        .ok();
    let layout = t.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let st = std::process::Command::new("tar")
        .args(["-xf", oci.to_str().unwrap(), "-C", layout.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let root = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(third.stdout.trim(), root, "quiet prints the digest");
    let inner: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(root.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest_digests(&inner),
        manifest_digests(&index),
        "reproducible with SOURCE_DATE_EPOCH"
    );
    // skopeo reads the layout.
    common::skopeo_inspect_layout(&layout, "--raw");
}

#[test]
fn copy_chown_workdir_stages_and_local_output() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("app/main.txt"), "hello\n");
    write(&ctx.join("app/skip.log"), "no\n");
    write(&ctx.join("secret.txt"), "ignored\n");
    write(&ctx.join(".dockerignore"), "secret.txt\n**/*.log\n");
    write(&ctx.join("run.sh"), "#!/bin/sh\n");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ctx.join("run.sh"), std::fs::Permissions::from_mode(0o664))
            .unwrap();
    }
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base} AS base\n\
             WORKDIR /srv/data\n\
             COPY --chown=nobody:nogroup app/ ./\n\
             FROM scratch AS out\n\
             COPY --from=base /srv /srv\n\
             COPY --chmod=0600 app/main.txt /etc/motd\n\
             COPY --chmod=u+x,go-w run.sh /bin/run.sh\n"
        ),
    );
    // The busybox fixture's /etc/passwd and /etc/group name nobody/nogroup.
    let out = t.path().join("out");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .output(format!("type=local,dest={}", out.display()))
        .plain()
        .ok();
    use std::os::unix::fs::MetadataExt;
    let f = out.join("srv/data/main.txt");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello\n");
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (65534, 65534),
        "--chown by name resolved in the image"
    );
    assert!(
        !out.join("srv/data/skip.log").exists(),
        ".dockerignore applied"
    );
    assert!(!out.join("secret.txt").exists());
    let motd = std::fs::metadata(out.join("etc/motd")).unwrap();
    assert_eq!(motd.mode() & 0o7777, 0o600);
    let script = std::fs::metadata(out.join("bin/run.sh")).unwrap();
    assert_eq!(
        script.mode() & 0o7777,
        0o744,
        "symbolic --chmod applied to the file's own mode (0664)"
    );
    assert!(
        !out.join("bin/busybox").exists(),
        "scratch stage holds only what was copied"
    );
}

#[test]
fn docker_archive_loads_and_runs_in_dockerd() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("hello.txt"), "hello from kubectl-build\n");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nCOPY hello.txt /srv/\nCMD [\"cat\", \"/srv/hello.txt\"]\n"),
    );
    let tarball = t.path().join("img.tar");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", "kbuild-test/hello:1"])
        .output(format!("type=docker,dest={}", tarball.display()))
        .ok();
    let Some(d) =
        kbuild_testkit::fixtures::started("dockerd", kbuild_testkit::dockerd::Dockerd::start())
    else {
        return;
    };
    d.docker_ok(["load", "-i", tarball.to_str().unwrap()])
        .expect("docker load");
    let out = d
        .docker_ok(["run", "--rm", "--network", "none", "kbuild-test/hello:1"])
        .expect("docker run");
    assert_eq!(out.trim(), "hello from kubectl-build");
}

#[test]
fn unreachable_registry_is_one_clear_line() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a"), "a");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\n");
    let port = kbuild_testkit::registry::free_port().unwrap();
    let tag = format!("127.0.0.1:{port}/x/y:1");
    let r = kb(
        &t.path().join("s"),
        [ctx.to_str().unwrap(), "-t", &tag, "--push"],
    )
    .fails();
    let error = r.error_line();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{}", r.stderr);
}

#[test]
fn missing_base_image_platform_lists_what_it_has() {
    let Some((t, store)) = common::busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\n"));
    let r = kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/s390x")
        .fails();
    assert!(r.stderr.contains("linux/s390x"), "{}", r.stderr);
    assert!(
        r.stderr.contains("linux/amd64") && r.stderr.contains("linux/arm64"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_copy_source_fails_and_tags_nothing() {
    if !require_root() {
        return;
    }
    let reg = TestRegistry::start().expect("registry");
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY nothere.txt /x\n",
    );
    let tag = format!("{}/x/y:1", reg.host());
    let r = kb(
        &t.path().join("s"),
        [ctx.to_str().unwrap(), "-t", &tag, "--push"],
    )
    .fails();
    assert!(r.stderr.contains("nothere.txt"), "{}", r.stderr);
    assert!(!common::registry_has(&tag), "no tag was pushed");
}

#[test]
fn windows_stage_writes_windows_layer_layout() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("app.exe"), "MZ not really a program\n");
    write(&ctx.join("base.txt"), "base\n");
    // A stand-in Windows base image made by the tool itself (no Windows
    // image can be pulled here): one layer in the Windows layout.
    write(
        &ctx.join("Dockerfile.base"),
        "FROM scratch\nCOPY base.txt C:\\\\base.txt\n",
    );
    kb(
        &store,
        [
            ctx.to_str().unwrap(),
            "-f",
            ctx.join("Dockerfile.base").to_str().unwrap(),
        ],
    )
    .platform("windows/amd64")
    .args(["-t", "kbuild.test/winbase:1"])
    .output("type=image")
    .ok();
    write(
        &ctx.join("Dockerfile"),
        "FROM kbuild.test/winbase:1 AS release-windows\nWORKDIR C:\\\\app\nCOPY app.exe .\nENTRYPOINT [\"C:\\\\app\\\\app.exe\"]\n",
    );
    let layout = t.path().join("layout");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("windows/amd64")
        .output(format!("type=oci,dest={},tar=false", layout.display()))
        .ok();
    let (_, manifest) = common::layout_manifests(&layout).remove(0);
    let config = common::read_json(&common::layout_blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["os"], "windows");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["C:\\app\\app.exe"])
    );
    // The planner normalizes Windows WORKDIRs to a drive-less path.
    assert_eq!(config["config"]["WorkingDir"], "/app");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "base layer, WORKDIR's directory, COPY");
    let last = layers[2]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let out = std::process::Command::new("tar")
        .args([
            "-tzf",
            layout.join("blobs/sha256").join(last).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.lines().any(|l| l == "Files/app/app.exe"), "{names}");
    assert!(
        names.lines().any(|l| l.trim_end_matches('/') == "Hives"),
        "{names}"
    );
    assert!(!names.lines().any(|l| l.starts_with("app")), "{names}");
}

/// A one-file HTTP server on loopback for ADD URL; serves `body` for every request.
fn serve_once_per_request(body: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        // Bounded: at most 8 requests, then the thread ends.
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    (port, h)
}

#[test]
fn add_url_with_checksum() {
    if !require_root() {
        return;
    }
    use sha2::Digest;
    const BODY: &[u8] = b"downloaded content\n";
    let (port, _server) = serve_once_per_request(BODY);
    let sum = format!("sha256:{}", hex::encode(sha2::Sha256::digest(BODY)));
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\nADD --checksum={sum} http://127.0.0.1:{port}/files/hello.txt /dl/\n"
        ),
    );
    let out = t.path().join("out");
    kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .output(format!("type=local,dest={}", out.display()))
        .ok();
    use std::os::unix::fs::MetadataExt;
    let f = out.join("dl/hello.txt");
    assert_eq!(std::fs::read(&f).unwrap(), BODY);
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(
        md.mode() & 0o777,
        0o600,
        "ADD URL files get 0600 like Docker"
    );
    assert_eq!(md.mtime(), 784_111_777, "Last-Modified becomes the mtime");

    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\nADD --checksum=sha256:{} http://127.0.0.1:{port}/files/hello.txt /dl/\n",
            "0".repeat(64)
        ),
    );
    let r = kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .output(format!(
            "type=local,dest={}",
            t.path().join("out2").display()
        ))
        .fails();
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert!(
        !t.path().join("out2").exists(),
        "nothing written on failure"
    );
}

#[test]
fn prune_keeps_images_and_drops_the_rest() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "kept\n");
    write(&ctx.join("b.txt"), "dropped\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", "kbuild.test/keep:1"])
        .output("type=image")
        .ok();
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY b.txt /\n");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .ok();
    let r = kb(&store, ["prune", "--all"]).ok();
    assert!(r.stdout.starts_with("removed "), "{}", r.stdout);
    assert!(
        !r.stdout.starts_with("removed 0 blobs"),
        "the unnamed build's blobs go: {}",
        r.stdout
    );
    // The stored image still builds on: its blobs and layers were kept.
    write(
        &ctx.join("Dockerfile"),
        "FROM kbuild.test/keep:1\nCOPY b.txt /\n",
    );
    let out = t.path().join("out");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .output(format!("type=local,dest={}", out.display()))
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "kept\n"
    );
    let again = kb(&store, ["prune"]).ok();
    assert!(again.stdout.contains("removed"), "{}", again.stdout);
}

#[test]
fn zstd_layers_on_request() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "zstd please\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    let layout = t.path().join("layout");
    kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .output(format!(
            "type=oci,dest={},tar=false,compression=zstd",
            layout.display()
        ))
        .ok();
    let (_, m) = common::layout_manifests(&layout).remove(0);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let blob = layout.join("blobs/sha256").join(
        m["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc < '{}' | tar -tf -", blob.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "a.txt"),
        "{:?}",
        out
    );
}

#[test]
fn iidfile_metadata_file_and_tar_output() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "A\n");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /d/a.txt\n",
    );
    let iid = t.path().join("iid");
    let meta = t.path().join("meta.json");
    let tarball = t.path().join("fs.tar");
    let r = kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64,linux/arm64")
        .args(["-t", "kbuild.test/meta:1"])
        .output("type=image")
        .output(format!("type=tar,dest={}", tarball.display()))
        .args([
            "--iidfile",
            iid.to_str().unwrap(),
            "--metadata-file",
            meta.to_str().unwrap(),
        ])
        .quiet()
        .ok();
    let digest = std::fs::read_to_string(&iid).unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(r.stdout.trim(), digest, "quiet prints the same digest");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str());
    assert_eq!(
        m["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(m["image.name"], "kbuild.test/meta:1");
    let out = std::process::Command::new("tar")
        .args(["-tf", tarball.to_str().unwrap()])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    for p in ["linux_amd64/d/a.txt", "linux_arm64/d/a.txt"] {
        assert!(
            names.lines().any(|l| l.trim_start_matches("./") == p),
            "{p} in {names}"
        );
    }
}

#[test]
fn pull_re_resolves_the_base_image() {
    if !require_root() {
        return;
    }
    let reg = TestRegistry::start().expect("registry");
    let t = tempfile::tempdir().unwrap();
    let base = format!("{}/base/img:1", reg.host());
    let ctx = t.path().join("ctx");
    let store = t.path().join("store");
    let push_base = |content: &str| {
        write(&ctx.join("v.txt"), content);
        write(
            &ctx.join("Dockerfile.base"),
            "FROM scratch\nCOPY v.txt /v.txt\n",
        );
        // A separate store: the build store only learns of the base by pulling.
        kb(
            &t.path().join("basestore"),
            [
                ctx.to_str().unwrap(),
                "-f",
                ctx.join("Dockerfile.base").to_str().unwrap(),
            ],
        )
        .platform("linux/amd64")
        .args(["-t", &base, "--push"])
        .ok();
    };
    let build = |extra: &[&str], dest: &Path| {
        write(&ctx.join("Dockerfile"), &format!("FROM {base}\n"));
        let d = format!("type=local,dest={}", dest.display());
        let mut args = vec![ctx.to_str().unwrap(), "--platform", "linux/amd64", "-o", &d];
        args.extend_from_slice(extra);
        run(&store, &args, &[]).ok();
        std::fs::read_to_string(dest.join("v.txt")).unwrap()
    };
    push_base("one\n");
    assert_eq!(build(&[], &t.path().join("o1")), "one\n");
    push_base("two\n");
    assert_eq!(
        build(&[], &t.path().join("o2")),
        "one\n",
        "without --pull the stored base is used"
    );
    assert_eq!(
        build(&["--pull"], &t.path().join("o3")),
        "two\n",
        "--pull asks the registry"
    );
}

/// A TCP forwarder to `target` that holds every PUT/PATCH (uploads, manifests,
/// tags) for `stall`, so a push can be interrupted while it is under way.
fn stalling_proxy(target: u16, stall: std::time::Duration) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Bounded: at most 64 connections, then the proxy stops accepting.
        for client in listener.incoming().take(64) {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s2.read(&mut buf) {
                    if n == 0 || c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].starts_with(b"PUT ") || buf[..n].starts_with(b"PATCH ") {
                        std::thread::sleep(stall);
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn ctrl_c_during_a_push_tags_nothing() {
    if !require_root() {
        return;
    }
    let reg = TestRegistry::start().expect("registry");
    let proxy = stalling_proxy(reg.port(), std::time::Duration::from_secs(30));
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "pushed slowly\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    let tag = format!("127.0.0.1:{proxy}/slow/img:1");
    let mut child = common::kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", &tag, "--push"])
        .plain()
        .spawn();
    // Wait until the build is done and the push has begun (the step finished).
    child.wait_line(&[" DONE "]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SIGINT, as Ctrl-C delivers it.
    child.signal("INT");
    let waited = std::time::Instant::now();
    let (code, seen) = child.finish();
    assert!(
        waited.elapsed() < std::time::Duration::from_secs(25),
        "the CLI did not stop after SIGINT"
    );
    assert_ne!(code, 0);
    assert!(
        seen.iter()
            .any(|l| l.starts_with("error:") && l.contains("cancelled")),
        "{seen:#?}"
    );
    // The registry never got the tag.
    assert!(
        !common::registry_has(&format!("{}/slow/img:1", reg.host())),
        "no tag for the interrupted push"
    );
}

/// The body, the ETag, and the heads of the requests so far.
type EtagState = std::sync::Arc<std::sync::Mutex<(Vec<u8>, String, Vec<String>)>>;

/// A file server for one URL that answers `If-None-Match` with 304 while
/// its ETag matches, and keeps each request's head.
struct EtagServer {
    port: u16,
    state: EtagState,
}

impl EtagServer {
    fn start(body: &[u8], etag: &str) -> EtagServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new((
            body.to_vec(),
            etag.to_string(),
            Vec::new(),
        )));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(32) {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut st = shared.lock().unwrap();
                let not_modified = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase() == format!("if-none-match: {}", st.1));
                st.2.push(head);
                let reply = if not_modified {
                    format!(
                        "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nConnection: close\r\n\r\n",
                        st.1
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                        st.0.len(),
                        st.1
                    )
                };
                let _ = s.write_all(reply.as_bytes());
                if !not_modified {
                    let _ = s.write_all(&st.0);
                }
            }
        });
        EtagServer { port, state }
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().2.clone()
    }

    fn change(&self, body: &[u8], etag: &str) {
        let mut st = self.state.lock().unwrap();
        st.0 = body.to_vec();
        st.1 = etag.to_string();
    }
}

#[test]
fn add_url_asks_the_server_only_when_it_must() {
    if !require_root() {
        return;
    }
    use sha2::Digest;
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    let store = t.path().join("s");
    let build = |dest: &str| {
        kb(&store, [ctx.to_str().unwrap()])
            .platform("linux/amd64")
            .plain()
            .output(format!("type=local,dest={}", t.path().join(dest).display()))
            .ok()
    };

    // With --checksum, a cached ADD needs no request at all.
    let pinned = EtagServer::start(b"pinned\n", "\"p1\"");
    let sum = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"pinned\n")));
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\nADD --checksum={sum} http://127.0.0.1:{}/f.txt /dl/\n",
            pinned.port
        ),
    );
    build("o1");
    assert_eq!(pinned.requests().len(), 1);
    build("o2");
    assert_eq!(
        pinned.requests().len(),
        1,
        "a cached ADD with --checksum downloads nothing"
    );
    assert_eq!(
        std::fs::read(t.path().join("o2/dl/f.txt")).unwrap(),
        b"pinned\n"
    );

    // Without it, the server is asked whether the file changed (ETag).
    let server = EtagServer::start(b"one\n", "\"v1\"");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\nADD http://127.0.0.1:{}/g.txt /dl/\n",
            server.port
        ),
    );
    build("o3");
    assert_eq!(server.requests().len(), 1);
    let r = build("o4");
    let reqs = server.requests();
    assert_eq!(
        reqs.len(),
        2,
        "one conditional request, no download: {reqs:?}"
    );
    assert!(
        reqs[1]
            .to_ascii_lowercase()
            .contains("if-none-match: \"v1\""),
        "{}",
        reqs[1]
    );
    assert!(r.stderr.contains("CACHED"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(t.path().join("o4/dl/g.txt")).unwrap(),
        b"one\n"
    );

    // A changed file is downloaded again and the step runs again.
    server.change(b"two\n", "\"v2\"");
    build("o5");
    assert_eq!(
        std::fs::read(t.path().join("o5/dl/g.txt")).unwrap(),
        b"two\n"
    );
}

//! RUN in a sandbox, for every platform: the real binary runs real
//! processes (natively, or under QEMU through binfmt_misc) on real overlay
//! mounts of the busybox fixture, and what they leave is read back from the
//! exported filesystem, from OCI layouts, from a real registry's storage and
//! from `/proc`.

mod common;

use common::{
    build_local, busybox_store, context, error_lines, files_containing, kb, layer_entries,
    layout_manifests, run, skopeo_to_layout, unique, SEVEN,
};
use kbuild_testkit::registry::TestRegistry;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn uname_reports_each_platforms_machine() {
    let Some((t, store)) = busybox_store(SEVEN) else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\nRUN uname -m > /arch\n",
    );
    let out = t.path().join("out");
    kb(&store, [&ctx])
        .platform(SEVEN)
        .output(format!("type=local,dest={}", out.display()))
        .plain()
        .ok();
    // type=local with several platforms writes one directory per platform.
    let want = [
        ("linux_amd64", "x86_64"),
        ("linux_386", "i686"),
        ("linux_arm_v6", "armv6l"),
        ("linux_arm_v7", "armv7l"),
        ("linux_arm64", "aarch64"),
        ("linux_ppc64le", "ppc64le"),
        ("linux_s390x", "s390x"),
    ];
    for (dir, machine) in want {
        assert_eq!(
            read(out.join(dir).join("arch")).trim(),
            machine,
            "uname -m for {dir}"
        );
    }
}

#[test]
fn failing_run_names_the_step_and_exit_code() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\nRUN false\n",
    );
    let r = kb(&store, [&ctx]).platform("linux/amd64").plain().fails();
    let errors = r.error_lines();
    assert_eq!(errors.len(), 1, "one error line:\n{}", r.stderr);
    let line = errors[0];
    assert_eq!(
        r.stderr.trim_end().lines().last(),
        Some(line),
        "the error is the last thing printed"
    );
    assert!(
        line.contains("[linux/amd64 stage-0 2/2] RUN false"),
        "names the step: {line}"
    );
    assert!(line.contains("exit code: 1"), "gives the exit code: {line}");
    // BuildKit names the process by its argv: the shell form runs through /bin/sh -c.
    assert!(
        line.contains(r#"process "/bin/sh -c false" did not complete successfully"#),
        "{line}"
    );
}

#[test]
fn deletions_become_whiteouts_in_the_pushed_layer() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let reg = TestRegistry::start().expect("start docker-registry");
    let tag = format!("{}/run/whiteout:1", reg.host());
    // Replacing a directory of a lower layer makes it opaque. (Not /etc:
    // /etc/hosts and /etc/resolv.conf are mount points during RUN, so
    // `rm -rf /etc` fails with "Device or resource busy", as in BuildKit.)
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         RUN mkdir /data && echo old > /data/old\n\
         RUN rm /bin/ls\n\
         RUN rm -rf /data && mkdir /data && echo x > /data/new\n",
    );
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .args(["-t", &tag, "--push"])
        .plain()
        .ok();
    let layout = t.path().join("layout");
    skopeo_to_layout(&tag, &layout);
    let manifests = layout_manifests(&layout);
    assert_eq!(manifests.len(), 1);
    let layers = layer_entries(&layout, &manifests[0].1);
    assert_eq!(layers.len(), 4, "busybox + three RUN layers: {layers:?}");
    let has = |layer: &[String], name: &str| layer.iter().any(|e| e == name);
    assert!(has(&layers[1], "data/old"), "{:?}", layers[1]);
    assert!(has(&layers[2], "bin/.wh.ls"), "rm /bin/ls: {:?}", layers[2]);
    assert!(
        !layers[2].iter().any(|e| e.starts_with("data")),
        "{:?}",
        layers[2]
    );
    assert!(
        has(&layers[3], "data/.wh..wh..opq") && has(&layers[3], "data/new"),
        "replaced directory is opaque: {:?}",
        layers[3]
    );
    assert!(!has(&layers[3], "data/.wh.old"), "{:?}", layers[3]);

    // A second build pulls the pushed image back and sees the deletions.
    let ctx2 = context(
        t.path(),
        "ctx2",
        &format!(
            "FROM {tag}\n\
             RUN test ! -e /bin/ls && test ! -e /data/old && test \"$(cat /data/new)\" = x\n"
        ),
    );
    kb(&t.path().join("store2"), [&ctx2])
        .platform("linux/amd64")
        .plain()
        .ok();
}

#[test]
fn secrets_reach_run_but_no_blob() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let reg = TestRegistry::start().expect("start docker-registry");
    let tag = format!("{}/run/secret:1", reg.host());
    let secret = unique("secret");
    let marker = unique("marker");
    let secret_file = t.path().join("tok.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let ctx = context(
        t.path(),
        "ctx",
        &format!(
            "FROM kbuild.test/busybox:latest\n\
             RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && test -s /run/secrets/tok\n\
             RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOK \
                 test \"$TOK\" = \"$(cat /run/secrets/tok)\" && echo {marker} > /marker\n"
        ),
    );
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .args([
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "-t",
            &tag,
            "--push",
        ])
        .plain()
        .ok();
    // The search finds what RUN wrote, inside compressed layers too ...
    assert!(
        files_containing(&store, marker.as_bytes())
            .iter()
            .any(|p| p.starts_with(store.join("content"))),
        "the marker is in a layer blob of the store"
    );
    assert!(
        !files_containing(&reg.storage(), marker.as_bytes()).is_empty(),
        "the marker was pushed"
    );
    // ... and the secret nowhere.
    assert_eq!(
        files_containing(&store, secret.as_bytes()),
        Vec::<PathBuf>::new(),
        "secret in the store"
    );
    assert_eq!(
        files_containing(&reg.storage(), secret.as_bytes()),
        Vec::<PathBuf>::new(),
        "secret in the registry"
    );

    // Without the secret, a required mount fails with a hint (an optional
    // one, BuildKit's default, is just absent).
    let ctx = context(
        t.path(),
        "required",
        "FROM kbuild.test/busybox:latest\n\
         RUN --mount=type=secret,id=tok,required true\n",
    );
    let r = kb(&store, [&ctx]).platform("linux/amd64").fails();
    assert!(
        r.stderr.contains("RUN") && r.stderr.contains("--secret id=tok"),
        "{}",
        r.stderr
    );
}

#[test]
fn cache_mount_persists_across_builds_and_stays_out_of_the_image() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         RUN --mount=type=cache,target=/cache sh -c 'echo $RANDOM >> /cache/log; wc -l < /cache/log > /count'\n",
    );
    let build = |dest: &Path, extra: &[&str]| {
        let out = format!("type=local,dest={}", dest.display());
        let mut args = vec![
            ctx.as_str(),
            "--platform",
            "linux/amd64",
            "-o",
            &out,
            "--progress",
            "plain",
        ];
        args.extend_from_slice(extra);
        run(&store, &args, &[]).ok();
    };
    let first = t.path().join("out1");
    let second = t.path().join("out2");
    build(&first, &[]);
    build(&second, &["--no-cache"]);
    assert_eq!(read(first.join("count")).trim(), "1");
    assert_eq!(
        read(second.join("count")).trim(),
        "2",
        "the second run saw the first run's line"
    );
    assert!(
        !second.join("cache/log").exists(),
        "cache content is not in the image"
    );
}

/// Pids of processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn ctrl_c_stops_the_step_and_cleans_up() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    // An unusual duration, so no other test's sleep is mistaken for ours.
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\nRUN --mount=type=secret,id=tok sleep 173\n",
    );
    let secret = t.path().join("tok");
    std::fs::write(&secret, unique("secret")).unwrap();
    // The build's temporary files (the secret's copy among them) go here.
    let tmp = t.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let log = t.path().join("log");
    let mut child = Command::new(common::bin())
        .arg("--root")
        .arg(&store)
        .args([&ctx, "--platform", "linux/amd64", "--progress", "plain"])
        .arg("--secret")
        .arg(format!("id=tok,src={}", secret.display()))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id();
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("sleep 173") && !processes(&["sleep", "173"]).is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the step did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_some(),
        "the secret's temporary copy exists while the step runs"
    );
    let st = Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(st.success());
    let interrupted = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if interrupted.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("still running 15 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("error:")),
        "says it stopped:\n{text}"
    );
    assert_eq!(
        processes(&["sleep", "173"]),
        Vec::<u32>::new(),
        "sleep left running"
    );
    let root = store.to_str().unwrap();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(root))
        .map(String::from)
        .collect();
    assert_eq!(mounts, Vec::<String>::new(), "mounts left under the root");
    let left: Vec<_> = std::fs::read_dir(store.join("snapshots/mounts"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(left, Vec::<PathBuf>::new(), "snapshot mounts left");
    let temporary: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        temporary,
        Vec::<PathBuf>::new(),
        "temporary files (secrets) left"
    );
}

#[test]
fn user_and_workdir_as_buildkit() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         WORKDIR /new/dir\n\
         RUN pwd > /tmp/pwd && echo \"$HOME\" > /tmp/root-home\n\
         USER nobody\n\
         RUN id -u > /tmp/nobody && echo \"$HOME\" > /tmp/nobody-home\n\
         WORKDIR /home/nobody/work\n\
         RUN touch made-by-nobody\n\
         USER 1234:5678\n\
         RUN id -u > /tmp/numeric && id -g >> /tmp/numeric && echo \"$HOME\" >> /tmp/numeric\n",
    );
    let out = t.path().join("out");
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .output(format!("type=local,dest={}", out.display()))
        .plain()
        .ok();
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &str| {
        let md = std::fs::metadata(out.join(p)).unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(read(out.join("tmp/pwd")), "/new/dir\n");
    assert_eq!(owner("new/dir"), (0, 0));
    assert_eq!(read(out.join("tmp/nobody")), "65534\n");
    // The fixture's passwd has no 1234: the ids are taken as given.
    assert_eq!(read(out.join("tmp/numeric")), "1234\n5678\n/\n");
    // HOME comes from /etc/passwd when the image sets none, as runc does.
    assert_eq!(read(out.join("tmp/root-home")), "/root\n");
    assert_eq!(read(out.join("tmp/nobody-home")), "/nonexistent\n");
    // WORKDIR after USER creates the missing directories owned by that user.
    for dir in ["home", "home/nobody", "home/nobody/work"] {
        assert_eq!(owner(dir), (65534, 65534), "{dir}");
    }
    assert_eq!(owner("home/nobody/work/made-by-nobody"), (65534, 65534));

    let ctx = context(
        t.path(),
        "ghost",
        "FROM kbuild.test/busybox:latest\nUSER ghost\nRUN true\n",
    );
    let r = kb(&store, [&ctx]).platform("linux/amd64").fails();
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("RUN true") && line.contains("unable to find user ghost"),
        "{}",
        r.stderr
    );
}

#[test]
fn network_none_and_add_host() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         RUN --network=none cat /proc/net/dev > /netdev\n\
         RUN cat /etc/hosts > /hosts.txt\n",
    );
    let layout = t.path().join("layout");
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .args(["--add-host", "db:10.1.2.3"])
        .output(format!("type=oci,dest={},tar=false", layout.display()))
        .plain()
        .ok();
    let manifests = layout_manifests(&layout);
    assert_eq!(manifests.len(), 1);
    let layers = layer_entries(&layout, &manifests[0].1);
    assert_eq!(layers.len(), 3, "{layers:?}");
    for layer in &layers[1..] {
        assert!(
            !layer
                .iter()
                .any(|e| e == "etc/hosts" || e == "etc/resolv.conf"),
            "RUN's /etc/hosts stays out of the layer: {layer:?}"
        );
    }
    // Read the files RUN wrote back from the layers.
    let fs = t.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    for l in manifests[0].1["layers"].as_array().unwrap() {
        let blob = common::layout_blob(&layout, l["digest"].as_str().unwrap());
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&blob)
            .arg("-C")
            .arg(&fs)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let netdev = read(fs.join("netdev"));
    let interfaces: Vec<&str> = netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, vec!["lo"], "{netdev}");
    let hosts = read(fs.join("hosts.txt"));
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["10.1.2.3", "db"]),
        "{hosts}"
    );
}

#[test]
fn heredoc_runs_as_the_script() {
    let Some((t, store)) = busybox_store("linux/arm64") else {
        return;
    };
    // A lone heredoc is the script (BuildKit's "fake heredoc"); one that
    // feeds a command is read by the shell; `<<-` strips leading tabs.
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         RUN <<EOF\n\
         echo one > /one\n\
         echo \"$(uname -m)\" >> /one\n\
         EOF\n\
         RUN cat > /two <<'EOF'\n\
         $NOT_EXPANDED\n\
         EOF\n\
         RUN <<-EOF\n\
         \techo tabbed > /three\n\
         \tEOF\n",
    );
    let out = t.path().join("out");
    kb(&store, [&ctx])
        .platform("linux/arm64")
        .output(format!("type=local,dest={}", out.display()))
        .plain()
        .ok();
    assert_eq!(read(out.join("one")), "one\naarch64\n");
    assert_eq!(read(out.join("two")), "$NOT_EXPANDED\n");
    assert_eq!(read(out.join("three")), "tabbed\n");
}

#[test]
fn a_dockerfile_cannot_write_host_kernel_settings() {
    let Some((t, store)) = busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    // Writes back the value already there: harmless if it ever succeeded.
    let ctx = context(
        t.path(),
        "sysctl",
        "FROM kbuild.test/busybox:latest\n\
         RUN v=$(cat /proc/sys/kernel/core_pattern); \
             (echo \"$v\" > /proc/sys/kernel/core_pattern && echo written || echo refused) > /core; \
             (cat /proc/keys | wc -c) > /keys; \
             grep '^Seccomp:' /proc/self/status | sed 's/[^0-9]//g' > /seccomp\n",
    );
    let out = build_local(
        &store,
        &ctx,
        "linux/amd64,linux/arm64",
        &t.path().join("out"),
        &[],
    );
    for dir in ["linux_amd64", "linux_arm64"] {
        assert_eq!(read(out.join(dir).join("core")).trim(), "refused", "{dir}");
        assert_eq!(read(out.join(dir).join("keys")).trim(), "0", "{dir}");
        assert_eq!(read(out.join(dir).join("seccomp")).trim(), "2", "{dir}");
    }
}

#[test]
fn security_insecure_needs_the_entitlement() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "insecure",
        "FROM kbuild.test/busybox:latest\n\
         RUN echo sandboxed\n\
         RUN --security=insecure grep '^Seccomp:' /proc/self/status | sed 's/[^0-9]//g' > /seccomp\n",
    );
    let r = kb(&store, [&ctx]).platform("linux/amd64").fails();
    let errors = error_lines(&r.stderr);
    assert_eq!(errors.len(), 1, "one error line:\n{}", r.stderr);
    assert!(
        errors[0].contains("Dockerfile:3")
            && errors[0].contains("security.insecure")
            && errors[0].contains("--allow security.insecure"),
        "{}",
        errors[0]
    );
    // Refused before anything ran.
    assert!(!r.stderr.contains("sandboxed"), "{}", r.stderr);
    let bad = kb(&store, [&ctx, "--allow", "security.everything"]).fails();
    assert!(
        bad.stderr.contains("invalid --allow value"),
        "{}",
        bad.stderr
    );

    let out = build_local(
        &store,
        &ctx,
        "linux/amd64",
        &t.path().join("out"),
        &["--allow", "security.insecure"],
    );
    assert_eq!(read(out.join("seccomp")).trim(), "0");
}

#[test]
fn one_failing_platform_stops_the_others_at_once() {
    let Some((t, store)) = busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    // arm64 fails at once; amd64 would run for minutes (an unusual
    // duration, so no other test's sleep is mistaken for this one).
    let ctx = context(
        t.path(),
        "failfast",
        "FROM kbuild.test/busybox:latest\n\
         RUN if [ \"$(uname -m)\" = aarch64 ]; then echo broken; exit 3; fi; sleep 161\n",
    );
    let started = Instant::now();
    let r = kb(&store, [&ctx])
        .platform("linux/amd64,linux/arm64")
        .plain()
        .fails();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}:\n{}",
        r.stderr
    );
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        error.contains("linux/arm64") && error.contains("exit code: 3"),
        "{}",
        r.stderr
    );
    // No step process is left behind.
    assert!(
        processes(&["sleep", "161"]).is_empty(),
        "a sleep survived the failed build"
    );
}

#[test]
fn image_history_is_the_op_graphs() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        "FROM kbuild.test/busybox:latest\n\
         ARG GREETING=hi\n\
         RUN echo \"$GREETING\" > /greeting\n\
         COPY <<EOF /etc/motd\n\
         welcome\n\
         EOF\n\
         EXPOSE 8080 53/udp\n\
         VOLUME /data\n\
         HEALTHCHECK --interval=30s CMD [\"true\"]\n\
         CMD [\"cat\", \"/greeting\"]\n",
    );
    let layout = t.path().join("layout");
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .output(format!("type=oci,dest={},tar=false", layout.display()))
        .plain()
        .ok();
    let manifests = layout_manifests(&layout);
    let config = common::read_json(&common::layout_blob(
        &layout,
        manifests[0].1["config"]["digest"].as_str().unwrap(),
    ));
    let history: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["comment"] == "buildkit.dockerfile.v0")
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    let dry: serde_json::Value = serde_json::from_str(
        &kb(&store, [&ctx])
            .platform("linux/amd64")
            .args(["--dry-run=json"])
            .ok()
            .stdout,
    )
    .unwrap();
    // The graph's history texts, minus ARG's (this solver writes none yet).
    let graph: Vec<&str> = dry["graph"]["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["op"]["history"]["created_by"].as_str())
        .filter(|h| !h.starts_with("ARG "))
        .collect();
    // The base image (built by this tool) brings entries of its own first.
    assert!(history.len() >= graph.len(), "{history:?}");
    let history = &history[history.len() - graph.len()..];
    assert_eq!(history, graph);
    assert_eq!(
        history,
        [
            "RUN |1 GREETING=hi /bin/sh -c echo \"$GREETING\" > /greeting # buildkit",
            "COPY <<EOF /etc/motd # buildkit",
            "EXPOSE map[53/udp:{} 8080/tcp:{}]",
            "VOLUME [/data]",
            "HEALTHCHECK &{[\"CMD\" \"true\"] \"30s\" \"0s\" \"0s\" \"0s\" '\\x00'}",
            "CMD [\"cat\" \"/greeting\"]",
        ]
    );
}

//! `-o type=containerd`: the image goes into a real containerd (a private
//! one of the test kit, Debian's package, overlayfs snapshotter) through its
//! gRPC API, unpacked for this machine, and `ctr run` runs it; locally and
//! through a `kubectl-build serve` daemon.

mod common;

use common::{require_root, write};
use kbuild_testkit::containerd::Containerd;
use std::collections::BTreeMap;
use std::path::Path;

const NS: &str = "k8s.io";

fn start_containerd() -> Option<Containerd> {
    kbuild_testkit::fixtures::started("containerd", Containerd::start())
}

/// `ctr content ls`: digest → labels.
fn content(c: &Containerd) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = c.ctr_ok(NS, ["content", "ls"]).expect("ctr content ls");
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let digest = f.next()?.to_string();
            let labels = l
                .split_whitespace()
                .last()
                .filter(|s| s.contains('='))
                .map(|s| {
                    s.split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            Some((digest, labels))
        })
        .collect()
}

/// Committed snapshots of the overlayfs snapshotter.
fn snapshots(c: &Containerd) -> Vec<String> {
    c.ctr_ok(NS, ["snapshots", "ls"])
        .expect("ctr snapshots ls")
        .lines()
        .skip(1)
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `ctr run --rm IMAGE NAME-PID ARGS`: what the container printed.
fn ctr_run(c: &Containerd, image: &str, name: &str, args: &[&str]) -> String {
    let id = format!("{name}-{}", std::process::id());
    let mut run = vec!["run", "--rm", image, &id];
    run.extend_from_slice(args);
    c.ctr_ok(NS, run).expect("ctr run")
}

fn images(c: &Containerd) -> Vec<String> {
    c.ctr_ok(NS, ["images", "ls", "-q"])
        .expect("ctr images ls")
        .lines()
        .map(str::to_string)
        .collect()
}

fn context(dir: &Path, base: &str) -> String {
    write(&dir.join("hello.txt"), "loaded into containerd\n");
    write(
        &dir.join("Dockerfile"),
        &format!(
            "FROM {base}\nARG TARGETARCH\nCOPY hello.txt /srv/\nRUN echo \"$TARGETARCH\" > /srv/arch\nCMD [\"cat\", \"/srv/hello.txt\"]\n"
        ),
    );
    dir.to_str().unwrap().to_string()
}

#[test]
fn containerd_output_loads_unpacks_and_ctr_runs_it() {
    let Some((t, store)) = common::busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = context(&t.path().join("ctx"), base);
    let Some(c) = start_containerd() else {
        return;
    };
    let socket = c.socket();
    let output = format!("type=containerd,address={}", socket.display());
    let build = |extra: &[&str]| {
        let mut args = vec![
            ctx.as_str(),
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "kbuild-test/ctr:1",
            "-t",
            "127.0.0.1:5000/kbuild-test/ctr:extra",
            "-o",
            &output,
        ];
        args.extend_from_slice(extra);
        common::kb(&store, &args).ok()
    };
    let r = build(&[]);
    assert!(
        r.stderr.contains(&format!(
            "=> loaded docker.io/kbuild-test/ctr:1, 127.0.0.1:5000/kbuild-test/ctr:extra into containerd at {} (namespace k8s.io; unpacked linux/amd64)",
            socket.display()
        )),
        "{}",
        r.stderr
    );
    let names = images(&c);
    assert!(
        names.contains(&"docker.io/kbuild-test/ctr:1".to_string())
            && names.contains(&"127.0.0.1:5000/kbuild-test/ctr:extra".to_string()),
        "{names:?}"
    );

    // The index names both manifests, each manifest its config and
    // layers; layers carry their diff IDs; exactly one config (amd64)
    // names its unpacked top snapshot, which containerd holds committed.
    let blobs = content(&c);
    let index = blobs
        .values()
        .find(|l| l.contains_key("containerd.io/gc.ref.content.m.1"))
        .unwrap_or_else(|| panic!("no index labelled with its manifests: {blobs:?}"));
    for m in ["m.0", "m.1"] {
        let digest = &index[&format!("containerd.io/gc.ref.content.{m}")];
        let manifest = &blobs[digest];
        assert!(manifest.contains_key("containerd.io/gc.ref.content.config"));
        assert!(manifest.contains_key("containerd.io/gc.ref.content.l.0"));
        for (k, layer) in manifest {
            if k.starts_with("containerd.io/gc.ref.content.l.") {
                assert!(
                    blobs[layer]["containerd.io/uncompressed"].starts_with("sha256:"),
                    "{layer}: {:?}",
                    blobs[layer]
                );
            }
        }
    }
    let tops: Vec<&String> = blobs
        .values()
        .filter_map(|l| l.get("containerd.io/gc.ref.snapshot.overlayfs"))
        .collect();
    assert_eq!(tops.len(), 1, "{blobs:?}");
    let committed = snapshots(&c);
    assert!(
        committed.contains(tops[0]),
        "{committed:?} lacks {}",
        tops[0]
    );
    // busybox, COPY, RUN: three layers unpacked.
    assert_eq!(committed.len(), 3, "{committed:?}");

    // ctr runs it as loaded (runc, no network).
    let out = ctr_run(&c, "docker.io/kbuild-test/ctr:1", "kbuild-ctr", &[]);
    assert_eq!(out.trim(), "loaded into containerd");
    let out = ctr_run(
        &c,
        "docker.io/kbuild-test/ctr:1",
        "kbuild-ctr-arch",
        &["cat", "/srv/arch"],
    );
    assert_eq!(out.trim(), "amd64");

    // Loading again changes nothing: same images, blobs, labels, snapshots.
    let before = (images(&c), content(&c), snapshots(&c));
    let r = build(&[]);
    assert!(r.stderr.contains("into containerd at"), "{}", r.stderr);
    assert_eq!(before, (images(&c), content(&c), snapshots(&c)));

    // containerd's garbage collector keeps every platform's content while a
    // name refers to the index, and takes it all once none does.
    c.ctr_ok(
        NS,
        [
            "images",
            "rm",
            "--sync",
            "127.0.0.1:5000/kbuild-test/ctr:extra",
        ],
    )
    .expect("ctr images rm");
    assert_eq!(before.1, content(&c));
    assert_eq!(before.2, snapshots(&c));
    c.ctr_ok(
        NS,
        ["images", "rm", "--sync", "docker.io/kbuild-test/ctr:1"],
    )
    .expect("ctr images rm");
    assert!(content(&c).is_empty(), "{:?}", content(&c));
    assert!(snapshots(&c).is_empty(), "{:?}", snapshots(&c));

    // unpack= picks the platforms to unpack (here both).
    let both = format!("{output},\"unpack=linux/amd64,linux/arm64\"");
    let r = common::kb(&store, [ctx.as_str(), "-t", "kbuild-test/ctr:1"])
        .platform("linux/amd64,linux/arm64")
        .output(&both)
        .ok();
    assert!(
        r.stderr.contains("unpacked linux/amd64, linux/arm64"),
        "{}",
        r.stderr
    );
    let tops = content(&c)
        .values()
        .filter(|l| l.contains_key("containerd.io/gc.ref.snapshot.overlayfs"))
        .count();
    assert_eq!(tops, 2);

    // A platform the image lacks in unpack= is an error naming what it
    // has, and containerd gets nothing new.
    let before = (content(&c), snapshots(&c));
    let s390x = format!("{output},unpack=linux/s390x");
    let r = common::kb(&store, [ctx.as_str(), "-t", "kbuild-test/ctr:2"])
        .platform("linux/amd64,linux/arm64")
        .output(&s390x)
        .fails();
    assert!(
        r.stderr.contains(
            "unpack=linux/s390x: the image has no such platform (it has linux/amd64, linux/arm64)"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(before, (content(&c), snapshots(&c)));
}

#[test]
fn containerd_output_errors_name_the_socket_and_the_fix() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "a\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    let missing = t.path().join("no-containerd.sock");
    let output = format!("type=containerd,address={}", missing.display());
    let r = common::kb(&store, [ctx.to_str().unwrap(), "-t", "kbuild-test/x:1"])
        .output(&output)
        .fails();
    let error = r.error_line();
    assert!(
        error.contains(&format!("no containerd socket at {}", missing.display()))
            && error.contains("is containerd running? pass address="),
        "{}",
        error
    );
    // A file that is not a socket: containerd cannot be reached there.
    std::fs::write(&missing, "").unwrap();
    let r = common::kb(&store, [ctx.to_str().unwrap(), "-t", "kbuild-test/x:1"])
        .output(&output)
        .fails();
    let error = r.error_line();
    assert!(
        error.contains(&format!("cannot reach containerd at {}", missing.display())),
        "{}",
        error
    );
    // No name: refused before the build.
    let r = common::kb(&store, [ctx.to_str().unwrap(), "--dry-run"])
        .output(&output)
        .fails();
    assert!(r.stderr.contains("needs an image name"), "{}", r.stderr);
}

/// Through a builder daemon the output runs on the daemon: the image goes
/// into the containerd of the daemon's machine (here the same one).
#[test]
fn containerd_output_through_a_serve_daemon() {
    if !require_root() {
        return;
    }
    let env = common::client();
    let mut daemon = common::serve_builder(&env, "node", &[]);
    let Some(bb) = common::busybox_context() else {
        return;
    };
    env.kb([bb.to_str().unwrap(), "-t", common::BUSYBOX])
        .builder("node")
        .platform("linux/amd64")
        .output("type=image")
        .ok();
    let ctx = context(&env.path("ctx"), common::BUSYBOX);
    let Some(c) = start_containerd() else {
        return;
    };
    let output = format!("type=containerd,address={}", c.socket().display());
    let r = env
        .kb([ctx.as_str(), "-t", "kbuild-test/remote:1"])
        .builder("node")
        .platform("linux/amd64")
        .output(&output)
        .ok();
    assert!(
        r.stderr.contains(&format!(
            "=> loaded docker.io/kbuild-test/remote:1 into containerd at {} (namespace k8s.io; unpacked linux/amd64) (builder node)",
            c.socket().display()
        )),
        "{}",
        r.stderr
    );
    let out = ctr_run(&c, "docker.io/kbuild-test/remote:1", "kbuild-remote", &[]);
    assert_eq!(out.trim(), "loaded into containerd");
    // A bad address fails the remote build with the daemon's one line.
    let missing = env.path("none.sock");
    let r = env
        .kb([ctx.as_str(), "-t", "kbuild-test/remote:1"])
        .builder("node")
        .platform("linux/amd64")
        .output(format!("type=containerd,address={}", missing.display()))
        .fails();
    let error = r.error_line();
    assert!(
        error.contains(&format!("no containerd socket at {}", missing.display())),
        "{}",
        error
    );
    drop(c);
    let _ = daemon.terminate();
}

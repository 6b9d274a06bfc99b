//! `--push` overlapped with the build, through `kbuild-fault-proxy` (which
//! logs every request in arrival order) in front of a real `docker-registry`:
//! the layers of a platform that is done go up while another platform still
//! runs its RUN step, every blob goes up once, manifests follow their blobs
//! and the tag comes last; a build that fails writes no manifest and no tag.

mod common;

use common::*;
use kbuild_testkit::faults::{FaultProxy, Logged};
use kbuild_testkit::registry::TestRegistry;
use std::path::Path;
use std::time::Duration;

/// What the RUN step of the slow platform (linux/386) requests from the
/// proxy when it is about to end: its place in the proxy's log marks a time
/// when the build had not finished.
const MARKER: &str = "/v2/build-still-running/";

struct Setup {
    _t: tempfile::TempDir,
    store: std::path::PathBuf,
    ctx: std::path::PathBuf,
    reg: TestRegistry,
    proxy: FaultProxy,
}

/// A store with the busybox base for linux/amd64 and linux/386, and a
/// context whose linux/386 RUN step sleeps, then requests [`MARKER`], then
/// runs `last` (its exit status is the step's).
fn setup(last: &str) -> Option<Setup> {
    if !require_root() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let base = busybox_image(&store, "linux/amd64,linux/386")?;
    let reg = TestRegistry::start().expect("start docker-registry");
    let proxy = kbuild_testkit::fixtures::started(
        "fault proxy",
        FaultProxy::start(&reg.host(), 1, &[], (4096, Duration::from_millis(20))),
    )?;
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("shared.txt"),
        &unique("the same in every platform"),
    );
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             ARG TARGETARCH\n\
             COPY shared.txt /shared.txt\n\
             RUN if [ \"$TARGETARCH\" = 386 ]; then busybox sleep 3; \
             busybox wget -q -O /dev/null http://{}{MARKER} || true; {last}; fi; \
             echo $TARGETARCH > /arch\n",
            proxy.host()
        ),
    );
    Some(Setup {
        _t: t,
        store,
        ctx,
        reg,
        proxy,
    })
}

fn push(s: &Setup, tag: &str) -> Run {
    kb(&s.store, [s.ctx.to_str().unwrap()])
        .platform("linux/amd64,linux/386")
        .args(["-t", tag, "--push"])
        .plain()
        .envs(&[("SOURCE_DATE_EPOCH", "1700000000")])
        .run()
}

fn marker_at(log: &[Logged]) -> usize {
    log.iter()
        .position(|l| l.method == "GET" && l.target == MARKER)
        .unwrap_or_else(|| panic!("the slow RUN step never reached the proxy: {log:#?}"))
}

/// The blob a closing PUT (`PUT ...?digest=sha256:...`) names.
fn closed_blob(l: &Logged) -> Option<String> {
    (l.kind == "blob-put").then(|| {
        let q = l.target.split_once("digest=").map_or("", |(_, d)| d);
        q.split('&').next().unwrap_or("").replace("%3A", ":")
    })
}

fn layout_has(layout: &Path, digest: &str) -> bool {
    layout_blob(layout, digest).is_file()
}

#[test]
fn layers_upload_while_the_build_runs_and_the_tag_comes_last() {
    let Some(s) = setup("true") else { return };
    let tag = format!("{}/overlap/img:1", s.proxy.host());
    push(&s, &tag).ok();
    let log = s.proxy.log();
    let marker = marker_at(&log);

    // Uploads began while linux/386 was still in its RUN step.
    let early: Vec<String> = log[..marker].iter().filter_map(closed_blob).collect();
    assert!(
        !early.is_empty(),
        "no blob was uploaded before the build finished: {log:#?}"
    );
    // Nothing names them before the build is done.
    assert!(
        log[..marker].iter().all(|l| l.kind != "manifest-put"),
        "{log:#?}"
    );

    // Each blob went up once, though both platforms share the base layer
    // and the COPY layer.
    let mut closed: Vec<String> = log.iter().filter_map(closed_blob).collect();
    let all = closed.len();
    closed.sort();
    closed.dedup();
    assert_eq!(all, closed.len(), "a blob was uploaded twice: {log:#?}");

    // Manifests after every blob, the index after the manifests, the tag last.
    let last_blob = log.iter().rposition(|l| l.kind == "blob-put").unwrap();
    let manifest_puts: Vec<(usize, &Logged)> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.kind == "manifest-put")
        .collect();
    assert_eq!(
        manifest_puts.len(),
        4,
        "2 manifests, the index, the tag: {log:#?}"
    );
    assert!(manifest_puts[0].0 > last_blob, "{log:#?}");
    assert!(
        manifest_puts[3].1.target.ends_with("/manifests/1"),
        "{log:#?}"
    );
    assert_eq!(
        manifest_puts[3].0,
        log.len() - 1,
        "the tag is the last request: {log:#?}"
    );

    // Every manifest and blob, read back through the registry itself and
    // checked against its digest by skopeo.
    let direct = format!("{}/overlap/img:1", s.reg.host());
    let index = skopeo_raw(&direct);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    let layout = s._t.path().join("layout");
    skopeo_to_layout(&direct, &layout);
    let mut referenced = Vec::new();
    for m in manifests {
        let digest = m["digest"].as_str().unwrap();
        assert!(layout_has(&layout, digest), "{digest}");
        let manifest = skopeo_raw(&format!("{}/overlap/img@{digest}", s.reg.host()));
        let blobs = std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().unwrap())
            .map(|d| d["digest"].as_str().unwrap().to_string());
        for b in blobs {
            assert!(layout_has(&layout, &b), "{b} of {digest}");
            referenced.push(b);
        }
    }
    referenced.sort();
    referenced.dedup();
    assert_eq!(
        referenced, closed,
        "every blob the image needs was uploaded once, and nothing else"
    );
    assert!(early.iter().all(|b| referenced.contains(b)));
}

#[test]
fn a_build_that_fails_in_its_last_platform_writes_no_manifest_and_no_tag() {
    let Some(s) = setup("exit 3") else { return };
    let tag = format!("{}/failed/img:1", s.proxy.host());
    let out = push(&s, &tag).fails();
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("exit"), "{}", errors[0]);
    let log = s.proxy.log();
    marker_at(&log);
    assert!(
        log.iter().any(|l| l.kind == "blob-put"),
        "linux/amd64's layers went up while linux/386 ran: {log:#?}"
    );
    assert!(log.iter().all(|l| l.kind != "manifest-put"), "{log:#?}");
    assert!(!registry_has(&format!("{}/failed/img:1", s.reg.host())));
}

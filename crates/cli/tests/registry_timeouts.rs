//! `--registry-timeout` / `KUBECTL_BUILD_REGISTRY_TIMEOUTS`: a registry that
//! never answers stops a push within the limits, with one line naming the
//! registry and the operation, and no tag.

mod common;

use common::{kb, require_root, write};
use kbuild_testkit::faults::FaultProxy;
use kbuild_testkit::registry::TestRegistry;
use std::time::{Duration, Instant};

#[test]
fn a_registry_that_never_answers_fails_the_push_within_the_limits() {
    if !require_root() {
        return;
    }
    let reg = TestRegistry::start().expect("registry");
    let Some(proxy) = kbuild_testkit::fixtures::started(
        "fault proxy",
        FaultProxy::start(
            &reg.host(),
            1,
            &["manifest-put=hang".to_string()],
            (4096, Duration::from_millis(20)),
        ),
    ) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "never tagged\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /\n");
    let tag = format!("{}/hung/img:1", proxy.host());
    let started = Instant::now();
    let out = kb(&t.path().join("s"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", &tag, "--push"])
        .plain()
        .envs(&[("KUBECTL_BUILD_REGISTRY_TIMEOUTS", "response=1s,idle=1s")])
        .fails();
    // 5 attempts of 1 s each plus backoff (0.25 + 0.5 + 1 + 2 s), far below the 2 min default.
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let error = out.error_line();
    assert!(
        error.contains(&format!("registry {}", proxy.host()))
            && error.contains("sent no reply within 1s")
            && error.contains("PUT manifest")
            && error.contains("--registry-timeout response="),
        "{}",
        error
    );
    assert!(proxy.faults_injected() >= 1);
    assert!(
        !common::registry_has(&format!("{}/hung/img:1", reg.host())),
        "a failed push leaves no tag"
    );
}

#[test]
fn a_bad_timeout_spec_names_the_flag_before_building() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\n");
    let out = kb(
        &t.path().join("s"),
        [ctx.to_str().unwrap(), "--registry-timeout", "idle=soon"],
    )
    .fails();
    assert!(
        out.stderr.contains("--registry-timeout")
            && out.stderr.contains("\"soon\" is not a duration"),
        "{}",
        out.stderr
    );
    assert!(!t.path().join("s").exists(), "nothing written");
}

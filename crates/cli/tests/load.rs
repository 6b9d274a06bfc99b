//! `--load`: the image goes straight into a real Docker daemon (a private
//! dockerd of the test kit, reached through DOCKER_HOST), which runs it.

mod common;

use common::{kb, write};

#[test]
fn load_puts_the_image_into_dockerd_which_runs_it() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("hello.txt"), "loaded by kubectl-build\n");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nCOPY hello.txt /srv/\nCMD [\"cat\", \"/srv/hello.txt\"]\n"),
    );
    let Some(d) =
        kbuild_testkit::fixtures::started("dockerd", kbuild_testkit::dockerd::Dockerd::start())
    else {
        return;
    };
    let host = d.host();
    let r = kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", "kbuild-test/loaded:1", "--load"])
        .envs(&[("DOCKER_HOST", &host)])
        .ok();
    assert!(
        r.stderr
            .contains("loaded kbuild-test/loaded:1 into the Docker daemon"),
        "{}",
        r.stderr
    );
    let out = d
        .docker_ok(["run", "--rm", "--network", "none", "kbuild-test/loaded:1"])
        .expect("docker run");
    assert_eq!(out.trim(), "loaded by kubectl-build");

    // No daemon there: one clear line, naming the socket and the fix.
    let missing = t.path().join("no-docker.sock");
    let r = kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["--load"])
        .envs(&[("DOCKER_HOST", &format!("unix://{}", missing.display()))])
        .fails();
    let errors = common::error_lines(&r.stderr);
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("cannot reach the Docker daemon")
            && errors[0].contains(missing.to_str().unwrap()),
        "{}",
        errors[0]
    );
    // Several platforms cannot go into the classic docker store.
    let r = kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64,linux/arm64")
        .args(["--load"])
        .envs(&[("DOCKER_HOST", &host)])
        .fails();
    assert!(r.stderr.contains("hold one platform"), "{}", r.stderr);
}

//! Progress people can follow: in plain and tty modes, every RUN output line
//! carries its step's number and comes after the step's header, and a failed
//! step is marked ERROR. The tty mode runs under a real pseudo-terminal
//! (`script` from util-linux).

mod common;

use common::{bin, busybox_image, require_root, write};
use std::process::Command;

fn build_failing(mode: &str) -> Option<String> {
    if !require_root() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    busybox_image(&store, "linux/amd64")?;
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM kbuild.test/busybox:latest\nRUN echo first-line; echo second-line; exit 7\n",
    );
    let command = format!(
        "{} --root {} {} --platform linux/amd64 --progress {mode}",
        bin().display(),
        store.display(),
        ctx.display()
    );
    let out = if mode == "tty" {
        Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("TERM", "xterm")
            .output()
            .expect("run script (util-linux)")
    } else {
        Command::new("sh").args(["-c", &command]).output().unwrap()
    };
    assert!(!out.status.success());
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text)
}

fn check(mode: &str, text: &str) {
    // The step's number, from its header (`#N [platform stage i/n] RUN ...`).
    let run_at = text
        .find("] RUN echo first-line")
        .unwrap_or_else(|| panic!("{mode}: no header:\n{text}"));
    let hash = text[..run_at].rfind('#').unwrap();
    let id: String = text[hash + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(!id.is_empty(), "{mode}: header without #N:\n{text}");
    let header_at = text.find(&format!("#{id} ")).unwrap();
    for line in ["first-line", "second-line"] {
        let labelled = format!("#{id} {line}");
        let at = text
            .find(&labelled)
            .unwrap_or_else(|| panic!("{mode}: no {labelled:?} in:\n{text}"));
        assert!(at > header_at, "{mode}: output before its header:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains(&format!("#{id}"))),
        "{mode}: the failed step is not marked ERROR:\n{text}"
    );
}

#[test]
fn plain_labels_output_and_marks_the_failure() {
    if let Some(text) = build_failing("plain") {
        check("plain", &text);
    }
}

#[test]
fn tty_labels_output_and_marks_the_failure() {
    if let Some(text) = build_failing("tty") {
        check("tty", &text);
    }
}

#[test]
fn build_platform_steps_name_their_target_as_buildx_does() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS builder\n\
             ARG TARGETARCH\n\
             RUN echo $TARGETARCH > /arch\n\
             FROM scratch\n\
             COPY --from=builder /arch /\n"
        ),
    );
    let out = common::kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64,linux/arm64,linux/arm/v7")
        .plain()
        .ok();
    for name in [
        "[linux/amd64 builder",
        "[linux/amd64->arm64 builder",
        "[linux/amd64->arm/v7 builder",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("RUN echo")),
            "no {name:?} RUN step in:\n{}",
            out.stderr
        );
    }
}

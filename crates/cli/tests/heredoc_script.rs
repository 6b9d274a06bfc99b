//! A RUN that is one heredoc starting with `#!` runs as BuildKit runs it:
//! the op graph mounts the script read-only at `/dev/pipes/<NAME>` and
//! executes that file (`$0` is its path), natively and under QEMU; the
//! mount leaves nothing in the image.

mod common;

use common::{build_local, write};

#[test]
fn a_shebang_heredoc_runs_as_a_script_file_on_every_platform() {
    let Some((t, store)) = common::busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\nRUN <<EOF\n#!/bin/sh\necho \"$0 $(id -u)\" > /ran\nEOF\nRUN <<EOF\necho plain > /plain\nEOF\n"
        ),
    );
    let out = build_local(
        &store,
        ctx.to_str().unwrap(),
        "linux/amd64,linux/arm64",
        &t.path().join("out"),
        &["--progress", "plain"],
    );
    for p in ["linux_amd64", "linux_arm64"] {
        let root = out.join(p);
        let ran = std::fs::read_to_string(root.join("ran")).unwrap();
        assert_eq!(ran, "/dev/pipes/EOF 0\n", "{p}");
        // A heredoc without #! is the shell's script, as before.
        assert_eq!(
            std::fs::read_to_string(root.join("plain")).unwrap(),
            "plain\n"
        );
        assert!(
            !root.join("dev/pipes").exists(),
            "{p}: the mount point stays out of the layer"
        );
    }
}

//! Outputs are whole or absent: `-o -` with an archive exporter (oci,
//! docker) stages the archive and writes standard output only once it is
//! complete, so an export that fails half-way leaves standard output empty.

mod common;

use common::{error_lines, kb, require_root, write};
use std::path::Path;

/// A file that says it holds 4096 bytes but reads fewer, so copying it
/// into a tar fails after the archive has begun.
const SHORT_FILE: &str = "/sys/kernel/uevent_seqnum";

/// The largest blob of the store (the busybox layer).
fn largest_blob(store: &Path) -> std::path::PathBuf {
    std::fs::read_dir(store.join("content/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

#[test]
fn archive_on_stdout_is_staged_and_a_failure_leaves_stdout_empty() {
    if !require_root() {
        return;
    }
    if !Path::new(SHORT_FILE).is_file() {
        kbuild_testkit::fixtures::skip_or_fail(&format!("{SHORT_FILE} (sysfs) is missing"));
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let Some(base) = common::busybox_image(&store, "linux/amd64") else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nLABEL a=b\n"),
    );
    let ctx = ctx.to_str().unwrap();
    for output in ["type=oci,dest=-", "type=docker,dest=-"] {
        // Whole: a tar that ends with its two zero blocks.
        let r = kb(&store, [ctx])
            .platform("linux/amd64")
            .output(output)
            .ok();
        assert!(
            r.stdout.len() > 10_000,
            "{output}: {} bytes",
            r.stdout.len()
        );
    }
    // The base layer now reads short: the export fails in the middle.
    let layer = largest_blob(&store);
    std::fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink(SHORT_FILE, &layer).unwrap();
    for output in ["type=oci,dest=-", "type=docker,dest=-"] {
        let r = kb(&store, [ctx])
            .platform("linux/amd64")
            .output(output)
            .fails();
        assert_eq!(error_lines(&r.stderr).len(), 1, "{}", r.stderr);
        assert!(
            r.stdout.is_empty(),
            "{output}: {} bytes on stdout after a failed export",
            r.stdout.len()
        );
    }
}

/// `type=local` into an existing directory replaces it as a whole (the
/// new tree is made beside it and exchanged in one rename): nothing of the
/// old tree survives and nothing is left beside it.
#[test]
fn local_output_replaces_an_existing_directory_whole() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("new.txt"), "new\n");
    write(&ctx.join("sub/b.txt"), "b\n");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n");
    let out = t.path().join("out");
    write(&out.join("old.txt"), "old\n");
    write(&out.join("sub/a.txt"), "a\n");
    let dest = format!("type=local,dest={}", out.display());
    kb(&store, [ctx.to_str().unwrap()]).output(&dest).ok();
    let mut names: Vec<String> = walk(&out);
    names.sort();
    assert_eq!(names, ["Dockerfile", "new.txt", "sub", "sub/b.txt"]);
    let beside: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kubectl-build-"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            for n in walk(&e.path()) {
                out.push(format!("{name}/{n}"));
            }
        }
        out.push(name);
    }
    out
}

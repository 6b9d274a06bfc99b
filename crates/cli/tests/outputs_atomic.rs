//! Outputs are whole or absent: `-o -` with an archive exporter (oci,
//! docker) stages the archive and writes standard output only once it is
//! complete, so an export that fails half-way leaves standard output empty.

mod common;

use common::{error_lines, require_root, run, write};
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
    write(&ctx.join("Dockerfile"), &format!("FROM {base}\nLABEL a=b\n"));
    let ctx = ctx.to_str().unwrap();
    for output in ["type=oci,dest=-", "type=docker,dest=-"] {
        // Whole: a tar that ends with its two zero blocks.
        let r = run(&store, &[ctx, "--platform", "linux/amd64", "-o", output], &[]).ok();
        assert!(r.stdout.len() > 10_000, "{output}: {} bytes", r.stdout.len());
    }
    // The base layer now reads short: the export fails in the middle.
    let layer = largest_blob(&store);
    std::fs::remove_file(&layer).unwrap();
    std::os::unix::fs::symlink(SHORT_FILE, &layer).unwrap();
    for output in ["type=oci,dest=-", "type=docker,dest=-"] {
        let r = run(&store, &[ctx, "--platform", "linux/amd64", "-o", output], &[]).fails();
        assert_eq!(error_lines(&r.stderr).len(), 1, "{}", r.stderr);
        assert!(
            r.stdout.is_empty(),
            "{output}: {} bytes on stdout after a failed export",
            r.stdout.len()
        );
    }
}

//! A rebuild with nothing changed reads no context file content to find
//! its cache keys; a changed file is read alone. Measured by the bytes the
//! build reports hashing (debug log), with real builds.

mod common;

use common::{kb, write};
use std::path::Path;

/// The "context file content hashed" count of a build's debug log.
fn hashed_bytes(stderr: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.contains("context file content hashed"))
        .and_then(|l| l.split("bytes=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no hashed-bytes line in:\n{stderr}"))
}

#[test]
fn unchanged_context_files_are_not_read_again() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /app/\n");
    for i in 0..20 {
        write(
            &ctx.join(format!("dir{}/file{i}.txt", i % 3)),
            &"x".repeat(1000 + i),
        );
    }
    // Files written this recently are hashed every time (see the cache's
    // racy-write rule): let them age.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let build = |dest: &Path| {
        let output = format!("type=oci,tar=false,dest={}", dest.display());
        kb(&store, [ctx.to_str().unwrap()])
            .platform("linux/amd64")
            .output(&output)
            .envs(&[("KUBECTL_BUILD_LOG", "kubectl_build=debug")])
            .ok()
    };
    let first = build(&t.path().join("one"));
    assert!(hashed_bytes(&first.stderr) > 20_000, "{}", first.stderr);
    let second = build(&t.path().join("two"));
    assert_eq!(hashed_bytes(&second.stderr), 0, "{}", second.stderr);
    let index = |d: &str| std::fs::read(t.path().join(d).join("index.json")).unwrap();
    assert_eq!(index("one"), index("two"));

    write(&ctx.join("dir1/file1.txt"), "changed, and of another size");
    let third = build(&t.path().join("three"));
    assert_eq!(hashed_bytes(&third.stderr), 28, "{}", third.stderr);
    assert_ne!(index("one"), index("three"));
}

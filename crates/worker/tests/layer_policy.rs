//! The snapshot unpacker and the plain-tree apply (`-o type=local`) accept
//! and reject exactly the same layers: every case of
//! `snapshot_cases/unsafe_entries.txt` and of `snapshot_cases/policy.txt`
//! runs through both, the apply onto a tree that lower layers already filled
//! (a file where the layer wants a directory, a merged-usr `lib` symlink,
//! `/etc/passwd`), and both must agree, with the same message when they
//! reject.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kbuild_testkit::archive::{case_layer, layer_cases, LayerCase};
use kbuild_worker::snapshot::{apply_layer_to_dir_with, ApplyOptions, Snapshotter};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What lower layers left in the tree the apply writes to.
fn lower_tree(root: &Path) -> std::io::Result<()> {
    fs::create_dir_all(root.join("etc"))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n")?;
    fs::write(root.join("f"), "a file of a lower layer")?;
    fs::create_dir_all(root.join("usr/lib"))?;
    std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    Ok(())
}

#[test]
fn unpack_and_apply_accept_and_reject_the_same_entries() -> TestResult {
    if !is_root() {
        kbuild_testkit::fixtures::skip_or_fail(
            "unpacking layers needs root (ownership, device nodes, trusted xattrs)",
        );
        return Ok(());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshot_cases");
    let mut table = fs::read_to_string(dir.join("unsafe_entries.txt"))?;
    table.push_str(&fs::read_to_string(dir.join("policy.txt"))?);
    let sandbox = tempfile::tempdir()?;
    let outside = sandbox.path().join("outside");
    fs::create_dir(&outside)?;
    let snap = Snapshotter::new(sandbox.path().join("snap"))?;
    let mut n = 0;
    let mut rejected = 0;
    for LayerCase {
        name: case,
        entries: spec,
        expect,
    } in layer_cases(&table)
    {
        let spec = spec.replace("$OUTSIDE", &outside.to_string_lossy());
        let tar = case_layer(&spec);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let unpacked = snap
            .unpack_layer(&diff_id, &tar[..])
            .map_err(|e| e.to_string());
        let tree = sandbox.path().join(format!("tree-{case}"));
        lower_tree(&tree)?;
        let applied = apply_layer_to_dir_with(&tree, &tar[..], ApplyOptions::default())
            .map_err(|e| e.to_string());
        match (&unpacked, &applied) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{case}: both reject, with the same message");
                rejected += 1;
            }
            _ => panic!("{case}: unpack {unpacked:?} but apply {applied:?}"),
        }
        if let Some(text) = expect.strip_prefix("error:") {
            let err = unpacked.as_ref().err().map(String::as_str).unwrap_or("");
            assert!(err.contains(text), "{case}: `{err}` lacks `{text}`");
        } else {
            assert!(
                expect.starts_with("ok:"),
                "{case}: bad expectation {expect}"
            );
            assert!(unpacked.is_ok(), "{case}: {unpacked:?}");
        }
        assert_eq!(fs::read_dir(&outside)?.count(), 0, "{case}: wrote outside");
        if let Ok(passwd) = fs::read_to_string(tree.join("etc/passwd")) {
            // Gone when the layer replaced etc/; never written through a link.
            assert!(
                passwd == "root:x:0:0::/root:/bin/sh\n" || spec.contains("file:etc/passwd"),
                "{case}: the lower etc/passwd changed"
            );
        }
        n += 1;
    }
    assert!(n >= 25 && rejected >= 12, "{n} cases, {rejected} rejected");

    // The apply's privileges: dropped by default, kept on request.
    let tar = case_layer("dir:opt/; char:opt/null; suid:opt/su; link:opt/su2->opt/su");
    let plain = sandbox.path().join("plain");
    fs::create_dir(&plain)?;
    let report = apply_layer_to_dir_with(&plain, &tar[..], ApplyOptions::default())?;
    assert_eq!((report.devices_skipped, report.privileges_dropped), (1, 1));
    assert!(plain.join("opt/null").symlink_metadata().is_err());
    let su = plain.join("opt/su").symlink_metadata()?;
    assert_eq!(su.permissions().mode() & 0o7777, 0o755);
    assert_eq!(plain.join("opt/su2").symlink_metadata()?.ino(), su.ino());
    let kept = sandbox.path().join("kept");
    fs::create_dir(&kept)?;
    let options = ApplyOptions {
        preserve_special: true,
    };
    let report = apply_layer_to_dir_with(&kept, &tar[..], options)?;
    assert_eq!((report.devices_skipped, report.privileges_dropped), (0, 0));
    assert_eq!(kept.join("opt/null").symlink_metadata()?.rdev(), 0x103);
    assert_eq!(
        kept.join("opt/su").symlink_metadata()?.permissions().mode() & 0o7777,
        0o4755
    );
    Ok(())
}

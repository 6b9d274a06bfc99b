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

use kbuild_worker::snapshot::{apply_layer_to_dir_with, ApplyOptions, Snapshotter};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A layer from a case's entries: `file:NAME`, `dir:NAME`, `symlink:N->T`,
/// `link:N->T`, `char:NAME`, `suid:NAME`, with raw names.
fn layer(spec: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in spec.split(';').map(str::trim) {
        let (kind, rest) = item.split_once(':').expect("kind:rest");
        let (name, target) = match rest.split_once("->") {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        let mut h = Header::new_ustar();
        let (t, mode, data): (EntryType, u32, &[u8]) = match kind {
            "file" => (EntryType::Regular, 0o644, b"data"),
            "suid" => (EntryType::Regular, 0o4755, b"data"),
            "dir" => (EntryType::Directory, 0o755, b""),
            "symlink" => (EntryType::Symlink, 0o777, b""),
            "link" => (EntryType::Link, 0o644, b""),
            "char" => (EntryType::Char, 0o666, b""),
            k => panic!("unknown kind {k}"),
        };
        h.set_entry_type(t);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = target {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if t == EntryType::Char {
            h.set_device_major(1).expect("ustar");
            h.set_device_minor(3).expect("ustar");
        }
        h.set_cksum();
        b.append(&h, data).expect("write to Vec");
    }
    b.into_inner().expect("write to Vec")
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
    for line in table.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split('|').map(str::trim).collect();
        let [case, spec, expect] = parts[..] else {
            panic!("bad case line: {line}");
        };
        let spec = spec.replace("$OUTSIDE", &outside.to_string_lossy());
        let tar = layer(&spec);
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
    let tar = layer("dir:opt/; char:opt/null; suid:opt/su; link:opt/su2->opt/su");
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

//! Snapshot tests on real files and real overlay mounts.
//!
//! They need root (ownership, device nodes, trusted xattrs, mounts); without
//! it, or without overlayfs, each test prints why it is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kbuild_image::tarball::{pax_record, DeterministicTar, TarOptions};
use kbuild_testkit::archive::{
    case_entries, case_layer, layer_cases, LayerCase, RawHeader, RawTar,
};
use kbuild_worker::snapshot::{
    apply_layer_to_dir, write_diff, DiffOptions, DiffStats, EntryMeta, Error, LayerEntries,
    Snapshotter,
};
use sha2::{Digest, Sha256};
use tar::EntryType;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (ownership, device nodes, trusted xattrs, mounts)");
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            kbuild_testkit::fixtures::skip_or_fail(why);
            return Ok(());
        }
    };
}

fn diff_id(tar: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(tar)))
}

fn unpack(s: &Snapshotter, tar: &[u8]) -> Result<PathBuf, Error> {
    s.unpack_layer(&diff_id(tar), tar)
}

fn mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().into_owned();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|p| p == want).unwrap_or(false))
}

/// A comparable description of a tree: type, mode, owner, contents or
/// target, device, non-overlay xattrs.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.expect("walk");
        let p = entry.path();
        let md = p.symlink_metadata().expect("lstat");
        let ft = md.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink {}", fs::read_link(p).expect("readlink").display())
        } else if ft.is_file() {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&fs::read(p).expect("read"))
            )
        } else if ft.is_char_device() {
            format!("char {}", md.rdev())
        } else if ft.is_block_device() {
            format!("block {}", md.rdev())
        } else {
            "fifo".to_string()
        };
        let mut xattrs: Vec<String> = xattr_names(p)
            .into_iter()
            .filter(|n| !n.starts_with("trusted.overlay.") && n != "security.selinux")
            .collect();
        xattrs.sort();
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let mode = if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        out.insert(
            rel,
            format!(
                "{what} mode={mode:o} {}:{} xattrs={xattrs:?}",
                md.uid(),
                md.gid()
            ),
        );
    }
    out
}

fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn is_whiteout(p: &Path) -> bool {
    p.symlink_metadata()
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Tar entry names, with the link target for links.
fn entries(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries().expect("tar") {
        let e = e.expect("entry");
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        out.push(match kind {
            EntryType::Link => format!(
                "{name} => {}",
                String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default())
            ),
            _ => name,
        });
    }
    out
}

#[test]
fn unsafe_entry_cases() -> TestResult {
    require_root!();
    let table = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshot_cases/unsafe_entries.txt"),
    )?;
    let sandbox = tempfile::tempdir()?;
    let outside = sandbox.path().join("outside");
    fs::create_dir(&outside)?;
    let snap = Snapshotter::new(sandbox.path().join("snap"))?;
    let mut n = 0;
    for LayerCase {
        name: case,
        entries: spec,
        expect,
    } in layer_cases(&table)
    {
        let spec = spec.replace("$OUTSIDE", &outside.to_string_lossy());
        let entries = case_entries(&spec);
        let last = entries.last().map(|e| e.name).unwrap_or_default();
        let tar = case_layer(&spec);
        let result = unpack(&snap, &tar);
        if let Some(text) = expect.strip_prefix("error:") {
            let err = match result {
                Ok(p) => panic!("{case}: expected an error, got {}", p.display()),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(text), "{case}: `{err}` lacks `{text}`");
            let shown = last.trim_start_matches('/');
            assert!(
                err.contains(last) || err.contains(shown),
                "{case}: `{err}` does not name `{last}`"
            );
            assert!(
                snap.layer(&diff_id(&tar))?.is_none(),
                "{case}: half layer visible"
            );
            assert_eq!(
                fs::read_dir(snap.root().join("tmp"))?.count(),
                0,
                "{case}: tmp left"
            );
        } else if let Some(paths) = expect.strip_prefix("ok:") {
            let dir = result.map_err(|e| format!("{case}: {e}"))?;
            for p in paths.split(',') {
                let (p, want_link) = match p.strip_suffix("=symlink") {
                    Some(p) => (p, true),
                    None => (p, false),
                };
                let md = dir
                    .join(p)
                    .symlink_metadata()
                    .map_err(|e| format!("{case}: {p}: {e}"))?;
                assert_eq!(md.file_type().is_symlink(), want_link, "{case}: {p}");
            }
        } else {
            panic!("{case}: bad expectation {expect}");
        }
        assert_eq!(fs::read_dir(&outside)?.count(), 0, "{case}: wrote outside");
        for p in [sandbox.path(), Path::new("/"), Path::new("/etc")] {
            assert!(
                !p.join("kbuild-escape-probe").exists(),
                "{case}: wrote to {}",
                p.display()
            );
        }
        n += 1;
    }
    assert!(n >= 15, "only {n} cases ran");
    Ok(())
}

#[test]
fn unpack_preserves_metadata_devices_and_hardlinks() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut layer = RawTar::ustar();
    layer
        .entry(RawHeader {
            mode: 0o1777,
            ..RawHeader::new(EntryType::Directory, "tmp/")
        })
        .entry(RawHeader {
            mode: 0o2775,
            ids: (0, 50),
            mtime: 1_234_567_890,
            ..RawHeader::new(EntryType::Directory, "srv/")
        })
        .entry(RawHeader {
            mode: 0o4755,
            ids: (1000, 2000),
            mtime: 1_111_111_111,
            data: b"#!/bin/true\n",
            xattrs: vec![("security.capability", &cap[..]), ("user.note", b"hello")],
            ..RawHeader::new(EntryType::Regular, "srv/ping")
        })
        .entry(RawHeader {
            link: Some("srv/ping"),
            ..RawHeader::new(EntryType::Link, "srv/ping2")
        })
        .entry(RawHeader {
            mode: 0o666,
            device: Some((1, 3)),
            ..RawHeader::new(EntryType::Char, "dev/null")
        })
        .entry(RawHeader {
            mode: 0o660,
            ids: (0, 6),
            device: Some((7, 0)),
            ..RawHeader::new(EntryType::Block, "dev/loop0")
        })
        .entry(RawHeader {
            mode: 0o600,
            ..RawHeader::new(EntryType::Fifo, "run/fifo")
        })
        .entry(RawHeader {
            link: Some("../srv/ping"),
            ids: (7, 0),
            ..RawHeader::new(EntryType::Symlink, "bin/ping")
        });
    let long = format!("deep/{}/file", "n".repeat(150));
    layer.entry(RawHeader {
        data: b"long",
        ..RawHeader::new(EntryType::Regular, &long)
    });
    let dir = unpack(&snap, &layer.into_bytes())?;

    let ping = dir.join("srv/ping");
    let md = ping.symlink_metadata()?;
    assert_eq!(md.mode() & 0o7777, 0o4755);
    assert_eq!((md.uid(), md.gid()), (1000, 2000));
    assert_eq!(md.mtime(), 1_111_111_111);
    assert_eq!(fs::read(&ping)?, b"#!/bin/true\n");
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(&cap[..])
    );
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(dir.join("srv/ping2").symlink_metadata()?.ino(), md.ino());
    assert_eq!(dir.join("tmp").symlink_metadata()?.mode() & 0o7777, 0o1777);
    let srv = dir.join("srv").symlink_metadata()?;
    assert_eq!((srv.mode() & 0o7777, srv.gid()), (0o2775, 50));
    assert_eq!(
        srv.mtime(),
        1_234_567_890,
        "dir mtime set after its children"
    );
    let null = dir.join("dev/null").symlink_metadata()?;
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lo = dir.join("dev/loop0").symlink_metadata()?;
    assert!(lo.file_type().is_block_device());
    assert_eq!((rustix::fs::major(lo.rdev()), lo.gid()), (7, 6));
    assert!(dir
        .join("run/fifo")
        .symlink_metadata()?
        .file_type()
        .is_fifo());
    let bin = dir.join("bin/ping").symlink_metadata()?;
    assert!(bin.file_type().is_symlink());
    assert_eq!(bin.uid(), 7);
    assert_eq!(
        fs::read_link(dir.join("bin/ping"))?,
        Path::new("../srv/ping")
    );
    assert_eq!(fs::read(dir.join(&long))?, b"long");
    Ok(())
}

#[test]
fn unpack_converts_whiteouts_to_overlay_format() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mut layer = RawTar::ustar();
    layer
        .file(".wh.gone", b"")
        .dir("etc/")
        .file("etc/.wh..wh..opq", b"")
        .file("etc/new", b"n")
        .file("var/.wh.cache", b"")
        .file(".wh..wh.plnk", b"");
    let dir = unpack(&snap, &layer.into_bytes())?;
    assert!(is_whiteout(&dir.join("gone")));
    assert!(is_whiteout(&dir.join("var/cache")));
    assert!(!dir.join(".wh.gone").exists());
    assert_eq!(
        xattr(&dir.join("etc"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("etc/.wh..wh..opq").exists());
    assert!(!dir.join(".wh..wh.plnk").exists());
    assert_eq!(fs::read(dir.join("etc/new"))?, b"n");
    Ok(())
}

#[test]
fn unpack_once_per_diff_id_and_verifies_digest() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mut layer = RawTar::ustar();
    for i in 0..200 {
        layer.entry(RawHeader {
            data: b"some content",
            ..RawHeader::new(EntryType::Regular, &format!("f{i}"))
        });
    }
    let tar = layer.into_bytes();
    let id = diff_id(&tar);
    let results: Vec<Result<PathBuf, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (snap, tar, id) = (snap.clone(), &tar, &id);
                s.spawn(move || snap.unpack_layer(id, &tar[..]).map_err(|e| e.to_string()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let first = results[0].clone()?;
    for r in &results {
        assert_eq!(r.as_ref().ok(), Some(&first));
    }
    assert_eq!(fs::read_dir(&first)?.count(), 200);
    // The layer and its boot marker.
    assert_eq!(fs::read_dir(snap.root().join("layers"))?.count(), 2);
    assert!(snap
        .root()
        .join("layers")
        .join(format!("{}.boot", id.trim_start_matches("sha256:")))
        .is_file());
    assert_eq!(fs::read_dir(snap.root().join("tmp"))?.count(), 0);

    // Once there, the reader is not consulted again.
    let again = snap.unpack_layer(&id, std::io::empty())?;
    assert_eq!(again, first);

    // A stream that does not match its diff_id is refused and not kept.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = snap
        .unpack_layer(&wrong, &tar[..])
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains(&id), "{err:?}");
    assert!(snap.layer(&wrong)?.is_none());
    assert!(matches!(
        snap.unpack_layer("sha256:nothex", &tar[..]),
        Err(Error::InvalidDiffId(_))
    ));
    Ok(())
}

/// Three layers: base files, then whiteouts and an opaque dir, then edits.
fn three_layers() -> Vec<Vec<u8>> {
    let mut l1 = RawTar::ustar();
    l1.dir("etc/")
        .file("etc/a", b"a1")
        .file("etc/b", b"b1")
        .dir("opt/")
        .file("opt/x", b"x")
        .file("opt/y", b"y")
        .file("keep", b"keep")
        .file("gone", b"gone")
        .symlink("link", "etc/a");
    let mut l2 = RawTar::ustar();
    l2.file(".wh.gone", b"")
        .dir("opt/")
        .file("opt/.wh..wh..opq", b"")
        .file("opt/z", b"z")
        .dir("etc/")
        .file("etc/.wh.a", b"");
    let mut l3 = RawTar::ustar();
    l3.dir("etc/").file("etc/b", b"b3").file("c", b"c3");
    vec![l1.into_bytes(), l2.into_bytes(), l3.into_bytes()]
}

/// [`three_layers`] unpacked as snapshots, lowest first.
fn three_lowers(snap: &Snapshotter) -> Result<Vec<PathBuf>, Error> {
    three_layers().iter().map(|tar| unpack(snap, tar)).collect()
}

/// The layer of what `upper` changes over `lowers`, with default options.
fn diff_of(
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(Vec<u8>, DiffStats), Box<dyn std::error::Error>> {
    let mut out = tar::Builder::new(Vec::new());
    let stats = write_diff(upper, lowers, &mut out, &DiffOptions::default())?;
    Ok((out.into_inner()?, stats))
}

#[test]
fn three_layer_mount_shows_whiteouts_applied() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let lowers = three_lowers(&snap)?;
    let mount = snap.mount(&lowers)?;
    let m = mount.merged().to_path_buf();
    assert!(mounted(&m));
    let mut names: Vec<String> = describe(&m).into_keys().collect();
    names.sort();
    assert_eq!(names, ["c", "etc", "etc/b", "keep", "link", "opt", "opt/z"]);
    assert_eq!(fs::read(m.join("etc/b"))?, b"b3");
    assert!(
        fs::read(m.join("link")).is_err(),
        "link points at the deleted etc/a"
    );

    // The same stack applied as plain directories gives the same tree.
    let plain = sandbox.path().join("plain");
    fs::create_dir(&plain)?;
    for tar in three_layers() {
        apply_layer_to_dir(&plain, &tar[..])?;
    }
    assert_eq!(describe(&plain), describe(&m));
    drop(mount);
    assert!(!mounted(&m), "still mounted after drop");
    assert!(!m.exists());
    Ok(())
}

#[test]
fn scratch_mount_has_an_empty_lower() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mount = snap.mount(&[])?;
    assert_eq!(fs::read_dir(mount.merged())?.count(), 0);
    fs::write(mount.merged().join("hello"), "hi")?;
    let mut out = tar::Builder::new(Vec::new());
    let stats = write_diff(mount.upper(), &[], &mut out, &DiffOptions::default())?;
    assert_eq!(
        (stats.entries, stats.regular_files, stats.content_bytes),
        (1, 1, 2)
    );
    let m = mount.merged().to_path_buf();
    mount.unmount()?;
    assert!(!mounted(&m));
    assert_eq!(fs::read_dir(snap.root().join("mounts"))?.count(), 0);
    Ok(())
}

#[test]
fn diff_of_changes_reapplies_to_the_merged_tree() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let lowers = three_lowers(&snap)?;
    let mount = snap.mount(&lowers)?;
    let m = mount.merged().to_path_buf();
    // create, modify, delete, replace a directory, chmod, hardlink, symlink
    fs::create_dir_all(m.join("usr/local/bin"))?;
    fs::write(m.join("usr/local/bin/tool"), "tool")?;
    fs::set_permissions(
        m.join("usr/local/bin/tool"),
        fs::Permissions::from_mode(0o4711),
    )?;
    fs::hard_link(
        m.join("usr/local/bin/tool"),
        m.join("usr/local/bin/tool-alias"),
    )?;
    fs::write(m.join("etc/b"), "b-modified")?;
    fs::remove_file(m.join("keep"))?;
    fs::remove_dir_all(m.join("opt"))?;
    fs::create_dir(m.join("opt"))?;
    fs::write(m.join("opt/fresh"), "fresh")?;
    fs::write(m.join("etc/new"), "new")?;
    fs::remove_file(m.join("etc/new"))?; // created and deleted: no trace
    std::os::unix::fs::symlink("/usr/local/bin/tool", m.join("etc/tool"))?;
    rustix::fs::lsetxattr(
        m.join("c").as_path(),
        "user.mark",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )?;
    let merged_tree = describe(&m);

    let (tar, stats) = diff_of(mount.upper(), &lowers)?;
    assert_eq!(
        entries(&tar),
        [
            "c",
            "etc/",
            "etc/b",
            "etc/tool",
            ".wh.keep",
            "opt/",
            "opt/.wh..wh..opq",
            "opt/fresh",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/tool",
            "usr/local/bin/tool-alias => usr/local/bin/tool",
        ]
    );
    assert_eq!(stats.whiteouts, 1);
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 1);

    // Applying the lowers then the diff on a plain directory gives the merged tree.
    let plain = sandbox.path().join("plain");
    fs::create_dir(&plain)?;
    for l in three_layers() {
        apply_layer_to_dir(&plain, &l[..])?;
    }
    apply_layer_to_dir(&plain, &tar[..])?;
    assert_eq!(describe(&plain), merged_tree);
    let tool = plain.join("usr/local/bin/tool").symlink_metadata()?;
    assert_eq!(
        tool.ino(),
        plain
            .join("usr/local/bin/tool-alias")
            .symlink_metadata()?
            .ino()
    );
    assert_eq!(tool.mode() & 0o7777, 0o4711);

    // The diff as a layer stacked on the lowers gives the merged tree too.
    let diff_layer = snap.unpack_layer(&diff_id(&tar), &tar[..])?;
    let mut stack = lowers.clone();
    stack.push(diff_layer);
    let check = snap.mount(&stack)?;
    assert_eq!(describe(check.merged()), merged_tree);
    drop(check);

    // Deterministic: the same upper gives the same bytes.
    assert_eq!(diff_of(mount.upper(), &lowers)?.0, tar);

    // Commit keeps the upper as a lower for the next step, without the
    // overlay's bookkeeping xattrs (copy-ups left some) but the opaque mark.
    let overlay_xattrs = |root: &Path| -> Vec<String> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(|e| e.ok())
            .flat_map(|e| {
                xattr_names(e.path())
                    .into_iter()
                    .filter(|n| n.starts_with("trusted.overlay.") && n != "trusted.overlay.opaque")
                    .map(move |n| format!("{} {n}", e.path().display()))
            })
            .collect()
    };
    assert!(
        !overlay_xattrs(mount.upper()).is_empty(),
        "the copy-ups left bookkeeping xattrs in the upper"
    );
    let committed = mount.commit()?;
    assert!(!mounted(&m));
    assert!(is_whiteout(&committed.join("keep")));
    assert!(xattr(&committed.join("opt"), "trusted.overlay.opaque").is_some());
    assert_eq!(overlay_xattrs(&committed), Vec::<String>::new());
    let mut stack = lowers.clone();
    stack.push(committed.to_path_buf());
    let next = snap.mount(&stack)?;
    assert_eq!(describe(next.merged()), merged_tree);
    drop(next);
    let adopted = snap.adopt_layer(&diff_id(&tar), &committed)?;
    assert_eq!(Some(adopted), snap.layer(&diff_id(&tar))?);
    assert!(
        !committed.exists(),
        "the duplicate committed dir is removed"
    );
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!info.contains(&snap.root().to_string_lossy().into_owned()));
    Ok(())
}

#[test]
fn diff_clamps_mtimes_and_writes_long_names_with_pax() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let upper = sandbox.path().join("upper");
    let long_dir = format!("{}/{}", "d".repeat(120), "e".repeat(120));
    fs::create_dir_all(upper.join(&long_dir))?;
    fs::write(upper.join(&long_dir).join("f"), "x")?;
    let target = format!("/{}", "t".repeat(200));
    std::os::unix::fs::symlink(&target, upper.join("s"))?;
    // A whiteout over nothing in the lowers is dropped.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.join("nothing").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )?;
    let lower = sandbox.path().join("lower");
    fs::create_dir(&lower)?;
    let mut out = tar::Builder::new(Vec::new());
    let opts = DiffOptions {
        source_date_epoch: Some(1000),
    };
    let stats = write_diff(&upper, &[lower], &mut out, &opts)?;
    assert_eq!(stats.whiteouts, 0);
    let tar = out.into_inner()?;
    let mut a = tar::Archive::new(&tar[..]);
    let mut seen = Vec::new();
    for entry in a.entries()? {
        let entry = entry?;
        assert_eq!(entry.header().mtime()?, 1000, "mtime clamped");
        if entry.header().entry_type() == EntryType::Symlink {
            let l = entry.link_name_bytes().unwrap_or_default().into_owned();
            assert_eq!(l, target.as_bytes());
        }
        seen.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
    }
    let d = "d".repeat(120);
    assert_eq!(
        seen,
        [
            format!("{d}/"),
            format!("{long_dir}/"),
            format!("{long_dir}/f"),
            "s".to_string()
        ]
    );
    // Roundtrip through unpack keeps the long names.
    let snap = Snapshotter::new(sandbox.path().join("snap"))?;
    let dir = unpack(&snap, &tar)?;
    let mut buf = String::new();
    fs::File::open(dir.join(&long_dir).join("f"))?.read_to_string(&mut buf)?;
    assert_eq!(buf, "x");
    assert_eq!(fs::read_link(dir.join("s"))?, Path::new(&target));
    Ok(())
}

/// An upper directory whose entries all need PAX records: a name too long
/// to split, a non-ASCII name, a long symlink target, ids beyond ustar's
/// range and an xattr (on a directory, which the one-pass entries write).
fn pax_tree(upper: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let long = "n".repeat(150);
    fs::create_dir(upper)?;
    fs::create_dir(upper.join("d"))?;
    rustix::fs::lsetxattr(
        upper.join("d").as_path(),
        "user.mark",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )?;
    fs::write(upper.join("d/big-ids"), "owned")?;
    std::os::unix::fs::chown(upper.join("d/big-ids"), Some(3_000_000), Some(3_000_001))?;
    fs::write(upper.join("h\u{e9}llo"), "non-ascii")?;
    fs::write(upper.join(&long), "long")?;
    std::os::unix::fs::symlink(format!("/{}", "t".repeat(200)), upper.join("s"))?;
    Ok(long)
}

#[test]
fn diff_entries_that_need_pax_are_the_tar_writers_entries() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let upper = sandbox.path().join("upper");
    let long = pax_tree(&upper)?;
    let epoch = 1_000_000;
    let options = DiffOptions {
        source_date_epoch: Some(epoch),
    };
    let mut out = tar::Builder::new(Vec::new());
    let stats = write_diff(&upper, &[], &mut out, &options)?;
    let diff = out.into_inner()?;
    assert_eq!((stats.entries, stats.symlinks), (5, 1), "{stats:?}");
    for record in [
        pax_record("path", long.as_bytes()),
        pax_record("path", "h\u{e9}llo".as_bytes()),
        pax_record("linkpath", format!("/{}", "t".repeat(200)).as_bytes()),
        pax_record("uid", b"3000000"),
        pax_record("gid", b"3000001"),
        pax_record("SCHILY.xattr.user.mark", b"1"),
    ] {
        assert!(
            diff.windows(record.len()).any(|w| w == record.as_slice()),
            "no PAX record {:?}",
            String::from_utf8_lossy(&record)
        );
    }

    // The tar writer's archive of the same tree: the same bytes.
    let mut tar = DeterministicTar::new(
        Vec::new(),
        TarOptions {
            source_date_epoch: Some(epoch as u64),
        },
    );
    tar.append_dir_tree(&upper, "")?;
    assert_eq!(tar.finish()?, diff);

    // The one-pass entries of the same changes: the same bytes.
    let mut entries = LayerEntries::new(tar::Builder::new(Vec::new()), &upper, &options);
    entries.dir(b"d", None, false);
    for name in ["d/big-ids", "h\u{e9}llo", long.as_str()] {
        let md = upper.join(name).symlink_metadata()?;
        let meta = EntryMeta::of(&md);
        let file = fs::File::open(upper.join(name))?;
        assert!(entries.file(name.as_bytes(), &meta, md.len(), file)?);
        assert!(entries.file_is(name.as_bytes(), &meta, md.len())?);
    }
    assert!(entries.symlink(b"s")?);
    let (out, one_pass_stats) = entries.finish()?.ok_or("the one pass gave up")?;
    assert_eq!(out.into_inner()?, diff);
    assert_eq!(one_pass_stats, stats);
    Ok(())
}

#[test]
fn apply_follows_symlinked_parents_only_inside_the_target() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let root = sandbox.path().join("root");
    fs::create_dir_all(root.join("usr/lib"))?;
    std::os::unix::fs::symlink("/usr/lib", root.join("lib"))?;
    std::os::unix::fs::symlink("../../../../../../..", root.join("up"))?;
    let mut layer = RawTar::ustar();
    layer
        .file("lib/libkbuild-test.so", b"so")
        .file("up/kbuild-escape-test", b"x")
        .file("../kbuild-escape-test", b"x");
    let tar = layer.into_bytes();
    let err = apply_layer_to_dir(&root, &tar[..])
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .unwrap_or("")
            .contains("`../kbuild-escape-test` escapes"),
        "{err:?}"
    );
    assert_eq!(fs::read(root.join("usr/lib/libkbuild-test.so"))?, b"so");
    assert!(!Path::new("/usr/lib/libkbuild-test.so").exists());
    assert_eq!(
        fs::read(root.join("kbuild-escape-test"))?,
        b"x",
        "`up` resolves to the root"
    );
    assert!(!sandbox.path().join("kbuild-escape-test").exists());
    assert!(!Path::new("/kbuild-escape-test").exists());
    Ok(())
}

#[test]
fn mount_many_layers_with_long_paths() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    // A deep root makes every lower path long: 120 of them overflow what
    // one mount(2) option page could hold, so lowerdir+ must be in use.
    let root = sandbox.path().join("r".repeat(200));
    let snap = Snapshotter::new(&root)?;
    let mut lowers = Vec::new();
    for i in 0..120u32 {
        let mut layer = RawTar::ustar();
        let name = format!("f{i:03}");
        let body = i.to_string();
        layer
            .file(&name, body.as_bytes())
            .file("top", body.as_bytes());
        lowers.push(unpack(&snap, &layer.into_bytes())?);
    }
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096 * 6);
    let mount = snap.mount(&lowers)?;
    assert_eq!(fs::read_dir(mount.merged())?.count(), 121);
    assert_eq!(fs::read_to_string(mount.merged().join("top"))?, "119");
    assert_eq!(fs::read_to_string(mount.merged().join("f000"))?, "0");
    Ok(())
}

#[test]
fn drop_detaches_a_busy_mount_lazily() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mount = snap.mount(&[])?;
    let m = mount.merged().to_path_buf();
    fs::write(m.join("open"), "still open")?;
    let mut busy = fs::File::open(m.join("open"))?;
    assert!(mounted(&m));
    drop(mount);
    assert!(!mounted(&m), "a busy mount is detached");
    let mut text = String::new();
    busy.read_to_string(&mut text)?;
    assert_eq!(
        text, "still open",
        "open files keep working after the detach"
    );
    assert_eq!(fs::read_dir(snap.root().join("mounts"))?.count(), 0);
    Ok(())
}

#[test]
fn committed_upper_is_adopted_as_a_layer() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mount = snap.mount(&[])?;
    fs::create_dir(mount.merged().join("app"))?;
    fs::write(mount.merged().join("app/main"), "main")?;
    let committed = mount.commit()?;
    assert_eq!(
        committed.parent(),
        Some(snap.root().join("snapshots").as_path())
    );
    let mut out = tar::Builder::new(Vec::new());
    write_diff(&committed, &[], &mut out, &DiffOptions::default())?;
    let tar = out.into_inner()?;
    assert_eq!(entries(&tar), ["app/", "app/main"]);
    let id = diff_id(&tar);
    assert!(snap.layer(&id)?.is_none());
    let layer = snap.adopt_layer(&id, &committed)?;
    assert_eq!(snap.layer(&id)?, Some(layer.clone()));
    assert!(!committed.exists());
    assert_eq!(fs::read(layer.join("app/main"))?, b"main");
    // Unpacking the same diff later reuses the adopted directory.
    assert_eq!(snap.unpack_layer(&id, std::io::empty())?, layer);
    Ok(())
}

#[test]
fn a_new_hardlink_to_a_lower_file_is_a_file_of_its_own_in_the_diff() -> TestResult {
    require_root!();
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let lowers = three_lowers(&snap)?;
    let mount = snap.mount(&lowers)?;
    let m = mount.merged().to_path_buf();
    // Overlay copies "c" up (unchanged) to give it a second name.
    fs::hard_link(m.join("c"), m.join("c-link"))?;
    fs::hard_link(m.join("c"), m.join("etc/c-link2"))?;
    assert!(mount.upper().join("c").exists(), "overlay copied c up");
    let (tar, stats) = diff_of(mount.upper(), &lowers)?;
    // The unchanged lower file is not re-emitted; the first new name holds
    // the content, the second links to it within the layer.
    assert_eq!(
        entries(&tar),
        ["c-link", "etc/", "etc/c-link2 => c-link"],
        "{stats:?}"
    );
    let mut a = tar::Archive::new(&tar[..]);
    let mut first = a.entries()?.next().expect("an entry")?;
    assert_eq!(first.header().entry_type(), EntryType::Regular);
    let mut content = Vec::new();
    first.read_to_end(&mut content)?;
    assert_eq!(content, b"c3");

    // A copied-up file that did change is still part of the layer.
    fs::write(m.join("c"), "c4")?;
    let names = entries(&diff_of(mount.upper(), &lowers)?.0);
    assert!(names.contains(&"c".to_string()), "{names:?}");
    Ok(())
}

//! Deterministic tar: same bytes for the same tree, SOURCE_DATE_EPOCH, PAX
//! for long names / big ids / xattrs, devices, hard links; checked with GNU tar.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kbuild_image::tarball::{DeterministicTar, Entry, EntryKind, TarOptions};
use kbuild_image::Error;

fn tar_tree(tree: &Path, prefix: &str, options: TarOptions) -> Vec<u8> {
    let mut tar = DeterministicTar::new(Vec::new(), options);
    tar.append_dir_tree(tree, prefix).unwrap();
    tar.finish().unwrap()
}

fn list(archive: &[u8], dir: &Path, verbose: bool) -> Vec<String> {
    let path = dir.join(format!("list-{}.tar", archive.len()));
    fs::write(&path, archive).unwrap();
    let flags = if verbose { "-tvf" } else { "-tf" };
    common::run(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg(flags)
            .arg(&path),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn set_mtime(path: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    if path.is_dir() {
        fs::File::open(path).unwrap().set_modified(t).unwrap();
    } else {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

#[test]
fn same_tree_same_bytes_and_copies_too() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree);
    let a = tar_tree(&tree, "", TarOptions::default());
    let b = tar_tree(&tree, "", TarOptions::default());
    assert_eq!(a, b);
    // A copy with the same metadata (but other inodes) archives identically.
    common::run(
        Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(dir.path().join("copy")),
    );
    assert_eq!(
        tar_tree(&dir.path().join("copy"), "", TarOptions::default()),
        a
    );
    // The order is depth first, bytewise by name; directories end in '/';
    // the second path of an inode is a hard link.
    assert_eq!(
        list(&a, dir.path(), false),
        [
            "etc/",
            "etc/app/",
            "etc/app/conf",
            "etc/hello-link",
            "hello",
            "hello-hard"
        ]
    );
    let verbose = list(&a, dir.path(), true);
    assert!(
        verbose[3].starts_with('l') && verbose[3].ends_with("etc/hello-link -> ../hello"),
        "{verbose:?}"
    );
    assert!(
        verbose[5].starts_with('h') && verbose[5].ends_with("hello-hard link to hello"),
        "{verbose:?}"
    );
}

#[test]
fn bytewise_order_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("a")).unwrap();
    for name in ["b", "B", "a-c", "a.d", "_", "a/z"] {
        fs::write(tree.join(name), b"").unwrap();
    }
    let names = list(
        &tar_tree(&tree, "/app/", TarOptions::default()),
        dir.path(),
        false,
    );
    // Each directory's entries sorted bytewise, a directory's contents right
    // after it ("a/z" before "a-c", although '-' < '/').
    assert_eq!(
        names,
        ["app/", "app/B", "app/_", "app/a/", "app/a/z", "app/a-c", "app/a.d", "app/b"]
    );
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Two trees with the same content built at different times.
    let mut archives = Vec::new();
    for (name, mtime) in [("one", now - 100), ("two", now - 50)] {
        let tree = dir.path().join(name);
        common::make_tree(&tree);
        fs::write(tree.join("old"), b"older than the epoch").unwrap();
        for p in ["hello", "etc/app/conf", "etc/app", "etc", ""] {
            set_mtime(&tree.join(p), mtime);
        }
        set_mtime(&tree.join("old"), 1_000_000);
        archives.push(tree);
    }
    let plain: Vec<Vec<u8>> = archives
        .iter()
        .map(|t| tar_tree(t, "", TarOptions::default()))
        .collect();
    assert_ne!(
        plain[0], plain[1],
        "different mtimes show without the clamp"
    );
    let epoch = 1_600_000_000;
    let opts = TarOptions {
        source_date_epoch: Some(epoch),
    };
    let clamped: Vec<Vec<u8>> = archives.iter().map(|t| tar_tree(t, "", opts)).collect();
    assert_eq!(clamped[0], clamped[1]);
    let mut reader = tar::Archive::new(clamped[0].as_slice());
    for entry in reader.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mtime = entry.header().mtime().unwrap();
        let expect = if path == "old" { 1_000_000 } else { epoch };
        assert_eq!(mtime, expect, "{path}");
        assert_eq!(entry.header().username_bytes(), Some(&b""[..]));
        assert_eq!(entry.header().groupname_bytes(), Some(&b""[..]));
    }
    // From the environment.
    std::env::set_var("SOURCE_DATE_EPOCH", "1600000000");
    assert_eq!(TarOptions::from_env(), opts);
}

#[test]
fn long_names_and_targets_use_pax() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let deep = tree
        .join("d".repeat(60))
        .join("e".repeat(60))
        .join("f".repeat(60))
        .join("g".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    let long_file = deep.join(format!("{}.txt", "x".repeat(150)));
    fs::write(&long_file, b"long").unwrap();
    let target = format!("{}/{}", "t".repeat(90), "u".repeat(90));
    std::os::unix::fs::symlink(&target, tree.join("link")).unwrap();
    fs::hard_link(&long_file, tree.join("hard")).unwrap();
    fs::write(tree.join("naïve-ünïcode"), b"u").unwrap();
    let archive = tar_tree(&tree, "", TarOptions::default());
    assert_eq!(archive, tar_tree(&tree, "", TarOptions::default()));
    let names = list(&archive, dir.path(), false);
    let rel = long_file
        .strip_prefix(&tree)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(names.contains(&rel), "{names:?}");
    assert!(names.contains(&"naïve-ünïcode".to_string()), "{names:?}");
    let verbose = list(&archive, dir.path(), true).join("\n");
    assert!(verbose.contains(&format!("link -> {target}")), "{verbose}");
    assert!(
        verbose.contains(&format!("hard link to {rel}")),
        "hard link to the long name: {verbose}"
    );
    // No GNU long-name extensions: only PAX ('x') headers.
    let mut reader = tar::Archive::new(archive.as_slice());
    for entry in reader.entries().unwrap().raw(true) {
        let kind = entry.unwrap().header().entry_type();
        assert!(
            !kind.is_gnu_longname() && !kind.is_gnu_longlink(),
            "GNU header found"
        );
    }
    // Extraction by GNU tar recreates everything.
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(dir.path().join("a.tar"), &archive).unwrap();
    common::run(
        Command::new("tar")
            .arg("-xpf")
            .arg(dir.path().join("a.tar"))
            .arg("-C")
            .arg(&out),
    );
    assert_eq!(fs::read(out.join(&rel)).unwrap(), b"long");
    assert_eq!(
        fs::read_link(out.join("link")).unwrap().to_string_lossy(),
        target
    );
    assert_eq!(
        fs::metadata(out.join("hard")).unwrap().ino(),
        fs::metadata(out.join(&rel)).unwrap().ino()
    );
}

#[test]
fn devices_fifos_ids_modes_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = DeterministicTar::new(Vec::new(), TarOptions::default());
    let mut null = Entry::new("dev/null", EntryKind::CharDevice { major: 1, minor: 3 });
    null.mode = 0o666;
    let mut loop0 = Entry::new("dev/loop0", EntryKind::BlockDevice { major: 7, minor: 0 });
    loop0.mode = 0o660;
    loop0.gid = 6;
    let fifo = Entry::new("run/fifo", EntryKind::Fifo);
    let mut ping = Entry::new("bin/ping", EntryKind::File { size: 4 });
    ping.mode = 0o4755;
    ping.uid = 3_000_000; // beyond ustar's 7 octal digits
    ping.gid = 42;
    ping.xattrs = BTreeMap::from([
        (
            "security.capability".to_string(),
            vec![1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("user.comment".to_string(), b"hello = world".to_vec()),
    ]);
    let mut tmp = Entry::new("tmp", EntryKind::Dir);
    tmp.mode = 0o1777;
    for (entry, data) in [
        (&null, &b""[..]),
        (&loop0, b""),
        (&fifo, b""),
        (&ping, b"ELF!"),
        (&tmp, b""),
    ] {
        tar.append(entry, data).unwrap();
    }
    let archive = tar.finish().unwrap();
    let verbose = list(&archive, dir.path(), true);
    assert!(
        verbose[0].starts_with("crw-rw-rw- 0/0") && verbose[0].contains("1,3"),
        "{verbose:?}"
    );
    assert!(
        verbose[1].starts_with("brw-rw---- 0/6") && verbose[1].contains("7,0"),
        "{verbose:?}"
    );
    assert!(verbose[2].starts_with("prw-r--r--"), "{verbose:?}");
    assert!(
        verbose[3].starts_with("-rwsr-xr-x 3000000/42"),
        "{verbose:?}"
    );
    assert!(
        verbose[4].starts_with("drwxrwxrwt") && verbose[4].ends_with("tmp/"),
        "{verbose:?}"
    );
    // The xattrs come back as PAX records.
    let mut reader = tar::Archive::new(archive.as_slice());
    let mut found = BTreeMap::new();
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                found.insert(ext.key().unwrap().to_string(), ext.value_bytes().to_vec());
            }
        }
        if entry.path().unwrap().to_str() == Some("bin/ping") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data, b"ELF!");
            assert_eq!(
                entry.header().uid().unwrap(),
                3_000_000,
                "read back from the PAX record"
            );
        }
    }
    assert_eq!(
        found.get("SCHILY.xattr.user.comment").map(Vec::as_slice),
        Some(&b"hello = world"[..])
    );
    assert_eq!(
        found.get("SCHILY.xattr.security.capability"),
        ping.xattrs.get("security.capability")
    );
    assert_eq!(found.get("uid").map(Vec::as_slice), Some(&b"3000000"[..]));
    // GNU tar agrees on the xattrs.
    let path = dir.path().join("x.tar");
    fs::write(&path, &archive).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    common::run(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&path)
            .arg("-C")
            .arg(&out)
            .arg("bin/ping"),
    );
    let meta = fs::metadata(out.join("bin/ping")).unwrap();
    assert_eq!(meta.uid(), 3_000_000);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        getxattr(&out.join("bin/ping"), "user.comment"),
        b"hello = world"
    );
}

fn getxattr(path: &Path, name: &str) -> Vec<u8> {
    let out = common::run(
        Command::new("python3")
            .args([
                "-c",
                "import os,sys; sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2]).hex())",
            ])
            .arg(path)
            .arg(name),
    );
    (0..out.len() / 2)
        .map(|i| u8::from_str_radix(&out[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn xattr_values_with_newlines_and_binary() {
    // PAX records are length-prefixed, so values may hold '\n' and NUL.
    // (The tar crate's own PAX reader splits on '\n'; GNU tar does not.)
    let dir = tempfile::tempdir().unwrap();
    let value = b"line1\nline2=x\n\0\xff".to_vec();
    let mut motd = Entry::new("etc/motd", EntryKind::File { size: 2 });
    motd.xattrs.insert("user.multi".to_string(), value.clone());
    motd.xattrs
        .insert("user.".to_string() + &"k".repeat(200), b"long key".to_vec());
    let mut tar = DeterministicTar::new(Vec::new(), TarOptions::default());
    tar.append(&motd, &b"hi"[..]).unwrap();
    let path = dir.path().join("x.tar");
    fs::write(&path, tar.finish().unwrap()).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    common::run(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&path)
            .arg("-C")
            .arg(&out),
    );
    assert_eq!(fs::read(out.join("etc/motd")).unwrap(), b"hi");
    assert_eq!(getxattr(&out.join("etc/motd"), "user.multi"), value);
    assert_eq!(
        getxattr(
            &out.join("etc/motd"),
            &("user.".to_string() + &"k".repeat(200))
        ),
        b"long key"
    );
}

#[test]
fn filesystem_devices_and_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let mknod = Command::new("mknod")
        .arg(tree.join("null"))
        .args(["c", "1", "3"])
        .output()
        .unwrap();
    if !mknod.status.success() {
        kbuild_testkit::fixtures::skip_or_fail("mknod needs root (CAP_MKNOD)");
        return;
    }
    common::run(Command::new("mknod").arg(tree.join("fifo")).arg("p"));
    let names = list(
        &tar_tree(&tree, "", TarOptions::default()),
        dir.path(),
        true,
    );
    assert!(
        names[0].starts_with('p') && names[0].ends_with("fifo"),
        "{names:?}"
    );
    assert!(
        names[1].starts_with('c') && names[1].contains("1,3"),
        "{names:?}"
    );
}

#[test]
fn invalid_entries_are_refused() {
    let mut tar = DeterministicTar::new(Vec::new(), TarOptions::default());
    let err = tar
        .append(&Entry::new("a/../../etc/passwd", EntryKind::Dir), &b""[..])
        .unwrap_err();
    assert!(matches!(err, Error::TarEntry { .. }), "{err}");
    let err = tar
        .append(&Entry::new("/", EntryKind::Dir), &b""[..])
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // Content shorter than the header says: the file changed under us.
    let err = tar
        .append(
            &Entry::new("short", EntryKind::File { size: 10 }),
            &b"12345"[..],
        )
        .unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
}

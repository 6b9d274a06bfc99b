//! `ADD` of local archives, end to end: a gzip archive is unpacked into
//! its destination with the archive's modes, owners, links and times, or
//! owned by `--chown`; an archive whose entries would leave the
//! destination (`..`, a file through its own symlink) fails the build with
//! an error naming the archive and the entry, and writes nothing.

mod common;

use common::{error_lines, kb, require_root, write};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Writes a tar at `path` with entries (name as written, type, link
/// target); regular files hold their own name, mode 0640, mtime 1000000.
fn archive(path: &Path, entries: &[(&str, tar::EntryType, Option<&str>)]) {
    let owner = kbuild_testkit::archive::RawOwner {
        ids: (1234, 5678),
        dir_mode: 0o750,
        file_mode: 0o640,
    };
    kbuild_testkit::archive::raw_tar(path, entries, owner);
}

#[test]
fn add_unpacks_a_gzip_archive_into_its_destination() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    archive(
        &ctx.join("app.tar"),
        &[
            ("bin/", Directory, None),
            ("bin/tool", Regular, None),
            ("bin/alias", Symlink, Some("/bin/tool")),
            ("bin/hard", Link, Some("bin/tool")),
        ],
    );
    let gzip = Command::new("gzip")
        .args(["-n"])
        .arg(ctx.join("app.tar"))
        .status()
        .expect("run gzip");
    assert!(gzip.success());
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nADD app.tar.gz /opt/\nADD --chown=7:8 app.tar.gz /owned/\n",
    );
    let out = t.path().join("out");
    common::build_local(
        &t.path().join("s"),
        ctx.to_str().unwrap(),
        "linux/amd64",
        &out,
        &["--progress", "plain"],
    );
    let opt = out.join("opt");
    assert_eq!(
        fs::read_to_string(opt.join("bin/tool")).unwrap(),
        "bin/tool"
    );
    assert_eq!(
        fs::read_link(opt.join("bin/alias")).unwrap(),
        Path::new("/bin/tool")
    );
    let (tool, hard) = (
        fs::metadata(opt.join("bin/tool")).unwrap(),
        fs::metadata(opt.join("bin/hard")).unwrap(),
    );
    assert_eq!(tool.ino(), hard.ino(), "the hardlink is kept");
    assert_eq!(tool.mode() & 0o7777, 0o640);
    assert_eq!(tool.mtime(), 1_000_000);
    let bin = fs::metadata(opt.join("bin")).unwrap();
    assert_eq!((bin.mode() & 0o7777, bin.mtime()), (0o750, 1_000_000));
    assert!(!opt.join("app.tar.gz").exists(), "the archive is unpacked");
    let owned = fs::symlink_metadata(out.join("owned/bin/tool")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (7, 8));
    assert_eq!(
        (tool.uid(), tool.gid()),
        (1234, 5678),
        "without --chown the archive's ids"
    );
}

#[test]
fn add_refuses_archive_entries_that_leave_the_destination() {
    use tar::EntryType::{Regular, Symlink};
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    archive(&ctx.join("up.tar"), &[("../../etc/evil", Regular, None)]);
    archive(
        &ctx.join("through.tar"),
        &[("link", Symlink, Some("/")), ("link/evil", Regular, None)],
    );
    for (file, entry) in [("up.tar", "../../etc/evil"), ("through.tar", "link/evil")] {
        write(
            &ctx.join("Dockerfile"),
            &format!("FROM scratch\nADD {file} /dst/\n"),
        );
        let out = t.path().join(format!("out-{file}"));
        let r = kb(&t.path().join("s"), [ctx.to_str().unwrap()])
            .platform("linux/amd64")
            .output(format!("type=local,dest={}", out.display()))
            .plain()
            .run();
        assert_ne!(r.code, 0, "{file}: {}", r.stderr);
        let errors = error_lines(&r.stderr);
        assert!(
            errors
                .iter()
                .any(|l| l.contains(file) && l.contains(&format!("`{entry}`"))),
            "{file}: {errors:?}\n{}",
            r.stderr
        );
        assert!(!out.exists(), "{file}: a failed build exports nothing");
    }
}

//! `-o type=tar` of a split build without unpacking: the nodes' filesystem
//! tarballs are merged entry by entry into the tarball a one-node build
//! writes. That one walks a tree holding one directory per platform
//! (`linux_amd64/`, ...) in bytewise name order, so the merge takes the
//! platforms in that order, each from its node's tarball: a node that built
//! several platforms already has them in such directories (each one's
//! entries together, in walk order); one that built one platform has it at
//! the root, so its entries get the platform's directory as a prefix (link
//! targets too) and the directory an entry of its own. Every entry goes
//! through the workspace's one tar writer again (same bytes: it is what
//! wrote them on the node), nothing is unpacked, so no root is needed.

use super::io_err as io;
use kbuild_image::tarball::{DeterministicTar, Entry, EntryKind, TarOptions};
use kbuild_image::{Error, TarEntryProblem};
use kbuild_platform::Platform;
use kbuild_solver::outputs::platform_dir;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::iter::Peekable;
use std::path::{Path, PathBuf};

type Archive = tar::Archive<BufReader<File>>;

/// One node's tarball as it is read.
struct PartTar<'a> {
    path: &'a Path,
    /// Whether its platforms are in directories (the node built several).
    several: bool,
    entries: Peekable<tar::Entries<'a, BufReader<File>>>,
}

/// Writes to `out` the tarball of the platforms of `parts`: (the node's
/// tarball, the platforms it built), every platform in one part only.
pub(super) fn merge_parts(
    parts: &[(PathBuf, &[Platform])],
    options: TarOptions,
    out: impl Write,
) -> Result<(), Error> {
    let mut archives = parts
        .iter()
        .map(|(path, _)| {
            let file = File::open(path).map_err(io("open", path))?;
            Ok(tar::Archive::new(BufReader::new(file)))
        })
        .collect::<Result<Vec<Archive>, Error>>()?;
    let mut tars = parts
        .iter()
        .zip(archives.iter_mut())
        .map(|((path, platforms), archive)| {
            Ok(PartTar {
                path,
                several: platforms.len() > 1,
                entries: archive.entries().map_err(io("read", path))?.peekable(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut writer = DeterministicTar::new(out, options);
    for (dir, part) in walk_order(parts) {
        tars[part].copy_platform(&dir, &mut writer)?;
    }
    for tar in &mut tars {
        tar.expect_end()?;
    }
    writer.finish()?;
    Ok(())
}

/// Each platform's directory with the index of its part, in the order a
/// tree walk meets them (bytewise by name).
fn walk_order(parts: &[(PathBuf, &[Platform])]) -> Vec<(String, usize)> {
    let mut order: Vec<(String, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(i, (_, platforms))| platforms.iter().map(move |p| (platform_dir(p), i)))
        .collect();
    order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    order
}

impl PartTar<'_> {
    /// Copies platform directory `dir` (with its contents) to `writer`.
    fn copy_platform(
        &mut self,
        dir: &str,
        writer: &mut DeterministicTar<impl Write>,
    ) -> Result<(), Error> {
        if self.several {
            return self.copy_directory(dir, writer);
        }
        // As a node makes a platform's directory: root's, 0755, now.
        let mut top = Entry::new(dir, EntryKind::Dir);
        top.mtime = now();
        writer.append(&top, std::io::empty())?;
        for entry in self.entries.by_ref() {
            let mut entry = entry.map_err(io("read", self.path))?;
            let header = entry_of(&mut entry, Some(dir)).map_err(io("read", self.path))?;
            writer.append(&header, &mut entry)?;
        }
        Ok(())
    }

    /// Copies the entries of this part under `dir/`: the next ones in it.
    fn copy_directory(
        &mut self,
        dir: &str,
        writer: &mut DeterministicTar<impl Write>,
    ) -> Result<(), Error> {
        let mut copied = 0usize;
        loop {
            match self.entries.peek() {
                Some(Ok(e)) if top_dir(&e.path_bytes()) == dir.as_bytes() => {}
                Some(Ok(_)) | None => break,
                Some(Err(_)) => {}
            }
            let Some(entry) = self.entries.next() else {
                break;
            };
            let mut entry = entry.map_err(io("read", self.path))?;
            let header = entry_of(&mut entry, None).map_err(io("read", self.path))?;
            writer.append(&header, &mut entry)?;
            copied += 1;
        }
        if copied == 0 {
            return Err(Error::TarEntry {
                path: format!("{dir}/"),
                reason: TarEntryProblem::NoSuchDirectory(self.path.to_path_buf()),
            });
        }
        Ok(())
    }

    /// Fails if entries are left that are in none of the part's platforms.
    fn expect_end(&mut self) -> Result<(), Error> {
        match self.entries.next() {
            None => Ok(()),
            Some(Err(e)) => Err(io("read", self.path)(e)),
            Some(Ok(e)) => Err(Error::TarEntry {
                path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                reason: TarEntryProblem::OutsidePlatforms(self.path.to_path_buf()),
            }),
        }
    }
}

/// The first component of an archive path.
fn top_dir(path: &[u8]) -> &[u8] {
    let path = path.strip_prefix(b"./").unwrap_or(path);
    path.split(|b| *b == b'/').next().unwrap_or_default()
}

/// The writer's description of `entry`, its path (and a hard link's
/// target) below `prefix` when one is given.
fn entry_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    prefix: Option<&str>,
) -> std::io::Result<Entry> {
    let prefixed = |path: &[u8]| match prefix {
        Some(p) => [p.as_bytes(), b"/", path].concat(),
        None => path.to_vec(),
    };
    let header = entry.header();
    let link = || {
        entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default()
    };
    let device = || -> std::io::Result<(u32, u32)> {
        Ok((
            header.device_major()?.unwrap_or(0),
            header.device_minor()?.unwrap_or(0),
        ))
    };
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            EntryKind::File { size: entry.size() }
        }
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink(link()),
        tar::EntryType::Link => EntryKind::Hardlink(prefixed(&link())),
        tar::EntryType::Char => {
            let (major, minor) = device()?;
            EntryKind::CharDevice { major, minor }
        }
        tar::EntryType::Block => {
            let (major, minor) = device()?;
            EntryKind::BlockDevice { major, minor }
        }
        tar::EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: unexpected tar entry type {other:?}",
                    String::from_utf8_lossy(&entry.path_bytes())
                ),
            ))
        }
    };
    let (mode, mut uid, mut gid, mtime) = (
        header.mode()?,
        header.uid()?,
        header.gid()?,
        header.mtime()?,
    );
    let path = prefixed(&entry.path_bytes());
    let mut xattrs = BTreeMap::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            let value = record.value_bytes();
            match record.key_bytes() {
                b"uid" => uid = pax_number(value)?,
                b"gid" => gid = pax_number(value)?,
                key => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
                    }
                }
            }
        }
    }
    Ok(Entry {
        path,
        kind,
        mode: mode & 0o7777,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn pax_number(value: &[u8]) -> std::io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad PAX id {:?}", String::from_utf8_lossy(value)),
            )
        })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::{part_tar, write_merged_tar};
    use kbuild_image::tarball::{DeterministicTar, TarOptions};
    use kbuild_platform::Platform;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const OPTIONS: TarOptions = TarOptions {
        source_date_epoch: Some(0),
    };

    /// Where [`merge_as_another_user`] finds the parts and writes the merge.
    const DIR_ENV: &str = "KBUILD_TEST_MERGE_DIR";

    fn platforms() -> [Platform; 3] {
        ["linux/amd64", "linux/arm64", "linux/arm/v7"]
            .map(|p| Platform::parse(p).expect("a platform"))
    }

    /// A platform's filesystem: a file, a directory, a symlink, a hard
    /// link, a name too long for ustar.
    fn fill(dir: &Path, platform: &Platform) {
        let sub = dir.join("etc").join("x".repeat(120));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(dir.join("etc/target"), format!("built for {platform}\n")).expect("write");
        std::fs::write(sub.join("long"), "long").expect("write");
        std::fs::hard_link(dir.join("etc/target"), dir.join("target.link")).expect("link");
        std::os::unix::fs::symlink("etc/target", dir.join("target")).expect("symlink");
        for d in [dir, &dir.join("etc"), &sub] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    fn tar_of(tree: &Path, file: &Path) {
        let f = std::fs::File::create(file).expect("create");
        let mut t = DeterministicTar::new(f, OPTIONS);
        t.append_dir_tree(tree, "").expect("tar");
        t.finish().expect("finish");
    }

    /// Two nodes' tarballs in `dir` (output 0): part 0 built amd64 and
    /// arm/v7 (in directories), part 1 arm64 (at its root); returns the
    /// parts and the tarball one node building all three writes.
    /// (part, node, platforms) of each node's tarball.
    type Parts = Vec<(usize, String, Vec<Platform>)>;

    fn parts_and_whole(dir: &Path) -> (Parts, Vec<u8>) {
        let [amd64, arm64, armv7] = platforms();
        let whole = dir.join("whole");
        let several = dir.join("several");
        for p in [&amd64, &arm64, &armv7] {
            fill(&whole.join(kbuild_solver::outputs::platform_dir(p)), p);
        }
        for p in [&amd64, &armv7] {
            fill(&several.join(kbuild_solver::outputs::platform_dir(p)), p);
        }
        let one = dir.join("one");
        fill(&one, &arm64);
        tar_of(&several, &part_tar(dir, 0, 0));
        tar_of(&one, &part_tar(dir, 1, 0));
        let expected = dir.join("expected.tar");
        tar_of(&whole, &expected);
        let parts = vec![
            (0, "pair0".to_string(), vec![amd64, armv7]),
            (1, "pair1".to_string(), vec![arm64]),
        ];
        (parts, std::fs::read(&expected).expect("read"))
    }

    #[test]
    fn merged_parts_are_the_tarball_of_one_node() {
        if !rustix::process::geteuid().is_root() {
            kbuild_testkit::fixtures::skip_or_fail(
                "the platform directories a node makes are root's: run as root",
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (parts, expected) = parts_and_whole(dir.path());
        let dest = dir.path().join("out").join("fs.tar");
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        write_merged_tar(dir.path(), 0, &parts, &dest, OPTIONS).expect("merge");
        let merged = std::fs::read(&dest).expect("read");
        assert!(merged == expected, "the merged tarball differs");
        // Nothing left beside it but the output.
        let left: Vec<PathBuf> = std::fs::read_dir(dest.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(left, vec![dest.clone()]);
    }

    /// A part that lacks a platform it claims fails the merge and leaves
    /// no output behind.
    #[test]
    fn a_missing_platform_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        parts_and_whole(dir.path());
        let [amd64, arm64, armv7] = platforms();
        let s390x = Platform::parse("linux/s390x").expect("a platform");
        let parts = vec![
            (0, "pair0".to_string(), vec![amd64, armv7, s390x]),
            (1, "pair1".to_string(), vec![arm64]),
        ];
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let err = write_merged_tar(dir.path(), 0, &parts, &out.join("fs.tar"), OPTIONS)
            .expect_err("a platform is missing");
        assert!(
            err.to_string().contains("\"linux_s390x/\"")
                && err
                    .to_string()
                    .contains("part-0-0.tar has no such directory"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&out).expect("list").count(), 0);
    }

    /// The merge as uid/gid 65534 (setpriv), into a directory that user
    /// owns, gives the same bytes as the merge as root.
    #[test]
    fn merge_needs_no_root() {
        if !rustix::process::geteuid().is_root() {
            kbuild_testkit::fixtures::skip_or_fail("changing to uid 65534 needs root");
            return;
        }
        if Command::new("setpriv").arg("--version").output().is_err() {
            kbuild_testkit::fixtures::skip_or_fail("setpriv (util-linux) is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, expected) = parts_and_whole(dir.path());
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).expect("chown");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let status = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().expect("the test binary"))
            .args([
                "--ignored",
                "--exact",
                "split_outputs::merge::tests::merge_as_another_user",
            ])
            .env(DIR_ENV, dir.path())
            .status()
            .expect("run setpriv");
        assert!(status.success(), "the merge as uid 65534 failed");
        let merged = std::fs::read(out.join("fs.tar")).expect("read");
        assert!(merged == expected, "the merged tarball differs");
    }

    #[test]
    #[ignore = "run by merge_needs_no_root as uid 65534"]
    fn merge_as_another_user() {
        let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect(DIR_ENV));
        assert!(
            !rustix::process::geteuid().is_root(),
            "not run as another user"
        );
        let [amd64, arm64, armv7] = platforms();
        let parts = vec![
            (0, "pair0".to_string(), vec![amd64, armv7]),
            (1, "pair1".to_string(), vec![arm64]),
        ];
        let dest = dir.join("out").join("fs.tar");
        write_merged_tar(&dir, 0, &parts, &dest, OPTIONS).expect("merge");
    }
}

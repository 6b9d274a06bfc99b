//! Safe extraction of an OCI layer tar, in two flavours:
//!
//! - [`Flavor::Diff`] writes an overlay-ready diff directory: OCI whiteouts
//!   become overlay whiteouts (character device 0/0, `trusted.overlay.opaque`),
//!   and every parent must be a real directory of the layer itself.
//! - [`Flavor::Apply`] applies the layer onto an existing tree: whiteouts
//!   delete, parents resolve like a container would see them (symlinks
//!   followed but confined to the tree with `openat2(RESOLVE_IN_ROOT)`).
//!
//! No path taken from the tar is ever resolved by the kernel from a string
//! that could leave the target: names are cleaned lexically (`..` that climbs
//! above the root is rejected, a leading `/` is dropped), parents are opened
//! one descriptor at a time, and the final component is never followed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RawMode, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use super::error::{Error, IoContext, Result};
use super::fsutil::{self, OPAQUE_XATTR};

/// OCI whiteout name prefix.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque-directory marker name.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How whiteouts and parents are treated; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Flavor {
    /// Build an overlay lower directory.
    Diff,
    /// Apply onto a plain directory tree.
    Apply,
}

/// Metadata of one entry, PAX records already folded in.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Extracts the tar `reader` into the directory `root` (which must exist).
pub(crate) fn extract(root: &Path, reader: impl Read, flavor: Flavor) -> Result<()> {
    let root_fd = fsutil::open_dir(root).at("open the target directory", root)?;
    let mut ex = Extractor {
        root: root_fd,
        flavor,
        dir_times: Vec::new(),
        written: HashSet::new(),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(Error::Tar)? {
        let mut entry = entry.map_err(Error::Tar)?;
        ex.entry(&mut entry)?;
    }
    ex.finish()
}

struct Extractor {
    root: OwnedFd,
    flavor: Flavor,
    /// Directories whose times are set last, once their children exist.
    dir_times: Vec<(Vec<OsString>, Timespec, String)>,
    /// Paths this layer wrote (Apply flavor): an opaque marker keeps them.
    written: HashSet<Vec<u8>>,
}

fn bad(entry: &str, problem: impl Into<String>) -> Error {
    Error::BadEntry {
        entry: entry.to_string(),
        problem: problem.into(),
    }
}

/// Cleans a tar path into components below the root.
fn clean(name: &[u8], entry: &str) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(bad(entry, "escapes the layer root through `..`"));
                }
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    v
}

fn parse_mtime(s: &str) -> Option<Timespec> {
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let tv_sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let tv_nsec = digits.parse().ok()?;
    Some(Timespec { tv_sec, tv_nsec })
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
    let header = entry.header();
    let mode = header.mode().map_err(Error::Tar)? & 0o7777;
    let mut uid = header.uid().map_err(Error::Tar)?;
    let mut gid = header.gid().map_err(Error::Tar)?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(header.mtime().map_err(Error::Tar)?).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(Error::Tar)? {
        for ext in pax {
            let ext = ext.map_err(Error::Tar)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let text = std::str::from_utf8(value).unwrap_or("");
            if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                if fsutil::is_overlay_xattr(x) {
                    tracing::warn!(entry = name, xattr = x, "dropping overlay xattr from layer");
                    continue;
                }
                xattrs.push((x.to_string(), value.to_vec()));
            } else if key == "uid" {
                uid = text
                    .parse()
                    .map_err(|_| bad(name, format!("has an invalid PAX uid `{text}`")))?;
            } else if key == "gid" {
                gid = text
                    .parse()
                    .map_err(|_| bad(name, format!("has an invalid PAX gid `{text}`")))?;
            } else if key == "mtime" {
                mtime = parse_mtime(text)
                    .ok_or_else(|| bad(name, format!("has an invalid PAX mtime `{text}`")))?;
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| bad(name, format!("has an out-of-range {what} {v}")))
    };
    Ok(Meta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime,
        xattrs,
    })
}

/// Where an entry's metadata is applied.
enum Target<'a> {
    /// An open regular file or directory.
    Fd(BorrowedFd<'a>),
    /// A symlink or special file, by name in its parent.
    At(BorrowedFd<'a>, &'a OsStr, bool),
}

fn apply_meta(target: Target<'_>, meta: &Meta, name: &str, set_times: bool) -> Result<()> {
    let uid = Some(rustix::fs::Uid::from_raw(meta.uid));
    let gid = Some(rustix::fs::Gid::from_raw(meta.gid));
    let mode = Mode::from_raw_mode(meta.mode as RawMode);
    let times = Timestamps {
        last_access: meta.mtime,
        last_modification: meta.mtime,
    };
    match target {
        Target::Fd(fd) => {
            // chown clears setuid/setgid and capabilities: chown, then chmod, then xattrs.
            rustix::fs::fchown(fd, uid, gid).entry("set the owner", name)?;
            rustix::fs::fchmod(fd, mode).entry("set the mode", name)?;
            for (k, v) in &meta.xattrs {
                rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                    .entry("set an extended attribute", name)?;
            }
            if set_times {
                rustix::fs::futimens(fd, &times).entry("set the times", name)?;
            }
        }
        Target::At(parent, leaf, is_symlink) => {
            rustix::fs::chownat(parent, leaf, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .entry("set the owner", name)?;
            if !is_symlink {
                rustix::fs::chmodat(parent, leaf, mode, AtFlags::empty())
                    .entry("set the mode", name)?;
            }
            let path = fsutil::fd_path(parent, leaf);
            for (k, v) in &meta.xattrs {
                rustix::fs::lsetxattr(&path, k.as_str(), v, XattrFlags::empty())
                    .entry("set an extended attribute", name)?;
            }
            rustix::fs::utimensat(parent, leaf, &times, AtFlags::SYMLINK_NOFOLLOW)
                .entry("set the times", name)?;
        }
    }
    Ok(())
}

impl Extractor {
    fn dup_root(&self) -> io::Result<OwnedFd> {
        fsutil::open_dir_at(self.root.as_fd(), OsStr::new("."))
    }

    /// Opens the directory `comps`, creating missing ones (mode 0755, root)
    /// when `create` is set.
    fn open_dir(&self, comps: &[OsString], entry: &str, create: bool) -> Result<Option<OwnedFd>> {
        if comps.is_empty() {
            return self
                .dup_root()
                .entry("open the layer root", entry)
                .map(Some);
        }
        match self.flavor {
            Flavor::Diff => {
                let mut cur = self.dup_root().entry("open the layer root", entry)?;
                for (i, c) in comps.iter().enumerate() {
                    let next = match fsutil::open_dir_at(cur.as_fd(), c) {
                        Ok(fd) => fd,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                            rustix::fs::mkdirat(cur.as_fd(), c.as_os_str(), Mode::from(0o755))
                                .entry("create a parent directory", entry)?;
                            fsutil::open_dir_at(cur.as_fd(), c)
                                .entry("open a parent directory", entry)?
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                            return Err(bad(
                                entry,
                                format!(
                                    "has the parent `{}`, which is a symlink or a non-directory in this layer",
                                    String::from_utf8_lossy(&join(&comps[..=i]))
                                ),
                            ));
                        }
                        Err(e) => return Err(e).entry("open a parent directory", entry),
                    };
                    cur = next;
                }
                Ok(Some(cur))
            }
            Flavor::Apply => {
                let open = |upto: usize| {
                    rustix::fs::openat2(
                        self.root.as_fd(),
                        OsStr::from_bytes(&join(&comps[..upto])),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                    )
                };
                let not_dir = |upto: usize| {
                    bad(
                        entry,
                        format!(
                            "has the parent `{}`, which is not a directory in the target",
                            String::from_utf8_lossy(&join(&comps[..upto]))
                        ),
                    )
                };
                // A symlink among the parents that loops (`dev -> ../dev`) or
                // needs more than the kernel's 40 hops: named by the entry,
                // never by the directory being written.
                let loops = |upto: usize| {
                    bad(
                        entry,
                        format!(
                            "has the parent `{}`, which is a symlink that loops or resolves through too many symlinks",
                            String::from_utf8_lossy(&join(&comps[..upto]))
                        ),
                    )
                };
                match open(comps.len()) {
                    Ok(fd) => return Ok(Some(fd)),
                    Err(Errno::NOENT) if create => {}
                    Err(Errno::NOENT) => return Ok(None),
                    Err(Errno::NOTDIR) => return Err(not_dir(comps.len())),
                    Err(Errno::LOOP) => return Err(loops(comps.len())),
                    Err(e) => return Err(e).entry("open a parent directory", entry),
                }
                let mut cur = self.dup_root().entry("open the target root", entry)?;
                for (i, comp) in comps.iter().enumerate() {
                    cur = match open(i + 1) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => {
                            match rustix::fs::mkdirat(
                                cur.as_fd(),
                                comp.as_os_str(),
                                Mode::from(0o755),
                            ) {
                                Ok(()) => {}
                                Err(Errno::EXIST) => return Err(not_dir(i + 1)),
                                Err(e) => return Err(e).entry("create a parent directory", entry),
                            }
                            open(i + 1).entry("open a parent directory", entry)?
                        }
                        Err(Errno::NOTDIR) => return Err(not_dir(i + 1)),
                        Err(Errno::LOOP) => return Err(loops(i + 1)),
                        Err(e) => return Err(e).entry("open a parent directory", entry),
                    };
                }
                Ok(Some(cur))
            }
        }
    }

    /// Makes room for a new entry `leaf` in `parent`: keeps an existing
    /// directory when the new entry is a directory, removes anything else.
    /// Returns whether an existing directory was kept.
    fn make_room(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        is_dir: bool,
        entry: &str,
    ) -> Result<bool> {
        match fsutil::lstat_at(parent, leaf).entry("inspect the existing path", entry)? {
            None => Ok(false),
            Some(FileType::Directory) if is_dir => Ok(true),
            Some(_) => {
                fsutil::remove_at(parent, leaf).entry("replace the existing path", entry)?;
                Ok(false)
            }
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let comps = clean(&raw, &name)?;
        let Some((leaf, parent_comps)) = comps.split_last() else {
            // The root itself: only a directory entry makes sense.
            if !kind.is_dir() {
                return Err(bad(
                    &name,
                    "would replace the layer root with a non-directory",
                ));
            }
            let meta = read_meta(entry, &name)?;
            apply_meta(Target::Fd(self.root.as_fd()), &meta, &name, false)?;
            self.dir_times.push((Vec::new(), meta.mtime, name));
            return Ok(());
        };
        let leaf_bytes = leaf.as_bytes();

        if leaf_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent_comps, leaf_bytes, &name);
        }

        let meta = read_meta(entry, &name)?;
        let parent = self
            .open_dir(parent_comps, &name, true)?
            .ok_or_else(|| bad(&name, "has a parent that cannot be created"))?;
        let parent = parent.as_fd();
        let leaf = leaf.as_os_str();

        match kind {
            EntryType::Directory => {
                if !self.make_room(parent, leaf, true, &name)? {
                    rustix::fs::mkdirat(parent, leaf, Mode::from(0o700))
                        .entry("create the directory", &name)?;
                }
                let dir = fsutil::open_dir_at(parent, leaf).entry("open the directory", &name)?;
                apply_meta(Target::Fd(dir.as_fd()), &meta, &name, false)?;
                self.dir_times
                    .push((comps.clone(), meta.mtime, name.clone()));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.make_room(parent, leaf, false, &name)?;
                let fd = rustix::fs::openat(
                    parent,
                    leaf,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from(0o600),
                )
                .entry("create the file", &name)?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).entry("write the file contents", &name)?;
                apply_meta(Target::Fd(file.as_fd()), &meta, &name, true)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "is a symlink without a target"))?
                    .into_owned();
                self.make_room(parent, leaf, false, &name)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, leaf)
                    .entry("create the symlink", &name)?;
                apply_meta(Target::At(parent, leaf, true), &meta, &name, true)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "is a hardlink without a target"))?
                    .into_owned();
                let tcomps = clean(&target, &name).map_err(|_| {
                    bad(
                        &name,
                        format!(
                            "is a hardlink to `{}`, which escapes the layer root",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                let missing = || {
                    bad(
                        &name,
                        format!(
                            "is a hardlink to `{}`, which is not a file in the layer",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                };
                let (tleaf, tparent) = tcomps.split_last().ok_or_else(missing)?;
                if tcomps == comps {
                    return Ok(());
                }
                let tparent = self.open_dir(tparent, &name, false)?.ok_or_else(missing)?;
                match fsutil::lstat_at(tparent.as_fd(), tleaf)
                    .entry("inspect the hardlink target", &name)?
                {
                    None => return Err(missing()),
                    Some(FileType::Directory) => {
                        return Err(bad(&name, "is a hardlink to a directory"))
                    }
                    Some(_) => {}
                }
                self.make_room(parent, leaf, false, &name)?;
                rustix::fs::linkat(
                    tparent.as_fd(),
                    tleaf.as_os_str(),
                    parent,
                    leaf,
                    AtFlags::empty(),
                )
                .entry("create the hardlink", &name)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ftype, dev) = if kind == EntryType::Fifo {
                    (FileType::Fifo, 0)
                } else {
                    let h = entry.header();
                    let major = h.device_major().map_err(Error::Tar)?.unwrap_or(0);
                    let minor = h.device_minor().map_err(Error::Tar)?.unwrap_or(0);
                    let t = if kind == EntryType::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (t, rustix::fs::makedev(major, minor))
                };
                self.make_room(parent, leaf, false, &name)?;
                rustix::fs::mknodat(parent, leaf, ftype, Mode::from(0o600), dev)
                    .entry("create the device node", &name)?;
                apply_meta(Target::At(parent, leaf, false), &meta, &name, true)?;
            }
            other => {
                return Err(bad(
                    &name,
                    format!("has the unsupported tar entry type {:?}", other),
                ))
            }
        }
        if self.flavor == Flavor::Apply {
            self.written.insert(join(&comps));
        }
        Ok(())
    }

    fn whiteout(&mut self, parent_comps: &[OsString], leaf: &[u8], name: &str) -> Result<()> {
        let create = self.flavor == Flavor::Diff;
        if leaf == OPAQUE_MARKER.as_bytes() {
            let Some(dir) = self.open_dir(parent_comps, name, create)? else {
                return Ok(());
            };
            match self.flavor {
                Flavor::Diff => {
                    rustix::fs::fsetxattr(dir.as_fd(), OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .entry("mark the directory opaque", name)?
                }
                Flavor::Apply => {
                    let prefix = join(parent_comps);
                    let written = &self.written;
                    fsutil::clear_dir(dir.as_fd(), |child| {
                        let mut p = prefix.clone();
                        if !p.is_empty() {
                            p.push(b'/');
                        }
                        p.extend_from_slice(child.as_bytes());
                        written.contains(&p)
                    })
                    .entry("empty the opaque directory", name)?;
                }
            }
            return Ok(());
        }
        if leaf.starts_with(b".wh..wh.") {
            // aufs bookkeeping (hardlink directories); not part of the image.
            return Ok(());
        }
        let hidden = &leaf[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(bad(name, "is a whiteout that names no file"));
        }
        let hidden = OsStr::from_bytes(hidden);
        let Some(dir) = self.open_dir(parent_comps, name, create)? else {
            return Ok(());
        };
        match self.flavor {
            Flavor::Diff => {
                self.make_room(dir.as_fd(), hidden, false, name)?;
                rustix::fs::mknodat(
                    dir.as_fd(),
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .entry("create the overlay whiteout", name)?;
            }
            Flavor::Apply => match fsutil::remove_at(dir.as_fd(), hidden) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).entry("delete the whited-out path", name),
            },
        }
        Ok(())
    }

    /// Sets directory times last: creating children changed them.
    fn finish(self) -> Result<()> {
        for (comps, mtime, name) in self.dir_times.iter().rev() {
            // A later entry may have replaced the directory: reopen safely
            // and skip what is no longer a directory.
            let Ok(Some(dir)) = self.open_dir(comps, name, false) else {
                continue;
            };
            let times = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            rustix::fs::futimens(dir.as_fd(), &times).entry("set the directory times", name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_dots_and_rejects_escapes() {
        let c = clean(b"/a/./b//c/../d", "x").map(|v| join(&v));
        assert_eq!(c.ok(), Some(b"a/b/d".to_vec()));
        assert!(clean(b"a/../../etc", "x").is_err());
        assert!(clean(b"../x", "x").is_err());
        assert_eq!(clean(b"./", "x").map(|v| v.len()).ok(), Some(0));
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, target) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if !target.is_empty() {
                h.set_link_name(target).unwrap();
            }
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Whiteouts and entries under a symlinked directory (a `dev` symlink
    /// pointing outside, one that loops) are refused, or applied inside the
    /// target, with a message naming the layer entry and its parent, never
    /// the directory being written (a snapshot path of the store).
    #[test]
    fn entries_under_symlinked_parents_are_named_by_the_entry() {
        use tar::EntryType as T;
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path().to_str().unwrap();
        let diff = "which is a symlink or a non-directory in this layer";
        let not_dir = "which is not a directory in the target";
        let loops = "which is a symlink that loops or resolves through too many symlinks";
        type Case<'a> = (Vec<(&'a str, T, &'a str)>, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            // (entries, Diff error, Apply error); None: applied.
            (
                vec![("s", T::Symlink, out), ("s/.wh.passwd", T::Regular, "")],
                Some(diff),
                None,
            ),
            (
                vec![("s", T::Symlink, "../.."), ("s/.wh.passwd", T::Regular, "")],
                Some(diff),
                None,
            ),
            (
                vec![("s", T::Symlink, out), ("s/.wh..wh..opq", T::Regular, "")],
                Some(diff),
                None,
            ),
            (
                vec![("dev", T::Symlink, out), ("dev/null", T::Char, "")],
                Some(diff),
                Some(not_dir),
            ),
            (
                vec![("dev", T::Symlink, out), ("dev/.wh.null", T::Regular, "")],
                Some(diff),
                None,
            ),
            (
                vec![
                    ("dev", T::Symlink, "../../../dev"),
                    ("dev/shm", T::Directory, ""),
                ],
                Some(diff),
                Some(loops),
            ),
        ];
        for flavor in [Flavor::Diff, Flavor::Apply] {
            for (entries, diff_err, apply_err) in &cases {
                let want = if flavor == Flavor::Diff {
                    diff_err
                } else {
                    apply_err
                };
                let dir = tempfile::tempdir().unwrap();
                let (last, _, _) = entries[entries.len() - 1];
                let (parent, _, _) = entries[0];
                let result = extract(dir.path(), &tar_of(entries)[..], flavor);
                match (result, want) {
                    (Ok(()), None) => {}
                    (Err(e), Some(text)) => {
                        let msg = e.to_string();
                        assert_eq!(
                            msg,
                            format!("layer entry `{last}` has the parent `{parent}`, {text}"),
                            "{flavor:?}"
                        );
                        assert!(!msg.contains(dir.path().to_str().unwrap()), "{msg}");
                    }
                    (got, _) => panic!("{flavor:?} {last}: expected {want:?}, got {got:?}"),
                }
                assert_eq!(
                    std::fs::read_dir(outside.path()).unwrap().count(),
                    0,
                    "{flavor:?} {last}: wrote outside"
                );
            }
        }
    }

    #[test]
    fn pax_mtime_fractions() {
        let t = parse_mtime("12.5").map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t, Some((12, 500_000_000)));
        assert_eq!(parse_mtime("7").map(|t| t.tv_nsec), Some(0));
        assert!(parse_mtime("x.1").is_none());
        assert!(parse_mtime("1.x").is_none());
    }
}

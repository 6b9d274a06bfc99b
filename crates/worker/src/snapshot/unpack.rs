//! The workspace's one tar extractor: safe extraction of an OCI layer tar,
//! in two flavours, and of a local archive for Dockerfile `ADD`:
//!
//! - [`Flavor::Diff`] writes an overlay-ready diff directory: OCI whiteouts
//!   become overlay whiteouts (character device 0/0, `trusted.overlay.opaque`).
//! - [`Flavor::Apply`] applies the layer onto an existing tree: whiteouts
//!   delete.
//! - [`Flavor::Archive`] unpacks an `ADD` archive into its destination
//!   directory, which acts as the root (as Docker's chrooted untar does): a
//!   `.wh.` name is an ordinary file, the archive's `./` entry leaves the
//!   destination's own owner, mode and times alone, device nodes and FIFOs
//!   are not created, xattrs are not applied, and `--chown` (when given)
//!   owns every entry. Parents resolve as in Apply.
//!
//! The layer flavours accept and reject exactly the same entries: each entry is
//! first checked by the one [`EntryPolicy`] (see the `policy` module), and
//! what lower layers left on disk never makes an entry invalid: a parent
//! that a lower layer left as a file is replaced by a directory in both
//! flavours (overlayfs shows an upper directory over a lower non-directory).
//! Apply follows a lower layer's symlinked parents within the tree, as a
//! container sees them.
//!
//! No path taken from the tar is ever resolved by the kernel from a string
//! that could leave the target: names are cleaned lexically, parents are
//! opened one descriptor at a time (Diff) or resolved inside the target
//! (Apply and Archive, [`rootpath::open_in_root`]: `RESOLVE_IN_ROOT`), and
//! the final component is never followed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawMode, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::error::{Error, IoContext, Result};
use super::fsutil::{self, OPAQUE_XATTR};
use super::policy::{bad, join, Accepted, Checked, EntryPolicy};
pub(crate) use super::policy::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::{ApplyOptions, ApplyReport};
use crate::rootpath;

/// The file-capability xattr, dropped with setuid/setgid bits.
const CAPABILITY_XATTR: &str = "security.capability";

/// How whiteouts and parents are treated; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Flavor {
    /// Build an overlay lower directory.
    Diff,
    /// Apply onto a plain directory tree.
    Apply,
    /// Unpack an `ADD` archive into its destination.
    Archive,
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
/// `options` only matter to [`Flavor::Apply`]; the snapshot unpacker keeps
/// everything.
pub(crate) fn extract(
    root: &Path,
    reader: impl Read,
    flavor: Flavor,
    options: ApplyOptions,
) -> Result<ApplyReport> {
    let root_fd = fsutil::open_dir(root).at("open the target directory", root)?;
    let special = flavor == Flavor::Diff || options.preserve_special;
    let ex = Extractor {
        root: root_fd,
        flavor,
        drop_privileges: !special,
        skip_devices: !special,
        owner: None,
        policy: EntryPolicy::new(),
        dir_times: Vec::new(),
        written: HashSet::new(),
        skipped: HashSet::new(),
        report: ApplyReport::default(),
    };
    ex.run(reader)
}

/// Unpacks the (uncompressed) `ADD` archive `reader` into the directory
/// open as `dest`, in the [`Flavor::Archive`] way; `owner` is `--chown`'s
/// ids, else each entry keeps the archive's.
pub(crate) fn extract_archive(
    dest: OwnedFd,
    reader: impl Read,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let ex = Extractor {
        root: dest,
        flavor: Flavor::Archive,
        drop_privileges: false,
        skip_devices: true,
        owner,
        policy: EntryPolicy::without_whiteouts(),
        dir_times: Vec::new(),
        written: HashSet::new(),
        skipped: HashSet::new(),
        report: ApplyReport::default(),
    };
    ex.run(reader).map(drop)
}

impl Extractor {
    fn run(mut self, reader: impl Read) -> Result<ApplyReport> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(Error::Tar)? {
            let mut entry = entry.map_err(Error::Tar)?;
            self.entry(&mut entry)?;
        }
        self.finish()
    }
}

struct Extractor {
    root: OwnedFd,
    flavor: Flavor,
    /// Clear setuid/setgid bits and drop file capabilities.
    drop_privileges: bool,
    /// Do not create device nodes.
    skip_devices: bool,
    /// The owner of every entry (`ADD --chown`), instead of the tar's ids.
    owner: Option<(u32, u32)>,
    /// The shared entry checks.
    policy: EntryPolicy,
    /// Directories whose times are set last, once their children exist.
    dir_times: Vec<(Vec<OsString>, Timespec, String)>,
    /// Paths this layer wrote (Apply flavor): an opaque marker keeps them.
    written: HashSet<Vec<u8>>,
    /// Device nodes (and, for Archive, FIFOs) not created: hardlinks to
    /// them are skipped too.
    skipped: HashSet<Vec<u8>>,
    report: ApplyReport,
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

/// The entry's metadata. `lenient` (ADD archives) reads an unreadable
/// mode as 0644 and unreadable ids and mtime as 0, as Docker's untar reads
/// empty numeric fields; a layer must have them all.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, lenient: bool) -> Result<Meta> {
    let header = entry.header();
    let field = |v: io::Result<u64>, default: u64| match v {
        Err(_) if lenient => Ok(default),
        v => v.map_err(Error::Tar),
    };
    let mode = field(header.mode().map(u64::from), 0o644)? as u32 & 0o7777;
    let mut uid = field(header.uid(), 0)?;
    let mut gid = field(header.gid(), 0)?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(field(header.mtime(), 0)?).unwrap_or(i64::MAX),
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
    ///
    /// Diff: symlinks are never followed. A parent that is not a directory
    /// can only be a whiteout of this layer (the policy refuses entries
    /// below the layer's own non-directories); it becomes an opaque
    /// directory.
    ///
    /// Apply and Archive: parents resolve as a container sees them, symlinks
    /// followed but confined to the tree ([`rootpath::open_in_root`]). In
    /// Apply, a parent that does not resolve to a directory (a lower layer's
    /// file, a dangling symlink) is replaced by a directory, as the overlay
    /// view of a build shows it, so what a build accepts is never rejected
    /// here. In Archive such a parent is an error, as in Docker's untar:
    /// `ADD` never deletes what the image has.
    ///
    /// Without `create`, a missing or non-directory parent gives `None`.
    fn open_dir(&self, comps: &[OsString], entry: &str, create: bool) -> Result<Option<OwnedFd>> {
        if comps.is_empty() {
            return self
                .dup_root()
                .entry("open the layer root", entry)
                .map(Some);
        }
        match self.flavor {
            Flavor::Diff => self.open_dir_below(comps, entry, create),
            Flavor::Apply | Flavor::Archive => self.open_dir_in_root(comps, entry, create),
        }
    }

    /// [`Extractor::open_dir`] for Diff: one component at a time, never
    /// following a symlink.
    fn open_dir_below(
        &self,
        comps: &[OsString],
        entry: &str,
        create: bool,
    ) -> Result<Option<OwnedFd>> {
        let mut cur = self.dup_root().entry("open the layer root", entry)?;
        for c in comps {
            let next = match fsutil::open_dir_at(cur.as_fd(), c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    rustix::fs::mkdirat(cur.as_fd(), c.as_os_str(), Mode::from(0o755))
                        .entry("create a parent directory", entry)?;
                    fsutil::open_dir_at(cur.as_fd(), c).entry("open a parent directory", entry)?
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    if !create {
                        return Ok(None);
                    }
                    self.replace_with_dir(cur.as_fd(), c, entry)?;
                    fsutil::open_dir_at(cur.as_fd(), c).entry("open a parent directory", entry)?
                }
                Err(e) => return Err(e).entry("open a parent directory", entry),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// [`Extractor::open_dir`] for Apply and Archive: resolved inside the
    /// root; missing or non-directory levels made directories one by one.
    fn open_dir_in_root(
        &self,
        comps: &[OsString],
        entry: &str,
        create: bool,
    ) -> Result<Option<OwnedFd>> {
        let open = |upto: usize| {
            let path = join(&comps[..upto]);
            rootpath::open_in_root(
                self.root.as_fd(),
                Path::new(OsStr::from_bytes(&path)),
                OFlags::RDONLY | OFlags::DIRECTORY,
            )
        };
        let missing =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR));
        match open(comps.len()) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if missing(&e) && create => {}
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(e).entry("open a parent directory", entry),
        }
        let mut cur = self.dup_root().entry("open the target root", entry)?;
        for (i, comp) in comps.iter().enumerate() {
            cur = match open(i + 1) {
                Ok(fd) => fd,
                Err(e) if missing(&e) => {
                    match rustix::fs::mkdirat(cur.as_fd(), comp.as_os_str(), Mode::from(0o755)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) if self.flavor == Flavor::Archive => {
                            return Err(bad(
                                entry,
                                format!(
                                    "has the parent `{}`, which is not a directory in the \
                                     destination",
                                    String::from_utf8_lossy(&join(&comps[..=i]))
                                ),
                            ));
                        }
                        Err(Errno::EXIST) => self.replace_with_dir(cur.as_fd(), comp, entry)?,
                        Err(e) => return Err(e).entry("create a parent directory", entry),
                    }
                    open(i + 1).entry("open a parent directory", entry)?
                }
                Err(e) => return Err(e).entry("open a parent directory", entry),
            };
        }
        Ok(Some(cur))
    }

    /// Replaces the non-directory `name` in `parent` by an empty directory
    /// (mode 0755, root); in the Diff flavor a whiteout becomes an opaque
    /// directory, so the lower layers' content stays hidden.
    fn replace_with_dir(&self, parent: BorrowedFd<'_>, name: &OsStr, entry: &str) -> Result<()> {
        let was_whiteout = self.flavor == Flavor::Diff && is_whiteout_at(parent, name);
        fsutil::remove_at(parent, name).entry("replace a non-directory parent", entry)?;
        rustix::fs::mkdirat(parent, name, Mode::from(0o755))
            .entry("create a parent directory", entry)?;
        if was_whiteout {
            let dir = fsutil::open_dir_at(parent, name).entry("open a parent directory", entry)?;
            rustix::fs::fsetxattr(dir.as_fd(), OPAQUE_XATTR, b"y", XattrFlags::empty())
                .entry("mark the directory opaque", entry)?;
        }
        Ok(())
    }

    /// Makes room for a new entry `leaf` in `parent`: keeps an existing
    /// directory when the new entry is a directory, removes anything else.
    /// Returns whether an existing directory was kept; a directory that
    /// replaces a Diff whiteout is made opaque (the lower one stays hidden).
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
            Some(_) if is_dir && self.flavor == Flavor::Diff && is_whiteout_at(parent, leaf) => {
                self.replace_with_dir(parent, leaf, entry)?;
                Ok(true)
            }
            Some(_) => {
                fsutil::remove_at(parent, leaf).entry("replace the existing path", entry)?;
                Ok(false)
            }
        }
    }

    /// Checks one tar entry with the policy and puts it on disk.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let Accepted { comps, what } = self.policy.check(&raw, kind, link.as_deref())?;
        let parent_comps = comps.split_last().map_or(&[][..], |(_, p)| p);
        match what {
            Checked::Skip => Ok(()),
            Checked::Root => self.root_entry(entry, &name),
            Checked::Opaque => self.opaque(parent_comps, &name),
            Checked::Whiteout(hidden) => self.whiteout(parent_comps, &hidden, &name),
            what => self.write(entry, &comps, what, &name),
        }
    }

    /// An entry for the root itself: its owner, mode and times (an `ADD`
    /// archive leaves its destination's alone).
    fn root_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        if self.flavor == Flavor::Archive {
            return Ok(());
        }
        let meta = read_meta(entry, name, false)?;
        apply_meta(Target::Fd(self.root.as_fd()), &meta, name, false)?;
        self.dir_times
            .push((Vec::new(), meta.mtime, name.to_string()));
        Ok(())
    }

    /// The entry's metadata, less what this extraction does not keep.
    fn entry_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        what: &Checked,
        name: &str,
    ) -> Result<Meta> {
        let mut meta = read_meta(entry, name, self.flavor == Flavor::Archive)?;
        if let Some((uid, gid)) = self.owner {
            meta.uid = uid;
            meta.gid = gid;
        }
        if self.flavor == Flavor::Archive {
            meta.xattrs.clear();
        }
        if self.drop_privileges && matches!(what, Checked::File | Checked::Device | Checked::Fifo) {
            let special =
                meta.mode & 0o6000 != 0 || meta.xattrs.iter().any(|(k, _)| k == CAPABILITY_XATTR);
            if special {
                meta.mode &= !0o6000;
                meta.xattrs.retain(|(k, _)| k != CAPABILITY_XATTR);
                self.report.privileges_dropped += 1;
            }
        }
        Ok(meta)
    }

    /// Whether the entry at `path` is left out: a device node (or, for an
    /// `ADD` archive, a FIFO) not created, or a hardlink to one.
    fn left_out(&mut self, what: &Checked, path: &[u8]) -> bool {
        let skip = match what {
            Checked::Device => self.skip_devices,
            Checked::Fifo => self.flavor == Flavor::Archive,
            Checked::Hardlink(target) => self.skipped.contains(&join(target)),
            _ => false,
        };
        if skip {
            self.report.devices_skipped += 1;
            self.skipped.insert(path.to_vec());
        }
        skip
    }

    /// Writes an accepted entry that is not a whiteout or the root.
    fn write<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[OsString],
        what: Checked,
        name: &str,
    ) -> Result<()> {
        let Some((leaf, parent_comps)) = comps.split_last() else {
            return Err(bad(name, "has no name"));
        };
        let path = join(comps);
        let meta = self.entry_meta(entry, &what, name)?;
        if self.left_out(&what, &path) {
            return Ok(());
        }
        let parent = self
            .open_dir(parent_comps, name, true)?
            .ok_or_else(|| bad(name, "has a parent that cannot be created"))?;
        let parent = parent.as_fd();
        let leaf = leaf.as_os_str();
        match what {
            Checked::Dir => {
                self.write_dir(parent, leaf, &meta, name)?;
                self.dir_times
                    .push((comps.to_vec(), meta.mtime, name.to_string()));
            }
            Checked::File => self.write_file(parent, leaf, entry, &meta, name)?,
            Checked::Symlink(target) => self.write_symlink(parent, leaf, &target, &meta, name)?,
            Checked::Hardlink(target) => self.write_hardlink(parent, leaf, &target, name)?,
            Checked::Device | Checked::Fifo => {
                self.write_node(parent, leaf, entry.header(), &meta, name)?
            }
            Checked::Skip | Checked::Root | Checked::Opaque | Checked::Whiteout(_) => {}
        }
        if self.flavor == Flavor::Apply {
            self.written.insert(path);
        }
        Ok(())
    }

    fn write_dir(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        meta: &Meta,
        name: &str,
    ) -> Result<()> {
        if !self.make_room(parent, leaf, true, name)? {
            rustix::fs::mkdirat(parent, leaf, Mode::from(0o700))
                .entry("create the directory", name)?;
        }
        let dir = fsutil::open_dir_at(parent, leaf).entry("open the directory", name)?;
        apply_meta(Target::Fd(dir.as_fd()), meta, name, false)
    }

    fn write_file(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        contents: &mut impl Read,
        meta: &Meta,
        name: &str,
    ) -> Result<()> {
        self.make_room(parent, leaf, false, name)?;
        let fd = rustix::fs::openat(
            parent,
            leaf,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from(0o600),
        )
        .entry("create the file", name)?;
        let mut file = File::from(fd);
        io::copy(contents, &mut file).entry("write the file contents", name)?;
        apply_meta(Target::Fd(file.as_fd()), meta, name, true)
    }

    fn write_symlink(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        target: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<()> {
        self.make_room(parent, leaf, false, name)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), parent, leaf)
            .entry("create the symlink", name)?;
        apply_meta(Target::At(parent, leaf, true), meta, name, true)
    }

    fn write_hardlink(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        target: &[OsString],
        name: &str,
    ) -> Result<()> {
        // The policy made sure the target is an earlier entry of this
        // layer, written below the root without following symlinks.
        let missing = || {
            bad(
                name,
                format!(
                    "is a hardlink to `{}`, which is not a file in the layer",
                    String::from_utf8_lossy(&join(target))
                ),
            )
        };
        let (tleaf, tparent) = target.split_last().ok_or_else(missing)?;
        let tparent = self.open_dir(tparent, name, false)?.ok_or_else(missing)?;
        match fsutil::lstat_at(tparent.as_fd(), tleaf).entry("inspect the hardlink target", name)? {
            None => return Err(missing()),
            Some(FileType::Directory) => return Err(bad(name, "is a hardlink to a directory")),
            Some(_) => {}
        }
        self.make_room(parent, leaf, false, name)?;
        rustix::fs::linkat(
            tparent.as_fd(),
            tleaf.as_os_str(),
            parent,
            leaf,
            AtFlags::empty(),
        )
        .entry("create the hardlink", name)
    }

    /// A device node or FIFO.
    fn write_node(
        &self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        header: &tar::Header,
        meta: &Meta,
        name: &str,
    ) -> Result<()> {
        let kind = header.entry_type();
        let (ftype, dev) = if kind == EntryType::Fifo {
            (FileType::Fifo, 0)
        } else {
            let major = header.device_major().map_err(Error::Tar)?.unwrap_or(0);
            let minor = header.device_minor().map_err(Error::Tar)?.unwrap_or(0);
            let t = if kind == EntryType::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            (t, rustix::fs::makedev(major, minor))
        };
        self.make_room(parent, leaf, false, name)?;
        rustix::fs::mknodat(parent, leaf, ftype, Mode::from(0o600), dev)
            .entry("create the device node", name)?;
        apply_meta(Target::At(parent, leaf, false), meta, name, true)
    }

    /// `.wh..wh..opq` in `parent_comps`: the lower layers' children are hidden.
    fn opaque(&mut self, parent_comps: &[OsString], name: &str) -> Result<()> {
        let create = self.flavor == Flavor::Diff;
        let Some(dir) = self.open_dir(parent_comps, name, create)? else {
            return Ok(());
        };
        match self.flavor {
            Flavor::Diff => {
                rustix::fs::fsetxattr(dir.as_fd(), OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .entry("mark the directory opaque", name)?
            }
            // Archive: the policy reports no whiteouts.
            Flavor::Apply | Flavor::Archive => {
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
        Ok(())
    }

    /// `.wh.NAME` in `parent_comps`: NAME is deleted.
    fn whiteout(&mut self, parent_comps: &[OsString], hidden: &OsStr, name: &str) -> Result<()> {
        let create = self.flavor == Flavor::Diff;
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
            Flavor::Apply | Flavor::Archive => match fsutil::remove_at(dir.as_fd(), hidden) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).entry("delete the whited-out path", name),
            },
        }
        Ok(())
    }

    /// Sets directory times last: creating children changed them.
    fn finish(self) -> Result<ApplyReport> {
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
        Ok(self.report)
    }
}

/// Whether `name` in `parent` is an overlay whiteout (character device 0/0).
fn is_whiteout_at(parent: BorrowedFd<'_>, name: &OsStr) -> bool {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_mtime_fractions() {
        let t = parse_mtime("12.5").map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t, Some((12, 500_000_000)));
        assert_eq!(parse_mtime("7").map(|t| t.tv_nsec), Some(0));
        assert!(parse_mtime("x.1").is_none());
        assert!(parse_mtime("1.x").is_none());
    }
}

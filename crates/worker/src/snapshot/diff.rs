//! Overlay upper directory → OCI layer tar entries.
//!
//! Only the upper directory is walked, so the cost follows the size of the
//! change, not of the image. Entries come depth-first with the names of
//! each directory sorted bytewise, a directory before its children, and the
//! opaque marker of a directory right after it. Entries are written by the
//! workspace's one tar writer ([`kbuild_image::tarball::append_entry`]):
//! ustar with PAX records for what ustar cannot hold, user and group names
//! left empty so the output depends only on the tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kbuild_image::tarball::{self, Entry, EntryKind, TarOptions};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::error::{Error, IoContext, Result};
use super::fsutil::{self, OPAQUE_XATTR};
use super::unpack::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Options of [`write_diff`].
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Clamp every mtime later than this (seconds since the epoch) to it,
    /// as `SOURCE_DATE_EPOCH` asks for reproducible layers.
    pub source_date_epoch: Option<i64>,
}

impl DiffOptions {
    /// The tar writer's options: an epoch before 1970 clamps to 0.
    fn tar(&self) -> TarOptions {
        TarOptions {
            source_date_epoch: self
                .source_date_epoch
                .map(|epoch| u64::try_from(epoch).unwrap_or(0)),
        }
    }
}

/// What [`write_diff`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Tar entries written (PAX headers not counted).
    pub entries: u64,
    /// Directory entries.
    pub directories: u64,
    /// Regular files written with their contents.
    pub regular_files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hardlinks to a file written earlier in the same diff.
    pub hardlinks: u64,
    /// Character and block devices and fifos.
    pub devices: u64,
    /// `.wh.NAME` entries for deleted paths.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries for replaced directories.
    pub opaque_dirs: u64,
    /// Bytes of file contents.
    pub content_bytes: u64,
}

/// Xattrs that describe the host or overlayfs, not the image.
fn keep_xattr(name: &str) -> bool {
    !fsutil::is_overlay_xattr(name) && name != "security.selinux"
}

/// The xattrs of `abs` that a layer entry keeps.
fn layer_xattrs(abs: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(fsutil::list_xattrs(abs)
        .at("read the xattrs of", abs)?
        .into_iter()
        .filter(|(k, _)| keep_xattr(k))
        .collect())
}

/// Writes the changes recorded in the overlay `upper` directory as OCI
/// layer entries to `out` (the caller finishes the archive).
///
/// `lowers` (bottom first) are the layers the upper was mounted on; they
/// are consulted only to drop whiteouts that would hide nothing. Files,
/// directories, symlinks, devices and fifos keep their ownership, mode
/// (setuid/setgid/sticky included), mtime and xattrs (except overlay and
/// SELinux ones); files sharing an inode in the upper become hardlinks;
/// sockets are skipped. Overlay whiteouts (character device 0/0) become
/// `.wh.NAME`, opaque directories get a `.wh..wh..opq` entry.
pub fn write_diff<W: Write>(
    upper: &Path,
    lowers: &[PathBuf],
    out: &mut tar::Builder<W>,
    options: &DiffOptions,
) -> Result<DiffStats> {
    let mut lower_fds = Vec::new();
    for l in lowers {
        lower_fds.push(fsutil::open_dir(l).at("open the lower directory", l)?);
    }
    let mut w = DiffWriter {
        out,
        tar: options.tar(),
        lowers: lower_fds,
        links: HashMap::new(),
        stats: DiffStats::default(),
        pending: Vec::new(),
    };
    w.walk(upper, &[])?;
    Ok(w.stats)
}

struct DiffWriter<'a, W: Write> {
    out: &'a mut tar::Builder<W>,
    tar: TarOptions,
    lowers: Vec<std::os::fd::OwnedFd>,
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: DiffStats,
    /// Directories copied up unchanged (overlay copies a directory up when
    /// something below it is touched, even if that is undone again, e.g. a
    /// mount point created and removed): written only once an entry below
    /// them is, so a step that changed nothing there adds nothing.
    pending: Vec<Entry>,
}

/// The layer entry of `rel` with `meta`'s mode, owner and mtime (before
/// clamping) and the xattrs kept in layers.
fn entry(rel: &[u8], kind: EntryKind, meta: &EntryMeta, xattrs: Vec<(String, Vec<u8>)>) -> Entry {
    Entry {
        path: rel.to_vec(),
        kind,
        mode: meta.mode & 0o7777,
        uid: u64::from(meta.uid),
        gid: u64::from(meta.gid),
        // Before 1970 is recorded as 1970.
        mtime: u64::try_from(meta.mtime).unwrap_or(0),
        xattrs: xattrs.into_iter().collect(),
    }
}

/// A whiteout entry (`.wh.NAME` or the opaque marker) at `path`, with the
/// mtime of what it stands for.
fn whiteout(path: Vec<u8>, md: &Metadata) -> Entry {
    Entry {
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
        ..Entry::new(path, EntryKind::Whiteout)
    }
}

/// Appends one entry through the one tar writer and counts it.
fn append_entry<W: Write>(
    out: &mut tar::Builder<W>,
    options: &TarOptions,
    stats: &mut DiffStats,
    entry: &Entry,
    data: impl Read,
) -> Result<()> {
    tarball::append_entry(out, options, entry, data).map_err(|source| Error::WriteTar {
        entry: String::from_utf8_lossy(&entry.path).into_owned(),
        source: Box::new(source),
    })?;
    stats.entries += 1;
    Ok(())
}

/// Content read in large blocks: files are streamed, not loaded.
fn buffered(data: impl Read) -> impl Read {
    io::BufReader::with_capacity(128 * 1024, data)
}

impl<W: Write> DiffWriter<'_, W> {
    /// Appends one entry after the directories held back above it.
    fn append(&mut self, entry: &Entry, data: impl Read) -> Result<()> {
        for dir in std::mem::take(&mut self.pending) {
            append_entry(self.out, &self.tar, &mut self.stats, &dir, io::empty())?;
            self.stats.directories += 1;
        }
        append_entry(self.out, &self.tar, &mut self.stats, entry, data)
    }

    /// Whether the regular file `rel` of the upper is the same file as in
    /// the topmost lower that has the path: the same mode, owner, mtime
    /// (to the nanosecond), size, xattrs and content. Overlay copies a
    /// file up unchanged when a new hardlink names it.
    fn unchanged_copy_up(
        &self,
        rel: &[u8],
        abs: &Path,
        md: &Metadata,
        xattrs: &[(String, Vec<u8>)],
    ) -> bool {
        for fd in self.lowers.iter().rev() {
            let found = rustix::fs::openat2(
                fd.as_fd(),
                OsStr::from_bytes(rel),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            );
            let lower = match found {
                Ok(f) => f,
                Err(Errno::NOENT) => continue,
                Err(_) => return false,
            };
            let Ok(st) = rustix::fs::fstat(&lower) else {
                return false;
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFREG
                || st.st_mode & 0o7777 != md.mode() & 0o7777
                || st.st_uid != md.uid()
                || st.st_gid != md.gid()
                || st.st_mtime != md.mtime()
                || i64::try_from(st.st_mtime_nsec).ok() != Some(md.mtime_nsec())
                || st.st_size as u64 != md.len()
            {
                return false;
            }
            let path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&lower)
            ));
            let mut a: Vec<(String, Vec<u8>)> = match fsutil::list_xattrs(&path) {
                Ok(v) => v.into_iter().filter(|(k, _)| keep_xattr(k)).collect(),
                Err(_) => return false,
            };
            let mut b = xattrs.to_vec();
            a.sort();
            b.sort();
            return a == b && same_content(File::from(lower), abs);
        }
        false
    }

    /// Whether the topmost lower that has `rel` has it as a directory with
    /// the same mode, owner, mtime and xattrs as `md`.
    fn same_in_lowers(&self, rel: &[u8], md: &Metadata, xattrs: &[(String, Vec<u8>)]) -> bool {
        for fd in self.lowers.iter().rev() {
            let found = rustix::fs::openat2(
                fd.as_fd(),
                OsStr::from_bytes(rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            );
            let dir = match found {
                Ok(d) => d,
                Err(Errno::NOENT) => continue,
                Err(_) => return false,
            };
            let Ok(st) = rustix::fs::fstat(&dir) else {
                return false;
            };
            if st.st_mode & 0o7777 != md.mode() & 0o7777
                || st.st_uid != md.uid()
                || st.st_gid != md.gid()
                || st.st_mtime != md.mtime()
            {
                return false;
            }
            let path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            ));
            let lower_xattrs: Vec<(String, Vec<u8>)> = match fsutil::list_xattrs(&path) {
                Ok(v) => v.into_iter().filter(|(k, _)| keep_xattr(k)).collect(),
                Err(_) => return false,
            };
            let mut a = lower_xattrs;
            let mut b = xattrs.to_vec();
            a.sort();
            b.sort();
            return a == b;
        }
        false
    }

    /// Whether any lower layer has `rel` (a symlink in the way counts as yes).
    fn in_lowers(&self, rel: &[u8]) -> bool {
        self.lowers.iter().any(|fd| {
            match rustix::fs::openat2(
                fd.as_fd(),
                OsStr::from_bytes(rel),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            ) {
                Ok(_) => true,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => false,
                Err(_) => true,
            }
        })
    }

    fn walk(&mut self, dir: &Path, rel: &[u8]) -> Result<()> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir).at("list the upper directory", dir)? {
            names.push(e.at("list the upper directory", dir)?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let abs = dir.join(&name);
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            self.one(&abs, &child, name.as_bytes(), rel)?;
        }
        Ok(())
    }

    /// Writes what the upper-directory entry `abs` (at `rel`, named `leaf`
    /// in `parent`) changes, and what is below it.
    fn one(&mut self, abs: &Path, rel: &[u8], leaf: &[u8], parent: &[u8]) -> Result<()> {
        let md = abs.symlink_metadata().at("inspect", abs)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            return self.whiteout(rel, leaf, parent, &md);
        }
        if ft.is_socket() {
            tracing::debug!(path = %abs.display(), "sockets cannot be archived; skipped");
            return Ok(());
        }
        let xattrs = layer_xattrs(abs)?;
        if ft.is_dir() {
            return self.directory(abs, rel, &md, xattrs);
        }
        if md.nlink() > 1 && ft.is_file() && self.unchanged_copy_up(rel, abs, &md, &xattrs) {
            // Overlay copied a lower file up to link a new name to it: the
            // file itself did not change and is not part of the layer. The
            // new name is written with the content, as BuildKit's differ
            // does, and links nothing outside the layer.
            return Ok(());
        }
        if md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())).cloned() {
                let link = entry(
                    rel,
                    EntryKind::Hardlink(first),
                    &EntryMeta::of(&md),
                    Vec::new(),
                );
                self.append(&link, io::empty())?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), rel.to_vec());
        }
        if ft.is_file() {
            self.regular_file(abs, rel, &md, xattrs)
        } else if ft.is_symlink() {
            let target = fs::read_link(abs).at("read the symlink", abs)?;
            let kind = EntryKind::Symlink(target.into_os_string().into_vec());
            self.append(&entry(rel, kind, &EntryMeta::of(&md), xattrs), io::empty())?;
            self.stats.symlinks += 1;
            Ok(())
        } else {
            self.device(rel, &md, xattrs)
        }
    }

    /// An overlay whiteout (character device 0/0): a `.wh.` entry when a
    /// lower layer has the path, else nothing.
    fn whiteout(&mut self, rel: &[u8], leaf: &[u8], parent: &[u8], md: &Metadata) -> Result<()> {
        if !self.in_lowers(rel) {
            return Ok(());
        }
        let mut path = parent.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        path.extend_from_slice(leaf);
        self.append(&whiteout(path, md), io::empty())?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// A directory: written when it changed (or is opaque, then with the
    /// opaque marker), held back until something below it is written when
    /// it is the same as in the lowers; then its children.
    fn directory(
        &mut self,
        abs: &Path,
        rel: &[u8],
        md: &Metadata,
        xattrs: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let opaque = fsutil::get_xattr(abs, OPAQUE_XATTR).at("read the xattrs of", abs)?;
        let is_opaque = opaque.as_deref() == Some(b"y");
        let unchanged = !is_opaque && self.same_in_lowers(rel, md, &xattrs);
        let dir = entry(rel, EntryKind::Dir, &EntryMeta::of(md), xattrs);
        if unchanged {
            let depth = self.pending.len();
            self.pending.push(dir);
            self.walk(abs, rel)?;
            // Nothing below was written: the directory is not a change.
            self.pending.truncate(depth);
            return Ok(());
        }
        self.append(&dir, io::empty())?;
        self.stats.directories += 1;
        if is_opaque {
            let mut marker = rel.to_vec();
            marker.push(b'/');
            marker.extend_from_slice(OPAQUE_MARKER.as_bytes());
            self.append(&whiteout(marker, md), io::empty())?;
            self.stats.opaque_dirs += 1;
        }
        self.walk(abs, rel)
    }

    /// A regular file with its content, read without following a symlink
    /// and checked to be exactly as long as its metadata said.
    fn regular_file(
        &mut self,
        abs: &Path,
        rel: &[u8],
        md: &Metadata,
        xattrs: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
            .at("open", abs)?;
        let kind = EntryKind::File { size: md.len() };
        self.append(
            &entry(rel, kind, &EntryMeta::of(md), xattrs),
            buffered(file),
        )?;
        self.stats.regular_files += 1;
        self.stats.content_bytes += md.len();
        Ok(())
    }

    /// A character or block device node, or a FIFO.
    fn device(&mut self, rel: &[u8], md: &Metadata, xattrs: Vec<(String, Vec<u8>)>) -> Result<()> {
        let ft = md.file_type();
        let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
        let kind = if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice { major, minor }
        } else {
            EntryKind::Fifo
        };
        self.append(&entry(rel, kind, &EntryMeta::of(md), xattrs), io::empty())?;
        self.stats.devices += 1;
        Ok(())
    }
}

/// The metadata of an entry that its tar header records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits with setuid/setgid/sticky (file type bits ignored).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, whole seconds since the epoch (before clamping).
    pub mtime: i64,
}

impl EntryMeta {
    /// What `md` (an lstat) gives.
    pub fn of(md: &Metadata) -> EntryMeta {
        EntryMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
        }
    }
}

/// A directory [`LayerEntries`] holds back until an entry follows it.
struct HeldDir {
    rel: Vec<u8>,
    mtime: Option<i64>,
    in_lowers: bool,
}

/// Layer entries written while a step makes its changes, for a caller that
/// knows every change as it makes it in a fresh upper directory (a COPY
/// writes its layer while it copies, reading each file once). The entries,
/// their order and their headers are what [`write_diff`] would give for the
/// finished upper directory: metadata is read from the upper (`upper`) as
/// [`write_diff`] reads it, file contents come from the caller's stream.
///
/// The caller reports entries in [`write_diff`]'s order (names sorted
/// bytewise, a directory before its children) and only changes that
/// [`write_diff`] renders as plain entries. Where the result could differ
/// (an opaque directory, a file with xattrs or other links, a file whose
/// metadata ended up other than announced, a directory of the lowers with
/// nothing written below it), [`LayerEntries::finish`] or the method says
/// so and the caller must diff the upper instead.
pub struct LayerEntries<W: Write> {
    out: tar::Builder<W>,
    upper: PathBuf,
    tar: TarOptions,
    stats: DiffStats,
    held: Vec<HeldDir>,
    /// Directories whose mtime the caller sets after their children:
    /// checked by [`LayerEntries::finish`].
    stamped: Vec<(Vec<u8>, i64)>,
}

impl<W: Write> LayerEntries<W> {
    /// Entries for the changes made in `upper`, written to `out`.
    pub fn new(out: tar::Builder<W>, upper: &Path, options: &DiffOptions) -> LayerEntries<W> {
        LayerEntries {
            out,
            upper: upper.to_path_buf(),
            tar: options.tar(),
            stats: DiffStats::default(),
            held: Vec::new(),
            stamped: Vec::new(),
        }
    }

    /// The directory `rel` of the upper (relative, no trailing `/`). Its
    /// entry is written from the upper's metadata when the next entry is
    /// (so changes made in it until then count), with `mtime` as its mtime
    /// when the caller sets that after writing the children. `in_lowers`:
    /// the directory is in a lower layer too, so [`write_diff`] writes it
    /// only if something below it changed.
    pub fn dir(&mut self, rel: &[u8], mtime: Option<i64>, in_lowers: bool) {
        self.held.push(HeldDir {
            rel: rel.to_vec(),
            mtime,
            in_lowers,
        });
    }

    /// Writes the directories held back. `Ok(false)`: one of them is not a
    /// plain directory entry (opaque, or gone).
    fn release(&mut self) -> Result<bool> {
        for d in std::mem::take(&mut self.held) {
            let abs = self.upper.join(OsStr::from_bytes(&d.rel));
            let md = match abs.symlink_metadata() {
                Ok(md) if md.is_dir() => md,
                _ => return Ok(false),
            };
            let opaque = fsutil::get_xattr(&abs, OPAQUE_XATTR).at("read the xattrs of", &abs)?;
            if opaque.is_some() {
                return Ok(false);
            }
            let xattrs = layer_xattrs(&abs)?;
            let mut meta = EntryMeta::of(&md);
            if let Some(t) = d.mtime {
                meta.mtime = t;
                self.stamped.push((d.rel.clone(), t));
            }
            let dir = entry(&d.rel, EntryKind::Dir, &meta, xattrs);
            append_entry(&mut self.out, &self.tar, &mut self.stats, &dir, io::empty())?;
            self.stats.directories += 1;
        }
        Ok(true)
    }

    /// The symlink `rel`, as the upper has it now. `Ok(false)`: not one
    /// [`write_diff`] writes as a plain entry.
    pub fn symlink(&mut self, rel: &[u8]) -> Result<bool> {
        if !self.release()? {
            return Ok(false);
        }
        let abs = self.upper.join(OsStr::from_bytes(rel));
        let md = abs.symlink_metadata().at("inspect", &abs)?;
        if !md.file_type().is_symlink() {
            return Ok(false);
        }
        let xattrs = layer_xattrs(&abs)?;
        let target = fs::read_link(&abs).at("read the symlink", &abs)?;
        let kind = EntryKind::Symlink(target.into_os_string().into_vec());
        let link = entry(rel, kind, &EntryMeta::of(&md), xattrs);
        append_entry(
            &mut self.out,
            &self.tar,
            &mut self.stats,
            &link,
            io::empty(),
        )?;
        self.stats.symlinks += 1;
        Ok(true)
    }

    /// The regular file `rel` with `meta` and `len` bytes read from `data`
    /// (an error unless it gives exactly `len`), written before its
    /// metadata is final in the upper: check it with
    /// [`LayerEntries::file_is`] once it is. `Ok(false)`: a directory held
    /// back is not a plain entry; nothing of the file was read.
    pub fn file(
        &mut self,
        rel: &[u8],
        meta: &EntryMeta,
        len: u64,
        data: impl Read,
    ) -> Result<bool> {
        if !self.release()? {
            return Ok(false);
        }
        let file = entry(rel, EntryKind::File { size: len }, meta, Vec::new());
        append_entry(
            &mut self.out,
            &self.tar,
            &mut self.stats,
            &file,
            buffered(data),
        )?;
        self.stats.regular_files += 1;
        self.stats.content_bytes += len;
        Ok(true)
    }

    /// Whether the upper's `rel` is now the file [`LayerEntries::file`]
    /// wrote: see [`upper_file_is`].
    pub fn file_is(&self, rel: &[u8], meta: &EntryMeta, len: u64) -> Result<bool> {
        upper_file_is(&self.upper, rel, meta, len)
    }

    /// Ends the entries: writes the directories still held back and checks
    /// the mtimes set after the fact. `Ok(None)`: the layer
    /// [`write_diff`] would make may differ; diff the upper instead.
    /// Otherwise the tar builder (not finished) and what was written.
    pub fn finish(mut self) -> Result<Option<(tar::Builder<W>, DiffStats)>> {
        if self.held.iter().any(|d| d.in_lowers) || !self.release()? {
            return Ok(None);
        }
        for (rel, mtime) in &self.stamped {
            let abs = self.upper.join(OsStr::from_bytes(rel));
            let md = abs.symlink_metadata().at("inspect", &abs)?;
            if md.mtime() != *mtime {
                return Ok(None);
            }
        }
        Ok(Some((self.out, self.stats)))
    }
}

/// Whether the file `rel` of the upper directory `upper` is the entry
/// [`LayerEntries::file`] wrote for it with `meta` and `len`: a regular
/// file with one link, no xattrs kept in layers, the same mode, owner,
/// mtime (in seconds) and size. A free function so that the threads that
/// write a copy's files can check them where they write them.
pub fn upper_file_is(upper: &Path, rel: &[u8], meta: &EntryMeta, len: u64) -> Result<bool> {
    let abs = upper.join(OsStr::from_bytes(rel));
    let md = abs.symlink_metadata().at("inspect", &abs)?;
    if !md.file_type().is_file() || md.nlink() != 1 || md.len() != len {
        return Ok(false);
    }
    if EntryMeta::of(&md) != *meta {
        return Ok(false);
    }
    let xattrs = fsutil::list_xattrs(&abs).at("read the xattrs of", &abs)?;
    Ok(xattrs.iter().all(|(k, _)| !keep_xattr(k)))
}

/// Whether `lower` (open) and the file at `upper` hold the same bytes.
fn same_content(lower: File, upper: &Path) -> bool {
    let Ok(upper) = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(upper)
    else {
        return false;
    };
    let (mut a, mut b) = (
        io::BufReader::with_capacity(64 * 1024, lower),
        io::BufReader::with_capacity(64 * 1024, upper),
    );
    loop {
        let (x, y) = match (a.fill_buf(), b.fill_buf()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => return false,
        };
        if x.is_empty() || y.is_empty() {
            return x.is_empty() && y.is_empty();
        }
        let n = x.len().min(y.len());
        if x[..n] != y[..n] {
            return false;
        }
        a.consume(n);
        b.consume(n);
    }
}

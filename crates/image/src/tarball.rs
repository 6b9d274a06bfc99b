//! Deterministic tar streams for layers and archives: the workspace's one
//! tar writer. [`append_entry`] writes every entry, whether it comes from
//! [`DeterministicTar`] (exports, archives, filesystem outputs) or from the
//! worker's layer diff.
//!
//! Same input, same bytes: entries carry only what an image needs (path,
//! type, mode, uid/gid, mtime, link target, device numbers for devices,
//! xattrs), user and group names are empty, and anything that does not fit
//! a ustar header (long or non-ASCII names and link targets, ids ≥ 2²¹,
//! sizes ≥ 8 GiB, xattrs as `SCHILY.xattr.<name>`) goes into a PAX extended
//! header written just before the entry, as Go's archive/tar (and so
//! BuildKit) writes it. With `SOURCE_DATE_EPOCH` set, every mtime later
//! than it is clamped down to it (BuildKit's behaviour).
//! [`DeterministicTar::append_dir_tree`] walks directories sorted bytewise by
//! name and turns repeated inodes into hard links to the first path seen.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

use crate::error::{io_err, stream_err, Error, Result, TarEntryProblem};

const USTAR_MAX_ID: u64 = 0o7777777;
const USTAR_MAX_SIZE: u64 = 0o77777777777;

/// Options for deterministic tar streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TarOptions {
    /// Clamp mtimes to this Unix time (seconds) when set.
    pub source_date_epoch: Option<u64>,
}

impl TarOptions {
    /// Options from the environment: `SOURCE_DATE_EPOCH` when it is a
    /// non-negative integer.
    pub fn from_env() -> TarOptions {
        TarOptions {
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        }
    }

    fn clamp(&self, mtime: u64) -> u64 {
        match self.source_date_epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        }
    }
}

/// What kind of entry a tar header describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file of the given size; its bytes follow.
    File {
        /// Content size in bytes.
        size: u64,
    },
    /// Directory (written as `name/`).
    Dir,
    /// Symbolic link to the given target (raw bytes).
    Symlink(Vec<u8>),
    /// Hard link to an earlier entry's archive path.
    Hardlink(Vec<u8>),
    /// Character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// Block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// Named pipe.
    Fifo,
    /// An OCI whiteout: the empty regular file `.wh.NAME` that deletes
    /// `NAME` from the layers below, or `.wh..wh..opq` that hides what they
    /// have in its directory. Its owner fields are left empty (the entry's
    /// uid and gid are not written).
    Whiteout,
}

/// One tar entry's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Archive path, relative (a leading `/` or `./` is removed). Raw bytes:
    /// Linux names need not be UTF-8.
    pub path: Vec<u8>,
    /// Type and type-specific data.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, Unix seconds (clamped by [`TarOptions`]).
    pub mtime: u64,
    /// Extended attributes, name → value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// A root-owned entry with mtime 0 and mode 0755 (directories), 0777
    /// (symlinks), 0 (whiteouts) or 0644 (everything else).
    pub fn new(path: impl Into<Vec<u8>>, kind: EntryKind) -> Entry {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) => 0o777,
            EntryKind::Whiteout => 0,
            _ => 0o644,
        };
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// A deterministic tar writer over [`tar::Builder`].
pub struct DeterministicTar<W: Write> {
    builder: tar::Builder<W>,
    options: TarOptions,
    /// (dev, ino) → archive path of the first entry, for hard links.
    inodes: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> std::fmt::Debug for DeterministicTar<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeterministicTar")
            .field("options", &self.options)
            .finish()
    }
}

impl<W: Write> DeterministicTar<W> {
    /// Wraps `writer`.
    pub fn new(writer: W, options: TarOptions) -> DeterministicTar<W> {
        DeterministicTar {
            builder: tar::Builder::new(writer),
            options,
            inodes: HashMap::new(),
        }
    }

    /// Appends `entry`; for files, exactly `size` bytes are streamed from
    /// `data` (fewer is an error, extra bytes are not read).
    pub fn append<R: Read>(&mut self, entry: &Entry, data: R) -> Result<()> {
        append_entry(&mut self.builder, &self.options, entry, data)
    }

    /// Appends the file system object at `fs_path` (not following symlinks)
    /// as `archive_path`. Regular files with several links that were already
    /// written by this writer become hard links. Sockets are skipped (tar
    /// cannot hold them); returns whether an entry was written.
    pub fn append_path(&mut self, fs_path: &Path, archive_path: &[u8]) -> Result<bool> {
        let meta = fs::symlink_metadata(fs_path).map_err(io_err("stat", fs_path))?;
        self.append_with_metadata(fs_path, archive_path, &meta)
    }

    /// Appends `root_dir`'s contents below `prefix` (no trailing `/`; empty
    /// for the archive root), walking each directory sorted bytewise by name.
    /// A non-empty prefix also gets a directory entry for `root_dir` itself.
    pub fn append_dir_tree(&mut self, root_dir: &Path, prefix: &str) -> Result<()> {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            self.append_path(root_dir, prefix.as_bytes())?;
        }
        self.walk_now(root_dir, prefix.as_bytes())
    }

    /// Writes the end-of-archive blocks and returns the writer.
    pub fn finish(self) -> Result<W> {
        self.builder
            .into_inner()
            .map_err(stream_err("finish the tar stream"))
    }

    /// Depth first in name order: a directory, then its contents, then its
    /// next sibling. Recursion depth is bounded by the tree's depth.
    fn walk_now(&mut self, dir: &Path, archive_dir: &[u8]) -> Result<()> {
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(io_err("list the directory", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("list the directory", dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let fs_path = dir.join(&name);
            let mut archive_path = archive_dir.to_vec();
            if !archive_path.is_empty() {
                archive_path.push(b'/');
            }
            archive_path.extend_from_slice(name.as_bytes());
            let meta = fs::symlink_metadata(&fs_path).map_err(io_err("stat", &fs_path))?;
            self.append_with_metadata(&fs_path, &archive_path, &meta)?;
            if meta.is_dir() {
                self.walk_now(&fs_path, &archive_path)?;
            }
        }
        Ok(())
    }

    fn append_with_metadata(
        &mut self,
        fs_path: &Path,
        archive_path: &[u8],
        meta: &Metadata,
    ) -> Result<bool> {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            match self.inodes.get(&key) {
                Some(first) if meta.nlink() > 1 => EntryKind::Hardlink(first.clone()),
                _ => {
                    if meta.nlink() > 1 {
                        self.inodes.insert(key, archive_path.to_vec());
                    }
                    EntryKind::File { size: meta.len() }
                }
            }
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(fs_path).map_err(io_err("read the symlink", fs_path))?;
            EntryKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            let (major, minor) = dev_numbers(meta.rdev());
            EntryKind::CharDevice { major, minor }
        } else if ft.is_block_device() {
            let (major, minor) = dev_numbers(meta.rdev());
            EntryKind::BlockDevice { major, minor }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            tracing::debug!(path = %fs_path.display(), "skipping socket: tar cannot hold it");
            return Ok(false);
        };
        let entry = Entry {
            path: archive_path.to_vec(),
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            xattrs: read_xattrs(fs_path)?,
            kind,
        };
        if matches!(entry.kind, EntryKind::File { .. }) {
            let file = File::open(fs_path).map_err(io_err("open", fs_path))?;
            self.append(&entry, file)?;
        } else {
            self.append(&entry, io::empty())?;
        }
        Ok(true)
    }
}

/// Appends `entry` to `out`: the workspace's one tar entry writer, which
/// [`DeterministicTar`] and the worker's layer diff both write through. A
/// PAX extended header goes first when the ustar header cannot hold the
/// entry; for files, exactly `size` bytes are streamed from `data` (fewer
/// is an error, extra bytes are not read).
pub fn append_entry<W: Write, R: Read>(
    out: &mut tar::Builder<W>,
    options: &TarOptions,
    entry: &Entry,
    data: R,
) -> Result<()> {
    let EntryHeader {
        header,
        path,
        pax,
        size,
        mtime,
    } = entry_header(entry, options)?;
    if !pax.is_empty() {
        write_pax(out, &path, mtime, &pax)?;
    }
    if size == 0 {
        return out
            .append(&header, io::empty())
            .map_err(stream_err("write the tar stream"));
    }
    let mut counted = CountingReader {
        inner: data.take(size),
        read: 0,
    };
    out.append(&header, &mut counted)
        .map_err(stream_err("write the tar stream"))?;
    if counted.read != size {
        return Err(Error::TarEntry {
            path: String::from_utf8_lossy(&path).into_owned(),
            reason: TarEntryProblem::SizeChanged {
                read: counted.read,
                size,
            },
        });
    }
    Ok(())
}

/// An entry's ustar header (checksum set) and the PAX records for what it
/// cannot hold.
struct EntryHeader {
    header: Header,
    /// The normalized archive path.
    path: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
    /// Content bytes that follow the header.
    size: u64,
    /// The clamped mtime, for the PAX header too.
    mtime: u64,
}

fn entry_header(entry: &Entry, options: &TarOptions) -> Result<EntryHeader> {
    let path = normalize(&entry.path, matches!(entry.kind, EntryKind::Dir))?;
    let mut header = Header::new_ustar();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if !set_ustar_name(&mut header, &path) {
        pax.push(("path".to_string(), path.clone()));
        set_ustar_name(&mut header, &ascii_truncate(&path, 100));
    }
    let (ty, link) = match &entry.kind {
        EntryKind::File { .. } | EntryKind::Whiteout => (EntryType::Regular, None),
        EntryKind::Dir => (EntryType::Directory, None),
        EntryKind::Symlink(t) => (EntryType::Symlink, Some(t.clone())),
        EntryKind::Hardlink(t) => (EntryType::Link, Some(normalize(t, false)?)),
        EntryKind::CharDevice { .. } => (EntryType::Char, None),
        EntryKind::BlockDevice { .. } => (EntryType::Block, None),
        EntryKind::Fifo => (EntryType::Fifo, None),
    };
    header.set_entry_type(ty);
    if let Some(link) = link {
        if link.len() <= 100 && link.is_ascii() {
            set_field(&mut header.as_old_mut().linkname, &link);
        } else {
            set_field(
                &mut header.as_old_mut().linkname,
                &ascii_truncate(&link, 100),
            );
            pax.push(("linkpath".to_string(), link));
        }
    }
    header.set_mode(entry.mode & 0o7777);
    // A whiteout's owner fields stay empty, as layers have always had them.
    if !matches!(entry.kind, EntryKind::Whiteout) {
        set_ids(&mut header, &mut pax, entry.uid, entry.gid);
    }
    let size = match &entry.kind {
        EntryKind::File { size } => *size,
        _ => 0,
    };
    if size > USTAR_MAX_SIZE {
        pax.push(("size".to_string(), size.to_string().into_bytes()));
        header.set_size(0);
    } else {
        header.set_size(size);
    }
    let mtime = options.clamp(entry.mtime);
    header.set_mtime(mtime.min(USTAR_MAX_SIZE));
    set_device(&mut header, &entry.kind, &path)?;
    for (name, value) in &entry.xattrs {
        pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
    }
    header.set_cksum();
    Ok(EntryHeader {
        header,
        path,
        pax,
        size,
        mtime,
    })
}

/// Owner ids; one beyond ustar's octal range goes into a PAX record and
/// the header field says 0, as Go's archive/tar writes it.
fn set_ids(header: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, uid: u64, gid: u64) {
    for (key, id, set) in [
        ("uid", uid, Header::set_uid as fn(&mut Header, u64)),
        ("gid", gid, Header::set_gid as fn(&mut Header, u64)),
    ] {
        if id > USTAR_MAX_ID {
            pax.push((key.to_string(), id.to_string().into_bytes()));
            set(header, 0);
        } else {
            set(header, id);
        }
    }
}

/// Device numbers, written for character and block devices only: the
/// fields of every other entry stay empty, as layers have always had them.
fn set_device(header: &mut Header, kind: &EntryKind, path: &[u8]) -> Result<()> {
    let (EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor }) = *kind
    else {
        return Ok(());
    };
    let tar_err = |source: io::Error| Error::TarHeader {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    };
    header.set_device_major(major).map_err(tar_err)?;
    header.set_device_minor(minor).map_err(tar_err)
}

/// Writes the PAX extended header for the entry at `path`.
///
/// Written by hand rather than with `tar::Builder::append_pax_extensions`:
/// that one leaves the header's name, mode and mtime empty, while ours
/// names it `PaxHeaders.0/<base name>` with mode 0644 and the entry's
/// (clamped) mtime, as Go's archive/tar (and so BuildKit) does. Switching
/// would change the bytes, and so the digest, of every layer that needs a
/// PAX record.
fn write_pax<W: Write>(
    out: &mut tar::Builder<W>,
    path: &[u8],
    mtime: u64,
    records: &[(String, Vec<u8>)],
) -> Result<()> {
    let mut data = Vec::new();
    for (key, value) in records {
        data.extend(pax_record(key, value));
    }
    let base = path
        .rsplit(|b| *b == b'/')
        .find(|s| !s.is_empty())
        .unwrap_or(b"entry");
    let mut name = b"PaxHeaders.0/".to_vec();
    name.extend(ascii_truncate(base, 80));
    let mut header = Header::new_ustar();
    set_ustar_name(&mut header, &name);
    header.set_entry_type(EntryType::XHeader);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(mtime.min(USTAR_MAX_SIZE));
    header.set_cksum();
    out.append(&header, data.as_slice())
        .map_err(stream_err("write the tar stream"))
}

struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Removes leading `/` and `./`, collapses repeated `/`, rejects `..` and
/// empty paths; directories end in `/`.
fn normalize(path: &[u8], dir: bool) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => {
                return Err(Error::TarEntry {
                    path: String::from_utf8_lossy(path).into_owned(),
                    reason: TarEntryProblem::DotDot,
                })
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::TarEntry {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: TarEntryProblem::EmptyPath,
        });
    }
    if dir {
        out.push(b'/');
    }
    Ok(out)
}

/// Stores `name` in the ustar name (+prefix) fields; false when it does not
/// fit or is not ASCII (then it goes into a PAX record).
fn set_ustar_name(header: &mut Header, name: &[u8]) -> bool {
    if !name.is_ascii() {
        return false;
    }
    let Some(ustar) = header.as_ustar_mut() else {
        return false;
    };
    if name.len() <= 100 {
        set_field(&mut ustar.name, name);
        set_field(&mut ustar.prefix, b"");
        return true;
    }
    // Split at a '/' so the prefix has ≤ 155 bytes and the name 1..=100.
    let limit = name.len().min(156);
    for i in (0..limit).rev() {
        if name[i] == b'/' && name.len() - i - 1 <= 100 && name.len() - i - 1 > 0 {
            set_field(&mut ustar.prefix, &name[..i]);
            set_field(&mut ustar.name, &name[i + 1..]);
            return true;
        }
    }
    false
}

fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn ascii_truncate(bytes: &[u8], max: usize) -> Vec<u8> {
    bytes
        .iter()
        .map(|b| if b.is_ascii() && *b != 0 { *b } else { b'_' })
        .take(max)
        .collect()
}

fn dev_numbers(rdev: u64) -> (u32, u32) {
    // glibc's gnu_dev_major / gnu_dev_minor encoding.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Extended attributes of `path` (not following symlinks) for an archive
/// entry: [`xattrs`] except `security.selinux`, which labels the build
/// host rather than the image.
fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    Ok(xattrs(path)
        .map_err(io_err("read the extended attributes of", path))?
        .into_iter()
        .filter(|(name, _)| name != "security.selinux")
        .collect())
}

/// One PAX extended-header record, `"<len> <key>=<value>\n"`, where `len`
/// counts the whole record including its own digits: the one encoder of
/// the workspace's tar writers.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Every extended attribute of `path`, not following a final symlink, in
/// the order the kernel lists them: the workspace's one xattr reader (the
/// worker's snapshot diff reads through it too). A filesystem without
/// xattrs gives none; a name that is not UTF-8, or an attribute removed
/// between listing and reading, is left out.
pub fn xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if xattrs_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(text) = name.to_str() else {
            continue;
        };
        if let Some(value) = xattr_value(path, text)? {
            out.push((text.to_string(), value));
        }
    }
    Ok(out)
}

/// One extended attribute of `path` (not following a final symlink),
/// `None` when it is not set or the filesystem has no xattrs.
pub fn xattr_value(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match xattr::get(path, name) {
        Ok(value) => Ok(value),
        Err(e) if xattrs_unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn xattrs_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header's field as raw bytes: (offset, length) in the ustar layout.
    fn field(header: &[u8], (at, len): (usize, usize)) -> &[u8] {
        &header[at..at + len]
    }

    const MODE: (usize, usize) = (100, 8);
    const IDS: (usize, usize) = (108, 16);
    const DEVICE: (usize, usize) = (329, 16);

    #[test]
    fn whiteouts_have_no_owner_and_only_devices_have_device_numbers() {
        let mut out = tar::Builder::new(Vec::new());
        let options = TarOptions::default();
        let whiteout = Entry::new("dir/.wh.gone", EntryKind::Whiteout);
        let file = Entry::new("f", EntryKind::File { size: 1 });
        let null = Entry::new("null", EntryKind::CharDevice { major: 1, minor: 3 });
        for (entry, data) in [(&whiteout, &b""[..]), (&file, b"x"), (&null, b"")] {
            assert!(append_entry(&mut out, &options, entry, data).is_ok());
        }
        let tar = out.into_inner().unwrap_or_default();
        let (whiteout, file, null) = (&tar[..512], &tar[512..1024], &tar[1536..2048]);
        assert_eq!(field(whiteout, MODE), b"0000000\0");
        assert_eq!(field(whiteout, IDS), [0; 16]);
        assert_eq!(field(file, IDS), b"0000000\x000000000\x00");
        assert_eq!(field(file, DEVICE), [0; 16]);
        assert_eq!(field(null, DEVICE), b"0000001\x000000003\x00");
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for (k, v) in [
            ("path", "a".repeat(5)),
            ("path", "b".repeat(93)),
            ("x", "c".repeat(994)),
        ] {
            let rec = pax_record(k, v.as_bytes());
            let (len, _) = std::str::from_utf8(&rec)
                .ok()
                .and_then(|s| s.split_once(' '))
                .unwrap_or(("", ""));
            assert_eq!(len.parse::<usize>().ok(), Some(rec.len()), "{k}={v}");
        }
    }
}

//! Overlay upper directory → OCI layer tar entries.
//!
//! Only the upper directory is walked, so the cost follows the size of the
//! change, not of the image. Entries come depth-first with the names of
//! each directory sorted bytewise, a directory before its children, and the
//! opaque marker of a directory right after it. Headers are ustar with PAX
//! records for long names, long link targets, large ids and xattrs; user and
//! group names are left empty so the output depends only on the tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tar::{EntryType, Header};

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
        options,
        lowers: lower_fds,
        links: HashMap::new(),
        stats: DiffStats::default(),
        pending: Vec::new(),
    };
    w.walk(upper, &[])?;
    Ok(w.stats)
}

/// A directory entry held back: its header, path and xattrs.
type PendingDir = (Header, Vec<u8>, Vec<(String, Vec<u8>)>);

struct DiffWriter<'a, W: Write> {
    out: &'a mut tar::Builder<W>,
    options: &'a DiffOptions,
    lowers: Vec<std::os::fd::OwnedFd>,
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: DiffStats,
    /// Directories copied up unchanged (overlay copies a directory up when
    /// something below it is touched, even if that is undone again, e.g. a
    /// mount point created and removed): written only once an entry below
    /// them is, so a step that changed nothing there adds nothing.
    pending: Vec<PendingDir>,
}

fn display(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n", where <len> counts itself.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// A reader that fails unless it yields exactly `left` bytes, so a file
/// that changes size while being read cannot corrupt the archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being archived",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> DiffWriter<'_, W> {
    fn mtime(&self, md: &Metadata) -> u64 {
        let t = md.mtime().max(0);
        let t = match self.options.source_date_epoch {
            Some(epoch) if t > epoch => epoch.max(0),
            _ => t,
        };
        t as u64
    }

    fn header(&self, kind: EntryType, md: &Metadata) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(self.mtime(md));
        h.set_size(0);
        h
    }

    /// Appends one entry, preceded by a PAX header when ustar cannot hold it.
    fn append(
        &mut self,
        mut h: Header,
        path: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(String, Vec<u8>)],
        data: impl Read,
    ) -> Result<()> {
        if !self.pending.is_empty() {
            for (ph, ppath, pxattrs) in std::mem::take(&mut self.pending) {
                self.append(ph, &ppath, None, &pxattrs, io::empty())?;
                self.stats.directories += 1;
            }
        }
        let name = display(path);
        let mut pax = Vec::new();
        if h.set_path(OsStr::from_bytes(path)).is_err() {
            pax.extend(pax_record("path", path));
            let field = &mut h.as_old_mut().name;
            let n = path.len().min(field.len());
            field.fill(0);
            field[..n].copy_from_slice(&path[..n]);
        }
        if let Some(link) = link {
            if h.set_link_name_literal(link).is_err() {
                pax.extend(pax_record("linkpath", link));
                let field = &mut h.as_old_mut().linkname;
                let n = link.len().min(field.len());
                field.fill(0);
                field[..n].copy_from_slice(&link[..n]);
            }
        }
        for (id, key) in [(h.uid(), "uid"), (h.gid(), "gid")] {
            if id.map(|v| v > 0o7_777_777).unwrap_or(true) {
                let value = if key == "uid" { h.uid() } else { h.gid() };
                pax.extend(pax_record(key, value.unwrap_or(0).to_string().as_bytes()));
            }
        }
        for (k, v) in xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        let fail = |source| Error::WriteTar {
            entry: name.clone(),
            source,
        };
        if !pax.is_empty() {
            let mut xh = Header::new_ustar();
            xh.set_entry_type(EntryType::XHeader);
            xh.set_path("././@PaxHeader").map_err(fail)?;
            xh.set_mode(0o644);
            xh.set_mtime(0);
            xh.set_size(pax.len() as u64);
            xh.set_cksum();
            self.out.append(&xh, &pax[..]).map_err(fail)?;
        }
        h.set_cksum();
        self.out.append(&h, data).map_err(fail)?;
        self.stats.entries += 1;
        Ok(())
    }

    /// Whether the topmost lower that has `rel` has it as a directory with
    /// the same mode, owner, mtime and xattrs as `md`.
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

    fn one(&mut self, abs: &Path, rel: &[u8], leaf: &[u8], parent: &[u8]) -> Result<()> {
        let md = abs.symlink_metadata().at("inspect", abs)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            if self.in_lowers(rel) {
                let mut path = parent.to_vec();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                path.extend_from_slice(leaf);
                let mut h = Header::new_ustar();
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0);
                h.set_mtime(self.mtime(&md));
                h.set_size(0);
                self.append(h, &path, None, &[], io::empty())?;
                self.stats.whiteouts += 1;
            }
            return Ok(());
        }
        if ft.is_socket() {
            tracing::debug!(path = %abs.display(), "sockets cannot be archived; skipped");
            return Ok(());
        }
        let xattrs: Vec<(String, Vec<u8>)> = fsutil::list_xattrs(abs)
            .at("read the xattrs of", abs)?
            .into_iter()
            .filter(|(k, _)| keep_xattr(k))
            .collect();
        if ft.is_dir() {
            let mut path = rel.to_vec();
            path.push(b'/');
            let h = self.header(EntryType::Directory, &md);
            let opaque = fsutil::get_xattr(abs, OPAQUE_XATTR).at("read the xattrs of", abs)?;
            let is_opaque = opaque.as_deref() == Some(b"y");
            if !is_opaque && self.same_in_lowers(rel, &md, &xattrs) {
                let depth = self.pending.len();
                self.pending.push((h, path, xattrs));
                self.walk(abs, rel)?;
                // Nothing below was written: the directory is not a change.
                self.pending.truncate(depth);
                return Ok(());
            }
            self.append(h, &path, None, &xattrs, io::empty())?;
            self.stats.directories += 1;
            if is_opaque {
                let mut marker = rel.to_vec();
                marker.push(b'/');
                marker.extend_from_slice(OPAQUE_MARKER.as_bytes());
                let mut h = Header::new_ustar();
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0);
                h.set_mtime(self.mtime(&md));
                h.set_size(0);
                self.append(h, &marker, None, &[], io::empty())?;
                self.stats.opaque_dirs += 1;
            }
            return self.walk(abs, rel);
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
                let mut h = self.header(EntryType::Link, &md);
                h.set_size(0);
                self.append(h, rel, Some(&first), &[], io::empty())?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), rel.to_vec());
        }
        if ft.is_file() {
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(abs)
                .at("open", abs)?;
            let mut h = self.header(EntryType::Regular, &md);
            h.set_size(md.len());
            let data = Exact {
                inner: io::BufReader::with_capacity(128 * 1024, file),
                left: md.len(),
            };
            self.append(h, rel, None, &xattrs, data)?;
            self.stats.regular_files += 1;
            self.stats.content_bytes += md.len();
        } else if ft.is_symlink() {
            let target = fs::read_link(abs).at("read the symlink", abs)?;
            let h = self.header(EntryType::Symlink, &md);
            self.append(
                h,
                rel,
                Some(target.as_os_str().as_bytes()),
                &xattrs,
                io::empty(),
            )?;
            self.stats.symlinks += 1;
        } else {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            let mut h = self.header(kind, &md);
            if kind != EntryType::Fifo {
                let dev = md.rdev();
                let fail = |source| Error::WriteTar {
                    entry: display(rel),
                    source,
                };
                h.set_device_major(rustix::fs::major(dev)).map_err(fail)?;
                h.set_device_minor(rustix::fs::minor(dev)).map_err(fail)?;
            }
            self.append(h, rel, None, &xattrs, io::empty())?;
            self.stats.devices += 1;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

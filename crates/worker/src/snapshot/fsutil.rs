//! Small descriptor-relative filesystem helpers that never follow symlinks.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// The overlayfs xattr that marks a directory opaque.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Opens the directory `name` inside `parent`, refusing symlinks.
pub(crate) fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a directory given by an absolute or relative path.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A path naming `name` inside the directory open as `dir`, usable by
/// path-only syscalls (l*xattr) without resolving the directory again.
pub(crate) fn fd_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

/// The file type of `name` in `parent`, without following a symlink.
pub(crate) fn lstat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `parent` whatever it is, recursing into directories
/// through descriptors so a symlink is removed, never followed.
pub(crate) fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            if lstat_at(parent, name)? != Some(FileType::Directory) {
                return Err(Errno::PERM.into());
            }
            let dir = open_dir_at(parent, name)?;
            clear_dir(dir.as_fd(), |_| false)?;
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes every child of `dir` for which `keep` answers false.
pub(crate) fn clear_dir(dir: BorrowedFd<'_>, keep: impl Fn(&OsStr) -> bool) -> io::Result<()> {
    for name in list_dir(dir)? {
        if !keep(&name) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

/// The names in a directory, without `.` and `..`, sorted bytewise.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// All extended attributes of `path` (not following a final symlink),
/// read by the workspace's one xattr reader ([`kbuild_image::tarball::xattrs`]).
pub(crate) fn list_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    kbuild_image::tarball::xattrs(path)
}

/// One extended attribute of `path`, `None` when it is not set.
pub(crate) fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    kbuild_image::tarball::xattr_value(path, name)
}

/// Whether an xattr is overlayfs bookkeeping rather than file content.
pub(crate) fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

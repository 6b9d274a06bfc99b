//! Container paths on the host: the workspace's one resolver of a path
//! inside a root filesystem.
//!
//! [`open_in_root`] opens a path with the kernel's `openat2`
//! `RESOLVE_IN_ROOT` (Linux 5.6 and later): every symlink, `..` and absolute
//! name resolves as if the root directory were `/`, with no window between
//! resolving and opening. Where the kernel lacks `openat2`, it falls back to
//! the userspace walk of [`resolve_in_root`], which gives the same answer
//! but resolves before it opens (a tree changed meanwhile by someone else
//! could redirect it); every caller in this workspace works on trees no
//! container is running in. [`resolve_in_root`] serves callers that need a
//! host path rather than a descriptor.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Maximum symlinks followed while resolving one path (Linux uses 40).
const MAX_SYMLINKS: usize = 40;

/// Set once `openat2` answered ENOSYS: the kernel lacks it.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the container path `path` inside the directory open as `root`,
/// symlinks followed as the container would see them, so what is opened is
/// always inside `root`. `flags` are `open(2)`'s (`O_CLOEXEC` is added);
/// with `O_NOFOLLOW` a final symlink is not followed (and opening it fails
/// with `ELOOP` unless `O_PATH` is set). Magic links (`/proc/self/...`) are
/// refused. See the module docs for the kernels without `openat2`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_in_root(root, path, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            r => return r,
        }
    }
    open_in_root_userspace(root, path, flags)
}

fn openat2_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        root,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// [`open_in_root`] without `openat2`: resolves with the userspace walk,
/// then opens the result relative to `root` without following its last
/// component.
fn open_in_root_userspace(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let follow_last = !flags.contains(OFlags::NOFOLLOW);
    let mut resolved =
        walk(
            path.as_os_str().as_bytes(),
            follow_last,
            |prefix| match rustix::fs::readlinkat(root, OsStr::from_bytes(prefix), Vec::new()) {
                Ok(target) => Ok(Some(target.into_bytes())),
                Err(Errno::INVAL | Errno::NOENT | Errno::NOTDIR) => Ok(None),
                Err(e) => Err(e.into()),
            },
        )?
        .join(&b'/');
    if resolved.is_empty() {
        resolved.push(b'.');
    }
    Ok(rustix::fs::openat(
        root,
        OsStr::from_bytes(&resolved),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Resolve a container path inside `root` following symlinks as the container
/// would see them, so the result is always under `root`. The last component
/// is followed too when `follow_last` is set. Components that do not exist
/// are appended as they are.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let done = walk(path.as_bytes(), follow_last, |prefix| {
        let candidate = root.join(OsStr::from_bytes(prefix));
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => Ok(Some(
                std::fs::read_link(&candidate)?.into_os_string().into_vec(),
            )),
            _ => Ok(None),
        }
    })?;
    let mut out = root.to_path_buf();
    for d in &done {
        out.push(OsStr::from_bytes(d));
    }
    Ok(out)
}

/// The userspace resolution: the components of `path` below the root once
/// every symlink is replaced by its target (absolute targets restart at the
/// root, `..` never climbs above it). `readlink` answers the target of the
/// relative path it is given, or `None` when that is not a symlink.
fn walk(
    path: &[u8],
    follow_last: bool,
    mut readlink: impl FnMut(&[u8]) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Vec<Vec<u8>>> {
    let mut todo: Vec<Vec<u8>> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .rev()
        .collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut followed = 0usize;
    while let Some(comp) = todo.pop() {
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        if todo.is_empty() && !follow_last {
            done.push(comp);
            continue;
        }
        let mut candidate = done.join(&b'/');
        if !candidate.is_empty() {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(&comp);
        match readlink(&candidate)? {
            Some(target) => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                if target.starts_with(b"/") {
                    done.clear();
                }
                for c in target.split(|b| *b == b'/').filter(|c| !c.is_empty()).rev() {
                    todo.push(c.to_vec());
                }
            }
            None => done.push(comp),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    /// Opens `path` in `root` both ways (openat2 and the forced userspace
    /// fallback) and answers the host path both opened, which must agree.
    fn opened(root: &Path, path: &str, flags: OFlags) -> io::Result<PathBuf> {
        let dir = std::fs::File::open(root)?;
        let real = |fd: OwnedFd| {
            std::fs::read_link(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                fd.as_raw_fd()
            }))
        };
        let kernel = openat2_in_root(dir.as_fd(), Path::new(path), flags).and_then(real);
        let user = open_in_root_userspace(dir.as_fd(), Path::new(path), flags).and_then(real);
        match (kernel, user) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{path}");
                Ok(a)
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.raw_os_error(), b.raw_os_error(), "{path}: {a} vs {b}");
                Err(a)
            }
            (a, b) => panic!("{path}: openat2 gave {a:?}, the userspace walk {b:?}"),
        }
    }

    #[test]
    fn open_in_root_agrees_with_its_fallback_and_stays_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = &std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/x"), "x").unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../usr", root.join("usr/lib/up")).unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let read = OFlags::RDONLY;
        assert_eq!(
            opened(root, "/lib/x", read).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            opened(root, "lib/up/lib/x", read).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            opened(root, "../../lib", read).unwrap(),
            root.join("usr/lib")
        );
        assert_eq!(opened(root, "/", read).unwrap(), root.clone());
        // The host's /etc/passwd is never reached.
        let passwd = opened(root, "/passwd", read).unwrap_err();
        assert_eq!(passwd.raw_os_error(), Some(libc::ENOENT));
        let nofollow = opened(root, "/lib", OFlags::RDONLY | OFlags::NOFOLLOW).unwrap_err();
        assert_eq!(nofollow.raw_os_error(), Some(libc::ELOOP));
        let path = opened(root, "/lib", OFlags::PATH | OFlags::NOFOLLOW).unwrap();
        assert_eq!(path, root.join("lib"));
        let looped = opened(root, "/loop1/x", read).unwrap_err();
        assert_eq!(looped.raw_os_error(), Some(libc::ELOOP));
        let dir = opened(root, "/lib/x", read | OFlags::DIRECTORY).unwrap_err();
        assert_eq!(dir.raw_os_error(), Some(libc::ENOTDIR));
    }

    #[test]
    fn resolve_never_leaves_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/lib/x", true).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/escape/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, "/lib", false).unwrap(),
            root.join("lib")
        );
        assert!(resolve_in_root(root, "/loop1/x", true).is_err());
        assert_eq!(
            resolve_in_root(root, "/../../a", true).unwrap(),
            root.join("a")
        );
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../outside", root.join("real/etc/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/etc/hosts", true).unwrap(),
            root.join("real/etc/hosts")
        );
        assert_eq!(
            resolve_in_root(root, "/etc/up/x", true).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(
            resolve_in_root(root, "/../../proc", true).unwrap(),
            root.join("proc")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "/loop/x", true).is_err());
    }
}

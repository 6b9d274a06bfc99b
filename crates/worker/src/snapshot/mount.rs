//! Overlay mounts.
//!
//! Mounts are made in the calling process's mount namespace: the solver
//! runs as root on the host and the executor enters the merged directory
//! from there. On kernels with the new mount API and `lowerdir+` (Linux
//! 6.8 and later) each lower directory is passed separately, so there is no
//! limit on the length of the lower paths; older kernels get one
//! `mount(2)` option string, with `/proc/self/fd/N` names for the lowers
//! when the full paths would not fit in a page.
//!
//! Mounts are `volatile` (Linux 5.10+): overlayfs then skips the
//! `sync_filesystem()` of the upper filesystem (the whole store's) at
//! unmount and on `syncfs`/`fsync` inside a step, which would otherwise
//! write back every dirty page of the store. A layer made from such an
//! upper is published unsynced and marked with the boot id (see
//! [`super::Snapshotter::adopt_layer`]). Kernels that refuse the option get
//! plain mounts, decided once per process.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use kbuild_image::lock::FileLock;

use super::error::{Error, IoContext, Result};
use super::fsutil;

/// The name of a mount's lock file is its id followed by this.
pub(crate) const LOCK_SUFFIX: &str = ".lock";

/// The most lower layers overlayfs stacks (`OVL_MAX_STACK`).
const MAX_LOWERS: usize = 500;

/// Options that keep the upper directory a plain diff: no redirects, no
/// metadata-only copy-up, no index, no xino bits in inode numbers.
const PLAIN_UPPER_OPTIONS: [(&str, &str); 4] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
    ("xino", "off"),
];

/// Set once the kernel has refused `volatile` (before Linux 5.10), so later
/// mounts of this process do not try it again.
static VOLATILE_REFUSED: AtomicBool = AtomicBool::new(false);

/// A live overlay mount: `merged` shows the stacked layers, writes land in
/// `upper` (overlay diff format: whiteouts are 0/0 character devices,
/// replaced directories carry `trusted.overlay.opaque=y`).
///
/// Dropping a `Mount` unmounts it (lazily if it is busy) and removes its
/// directories; [`Mount::unmount`] does the same and reports errors, and
/// [`Mount::commit`] keeps the upper directory as a new lower.
///
/// The mount is made in the caller's mount namespace (the solver runs as
/// root on the host; the executor enters `merged` from there), with
/// `redirect_dir=off,metacopy=off,index=off,xino=off` so the upper stays a
/// plain diff, and `volatile` where the kernel has it (no sync of the
/// store's filesystem at unmount). Linux 6.8+ takes any number of lowers (up to overlayfs's
/// 500) through `fsconfig(lowerdir+)`; older kernels fall back to
/// `mount(2)`, whose one-page option string holds about 200 lowers.
///
/// The mount's directory `<root>/mounts/<id>/` belongs to the lock file
/// `<root>/mounts/<id>.lock`, which the process holds (`flock`) for the
/// mount's life and removes last. A process that dies while holding a
/// `Mount` (SIGKILL) leaves it mounted; [`super::Snapshotter::recover`]
/// finds it by its free lock and reclaims it, and never touches the mount
/// of a live process.
#[derive(Debug)]
pub struct Mount {
    dir: PathBuf,
    merged: PathBuf,
    upper: PathBuf,
    snapshots: PathBuf,
    mounted: bool,
    lock: Option<FileLock>,
}

/// An upper directory kept by [`Mount::commit`] (`<root>/snapshots/<id>`).
/// It stays locked by this process (the mount's lock) until it is dropped,
/// so [`super::Snapshotter::recover`] leaves it alone while it waits to be
/// adopted ([`super::Snapshotter::adopt_layer`]) or diffed. Dropping it
/// removes the directory if it is still there, then the lock.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    lock: Option<FileLock>,
}

impl Snapshot {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for Snapshot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Snapshot {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a committed snapshot");
                return; // keep the lock file: recovery reclaims the entry
            }
        }
        if let Some(lock) = self.lock.take() {
            if let Err(e) = lock.remove() {
                tracing::warn!(error = %e, "cannot remove a snapshot lock");
            }
        }
    }
}

/// Unmounts `path`, lazily (`MNT_DETACH`) when it is busy. Returns whether
/// something was mounted there.
pub(crate) fn unmount_path(path: &Path) -> Result<bool> {
    match rustix::mount::unmount(path, UnmountFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::BUSY) => {
            rustix::mount::unmount(path, UnmountFlags::DETACH).at("lazily unmount", path)?;
            Ok(true)
        }
        Err(Errno::INVAL) | Err(Errno::NOENT) => Ok(false), // not mounted
        Err(e) => Err(e).at("unmount", path),
    }
}

fn escape_option(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Mounts with the new mount API, one `lowerdir+` per layer (top first).
fn mount_lowerdir_plus(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    merged: &Path,
    volatile: bool,
) -> io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(fs.as_fd(), "source", "kbuild")?;
    for lower in lowers {
        fsconfig_set_string(fs.as_fd(), "lowerdir+", *lower)?;
    }
    fsconfig_set_string(fs.as_fd(), "upperdir", upper)?;
    fsconfig_set_string(fs.as_fd(), "workdir", work)?;
    for (k, v) in PLAIN_UPPER_OPTIONS {
        fsconfig_set_string(fs.as_fd(), k, v)?;
    }
    if volatile {
        fsconfig_set_flag(fs.as_fd(), "volatile")?;
    }
    fsconfig_create(fs.as_fd())?;
    let mnt = fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        merged,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Mounts with one `mount(2)` option string (lowers top first); when the
/// string would exceed a page, the lowers are named `/proc/self/fd/N`.
pub(crate) fn mount_legacy(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    merged: &Path,
    volatile: bool,
) -> io::Result<()> {
    let build = |names: &[PathBuf]| {
        let mut data = b"lowerdir=".to_vec();
        for (i, l) in names.iter().enumerate() {
            if i > 0 {
                data.push(b':');
            }
            data.extend(escape_option(l));
        }
        data.extend(b",upperdir=");
        data.extend(escape_option(upper));
        data.extend(b",workdir=");
        data.extend(escape_option(work));
        for (k, v) in PLAIN_UPPER_OPTIONS {
            data.extend(format!(",{k}={v}").bytes());
        }
        if volatile {
            data.extend(b",volatile");
        }
        data
    };
    let full: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
    let mut data = build(&full);
    // Keep the descriptors open until mount(2) has resolved the names.
    let mut fds: Vec<OwnedFd> = Vec::new();
    if data.len() >= 4095 {
        for l in lowers {
            fds.push(rustix::fs::open(
                *l,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        let short: Vec<PathBuf> = fds
            .iter()
            .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
            .collect();
        data = build(&short);
    }
    let data = std::ffi::CString::new(data).map_err(|_| Errno::INVAL)?;
    rustix::mount::mount(
        "kbuild",
        merged,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )?;
    drop(fds);
    Ok(())
}

/// Whether the kernel rejected `lowerdir+` (before Linux 6.8).
fn lowerdir_plus_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS))
}

/// One overlay mount: `lowerdir+` where the kernel has it, else `mount(2)`.
fn mount_overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    merged: &Path,
    volatile: bool,
) -> io::Result<()> {
    match mount_lowerdir_plus(lowers, upper, work, merged, volatile) {
        Err(e) if lowerdir_plus_unsupported(&e) => {
            tracing::debug!(error = %e, "lowerdir+ unsupported, using mount(2)");
            mount_legacy(lowers, upper, work, merged, volatile)
        }
        other => other,
    }
}

/// Runs `mount` with `volatile` unless `refused` says the kernel does not
/// have it; when a volatile mount fails with EINVAL (the kernel's answer to
/// an unknown option) and the same mount without it succeeds, `refused` is
/// set so later mounts go without at once. `reset` runs before the retry
/// (a fresh work directory).
fn mount_maybe_volatile(
    refused: &AtomicBool,
    mut mount: impl FnMut(bool) -> io::Result<()>,
    reset: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    if refused.load(Ordering::Relaxed) {
        return mount(false);
    }
    match mount(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            reset()?;
            mount(false)?;
            tracing::debug!(error = %e, "overlayfs refuses `volatile`; mounting without it");
            refused.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

impl Mount {
    pub(crate) fn new(root: &Path, lowers: &[PathBuf]) -> Result<Mount> {
        if lowers.len() > MAX_LOWERS {
            return Err(Error::TooManyLowers(lowers.len()));
        }
        let mounts = root.join("mounts");
        // The lock first, then the directory: a directory without a lock
        // file (or with a free one) never belongs to a live process.
        let (lock, dir) = loop {
            let lock = FileLock::create_unique(&mounts, "m", LOCK_SUFFIX)
                .at("create a mount lock in", &mounts)?;
            let id = lock
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
                .unwrap_or_default();
            let dir = mounts.join(id);
            match fs::create_dir(&dir) {
                Ok(()) => break (lock, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !id.is_empty() => {
                    // A dead process's leftover under this name; recovery
                    // removes it. Take another name.
                    let _ = lock.remove();
                }
                Err(e) => {
                    let _ = lock.remove();
                    return Err(e).at("create a mount directory in", &mounts);
                }
            }
        };
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .at("set the mode of", &dir)?;
        let mut mount = Mount {
            merged: dir.join("merged"),
            upper: dir.join("upper"),
            snapshots: root.join("snapshots"),
            dir,
            mounted: false,
            lock: Some(lock),
        };
        let work = mount.dir.join("work");
        for d in [&mount.merged, &mount.upper, &work] {
            fs::create_dir(d).at("create the mount directory", d)?;
        }
        fs::set_permissions(
            &mount.upper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .at("set the mode of", &mount.upper)?;
        let empty = root.join("empty");
        let mut top_first: Vec<&Path> = lowers.iter().rev().map(|p| p.as_path()).collect();
        if top_first.is_empty() {
            top_first.push(&empty);
        }
        // A volatile mount leaves `work/work/incompat/volatile`, and
        // overlayfs refuses to mount that upper/work pair again. None is
        // ever reused: unmount, commit, Drop and recovery remove the whole
        // mount directory (work/ included), and a commit's upper becomes a
        // lower only.
        let result = mount_maybe_volatile(
            &VOLATILE_REFUSED,
            |volatile| mount_overlay(&top_first, &mount.upper, &work, &mount.merged, volatile),
            || {
                fs::remove_dir_all(&work)?;
                fs::create_dir(&work)
            },
        );
        result.map_err(|source| Error::Mount {
            merged: mount.merged.clone(),
            lowers: lowers.len(),
            source,
        })?;
        mount.mounted = true;
        Ok(mount)
    }

    /// The merged view: the directory a container uses as its root.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// The upper directory that collects the changes.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    fn detach(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        unmount_path(&self.merged)?;
        self.mounted = false;
        Ok(())
    }

    /// Removes the lock file; the last step of tearing a mount down.
    fn release(&mut self) -> Result<()> {
        match self.lock.take() {
            Some(lock) => {
                let path = lock.path().to_path_buf();
                lock.remove().at("remove the mount lock", path)
            }
            None => Ok(()),
        }
    }

    /// Unmounts and removes the mount's directories (upper included).
    pub fn unmount(mut self) -> Result<()> {
        self.detach()?;
        let dir = std::mem::take(&mut self.dir);
        fs::remove_dir_all(&dir).at("remove the mount directory", &dir)?;
        self.release()
    }

    /// Unmounts and keeps the upper directory as a layer-like diff directory
    /// (`<root>/snapshots/<id>`) that can be stacked as a lower of a later
    /// mount without re-extracting, and diffed with [`super::write_diff`].
    /// Overlay bookkeeping xattrs other than the opaque mark are removed.
    /// Name it by diff_id with [`super::Snapshotter::adopt_layer`]; the
    /// returned [`Snapshot`] keeps it safe from recovery until dropped.
    pub fn commit(mut self) -> Result<Snapshot> {
        self.detach()?;
        strip_overlay_xattrs(&self.upper)?;
        let id = self
            .dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let target = self.snapshots.join(id);
        fs::rename(&self.upper, &target).at("move the upper directory to", &target)?;
        let dir = std::mem::take(&mut self.dir);
        fs::remove_dir_all(&dir).at("remove the mount directory", &dir)?;
        Ok(Snapshot {
            path: target,
            lock: self.lock.take(),
        })
    }
}

/// Removes `trusted.overlay.*` xattrs (origin, impure, ...) except the
/// opaque mark, walking the upper directory only. Entry types come from
/// the directory listing: one `llistxattr` per entry and no `lstat`. The
/// walk goes breadth first until there are a few subtrees per core, then
/// walks those on one thread per core (a commit waits for this walk with
/// the other cores idle: 20k files took 60 ms on one).
fn strip_overlay_xattrs(upper: &Path) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let mut frontier = vec![upper.to_path_buf()];
    while !frontier.is_empty() && (threads == 1 || frontier.len() < 4 * threads) {
        let mut next = Vec::new();
        for dir in frontier {
            strip_entry(&dir)?;
            for_children(&dir, |child, is_dir| {
                if is_dir {
                    next.push(child);
                    Ok(())
                } else {
                    strip_entry(&child)
                }
            })?;
        }
        frontier = next;
    }
    if frontier.is_empty() {
        return Ok(());
    }
    std::thread::scope(|scope| {
        let walks: Vec<_> = (0..threads)
            .map(|i| {
                let mine: Vec<&PathBuf> = frontier.iter().skip(i).step_by(threads).collect();
                scope.spawn(move || mine.into_iter().try_for_each(|dir| strip_tree(dir)))
            })
            .collect();
        walks.into_iter().try_for_each(|walk| {
            walk.join().unwrap_or_else(|_| {
                Err(io::Error::other("the walk's thread panicked"))
                    .at("strip overlay xattrs in", upper)
            })
        })
    })
}

/// [`strip_overlay_xattrs`] on one directory and everything under it.
fn strip_tree(dir: &Path) -> Result<()> {
    let mut stack = vec![(dir.to_path_buf(), true)];
    while let Some((p, is_dir)) = stack.pop() {
        strip_entry(&p)?;
        if is_dir {
            for_children(&p, |child, is_dir| {
                stack.push((child, is_dir));
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Removes the overlay xattrs but the opaque mark from one entry.
fn strip_entry(p: &Path) -> Result<()> {
    for (name, _) in fsutil::list_xattrs(p).at("read the xattrs of", p)? {
        if fsutil::is_overlay_xattr(&name) && name != fsutil::OPAQUE_XATTR {
            rustix::fs::lremovexattr(p, name.as_str()).at("remove an overlay xattr from", p)?;
        }
    }
    Ok(())
}

/// `f` on each entry of directory `dir`: its path and whether it is a
/// directory (from the listing's type).
fn for_children(dir: &Path, mut f: impl FnMut(PathBuf, bool) -> Result<()>) -> Result<()> {
    for e in fs::read_dir(dir).at("list", dir)? {
        let e = e.at("list", dir)?;
        let path = e.path();
        let is_dir = e.file_type().at("inspect", &path)?.is_dir();
        f(path, is_dir)?;
    }
    Ok(())
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = self.detach() {
            tracing::warn!(error = %e, "leaving overlay mount in place");
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove mount directory");
            return; // keep the lock file: recovery reclaims the entry
        }
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "cannot remove the mount lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_escaping() {
        assert_eq!(
            escape_option(Path::new("/a:b,c\\d")),
            b"/a\\:b\\,c\\\\d".to_vec()
        );
    }

    /// The walk of a commit, with subtrees enough to go parallel: the
    /// bookkeeping xattrs go everywhere, the opaque marks and other
    /// xattrs stay.
    #[test]
    fn strips_overlay_xattrs_in_every_subtree(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        if !kbuild_testkit::fixtures::require_root("trusted.* xattrs need root") {
            return Ok(());
        }
        let t = tempfile::tempdir()?;
        let upper = t.path().join("upper");
        let mut all = vec![upper.clone()];
        for i in 0..40 {
            let d = upper.join(format!("d{i}")).join("sub");
            fs::create_dir_all(&d)?;
            fs::write(d.join("f"), b"x")?;
            fs::write(upper.join(format!("d{i}/g")), b"y")?;
            all.extend([
                d.parent().unwrap_or(&d).to_path_buf(),
                d.clone(),
                d.join("f"),
            ]);
            all.push(upper.join(format!("d{i}/g")));
        }
        for p in &all {
            rustix::fs::lsetxattr(
                p,
                "trusted.overlay.origin",
                b"o",
                rustix::fs::XattrFlags::empty(),
            )?;
            rustix::fs::lsetxattr(p, "user.keep", b"k", rustix::fs::XattrFlags::empty())?;
        }
        let opaque = upper.join("d7/sub");
        rustix::fs::lsetxattr(
            &opaque,
            fsutil::OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )?;

        strip_overlay_xattrs(&upper)?;
        for p in &all {
            let mut names: Vec<String> = fsutil::list_xattrs(p)?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let mut want = vec!["user.keep".to_string()];
            if *p == opaque {
                want.push(fsutil::OPAQUE_XATTR.to_string());
            }
            names.sort();
            want.sort();
            assert_eq!(names, want, "{}", p.display());
        }
        Ok(())
    }

    /// The `mount(2)` path (kernels before 6.8) with lower paths too long
    /// for one page: they are passed as `/proc/self/fd/N`.
    #[test]
    fn legacy_mount_with_long_lower_paths() -> std::result::Result<(), Box<dyn std::error::Error>> {
        if !rustix::process::geteuid().is_root() {
            kbuild_testkit::fixtures::skip_or_fail("overlay mounts need root");
            return Ok(());
        }
        let t = tempfile::tempdir()?;
        let mut lowers = Vec::new();
        for i in 0..40 {
            let l = t.path().join(format!("{i:03}-{}", "l".repeat(150)));
            fs::create_dir(&l)?;
            fs::write(l.join(format!("f{i}")), format!("{i}"))?;
            fs::write(l.join("shadowed"), format!("{i}"))?;
            lowers.push(l);
        }
        let (upper, work, merged) = (t.path().join("u"), t.path().join("w"), t.path().join("m"));
        for d in [&upper, &work, &merged] {
            fs::create_dir(d)?;
        }
        let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(total > 4096, "the option string must overflow a page");
        let top_first: Vec<&Path> = lowers.iter().rev().map(|p| p.as_path()).collect();
        mount_legacy(&top_first, &upper, &work, &merged, true)?;
        let seen = fs::read_dir(&merged)?.count();
        let top = fs::read_to_string(merged.join("shadowed"))?;
        let volatile_marker = work.join("work/incompat/volatile").is_dir();
        rustix::mount::unmount(&merged, UnmountFlags::empty())?;
        assert_eq!(seen, 41);
        assert_eq!(top, "39", "the last lower is the top one");
        assert!(volatile_marker, "mount(2) passes `volatile`");
        Ok(())
    }

    /// The fallback for kernels without `volatile`, with a stand-in for
    /// the kernel that answers EINVAL to the option.
    #[test]
    fn volatile_refused_once() {
        let refused = AtomicBool::new(false);
        let mut calls = Vec::new();
        let mut resets = 0;
        let old_kernel = |volatile: bool, calls: &mut Vec<bool>| {
            calls.push(volatile);
            if volatile {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                Ok(())
            }
        };
        mount_maybe_volatile(
            &refused,
            |v| old_kernel(v, &mut calls),
            || {
                resets += 1;
                Ok(())
            },
        )
        .expect("the plain mount succeeds");
        assert_eq!(calls, [true, false]);
        assert_eq!(resets, 1);
        assert!(refused.load(Ordering::Relaxed));
        // Remembered: the next mount does not try again.
        mount_maybe_volatile(
            &refused,
            |v| old_kernel(v, &mut calls),
            || {
                resets += 1;
                Ok(())
            },
        )
        .expect("the plain mount succeeds");
        assert_eq!(calls, [true, false, false]);
        assert_eq!(resets, 1);

        // An EINVAL that is not about `volatile` (the plain mount fails
        // too) is reported and not remembered.
        let refused = AtomicBool::new(false);
        let err = mount_maybe_volatile(
            &refused,
            |_| Err(io::Error::from_raw_os_error(libc::EINVAL)),
            || Ok(()),
        )
        .expect_err("both attempts fail");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(!refused.load(Ordering::Relaxed));

        // Other errors are not retried.
        let mut tries = 0;
        let err = mount_maybe_volatile(
            &refused,
            |_| {
                tries += 1;
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            },
            || Ok(()),
        )
        .expect_err("not retried");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(tries, 1);
        assert!(!refused.load(Ordering::Relaxed));
    }
}

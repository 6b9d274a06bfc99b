//! Advisory file locks (`flock(2)`): the one lock implementation of the
//! workspace. The store lock, the ingest files, the layer unpack locks and
//! the per-mount locks of the worker all go through here.
//!
//! A lock belongs to an open file description, so it is released when the
//! holder closes the file or dies in any way (SIGKILL included): a lock that
//! can be taken belongs to no live process. That is how crash recovery tells
//! a dead process's leftovers from a live build's entries.
//!
//! Entries that are created, locked and later removed by name (a mount's
//! lock file, an ingest temp file) need care: between `open` and `flock`, or
//! after a cleaner unlinked the name, a process could hold a lock on a file
//! that no longer has that name. [`FileLock::create_unique`] and
//! [`FileLock::try_claim`] check after locking that the name still leads to
//! the locked file, and a holder removes the name before it releases the
//! lock ([`FileLock::remove`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once (builds sharing the store).
    Shared,
    /// One holder (prune, an unpack, a mount's owner).
    Exclusive,
}

/// Locks an open file. With `wait`, blocks until the lock is granted and
/// returns `true`; without, returns `false` at once when another open file
/// description holds a conflicting lock.
pub fn flock(file: &File, mode: LockMode, wait: bool) -> io::Result<bool> {
    let op = match (mode, wait) {
        (LockMode::Shared, true) => FlockOperation::LockShared,
        (LockMode::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockMode::Exclusive, true) => FlockOperation::LockExclusive,
        (LockMode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match rustix::fs::flock(file.as_fd(), op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn still_named(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.ino() == ours.ino() && m.dev() == ours.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A held lock on a named file; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens `path` (creating it if missing) and locks it, waiting for
    /// conflicting holders. For lock files that are never removed.
    pub fn acquire(path: impl Into<PathBuf>, mode: LockMode) -> io::Result<FileLock> {
        let path = path.into();
        let file = open_lock_file(&path)?;
        flock(&file, mode, true)?;
        Ok(FileLock { file, path })
    }

    /// Like [`FileLock::acquire`] but returns `None` at once when another
    /// holder has a conflicting lock.
    pub fn try_acquire(path: impl Into<PathBuf>, mode: LockMode) -> io::Result<Option<FileLock>> {
        let path = path.into();
        let file = open_lock_file(&path)?;
        Ok(flock(&file, mode, false)?.then_some(FileLock { file, path }))
    }

    /// Creates a new file with a unique name `<prefix><random><suffix>` in
    /// `dir`, locked exclusively, for an entry whose owner is this process
    /// until it calls [`FileLock::remove`] or dies.
    pub fn create_unique(dir: &Path, prefix: &str, suffix: &str) -> io::Result<FileLock> {
        loop {
            let temp = tempfile::Builder::new()
                .prefix(prefix)
                .suffix(suffix)
                .make_in(dir, |p| {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(p)
                })?;
            // The file must not be removed on drop: forget the temp path.
            let (file, temp_path) = temp.into_parts();
            let path = temp_path.keep().map_err(|e| e.error)?;
            // A cleaner may have locked (then removed) the fresh file before
            // we locked it: take another name.
            if flock(&file, LockMode::Exclusive, false)? && still_named(&file, &path)? {
                return Ok(FileLock { file, path });
            }
        }
    }

    /// Takes over the lock file of an entry to clean it up: `Some` when no
    /// live process holds it (an existing file is locked; a missing one is
    /// created, so no new owner can pick the name meanwhile), `None` when a
    /// live process holds it. Remove the entry, then [`FileLock::remove`].
    pub fn try_claim(path: impl Into<PathBuf>) -> io::Result<Option<FileLock>> {
        let path = path.into();
        loop {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                    {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if !flock(&file, LockMode::Exclusive, false)? {
                return Ok(None);
            }
            if still_named(&file, &path)? {
                return Ok(Some(FileLock { file, path }));
            }
            // Removed or replaced while we locked it: look again.
        }
    }

    /// Locks an already open file that `path` names, without waiting;
    /// `None` when a live process holds it or the name no longer leads to
    /// it. Used on files that are their own lock (ingest temp files).
    pub fn try_from_file(file: File, path: impl Into<PathBuf>) -> io::Result<Option<FileLock>> {
        let path = path.into();
        if !flock(&file, LockMode::Exclusive, false)? || !still_named(&file, &path)? {
            return Ok(None);
        }
        Ok(Some(FileLock { file, path }))
    }

    /// The locked file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Splits into the open file (which keeps holding the lock until it is
    /// closed) and its path.
    pub fn into_parts(self) -> (File, PathBuf) {
        (self.file, self.path)
    }

    /// Removes the file's name while still holding the lock, then releases
    /// it. A missing name is fine.
    pub fn remove(self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let p = t.path().join("lock");
        let a = FileLock::acquire(&p, LockMode::Shared)?;
        let b = FileLock::try_acquire(&p, LockMode::Shared)?;
        assert!(b.is_some(), "two shared holders");
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)?.is_none());
        drop((a, b));
        let x = FileLock::try_acquire(&p, LockMode::Exclusive)?;
        assert!(x.is_some());
        assert!(FileLock::try_acquire(&p, LockMode::Shared)?.is_none());
        Ok(())
    }

    #[test]
    fn claim_skips_held_entries_and_takes_free_ones() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let owner = FileLock::create_unique(t.path(), "m", ".lock")?;
        assert!(
            FileLock::try_claim(owner.path())?.is_none(),
            "held by a live owner"
        );
        let path = owner.path().to_path_buf();
        drop(owner);
        let claimed = FileLock::try_claim(&path)?.expect("free once the owner is gone");
        claimed.remove()?;
        assert!(!path.exists());
        // A missing lock file is created and held, so nobody takes the name meanwhile.
        let missing = t.path().join("gone.lock");
        let c = FileLock::try_claim(&missing)?.expect("claimable");
        assert!(missing.exists());
        assert!(FileLock::try_claim(&missing)?.is_none());
        c.remove()?;
        Ok(())
    }
}

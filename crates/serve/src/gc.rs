//! Bounds the daemon's per-context state: `contexts/<key>/` (a copy of each
//! client context, kept so a rebuild sends only what changed),
//! `context-files/` (the content cache the copies are made from) and
//! `checksums/` (the solver's checksum cache of each copy). After each
//! build, and on `Prune`, the contexts beyond the most recently used `keep`
//! are removed with their checksum caches (never one a build is using: each
//! holds its context's lock), then every cached file and checksum cache no
//! kept context has.
//!
//! Sessions hold `context-files.lock` shared while they sync a context
//! (from asking for files until the copy and its record are written); the
//! collection takes it exclusively and is skipped while any sync runs, so
//! it never removes a file a sync is about to use. Under that lock what
//! goes is only renamed into a trash directory of the same file system
//! (`gc-trash/`); it is deleted after the lock is released, so a sync
//! waits for renames, not for the deletion of large trees. Reading what the kept
//! copies list costs time for large contexts, so the files are swept only
//! when a copy was removed or every [`SWEEP_EVERY`] collections (files an
//! edited context no longer lists go then).

use kbuild_image::lock::{FileLock, LockMode};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Contexts kept by default (`serve --keep-contexts`).
pub const KEEP_CONTEXTS: usize = 16;

/// Collections between two sweeps of the files when no copy was removed.
pub const SWEEP_EVERY: u64 = 16;

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Context copies removed.
    pub contexts: usize,
    /// Cached files removed.
    pub files: usize,
    /// Their bytes, with those of the checksum caches removed.
    pub bytes: u64,
    /// Checksum caches (`checksums/*.json`) removed.
    pub checksum_files: usize,
}

/// The checksum cache file of the context copy in `context` (a directory
/// of `contexts/`): named after the copy's path, as the session loads it.
fn checksum_file(root: &Path, context: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let dir = context.join("dir");
    let key = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    root.join("checksums").join(format!("{key}.json"))
}

/// Moves `file` into `trash` as `name`; its size when it was there.
fn trash_file(file: &Path, trash: &Path, name: &std::ffi::OsStr) -> io::Result<Option<u64>> {
    let size = std::fs::symlink_metadata(file)
        .map(|m| m.len())
        .unwrap_or(0);
    match std::fs::rename(file, trash.join(name)) {
        Ok(()) => Ok(Some(size)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn lock_path(root: &Path) -> PathBuf {
    root.join("context-files.lock")
}

/// Held by a session while it syncs a context.
pub(crate) fn hold_for_sync(root: &Path) -> io::Result<FileLock> {
    std::fs::create_dir_all(root)?;
    FileLock::acquire(lock_path(root), LockMode::Shared)
}

/// Keeps the `keep` most recently used contexts under `root` and, when one
/// was removed or `sweep` is set, only the files the kept ones list;
/// returns what went, or `None` when a sync was running.
pub fn collect(root: &Path, keep: usize, sweep: bool) -> io::Result<Option<Collected>> {
    let contexts = root.join("contexts");
    if !contexts.is_dir() {
        return Ok(Some(Collected::default()));
    }
    let Some(gc) = FileLock::try_acquire(lock_path(root), LockMode::Exclusive)? else {
        return Ok(None);
    };
    let trash_root = root.join("gc-trash");
    // What a collection that did not finish (the daemon stopped) left.
    if let Ok(entries) = std::fs::read_dir(&trash_root) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&trash_root)?;
    let trash = tempfile::Builder::new()
        .prefix("gc-")
        .tempdir_in(&trash_root)?;
    let done = select(root, &contexts, keep, sweep, trash.path());
    drop(gc);
    // The deletion proper, without holding up syncs.
    drop(trash);
    done.map(Some)
}

/// Moves what goes into `trash` (see [`collect`]).
fn select(
    root: &Path,
    contexts: &Path,
    keep: usize,
    sweep: bool,
    trash: &Path,
) -> io::Result<Collected> {
    let mut done = Collected::default();
    let mut kept = Vec::new();
    for (i, dir) in by_last_use(contexts)?.into_iter().enumerate() {
        if i < keep || !trash_context(root, &dir, trash, &mut done)? {
            kept.push(dir);
        }
    }
    if done.contexts == 0 && !sweep {
        return Ok(done);
    }
    trash_checksums(root, &kept, trash, &mut done)?;
    trash_files(root, &kept, trash, &mut done)?;
    Ok(done)
}

/// The context state directories under `contexts`, most recently used
/// first: by the time of the record each sync writes last (a context
/// without one was never completed: oldest).
fn by_last_use(contexts: &Path) -> io::Result<Vec<PathBuf>> {
    let mut all: Vec<(SystemTime, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(contexts)? {
        let dir = e?.path();
        if !dir.is_dir() {
            continue;
        }
        let used = std::fs::metadata(dir.join(crate::context::RECORD))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        all.push((used, dir));
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(all.into_iter().map(|(_, dir)| dir).collect())
}

/// Moves the context `dir` and its checksum cache into `trash`, unless a
/// build using it holds its lock; whether it went.
fn trash_context(root: &Path, dir: &Path, trash: &Path, done: &mut Collected) -> io::Result<bool> {
    let Some(lock) = FileLock::try_acquire(dir.join("lock"), LockMode::Exclusive)? else {
        return Ok(false);
    };
    // Its record first: a copy half gone is never trusted.
    match std::fs::remove_file(dir.join(crate::context::RECORD)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = dir.file_name().unwrap_or_default().to_owned();
    let sums = checksum_file(root, dir);
    std::fs::rename(dir, trash.join(&name))?;
    drop(lock);
    done.contexts += 1;
    let mut sums_name = name;
    sums_name.push(".json");
    if let Some(size) = trash_file(&sums, trash, &sums_name)? {
        done.checksum_files += 1;
        done.bytes += size;
    }
    Ok(true)
}

/// Moves the checksum caches of contexts no longer kept (removed by an
/// earlier collection that stopped half-way, or by hand) into `trash`.
fn trash_checksums(
    root: &Path,
    kept: &[PathBuf],
    trash: &Path,
    done: &mut Collected,
) -> io::Result<()> {
    let kept_sums: HashSet<PathBuf> = kept.iter().map(|dir| checksum_file(root, dir)).collect();
    let Ok(entries) = std::fs::read_dir(root.join("checksums")) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let path = e.path();
        if kept_sums.contains(&path) || !matches!(path.extension(), Some(x) if x == "json") {
            continue;
        }
        let mut name = std::ffi::OsString::from("sums-");
        name.push(e.file_name());
        if let Some(size) = trash_file(&path, trash, &name)? {
            done.checksum_files += 1;
            done.bytes += size;
        }
    }
    Ok(())
}

/// Moves the cached files no kept context lists into `trash`.
fn trash_files(
    root: &Path,
    kept: &[PathBuf],
    trash: &Path,
    done: &mut Collected,
) -> io::Result<()> {
    let mut wanted: HashSet<String> = HashSet::new();
    for dir in kept {
        // A record that cannot be read lists nothing (its copy starts
        // afresh next time).
        let _ = crate::context::listed_digests(dir, |hex| {
            wanted.insert(hex.to_string());
        });
    }
    let files = root.join("context-files");
    let file_trash = trash.join("files");
    std::fs::create_dir_all(&file_trash)?;
    if !files.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(&files)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if wanted.contains(&name) {
            continue;
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::rename(e.path(), file_trash.join(&name)) {
            Ok(()) => {
                done.files += 1;
                done.bytes += size;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

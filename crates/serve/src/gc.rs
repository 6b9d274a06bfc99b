//! Bounds the daemon's per-context state: `contexts/<key>/` (a copy of each
//! client context, kept so a rebuild sends only what changed) and
//! `context-files/` (the content cache the copies are made from). After
//! each build the contexts beyond the most recently used `keep` are
//! removed (never one a build is using: each holds its context's lock),
//! then every cached file no kept context lists.
//!
//! Sessions hold `context-files.lock` shared while they sync a context
//! (from asking for files until the copy and its record are written); the
//! collection takes it exclusively and is skipped while any sync runs, so
//! it never removes a file a sync is about to use. Reading what the kept
//! copies list costs time for large contexts, so the files are swept only
//! when a copy was removed or every [`SWEEP_EVERY`] collections (files an
//! edited context no longer lists go then).

use kbuild_image::lock::{FileLock, LockMode};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
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
    /// Their bytes.
    pub bytes: u64,
}

fn lock_path(root: &Path) -> std::path::PathBuf {
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
    let Some(_gc) = FileLock::try_acquire(lock_path(root), LockMode::Exclusive)? else {
        return Ok(None);
    };
    let mut done = Collected::default();
    // Most recently used first: the time of the record each sync writes
    // last (a context without one was never completed: oldest).
    let mut all: Vec<(SystemTime, std::path::PathBuf)> = Vec::new();
    for e in std::fs::read_dir(&contexts)? {
        let dir = e?.path();
        if !dir.is_dir() {
            continue;
        }
        let used = std::fs::metadata(dir.join("entries.json"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        all.push((used, dir));
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut kept = Vec::new();
    for (i, (_, dir)) in all.into_iter().enumerate() {
        if i < keep {
            kept.push(dir);
            continue;
        }
        // A build using it holds its lock: it stays.
        match FileLock::try_acquire(dir.join("lock"), LockMode::Exclusive)? {
            Some(lock) => {
                remove_context(&dir)?;
                drop(lock);
                done.contexts += 1;
            }
            None => kept.push(dir),
        }
    }
    if done.contexts == 0 && !sweep {
        return Ok(Some(done));
    }
    // The files the kept contexts list.
    let mut wanted: HashSet<String> = HashSet::new();
    for dir in &kept {
        let Ok(bytes) = std::fs::read(dir.join("entries.json")) else {
            continue;
        };
        let record: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(_) => continue,
        };
        for entry in record.values() {
            if let Some(hex) = entry["digest"]
                .as_str()
                .and_then(|d| d.strip_prefix("sha256:"))
            {
                wanted.insert(hex.to_string());
            }
        }
    }
    let files = root.join("context-files");
    if files.is_dir() {
        for e in std::fs::read_dir(&files)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if wanted.contains(&name) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    done.files += 1;
                    done.bytes += size;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(Some(done))
}

/// Removes a context copy: its record first (so a half-removed copy is
/// rebuilt from scratch), then the rest, the lock file last.
fn remove_context(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join("entries.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == "lock" {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::remove_dir_all(dir)
}

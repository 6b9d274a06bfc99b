//! Crash recovery and garbage collection of the snapshot directories.
//!
//! Every entry a process creates and later removes is owned through a lock
//! that process holds with `flock` (see [`kbuild_image::lock`]):
//!
//! - `mounts/<id>/` (a mount), `snapshots/<id>` and `snapshots/<id>.*` (its
//!   committed upper directory and what is made from it before adoption)
//!   belong to `mounts/<id>.lock`;
//! - `tmp/<hex>/` (a layer being unpacked) belongs to `locks/<hex>.lock`;
//! - `tmp/gc-<hex>/` (a layer being deleted by [`Snapshotter::gc`]) belongs
//!   to `locks/gc.lock`.
//!
//! A lock that can be taken belongs to no live process, so its entries are
//! leftovers of a crash (SIGKILL, a power cut): recovery unmounts them
//! (lazily when busy) and removes them. A live build's entries are never
//! touched, so recovery may run while other builds do.
//!
//! Recovery leaves `layers/` alone, boot markers (`layers/<hex>.boot`)
//! included: a layer of an earlier boot is dropped when it is looked up
//! ([`Snapshotter::layer`]). [`Snapshotter::gc`] removes a marker after its
//! layer, and markers (and temp files of the atomic writer) whose layer is
//! gone.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use kbuild_image::lock::{FileLock, LockMode};
use kbuild_image::ExclusiveStoreLock;

use super::error::{IoContext, Result};
use super::mount::{unmount_path, LOCK_SUFFIX};
use super::{parse_diff_id, Snapshotter, BOOT_SUFFIX};

/// Names in `tmp/` of layers a collection is deleting.
const GC_PREFIX: &str = "gc-";

/// The lock a collection holds in `locks/`.
const GC_LOCK: &str = "gc.lock";

/// What [`Snapshotter::recover`] reclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Overlay mount points of dead processes that were unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Directories of dead processes that were removed: mount directories,
    /// committed snapshots never adopted, half-unpacked layers.
    pub removed: Vec<PathBuf>,
}

impl Recovered {
    /// Whether nothing was reclaimed.
    pub fn is_empty(&self) -> bool {
        self.unmounted.is_empty() && self.removed.is_empty()
    }
}

/// What [`Snapshotter::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The leftovers of dead processes ([`Snapshotter::recover`]).
    pub recovered: Recovered,
    /// Unpacked layers no kept diff_id names.
    pub removed_layers: usize,
    /// Bytes of the removed layers (file sizes).
    pub freed_bytes: u64,
}

/// Decodes the octal escapes (`\040` for a space, ...) of a mountinfo field.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Mount points of this process's mount namespace strictly below `dir`.
fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = "/proc/self/mountinfo";
    let text = fs::read_to_string(info).at("read", info)?;
    let mut out = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point ...
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let p = unescape_mountinfo(field);
        if p != dir && p.starts_with(dir) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Removes a directory tree; a missing one is fine. Returns whether it existed.
fn remove_tree(p: &Path) -> Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(p).at("remove", p)?;
            Ok(true)
        }
        Ok(_) => {
            fs::remove_file(p).at("remove", p)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at("inspect", p),
    }
}

fn names(dir: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).at("list", dir)? {
        out.push(e.at("list", dir)?.file_name());
    }
    Ok(out)
}

/// Sum of the file sizes below `p`, not following symlinks.
fn tree_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// Every mount id that has a lock file or a directory under `mounts`, a
/// snapshot under `snapshots` or a mount point, with the mount points below
/// it (as mountinfo names them: resolved paths).
fn entry_ids(mounts: &Path, snapshots: &Path) -> Result<BTreeMap<OsString, Vec<PathBuf>>> {
    let real_mounts = fs::canonicalize(mounts).at("resolve", mounts)?;
    let mut ids: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    for name in names(mounts)? {
        let id = match name.as_bytes().strip_suffix(LOCK_SUFFIX.as_bytes()) {
            Some(id) => OsString::from_vec(id.to_vec()),
            None => name,
        };
        ids.entry(id).or_default();
    }
    for name in names(snapshots)? {
        let id = name
            .as_bytes()
            .split(|b| *b == b'.')
            .next()
            .unwrap_or_default();
        if !id.is_empty() {
            ids.entry(OsString::from_vec(id.to_vec())).or_default();
        }
    }
    for mp in mount_points_under(&real_mounts)? {
        if let Some(first) = mp
            .strip_prefix(&real_mounts)
            .ok()
            .and_then(|rel| rel.components().next())
        {
            ids.entry(first.as_os_str().to_os_string())
                .or_default()
                .push(mp.clone());
        }
    }
    Ok(ids)
}

/// Mount `id`'s leftovers when no live process holds its lock: its mount
/// points unmounted (deepest first), its directory and its snapshots never
/// adopted removed, then the lock file.
fn reclaim_mount(
    mounts: &Path,
    snapshots: &Path,
    id: &OsString,
    mut points: Vec<PathBuf>,
    out: &mut Recovered,
) -> Result<()> {
    let mut lock_name = id.clone();
    lock_name.push(LOCK_SUFFIX);
    let lock_path = mounts.join(&lock_name);
    let Some(claim) = FileLock::try_claim(&lock_path).at("lock", &lock_path)? else {
        return Ok(()); // a live process's
    };
    // Deepest first, and the mount directory's own merged view in any
    // case (mountinfo may name it differently).
    let dir = mounts.join(id);
    points.push(dir.join("merged"));
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for mp in points {
        if unmount_path(&mp)? {
            tracing::debug!(mount = %mp.display(), "unmounted the overlay of a dead process");
            out.unmounted.push(mp);
        }
    }
    if remove_tree(&dir)? {
        tracing::debug!(dir = %dir.display(), "removed the mount directory of a dead process");
        out.removed.push(dir);
    }
    for name in names(snapshots)? {
        let b = name.as_bytes();
        let ours = b
            .strip_prefix(id.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest.first() == Some(&b'.'));
        if ours {
            let p = snapshots.join(&name);
            if remove_tree(&p)? {
                tracing::debug!(dir = %p.display(), "removed a snapshot a dead process never adopted");
                out.removed.push(p);
            }
        }
    }
    claim.remove().at("remove the mount lock", &lock_path)?;
    Ok(())
}

impl Snapshotter {
    /// Reclaims what crashed processes left: overlay mounts under
    /// `mounts/` (unmounted, lazily when busy), their directories, committed
    /// upper directories never adopted, and half-unpacked layers in `tmp/`.
    /// Entries whose lock a live process holds are left alone, so this is
    /// safe to call while other builds run (builds call it when they start,
    /// `prune` through [`Snapshotter::gc`]). Each reclaimed entry is logged
    /// at debug level.
    pub fn recover(&self) -> Result<Recovered> {
        let mut out = Recovered::default();
        let mounts = self.root.join("mounts");
        let snapshots = self.root.join("snapshots");
        for (id, points) in entry_ids(&mounts, &snapshots)? {
            reclaim_mount(&mounts, &snapshots, &id, points, &mut out)?;
        }
        self.reclaim_unpacks(&mut out)?;
        Ok(out)
    }

    /// Half-unpacked layers in `tmp/` (their unpacker holds
    /// `locks/<hex>.lock`) and layers a garbage collection was removing (it
    /// holds `locks/gc.lock`), when no live process holds those locks.
    fn reclaim_unpacks(&self, out: &mut Recovered) -> Result<()> {
        let tmp = self.root.join("tmp");
        let gc_lock = self.root.join("locks").join(GC_LOCK);
        for name in names(&tmp)? {
            let Some(hex) = name.to_str() else { continue };
            if hex.starts_with(GC_PREFIX) {
                let Some(_held) =
                    FileLock::try_acquire(&gc_lock, LockMode::Exclusive).at("lock", &gc_lock)?
                else {
                    continue; // a collection is running
                };
                let p = tmp.join(&name);
                if remove_tree(&p)? {
                    tracing::debug!(dir = %p.display(), "removed a layer a dead collection was deleting");
                    out.removed.push(p);
                }
                continue;
            }
            let (sha256, sha512) = (format!("sha256:{hex}"), format!("sha512:{hex}"));
            if parse_diff_id(&sha256).is_err() && parse_diff_id(&sha512).is_err() {
                continue; // not ours
            }
            let lock_path = self.root.join("locks").join(format!("{hex}.lock"));
            let Some(_held) =
                FileLock::try_acquire(&lock_path, LockMode::Exclusive).at("lock", &lock_path)?
            else {
                continue; // being unpacked
            };
            let p = tmp.join(&name);
            if remove_tree(&p)? {
                tracing::debug!(dir = %p.display(), "removed the half-unpacked layer of a dead process");
                out.removed.push(p);
            }
        }
        Ok(())
    }

    /// Garbage collection: [`Snapshotter::recover`], then removes every
    /// unpacked layer whose diff_id is not in `keep` (the diff_ids the store
    /// still references, see
    /// [`kbuild_image::ContentStore::referenced_diff_ids`]), each with its
    /// boot marker, and markers whose layer is gone. Runs under the
    /// store's exclusive lock, so no build is using a layer meanwhile.
    pub fn gc<I, S>(&self, _held: &ExclusiveStoreLock, keep: I) -> Result<GcReport>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keep: BTreeSet<String> = keep
            .into_iter()
            .filter_map(|d| parse_diff_id(d.as_ref()).ok().map(|id| id.hex.to_string()))
            .collect();
        let mut report = GcReport {
            recovered: self.recover()?,
            ..GcReport::default()
        };
        let gc_lock = self.root.join("locks").join(GC_LOCK);
        let _held = FileLock::acquire(&gc_lock, LockMode::Exclusive).at("lock", &gc_lock)?;
        let layers = self.root.join("layers");
        let mut others = Vec::new();
        for name in names(&layers)? {
            if name.to_str().is_some_and(|n| keep.contains(n)) {
                continue;
            }
            let is_layer = name.to_str().is_some_and(|n| {
                parse_diff_id(&format!("sha256:{n}")).is_ok()
                    || parse_diff_id(&format!("sha512:{n}")).is_ok()
            });
            if !is_layer {
                others.push(name); // markers, after the layers
                continue;
            }
            // Out of `layers/` by one rename first: a collection killed while
            // deleting never leaves a half-deleted layer under its diff_id
            // (recovery finishes the deletion).
            let p = layers.join(&name);
            let mut trash_name = OsString::from(GC_PREFIX);
            trash_name.push(&name);
            let trash = self.root.join("tmp").join(trash_name);
            let size = tree_size(&p);
            match fs::rename(&p, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at("move an unreferenced layer to", &trash),
            }
            // The marker after the layer: a layer is never without its
            // marker while it is still under its diff_id.
            let mut marker = name.clone();
            marker.push(BOOT_SUFFIX);
            remove_tree(&layers.join(marker))?;
            remove_tree(&trash)?;
            tracing::debug!(dir = %p.display(), bytes = size, "removed an unreferenced layer");
            report.removed_layers += 1;
            report.freed_bytes += size;
        }
        // What is left besides layers: a marker whose layer is gone (a
        // collection or a discard that died between the two removals), a
        // dead atomic writer's temp file. A live layer's marker stays.
        for name in others {
            let live = name
                .to_str()
                .and_then(|n| n.strip_suffix(BOOT_SUFFIX))
                .is_some_and(|hex| layers.join(hex).is_dir());
            if live {
                continue;
            }
            let p = layers.join(&name);
            if remove_tree(&p)? {
                tracing::debug!(path = %p.display(), "removed a boot marker without its layer");
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\011c\012d\134e"),
            PathBuf::from("/a b\tc\nd\\e")
        );
        assert_eq!(unescape_mountinfo(r"/plain\0"), PathBuf::from(r"/plain\0"));
    }
}

//! Pruning a store (`kubectl build prune`, and a builder daemon's `Prune`):
//! blobs and unpacked layers no image or cache record references (with
//! `all`, the cache records first), and what dead builds left. One
//! implementation for the local store and every daemon's.

use kbuild_image::ContentStore;
use kbuild_worker::snapshot::Snapshotter;
use std::path::{Path, PathBuf};

/// What a prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Unpacked layers (snapshots) removed.
    pub layers_removed: u64,
    /// Their bytes.
    pub layer_bytes: u64,
    /// Build cache records removed (`all`).
    pub cache_records_removed: u64,
    /// Blobs kept.
    pub blobs_kept: u64,
}

/// Why a prune failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The content store (busy while a build runs: [`PruneError::is_busy`]).
    #[error("store {}: {source}", path.display())]
    Store {
        /// The store root.
        path: PathBuf,
        /// What failed.
        #[source]
        source: kbuild_image::Error,
    },
    /// The snapshots.
    #[error("snapshots {}: {source}", path.display())]
    Snapshots {
        /// The snapshots directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: kbuild_worker::snapshot::Error,
    },
}

impl PruneError {
    /// Whether a running build holds the store, so nothing was changed.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            PruneError::Store {
                source: kbuild_image::Error::Busy { .. },
                ..
            }
        )
    }
}

/// Prunes the store `store` opened at `root` (`root/snapshots` holds its
/// unpacked layers) under its exclusive lock: it fails at once, changing
/// nothing, while a build holds the store.
pub fn prune(store: &ContentStore, root: &Path, all: bool) -> Result<PruneReport, PruneError> {
    let serr = |source| PruneError::Store {
        path: root.to_path_buf(),
        source,
    };
    let held = store.try_lock_exclusive().map_err(serr)?;
    let snaps_root = root.join("snapshots");
    let snerr = |source| PruneError::Snapshots {
        path: snaps_root.clone(),
        source,
    };
    let snaps = Snapshotter::new(&snaps_root).map_err(snerr)?;
    let mut cache_records_removed = 0;
    if all {
        for (name, _) in store.list_refs().map_err(serr)? {
            if name.starts_with("cache/") {
                store.remove_ref(&name).map_err(serr)?;
                cache_records_removed += 1;
            }
        }
    }
    let report = store.prune_locked(&held, &[]).map_err(serr)?;
    let keep = store.referenced_diff_ids().map_err(serr)?;
    let gc = snaps
        .gc(&held, keep.iter().map(|d| d.to_string()))
        .map_err(snerr)?;
    drop(held);
    tracing::debug!(
        unmounted = gc.recovered.unmounted.len(),
        removed = gc.recovered.removed.len(),
        ingest_files = report.removed_ingests,
        "reclaimed what dead builds left"
    );
    Ok(PruneReport {
        blobs_removed: report.removed_blobs.len() as u64,
        blob_bytes: report.freed_bytes,
        layers_removed: gc.removed_layers as u64,
        layer_bytes: gc.freed_bytes,
        cache_records_removed,
        blobs_kept: report.kept as u64,
    })
}

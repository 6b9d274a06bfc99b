//! The layer pipeline: unpacking a state's layers into snapshot
//! directories to mount, turning an op's upper directory into a layer
//! (deterministic tar → gzip/zstd on a second thread, then kept as the
//! layer's snapshot), the Windows layer layout, and applying layers to a
//! plain directory for the filesystem outputs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kbuild_image::{BlobWatch, Compression, ContentStore, Descriptor, Digest, LayerWriter};
use kbuild_worker::snapshot::{
    write_diff, ApplyOptions, ApplyReport, DiffOptions, EntryMeta, LayerEntries, Mount, Snapshot,
    Snapshotter,
};
use serde::{Deserialize, Serialize};

use crate::engine::Solver;
use crate::error::{LayerError, SolveError, StepError};

/// One layer of a state: its blob and its diff id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRef {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob in the store.
    pub descriptor: Descriptor,
}

impl Solver {
    /// Make sure every layer is unpacked; returns their directories, base first.
    pub(crate) async fn layer_dirs(&self, layers: &[LayerRef]) -> Result<Vec<PathBuf>, SolveError> {
        let mut out = Vec::new();
        for l in layers {
            let diff_id = l.diff_id.to_string();
            if let Some(p) = self.snaps.layer(&diff_id)? {
                out.push(p);
                continue;
            }
            let store = self.store.clone();
            let snaps = self.snaps.clone();
            let desc = l.descriptor.clone();
            let _permit = self.cpu.acquire().await?;
            let p = tokio::task::spawn_blocking(move || -> Result<PathBuf, SolveError> {
                let blob = store.open_blob(&desc.digest)?;
                let reader = kbuild_image::decompress_reader(
                    &desc.media_type,
                    std::io::BufReader::new(blob),
                )?;
                snaps
                    .unpack_layer(&diff_id, reader)
                    .map_err(|source| SolveError::Layer {
                        digest: desc.digest.to_string(),
                        source,
                    })
            })
            .await??;
            out.push(p);
        }
        Ok(out)
    }
}

/// How an op's changes become a layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: clamps file times.
    pub source_date_epoch: Option<i64>,
    /// Write the Windows layout (`Files/`, `Hives/`).
    pub windows: bool,
}

/// Unmount `mount` and turn its upper directory into a layer kept as a
/// snapshot; `None` when the op changed nothing. `watch` follows the blob
/// while it is written.
pub(crate) fn commit(
    snaps: &Snapshotter,
    store: &ContentStore,
    mount: Mount,
    lowers: &[PathBuf],
    opts: &LayerOptions,
    watch: Option<Box<dyn BlobWatch>>,
) -> Result<Option<LayerRef>, StepError> {
    let snapshot = unmount(mount)?;
    from_snapshot(snaps, store, snapshot, lowers, opts, watch)
}

/// Unmount `mount`, keeping its upper directory as a snapshot.
pub(crate) fn unmount(mount: Mount) -> Result<Snapshot, StepError> {
    mount.commit().map_err(|source| StepError::Snapshot {
        action: "unmount",
        source,
    })
}

/// Diff the upper directory of a committed mount into a layer kept as a
/// snapshot; `None` when the op changed nothing.
pub(crate) fn from_snapshot(
    snaps: &Snapshotter,
    store: &ContentStore,
    snapshot: Snapshot,
    lowers: &[PathBuf],
    opts: &LayerOptions,
    watch: Option<Box<dyn BlobWatch>>,
) -> Result<Option<LayerRef>, StepError> {
    // `snapshot` is held until the layer is adopted: recovery leaves it alone.
    let dir = snapshot.path().to_path_buf();
    let empty = std::fs::read_dir(&dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if empty {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(None);
    }
    let dir = if opts.windows {
        windows_layout(&dir)?
    } else {
        dir
    };
    let layer = match write_layer(
        store,
        opts.compression,
        &dir,
        lowers,
        opts.source_date_epoch,
        watch,
    ) {
        Ok(Some(l)) => l,
        other => {
            let _ = std::fs::remove_dir_all(&dir);
            return other.map(|_| None).map_err(StepError::from);
        }
    };
    keep(snaps, layer, &dir).map(Some)
}

/// Adopts `dir` as the snapshot of `layer`.
fn keep(
    snaps: &Snapshotter,
    layer: kbuild_image::Layer,
    dir: &Path,
) -> Result<LayerRef, StepError> {
    snaps
        .adopt_layer(&layer.diff_id.to_string(), dir)
        .map_err(|source| StepError::Snapshot {
            action: "keep the layer",
            source,
        })?;
    Ok(LayerRef {
        diff_id: layer.diff_id,
        descriptor: layer.descriptor,
    })
}

/// Feeds the tar stream to the compressor thread in chunks.
struct Chan {
    tx: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

/// Chunks of the tar stream waiting for the compressor thread: 4 MiB, so
/// that the copying thread's pauses (opening files, a file read from the
/// disk) and the compressor's do not stall the other (with 8, the cold
/// 1 GiB COPY's CPU/wall on 2 cores was 1.71–1.73; with 16, and 8 gzip
/// blocks per thread, 1.73–1.76).
const CHUNKS_QUEUED: usize = 16;

impl Write for Chan {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 64 * 1024));
            self.tx
                .send(Some(full))
                .map_err(|_| std::io::Error::other("the layer compressor stopped"))?;
        }
        Ok(())
    }
}

/// The thread that hashes and compresses a layer's tar stream into the
/// store (parallel gzip or multi-threaded zstd: see
/// [`kbuild_image::LayerWriter`]), fed in chunks through a bounded channel
/// by the thread that reads files and writes the tar, so the two overlap.
struct Compressor {
    /// Sends `None` to abandon the layer.
    abort: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    thread: std::thread::JoinHandle<Result<kbuild_image::Layer, LayerError>>,
}

impl Compressor {
    /// A compressor writing into `store`, and the tar stream's input.
    fn start(
        store: &ContentStore,
        compression: Compression,
        watch: Option<Box<dyn BlobWatch>>,
    ) -> Result<(Compressor, Chan), LayerError> {
        let lw = LayerWriter::watched(store, compression, kbuild_image::default_threads(), watch)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(CHUNKS_QUEUED);
        let abort = tx.clone();
        // Named for per-thread profiles (zstd's workers take its name too).
        let thread = std::thread::Builder::new().name("layer".into()).spawn(
            move || -> Result<kbuild_image::Layer, LayerError> {
                let mut lw = lw;
                for chunk in rx {
                    match chunk {
                        Some(c) => lw.write_all(&c)?,
                        // The producer failed: drop the ingest instead of committing it.
                        None => return Err(LayerError::Abandoned),
                    }
                }
                Ok(lw.finish()?)
            },
        )?;
        let chan = Chan {
            tx,
            buf: Vec::with_capacity(CHUNK + 64 * 1024),
        };
        Ok((Compressor { abort, thread }, chan))
    }

    /// Drops the layer (its ingest is removed, its upload stopped).
    fn abandon(self) {
        let _ = self.abort.send(None);
        drop(self.abort);
        let _ = self.thread.join();
    }

    /// The committed layer, once every [`Chan`] is dropped.
    fn finish(self) -> Result<kbuild_image::Layer, LayerError> {
        drop(self.abort);
        self.thread
            .join()
            .map_err(|_| LayerError::CompressorPanicked)?
    }
}

/// Diff `dir` into a layer in the store. Reading files and writing the tar
/// stream run on this thread; hashing and compressing on others.
fn write_layer(
    store: &ContentStore,
    compression: Compression,
    dir: &Path,
    lowers: &[PathBuf],
    sde: Option<i64>,
    watch: Option<Box<dyn BlobWatch>>,
) -> Result<Option<kbuild_image::Layer>, LayerError> {
    let (compressor, chan) = Compressor::start(store, compression, watch)?;
    let produced = (|| -> Result<u64, LayerError> {
        let mut tb = tar::Builder::new(chan);
        let stats = write_diff(
            dir,
            lowers,
            &mut tb,
            &DiffOptions {
                source_date_epoch: sde,
            },
        )?;
        let mut chan = tb.into_inner()?;
        chan.flush()?;
        Ok(stats.entries)
    })();
    let entries = match produced {
        Ok(n) => n,
        Err(e) => {
            compressor.abandon();
            return Err(e);
        }
    };
    // Every sender is dropped now: the compressor ends.
    let layer = compressor.finish()?;
    // An upper directory with nothing to report (only directories copied up
    // unchanged) is no layer: the op leaves an empty_layer history entry.
    Ok((entries > 0).then_some(layer))
}

/// The layer of a COPY made while it copies: each file is read once, and
/// that read both writes the snapshot and feeds the layer's tar stream
/// ([`crate::copy::Tee`], [`LayerEntries`]), instead of reading the
/// snapshot back to diff it. Used for a file op that is one copy from a
/// host directory (the build context, a download) into a fresh upper.
///
/// Where the copy cannot say what a diff of the upper would write, the
/// one pass is given up and [`commit`] diffs the upper as for any other
/// step: several sources or `--parents` (entries out of name order), an
/// archive unpacked by ADD, an entry that replaces one of the lower layers
/// (whiteouts, opaque directories), a symlink on the way to the
/// destination, devices and fifos, a file with xattrs, other links or
/// metadata other than announced, and a destination directory of the
/// lowers with nothing copied into it. The layer is byte-for-byte the one
/// the diff would make.
pub(crate) struct OnePass {
    entries: Option<LayerEntries<Chan>>,
    /// The upper directory the entries describe.
    upper: PathBuf,
    compressor: Option<Compressor>,
}

impl OnePass {
    /// Starts the layer of a copy into the upper directory `upper`.
    pub(crate) fn start(
        store: &ContentStore,
        opts: &LayerOptions,
        upper: &Path,
        watch: Option<Box<dyn BlobWatch>>,
    ) -> Result<OnePass, LayerError> {
        let (compressor, chan) = Compressor::start(store, opts.compression, watch)?;
        let options = DiffOptions {
            source_date_epoch: opts.source_date_epoch,
        };
        Ok(OnePass {
            entries: Some(LayerEntries::new(tar::Builder::new(chan), upper, &options)),
            upper: upper.to_path_buf(),
            compressor: Some(compressor),
        })
    }

    /// Ends the layer's tar stream. `None` when the one pass did not hold
    /// (the upper must be diffed instead); else the layer still being
    /// compressed and stored, while the caller unmounts the copy.
    pub(crate) fn close(mut self) -> Option<Closing> {
        let entries = self.entries.take()?;
        let compressor = self.compressor.take()?;
        let closed = (|| -> Result<Option<u64>, LayerError> {
            let Some((tb, stats)) = entries.finish()? else {
                return Ok(None);
            };
            let mut chan = tb.into_inner()?;
            chan.flush()?;
            Ok(Some(stats.entries))
        })();
        match closed {
            Ok(Some(entries)) => Some(Closing {
                entries,
                compressor,
            }),
            Ok(None) => {
                tracing::debug!("the one-pass layer may differ from the diff; diffing the upper");
                compressor.abandon();
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "the one-pass layer failed; diffing the upper");
                compressor.abandon();
                None
            }
        }
    }

    fn fail(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::debug!(%error, "{what}; the layer is made by diffing the upper");
        self.turn_off();
    }

    fn turn_off(&mut self) {
        // Dropping the tar builder writes its end into the channel: the
        // compressor is abandoned right after.
        self.entries = None;
        if let Some(c) = self.compressor.take() {
            c.abandon();
        }
    }
}

/// A one-pass layer whose tar stream is complete, still being compressed
/// and written to the store by its compressor thread.
pub(crate) struct Closing {
    entries: u64,
    compressor: Compressor,
}

impl Closing {
    /// The layer: `Some(None)` when the copy wrote nothing; `None` when it
    /// failed and the upper must be diffed instead.
    pub(crate) fn finish(self) -> Option<Option<kbuild_image::Layer>> {
        match self.compressor.finish() {
            Ok(layer) => {
                tracing::debug!(diff_id = %layer.diff_id, "layer made while copying");
                Some((self.entries > 0).then_some(layer))
            }
            Err(e) => {
                tracing::debug!(error = %e, "the one-pass layer failed; diffing the upper");
                None
            }
        }
    }

    /// Drops the layer (its ingest is removed, its upload stopped).
    pub(crate) fn abandon(self) {
        self.compressor.abandon();
    }
}

impl Drop for OnePass {
    fn drop(&mut self) {
        self.turn_off();
    }
}

impl crate::copy::Tee for OnePass {
    fn on(&self) -> bool {
        self.entries.is_some()
    }

    fn off(&mut self, why: &'static str) {
        if self.on() {
            tracing::debug!(why, "the layer is made by diffing the upper");
        }
        self.turn_off();
    }

    fn dir(&mut self, rel: &[u8], mtime: Option<i64>, in_lowers: bool) {
        if let Some(e) = self.entries.as_mut() {
            e.dir(rel, mtime, in_lowers);
        }
    }

    fn symlink(&mut self, rel: &[u8]) {
        let Some(e) = self.entries.as_mut() else {
            return;
        };
        match e.symlink(rel) {
            Ok(true) => {}
            Ok(false) => self.off("a symlink the diff may write otherwise"),
            Err(error) => self.fail("writing a symlink's entry failed", &error),
        }
    }

    fn file(&mut self, rel: &[u8], meta: &EntryMeta, len: u64, data: &mut dyn Read) {
        let Some(e) = self.entries.as_mut() else {
            return;
        };
        match e.file(rel, meta, len, data) {
            Ok(true) => {}
            Ok(false) => self.off("a directory the diff may write otherwise"),
            Err(error) => self.fail("writing a file's entry failed", &error),
        }
    }

    fn upper(&self) -> Option<PathBuf> {
        self.on().then(|| self.upper.clone())
    }

    fn file_done(&mut self, rel: &[u8], meta: &EntryMeta, len: u64) {
        let Some(e) = self.entries.as_ref() else {
            return;
        };
        match e.file_is(rel, meta, len) {
            Ok(true) => {}
            Ok(false) => self.off("a file whose metadata differs from its entry"),
            Err(error) => self.fail("checking a copied file failed", &error),
        }
    }
}

/// Keep the upper directory of a committed mount as the snapshot of
/// `layer`, made by [`OnePass`] (`None`: the copy wrote nothing).
pub(crate) fn adopt_made(
    snaps: &Snapshotter,
    snapshot: Snapshot,
    layer: Option<kbuild_image::Layer>,
) -> Result<Option<LayerRef>, StepError> {
    let dir = snapshot.path().to_path_buf();
    let Some(layer) = layer else {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(None);
    };
    keep(snaps, layer, &dir).map(Some)
}

/// Move a committed upper directory under `Files/` and add an empty
/// `Hives/`, the layout of Windows image layers. The layer entries carry no
/// Windows security descriptors (PAX `MSWINDOWS.rawsd`): Windows applies its
/// defaults to files without one.
fn windows_layout(dir: &Path) -> Result<PathBuf, StepError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StepError::Io { path, source }
    };
    let parent = dir.parent().unwrap_or(dir);
    let out = parent.join(format!(
        "{}.windows",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&out).map_err(io(&out))?;
    std::fs::rename(dir, out.join("Files")).map_err(io(&out))?;
    std::fs::create_dir(out.join("Hives")).map_err(io(&out))?;
    Ok(out)
}

/// A Windows path as the layer stores it: `C:\\app\\x.exe` → `/app/x.exe`
/// (other paths are returned as they are).
pub(crate) fn windows_path(p: &str) -> String {
    let b = p.as_bytes();
    let rest = if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        &p[2..]
    } else {
        p
    };
    if rest.contains('\\') || rest.len() != p.len() {
        let r = rest.replace('\\', "/");
        if r.starts_with('/') {
            r
        } else {
            format!("/{r}")
        }
    } else {
        p.to_string()
    }
}

/// The root directory a state's files would have: only for tests and the
/// `local`/`tar` outputs, which apply the layers to a plain directory.
pub fn apply_layers(
    store: &ContentStore,
    layers: &[LayerRef],
    dir: &Path,
    options: ApplyOptions,
) -> Result<ApplyReport, SolveError> {
    let mut report = ApplyReport::default();
    for l in layers {
        let blob = store.open_blob(&l.descriptor.digest)?;
        let reader = kbuild_image::decompress_reader(
            &l.descriptor.media_type,
            std::io::BufReader::new(blob),
        )?;
        let r = kbuild_worker::snapshot::apply_layer_to_dir_with(dir, reader, options).map_err(
            |source| SolveError::Layer {
                digest: l.descriptor.digest.to_string(),
                source,
            },
        )?;
        report.devices_skipped += r.devices_skipped;
        report.privileges_dropped += r.privileges_dropped;
    }
    Ok(report)
}

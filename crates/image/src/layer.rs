//! Layer blobs: compress a tar stream into the store while computing both
//! digests in one pass, and decompress pulled layers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::{Digest, Hasher};
use crate::error::{stream_err, Error, Result};
use crate::oci::{
    Descriptor, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
};
use crate::store::{ContentStore, Ingest};

/// The gzip level of a layer when none is asked for. zlib-rs (the deflate
/// of every gzip layer) at level 6 takes a faster, looser match search than
/// zlib's level 6, which `gzip -6` and BuildKit's default stand for: on a
/// 1 GiB / 20k-file context its single-stream output was 2.2% larger than
/// `gzip -6`'s (145.98 MB against 142.85 MB). Level 7 gives 142.05 MB,
/// for 25% more CPU, still less than half of what `gzip -6` takes.
pub const DEFAULT_GZIP_LEVEL: u32 = 7;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip at level 0-9 ([`DEFAULT_GZIP_LEVEL`] unless asked for).
    Gzip(u32),
    /// zstd at level 1-22 (3 is zstd's default).
    Zstd(i32),
    /// No compression.
    None,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression::Gzip(DEFAULT_GZIP_LEVEL)
    }
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip(_) => MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd(_) => MEDIA_TYPE_OCI_LAYER_ZSTD,
            Compression::None => MEDIA_TYPE_OCI_LAYER,
        }
    }
}

/// A layer committed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The compressed blob: media type, digest, size.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

enum Encoder {
    Gzip(crate::pargzip::ParallelGzip<Sink>),
    Zstd(zstd::Encoder<'static, Sink>),
    Plain(Sink),
}

/// Told about a layer blob while [`LayerWriter`] writes it, so that it can
/// be sent on as it grows (a push uploading the layer while it is still
/// being compressed). Dropped without [`BlobWatch::done`]: the layer was
/// abandoned and its ingest removed.
pub trait BlobWatch: Send {
    /// The blob will be written to `file` (the ingest, opened for reading
    /// before anything is written; it stays readable after the commit).
    fn start(&mut self, file: std::fs::File);
    /// The first `len` bytes of the blob are in the file.
    fn grown(&mut self, len: u64);
    /// The blob is complete and committed to the store: `size` bytes, `digest`.
    fn done(&mut self, digest: &Digest, size: u64);
}

/// Uncompressed bytes per job of the multi-threaded zstd encoder. zstd's
/// own choice at level 3 is 8 MiB (4 windows), and it keeps about two jobs
/// per worker in memory, each with its input and its output: some 40 MB
/// on 2 cores. Jobs of 1 MiB keep that near 10 MB, for a blob about 0.5%
/// larger. Fixed, so the bytes do not depend on the number of workers.
const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// How many bytes of the blob are written between two [`BlobWatch::grown`].
const GROWN_EVERY: u64 = 1 << 20;

/// The compressed side: the ingest, and whoever watches it grow.
struct Sink {
    ingest: Ingest,
    watch: Option<Box<dyn BlobWatch>>,
    told: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.ingest.write(buf)?;
        if let Some(w) = self.watch.as_mut() {
            let len = self.ingest.offset();
            if len - self.told >= GROWN_EVERY {
                // Out of the write buffer, so a reader of the file sees it.
                self.ingest.flush()?;
                self.told = len;
                w.grown(len);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ingest.flush()
    }
}

/// Takes the uncompressed tar stream through [`Write`], compresses it into an
/// ingest and hashes both sides on the way; nothing is buffered beyond the
/// compressor's window and nothing is read twice.
pub struct LayerWriter {
    encoder: Encoder,
    diff: Hasher,
    media_type: &'static str,
}

impl std::fmt::Debug for LayerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWriter")
            .field("media_type", &self.media_type)
            .field("uncompressed_written", &self.diff.len())
            .finish()
    }
}

/// The compression threads a layer uses by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl LayerWriter {
    /// Starts a layer in `store`, compressing on every core.
    pub fn new(store: &ContentStore, compression: Compression) -> Result<LayerWriter> {
        LayerWriter::with_threads(store, compression, default_threads())
    }

    /// Starts a layer in `store`, compressing on `threads` threads. The
    /// blob's bytes (and so its digest) are the same for any thread count:
    /// gzip cuts blocks at fixed offsets (see [`crate::pargzip`]), zstd
    /// always runs in its multi-threaded mode, whose output does not depend
    /// on the number of workers.
    pub fn with_threads(
        store: &ContentStore,
        compression: Compression,
        threads: usize,
    ) -> Result<LayerWriter> {
        LayerWriter::watched(store, compression, threads, None)
    }

    /// [`LayerWriter::with_threads`], telling `watch` (if any) how far the
    /// blob is written as it grows, and its digest once it is committed.
    pub fn watched(
        store: &ContentStore,
        compression: Compression,
        threads: usize,
        watch: Option<Box<dyn BlobWatch>>,
    ) -> Result<LayerWriter> {
        let ingest = store.writer()?;
        let watch = match watch {
            Some(mut w) => {
                let file = std::fs::File::open(ingest.path()).map_err(|source| Error::Io {
                    action: "open for reading",
                    path: ingest.path().to_path_buf(),
                    source,
                })?;
                w.start(file);
                Some(w)
            }
            None => None,
        };
        let ingest = Sink {
            ingest,
            watch,
            told: 0,
        };
        let threads = threads.max(1);
        let encoder = match compression {
            Compression::Gzip(level) => {
                Encoder::Gzip(crate::pargzip::ParallelGzip::new(ingest, level, threads))
            }
            Compression::Zstd(level) => {
                let mut e = zstd::Encoder::new(ingest, level)
                    .map_err(stream_err("start the zstd compressor"))?;
                e.multithread(u32::try_from(threads).unwrap_or(u32::MAX))
                    .map_err(stream_err("start the zstd compression threads"))?;
                e.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))
                    .map_err(stream_err("set the zstd job size"))?;
                Encoder::Zstd(e)
            }
            Compression::None => Encoder::Plain(ingest),
        };
        Ok(LayerWriter {
            encoder,
            diff: Hasher::default(),
            media_type: compression.media_type(),
        })
    }

    /// Uncompressed bytes written so far.
    pub fn uncompressed_size(&self) -> u64 {
        self.diff.len()
    }

    /// Flushes the compressor, verifies and commits the blob.
    pub fn finish(self) -> Result<Layer> {
        let sink = match self.encoder {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(i) => Ok(i),
        }
        .map_err(stream_err("finish compressing the layer"))?;
        let Sink { ingest, watch, .. } = sink;
        let (digest, size) = ingest.commit(None)?;
        if let Some(mut w) = watch {
            w.grown(size);
            w.done(&digest, size);
        }
        let uncompressed_size = self.diff.len();
        Ok(Layer {
            descriptor: Descriptor::new(self.media_type, digest, size),
            diff_id: self.diff.finish(),
            uncompressed_size,
        })
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Gzip(e) => e.write(buf)?,
            Encoder::Zstd(e) => e.write(buf)?,
            Encoder::Plain(i) => i.write(buf)?,
        };
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(i) => i.flush(),
        }
    }
}

/// Builds several layers at once, one thread per layer up to the machine's
/// available parallelism. Each job writes its uncompressed tar into the
/// [`LayerWriter`] it is given. Results keep the order of `jobs`.
pub fn compress_layers_parallel<F>(
    store: &ContentStore,
    compression: Compression,
    jobs: Vec<F>,
) -> Result<Vec<Layer>>
where
    F: FnOnce(&mut LayerWriter) -> Result<()> + Send,
{
    let count = jobs.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(count);
    let queue: Vec<Mutex<Option<F>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Result<Layer>>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let job = queue[i].lock().ok().and_then(|mut j| j.take());
                let Some(job) = job else { continue };
                let result = LayerWriter::new(store, compression).and_then(|mut w| {
                    job(&mut w)?;
                    w.finish()
                });
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .enumerate()
        .map(|(index, slot)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or(Err(Error::WorkerPanicked { index }))
        })
        .collect()
}

/// A reader of the uncompressed tar of a layer blob with `media_type` (OCI
/// or Docker; plain, gzip or zstd).
pub fn decompress_reader<'a, R: Read + Send + 'a>(
    media_type: &str,
    reader: R,
) -> Result<Box<dyn Read + Send + 'a>> {
    match compression_of(media_type) {
        Some(Compression::None) => Ok(Box::new(reader)),
        Some(Compression::Gzip(_)) => Ok(Box::new(flate2::read::MultiGzDecoder::new(
            BufReader::new(reader),
        ))),
        Some(Compression::Zstd(_)) => Ok(Box::new(
            zstd::Decoder::new(reader).map_err(stream_err("start the zstd decompressor"))?,
        )),
        None => Err(Error::UnsupportedMediaType(media_type.to_string())),
    }
}

/// A reader that decompresses gzip, bzip2, xz or zstd when the stream starts
/// with that format's magic bytes, and passes anything else through (what
/// Dockerfile `ADD` does with local archives).
pub fn decompress_sniffed<'a, R: Read + Send + 'a>(reader: R) -> Result<Box<dyn Read + Send + 'a>> {
    let mut reader = BufReader::new(reader);
    let head = reader
        .fill_buf()
        .map_err(stream_err("read the start of the archive"))?;
    let head: Vec<u8> = head.iter().take(6).copied().collect();
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(b"BZh") {
        Ok(Box::new(bzip2::read::MultiBzDecoder::new(reader)))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
            reader,
        )))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::Decoder::with_buffer(reader)
                .map_err(stream_err("start the zstd decompressor"))?,
        ))
    } else {
        Ok(Box::new(reader))
    }
}

/// The compression a layer media type says its blob has: `Some(Gzip(6))`,
/// `Some(Zstd(3))` or `Some(None)` (levels are nominal), or `None` for a
/// media type that is not a layer this crate reads.
fn compression_of(media_type: &str) -> Option<Compression> {
    let plain = [
        MEDIA_TYPE_OCI_LAYER,
        MEDIA_TYPE_DOCKER_LAYER,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    ];
    if plain.contains(&media_type) {
        Some(Compression::None)
    } else if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Compression::Gzip(6))
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
        Some(Compression::Zstd(3))
    } else {
        None
    }
}

fn same_kind(a: Compression, b: Compression) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// The layer `descriptor` (uncompressed digest `diff_id`) as a blob with
/// `compression`: the blob itself when it is already compressed that way
/// (whatever the level), else a new blob made from its tar, checked against
/// `diff_id` and remembered under the ref
/// `layer-compression/<kind>/<diff_id hex>`, so each conversion is made
/// once per store (prune keeps what a ref names).
pub fn layer_in_compression(
    store: &ContentStore,
    descriptor: &Descriptor,
    diff_id: &Digest,
    compression: Compression,
) -> Result<Descriptor> {
    if compression_of(&descriptor.media_type).is_some_and(|c| same_kind(c, compression)) {
        return Ok(descriptor.clone());
    }
    let kind = match compression {
        Compression::Gzip(_) => "gzip",
        Compression::Zstd(_) => "zstd",
        Compression::None => "none",
    };
    let name = format!("layer-compression/{kind}/{}", diff_id.hex());
    if let Some(d) = store.get_ref(&name)? {
        if store.has(&d) {
            let size = std::fs::metadata(store.path(&d))
                .map_err(|source| Error::Io {
                    action: "stat",
                    path: store.path(&d),
                    source,
                })?
                .len();
            return Ok(Descriptor::new(compression.media_type(), d, size));
        }
    }
    let blob = store.open_blob(&descriptor.digest)?;
    let mut tar = decompress_reader(&descriptor.media_type, BufReader::new(blob))?;
    let mut w = LayerWriter::new(store, compression)?;
    io::copy(&mut tar, &mut w).map_err(stream_err("convert the layer's compression"))?;
    let layer = w.finish()?;
    if layer.diff_id != *diff_id {
        return Err(Error::DigestMismatch {
            expected: *diff_id,
            actual: layer.diff_id,
        });
    }
    store.set_ref(&name, &layer.descriptor.digest)?;
    Ok(layer.descriptor)
}

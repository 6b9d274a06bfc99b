//! `kbuild-image` owns image content on disk: the content store (sha256
//! blobs written through a verified ingest, refs, locking, prune),
//! deterministic layer tars, gzip/zstd layer blobs with streaming digests,
//! OCI/Docker config, manifest and index documents, and the exporters (OCI
//! layout directory or tar, `docker load` archive).
//!
//! Notes for users of the crate:
//! - [`Descriptor`] is this crate's own type, not oci-spec's: oci-spec 0.10
//!   writes a platform's `os.version`/`os.features` as `os_version`/
//!   `os_features` and keeps annotations in a `HashMap` (unstable bytes).
//!   These types are the workspace's one OCI document model (the registry
//!   client speaks them too). [`DescriptorPlatform`] converts from and
//!   to `kbuild_platform::Platform` with `From`.
//! - Documents are written as canonical JSON ([`canonical_json`]): sorted
//!   keys, compact, so the same image gives the same digests.
//! - Builds hold [`ContentStore::lock_shared`] while they write blobs that no
//!   ref reaches yet; [`ContentStore::prune`] takes the lock exclusively and
//!   refuses to run while any build holds it. [`ContentStore::recover`]
//!   removes the ingest files of crashed processes. File locks go through
//!   [`lock`], the workspace's one `flock` implementation.
//! - A blob is opened with [`ContentStore::open_blob`] (`open` opens the store).
//!
//! ```
//! use std::io::Write;
//! use kbuild_image::{
//!     tarball::{DeterministicTar, Entry, EntryKind, TarOptions},
//!     Compression, ContentStore, ImageConfig, LayerWriter, Manifest, MEDIA_TYPE_OCI_CONFIG,
//! };
//!
//! # fn main() -> Result<(), kbuild_image::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = ContentStore::open(dir.path().join("store"))?;
//!
//! // One layer holding /hello.
//! let mut tar = DeterministicTar::new(LayerWriter::new(&store, Compression::Gzip(6))?, TarOptions::default());
//! tar.append(&Entry::new("hello", EntryKind::File { size: 3 }), &b"hi\n"[..])?;
//! let layer = tar.finish()?.finish()?;
//!
//! let mut config = ImageConfig::default();
//! config.architecture = "amd64".into();
//! config.os = "linux".into();
//! config.rootfs.diff_ids.push(layer.diff_id);
//! let config = config.write(&store, MEDIA_TYPE_OCI_CONFIG)?;
//! let manifest = Manifest::new(config, vec![layer.descriptor]).write(&store)?;
//! assert!(store.has(&manifest.digest));
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod digest;
mod error;
mod gate;
mod layer;
mod oci;
pub mod pargzip;
mod store;

pub mod export;
pub mod lock;
pub mod tarball;

pub use digest::{Digest, DigestWriter};
pub use error::{DocumentProblem, Error, Result, TarEntryProblem};
pub use gate::CommitGate;
pub use layer::{
    compress_layers_parallel, decompress_reader, decompress_sniffed, default_threads,
    layer_in_compression, BlobWatch, Compression, Layer, LayerWriter, DEFAULT_GZIP_LEVEL,
};
pub use oci::*;
pub use store::{
    default_root, write_atomic, write_atomic_gated, write_atomic_with, ChildrenList, ContentStore,
    ExclusiveStoreLock, Ingest, PruneReport, RecoverReport, StoreLock, STALE_INGEST_AGE,
};

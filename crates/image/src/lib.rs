//! `kbuild-image` owns image content on disk: the content store (sha256
//! blobs written through a verified ingest, refs, locking, prune),
//! deterministic layer tars, gzip/zstd layer blobs with streaming digests,
//! OCI/Docker config, manifest and index documents, and the exporters (OCI
//! layout directory or tar, `docker load` archive).
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
mod layer;
mod oci;
mod store;

pub mod export;
pub mod tarball;

pub use digest::{Digest, DigestWriter};
pub use error::{Error, Result};
pub use layer::{
    compress_layers_parallel, decompress_reader, decompress_sniffed, Compression, Layer,
    LayerWriter,
};
pub use oci::*;
pub use store::{
    default_root, ChildrenList, ContentStore, Ingest, PruneReport, StoreLock, STALE_INGEST_AGE,
};

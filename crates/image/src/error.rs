//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in this crate. Each message names the input at
/// fault and reads as one sentence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The build was cancelled before this output took its name.
    #[error("{path}: not written, the build was cancelled")]
    Cancelled {
        /// The output.
        path: std::path::PathBuf,
    },
    /// A string is not a `sha256:<64 hex>` digest.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to a caller-supplied stream failed.
    #[error("cannot {action}: {source}")]
    Stream {
        /// What was being done, e.g. "write the layer tar stream".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Written content does not hash to the digest it was expected to have.
    #[error("content has digest {actual} but {expected} was expected; the source is corrupt or sent the wrong blob")]
    DigestMismatch {
        /// The digest the caller asked for.
        expected: Digest,
        /// The digest of what was written.
        actual: Digest,
    },
    /// Written content does not have the size its descriptor gives (checked
    /// before the digest: content of another size has another digest too).
    #[error("size mismatch for {digest}: its descriptor says {expected} bytes but {actual} bytes arrived; the download was truncated or padded, or the descriptor is wrong")]
    SizeMismatch {
        /// The digest the descriptor names.
        digest: Digest,
        /// The expected size.
        expected: u64,
        /// The size written.
        actual: u64,
    },
    /// A blob is not in the store.
    #[error("blob {digest} is not in the content store at {}; pull or build it first", root.display())]
    NotFound {
        /// The missing blob.
        digest: Digest,
        /// The store root.
        root: PathBuf,
    },
    /// A ref name is not usable as a path below `refs/`.
    #[error("invalid ref name {name:?}: {reason}")]
    InvalidRefName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A ref file holds something that is not a digest.
    #[error("ref {name:?} in the content store is corrupt ({source}); remove it with remove_ref and rebuild")]
    CorruptRef {
        /// The ref name.
        name: String,
        /// Why its content is no digest.
        #[source]
        source: Box<Error>,
    },
    /// Prune could not take the store lock because a build holds it.
    #[error("the content store at {} is in use by a running build; prune again once it finishes", root.display())]
    Busy {
        /// The store root.
        root: PathBuf,
    },
    /// Another writer holds the resumable ingest for this key.
    #[error("resumable ingest {key:?} is being written by another process; wait for it or use another key")]
    IngestBusy {
        /// The ingest key.
        key: String,
    },
    /// A JSON document could not be parsed or produced.
    #[error("cannot parse {what} as JSON: {source}")]
    Json {
        /// What was being parsed, e.g. "manifest sha256:...".
        what: String,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A document is valid JSON but not what was expected.
    #[error("invalid {what}: {reason}")]
    InvalidDocument {
        /// What was being read, e.g. "manifest sha256:...".
        what: String,
        /// What is wrong with it.
        #[source]
        reason: DocumentProblem,
    },
    /// A layer uses a media type this crate cannot decompress.
    #[error("unsupported layer media type {0:?}; expected a tar layer that is plain, gzip or zstd compressed")]
    UnsupportedMediaType(String),
    /// A tar entry cannot be represented.
    #[error("cannot add {path:?} to the tar stream: {reason}")]
    TarEntry {
        /// The archive path of the entry.
        path: String,
        /// Why.
        #[source]
        reason: TarEntryProblem,
    },
    /// A tar header field does not fit the entry (a device number too large).
    #[error("cannot add {path:?} to the tar stream: {source}")]
    TarHeader {
        /// The archive path of the entry.
        path: String,
        /// The tar writer's error.
        #[source]
        source: io::Error,
    },
    /// An export destination cannot be used.
    #[error("cannot export to {}: {reason}", path.display())]
    Destination {
        /// The destination path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A worker thread of a parallel helper panicked.
    #[error("a layer compression thread panicked while compressing layer {index}")]
    WorkerPanicked {
        /// The index of the layer job.
        index: usize,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn stream_err(action: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Stream { action, source }
}

/// Why a manifest or index is not the document expected
/// ([`Error::InvalidDocument`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentProblem {
    /// A Docker schema 1 manifest.
    #[error("Docker schema 1 manifests are deprecated and not supported; push the image again with a current client")]
    Schema1,
    /// A `schemaVersion` other than 2 (or none).
    #[error("schemaVersion is {0:?}, expected 2")]
    SchemaVersion(Option<u64>),
    /// A `mediaType` that is neither a manifest nor an index.
    #[error("unknown mediaType {0:?}")]
    MediaType(String),
    /// An index where an image manifest was asked for.
    #[error("it is an index (manifest list), not an image manifest")]
    NotAManifest,
    /// An image manifest where an index was asked for.
    #[error("it is an image manifest, not an index")]
    NotAnIndex,
    /// A descriptor of a manifest whose content is an index.
    #[error("its media type says manifest but the content is an index")]
    IndexContent,
    /// A docker archive asked of something other than one manifest.
    #[error("a docker archive holds one image manifest, but the descriptor has media type {0:?}; pick the platform's manifest from the index first")]
    DockerArchiveOfIndex(String),
}

/// Why an entry cannot go into a tar stream ([`Error::TarEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TarEntryProblem {
    /// The file's size changed between its header and its content.
    #[error("the content was {read} bytes but the header says {size}; the file changed while it was archived")]
    SizeChanged {
        /// The bytes read.
        read: u64,
        /// The size in the header.
        size: u64,
    },
    /// A `..` component.
    #[error("archive paths must not contain '..'")]
    DotDot,
    /// Nothing left of the path.
    #[error("the archive path is empty")]
    EmptyPath,
    /// A platform directory missing from a split output's part (the part named).
    #[error("{} has no such directory", .0.display())]
    NoSuchDirectory(std::path::PathBuf),
    /// An entry of a split output's part outside its platforms' directories
    /// (the part named).
    #[error("{} has it outside the directories of its platforms", .0.display())]
    OutsidePlatforms(std::path::PathBuf),
}

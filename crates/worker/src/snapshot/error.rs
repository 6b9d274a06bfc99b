//! The snapshot error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while unpacking, mounting or diffing snapshots.
///
/// Each variant names the input at fault: the layer entry, the directory or
/// the diff_id.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on a path the snapshotter manages failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create the layer directory".
        action: &'static str,
        /// The path the operation was about.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A layer tar entry is unsafe or malformed; the layer is rejected.
    #[error("layer entry `{entry}` {problem}")]
    BadEntry {
        /// The entry name as written in the tar.
        entry: String,
        /// Why the entry is rejected, as the end of a sentence.
        problem: String,
    },
    /// Extracting one layer tar entry failed.
    #[error("cannot {action} for layer entry `{entry}`: {source}")]
    Entry {
        /// The entry name as written in the tar.
        entry: String,
        /// What was being done, e.g. "write the file".
        action: &'static str,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The layer stream is not a readable tar archive.
    #[error("cannot read the layer tar (is it uncompressed?): {0}")]
    Tar(#[source] io::Error),
    /// A diff_id is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid diff_id `{0}`: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDiffId(String),
    /// The layer stream does not hash to the diff_id it was unpacked as.
    #[error("the layer given as {expected} has the digest {actual}; refusing to store it under the wrong diff_id")]
    DigestMismatch {
        /// The diff_id the caller named.
        expected: String,
        /// The digest of the stream that was read.
        actual: String,
    },
    /// The overlay filesystem could not be mounted.
    #[error("cannot mount overlayfs on {} ({} lower layers): {source}; the worker must run as root on a kernel with overlayfs", merged.display(), lowers)]
    Mount {
        /// The mount point.
        merged: PathBuf,
        /// How many lower layers were stacked.
        lowers: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Too many lower layers for one overlay mount.
    #[error("cannot stack {0} lower layers in one overlay mount: the kernel allows at most 500")]
    TooManyLowers(usize),
    /// The boot marker of an unsynced layer could not be written.
    #[error("cannot write the boot marker {}: {source}", path.display())]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// The atomic writer's error (boxed, as in `WriteTar`).
        #[source]
        source: Box<kbuild_image::Error>,
    },
    /// Writing the diff tar failed.
    #[error("cannot write the diff entry `{entry}` to the layer tar: {source}")]
    WriteTar {
        /// The entry being written.
        entry: String,
        /// The tar writer's error (boxed: it is large, and every snapshot
        /// result carries this type).
        #[source]
        source: Box<kbuild_image::Error>,
    },
}

/// Result alias for snapshot operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to raw `io::Result`s at the call site.
pub(crate) trait IoContext<T> {
    /// Names the path and the action of a failed operation.
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
    /// Names the layer entry of a failed operation.
    fn entry(self, action: &'static str, entry: &str) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            action,
            path: path.into(),
            source: e.into(),
        })
    }

    fn entry(self, action: &'static str, entry: &str) -> Result<T> {
        self.map_err(|e| Error::Entry {
            entry: entry.to_string(),
            action,
            source: e.into(),
        })
    }
}

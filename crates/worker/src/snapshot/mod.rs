//! Snapshots: layers unpacked once per diff_id into overlay-ready
//! directories, stacked with overlayfs, and diffed back into layer tars.
//!
//! Layout under the snapshotter root:
//!
//! | path | what |
//! |---|---|
//! | `layers/<hex>/` | an unpacked layer (overlay diff format), named by its diff_id |
//! | `tmp/<hex>/` | a layer being unpacked; renamed into `layers/` when complete |
//! | `locks/<hex>.lock` | `flock` taken while a layer is unpacked or adopted |
//! | `mounts/<id>/{upper,work,merged}` | a live overlay mount |
//! | `mounts/<id>.lock` | `flock` held by the process owning mount `<id>` and its snapshot |
//! | `snapshots/<id>/` | an upper directory kept by [`Mount::commit`] |
//! | `empty/` | the lower directory of a `FROM scratch` mount |
//!
//! A layer directory becomes visible only by an atomic `rename` of a fully
//! extracted and digest-verified temp directory, so a crashed process never
//! leaves a half-unpacked layer behind a diff_id name; two processes that
//! unpack the same layer serialize on the lock, and the second one reuses
//! the first one's result. (The rename is atomic against process crashes;
//! durability against power loss is left to the filesystem.)
//!
//! What a crashed process leaves (a mount, its directories, a half-unpacked
//! layer) is found by its free lock and reclaimed by
//! [`Snapshotter::recover`]; [`Snapshotter::gc`] also drops the layers no
//! image references, under the store's exclusive lock.
//!
//! ```no_run
//! use kbuild_worker::snapshot::{write_diff, DiffOptions, Snapshotter};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshotter = Snapshotter::new("/var/lib/kbuild/snapshots")?;
//! # let (diff_id, tar) = ("sha256:...", std::io::empty());
//! let base = snapshotter.unpack_layer(diff_id, tar)?;
//! let mount = snapshotter.mount(&[base.clone()])?;
//! std::fs::write(mount.merged().join("hello"), "world")?;
//! let mut out = tar::Builder::new(Vec::new());
//! let stats = write_diff(mount.upper(), &[base], &mut out, &DiffOptions::default())?;
//! assert_eq!(stats.regular_files, 1);
//! mount.unmount()?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod diff;
mod error;
mod fsutil;
mod mount;
mod policy;
mod recover;
mod unpack;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kbuild_image::lock::{FileLock, LockMode};
use rustix::fs::RenameFlags;
use rustix::io::Errno;
use sha2::{Digest as _, Sha256, Sha512};

pub use diff::{upper_file_is, write_diff, DiffOptions, DiffStats, EntryMeta, LayerEntries};
pub use error::{Error, Result};
pub use mount::{Mount, Snapshot};
pub use recover::{GcReport, Recovered};

use error::IoContext;

/// Applies an OCI layer tar (uncompressed) onto a plain directory, keeping
/// everything: [`apply_layer_to_dir_with`] with
/// `preserve_special: true`.
pub fn apply_layer_to_dir(dir: &Path, reader: impl Read) -> Result<()> {
    let options = ApplyOptions {
        preserve_special: true,
    };
    apply_layer_to_dir_with(dir, reader, options).map(drop)
}

/// How [`apply_layer_to_dir_with`] treats entries that carry privileges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Create device nodes and keep setuid/setgid bits and file
    /// capabilities (`security.capability`). Off by default, as `docker cp`
    /// does: a tree exported to the host should not grant privileges.
    pub preserve_special: bool,
}

/// What [`apply_layer_to_dir_with`] left out, for the caller to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Device nodes (and hardlinks to them) not created.
    pub devices_skipped: u64,
    /// Files whose setuid/setgid bits or capabilities were dropped.
    pub privileges_dropped: u64,
}

/// Applies an OCI layer tar (uncompressed) onto a plain directory, as the
/// `-o type=local` output needs: `.wh.NAME` deletes `NAME`, `.wh..wh..opq`
/// empties its directory of everything this layer did not write, and a
/// parent that is a symlink or a file in `dir` is replaced by a directory
/// (never followed), as an overlay mount of the layers shows it.
/// Ownership, modes and xattrs are kept, except what `options` drops.
///
/// The layer's entries are checked by the same policy as
/// [`Snapshotter::unpack_layer`]'s, so a layer is accepted here exactly when
/// a build accepts it: a hardlink must name an earlier entry of the same
/// layer, nothing is written below a symlink of the layer, and so on.
pub fn apply_layer_to_dir_with(
    dir: &Path,
    reader: impl Read,
    options: ApplyOptions,
) -> Result<ApplyReport> {
    unpack::extract(dir, reader, unpack::Flavor::Apply, options)
}

/// How [`unpack_archive`] owns what it writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// `ADD --chown`'s uid and gid for every entry; without it each entry
    /// keeps the ids the archive gives it.
    pub chown: Option<(u32, u32)>,
}

/// Unpacks a local tar archive (already decompressed) for Dockerfile `ADD`
/// into the existing directory `dest`, a container path of the root
/// filesystem `root` (resolved as the container sees it, never leaving
/// `root`). The destination acts as the archive's root, as in Docker's
/// chrooted untar: names with `..` that climb above it are rejected,
/// absolute names and symlinks resolve inside it, and an entry below a
/// symlink the archive itself made is rejected, so nothing is written
/// outside `dest`.
///
/// Entries are checked by the layer policy, except that `.wh.` names are
/// ordinary files. Existing files are replaced, existing directories kept
/// (their metadata updated); modes (with setuid/setgid bits) and mtimes
/// are kept; device nodes and FIFOs are not created and xattrs not
/// applied; the archive's own `./` entry leaves `dest` as it is. Missing
/// parents the archive does not list are made 0755 root:root; a parent
/// that exists but does not resolve to a directory (a file, a dangling
/// symlink) is an error, never replaced.
pub fn unpack_archive(
    root: &Path,
    dest: &str,
    reader: impl Read,
    options: ArchiveOptions,
) -> Result<()> {
    let root_fd = fsutil::open_dir(root).at("open the root filesystem", root)?;
    let dest_fd = crate::rootpath::open_in_root(
        std::os::fd::AsFd::as_fd(&root_fd),
        Path::new(dest),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
    )
    .at("open the destination directory", Path::new(dest))?;
    unpack::extract_archive(dest_fd, reader, options.chown)
}

/// Owns the snapshot directories under one root; see the module docs.
///
/// Cheap to clone; every method is safe to call from several threads and
/// processes at once.
#[derive(Clone, Debug)]
pub struct Snapshotter {
    root: PathBuf,
}

/// The parsed hex part of a diff_id, with the algorithm used to check it.
struct DiffId<'a> {
    algorithm: &'a str,
    hex: &'a str,
}

fn parse_diff_id(diff_id: &str) -> Result<DiffId<'_>> {
    let invalid = || Error::InvalidDiffId(diff_id.to_string());
    let (algorithm, hex) = diff_id.split_once(':').ok_or_else(invalid)?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(invalid()),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid());
    }
    Ok(DiffId { algorithm, hex })
}

/// Hashes what passes through, to check a layer stream against its diff_id.
struct Hashing<R> {
    inner: R,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.sha256 {
            h.update(&buf[..n]);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn hex(self) -> String {
        match (self.sha256, self.sha512) {
            (Some(h), _) => hex::encode(h.finalize()),
            (_, Some(h)) => hex::encode(h.finalize()),
            _ => String::new(),
        }
    }
}

impl Snapshotter {
    /// Opens (creating if needed) a snapshotter rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["layers", "tmp", "locks", "mounts", "snapshots", "empty"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at("create the snapshot directory", &p)?;
        }
        Ok(Snapshotter { root })
    }

    /// The root directory given to [`Snapshotter::new`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an unpacked layer, if it is there.
    pub fn layer(&self, diff_id: &str) -> Result<Option<PathBuf>> {
        let id = parse_diff_id(diff_id)?;
        let p = self.root.join("layers").join(id.hex);
        Ok(p.is_dir().then_some(p))
    }

    fn lock(&self, hex: &str) -> Result<FileLock> {
        let p = self.root.join("locks").join(format!("{hex}.lock"));
        FileLock::acquire(&p, LockMode::Exclusive).at("lock the layer", &p)
    }

    /// Renames a finished directory to its layer name unless another
    /// process got there first, in which case `dir` is removed.
    fn publish(&self, dir: &Path, target: &Path) -> Result<()> {
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            dir,
            rustix::fs::CWD,
            target,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
                fs::remove_dir_all(dir).at("remove a duplicate layer directory", dir)
            }
            Err(e) => Err(e).at("publish the layer directory", target),
        }
    }

    /// Unpacks an uncompressed layer tar once per diff_id into an
    /// overlay-ready directory and returns it (`<root>/layers/<hex>`).
    ///
    /// If the layer is already there the reader is not touched. The stream
    /// is checked against `diff_id`; entries that would escape the layer
    /// (`..`, symlinked parents, hardlinks outside) are rejected with an
    /// error naming the entry. OCI whiteouts become overlay whiteouts.
    /// Ownership, modes (setuid/setgid/sticky), xattrs, mtimes, device
    /// nodes, fifos and hardlinks within the layer are kept; xattrs in the
    /// `trusted.overlay.` namespace are dropped. A parent directory the tar
    /// does not list is created as 0755 root:root.
    pub fn unpack_layer(&self, diff_id: &str, reader: impl Read) -> Result<PathBuf> {
        let id = parse_diff_id(diff_id)?;
        let target = self.root.join("layers").join(id.hex);
        if target.is_dir() {
            return Ok(target);
        }
        let _lock = self.lock(id.hex)?;
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.root.join("tmp").join(id.hex);
        if tmp.symlink_metadata().is_ok() {
            // Left by a crashed unpack; we hold the lock, so nobody uses it.
            fs::remove_dir_all(&tmp).at("remove a stale unpack directory", &tmp)?;
        }
        fs::create_dir(&tmp).at("create the unpack directory", &tmp)?;
        let mut hashing = Hashing {
            inner: reader,
            sha256: (id.algorithm == "sha256").then(Sha256::new),
            sha512: (id.algorithm == "sha512").then(Sha512::new),
        };
        let result = unpack::extract(
            &tmp,
            &mut hashing,
            unpack::Flavor::Diff,
            ApplyOptions::default(),
        )
        .and_then(|_| {
            // The tar reader stops at the end-of-archive blocks; the digest
            // covers the whole stream.
            io::copy(&mut hashing, &mut io::sink()).map_err(Error::Tar)?;
            let got = hashing.hex();
            if got != id.hex {
                return Err(Error::DigestMismatch {
                    expected: diff_id.to_string(),
                    actual: format!("{}:{got}", id.algorithm),
                });
            }
            Ok(())
        });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.publish(&tmp, &target)?;
        Ok(target)
    }

    /// Gives a committed upper directory (from [`Mount::commit`]) its layer
    /// name once its diff_id is known, so later builds find it with
    /// [`Snapshotter::layer`] without unpacking. If the layer already
    /// exists, `dir` is removed and the existing directory returned.
    pub fn adopt_layer(&self, diff_id: &str, dir: &Path) -> Result<PathBuf> {
        let id = parse_diff_id(diff_id)?;
        let target = self.root.join("layers").join(id.hex);
        let _lock = self.lock(id.hex)?;
        self.publish(dir, &target)?;
        Ok(target)
    }

    /// Mounts overlayfs with `lowers` (bottom first) under a fresh
    /// directory; see [`Mount`].
    pub fn mount(&self, lowers: &[PathBuf]) -> Result<Mount> {
        Mount::new(&self.root, lowers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_id_parsing() {
        let hex = "a".repeat(64);
        assert!(parse_diff_id(&format!("sha256:{hex}")).is_ok());
        assert!(parse_diff_id(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(parse_diff_id(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(parse_diff_id(&format!("md5:{hex}")).is_err());
        assert!(parse_diff_id(&format!("sha512:{}", "0".repeat(128))).is_ok());
        assert!(parse_diff_id("sha256:../../etc").is_err());
    }
}

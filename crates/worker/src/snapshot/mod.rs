//! Snapshots: layers unpacked once per diff_id into overlay-ready
//! directories, stacked with overlayfs, and diffed back into layer tars.
//!
//! Layout under the snapshotter root:
//!
//! | path | what |
//! |---|---|
//! | `layers/<hex>/` | an unpacked layer (overlay diff format), named by its diff_id |
//! | `layers/<hex>.boot` | the boot id of the boot that published `layers/<hex>/` unsynced |
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
//! the first one's result.
//!
//! Layer directories are published without syncing their files (neither
//! an unpacked layer nor a committed upper of a `volatile` overlay mount is
//! written back first), so a kernel crash or power cut may leave one that
//! looks complete but holds empty or missing files. Before a layer is
//! published, the current boot id (`/proc/sys/kernel/random/boot_id`) is
//! written to `layers/<hex>.boot` with the atomic writer (fsynced, so it is
//! on disk before the rename that publishes the layer). A layer whose
//! marker names another boot is not trusted: [`Snapshotter::layer`]
//! removes it and reports it absent, and the caller unpacks it again from
//! its blob. A layer without a marker (older stores) is trusted.
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
use std::sync::OnceLock;

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

/// The suffix of a layer's boot marker: `layers/<hex>.boot`.
pub(crate) const BOOT_SUFFIX: &str = ".boot";

/// Where the kernel tells this boot's id.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id, read once per process.
fn boot_id() -> Result<&'static str> {
    static ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id);
    }
    let text = fs::read_to_string(BOOT_ID_PATH).at("read the boot id from", BOOT_ID_PATH)?;
    let id = text.trim();
    if id.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty boot id"))
            .at("read the boot id from", BOOT_ID_PATH);
    }
    Ok(ID.get_or_init(|| id.to_string()))
}

/// Whether `layers/<hex>` can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerState {
    /// Not there.
    Absent,
    /// There, with no marker or this boot's.
    Trusted,
    /// There, published unsynced during another boot.
    Stale,
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

    /// The directory of an unpacked layer, if it is there and trusted.
    ///
    /// A layer published unsynced during another boot (its
    /// `layers/<hex>.boot` names another boot id) may have lost data in a
    /// crash: it is removed (under the layer's lock) and reported absent,
    /// so the caller unpacks it again from its blob.
    pub fn layer(&self, diff_id: &str) -> Result<Option<PathBuf>> {
        let id = parse_diff_id(diff_id)?;
        let p = self.root.join("layers").join(id.hex);
        match self.layer_state(id.hex)? {
            LayerState::Trusted => return Ok(Some(p)),
            LayerState::Absent => return Ok(None),
            LayerState::Stale => {}
        }
        let _lock = self.lock(id.hex)?;
        Ok(self.settle(id.hex)?.then_some(p))
    }

    /// Whether a trusted layer `hex` is there; one of an earlier boot is
    /// removed first (so it is not). Called with the layer's lock held.
    fn settle(&self, hex: &str) -> Result<bool> {
        match self.layer_state(hex)? {
            LayerState::Trusted => Ok(true),
            LayerState::Absent => Ok(false),
            LayerState::Stale => {
                self.discard_stale(hex)?;
                Ok(false)
            }
        }
    }

    fn marker_path(&self, hex: &str) -> PathBuf {
        self.root.join("layers").join(format!("{hex}{BOOT_SUFFIX}"))
    }

    /// The marker is read before the directory is looked at: a layer being
    /// discarded loses its directory before its marker, and a layer being
    /// published gets its marker before its directory, so a reader without
    /// the lock never trusts a stale layer.
    fn layer_state(&self, hex: &str) -> Result<LayerState> {
        let marker = self.marker_path(hex);
        let stale = match fs::read(&marker) {
            // An unreadable (torn, empty) marker is not this boot's either.
            Ok(text) => text.trim_ascii() != boot_id()?.as_bytes(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).at("read the boot marker", &marker),
        };
        let dir = self.root.join("layers").join(hex);
        Ok(match (dir.is_dir(), stale) {
            (false, _) => LayerState::Absent,
            (true, false) => LayerState::Trusted,
            (true, true) => LayerState::Stale,
        })
    }

    /// Removes a layer of another boot and then its marker; the caller
    /// holds the layer's lock. The directory leaves `layers/` by one rename
    /// to `tmp/<hex>` (which recovery reclaims if this process dies), so it
    /// never shows up half-deleted without its marker.
    fn discard_stale(&self, hex: &str) -> Result<()> {
        let dir = self.root.join("layers").join(hex);
        let tmp = self.root.join("tmp").join(hex);
        if tmp.symlink_metadata().is_ok() {
            fs::remove_dir_all(&tmp).at("remove a stale unpack directory", &tmp)?;
        }
        fs::rename(&dir, &tmp).at("move a layer of an earlier boot to", &tmp)?;
        let marker = self.marker_path(hex);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at("remove the boot marker", &marker),
        }
        fs::remove_dir_all(&tmp).at("remove a layer of an earlier boot", &tmp)?;
        tracing::debug!(
            layer = hex,
            "dropped a layer published unsynced during an earlier boot"
        );
        Ok(())
    }

    /// Records that `layers/<hex>` is about to be published unsynced
    /// during this boot; written (and synced) before the publishing rename.
    fn write_marker(&self, hex: &str) -> Result<()> {
        let path = self.marker_path(hex);
        let text = format!("{}\n", boot_id()?);
        kbuild_image::write_atomic(&path, text.as_bytes()).map_err(|source| Error::Marker {
            path,
            source: Box::new(source),
        })
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
    /// If the layer is already there (and trusted, see
    /// [`Snapshotter::layer`]) the reader is not touched; a layer of an
    /// earlier boot is made again. The files are not synced: the layer is
    /// published with this boot's marker. The stream
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
        if self.layer_state(id.hex)? == LayerState::Trusted {
            return Ok(target);
        }
        let _lock = self.lock(id.hex)?;
        if self.settle(id.hex)? {
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
        })
        .and_then(|()| self.write_marker(id.hex));
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
    /// exists (and is trusted), `dir` is removed and the existing directory
    /// returned. The upper of a `volatile` mount was not synced at
    /// unmount: the layer is published with this boot's marker.
    pub fn adopt_layer(&self, diff_id: &str, dir: &Path) -> Result<PathBuf> {
        let id = parse_diff_id(diff_id)?;
        let target = self.root.join("layers").join(id.hex);
        let _lock = self.lock(id.hex)?;
        if !self.settle(id.hex)? {
            self.write_marker(id.hex)?;
        }
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

//! The content store: blobs addressed by digest, written through an ingest
//! area and committed by rename once the digest is verified.
//!
//! Layout below the root (the blob part is an OCI image layout's):
//!
//! ```text
//! <root>/blobs/sha256/<hex>   committed blobs, read-only files
//! <root>/ingest/              writes in progress (anonymous temp files and resumable ones)
//! <root>/refs/<name>          one file per ref holding a digest; the roots for prune
//! <root>/lock                 advisory lock: shared by builds, exclusive by prune
//! ```
//!
//! Every ingest file is locked (`flock`) by the process writing it, so
//! [`ContentStore::recover`] can remove the anonymous ones a crashed process
//! left behind without touching a live writer's.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::error::{io_err, Error, Result};
use crate::lock::{self, FileLock, LockMode};

/// Ingest files untouched for this long are removed by [`ContentStore::prune`].
pub const STALE_INGEST_AGE: Duration = Duration::from_secs(60 * 60);

/// Temp files of ref updates are named `.<ref>` followed by this and a random part.
const REF_TEMP_MARK: &str = ".tmp-";

/// The name prefix of anonymous ingest files.
const INGEST_TEMP_PREFIX: &str = "tmp-";

/// JSON blobs bigger than this are never parsed while walking for prune.
const MAX_WALK_DOCUMENT: u64 = 16 << 20;

const WRITE_BUFFER: usize = 256 << 10;

/// An ingest starts writing its file back to the disk every this many
/// bytes (see [`start_writeback`]).
const WRITEBACK_STEP: u64 = 8 << 20;

/// The default store root: `$XDG_DATA_HOME/kubectl-build`, falling back to
/// `~/.local/share/kubectl-build`. `None` when neither variable is usable.
pub fn default_root() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() {
            return Some(xdg.join("kubectl-build"));
        }
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    if !home.is_absolute() {
        return None;
    }
    Some(home.join(".local/share/kubectl-build"))
}

/// A content-addressed blob store on disk. Cheap to clone; all methods take
/// `&self` and are safe to call from several threads and processes.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// A held store lock; released on drop. See [`ContentStore::lock_shared`].
#[derive(Debug)]
pub struct StoreLock {
    _lock: FileLock,
}

/// The store lock held exclusively: no build runs while it is held. See
/// [`ContentStore::try_lock_exclusive`]; released on drop.
#[derive(Debug)]
pub struct ExclusiveStoreLock {
    _lock: FileLock,
}

/// What [`ContentStore::recover`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverReport {
    /// Ingest temp files of processes that are gone.
    pub removed_ingests: Vec<PathBuf>,
    /// Their bytes.
    pub freed_bytes: u64,
    /// Temp files of ref updates of processes that are gone.
    pub removed_temps: Vec<PathBuf>,
}

/// What [`ContentStore::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs removed, sorted.
    pub removed_blobs: Vec<Digest>,
    /// Bytes of removed blobs and ingest files.
    pub freed_bytes: u64,
    /// Blobs kept because a root reaches them.
    pub kept: usize,
    /// Stale ingest files removed.
    pub removed_ingests: usize,
}

/// The tiny JSON document a ref can point to in order to keep several
/// unrelated blobs alive (the build cache uses it): `{"children":["sha256:…",…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildrenList {
    /// The blobs kept alive, sorted and without duplicates.
    pub children: Vec<Digest>,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ContentStore> {
        let root = root.into();
        for dir in [
            root.join("blobs/sha256"),
            root.join("ingest"),
            root.join("refs"),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create the store directory", &dir))?;
        }
        let lock = root.join("lock");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock)
            .map_err(io_err("create the store lock file", &lock))?;
        Ok(ContentStore { root })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the blob is committed.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The blob's size in bytes.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(m.len()),
            Err(e) => Err(self.not_found_or(digest, "read the size of", e)),
        }
    }

    /// Opens the blob for reading. (`ContentStore::open` opens the store.)
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        File::open(self.path(digest)).map_err(|e| self.not_found_or(digest, "open", e))
    }

    /// Reads a whole blob and checks its digest; meant for small JSON documents.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let data = fs::read(self.path(digest)).map_err(|e| self.not_found_or(digest, "read", e))?;
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        Ok(data)
    }

    /// Stores `data`, returning its digest and size.
    pub fn put_bytes(&self, data: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(data);
        if self.has(&digest) {
            return Ok((digest, data.len() as u64));
        }
        let mut ingest = self.writer()?;
        ingest
            .write_all(data)
            .map_err(io_err("write", ingest.path.clone()))?;
        ingest.commit(Some(&digest))
    }

    /// Starts an anonymous ingest. Dropping it without commit removes its file.
    pub fn writer(&self) -> Result<Ingest> {
        let dir = self.root.join("ingest");
        // Locked while this process writes it: see [`ContentStore::recover`].
        let (file, path) = FileLock::create_unique(&dir, INGEST_TEMP_PREFIX, "")
            .map_err(io_err("create an ingest file in", &dir))?
            .into_parts();
        Ok(Ingest {
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp: Some(
                tempfile::TempPath::try_from_path(&path)
                    .map_err(io_err("create an ingest file in", &dir))?,
            ),
            path,
            hasher: Hasher::default(),
            blobs: self.root.join("blobs/sha256"),
            written_back: 0,
        })
    }

    /// Starts or resumes the ingest named `key` (any string, e.g. the digest
    /// being downloaded). Returns the ingest and the offset already written:
    /// the caller continues the download from there. The bytes already present
    /// are re-hashed. Dropping the ingest without commit keeps the partial file
    /// for a later resume; [`Ingest::abort`] removes it. Only one writer per
    /// key at a time: a second one gets [`Error::IngestBusy`].
    pub fn writer_resumable(&self, key: &str) -> Result<(Ingest, u64)> {
        let path = self
            .root
            .join("ingest")
            .join(format!("resume-{}", Digest::of(key.as_bytes()).hex()));
        let file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("open the resumable ingest file", &path))?;
            if !lock::flock(&file, LockMode::Exclusive, false)
                .map_err(io_err("lock the resumable ingest file", &path))?
            {
                return Err(Error::IngestBusy {
                    key: key.to_string(),
                });
            }
            // The previous holder may have committed (renamed) the file between
            // our open and our lock: then our handle is the committed blob.
            let ours = file.metadata().map_err(io_err("stat", &path))?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => break file,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
        };
        let mut hasher = Hasher::default();
        let mut reader = &file;
        let mut buf = vec![0u8; WRITE_BUFFER];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_err("read the resumable ingest file", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let offset = hasher.len();
        let mut file = file;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek in", &path))?;
        Ok((
            Ingest {
                out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                path,
                temp: None,
                hasher,
                blobs: self.root.join("blobs/sha256"),
                written_back: offset,
            },
            offset,
        ))
    }

    /// Takes the store lock shared; builds hold it while they write blobs that
    /// no ref reaches yet, so a concurrent prune cannot remove them. Blocks
    /// while a prune runs.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let lock = FileLock::acquire(&path, LockMode::Shared)
            .map_err(io_err("take the shared store lock", &path))?;
        Ok(StoreLock { _lock: lock })
    }

    /// Takes the store lock exclusively, without waiting: fails with
    /// [`Error::Busy`] while a build holds it (including a [`StoreLock`] of
    /// the caller itself). Garbage collection of the store and of the
    /// snapshots runs under it.
    pub fn try_lock_exclusive(&self) -> Result<ExclusiveStoreLock> {
        let path = self.root.join("lock");
        match FileLock::try_acquire(&path, LockMode::Exclusive)
            .map_err(io_err("take the exclusive store lock", &path))?
        {
            Some(lock) => Ok(ExclusiveStoreLock { _lock: lock }),
            None => Err(Error::Busy {
                root: self.root.clone(),
            }),
        }
    }

    /// Removes the anonymous ingest files of processes that are gone (a
    /// build killed while writing a blob) and the temp files of their ref
    /// updates; a live writer holds its file locked and keeps it. Resumable ingests stay for a later resume
    /// ([`ContentStore::prune`] drops stale ones). Safe to call while other
    /// builds run; each removed file is logged at debug level.
    pub fn recover(&self) -> Result<RecoverReport> {
        let ingest = self.root.join("ingest");
        let mut report = RecoverReport::default();
        let entries = fs::read_dir(&ingest).map_err(io_err("list the ingest files in", &ingest))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list the ingest files in", &ingest))?;
            let is_temp = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(INGEST_TEMP_PREFIX));
            if !is_temp {
                continue;
            }
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open the ingest file", path)(e)),
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let Some(held) = FileLock::try_from_file(file, &path)
                .map_err(io_err("lock the ingest file", &path))?
            else {
                continue; // a live writer's
            };
            held.remove()
                .map_err(io_err("remove the ingest file", &path))?;
            tracing::debug!(path = %path.display(), bytes = size, "removed the ingest file of a dead process");
            report.freed_bytes += size;
            report.removed_ingests.push(path);
        }
        // Temp files of ref updates, anywhere below refs/.
        let mut stack = vec![self.root.join("refs")];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(io_err("list the refs in", &dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("list the refs in", &dir))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(io_err("stat", &path))?;
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                let is_temp = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with('.') && n.contains(REF_TEMP_MARK));
                if !is_temp {
                    continue;
                }
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("open the ref temp file", path)(e)),
                };
                let Some(held) = FileLock::try_from_file(file, &path)
                    .map_err(io_err("lock the ref temp file", &path))?
                else {
                    continue; // a live writer's
                };
                held.remove()
                    .map_err(io_err("remove the ref temp file", &path))?;
                tracing::debug!(path = %path.display(), "removed the ref temp file of a dead process");
                report.removed_temps.push(path);
            }
        }
        report.removed_ingests.sort();
        report.removed_temps.sort();
        Ok(report)
    }

    /// The diff_ids of every image config reachable from the refs: the
    /// unpacked layers a snapshot garbage collection must keep.
    pub fn referenced_diff_ids(&self) -> Result<BTreeSet<Digest>> {
        let roots: Vec<Digest> = self.list_refs()?.into_iter().map(|(_, d)| d).collect();
        let mut out = BTreeSet::new();
        for d in self.reachable(roots)? {
            // Configs are small JSON documents; layers are not read.
            if !matches!(self.size(&d), Ok(n) if n <= MAX_WALK_DOCUMENT) {
                continue;
            }
            let Ok(bytes) = self.read(&d) else { continue };
            if let Ok(cfg) = crate::ImageConfig::parse(&bytes) {
                out.extend(cfg.rootfs.diff_ids);
            }
        }
        Ok(out)
    }

    /// Points ref `name` at `digest`, replacing it atomically. Names are
    /// `/`-separated segments of `[A-Za-z0-9._:@+=-]`, not starting with `.`,
    /// e.g. `cache/<key>` or `image/docker.io/library/alpine:latest`.
    pub fn set_ref(&self, name: &str, digest: &Digest) -> Result<()> {
        let path = self.ref_path(name)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create the ref directory", &dir))?;
        write_atomic(&path, format!("{digest}\n").as_bytes())
    }

    /// The digest ref `name` points at, if the ref exists.
    pub fn get_ref(&self, name: &str) -> Result<Option<Digest>> {
        let path = self.ref_path(name)?;
        if path.is_dir() {
            return Ok(None); // a prefix of other refs, not a ref
        }
        match fs::read_to_string(&path) {
            Ok(text) => Digest::parse(text.trim_end())
                .map(Some)
                .map_err(|e| Error::CorruptRef {
                    name: name.to_string(),
                    source: Box::new(e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read the ref", path)(e)),
        }
    }

    /// Removes ref `name`; returns whether it existed.
    pub fn remove_ref(&self, name: &str) -> Result<bool> {
        let path = self.ref_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("remove the ref", path)(e)),
        }
        // Tidy now-empty parent directories; a concurrent set_ref may refill
        // one, so failures are fine.
        let refs = self.root.join("refs");
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == refs || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(true)
    }

    /// All refs, sorted by name.
    pub fn list_refs(&self) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        let refs = self.root.join("refs");
        let mut stack = vec![(refs, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(io_err("list the refs in", &dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("list the refs in", &dir))?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if file_name.starts_with('.') {
                    continue; // in-flight temp files
                }
                let name = format!("{prefix}{file_name}");
                let kind = entry.file_type().map_err(io_err("stat", entry.path()))?;
                if kind.is_dir() {
                    stack.push((entry.path(), format!("{name}/")));
                } else if let Some(d) = self.get_ref(&name)? {
                    out.push((name, d));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores a [`ChildrenList`] of `children` and points ref `name` at it,
    /// so prune keeps every child (and whatever each child reaches). Returns
    /// the digest of the list blob.
    pub fn set_ref_with_children(&self, name: &str, children: &[Digest]) -> Result<Digest> {
        let mut list: Vec<Digest> = children.to_vec();
        list.sort();
        list.dedup();
        let bytes = crate::oci::canonical_json(&ChildrenList { children: list })?;
        let (digest, _) = self.put_bytes(&bytes)?;
        self.set_ref(name, &digest)?;
        Ok(digest)
    }

    /// The children of ref `name` when it points to a [`ChildrenList`].
    pub fn get_ref_children(&self, name: &str) -> Result<Option<Vec<Digest>>> {
        let Some(digest) = self.get_ref(name)? else {
            return Ok(None);
        };
        let bytes = self.read(&digest)?;
        let list: ChildrenList = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("children list {digest} of ref {name:?}"),
            source,
        })?;
        Ok(Some(list.children))
    }

    /// Every blob reachable from `roots`: the roots themselves, descriptors in
    /// JSON documents (index → manifests → config and layers, subjects), and
    /// the entries of children lists, recursively. Missing blobs are included
    /// but not followed.
    pub fn reachable(&self, roots: impl IntoIterator<Item = Digest>) -> Result<BTreeSet<Digest>> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<(Digest, Option<String>)> =
            roots.into_iter().map(|d| (d, None)).collect();
        while let Some((digest, media_type)) = queue.pop_front() {
            if !seen.insert(digest) {
                continue;
            }
            if let Some(value) = self.walkable_document(&digest, media_type.as_deref())? {
                for child in crate::oci::referenced_blobs(&value) {
                    if !seen.contains(&child.0) {
                        queue.push_back(child);
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Removes blobs that no ref and none of `extra_roots` reach, the ingest
    /// files of dead processes ([`ContentStore::recover`]) and resumable
    /// ingest files untouched for [`STALE_INGEST_AGE`]. Takes the store lock
    /// exclusively and fails with [`Error::Busy`] while a build holds it
    /// (including a [`StoreLock`] held by the caller itself).
    pub fn prune(&self, extra_roots: &[Digest]) -> Result<PruneReport> {
        let lock = self.try_lock_exclusive()?;
        self.prune_locked(&lock, extra_roots)
    }

    /// [`ContentStore::prune`] for a caller that already holds the store
    /// lock exclusively (to collect more than blobs under the same lock).
    pub fn prune_locked(
        &self,
        _held: &ExclusiveStoreLock,
        extra_roots: &[Digest],
    ) -> Result<PruneReport> {
        let recovered = self.recover()?;
        let mut roots: Vec<Digest> = self.list_refs()?.into_iter().map(|(_, d)| d).collect();
        roots.extend_from_slice(extra_roots);
        let keep = self.reachable(roots)?;

        let mut report = PruneReport {
            freed_bytes: recovered.freed_bytes,
            removed_ingests: recovered.removed_ingests.len(),
            ..PruneReport::default()
        };
        let blobs = self.root.join("blobs/sha256");
        let entries = fs::read_dir(&blobs).map_err(io_err("list the blobs in", &blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list the blobs in", &blobs))?;
            let name = entry.file_name();
            let digest = match name
                .to_str()
                .map(|hex| Digest::parse(&format!("sha256:{hex}")))
            {
                Some(Ok(d)) => d,
                _ => continue, // not ours; leave it alone
            };
            if keep.contains(&digest) {
                report.kept += 1;
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    report.freed_bytes += size;
                    report.removed_blobs.push(digest);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove the blob", entry.path())(e)),
            }
        }
        report.removed_blobs.sort();

        let ingest = self.root.join("ingest");
        let now = SystemTime::now();
        let entries = fs::read_dir(&ingest).map_err(io_err("list the ingest files in", &ingest))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list the ingest files in", &ingest))?;
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < STALE_INGEST_AGE {
                continue;
            }
            // A resumable writer holds its file locked; skip it if it is alive.
            let Ok(f) = File::open(entry.path()) else {
                continue;
            };
            let Ok(Some(held)) = FileLock::try_from_file(f, entry.path()) else {
                continue;
            };
            if held.remove().is_ok() {
                report.freed_bytes += meta.len();
                report.removed_ingests += 1;
            }
        }
        Ok(report)
    }

    fn walkable_document(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Option<serde_json::Value>> {
        if let Some(mt) = media_type {
            if !mt.contains("json") {
                return Ok(None); // layers and other opaque blobs
            }
        }
        let path = self.path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len > MAX_WALK_DOCUMENT {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(len as usize);
        file.read_to_end(&mut data).map_err(io_err("read", &path))?;
        if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Ok(None);
        }
        // Not JSON after all (or corrupt): nothing to follow.
        Ok(serde_json::from_slice(&data).ok())
    }

    fn ref_path(&self, name: &str) -> Result<PathBuf> {
        let invalid = |reason| Error::InvalidRefName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > 1024 {
            return Err(invalid("a ref name has 1 to 1024 characters"));
        }
        for segment in name.split('/') {
            if segment.is_empty() {
                return Err(invalid("segments between '/' must not be empty"));
            }
            if segment.starts_with('.') {
                return Err(invalid("segments must not start with '.'"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:@+=-".contains(&b))
            {
                return Err(invalid(
                    "only A-Z a-z 0-9 . _ : @ + = - and '/' are allowed",
                ));
            }
        }
        Ok(self.root.join("refs").join(name))
    }

    fn not_found_or(&self, digest: &Digest, action: &'static str, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                digest: *digest,
                root: self.root.clone(),
            }
        } else {
            io_err(action, self.path(digest))(e)
        }
    }
}

/// A blob being written. Bytes are hashed as they stream in; [`Ingest::commit`]
/// verifies and moves the file into `blobs/`.
#[derive(Debug)]
pub struct Ingest {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    /// Set for anonymous ingests: removes the file on drop.
    temp: Option<tempfile::TempPath>,
    hasher: Hasher,
    blobs: PathBuf,
    /// Where in the file the last [`start_writeback`] ended.
    written_back: u64,
}

impl Ingest {
    /// Bytes written so far (including those of a resumed ingest).
    pub fn offset(&self) -> u64 {
        self.hasher.len()
    }

    /// The ingest file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Verifies the content against `expected` (when given), then commits it.
    /// Committing a blob that already exists succeeds and keeps the existing
    /// file. On a mismatch the ingest file is removed.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.finish(expected, None)
    }

    /// Like [`Ingest::commit`] but also checks the size, as a descriptor gives
    /// it. Content of another size is a [`Error::SizeMismatch`] (whatever its
    /// digest), content of the right size with another digest a
    /// [`Error::DigestMismatch`].
    pub fn commit_exact(self, expected: &Digest, size: u64) -> Result<(Digest, u64)> {
        self.finish(Some(expected), Some(size))
    }

    /// Removes the ingest file (also for resumable ingests).
    pub fn abort(mut self) -> Result<()> {
        // The name goes while the file is open, so its lock still tells
        // recovery that it is ours.
        let removed = self.discard();
        self.out = None;
        removed
    }

    fn finish(mut self, expected: Option<&Digest>, size: Option<u64>) -> Result<(Digest, u64)> {
        let out = self.out.take();
        let file = match out {
            Some(w) => w
                .into_inner()
                .map_err(|e| io_err("write", &self.path)(e.into_error()))?,
            None => {
                return Err(io_err("write", &self.path)(io::Error::other(
                    "ingest already closed",
                )))
            }
        };
        let hasher = std::mem::take(&mut self.hasher);
        let actual_size = hasher.len();
        let actual = hasher.finish();
        // The size first: content of another size cannot have the digest
        // either, and "truncated" says more than two unrelated digests.
        let mismatch = match (expected, size) {
            (_, Some(s)) if s != actual_size => Some(Error::SizeMismatch {
                digest: expected.copied().unwrap_or(actual),
                expected: s,
                actual: actual_size,
            }),
            (Some(e), _) if *e != actual => Some(Error::DigestMismatch {
                expected: *e,
                actual,
            }),
            _ => None,
        };
        // The file stays open (and locked) until its name is gone or moved,
        // so recovery never takes it for a dead writer's.
        if let Some(err) = mismatch {
            let _ = self.discard();
            drop(file);
            return Err(err);
        }
        let target = self.blobs.join(actual.hex());
        if target.exists() {
            self.discard()?;
            drop(file);
            return Ok((actual, actual_size));
        }
        // Data reaches the disk before the name does, so a crash never leaves
        // a blob whose content does not match its name.
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("set permissions on", &self.path))?;
        file.sync_all().map_err(io_err("sync", &self.path))?;
        match self.temp.take() {
            Some(t) => {
                t.persist(&target).map_err(|e| Error::Io {
                    action: "commit the blob to",
                    path: target.clone(),
                    source: e.error,
                })?;
            }
            None => {
                fs::rename(&self.path, &target).map_err(io_err("commit the blob to", &target))?
            }
        }
        drop(file);
        sync_dir(&self.blobs)?;
        Ok((actual, actual_size))
    }

    fn discard(&mut self) -> Result<()> {
        let removed = match self.temp.take() {
            Some(t) => t.close(),
            None => fs::remove_file(&self.path),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove the ingest file", &self.path)(e)),
        }
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("ingest already closed"))?;
        let n = out.write(buf)?;
        self.hasher.update(&buf[..n]);
        let in_file = self.hasher.len() - out.buffer().len() as u64;
        if in_file >= self.written_back + WRITEBACK_STEP {
            start_writeback(
                out.get_ref(),
                self.written_back,
                in_file - self.written_back,
            );
            self.written_back = in_file;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Resumable ingests keep their bytes for the next attempt.
        if self.temp.is_none() {
            if let Some(out) = self.out.as_mut() {
                let _ = out.flush();
            }
        }
    }
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk,
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so
/// that the fsync committing a large blob finds little left to write: a
/// layer's blob is written while it is compressed, and its commit otherwise
/// waited for all of it with the cores idle. Best effort: where the call
/// fails, the fsync does the work.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: no memory is passed; the descriptor is borrowed from `file`,
    // open for the whole call. (rustix has no sync_file_range.)
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Writes `data` to `path` through a temp file in the same directory, fsyncs
/// and renames; readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(data).map_err(io_err("write", path)))
}

/// The workspace's one atomic writer: `write` fills (buffered) a temp file
/// beside `path`, which is fsynced and renamed over `path`, then the
/// directory is fsynced. The temp file has a unique name and is locked
/// while written, so [`ContentStore::recover`] can tell a dead writer's
/// leftovers; it is removed if `write` fails. The file is 0666 less the
/// umask, like any file a program creates.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
) -> Result<()> {
    write_atomic_gated(path, None, write)
}

/// [`write_atomic_with`], the rename going through `gate` (an output of a
/// build that may be cancelled).
pub fn write_atomic_gated(
    path: &Path,
    gate: Option<&crate::CommitGate>,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (file, temp_path) =
        FileLock::create_unique(dir, &format!(".{file_name}{REF_TEMP_MARK}"), "")
            .map_err(io_err("create a temp file in", dir))?
            .into_parts();
    let temp_path = tempfile::TempPath::try_from_path(temp_path)
        .map_err(io_err("create a temp file in", dir))?;
    let mut temp = tempfile::NamedTempFile::from_parts(file, temp_path);
    {
        let mut w = BufWriter::with_capacity(1 << 20, temp.as_file_mut());
        write(&mut w)?;
        w.flush().map_err(io_err("write", path))?;
    }
    temp.as_file().sync_all().map_err(io_err("sync", path))?;
    let persist = || {
        temp.persist(path).map(drop).map_err(|e| Error::Io {
            action: "rename a temp file to",
            path: path.to_path_buf(),
            source: e.error,
        })
    };
    match gate {
        Some(g) => g.commit(path, persist)?,
        None => persist()?,
    }
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

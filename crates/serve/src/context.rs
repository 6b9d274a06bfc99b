//! The daemon's side of the context sync: one copy of each client context
//! (`contexts/<sha256 of host and path>/`) kept up to date with the work
//! proportional to what changed, in memory bounded by one manifest batch
//! (plus the digests asked for and not yet received).
//!
//! A context's state directory holds `dir` (the copy), `record` (the
//! manifest of the last session that completed, as length-delimited
//! `ContextEntry` messages in walk order), `lock` (one session per context
//! at a time) and, while the copy is being changed, `dirty` (a session
//! that finds it, or no record, starts the copy afresh).
//!
//! 1. As each manifest batch arrives, its entries are checked (relative
//!    paths, walk order, each entry's parent a listed directory), spooled to
//!    an unnamed temp file, and compared with the record, read alongside in
//!    the same order (a merge: neither side is ever held whole). The
//!    contents of changed files that the file cache (`context-files/<hex>`,
//!    shared by all contexts) lacks are asked for at once, so they stream in
//!    while the rest of the manifest still comes.
//! 2. When nothing changed, that is all: the copy and the record stay as
//!    they are, no file is read, written or even looked at. The digest of
//!    the `.dockerignore` and the manifest (the copy's generation) lets the
//!    build take the checksums it computed over the same copy before, so
//!    it does not look at the copy either.
//! 3. Otherwise the spool and the record are merged again: entries no
//!    longer listed are removed, changed ones created or replaced (regular
//!    files copied from the file cache), with their modes, owners and times;
//!    a directory's times are set again when the walk leaves it if anything
//!    in it changed. Each file written is entered into the solver's
//!    checksum cache of the copy with the client's digest, so the solver
//!    reads no content to compute its cache keys. The spool then becomes the
//!    record.

use crate::session::{next, proto, SessionError, Transfer, Tx};
use kbuild_proto::v1::{
    self, build_client_message::Message as In, build_server_message::Message as Out,
};
use kbuild_solver::checksums::ChecksumCache;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tonic::Streaming;

/// Digests asked for in one FileRequest.
const REQUEST_BATCH: usize = 4096;
/// The largest encoded entry a record may hold (a path and a link target
/// of at most 4 KiB each, and a digest, fit well within).
const MAX_ENTRY: u64 = 64 * 1024;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError {
    let path = path.display().to_string();
    move |source| SessionError::Context { path, source }
}

fn valid_rel(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The hex of a `sha256:` digest in lower case, or `None`.
fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// Walk order: component by component, so a directory's entries come
/// right after it and before its next sibling (`a`, `a/x`, `a.b`).
fn walk_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Whether `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

/// The name of a context's record in its state directory.
pub(crate) const RECORD: &str = "record";

/// Calls `f` with the hex digest of every file the record of the context
/// whose state directory is `state` lists.
pub(crate) fn listed_digests(state: &Path, mut f: impl FnMut(&str)) -> std::io::Result<()> {
    let mut r = Entries::new(BufReader::with_capacity(
        1 << 16,
        File::open(state.join(RECORD))?,
    ));
    while let Some(e) = r.next()? {
        if let Some(hex) = hex_of(&e.digest) {
            f(hex);
        }
    }
    Ok(())
}

/// Reads length-delimited entries one at a time.
struct Entries<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: Read> Entries<R> {
    fn new(r: R) -> Entries<R> {
        Entries { r, buf: Vec::new() }
    }

    fn next(&mut self) -> std::io::Result<Option<v1::ContextEntry>> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let mut b = [0u8];
            if self.r.read(&mut b)? == 0 {
                if shift == 0 {
                    return Ok(None);
                }
                return Err(bad("a record entry is cut short"));
            }
            len |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(bad("a record entry's length is not a varint"));
            }
        }
        if len > MAX_ENTRY {
            return Err(bad("a record entry is too large"));
        }
        self.buf.resize(len as usize, 0);
        self.r.read_exact(&mut self.buf)?;
        v1::ContextEntry::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|e| bad(&format!("a record entry does not decode: {e}")))
    }
}

fn write_entry(w: &mut impl Write, e: &v1::ContextEntry, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    e.encode_length_delimited(buf)
        .map_err(std::io::Error::other)?;
    w.write_all(buf)
}

/// A context's state directory and its files.
struct State {
    state: PathBuf,
}

impl State {
    fn dir(&self) -> PathBuf {
        self.state.join("dir")
    }
    fn record(&self) -> PathBuf {
        self.state.join(RECORD)
    }
    fn dirty(&self) -> PathBuf {
        self.state.join("dirty")
    }
    /// The last record, unless the copy must start afresh.
    fn open_record(&self) -> Result<Option<Entries<BufReader<File>>>, SessionError> {
        // An older daemon's record (JSON): the copy starts afresh.
        let legacy = self.state.join("entries.json");
        if legacy.exists() {
            std::fs::remove_file(&legacy).map_err(io(&legacy))?;
            return Ok(None);
        }
        if self.dirty().exists() || !self.dir().is_dir() {
            return Ok(None);
        }
        match File::open(self.record()) {
            Ok(f) => Ok(Some(Entries::new(BufReader::with_capacity(1 << 16, f)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&self.record())(e)),
        }
    }
}

/// Phase 1: the manifest as it streams in, compared with the record.
struct Compare {
    old: Option<Entries<BufReader<File>>>,
    /// The record's next entry.
    peek: Option<v1::ContextEntry>,
    /// The record could not be read to its end: the copy starts afresh.
    fresh: bool,
    spool: BufWriter<File>,
    buf: Vec<u8>,
    last: Option<String>,
    /// The directories the walk is in (each an ancestor of the next entry).
    dirs: Vec<String>,
    changed: u64,
    removed: u64,
    /// Contents asked for in this session.
    asked: HashSet<[u8; 32]>,
    /// The digest of the `.dockerignore` and the manifest: the copy's
    /// generation once the sync is done.
    generation: Sha256,
}

impl Compare {
    fn advance(&mut self) {
        self.peek = match self.old.as_mut().map(Entries::next) {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the context's record is damaged: its copy starts afresh");
                self.fresh = true;
                self.old = None;
                None
            }
            None => None,
        };
    }

    /// Checks and spools `e`; adds its digest to `missing` when its content
    /// must be asked for.
    fn add(
        &mut self,
        e: v1::ContextEntry,
        files: &Path,
        missing: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        if !valid_rel(&e.path) {
            return Err(proto(format!(
                "context entry {:?}: not a relative path",
                e.path
            )));
        }
        if let Some(last) = &self.last {
            if walk_order(last, &e.path) != Ordering::Less {
                return Err(proto(format!(
                    "context entry {:?} after {last:?}: entries must come once each, in walk order",
                    e.path
                )));
            }
        }
        while self.dirs.last().is_some_and(|d| !within(&e.path, d)) {
            self.dirs.pop();
        }
        if let Some(parent) = parent_of(&e.path) {
            if self.dirs.last().map(String::as_str) != Some(parent) {
                return Err(proto(format!(
                    "context entry {:?}: its directory is not listed",
                    e.path
                )));
            }
        }
        let kind = e.mode & S_IFMT;
        if kind == S_IFDIR {
            self.dirs.push(e.path.clone());
        }
        let hex = if kind == S_IFREG {
            Some(hex_of(&e.digest).ok_or_else(|| {
                proto(format!(
                    "context entry {:?}: bad digest {:?}",
                    e.path, e.digest
                ))
            })?)
        } else {
            None
        };
        // The record's entries before this one are gone from the context.
        while let Some(o) = &self.peek {
            match walk_order(&o.path, &e.path) {
                Ordering::Less => {
                    self.removed += 1;
                    self.advance();
                }
                _ => break,
            }
        }
        let same = self.peek.as_ref() == Some(&e);
        if self.peek.as_ref().is_some_and(|o| o.path == e.path) {
            self.advance();
        }
        if !same {
            self.changed += 1;
            if let Some(hex) = hex {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(hex, &mut raw)
                    .map_err(|_| proto(format!("bad digest {:?}", e.digest)))?;
                if !self.asked.contains(&raw) && !files.join(hex).exists() {
                    self.asked.insert(raw);
                    missing.push(e.digest.clone());
                }
            }
        }
        write_entry(&mut self.spool, &e, &mut self.buf)
            .map_err(io(Path::new("the context spool")))?;
        self.generation.update(&self.buf);
        self.last = Some(e.path);
        Ok(())
    }

    /// Whether the copy must change, as far as the manifest came.
    fn changing(&self) -> bool {
        self.fresh || self.old.is_none() || self.changed > 0 || self.removed > 0
    }

    /// Whether the copy must change (called once the manifest is complete).
    fn any_change(&mut self) -> bool {
        if self.peek.is_some() {
            self.removed += 1;
        }
        self.fresh || self.old.is_none() || self.changed > 0 || self.removed > 0
    }
}

/// A content being received.
struct Receiving {
    digest: String,
    temp: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

/// What a sync leaves the build.
pub(crate) struct Synced {
    /// The context's lock: hold it while the build reads the copy.
    pub(crate) lock: kbuild_image::lock::FileLock,
    /// The solver's cache of the copy, told each written file's digest.
    pub(crate) checksums: ChecksumCache,
    /// A digest of the `.dockerignore` and the manifest the copy now
    /// holds (every entry's path, kind, mode, owner, time, link target
    /// and content digest): the same generation, the same copy.
    pub(crate) generation: [u8; 32],
}

/// Brings the context copy under `state` to the client's manifest, asking
/// for the contents missing from `files` (see the module docs); the
/// build reads the copy with `dockerignore`'s rules. Counts what came and
/// what was written in `transfer`.
pub(crate) async fn sync(
    state: &Path,
    files: &Path,
    dockerignore: &str,
    checksums: ChecksumCache,
    inbound: &mut Streaming<v1::BuildClientMessage>,
    tx: &Tx,
    transfer: &mut Transfer,
) -> Result<Synced, SessionError> {
    std::fs::create_dir_all(state).map_err(io(state))?;
    std::fs::create_dir_all(files).map_err(io(files))?;
    // One session per context at a time.
    let lock_path = state.join("lock");
    let lock = tokio::task::spawn_blocking(move || {
        kbuild_image::lock::FileLock::acquire(&lock_path, kbuild_image::lock::LockMode::Exclusive)
    })
    .await
    .map_err(|source| SessionError::Join {
        what: "lock the context",
        source,
    })?
    .map_err(io(state))?;
    // The solver's cache is read while the manifest comes, once something
    // changed: a copy that stays as it is needs none of it when the build's
    // checksums over this generation are remembered.
    enum Cache {
        Kept(ChecksumCache),
        Loading(tokio::task::JoinHandle<ChecksumCache>),
    }
    let mut cache = Cache::Kept(checksums);
    let st = State {
        state: state.to_path_buf(),
    };
    let spool = tempfile::tempfile_in(state).map_err(io(state))?;
    let mut cmp = Compare {
        old: st.open_record()?,
        peek: None,
        fresh: false,
        spool: BufWriter::with_capacity(1 << 16, spool),
        buf: Vec::new(),
        last: None,
        dirs: Vec::new(),
        changed: 0,
        removed: 0,
        asked: HashSet::new(),
        generation: Sha256::new(),
    };
    cmp.generation
        .update((dockerignore.len() as u64).to_le_bytes());
    cmp.generation.update(dockerignore.as_bytes());
    cmp.advance();
    let mut manifest_done = false;
    let mut waiting: VecDeque<String> = VecDeque::new();
    let mut current: Option<Receiving> = None;
    while !manifest_done || !waiting.is_empty() {
        match next(inbound).await? {
            In::Manifest(m) => {
                if manifest_done {
                    return Err(proto("a context manifest after the complete one"));
                }
                let mut missing = Vec::new();
                for e in m.entries {
                    cmp.add(e, files, &mut missing)?;
                }
                manifest_done = m.complete;
                if cmp.changing() {
                    cache = match cache {
                        Cache::Kept(c) => Cache::Loading(tokio::task::spawn_blocking(move || {
                            c.preload();
                            c
                        })),
                        loading => loading,
                    };
                }
                for batch in missing.chunks(REQUEST_BATCH) {
                    tx.send(Ok(v1::BuildServerMessage {
                        message: Some(Out::FileRequest(v1::FileRequest {
                            digests: batch.to_vec(),
                        })),
                    }))
                    .await
                    .map_err(|_| SessionError::Gone)?;
                }
                waiting.extend(missing);
            }
            In::File(chunk) => {
                let Some(digest) = waiting.front() else {
                    return Err(proto(format!(
                        "content {} that was not asked for",
                        chunk.digest
                    )));
                };
                let r = match current.as_mut() {
                    Some(r) => r,
                    None => current.insert(Receiving {
                        digest: digest.clone(),
                        temp: tempfile::Builder::new()
                            .prefix(".in-")
                            .tempfile_in(files)
                            .map_err(io(files))?,
                        hasher: Sha256::new(),
                        size: 0,
                    }),
                };
                if chunk.digest != r.digest || chunk.offset != r.size {
                    return Err(proto(format!(
                        "expected {} at offset {}, got {} at {}",
                        r.digest, r.size, chunk.digest, chunk.offset
                    )));
                }
                r.hasher.update(&chunk.data);
                r.temp.write_all(&chunk.data).map_err(io(files))?;
                r.size += chunk.data.len() as u64;
                transfer.bytes += chunk.data.len() as u64;
                if chunk.last {
                    let Some(r) = current.take() else {
                        continue;
                    };
                    let got = format!("sha256:{}", hex::encode(r.hasher.finalize()));
                    if got != r.digest {
                        return Err(proto(format!(
                            "a context file changed while it was sent (expected {}, got {got}); build again",
                            r.digest
                        )));
                    }
                    let target = files.join(hex_of(&r.digest).unwrap_or_default());
                    r.temp.persist(&target).map_err(|e| SessionError::Context {
                        path: target.display().to_string(),
                        source: e.error,
                    })?;
                    transfer.files += 1;
                    waiting.pop_front();
                }
            }
            In::Cancel(_) => return Err(SessionError::Cancelled),
            _ => return Err(proto("expected the context manifest or file content")),
        }
    }
    let checksums = match cache {
        Cache::Kept(c) => c,
        Cache::Loading(loading) => loading.await.map_err(|source| SessionError::Join {
            what: "read the context's checksums",
            source,
        })?,
    };
    let generation: [u8; 32] = cmp.generation.clone().finalize().into();
    if !cmp.any_change() {
        // The record's time says when the context was last used (the
        // collection keeps the most recent).
        let record = st.record();
        std::fs::File::options()
            .write(true)
            .open(&record)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(io(&record))?;
        return Ok(Synced {
            lock,
            checksums,
            generation,
        });
    }
    let fresh = cmp.fresh || cmp.old.is_none();
    drop(cmp.old.take());
    let mut spool = cmp
        .spool
        .into_inner()
        .map_err(|e| io(Path::new("the context spool"))(e.into_error()))?;
    let files = files.to_path_buf();
    let (written, checksums) = tokio::task::spawn_blocking(move || {
        commit(&st, &files, &mut spool, fresh, &checksums).map(|w| (w, checksums))
    })
    .await
    .map_err(|source| SessionError::Join {
        what: "update the context copy",
        source,
    })??;
    transfer.written = written;
    Ok(Synced {
        lock,
        checksums,
        generation,
    })
}

/// Phases 3 and 4: brings the copy to the spooled manifest, then makes the
/// spool the record. Returns the entries written.
fn commit(
    st: &State,
    files: &Path,
    spool: &mut File,
    fresh: bool,
    checksums: &ChecksumCache,
) -> Result<u64, SessionError> {
    spool.rewind().map_err(io(Path::new("the context spool")))?;
    let written = apply(st, files, spool, fresh, checksums)?;
    spool.rewind().map_err(io(Path::new("the context spool")))?;
    kbuild_image::write_atomic_with(&st.record(), |w| {
        std::io::copy(spool, w)
            .map(|_| ())
            .map_err(|source| kbuild_image::Error::Io {
                action: "write",
                path: st.record(),
                source,
            })
    })?;
    std::fs::remove_file(st.dirty()).map_err(io(&st.dirty()))?;
    // Kept now, whatever becomes of the build: the next session that finds
    // nothing changed relies on it.
    if let Err(e) = checksums.save(&st.dir()) {
        tracing::warn!(error = %e, "could not keep the context checksum cache");
    }
    Ok(written)
}

fn set_times(path: &Path, nanos: i64) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let t = Timespec {
        tv_sec: nanos.div_euclid(1_000_000_000),
        tv_nsec: nanos.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A new file in `parent` with the content of the file cache's `src`: the
/// cache file itself (a hard link, so the content is written once) when no
/// copy of a context links it yet, else a copy. The content of a copy's
/// file is never written in place (changes replace it), so the cache entry
/// stays intact; its owner, mode and times become the copy's, which the
/// cache does not use. Checking and linking happen under a lock on the
/// cache file, so two copies never share one inode (and its metadata).
fn place(src: &Path, parent: &Path) -> std::io::Result<tempfile::TempPath> {
    use std::os::unix::fs::MetadataExt;
    let cached = File::open(src)?;
    rustix::fs::flock(&cached, rustix::fs::FlockOperation::LockExclusive)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".sync-");
    if cached.metadata()?.nlink() == 1 {
        if let Ok(t) = builder.make_in(parent, |p| std::fs::hard_link(src, p)) {
            return Ok(t.into_temp_path());
        }
    }
    let temp = builder.tempfile_in(parent)?;
    std::fs::copy(src, temp.path())?;
    Ok(temp.into_temp_path())
}

/// A directory the walk is in: its path, its times, whether they must be
/// set again when the walk leaves it.
struct OpenDir {
    path: String,
    mtime: i64,
    touched: bool,
}

/// Leaves the directories `path` is not in, setting the times of those
/// whose contents changed.
fn leave(dir: &Path, open: &mut Vec<OpenDir>, path: Option<&str>) -> Result<(), SessionError> {
    while let Some(d) = open.last() {
        if path.is_some_and(|p| within(p, &d.path) && p != d.path) {
            break;
        }
        if d.touched {
            let target = dir.join(&d.path);
            set_times(&target, d.mtime).map_err(io(&target))?;
        }
        open.pop();
    }
    Ok(())
}

/// Marks the directory holding `path` as changed.
fn touch_parent(open: &mut [OpenDir], path: &str) {
    if let (Some(parent), Some(d)) = (parent_of(path), open.last_mut()) {
        if d.path == parent {
            d.touched = true;
        }
    }
}

/// Phase 3: brings the copy to the spooled manifest. Returns the entries
/// written.
fn apply(
    st: &State,
    files: &Path,
    spool: &mut File,
    fresh: bool,
    checksums: &ChecksumCache,
) -> Result<u64, SessionError> {
    let dir = st.dir();
    let old = if fresh {
        None
    } else {
        st.open_record()?.map(|mut r| (r.next(), r))
    };
    // From here until the record is written, the copy is neither the old
    // record's nor the new one's.
    kbuild_image::write_atomic(&st.dirty(), b"")?;
    if fresh {
        remove_any(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut old = match old {
        Some((first, r)) => first.map_err(io(&st.record()))?.map(|e| (e, r)),
        None => None,
    };
    // Phase 1 read the record to its end; should it fail now, the session
    // fails and the next one, finding `dirty`, starts afresh.
    let record = st.record();
    let next_old = |old: &mut Option<(v1::ContextEntry, Entries<BufReader<File>>)>| {
        if let Some((o, r)) = old.as_mut() {
            if let Some(e) = r.next().map_err(io(&record))? {
                *o = e;
                return Ok(());
            }
        }
        *old = None;
        Ok::<(), SessionError>(())
    };
    let mut new = Entries::new(BufReader::with_capacity(1 << 16, &mut *spool));
    let mut open: Vec<OpenDir> = Vec::new();
    let mut written = 0u64;
    loop {
        let e = new.next().map_err(io(Path::new("the context spool")))?;
        // Entries of the record before `e` (all of them after the last) are
        // no longer in the context.
        while let Some((o, _)) = old.as_ref() {
            if e.as_ref()
                .is_some_and(|e| walk_order(&o.path, &e.path) != Ordering::Less)
            {
                break;
            }
            let gone = o.path.clone();
            leave(&dir, &mut open, Some(&gone))?;
            let target = dir.join(&gone);
            remove_any(&target).map_err(io(&target))?;
            touch_parent(&mut open, &gone);
            next_old(&mut old)?;
            while old.as_ref().is_some_and(|(o, _)| within(&o.path, &gone)) {
                next_old(&mut old)?;
            }
        }
        let Some(e) = e else { break };
        leave(&dir, &mut open, Some(&e.path))?;
        let prev = match old.as_ref() {
            Some((o, _)) if o.path == e.path => {
                let o = o.clone();
                next_old(&mut old)?;
                Some(o)
            }
            _ => None,
        };
        let kind = e.mode & S_IFMT;
        if prev.as_ref().is_some_and(|p| p.mode & S_IFMT == S_IFDIR) && kind != S_IFDIR {
            // What was below the directory goes with it.
            while old.as_ref().is_some_and(|(o, _)| within(&o.path, &e.path)) {
                next_old(&mut old)?;
            }
        }
        if prev.as_ref() == Some(&e) {
            if kind == S_IFDIR {
                open.push(OpenDir {
                    path: e.path.clone(),
                    mtime: e.mtime_unix_nanos,
                    touched: false,
                });
            }
            continue;
        }
        let target = dir.join(&e.path);
        let current = std::fs::symlink_metadata(&target).ok();
        match kind {
            S_IFDIR => {
                if !current.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&target).map_err(io(&target))?;
                    std::fs::create_dir(&target).map_err(io(&target))?;
                }
            }
            S_IFLNK => {
                remove_any(&target).map_err(io(&target))?;
                std::os::unix::fs::symlink(&e.link_target, &target).map_err(io(&target))?;
            }
            S_IFREG => {
                let hex = hex_of(&e.digest).unwrap_or_default();
                let src = files.join(hex);
                let parent = target.parent().unwrap_or(&dir);
                let temp = place(&src, parent).map_err(|source| SessionError::Context {
                    path: format!("{} (the content of {}; build again)", src.display(), e.path),
                    source,
                })?;
                remove_any(&target).map_err(io(&target))?;
                temp.persist(&target).map_err(|e| SessionError::Context {
                    path: target.display().to_string(),
                    source: e.error,
                })?;
            }
            // Other kinds (sockets, devices) are never sent.
            _ => continue,
        }
        std::os::unix::fs::lchown(&target, Some(e.uid), Some(e.gid)).map_err(io(&target))?;
        if kind != S_IFLNK {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(io(&target))?;
        }
        touch_parent(&mut open, &e.path);
        if kind == S_IFDIR {
            open.push(OpenDir {
                path: e.path.clone(),
                mtime: e.mtime_unix_nanos,
                touched: true,
            });
        } else {
            set_times(&target, e.mtime_unix_nanos).map_err(io(&target))?;
        }
        if kind == S_IFREG {
            let md = std::fs::symlink_metadata(&target).map_err(io(&target))?;
            checksums.insert_known(&e.path, &md, hex_of(&e.digest).unwrap_or_default());
        }
        written += 1;
    }
    leave(&dir, &mut open, None)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_is_component_by_component() {
        let mut v = vec!["a.b", "a/x", "a", "a/x/y", "b", "a-c/z"];
        v.sort_by(|a, b| walk_order(a, b));
        assert_eq!(v, ["a", "a/x", "a/x/y", "a-c/z", "a.b", "b"]);
        assert!(within("a/x", "a") && within("a", "a") && !within("ab", "a"));
    }

    fn entry(path: &str, kind: u32, content: Option<&str>) -> v1::ContextEntry {
        v1::ContextEntry {
            path: path.to_string(),
            mode: kind | if kind == S_IFDIR { 0o755 } else { 0o644 },
            mtime_unix_nanos: 1_000_000_000,
            size: content.map_or(0, |c| c.len() as u64),
            digest: content
                .map(|c| format!("sha256:{}", hex::encode(Sha256::digest(c))))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn spooled(entries: &[v1::ContextEntry]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        let mut buf = Vec::new();
        for e in entries {
            write_entry(&mut f, e, &mut buf).unwrap();
        }
        f
    }

    #[test]
    fn the_copy_follows_the_list_through_kind_changes_and_removals() {
        let t = tempfile::tempdir().unwrap();
        let st = State {
            state: t.path().join("state"),
        };
        let files = t.path().join("files");
        std::fs::create_dir_all(&st.state).unwrap();
        std::fs::create_dir_all(&files).unwrap();
        for c in ["one", "two"] {
            let hex = hex::encode(Sha256::digest(c));
            std::fs::write(files.join(hex), c).unwrap();
        }
        let cache = ChecksumCache::load(&t.path().join("checksums"), &st.dir());
        let first = [
            entry("a", S_IFDIR, None),
            entry("a/x", S_IFREG, Some("one")),
            entry("b", S_IFREG, Some("one")),
            entry("c", S_IFDIR, None),
            entry("c/d", S_IFDIR, None),
            entry("c/d/y", S_IFREG, Some("two")),
        ];
        let written = commit(&st, &files, &mut spooled(&first), true, &cache).unwrap();
        assert_eq!(written, 6);
        let dir = st.dir();
        assert_eq!(std::fs::read_to_string(dir.join("a/x")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "one");
        assert!(!st.dirty().exists());
        // The same list again: nothing to write.
        let again = commit(&st, &files, &mut spooled(&first), false, &cache).unwrap();
        assert_eq!(again, 0);
        // a: directory to file, b: file to directory, c and all below it
        // gone, e new.
        let second = [
            entry("a", S_IFREG, Some("two")),
            entry("b", S_IFDIR, None),
            entry("b/z", S_IFREG, Some("one")),
            entry("e", S_IFREG, Some("two")),
        ];
        let written = commit(&st, &files, &mut spooled(&second), false, &cache).unwrap();
        assert_eq!(written, 4);
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(dir.join("b/z")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("e")).unwrap(), "two");
        assert!(!dir.join("c").exists());
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "e"]);
        // Times as listed, directories included (set after their contents).
        let md = std::fs::symlink_metadata(dir.join("b")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&md), 1);
        // The solver's cache knows every written file without reading it.
        let path = dir.join("b/z");
        let digest = cache
            .digest("b/z", &path, &std::fs::symlink_metadata(&path).unwrap())
            .unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest("one")));
        assert_eq!(cache.hashed_bytes(), 0);
    }

    #[test]
    fn entries_round_trip_through_a_record() {
        let entries: Vec<v1::ContextEntry> = (0..300)
            .map(|i| v1::ContextEntry {
                path: format!("d/f{i:03}"),
                mode: S_IFREG | 0o644,
                size: i,
                digest: format!("sha256:{:064x}", i),
                ..Default::default()
            })
            .collect();
        let mut bytes = Vec::new();
        let mut buf = Vec::new();
        for e in &entries {
            write_entry(&mut bytes, e, &mut buf).unwrap();
        }
        let mut r = Entries::new(bytes.as_slice());
        let mut back = Vec::new();
        while let Some(e) = r.next().unwrap() {
            back.push(e);
        }
        assert_eq!(back, entries);
        // Cut short: an error, not a silent end.
        let mut r = Entries::new(&bytes[..bytes.len() - 3]);
        let mut err = None;
        loop {
            match r.next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.is_some());
    }
}

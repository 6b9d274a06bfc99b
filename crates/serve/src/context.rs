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

use crate::session::{next, ProtocolError, SessionError, Transfer, Tx};
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

/// Why a record (or the spool) cannot be read back.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("a record entry is cut short")]
    CutShort,
    #[error("a record entry's length is not a varint")]
    NotVarint,
    #[error("a record entry is too large")]
    TooLarge,
    #[error("a record entry does not decode: {0}")]
    Decode(#[source] prost::DecodeError),
}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
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
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let mut b = [0u8];
            if self.r.read(&mut b)? == 0 {
                if shift == 0 {
                    return Ok(None);
                }
                return Err(RecordError::CutShort.into());
            }
            len |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(RecordError::NotVarint.into());
            }
        }
        if len > MAX_ENTRY {
            return Err(RecordError::TooLarge.into());
        }
        self.buf.resize(len as usize, 0);
        self.r.read_exact(&mut self.buf)?;
        v1::ContextEntry::decode(self.buf.as_slice())
            .map(Some)
            .map_err(|e| RecordError::Decode(e).into())
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
    /// Compares with `old` (the record, unless the copy starts afresh),
    /// spooling into `spool`; the generation starts with `dockerignore`.
    fn new(old: Option<Entries<BufReader<File>>>, spool: File, dockerignore: &str) -> Compare {
        let mut generation = Sha256::new();
        generation.update((dockerignore.len() as u64).to_le_bytes());
        generation.update(dockerignore.as_bytes());
        let mut cmp = Compare {
            old,
            peek: None,
            fresh: false,
            spool: BufWriter::with_capacity(1 << 16, spool),
            buf: Vec::new(),
            last: None,
            dirs: Vec::new(),
            changed: 0,
            removed: 0,
            asked: HashSet::new(),
            generation,
        };
        cmp.advance();
        cmp
    }

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
            return Err(ProtocolError::NotRelative { path: e.path }.into());
        }
        if let Some(last) = &self.last {
            if walk_order(last, &e.path) != Ordering::Less {
                return Err(ProtocolError::OutOfOrder {
                    path: e.path,
                    after: last.clone(),
                }
                .into());
            }
        }
        while self.dirs.last().is_some_and(|d| !within(&e.path, d)) {
            self.dirs.pop();
        }
        if let Some(parent) = parent_of(&e.path) {
            if self.dirs.last().map(String::as_str) != Some(parent) {
                return Err(ProtocolError::UnlistedDirectory { path: e.path }.into());
            }
        }
        let kind = e.mode & S_IFMT;
        if kind == S_IFDIR {
            self.dirs.push(e.path.clone());
        }
        let hex = if kind == S_IFREG {
            Some(hex_of(&e.digest).ok_or_else(|| ProtocolError::BadDigest {
                path: e.path.clone(),
                digest: e.digest.clone(),
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
                hex::decode_to_slice(hex, &mut raw).map_err(|source| {
                    ProtocolError::UndecodableDigest {
                        digest: e.digest.clone(),
                        source,
                    }
                })?;
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

impl Receiving {
    /// Starts receiving `digest` into a temporary file of the file cache.
    fn new(digest: &str, files: &Path) -> Result<Receiving, SessionError> {
        Ok(Receiving {
            digest: digest.to_string(),
            temp: tempfile::Builder::new()
                .prefix(".in-")
                .tempfile_in(files)
                .map_err(io(files))?,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// The content is complete: checked against its digest, it enters the
    /// file cache.
    fn keep(self, files: &Path) -> Result<(), SessionError> {
        let got = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if got != self.digest {
            return Err(ProtocolError::ContentChanged {
                expected: self.digest,
                got,
            }
            .into());
        }
        let target = files.join(hex_of(&self.digest).unwrap_or_default());
        self.temp
            .persist(&target)
            .map_err(|e| SessionError::Context {
                path: target.display().to_string(),
                source: e.error,
            })?;
        Ok(())
    }
}

/// The solver's cache of the copy. It is read while the manifest comes,
/// once something changed: a copy that stays as it is needs none of it
/// when the build's checksums over this generation are remembered.
enum Cache {
    Kept(Box<ChecksumCache>),
    Loading(tokio::task::JoinHandle<Box<ChecksumCache>>),
}

impl Cache {
    /// Starts reading the cache, unless that already began.
    fn preload(self) -> Cache {
        match self {
            Cache::Kept(c) => Cache::Loading(tokio::task::spawn_blocking(move || {
                c.preload();
                c
            })),
            loading => loading,
        }
    }

    async fn ready(self) -> Result<ChecksumCache, SessionError> {
        match self {
            Cache::Kept(c) => Ok(*c),
            Cache::Loading(loading) => {
                loading
                    .await
                    .map(|c| *c)
                    .map_err(|source| SessionError::Join {
                        what: "read the context's checksums",
                        source,
                    })
            }
        }
    }
}

/// Phase 1 as the client's messages come: the manifest compared with the
/// record, and the contents asked for received into the file cache in
/// the order they were asked for.
struct Receive<'a> {
    files: &'a Path,
    cmp: Compare,
    manifest_done: bool,
    /// The contents asked for and not yet received, in order.
    waiting: VecDeque<String>,
    current: Option<Receiving>,
    transfer: &'a mut Transfer,
}

impl Receive<'_> {
    /// Whether the manifest and every content asked for came.
    fn done(&self) -> bool {
        self.manifest_done && self.waiting.is_empty()
    }

    /// Compares and spools one manifest batch; returns the digests of the
    /// contents to ask for.
    fn manifest(&mut self, m: v1::ContextManifest) -> Result<Vec<String>, SessionError> {
        if self.manifest_done {
            return Err(ProtocolError::ManifestAfterComplete.into());
        }
        let mut missing = Vec::new();
        for e in m.entries {
            self.cmp.add(e, self.files, &mut missing)?;
        }
        self.manifest_done = m.complete;
        Ok(missing)
    }

    /// Asks the client for `missing` at once, so the contents stream in
    /// while the rest of the manifest still comes.
    async fn ask(&mut self, missing: Vec<String>, tx: &Tx) -> Result<(), SessionError> {
        for batch in missing.chunks(REQUEST_BATCH) {
            tx.send(Ok(v1::BuildServerMessage {
                message: Some(Out::FileRequest(v1::FileRequest {
                    digests: batch.to_vec(),
                })),
            }))
            .await
            .map_err(|_| SessionError::Gone)?;
        }
        self.waiting.extend(missing);
        Ok(())
    }

    /// Writes one chunk of the content asked for first.
    fn content(&mut self, chunk: v1::FileChunk) -> Result<(), SessionError> {
        let Some(digest) = self.waiting.front() else {
            return Err(ProtocolError::NotAskedFor {
                digest: chunk.digest,
            }
            .into());
        };
        let r = match self.current.as_mut() {
            Some(r) => r,
            None => self.current.insert(Receiving::new(digest, self.files)?),
        };
        if chunk.digest != r.digest || chunk.offset != r.size {
            return Err(ProtocolError::OutOfSequence {
                expected: r.digest.clone(),
                offset: r.size,
                got: chunk.digest,
                got_offset: chunk.offset,
            }
            .into());
        }
        r.hasher.update(&chunk.data);
        r.temp.write_all(&chunk.data).map_err(io(self.files))?;
        r.size += chunk.data.len() as u64;
        self.transfer.bytes += chunk.data.len() as u64;
        if chunk.last {
            if let Some(r) = self.current.take() {
                r.keep(self.files)?;
                self.transfer.files += 1;
                self.waiting.pop_front();
            }
        }
        Ok(())
    }
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
    let lock = lock_context(state).await?;
    let st = State {
        state: state.to_path_buf(),
    };
    let spool = tempfile::tempfile_in(state).map_err(io(state))?;
    let mut cache = Cache::Kept(Box::new(checksums));
    let mut receive = Receive {
        files,
        cmp: Compare::new(st.open_record()?, spool, dockerignore),
        manifest_done: false,
        waiting: VecDeque::new(),
        current: None,
        transfer,
    };
    while !receive.done() {
        match next(inbound).await? {
            In::Manifest(m) => {
                let missing = receive.manifest(m)?;
                if receive.cmp.changing() {
                    cache = cache.preload();
                }
                receive.ask(missing, tx).await?;
            }
            In::File(chunk) => receive.content(chunk)?,
            In::Cancel(_) => return Err(SessionError::Cancelled),
            _ => return Err(ProtocolError::ExpectedManifestOrContent.into()),
        }
    }
    let Receive { cmp, transfer, .. } = receive;
    let checksums = cache.ready().await?;
    let generation: [u8; 32] = cmp.generation.clone().finalize().into();
    let (written, checksums) = settle(st, files, cmp, checksums).await?;
    transfer.written = written;
    Ok(Synced {
        lock,
        checksums,
        generation,
    })
}

/// Takes the context's lock: one session per context at a time.
async fn lock_context(state: &Path) -> Result<kbuild_image::lock::FileLock, SessionError> {
    let lock_path = state.join("lock");
    tokio::task::spawn_blocking(move || {
        kbuild_image::lock::FileLock::acquire(&lock_path, kbuild_image::lock::LockMode::Exclusive)
    })
    .await
    .map_err(|source| SessionError::Join {
        what: "lock the context",
        source,
    })?
    .map_err(io(state))
}

/// Phase 2, or phases 3 and 4, once the manifest and its contents are in:
/// when nothing changed only the record's time is set, otherwise the copy
/// is brought to the spool, which becomes the record. Returns the entries
/// written, and the solver's cache of the copy told their digests.
async fn settle(
    st: State,
    files: &Path,
    mut cmp: Compare,
    checksums: ChecksumCache,
) -> Result<(u64, ChecksumCache), SessionError> {
    if !cmp.any_change() {
        // The record's time says when the context was last used (the
        // collection keeps the most recent).
        let record = st.record();
        std::fs::File::options()
            .write(true)
            .open(&record)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(io(&record))?;
        return Ok((0, checksums));
    }
    let fresh = cmp.fresh || cmp.old.is_none();
    drop(cmp.old.take());
    let mut spool = cmp
        .spool
        .into_inner()
        .map_err(|e| io(Path::new("the context spool"))(e.into_error()))?;
    let files = files.to_path_buf();
    tokio::task::spawn_blocking(move || {
        commit(&st, &files, &mut spool, fresh, &checksums).map(|w| (w, checksums))
    })
    .await
    .map_err(|source| SessionError::Join {
        what: "update the context copy",
        source,
    })?
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
    let old = match old {
        Some((first, r)) => first.map_err(io(&st.record()))?.map(|e| (e, r)),
        None => None,
    };
    let mut walk = Walk {
        dir,
        files,
        checksums,
        old: Previous {
            record: st.record(),
            cursor: old,
        },
        open: Vec::new(),
        written: 0,
    };
    let mut new = Entries::new(BufReader::with_capacity(1 << 16, &mut *spool));
    loop {
        let e = new.next().map_err(io(Path::new("the context spool")))?;
        walk.remove_gone(e.as_ref())?;
        let Some(e) = e else { break };
        walk.entry(e)?;
    }
    leave(&walk.dir, &mut walk.open, None)?;
    Ok(walk.written)
}

/// The record of the copy, read alongside the spool in phase 3. Phase 1
/// read it to its end; should it fail now, the session fails and the next
/// one, finding `dirty`, starts afresh.
struct Previous {
    record: PathBuf,
    /// The record's next entry and the rest of it.
    cursor: Option<(v1::ContextEntry, Entries<BufReader<File>>)>,
}

impl Previous {
    fn peek(&self) -> Option<&v1::ContextEntry> {
        self.cursor.as_ref().map(|(o, _)| o)
    }

    fn advance(&mut self) -> Result<(), SessionError> {
        if let Some((o, r)) = self.cursor.as_mut() {
            if let Some(e) = r.next().map_err(io(&self.record))? {
                *o = e;
                return Ok(());
            }
        }
        self.cursor = None;
        Ok(())
    }

    /// Passes the entries below `dir`.
    fn skip_below(&mut self, dir: &str) -> Result<(), SessionError> {
        while self.peek().is_some_and(|o| within(&o.path, dir)) {
            self.advance()?;
        }
        Ok(())
    }

    /// The record's entry for `path`, if it is the next one.
    fn take(&mut self, path: &str) -> Result<Option<v1::ContextEntry>, SessionError> {
        match self.peek() {
            Some(o) if o.path == path => {
                let o = o.clone();
                self.advance()?;
                Ok(Some(o))
            }
            _ => Ok(None),
        }
    }
}

/// Phase 3's walk through the copy.
struct Walk<'a> {
    dir: PathBuf,
    files: &'a Path,
    checksums: &'a ChecksumCache,
    old: Previous,
    /// The directories the walk is in.
    open: Vec<OpenDir>,
    written: u64,
}

impl Walk<'_> {
    /// Removes the record's entries before `next` (all of them once the
    /// spool ends): they are no longer in the context.
    fn remove_gone(&mut self, next: Option<&v1::ContextEntry>) -> Result<(), SessionError> {
        while let Some(o) = self.old.peek() {
            if next.is_some_and(|e| walk_order(&o.path, &e.path) != Ordering::Less) {
                break;
            }
            let gone = o.path.clone();
            leave(&self.dir, &mut self.open, Some(&gone))?;
            let target = self.dir.join(&gone);
            remove_any(&target).map_err(io(&target))?;
            touch_parent(&mut self.open, &gone);
            self.old.advance()?;
            self.old.skip_below(&gone)?;
        }
        Ok(())
    }

    /// Brings `e` into the copy unless the record lists it the same.
    fn entry(&mut self, e: v1::ContextEntry) -> Result<(), SessionError> {
        leave(&self.dir, &mut self.open, Some(&e.path))?;
        let prev = self.old.take(&e.path)?;
        let kind = e.mode & S_IFMT;
        if prev.as_ref().is_some_and(|p| p.mode & S_IFMT == S_IFDIR) && kind != S_IFDIR {
            // What was below the directory goes with it.
            self.old.skip_below(&e.path)?;
        }
        if prev.as_ref() == Some(&e) {
            if kind == S_IFDIR {
                self.open.push(OpenDir {
                    path: e.path,
                    mtime: e.mtime_unix_nanos,
                    touched: false,
                });
            }
            return Ok(());
        }
        let target = self.dir.join(&e.path);
        if !self.create(&e, &target)? {
            return Ok(());
        }
        self.set_metadata(&e, &target)?;
        self.written += 1;
        Ok(())
    }

    /// Creates or replaces `target` as `e` lists it (regular files from
    /// the file cache); `false` for the kinds never sent (sockets,
    /// devices).
    fn create(&self, e: &v1::ContextEntry, target: &Path) -> Result<bool, SessionError> {
        match e.mode & S_IFMT {
            S_IFDIR => {
                let current = std::fs::symlink_metadata(target).ok();
                if !current.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(target).map_err(io(target))?;
                    std::fs::create_dir(target).map_err(io(target))?;
                }
            }
            S_IFLNK => {
                remove_any(target).map_err(io(target))?;
                std::os::unix::fs::symlink(&e.link_target, target).map_err(io(target))?;
            }
            S_IFREG => {
                let hex = hex_of(&e.digest).unwrap_or_default();
                let src = self.files.join(hex);
                let parent = target.parent().unwrap_or(&self.dir);
                let temp = place(&src, parent).map_err(|source| SessionError::CachedContent {
                    file: src.clone(),
                    entry: e.path.clone(),
                    source,
                })?;
                remove_any(target).map_err(io(target))?;
                temp.persist(target).map_err(|e| SessionError::Context {
                    path: target.display().to_string(),
                    source: e.error,
                })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Gives the new `target` the owner, mode and times `e` lists (a
    /// directory's times when the walk leaves it), and enters a regular
    /// file's digest into the solver's cache of the copy.
    fn set_metadata(&mut self, e: &v1::ContextEntry, target: &Path) -> Result<(), SessionError> {
        let kind = e.mode & S_IFMT;
        std::os::unix::fs::lchown(target, Some(e.uid), Some(e.gid)).map_err(io(target))?;
        if kind != S_IFLNK {
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(io(target))?;
        }
        touch_parent(&mut self.open, &e.path);
        if kind == S_IFDIR {
            self.open.push(OpenDir {
                path: e.path.clone(),
                mtime: e.mtime_unix_nanos,
                touched: true,
            });
        } else {
            set_times(target, e.mtime_unix_nanos).map_err(io(target))?;
        }
        if kind == S_IFREG {
            let md = std::fs::symlink_metadata(target).map_err(io(target))?;
            self.checksums
                .insert_known(&e.path, &md, hex_of(&e.digest).unwrap_or_default());
        }
        Ok(())
    }
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

    /// The error a manifest made of `entries` ends with.
    fn refused(entries: Vec<v1::ContextEntry>) -> SessionError {
        let files = tempfile::tempdir().unwrap();
        let mut cmp = Compare::new(None, tempfile::tempfile().unwrap(), "");
        let mut missing = Vec::new();
        for e in entries {
            if let Err(err) = cmp.add(e, files.path(), &mut missing) {
                return err;
            }
        }
        panic!("the manifest was taken");
    }

    #[test]
    fn a_manifest_that_breaks_the_rules_is_refused_naming_the_entry() {
        let mut bad_digest = entry("f", S_IFREG, Some("one"));
        bad_digest.digest = "sha256:ABC".into();
        let cases = [
            (
                vec![entry("/etc", S_IFREG, Some("one"))],
                r#"context entry "/etc": not a relative path"#,
            ),
            (
                vec![
                    entry("a", S_IFDIR, None),
                    entry("a/x", S_IFREG, Some("one")),
                    entry("a/x", S_IFREG, Some("one")),
                ],
                r#"context entry "a/x" after "a/x": entries must come once each, in walk order"#,
            ),
            (
                vec![
                    entry("a", S_IFDIR, None),
                    entry("b/x", S_IFREG, Some("one")),
                ],
                r#"context entry "b/x": its directory is not listed"#,
            ),
            (
                vec![bad_digest],
                r#"context entry "f": bad digest "sha256:ABC""#,
            ),
        ];
        for (entries, message) in cases {
            let err = refused(entries);
            assert!(matches!(err, SessionError::Protocol(_)), "{err:?}");
            assert_eq!(err.to_string(), message);
        }
    }

    fn chunk(digest: &str, offset: u64, data: &str) -> v1::FileChunk {
        v1::FileChunk {
            digest: digest.to_string(),
            offset,
            data: data.as_bytes().to_vec(),
            last: true,
        }
    }

    #[test]
    fn contents_come_as_asked_for_and_must_have_their_digest() {
        let digest = |c: &str| format!("sha256:{}", hex::encode(Sha256::digest(c)));
        let (one, two) = (digest("one"), digest("two"));
        let files = tempfile::tempdir().unwrap();
        let mut transfer = Transfer::default();
        let mut receive = Receive {
            files: files.path(),
            cmp: Compare::new(None, tempfile::tempfile().unwrap(), ""),
            manifest_done: true,
            waiting: VecDeque::new(),
            current: None,
            transfer: &mut transfer,
        };
        let err = receive.content(chunk(&one, 0, "one")).unwrap_err();
        assert!(matches!(
            err,
            SessionError::Protocol(ProtocolError::NotAskedFor { .. })
        ));
        assert_eq!(
            err.to_string(),
            format!("content {one} that was not asked for")
        );

        receive.waiting.push_back(one.clone());
        let err = receive.content(chunk(&one, 5, "one")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("expected {one} at offset 0, got {one} at 5")
        );

        receive.current = None;
        let err = receive.content(chunk(&one, 0, "two")).unwrap_err();
        assert!(matches!(
            err,
            SessionError::Protocol(ProtocolError::ContentChanged { .. })
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "a context file changed while it was sent (expected {one}, got {two}); build again"
            )
        );

        receive.content(chunk(&one, 0, "one")).unwrap();
        assert!(receive.done());
        let cached = files.path().join(hex_of(&one).unwrap());
        assert_eq!(std::fs::read_to_string(cached).unwrap(), "one");
        assert_eq!((transfer.files, transfer.bytes), (1, 6));
    }

    #[test]
    fn a_damaged_record_names_what_is_wrong_and_keeps_the_decode_error() {
        // A length of 3 and three bytes that are no ContextEntry.
        let bytes = [3u8, 0xff, 0xff, 0xff];
        let err = Entries::new(&bytes[..]).next().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .starts_with("a record entry does not decode: "),
            "{err}"
        );
        let inner = err.get_ref().and_then(|e| e.source());
        assert!(
            inner.is_some_and(|s| s.is::<prost::DecodeError>()),
            "{err:?}"
        );
    }
}

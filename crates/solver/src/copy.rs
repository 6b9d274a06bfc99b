//! COPY and ADD from a source tree (the build context or another stage's
//! root filesystem) into a destination root filesystem, with Docker's rules:
//! a directory source copies its contents, several sources need a destination
//! ending in `/`, wildcards follow Go's `filepath.Match`, the destination's
//! parents are created, symlinks inside the destination resolve within its
//! root, and ownership is root's for context files unless `--chown` says
//! otherwise (files from a stage keep theirs).
//!
//! The same walk computes the checksum that goes into the step's cache key,
//! so a COPY is redone exactly when a file it reads changed.

use crate::file_writers::{self, FileJob, FileWriters};
use crate::fsutil::{clean_rel, has_wildcards, resolve_in_root, wildcard_match};
use crate::prefetch::Prefetch;
use kbuild_dockerfile::graph::Chmod;
use kbuild_worker::snapshot::EntryMeta;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A COPY/ADD failure, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source that does not exist (or is excluded by .dockerignore).
    #[error("{0:?} not found in the {1}; check the path (and .dockerignore)")]
    NotFound(String, &'static str),
    /// A wildcard that matched nothing.
    #[error("no files match {0:?} in the {1}")]
    NoMatch(String, &'static str),
    /// A bad wildcard.
    #[error("invalid pattern {0:?}: {1}")]
    Pattern(String, #[source] crate::fsutil::PatternError),
    /// Several sources into something that is not a directory.
    #[error("when using {0} with more than one source file, the destination must be a directory and end with a /")]
    DestNotDir(&'static str),
    /// File-system error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A thread writing the copied files ended without saying why.
    #[error("a thread writing the copied files stopped unexpectedly")]
    WriterStopped,
    /// A local archive for `ADD` that cannot be decompressed.
    #[error("cannot decompress the archive {path}: {source}")]
    Decompress {
        /// The archive.
        path: PathBuf,
        /// The decompressor's error.
        source: Box<kbuild_image::Error>,
    },
    /// A local archive for `ADD` that cannot be unpacked (an unsafe or
    /// malformed entry, or a filesystem error).
    #[error("cannot unpack the archive {path}: {source}")]
    Unpack {
        /// The archive.
        path: PathBuf,
        /// The extractor's error, naming the entry.
        source: Box<kbuild_worker::snapshot::Error>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where files come from.
pub struct Source<'a> {
    /// Root directory of the source tree.
    pub root: &'a Path,
    /// Name used in errors ("build context", "stage builder").
    pub what: &'static str,
    /// Paths (relative to `root`) that do not exist for the copy, e.g. `.dockerignore` exclusions.
    pub excluded: &'a dyn Fn(&str, bool) -> bool,
    /// Whether an excluded directory may still hold entries that are not
    /// excluded (`.dockerignore`'s `vendor` then `!vendor/LICENSE`): the
    /// walk then goes below it, and the directory appears only when some
    /// entry below it does.
    pub may_contain_included: &'a dyn Fn(&str) -> bool,
    /// Keep the files' uid/gid (stage sources); otherwise 0:0 (context).
    pub keep_owner: bool,
    /// Digests of unchanged files known from earlier builds (context).
    pub checksums: Option<&'a crate::checksums::ChecksumCache>,
}

/// What to copy and how.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Source paths as written (relative to the source root).
    pub sources: Vec<String>,
    /// Absolute destination in the container, with its trailing `/` if written so.
    pub dest: String,
    /// `--chown` resolved to ids.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`, octal or symbolic (applied to each file's own mode).
    pub chmod: Option<Chmod>,
    /// `--exclude` patterns (matched against paths relative to the source root).
    pub excludes: Vec<String>,
    /// `--parents`: keep the source's directory structure under the destination.
    pub parents: bool,
    /// ADD: unpack local archives.
    pub unpack_archives: bool,
    /// "COPY" or "ADD", for messages.
    pub instruction: &'static str,
}

/// One matched source path.
struct Matched {
    /// Relative to the source root ("" is the root).
    rel: String,
    /// Host path.
    path: PathBuf,
}

fn excluded_by(patterns: &[String], rel: &str) -> Result<bool, CopyError> {
    for p in patterns {
        let pat = clean_rel(p);
        let mut prefix = String::new();
        for comp in rel.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if wildcard_match(&pat, &prefix).map_err(|e| CopyError::Pattern(p.clone(), e))? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Expand the request's sources against the source tree.
fn expand(src: &Source, req: &Request) -> Result<Vec<Matched>, CopyError> {
    let mut out = Vec::new();
    for s in &req.sources {
        let rel = clean_rel(s);
        if has_wildcards(&rel) {
            let before = out.len();
            glob(src, req, &rel, s, &mut out)?;
            if out.len() == before {
                return Err(CopyError::NoMatch(s.clone(), src.what));
            }
        } else {
            let path = resolve_in_root(src.root, &rel, true).map_err(io_err(src.root))?;
            let md = fs::metadata(&path);
            if md.is_err()
                || (!rel.is_empty()
                    && (src.excluded)(&rel, md.as_ref().map(|m| m.is_dir()).unwrap_or(false)))
            {
                return Err(CopyError::NotFound(s.clone(), src.what));
            }
            out.push(Matched { rel, path });
        }
    }
    Ok(out)
}

fn glob(
    src: &Source,
    req: &Request,
    pattern: &str,
    original: &str,
    out: &mut Vec<Matched>,
) -> Result<(), CopyError> {
    let comps: Vec<&str> = pattern.split('/').collect();
    let mut level: Vec<String> = vec![String::new()];
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for base in &level {
            let dir = resolve_in_root(src.root, base, true).map_err(io_err(src.root))?;
            if !has_wildcards(comp) {
                let rel = join_rel(base, comp);
                let p = dir.join(comp);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(rel);
                }
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut names: Vec<OsString> =
                rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
            names.sort();
            for name in names {
                let name_s = name.to_string_lossy();
                if wildcard_match(comp, &name_s)
                    .map_err(|e| CopyError::Pattern(original.to_string(), e))?
                {
                    next.push(join_rel(base, &name_s));
                }
            }
        }
        level = next;
        if !last {
            level.retain(|r| {
                resolve_in_root(src.root, r, true)
                    .map(|p| p.is_dir())
                    .unwrap_or(false)
            });
        }
    }
    for rel in level {
        let path = resolve_in_root(src.root, &rel, true).map_err(io_err(src.root))?;
        let is_dir = path.is_dir();
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if (src.excluded)(&rel, is_dir)
            || excluded_by(&req.excludes, &rel)?
            || excluded_by(&req.excludes, name)?
        {
            continue;
        }
        out.push(Matched { rel, path });
    }
    Ok(())
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// Digest of everything the request would read: paths, types, modes, owners
/// (for stage sources), link targets and contents. Feeds the cache key.
pub fn checksum(src: &Source, req: &Request) -> Result<String, CopyError> {
    let mut walk = ChecksumWalk::default();
    checksum_with(src, req, &mut walk, &mut |rel, path, md| {
        let digest = match src.checksums {
            Some(cache) => cache.digest(rel, path, md).map_err(io_err(path))?,
            None => file_digest(path)?.0,
        };
        Ok(Some(digest))
    })?;
    // Every file had its digest: nothing is left to hash.
    walk.finish(None)
}

/// The sha256 (hex) of the file at `path` and its size in bytes.
fn file_digest(path: &Path) -> Result<(String, u64), CopyError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut fh = Sha256::new();
    let n = io::copy(&mut f, &mut HashWriter(&mut fh)).map_err(io_err(path))?;
    Ok((hex::encode(fh.finalize()), n))
}

/// What [`checksum`] gives when the source's checksum cache knows every
/// file it reads, found without reading any file content.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The checksum.
    Known(String),
    /// Files the cache does not know: their bytes, and the bytes of all
    /// the files the request reads.
    Unknown {
        /// Bytes of the files whose digest is unknown.
        unknown: u64,
        /// Bytes of every file the request reads.
        total: u64,
        /// The walk, to finish the checksum from by hashing only the
        /// files whose digest is unknown.
        walk: ChecksumWalk,
    },
}

/// [`checksum`] as far as the checksum cache alone can tell it: no file
/// content is read. Without a cache every file is unknown.
pub(crate) fn checksum_probe(src: &Source, req: &Request) -> Result<Probe, CopyError> {
    let (mut unknown, mut total) = (0u64, 0u64);
    let mut walk = ChecksumWalk::default();
    checksum_with(src, req, &mut walk, &mut |rel, _, md| {
        total += md.len();
        let known = src.checksums.and_then(|c| c.known(rel, md));
        if known.is_none() {
            unknown += md.len();
        }
        Ok(known)
    })?;
    Ok(if walk.missing.is_empty() {
        Probe::Known(hex::encode(walk.head.finalize()))
    } else {
        Probe::Unknown {
            unknown,
            total,
            walk,
        }
    })
}

/// What [`checksum_with`] fed the checksum: hashed up to the first file
/// whose digest is unknown (in a probe), kept from there on with the
/// places where the unknown digests go, so that the checksum is finished
/// without walking the tree again.
#[derive(Debug, Default)]
pub(crate) struct ChecksumWalk {
    /// The checksum of what came before the first unknown file.
    head: Sha256,
    /// What came after it.
    tail: Vec<u8>,
    /// The unknown files (relative path, host path, metadata), each with
    /// where its digest goes in `tail`.
    missing: VecDeque<(usize, String, PathBuf, fs::Metadata)>,
}

impl ChecksumWalk {
    /// The checksum [`checksum`] gives, hashing each file whose digest was
    /// unknown (the cache, when given, learns it).
    pub(crate) fn finish(
        self,
        cache: Option<&crate::checksums::ChecksumCache>,
    ) -> Result<String, CopyError> {
        self.finish_with(cache, &HashMap::new())
    }

    /// [`ChecksumWalk::finish`], taking the digests of `known` (by
    /// relative path) instead of hashing those files.
    fn finish_with(
        self,
        cache: Option<&crate::checksums::ChecksumCache>,
        known: &HashMap<String, String>,
    ) -> Result<String, CopyError> {
        let mut sha = self.head;
        let mut at = 0;
        for (offset, rel, path, md) in &self.missing {
            sha.update(&self.tail[at..*offset]);
            at = *offset;
            if let Some(digest) = known.get(rel) {
                sha.update(digest.as_bytes());
                continue;
            }
            let hashed_at = std::time::SystemTime::now();
            let (digest, bytes) = file_digest(path)?;
            if let Some(cache) = cache {
                cache.learn(rel, md, &digest, bytes, hashed_at);
            }
            sha.update(digest.as_bytes());
        }
        sha.update(&self.tail[at..]);
        Ok(hex::encode(sha.finalize()))
    }
}

impl ChecksumWalk {
    /// Bytes of the checksum's input.
    fn update(&mut self, bytes: &[u8]) {
        if self.missing.is_empty() {
            self.head.update(bytes);
        } else {
            self.tail.extend_from_slice(bytes);
        }
    }

    /// The digest of the regular file `rel` goes here, once known.
    fn unknown(&mut self, rel: &str, path: &Path, md: &fs::Metadata) {
        self.missing.push_back((
            self.tail.len(),
            rel.to_string(),
            path.to_path_buf(),
            md.clone(),
        ));
    }

    /// Feeds the checksum the first unknown digests that `ready` has (by
    /// relative path; each is taken out), in order, so that what is kept
    /// for the rest stays small.
    fn fill(&mut self, ready: &mut HashMap<String, String>) {
        if ready.is_empty() {
            return;
        }
        let mut at = 0;
        while let Some((offset, rel, _, _)) = self.missing.front() {
            let Some(digest) = ready.remove(rel) else {
                break;
            };
            self.head.update(&self.tail[at..*offset]);
            self.head.update(digest.as_bytes());
            at = *offset;
            self.missing.pop_front();
        }
        if self.missing.is_empty() {
            // Nothing waits any more: what came after goes in now, and
            // what comes next straight to `head`.
            self.head.update(&self.tail[at..]);
            self.tail.clear();
        } else if at > 0 {
            self.tail.drain(..at);
            for m in &mut self.missing {
                m.0 -= at;
            }
        }
    }
}

/// A regular file's digest (hex) for [`checksum_with`], from its relative
/// path, host path and metadata; `None` when it is not known.
type FileDigest<'a> =
    dyn FnMut(&str, &Path, &fs::Metadata) -> Result<Option<String>, CopyError> + 'a;

/// The walk of [`checksum`] feeding `h`, with `file` giving each regular
/// file's digest; where `file` gives `None`, `h` keeps the place of the
/// unknown digest (the walk goes on to the end, so `file` sees every file).
fn checksum_with(
    src: &Source,
    req: &Request,
    h: &mut ChecksumWalk,
    file: &mut FileDigest<'_>,
) -> Result<(), CopyError> {
    let matched = expand(src, req)?;
    for m in &matched {
        hash_source(h, &m.rel);
        walk(src, req, &m.path, &m.rel, &mut |rel, path, md| {
            hash_entry(
                h,
                src,
                rel,
                path,
                md,
                || fs::read_link(path).map_err(io_err(path)),
                || file(rel, path, md),
            )
        })?;
    }
    Ok(())
}

/// Feeds `h` the start of the matched source `rel`, ahead of its entries.
fn hash_source(h: &mut ChecksumWalk, rel: &str) {
    h.update(b"src\0");
    h.update(rel.as_bytes());
    h.update(b"\0");
}

/// Feeds `h` one entry of a source's walk: its path, mode, owner (stage
/// sources), and a symlink's target (from `link`), a regular file's digest
/// (from `file`; `None` keeps its place for [`ChecksumWalk::finish`]) or a
/// device's numbers. The one definition of what the checksum holds of an
/// entry, for the key's walk and for a copy that computes the checksum
/// while it copies (the same walk, in the same order).
fn hash_entry(
    h: &mut ChecksumWalk,
    src: &Source,
    rel: &str,
    path: &Path,
    md: &fs::Metadata,
    link: impl FnOnce() -> Result<PathBuf, CopyError>,
    file: impl FnOnce() -> Result<Option<String>, CopyError>,
) -> Result<(), CopyError> {
    h.update(rel.as_bytes());
    h.update(b"\0");
    h.update(format!("{:o}\0", md.mode()).as_bytes());
    if src.keep_owner {
        h.update(format!("{}:{}\0", md.uid(), md.gid()).as_bytes());
    }
    let ft = md.file_type();
    if ft.is_symlink() {
        h.update(link()?.as_os_str().as_bytes());
    } else if ft.is_file() {
        match file()? {
            Some(digest) => h.update(digest.as_bytes()),
            None => h.unknown(rel, path, md),
        }
    } else if ft.is_block_device() || ft.is_char_device() {
        h.update(format!("{}", md.rdev()).as_bytes());
    }
    h.update(b"\n");
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Visit `path` (relative `rel`) and, for a directory, everything below it
/// in name order, skipping exclusions. The callback gets (rel, path, lstat).
fn walk(
    src: &Source,
    req: &Request,
    path: &Path,
    rel: &str,
    f: &mut dyn FnMut(&str, &Path, &fs::Metadata) -> Result<(), CopyError>,
) -> Result<(), CopyError> {
    let md = fs::metadata(path).map_err(io_err(path))?;
    f(rel, path, &md)?;
    if md.is_dir() {
        walk_children(src, req, path, rel, None, f)?;
    }
    Ok(())
}

/// The entries below `dir`, in name order, each told to `f`; `prefetch`
/// is told each directory's regular files before they are.
fn walk_children(
    src: &Source,
    req: &Request,
    dir: &Path,
    rel: &str,
    prefetch: Option<&Prefetch>,
    f: &mut dyn FnMut(&str, &Path, &fs::Metadata) -> Result<(), CopyError>,
) -> Result<(), CopyError> {
    let mut walk = Below {
        src,
        req,
        base: rel,
        pending: Vec::new(),
        prefetch,
    };
    walk.dir(dir, rel, f)
}

/// An excluded directory the walk went into, reported to the callback only
/// once an entry below it is (with its parents first).
type Pending = Vec<(String, std::path::PathBuf, fs::Metadata)>;

/// A walk below a matched source.
struct Below<'a, 'b> {
    src: &'a Source<'b>,
    req: &'a Request,
    /// The matched source's relative path: `--exclude` patterns match
    /// below it (and against the context-relative path).
    base: &'a str,
    /// Excluded directories the walk went into, not reported yet.
    pending: Pending,
    prefetch: Option<&'a Prefetch>,
}

impl Below<'_, '_> {
    fn dir(
        &mut self,
        dir: &Path,
        rel: &str,
        f: &mut dyn FnMut(&str, &Path, &fs::Metadata) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        let (src, req, base) = (self.src, self.req, self.base);
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        // Each entry's kind first, so that the read-ahead is told only the
        // regular files the copy will read.
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let child_rel = join_rel(rel, &name.to_string_lossy());
            let child = dir.join(&name);
            let md = fs::symlink_metadata(&child).map_err(io_err(&child))?;
            if excluded_by(&req.excludes, &child_rel)?
                || excluded_by(
                    &req.excludes,
                    child_rel[base.len()..].trim_start_matches('/'),
                )?
            {
                continue;
            }
            let excluded = (src.excluded)(&child_rel, md.is_dir());
            entries.push((name, child_rel, child, md, excluded));
        }
        if let Some(p) = self.prefetch {
            let files: Vec<(OsString, u64)> = entries
                .iter()
                .filter(|(_, _, _, md, excluded)| !excluded && md.is_file() && md.len() > 0)
                .map(|(name, _, _, md, _)| (name.clone(), md.len()))
                .collect();
            if !files.is_empty() {
                p.files(dir, files);
            }
        }
        for (_, child_rel, child, md, excluded) in entries {
            if excluded {
                if md.is_dir() && (src.may_contain_included)(&child_rel) {
                    self.pending.push((child_rel.clone(), child.clone(), md));
                    self.dir(&child, &child_rel, f)?;
                    // Still pending: nothing below it was kept.
                    if self.pending.last().is_some_and(|(r, _, _)| *r == child_rel) {
                        self.pending.pop();
                    }
                }
                continue;
            }
            for (r, p, m) in self.pending.drain(..) {
                f(&r, &p, &m)?;
            }
            f(&child_rel, &child, &md)?;
            if md.is_dir() {
                self.dir(&child, &child_rel, f)?;
            }
        }
        Ok(())
    }
}

/// Perform the copy into `dest_root` (the step's root filesystem).
pub fn copy(src: &Source, req: &Request, dest_root: &Path) -> Result<(), CopyError> {
    copy_with_writers(src, req, dest_root, None, 1)
}

/// Told about each entry a copy writes into a fresh overlay upper, in the
/// order a diff of the upper lists them, so that the layer is written while
/// the files are copied, from the same reads ([`crate::layer::OnePass`]).
/// A copy whose result it cannot describe exactly turns it off, and the
/// layer is made by diffing the upper as for any other step.
pub(crate) trait Tee {
    /// Whether entries are still wanted.
    fn on(&self) -> bool;
    /// The copy does something the tee cannot describe: no more entries.
    fn off(&mut self, why: &'static str);
    /// A directory (relative to the root, no `/` around), see
    /// [`kbuild_worker::snapshot::LayerEntries::dir`].
    fn dir(&mut self, rel: &[u8], mtime: Option<i64>, in_lowers: bool);
    /// A symlink now in place with its final metadata.
    fn symlink(&mut self, rel: &[u8]);
    /// A regular file about to get `meta`, with `len` bytes read from
    /// `data`; `data` may be left partly or wholly unread.
    fn file(&mut self, rel: &[u8], meta: &EntryMeta, len: u64, data: &mut dyn Read);
    /// The file `rel` is complete: check it is what [`Tee::file`] said.
    fn file_done(&mut self, rel: &[u8], meta: &EntryMeta, len: u64);
    /// The upper directory the entries describe, while the tee is on:
    /// regular files are then written (and checked there with
    /// [`kbuild_worker::snapshot::upper_file_is`] instead of
    /// [`Tee::file_done`]) by other threads.
    fn upper(&self) -> Option<PathBuf>;
}

/// A source file being read, hashed on the way when `sha` is given.
struct Hashed<'a> {
    file: &'a mut fs::File,
    sha: Option<Sha256>,
    /// Bytes read so far.
    read: u64,
}

impl Read for Hashed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(sha) = self.sha.as_mut() {
            sha.update(&buf[..n]);
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads a source file and writes what it reads to the copy, so that one
/// read feeds the copy, the layer and (when wanted) the file's checksum.
struct TeeRead<'a, 'f> {
    from: &'a mut Hashed<'f>,
    to: &'a mut fs::File,
    /// A failed write to the copy: the copy's error.
    failed: Option<io::Error>,
}

impl Read for TeeRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.from.read(buf)?;
        if let Err(e) = self.to.write_all(&buf[..n]) {
            let kind = e.kind();
            self.failed = Some(e);
            return Err(io::Error::new(kind, "writing the copy failed"));
        }
        Ok(n)
    }
}

/// The path of `host` under `root` as a layer names it, if `host` is
/// `root` joined with the clean container path `cpath` (no symlink was
/// followed on the way, so the upper holds it under that name).
fn layer_rel(root: &Path, host: &Path, cpath: &str) -> Option<Vec<u8>> {
    let rel = host.strip_prefix(root).ok()?;
    let want = cpath.trim_start_matches('/').trim_end_matches('/');
    (rel.as_os_str().as_bytes() == want.as_bytes()).then(|| want.as_bytes().to_vec())
}

/// Each directory on the way to `cpath` (itself included), with whether it
/// exists now; `None` when one is not a directory (a symlink, say).
fn dirs_on_the_way(root: &Path, cpath: &str) -> Option<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for comp in cpath.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(comp);
        match fs::symlink_metadata(root.join(&cur)) {
            Ok(md) if md.is_dir() => out.push((cur.clone(), true)),
            Ok(_) => return None,
            Err(_) => out.push((cur.clone(), false)),
        }
    }
    Some(out)
}

/// Tells `tee` about the directories made or found on the way to a copy's
/// target (`stamp`: the mtime the last one gets once the copy is done).
fn tee_dirs(tee: &mut Option<&mut dyn Tee>, dirs: Option<Vec<(String, bool)>>, stamp: Option<i64>) {
    let Some(t) = again(tee).filter(|t| t.on()) else {
        return;
    };
    let Some(dirs) = dirs else {
        t.off("a symlink on the way to the destination");
        return;
    };
    let last = dirs.len().saturating_sub(1);
    for (i, (rel, existed)) in dirs.iter().enumerate() {
        t.dir(
            rel.as_bytes(),
            if i == last { stamp } else { None },
            *existed,
        );
    }
}

/// A shorter borrow of an optional tee.
pub(crate) fn again<'b>(tee: &'b mut Option<&mut dyn Tee>) -> Option<&'b mut dyn Tee> {
    match tee {
        Some(t) => Some(&mut **t),
        None => None,
    }
}

/// [`copy`], telling `tee` (when given) about each entry it writes. With a
/// tee on, regular files are written by [`FileWriters`] threads while this
/// one reads the sources and feeds the tee in order. With `checksum`, also
/// returns what [`checksum`] gives for `src` and `req`, from the copy's own
/// walk and reads: each regular file's digest is the one the source's
/// checksum cache knows, else taken from the bytes copied.
pub(crate) fn copy_teed(
    src: &Source,
    req: &Request,
    dest_root: &Path,
    tee: Option<&mut dyn Tee>,
    checksum: bool,
) -> Result<Option<String>, CopyError> {
    // One writer thread: with one per core the writers took the cores the
    // compressor needs (1 GiB / 20k files, 2 cores: gzip 12.5–14.4 s with
    // two writers, 10.3 s with one; zstd 11.5–13.5 s against 9.1 s). Since
    // the writer also hashes, two are no faster than one (3.75–4.09 s
    // against 3.79–4.10 s, gzip, 8 runs each).
    copy_summed(src, req, dest_root, tee, 1, checksum)
}

/// [`copy`] with `threads` [`FileWriters`] threads.
fn copy_with_writers(
    src: &Source,
    req: &Request,
    dest_root: &Path,
    tee: Option<&mut dyn Tee>,
    threads: usize,
) -> Result<(), CopyError> {
    copy_summed(src, req, dest_root, tee, threads, false).map(drop)
}

/// [`copy_teed`] with `threads` [`FileWriters`] threads.
fn copy_summed(
    src: &Source,
    req: &Request,
    dest_root: &Path,
    mut tee: Option<&mut dyn Tee>,
    threads: usize,
    checksum: bool,
) -> Result<Option<String>, CopyError> {
    let literal_sources = req.sources.len();
    let matched = expand(src, req)?;
    if let Some(t) = again(&mut tee) {
        // Several sources may write into one directory out of name order.
        if matched.len() != 1 || req.parents {
            t.off("several sources or --parents");
        }
    }
    let dest_slash = req.dest.ends_with('/');
    if literal_sources > 1 && !dest_slash {
        return Err(CopyError::DestNotDir(req.instruction));
    }
    let dest = crate::fsutil::clean_abs(&req.dest);
    let dest_host = resolve_in_root(dest_root, &dest, true).map_err(io_err(dest_root))?;
    let dest_is_dir = dest_slash || matched.len() > 1 || dest_host.is_dir();
    let upper = again(&mut tee).filter(|t| t.on()).and_then(|t| t.upper());
    std::thread::scope(|scope| {
        let writers = upper
            .as_deref()
            .and_then(|u| FileWriters::start(scope, threads, u, src.checksums));
        // Read-ahead for the files of directories copied.
        let prefetch = matched
            .iter()
            .any(|m| m.path.is_dir())
            .then(|| Prefetch::start(scope))
            .flatten();
        let mut copying = Copying {
            src,
            req,
            root: dest_root,
            tee,
            writers: writers.as_ref(),
            prefetch: prefetch.as_ref(),
            dirs_to_stamp: Vec::new(),
            sum: checksum.then(ChecksumWalk::default),
            written: None,
            hashed: HashMap::new(),
        };
        for m in &matched {
            if let Some(h) = copying.sum.as_mut() {
                hash_source(h, &m.rel);
            }
            copying.source(m, &dest, dest_is_dir)?;
        }
        let Copying {
            mut tee,
            dirs_to_stamp,
            sum,
            mut hashed,
            ..
        } = copying;
        let mut written = writers
            .map(FileWriters::finish)
            .transpose()?
            .unwrap_or_default();
        hashed.extend(written.digests.drain());
        if let (Some(why), Some(t)) = (written.off, again(&mut tee)) {
            t.off(why);
        }
        // Directory mtimes last, after their children were written.
        for (d, md) in dirs_to_stamp.iter().rev() {
            set_mtime(d, md)?;
        }
        // The digests the writer threads took; files the copy had no
        // digest for (an archive it unpacked) are read for it now.
        sum.map(|walk| walk.finish_with(None, &hashed)).transpose()
    })
}

/// One copy under way: where it writes, who is told, and what is left to
/// do once every entry is written.
struct Copying<'c, 's, 't, 'w> {
    src: &'c Source<'s>,
    req: &'c Request,
    /// The destination root filesystem.
    root: &'c Path,
    tee: Option<&'t mut dyn Tee>,
    /// Threads writing regular files while the tee is on.
    writers: Option<&'w FileWriters<'w>>,
    /// Read-ahead of the source directories' files.
    prefetch: Option<&'w Prefetch>,
    /// Directories written, whose mtime is set after their children.
    dirs_to_stamp: Vec<(PathBuf, fs::Metadata)>,
    /// The checksum of what is copied, when asked for ([`copy_teed`]),
    /// fed entry by entry in the walk's order.
    sum: Option<ChecksumWalk>,
    /// What the walk of the directory source being copied knows of the
    /// directories it wrote.
    written: Option<Written>,
    /// Digests the writer threads took for `sum` that it has not taken yet.
    hashed: HashMap<String, String>,
}

/// The directories a directory source's walk wrote, so that its entries
/// are not looked up again and again through the overlay.
///
/// The walk writes its entries in name order, each directory's children
/// right after it, and nothing else writes into the copy's root meanwhile
/// (the writer threads create the files the walk hands them). So a
/// resolved parent stays valid for the siblings that follow (only they are
/// written before the next parent is resolved, and none is on its way),
/// and a directory the walk created holds only the entries it wrote there,
/// each name once: none of them is there before the walk writes it.
#[derive(Default)]
struct Written {
    /// The last parent resolved: its container path, host path and
    /// whether the walk created it.
    parent: Option<(String, PathBuf, bool)>,
    /// The container paths of the directories the walk created.
    created: HashSet<String>,
}

impl<'s> Copying<'_, 's, '_, '_> {
    /// A shorter borrow of the tee.
    fn tee(&mut self) -> Option<&mut dyn Tee> {
        again(&mut self.tee)
    }

    /// Feeds the checksum (when asked for) the source entry `rel` just
    /// copied: its symlink target `link` (read again when not given), its
    /// digest `digest` (a regular file; `None`: read when the copy ends).
    fn hash(
        &mut self,
        rel: &str,
        path: &Path,
        md: &fs::Metadata,
        link: Option<&Path>,
        digest: Option<String>,
    ) -> Result<(), CopyError> {
        let Some(h) = self.sum.as_mut() else {
            return Ok(());
        };
        let link = || match link {
            Some(target) => Ok(target.to_path_buf()),
            None => fs::read_link(path).map_err(io_err(path)),
        };
        hash_entry(h, self.src, rel, path, md, link, || Ok(digest))?;
        // The digests the writer threads took so far.
        if let Some(w) = self.writers {
            w.take_digests(&mut self.hashed);
            h.fill(&mut self.hashed);
        }
        Ok(())
    }

    /// Copies one matched source to the destination `dest`.
    fn source(&mut self, m: &Matched, dest: &str, dest_is_dir: bool) -> Result<(), CopyError> {
        let md = fs::metadata(&m.path).map_err(io_err(&m.path))?;
        if md.is_dir() {
            self.dir_source(m, &md, dest)
        } else if self.req.unpack_archives && is_archive(&m.path) {
            if let Some(t) = self.tee() {
                t.off("an archive unpacked");
            }
            mkdir_all(self.root, dest, self.req)?;
            unpack_archive(&m.path, self.root, dest, self.req)?;
            self.hash(&m.rel, &m.path, &md, None, None)
        } else {
            self.file_source(m, dest, dest_is_dir)
        }
    }

    /// A directory source copies its contents (with --parents, the
    /// directory itself).
    fn dir_source(&mut self, m: &Matched, md: &fs::Metadata, dest: &str) -> Result<(), CopyError> {
        let (src, req, root) = (self.src, self.req, self.root);
        let target = if req.parents && !m.rel.is_empty() {
            format!("{}/{}", dest.trim_end_matches('/'), m.rel)
        } else {
            dest.to_string()
        };
        let on_the_way = dirs_on_the_way(root, &target);
        let target_host = mkdir_all(root, &target, req)?;
        // --chmod is for what is copied, not for the directory that
        // receives it (BuildKit leaves that one's mode alone).
        let top = Request {
            chmod: None,
            ..req.clone()
        };
        set_meta(&target_host, md, src, &top, false)?;
        self.dirs_to_stamp.push((target_host, md.clone()));
        tee_dirs(&mut self.tee, on_the_way, Some(md.mtime()));
        self.hash(&m.rel, &m.path, md, None, None)?;
        let mut err = None;
        self.written = Some(Written::default());
        let walked = walk_children(
            src,
            req,
            &m.path,
            &m.rel,
            self.prefetch,
            &mut |rel, path, md| {
                let sub = rel
                    .strip_prefix(&m.rel)
                    .unwrap_or(rel)
                    .trim_start_matches('/');
                let cpath = format!("{}/{}", target.trim_end_matches('/'), sub);
                match self.entry(&cpath, rel, path, md) {
                    Ok(Some(d)) => self.dirs_to_stamp.push((d, md.clone())),
                    Ok(None) => {}
                    Err(e) => err = Some(e),
                }
                Ok(())
            },
        );
        self.written = None;
        walked?;
        err.map_or(Ok(()), Err)
    }

    /// Makes the directory `cpath` and its missing parents, telling the
    /// tee about each on the way.
    fn dirs_to(&mut self, cpath: &str) -> Result<(), CopyError> {
        let on_the_way = dirs_on_the_way(self.root, cpath);
        mkdir_all(self.root, cpath, self.req)?;
        tee_dirs(&mut self.tee, on_the_way, None);
        Ok(())
    }

    /// A file (or symlink, or device) source: into the destination
    /// directory, or as the destination itself.
    fn file_source(&mut self, m: &Matched, dest: &str, dest_is_dir: bool) -> Result<(), CopyError> {
        let req = self.req;
        let cpath = if dest_is_dir || req.parents {
            let base_dest = if req.parents && !m.rel.is_empty() {
                let parent = Path::new(&m.rel)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{}/{}", dest.trim_end_matches('/'), parent)
            } else {
                dest.to_string()
            };
            self.dirs_to(&base_dest)?;
            let name = Path::new(&m.rel)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{}/{}", base_dest.trim_end_matches('/'), name)
        } else {
            if let Some(parent) = Path::new(dest).parent() {
                self.dirs_to(&parent.to_string_lossy())?;
            }
            dest.to_string()
        };
        let lmd = fs::metadata(&m.path).map_err(io_err(&m.path))?;
        // Copied on this thread: the entry of its parent (without an mtime
        // of its own) is written from the upper once the file is there, as
        // the diff sees it.
        let writers = self.writers.take();
        let written = self.entry(&cpath, &m.rel, &m.path, &lmd);
        self.writers = writers;
        written.map(|_| ())
    }
    /// Writes one entry at container path `cpath`, telling the tee about
    /// it; returns the host path when it is a directory. `src_rel` is the
    /// entry's path in the source tree: with a checksum cache in the
    /// source, a regular file the cache does not know is hashed while it
    /// is copied and the cache learns its digest.
    fn entry(
        &mut self,
        cpath: &str,
        src_rel: &str,
        src_path: &Path,
        md: &fs::Metadata,
    ) -> Result<Option<PathBuf>, CopyError> {
        let (parent, name) = match cpath.rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
            None => ("/", cpath),
        };
        let (parent_host, in_created) = self.parent(parent)?;
        let host = parent_host.join(name);
        let ft = md.file_type();
        let existing = if in_created {
            None
        } else {
            fs::symlink_metadata(&host).ok()
        };
        let rel = self.layer_name(&host, cpath, md, existing.as_ref());
        let rel = rel.as_deref();
        if ft.is_dir() {
            let created = existing.is_none();
            self.dir_entry(&host, md, existing, rel)?;
            if let Some(w) = self.written.as_mut().filter(|_| created) {
                w.created.insert(cpath.to_string());
            }
            self.hash(src_rel, src_path, md, None, None)?;
            return Ok(Some(host));
        }
        let fresh = existing.is_none();
        if let Some(e) = existing {
            if e.is_dir() {
                fs::remove_dir_all(&host).map_err(io_err(&host))?;
            } else {
                fs::remove_file(&host).map_err(io_err(&host))?;
            }
        }
        if ft.is_symlink() {
            let target = fs::read_link(src_path).map_err(io_err(src_path))?;
            std::os::unix::fs::symlink(&target, &host).map_err(io_err(&host))?;
            set_meta(&host, md, self.src, self.req, true)?;
            if let (Some(rel), Some(t)) = (rel, self.tee()) {
                t.symlink(rel);
            }
            self.hash(src_rel, src_path, md, Some(&target), None)?;
            return Ok(None);
        }
        let mut digest = None;
        if ft.is_file() {
            let file = SourceFile {
                rel: src_rel,
                path: src_path,
                md,
            };
            digest = match (rel, self.writers) {
                (Some(rel), Some(w)) if fresh && md.len() <= file_writers::MAX_FILE => {
                    self.file_by_writers(w, host, rel, &file)?
                }
                _ => self.file_streamed(&host, rel, &file)?,
            };
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            if let (Some(_), Some(t)) = (rel, self.tee()) {
                t.off("a device or fifo");
            }
            make_node(&host, md)?;
            set_meta(&host, md, self.src, self.req, false)?;
        }
        // Sockets are not copied, as in Docker (but the checksum has them).
        self.hash(src_rel, src_path, md, None, digest)?;
        Ok(None)
    }

    /// The host path of the directory `parent` (a container path), and
    /// whether the walk under way created it ([`Written`]).
    fn parent(&mut self, parent: &str) -> Result<(PathBuf, bool), CopyError> {
        let last = self.written.as_ref().and_then(|w| w.parent.as_ref());
        if let Some((_, host, created)) = last.filter(|(c, _, _)| c == parent) {
            return Ok((host.clone(), *created));
        }
        let host = resolve_in_root(self.root, parent, true).map_err(io_err(self.root))?;
        let Some(w) = self.written.as_mut() else {
            return Ok((host, false));
        };
        let created = w.created.contains(parent);
        w.parent = Some((parent.to_string(), host.clone(), created));
        Ok((host, created))
    }

    /// The entry's name in the layer while the tee is on; the tee is
    /// turned off where it could not describe the entry.
    fn layer_name(
        &mut self,
        host: &Path,
        cpath: &str,
        md: &fs::Metadata,
        existing: Option<&fs::Metadata>,
    ) -> Option<Vec<u8>> {
        let root = self.root;
        let t = self.tee().filter(|t| t.on())?;
        // A file over a file of the lowers is a new file in the upper, as
        // if there had been none; what replaces anything else (a whiteout,
        // an opaque directory, a directory copied up) is for the diff to say.
        let file_over_file =
            md.file_type().is_file() && existing.is_some_and(|e| e.file_type().is_file());
        if existing.is_some() && !file_over_file {
            t.off("an entry of the lower layers replaced");
            return None;
        }
        let rel = layer_rel(root, host, cpath);
        if rel.is_none() {
            t.off("a symlink on the way to an entry");
        }
        rel
    }

    /// A directory entry: made (replacing a non-directory) or kept, its
    /// owner and mode set now, its mtime once its children are written.
    fn dir_entry(
        &mut self,
        host: &Path,
        md: &fs::Metadata,
        existing: Option<fs::Metadata>,
        rel: Option<&[u8]>,
    ) -> Result<(), CopyError> {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                fs::remove_file(host).map_err(io_err(host))?;
                fs::create_dir(host).map_err(io_err(host))?;
            }
            None => fs::create_dir(host).map_err(io_err(host))?,
        }
        set_meta(host, md, self.src, self.req, false)?;
        if let (Some(rel), Some(t)) = (rel, self.tee()) {
            t.dir(rel, Some(md.mtime()), false);
        }
        Ok(())
    }

    /// The metadata a copied regular file gets, as its layer entry says.
    fn file_meta(&self, md: &fs::Metadata) -> EntryMeta {
        let (uid, gid) = owner(md, self.src, self.req);
        EntryMeta {
            mode: final_mode(md, self.req),
            uid,
            gid,
            mtime: md.mtime(),
        }
    }

    /// `file`'s digest as the source's checksum cache knows it, else
    /// whether the copy hashes the file's bytes: for the cache to learn
    /// (when there is one) or for the checksum ([`Copying::sum`]).
    fn digest_of(&self, file: &SourceFile) -> Result<String, bool> {
        let known = self.src.checksums.map(|c| c.known(file.rel, file.md));
        match known {
            Some(Some(digest)) => Ok(digest),
            Some(None) => Err(true),
            None => Err(self.sum.is_some()),
        }
    }

    /// A regular file read here into a buffer once, its layer entry written
    /// from that buffer and its digest taken, then handed to the writer
    /// threads that create it, teach the cache its digest and check it.
    /// Returns its digest when known or taken.
    fn file_by_writers(
        &mut self,
        writers: &FileWriters,
        host: PathBuf,
        rel: &[u8],
        file: &SourceFile,
    ) -> Result<Option<String>, CopyError> {
        let known = self.digest_of(file);
        let read_at = SystemTime::now();
        let mut f = fs::File::open(file.path).map_err(io_err(file.path))?;
        let mut data = Vec::with_capacity(usize::try_from(file.md.len()).unwrap_or(0));
        f.read_to_end(&mut data).map_err(io_err(&host))?;
        // Hashed on the writer thread: the checksum takes the digest once
        // the writer reports it (ChecksumWalk::fill).
        let (digest, hash) = match known {
            Ok(digest) => (Some(digest), None),
            Err(true) => (
                None,
                Some(file_writers::Hash {
                    rel: file.rel.to_string(),
                    md: file.md.clone(),
                    read_at,
                    report: self.sum.is_some(),
                }),
            ),
            Err(false) => (None, None),
        };
        let meta = self.file_meta(file.md);
        if let Some(t) = self.tee() {
            t.file(rel, &meta, file.md.len(), &mut data.as_slice());
        }
        writers.write(FileJob {
            host,
            data,
            meta,
            len: file.md.len(),
            times: [
                (file.md.atime(), file.md.atime_nsec()),
                (file.md.mtime(), file.md.mtime_nsec()),
            ],
            layer_rel: rel.to_vec(),
            hash,
        })?;
        Ok(digest)
    }

    /// A regular file copied on this thread, each read feeding the copy,
    /// the tee (while `rel` is given) and the checksum cache. Returns its
    /// digest when known or taken.
    fn file_streamed(
        &mut self,
        host: &Path,
        rel: Option<&[u8]>,
        file: &SourceFile,
    ) -> Result<Option<String>, CopyError> {
        let known = self.digest_of(file);
        let hashed_at = SystemTime::now();
        let mut f = fs::File::open(file.path).map_err(io_err(file.path))?;
        let mut from = Hashed {
            file: &mut f,
            sha: matches!(known, Err(true)).then(Sha256::new),
            read: 0,
        };
        let mut to = fs::File::create(host).map_err(io_err(host))?;
        let meta = self.file_meta(file.md);
        if let (Some(rel), Some(t)) = (rel, self.tee()) {
            let mut data = TeeRead {
                from: &mut from,
                to: &mut to,
                failed: None,
            };
            t.file(rel, &meta, file.md.len(), &mut data);
            if let Some(e) = data.failed {
                return Err(io_err(host)(e));
            }
        }
        // What the tee left unread (all of it without a tee).
        if from.sha.is_some() {
            io::copy(
                &mut io::BufReader::with_capacity(128 * 1024, &mut from),
                &mut to,
            )
            .map_err(io_err(host))?;
        } else {
            // Nothing to hash: the kernel may copy without reading it here.
            io::copy(from.file, &mut to).map_err(io_err(host))?;
        }
        drop(to);
        let digest = match (known, from.sha.take()) {
            (Ok(digest), _) => Some(digest),
            (Err(_), Some(sha)) => {
                let digest = hex::encode(sha.finalize());
                if let Some(cache) = self.src.checksums {
                    cache.learn(file.rel, file.md, &digest, from.read, hashed_at);
                }
                Some(digest)
            }
            (Err(_), None) => None,
        };
        set_meta(host, file.md, self.src, self.req, false)?;
        if let (Some(rel), Some(t)) = (rel, self.tee()) {
            t.file_done(rel, &meta, file.md.len());
        }
        Ok(digest)
    }
}

/// A regular file of the source tree being copied.
struct SourceFile<'a> {
    /// Its path relative to the source root.
    rel: &'a str,
    /// Its host path.
    path: &'a Path,
    /// Its lstat.
    md: &'a fs::Metadata,
}

/// Makes the device or fifo `host` like the source's `md`.
fn make_node(host: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    let ft = md.file_type();
    let kind = if ft.is_char_device() {
        rustix::fs::FileType::CharacterDevice
    } else if ft.is_block_device() {
        rustix::fs::FileType::BlockDevice
    } else {
        rustix::fs::FileType::Fifo
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        host,
        kind,
        rustix::fs::Mode::from_raw_mode(md.mode() & 0o7777),
        md.rdev(),
    )
    .map_err(|e| CopyError::Io {
        path: host.to_path_buf(),
        source: io::Error::from(e),
    })
}

/// Create `cpath` and missing parents (0755, owned by --chown's ids or root), returning the host path.
pub(crate) fn mkdir_all(root: &Path, cpath: &str, req: &Request) -> Result<PathBuf, CopyError> {
    let mut cur = String::new();
    let mut host = root.to_path_buf();
    for comp in cpath.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(comp);
        host = resolve_in_root(root, &cur, true).map_err(io_err(root))?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(CopyError::Io {
                    path: PathBuf::from(&cur),
                    source: io::Error::other("exists and is not a directory"),
                })
            }
            Err(_) => {
                // The resolved path's missing part may be several levels deep
                // (a symlink to a missing directory): create each level.
                let mut missing = vec![host.clone()];
                let mut p = host.parent();
                while let Some(q) = p {
                    if q == root || fs::symlink_metadata(q).is_ok() {
                        break;
                    }
                    missing.push(q.to_path_buf());
                    p = q.parent();
                }
                for m in missing.iter().rev() {
                    fs::create_dir(m).map_err(io_err(m))?;
                    fs::set_permissions(m, fs::Permissions::from_mode(0o755)).map_err(io_err(m))?;
                    let (uid, gid) = req.chown.unwrap_or((0, 0));
                    std::os::unix::fs::lchown(m, Some(uid), Some(gid)).map_err(io_err(m))?;
                }
            }
        }
    }
    Ok(host)
}

/// The owner a copied entry gets.
fn owner(md: &fs::Metadata, src: &Source, req: &Request) -> (u32, u32) {
    match req.chown {
        Some(ids) => ids,
        None if src.keep_owner => (md.uid(), md.gid()),
        None => (0, 0),
    }
}

/// The mode a copied entry (not a symlink) gets.
fn final_mode(md: &fs::Metadata, req: &Request) -> u32 {
    match &req.chmod {
        Some(m) => m.apply(md.mode() & 0o7777, md.is_dir()),
        None => md.mode() & 0o7777,
    }
}

fn set_meta(
    host: &Path,
    md: &fs::Metadata,
    src: &Source,
    req: &Request,
    is_link: bool,
) -> Result<(), CopyError> {
    let (uid, gid) = owner(md, src, req);
    std::os::unix::fs::lchown(host, Some(uid), Some(gid)).map_err(io_err(host))?;
    if !is_link {
        let mode = final_mode(md, req);
        // After chown, which clears setuid/setgid bits.
        fs::set_permissions(host, fs::Permissions::from_mode(mode)).map_err(io_err(host))?;
        if !md.is_dir() {
            set_mtime(host, md)?;
        }
    } else {
        set_mtime(host, md)?;
    }
    Ok(())
}

fn set_mtime(host: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    utimes(
        host,
        (md.atime(), md.atime_nsec()),
        (md.mtime(), md.mtime_nsec()),
    )
}

/// Set a path's access and modification times (seconds, nanoseconds) without following a symlink.
fn utimes(host: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<(), CopyError> {
    let time = |(secs, nanos): (i64, i64)| {
        filetime::FileTime::from_unix_time(secs, u32::try_from(nanos).unwrap_or(0))
    };
    filetime::set_symlink_file_times(host, time(atime), time(mtime)).map_err(io_err(host))
}

/// Whether a local file is a tar archive `ADD` unpacks, as Docker decides:
/// plain, or compressed with gzip, bzip2, xz or zstd (detected from its
/// first bytes), with a ustar header once decompressed.
fn is_archive(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(mut reader) = kbuild_image::decompress_sniffed(file) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return false,
        }
    }
    n >= 262 && &head[257..262] == b"ustar"
}

/// Unpacks the local archive `path` into the existing directory
/// `dest_cpath` of the root filesystem `root`, with the worker's extractor
/// (the destination acts as the archive's root).
fn unpack_archive(
    path: &Path,
    root: &Path,
    dest_cpath: &str,
    req: &Request,
) -> Result<(), CopyError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let reader =
        kbuild_image::decompress_sniffed(file).map_err(|source| CopyError::Decompress {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    let options = kbuild_worker::snapshot::ArchiveOptions { chown: req.chown };
    kbuild_worker::snapshot::unpack_archive(root, dest_cpath, reader, options).map_err(|source| {
        CopyError::Unpack {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_excl(_: &str, _: bool) -> bool {
        false
    }

    /// A build-context source with nothing excluded.
    fn context(root: &Path) -> Source<'_> {
        Source {
            root,
            what: "build context",
            excluded: &no_excl,
            may_contain_included: &|_| false,
            checksums: None,
            keep_owner: false,
        }
    }

    fn ctx() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("src/sub")).unwrap();
        fs::write(r.join("src/a.go"), "package a").unwrap();
        fs::write(r.join("src/b.txt"), "b").unwrap();
        fs::write(r.join("src/sub/c.go"), "package c").unwrap();
        fs::write(r.join("top.go"), "top").unwrap();
        fs::set_permissions(r.join("top.go"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("a.go", r.join("src/link")).unwrap();
        t
    }

    fn req(sources: &[&str], dest: &str) -> Request {
        Request {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            dest: dest.to_string(),
            instruction: "COPY",
            ..Default::default()
        }
    }

    #[test]
    fn directory_copies_contents_and_file_copies_itself() {
        let c = ctx();
        let d = tempfile::tempdir().unwrap();
        let src = context(c.path());
        copy(&src, &req(&["src"], "/app"), d.path()).unwrap();
        assert!(d.path().join("app/a.go").is_file());
        assert!(d.path().join("app/sub/c.go").is_file());
        assert!(!d.path().join("app/src").exists());
        assert_eq!(
            fs::read_link(d.path().join("app/link")).unwrap(),
            PathBuf::from("a.go")
        );
        copy(&src, &req(&["top.go"], "/bin/tool"), d.path()).unwrap();
        let md = fs::metadata(d.path().join("bin/tool")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        copy(&src, &req(&["top.go"], "/bin/"), d.path()).unwrap();
        assert!(d.path().join("bin/top.go").is_file());
        // Existing directory as destination without a slash: copy into it.
        copy(&src, &req(&["top.go"], "/app"), d.path()).unwrap();
        assert!(d.path().join("app/top.go").is_file());
    }

    #[test]
    fn wildcards_and_multiple_sources() {
        let c = ctx();
        let d = tempfile::tempdir().unwrap();
        let src = context(c.path());
        copy(&src, &req(&["src/*.go"], "/w/"), d.path()).unwrap();
        assert!(d.path().join("w/a.go").is_file());
        assert!(!d.path().join("w/b.txt").exists());
        let e = copy(&src, &req(&["top.go", "src/b.txt"], "/x"), d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("must be a directory and end with a /"),
            "{e}"
        );
        let e = copy(&src, &req(&["nothing*"], "/x/"), d.path()).unwrap_err();
        assert!(e.to_string().contains("no files match"), "{e}");
        let e = copy(&src, &req(&["missing.txt"], "/x/"), d.path()).unwrap_err();
        assert!(
            e.to_string().contains("not found in the build context"),
            "{e}"
        );
    }

    #[test]
    fn ignore_exclude_parents_chown_chmod() {
        let c = ctx();
        let d = tempfile::tempdir().unwrap();
        let excl = |p: &str, _: bool| p.ends_with(".txt");
        let src = Source {
            root: c.path(),
            what: "build context",
            excluded: &excl,
            may_contain_included: &|_| false,
            checksums: None,
            keep_owner: false,
        };
        let mut r = req(&["src"], "/a");
        r.excludes = vec!["sub".into()];
        r.chown = Some((1000, 1001));
        r.chmod = Some(Chmod::Octal(0o600));
        copy(&src, &r, d.path()).unwrap();
        assert!(!d.path().join("a/b.txt").exists());
        assert!(!d.path().join("a/sub").exists());
        let md = fs::metadata(d.path().join("a/a.go")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1000, 1001, 0o600)
        );
        let e = copy(&src, &req(&["src/b.txt"], "/x/"), d.path()).unwrap_err();
        assert!(matches!(e, CopyError::NotFound(..)));
        let mut r = req(&["src/sub/c.go", "top.go"], "/p/");
        r.parents = true;
        copy(&src, &r, d.path()).unwrap();
        assert!(d.path().join("p/src/sub/c.go").is_file());
        assert!(d.path().join("p/top.go").is_file());
    }

    #[test]
    fn destination_symlinks_stay_in_root() {
        let c = ctx();
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("evil")).unwrap();
        let src = context(c.path());
        copy(&src, &req(&["top.go"], "/evil/"), d.path()).unwrap();
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        // The absolute link resolved inside the root instead.
        let inside = d
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("top.go");
        assert!(inside.is_file(), "{inside:?}");
    }

    /// A walk looks its entries up only in the directories it did not
    /// create: one that was there may hold what an entry replaces.
    #[test]
    fn entries_in_a_directory_that_was_there_are_looked_up() {
        let c = tempfile::tempdir().unwrap();
        for dir in ["src/new", "src/old"] {
            fs::create_dir_all(c.path().join(dir)).unwrap();
        }
        fs::write(c.path().join("src/new/x"), "x").unwrap();
        fs::write(c.path().join("src/old/x"), "file").unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("app/old/x/inner")).unwrap();
        let mut tee = Recorder {
            upper: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let src = context(c.path());
        copy_with_writers(&src, &req(&["src"], "/app"), d.path(), Some(&mut tee), 1).unwrap();
        assert_eq!(fs::read(d.path().join("app/new/x")).unwrap(), b"x");
        assert_eq!(fs::read(d.path().join("app/old/x")).unwrap(), b"file");
        assert_eq!(tee.off, Some("an entry of the lower layers replaced"));
    }

    #[test]
    fn checksum_follows_content() {
        let c = ctx();
        let src = context(c.path());
        let r = req(&["src"], "/a");
        let a = checksum(&src, &r).unwrap();
        assert_eq!(a, checksum(&src, &r).unwrap());
        fs::write(c.path().join("src/sub/c.go"), "changed").unwrap();
        assert_ne!(a, checksum(&src, &r).unwrap());
    }

    /// Digests that come late and out of order (from the writer threads)
    /// give the checksum the walk gives with every digest known, and what
    /// the walk keeps for the missing ones stays small.
    #[test]
    fn digests_filled_in_as_they_come_give_the_same_checksum() {
        let d = tempfile::tempdir().unwrap();
        let md = fs::metadata(d.path()).unwrap();
        let files: Vec<(String, String)> = (0..40)
            .map(|i| (format!("f{i:02}"), format!("{i:064x}")))
            .collect();
        let mut all_known = ChecksumWalk::default();
        let mut walk = ChecksumWalk::default();
        let mut ready = HashMap::new();
        let mut most_kept = 0;
        for (i, (rel, digest)) in files.iter().enumerate() {
            all_known.update(rel.as_bytes());
            all_known.update(digest.as_bytes());
            walk.update(rel.as_bytes());
            if i % 5 == 0 {
                walk.update(digest.as_bytes());
            } else {
                walk.unknown(rel, &d.path().join(rel), &md);
            }
            // Each digest comes two files late; those of f11 and f12 come
            // the other way round.
            let late = match i.checked_sub(2) {
                Some(11) => Some(12),
                Some(12) => Some(11),
                j => j,
            };
            if let Some(j) = late.filter(|j| j % 5 != 0) {
                ready.insert(files[j].0.clone(), files[j].1.clone());
            }
            if i == 20 {
                // Every digest still missing comes at once: none waits.
                for (_, rel, _, _) in &walk.missing {
                    let j: usize = rel[1..].parse().unwrap();
                    ready.insert(rel.clone(), files[j].1.clone());
                }
            }
            walk.fill(&mut ready);
            if i == 20 {
                assert!(walk.missing.is_empty() && walk.tail.is_empty());
            }
            most_kept = most_kept.max(walk.missing.len());
        }
        assert!(most_kept <= 3, "{most_kept} digests waited at once");
        let rest: HashMap<String, String> = files[38..].iter().cloned().collect();
        let want = hex::encode(all_known.head.finalize());
        assert_eq!(walk.finish_with(None, &rest).unwrap(), want);
        // Filled in at once at the end: the same.
        let mut walk = ChecksumWalk::default();
        for (rel, _) in &files {
            walk.update(rel.as_bytes());
            walk.unknown(rel, &d.path().join(rel), &md);
        }
        let all: HashMap<String, String> = files.iter().cloned().collect();
        assert_eq!(walk.finish_with(None, &all).unwrap(), want);
    }

    #[test]
    fn a_probe_with_a_few_unknown_files_finishes_without_walking_again() {
        let c = ctx();
        let cache = crate::checksums::ChecksumCache::in_memory();
        let src = Source {
            checksums: Some(&cache),
            ..context(c.path())
        };
        let r = req(&["src"], "/a");
        let before = checksum(&src, &r).unwrap();
        fs::write(c.path().join("src/b.txt"), "bee").unwrap();
        let (looked_up, hashed) = (cache.looked_up(), cache.hashed_bytes());
        let Probe::Unknown {
            unknown,
            total,
            walk,
        } = checksum_probe(&src, &r).unwrap()
        else {
            panic!("b.txt changed: its digest is unknown");
        };
        assert_eq!((unknown, total), (3, 21));
        let sum = walk.finish(src.checksums).unwrap();
        // Each of the 3 files looked up once (by the probe), the changed
        // one alone read.
        assert_eq!(cache.looked_up() - looked_up, 3);
        assert_eq!(cache.hashed_bytes() - hashed, 3);
        assert_eq!(sum, checksum(&context(c.path()), &r).unwrap());
        assert_ne!(sum, before);
        // Known now: the probe has the checksum.
        assert!(matches!(checksum_probe(&src, &r).unwrap(), Probe::Known(k) if k == sum));
    }

    /// A tee that records what it is told, with the files' bytes.
    #[derive(Default)]
    struct Recorder {
        upper: Option<PathBuf>,
        calls: Vec<String>,
        off: Option<&'static str>,
        /// Puts a directory where each file goes once told about it.
        block: bool,
    }

    impl Tee for Recorder {
        fn on(&self) -> bool {
            self.off.is_none()
        }
        fn off(&mut self, why: &'static str) {
            self.off.get_or_insert(why);
        }
        fn dir(&mut self, rel: &[u8], mtime: Option<i64>, in_lowers: bool) {
            let rel = String::from_utf8_lossy(rel);
            self.calls.push(format!("dir {rel} {mtime:?} {in_lowers}"));
        }
        fn symlink(&mut self, rel: &[u8]) {
            let rel = String::from_utf8_lossy(rel);
            self.calls.push(format!("symlink {rel}"));
        }
        fn file(&mut self, rel: &[u8], meta: &EntryMeta, len: u64, data: &mut dyn Read) {
            let mut bytes = Vec::new();
            data.take(len).read_to_end(&mut bytes).unwrap();
            let (rel, bytes) = (String::from_utf8_lossy(rel), hex::encode(bytes));
            if let (true, Some(upper)) = (self.block, &self.upper) {
                fs::create_dir(upper.join(&*rel)).unwrap();
            }
            self.calls
                .push(format!("file {rel} {meta:?} {len} {bytes}"));
        }
        fn file_done(&mut self, rel: &[u8], meta: &EntryMeta, len: u64) {
            let rel = String::from_utf8_lossy(rel);
            self.calls.push(format!("done {rel} {meta:?} {len}"));
        }
        fn upper(&self) -> Option<PathBuf> {
            self.upper.clone().filter(|_| self.on())
        }
    }

    /// [`tree`] without the modification times of directories.
    fn tree_but_dir_times(root: &Path) -> Vec<String> {
        tree(root)
            .into_iter()
            .map(|line| {
                let mut fields: Vec<&str> = line.split(' ').collect();
                if fields.get(1).is_some_and(|mode| mode.starts_with("40")) {
                    fields[3] = "-";
                }
                fields.join(" ")
            })
            .collect()
    }

    /// Every entry under `root`: path, type, mode, owner, mtime, content.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                let content = if md.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                if md.is_dir() {
                    dirs.push(p.clone());
                }
                out.push(format!(
                    "{:?} {:o} {}:{} {}.{} {}",
                    p.strip_prefix(root).unwrap(),
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    hex::encode(content)
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn writer_threads_change_neither_the_entries_nor_the_files() {
        let c = ctx();
        for i in 0..40 {
            let body = format!("file {i}\n").repeat(i * 700);
            fs::write(c.path().join(format!("src/sub/f{i:02}")), body).unwrap();
        }
        // Larger than a writer thread takes: copied on the copying thread.
        fs::write(c.path().join("src/big"), vec![7u8; 1 << 21]).unwrap();
        let mut r = req(&["src"], "/app");
        r.chown = Some((7, 8));
        let run = |threads: Option<usize>| {
            let d = tempfile::tempdir().unwrap();
            let mut tee = Recorder {
                upper: threads.map(|_| d.path().to_path_buf()),
                ..Default::default()
            };
            let src = context(c.path());
            copy_with_writers(&src, &r, d.path(), Some(&mut tee), threads.unwrap_or(1)).unwrap();
            assert_eq!(tee.off, None);
            // Files written by the writer threads are checked there.
            let calls: Vec<String> = tee
                .calls
                .into_iter()
                .filter(|c| !c.starts_with("done "))
                .collect();
            (calls, tree(d.path()), d)
        };
        let (calls, files, _d) = run(None);
        assert!(calls.len() > 40, "{calls:#?}");
        for threads in [1, 3] {
            let (c, f, _d) = run(Some(threads));
            assert_eq!(c, calls, "{threads} threads");
            assert_eq!(f, files, "{threads} threads");
        }
    }

    #[test]
    fn a_copy_computes_the_checksum_the_key_walk_computes() {
        let c = ctx();
        let r = c.path();
        for i in 0..30 {
            fs::write(
                r.join(format!("src/sub/f{i:02}")),
                format!("{i}\n").repeat(i * 90),
            )
            .unwrap();
        }
        // Larger than a writer thread takes: hashed on the copying thread.
        fs::write(r.join("src/big"), vec![5u8; 1 << 21]).unwrap();
        fs::write(r.join("src/skip.log"), "log").unwrap();
        fs::write(r.join("src/secret"), "secret").unwrap();
        fs::create_dir_all(r.join("src/vendor/x")).unwrap();
        fs::write(r.join("src/vendor/x/LICENSE"), "license").unwrap();
        fs::write(r.join("src/vendor/x/code.go"), "code").unwrap();
        std::os::unix::fs::symlink("sub", r.join("src/dirlink")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("src/zfifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        fs::write(r.join("t.tar"), "").unwrap();
        write_archive(r, "t.tar", &[("in/a", tar::EntryType::Regular, None)]);
        let ignore =
            kbuild_ignore::Matcher::parse("src/secret\nsrc/vendor\n!src/vendor/x/LICENSE\n")
                .unwrap();
        let excluded = |p: &str, d: bool| ignore.is_excluded(p, d);
        let descend = |p: &str| ignore.may_contain_included(p);
        let source = |cache| Source {
            excluded: &excluded,
            may_contain_included: &descend,
            checksums: cache,
            ..context(r)
        };
        let several = Request {
            excludes: vec!["*.log".into()],
            ..req(
                &["src", "top.go", "src/l*", "src/vendor/x/LICENSE"],
                "/app/",
            )
        };
        let one = Request {
            excludes: vec!["sub/f0*".into()],
            ..req(&["src"], "/app")
        };
        let archive = add_req("t.tar", "/opt/");
        // (request, with a tee whose writer threads write the files, the
        // checksum cache of the source: empty, then knowing most files)
        let learned = crate::checksums::ChecksumCache::in_memory();
        let cases = [
            (&one, true, Some(&learned)),
            (&several, false, Some(&learned)),
            (&one, true, None),
            (&several, false, None),
            (&archive, false, None),
        ];
        for (i, (req, writers, cache)) in cases.into_iter().enumerate() {
            let walked = checksum(&source(None), req).unwrap();
            let d = tempfile::tempdir().unwrap();
            let mut tee = Recorder {
                upper: writers.then(|| d.path().to_path_buf()),
                ..Default::default()
            };
            let before = cache.map(|c| c.hashed_bytes());
            let copied = copy_summed(&source(cache), req, d.path(), Some(&mut tee), 1, true)
                .unwrap()
                .expect("a checksum was asked for");
            assert_eq!(copied, walked, "case {i}");
            if writers {
                // The writer threads wrote the files up to the fifo.
                assert_eq!(tee.off, Some("a device or fifo"), "case {i}");
            }
            // The first copy hashed every file it read for the cache; the
            // second only those the first did not read (top.go, src/link,
            // src/sub/f00 to f09).
            match (i, before) {
                (0, Some(b)) => assert!(learned.hashed_bytes() - b > 1 << 21),
                (1, Some(b)) => assert_eq!(learned.hashed_bytes() - b, 3 + 9 + 45 * 180),
                _ => {}
            }
            // Without the checksum asked for: the same files.
            let again = tempfile::tempdir().unwrap();
            assert_eq!(
                copy_summed(&source(None), req, again.path(), None, 1, false).unwrap(),
                None
            );
            // Directories the copy made for the destination (`opt/in/`) get
            // the time they were made: the two copies ran apart.
            assert_eq!(
                tree_but_dir_times(again.path()),
                tree_but_dir_times(d.path()),
                "case {i}"
            );
        }
        // What was copied is in the checksum: a change shows.
        let before = checksum(&source(None), &several).unwrap();
        fs::write(r.join("src/vendor/x/LICENSE"), "changed").unwrap();
        let d = tempfile::tempdir().unwrap();
        let copied = copy_summed(&source(None), &several, d.path(), None, 1, true).unwrap();
        assert_ne!(copied.as_deref(), Some(before.as_str()));
        assert_eq!(copied, Some(checksum(&source(None), &several).unwrap()));
    }

    #[test]
    fn a_file_the_writer_threads_cannot_write_fails_the_copy() {
        let c = ctx();
        let d = tempfile::tempdir().unwrap();
        // A directory where the file goes, made after the copy looked.
        let mut tee = Recorder {
            upper: Some(d.path().to_path_buf()),
            block: true,
            ..Default::default()
        };
        let src = context(c.path());
        let r = req(&["src"], "/app/");
        let e = copy_with_writers(&src, &r, d.path(), Some(&mut tee), 2).unwrap_err();
        let app = d.path().join("app");
        assert!(
            matches!(&e, CopyError::Io { path, .. } if path.starts_with(&app) && path.is_dir()),
            "{e}"
        );
    }

    /// Writes the archive `file` in `dir`: entries given as (name as
    /// written, even with `..`; type; link target), each file holding its
    /// own name, owned 0:0, mode 0644 (0755 for directories).
    fn write_archive(dir: &Path, file: &str, entries: &[(&str, tar::EntryType, Option<&str>)]) {
        let owner = kbuild_testkit::archive::RawOwner {
            ids: (0, 0),
            dir_mode: 0o755,
            file_mode: 0o644,
        };
        kbuild_testkit::archive::raw_tar(&dir.join(file), entries, owner);
    }

    fn add_req(source: &str, dest: &str) -> Request {
        Request {
            unpack_archives: true,
            instruction: "ADD",
            ..req(&[source], dest)
        }
    }

    #[test]
    fn add_archive_stays_inside_its_destination() {
        use tar::EntryType::{Fifo, Link, Regular, Symlink};
        let c = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // The image has /etc, and below the destination a symlink to it.
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("opt/app/etc")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("opt/app/conf")).unwrap();
        let src = context(c.path());
        let add = |file: &str| copy(&src, &add_req(file, "/opt/app/"), r);

        write_archive(c.path(), "up.tar", &[("../../escape", Regular, None)]);
        let e = add("up.tar").unwrap_err().to_string();
        assert!(e.contains("`../../escape`") && e.contains("up.tar"), "{e}");
        assert!(!r.join("escape").exists() && !r.join("opt/escape").exists());

        write_archive(
            c.path(),
            "through.tar",
            &[("link", Symlink, Some("/")), ("link/evil", Regular, None)],
        );
        let e = add("through.tar").unwrap_err().to_string();
        assert!(e.contains("`link/evil`"), "{e}");
        assert!(!r.join("evil").exists() && !r.join("opt/app/evil").exists());

        write_archive(
            c.path(),
            "ok.tar",
            &[
                ("/abs/file", Regular, None),
                ("conf/x", Regular, None),
                ("a/../b", Regular, None),
                ("hard", Link, Some("/abs/file")),
                (".wh.kept", Regular, None),
                ("fifo", Fifo, None),
            ],
        );
        add("ok.tar").unwrap();
        let app = r.join("opt/app");
        assert_eq!(
            fs::read_to_string(app.join("abs/file")).unwrap(),
            "/abs/file"
        );
        // The image's absolute symlink resolves inside the destination, as
        // in Docker's chrooted untar.
        assert_eq!(fs::read_to_string(app.join("etc/x")).unwrap(), "conf/x");
        assert!(!r.join("etc/x").exists());
        assert_eq!(fs::read_to_string(app.join("b")).unwrap(), "a/../b");
        let (a, h) = (app.join("abs/file"), app.join("hard"));
        assert_eq!(
            fs::metadata(a).unwrap().ino(),
            fs::metadata(h).unwrap().ino()
        );
        assert!(
            app.join(".wh.kept").is_file(),
            "an archive has no whiteouts"
        );
        assert!(
            fs::symlink_metadata(app.join("fifo")).is_err(),
            "ADD makes no FIFOs"
        );
        assert_eq!(fs::read_dir(r.join("etc")).unwrap().count(), 0);

        // A parent the image has as a dangling symlink is an error, and the
        // symlink stays.
        std::os::unix::fs::symlink("/nowhere", app.join("dangling")).unwrap();
        write_archive(c.path(), "dangling.tar", &[("dangling/f", Regular, None)]);
        let e = add("dangling.tar").unwrap_err().to_string();
        assert!(
            e.contains("has the parent `dangling`, which is not a directory"),
            "{e}"
        );
        assert!(fs::symlink_metadata(app.join("dangling"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn add_archive_replaces_existing_paths_and_takes_chown() {
        use tar::EntryType::{Directory, Regular};
        let c = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("dst/was-dir/sub")).unwrap();
        fs::write(r.join("dst/was-file"), "old").unwrap();
        write_archive(
            c.path(),
            "a.tar",
            &[
                ("./", Directory, None),
                ("was-dir", Regular, None),
                ("was-file/", Directory, None),
                ("was-file/in", Regular, None),
            ],
        );
        let src = context(c.path());
        let mut q = add_req("a.tar", "/dst");
        q.chown = Some((1000, 1001));
        copy(&src, &q, r).unwrap();
        let dst = r.join("dst");
        assert_eq!(fs::read_to_string(dst.join("was-dir")).unwrap(), "was-dir");
        assert_eq!(
            fs::read_to_string(dst.join("was-file/in")).unwrap(),
            "was-file/in"
        );
        for p in ["was-dir", "was-file", "was-file/in"] {
            let md = fs::symlink_metadata(dst.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (1000, 1001), "{p}");
            assert_eq!(md.mtime(), 1_000_000, "{p}");
        }
        let mode = fs::metadata(dst.join("was-file")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        // The destination itself keeps the owner ADD gave it, not `./`'s mtime.
        assert_ne!(fs::metadata(&dst).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn add_unpacks_tar_gz() {
        let c = tempfile::tempdir().unwrap();
        let mut raw = kbuild_testkit::archive::RawTar::gnu();
        raw.entry(kbuild_testkit::archive::RawHeader {
            mode: 0o755,
            data: b"hello",
            ..kbuild_testkit::archive::RawHeader::new(tar::EntryType::Regular, "dir/hello")
        });
        let f = fs::File::create(c.path().join("x.tgz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        gz.write_all(&raw.into_bytes()).unwrap();
        gz.finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let src = context(c.path());
        let mut r = req(&["x.tgz"], "/opt/");
        r.unpack_archives = true;
        r.instruction = "ADD";
        copy(&src, &r, d.path()).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("opt/dir/hello")).unwrap(),
            "hello"
        );
        // COPY keeps the archive as it is.
        copy(&src, &req(&["x.tgz"], "/opt/"), d.path()).unwrap();
        assert!(d.path().join("opt/x.tgz").is_file());
    }
}

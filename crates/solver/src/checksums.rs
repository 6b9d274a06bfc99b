//! A cache of context file digests keyed by what `stat` says of the file,
//! so a rebuild with nothing changed reads no file content to compute its
//! cache keys, and a changed file is hashed alone.
//!
//! An entry is trusted when the file's path, size, modification and change
//! times (nanoseconds), inode, device and mode are all as recorded. A file
//! modified at or after the moment its entry was recorded could still be
//! written again within the same timestamp tick without any of that
//! changing ("racy git"), so such entries are never kept: the file is
//! hashed again next time.
//!
//! One cache file per context directory lives under the store
//! (`checksums/<sha256 of the context path>.json`). Builds load it at start
//! and write it back atomically when they learned something; concurrent
//! builds of one context may overwrite each other's additions, which only
//! costs a re-hash.
//!
//! A process that knows a context tree exactly by a generation (a builder
//! daemon, whose copy of a client's context is written only by its sync,
//! from a manifest it hashed) can also remember whole checksums over it in
//! a [`TreeChecksums`]: the same request over the same generation then
//! looks at no file at all ([`ChecksumCache::tree_checksum`]).
//!
//! A copy that reads files anyway (a COPY run before its key is known, see
//! `fileop`) hashes them while it copies and tells the cache
//! ([`ChecksumCache::learn`]), and computes the key's checksum on its own
//! walk, so the files are neither read nor looked at again. What a build
//! learns is kept for the rest of the build even where the racy-write rule
//! keeps it out of the file.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format of the cache files; a file of another version is ignored.
const VERSION: u32 = 1;

/// Entries of files modified this close to (or after) the time they were
/// hashed are not kept: filesystems with coarse timestamps could hide a
/// second write within the same tick.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Checksums a [`TreeChecksums`] keeps at most (about 150 bytes each); when
/// full it starts afresh.
const MAX_TREE_CHECKSUMS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    mode: u32,
}

impl Stat {
    fn of(md: &fs::Metadata) -> Stat {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stat {
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
            mode: md.mode(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    entries: HashMap<String, Entry>,
}

/// A file's metadata and digest (saved as the pair `[stat, digest]`), and,
/// in memory only, whether this build found the file (looked it up after a
/// `stat`, or learned it): [`ChecksumCache::save`] need not look for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry(Stat, String, #[serde(skip)] bool);

/// A [`File`] to write, borrowing the entries.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    entries: &'a HashMap<String, Entry>,
}

/// The digests of one context directory's files; see the module docs.
#[derive(Debug)]
pub struct ChecksumCache {
    /// The cache file; `None` for [`ChecksumCache::in_memory`].
    path: Option<PathBuf>,
    /// `None` until the cache file is read (when first needed).
    state: Mutex<Option<State>>,
    /// The generation of the tree the directory holds, and where checksums
    /// over it are remembered ([`ChecksumCache::with_tree`]).
    tree: Option<([u8; 32], Arc<TreeChecksums>)>,
    /// Checksums taken from `tree` without looking at the directory.
    tree_hits: AtomicU64,
}

/// Checksums over whole trees, each known by the generation of the tree
/// and the request (see [`ChecksumCache::tree_checksum`]): shared by the
/// builds of a long-running process, in memory only, so they never outlive
/// the code that computed them. Bounded (a few thousand checksums).
#[derive(Debug, Default)]
pub struct TreeChecksums {
    known: Mutex<HashMap<[u8; 32], String>>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Digests learned by this build that the racy-write rule keeps out of
    /// `entries` (never saved).
    racy: HashMap<String, Entry>,
    dirty: bool,
    hashed_bytes: u64,
    looked_up: u64,
}

impl State {
    /// Whether no file is known, kept or racy.
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.racy.is_empty()
    }

    fn known(&self, rel: &str, stat: &Stat) -> Option<String> {
        [&self.entries, &self.racy]
            .into_iter()
            .find_map(|m| m.get(rel).filter(|e| e.0 == *stat))
            .map(|e| e.1.clone())
    }

    /// Keeps `digest` of the file `rel` whose metadata was `stat` when it
    /// was read from `hashed_at` on.
    fn keep(&mut self, rel: &str, stat: Stat, digest: &str, hashed_at: SystemTime) {
        let modified = UNIX_EPOCH + Duration::from_nanos(stat.mtime_ns.max(0) as u64);
        let changed = UNIX_EPOCH + Duration::from_nanos(stat.ctime_ns.max(0) as u64);
        if modified.max(changed) + RACY_WINDOW >= hashed_at {
            self.racy
                .insert(rel.to_string(), Entry(stat, digest.to_string(), true));
        } else {
            self.racy.remove(rel);
            self.entries
                .insert(rel.to_string(), Entry(stat, digest.to_string(), true));
            self.dirty = true;
        }
    }
}

impl ChecksumCache {
    /// The cache of the context `context`, kept in `dir` (created when
    /// saved). An unreadable or outdated cache file starts an empty cache.
    /// The file is read when the cache is first used, or by
    /// [`preload`](Self::preload) (e.g. on another thread while other work
    /// goes on).
    pub fn load(dir: &Path, context: &Path) -> ChecksumCache {
        let key = hex::encode(Sha256::digest(context.as_os_str().as_encoded_bytes()));
        ChecksumCache {
            path: Some(dir.join(format!("{key}.json"))),
            state: Mutex::new(None),
            tree: None,
            tree_hits: AtomicU64::new(0),
        }
    }

    /// The same cache, told that its directory holds exactly the tree
    /// `generation` names, and that checksums over it are remembered in
    /// `memo`. `generation` must change whenever anything a checksum reads
    /// could (a name, kind, mode, owner, link target or content, or a rule
    /// that excludes paths), and nothing else may write the directory: a
    /// builder daemon's copy of a client's context, named by a digest of
    /// the client's manifest and `.dockerignore`.
    pub fn with_tree(mut self, generation: [u8; 32], memo: Arc<TreeChecksums>) -> ChecksumCache {
        self.tree = Some((generation, memo));
        self
    }

    /// The checksum `compute` makes of `request` (bytes naming everything
    /// of the request it reads) over the directory: remembered for the
    /// tree's generation when the cache has one ([`with_tree`](Self::with_tree)),
    /// so computed once per generation; else computed every time.
    pub fn tree_checksum<E>(
        &self,
        request: &[u8],
        compute: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        if let Some(checksum) = self.tree_remembered(request) {
            return Ok(checksum);
        }
        let checksum = compute()?;
        self.tree_remember(request, &checksum);
        Ok(checksum)
    }

    /// The checksum of `request` remembered for the tree's generation
    /// (counted in [`tree_hits`](Self::tree_hits)); `None` without one.
    pub fn tree_remembered(&self, request: &[u8]) -> Option<String> {
        let known = self.tree_lookup(request)?;
        self.tree_hits.fetch_add(1, Ordering::Relaxed);
        Some(known)
    }

    /// Whether a checksum of `request` is remembered for the tree's
    /// generation (not counted as a hit).
    pub fn tree_knows(&self, request: &[u8]) -> bool {
        self.tree_lookup(request).is_some()
    }

    fn tree_lookup(&self, request: &[u8]) -> Option<String> {
        let (key, memo) = self.tree_key(request)?;
        let known = memo.known.lock().ok()?.get(&key).cloned();
        known
    }

    /// Remembers `checksum` of `request` for the tree's generation (nothing
    /// without one).
    pub fn tree_remember(&self, request: &[u8], checksum: &str) {
        let Some((key, memo)) = self.tree_key(request) else {
            return;
        };
        if let Ok(mut known) = memo.known.lock() {
            if known.len() >= MAX_TREE_CHECKSUMS {
                known.clear();
            }
            known.insert(key, checksum.to_string());
        }
    }

    /// Where `request`'s checksum over this generation is remembered.
    fn tree_key(&self, request: &[u8]) -> Option<([u8; 32], &TreeChecksums)> {
        let (generation, memo) = self.tree.as_ref()?;
        let mut h = Sha256::new();
        h.update(generation);
        h.update(request);
        Some((h.finalize().into(), memo))
    }

    /// Checksums [`tree_checksum`](Self::tree_checksum) took from what it
    /// remembered, without looking at the directory.
    pub fn tree_hits(&self) -> u64 {
        self.tree_hits.load(Ordering::Relaxed)
    }

    /// An empty cache with no file behind it, to collect what a copy learns
    /// on another thread; [`absorb`](Self::absorb) hands that on.
    pub fn in_memory() -> ChecksumCache {
        ChecksumCache {
            path: None,
            state: Mutex::new(None),
            tree: None,
            tree_hits: AtomicU64::new(0),
        }
    }

    /// Takes in what `other` learned (its digests and the bytes it read).
    pub fn absorb(&self, other: &ChecksumCache) {
        let Some(learned) = other.with(std::mem::take) else {
            return;
        };
        self.with(|state| {
            state.hashed_bytes += learned.hashed_bytes;
            state.dirty |= !learned.entries.is_empty();
            if state.is_empty() {
                // A cold cache (the first build of a context) takes the
                // learned maps whole instead of hashing every path again.
                let mut learned = learned;
                learned.entries.values_mut().for_each(|e| e.2 = true);
                state.entries = learned.entries;
                state.racy = learned.racy;
                return;
            }
            for (rel, entry) in learned.entries {
                state.racy.remove(&rel);
                state.entries.insert(rel, Entry(entry.0, entry.1, true));
            }
            state.racy.extend(learned.racy);
        });
    }

    /// Reads the cache file now unless it was read already.
    pub fn preload(&self) {
        self.with(|_| ());
    }

    /// `f` on the state, read from the file first if need be.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        let mut state = self.state.lock().ok()?;
        let state = state.get_or_insert_with(|| State {
            entries: self
                .path
                .as_ref()
                .and_then(|path| fs::read(path).ok())
                .and_then(|b| serde_json::from_slice::<File>(&b).ok())
                .filter(|f| f.version == VERSION)
                .map(|f| f.entries)
                .unwrap_or_default(),
            ..State::default()
        });
        Some(f(state))
    }

    /// The sha256 (hex) of the file at `path` (`rel` in the context), from
    /// the cache when its metadata `md` is unchanged, else by reading it.
    pub fn digest(&self, rel: &str, path: &Path, md: &fs::Metadata) -> std::io::Result<String> {
        if let Some(digest) = self.known(rel, md) {
            return Ok(digest);
        }
        let hashed_at = SystemTime::now();
        let mut file = fs::File::open(path)?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut file, &mut h)?;
        let digest = hex::encode(h.finalize());
        self.learn(rel, md, &digest, n, hashed_at);
        Ok(digest)
    }

    /// Whether the cache knows no file at all (a fresh store or context):
    /// every file a key needs would be read.
    pub fn knows_nothing(&self) -> bool {
        self.with(|state| state.is_empty()).unwrap_or(true)
    }

    /// The sha256 (hex) of the file `rel` if the cache (or this build) knows
    /// it for metadata `md`, without reading anything.
    pub fn known(&self, rel: &str, md: &fs::Metadata) -> Option<String> {
        let stat = Stat::of(md);
        self.with(|state| {
            state.looked_up += 1;
            // The caller just took `md` from the file: it exists.
            if let Some(entry) = state.entries.get_mut(rel) {
                entry.2 = true;
            }
            state.known(rel, &stat)
        })
        .flatten()
    }

    /// Records that the file `rel`, whose metadata was `md` when reading it
    /// began at `hashed_at`, held `bytes` bytes of sha256 `digest` (hex):
    /// what a copy that hashed the file while copying it learned. The
    /// racy-write rule applies as for [`digest`](Self::digest): a racy
    /// entry serves the rest of this build but is not saved.
    pub fn learn(
        &self,
        rel: &str,
        md: &fs::Metadata,
        digest: &str,
        bytes: u64,
        hashed_at: SystemTime,
    ) {
        let stat = Stat::of(md);
        self.with(|state| {
            state.hashed_bytes += bytes;
            state.keep(rel, stat, digest, hashed_at);
        });
    }

    /// Records that the file at `rel`, whose metadata is now `md`, holds
    /// content of sha256 `digest` (hex), without reading it and without the
    /// racy-write rule. Only for a file the caller itself just wrote with
    /// content it had verified, in a tree nothing else writes (a builder
    /// daemon's copy of a client's context, whose digests the client sent).
    pub fn insert_known(&self, rel: &str, md: &fs::Metadata, digest: &str) {
        self.with(|state| {
            state.entries.insert(
                rel.to_string(),
                Entry(Stat::of(md), digest.to_string(), true),
            );
            state.dirty = true;
        });
    }

    /// Bytes of file content read so far (0 for a rebuild where nothing
    /// changed).
    pub fn hashed_bytes(&self) -> u64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.hashed_bytes))
            .unwrap_or(0)
    }

    /// Files whose digest was asked for so far ([`digest`](Self::digest),
    /// each after a `stat` of the file by the caller).
    pub fn looked_up(&self) -> u64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.looked_up))
            .unwrap_or(0)
    }

    /// Writes the cache back when it learned something. Entries of files
    /// that no longer exist are dropped: only those of files this build did
    /// not find are looked for (a file removed since it was found keeps its
    /// entry, which costs only space: an entry serves only a file whose
    /// `stat` matches it).
    pub fn save(&self, context: &Path) -> Result<(), kbuild_image::Error> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        // Never read: nothing learned.
        let Some(state) = state.as_mut() else {
            return Ok(());
        };
        let Some(path) = self.path.as_ref() else {
            return Ok(());
        };
        if !state.dirty {
            return Ok(());
        }
        state
            .entries
            .retain(|rel, e| e.2 || fs::symlink_metadata(context.join(rel)).is_ok());
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| kbuild_image::Error::Io {
                action: "create the checksum cache directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let file = FileOut {
            version: VERSION,
            entries: &state.entries,
        };
        kbuild_image::write_atomic_with(path, |w| {
            serde_json::to_writer(w, &file).map_err(|e| kbuild_image::Error::Io {
                action: "write the checksum cache",
                path: path.clone(),
                source: e.into(),
            })
        })?;
        state.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// A context holding the file `a` ("one"), and a cache directory
    /// beside it: (the temporary directory, context, `a`, cache).
    fn one_file_context() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let a = ctx.join("a");
        fs::write(&a, "one").unwrap();
        let dir = t.path().join("cache");
        (t, ctx, a, dir)
    }

    #[test]
    fn an_entry_is_saved_as_the_pair_of_its_stat_and_digest() {
        let (_t, _ctx, a, _dir) = one_file_context();
        let stat = Stat::of(&fs::metadata(&a).unwrap());
        let pair = serde_json::to_string(&(&stat, "d")).unwrap();
        let entry = Entry(stat, "d".to_string(), true);
        assert_eq!(serde_json::to_string(&entry).unwrap(), pair);
        let back: Entry = serde_json::from_str(&pair).unwrap();
        assert_eq!((back.1.as_str(), back.2), ("d", false));
    }

    #[test]
    fn a_cache_that_knows_no_file_says_so() {
        let (_t, ctx, a, dir) = one_file_context();
        let cache = ChecksumCache::load(&dir, &ctx);
        assert!(cache.knows_nothing());
        // Even a digest the racy-write rule keeps from the file counts.
        cache.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        assert!(!cache.knows_nothing());
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_changed_ones_are() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let a = ctx.join("a");
        fs::write(&a, "one").unwrap();
        // ctime cannot be set back: wait until the file is out of the
        // racy window instead.
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let dir = t.path().join("cache");
        let first = ChecksumCache::load(&dir, &ctx);
        let d1 = first.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        assert_eq!(first.hashed_bytes(), 3);
        first.save(&ctx).unwrap();

        let second = ChecksumCache::load(&dir, &ctx);
        let d2 = second.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        assert_eq!((d1.clone(), second.hashed_bytes()), (d2, 0));

        // Same size, and the mtime put back: the ctime still tells.
        fs::write(&a, "two").unwrap();
        set_mtime(&a, 10);
        let third = ChecksumCache::load(&dir, &ctx);
        let d3 = third.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        assert_ne!(d3, d1);
        assert_eq!(third.hashed_bytes(), 3);
    }

    #[test]
    fn what_a_copy_learned_serves_the_build_and_is_saved_unless_racy() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let (old, new) = (ctx.join("old"), ctx.join("new"));
        fs::write(&old, "old").unwrap();
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        fs::write(&new, "new").unwrap();
        let sha = |s: &str| hex::encode(Sha256::digest(s));
        let dir = t.path().join("cache");
        let cache = ChecksumCache::load(&dir, &ctx);
        let learned = ChecksumCache::in_memory();
        let now = SystemTime::now();
        for (rel, path, text) in [("old", &old, "old"), ("new", &new, "new")] {
            let md = fs::metadata(path).unwrap();
            assert_eq!(cache.known(rel, &md), None);
            learned.learn(rel, &md, &sha(text), 3, now);
        }
        cache.absorb(&learned);
        assert_eq!(cache.hashed_bytes(), 6);
        // Both serve this build without reading.
        for (rel, path, text) in [("old", &old, "old"), ("new", &new, "new")] {
            let md = fs::metadata(path).unwrap();
            assert_eq!(cache.digest(rel, path, &md).unwrap(), sha(text));
        }
        assert_eq!(cache.hashed_bytes(), 6);
        cache.save(&ctx).unwrap();
        // The next build knows the old file only.
        let next = ChecksumCache::load(&dir, &ctx);
        assert_eq!(
            next.known("old", &fs::metadata(&old).unwrap()),
            Some(sha("old"))
        );
        assert_eq!(next.known("new", &fs::metadata(&new).unwrap()), None);
    }

    /// A cold cache takes a copy's learned digests whole; a cache that
    /// knows some adds them (a learned digest replaces a racy one).
    #[test]
    fn absorbing_into_a_cold_and_into_a_warm_cache() {
        let (_t, ctx, file, dir) = one_file_context();
        let md = fs::metadata(&file).unwrap();
        let now = SystemTime::now();
        let cache = ChecksumCache::load(&dir, &ctx);
        let first = ChecksumCache::in_memory();
        first.learn("f", &md, "aa", 1, now);
        cache.absorb(&first);
        assert_eq!(cache.known("f", &md).as_deref(), Some("aa"));
        let second = ChecksumCache::in_memory();
        second.learn("g", &md, "bb", 2, now);
        second.learn("f", &md, "cc", 4, now);
        cache.absorb(&second);
        assert_eq!(cache.known("g", &md).as_deref(), Some("bb"));
        assert_eq!(cache.known("f", &md).as_deref(), Some("cc"));
        assert_eq!(cache.hashed_bytes(), 7);
        assert_eq!(first.hashed_bytes(), 0, "absorbing takes what was learned");
    }

    #[test]
    fn a_save_looks_only_for_the_files_the_build_did_not_find() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        for name in ["a", "b", "c", "d"] {
            fs::write(ctx.join(name), name).unwrap();
        }
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let md = |name: &str| fs::metadata(ctx.join(name)).unwrap();
        let dir = t.path().join("cache");
        let first = ChecksumCache::load(&dir, &ctx);
        for name in ["a", "b", "c"] {
            first.digest(name, &ctx.join(name), &md(name)).unwrap();
        }
        first.save(&ctx).unwrap();

        // The next build finds a, learns d; c and a go before it saves.
        let second = ChecksumCache::load(&dir, &ctx);
        assert!(second.known("a", &md("a")).is_some());
        second.insert_known("d", &md("d"), &hex::encode(Sha256::digest("d")));
        fs::remove_file(ctx.join("a")).unwrap();
        fs::remove_file(ctx.join("c")).unwrap();
        second.save(&ctx).unwrap();
        let saved = second.with(|s| {
            let mut names: Vec<String> = s.entries.keys().cloned().collect();
            names.sort();
            names
        });
        // c, not found by this build, was looked for and dropped; a, found
        // by it, was not looked for again (its entry is only stale).
        assert_eq!(saved, Some(vec!["a".into(), "b".into(), "d".into()]));

        // A new file where a was is not taken for the old one.
        fs::write(ctx.join("a"), "A").unwrap();
        let third = ChecksumCache::load(&dir, &ctx);
        assert_eq!(third.known("a", &md("a")), None);
        assert_eq!(
            third.known("b", &md("b")),
            Some(hex::encode(Sha256::digest("b")))
        );
        let d = third.digest("a", &ctx.join("a"), &md("a")).unwrap();
        assert_eq!(d, hex::encode(Sha256::digest("A")));
    }

    #[test]
    fn a_file_written_just_now_is_never_trusted() {
        let (_t, ctx, a, dir) = one_file_context();
        let first = ChecksumCache::load(&dir, &ctx);
        first.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        first.save(&ctx).unwrap();
        let second = ChecksumCache::load(&dir, &ctx);
        second.digest("a", &a, &fs::metadata(&a).unwrap()).unwrap();
        assert_eq!(second.hashed_bytes(), 3, "a racy entry was kept");
    }

    #[test]
    fn checksums_over_a_known_tree_are_computed_once_per_generation() {
        let t = tempfile::tempdir().unwrap();
        let memo = Arc::new(TreeChecksums::default());
        let computed = std::cell::Cell::new(0);
        let compute = |value: &str| {
            computed.set(computed.get() + 1);
            Ok::<_, std::io::Error>(value.to_string())
        };
        let cache = |generation: u8| {
            ChecksumCache::load(t.path(), t.path()).with_tree([generation; 32], memo.clone())
        };
        let first = cache(1);
        assert_eq!(
            first.tree_checksum(b"COPY a", || compute("x")).unwrap(),
            "x"
        );
        // Another build of the same tree: remembered, nothing computed.
        let again = cache(1);
        assert_eq!(
            again.tree_checksum(b"COPY a", || compute("y")).unwrap(),
            "x"
        );
        assert_eq!((computed.get(), again.tree_hits()), (1, 1));
        // Another request, or another generation: computed.
        assert_eq!(
            again.tree_checksum(b"COPY b", || compute("z")).unwrap(),
            "z"
        );
        let changed = cache(2);
        assert_eq!(
            changed.tree_checksum(b"COPY a", || compute("w")).unwrap(),
            "w"
        );
        assert_eq!((computed.get(), changed.tree_hits()), (3, 0));
        // An error is not remembered.
        let failed = cache(3).tree_checksum(b"COPY a", || {
            Err::<String, _>(std::io::Error::other("gone"))
        });
        assert!(failed.is_err());
        assert_eq!(
            cache(3).tree_checksum(b"COPY a", || compute("v")).unwrap(),
            "v"
        );
        // A cache that knows no tree computes every time.
        let plain = ChecksumCache::load(t.path(), t.path());
        plain.tree_checksum(b"COPY a", || compute("u")).unwrap();
        plain.tree_checksum(b"COPY a", || compute("u")).unwrap();
        assert_eq!((computed.get(), plain.tree_hits()), (6, 0));
    }
}

//! The threads that write a copy's regular files into its snapshot while
//! the copying thread goes on: creating a file through the overlay mount,
//! writing it, setting its owner, mode and times and checking the result
//! take most of a large cold COPY's time, and files are independent of
//! each other. The copying thread reads each source file once into a
//! buffer, feeds the layer's tar stream from it in order (so the layer is
//! the same whatever the number of threads) and hands the buffer here.
//! A file whose digest the copy needs (the checksum cache does not know
//! it) is hashed here too, from the same buffer: the copying thread is the
//! one every other stage waits for, and files hash independently.
//!
//! Memory stays bounded: only files up to [`MAX_FILE`] come here, and at
//! most [`QUEUED`] wait for a thread. The first failure is kept and
//! returned to the copy, whose upper is then dropped as on any failed copy.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::SystemTime;

use kbuild_worker::snapshot::{upper_file_is, EntryMeta};
use sha2::{Digest as _, Sha256};

use crate::checksums::ChecksumCache;
use crate::copy::CopyError;

/// The largest file handed to the writer threads; larger ones are copied
/// by the copying thread itself, in a stream.
pub(crate) const MAX_FILE: u64 = 1024 * 1024;

/// Files waiting for a writer thread (so at most this many times
/// [`MAX_FILE`] bytes, plus one per thread, are held).
const QUEUED: usize = 16;

/// One regular file to write into the snapshot.
pub(crate) struct FileJob {
    /// Where, on the copy's mount (nothing is there yet).
    pub host: PathBuf,
    /// The whole content, as read from the source.
    pub data: Vec<u8>,
    /// Owner, mode and mtime (seconds) to give it.
    pub meta: EntryMeta,
    /// The size its layer entry says.
    pub len: u64,
    /// Access and modification times (seconds, nanoseconds).
    pub times: [(i64, i64); 2],
    /// The file's name in the layer, to check once written.
    pub layer_rel: Vec<u8>,
    /// Hash the content: the copy needs the source file's digest.
    pub hash: Option<Hash>,
}

/// A source file to hash, from the bytes read for its copy.
pub(crate) struct Hash {
    /// The source's relative path.
    pub rel: String,
    /// Its metadata when it was read.
    pub md: fs::Metadata,
    /// When it was read.
    pub read_at: SystemTime,
    /// Whether the copy's checksum wants the digest
    /// ([`Finished::digests`]); the checksum cache, when there is one,
    /// learns it in any case.
    pub report: bool,
}

/// How the writer threads of a copy ended, when none failed.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// Why a written file is not what its layer entry says, if one is not.
    pub off: Option<&'static str>,
    /// The digests (hex sha256) of the files hashed for the copy's
    /// checksum, by source relative path.
    pub digests: HashMap<String, String>,
}

/// What the writer threads share with the copying thread.
#[derive(Default)]
struct Shared {
    /// The first failure to write a file.
    failed: Mutex<Option<CopyError>>,
    /// Why a written file is not what its layer entry says, if one is not.
    off: Mutex<Option<&'static str>>,
    /// Set once the copy failed or ended: queued files are dropped.
    stop: AtomicBool,
    /// The digests reported ([`Hash::report`]).
    digests: Mutex<HashMap<String, String>>,
}

impl Shared {
    fn fail(&self, e: CopyError) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(e);
        }
    }

    fn take_failure(&self) -> Option<CopyError> {
        self.failed.lock().ok().and_then(|mut f| f.take())
    }
}

/// Writer threads of one copy, started in `scope` so that they may borrow
/// the checksum cache.
pub(crate) struct FileWriters<'scope> {
    tx: Option<SyncSender<FileJob>>,
    shared: Arc<Shared>,
    threads: Vec<ScopedJoinHandle<'scope, ()>>,
}

/// How a copy ends for its writer threads: `Err` is the first failure.
pub(crate) type Outcome = Result<Finished, CopyError>;

impl<'scope> FileWriters<'scope> {
    /// `threads` writers for files under the upper directory `upper`
    /// (where each is checked), learning digests into `cache`; `None` when
    /// no thread could be started.
    pub(crate) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        threads: usize,
        upper: &'env Path,
        cache: Option<&'env ChecksumCache>,
    ) -> Option<FileWriters<'scope>> {
        let (tx, rx) = sync_channel::<FileJob>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared::default());
        let threads = (0..threads.max(1))
            .map_while(|_| {
                let (rx, shared) = (rx.clone(), shared.clone());
                // Named for per-thread profiles; a thread that cannot be
                // started leaves the work to the others.
                std::thread::Builder::new()
                    .name("copy-writer".into())
                    .spawn_scoped(scope, move || serve(&rx, &shared, upper, cache))
                    .ok()
            })
            .collect::<Vec<_>>();
        // Without a thread the copying thread writes every file itself.
        (!threads.is_empty()).then(|| FileWriters {
            tx: Some(tx),
            shared,
            threads,
        })
    }

    /// Queues `job` (waiting while the queue is full); `Err` is an earlier
    /// file's failure, which ends the copy.
    pub(crate) fn write(&self, job: FileJob) -> Result<(), CopyError> {
        if let Some(e) = self.shared.take_failure() {
            return Err(e);
        }
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            // Every thread ended early: only a panic does that.
            return Err(self
                .shared
                .take_failure()
                .unwrap_or(CopyError::WriterStopped));
        }
        Ok(())
    }

    /// Moves the digests reported so far ([`Hash::report`]) into `into`.
    pub(crate) fn take_digests(&self, into: &mut HashMap<String, String>) {
        if let Ok(mut d) = self.shared.digests.lock() {
            into.extend(d.drain());
        }
    }

    /// Waits for every queued file to be written.
    pub(crate) fn finish(mut self) -> Outcome {
        drop(self.tx.take());
        let mut panicked = false;
        for t in std::mem::take(&mut self.threads) {
            panicked |= t.join().is_err();
        }
        if let Some(e) = self.shared.take_failure() {
            return Err(e);
        }
        if panicked {
            return Err(CopyError::WriterStopped);
        }
        Ok(Finished {
            off: self.shared.off.lock().ok().and_then(|o| *o),
            digests: self
                .shared
                .digests
                .lock()
                .map(|mut d| std::mem::take(&mut *d))
                .unwrap_or_default(),
        })
    }
}

impl Drop for FileWriters<'_> {
    fn drop(&mut self) {
        // A copy that failed on its own thread: what is queued is moot.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// One writer thread: takes files off the queue until it is closed.
fn serve(
    rx: &Mutex<Receiver<FileJob>>,
    shared: &Shared,
    upper: &Path,
    cache: Option<&ChecksumCache>,
) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        if shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = write_file(&job) {
            shared.fail(e);
            continue;
        }
        if let Some(h) = job.hash.as_ref() {
            let digest = hex::encode(Sha256::digest(&job.data));
            if let Some(cache) = cache {
                cache.learn(&h.rel, &h.md, &digest, job.data.len() as u64, h.read_at);
            }
            if h.report {
                if let Ok(mut d) = shared.digests.lock() {
                    d.insert(h.rel.clone(), digest);
                }
            }
        }
        check(&job, upper, shared);
    }
}

/// Creates the file and gives it its content, owner, mode and times, on
/// the open file (one path lookup through the overlay instead of four).
fn write_file(job: &FileJob) -> Result<(), CopyError> {
    let at = |source| CopyError::Io {
        path: job.host.clone(),
        source,
    };
    let mut f = fs::File::create(&job.host).map_err(at)?;
    f.write_all(&job.data).map_err(at)?;
    std::os::unix::fs::fchown(&f, Some(job.meta.uid), Some(job.meta.gid)).map_err(at)?;
    // After chown, which clears setuid/setgid bits.
    f.set_permissions(fs::Permissions::from_mode(job.meta.mode))
        .map_err(at)?;
    let time = |(secs, nanos): (i64, i64)| {
        filetime::FileTime::from_unix_time(secs, u32::try_from(nanos).unwrap_or(0))
    };
    let [atime, mtime] = job.times;
    filetime::set_file_handle_times(&f, Some(time(atime)), Some(time(mtime))).map_err(at)
}

/// Checks that the upper holds the file as its layer entry says.
fn check(job: &FileJob, upper: &Path, shared: &Shared) {
    let why = match upper_file_is(upper, &job.layer_rel, &job.meta, job.len) {
        Ok(true) => return,
        Ok(false) => "a file whose metadata differs from its entry",
        Err(error) => {
            tracing::debug!(%error, "checking a copied file failed");
            "checking a copied file failed"
        }
    };
    if let Ok(mut off) = shared.off.lock() {
        off.get_or_insert(why);
    }
}

//! Read-ahead for a copy's source files. The copying thread reads one file
//! after another; where they are not in the page cache, each read waits
//! for the disk and the compressor and writers behind it wait too (a
//! cold 1 GiB / 20k-file COPY from an uncached context took 7.7 s against
//! 4.0 s cached, while the disk reads those files in 1.3 s when asked for
//! several at once). As the copy lists a directory it hands the regular
//! files it will read there (names and sizes) to this thread, which asks
//! the kernel to start reading them (`posix_fadvise(WILLNEED)`, which does not wait), so the
//! disk works ahead of the copy. A directory whose first file is cached
//! already (a context just written or read) costs a few system calls.
//! Only a hint: nothing here can fail the copy.

use std::ffi::OsString;
use std::io::IoSliceMut;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::Scope;

use rustix::fs::{Mode, OFlags};

/// Directories waiting for the thread; a directory that finds the queue
/// full gets no read-ahead (the copy never waits for this thread).
const QUEUED: usize = 4;

/// Bytes of one file asked for at most: the kernel's own read-ahead takes
/// a large file on once the copy reads it.
const PER_FILE: u64 = 4 << 20;

/// Bytes of one directory asked for at most.
const PER_DIR: u64 = 64 << 20;

/// The read-ahead thread of one copy; it ends when this is dropped.
pub(crate) struct Prefetch {
    tx: SyncSender<(PathBuf, Vec<(OsString, u64)>)>,
}

impl Prefetch {
    /// Starts the thread in `scope`; `None` when it cannot be started (the
    /// copy goes on without read-ahead).
    pub(crate) fn start<'scope>(scope: &'scope Scope<'scope, '_>) -> Option<Prefetch> {
        let (tx, rx) = sync_channel(QUEUED);
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn_scoped(scope, move || serve(rx))
            .ok()?;
        Some(Prefetch { tx })
    }

    /// The copy is about to read `files` of `dir` (names and sizes), in
    /// order.
    pub(crate) fn files(&self, dir: &Path, files: Vec<(OsString, u64)>) {
        let _ = self.tx.try_send((dir.to_path_buf(), files));
    }
}

fn serve(rx: Receiver<(PathBuf, Vec<(OsString, u64)>)>) {
    for (dir, files) in rx {
        read_ahead(&dir, &files);
    }
}

/// Asks for `files` of `dir` (names and sizes), unless the first of them
/// is in the page cache.
fn read_ahead(dir: &Path, files: &[(OsString, u64)]) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Ok(d) = rustix::fs::open(dir, flags, Mode::empty()) else {
        return;
    };
    let mut budget = PER_DIR;
    for (i, (name, size)) in files.iter().enumerate() {
        // Non-blocking and not following links: whatever replaced the file
        // since the copy looked at it (a fifo) cannot hold this thread.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(f) = rustix::fs::openat(&d, name, flags, Mode::empty()) else {
            continue;
        };
        if i == 0 && cached(&f) {
            return;
        }
        let len = (*size).min(PER_FILE).min(budget);
        let _ = rustix::fs::fadvise(&f, 0, NonZeroU64::new(len), rustix::fs::Advice::WillNeed);
        budget -= len;
        if budget == 0 {
            return;
        }
    }
}

/// Whether the first byte of `f` is in the page cache (a read that must
/// not wait for the disk succeeds).
fn cached(f: &std::os::fd::OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    rustix::io::preadv2(
        f,
        &mut [IoSliceMut::new(&mut byte)],
        0,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::{Duration, Instant};

    /// How many of the file's pages are in the page cache, and how many it
    /// has (`mincore`, which reads nothing, unlike a probing read).
    fn resident(path: &Path) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(path).unwrap();
        let len = usize::try_from(f.metadata().unwrap().len()).unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a private read-only mapping of `len` bytes of an open
        // file, only looked at by mincore (never dereferenced), unmapped
        // before return; `vec` has one byte per page.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let r = libc::mincore(p, len, vec.as_mut_ptr());
            libc::munmap(p, len);
            assert_eq!(r, 0, "mincore");
        }
        (vec.iter().filter(|b| *b & 1 == 1).count(), pages)
    }

    /// Drops the file's pages from the page cache (written back first).
    fn evict(path: &Path) {
        let f = fs::File::open(path).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }

    /// A directory's uncached files are read into the page cache ahead of
    /// the copy; a fifo among them does not hold the thread; the thread
    /// ends with its `Prefetch`.
    #[test]
    fn uncached_files_of_a_listed_directory_are_read_ahead() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("f{i}"))).collect();
        for f in &files {
            fs::write(f, vec![7u8; 256 << 10]).unwrap();
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("a-fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        for f in &files {
            evict(f);
        }
        if files.iter().any(|f| resident(f).0 > 0) {
            kbuild_testkit::fixtures::skip_or_fail(
                "the temporary directory's filesystem keeps evicted pages (tmpfs?)",
            );
            return;
        }
        // A fifo where the copy saw a file (replaced since) is passed over
        // without blocking.
        let mut listed: Vec<(OsString, u64)> = files
            .iter()
            .map(|f| (f.file_name().unwrap_or_default().to_os_string(), 256 << 10))
            .collect();
        listed.insert(1, ("a-fifo".into(), 1));
        std::thread::scope(|scope| {
            let prefetch = Prefetch::start(scope).expect("the read-ahead thread starts");
            prefetch.files(dir, listed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !files.iter().all(|f| {
                let (cached, pages) = resident(f);
                cached == pages
            }) {
                assert!(Instant::now() < deadline, "the files were not read ahead");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }

    /// A directory whose first file is cached is left alone.
    #[test]
    fn a_directory_whose_first_file_is_cached_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, vec![1u8; 64 << 10]).unwrap();
        fs::write(&b, vec![2u8; 64 << 10]).unwrap();
        evict(&b);
        fs::read(&a).unwrap();
        if resident(&b).0 > 0 || resident(&a).0 == 0 {
            kbuild_testkit::fixtures::skip_or_fail(
                "the temporary directory's filesystem keeps evicted pages (tmpfs?)",
            );
            return;
        }
        read_ahead(t.path(), &[("a".into(), 64 << 10), ("b".into(), 64 << 10)]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(resident(&b).0, 0, "b was read although a was cached");
    }
}

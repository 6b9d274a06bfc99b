//! Crash recovery and garbage collection of snapshots, with a real process
//! that holds a mount, a committed snapshot and a half-unpacked layer and
//! is killed with SIGKILL, next to live entries of this process.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kbuild_image::ContentStore;
use kbuild_worker::snapshot::Snapshotter;
use sha2::{Digest, Sha256};

mod common;

use common::{layer, require_root};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().into_owned();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A layer stream that sends the start of a tar entry and then never ends:
/// one header block by hand, as no tar writer stops halfway.
struct Stalling {
    sent: bool,
}

impl Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.sent {
            std::thread::sleep(Duration::from_secs(3600));
            return Ok(0);
        }
        self.sent = true;
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(1 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let n = 512.min(buf.len());
        buf[..n].copy_from_slice(&h.as_bytes()[..n]);
        Ok(n)
    }
}

/// The id the child's stalled unpack uses.
fn stalled_id() -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b"never finishes")))
}

/// Run by [`a_killed_owners_entries_are_reclaimed_and_live_ones_kept`] in a
/// child process: holds a mount, a committed snapshot and an unpack in
/// progress, prints where they are, and waits to be killed.
#[test]
#[ignore = "helper process of a_killed_owners_entries_are_reclaimed_and_live_ones_kept"]
fn entry_owner_child() {
    let root = std::env::var_os("KBUILD_RECOVER_ROOT").expect("started by the parent test");
    let snap = Snapshotter::new(root).unwrap();
    let (tar, id) = layer("base", b"base");
    let base = snap.unpack_layer(&id, &tar[..]).unwrap();
    let mount = snap.mount(std::slice::from_ref(&base)).unwrap();
    fs::write(mount.merged().join("child"), "child").unwrap();
    let other = snap.mount(std::slice::from_ref(&base)).unwrap();
    fs::write(other.merged().join("committed"), "committed").unwrap();
    let snapshot = other.commit().unwrap();
    let hex = stalled_id()["sha256:".len()..].to_string();
    let tmp = snap.root().join("tmp").join(&hex);
    let unpacker = snap.clone();
    std::thread::spawn(move || unpacker.unpack_layer(&stalled_id(), Stalling { sent: false }));
    while !tmp.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "READY {} {} {}",
        mount.merged().display(),
        snapshot.path().display(),
        tmp.display()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_owners_entries_are_reclaimed_and_live_ones_kept() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "entry_owner_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KBUILD_RECOVER_ROOT", sandbox.path())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let ready = loop {
        let line = lines
            .next()
            .ok_or("the child ended before it was ready")??;
        // The harness prints "test NAME ... " on the same line.
        if let Some((_, rest)) = line.split_once("READY ") {
            break rest.to_string();
        }
    };
    let paths: Vec<PathBuf> = ready.split(' ').map(PathBuf::from).collect();
    let [child_merged, child_snapshot, child_tmp] = &paths[..] else {
        return Err(format!("bad READY line {ready:?}").into());
    };
    assert!(mounted(child_merged));

    // Live entries of this process.
    let (tar, id) = layer("base", b"base");
    let base = snap.unpack_layer(&id, &tar[..])?;
    let live = snap.mount(std::slice::from_ref(&base))?;
    fs::write(live.merged().join("live"), "live")?;
    let other = snap.mount(std::slice::from_ref(&base))?;
    fs::write(other.merged().join("kept"), "kept")?;
    let live_snapshot = other.commit()?;

    // While the child lives, nothing of either process is touched.
    let r = snap.recover()?;
    assert!(r.is_empty(), "{r:?}");
    assert!(mounted(child_merged) && child_snapshot.exists() && child_tmp.exists());

    child.kill()?; // SIGKILL: no destructor runs
    child.wait()?;
    assert!(mounted(child_merged), "a killed process leaves its mount");

    let r = snap.recover()?;
    assert_eq!(r.unmounted, vec![child_merged.clone()]);
    let child_dir = child_merged.parent().ok_or("no parent")?.to_path_buf();
    let mut removed = r.removed.clone();
    removed.sort();
    let mut want = vec![child_dir.clone(), child_snapshot.clone(), child_tmp.clone()];
    want.sort();
    assert_eq!(removed, want);
    assert!(!mounted(child_merged));
    assert!(!child_dir.exists() && !child_snapshot.exists() && !child_tmp.exists());

    // This process's entries are intact and still work.
    assert!(mounted(live.merged()));
    assert_eq!(fs::read_to_string(live.merged().join("live"))?, "live");
    assert_eq!(fs::read_to_string(live_snapshot.join("kept"))?, "kept");
    assert!(snap.recover()?.is_empty(), "nothing left to reclaim");

    // The stalled layer unpacks normally now.
    let hex = &stalled_id()["sha256:".len()..];
    assert!(snap.layer(&stalled_id())?.is_none());
    assert!(!sandbox.path().join("tmp").join(hex).exists());

    let live_merged = live.merged().to_path_buf();
    live.unmount()?;
    drop(live_snapshot);
    assert!(!mounted(&live_merged));
    for sub in ["mounts", "snapshots", "tmp"] {
        assert_eq!(
            entries(&sandbox.path().join(sub)),
            Vec::<PathBuf>::new(),
            "{sub}"
        );
    }
    Ok(())
}

#[test]
fn gc_drops_unreferenced_layers_under_the_exclusive_store_lock() -> TestResult {
    let sandbox = tempfile::tempdir()?;
    let store = ContentStore::open(sandbox.path().join("content"))?;
    let snap = Snapshotter::new(sandbox.path().join("snapshots"))?;
    let (kept_tar, kept_id) = layer("kept", b"kept");
    let (gone_tar, gone_id) = layer("gone", b"twelve bytes");
    let kept = snap.unpack_layer(&kept_id, &kept_tar[..])?;
    let gone = snap.unpack_layer(&gone_id, &gone_tar[..])?;
    // A leftover of an older version: a mount directory without a lock.
    let orphan = sandbox.path().join("snapshots/mounts/mOrphan");
    fs::create_dir_all(orphan.join("upper"))?;
    // What a collection killed while deleting a layer leaves.
    let half_deleted = sandbox.path().join("snapshots/tmp/gc-0123");
    fs::create_dir_all(half_deleted.join("usr/bin"))?;

    let build = store.lock_shared()?;
    assert!(
        store.try_lock_exclusive().is_err(),
        "no GC while a build runs"
    );
    drop(build);
    let held = store.try_lock_exclusive()?;
    let report = snap.gc(&held, [kept_id.as_str(), "not a diff id"])?;
    assert_eq!(report.removed_layers, 1);
    assert_eq!(report.freed_bytes, 12);
    let mut recovered = report.recovered.removed.clone();
    recovered.sort();
    assert_eq!(recovered, vec![orphan.clone(), half_deleted.clone()]);
    assert_eq!(
        entries(&sandbox.path().join("snapshots/tmp")),
        Vec::<PathBuf>::new(),
        "no trash left"
    );
    assert!(kept.join("kept").exists());
    assert!(!gone.exists() && !orphan.exists());
    assert_eq!(snap.layer(&gone_id)?, None);
    Ok(())
}

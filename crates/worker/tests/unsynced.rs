//! Volatile overlay mounts and the boot markers of layers published
//! without a sync, on real overlay mounts (root).

use std::fs;
use std::path::{Path, PathBuf};

use kbuild_image::ContentStore;
use kbuild_worker::snapshot::{write_diff, DiffOptions, Snapshotter};
use sha2::{Digest, Sha256};

mod common;

use common::{layer, require_root};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_string()
}

fn hex_of(diff_id: &str) -> &str {
    diff_id.split_once(':').map(|(_, h)| h).unwrap_or(diff_id)
}

fn marker(snap: &Snapshotter, diff_id: &str) -> PathBuf {
    snap.root()
        .join("layers")
        .join(format!("{}.boot", hex_of(diff_id)))
}

/// The names in the snapshotter's `layers/` directory, sorted.
fn layer_dir_names(snap: &Snapshotter) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(snap.root().join("layers"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// Whether overlayfs shows the mount as volatile: `volatile` on older
/// kernels, `fsync=volatile` on newer ones (the same setting).
fn is_volatile(opts: &[String]) -> bool {
    opts.iter()
        .any(|o| o == "volatile" || o == "fsync=volatile")
}

/// The superblock options of the mount at `path` (after ` - fstype source`).
fn super_options(path: &Path) -> Option<Vec<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy().into_owned();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))?;
    let (_, rest) = line.split_once(" - ")?;
    let opts = rest.split(' ').nth(2)?;
    Some(opts.split(',').map(str::to_string).collect())
}

#[test]
fn mounts_are_volatile_and_a_second_mount_still_works() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let (tar, id) = layer("base", b"base");
    let base = snap.unpack_layer(&id, &tar[..])?;

    let first = snap.mount(std::slice::from_ref(&base))?;
    let opts = super_options(first.merged()).ok_or("the first mount is not in mountinfo")?;
    assert!(
        is_volatile(&opts),
        "mounted volatile on this kernel: {opts:?}"
    );
    let mount_dir = first.merged().parent().ok_or("no mount dir")?.to_path_buf();
    assert!(
        mount_dir.join("work/work/incompat/volatile").is_dir(),
        "overlayfs keeps its volatile mark in the work directory"
    );
    // A second mount of the same process, while the first is mounted.
    let second = snap.mount(std::slice::from_ref(&base))?;
    let opts = super_options(second.merged()).ok_or("the second mount is not in mountinfo")?;
    assert!(is_volatile(&opts), "{opts:?}");
    fs::write(first.merged().join("one"), "1")?;
    fs::write(second.merged().join("two"), "2")?;
    assert_eq!(fs::read(second.merged().join("base"))?, b"base");
    assert!(!first.merged().join("two").exists());
    first.unmount()?;
    // No volatile upper/work pair outlives its mount.
    assert!(!mount_dir.exists(), "the mount directory is removed");
    let committed = second.commit()?;
    assert_eq!(fs::read(committed.join("two"))?, b"2");
    assert_eq!(
        fs::read_dir(snap.root().join("mounts"))?.count(),
        1,
        "only the lock of the committed snapshot"
    );
    drop(committed);
    assert_eq!(fs::read_dir(snap.root().join("mounts"))?.count(), 0);
    // And one more after both are gone.
    let third = snap.mount(&[base])?;
    assert_eq!(fs::read(third.merged().join("base"))?, b"base");
    third.unmount()?;
    Ok(())
}

#[test]
fn adopted_and_unpacked_layers_carry_this_boots_marker() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let (tar, id) = layer("unpacked", b"u");
    snap.unpack_layer(&id, &tar[..])?;
    assert_eq!(fs::read_to_string(marker(&snap, &id))?.trim(), boot_id());

    let mount = snap.mount(&[])?;
    fs::write(mount.merged().join("made"), "m")?;
    let committed = mount.commit()?;
    let mut out = tar::Builder::new(Vec::new());
    write_diff(&committed, &[], &mut out, &DiffOptions::default())?;
    let adopted_id = format!("sha256:{}", hex::encode(Sha256::digest(out.into_inner()?)));
    let adopted = snap.adopt_layer(&adopted_id, &committed)?;
    assert_eq!(
        fs::read_to_string(marker(&snap, &adopted_id))?.trim(),
        boot_id()
    );
    assert_eq!(snap.layer(&adopted_id)?, Some(adopted.clone()));
    assert_eq!(fs::read(adopted.join("made"))?, b"m");
    // No temp file of the marker writer is left beside the layers.
    let names = layer_dir_names(&snap)?;
    let mut want = vec![
        hex_of(&id).to_string(),
        format!("{}.boot", hex_of(&id)),
        hex_of(&adopted_id).to_string(),
        format!("{}.boot", hex_of(&adopted_id)),
    ];
    want.sort();
    assert_eq!(names, want);
    Ok(())
}

#[test]
fn a_layer_of_another_boot_is_dropped_and_made_again() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let other_boot = "00000000-0000-4000-8000-000000000000\n";
    assert_ne!(other_boot.trim(), boot_id());

    // Found by `layer()`: reported absent and removed, marker included.
    let (tar, id) = layer("data", b"what the layer holds");
    let dir = snap.unpack_layer(&id, &tar[..])?;
    // What a power cut may leave of an unsynced file.
    fs::write(dir.join("data"), "")?;
    fs::write(marker(&snap, &id), other_boot)?;
    assert_eq!(snap.layer(&id)?, None);
    assert!(!dir.exists(), "the layer is removed");
    assert!(!marker(&snap, &id).exists(), "its marker too");
    assert_eq!(
        fs::read_dir(snap.root().join("tmp"))?.count(),
        0,
        "nothing left in tmp/"
    );
    let again = snap.unpack_layer(&id, &tar[..])?;
    assert_eq!(again, dir);
    assert_eq!(fs::read(again.join("data"))?, b"what the layer holds");
    assert_eq!(fs::read_to_string(marker(&snap, &id))?.trim(), boot_id());
    assert_eq!(snap.layer(&id)?, Some(dir.clone()));

    // Found by `unpack_layer`'s own check: made again from the tar, not
    // reused.
    fs::write(dir.join("data"), "")?;
    fs::write(marker(&snap, &id), other_boot)?;
    let again = snap.unpack_layer(&id, &tar[..])?;
    assert_eq!(fs::read(again.join("data"))?, b"what the layer holds");
    assert_eq!(fs::read_to_string(marker(&snap, &id))?.trim(), boot_id());

    // An empty (torn) marker is not this boot's either.
    fs::write(dir.join("data"), "")?;
    fs::write(marker(&snap, &id), "")?;
    assert_eq!(snap.layer(&id)?, None);

    // Adopting over a layer of another boot replaces it.
    snap.unpack_layer(&id, &tar[..])?;
    fs::write(dir.join("data"), "")?;
    fs::write(marker(&snap, &id), other_boot)?;
    let mount = snap.mount(&[])?;
    fs::write(mount.merged().join("data"), "what the layer holds")?;
    let committed = mount.commit()?;
    let adopted = snap.adopt_layer(&id, &committed)?;
    assert_eq!(fs::read(adopted.join("data"))?, b"what the layer holds");
    assert_eq!(fs::read_to_string(marker(&snap, &id))?.trim(), boot_id());
    Ok(())
}

#[test]
fn a_layer_without_a_marker_is_trusted() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let snap = Snapshotter::new(sandbox.path())?;
    let (tar, id) = layer("old", b"made before boot markers");
    let dir = snap.unpack_layer(&id, &tar[..])?;
    fs::remove_file(marker(&snap, &id))?;
    assert_eq!(snap.layer(&id)?, Some(dir.clone()));
    // The reader is not consulted: the layer is reused as it is.
    assert_eq!(snap.unpack_layer(&id, std::io::empty())?, dir);
    assert_eq!(fs::read(dir.join("old"))?, b"made before boot markers");
    assert!(
        !marker(&snap, &id).exists(),
        "no marker is added to a trusted layer"
    );
    Ok(())
}

#[test]
fn gc_removes_markers_with_their_layers_and_recovery_keeps_them() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let sandbox = tempfile::tempdir()?;
    let store = ContentStore::open(sandbox.path().join("content"))?;
    let snap = Snapshotter::new(sandbox.path().join("snapshots"))?;
    let (kept_tar, kept_id) = layer("kept", b"kept");
    let (gone_tar, gone_id) = layer("gone", b"gone");
    snap.unpack_layer(&kept_id, &kept_tar[..])?;
    snap.unpack_layer(&gone_id, &gone_tar[..])?;
    // A marker whose layer is gone (a removal that died halfway).
    let (_, orphan_id) = layer("orphan", b"orphan");
    fs::write(marker(&snap, &orphan_id), format!("{}\n", boot_id()))?;

    let recovered = snap.recover()?;
    assert!(recovered.is_empty(), "{recovered:?}");
    for id in [&kept_id, &gone_id, &orphan_id] {
        assert!(marker(&snap, id).exists(), "recovery keeps {id}'s marker");
    }

    let held = store.try_lock_exclusive()?;
    let report = snap.gc(&held, [kept_id.as_str()])?;
    assert_eq!(
        report.removed_layers, 1,
        "markers are not counted as layers"
    );
    assert_eq!(report.freed_bytes, 4);
    assert!(report.recovered.is_empty(), "{:?}", report.recovered);
    assert!(
        marker(&snap, &kept_id).exists(),
        "a kept layer keeps its marker"
    );
    assert!(!marker(&snap, &gone_id).exists(), "removed with its layer");
    assert!(
        !marker(&snap, &orphan_id).exists(),
        "a marker without a layer"
    );
    let names = layer_dir_names(&snap)?;
    assert_eq!(
        names,
        [
            hex_of(&kept_id).to_string(),
            format!("{}.boot", hex_of(&kept_id))
        ]
    );
    assert!(snap.layer(&kept_id)?.is_some());
    assert_eq!(snap.layer(&gone_id)?, None);
    Ok(())
}

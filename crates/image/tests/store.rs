//! Content store: digests, commit/verify, concurrency, resume, refs, prune.

mod common;

use std::fs;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use kbuild_image::{ContentStore, Digest, DigestWriter, Error, Index, STALE_INGEST_AGE};

#[test]
fn digest_case_table() {
    let table = include_str!("cases/digests.txt");
    let mut checked = 0;
    for line in table.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (expect, input) = line
            .split_once(' ')
            .expect("case line is '<ok|err> <input>'");
        let parsed = Digest::parse(input);
        match expect {
            "ok" => {
                let d = parsed.unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
                assert_eq!(d.to_string(), input, "Display round-trips");
            }
            "err" => assert!(parsed.is_err(), "{input:?} should be rejected"),
            other => panic!("bad expectation {other:?}"),
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn digest_of_matches_sha256sum_and_writer() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let path = dir.path().join("data");
    fs::write(&path, &data).unwrap();
    let expected = common::sha256sum(&path);
    assert_eq!(Digest::of(&data).to_string(), expected);
    let mut w = DigestWriter::new(Vec::new());
    for chunk in data.chunks(777) {
        w.write_all(chunk).unwrap();
    }
    let (inner, digest, n) = w.finish();
    assert_eq!(digest.to_string(), expected);
    assert_eq!(n, data.len() as u64);
    assert_eq!(inner, data);
    assert_eq!(Digest::parse(&expected).unwrap(), digest);
}

#[test]
fn put_read_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let (d, size) = store.put_bytes(b"{}").unwrap();
    assert_eq!(size, 2);
    assert_eq!(
        store.path(&d),
        dir.path().join("blobs/sha256").join(d.hex())
    );
    assert_eq!(common::sha256sum(&store.path(&d)), d.to_string());
    assert!(store.has(&d));
    assert_eq!(store.read(&d).unwrap(), b"{}");
    assert_eq!(store.size(&d).unwrap(), 2);
    // Committed blobs are read-only.
    let mode = fs::metadata(store.path(&d)).unwrap().permissions();
    assert!(mode.readonly());
    // Nothing left in the ingest area.
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    let missing = Digest::of(b"missing");
    assert!(matches!(store.read(&missing), Err(Error::NotFound { .. })));
    assert!(matches!(
        store.open_blob(&missing),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn commit_verifies_digest_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let wrong = Digest::of(b"something else");
    let mut w = store.writer().unwrap();
    w.write_all(b"payload").unwrap();
    let err = w.commit(Some(&wrong)).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wrong.to_string()));
    assert!(!store.has(&Digest::of(b"payload")));

    let mut w = store.writer().unwrap();
    w.write_all(b"payload").unwrap();
    let err = w.commit_exact(&Digest::of(b"payload"), 8).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 8,
                actual: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.has(&Digest::of(b"payload")));

    // A blob of another size than its descriptor says is a size mismatch
    // naming the descriptor's digest, not a digest mismatch (its digest
    // differs too, but that says less).
    let want = Digest::of(b"payload plus more");
    for (data, actual) in [(&b"payload"[..], 7), (&b"payload plus more!"[..], 18)] {
        let mut w = store.writer().unwrap();
        w.write_all(data).unwrap();
        let err = w.commit_exact(&want, 17).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::SizeMismatch { digest, expected: 17, actual: a } if *digest == want && *a == actual
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "size mismatch for {want}: its descriptor says 17 bytes but {actual} bytes \
                 arrived; the download was truncated or padded, or the descriptor is wrong"
            )
        );
        assert!(!store.has(&Digest::of(data)));
    }
    // The right size with other bytes is a digest mismatch.
    let mut w = store.writer().unwrap();
    w.write_all(b"payload PLUS more").unwrap();
    let err = w.commit_exact(&want, 17).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { expected, .. } if expected == want),
        "{err}"
    );

    let mut w = store.writer().unwrap();
    w.write_all(b"payload").unwrap();
    let (d, n) = w.commit_exact(&Digest::of(b"payload"), 7).unwrap();
    assert_eq!((d, n), (Digest::of(b"payload"), 7));
    assert!(store.has(&d));
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let mut w = store.writer().unwrap();
    w.write_all(&[7u8; 1 << 20]).unwrap();
    let path = w.path().to_path_buf();
    assert!(path.exists());
    drop(w);
    assert!(!path.exists());
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn concurrent_writers_of_the_same_blob_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..4_000_000u32).map(|i| (i % 251) as u8).collect());
    let expected = Digest::of(&data);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, data, barrier) = (store.clone(), data.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut w = store.writer().unwrap();
                for chunk in data.chunks(65_536) {
                    w.write_all(chunk).unwrap();
                }
                barrier.wait(); // all commit at once
                w.commit(Some(&expected))
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), (expected, data.len() as u64));
    }
    assert_eq!(
        common::sha256sum(&store.path(&expected)),
        expected.to_string()
    );
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
}

#[test]
fn resumable_ingest_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let expected = Digest::of(&data);
    let key = expected.to_string();

    let (mut w, offset) = store.writer_resumable(&key).unwrap();
    assert_eq!(offset, 0);
    w.write_all(&data[..1_234_567]).unwrap();
    // A second writer for the same key is refused while the first is alive.
    assert!(matches!(
        store.writer_resumable(&key),
        Err(Error::IngestBusy { .. })
    ));
    drop(w); // "connection lost"

    let (mut w, offset) = store.writer_resumable(&key).unwrap();
    assert_eq!(offset, 1_234_567);
    assert_eq!(w.offset(), 1_234_567);
    w.write_all(&data[offset as usize..]).unwrap();
    let (d, n) = w.commit_exact(&expected, data.len() as u64).unwrap();
    assert_eq!((d, n), (expected, data.len() as u64));
    assert_eq!(common::sha256sum(&store.path(&d)), key);
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);

    // A corrupt partial download is dropped on verification failure...
    let other = Digest::of(b"other");
    let (mut w, _) = store.writer_resumable("k2").unwrap();
    w.write_all(b"garbage").unwrap();
    assert!(w.commit(Some(&other)).is_err());
    // ...so the next attempt starts from zero.
    let (w, offset) = store.writer_resumable("k2").unwrap();
    assert_eq!(offset, 0);
    w.abort().unwrap();
    assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
}

/// Blobs larger than the ingest's writeback step (8 MiB), written in odd
/// pieces, fresh and resumed at an offset that is no multiple of the step:
/// the bytes and digest are the ones written (the early writeback is
/// invisible but for the time the commit's fsync takes).
#[test]
fn large_ingests_across_writeback_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..21_000_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Digest::of(&data);

    let mut w = store.writer().unwrap();
    for piece in data.chunks(999_983) {
        w.write_all(piece).unwrap();
    }
    let (d, n) = w.commit_exact(&expected, data.len() as u64).unwrap();
    assert_eq!((d, n), (expected, data.len() as u64));
    assert_eq!(fs::read(store.path(&d)).unwrap(), data);
    fs::remove_file(store.path(&d)).unwrap();

    let key = "large";
    let (mut w, _) = store.writer_resumable(key).unwrap();
    w.write_all(&data[..9_437_185]).unwrap();
    drop(w);
    let (mut w, offset) = store.writer_resumable(key).unwrap();
    assert_eq!(offset, 9_437_185);
    for piece in data[offset as usize..].chunks(3_333_331) {
        w.write_all(piece).unwrap();
    }
    let (d, _) = w.commit_exact(&expected, data.len() as u64).unwrap();
    assert_eq!(fs::read(store.path(&d)).unwrap(), data);
}

#[test]
fn refs_round_trip_and_reject_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let (a, _) = store.put_bytes(b"a").unwrap();
    let (b, _) = store.put_bytes(b"b").unwrap();
    store
        .set_ref("image/docker.io/library/alpine:latest", &a)
        .unwrap();
    store.set_ref("cache/sha256:abc", &b).unwrap();
    store.set_ref("cache/sha256:abc", &a).unwrap(); // replace
    assert_eq!(store.get_ref("cache/sha256:abc").unwrap(), Some(a));
    assert_eq!(store.get_ref("cache").unwrap(), None);
    assert_eq!(store.get_ref("nope").unwrap(), None);
    assert_eq!(
        store.list_refs().unwrap(),
        vec![
            ("cache/sha256:abc".to_string(), a),
            ("image/docker.io/library/alpine:latest".to_string(), a)
        ]
    );
    assert!(store.remove_ref("cache/sha256:abc").unwrap());
    assert!(!store.remove_ref("cache/sha256:abc").unwrap());
    assert!(
        !dir.path().join("refs/cache").exists(),
        "empty ref dirs are tidied"
    );
    for bad in [
        "", "../x", "a//b", "a/../b", ".hidden", "a/.b", "sp ace", "a/", "/abs",
    ] {
        let err = store.set_ref(bad, &a).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRefName { .. }),
            "{bad:?}: {err}"
        );
    }
    fs::write(dir.path().join("refs/broken"), "not a digest").unwrap();
    assert!(matches!(
        store.get_ref("broken"),
        Err(Error::CorruptRef { .. })
    ));
}

#[test]
fn prune_keeps_what_refs_reach() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let tree = dir.path().join("tree");
    common::make_tree(&tree);
    // image 1 under an index (reached through index -> manifest -> config/layer)
    let m1 = common::build_image(
        &store,
        &tree,
        kbuild_image::Compression::Gzip(6),
        &["/hello"],
    );
    let mut index = Index::new();
    index.push_manifest(
        m1.clone(),
        &kbuild_image::DescriptorPlatform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        },
    );
    let idx = index.write(&store).unwrap();
    store.set_ref("image/one", &idx.digest).unwrap();
    // image 2, kept only through a children list
    fs::write(tree.join("hello"), b"changed\n").unwrap();
    let m2 = common::build_image(&store, &tree, kbuild_image::Compression::Zstd(3), &["/x"]);
    let (cached, _) = store.put_bytes(b"a cache result blob").unwrap();
    let list = store
        .set_ref_with_children("cache/k1", &[m2.digest, cached])
        .unwrap();
    assert_eq!(
        store.get_ref_children("cache/k1").unwrap(),
        Some({
            let mut v = vec![m2.digest, cached];
            v.sort();
            v
        })
    );
    // garbage
    let (g1, _) = store.put_bytes(b"garbage one").unwrap();
    let (g2, _) = store.put_bytes(b"garbage two, longer").unwrap();
    let (extra, _) = store.put_bytes(b"kept by an extra root").unwrap();
    // a stale and a fresh ingest file
    let stale = dir.path().join("ingest/tmp-stale");
    fs::write(&stale, b"old partial").unwrap();
    let old = SystemTime::now() - STALE_INGEST_AGE - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let fresh = store.writer().unwrap();

    let before = fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .count();
    let report = store.prune(&[extra]).unwrap();
    assert_eq!(report.removed_blobs, {
        let mut v = vec![g1, g2];
        v.sort();
        v
    });
    assert_eq!(report.freed_bytes, 11 + 19 + 11);
    assert_eq!(report.kept, before - 2);
    assert_eq!(report.removed_ingests, 1);
    assert!(!stale.exists());
    assert!(fresh.path().exists());
    // image 1: index, manifest, config, layer; image 2: manifest, config, layer
    let reach = |root| store.reachable([root]).unwrap();
    assert_eq!(reach(idx.digest).len(), 4);
    assert_eq!(reach(list).len(), 1 + 2 + 2);
    for d in reach(idx.digest)
        .into_iter()
        .chain(reach(list))
        .chain([extra])
    {
        assert!(store.has(&d), "{d} must survive prune");
    }
    // Dropping the ref makes image 1 garbage.
    store.remove_ref("image/one").unwrap();
    let report = store.prune(&[]).unwrap();
    assert_eq!(
        report.removed_blobs.len(),
        4 + 1,
        "image one and the extra root"
    );
    assert!(!store.has(&idx.digest) && !store.has(&m1.digest));
    assert!(store.has(&m2.digest));
}

#[test]
fn prune_waits_for_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let (d, _) = store.put_bytes(b"in flight").unwrap();
    let lock = store.lock_shared().unwrap();
    let second = store.lock_shared().unwrap(); // builds share the lock
    let err = store.prune(&[]).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(store.has(&d));
    drop((lock, second));
    assert_eq!(store.prune(&[]).unwrap().removed_blobs, vec![d]);
}

#[test]
fn default_root_follows_xdg() {
    // Only this test touches these variables in this test binary.
    std::env::set_var("XDG_DATA_HOME", "/xdg/data");
    assert_eq!(
        kbuild_image::default_root(),
        Some(std::path::PathBuf::from("/xdg/data/kubectl-build"))
    );
    std::env::set_var("XDG_DATA_HOME", "relative");
    std::env::set_var("HOME", "/home/u");
    assert_eq!(
        kbuild_image::default_root(),
        Some(std::path::PathBuf::from(
            "/home/u/.local/share/kubectl-build"
        ))
    );
}

/// Run by [`recover_removes_the_ingest_files_of_killed_writers`] in a child
/// process: starts an ingest, prints its path, and waits to be killed.
#[test]
#[ignore = "helper process of recover_removes_the_ingest_files_of_killed_writers"]
fn ingest_writer_child() {
    let root = std::env::var_os("KBUILD_INGEST_CHILD_ROOT").expect("started by the parent test");
    let store = ContentStore::open(root).unwrap();
    let mut ingest = store.writer().unwrap();
    ingest.write_all(b"half a blob").unwrap();
    ingest.flush().unwrap();
    println!("INGEST {}", ingest.path().display());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn recover_removes_the_ingest_files_of_killed_writers() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "ingest_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KBUILD_INGEST_CHILD_ROOT", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let dead = loop {
        let line = lines.next().expect("the child prints its ingest").unwrap();
        // The harness prints "test NAME ... " on the same line.
        if let Some((_, p)) = line.split_once("INGEST ") {
            break std::path::PathBuf::from(p);
        }
    };
    assert!(dead.exists());
    // While the writer lives, its file is not touched.
    assert_eq!(
        store.recover().unwrap().removed_ingests,
        Vec::<std::path::PathBuf>::new()
    );
    assert!(dead.exists());
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(dead.exists(), "a killed writer leaves its ingest file");
    let mut live = store.writer().unwrap();
    live.write_all(b"still being written").unwrap();
    let report = store.recover().unwrap();
    assert_eq!(report.removed_ingests, vec![dead.clone()]);
    assert_eq!(report.freed_bytes, 11);
    assert!(!dead.exists());
    assert!(live.path().exists(), "a live writer's file stays");
    let (d, _) = live.commit(None).unwrap();
    assert_eq!(store.read(&d).unwrap(), b"still being written");
    let left: Vec<_> = fs::read_dir(dir.path().join("ingest"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}

#[test]
fn recover_removes_ref_temp_files_nobody_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path()).unwrap();
    let (d, _) = store.put_bytes(b"target").unwrap();
    store.set_ref("image/a/b", &d).unwrap();
    let refs = dir.path().join("refs/image/a");
    // What a process killed in the middle of set_ref leaves: an unlocked temp file.
    let dead = refs.join(".b.tmp-dead01");
    fs::write(&dead, b"sha256:partial").unwrap();
    // A writer that is alive holds its temp file locked.
    let live = kbuild_image::lock::FileLock::create_unique(&refs, ".b.tmp-", "").unwrap();
    let report = store.recover().unwrap();
    assert_eq!(report.removed_temps, vec![dead.clone()]);
    assert!(!dead.exists());
    assert!(live.path().exists());
    assert_eq!(
        store.list_refs().unwrap(),
        vec![("image/a/b".to_string(), d)]
    );
    store.set_ref("image/a/b", &d).unwrap();
    live.remove().unwrap();
    assert_eq!(fs::read_dir(&refs).unwrap().count(), 1, "only the ref");
}

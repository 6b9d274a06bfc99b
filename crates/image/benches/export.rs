//! Layer export throughput.
//!
//! A tree of `KBUILD_BENCH_FILES` files (default 20 000) totalling
//! `KBUILD_BENCH_BYTES` bytes (default 200 MB) is built once in a temp dir.
//! Benchmarks:
//! - `layer_export/tree_to_gzip_layer`: walk + deterministic tar + gzip-6 +
//!   both digests + commit into a content store (what a build does);
//! - `layer_export/raw_gzip_same_bytes`: the same compressor over the same
//!   tar bytes held in memory, into a sink (the ceiling);
//! - `parallel/{sequential,parallel}`: the tree split into one layer per
//!   top-level directory group, compressed one after the other versus with
//!   `compress_layers_parallel`.
//!
//! The `layer_export` group measures the calling thread's CPU time (user +
//! system, `CLOCK_THREAD_CPUTIME_ID`), not wall time: both benchmarks run on
//! one thread, and on a shared machine CPU time is what stays comparable.
//! The `parallel` group is wall time, as parallelism only shows there.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kbuild_image::{
    compress_layers_parallel,
    tarball::{DeterministicTar, TarOptions},
    Compression, ContentStore, LayerWriter,
};

const WORDS: &[&str] = &[
    "fn", "let", "mut", "struct", "impl", "return", "match", "Some", "None", "Ok", "Err", "self",
    "use", "pub", "crate", "layer", "digest", "manifest", "config", "index", "{", "}", "(", ")",
    ";", "=", "0x1f", "42", "\n", "    ", "//", "string", "value", "error",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Source-code-like text with some incompressible runs, deterministic.
fn file_content(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (state >> 33) as usize;
        if r % 16 == 0 {
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[r % WORDS.len()].as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(size);
    out
}

/// CPU time consumed so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` `iters` times and returns the thread CPU time it took.
fn cpu_time<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let start = thread_cpu_time();
    for _ in 0..iters {
        criterion::black_box(f());
    }
    thread_cpu_time() - start
}

struct Fixture {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    groups: Vec<PathBuf>,
    store_root: PathBuf,
    tar: Vec<u8>,
}

fn fixture() -> Fixture {
    let files = env_u64("KBUILD_BENCH_FILES", 20_000).max(1);
    let bytes = env_u64("KBUILD_BENCH_BYTES", 200_000_000);
    let per_file = (bytes / files) as usize;
    let dir = tempfile::tempdir().expect("temp dir for the bench tree");
    let tree = dir.path().join("tree");
    let groups_count = 8u64;
    let mut groups = Vec::new();
    for g in 0..groups_count {
        groups.push(tree.join(format!("group{g}")));
    }
    for i in 0..files {
        let d =
            groups[(i % groups_count) as usize].join(format!("dir{:03}", (i / groups_count) % 100));
        fs::create_dir_all(&d).expect("bench dir");
        // Sizes vary around the mean, like real trees.
        let size = per_file / 2 + (i as usize * 7919) % (per_file + 1);
        fs::write(d.join(format!("file{i:06}.rs")), file_content(i, size)).expect("bench file");
    }
    let mut tar = DeterministicTar::new(Vec::new(), TarOptions::default());
    tar.append_dir_tree(&tree, "")
        .expect("tar of the bench tree");
    let tar = tar.finish().expect("tar of the bench tree");
    let store_root = dir.path().join("store");
    Fixture {
        _dir: dir,
        tree,
        groups,
        store_root,
        tar,
    }
}

fn export_tree(
    store: &ContentStore,
    tree: &Path,
    prefix: &str,
) -> kbuild_image::Result<kbuild_image::Layer> {
    let mut tar = DeterministicTar::new(
        LayerWriter::new(store, Compression::Gzip(6))?,
        TarOptions::default(),
    );
    tar.append_dir_tree(tree, prefix)?;
    tar.finish()?.finish()
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    eprintln!(
        "bench tree: {} files, {} bytes of tar",
        env_u64("KBUILD_BENCH_FILES", 20_000),
        f.tar.len()
    );
    let mut group = c.benchmark_group("layer_export");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(f.tar.len() as u64));
    group.bench_function("tree_to_gzip_layer", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                // A fresh store each time keeps disk use flat.
                let _ = fs::remove_dir_all(&f.store_root);
                let store = ContentStore::open(&f.store_root).expect("bench store");
                export_tree(&store, &f.tree, "").expect("layer export")
            })
        })
    });
    group.bench_function("raw_gzip_same_bytes", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                let mut enc =
                    flate2::write::GzEncoder::new(io::sink(), flate2::Compression::new(6));
                enc.write_all(&f.tar).expect("gzip");
                enc.finish().expect("gzip")
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("parallel");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(f.tar.len() as u64));
    group.bench_function("sequential", |b| {
        b.iter(|| {
            let _ = fs::remove_dir_all(&f.store_root);
            let store = ContentStore::open(&f.store_root).expect("bench store");
            f.groups
                .iter()
                .map(|g| export_tree(&store, g, "g").expect("layer export"))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("parallel", |b| {
        b.iter(|| {
            let _ = fs::remove_dir_all(&f.store_root);
            let store = ContentStore::open(&f.store_root).expect("bench store");
            let jobs: Vec<_> = f
                .groups
                .iter()
                .map(|g| {
                    move |w: &mut LayerWriter| -> kbuild_image::Result<()> {
                        let mut tar = DeterministicTar::new(w, TarOptions::default());
                        tar.append_dir_tree(g, "g")?;
                        tar.finish().map(drop)
                    }
                })
                .collect();
            compress_layers_parallel(&store, Compression::Gzip(6), jobs).expect("parallel export")
        })
    });
    group.finish();
}

criterion_group!(export, benches);
criterion_main!(export);

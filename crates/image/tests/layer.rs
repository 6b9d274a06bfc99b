//! Layer blobs checked against the real sha256sum / gzip / zstd tools.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use kbuild_image::{
    compress_layers_parallel, decompress_reader, decompress_sniffed,
    tarball::{DeterministicTar, TarOptions},
    Compression, ContentStore, Digest, LayerWriter, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_ZSTD,
};

fn sample_tar(dir: &std::path::Path) -> Vec<u8> {
    let tree = dir.join("tree");
    common::make_tree(&tree);
    // Some volume so the compressors work across several blocks.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| ((i * 31) % 97) as u8).collect();
    fs::write(tree.join("big.bin"), big).unwrap();
    let mut tar = DeterministicTar::new(Vec::new(), TarOptions::default());
    tar.append_dir_tree(&tree, "").unwrap();
    tar.finish().unwrap()
}

#[test]
fn digests_match_the_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let tar = sample_tar(dir.path());
    let tar_path = dir.path().join("plain.tar");
    fs::write(&tar_path, &tar).unwrap();
    let diff_id = common::sha256sum(&tar_path);

    let cases = [
        (
            Compression::Gzip(6),
            MEDIA_TYPE_OCI_LAYER_GZIP,
            Some(["gzip", "-dc"]),
        ),
        (
            Compression::Gzip(1),
            MEDIA_TYPE_OCI_LAYER_GZIP,
            Some(["gzip", "-dc"]),
        ),
        (
            Compression::Zstd(3),
            MEDIA_TYPE_OCI_LAYER_ZSTD,
            Some(["zstd", "-dc"]),
        ),
        (Compression::None, MEDIA_TYPE_OCI_LAYER, None),
    ];
    for (compression, media_type, tool) in cases {
        let mut w = LayerWriter::new(&store, compression).unwrap();
        for chunk in tar.chunks(10_000) {
            w.write_all(chunk).unwrap();
        }
        let layer = w.finish().unwrap();
        let blob = store.path(&layer.descriptor.digest);
        assert_eq!(layer.descriptor.media_type, media_type);
        assert_eq!(layer.diff_id.to_string(), diff_id, "{compression:?}");
        assert_eq!(layer.uncompressed_size, tar.len() as u64);
        assert_eq!(
            common::sha256sum(&blob),
            layer.descriptor.digest.to_string()
        );
        assert_eq!(layer.descriptor.size, fs::metadata(&blob).unwrap().len());
        if let Some([prog, flag]) = tool {
            let out = Command::new(prog).arg(flag).arg(&blob).output().unwrap();
            assert!(out.status.success(), "{prog} rejects the blob");
            assert_eq!(
                Digest::of(&out.stdout).to_string(),
                diff_id,
                "{prog} output"
            );
            assert!(
                layer.descriptor.size < tar.len() as u64 / 2,
                "{compression:?} compresses"
            );
        } else {
            assert_eq!(layer.descriptor.digest, layer.diff_id);
        }
        // And our own reader gives the tar back.
        let mut back = Vec::new();
        decompress_reader(
            media_type,
            store.open_blob(&layer.descriptor.digest).unwrap(),
        )
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
        assert_eq!(back, tar);
    }
    assert_eq!(
        fs::read_dir(dir.path().join("store/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn same_input_same_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let tar = sample_tar(dir.path());
    for compression in [Compression::Gzip(6), Compression::Zstd(3)] {
        let digests: Vec<Digest> = (0..2)
            .map(|_| {
                let mut w = LayerWriter::new(&store, compression).unwrap();
                w.write_all(&tar).unwrap();
                w.finish().unwrap().descriptor.digest
            })
            .collect();
        assert_eq!(digests[0], digests[1], "{compression:?} is reproducible");
    }
}

#[test]
fn decompress_pulled_layers_made_by_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
    let path = dir.path().join("layer.tar");
    fs::write(&path, &data).unwrap();
    common::run(Command::new("gzip").arg("-k").arg(&path));
    common::run(Command::new("zstd").arg("-q").arg("-k").arg(&path));
    for (media_type, file) in [
        (MEDIA_TYPE_DOCKER_LAYER_GZIP, "layer.tar.gz"),
        (MEDIA_TYPE_OCI_LAYER_GZIP, "layer.tar.gz"),
        (MEDIA_TYPE_OCI_LAYER_ZSTD, "layer.tar.zst"),
        ("application/vnd.docker.image.rootfs.diff.tar", "layer.tar"),
    ] {
        let mut out = Vec::new();
        decompress_reader(media_type, fs::File::open(dir.path().join(file)).unwrap())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data, "{media_type}");
    }
    for file in ["layer.tar.gz", "layer.tar.zst", "layer.tar"] {
        let mut out = Vec::new();
        decompress_sniffed(fs::File::open(dir.path().join(file)).unwrap())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data, "sniffed {file}");
    }
    let err = decompress_reader("application/vnd.oci.image.layer.v1.tar+lz4", &b""[..]).err();
    assert!(err.is_some_and(|e| e.to_string().contains("tar+lz4")));
}

#[test]
fn parallel_compression_matches_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let inputs: Vec<Vec<u8>> = (0..5u32)
        .map(|n| {
            (0..(200_000 + n * 50_000))
                .map(|i| ((i * (n + 3)) % 251) as u8)
                .collect()
        })
        .collect();
    let jobs: Vec<_> = inputs
        .iter()
        .map(|data| {
            move |w: &mut LayerWriter| -> kbuild_image::Result<()> {
                w.write_all(data).map_err(|e| kbuild_image::Error::Stream {
                    action: "write test data",
                    source: e,
                })
            }
        })
        .collect();
    let layers = compress_layers_parallel(&store, Compression::Gzip(6), jobs).unwrap();
    assert_eq!(layers.len(), inputs.len());
    for (layer, data) in layers.iter().zip(&inputs) {
        assert_eq!(layer.diff_id, Digest::of(data), "results keep job order");
        let mut w = LayerWriter::new(&store, Compression::Gzip(6)).unwrap();
        w.write_all(data).unwrap();
        assert_eq!(w.finish().unwrap(), *layer);
    }
    // A failing job fails the whole call.
    type Job = Box<dyn FnOnce(&mut LayerWriter) -> kbuild_image::Result<()> + Send>;
    let jobs: Vec<Job> = vec![
        Box::new(|w| {
            w.write_all(b"ok").map_err(|e| kbuild_image::Error::Stream {
                action: "x",
                source: e,
            })
        }),
        Box::new(|_| {
            Err(kbuild_image::Error::Stream {
                action: "read the build context",
                source: std::io::Error::other("boom"),
            })
        }),
    ];
    let err = compress_layers_parallel(&store, Compression::None, jobs).unwrap_err();
    assert!(err.to_string().contains("boom"));
}

/// The layer digest is a function of the content alone: the same with 1, 2
/// or 8 compression threads, so caches and reproducible builds hold across
/// machines with different core counts. Checked back with gzip and zstd.
#[test]
fn digests_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let mut tar = sample_tar(dir.path());
    // Several gzip blocks and more than one zstd job.
    let noise: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    tar.extend_from_slice(&noise);
    let plain = dir.path().join("plain");
    fs::write(&plain, &tar).unwrap();
    for (compression, tool) in [
        (Compression::Gzip(6), "gzip"),
        (Compression::Zstd(3), "zstd"),
    ] {
        let digests: Vec<String> = [1, 2, 8]
            .into_iter()
            .map(|threads| {
                let mut w = LayerWriter::with_threads(&store, compression, threads).unwrap();
                for chunk in tar.chunks(12_345) {
                    w.write_all(chunk).unwrap();
                }
                let layer = w.finish().unwrap();
                let blob = store.path(&layer.descriptor.digest);
                let out = Command::new(tool).arg("-dc").arg(&blob).output().unwrap();
                assert!(
                    out.status.success(),
                    "{tool} -dc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    out.stdout == tar,
                    "{tool} reads back the tar ({threads} threads)"
                );
                layer.descriptor.digest.to_string()
            })
            .collect();
        assert!(
            digests.iter().all(|d| *d == digests[0]),
            "{compression:?}: {digests:?}"
        );
    }
}

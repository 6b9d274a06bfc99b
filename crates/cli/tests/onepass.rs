//! A COPY from the context makes its layer while it copies, reading each
//! file once; the layer must be byte for byte the one a diff of the kept
//! snapshot gives (the path every other step takes), and the steps the one
//! pass cannot describe must take the diff path. Real builds on the busybox
//! fixture; the snapshot is diffed again with `write_diff` and hashed.

mod common;

use common::{busybox_image, require_root, write, BUSYBOX};
use kbuild_worker::snapshot::{write_diff, DiffOptions};
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let p = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The diff_ids of the one image in an OCI layout directory.
fn diff_ids(layout: &Path) -> Vec<String> {
    let index = blob_file(&layout.join("index.json"));
    let mut doc = blob(layout, index["manifests"][0]["digest"].as_str().unwrap());
    while doc.get("manifests").is_some() {
        doc = blob(layout, doc["manifests"][0]["digest"].as_str().unwrap());
    }
    let config = blob(layout, doc["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

fn blob_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn layer_dir(store: &Path, diff_id: &str) -> PathBuf {
    store
        .join("snapshots/layers")
        .join(diff_id.trim_start_matches("sha256:"))
}

/// sha256 of what `write_diff` makes of the last layer's snapshot over
/// the layers below it.
fn rediff(store: &Path, ids: &[String], sde: Option<i64>) -> String {
    let (last, below) = ids.split_last().unwrap();
    let lowers: Vec<PathBuf> = below.iter().map(|d| layer_dir(store, d)).collect();
    let mut tb = tar::Builder::new(Vec::new());
    write_diff(
        &layer_dir(store, last),
        &lowers,
        &mut tb,
        &DiffOptions {
            source_date_epoch: sde,
        },
    )
    .unwrap();
    let tar = tb.into_inner().unwrap();
    format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
}

/// A context with nested and empty directories, a symlink, special modes,
/// an empty file, a name too long for ustar, a file of several compression
/// blocks, old mtimes and a .dockerignore exception.
fn context(root: &Path) {
    write(&root.join("a/b/c.txt"), "c\n");
    std::fs::create_dir_all(root.join("a/empty")).unwrap();
    std::os::unix::fs::symlink("b/c.txt", root.join("a/link")).unwrap();
    write(&root.join("x.sh"), "#!/bin/sh\necho x\n");
    std::fs::set_permissions(root.join("x.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("setuid"), "s");
    std::fs::set_permissions(root.join("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    write(&root.join("zero"), "");
    write(
        &root.join(format!("long/{}.txt", "n".repeat(120))),
        "long\n",
    );
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
    write(&root.join("ignored/drop.txt"), "drop");
    write(&root.join("ignored/keep.txt"), "keep");
    write(
        &root.join(".dockerignore"),
        "ignored\n!ignored/keep.txt\nDockerfile*\n",
    );
    let st = Command::new("touch")
        .args(["-h", "-d", "2001-02-03 04:05:06.789"])
        .arg(root.join("a/b/c.txt"))
        .arg(root.join("a/link"))
        .arg(root.join("a/b"))
        .arg(root.join("big.bin"))
        .status()
        .unwrap();
    assert!(st.success());
}

struct Case {
    name: &'static str,
    dockerfile: String,
    one_pass: bool,
}

#[test]
fn copy_layers_made_in_one_pass_equal_the_diff_of_their_snapshot() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let ctx = t.path().join("ctx");
    context(&ctx);
    let from = format!("FROM {BUSYBOX}\n");
    let cases = [
        Case {
            name: "the context into a new directory",
            dockerfile: format!("{from}COPY . /data\n"),
            one_pass: true,
        },
        Case {
            name: "into the workdir, a directory of the layers below",
            dockerfile: format!("{from}WORKDIR /app\nCOPY . .\n"),
            one_pass: true,
        },
        Case {
            name: "one file into a directory of the base",
            dockerfile: format!("{from}COPY a/b/c.txt /etc/\n"),
            one_pass: true,
        },
        Case {
            name: "a directory with --chown and --chmod to a new path",
            dockerfile: format!("{from}COPY --chown=7:8 --chmod=640 a /opt/x/y\n"),
            one_pass: true,
        },
        Case {
            name: "a file of the layers below replaced by a file",
            dockerfile: format!("{from}COPY x.sh /etc/c.txt\nCOPY a/b/c.txt /etc/\n"),
            one_pass: true,
        },
        Case {
            name: "a symlink of the base replaced",
            dockerfile: format!(
                "{from}RUN [\"ln\", \"-s\", \"/bin/busybox\", \"/link\"]\nCOPY x.sh /link\n"
            ),
            one_pass: false,
        },
        Case {
            name: "into directories of the layers below, again",
            dockerfile: format!("{from}COPY a /x/\nCOPY a /x/\n"),
            one_pass: false,
        },
        Case {
            name: "several sources",
            dockerfile: format!("{from}COPY a/b/c.txt x.sh /multi/\n"),
            one_pass: false,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        for sde in [None, Some(1_000_000_000i64)] {
            let dockerfile = t.path().join(format!("Dockerfile.{i}"));
            std::fs::write(&dockerfile, &case.dockerfile).unwrap();
            let layout = t.path().join(format!("layout-{i}-{}", sde.is_some()));
            let output = format!("type=oci,tar=false,dest={}", layout.display());
            let sde_s = sde.map(|s| s.to_string()).unwrap_or_default();
            let mut env = vec![("KUBECTL_BUILD_LOG", "kbuild_solver=debug")];
            if sde.is_some() {
                env.push(("SOURCE_DATE_EPOCH", &sde_s));
            }
            let r = common::kb(
                &store,
                [
                    ctx.to_str().unwrap(),
                    "-f",
                    dockerfile.to_str().unwrap(),
                    "--no-cache",
                ],
            )
            .platform("linux/amd64")
            .output(&output)
            .plain()
            .envs(&env)
            .ok();
            // The last step's way (an earlier COPY may have made its layer
            // in one pass too).
            let made = r.stderr.contains("layer made while copying");
            let diffed = r.stderr.contains("diffing the upper");
            assert!(
                if case.one_pass {
                    made && !diffed
                } else {
                    diffed
                },
                "{} (SOURCE_DATE_EPOCH {sde:?}): one pass expected {}\n{}",
                case.name,
                case.one_pass,
                r.stderr
            );
            let ids = diff_ids(&layout);
            assert_eq!(
                rediff(&store, &ids, sde),
                *ids.last().unwrap(),
                "{} (SOURCE_DATE_EPOCH {sde:?}): the layer is the diff of its snapshot",
                case.name
            );
        }
    }
}

/// `kubectl-build --root STORE` (the caller adds the rest) in a shell
/// that prints, after it ends, the bytes it (with the processes it waited
/// for) asked read(2) and friends for: the shell's `rchar`.
fn counting_reads(store: &Path) -> common::Build {
    common::Build::program("sh")
        .arg("-c")
        .arg(r#""$@"; s=$?; grep '^rchar:' /proc/$$/io >&2; exit $s"#)
        .arg("sh")
        .arg(common::bin())
        .arg("--root")
        .arg(store)
}

/// The bytes a [`counting_reads`] run read.
fn rchar(run: &common::Run) -> u64 {
    run.stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rchar line in:\n{}", run.stderr))
}

/// The layer digest and diff_id of the last layer of the one image in an
/// OCI layout directory.
fn last_layer(layout: &Path) -> (String, String) {
    let index = blob_file(&layout.join("index.json"));
    let manifest = blob(layout, index["manifests"][0]["digest"].as_str().unwrap());
    let layers = manifest["layers"].as_array().unwrap();
    let digest = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (digest, diff_ids(layout).last().unwrap().clone())
}

/// On a fresh store the key of `COPY . /data` needs the checksum of every
/// file it copies, which the checksum cache does not know: the copy then
/// runs first and hashes each file as it copies it, so each file is read
/// once (counted by the kernel), and the key comes after. The layer is the
/// one the key-first path makes (a warm checksum cache), and a key found in
/// the cache after the copy gives the cached image.
#[test]
fn a_cold_copy_reads_each_context_file_once() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    // 24 MiB, compressible: the layer blob the export reads back is small.
    let files = 96u64;
    let size = 256 * 1024u64;
    for i in 0..files {
        let line = format!("file {i}: the quick brown fox jumps over the lazy dog\n");
        let data: Vec<u8> = line.bytes().cycle().take(size as usize).collect();
        let p = ctx.join(format!("d{}/f{i}.txt", i % 4));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let total = files * size;
    // Files written this recently are never kept in the checksum cache
    // (its racy-write rule), and the warm case below needs them kept.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let dockerfile = t.path().join("Dockerfile");
    let build = |store: &Path, copy_to: &str, dest: &Path| {
        std::fs::write(&dockerfile, format!("FROM {BUSYBOX}\nCOPY . {copy_to}\n")).unwrap();
        let output = format!("type=oci,tar=false,dest={}", dest.display());
        let r = counting_reads(store)
            .arg(&ctx)
            .args(["-f", dockerfile.to_str().unwrap()])
            .args(["--platform", "linux/amd64", "-o", &output])
            .args(["--progress", "plain"])
            .env("KUBECTL_BUILD_LOG", "kbuild_solver=debug")
            .env("SOURCE_DATE_EPOCH", "1000000000")
            .run();
        let read = rchar(&r);
        (r.ok(), read)
    };
    let first_copy = "the copy runs before its key is known";
    let found_after = "a copy run before its key was found in the cache";

    let store = t.path().join("store");
    if busybox_image(&store, "linux/amd64").is_none() {
        return;
    }
    let (cold, read) = build(&store, "/data", &t.path().join("cold"));
    assert!(
        cold.stderr.contains(first_copy) && cold.stderr.contains("layer made while copying"),
        "{}",
        cold.stderr
    );
    // Each file once, plus the base image, the Dockerfile, the small blob
    // of the export: well under two reads of the context.
    assert!(
        read >= total && read < total + total / 2,
        "{read} bytes read for a context of {total}\n{}",
        cold.stderr
    );
    let made = last_layer(&t.path().join("cold"));

    // The same store without its checksum cache: the copy runs first
    // again, then finds its key in the cache.
    std::fs::remove_dir_all(store.join("checksums")).unwrap();
    let (again, _) = build(&store, "/data", &t.path().join("again"));
    assert!(
        again.stderr.contains(first_copy) && again.stderr.contains(found_after),
        "{}",
        again.stderr
    );
    assert_eq!(last_layer(&t.path().join("again")), made);

    // Another store whose checksum cache knows the files (from a COPY
    // elsewhere): the key comes first, and the layer is the same.
    let other = t.path().join("other");
    if busybox_image(&other, "linux/amd64").is_none() {
        return;
    }
    build(&other, "/elsewhere", &t.path().join("warmup"));
    let (warm, _) = build(&other, "/data", &t.path().join("warm"));
    assert!(!warm.stderr.contains(first_copy), "{}", warm.stderr);
    assert_eq!(last_layer(&t.path().join("warm")), made);
}

//! Ctrl-C during an export: once the command says that nothing was
//! written, no export thread may still rename its file into place. SIGINT
//! is sent at many moments of a build whose time goes into writing a large
//! OCI archive; each time the destination must hold the old archive or a
//! complete new one, and the message must say which.

mod common;

use common::{error_lines, run, write};
use sha2::Digest as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The `/small` file of the archive at `path`, read by skopeo and tar
/// (an archive that does not read is not complete).
fn small_of(t: &Path, archive: &Path) -> String {
    let layout = t.join("read-back");
    let _ = std::fs::remove_dir_all(&layout);
    let out = Command::new("skopeo")
        .args(["copy"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("oci:{}:x", layout.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{} is not a complete archive: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, manifest) = common::layout_manifests(&layout).remove(0);
    let dir = t.join("read-back-fs");
    let _ = std::fs::remove_dir_all(&dir);
    common::unpack_layers(&layout, &manifest, &dir);
    std::fs::read_to_string(dir.join("small")).unwrap()
}

#[test]
fn sigint_at_the_export_leaves_the_old_archive_or_a_complete_one_and_says_which() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big /big\nCOPY small /small\n",
    );
    // Uncompressed, so that writing the archive takes a while.
    let big = std::fs::File::create(ctx.join("big")).unwrap();
    big.set_len(96 << 20).unwrap();
    write(&ctx.join("small"), "first\n");
    let dest = t.path().join("image.tar");
    let output = format!("type=oci,dest={},compression=uncompressed", dest.display());
    let args = [
        ctx.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "-o",
        &output,
    ];
    run(&store, &args, &[]).ok();
    assert_eq!(small_of(t.path(), &dest), "first\n");

    // How long a build that only exports takes here.
    write(&ctx.join("small"), "timing\n");
    let started = Instant::now();
    run(&store, &args, &[]).ok();
    let whole = started.elapsed();

    let (mut kept, mut replaced) = (0, 0);
    let mut before_small = small_of(t.path(), &dest);
    for i in 0..20u32 {
        let before = sha256(&dest);
        let marker = format!("run {i}\n");
        write(&ctx.join("small"), &marker);
        let child = common::kb(&store, args).spawn();
        // From the start to past the end of a whole build.
        std::thread::sleep(whole * (i + 1) / 16);
        // Not yet waited for, so the pid is still ours even if it ended.
        child.signal("INT");
        let (code, lines) = child.finish();
        let stderr = lines.join("\n");
        // Nothing may change after the command has exited.
        std::thread::sleep(Duration::from_millis(300));
        let changed = sha256(&dest) != before;
        // The same bytes are the old archive; other bytes must read whole.
        let small = if changed {
            small_of(t.path(), &dest)
        } else {
            before_small.clone()
        };
        before_small = small.clone();
        if code == 0 {
            assert_eq!(small, marker, "{stderr}");
            replaced += 1;
            continue;
        }
        let lines = error_lines(&stderr);
        assert_eq!(lines.len(), 1, "{stderr}");
        if changed {
            assert_eq!(small, marker, "a changed archive is the new one");
            assert!(
                lines[0].contains("build cancelled (interrupted) after writing")
                    && lines[0].contains(dest.to_str().unwrap()),
                "the archive was replaced, the message must say so: {}",
                lines[0]
            );
            replaced += 1;
        } else {
            assert!(
                lines[0].contains("build cancelled (interrupted); nothing was tagged or written"),
                "{}",
                lines[0]
            );
            kept += 1;
        }
    }
    eprintln!(
        "whole build {whole:?}: {kept} interrupted with the old archive kept, {replaced} replaced"
    );
    assert!(kept > 0, "no interruption came in time");
}

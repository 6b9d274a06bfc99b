//! One layer-entry policy: a build (which unpacks base layers into
//! snapshots) and `-o type=local` (which applies them to a directory) accept
//! and reject exactly the same layers. Base images are the busybox fixture
//! built by the tool, given one extra hand-made layer and pushed to a real
//! registry with skopeo; the exported tree is read back with stat.

mod common;

use common::{require_root, run, write};
use kbuild_testkit::archive::{RawHeader, RawTar};
use kbuild_testkit::registry::TestRegistry;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// One hand-made layer entry.
enum Entry {
    Dir(&'static str),
    File(&'static str, u32),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
}

fn layer(entries: &[Entry]) -> Vec<u8> {
    use tar::EntryType;
    let mut raw = RawTar::gnu();
    for e in entries {
        let header = match *e {
            Entry::Dir(name) => RawHeader::new(EntryType::Directory, name),
            Entry::File(name, mode) => RawHeader {
                mode,
                data: b"#!/bin/sh\n",
                ..RawHeader::new(EntryType::Regular, name)
            },
            Entry::Hardlink(name, target) => RawHeader {
                link: Some(target),
                ..RawHeader::new(EntryType::Link, name)
            },
            Entry::Char(name, major, minor) => RawHeader {
                mode: 0o666,
                device: Some((major, minor)),
                ..RawHeader::new(EntryType::Char, name)
            },
        };
        raw.entry(RawHeader {
            mtime: 1_700_000_000,
            ..header
        });
    }
    raw.into_bytes()
}

/// Appends an uncompressed layer to the single image of an OCI layout
/// whose `index.json` points at one manifest.
fn append_layer(layout: &Path, tar: &[u8]) {
    let mut top = common::read_json(&layout.join("index.json"));
    let manifest_digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest = common::read_json(&common::layout_blob(layout, &manifest_digest));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config = common::read_json(&common::layout_blob(layout, &config_digest));
    let digest = common::layout_put_blob(layout, tar);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(digest.clone().into());
    config["history"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"created_by": "hand-made test layer"}));
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": tar.len(),
        }));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = common::layout_put_blob(layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    top["manifests"][0]["digest"] = common::layout_put_blob(layout, &manifest_bytes).into();
    top["manifests"][0]["size"] = manifest_bytes.len().into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

struct Fixture {
    _reg: TestRegistry,
    dir: tempfile::TempDir,
    store: std::path::PathBuf,
    busybox: std::path::PathBuf,
    host: String,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !require_root() {
            return None;
        }
        let ctx = common::busybox_context()?;
        let reg = TestRegistry::start().expect("start docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let busybox = dir.path().join("busybox-layout");
        run(
            &store,
            &[
                ctx.to_str().unwrap(),
                "--platform",
                "linux/amd64",
                "-o",
                &format!("type=oci,dest={},tar=false", busybox.display()),
                "--progress",
                "quiet",
            ],
            &[],
        )
        .ok();
        let host = reg.host();
        Some(Fixture {
            _reg: reg,
            dir,
            store,
            busybox,
            host,
        })
    }

    /// busybox plus `entries` as one more layer, pushed as `test/NAME:1`.
    fn image(&self, name: &str, entries: &[Entry]) -> String {
        let layout = self.dir.path().join(format!("{name}-layout"));
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.busybox)
            .arg(&layout)
            .status()
            .unwrap();
        assert!(out.success());
        append_layer(&layout, &layer(entries));
        let reference = format!("{}/test/{name}:1", self.host);
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }

    /// A build of `dockerfile` (context with `a.txt`) with extra arguments.
    fn build(&self, name: &str, dockerfile: &str, extra: &[&str]) -> common::Run {
        let ctx = self.dir.path().join(format!("ctx-{name}"));
        write(&ctx.join("a.txt"), "a\n");
        write(&ctx.join("Dockerfile"), dockerfile);
        let mut args = vec![ctx.to_str().unwrap(), "--platform", "linux/amd64"];
        args.extend_from_slice(extra);
        run(&self.store, &args, &[])
    }
}

/// The `layer entry ...` part of the one error line.
fn entry_error(r: &common::Run) -> String {
    let errs: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert_eq!(errs.len(), 1, "{}", r.stderr);
    let at = errs[0]
        .find("layer entry")
        .unwrap_or_else(|| panic!("no layer entry in {}", r.stderr));
    errs[0][at..].to_string()
}

#[test]
fn bad_hardlinks_are_rejected_by_build_and_local_export_alike() {
    let Some(f) = Fixture::new() else {
        return;
    };
    for (name, entries, says) in [
        (
            "lower-link",
            vec![
                Entry::Dir("etc/"),
                Entry::Hardlink("etc/passwd-link", "etc/passwd"),
            ],
            "is a hardlink to `etc/passwd`, which is not a file in the layer",
        ),
        (
            "outside-link",
            vec![Entry::Hardlink("h", "../../etc/passwd")],
            "is a hardlink to `../../etc/passwd`, which escapes the layer root",
        ),
        (
            "outside-name",
            vec![Entry::File("../../kbuild-escape", 0o644)],
            "escapes the layer root",
        ),
    ] {
        let image = f.image(name, &entries);
        // A build step mounts the base: its layers are unpacked.
        let unpacked = f
            .build(name, &format!("FROM {image}\nCOPY a.txt /a.txt\n"), &[])
            .fails();
        let unpack_error = entry_error(&unpacked);
        assert!(unpack_error.contains(says), "{name}: {}", unpacked.stderr);
        // No step: only the local exporter reads the layers.
        let out = f.dir.path().join(format!("out-{name}"));
        let exported = f
            .build(
                &format!("{name}-export"),
                &format!("FROM {image}\n"),
                &["-o", &format!("type=local,dest={}", out.display())],
            )
            .fails();
        assert_eq!(entry_error(&exported), unpack_error, "{name}");
        assert!(!out.exists(), "{name}: nothing exported");
        assert!(!Path::new("/kbuild-escape").exists());
    }
}

#[test]
fn devices_and_setuid_build_but_reach_a_local_directory_only_on_request() {
    let Some(f) = Fixture::new() else {
        return;
    };
    let image = f.image(
        "special",
        &[
            Entry::Dir("opt/"),
            Entry::Char("opt/kbuild-null", 1, 3),
            Entry::Hardlink("opt/null-link", "opt/kbuild-null"),
            Entry::File("opt/su-like", 0o4755),
            Entry::Hardlink("opt/su-link", "opt/su-like"),
            Entry::File("opt/sg-like", 0o2755),
        ],
    );
    // The build accepts the layer and sees every entry as the image has it.
    let dockerfile = format!(
        "FROM {image}\n\
         RUN test -c /opt/kbuild-null && test -c /opt/null-link && test -u /opt/su-like \
         && test -g /opt/sg-like && test /opt/su-link -ef /opt/su-like\n\
         COPY a.txt /a.txt\n"
    );
    let plain = f.dir.path().join("plain");
    let r = f
        .build(
            "special",
            &dockerfile,
            &["-o", &format!("type=local,dest={}", plain.display())],
        )
        .ok();
    assert!(
        r.stderr.contains("left out 2 device node(s)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("cleared setuid/setgid"), "{}", r.stderr);
    assert!(plain.join("a.txt").is_file());
    for dev in ["opt/kbuild-null", "opt/null-link"] {
        assert!(plain.join(dev).symlink_metadata().is_err(), "{dev} created");
    }
    let su = plain.join("opt/su-like").symlink_metadata().unwrap();
    assert_eq!(su.mode() & 0o7777, 0o755);
    assert_eq!(
        plain.join("opt/su-link").symlink_metadata().unwrap().ino(),
        su.ino()
    );
    let sg = plain.join("opt/sg-like").symlink_metadata().unwrap();
    assert_eq!(sg.mode() & 0o7777, 0o755);

    let kept = f.dir.path().join("kept");
    let r = f
        .build(
            "special",
            &dockerfile,
            &[
                "-o",
                &format!("type=local,dest={},preserve-special=true", kept.display()),
            ],
        )
        .ok();
    assert!(!r.stderr.contains("left out"), "{}", r.stderr);
    for dev in ["opt/kbuild-null", "opt/null-link"] {
        let md = kept.join(dev).symlink_metadata().unwrap();
        assert!(md.file_type().is_char_device(), "{dev}");
        assert_eq!(md.rdev(), nix_makedev(1, 3), "{dev}");
    }
    let su = kept.join("opt/su-like").symlink_metadata().unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    let sg = kept.join("opt/sg-like").symlink_metadata().unwrap();
    assert_eq!(sg.mode() & 0o7777, 0o2755);

    // A tarball keeps everything, read back with the system's tar.
    let tarball = f.dir.path().join("fs.tar");
    f.build(
        "special",
        &dockerfile,
        &["-o", &format!("type=tar,dest={}", tarball.display())],
    )
    .ok();
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(&tarball)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('c') && l.contains("opt/kbuild-null")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.contains("opt/su-like")),
        "{listing}"
    );
}

/// Linux's `makedev` for small numbers (major < 4096, minor < 256).
fn nix_makedev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

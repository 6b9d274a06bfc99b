//! Where a Dockerfile must give the image BuildKit gives: owners, groups,
//! the empty image's config, ONBUILD, and what a step's cache key holds.
//! Real builds with the busybox fixture; results read back by skopeo from
//! OCI layouts and from the exported filesystem.

mod common;

use common::{build_local, busybox_image, busybox_store, kb, run, write};
use std::path::Path;
use std::process::Command;

fn context(t: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = t.join(name);
    write(&ctx.join("Dockerfile"), dockerfile);
    write(&ctx.join("file.txt"), "hello\n");
    ctx.to_str().unwrap().to_string()
}

fn oci_dir(store: &Path, ctx: &str, dest: &Path, extra: &[&str]) {
    let output = format!("type=oci,tar=false,dest={}", dest.display());
    let mut args = vec![ctx, "--platform", "linux/amd64", "-o", &output];
    args.extend_from_slice(extra);
    run(store, &args, &[]).ok();
}

const USERS: &str = "FROM kbuild.test/busybox:latest\n\
    RUN echo 'svc:x:1001:50::/srv:/bin/sh' >> /etc/passwd && \
        printf 'staff:x:50:\\naudio:x:29:svc\\nvideo:x:44:svc\\n' >> /etc/group\n";

#[test]
fn chown_by_name_takes_the_primary_group_and_run_gets_supplementary_groups() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "users",
        &format!(
            "{USERS}\
             COPY --chown=svc file.txt /by-name\n\
             COPY --chown=1001 file.txt /by-id\n\
             USER svc\n\
             RUN id > /tmp/id-name\n\
             USER 1001\n\
             RUN id > /tmp/id-uid\n"
        ),
    );
    let out = build_local(&store, &ctx, "linux/amd64", &t.path().join("out"), &[]);
    let owner = |p: &str| {
        let m = std::fs::metadata(out.join(p)).unwrap();
        std::os::unix::fs::MetadataExt::uid(&m).to_string()
            + ":"
            + &std::os::unix::fs::MetadataExt::gid(&m).to_string()
    };
    assert_eq!(
        owner("by-name"),
        "1001:50",
        "a name takes its primary group"
    );
    assert_eq!(
        owner("by-id"),
        "1001:1001",
        "an id takes its own id as group"
    );
    for f in ["tmp/id-name", "tmp/id-uid"] {
        let id = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            id.starts_with("uid=1001(svc) gid=50(staff)")
                && id.contains("29(audio)")
                && id.contains("44(video)"),
            "{f}: {id}"
        );
    }
}

#[test]
fn scratch_works_in_slash_and_onbuild_triggers_are_not_inherited() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(t.path(), "scratch", "FROM scratch\nCOPY file.txt /\n");
    let scratch = t.path().join("scratch-oci");
    oci_dir(&store, &ctx, &scratch, &[]);
    let config = common::skopeo_inspect_layout(&scratch, "--config");
    assert_eq!(config["config"]["WorkingDir"], "/", "{config}");

    let parent = context(
        t.path(),
        "parent",
        "FROM kbuild.test/busybox:latest\nONBUILD RUN echo triggered > /triggered\n",
    );
    kb(&store, [&parent])
        .platform("linux/amd64")
        .args(["-t", "kbuild.test/parent:1"])
        .output("type=image")
        .ok();
    let child = context(
        t.path(),
        "child",
        "FROM kbuild.test/parent:1\nRUN cat /triggered\n",
    );
    let child_oci = t.path().join("child-oci");
    oci_dir(&store, &child, &child_oci, &[]);
    let config = common::skopeo_inspect_layout(&child_oci, "--config");
    assert!(
        config["config"]["OnBuild"].is_null()
            || config["config"]["OnBuild"]
                .as_array()
                .is_some_and(|a| a.is_empty()),
        "the child keeps no trigger: {config}"
    );
}

/// The root digest of an OCI layout directory.
fn layout_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn source_date_epoch_and_add_host_are_part_of_the_cache_key() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "keys",
        "FROM kbuild.test/busybox:latest\n\
         COPY file.txt /\n\
         RUN cat /etc/hosts | grep -c example.test > /hosts-count || true\n",
    );
    // A normal build first fills the cache; a reproducible build after it
    // must equal one made in an empty store.
    oci_dir(&store, &ctx, &t.path().join("normal"), &[]);
    let sde = |store: &Path, dest: &Path| {
        let output = format!("type=oci,tar=false,dest={}", dest.display());
        kb(store, [&ctx])
            .platform("linux/amd64")
            .output(&output)
            .envs(&[("SOURCE_DATE_EPOCH", "1700000000")])
            .ok();
        layout_digest(dest)
    };
    let after_normal = sde(&store, &t.path().join("sde-warm"));
    let fresh_store = t.path().join("fresh");
    busybox_image(&fresh_store, "linux/amd64").expect("busybox base");
    let fresh = sde(&fresh_store, &t.path().join("sde-fresh"));
    assert_eq!(
        after_normal, fresh,
        "the cache mixed in a normal build's times"
    );
    assert_ne!(layout_digest(&t.path().join("normal")), after_normal);

    // --add-host changes /etc/hosts, so the RUN runs again.
    let out = t.path().join("hosts");
    let output = format!("type=local,dest={}", out.display());
    kb(&store, [&ctx])
        .platform("linux/amd64")
        .output(&output)
        .args(["--add-host", "example.test:10.0.0.1"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hosts-count"))
            .unwrap()
            .trim(),
        "1",
        "the RUN was taken from the cache of a build without --add-host"
    );
}

#[test]
fn copy_and_add_heredocs_become_files() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "heredocs",
        &format!(
            "{USERS}\
             ARG NAME=world\n\
             COPY <<EOF /etc/greeting\n\
             hello $NAME\n\
             EOF\n\
             COPY <<'EOF' /raw\n\
             hello $NAME\n\
             EOF\n\
             COPY <<-EOF /tabs\n\
             \t\tindented\n\
             \tEOF\n\
             COPY --chmod=0751 --chown=svc <<a <<b /many/\n\
             first\n\
             a\n\
             second\n\
             b\n\
             ADD <<EOF /added\n\
             via add\n\
             EOF\n\
             COPY file.txt <<EOF /mixed/\n\
             beside a context file\n\
             EOF\n"
        ),
    );
    let out = build_local(&store, &ctx, "linux/amd64", &t.path().join("out"), &[]);
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("etc/greeting"), "hello world\n");
    assert_eq!(read("raw"), "hello $NAME\n");
    assert_eq!(read("tabs"), "indented\n");
    assert_eq!(read("many/a"), "first\n");
    assert_eq!(read("many/b"), "second\n");
    assert_eq!(read("added"), "via add\n");
    assert_eq!(read("mixed/EOF"), "beside a context file\n");
    assert_eq!(read("mixed/file.txt"), "hello\n");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(out.join("many/a")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o751);
    assert_eq!((m.uid(), m.gid()), (1001, 50));
    let plain = std::fs::metadata(out.join("etc/greeting")).unwrap();
    assert_eq!(plain.mode() & 0o7777, 0o644);

    // A Dockerfile on stdin has no context, and needs none for heredocs.
    let stdin_out = t.path().join("stdin-out");
    common::kb(&store, ["-", "--platform", "linux/amd64"])
        .output(format!("type=local,dest={}", stdin_out.display()))
        .stdin("FROM scratch\nCOPY <<EOF /note\nfrom stdin\nEOF\n")
        .ok();
    assert_eq!(
        std::fs::read_to_string(stdin_out.join("note")).unwrap(),
        "from stdin\n"
    );

    // Two sources into a file name is an error naming the rule.
    let bad = context(
        t.path(),
        "bad",
        "FROM scratch\nCOPY <<a <<b /file\nx\na\ny\nb\n",
    );
    let r = kb(&store, [&bad]).platform("linux/amd64").fails();
    assert!(r.stderr.contains("destination directory"), "{}", r.stderr);
}

#[test]
fn dockerignore_exceptions_below_an_excluded_directory_are_copied() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(t.path(), "ignore", "FROM scratch\nCOPY . /app/\n");
    let dir = Path::new(&ctx);
    write(
        &dir.join(".dockerignore"),
        "vendor\n!vendor/LICENSE\nlogs\n",
    );
    write(&dir.join("vendor/LICENSE"), "MIT\n");
    write(&dir.join("vendor/lib/code.go"), "package lib\n");
    write(&dir.join("logs/today.log"), "noise\n");
    let out = build_local(&store, &ctx, "linux/amd64", &t.path().join("out"), &[]);
    assert_eq!(
        std::fs::read_to_string(out.join("app/vendor/LICENSE")).unwrap(),
        "MIT\n"
    );
    assert!(
        !out.join("app/vendor/lib").exists(),
        "vendor/lib is excluded"
    );
    assert!(!out.join("app/logs").exists(), "logs is excluded");
    assert!(out.join("app/file.txt").exists());
}

#[test]
fn copy_chmod_applies_to_the_copied_entries_not_the_created_destination() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "chmod",
        "FROM scratch\nCOPY --chmod=0700 src /made/by/copy/\n",
    );
    write(&Path::new(&ctx).join("src/a.txt"), "a\n");
    write(&Path::new(&ctx).join("src/sub/b.txt"), "b\n");
    let out = build_local(&store, &ctx, "linux/amd64", &t.path().join("out"), &[]);
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("made/by/copy/a.txt"), 0o700);
    assert_eq!(mode("made/by/copy/sub"), 0o700);
    assert_eq!(mode("made/by/copy/sub/b.txt"), 0o700);
    assert_eq!(
        mode("made/by/copy"),
        0o755,
        "the destination the copy creates"
    );
    assert_eq!(mode("made/by"), 0o755);
}

/// Media types of the layers of a single-platform OCI layout, read by skopeo.
fn layer_media_types(layout: &Path) -> Vec<String> {
    let manifest = common::skopeo_inspect_layout(layout, "--raw");
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn compression_is_per_build_and_converts_cached_and_forced_layers() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "compress",
        "FROM kbuild.test/busybox:latest\nCOPY file.txt /\nRUN echo built > /built\n",
    );
    let build = |name: &str, extra: &str| {
        let dest = t.path().join(name);
        let output = format!("type=oci,tar=false,dest={}{extra}", dest.display());
        kb(&store, [&ctx])
            .platform("linux/amd64")
            .output(&output)
            .ok();
        dest
    };
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    let gzip = layer_media_types(&build("gzip", ""));
    assert!(gzip.iter().all(|m| m == GZIP), "{gzip:?}");
    // The steps are cached from the gzip build; their layers come out zstd,
    // the base image's stay gzip...
    let zstd = layer_media_types(&build("zstd", ",compression=zstd"));
    assert_eq!(zstd.len(), gzip.len());
    assert_eq!(zstd[0], GZIP, "{zstd:?}");
    assert!(zstd[1..].iter().all(|m| m == ZSTD), "{zstd:?}");
    // ...unless forced.
    let forced = build("forced", ",compression=zstd,force-compression=true");
    let forced_types = layer_media_types(&forced);
    assert!(forced_types.iter().all(|m| m == ZSTD), "{forced_types:?}");
    // Independent check: every zstd blob is a valid zstd stream.
    for entry in std::fs::read_dir(forced.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let head = std::fs::read(&path).unwrap();
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let ok = Command::new("zstd").arg("-t").arg(&path).output().unwrap();
            assert!(ok.status.success(), "{}", path.display());
        }
    }

    // compression-level changes the bytes of new layers.
    let fresh = t.path().join("fresh-store");
    busybox_image(&fresh, "linux/amd64").expect("busybox base");
    let level = |name: &str, lvl: u32| {
        let dest = t.path().join(name);
        let output = format!(
            "type=oci,tar=false,dest={},compression-level={lvl}",
            dest.display()
        );
        kb(&fresh, [&ctx])
            .platform("linux/amd64")
            .output(&output)
            .args(["--no-cache"])
            .ok();
        std::fs::read(dest.join("index.json")).unwrap()
    };
    assert_ne!(level("l0", 0), level("l9", 9));

    for (bad, needle) in [
        (
            "type=oci,dest=x,oci-mediatypes=false",
            "oci-mediatypes=false",
        ),
        ("type=oci,dest=x,bogus=true", "supported: type, dest"),
        ("type=oci,dest=x,compression-level=12", "0 to 9"),
    ] {
        let r = kb(&store, [&ctx]).output(bad).fails();
        assert!(r.stderr.contains(needle), "{bad}: {}", r.stderr);
    }
    let r = kb(&store, [&ctx])
        .output("type=oci,dest=a.tar,compression=zstd")
        .output("type=tar,dest=b.tar")
        .fails();
    assert!(
        r.stderr.contains("different layer compressions"),
        "{}",
        r.stderr
    );
}

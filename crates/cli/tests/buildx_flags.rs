//! buildx flags BuildKit users expect: `--build-context`, `--annotation`,
//! `--shm-size`, `--provenance`. Real builds with the busybox fixture and
//! a real registry; results read back with skopeo, tar and the exported
//! filesystem.

mod common;

use common::{build_local, context, error_lines, skopeo_raw, write};
use kbuild_testkit::registry::TestRegistry;
use std::path::{Path, PathBuf};

fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    common::busybox_store("linux/amd64")
}

fn registry() -> Option<TestRegistry> {
    kbuild_testkit::fixtures::started("registry", TestRegistry::start())
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// An image of busybox with `/marker` holding `text`, pushed as `reference`.
fn push_marked(store: &Path, t: &Path, reference: &str, text: &str) {
    let ctx = context(
        t,
        &format!("marked-{text}"),
        "FROM kbuild.test/busybox:latest\nCOPY marker /marker\n",
    );
    write(&Path::new(&ctx).join("marker"), &format!("{text}\n"));
    common::kb(store, [&ctx, "-t", reference, "--push"])
        .platform("linux/amd64")
        .ok();
}

#[test]
fn build_context_directory_is_a_second_context_without_its_dockerignore() {
    let Some((t, store)) = setup() else {
        return;
    };
    let extra = t.path().join("extra");
    write(&extra.join("a.txt"), "from extra\n");
    write(&extra.join("sub/b.txt"), "mounted\n");
    // BuildKit applies no .dockerignore to a named context.
    write(&extra.join(".dockerignore"), "a.txt\nsub\n");
    let ctx = context(
        t.path(),
        "main",
        "FROM kbuild.test/busybox:latest\n\
         COPY --from=extra a.txt /copied\n\
         RUN --mount=from=extra,target=/x cat /x/sub/b.txt > /mounted\n\
         COPY a.txt /main\n",
    );
    write(&Path::new(&ctx).join("a.txt"), "from main\n");
    let flag = format!("extra={}", extra.display());
    let out = build_local(
        &store,
        &ctx,
        "linux/amd64",
        &t.path().join("out"),
        &["--build-context", &flag],
    );
    assert_eq!(read(&out, "copied"), "from extra\n");
    assert_eq!(read(&out, "mounted"), "mounted\n");
    assert_eq!(
        read(&out, "main"),
        "from main\n",
        "the main context is still ."
    );

    // A change in the named directory is a cache miss of the copy.
    write(&extra.join("a.txt"), "changed\n");
    let out = build_local(
        &store,
        &ctx,
        "linux/amd64",
        &t.path().join("out2"),
        &["--build-context", &flag],
    );
    assert_eq!(read(&out, "copied"), "changed\n");

    // FROM a directory context is refused with the way out.
    let from_dir = context(t.path(), "from-dir", "FROM extra\n");
    let r = common::kb(&store, [&from_dir, "--build-context", &flag, "--dry-run"]).fails();
    let line = r.error_line();
    assert!(
        line.contains("Dockerfile:1") && line.contains("--build-context extra is a directory"),
        "{}",
        line
    );
}

#[test]
fn build_context_docker_image_replaces_an_image_and_a_stage_of_that_name() {
    let Some((t, store)) = setup() else {
        return;
    };
    let Some(reg) = registry() else {
        return;
    };
    let base = format!("{}/named/base:1", reg.host());
    push_marked(&store, t.path(), &base, "pinned");
    let ctx = context(
        t.path(),
        "main",
        "FROM busybox AS builder\n\
         RUN echo from-the-stage > /marker\n\
         FROM alpine\n\
         RUN cat /marker > /seen\n\
         COPY --from=builder /marker /from-builder\n",
    );
    let image_flag = format!("alpine=docker-image://{base}");
    let stage_flag = format!("builder=docker-image://{base}");
    let out = build_local(
        &store,
        &ctx,
        "linux/amd64",
        &t.path().join("out"),
        &[
            "--build-context",
            &image_flag,
            "--build-context",
            &stage_flag,
        ],
    );
    assert_eq!(
        read(&out, "seen"),
        "pinned\n",
        "FROM alpine reads the image"
    );
    assert_eq!(
        read(&out, "from-builder"),
        "pinned\n",
        "the stage named builder is replaced (its RUN never runs)"
    );

    for (value, says) in [
        (
            "x=target:other",
            "--build-context x=target:other is not implemented yet",
        ),
        (
            "x=https://example.invalid/ctx.tar",
            "--build-context x=https://example.invalid/ctx.tar is not implemented yet",
        ),
        ("x", "invalid --build-context \"x\""),
    ] {
        let r = common::kb(&store, [&ctx, "--build-context", value, "--dry-run"]).fails();
        let line = r.error_line();
        assert!(line.contains(says), "{value}: {}", line);
    }
}

#[test]
fn build_context_oci_layout_reads_a_local_layout_by_tag_or_digest() {
    let Some((t, store)) = setup() else {
        return;
    };
    let ctx = context(
        t.path(),
        "marked",
        "FROM kbuild.test/busybox:latest\nCOPY marker /marker\n",
    );
    write(&Path::new(&ctx).join("marker"), "from the layout\n");
    let layout = t.path().join("layout");
    let dest = format!("type=oci,tar=false,dest={}", layout.display());
    common::kb(&store, [&ctx, "-t", "x/y:v1"])
        .platform("linux/amd64")
        .output(&dest)
        .ok();
    let index = common::read_json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // A fresh store: everything comes from the layout (busybox included).
    let fresh = t.path().join("fresh");
    let main = context(
        t.path(),
        "main",
        "FROM base\nRUN cat /marker > /seen\nCOPY --from=base /marker /copied\n",
    );
    for selector in ["", ":v1", &format!("@{digest}")] {
        let flag = format!("base=oci-layout://{}{selector}", layout.display());
        let out = build_local(
            &fresh,
            &main,
            "linux/amd64",
            &t.path().join(format!("out{}", selector.len())),
            &["--build-context", &flag],
        );
        assert_eq!(read(&out, "seen"), "from the layout\n", "{flag}");
        assert_eq!(read(&out, "copied"), "from the layout\n", "{flag}");
    }

    let flag = format!("base=oci-layout://{}:nope", layout.display());
    let r = common::kb(&fresh, [&main, "--build-context", &flag, "--dry-run"]).fails();
    let line = r.error_line();
    assert!(
        line.contains("has no image tagged nope") && line.contains("v1"),
        "{}",
        line
    );
}

#[test]
fn annotations_go_where_buildx_puts_them() {
    let Some((t, store)) = common::busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    let Some(reg) = registry() else {
        return;
    };
    let ctx = context(
        t.path(),
        "main",
        "FROM kbuild.test/busybox:latest\nCOPY Dockerfile /\n",
    );
    let image = format!("{}/annotated/app:1", reg.host());
    let layout = t.path().join("layout");
    let oci = format!(
        "type=oci,tar=false,dest={},annotation-index-descriptor.org.example.desc=top,annotation.org.example.out=from-output",
        layout.display()
    );
    common::kb(
        &store,
        [
            &ctx,
            "-t",
            &image,
            "--push",
            "--annotation",
            "org.opencontainers.image.title=plain",
            "--annotation",
            "index:org.example.index=idx",
            "--annotation",
            "manifest[linux/arm64]:org.example.arm=only-arm",
            "--annotation",
            "manifest-descriptor:org.example.md=desc",
        ],
    )
    .platform("linux/amd64,linux/arm64")
    .output(&oci)
    .ok();
    let index = skopeo_raw(&image);
    assert_eq!(index["annotations"]["org.example.index"], "idx", "{index}");
    assert!(
        index["annotations"]
            .get("org.opencontainers.image.title")
            .is_none(),
        "a bare key goes on the manifests only: {index}"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    for d in manifests {
        assert_eq!(d["annotations"]["org.example.md"], "desc", "{d}");
        let arch = d["platform"]["architecture"].as_str().unwrap();
        let m = skopeo_raw(&format!(
            "{}/annotated/app@{}",
            reg.host(),
            d["digest"].as_str().unwrap()
        ));
        assert_eq!(m["annotations"]["org.opencontainers.image.title"], "plain");
        assert_eq!(m["annotations"]["org.example.out"], "from-output");
        assert_eq!(
            m["annotations"]["org.example.arm"].as_str(),
            (arch == "arm64").then_some("only-arm"),
            "{arch}: {m}"
        );
    }
    // The OCI layout holds the same index, its descriptor annotated.
    let top = common::read_json(&layout.join("index.json"));
    assert_eq!(
        top["manifests"][0]["annotations"]["org.example.desc"],
        "top"
    );
    let raw = common::skopeo_inspect_layout(&layout, "--raw");
    assert_eq!(raw, index, "the layout and the registry hold one index");

    // Index annotations need an index; unknown types are named.
    for (value, says) in [
        ("index:k=v", "goes on an image index"),
        ("bogus:k=v", "invalid --annotation"),
        ("manifest[linux/arm65]:k=v", "invalid --annotation"),
    ] {
        let r = common::kb(&store, [&ctx, "--annotation", value, "--dry-run"])
            .platform("linux/amd64")
            .fails();
        let line = r.error_line();
        assert!(line.contains(says), "{value}: {}", line);
    }
}

#[test]
fn shm_size_sets_the_dev_shm_tmpfs_of_run() {
    let Some((t, store)) = setup() else {
        return;
    };
    let ctx = context(
        t.path(),
        "main",
        "FROM kbuild.test/busybox:latest\n\
         RUN df -k /dev/shm | tail -n 1 | awk '{print $2}' > /shm-kib\n\
         RUN if dd if=/dev/zero of=/dev/shm/fill bs=1024 count=20480 2>/dev/null; then echo fits; else echo full; fi > /twenty-mib\n",
    );
    let out = build_local(&store, &ctx, "linux/amd64", &t.path().join("default"), &[]);
    assert_eq!(read(&out, "shm-kib"), "65536\n", "64 MiB as runc gives");
    assert_eq!(read(&out, "twenty-mib"), "fits\n");

    // Another size is another cache key: the steps run again.
    let out = build_local(
        &store,
        &ctx,
        "linux/amd64",
        &t.path().join("small"),
        &["--shm-size", "16m"],
    );
    assert_eq!(read(&out, "shm-kib"), "16384\n");
    assert_eq!(
        read(&out, "twenty-mib"),
        "full\n",
        "a write beyond 16 MiB fails"
    );

    let r = common::kb(&store, [&ctx, "--shm-size", "lots", "--dry-run"]).fails();
    let line = r.error_line();
    assert!(
        line.contains("invalid --shm-size value \"lots\""),
        "{}",
        line
    );
}

#[test]
fn provenance_is_an_attestation_manifest_per_image_as_buildkit_attaches_it() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let Some(reg) = registry() else {
        return;
    };
    // The base comes from the registry, so its digest is a material.
    let ctx0 = common::busybox_context();
    let Some(ctx0) = ctx0 else { return };
    let base = format!("{}/prov/busybox:1", reg.host());
    common::kb(&store, [ctx0.to_str().unwrap(), "-t", &base, "--push"])
        .platform("linux/amd64,linux/arm64")
        .ok();
    let base_index = skopeo_raw(&base);
    let base_digest = |arch: &str| {
        base_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["platform"]["architecture"] == arch)
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .unwrap()
    };
    let ctx = context(
        t.path(),
        "main",
        &format!(
            "FROM {base}\nARG GREETING\nCOPY Dockerfile /\nCMD [\"echo\", \"provenance ok\"]\n"
        ),
    );
    let image = format!("{}/prov/app:1", reg.host());
    common::kb(
        &store,
        [
            &ctx,
            "-t",
            &image,
            "--push",
            "--provenance=mode=max",
            "--build-arg",
            "GREETING=hi",
        ],
    )
    .platform("linux/amd64,linux/arm64")
    .ok();
    let index = skopeo_raw(&image);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "two images, two attestations: {index}");
    let (images, attestations): (Vec<_>, Vec<_>) =
        entries.iter().partition(|d| d["platform"]["os"] == "linux");
    assert_eq!(images.len(), 2, "{index}");
    for (img, att) in images.iter().zip(&attestations) {
        assert_eq!(att["platform"]["os"], "unknown", "{att}");
        assert_eq!(att["platform"]["architecture"], "unknown", "{att}");
        assert_eq!(
            att["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            att["annotations"]["vnd.docker.reference.digest"],
            img["digest"]
        );
        let arch = img["platform"]["architecture"].as_str().unwrap();
        let manifest = skopeo_raw(&format!(
            "{}/prov/app@{}",
            reg.host(),
            att["digest"].as_str().unwrap()
        ));
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
        assert_eq!(
            layer["annotations"]["in-toto.io/predicate-type"],
            "https://slsa.dev/provenance/v0.2"
        );
        // The statement itself, fetched from the registry by skopeo.
        let layout = t.path().join(format!("att-{arch}"));
        common::skopeo_to_layout(
            &format!(
                "{}/prov/app@{}",
                reg.host(),
                att["digest"].as_str().unwrap()
            ),
            &layout,
        );
        let statement = common::read_json(&common::layout_blob(
            &layout,
            layer["digest"].as_str().unwrap(),
        ));
        assert_eq!(statement["_type"], "https://in-toto.io/Statement/v0.1");
        assert_eq!(
            statement["predicateType"],
            "https://slsa.dev/provenance/v0.2"
        );
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            img["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
            "{statement:#}"
        );
        let p = &statement["predicate"];
        assert!(
            p["builder"]["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{p:#}"
        );
        assert_eq!(p["invocation"]["parameters"]["frontend"], "dockerfile.v0");
        assert_eq!(
            p["invocation"]["parameters"]["args"]["build-arg:GREETING"],
            "hi"
        );
        assert_eq!(
            p["invocation"]["environment"]["platform"],
            format!("linux/{arch}")
        );
        let materials = p["materials"].as_array().unwrap();
        assert_eq!(materials.len(), 1, "{p:#}");
        assert_eq!(
            materials[0]["digest"]["sha256"],
            base_digest(arch).trim_start_matches("sha256:"),
            "{p:#}"
        );
        assert!(
            materials[0]["uri"]
                .as_str()
                .unwrap()
                .starts_with("pkg:docker/"),
            "{p:#}"
        );
        assert!(
            p["buildConfig"]["llbDefinition"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "mode=max lists the steps: {p:#}"
        );
    }

    // docker pulls the index and runs the image of its platform.
    let Some(d) =
        kbuild_testkit::fixtures::started("dockerd", kbuild_testkit::dockerd::Dockerd::start())
    else {
        return;
    };
    d.docker_ok(["pull", "--platform", "linux/amd64", &image])
        .expect("docker pull");
    let out = d
        .docker_ok([
            "run",
            "--rm",
            "--network",
            "none",
            "--platform",
            "linux/amd64",
            &image,
        ])
        .expect("docker run");
    assert_eq!(out.trim(), "provenance ok");

    // One platform gets an index too; without --provenance it stays a manifest.
    let single = format!("{}/prov/single:1", reg.host());
    common::kb(&store, [&ctx, "-t", &single, "--push", "--provenance=true"])
        .platform("linux/amd64")
        .ok();
    let raw = skopeo_raw(&single);
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw}");
    let plain = format!("{}/prov/plain:1", reg.host());
    common::kb(&store, [&ctx, "-t", &plain, "--push"])
        .platform("linux/amd64")
        .ok();
    assert_eq!(
        skopeo_raw(&plain)["mediaType"],
        "application/vnd.oci.image.manifest.v1+json",
        "provenance is off by default"
    );

    let r = common::kb(&store, [&ctx, "--provenance=mode=full", "--dry-run"]).fails();
    assert!(
        error_lines(&r.stderr)[0].contains("invalid --provenance value"),
        "{}",
        r.stderr
    );
    let r = common::kb(&store, [&ctx, "--provenance", "--load", "--dry-run"]).fails();
    assert!(
        error_lines(&r.stderr)[0].contains("--provenance cannot go with"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_builder_daemon_gets_image_contexts_annotations_shm_size_and_provenance() {
    let Some((t, store)) = setup() else {
        return;
    };
    let Some(reg) = registry() else {
        return;
    };
    let base = format!("{}/daemon/base:1", reg.host());
    push_marked(&store, t.path(), &base, "through-the-daemon");
    let config = t.path().join("config");
    let config_env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];
    let mut daemon = common::node(t.path(), "d1").start();
    common::kb(&store, ["create", "d1"])
        .args(daemon.via_unix())
        .envs(&config_env)
        .ok();

    let ctx = context(
        t.path(),
        "main",
        "FROM alpine\n\
         RUN df -k /dev/shm | tail -n 1 | awk '{print $2}' > /shm-kib && cp /marker /seen\n",
    );
    let named = format!("alpine=docker-image://{base}");
    let out = t.path().join("out");
    let local = format!("type=local,dest={}", out.display());
    common::kb(
        &store,
        [&ctx, "--build-context", &named, "--shm-size", "16m"],
    )
    .builder("d1")
    .platform("linux/amd64")
    .output(&local)
    .envs(&config_env)
    .ok();
    assert_eq!(read(&out, "shm-kib"), "16384\n");
    assert_eq!(read(&out, "seen"), "through-the-daemon\n");

    let image = format!("{}/daemon/app:1", reg.host());
    common::kb(
        &store,
        [
            &ctx,
            "--build-context",
            &named,
            "-t",
            &image,
            "--push",
            "--provenance=true",
            "--annotation",
            "index:org.example.index=daemon",
            "--annotation",
            "org.example.manifest=daemon",
        ],
    )
    .builder("d1")
    .platform("linux/amd64")
    .envs(&config_env)
    .ok();
    let index = skopeo_raw(&image);
    assert_eq!(
        index["annotations"]["org.example.index"], "daemon",
        "{index}"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(
        entries[1]["annotations"]["vnd.docker.reference.digest"],
        entries[0]["digest"]
    );
    let m = skopeo_raw(&format!(
        "{}/daemon/app@{}",
        reg.host(),
        entries[0]["digest"].as_str().unwrap()
    ));
    assert_eq!(m["annotations"]["org.example.manifest"], "daemon", "{m}");

    // A directory stays on this machine: refused by name.
    let dir = t.path().join("extra");
    std::fs::create_dir_all(&dir).unwrap();
    let flag = format!("extra={}", dir.display());
    let r = common::kb(&store, [&ctx, "--build-context", &flag])
        .builder("d1")
        .output(&local)
        .envs(&config_env)
        .fails();
    let line = r.error_line();
    assert!(
        line.contains("--build-context extra") && line.contains("builder d1"),
        "{}",
        line
    );
    daemon.terminate();
}

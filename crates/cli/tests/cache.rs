//! `--cache-to` / `--cache-from`: a cache exported by one store gives hits
//! in another (two separate `--root`s stand for two machines), locally
//! (OCI layout) and through a real `docker-registry`, inline in the image
//! config too. Every RUN step appends to a file in a cache mount of its
//! store, so a step that ran leaves a line there and a step served from
//! the imported cache leaves none.

mod common;

use common::*;
use kbuild_testkit::registry::TestRegistry;
use std::path::{Path, PathBuf};

const SDE: (&str, &str) = ("SOURCE_DATE_EPOCH", "1700000000");

/// A store with the busybox base for linux/amd64, built reproducibly so
/// that every store gets the same base image digest (the base's digest is
/// part of every key above it).
fn store(t: &Path, name: &str) -> Option<PathBuf> {
    let store = t.join(name);
    let ctx = busybox_context()?;
    common::kb(&store, [ctx.to_str().unwrap(), "-t", BUSYBOX])
        .platform("linux/amd64")
        .output("type=image")
        .quiet()
        .envs(&[SDE])
        .ok();
    Some(store)
}

/// As root, a registry, a scratch directory and the [`store`] `a` in it;
/// `None` after [`kbuild_testkit::fixtures::skip_or_fail`].
fn registry_and_store() -> Option<(TestRegistry, tempfile::TempDir, PathBuf)> {
    if !require_root() {
        return None;
    }
    let reg = kbuild_testkit::fixtures::started("registry", TestRegistry::start())?;
    let t = tempfile::tempdir().unwrap();
    let a = store(t.path(), "a")?;
    Some((reg, t, a))
}

/// A two-stage build: the builder stage's RUN and the final stage's RUN
/// each log a line to the store's cache mount `witness`.
fn context(t: &Path, input: &str) -> PathBuf {
    let ctx = t.join(format!("ctx-{input}"));
    write(&ctx.join("input.txt"), input);
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {BUSYBOX} AS builder\n\
             COPY input.txt /input.txt\n\
             RUN --mount=type=cache,target=/witness,id=witness echo builder >> /witness/runs; cat /input.txt /input.txt > /built.txt\n\
             FROM {BUSYBOX}\n\
             COPY --from=builder /built.txt /built.txt\n\
             RUN --mount=type=cache,target=/witness,id=witness echo final >> /witness/runs; wc -c /built.txt > /final.txt\n\
             CMD [\"cat\", \"/final.txt\"]\n"
        ),
    );
    ctx
}

/// The RUN steps that ran in `store`, in order (`builder`, `final`).
fn runs(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir(&store.join("cache-mounts")) {
        if e.file_name().is_some_and(|n| n == "runs") {
            let text = std::fs::read_to_string(&e).unwrap();
            out.extend(text.lines().map(str::to_string));
        }
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Build `ctx` in `store` with `extra` flags; returns the image digest
/// and the run's output.
fn build(store: &Path, ctx: &Path, extra: &[&str]) -> (String, Run) {
    let iid = store.with_extension("iid");
    let mut args = vec![
        ctx.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "--progress",
        "plain",
        "--iidfile",
        iid.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = run(store, &args, &[SDE]).ok();
    let digest = std::fs::read_to_string(&iid).unwrap().trim().to_string();
    (digest, r)
}

/// Whether the RUN step of the builder stage (or of the final stage) was
/// reported CACHED.
fn cached_run(stderr: &str, builder: bool) -> bool {
    cached_steps(stderr)
        .iter()
        .any(|n| n.contains("] RUN") && n.contains(" builder ") == builder)
}

/// Whether a COPY or RUN of the builder stage was shown (run or cached);
/// its FROM is shown with the final stage's, the two sharing the image.
fn builder_step_shown(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains(" builder ") && (l.contains("] RUN") || l.contains("] COPY")))
}

#[test]
fn local_cache_min_and_max_hit_in_another_store() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let Some(a) = store(t.path(), "a") else {
        return;
    };
    let ctx = context(t.path(), "one");
    let min = t.path().join("cache-min");
    let max = t.path().join("cache-max");
    let (digest_a, r) = build(
        &a,
        &ctx,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=min", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    );
    assert_eq!(runs(&a), ["builder", "final"], "{}", r.stderr);
    assert!(
        r.stderr.contains("=> exported cache type=local"),
        "{}",
        r.stderr
    );
    // An OCI layout: the cache manifest tagged latest, its config the cache config.
    let index = read_json(&max.join("index.json"));
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest = read_json(&layout_blob(&max, m["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kubectl-build.cache.config.v1+json"
    );
    let config = read_json(&layout_blob(
        &max,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let min_manifest = read_json(&layout_blob(
        &min,
        read_json(&min.join("index.json"))["manifests"][0]["digest"]
            .as_str()
            .unwrap(),
    ));
    let min_config = read_json(&layout_blob(
        &min,
        min_manifest["config"]["digest"].as_str().unwrap(),
    ));
    let (n_max, n_min) = (
        config["records"].as_array().unwrap().len(),
        min_config["records"].as_array().unwrap().len(),
    );
    // max: the builder's COPY and RUN besides the final stage's steps.
    assert!(n_max >= n_min + 2, "max {n_max} records, min {n_min}");
    for l in manifest["layers"].as_array().unwrap() {
        assert!(layout_blob(&max, l["digest"].as_str().unwrap()).is_file());
    }

    // Another store importing max, the context copied elsewhere (other
    // path, other file times): no RUN runs, the same image.
    let Some(b) = store(t.path(), "b") else {
        return;
    };
    let moved = t.path().join("elsewhere/ctx");
    copy_dir(&ctx, &moved);
    let (digest_b, r) = build(
        &b,
        &moved,
        &["--cache-from", &format!("type=local,src={}", max.display())],
    );
    assert_eq!(runs(&b), Vec::<String>::new(), "{}", r.stderr);
    // The final stage's keys hit first, so the builder stage is not needed.
    assert!(!builder_step_shown(&r.stderr), "{}", r.stderr);
    assert!(cached_run(&r.stderr, false), "{}", r.stderr);
    assert_eq!(digest_b, digest_a);

    // Importing min: the final stage's steps hit. Their keys are computed
    // before anything runs (as BuildKit does), so the builder stage that
    // only the final stage's COPY --from reads never runs: neither its RUN
    // nor its COPY is even shown.
    let Some(c) = store(t.path(), "c") else {
        return;
    };
    let (digest_c, r) = build(
        &c,
        &ctx,
        &["--cache-from", &format!("type=local,src={}", min.display())],
    );
    assert_eq!(runs(&c), Vec::<String>::new(), "{}", r.stderr);
    assert!(cached_run(&r.stderr, false), "{}", r.stderr);
    assert!(!builder_step_shown(&r.stderr), "{}", r.stderr);
    assert_eq!(digest_c, digest_a);

    // Without any import: everything runs, the same digest.
    let Some(d) = store(t.path(), "d") else {
        return;
    };
    let (digest_d, _) = build(&d, &ctx, &[]);
    assert_eq!(runs(&d), ["builder", "final"]);
    assert_eq!(digest_d, digest_a);

    // A changed input misses from its first reader on.
    let Some(e) = store(t.path(), "e") else {
        return;
    };
    let changed = context(t.path(), "two");
    let (digest_e, r) = build(
        &e,
        &changed,
        &["--cache-from", &format!("type=local,src={}", max.display())],
    );
    assert_eq!(runs(&e), ["builder", "final"], "{}", r.stderr);
    assert_ne!(digest_e, digest_a);
}

#[test]
fn registry_cache_and_inline_cache_hit_in_another_store() {
    let Some((reg, t, a)) = registry_and_store() else {
        return;
    };
    let ctx = context(t.path(), "reg");
    let cache_ref = format!("{}/cache/app:buildcache", reg.host());
    let image = format!("{}/app/inline:1", reg.host());
    let (digest_a, r) = build(
        &a,
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
            "--cache-to",
            "type=inline",
            "-t",
            &image,
            "--push",
        ],
    );
    assert_eq!(runs(&a), ["builder", "final"], "{}", r.stderr);
    let cache = skopeo_raw(&cache_ref);
    assert_eq!(
        cache["config"]["mediaType"],
        "application/vnd.kubectl-build.cache.config.v1+json"
    );
    let pushed = skopeo_raw(&image);
    let config = common::skopeo_config_raw(&image);
    let inline = &config["moby.buildkit.cache.v0"];
    assert!(inline["records"].is_array(), "{config}");
    // The inline cache names only the image's own layers.
    let layers: Vec<&str> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    for l in inline["layers"].as_array().unwrap() {
        assert!(layers.contains(&l["blob"]["digest"].as_str().unwrap()));
    }

    // The registry cache (mode=max): nothing runs in another store.
    let Some(b) = store(t.path(), "b") else {
        return;
    };
    let (digest_b, r) = build(
        &b,
        &ctx,
        &["--cache-from", &format!("type=registry,ref={cache_ref}")],
    );
    assert_eq!(runs(&b), Vec::<String>::new(), "{}", r.stderr);
    // Pushed with the inline cache, the image differs by its config only;
    // the build without --cache-to type=inline is the plain image.
    let Some(d) = store(t.path(), "d") else {
        return;
    };
    let (digest_d, _) = build(&d, &ctx, &[]);
    assert_eq!(digest_b, digest_d);
    assert_ne!(digest_a, digest_d);

    // The inline cache, by the image's bare reference: the final stage
    // hits, so the builder stage (not in the image) need not run.
    let Some(c) = store(t.path(), "c") else {
        return;
    };
    let (digest_c, r) = build(&c, &ctx, &["--cache-from", &image]);
    assert_eq!(runs(&c), Vec::<String>::new(), "{}", r.stderr);
    assert!(cached_run(&r.stderr, false), "{}", r.stderr);
    assert_eq!(digest_c, digest_d);
}

#[test]
fn missing_or_corrupt_cache_sources_are_warnings() {
    let Some((reg, t, a)) = registry_and_store() else {
        return;
    };
    let ctx = context(t.path(), "corrupt");
    let good = t.path().join("cache");
    let (digest_a, _) = build(
        &a,
        &ctx,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", good.display()),
        ],
    );
    // Every layer blob of a copy of the cache overwritten: its index and
    // config read fine, its layers do not match their digests.
    let bad = t.path().join("bad-layers");
    copy_dir(&good, &bad);
    let manifest = read_json(&layout_blob(
        &bad,
        read_json(&bad.join("index.json"))["manifests"][0]["digest"]
            .as_str()
            .unwrap(),
    ));
    for l in manifest["layers"].as_array().unwrap() {
        let p = layout_blob(&bad, l["digest"].as_str().unwrap());
        std::fs::write(&p, b"not the layer").unwrap();
    }
    let garbage = t.path().join("garbage");
    write(&garbage.join("index.json"), "{ not json");
    let Some(b) = store(t.path(), "b") else {
        return;
    };
    let (digest_b, r) = build(
        &b,
        &ctx,
        &[
            "--cache-from",
            &format!("type=local,src={}", t.path().join("nowhere").display()),
            "--cache-from",
            &format!("type=local,src={}", garbage.display()),
            "--cache-from",
            &format!("type=registry,ref={}/no/such:cache", reg.host()),
            "--cache-from",
            &format!("type=local,src={}", bad.display()),
        ],
    );
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("WARNING: --cache-from"))
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("nowhere")),
        "{}",
        r.stderr
    );
    assert!(
        warnings.iter().any(|w| w.contains("garbage")),
        "{}",
        r.stderr
    );
    assert!(
        warnings.iter().any(|w| w.contains("no/such")),
        "{}",
        r.stderr
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("bad-layers") && w.contains("layer")),
        "{}",
        r.stderr
    );
    // The steps whose layers were bad ran; the result is the same image.
    assert_eq!(runs(&b), ["builder", "final"], "{}", r.stderr);
    assert_eq!(digest_b, digest_a);
}

fn copy_dir(from: &Path, to: &Path) {
    for f in walkdir(from) {
        let rel = f.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Modes are kept (they are part of a file's cache key).
        std::fs::copy(&f, &dest).unwrap();
    }
}

#[test]
fn cache_flags_are_checked_before_building() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n");
    let ctx = t.path().to_str().unwrap();
    for (flag, value, says) in [
        ("--cache-to", "type=gha", "unsupported cache type \"gha\""),
        ("--cache-to", "type=local", "type=local needs dest=DIR"),
        (
            "--cache-to",
            "type=local,dest=/tmp/x,mode=all",
            "mode=\"all\"",
        ),
        (
            "--cache-to",
            "type=registry,ref=r.example/a,colour=red",
            "unknown attribute \"colour\"",
        ),
        ("--cache-to", "type=inline,mode=max", "mode=min"),
        (
            "--cache-from",
            "type=s3,bucket=x",
            "unsupported cache type \"s3\"",
        ),
        ("--cache-from", "type=local", "type=local needs src=DIR"),
    ] {
        let r = common::kb(&t.path().join("store"), [ctx, "--dry-run", flag, value]).fails();
        assert!(
            r.stderr.contains(&format!("invalid {flag} value")) && r.stderr.contains(says),
            "{flag} {value}: {}",
            r.stderr
        );
    }
    // A bare reference is a registry cache, as in buildx.
    common::kb(
        &t.path().join("store"),
        [ctx, "--dry-run", "--cache-from", "r.example/app:cache"],
    )
    .ok();
}

#[test]
fn remote_builders_refuse_local_cache_flags() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n");
    let config = t.path().join("config");
    let env = [("XDG_CONFIG_HOME", config.to_str().unwrap())];
    let store = t.path().join("store");
    // Defining a builder does not contact it.
    common::kb(
        &store,
        [
            "create",
            "far",
            "--driver",
            "remote",
            "--endpoint",
            "tcp://127.0.0.1:9",
        ],
    )
    .envs(&env)
    .ok();
    for flag in ["--cache-to", "--cache-from"] {
        // A type=local cache is a directory of this machine: refused
        // before the (unreachable) daemon is asked anything.
        let cache_dir = t.path().join("cache");
        let value = if flag == "--cache-to" {
            format!("type=local,dest={}", cache_dir.display())
        } else {
            format!("type=local,src={}", cache_dir.display())
        };
        let r = common::kb(&store, [t.path().to_str().unwrap(), flag, &value])
            .builder("far")
            .output(format!(
                "type=oci,dest={}",
                t.path().join("out.tar").display()
            ))
            .envs(&env)
            .fails();
        assert!(
            r.stderr.contains(
                "a type=local cache is a directory of this machine, which builder far cannot reach"
            ),
            "{}",
            r.stderr
        );
    }
}

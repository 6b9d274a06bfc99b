//! Platforms kept end to end: a requested variant reaches the index and the
//! config unchanged, a base that offers no compatible platform stops the
//! build with one line listing what it offers, and unknown platforms build
//! only from scratch. Real builds of the busybox fixture, a real registry,
//! base images patched on disk and pushed with skopeo, results read back
//! with skopeo.

mod common;

use common::{kb, require_root, run, skopeo_raw, write};
use kbuild_testkit::registry::TestRegistry;
use std::path::Path;

/// Rewrites, in an OCI layout whose `index.json` points at one image index,
/// the config of the manifest listed for `platform` with `edit`; the
/// manifest, the index and `index.json` follow the new digests.
fn patch_config(layout: &Path, platform: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut top = common::read_json(&layout.join("index.json"));
    let index_digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut index = common::read_json(&common::layout_blob(layout, &index_digest));
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| common::platform_name(&m["platform"]) == platform)
        .unwrap_or_else(|| panic!("no {platform} in the index"));
    let manifest_digest = entry["digest"].as_str().unwrap().to_string();
    let mut manifest = common::read_json(&common::layout_blob(layout, &manifest_digest));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config = common::read_json(&common::layout_blob(layout, &config_digest));
    edit(&mut config);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = common::layout_put_blob(layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = common::layout_put_blob(layout, &manifest_bytes).into();
    entry["size"] = manifest_bytes.len().into();
    let index_bytes = serde_json::to_vec(&index).unwrap();
    top["manifests"][0]["digest"] = common::layout_put_blob(layout, &index_bytes).into();
    top["manifests"][0]["size"] = index_bytes.len().into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

/// `skopeo copy --all` of an OCI layout directory to `reference`.
fn skopeo_push(layout: &Path, reference: &str) {
    common::skopeo([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{reference}"),
    ]);
}

/// The config of `reference` (a registry reference, or `oci:DIR`) for
/// `platform`, read by skopeo.
fn skopeo_config(reference: &str, platform: &kbuild_platform::Platform) -> serde_json::Value {
    let mut args = vec![
        format!("--override-os={}", platform.os),
        format!("--override-arch={}", platform.architecture),
    ];
    if let Some(v) = &platform.variant {
        args.push(format!("--override-variant={v}"));
    }
    args.extend(["inspect", "--config", "--raw"].map(String::from));
    if !reference.starts_with("oci:") {
        args.push("--tls-verify=false".to_string());
    }
    args.push(if reference.starts_with("oci:") {
        reference.to_string()
    } else {
        format!("docker://{reference}")
    });
    serde_json::from_slice(&common::skopeo(&args)).expect("skopeo printed JSON")
}

/// `repository@digest` of a tagged reference (skopeo takes no tag with a digest).
fn by_digest(tagged: &str, digest: &str) -> String {
    let (repository, _tag) = tagged.rsplit_once(':').unwrap();
    format!("{repository}@{digest}")
}

/// A base whose linux/arm/v6 manifest's config claims arm/v7 (as some
/// published images do): the image built for linux/arm/v6 says v6 in the
/// index and in its config; arm/v8 may use the arm/v7 base and stays arm/v8;
/// arm/v5 has no base (a v6 or v7 base does not run on v5) and stops with
/// the base's platforms; arm/v9 is no platform at all.
#[test]
fn requested_variant_is_kept_in_index_and_config() {
    if !require_root() {
        return;
    }
    let Some(ctx) = common::busybox_context() else {
        return;
    };
    let reg = TestRegistry::start().expect("start docker-registry");
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let layout = t.path().join("base-layout");
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/arm/v6,linux/arm/v7")
        .output(format!("type=oci,dest={},tar=false", layout.display()))
        .quiet()
        .ok();
    patch_config(&layout, "linux/arm/v6", |c| {
        assert_eq!(c["variant"], "v6", "the tool wrote v6 before the patch");
        c["variant"] = "v7".into();
    });
    let base = format!("{}/test/armbase:1", reg.host());
    skopeo_push(&layout, &base);
    // The independent reader sees the lie we planted.
    let armv6: kbuild_platform::Platform = "linux/arm/v6".parse().unwrap();
    assert_eq!(skopeo_config(&base, &armv6)["variant"], "v7");

    let app = t.path().join("app");
    write(&app.join("hello.txt"), "hello\n");
    write(
        &app.join("Dockerfile"),
        &format!("FROM {base}\nCOPY hello.txt /hello.txt\n"),
    );
    let tag = format!("{}/test/app:1", reg.host());
    kb(&store, [app.to_str().unwrap()])
        .platform("linux/arm/v6,linux/arm/v8")
        .args(["-t", &tag, "--push"])
        .plain()
        .ok();
    let index = skopeo_raw(&tag);
    let entries = common::index_entries(&index);
    let names: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["linux/arm/v6", "linux/arm/v8"]);
    for (platform, digest) in &entries {
        let p: kbuild_platform::Platform = platform.parse().unwrap();
        let config = skopeo_config(&by_digest(&tag, digest), &p);
        assert_eq!(
            (
                config["os"].as_str(),
                config["architecture"].as_str(),
                config["variant"].as_str()
            ),
            (
                Some(p.os.as_str()),
                Some(p.architecture.as_str()),
                p.variant.as_deref()
            ),
            "{platform}: config {config}"
        );
    }
    // arm/v8 was built from the arm/v7 base: same layers below ours.
    let v8 = skopeo_raw(&by_digest(&tag, &entries[1].1));
    let base_index = skopeo_raw(&base);
    let base_v7 = common::index_entries(&base_index)
        .into_iter()
        .find(|(p, _)| p == "linux/arm/v7")
        .unwrap();
    let base_v7 = skopeo_raw(&by_digest(&base, &base_v7.1));
    assert_eq!(v8["layers"][0]["digest"], base_v7["layers"][0]["digest"]);

    // No compatible platform: one line naming the image and what it offers.
    let r = kb(&store, [app.to_str().unwrap()])
        .platform("linux/arm/v5")
        .fails();
    let errs = common::error_lines(&r.stderr);
    assert_eq!(errs.len(), 1, "{}", r.stderr);
    for needle in [
        base.as_str(),
        "linux/arm/v5",
        "linux/arm/v6",
        "linux/arm/v7",
    ] {
        assert!(errs[0].contains(needle), "{needle}: {}", r.stderr);
    }
    // The same from the local store (resolved above) and with --pull.
    let r = kb(&store, [app.to_str().unwrap()])
        .platform("linux/arm/v5")
        .args(["--pull"])
        .fails();
    assert!(
        r.stderr.contains("linux/arm/v6, linux/arm/v7"),
        "{}",
        r.stderr
    );

    // arm/v9 does not exist: refused before anything is resolved.
    let r = kb(&store, [app.to_str().unwrap()])
        .platform("linux/arm/v9")
        .plain()
        .fails();
    let errs = common::error_lines(&r.stderr);
    assert_eq!(errs.len(), 1, "{}", r.stderr);
    assert!(
        errs[0].contains("linux/arm/v9")
            && errs[0].contains(&base)
            && errs[0].contains("FROM scratch"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("resolve ") && !r.stderr.contains("pull "),
        "{}",
        r.stderr
    );
}

/// Unknown platforms (`linux/arm65`, `foo/bar`, `linux/arm/v9`) are refused
/// with the known platforms listed whenever an image would have to be
/// pulled for them, before any build work and in --dry-run too; stages
/// FROM scratch build them, and the result says exactly that platform.
#[test]
fn unknown_platforms_build_only_from_scratch() {
    let Some((t, store)) = common::busybox_store("linux/amd64,linux/arm64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "a\n");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM {base}\nCOPY a.txt /a.txt\n"),
    );
    for (platform, says) in [
        ("linux/arm65", "\"arm65\" is not a known architecture"),
        ("foo/bar", "\"foo\" is not a known operating system"),
        ("linux/arm/v9", "\"v9\" is not a variant of arm"),
    ] {
        for dry_run in [false, true] {
            let mut args = vec![
                ctx.to_str().unwrap(),
                "--platform",
                platform,
                "--progress",
                "plain",
            ];
            if dry_run {
                args.push("--dry-run");
            }
            let r = run(&store, &args, &[]).fails();
            let errs = common::error_lines(&r.stderr);
            assert_eq!(errs.len(), 1, "{platform}: {}", r.stderr);
            assert!(errs[0].contains(says), "{platform}: {}", r.stderr);
            assert!(
                errs[0].contains("unknown platform"),
                "{platform}: {}",
                r.stderr
            );
            assert!(errs[0].contains(base), "{platform}: {}", r.stderr);
            for known in [
                "linux/amd64",
                "linux/arm64",
                "linux/arm/v7",
                "windows/amd64",
            ] {
                assert!(errs[0].contains(known), "{platform}: {}", r.stderr);
            }
            assert!(!r.stderr.contains("resolve "), "{platform}: {}", r.stderr);
        }
    }

    // FROM scratch: built, and the image says the platform asked for.
    let scratch = t.path().join("scratch");
    write(&scratch.join("a.txt"), "a\n");
    write(
        &scratch.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\n",
    );
    let layout = t.path().join("layout");
    kb(&store, [scratch.to_str().unwrap()])
        .platform("foo/bar,linux/arm/v9")
        .output(format!("type=oci,dest={},tar=false", layout.display()))
        .ok();
    // skopeo, an independent reader, sees the platforms in the index and in
    // each config.
    let index = common::skopeo_inspect_layout(&layout, "--raw");
    let entries = common::index_entries(&index);
    let names: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["foo/bar", "linux/arm/v9"]);
    for (platform, _) in &entries {
        let p = kbuild_platform::Platform::parse(platform).unwrap();
        let config = skopeo_config(&format!("oci:{}", layout.display()), &p);
        assert_eq!(&common::platform_name(&config), platform);
    }
}

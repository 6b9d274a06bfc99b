//! Multi-platform images the two ways the product supports, end to end with
//! the real binary and a real registry:
//!
//! - cross-compilation: a builder stage pinned to `$BUILDPLATFORM` runs a real
//!   Go compiler (Debian's golang-go, copied into a local builder image by
//!   `scripts/golang-image.sh`) once per target, and `FROM scratch` release
//!   stages collect the binaries; the binaries are checked by their ELF
//!   header and by running them (natively or under `qemu-*-static`);
//! - emulation: a stage for a foreign platform whose RUN steps execute under
//!   QEMU through binfmt_misc.

mod common;

use common::{kb, layout_manifests, skopeo_raw, skopeo_to_layout, write};
use kbuild_testkit::registry::TestRegistry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the Go toolchain of Debian's golang-go lives.
const GOROOT: &str = "/usr/lib/go-1.19";

/// The seven targets of the cross-compiling Dockerfile.
const TARGETS: &str =
    "linux/amd64,linux/386,linux/arm/v6,linux/arm/v7,linux/arm64,linux/ppc64le,linux/s390x";

/// Prepares the builder image's context with `scripts/golang-image.sh`
/// (cached under the fixtures directory) and builds it into `store` as
/// `kbuild.test/golang:1.19`.
fn golang_image(store: &Path) -> Option<&'static str> {
    if !Path::new(GOROOT).join("bin/go").is_file() {
        kbuild_testkit::fixtures::skip_or_fail(&format!(
            "{GOROOT}/bin/go missing: install golang-go (scripts/test.sh does)"
        ));
        return None;
    }
    kbuild_testkit::fixtures::busybox_binary("amd64")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/golang-image.sh");
    let dest = kbuild_testkit::fixtures::fixtures_dir().join("golang");
    let out = Command::new(&script)
        .arg(&dest)
        .env(
            kbuild_testkit::fixtures::FIXTURES_ENV,
            kbuild_testkit::fixtures::fixtures_dir(),
        )
        .output()
        .expect("run scripts/golang-image.sh");
    assert!(
        out.status.success(),
        "scripts/golang-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = "kbuild.test/golang:1.19";
    kb(store, [dest.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", name])
        .output("type=image")
        .quiet()
        .ok();
    Some(name)
}

/// The project's Dockerfile.cross shape: one builder on the build platform,
/// a compile per target, a scratch release stage chosen by `$TARGETOS`.
const DOCKERFILE_CROSS: &str = r#"FROM --platform=$BUILDPLATFORM kbuild.test/golang:1.19 AS builder
WORKDIR /src
COPY . .
ARG TARGETOS TARGETARCH TARGETVARIANT
ENV GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0 GOCACHE=/tmp/gocache
RUN case "$TARGETVARIANT" in v6) export GOARM=6;; v7) export GOARM=7;; esac; \
    go build -ldflags "-X main.variant=${GOARM:+/v$GOARM}" -o /out/app . && rm -rf /tmp/gocache

FROM scratch AS release-linux
COPY --from=builder /out/app /app
ENTRYPOINT ["/app"]

FROM release-$TARGETOS
"#;

const MAIN_GO: &str = r#"package main

import (
	"os"
	"runtime"
)

// variant is set by the Dockerfile with -ldflags "-X main.variant=/vN" (GOARM).
var variant string

func main() {
	os.Stdout.WriteString("hello from " + runtime.GOOS + "/" + runtime.GOARCH + variant + "\n")
}
"#;

/// (platform, ELF machine, how to run it here, what it prints).
const EXPECTED: &[(&str, u16, Option<&str>, &str)] = &[
    ("linux/amd64", 62, None, "hello from linux/amd64"),
    ("linux/386", 3, None, "hello from linux/386"),
    (
        "linux/arm/v6",
        40,
        Some("qemu-arm-static"),
        "hello from linux/arm/v6",
    ),
    (
        "linux/arm/v7",
        40,
        Some("qemu-arm-static"),
        "hello from linux/arm/v7",
    ),
    (
        "linux/arm64",
        183,
        Some("qemu-aarch64-static"),
        "hello from linux/arm64",
    ),
    (
        "linux/ppc64le",
        21,
        Some("qemu-ppc64le-static"),
        "hello from linux/ppc64le",
    ),
    (
        "linux/s390x",
        22,
        Some("qemu-s390x-static"),
        "hello from linux/s390x",
    ),
];

/// `e_machine` of an ELF file, read in the file's own byte order.
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    let m = [bytes[18], bytes[19]];
    match bytes[5] {
        1 => u16::from_le_bytes(m),
        2 => u16::from_be_bytes(m),
        other => panic!("bad EI_DATA {other}"),
    }
}

/// Platforms of an index, sorted.
fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = common::index_entries(index)
        .into_iter()
        .map(|(platform, _)| platform)
        .collect();
    v.sort();
    v
}

/// The names of the vertices a plain progress log started (`#N [..] TEXT`), each once.
fn vertices(log: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for line in log.lines() {
        let Some((id, rest)) = line.split_once(' ') else {
            continue;
        };
        if id.starts_with('#') && rest.starts_with('[') {
            seen.entry(id.to_string())
                .or_insert_with(|| rest.to_string());
        }
    }
    seen.into_values().collect()
}

#[test]
fn go_cross_compiles_seven_platforms_in_one_push() {
    let Some((t, store)) = common::scratch_store() else {
        return;
    };
    let Some(_) = golang_image(&store) else {
        return;
    };
    let reg = TestRegistry::start().expect("start docker-registry");
    let tag = format!("{}/cross/hello:1", reg.host());
    let ctx = t.path().join("ctx");
    write(&ctx.join("Dockerfile"), DOCKERFILE_CROSS);
    write(&ctx.join("main.go"), MAIN_GO);
    write(&ctx.join("go.mod"), "module example.com/hello\n\ngo 1.19\n");

    let r = kb(&store, [ctx.to_str().unwrap()])
        .platform(TARGETS)
        .args(["-t", &tag, "--push"])
        .plain()
        .ok();

    // Shared builder steps ran once, on the build platform; the compile once per target.
    let names = vertices(&r.stderr);
    let count = |suffix: &str| names.iter().filter(|n| n.ends_with(suffix)).count();
    assert_eq!(
        count("builder 1/4] FROM kbuild.test/golang:1.19"),
        1,
        "{names:#?}"
    );
    assert_eq!(count("builder 2/4] WORKDIR /src"), 1, "{names:#?}");
    assert_eq!(count("builder 3/4] COPY . ."), 1, "{names:#?}");
    let compiles: Vec<&String> = names.iter().filter(|n| n.contains("go build")).collect();
    assert_eq!(compiles.len(), 7, "{names:#?}");
    // Every compile runs on the build platform and is named for its target
    // as buildx names it (`[linux/amd64->arm64 builder 4/4]`).
    assert!(
        compiles
            .iter()
            .all(|n| n.starts_with("[linux/amd64 builder") || n.starts_with("[linux/amd64->")),
        "every compile runs on the build platform: {compiles:#?}"
    );
    for target in ["386", "arm/v6", "arm/v7", "arm64", "ppc64le", "s390x"] {
        let name = format!("[linux/amd64->{target} builder 4/4]");
        assert_eq!(
            compiles.iter().filter(|n| n.starts_with(&name)).count(),
            1,
            "{name}: {compiles:#?}"
        );
    }

    // One index with the seven platforms.
    let index = skopeo_raw(&tag);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let mut want: Vec<String> = TARGETS.split(',').map(String::from).collect();
    want.sort();
    assert_eq!(index_platforms(&index), want);

    // Each platform's image is the one binary, built for that platform.
    let layout = t.path().join("layout");
    skopeo_to_layout(&tag, &layout);
    let manifests = layout_manifests(&layout);
    assert_eq!(manifests.len(), 7);
    for (platform, machine, runner, output) in EXPECTED {
        let (_, manifest) = manifests
            .iter()
            .find(|(p, _)| p == platform)
            .unwrap_or_else(|| panic!("{platform} missing from the index"));
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            1,
            "{platform}: only the binary"
        );
        let config = common::read_json(&common::layout_blob(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/app"]));
        let root: PathBuf = t.path().join("fs").join(platform.replace('/', "_"));
        common::unpack_layers(&layout, manifest, &root);
        let app = root.join("app");
        let bytes = std::fs::read(&app).unwrap();
        assert_eq!(elf_machine(&bytes), *machine, "{platform}: ELF machine");
        let out = match runner {
            None => Command::new(&app).output(),
            Some(qemu) => Command::new(qemu).arg(&app).output(),
        }
        .unwrap_or_else(|e| panic!("run the {platform} binary: {e}"));
        assert!(out.status.success(), "{platform}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            *output,
            "{platform}"
        );
    }
}

#[test]
fn emulated_stages_push_one_index() {
    let platforms = "linux/arm64,linux/s390x";
    let Some((t, store)) = common::busybox_store(platforms) else {
        return;
    };
    let base = common::BUSYBOX;
    let reg = TestRegistry::start().expect("start docker-registry");
    let tag = format!("{}/emulated/busybox:1", reg.host());
    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base}\n\
             ARG TARGETPLATFORM\n\
             RUN uname -m > /machine\n\
             RUN echo \"built for $TARGETPLATFORM on $(cat /machine)\" > /etc/motd && rm /machine\n"
        ),
    );
    kb(&store, [ctx.to_str().unwrap()])
        .platform(platforms)
        .args(["-t", &tag, "--push"])
        .plain()
        .ok();
    let index = skopeo_raw(&tag);
    assert_eq!(
        index_platforms(&index),
        vec!["linux/arm64".to_string(), "linux/s390x".to_string()]
    );
    let layout = t.path().join("layout");
    skopeo_to_layout(&tag, &layout);
    for (platform, machine) in [("linux/arm64", "aarch64"), ("linux/s390x", "s390x")] {
        let (_, manifest) = layout_manifests(&layout)
            .into_iter()
            .find(|(p, _)| p == platform)
            .unwrap();
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            3,
            "{platform}"
        );
        let root = t.path().join("fs").join(platform.replace('/', "_"));
        common::unpack_layers(&layout, &manifest, &root);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            format!("built for {platform} on {machine}\n")
        );
        assert!(
            !root.join("machine").exists(),
            "{platform}: whiteout applied"
        );
        let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
        let want = if platform == "linux/arm64" { 183 } else { 22 };
        assert_eq!(elf_machine(&busybox), want, "{platform}");
    }
}

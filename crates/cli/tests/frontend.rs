//! The command line without building: flags, `--dry-run`, and errors.

mod common;

use common::{kb, run, write};

const CROSS: &str = r#"FROM --platform=$BUILDPLATFORM golang:1.22 AS builder
WORKDIR /src
COPY . .
ARG TARGETOS TARGETARCH
ENV GOOS=$TARGETOS GOARCH=$TARGETARCH
RUN go build -o /out/app .

FROM scratch AS release-linux
COPY --from=builder /out/app /app
ENTRYPOINT ["/app"]

FROM mcr.microsoft.com/windows/nanoserver:ltsc2022 AS release-windows
COPY --from=builder /out/app /app.exe
ENTRYPOINT ["C:\\app.exe"]

FROM release-$TARGETOS
"#;

const SIX: &str = "linux/386,linux/amd64,linux/arm/v6,linux/arm/v7,linux/arm64,windows/amd64";

#[test]
fn dry_run_json_of_the_cross_dockerfile() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile.cross"), CROSS);
    let ctx = t.path().to_str().unwrap();
    let df = t.path().join("Dockerfile.cross");
    let r = kb(&t.path().join("store"), [ctx, "-f", df.to_str().unwrap()])
        .platform(SIX)
        .args(["--dry-run=json"])
        .ok();
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON plan");
    let stages = plan["stages"].as_array().unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let targets = plan["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 6);
    let host = kbuild_platform::Platform::host().to_string();
    for t in targets {
        let platform = t["platform"].as_str().unwrap();
        let names: Vec<&str> = t["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                stages[s.as_u64().unwrap() as usize]["name"]
                    .as_str()
                    .unwrap_or("")
            })
            .collect();
        if platform == "windows/amd64" {
            assert!(names.contains(&"release-windows"), "{platform}: {names:?}");
            assert!(!names.contains(&"release-linux"), "{platform}: {names:?}");
        } else {
            assert!(names.contains(&"release-linux"), "{platform}: {names:?}");
            assert!(!names.contains(&"release-windows"), "{platform}: {names:?}");
        }
        let builder = t["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &stages[s.as_u64().unwrap() as usize])
            .find(|s| s["name"] == "builder")
            .expect("builder stage");
        assert_eq!(
            builder["platform"],
            host.as_str(),
            "builder runs on the build platform"
        );
        // The builder's steps before ARG TARGETOS are one step shared by all six targets.
        let first_two: Vec<&serde_json::Value> = builder["steps"]
            .as_array()
            .unwrap()
            .iter()
            .take(2)
            .map(|s| &steps[s.as_u64().unwrap() as usize])
            .collect();
        for s in first_two {
            assert_eq!(s["shared"], true, "{s}");
            assert_eq!(s["platforms"].as_array().unwrap().len(), 6, "{s}");
        }
    }
    // The RUN after ENV GOOS=... differs per target OS/arch: not shared by all six.
    let runs: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|s| s["instruction"]["kind"] == "run")
        .collect();
    assert!(
        runs.len() >= 5,
        "one compile per distinct TARGETOS/TARGETARCH: {}",
        runs.len()
    );
}

#[test]
fn dry_run_text_names_stages_and_bases() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), CROSS);
    let r = kb(&t.path().join("store"), [t.path().to_str().unwrap()])
        .platform("linux/arm64,windows/amd64")
        .args(["--dry-run"])
        .ok();
    assert!(r.stdout.contains("linux/arm64"), "{}", r.stdout);
    assert!(r.stdout.contains("release-windows"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("mcr.microsoft.com/windows/nanoserver:ltsc2022"),
        "{}",
        r.stdout
    );
}

#[test]
fn dockerfile_errors_name_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n\nCOPPY a /b\n");
    let r = kb(
        &t.path().join("s"),
        [t.path().to_str().unwrap(), "--dry-run"],
    )
    .fails();
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(line.contains("Dockerfile:3"), "{}", r.stderr);
    assert!(line.contains("COPPY"), "{}", r.stderr);
    assert!(line.contains("did you mean COPY?"), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1
    );
}

#[test]
fn unknown_target_lists_the_stages() {
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join("Dockerfile"),
        "FROM scratch AS one\nFROM scratch AS two\n",
    );
    let r = kb(
        &t.path().join("s"),
        [t.path().to_str().unwrap(), "--target", "three", "--dry-run"],
    )
    .fails();
    assert!(
        r.stderr.contains("three") && r.stderr.contains("one") && r.stderr.contains("two"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_platform_lists_the_supported_ones() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n");
    let r = kb(&t.path().join("s"), [t.path().to_str().unwrap()])
        .platform("linux/amd64,bogus")
        .args(["--dry-run"])
        .fails();
    assert!(r.stderr.contains("bogus"), "{}", r.stderr);
    assert!(
        r.stderr.contains("linux/arm/v7") && r.stderr.contains("windows/amd64"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_context_and_dockerfile_are_reported() {
    let t = tempfile::tempdir().unwrap();
    let r = kb(&t.path().join("s"), ["/nonexistent/ctx", "--dry-run"]).fails();
    assert!(r.stderr.contains("/nonexistent/ctx"), "{}", r.stderr);
    let r = kb(
        &t.path().join("s"),
        [t.path().to_str().unwrap(), "--dry-run"],
    )
    .fails();
    assert!(
        r.stderr.contains("Dockerfile") && r.stderr.contains("-f"),
        "{}",
        r.stderr
    );
    let r = kb(&t.path().join("s"), ["--dry-run"]).fails();
    assert!(r.stderr.contains("PATH"), "{}", r.stderr);
}

#[test]
fn cluster_flags_without_a_kubeconfig_say_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n");
    let ctx = t.path().to_str().unwrap();
    let home = t.path().join("home");
    let env = [("HOME", home.to_str().unwrap()), ("KUBECONFIG", "")];
    let r = kb(&t.path().join("s"), [ctx, "--kubeconfig", "/x"])
        .envs(&env)
        .fails();
    assert!(
        r.stderr.contains("--kubeconfig /x: no such file"),
        "{}",
        r.stderr
    );
    let r = kb(&t.path().join("s"), [ctx, "-n", "builds"])
        .envs(&env)
        .fails();
    assert!(
        r.stderr
            .contains("--namespace needs a cluster, and there is no kubeconfig"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_output_and_build_arg_values() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), "FROM scratch\n");
    let ctx = t.path().to_str().unwrap();
    let r = kb(&t.path().join("s"), [ctx]).output("type=ftp").fails();
    assert!(
        r.stderr.contains("--output") && r.stderr.contains("ftp"),
        "{}",
        r.stderr
    );
    let r = kb(&t.path().join("s"), [ctx, "--push"]).fails();
    assert!(r.stderr.contains("-t NAME"), "{}", r.stderr);
    let r = kb(&t.path().join("s"), [ctx, "--build-arg", "=x", "--dry-run"]).fails();
    assert!(r.stderr.contains("--build-arg"), "{}", r.stderr);
}

#[test]
fn help_reads_like_kubectl() {
    let t = tempfile::tempdir().unwrap();
    let r = kb(&t.path().join("s"), ["--help"]).ok();
    for needle in [
        "Examples:",
        "Options:",
        "Usage:",
        "kubectl build [flags] PATH",
        "--platform",
        "--registry-secret",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in help:\n{}",
            r.stdout
        );
    }
}

#[test]
fn dockerfile_from_stdin() {
    let t = tempfile::tempdir().unwrap();
    let plan = common::kb(&t.path().join("s"), ["-", "--dry-run=json"])
        .stdin("FROM scratch\nLABEL a=b\n")
        .json();
    assert_eq!(plan["targets"].as_array().unwrap().len(), 1);
}

#[test]
fn dry_run_json_carries_the_op_graph() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile.cross"), CROSS);
    let ctx = t.path().to_str().unwrap();
    let df = t.path().join("Dockerfile.cross");
    let args = [
        ctx,
        "-f",
        df.to_str().unwrap(),
        "--platform",
        SIX,
        "--dry-run=json",
    ];
    let out: serde_json::Value =
        serde_json::from_str(&run(&t.path().join("s"), &args, &[]).ok().stdout).unwrap();
    let graph = &out["graph"];
    assert_eq!(graph["version"], kbuild_dockerfile::graph::FORMAT_VERSION);
    let ops = graph["ops"].as_array().unwrap();
    let ids: Vec<&str> = ops.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let targets = graph["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 6);
    for t in targets {
        let result = t["result"].as_str().unwrap();
        assert!(
            result.starts_with("sha256:") && result.len() == 71,
            "{result}"
        );
        assert!(ids.contains(&result), "{t}");
    }
    // WORKDIR /src and COPY . . of the builder run on the build platform
    // once for all six targets.
    let workdirs = ops
        .iter()
        .filter(|o| o["meta"]["display"] == "WORKDIR /src")
        .count();
    assert_eq!(workdirs, 1);
    // One compile per distinct GOOS/GOARCH (arm/v6 and arm/v7 share GOARCH=arm).
    let compiles: Vec<&serde_json::Value> =
        ops.iter().filter(|o| o["op"]["type"] == "exec").collect();
    assert_eq!(compiles.len(), 5, "{compiles:?}");
    for c in &compiles {
        let created_by = c["op"]["history"]["created_by"].as_str().unwrap();
        assert!(
            created_by.starts_with("RUN |2 TARGETOS=") && created_by.ends_with(" # buildkit"),
            "{created_by}"
        );
        assert_eq!(c["platform"], kbuild_platform::Platform::host().to_string());
    }
    // The ids are content addresses: a second run prints the same graph.
    let again: serde_json::Value =
        serde_json::from_str(&run(&t.path().join("s"), &args, &[]).ok().stdout).unwrap();
    assert_eq!(again["graph"], *graph);
}

#[test]
fn dry_run_reports_rules_decided_without_images() {
    let t = tempfile::tempdir().unwrap();
    for (dockerfile, line, what) in [
        (
            "FROM busybox\nCOPY --chmod=rwx a /a\n",
            "Dockerfile:2:",
            "invalid --chmod=rwx",
        ),
        (
            "FROM busybox\nARG P=80/icmp\nEXPOSE $P\n",
            "Dockerfile:3:",
            "invalid protocol \"icmp\"",
        ),
    ] {
        write(&t.path().join("Dockerfile"), dockerfile);
        for mode in ["--dry-run", "--dry-run=json"] {
            let r = kb(&t.path().join("s"), [t.path().to_str().unwrap(), mode]).fails();
            let error = r.error_line();
            assert!(error.contains(line), "{}", r.stderr);
            assert!(error.contains(what), "{}", r.stderr);
            assert!(r.stdout.is_empty(), "{}", r.stdout);
        }
    }
}

#[test]
fn a_build_stops_at_a_bad_chmod_before_pulling() {
    let t = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: a pull would fail with a connection error.
    write(
        &t.path().join("Dockerfile"),
        "FROM 127.0.0.1:1/nothing/here:1\nCOPY --chmod=0999 a /a\n",
    );
    let r = kb(&t.path().join("s"), [t.path().to_str().unwrap()])
        .plain()
        .fails();
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        error.contains("Dockerfile:2:") && error.contains("invalid --chmod=0999"),
        "{}",
        r.stderr
    );
    assert!(!t.path().join("s").exists(), "the store was opened");
}

/// The "billion laughs" Dockerfile: every line makes the value 20 times
/// longer (20 bytes, 400, 8,000, 160,000, 3.2 MB, 64 MB, 1.28 GB...).
const LAUGHS: &str = "FROM busybox
ARG A=aaaaaaaaaaaaaaaaaaaa
ENV B=${A//a/aaaaaaaaaaaaaaaaaaaa}
ENV C=${B//a/aaaaaaaaaaaaaaaaaaaa}
ENV D=${C//a/aaaaaaaaaaaaaaaaaaaa}
ENV E=${D//a/aaaaaaaaaaaaaaaaaaaa}
ENV F=${E//a/aaaaaaaaaaaaaaaaaaaa}
ENV G=${F//a/aaaaaaaaaaaaaaaaaaaa}
ENV H=${G//a/aaaaaaaaaaaaaaaaaaaa}
";

/// Runs the binary with its address space limited to `mib` MiB (`ulimit
/// -v`), so a large allocation makes it fail instead of passing unseen.
fn run_limited(root: &std::path::Path, mib: u64, args: &[&str]) -> common::Run {
    common::Build::program("sh")
        .arg("-c")
        .arg(format!("ulimit -v {}; exec \"$0\" \"$@\"", mib * 1024))
        .arg(common::bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .run()
}

#[test]
fn billion_laughs_fails_fast_naming_the_line() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("Dockerfile"), LAUGHS);
    let ctx = t.path().to_str().unwrap();
    // A plain Dockerfile plans within the same address-space limit.
    let plain = t.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    write(&plain.join("Dockerfile"), "FROM busybox\nENV A=1\n");
    run_limited(
        &t.path().join("s"),
        512,
        &[plain.to_str().unwrap(), "--dry-run"],
    )
    .ok();

    let started = std::time::Instant::now();
    let r = run_limited(
        &t.path().join("s"),
        512,
        &[ctx, "--dry-run", "--platform", "linux/amd64,linux/arm64"],
    )
    .fails();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        "error: Dockerfile:6: ENV E=${D//a/aaaaaaaaaaaaaaaaaaaa}: failed to process \
         \"${D//a/aaaaaaaaaaaaaaaaaaaa}\": the expansion is longer than 1048576 bytes, \
         the limit for one word"
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn a_required_variable_reports_its_message() {
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join("Dockerfile"),
        "FROM busybox\nARG VERSION\nWORKDIR \"/app/${VERSION:?pass --build-arg VERSION=x.y.z}\"\n",
    );
    let ctx = t.path().to_str().unwrap();
    let r = kb(&t.path().join("s"), [ctx, "--dry-run"]).fails();
    assert_eq!(
        r.stderr.trim_end(),
        "error: Dockerfile:3: WORKDIR \"/app/${VERSION:?pass --build-arg VERSION=x.y.z}\": \
         failed to process \"\\\"/app/${VERSION:?pass --build-arg VERSION=x.y.z}\\\"\": \
         VERSION: pass --build-arg VERSION=x.y.z"
    );
    // Set but empty, with `:?` and no message: BuildKit's default text.
    write(
        &t.path().join("Dockerfile"),
        "FROM busybox\nARG VERSION\nENV V=${VERSION:?}\n",
    );
    let r = kb(
        &t.path().join("s"),
        [ctx, "--dry-run", "--build-arg", "VERSION="],
    )
    .fails();
    assert!(
        r.stderr
            .ends_with("failed to process \"${VERSION:?}\": VERSION: is not allowed to be empty\n"),
        "{}",
        r.stderr
    );
    // Given, the plan is made.
    let r = kb(
        &t.path().join("s"),
        [ctx, "--dry-run", "--build-arg", "VERSION=1.2"],
    )
    .ok();
    assert!(r.stdout.contains("V=1.2"), "{}", r.stdout);
}

#[test]
fn a_dockerfile_that_is_not_utf8_is_named_with_its_line() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().to_str().unwrap();
    // Latin-1 "é" (0xe9) on line 3, at byte offset 30.
    let mut latin1 = b"FROM busybox\nLABEL a=b\nLABEL caf".to_vec();
    let offset = latin1.len();
    latin1.extend_from_slice(b"\xe9=yes\n");
    std::fs::write(t.path().join("Dockerfile"), &latin1).unwrap();
    let r = kb(&t.path().join("s"), [ctx, "--dry-run"]).fails();
    let path = t.path().join("Dockerfile");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: Dockerfile {path:?} is not UTF-8 text: byte 0xe9 at line 3 (byte offset \
             {offset}) is not valid UTF-8; save the file as UTF-8"
        )
    );
    assert!(!r.stderr.contains("-f/--file"), "{}", r.stderr);

    // UTF-16 (as some Windows editors save), given with -f.
    let utf16: Vec<u8> = std::iter::once(0xfeff_u16)
        .chain("FROM busybox\n".encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    let other = t.path().join("Dockerfile.win");
    std::fs::write(&other, &utf16).unwrap();
    let r = kb(
        &t.path().join("s"),
        [ctx, "-f", other.to_str().unwrap(), "--dry-run"],
    )
    .fails();
    assert!(
        r.stderr.contains(&format!(
            "{other:?} is not UTF-8 text: byte 0xff at line 1 (byte offset 0)"
        )) && r.stderr.contains("UTF-16 byte order mark"),
        "{}",
        r.stderr
    );

    // From standard input.
    let out = common::kb(&t.path().join("s"), ["-", "--dry-run"])
        .stdin(&b"FROM busybox\n\xff\n"[..])
        .run();
    assert_ne!(out.code, 0);
    assert_eq!(
        out.stderr.trim_end(),
        "error: Dockerfile \"-\" is not UTF-8 text: byte 0xff at line 2 (byte offset 13) is not \
         valid UTF-8; save the file as UTF-8"
    );
}

#[test]
fn stages_built_on_a_large_environment_share_it() {
    // One stage with a 15 MB environment (just under the 16 MiB bound), and
    // 40 stages built on it: they share its values instead of copying
    // them (600 MB), so planning fits in a 384 MiB address space. (The
    // JSON plan lists each stage's environment: 735 MB here, streamed.)
    let t = tempfile::tempdir().unwrap();
    let mut text = format!("FROM scratch AS a\nARG A={}\n", "a".repeat(1000));
    for i in 1..=15 {
        text += &format!("ENV V{i}=${{A//a/$A}}\n");
    }
    for n in 0..40 {
        text += &format!("FROM a AS b{n}\nENV X={n}\n");
    }
    text += "FROM scratch\n";
    for n in 0..40 {
        text += &format!("COPY --from=b{n} /x /x{n}\n");
    }
    write(&t.path().join("Dockerfile"), &text);
    let r = run_limited(
        &t.path().join("s"),
        384,
        &[t.path().to_str().unwrap(), "--dry-run"],
    )
    .ok();
    for n in 0..40 {
        assert!(r.stdout.contains(&format!("ENV X={n}")), "b{n} missing");
    }
}

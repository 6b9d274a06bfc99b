//! Where `scripts/fixtures.sh` leaves the busybox fixtures, and which of them
//! are there.
//!
//! The script downloads Debian's `busybox-static` for seven architectures and
//! prepares, under `target/fixtures/busybox/`, one COPY source directory per
//! platform plus a `Dockerfile` that builds a multi-platform busybox image from
//! them with nothing but `COPY`:
//!
//! ```text
//! FROM scratch
//! ARG TARGETARCH
//! ARG TARGETVARIANT
//! COPY ${TARGETARCH}${TARGETVARIANT}/ /
//! ENV PATH=/bin
//! CMD ["sh"]
//! ```
//!
//! Each `<dir>/` holds `bin/busybox`, relative applet symlinks (`bin/sh ->
//! busybox`, `ls`, `cat`, `uname`, ... see [`BUSYBOX_APPLETS`]), `etc/passwd`,
//! `etc/group` (root and nobody) and a `tmp/` with mode 1777. [`BUSYBOX_PLATFORMS`]
//! maps platforms to directories and Debian architectures.
//!
//! When the fixtures are missing, the functions here return `None` after saying
//! why on stderr, so a developer's `cargo test` skips what needs them; under
//! CI (`CI=true`, where `scripts/test.sh` always prepares them) a missing
//! fixture is a failure instead: see [`skip_or_fail`].

use std::path::{Path, PathBuf};

/// One platform the busybox fixture image is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyboxPlatform {
    /// The OCI platform, normalized: `linux/arm/v7`.
    pub platform: &'static str,
    /// Its directory under `target/fixtures/busybox/`: `${TARGETARCH}${TARGETVARIANT}`.
    pub dir: &'static str,
    /// The Debian architecture whose `busybox-static` fills it.
    pub debian_arch: &'static str,
}

/// The platforms of the busybox fixture, in the order `scripts/fixtures.sh`
/// prepares them. Debian's armel targets ARMv5TE, so its busybox also serves
/// `linux/arm/v6`.
pub const BUSYBOX_PLATFORMS: &[BusyboxPlatform] = &[
    BusyboxPlatform {
        platform: "linux/amd64",
        dir: "amd64",
        debian_arch: "amd64",
    },
    BusyboxPlatform {
        platform: "linux/arm64",
        dir: "arm64",
        debian_arch: "arm64",
    },
    BusyboxPlatform {
        platform: "linux/arm/v7",
        dir: "armv7",
        debian_arch: "armhf",
    },
    BusyboxPlatform {
        platform: "linux/arm/v6",
        dir: "armv6",
        debian_arch: "armel",
    },
    BusyboxPlatform {
        platform: "linux/386",
        dir: "386",
        debian_arch: "i386",
    },
    BusyboxPlatform {
        platform: "linux/ppc64le",
        dir: "ppc64le",
        debian_arch: "ppc64el",
    },
    BusyboxPlatform {
        platform: "linux/s390x",
        dir: "s390x",
        debian_arch: "s390x",
    },
];

/// The applets that have a symlink in each platform's `bin/` (others still run
/// as `busybox APPLET`).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "cp", "echo", "env", "false", "id", "ls", "mkdir", "mv", "rm", "sleep",
    "test", "true", "uname", "wc", "grep", "sed", "head", "tail", "touch", "chmod", "chown", "ln",
    "pwd", "whoami", "printf",
];

/// Environment variable that overrides where the fixtures are looked for.
pub const FIXTURES_ENV: &str = "KBUILD_FIXTURES_DIR";

/// The directory `scripts/fixtures.sh` fills: `$KBUILD_FIXTURES_DIR` when set,
/// else `<workspace>/target/fixtures` (the script always writes there, whatever
/// `CARGO_TARGET_DIR` says), else `$CARGO_TARGET_DIR/fixtures` when only that
/// one exists. May not exist yet.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(FIXTURES_ENV) {
        return PathBuf::from(dir);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/testkit -> the workspace root
    let workspace_root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest_dir);
    let workspace = workspace_root.join("target/fixtures");
    if workspace.is_dir() {
        return workspace;
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let candidate = PathBuf::from(target).join("fixtures");
        if candidate.is_dir() {
            return candidate;
        }
    }
    workspace
}

/// The busybox build context (`Dockerfile` plus one directory per platform of
/// [`BUSYBOX_PLATFORMS`]), or `None` (see [`skip_or_fail`]) when it was not
/// prepared completely.
pub fn busybox_context() -> Option<PathBuf> {
    let context = fixtures_dir().join("busybox");
    let missing: Vec<&str> = BUSYBOX_PLATFORMS
        .iter()
        .filter(|p| !context.join(p.dir).join("bin/busybox").is_file())
        .map(|p| p.dir)
        .collect();
    if !context.join("Dockerfile").is_file() {
        skip_or_fail(&format!("{} has no Dockerfile", context.display()));
        return None;
    }
    if !missing.is_empty() {
        skip_or_fail(&format!(
            "{} lacks bin/busybox for {}",
            context.display(),
            missing.join(", ")
        ));
        return None;
    }
    Some(context)
}

/// The platform entry for `arch`, which may be a fixture directory (`armv7`),
/// a platform (`linux/arm/v7`) or a Debian architecture (`armhf`).
pub fn busybox_platform(arch: &str) -> Option<&'static BusyboxPlatform> {
    BUSYBOX_PLATFORMS
        .iter()
        .find(|p| p.dir == arch || p.platform == arch || p.debian_arch == arch)
}

/// The static busybox executable for `arch` (any name [`busybox_platform`]
/// accepts), or `None` (see [`skip_or_fail`]) when it was not prepared.
///
/// # Panics
/// When `arch` names no platform of the fixture: that is a bug in the test.
pub fn busybox_binary(arch: &str) -> Option<PathBuf> {
    let Some(platform) = busybox_platform(arch) else {
        let known: Vec<&str> = BUSYBOX_PLATFORMS.iter().map(|p| p.dir).collect();
        panic!(
            "no busybox fixture for {arch:?}; known: {}",
            known.join(", ")
        );
    };
    let binary = fixtures_dir()
        .join("busybox")
        .join(platform.dir)
        .join("bin/busybox");
    if binary.is_file() {
        Some(binary)
    } else {
        skip_or_fail(&format!("{} is missing", binary.display()));
        None
    }
}

/// Environment variable naming a file every skip is appended to (one line:
/// the test's thread name and the reason); `scripts/test.sh` sets it and
/// prints the count and the reasons when the run ends.
pub const SKIP_LOG_ENV: &str = "KBUILD_SKIP_LOG";

/// Reports that something a test needs is not here: the one way a test may
/// skip. Prints `skipping: ...` with how to get it and records it in
/// [`SKIP_LOG_ENV`]'s file, so the caller can return early; under CI
/// (`CI=true`, which `.ci/run` and `scripts/test.sh` export, and where
/// `scripts/test.sh` provides everything) panics instead, so a broken setup
/// cannot pass as a skip.
///
/// # Panics
/// When the `CI` environment variable is `true`.
pub fn skip_or_fail(reason: &str) {
    let hint = "run scripts/fixtures.sh (or scripts/test.sh, which also installs the packages)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; under CI this must not happen: {hint}");
    }
    eprintln!("skipping: {reason}; {hint}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("an unnamed test")
            .to_string();
        let line = format!("{test}: {}\n", reason.replace('\n', " "));
        // O_APPEND writes of one short line do not interleave between the
        // test processes cargo runs one after the other or in parallel.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "could not record the skip in {}: {e}",
                log.to_string_lossy()
            );
        }
    }
}

/// Whether this process runs as root (its real uid, the first number of
/// the `Uid:` line of `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Whether this process runs as root; if not, [`skip_or_fail`] with `why`
/// (what needs root).
pub fn require_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_fail(why);
    false
}

/// The component `what` that `started` started, or `None` after
/// [`skip_or_fail`] naming it and why it did not start (a program of the
/// test machine missing, for instance).
pub fn started<T, E: std::fmt::Display>(what: &str, started: Result<T, E>) -> Option<T> {
    match started {
        Ok(t) => Some(t),
        Err(e) => {
            skip_or_fail(&format!("{what}: {e}"));
            None
        }
    }
}

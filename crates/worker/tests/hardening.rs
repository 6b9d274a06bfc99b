//! The RUN sandbox's defaults against a hostile step, natively and under
//! QEMU: host-global kernel settings stay read-only, the kernel's sensitive
//! files are hidden, Docker's seccomp profile is in force, and
//! `Security::Insecure` lifts all of it. Needs root, the busybox fixtures,
//! binfmt_misc with qemu-user-static and the Go toolchain (which builds the
//! static system call probe in `executor_cases/syscall-probe`); under
//! `CI=true` a missing one fails the test.

use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kbuild_platform::Platform;
use kbuild_testkit::fixtures::{busybox_platform, skip_or_fail};
use kbuild_worker::binfmt;
use kbuild_worker::executor::{
    Cancel, Executor, ExitStatus, MountSpec, RunSpec, Security, Stream, MASKED_PATHS,
};
use kbuild_worker::snapshot::{Mount, Snapshotter};

fn executor() -> Executor {
    Executor::new(
        PathBuf::from(env!("CARGO_BIN_EXE_kbuild-sandbox")),
        Vec::new(),
    )
}

/// A live overlay over the busybox fixture of `platform`, or `None` (after
/// `skip_or_fail`) when this machine cannot run it.
struct Rootfs {
    _dir: tempfile::TempDir,
    mount: Mount,
    platform: Platform,
}

impl Rootfs {
    fn new(platform: &str) -> Option<Rootfs> {
        if !rustix::process::geteuid().is_root() {
            skip_or_fail("the sandbox needs root (namespaces, mounts)");
            return None;
        }
        let platform = Platform::parse(platform).expect("a valid platform");
        if let Err(e) = binfmt::ensure(&platform) {
            skip_or_fail(&format!("{platform} cannot run here: {e}"));
            return None;
        }
        let fixture = busybox_platform(&platform.to_string())?;
        let lower = kbuild_testkit::fixtures::fixtures_dir()
            .join("busybox")
            .join(fixture.dir);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let snapshotter = Snapshotter::new(dir.path().join("snapshots")).expect("a snapshotter");
        let mount = snapshotter
            .mount(std::slice::from_ref(&lower))
            .expect("an overlay mount");
        Some(Rootfs {
            _dir: dir,
            mount,
            platform,
        })
    }

    fn spec(&self, script: &str) -> RunSpec {
        let mut spec = RunSpec::new(self.mount.merged(), ["sh", "-c", script]);
        spec.env = vec!["PATH=/bin".into()];
        spec.platform = self.platform.clone();
        spec
    }
}

/// Runs `spec`; returns the exit status and stdout + stderr.
fn run(spec: &RunSpec) -> (ExitStatus, String) {
    let mut out = Vec::new();
    let status = executor()
        .run(spec, &Cancel::new(), &mut |_: Stream, b: &[u8]| {
            out.extend_from_slice(b)
        })
        .expect("the step runs");
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// The system call probe built for `platform`'s architecture, static.
fn probe(platform: &Platform) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    // One directory per version of the probe's source, kept between runs
    // (the Go build and its caches are about 70 MB).
    let dir = BUILT.get_or_init(|| {
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/executor_cases/syscall-probe");
        let mut names: Vec<_> = std::fs::read_dir(&source)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut hash = sha2::Sha256::new();
        for name in names {
            hash.update(name.file_name().unwrap_or_default().as_encoded_bytes());
            hash.update(std::fs::read(&name).map_err(|e| e.to_string())?);
        }
        let key = hex::encode(&hash.finalize()[..8]);
        let out = std::env::temp_dir().join(format!("kbuild-syscall-probe-{key}"));
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        Ok(out)
    });
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            skip_or_fail(&format!("no directory for the probe: {e}"));
            return None;
        }
    };
    let goarch = match platform.architecture.as_str() {
        "amd64" | "arm64" => platform.architecture.as_str(),
        other => panic!("the probe knows no add_key number for {other}"),
    };
    let binary = dir.join(goarch);
    if binary.exists() {
        return Some(binary);
    }
    // Built under a name of this process and renamed, so that test
    // processes building at once never run a half-written probe.
    let partial = dir.join(format!("{goarch}.{}", std::process::id()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/executor_cases/syscall-probe");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&source)
        .env("CGO_ENABLED", "0")
        .env("GOARCH", goarch)
        // Whatever HOME is (CI may have none): caches of our own.
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output();
    match built {
        Ok(o) if o.status.success() => match std::fs::rename(&partial, &binary) {
            Ok(()) => Some(binary),
            Err(e) => {
                skip_or_fail(&format!("cannot keep the syscall probe: {e}"));
                None
            }
        },
        Ok(o) => {
            skip_or_fail(&format!(
                "go build of the syscall probe failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            None
        }
        Err(e) => {
            skip_or_fail(&format!(
                "the Go toolchain (go) is needed to build the syscall probe: {e}"
            ));
            None
        }
    }
}

/// `NAME=ERRNO` lines of the probe, run in a step with `security`.
fn probe_results(
    root: &Rootfs,
    security: Security,
    calls: &[&str],
) -> Option<BTreeMap<String, i32>> {
    let binary = probe(&root.platform)?;
    let mut spec = RunSpec::new(
        root.mount.merged(),
        std::iter::once("/probe").chain(calls.iter().copied()),
    );
    spec.platform = root.platform.clone();
    spec.security = security;
    spec.mounts.push(MountSpec::Bind {
        source: binary,
        target: "/probe".into(),
        readonly: true,
    });
    let (status, out) = run(&spec);
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    Some(
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().parse().expect("an errno")))
            .collect(),
    )
}

const EPERM: i32 = 1;

/// Writing back the value already there fails, for every platform kind.
fn host_sysctls_are_read_only(platform: &str) {
    let Some(root) = Rootfs::new(platform) else {
        return;
    };
    let (status, out) = run(&root.spec(
        "v=$(cat /proc/sys/kernel/core_pattern) || exit 3; \
         echo \"$v\" > /proc/sys/kernel/core_pattern && echo core_pattern-written; \
         echo 0 > /proc/sys/vm/drop_caches && echo vm-written; \
         busybox awk '$5 ~ /^\\/(proc\\/(sys|sysrq-trigger|irq|bus|fs)|sys)$/ { print \"mount\", $5, substr($6, 1, 2) }' \
           /proc/self/mountinfo",
    ));
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert!(
        !out.contains("written"),
        "{platform}: a host setting was written: {out}"
    );
    assert!(out.contains("Read-only file system"), "{platform}: {out}");
    let mounts: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(mounts.get("/proc/sys"), Some(&"ro"), "{platform}: {out}");
    assert_eq!(mounts.get("/sys"), Some(&"ro"), "{platform}: {out}");
    for (path, mode) in &mounts {
        assert_eq!(*mode, "ro", "{platform}: {path} is writable: {out}");
    }
}

#[test]
fn host_sysctls_are_read_only_natively() {
    host_sysctls_are_read_only("linux/amd64");
}

#[test]
fn host_sysctls_are_read_only_under_qemu() {
    host_sysctls_are_read_only("linux/arm64");
}

#[test]
fn masked_paths_read_as_empty() {
    for platform in ["linux/amd64", "linux/arm64"] {
        let Some(root) = Rootfs::new(platform) else {
            return;
        };
        let mut checked = 0;
        for path in MASKED_PATHS {
            if std::fs::symlink_metadata(path).is_err() {
                continue; // not on this kernel: nothing to hide
            }
            let is_dir = Path::new(path).is_dir();
            let script = if is_dir {
                format!("ls -A {path} | wc -l")
            } else {
                format!("cat {path} | wc -c")
            };
            let (status, out) = run(&root.spec(&script));
            assert_eq!(status, ExitStatus::Code(0), "{platform} {path}: {out}");
            assert_eq!(out.trim(), "0", "{platform}: {path} is visible: {out}");
            checked += 1;
        }
        // /proc/keys, /proc/kcore and /proc/timer_list exist on every
        // kernel we build on.
        assert!(checked >= 3, "only {checked} masked paths exist here");
    }
}

#[test]
fn seccomp_blocks_keyctl_natively() {
    let Some(root) = Rootfs::new("linux/amd64") else {
        return;
    };
    let calls = [
        "keyctl",
        "add_key",
        "personality-norandom",
        "personality-query",
        "getpid",
    ];
    let Some(got) = probe_results(&root, Security::Sandbox, &calls) else {
        return;
    };
    assert_eq!(got["keyctl"], EPERM, "{got:?}");
    assert_eq!(got["add_key"], EPERM, "{got:?}");
    assert_eq!(got["personality-norandom"], EPERM, "{got:?}");
    assert_eq!(got["personality-query"], 0, "{got:?}");
    assert_eq!(got["getpid"], 0, "{got:?}");
    let (_, status) = run(&root.spec("grep -E '^Seccomp:' /proc/self/status"));
    assert!(status.contains("Seccomp:\t2"), "{status}");
}

#[test]
fn seccomp_applies_to_emulated_steps() {
    let Some(root) = Rootfs::new("linux/arm64") else {
        return;
    };
    // QEMU implements no keyctl (it answers ENOSYS itself), so the probe
    // asks for what QEMU passes through to the host, which the filter judges.
    let calls = ["personality-norandom", "personality-query", "getpid"];
    let Some(got) = probe_results(&root, Security::Sandbox, &calls) else {
        return;
    };
    assert_eq!(got["personality-norandom"], EPERM, "{got:?}");
    assert_eq!(got["personality-query"], 0, "{got:?}");
    assert_eq!(got["getpid"], 0, "{got:?}");
    let (_, status) = run(&root.spec("grep -E '^Seccomp:' /proc/self/status"));
    assert!(status.contains("Seccomp:\t2"), "{status}");
}

#[test]
fn insecure_lifts_the_sandbox() {
    let Some(root) = Rootfs::new("linux/amd64") else {
        return;
    };
    let Some(got) = probe_results(
        &root,
        Security::Insecure,
        &["keyctl", "personality-norandom"],
    ) else {
        return;
    };
    assert_eq!(got["keyctl"], 0, "{got:?}");
    assert_eq!(got["personality-norandom"], 0, "{got:?}");
    let mut spec = root.spec(
        "grep -E '^Seccomp:' /proc/self/status; \
         grep -c ' /proc/sys ' /proc/self/mountinfo; \
         grep ' /sys ' /proc/self/mountinfo | grep -c ' rw,'; \
         grep -E '^CapEff:' /proc/self/status",
    );
    spec.security = Security::Insecure;
    let (status, out) = run(&spec);
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Seccomp:\t0", "{out}");
    assert_eq!(
        lines[1], "0",
        "/proc/sys is not a separate read-only mount: {out}"
    );
    assert_eq!(lines[2], "1", "/sys is writable: {out}");
    assert!(
        !lines[3].ends_with("00000000a80425fb"),
        "every capability, not Docker's default set: {out}"
    );
}

#[test]
fn ordinary_steps_still_work_as_a_user() {
    let Some(root) = Rootfs::new("linux/amd64") else {
        return;
    };
    let mut spec = root.spec("id -u; mkdir -p /tmp/x && echo ok > /tmp/x/f && cat /tmp/x/f; ls / >/dev/null && echo listed");
    spec.user.uid = 1000;
    spec.user.gid = 1000;
    let (status, out) = run(&spec);
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert_eq!(out, "1000\nok\nlisted\n");
}

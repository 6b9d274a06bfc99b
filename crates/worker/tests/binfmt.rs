//! Emulation detection and registration against this machine's real
//! binfmt_misc. Registration needs root: outside CI the tests that need it
//! print why they skip; under CI they fail instead.

use std::fs;

use kbuild_platform::Platform;
use kbuild_testkit::fixtures::skip_or_fail;
use kbuild_worker::binfmt::{self, Action, Support, BINFMT_MISC, REPORT_PLATFORMS};

#[test]
fn report_covers_the_nine_platforms() {
    let report = binfmt::report();
    let names: Vec<String> = report.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(names, REPORT_PLATFORMS);
    let host = Platform::host();
    for (platform, support) in &report {
        if platform.os == "windows" {
            match support {
                Support::Unsupported { reason, fix } => {
                    assert!(reason.contains("Windows"), "{reason}");
                    assert!(fix.contains("COPY"), "{fix}");
                }
                other => panic!("windows/amd64 must be unsupported, got {other}"),
            }
        } else if platform.architecture == host.architecture && platform.variant.is_none() {
            assert_eq!(support, &Support::Native, "{platform}");
        }
        if let Support::Emulated { flags, .. } = support {
            assert!(flags.contains('F'), "{platform}: only F handlers count");
        }
        if let Support::Unsupported { fix, .. } = support {
            assert!(!fix.is_empty());
        }
    }
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "only meaningful on an amd64 host"
)]
fn linux_386_runs_natively_or_emulated_on_amd64() {
    let s = binfmt::support(&Platform::parse("linux/386").unwrap());
    // Kernels built without IA32 emulation (or booted with
    // ia32_emulation=0) need QEMU for i386; ours have it.
    assert!(
        matches!(s, Support::NativeCompat | Support::Emulated { .. }),
        "linux/386: {s}"
    );
}

#[test]
fn ensure_registers_qemu_with_the_fix_binary_flag() {
    if !rustix::process::geteuid().is_root() {
        skip_or_fail("registering binfmt_misc handlers needs root");
        return;
    }
    let has_qemu = fs::metadata("/usr/bin/qemu-aarch64-static").is_ok();
    if !has_qemu {
        skip_or_fail("qemu-user-static is not installed");
        return;
    }
    // Start s390x from nothing, so registration itself is exercised even
    // when an earlier run left the handlers in place (other test binaries
    // run before or after this one, never at the same time).
    let s390x = format!("{BINFMT_MISC}/qemu-s390x");
    if fs::metadata(&s390x).is_ok() {
        fs::write(&s390x, "-1").unwrap();
    }
    assert!(!binfmt::support(&Platform::parse("linux/s390x").unwrap()).runs());
    for name in [
        "linux/s390x",
        "linux/arm64",
        "linux/arm/v7",
        "linux/ppc64le",
    ] {
        let platform = Platform::parse(name).unwrap();
        if Platform::host().architecture == platform.architecture {
            continue;
        }
        let action = binfmt::ensure(&platform).unwrap_or_else(|e| panic!("{e}"));
        if name == "linux/s390x" {
            assert!(matches!(action, Action::Registered { .. }), "{action}");
        }
        match &action {
            Action::Registered { flags, handler, .. } => {
                assert!(flags.contains('F'), "{action}");
                assert!(action.to_string().contains(handler.as_str()));
            }
            Action::AlreadySupported(Support::Emulated { flags, .. }) => {
                assert!(flags.contains('F'))
            }
            Action::Enabled { .. } => {}
            other => panic!("{name}: {other}"),
        }
        let support = binfmt::support(&platform);
        let Support::Emulated { handler, flags, .. } = &support else {
            panic!("{name} after ensure: {support}");
        };
        let entry = fs::read_to_string(format!("{BINFMT_MISC}/{handler}")).unwrap();
        assert!(entry.starts_with("enabled"), "{entry}");
        assert!(
            entry
                .lines()
                .any(|l| l.starts_with("flags:") && l.contains('F')),
            "{entry}"
        );
        assert!(flags.contains('F'));
        // A second call finds it in place.
        assert_eq!(
            binfmt::ensure(&platform).unwrap(),
            Action::AlreadySupported(support)
        );
    }
}

#[test]
fn ensure_explains_what_cannot_run() {
    let e = binfmt::ensure(&Platform::parse("windows/amd64").unwrap()).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("windows/amd64 cannot run here:"), "{text}");
    let e = binfmt::ensure(&Platform::parse("linux/mips64le").unwrap()).unwrap_err();
    assert!(e.to_string().contains("linux/mips64le"), "{e}");
}

#[test]
fn uname_table_matches_the_data() {
    let table = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/executor_cases/uname.txt"
    ))
    .unwrap();
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut w = line.split_whitespace();
        let (p, want) = (w.next().unwrap(), w.next().unwrap());
        assert_eq!(
            binfmt::uname_machine(&Platform::parse(p).unwrap()),
            Some(want),
            "{p}"
        );
    }
}

//! The busybox fixtures prepared by scripts/fixtures.sh are where and what the
//! testkit says. Skips (or fails under CI=true) when they were not prepared.

use std::fs;
use std::path::Path;
use std::process::Command;

use kbuild_testkit::fixtures::{self, BUSYBOX_APPLETS, BUSYBOX_PLATFORMS};

#[test]
fn platforms_are_found_by_any_of_their_names() {
    // (name, expected directory)
    let cases = [
        ("amd64", "amd64"),
        ("linux/amd64", "amd64"),
        ("armhf", "armv7"),
        ("linux/arm/v7", "armv7"),
        ("armv7", "armv7"),
        ("armel", "armv6"),
        ("linux/arm/v6", "armv6"),
        ("i386", "386"),
        ("linux/386", "386"),
        ("ppc64el", "ppc64le"),
        ("linux/ppc64le", "ppc64le"),
        ("s390x", "s390x"),
        ("arm64", "arm64"),
    ];
    for (name, dir) in cases {
        let found = fixtures::busybox_platform(name).map(|p| p.dir);
        assert_eq!(found, Some(dir), "{name}");
    }
    assert_eq!(fixtures::busybox_platform("riscv64"), None);
    assert_eq!(fixtures::busybox_platform("linux/arm"), None);
}

#[test]
fn platform_directories_are_targetarch_and_targetvariant() {
    for p in BUSYBOX_PLATFORMS {
        let mut parts = p.platform.split('/');
        assert_eq!(parts.next(), Some("linux"));
        let arch = parts.next().unwrap_or_default();
        let variant = parts.next().unwrap_or_default();
        assert_eq!(p.dir, format!("{arch}{variant}"), "{}", p.platform);
    }
}

#[test]
#[should_panic(expected = "no busybox fixture for \"mips\"")]
fn an_unknown_architecture_is_a_test_bug() {
    let _ = fixtures::busybox_binary("mips");
}

#[test]
fn context_has_the_dockerfile_and_every_platform() {
    let Some(context) = fixtures::busybox_context() else {
        return;
    };
    let dockerfile = fs::read_to_string(context.join("Dockerfile")).expect("read Dockerfile");
    assert!(dockerfile.contains("FROM scratch\n"), "{dockerfile}");
    assert!(
        dockerfile.contains("COPY ${TARGETARCH}${TARGETVARIANT}/ /\n"),
        "{dockerfile}"
    );
    for p in BUSYBOX_PLATFORMS {
        let root = context.join(p.dir);
        for applet in BUSYBOX_APPLETS {
            let link = root.join("bin").join(applet);
            let target = fs::read_link(&link)
                .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", link.display()));
            assert_eq!(target, Path::new("busybox"), "{}", link.display());
        }
        let passwd = fs::read_to_string(root.join("etc/passwd")).expect("read etc/passwd");
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        let tmp_mode = fs::metadata(root.join("tmp")).expect("tmp").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&tmp_mode) & 0o7777,
            0o1777
        );
        // every directory has exactly the expected entries
        let mut bin: Vec<String> = fs::read_dir(root.join("bin"))
            .expect("read bin")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        bin.sort();
        let mut expected: Vec<String> = BUSYBOX_APPLETS.iter().map(|a| a.to_string()).collect();
        expected.push("busybox".to_string());
        expected.sort();
        assert_eq!(bin, expected, "{}", p.dir);
    }
}

/// ELF e_machine of each binary matches its platform, so no directory holds
/// another architecture's busybox.
#[test]
fn each_binary_is_built_for_its_platform() {
    // (dir, ELF class, little endian, e_machine)
    let cases: [(&str, u8, bool, u16); 7] = [
        ("amd64", 2, true, 62),
        ("arm64", 2, true, 183),
        ("armv7", 1, true, 40),
        ("armv6", 1, true, 40),
        ("386", 1, true, 3),
        ("ppc64le", 2, true, 21),
        ("s390x", 2, false, 22),
    ];
    for (dir, class, little, machine) in cases {
        let Some(binary) = fixtures::busybox_binary(dir) else {
            return;
        };
        let bytes = fs::read(&binary).expect("read busybox");
        assert_eq!(&bytes[..4], b"\x7fELF", "{}", binary.display());
        assert_eq!(bytes[4], class, "{dir}: ELF class");
        assert_eq!(bytes[5] == 1, little, "{dir}: endianness");
        let e_machine = if little {
            u16::from_le_bytes([bytes[18], bytes[19]])
        } else {
            u16::from_be_bytes([bytes[18], bytes[19]])
        };
        assert_eq!(e_machine, machine, "{dir}: e_machine");
    }
}

#[test]
fn host_busybox_runs() {
    let dir = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        _ => return,
    };
    let Some(binary) = fixtures::busybox_binary(dir) else {
        return;
    };
    let out = Command::new(&binary)
        .args(["sh", "-c", "echo $((6 * 7))"])
        .output()
        .expect("run busybox");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

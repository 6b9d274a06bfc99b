//! Property tests: parsing never panics, and formatting a parsed platform
//! parses back to the same platform.

use kbuild_platform::Platform;
use proptest::prelude::*;

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "linux", "windows", "darwin", "macos", "amd64", "x86_64", "x86-64", "i386", "i686",
            "386", "arm", "armhf", "armel", "arm64", "aarch64", "ppc64le", "s390x", "riscv64",
            "v1", "v2", "v3", "v5", "v6", "v7", "v8", "v8.0", "v8.2", "v9", "v9.1", "7", "8",
            "9.0",
        ])
        .prop_map(str::to_string),
        "[A-Za-z0-9_.-]{1,8}",
    ]
}

proptest! {
    #[test]
    fn parse_never_panics(input in "\\PC{0,40}") {
        let _ = Platform::parse(&input);
        let _ = kbuild_platform::parse_list(&input);
    }

    #[test]
    fn parse_never_panics_on_platform_like_input(input in "[a-zA-Z0-9_./()*, -]{0,40}") {
        let _ = Platform::parse(&input);
        let _ = kbuild_platform::parse_list(&input);
    }

    #[test]
    fn format_parses_back(os in component(), arch in component(), variant in proptest::option::of(component()),
                          version in proptest::option::of("[0-9]{1,2}\\.[0-9]\\.[0-9]{1,5}(\\.[0-9]{1,4})?")) {
        let os_part = match &version {
            Some(v) => format!("{os}({v})"),
            None => os.clone(),
        };
        let spec = match &variant {
            Some(v) => format!("{os_part}/{arch}/{v}"),
            None => format!("{os_part}/{arch}"),
        };
        if let Ok(p) = Platform::parse(&spec) {
            prop_assert_eq!(Platform::parse(&p.format_all()), Ok(p.clone()));
            let mut no_version = p.clone();
            no_version.os_version = None;
            prop_assert_eq!(Platform::parse(&p.to_string()), Ok(no_version.clone()));
            prop_assert_eq!(p.normalized(), p.clone());
            prop_assert!(p.matches(&p) && p.matches_strict(&p));
            prop_assert_eq!(p.best_match([&p]), Some(0));
        }
    }
}

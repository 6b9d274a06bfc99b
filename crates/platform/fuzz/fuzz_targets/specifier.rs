//! Feeds arbitrary specifiers and lists to the platform parser. It returns
//! Ok or Err, never panics; a parsed platform is normalized, matches
//! itself, and its `format_all` text parses back to the same platform.
#![no_main]

use kbuild_platform::{parse_list, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Platform::parse(text) {
        assert_eq!(p.normalized(), p, "{text:?}");
        assert!(p.matches(&p), "{text:?}");
        let again = Platform::parse(&p.format_all());
        assert_eq!(again.as_ref(), Ok(&p), "{text:?} -> {:?}", p.format_all());
    }
    if let Ok(list) = parse_list(text) {
        for p in list {
            assert_eq!(p.normalized(), p, "{text:?}");
        }
    }
});

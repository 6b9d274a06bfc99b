//! Feeds arbitrary `.dockerignore` texts and context paths to the matcher.
//! Parsing returns Ok or Err, never panics; and the walker's pruning rule
//! holds: when `may_contain_included(dir)` says no, every path below `dir`
//! is excluded, so skipping the directory loses nothing.
#![no_main]

use kbuild_ignore::Matcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The patterns, then NUL-separated context paths.
    let mut parts = text.split('\0');
    let patterns = parts.next().unwrap_or_default();
    let Ok(matcher) = Matcher::parse(patterns) else {
        return;
    };
    for path in parts {
        let excluded = matcher.is_excluded(path, false);
        assert_eq!(excluded, matcher.is_excluded(path, true));
        // Every parent directory of `path` that the walker would prune
        // must exclude `path` too. A walker's paths are clean (no empty,
        // `.` or `..` component): `a/..` is not below `a`.
        if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            continue;
        }
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let dir = &path[..end + i];
            end += i + 1;
            if !matcher.may_contain_included(dir) {
                assert!(
                    excluded,
                    "{dir:?} is pruned but {path:?} below it is included by {patterns:?}"
                );
            }
        }
    }
});

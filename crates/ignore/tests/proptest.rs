//! Property tests: no input makes the matcher panic, and the skip answer is
//! never wrong.

use kbuild_ignore::Matcher;
use proptest::prelude::*;

fn pattern_line() -> impl Strategy<Value = String> {
    "!?[ ]?[a-c*?/.!#\\\\\\[\\]^-]{0,8}"
}

fn path() -> impl Strategy<Value = String> {
    "[a-c./]{0,8}"
}

proptest! {
    #[test]
    fn parse_and_match_never_panic(text in "\\PC{0,60}", path in "\\PC{0,20}") {
        if let Ok(m) = Matcher::parse(&text) {
            let _ = m.is_excluded(&path, false);
            let _ = m.may_contain_included(&path);
        }
    }

    #[test]
    fn glob_like_input_never_panics(lines in prop::collection::vec(pattern_line(), 0..6), path in path()) {
        let text = lines.join("\n");
        if let Ok(m) = Matcher::parse(&text) {
            let _ = m.is_excluded(&path, true);
            let _ = m.may_contain_included(&path);
        }
    }

    /// If `may_contain_included(dir)` says no, no path below dir is kept.
    #[test]
    fn skip_is_sound(lines in prop::collection::vec("!?[a-c*?/]{1,6}", 1..5),
                     dir in "[a-c]{1,2}(/[a-c]{1,2})?",
                     rest in "[a-c]{1,2}(/[a-c]{1,2}){0,2}") {
        let text = lines.join("\n");
        if let Ok(m) = Matcher::parse(&text) {
            let child = format!("{dir}/{rest}");
            if !m.may_contain_included(&dir) {
                prop_assert!(m.is_excluded(&child, false), "{text:?}: {child} kept under skipped {dir}");
            }
        }
    }
}

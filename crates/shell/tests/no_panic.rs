//! No input makes the lexer panic or overflow the stack, in any mode, and
//! the three entry points agree with each other.

use std::collections::BTreeMap;

use kbuild_shell::{ErrorKind, Lexer};
use proptest::prelude::*;

fn env() -> BTreeMap<String, String> {
    [
        ("A", "foobarbaz"),
        ("EMPTY", ""),
        ("SPACES", "  a b  "),
        ("GLOB", "*?\\"),
        ("DOLLAR", "$0$$${0}"),
        ("K", "한국어"),
        ("NL", "a\nb"),
        ("1", "one"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Characters that steer the lexer, plus some ordinary and unusual ones.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec![
            '$', '{', '}', ':', '-', '+', '?', '#', '%', '/', '*', '\\', '`', '\'', '"',
            '=', ' ', '\t', '\n', '[', ']', '!', '@', '0', '1', 'A', 'K', 'x', '_',
            '한', '\u{feff}', '\u{a0}', '\u{0}', '\u{301}', '²',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(tricky_char(), 0..40).prop_map(|cs| cs.into_iter().collect()),
        1 => any::<String>(),
    ]
}

fn lexer() -> impl Strategy<Value = Lexer> {
    (prop::sample::select(vec!['\\', '`']), any::<[bool; 4]>()).prop_map(
        |(escape, [quotes, escapes, unset, skip])| {
            Lexer::new(escape)
                .with_raw_quotes(quotes)
                .with_raw_escapes(escapes)
                .with_skip_unset_env(unset)
                .with_skip_process_quotes(skip)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn never_panics_and_modes_agree(word in tricky_word(), lexer in lexer()) {
        let env = env();
        let single = lexer.process_word(&word, &env);
        let with_matches = lexer.process_word_with_matches(&word, &env);
        let fields = lexer.process_words(&word, &env);
        match (&single, &with_matches, &fields) {
            (Ok(a), Ok((b, matches)), Ok(fields)) => {
                prop_assert_eq!(a, b);
                prop_assert!(fields.iter().all(|f| !f.is_empty()));
                prop_assert!(matches.used.iter().all(|name| env.contains_key(name)));
                prop_assert!(matches.unmatched.iter().all(|name| !env.contains_key(name)));
            }
            (Err(a), Err(b), Err(c)) => {
                prop_assert_eq!(a, b);
                prop_assert_eq!(a, c);
                prop_assert_eq!(a.word(), word.as_str());
                prop_assert!(!a.to_string().contains('\n'));
            }
            _ => prop_assert!(false, "modes disagree: {:?} {:?} {:?}", single, with_matches, fields),
        }
    }

    #[test]
    fn plain_text_is_unchanged(word in "[a-zA-Z0-9_./:=,@+-]{0,30}") {
        let lexer = Lexer::default();
        prop_assert_eq!(lexer.process_word(&word, &env()).unwrap(), word.clone());
        let expected: Vec<String> = if word.is_empty() { vec![] } else { vec![word.clone()] };
        prop_assert_eq!(lexer.process_words(&word, &env()).unwrap(), expected);
    }

    #[test]
    fn single_quotes_keep_everything_but_quotes(body in "[^']{0,30}") {
        let word = format!("'{body}'");
        prop_assert_eq!(Lexer::default().process_word(&word, &env()).unwrap(), body.clone());
        prop_assert_eq!(Lexer::new('`').process_word(&word, &env()).unwrap(), body);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let lexer = Lexer::default();
    let env = env();
    for opener in ["${X:-", "\"${X:-", "${X#${X:-", "${X/${X:-a}/"] {
        let nested = |depth: usize| opener.repeat(depth);
        let shallow = format!("{}x", nested(50));
        // Unterminated: the error must be reported, whatever it is.
        assert!(lexer.process_word(&shallow, &env).is_err());
        let deep = format!("{}x", nested(100_000));
        let err = lexer.process_word(&deep, &env).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::TooDeep(_)),
            "{opener}: {err}"
        );
    }
    let ok = format!("{}x{}", "${X:-".repeat(190), "}".repeat(190));
    assert_eq!(lexer.process_word(&ok, &env).unwrap(), "x");
    let quoted = format!("{}x{}", "\"${X:-".repeat(90), "}\"".repeat(90));
    assert_eq!(lexer.process_word(&quoted, &env).unwrap(), "x");
}

#[test]
fn long_inputs_are_linear_enough() {
    let lexer = Lexer::default();
    let env = BTreeMap::from([
        ("V".to_string(), "ab".repeat(5_000)),
        ("W".to_string(), "ab".repeat(200)),
    ]);
    // 802,000 bytes: just under the 1 MiB bound on a word.
    let word = "$W ".repeat(2_000);
    let started = std::time::Instant::now();
    assert_eq!(lexer.process_words(&word, &env).unwrap().len(), 2_000);
    let trimmed = lexer.process_word("${V%%b*a*b}", &env).unwrap();
    assert_eq!(trimmed, "a");
    let replaced = lexer.process_word("${V//a*b/-}", &env).unwrap();
    assert_eq!(replaced, "-");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

//! The public API as other crates use it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kbuild_shell::{Env, ErrorKind, Lexer, Matches, PatternError};

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_env_kind_works_and_lists_take_the_last_value() {
    let lexer = Lexer::new('\\');
    let list = pairs(&[("V", "first"), ("V", "last")]);
    assert_eq!(lexer.process_word("$V", &list).unwrap(), "last");
    assert_eq!(lexer.process_word("$V", list.as_slice()).unwrap(), "last");
    let map: BTreeMap<String, String> = list.iter().cloned().collect();
    assert_eq!(lexer.process_word("$V", &map).unwrap(), "last");
    let hash: HashMap<String, String> = list.iter().cloned().collect();
    assert_eq!(lexer.process_word("$V", &hash).unwrap(), "last");
    let dynamic: &dyn Env = &map;
    assert_eq!(lexer.process_word("${V}x", dynamic).unwrap(), "lastx");
    assert_eq!(
        lexer.process_words("$V $V", &dynamic).unwrap(),
        ["last", "last"]
    );
}

#[test]
fn a_custom_env_sees_every_lookup() {
    struct Upper;
    impl Env for Upper {
        fn get(&self, name: &str) -> Option<String> {
            name.starts_with('U').then(|| name.to_lowercase())
        }
    }
    let (word, matches) = Lexer::default()
        .process_word_with_matches("$UA-${UB:-x}-${no-y}", &Upper)
        .unwrap();
    assert_eq!(word, "ua-ub-y");
    assert_eq!(
        matches,
        Matches {
            used: BTreeSet::from(["UA".to_string(), "UB".to_string()]),
            unmatched: BTreeSet::from(["no".to_string()]),
        }
    );
}

#[test]
fn errors_carry_the_word_and_the_kind() {
    let env = pairs(&[("EMPTY", "")]);
    let err = Lexer::default()
        .process_word("a ${EMPTY:?must be set}", &env)
        .unwrap_err();
    assert_eq!(err.word(), "a ${EMPTY:?must be set}");
    assert_eq!(
        err.kind(),
        &ErrorKind::Required {
            name: "EMPTY".into(),
            message: "must be set".into()
        }
    );
    assert_eq!(
        err.to_string(),
        r#"failed to process "a ${EMPTY:?must be set}": EMPTY: must be set"#
    );

    let err = Lexer::default().process_word("${v:=x}", &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"failed to process "${v:=x}": unsupported modifier (:=) in substitution"#
    );

    let err = Lexer::default().process_word(r"${v#\q}", &env).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::InvalidPattern {
            pattern: r"\q".into(),
            reason: PatternError::InvalidEscape('q')
        }
    );
}

#[test]
fn messages_stay_on_one_line() {
    let env = pairs(&[("NL", "a\nb")]);
    let err = Lexer::default().process_word("${X?$NL}", &env).unwrap_err();
    assert_eq!(err.to_string(), r#"failed to process "${X?$NL}": X: a\nb"#);
    let err = Lexer::default().process_word("${X\n}", &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"failed to process "${X\n}": unsupported modifier (\n) in substitution"#
    );
}

#[test]
fn lexer_options_are_reported_and_independent() {
    let lexer = Lexer::new('`');
    assert_eq!(lexer.escape(), '`');
    assert_eq!(Lexer::default(), Lexer::new('\\'));
    let raw = lexer.with_raw_quotes(true);
    assert_ne!(raw, lexer);
    let env = pairs(&[]);
    assert_eq!(raw.process_word("'a'", &env).unwrap(), "'a'");
    assert_eq!(lexer.process_word("'a'", &env).unwrap(), "a");
    assert_eq!(raw.with_raw_quotes(false), lexer);
}

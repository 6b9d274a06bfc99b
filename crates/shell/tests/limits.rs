//! The bound on expanded words: inputs of the shape the fuzzer found
//! ("billion laughs" words: nested `${v//p/r}`, empty patterns, `$0`
//! templates) fail with `TooLong` quickly instead of allocating gigabytes.

use std::time::{Duration, Instant};

use kbuild_shell::{ErrorKind, Lexer, MAX_WORD_LEN};

fn env(items: &[(&str, String)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Every entry point fails with `TooLong { limit }`, and fast.
fn assert_too_long(lexer: Lexer, word: &str, env: &[(String, String)]) {
    let started = Instant::now();
    let limit = lexer.max_len();
    let single = lexer.process_word(word, env).unwrap_err();
    assert_eq!(single.kind(), &ErrorKind::TooLong { limit }, "{word}");
    let matches = lexer.process_word_with_matches(word, env).unwrap_err();
    assert_eq!(matches, single);
    let fields = lexer.process_words(word, env).unwrap_err();
    assert_eq!(fields, single);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{word} took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_default_limit_is_one_mebibyte() {
    assert_eq!(MAX_WORD_LEN, 1 << 20);
    assert_eq!(Lexer::default().max_len(), MAX_WORD_LEN);
    let err = Lexer::default()
        .process_word(
            "${A//a/${A//a/${A//a/${A//a/${A//a/aaaaaaaaaaaaaaaaaaaa}}}}}",
            &env(&[("A", "a".repeat(20))]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "failed to process \"${A//a/${A//a/${A//a/${A//a/${A//a/aaaaaaaaaaaaaaaaaaaa}}}}}\": \
         the expansion is longer than 1048576 bytes, the limit for one word"
    );
}

#[test]
fn nested_replacements_stop_at_the_limit() {
    // 400 -> 8,000 -> 160,000 -> 3,200,000 bytes: the fourth level passes
    // 1 MiB; the fifth would ask for 64 MB, the sixth for 1.28 GB.
    let a = env(&[("A", "a".repeat(20))]);
    let word = "${A//a/${A//a/${A//a/${A//a/${A//a/aaaaaaaaaaaaaaaaaaaa}}}}}";
    assert_too_long(Lexer::default(), word, &a);
    let deeper = "${A//a/".repeat(12) + "aaaaaaaaaaaaaaaaaaaa" + &"}".repeat(12);
    assert_too_long(Lexer::default(), &deeper, &a);
    // Three levels fit: 160,000 bytes.
    let fits = "${A//a/${A//a/${A//a/aaaaaaaaaaaaaaaaaaaa}}}";
    assert_eq!(
        Lexer::default().process_word(fits, &a).unwrap().len(),
        160_000
    );
}

#[test]
fn empty_patterns_match_between_every_character() {
    // An empty pattern matches before every character and at the end.
    let a = env(&[("A", "x".repeat(30))]);
    let word = "${A///${A///${A///${A///${A///yyyyyyyyyyyyyyyyyyyyyyyyyyyy}}}}}";
    assert_too_long(Lexer::default(), word, &a);
    assert_eq!(
        Lexer::default()
            .process_word("${A///-}", &env(&[("A", "ab".into())]))
            .unwrap(),
        "-a-b-"
    );
}

#[test]
fn match_templates_stop_at_the_limit() {
    // A `$0` that a variable leaves in the replacement of `${v//p/r}` is
    // the match: `*` matches the whole value, so every `$0` copies it.
    let a = env(&[
        ("A", "z".repeat(100_000)),
        ("R", "$0".repeat(20)),
        ("T", "$0$0".into()),
    ]);
    assert_too_long(Lexer::default(), "${A//*/$R}", &a);
    let nested = "${A//*/${A//*/$T$T$T}$T$T$T$T$T}";
    assert_too_long(Lexer::default(), nested, &a);
    assert_eq!(
        Lexer::default()
            .process_word("${A//*/$T}", &a)
            .unwrap()
            .len(),
        200_000
    );
}

#[test]
fn values_repeated_in_one_word_count() {
    let a = env(&[("A", "v".repeat(300_000))]);
    assert_too_long(Lexer::default(), "$A$A$A$A", &a);
    assert_too_long(Lexer::default(), "\"$A$A$A$A\"", &a);
    assert_too_long(Lexer::default(), "${A}-${A:+$A$A$A}", &a);
    assert_too_long(Lexer::default(), "${unset:-$A$A$A$A}", &a);
    // With unset variables kept as written, the kept text counts too.
    let skip = Lexer::default().with_skip_unset_env(true);
    assert_too_long(skip, "${unset:-$A$A$A$A}", &a);
    assert_too_long(skip, "${unset//$A$A/$A$A}", &a);
    assert_eq!(
        Lexer::default().process_word("$A$A$A", &a).unwrap().len(),
        900_000
    );
}

#[test]
fn the_limit_is_exact_and_configurable() {
    let lexer = Lexer::default().with_max_len(6);
    let v = env(&[("V", "abc".into()), ("W", "abcd".into())]);
    assert_eq!(lexer.process_word("$V$V", &v).unwrap(), "abcabc");
    assert_too_long(lexer, "$V$V-", &v);
    assert_too_long(lexer, "$V$W", &v);
    assert_too_long(lexer, "\"$V\"'abcd'", &v);
    assert_too_long(lexer, "abcdefg", &v);
    assert_too_long(lexer, "${V//b/bbbbb}", &v);
    assert_too_long(lexer, "${V/b/bbbbb}", &v);
    assert_eq!(lexer.process_word("${V/b/bbbb}", &v).unwrap(), "abbbbc");
    assert_eq!(lexer.process_words("$V x", &v).unwrap(), ["abc", "x"]);
    // Multi-byte characters count in bytes.
    assert_eq!(lexer.process_word("ééé", &v).unwrap(), "ééé");
    assert_too_long(lexer, "éééé", &v);
    assert_too_long(lexer, "\\éééé", &v);
}

#[test]
fn costly_patterns_are_refused() {
    // 401 pattern parts against 100,000 characters: 40M states to explore.
    let a = env(&[("A", "a".repeat(100_000))]);
    let word = format!("${{A//{}b/x}}", "*a".repeat(200));
    let err = Lexer::default().process_word(&word, &a).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::PatternTooCostly {
            parts: 401,
            chars: 100_000
        }
    );
    let trim = format!("${{A##{}b}}", "*a".repeat(200));
    assert!(matches!(
        Lexer::default().process_word(&trim, &a).unwrap_err().kind(),
        ErrorKind::PatternTooCostly { .. }
    ));
    let suffix = format!("${{A%{}b}}", "*a".repeat(200));
    assert!(matches!(
        Lexer::default()
            .process_word(&suffix, &a)
            .unwrap_err()
            .kind(),
        ErrorKind::PatternTooCostly { .. }
    ));
    // A small pattern on the same value is fine.
    assert_eq!(Lexer::default().process_word("${A%%a*}", &a).unwrap(), "");
}

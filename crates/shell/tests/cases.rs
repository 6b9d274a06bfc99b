//! Runs the expansion case table `tests/cases.json`: one case per line, each
//! checked in every processing mode that applies.
//!
//! Fields: `in` (the word); exactly one of `out` (the `process_word`
//! result), `words` (the `process_words` fields) or `err` (the error kind's
//! text, which every mode must report); optional `env` (replaces the default
//! environment `PWD=/home SHELL=bash KOREAN=한국어 NULL=`), `esc` (escape
//! character, default `\`), `opts` (lexer options), `used`/`unmatched` (the
//! expected `Matches`; when one is given both are checked) and `note`.

use std::collections::{BTreeMap, BTreeSet};

use kbuild_shell::{Lexer, Matches};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(rename = "in")]
    input: String,
    out: Option<String>,
    words: Option<Vec<String>>,
    err: Option<String>,
    env: Option<BTreeMap<String, String>>,
    esc: Option<char>,
    #[serde(default)]
    opts: Vec<String>,
    used: Option<BTreeSet<String>>,
    unmatched: Option<BTreeSet<String>>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn default_env() -> BTreeMap<String, String> {
    [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn lexer_for(case: &Case) -> Result<Lexer, String> {
    let mut lexer = Lexer::new(case.esc.unwrap_or('\\'));
    for opt in &case.opts {
        lexer = match opt.as_str() {
            "raw_quotes" => lexer.with_raw_quotes(true),
            "raw_escapes" => lexer.with_raw_escapes(true),
            "skip_unset_env" => lexer.with_skip_unset_env(true),
            "skip_process_quotes" => lexer.with_skip_process_quotes(true),
            other => return Err(format!("unknown option {other:?}")),
        };
    }
    Ok(lexer)
}

/// Checks one case; the error says what differed.
fn check(case: &Case) -> Result<(), String> {
    let lexer = lexer_for(case)?;
    let env = case.env.clone().unwrap_or_else(default_env);
    let word = lexer.process_word(&case.input, &env);
    let with_matches = lexer.process_word_with_matches(&case.input, &env);
    let words = lexer.process_words(&case.input, &env);
    let expectations = [case.out.is_some(), case.words.is_some(), case.err.is_some()];
    if expectations.iter().filter(|&&e| e).count() != 1 {
        return Err("needs exactly one of out, words, err".into());
    }
    if let Some(kind) = &case.err {
        let full = format!("failed to process {:?}: {kind}", case.input);
        for (mode, outcome) in [
            ("process_word", word.as_ref().map(|w| format!("{w:?}"))),
            (
                "process_word_with_matches",
                with_matches.as_ref().map(|(w, _)| format!("{w:?}")),
            ),
            ("process_words", words.as_ref().map(|w| format!("{w:?}"))),
        ] {
            match outcome {
                Ok(got) => return Err(format!("{mode}: expected error {kind:?}, got {got}")),
                Err(err) => {
                    if err.kind().to_string() != *kind || err.to_string() != full {
                        return Err(format!(
                            "{mode}: expected error {full:?}, got {:?}",
                            err.to_string()
                        ));
                    }
                }
            }
        }
        return Ok(());
    }
    let word = word.map_err(|e| format!("process_word failed: {e}"))?;
    let (matched_word, matches) =
        with_matches.map_err(|e| format!("process_word_with_matches failed: {e}"))?;
    let words = words.map_err(|e| format!("process_words failed: {e}"))?;
    if word != matched_word {
        return Err(format!(
            "process_word {word:?} != process_word_with_matches {matched_word:?}"
        ));
    }
    if let Some(out) = &case.out {
        if word != *out {
            return Err(format!("process_word: expected {out:?}, got {word:?}"));
        }
    }
    if let Some(expected) = &case.words {
        if words != *expected {
            return Err(format!(
                "process_words: expected {expected:?}, got {words:?}"
            ));
        }
    }
    if case.used.is_some() || case.unmatched.is_some() {
        let expected = Matches {
            used: case.used.clone().unwrap_or_default(),
            unmatched: case.unmatched.clone().unwrap_or_default(),
        };
        if matches != expected {
            return Err(format!("matches: expected {expected:?}, got {matches:?}"));
        }
    }
    Ok(())
}

#[test]
fn expansion_case_table() {
    let text = include_str!("cases.json");
    let cases: Vec<Case> = serde_json::from_str(text).expect("tests/cases.json is valid");
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if let Err(why) = check(case) {
            // Line 1 is the opening bracket.
            failures.push(format!("line {}: {:?}: {why}", index + 2, case.input));
        }
    }
    let errors = cases.iter().filter(|c| c.err.is_some()).count();
    assert!(cases.len() >= 220, "only {} cases", cases.len());
    assert!(errors >= 30, "only {errors} error cases");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

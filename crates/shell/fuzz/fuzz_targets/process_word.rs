//! Feeds arbitrary words, lexer options and environments to every entry
//! point; the lexer must return Ok or Err, never panic, and its modes must
//! agree.
#![no_main]

use kbuild_shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // The word, then NUL-separated NAME=value pairs for the environment.
    let mut parts = text.split('\0');
    let word = parts.next().unwrap_or_default();
    let env: Vec<(String, String)> = parts
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lexer = Lexer::new(if flags & 1 == 0 { '\\' } else { '`' })
        .with_raw_quotes(flags & 2 != 0)
        .with_raw_escapes(flags & 4 != 0)
        .with_skip_unset_env(flags & 8 != 0)
        .with_skip_process_quotes(flags & 16 != 0);
    let single = lexer.process_word(word, &env);
    let with_matches = lexer.process_word_with_matches(word, &env);
    let fields = lexer.process_words(word, &env);
    match (single, with_matches, fields) {
        (Ok(a), Ok((b, _)), Ok(fields)) => {
            assert_eq!(a, b);
            assert!(fields.iter().all(|f| !f.is_empty()));
        }
        (Err(a), Err(b), Err(c)) => {
            assert_eq!(a, b);
            assert_eq!(a, c);
        }
        other => panic!("modes disagree: {other:?}"),
    }
});

//! Word splitting used while building nodes: BuildKit's `parseWords`
//! (quote-aware, quotes kept), builder-flag extraction and the
//! whitespace/JSON argument shapes.

/// Go's `unicode.IsSpace`; identical to Unicode White_Space.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `reWhitespace` class: `[\t\v\f\r ]`.
pub(crate) fn is_re_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits on runs of `[\t\v\f\r ]` like Go's `regexp.Split(s, n)` (n < 0: all).
pub(crate) fn split_re_ws(s: &str, n: isize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if n > 0 && out.len() as isize == n - 1 {
            out.push(rest.to_string());
            return out;
        }
        match rest.find(is_re_ws) {
            Some(start) => {
                let after = &rest[start..];
                let len = after.find(|c| !is_re_ws(c)).unwrap_or(after.len());
                out.push(rest[..start].to_string());
                rest = &after[len..];
            }
            None => {
                out.push(rest.to_string());
                return out;
            }
        }
    }
}

/// Splits `rest` into words on whitespace, honouring quotes and the escape
/// character but keeping both in the words (the shell lexer removes them).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut chars: Vec<char> = Vec::with_capacity(rest.len());
    chars.extend(rest.chars());
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// Takes the leading `--flag[=value]` words off an instruction's argument
/// text. Returns the remaining text and the flags (quotes and backslash
/// escapes inside flags removed). A bare `--` ends the flags and is dropped.
pub(crate) fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    // Most instructions have no flags: no need to scan character by character.
    let start = line.trim_start_matches(is_space);
    if !start.starts_with("--") {
        return (start.to_string(), Vec::new());
    }
    match simple_builder_flags(start) {
        Some(split) => split,
        None => quoted_builder_flags(line),
    }
}

/// [`extract_builder_flags`] character by character: quotes and escapes.
fn quoted_builder_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut chars: Vec<(usize, char)> = Vec::with_capacity(line.len());
    chars.extend(line.char_indices());
    let byte_at = |i: usize| chars.get(i).map(|c| c.0).unwrap_or(line.len());
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos].1 };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            if ch != '-' || pos + 1 == chars.len() || chars[pos + 1].1 != '-' {
                return (line[byte_at(pos)..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[byte_at(pos)..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == '\\' {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos].1;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == '\\' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos].1;
        }
        word.push(ch);
        pos += 1;
    }
    (String::new(), words)
}

/// [`extract_builder_flags`] for a line whose flags have no quote or
/// escape character (`None` otherwise): each flag is the text up to the next
/// space. `start` has no leading space.
fn simple_builder_flags(start: &str) -> Option<(String, Vec<String>)> {
    let mut words = Vec::new();
    let mut rest = start;
    loop {
        if !rest.starts_with("--") {
            return Some((rest.to_string(), words));
        }
        let end = rest.find(is_space).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.contains(['\'', '"', '\\']) {
            return None;
        }
        if word == "--" {
            // The end of the flags: the rest is the arguments, as written.
            return Some((rest[end..].to_string(), words));
        }
        words.push(word.to_string());
        rest = rest[end..].trim_start_matches(is_space);
    }
}

/// Outcome of trying the JSON exec form.
pub(crate) enum JsonArgs {
    /// A JSON array of strings.
    Array(Vec<String>),
    /// Not a JSON array (fall back to the non-JSON shape).
    Invalid,
    /// A JSON array with a non-string element: an error in BuildKit.
    NotStrings,
}

pub(crate) fn parse_json(rest: &str) -> JsonArgs {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return JsonArgs::Invalid;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(rest) {
        Err(_) => JsonArgs::Invalid,
        Ok(values) => {
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return JsonArgs::NotStrings,
                }
            }
            JsonArgs::Array(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(parse_words("a  b\tc", '\\'), vec!["a", "b", "c"]);
        assert_eq!(
            parse_words(r#"k="a b" x='c d'"#, '\\'),
            vec![r#"k="a b""#, "x='c d'"]
        );
        assert_eq!(parse_words(r"a\ b c", '\\'), vec![r"a\ b", "c"]);
        assert_eq!(parse_words(r#""a\"b" c"#, '\\'), vec![r#""a\"b""#, "c"]);
        assert_eq!(parse_words(r"'a\' b", '\\'), vec![r"'a\'", "b"]);
        assert_eq!(parse_words("a` b", '`'), vec!["a` b"]);
        assert_eq!(parse_words("k=\"\"", '\\'), vec!["k=\"\""]);
        assert_eq!(parse_words("\"\"", '\\'), vec!["\"\""]);
        assert_eq!(parse_words("end\\", '\\'), vec!["end"]);
        assert!(parse_words("   ", '\\').is_empty());
    }

    #[test]
    fn flags_are_taken_off_the_front() {
        assert_eq!(
            extract_builder_flags("--from=a --chown=\"1 2\" src dst"),
            (
                "src dst".to_string(),
                vec!["--from=a".to_string(), "--chown=1 2".to_string()]
            )
        );
        assert_eq!(
            extract_builder_flags("--link"),
            (String::new(), vec!["--link".to_string()])
        );
        assert_eq!(
            extract_builder_flags("-- --not-a-flag x"),
            (" --not-a-flag x".to_string(), vec![])
        );
        assert_eq!(extract_builder_flags("-x"), ("-x".to_string(), vec![]));
        assert_eq!(
            extract_builder_flags("--a=\\\"b"),
            (String::new(), vec!["--a=\"b".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--a='' x"),
            ("x".to_string(), vec!["--a=".to_string()])
        );
    }

    #[test]
    fn simple_flags_split_as_the_general_scanner_does() {
        let lines = [
            "--from=a --chown=1:2 src dst",
            "--a=b  --c=d \t x  y ",
            "--a=b\t--",
            "--a=b -- --x y",
            "--a=b -x",
            "--a=b --",
            "--a=b",
            "--mount=type=cache,target=/x make -j4",
            "--a=b\u{a0}--c x",
        ];
        for line in lines {
            let simple = simple_builder_flags(line);
            assert!(simple.is_some(), "{line:?} has no quote");
            assert_eq!(simple.unwrap(), quoted_builder_flags(line), "{line:?}");
        }
        for line in ["--a=\"b c\" x", "--a='b' x", "--a=\\ x", "--a=b --c=\"\""] {
            assert_eq!(simple_builder_flags(line), None, "{line:?}");
        }
    }

    #[test]
    fn regexp_split() {
        assert_eq!(split_re_ws("a b\t\tc", -1), vec!["a", "b", "c"]);
        assert_eq!(split_re_ws("k  v w", 2), vec!["k", "v w"]);
        assert_eq!(split_re_ws("k", 2), vec!["k"]);
    }

    #[test]
    fn json_forms() {
        assert!(matches!(parse_json(r#" ["a", "b"] "#), JsonArgs::Array(v) if v == ["a", "b"]));
        assert!(matches!(parse_json(r#"["a", 1]"#), JsonArgs::NotStrings));
        assert!(matches!(parse_json(r#"["a" "b"]"#), JsonArgs::Invalid));
        assert!(matches!(parse_json("echo [x]"), JsonArgs::Invalid));
        assert!(matches!(parse_json("[]"), JsonArgs::Array(v) if v.is_empty()));
    }
}

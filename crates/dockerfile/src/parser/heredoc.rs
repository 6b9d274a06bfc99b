//! Heredoc detection on RUN/COPY/ADD lines (`<<EOF`, `<<-EOF`, `<<"EOF"`,
//! `3<<EOF`), following BuildKit: the line is split into shell words with
//! `\` as escape (whatever `# escape=` says), and each word of the form
//! `[n]<<[-]NAME` starts a heredoc.

use super::words::is_space;
use super::Heredoc;

/// Splits shell words the way BuildKit's lexer does for heredoc detection:
/// quotes and escapes kept when `raw`, removed otherwise; variables are left
/// as written (`SkipUnsetEnv` with an empty environment); `<<` swallows the
/// blanks after it so `<< EOF` stays one word; empty words are dropped.
pub(crate) fn lex_words(s: &str, raw: bool) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_space(c) {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            i += 1;
            continue;
        }
        match c {
            '\'' => {
                if raw {
                    word.push('\'');
                }
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    if raw {
                        word.push('\'');
                    }
                    i += 1;
                }
            }
            '"' => {
                if raw {
                    word.push('"');
                }
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        let next = chars[i + 1];
                        // Inside double quotes only these are escapes.
                        if raw || !matches!(next, '"' | '\\' | '$' | '`') {
                            word.push('\\');
                        }
                        word.push(next);
                        i += 2;
                    } else {
                        word.push(chars[i]);
                        i += 1;
                    }
                }
                if i < chars.len() {
                    if raw {
                        word.push('"');
                    }
                    i += 1;
                }
            }
            '\\' => {
                if raw {
                    word.push('\\');
                }
                if let Some(next) = chars.get(i + 1) {
                    word.push(*next);
                }
                i += 2;
            }
            '<' if chars.get(i + 1) == Some(&'<') => {
                word.push_str("<<");
                i += 2;
                while i < chars.len() && matches!(chars[i], ' ' | '\t') {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            ch => {
                word.push(ch);
                i += 1;
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Parses one word as a heredoc start: `^(\d*)<<(-?)\s*([^<]*)$` with a
/// non-empty, single-word name. `Err` holds BuildKit's message.
pub(crate) fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, after) = word.split_at(digits);
    let Some(after) = after.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, after),
    };
    let rest = rest.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let words = lex_words(rest, false);
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = lex_words(rest, true);
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand,
        chomp,
        file_descriptor: fd.parse().unwrap_or(0),
    }))
}

/// All heredocs started on an instruction line, in order.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut docs = Vec::new();
    for word in lex_words(line, true) {
        if let Some(h) = parse_heredoc(&word)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

/// Removes leading tabs from every line (for `<<-`).
pub(crate) fn chomp_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<(String, bool, bool, u32)> {
        heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| (h.name, h.expand, h.chomp, h.file_descriptor))
            .collect()
    }

    #[test]
    fn detects_heredoc_words() {
        assert_eq!(names("RUN <<EOF"), vec![("EOF".into(), true, false, 0)]);
        assert_eq!(
            names("RUN <<-EOT bash"),
            vec![("EOT".into(), true, true, 0)]
        );
        assert_eq!(
            names("COPY <<\"EOF\" /x"),
            vec![("EOF".into(), false, false, 0)]
        );
        assert_eq!(
            names("COPY <<'EOF' /x"),
            vec![("EOF".into(), false, false, 0)]
        );
        assert_eq!(
            names("RUN 3<<EOF cat /dev/fd/3"),
            vec![("EOF".into(), true, false, 3)]
        );
        assert_eq!(
            names("RUN <<A cat && <<B cat"),
            vec![("A".into(), true, false, 0), ("B".into(), true, false, 0)]
        );
        assert_eq!(names("RUN E\"O\"F"), vec![]);
        assert_eq!(
            names("RUN cat << EOF"),
            vec![("EOF".into(), true, false, 0)]
        );
        assert_eq!(names("RUN <<$EOF"), vec![("$EOF".into(), true, false, 0)]);
        assert_eq!(names("RUN <<eo\\'f"), vec![("eo'f".into(), true, false, 0)]);
        assert_eq!(names("RUN <<eo'f'"), vec![("eof".into(), false, false, 0)]);
        assert_eq!(
            names("RUN <<'one two'"),
            vec![("one two".into(), false, false, 0)]
        );
        assert_eq!(
            names("RUN <<E\"O\"F"),
            vec![("EOF".into(), false, false, 0)]
        );
    }

    #[test]
    fn ignores_non_heredocs() {
        assert!(names("RUN echo \"<<EOF\"").is_empty());
        assert!(names("RUN echo 'a <<b'").is_empty());
        assert!(names("RUN cat <<").is_empty());
        assert!(names("RUN cat <<<word").is_empty());
        assert!(names("RUN cat <<''").is_empty());
        assert!(names("RUN cat <<- EOF").is_empty());
        assert!(names("RUN echo \\<<EOF").is_empty());
    }

    #[test]
    fn lexing() {
        assert_eq!(
            lex_words("a 'b c' \"d\\\"e\"", false),
            vec!["a", "b c", "d\"e"]
        );
        assert_eq!(
            lex_words("a 'b c' \"d\\\"e\"", true),
            vec!["a", "'b c'", "\"d\\\"e\""]
        );
        assert_eq!(
            lex_words("x$HOME ${A:-b}y", false),
            vec!["x$HOME", "${A:-b}y"]
        );
        assert!(lex_words("''", false).is_empty());
        assert_eq!(
            lex_words("cat <<  EOF x", true),
            vec!["cat", "<<  EOF", "x"]
        );
    }

    #[test]
    fn chomp() {
        assert_eq!(chomp_content("\t\ta\n\tb\n c\n"), "a\nb\n c\n");
    }
}

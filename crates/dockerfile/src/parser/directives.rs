//! Parser directives: `# name=value` lines before anything else.

use super::{Directive, Error, ErrorKind, SourceRange};

const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

/// Go regexp `\s`: `[\t\n\f\r ]`.
fn is_go_ws(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// `#`, any Unicode whitespace, then `([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
pub(crate) fn match_directive(line: &str) -> Option<(String, String)> {
    let rest = line
        .strip_prefix('#')?
        .trim_start_matches(char::is_whitespace);
    let name_len = rest
        .char_indices()
        .take_while(|(i, c)| {
            if *i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric()
            }
        })
        .count();
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let rest = rest.trim_start_matches(is_go_ws).strip_prefix('=')?;
    if rest.contains('\n') {
        return None;
    }
    let value = rest.trim_start_matches(is_go_ws).trim_end_matches(is_go_ws);
    let value = if value.is_empty() {
        // The lazy `(.+?)` still needs one character: it takes the last
        // whitespace character the greedy `\s*` gives back.
        let last = rest.chars().last()?;
        last.to_string()
    } else {
        value.to_string()
    };
    Some((name.to_string(), value))
}

/// State of directive detection across lines.
pub(crate) struct DirectiveParser {
    pub(crate) escape: char,
    pub(crate) found: Vec<Directive>,
    done: bool,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        DirectiveParser {
            escape: '\\',
            found: Vec::new(),
            done: false,
        }
    }
}

impl DirectiveParser {
    /// Looks at one processed line. The first line that is not a known
    /// directive ends detection for the rest of the file.
    pub(crate) fn parse_line(&mut self, line: &str, line_no: usize) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = match_directive(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) {
            self.done = true;
            return Ok(());
        }
        let at = Some(SourceRange {
            start_line: line_no,
            end_line: line_no,
        });
        if self.found.iter().any(|d| d.name == name) {
            return Err(Error::new(
                ErrorKind::Syntax,
                at,
                format!("only one {name} parser directive can be used"),
            ));
        }
        if name == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(Error::new(
                        ErrorKind::Syntax,
                        at,
                        format!("invalid escape token '{value}' does not match ` or \\"),
                    ))
                }
            };
        }
        self.found.push(Directive {
            name,
            value,
            line: line_no,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_regex() {
        let m = |s: &str| match_directive(s);
        assert_eq!(m("# escape=`"), Some(("escape".into(), "`".into())));
        assert_eq!(m("#escape =  ` "), Some(("escape".into(), "`".into())));
        assert_eq!(
            m("# Syntax=docker/dockerfile:1"),
            Some(("Syntax".into(), "docker/dockerfile:1".into()))
        );
        assert_eq!(
            m("# check=skip=all;error=true"),
            Some(("check".into(), "skip=all;error=true".into()))
        );
        assert_eq!(m("# escape= "), Some(("escape".into(), " ".into())));
        assert_eq!(m("# escape="), None);
        assert_eq!(m("# 1x=y"), None);
        assert_eq!(m("#\u{a0}escape=`"), Some(("escape".into(), "`".into())));
        assert_eq!(m("# a b=c"), None);
        assert_eq!(m("escape=x"), None);
    }

    #[test]
    fn unknown_directive_ends_detection() {
        let mut p = DirectiveParser::default();
        p.parse_line("# unknown=1", 1).unwrap();
        p.parse_line("# escape=`", 2).unwrap();
        assert_eq!(p.escape, '\\');
        assert!(p.found.is_empty());
    }

    #[test]
    fn duplicates_and_bad_escape_fail() {
        let mut p = DirectiveParser::default();
        p.parse_line("# syntax=a", 1).unwrap();
        let e = p.parse_line("# SYNTAX=b", 2).unwrap_err();
        assert_eq!(e.message, "only one syntax parser directive can be used");
        let mut p = DirectiveParser::default();
        let e = p.parse_line("# escape=x", 1).unwrap_err();
        assert_eq!(e.message, "invalid escape token 'x' does not match ` or \\");
    }
}

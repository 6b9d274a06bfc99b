//! One logical line to a [`Node`]: keyword, builder flags and the argument
//! shape each instruction uses (BuildKit's dispatch table of line parsers).

use super::words::{
    extract_builder_flags, is_re_ws, is_space, parse_json, parse_words, split_re_ws, JsonArgs,
};
use super::{lowercase, ErrorKind, Node, NodeArgs, SourceRange};

type NodeResult<T> = Result<T, (ErrorKind, String)>;

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn syntax(msg: impl Into<String>) -> (ErrorKind, String) {
    (ErrorKind::Syntax, msg.into())
}

/// Builds the node for `line` (continuations already joined).
pub(crate) fn node_from_line(line: &str, escape: char, comments: Vec<String>) -> NodeResult<Node> {
    let trimmed = line.trim_matches(is_space);
    // The keyword, then the rest after the run of `[\t\v\f\r ]` that ends
    // it (`split_re_ws(trimmed, 2)` without the copies).
    let (keyword, after) = match trimmed.find(is_re_ws) {
        Some(end) => {
            let gap = &trimmed[end..];
            let len = gap.find(|c| !is_re_ws(c)).unwrap_or(gap.len());
            (&trimmed[..end], Some(&gap[len..]))
        }
        None => (trimmed, None),
    };
    let keyword = keyword.to_string();
    let (rest, flags) = match after {
        Some(after) => extract_builder_flags(after),
        None => (String::new(), Vec::new()),
    };
    let rest = rest.trim_matches(is_space);
    let mut buf = [0u8; 16];
    let (args, json) = match &*lowercase(&keyword, &mut buf) {
        "add" | "copy" | "volume" => maybe_json_to_list(rest)?,
        "arg" => (name_or_name_val(rest, escape), false),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(rest)?,
        "env" => (name_val(rest, "ENV", escape)?, false),
        "label" => (name_val(rest, "LABEL", escape)?, false),
        "expose" | "from" => (whitespace_delimited(rest), false),
        "healthcheck" => health_config(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (text(rest), false),
        "onbuild" => {
            if rest.is_empty() {
                (NodeArgs::Empty, false)
            } else {
                let child = node_from_line(rest, escape, Vec::new())?;
                (NodeArgs::Sub(Box::new(child)), false)
            }
        }
        // Unknown instructions keep no arguments; the typed conversion
        // reports them.
        _ => (NodeArgs::Empty, false),
    };
    Ok(Node {
        keyword,
        flags,
        args,
        json,
        heredocs: Vec::new(),
        original: line.to_string(),
        range: SourceRange {
            start_line: 0,
            end_line: 0,
        },
        comments,
    })
}

fn text(rest: &str) -> NodeArgs {
    if rest.is_empty() {
        NodeArgs::Empty
    } else {
        NodeArgs::Text(rest.to_string())
    }
}

fn whitespace_delimited(rest: &str) -> NodeArgs {
    if rest.is_empty() {
        NodeArgs::Empty
    } else {
        NodeArgs::Words(split_re_ws(rest, -1))
    }
}

fn maybe_json(rest: &str) -> NodeResult<(NodeArgs, bool)> {
    if rest.is_empty() {
        return Ok((NodeArgs::Empty, false));
    }
    match parse_json(rest) {
        JsonArgs::Array(words) => Ok((NodeArgs::Words(words), true)),
        JsonArgs::NotStrings => Err(syntax(NOT_STRINGS)),
        JsonArgs::Invalid => Ok((NodeArgs::Text(rest.to_string()), false)),
    }
}

fn maybe_json_to_list(rest: &str) -> NodeResult<(NodeArgs, bool)> {
    match parse_json(rest) {
        JsonArgs::Array(words) => Ok((NodeArgs::Words(words), true)),
        JsonArgs::NotStrings => Err(syntax(NOT_STRINGS)),
        JsonArgs::Invalid => Ok((whitespace_delimited(rest), false)),
    }
}

fn name_or_name_val(rest: &str, escape: char) -> NodeArgs {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        NodeArgs::Empty
    } else {
        NodeArgs::Words(words)
    }
}

/// ENV/LABEL: `KEY value` (legacy, one pair) when the first word has no
/// `=`, else `KEY=value ...` where every word must contain `=`.
fn name_val(rest: &str, key: &str, escape: char) -> NodeResult<NodeArgs> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(NodeArgs::Empty);
    }
    if !words[0].contains('=') {
        let parts = split_re_ws(rest, 2);
        if parts.len() < 2 {
            return Err((
                ErrorKind::Argument,
                format!("{key} must have two arguments"),
            ));
        }
        return Ok(NodeArgs::KeyValues {
            pairs: vec![(parts[0].clone(), parts[1].clone())],
            legacy: true,
        });
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        match word.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None => {
                return Err((
                    ErrorKind::Argument,
                    format!(
                        "Syntax error - can't find = in {}. Must be of the form: name=value",
                        go_quote(&word)
                    ),
                ))
            }
        }
    }
    Ok(NodeArgs::KeyValues {
        pairs,
        legacy: false,
    })
}

fn health_config(rest: &str) -> NodeResult<(NodeArgs, bool)> {
    let sep = rest.find(is_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((NodeArgs::Empty, false));
    }
    let test_type = rest[..sep].to_string();
    let after = rest[sep..].trim_start_matches(is_space);
    let (command, json) = maybe_json(after)?;
    Ok((
        NodeArgs::Healthcheck {
            test_type,
            command: Box::new(command),
        },
        json,
    ))
}

/// Go's `%q` for a string: double-quoted with Go escapes.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Node {
    /// Whether heredocs on this line are recognised: RUN, COPY and ADD
    /// (also as an ONBUILD trigger) in non-JSON form.
    pub(crate) fn can_contain_heredoc(&self) -> bool {
        let node = match &self.args {
            NodeArgs::Sub(child) if self.keyword.eq_ignore_ascii_case("onbuild") => child,
            _ => self,
        };
        let mut buf = [0u8; 16];
        matches!(&*lowercase(&node.keyword, &mut buf), "run" | "copy" | "add") && !node.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(line: &str) -> Node {
        node_from_line(line, '\\', Vec::new()).unwrap()
    }

    #[test]
    fn shapes() {
        assert_eq!(
            n("FROM  a  AS b").args,
            NodeArgs::Words(vec!["a".into(), "AS".into(), "b".into()])
        );
        assert_eq!(n("RUN echo hi").args, NodeArgs::Text("echo hi".into()));
        let run = n("RUN [\"echo\", \"hi\"]");
        assert!(run.json);
        assert_eq!(run.args, NodeArgs::Words(vec!["echo".into(), "hi".into()]));
        assert_eq!(
            n("RUN [\"echo\", hi]").args,
            NodeArgs::Text("[\"echo\", hi]".into())
        );
        assert_eq!(n("CMD").args, NodeArgs::Empty);
        assert_eq!(n("user  bob ").args, NodeArgs::Text("bob".into()));
        assert_eq!(
            n("COPY a b").args,
            NodeArgs::Words(vec!["a".into(), "b".into()])
        );
        assert_eq!(n("BOGUS a b").args, NodeArgs::Empty);
        assert_eq!(n("BOGUS a b").keyword, "BOGUS");
    }

    #[test]
    fn key_values() {
        assert_eq!(
            n("ENV a b c").args,
            NodeArgs::KeyValues {
                pairs: vec![("a".into(), "b c".into())],
                legacy: true
            }
        );
        assert_eq!(
            n("LABEL a=1 \"b c\"=\"d e\"").args,
            NodeArgs::KeyValues {
                pairs: vec![
                    ("a".into(), "1".into()),
                    ("\"b c\"".into(), "\"d e\"".into())
                ],
                legacy: false
            }
        );
        let e = node_from_line("ENV a", '\\', vec![]).unwrap_err();
        assert_eq!(e.1, "ENV must have two arguments");
        let e = node_from_line("ENV a=1 b", '\\', vec![]).unwrap_err();
        assert_eq!(
            e.1,
            "Syntax error - can't find = in \"b\". Must be of the form: name=value"
        );
    }

    #[test]
    fn json_with_non_strings_is_an_error() {
        let e = node_from_line("CMD [1, 2]", '\\', vec![]).unwrap_err();
        assert_eq!(e.1, NOT_STRINGS);
        let e = node_from_line("COPY [\"a\", null]", '\\', vec![]).unwrap_err();
        assert_eq!(e.1, NOT_STRINGS);
    }

    #[test]
    fn healthcheck_and_onbuild() {
        assert_eq!(
            n("HEALTHCHECK --interval=5s CMD curl x").args,
            NodeArgs::Healthcheck {
                test_type: "CMD".into(),
                command: Box::new(NodeArgs::Text("curl x".into()))
            }
        );
        let ob = n("ONBUILD RUN --mount=type=cache,target=/x make");
        let NodeArgs::Sub(child) = &ob.args else {
            panic!("not a sub node: {ob:?}")
        };
        assert_eq!(child.keyword, "RUN");
        assert_eq!(child.flags, vec!["--mount=type=cache,target=/x"]);
        assert!(ob.can_contain_heredoc());
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}

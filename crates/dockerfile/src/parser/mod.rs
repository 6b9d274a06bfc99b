//! Dockerfile text to [`Ast`]: parser directives, comments, line
//! continuations, per-instruction argument shapes (JSON exec form or shell
//! form, words, key/value pairs), builder flags and heredocs, with the line
//! range of every instruction. Mirrors BuildKit's `frontend/dockerfile/parser`.

mod directives;
mod error;
mod heredoc;
mod node;
pub(crate) mod suggest;
pub(crate) mod words;

use serde::{Deserialize, Serialize};

pub use error::{Error, ErrorKind};

pub(crate) use heredoc::{chomp_content, parse_heredoc};
pub(crate) use node::go_quote;

/// The longest line BuildKit reads, line terminator included (Go's
/// `bufio.MaxScanTokenSize`).
const MAX_LINE: usize = 64 * 1024;

/// Parses Dockerfile text; errors name the file `Dockerfile`.
pub fn parse(text: &str) -> Result<Ast, Error> {
    parse_named(text, "Dockerfile")
}

/// Parses Dockerfile text; `file` is the name used in errors and kept in
/// [`Ast::file`].
pub fn parse_named(text: &str, file: &str) -> Result<Ast, Error> {
    Parser::new(text)
        .run()
        .map(|mut ast| {
            ast.file = file.to_string();
            ast
        })
        .map_err(|e| e.in_file(file))
}

/// Line source that behaves like Go's `bufio.Scanner` with BuildKit's
/// newline-keeping split function.
struct Lines<'a> {
    rest: &'a str,
    /// Lines handed out so far.
    count: usize,
}

impl<'a> Lines<'a> {
    /// The next line with its terminator, `Ok(None)` at the end, or the
    /// overlong-line error.
    fn next(&mut self) -> Result<Option<&'a str>, Error> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (line, rest) = match self.rest.find('\n') {
            Some(i) => self.rest.split_at(i + 1),
            None => (self.rest, ""),
        };
        let too_long = if line.ends_with('\n') {
            line.len() > MAX_LINE
        } else {
            line.len() >= MAX_LINE
        };
        if too_long {
            let at = self.count + 1;
            return Err(Error::new(
                ErrorKind::Syntax,
                Some(SourceRange {
                    start_line: at,
                    end_line: at,
                }),
                format!(
                    "dockerfile line greater than max allowed size of {}",
                    MAX_LINE - 1
                ),
            ));
        }
        self.rest = rest;
        self.count += 1;
        Ok(Some(line))
    }
}

/// `s.to_lowercase()`, in `buf` when `s` is short ASCII (keywords, option
/// names), so the common case allocates nothing.
pub(crate) fn lowercase<'a>(s: &'a str, buf: &'a mut [u8; 16]) -> std::borrow::Cow<'a, str> {
    if s.len() <= buf.len() && s.is_ascii() {
        let lower = &mut buf[..s.len()];
        lower.copy_from_slice(s.as_bytes());
        lower.make_ascii_lowercase();
        if let Ok(lower) = std::str::from_utf8(lower) {
            return std::borrow::Cow::Borrowed(lower);
        }
    }
    std::borrow::Cow::Owned(s.to_lowercase())
}

/// Go's `bytes.TrimRight(s, "\r\n")`.
fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn trim_left_space(s: &str) -> &str {
    s.trim_start_matches(words::is_space)
}

fn is_comment(line: &str) -> bool {
    trim_left_space(trim_newline(line)).starts_with('#')
}

struct Parser<'a> {
    lines: Lines<'a>,
    directives: directives::DirectiveParser,
    nodes: Vec<Node>,
    warnings: Vec<Warning>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            lines: Lines {
                rest: text,
                count: 0,
            },
            directives: directives::DirectiveParser::default(),
            nodes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// BuildKit's `processLine`: drop the terminator, optionally leading
    /// whitespace, look for a directive, and blank out comment lines.
    fn process_line(
        &mut self,
        raw: &'a str,
        strip_left: bool,
        line_no: usize,
    ) -> Result<&'a str, Error> {
        let mut token = trim_newline(raw);
        if strip_left {
            token = trim_left_space(token);
        }
        self.directives
            .parse_line(token, line_no)
            .map_err(|e| e.with_source(token))?;
        Ok(if is_comment(token) { "" } else { token })
    }

    /// Removes a trailing escape character (plus spaces/tabs after it);
    /// returns the line and whether it ended the logical line.
    fn trim_continuation(&self, line: &'a str) -> (&'a str, bool) {
        let esc = self.directives.escape;
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(esc) {
            Some(head) => (head, false),
            None => (line, true),
        }
    }

    /// The logical line starting with `first` (its continuation lines
    /// joined, comments and empty ones skipped, the latter warned about)
    /// and the number of its last line.
    fn logical_line(
        &mut self,
        first: &str,
        mut end_of_line: bool,
    ) -> Result<(String, usize), Error> {
        let mut line = first.to_string();
        let mut empty_continuation = false;
        while !end_of_line {
            let Some(raw) = self.lines.next()? else { break };
            let line_no = self.lines.count;
            let token = self.process_line(raw, false, line_no)?;
            if is_comment(raw) {
                continue;
            }
            if trim_left_space(token).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, eol) = self.trim_continuation(token);
            end_of_line = eol;
            line.push_str(part);
        }
        let end_line = self.lines.count;
        if empty_continuation {
            self.warnings.push(Warning {
                rule: "NoEmptyContinuation".to_string(),
                message: format!("Empty continuation line found in: {line}"),
                range: SourceRange {
                    start_line: end_line,
                    end_line,
                },
            });
        }
        Ok((line, end_line))
    }

    /// Reads the bodies of the heredocs `line` opens (up to each one's
    /// terminator) into `node`.
    fn read_heredocs(
        &mut self,
        node: &mut Node,
        line: &str,
        start_line: usize,
        range: SourceRange,
    ) -> Result<(), Error> {
        let docs = heredoc::heredocs_from_line(line)
            .map_err(|m| Error::new(ErrorKind::Syntax, Some(range), m).with_source(line))?;
        for mut doc in docs {
            let mut terminated = false;
            while let Some(raw) = self.lines.next()? {
                let mut candidate = trim_newline(raw);
                if doc.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == doc.name {
                    terminated = true;
                    break;
                }
                doc.content.push_str(raw);
            }
            if !terminated {
                let end = SourceRange {
                    start_line,
                    end_line: self.lines.count,
                };
                return Err(
                    Error::new(ErrorKind::Syntax, Some(end), "unterminated heredoc")
                        .with_source(line),
                );
            }
            node.heredocs.push(doc);
        }
        Ok(())
    }

    fn run(mut self) -> Result<Ast, Error> {
        let mut comments: Vec<String> = Vec::new();
        while let Some(mut raw) = self.lines.next()? {
            if self.lines.count == 1 {
                raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
            }
            if is_comment(raw) {
                // BuildKit drops the first byte of the raw line, whatever it is.
                let comment = raw.get(1..).unwrap_or("").trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let start_line = self.lines.count;
            let token = self.process_line(raw, true, start_line)?;
            let (first, end_of_line) = self.trim_continuation(token);
            if end_of_line && first.is_empty() {
                continue;
            }
            let (line, end_line) = self.logical_line(first, end_of_line)?;
            let range = SourceRange {
                start_line,
                end_line,
            };
            let mut node =
                node::node_from_line(&line, self.directives.escape, std::mem::take(&mut comments))
                    .map_err(|m| Error::new(m.0, Some(range), m.1).with_source(&line))?;
            if line.contains("<<") && node.can_contain_heredoc() {
                self.read_heredocs(&mut node, &line, start_line, range)?;
            }
            node.range = SourceRange {
                start_line,
                end_line: self.lines.count,
            };
            if let NodeArgs::Sub(child) = &mut node.args {
                child.range = node.range;
            }
            self.nodes.push(node);
        }
        if self.nodes.is_empty() {
            let at = self.lines.count.max(1);
            return Err(Error::new(
                ErrorKind::Syntax,
                Some(SourceRange {
                    start_line: at,
                    end_line: at,
                }),
                "file with no instructions",
            ));
        }
        Ok(Ast {
            file: String::new(),
            directives: self.directives.found,
            escape: self.directives.escape,
            nodes: self.nodes,
            warnings: self.warnings,
        })
    }
}

/// The 1-based, inclusive lines an instruction spans (heredoc bodies included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRange {
    /// First line.
    pub start_line: usize,
    /// Last line.
    pub end_line: usize,
}

/// A parser directive (`# syntax=...`, `# escape=...`, `# check=...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// The directive name, lowercased.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// The line it is on.
    pub line: usize,
}

/// A non-fatal finding of the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// BuildKit's rule name (`NoEmptyContinuation`).
    pub rule: String,
    /// One-line description naming the instruction at fault.
    pub message: String,
    /// Where.
    pub range: SourceRange,
}

/// A here-document (`<<EOF` ... `EOF`) of RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF` for `<<"EOF"`).
    pub name: String,
    /// The body: the lines between the instruction and the delimiter, each
    /// with its line terminator. In the [`Ast`] it is verbatim; in the typed
    /// instructions leading tabs are already removed when `chomp` is set.
    pub content: String,
    /// False when any part of the delimiter was quoted (`<<'EOF'`,
    /// `<<"EOF"`): the body is then used without variable expansion.
    pub expand: bool,
    /// True for `<<-EOF` (leading tabs are stripped from the body and the
    /// delimiter line).
    pub chomp: bool,
    /// File descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u32,
}

/// The arguments of an instruction, in the shape BuildKit's per-instruction
/// line parser gives them. All text is raw: quotes, escapes and variables
/// are left for the shell lexer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "shape", content = "value", rename_all = "snake_case")]
pub enum NodeArgs {
    /// Nothing after the keyword and flags (or an unknown instruction).
    Empty,
    /// One raw string: shell form of RUN/CMD/ENTRYPOINT/SHELL, and
    /// MAINTAINER, STOPSIGNAL, USER, WORKDIR.
    Text(String),
    /// A list of words: a JSON array (`json` is set on the node), or
    /// whitespace-separated words (FROM, EXPOSE, COPY, ADD, VOLUME), or ARG's
    /// quote-aware words.
    Words(Vec<String>),
    /// ENV and LABEL pairs; `legacy` for the `KEY value` form.
    KeyValues {
        /// Key/value pairs in order.
        pairs: Vec<(String, String)>,
        /// True for the single-pair `KEY value` form.
        legacy: bool,
    },
    /// HEALTHCHECK: the type word (`CMD`, `NONE`, ...) and what follows.
    Healthcheck {
        /// The first word as written.
        test_type: String,
        /// The command after it (shell text or JSON words).
        command: Box<NodeArgs>,
    },
    /// ONBUILD: the trigger instruction.
    Sub(Box<Node>),
}

/// One instruction of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The keyword as written (`FROM`, `from`, `CoPy`, or an unknown word).
    pub keyword: String,
    /// Builder flags in order, as `--name` or `--name=value`, quotes removed.
    pub flags: Vec<String>,
    /// The arguments.
    pub args: NodeArgs,
    /// True when the arguments were a JSON array.
    pub json: bool,
    /// Heredocs started on this line, in order.
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuation lines joined, comments removed.
    pub original: String,
    /// Lines spanned, heredoc bodies included.
    pub range: SourceRange,
    /// The comment lines directly above the instruction (text after `#`).
    pub comments: Vec<String>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ast {
    /// The file name used in errors (`Dockerfile` unless given).
    pub file: String,
    /// Parser directives found at the top, in order.
    pub directives: Vec<Directive>,
    /// The escape character: `\` or `` ` `` (from `# escape=`). Pass it to
    /// the shell lexer.
    pub escape: char,
    /// The instructions in order.
    pub nodes: Vec<Node>,
    /// Non-fatal findings.
    pub warnings: Vec<Warning>,
}

impl Ast {
    /// The value of a directive (`syntax`, `escape`, `check`), if present.
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .map(|d| d.value.as_str())
    }
}

//! Dockerfile text to [`Ast`]: parser directives, comments, line
//! continuations, per-instruction argument shapes (JSON exec form or shell
//! form, words, key/value pairs), builder flags and heredocs, with the line
//! range of every instruction. Mirrors BuildKit's `frontend/dockerfile/parser`.

mod error;
pub(crate) mod suggest;

use serde::{Deserialize, Serialize};

pub use error::{Error, ErrorKind};

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

use std::fmt;

/// A `.dockerignore` line that is not a valid pattern. The message names the
/// line number and the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern {pattern:?} on line {line}: {kind}")]
pub struct Error {
    line: usize,
    pattern: String,
    kind: PatternErrorKind,
}

impl Error {
    pub(crate) fn new(line: usize, pattern: &str, kind: PatternErrorKind) -> Error {
        Error {
            line,
            pattern: pattern.to_string(),
            kind,
        }
    }

    /// The 1-based line number in the ignore file.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line as written (trimmed).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &PatternErrorKind {
        &self.kind
    }
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternErrorKind {
    /// `!` with nothing after it.
    LoneExclamation,
    /// A `\` at the very end, escaping nothing.
    TrailingBackslash,
    /// A `[` without its `]`.
    UnclosedClass,
    /// An unescaped `-` or `]` where a class item should start (`[]`, `[-a]`).
    BadClassItem(char),
    /// A range whose start is after its end (`[z-a]`).
    ReversedRange(char, char),
}

impl fmt::Display for PatternErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternErrorKind::LoneExclamation => {
                f.write_str("a lone '!' excepts nothing; write the path to re-include after it")
            }
            PatternErrorKind::TrailingBackslash => f.write_str(
                "it ends with '\\', which escapes nothing; write '\\\\' for a backslash",
            ),
            PatternErrorKind::UnclosedClass => {
                f.write_str("a '[' character class is not closed with ']'")
            }
            PatternErrorKind::BadClassItem(c) => write!(
                f,
                "a character class item cannot start with '{c}'; escape it as '\\{c}'"
            ),
            PatternErrorKind::ReversedRange(lo, hi) => write!(
                f,
                "the character range '{lo}-{hi}' is reversed; write '{hi}-{lo}'"
            ),
        }
    }
}

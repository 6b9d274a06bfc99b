/// Control characters (a newline from a variable's value, say) are shown
/// escaped so that every message stays on one line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A word the lexer could not process.
///
/// Displays like BuildKit: `failed to process "<word>": <what went wrong>`,
/// with the word quoted (and escaped) so the message stays on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {word:?}: {kind}")]
pub struct Error {
    word: String,
    kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(word: &str, kind: ErrorKind) -> Error {
        Error {
            word: word.to_string(),
            kind,
        }
    }

    /// The whole word that was being processed.
    pub fn word(&self) -> &str {
        &self.word
    }

    /// What went wrong in it.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// What went wrong while processing a word. The texts are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `${` without its closing `}` (also `${v` and a `${v:-...` word that
    /// runs to the end of the input).
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${}`, `${{...`, `${:...`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// `${v/pattern` without the `/` that starts the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// A modifier BuildKit does not support, e.g. `:=` in `${v:=w}`, `=`,
    /// `:#`, `:%`, or a character that is no modifier at all (`${v x}`).
    #[error("unsupported modifier ({}) in substitution", one_line(.0))]
    UnsupportedModifier(String),
    /// A `'` without its closing `'`.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` without its closing `"`.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// `${name?message}` with `name` unset, or `${name:?message}` with `name`
    /// unset or empty. `message` is the expanded word, or BuildKit's default
    /// (`is not allowed to be unset` / `is not allowed to be empty`).
    #[error("{name}: {}", one_line(.message))]
    Required {
        /// The variable.
        name: String,
        /// The message shown after the name.
        message: String,
    },
    /// The pattern of `${v#p}`, `${v%p}` or `${v/p/r}` has an invalid escape.
    /// For `%`/`%%` the pattern is shown reversed, as BuildKit does.
    #[error("invalid pattern ({}) in substitution: {reason}", one_line(.pattern))]
    InvalidPattern {
        /// The pattern after expansion.
        pattern: String,
        /// Which escape was wrong.
        reason: PatternError,
    },
    /// Expansions nested deeper than the lexer allows (a guard against stack
    /// exhaustion; BuildKit has no such limit, no real Dockerfile reaches it).
    #[error("expansions are nested more than {0} levels deep")]
    TooDeep(usize),
    /// The expansion would be longer than the lexer's bound
    /// ([`Lexer::with_max_len`](crate::Lexer::with_max_len)); checked before
    /// the text grows, so nothing that large is ever allocated. BuildKit has
    /// no such limit.
    #[error("the expansion is longer than {limit} bytes, the limit for one word")]
    TooLong {
        /// The bound, in bytes.
        limit: usize,
    },
    /// Matching a `${v#p}`, `${v%p}` or `${v/p/r}` pattern against the value
    /// would take too much work (a pattern of thousands of `*` against a
    /// long value, say). BuildKit has no such limit.
    #[error(
        "the pattern ({parts} parts) is too costly to match against a value of {chars} characters"
    )]
    PatternTooCostly {
        /// Wildcards and literal characters in the pattern.
        parts: usize,
        /// Characters in the value.
        chars: usize,
    },
}

/// Why a substitution pattern is invalid. In patterns only `\*`, `\?`, `\\`
/// (and `\}`, `\/`, which just protect the delimiters) are valid escapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A backslash before a character that cannot be escaped.
    #[error("invalid escape '\\{}'", one_line(&.0.to_string()))]
    InvalidEscape(char),
    /// A backslash at the end of the pattern.
    #[error("invalid escape '\\' at the end of the pattern")]
    TrailingEscape,
}

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::SourceRange;

/// What went wrong, coarsely; the message has the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not a Dockerfile: bad directive, unterminated heredoc,
    /// overlong line, no instructions, malformed JSON array.
    Syntax,
    /// An instruction keyword BuildKit does not know.
    UnknownInstruction,
    /// A `--flag` the instruction does not accept, or a malformed flag.
    Flag,
    /// Wrong arguments for an instruction.
    Argument,
    /// An instruction that needs a stage appears before the first FROM.
    NoStage,
}

/// A parse or conversion error naming the file, line and offending text.
///
/// Displays as one line: `Dockerfile:7: unknown instruction: COPPY (did you mean COPY?)`.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{}", self.render())]
pub struct Error {
    /// The file name given by the caller (`Dockerfile` by default).
    pub file: String,
    /// The lines at fault, when known.
    pub range: Option<SourceRange>,
    /// The kind of error.
    pub kind: ErrorKind,
    /// BuildKit's message.
    pub message: String,
    /// The offending source text when known: the logical line of the
    /// instruction (continuations joined) or the directive line. Not part
    /// of `Display`, for renderers that show the source.
    pub source_text: Option<String>,
}

impl Error {
    pub(crate) fn new(
        kind: ErrorKind,
        range: Option<SourceRange>,
        message: impl Into<String>,
    ) -> Error {
        Error {
            file: "Dockerfile".to_string(),
            range,
            kind,
            message: message.into(),
            source_text: None,
        }
    }

    pub(crate) fn with_source(mut self, text: &str) -> Error {
        self.source_text = Some(text.trim().to_string());
        self
    }

    pub(crate) fn in_file(mut self, file: &str) -> Error {
        self.file = file.to_string();
        self
    }

    /// The first line at fault (1-based), when known.
    pub fn line(&self) -> Option<usize> {
        self.range.map(|r| r.start_line)
    }

    fn render(&self) -> String {
        match self.range {
            Some(r) => format!("{}:{}: {}", self.file, r.start_line, self.message),
            None => format!("{}: {}", self.file, self.message),
        }
    }
}

use std::fmt;

use crate::SUPPORTED;

/// A platform specifier that cannot be parsed, or (from
/// [`Platform::check_known`](crate::Platform::check_known)) a platform that
/// does not exist. Its message names the input and lists the supported
/// platforms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} platform {input:?}: {kind}; supported platforms are {}", adjective(.kind), SUPPORTED.join(", "))]
pub struct Error {
    input: String,
    kind: ErrorKind,
}

/// `unknown` for a well-formed platform that does not exist, `invalid` for
/// text that is no platform at all.
fn adjective(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::UnknownOs(_) | ErrorKind::UnknownArch(_) | ErrorKind::UnknownVariant { .. } => {
            "unknown"
        }
        _ => "invalid",
    }
}

impl Error {
    pub(crate) fn new(input: &str, kind: ErrorKind) -> Error {
        Error {
            input: input.to_string(),
            kind,
        }
    }

    /// The specifier (or list) that was rejected.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// Why a specifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Nothing was given.
    Empty,
    /// A `*` wildcard, which containerd does not support either.
    Wildcard,
    /// More than `os/arch/variant`.
    TooManyComponents,
    /// The os part (this text) is not `os` or `os(version)`.
    InvalidOs(String),
    /// An architecture or variant component (this text) is empty or has
    /// characters other than letters, digits, `_`, `-` and `.`.
    InvalidComponent(String),
    /// A single component that is neither a known os nor a known
    /// architecture.
    UnknownOsOrArch,
    /// An empty item (1-based position) in a comma-separated list.
    EmptyListItem(usize),
    /// A well-formed platform whose operating system (this text) is not
    /// one of Go's `GOOS` values; see [`Platform::check_known`](crate::Platform::check_known).
    UnknownOs(String),
    /// A well-formed platform whose architecture (this text) is not one of
    /// Go's `GOARCH` values.
    UnknownArch(String),
    /// A known architecture with a variant it does not have (`arm/v9`).
    UnknownVariant {
        /// The architecture.
        architecture: String,
        /// The variant given.
        variant: String,
        /// The variants the architecture has (empty: none).
        known: &'static [&'static str],
    },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Empty => f.write_str("the platform is empty"),
            ErrorKind::Wildcard => f.write_str("wildcards are not supported"),
            ErrorKind::TooManyComponents => {
                f.write_str("expected at most three components, os/arch/variant")
            }
            ErrorKind::InvalidOs(part) => write!(
                f,
                "{part:?} is not an operating system (letters, digits, '_' and '-', \
                 optionally followed by a version in parentheses)"
            ),
            ErrorKind::InvalidComponent(part) => write!(
                f,
                "{part:?} is not a valid architecture or variant (letters, digits, '_', '-' and '.')"
            ),
            ErrorKind::UnknownOsOrArch => {
                f.write_str("it is neither a known operating system nor a known architecture")
            }
            ErrorKind::EmptyListItem(n) => write!(f, "item {n} of the list is empty"),
            ErrorKind::UnknownOs(os) => write!(f, "{os:?} is not a known operating system"),
            ErrorKind::UnknownArch(arch) => write!(f, "{arch:?} is not a known architecture"),
            ErrorKind::UnknownVariant {
                architecture,
                variant,
                known,
            } => {
                if known.is_empty() {
                    write!(f, "architecture {architecture} has no variants, not {variant:?}")
                } else {
                    write!(
                        f,
                        "{variant:?} is not a variant of {architecture} (known: {})",
                        known.join(", ")
                    )
                }
            }
        }
    }
}

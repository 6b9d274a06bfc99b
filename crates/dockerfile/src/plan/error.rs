//! Planning errors: one line naming the Dockerfile line at fault.

use std::fmt;

/// Why a Dockerfile could not be planned.
///
/// Displays as `<file>:<line>: <instruction text>: <what is wrong>` (the
/// file is `Dockerfile` unless [`Error::in_file`] names another), or
/// `<file>: <what is wrong>` when no single line is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    file: String,
    line: Option<usize>,
    text: Option<String>,
    kind: ErrorKind,
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The Dockerfile could not be parsed (the line is the plan error's).
    #[error("{}", .0.message)]
    Parse(#[source] Box<crate::parser::Error>),
    /// The Dockerfile has no FROM.
    #[error("the Dockerfile has no stage to build; add a FROM instruction")]
    NoStages,
    /// No target platform was requested.
    #[error("no target platform was requested; pass at least one --platform")]
    NoPlatforms,
    /// `--target` names no stage.
    #[error("target stage {target:?} could not be found; the Dockerfile defines {}", list_stages(.stages))]
    UnknownTarget {
        /// The `--target` value.
        target: String,
        /// The stage names the Dockerfile defines.
        stages: Vec<String>,
    },
    /// Two stages have the same name.
    #[error("stage name {name:?} is already used by the stage on line {first_line}; stage names must be unique")]
    DuplicateStageName {
        /// The name.
        name: String,
        /// Line of the first stage with that name.
        first_line: usize,
    },
    /// `COPY --from` / `RUN --mount from=` between stages form a cycle.
    #[error("circular dependency detected on stage: {stage}")]
    CircularDependency {
        /// The stage where the cycle was found.
        stage: String,
    },
    /// `COPY --from=<n>` with no stage `n`.
    #[error("invalid stage index {index}: the Dockerfile has {count} stage(s), numbered from 0")]
    InvalidStageIndex {
        /// The index written.
        index: String,
        /// How many stages there are.
        count: usize,
    },
    /// `COPY --from` names a stage that is defined after the current one.
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {stage:?}"
    )]
    CopyFromLaterStage {
        /// The `--from` value.
        from: String,
        /// The current stage.
        stage: String,
    },
    /// `RUN --mount from=` names a stage that is defined after the current one.
    #[error("cannot mount from stage {from:?} to {target:?}, stage needs to be defined before current command")]
    MountFromLaterStage {
        /// The `from=` value.
        from: String,
        /// The mount target.
        target: String,
    },
    /// The FROM image expanded to nothing.
    #[error("base name ({0}) should not be blank")]
    BlankBaseName(String),
    /// `FROM --platform` expanded to nothing.
    #[error("empty platform value from expression {0}")]
    EmptyPlatform(String),
    /// `FROM --platform` is not a platform.
    #[error("failed to parse platform {value}: {source}")]
    InvalidPlatform {
        /// The expanded value.
        value: String,
        /// Why it is not a platform.
        source: kbuild_platform::Error,
    },
    /// A word could not be expanded (bad `${...}`, `${v?msg}` unset...).
    #[error("{0}")]
    Expansion(#[source] kbuild_shell::Error),
    /// The ENV and ARG values of a stage (names and values, base image
    /// environment included) add up to more than
    /// [`MAX_STAGE_ENV`](crate::plan::MAX_STAGE_ENV) bytes.
    #[error("the environment of {scope} would be larger than {limit} bytes (names and values of its ENV and ARG variables), the limit for one stage")]
    EnvironmentTooLarge {
        /// `stage "<name>"`, or the global ARGs.
        scope: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A `RUN --mount` value is invalid once expanded.
    #[error("{0}")]
    Mount(#[source] crate::instructions::MountError),
    /// `VOLUME` with an empty path.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    /// `FROM` names a `--build-context` that is a directory.
    #[error("FROM {0}: --build-context {0} is a directory; a directory context can be read with COPY --from={0} or RUN --mount=from={0}, not used as a base")]
    DirectoryBase(String),
    /// A stage the plan needs was not planned (an internal inconsistency).
    #[error("{role} stage {stage:?} was not built")]
    StageNotBuilt {
        /// `target` or `base`.
        role: &'static str,
        /// The stage's name.
        stage: String,
    },
    /// A stage instance read before its op exists (an internal
    /// inconsistency of the lowering).
    #[error("stage instance @{0} is used before it is built")]
    StageUsedBeforeBuilt(usize),
    /// A `--from` (of COPY) or `from=` (of `RUN --mount`) without its
    /// source in the step (an internal inconsistency of the plan).
    #[error("{flag}{from} names no source")]
    NoSource {
        /// `--from=` or `--mount from=`.
        flag: &'static str,
        /// The value.
        from: String,
    },
    /// The image config source failed.
    #[error("cannot read the config of base image {reference:?} for {platform}: {reason}")]
    ImageConfig {
        /// The image.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// What the source reported.
        reason: String,
    },
    /// A `--chmod` value that is not a mode.
    #[error("invalid --chmod={value}: {source}")]
    Chmod {
        /// The expanded value.
        value: String,
        /// Why it is not a mode.
        source: crate::graph::ChmodError,
    },
    /// An EXPOSE word that is not a port or port range.
    #[error("invalid EXPOSE port {value:?}: {source}")]
    Expose {
        /// The expanded word.
        value: String,
        /// What is wrong with it.
        source: crate::graph::ExposeError,
    },
    /// A STOPSIGNAL that names no signal.
    #[error("{source}")]
    StopSignal {
        /// The value.
        source: crate::graph::SignalError,
    },
    /// An ADD `--checksum` that cannot be used.
    #[error("{source}")]
    Checksum {
        /// What is wrong with it.
        source: crate::graph::ChecksumError,
    },
    /// An ONBUILD trigger of a base could not be parsed or run.
    #[error("ONBUILD trigger {trigger:?} of the base: {source}")]
    OnbuildTrigger {
        /// The trigger text.
        trigger: String,
        /// What is wrong with it.
        source: Box<TriggerError>,
    },
}

/// Why an ONBUILD trigger of a base cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// It does not parse.
    #[error("{}", .0.message)]
    Parse(#[source] crate::parser::Error),
    /// It holds more than one instruction.
    #[error("onbuild trigger should be a single expression")]
    NotOne,
    /// It cannot be planned or run.
    #[error("{0}")]
    Plan(#[source] Box<ErrorKind>),
}

fn list_stages(stages: &[String]) -> String {
    if stages.is_empty() {
        "no named stage (name one with FROM <image> AS <name>)".to_string()
    } else {
        stages.join(", ")
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Error {
        Error(Box::new(Inner {
            file: "Dockerfile".to_string(),
            line: None,
            text: None,
            kind,
        }))
    }

    pub(crate) fn parse(e: crate::parser::Error) -> Error {
        Error(Box::new(Inner {
            file: "Dockerfile".to_string(),
            line: e.range.map(|r| r.start_line),
            text: None,
            kind: ErrorKind::Parse(Box::new(e)),
        }))
    }

    pub(crate) fn at(kind: ErrorKind, line: usize, text: &str) -> Error {
        Error(Box::new(Inner {
            file: "Dockerfile".to_string(),
            line: Some(line),
            text: Some(text.lines().next().unwrap_or("").trim().to_string()),
            kind,
        }))
    }

    /// The same error, naming `file` instead of `Dockerfile`.
    pub fn in_file(mut self, file: &str) -> Error {
        self.0.file = file.to_string();
        self
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The Dockerfile line at fault (1-based), if one is.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        match (e.line, &e.text) {
            (Some(line), Some(text)) if !text.is_empty() => {
                write!(f, "{}:{line}: {text}: {}", e.file, e.kind)
            }
            (Some(line), _) => write!(f, "{}:{line}: {}", e.file, e.kind),
            _ => write!(f, "{}: {}", e.file, e.kind),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0.kind)
    }
}

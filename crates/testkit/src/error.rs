//! Why a component of the test machine could not start ([`StartError`]),
//! and why a program a helper ran failed ([`CommandError`]). Tests usually
//! hand a [`StartError`] to [`crate::fixtures::started`], which skips (or
//! fails under CI) with its message.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

/// Why a test component (registry, token server, fault proxy, dockerd,
/// containerd, the cluster) could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A program it needs is not installed.
    #[error("{} not found; install the {package} package (scripts/test.sh does)", program.display())]
    NotInstalled {
        /// The missing program.
        program: PathBuf,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// It needs root and this process is not.
    #[error("{what} needs root; run the tests as root")]
    NotRoot {
        /// What needs root.
        what: &'static str,
    },
    /// The fault proxy program is not built.
    #[error("{} is not built (looked at {looked_at}); run `cargo build -p kbuild-testkit --bin {}` or set KBUILD_FAULT_PROXY", crate::faults::PROXY_BIN, crate::faults::PROXY_BIN)]
    ProxyNotBuilt {
        /// Where it was looked for.
        looked_at: String,
    },
    /// A started proxy did not report its port.
    #[error("{} did not say which port it listens on (said {said:?})", program.display())]
    NoPort {
        /// The program.
        program: PathBuf,
        /// Its first line of output.
        said: String,
    },
    /// A fault rule was refused.
    #[error(transparent)]
    Rule(#[from] crate::faults::RuleError),
    /// A file, socket or process step failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done, e.g. "create /tmp/kbd1/log".
        action: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A program run to prepare it failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// It ended before it was ready.
    #[error("{what} exited at start ({status}); the end of its log:\n{log}")]
    Exited {
        /// The component.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of what it logged.
        log: String,
    },
    /// The script that starts it failed.
    #[error("{what} failed ({status}); the end of its output:\n{log}")]
    Failed {
        /// The script, how long it ran and where its whole output is.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its output.
        log: String,
    },
    /// It did not become ready in time.
    #[error("{what} did not answer within {waited:?}; the end of its log:\n{log}")]
    NoAnswer {
        /// The component and what it was asked.
        what: String,
        /// How long it was given.
        waited: Duration,
        /// The end of what it logged.
        log: String,
    },
    /// It started but left out something it should have made.
    #[error("{what} succeeded but wrote no {}", missing.display())]
    Incomplete {
        /// What ran.
        what: &'static str,
        /// The file it should have written.
        missing: PathBuf,
    },
}

impl StartError {
    /// An [`StartError::Io`] of `action`.
    pub fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
        let action = action.into();
        move |source| StartError::Io { action, source }
    }
}

/// A program a test helper ran could not be run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// It ended unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The program and its arguments.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on standard error, trimmed.
        stderr: String,
    },
}

impl CommandError {
    /// A [`CommandError::Failed`] of `program args`, which ended as `output`
    /// says.
    pub fn failed<S: AsRef<OsStr>>(program: &str, args: &[S], output: &Output) -> CommandError {
        let shown: Vec<String> = std::iter::once(program.to_string())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect();
        CommandError::Failed {
            command: shown.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }
    }
}

/// Runs `command` to the end: its output when it succeeds, else why not.
pub fn output_ok(command: &mut Command) -> Result<Output, CommandError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        let args: Vec<&OsStr> = command.get_args().collect();
        Err(CommandError::failed(&program, &args, &output))
    }
}

//! Sandboxed RUN: one step's command in fresh namespaces, for any platform
//! this machine runs natively, in compat mode or under QEMU (see
//! [`crate::binfmt`]).
//!
//! # How a step runs
//!
//! [`Executor::run`] re-executes a helper program (our own binary with the
//! hidden first argument [`SANDBOX_FLAG`], or the test binary
//! `kbuild-sandbox`), which must call [`helper_main`] before doing anything
//! else. The spec goes to the helper as JSON on its stdin; the helper
//! reports on file descriptor 3 (newline-delimited JSON: the host pid of
//! the sandbox's init, setup errors, the exit status). The step's stdout
//! and stderr are pipes read by [`Executor::run`] and handed to the
//! `output` callback as the bytes arrive.
//!
//! The helper unshares mount, PID, UTS and IPC namespaces (and a network
//! namespace for [`Network::None`], where only `lo` is brought up) and
//! forks the sandbox init, PID 1 of the new PID namespace. Init makes every
//! mount private, bind-mounts the root filesystem onto itself, mounts a
//! fresh `/proc`, a minimal `/dev` (tmpfs with `null`, `zero`, `full`,
//! `random`, `urandom`, `tty` bind-mounted from the host, a new-instance
//! `devpts` with `ptmx`, tmpfs `shm`, `mqueue`, `fd`/`stdin`/`stdout`/
//! `stderr` links), `/sys` read-only, `/proc/sys`, `/proc/sysrq-trigger`,
//! `/proc/irq`, `/proc/bus` and `/proc/fs` read-only and [`MASKED_PATHS`]
//! hidden (runc's defaults), the generated `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname` read-only, the extra mounts,
//! then `pivot_root`s into the root filesystem, sets the hostname, creates
//! the working directory when missing (owned by the step's user), and forks
//! the command: it sets the personality (`PER_LINUX32` for compat
//! platforms), drops every capability outside Docker's default set,
//! installs Docker's default seccomp profile (see `seccomp/default.json`;
//! compiled once per process with libseccomp for the host's architectures,
//! which also judges QEMU's calls for emulated platforms), sets the
//! supplementary groups, gid and uid, stdin from
//! `/dev/null`, and executes `argv` with exactly `env` (plus `QEMU_CPU` for
//! emulated arm/v6, see [`crate::binfmt`]), looking `argv[0]` up in the
//! `PATH` of `env` (or the default `PATH`) inside the root filesystem.
//! Init reaps every orphan; when the command exits, init reports its status
//! and exits, and the kernel kills whatever the step left running (daemons
//! forked into the background die with the step, as in BuildKit).
//!
//! [`Security::Insecure`] (`RUN --security=insecure`, granted by the
//! caller) skips the capability drop, the filter and the masks, and mounts
//! `/sys` writable.
//!
//! Mounts live only in the step's mount namespace: when its last process
//! ends, they are gone; nothing is mounted on the host.
//!
//! # Cancellation
//!
//! [`Cancel::cancel`] (safe to call from any thread or a signal handler)
//! makes [`Executor::run`] SIGKILL the sandbox init and the helper: every
//! process of the step dies with its PID namespace, and `run` returns
//! [`Error::Cancelled`] once the pipes are closed.
//!
//! # What the layer does not see
//!
//! `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` are generated in a
//! temporary directory and bind-mounted; nothing is written into the root
//! filesystem for them. Mount points missing from the image (`/proc`,
//! `/dev`, `/sys`, those three files, the targets of extra mounts) are
//! created before the step and removed after it when they are still empty,
//! and the modification time of the directory they were created in is put
//! back when the step did not change that directory, so the overlay upper
//! keeps no file, whiteout or changed timestamp for them (a directory the
//! stub had to copy up, like `/etc`, stays in the upper with the lower's
//! metadata). The working directory, when created, is a real change and
//! stays.
//!
//! `/etc/resolv.conf` is a copy of the host's, also when it names a
//! `127.x` resolver: steps share the host network by default, where that
//! resolver answers; with [`Network::None`] there is no DNS at all.
//!
//! ```no_run
//! use kbuild_worker::executor::{Cancel, Executor, RunSpec, Stream};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let executor = Executor::current_exe();
//! let mut spec = RunSpec::new("/var/lib/kbuild/mounts/1/merged", ["sh", "-c", "uname -m"]);
//! spec.env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()];
//! spec.platform = "linux/arm64".parse()?;
//! let status = executor.run(&spec, &Cancel::new(), &mut |stream, bytes| {
//!     if stream == Stream::Stdout { print!("{}", String::from_utf8_lossy(bytes)) }
//! })?;
//! assert!(status.success());
//! # Ok(()) }
//! ```

mod files;
mod protocol;
mod sandbox;
mod seccomp;
mod supervisor;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kbuild_platform::Platform;

pub use sandbox::helper_main;
pub use seccomp::SeccompError;

/// The hidden first argument that makes `kubectl-build` act as the sandbox
/// helper: its `main` must start with
/// `if std::env::args().nth(1).as_deref() == Some(SANDBOX_FLAG) { helper_main() }`.
pub const SANDBOX_FLAG: &str = "__kbuild_sandbox";

/// The hostname of a step when none is given (BuildKit's).
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The `PATH` used to find `argv[0]` when `env` has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The network a step sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// The host's network (BuildKit's OCI worker default).
    #[default]
    Host,
    /// A new network namespace with only the loopback interface, up.
    None,
}

/// How much of the host a step may reach (`RUN --security`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    /// runc's and BuildKit's defaults: Docker's default capabilities and
    /// seccomp profile, `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`,
    /// `/proc/bus`, `/proc/fs` and `/sys` read-only, and the kernel's
    /// sensitive files ([`MASKED_PATHS`]) hidden.
    #[default]
    Sandbox,
    /// `RUN --security=insecure`: every capability, no system call filter,
    /// nothing masked, `/proc` and `/sys` writable. The caller grants it
    /// only with the `security.insecure` entitlement.
    Insecure,
}

/// Paths hidden from a sandboxed step (an empty read-only tmpfs over a
/// directory, `/dev/null` over a file), as runc's defaults.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Parts of `/proc` a sandboxed step sees read-only, as runc's defaults.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Who the command runs as; names are resolved by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (exactly these; none inherited).
    pub additional_gids: Vec<u32>,
}

/// An extra mount of a step (`RUN --mount`), targets absolute inside the
/// root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    /// Bind-mounts a host directory, file or socket (secrets, SSH agent
    /// sockets, cache and context directories).
    Bind {
        /// The host path.
        source: PathBuf,
        /// Where it appears.
        target: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Where it appears.
        target: String,
        /// Size limit in bytes (the kernel's default, half the RAM, if
        /// `None`).
        size: Option<u64>,
    },
}

/// One step to run. Build it with [`RunSpec::new`] and set the fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// The step's root filesystem: an already mounted overlay `merged`
    /// directory (the caller mounts it and commits the upper afterwards).
    pub rootfs: PathBuf,
    /// The command; `argv[0]` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment, `NAME=value`.
    pub env: Vec<String>,
    /// Working directory, absolute inside the root filesystem; created
    /// (owned by `user`) when missing.
    pub cwd: String,
    /// Who runs the command.
    pub user: User,
    /// The hostname inside the step.
    pub hostname: String,
    /// Extra `/etc/hosts` entries (`--add-host name:ip`), as `(name, ip)`.
    pub extra_hosts: Vec<(String, String)>,
    /// The network.
    pub network: Network,
    /// The platform the command is built for: chooses the personality
    /// and QEMU settings.
    pub platform: Platform,
    /// Extra mounts, applied in order after the standard ones.
    pub mounts: Vec<MountSpec>,
    /// The sandbox's strength.
    pub security: Security,
    /// The size of the `/dev/shm` tmpfs in bytes (`--shm-size`;
    /// [`DEFAULT_SHM_SIZE`] as in runc and BuildKit).
    pub shm_size: u64,
}

/// The size of `/dev/shm` when none is asked for: 64 MiB, as runc and
/// BuildKit give.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

impl RunSpec {
    /// A spec running `argv` as root in `/` of `rootfs` for the host
    /// platform, with host networking, no environment and the default
    /// hostname.
    pub fn new<I, S>(rootfs: impl Into<PathBuf>, argv: I) -> RunSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RunSpec {
            rootfs: rootfs.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: User::default(),
            hostname: DEFAULT_HOSTNAME.into(),
            extra_hosts: Vec::new(),
            network: Network::Host,
            platform: Platform::host(),
            mounts: Vec::new(),
            security: Security::Sandbox,
            shm_size: DEFAULT_SHM_SIZE,
        }
    }
}

/// Which output stream bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code: {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A cancellation flag shared between the caller (a Ctrl-C handler, the
/// solver when a sibling step failed) and [`Executor::run`]. Clones share
/// the flag. [`Executor::run`] notices it within 50 ms.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Sets the flag: running steps are killed. Only an atomic store, so
    /// it is safe in a signal handler.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a step could not run (a command that ran and failed is not an
/// error: it is an [`ExitStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is unusable.
    #[error("invalid RUN spec: {0}")]
    InvalidSpec(String),
    /// The platform cannot run on this machine.
    #[error("cannot run a {platform} step here: {reason}; {fix}")]
    UnsupportedPlatform {
        /// The step's platform.
        platform: String,
        /// Why.
        reason: String,
        /// What fixes it.
        fix: String,
    },
    /// Preparing the root filesystem or talking to the helper failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The helper program could not be started.
    #[error("could not start the sandbox helper {}: {source}; the CLI must call executor::helper_main() when its first argument is {SANDBOX_FLAG}", program.display())]
    Spawn {
        /// The helper program.
        program: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The system call filter could not be built.
    #[error("could not build the RUN sandbox's system call filter: {0}")]
    Seccomp(#[source] &'static SeccompError),
    /// The sandbox could not be set up (mounts, namespaces, user): the
    /// helper's report, which crosses a process boundary as text.
    #[error("could not set up the sandbox: {0}")]
    Setup(String),
    /// The spec could not be encoded for the helper.
    #[error("could not set up the sandbox: encode the spec: {0}")]
    EncodeSpec(#[source] serde_json::Error),
    /// The command could not be executed.
    #[error("could not execute {argv0:?}: {message}")]
    Exec {
        /// The program asked for.
        argv0: String,
        /// Why (not found, permission denied, wrong format...).
        message: String,
    },
    /// The helper ended without reporting how the command ended.
    #[error("the sandbox helper {} ended without a status ({how})", program.display())]
    HelperDied {
        /// How it ended.
        how: String,
        /// The helper program.
        program: PathBuf,
    },
    /// The step was cancelled; all its processes were killed.
    #[error("the step was cancelled")]
    Cancelled,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs steps by re-executing a helper program; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executor {
    program: PathBuf,
    args: Vec<String>,
}

impl Executor {
    /// An executor whose helper is `helper_program helper_args...`; that
    /// program must call [`helper_main`] (the worker's tests use
    /// `Executor::new(env!("CARGO_BIN_EXE_kbuild-sandbox").into(), vec![])`).
    pub fn new(helper_program: PathBuf, helper_args: Vec<String>) -> Executor {
        Executor {
            program: helper_program,
            args: helper_args,
        }
    }

    /// An executor re-executing the running program (`/proc/self/exe`, so
    /// it works even after the binary was replaced on disk) with
    /// [`SANDBOX_FLAG`].
    pub fn current_exe() -> Executor {
        Executor::new(
            PathBuf::from("/proc/self/exe"),
            vec![SANDBOX_FLAG.to_string()],
        )
    }

    /// Runs one step and waits for it: streams its output to `output` as
    /// it comes, returns how the command ended. Stops everything when
    /// `cancel` is set. Blocks the calling thread (run it on a blocking
    /// thread from async code).
    pub fn run(
        &self,
        spec: &RunSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus> {
        supervisor::run(self, spec, cancel, output)
    }
}

/// [`Executor::run`] with [`Executor::current_exe`]: for the CLI, whose
/// `main` calls [`helper_main`] on [`SANDBOX_FLAG`].
pub fn run(
    spec: &RunSpec,
    cancel: &Cancel,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<ExitStatus> {
    Executor::current_exe().run(spec, cancel, output)
}

//! What the supervisor and the helper say to each other: the spec (JSON on
//! the helper's stdin) and status lines (JSON, one a line, on fd 3).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The descriptor the helper reports on.
pub(crate) const STATUS_FD: i32 = 3;

/// A mount the sandbox init makes before `pivot_root`; targets are host
/// paths inside the root filesystem, already resolved (symlinks followed
/// within the root) and existing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum HelperMount {
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        target: PathBuf,
        size: Option<u64>,
    },
}

/// Everything the helper needs, resolved by the supervisor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HelperSpec {
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub hostname: String,
    pub new_network: bool,
    pub personality: Option<u64>,
    /// Host paths of the `/proc`, `/dev` and `/sys` mount points.
    pub proc_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sys_dir: PathBuf,
    /// Generated files and extra mounts, in order.
    pub mounts: Vec<HelperMount>,
    /// `RUN --security=insecure`: all capabilities, nothing masked or
    /// read-only beyond what the step asked for, no system call filter.
    pub privileged: bool,
    /// The system call filter (BPF instructions) installed before the
    /// command executes; `None` only when `privileged`.
    pub seccomp: Option<Vec<u8>>,
    /// The size of `/dev/shm` in bytes.
    pub shm_size: u64,
}

/// A line on the status descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Status {
    /// The sandbox init's pid as the host sees it.
    Init(i32),
    /// Setting up failed.
    Setup(String),
    /// `execve` failed.
    Exec(String),
    /// The command exited.
    Exited(i32),
    /// A signal killed the command.
    Signaled(i32),
}

//! The op graph: a [`BuildPlan`](crate::plan::BuildPlan) lowered to plain
//! operations with no Dockerfile left in them, as LLB is for BuildKit.
//!
//! [`lower`] turns every step of the plan into at most one [`Op`] (ENV,
//! LABEL... become [`ConfigOp`]s, RUN an [`ExecOp`], COPY/ADD/WORKDIR a
//! [`FileOp`], FROM and ARG nothing: an ARG leaves no history entry here), deciding every Dockerfile rule that needs no
//! image: `--chmod` modes (octal or symbolic), EXPOSE ports, STOPSIGNAL, ADD source
//! kinds and `--checksum`s, destinations against the working directory,
//! the argv of RUN heredocs (a single heredoc starting with `#!` is written
//! to a file mounted at `/dev/pipes/` and executed), the defaults of
//! `--mount` options, the RUN environment, and the history text BuildKit
//! writes. Its errors name the Dockerfile line, like the planner's.
//!
//! Every op's output is a *state*: a filesystem and an image config.
//! Source ops start one ([`SourceOp`]); every other op takes its parent
//! state as `inputs[0]` and changes the filesystem (exec, file) and/or the
//! config (config, and file for WORKDIR). Further inputs are what the op
//! reads: the build context, a stage's result (the last op of that stage:
//! stage outputs are referenced directly, not through a source op), an
//! image, a URL, a git repository, or a scratch state holding an inline
//! (heredoc) file. An op that writes a history entry leaves an
//! `empty_layer` entry when it changes no file (config ops always do).
//!
//! An op's [`OpId`] is the sha256 of [`FORMAT_VERSION`], its platform,
//! its inputs' ids and its body as JSON (not its [`OpMeta`]: moving a line
//! keeps the id), so ids are stable across runs and an op shared by several
//! target platforms appears once. Ops are listed inputs first.
//!
//! ```
//! use std::collections::BTreeMap;
//! use kbuild_dockerfile::graph::{lower, OpKind};
//! use kbuild_dockerfile::plan::{plan, NoImageConfigs, PlanOptions};
//! use kbuild_platform::Platform;
//!
//! let opts = PlanOptions {
//!     platforms: vec![Platform::parse("linux/amd64")?, Platform::parse("linux/arm64")?],
//!     build_platform: Platform::parse("linux/amd64")?,
//!     build_args: BTreeMap::new(),
//!     target: None,
//!     labels: BTreeMap::new(),
//!     named_contexts: Default::default(),
//! };
//! let p = plan("FROM busybox\nCOPY --chmod=u+x run.sh /\nEXPOSE 80\n", &opts, &NoImageConfigs)?;
//! let g = lower(&p)?;
//! assert_eq!(g.targets.len(), 2);
//! let execs = g.ops.iter().filter(|o| matches!(o.op, OpKind::Exec(_))).count();
//! assert_eq!(execs, 0);
//!
//! let bad = plan("FROM busybox\nCOPY --chmod=u+q run.sh /\n", &opts, &NoImageConfigs)?;
//! assert_eq!(
//!     lower(&bad).unwrap_err().to_string(),
//!     "Dockerfile:2: COPY --chmod=u+q run.sh /: invalid --chmod=u+q: \"u+q\" is not a mode clause; use an octal mode such as 0755 or clauses such as u+x,go-w"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chmod;
mod lower;
mod rules;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::instructions::{NetworkMode, SecurityMode, Sharing};

pub use chmod::{Chmod, ChmodError, ModeClause};
pub use lower::vertex_platform;
pub use lower::{lower, lower_pinned, Pins};
pub use rules::{
    add_source_kind, check_checksum, check_signal, copy_history, expose_history, expose_keys,
    go_duration, go_list, go_quote, go_quote_list, go_quote_rune, healthcheck_history,
    resolve_dest, run_form, run_history, AddSourceKind, ChecksumError, ExposeError, RunForm,
    SignalError, HEREDOC_PIPES,
};

/// The version of the graph format; bumped when a change would make an
/// older reader misread a graph (it is part of every op id). Version 2
/// pins image sources to digests ([`ImagePin`]), which a version-1 reader
/// would ignore and resolve the tag again.
pub const FORMAT_VERSION: u32 = 2;

/// The comment BuildKit's Dockerfile frontend puts on every history entry.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The content address of an op: `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub String);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything to build, as operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Every distinct op once, inputs before the ops that read them.
    pub ops: Vec<Op>,
    /// One per requested platform, in request order.
    pub targets: Vec<GraphTarget>,
    /// Labels to set on every target image (`--label`).
    pub labels: BTreeMap<String, String>,
}

/// A serialised graph that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The graph was written in a format version this reader does not know.
    #[error(
        "graph format version {found} is not supported; this builder reads version {supported}"
    )]
    Version {
        /// The graph's `version`.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// The bytes are not a graph of this version.
    #[error("the op graph is not valid JSON of format version {version}: {source}")]
    Json {
        /// The version the graph claims.
        version: u32,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

impl Graph {
    /// The graph as JSON, its wire form (what `--dry-run=json` prints under
    /// `graph`, compact): what a client sends a builder daemon.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Reads [`Graph::to_json`]'s bytes. The version is checked first, so a
    /// graph of another format version is [`DecodeError::Version`] however
    /// its ops look.
    pub fn from_json(bytes: &[u8]) -> Result<Graph, DecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let version = serde_json::from_slice::<Versioned>(bytes)
            .map_err(|source| DecodeError::Json {
                version: FORMAT_VERSION,
                source,
            })?
            .version;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { version, source })
    }

    /// The op with this id, if the graph has it.
    pub fn op(&self, id: &OpId) -> Option<&Op> {
        self.ops.iter().find(|o| o.id == *id)
    }

    /// For each target, in [`Graph::targets`] order, the platforms its exec
    /// ops run on: every exec op its result depends on through any input
    /// (parents, copy sources, mounts), each platform once, sorted. An
    /// empty set means the target runs no process at all (COPY-only); a set
    /// without the target's own platform is the cross-compilation pattern
    /// (`FROM --platform=$BUILDPLATFORM` stages do the work). The answer
    /// depends on the build platform the plan was made for.
    pub fn exec_platforms(&self) -> Vec<std::collections::BTreeSet<String>> {
        let index: std::collections::HashMap<&OpId, usize> = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, o)| (&o.id, i))
            .collect();
        self.targets
            .iter()
            .map(|t| {
                let mut found = std::collections::BTreeSet::new();
                let mut seen = vec![false; self.ops.len()];
                let mut stack: Vec<&OpId> = vec![&t.result];
                while let Some(id) = stack.pop() {
                    let Some(&i) = index.get(id) else { continue };
                    if std::mem::replace(&mut seen[i], true) {
                        continue;
                    }
                    let op = &self.ops[i];
                    if let (OpKind::Exec(_), Some(p)) = (&op.op, &op.platform) {
                        found.insert(p.clone());
                    }
                    stack.extend(op.inputs.iter());
                }
                found
            })
            .collect()
    }
}

/// The image for one requested platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphTarget {
    /// The requested platform (`linux/arm/v7`).
    pub platform: String,
    /// The op whose state is the image.
    pub result: OpId,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Its content address.
    pub id: OpId,
    /// The platform it runs for (`None` for platform-independent sources:
    /// scratch, the context, URLs, git).
    pub platform: Option<String>,
    /// The states it reads; `inputs[0]` is the parent state for every op
    /// but a source.
    pub inputs: Vec<OpId>,
    /// What it does.
    pub op: OpKind,
    /// Where it comes from, for people; not part of the id.
    pub meta: OpMeta,
}

/// Where an op comes from (not part of its id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMeta {
    /// First and last Dockerfile line of the instruction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lines: Option<(usize, usize)>,
    /// The progress name (`RUN go build .`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub display: Option<String>,
    /// The progress vertex names, as buildx shows them
    /// (`[linux/amd64->arm64 builder 2/4] RUN go build .`): for an exec or
    /// file op (and a config op of WORKDIR /), the name of the step that
    /// made it first; for an image source, one per distinct stage that
    /// starts `FROM` it (`[linux/amd64 builder 1/4] FROM golang`). Empty
    /// for ops shown as no vertex.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub progress: Vec<String>,
}

/// The kinds of op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OpKind {
    /// Starts a state.
    Source(SourceOp),
    /// Runs a process on `inputs[0]`.
    Exec(ExecOp),
    /// Changes files of `inputs[0]`.
    File(FileOp),
    /// Changes only the image config of `inputs[0]`.
    Config(ConfigOp),
}

/// Where a state comes from. An image or a scratch with a platform starts
/// an image config for that platform (a scratch: empty, `os`/`architecture`
/// set, working directory `/`); on Linux `PATH` is defaulted in it when missing, as BuildKit does
/// (`PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`).
/// Scratch without a platform, the context, URLs and git give files only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum SourceOp {
    /// An empty filesystem.
    Scratch,
    /// An image: its layers and config.
    Image {
        /// The reference as written (after expansion); normalized when pulled.
        reference: String,
        /// The platform to pull (`linux/arm64`).
        platform: String,
        /// What the reference resolved to when the graph was made: the
        /// image is then taken by these digests and the tag is not
        /// resolved again. `None`: resolved when the graph runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<ImagePin>,
    },
    /// Files of the build context: the paths or patterns in `include`
    /// (all of it when empty), minus `exclude` and, when `dockerignore`,
    /// what `.dockerignore` excludes.
    Context {
        /// Paths or patterns to read.
        include: Vec<String>,
        /// Patterns not to read (`--exclude`).
        exclude: Vec<String>,
        /// Whether `.dockerignore` applies.
        dockerignore: bool,
        /// The `--build-context` directory to read; the main context when
        /// `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// One file downloaded from a URL, stored as `/<filename>`.
    Http {
        /// The URL.
        url: String,
        /// The file name: the URL path's last segment (`__unnamed__` when it has none).
        filename: String,
        /// The digest the content must have (`sha256:<hex>`).
        checksum: Option<String>,
    },
    /// A git repository checked out at its root.
    Git {
        /// The repository URL without the fragment.
        remote: String,
        /// The branch, tag or commit after `#` (default branch when `None`).
        reference: Option<String>,
        /// The directory after `#ref:` to use as the root.
        subdir: Option<String>,
        /// Keep the `.git` directory.
        keep_git_dir: bool,
        /// The commit the checkout must resolve to.
        checksum: Option<String>,
    },
}

/// The digests an image source is pinned to (BuildKit's LLB pins
/// `docker-image://NAME@sha256:...` the same way after resolving it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImagePin {
    /// The digest the reference resolved to: its index, or its manifest
    /// for an image of one manifest (`sha256:<hex>`).
    pub digest: String,
    /// The digest of the source platform's manifest (equal to `digest`
    /// for an image of one manifest).
    pub manifest: String,
}

/// A process run with `inputs[0]` mounted read-write at `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// The command line, fully resolved (shell and heredocs applied).
    pub argv: Vec<String>,
    /// `NAME=value` entries: the image environment with the build args in
    /// scope laid over it (`HOME` is added at run time when missing).
    pub env: Vec<String>,
    /// The user as written (`name`, `uid`, `name:group`, `uid:gid`); empty
    /// is the image default. Resolved against the root's `/etc/passwd`
    /// and `/etc/group` when the op runs.
    pub user: String,
    /// Absolute working directory.
    pub cwd: String,
    /// Further mounts, in order.
    pub mounts: Vec<ExecMount>,
    /// `--network`.
    pub network: NetworkMode,
    /// `--security`.
    pub security: SecurityMode,
    /// The history entry the op writes.
    pub history: History,
}

/// A mount of an [`ExecOp`] besides the root; every target is absolute,
/// every BuildKit default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecMount {
    /// A directory of an input state.
    Bind {
        /// Mount point.
        target: String,
        /// Index into the op's inputs.
        input: usize,
        /// Path inside that state.
        source: String,
        /// Read-only; otherwise writes are allowed and discarded.
        readonly: bool,
    },
    /// A persistent cache directory.
    Cache {
        /// Mount point.
        target: String,
        /// Cache id (default: the absolute target).
        id: String,
        /// Sharing mode.
        sharing: Sharing,
        /// Input (index) whose `source` seeds an empty cache.
        input: Option<usize>,
        /// Path inside that input.
        source: Option<String>,
        /// Mounted read-only.
        readonly: bool,
        /// Mode of a new cache directory.
        mode: u32,
        /// Owner uid of a new cache directory.
        uid: u32,
        /// Owner gid of a new cache directory.
        gid: u32,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Mount point.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A build secret as a file and/or environment variable.
    Secret {
        /// Secret id.
        id: String,
        /// File path (`None` when only `env` is set).
        target: Option<String>,
        /// Environment variable receiving the value.
        env: Option<String>,
        /// Fail when the secret is not provided.
        required: bool,
        /// File mode.
        mode: u32,
        /// File owner uid.
        uid: u32,
        /// File owner gid.
        gid: u32,
    },
    /// An SSH agent socket.
    Ssh {
        /// Agent id.
        id: String,
        /// Socket path (default `/run/buildkit/ssh_agent.<n>`, n counting
        /// the op's ssh mounts from 0); `SSH_AUTH_SOCK` names the first.
        target: String,
        /// Fail when the agent is not provided.
        required: bool,
        /// Socket mode.
        mode: u32,
        /// Socket owner uid.
        uid: u32,
        /// Socket owner gid.
        gid: u32,
    },
}

/// File changes applied in order to `inputs[0]`, then config patches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// The changes.
    pub actions: Vec<FileAction>,
    /// Config changes (WORKDIR sets the working directory).
    pub config: Vec<ConfigPatch>,
    /// The history entry, `None` for internal ops (inline files).
    pub history: Option<History>,
}

/// One file change. Paths are absolute in the state being changed; owners
/// are as written (`name`, `uid`, `name:group`), resolved when the op runs
/// against the changed state's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FileAction {
    /// Copy from an input state.
    Copy {
        /// Index into the op's inputs.
        input: usize,
        /// Paths or patterns in that input, as written (relative ones are
        /// relative to its root).
        sources: Vec<String>,
        /// Destination; a trailing `/` means "into this directory".
        dest: String,
        /// `--chown`.
        chown: Option<String>,
        /// `--chmod`, parsed.
        chmod: Option<Chmod>,
        /// `--exclude` patterns.
        excludes: Vec<String>,
        /// `--parents`: keep the source directories.
        parents: bool,
        /// Unpack local tar archives (ADD).
        unpack: bool,
        /// `--link`: the copy does not depend on the files under it.
        link: bool,
    },
    /// Write a file.
    Mkfile {
        /// Path.
        path: String,
        /// Content.
        data: String,
        /// Mode.
        mode: u32,
        /// Owner.
        chown: Option<String>,
    },
    /// Create a directory (nothing when it exists).
    Mkdir {
        /// Path.
        path: String,
        /// Mode of created directories.
        mode: u32,
        /// Create missing parents.
        parents: bool,
        /// Owner of created directories.
        chown: Option<String>,
    },
    /// Remove a path (no Dockerfile instruction lowers to it today; part of
    /// the vocabulary for graphs from other frontends).
    Rm {
        /// Path.
        path: String,
        /// No error when it does not exist.
        allow_not_found: bool,
    },
}

/// Image config changes, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOp {
    /// The changes.
    pub patches: Vec<ConfigPatch>,
    /// The history entry (always an empty layer); `None` for internal
    /// ops (clearing the base's ONBUILD triggers once a stage ran them).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub history: Option<History>,
}

/// One image config change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "set", rename_all = "snake_case")]
pub enum ConfigPatch {
    /// Set `key=value` in `Env`, replacing an entry of that key in place.
    Env {
        /// Name.
        key: String,
        /// Value.
        value: String,
    },
    /// Set a label.
    Label {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Set `User`.
    User {
        /// As written.
        user: String,
    },
    /// Set `WorkingDir`.
    Workdir {
        /// Absolute path.
        path: String,
    },
    /// Add `ExposedPorts` keys (`80/tcp`).
    ExposedPorts {
        /// The keys.
        ports: Vec<String>,
    },
    /// Add `Volumes`.
    Volumes {
        /// The paths.
        paths: Vec<String>,
    },
    /// Set `Entrypoint`.
    Entrypoint {
        /// The argv.
        argv: Vec<String>,
        /// Also remove `Cmd` (no CMD was set earlier in the stage).
        clear_cmd: bool,
    },
    /// Set `Cmd`.
    Cmd {
        /// The argv.
        argv: Vec<String>,
    },
    /// Set `Shell`.
    Shell {
        /// The shell argv.
        argv: Vec<String>,
    },
    /// Set `StopSignal`.
    StopSignal {
        /// The signal as written.
        signal: String,
    },
    /// Set `Healthcheck`.
    Healthcheck {
        /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", script]`.
        test: Vec<String>,
        /// Nanoseconds; `None` inherits the default.
        interval: Option<u64>,
        /// Nanoseconds.
        timeout: Option<u64>,
        /// Nanoseconds.
        start_period: Option<u64>,
        /// Nanoseconds.
        start_interval: Option<u64>,
        /// Retries; `None` inherits the default.
        retries: Option<u32>,
    },
    /// Append an `OnBuild` trigger.
    OnBuild {
        /// The trigger text.
        expression: String,
    },
    /// Set `author` (MAINTAINER).
    Author {
        /// The name.
        name: String,
    },
    /// Remove every `OnBuild` trigger: a stage that starts from a base with
    /// triggers runs them as its first ops and does not pass them on.
    ClearOnBuild,
}

/// A history entry of the image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// `created_by`, as BuildKit writes it.
    pub created_by: String,
    /// `comment` ([`HISTORY_COMMENT`]).
    pub comment: String,
}

impl History {
    fn new(created_by: String) -> History {
        History {
            created_by,
            comment: HISTORY_COMMENT.to_string(),
        }
    }
}

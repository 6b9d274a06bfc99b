//! Build failures: [`SolveError`] for the build, [`StepError`] for what
//! went wrong inside one op. Every variant that wraps another error keeps
//! it as its source; messages are one sentence naming the step, image,
//! layer or path at fault.

use std::path::PathBuf;
use std::sync::Arc;

use kbuild_dockerfile::graph::OpId;
use kbuild_dockerfile::plan;
use kbuild_worker::executor::ExitStatus;

use crate::copy::CopyError;
use crate::download::DownloadError;
use crate::mounts::RunSetupError;
use crate::users::UserError;

/// A build failure. Its Display is one line naming the step or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The Dockerfile does not plan.
    #[error(transparent)]
    Plan(#[from] plan::Error),
    /// An `oci-layout://` build context could not be read.
    #[error("--build-context {reference}: {source}")]
    Layout {
        /// The `oci-layout://` value.
        reference: String,
        /// Why.
        source: Box<crate::layout::LayoutError>,
    },
    /// A step failed; `step` is its progress name.
    #[error("{step}: {source}")]
    Step {
        /// `[platform stage i/n] INSTRUCTION`.
        step: String,
        /// What went wrong.
        source: StepError,
    },
    /// An output could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A pulled image lacks the manifest the pull was for.
    #[error("{reference}: pulled image has no {platform} manifest")]
    PulledWithoutPlatform {
        /// The image reference.
        reference: String,
        /// The platform pulled.
        platform: String,
    },
    /// A stored image's config and manifest disagree.
    #[error("image {reference}: config lists {config} layers but the manifest {manifest}")]
    LayerCount {
        /// The image reference.
        reference: String,
        /// Layers in the config's `rootfs.diff_ids`.
        config: usize,
        /// Layers in the manifest.
        manifest: usize,
    },
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] kbuild_image::Error),
    /// The snapshotter failed.
    #[error("snapshots: {0}")]
    Snapshot(#[from] kbuild_worker::snapshot::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] kbuild_registry::Error),
    /// A failure shared by several waiters (an op many platforms need).
    #[error("{0}")]
    Shared(Arc<SolveError>),
    /// A platform's exec ops cannot run on this machine.
    #[error(transparent)]
    Emulation(#[from] kbuild_worker::binfmt::Error),
    /// A step asks for a privilege the build was not granted.
    #[error("{file}:{line}: {instruction} needs the {entitlement} entitlement, which this build does not grant")]
    EntitlementDenied {
        /// The Dockerfile's name.
        file: String,
        /// The step's first line.
        line: usize,
        /// The instruction as written (shortened).
        instruction: String,
        /// The entitlement (`security.insecure`).
        entitlement: &'static str,
    },
    /// `-o type=containerd` failed (names the socket).
    #[error(transparent)]
    Containerd(#[from] kbuild_containerd::Error),
    /// A build thread died.
    #[error("internal error: a build thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The CPU slots were closed (the solver is going away).
    #[error("internal error: the build's CPU slots are closed")]
    Slots(#[from] tokio::sync::AcquireError),
    /// A cache record could not be written.
    #[error("cache record: {0}")]
    Record(#[source] serde_json::Error),
    /// A layer could not be unpacked or applied (an entry the layer policy
    /// rejects, or a filesystem error).
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer blob's digest.
        digest: String,
        /// What went wrong, naming the entry.
        source: kbuild_worker::snapshot::Error,
    },
    /// An image would have to be pulled for a platform that does not exist
    /// (`linux/arm65`, `foo/bar`, `linux/arm/v9`): only stages that start
    /// `FROM scratch` build for such a platform.
    #[error("{source}; only FROM scratch stages build for an unknown platform, but {image} would have to be pulled for it")]
    UnknownPlatform {
        /// The image the plan needs for that platform.
        image: String,
        /// Why the platform is unknown (names it, lists the supported ones).
        source: kbuild_platform::Error,
    },
    /// A base image (from the local store) offers no manifest for the
    /// wanted platform, even after containerd's compatibility fallbacks.
    #[error("{image} has no image for platform {wanted}; it provides: {}; pick one of those with --platform", offered.join(", "))]
    PlatformNotOffered {
        /// The image reference.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the image offers.
        offered: Vec<String>,
    },
    /// A graph this builder cannot read.
    #[error(
        "graph format version {found} is not supported; this builder reads version {supported}"
    )]
    GraphVersion {
        /// The graph's version.
        found: u32,
        /// [`kbuild_dockerfile::graph::FORMAT_VERSION`].
        supported: u32,
    },
    /// An image source's pin is not a digest.
    #[error("image {reference} is pinned to {digest:?}, which is not a digest: {source}")]
    InvalidPin {
        /// The reference as written.
        reference: String,
        /// The pinned value.
        digest: String,
        /// Why it does not parse.
        #[source]
        source: Box<kbuild_image::Error>,
    },
    /// The pinned image's manifest for the platform is not the one the
    /// graph was planned with.
    #[error("image {reference}@{} gives manifest {found} for {platform}, but the build was planned with {}; plan the build again", pin.digest, pin.manifest)]
    PinnedManifest {
        /// The reference as written.
        reference: String,
        /// The platform.
        platform: String,
        /// The digests the graph names.
        pin: Box<kbuild_dockerfile::graph::ImagePin>,
        /// The manifest the image gives.
        found: String,
    },
    /// An op of the graph is malformed (a graph not made by `lower`).
    #[error("op {op}: {problem}")]
    InvalidOp {
        /// The op.
        op: OpId,
        /// What is wrong.
        problem: GraphProblem,
    },
    /// A platform string of the graph does not parse.
    #[error("op {op}: platform {value}: {source}")]
    OpPlatform {
        /// The op.
        op: OpId,
        /// The string.
        value: String,
        /// Why it does not parse.
        source: Box<kbuild_platform::Error>,
    },
}

/// What is wrong with an op of a received graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphProblem {
    /// An input id that is not in the graph.
    #[error("reads {0}, which the graph does not have")]
    MissingInput(OpId),
    /// An op other than a source without `inputs[0]`.
    #[error("has no parent state (inputs[0])")]
    NoParent,
    /// An input index beyond `inputs`.
    #[error("names input {0}, which it does not have")]
    InputIndex(usize),
    /// An input whose kind cannot be used this way.
    #[error("input {0} is not a filesystem state (a context or download cannot be a parent or a mount here)")]
    NotAState(usize),
    /// A target result that is not an image state.
    #[error("is a target but gives no image")]
    NotAnImage,
    /// An image source whose image was not resolved before the build.
    #[error("image {0} was not resolved")]
    Unresolved(String),
}

/// What went wrong inside one op.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Copying files failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// A user or group is not in the image.
    #[error(transparent)]
    User(#[from] UserError),
    /// An exec op's mounts could not be set up.
    #[error(transparent)]
    Mounts(#[from] RunSetupError),
    /// The sandbox could not run the process.
    #[error(transparent)]
    Executor(#[from] kbuild_worker::executor::Error),
    /// The process failed.
    #[error("process \"{argv}\" did not complete successfully: {status}{}", last_output(.last))]
    Failed {
        /// The argv, joined by spaces.
        argv: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last lines of output.
        last: Vec<String>,
    },
    /// Mounting a filesystem failed.
    #[error("mount the {what} filesystem: {source}")]
    Mount {
        /// `root`, `source`, `--mount source`.
        what: &'static str,
        /// Why.
        source: kbuild_worker::snapshot::Error,
    },
    /// Unmounting or keeping the result failed.
    #[error("{action}: {source}")]
    Snapshot {
        /// `unmount`, `keep the layer`.
        action: &'static str,
        /// Why.
        source: kbuild_worker::snapshot::Error,
    },
    /// Writing the layer failed.
    #[error("write the layer: {0}")]
    Layer(#[from] LayerError),
    /// Downloading a URL failed.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// ADD of a git repository failed.
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    /// Files of the context are wanted but there is none.
    #[error(
        "there is no build context (the Dockerfile came from stdin); give a context directory"
    )]
    NoContext,
    /// A graph reads a `--build-context` directory the build was not given.
    #[error("the build reads the build context {0:?}, which was not given; pass --build-context {0}=DIR")]
    NoNamedContext(String),
    /// Several sources into something not marked as a directory.
    #[error("{instruction} with more than one source needs a destination directory ending with /: {dest}")]
    DestNotDir {
        /// `COPY` or `ADD`.
        instruction: &'static str,
        /// The destination.
        dest: String,
    },
    /// A file operation failed on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// VOLUME with an empty path.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
}

fn last_output(last: &[String]) -> String {
    if last.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", last.join(" | "))
    }
}

/// Writing a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The store or the compressor failed.
    #[error(transparent)]
    Store(#[from] kbuild_image::Error),
    /// Reading the upper directory failed.
    #[error(transparent)]
    Diff(#[from] kbuild_worker::snapshot::Error),
    /// Moving data to the compressor failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The compressor thread panicked.
    #[error("the layer compressor panicked")]
    CompressorPanicked,
    /// The tar producer failed, so the compressor dropped the layer.
    #[error("the layer was abandoned")]
    Abandoned,
}

/// Why an output could not be written; each names the output, file or
/// daemon at fault.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// `-o type=docker` of a multi-platform build.
    #[error("-o type=docker holds one platform but {} were built ({}); build one --platform or use -o type=oci", .platforms.len(), .platforms.join(", "))]
    DockerOnePlatform {
        /// The platforms built.
        platforms: Vec<String>,
    },
    /// A file output without a destination.
    #[error("this output needs dest=PATH")]
    NoDest,
    /// `--load` could not reach or use the Docker daemon.
    #[error(transparent)]
    Load(#[from] crate::docker_load::LoadError),
    /// `--load` could not stage the archive.
    #[error("stage the image for --load: {0}")]
    StageLoad(#[source] std::io::Error),
    /// A file or directory of an output could not be written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// `create`, `write`, `rename into`...
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A filesystem tar (from a build daemon) could not be applied.
    #[error("{}: {source}", dest.display())]
    Apply {
        /// The output's destination.
        dest: PathBuf,
        /// Why, naming the entry.
        source: kbuild_worker::snapshot::Error,
    },
}

/// A result many waiters share.
pub(crate) type Shared<T> = Result<T, Arc<SolveError>>;

/// An error as a shared one (not wrapping a shared one twice).
pub(crate) fn share(e: SolveError) -> Arc<SolveError> {
    match e {
        SolveError::Shared(a) => a,
        other => Arc::new(other),
    }
}

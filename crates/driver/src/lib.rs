//! Builders on other machines, client side: the builder definitions that
//! `kubectl build create/ls/rm/use` keep in
//! `$XDG_CONFIG_HOME/kubectl-build/builders.json` ([`config`]), and
//! connecting to a `kubectl-build serve` node with its TLS options, a
//! timeout and the protocol version check ([`connect`]), and which node
//! builds which target platform ([`schedule`]).
//!
//! The embedded builder is always available as the builder named
//! [`LOCAL`]; it has no entry in the file and cannot be removed.

#![deny(missing_docs)]

pub mod config;
pub mod connect;
pub mod kubernetes;
pub mod prune;
pub mod schedule;
pub mod session;

pub use config::{Builder, Config, Node, TlsOptions, LOCAL};
pub use connect::{connect, handshake, info, Dialer, Dialing, Direct, NodeInfo};
pub use schedule::{schedule, Assignment, Candidate, Reason, ScheduleError};

/// What went wrong with a builder definition or a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No configuration directory could be chosen.
    #[error(
        "cannot find a configuration directory for the builder list; set $XDG_CONFIG_HOME or $HOME"
    )]
    NoConfigDir,
    /// The builder file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The builder file is not valid.
    #[error("{path} is not a valid builder list: {source}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The builder file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: kbuild_image::Error,
    },
    /// A builder name that cannot be used.
    #[error("invalid builder name {name:?}: use letters, digits, '-', '_' and '.', starting with a letter or digit")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// `create` of a name that exists, without `--append`.
    #[error("builder {name} already exists; pass --append to add a node to it, or remove it first with \"kubectl build rm {name}\"")]
    Exists {
        /// The name.
        name: String,
    },
    /// A builder that is not defined.
    #[error("no builder named {name}; \"kubectl build ls\" lists them")]
    NotFound {
        /// The name.
        name: String,
    },
    /// An attempt to change the embedded builder.
    #[error("the local builder is built in and cannot be {action}")]
    Local {
        /// `removed`, `replaced`.
        action: &'static str,
    },
    /// An unknown `--driver`.
    #[error("unknown driver {driver:?}; this version supports \"remote\" and \"kubernetes\"")]
    Driver {
        /// The driver given.
        driver: String,
    },
    /// A malformed endpoint.
    #[error(transparent)]
    Endpoint(Box<kbuild_proto::Error>),
    /// A malformed `--platform` list.
    #[error("--platform {list:?}: {source}")]
    Platforms {
        /// The list.
        list: String,
        /// Why (boxed: it is large).
        source: Box<kbuild_platform::Error>,
    },
    /// A malformed or inconsistent `--driver-opt`.
    #[error("--driver-opt {opt:?}: {reason}")]
    DriverOpt {
        /// The option.
        opt: String,
        /// Why.
        reason: &'static str,
    },
    /// A TLS file named by `--driver-opt` cannot be read.
    #[error("--driver-opt {key}={path}: {source}")]
    TlsFile {
        /// `cacert`, `cert`, `key`.
        key: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The node did not answer in time.
    #[error("builder {builder} at {endpoint} did not answer within {}s", timeout.as_secs_f32())]
    Timeout {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// How long we waited.
        timeout: std::time::Duration,
    },
    /// The node could not be reached.
    #[error(
        "builder {builder} at {endpoint} is unreachable: {}",
        connect::chain(source)
    )]
    Unreachable {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The node answered the call with an error.
    #[error("builder {builder} at {endpoint}: {}", connect::status_text(source))]
    Rpc {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// The gRPC status (boxed: it is large).
        source: Box<tonic::Status>,
    },
    /// The node closed or garbled the connection in a way that points at
    /// the TLS setup on one side.
    #[error("builder {builder} at {endpoint} refused the connection: {hint} [{source}]")]
    Refused {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// What to check, in one sentence.
        hint: &'static str,
        /// What the connection reported.
        source: Box<Error>,
    },
    /// The node speaks a protocol this client does not.
    #[error("builder {builder} at {endpoint} speaks protocol {daemon}, this kubectl-build speaks {client}; {advice}")]
    Protocol {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// The daemon's newest protocol (0: not a kubectl-build daemon).
        daemon: u32,
        /// This client's newest protocol.
        client: u32,
        /// Which side to upgrade.
        advice: &'static str,
    },
    /// The node sent a platform that does not parse.
    #[error("builder {builder} at {endpoint}: {source}")]
    BadPlatform {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// Why (boxed: it is large).
        source: Box<kbuild_proto::Error>,
    },
    /// The connection to a builder broke during a build.
    #[error("lost the connection to builder {builder} ({host} at {endpoint}) during the build: {}; the build there is cancelled", connect::status_text(source))]
    Lost {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// The node's host name (from Info).
        host: String,
        /// What the transport said.
        source: Box<tonic::Status>,
    },
    /// The node's daemon is stopping (SIGTERM) and cancelled the build
    /// (`BuildDone.shutting_down`): the node is lost, not the build failed.
    #[error("builder {builder} ({host} at {endpoint}) is shutting down and cancelled the build: {reason}")]
    ShuttingDown {
        /// The builder.
        builder: String,
        /// The node's endpoint.
        endpoint: kbuild_proto::Endpoint,
        /// The node's host name (from Info).
        host: String,
        /// The daemon's message.
        reason: String,
    },
    /// The session could not go on on this side (a result could not be
    /// written, the context could not be sent).
    #[error("build on builder {builder}: {source}")]
    ClientSide {
        /// The builder.
        builder: String,
        /// Why.
        source: session::ClientError,
    },
    /// A context file could not be read.
    #[error("build context {path}: {source}")]
    Context {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A builder pod could not be reached through the API server.
    #[error("builder {builder} at {endpoint}: {source}")]
    Pod {
        /// The builder.
        builder: String,
        /// The pod (`kubernetes://NAMESPACE/POD`).
        endpoint: kbuild_proto::Endpoint,
        /// Why.
        source: Box<kubernetes::Error>,
    },
    /// A `kubernetes://` node dialed without a cluster client.
    #[error("builder {builder} at {endpoint} is a pod: it is reached through the Kubernetes API server (the kubernetes driver), not dialed directly")]
    NeedsCluster {
        /// The builder.
        builder: String,
        /// The pod.
        endpoint: kbuild_proto::Endpoint,
    },
    /// A kubernetes driver operation failed.
    #[error(transparent)]
    Kubernetes(Box<kubernetes::Error>),
    /// The user interrupted the build (Ctrl-C); the builder was told.
    #[error("build cancelled (interrupted) on builder {builder}; nothing was tagged")]
    Cancelled {
        /// The builder.
        builder: String,
    },
}

//! The one error type of this crate: every message names the registry or input at
//! fault and what to do about it.

use std::time::Duration;

use crate::timeouts::{show, Timeouts};

/// Why a manifest, index or image config is not usable
/// ([`Error::InvalidManifest`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestProblem {
    /// It is not JSON of a manifest or index.
    #[error("{0}")]
    Json(#[source] serde_json::Error),
    /// The image model refuses it (a manifest or config that does not parse).
    #[error("{0}")]
    Model(#[source] kbuild_image::Error),
    /// It is larger than the limit.
    #[error("it is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Its media type is neither an index nor a manifest.
    #[error("media type {0} is neither an image index nor an image manifest")]
    MediaType(String),
    /// An index was expected.
    #[error("media type {0} is not an image index")]
    NotAnIndex(String),
    /// A manifest without a config.
    #[error("it has no config")]
    NoConfig,
    /// Indexes nested deeper than the limit.
    #[error("indexes are nested more than {0} deep")]
    TooDeep(usize),
    /// A digest it lists is not one the content store takes.
    #[error("digest {text:?} is not usable: {source}")]
    Digest {
        /// The digest as written.
        text: String,
        /// Why it is refused.
        #[source]
        source: kbuild_image::Error,
    },
}

/// Why a reference string is refused ([`Error::InvalidReference`]): the
/// rule it breaks and the part that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceProblem {
    /// The reference is empty.
    #[error("it is empty")]
    Empty,
    /// The reference is longer than the grammar allows.
    #[error("it is longer than 4096 characters")]
    TooLong,
    /// Registry and repository together are longer than the grammar allows.
    #[error("the name is longer than 255 characters")]
    NameTooLong,
    /// A digest without `ALGORITHM:`.
    #[error("digest {digest:?} has no algorithm prefix like sha256:")]
    DigestNoAlgorithm {
        /// The digest as written.
        digest: String,
    },
    /// A digest algorithm other than sha256, sha384 or sha512.
    #[error("digest algorithm {algorithm:?} is not supported")]
    DigestAlgorithm {
        /// The algorithm as written.
        algorithm: String,
    },
    /// A digest whose hex part has the wrong length or characters.
    #[error(
        "digest {digest:?} must be {hex_len} lowercase hexadecimal characters after {algorithm}:"
    )]
    DigestHex {
        /// The digest as written.
        digest: String,
        /// Its algorithm.
        algorithm: &'static str,
        /// How many hex characters that algorithm has.
        hex_len: usize,
    },
    /// A tag outside the tag grammar.
    #[error(
        "tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    Tag {
        /// The tag as written.
        tag: String,
    },
    /// An IPv6 registry host without its `]`.
    #[error("registry host {host:?} has an unclosed '['")]
    HostUnclosed {
        /// The host as written.
        host: String,
    },
    /// A bracketed registry host that is not an IPv6 address.
    #[error("registry host {host:?} is not a valid IPv6 address")]
    HostIpv6 {
        /// The host as written.
        host: String,
    },
    /// Text after an IPv6 host's `]` that is not `:PORT`.
    #[error("registry host {host:?} has junk after ']'")]
    HostJunk {
        /// The host as written.
        host: String,
    },
    /// A registry host name with an invalid label.
    #[error("registry host {host:?} is not a valid host name")]
    HostName {
        /// The host as written.
        host: String,
    },
    /// A registry port that is not a number from 0 to 65535.
    #[error("registry host {host:?} has an invalid port")]
    HostPort {
        /// The host as written.
        host: String,
        /// Why the port does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// No repository after the registry.
    #[error("the repository name is empty")]
    EmptyRepository,
    /// A repository path component outside the grammar.
    #[error("repository {path:?}: {problem}")]
    Repository {
        /// The repository path as written.
        path: String,
        /// What is wrong with the component.
        #[source]
        problem: ComponentProblem,
    },
    /// A target pins a digest other than the content being pushed.
    #[error("it pins digest {pinned} but the {what} being pushed is {pushed}")]
    PinnedDigest {
        /// The digest the reference pins.
        pinned: String,
        /// What is pushed: `image` or `index`.
        what: &'static str,
        /// The digest of what is pushed.
        pushed: kbuild_image::Digest,
    },
}

/// Why one component of a repository path is refused
/// ([`ReferenceProblem::Repository`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentProblem {
    /// Two slashes in a row, or one at an end.
    #[error("it has an empty path component")]
    Empty,
    /// An upper-case letter.
    #[error("{0:?} must be lowercase")]
    Uppercase(String),
    /// A separator at the start or end.
    #[error("{0:?} must start and end with a letter or digit")]
    Edge(String),
    /// A run of separators other than `.`, `_`, `__` or dashes.
    #[error("{component:?} has the invalid separator {separator:?}")]
    Separator {
        /// The component.
        component: String,
        /// The separator in it.
        separator: String,
    },
}

/// Why a credential helper gave no credentials ([`Error::CredentialHelper`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperProblem {
    /// The program could not be started.
    #[error("cannot run {program}: {source}; install it or remove it from the config")]
    Spawn {
        /// `docker-credential-NAME`.
        program: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the running program failed.
    #[error("{program} failed: {source}")]
    Io {
        /// `docker-credential-NAME`.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than the helper limit and was killed.
    #[error("{program} get did not finish within {}; it may be waiting for a login or for input: run `echo {server} | {program} get` to see, or raise the limit with --registry-timeout helper=DURATION", show(*limit))]
    TimedOut {
        /// `docker-credential-NAME`.
        program: String,
        /// The server URL it was asked about.
        server: String,
        /// The helper limit.
        limit: Duration,
    },
    /// It exited unsuccessfully (and not with "credentials not found").
    #[error("{program} get exited with {status}: {said}")]
    Exited {
        /// `docker-credential-NAME`.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The first line it printed (standard output, else standard error).
        said: String,
    },
    /// Its answer is not the credentials JSON.
    #[error("{program} printed something that is not credentials JSON: {source}")]
    Answer {
        /// `docker-credential-NAME`.
        program: String,
        /// Why the answer does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// What is wrong with a credentials source ([`Error::Credentials`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsProblem {
    /// An `auths` entry's `auth` decodes to bytes that are not UTF-8.
    #[error("`auth` does not decode to UTF-8 text")]
    AuthNotUtf8(#[source] std::string::FromUtf8Error),
    /// An `auths` entry's `auth` has no `:` between user name and password.
    #[error("`auth` must decode to username:password")]
    AuthNotPair,
    /// A registry secret file holds another kind of object.
    #[error("it is a {kind}, not a Secret")]
    NotASecret {
        /// The object's `kind`.
        kind: String,
    },
    /// A registry secret of another type than a Docker config.
    #[error("the Secret has type {secret_type}; it must be {} (create it with `kubectl create secret docker-registry`)", crate::credentials::DOCKERCONFIGJSON_TYPE)]
    SecretType {
        /// The Secret's `type`.
        secret_type: String,
    },
    /// A registry secret's `data[.dockerconfigjson]` is not base64.
    #[error("data[.dockerconfigjson] is not valid base64: {0}")]
    SecretBase64(#[source] base64::DecodeError),
    /// A bare Docker config in a secret file that cannot be written as JSON.
    #[error("{0}")]
    SecretJson(#[source] serde_json::Error),
    /// A registry secret file with no Docker config in it.
    #[error("it has neither data[.dockerconfigjson] nor an `auths` map")]
    NoDockerConfig,
}

/// What the client was waiting for when a [`Error::Timeout`] struck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// A TCP/TLS connection.
    Connect,
    /// The registry to take more of the request body.
    Send,
    /// The first byte of the reply after the whole request was sent.
    Response,
    /// More of the reply body.
    Body,
    /// The token endpoint's whole answer.
    Token,
}

impl Wait {
    fn what(self) -> &'static str {
        match self {
            Wait::Connect => "accepted no connection",
            Wait::Send => "stopped taking the request body",
            Wait::Response => "sent no reply",
            Wait::Body => "stopped sending the reply",
            Wait::Token => "(its token endpoint) gave no token",
        }
    }

    /// The name of the limit in a timeout specification.
    pub fn kind(self) -> &'static str {
        match self {
            Wait::Connect => "connect",
            Wait::Send | Wait::Body => "idle",
            Wait::Response => "response",
            Wait::Token => "token",
        }
    }
}

fn lost(sent: bool) -> &'static str {
    if sent {
        "after the request was sent, so its reply was lost (the registry may have acted on it)"
    } else {
        "before the request was sent"
    }
}

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference string does not follow the reference grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        #[source]
        reason: ReferenceProblem,
    },
    /// A reference whose registry or repository makes no usable request URL.
    #[error("invalid image reference {reference:?}: {what}{source}")]
    RequestUrl {
        /// The registry, repository or reference.
        reference: String,
        /// What could not be made (`cannot build a request URL: `), or empty.
        what: &'static str,
        /// Why the URL does not parse.
        #[source]
        source: url::ParseError,
    },
    /// The registry could not be reached at all.
    #[error(
        "cannot reach registry {registry} ({url}): {}; {}",
        crate::client::error_chain(source),
        unreachable_advice(registry, url)
    )]
    Unreachable {
        /// Registry name.
        registry: String,
        /// URL that failed.
        url: String,
        /// Underlying transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be set up (TLS roots, proxy settings).
    #[error(
        "cannot reach registry (any) (): cannot set up the HTTP client: {}; {}",
        crate::client::error_chain(source),
        unreachable_advice("(any)", "")
    )]
    HttpClient {
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A blob download kept getting range answers it cannot use.
    #[error(
        "cannot reach registry {registry} ({url}): gave up on {what} after {attempts} attempts with unusable range answers; {}",
        unreachable_advice(registry, url)
    )]
    UnusableRanges {
        /// Registry name.
        registry: String,
        /// The blob's URL.
        url: String,
        /// Which blob, of which repository.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The registry's token endpoint could not be reached.
    #[error(
        "cannot reach registry {registry} ({url}): {source}; {}",
        unreachable_advice(registry, url)
    )]
    TokenUnreachable {
        /// Registry name.
        registry: String,
        /// The token endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: crate::auth::TokenError,
    },
    /// The registry's token endpoint answered without a usable token.
    #[error("registry {registry} answered HTTP 0 to {action}: {source}")]
    Token {
        /// Registry name.
        registry: String,
        /// The token request (`token request for repository:a/b:pull`).
        action: String,
        /// What the endpoint answered.
        #[source]
        source: crate::auth::TokenError,
    },
    /// The registry refused the credentials (or their absence).
    #[error("registry {registry} denied {action} access to {repository} (HTTP {status}) using {tried}; log in with `docker login {registry}` or pass --registry-secret with credentials that grant {action} access")]
    Unauthorized {
        /// Registry name.
        registry: String,
        /// Repository asked for.
        repository: String,
        /// `pull` or `pull,push`.
        action: String,
        /// HTTP status (401 or 403).
        status: u16,
        /// Where the credentials came from (never the secret itself), or "no credentials".
        tried: String,
    },
    /// The tag or digest does not exist in the repository.
    #[error("{reference} not found: registry {registry} has no manifest for {key} in {repository}; check the image name and tag")]
    ManifestUnknown {
        /// The full reference.
        reference: String,
        /// Registry name.
        registry: String,
        /// Repository.
        repository: String,
        /// Tag or digest asked for.
        key: String,
    },
    /// Content did not hash to the digest it was requested by.
    #[error("digest mismatch for {what} from registry {registry}: expected {expected}, got {actual}; the registry or a proxy in between served wrong content, retry or report it to the registry operator")]
    DigestMismatch {
        /// What was fetched (blob or manifest with its repository).
        what: String,
        /// Registry name.
        registry: String,
        /// Digest requested.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// A blob's length is not the one its descriptor gives.
    #[error("size mismatch for {what} from registry {registry}: its descriptor says {expected} bytes but {actual} bytes arrived; the registry or a proxy in between cut or padded it, retry or report it to the registry operator")]
    SizeMismatch {
        /// What was fetched (blob with its repository and digest).
        what: String,
        /// Registry name.
        registry: String,
        /// Size in the descriptor.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// An index has no manifest for the wanted platform.
    #[error("{reference} has no image for platform {wanted}; it provides: {}; pick one of those with --platform", available.join(", "))]
    PlatformNotFound {
        /// The reference pulled.
        reference: String,
        /// Platform asked for.
        wanted: String,
        /// Platforms the index lists.
        available: Vec<String>,
    },
    /// Any other unexpected registry answer.
    #[error("registry {registry} answered HTTP {status} to {action}: {message}")]
    Registry {
        /// Registry name.
        registry: String,
        /// What was being done (e.g. "PUT manifest sha256:... in repo").
        action: String,
        /// HTTP status.
        status: u16,
        /// Error codes/messages from the body, if any.
        message: String,
    },
    /// A manifest or index could not be understood.
    #[error("invalid manifest {what} from {source_name}: {reason}")]
    InvalidManifest {
        /// Which manifest (reference or digest).
        what: String,
        /// Registry or local store it came from.
        source_name: String,
        /// What is wrong with it.
        #[source]
        reason: Box<ManifestProblem>,
    },
    /// A credentials source could not be read or parsed: the reading or
    /// parsing error is kept.
    #[error("cannot read registry credentials from {source_name}: {what}{source}")]
    CredentialsSource {
        /// The config file, secret file or helper.
        source_name: String,
        /// What was being read (`not a Docker config JSON: `), or empty.
        what: &'static str,
        /// The reading or parsing error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A build daemon asked for a token with a scope it is never handed.
    #[error("the builder asked for a {registry} token with scope {scope:?}; only repository:NAME:pull and repository:NAME:pull,push tokens are handed to a builder")]
    ScopeRefused {
        /// Registry name.
        registry: String,
        /// The scope refused (empty: none was named).
        scope: String,
    },
    /// A build daemon named a token endpoint other than the one the
    /// registry announces: the client's credentials are not sent there.
    #[error("the builder asked for a {registry} token from {asked}, but {registry} sends clients to {announced}; the credentials were not sent")]
    RealmMismatch {
        /// Registry name.
        registry: String,
        /// The endpoint the builder named.
        asked: String,
        /// The endpoint the registry names.
        announced: String,
    },
    /// A credentials source holds something it cannot use.
    #[error("cannot read registry credentials from {source_name}: {problem}")]
    Credentials {
        /// The config file or secret file (with the entry at fault).
        source_name: String,
        /// What is wrong with it.
        #[source]
        problem: Box<CredentialsProblem>,
    },
    /// A credential helper (`docker-credential-NAME get`) gave no answer.
    #[error("cannot read registry credentials from {source_name}: {problem}")]
    CredentialHelper {
        /// `credential helper PROGRAM (named in CONFIG)`.
        source_name: String,
        /// What went wrong.
        #[source]
        problem: Box<HelperProblem>,
    },
    /// `--registry-secret NAME` needs cluster access that is not available.
    #[error("registry secret {name:?} would be read from the Kubernetes cluster, which needs the kubernetes driver (not available yet); pass --registry-secret file:PATH with the Secret saved as YAML or JSON, or log in with `docker login`")]
    SecretNeedsCluster {
        /// Secret name given.
        name: String,
    },
    /// The registry (or its token endpoint) went silent for longer than a limit.
    #[error("registry {registry} {} within {} during {operation}; if it is only slow, raise the limit with --registry-timeout {}=DURATION (or {})", wait.what(), show(*limit), wait.kind(), Timeouts::ENV)]
    Timeout {
        /// Registry name.
        registry: String,
        /// What was being done.
        operation: String,
        /// What was awaited.
        wait: Wait,
        /// The limit that ran out.
        limit: Duration,
    },
    /// The connection broke while a request was under way.
    #[error("connection to registry {registry} broke during {operation} {}: {}", lost(*sent), crate::client::error_chain(source))]
    ConnectionLost {
        /// Registry name.
        registry: String,
        /// What was being done.
        operation: String,
        /// Whether the whole request had been sent (the reply is what was lost).
        sent: bool,
        /// The transport error.
        source: reqwest::Error,
    },
    /// Retries did not help; the first failure usually explains the later ones.
    #[error("{}", gave_up(operation, registry, *attempts, first, last.as_deref()))]
    GaveUp {
        /// Registry name.
        registry: String,
        /// What was being done.
        operation: String,
        /// Attempts made.
        attempts: u32,
        /// The first failure.
        #[source]
        first: Box<Error>,
        /// The failure that ended the retries, when it differs from the first.
        last: Option<Box<Error>>,
    },
    /// A background blob upload ended without an outcome (it panicked or
    /// was stopped).
    #[error("the upload of {what} to registry {registry} stopped: {source}; push again")]
    UploadStopped {
        /// Which blob, to which repository.
        what: String,
        /// Registry name.
        registry: String,
        /// Why the task ended.
        source: tokio::task::JoinError,
    },
    /// The local content store failed.
    #[error("content store: {what}: {source}")]
    Store {
        /// What was being read or written.
        what: String,
        /// Underlying error.
        #[source]
        source: kbuild_image::Error,
    },
    /// Writing or reading a blob file of the content store failed.
    #[error("content store: {what}: {source}")]
    StoreIo {
        /// What was being read or written.
        what: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A blob to push is not in the content store.
    #[error("content store: {what}: the blob is not in the content store; build or pull the image again")]
    NotInStore {
        /// What was being pushed.
        what: String,
    },
}

fn gave_up(
    operation: &str,
    registry: &str,
    attempts: u32,
    first: &Error,
    last: Option<&Error>,
) -> String {
    match last {
        Some(last) => format!(
            "{operation} at registry {registry} failed after {attempts} attempts; first: {first}; last: {last}"
        ),
        None => format!("{first} ({attempts} attempts failed the same way)"),
    }
}

impl Error {
    /// The failure that started it: the first of [`Error::GaveUp`], else the error itself.
    pub fn first_cause(&self) -> &Error {
        match self {
            Error::GaveUp { first, .. } => first,
            other => other,
        }
    }

    /// Whether another attempt may succeed: the registry could not be reached,
    /// timed out, dropped the connection, or answered 429 or 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::UnusableRanges { .. }
            | Error::TokenUnreachable { .. }
            | Error::Timeout { .. }
            | Error::ConnectionLost { .. } => true,
            Error::Registry { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to check when a registry cannot be reached: the address and the
/// network, and `--insecure-registry` only where HTTPS was tried.
fn unreachable_advice(registry: &str, url: &str) -> String {
    if url.starts_with("http://") {
        "check that the registry runs at that address and that the network reaches it".to_string()
    } else {
        format!("check the registry address and network, and pass --insecure-registry {registry} if it serves plain HTTP")
    }
}

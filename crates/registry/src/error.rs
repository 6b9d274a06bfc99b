//! The one error type of this crate: every message names the registry or input at
//! fault and what to do about it.

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
        reason: String,
    },
    /// The registry could not be reached at all.
    #[error("cannot reach registry {registry} ({url}): {cause}; check the registry address and network, and pass --insecure-registry {registry} if it serves plain HTTP")]
    Unreachable {
        /// Registry name.
        registry: String,
        /// URL that failed.
        url: String,
        /// Underlying transport error.
        cause: String,
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
        /// Parse error.
        reason: String,
    },
    /// A credentials source could not be read.
    #[error("cannot read registry credentials from {source_name}: {reason}")]
    Credentials {
        /// The config file, secret file or helper.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// `--registry-secret NAME` needs cluster access that is not available.
    #[error("registry secret {name:?} would be read from the Kubernetes cluster, which needs the kubernetes driver (not available yet); pass --registry-secret file:PATH with the Secret saved as YAML or JSON, or log in with `docker login`")]
    SecretNeedsCluster {
        /// Secret name given.
        name: String,
    },
    /// The local content store failed.
    #[error("content store: {what}: {reason}")]
    Store {
        /// What was being read or written.
        what: String,
        /// Underlying error.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

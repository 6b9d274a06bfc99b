//! kbuild-registry: our OCI distribution-spec client.
//!
//! It owns image references ([`Reference`], with Docker's normalization),
//! resolving them to indexes and manifests, pulling one platform's image into
//! the content store ([`Client::pull_image`]: digests verified, blobs already
//! stored skipped, interrupted downloads resumed with Range requests, layers in
//! parallel), and pushing ([`Client::push`]: HEAD before upload, cross-repository
//! mounts, monolithic or chunked uploads, each blob once, a bounded number at
//! a time, tags last). A build can hand over its layers as it commits them
//! ([`Client::blob_uploads`], [`BlobUploads::start`]) so that they upload while
//! it goes on, and push with [`Client::push_with`].
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: Basic, or
//! Bearer tokens (GET with Basic credentials, or OAuth2 POST with an identity
//! token) cached per scope. [`Credentials`] come from Docker's `config.json`
//! (inline `auths`, `credsStore`, `credHelpers`) and from `--registry-secret
//! file:PATH` (a `kubernetes.io/dockerconfigjson` Secret). Reading a named
//! Secret from the cluster comes with the kubernetes driver; until then a bare
//! name is an error, except the default name `buildkit`, which quietly means
//! "use Docker's config".
//!
//! Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) are spoken to over
//! plain HTTP as Docker does; other hosts over HTTPS unless listed in
//! [`ClientOptions::insecure`].
//!
//! Every wait is bounded by [`Timeouts`] (connecting, the first byte of a
//! reply, silence mid-transfer, token requests, credential helpers), never a
//! whole transfer. 429, 5xx, timeouts and broken connections are retried with
//! exponential backoff from one budget per operation (a request, a blob's
//! upload, a manifest put). A closing PUT or manifest put that fails or goes
//! unanswered is followed by a HEAD: when the registry kept the content, the
//! put is done; an upload session the registry forgot is started afresh. An
//! error after retries names the first failure ([`Error::GaveUp`]).
//!
//! ```
//! use kbuild_registry::Reference;
//!
//! let r = Reference::parse("alpine").unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
//! let r = Reference::parse("localhost:5000/team/app:v1").unwrap();
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "team/app", Some("v1")));
//! ```
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use kbuild_registry::{Client, ClientOptions, Credentials, Reference};
//!
//! let client = Client::new(ClientOptions {
//!     credentials: Credentials::from_registry_secret(None)?,
//!     ..ClientOptions::default()
//! })?;
//! let store = kbuild_image::ContentStore::open("/tmp/store")?;
//! let image = client
//!     .pull_image(&Reference::parse("alpine:3.20")?, &kbuild_platform::Platform::host(), &store)
//!     .await?;
//! println!("{} layers", image.manifest.layers.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod auth;
mod client;
mod credentials;
mod error;
mod manifest;
mod merge;
mod pull;
mod push;
mod reference;
mod timeouts;
mod uploads;

pub use auth::{RegistryToken, TokenError, TokenRequest, DEFAULT_TOKEN_LIFETIME};
pub use client::{Client, ClientOptions, Stats};
pub use credentials::{
    CredentialSource, Credentials, RegistryLogin, TokenAnswer, DEFAULT_REGISTRY_SECRET,
};
pub use error::{
    ComponentProblem, CredentialsProblem, Error, HelperProblem, ManifestProblem, ReferenceProblem,
    Result, Wait,
};
pub use pull::PulledImage;
pub use reference::Reference;
pub use timeouts::{Timeouts, TimeoutsError, TimeoutsProblem, TIMEOUT_KINDS};
pub use uploads::{
    parallelism_from_env, BlobUploads, ParallelismError, MAX_PARALLELISM, PARALLELISM_ENV,
};

//! The HTTP side of the client: scheme choice, retries with backoff, the 401
//! challenge dance and token caching, and client-wide statistics.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::auth::{
    fetch_token, parse_challenge, scope_allowed, Challenge, RegistryToken, TokenError, TokenRequest,
};
use crate::credentials::{Bearer, Credential, Credentials};
use crate::error::{Error, Result, Wait};
use crate::reference::{api_host, Reference};
use crate::timeouts::Timeouts;

/// How long a client waits for a registry's challenge before it hands a
/// build daemon a token for it.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Longest `Retry-After` honoured; longer asks wait this long instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How a [`Client`] talks to registries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) that may be reached without verified TLS:
    /// HTTPS without certificate checks first, plain HTTP if that fails
    /// (`--insecure-registry`). Loopback registries always use plain HTTP.
    pub insecure: Vec<String>,
    /// Where credentials come from.
    pub credentials: Credentials,
    /// Blobs larger than this are pushed with chunked PATCH uploads, smaller ones
    /// with one monolithic PUT.
    pub chunk_threshold: u64,
    /// Size of each PATCH chunk.
    pub chunk_size: u64,
    /// How many blobs are transferred at the same time: per pull, and per
    /// push for all its uploads together (those started during a build
    /// included). The CLI takes it from [`crate::PARALLELISM_ENV`].
    pub concurrency: usize,
    /// Attempts per operation on 429, 5xx, timeouts and connection errors (at
    /// least 1): one request, or one blob's whole upload (restarted from a fresh
    /// session when needed), or one manifest put; a `Retry-After` in seconds
    /// (up to 30) replaces the backoff delay.
    pub max_attempts: u32,
    /// First retry delay; doubled on each further attempt.
    pub retry_delay: Duration,
    /// How long to wait for registries, token endpoints and credential helpers.
    pub timeouts: Timeouts,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: Vec::new(),
            credentials: Credentials::anonymous(),
            chunk_threshold: 32 << 20,
            chunk_size: 16 << 20,
            concurrency: 4,
            max_attempts: 5,
            retry_delay: Duration::from_millis(250),
            timeouts: Timeouts::default(),
        }
    }
}

/// Counters of what a [`Client`] transferred, for progress output and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blobs uploaded (monolithic or chunked).
    pub blobs_uploaded: u64,
    /// Bytes of uploaded blobs.
    pub bytes_uploaded: u64,
    /// Uploads that used chunked PATCH requests.
    pub chunked_uploads: u64,
    /// Blobs mounted from another repository instead of uploaded.
    pub blobs_mounted: u64,
    /// Blobs the target repository already had (HEAD answered 200).
    pub blobs_existing: u64,
    /// Manifests and indexes pushed (by digest and by tag).
    pub manifests_pushed: u64,
    /// Blobs downloaded into the store.
    pub blobs_downloaded: u64,
    /// Bytes downloaded for blobs (not counting bytes already in a partial ingest).
    pub bytes_downloaded: u64,
    /// Blobs not downloaded because the store already had them.
    pub blobs_cached: u64,
    /// Bytes that did not need downloading because a partial ingest was resumed.
    pub bytes_resumed: u64,
    /// Requests retried after 429, 5xx or a connection error.
    pub retries: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub blobs_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub chunked_uploads: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_existing: AtomicU64,
    pub manifests_pushed: AtomicU64,
    pub blobs_downloaded: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub blobs_cached: AtomicU64,
    pub bytes_resumed: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An OCI distribution client. Cheap to clone; clones share connections, tokens,
/// credentials and the map of where blobs are known to exist (for mounts).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub opts: ClientOptions,
    /// Made on first use: loading the system's root certificates takes
    /// about a third of a warm local build's CPU time, and a build that
    /// talks to no registry needs none.
    http: OnceLock<reqwest::Client>,
    /// For `insecure` registries: accepts any certificate, so it loads no
    /// root certificates. Made on first use too.
    http_no_verify: OnceLock<reqwest::Client>,
    state: Mutex<State>,
    pub counters: Counters,
    /// When the client was made (every cached token is younger).
    created: std::time::Instant,
}

#[derive(Default)]
struct State {
    /// Registry → base URL (`http://host:port`) once decided.
    bases: HashMap<String, Url>,
    /// Registry → credentials looked up (None: none configured).
    creds: HashMap<String, Option<Credential>>,
    /// Registry → how it wants to be authenticated.
    challenges: HashMap<String, Challenge>,
    /// (registry, scopes) → bearer token.
    tokens: HashMap<(String, String), CachedToken>,
    /// Registry → the credential source that hands out its tokens (a build
    /// daemon's client), described for messages.
    token_sources: HashMap<String, String>,
    /// Registries whose challenge [`Client::challenge_of`] asked for.
    probed: std::collections::HashSet<String>,
    /// (registry, scopes) → held while a token for them is being fetched.
    fetching: HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// Blob digest → (registry, repository) pairs known to hold it.
    blob_sources: HashMap<String, BTreeSet<(String, String)>>,
}

/// A token and until when it is used.
struct CachedToken {
    token: String,
    /// When it was got.
    fetched: std::time::Instant,
    until: std::time::Instant,
}

/// What a request needs access to: used for token scopes and error messages.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    pub registry: String,
    pub repository: String,
    pub push: bool,
    /// Other repositories read in the same request (cross-repository mount source).
    pub also_pull: Vec<String>,
}

impl Scope {
    pub fn pull(registry: &str, repository: &str) -> Scope {
        Scope {
            registry: registry.to_string(),
            repository: repository.to_string(),
            push: false,
            also_pull: Vec::new(),
        }
    }

    pub fn push(registry: &str, repository: &str) -> Scope {
        Scope {
            push: true,
            ..Scope::pull(registry, repository)
        }
    }

    fn action(&self) -> &'static str {
        if self.push {
            "pull,push"
        } else {
            "pull"
        }
    }

    fn strings(&self) -> Vec<String> {
        let mut scopes = vec![format!("repository:{}:{}", self.repository, self.action())];
        for repo in &self.also_pull {
            scopes.push(format!("repository:{repo}:pull"));
        }
        scopes
    }
}

/// One request, replayable for retries.
pub(crate) struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Body>,
    /// What the request does, for error messages ("PUT manifest v1 in team/app").
    pub operation: String,
}

impl Req {
    pub fn new(method: Method, url: Url, operation: impl Into<String>) -> Req {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            operation: operation.into(),
        }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Req {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Req {
        self.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.body = Some(Body::Bytes(body));
        self
    }

    /// `len` bytes of `file` from `offset` as the body, read a piece at a
    /// time each time the request is sent (never held whole in memory).
    pub fn file_range(mut self, file: Arc<std::fs::File>, offset: u64, len: u64) -> Req {
        self.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        self.body = Some(Body::File { file, offset, len });
        self
    }
}

/// What a request sends.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// Bytes in memory (manifests, small documents).
    Bytes(Bytes),
    /// A range of a file (blob uploads), read in [`PIECE`]s as it is sent.
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

/// The full cause chain of an error on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Whether a registry name is a loopback address, which Docker reaches over plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(inner) = registry.strip_prefix('[') {
        inner.split(']').next().unwrap_or(inner)
    } else if registry.matches(':').count() > 1 {
        registry
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client with the given options. No connection is made and no
    /// certificate is read until the first request.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                http: OnceLock::new(),
                http_no_verify: OnceLock::new(),
                opts,
                state: Mutex::new(State::default()),
                counters: Counters::default(),
                created: std::time::Instant::now(),
            }),
        })
    }

    /// A snapshot of the transfer counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            blobs_uploaded: get(&c.blobs_uploaded),
            bytes_uploaded: get(&c.bytes_uploaded),
            chunked_uploads: get(&c.chunked_uploads),
            blobs_mounted: get(&c.blobs_mounted),
            blobs_existing: get(&c.blobs_existing),
            manifests_pushed: get(&c.manifests_pushed),
            blobs_downloaded: get(&c.blobs_downloaded),
            bytes_downloaded: get(&c.bytes_downloaded),
            blobs_cached: get(&c.blobs_cached),
            bytes_resumed: get(&c.bytes_resumed),
            retries: get(&c.retries),
        }
    }

    /// Records that `repository` in `registry` holds blob `digest`, so a later push
    /// to another repository of the same registry can mount it instead of uploading.
    /// Pulls and pushes record this themselves.
    pub fn note_blob_source(
        &self,
        digest: &kbuild_image::Digest,
        registry: &str,
        repository: &str,
    ) {
        self.state()
            .blob_sources
            .entry(digest.to_string())
            .or_default()
            .insert((registry.to_string(), repository.to_string()));
    }

    /// A repository of `registry` other than `repository` known to hold `digest`.
    pub(crate) fn mount_source(
        &self,
        digest: &str,
        registry: &str,
        repository: &str,
    ) -> Option<String> {
        self.state().blob_sources.get(digest).and_then(|set| {
            set.iter()
                .find(|(r, repo)| r == registry && repo != repository)
                .map(|(_, repo)| repo.clone())
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only caches behind; keep using them.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP client for `registry`: the one that checks certificates
    /// against the system's roots, or for an insecure registry the one
    /// that accepts any.
    fn http_for(&self, registry: &str) -> Result<&reqwest::Client> {
        self.http(self.is_insecure(registry))
    }

    /// The HTTP client, made on first use (two threads may both make one;
    /// the first kept is used by all).
    fn http(&self, no_verify: bool) -> Result<&reqwest::Client> {
        let cell = if no_verify {
            &self.inner.http_no_verify
        } else {
            &self.inner.http
        };
        if let Some(http) = cell.get() {
            return Ok(http);
        }
        // No reqwest read timeout: it would also bound the upload of a
        // request body. Waits are watched per phase in `send_once` and
        // `read_body` instead.
        let http = reqwest::Client::builder()
            .connect_timeout(self.inner.opts.timeouts.connect)
            .user_agent(concat!("kubectl-build/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(no_verify)
            .tls_built_in_root_certs(!no_verify)
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(cell.get_or_init(|| http))
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.inner.opts.insecure.iter().any(|entry| {
            // Accept `HOST[:PORT]` with a scheme or trailing slash as users write it.
            let h = entry
                .strip_prefix("https://")
                .or_else(|| entry.strip_prefix("http://"))
                .unwrap_or(entry)
                .trim_end_matches('/');
            h == registry || h == api_host(registry)
        })
    }

    /// `scheme://host[:port]` for a registry: HTTP for loopback, HTTPS otherwise;
    /// an insecure registry that does not speak TLS at all falls back to HTTP.
    pub(crate) async fn base_url(&self, registry: &str) -> Result<Url> {
        if let Some(url) = self.state().bases.get(registry) {
            return Ok(url.clone());
        }
        let host = api_host(registry);
        let parse = |scheme: &str| {
            Url::parse(&format!("{scheme}://{host}/")).map_err(|source| Error::RequestUrl {
                reference: registry.to_string(),
                what: "the registry host is not usable in a URL: ",
                source,
            })
        };
        let url = if is_loopback(registry) {
            parse("http")?
        } else if self.is_insecure(registry) {
            let https = parse("https")?;
            let ping = https.join("v2/").map_err(|source| Error::RequestUrl {
                reference: registry.to_string(),
                what: "",
                source,
            })?;
            let probe = self.http(true)?.get(ping).send();
            match tokio::time::timeout(self.inner.opts.timeouts.response, probe).await {
                Ok(Ok(_)) => https,
                Ok(Err(_)) | Err(_) => parse("http")?,
            }
        } else {
            parse("https")?
        };
        self.state().bases.insert(registry.to_string(), url.clone());
        Ok(url)
    }

    /// `base/v2/<repository>/<rest>`.
    pub(crate) async fn api_url(
        &self,
        registry: &str,
        repository: &str,
        rest: &str,
    ) -> Result<Url> {
        let base = self.base_url(registry).await?;
        base.join(&format!("v2/{repository}/{rest}"))
            .map_err(|source| Error::RequestUrl {
                reference: format!("{registry}/{repository}"),
                what: "cannot build a request URL: ",
                source,
            })
    }

    /// Checks, before anything is built, that the registry of `reference`
    /// answers and accepts this client's credentials for a push to its
    /// repository: the API root (`GET /v2/`) with a push-scoped
    /// authentication. Nothing is written.
    pub async fn check_push(&self, reference: &Reference) -> Result<()> {
        let registry = reference.registry();
        let url = self.base_url(registry).await?;
        let url = url.join("v2/").map_err(|source| Error::RequestUrl {
            reference: reference.to_string(),
            what: "cannot build a request URL: ",
            source,
        })?;
        let scope = Scope::push(registry, reference.repository());
        let req = Req::new(Method::GET, url, "GET /v2/");
        let mut retry = self.retry(registry, "GET /v2/");
        self.send_with(&scope, &req, &mut retry).await.map(drop)
    }

    /// Credentials for `registry`, looked up once. Credential helpers run on a
    /// blocking thread, each bounded by the `helper` timeout.
    async fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.state().creds.get(registry) {
            return Ok(c.clone());
        }
        let credentials = self.inner.opts.credentials.clone();
        let limit = self.inner.opts.timeouts.helper;
        let name = registry.to_string();
        let cred = match tokio::task::spawn_blocking(move || credentials.lookup(&name, limit)).await
        {
            Ok(cred) => cred?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.state()
            .creds
            .insert(registry.to_string(), cred.clone());
        Ok(cred)
    }

    async fn unauthorized(&self, scope: &Scope, status: u16) -> Error {
        let from = self.state().token_sources.get(&scope.registry).cloned();
        if let Some(from) = from {
            // The login stays with the source: never ask it for one here.
            return Error::Unauthorized {
                registry: scope.registry.clone(),
                repository: scope.repository.clone(),
                action: scope.action().to_string(),
                status,
                tried: format!("a token from {from}"),
            };
        }
        let tried = match self.credential(&scope.registry).await {
            Ok(Some(c)) => format!("credentials from {}", c.source),
            Ok(None) => "no credentials (none configured for this registry)".to_string(),
            Err(e) => format!("no credentials ({e})"),
        };
        Error::Unauthorized {
            registry: scope.registry.clone(),
            repository: scope.repository.clone(),
            action: scope.action().to_string(),
            status,
            tried,
        }
    }

    /// The Authorization header for a request in `scope`, if the registry asked
    /// for authentication. `fresh` forces a new bearer token.
    async fn auth_header(&self, scope: &Scope, fresh: bool) -> Result<Option<HeaderValue>> {
        let challenge = self.state().challenges.get(&scope.registry).cloned();
        let header = |text: String| HeaderValue::from_str(&text).ok();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => {
                use base64::Engine;
                Ok(match self.credential(&scope.registry).await? {
                    Some(Credential {
                        username: Some(u),
                        password,
                        ..
                    }) => {
                        let pair = format!("{u}:{}", password.unwrap_or_default());
                        header(format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        ))
                    }
                    _ => None,
                })
            }
            Some(Challenge::Bearer { realm, service }) => {
                let request = TokenRequest {
                    realm,
                    service,
                    scopes: scope.strings(),
                };
                let key = (scope.registry.clone(), request.scopes.join(" "));
                let asked = std::time::Instant::now();
                if !fresh {
                    if let Some(token) = self.cached_token(&key) {
                        return Ok(header(format!("Bearer {}", token.token)));
                    }
                }
                // One fetch per scope at a time: requests that met the same
                // challenge together take the token the first one got.
                let gate = self
                    .state()
                    .fetching
                    .entry(key.clone())
                    .or_default()
                    .clone();
                let _turn = gate.lock().await;
                if let Some(token) = self.cached_token_since(&key, asked) {
                    return Ok(header(format!("Bearer {}", token.token)));
                }
                let token = self.bearer_token(scope, &request).await?;
                self.cache_token(key, &token);
                Ok(header(format!("Bearer {}", token.token)))
            }
        }
    }

    /// A cached token that is still good for a while.
    fn cached_token(&self, key: &(String, String)) -> Option<RegistryToken> {
        self.cached_token_since(key, self.inner.created)
    }

    /// [`Client::cached_token`] if it was fetched at or after `since`.
    fn cached_token_since(
        &self,
        key: &(String, String),
        since: std::time::Instant,
    ) -> Option<RegistryToken> {
        let state = self.state();
        let cached = state.tokens.get(key).filter(|c| c.fetched >= since)?;
        let left = cached
            .until
            .checked_duration_since(std::time::Instant::now())?;
        Some(RegistryToken {
            token: cached.token.clone(),
            expires_in: left,
        })
    }

    /// Keeps `token` until shortly before it expires (a fifth of its
    /// lifetime early, at most 30 s), so that no request goes out with a
    /// token about to lapse.
    fn cache_token(&self, key: (String, String), token: &RegistryToken) {
        let early = (token.expires_in / 5).min(Duration::from_secs(30));
        let fetched = std::time::Instant::now();
        let until = fetched + token.expires_in.saturating_sub(early);
        self.state().tokens.insert(
            key,
            CachedToken {
                token: token.token.clone(),
                fetched,
                until,
            },
        );
    }

    /// A fresh token for `request`: fetched with this client's credentials
    /// for the registry, or handed over by a credential source that does
    /// the exchange itself (a build daemon's client).
    async fn bearer_token(&self, scope: &Scope, request: &TokenRequest) -> Result<RegistryToken> {
        let known = self.state().creds.get(&scope.registry).cloned();
        let delegated = self.state().token_sources.contains_key(&scope.registry);
        let cred = match known {
            Some(cred) if cred.is_some() || !delegated => cred,
            _ => {
                let credentials = self.inner.opts.credentials.clone();
                let limit = self.question_limit();
                let (name, req) = (scope.registry.clone(), request.clone());
                let bearer = match tokio::task::spawn_blocking(move || {
                    credentials.bearer(&name, &req, limit)
                })
                .await
                {
                    Ok(bearer) => bearer?,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                };
                match bearer {
                    Bearer::Token(token, from) => {
                        tracing::debug!(
                            registry = %scope.registry,
                            scopes = %request.scopes.join(" "),
                            expires_in = token.expires_in.as_secs(),
                            "a registry token from {from}"
                        );
                        self.state()
                            .token_sources
                            .insert(scope.registry.clone(), from);
                        return Ok(token);
                    }
                    Bearer::Credential(cred) => {
                        self.state()
                            .creds
                            .insert(scope.registry.clone(), cred.clone());
                        cred
                    }
                }
            }
        };
        self.fetch_token(scope, request, cred.as_ref()).await
    }

    /// How long a question to a credential source may take: a helper's run,
    /// or a token exchange done by the source.
    fn question_limit(&self) -> Duration {
        let t = &self.inner.opts.timeouts;
        t.helper.saturating_add(t.token)
    }

    /// One exchange at the token endpoint, bounded by the `token` timeout.
    async fn fetch_token(
        &self,
        scope: &Scope,
        request: &TokenRequest,
        cred: Option<&Credential>,
    ) -> Result<RegistryToken> {
        let limit = self.inner.opts.timeouts.token;
        let fetch = fetch_token(
            self.http_for(&scope.registry)?,
            &request.realm,
            request.service.as_deref(),
            &request.scopes,
            cred,
        );
        let answer = match tokio::time::timeout(limit, fetch).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(Error::Timeout {
                    registry: scope.registry.clone(),
                    operation: format!("a token request to {}", request.realm),
                    wait: Wait::Token,
                    limit,
                })
            }
        };
        match answer {
            Ok(token) => Ok(token),
            Err(TokenError::Denied(status)) => Err(self.unauthorized(scope, status).await),
            Err(e) => Err(token_error(scope, &request.realm, &request.scopes, e)),
        }
    }

    /// A token for `request` at `registry`'s token endpoint, got with this
    /// client's own credentials: how a client answers a build daemon that
    /// met a Bearer challenge, so that the daemon holds a token for exactly
    /// those scopes (and for its lifetime) instead of the login.
    ///
    /// Only repository scopes with `pull` and `push` actions are handed
    /// out ([`Error::ScopeRefused`]). When this client knows, or can learn
    /// with one anonymous `GET /v2/`, the registry's own challenge, the
    /// realm and service must be those ([`Error::RealmMismatch`]): the
    /// credentials go only where the registry itself sends them. A registry
    /// this machine cannot reach is taken at the daemon's word. Tokens are
    /// cached as for the client's own requests.
    pub async fn registry_token(
        &self,
        registry: &str,
        request: &TokenRequest,
    ) -> Result<RegistryToken> {
        if let Some(bad) = request.scopes.iter().find(|s| !scope_allowed(s)) {
            return Err(Error::ScopeRefused {
                registry: registry.to_string(),
                scope: bad.clone(),
            });
        }
        if request.scopes.is_empty() {
            return Err(Error::ScopeRefused {
                registry: registry.to_string(),
                scope: String::new(),
            });
        }
        if let Some(Challenge::Bearer { realm, service }) = self.challenge_of(registry).await {
            if realm != request.realm || service != request.service {
                return Err(Error::RealmMismatch {
                    registry: registry.to_string(),
                    asked: request.realm.clone(),
                    announced: realm,
                });
            }
        }
        let key = (registry.to_string(), request.scopes.join(" "));
        if let Some(token) = self.cached_token(&key) {
            return Ok(token);
        }
        // The first scope names the repository in messages.
        let repository = request.scopes[0]
            .split(':')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let scope = Scope {
            push: request.scopes[0].ends_with("push"),
            ..Scope::pull(registry, &repository)
        };
        let cred = self.credential(registry).await?;
        let token = self.fetch_token(&scope, request, cred.as_ref()).await?;
        self.cache_token(key, &token);
        Ok(token)
    }

    /// The challenge `registry` answers with, learnt from an earlier request
    /// or from one anonymous `GET /v2/`; `None` when it cannot be reached
    /// or asks for none.
    async fn challenge_of(&self, registry: &str) -> Option<Challenge> {
        if let Some(c) = self.state().challenges.get(registry) {
            return Some(c.clone());
        }
        // Asked once: a registry only the builder reaches costs one wait.
        if !self.state().probed.insert(registry.to_string()) {
            return None;
        }
        let probe = async {
            let url = self.base_url(registry).await.ok()?.join("v2/").ok()?;
            let req = Req::new(Method::GET, url, "GET /v2/");
            self.exchange(registry, &req, None).await.ok()
        };
        let response = tokio::time::timeout(PROBE_LIMIT, probe).await.ok()??;
        if response.status() != StatusCode::UNAUTHORIZED {
            return None;
        }
        let challenge = challenge_of(&response)?;
        self.state()
            .challenges
            .insert(registry.to_string(), challenge.clone());
        Some(challenge)
    }

    /// Sends `req` with authentication, retrying 429, 5xx, timeouts and broken
    /// connections from `retry`, the budget of the operation it belongs to;
    /// other statuses are for the caller.
    pub(crate) async fn send_with(
        &self,
        scope: &Scope,
        req: &Req,
        retry: &mut Retry,
    ) -> Result<Response> {
        loop {
            match self.send_once(scope, req).await {
                Ok(response) => return Ok(response),
                Err(Failed { error, pause }) if error.is_transient() => {
                    retry.again(self, error, pause).await?
                }
                Err(Failed { error, .. }) => return Err(retry.give_up(error)),
            }
        }
    }

    /// One attempt at `req`, with authentication: on 401 learns the challenge,
    /// gets credentials or a token and tries once more. 401/403 after that is
    /// [`Error::Unauthorized`]; 429 and 5xx are errors (with the `Retry-After`
    /// pause, if any); other statuses are returned for the caller to judge.
    pub(crate) async fn send_once(
        &self,
        scope: &Scope,
        req: &Req,
    ) -> std::result::Result<Response, Failed> {
        let auth = self.auth_header(scope, false).await?;
        let had_auth = auth.is_some();
        let response = self.exchange(&scope.registry, req, auth).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::FORBIDDEN => return Err(self.unauthorized(scope, 403).await.into()),
            _ => return self.judge(&scope.registry, req, response).await,
        }
        let Some(challenge) = challenge_of(&response) else {
            return Err(self.unauthorized(scope, 401).await.into());
        };
        let known = self
            .state()
            .challenges
            .insert(scope.registry.clone(), challenge.clone());
        // Basic credentials that were already sent will not get better on a retry.
        if had_auth && known == Some(Challenge::Basic) && challenge == Challenge::Basic {
            return Err(self.unauthorized(scope, 401).await.into());
        }
        let Some(auth) = self.auth_header(scope, true).await? else {
            return Err(self.unauthorized(scope, 401).await.into());
        };
        let response = self.exchange(&scope.registry, req, Some(auth)).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED => Err(self.unauthorized(scope, 401).await.into()),
            StatusCode::FORBIDDEN => Err(self.unauthorized(scope, 403).await.into()),
            _ => self.judge(&scope.registry, req, response).await,
        }
    }

    /// 429 and 5xx answers become errors, with the pause the registry asked for.
    async fn judge(
        &self,
        registry: &str,
        req: &Req,
        response: Response,
    ) -> std::result::Result<Response, Failed> {
        let status = response.status();
        if status != StatusCode::TOO_MANY_REQUESTS
            && !matches!(status.as_u16(), 500 | 502 | 503 | 504)
        {
            return Ok(response);
        }
        // A registry that says when to come back is believed, within reason.
        let pause = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
        let error = self
            .unexpected(response, registry, req.operation.clone())
            .await;
        Err(Failed { error, pause })
    }

    /// One HTTP exchange up to the reply's headers, watched: the registry must
    /// keep taking the body (`idle`) and answer within `response` of the end of
    /// the request; connecting is bounded by `connect`.
    async fn exchange(
        &self,
        registry: &str,
        req: &Req,
        auth: Option<HeaderValue>,
    ) -> Result<Response> {
        let limits = self.inner.opts.timeouts;
        let watch = Arc::new(Watch::new());
        let mut builder = self
            .http_for(registry)?
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        match &req.body {
            Some(Body::Bytes(body)) => {
                let stream = Tracked::new(body.clone(), watch.clone());
                builder = builder.body(reqwest::Body::wrap_stream(stream));
            }
            Some(Body::File { file, offset, len }) => {
                let stream = FileRange::new(file.clone(), *offset, *len, Some(watch.clone()));
                builder = builder.body(reqwest::Body::wrap_stream(stream));
            }
            None => watch.sent(),
        }
        let send = builder.send();
        tokio::pin!(send);
        loop {
            let (deadline, _, _) = watch.deadline(&limits);
            tokio::select! {
                result = &mut send => {
                    return result.map_err(|e| self.transport_error(registry, req, watch.is_sent(), e));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let (deadline, wait, limit) = watch.deadline(&limits);
                    if deadline <= tokio::time::Instant::now() {
                        return Err(Error::Timeout {
                            registry: registry.to_string(),
                            operation: req.operation.clone(),
                            wait,
                            limit,
                        });
                    }
                }
            }
        }
    }

    fn transport_error(&self, registry: &str, req: &Req, sent: bool, e: reqwest::Error) -> Error {
        if e.is_connect() && e.is_timeout() {
            Error::Timeout {
                registry: registry.to_string(),
                operation: req.operation.clone(),
                wait: Wait::Connect,
                limit: self.inner.opts.timeouts.connect,
            }
        } else if e.is_connect() {
            Error::Unreachable {
                registry: registry.to_string(),
                url: req.url.to_string(),
                source: e,
            }
        } else {
            Error::ConnectionLost {
                registry: registry.to_string(),
                operation: req.operation.clone(),
                sent,
                source: e,
            }
        }
    }

    /// The next piece of a reply body, waiting at most `idle` for it.
    pub(crate) async fn next_chunk(
        &self,
        registry: &str,
        operation: &str,
        response: &mut Response,
    ) -> Result<Option<Bytes>> {
        let idle = self.inner.opts.timeouts.idle;
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => Err(Error::ConnectionLost {
                registry: registry.to_string(),
                operation: operation.to_string(),
                sent: true,
                source: e,
            }),
            Err(_) => Err(Error::Timeout {
                registry: registry.to_string(),
                operation: operation.to_string(),
                wait: Wait::Body,
                limit: idle,
            }),
        }
    }

    /// A whole reply body, each piece within `idle` of the last (no total limit).
    pub(crate) async fn read_body(
        &self,
        registry: &str,
        operation: &str,
        mut response: Response,
    ) -> Result<Bytes> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(registry, operation, &mut response).await? {
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// A retry budget for one operation.
    pub(crate) fn retry(&self, registry: &str, operation: impl Into<String>) -> Retry {
        let opts = &self.inner.opts;
        Retry {
            registry: registry.to_string(),
            operation: operation.into(),
            left: opts.max_attempts.max(1) - 1,
            attempts: 1,
            delay: opts.retry_delay,
            first: None,
        }
    }

    /// An error for an unexpected answer, with the registry's error codes if it sent any.
    pub(crate) async fn unexpected(
        &self,
        response: Response,
        registry: &str,
        action: String,
    ) -> Error {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<ErrorItem>,
        }
        #[derive(Deserialize)]
        struct ErrorItem {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let status = response.status().as_u16();
        // The body only adds details: a broken or silent one is left out.
        let body = self
            .read_body(registry, &action, response)
            .await
            .unwrap_or_default();
        let message = match serde_json::from_slice::<Errors>(&body) {
            Ok(e) if !e.errors.is_empty() => e
                .errors
                .iter()
                .map(|i| format!("{} {}", i.code, i.message).trim().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let line = text
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                if line.is_empty() {
                    "no details in the answer".to_string()
                } else {
                    line
                }
            }
        };
        Error::Registry {
            registry: registry.to_string(),
            action,
            status,
            message,
        }
    }
}

/// A token endpoint failure other than a refusal, naming the registry.
fn token_error(scope: &Scope, realm: &str, scopes: &[String], e: TokenError) -> Error {
    match e {
        TokenError::Transport(_) => Error::TokenUnreachable {
            registry: scope.registry.clone(),
            url: realm.to_string(),
            source: e,
        },
        TokenError::Denied(status) => Error::Registry {
            registry: scope.registry.clone(),
            action: format!("token request for {}", scopes.join(" ")),
            status,
            message: format!("the token endpoint {realm} refused"),
        },
        e => Error::Token {
            registry: scope.registry.clone(),
            action: format!("token request for {}", scopes.join(" ")),
            source: e,
        },
    }
}

/// A failed attempt: the error, and how long the registry asked us to wait.
pub(crate) struct Failed {
    pub error: Error,
    pub pause: Option<Duration>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, pause: None }
    }
}

/// The retry budget of one operation (a request, a blob's upload, a manifest
/// put): how many more failures it absorbs, the next backoff delay, and the
/// first failure, which the final error names.
pub(crate) struct Retry {
    registry: String,
    operation: String,
    left: u32,
    attempts: u32,
    delay: Duration,
    first: Option<Error>,
}

impl Retry {
    /// Records a failed attempt: when the budget allows another, counts the
    /// retry, waits (`pause`, else the backoff delay) and returns `Ok`;
    /// otherwise returns the final error.
    pub async fn again(
        &mut self,
        client: &Client,
        error: Error,
        pause: Option<Duration>,
    ) -> Result<()> {
        if self.left == 0 {
            return Err(self.give_up(error));
        }
        tracing::debug!(registry = %self.registry, operation = %self.operation, %error, "retrying");
        self.left -= 1;
        self.attempts += 1;
        if self.first.is_none() {
            self.first = Some(error);
        }
        Counters::add(&client.inner.counters.retries, 1);
        tokio::time::sleep(pause.unwrap_or(self.delay)).await;
        self.delay = self.delay.saturating_mul(2);
        Ok(())
    }

    /// The error to report when `last` ends the operation: it alone after a
    /// single attempt; else the first failure, the number of attempts, and
    /// `last` when it differs from the first.
    pub fn give_up(&mut self, last: Error) -> Error {
        let Some(first) = self.first.take() else {
            return last;
        };
        let (first, last) = if first.to_string() == last.to_string() {
            (last, None)
        } else {
            (first, Some(Box::new(last)))
        };
        Error::GaveUp {
            registry: self.registry.clone(),
            operation: self.operation.clone(),
            attempts: self.attempts,
            first: Box::new(first),
            last,
        }
    }
}

/// Progress of one exchange: when the body last moved and when it was all sent.
struct Watch {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last time the body moved.
    moved: AtomicU64,
    /// Milliseconds from `start` to the end of the body; `u64::MAX` until then.
    sent: AtomicU64,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            start: tokio::time::Instant::now(),
            moved: AtomicU64::new(0),
            sent: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.moved.store(self.now_ms(), Ordering::Relaxed);
    }

    fn sent(&self) {
        let now = self.now_ms();
        let _ = self
            .sent
            .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn is_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed) != u64::MAX
    }

    /// When the exchange times out unless something happens, and waiting for what.
    fn deadline(&self, limits: &Timeouts) -> (tokio::time::Instant, Wait, Duration) {
        let at = |ms: u64, limit: Duration| self.start + Duration::from_millis(ms) + limit;
        match self.sent.load(Ordering::Relaxed) {
            u64::MAX => (
                at(self.moved.load(Ordering::Relaxed), limits.idle),
                Wait::Send,
                limits.idle,
            ),
            sent => (at(sent, limits.response), Wait::Response, limits.response),
        }
    }
}

/// Size of the pieces a request body is handed to the connection in.
const PIECE: usize = 64 << 10;

/// A request body that reports each piece taken to its [`Watch`].
struct Tracked {
    pieces: std::collections::VecDeque<Bytes>,
    watch: Arc<Watch>,
}

impl Tracked {
    fn new(body: Bytes, watch: Arc<Watch>) -> Tracked {
        let mut pieces = std::collections::VecDeque::new();
        let mut at = 0;
        while at < body.len() {
            let end = (at + PIECE).min(body.len());
            pieces.push_back(body.slice(at..end));
            at = end;
        }
        Tracked { pieces, watch }
    }
}

impl futures_util::Stream for Tracked {
    type Item = std::result::Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.watch.touch();
        let next = this.pieces.pop_front();
        if this.pieces.is_empty() {
            this.watch.sent();
        }
        std::task::Poll::Ready(next.map(Ok))
    }
}

/// A request body read from a range of a file, one [`PIECE`] at a time on
/// a blocking thread: at most one piece of it is in memory, however long the
/// range. Each piece is reported to the [`Watch`], if any.
struct FileRange {
    file: Arc<std::fs::File>,
    offset: u64,
    end: u64,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Bytes>>>,
    watch: Option<Arc<Watch>>,
}

impl FileRange {
    fn new(
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
        watch: Option<Arc<Watch>>,
    ) -> FileRange {
        FileRange {
            file,
            offset,
            end: offset.saturating_add(len),
            reading: None,
            watch,
        }
    }
}

/// Reads up to `len` bytes of `file` at `offset` (fewer only at its end).
fn read_piece(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

impl futures_util::Stream for FileRange {
    type Item = std::result::Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.reading.is_none() {
            if this.offset >= this.end {
                if let Some(w) = &this.watch {
                    w.sent();
                }
                return Poll::Ready(None);
            }
            let len = usize::try_from(this.end - this.offset).map_or(PIECE, |l| l.min(PIECE));
            let (file, offset) = (this.file.clone(), this.offset);
            this.reading = Some(tokio::task::spawn_blocking(move || {
                read_piece(&file, offset, len)
            }));
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let piece = match std::pin::Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => Err(std::io::Error::other(e)),
        };
        this.reading = None;
        let piece = match piece {
            Ok(p) if p.is_empty() => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends at {} before the {} bytes to send",
                    this.offset, this.end
                ),
            )),
            other => other,
        };
        match piece {
            Ok(p) => {
                this.offset += p.len() as u64;
                if let Some(w) = &this.watch {
                    w.touch();
                    if this.offset >= this.end {
                        w.sent();
                    }
                }
                Poll::Ready(Some(Ok(p)))
            }
            Err(e) => {
                // Nothing more comes after an error.
                this.offset = this.end;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The challenge of a 401 response's `WWW-Authenticate` headers.
fn challenge_of(response: &Response) -> Option<Challenge> {
    let values: Vec<&str> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    parse_challenge(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn http_clients_are_made_on_first_use_only() {
        let c = Client::new(ClientOptions {
            insecure: vec!["registry.test:5000".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(c.inner.http.get().is_none());
        assert!(c.inner.http_no_verify.get().is_none());
        // An insecure registry's client is the one that checks nothing.
        let insecure: *const reqwest::Client = c.http_for("registry.test:5000").unwrap();
        assert!(c.inner.http.get().is_none());
        assert!(std::ptr::eq(
            insecure,
            c.inner.http_no_verify.get().unwrap()
        ));
        // Made once, then shared by clones.
        let verify: *const reqwest::Client = c.http_for("registry.test").unwrap();
        let clone = c.clone();
        assert!(std::ptr::eq(
            verify,
            clone.http_for("registry.test").unwrap()
        ));
    }

    fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, Arc<std::fs::File>) {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        f.flush().unwrap();
        let read = Arc::new(std::fs::File::open(f.path()).unwrap());
        (f, read)
    }

    /// An upload chunk (16 MiB by default) goes out in pieces of at most
    /// [`PIECE`] read from the file as they are sent: the upload path never
    /// holds a whole chunk in memory.
    #[tokio::test]
    async fn a_file_range_body_is_read_a_piece_at_a_time() {
        let data: Vec<u8> = (0..(3 * PIECE + 1234) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (_keep, file) = file_with(&data);
        for (offset, len) in [
            (0, data.len()),
            (1000, 2 * PIECE + 5),
            (PIECE, PIECE),
            (7, 0),
        ] {
            let mut body = FileRange::new(file.clone(), offset as u64, len as u64, None);
            let mut got = Vec::new();
            let mut pieces = 0;
            while let Some(piece) = body.next().await {
                let piece = piece.unwrap();
                assert!(
                    !piece.is_empty() && piece.len() <= PIECE,
                    "piece of {} bytes",
                    piece.len()
                );
                got.extend_from_slice(&piece);
                pieces += 1;
            }
            assert_eq!(got, &data[offset..offset + len], "range {offset}+{len}");
            assert_eq!(pieces, len.div_ceil(PIECE), "range {offset}+{len}");
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_range_is_an_error() {
        let (_keep, file) = file_with(&[1u8; 1000]);
        let mut body = FileRange::new(file, 500, 1000, None);
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(first.len(), 500);
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        assert!(body.next().await.is_none());
    }

    #[test]
    fn loopback_hosts_use_http() {
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "myregistry.example",
            "10.0.0.1:5000",
            "localhost.example:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}

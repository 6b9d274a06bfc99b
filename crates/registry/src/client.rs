//! The HTTP side of the client: scheme choice, retries with backoff, the 401
//! challenge dance and token caching, and client-wide statistics.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::auth::{fetch_token, parse_challenge, Challenge, TokenError};
use crate::credentials::{Credential, Credentials};
use crate::error::{Error, Result};
use crate::reference::api_host;

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
    /// How many blobs are transferred at the same time.
    pub concurrency: usize,
    /// Attempts per request on 429, 5xx and connection errors (at least 1);
    /// a `Retry-After` in seconds (up to 30) replaces the backoff delay.
    pub max_attempts: u32,
    /// First retry delay; doubled on each further attempt.
    pub retry_delay: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
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
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
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
    http: reqwest::Client,
    /// For `insecure` registries: accepts any certificate.
    http_no_verify: reqwest::Client,
    state: Mutex<State>,
    pub counters: Counters,
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
    tokens: HashMap<(String, String), String>,
    /// Blob digest → (registry, repository) pairs known to hold it.
    blob_sources: HashMap<String, BTreeSet<(String, String)>>,
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
    pub body: Option<Bytes>,
}

impl Req {
    pub fn new(method: Method, url: Url) -> Req {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Req {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Req {
        self.body = Some(body);
        self
    }
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
    /// A client with the given options.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let build = |no_verify: bool| {
            reqwest::Client::builder()
                .connect_timeout(opts.connect_timeout)
                .read_timeout(opts.read_timeout)
                .user_agent(concat!("kubectl-build/", env!("CARGO_PKG_VERSION")))
                .danger_accept_invalid_certs(no_verify)
                .build()
                .map_err(|e| Error::Unreachable {
                    registry: "(any)".into(),
                    url: String::new(),
                    cause: format!("cannot set up the HTTP client: {}", error_chain(&e)),
                })
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: build(false)?,
                http_no_verify: build(true)?,
                opts,
                state: Mutex::new(State::default()),
                counters: Counters::default(),
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
        digest: &oci_spec::image::Digest,
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

    fn http_for(&self, registry: &str) -> &reqwest::Client {
        if self.is_insecure(registry) {
            &self.inner.http_no_verify
        } else {
            &self.inner.http
        }
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
            Url::parse(&format!("{scheme}://{host}/")).map_err(|e| Error::InvalidReference {
                reference: registry.to_string(),
                reason: format!("the registry host is not usable in a URL: {e}"),
            })
        };
        let url = if is_loopback(registry) {
            parse("http")?
        } else if self.is_insecure(registry) {
            let https = parse("https")?;
            let ping = https.join("v2/").map_err(|e| Error::InvalidReference {
                reference: registry.to_string(),
                reason: e.to_string(),
            })?;
            match self.inner.http_no_verify.get(ping).send().await {
                Ok(_) => https,
                Err(_) => parse("http")?,
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
            .map_err(|e| Error::InvalidReference {
                reference: format!("{registry}/{repository}"),
                reason: format!("cannot build a request URL: {e}"),
            })
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.state().creds.get(registry) {
            return Ok(c.clone());
        }
        let cred = self.inner.opts.credentials.lookup(registry)?;
        self.state()
            .creds
            .insert(registry.to_string(), cred.clone());
        Ok(cred)
    }

    fn unauthorized(&self, scope: &Scope, status: u16) -> Error {
        let tried = match self.credential(&scope.registry) {
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
                Ok(match self.credential(&scope.registry)? {
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
                let scopes = scope.strings();
                let key = (scope.registry.clone(), scopes.join(" "));
                if !fresh {
                    if let Some(token) = self.state().tokens.get(&key) {
                        return Ok(header(format!("Bearer {token}")));
                    }
                }
                let cred = self.credential(&scope.registry)?;
                let token = fetch_token(
                    self.http_for(&scope.registry),
                    &realm,
                    service.as_deref(),
                    &scopes,
                    cred.as_ref(),
                )
                .await
                .map_err(|e| match e {
                    TokenError::Denied(status) => self.unauthorized(scope, status),
                    TokenError::Transport(cause) => Error::Unreachable {
                        registry: scope.registry.clone(),
                        url: realm.clone(),
                        cause: format!("token endpoint: {cause}"),
                    },
                    TokenError::Other(message) => Error::Registry {
                        registry: scope.registry.clone(),
                        action: format!("token request for {}", scopes.join(" ")),
                        status: 0,
                        message,
                    },
                })?;
                self.state().tokens.insert(key, token.clone());
                Ok(header(format!("Bearer {token}")))
            }
        }
    }

    /// Sends a request with authentication: on 401 learns the challenge, gets
    /// credentials or a token and tries once more. 401/403 after that is
    /// [`Error::Unauthorized`]; other statuses are returned for the caller to judge.
    pub(crate) async fn send(&self, scope: &Scope, req: &Req) -> Result<Response> {
        let auth = self.auth_header(scope, false).await?;
        let had_auth = auth.is_some();
        let response = self.send_retrying(&scope.registry, req, auth).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::FORBIDDEN => return Err(self.unauthorized(scope, 403)),
            _ => return Ok(response),
        }
        let values: Vec<String> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let Some(challenge) = parse_challenge(values.iter().map(String::as_str)) else {
            return Err(self.unauthorized(scope, 401));
        };
        let known = self
            .state()
            .challenges
            .insert(scope.registry.clone(), challenge.clone());
        // Basic credentials that were already sent will not get better on a retry.
        if had_auth && known == Some(Challenge::Basic) && challenge == Challenge::Basic {
            return Err(self.unauthorized(scope, 401));
        }
        let Some(auth) = self.auth_header(scope, true).await? else {
            return Err(self.unauthorized(scope, 401));
        };
        let response = self.send_retrying(&scope.registry, req, Some(auth)).await?;
        match response.status() {
            StatusCode::UNAUTHORIZED => Err(self.unauthorized(scope, 401)),
            StatusCode::FORBIDDEN => Err(self.unauthorized(scope, 403)),
            _ => Ok(response),
        }
    }

    /// Sends one request, retrying with exponential backoff on 429, 5xx and
    /// connection errors up to `max_attempts`.
    async fn send_retrying(
        &self,
        registry: &str,
        req: &Req,
        auth: Option<HeaderValue>,
    ) -> Result<Response> {
        let opts = &self.inner.opts;
        let attempts = opts.max_attempts.max(1);
        let mut delay = opts.retry_delay;
        for attempt in 1..=attempts {
            let mut builder = self
                .http_for(registry)
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(auth) = &auth {
                builder = builder.header(AUTHORIZATION, auth.clone());
            }
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            let last = attempt == attempts;
            let mut pause = None;
            match builder.send().await {
                Ok(response) => {
                    let status = response.status();
                    let transient = status == StatusCode::TOO_MANY_REQUESTS
                        || matches!(status.as_u16(), 500 | 502 | 503 | 504);
                    if !transient || last {
                        return Ok(response);
                    }
                    tracing::debug!(%registry, url = %req.url, %status, "retrying");
                    // A registry that says when to come back is believed, within reason.
                    if let Some(secs) = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        pause = Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
                    }
                }
                Err(e) => {
                    let transient =
                        e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
                    if !transient || last {
                        return Err(Error::Unreachable {
                            registry: registry.to_string(),
                            url: req.url.to_string(),
                            cause: error_chain(&e),
                        });
                    }
                    tracing::debug!(%registry, url = %req.url, error = %e, "retrying");
                }
            }
            Counters::add(&self.inner.counters.retries, 1);
            tokio::time::sleep(pause.unwrap_or(delay)).await;
            delay = delay.saturating_mul(2);
        }
        // The loop returns on its last attempt.
        Err(Error::Unreachable {
            registry: registry.to_string(),
            url: req.url.to_string(),
            cause: "no attempt was made".into(),
        })
    }
}

/// An error for an unexpected answer, with the registry's error codes if it sent any.
pub(crate) async fn unexpected(response: Response, registry: &str, action: String) -> Error {
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
    let body = response.bytes().await.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Registry credentials: Docker's `config.json` (inline auths, `credsStore`,
//! `credHelpers`) and Kubernetes `kubernetes.io/dockerconfigjson` Secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use crate::auth::{RegistryToken, TokenRequest};
use crate::error::{CredentialsProblem, Error, HelperProblem, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_ENDPOINT, DOCKER_HUB_LEGACY};

/// Key Docker writes in `config.json` for Docker Hub, and the server URL it hands
/// to credential helpers for Docker Hub.
const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
/// Other names that mean Docker Hub in `auths` keys.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB_LEGACY, DOCKER_HUB, DOCKER_HUB_ENDPOINT];
/// Secret name the CLI uses when `--registry-secret` is not given; when it is the
/// default, credentials silently come from Docker's config instead.
pub const DEFAULT_REGISTRY_SECRET: &str = "buildkit";
/// Secret type that carries a Docker config.
pub(crate) const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// Where registry credentials come from, in lookup order.
///
/// Cheap to clone; lookups run credential helpers on demand (the [`crate::Client`]
/// caches their answers per registry).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    sources: Vec<ConfigSource>,
    /// Pluggable sources, consulted after the config files (a build daemon
    /// asks its client).
    external: Vec<Arc<dyn CredentialSource>>,
}

/// Credentials for one registry, as a [`CredentialSource`] answers them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryLogin {
    /// User name (with `password`).
    pub username: Option<String>,
    /// Password or personal token.
    pub password: Option<String>,
    /// OAuth2 refresh token (`identitytoken`).
    pub identity_token: Option<String>,
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Somewhere else credentials come from: the build daemon's source asks the
/// client over the build session. Called off the async threads; may block
/// up to `limit`.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// Credentials for `registry` (`127.0.0.1:5000`), `None` for anonymous
    /// access. `scopes` are the token scopes wanted, for the answerer's
    /// information.
    fn login(
        &self,
        registry: &str,
        scopes: &[String],
        limit: Duration,
    ) -> Result<Option<RegistryLogin>>;
    /// A token for `request` that the source gets itself with its own
    /// credentials for `registry` (a build daemon's client does the token
    /// exchange, so the daemon never holds the login): `Ok(None)` when the
    /// source does not do token exchanges, and the caller asks
    /// [`CredentialSource::login`] and fetches the token itself. A source may
    /// also answer with a login ([`TokenAnswer::Login`]: an older client).
    fn token(
        &self,
        _registry: &str,
        _request: &TokenRequest,
        _limit: Duration,
    ) -> Result<Option<TokenAnswer>> {
        Ok(None)
    }
    /// What it is, for messages (`the client of this build`).
    fn describe(&self) -> String;
}

/// What a [`CredentialSource`] answers when asked for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenAnswer {
    /// A token for exactly the scopes asked.
    Token(RegistryToken),
    /// A login to get the token with (`None`: anonymous).
    Login(Option<RegistryLogin>),
}

/// How a Bearer token is to be had for a registry (see [`Credentials::bearer`]).
pub(crate) enum Bearer {
    /// A source handed over a token; the string describes the source.
    Token(RegistryToken, String),
    /// Fetch one with these credentials (`None`: anonymously).
    Credential(Option<Credential>),
}

#[derive(Clone, Debug)]
struct ConfigSource {
    /// Human description, e.g. "Docker config /root/.docker/config.json".
    name: String,
    config: DockerConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One set of credentials for a registry, with where it came from.
#[derive(Clone)]
pub(crate) struct Credential {
    pub username: Option<String>,
    pub password: Option<String>,
    /// OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    pub identity_token: Option<String>,
    /// Where it came from, for error messages (never the secret).
    pub source: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// No credentials: every request is anonymous.
    pub fn anonymous() -> Credentials {
        Credentials::default()
    }

    /// Docker's config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    /// A missing file means no credentials.
    pub fn docker_config() -> Result<Credentials> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("config.json"),
            _ => match dirs::home_dir() {
                Some(home) => home.join(".docker").join("config.json"),
                None => return Ok(Credentials::anonymous()),
            },
        };
        Credentials::docker_config_file(&path)
    }

    /// One Docker `config.json` file; missing means no credentials.
    pub fn docker_config_file(path: &Path) -> Result<Credentials> {
        let name = format!("Docker config {}", path.display());
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Credentials::anonymous())
            }
            Err(e) => {
                return Err(Error::CredentialsSource {
                    source_name: name,
                    what: "",
                    source: Box::new(e),
                })
            }
        };
        Credentials::from_docker_config_json(&text, &name)
    }

    /// A Docker config (dockerconfigjson) given as bytes; `name` describes where it
    /// came from in error messages.
    pub fn from_docker_config_json(json: &[u8], name: &str) -> Result<Credentials> {
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|e| Error::CredentialsSource {
                source_name: name.to_string(),
                what: "not a Docker config JSON: ",
                source: Box::new(e),
            })?;
        Ok(Credentials {
            sources: vec![ConfigSource {
                name: name.to_string(),
                config,
            }],
            external: Vec::new(),
        })
    }

    /// Credentials for the `--registry-secret` flag.
    ///
    /// - `None` or the default name [`DEFAULT_REGISTRY_SECRET`]: Docker's config.
    /// - `file:PATH`: a Kubernetes Secret of type `kubernetes.io/dockerconfigjson` as
    ///   YAML or JSON (`data[.dockerconfigjson]` base64, or `stringData`), or a bare
    ///   dockerconfigjson; registries it does not list fall back to Docker's config.
    /// - any other name: a Secret to read from the cluster. That arrives with the
    ///   kubernetes driver; until then this is [`Error::SecretNeedsCluster`].
    pub fn from_registry_secret(flag: Option<&str>) -> Result<Credentials> {
        match flag {
            None | Some(DEFAULT_REGISTRY_SECRET) => Credentials::docker_config(),
            Some(value) => match value.strip_prefix("file:") {
                Some(path) => {
                    let mut creds = Credentials::secret_file(Path::new(path))?;
                    creds.sources.extend(Credentials::docker_config()?.sources);
                    Ok(creds)
                }
                None => Err(Error::SecretNeedsCluster {
                    name: value.to_string(),
                }),
            },
        }
    }

    /// A Kubernetes dockerconfigjson Secret (YAML or JSON) or a bare
    /// dockerconfigjson file.
    pub fn secret_file(path: &Path) -> Result<Credentials> {
        let name = format!("registry secret file {}", path.display());
        let err = |problem| Error::Credentials {
            source_name: name.clone(),
            problem: Box::new(problem),
        };
        let failed = |what, source| Error::CredentialsSource {
            source_name: name.clone(),
            what,
            source,
        };
        let text = std::fs::read(path).map_err(|e| failed("", Box::new(e)))?;
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&text)
            .map_err(|e| failed("not YAML or JSON: ", Box::new(e)))?;
        let json = secret_payload(&doc).map_err(err)?;
        Credentials::from_docker_config_json(&json, &name)
    }

    /// Adds `other`'s sources after this one's (they are consulted later).
    pub fn then(mut self, other: Credentials) -> Credentials {
        self.sources.extend(other.sources);
        self.external.extend(other.external);
        self
    }

    /// Credentials from a pluggable source only.
    pub fn from_source(source: Arc<dyn CredentialSource>) -> Credentials {
        Credentials {
            sources: Vec::new(),
            external: vec![source],
        }
    }

    /// Whether no source is configured.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.external.is_empty()
    }

    /// The credentials these sources give for `registry`, as a client
    /// answers a build daemon's question. Blocks (credential helpers run).
    pub fn login(&self, registry: &str, helper_limit: Duration) -> Result<Option<RegistryLogin>> {
        Ok(self.lookup(registry, helper_limit)?.map(|c| RegistryLogin {
            username: c.username,
            password: c.password,
            identity_token: c.identity_token,
        }))
    }

    /// How to get a Bearer token for `request` at `registry`: credentials of
    /// the config files first, then each pluggable source, which may hand
    /// over the token itself. Blocks: call it off the async threads.
    pub(crate) fn bearer(
        &self,
        registry: &str,
        request: &TokenRequest,
        limit: Duration,
    ) -> Result<Bearer> {
        for source in &self.sources {
            if let Some(cred) = source.lookup(registry, limit)? {
                return Ok(Bearer::Credential(Some(cred)));
            }
        }
        for source in &self.external {
            let login = match source.token(registry, request, limit)? {
                Some(TokenAnswer::Token(token)) => {
                    return Ok(Bearer::Token(token, source.describe()))
                }
                Some(TokenAnswer::Login(login)) => login,
                None => source.login(registry, &request.scopes, limit)?,
            };
            if let Some(login) = login {
                return Ok(Bearer::Credential(Some(Credential {
                    username: login.username,
                    password: login.password,
                    identity_token: login.identity_token,
                    source: source.describe(),
                })));
            }
        }
        Ok(Bearer::Credential(None))
    }

    /// Looks up credentials for a registry name (`docker.io`, `127.0.0.1:5000`),
    /// running credential helpers if the config names one (each stopped after
    /// `helper_limit`). Blocks: call it off the async threads.
    pub(crate) fn lookup(
        &self,
        registry: &str,
        helper_limit: Duration,
    ) -> Result<Option<Credential>> {
        for source in &self.sources {
            if let Some(cred) = source.lookup(registry, helper_limit)? {
                return Ok(Some(cred));
            }
        }
        for source in &self.external {
            if let Some(login) = source.login(registry, &[], helper_limit)? {
                return Ok(Some(Credential {
                    username: login.username,
                    password: login.password,
                    identity_token: login.identity_token,
                    source: source.describe(),
                }));
            }
        }
        Ok(None)
    }
}

/// The dockerconfigjson inside a Secret document, or the document itself if it
/// already is a Docker config.
fn secret_payload(doc: &serde_yaml_ng::Value) -> std::result::Result<Vec<u8>, CredentialsProblem> {
    let field = |v: &serde_yaml_ng::Value, k: &str| v.get(k).cloned();
    if doc.get("auths").is_some() {
        return serde_json::to_vec(doc).map_err(CredentialsProblem::SecretJson);
    }
    if let Some(kind) = field(doc, "kind").and_then(|k| k.as_str().map(str::to_string)) {
        if kind != "Secret" {
            return Err(CredentialsProblem::NotASecret { kind });
        }
    }
    if let Some(ty) = field(doc, "type").and_then(|k| k.as_str().map(str::to_string)) {
        if ty != DOCKERCONFIGJSON_TYPE {
            return Err(CredentialsProblem::SecretType { secret_type: ty });
        }
    }
    if let Some(encoded) = doc
        .get("data")
        .and_then(|d| d.get(".dockerconfigjson"))
        .and_then(|v| v.as_str())
    {
        let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
        return base64::engine::general_purpose::STANDARD
            .decode(cleaned)
            .map_err(CredentialsProblem::SecretBase64);
    }
    if let Some(plain) = doc
        .get("stringData")
        .and_then(|d| d.get(".dockerconfigjson"))
        .and_then(|v| v.as_str())
    {
        return Ok(plain.as_bytes().to_vec());
    }
    Err(CredentialsProblem::NoDockerConfig)
}

/// Registry name an `auths`/`credHelpers` key stands for: scheme and path dropped,
/// Docker Hub aliases folded to `docker.io`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    if DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

/// Server URL a credential helper is asked about for a registry.
fn helper_server_url(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_CONFIG_KEY
    } else {
        registry
    }
}

impl ConfigSource {
    fn lookup(&self, registry: &str, helper_limit: Duration) -> Result<Option<Credential>> {
        if let Some((_, helper)) = self
            .config
            .cred_helpers
            .iter()
            .find(|(key, _)| normalize_key(key) == registry)
        {
            return self.run_helper(helper, registry, helper_limit);
        }
        // An exact key wins over one that only matches after normalization.
        let entry = self.config.auths.get(registry).or_else(|| {
            self.config
                .auths
                .iter()
                .find(|(key, _)| normalize_key(key) == registry)
                .map(|(_, e)| e)
        });
        if let Some(entry) = entry {
            if let Some(cred) = self.decode_entry(registry, entry)? {
                return Ok(Some(cred));
            }
        }
        match &self.config.creds_store {
            Some(store) if !store.is_empty() => self.run_helper(store, registry, helper_limit),
            _ => Ok(None),
        }
    }

    fn decode_entry(&self, registry: &str, entry: &AuthEntry) -> Result<Option<Credential>> {
        let source = format!("{} (auths entry for {registry})", self.name);
        let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| Error::CredentialsSource {
                    source_name: source.clone(),
                    what: "`auth` is not valid base64: ",
                    source: Box::new(e),
                })?;
            let decoded = String::from_utf8(decoded).map_err(|e| Error::Credentials {
                source_name: source.clone(),
                problem: Box::new(CredentialsProblem::AuthNotUtf8(e)),
            })?;
            let Some((u, p)) = decoded.split_once(':') else {
                return Err(Error::Credentials {
                    source_name: source,
                    problem: Box::new(CredentialsProblem::AuthNotPair),
                });
            };
            username = Some(u.to_string());
            password = Some(p.to_string());
        }
        let identity_token = entry.identitytoken.clone().filter(|t| !t.is_empty());
        if username.as_deref().unwrap_or("").is_empty() && identity_token.is_none() {
            return Ok(None);
        }
        Ok(Some(Credential {
            username,
            password,
            identity_token,
            source,
        }))
    }

    fn run_helper(
        &self,
        helper: &str,
        registry: &str,
        limit: Duration,
    ) -> Result<Option<Credential>> {
        let program = format!("docker-credential-{helper}");
        let source = format!("credential helper {program} (named in {})", self.name);
        let err = |problem: HelperProblem| Error::CredentialHelper {
            source_name: source.clone(),
            problem: Box::new(problem),
        };
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                err(HelperProblem::Spawn {
                    program: program.clone(),
                    source,
                })
            })?;
        let server = helper_server_url(registry);
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is judged by its answer.
            let _ = stdin.write_all(server.as_bytes());
        }
        let out = wait_limited(child, limit).map_err(|e| match e {
            Waited::Io(source) => err(HelperProblem::Io {
                program: program.clone(),
                source,
            }),
            Waited::TimedOut => err(HelperProblem::TimedOut {
                program: program.clone(),
                server: server.to_string(),
                limit,
            }),
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            if stdout.contains("credentials not found") {
                return Ok(None);
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(err(HelperProblem::Exited {
                program: program.clone(),
                status: out.status,
                said: first_line(if stdout.trim().is_empty() {
                    &stderr
                } else {
                    &stdout
                })
                .to_string(),
            }));
        }
        #[derive(Deserialize)]
        struct HelperAnswer {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: String,
        }
        let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|source| {
            err(HelperProblem::Answer {
                program: program.clone(),
                source,
            })
        })?;
        if answer.secret.is_empty() {
            return Ok(None);
        }
        // Docker's convention: username "<token>" means the secret is an identity token.
        let cred = if answer.username == "<token>" {
            Credential {
                username: None,
                password: None,
                identity_token: Some(answer.secret),
                source,
            }
        } else {
            Credential {
                username: Some(answer.username),
                password: Some(answer.secret),
                identity_token: None,
                source,
            }
        };
        Ok(Some(cred))
    }
}

enum Waited {
    Io(std::io::Error),
    TimedOut,
}

/// Like `wait_with_output`, but kills the child when it runs longer than `limit`.
fn wait_limited(
    mut child: std::process::Child,
    limit: Duration,
) -> std::result::Result<std::process::Output, Waited> {
    use std::io::Read;
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().map_err(Waited::Io)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader threads end when the pipes close; not waited for,
                // since a grandchild may still hold them.
                return Err(Waited::TimedOut);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn first_line(text: &str) -> &str {
    text.trim().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPER_LIMIT: Duration = Duration::from_secs(10);

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn docker_hub_key_and_scheme_less_keys_match() {
        let json = format!(
            r#"{{"auths":{{"{DOCKER_HUB_CONFIG_KEY}":{{"auth":"{}"}},"127.0.0.1:5000":{{"username":"u2","password":"p2"}},"http://localhost:5001/v1/":{{"identitytoken":"t3"}}}}}}"#,
            b64("hub-user:hub-pw")
        );
        let creds = Credentials::from_docker_config_json(json.as_bytes(), "test config").unwrap();
        let hub = creds.lookup("docker.io", HELPER_LIMIT).unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub-user"));
        assert_eq!(hub.password.as_deref(), Some("hub-pw"));
        assert!(hub.source.contains("test config"));
        let local = creds
            .lookup("127.0.0.1:5000", HELPER_LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(local.username.as_deref(), Some("u2"));
        let token = creds
            .lookup("localhost:5001", HELPER_LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(token.identity_token.as_deref(), Some("t3"));
        assert!(creds
            .lookup("127.0.0.1:5002", HELPER_LIMIT)
            .unwrap()
            .is_none());
        // Debug output never shows secrets.
        assert!(!format!("{hub:?}").contains("hub-pw"));
    }

    #[test]
    fn bad_auth_field_names_the_source_not_the_value() {
        let json = r#"{"auths":{"h.example":{"auth":"bm9jb2xvbg=="}}}"#;
        let creds = Credentials::from_docker_config_json(json.as_bytes(), "cfg.json").unwrap();
        let err = creds
            .lookup("h.example", HELPER_LIMIT)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("username:password"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_configs_keep_their_parse_errors() {
        let err = Credentials::from_docker_config_json(b"{", "config.json").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "cannot read registry credentials from config.json: not a Docker config JSON: "
            ),
            "{err}"
        );
        let source = std::error::Error::source(&err).expect("the JSON error is kept");
        assert!(source.is::<serde_json::Error>(), "{source:?}");
        let config = format!(r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#, "!!");
        let creds = Credentials::from_docker_config_json(config.as_bytes(), "c").unwrap();
        let err = creds.lookup("r.example", HELPER_LIMIT).unwrap_err();
        assert!(
            err.to_string().contains("`auth` is not valid base64: "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<base64::DecodeError>()));
    }

    #[test]
    fn secret_payload_forms() {
        let config = r#"{"auths":{"h.example":{"auth":"dTpw"}}}"#;
        let data: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "kind: Secret\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
            b64(config)
        ))
        .unwrap();
        assert_eq!(secret_payload(&data).unwrap(), config.as_bytes());
        let string_data: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "kind: Secret\nstringData:\n  .dockerconfigjson: '{config}'\n"
        ))
        .unwrap();
        assert_eq!(secret_payload(&string_data).unwrap(), config.as_bytes());
        let bare: serde_yaml_ng::Value = serde_yaml_ng::from_str(config).unwrap();
        let creds =
            Credentials::from_docker_config_json(&secret_payload(&bare).unwrap(), "bare").unwrap();
        assert_eq!(
            creds
                .lookup("h.example", HELPER_LIMIT)
                .unwrap()
                .unwrap()
                .username
                .as_deref(),
            Some("u")
        );
        let map: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("kind: ConfigMap\ndata: {}\n").unwrap();
        assert!(secret_payload(&map)
            .unwrap_err()
            .to_string()
            .contains("ConfigMap"));
        let empty: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("kind: Secret\ndata: {}\n").unwrap();
        assert!(secret_payload(&empty)
            .unwrap_err()
            .to_string()
            .contains(".dockerconfigjson"));
    }

    #[test]
    fn unusable_auths_and_secrets_keep_their_sources() {
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'p']);
        let config = format!(r#"{{"auths":{{"r.example":{{"auth":"{not_utf8}"}}}}}}"#);
        let creds = Credentials::from_docker_config_json(config.as_bytes(), "c").unwrap();
        let err = creds.lookup("r.example", HELPER_LIMIT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read registry credentials from c (auths entry for r.example): `auth` does not decode to UTF-8 text"
        );
        let problem = std::error::Error::source(&err).expect("the problem is kept");
        assert!(
            std::error::Error::source(problem)
                .is_some_and(|s| s.is::<std::string::FromUtf8Error>()),
            "{problem:?}"
        );
        let secret: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "kind: Secret\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: '!!'\n",
        )
        .unwrap();
        let problem = secret_payload(&secret).unwrap_err();
        assert!(
            problem
                .to_string()
                .starts_with("data[.dockerconfigjson] is not valid base64: "),
            "{problem}"
        );
        assert!(std::error::Error::source(&problem).is_some_and(|s| s.is::<base64::DecodeError>()));
        let typed: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("kind: Secret\ntype: Opaque\n").unwrap();
        assert_eq!(
            secret_payload(&typed).unwrap_err().to_string(),
            "the Secret has type Opaque; it must be kubernetes.io/dockerconfigjson (create it with `kubectl create secret docker-registry`)"
        );
    }

    #[test]
    fn keys_normalize_like_docker() {
        assert_eq!(normalize_key(DOCKER_HUB_CONFIG_KEY), "docker.io");
        assert_eq!(normalize_key(DOCKER_HUB_LEGACY), DOCKER_HUB);
        assert_eq!(normalize_key(DOCKER_HUB_ENDPOINT), DOCKER_HUB);
        assert_eq!(
            normalize_key("https://myregistry.example/v2/"),
            "myregistry.example"
        );
        assert_eq!(normalize_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_key("http://localhost:5000"), "localhost:5000");
    }
}

//! Basic auth against a real htpasswd-protected `docker-registry`, credentials
//! from Docker config files and Kubernetes Secrets, and Bearer token auth
//! against a real token-auth `docker-registry` with a token server run here.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::*;
use kbuild_image::ContentStore;
use kbuild_platform::Platform;
use kbuild_registry::{Credentials, Error, Reference};
use kbuild_testkit::registry::{TestRegistry, TokenAuthFiles};

const USER: &str = "alice";
const PASSWORD: &str = "pw-Zq8-very-secret";
/// OAuth2 refresh token the token server accepts (an `identitytoken` in config.json).
const REFRESH_TOKEN: &str = "refresh-Kp3-token";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn small_image(store: &ContentStore) -> kbuild_image::Descriptor {
    let (digest, bytes) = manifest(store, "linux", "amd64", None, &[&noise(5, 2000)]);
    kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn basic_auth_with_docker_config_and_secret_files() {
    let registry = TestRegistry::start_with_htpasswd(USER, PASSWORD).unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let root = small_image(&store);
    let target = Reference::parse(&format!("{host}/private/app:1")).unwrap();

    // Anonymous: refused, and the error says no credentials were found.
    let err = client(Credentials::anonymous())
        .push(std::slice::from_ref(&target), &root, &store)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.contains("no credentials"),
        "{text}"
    );

    // Wrong password from a config.json `auth` entry: names the file, never the secret.
    let bad = dir.path().join("bad.json");
    write(
        &bad,
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("{USER}:wrong-pw-123"))
        ),
    );
    let err = client(Credentials::docker_config_file(&bad).unwrap())
        .push(std::slice::from_ref(&target), &root, &store)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(&host) && text.contains(&bad.display().to_string()),
        "{text}"
    );
    assert!(
        !text.contains("wrong-pw-123") && !text.contains(PASSWORD),
        "{text}"
    );

    // Right password with a scheme-prefixed key and username/password fields.
    let good = dir.path().join("good.json");
    write(
        &good,
        &format!(
            r#"{{"auths":{{"http://{host}/v2/":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#
        ),
    );
    let pusher = client(Credentials::docker_config_file(&good).unwrap());
    pusher
        .push(std::slice::from_ref(&target), &root, &store)
        .await
        .unwrap();
    assert_eq!(pusher.stats().blobs_uploaded, 2);
    let raw = skopeo_raw(&target.to_string(), Some(&format!("{USER}:{PASSWORD}")));
    assert_eq!(raw, store.read(&root.digest).unwrap());

    // A Kubernetes Secret saved as YAML, through --registry-secret file:PATH.
    let secret = dir.path().join("secret.yaml");
    let dockerconfig = format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        b64(&format!("{USER}:{PASSWORD}"))
    );
    write(
        &secret,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
            b64(&dockerconfig)
        ),
    );
    let creds =
        Credentials::from_registry_secret(Some(&format!("file:{}", secret.display()))).unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = ContentStore::open(dst_dir.path()).unwrap();
    let pulled = client(creds)
        .pull_image(&target, &Platform::parse("linux/amd64").unwrap(), &dst)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), root.digest.to_string());

    // The same Secret as JSON with a wrong password: the error names the secret file.
    let secret_json = dir.path().join("secret.json");
    let wrong = format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        b64(&format!("{USER}:nope-456"))
    );
    write(
        &secret_json,
        &format!(
            r#"{{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/dockerconfigjson","data":{{".dockerconfigjson":"{}"}}}}"#,
            b64(&wrong)
        ),
    );
    let creds = Credentials::from_registry_secret(Some(&format!("file:{}", secret_json.display())))
        .unwrap();
    let err = client(creds).resolve(&target).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("registry secret file") && text.contains(&secret_json.display().to_string()),
        "{text}"
    );
    assert!(!text.contains("nope-456"), "{text}");
}

#[test]
fn registry_secret_flag_forms() {
    // A bare name needs the cluster, except the default which means Docker's config.
    let err = Credentials::from_registry_secret(Some("regcred")).unwrap_err();
    assert!(matches!(err, Error::SecretNeedsCluster { .. }), "{err}");
    assert!(
        err.to_string().contains("\"regcred\"") && err.to_string().contains("file:PATH"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    // Wrong secret type is refused with the type named.
    let opaque = dir.path().join("opaque.yaml");
    write(&opaque, "kind: Secret\ntype: Opaque\ndata:\n  x: eA==\n");
    let err =
        Credentials::from_registry_secret(Some(&format!("file:{}", opaque.display()))).unwrap_err();
    assert!(
        err.to_string().contains("Opaque")
            && err.to_string().contains(&opaque.display().to_string()),
        "{err}"
    );
    // A missing file names the file.
    let err = Credentials::from_registry_secret(Some("file:/nonexistent/secret.yaml")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/secret.yaml"),
        "{err}"
    );
}

/// A token server: checks Basic credentials, records the scopes asked for, and
/// signs ES256 JWTs the registry trusts through its root certificate bundle.
struct TokenServer {
    server: TinyServer,
    scopes: Arc<Mutex<Vec<String>>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    async fn start(files_for: impl FnOnce(u16) -> TokenAuthFiles) -> (TokenServer, TokenAuthFiles) {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let files_slot: Arc<Mutex<Option<TokenAuthFiles>>> = Arc::new(Mutex::new(None));
        let slot = files_slot.clone();
        let seen_scopes = scopes.clone();
        let server = TinyServer::start(move |req| {
            let files = slot.lock().unwrap().clone().expect("files set before use");
            // GET with Basic credentials, or OAuth2 POST with the refresh token;
            // scopes come as repeated `scope` query parameters or one
            // space-separated `scope` form field.
            let denied = Canned {
                status: 401,
                headers: vec![],
                body: b"{}".to_vec(),
                ..Default::default()
            };
            let form = |text: &str| -> Vec<(String, String)> {
                text.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), kbuild_testkit::token::percent_decode(v)))
                    .collect()
            };
            let requested: Vec<String> = if req.method == "POST" {
                let fields = form(&String::from_utf8_lossy(&req.body));
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                if field("grant_type").as_deref() != Some("refresh_token")
                    || field("refresh_token").as_deref() != Some(REFRESH_TOKEN)
                    || field("service").as_deref() != Some(&files.service)
                {
                    return denied;
                }
                field("scope")
                    .unwrap_or_default()
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                let expected = format!("Basic {}", b64(&format!("{USER}:{PASSWORD}")));
                if req.headers.get("authorization") != Some(&expected) {
                    return denied;
                }
                let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
                form(query)
                    .into_iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v)
                    .collect()
            };
            let mut access = Vec::new();
            for scope in requested {
                seen_scopes.lock().unwrap().push(scope.clone());
                let parts: Vec<&str> = scope.split(':').collect();
                if parts.len() == 3 {
                    access.push(serde_json::json!({
                        "type": parts[0], "name": parts[1],
                        "actions": parts[2].split(',').collect::<Vec<_>>(),
                    }));
                }
            }
            let key_der = std::fs::read(&files.key_der).unwrap();
            let cert_der = std::fs::read(&files.cert_der).unwrap();
            let rng = ring::rand::SystemRandom::new();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({
                "typ": "JWT", "alg": "ES256",
                "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)],
            });
            let claims = serde_json::json!({
                "iss": files.issuer, "sub": USER, "aud": files.service,
                "exp": now + 300, "nbf": now - 10, "iat": now,
                "jti": format!("{now}-{}", access.len()), "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64url(&serde_json::to_vec(&header).unwrap()),
                b64url(&serde_json::to_vec(&claims).unwrap())
            );
            let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
            let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
            Canned::ok(
                "application/json",
                serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": 300}))
                    .unwrap(),
            )
        })
        .await;
        let files = files_for(server.port);
        *files_slot.lock().unwrap() = Some(files.clone());
        (TokenServer { server, scopes }, files)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_a_token_server_with_scopes_and_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (tokens, files) = TokenServer::start(|port| {
        TestRegistry::token_auth_files(&keys, &format!("http://127.0.0.1:{port}/token")).unwrap()
    })
    .await;
    let registry = TestRegistry::start_with_token_auth(&files).unwrap();
    let host = registry.host();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let root = small_image(&store);

    let config = dir.path().join("config.json");
    write(
        &config,
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("{USER}:{PASSWORD}"))
        ),
    );
    let client = client(Credentials::docker_config_file(&config).unwrap());
    let first = Reference::parse(&format!("{host}/team/app:1")).unwrap();
    client
        .push(std::slice::from_ref(&first), &root, &store)
        .await
        .unwrap();
    let second = Reference::parse(&format!("{host}/team/copy:1")).unwrap();
    client
        .push(std::slice::from_ref(&second), &root, &store)
        .await
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.blobs_uploaded, stats.blobs_mounted),
        (2, 2),
        "{stats:?}"
    );

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = ContentStore::open(dst_dir.path()).unwrap();
    let puller = common::client(Credentials::docker_config_file(&config).unwrap());
    puller
        .pull_image(&second, &Platform::parse("linux/amd64").unwrap(), &dst)
        .await
        .unwrap();

    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(
        scopes.contains(&"repository:team/app:pull,push".to_string()),
        "{scopes:?}"
    );
    // The mount asked for pull on its source repository next to push on the target.
    assert!(
        scopes.contains(&"repository:team/copy:pull,push".to_string()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:team/app:pull".to_string()),
        "{scopes:?}"
    );
    // The pull only asked to pull.
    assert!(
        scopes.contains(&"repository:team/copy:pull".to_string()),
        "{scopes:?}"
    );
    // Tokens are cached per scope: far fewer token requests than registry requests.
    let token_requests = tokens.server.seen.lock().unwrap().len();
    assert!(
        token_requests <= 10,
        "{token_requests} token requests: {scopes:?}"
    );

    // An identitytoken in config.json goes to the token endpoint as an OAuth2 refresh token.
    let oauth_config = dir.path().join("oauth.json");
    write(
        &oauth_config,
        &format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{REFRESH_TOKEN}"}}}}}}"#),
    );
    let oauth = common::client(Credentials::docker_config_file(&oauth_config).unwrap());
    let (desc, _) = oauth.resolve(&first).await.unwrap();
    assert_eq!(desc.digest.to_string(), root.digest.to_string());
    let posts = tokens
        .server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1);

    // A wrong refresh token is refused, naming the config file but not the token.
    let bad_oauth = dir.path().join("bad-oauth.json");
    write(
        &bad_oauth,
        &format!(r#"{{"auths":{{"{host}":{{"identitytoken":"stale-token-777"}}}}}}"#),
    );
    let err = common::client(Credentials::docker_config_file(&bad_oauth).unwrap())
        .resolve(&first)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(&bad_oauth.display().to_string()) && !text.contains("stale-token-777"),
        "{text}"
    );

    // Without credentials the token server refuses, and the error says so.
    let anon = common::client(Credentials::anonymous());
    let err = anon.resolve(&first).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");
}

/// A token endpoint that takes the connection and never answers: the token
/// limit ends the wait, and the error names the registry and the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_token_endpoint_times_out() {
    // Connections complete in the listen backlog; nothing ever answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!(
        "http://127.0.0.1:{}/token",
        silent.local_addr().unwrap().port()
    );
    let dir = tempfile::tempdir().unwrap();
    let files = TestRegistry::token_auth_files(dir.path(), &realm).unwrap();
    let registry = TestRegistry::start_with_token_auth(&files).unwrap();
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        max_attempts: 2,
        retry_delay: std::time::Duration::from_millis(10),
        timeouts: kbuild_registry::Timeouts::parse("token=1s").unwrap(),
        ..Default::default()
    })
    .unwrap();
    let reference = Reference::parse(&format!("{}/locked/app:1", registry.host())).unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.resolve(&reference),
    )
    .await
    .expect("bounded by the token limit")
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(10),
        "two attempts of 1 s: {took:?}"
    );
    assert!(
        matches!(
            err.first_cause(),
            Error::Timeout {
                wait: kbuild_registry::Wait::Token,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&registry.host()) && text.contains(&realm) && text.contains("token="),
        "{text}"
    );
    assert_eq!(client.stats().retries, 1);
}

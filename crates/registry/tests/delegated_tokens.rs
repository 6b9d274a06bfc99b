//! A client whose credentials stay elsewhere (a build daemon's): its
//! credential source hands over Bearer tokens for exactly the scopes each
//! request needs, got by the holder of the login with its own client
//! (`Client::registry_token`), against a real token-auth `docker-registry`
//! and the testkit's token server. The source is asked again when a token
//! expires and for each new scope (a cross-repository mount), and never
//! for the login.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use kbuild_image::ContentStore;
use kbuild_registry::{
    Client, CredentialSource, Credentials, Error, Reference, RegistryLogin, TokenAnswer,
    TokenRequest,
};
use kbuild_testkit::registry::TestRegistry;
use kbuild_testkit::token::TokenServer;

const USER: &str = "delegator";
const PASSWORD: &str = "pw-Dl9-kept-by-the-client";

/// The daemon's side of the session: every question goes to the holder of
/// the login (`holder`), which answers with a token.
struct Holder {
    holder: Client,
    runtime: tokio::runtime::Handle,
    asked: Mutex<Vec<Vec<String>>>,
    logins: Mutex<u32>,
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holder")
    }
}

impl CredentialSource for Holder {
    fn login(
        &self,
        _registry: &str,
        _scopes: &[String],
        _limit: Duration,
    ) -> kbuild_registry::Result<Option<RegistryLogin>> {
        *self.logins.lock().unwrap() += 1;
        Ok(None)
    }

    fn token(
        &self,
        registry: &str,
        request: &TokenRequest,
        _limit: Duration,
    ) -> kbuild_registry::Result<Option<TokenAnswer>> {
        self.asked.lock().unwrap().push(request.scopes.clone());
        let token = self
            .runtime
            .block_on(self.holder.registry_token(registry, request))?;
        Ok(Some(TokenAnswer::Token(token)))
    }

    fn describe(&self) -> String {
        "the test's holder".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_hands_over_scoped_tokens_and_is_asked_again_when_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (tokens, files) =
        TokenServer::start(std::net::Ipv4Addr::LOCALHOST, &keys, USER, PASSWORD).unwrap();
    let registry = TestRegistry::start_with_token_auth(&files).unwrap();
    let host = registry.host();
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let holder = Arc::new(Holder {
        holder: client(Credentials::docker_config_file(&config).unwrap()),
        runtime: tokio::runtime::Handle::current(),
        asked: Mutex::new(Vec::new()),
        logins: Mutex::new(0),
    });
    let daemon = client(Credentials::from_source(holder.clone()));
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    let (digest, bytes) = manifest(&store, "linux", "amd64", None, &[&noise(7, 3000)]);
    let root = kbuild_image::Descriptor::new(
        "application/vnd.oci.image.manifest.v1+json",
        digest,
        bytes.len() as u64,
    );
    // Tokens said to last 2 s: kept 1.6 s.
    tokens.set_expires_in(2);
    let app = Reference::parse(&format!("{host}/team/app:1")).unwrap();
    daemon
        .push(std::slice::from_ref(&app), &root, &store)
        .await
        .unwrap();
    let push_scope = vec!["repository:team/app:pull,push".to_string()];
    assert_eq!(
        holder.asked.lock().unwrap().clone(),
        std::slice::from_ref(&push_scope)
    );
    // Once it expired the same scope is asked for again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    daemon
        .push(std::slice::from_ref(&app), &root, &store)
        .await
        .unwrap();
    assert_eq!(
        holder.asked.lock().unwrap().clone(),
        [push_scope.clone(), push_scope.clone()]
    );
    // Another repository of the same registry: the mount from the first
    // needs pull on it beside push on the target, asked for as such.
    tokens.set_expires_in(300);
    let copy = Reference::parse(&format!("{host}/team/copy:1")).unwrap();
    daemon
        .push(std::slice::from_ref(&copy), &root, &store)
        .await
        .unwrap();
    assert!(daemon.stats().blobs_mounted > 0, "{:?}", daemon.stats());
    let asked = holder.asked.lock().unwrap().clone();
    assert!(
        asked.contains(&vec![
            "repository:team/copy:pull,push".to_string(),
            "repository:team/app:pull".to_string()
        ]),
        "{asked:?}"
    );
    // Every token the server granted was for scopes some request needed,
    // and the login was never asked for.
    for seen in tokens.requests() {
        assert!(seen.granted, "{seen:?}");
        for s in &seen.scopes {
            assert!(
                [
                    "repository:team/app:pull,push",
                    "repository:team/copy:pull,push",
                    "repository:team/app:pull",
                    "repository:team/copy:pull"
                ]
                .contains(&s.as_str()),
                "{s}"
            );
        }
    }
    assert_eq!(*holder.logins.lock().unwrap(), 0);
    // skopeo reads what went up with tokens only.
    let raw = skopeo_raw(&copy.to_string(), Some(&format!("{USER}:{PASSWORD}")));
    assert_eq!(raw, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_refuses_wide_scopes_and_foreign_token_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (_tokens, files) =
        TokenServer::start(std::net::Ipv4Addr::LOCALHOST, dir.path(), USER, PASSWORD).unwrap();
    let registry = TestRegistry::start_with_token_auth(&files).unwrap();
    let host = registry.host();
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let holder = client(Credentials::docker_config_file(&config).unwrap());
    let ask = |realm: &str, scopes: &[&str]| TokenRequest {
        realm: realm.to_string(),
        service: Some(files.service.clone()),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    for scopes in [
        &["registry:catalog:*"][..],
        &["repository:team/app:*"],
        &["repository:team/app:pull", "repository:team/app:delete"],
        &[],
    ] {
        let err = holder
            .registry_token(&host, &ask(&files.realm, scopes))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ScopeRefused { .. }), "{err}");
    }
    // A token endpoint the registry does not name gets no credentials.
    let elsewhere = "http://127.0.0.1:9/steal";
    let err = holder
        .registry_token(&host, &ask(elsewhere, &["repository:team/app:pull"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RealmMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(elsewhere) && err.to_string().contains(&files.realm),
        "{err}"
    );
    // The registry's own endpoint gives a token that lasts as announced.
    let token = holder
        .registry_token(&host, &ask(&files.realm, &["repository:team/app:pull"]))
        .await
        .unwrap();
    assert!(
        token.expires_in > Duration::from_secs(200) && !token.token.is_empty(),
        "{token:?}"
    );
}

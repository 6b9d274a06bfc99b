//! The default `--registry-secret` name means Docker's config. Alone in its test
//! binary because it sets `DOCKER_CONFIG` for the process.

use kbuild_registry::Credentials;

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn default_secret_name_falls_back_to_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("config.json"), r#"{"auths":{}}"#);
    std::env::set_var("DOCKER_CONFIG", dir.path());
    let creds = Credentials::from_registry_secret(None).unwrap();
    assert!(!creds.is_empty());
    let creds =
        Credentials::from_registry_secret(Some(kbuild_registry::DEFAULT_REGISTRY_SECRET)).unwrap();
    assert!(!creds.is_empty());
    write(&dir.path().join("config.json"), "not json");
    let err = Credentials::from_registry_secret(None).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    std::env::remove_var("DOCKER_CONFIG");
}

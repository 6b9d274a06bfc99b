//! `credHelpers` and `credsStore` run `docker-credential-<name> get` (Docker's
//! protocol: server URL on stdin, JSON on stdout). Alone in its test binary
//! because it puts a helper script on `PATH`.

mod common;

use std::os::unix::fs::PermissionsExt;

use kbuild_registry::{Credentials, Error, Reference};
use kbuild_testkit::registry::TestRegistry;

const USER: &str = "helper-user";
const PASSWORD: &str = "helper-pw-31";

#[tokio::test]
async fn credential_helpers_supply_basic_credentials() {
    let registry = TestRegistry::start_with_htpasswd(USER, PASSWORD).unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Answers only for our registry, with the password given as its first argument
    // baked in; records each server URL it is asked about.
    let log = dir.path().join("asked.log");
    for (name, password) in [("kbgood", PASSWORD), ("kbbad", "not-the-pw-9")] {
        let script = bin.join(format!("docker-credential-{name}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread url\necho \"$url\" >> {log}\n\
                 if [ \"$url\" = \"{host}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{password}\"}}' \"$url\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));

    let missing = Reference::parse(&format!("{host}/private/none:1")).unwrap();
    let files = std::cell::Cell::new(0);
    let config = |text: String| {
        let n = files.get() + 1;
        files.set(n);
        let file = dir.path().join(format!("config-{n}.json"));
        std::fs::write(&file, text).unwrap();
        (Credentials::docker_config_file(&file).unwrap(), file)
    };

    // credHelpers for this host: authenticated, so the missing tag is reported as such.
    let (creds, _) = config(format!(r#"{{"credHelpers":{{"{host}":"kbgood"}}}}"#));
    let err = common::client(creds).resolve(&missing).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");

    // credsStore for all hosts works the same way.
    let (creds, _) = config(format!(
        r#"{{"auths":{{"{host}":{{}}}},"credsStore":"kbgood"}}"#
    ));
    let err = common::client(creds).resolve(&missing).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");

    // A helper with a wrong password: the error names the helper, not the password.
    let (creds, file) = config(r#"{"credsStore":"kbbad"}"#.to_string());
    let err = common::client(creds).resolve(&missing).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{text}");
    assert!(
        text.contains("docker-credential-kbbad") && text.contains(&file.display().to_string()),
        "{text}"
    );
    assert!(!text.contains("not-the-pw-9"), "{text}");

    // A helper that does not know the host means no credentials.
    let (creds, _) = config(r#"{"credsStore":"kbgood"}"#.to_string());
    let other = Reference::parse(&format!("localhost:{}/private/none:1", registry.port())).unwrap();
    let err = common::client(creds).resolve(&other).await.unwrap_err();
    assert!(err.to_string().contains("no credentials"), "{err}");

    // A helper that is not installed is a clear error.
    let (creds, _) = config(format!(r#"{{"credHelpers":{{"{host}":"kbmissing"}}}}"#));
    let err = common::client(creds).resolve(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains("docker-credential-kbmissing"),
        "{err}"
    );

    // A helper that hangs (waiting for a login, say) is stopped after the
    // helper limit, and the error names it; the async threads stay free.
    let hang = bin.join("docker-credential-kbhang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (creds, _) = config(format!(r#"{{"credHelpers":{{"{host}":"kbhang"}}}}"#));
    let client = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
        credentials: creds,
        timeouts: kbuild_registry::Timeouts::parse("helper=1s").unwrap(),
        ..Default::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let ticker = tokio::spawn(async {
        for _ in 0..10 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), client.resolve(&missing))
        .await
        .expect("bounded by the helper limit")
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert!(
        matches!(
            &err,
            Error::CredentialHelper { problem, .. }
                if matches!(**problem, kbuild_registry::HelperProblem::TimedOut { .. })
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("docker-credential-kbhang") && text.contains("did not finish within 1s"),
        "{text}"
    );
    // This single-threaded runtime kept running other tasks while the helper hung.
    assert!(ticker.is_finished());

    let asked = std::fs::read_to_string(&log).unwrap();
    assert!(asked.lines().any(|l| l == host), "{asked}");
}

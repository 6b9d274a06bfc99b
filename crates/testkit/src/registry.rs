//! A real `docker-registry` (Debian's build of the distribution project) on a
//! free loopback port, with its own storage directory, stopped on drop.
//!
//! - [`TestRegistry::start`]: anonymous access ([`TestRegistry::start_on`]: on
//!   another local address, to play a remote registry).
//! - [`TestRegistry::start_with_htpasswd`]: Basic auth against a bcrypt htpasswd
//!   file made with `htpasswd -Bbn` (apache2-utils).
//! - [`TestRegistry::start_with_token_auth`]: Bearer token auth; the registry
//!   trusts a certificate generated with the `openssl` CLI, and the caller runs
//!   the token server that signs tokens with the matching key
//!   ([`TokenAuthFiles`] has the key, certificate, issuer and service names).

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::output_ok;

/// The registry program.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long to wait for the registry to answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `docker-registry`. Killed, and its storage removed, on drop.
pub struct TestRegistry {
    child: Child,
    ip: Ipv4Addr,
    port: u16,
    dir: TempDir,
}

/// Key material and names for a registry with token authentication.
#[derive(Clone, Debug)]
pub struct TokenAuthFiles {
    /// PKCS#8 PEM private key (ECDSA P-256) the token server signs with.
    pub key_pem: PathBuf,
    /// PKCS#8 DER of the same key.
    pub key_der: PathBuf,
    /// Self-signed certificate (PEM) of the key; the registry's root bundle.
    pub cert_pem: PathBuf,
    /// DER of the certificate, for a JWT `x5c` header.
    pub cert_der: PathBuf,
    /// `iss` the registry expects.
    pub issuer: String,
    /// `aud` / `service` the registry expects.
    pub service: String,
    /// Realm URL the registry sends in its challenge.
    pub realm: String,
}

pub use crate::error::StartError;

/// A free TCP port on 127.0.0.1 (bound, then released for the registry to take).
pub fn free_port() -> Result<u16, StartError> {
    free_port_on(Ipv4Addr::LOCALHOST)
}

fn free_port_on(ip: Ipv4Addr) -> Result<u16, StartError> {
    let listener =
        TcpListener::bind((ip, 0)).map_err(StartError::io(format!("bind a port on {ip}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(StartError::io("read the bound port"))
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<TestRegistry, StartError> {
        TestRegistry::launch(Ipv4Addr::LOCALHOST, "", |_| Ok(()))
    }

    /// Starts an anonymous registry listening on `ip` instead of 127.0.0.1: a
    /// non-loopback address is what clients treat as a remote registry (HTTPS
    /// unless marked insecure).
    pub fn start_on(ip: Ipv4Addr) -> Result<TestRegistry, StartError> {
        TestRegistry::launch(ip, "", |_| Ok(()))
    }

    /// Starts a registry that requires Basic auth as `user`/`pass`.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Result<TestRegistry, StartError> {
        TestRegistry::start_with_htpasswd_on(Ipv4Addr::LOCALHOST, user, pass)
    }

    /// [`TestRegistry::start_with_htpasswd`] listening on `ip` (e.g. an
    /// address pods of a test cluster reach).
    pub fn start_with_htpasswd_on(
        ip: Ipv4Addr,
        user: &str,
        pass: &str,
    ) -> Result<TestRegistry, StartError> {
        let out = output_ok(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        TestRegistry::launch(
            ip,
            "auth:\n  htpasswd:\n    realm: test-realm\n    path: HTPASSWD\n",
            move |dir| {
                std::fs::write(dir.join("htpasswd"), format!("{line}\n"))
                    .map_err(StartError::io("write htpasswd"))
            },
        )
    }

    /// Generates an ECDSA P-256 key and self-signed certificate with `openssl`
    /// in `dir`, for [`TestRegistry::start_with_token_auth`].
    pub fn token_auth_files(dir: &Path, realm: &str) -> Result<TokenAuthFiles, StartError> {
        let run = |args: &[&str]| -> Result<(), StartError> {
            output_ok(Command::new("openssl").args(args).current_dir(dir))?;
            Ok(())
        };
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "token.key",
        ])?;
        run(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "token.key",
            "-outform",
            "DER",
            "-out",
            "token.key.der",
        ])?;
        run(&[
            "req",
            "-new",
            "-x509",
            "-key",
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kbuild-test-token-issuer",
        ])?;
        run(&[
            "x509",
            "-in",
            "token.crt",
            "-outform",
            "DER",
            "-out",
            "token.crt.der",
        ])?;
        Ok(TokenAuthFiles {
            key_pem: dir.join("token.key"),
            key_der: dir.join("token.key.der"),
            cert_pem: dir.join("token.crt"),
            cert_der: dir.join("token.crt.der"),
            issuer: "kbuild-test-issuer".into(),
            service: "kbuild-test-registry".into(),
            realm: realm.to_string(),
        })
    }

    /// Starts a registry that requires Bearer tokens issued at `files.realm` and
    /// signed with the key of `files.cert_pem`.
    pub fn start_with_token_auth(files: &TokenAuthFiles) -> Result<TestRegistry, StartError> {
        TestRegistry::start_with_token_auth_on(Ipv4Addr::LOCALHOST, files)
    }

    /// [`TestRegistry::start_with_token_auth`] listening on `ip` (e.g. a
    /// test host's gateway, which daemons in test hosts reach).
    pub fn start_with_token_auth_on(
        ip: Ipv4Addr,
        files: &TokenAuthFiles,
    ) -> Result<TestRegistry, StartError> {
        let section = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            files.realm,
            files.service,
            files.issuer,
            files.cert_pem.display()
        );
        TestRegistry::launch(ip, &section, |_| Ok(()))
    }

    fn launch(
        ip: Ipv4Addr,
        auth_section: &str,
        prepare: impl FnOnce(&Path) -> Result<(), StartError>,
    ) -> Result<TestRegistry, StartError> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(StartError::NotInstalled {
                program: REGISTRY_BIN.into(),
                package: "docker-registry",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("kbuild-registry-")
            .tempdir()
            .map_err(StartError::io("create a temporary directory"))?;
        prepare(dir.path())?;
        let port = free_port_on(ip)?;
        let storage = dir.path().join("storage");
        let auth = auth_section.replace(
            "HTPASSWD",
            &dir.path().join("htpasswd").display().to_string(),
        );
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {ip}:{port}\n  secret: kbuild-test-secret\n\
             {auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .map_err(StartError::io(format!("write {}", config_path.display())))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(StartError::io("create the registry log"))?;
        let log2 = log
            .try_clone()
            .map_err(StartError::io("open the registry log twice"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(StartError::io(format!("start {REGISTRY_BIN}")))?;
        let mut registry = TestRegistry {
            child,
            ip,
            port,
            dir,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StartError::Exited {
                    what: "docker-registry".into(),
                    status,
                    log: self.log(),
                });
            }
            if let Some(code) = http_status(self.ip, self.port, "/v2/") {
                // 200 when anonymous, 401 with auth: either way it serves the API.
                if code == 200 || code == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::NoAnswer {
                    what: format!("docker-registry (GET /v2/ on port {})", self.port),
                    waited: START_TIMEOUT,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `IP:PORT` (127.0.0.1 unless started with [`TestRegistry::start_on`]),
    /// the registry part of references.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

/// Status code of a plain HTTP/1.0 GET, or None if nothing answers.
fn http_status(ip: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    use std::io::Read;
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from((ip, port)),
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

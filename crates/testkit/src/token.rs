//! A real token server for [`TestRegistry::start_with_token_auth`]: it
//! takes HTTP `GET /token?service=...&scope=...` with Basic credentials
//! (the only user it knows), records the scopes asked for, and answers an
//! ES256 JWT signed with the key the registry trusts, granting exactly the
//! scopes asked for. Wrong or missing credentials get 401. Every request is
//! recorded with the address it came from ([`TokenServer::requests`]), and
//! the lifetime it announces (`expires_in`) can be shortened
//! ([`TokenServer::set_expires_in`]). Stopped on drop.

use crate::registry::{StartError, TestRegistry, TokenAuthFiles};
use base64::Engine as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A running token server.
pub struct TokenServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    scopes: Arc<Mutex<Vec<String>>>,
    denied: Arc<Mutex<u32>>,
    requests: Arc<Mutex<Vec<Seen>>>,
    expires_in: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One token request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The address it came from.
    pub peer: IpAddr,
    /// The scopes asked for (granted exactly when `granted`).
    pub scopes: Vec<String>,
    /// Whether it had the credentials and got a token.
    pub granted: bool,
}

impl TokenServer {
    /// Starts a token server on `ip` for `user`/`password`, with its key
    /// and certificate made in `dir` (see [`TestRegistry::token_auth_files`]).
    pub fn start(
        ip: Ipv4Addr,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> Result<(TokenServer, TokenAuthFiles), StartError> {
        let listener = TcpListener::bind((ip, 0)).map_err(StartError::io(format!(
            "bind the token server's port on {ip}"
        )))?;
        let addr = listener
            .local_addr()
            .map_err(StartError::io("read the token server's port"))?;
        let files = TestRegistry::token_auth_files(dir, &format!("http://{addr}/token"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let denied = Arc::new(Mutex::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let expires_in = Arc::new(AtomicU64::new(300));
        let expected = format!("Basic {}", basic_auth(user, password));
        let subject = user.to_string();
        let thread = {
            let (stop, scopes, denied, files) =
                (stop.clone(), scopes.clone(), denied.clone(), files.clone());
            let (requests, expires_in) = (requests.clone(), expires_in.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let lifetime = expires_in.load(Ordering::Relaxed);
                    let answer = serve(
                        conn, &files, &expected, &subject, &scopes, &requests, lifetime,
                    );
                    if answer == Some(401) {
                        if let Ok(mut d) = denied.lock() {
                            *d += 1;
                        }
                    }
                }
            })
        };
        Ok((
            TokenServer {
                addr,
                stop,
                scopes,
                denied,
                requests,
                expires_in,
                thread: Some(thread),
            },
            files,
        ))
    }

    /// The scopes asked for so far, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every request so far, in order, with the address it came from.
    pub fn requests(&self) -> Vec<Seen> {
        self.requests.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The `expires_in` (seconds) of the tokens it hands out from now on
    /// (300 at the start; the tokens themselves stay valid for 300 s, so a
    /// client that asks again early is only seen doing so).
    pub fn set_expires_in(&self, secs: u64) {
        self.expires_in.store(secs, Ordering::Relaxed);
    }

    /// How many requests were refused (wrong or no credentials).
    pub fn denied(&self) -> u32 {
        self.denied.lock().map(|d| *d).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `user:password` in base64: the value of a Basic `Authorization` header
/// and the `auth` of a Docker config.
pub fn basic_auth(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The `auth` of `user:password` and a Docker `config.json` holding it for
/// registry `host`, as `docker login` writes them.
pub fn docker_config(host: &str, user: &str, password: &str) -> (String, String) {
    let auth = basic_auth(user, password);
    let config = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    (auth, config)
}

/// `application/x-www-form-urlencoded` decoding of one value (`%XX`,
/// `+` for a space); bad escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one request; returns the status sent.
fn serve(
    conn: TcpStream,
    files: &TokenAuthFiles,
    expected: &str,
    subject: &str,
    seen: &Mutex<Vec<String>>,
    requests: &Mutex<Vec<Seen>>,
    expires_in: u64,
) -> Option<u16> {
    let peer = conn.peer_addr().ok()?.ip();
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let mut conn = conn;
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let asked: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| percent_decode(v))
        .collect();
    let granted = authorization.as_deref() == Some(expected);
    if let Ok(mut r) = requests.lock() {
        r.push(Seen {
            peer,
            scopes: asked,
            granted,
        });
    }
    if !granted {
        let _ = conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        return Some(401);
    }
    let mut access = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "scope" {
            continue;
        }
        let scope = percent_decode(v);
        if let Ok(mut s) = seen.lock() {
            s.push(scope.clone());
        }
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() == 3 {
            access.push(serde_json::json!({
                "type": parts[0], "name": parts[1],
                "actions": parts[2].split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let token = sign(files, subject, access)?;
    let body =
        serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": expires_in})).ok()?;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(&body).ok()?;
    Some(200)
}

fn sign(files: &TokenAuthFiles, subject: &str, access: Vec<serde_json::Value>) -> Option<String> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key_der = std::fs::read(&files.key_der).ok()?;
    let cert_der = std::fs::read(&files.cert_der).ok()?;
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)],
    });
    let claims = serde_json::json!({
        "iss": files.issuer, "sub": subject, "aud": files.service,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", access.len()), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).ok()?),
        b64url(&serde_json::to_vec(&claims).ok()?)
    );
    let sig = key.sign(&rng, input.as_bytes()).ok()?;
    Some(format!("{input}.{}", b64url(sig.as_ref())))
}

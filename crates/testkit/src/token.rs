//! A real token server for [`TestRegistry::start_with_token_auth`]: it
//! takes HTTP `GET /token?service=...&scope=...` with Basic credentials
//! (the only user it knows), records the scopes asked for, and answers an
//! ES256 JWT signed with the key the registry trusts, granting exactly the
//! scopes asked for. Wrong or missing credentials get 401. Stopped on drop.

use crate::registry::{StartError, TestRegistry, TokenAuthFiles};
use base64::Engine as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running token server.
pub struct TokenServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    scopes: Arc<Mutex<Vec<String>>>,
    denied: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let listener = TcpListener::bind((ip, 0))
            .map_err(|e| StartError(format!("token server: bind {ip}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError(format!("token server: {e}")))?;
        let files = TestRegistry::token_auth_files(dir, &format!("http://{addr}/token"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let denied = Arc::new(Mutex::new(0));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let subject = user.to_string();
        let thread = {
            let (stop, scopes, denied, files) =
                (stop.clone(), scopes.clone(), denied.clone(), files.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let answer = serve(conn, &files, &expected, &subject, &scopes);
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
                thread: Some(thread),
            },
            files,
        ))
    }

    /// The scopes asked for so far, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.lock().map(|s| s.clone()).unwrap_or_default()
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

fn percent_decode(s: &str) -> String {
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
) -> Option<u16> {
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
    if authorization.as_deref() != Some(expected) {
        let _ = conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        return Some(401);
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
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
    let body = serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": 300})).ok()?;
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

//! A fault-injecting HTTP/1.1 proxy in front of a real registry, as a real
//! process (`kbuild-fault-proxy`, a binary of this crate) and [`FaultProxy`]
//! to start and stop it.
//!
//! Every request is classified by [`kind`] (`blob-put` is the PUT that closes
//! a blob upload, `manifest-put`, `patch`, `post`, `head`, `blob-get`,
//! `manifest-get`, `other`) and, when a rule names its kind, may get a fault
//! instead of plain forwarding:
//!
//! | fault | what the client sees |
//! |---|---|
//! | `405`, `500`, `502`, `503` | that status; the registry never saw the request (405: a registry that refuses the method, e.g. chunked `PATCH` uploads) |
//! | `reset` | the connection closed before the request was forwarded |
//! | `502-after` | the registry did the request, the client gets 502 (a lost reply) |
//! | `reset-after` | the registry did the request, the connection closes (a lost reply) |
//! | `trickle` | the request body is read and the reply sent a few bytes at a time |
//! | `hang` | the request is read and never answered |
//!
//! A rule is `KIND=FAULT[:WHEN]`: WHEN is `all` (the default), a whole number
//! N (the first N requests of that kind) or a probability like `0.3`, drawn
//! from the seed and the request's number within its kind, so a seed always
//! gives the same decisions for the n-th request of each kind. Every request is
//! logged (`KIND FAULT METHOD PATH`, FAULT `pass` when forwarded unchanged).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::registry::StartError;

/// The proxy program's name (a `[[bin]]` of this crate).
pub const PROXY_BIN: &str = "kbuild-fault-proxy";

/// Request kinds a rule can name.
pub const KINDS: [&str; 8] = [
    "blob-put",
    "manifest-put",
    "patch",
    "post",
    "head",
    "blob-get",
    "manifest-get",
    "other",
];

/// Faults a rule can inject.
pub const FAULTS: [&str; 9] = [
    "405",
    "500",
    "502",
    "503",
    "reset",
    "502-after",
    "reset-after",
    "trickle",
    "hang",
];

/// The kind of a request, from its method and path.
pub fn kind(method: &str, path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    match method {
        "PUT" if path.contains("/blobs/uploads/") => "blob-put",
        "PUT" if path.contains("/manifests/") => "manifest-put",
        "PATCH" => "patch",
        "POST" => "post",
        "HEAD" => "head",
        "GET" if path.contains("/blobs/") => "blob-get",
        "GET" if path.contains("/manifests/") => "manifest-get",
        _ => "other",
    }
}

/// When a rule applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    /// Every request of the kind.
    All,
    /// The first N requests of the kind.
    First(u64),
    /// Each request with this probability.
    Chance(f64),
}

/// Why a `KIND=FAULT[:WHEN]` rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No `=` between kind and fault.
    #[error("rule {0:?} is not KIND=FAULT[:WHEN]")]
    Shape(String),
    /// The kind is none of [`KINDS`].
    #[error("rule {rule:?}: unknown kind {kind:?} (one of {KINDS:?})")]
    Kind {
        /// The rule.
        rule: String,
        /// Its kind.
        kind: String,
    },
    /// The fault is none of [`FAULTS`].
    #[error("rule {rule:?}: unknown fault {fault:?} (one of {FAULTS:?})")]
    Fault {
        /// The rule.
        rule: String,
        /// Its fault.
        fault: String,
    },
    /// WHEN has a dot but is no number from 0 to 1.
    #[error("rule {rule:?}: {when:?} is not a probability")]
    Probability {
        /// The rule.
        rule: String,
        /// Its WHEN.
        when: String,
    },
    /// WHEN is no whole number.
    #[error("rule {rule:?}: {when:?} is not a count")]
    Count {
        /// The rule.
        rule: String,
        /// Its WHEN.
        when: String,
        /// Why it is no number.
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Why the proxy program could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A flag came last, without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A required flag is missing.
    #[error("{0} is required")]
    Required(&'static str),
    /// An argument the proxy does not know.
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    /// `--trickle` is not `BYTES/MILLISECONDS`.
    #[error("--trickle {0:?} is not BYTES/MILLISECONDS")]
    Trickle(String),
    /// A number flag's value is no whole number.
    #[error("{flag}: {source}")]
    Number {
        /// The flag.
        flag: &'static str,
        /// Why its value is no number.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A `--rule` was refused.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The log, the port or standard output failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One `KIND=FAULT[:WHEN]` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Request kind (one of [`KINDS`]).
    pub kind: String,
    /// Fault (one of [`FAULTS`]).
    pub fault: String,
    /// When it applies.
    pub when: When,
}

impl Rule {
    /// Parses `KIND=FAULT[:WHEN]`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let (kind, rest) = text
            .split_once('=')
            .ok_or_else(|| RuleError::Shape(text.to_string()))?;
        let (fault, when) = match rest.split_once(':') {
            Some((f, w)) => (f, Some(w)),
            None => (rest, None),
        };
        if !KINDS.contains(&kind) {
            return Err(RuleError::Kind {
                rule: text.to_string(),
                kind: kind.to_string(),
            });
        }
        if !FAULTS.contains(&fault) {
            return Err(RuleError::Fault {
                rule: text.to_string(),
                fault: fault.to_string(),
            });
        }
        let when = match when {
            None | Some("all") => When::All,
            Some(w) if w.contains('.') => match w.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => When::Chance(p),
                _ => {
                    return Err(RuleError::Probability {
                        rule: text.to_string(),
                        when: w.to_string(),
                    })
                }
            },
            Some(w) => When::First(w.parse().map_err(|source| RuleError::Count {
                rule: text.to_string(),
                when: w.to_string(),
                source,
            })?),
        };
        Ok(Rule {
            kind: kind.to_string(),
            fault: fault.to_string(),
            when,
        })
    }
}

/// splitmix64: the proxy's only source of randomness.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The fault for the `n`-th (from 0) request of `kind`, if any.
pub fn decide<'a>(rules: &'a [Rule], seed: u64, kind: &str, n: u64) -> Option<&'a str> {
    let kind_hash = kind.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == kind)
        .find(|(i, r)| match r.when {
            When::All => true,
            When::First(k) => n < k,
            When::Chance(p) => {
                let draw = mix(seed ^ mix(kind_hash ^ mix(n ^ ((*i as u64) << 48))));
                ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        })
        .map(|(_, r)| r.fault.as_str())
}

/// Settings of a running proxy.
struct Config {
    upstream: String,
    seed: u64,
    rules: Vec<Rule>,
    trickle_bytes: usize,
    trickle_pause: Duration,
    log: Mutex<std::fs::File>,
    counts: Mutex<HashMap<&'static str, u64>>,
}

/// The proxy program: `kbuild-fault-proxy --upstream HOST:PORT [--seed N]
/// [--rule KIND=FAULT[:WHEN]]... [--trickle BYTES/MILLISECONDS] --log FILE`.
/// Prints `listening PORT` once it accepts connections on 127.0.0.1.
pub fn proxy_main() -> Result<(), ProxyError> {
    let mut args = std::env::args().skip(1);
    let (mut upstream, mut seed, mut rules, mut log) = (None, 0u64, Vec::new(), None);
    let (mut trickle_bytes, mut trickle_pause) = (512usize, Duration::from_millis(100));
    let number = |flag: &'static str| move |source| ProxyError::Number { flag, source };
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| ProxyError::MissingValue(flag.clone()))
        };
        match flag.as_str() {
            "--upstream" => upstream = Some(value()?),
            "--seed" => seed = value()?.parse().map_err(number("--seed"))?,
            "--rule" => rules.push(Rule::parse(&value()?)?),
            "--log" => log = Some(PathBuf::from(value()?)),
            "--trickle" => {
                let v = value()?;
                let (b, ms) = v
                    .split_once('/')
                    .ok_or_else(|| ProxyError::Trickle(v.clone()))?;
                trickle_bytes = b.parse().map_err(number("--trickle"))?;
                trickle_pause = Duration::from_millis(ms.parse().map_err(number("--trickle"))?);
            }
            other => return Err(ProxyError::UnknownArgument(other.to_string())),
        }
    }
    let upstream = upstream.ok_or(ProxyError::Required("--upstream HOST:PORT"))?;
    let log = log.ok_or(ProxyError::Required("--log FILE"))?;
    let io = |action: String| move |source| ProxyError::Io { action, source };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io(format!("open {}", log.display())))?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a port".into()))?;
    let port = listener
        .local_addr()
        .map_err(io("read the port".into()))?
        .port();
    let config = Arc::new(Config {
        upstream,
        seed,
        rules,
        trickle_bytes: trickle_bytes.max(1),
        trickle_pause,
        log: Mutex::new(log),
        counts: Mutex::new(HashMap::new()),
    });
    println!("listening {port}");
    std::io::stdout()
        .flush()
        .map_err(io("write the port to standard output".into()))?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            let _ = serve(client, &config);
        });
    }
    Ok(())
}

/// A parsed request: head lines and body.
struct Request {
    method: String,
    target: String,
    /// Header lines without the request line, as received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads one request; None at a clean end of the connection.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    trickle: Option<(usize, Duration)>,
) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let len: usize = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        body.resize(len, 0);
        match trickle {
            Some((bytes, pause)) => {
                for piece in body.chunks_mut(bytes) {
                    reader.read_exact(piece)?;
                    std::thread::sleep(pause);
                }
            }
            None => reader.read_exact(&mut body)?,
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

/// Sends the request to the registry on a fresh connection and returns its
/// whole answer, with `Connection: close` in place of any connection header.
fn forward(req: &Request, upstream: &str) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        let lower = k.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "content-length"
        ) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() || matches!(req.method.as_str(), "PUT" | "PATCH" | "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&req.body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the registry's answer has no header end"))?;
    let text = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut out = String::new();
    for line in text.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&answer[split + 4..]);
    Ok(bytes)
}

fn canned(status: u16) -> Vec<u8> {
    let body = format!(
        "{{\"errors\":[{{\"code\":\"UNAVAILABLE\",\"message\":\"HTTP {status} injected by {PROXY_BIN}\"}}]}}"
    );
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve(client: TcpStream, config: &Config) -> std::io::Result<()> {
    let mut writer = client.try_clone()?;
    let mut reader = BufReader::new(client);
    // Peek at the request line to learn the kind before reading a body slowly.
    let kind_and_fault = {
        let buf = reader.fill_buf()?;
        let first = String::from_utf8_lossy(buf);
        let mut parts = first.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let k = kind(method, target);
        let n = {
            let mut counts = config.counts.lock().unwrap_or_else(|p| p.into_inner());
            let c = counts.entry(k).or_insert(0);
            *c += 1;
            *c - 1
        };
        (
            k,
            decide(&config.rules, config.seed, k, n).map(str::to_string),
        )
    };
    let (k, fault) = kind_and_fault;
    let trickle = (fault.as_deref() == Some("trickle"))
        .then_some((config.trickle_bytes, config.trickle_pause));
    let Some(req) = read_request(&mut reader, trickle)? else {
        return Ok(());
    };
    {
        let mut log = config.log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            log,
            "{k} {} {} {}",
            fault.as_deref().unwrap_or("pass"),
            req.method,
            req.target
        );
    }
    let answer = match fault.as_deref() {
        Some("405") => canned(405),
        Some("500") => canned(500),
        Some("502") => canned(502),
        Some("503") => canned(503),
        Some("reset") => {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some("hang") => {
            // Hold the connection until the client gives up (or ten minutes).
            let _ = reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(600)));
            let mut sink = [0u8; 1024];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return Ok(());
        }
        Some("reset-after") => {
            let _ = forward(&req, &config.upstream);
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some("502-after") => {
            let _ = forward(&req, &config.upstream);
            canned(502)
        }
        _ => match forward(&req, &config.upstream) {
            Ok(answer) => answer,
            Err(_) => canned(502),
        },
    };
    match trickle {
        Some((bytes, pause)) => {
            for piece in answer.chunks(bytes) {
                writer.write_all(piece)?;
                writer.flush()?;
                std::thread::sleep(pause);
            }
        }
        None => writer.write_all(&answer)?,
    }
    writer.flush()?;
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

/// One line of the proxy's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// Request kind.
    pub kind: String,
    /// Fault injected, or `pass`.
    pub fault: String,
    /// HTTP method.
    pub method: String,
    /// Request target.
    pub target: String,
}

/// A running `kbuild-fault-proxy` on a free 127.0.0.1 port. Killed on drop.
pub struct FaultProxy {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// Where the proxy program is: `$KBUILD_FAULT_PROXY`, else beside the running
/// test binary's directory (`target/<profile>/kbuild-fault-proxy`, which
/// `cargo test` builds along with this crate's tests, or `cargo build -p
/// kbuild-testkit --bin kbuild-fault-proxy`).
pub fn proxy_binary() -> Result<PathBuf, StartError> {
    if let Some(p) = std::env::var_os("KBUILD_FAULT_PROXY") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(StartError::io("locate the running test binary"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(PROXY_BIN))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| StartError::ProxyNotBuilt {
            looked_at: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`HOST:PORT`) with `rules`
    /// (`KIND=FAULT[:WHEN]`), decisions drawn from `seed`, and a trickle of
    /// `trickle.0` bytes every `trickle.1`.
    pub fn start(
        upstream: &str,
        seed: u64,
        rules: &[String],
        trickle: (usize, Duration),
    ) -> Result<FaultProxy, StartError> {
        for r in rules {
            Rule::parse(r)?;
        }
        let bin = proxy_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("kbuild-fault-proxy-")
            .tempdir()
            .map_err(StartError::io("create a temporary directory"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--upstream", upstream, "--seed", &seed.to_string()])
            .arg("--trickle")
            .arg(format!("{}/{}", trickle.0, trickle.1.as_millis()))
            .arg("--log")
            .arg(dir.path().join("requests.log"));
        for r in rules {
            cmd.args(["--rule", r]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(StartError::io(format!("start {}", bin.display())))?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let Some(port) = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse::<u16>().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::NoPort {
                program: bin,
                said: line,
            });
        };
        Ok(FaultProxy { child, port, dir })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry part of references through the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request it has seen so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        read_log(&self.dir.path().join("requests.log"))
    }

    /// How many requests got a fault.
    pub fn faults_injected(&self) -> usize {
        self.log().iter().filter(|l| l.fault != "pass").count()
    }
}

fn read_log(path: &Path) -> Vec<Logged> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(4, ' ');
            Some(Logged {
                kind: p.next()?.to_string(),
                fault: p.next()?.to_string(),
                method: p.next()?.to_string(),
                target: p.next()?.to_string(),
            })
        })
        .collect()
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_registry_requests() {
        assert_eq!(
            kind("PUT", "/v2/a/blobs/uploads/x?digest=sha256:1"),
            "blob-put"
        );
        assert_eq!(kind("PUT", "/v2/a/manifests/v1"), "manifest-put");
        assert_eq!(kind("PATCH", "/v2/a/blobs/uploads/x"), "patch");
        assert_eq!(kind("GET", "/v2/a/blobs/sha256:1"), "blob-get");
        assert_eq!(kind("GET", "/v2/a/manifests/v1"), "manifest-get");
        assert_eq!(kind("HEAD", "/v2/a/blobs/sha256:1"), "head");
        assert_eq!(kind("GET", "/v2/"), "other");
    }

    #[test]
    fn rules_parse_and_decide_by_seed() {
        let rules = vec![
            Rule::parse("blob-put=reset-after:1").unwrap(),
            Rule::parse("patch=503:0.5").unwrap(),
        ];
        assert_eq!(decide(&rules, 1, "blob-put", 0), Some("reset-after"));
        assert_eq!(decide(&rules, 1, "blob-put", 1), None);
        assert_eq!(decide(&rules, 1, "head", 0), None);
        let draws = |seed| -> Vec<bool> {
            (0..64)
                .map(|n| decide(&rules, seed, "patch", n).is_some())
                .collect()
        };
        assert_eq!(draws(7), draws(7), "same seed, same decisions");
        assert_ne!(draws(7), draws(8), "another seed, other decisions");
        let hits = draws(7).iter().filter(|h| **h).count();
        assert!((16..=48).contains(&hits), "about half: {hits}");
        assert!(Rule::parse("blob-put=boom").is_err());
        assert!(Rule::parse("push=500").is_err());
        assert!(Rule::parse("patch=500:1.5").is_err());
    }
}

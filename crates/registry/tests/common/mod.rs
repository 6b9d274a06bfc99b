//! Shared helpers: images built from blobs put in a content store, and a tiny
//! HTTP/1.1 server for answers a real registry would never give.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use kbuild_image::Descriptor;
use kbuild_image::{ContentStore, Digest};
use kbuild_registry::{Client, ClientOptions, Credentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Deterministic pseudo-random bytes (xorshift), so layers do not compress or collide.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect()
}

pub fn put(store: &ContentStore, bytes: &[u8]) -> Digest {
    store.put_bytes(bytes).expect("put_bytes").0
}

pub fn descriptor(media_type: &str, digest: &Digest, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

/// One platform's manifest (config + layers), stored; returns (digest, bytes).
pub fn manifest(
    store: &ContentStore,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    layers: &[&[u8]],
) -> (Digest, Vec<u8>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let mut config = serde_json::json!({
        "architecture": arch, "os": os,
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(store, &config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| descriptor(OCI_LAYER, &put(store, l), l.len()))
        .collect();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config_digest, config.len()),
        "layers": layer_descs,
    }))
    .unwrap();
    (put(store, &manifest), manifest)
}

/// An index over `(platform json, manifest digest, manifest bytes)`, stored.
pub fn index(
    store: &ContentStore,
    entries: &[(serde_json::Value, Digest, Vec<u8>)],
) -> (Descriptor, Vec<u8>) {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(platform, digest, bytes)| {
            let mut d = descriptor(OCI_MANIFEST, digest, bytes.len());
            d["platform"] = platform.clone();
            d
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    }))
    .unwrap();
    let digest = put(store, &bytes);
    (
        Descriptor::new(OCI_INDEX, digest, bytes.len() as u64),
        bytes,
    )
}

pub fn client(credentials: Credentials) -> Client {
    Client::new(ClientOptions {
        credentials,
        chunk_threshold: 64 << 10,
        chunk_size: 48 << 10,
        ..ClientOptions::default()
    })
    .expect("client")
}

/// `skopeo inspect --raw` of a plain-HTTP registry reference.
pub fn skopeo_raw(reference: &str, creds: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A canned response.
#[derive(Clone, Default)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this many body bytes (a broken download).
    pub cut: Option<usize>,
}

impl Canned {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Canned {
        Canned {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            cut: None,
        }
    }
}

/// A request as the tiny server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Seen) -> Canned + Send + Sync>;

/// A minimal HTTP/1.1 server on 127.0.0.1 (one request per connection).
pub struct TinyServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TinyServer {
    pub async fn start(handler: impl Fn(&Seen) -> Canned + Send + Sync + 'static) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    let text = String::from_utf8_lossy(&buf[..split]).to_string();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let target = first.next().unwrap_or("").to_string();
                    let headers: BTreeMap<String, String> = lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let want: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[split..].to_vec();
                    while body.len() < want {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let req = Seen {
                        method,
                        target,
                        headers,
                        body,
                    };
                    seen.lock().unwrap().push(req.clone());
                    let answer = handler(&req);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (k, v) in &answer.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = sock.write_all(head.as_bytes()).await;
                    if req.method != "HEAD" {
                        let end = answer
                            .cut
                            .unwrap_or(answer.body.len())
                            .min(answer.body.len());
                        let _ = sock.write_all(&answer.body[..end]).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        TinyServer { port, seen }
    }
}

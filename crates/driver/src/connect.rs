//! Connecting to a node: the channel (unix socket, TCP, TCP with mutual
//! TLS), the `Info` handshake within a timeout, and the protocol check.

use crate::config::{Node, TlsOptions};
use crate::Error;
use kbuild_platform::Platform;
use kbuild_proto::v1::builder_client::BuilderClient;
use kbuild_proto::v1::InfoRequest;
use kbuild_proto::{Endpoint, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// What a node said about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// The protocol client and node speak together.
    pub protocol: u32,
    /// The node's program version.
    pub version: String,
    /// Its host name.
    pub hostname: String,
    /// Platforms it runs natively.
    pub native: Vec<Platform>,
    /// Platforms it runs by emulation, with the binfmt_misc handler.
    pub emulated: Vec<(Platform, String)>,
    /// Builds running on it.
    pub running_builds: u32,
    /// Its CPUs.
    pub cpus: u32,
    /// Its CPUs less the one-minute load average.
    pub free_cores: f64,
}

/// An error and its sources, joined by ": ", without a source its parent
/// already printed.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A gRPC status as one line: its message and the transport error under it.
pub fn status_text(s: &tonic::Status) -> String {
    let mut out = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    if let Some(src) = std::error::Error::source(s) {
        let text = chain(src);
        if text.starts_with(&out) {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn read_tls(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// The TLS configuration of `tls` for `host`, or `None` for plain TCP.
fn client_tls(tls: &TlsOptions, host: &str) -> Result<Option<ClientTlsConfig>, Error> {
    let Some(cacert) = &tls.cacert else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_tls("cacert", cacert)?))
        .domain_name(tls.servername.clone().unwrap_or_else(|| host.to_string()));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(
            read_tls("cert", cert)?,
            read_tls("key", key)?,
        ));
    }
    Ok(Some(config))
}

/// What a connection error on a TCP node most likely means, given the TLS
/// options: a daemon serving TLS always asks for a client certificate and
/// closes the connection of a client without one or with one its CA did
/// not sign; a TLS daemon answers plain HTTP/2 with bytes that do not parse.
fn refusal_hint(tls: &TlsOptions, e: &Error) -> Option<&'static str> {
    if !matches!(e, Error::Rpc { .. } | Error::Unreachable { .. }) {
        return None;
    }
    let text = e.to_string().to_lowercase();
    // With TLS 1.3 the client finishes its handshake before the daemon
    // checks the certificate, so the refusal shows up in whatever the
    // client was doing then: reading the alert, writing the HTTP/2
    // preface, or waiting for the connection to become ready.
    let closed = [
        "connection closed",
        "received fatal alert",
        "broken pipe",
        "connection reset",
        "connection was not ready",
        "unexpected eof",
        "tls handshake eof",
    ]
    .iter()
    .any(|t| text.contains(t));
    match (&tls.cacert, &tls.cert) {
        (Some(_), None) if closed => Some(
            "it requires a client certificate: create the node with --driver-opt \
             cacert=FILE,cert=FILE,key=FILE, the certificate signed by the daemon's --tls-ca",
        ),
        (Some(_), Some(_)) if closed => {
            Some("it did not accept the client certificate: is it signed by the daemon's --tls-ca?")
        }
        (None, _) if closed || text.contains("h2 protocol error") => Some(
            "the daemon may serve TLS: create the node with --driver-opt \
                 cacert=FILE,cert=FILE,key=FILE",
        ),
        _ => None,
    }
}

/// A connection being made: the channel and what the node said.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = Result<(Channel, NodeInfo), Error>> + Send + 'a>>;

/// How a client reaches the nodes of a builder. The remote driver dials
/// each node's address ([`Direct`]); the kubernetes driver goes through
/// the API server to a builder pod. Either way the result is a channel on
/// which `Info` has been called and the protocol checked.
pub trait Dialer: Send + Sync {
    /// Connects to `node` of builder `builder` and calls `Info`, all within
    /// `timeout`.
    fn dial<'a>(&'a self, builder: &'a str, node: &'a Node, timeout: Duration) -> Dialing<'a>;
}

/// Dials a node by its address (`unix://`, `tcp://`, with the node's TLS
/// options): the remote driver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

impl Dialer for Direct {
    fn dial<'a>(&'a self, builder: &'a str, node: &'a Node, timeout: Duration) -> Dialing<'a> {
        Box::pin(connect(builder, node, timeout))
    }
}

/// Connects to `node` of builder `builder` and calls `Info`, all within
/// `timeout`; refuses a node whose protocol this client does not speak.
pub async fn info(builder: &str, node: &Node, timeout: Duration) -> Result<NodeInfo, Error> {
    connect(builder, node, timeout).await.map(|(_, info)| info)
}

/// Like [`info`], and keeps the connection for further calls (a build).
pub async fn connect(
    builder: &str,
    node: &Node,
    timeout: Duration,
) -> Result<(Channel, NodeInfo), Error> {
    let endpoint = Endpoint::parse(&node.endpoint).map_err(|e| Error::Endpoint(Box::new(e)))?;
    let unreachable = |source| Error::Unreachable {
        builder: builder.to_string(),
        endpoint: endpoint.clone(),
        source,
    };
    let uri = match &endpoint {
        Endpoint::Unix(path) => format!("unix://{}", path.display()),
        Endpoint::Tcp { .. } => {
            let scheme = if node.tls.cacert.is_some() {
                "https"
            } else {
                "http"
            };
            // "tcp://host:port" with brackets for IPv6, as an URI authority.
            format!("{scheme}://{}", &endpoint.to_string()["tcp://".len()..])
        }
        Endpoint::Kubernetes { .. } => {
            return Err(Error::NeedsCluster {
                builder: builder.to_string(),
                endpoint,
            })
        }
    };
    let mut channel = tonic::transport::Endpoint::from_shared(uri)
        .map_err(unreachable)?
        .connect_timeout(timeout)
        // A daemon that dies or a network that breaks mid-build is noticed
        // within seconds, not when the kernel gives up on the connection.
        .http2_keep_alive_interval(Duration::from_secs(3))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        // Outputs streamed back need not wait for each 64 KiB to be taken.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20);
    if let Endpoint::Tcp { host, .. } = &endpoint {
        if let Some(tls) = client_tls(&node.tls, host)? {
            channel = channel.tls_config(tls).map_err(unreachable)?;
        }
    }
    let started = std::time::Instant::now();
    let channel = tokio::time::timeout(timeout, channel.connect())
        .await
        .map_err(|_| Error::Timeout {
            builder: builder.to_string(),
            endpoint: endpoint.clone(),
            timeout,
        })?
        .map_err(unreachable)
        .map_err(|e| with_hint(builder, &endpoint, &node.tls, e))?;
    let left = timeout.saturating_sub(started.elapsed());
    handshake(builder, &endpoint, channel, left)
        .await
        .map_err(|e| match e {
            // The whole wait is what the user was given.
            Error::Timeout {
                builder, endpoint, ..
            } => Error::Timeout {
                builder,
                endpoint,
                timeout,
            },
            e => e,
        })
        .map_err(|e| with_hint(builder, &endpoint, &node.tls, e))
}

/// What a connection error on a TCP node means, when the TLS options explain it.
fn with_hint(builder: &str, endpoint: &Endpoint, tls: &TlsOptions, e: Error) -> Error {
    match refusal_hint(tls, &e) {
        Some(hint) => Error::Refused {
            builder: builder.to_string(),
            endpoint: endpoint.clone(),
            hint,
            source: Box::new(e),
        },
        None => e,
    }
}

/// Calls `Info` on a connected `channel` to `endpoint` of `builder` within
/// `timeout` and checks the protocol: what every [`Dialer`] does once it
/// has a channel.
pub async fn handshake(
    builder: &str,
    endpoint: &Endpoint,
    channel: Channel,
    timeout: Duration,
) -> Result<(Channel, NodeInfo), Error> {
    let endpoint = endpoint.clone();
    let call = async {
        BuilderClient::new(channel.clone())
            .info(InfoRequest {
                protocol: PROTOCOL_VERSION,
                min_protocol: MIN_PROTOCOL_VERSION,
                client_version: format!("kubectl-build {}", env!("CARGO_PKG_VERSION")),
            })
            .await
            .map(|r| (channel, r.into_inner()))
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => Error::Protocol {
                    builder: builder.to_string(),
                    endpoint: endpoint.clone(),
                    daemon: 0,
                    client: PROTOCOL_VERSION,
                    advice: "it does not serve kubectl_build.v1.Builder/Info: is it a kubectl-build serve daemon?",
                },
                _ => Error::Rpc {
                    builder: builder.to_string(),
                    endpoint: endpoint.clone(),
                    source: Box::new(status),
                },
            })
    };
    let (channel, reply) =
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Timeout {
                builder: builder.to_string(),
                endpoint: endpoint.clone(),
                timeout,
            })??;
    let daemon = (reply.min_protocol, reply.protocol);
    let Some(protocol) = kbuild_proto::negotiate((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), daemon)
    else {
        return Err(Error::Protocol {
            builder: builder.to_string(),
            endpoint,
            daemon: reply.protocol,
            client: PROTOCOL_VERSION,
            advice: if daemon.0 > PROTOCOL_VERSION {
                "upgrade this kubectl-build"
            } else {
                "upgrade kubectl-build on the builder's machine and restart \"kubectl-build serve\""
            },
        });
    };
    let bad_platform = |source| Error::BadPlatform {
        builder: builder.to_string(),
        endpoint: endpoint.clone(),
        source: Box::new(source),
    };
    let native = reply
        .native_platforms
        .iter()
        .map(Platform::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_platform)?;
    let emulated = reply
        .emulated_platforms
        .iter()
        .filter_map(|e| e.platform.as_ref().map(|p| (p, &e.handler)))
        .map(|(p, h)| Platform::try_from(p).map(|p| (p, h.clone())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_platform)?;
    let load = reply.load.unwrap_or_default();
    Ok((
        channel,
        NodeInfo {
            protocol,
            version: reply.version,
            hostname: reply.hostname,
            native,
            emulated,
            running_builds: load.running_builds,
            cpus: load.cpus,
            free_cores: load.free_cores,
        },
    ))
}

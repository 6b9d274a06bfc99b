//! The gRPC protocol between `kubectl-build` clients and the
//! `kubectl-build serve` daemon: the generated tonic/prost code of
//! `proto/kubectl_build/v1/builder.proto` (the file other clients are
//! written from), the protocol version numbers, endpoint addresses and the
//! conversion between [`kbuild_platform::Platform`] and the wire platform.
//!
//! Code generation runs `protoc` (Debian's `protobuf-compiler`, listed in
//! `scripts/test.sh`) through `tonic-prost-build`. The pure-Rust `protox`
//! would avoid the system package but adds a parser, a reflection crate and a
//! diagnostics stack to every build of the workspace; `protoc` is one small,
//! packaged binary that other languages' clients use on the same `.proto`.
//!
//! Protocol 1 is `Builder.Info` only; protocol 2 adds `Builder.Build`, the
//! build session ([`BUILD_PROTOCOL`] is the first protocol that may build);
//! protocol 3 sends the planned op graph in `BuildStart.graph` instead of
//! the Dockerfile ([`GRAPH_PROTOCOL`]); protocol 4 adds `Builder.Prune`
//! ([`PRUNE_PROTOCOL`]). A build session's credential questions carry the
//! registry's Bearer challenge (`CredentialsRequest.realm`) so that the
//! client answers with a scoped token (`CredentialsResponse.registry_token`);
//! both sides fall back to the login when the other ignores those fields,
//! so that needs no protocol of its own.

#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;

/// The generated messages, client and server of package `kubectl_build.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kubectl_build.v1");
}

/// The newest protocol this build of kubectl-build speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// The first protocol that serves `Builder.Build`: a client must have
/// negotiated at least this before it sends a build.
pub const BUILD_PROTOCOL: u32 = 2;

/// The first protocol whose `BuildStart` may carry the op graph
/// (`graph`) instead of the Dockerfile: with an older daemon a client
/// sends the Dockerfile, which that daemon plans itself.
pub const GRAPH_PROTOCOL: u32 = 3;

/// The first protocol that serves `Builder.Prune`.
pub const PRUNE_PROTOCOL: u32 = 4;

/// The oldest protocol this build of kubectl-build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The protocol a client speaking `client` (oldest, newest) and a daemon
/// speaking `daemon` (oldest, newest) use together: the newest both speak,
/// or `None` when their ranges do not overlap.
pub fn negotiate(client: (u32, u32), daemon: (u32, u32)) -> Option<u32> {
    let low = client.0.max(daemon.0);
    let high = client.1.min(daemon.1);
    (low <= high).then_some(high)
}

/// A malformed endpoint or platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not `unix://PATH`, `tcp://HOST:PORT` or `kubernetes://NAMESPACE/POD`.
    #[error("endpoint {endpoint:?}: {reason}; use unix:///path/to/socket or tcp://HOST:PORT")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A platform on the wire is not a valid platform.
    #[error("platform {platform:?} from the builder: {source}")]
    Platform {
        /// `os/architecture/variant` as received.
        platform: String,
        /// Why it does not parse.
        source: kbuild_platform::Error,
    },
}

/// Where a daemon listens, or where a client connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (`unix:///run/kubectl-build/builder.sock`).
    Unix(PathBuf),
    /// A TCP address (`tcp://10.0.0.5:1234`, `tcp://[::1]:1234`, `tcp://builder.lan:1234`).
    Tcp {
        /// Host name or IP address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A builder pod reached through the Kubernetes API server
    /// (`kubernetes://NAMESPACE/POD`): a client-side address only.
    Kubernetes {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
    },
}

impl Endpoint {
    /// Parses `unix://PATH` (an absolute path) or `tcp://HOST:PORT`: where
    /// a client connects to.
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        Endpoint::parse_inner(s, false)
    }

    /// [`Endpoint::parse`] for a listener, which may also take port 0 (any
    /// free port); a `kubernetes://` address names a pod, not a place to
    /// listen, and is refused.
    pub fn parse_listen(s: &str) -> Result<Endpoint, Error> {
        if s.starts_with("kubernetes://") {
            return Err(Error::Endpoint {
                endpoint: s.to_string(),
                reason: "a kubernetes:// address names a builder pod and cannot be listened on",
            });
        }
        Endpoint::parse_inner(s, true)
    }

    fn parse_inner(s: &str, any_port: bool) -> Result<Endpoint, Error> {
        let err = |reason| Error::Endpoint {
            endpoint: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(err("the socket path must be absolute"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("kubernetes://") {
            let (namespace, pod) = rest
                .split_once('/')
                .ok_or_else(|| err("expected kubernetes://NAMESPACE/POD"))?;
            let dns_label = |v: &str| {
                !v.is_empty()
                    && v.len() <= 253
                    && v.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
            };
            if !dns_label(namespace) || !dns_label(pod) {
                return Err(err("the namespace and pod must be Kubernetes object names"));
            }
            return Ok(Endpoint::Kubernetes {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            });
        }
        let Some(rest) = s.strip_prefix("tcp://") else {
            return Err(err("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            let port = after.strip_prefix(':').ok_or_else(|| err("no port"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| err("no port"))?
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        if host.contains(['/', '@', '?', '#', ':']) && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err("the host is not a host name or IP address"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is not a number from 1 to 65535"))?;
        if port == 0 && !any_port {
            return Err(err("the port is not a number from 1 to 65535"));
        }
        Ok(Endpoint::Tcp {
            host: host.to_string(),
            port,
        })
    }

    /// Whether this is a TCP endpoint.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp { .. })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Kubernetes { namespace, pod } => write!(f, "kubernetes://{namespace}/{pod}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint, Error> {
        Endpoint::parse(s)
    }
}

impl From<&kbuild_platform::Platform> for v1::Platform {
    fn from(p: &kbuild_platform::Platform) -> v1::Platform {
        v1::Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone().unwrap_or_default(),
            os_version: p.os_version.clone().unwrap_or_default(),
            os_features: p.os_features.clone(),
        }
    }
}

impl TryFrom<&v1::Platform> for kbuild_platform::Platform {
    type Error = Error;
    fn try_from(p: &v1::Platform) -> Result<kbuild_platform::Platform, Error> {
        let mut text = format!("{}/{}", p.os, p.architecture);
        if !p.variant.is_empty() {
            text.push('/');
            text.push_str(&p.variant);
        }
        let mut platform =
            kbuild_platform::Platform::parse(&text).map_err(|source| Error::Platform {
                platform: text.clone(),
                source,
            })?;
        platform.os_version = (!p.os_version.is_empty()).then(|| p.os_version.clone());
        platform.os_features = p.os_features.clone();
        Ok(platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for s in [
            "unix:///run/kubectl-build/builder.sock",
            "tcp://127.0.0.1:1234",
            "tcp://[::1]:1234",
            "tcp://builder.lan:65535",
            "kubernetes://kbuild-test/buildkit-amd64-7d9f-x2k",
        ] {
            assert_eq!(Endpoint::parse(s).unwrap().to_string(), s);
        }
        assert!(Endpoint::parse_listen("kubernetes://ns/pod").is_err());
        assert!(Endpoint::parse("kubernetes://ns").is_err());
        assert!(Endpoint::parse("kubernetes://NS/pod").is_err());
        for s in [
            "unix://relative.sock",
            "http://host:1",
            "tcp://host",
            "tcp://:1",
            "tcp://host:0",
            "tcp://host:70000",
            "tcp://[::1:1",
            "tcp://user@host:1",
        ] {
            assert!(Endpoint::parse(s).is_err(), "{s} should not parse");
        }
        assert_eq!(
            Endpoint::parse_listen("tcp://127.0.0.1:0")
                .unwrap()
                .to_string(),
            "tcp://127.0.0.1:0"
        );
    }

    #[test]
    fn versions_negotiate_to_the_newest_common_one() {
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 3), (2, 2)), Some(2));
        assert_eq!(negotiate((1, 1), (2, 2)), None);
        assert_eq!(negotiate((3, 4), (1, 2)), None);
    }

    #[test]
    fn platforms_round_trip() {
        for s in ["linux/arm/v7", "linux/amd64", "windows/amd64"] {
            let p = kbuild_platform::Platform::parse(s).unwrap();
            let wire = v1::Platform::from(&p);
            assert_eq!(kbuild_platform::Platform::try_from(&wire).unwrap(), p);
        }
    }
}

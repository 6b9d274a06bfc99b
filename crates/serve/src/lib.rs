//! The `kubectl-build serve` daemon: listeners (unix sockets, TCP with
//! mutual TLS), the `kubectl_build.v1.Builder` gRPC service of
//! [`kbuild_proto`], and a clean shutdown.
//!
//! `Info` (protocol 1 and later): versions, the platforms this machine runs
//! natively and by emulation (the same judgement as `kubectl build doctor`,
//! from [`kbuild_worker::binfmt`]) and its load. `Build` (protocol 2): one
//! build session per stream, see the `session` module: the context synced
//! into `--root` (only missing contents travel), the build run with the
//! same solver and store layout as a local build, progress and file outputs
//! streamed back, registry credentials and secrets asked from the client.
//! What runs is the client's op graph (protocol 3, [`solve_start`]: the
//! client planned the Dockerfile), or, from a protocol-2 client, the
//! Dockerfile planned here.
//!
//! Security: a unix socket is guarded by its file mode (0660, owner and
//! group). A TCP listener needs `--tls-cert`, `--tls-key` and `--tls-ca`: the
//! daemon presents its certificate and accepts only clients whose
//! certificate `--tls-ca` signed. Plain TCP is refused unless the operator
//! passes `--insecure`, and then every start logs a warning.
//!
//! Test-only: [`Config::protocol`] lets the command line's hidden
//! `--test-protocol-version` make the daemon advertise another protocol, so
//! tests can check how clients refuse a daemon they cannot speak to.

#![deny(missing_docs)]

mod context;
pub mod gc;
mod session;
mod ssh;

use kbuild_solver::engine::{Context, Solved, Solver};
use session::SessionError;

use kbuild_platform::Platform;
use kbuild_proto::v1::{self, builder_server};
use kbuild_proto::Endpoint;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// The mode of a unix socket the daemon creates: owner and group.
pub const SOCKET_MODE: u32 = 0o660;

/// How long running requests may finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `--addr` was given.
    #[error("no address to listen on; pass --addr unix:///path or --addr tcp://IP:PORT")]
    NoAddress,
    /// A TCP address without TLS and without `--insecure`.
    #[error("{endpoint} would accept anyone who can reach it: give --tls-cert, --tls-key and --tls-ca for mutual TLS, or --insecure to serve it without authentication")]
    TcpNeedsTls {
        /// The address.
        endpoint: Endpoint,
    },
    /// Some but not all of the TLS files were given.
    #[error("mutual TLS needs --tls-cert, --tls-key and --tls-ca; {missing} is missing")]
    TlsIncomplete {
        /// The missing flag.
        missing: &'static str,
    },
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadTls {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listener could not be set up.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// The address.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("{endpoint} is in use by another running daemon; stop it or choose another --addr")]
    InUse {
        /// The address.
        endpoint: Endpoint,
    },
    /// The path of a unix socket exists and is not a socket.
    #[error("cannot listen on {endpoint}: the path exists and is not a socket")]
    NotASocket {
        /// The address.
        endpoint: Endpoint,
    },
    /// TLS could not be set up, or a listener failed while serving.
    #[error("serving {endpoint}: {source}")]
    Serve {
        /// The address.
        endpoint: Endpoint,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signal(#[source] std::io::Error),
}

/// The certificate, key and client CA of mutual TLS, as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The daemon's certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`).
    pub key: PathBuf,
    /// The CA that signs accepted client certificates (`--tls-ca`).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three files, none, or [`Error::TlsIncomplete`].
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, Error> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, _) => Err(Error::TlsIncomplete {
                missing: if cert.is_none() {
                    "--tls-cert"
                } else if key.is_none() {
                    "--tls-key"
                } else {
                    "--tls-ca"
                },
            }),
        }
    }
}

/// What the daemon serves and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen addresses (`--addr`, repeatable).
    pub addrs: Vec<Endpoint>,
    /// The store directory builds use (`--root`).
    pub root: PathBuf,
    /// Native platforms to advertise instead of the host's (`--platform`).
    pub platforms: Option<Vec<Platform>>,
    /// Mutual TLS for TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Serve TCP without TLS (`--insecure`).
    pub insecure: bool,
    /// The (oldest, newest) protocol advertised: normally
    /// ([`kbuild_proto::MIN_PROTOCOL_VERSION`], [`kbuild_proto::PROTOCOL_VERSION`]);
    /// other values only in tests.
    pub protocol: (u32, u32),
    /// Client contexts kept after a build (`--keep-contexts`, see [`gc`]).
    pub keep_contexts: usize,
}

/// The platforms a machine builds, as advertised by `Info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platforms {
    /// RUN steps execute without emulation.
    pub native: Vec<Platform>,
    /// RUN steps execute through a binfmt_misc handler (platform, handler name).
    pub emulated: Vec<(Platform, String)>,
}

/// The platforms this machine builds: `configured` (or the host's and the
/// 32-bit ones its kernel runs in compat mode) natively, and every other
/// Linux platform of [`kbuild_worker::binfmt::report`] with an emulator.
pub fn platforms(configured: Option<&[Platform]>) -> Platforms {
    let report = kbuild_worker::binfmt::report();
    let native: Vec<Platform> = match configured {
        Some(list) => list.to_vec(),
        None => {
            let mut native = vec![Platform::host()];
            for (p, s) in &report {
                if matches!(
                    s,
                    kbuild_worker::binfmt::Support::Native
                        | kbuild_worker::binfmt::Support::NativeCompat
                ) && !native.contains(p)
                {
                    native.push(p.clone());
                }
            }
            native
        }
    };
    let emulated = report
        .into_iter()
        .filter(|(p, _)| !native.contains(p))
        .filter_map(|(p, s)| match s {
            kbuild_worker::binfmt::Support::Emulated { handler, .. } => Some((p, handler)),
            _ => None,
        })
        .collect();
    Platforms { native, emulated }
}

/// CPUs this process may use and those of them not busy (the CPU count less
/// the one-minute load average, at least 0).
pub fn cpu_load() -> (u32, f64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    (cpus, (f64::from(cpus) - load1).max(0.0))
}

/// The gRPC service.
#[derive(Clone)]
struct Service {
    /// Becomes true on SIGTERM/SIGINT: running builds are cancelled.
    stopping: tokio::sync::watch::Receiver<bool>,
    config: Arc<Config>,
    running_builds: Arc<AtomicU32>,
    hostname: Arc<str>,
    /// Checksums over the context copies, remembered across builds (a
    /// rebuild of an unchanged context looks at none of its files).
    trees: Arc<kbuild_solver::checksums::TreeChecksums>,
}

#[tonic::async_trait]
impl builder_server::Builder for Service {
    type BuildStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::BuildServerMessage, tonic::Status>> + Send>,
    >;

    async fn build(
        &self,
        request: tonic::Request<tonic::Streaming<v1::BuildClientMessage>>,
    ) -> Result<tonic::Response<Self::BuildStream>, tonic::Status> {
        if self.config.protocol.1 < kbuild_proto::BUILD_PROTOCOL {
            return Err(tonic::Status::unimplemented(format!(
                "this daemon serves protocol {} at most; builds need {}",
                self.config.protocol.1,
                kbuild_proto::BUILD_PROTOCOL
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let config = Arc::clone(&self.config);
        let running = Arc::clone(&self.running_builds);
        let inbound = request.into_inner();
        let stopping = self.stopping.clone();
        let trees = Arc::clone(&self.trees);
        tokio::spawn(async move {
            running.fetch_add(1, Ordering::Relaxed);
            session::run(config, trees, inbound, tx, stopping).await;
            running.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn prune(
        &self,
        request: tonic::Request<v1::PruneRequest>,
    ) -> Result<tonic::Response<v1::PruneResponse>, tonic::Status> {
        if self.config.protocol.1 < kbuild_proto::PRUNE_PROTOCOL {
            return Err(tonic::Status::unimplemented(format!(
                "this daemon serves protocol {} at most; prune needs {}",
                self.config.protocol.1,
                kbuild_proto::PRUNE_PROTOCOL
            )));
        }
        let all = request.into_inner().all;
        let config = Arc::clone(&self.config);
        let mut response = tokio::task::spawn_blocking(move || prune(&config, all))
            .await
            .map_err(|e| tonic::Status::internal(format!("prune: {e}")))??;
        response.hostname = self.hostname.to_string();
        Ok(tonic::Response::new(response))
    }

    async fn info(
        &self,
        request: tonic::Request<v1::InfoRequest>,
    ) -> Result<tonic::Response<v1::InfoResponse>, tonic::Status> {
        let req = request.into_inner();
        tracing::debug!(
            client = %req.client_version,
            protocol = req.protocol,
            min_protocol = req.min_protocol,
            "info"
        );
        let config = Arc::clone(&self.config);
        // binfmt_misc is read from /proc: keep it off the async threads.
        let platforms = tokio::task::spawn_blocking(move || platforms(config.platforms.as_deref()))
            .await
            .map_err(|e| tonic::Status::internal(format!("reading the platforms: {e}")))?;
        let (cpus, free_cores) = cpu_load();
        Ok(tonic::Response::new(v1::InfoResponse {
            protocol: self.config.protocol.1,
            min_protocol: self.config.protocol.0,
            version: env!("CARGO_PKG_VERSION").to_string(),
            native_platforms: platforms.native.iter().map(v1::Platform::from).collect(),
            emulated_platforms: platforms
                .emulated
                .iter()
                .map(|(p, handler)| v1::EmulatedPlatform {
                    platform: Some(v1::Platform::from(p)),
                    handler: handler.clone(),
                })
                .collect(),
            load: Some(v1::Load {
                running_builds: self.running_builds.load(Ordering::Relaxed),
                cpus,
                free_cores,
            }),
            hostname: self.hostname.to_string(),
        }))
    }
}

/// Why the daemon's prune stopped; the service answers with the status
/// its `From` conversion chooses.
#[derive(Debug, thiserror::Error)]
enum PruneFailed {
    #[error("prune: store {}: {source}", root.display())]
    Open {
        root: PathBuf,
        #[source]
        source: kbuild_image::Error,
    },
    /// A build holds the store: the client may try again later.
    #[error("a build is running on this builder: {0}")]
    Busy(#[source] kbuild_solver::prune::PruneError),
    #[error("prune: {0}")]
    Store(#[source] kbuild_solver::prune::PruneError),
    #[error("prune: contexts under {}: {source}", root.display())]
    Contexts {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<PruneFailed> for tonic::Status {
    fn from(e: PruneFailed) -> tonic::Status {
        match e {
            PruneFailed::Busy(_) => tonic::Status::failed_precondition(e.to_string()),
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// The daemon's prune: the store as a local `prune` does it (under the
/// store's exclusive lock, refused while a build runs), then the client
/// contexts beyond `--keep-contexts` with their files and checksum caches.
fn prune(config: &Config, all: bool) -> Result<v1::PruneResponse, PruneFailed> {
    let root = &config.root;
    let store = kbuild_image::ContentStore::open(root.join("content")).map_err(|source| {
        PruneFailed::Open {
            root: root.clone(),
            source,
        }
    })?;
    let report = kbuild_solver::prune::prune(&store, root, all).map_err(|e| {
        if e.is_busy() {
            PruneFailed::Busy(e)
        } else {
            PruneFailed::Store(e)
        }
    })?;
    let contexts = match gc::collect(root, config.keep_contexts, true) {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::info!("prune: a build is syncing its context; contexts left for later");
            gc::Collected::default()
        }
        Err(source) => {
            return Err(PruneFailed::Contexts {
                root: root.clone(),
                source,
            })
        }
    };
    tracing::info!(
        blobs = report.blobs_removed,
        blob_bytes = report.blob_bytes,
        layers = report.layers_removed,
        layer_bytes = report.layer_bytes,
        cache_records = report.cache_records_removed,
        contexts = contexts.contexts,
        context_files = contexts.files,
        checksum_files = contexts.checksum_files,
        context_bytes = contexts.bytes,
        "pruned"
    );
    Ok(v1::PruneResponse {
        blobs_removed: report.blobs_removed,
        blob_bytes: report.blob_bytes,
        layers_removed: report.layers_removed,
        layer_bytes: report.layer_bytes,
        cache_records_removed: report.cache_records_removed,
        blobs_kept: report.blobs_kept,
        contexts_removed: contexts.contexts as u64,
        context_files_removed: contexts.files as u64,
        context_bytes: contexts.bytes,
        checksum_files_removed: contexts.checksum_files as u64,
        hostname: String::new(),
    })
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Removes the unix socket files it holds when dropped: on shutdown and on
/// every error path after they were created.
#[derive(Default)]
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", p.display());
                }
            }
        }
    }
}

fn bind_unix(endpoint: &Endpoint, path: &Path) -> Result<tokio::net::UnixListener, Error> {
    let listen_err = |source| Error::Listen {
        endpoint: endpoint.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket file: stale if nobody answers on it.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::InUse {
                        endpoint: endpoint.clone(),
                    })
                }
                Err(_) => std::fs::remove_file(path).map_err(listen_err)?,
            }
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                endpoint: endpoint.clone(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(listen_err)?;
    Ok(listener)
}

async fn bind_tcp(
    endpoint: &Endpoint,
    host: &str,
    port: u16,
) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|source| Error::Listen {
            endpoint: endpoint.clone(),
            source,
        })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadTls {
        path: path.to_path_buf(),
        source,
    })
}

/// HTTP/2 flow-control windows for what clients send (context contents):
/// the default 64 KiB would make every 64 KiB wait for the daemon to say it
/// took them, which a loaded machine delays. These bound what one
/// connection can have in flight.
const STREAM_WINDOW: u32 = 4 << 20;
/// See [`STREAM_WINDOW`].
const CONNECTION_WINDOW: u32 = 8 << 20;

fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

/// Serves `config` until `shutdown` resolves, then stops accepting, lets
/// running requests finish for up to [`DRAIN_TIMEOUT`], and removes the unix
/// socket files. Each listener logs `listening on ENDPOINT` (with the bound
/// port for `tcp://IP:0`) at info level once it accepts connections.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    if config.addrs.is_empty() {
        return Err(Error::NoAddress);
    }
    // Refuse before binding anything.
    for endpoint in &config.addrs {
        if endpoint.is_tcp() && config.tls.is_none() && !config.insecure {
            return Err(Error::TcpNeedsTls {
                endpoint: endpoint.clone(),
            });
        }
    }
    let tls = match &config.tls {
        Some(files) => Some(tls_config(files)?),
        None => None,
    };
    let (sockets, listeners) = bind_all(&config.addrs).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let service = Service {
        stopping: stop_rx.clone(),
        config: Arc::new(config.clone()),
        running_builds: Arc::new(AtomicU32::new(0)),
        hostname: hostname().into(),
        trees: Arc::default(),
    };
    tracing::info!(
        "kubectl-build {} serving protocol {}..={}, store {}",
        env!("CARGO_PKG_VERSION"),
        config.protocol.0,
        config.protocol.1,
        config.root.display()
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (endpoint, listener) in listeners {
        let svc = builder_server::BuilderServer::new(service.clone());
        let mut stop = stop_rx.clone();
        let signal = async move {
            // Resolves when told to stop or when the sender is gone.
            let _ = stop.wait_for(|s| *s).await;
        };
        let server = listener_server(&endpoint, &listener, tls.as_ref())?.add_service(svc);
        tasks.spawn(async move {
            let r = match listener {
                Listener::Unix(l) => {
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    server.serve_with_incoming_shutdown(incoming, signal).await
                }
                Listener::Tcp(l) => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                    server.serve_with_incoming_shutdown(incoming, signal).await
                }
            };
            (endpoint, r)
        });
    }
    let failure = run_until(shutdown, &mut tasks, &stop_tx).await;
    drop(sockets);
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// The server configuration of mutual TLS from its PEM files.
fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, Error> {
    let cert = read_pem(&files.cert)?;
    let key = read_pem(&files.key)?;
    let ca = read_pem(&files.ca)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// Binds every address, each with the endpoint it logs (a TCP one with
/// its bound port); the unix socket files are removed when the first
/// value is dropped.
async fn bind_all(addrs: &[Endpoint]) -> Result<(SocketFiles, Vec<(Endpoint, Listener)>), Error> {
    let mut sockets = SocketFiles::default();
    let mut listeners = Vec::new();
    for endpoint in addrs {
        match endpoint {
            Endpoint::Unix(path) => {
                let l = bind_unix(endpoint, path)?;
                sockets.0.push(path.clone());
                listeners.push((endpoint.clone(), Listener::Unix(l)));
            }
            Endpoint::Tcp { host, port } => {
                let l = bind_tcp(endpoint, host, *port).await?;
                let local = l.local_addr().map_err(|source| Error::Listen {
                    endpoint: endpoint.clone(),
                    source,
                })?;
                let bound = Endpoint::Tcp {
                    host: local.ip().to_string(),
                    port: local.port(),
                };
                listeners.push((bound, Listener::Tcp(l)));
            }
            // Endpoint::parse_listen refuses these; a Config built in code may not.
            Endpoint::Kubernetes { .. } => {
                return Err(Error::Listen {
                    endpoint: endpoint.clone(),
                    source: std::io::Error::other(
                        "a kubernetes:// address names a builder pod and cannot be listened on",
                    ),
                })
            }
        }
    }
    Ok((sockets, listeners))
}

/// This machine's host name, for `Info` and `Prune` answers.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The server of one listener (TLS on a TCP one when configured), logging
/// that it listens.
fn listener_server(
    endpoint: &Endpoint,
    listener: &Listener,
    tls: Option<&ServerTlsConfig>,
) -> Result<Server, Error> {
    let mut builder = server();
    match (listener, tls) {
        (Listener::Unix(_), _) => {
            tracing::info!("listening on {endpoint} (mode {SOCKET_MODE:o})");
        }
        (Listener::Tcp(_), Some(tls)) => {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|source| Error::Serve {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            tracing::info!("listening on {endpoint} (mutual TLS)");
        }
        (Listener::Tcp(_), None) => {
            tracing::warn!(
                "INSECURE: {endpoint} serves without TLS or authentication \
                 (--insecure): anyone who can reach it can run builds as this \
                 daemon's user"
            );
            tracing::info!("listening on {endpoint}");
        }
    }
    Ok(builder)
}

/// What a listener's task ends with.
type Served = (Endpoint, Result<(), tonic::transport::Error>);

/// Runs the listeners until `shutdown` resolves or one of them fails, then
/// tells them to stop and lets running requests finish for up to
/// [`DRAIN_TIMEOUT`]; returns the first listener's failure.
async fn run_until(
    shutdown: impl Future<Output = ()>,
    tasks: &mut tokio::task::JoinSet<Served>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Option<Error> {
    let mut failure = None;
    tokio::select! {
        _ = shutdown => {}
        Some(done) = tasks.join_next() => {
            if let Ok((endpoint, Err(source))) = done {
                failure = Some(Error::Serve { endpoint, source });
            }
        }
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = tasks.join_next().await {
            if let Ok((endpoint, Err(source))) = done {
                failure.get_or_insert(Error::Serve { endpoint, source });
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still running after {}s: cancelled",
            DRAIN_TIMEOUT.as_secs()
        );
        tasks.abort_all();
    }
    failure
}

/// What a session's build ran: one image per target and, when the daemon
/// planned the Dockerfile itself, the planner's warnings (a client that
/// sends a graph has shown its own).
pub(crate) struct Ran {
    pub(crate) solved: Solved,
    pub(crate) warnings: Vec<String>,
}

/// The build of one session's `BuildStart`: its op graph executed with
/// [`Solver::solve`] (protocol 3: the client planned the Dockerfile for
/// this node's platforms and build platform), or, from a protocol-2
/// client, its Dockerfile planned here and built with [`Solver::build`].
pub(crate) async fn solve_start(
    solver: &Solver,
    start: &v1::BuildStart,
    ctx: &Context,
) -> Result<Ran, SessionError> {
    let name = if start.dockerfile_path.is_empty() {
        "Dockerfile".to_string()
    } else {
        start.dockerfile_path.clone()
    };
    if !start.graph.is_empty() {
        let graph = kbuild_dockerfile::graph::Graph::from_json(&start.graph)
            .map_err(SessionError::Graph)?;
        // Image sources the client pinned are taken by digest: their tags
        // are not resolved here again (see `Solver::solve`).
        let pinned = graph
            .ops
            .iter()
            .filter(|o| {
                matches!(
                    &o.op,
                    kbuild_dockerfile::graph::OpKind::Source(
                        kbuild_dockerfile::graph::SourceOp::Image { pin: Some(_), .. }
                    )
                )
            })
            .count();
        tracing::info!(
            ops = graph.ops.len(),
            targets = graph.targets.len(),
            pinned_images = pinned,
            "building the client's op graph"
        );
        let solved = solver.solve(&graph, &name, ctx).await?;
        return Ok(Ran {
            solved,
            warnings: Vec::new(),
        });
    }
    let platforms = wire_platforms(start)?;
    let build_platform = match &start.build_platform {
        Some(p) => Platform::try_from(p).map_err(SessionError::WirePlatform)?,
        None => Platform::host(),
    };
    let plan_options = kbuild_dockerfile::plan::PlanOptions {
        platforms,
        build_platform,
        build_args: start.build_args.clone().into_iter().collect(),
        target: (!start.target.is_empty()).then(|| start.target.clone()),
        labels: start.labels.clone().into_iter().collect(),
        named_contexts: start
            .named_images
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    kbuild_dockerfile::plan::NamedContext::Image(r.clone()),
                )
            })
            .collect(),
    };
    let dockerfile =
        std::str::from_utf8(&start.dockerfile).map_err(|_| SessionError::DockerfileNotUtf8)?;
    tracing::info!("planning the client's Dockerfile (a protocol-2 client)");
    let result = solver.build(dockerfile, &name, &plan_options, ctx).await?;
    Ok(Ran {
        warnings: result
            .plan
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect(),
        solved: result.solved,
    })
}

/// The platforms a session's `BuildStart` asks for.
pub(crate) fn wire_platforms(start: &v1::BuildStart) -> Result<Vec<Platform>, SessionError> {
    start
        .platforms
        .iter()
        .map(Platform::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(SessionError::WirePlatform)
}

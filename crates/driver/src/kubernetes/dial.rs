//! Reaching a builder pod through the API server: exec
//! `kubectl-build dial-stdio` in its builder container (which joins its
//! standard input and output to the daemon's socket) and speak gRPC over
//! the exec stream. Nothing listens on the pod network.

use super::{Error as KubeError, BINARY, CONTAINER, SOCKET};
use crate::config::Node;
use crate::connect::{self, Dialer, Dialing};
use crate::Error;
use k8s_openapi::api::core::v1::Pod;
use kbuild_proto::Endpoint;
use kube::api::{Api, AttachParams, AttachedProcess};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, SimplexStream, WriteHalf};

/// Buffer of each direction of the exec stream.
const BUFFER: usize = 1 << 20;

/// The exec stream as one byte stream: writes go to the process's standard
/// input, reads come from its standard output. Dropping it ends the exec.
pub struct PodStream {
    _process: AttachedProcess,
    stdin: WriteHalf<SimplexStream>,
    stdout: ReadHalf<SimplexStream>,
}

impl AsyncRead for PodStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for PodStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

/// Starts `dial-stdio` in `pod` of `namespace`.
pub async fn exec_stdio(
    client: kube::Client,
    namespace: &str,
    pod: &str,
) -> Result<PodStream, KubeError> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let mut ap = AttachParams::default()
        .container(CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(false);
    ap.max_stdin_buf_size = Some(BUFFER);
    ap.max_stdout_buf_size = Some(BUFFER);
    let mut process = api
        .exec(pod, [BINARY, "dial-stdio", "--addr", SOCKET], &ap)
        .await
        .map_err(|e| KubeError::api("create", "pods/exec", namespace, e))?;
    let (Some(stdin), Some(stdout)) = (process.stdin(), process.stdout()) else {
        return Err(KubeError::Api {
            verb: "create",
            resource: "pods/exec",
            namespace: namespace.to_string(),
            source: Box::new(kube::Error::Service(
                "the exec stream has no standard input or output".into(),
            )),
        });
    };
    Ok(PodStream {
        _process: process,
        stdin,
        stdout,
    })
}

/// Dials builder pods (`kubernetes://NAMESPACE/POD` endpoints) through the
/// API server; other endpoints are dialed directly.
#[derive(Clone)]
pub struct PodDialer {
    client: kube::Client,
}

impl PodDialer {
    /// A dialer using `client` (the user's kubeconfig).
    pub fn new(client: kube::Client) -> PodDialer {
        PodDialer { client }
    }
}

impl Dialer for PodDialer {
    fn dial<'a>(&'a self, builder: &'a str, node: &'a Node, timeout: Duration) -> Dialing<'a> {
        Box::pin(async move {
            let endpoint =
                Endpoint::parse(&node.endpoint).map_err(|e| Error::Endpoint(Box::new(e)))?;
            let Endpoint::Kubernetes { namespace, pod } = &endpoint else {
                return connect::connect(builder, node, timeout).await;
            };
            let started = Instant::now();
            let failed = |source: KubeError| Error::Pod {
                builder: builder.to_string(),
                endpoint: endpoint.clone(),
                source: Box::new(source),
            };
            let timed_out = || Error::Timeout {
                builder: builder.to_string(),
                endpoint: endpoint.clone(),
                timeout,
            };
            // The first exec here, so an API error (403, 404) is reported
            // as such; the channel execs again should it reconnect.
            let first =
                tokio::time::timeout(timeout, exec_stdio(self.client.clone(), namespace, pod))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(failed)?;
            let first = Arc::new(Mutex::new(Some(first)));
            let (client, ns, pod_name) = (self.client.clone(), namespace.clone(), pod.clone());
            let connector = tower::service_fn(move |_: http::Uri| {
                let (client, ns, pod_name, first) =
                    (client.clone(), ns.clone(), pod_name.clone(), first.clone());
                async move {
                    let ready = first.lock().ok().and_then(|mut f| f.take());
                    let stream = match ready {
                        Some(s) => s,
                        None => exec_stdio(client, &ns, &pod_name)
                            .await
                            .map_err(io::Error::other)?,
                    };
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            let channel = tonic::transport::Endpoint::from_static("http://builder.pod")
                .connect_timeout(timeout)
                .http2_keep_alive_interval(Duration::from_secs(3))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect_with_connector(connector)
                .await
                .map_err(|source| Error::Unreachable {
                    builder: builder.to_string(),
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let left = timeout.saturating_sub(started.elapsed());
            connect::handshake(
                builder,
                &endpoint,
                channel,
                left.max(Duration::from_secs(1)),
            )
            .await
        })
    }
}

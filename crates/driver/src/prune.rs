//! `kubectl build prune --builder NAME`: one node's `Builder.Prune`
//! (protocol 4), over the dialer of the builder's driver.

use crate::config::Node;
use crate::connect::Dialer;
use crate::Error;
use kbuild_proto::v1::{builder_client::BuilderClient, PruneRequest, PruneResponse};
use kbuild_proto::Endpoint;
use std::time::Duration;

/// Prunes the store of `node` of `builder` (with `all`, its build cache
/// records too). Connecting is bounded by `timeout`, the prune itself is
/// not (it may remove a large store). A node older than protocol 4 is
/// [`Error::Protocol`]; a node running a build refuses
/// ([`Error::Rpc`] with `FAILED_PRECONDITION`), changing nothing.
pub async fn prune(
    builder: &str,
    node: &Node,
    dialer: &dyn Dialer,
    all: bool,
    timeout: Duration,
) -> Result<PruneResponse, Error> {
    let endpoint = Endpoint::parse(&node.endpoint).map_err(|e| Error::Endpoint(Box::new(e)))?;
    let (channel, info) = dialer.dial(builder, node, timeout).await?;
    if info.protocol < kbuild_proto::PRUNE_PROTOCOL {
        return Err(Error::Protocol {
            builder: builder.to_string(),
            endpoint,
            daemon: info.protocol,
            client: kbuild_proto::PROTOCOL_VERSION,
            advice: "prune needs protocol 4: upgrade kubectl-build on the builder's machine and restart \"kubectl-build serve\"",
        });
    }
    BuilderClient::new(channel)
        .prune(PruneRequest { all })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::Rpc {
            builder: builder.to_string(),
            endpoint,
            source: Box::new(status),
        })
}

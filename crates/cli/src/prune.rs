//! `kubectl build prune --builder NAME`: prunes the store of every node of
//! a remote builder, or of every ready pod of a kubernetes builder, through
//! the daemons' `Builder.Prune`, and reports what each freed as the local
//! prune does.

use crate::args::GlobalArgs;
use kbuild_driver::kubernetes::PodDialer;
use kbuild_driver::{Dialer, Direct, Node};
use std::process::ExitCode;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How long connecting to one node may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a builder's nodes could not be found for pruning.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Neither a remote builder nor a cluster to look in.
    #[error("no builder {name}: it is not a remote builder and there is no kubeconfig for a kubernetes one; \"kubectl build ls\" lists them")]
    NoBuilder {
        /// The builder.
        name: String,
    },
    /// The cluster could not be asked.
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    /// The cluster's answer about the builder.
    #[error(transparent)]
    Kubernetes(#[from] kbuild_driver::kubernetes::Error),
    /// A kubernetes builder without a ready pod.
    #[error("builder {name} has no ready pod in namespace {namespace} to prune")]
    NoReadyPod {
        /// The builder.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// A remote builder without nodes.
    #[error("builder {name} has no nodes")]
    NoNodes {
        /// The builder.
        name: String,
    },
}

/// Prunes builder `name`'s daemons (`local`: the local store). Prints one
/// line per node; fails when any node failed (the others are pruned all
/// the same).
pub fn prune_builder(name: &str, all: bool, g: &GlobalArgs) -> Result<ExitCode> {
    if name == kbuild_driver::LOCAL {
        println!("{}", crate::build::prune(g, all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rt = crate::builders::runtime()?;
    let remote = kbuild_driver::config::default_path()
        .and_then(|p| kbuild_driver::Config::load(&p))
        .ok()
        .and_then(|c| c.builders.get(name).cloned())
        .filter(|b| b.driver == "remote");
    let (nodes, dialer): (Vec<Node>, Box<dyn Dialer>) = match remote {
        Some(b) => (b.nodes, Box::new(Direct)),
        None => {
            let namespace = crate::kube::recorded(name).map(|r| r.namespace);
            let (nodes, dialer) = rt.block_on(async {
                let cluster = crate::kube::cluster(g, namespace.as_deref())
                    .await?
                    .ok_or_else(|| PruneError::NoBuilder {
                        name: name.to_string(),
                    })?;
                let status = cluster.status(name).await?.ok_or_else(|| {
                    kbuild_driver::kubernetes::Error::NotFound {
                        builder: name.to_string(),
                        namespace: cluster.namespace.clone(),
                    }
                })?;
                let nodes = status.ready_nodes();
                if nodes.is_empty() {
                    return Err(PruneError::NoReadyPod {
                        name: name.to_string(),
                        namespace: cluster.namespace.clone(),
                    });
                }
                Ok::<_, PruneError>((nodes, PodDialer::new(cluster.client.clone())))
            })?;
            (nodes, Box::new(dialer))
        }
    };
    if nodes.is_empty() {
        return Err(PruneError::NoNodes {
            name: name.to_string(),
        }
        .into());
    }
    let results = rt.block_on(futures_util::future::join_all(nodes.iter().map(|node| {
        kbuild_driver::prune::prune(name, node, dialer.as_ref(), all, DIAL_TIMEOUT)
    })));
    let mut failed = 0;
    let mut freed = 0u64;
    for (node, result) in nodes.iter().zip(results) {
        match result {
            Ok(r) => {
                freed += r.blob_bytes + r.layer_bytes + r.context_bytes;
                println!("{}: {}", node.name, summary(&r, all));
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", kbuild_driver::connect::chain(&e));
            }
        }
    }
    if nodes.len() > 1 {
        println!(
            "builder {name}: {} of {} nodes pruned, {:.1} MB freed",
            nodes.len() - failed,
            nodes.len(),
            freed as f64 / 1e6
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One node's line: the local prune's, then the client contexts.
fn summary(r: &kbuild_proto::v1::PruneResponse, all: bool) -> String {
    let store = crate::build::prune_summary(
        &kbuild_solver::prune::PruneReport {
            blobs_removed: r.blobs_removed,
            blob_bytes: r.blob_bytes,
            layers_removed: r.layers_removed,
            layer_bytes: r.layer_bytes,
            cache_records_removed: r.cache_records_removed,
            blobs_kept: r.blobs_kept,
        },
        all,
    );
    let host = if r.hostname.is_empty() {
        String::new()
    } else {
        format!(" on {}", r.hostname)
    };
    format!(
        "{store}; {} client contexts, {} context files, {} checksum caches ({:.1} MB){host}",
        r.contexts_removed,
        r.context_files_removed,
        r.checksum_files_removed,
        r.context_bytes as f64 / 1e6
    )
}

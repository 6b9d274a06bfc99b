//! `-o type=containerd`: the built image goes into a containerd (a
//! Kubernetes node's, for `--load` of builders in a cluster) through
//! [`kbuild_containerd`].

use crate::engine::{Solved, Solver};
use crate::error::SolveError;
use crate::options::Output;

/// How long containerd keeps what a load wrote when the process dies
/// before the image names it.
const LEASE_SECONDS: i64 = 3600;

/// Loads `result` into the containerd `out` names; returns the line the
/// CLI prints.
pub(crate) async fn export(
    solver: &Solver,
    result: &Solved,
    out: &Output,
) -> Result<String, SolveError> {
    let target = out.containerd.clone().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expires = crate::assemble::rfc3339(now + LEASE_SECONDS);
    let report = kbuild_containerd::load(
        &target,
        solver.store(),
        &result.root,
        &out.names,
        Some(&expires),
    )
    .await?;
    let unpacked = if report.unpacked.is_empty() {
        "no platform of the image runs on this machine: nothing unpacked".to_string()
    } else {
        format!("unpacked {}", report.unpacked.join(", "))
    };
    Ok(format!(
        "loaded {} into containerd at {} (namespace {}; {unpacked})",
        report.images.join(", "),
        target.address.display(),
        target.namespace
    ))
}

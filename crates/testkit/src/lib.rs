//! Real components for the integration tests of kubectl-build: a `docker-registry`
//! process on a free loopback port (anonymous or htpasswd Basic auth), a private
//! `dockerd`, a fault-injecting proxy process to put in front of the registry,
//! test hosts in network namespaces, `kubectl-build serve` nodes on them and
//! the client that builds on them, the locally built base-image fixtures,
//! and a two-node Kubernetes cluster. Nothing here is mocked: every helper
//! starts or locates the real program and stops it when dropped, except the
//! cluster (`scripts/cluster.sh`), which stays up for the next tests until
//! `scripts/cluster.sh down`.

#![deny(missing_docs)]

pub mod archive;
pub mod client;
pub mod cluster;
pub mod containerd;
pub mod daemon;
pub mod dockerd;
pub mod error;
pub mod faults;
pub mod fixtures;
pub mod netns;
pub mod node;
pub mod registry;
pub mod token;

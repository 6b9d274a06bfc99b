//! kbuild-solver runs a [`kbuild_dockerfile`] build plan: it turns the plan's
//! steps into a DAG of content-addressed operations, runs independent ones in
//! parallel (steps shared by several platforms once), keeps a cache of step
//! results in the content store, assembles one image per platform and hands
//! the result to the outputs (registry, OCI layout, docker archive, local).
//!
//! [`options`] holds the requests a build carries besides the Dockerfile
//! (outputs, secrets, SSH, network), parsed from the command line's strings.

#![deny(missing_docs)]

pub mod checksums;
pub mod config;
pub mod copy;
pub mod docker_load;
pub mod engine;
pub mod fsutil;
pub mod options;
pub mod outputs;
pub mod progress;
pub mod run;
pub mod users;

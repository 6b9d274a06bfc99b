//! kbuild-solver builds images: [`engine::Solver`] plans a Dockerfile
//! with [`kbuild_dockerfile`], lowers the plan to its op graph and executes
//! the graph: independent ops run in parallel (ops shared by several
//! platforms once), op results are cached in the content store, one image
//! is assembled per platform and handed to the outputs (registry, OCI
//! layout, docker archive, local). The solver knows ops, not Dockerfile
//! instructions.
//!
//! Modules by job: [`engine`] (entry points and orchestration),
//! `scheduler` (the memo table of ops, progress vertices), `base` (base
//! images), `source`, `exec`, `fileop` and [`config`] (one per op kind),
//! [`mounts`] (the host side of exec mounts), `cache` (keys and records),
//! `layer` (the layer pipeline), `assemble` (configs, manifests, index),
//! `download` (URLs), `error`. [`options`] holds the requests a build
//! carries besides the Dockerfile (outputs, secrets, SSH, network), parsed
//! from the command line's strings.

#![deny(missing_docs)]

mod assemble;
mod base;
mod cache;
pub mod cache_export;
mod cache_import;
pub mod checksums;
pub mod config;
mod containerd_load;
pub mod copy;
pub mod docker_load;
mod download;
pub mod engine;
mod error;
mod exec;
mod file_writers;
mod fileop;
pub mod fsutil;
mod git;
mod layer;
pub mod layout;
pub mod mounts;
pub mod options;
pub mod outputs;
mod prefetch;
pub mod progress;
pub mod provenance;
pub mod prune;
pub mod remote_cache;
mod scheduler;
mod source;
mod stdout_stage;
pub mod users;

pub use download::DownloadError;
pub use git::GitError;

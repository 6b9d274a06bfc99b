//! kbuild-worker: snapshots (layers unpacked once, stacked with overlayfs, diffed
//! from the upper directory) and the executor (sandboxed RUN, QEMU emulation).
//!
//! - [`snapshot`]: `Snapshotter` (unpack once per diff id, overlay mounts),
//!   `write_diff` (upper directory → OCI layer entries), `apply_layer_to_dir`.
//! - [`executor`]: `Executor::run` of a `RunSpec` in fresh namespaces through
//!   a re-exec of the calling binary (`helper_main` on `SANDBOX_FLAG`).
//! - [`binfmt`]: whether a platform runs natively, in 32-bit mode or under
//!   QEMU, and registration of missing QEMU handlers.

#![deny(missing_docs)]

pub mod binfmt;
pub mod executor;
pub mod rootpath;
pub mod snapshot;

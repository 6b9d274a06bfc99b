//! kbuild-worker: snapshots (layers unpacked once, stacked with overlayfs, diffed
//! from the upper directory) and the executor (sandboxed RUN, QEMU emulation).

pub mod binfmt;
pub mod executor;
pub mod snapshot;

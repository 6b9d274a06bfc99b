//! kbuild-registry (work in progress).

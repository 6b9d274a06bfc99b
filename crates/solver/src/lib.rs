//! kbuild-solver (work in progress).

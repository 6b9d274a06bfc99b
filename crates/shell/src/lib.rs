//! kbuild-shell (work in progress).

//! kbuild-platform (work in progress).

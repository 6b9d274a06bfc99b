//! kbuild-image (work in progress).

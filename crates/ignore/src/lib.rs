//! kbuild-ignore (work in progress).

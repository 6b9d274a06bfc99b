//! kbuild-dockerfile (work in progress).

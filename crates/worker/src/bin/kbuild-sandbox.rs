//! The sandbox helper as its own program, for the worker's tests and
//! benchmarks (the CLI re-executes itself with `__kbuild_sandbox` instead).

fn main() {
    kbuild_worker::executor::helper_main()
}

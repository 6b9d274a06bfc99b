//! `kbuild-fault-proxy`: see [`kbuild_testkit::faults`].

fn main() -> std::process::ExitCode {
    match kbuild_testkit::faults::proxy_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kbuild-fault-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

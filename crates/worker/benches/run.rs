//! Overhead of a RUN step: `true` in a fresh sandbox (helper spawn,
//! namespaces, mounts, pivot_root, exec, teardown), natively and under
//! QEMU, against running the emulated busybox directly with
//! `qemu-aarch64-static`.
//!
//! Needs root and the busybox fixtures (`scripts/fixtures.sh`); prints why
//! and measures nothing otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use kbuild_platform::Platform;
use kbuild_worker::binfmt;
use kbuild_worker::executor::{Cancel, Executor, RunSpec};

fn executor() -> Executor {
    Executor::new(
        PathBuf::from(env!("CARGO_BIN_EXE_kbuild-sandbox")),
        Vec::new(),
    )
}

fn rootfs(arch: &str) -> Option<PathBuf> {
    let bin = kbuild_testkit::fixtures::busybox_binary(arch)?;
    bin.parent().and_then(Path::parent).map(Path::to_path_buf)
}

fn run_true(exec: &Executor, spec: &RunSpec) {
    let status = exec
        .run(spec, &Cancel::new(), &mut |_, _| {})
        .expect("the step runs");
    assert!(status.success());
}

fn bench(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: the sandbox needs root");
        return;
    }
    let exec = executor();
    let mut group = c.benchmark_group("run_true");
    group.sample_size(30);
    // The rootfs is used as is (no overlay): stubs for /proc, /dev, /sys and
    // /etc files are created and removed in it on every run.
    if let Some(root) = rootfs("amd64").filter(|_| Platform::host().architecture == "amd64") {
        let spec = RunSpec::new(&root, ["/bin/true"]);
        group.bench_function("native_sandbox", |b| b.iter(|| run_true(&exec, &spec)));
    }
    let arm64 = Platform::new("linux", "arm64", None);
    if let Some(root) = rootfs("arm64") {
        if binfmt::ensure(&arm64).is_ok() {
            let mut spec = RunSpec::new(&root, ["/bin/true"]);
            spec.platform = arm64.clone();
            group.bench_function("emulated_sandbox_arm64", |b| {
                b.iter(|| run_true(&exec, &spec))
            });
        }
        let busybox = root.join("bin/busybox");
        group.bench_function("qemu_aarch64_static_direct", |b| {
            b.iter(|| {
                let s = Command::new("qemu-aarch64-static")
                    .arg(&busybox)
                    .arg("true")
                    .status()
                    .expect("qemu-aarch64-static runs");
                assert!(s.success());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

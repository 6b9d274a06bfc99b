//! Stop signals and crash recovery of the store, with the real binary: a
//! build whose RUN step sleeps (natively, or under QEMU for linux/arm64) is
//! killed with SIGKILL or stopped with SIGTERM while the step runs; then the
//! next build and `prune` must leave no overlay mount under the store root
//! (read from /proc/self/mountinfo), no mount directory, no temp entry, and
//! the next build must work. Another test runs `prune` and a second build
//! next to a live build and checks its mount survives.

mod common;

use common::{busybox_store, context, kb};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Mount points under `root` in this process's mount namespace.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).unwrap();
    let root = root.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(root))
        .map(String::from)
        .collect()
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Asserts the store holds no mount and no temporary entry.
fn assert_clean(store: &Path, when: &str) {
    assert_eq!(
        mounts_under(store),
        Vec::<String>::new(),
        "mounts left under the store {when}"
    );
    for sub in [
        "snapshots/mounts",
        "snapshots/snapshots",
        "snapshots/tmp",
        "content/ingest",
    ] {
        assert_eq!(
            entries(&store.join(sub)),
            Vec::<PathBuf>::new(),
            "{sub} not empty {when}"
        );
    }
    let mut stack = vec![store.join("content/refs")];
    while let Some(d) = stack.pop() {
        for p in entries(&d) {
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    !name.contains(".tmp-"),
                    "ref temp file {} {when}",
                    p.display()
                );
            }
        }
    }
}

/// Pids whose command line ends with `sleep <secs>` (natively, or as the
/// arguments of the QEMU interpreter).
fn sleepers(secs: u32) -> Vec<u32> {
    let tail = format!("sleep\0{secs}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.ends_with(tail.as_bytes()))
        })
        .collect()
}

/// Waits until `done` holds, up to `limit`; panics with `what` otherwise.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A build running in the background, its stderr going to `log`.
struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    fn start(store: &Path, log: PathBuf, args: &[&str]) -> Background {
        let child = Command::new(common::bin())
            .arg("--root")
            .arg(store)
            .args(args)
            .args(["--progress", "plain"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a RUN step of this build created `marker` in its upper
    /// directory, i.e. the step is running.
    fn wait_running(&mut self, store: &Path, marker: &str) {
        let mounts = store.join("snapshots/mounts");
        let started = Instant::now();
        loop {
            if entries(&mounts)
                .iter()
                .any(|m| m.join("upper").join(marker).exists())
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the build ended ({status}) before its step ran:\n{}",
                    self.log()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("the step did not start in 60 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the exit, up to `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
}

/// After the stop: which command reclaims first.
#[derive(Clone, Copy, PartialEq)]
enum First {
    Prune,
    Build,
}

/// Builds a step that sleeps `secs` for `platform`, stops the build while
/// the step runs, then checks that `first` (and then the other) reclaims
/// everything and that the next build works.
fn stopped_build(platform: &str, stop: Stop, secs: u32, first: First) {
    let Some((t, store)) = busybox_store(platform) else {
        return;
    };
    let ctx = context(
        t.path(),
        "ctx",
        &format!(
            "FROM kbuild.test/busybox:latest\nRUN touch /kbuild-step-running && sleep {secs}\n"
        ),
    );
    let mut build = Background::start(
        &store,
        t.path().join("log"),
        &[&ctx, "--platform", platform],
    );
    build.wait_running(&store, "kbuild-step-running");
    wait_for(Duration::from_secs(30), "the sleep runs", || {
        !sleepers(secs).is_empty()
    });
    assert!(
        !mounts_under(&store).is_empty(),
        "the running step has its root filesystem mounted"
    );
    let stopped = Instant::now();
    match stop {
        Stop::Kill => {
            build.signal("KILL");
            let status = build.wait(Duration::from_secs(10));
            assert_eq!(status.signal(), Some(9), "{status}");
            // Nothing ran to clean up: the crash leaves its mount behind.
            assert!(
                !mounts_under(&store).is_empty(),
                "a killed build leaves its mount"
            );
            assert!(!entries(&store.join("snapshots/mounts")).is_empty());
        }
        Stop::Term => {
            build.signal("TERM");
            let status = build.wait(Duration::from_secs(15));
            let log = build.log();
            assert_eq!(
                status.signal(),
                None,
                "SIGTERM is handled, not fatal:\n{log}"
            );
            assert_ne!(status.code(), Some(0), "{log}");
            assert!(
                log.lines()
                    .any(|l| l
                        == "error: build cancelled (interrupted); nothing was tagged or written"),
                "the cancel message, as for SIGINT:\n{log}"
            );
            assert!(
                stopped.elapsed() < Duration::from_secs(10),
                "prompt exit: {:?}",
                stopped.elapsed()
            );
            // A handled stop cleans up itself.
            assert_clean(&store, "after SIGTERM");
        }
    }
    // The sandbox dies with the build (its parent-death signal).
    wait_for(Duration::from_secs(10), "the step's sleep is gone", || {
        sleepers(secs).is_empty()
    });

    let debug = [("KUBECTL_BUILD_LOG", "debug")];
    let next_ctx = context(
        t.path(),
        "next",
        "FROM kbuild.test/busybox:latest\nRUN echo works > /after\n",
    );
    let out = t.path().join("out");
    let out_arg = format!("type=local,dest={}", out.display());
    let next_build = || {
        let r = kb(&store, [&next_ctx])
            .platform(platform)
            .output(&out_arg)
            .envs(&debug)
            .ok();
        assert_eq!(
            std::fs::read_to_string(out.join("after")).unwrap(),
            "works\n",
            "the next build works"
        );
        r
    };
    let reclaimed = "unmounted the overlay of a dead process";
    match first {
        First::Prune => {
            let r = kb(&store, ["prune"]).envs(&debug).ok();
            assert!(r.stdout.starts_with("removed "), "{}", r.stdout);
            if stop == Stop::Kill {
                assert!(
                    r.stderr.contains(reclaimed),
                    "prune reclaims:\n{}",
                    r.stderr
                );
            }
            assert_clean(&store, "after prune");
            next_build();
            assert_clean(&store, "after the next build");
        }
        First::Build => {
            let r = next_build();
            if stop == Stop::Kill {
                assert!(
                    r.stderr.contains(reclaimed),
                    "the next build reclaims:\n{}",
                    r.stderr
                );
            }
            assert_clean(&store, "after the next build");
            kb(&store, ["prune"]).ok();
            assert_clean(&store, "after prune");
        }
    }
}

#[test]
fn sigkill_native_is_reclaimed_by_the_next_build() {
    stopped_build("linux/amd64", Stop::Kill, 191, First::Build);
}

#[test]
fn sigkill_emulated_is_reclaimed_by_prune() {
    stopped_build("linux/arm64", Stop::Kill, 192, First::Prune);
}

#[test]
fn sigterm_native_cancels_like_sigint() {
    stopped_build("linux/amd64", Stop::Term, 193, First::Prune);
}

#[test]
fn sigterm_emulated_cancels_like_sigint() {
    stopped_build("linux/arm64", Stop::Term, 194, First::Build);
}

#[test]
fn prune_and_other_builds_leave_a_live_builds_mount_alone() {
    let Some((t, store)) = busybox_store("linux/amd64") else {
        return;
    };
    let ctx = context(
        t.path(),
        "live",
        // The step waits until the test ends its sleep, then finishes.
        "FROM kbuild.test/busybox:latest\nRUN touch /kbuild-step-running && sleep 195; echo done > /done\n",
    );
    let out = t.path().join("out-live");
    let out_arg = format!("type=local,dest={}", out.display());
    let mut live = Background::start(
        &store,
        t.path().join("log"),
        &[&ctx, "--platform", "linux/amd64", "-o", &out_arg],
    );
    live.wait_running(&store, "kbuild-step-running");
    let live_mounts = mounts_under(&store);
    assert!(!live_mounts.is_empty());
    let live_dirs = entries(&store.join("snapshots/mounts"));

    // prune refuses while the build holds the store, touching nothing.
    let r = kb(&store, ["prune", "--all"]).fails();
    assert!(
        r.stderr.contains("in use by a running build"),
        "{}",
        r.stderr
    );
    // Another build starts (and runs its crash recovery) next to it.
    let other = context(
        t.path(),
        "other",
        "FROM kbuild.test/busybox:latest\nRUN echo other > /other\n",
    );
    let other_out = t.path().join("out-other");
    let r = kb(&store, [&other])
        .platform("linux/amd64")
        .output(format!("type=local,dest={}", other_out.display()))
        .envs(&[("KUBECTL_BUILD_LOG", "debug")])
        .ok();
    assert!(
        !r.stderr.contains("of a dead process"),
        "nothing of the live build was reclaimed:\n{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(other_out.join("other")).unwrap(),
        "other\n"
    );
    for m in &live_mounts {
        assert!(
            mounts_under(&store).contains(m),
            "the live build's mount {m} is still there"
        );
    }
    for d in &live_dirs {
        assert!(d.exists(), "{} is still there", d.display());
    }
    assert!(
        live_dirs
            .iter()
            .any(|d| d.join("upper/kbuild-step-running").exists()),
        "the live step's changes are intact"
    );
    let sleeping = sleepers(195);
    assert_eq!(sleeping.len(), 1, "the live step still runs");
    let st = Command::new("kill")
        .arg(sleeping[0].to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let status = live.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", live.log());
    assert_eq!(std::fs::read_to_string(out.join("done")).unwrap(), "done\n");
    kb(&store, ["prune", "--all"]).ok();
    assert_clean(&store, "after the builds and prune");
}

//! The executor against real namespaces, mounts and QEMU, with the busybox
//! fixtures as root filesystems. Needs root: outside CI, tests print why
//! they skip; under CI (`CI=true`) they fail instead.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbuild_platform::Platform;
use kbuild_testkit::fixtures::{busybox_binary, skip_or_fail};
use kbuild_worker::binfmt;
use kbuild_worker::executor::{
    Cancel, Error, Executor, ExitStatus, MountSpec, Network, RunSpec, Stream, User,
};
use kbuild_worker::snapshot::{Mount, Snapshotter};

fn executor() -> Executor {
    Executor::new(
        PathBuf::from(env!("CARGO_BIN_EXE_kbuild-sandbox")),
        Vec::new(),
    )
}

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip_or_fail("the sandbox needs root (namespaces, mounts)");
    false
}

/// The fixture directory of `arch` (`amd64`, `armv7`, ...).
fn fixture(arch: &str) -> Option<PathBuf> {
    let bin = busybox_binary(arch)?;
    Some(bin.parent()?.parent()?.to_path_buf())
}

/// A live overlay with the fixture of `arch` as its only lower.
struct Rootfs {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    mount: Option<Mount>,
}

impl Rootfs {
    fn new(arch: &str) -> Option<Rootfs> {
        if !is_root() {
            return None;
        }
        let lower = fixture(arch)?;
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = Snapshotter::new(dir.path().join("snapshots")).unwrap();
        let mount = snapshotter.mount(std::slice::from_ref(&lower)).unwrap();
        Some(Rootfs {
            _dir: dir,
            lower,
            mount: Some(mount),
        })
    }

    fn merged(&self) -> &Path {
        self.mount.as_ref().unwrap().merged()
    }

    fn upper(&self) -> PathBuf {
        self.mount.as_ref().unwrap().upper().to_path_buf()
    }

    fn spec<const N: usize>(&self, argv: [&str; N]) -> RunSpec {
        let mut spec = RunSpec::new(self.merged(), argv);
        spec.env = vec!["PATH=/bin".into()];
        spec
    }
}

/// Runs and collects stdout and stderr.
fn run(spec: &RunSpec) -> (Result<ExitStatus, Error>, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let r = executor().run(spec, &Cancel::new(), &mut |s, b| match s {
        Stream::Stdout => out.extend_from_slice(b),
        Stream::Stderr => err.extend_from_slice(b),
    });
    (
        r,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn run_ok(spec: &RunSpec) -> String {
    let (r, out, err) = run(spec);
    assert_eq!(
        r.unwrap(),
        ExitStatus::Code(0),
        "stdout: {out}\nstderr: {err}"
    );
    out
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

/// What the step changed: the upper's entries, except directories that
/// are only copied up (same mtime as in the lower, no children).
fn changes(root: &Rootfs) -> Vec<String> {
    let upper = root.upper();
    tree(&upper)
        .into_iter()
        .filter(|rel| {
            let u = fs::symlink_metadata(upper.join(rel)).unwrap();
            let copied_up = u.is_dir()
                && fs::read_dir(upper.join(rel)).unwrap().next().is_none()
                && fs::symlink_metadata(root.lower.join(rel))
                    .is_ok_and(|l| l.is_dir() && l.mtime() == u.mtime());
            !copied_up
        })
        .collect()
}

fn processes_with_arg(arg: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn mount_lines_under(path: &Path) -> Vec<String> {
    let p = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&p)))
        .map(str::to_string)
        .collect()
}

#[test]
fn uname_machine_for_every_platform() {
    if !is_root() {
        return;
    }
    let table = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/executor_cases/uname.txt"
    ))
    .unwrap();
    let mut checked = 0;
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut words = line.split_whitespace();
        let (platform, want) = (words.next().unwrap(), words.next().unwrap());
        let platform = Platform::parse(platform).unwrap();
        assert_eq!(binfmt::uname_machine(&platform), Some(want), "{platform}");
        if let Err(e) = binfmt::ensure(&platform) {
            skip_or_fail(&format!("{platform} cannot run here: {e}"));
            continue;
        }
        let dir = kbuild_testkit::fixtures::busybox_platform(&platform.to_string())
            .unwrap()
            .dir;
        let Some(root) = Rootfs::new(dir) else { return };
        let mut spec = root.spec(["sh", "-c", "uname -m"]);
        spec.platform = platform.clone();
        assert_eq!(run_ok(&spec).trim(), want, "{platform}");
        // The QEMU CPU model for arm/v6 travels in the environment, so that
        // every program the step starts gets it (documented in binfmt).
        let emulated_v6 = platform.variant.as_deref() == Some("v6")
            && matches!(binfmt::support(&platform), binfmt::Support::Emulated { .. });
        let env = run_ok(&RunSpec {
            argv: vec!["env".into()],
            ..spec
        });
        assert_eq!(
            env.contains("QEMU_CPU=arm1176\n"),
            emulated_v6,
            "{platform}: {env}"
        );
        checked += 1;
    }
    eprintln!("uname checked for {checked} platforms");
    assert!(checked > 0, "no platform could be checked");
}

#[test]
fn false_exits_1_and_missing_program_is_an_error() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let (r, _, _) = run(&root.spec(["false"]));
    assert_eq!(r.unwrap(), ExitStatus::Code(1));
    let (r, _, _) = run(&root.spec(["sh", "-c", "kill -9 $$"]));
    assert_eq!(r.unwrap(), ExitStatus::Signal(9));
    let (r, _, _) = run(&root.spec(["no-such-program"]));
    match r {
        Err(Error::Exec { argv0, message }) => {
            assert_eq!(argv0, "no-such-program");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_cwd_and_user_are_applied() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let mut spec = root.spec([
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; touch mine",
    ]);
    spec.env.push("FOO=bar baz".into());
    spec.cwd = "/work/sub".into();
    spec.user = User {
        uid: 1234,
        gid: 5678,
        additional_gids: vec![10, 20],
    };
    let out = run_ok(&spec);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["bar baz", "/work/sub", "1234", "5678", "5678 10 20"]
    );
    let made = fs::metadata(root.merged().join("work/sub/mine")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1234, 5678));
    let dir = fs::metadata(root.merged().join("work")).unwrap();
    assert_eq!((dir.uid(), dir.gid()), (1234, 5678));
    // Only the given environment, nothing of ours.
    let env = run_ok(&root.spec(["env"]));
    let mut names: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["PATH"]);
}

#[test]
fn network_none_has_only_loopback() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let ifaces = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_string())
            .collect();
        v.sort();
        v
    };
    let mut spec = root.spec(["cat", "/proc/net/dev"]);
    spec.network = Network::None;
    assert_eq!(ifaces(&run_ok(&spec)), ["lo"]);
    let mut spec = root.spec([
        "cat",
        "/sys/class/net/lo/operstate",
        "/sys/class/net/lo/flags",
    ]);
    spec.network = Network::None;
    let out = run_ok(&spec);
    let flags =
        u32::from_str_radix(out.lines().nth(1).unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up: {out}");
    // Host networking sees the host's interfaces.
    let host = ifaces(&fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(ifaces(&run_ok(&root.spec(["cat", "/proc/net/dev"]))), host);
}

#[test]
fn generated_etc_files_leave_no_trace_in_the_upper() {
    let Some(mut root) = Rootfs::new("amd64") else {
        return;
    };
    let etc_mtime = fs::metadata(root.lower.join("etc")).unwrap().mtime();
    let mut spec = root.spec(["sh", "-c", "cat /etc/hosts; cat /etc/hostname; hostname; test -s /etc/resolv.conf && echo resolv; echo x > /newfile; ls /proc/1/ >/dev/null && echo proc"]);
    spec.hostname = "stepbox".into();
    spec.extra_hosts = vec![
        ("db.local".into(), "10.1.2.3".into()),
        ("v6".into(), "fd00::1".into()),
    ];
    let out = run_ok(&spec);
    assert!(out.contains("127.0.0.1\tlocalhost stepbox\n"), "{out}");
    assert!(
        out.contains("10.1.2.3\tdb.local\n") && out.contains("fd00::1\tv6\n"),
        "{out}"
    );
    assert!(out.contains("\nstepbox\nstepbox\n"), "{out}");
    if fs::metadata("/etc/resolv.conf").is_ok_and(|m| m.len() > 0) {
        assert!(out.contains("resolv\n"), "{out}");
    }
    assert!(out.ends_with("proc\n"), "{out}");
    let upper = root.upper();
    assert_eq!(
        tree(&upper),
        ["etc", "newfile"],
        "the upper holds only the change and /etc's copy-up"
    );
    assert_eq!(
        fs::metadata(upper.join("etc")).unwrap().mtime(),
        etc_mtime,
        "/etc keeps its time"
    );
    for e in walkdir::WalkDir::new(&upper) {
        let e = e.unwrap();
        assert!(
            !e.file_type().is_char_device(),
            "whiteout left at {}",
            e.path().display()
        );
    }
    let committed = root.mount.take().unwrap().commit().unwrap();
    assert_eq!(tree(&committed), ["etc", "newfile"]);
}

#[test]
fn extra_mounts_bind_tmpfs_and_secret_files() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("data"), "from host\n").unwrap();
    let secret = host.path().join("token");
    fs::write(&secret, "s3cret\n").unwrap();
    let mut spec = root.spec([
        "sh",
        "-c",
        "cat /src/data /run/secrets/token; touch /src/nope 2>/dev/null || echo ro; \
         echo hi > /cache/f && cat /cache/f; touch /rw/out",
    ]);
    let rw = tempfile::tempdir().unwrap();
    spec.mounts = vec![
        MountSpec::Bind {
            source: host.path().to_path_buf(),
            target: "/src".into(),
            readonly: true,
        },
        MountSpec::Bind {
            source: secret,
            target: "/run/secrets/token".into(),
            readonly: true,
        },
        MountSpec::Tmpfs {
            target: "/cache".into(),
            size: Some(1 << 20),
        },
        MountSpec::Bind {
            source: rw.path().to_path_buf(),
            target: "/rw".into(),
            readonly: false,
        },
    ];
    assert_eq!(run_ok(&spec), "from host\ns3cret\nro\nhi\n");
    assert!(rw.path().join("out").exists());
    assert!(changes(&root).is_empty(), "{:?}", tree(&root.upper()));
}

#[test]
fn minimal_dev_and_readonly_sys() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let out = run_ok(&root.spec([
        "sh",
        "-c",
        "ls /dev | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; touch /sys/x 2>/dev/null || echo sys-ro; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin",
        "stdout", "stderr",
    ] {
        assert!(
            lines[0].split(' ').any(|d| d == dev),
            "/dev lacks {dev}: {}",
            lines[0]
        );
    }
    assert_eq!(lines[1].trim(), "4");
    assert_eq!(lines[2], "sys-ro");
    assert!(
        lines[3].contains("kbuild-sandbox"),
        "PID 1 is the sandbox init: {}",
        lines[3]
    );
    assert_eq!(lines[4], "2", "the command is the first child of init");
}

#[test]
fn output_is_streamed_live_and_in_order() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let spec = root.spec(["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done; echo oops >&2; sleep 1; echo late"]);
    let start = Instant::now();
    let mut first: Option<Duration> = None;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = executor()
        .run(&spec, &Cancel::new(), &mut |s, b| {
            first.get_or_insert_with(|| start.elapsed());
            match s {
                Stream::Stdout => out.extend_from_slice(b),
                Stream::Stderr => err.extend_from_slice(b),
            }
        })
        .unwrap();
    let total = start.elapsed();
    assert!(status.success());
    let want: String = (0..500).map(|i| format!("line{i}\n")).collect::<String>() + "late\n";
    assert_eq!(String::from_utf8(out).unwrap(), want);
    assert_eq!(err, b"oops\n");
    let first = first.unwrap();
    assert!(
        total - first >= Duration::from_millis(900),
        "output came at {first:?}, the step ended at {total:?}"
    );
}

#[test]
fn background_daemons_die_with_the_step() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let start = Instant::now();
    let out = run_ok(&root.spec([
        "sh",
        "-c",
        "sleep 1009 & sleep 1010 </dev/null >/dev/null 2>&1 & echo started",
    ]));
    assert_eq!(out, "started\n");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(processes_with_arg("1009").is_empty() && processes_with_arg("1010").is_empty());
}

#[test]
fn cancel_kills_every_process_and_leaves_no_mount() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let before = mount_lines_under(root.merged());
    let cancel = Cancel::new();
    let spec = root.spec(["sh", "-c", "sleep 1011 & echo ready; sleep 1012"]);
    let cancelled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (c, at) = (cancel.clone(), cancelled_at.clone());
    let r = executor().run(&spec, &cancel, &mut |_, b| {
        if b.starts_with(b"ready") {
            let (c, at) = (c.clone(), at.clone());
            std::thread::spawn(move || {
                // Let both sleeps start.
                while processes_with_arg("1012").is_empty() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                *at.lock().unwrap() = Some(Instant::now());
                c.cancel();
            });
        }
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let took = cancelled_at.lock().unwrap().unwrap().elapsed();
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert!(processes_with_arg("1011").is_empty() && processes_with_arg("1012").is_empty());
    assert_eq!(
        mount_lines_under(root.merged()),
        before,
        "only the caller's overlay stays mounted"
    );
    assert!(changes(&root).is_empty(), "{:?}", tree(&root.upper()));
}

#[test]
fn the_step_dies_with_its_helper() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let me = std::process::id().to_string();
    let spec = root.spec(["sh", "-c", "sleep 1013 & echo ready; sleep 1014"]);
    // Only used if the helper cannot be found, so the test fails instead
    // of waiting for the sleeps.
    let fallback = Cancel::new();
    let r = executor().run(&spec, &fallback, &mut |_, b| {
        if b.starts_with(b"ready") {
            let me = me.clone();
            let fallback = fallback.clone();
            std::thread::spawn(move || {
                while processes_with_arg("1014").is_empty() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Walk up from the sleep (whose parent is the sandbox init,
                // or a shell under it) to our own child, the helper, and
                // kill it: as if the CLI's helper were killed (Ctrl-C
                // reaches it too).
                let ppid = |pid: i32| -> i32 {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let after = stat.rsplit(") ").next().unwrap_or("");
                    after
                        .split(' ')
                        .nth(1)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0)
                };
                let mut helper = processes_with_arg("1014")[0];
                while helper > 1 && ppid(helper).to_string() != me {
                    helper = ppid(helper);
                }
                if helper <= 1 {
                    fallback.cancel();
                    return;
                }
                let helper = rustix::process::Pid::from_raw(helper).expect("a process id");
                rustix::process::kill_process(helper, rustix::process::Signal::KILL).unwrap();
            });
        }
    });
    assert!(matches!(r, Err(Error::HelperDied { .. })), "{r:?}");
    assert!(processes_with_arg("1013").is_empty() && processes_with_arg("1014").is_empty());
    let cancel = Cancel::new();
    cancel.cancel();
    assert!(matches!(
        executor().run(&spec, &cancel, &mut |_, _| {}),
        Err(Error::Cancelled)
    ));
}

#[test]
fn a_mount_that_cannot_be_made_is_a_setup_error() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = root.spec(["true"]);
    // A directory cannot be bind-mounted over a file.
    spec.mounts = vec![MountSpec::Bind {
        source: dir.path().to_path_buf(),
        target: "/etc/passwd".into(),
        readonly: false,
    }];
    match run(&spec).0 {
        Err(Error::Setup(m)) => assert!(m.contains("etc/passwd"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(changes(&root).is_empty(), "{:?}", tree(&root.upper()));
}

#[test]
fn bad_specs_are_rejected_before_anything_runs() {
    let Some(root) = Rootfs::new("amd64") else {
        return;
    };
    let mut spec = root.spec(["true"]);
    spec.extra_hosts = vec![("db".into(), "not-an-ip".into())];
    assert!(matches!(run(&spec).0, Err(Error::InvalidSpec(_))));
    let mut spec = root.spec(["true"]);
    spec.cwd = "relative".into();
    assert!(matches!(run(&spec).0, Err(Error::InvalidSpec(_))));
    let spec = root.spec::<0>([]);
    assert!(matches!(run(&spec).0, Err(Error::InvalidSpec(_))));
    let mut spec = root.spec(["true"]);
    spec.platform = Platform::parse("windows/amd64").unwrap();
    let e = run(&spec).0.unwrap_err();
    assert!(matches!(e, Error::UnsupportedPlatform { .. }), "{e}");
    assert!(e.to_string().contains("windows/amd64"), "{e}");
}

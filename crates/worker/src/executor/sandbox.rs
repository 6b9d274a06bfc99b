//! The helper process: namespaces, mounts, `pivot_root`, credentials,
//! exec. Runs single-threaded in a freshly executed program, so forking
//! here is safe.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

// System calls go through rustix. nix stays for the three calls rustix has
// no stable API for (its `runtime` module is unstable): `fork` (twice: the
// sandbox init and the command), `execve` of the command, and `signal` to
// give the command default SIGPIPE/SIGINT/SIGTERM dispositions.
use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::{fork, ForkResult};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Gid, Pid, Uid, WaitOptions};
use rustix::thread::UnshareFlags;

use super::protocol::{HelperMount, HelperSpec, Status, STATUS_FD};
use super::DEFAULT_PATH;

/// Capabilities a step's root keeps (Docker's default set); every other
/// one is dropped from the bounding set before the command runs.
const KEPT_CAPS: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The sandbox helper's `main`: reads a spec from stdin, runs it, reports
/// on descriptor 3, exits. Call it first thing in `main` when the first
/// argument is [`super::SANDBOX_FLAG`] (or from a binary that exists only
/// for this); it never returns. The process must still be single-threaded
/// (it forks), so call it before building an async runtime: not from
/// inside `#[tokio::main]`. It refuses to run otherwise.
pub fn helper_main() -> ! {
    let code = match helper() {
        Ok(code) => code,
        Err(error) => {
            report(&Status::Setup(error.to_string()));
            125
        }
    };
    std::process::exit(code)
}

/// Writes one status line; errors are ignored (the supervisor then sees
/// the helper end without a status and says so).
fn report(status: &Status) {
    let Ok(mut line) = serde_json::to_vec(status) else {
        return;
    };
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        // SAFETY: writes from a valid buffer to a descriptor we do not own;
        // a closed descriptor only yields EBADF.
        let n = unsafe { libc::write(STATUS_FD, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Why the helper could not set up the sandbox or start the command: its
/// text is the message the supervisor reports.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// An operation failed: what was being done, and the system's answer.
    #[error("{what}: {source}")]
    Op {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Mount options with a NUL byte in them cannot be handed to mount(2).
    #[error("mount {fstype} on {}: options contain a NUL byte", target.display())]
    MountOptions {
        fstype: String,
        target: PathBuf,
        #[source]
        source: std::ffi::NulError,
    },
    /// The command line or environment cannot be handed to execve(2).
    #[error("an argument or variable contains a NUL byte")]
    NulInCommand(#[source] std::ffi::NulError),
    /// execve(2) refused the command.
    #[error("{}", .0.desc())]
    Exec(#[source] nix::errno::Errno),
    /// The helper must fork, which is unsafe with other threads running.
    #[error(
        "the helper has more than one thread: call executor::helper_main() first \
         thing in main, before an async runtime or any thread is started"
    )]
    Threads,
    /// The status descriptor was not handed over.
    #[error(
        "descriptor {STATUS_FD} is not open: {0}; the helper must be started by Executor::run"
    )]
    StatusFd(#[source] io::Error),
    /// The spec names no command.
    #[error("the command is empty")]
    EmptyCommand,
    /// No executable of the command's name on its `PATH`.
    #[error("executable file not found in $PATH")]
    NotFound,
}

/// The error of `what` failing with `source`.
fn op(what: String, source: impl std::error::Error + Send + Sync + 'static) -> SetupError {
    SetupError::Op {
        what,
        source: Box::new(source),
    }
}

fn ctx<T, E: std::error::Error + Send + Sync + 'static>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, SetupError> {
    r.map_err(|e| op(what(), e))
}

/// The number of threads of this process, from `/proc/self/status`.
fn thread_count() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn helper() -> Result<i32, SetupError> {
    if thread_count().is_some_and(|n| n > 1) {
        return Err(SetupError::Threads);
    }
    let mut input = Vec::new();
    ctx(io::stdin().read_to_end(&mut input), || {
        "read the spec from stdin".into()
    })?;
    let spec: HelperSpec = ctx(serde_json::from_slice(&input), || "parse the spec".into())?;
    // SAFETY: fcntl on a plain descriptor number.
    if unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(SetupError::StatusFd(io::Error::last_os_error()));
    }
    let mut flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if spec.new_network {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: no FILES flag, and this process is single-threaded.
    ctx(unsafe { rustix::thread::unshare_unsafe(flags) }, || {
        "unshare namespaces (needs root)".into()
    })?;
    // Held open by this process only: the init sees it close if we die
    // before it has asked to die with us.
    let (alive_r, alive_w) = ctx(rustix::pipe::pipe(), || "create a pipe".into())?;
    // SAFETY: this process is single-threaded.
    match ctx(unsafe { fork() }, || "fork the sandbox init".into())? {
        ForkResult::Child => {
            drop(alive_w);
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let mut fds = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&alive_r),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
            if n != 0 {
                // The helper is gone already.
                std::process::exit(1);
            }
            drop(alive_r);
            if let Err(error) = init(&spec) {
                report(&Status::Setup(error.to_string()));
                std::process::exit(125);
            }
            std::process::exit(0)
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            report(&Status::Init(child.as_raw()));
            let child = Pid::from_raw(child.as_raw());
            while let Err(rustix::io::Errno::INTR) =
                rustix::process::waitpid(child, WaitOptions::empty())
            {}
            drop(alive_w);
            Ok(0)
        }
    }
}

/// Names a failed mount by what was mounted (the filesystem type, else
/// the source) and where.
fn mounted(
    r: rustix::io::Result<()>,
    what: &dyn std::fmt::Display,
    target: &Path,
) -> Result<(), SetupError> {
    ctx(r, || format!("mount {what} on {}", target.display()))
}

/// Mounts a fresh filesystem of type `fstype` (named `source`) on `target`.
fn mount_fs(
    source: &str,
    fstype: &str,
    target: &Path,
    flags: MountFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    let data = data
        .map(CString::new)
        .transpose()
        .map_err(|source| SetupError::MountOptions {
            fstype: fstype.to_string(),
            target: target.to_path_buf(),
            source,
        })?;
    let r = rustix::mount::mount(source, target, fstype, flags, data.as_deref());
    mounted(r, &fstype, target)
}

/// Binds `source` onto `target`, with its submounts when `recursive`.
fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), SetupError> {
    let r = if recursive {
        rustix::mount::mount_bind_recursive(source, target)
    } else {
        rustix::mount::mount_bind(source, target)
    };
    mounted(r, &source.display(), target)
}

/// Remounts the bind mount at `target` with `flags` (read-only, ...).
fn remount_bind(target: &Path, flags: MountFlags) -> Result<(), SetupError> {
    let r = rustix::mount::mount_remount(target, MountFlags::BIND | flags, "");
    ctx(r, || format!("remount {} with {flags:?}", target.display()))
}

/// PID 1 of the step: mounts, pivot_root, then the command; returns when
/// the command has ended and its status is reported.
fn init(spec: &HelperSpec) -> Result<(), SetupError> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let r = rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    );
    ctx(r, || "make the mounts private".into())?;
    let root = &spec.rootfs;
    bind(root, root, true)?;
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", "proc", &spec.proc_dir, nosuid_nodev_noexec, None)?;
    setup_dev(&spec.dev_dir, spec.shm_size)?;
    mount_sys(&spec.sys_dir, spec.privileged)?;
    if !spec.privileged {
        harden(&spec.proc_dir, &spec.sys_dir)?;
    }
    mount_step_mounts(&spec.mounts)?;
    enter_root(spec)?;
    make_cwd(&spec.cwd, spec.uid, spec.gid)?;
    // SAFETY: single-threaded.
    match ctx(unsafe { fork() }, || "fork the command".into())? {
        ForkResult::Child => {
            let message = exec_command(spec);
            report(&Status::Exec(message));
            // SAFETY: leave without running anything of the parent's.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            reap_until(Pid::from_raw(child.as_raw()));
            Ok(())
        }
    }
}

/// The step's own mounts (RUN --mount binds and tmpfs), in order, on
/// mount points made to fit.
fn mount_step_mounts(mounts: &[HelperMount]) -> Result<(), SetupError> {
    for m in mounts {
        match m {
            HelperMount::Bind {
                source,
                target,
                readonly,
            } => {
                recreate_mount_point(target, source.is_dir())?;
                bind(source, target, true)?;
                if *readonly {
                    remount_bind(target, MountFlags::RDONLY)?;
                }
            }
            HelperMount::Tmpfs { target, size } => {
                recreate_mount_point(target, true)?;
                let data = match size {
                    Some(s) => format!("mode=1777,size={s}"),
                    None => "mode=1777".to_string(),
                };
                mount_fs(
                    "tmpfs",
                    "tmpfs",
                    target,
                    MountFlags::NOSUID | MountFlags::NODEV,
                    Some(&data),
                )?;
            }
        }
    }
    Ok(())
}

/// Makes the prepared root the process's `/` (pivot_root, the old root
/// detached), then sets the hostname and, in a new network namespace,
/// brings up the loopback interface.
fn enter_root(spec: &HelperSpec) -> Result<(), SetupError> {
    let root = &spec.rootfs;
    ctx(rustix::process::chdir(root), || {
        format!("enter {}", root.display())
    })?;
    ctx(rustix::process::pivot_root(".", "."), || {
        format!("pivot_root into {}", root.display())
    })?;
    ctx(rustix::mount::unmount(".", UnmountFlags::DETACH), || {
        "detach the old root".into()
    })?;
    ctx(rustix::process::chdir("/"), || "enter the new root".into())?;
    ctx(
        rustix::system::sethostname(spec.hostname.as_bytes()),
        || format!("set the hostname {:?}", spec.hostname),
    )?;
    if spec.new_network {
        ctx(loopback_up(), || "bring up the loopback interface".into())?;
    }
    Ok(())
}

/// Reaps every child (orphans are re-parented to us) until `main` ends,
/// then reports its status. The caller exits, and with it the namespace.
fn reap_until(main: Option<Pid>) {
    loop {
        match rustix::process::waitpid(None, WaitOptions::empty()) {
            Ok(Some((pid, status))) if Some(pid) == main => {
                if let Some(code) = status.exit_status() {
                    report(&Status::Exited(code));
                    return;
                }
                if let Some(signal) = status.terminating_signal() {
                    report(&Status::Signaled(signal));
                    return;
                }
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// `/sys`: a fresh sysfs, read-only unless privileged; where sysfs cannot be
/// mounted, the host's `/sys` bound without its submounts (so no cgroup
/// tree comes along writable).
fn mount_sys(sys: &Path, privileged: bool) -> Result<(), SetupError> {
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if !privileged {
        flags |= MountFlags::RDONLY;
    }
    if rustix::mount::mount("sysfs", sys, "sysfs", flags, None).is_ok() {
        return Ok(());
    }
    bind(Path::new("/sys"), sys, false)?;
    remount_bind(sys, flags)
}

/// runc's defaults for what a step sees of the kernel: the read-only parts
/// of `/proc` are bound onto themselves and remounted read-only, the masked
/// paths are covered (a directory by an empty read-only tmpfs, a file by
/// `/dev/null`). Paths the kernel does not have are skipped. Runs before
/// `pivot_root`, inside the fresh `/proc` and `/sys` mounted at `proc` and
/// `sys`, which the image cannot redirect.
fn harden(proc: &Path, sys: &Path) -> Result<(), SetupError> {
    let inside = |p: &str| match p.strip_prefix("/proc/") {
        Some(rest) => proc.join(rest),
        None => sys.join(p.trim_start_matches("/sys/")),
    };
    for path in super::READONLY_PATHS.map(inside) {
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        bind(&path, &path, true)?;
        let flags =
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        remount_bind(&path, flags)?;
    }
    for path in super::MASKED_PATHS.map(inside) {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            mount_fs(
                "tmpfs",
                "tmpfs",
                &path,
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                Some("size=0,mode=555"),
            )?;
        } else {
            bind(Path::new("/dev/null"), &path, false)?;
        }
    }
    Ok(())
}

/// A mount point the supervisor made in the root filesystem is hidden
/// when it lies under a filesystem mounted here since (`/dev`'s tmpfs,
/// e.g. `/dev/pipes/` for a RUN heredoc script): make it again, in that
/// fresh filesystem, as runc does for its mount destinations.
fn recreate_mount_point(target: &Path, dir: bool) -> Result<(), SetupError> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let made = if dir {
        fs::create_dir_all(target)
    } else {
        target
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::File::create(target).map(drop))
    };
    ctx(made, || {
        format!("create the mount point {}", target.display())
    })
}

fn setup_dev(dev: &Path, shm_size: u64) -> Result<(), SetupError> {
    mount_fs(
        "tmpfs",
        "tmpfs",
        dev,
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        ctx(fs::File::create(&target), || {
            format!("create {}", target.display())
        })?;
        bind(&host, &target, false)?;
    }
    let dir = |name: &str, mode: u32| -> Result<PathBuf, SetupError> {
        let p = dev.join(name);
        ctx(fs::DirBuilder::new().mode(mode).create(&p), || {
            format!("create {}", p.display())
        })?;
        Ok(p)
    };
    let pts = dir("pts", 0o755)?;
    mount_fs(
        "devpts",
        "devpts",
        &pts,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dir("shm", 0o1777)?;
    mount_fs(
        "shm",
        "tmpfs",
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(format!("mode=1777,size={shm_size}").as_str()),
    )?;
    let mqueue = dir("mqueue", 0o755)?;
    // Optional: kernels without POSIX message queues lack the filesystem.
    let _ = rustix::mount::mount(
        "mqueue",
        &mqueue,
        "mqueue",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    );
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        ctx(std::os::unix::fs::symlink(target, &p), || {
            format!("create {}", p.display())
        })?;
    }
    Ok(())
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            result = Err(io::Error::last_os_error());
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                result = Err(io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}

/// Creates the working directory and missing parents, owned by the step's
/// user (as BuildKit does); inside the new root, so symlinks resolve there.
fn make_cwd(cwd: &str, uid: u32, gid: u32) -> Result<(), SetupError> {
    let path = Path::new(cwd);
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        p = dir.parent();
    }
    for dir in missing.iter().rev() {
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(op(
                    format!("create the working directory {}", dir.display()),
                    e,
                ))
            }
        }
        ctx(std::os::unix::fs::chown(dir, Some(uid), Some(gid)), || {
            format!(
                "give the working directory {} to {uid}:{gid}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

fn find_program(argv0: &str, env: &[String]) -> Result<PathBuf, SetupError> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(argv0);
        if let Ok(m) = fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(SetupError::NotFound)
}

fn drop_capabilities() -> Result<(), SetupError> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(op(format!("drop capability {cap}"), e));
            }
        }
    }
    Ok(())
}

/// Becomes the command; returns only the reason it could not.
fn exec_command(spec: &HelperSpec) -> String {
    let run = || -> Result<std::convert::Infallible, SetupError> {
        // The command gets default signal handling whatever we inherited.
        for s in [Signal::SIGPIPE, Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: restoring default dispositions.
            let _ = unsafe { nix::sys::signal::signal(s, SigHandler::SigDfl) };
        }
        if let Some(p) = spec.personality {
            // SAFETY: personality takes a plain integer.
            if unsafe { libc::personality(p as libc::c_ulong) } < 0 {
                return Err(op(
                    format!("set personality {p:#x}"),
                    io::Error::last_os_error(),
                ));
            }
        }
        if !spec.privileged {
            drop_capabilities()?;
        }
        // Everything from here to the command is allowed by the profile
        // (setgroups, setres[ug]id, chdir, open, dup2, execve); installing
        // needs CAP_SYS_ADMIN, which root still has until execve.
        if let Some(program) = &spec.seccomp {
            ctx(super::seccomp::install(program), || {
                "install the seccomp filter".into()
            })?;
        }
        // rustix sets credentials with the raw system calls, which act on
        // the calling thread only (glibc's wrappers signal every thread):
        // this process is the single-threaded fork of the sandbox init, so
        // the thread is the process.
        let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        ctx(rustix::thread::set_thread_groups(&groups), || {
            "set the supplementary groups".into()
        })?;
        let gid = Gid::from_raw(spec.gid);
        ctx(rustix::thread::set_thread_res_gid(gid, gid, gid), || {
            format!("set gid {}", spec.gid)
        })?;
        let uid = Uid::from_raw(spec.uid);
        ctx(rustix::thread::set_thread_res_uid(uid, uid, uid), || {
            format!("set uid {}", spec.uid)
        })?;
        ctx(rustix::process::chdir(Path::new(&spec.cwd)), || {
            format!("enter the working directory {}", spec.cwd)
        })?;
        let null = ctx(fs::File::open("/dev/null"), || "open /dev/null".into())?;
        ctx(rustix::stdio::dup2_stdin(&null), || "redirect stdin".into())?;
        let argv0 = spec.argv.first().ok_or(SetupError::EmptyCommand)?;
        let program = find_program(argv0, &spec.env)?;
        let cstr = |s: &[u8]| CString::new(s).map_err(SetupError::NulInCommand);
        let path = cstr(program.as_os_str().as_bytes())?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        nix::unistd::execve(&path, &argv, &env).map_err(SetupError::Exec)
    };
    match run() {
        Ok(never) => match never {},
        Err(error) => error.to_string(),
    }
}

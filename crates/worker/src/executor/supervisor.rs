//! The caller's side of a step: prepares the root filesystem, starts the
//! helper, streams output, handles cancellation, cleans up.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::files::{self, Generated, Kind, Stubs};
use super::protocol::{HelperMount, HelperSpec, Status, STATUS_FD};
use super::{
    seccomp, Cancel, Error, Executor, ExitStatus, MountSpec, Network, Result, RunSpec, Security,
    Stream,
};
use crate::binfmt::{self, Support};

/// How often a blocked poll wakes up to look at the cancel flag.
const CANCEL_POLL_MS: i32 = 50;

fn invalid(msg: String) -> Error {
    Error::InvalidSpec(msg)
}

fn validate(spec: &RunSpec) -> Result<()> {
    if spec.argv.is_empty() {
        return Err(invalid("the command (argv) is empty".into()));
    }
    if !spec.rootfs.is_dir() {
        return Err(invalid(format!(
            "the root filesystem {} is not a directory",
            spec.rootfs.display()
        )));
    }
    if !spec.cwd.starts_with('/') {
        return Err(invalid(format!(
            "the working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    if !files::valid_hostname(&spec.hostname) {
        return Err(invalid(format!(
            "the hostname {:?} is not valid",
            spec.hostname
        )));
    }
    for (name, ip) in &spec.extra_hosts {
        if !files::valid_hosts_word(name) || ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "the extra host {name}:{ip} is not a name and an IP address"
            )));
        }
    }
    for m in &spec.mounts {
        let target = match m {
            MountSpec::Bind { target, .. } | MountSpec::Tmpfs { target, .. } => target,
        };
        if !target.starts_with('/') {
            return Err(invalid(format!(
                "the mount target {target:?} is not absolute"
            )));
        }
    }
    Ok(())
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves `target` inside the root and makes sure a mount point exists.
///
/// A host path, not a descriptor from `rootpath::open_in_root`: the helper
/// mounts in its own mount namespace, on the root bound onto itself and
/// after `/dev` and `/proc`, so it looks each target up again by name (a
/// descriptor opened here would name the mount below that bind, or an
/// inode hidden under `/dev`); the stubs made here are removed by path
/// when the step ends. No container runs in the root yet to swap a
/// symlink in between.
fn mount_point(stubs: &mut Stubs, root: &Path, target: &str, kind: Kind) -> Result<PathBuf> {
    let host = crate::rootpath::resolve_in_root(root, target, true).map_err(io_err(
        "resolve the mount point",
        &root.join(target.trim_start_matches('/')),
    ))?;
    stubs
        .ensure(root, &host, kind)
        .map_err(io_err("create the mount point", &host))?;
    Ok(host)
}

pub(super) fn run(
    exec: &Executor,
    spec: &RunSpec,
    cancel: &Cancel,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<ExitStatus> {
    validate(spec)?;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let support = binfmt::support(&spec.platform);
    if let Support::Unsupported { reason, fix } = &support {
        return Err(Error::UnsupportedPlatform {
            platform: spec.platform.to_string(),
            reason: reason.clone(),
            fix: fix.clone(),
        });
    }
    let (personality, qemu_env) = binfmt::sandbox_settings(&spec.platform, &support);
    let mut env = spec.env.clone();
    for var in qemu_env {
        let name = var.split('=').next().unwrap_or_default();
        if !env.iter().any(|e| e.split('=').next() == Some(name)) {
            env.push(var);
        }
    }
    let generated = Generated::new(&spec.hostname, &spec.extra_hosts).map_err(io_err(
        "write the generated /etc files in",
        &std::env::temp_dir(),
    ))?;
    let privileged = spec.security == Security::Insecure;
    let seccomp = if privileged {
        None
    } else {
        Some(seccomp::default_program().map_err(Error::Seccomp)?)
    };
    let mut stubs = Stubs::default();
    let prepared =
        prepare(spec, &generated, &mut stubs).map(|(proc_dir, dev_dir, sys_dir, mounts)| {
            HelperSpec {
                rootfs: spec.rootfs.clone(),
                argv: spec.argv.clone(),
                env,
                cwd: spec.cwd.clone(),
                uid: spec.user.uid,
                gid: spec.user.gid,
                groups: spec.user.additional_gids.clone(),
                hostname: spec.hostname.clone(),
                new_network: spec.network == Network::None,
                personality,
                proc_dir,
                dev_dir,
                sys_dir,
                mounts,
                privileged,
                seccomp: seccomp.map(<[u8]>::to_vec),
                shm_size: spec.shm_size,
            }
        });
    stubs.seal();
    let result = prepared.and_then(|helper_spec| supervise(exec, &helper_spec, cancel, output));
    stubs.clean();
    drop(generated);
    result
}

type Prepared = (PathBuf, PathBuf, PathBuf, Vec<HelperMount>);

fn prepare(spec: &RunSpec, generated: &Generated, stubs: &mut Stubs) -> Result<Prepared> {
    let root = &spec.rootfs;
    let proc_dir = mount_point(stubs, root, "/proc", Kind::Dir)?;
    let dev_dir = mount_point(stubs, root, "/dev", Kind::Dir)?;
    let sys_dir = mount_point(stubs, root, "/sys", Kind::Dir)?;
    let mut mounts = Vec::new();
    for (source, target) in [
        (&generated.hosts, "/etc/hosts"),
        (&generated.resolv_conf, "/etc/resolv.conf"),
        (&generated.hostname, "/etc/hostname"),
    ] {
        let target = mount_point(stubs, root, target, Kind::File)?;
        mounts.push(HelperMount::Bind {
            source: source.clone(),
            target,
            readonly: true,
        });
    }
    for m in &spec.mounts {
        match m {
            MountSpec::Bind {
                source,
                target,
                readonly,
            } => {
                let meta =
                    std::fs::metadata(source).map_err(io_err("read the mount source", source))?;
                let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
                let target = mount_point(stubs, root, target, kind)?;
                mounts.push(HelperMount::Bind {
                    source: source.clone(),
                    target,
                    readonly: *readonly,
                });
            }
            MountSpec::Tmpfs { target, size } => {
                let target = mount_point(stubs, root, target, Kind::Dir)?;
                mounts.push(HelperMount::Tmpfs {
                    target,
                    size: *size,
                });
            }
        }
    }
    Ok((proc_dir, dev_dir, sys_dir, mounts))
}

/// One readable pipe of the helper.
struct Source {
    file: File,
    stream: Option<Stream>,
    open: bool,
}

fn supervise(
    exec: &Executor,
    spec: &HelperSpec,
    cancel: &Cancel,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<ExitStatus> {
    let (mut child, mut sources) = spawn_helper(exec, spec)?;
    let (statuses, killed) = pump(exec, &mut child, &mut sources, cancel, output)?;
    let waited = child.wait();
    // Also when the helper died first: a terminal's Ctrl-C reaches it
    // before the caller's handler sets the flag.
    if killed || cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    outcome(exec, spec, &statuses, waited)
}

/// Starts the sandbox helper with the status pipe at [`STATUS_FD`], writes
/// `spec` to its standard input and returns its readable pipes (stdout,
/// stderr, status).
fn spawn_helper(exec: &Executor, spec: &HelperSpec) -> Result<(std::process::Child, Vec<Source>)> {
    let (status_r, status_w): (OwnedFd, OwnedFd) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Error::Io {
            action: "create the status pipe for",
            path: exec.program.clone(),
            source: e.into(),
        })?;
    let mut cmd = Command::new(&exec.program);
    cmd.args(&exec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let raw = status_w.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if raw == STATUS_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, STATUS_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The step must not outlive the thread that runs it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: exec.program.clone(),
        source,
    })?;
    drop(status_w);
    let json = serde_json::to_vec(spec).map_err(Error::EncodeSpec)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that died early shows up below as a missing status.
        let _ = stdin.write_all(&json);
    }
    let mut sources = Vec::new();
    if let Some(out) = child.stdout.take() {
        sources.push(Source {
            file: File::from(OwnedFd::from(out)),
            stream: Some(Stream::Stdout),
            open: true,
        });
    }
    if let Some(err) = child.stderr.take() {
        sources.push(Source {
            file: File::from(OwnedFd::from(err)),
            stream: Some(Stream::Stderr),
            open: true,
        });
    }
    sources.push(Source {
        file: File::from(status_r),
        stream: None,
        open: true,
    });

    Ok((child, sources))
}

/// Reads the helper's pipes until all are closed: output goes to
/// `output`, status lines are collected; a cancel kills the step's init and
/// the helper. Returns the statuses and whether it killed them.
fn pump(
    exec: &Executor,
    child: &mut std::process::Child,
    sources: &mut [Source],
    cancel: &Cancel,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<(Vec<Status>, bool)> {
    let mut status_buf: Vec<u8> = Vec::new();
    let mut statuses: Vec<Status> = Vec::new();
    let mut init_pid: Option<i32> = None;
    let mut killed = false;
    let mut buf = vec![0u8; 64 * 1024];
    while sources.iter().any(|s| s.open) {
        if cancel.is_cancelled() && !killed {
            killed = true;
            if let Some(pid) = init_pid {
                // SAFETY: kill with plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.kill();
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .filter(|s| s.open)
            .map(|s| libc::pollfd {
                fd: s.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, CANCEL_POLL_MS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io {
                action: "wait for the output of",
                path: exec.program.clone(),
                source: e,
            });
        }
        for pfd in fds.iter().filter(|p| p.revents != 0) {
            let Some(source) = sources
                .iter_mut()
                .find(|s| s.open && s.file.as_raw_fd() == pfd.fd)
            else {
                continue;
            };
            match source.file.read(&mut buf) {
                Ok(0) => source.open = false,
                Ok(n) => match source.stream {
                    Some(stream) => output(stream, &buf[..n]),
                    None => {
                        status_buf.extend_from_slice(&buf[..n]);
                        while let Some(pos) = status_buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = status_buf.drain(..=pos).collect();
                            if let Ok(status) = serde_json::from_slice::<Status>(&line) {
                                if let Status::Init(pid) = status {
                                    init_pid = Some(pid);
                                    if killed {
                                        // SAFETY: kill with plain integers.
                                        unsafe { libc::kill(pid, libc::SIGKILL) };
                                    }
                                }
                                statuses.push(status);
                            }
                        }
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => source.open = false,
            }
        }
    }
    Ok((statuses, killed))
}

/// The step's exit status from the helper's statuses: a setup or exec
/// failure first, then how the command ended; a helper that reported
/// neither died.
fn outcome(
    exec: &Executor,
    spec: &HelperSpec,
    statuses: &[Status],
    waited: io::Result<std::process::ExitStatus>,
) -> Result<ExitStatus> {
    for s in statuses {
        match s {
            Status::Setup(m) => return Err(Error::Setup(m.clone())),
            Status::Exec(m) => {
                return Err(Error::Exec {
                    argv0: spec.argv.first().cloned().unwrap_or_default(),
                    message: m.clone(),
                })
            }
            _ => {}
        }
    }
    for s in statuses {
        match s {
            Status::Exited(c) => return Ok(ExitStatus::Code(*c)),
            Status::Signaled(sig) => return Ok(ExitStatus::Signal(*sig)),
            _ => {}
        }
    }
    let how = match waited {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    Err(Error::HelperDied {
        how,
        program: exec.program.clone(),
    })
}

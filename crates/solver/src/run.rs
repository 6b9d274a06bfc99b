//! RUN: the command line, environment, user and `--mount`s of a step, turned
//! into the executor's [`RunSpec`], and the host-side resources the mounts
//! need (cache directories with their sharing locks, secret files on a
//! private tmpfs-like directory, SSH agent sockets). Secrets never enter a
//! layer, the config, the cache key or a log: they live in a temporary
//! directory outside the root filesystem that is removed after the step.

use crate::options::{NetworkMode, SecretSource, SecretSpec, SshSpec};
use kbuild_dockerfile::graph::{run_form, RunForm};
use kbuild_dockerfile::instructions::{Command, Heredoc, Mount, Sharing};
use kbuild_worker::executor::{MountSpec, Network};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A RUN that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunSetupError(pub String);

/// The argv of a RUN, as the Dockerfile frontend resolves it
/// ([`run_form`]). A single heredoc starting with `#!` is run by BuildKit
/// as an executable file; until the solver executes the op graph (which
/// mounts that file), its body goes to the shell here.
pub fn argv(command: &Command, heredocs: &[Heredoc], shell: &[String]) -> Vec<String> {
    match run_form(command, heredocs, shell, "linux") {
        RunForm::Argv(argv) => argv,
        RunForm::Script { data, .. } => {
            let mut v = shell.to_vec();
            v.push(data);
            v
        }
    }
}

/// The environment of a RUN: the image's `Env` with the build args in scope
/// laid over it (the planner already dropped args that a later ENV of the
/// same name replaced, so the later of the two wins, as in BuildKit).
pub fn environment(env: &[String], args: &[(String, String)]) -> Vec<String> {
    let mut out = env.to_vec();
    for (k, v) in args {
        crate::config::set_env(&mut out, k, v);
    }
    out
}

/// `HOME` as runc (BuildKit's executor) sets it for a RUN whose environment
/// has none: the home directory of the user's `/etc/passwd` entry in the
/// root filesystem `root` (looked up by name, or by id for a numeric user;
/// an empty user is root), else `/`.
pub fn set_home(env: &mut Vec<String>, root: &Path, user: &str) {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return;
    }
    let name = user.split(':').next().unwrap_or_default();
    let name = if name.is_empty() { "0" } else { name };
    let passwd = crate::fsutil::resolve_in_root(root, "/etc/passwd", true)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let home = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 6)
        .find(|f| f[0] == name || (name.parse::<u32>().is_ok() && f[2] == name))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    env.push(format!("HOME={home}"));
}

/// The executor's network for a step: the step's `--network` unless it is
/// `default`, then the build's `--network`.
pub fn network(step: NetworkMode, build: NetworkMode) -> Network {
    use NetworkMode as N;
    match step {
        N::None => Network::None,
        N::Host => Network::Host,
        N::Default => match build {
            NetworkMode::None => Network::None,
            _ => Network::Host,
        },
    }
}

/// Host resources held while a RUN runs; dropping releases locks and removes secrets.
#[derive(Default)]
pub struct Resources {
    /// Extra mounts for the executor.
    pub mounts: Vec<MountSpec>,
    /// Extra environment (`env=` secrets, `SSH_AUTH_SOCK`); never logged.
    pub env: Vec<String>,
    /// Private directory for secrets; removed on drop.
    scratch: Option<tempfile::TempDir>,
    /// Held cache-mount locks (`sharing=locked`).
    _locks: Vec<File>,
}

/// Everything [`prepare`] needs besides the mounts.
pub struct Inputs<'a> {
    /// The context directory.
    pub context: Option<&'a Path>,
    /// Host roots (mounted merged directories) of the `from=` sources, in
    /// the order the step lists them.
    pub from_roots: &'a [PathBuf],
    /// Directory of persistent cache mounts.
    pub cache_dir: &'a Path,
    /// `--secret` values of the build.
    pub secrets: &'a [SecretSpec],
    /// `--ssh` values of the build.
    pub ssh: &'a [SshSpec],
    /// The step's working directory (relative targets resolve against it).
    pub workdir: &'a str,
}

fn abs_target(workdir: &str, t: &str) -> String {
    crate::fsutil::join_container(workdir, t)
}

fn safe_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Prepare the host side of a step's `--mount`s.
pub fn prepare(mounts: &[Mount], inp: &Inputs) -> Result<Resources, RunSetupError> {
    let mut res = Resources::default();
    let mut from_iter = inp.from_roots.iter();
    let mut ssh_n = 0;
    for m in mounts {
        match m {
            Mount::Bind(b) => {
                let target = abs_target(inp.workdir, &b.target);
                let base = match &b.from {
                    Some(_) => from_iter
                        .next()
                        .cloned()
                        .ok_or_else(|| RunSetupError(format!("--mount from={:?}: source not available", b.from)))?,
                    None => inp
                        .context
                        .map(Path::to_path_buf)
                        .ok_or_else(|| RunSetupError("--mount=type=bind needs a build context (the Dockerfile came from stdin)".into()))?,
                };
                let src =
                    crate::fsutil::resolve_in_root(&base, b.source.as_deref().unwrap_or("/"), true)
                        .map_err(|e| RunSetupError(format!("--mount source: {e}")))?;
                if !src.exists() {
                    return Err(RunSetupError(format!(
                        "--mount=type=bind source {:?} does not exist",
                        b.source.as_deref().unwrap_or("/")
                    )));
                }
                // rw binds get a throwaway copy, so the context or the
                // source stage never changes (BuildKit discards the writes).
                let source = if b.read_write {
                    let scratch = scratch(&mut res)?;
                    let copy = scratch.join(format!("bind-{}", res.mounts.len()));
                    copy_tree(&src, &copy)?;
                    copy
                } else {
                    src
                };
                res.mounts.push(MountSpec::Bind {
                    source,
                    target,
                    readonly: !b.read_write,
                });
            }
            Mount::Cache(c) => {
                let target = abs_target(inp.workdir, &c.target);
                let id = c.id.clone().unwrap_or_else(|| target.clone());
                let base = inp.cache_dir.join(safe_id(&id));
                let dir = match c.sharing {
                    Sharing::Shared | Sharing::Locked => base.clone(),
                    Sharing::Private => private_cache_dir(&base, &mut res)?,
                };
                if !dir.exists() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| RunSetupError(format!("cache mount {id}: {e}")))?;
                    std::fs::set_permissions(
                        &dir,
                        std::fs::Permissions::from_mode(c.mode.unwrap_or(0o755)),
                    )
                    .map_err(|e| RunSetupError(format!("cache mount {id}: {e}")))?;
                    std::os::unix::fs::chown(
                        &dir,
                        Some(c.uid.unwrap_or(0)),
                        Some(c.gid.unwrap_or(0)),
                    )
                    .map_err(|e| RunSetupError(format!("cache mount {id}: {e}")))?;
                }
                if c.sharing == Sharing::Locked {
                    let f = lock_file(&base.with_extension("lock"), true)?;
                    res._locks.push(f);
                }
                res.mounts.push(MountSpec::Bind {
                    source: dir,
                    target,
                    readonly: c.read_only,
                });
            }
            Mount::Tmpfs(t) => res.mounts.push(MountSpec::Tmpfs {
                target: abs_target(inp.workdir, &t.target),
                size: t.size,
            }),
            Mount::Secret(s) => {
                let id =
                    s.id.clone()
                        .or_else(|| {
                            s.target
                                .as_ref()
                                .and_then(|t| t.rsplit('/').next().map(String::from))
                        })
                        .unwrap_or_default();
                let spec = inp.secrets.iter().find(|x| x.id == id);
                let value = match spec {
                    Some(SecretSpec {
                        source: SecretSource::File(p),
                        ..
                    }) => Some(std::fs::read(p).map_err(|e| {
                        RunSetupError(format!("secret {id}: cannot read {}: {e}", p.display()))
                    })?),
                    Some(SecretSpec {
                        source: SecretSource::Env(v),
                        ..
                    }) => std::env::var_os(v).map(|v| v.into_encoded_bytes()),
                    Some(SecretSpec {
                        source: SecretSource::Provided(p),
                        ..
                    }) => {
                        p.0.secret(&id)
                            .map_err(|e| RunSetupError(format!("secret {id}: {e}")))?
                    }
                    None => None,
                };
                let Some(value) = value else {
                    if s.required {
                        return Err(RunSetupError(format!(
                            "secret {id} is required but was not given; pass --secret id={id},src=FILE"
                        )));
                    }
                    continue;
                };
                if let Some(var) = &s.env {
                    res.env
                        .push(format!("{var}={}", String::from_utf8_lossy(&value)));
                    if s.target.is_none() {
                        continue;
                    }
                }
                let scratch = scratch(&mut res)?;
                let file = scratch.join(format!("secret-{}", res.mounts.len()));
                std::fs::write(&file, &value)
                    .map_err(|e| RunSetupError(format!("secret {id}: {e}")))?;
                std::fs::set_permissions(
                    &file,
                    std::fs::Permissions::from_mode(s.mode.unwrap_or(0o400)),
                )
                .map_err(|e| RunSetupError(format!("secret {id}: {e}")))?;
                std::os::unix::fs::chown(&file, Some(s.uid.unwrap_or(0)), Some(s.gid.unwrap_or(0)))
                    .map_err(|e| RunSetupError(format!("secret {id}: {e}")))?;
                let target = s
                    .target
                    .as_ref()
                    .map(|t| abs_target(inp.workdir, t))
                    .unwrap_or_else(|| format!("/run/secrets/{id}"));
                res.mounts.push(MountSpec::Bind {
                    source: file,
                    target,
                    readonly: true,
                });
            }
            Mount::Ssh(s) => {
                let id = s.id.clone().unwrap_or_else(|| "default".to_string());
                let sock = inp.ssh.iter().find(|x| x.id == id).and_then(|x| {
                    x.paths
                        .first()
                        .cloned()
                        .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
                });
                let Some(sock) = sock else {
                    if s.required {
                        return Err(RunSetupError(format!(
                            "ssh agent {id} is required but was not given; pass --ssh {id}[=SOCKET]"
                        )));
                    }
                    continue;
                };
                ssh_n += 1;
                let target = s
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", ssh_n - 1));
                if ssh_n == 1 {
                    res.env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                res.mounts.push(MountSpec::Bind {
                    source: sock,
                    target,
                    readonly: false,
                });
            }
        }
    }
    Ok(res)
}

fn scratch(res: &mut Resources) -> Result<PathBuf, RunSetupError> {
    if res.scratch.is_none() {
        let d = tempfile::Builder::new()
            .prefix("kbuild-run-")
            .tempdir()
            .map_err(|e| RunSetupError(format!("temporary directory: {e}")))?;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RunSetupError(format!("temporary directory: {e}")))?;
        res.scratch = Some(d);
    }
    Ok(res
        .scratch
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_default())
}

fn lock_file(path: &Path, wait: bool) -> Result<File, RunSetupError> {
    use kbuild_image::lock::{FileLock, LockMode};
    let err = |e: std::io::Error| RunSetupError(format!("cache lock {}: {e}", path.display()));
    let lock = if wait {
        Some(FileLock::acquire(path, LockMode::Exclusive).map_err(err)?)
    } else {
        FileLock::try_acquire(path, LockMode::Exclusive).map_err(err)?
    };
    // The open file keeps the lock until the step's resources are dropped.
    lock.map(|l| l.into_parts().0).ok_or_else(|| {
        RunSetupError(format!(
            "cache lock {}: held by another build",
            path.display()
        ))
    })
}

/// `sharing=private`: the first free of `DIR`, `DIR.1`, `DIR.2`, ... (each held locked).
fn private_cache_dir(base: &Path, res: &mut Resources) -> Result<PathBuf, RunSetupError> {
    for n in 0..64 {
        let dir = if n == 0 {
            base.to_path_buf()
        } else {
            base.with_extension(n.to_string())
        };
        if let Ok(f) = lock_file(&dir.with_extension(format!("{n}.private-lock")), false) {
            res._locks.push(f);
            return Ok(dir);
        }
    }
    Err(RunSetupError(format!(
        "cache mount {}: too many concurrent private users",
        base.display()
    )))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RunSetupError> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| RunSetupError(format!("copy {}: {e}", from.display())))?;
    if !st.success() {
        return Err(RunSetupError(format!(
            "copy {} for a read-write bind mount failed",
            from.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_form_with_heredoc_runs_through_the_shell() {
        let h = Heredoc {
            name: "EOF".into(),
            content: "echo hi\n".into(),
            expand: true,
            chomp: false,
            file_descriptor: 0,
        };
        let v = argv(
            &Command::Shell("sh <<EOF".into()),
            &[h],
            &["/bin/sh".into(), "-c".into()],
        );
        assert_eq!(v, vec!["/bin/sh", "-c", "sh <<EOF\necho hi\nEOF"]);
        let v = argv(
            &Command::Exec(vec!["a".into()]),
            &[],
            &["/bin/sh".into(), "-c".into()],
        );
        assert_eq!(v, vec!["a"]);
    }

    #[test]
    fn a_lone_heredoc_is_the_script() {
        let sh = ["/bin/sh".to_string(), "-c".to_string()];
        let h = |name: &str| Heredoc {
            name: name.into(),
            content: "echo one\necho two\n".into(),
            expand: true,
            chomp: false,
            file_descriptor: 0,
        };
        for cmd in [
            "<<EOF",
            "<<-EOF",
            "<< EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "0<<EOF",
        ] {
            assert_eq!(
                argv(&Command::Shell(cmd.into()), &[h("EOF")], &sh),
                vec!["/bin/sh", "-c", "echo one\necho two\n"],
                "{cmd}"
            );
        }
        // With a command or another delimiter, the shell reads the heredoc.
        for cmd in ["cat <<EOF", "<<EOF cat", "<<END"] {
            let v = argv(&Command::Shell(cmd.into()), &[h("EOF")], &sh);
            assert!(
                v[2].starts_with(cmd) && v[2].ends_with("\nEOF"),
                "{cmd}: {v:?}"
            );
        }
    }

    #[test]
    fn home_from_passwd_as_runc() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        let home = |user: &str, env: &[&str]| {
            let mut env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
            set_home(&mut env, t.path(), user);
            env.into_iter().find(|e| e.starts_with("HOME="))
        };
        assert_eq!(home("", &[]).as_deref(), Some("HOME=/root"));
        assert_eq!(home("nobody", &[]).as_deref(), Some("HOME=/nonexistent"));
        assert_eq!(home("65534:0", &[]).as_deref(), Some("HOME=/nonexistent"));
        assert_eq!(home("1234:5678", &[]).as_deref(), Some("HOME=/"));
        assert_eq!(home("", &["HOME=/x"]).as_deref(), Some("HOME=/x"));
        let empty = tempfile::tempdir().unwrap();
        let mut env = Vec::new();
        set_home(&mut env, empty.path(), "");
        assert_eq!(env, vec!["HOME=/"]);
    }

    #[test]
    fn args_are_laid_over_env() {
        let e = environment(
            &["PATH=/bin".into(), "A=env".into()],
            &[("A".into(), "arg".into()), ("B".into(), "b".into())],
        );
        assert_eq!(e, vec!["PATH=/bin", "A=arg", "B=b"]);
    }

    #[test]
    fn secrets_and_tmpfs_and_cache() {
        let t = tempfile::tempdir().unwrap();
        let sfile = t.path().join("tok");
        std::fs::write(&sfile, "s3cr3t").unwrap();
        let secrets = vec![SecretSpec {
            id: "tok".into(),
            source: SecretSource::File(sfile),
        }];
        let mounts = vec![
            Mount::Secret(kbuild_dockerfile::instructions::SecretMount {
                id: Some("tok".into()),
                target: None,
                env: None,
                required: true,
                mode: None,
                uid: None,
                gid: None,
            }),
            Mount::Tmpfs(kbuild_dockerfile::instructions::TmpfsMount {
                target: "/tmp/x".into(),
                size: Some(1 << 20),
            }),
        ];
        let inp = Inputs {
            context: None,
            from_roots: &[],
            cache_dir: t.path(),
            secrets: &secrets,
            ssh: &[],
            workdir: "/",
        };
        let res = prepare(&mounts, &inp).unwrap();
        assert_eq!(res.mounts.len(), 2);
        let MountSpec::Bind {
            source,
            target,
            readonly,
        } = &res.mounts[0]
        else {
            panic!()
        };
        assert_eq!(target, "/run/secrets/tok");
        assert!(readonly);
        assert_eq!(std::fs::read_to_string(source).unwrap(), "s3cr3t");
        let src = source.clone();
        drop(res);
        assert!(!src.exists(), "secret file removed after the step");
        let missing = vec![Mount::Secret(
            kbuild_dockerfile::instructions::SecretMount {
                id: Some("nope".into()),
                target: None,
                env: None,
                required: true,
                mode: None,
                uid: None,
                gid: None,
            },
        )];
        assert!(prepare(&missing, &inp).is_err());
    }
}

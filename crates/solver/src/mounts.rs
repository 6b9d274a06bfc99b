//! The host side of an exec op: its `mounts` (cache directories with their
//! sharing locks, secret files on a private directory, SSH agent sockets,
//! bind mounts of input states and the context), `HOME` and the network.
//! Secrets never enter a layer, the config, the cache key or a log: they
//! live in a temporary directory outside the root filesystem that is
//! removed after the op.

use crate::options::{NetworkMode, SecretSource, SecretSpec, SshSpec};
use kbuild_dockerfile::graph::{ExecMount, Sharing};
use kbuild_worker::executor::{MountSpec, Network};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An exec op whose mounts cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RunSetupError {
    /// A bind mount's input is not there.
    #[error("--mount source {0} is not available")]
    NoInput(usize),
    /// A bind mount's source path does not exist in its input.
    #[error("--mount=type=bind source {0:?} does not exist")]
    NoSource(String),
    /// A required secret was not given.
    #[error("secret {0} is required but was not given; pass --secret id={0},src=FILE")]
    SecretMissing(String),
    /// A required SSH agent was not given.
    #[error("ssh agent {0} is required but was not given; pass --ssh {0}[=SOCKET]")]
    SshMissing(String),
    /// The client serving the build's secrets could not give this one.
    #[error("secret {id}: {source}")]
    SecretUnavailable {
        /// The secret's id.
        id: String,
        /// The provider's error (on a daemon: the session's, or the
        /// client's answer).
        #[source]
        source: crate::options::SecretError,
    },
    /// Every private cache directory is taken.
    #[error("cache mount {}: too many concurrent private users", .0.display())]
    PrivateCaches(PathBuf),
    /// A cache lock is held by another build.
    #[error("cache lock {}: held by another build", .0.display())]
    LockHeld(PathBuf),
    /// Copying a read-write bind's source failed.
    #[error("copy {} for a read-write bind mount failed", .0.display())]
    CopyFailed(PathBuf),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`secret tok`, `cache mount /go`).
        what: String,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> RunSetupError {
    let what = what.into();
    let path = path.to_path_buf();
    move |source| RunSetupError::Io { what, path, source }
}

/// `HOME` as runc (BuildKit's executor) sets it for a RUN whose environment
/// has none: the home directory of the user's `/etc/passwd` entry in the
/// root filesystem `root` (looked up by name, or by id for a numeric user;
/// an empty user is root), else `/`.
pub fn set_home(env: &mut Vec<String>, root: &Path, user: &str) {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return;
    }
    let home = crate::users::home_dir(root, user).unwrap_or_else(|| "/".to_string());
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

/// Host resources held while an exec op runs; dropping releases locks and removes secrets.
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
    /// The host root of each op input a mount may name (`None` for the
    /// parent and for inputs no mount reads): a mounted state or the
    /// context directory.
    pub roots: &'a [Option<PathBuf>],
    /// Directory of persistent cache mounts.
    pub cache_dir: &'a Path,
    /// `--secret` values of the build.
    pub secrets: &'a [SecretSpec],
    /// `--ssh` values of the build.
    pub ssh: &'a [SshSpec],
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

/// Prepare the host side of an exec op's mounts.
pub fn prepare(mounts: &[ExecMount], inp: &Inputs) -> Result<Resources, RunSetupError> {
    let mut res = Resources::default();
    let mut ssh_sockets = 0;
    for m in mounts {
        match m {
            ExecMount::Bind {
                target,
                input,
                source,
                readonly,
            } => bind(&mut res, inp, target, *input, source, *readonly)?,
            ExecMount::Cache {
                target,
                id,
                sharing,
                input,
                source,
                readonly,
                mode,
                uid,
                gid,
            } => {
                let from = input.map(|i| (i, source.as_deref().unwrap_or("/")));
                let dir = cache_dir(&mut res, inp, id, *sharing, from, (*mode, *uid, *gid))?;
                res.mounts.push(MountSpec::Bind {
                    source: dir,
                    target: target.clone(),
                    readonly: *readonly,
                });
            }
            ExecMount::Tmpfs { target, size } => res.mounts.push(MountSpec::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            ExecMount::Secret {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            } => secret(
                &mut res,
                inp,
                id,
                target.as_deref(),
                env.as_deref(),
                *required,
                (*mode, *uid, *gid),
            )?,
            ExecMount::Ssh {
                id,
                target,
                required,
                ..
            } => {
                if ssh(&mut res, inp, id, target, *required, ssh_sockets == 0)? {
                    ssh_sockets += 1;
                }
            }
        }
    }
    Ok(res)
}

/// The host directory of cache mount `id` (created with `mode` and owner
/// `uid:gid` when new, as a copy of `from`'s files when given), held
/// locked as its `sharing` says.
fn cache_dir(
    res: &mut Resources,
    inp: &Inputs,
    id: &str,
    sharing: Sharing,
    from: Option<(usize, &str)>,
    (mode, uid, gid): (u32, u32, u32),
) -> Result<PathBuf, RunSetupError> {
    let base = inp.cache_dir.join(safe_id(id));
    let dir = match sharing {
        Sharing::Shared | Sharing::Locked => base.clone(),
        Sharing::Private => private_cache_dir(&base, res)?,
    };
    if !dir.exists() {
        let err = || io(format!("cache mount {id}"), &dir);
        std::fs::create_dir_all(&dir).map_err(err())?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(err())?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(err())?;
        // `from=`: a new cache starts as a copy of that input's files.
        if let Some((input, source)) = from {
            seed(inp, input, source, &dir)?;
        }
    }
    if sharing == Sharing::Locked {
        let f = lock_file(&base.with_extension("lock"), true)?;
        res._locks.push(f);
    }
    Ok(dir)
}

/// Mounts the SSH agent socket `id` at `target` (the first one mounted is
/// also `SSH_AUTH_SOCK`); whether there was one to mount.
fn ssh(
    res: &mut Resources,
    inp: &Inputs,
    id: &str,
    target: &str,
    required: bool,
    first: bool,
) -> Result<bool, RunSetupError> {
    let sock = inp.ssh.iter().find(|x| x.id == id).and_then(|x| {
        x.paths
            .first()
            .cloned()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
    });
    let Some(sock) = sock else {
        if required {
            return Err(RunSetupError::SshMissing(id.to_string()));
        }
        return Ok(false);
    };
    if first {
        res.env.push(format!("SSH_AUTH_SOCK={target}"));
    }
    res.mounts.push(MountSpec::Bind {
        source: sock,
        target: target.to_string(),
        readonly: false,
    });
    Ok(true)
}

fn bind(
    res: &mut Resources,
    inp: &Inputs,
    target: &str,
    input: usize,
    source: &str,
    readonly: bool,
) -> Result<(), RunSetupError> {
    let src = input_path(inp, input, source)?;
    if !src.exists() {
        return Err(RunSetupError::NoSource(source.to_string()));
    }
    // rw binds get a throwaway copy, so the context or the source state
    // never changes (BuildKit discards the writes).
    let source = if readonly {
        src
    } else {
        let scratch = scratch(res)?;
        let copy = scratch.join(format!("bind-{}", res.mounts.len()));
        copy_tree(&src, &copy)?;
        copy
    };
    res.mounts.push(MountSpec::Bind {
        source,
        target: target.to_string(),
        readonly,
    });
    Ok(())
}

/// `source` inside the root of input `input`, resolved as that root's
/// symlinks say (never leaving it).
fn input_path(inp: &Inputs, input: usize, source: &str) -> Result<PathBuf, RunSetupError> {
    let base = inp
        .roots
        .get(input)
        .cloned()
        .flatten()
        .ok_or(RunSetupError::NoInput(input))?;
    // A host path, not a descriptor: the sandbox helper bind-mounts it
    // later, in its own process, and `cp` seeds caches from it.
    crate::fsutil::resolve_in_root(&base, source, true).map_err(io("--mount source", &base))
}

/// Copy the files under `source` in input `input` into the new cache `dir`.
fn seed(inp: &Inputs, input: usize, source: &str, dir: &Path) -> Result<(), RunSetupError> {
    let src = input_path(inp, input, source)?;
    if !src.is_dir() {
        return Err(RunSetupError::NoSource(source.to_string()));
    }
    copy_tree(&src.join("."), dir)
}

fn secret(
    res: &mut Resources,
    inp: &Inputs,
    id: &str,
    target: Option<&str>,
    env: Option<&str>,
    required: bool,
    (mode, uid, gid): (u32, u32, u32),
) -> Result<(), RunSetupError> {
    let value = match inp.secrets.iter().find(|x| x.id == id) {
        Some(SecretSpec {
            source: SecretSource::File(p),
            ..
        }) => Some(std::fs::read(p).map_err(io(format!("secret {id}: cannot read"), p))?),
        Some(SecretSpec {
            source: SecretSource::Env(v),
            ..
        }) => std::env::var_os(v).map(|v| v.into_encoded_bytes()),
        Some(SecretSpec {
            source: SecretSource::Provided(p),
            ..
        }) => {
            p.0.secret(id)
                .map_err(|source| RunSetupError::SecretUnavailable {
                    id: id.to_string(),
                    source,
                })?
        }
        None => None,
    };
    let Some(value) = value else {
        if required {
            return Err(RunSetupError::SecretMissing(id.to_string()));
        }
        return Ok(());
    };
    if let Some(var) = env {
        res.env
            .push(format!("{var}={}", String::from_utf8_lossy(&value)));
    }
    let Some(target) = target else {
        return Ok(());
    };
    let scratch = scratch(res)?;
    let file = scratch.join(format!("secret-{}", res.mounts.len()));
    let err = || io(format!("secret {id}"), &file);
    std::fs::write(&file, &value).map_err(err())?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(err())?;
    std::os::unix::fs::chown(&file, Some(uid), Some(gid)).map_err(err())?;
    res.mounts.push(MountSpec::Bind {
        source: file,
        target: target.to_string(),
        readonly: true,
    });
    Ok(())
}

fn scratch(res: &mut Resources) -> Result<PathBuf, RunSetupError> {
    if res.scratch.is_none() {
        let tmp = std::env::temp_dir();
        let d = tempfile::Builder::new()
            .prefix("kbuild-run-")
            .tempdir()
            .map_err(io("temporary directory in", &tmp))?;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(io("temporary directory", d.path()))?;
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
    let lock = if wait {
        Some(FileLock::acquire(path, LockMode::Exclusive).map_err(io("cache lock", path))?)
    } else {
        FileLock::try_acquire(path, LockMode::Exclusive).map_err(io("cache lock", path))?
    };
    // The open file keeps the lock until the op's resources are dropped.
    lock.map(|l| l.into_parts().0)
        .ok_or_else(|| RunSetupError::LockHeld(path.to_path_buf()))
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
    Err(RunSetupError::PrivateCaches(base.to_path_buf()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RunSetupError> {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(io("copy", from))?;
    if !st.success() {
        return Err(RunSetupError::CopyFailed(from.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A provider whose answer failed with an I/O error.
    struct Unreadable;

    impl crate::options::ProvideSecret for Unreadable {
        fn secret(&self, _: &str) -> Result<Option<Vec<u8>>, crate::options::SecretError> {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied).into())
        }
    }

    #[test]
    fn a_provider_error_is_the_source() {
        let t = tempfile::tempdir().unwrap();
        let secrets = vec![SecretSpec {
            id: "tok".into(),
            source: SecretSource::Provided(crate::options::SecretProvider(std::sync::Arc::new(
                Unreadable,
            ))),
        }];
        let inp = Inputs {
            roots: &[],
            cache_dir: t.path(),
            secrets: &secrets,
            ssh: &[],
        };
        let mount = ExecMount::Secret {
            id: "tok".into(),
            target: Some("/run/secrets/tok".into()),
            env: None,
            required: true,
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        let Err(e) = prepare(&[mount], &inp) else {
            panic!("a failed provider gave a secret")
        };
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(e.to_string(), format!("secret tok: {denied}"));
        let source = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(source, Some(std::io::ErrorKind::PermissionDenied));
    }

    #[test]
    fn secrets_and_tmpfs_and_binds() {
        let t = tempfile::tempdir().unwrap();
        let sfile = t.path().join("tok");
        std::fs::write(&sfile, "s3cr3t").unwrap();
        std::fs::create_dir(t.path().join("ctx")).unwrap();
        std::fs::write(t.path().join("ctx/a"), "a").unwrap();
        let secrets = vec![SecretSpec {
            id: "tok".into(),
            source: SecretSource::File(sfile),
        }];
        let secret = |id: &str| ExecMount::Secret {
            id: id.into(),
            target: Some(format!("/run/secrets/{id}")),
            env: None,
            required: true,
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        let mounts = vec![
            secret("tok"),
            ExecMount::Tmpfs {
                target: "/tmp/x".into(),
                size: Some(1 << 20),
            },
            ExecMount::Bind {
                target: "/src".into(),
                input: 1,
                source: "/a".into(),
                readonly: true,
            },
        ];
        let roots = [None, Some(t.path().join("ctx"))];
        let inp = Inputs {
            roots: &roots,
            cache_dir: t.path(),
            secrets: &secrets,
            ssh: &[],
        };
        let res = prepare(&mounts, &inp).unwrap();
        assert_eq!(res.mounts.len(), 3);
        let MountSpec::Bind {
            source,
            target,
            readonly,
        } = &res.mounts[0]
        else {
            panic!("{:?}", res.mounts[0])
        };
        assert_eq!(target, "/run/secrets/tok");
        assert!(readonly);
        assert_eq!(std::fs::read_to_string(source).unwrap(), "s3cr3t");
        assert!(
            matches!(&res.mounts[2], MountSpec::Bind { source, .. } if *source == t.path().join("ctx/a"))
        );
        let src = source.clone();
        drop(res);
        assert!(!src.exists(), "secret file removed after the op");
        assert!(matches!(
            prepare(&[secret("nope")], &inp),
            Err(RunSetupError::SecretMissing(id)) if id == "nope"
        ));
        // A new cache with from= starts as a copy of the input's files; a
        // cache that exists keeps its own.
        let cache = ExecMount::Cache {
            target: "/cache".into(),
            id: "seeded".into(),
            sharing: Sharing::Shared,
            input: Some(1),
            source: Some("/".into()),
            readonly: false,
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        prepare(std::slice::from_ref(&cache), &inp).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("seeded/a")).unwrap(),
            "a"
        );
        std::fs::write(t.path().join("seeded/a"), "kept").unwrap();
        prepare(&[cache], &inp).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("seeded/a")).unwrap(),
            "kept"
        );
        let bad_input = ExecMount::Bind {
            target: "/x".into(),
            input: 0,
            source: "/".into(),
            readonly: true,
        };
        assert!(matches!(
            prepare(&[bad_input], &inp),
            Err(RunSetupError::NoInput(0))
        ));
    }
}

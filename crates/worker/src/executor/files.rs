//! The step's files on the host side: paths resolved inside the root
//! filesystem, mount points created for the step and removed after it, and
//! the generated `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Timespec, Timestamps};

/// What kind of mount point a target needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

fn times(m: &fs::Metadata) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    }
}

fn same_mtime(a: &Timestamps, b: &Timestamps) -> bool {
    a.last_modification.tv_sec == b.last_modification.tv_sec
        && a.last_modification.tv_nsec == b.last_modification.tv_nsec
}

/// A directory a stub was created in, with its times before and after.
struct Parent {
    dir: PathBuf,
    before: Timestamps,
    after: Option<Timestamps>,
}

/// Mount points created for one step, removed by [`Stubs::clean`].
#[derive(Default)]
pub(crate) struct Stubs {
    created: Vec<PathBuf>,
    parents: Vec<Parent>,
}

impl Stubs {
    /// Makes sure `host_path` (already resolved inside `root`) exists as a
    /// `kind`, creating it and missing parents (recorded for removal).
    pub fn ensure(&mut self, root: &Path, host_path: &Path, kind: Kind) -> io::Result<()> {
        if fs::symlink_metadata(host_path).is_ok() {
            return Ok(());
        }
        let rel = host_path.strip_prefix(root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path leaves the root filesystem",
            )
        })?;
        let comps: Vec<_> = rel.components().collect();
        let mut here = root.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            let next = here.join(c);
            let last = i + 1 == comps.len();
            if fs::symlink_metadata(&next).is_err() {
                if !self.created.iter().any(|p| p == &here)
                    && !self.parents.iter().any(|p| p.dir == here)
                {
                    let m = fs::metadata(&here)?;
                    self.parents.push(Parent {
                        dir: here.clone(),
                        before: times(&m),
                        after: None,
                    });
                }
                if last && kind == Kind::File {
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&next)?;
                } else {
                    fs::DirBuilder::new().mode(0o755).create(&next)?;
                }
                self.created.push(next.clone());
            }
            here = next;
        }
        Ok(())
    }

    /// Records the directories' times once all stubs exist, so
    /// [`Stubs::clean`] can tell whether the step changed them.
    pub fn seal(&mut self) {
        for p in &mut self.parents {
            p.after = fs::metadata(&p.dir).ok().map(|m| times(&m));
        }
    }

    /// Removes the stubs that are still empty (deepest first) and puts back
    /// the times of the directories they were made in when the step left
    /// those directories alone. Best effort: a stub the step filled is a
    /// real change and stays.
    pub fn clean(self) {
        let untouched: Vec<bool> = self
            .parents
            .iter()
            .map(|p| match (&p.after, fs::metadata(&p.dir)) {
                (Some(after), Ok(now)) => same_mtime(after, &times(&now)),
                _ => false,
            })
            .collect();
        let mut kept: Vec<&PathBuf> = Vec::new();
        for path in self.created.iter().rev() {
            let removed = match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir(path).is_ok(),
                Ok(m) if m.is_file() && m.len() == 0 => fs::remove_file(path).is_ok(),
                _ => false,
            };
            if !removed {
                kept.push(path);
            }
        }
        for (p, untouched) in self.parents.iter().zip(untouched) {
            let child_kept = kept.iter().any(|k| k.parent() == Some(p.dir.as_path()));
            if untouched && !child_kept {
                let _ = rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &p.dir,
                    &p.before,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                );
            }
        }
    }
}

/// The generated `/etc` files of one step, in a private temp directory.
pub(crate) struct Generated {
    _dir: tempfile::TempDir,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// `/etc/hosts` as BuildKit writes it: localhost with the hostname, the
/// IPv6 loopback names, then the extra entries in order.
pub(crate) fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut s =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in extra {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    io::Write::write_all(&mut f, data)
}

impl Generated {
    pub fn new(hostname: &str, extra: &[(String, String)]) -> io::Result<Generated> {
        let dir = tempfile::Builder::new().prefix("kbuild-etc-").tempdir()?;
        let hosts = dir.path().join("hosts");
        let resolv_conf = dir.path().join("resolv.conf");
        let hostname_file = dir.path().join("hostname");
        write_private(&hosts, hosts_file(hostname, extra).as_bytes())?;
        let resolv = match fs::read("/etc/resolv.conf") {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        write_private(&resolv_conf, &resolv)?;
        write_private(&hostname_file, format!("{hostname}\n").as_bytes())?;
        Ok(Generated {
            _dir: dir,
            hosts,
            resolv_conf,
            hostname: hostname_file,
        })
    }
}

/// Whether `s` is usable as a hostname (what `sethostname` accepts and
/// `/etc/hosts` can hold).
pub(crate) fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Whether `s` can go into `/etc/hosts` as a name or address.
pub(crate) fn valid_hosts_word(s: &str) -> bool {
    !s.is_empty()
        && !Path::new(s)
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| b.is_ascii_whitespace() || *b == b'#' || b.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_leave_no_trace() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("etc")).unwrap();
        let old = Timestamps {
            last_access: Timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: 2000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join("etc"),
            &old,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let mut stubs = Stubs::default();
        stubs
            .ensure(root, &root.join("etc/hosts"), Kind::File)
            .unwrap();
        stubs
            .ensure(root, &root.join("run/secrets/a"), Kind::File)
            .unwrap();
        stubs.seal();
        assert!(root.join("etc/hosts").is_file());
        stubs.clean();
        assert!(!root.join("etc/hosts").exists());
        assert!(!root.join("run").exists());
        assert_eq!(fs::metadata(root.join("etc")).unwrap().mtime(), 2000);
    }

    #[test]
    fn hosts_file_layout() {
        let h = hosts_file("box", &[("db".into(), "10.0.0.2".into())]);
        assert_eq!(
            h,
            "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tdb\n"
        );
    }
}

//! `git` source ops (`ADD https://host/repo.git#ref:subdir /dst`), with
//! the git program: the ref is resolved to a commit with `ls-remote`
//! first, so a step whose key is known is found in the cache without a
//! clone, as BuildKit does; the checkout is a shallow fetch of that one
//! commit (submodules included), without `.git` unless `--keep-git-dir`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A git checkout that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The git program could not be started.
    #[error("ADD of the git repository {remote} needs the git program on PATH: {source}")]
    NoGit {
        /// The repository.
        remote: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A git command failed.
    #[error("git {what} of {remote} failed: {stderr}")]
    Command {
        /// The repository.
        remote: String,
        /// `ls-remote`, `fetch`, `checkout`, ...
        what: &'static str,
        /// The last lines git printed.
        stderr: String,
    },
    /// The ref names nothing in the repository.
    #[error("git repository {remote} has no branch, tag or commit {reference:?}")]
    NoSuchRef {
        /// The repository.
        remote: String,
        /// The ref asked for.
        reference: String,
    },
    /// The commit is not what `--checksum` says.
    #[error("ADD {remote}: checksum mismatch: --checksum={want} but the commit is {got}")]
    Checksum {
        /// The repository.
        remote: String,
        /// `--checksum`.
        want: String,
        /// The commit checked out.
        got: String,
    },
    /// The subdirectory after `#ref:` is not in the checkout.
    #[error("git repository {remote} at {commit} has no directory {subdir:?}")]
    NoSubdir {
        /// The repository.
        remote: String,
        /// The commit.
        commit: String,
        /// The directory asked for.
        subdir: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One repository to check out: a `git` source op.
#[derive(Clone, Debug)]
pub struct Checkout {
    /// The repository URL.
    pub remote: String,
    /// The branch, tag or commit (the default branch when `None`).
    pub reference: Option<String>,
    /// The directory of the repository to use as the root.
    pub subdir: Option<String>,
    /// Keep `.git`.
    pub keep_git_dir: bool,
    /// The commit the ref must resolve to.
    pub checksum: Option<String>,
}

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Checkout {
    async fn git(
        &self,
        dir: Option<&Path>,
        what: &'static str,
        args: &[&str],
    ) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        if let Some(d) = dir {
            cmd.arg("-C").arg(d);
        }
        cmd.args(args)
            // Never wait for a password on a terminal; fail instead.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|source| GitError::NoGit {
            remote: self.remote.clone(),
            source,
        })?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(GitError::Command {
                remote: self.remote.clone(),
                what,
                stderr: tail[tail.len().saturating_sub(2)..].join("; "),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The commit the ref names, asked of the repository (`ls-remote`)
    /// without fetching anything; a full commit id is taken as it is.
    /// `None` when only a checkout can tell (an abbreviated commit).
    pub async fn resolve(&self) -> Result<Option<String>, GitError> {
        let commit = self.resolve_ref().await?;
        if let Some(c) = &commit {
            self.check(c)?;
        }
        Ok(commit)
    }

    /// `--checksum` against the commit.
    fn check(&self, got: &str) -> Result<(), GitError> {
        match &self.checksum {
            Some(want) if !want.eq_ignore_ascii_case(got) => Err(GitError::Checksum {
                remote: self.remote.clone(),
                want: want.clone(),
                got: got.to_string(),
            }),
            _ => Ok(()),
        }
    }

    async fn resolve_ref(&self) -> Result<Option<String>, GitError> {
        let wanted = self.reference.as_deref().unwrap_or("HEAD");
        if is_commit(wanted) {
            return Ok(Some(wanted.to_ascii_lowercase()));
        }
        let listing = self
            .git(
                None,
                "ls-remote",
                &["ls-remote", "--", &self.remote, wanted],
            )
            .await?;
        let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
        // A tag's commit (the peeled `^{}` line) wins over the tag object.
        let names = [
            wanted.to_string(),
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}^{{}}"),
            format!("refs/tags/{wanted}"),
        ];
        for name in &names {
            if let Some((commit, _)) = refs.iter().find(|(_, r)| r == name) {
                return Ok(Some(commit.to_string()));
            }
        }
        if wanted.len() >= 4 && wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        Err(GitError::NoSuchRef {
            remote: self.remote.clone(),
            reference: wanted.to_string(),
        })
    }

    /// Checks the repository out into a new temporary directory and
    /// returns it, the root to copy from (the subdirectory, if any) and
    /// the commit.
    pub async fn to_temp_dir(
        &self,
        commit: Option<&str>,
    ) -> Result<(tempfile::TempDir, PathBuf, String), GitError> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("kbuild-git-")
            .tempdir()
            .map_err(|source| GitError::Io { path: tmp, source })?;
        let d = dir.path();
        self.git(None, "init", &["init", "-q", &d.display().to_string()])
            .await?;
        self.git(
            Some(d),
            "remote add",
            &["remote", "add", "origin", "--", &self.remote],
        )
        .await?;
        let want = commit
            .map(str::to_string)
            .or_else(|| self.reference.clone())
            .unwrap_or_else(|| "HEAD".to_string());
        let shallow = self
            .git(
                Some(d),
                "fetch",
                &["fetch", "-q", "--depth=1", "--no-tags", "origin", &want],
            )
            .await;
        let target = match shallow {
            Ok(_) => "FETCH_HEAD".to_string(),
            // A server that does not serve commits by id (or an
            // abbreviated one): fetch everything and look it up.
            Err(first) => {
                if self
                    .git(Some(d), "fetch", &["fetch", "-q", "--tags", "origin"])
                    .await
                    .is_err()
                {
                    return Err(first);
                }
                want
            }
        };
        self.git(
            Some(d),
            "checkout",
            &["-c", "advice.detachedHead=false", "checkout", "-q", &target],
        )
        .await?;
        if d.join(".gitmodules").exists() {
            self.git(
                Some(d),
                "submodule update",
                &[
                    "submodule",
                    "update",
                    "-q",
                    "--init",
                    "--recursive",
                    "--depth=1",
                ],
            )
            .await?;
        }
        let got = self
            .git(Some(d), "rev-parse", &["rev-parse", "HEAD"])
            .await?
            .trim()
            .to_string();
        self.check(&got)?;
        if !self.keep_git_dir {
            let git_dir = d.join(".git");
            std::fs::remove_dir_all(&git_dir).map_err(|source| GitError::Io {
                path: git_dir,
                source,
            })?;
        }
        let root = match &self.subdir {
            Some(sub) => {
                // A host path: copies read the checkout from this root by
                // path, and the checkout is a private temporary directory.
                let root = crate::fsutil::resolve_in_root(d, sub, true)
                    .ok()
                    .filter(|p| p.is_dir());
                root.ok_or_else(|| GitError::NoSubdir {
                    remote: self.remote.clone(),
                    commit: got.clone(),
                    subdir: sub.clone(),
                })?
            }
            None => d.to_path_buf(),
        };
        Ok((dir, root, got))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commit_ids() {
        assert!(super::is_commit(&"a".repeat(40)));
        assert!(!super::is_commit("main"));
        assert!(!super::is_commit(&"g".repeat(40)));
    }
}

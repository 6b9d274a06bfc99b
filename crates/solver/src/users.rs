//! User and group names resolved in an image's `/etc/passwd` and
//! `/etc/group`, as `USER`, `WORKDIR` and `COPY --chown` need them.

use crate::fsutil::open_file_in;
use rustix::fs::OFlags;
use std::path::Path;

/// A name that is not in the image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// Unknown user name.
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    User(String),
    /// Unknown group name.
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    Group(String),
}

/// A resolved user: ids plus supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from /etc/group membership).
    pub groups: Vec<u32>,
}

/// The text of the image's file `path`, empty when it cannot be read.
fn read(root: &Path, path: &str) -> String {
    open_file_in(root, path, OFlags::RDONLY)
        .and_then(std::io::read_to_string)
        .unwrap_or_default()
}

/// The fields of every /etc/passwd line: the workspace's one passwd reader.
fn passwd_fields(root: &Path) -> Vec<Vec<String>> {
    read(root, "/etc/passwd")
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// (name, uid, gid) of every /etc/passwd entry.
fn passwd(root: &Path) -> Vec<(String, u32, u32)> {
    passwd_fields(root)
        .into_iter()
        .filter_map(|f| {
            if f.len() < 4 {
                return None;
            }
            Some((f[0].clone(), f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .collect()
}

/// The home directory of `user`'s /etc/passwd entry (looked up by name,
/// or by id for a numeric user; an empty user is root), when it names one.
pub fn home_dir(root: &Path, user: &str) -> Option<String> {
    let name = user.split(':').next().unwrap_or_default();
    let name = if name.is_empty() { "0" } else { name };
    passwd_fields(root)
        .into_iter()
        .filter(|f| f.len() >= 6)
        .find(|f| f[0] == name || (name.parse::<u32>().is_ok() && f[2] == name))
        .map(|f| f[5].clone())
        .filter(|h| !h.is_empty())
}

/// (name, gid, members) of every /etc/group entry.
fn groups(root: &Path) -> Vec<(String, u32, Vec<String>)> {
    read(root, "/etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

fn group_id(root: &Path, g: &str) -> Result<u32, UserError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    groups(root)
        .into_iter()
        .find(|(name, _, _)| name == g)
        .map(|(_, id, _)| id)
        .ok_or_else(|| UserError::Group(g.to_string()))
}

/// `--chown=user[:group]`: a name or id. Without a group, a user named
/// by name gets its primary group from `/etc/passwd` and a numeric user
/// the group id equal to its user id, as BuildKit resolves COPY/ADD owners.
pub fn chown_ids(root: &Path, spec: &str) -> Result<(u32, u32), UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => passwd(root)
            .into_iter()
            .find(|(name, _, _)| name == u)
            .map(|(_, id, gid)| (id, gid))
            .ok_or_else(|| UserError::User(u.to_string()))?,
    };
    let gid = match g {
        Some(g) if !g.is_empty() => group_id(root, g)?,
        _ => primary,
    };
    Ok((uid, gid))
}

/// `USER user[:group]` for running a process: a numeric user missing from
/// /etc/passwd gets group 0; a named user takes its primary group and its
/// supplementary groups from /etc/group; an explicit group replaces both.
/// The empty string is root.
pub fn user_ids(root: &Path, spec: &str) -> Result<Ids, UserError> {
    if spec.is_empty() {
        return Ok(Ids::default());
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = passwd(root);
    let found = match u.parse::<u32>() {
        Ok(n) => entries
            .iter()
            .find(|(_, id, _)| *id == n)
            .cloned()
            .or(Some((String::new(), n, 0))),
        Err(_) => entries.iter().find(|(name, _, _)| name == u).cloned(),
    };
    let (name, uid, primary) = found.ok_or_else(|| UserError::User(u.to_string()))?;
    match g {
        Some(g) if !g.is_empty() => Ok(Ids {
            uid,
            gid: group_id(root, g)?,
            groups: Vec::new(),
        }),
        _ => {
            let mut sup: Vec<u32> = if name.is_empty() {
                Vec::new()
            } else {
                groups(root)
                    .into_iter()
                    .filter(|(_, _, members)| members.iter().any(|m| m == &name))
                    .map(|(_, id, _)| id)
                    .collect()
            };
            sup.retain(|g| *g != primary);
            Ok(Ids {
                uid,
                gid: primary,
                groups: sup,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nsvc:x:1001:50::/srv:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,web\naudio:x:29:app\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn chown_rules() {
        let t = image();
        assert_eq!(chown_ids(t.path(), "app").unwrap(), (1000, 1000));
        assert_eq!(chown_ids(t.path(), "web").unwrap(), (33, 33));
        assert_eq!(chown_ids(t.path(), "10").unwrap(), (10, 10));
        // A name without a group takes its primary group, an id its own id.
        assert_eq!(chown_ids(t.path(), "svc").unwrap(), (1001, 50));
        assert_eq!(chown_ids(t.path(), "1001").unwrap(), (1001, 1001));
        assert_eq!(chown_ids(t.path(), "app:staff").unwrap(), (1000, 50));
        assert_eq!(chown_ids(t.path(), "1:2").unwrap(), (1, 2));
        assert_eq!(
            chown_ids(t.path(), "nobody").unwrap_err(),
            UserError::User("nobody".into())
        );
        assert_eq!(
            chown_ids(t.path(), "app:nogroup").unwrap_err(),
            UserError::Group("nogroup".into())
        );
    }

    #[test]
    fn passwd_and_group_are_read_inside_the_root() {
        use std::os::unix::fs::symlink;
        // Host files the image's symlinks name: never the ones read.
        let host = tempfile::tempdir().unwrap();
        let host = std::fs::canonicalize(host.path()).unwrap();
        std::fs::write(host.join("passwd"), "ghost:x:4242:4242::/:/bin/sh\n").unwrap();
        std::fs::write(host.join("group"), "outsiders:x:4343:\n").unwrap();
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let inside = root.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("passwd"), "app:x:7:8::/home/app:/bin/sh\n").unwrap();
        std::fs::write(inside.join("group"), "staff:x:50:app\n").unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        // An absolute target, and a `..` chain climbing past the root.
        symlink(host.join("passwd"), root.join("etc/passwd")).unwrap();
        let up = "../".repeat(host.components().count() + 3);
        symlink(
            format!("{up}{}/group", host.display()),
            root.join("etc/group"),
        )
        .unwrap();
        assert_eq!(chown_ids(root, "app").unwrap(), (7, 8));
        assert_eq!(chown_ids(root, "app:staff").unwrap(), (7, 50));
        assert_eq!(
            chown_ids(root, "ghost").unwrap_err(),
            UserError::User("ghost".into())
        );
        assert_eq!(
            chown_ids(root, "0:outsiders").unwrap_err(),
            UserError::Group("outsiders".into())
        );
        assert_eq!(home_dir(root, "app").as_deref(), Some("/home/app"));
    }

    #[test]
    fn user_rules() {
        let t = image();
        let app = user_ids(t.path(), "app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.groups, vec![50, 29]);
        assert_eq!(
            user_ids(t.path(), "4242").unwrap(),
            Ids {
                uid: 4242,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(user_ids(t.path(), "33").unwrap().gid, 33);
        assert_eq!(
            user_ids(t.path(), "app:staff").unwrap(),
            Ids {
                uid: 1000,
                gid: 50,
                groups: vec![]
            }
        );
        assert_eq!(user_ids(t.path(), "").unwrap(), Ids::default());
        assert!(user_ids(t.path(), "ghost").is_err());
    }
}

//! Container paths on the host: the workspace's one resolver of a path
//! inside a root filesystem.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Maximum symlinks followed while resolving one path (Linux uses 40).
const MAX_SYMLINKS: usize = 40;

/// Resolve a container path inside `root` following symlinks as the container
/// would see them, so the result is always under `root`. The last component
/// is followed too when `follow_last` is set. Components that do not exist
/// are appended as they are.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut todo: Vec<Vec<u8>> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .rev()
        .collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut followed = 0usize;
    while let Some(comp) = todo.pop() {
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let is_last = todo.is_empty();
        let mut candidate = root.to_path_buf();
        for d in &done {
            candidate.push(OsStr::from_bytes(d));
        }
        candidate.push(OsStr::from_bytes(&comp));
        if is_last && !follow_last {
            done.push(comp);
            continue;
        }
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    done.clear();
                }
                for c in target.split(|b| *b == b'/').filter(|c| !c.is_empty()).rev() {
                    todo.push(c.to_vec());
                }
            }
            _ => done.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    for d in &done {
        out.push(OsStr::from_bytes(d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_never_leaves_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/lib/x", true).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/escape/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, "/lib", false).unwrap(),
            root.join("lib")
        );
        assert!(resolve_in_root(root, "/loop1/x", true).is_err());
        assert_eq!(
            resolve_in_root(root, "/../../a", true).unwrap(),
            root.join("a")
        );
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../outside", root.join("real/etc/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/etc/hosts", true).unwrap(),
            root.join("real/etc/hosts")
        );
        assert_eq!(
            resolve_in_root(root, "/etc/up/x", true).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(
            resolve_in_root(root, "/../../proc", true).unwrap(),
            root.join("proc")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "/loop/x", true).is_err());
    }
}

//! WORKDIR resolution (BuildKit's `system.NormalizeWorkdir`).

use std::borrow::Cow;

/// Resolves `requested` against the current working directory `current`, as
/// a clean absolute path with `/` separators. On Windows targets a drive
/// letter (`C:`) is dropped and `\` is read as a separator, as BuildKit does
/// when it converts the path for the build state.
/// A path that is already clean and absolute comes back borrowed.
pub(crate) fn resolve_workdir<'a>(current: &str, requested: &'a str, os: &str) -> Cow<'a, str> {
    let windows = os == "windows";
    if !windows && is_clean_absolute(requested) {
        return Cow::Borrowed(requested);
    }
    let requested = if windows {
        strip_drive(&requested.replace('\\', "/"))
    } else {
        requested.to_string()
    };
    let current = if windows {
        strip_drive(&current.replace('\\', "/"))
    } else {
        current.to_string()
    };
    Cow::Owned(if requested.starts_with('/') {
        clean(&requested)
    } else {
        clean(&format!("/{current}/{requested}"))
    })
}

/// An absolute path `clean` would return unchanged.
fn is_clean_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p == "/"
        || (b.first() == Some(&b'/')
            && b.last() != Some(&b'/')
            && b[1..]
                .split(|&c| c == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".."))
}

fn strip_drive(p: &str) -> String {
    let b = p.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        let rest = &p[2..];
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else {
        p.to_string()
    }
}

/// Go's `path.Clean` for absolute paths: no `.`, no `..` past the root, no
/// duplicate or trailing slashes; a relative path is taken from `/`. The
/// workspace's one cleaner of container paths.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = String::with_capacity(p.len());
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_joins_previous() {
        assert_eq!(resolve_workdir("/src", "app", "linux"), "/src/app");
        assert_eq!(resolve_workdir("/", "app", "linux"), "/app");
        assert_eq!(resolve_workdir("", "app", "linux"), "/app");
        assert_eq!(resolve_workdir("/a/b", "../c/./d/", "linux"), "/a/c/d");
    }

    #[test]
    fn clean_absolute_detection() {
        assert!(is_clean_absolute("/"));
        assert!(is_clean_absolute("/a/b"));
        assert!(!is_clean_absolute("/a/"));
        assert!(!is_clean_absolute("/a//b"));
        assert!(!is_clean_absolute("/a/./b"));
        assert!(!is_clean_absolute("/a/../b"));
        assert!(!is_clean_absolute("a/b"));
    }

    #[test]
    fn absolute_replaces() {
        assert_eq!(resolve_workdir("/src", "/out//x/", "linux"), "/out/x");
        assert_eq!(resolve_workdir("/src", "/../..", "linux"), "/");
    }

    #[test]
    fn windows_drive_and_backslashes() {
        assert_eq!(resolve_workdir("/", "C:\\app\\bin", "windows"), "/app/bin");
        assert_eq!(resolve_workdir("/app", "sub", "windows"), "/app/sub");
        assert_eq!(resolve_workdir("/", "C:", "windows"), "/");
    }
}

/// Go's `path.Clean` for `/`-separated paths: collapses repeated slashes,
/// drops `.` elements, resolves `..` lexically (a `..` above a rooted path
/// is dropped, above a relative one kept), removes the trailing slash; the
/// empty path becomes `.`.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for element in path.split('/') {
        match element {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            name => parts.push(name),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn matches_go_path_clean() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a/./b/.", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("../a", "../a"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            ("/a/b/../../..", "/"),
            ("../..", "../.."),
            ("a/b/../../../..", "../.."),
            ("**/", "**"),
            ("!/", "!"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }
}

//! File-system helpers for steps that write into a root filesystem: path
//! resolution that never leaves the root (symlinks are resolved as if the
//! root were `/`), and Go `filepath.Match` wildcards as COPY uses them.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Component, Path};

use rustix::fs::OFlags;

/// Lexically clean an absolute container path: `.` dropped, `..` applied but
/// never above `/`, duplicate slashes folded. The result starts with `/`.
pub use kbuild_dockerfile::plan::clean_path as clean_abs;

/// Join `rel` onto the container directory `base` (`rel` absolute replaces it) and clean.
pub fn join_container(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        clean_abs(rel)
    } else {
        clean_abs(&format!("{base}/{rel}"))
    }
}

pub use kbuild_worker::rootpath::{open_in_root, resolve_in_root};

/// Opens the container path `path` of the root filesystem at the host
/// directory `root` with `open(2)` `flags`, through [`open_in_root`]: what
/// is opened is the file the container would see, and nothing swapped
/// between resolving and opening can lead outside `root`.
pub fn open_file_in(root: &Path, path: &str, flags: OFlags) -> io::Result<File> {
    let dir = File::open(root)?;
    Ok(File::from(open_in_root(
        dir.as_fd(),
        Path::new(path),
        flags,
    )?))
}

/// The directory holding the container path `path` (cleaned lexically, as
/// the graph's paths are), opened inside `root` as [`open_file_in`] does,
/// and the last name of `path`; `None` for `/` itself.
pub fn open_parent_in(root: &Path, path: &str) -> io::Result<Option<(File, OsString)>> {
    let clean = clean_abs(path);
    let Some((parent, name)) = clean.rsplit_once('/') else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    let parent = if parent.is_empty() { "/" } else { parent };
    let dir = open_file_in(root, parent, OFlags::DIRECTORY | OFlags::RDONLY)?;
    Ok(Some((dir, OsString::from(name))))
}

/// What is wrong with a wildcard pattern, and where (Go's
/// `filepath.ErrBadPattern`, with the same text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `\` with nothing after it to escape.
    #[error("syntax error in pattern: trailing backslash")]
    TrailingBackslash,
    /// A `[...]` class that is unclosed, ends in an escape, or has a
    /// range whose end is below its start.
    #[error("syntax error in pattern: bad character class")]
    BadClass {
        /// The position (in characters) of the class's `[`.
        at: usize,
    },
}

/// Go's `filepath.Match` on one path: `*` and `?` never match `/`, `[...]`
/// classes with ranges and `^`/`!` negation, `\` escapes. A malformed
/// pattern is an error, as in Go.
pub fn wildcard_match(pattern: &str, name: &str) -> Result<bool, PatternError> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, 0, &n, 0)
}

fn match_from(p: &[char], mut pi: usize, n: &[char], mut ni: usize) -> Result<bool, PatternError> {
    while pi < p.len() {
        match p[pi] {
            '*' => {
                while pi < p.len() && p[pi] == '*' {
                    pi += 1;
                }
                if pi == p.len() {
                    return Ok(!n[ni..].contains(&'/'));
                }
                let mut k = ni;
                loop {
                    if match_from(p, pi, n, k)? {
                        return Ok(true);
                    }
                    if k >= n.len() || n[k] == '/' {
                        // Still validate the rest of the pattern, as Go does.
                        validate(p, pi)?;
                        return Ok(false);
                    }
                    k += 1;
                }
            }
            '?' => {
                if ni >= n.len() || n[ni] == '/' {
                    validate(p, pi + 1)?;
                    return Ok(false);
                }
                pi += 1;
                ni += 1;
            }
            '[' => {
                let (matched, next) = match_class(p, pi, n.get(ni).copied())?;
                if !matched {
                    validate(p, next)?;
                    return Ok(false);
                }
                pi = next;
                ni += 1;
            }
            '\\' => {
                let c = *p.get(pi + 1).ok_or(PatternError::TrailingBackslash)?;
                if n.get(ni) != Some(&c) {
                    return Ok(false);
                }
                pi += 2;
                ni += 1;
            }
            c => {
                if n.get(ni) != Some(&c) {
                    validate(p, pi + 1)?;
                    return Ok(false);
                }
                pi += 1;
                ni += 1;
            }
        }
    }
    Ok(ni == n.len())
}

/// Check the rest of the pattern from `p[from]`.
fn validate(p: &[char], from: usize) -> Result<(), PatternError> {
    let mut i = from;
    while i < p.len() {
        match p[i] {
            '[' => {
                let (_, next) = match_class(p, i, None)?;
                i = next;
            }
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(PatternError::TrailingBackslash);
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Match a `[...]` class at `p[start]`; returns (matched, index after `]`).
fn match_class(p: &[char], start: usize, c: Option<char>) -> Result<(bool, usize), PatternError> {
    let bad = || PatternError::BadClass { at: start };
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('^') | Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i).ok_or_else(bad)?;
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            *p.get(i).ok_or_else(bad)?
        } else {
            ch
        };
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|x| *x != ']') {
            i += 1;
            hi = if p[i] == '\\' {
                i += 1;
                *p.get(i).ok_or_else(bad)?
            } else {
                p[i]
            };
            i += 1;
            if hi < lo {
                return Err(bad());
            }
        }
        if let Some(c) = c {
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    let ok = match c {
        None | Some('/') => false,
        Some(_) => matched != negate,
    };
    Ok((ok, i))
}

/// Whether a COPY source contains wildcard characters.
pub fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Normalize a context-relative source path: cleaned, relative, never above the root.
pub fn clean_rel(path: &str) -> String {
    let abs = clean_abs(path);
    abs.trim_start_matches('/').to_string()
}

/// Whether a path stays inside its root lexically (no `..` after cleaning, relative).
pub fn is_within(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_join() {
        assert_eq!(clean_abs("a/../../b/./c//d/"), "/b/c/d");
        assert_eq!(clean_abs(""), "/");
        assert_eq!(join_container("/app", "bin"), "/app/bin");
        assert_eq!(join_container("/app", "/etc"), "/etc");
        assert_eq!(join_container("/app", "../.."), "/");
        assert_eq!(clean_rel("../../x/y"), "x/y");
        assert_eq!(clean_rel("."), "");
    }

    #[test]
    fn wildcards_like_go() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "abc", true),
            ("*", "a/b", false),
            ("a*", "abc", true),
            ("a*/b", "abc/b", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[!b-d]", "abc", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a/b", false),
            ("*.go", "main.go", true),
            ("*.go", ".go", true),
            ("[a-", "a", false),
        ];
        for (p, n, want) in cases {
            let got = wildcard_match(p, n).unwrap_or(false);
            assert_eq!(got, *want, "pattern {p:?} name {n:?}");
        }
        assert!(wildcard_match("[", "a").is_err());
        assert!(wildcard_match("a\\", "a").is_err());
    }

    #[test]
    fn pattern_errors_say_what_and_where() {
        assert_eq!(
            wildcard_match("a\\", "a"),
            Err(PatternError::TrailingBackslash)
        );
        // Go checks the rest of the pattern after a mismatch too.
        let e = wildcard_match("x*[z-a]", "y").unwrap_err();
        assert_eq!(e, PatternError::BadClass { at: 2 });
        assert_eq!(
            e.to_string(),
            "syntax error in pattern: bad character class"
        );
        let copy = crate::copy::CopyError::Pattern("x*[z-a]".into(), e);
        assert_eq!(
            copy.to_string(),
            "invalid pattern \"x*[z-a]\": syntax error in pattern: bad character class"
        );
        let source = std::error::Error::source(&copy).map(ToString::to_string);
        assert_eq!(source, Some(e.to_string()));
    }
}

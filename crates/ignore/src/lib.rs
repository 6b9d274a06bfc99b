//! `kbuild-ignore` owns `.dockerignore`: reading its patterns and deciding
//! which paths of a build context are excluded, with the semantics of
//! Docker and BuildKit (moby's `patternmatcher` and `ignorefile`).
//!
//! # The file
//!
//! * One pattern per line; a trailing `\r` and, on the first line, a UTF-8
//!   byte order mark are dropped.
//! * A line whose **first character** is `#` is a comment (checked before
//!   trimming: ` #x` is the pattern `#x`). Lines are then trimmed; blank
//!   lines are skipped.
//! * `!pattern` is an exception: it re-includes what it matches. Space after
//!   the `!` is trimmed too.
//! * Each pattern is cleaned like Go's `path.Clean` (`./a//b/` is `a/b`,
//!   `a/../b` is `b`) and one leading `/` is removed: patterns are relative
//!   to the context root.
//!
//! # Patterns
//!
//! * `*` matches any run of characters except `/`; `?` one character except
//!   `/`; `[a-z]`, `[^0-9]` one character of a class (which, as in BuildKit,
//!   may be `/`); `\c` is `c` literally.
//! * `**` matches any number of directories, including none: `**/*.go`,
//!   `a/**/b`; a trailing `**` (`dir/**`) matches everything below. A leading
//!   `**` followed by plain text (`**/foo`, `**.log`) matches paths ending in
//!   that text (or equal to it without the leading `/`).
//! * The **last** matching line wins. A pattern also matches everything
//!   below a directory it matches: `build` excludes `build/x/y`, and `!docs`
//!   re-includes `docs/a.md` after `*` excluded it.
//! * Directories are not special: a trailing `/` is cleaned away, so `out/`
//!   excludes a file named `out` too.
//!
//! # Which answer
//!
//! The answer for a path is the one Docker's and BuildKit's context walkers
//! compute (moby's `MatchesUsingParentResults`): going down from the
//! top-level directory, a pattern that matched a directory applies to
//! everything below it, and at each level the last applying pattern wins.
//! Like those walkers, a pattern that could not change the answer when it
//! was reached is not tried, so it is not carried down either: with `a`,
//! `!a/b`, `a` the second `a` matched `a` but changed nothing there, and
//! `a/b` stays included, as `docker build` keeps it.
//!
//! This was checked against `docker build` for every kept/excluded row of
//! the crate's case table (`tests/verify_with_docker.py`). The only
//! differences are the legacy builder's directory skipping, which misses
//! exceptions with wildcards (`vendor` + `!*/LICENSE` loses
//! `vendor/LICENSE` there); BuildKit descends into excluded directories
//! whenever exceptions exist and keeps such files, as this crate does.
//!
//! # Where BuildKit's regular expressions differ
//!
//! BuildKit turns a pattern into a Go regular expression and passes some
//! characters through raw. This crate reads them as the glob syntax above,
//! which `docker build` documents: `\d` is a literal `d` (not a digit), `^`
//! outside a class is a literal `^` (not an anchor that never matches), and
//! `*` or `?` inside `[...]` are literal class members. Patterns that avoid
//! those spellings behave identically.
//!
//! # Example
//!
//! ```
//! use kbuild_ignore::Matcher;
//!
//! let m = Matcher::parse("# build outputs\n*\n!src\nsrc/**/*.tmp\n")?;
//! assert!(m.is_excluded("README.md", false));
//! assert!(!m.is_excluded("src/main.rs", false));
//! assert!(m.is_excluded("src/gen/x.tmp", false));
//! // `target` is excluded and no exception can reach inside it: skip it.
//! assert!(!m.may_contain_included("target"));
//! # Ok::<(), kbuild_ignore::Error>(())
//! ```

#![deny(missing_docs)]

mod clean;
mod error;
mod pattern;

use std::path::{Path, PathBuf};

pub use error::{Error, PatternErrorKind};
pub use pattern::Pattern;

/// The name of the ignore file at the root of a build context.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// The patterns of one `.dockerignore` file, ready to match context paths.
/// Immutable and cheap to share; `Matcher::default()` excludes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Reads the text of a `.dockerignore` file (see the crate docs). The
    /// error names the first bad pattern and its line.
    pub fn parse(text: &str) -> Result<Matcher, Error> {
        let mut patterns = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let mut raw = raw.strip_suffix('\r').unwrap_or(raw);
            if index == 0 {
                raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
            }
            if raw.starts_with('#') {
                continue;
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let (exception, rest) = match trimmed.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, trimmed),
            };
            let mut path = rest.to_string();
            if !path.is_empty() {
                path = clean::clean(&path);
                if path.len() > 1 {
                    if let Some(relative) = path.strip_prefix('/') {
                        path = relative.to_string();
                    }
                }
            }
            // BuildKit cleans the pattern once more with its `!` on, which
            // turns `!/` into a lone `!`.
            let full = clean::clean(&if exception { format!("!{path}") } else { path });
            let fail = |kind| Error::new(line, trimmed, kind);
            let (exception, text) = match full.strip_prefix('!') {
                Some("") => return Err(fail(PatternErrorKind::LoneExclamation)),
                Some(text) => (true, text.to_string()),
                None => (false, full),
            };
            patterns.push(Pattern::new(text, exception, line).map_err(fail)?);
        }
        Ok(Matcher { patterns })
    }

    /// The patterns in file order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the context path `rel_path` (`/`-separated, relative to the
    /// context root; it is cleaned first, so `./a/` is `a`) is left out of
    /// the build context: the last pattern that matches the path or one of
    /// its parent directories decides, exceptions re-including (see the
    /// crate docs for the walker's exact rule). The context root itself
    /// (`.`, empty) is never excluded.
    ///
    /// `.dockerignore` has no directory-only patterns, so `is_dir` does not
    /// change the answer; walkers pass it so calls read the same for files
    /// and directories, and use [`Matcher::may_contain_included`] to decide
    /// whether to descend into an excluded directory.
    pub fn is_excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        let _ = is_dir;
        match context_path(rel_path) {
            Some(path) => self.excluded(&path),
            None => false,
        }
    }

    /// Whether something below the context directory `dir` may be included.
    /// `false` means every path below `dir` is excluded and a walker can skip
    /// it; `true` means it must look (it may still find nothing). BuildKit
    /// answers this with a literal prefix test on exception patterns; this
    /// answer also covers exceptions with wildcards (`!*/keep.txt`).
    ///
    /// A walker that keeps an included path below an excluded directory
    /// still creates that directory (BuildKit does).
    pub fn may_contain_included(&self, dir: &str) -> bool {
        let Some(dir) = context_path(dir) else {
            return true;
        };
        if !self.excluded(&dir) {
            return true;
        }
        // Only a pattern that can match a path below `dir` but not `dir`
        // itself can give a child another answer than `dir`'s; one that
        // excludes changes nothing, so look for an exception.
        let below = format!("{dir}/");
        self.patterns
            .iter()
            .any(|p| p.is_exception() && p.may_match_with_prefix(&below))
    }

    /// Walks from the top-level directory down to `path` the way Docker's
    /// and BuildKit's context walkers do (moby's `MatchesUsingParentResults`):
    /// at each level a pattern counts as matching when it matched the parent
    /// directory, or when it matches this path and could change the answer
    /// at the point it is reached.
    fn excluded(&self, path: &str) -> bool {
        let ends = path
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| i)
            .chain([path.len()]);
        let mut parent_matched: Vec<bool> = vec![false; self.patterns.len()];
        let mut excluded = false;
        for end in ends {
            let level = &path[..end];
            excluded = false;
            for (pattern, matched) in self.patterns.iter().zip(parent_matched.iter_mut()) {
                // `matched` holds whether this pattern matched the parent.
                if !*matched {
                    // A pattern that cannot flip the answer is not tried,
                    // and so not recorded for the children either.
                    *matched = pattern.is_exception() == excluded && pattern.matches(level);
                }
                if *matched {
                    excluded = !pattern.is_exception();
                }
            }
        }
        excluded
    }
}

/// A cleaned context-relative path, or `None` for the context root.
fn context_path(path: &str) -> Option<String> {
    let cleaned = clean::clean(path);
    let relative = cleaned.trim_start_matches('/');
    (!relative.is_empty() && relative != ".").then(|| relative.to_string())
}

/// Finds the ignore file for a build, as BuildKit does: the file named after
/// the Dockerfile with `.dockerignore` appended, beside it
/// (`docker/Dockerfile.cross` → `docker/Dockerfile.cross.dockerignore`),
/// wins over `<context_dir>/.dockerignore`. Returns `None` when neither is
/// a file (symlinks are followed). `dockerfile_path` is the path the caller
/// opens the Dockerfile with; `-` (Dockerfile on stdin) has no Dockerfile
/// ignore file.
///
/// This is the crate's only I/O: it checks which files exist; the caller
/// reads the chosen one and hands its text to [`Matcher::parse`].
pub fn find_ignore_file(
    context_dir: impl AsRef<Path>,
    dockerfile_path: impl AsRef<Path>,
) -> Option<PathBuf> {
    let dockerfile = dockerfile_path.as_ref();
    if dockerfile != Path::new("-") && dockerfile.file_name().is_some() {
        let mut beside = dockerfile.as_os_str().to_os_string();
        beside.push(DOCKERIGNORE);
        let beside = PathBuf::from(beside);
        if beside.is_file() {
            return Some(beside);
        }
    }
    let root = context_dir.as_ref().join(DOCKERIGNORE);
    root.is_file().then_some(root)
}

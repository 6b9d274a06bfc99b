//! The one layer-entry policy: which entries of an OCI layer tar are
//! accepted. Every consumer of layer tars in this crate (the snapshot
//! unpacker, [`Flavor::Diff`](super::unpack::Flavor), and the plain-tree
//! apply behind `-o type=local`, [`Flavor::Apply`](super::unpack::Flavor))
//! asks [`EntryPolicy::check`] about each entry before touching the disk, so
//! both accept and reject exactly the same entries. The checks only look at
//! the entry stream of the layer, never at what lower layers left on disk:
//!
//! * names are cleaned lexically; `..` that climbs above the root is
//!   rejected; only a directory may stand for the root itself;
//! * an entry whose parent is a symlink or a non-directory *defined earlier
//!   in this layer* is rejected (it would be written through the symlink);
//! * a hardlink must name a non-directory entry defined earlier in the same
//!   layer and still there: a hardlink to a file of a lower layer (say
//!   `/etc/passwd`) is rejected, as the OCI layer spec allows ("extracting a
//!   layer with hardlink references to files outside of the layer may
//!   fail"); a layer is unpacked once per diff_id whatever lies below it,
//!   so it cannot depend on its parents;
//! * whiteouts must name a file (`.wh.`, `.wh..`, `.wh...` do not);
//! * device nodes, FIFOs and setuid/setgid files are accepted: whether they
//!   are created as such is the consumer's choice (see
//!   [`ApplyOptions`](super::ApplyOptions)), not a question of validity;
//! * tar entry types other than files, directories, links, devices and
//!   FIFOs are rejected.
//!
//! The extractor's `ADD` archives go through the same checks
//! ([`EntryPolicy::without_whiteouts`]), except that an archive has no
//! whiteouts.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use super::error::{Error, Result};

/// OCI whiteout name prefix.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque-directory marker name.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What an accepted entry is, for the extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Nothing to do: PAX headers, aufs bookkeeping, a hardlink to itself.
    Skip,
    /// A directory entry for the layer root itself.
    Root,
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink to `target` (stored as given; never followed here).
    Symlink(Vec<u8>),
    /// A hardlink to the earlier entry at `target` (cleaned components).
    Hardlink(Vec<OsString>),
    /// A character or block device node.
    Device,
    /// A FIFO.
    Fifo,
    /// `.wh.NAME`: NAME of a lower layer is deleted.
    Whiteout(OsString),
    /// `.wh..wh..opq`: the lower layers' children of the parent are hidden.
    Opaque,
}

/// An entry the policy has accepted: its cleaned path and what it is.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The cleaned path below the root (empty for the root itself).
    pub comps: Vec<OsString>,
    /// What the entry is.
    pub what: Checked,
}

/// What this layer has put at a path so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defined {
    Dir,
    Symlink,
    Other,
}

/// Checks the entries of one layer tar, in order; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct EntryPolicy {
    defined: HashMap<Vec<u8>, Defined>,
    /// `.wh.` names are ordinary entries (an `ADD` archive, not a layer).
    no_whiteouts: bool,
}

pub(crate) fn bad(entry: &str, problem: impl Into<String>) -> Error {
    Error::BadEntry {
        entry: entry.to_string(),
        problem: problem.into(),
    }
}

/// Cleans a tar path into components below the root.
pub(crate) fn clean(name: &[u8], entry: &str) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(bad(entry, "escapes the layer root through `..`"));
                }
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

/// The components joined with `/`.
pub(crate) fn join(comps: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    v
}

impl EntryPolicy {
    /// A policy for a new layer.
    pub(crate) fn new() -> EntryPolicy {
        EntryPolicy::default()
    }

    /// A policy for a tar that is not a layer (Dockerfile `ADD` archives):
    /// the same checks, but `.wh.` names are ordinary files, as Docker and
    /// BuildKit unpack them.
    pub(crate) fn without_whiteouts() -> EntryPolicy {
        EntryPolicy {
            no_whiteouts: true,
            ..EntryPolicy::default()
        }
    }

    /// Checks the next entry of the layer: its raw path, tar type and link
    /// name. On success the entry counts as defined for later entries.
    pub(crate) fn check(
        &mut self,
        raw: &[u8],
        kind: EntryType,
        link: Option<&[u8]>,
    ) -> Result<Accepted> {
        let name = String::from_utf8_lossy(raw);
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(Accepted {
                comps: Vec::new(),
                what: Checked::Skip,
            });
        }
        let comps = clean(raw, &name)?;
        let Some(leaf) = comps.last() else {
            if !kind.is_dir() {
                return Err(bad(
                    &name,
                    "would replace the layer root with a non-directory",
                ));
            }
            return Ok(Accepted {
                comps,
                what: Checked::Root,
            });
        };
        let path = join(&comps);
        self.check_parents(&path, &name, |parent| {
            format!(
                "has the parent `{parent}`, which is a symlink or a non-directory in this layer"
            )
        })?;

        let leaf = leaf.as_bytes();
        if !self.no_whiteouts && leaf.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let what = if leaf == OPAQUE_MARKER.as_bytes() {
                Checked::Opaque
            } else if leaf.starts_with(b".wh..wh.") {
                // aufs bookkeeping (hardlink directories); not part of the image.
                Checked::Skip
            } else {
                let hidden = &leaf[WHITEOUT_PREFIX.len()..];
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(bad(&name, "is a whiteout that names no file"));
                }
                // Both consumers delete what the whiteout names, even an
                // entry of this layer: it is no longer there to link to.
                let mut gone = path[..path.len() - leaf.len()].to_vec();
                gone.extend_from_slice(hidden);
                self.forget(&gone);
                Checked::Whiteout(OsStr::from_bytes(hidden).to_os_string())
            };
            return Ok(Accepted { comps, what });
        }

        let what = match kind {
            EntryType::Directory => Checked::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Checked::File,
            EntryType::Symlink => {
                let target = link.ok_or_else(|| bad(&name, "is a symlink without a target"))?;
                Checked::Symlink(target.to_vec())
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| bad(&name, "is a hardlink without a target"))?;
                match self.check_hardlink(target, &comps, &name)? {
                    Some(tcomps) => Checked::Hardlink(tcomps),
                    None => {
                        return Ok(Accepted {
                            comps,
                            what: Checked::Skip,
                        })
                    }
                }
            }
            EntryType::Char | EntryType::Block => Checked::Device,
            EntryType::Fifo => Checked::Fifo,
            other => {
                return Err(bad(
                    &name,
                    format!("has the unsupported tar entry type {other:?}"),
                ))
            }
        };
        let defined = match what {
            Checked::Dir => Defined::Dir,
            Checked::Symlink(_) => Defined::Symlink,
            _ => Defined::Other,
        };
        if defined != Defined::Dir {
            // Whatever was there (a directory and its children) is replaced.
            self.forget(&path);
        }
        self.defined.insert(path, defined);
        Ok(Accepted { comps, what })
    }

    /// Rejects a path below a symlink or non-directory this layer defined.
    fn check_parents(
        &self,
        path: &[u8],
        name: &str,
        problem: impl Fn(&str) -> String,
    ) -> Result<()> {
        for (i, b) in path.iter().enumerate() {
            if *b != b'/' {
                continue;
            }
            let parent = &path[..i];
            if matches!(
                self.defined.get(parent),
                Some(Defined::Symlink | Defined::Other)
            ) {
                return Err(bad(name, problem(&String::from_utf8_lossy(parent))));
            }
        }
        Ok(())
    }

    /// The cleaned target of a hardlink at `comps`, or `None` for a link to
    /// itself (nothing to do).
    fn check_hardlink(
        &self,
        target: &[u8],
        comps: &[OsString],
        name: &str,
    ) -> Result<Option<Vec<OsString>>> {
        let shown = String::from_utf8_lossy(target);
        let tcomps = clean(target, name).map_err(|_| {
            bad(
                name,
                format!("is a hardlink to `{shown}`, which escapes the layer root"),
            )
        })?;
        if tcomps == comps {
            return Ok(None);
        }
        let tpath = join(&tcomps);
        self.check_parents(&tpath, name, |parent| {
            format!(
                "is a hardlink to `{shown}`, whose parent `{parent}` is a symlink or a non-directory in this layer"
            )
        })?;
        match self.defined.get(tpath.as_slice()) {
            Some(Defined::Dir) => Err(bad(name, "is a hardlink to a directory")),
            Some(Defined::Symlink | Defined::Other) => Ok(Some(tcomps)),
            None => Err(bad(
                name,
                format!(
                    "is a hardlink to `{shown}`, which is not a file in the layer \
                     (a hardlink must name an earlier entry of the same layer)"
                ),
            )),
        }
    }

    /// Forgets `path` and everything below it.
    fn forget(&mut self, path: &[u8]) {
        if self.defined.remove(path) != Some(Defined::Dir) {
            return;
        }
        self.defined
            .retain(|p, _| !(p.len() > path.len() && p.starts_with(path) && p[path.len()] == b'/'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &mut EntryPolicy, name: &str, kind: EntryType, link: Option<&str>) -> String {
        match p.check(name.as_bytes(), kind, link.map(str::as_bytes)) {
            Ok(a) => format!("{:?}", a.what),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn clean_drops_dots_and_rejects_escapes() {
        let c = clean(b"/a/./b//c/../d", "x").map(|v| join(&v));
        assert_eq!(c.ok(), Some(b"a/b/d".to_vec()));
        assert!(clean(b"a/../../etc", "x").is_err());
        assert!(clean(b"../x", "x").is_err());
        assert_eq!(clean(b"./", "x").map(|v| v.len()).ok(), Some(0));
    }

    #[test]
    fn hardlinks_name_earlier_entries_of_the_layer() {
        let mut p = EntryPolicy::new();
        assert_eq!(check(&mut p, "etc/", EntryType::Directory, None), "Dir");
        assert_eq!(check(&mut p, "etc/a", EntryType::Regular, None), "File");
        assert!(check(&mut p, "h", EntryType::Link, Some("etc/a")).starts_with("Hardlink"));
        let lower = check(&mut p, "h2", EntryType::Link, Some("/etc/passwd"));
        assert!(lower.contains("not a file in the layer"), "{lower}");
        let dir = check(&mut p, "h3", EntryType::Link, Some("etc"));
        assert!(dir.contains("hardlink to a directory"), "{dir}");
        let out = check(&mut p, "h4", EntryType::Link, Some("../../etc/passwd"));
        assert!(out.contains("escapes the layer root"), "{out}");
        // A whited-out entry is gone; so is a replaced directory's content.
        assert_eq!(
            check(&mut p, "etc/.wh.a", EntryType::Regular, None),
            "Whiteout(\"a\")"
        );
        let gone = check(&mut p, "h5", EntryType::Link, Some("etc/a"));
        assert!(gone.contains("not a file in the layer"), "{gone}");
        check(&mut p, "etc/b", EntryType::Regular, None);
        check(&mut p, "etc", EntryType::Symlink, Some("/tmp"));
        let replaced = check(&mut p, "h6", EntryType::Link, Some("etc/b"));
        assert!(
            replaced.contains("symlink or a non-directory"),
            "{replaced}"
        );
        assert_eq!(check(&mut p, "h", EntryType::Link, Some("./h")), "Skip");
    }

    #[test]
    fn parents_defined_as_non_directories_are_refused() {
        let mut p = EntryPolicy::new();
        check(&mut p, "s", EntryType::Symlink, Some("/etc"));
        let under = check(&mut p, "s/passwd", EntryType::Regular, None);
        assert!(under.contains("parent `s`"), "{under}");
        check(&mut p, "s/", EntryType::Directory, None);
        assert_eq!(check(&mut p, "s/passwd", EntryType::Regular, None), "File");
        assert_eq!(check(&mut p, "dev/null", EntryType::Char, None), "Device");
        assert_eq!(check(&mut p, "run/fifo", EntryType::Fifo, None), "Fifo");
        let root = check(&mut p, "./", EntryType::Regular, None);
        assert!(root.contains("layer root"), "{root}");
        let odd = check(&mut p, "x", EntryType::new(b'Z'), None);
        assert!(odd.contains("unsupported"), "{odd}");
        let wh = check(&mut p, "a/.wh..", EntryType::Regular, None);
        assert!(wh.contains("names no file"), "{wh}");
    }
}

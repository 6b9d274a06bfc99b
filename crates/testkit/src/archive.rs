//! Hand-made tar archives for tests of extractors: names and link targets
//! are written as given, even with `..` or a leading `/`, which the tar
//! crate's path API refuses.

use std::path::Path;

/// One entry of [`raw_tar`]: the name as written, its type, and its link
/// target (for links).
pub type RawEntry<'a> = (&'a str, tar::EntryType, Option<&'a str>);

/// Owner and modes of every entry of [`raw_tar`].
#[derive(Debug, Clone, Copy)]
pub struct RawOwner {
    /// Owner uid and gid.
    pub ids: (u64, u64),
    /// Mode of directories.
    pub dir_mode: u32,
    /// Mode of every other entry.
    pub file_mode: u32,
}

/// Writes a ustar archive at `path`: each regular file holds its own name,
/// every entry has `owner`'s ids and modes and mtime 1,000,000.
pub fn raw_tar(path: &Path, entries: &[RawEntry], owner: RawOwner) {
    let file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut b = tar::Builder::new(file);
    for (name, kind, link) in entries {
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            name.as_bytes()
        } else {
            b""
        };
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() {
            owner.dir_mode
        } else {
            owner.file_mode
        });
        h.set_uid(owner.ids.0);
        h.set_gid(owner.ids.1);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_cksum();
        b.append(&h, data)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    b.finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", path.display()));
}

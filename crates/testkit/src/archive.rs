//! Hand-made tar archives for tests of extractors and unpackers: every
//! header field is written as given, so an archive can hold what a hostile
//! or careless writer would put there (names with `..` or a leading `/`,
//! links out of the tree, devices, set-id modes, whiteouts), which the tar
//! crate's path API refuses.
//!
//! ```
//! use kbuild_testkit::archive::{RawHeader, RawTar};
//! use tar::EntryType;
//!
//! let mut tar = RawTar::ustar();
//! tar.dir("etc/")
//!     .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
//!     .symlink("escape", "../../etc")
//!     .entry(RawHeader {
//!         mode: 0o4755,
//!         ids: (1000, 1000),
//!         data: b"#!/bin/true\n",
//!         ..RawHeader::new(EntryType::Regular, "../outside")
//!     });
//! let bytes = tar.into_bytes();
//! assert_eq!(bytes.len() % 512, 0);
//! ```

use std::path::Path;

use kbuild_image::tarball::pax_record;
use tar::{EntryType, Header};

/// The longest name or link target a header field holds here; a longer
/// one is written whole in a PAX record and cut in the header.
const FIELD: usize = 99;

/// One entry of a [`RawTar`], every field as it goes into the header.
#[derive(Debug, Clone)]
pub struct RawHeader<'a> {
    /// The entry type.
    pub kind: EntryType,
    /// The name as written, even with `..` or a leading `/`.
    pub name: &'a str,
    /// The link target (symlinks and hard links).
    pub link: Option<&'a str>,
    /// Mode bits, set-id and sticky bits included.
    pub mode: u32,
    /// Owner uid and gid.
    pub ids: (u64, u64),
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Device major and minor; `None` leaves both fields empty.
    pub device: Option<(u32, u32)>,
    /// Extended attributes, written as `SCHILY.xattr.*` PAX records.
    pub xattrs: Vec<(&'a str, &'a [u8])>,
    /// The contents (its length is the entry's size).
    pub data: &'a [u8],
}

impl<'a> RawHeader<'a> {
    /// An empty `kind` entry at `name`: mode 0755 for a directory and 0644
    /// otherwise, owned 0:0, mtime 0, no device, no xattrs.
    pub fn new(kind: EntryType, name: &'a str) -> RawHeader<'a> {
        RawHeader {
            kind,
            name,
            link: None,
            mode: if kind.is_dir() { 0o755 } else { 0o644 },
            ids: (0, 0),
            mtime: 0,
            device: None,
            xattrs: Vec::new(),
            data: b"",
        }
    }
}

/// A tar archive built in memory entry by entry from [`RawHeader`]s, with
/// ustar or GNU headers.
pub struct RawTar {
    gnu: bool,
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    /// An archive of ustar headers.
    pub fn ustar() -> RawTar {
        RawTar {
            gnu: false,
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// An archive of GNU headers.
    pub fn gnu() -> RawTar {
        RawTar {
            gnu: true,
            ..RawTar::ustar()
        }
    }

    /// Appends `entry`, after a PAX header when it has xattrs or a name or
    /// link target longer than its header field.
    pub fn entry(&mut self, entry: RawHeader<'_>) -> &mut RawTar {
        self.pax(&entry);
        let mut h = self.header();
        h.set_entry_type(entry.kind);
        raw_field(&mut h.as_old_mut().name, entry.name);
        if let Some(link) = entry.link {
            raw_field(&mut h.as_old_mut().linkname, link);
        }
        h.set_mode(entry.mode);
        h.set_uid(entry.ids.0);
        h.set_gid(entry.ids.1);
        h.set_mtime(entry.mtime);
        h.set_size(entry.data.len() as u64);
        if let Some((major, minor)) = entry.device {
            h.set_device_major(major)
                .expect("ustar and GNU headers have device fields");
            h.set_device_minor(minor)
                .expect("ustar and GNU headers have device fields");
        }
        h.set_cksum();
        self.append(&h, entry.data);
        self
    }

    /// Appends a regular file holding `data`.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut RawTar {
        self.entry(RawHeader {
            data,
            ..RawHeader::new(EntryType::Regular, name)
        })
    }

    /// Appends a directory.
    pub fn dir(&mut self, name: &str) -> &mut RawTar {
        self.entry(RawHeader::new(EntryType::Directory, name))
    }

    /// Appends a symlink to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut RawTar {
        self.entry(RawHeader {
            link: Some(target),
            ..RawHeader::new(EntryType::Symlink, name)
        })
    }

    /// Appends a hard link to `target`.
    pub fn link(&mut self, name: &str, target: &str) -> &mut RawTar {
        self.entry(RawHeader {
            link: Some(target),
            ..RawHeader::new(EntryType::Link, name)
        })
    }

    /// The archive, end blocks included.
    pub fn into_bytes(self) -> Vec<u8> {
        self.builder.into_inner().expect("write to memory")
    }

    /// Writes the archive at `path`.
    pub fn write(self, path: &Path) {
        std::fs::write(path, self.into_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn header(&self) -> Header {
        if self.gnu {
            Header::new_gnu()
        } else {
            Header::new_ustar()
        }
    }

    /// The PAX header `entry` needs, if any.
    fn pax(&mut self, entry: &RawHeader<'_>) {
        let mut records = Vec::new();
        for (key, value) in &entry.xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
        }
        if entry.name.len() > FIELD {
            records.extend(pax_record("path", entry.name.as_bytes()));
        }
        if let Some(link) = entry.link.filter(|l| l.len() > FIELD) {
            records.extend(pax_record("linkpath", link.as_bytes()));
        }
        if records.is_empty() {
            return;
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_cksum();
        self.append(&h, &records);
    }

    fn append(&mut self, header: &Header, data: &[u8]) {
        self.builder.append(header, data).expect("write to memory");
    }
}

/// Copies `value` into a name field as is, cut to the field's length.
fn raw_field(field: &mut [u8], value: &str) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value.as_bytes()[..n]);
}

/// One row of a layer case table (`name | entries | expect`), trimmed;
/// `entries` is read by [`case_entries`].
#[derive(Debug, Clone, Copy)]
pub struct LayerCase<'a> {
    /// The case's name.
    pub name: &'a str,
    /// The layer's entries.
    pub entries: &'a str,
    /// What the test expects of it.
    pub expect: &'a str,
}

/// The rows of a layer case table, blank lines and `#` comments left out.
///
/// Panics on a row without exactly three columns: the table is wrong.
pub fn layer_cases(table: &str) -> Vec<LayerCase<'_>> {
    table
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let columns: Vec<&str> = line.split('|').map(str::trim).collect();
            let [name, entries, expect] = columns[..] else {
                panic!("bad case line: {line}");
            };
            LayerCase {
                name,
                entries,
                expect,
            }
        })
        .collect()
}

/// The entries of a layer written as a case of a test table: `;`-separated
/// items `KIND:NAME` or `KIND:NAME->TARGET`, names as written, where KIND
/// is `file` (holding `data`), `suid` (the same, mode 4755), `dir`,
/// `symlink`, `link` (a hard link) or `char` (device 1,3). Every entry is
/// owned 0:0 with mtime 1,700,000,000.
///
/// Panics on an item that is not of that form: the table is wrong.
pub fn case_entries(spec: &str) -> Vec<RawHeader<'_>> {
    spec.split(';').map(str::trim).map(case_entry).collect()
}

fn case_entry(item: &str) -> RawHeader<'_> {
    let (kind, rest) = item
        .split_once(':')
        .unwrap_or_else(|| panic!("case entry {item:?} is not KIND:NAME"));
    let (name, link) = match rest.split_once("->") {
        Some((name, target)) => (name, Some(target)),
        None => (rest, None),
    };
    let (kind, mode, data): (EntryType, u32, &[u8]) = match kind {
        "file" => (EntryType::Regular, 0o644, b"data"),
        "suid" => (EntryType::Regular, 0o4755, b"data"),
        "dir" => (EntryType::Directory, 0o755, b""),
        "symlink" => (EntryType::Symlink, 0o777, b""),
        "link" => (EntryType::Link, 0o644, b""),
        "char" => (EntryType::Char, 0o666, b""),
        k => panic!("case entry {item:?}: unknown kind {k}"),
    };
    if link.is_none() && matches!(kind, EntryType::Symlink | EntryType::Link) {
        panic!("case entry {item:?} has no ->TARGET");
    }
    RawHeader {
        link,
        mode,
        mtime: 1_700_000_000,
        device: (kind == EntryType::Char).then_some((1, 3)),
        data,
        ..RawHeader::new(kind, name)
    }
}

/// A ustar layer of [`case_entries`]`(spec)`.
pub fn case_layer(spec: &str) -> Vec<u8> {
    let mut tar = RawTar::ustar();
    for entry in case_entries(spec) {
        tar.entry(entry);
    }
    tar.into_bytes()
}

/// One entry of [`raw_tar`]: the name as written, its type, and its link
/// target (for links).
pub type RawEntry<'a> = (&'a str, EntryType, Option<&'a str>);

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
    let mut tar = RawTar::ustar();
    for &(name, kind, link) in entries {
        tar.entry(RawHeader {
            link,
            mode: if kind.is_dir() {
                owner.dir_mode
            } else {
                owner.file_mode
            },
            ids: owner.ids,
            mtime: 1_000_000,
            data: if kind == EntryType::Regular {
                name.as_bytes()
            } else {
                b""
            },
            ..RawHeader::new(kind, name)
        });
    }
    tar.write(path);
}

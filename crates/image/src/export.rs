//! Exporters: an image from the store as an OCI layout (directory or tar) or
//! as a `docker load` archive.
//!
//! Path-based exports write into a temp file or directory next to the
//! destination and rename it into place at the end, so an error never leaves
//! a half-written result. Writer-based exports stream a deterministic tar.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{io_err, DocumentProblem, Error, Result};
use crate::oci::{
    canonical_json, Descriptor, Document, Index, ANNOTATION_CONTAINERD_IMAGE_NAME,
    ANNOTATION_REF_NAME,
};
use crate::store::{sync_dir, ContentStore};
use crate::tarball::{DeterministicTar, Entry, EntryKind, TarOptions};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Every blob the image rooted at `root` needs, sorted by digest: the root,
/// and for an index its manifests recursively, for a manifest its config and
/// layers. All must be in the store.
pub fn image_blobs(store: &ContentStore, root: &Descriptor) -> Result<BTreeSet<Digest>> {
    let mut out = BTreeSet::new();
    let mut pending = vec![root.clone()];
    while let Some(desc) = pending.pop() {
        if !out.insert(desc.digest) {
            continue;
        }
        if !store.has(&desc.digest) {
            return Err(Error::NotFound {
                digest: desc.digest,
                root: store.root().to_path_buf(),
            });
        }
        if desc.is_index() || desc.is_manifest() {
            let bytes = store.read(&desc.digest)?;
            match Document::parse(&bytes)? {
                Document::Index(index) => pending.extend(index.manifests),
                Document::Manifest(m) => {
                    pending.push(m.config);
                    pending.extend(m.layers);
                }
            }
        }
    }
    Ok(out)
}

fn layout_index(root: &Descriptor, ref_name: Option<&str>) -> Result<Vec<u8>> {
    let mut desc = root.clone();
    if let Some(name) = ref_name {
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
    }
    let mut index = Index::new();
    index.manifests.push(desc);
    index.to_bytes()
}

/// Writes an OCI image layout directory at `dest`: `oci-layout`,
/// `index.json` listing `root` (annotated with `ref_name` as
/// `org.opencontainers.image.ref.name` when given) and `blobs/sha256/`.
/// Blobs are copied from the store. An existing directory at `dest` is
/// replaced as a whole (swapped out, then removed).
pub fn oci_layout_dir(
    store: &ContentStore,
    root: &Descriptor,
    dest: &Path,
    ref_name: Option<&str>,
) -> Result<()> {
    oci_layout_dir_gated(store, root, dest, ref_name, None)
}

/// [`oci_layout_dir`], the final rename going through `gate` (an output
/// of a build that may be cancelled: a closed gate leaves `dest` as it was).
pub fn oci_layout_dir_gated(
    store: &ContentStore,
    root: &Descriptor,
    dest: &Path,
    ref_name: Option<&str>,
    gate: Option<&crate::CommitGate>,
) -> Result<()> {
    let blobs = image_blobs(store, root)?;
    let (parent, name) = split_dest(dest)?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .map_err(io_err("create a temp directory in", &parent))?;
    let blob_dir = temp.path().join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(io_err("create", &blob_dir))?;
    for digest in &blobs {
        let from = store.path(digest);
        let to = blob_dir.join(digest.hex());
        // A copy, not a hard link: a user editing the export must not be able
        // to corrupt the store. std's copy uses copy_file_range, which shares
        // extents on file systems that can.
        fs::copy(&from, &to).map_err(io_err("copy the blob to", &to))?;
        fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &to))?;
    }
    write_synced(&temp.path().join("oci-layout"), OCI_LAYOUT)?;
    write_synced(
        &temp.path().join("index.json"),
        &layout_index(root, ref_name)?,
    )?;
    sync_dir(&blob_dir)?;
    sync_dir(temp.path())?;

    let staged = temp.keep();
    let swap = || swap_in(&staged, dest, &parent, &name);
    let swapped = match gate {
        Some(g) => g.commit(dest, swap),
        None => swap(),
    };
    if swapped.is_err() {
        let _ = fs::remove_dir_all(&staged);
    }
    let old = swapped?;
    sync_dir(&parent)?;
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(io_err("remove the previous export", &old))?;
    }
    Ok(())
}

/// Puts the staged layout at `dest`, moving an existing directory aside;
/// returns where the old one went.
fn swap_in(staged: &Path, dest: &Path, parent: &Path, name: &str) -> Result<Option<PathBuf>> {
    let old = match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let old = tempfile::Builder::new()
                .prefix(&format!(".{name}.old-"))
                .tempdir_in(parent)
                .map_err(io_err("create a temp directory in", &parent))?
                .keep();
            fs::rename(dest, &old).map_err(io_err("move aside the existing", dest))?;
            Some(old)
        }
        Ok(_) => {
            return Err(Error::Destination {
                path: dest.to_path_buf(),
                reason: "it exists and is not a directory",
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", dest)(e)),
    };
    if let Err(e) = fs::rename(staged, dest) {
        if let Some(old) = &old {
            let _ = fs::rename(old, dest);
        }
        return Err(io_err("rename the export into", dest)(e));
    }
    Ok(old)
}

/// Streams the OCI image layout of [`oci_layout_dir`] as a deterministic tar
/// into `writer` and returns it. Entry mtimes are `SOURCE_DATE_EPOCH` (from
/// `options`) or 0.
pub fn oci_layout_tar<W: Write>(
    store: &ContentStore,
    root: &Descriptor,
    writer: W,
    ref_name: Option<&str>,
    options: &TarOptions,
) -> Result<W> {
    let blobs = image_blobs(store, root)?;
    let index = layout_index(root, ref_name)?;
    write_layout_tar(store, &blobs, writer, options, &[("index.json", &index)])
}

/// The `manifest.json` entry of a Docker archive.
#[derive(Debug, Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Streams a `docker load` archive of the image manifest `manifest` into
/// `writer`, tagged with `repo_tags` (e.g. `registry/app:1.0`; may be empty).
///
/// Layout as Docker 25 writes it: `manifest.json` (`Config`, `RepoTags`,
/// `Layers` pointing at `blobs/sha256/<hex>`) plus the OCI layout files
/// (`oci-layout`, `index.json`, `blobs/`). Blobs are stored as they are in the
/// store: dockerd 20.10 loads uncompressed and gzip layers; zstd layers need
/// a dockerd that can decompress zstd.
pub fn docker_archive<W: Write>(
    store: &ContentStore,
    writer: W,
    manifest: &Descriptor,
    repo_tags: &[String],
    options: &TarOptions,
) -> Result<W> {
    if !manifest.is_manifest() {
        return Err(Error::InvalidDocument {
            what: format!("image {}", manifest.digest),
            reason: DocumentProblem::DockerArchiveOfIndex(manifest.media_type.clone()),
        });
    }
    let blobs = image_blobs(store, manifest)?;
    let parsed = match Document::parse(&store.read(&manifest.digest)?)? {
        Document::Manifest(m) => m,
        Document::Index(_) => {
            return Err(Error::InvalidDocument {
                what: format!("manifest {}", manifest.digest),
                reason: DocumentProblem::IndexContent,
            })
        }
    };
    let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let manifest_json = canonical_json(&[DockerManifestEntry {
        config: blob_path(&parsed.config.digest),
        repo_tags: repo_tags.to_vec(),
        layers: parsed.layers.iter().map(|l| blob_path(&l.digest)).collect(),
    }])?;

    let mut index = Index::new();
    if repo_tags.is_empty() {
        index.manifests.push(manifest.clone());
    }
    for tag in repo_tags {
        let mut desc = manifest.clone();
        desc.annotations
            .insert(ANNOTATION_CONTAINERD_IMAGE_NAME.to_string(), tag.clone());
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), tag_of(tag).to_string());
        index.manifests.push(desc);
    }
    let index_json = index.to_bytes()?;
    write_layout_tar(
        store,
        &blobs,
        writer,
        options,
        &[
            ("index.json", &index_json),
            ("manifest.json", &manifest_json),
        ],
    )
}

/// [`oci_layout_tar`] into the file `dest`, through a temp file renamed at the end.
pub fn oci_layout_tar_file(
    store: &ContentStore,
    root: &Descriptor,
    dest: &Path,
    ref_name: Option<&str>,
    options: &TarOptions,
) -> Result<()> {
    write_file_atomically(dest, |w| {
        oci_layout_tar(store, root, w, ref_name, options).map(drop)
    })
}

/// [`docker_archive`] into the file `dest`, through a temp file renamed at the end.
pub fn docker_archive_file(
    store: &ContentStore,
    manifest: &Descriptor,
    repo_tags: &[String],
    dest: &Path,
    options: &TarOptions,
) -> Result<()> {
    write_file_atomically(dest, |w| {
        docker_archive(store, w, manifest, repo_tags, options).map(drop)
    })
}

/// The tag part of `name:tag` (`latest` when there is none); a `:` before
/// the last `/` is a registry port, not a tag.
fn tag_of(reference: &str) -> &str {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let without_digest = last.split('@').next().unwrap_or(last);
    match without_digest.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

fn write_layout_tar<W: Write>(
    store: &ContentStore,
    blobs: &BTreeSet<Digest>,
    writer: W,
    options: &TarOptions,
    extra_files: &[(&str, &[u8])],
) -> Result<W> {
    let mtime = options.source_date_epoch.unwrap_or(0);
    let mut tar = DeterministicTar::new(writer, *options);
    let dir = |path: &str| Entry {
        mtime,
        ..Entry::new(path, EntryKind::Dir)
    };
    let file = |path: &str, size: u64| Entry {
        mtime,
        mode: 0o644,
        ..Entry::new(path, EntryKind::File { size })
    };
    tar.append(&dir("blobs"), io::empty())?;
    tar.append(&dir("blobs/sha256"), io::empty())?;
    for digest in blobs {
        let f = store.open_blob(digest)?;
        let size = f
            .metadata()
            .map_err(io_err("stat", store.path(digest)))?
            .len();
        tar.append(&file(&format!("blobs/sha256/{}", digest.hex()), size), f)?;
    }
    let mut files: Vec<(&str, &[u8])> = extra_files.to_vec();
    files.push(("oci-layout", OCI_LAYOUT));
    files.sort();
    for (name, data) in files {
        tar.append(&file(name, data.len() as u64), data)?;
    }
    tar.finish()
}

fn split_dest(dest: &Path) -> Result<(PathBuf, String)> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or(Error::Destination {
            path: dest.to_path_buf(),
            reason: "the path has no file name",
        })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("create the directory", &parent))?;
    Ok((parent, name))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(data).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

/// Writes a file beside `dest` through `write` (buffered), syncs it and renames
/// it into place with [`crate::write_atomic_with`] (exports, and the results
/// a build daemon streams back), creating `dest`'s directory first.
pub fn write_file_atomically(
    dest: &Path,
    write: impl FnOnce(&mut io::BufWriter<&mut fs::File>) -> Result<()>,
) -> Result<()> {
    write_file_atomically_gated(dest, None, write)
}

/// [`write_file_atomically`], the rename going through `gate` (an output
/// of a build that may be cancelled).
pub fn write_file_atomically_gated(
    dest: &Path,
    gate: Option<&crate::CommitGate>,
    write: impl FnOnce(&mut io::BufWriter<&mut fs::File>) -> Result<()>,
) -> Result<()> {
    split_dest(dest)?;
    crate::store::write_atomic_gated(dest, gate, write)
}

//! `--build-context NAME=oci-layout://PATH[:TAG|@DIGEST]`: an image read
//! from a local OCI layout instead of a registry. The image (its index or
//! manifest and every blob under it) is copied into the content store,
//! verified against its digests, and then used like any stored image.

use std::io::Read;
use std::path::{Path, PathBuf};

use kbuild_image::{ContentStore, Digest, Document, Index, ANNOTATION_REF_NAME};

/// The scheme of a reference read from an OCI layout.
pub const SCHEME: &str = "oci-layout://";

/// Manifests and indexes larger than this are refused.
const MAX_DOCUMENT: u64 = 64 << 20;

/// A parsed `oci-layout://PATH[:TAG|@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout directory.
    pub path: PathBuf,
    /// Which image of its `index.json`.
    pub select: Select,
}

/// Which image of a layout's `index.json` a [`LayoutRef`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// The only image (or the one tagged `latest`).
    Default,
    /// The image tagged so (`org.opencontainers.image.ref.name`).
    Tag(String),
    /// The image with this digest.
    Digest(Digest),
}

/// Why an OCI layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The value is not `oci-layout://PATH[:TAG|@DIGEST]`.
    #[error("{0:?} is not oci-layout://PATH[:TAG|@DIGEST]")]
    Syntax(String),
    /// The digest after `@` does not parse.
    #[error("{value:?}: {source}")]
    Digest {
        /// The value.
        value: String,
        /// Why.
        source: kbuild_image::Error,
    },
    /// A file of the layout could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A document of the layout is too large.
    #[error("{path} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A document does not parse, or the store refused a blob.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        source: kbuild_image::Error,
    },
    /// A blob's content does not match its name.
    #[error("{path} has digest {actual}")]
    Mismatch {
        /// The blob file.
        path: PathBuf,
        /// What its content hashes to.
        actual: Digest,
    },
    /// `index.json` has no image with that tag or digest.
    #[error("{index} has no image {wanted} (it lists: {listed})")]
    NotListed {
        /// The index file.
        index: PathBuf,
        /// The tag or digest asked for.
        wanted: String,
        /// What it lists.
        listed: String,
    },
}

impl LayoutRef {
    /// Parse `oci-layout://PATH[:TAG|@DIGEST]` (a `:` after the last `/`
    /// starts a tag, as buildx reads it).
    pub fn parse(value: &str) -> Result<LayoutRef, LayoutError> {
        let rest = value
            .strip_prefix(SCHEME)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| LayoutError::Syntax(value.to_string()))?;
        let (path, select) = if let Some((path, digest)) = rest.rsplit_once('@') {
            let d = Digest::parse(digest).map_err(|source| LayoutError::Digest {
                value: value.to_string(),
                source,
            })?;
            (path, Select::Digest(d))
        } else {
            let last = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last..].rfind(':') {
                Some(i) => (
                    &rest[..last + i],
                    Select::Tag(rest[last + i + 1..].to_string()),
                ),
                None => (rest, Select::Default),
            }
        };
        if path.is_empty() || matches!(&select, Select::Tag(t) if t.is_empty()) {
            return Err(LayoutError::Syntax(value.to_string()));
        }
        Ok(LayoutRef {
            path: PathBuf::from(path),
            select,
        })
    }

    /// The same reference with an absolute path (relative to the working
    /// directory), as the solver needs it.
    pub fn to_absolute(&self) -> Result<String, LayoutError> {
        let path = std::path::absolute(&self.path).map_err(|source| LayoutError::Read {
            path: self.path.clone(),
            source,
        })?;
        let suffix = match &self.select {
            Select::Default => String::new(),
            Select::Tag(t) => format!(":{t}"),
            Select::Digest(d) => format!("@{d}"),
        };
        Ok(format!("{SCHEME}{}{suffix}", path.display()))
    }

    /// The digest of the image this names in the layout's `index.json`.
    pub fn resolve(&self) -> Result<Digest, LayoutError> {
        let index_path = self.path.join("index.json");
        let bytes = read_limited(&index_path)?;
        let index = Index::parse(&bytes).map_err(|source| LayoutError::Image {
            path: index_path.clone(),
            source,
        })?;
        let tag_of = |d: &kbuild_image::Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
        let found = match &self.select {
            Select::Digest(digest) => {
                // A digest may also name a blob the index does not list.
                if blob_path(&self.path, digest).is_file() {
                    return Ok(*digest);
                }
                None
            }
            Select::Tag(t) => index
                .manifests
                .iter()
                .find(|d| tag_of(d).as_deref() == Some(t)),
            Select::Default if index.manifests.len() == 1 => index.manifests.first(),
            Select::Default => index
                .manifests
                .iter()
                .find(|d| tag_of(d).as_deref() == Some("latest")),
        };
        match found {
            Some(d) => Ok(d.digest),
            None => Err(LayoutError::NotListed {
                index: index_path,
                wanted: match &self.select {
                    Select::Default => "(no tag given and it lists several)".to_string(),
                    Select::Tag(t) => format!("tagged {t}"),
                    Select::Digest(d) => d.to_string(),
                },
                listed: index
                    .manifests
                    .iter()
                    .map(|d| match tag_of(d) {
                        Some(t) => format!("{t} ({})", d.digest),
                        None => d.digest.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Copy the image `root` names (an index with its manifests, or a
    /// manifest) and its blobs into `store`. Blobs the store has are not
    /// copied again; every copy is verified by the store.
    pub fn import(&self, store: &ContentStore, root: &Digest) -> Result<(), LayoutError> {
        let mut documents = vec![*root];
        while let Some(digest) = documents.pop() {
            let path = blob_path(&self.path, &digest);
            let bytes = read_limited(&path)?;
            let actual = Digest::of(&bytes);
            if actual != digest {
                return Err(LayoutError::Mismatch { path, actual });
            }
            let parsed = Document::parse(&bytes).map_err(|source| LayoutError::Image {
                path: path.clone(),
                source,
            })?;
            match parsed {
                Document::Index(index) => {
                    documents.extend(
                        index
                            .manifests
                            .iter()
                            .filter(|d| d.is_index() || d.is_manifest())
                            .map(|d| d.digest),
                    );
                }
                Document::Manifest(m) => {
                    for blob in std::iter::once(&m.config).chain(m.layers.iter()) {
                        // Foreign layers stay where their URLs say.
                        if blob.urls.is_empty() || blob_path(&self.path, &blob.digest).is_file() {
                            self.copy_blob(store, &blob.digest, blob.size)?;
                        }
                    }
                }
            }
            if !store.has(&digest) {
                store
                    .put_bytes(&bytes)
                    .map_err(|source| LayoutError::Image { path, source })?;
            }
        }
        Ok(())
    }

    fn copy_blob(
        &self,
        store: &ContentStore,
        digest: &Digest,
        size: u64,
    ) -> Result<(), LayoutError> {
        if store.has(digest) {
            return Ok(());
        }
        let path = blob_path(&self.path, digest);
        let image_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayoutError::Image { path, source }
        };
        let mut file = std::fs::File::open(&path).map_err(|source| LayoutError::Read {
            path: path.clone(),
            source,
        })?;
        let mut w = store.writer().map_err(image_err(&path))?;
        std::io::copy(&mut file, &mut w).map_err(|source| LayoutError::Read {
            path: path.clone(),
            source,
        })?;
        w.commit_exact(digest, size).map_err(image_err(&path))?;
        Ok(())
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, LayoutError> {
    let read = |source| LayoutError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(LayoutError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_paths_with_colons() {
        let r = LayoutRef::parse("oci-layout:///srv/lay:out/img:v1").unwrap();
        assert_eq!(r.path, PathBuf::from("/srv/lay:out/img"));
        assert_eq!(r.select, Select::Tag("v1".into()));
        let r = LayoutRef::parse("oci-layout://./img").unwrap();
        assert_eq!(
            (r.path, r.select),
            (PathBuf::from("./img"), Select::Default)
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = LayoutRef::parse(&format!("oci-layout://img@{d}")).unwrap();
        assert_eq!(r.select, Select::Digest(Digest::parse(&d).unwrap()));
        assert!(LayoutRef::parse("oci-layout://").is_err());
        assert!(LayoutRef::parse("oci-layout://img:").is_err());
        assert!(LayoutRef::parse("oci-layout://img@sha256:zz").is_err());
    }
}

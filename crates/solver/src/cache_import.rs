//! `--cache-from`: caches exported by `--cache-to` (here or on another
//! machine) read before the build, and looked up by key before an op runs.
//! A hit brings the op's layer into the store (copied from the layout, or
//! downloaded from the registry) instead of running the op. As with
//! buildx, a cache source that is missing or unreadable is a warning, never
//! a failure: the build then runs what it has to.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use kbuild_image::{ContentStore, Digest, Document, ImageConfig, Index, Manifest};
use kbuild_registry::Reference;

use crate::engine::Solver;
use crate::layer::LayerRef;
use crate::progress::Event;
use crate::remote_cache::{
    CacheConfig, CacheConfigError, CacheFrom, CacheLayer, CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_KEY,
};

/// Why an imported cache, or one of its layers, cannot be used: a warning,
/// after which the build runs without it.
#[derive(Debug, thiserror::Error)]
enum ImportError {
    /// The registry failed.
    #[error("{0}")]
    Registry(#[from] kbuild_registry::Error),
    /// The content store failed, or a document does not parse.
    #[error("{0}")]
    Store(#[from] kbuild_image::Error),
    /// A blocking thread died.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
    /// A layout's blob cannot be opened.
    #[error("open {}: {source}", path.display())]
    Open {
        /// The blob's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A layout's blob cannot be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The blob's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A layout's document is larger than any manifest or config.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The blob's path.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A layout's blob does not have the digest it is stored under.
    #[error("{} has digest {actual}", path.display())]
    Digest {
        /// The blob's path.
        path: PathBuf,
        /// The digest of its bytes.
        actual: Digest,
    },
    /// A layout's `index.json` cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadIndex {
        /// The path of `index.json`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A layout's `index.json` does not parse.
    #[error("{}: {source}", path.display())]
    Index {
        /// The path of `index.json`.
        path: PathBuf,
        /// Why.
        source: kbuild_image::Error,
    },
    /// A layout's index has several manifests, none of them tagged `tag`.
    #[error("{} lists no cache tagged {tag:?}", path.display())]
    NoTag {
        /// The path of `index.json`.
        path: PathBuf,
        /// The `tag=` of `--cache-from`.
        tag: String,
    },
    /// A layout's cache manifest does not parse.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest's digest.
        digest: Digest,
        /// Why.
        source: kbuild_image::Error,
    },
    /// A layout's manifest is an image's, not a cache's.
    #[error("manifest {digest} is not a build cache (its config is {media_type})")]
    NotACache {
        /// The manifest's digest.
        digest: Digest,
        /// Its config's media type.
        media_type: String,
    },
    /// A cache config does not parse.
    #[error("cache config: {0}")]
    CacheConfig(#[source] serde_json::Error),
    /// An image config's inline cache does not parse.
    #[error("inline cache {INLINE_CACHE_KEY}: {0}")]
    InlineCache(#[source] serde_json::Error),
    /// A cache config lists what this builder cannot use.
    #[error("{0}")]
    Records(#[from] CacheConfigError),
    /// A registry manifest's config is larger than any config.
    #[error("config {0} is too large")]
    ConfigTooLarge(Digest),
    /// A registry reference names neither a cache nor an inline cache.
    #[error("{0} is neither a build cache nor an image with an inline cache ({INLINE_CACHE_KEY})")]
    NoCache(String),
}

/// Where an imported cache's blobs are.
#[derive(Debug, Clone)]
enum Origin {
    /// `blobs/` of an OCI layout.
    Local(PathBuf),
    /// A registry repository.
    Registry(Reference),
}

/// One imported cache.
#[derive(Debug)]
struct Source {
    /// The flag value, for warnings.
    name: String,
    origin: Origin,
    /// Records by key: the layer and the history time.
    records: HashMap<String, (Option<CacheLayer>, Option<String>)>,
}

/// The caches of `--cache-from`, loaded.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    sources: Vec<Source>,
}

/// A key found in an imported cache, its layer now in the store.
#[derive(Debug)]
pub(crate) struct Hit {
    /// The layer the op added (in the build's compression).
    pub layer: Option<LayerRef>,
    /// The time of the op's history entry.
    pub created: Option<String>,
}

fn warn(solver: &Solver, what: &str, why: impl std::fmt::Display) {
    solver.progress.event(Event::Note(format!(
        "WARNING: --cache-from {what}: {why}; continuing without it"
    )));
}

impl Imported {
    /// Read every `--cache-from` of the solver; those that cannot be read
    /// are left out with a warning.
    pub async fn load(solver: &Solver) -> Imported {
        let mut sources = Vec::new();
        for from in &solver.external.from {
            let name = from.to_string();
            let loaded = match from {
                CacheFrom::Local { src, tag } => {
                    let (src, tag) = (src.clone(), tag.clone());
                    match tokio::task::spawn_blocking(move || load_local(&src, &tag)).await {
                        Ok(r) => r,
                        Err(e) => Err(e.into()),
                    }
                }
                CacheFrom::Registry { reference } => load_registry(solver, reference).await,
            };
            match loaded {
                Ok((origin, records)) => {
                    solver.progress.event(Event::Note(format!(
                        "importing cache manifest from {name}: {} records",
                        records.len()
                    )));
                    sources.push(Source {
                        name,
                        origin,
                        records,
                    })
                }
                Err(why) => warn(solver, &name, why),
            }
        }
        Imported { sources }
    }

    /// Whether no cache was imported.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The history time recorded under `key` (`Some(None)` for a record
    /// without one), for ops that add no layer: nothing to fetch.
    pub fn lookup_now(&self, key: &str) -> Option<Option<String>> {
        self.sources
            .iter()
            .find_map(|s| s.records.get(key))
            .map(|(_, created)| created.clone())
    }

    /// The result recorded under `key`, with its layer brought into the
    /// store; `None` when no cache has it or its layer cannot be fetched
    /// (a warning: the op then runs).
    pub async fn lookup(&self, solver: &Solver, key: &str) -> Option<Hit> {
        for s in &self.sources {
            let Some((layer, created)) = s.records.get(key) else {
                continue;
            };
            let layer = match layer {
                None => None,
                Some(l) => match fetch(solver, &s.origin, l).await {
                    Ok(l) => Some(l),
                    Err(why) => {
                        warn(solver, &s.name, format!("layer {}: {why}", l.blob.digest));
                        continue;
                    }
                },
            };
            return Some(Hit {
                layer,
                created: created.clone(),
            });
        }
        None
    }
}

/// Bring `l` into the store and give it in the build's compression.
async fn fetch(solver: &Solver, origin: &Origin, l: &CacheLayer) -> Result<LayerRef, ImportError> {
    let store = solver.store.clone();
    let (digest, size) = (l.blob.digest, l.blob.size);
    if !store.has(&digest) {
        match origin {
            Origin::Registry(r) => solver.registry.pull_blob(r, &digest, size, &store).await?,
            Origin::Local(dir) => {
                let path = blob_path(dir, &digest);
                let store = store.clone();
                tokio::task::spawn_blocking(move || copy_in(&store, &path, &digest, size)).await??
            }
        }
    }
    let compression = solver.opts.compression;
    let (blob, diff_id) = (l.blob.clone(), l.diff_id);
    let descriptor = tokio::task::spawn_blocking(move || {
        kbuild_image::layer_in_compression(&store, &blob, &diff_id, compression)
    })
    .await??;
    Ok(LayerRef {
        diff_id: l.diff_id,
        descriptor,
    })
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

/// Copy a layout's blob into the store, verifying digest and size.
fn copy_in(
    store: &ContentStore,
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<(), ImportError> {
    let mut file = std::fs::File::open(path).map_err(|source| ImportError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = store.writer()?;
    std::io::copy(&mut file, &mut w).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    w.commit_exact(digest, size)?;
    Ok(())
}

/// A layout's blob, at most `limit` bytes, verified against its digest.
fn read_blob(dir: &Path, digest: &Digest, limit: u64) -> Result<Vec<u8>, ImportError> {
    let path = blob_path(dir, digest);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(source) => return Err(ImportError::Open { path, source }),
    };
    let mut bytes = Vec::new();
    if let Err(source) = file.take(limit + 1).read_to_end(&mut bytes) {
        return Err(ImportError::Read { path, source });
    }
    if bytes.len() as u64 > limit {
        return Err(ImportError::TooLarge { path, limit });
    }
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(ImportError::Digest { path, actual });
    }
    Ok(bytes)
}

/// Manifests and configs larger than this are refused.
const MAX_DOCUMENT: u64 = 64 << 20;

type Records = HashMap<String, (Option<CacheLayer>, Option<String>)>;

/// Add a cache config's records to `records` (first one wins).
fn add_records(records: &mut Records, config: CacheConfig) -> Result<(), CacheConfigError> {
    config.check()?;
    for r in config.records {
        let layer = r.layer.and_then(|i| config.layers.get(i).cloned());
        records.entry(r.key).or_insert((layer, r.created));
    }
    Ok(())
}

/// The cache config a config blob holds: a cache manifest's own, or the
/// inline cache of an image config (none when the image has none).
fn cache_config(media_type: &str, bytes: &[u8]) -> Result<Option<CacheConfig>, ImportError> {
    if media_type == CACHE_CONFIG_MEDIA_TYPE {
        return serde_json::from_slice(bytes)
            .map(Some)
            .map_err(ImportError::CacheConfig);
    }
    let config = ImageConfig::parse(bytes)?;
    match config.extra.get(INLINE_CACHE_KEY) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(ImportError::InlineCache),
    }
}

/// An OCI layout written by `--cache-to type=local`: the manifest tagged
/// `tag` in `index.json` (or its only manifest).
fn load_local(src: &Path, tag: &str) -> Result<(Origin, Records), ImportError> {
    let index_path = src.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(|source| ImportError::ReadIndex {
        path: index_path.clone(),
        source,
    })?;
    let index = Index::parse(&bytes).map_err(|source| ImportError::Index {
        path: index_path.clone(),
        source,
    })?;
    let tagged = |d: &&kbuild_image::Descriptor| {
        d.annotations
            .get(kbuild_image::ANNOTATION_REF_NAME)
            .is_some_and(|t| t == tag)
    };
    let desc = match index.manifests.iter().find(tagged) {
        Some(d) => d,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(ImportError::NoTag {
                path: index_path,
                tag: tag.to_string(),
            })
        }
    };
    let manifest =
        Manifest::parse(&read_blob(src, &desc.digest, MAX_DOCUMENT)?).map_err(|source| {
            ImportError::Manifest {
                digest: desc.digest,
                source,
            }
        })?;
    if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
        return Err(ImportError::NotACache {
            digest: desc.digest,
            media_type: manifest.config.media_type,
        });
    }
    let bytes = read_blob(src, &manifest.config.digest, MAX_DOCUMENT)?;
    let mut records = Records::new();
    if let Some(c) = cache_config(&manifest.config.media_type, &bytes)? {
        add_records(&mut records, c)?;
    }
    Ok((Origin::Local(src.to_path_buf()), records))
}

/// A cache manifest pushed by `--cache-to type=registry`, or an image (one
/// manifest or an index) whose configs hold inline caches.
async fn load_registry(solver: &Solver, reference: &str) -> Result<(Origin, Records), ImportError> {
    let r = Reference::parse(reference)?;
    let (_, bytes) = solver.registry.resolve(&r).await?;
    let mut manifests = Vec::new();
    match Document::parse(&bytes)? {
        Document::Manifest(m) => manifests.push(m),
        Document::Index(index) => {
            for d in index.manifests.iter().filter(|d| d.is_manifest()) {
                let (_, bytes) = solver.registry.resolve(&r.with_digest(d.digest)).await?;
                manifests.push(Manifest::parse(&bytes)?);
            }
        }
    }
    let mut records = Records::new();
    let mut found = false;
    for m in manifests {
        if m.config.size > MAX_DOCUMENT {
            return Err(ImportError::ConfigTooLarge(m.config.digest));
        }
        solver
            .registry
            .pull_blob(&r, &m.config.digest, m.config.size, &solver.store)
            .await?;
        let bytes = solver.store.read(&m.config.digest)?;
        if let Some(c) = cache_config(&m.config.media_type, &bytes)? {
            add_records(&mut records, c)?;
            found = true;
        }
    }
    if !found {
        return Err(ImportError::NoCache(reference.to_string()));
    }
    Ok((Origin::Registry(r), records))
}

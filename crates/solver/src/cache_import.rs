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
    CacheConfig, CacheFrom, CacheLayer, CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_KEY,
};

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
                        Err(e) => Err(e.to_string()),
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
async fn fetch(solver: &Solver, origin: &Origin, l: &CacheLayer) -> Result<LayerRef, String> {
    let store = solver.store.clone();
    let (digest, size) = (l.blob.digest, l.blob.size);
    if !store.has(&digest) {
        match origin {
            Origin::Registry(r) => solver
                .registry
                .pull_blob(r, &digest, size, &store)
                .await
                .map_err(|e| e.to_string())?,
            Origin::Local(dir) => {
                let path = blob_path(dir, &digest);
                let store = store.clone();
                tokio::task::spawn_blocking(move || copy_in(&store, &path, &digest, size))
                    .await
                    .map_err(|e| e.to_string())??
            }
        }
    }
    let compression = solver.opts.compression;
    let (blob, diff_id) = (l.blob.clone(), l.diff_id);
    let descriptor = tokio::task::spawn_blocking(move || {
        kbuild_image::layer_in_compression(&store, &blob, &diff_id, compression)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
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
fn copy_in(store: &ContentStore, path: &Path, digest: &Digest, size: u64) -> Result<(), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut w = store.writer().map_err(|e| e.to_string())?;
    std::io::copy(&mut file, &mut w).map_err(|e| format!("read {}: {e}", path.display()))?;
    w.commit_exact(digest, size).map_err(|e| e.to_string())?;
    Ok(())
}

/// A layout's blob, at most `limit` bytes, verified against its digest.
fn read_blob(dir: &Path, digest: &Digest, limit: u64) -> Result<Vec<u8>, String> {
    let path = blob_path(dir, digest);
    let file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(format!("{} has digest {actual}", path.display()));
    }
    Ok(bytes)
}

/// Manifests and configs larger than this are refused.
const MAX_DOCUMENT: u64 = 64 << 20;

type Records = HashMap<String, (Option<CacheLayer>, Option<String>)>;

/// Add a cache config's records to `records` (first one wins).
fn add_records(records: &mut Records, config: CacheConfig) -> Result<(), String> {
    config.check()?;
    for r in config.records {
        let layer = r.layer.and_then(|i| config.layers.get(i).cloned());
        records.entry(r.key).or_insert((layer, r.created));
    }
    Ok(())
}

/// The cache config a config blob holds: a cache manifest's own, or the
/// inline cache of an image config (none when the image has none).
fn cache_config(media_type: &str, bytes: &[u8]) -> Result<Option<CacheConfig>, String> {
    if media_type == CACHE_CONFIG_MEDIA_TYPE {
        return serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| format!("cache config: {e}"));
    }
    let config = ImageConfig::parse(bytes).map_err(|e| e.to_string())?;
    match config.extra.get(INLINE_CACHE_KEY) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("inline cache {INLINE_CACHE_KEY}: {e}")),
    }
}

/// An OCI layout written by `--cache-to type=local`: the manifest tagged
/// `tag` in `index.json` (or its only manifest).
fn load_local(src: &Path, tag: &str) -> Result<(Origin, Records), String> {
    let index_path = src.join("index.json");
    let bytes = std::fs::read(&index_path)
        .map_err(|e| format!("cannot read {}: {e}", index_path.display()))?;
    let index = Index::parse(&bytes).map_err(|e| format!("{}: {e}", index_path.display()))?;
    let tagged = |d: &&kbuild_image::Descriptor| {
        d.annotations
            .get(kbuild_image::ANNOTATION_REF_NAME)
            .is_some_and(|t| t == tag)
    };
    let desc = match index.manifests.iter().find(tagged) {
        Some(d) => d,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(format!(
                "{} lists no cache tagged {tag:?}",
                index_path.display()
            ))
        }
    };
    let manifest = Manifest::parse(&read_blob(src, &desc.digest, MAX_DOCUMENT)?)
        .map_err(|e| format!("manifest {}: {e}", desc.digest))?;
    if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
        return Err(format!(
            "manifest {} is not a build cache (its config is {})",
            desc.digest, manifest.config.media_type
        ));
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
async fn load_registry(solver: &Solver, reference: &str) -> Result<(Origin, Records), String> {
    let r = Reference::parse(reference).map_err(|e| e.to_string())?;
    let (_, bytes) = solver
        .registry
        .resolve(&r)
        .await
        .map_err(|e| e.to_string())?;
    let mut manifests = Vec::new();
    match Document::parse(&bytes).map_err(|e| e.to_string())? {
        Document::Manifest(m) => manifests.push(m),
        Document::Index(index) => {
            for d in index.manifests.iter().filter(|d| d.is_manifest()) {
                let (_, bytes) = solver
                    .registry
                    .resolve(&r.with_digest(d.digest))
                    .await
                    .map_err(|e| e.to_string())?;
                manifests.push(Manifest::parse(&bytes).map_err(|e| e.to_string())?);
            }
        }
    }
    let mut records = Records::new();
    let mut found = false;
    for m in manifests {
        if m.config.size > MAX_DOCUMENT {
            return Err(format!("config {} is too large", m.config.digest));
        }
        solver
            .registry
            .pull_blob(&r, &m.config.digest, m.config.size, &solver.store)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = solver
            .store
            .read(&m.config.digest)
            .map_err(|e| e.to_string())?;
        if let Some(c) = cache_config(&m.config.media_type, &bytes)? {
            add_records(&mut records, c)?;
            found = true;
        }
    }
    if !found {
        return Err(format!(
            "{reference} is neither a build cache nor an image with an inline cache ({INLINE_CACHE_KEY})"
        ));
    }
    Ok((Origin::Registry(r), records))
}

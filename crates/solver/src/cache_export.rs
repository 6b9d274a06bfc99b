//! `--cache-to`: the op results of a build written out as a cache other
//! builders import with `--cache-from` (see [`crate::remote_cache`] for
//! the format). `mode=min` holds the steps of the images built (each
//! target's result and its parents), `mode=max` every step the build
//! computed, builder stages included. `type=local` writes an OCI image
//! layout through the same exporter as `-o type=oci,tar=false`,
//! `type=registry` pushes with the build's registry client and
//! credentials, `type=inline` goes into each image's config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kbuild_dockerfile::graph::{Graph, GraphTarget, Op, OpId, OpKind};
use kbuild_image::{Descriptor, Manifest};

use crate::engine::{Solver, State};
use crate::error::SolveError;
use crate::remote_cache::{
    CacheConfig, CacheDestination, CacheFrom, CacheMode, CacheTo, Recorded,
    CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_KEY,
};

/// A `--cache-to` that failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheExportError {
    /// Writing blobs or the layout failed.
    #[error("--cache-to {to}: {source}")]
    Store {
        /// The flag value.
        to: String,
        /// Why.
        source: kbuild_image::Error,
    },
    /// The push failed.
    #[error("--cache-to {to}: {source}")]
    Registry {
        /// The flag value.
        to: String,
        /// Why.
        source: kbuild_registry::Error,
    },
    /// The cache config could not be serialized.
    #[error("--cache-to {to}: cache config: {source}")]
    Config {
        /// The flag value.
        to: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The export thread died.
    #[error("--cache-to {to}: internal error: {source}")]
    Join {
        /// The flag value.
        to: String,
        /// Why.
        source: tokio::task::JoinError,
    },
}

/// The external caches of a build: what to import, where to export, and
/// the op results seen (only kept when something is exported).
#[derive(Debug, Default)]
pub(crate) struct External {
    pub from: Vec<CacheFrom>,
    pub to: Vec<CacheTo>,
    recorded: Mutex<HashMap<OpId, Recorded>>,
}

/// What a cache export wrote.
#[derive(Debug, Clone)]
pub struct CacheExported {
    /// The `--cache-to` value.
    pub to: String,
    /// How many op results it holds.
    pub records: usize,
    /// How many layers.
    pub layers: usize,
    /// The cache manifest (`None` for `type=inline`).
    pub manifest: Option<Descriptor>,
    /// The failure `ignore-error=true` turned into a warning.
    pub ignored: Option<String>,
}

impl External {
    fn inline(&self) -> bool {
        self.to
            .iter()
            .any(|t| t.destination == CacheDestination::Inline)
    }

    /// Keep `op`'s result `state` (on `parent`) for the export.
    pub fn record(&self, op: &Op, parent: &State, state: &State, in_image: bool) {
        if self.to.is_empty() || matches!(op.op, OpKind::Source(_)) {
            return;
        }
        let layer = (state.layers.len() > parent.layers.len())
            .then(|| state.layers.last().cloned())
            .flatten();
        let created = (state.config.history.len() > parent.config.history.len())
            .then(|| state.config.history.last().and_then(|h| h.created.clone()))
            .flatten();
        if let Ok(mut m) = self.recorded.lock() {
            m.insert(
                op.id.clone(),
                Recorded {
                    key: state.key.clone(),
                    layer,
                    created,
                    in_image,
                },
            );
        }
    }

    /// The records of `mode`.
    fn records(&self, mode: CacheMode) -> Vec<Recorded> {
        self.recorded
            .lock()
            .map(|m| {
                m.values()
                    .filter(|r| mode == CacheMode::Max || r.in_image)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `state`, the result of target `t`, with its config's inline cache:
    /// the records of `t`'s steps with `type=inline`, none otherwise (an
    /// inline cache a base image carried is not passed on).
    pub fn with_inline(
        &self,
        graph: &Graph,
        t: &GraphTarget,
        state: Arc<State>,
    ) -> Result<Arc<State>, SolveError> {
        let inline = self.inline();
        if !inline && !state.config.extra.contains_key(INLINE_CACHE_KEY) {
            return Ok(state);
        }
        let mut st = (*state).clone();
        st.config.extra.remove(INLINE_CACHE_KEY);
        if inline {
            // A panic while holding the lock left whole entries behind.
            let recorded = self
                .recorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut chain = Vec::new();
            let mut next = Some(&t.result);
            while let Some(id) = next {
                if let Some(r) = recorded.get(id) {
                    chain.push(r);
                }
                next = graph.op(id).and_then(|op| match op.op {
                    OpKind::Source(_) => None,
                    _ => op.inputs.first(),
                });
            }
            let config = CacheConfig::of(chain);
            let value = serde_json::to_value(&config).map_err(SolveError::Record)?;
            st.config.extra.insert(INLINE_CACHE_KEY.to_string(), value);
        }
        Ok(Arc::new(st))
    }
}

impl Solver {
    /// The same solver importing `from` before each build and recording
    /// op results for `to` (`--cache-from`, `--cache-to`).
    pub fn with_cache(mut self, from: Vec<CacheFrom>, to: Vec<CacheTo>) -> Solver {
        self.external = External {
            from,
            to,
            recorded: Mutex::default(),
        };
        self
    }

    /// Write the `--cache-to` caches of the last build (`type=inline` was
    /// written with the images). A failed export with `ignore-error=true`
    /// is reported in its [`CacheExported::ignored`].
    pub async fn export_cache(&self) -> Result<Vec<CacheExported>, CacheExportError> {
        let mut out = Vec::new();
        for to in &self.external.to {
            let name = to.to_string();
            let config = CacheConfig::of(self.external.records(to.mode).iter());
            let (records, layers) = (config.records.len(), config.layers.len());
            let result = match &to.destination {
                CacheDestination::Inline => Ok(None),
                _ => self.export_one(to, &name, config).await.map(Some),
            };
            out.push(match result {
                Ok(manifest) => CacheExported {
                    to: name,
                    records,
                    layers,
                    manifest,
                    ignored: None,
                },
                Err(e) if to.ignore_error => CacheExported {
                    to: name,
                    records: 0,
                    layers: 0,
                    manifest: None,
                    ignored: Some(e.to_string()),
                },
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }

    async fn export_one(
        &self,
        to: &CacheTo,
        name: &str,
        config: CacheConfig,
    ) -> Result<Descriptor, CacheExportError> {
        let store_err = |source| CacheExportError::Store {
            to: name.to_string(),
            source,
        };
        let bytes = serde_json::to_vec(&config).map_err(|source| CacheExportError::Config {
            to: name.to_string(),
            source,
        })?;
        let (digest, size) = self.store.put_bytes(&bytes).map_err(store_err)?;
        let manifest = Manifest::new(
            Descriptor::new(CACHE_CONFIG_MEDIA_TYPE, digest, size),
            config.layers.iter().map(|l| l.blob.clone()).collect(),
        );
        let root = manifest.write(&self.store).map_err(store_err)?;
        match &to.destination {
            CacheDestination::Local { dest, tag } => {
                let (store, root2, dest, tag) =
                    (self.store.clone(), root.clone(), dest.clone(), tag.clone());
                tokio::task::spawn_blocking(move || {
                    kbuild_image::export::oci_layout_dir(&store, &root2, &dest, Some(&tag))
                })
                .await
                .map_err(|source| CacheExportError::Join {
                    to: name.to_string(),
                    source,
                })?
                .map_err(store_err)?;
            }
            CacheDestination::Registry { reference } => {
                let registry_err = |source| CacheExportError::Registry {
                    to: name.to_string(),
                    source,
                };
                let r = kbuild_registry::Reference::parse(reference).map_err(registry_err)?;
                self.registry
                    .push(&[r], &root, &self.store)
                    .await
                    .map_err(registry_err)?;
            }
            CacheDestination::Inline => {}
        }
        Ok(root)
    }
}

//! Cache keys and records. An op's key is the sha256 of its id (which
//! covers its body, platform and inputs' ids), the keys of its inputs
//! (which cover their content: an image's manifest digest, a download's
//! digest, the files a copy or bind mount reads from the context) and the
//! build options that change its result. A finished op is recorded as
//! `cache/<key>` in the store (its config and layer), metadata ops
//! included, so a fully cached rebuild gives the same digests.

use std::sync::Arc;

use kbuild_image::{ContentStore, Digest, ImageConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::engine::State;
use crate::error::SolveError;
use crate::layer::LayerRef;

/// The hex sha256 of length-prefixed parts.
pub(crate) fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Builds a key from parts.
#[derive(Debug, Default)]
pub(crate) struct KeyParts(Vec<Vec<u8>>);

impl KeyParts {
    /// Add a part.
    pub fn push(&mut self, part: impl Into<Vec<u8>>) {
        self.0.push(part.into());
    }

    /// The key.
    pub fn finish(&self) -> String {
        let refs: Vec<&[u8]> = self.0.iter().map(|p| p.as_slice()).collect();
        key(&refs)
    }
}

/// The cache record of a finished op.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Blobs prune must keep (the config).
    children: Vec<Digest>,
    /// The layer the op added, if any.
    layer: Option<LayerRef>,
    /// The config after the op.
    config: Digest,
}

/// The state recorded under `key`, on top of `parent`'s layers; `None`
/// when there is no usable record. Its layer comes in `compression`: a
/// cache made by a gzip build serves a zstd build with zstd layers.
pub(crate) fn cached(
    store: &ContentStore,
    key: &str,
    parent: &Arc<State>,
    compression: kbuild_image::Compression,
) -> Result<Option<State>, SolveError> {
    let Some(rec_digest) = store.get_ref(&format!("cache/{key}"))? else {
        return Ok(None);
    };
    if !store.has(&rec_digest) {
        return Ok(None);
    }
    let rec: Record = match serde_json::from_slice(&store.read(&rec_digest)?) {
        Ok(r) => r,
        Err(_) => return Ok(None),
    };
    if !store.has(&rec.config)
        || rec
            .layer
            .as_ref()
            .is_some_and(|l| !store.has(&l.descriptor.digest))
    {
        return Ok(None);
    }
    let config = ImageConfig::parse(&store.read(&rec.config)?)?;
    let mut layers = parent.layers.clone();
    if let Some(mut l) = rec.layer {
        l.descriptor =
            kbuild_image::layer_in_compression(store, &l.descriptor, &l.diff_id, compression)?;
        layers.push(l);
    }
    Ok(Some(State {
        layers,
        config,
        key: key.to_string(),
    }))
}

/// Record `st` (which added `layer`) under its key.
pub(crate) fn record(
    store: &ContentStore,
    st: &State,
    layer: Option<LayerRef>,
) -> Result<(), SolveError> {
    let (config, _) = store.put_bytes(&st.config.to_bytes()?)?;
    let rec = Record {
        children: vec![config],
        layer,
        config,
    };
    let bytes = serde_json::to_vec(&rec).map_err(SolveError::Record)?;
    let (d, _) = store.put_bytes(&bytes)?;
    store.set_ref(&format!("cache/{}", st.key), &d)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        // Moving a byte from one part to the next changes the key.
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"ab", b"c"]), key(&[b"ab", b"c"]));
        let mut k = KeyParts::default();
        k.push("ab");
        k.push(b"c".to_vec());
        assert_eq!(k.finish(), key(&[b"ab", b"c"]));
    }
}

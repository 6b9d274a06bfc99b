//! The index of a build fanned out over several builders: each builder has
//! pushed its platforms' blobs and manifests by digest, the client puts the
//! index that lists them all, then the tags.

use bytes::Bytes;
use kbuild_image::Digest;

use crate::client::{Client, Scope};
use crate::error::{Error, ManifestProblem, ReferenceProblem, Result};
use crate::manifest::{self, Document};
use crate::reference::Reference;

impl Client {
    /// Puts `index` (an image index's exact bytes, of media type
    /// `media_type`) by digest in every target repository, then under each
    /// target's tag. Every manifest it lists must already be in each
    /// repository (pushed by digest by the builders that made them): the
    /// registry refuses an index that names a manifest it does not hold,
    /// and then no tag is written. A target that pins a digest must pin the
    /// index's. Returns the index's digest.
    pub async fn push_index(
        &self,
        targets: &[Reference],
        index: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let digest = Digest::of(index);
        let invalid = |reason: ManifestProblem| Error::InvalidManifest {
            what: format!("index {digest}"),
            source_name: "the merged build".into(),
            reason: Box::new(reason),
        };
        if !manifest::is_index(media_type) {
            return Err(invalid(ManifestProblem::NotAnIndex(media_type.to_string())));
        }
        Document::parse(index).map_err(invalid)?;
        for target in targets {
            if let Some(pinned) = target.digest() {
                if pinned != digest.to_string() {
                    return Err(Error::InvalidReference {
                        reference: target.to_string(),
                        reason: ReferenceProblem::PinnedDigest {
                            pinned: pinned.to_string(),
                            what: "index",
                            pushed: digest,
                        },
                    });
                }
            }
        }
        let bytes = Bytes::copy_from_slice(index);
        let mut repositories: Vec<(&str, &str)> = Vec::new();
        for t in targets {
            let key = (t.registry(), t.repository());
            if !repositories.contains(&key) {
                repositories.push(key);
            }
        }
        for (registry, repository) in &repositories {
            let scope = Scope::push(registry, repository);
            self.put_manifest(&scope, &digest.to_string(), &digest, media_type, &bytes)
                .await?;
        }
        // Tags last: only once every repository holds the index.
        for target in targets {
            if let Some(tag) = target.tag() {
                let scope = Scope::push(target.registry(), target.repository());
                self.put_manifest(&scope, tag, &digest, media_type, &bytes)
                    .await?;
            }
        }
        Ok(digest)
    }
}

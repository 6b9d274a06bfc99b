//! Media types and a lenient view of manifests and indexes, enough to walk them
//! (OCI and Docker schema 2 alike) without rewriting their bytes.

use serde::Deserialize;

use crate::error::ManifestProblem;

/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Accept header for manifest GETs.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Layers that must not be pushed (Windows base layers and other foreign blobs).
const NON_DISTRIBUTABLE: [&str; 3] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub(crate) fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// A descriptor as found in a manifest or index, platform parsed with our own type.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Entry {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<kbuild_platform::Platform>,
}

impl Entry {
    /// Whether the blob must be left out of pushes (foreign layers).
    pub fn non_distributable(&self) -> bool {
        NON_DISTRIBUTABLE.contains(&self.media_type.as_str())
    }
}

/// Either an index (`manifests`) or a manifest (`config` + `layers`).
#[derive(Debug, Deserialize)]
pub(crate) struct Document {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Entry>>,
    #[serde(default)]
    pub config: Option<Entry>,
    #[serde(default)]
    pub layers: Vec<Entry>,
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Document, ManifestProblem> {
        serde_json::from_slice(bytes).map_err(ManifestProblem::Json)
    }

    /// The media type: the document's own field, else the transport's, else
    /// guessed from the shape.
    pub fn media_type(&self, transport: Option<&str>) -> String {
        if let Some(mt) = self.media_type.as_deref().filter(|m| !m.is_empty()) {
            return mt.to_string();
        }
        if let Some(mt) = transport.filter(|m| is_index(m) || is_manifest(m)) {
            return mt.to_string();
        }
        if self.manifests.is_some() {
            OCI_INDEX.to_string()
        } else {
            OCI_MANIFEST.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::error::Error as _;

    /// A manifest that does not parse keeps serde's error as the source of
    /// `InvalidManifest`, and the message is still one line naming it.
    #[test]
    fn an_unparsable_manifest_keeps_the_json_error() {
        let reason = Document::parse(b"{\"layers\": 3}").unwrap_err();
        assert!(matches!(reason, ManifestProblem::Json(_)), "{reason}");
        let err = Error::InvalidManifest {
            what: "r.example/app:1".into(),
            source_name: "r.example".into(),
            reason: Box::new(reason),
        };
        let text = err.to_string();
        assert!(
            text.starts_with(
                "invalid manifest r.example/app:1 from r.example: invalid type: integer `3`"
            ),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        let problem = err.source().expect("the problem is the source");
        let json = problem.source().expect("serde's error is kept");
        assert!(json.downcast_ref::<serde_json::Error>().is_some());
    }
}

//! OCI and Docker schema 2 documents: media types, descriptors, image config,
//! manifest and index, written as canonical JSON and parsed from either flavour.
//!
//! Canonical JSON here means: object keys sorted bytewise, no insignificant
//! whitespace, serde_json string escaping. The same value always gives the
//! same bytes, hence the same digest.
//!
//! The descriptor type is this crate's own rather than oci-spec's: oci-spec
//! 0.10 serializes a platform's `os.version`/`os.features` as
//! `os_version`/`os_features` and keeps annotations in a `HashMap`, which
//! would make Windows platform matching and byte-stable output impossible.
//! It is the workspace's one document model: the registry client speaks it
//! too.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{DocumentProblem, Error, Result};
use crate::store::ContentStore;

/// OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI empty JSON blob (`{}`).
pub const MEDIA_TYPE_OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema 2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 manifest (not supported; recognised to reject it clearly).
pub const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 manifest (not supported).
pub const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker zstd layer (written by some tools).
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker uncompressed layer.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) gzip layer.
pub const MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Annotation: the tag of a manifest in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation: the image creation time.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Annotation used by containerd and Docker for the full image name.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Serializes `value` as canonical JSON (sorted keys, compact).
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|source| Error::Json {
        what: "a document being written".to_string(),
        source,
    })?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let json_err = |source| Error::Json {
        what: "a document being written".to_string(),
        source,
    };
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).map_err(json_err)?;
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).map_err(json_err)?,
    }
    Ok(())
}

/// The platform of a descriptor, with the OCI field names. Converts from and
/// to `kbuild_platform::Platform` with `From` (the workspace's one platform
/// conversion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// CPU architecture, GOARCH style.
    pub architecture: String,
    /// Operating system, GOOS style.
    pub os: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    /// CPU variant, e.g. `v7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Reserved by the spec; kept for round trips.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub features: Vec<String>,
}

impl From<&kbuild_platform::Platform> for DescriptorPlatform {
    fn from(p: &kbuild_platform::Platform) -> DescriptorPlatform {
        DescriptorPlatform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            os_version: p.os_version.clone(),
            os_features: p.os_features.clone(),
            variant: p.variant.clone(),
            features: Vec::new(),
        }
    }
}

impl From<&DescriptorPlatform> for DescriptorPlatform {
    fn from(p: &DescriptorPlatform) -> DescriptorPlatform {
        p.clone()
    }
}

impl From<&DescriptorPlatform> for kbuild_platform::Platform {
    /// The platform as found (empty variant or os version as none); call
    /// [`kbuild_platform::Platform::normalized`] before comparing fields.
    fn from(p: &DescriptorPlatform) -> kbuild_platform::Platform {
        kbuild_platform::Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone().filter(|v| !v.is_empty()),
            os_version: p.os_version.clone().filter(|v| !v.is_empty()),
            os_features: p.os_features.clone(),
        }
    }
}

/// A content descriptor: media type, digest, size and optional extras.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternative download locations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Platform of the referenced manifest (in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    /// Artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Embedded content, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor with just the required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            data: None,
        }
    }

    /// Adds an annotation (builder style).
    pub fn with_annotation(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Descriptor {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Sets the platform (builder style).
    pub fn with_platform(mut self, platform: DescriptorPlatform) -> Descriptor {
        self.platform = Some(platform);
        self
    }

    /// Whether this points at an index or manifest list.
    pub fn is_index(&self) -> bool {
        is_index_media_type(&self.media_type)
    }

    /// Whether this points at an image manifest.
    pub fn is_manifest(&self) -> bool {
        is_manifest_media_type(&self.media_type)
    }
}

/// Whether `media_type` is an OCI index or Docker manifest list.
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// Whether `media_type` is an OCI or Docker schema 2 image manifest.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Docker's health check (an extension of the OCI config). Durations are
/// nanoseconds, as Docker writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Time between checks, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Time before a check is considered hung, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Start period, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Interval during the start period, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Fields this crate does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `config` object of an image config: how to run the container. OCI
/// fields plus Docker's `Healthcheck`, `Shell`, `OnBuild` and `ArgsEscaped`;
/// unknown fields are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `user[:group]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `port/proto` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    /// `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volume paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker: Windows argv escaping flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// Docker extension: health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// Docker extension: shell for shell-form instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Docker extension: ONBUILD triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// Fields this crate does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layers, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, e.g. `RUN /bin/sh -c make # buildkit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment, e.g. `buildkit.dockerfile.v0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step added no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    /// Fields this crate does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An image config (OCI `application/vnd.oci.image.config.v1+json`, same
/// shape as Docker's `application/vnd.docker.container.image.v1+json`).
/// Unknown top-level fields (`container_config`, `docker_version`, ...) are
/// kept in `extra`, so parse → write keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Run configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
    /// Build history, oldest first.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields this crate does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// An empty config for `platform` (a `kbuild_platform::Platform` or a
    /// [`DescriptorPlatform`]).
    pub fn for_platform(platform: impl Into<DescriptorPlatform>) -> ImageConfig {
        let p = platform.into();
        ImageConfig {
            architecture: p.architecture,
            os: p.os,
            os_version: p.os_version,
            os_features: (!p.os_features.is_empty()).then_some(p.os_features),
            variant: p.variant,
            ..ImageConfig::default()
        }
    }

    /// Parses a pulled or stored config (OCI or Docker).
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "image config".to_string(),
            source,
        })
    }

    /// The canonical JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        canonical_json(self)
    }

    /// The platform this config is for.
    pub fn platform(&self) -> DescriptorPlatform {
        DescriptorPlatform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone().unwrap_or_default(),
            variant: self.variant.clone(),
            features: Vec::new(),
        }
    }

    /// Appends a layer's diff id and its history entry.
    pub fn push_layer(&mut self, diff_id: Digest, history: History) {
        self.rootfs.diff_ids.push(diff_id);
        self.history.push(history);
    }

    /// Appends a history entry for a step that added no layer.
    pub fn push_empty_layer(&mut self, mut history: History) {
        history.empty_layer = Some(true);
        self.history.push(history);
    }

    /// Writes the config to the store with `media_type` (normally
    /// [`MEDIA_TYPE_OCI_CONFIG`]) and returns its descriptor.
    pub fn write(&self, store: &ContentStore, media_type: &str) -> Result<Descriptor> {
        put_document(store, media_type, self)
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type (required for Docker, recommended for OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI manifest for `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Parses a manifest, rejecting indexes and schema 1.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        match Document::parse(bytes)? {
            Document::Manifest(m) => Ok(m),
            Document::Index(_) => Err(Error::InvalidDocument {
                what: "manifest".to_string(),
                reason: DocumentProblem::NotAManifest,
            }),
        }
    }

    /// The media type to use in a descriptor of this manifest.
    pub fn descriptor_media_type(&self) -> &str {
        self.media_type
            .as_deref()
            .unwrap_or(MEDIA_TYPE_OCI_MANIFEST)
    }

    /// The canonical JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        canonical_json(self)
    }

    /// Writes the manifest to the store and returns its descriptor.
    pub fn write(&self, store: &ContentStore) -> Result<Descriptor> {
        put_document(store, self.descriptor_media_type(), self)
    }
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests, each normally with a platform.
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    /// Subject (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl Default for Index {
    fn default() -> Index {
        Index::new()
    }
}

impl Index {
    /// An empty OCI index.
    pub fn new() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_INDEX.to_string()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Adds a manifest descriptor for `platform` (a
    /// `kbuild_platform::Platform` or a [`DescriptorPlatform`]).
    pub fn push_manifest(&mut self, manifest: Descriptor, platform: impl Into<DescriptorPlatform>) {
        self.manifests.push(manifest.with_platform(platform.into()));
    }

    /// Parses an index, rejecting image manifests.
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        match Document::parse(bytes)? {
            Document::Index(i) => Ok(i),
            Document::Manifest(_) => Err(Error::InvalidDocument {
                what: "index".to_string(),
                reason: DocumentProblem::NotAnIndex,
            }),
        }
    }

    /// The media type to use in a descriptor of this index.
    pub fn descriptor_media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(MEDIA_TYPE_OCI_INDEX)
    }

    /// The canonical JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        canonical_json(self)
    }

    /// Writes the index to the store and returns its descriptor.
    pub fn write(&self, store: &ContentStore) -> Result<Descriptor> {
        put_document(store, self.descriptor_media_type(), self)
    }
}

/// A pulled top-level document: either an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // parsed once per pull; boxing buys nothing
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An index or manifest list.
    Index(Index),
}

impl Document {
    /// Parses a manifest or index of either flavour. The kind comes from the
    /// document's `mediaType` when present, else from its shape (`manifests`
    /// versus `config`), as the OCI spec allows the field to be missing.
    pub fn parse(bytes: &[u8]) -> Result<Document> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "manifest or index".to_string(),
            source,
        })?;
        let invalid = |reason| Error::InvalidDocument {
            what: "manifest or index".to_string(),
            reason,
        };
        let media_type = value.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let schema = value.get("schemaVersion").and_then(Value::as_u64);
        if media_type == MEDIA_TYPE_DOCKER_SCHEMA1
            || media_type == MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED
            || schema == Some(1)
        {
            return Err(invalid(DocumentProblem::Schema1));
        }
        if schema != Some(2) {
            return Err(invalid(DocumentProblem::SchemaVersion(schema)));
        }
        let is_index = if media_type.is_empty() {
            value.get("manifests").is_some()
        } else if is_index_media_type(media_type) {
            true
        } else if is_manifest_media_type(media_type) {
            false
        } else {
            return Err(invalid(DocumentProblem::MediaType(media_type.to_string())));
        };
        let parse_err = |source| Error::Json {
            what: if is_index { "index" } else { "manifest" }.to_string(),
            source,
        };
        if is_index {
            Ok(Document::Index(
                serde_json::from_value(value).map_err(parse_err)?,
            ))
        } else {
            Ok(Document::Manifest(
                serde_json::from_value(value).map_err(parse_err)?,
            ))
        }
    }
}

/// Writes `value` as canonical JSON into the store; returns its descriptor.
pub fn put_document<T: Serialize + ?Sized>(
    store: &ContentStore,
    media_type: &str,
    value: &T,
) -> Result<Descriptor> {
    let bytes = canonical_json(value)?;
    let (digest, size) = store.put_bytes(&bytes)?;
    Ok(Descriptor::new(media_type, digest, size))
}

/// Blobs a JSON document refers to: every object shaped like a descriptor
/// (`digest` + `size`) with its media type, and every entry of a top-level
/// `children` list (see [`crate::ChildrenList`]).
pub(crate) fn referenced_blobs(value: &Value) -> Vec<(Digest, Option<String>)> {
    let mut out = Vec::new();
    if let Some(children) = value.get("children").and_then(Value::as_array) {
        for c in children {
            if let Some(d) = c.as_str().and_then(|s| Digest::from_str(s).ok()) {
                out.push((d, None));
            }
        }
    }
    collect_descriptors(value, &mut out);
    out
}

fn collect_descriptors(value: &Value, out: &mut Vec<(Digest, Option<String>)>) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(d)), Some(Value::Number(_))) =
                (map.get("digest"), map.get("size"))
            {
                if let Ok(d) = Digest::from_str(d) {
                    let mt = map
                        .get("mediaType")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    out.push((d, mt));
                }
            }
            for v in map.values() {
                collect_descriptors(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_descriptors(v, out);
            }
        }
        _ => {}
    }
}

/// Docker and some registries write `null` for empty lists and maps.
fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

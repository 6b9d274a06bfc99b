//! `--provenance`: an SLSA provenance attestation per image, in BuildKit's
//! format, attached to the index as BuildKit does. Each platform's image
//! gets an attestation manifest (platform `unknown/unknown`, annotated
//! `vnd.docker.reference.type=attestation-manifest` and
//! `vnd.docker.reference.digest=<image manifest>`) whose one layer is an
//! in-toto statement (`application/vnd.in-toto+json`, annotated with its
//! `in-toto.io/predicate-type`) with an SLSA v0.2 predicate: the builder,
//! the frontend and its parameters, the base images with their digests.

use std::collections::BTreeMap;

use kbuild_dockerfile::graph::{Graph, ImagePin, OpId, OpKind, SourceOp};
use kbuild_image::{ContentStore, Descriptor, DescriptorPlatform, Digest, Manifest};
use kbuild_platform::Platform;
use serde_json::{json, Value};

/// The in-toto statement type BuildKit writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v0.1";
/// SLSA provenance v0.2.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v0.2";
/// BuildKit's build type.
pub const BUILD_TYPE: &str = "https://mobyproject.org/buildkit@v1";
/// The media type of an in-toto statement layer.
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation naming a statement layer's predicate type.
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";
/// The annotation saying what an attestation manifest is.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The annotation naming the image manifest an attestation is about.
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// The value of [`ANNOTATION_REFERENCE_TYPE`] on attestation manifests.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// How much the provenance says (`--provenance mode=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvenanceMode {
    /// The builder, the frontend, its arguments and the materials.
    Min,
    /// Also the build's steps (the op graph) and their source lines.
    Max,
}

/// What a provenance attestation records about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceRequest {
    /// How much it says.
    pub mode: ProvenanceMode,
    /// The frontend's parameters as BuildKit names them
    /// (`build-arg:NAME`, `label:KEY`, `target`, `context:NAME`).
    pub args: BTreeMap<String, String>,
    /// The local sources the build read (`context`, `dockerfile`, named
    /// directory contexts).
    pub locals: Vec<String>,
    /// The Dockerfile's name (`configSource.entryPoint`).
    pub entry_point: String,
    /// Image names the result is exported under (the statement's subjects).
    pub names: Vec<String>,
}

/// What a build was asked, for [`ProvenanceRequest::new`].
#[derive(Debug, Clone, Default)]
pub struct Invocation<'a> {
    /// `--build-arg` values.
    pub build_args: Vec<(&'a str, &'a str)>,
    /// `--label` values.
    pub labels: Vec<(&'a str, &'a str)>,
    /// `--target`.
    pub target: Option<&'a str>,
    /// `--build-context` values, name and value as given.
    pub contexts: Vec<(&'a str, &'a str)>,
    /// `--build-context` names that are local directories.
    pub context_dirs: Vec<&'a str>,
    /// Whether there is a context directory.
    pub has_context: bool,
    /// The Dockerfile's name.
    pub dockerfile: &'a str,
    /// Names of the image outputs.
    pub names: Vec<&'a str>,
}

impl ProvenanceRequest {
    /// The request BuildKit's Dockerfile frontend would record: its
    /// options named as BuildKit names them.
    pub fn new(mode: ProvenanceMode, inv: &Invocation<'_>) -> ProvenanceRequest {
        let mut args = BTreeMap::new();
        for (k, v) in &inv.build_args {
            args.insert(format!("build-arg:{k}"), v.to_string());
        }
        for (k, v) in &inv.labels {
            args.insert(format!("label:{k}"), v.to_string());
        }
        for (k, v) in &inv.contexts {
            args.insert(format!("context:{k}"), v.to_string());
        }
        if let Some(t) = inv.target {
            args.insert("target".to_string(), t.to_string());
        }
        let mut locals = Vec::new();
        if inv.has_context {
            locals.push("context".to_string());
        }
        locals.push("dockerfile".to_string());
        locals.extend(inv.context_dirs.iter().map(|n| n.to_string()));
        ProvenanceRequest {
            mode,
            args,
            locals,
            entry_point: inv.dockerfile.to_string(),
            names: inv.names.iter().map(|n| n.to_string()).collect(),
        }
    }
}

/// A `--provenance` value that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --provenance value {value:?}: {reason}")]
pub struct ProvenanceError {
    /// The value.
    pub value: String,
    /// What is wrong.
    #[source]
    pub reason: ProvenanceProblem,
}

/// What is wrong with a `--provenance` value ([`ProvenanceError`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProvenanceProblem {
    /// Neither a boolean nor `KEY=VALUE` fields.
    #[error("use true, false, or mode=min|max")]
    NotFields,
    /// `mode=` other than min or max.
    #[error("mode is min or max")]
    Mode,
    /// A field buildx's provenance attestation does not take.
    #[error("unsupported field {0:?}; supported: mode=min|max, disabled=true|false")]
    UnsupportedField(String),
}

/// Parse a `--provenance` value as buildx does: `true`/`1` (mode=min),
/// `false`/`0` (none), or `mode=min|max` (with `type=provenance` allowed,
/// `disabled=true` meaning none). `None` is no attestation.
pub fn parse_mode(value: &str) -> Result<Option<ProvenanceMode>, ProvenanceError> {
    let bad = |reason| ProvenanceError {
        value: value.to_string(),
        reason,
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => return Ok(Some(ProvenanceMode::Min)),
        "false" | "0" => return Ok(None),
        _ => {}
    }
    let mut mode = ProvenanceMode::Min;
    for field in value.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| bad(ProvenanceProblem::NotFields))?;
        match (k.trim(), v.trim()) {
            ("mode", "min") => mode = ProvenanceMode::Min,
            ("mode", "max") => mode = ProvenanceMode::Max,
            ("mode", _) => return Err(bad(ProvenanceProblem::Mode)),
            ("type", "provenance") => {}
            ("disabled", "true") => return Ok(None),
            ("disabled", "false") => {}
            (other, _) => return Err(bad(ProvenanceProblem::UnsupportedField(other.to_string()))),
        }
    }
    Ok(Some(mode))
}

/// A base image as a material: its reference, platform and manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Material {
    pub reference: String,
    pub platform: String,
    pub digest: Digest,
}

/// The image sources `target` reads (through any input), each once.
pub(crate) fn image_sources(
    graph: &Graph,
    target: &OpId,
) -> Vec<(String, String, Option<ImagePin>)> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![target.clone()];
    let mut out = Vec::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(op) = graph.op(&id) else { continue };
        if let OpKind::Source(SourceOp::Image {
            reference,
            platform,
            pin,
        }) = &op.op
        {
            let pair = (reference.clone(), platform.clone(), pin.clone());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        stack.extend(op.inputs.iter().cloned());
    }
    out.sort();
    out
}

/// `pkg:docker/NAME@TAG?platform=...` as BuildKit writes materials and
/// subjects (the platform's slashes escaped).
fn purl(reference: &str, platform: &str) -> String {
    let (name, version) = match kbuild_registry::Reference::parse(reference) {
        Ok(r) => {
            let name = format!("{}/{}", r.registry(), r.repository());
            let version = match (r.digest(), r.tag()) {
                (Some(d), _) => d.to_string(),
                (None, Some(t)) => t.to_string(),
                (None, None) => "latest".to_string(),
            };
            (name, format!("@{version}"))
        }
        // An oci-layout:// context: named as given.
        Err(_) => (reference.to_string(), String::new()),
    };
    format!(
        "pkg:docker/{name}{version}?platform={}",
        platform.replace('/', "%2F")
    )
}

fn digest_set(d: &Digest) -> Value {
    json!({ d.algorithm(): d.hex() })
}

/// The in-toto statement for the image `manifest` of `platform`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn statement(
    req: &ProvenanceRequest,
    graph: &Graph,
    target: &OpId,
    platform: &Platform,
    manifest: &Digest,
    materials: &[Material],
    started: &str,
    finished: &str,
) -> Value {
    let subjects: Vec<Value> = if req.names.is_empty() {
        vec![json!({ "name": "_", "digest": digest_set(manifest) })]
    } else {
        req.names
            .iter()
            .map(|n| json!({ "name": purl(n, &platform.to_string()), "digest": digest_set(manifest) }))
            .collect()
    };
    let materials: Vec<Value> = materials
        .iter()
        .map(|m| json!({ "uri": purl(&m.reference, &m.platform), "digest": digest_set(&m.digest) }))
        .collect();
    let locals: Vec<Value> = req.locals.iter().map(|n| json!({ "name": n })).collect();
    let mut predicate = json!({
        "builder": { "id": format!("pkg:generic/kubectl-build@{}", env!("CARGO_PKG_VERSION")) },
        "buildType": BUILD_TYPE,
        "materials": materials,
        "invocation": {
            "configSource": { "entryPoint": req.entry_point },
            "parameters": {
                "frontend": "dockerfile.v0",
                "args": req.args,
                "locals": locals,
            },
            "environment": { "platform": platform.to_string() },
        },
        "metadata": {
            "buildStartedOn": started,
            "buildFinishedOn": finished,
            "completeness": {
                "parameters": req.mode == ProvenanceMode::Max,
                "environment": true,
                "materials": false,
            },
            "reproducible": false,
        },
    });
    if req.mode == ProvenanceMode::Max {
        // The steps this image needed, inputs first, as the graph has them.
        let needed = needed_ops(graph, target);
        let steps: Vec<Value> = graph
            .ops
            .iter()
            .filter(|o| needed.contains(&o.id))
            .map(|o| {
                json!({
                    "id": o.id.0,
                    "op": o.op,
                    "inputs": o.inputs,
                    "platform": o.platform,
                    "lines": o.meta.lines,
                })
            })
            .collect();
        predicate["buildConfig"] = json!({ "llbDefinition": steps });
    }
    json!({
        "_type": STATEMENT_TYPE,
        "predicateType": PREDICATE_TYPE,
        "subject": subjects,
        "predicate": predicate,
    })
}

fn needed_ops(graph: &Graph, target: &OpId) -> std::collections::HashSet<OpId> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![target.clone()];
    while let Some(id) = stack.pop() {
        if seen.insert(id.clone()) {
            if let Some(op) = graph.op(&id) {
                stack.extend(op.inputs.iter().cloned());
            }
        }
    }
    seen
}

/// Write `statement` as the attestation manifest of the image `manifest`
/// and return its index entry.
pub(crate) fn write_attestation(
    store: &ContentStore,
    statement: &Value,
    manifest: &Digest,
) -> Result<Descriptor, kbuild_image::Error> {
    let bytes = serde_json::to_vec(statement).map_err(|source| kbuild_image::Error::Json {
        what: "provenance statement".to_string(),
        source,
    })?;
    let (digest, size) = store.put_bytes(&bytes)?;
    let layer = Descriptor::new(MEDIA_TYPE_IN_TOTO, digest, size)
        .with_annotation(ANNOTATION_PREDICATE_TYPE, PREDICATE_TYPE);
    // BuildKit's attestation config: an image config of platform
    // unknown/unknown whose one diff id is the statement.
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [digest.to_string()] },
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|source| kbuild_image::Error::Json {
        what: "attestation config".to_string(),
        source,
    })?;
    let (config_digest, config_size) = store.put_bytes(&config_bytes)?;
    let config = Descriptor::new(
        kbuild_image::MEDIA_TYPE_OCI_CONFIG,
        config_digest,
        config_size,
    );
    let desc = Manifest::new(config, vec![layer]).write(store)?;
    Ok(desc
        .with_annotation(ANNOTATION_REFERENCE_TYPE, ATTESTATION_MANIFEST)
        .with_annotation(ANNOTATION_REFERENCE_DIGEST, manifest.to_string())
        .with_platform(DescriptorPlatform {
            architecture: "unknown".to_string(),
            os: "unknown".to_string(),
            ..Default::default()
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_buildx() {
        assert_eq!(parse_mode("true"), Ok(Some(ProvenanceMode::Min)));
        assert_eq!(parse_mode("false"), Ok(None));
        assert_eq!(parse_mode("mode=max"), Ok(Some(ProvenanceMode::Max)));
        assert_eq!(
            parse_mode("type=provenance,mode=min"),
            Ok(Some(ProvenanceMode::Min))
        );
        assert_eq!(parse_mode("disabled=true"), Ok(None));
        assert!(parse_mode("mode=full").is_err());
        assert!(parse_mode("builder-id=x").is_err());
    }

    #[test]
    fn refusals_name_the_rule() {
        let e = parse_mode("builder-id=x").unwrap_err();
        assert_eq!(
            e.reason,
            ProvenanceProblem::UnsupportedField("builder-id".into())
        );
        assert_eq!(
            e.to_string(),
            r#"invalid --provenance value "builder-id=x": unsupported field "builder-id"; supported: mode=min|max, disabled=true|false"#
        );
        assert_eq!(
            parse_mode("mode=full").unwrap_err().to_string(),
            r#"invalid --provenance value "mode=full": mode is min or max"#
        );
        assert_eq!(
            parse_mode("yes").unwrap_err().reason,
            ProvenanceProblem::NotFields
        );
    }

    #[test]
    fn purls() {
        assert_eq!(
            purl("busybox", "linux/arm/v7"),
            "pkg:docker/docker.io/library/busybox@latest?platform=linux%2Farm%2Fv7"
        );
        assert_eq!(
            purl("127.0.0.1:5000/a/b:1", "linux/amd64"),
            "pkg:docker/127.0.0.1:5000/a/b@1?platform=linux%2Famd64"
        );
    }
}

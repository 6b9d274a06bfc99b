//! What a build is asked to do besides the Dockerfile: outputs, secrets, SSH,
//! network and hosts. The CLI parses its flags into these types; every parser
//! here returns an error that names the offending flag value.

use std::collections::BTreeMap;
use std::path::PathBuf;

mod problem;

pub use problem::OptionProblem;

/// A flag value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} value {value:?}: {reason}")]
pub struct OptionError {
    /// The flag, e.g. `--output`.
    pub flag: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong and what would be right.
    #[source]
    pub reason: OptionProblem,
}

pub(crate) fn err(flag: &'static str, value: &str, reason: OptionProblem) -> OptionError {
    OptionError {
        flag,
        value: value.to_string(),
        reason,
    }
}

/// Layer compression of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerCompression {
    /// gzip (the default, readable by every client).
    #[default]
    Gzip,
    /// zstd.
    Zstd,
    /// Plain tar.
    Uncompressed,
}

/// Where a build result goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Push to the registry named by the image names (`type=registry`, `--push`).
    Registry,
    /// An image in the local store, pushed too when `push=true` (`type=image`).
    Image,
    /// An OCI image layout: a tarball, or a directory when `dest` is a directory (`type=oci`).
    Oci,
    /// A tarball `docker load` reads (`type=docker`); without `dest`, loaded
    /// into the Docker daemon (`--load`).
    Docker,
    /// The final filesystem as a tarball (`type=tar`).
    Tar,
    /// The final filesystem in a directory (`type=local`).
    Local,
    /// Loaded into containerd (`type=containerd`): content, image records
    /// and snapshots of the platforms its machine runs.
    Containerd,
}

impl OutputKind {
    /// The `type=` name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            OutputKind::Registry => "registry",
            OutputKind::Image => "image",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            OutputKind::Tar => "tar",
            OutputKind::Local => "local",
            OutputKind::Containerd => "containerd",
        }
    }
}

/// One `-o/--output` request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Output {
    /// The exporter.
    pub kind: OutputKind,
    /// File or directory for oci/docker/tar/local; `-` is standard output.
    pub dest: Option<PathBuf>,
    /// Image names (from `name=` or the `-t` tags).
    pub names: Vec<String>,
    /// Whether to push the image names.
    pub push: bool,
    /// Layer compression.
    pub compression: LayerCompression,
    /// `compression-level=`: gzip 0-9, zstd 0-22 (the compressor's default
    /// when unset).
    pub compression_level: Option<i32>,
    /// `force-compression=true`: base image layers are converted to the
    /// compression too (by default they are reused as they are).
    pub force_compression: bool,
    /// Whether `dest` should be written as a directory (`tar=false` for oci).
    pub as_directory: bool,
    /// `type=local` only: create device nodes and keep setuid/setgid bits
    /// and file capabilities (`preserve-special=true`). Off by default, as
    /// `docker cp` does.
    pub preserve_special: bool,
    /// `type=containerd` only: the socket, namespace, snapshotter and the
    /// platforms to unpack (`address=`, `namespace=`, `snapshotter=`,
    /// `unpack=`).
    pub containerd: Option<kbuild_containerd::Target>,
    /// `annotation.KEY=VALUE` and `annotation-TYPE[PLATFORM].KEY=VALUE`
    /// exporter options (BuildKit's image exporter options).
    #[serde(skip)]
    pub annotations: Vec<Annotation>,
}

impl Output {
    /// Parse one `--output` value, as buildx does: `type=...,dest=...,name=...,push=...`,
    /// a bare path (`type=local,dest=PATH`) or `-` (a tarball of the filesystem on stdout).
    pub fn parse(spec: &str, tags: &[String]) -> Result<Output, OptionError> {
        if spec.is_empty() {
            return Err(err(FLAG, spec, OptionProblem::EmptyOutput));
        }
        if !spec.contains('=') {
            return Ok(Output::bare(spec));
        }
        let mut fields = OutputFields::default();
        for field in split_csv(spec) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| err(FLAG, spec, OptionProblem::NotKeyValue(field.clone())))?;
            fields.set(spec, key, value)?;
        }
        fields.finish(spec, tags)
    }

    /// A bare path: the filesystem into that directory, or as a tarball on
    /// standard output for `-`.
    fn bare(spec: &str) -> Output {
        let kind = if spec == "-" {
            OutputKind::Tar
        } else {
            OutputKind::Local
        };
        Output {
            kind,
            dest: Some(PathBuf::from(spec)),
            names: Vec::new(),
            push: false,
            compression: LayerCompression::Gzip,
            compression_level: None,
            force_compression: false,
            as_directory: false,
            preserve_special: false,
            containerd: None,
            annotations: Vec::new(),
        }
    }

    /// The `--output` value a builder daemon is sent for this output
    /// ([`Output::parse`] reads it): everything but where a file goes,
    /// which the client writes; `dest=-` has the daemon stream it back.
    pub fn daemon_spec(&self) -> String {
        let mut s = format!("type={}", self.kind.name());
        for n in &self.names {
            s.push_str(&format!(",\"name={n}\""));
        }
        if self.push {
            s.push_str(",push=true");
        }
        s.push_str(match self.compression {
            LayerCompression::Gzip => ",compression=gzip",
            LayerCompression::Zstd => ",compression=zstd",
            LayerCompression::Uncompressed => ",compression=uncompressed",
        });
        if let Some(l) = self.compression_level {
            s.push_str(&format!(",compression-level={l}"));
        }
        if self.force_compression {
            s.push_str(",force-compression=true");
        }
        if let Some(t) = &self.containerd {
            // Loaded by the daemon, into the containerd of its machine.
            s.push_str(&format!(
                ",address={},namespace={},snapshotter={}",
                t.address.display(),
                t.namespace,
                t.snapshotter
            ));
            if !t.unpack.is_empty() {
                let list: Vec<String> = t.unpack.iter().map(ToString::to_string).collect();
                s.push_str(&format!(",\"unpack={}\"", list.join(",")));
            }
        }
        if self.dest.is_some() {
            s.push_str(",dest=-");
        }
        s
    }
}

const FLAG: &str = "--output";

/// The fields of one `--output` value, as given.
struct OutputFields {
    kind: Option<OutputKind>,
    dest: Option<PathBuf>,
    names: Vec<String>,
    push: Option<bool>,
    compression: LayerCompression,
    compression_level: Option<i32>,
    force_compression: bool,
    tar: bool,
    preserve_special: bool,
    /// `address`, `namespace`, `snapshotter`, `unpack` of type=containerd.
    containerd_fields: Vec<(String, String)>,
    /// `annotation.KEY=VALUE` and its typed forms.
    annotations: Vec<Annotation>,
}

impl Default for OutputFields {
    fn default() -> OutputFields {
        OutputFields {
            kind: None,
            dest: None,
            names: Vec::new(),
            push: None,
            compression: LayerCompression::Gzip,
            compression_level: None,
            force_compression: false,
            tar: true,
            preserve_special: false,
            containerd_fields: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

impl OutputFields {
    /// One `KEY=VALUE` field of `spec`.
    fn set(&mut self, spec: &str, key: &str, value: &str) -> Result<(), OptionError> {
        // Annotation keys keep their case.
        if let Some(a) = Annotation::parse_output_field(spec, key.trim(), value) {
            self.annotations.push(a?);
            return Ok(());
        }
        match key.trim().to_ascii_lowercase().as_str() {
            "type" => self.kind = Some(output_kind(spec, value)?),
            "dest" => self.dest = Some(PathBuf::from(value)),
            "name" => self.names.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "push" => self.push = Some(parse_bool(FLAG, spec, value)?),
            "compression" => self.compression = compression(spec, value)?,
            "tar" => self.tar = parse_bool(FLAG, spec, value)?,
            "compression-level" => {
                self.compression_level = Some(value.trim().parse::<i32>().map_err(|source| {
                    let value = value.to_string();
                    err(FLAG, spec, OptionProblem::LevelNotNumber { value, source })
                })?)
            }
            "force-compression" => self.force_compression = parse_bool(FLAG, spec, value)?,
            "oci-mediatypes" => {
                if !parse_bool(FLAG, spec, value)? {
                    return Err(err(FLAG, spec, OptionProblem::DockerMediaTypes));
                }
            }
            "preserve-special" => self.preserve_special = parse_bool(FLAG, spec, value)?,
            k @ ("address" | "namespace" | "snapshotter" | "unpack") => self
                .containerd_fields
                .push((k.to_string(), value.to_string())),
            other => {
                let other = other.to_string();
                return Err(err(
                    FLAG,
                    spec,
                    OptionProblem::UnsupportedOutputField(other),
                ));
            }
        }
        Ok(())
    }

    /// The output the fields ask for, once they agree with each other.
    fn finish(mut self, spec: &str, tags: &[String]) -> Result<Output, OptionError> {
        let kind = self
            .kind
            .take()
            .ok_or_else(|| err(FLAG, spec, OptionProblem::MissingOutputType))?;
        if let Some(level) = self.compression_level {
            check_level(spec, self.compression, level)?;
        }
        if self.names.is_empty()
            && matches!(
                kind,
                OutputKind::Registry
                    | OutputKind::Image
                    | OutputKind::Docker
                    | OutputKind::Oci
                    | OutputKind::Containerd
            )
        {
            self.names = tags.to_vec();
        }
        let push = self.push.unwrap_or(kind == OutputKind::Registry);
        match kind {
            OutputKind::Registry | OutputKind::Image if push && self.names.is_empty() => {
                return Err(err(FLAG, spec, OptionProblem::PushWithoutName))
            }
            // type=docker without dest loads into the Docker daemon (--load).
            OutputKind::Oci | OutputKind::Tar | OutputKind::Local if self.dest.is_none() => {
                return Err(err(FLAG, spec, OptionProblem::MissingDest))
            }
            OutputKind::Containerd if self.names.is_empty() => {
                return Err(err(FLAG, spec, OptionProblem::ContainerdWithoutName))
            }
            OutputKind::Containerd if self.dest.is_some() || push => {
                return Err(err(FLAG, spec, OptionProblem::ContainerdDestOrPush))
            }
            _ => {}
        }
        if self.preserve_special && kind != OutputKind::Local {
            return Err(err(FLAG, spec, OptionProblem::PreserveSpecialNotLocal));
        }
        let containerd = if kind == OutputKind::Containerd {
            Some(containerd_target(spec, &self.containerd_fields)?)
        } else if let Some((k, _)) = self.containerd_fields.first() {
            return Err(err(FLAG, spec, OptionProblem::ContainerdOnly(k.clone())));
        } else {
            None
        };
        Ok(Output {
            containerd,
            preserve_special: self.preserve_special,
            as_directory: kind == OutputKind::Oci && !self.tar,
            kind,
            dest: self.dest,
            names: self.names,
            push,
            compression: self.compression,
            compression_level: self.compression_level,
            force_compression: self.force_compression,
            annotations: self.annotations,
        })
    }
}

fn output_kind(spec: &str, value: &str) -> Result<OutputKind, OptionError> {
    Ok(match value {
        "registry" => OutputKind::Registry,
        "image" => OutputKind::Image,
        "oci" => OutputKind::Oci,
        "docker" => OutputKind::Docker,
        "tar" => OutputKind::Tar,
        "local" => OutputKind::Local,
        "containerd" => OutputKind::Containerd,
        other => {
            let other = other.to_string();
            return Err(err(FLAG, spec, OptionProblem::UnknownOutputType(other)));
        }
    })
}

fn compression(spec: &str, value: &str) -> Result<LayerCompression, OptionError> {
    Ok(match value {
        "gzip" => LayerCompression::Gzip,
        "zstd" => LayerCompression::Zstd,
        "uncompressed" => LayerCompression::Uncompressed,
        other => {
            let other = other.to_string();
            return Err(err(FLAG, spec, OptionProblem::UnknownCompression(other)));
        }
    })
}

/// `compression-level=`: gzip 0-9, zstd 0-22, nothing for uncompressed.
fn check_level(spec: &str, compression: LayerCompression, level: i32) -> Result<(), OptionError> {
    let (name, max) = match compression {
        LayerCompression::Gzip => ("gzip", 9),
        LayerCompression::Zstd => ("zstd", 22),
        LayerCompression::Uncompressed => ("uncompressed", -1),
    };
    if (0..=max).contains(&level) {
        return Ok(());
    }
    Err(err(
        FLAG,
        spec,
        match max {
            -1 => OptionProblem::LevelUncompressed,
            _ => OptionProblem::LevelRange {
                compression: name,
                max,
            },
        },
    ))
}

/// The containerd fields of a `type=containerd` output.
fn containerd_target(
    spec: &str,
    fields: &[(String, String)],
) -> Result<kbuild_containerd::Target, OptionError> {
    const FLAG: &str = "--output";
    let mut t = kbuild_containerd::Target::default();
    for (k, v) in fields {
        let v = v.trim();
        match k.as_str() {
            "address" => {
                let path = v.strip_prefix("unix://").unwrap_or(v);
                if !path.starts_with('/') {
                    let v = v.to_string();
                    return Err(err(FLAG, spec, OptionProblem::ContainerdAddress(v)));
                }
                t.address = PathBuf::from(path);
            }
            "namespace" => {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    let v = v.to_string();
                    return Err(err(FLAG, spec, OptionProblem::ContainerdNamespace(v)));
                }
                t.namespace = v.to_string();
            }
            "snapshotter" => {
                if v.is_empty() {
                    return Err(err(FLAG, spec, OptionProblem::EmptySnapshotter));
                }
                t.snapshotter = v.to_string();
            }
            _ => {
                t.unpack = kbuild_platform::parse_list(v).map_err(|source| {
                    let (value, source) = (v.to_string(), Box::new(source));
                    err(FLAG, spec, OptionProblem::Unpack { value, source })
                })?;
            }
        }
    }
    Ok(t)
}

/// Split a comma-separated list where values may be double-quoted (`name="a,b"`).
pub(crate) fn split_csv(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn parse_bool(flag: &'static str, spec: &str, value: &str) -> Result<bool, OptionError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(err(flag, spec, OptionProblem::NotBool(value.to_string()))),
    }
}

/// Parse `--build-arg` values; `KEY` alone takes the value from `lookup` (the
/// environment) and is skipped when unset, as docker does.
pub fn parse_build_args(
    values: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, OptionError> {
    let mut out = BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => {
                out.insert(k.to_string(), val.to_string());
            }
            Some(_) => return Err(err("--build-arg", v, OptionProblem::MissingKey)),
            None if v.is_empty() => {
                return Err(err("--build-arg", v, OptionProblem::EmptyBuildArg))
            }
            None => {
                if let Some(val) = lookup(v) {
                    out.insert(v.clone(), val);
                }
            }
        }
    }
    Ok(out)
}

/// Parse `--label KEY=VALUE` values.
pub fn parse_labels(values: &[String]) -> Result<BTreeMap<String, String>, OptionError> {
    let mut out = BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => {
                out.insert(k.to_string(), val.to_string());
            }
            _ => return Err(err("--label", v, OptionProblem::LabelNotKeyValue)),
        }
    }
    Ok(out)
}

/// Where a `--secret` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file on the client.
    File(PathBuf),
    /// An environment variable of the client.
    Env(String),
    /// Asked for when a RUN mounts it (a build daemon asks its client).
    Provided(SecretProvider),
}

/// Why a [`ProvideSecret`] could not give a secret: the provider's own
/// error (a file it could not read, a session that ended), kept as it is.
pub type SecretError = Box<dyn std::error::Error + Send + Sync>;

/// Answers a secret's value on demand: `Ok(None)` when the asker has no
/// such secret. Called on the RUN step's blocking thread; may block.
pub trait ProvideSecret: Send + Sync {
    /// The value of secret `id`. The error's text names where it failed.
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, SecretError>;
}

/// A shared [`ProvideSecret`]; equal when it is the same provider.
#[derive(Clone)]
pub struct SecretProvider(pub std::sync::Arc<dyn ProvideSecret>);

impl std::fmt::Debug for SecretProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretProvider")
    }
}

impl PartialEq for SecretProvider {
    fn eq(&self, other: &SecretProvider) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SecretProvider {}

/// One `--secret` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id RUN --mount=type=secret,id=ID refers to.
    pub id: String,
    /// Where its value is read from.
    pub source: SecretSource,
}

impl SecretSpec {
    /// Parse `id=ID[,src=PATH|,env=VAR][,type=file|env]`; with neither `src` nor
    /// `env`, buildx reads the environment variable named like the id when it is
    /// set, and a file of that name otherwise.
    pub fn parse(spec: &str, env_has: impl Fn(&str) -> bool) -> Result<SecretSpec, OptionError> {
        const FLAG: &str = "--secret";
        let mut id = None;
        let mut src = None;
        let mut env = None;
        let mut typ = None;
        for field in split_csv(spec) {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| err(FLAG, spec, OptionProblem::NotKeyValue(field.clone())))?;
            match k {
                "id" => id = Some(v.to_string()),
                "src" | "source" => src = Some(v.to_string()),
                "env" => env = Some(v.to_string()),
                "type" => typ = Some(v.to_string()),
                other => {
                    let other = other.to_string();
                    return Err(err(FLAG, spec, OptionProblem::UnknownSecretField(other)));
                }
            }
        }
        let id = id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err(FLAG, spec, OptionProblem::MissingSecretId))?;
        let source = match (typ.as_deref(), src, env) {
            (_, Some(_), Some(_)) => return Err(err(FLAG, spec, OptionProblem::SecretSrcAndEnv)),
            (Some("env"), Some(v), None) | (_, None, Some(v)) => SecretSource::Env(v),
            (Some("file") | None, Some(p), None) => SecretSource::File(PathBuf::from(p)),
            (Some("env"), None, None) => SecretSource::Env(id.clone()),
            (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
            (None, None, None) if env_has(&id) => SecretSource::Env(id.clone()),
            (None, None, None) => SecretSource::File(PathBuf::from(&id)),
            (Some(other), _, _) => {
                let other = other.to_string();
                return Err(err(FLAG, spec, OptionProblem::UnknownSecretType(other)));
            }
        };
        Ok(SecretSpec { id, source })
    }
}

/// One `--ssh` request: an id (`default` when omitted) and the agent sockets or keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id RUN --mount=type=ssh,id=ID refers to.
    pub id: String,
    /// Agent socket or key files; empty means `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

impl SshSpec {
    /// Parse `default`, `ID`, or `ID=PATH[,PATH]`.
    pub fn parse(spec: &str) -> Result<SshSpec, OptionError> {
        let (id, rest) = match spec.split_once('=') {
            Some((id, rest)) => (id, Some(rest)),
            None => (spec, None),
        };
        if id.is_empty() {
            return Err(err("--ssh", spec, OptionProblem::MissingSshId));
        }
        let paths = rest
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(SshSpec {
            id: id.to_string(),
            paths,
        })
    }
}

/// Parse an `--add-host host:ip` value (also `host=ip`, as newer docker allows).
pub fn parse_add_host(spec: &str) -> Result<(String, std::net::IpAddr), OptionError> {
    let (host, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| err("--add-host", spec, OptionProblem::NotHostIp))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = ip.parse().map_err(|source| {
        let ip = ip.to_string();
        err("--add-host", spec, OptionProblem::NotIp { ip, source })
    })?;
    if host.is_empty() {
        return Err(err("--add-host", spec, OptionProblem::MissingHost));
    }
    Ok((host.to_string(), ip))
}

/// The RUN network mode: the same type the Dockerfile's `RUN --network` uses.
pub use kbuild_dockerfile::graph::NetworkMode;

/// Parse `--network default|none|host`.
pub fn parse_network(value: &str) -> Result<NetworkMode, OptionError> {
    match value {
        "default" => Ok(NetworkMode::Default),
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        _ => Err(err("--network", value, OptionProblem::UnknownNetwork)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<String> {
        vec!["127.0.0.1:5000/demo:1".to_string()]
    }

    #[test]
    fn a_daemon_spec_parses_back_to_its_output_streamed_to_the_client() {
        for spec in [
            "type=registry,\"name=r.test/a:1,r.test/b:2\",compression=zstd,compression-level=3",
            "type=image,name=r.test/c:1,push=true,force-compression=true",
            "type=oci,dest=out.tar,compression=uncompressed",
            "type=docker,dest=-",
            "type=local,dest=out",
            "out",
        ] {
            let output = Output::parse(spec, &tags()).unwrap();
            let sent = Output::parse(&output.daemon_spec(), &tags()).unwrap();
            let mut want = output.clone();
            if want.dest.is_some() {
                want.dest = Some(PathBuf::from("-"));
            }
            assert_eq!(sent, want, "{spec} sent as {}", output.daemon_spec());
        }
    }

    #[test]
    fn output_registry_takes_tags_and_pushes() {
        let o = Output::parse("type=registry", &tags()).unwrap();
        assert_eq!(o.kind, OutputKind::Registry);
        assert!(o.push);
        assert_eq!(o.names, tags());
    }

    #[test]
    fn output_image_push_true_and_names() {
        let o = Output::parse("type=image,name=a/b:1,push=true,compression=zstd", &[]).unwrap();
        assert_eq!(o.kind, OutputKind::Image);
        assert!(o.push);
        assert_eq!(o.names, vec!["a/b:1"]);
        assert_eq!(o.compression, LayerCompression::Zstd);
    }

    #[test]
    fn output_quoted_names() {
        let o = Output::parse("type=image,\"name=a:1,b:2\"", &[]).unwrap();
        assert_eq!(o.names, vec!["a:1", "b:2"]);
    }

    #[test]
    fn output_bare_path_is_local_and_dash_is_tar() {
        let o = Output::parse("out", &[]).unwrap();
        assert_eq!(
            (o.kind, o.dest),
            (OutputKind::Local, Some(PathBuf::from("out")))
        );
        let o = Output::parse("-", &[]).unwrap();
        assert_eq!(o.kind, OutputKind::Tar);
    }

    #[test]
    fn output_local_preserve_special() {
        let o = Output::parse("type=local,dest=out", &[]).unwrap();
        assert!(!o.preserve_special);
        let o = Output::parse("type=local,dest=out,preserve-special=true", &[]).unwrap();
        assert!(o.preserve_special);
        let e = Output::parse("type=tar,dest=o.tar,preserve-special=true", &[]).unwrap_err();
        assert!(e.to_string().contains("only applies to type=local"), "{e}");
        let e = Output::parse("type=local,dest=out,preserve-special=maybe", &[]).unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn output_containerd() {
        let o = Output::parse("type=containerd", &tags()).unwrap();
        assert_eq!(o.kind, OutputKind::Containerd);
        assert_eq!(o.names, tags());
        assert_eq!(o.containerd, Some(kbuild_containerd::Target::default()));
        let o = Output::parse(
            "type=containerd,name=a:1,address=unix:///tmp/c.sock,namespace=default,\"unpack=linux/amd64,linux/arm64\"",
            &[],
        )
        .unwrap();
        let t = o.containerd.unwrap();
        assert_eq!(t.address, PathBuf::from("/tmp/c.sock"));
        assert_eq!(t.namespace, "default");
        assert_eq!(t.unpack.len(), 2);
        let e = Output::parse("type=containerd", &[]).unwrap_err();
        assert!(e.to_string().contains("needs an image name"), "{e}");
        let e = Output::parse("type=containerd,name=a,address=rel.sock", &[]).unwrap_err();
        assert!(e.to_string().contains("absolute socket path"), "{e}");
        let e = Output::parse("type=containerd,name=a,namespace=a/b", &[]).unwrap_err();
        assert!(e.to_string().contains("not a containerd namespace"), "{e}");
        let e = Output::parse("type=oci,dest=x,namespace=k8s.io", &[]).unwrap_err();
        assert!(
            e.to_string().contains("only applies to type=containerd"),
            "{e}"
        );
    }

    #[test]
    fn output_oci_dir_with_tar_false() {
        let o = Output::parse("type=oci,dest=layout,tar=false", &[]).unwrap();
        assert!(o.as_directory);
    }

    #[test]
    fn output_errors_name_the_problem() {
        let e = Output::parse("type=ftp", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown type \"ftp\""), "{e}");
        let e = Output::parse("type=oci", &[]).unwrap_err();
        assert!(e.to_string().contains("dest=PATH"), "{e}");
        let e = Output::parse("type=registry", &[]).unwrap_err();
        assert!(e.to_string().contains("-t NAME"), "{e}");
        let e = Output::parse("type=local,dest=x,colour=red", &[]).unwrap_err();
        assert!(
            e.to_string().contains("unsupported field \"colour\""),
            "{e}"
        );
        let e = Output::parse("type=local,dest=x,push=maybe", &[]).unwrap_err();
        assert!(e.to_string().contains("not true or false"), "{e}");
        assert!(Output::parse("dest", &[]).is_ok());
        assert!(Output::parse("", &[]).is_err());
    }

    #[test]
    fn build_args_from_env_and_values() {
        let env = |k: &str| (k == "HOME_X").then(|| "from-env".to_string());
        let got = parse_build_args(
            &[
                "A=1".into(),
                "B=".into(),
                "HOME_X".into(),
                "UNSET".into(),
                "C=x=y".into(),
            ],
            env,
        )
        .unwrap();
        assert_eq!(got.get("A").map(String::as_str), Some("1"));
        assert_eq!(got.get("B").map(String::as_str), Some(""));
        assert_eq!(got.get("HOME_X").map(String::as_str), Some("from-env"));
        assert_eq!(got.get("C").map(String::as_str), Some("x=y"));
        assert!(!got.contains_key("UNSET"));
        assert!(parse_build_args(&["=1".into()], |_| None).is_err());
    }

    #[test]
    fn labels_need_key_value() {
        assert_eq!(parse_labels(&["a=b".into()]).unwrap()["a"], "b");
        assert!(parse_labels(&["a".into()]).is_err());
    }

    #[test]
    fn secrets_parse_like_buildx() {
        let no_env = |_: &str| false;
        assert_eq!(
            SecretSpec::parse("id=tok,src=/tmp/t", no_env)
                .unwrap()
                .source,
            SecretSource::File("/tmp/t".into())
        );
        assert_eq!(
            SecretSpec::parse("id=tok,env=TOKEN", no_env)
                .unwrap()
                .source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            SecretSpec::parse("id=TOKEN", |k| k == "TOKEN")
                .unwrap()
                .source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            SecretSpec::parse("id=tok", no_env).unwrap().source,
            SecretSource::File("tok".into())
        );
        assert!(SecretSpec::parse("src=/x", no_env).is_err());
        assert!(SecretSpec::parse("id=a,src=x,env=y", no_env).is_err());
        assert!(SecretSpec::parse("id=a,kind=x", no_env).is_err());
    }

    #[test]
    fn ssh_and_hosts_and_network() {
        assert_eq!(SshSpec::parse("default").unwrap().paths.len(), 0);
        assert_eq!(SshSpec::parse("gh=/a,/b").unwrap().paths.len(), 2);
        assert!(SshSpec::parse("=x").is_err());
        let (h, ip) = parse_add_host("db:10.0.0.2").unwrap();
        assert_eq!((h.as_str(), ip.to_string().as_str()), ("db", "10.0.0.2"));
        assert!(parse_add_host("db=::1").is_ok());
        assert!(parse_add_host("db:notanip").is_err());
        assert_eq!(parse_network("none").unwrap(), NetworkMode::None);
        assert!(parse_network("bridge").is_err());
    }
}

/// The outputs of one build ask for different layer compressions.
#[derive(Debug, thiserror::Error)]
#[error("the outputs ask for different layer compressions ({first:?} and {other:?}); one build compresses its layers once: give every -o the same compression options, or build twice")]
pub struct CompressionConflict {
    /// The first output's.
    pub first: LayerCompression,
    /// Another output's.
    pub other: LayerCompression,
}

/// The compression of the layers a build makes, and whether base layers
/// are converted too: layers are compressed once, while they are built, so
/// every output of one build must agree.
pub fn layer_compression(
    outputs: &[Output],
) -> Result<(kbuild_image::Compression, bool), CompressionConflict> {
    let policy = |o: &Output| (o.compression, o.compression_level, o.force_compression);
    let first = outputs.first().map(policy);
    if let Some(other) = outputs.iter().find(|o| Some(policy(o)) != first) {
        return Err(CompressionConflict {
            first: first.map(|p| p.0).unwrap_or_default(),
            other: other.compression,
        });
    }
    let (kind, level, force) = first.unwrap_or((LayerCompression::Gzip, None, false));
    let compression = match kind {
        LayerCompression::Gzip => kbuild_image::Compression::Gzip(
            level.map_or(kbuild_image::DEFAULT_GZIP_LEVEL, |l| l.unsigned_abs()),
        ),
        LayerCompression::Zstd => kbuild_image::Compression::Zstd(level.unwrap_or(3)),
        LayerCompression::Uncompressed => kbuild_image::Compression::None,
    };
    Ok((compression, force))
}

/// Told about each layer blob of the images being built as soon as it is in
/// the content store: the layers of a final stage (and of the stages it is
/// based on) when the step that made them, or found them in the cache, ends,
/// and the base image's layers when the stage starts. Layers of other stages
/// are not reported. A layer shared by several platforms may be reported
/// once for each. The push output uses it to upload layers while the build
/// goes on ([`crate::outputs::EarlyPush`]).
///
/// With [`LayerHook::with_stream`] it is also asked, as each new layer of
/// those stages starts being compressed, for a [`kbuild_image::BlobWatch`]
/// that follows the blob while it is written (the push streams it to the
/// registry during compression).
#[derive(Clone, Default)]
pub struct LayerHook {
    added: Option<std::sync::Arc<LayerFn>>,
    stream: Option<std::sync::Arc<StreamFn>>,
}

/// What a [`LayerHook`] calls.
type LayerFn = dyn Fn(&kbuild_image::Descriptor) + Send + Sync;

/// What a [`LayerHook`] asks for a watch of a layer being written.
type StreamFn = dyn Fn() -> Option<Box<dyn kbuild_image::BlobWatch>> + Send + Sync;

impl LayerHook {
    /// A hook calling `f` for each layer.
    pub fn new(f: impl Fn(&kbuild_image::Descriptor) + Send + Sync + 'static) -> LayerHook {
        LayerHook {
            added: Some(std::sync::Arc::new(f)),
            stream: None,
        }
    }

    /// The hook, also calling `f` as each new layer starts being written
    /// for a watch of its blob (`None`: not followed).
    pub fn with_stream(
        mut self,
        f: impl Fn() -> Option<Box<dyn kbuild_image::BlobWatch>> + Send + Sync + 'static,
    ) -> LayerHook {
        self.stream = Some(std::sync::Arc::new(f));
        self
    }

    /// Whether a function is set.
    pub fn is_set(&self) -> bool {
        self.added.is_some() || self.stream.is_some()
    }

    /// A watch for a layer about to be written, if the hook wants one.
    pub(crate) fn stream(&self) -> Option<Box<dyn kbuild_image::BlobWatch>> {
        self.stream.as_ref().and_then(|f| f())
    }

    /// Reports the layers a state has beyond those of its parent.
    pub(crate) fn added(
        &self,
        parent: &[crate::engine::LayerRef],
        now: &[crate::engine::LayerRef],
    ) {
        if let Some(f) = &self.added {
            for l in now.iter().skip(parent.len()) {
                f(&l.descriptor);
            }
        }
    }
}

impl std::fmt::Debug for LayerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "LayerHook(set)"
        } else {
            "LayerHook(none)"
        })
    }
}

/// What an annotation is written on (buildx's `--annotation TYPE:KEY=VALUE`
/// and BuildKit's `annotation-TYPE.KEY=VALUE` exporter options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnotationTarget {
    /// Each image manifest (the default).
    Manifest,
    /// The descriptor of each image manifest in the index (or, for one
    /// platform, in an OCI layout's `index.json`).
    ManifestDescriptor,
    /// The image index (several platforms, or attestations).
    Index,
    /// The descriptor of the image index in an OCI layout's `index.json`.
    IndexDescriptor,
}

impl AnnotationTarget {
    fn parse(word: &str) -> Option<AnnotationTarget> {
        Some(match word {
            "" | "manifest" => AnnotationTarget::Manifest,
            "manifest-descriptor" => AnnotationTarget::ManifestDescriptor,
            "index" => AnnotationTarget::Index,
            "index-descriptor" => AnnotationTarget::IndexDescriptor,
            _ => return None,
        })
    }

    /// The name buildx uses.
    pub fn name(self) -> &'static str {
        match self {
            AnnotationTarget::Manifest => "manifest",
            AnnotationTarget::ManifestDescriptor => "manifest-descriptor",
            AnnotationTarget::Index => "index",
            AnnotationTarget::IndexDescriptor => "index-descriptor",
        }
    }
}

/// One annotation to write on the images a build makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Where it goes.
    pub target: AnnotationTarget,
    /// For manifests and their descriptors: only that platform's
    /// (`manifest[linux/amd64]:KEY=VALUE`); every platform when `None`.
    pub platform: Option<kbuild_platform::Platform>,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl Annotation {
    /// Parse one `--annotation` value as buildx does: `KEY=VALUE` (on the
    /// manifests) or `TYPES:KEY=VALUE`, TYPES being a comma list of
    /// `manifest`, `manifest-descriptor`, `index`, `index-descriptor`, each
    /// optionally with `[PLATFORM]`.
    pub fn parse_flag(spec: &str) -> Result<Vec<Annotation>, OptionError> {
        const FLAG: &str = "--annotation";
        let (left, value) = spec
            .split_once('=')
            .ok_or_else(|| err(FLAG, spec, OptionProblem::AnnotationNotKeyValue))?;
        // As buildx: the text before a ':' is the list of types.
        let (types, key) = left.split_once(':').unwrap_or(("", left));
        let mut out = Vec::new();
        for word in types.split(',') {
            let (target, platform) = annotation_type(FLAG, spec, word.trim())?;
            out.push(Annotation::new(FLAG, spec, target, platform, key, value)?);
        }
        Ok(out)
    }

    /// An exporter option of `-o` (`annotation.KEY`,
    /// `annotation-TYPE.KEY`, `annotation-TYPE[PLATFORM].KEY`), or `None`
    /// when `key` is not one.
    fn parse_output_field(
        spec: &str,
        key: &str,
        value: &str,
    ) -> Option<Result<Annotation, OptionError>> {
        const FLAG: &str = "--output";
        let rest = key.strip_prefix("annotation")?;
        let (typ, name) = if let Some(name) = rest.strip_prefix('.') {
            ("", name)
        } else {
            let rest = rest.strip_prefix('-')?;
            // The key starts at the first '.' after any [platform].
            let from = rest.find(']').unwrap_or(0);
            let dot = rest[from..].find('.')? + from;
            (&rest[..dot], &rest[dot + 1..])
        };
        Some(
            annotation_type(FLAG, spec, typ).and_then(|(target, platform)| {
                Annotation::new(FLAG, spec, target, platform, name, value)
            }),
        )
    }

    fn new(
        flag: &'static str,
        spec: &str,
        target: AnnotationTarget,
        platform: Option<kbuild_platform::Platform>,
        key: &str,
        value: &str,
    ) -> Result<Annotation, OptionError> {
        if key.is_empty() {
            return Err(err(flag, spec, OptionProblem::EmptyAnnotationKey));
        }
        if platform.is_some()
            && matches!(
                target,
                AnnotationTarget::Index | AnnotationTarget::IndexDescriptor
            )
        {
            return Err(err(flag, spec, OptionProblem::AnnotationPlatformOnIndex));
        }
        Ok(Annotation {
            target,
            platform,
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// Whether this annotation goes on the `target` of `platform`'s image.
    pub fn applies(&self, target: AnnotationTarget, platform: &kbuild_platform::Platform) -> bool {
        self.target == target
            && self
                .platform
                .as_ref()
                .map_or(true, |p| p.normalized() == platform.normalized())
    }

    /// The annotation in `--annotation` syntax (what a builder daemon gets).
    pub fn to_flag(&self) -> String {
        let platform = self
            .platform
            .as_ref()
            .map(|p| format!("[{p}]"))
            .unwrap_or_default();
        format!(
            "{}{platform}:{}={}",
            self.target.name(),
            self.key,
            self.value
        )
    }
}

fn annotation_type(
    flag: &'static str,
    spec: &str,
    word: &str,
) -> Result<(AnnotationTarget, Option<kbuild_platform::Platform>), OptionError> {
    let (name, platform) = match word.split_once('[') {
        Some((name, rest)) => {
            let p = rest.strip_suffix(']').ok_or_else(|| {
                let word = word.to_string();
                err(flag, spec, OptionProblem::AnnotationPlatformSyntax(word))
            })?;
            let p = kbuild_platform::Platform::parse(p)
                .and_then(|p| p.check_known().map(|()| p))
                .map_err(|source| {
                    let (word, source) = (word.to_string(), Box::new(source));
                    err(
                        flag,
                        spec,
                        OptionProblem::AnnotationPlatform { word, source },
                    )
                })?;
            (name, Some(p))
        }
        None => (word, None),
    };
    let target = AnnotationTarget::parse(name).ok_or_else(|| {
        let name = name.to_string();
        err(flag, spec, OptionProblem::UnknownAnnotationType(name))
    })?;
    Ok((target, platform))
}

#[cfg(test)]
mod annotation_tests {
    use super::*;

    #[test]
    fn flag_forms() {
        let a = Annotation::parse_flag("org.example=1").unwrap();
        assert_eq!(a[0].target, AnnotationTarget::Manifest);
        assert_eq!(
            (a[0].key.as_str(), a[0].value.as_str()),
            ("org.example", "1")
        );
        let a = Annotation::parse_flag("index,manifest[linux/arm64]:k=v=w").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].target, AnnotationTarget::Index);
        assert_eq!(a[1].platform.as_ref().unwrap().to_string(), "linux/arm64");
        assert_eq!(a[1].value, "v=w");
        assert!(Annotation::parse_flag("a:b=c").is_err());
        assert!(Annotation::parse_flag("nokey").is_err());
        assert!(Annotation::parse_flag("index[linux/amd64]:k=v").is_err());
        assert_eq!(
            Annotation::parse_flag("manifest[linux/amd64]:k=v").unwrap()[0].to_flag(),
            "manifest[linux/amd64]:k=v"
        );
    }

    #[test]
    fn output_fields() {
        let o = Output::parse(
            "type=oci,dest=x,annotation.a=1,annotation-index.b=2,annotation-manifest-descriptor[linux/amd64].c.d=3",
            &[],
        )
        .unwrap();
        let got: Vec<(AnnotationTarget, String)> = o
            .annotations
            .iter()
            .map(|a| (a.target, a.key.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (AnnotationTarget::Manifest, "a".to_string()),
                (AnnotationTarget::Index, "b".to_string()),
                (AnnotationTarget::ManifestDescriptor, "c.d".to_string()),
            ]
        );
        assert!(Output::parse("type=oci,dest=x,annotation-bogus.a=1", &[]).is_err());
    }
}

/// `--shm-size`: a size in bytes as docker reads it (`67108864`, `64m`,
/// `64MiB`, `1.5g`; k, m, g, t are powers of 1024).
pub fn parse_shm_size(value: &str) -> Result<u64, OptionError> {
    const FLAG: &str = "--shm-size";
    let v = value.trim();
    let number_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(number_end);
    let number: f64 = number
        .parse()
        .map_err(|source| err(FLAG, value, OptionProblem::SizeNumber(source)))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            let unit = unit.to_string();
            return Err(err(FLAG, value, OptionProblem::SizeUnit(unit)));
        }
    };
    let bytes = number * multiplier as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(err(FLAG, value, OptionProblem::SizeRange));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod shm_tests {
    use super::parse_shm_size;

    #[test]
    fn docker_sizes() {
        assert_eq!(parse_shm_size("67108864").ok(), Some(64 << 20));
        assert_eq!(parse_shm_size("64m").ok(), Some(64 << 20));
        assert_eq!(parse_shm_size("64MiB").ok(), Some(64 << 20));
        assert_eq!(parse_shm_size("64 MB").ok(), Some(64 << 20));
        assert_eq!(parse_shm_size("1.5g").ok(), Some(3 << 29));
        assert_eq!(parse_shm_size("2k").ok(), Some(2048));
        for bad in ["", "m", "-1", "0", "12q", "1..2m"] {
            assert!(parse_shm_size(bad).is_err(), "{bad}");
        }
    }
}

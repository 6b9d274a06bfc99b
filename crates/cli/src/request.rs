//! Turning flags into a checked build request: every flag value is parsed and
//! validated here, before anything is built, so bad input stops the command
//! with one line naming the flag and nothing is written.

use crate::args::{BuildArgs, GlobalArgs};
use kbuild_dockerfile::graph::{self, Graph};
use kbuild_dockerfile::plan::{self, BuildPlan, NamedContext, PlanOptions};
use kbuild_platform::Platform;
use kbuild_solver::options::{
    parse_add_host, parse_build_args, parse_labels, parse_network, parse_shm_size, Annotation,
    AnnotationTarget, NetworkMode, Output, OutputKind, SecretSpec, SshSpec,
};
use kbuild_solver::provenance::{Invocation, ProvenanceMode, ProvenanceRequest};
use kbuild_solver::remote_cache::{parse_caches, CacheFrom, CacheTo};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A flag or input problem found before building.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No PATH argument.
    #[error("\"kubectl build\" requires exactly 1 argument: the build context PATH (a directory, or - for a Dockerfile on stdin); see --help")]
    MissingPath,
    /// The context directory is missing.
    #[error(
        "build context {0:?} is not a directory; give the directory that holds the files to COPY"
    )]
    ContextMissing(PathBuf),
    /// The Dockerfile could not be read.
    #[error("cannot read Dockerfile {path:?}: {source}; name it with -f/--file")]
    Dockerfile {
        /// Where we looked.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The Dockerfile is not UTF-8 text (a Dockerfile saved as UTF-16 or
    /// Latin-1, say).
    #[error("Dockerfile {path:?} is not UTF-8 text: byte 0x{byte:02x} at line {line} (byte offset {offset}) is not valid UTF-8{hint}; save the file as UTF-8")]
    DockerfileNotUtf8 {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The 1-based line of the first invalid byte.
        line: usize,
        /// The offset of the first invalid byte in the file.
        offset: usize,
        /// The first invalid byte.
        byte: u8,
        /// What the file seems to be instead, when that is recognisable.
        hint: &'static str,
    },
    /// Both the context and the Dockerfile were to come from stdin.
    #[error("the context PATH and -f cannot both be \"-\" (standard input can be read once)")]
    StdinTwice,
    /// A flag value that does not parse.
    #[error(transparent)]
    Option(#[from] kbuild_solver::options::OptionError),
    /// A platform that does not parse.
    #[error("invalid --platform: {0}")]
    Platform(#[from] kbuild_platform::Error),
    /// A flag a later part of the product will execute.
    #[error("{0} is not implemented yet: {1}")]
    NotImplemented(String, &'static str),
    /// A `--build-context` value that is not NAME=VALUE or names nothing usable.
    #[error("invalid --build-context {value:?}: {reason}")]
    BuildContext {
        /// The flag value.
        value: String,
        /// What is wrong, and the forms that work.
        #[source]
        reason: BuildContextProblem,
    },
    /// An `oci-layout://` build context that cannot be read.
    #[error("--build-context {value}: {source}")]
    BuildContextLayout {
        /// The flag value.
        value: String,
        /// Why.
        source: Box<kbuild_solver::layout::LayoutError>,
    },
    /// A `docker-image://` build context whose reference does not parse.
    #[error("--build-context {value}: {source}")]
    BuildContextImage {
        /// The flag value.
        value: String,
        /// Why.
        source: Box<kbuild_registry::Error>,
    },
    /// A `--provenance` value that does not parse.
    #[error(transparent)]
    Provenance(#[from] kbuild_solver::provenance::ProvenanceError),
    /// `--provenance` with an output that cannot hold attestations.
    #[error("--provenance cannot go with -o type={0:?} (or --load): that output holds image manifests only, not the attestation manifests of an index; drop --provenance, or use --push or -o type=oci")]
    ProvenanceOutput(OutputKind),
    /// An index annotation for a build that makes no index.
    #[error("annotation {0:?} goes on an image index, but a build for one platform makes a single manifest; build several platforms, or use a manifest annotation")]
    IndexAnnotation(String),
    /// `-o type=docker` for several platforms.
    #[error("-o type=docker and --load hold one platform, but --platform asks for {0}; build one platform, or use -o type=oci for several")]
    DockerArchivePlatforms(String),
    /// An `--allow` value that names no entitlement.
    #[error(
        "invalid --allow value {0:?}: the entitlements are security.insecure and network.host"
    )]
    Entitlement(String),
    /// `--registry-timeout` (or its environment variable) does not parse.
    #[error("--registry-timeout (or KUBECTL_BUILD_REGISTRY_TIMEOUTS): {0}")]
    Timeouts(#[from] kbuild_registry::TimeoutsError),
    /// Planning failed (Dockerfile errors carry file and line).
    #[error(transparent)]
    Plan(#[from] plan::Error),
}

/// Everything a build needs, checked.
#[derive(Debug)]
pub struct BuildRequest {
    /// The context directory; `None` when the Dockerfile came from stdin as PATH.
    pub context: Option<PathBuf>,
    /// Name shown in Dockerfile error messages.
    pub dockerfile_name: String,
    /// Where the Dockerfile came from (for the `.dockerignore` beside it).
    pub dockerfile_path: Option<PathBuf>,
    /// The Dockerfile text.
    pub dockerfile: String,
    /// Target platforms, in the order given.
    pub platforms: Vec<Platform>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--label` values.
    pub labels: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Outputs, `--push` included.
    pub outputs: Vec<Output>,
    /// `--secret` values.
    pub secrets: Vec<SecretSpec>,
    /// `--ssh` values.
    pub ssh: Vec<SshSpec>,
    /// `--add-host` values.
    pub add_hosts: Vec<(String, IpAddr)>,
    /// `--network`.
    pub network: NetworkMode,
    /// `--allow security.insecure`: `RUN --security=insecure` may run.
    pub allow_insecure: bool,
    /// `--registry-timeout`: limits on waiting for registries.
    pub registry_timeouts: kbuild_registry::Timeouts,
    /// Things the user should know that do not stop the build.
    pub notices: Vec<String>,
    /// `--cache-from`: external caches to import.
    pub cache_from: Vec<CacheFrom>,
    /// `--cache-to`: where to export the build cache.
    pub cache_to: Vec<CacheTo>,
    /// The output `--load` stands for (a Docker daemon here; the nodes'
    /// containerd on a kubernetes builder), an index into `outputs`.
    pub load: Option<usize>,
    /// `--build-context` values as the planner sees them.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// The `--build-context` values that are local directories.
    pub context_dirs: BTreeMap<String, PathBuf>,
    /// `--annotation` values, then the outputs' `annotation.*` options.
    pub annotations: Vec<Annotation>,
    /// `--shm-size` in bytes (64 MiB by default).
    pub shm_size: u64,
    /// `--provenance`: how much the attestation says (`None`: none).
    pub provenance: Option<ProvenanceMode>,
    /// `--build-context` values as given, name to value (for provenance).
    pub context_values: BTreeMap<String, String>,
}

impl BuildRequest {
    /// Check every flag and read the Dockerfile.
    pub fn from_args(a: &BuildArgs, _g: &GlobalArgs) -> Result<BuildRequest, RequestError> {
        let path = a.path.as_deref().ok_or(RequestError::MissingPath)?;
        refuse_unsupported(a)?;
        let (cache_from, cache_to) = parse_caches(&a.cache_from, &a.cache_to)?;

        let (named_contexts, context_dirs, context_values) = build_contexts(a)?;

        let (context, dockerfile_path, dockerfile, dockerfile_name) =
            read_dockerfile(path, a.file.as_deref())?;

        let platforms = platforms_of(a)?;

        let build_args = parse_build_args(&a.build_args, |k| std::env::var(k).ok())?;
        let labels = parse_labels(&a.labels)?;
        let (outputs, load) = outputs_of(a, &platforms)?;
        let (annotations, provenance) = annotations_of(a, &outputs, &platforms)?;
        let shm_size = match a.shm_size.as_deref() {
            Some(v) => parse_shm_size(v)?,
            None => kbuild_worker::executor::DEFAULT_SHM_SIZE,
        };
        let mut notices = Vec::new();
        if outputs.is_empty() {
            notices.push(
                "no output specified (--push or -o); the result stays in the builder's store and build cache".to_string(),
            );
        }
        let secrets = a
            .secrets
            .iter()
            .map(|s| SecretSpec::parse(s, |k| std::env::var_os(k).is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        let ssh = a
            .ssh
            .iter()
            .map(|s| SshSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let add_hosts = a
            .add_hosts
            .iter()
            .map(|h| parse_add_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        let network = a
            .network
            .as_deref()
            .map(parse_network)
            .transpose()?
            .unwrap_or_default();
        let allow_insecure = allow_insecure(a)?;
        let registry_timeouts = match a.registry_timeout.as_deref() {
            Some(spec) => kbuild_registry::Timeouts::parse(spec)?,
            None => kbuild_registry::Timeouts::default(),
        };

        Ok(BuildRequest {
            context,
            dockerfile_name,
            dockerfile_path,
            dockerfile,
            platforms,
            build_args,
            labels,
            target: a.target.clone(),
            outputs,
            secrets,
            ssh,
            add_hosts,
            network,
            allow_insecure,
            registry_timeouts,
            notices,
            cache_from,
            cache_to,
            load,
            named_contexts,
            context_dirs,
            annotations,
            shm_size,
            provenance,
            context_values,
        })
    }

    /// `--load` into a Docker daemon holds one platform: checked for the
    /// builders where `--load` means that (all but kubernetes ones).
    pub fn check_load(&self) -> Result<(), RequestError> {
        if self.load.is_some() && self.platforms.len() > 1 {
            return Err(RequestError::DockerArchivePlatforms(
                self.platforms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        Ok(())
    }

    /// On a kubernetes builder `--load` means the nodes' containerd
    /// (`-o type=containerd`, namespace `k8s.io`, named by `-t`): replaces
    /// the Docker daemon output `--load` stood for.
    pub fn load_into_containerd(&mut self, tags: &[String]) -> Result<(), RequestError> {
        if let Some(i) = self.load {
            self.outputs[i] = Output::parse("type=containerd", tags)?;
        }
        Ok(())
    }

    /// Plan the build without any I/O: base images' configs are unknown here,
    /// so expansions that read a base image's ENV see it unset.
    pub fn plan(&self) -> Result<BuildPlan, RequestError> {
        let opts = self.plan_options();
        plan::plan(&self.dockerfile, &opts, &plan::NoImageConfigs)
            .map_err(|e| RequestError::Plan(e.in_file(&self.dockerfile_name)))
    }

    /// The op graph of a plan of this request: every Dockerfile rule that
    /// needs no image is checked here (`--chmod`, EXPOSE, `--checksum`...).
    pub fn graph(&self, plan: &BuildPlan) -> Result<Graph, RequestError> {
        graph::lower(plan).map_err(|e| RequestError::Plan(e.in_file(&self.dockerfile_name)))
    }

    /// The `--build-context` values that are images (`docker-image://`),
    /// name to reference: what a builder daemon gets.
    pub fn named_images(&self) -> std::collections::HashMap<String, String> {
        self.named_contexts
            .iter()
            .filter_map(|(name, c)| match c {
                NamedContext::Image(r) if !r.starts_with(kbuild_solver::layout::SCHEME) => {
                    Some((name.clone(), r.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The `--build-context` values only this machine can read
    /// (directories, OCI layouts), as `NAME=VALUE` for messages.
    pub fn local_only_contexts(&self) -> Vec<String> {
        let images = self.named_images();
        self.named_contexts
            .keys()
            .filter(|name| !images.contains_key(*name))
            .cloned()
            .collect()
    }

    /// What `--provenance` records about this request (`None`: no
    /// attestation).
    pub fn provenance_request(&self) -> Option<ProvenanceRequest> {
        let mode = self.provenance?;
        let inv = Invocation {
            build_args: self
                .build_args
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            target: self.target.as_deref(),
            contexts: self
                .context_values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            context_dirs: self.context_dirs.keys().map(String::as_str).collect(),
            has_context: self.context.is_some(),
            dockerfile: &self.dockerfile_name,
            names: self
                .outputs
                .iter()
                .flat_map(|o| o.names.iter().map(String::as_str))
                .collect(),
        };
        Some(ProvenanceRequest::new(mode, &inv))
    }

    /// The planner's options for this request.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            platforms: self.platforms.clone(),
            build_platform: Platform::host(),
            build_args: self.build_args.clone(),
            target: self.target.clone(),
            labels: self.labels.clone(),
            named_contexts: self.named_contexts.clone(),
        }
    }
}

/// Resolve PATH and `-f` as docker does: PATH `-` is a Dockerfile on stdin with
/// no context; `-f -` reads the Dockerfile from stdin with PATH as context;
/// a relative `-f` is relative to the working directory.
/// Refuses the buildx flags not supported yet.
fn refuse_unsupported(a: &BuildArgs) -> Result<(), RequestError> {
    for (flag, used) in [
        ("--sbom", a.sbom.as_deref().is_some_and(|v| !is_false(v))),
        ("--attest", !a.attest.is_empty()),
        ("--ulimit", !a.ulimit.is_empty()),
        ("--cgroup-parent", a.cgroup_parent.is_some()),
    ] {
        if used {
            return Err(RequestError::NotImplemented(
                flag.to_string(),
                "this buildx flag is not supported by kubectl build yet (omit it)",
            ));
        }
    }
    Ok(())
}

/// The named contexts of `--build-context`: (name → context, name →
/// local directory, name → the value as given).
type BuildContexts = (
    BTreeMap<String, NamedContext>,
    BTreeMap<String, PathBuf>,
    BTreeMap<String, String>,
);

fn build_contexts(a: &BuildArgs) -> Result<BuildContexts, RequestError> {
    let mut named_contexts = BTreeMap::new();
    let mut context_dirs = BTreeMap::new();
    let mut context_values = BTreeMap::new();
    for value in &a.build_context {
        let (name, named, dir) = parse_build_context(value)?;
        if let Some((_, v)) = value.split_once('=') {
            context_values.insert(name.clone(), v.to_string());
        }
        if let Some(dir) = dir {
            context_dirs.insert(name.clone(), dir);
        }
        named_contexts.insert(name, named);
    }
    Ok((named_contexts, context_dirs, context_values))
}

/// The `--platform` values, each once, in order; the host's by default.
fn platforms_of(a: &BuildArgs) -> Result<Vec<Platform>, RequestError> {
    let mut platforms: Vec<Platform> = Vec::new();
    for value in &a.platforms {
        for p in kbuild_platform::parse_list(value)? {
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    Ok(platforms)
}

/// The outputs of `-o`, `--push` and `--load`, and which of them
/// `--load` is; a docker archive refused for several platforms.
fn outputs_of(
    a: &BuildArgs,
    platforms: &[Platform],
) -> Result<(Vec<Output>, Option<usize>), RequestError> {
    let mut outputs = a
        .outputs
        .iter()
        .map(|o| Output::parse(o, &a.tags))
        .collect::<Result<Vec<_>, _>>()?;
    if a.push {
        match outputs
            .iter_mut()
            .find(|o| matches!(o.kind, OutputKind::Image | OutputKind::Registry))
        {
            Some(o) => o.push = true,
            None => outputs.push(Output::parse("type=registry", &a.tags)?),
        }
    }
    let mut load = None;
    if a.load {
        let daemon = outputs
            .iter()
            .position(|o| o.kind == OutputKind::Docker && o.dest.is_none());
        load = Some(daemon.unwrap_or(outputs.len()));
        if daemon.is_none() {
            outputs.push(Output::parse("type=docker", &a.tags)?);
        }
    }
    // `--load` holds several platforms on a kubernetes builder (each
    // node loads its own); [`BuildRequest::check_load`] checks it
    // once the builder is known.
    if platforms.len() > 1
        && outputs
            .iter()
            .enumerate()
            .any(|(i, o)| o.kind == OutputKind::Docker && Some(i) != load)
    {
        return Err(RequestError::DockerArchivePlatforms(
            platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    Ok((outputs, load))
}

/// The `--annotation`s and those of the outputs, and the `--provenance`
/// mode; refused where the outputs or platforms cannot hold them.
fn annotations_of(
    a: &BuildArgs,
    outputs: &[Output],
    platforms: &[Platform],
) -> Result<(Vec<Annotation>, Option<ProvenanceMode>), RequestError> {
    let mut annotations = Vec::new();
    for spec in &a.annotation {
        annotations.extend(Annotation::parse_flag(spec)?);
    }
    annotations.extend(outputs.iter().flat_map(|o| o.annotations.iter().cloned()));
    let provenance = match a.provenance.as_deref() {
        Some(v) => kbuild_solver::provenance::parse_mode(v)?,
        None => None,
    };
    if provenance.is_some() {
        if let Some(o) = outputs
            .iter()
            .find(|o| matches!(o.kind, OutputKind::Docker | OutputKind::Containerd))
        {
            return Err(RequestError::ProvenanceOutput(o.kind.clone()));
        }
    }
    if let Some(index_only) = annotations.iter().find(|x| {
        matches!(
            x.target,
            AnnotationTarget::Index | AnnotationTarget::IndexDescriptor
        )
    }) {
        if platforms.len() < 2 && provenance.is_none() {
            return Err(RequestError::IndexAnnotation(index_only.to_flag()));
        }
    }
    Ok((annotations, provenance))
}

/// Whether `--allow` grants `security.insecure`; other entitlements but
/// `network.host` are refused.
fn allow_insecure(a: &BuildArgs) -> Result<bool, RequestError> {
    let mut allow_insecure = false;
    for entitlement in a.allow.iter().flat_map(|v| v.split(',')).map(str::trim) {
        match entitlement {
            "security.insecure" => allow_insecure = true,
            // RUN steps use the host's network by default here, so
            // `RUN --network=host` needs no grant; accepted for buildx
            // command lines.
            "network.host" => {}
            other => return Err(RequestError::Entitlement(other.to_string())),
        }
    }
    Ok(allow_insecure)
}

fn read_dockerfile(
    path: &str,
    file: Option<&str>,
) -> Result<(Option<PathBuf>, Option<PathBuf>, String, String), RequestError> {
    let read_stdin = || {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|source| RequestError::Dockerfile {
                path: PathBuf::from("-"),
                source,
            })?;
        utf8_text(bytes, Path::new("-"))
    };
    if path == "-" {
        if file == Some("-") {
            return Err(RequestError::StdinTwice);
        }
        return Ok((None, None, read_stdin()?, "Dockerfile".to_string()));
    }
    let context = PathBuf::from(path);
    if !context.is_dir() {
        return Err(RequestError::ContextMissing(context));
    }
    if file == Some("-") {
        return Ok((Some(context), None, read_stdin()?, "Dockerfile".to_string()));
    }
    let df = match file {
        Some(f) => PathBuf::from(f),
        None => context.join("Dockerfile"),
    };
    let bytes = std::fs::read(&df).map_err(|source| RequestError::Dockerfile {
        path: df.clone(),
        source,
    })?;
    let text = utf8_text(bytes, &df)?;
    let name = display_name(&df);
    Ok((Some(context), Some(df), text, name))
}

/// The Dockerfile's bytes as text, or an error naming the first byte that
/// is not UTF-8 (its line and offset).
fn utf8_text(bytes: Vec<u8>, path: &Path) -> Result<String, RequestError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let offset = e.utf8_error().valid_up_to();
        let before = &bytes[..offset];
        let utf16 = bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]);
        RequestError::DockerfileNotUtf8 {
            path: path.to_path_buf(),
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            offset,
            byte: bytes.get(offset).copied().unwrap_or(0),
            hint: if utf16 {
                " (the file starts with a UTF-16 byte order mark)"
            } else {
                ""
            },
        }
    })
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".to_string())
}

/// What is wrong with a `--build-context` value ([`RequestError::BuildContext`]).
#[derive(Debug, thiserror::Error)]
pub enum BuildContextProblem {
    /// Not `NAME=VALUE` with both parts.
    #[error("use NAME=DIR, NAME=docker-image://REF or NAME=oci-layout://PATH[:TAG|@DIGEST]")]
    Syntax,
    /// A local context (named) that is not a directory.
    #[error("{0} is not a directory (a named context is a directory, docker-image://REF or oci-layout://PATH)")]
    NotADirectory(String),
}

/// One `--build-context NAME=VALUE`, as buildx reads it: `docker-image://REF`,
/// `oci-layout://PATH[:TAG|@DIGEST]` (resolved in the layout now, so a bad
/// path or tag fails before the build), or a local directory.
fn parse_build_context(
    value: &str,
) -> Result<(String, NamedContext, Option<PathBuf>), RequestError> {
    let bad = |reason| RequestError::BuildContext {
        value: value.to_string(),
        reason,
    };
    let (name, target) = value
        .split_once('=')
        .filter(|(n, t)| !n.is_empty() && !t.is_empty())
        .ok_or_else(|| bad(BuildContextProblem::Syntax))?;
    if let Some(reference) = target.strip_prefix("docker-image://") {
        kbuild_registry::Reference::parse(reference).map_err(|source| {
            RequestError::BuildContextImage {
                value: value.to_string(),
                source: Box::new(source),
            }
        })?;
        return Ok((
            name.to_string(),
            NamedContext::Image(reference.to_string()),
            None,
        ));
    }
    if target.starts_with(kbuild_solver::layout::SCHEME) {
        let layout_err = |source| RequestError::BuildContextLayout {
            value: value.to_string(),
            source: Box::new(source),
        };
        let layout = kbuild_solver::layout::LayoutRef::parse(target).map_err(layout_err)?;
        let digest = layout.resolve().map_err(layout_err)?;
        let pinned = kbuild_solver::layout::LayoutRef {
            path: layout.path.clone(),
            select: kbuild_solver::layout::Select::Digest(digest),
        }
        .to_absolute()
        .map_err(layout_err)?;
        return Ok((name.to_string(), NamedContext::Image(pinned), None));
    }
    if let Some(stage) = target.strip_prefix("target:") {
        return Err(RequestError::NotImplemented(
            format!("--build-context {name}=target:{stage}"),
            "a named context from another bake target is not supported by kubectl build yet; use a directory, docker-image:// or oci-layout://",
        ));
    }
    if target.contains("://") || target.starts_with("git@") {
        return Err(RequestError::NotImplemented(
            format!("--build-context {name}={target}"),
            "named contexts from URLs and git repositories are not supported by kubectl build yet; use a directory, docker-image:// or oci-layout://",
        ));
    }
    let dir = PathBuf::from(target);
    if !dir.is_dir() {
        return Err(bad(BuildContextProblem::NotADirectory(target.to_string())));
    }
    Ok((name.to_string(), NamedContext::Dir, Some(dir)))
}

/// `false`, `0` (how buildx users turn an attestation off).
fn is_false(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "0")
}

//! The engine: runs a build plan as a DAG.
//!
//! Every stage instance and every step is computed at most once per build
//! (a step shared by several platforms runs once) and independent stages
//! run concurrently; the heavy work (copying, diffing, compressing,
//! unpacking) runs on blocking threads bounded by the number of cores.
//! Each step has a content-addressed cache key — its parent's key, the
//! instruction with its expanded arguments, the platform, and the digests of
//! what it reads — and a finished step is recorded in the content store
//! under `cache/<key>`, so a rebuild with nothing changed redoes nothing.

use crate::config::{self, StageMeta};
use crate::copy::{self, CopyError};
use crate::fsutil::{join_container, resolve_in_root};
use crate::options::{NetworkMode, SecretSpec, SshSpec};
use crate::progress::{Event, Progress};
use crate::run;
use crate::users;
use kbuild_dockerfile::graph::{self, add_source_kind, AddSourceKind, Chmod};
use kbuild_dockerfile::instructions::{Instruction, SecurityMode, SourceContent};
use kbuild_dockerfile::plan::{
    self, BaseImageConfig, BuildPlan, PlanOptions, Source as PlanSource, StageBase, StageId,
    StageInstance, Step, StepId,
};
use kbuild_image::{
    Compression, ContentStore, Descriptor, DescriptorPlatform, Digest, Document, ImageConfig,
    Index, LayerWriter, Manifest, MEDIA_TYPE_OCI_CONFIG,
};
use kbuild_platform::Platform;
use kbuild_worker::executor::{Cancel, Executor, RunSpec, User as RunUser};
use kbuild_worker::snapshot::{write_diff, ApplyOptions, ApplyReport, DiffOptions, Snapshotter};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OnceCell, Semaphore};

/// A build failure. Its Display is one line naming the step or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The Dockerfile does not plan.
    #[error(transparent)]
    Plan(#[from] plan::Error),
    /// A step failed; `step` is its progress name.
    #[error("{step}: {reason}")]
    Step {
        /// `[platform stage i/n] INSTRUCTION`.
        step: String,
        /// What went wrong.
        reason: String,
    },
    /// A base image could not be had.
    #[error("{0}")]
    Image(String),
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] kbuild_image::Error),
    /// The snapshotter failed.
    #[error("snapshots: {0}")]
    Snapshot(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] kbuild_registry::Error),
    /// A failure shared by several waiters (a step many platforms need).
    #[error("{0}")]
    Shared(Arc<SolveError>),
    /// A platform's RUN steps cannot execute on this machine.
    #[error("{0}")]
    Emulation(String),
    /// A step asks for a privilege the build was not granted.
    #[error("{file}:{line}: {instruction} needs the {entitlement} entitlement, which this build does not grant")]
    EntitlementDenied {
        /// The Dockerfile's name.
        file: String,
        /// The step's first line.
        line: usize,
        /// The instruction as written (shortened).
        instruction: String,
        /// The entitlement (`security.insecure`).
        entitlement: &'static str,
    },
    /// A worker thread died.
    #[error("internal error: {0}")]
    Internal(String),
    /// A layer could not be unpacked or applied (an entry the layer policy
    /// rejects, or a filesystem error).
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer blob's digest.
        digest: String,
        /// What went wrong, naming the entry.
        source: kbuild_worker::snapshot::Error,
    },
    /// An image would have to be pulled for a platform that does not exist
    /// (`linux/arm65`, `foo/bar`, `linux/arm/v9`): only stages that start
    /// `FROM scratch` build for such a platform.
    #[error("{source}; only FROM scratch stages build for an unknown platform, but {image} would have to be pulled for it")]
    UnknownPlatform {
        /// The image the plan needs for that platform.
        image: String,
        /// Why the platform is unknown (names it, lists the supported ones).
        source: kbuild_platform::Error,
    },
    /// A base image (from the local store) offers no manifest for the
    /// wanted platform, even after containerd's compatibility fallbacks.
    #[error("{image} has no image for platform {wanted}; it provides: {}; pick one of those with --platform", offered.join(", "))]
    PlatformNotOffered {
        /// The image reference.
        image: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the image offers.
        offered: Vec<String>,
    },
}

type Shared<T> = Result<T, Arc<SolveError>>;

fn share(e: SolveError) -> Arc<SolveError> {
    match e {
        SolveError::Shared(a) => a,
        other => Arc::new(other),
    }
}

/// How a build runs.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// Ignore cached step results.
    pub no_cache: bool,
    /// Resolve base images at their registry even when the store has them.
    pub pull: bool,
    /// Compression of new layers.
    pub compression: Compression,
    /// Base image layers are converted to `compression` too.
    pub force_compression: bool,
    /// `SOURCE_DATE_EPOCH`: clamps file times in new layers and sets the
    /// image and history timestamps, so identical inputs give identical digests.
    pub source_date_epoch: Option<i64>,
    /// `--secret` values for RUN --mount=type=secret.
    pub secrets: Vec<SecretSpec>,
    /// `--ssh` values for RUN --mount=type=ssh.
    pub ssh: Vec<SshSpec>,
    /// `--add-host` entries for RUN's /etc/hosts.
    pub add_hosts: Vec<(String, std::net::IpAddr)>,
    /// `--network` for RUN steps without their own.
    pub network: NetworkMode,
    /// Limits on waiting for servers (ADD of a URL), as for registries.
    pub network_timeouts: kbuild_registry::Timeouts,
    /// The `security.insecure` entitlement: `RUN --security=insecure`
    /// may run without the sandbox's restrictions.
    pub allow_insecure: bool,
    /// Where persistent `RUN --mount=type=cache` directories live.
    pub cache_mounts: PathBuf,
    /// Runs RUN steps (a re-exec of our own binary).
    pub executor: Executor,
    /// Set to stop running steps (Ctrl-C).
    pub cancel: Cancel,
    /// Told about each layer of the images as soon as it is in the store.
    pub on_layer: crate::options::LayerHook,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            no_cache: false,
            pull: false,
            compression: Compression::Gzip(6),
            force_compression: false,
            source_date_epoch: None,
            secrets: Vec::new(),
            ssh: Vec::new(),
            add_hosts: Vec::new(),
            network: NetworkMode::Default,
            allow_insecure: false,
            network_timeouts: kbuild_registry::Timeouts::default(),
            cache_mounts: std::env::temp_dir().join("kbuild-cache-mounts"),
            executor: Executor::current_exe(),
            cancel: Cancel::new(),
            on_layer: Default::default(),
        }
    }
}

/// The files a build may read: the context directory (absent when the
/// Dockerfile came from stdin) and its `.dockerignore` rules.
pub struct Context {
    /// The context directory.
    pub dir: Option<PathBuf>,
    /// Paths (relative to `dir`) that do not exist for the build.
    pub ignore: Option<kbuild_ignore::Matcher>,
    /// Digests of the context's files known from earlier builds.
    pub checksums: Option<crate::checksums::ChecksumCache>,
}

impl Context {
    fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        self.ignore
            .as_ref()
            .is_some_and(|m| m.is_excluded(rel, is_dir))
    }

    fn may_contain_included(&self, dir: &str) -> bool {
        self.ignore
            .as_ref()
            .is_some_and(|m| m.may_contain_included(dir))
    }
}

/// One layer of a state: its blob and its diff id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRef {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The blob in the store.
    pub descriptor: Descriptor,
}

/// A root filesystem and image config after some steps.
#[derive(Debug, Clone)]
pub struct State {
    /// Layers, base first.
    pub layers: Vec<LayerRef>,
    /// The image config (rootfs and history included).
    pub config: ImageConfig,
    /// Stage facts the config does not carry.
    pub meta: StageMeta,
    /// Cache key of this state.
    pub key: String,
}

/// The image built for one target platform.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// The image's platform: the requested one (with the base image's os
    /// version when the request names none); its config says the same.
    pub platform: Platform,
    /// The image manifest, with its platform set.
    pub manifest: Descriptor,
    /// The final state (for the filesystem outputs).
    pub state: Arc<State>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The plan that ran.
    pub plan: BuildPlan,
    /// One image per target platform, in request order.
    pub images: Vec<PlatformImage>,
    /// The image index (several platforms) or the manifest (one platform).
    pub root: Descriptor,
}

/// The cache record of a finished step.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// Blobs prune must keep (the config).
    children: Vec<Digest>,
    /// The layer the step added, if any.
    layer: Option<LayerRef>,
    /// The config after the step.
    config: Digest,
    /// Whether CMD was set in the stage.
    cmd_set: bool,
}

/// A base image resolved for one platform.
#[derive(Debug)]
struct BaseImage {
    config: ImageConfig,
    layers: Vec<LayerRef>,
    manifest_digest: Digest,
}

/// Runs builds against a content store and snapshotter.
pub struct Solver {
    store: Arc<ContentStore>,
    snaps: Arc<Snapshotter>,
    registry: Arc<kbuild_registry::Client>,
    opts: SolveOptions,
    progress: Arc<dyn Progress>,
    cpu: Arc<Semaphore>,
    next_vertex: AtomicU64,
}

fn now_rfc3339(epoch: Option<i64>) -> String {
    let secs = epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    rfc3339(secs)
}

/// Format seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn sha_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The instruction as it goes into a cache key: expanded words, without
/// the source position and raw text (moving a line must not miss the cache).
/// How progress names the platform of a step, as buildx does: the platform
/// it runs on, and when that is not the target it builds for (a
/// `FROM --platform=$BUILDPLATFORM` stage), `->` and the target, without
/// the OS when it is the same: `linux/amd64->arm64`. A step shared by
/// several targets names the first.
fn vertex_platform(runs_on: &Platform, targets: &[Arc<Platform>]) -> String {
    match targets.first() {
        Some(t) if **t != *runs_on => {
            let target = t.to_string();
            let short = target
                .strip_prefix(&format!("{}/", runs_on.os))
                .filter(|_| t.os == runs_on.os)
                .unwrap_or(&target)
                .to_string();
            format!("{runs_on}->{short}")
        }
        _ => runs_on.to_string(),
    }
}

/// Writes the heredoc files of a COPY/ADD (named by their delimiter,
/// mode 0644 unless `--chmod` says otherwise) into a private directory and
/// copies them like context files to `req.dest` in `merged`.
fn copy_heredocs(
    heredocs: &[SourceContent],
    req: &copy::Request,
    merged: &std::path::Path,
) -> Result<(), String> {
    let files = tempfile::Builder::new()
        .prefix("kbuild-heredoc-")
        .tempdir()
        .map_err(|e| format!("create a directory for heredoc files: {e}"))?;
    for h in heredocs {
        let name = std::path::Path::new(&h.path);
        if name.components().count() != 1 || h.path.contains('/') {
            return Err(format!("the heredoc name {:?} is not a file name", h.path));
        }
        let path = files.path().join(name);
        std::fs::write(&path, h.data.as_bytes())
            .and_then(|()| {
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            })
            .map_err(|e| format!("write the heredoc file {}: {e}", h.path))?;
    }
    let mut heredoc_req = req.clone();
    heredoc_req.sources = heredocs.iter().map(|h| h.path.clone()).collect();
    heredoc_req.unpack_archives = false;
    heredoc_req.excludes.clear();
    heredoc_req.parents = false;
    let none = |_: &str, _: bool| false;
    let src = copy::Source {
        root: files.path(),
        what: "heredoc",
        excluded: &none,
        may_contain_included: &|_| false,
        keep_owner: false,
        checksums: None,
    };
    copy::copy(&src, &heredoc_req, merged).map_err(|e| e.to_string())
}

fn instruction_key(ins: &Instruction) -> Vec<u8> {
    let mut v = serde_json::to_value(ins).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("range");
        o.remove("original");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn to_platform(p: &DescriptorPlatform) -> Option<Platform> {
    let s = match &p.variant {
        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
        None => format!("{}/{}", p.os, p.architecture),
    };
    let mut plat = Platform::parse(&s).ok()?;
    plat.os_version = p.os_version.clone();
    Some(plat)
}

/// OCI manifests carry OCI layer media types; Docker's are renamed (same bytes).
fn oci_layer_media_type(mt: &str) -> String {
    match mt {
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER_GZIP => {
            kbuild_image::MEDIA_TYPE_OCI_LAYER_GZIP.to_string()
        }
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER => kbuild_image::MEDIA_TYPE_OCI_LAYER.to_string(),
        kbuild_image::MEDIA_TYPE_DOCKER_LAYER_ZSTD => {
            kbuild_image::MEDIA_TYPE_OCI_LAYER_ZSTD.to_string()
        }
        other => other.to_string(),
    }
}

/// The images `plan` pulls, each `(reference, platform)` once, sorted.
///
/// Fails when one of them is wanted for a platform that does not exist
/// ([`Platform::check_known`]): a build for `linux/arm65` or `linux/arm/v9`
/// only goes ahead when every stage that runs for it starts `FROM scratch`
/// (stages on another platform, such as `FROM --platform=$BUILDPLATFORM`,
/// may use images) and nothing copies from an image for it. Callers run
/// this before any build work; `--dry-run` runs it too.
pub fn images_needed(plan: &BuildPlan) -> Result<Vec<(String, Platform)>, SolveError> {
    let mut wanted: Vec<(String, Platform)> = Vec::new();
    for s in &plan.stages {
        if let StageBase::Image {
            reference,
            platform,
        } = &s.base
        {
            wanted.push((reference.clone(), Platform::clone(platform)));
        }
    }
    for st in &plan.steps {
        for src in &st.sources {
            if let PlanSource::Image {
                reference,
                platform,
            } = src
            {
                wanted.push((reference.clone(), Platform::clone(platform)));
            }
        }
    }
    wanted.sort_by_key(|(r, p)| (r.clone(), p.to_string()));
    wanted.dedup();
    for (reference, platform) in &wanted {
        platform
            .check_known()
            .map_err(|source| SolveError::UnknownPlatform {
                image: reference.clone(),
                source,
            })?;
    }
    Ok(wanted)
}

/// The platform of a final image: the target platform's os, architecture
/// and variant whatever the base image's config said (an `arm/v6` image
/// built on a base whose config claims `v7` is `arm/v6`), with the base's
/// os version and features kept when the target names none (Windows).
fn image_platform(target: &Platform, base: &ImageConfig) -> Platform {
    let mut p = target.clone();
    if p.os_version.is_none() && base.os == p.os {
        p.os_version = base.os_version.clone().filter(|v| !v.is_empty());
    }
    if p.os_features.is_empty() && base.os == p.os {
        p.os_features = base.os_features.clone().unwrap_or_default();
    }
    p
}

/// The name of a local image ref: `image/<normalized reference>`.
pub fn image_ref_name(reference: &str) -> Result<String, SolveError> {
    let r = kbuild_registry::Reference::parse(reference)?;
    Ok(format!("image/{r}"))
}

impl Solver {
    /// A solver over `store` and `snaps`, pulling through `registry`.
    pub fn new(
        store: Arc<ContentStore>,
        snaps: Arc<Snapshotter>,
        registry: Arc<kbuild_registry::Client>,
        opts: SolveOptions,
        progress: Arc<dyn Progress>,
    ) -> Solver {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Solver {
            store,
            snaps,
            registry,
            opts,
            progress,
            cpu: Arc::new(Semaphore::new(cores)),
            next_vertex: AtomicU64::new(1),
        }
    }

    /// The options the solver runs with.
    pub fn options(&self) -> &SolveOptions {
        &self.opts
    }

    /// The content store.
    pub fn store(&self) -> &Arc<ContentStore> {
        &self.store
    }

    /// The snapshotter.
    pub fn snapshots(&self) -> &Arc<Snapshotter> {
        &self.snaps
    }

    /// The registry client.
    pub fn registry(&self) -> &Arc<kbuild_registry::Client> {
        &self.registry
    }

    fn vertex(&self) -> u64 {
        self.next_vertex.fetch_add(1, Ordering::Relaxed)
    }

    /// Stops before any work when a step needs an entitlement the build
    /// lacks (BuildKit refuses such a build the same way).
    fn check_entitlements(&self, plan: &BuildPlan, file_name: &str) -> Result<(), SolveError> {
        for st in &plan.steps {
            if let Instruction::Run(r) = &*st.instruction {
                if r.security == SecurityMode::Insecure && !self.opts.allow_insecure {
                    let mut instruction: String = st.display.chars().take(60).collect();
                    if instruction.len() < st.display.len() {
                        instruction.push_str("...");
                    }
                    return Err(SolveError::EntitlementDenied {
                        file: file_name.to_string(),
                        line: st.lines.0,
                        instruction,
                        entitlement: "security.insecure",
                    });
                }
            }
        }
        Ok(())
    }

    /// Plan and build `dockerfile` for every platform of `opts`.
    /// `file_name` names the Dockerfile in error messages.
    pub async fn build(
        &self,
        dockerfile: &str,
        file_name: &str,
        opts: &PlanOptions,
        ctx: &Context,
    ) -> Result<BuildResult, SolveError> {
        let in_file = |e: plan::Error| SolveError::Plan(e.in_file(file_name));
        // Plan once without base image configs to learn which images are
        // needed, resolve them, then plan again with their configs (their
        // ENV, WORKDIR and ONBUILD take part in planning).
        let first = plan::plan(dockerfile, opts, &plan::NoImageConfigs).map_err(in_file)?;
        self.check_entitlements(&first, file_name)?;
        let wanted = images_needed(&first)?;
        let resolved =
            futures_util::future::join_all(wanted.iter().map(|(r, p)| self.resolve_image(r, p)))
                .await;
        let mut images: HashMap<(String, String), Arc<BaseImage>> = HashMap::new();
        let mut configs: BTreeMap<String, BaseImageConfig> = BTreeMap::new();
        for ((r, p), img) in wanted.iter().zip(resolved) {
            let img = img?;
            let c = img.config.config.clone().unwrap_or_default();
            configs.insert(
                format!("{r}@{p}"),
                BaseImageConfig {
                    env: c.env.unwrap_or_default(),
                    working_dir: c.working_dir.unwrap_or_default(),
                    user: c.user.unwrap_or_default(),
                    shell: c.shell.unwrap_or_default(),
                    on_build: c.on_build.unwrap_or_default(),
                },
            );
            images.insert((r.clone(), p.to_string()), img);
        }
        let plan = if images.is_empty() {
            first
        } else {
            plan::plan(dockerfile, opts, &configs).map_err(in_file)?
        };
        // RUN steps of foreign platforms need emulation: set it up (or stop
        // with the fix) before anything runs.
        let mut run_platforms: Vec<Platform> = Vec::new();
        for st in &plan.steps {
            if matches!(*st.instruction, Instruction::Run(_))
                && !run_platforms.contains(&st.platform)
            {
                run_platforms.push(Platform::clone(&st.platform));
            }
        }
        for p in &run_platforms {
            match kbuild_worker::binfmt::ensure(p) {
                Ok(kbuild_worker::binfmt::Action::AlreadySupported(_)) => {}
                Ok(action) => self.progress.event(Event::Note(format!("{p}: {action}"))),
                Err(e) => return Err(SolveError::Emulation(e.to_string())),
            }
        }
        let exec = Exec {
            solver: self,
            plan: &plan,
            ctx,
            images,
            steps: (0..plan.steps.len()).map(|_| OnceCell::new()).collect(),
            stages: (0..plan.stages.len()).map(|_| OnceCell::new()).collect(),
            froms_shown: Default::default(),
            in_image: crate::options::stages_in_images(&plan),
        };
        // Fail fast: the first platform that fails stops the others (their
        // running steps are killed) instead of letting them finish for
        // nothing.
        let finals = futures_util::future::try_join_all(
            plan.targets.iter().map(|t| exec.stage_state(t.final_stage)),
        )
        .await;
        let finals = match finals {
            Ok(f) => f,
            Err(e) => {
                self.opts.cancel.cancel();
                return Err(SolveError::Shared(e));
            }
        };
        let mut images_out = Vec::new();
        for (t, st) in plan.targets.iter().zip(finals) {
            let platform = image_platform(&t.platform, &st.config);
            let manifest = self.write_image(&st, &platform, &plan.labels)?;
            images_out.push(PlatformImage {
                platform,
                manifest,
                state: st,
            });
        }
        let root = if images_out.len() == 1 {
            images_out[0].manifest.clone()
        } else {
            let mut index = Index::new();
            for i in &images_out {
                let mut d = i.manifest.clone();
                d.platform = None;
                index.push_manifest(d, &i.platform)?;
            }
            index.write(&self.store)?
        };
        drop(exec);
        Ok(BuildResult {
            plan,
            images: images_out,
            root,
        })
    }

    /// Write the config and manifest of a final state.
    fn write_image(
        &self,
        st: &State,
        platform: &Platform,
        labels: &BTreeMap<String, String>,
    ) -> Result<Descriptor, SolveError> {
        let mut cfg = st.config.clone();
        // The config says what the index says, whatever the base claimed.
        let p = DescriptorPlatform::from_platform(platform)?;
        cfg.os = p.os;
        cfg.architecture = p.architecture;
        cfg.variant = p.variant;
        cfg.os_version = p.os_version;
        cfg.os_features = (!p.os_features.is_empty()).then_some(p.os_features);
        if !labels.is_empty() {
            let c = cfg.config.get_or_insert_with(Default::default);
            let l = c.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in labels {
                l.insert(k.clone(), v.clone());
            }
        }
        // The image's time is its last step's, so a fully cached rebuild
        // gives the same digests.
        cfg.created = cfg
            .history
            .iter()
            .rev()
            .find_map(|h| h.created.clone())
            .or_else(|| Some(now_rfc3339(self.opts.source_date_epoch)));
        if let Some(epoch) = self.opts.source_date_epoch {
            let t = rfc3339(epoch);
            cfg.created = Some(t.clone());
            for h in &mut cfg.history {
                h.created = Some(t.clone());
            }
        }
        cfg.rootfs.diff_ids = st.layers.iter().map(|l| l.diff_id).collect();
        let config_desc = cfg.write(&self.store, MEDIA_TYPE_OCI_CONFIG)?;
        let layers = st
            .layers
            .iter()
            .map(|l| {
                let mut d = if self.opts.force_compression {
                    kbuild_image::layer_in_compression(
                        &self.store,
                        &l.descriptor,
                        &l.diff_id,
                        self.opts.compression,
                    )?
                } else {
                    l.descriptor.clone()
                };
                d.media_type = oci_layer_media_type(&d.media_type);
                d.platform = None;
                Ok(d)
            })
            .collect::<Result<Vec<_>, SolveError>>()?;
        let manifest = Manifest::new(config_desc, layers);
        let mut desc = manifest.write(&self.store)?;
        desc.platform = Some(DescriptorPlatform::from_platform(platform)?);
        Ok(desc)
    }

    /// Resolve `reference` for `platform`: the local store first (images
    /// built here with `-o type=image`, or pulled before), the registry when
    /// the store has none or `--pull` was given.
    async fn resolve_image(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Arc<BaseImage>, SolveError> {
        let refname = image_ref_name(reference)?;
        if !self.opts.pull {
            if let Some(root) = self.store.get_ref(&refname)? {
                if let Some(img) = self.local_image(reference, &root, platform)? {
                    self.progress.event(Event::Note(format!(
                        "resolve {reference} for {platform}: local"
                    )));
                    return Ok(Arc::new(img));
                }
            }
        }
        self.progress
            .event(Event::Note(format!("pull {reference} for {platform}")));
        let r = kbuild_registry::Reference::parse(reference)?;
        let pulled = self.registry.pull_image(&r, platform, &self.store).await?;
        let root = Digest::parse(&pulled.root_digest.to_string())?;
        self.store.set_ref(&refname, &root)?;
        self.local_image(reference, &root, platform)?
            .map(Arc::new)
            .ok_or_else(|| {
                SolveError::Image(format!(
                    "{reference}: pulled image has no {platform} manifest"
                ))
            })
    }

    /// Read an image for `platform` from the store; `None` when the stored
    /// index has no matching platform or a blob is missing.
    fn local_image(
        &self,
        reference: &str,
        root: &Digest,
        platform: &Platform,
    ) -> Result<Option<BaseImage>, SolveError> {
        if !self.store.has(root) {
            return Ok(None);
        }
        let bytes = self.store.read(root)?;
        let (manifest_digest, lone) = match Document::parse(&bytes)? {
            Document::Manifest(_) => (*root, true),
            Document::Index(index) => {
                let candidates: Vec<(usize, Platform)> = index
                    .manifests
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.platform.as_ref().and_then(to_platform).map(|p| (i, p)))
                    .collect();
                let plats: Vec<Platform> = candidates.iter().map(|(_, p)| p.clone()).collect();
                match platform.best_match(plats.iter()) {
                    Some(k) => (index.manifests[candidates[k].0].digest, false),
                    None => {
                        let mut offered: Vec<String> = Vec::new();
                        // Attestation manifests say unknown/unknown: not worth listing.
                        for p in plats.iter().filter(|p| p.os != "unknown") {
                            let p = p.to_string();
                            if !offered.contains(&p) {
                                offered.push(p);
                            }
                        }
                        return Err(SolveError::PlatformNotOffered {
                            image: reference.to_string(),
                            wanted: platform.to_string(),
                            offered,
                        });
                    }
                }
            }
        };
        if !self.store.has(&manifest_digest) {
            return Ok(None);
        }
        let manifest = Manifest::parse(&self.store.read(&manifest_digest)?)?;
        if !self.store.has(&manifest.config.digest) {
            return Ok(None);
        }
        let config = ImageConfig::parse(&self.store.read(&manifest.config.digest)?)?;
        if lone {
            // A manifest without an index is only right if its config says
            // so (the registry client checks the same when it pulls one).
            let offered = to_platform(&config.platform());
            if !offered.as_ref().is_some_and(|p| platform.matches(p)) {
                return Err(SolveError::PlatformNotOffered {
                    image: reference.to_string(),
                    wanted: platform.to_string(),
                    offered: vec![offered.map_or_else(
                        || {
                            let p = config.platform();
                            format!("{}/{}", p.os, p.architecture)
                        },
                        |p| p.to_string(),
                    )],
                });
            }
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(SolveError::Image(format!(
                "image {reference}: config lists {} layers but the manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (d, diff_id) in manifest.layers.iter().zip(config.rootfs.diff_ids.iter()) {
            if !self.store.has(&d.digest) && d.urls.is_empty() {
                return Ok(None);
            }
            layers.push(LayerRef {
                diff_id: *diff_id,
                descriptor: d.clone(),
            });
        }
        Ok(Some(BaseImage {
            config,
            layers,
            manifest_digest,
        }))
    }

    /// Make sure every layer is unpacked; returns their directories, base first.
    async fn layer_dirs(&self, layers: &[LayerRef]) -> Result<Vec<PathBuf>, SolveError> {
        let mut out = Vec::new();
        for l in layers {
            let diff_id = l.diff_id.to_string();
            if let Some(p) = self
                .snaps
                .layer(&diff_id)
                .map_err(|e| SolveError::Snapshot(e.to_string()))?
            {
                out.push(p);
                continue;
            }
            let store = self.store.clone();
            let snaps = self.snaps.clone();
            let desc = l.descriptor.clone();
            let _permit = self
                .cpu
                .acquire()
                .await
                .map_err(|e| SolveError::Internal(e.to_string()))?;
            let p = tokio::task::spawn_blocking(move || -> Result<PathBuf, SolveError> {
                let blob = store.open_blob(&desc.digest)?;
                let reader = kbuild_image::decompress_reader(
                    &desc.media_type,
                    std::io::BufReader::new(blob),
                )?;
                snaps
                    .unpack_layer(&diff_id, reader)
                    .map_err(|source| SolveError::Layer {
                        digest: desc.digest.to_string(),
                        source,
                    })
            })
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))??;
            out.push(p);
        }
        Ok(out)
    }
}

/// One build's memo tables.
struct Exec<'a> {
    solver: &'a Solver,
    plan: &'a BuildPlan,
    ctx: &'a Context,
    images: HashMap<(String, String), Arc<BaseImage>>,
    steps: Vec<OnceCell<Shared<Arc<State>>>>,
    stages: Vec<OnceCell<Shared<Arc<State>>>>,
    /// FROM vertices already shown: a stage instance per target with the
    /// same base and platform (`FROM --platform=$BUILDPLATFORM`) shows it once.
    froms_shown: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per stage instance: whether its layers go into an image (`on_layer`).
    in_image: Vec<bool>,
}

impl<'a> Exec<'a> {
    fn image(&self, reference: &str, platform: &Platform) -> Result<Arc<BaseImage>, SolveError> {
        self.images
            .get(&(reference.to_string(), platform.to_string()))
            .cloned()
            .ok_or_else(|| {
                SolveError::Image(format!("image {reference} for {platform} was not resolved"))
            })
    }

    fn image_state(&self, reference: &str, platform: &Platform) -> Result<Arc<State>, SolveError> {
        let img = self.image(reference, platform)?;
        let mut config = img.config.clone();
        config::ensure_path(&mut config);
        Ok(Arc::new(State {
            layers: img.layers.clone(),
            config,
            meta: StageMeta::default(),
            key: sha_hex(&[b"image", img.manifest_digest.to_string().as_bytes()]),
        }))
    }

    fn scratch_state(platform: &Platform) -> Result<Arc<State>, SolveError> {
        let mut config = ImageConfig::for_platform(platform)?;
        config::ensure_path(&mut config);
        // BuildKit's empty image works in /.
        if let Some(c) = config.config.as_mut() {
            c.working_dir = Some("/".to_string());
        }
        Ok(Arc::new(State {
            layers: Vec::new(),
            config,
            meta: StageMeta::default(),
            key: sha_hex(&[b"scratch", platform.to_string().as_bytes()]),
        }))
    }

    fn stage_label(stage: &StageInstance) -> String {
        stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", stage.index))
    }

    fn stage_state(
        &'a self,
        id: StageId,
    ) -> futures_util::future::BoxFuture<'a, Shared<Arc<State>>> {
        Box::pin(async move {
            self.stages[id.0]
                .get_or_init(|| async move { self.compute_stage(id).await.map_err(share) })
                .await
                .clone()
        })
    }

    async fn compute_stage(&'a self, id: StageId) -> Result<Arc<State>, SolveError> {
        let stage = self.plan.stage(id);
        let is_vertex = |id: &StepId| {
            matches!(
                *self.plan.step(*id).instruction,
                Instruction::Copy(_)
                    | Instruction::Add(_)
                    | Instruction::Workdir(_)
                    | Instruction::Run(_)
            )
        };
        let total = stage.steps.iter().filter(|s| is_vertex(s)).count() + 1;
        let mut position = 1;
        let label = Self::stage_label(stage);
        let mut state = match &stage.base {
            StageBase::Scratch => Self::scratch_state(&stage.platform)?,
            StageBase::Image {
                reference,
                platform,
            } => {
                // One vertex for every instance of the stage that starts
                // from this image, as the pull is one.
                let name = format!("[{} {} 1/{total}] FROM {reference}", stage.platform, label);
                let first = self
                    .froms_shown
                    .lock()
                    .map(|mut shown| shown.insert(name.clone()))
                    .unwrap_or(true);
                if first {
                    let v = self.solver.vertex();
                    self.solver.progress.event(Event::Start { id: v, name });
                    let t = Instant::now();
                    let st = self.image_state(reference, platform)?;
                    self.solver.progress.event(Event::Done {
                        id: v,
                        elapsed: t.elapsed(),
                    });
                    st
                } else {
                    self.image_state(reference, platform)?
                }
            }
            StageBase::Stage(sid) => self.stage_state(*sid).await.map_err(SolveError::Shared)?,
        };
        // A stage that reuses another as its base keeps that stage's config
        // but not its "CMD set here" fact.
        if matches!(stage.base, StageBase::Stage(_)) {
            let mut s = (*state).clone();
            s.meta = StageMeta::default();
            state = Arc::new(s);
        }
        // The base's ONBUILD triggers run as this stage's first steps (the
        // planner put them there); the image made here does not carry them
        // on, as BuildKit clears them.
        let has_triggers = |s: &State| {
            s.config
                .config
                .as_ref()
                .and_then(|c| c.on_build.as_ref())
                .is_some_and(|o| !o.is_empty())
        };
        if has_triggers(&state) {
            let mut s = (*state).clone();
            if let Some(c) = s.config.config.as_mut() {
                c.on_build = None;
            }
            s.key = sha_hex(&[s.key.as_bytes(), b"onbuild-triggers-run"]);
            state = Arc::new(s);
        }
        let on_layer = Some(&self.solver.opts.on_layer).filter(|_| self.in_image[id.0]);
        if let Some(h) = on_layer {
            h.added(&[], &state.layers);
        }
        for step_id in stage.steps.iter() {
            if is_vertex(step_id) {
                position += 1;
            }
            let step = self.plan.step(*step_id);
            let name = format!(
                "[{} {} {position}/{total}] {}",
                vertex_platform(&step.platform, &step.platforms),
                label,
                step.display
            );
            let parent = state.clone();
            state = self
                .solver_step(*step_id, parent.clone(), name)
                .await
                .map_err(SolveError::Shared)?;
            if let Some(h) = on_layer {
                h.added(&parent.layers, &state.layers);
            }
        }
        Ok(state)
    }

    async fn solver_step(
        &'a self,
        id: StepId,
        parent: Arc<State>,
        name: String,
    ) -> Shared<Arc<State>> {
        self.steps[id.0]
            .get_or_init(|| async move { self.run_step(id, parent, name).await.map_err(share) })
            .await
            .clone()
    }

    async fn source_state(
        &'a self,
        src: &PlanSource,
        platform: &Platform,
    ) -> Result<Arc<State>, SolveError> {
        match src {
            PlanSource::Scratch => Self::scratch_state(platform),
            PlanSource::Stage(sid) => self.stage_state(*sid).await.map_err(SolveError::Shared),
            PlanSource::Image {
                reference,
                platform,
            } => self.image_state(reference, platform),
        }
    }

    async fn run_step(
        &'a self,
        id: StepId,
        parent: Arc<State>,
        name: String,
    ) -> Result<Arc<State>, SolveError> {
        let step = self.plan.step(id);
        let fail = |reason: String| SolveError::Step {
            step: name.clone(),
            reason,
        };
        match &*step.instruction {
            Instruction::Copy(_)
            | Instruction::Add(_)
            | Instruction::Workdir(_)
            | Instruction::Run(_) => {}
            Instruction::From(_) => return Ok(parent),
            _ => {
                // Metadata: config only, no vertex, no layer. Recorded in the
                // cache too, so a rebuild keeps its history times and digests.
                let key = sha_hex(&[parent.key.as_bytes(), &instruction_key(&step.instruction)]);
                if !self.solver.opts.no_cache {
                    if let Some(st) = self.cached(&key, &parent)? {
                        return Ok(Arc::new(st));
                    }
                }
                let mut st = (*parent).clone();
                let created = now_rfc3339(self.solver.opts.source_date_epoch);
                if let Some(text) =
                    config::apply(&mut st.config, &mut st.meta, &step.instruction, None)
                        .map_err(|e| fail(e.to_string()))?
                {
                    st.config
                        .push_empty_layer(config::history(&created, text, true));
                }
                st.key = key.clone();
                self.record(&key, &st, None)?;
                return Ok(Arc::new(st));
            }
        }

        let mut sources = Vec::new();
        for s in &step.sources {
            sources.push(self.source_state(s, &step.platform).await?);
        }
        let v = self.solver.vertex();
        // The vertex starts when its work does (after the cache lookup and
        // once it has a CPU slot), so its time is its own.
        let started: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        let result = self
            .run_fs_step(step, &parent, &sources, &name, v, &started)
            .await;
        let started = match started.lock().ok().and_then(|s| *s) {
            Some(t) => t,
            None => {
                self.solver.progress.event(Event::Start {
                    id: v,
                    name: name.clone(),
                });
                Instant::now()
            }
        };
        match &result {
            Ok((_, true)) => self.solver.progress.event(Event::Cached {
                id: v,
                name: name.clone(),
            }),
            Ok(_) => self.solver.progress.event(Event::Done {
                id: v,
                elapsed: started.elapsed(),
            }),
            Err(_) => self.solver.progress.event(Event::Failed {
                id: v,
                elapsed: started.elapsed(),
            }),
        }
        result.map(|(s, _)| s)
    }

    /// A step that changes the filesystem. Returns the state and whether it came from the cache.
    async fn run_fs_step(
        &'a self,
        step: &Step,
        parent: &Arc<State>,
        sources: &[Arc<State>],
        name: &str,
        vertex: u64,
        started: &std::sync::Mutex<Option<Instant>>,
    ) -> Result<(Arc<State>, bool), SolveError> {
        let start = || {
            self.solver.progress.event(Event::Start {
                id: vertex,
                name: name.to_string(),
            });
            if let Ok(mut s) = started.lock() {
                *s = Some(Instant::now());
            }
        };
        let solver = self.solver;
        let fail = |reason: String| SolveError::Step {
            step: name.to_string(),
            reason,
        };
        let workdir_now = parent
            .config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());

        // What the step reads, for its cache key.
        let mut key_parts: Vec<Vec<u8>> = vec![
            parent.key.as_bytes().to_vec(),
            instruction_key(&step.instruction),
            step.platform.to_string().into_bytes(),
            // File times and history dates depend on it: a reproducible
            // build never reuses a normal build's step, nor the reverse.
            format!("source-date-epoch:{:?}", solver.opts.source_date_epoch).into_bytes(),
        ];
        for s in sources {
            key_parts.push(s.key.as_bytes().to_vec());
        }
        // ADD's downloads live here until the step is done.
        let mut remote_root: Option<tempfile::TempDir> = None;
        let (copy_req, from_context) = match &*step.instruction {
            Instruction::Copy(c) => (
                Some(
                    self.copy_request(
                        &c.sources,
                        &c.dest,
                        &c.chmod,
                        &c.excludes,
                        c.parents,
                        false,
                        "COPY",
                        &workdir_now,
                    )
                    .map_err(fail)?,
                ),
                c.from.is_none(),
            ),
            Instruction::Add(a) => {
                let mut sources = a.sources.clone();
                if let Some(git) = a.sources.iter().find(|s| is_git(s)) {
                    return Err(fail(format!(
                        "ADD of the git repository {git} is not supported by this builder yet; clone it into the build context and COPY it"
                    )));
                }
                if a.sources.iter().any(|s| is_url(s)) {
                    if !a.sources.iter().all(|s| is_url(s)) {
                        return Err(fail(
                            "ADD mixes URLs and local files; split it into one ADD per kind".into(),
                        ));
                    }
                    let dir = tempfile::Builder::new()
                        .prefix("kbuild-add-")
                        .tempdir()
                        .map_err(|e| fail(format!("temporary directory: {e}")))?;
                    sources.clear();
                    for url in &a.sources {
                        sources.push(
                            download(
                                url,
                                dir.path(),
                                a.checksum.as_deref(),
                                &self.solver.opts.network_timeouts,
                            )
                            .await
                            .map_err(fail)?,
                        );
                    }
                    remote_root = Some(dir);
                }
                let unpack = a.unpack != Some(false) && remote_root.is_none();
                (
                    Some(
                        self.copy_request(
                            &sources,
                            &a.dest,
                            &a.chmod,
                            &a.excludes,
                            false,
                            unpack,
                            "ADD",
                            &workdir_now,
                        )
                        .map_err(fail)?,
                    ),
                    true,
                )
            }
            _ => (None, false),
        };
        // Heredoc sources (`COPY <<EOF /dest`) are files written by the
        // Dockerfile itself: their text is in the instruction, so in the key.
        let heredocs: Vec<SourceContent> = match &*step.instruction {
            Instruction::Copy(c) => c.contents.clone(),
            Instruction::Add(a) => a.contents.clone(),
            _ => Vec::new(),
        };
        if let Some(req) = &copy_req {
            let dir = req.dest.ends_with('/');
            if req.sources.len() + heredocs.len() > 1 && !dir {
                return Err(fail(format!(
                    "{} with more than one source needs a destination directory ending with /: {}",
                    req.instruction, req.dest
                )));
            }
        }
        let from_context = from_context && copy_req.as_ref().is_some_and(|r| !r.sources.is_empty());
        if let (Some(req), true) = (&copy_req, from_context) {
            let ctx_dir = remote_root.as_ref().map(|d| d.path().to_path_buf()).or_else(|| self.ctx.dir.clone()).ok_or_else(|| {
                fail("there is no build context (the Dockerfile came from stdin); give a context directory".into())
            })?;
            let ctx = self.ctx;
            let req = req.clone();
            let sum = {
                let excluded = |p: &str, d: bool| ctx.excluded(p, d);
                let descend = |p: &str| ctx.may_contain_included(p);
                let src = copy::Source {
                    root: &ctx_dir,
                    what: "build context",
                    excluded: &excluded,
                    may_contain_included: &descend,
                    keep_owner: false,
                    checksums: ctx.checksums.as_ref(),
                };
                copy::checksum(&src, &req).map_err(|e| fail(e.to_string()))?
            };
            key_parts.push(sum.into_bytes());
        }
        if matches!(*step.instruction, Instruction::Run(_)) {
            // Build args are part of RUN's environment; secrets are not keyed.
            for (k, v) in step.args.iter() {
                key_parts.push(format!("arg:{k}={v}").into_bytes());
            }
            key_parts.push(format!("{:?}", solver.opts.network).into_bytes());
            // --add-host changes what the command resolves.
            for (host, ip) in &solver.opts.add_hosts {
                key_parts.push(format!("add-host:{host}={ip}").into_bytes());
            }
            for m in step.mounts.iter() {
                if let kbuild_dockerfile::instructions::Mount::Bind(b) = m {
                    if b.from.is_none() {
                        if let Some(dir) = &self.ctx.dir {
                            let ctx = self.ctx;
                            let excluded = |p: &str, d: bool| ctx.excluded(p, d);
                            let descend = |p: &str| ctx.may_contain_included(p);
                            let src = copy::Source {
                                root: dir,
                                what: "build context",
                                excluded: &excluded,
                                may_contain_included: &descend,
                                keep_owner: false,
                                checksums: ctx.checksums.as_ref(),
                            };
                            let req = copy::Request {
                                sources: vec![b.source.clone().unwrap_or_else(|| ".".into())],
                                ..Default::default()
                            };
                            key_parts.push(
                                copy::checksum(&src, &req)
                                    .map_err(|e| fail(e.to_string()))?
                                    .into_bytes(),
                            );
                        }
                    }
                }
            }
        }
        let key_refs: Vec<&[u8]> = key_parts.iter().map(|p| p.as_slice()).collect();
        let key = sha_hex(&key_refs);

        if !solver.opts.no_cache {
            if let Some(st) = self.cached(&key, parent)? {
                start();
                return Ok((Arc::new(st), true));
            }
        }

        // Layers to mount: the parent's (none for COPY --link) and the source's.
        let link = matches!(&*step.instruction, Instruction::Copy(c) if c.link)
            || matches!(&*step.instruction, Instruction::Add(a) if a.link);
        // Windows layers keep their files under `Files/` (and registry
        // hives under `Hives/`); a Linux builder cannot mount them, so a
        // Windows stage's COPY/ADD writes into an empty layer, as --link does.
        let windows = step.platform.os == "windows";
        let lowers = if link || windows {
            Vec::new()
        } else {
            solver.layer_dirs(&parent.layers).await?
        };
        let source_lowers = match sources.first() {
            Some(s) if matches!(*step.instruction, Instruction::Copy(_)) => {
                Some(solver.layer_dirs(&s.layers).await?)
            }
            _ => None,
        };
        let created = now_rfc3339(solver.opts.source_date_epoch);
        let mut st = (**parent).clone();
        let instruction = step.instruction.clone();
        let run_source_lowers = if matches!(*step.instruction, Instruction::Run(_)) {
            let mut v = Vec::new();
            for s in sources {
                v.push(solver.layer_dirs(&s.layers).await?);
            }
            v
        } else {
            Vec::new()
        };
        let user = st
            .config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        // Downloads (ADD URL) replace the context as the source, without .dockerignore.
        let ctx_dir = remote_root
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .or_else(|| self.ctx.dir.clone());
        let ignore = if remote_root.is_some() {
            None
        } else {
            self.ctx.ignore.clone()
        };
        let snaps = solver.snaps.clone();
        let store = solver.store.clone();
        let compression = solver.opts.compression;
        let sde = solver.opts.source_date_epoch;
        let chown_spec = match &*step.instruction {
            Instruction::Copy(c) => c.chown.clone(),
            Instruction::Add(a) => a.chown.clone(),
            _ => None,
        };
        let workdir_target = match &*step.instruction {
            Instruction::Workdir(w) => Some(join_container(
                &windows_path(&workdir_now),
                &windows_path(&w.path),
            )),
            _ => None,
        };
        let mut history_text = match &*step.instruction {
            Instruction::Workdir(_) => {
                format!("WORKDIR {}", workdir_target.clone().unwrap_or_default())
            }
            Instruction::Copy(c) => graph::copy_history("COPY", &c.sources, &c.contents, &c.dest),
            Instruction::Add(a) => graph::copy_history("ADD", &a.sources, &a.contents, &a.dest),
            // RUN: set below from its argv.
            _ => String::new(),
        };
        let run_data = match &*step.instruction {
            Instruction::Run(r) => {
                let env = st
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.env.clone())
                    .unwrap_or_default();
                let args: Vec<(String, String)> = step
                    .args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let shell = config::current_shell(&st.config);
                let argv = run::argv(&r.command, &r.heredocs, &shell);
                history_text = graph::run_history(&argv, &args);
                Some(RunData {
                    argv,
                    env: run::environment(&env, &args),
                    workdir: workdir_now.clone(),
                    network: run::network(r.network, solver.opts.network),
                    security: match r.security {
                        SecurityMode::Sandbox => kbuild_worker::executor::Security::Sandbox,
                        SecurityMode::Insecure => kbuild_worker::executor::Security::Insecure,
                    },
                    mounts: step.mounts.to_vec(),
                    froms: run_source_lowers,
                    platform: (*step.platform).clone(),
                })
            }
            _ => None,
        };
        let ctx_dir_run = self.ctx.dir.clone();
        let opts = solver.opts.clone();
        let progress = solver.progress.clone();
        let permit = solver
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))?;
        start();
        let workdir_target2 = workdir_target.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<Option<LayerRef>, String> {
            let workdir_target = workdir_target2;
            let _permit = permit;
            let mount = snaps
                .mount(&lowers)
                .map_err(|e| format!("mount the root filesystem: {e}"))?;
            let merged = mount.merged().to_path_buf();
            let work = (|| -> Result<(), String> {
                match &*instruction {
                    Instruction::Workdir(_) => {
                        let target = workdir_target.clone().unwrap_or_else(|| "/".into());
                        let host =
                            resolve_in_root(&merged, &target, true).map_err(|e| e.to_string())?;
                        if !host.is_dir() {
                            let ids = users::user_ids(&merged, &user).map_err(|e| e.to_string())?;
                            let req = copy::Request {
                                chown: Some((ids.uid, ids.gid)),
                                ..Default::default()
                            };
                            copy::mkdir_all(&merged, &target, &req).map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    }
                    Instruction::Run(_) => {
                        let rd = run_data.as_ref().ok_or("no run data")?;
                        run_in(
                            &snaps,
                            &merged,
                            rd,
                            &user,
                            ctx_dir_run.as_deref(),
                            &opts,
                            &*progress,
                            vertex,
                        )
                    }
                    Instruction::Copy(_) | Instruction::Add(_) => {
                        let mut req = copy_req.clone().ok_or("no copy request")?;
                        if let Some(spec) = &chown_spec {
                            req.chown =
                                Some(users::chown_ids(&merged, spec).map_err(|e| e.to_string())?);
                        }
                        if !heredocs.is_empty() {
                            copy_heredocs(&heredocs, &req, &merged)?;
                            if req.sources.is_empty() {
                                return Ok(());
                            }
                        }
                        match &source_lowers {
                            Some(src_lowers) => {
                                let src_mount = snaps
                                    .mount(src_lowers)
                                    .map_err(|e| format!("mount the source filesystem: {e}"))?;
                                let none = |_: &str, _: bool| false;
                                let src = copy::Source {
                                    root: src_mount.merged(),
                                    what: "source stage",
                                    excluded: &none,
                                    may_contain_included: &|_| false,
                                    keep_owner: true,
                                    checksums: None,
                                };
                                let r = copy::copy(&src, &req, &merged).map_err(|e| e.to_string());
                                src_mount.unmount().map_err(|e| e.to_string())?;
                                r
                            }
                            None => {
                                let dir = ctx_dir.as_deref().ok_or("there is no build context")?;
                                let excluded = |p: &str, d: bool| {
                                    ignore.as_ref().is_some_and(|m| m.is_excluded(p, d))
                                };
                                let descend = |p: &str| {
                                    ignore.as_ref().is_some_and(|m| m.may_contain_included(p))
                                };
                                let src = copy::Source {
                                    root: dir,
                                    what: "build context",
                                    excluded: &excluded,
                                    may_contain_included: &descend,
                                    keep_owner: false,
                                    checksums: None,
                                };
                                copy::copy(&src, &req, &merged)
                                    .map_err(|e: CopyError| e.to_string())
                            }
                        }
                    }
                    _ => Ok(()),
                }
            })();
            if let Err(e) = work {
                let _ = mount.unmount();
                return Err(e);
            }
            // Held until the layer is adopted: recovery leaves it alone.
            let snapshot = mount.commit().map_err(|e| format!("unmount: {e}"))?;
            let dir = snapshot.path().to_path_buf();
            let empty = std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if empty {
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(None);
            }
            let dir = if windows { windows_layout(&dir)? } else { dir };
            let layer = write_layer(&store, compression, &dir, &lowers, sde);
            let layer = match layer {
                Ok(Some(l)) => l,
                Ok(None) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Ok(None);
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            snaps
                .adopt_layer(&layer.diff_id.to_string(), &dir)
                .map_err(|e| format!("keep the layer: {e}"))?;
            Ok(Some(LayerRef {
                diff_id: layer.diff_id,
                descriptor: layer.descriptor,
            }))
        })
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))?
        .map_err(fail)?;

        if let Some(w) = &workdir_target {
            st.config
                .config
                .get_or_insert_with(Default::default)
                .working_dir = Some(w.clone());
        }
        match &outcome {
            Some(l) => {
                st.layers.push(l.clone());
                st.config
                    .push_layer(l.diff_id, config::history(&created, history_text, false));
            }
            None => st
                .config
                .push_empty_layer(config::history(&created, history_text, true)),
        }
        st.key = key.clone();
        self.record(&key, &st, outcome)?;
        Ok((Arc::new(st), false))
    }

    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    fn copy_request(
        &self,
        sources: &[String],
        dest: &str,
        chmod: &Option<String>,
        excludes: &[String],
        parents: bool,
        unpack: bool,
        instruction: &'static str,
        workdir: &str,
    ) -> Result<copy::Request, String> {
        let chmod = match chmod {
            Some(m) => Some(Chmod::parse(m).map_err(|e| format!("invalid --chmod={m}: {e}"))?),
            None => None,
        };
        let dest = windows_path(dest);
        let dest = dest.as_str();
        let slash = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
        let mut d = join_container(&windows_path(workdir), dest);
        if slash && !d.ends_with('/') {
            d.push('/');
        }
        Ok(copy::Request {
            sources: sources.to_vec(),
            dest: d,
            chown: None,
            chmod,
            excludes: excludes.to_vec(),
            parents,
            unpack_archives: unpack,
            instruction,
        })
    }

    fn cached(&self, key: &str, parent: &Arc<State>) -> Result<Option<State>, SolveError> {
        let store = &self.solver.store;
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
            // The step's layer in this build's compression: a cache made by
            // a gzip build serves a zstd build with zstd layers.
            l.descriptor = kbuild_image::layer_in_compression(
                store,
                &l.descriptor,
                &l.diff_id,
                self.solver.opts.compression,
            )?;
            layers.push(l);
        }
        Ok(Some(State {
            layers,
            config,
            meta: StageMeta {
                cmd_set: rec.cmd_set,
            },
            key: key.to_string(),
        }))
    }

    fn record(&self, key: &str, st: &State, layer: Option<LayerRef>) -> Result<(), SolveError> {
        let store = &self.solver.store;
        let (config, _) = store.put_bytes(&st.config.to_bytes()?)?;
        let rec = Record {
            children: vec![config],
            layer,
            config,
            cmd_set: st.meta.cmd_set,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| SolveError::Internal(e.to_string()))?;
        let (d, _) = store.put_bytes(&bytes)?;
        store.set_ref(&format!("cache/{key}"), &d)?;
        Ok(())
    }
}

/// Diff `dir` into a layer in the store. Reading files and writing the tar
/// stream run on this thread; hashing and compressing on a second one, fed
/// through a bounded channel, so the two overlap.
fn write_layer(
    store: &ContentStore,
    compression: Compression,
    dir: &Path,
    lowers: &[PathBuf],
    sde: Option<i64>,
) -> Result<Option<kbuild_image::Layer>, String> {
    use std::io::Write;
    struct Chan {
        tx: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
        buf: Vec<u8>,
    }
    const CHUNK: usize = 256 * 1024;
    impl Write for Chan {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.buf.is_empty() {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 64 * 1024));
                self.tx
                    .send(Some(full))
                    .map_err(|_| std::io::Error::other("the layer compressor stopped"))?;
            }
            Ok(())
        }
    }
    let lw = LayerWriter::new(store, compression).map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(8);
    let abort = tx.clone();
    let compressor = std::thread::spawn(move || -> Result<kbuild_image::Layer, String> {
        let mut lw = lw;
        for chunk in rx {
            match chunk {
                Some(c) => lw.write_all(&c).map_err(|e| e.to_string())?,
                // The producer failed: drop the ingest instead of committing it.
                None => return Err("aborted".to_string()),
            }
        }
        lw.finish().map_err(|e| e.to_string())
    });
    let produced = (|| -> Result<u64, String> {
        let mut tb = tar::Builder::new(Chan {
            tx,
            buf: Vec::with_capacity(CHUNK + 64 * 1024),
        });
        let stats = write_diff(
            dir,
            lowers,
            &mut tb,
            &DiffOptions {
                source_date_epoch: sde,
            },
        )
        .map_err(|e| e.to_string())?;
        let mut chan = tb.into_inner().map_err(|e| e.to_string())?;
        chan.flush().map_err(|e| e.to_string())?;
        Ok(stats.entries)
    })();
    if produced.is_err() {
        let _ = abort.send(None);
    }
    drop(abort);
    // Every sender is dropped now: the compressor ends.
    let layer = compressor
        .join()
        .map_err(|_| "the layer compressor panicked".to_string())?;
    let entries = produced?;
    // An upper directory with nothing to report (only directories copied up
    // unchanged) is no layer: the step leaves an empty_layer history entry.
    layer.map(|l| (entries > 0).then_some(l))
}

/// What a RUN step needs on its blocking thread.
struct RunData {
    argv: Vec<String>,
    env: Vec<String>,
    workdir: String,
    network: kbuild_worker::executor::Network,
    security: kbuild_worker::executor::Security,
    mounts: Vec<kbuild_dockerfile::instructions::Mount>,
    froms: Vec<Vec<PathBuf>>,
    platform: Platform,
}

/// Run one RUN step in the sandbox on the mounted root `merged`; output
/// goes to the progress view line by line, the last lines into the error.
#[allow(clippy::too_many_arguments)]
fn run_in(
    snaps: &Snapshotter,
    merged: &Path,
    rd: &RunData,
    user: &str,
    context: Option<&Path>,
    opts: &SolveOptions,
    progress: &dyn Progress,
    vertex: u64,
) -> Result<(), String> {
    let mut src_mounts = Vec::new();
    let mut from_roots = Vec::new();
    for lowers in &rd.froms {
        let m = snaps
            .mount(lowers)
            .map_err(|e| format!("mount a --mount source: {e}"))?;
        from_roots.push(m.merged().to_path_buf());
        src_mounts.push(m);
    }
    let res = run::prepare(
        &rd.mounts,
        &run::Inputs {
            context,
            from_roots: &from_roots,
            cache_dir: &opts.cache_mounts,
            secrets: &opts.secrets,
            ssh: &opts.ssh,
            workdir: &rd.workdir,
        },
    )
    .map_err(|e| e.to_string())?;
    let ids = users::user_ids(merged, user).map_err(|e| e.to_string())?;
    let mut spec = RunSpec::new(merged, rd.argv.clone());
    spec.env = rd.env.clone();
    spec.env.extend(res.env.iter().cloned());
    // runc (BuildKit's executor) sets HOME from /etc/passwd when Env has none.
    run::set_home(&mut spec.env, merged, user);
    spec.cwd = rd.workdir.clone();
    spec.user = RunUser {
        uid: ids.uid,
        gid: ids.gid,
        additional_gids: ids.groups.clone(),
    };
    spec.extra_hosts = opts
        .add_hosts
        .iter()
        .map(|(h, ip)| (h.clone(), ip.to_string()))
        .collect();
    spec.network = rd.network;
    spec.security = rd.security;
    spec.platform = rd.platform.clone();
    spec.mounts = res.mounts.clone();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut partial: Vec<u8> = Vec::new();
    let emit = |line: &[u8], tail: &mut std::collections::VecDeque<String>| {
        let line = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        progress.event(Event::Log {
            id: vertex,
            line: line.clone(),
        });
        tail.push_back(line);
        if tail.len() > 5 {
            tail.pop_front();
        }
    };
    let status = opts
        .executor
        .run(&spec, &opts.cancel, &mut |_stream, bytes| {
            partial.extend_from_slice(bytes);
            while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=pos).collect();
                emit(&line[..line.len() - 1], &mut tail);
            }
        });
    if !partial.is_empty() {
        let rest = std::mem::take(&mut partial);
        emit(&rest, &mut tail);
    }
    drop(res);
    for m in src_mounts {
        let _ = m.unmount();
    }
    let status = status.map_err(|e| e.to_string())?;
    if !status.success() {
        let last = if tail.is_empty() {
            String::new()
        } else {
            format!(
                "; last output: {}",
                tail.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        };
        // The process as BuildKit names it: its argv (`/bin/sh -c false`),
        // not the instruction text, which may carry --mount/--network flags.
        return Err(format!(
            "process \"{}\" did not complete successfully: {status}{last}",
            rd.argv.join(" ")
        ));
    }
    Ok(())
}

/// A Windows path as the layer stores it: `C:\\app\\x.exe` → `/app/x.exe`
/// (other paths are returned as they are).
fn windows_path(p: &str) -> String {
    let b = p.as_bytes();
    let rest = if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        &p[2..]
    } else {
        p
    };
    if rest.contains('\\') || rest.len() != p.len() {
        let r = rest.replace('\\', "/");
        if r.starts_with('/') {
            r
        } else {
            format!("/{r}")
        }
    } else {
        p.to_string()
    }
}

/// Move a committed upper directory under `Files/` and add an empty
/// `Hives/`, the layout of Windows image layers. The layer entries carry no
/// Windows security descriptors (PAX `MSWINDOWS.rawsd`): Windows applies its
/// defaults to files without one.
fn windows_layout(dir: &Path) -> Result<PathBuf, String> {
    let parent = dir.parent().ok_or("layer directory has no parent")?;
    let out = parent.join(format!(
        "{}.windows",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::rename(dir, out.join("Files")).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::create_dir(out.join("Hives")).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

fn is_url(s: &str) -> bool {
    add_source_kind(s) == AddSourceKind::Url
}

fn is_git(s: &str) -> bool {
    add_source_kind(s) == AddSourceKind::Git
}

/// Download an ADD URL into `dir`, check `--checksum`, and return the file
/// name it was stored under (the URL's last path segment, as Docker names
/// it). The file gets mode 0600 and the server's Last-Modified time.
async fn download(
    url: &str,
    dir: &Path,
    checksum: Option<&str>,
    timeouts: &kbuild_registry::Timeouts,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {url}: {e}"))?;
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back().map(String::from))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "__unnamed__".to_string());
    let client = reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .build()
        .map_err(|e| format!("download {url}: {e}"))?;
    let resp = tokio::time::timeout(timeouts.connect + timeouts.response, client.get(url).send())
        .await
        .map_err(|_| {
            format!(
                "download {url}: no answer within {:?}",
                timeouts.connect + timeouts.response
            )
        })?
        .map_err(|e| format!("download {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "download {url}: the server answered {}",
            resp.status()
        ));
    }
    let modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_secs);
    // Streamed to disk and hashed on the way: memory stays bounded for any
    // size; no total limit, but no silence longer than the idle limit.
    let path = dir.join(&name);
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(timeouts.idle, futures_util::StreamExt::next(&mut body))
            .await
            .map_err(|_| {
                format!(
                    "download {url}: the server sent nothing for {:?}",
                    timeouts.idle
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| format!("download {url}: {e}"))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(file);
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(want) = checksum {
        if want != got {
            return Err(format!(
                "ADD {url}: checksum mismatch: --checksum={want} but the content is {got}"
            ));
        }
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(t) = modified {
        let ts = nix::sys::time::TimeSpec::new(t, 0);
        let _ = nix::sys::stat::utimensat(
            None,
            &path,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(name)
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_secs(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}
/// The root directory a state's files would have: only for tests and the
/// `local`/`tar` outputs, which apply the layers to a plain directory.
pub fn apply_layers(
    store: &ContentStore,
    layers: &[LayerRef],
    dir: &Path,
    options: ApplyOptions,
) -> Result<ApplyReport, SolveError> {
    let mut report = ApplyReport::default();
    for l in layers {
        let blob = store.open_blob(&l.descriptor.digest)?;
        let reader = kbuild_image::decompress_reader(
            &l.descriptor.media_type,
            std::io::BufReader::new(blob),
        )?;
        let r = kbuild_worker::snapshot::apply_layer_to_dir_with(dir, reader, options).map_err(
            |source| SolveError::Layer {
                digest: l.descriptor.digest.to_string(),
                source,
            },
        )?;
        report.devices_skipped += r.devices_skipped;
        report.privileges_dropped += r.privileges_dropped;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn http_dates() {
        assert_eq!(
            super::httpdate_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(super::httpdate_secs("garbage"), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}

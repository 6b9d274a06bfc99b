//! The engine: plans a Dockerfile, lowers the plan to its op graph
//! (`kbuild_dockerfile::graph`) and executes the graph.
//!
//! [`Solver::build`] plans once without base-image configs to learn the
//! images it needs, resolves them, plans again with their configs, lowers
//! the plan and runs it through [`Solver::solve`]'s machinery; a builder
//! daemon calls [`Solver::solve`] with a graph it received. Every op is a
//! memoized future keyed by its id (see [`crate::scheduler`]): an op
//! shared by several platforms runs once and independent ops run
//! concurrently; the heavy work (copying, diffing, compressing,
//! unpacking) runs on blocking threads bounded by the number of cores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kbuild_dockerfile::graph::{self, Graph, OpKind, SecurityMode};
use kbuild_dockerfile::plan::{self, BaseImageConfig, BuildPlan, PlanOptions};
use kbuild_image::{Compression, ContentStore, Descriptor, ImageConfig};
use kbuild_platform::Platform;
use kbuild_worker::executor::{Cancel, Executor};
use kbuild_worker::snapshot::Snapshotter;
use tokio::sync::Semaphore;

pub use crate::assemble::rfc3339;
use crate::base::Images;
pub use crate::base::{
    graph_images, image_ref_name, images_needed, resolve_configs, stored_configs, ResolvedConfigs,
    WantedImage,
};
pub use crate::error::{GraphProblem, LayerError, OutputError, SolveError, StepError};
pub use crate::layer::{apply_layers, LayerRef};
use crate::options::{NetworkMode, SecretSpec, SshSpec};
use crate::progress::{Event, Progress};
use crate::scheduler::Exec;

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
    /// `--annotation` values (and the outputs' `annotation.*` options) to
    /// write on the manifests, the index and their descriptors.
    pub annotations: Vec<crate::options::Annotation>,
    /// `--shm-size`: the size of RUN's `/dev/shm` in bytes.
    pub shm_size: u64,
    /// `--provenance`: attach an SLSA provenance attestation per image.
    pub provenance: Option<crate::provenance::ProvenanceRequest>,
    /// Every output takes its name through this gate; the caller closes
    /// it when the build is cancelled (see [`kbuild_image::CommitGate`]).
    pub outputs_gate: kbuild_image::CommitGate,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            no_cache: false,
            pull: false,
            compression: Compression::default(),
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
            annotations: Vec::new(),
            shm_size: kbuild_worker::executor::DEFAULT_SHM_SIZE,
            provenance: None,
            outputs_gate: kbuild_image::CommitGate::new(),
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
    /// Shared, so that it can be saved while the build exports.
    pub checksums: Option<std::sync::Arc<crate::checksums::ChecksumCache>>,
    /// `--build-context NAME=DIR` directories, by name.
    pub named: std::collections::BTreeMap<String, PathBuf>,
}

impl Context {
    /// The directory a context source reads: the main context, or the
    /// `--build-context` directory `name`.
    pub(crate) fn root(&self, name: Option<&str>) -> Result<&std::path::Path, StepError> {
        match name {
            None => self.dir.as_deref().ok_or(StepError::NoContext),
            Some(n) => self
                .named
                .get(n)
                .map(PathBuf::as_path)
                .ok_or_else(|| StepError::NoNamedContext(n.to_string())),
        }
    }

    pub(crate) fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        self.ignore
            .as_ref()
            .is_some_and(|m| m.is_excluded(rel, is_dir))
    }

    pub(crate) fn may_contain_included(&self, dir: &str) -> bool {
        self.ignore
            .as_ref()
            .is_some_and(|m| m.may_contain_included(dir))
    }
}

/// A root filesystem and image config after some ops.
#[derive(Debug, Clone)]
pub struct State {
    /// Layers, base first.
    pub layers: Vec<LayerRef>,
    /// The image config (rootfs and history included).
    pub config: ImageConfig,
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
    /// One image per target platform, in request order, and the root.
    pub solved: Solved,
}

/// What a graph produced.
#[derive(Debug, Clone)]
pub struct Solved {
    /// One image per graph target, in order.
    pub images: Vec<PlatformImage>,
    /// The image index (several targets) or the manifest (one target).
    pub root: Descriptor,
}

/// Runs builds against a content store and snapshotter.
pub struct Solver {
    pub(crate) store: Arc<ContentStore>,
    pub(crate) snaps: Arc<Snapshotter>,
    pub(crate) registry: Arc<kbuild_registry::Client>,
    pub(crate) opts: SolveOptions,
    pub(crate) progress: Arc<dyn Progress>,
    pub(crate) cpu: Arc<Semaphore>,
    /// `--cache-from` and `--cache-to` (see [`Solver::with_cache`]).
    pub(crate) external: crate::cache_export::External,
    next_vertex: AtomicU64,
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
            external: Default::default(),
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

    /// A new progress vertex id.
    pub(crate) fn vertex(&self) -> u64 {
        self.next_vertex.fetch_add(1, Ordering::Relaxed)
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
        self.check_entitlements(&graph::lower(&first).map_err(in_file)?, file_name)?;
        let wanted: Vec<crate::base::WantedImage> = images_needed(&first)?
            .into_iter()
            .map(|(r, p)| (r, p, None))
            .collect();
        let images = self.resolve_images(&wanted).await?;
        let plan = if images.is_empty() {
            first
        } else {
            plan::plan(dockerfile, opts, &base_configs(&images)).map_err(in_file)?
        };
        // The graph names the images just resolved by digest, so each is
        // resolved once per build, as a client planning for daemons pins.
        let graph = graph::lower_pinned(&plan, &crate::base::pins(&images)).map_err(in_file)?;
        let images = crate::base::pinned(images);
        self.ensure_emulation(&graph)?;
        let solved = self.run(&graph, ctx, images).await?;
        Ok(BuildResult { plan, solved })
    }

    /// Execute an op graph (one lowered here or received from a client):
    /// resolve its images (by digest where the graph pins them, without
    /// resolving their tags), check entitlements and emulation, run every op
    /// its targets need, and write one image per target (an index over
    /// several). `file_name` names the Dockerfile in entitlement errors.
    pub async fn solve(
        &self,
        graph: &Graph,
        file_name: &str,
        ctx: &Context,
    ) -> Result<Solved, SolveError> {
        if graph.version != graph::FORMAT_VERSION {
            return Err(SolveError::GraphVersion {
                found: graph.version,
                supported: graph::FORMAT_VERSION,
            });
        }
        self.check_entitlements(graph, file_name)?;
        let images = self.resolve_images(&graph_images(graph)?).await?;
        self.ensure_emulation(graph)?;
        self.run(graph, ctx, images).await
    }

    /// Stops before any work when an op needs an entitlement the build
    /// lacks (BuildKit refuses such a build the same way).
    fn check_entitlements(&self, graph: &Graph, file_name: &str) -> Result<(), SolveError> {
        if self.opts.allow_insecure {
            return Ok(());
        }
        for op in &graph.ops {
            let OpKind::Exec(e) = &op.op else { continue };
            if e.security != SecurityMode::Insecure {
                continue;
            }
            let display = op.meta.display.as_deref().unwrap_or(&e.history.created_by);
            let mut instruction: String = display.chars().take(60).collect();
            if instruction.len() < display.len() {
                instruction.push_str("...");
            }
            return Err(SolveError::EntitlementDenied {
                file: file_name.to_string(),
                line: op.meta.lines.map_or(0, |l| l.0),
                instruction,
                entitlement: "security.insecure",
            });
        }
        Ok(())
    }

    /// Exec ops of foreign platforms need emulation: set it up (or stop
    /// with the fix) before anything runs.
    fn ensure_emulation(&self, graph: &Graph) -> Result<(), SolveError> {
        let mut platforms: Vec<Platform> = Vec::new();
        for op in &graph.ops {
            if let (OpKind::Exec(_), Some(p)) = (&op.op, &op.platform) {
                let p = Platform::parse(p).map_err(|source| SolveError::OpPlatform {
                    op: op.id.clone(),
                    value: p.clone(),
                    source: Box::new(source),
                })?;
                if !platforms.contains(&p) {
                    platforms.push(p);
                }
            }
        }
        for p in &platforms {
            match kbuild_worker::binfmt::ensure(p)? {
                kbuild_worker::binfmt::Action::AlreadySupported(_) => {}
                action => self.progress.event(Event::Note(format!("{p}: {action}"))),
            }
        }
        Ok(())
    }

    /// Run the ops the targets need and write their images.
    async fn run(
        &self,
        graph: &Graph,
        ctx: &Context,
        images: Images,
    ) -> Result<Solved, SolveError> {
        let started = crate::assemble::now_rfc3339(self.opts.source_date_epoch);
        // The base images each target read, for its provenance.
        let materials: Vec<Vec<crate::provenance::Material>> = match &self.opts.provenance {
            None => Vec::new(),
            Some(_) => graph
                .targets
                .iter()
                .map(|t| {
                    crate::provenance::image_sources(graph, &t.result)
                        .into_iter()
                        .filter_map(|(reference, platform, pin)| {
                            let p = Platform::parse(&platform).ok()?.to_string();
                            let img = images.get(&(reference.clone(), p.clone(), pin))?;
                            Some(crate::provenance::Material {
                                reference,
                                platform: p,
                                digest: img.manifest_digest,
                            })
                        })
                        .collect()
                })
                .collect(),
        };
        let mut exec = Exec::new(self, graph, ctx, images);
        if !self.opts.no_cache {
            exec.imported = crate::cache_import::Imported::load(self).await;
        }
        // Fail fast: the first target that fails stops the others (their
        // running ops are killed) instead of letting them finish for nothing.
        let finals = futures_util::future::try_join_all(
            graph.targets.iter().map(|t| exec.target_state(&t.result)),
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
        for (t, st) in graph.targets.iter().zip(finals) {
            let target = Platform::parse(&t.platform).map_err(|source| SolveError::OpPlatform {
                op: t.result.clone(),
                value: t.platform.clone(),
                source: Box::new(source),
            })?;
            let st = self.external.with_inline(graph, t, st)?;
            let platform = crate::assemble::image_platform(&target, &st.config);
            let manifest = self.write_image(&st, &platform, &graph.labels)?;
            images_out.push(PlatformImage {
                platform,
                manifest,
                state: st,
            });
        }
        let mut attestations = Vec::new();
        if let Some(req) = &self.opts.provenance {
            let finished = crate::assemble::now_rfc3339(self.opts.source_date_epoch);
            for ((t, image), materials) in graph.targets.iter().zip(&images_out).zip(&materials) {
                let statement = crate::provenance::statement(
                    req,
                    graph,
                    &t.result,
                    &image.platform,
                    &image.manifest.digest,
                    materials,
                    &started,
                    &finished,
                );
                attestations.push(crate::provenance::write_attestation(
                    &self.store,
                    &statement,
                    &image.manifest.digest,
                )?);
            }
        }
        let root = self.write_root(&images_out, &attestations)?;
        Ok(Solved {
            images: images_out,
            root,
        })
    }
}

/// The planner's view of the resolved base images: their ENV, WORKDIR,
/// USER, SHELL and ONBUILD.
fn base_configs(images: &Images) -> std::collections::BTreeMap<String, BaseImageConfig> {
    images
        .iter()
        .map(|((r, p, _), img)| (format!("{r}@{p}"), crate::base::planner_config(&img.config)))
        .collect()
}

//! Base images: which images a plan or graph needs, and resolving each
//! for its platform (the local store first, the registry when missing or
//! with `--pull`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kbuild_dockerfile::graph::{Graph, OpKind, SourceOp};
use kbuild_dockerfile::plan::{BaseImageConfig, BuildPlan, Source as PlanSource, StageBase};
use kbuild_image::{ContentStore, DescriptorPlatform, Digest, Document, ImageConfig, Manifest};
use kbuild_platform::Platform;

use crate::engine::Solver;
use crate::error::SolveError;
use crate::layer::LayerRef;
use crate::progress::Event;

/// A base image resolved for one platform.
#[derive(Debug)]
pub(crate) struct BaseImage {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
    pub manifest_digest: Digest,
}

/// A descriptor's or config's platform, normalized; `None` when it names no
/// architecture.
fn to_platform(p: &DescriptorPlatform) -> Option<Platform> {
    (!p.architecture.is_empty()).then(|| Platform::from(p).normalized())
}

/// Resolved images by (reference, platform).
pub(crate) type Images = HashMap<(String, String), Arc<BaseImage>>;

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
    each_once_known(wanted)
}

/// The images the image source ops of `graph` pull, each once, sorted;
/// refused like [`images_needed`] for a platform that does not exist.
pub fn graph_images(graph: &Graph) -> Result<Vec<(String, Platform)>, SolveError> {
    let mut wanted: Vec<(String, Platform)> = Vec::new();
    for op in &graph.ops {
        if let OpKind::Source(SourceOp::Image {
            reference,
            platform,
        }) = &op.op
        {
            let p = Platform::parse(platform).map_err(|source| SolveError::OpPlatform {
                op: op.id.clone(),
                value: platform.clone(),
                source: Box::new(source),
            })?;
            wanted.push((reference.clone(), p));
        }
    }
    each_once_known(wanted)
}

/// `wanted` sorted, each (image, platform) once; an image wanted for a
/// platform that does not exist is refused.
fn each_once_known(
    mut wanted: Vec<(String, Platform)>,
) -> Result<Vec<(String, Platform)>, SolveError> {
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

/// The name of a local image ref: `image/<normalized reference>`.
pub fn image_ref_name(reference: &str) -> Result<String, SolveError> {
    let r = kbuild_registry::Reference::parse(reference)?;
    Ok(format!("image/{r}"))
}

impl Solver {
    /// Resolve every `(reference, platform)` concurrently.
    pub(crate) async fn resolve_images(
        &self,
        wanted: &[(String, Platform)],
    ) -> Result<Images, SolveError> {
        let resolved =
            futures_util::future::join_all(wanted.iter().map(|(r, p)| self.resolve_image(r, p)))
                .await;
        let mut images = Images::new();
        for ((r, p), img) in wanted.iter().zip(resolved) {
            images.insert((r.clone(), p.to_string()), img?);
        }
        Ok(images)
    }

    /// Resolve `reference` for `platform`: the local store first (images
    /// built here with `-o type=image`, or pulled before), the registry when
    /// the store has none or `--pull` was given.
    pub(crate) async fn resolve_image(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Arc<BaseImage>, SolveError> {
        if reference.starts_with(crate::layout::SCHEME) {
            return self.layout_image(reference, platform).await;
        }
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
            .ok_or_else(|| SolveError::PulledWithoutPlatform {
                reference: reference.to_string(),
                platform: platform.to_string(),
            })
    }

    /// An image of a local OCI layout (`--build-context
    /// NAME=oci-layout://...`), copied into the store.
    async fn layout_image(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Arc<BaseImage>, SolveError> {
        let layout_err = |source| SolveError::Layout {
            reference: reference.to_string(),
            source: Box::new(source),
        };
        let layout = crate::layout::LayoutRef::parse(reference).map_err(layout_err)?;
        let store = self.store.clone();
        let root = tokio::task::spawn_blocking(move || {
            let root = layout.resolve()?;
            layout.import(&store, &root).map(|()| root)
        })
        .await?
        .map_err(layout_err)?;
        self.progress.event(Event::Note(format!(
            "resolve {reference} for {platform}: {root}"
        )));
        self.local_image(reference, &root, platform)?
            .map(Arc::new)
            .ok_or_else(|| SolveError::PulledWithoutPlatform {
                reference: reference.to_string(),
                platform: platform.to_string(),
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
        stored_image(&self.store, reference, root, platform, true)
    }
}

/// What the planner needs of a base image config: its ENV, WORKDIR, USER,
/// SHELL and ONBUILD.
pub(crate) fn planner_config(config: &ImageConfig) -> BaseImageConfig {
    let c = config.config.clone().unwrap_or_default();
    BaseImageConfig {
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        shell: c.shell.unwrap_or_default(),
        on_build: c.on_build.unwrap_or_default(),
    }
}

/// The configs of the `wanted` images, keyed `reference@platform` as the
/// planner looks them up, for a client that plans a build a builder
/// daemon runs: each read from `store` when it holds the image's manifest
/// and config and `pull` is false, else fetched from its registry with its
/// manifest (no layer is downloaded: the daemon pulls the layers it needs).
pub async fn resolve_configs(
    store: &ContentStore,
    registry: &kbuild_registry::Client,
    wanted: &[(String, Platform)],
    pull: bool,
) -> Result<BTreeMap<String, BaseImageConfig>, SolveError> {
    let one = |reference: &str, platform: &Platform| {
        let reference = reference.to_string();
        let platform = platform.clone();
        async move {
            if !pull {
                if let Some(root) = store.get_ref(&image_ref_name(&reference)?)? {
                    if let Some(img) = stored_image(store, &reference, &root, &platform, false)? {
                        return Ok::<_, SolveError>(planner_config(&img.config));
                    }
                }
            }
            let r = kbuild_registry::Reference::parse(&reference)?;
            let pulled = registry.pull_config(&r, &platform, store).await?;
            let bytes = store.read(&pulled.config_digest)?;
            Ok(planner_config(&ImageConfig::parse(&bytes)?))
        }
    };
    let resolved = futures_util::future::join_all(wanted.iter().map(|(r, p)| one(r, p))).await;
    let mut configs = BTreeMap::new();
    for ((r, p), config) in wanted.iter().zip(resolved) {
        configs.insert(format!("{r}@{p}"), config?);
    }
    Ok(configs)
}

/// Read an image for `platform` from `store`; `None` when the stored index
/// has no matching platform or a blob is missing (a layer only counts when
/// `need_layers`: a planner needs the config alone).
fn stored_image(
    store: &ContentStore,
    reference: &str,
    root: &Digest,
    platform: &Platform,
    need_layers: bool,
) -> Result<Option<BaseImage>, SolveError> {
    if !store.has(root) {
        return Ok(None);
    }
    let bytes = store.read(root)?;
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
    if !store.has(&manifest_digest) {
        return Ok(None);
    }
    let manifest = Manifest::parse(&store.read(&manifest_digest)?)?;
    if !store.has(&manifest.config.digest) {
        return Ok(None);
    }
    let config = ImageConfig::parse(&store.read(&manifest.config.digest)?)?;
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
        return Err(SolveError::LayerCount {
            reference: reference.to_string(),
            config: config.rootfs.diff_ids.len(),
            manifest: manifest.layers.len(),
        });
    }
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers.iter().zip(config.rootfs.diff_ids.iter()) {
        if need_layers && !store.has(&d.digest) && d.urls.is_empty() {
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

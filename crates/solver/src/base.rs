//! Base images: which images a plan or graph needs, and resolving each
//! for its platform (the local store first, the registry when missing or
//! with `--pull`). An image source the graph pins ([`ImagePin`]) is taken
//! by its digests (the store's copy, else pulled by digest): its tag is
//! not resolved again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kbuild_dockerfile::graph::{Graph, ImagePin, OpKind, Pins, SourceOp};
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
    /// The index or manifest the reference resolved to.
    pub root_digest: Digest,
    /// The platform's manifest.
    pub manifest_digest: Digest,
}

impl BaseImage {
    /// The digests a graph pins this image to.
    fn pin(&self) -> ImagePin {
        ImagePin {
            digest: self.root_digest.to_string(),
            manifest: self.manifest_digest.to_string(),
        }
    }
}

/// A descriptor's or config's platform, normalized; `None` when it names no
/// architecture.
fn to_platform(p: &DescriptorPlatform) -> Option<Platform> {
    (!p.architecture.is_empty()).then(|| Platform::from(p).normalized())
}

/// An image a graph reads: the reference as written, the platform, and
/// the digests its source op is pinned to (`None`: resolve the reference).
pub type WantedImage = (String, Platform, Option<ImagePin>);

/// Resolved images by (reference, platform, pin), as the graph's image
/// source ops name them.
pub(crate) type Images = HashMap<(String, String, Option<ImagePin>), Arc<BaseImage>>;

/// `images` (resolved without pins) keyed by the pins a graph lowered
/// with [`pins`] gives their source ops.
pub(crate) fn pinned(images: Images) -> Images {
    images
        .into_iter()
        .map(|((r, p, pin), img)| {
            let pin = pin.or_else(|| pinnable(&r).then(|| img.pin()));
            ((r, p, pin), img)
        })
        .collect()
}

/// What `images` resolved to, for [`kbuild_dockerfile::graph::lower_pinned`]:
/// a build resolves each base image once. Images of a local OCI layout
/// are not pinned (their reference names their digest already).
pub(crate) fn pins(images: &Images) -> Pins {
    images
        .iter()
        .filter(|((r, ..), _)| pinnable(r))
        .map(|((r, p, _), img)| ((r.clone(), p.clone()), img.pin()))
        .collect()
}

fn pinnable(reference: &str) -> bool {
    !reference.starts_with(crate::layout::SCHEME)
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
    each_once_known(wanted)
}

/// The images the image source ops of `graph` pull, each (reference,
/// platform, pin) once, sorted; refused like [`images_needed`] for a
/// platform that does not exist.
pub fn graph_images(graph: &Graph) -> Result<Vec<WantedImage>, SolveError> {
    let mut wanted: Vec<WantedImage> = Vec::new();
    for op in &graph.ops {
        if let OpKind::Source(SourceOp::Image {
            reference,
            platform,
            pin,
        }) = &op.op
        {
            let p = Platform::parse(platform).map_err(|source| SolveError::OpPlatform {
                op: op.id.clone(),
                value: platform.clone(),
                source: Box::new(source),
            })?;
            wanted.push((reference.clone(), p, pin.clone()));
        }
    }
    wanted.sort_by_key(|(r, p, pin)| (r.clone(), p.to_string(), pin.clone()));
    wanted.dedup();
    for (reference, platform, _) in &wanted {
        check_known(reference, platform)?;
    }
    Ok(wanted)
}

/// `wanted` sorted, each (image, platform) once; an image wanted for a
/// platform that does not exist is refused.
fn each_once_known(
    mut wanted: Vec<(String, Platform)>,
) -> Result<Vec<(String, Platform)>, SolveError> {
    wanted.sort_by_key(|(r, p)| (r.clone(), p.to_string()));
    wanted.dedup();
    for (reference, platform) in &wanted {
        check_known(reference, platform)?;
    }
    Ok(wanted)
}

fn check_known(reference: &str, platform: &Platform) -> Result<(), SolveError> {
    platform
        .check_known()
        .map_err(|source| SolveError::UnknownPlatform {
            image: reference.to_string(),
            source,
        })
}

/// The name of a local image ref: `image/<normalized reference>`.
pub fn image_ref_name(reference: &str) -> Result<String, SolveError> {
    let r = kbuild_registry::Reference::parse(reference)?;
    Ok(format!("image/{r}"))
}

impl Solver {
    /// Resolve every `(reference, platform, pin)` concurrently.
    pub(crate) async fn resolve_images(
        &self,
        wanted: &[WantedImage],
    ) -> Result<Images, SolveError> {
        let resolved = futures_util::future::join_all(
            wanted
                .iter()
                .map(|(r, p, pin)| self.resolve_image(r, p, pin.as_ref())),
        )
        .await;
        let mut images = Images::new();
        for ((r, p, pin), img) in wanted.iter().zip(resolved) {
            images.insert((r.clone(), p.to_string(), pin.clone()), img?);
        }
        Ok(images)
    }

    /// Resolve `reference` for `platform`: by its pin when it has one
    /// ([`Solver::pinned_image`]); else the local store first (images
    /// built here with `-o type=image`, or pulled before), the registry
    /// when the store has none or `--pull` was given.
    pub(crate) async fn resolve_image(
        &self,
        reference: &str,
        platform: &Platform,
        pin: Option<&ImagePin>,
    ) -> Result<Arc<BaseImage>, SolveError> {
        if reference.starts_with(crate::layout::SCHEME) {
            return self.layout_image(reference, platform).await;
        }
        if let Some(pin) = pin {
            return self.pinned_image(reference, platform, pin).await;
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

    /// The image `pin` names for `platform`: the store's copy when it has
    /// the pinned index or manifest with every layer (whatever `--pull`
    /// says: the content is the same), else pulled from the reference's
    /// repository by digest. The tag is never resolved; what is pulled is
    /// kept under the digest reference (`image/REGISTRY/REPO@sha256:...`),
    /// as a `FROM NAME@DIGEST` pull keeps it, and under the tag when the
    /// store has no image of that tag yet (what the tag named when the
    /// client resolved it, as a pull by tag would have kept), so a later
    /// build that the daemon plans itself finds it; an existing tag is
    /// left alone.
    async fn pinned_image(
        &self,
        reference: &str,
        platform: &Platform,
        pin: &ImagePin,
    ) -> Result<Arc<BaseImage>, SolveError> {
        let bad_pin = |source| SolveError::InvalidPin {
            reference: reference.to_string(),
            digest: pin.digest.clone(),
            source: Box::new(source),
        };
        let root = Digest::parse(&pin.digest).map_err(bad_pin)?;
        let img = match self.local_image(reference, &root, platform)? {
            Some(img) => {
                self.progress.event(Event::Note(format!(
                    "resolve {reference} for {platform}: local {root}"
                )));
                img
            }
            None => {
                self.progress.event(Event::Note(format!(
                    "pull {reference}@{root} for {platform}"
                )));
                let r = kbuild_registry::Reference::parse(reference)?.with_digest(root);
                self.registry.pull_image(&r, platform, &self.store).await?;
                self.store.set_ref(&format!("image/{r}"), &root)?;
                let tag = image_ref_name(reference)?;
                if self.store.get_ref(&tag)?.is_none() {
                    self.store.set_ref(&tag, &root)?;
                }
                self.local_image(reference, &root, platform)?
                    .ok_or_else(|| SolveError::PulledWithoutPlatform {
                        reference: r.to_string(),
                        platform: platform.to_string(),
                    })?
            }
        };
        if img.manifest_digest.to_string() != pin.manifest {
            return Err(SolveError::PinnedManifest {
                reference: reference.to_string(),
                platform: platform.to_string(),
                pin: Box::new(pin.clone()),
                found: img.manifest_digest.to_string(),
            });
        }
        Ok(Arc::new(img))
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

/// What a client planning a build for builder daemons resolved: the
/// configs the planner reads and the digests the graph pins.
#[derive(Debug, Clone, Default)]
pub struct ResolvedConfigs {
    /// The configs, keyed `reference@platform` as the planner looks them up.
    pub configs: BTreeMap<String, BaseImageConfig>,
    /// The digests each image resolved to, for
    /// [`kbuild_dockerfile::graph::lower_pinned`].
    pub pins: Pins,
}

/// The configs of the `wanted` images and the digests they resolved to,
/// for a client that plans a build a builder daemon runs: each read from
/// `store` when it holds the image's manifest and config and `pull` is
/// false, else fetched from its registry with its manifest (no layer is
/// downloaded: the daemon pulls the layers it needs, by these digests).
pub async fn resolve_configs(
    store: &ContentStore,
    registry: &kbuild_registry::Client,
    wanted: &[(String, Platform)],
    pull: bool,
) -> Result<ResolvedConfigs, SolveError> {
    let one = |reference: &str, platform: &Platform| {
        let reference = reference.to_string();
        let platform = platform.clone();
        async move {
            if !pull {
                if let Some(root) = store.get_ref(&image_ref_name(&reference)?)? {
                    if let Some(img) = stored_image(store, &reference, &root, &platform, false)? {
                        return Ok::<_, SolveError>((planner_config(&img.config), img.pin()));
                    }
                }
            }
            let r = kbuild_registry::Reference::parse(&reference)?;
            let pulled = registry.pull_config(&r, &platform, store).await?;
            let bytes = store.read(&pulled.config_digest)?;
            let pin = ImagePin {
                digest: pulled.root_digest.to_string(),
                manifest: pulled.manifest_digest.to_string(),
            };
            Ok((planner_config(&ImageConfig::parse(&bytes)?), pin))
        }
    };
    let resolved = futures_util::future::join_all(wanted.iter().map(|(r, p)| one(r, p))).await;
    let mut out = ResolvedConfigs::default();
    for ((r, p), one) in wanted.iter().zip(resolved) {
        let (config, pin) = one?;
        out.configs.insert(format!("{r}@{p}"), config);
        if pinnable(r) {
            out.pins.insert((r.clone(), p.to_string()), pin);
        }
    }
    Ok(out)
}

/// The configs and digests of the `wanted` images that `store` holds
/// under their names (manifest and config; what a build without `--pull`
/// takes), leaving the others out: nothing is fetched. What `--dry-run`
/// plans and pins with. An image stored without `platform` is the error a
/// build would stop with.
pub fn stored_configs(
    store: &ContentStore,
    wanted: &[(String, Platform)],
) -> Result<ResolvedConfigs, SolveError> {
    let mut out = ResolvedConfigs::default();
    for (reference, platform) in wanted.iter().filter(|(r, _)| pinnable(r)) {
        // A reference that does not parse is the build's error to report.
        let Ok(name) = image_ref_name(reference) else {
            continue;
        };
        let Some(root) = store.get_ref(&name)? else {
            continue;
        };
        if let Some(img) = stored_image(store, reference, &root, platform, false)? {
            out.configs.insert(
                format!("{reference}@{platform}"),
                planner_config(&img.config),
            );
            out.pins
                .insert((reference.clone(), platform.to_string()), img.pin());
        }
    }
    Ok(out)
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
        root_digest: *root,
        manifest_digest,
    }))
}

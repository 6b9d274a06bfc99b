//! What the caller tells the planner: platforms, build args, target, and
//! where base image configs come from.

use std::collections::BTreeMap;

use kbuild_platform::Platform;
use serde::Deserialize;

/// Build options, as the CLI resolved them.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Target platforms in request order (`--platform`); at least one.
    pub platforms: Vec<Platform>,
    /// The platform of the node performing the build (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// `--build-arg` values (a `KEY` without value already taken from the
    /// environment by the CLI).
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build; `None` builds the last stage.
    pub target: Option<String>,
    /// `--label` values for the target image.
    pub labels: BTreeMap<String, String>,
    /// `--build-context NAME=VALUE`: a `FROM NAME`, `COPY --from=NAME` or
    /// `RUN --mount=from=NAME` reads the named context instead of a stage
    /// or image of that name, as BuildKit does.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// What a `--build-context` names, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory: a second build context for `COPY --from=NAME`
    /// and `RUN --mount=from=NAME` (no `.dockerignore` applies, as in
    /// BuildKit).
    Dir,
    /// An image used wherever NAME is: `docker-image://REF` gives `REF`,
    /// `oci-layout://PATH@DIGEST` stays as written (the solver reads it
    /// from that layout).
    Image(String),
}

/// The parts of a base image's config the planner needs: `Env` seeds variable
/// expansion, `WorkingDir`/`User`/`Shell` carry into the stage and `OnBuild`
/// triggers run right after FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BaseImageConfig {
    /// `Env` entries, `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`, empty when unset.
    pub working_dir: String,
    /// `User`, empty when unset.
    pub user: String,
    /// `Shell`, empty when unset.
    pub shell: Vec<String>,
    /// `OnBuild` triggers, each one Dockerfile instruction.
    pub on_build: Vec<String>,
}

/// Where the planner gets base image configs. The solver implements it after
/// resolving the images; a dry run passes [`NoImageConfigs`].
pub trait ImageConfigSource {
    /// The config of `reference` (as written in the Dockerfile, after
    /// expansion) for `platform`; `Ok(None)` when it is not known, which
    /// plans the stage as if the image had an empty config.
    fn image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImageConfig>, String>;
}

/// An [`ImageConfigSource`] that knows no image: every base is planned with an
/// empty config (no `Env` besides `PATH`, no ONBUILD triggers).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImageConfigs;

impl ImageConfigSource for NoImageConfigs {
    fn image_config(
        &self,
        _reference: &str,
        _platform: &Platform,
    ) -> Result<Option<BaseImageConfig>, String> {
        Ok(None)
    }
}

/// Image configs held in memory, keyed by reference; the same config serves
/// every platform unless a `reference@platform` key (`golang@linux/arm64`)
/// gives one for that platform.
impl ImageConfigSource for BTreeMap<String, BaseImageConfig> {
    fn image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImageConfig>, String> {
        let specific = format!("{reference}@{platform}");
        Ok(self.get(&specific).or_else(|| self.get(reference)).cloned())
    }
}

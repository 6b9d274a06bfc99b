//! The build plan: what [`plan`](super::plan) returns and the solver runs.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use kbuild_platform::Platform;
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::instructions::{Instruction, Mount};

/// Index of a [`Step`] in [`BuildPlan::steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StepId(pub usize);

/// Index of a [`StageInstance`] in [`BuildPlan::stages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StageId(pub usize);

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// Serializes a platform as its specifier (`"linux/arm/v7"`): the plan is
/// read by people (`--dry-run=json`) and the specifier is unambiguous.
fn platform_str<S: Serializer>(p: &Platform, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(p)
}

fn platforms_str<S: Serializer, P: fmt::Display>(ps: &[P], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| p.to_string()))
}

fn shared_platforms<S: Serializer>(ps: &Arc<[Arc<Platform>]>, s: S) -> Result<S::Ok, S::Error> {
    platforms_str(ps, s)
}

fn shared_platform<S: Serializer>(p: &Arc<Platform>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&**p)
}

fn shared_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn arc<T: Serialize, S: Serializer>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
    (**v).serialize(s)
}

/// One variable of a [`Vars`] list: (`NAME`, value), both shared.
pub type VarPair = (Arc<str>, Arc<str>);

/// An ordered list of variables (`NAME`, value), shared by every step that
/// sees the same list, so cloning it is cheap; the names and values are
/// shared too, so a list that differs from another in one entry copies no
/// text. Derefs to a slice; iterate it with `for (name, value) in &vars`.
/// Serializes as `[["NAME", "value"], ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Vars(Arc<Vec<VarPair>>);

impl Vars {
    /// The value of `name` (the last entry wins), if set.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| **k == *name)
            .map(|(_, v)| &**v)
    }

    /// A copy as a plain vector.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn make_mut(&mut self) -> &mut Vec<VarPair> {
        Arc::make_mut(&mut self.0)
    }

    pub(crate) fn same(&self, other: &Vars) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }

    /// Whether another value holds the same list (a change must copy it).
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl From<Vec<(String, String)>> for Vars {
    fn from(v: Vec<(String, String)>) -> Vars {
        Vars(Arc::new(
            v.into_iter()
                .map(|(k, v)| (Arc::from(k), Arc::from(v)))
                .collect(),
        ))
    }
}

impl From<Vec<VarPair>> for Vars {
    fn from(v: Vec<VarPair>) -> Vars {
        Vars(Arc::new(v))
    }
}

impl Deref for Vars {
    type Target = [VarPair];
    fn deref(&self) -> &[VarPair] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Vars {
    type Item = &'a VarPair;
    type IntoIter = std::slice::Iter<'a, VarPair>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<Vec<(String, String)>> for Vars {
    fn eq(&self, other: &Vec<(String, String)>) -> bool {
        self.0.len() == other.len()
            && self
                .0
                .iter()
                .zip(other)
                .all(|((k, v), (ok, ov))| **k == **ok && **v == **ov)
    }
}

impl kbuild_shell::Env for Vars {
    fn get(&self, name: &str) -> Option<String> {
        self.value(name).map(str::to_string)
    }
}

impl Serialize for Vars {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            seq.serialize_element(&(&**k, &**v))?;
        }
        seq.end()
    }
}

/// What a stage instance starts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageBase {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image, pulled for `platform`.
    Image {
        /// The reference as written in the Dockerfile after expansion
        /// (`golang`, `mcr.microsoft.com/windows/nanoserver:ltsc2022`); the
        /// registry crate normalizes it.
        reference: String,
        /// The platform to pull.
        #[serde(serialize_with = "shared_platform")]
        platform: Arc<Platform>,
    },
    /// The result of an earlier stage instance.
    Stage(StageId),
}

/// Something a step reads besides its own parent: `COPY --from=...` and
/// `RUN --mount=...,from=...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The result of a stage instance.
    Stage(StageId),
    /// An empty filesystem (`--from=scratch`).
    Scratch,
    /// An image (a `--from` that names no stage), pulled for `platform` —
    /// BuildKit pulls these for the target platform, whatever the platform of
    /// the stage that reads them.
    Image {
        /// The reference as written.
        reference: String,
        /// The platform to pull.
        #[serde(serialize_with = "shared_platform")]
        platform: Arc<Platform>,
    },
    /// A directory named by `--build-context NAME=DIR`.
    Context(String),
}

/// One build step: a Dockerfile instruction applied to its parent's result,
/// for one platform, with every word BuildKit expands already expanded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Its index in [`BuildPlan::steps`].
    pub id: StepId,
    /// The step whose result this one builds on; `None` for the first step of
    /// a stage whose base is an image or scratch (or an earlier stage that has
    /// no steps): it then builds on [`StageInstance::base`].
    pub parent: Option<StepId>,
    /// Index of the Dockerfile stage (position of its FROM) it belongs to.
    pub stage: usize,
    /// First and last line (1-based) of the instruction in the Dockerfile;
    /// for an ONBUILD trigger, the lines of the FROM that ran it.
    pub lines: (usize, usize),
    /// The instruction with every word BuildKit expands already expanded;
    /// ARG defaults are replaced by the value the argument took (`None` when it
    /// has none), WORKDIR holds the absolute directory. Shared with the
    /// Dockerfile's own instruction when expansion changed nothing.
    #[serde(serialize_with = "arc")]
    pub instruction: Arc<Instruction>,
    /// The text BuildKit shows in progress output (`COPY . .`,
    /// `RUN go build -o /out/app .`).
    #[serde(serialize_with = "shared_str")]
    pub display: Arc<str>,
    /// True when the step comes from an ONBUILD trigger of the base.
    pub onbuild: bool,
    /// The platform the step runs on (its stage's platform).
    #[serde(serialize_with = "shared_platform")]
    pub platform: Arc<Platform>,
    /// The build args in scope with their values, in declaration order (the
    /// RUN environment besides [`env`](Step::env); an argument overrides an
    /// `env` entry of the same name).
    pub args: Vars,
    /// The image environment when the step runs: the base image's `Env`,
    /// `PATH` defaulted as BuildKit does, then ENV instructions.
    pub env: Vars,
    /// The working directory when the step runs (absolute).
    #[serde(serialize_with = "shared_str")]
    pub workdir: Arc<str>,
    /// The user when the step runs (empty: the image default).
    #[serde(serialize_with = "shared_str")]
    pub user: Arc<str>,
    /// The shell that runs shell-form commands (`SHELL`, or the platform's
    /// default `/bin/sh -c` / `cmd /S /C`).
    #[serde(serialize_with = "arc")]
    pub shell: Arc<Vec<String>>,
    /// Stages and images the step reads, in the order of the `--from` /
    /// `from=` that name them.
    pub sources: Vec<Source>,
    /// For RUN: the `--mount`s, typed, every option value expanded (the
    /// instruction's own `mounts` keep the text as written).
    #[serde(serialize_with = "arc")]
    pub mounts: Arc<Vec<Mount>>,
    /// The target platforms whose build uses this step, in request order;
    /// steps built for the same platforms share one list.
    #[serde(serialize_with = "shared_platforms")]
    pub platforms: Arc<[Arc<Platform>]>,
    /// `platforms.len() > 1`: one step serves several target platforms.
    pub shared: bool,
}

/// A Dockerfile stage as built for one platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageInstance {
    /// Its index in [`BuildPlan::stages`].
    pub id: StageId,
    /// The stage name (`AS name`, lowercased), `None` when it has none.
    pub name: Option<String>,
    /// Position of the stage in the Dockerfile (0-based).
    pub index: usize,
    /// The platform it runs for: its `FROM --platform`, its base stage's
    /// platform, or the target platform.
    #[serde(serialize_with = "shared_platform")]
    pub platform: Arc<Platform>,
    /// What it starts from.
    pub base: StageBase,
    /// Its steps in order (ONBUILD triggers of the base first).
    pub steps: Vec<StepId>,
    /// The target platforms whose build uses this instance, in request
    /// order; instances built for the same platforms share one list.
    #[serde(serialize_with = "shared_platforms")]
    pub target_platforms: Arc<[Arc<Platform>]>,
}

/// The build for one requested platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The requested (target) platform.
    #[serde(serialize_with = "platform_str")]
    pub platform: Platform,
    /// The stage instances it needs, in run order (dependencies first).
    pub stages: Vec<StageId>,
    /// The stage instance whose result is the image for this platform.
    pub final_stage: StageId,
}

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WarningKind {
    /// A `--build-arg` that no ARG of the built stages (nor a global ARG)
    /// declares.
    UnusedBuildArg,
    /// A variable in a FROM line that no global ARG declares (BuildKit's
    /// `UndefinedArgInFrom` check).
    UndefinedArgInFrom,
}

/// A problem that does not stop the build.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// The Dockerfile line it refers to, if any.
    pub line: Option<usize>,
    /// One sentence for the user.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Everything to build, for every requested platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildPlan {
    /// Every distinct step once, parents before children.
    pub steps: Vec<Step>,
    /// Every distinct stage instance once, dependencies before dependents.
    pub stages: Vec<StageInstance>,
    /// One per requested platform, in request order.
    pub targets: Vec<Target>,
    /// Labels to set on every target image (`PlanOptions::labels`).
    pub labels: BTreeMap<String, String>,
    /// Warnings, in the order they were found, each once.
    pub warnings: Vec<Warning>,
}

impl BuildPlan {
    /// The step with this id. Panics if `id` does not come from this plan.
    pub fn step(&self, id: StepId) -> &Step {
        &self.steps[id.0]
    }

    /// The stage instance with this id. Panics if `id` does not come from
    /// this plan.
    pub fn stage(&self, id: StageId) -> &StageInstance {
        &self.stages[id.0]
    }
}

//! The build planner: a Dockerfile plus build options become the
//! per-platform [`BuildPlan`], with BuildKit's `dockerfile2llb` semantics.
//!
//! [`plan`] parses the text, then for every requested platform does what
//! BuildKit's Dockerfile frontend does for one target platform, and merges
//! the results:
//!
//! - **Global scope.** The automatic args `BUILDPLATFORM`, `BUILDOS`,
//!   `BUILDARCH`, `BUILDVARIANT`, `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`,
//!   `TARGETVARIANT` and `TARGETSTAGE` (the target stage's name, `default`
//!   when it has none), each overridable by `--build-arg`, then the ARGs
//!   before the first FROM (a `--build-arg` wins over the default; a default
//!   is expanded with the globals before it). FROM lines — image and
//!   `--platform` — are expanded with the globals only; a variable no global
//!   declares expands to nothing and gives an `UndefinedArgInFrom` warning.
//!   An image that expands to nothing is an error.
//! - **Stages.** `FROM <name>` names an *earlier* stage (exact match on the
//!   lowercased `AS` name); `scratch` is empty; anything else is an image,
//!   pulled for the FROM's `--platform` or the target platform. A stage built
//!   on another inherits its platform, environment, working directory, user,
//!   shell and ARG values, and runs its ONBUILD instructions right after
//!   FROM; a stage built on an image starts from the image's config
//!   ([`ImageConfigSource`]), `PATH` defaulted, and runs its `OnBuild`
//!   triggers first.
//! - **ARG in a stage.** `--build-arg` value, else the default (expanded),
//!   else — for `ARG NAME` alone — the global value (so the automatic args
//!   reach a stage only through `ARG TARGETOS` etc.). ARG and ENV values form
//!   one build environment, the later write winning; ENV also writes the
//!   image `Env`. Words are expanded (kbuild-shell lexer, the file's escape
//!   character) where BuildKit expands them: ENV, LABEL, COPY/ADD sources,
//!   destination, `--chown`, `--chmod`, `--exclude`, WORKDIR (relative to the
//!   previous WORKDIR), USER, EXPOSE, VOLUME, STOPSIGNAL, RUN `--mount`
//!   values; never RUN/CMD/ENTRYPOINT/HEALTHCHECK bodies nor `--from`.
//! - **`--from`.** `COPY --from=<n>` is a stage index, otherwise a stage
//!   name (case-insensitive) anywhere in the file, otherwise an image pulled
//!   for the target platform; `RUN --mount from=` looks names up only. A
//!   stage defined after the one that reads it is an error, and so is a cycle.
//! - **Target and pruning.** `--target` (case-insensitive; default: the last
//!   stage) and only the stages it needs — its bases and `--from` stages,
//!   transitively — are planned.
//! - **Sharing.** A step identical for several target platforms (same stage,
//!   base, parent step, expanded instruction, platform it runs on, args in
//!   scope and sources) is one [`Step`] listing all those platforms: the
//!   steps of a `FROM --platform=$BUILDPLATFORM` stage before it reads any
//!   `TARGET*` arg are built once. Stage instances are merged the same way.
//!
//! - **Limits.** A Dockerfile is untrusted input to a shared builder, so
//!   expansion is bounded: every expanded word is at most [`MAX_WORD_LEN`]
//!   bytes (1 MiB, checked by the lexer before the text grows), and the
//!   build environment of a stage (names and values of its ENV and ARG
//!   variables, the base image's included) at most [`MAX_STAGE_ENV`] bytes
//!   (16 MiB). Either is an error naming the line; BuildKit itself reads
//!   no Dockerfile line longer than 64 KiB, so no real Dockerfile is near.
//!
//! Warnings: `--build-arg`s no ARG of a built stage (nor a global ARG)
//! declares, and undeclared variables in FROM lines.
//!
//! ```
//! use std::collections::BTreeMap;
//! use kbuild_dockerfile::plan::{plan, NoImageConfigs, PlanOptions};
//! use kbuild_platform::Platform;
//!
//! let dockerfile = "\
//! FROM --platform=$BUILDPLATFORM golang AS builder
//! WORKDIR /src
//! COPY . .
//! ARG TARGETOS TARGETARCH
//! RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app .
//!
//! FROM scratch
//! COPY --from=builder /out/app /app
//! ";
//! let opts = PlanOptions {
//!     platforms: vec![Platform::parse("linux/amd64")?, Platform::parse("linux/arm64")?],
//!     build_platform: Platform::parse("linux/amd64")?,
//!     build_args: BTreeMap::new(),
//!     target: None,
//!     labels: BTreeMap::new(),
//!     named_contexts: Default::default(),
//! };
//! let plan = plan(dockerfile, &opts, &NoImageConfigs)?;
//! // WORKDIR and COPY . . run once for both platforms.
//! assert_eq!(plan.steps.iter().filter(|s| s.shared).count(), 2);
//! assert_eq!(plan.targets.len(), 2);
//! println!("{}", plan.to_text());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod display;
pub(crate) use display::pairs;
mod error;
mod expand;
mod load;
mod model;
mod options;
mod paths;
mod planner;
mod scope;

pub use error::{Error, ErrorKind, TriggerError};
pub use kbuild_shell::MAX_WORD_LEN;

/// The most bytes the build environment of one stage may hold: names and
/// values of its ENV and ARG variables, the base image's ENV included.
pub const MAX_STAGE_ENV: usize = 16 << 20;
pub use model::{
    BuildPlan, Source, StageBase, StageId, StageInstance, Step, StepId, Target, VarPair, Vars,
    Warning, WarningKind,
};
pub use options::{BaseImageConfig, ImageConfigSource, NamedContext, NoImageConfigs, PlanOptions};
pub use paths::clean as clean_path;
pub(crate) use paths::resolve_workdir;
pub use planner::plan;

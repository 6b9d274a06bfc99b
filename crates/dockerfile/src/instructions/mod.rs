//! Typed Dockerfile instructions: one struct per instruction, built from the
//! parser's [`Ast`](crate::parser::Ast) by [`from_ast`].
//!
//! Words are kept exactly as written (quotes, escapes and `$VAR`s intact):
//! BuildKit expands variables only later, per stage, with the environment of
//! that stage. [`Instruction::expand`] applies an [`Expander`] to exactly the
//! fields BuildKit expands; everything else (RUN/CMD/ENTRYPOINT/HEALTHCHECK
//! bodies, `--from`, ONBUILD triggers, SHELL, MAINTAINER) stays raw.

mod convert;
mod duration;
mod expand;
mod flags;
mod mount;
mod stages;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::parser::{Heredoc, SourceRange};
pub use convert::{from_ast, from_node};
pub use expand::Expander;
pub use mount::{
    BindMount, CacheMount, Mount, MountError, SecretMount, Sharing, SshMount, TmpfsMount,
};
pub use stages::{stages, Stage, Stages};

/// One Dockerfile instruction with its typed fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Instruction {
    /// `FROM [--platform=<p>] <image> [AS <name>]`
    From(From),
    /// `ARG <name>[=<default>] ...`
    Arg(Arg),
    /// `ENV <key>=<value> ...` or `ENV <key> <value>`
    Env(Env),
    /// `LABEL <key>=<value> ...` or `LABEL <key> <value>`
    Label(Label),
    /// `RUN [--mount=...] [--network=...] [--security=...] <command>`
    Run(Run),
    /// `COPY [flags] <src>... <dest>`
    Copy(Copy),
    /// `ADD [flags] <src>... <dest>`
    Add(Add),
    /// `WORKDIR <path>`
    Workdir(Workdir),
    /// `USER <user>[:<group>]`
    User(User),
    /// `EXPOSE <port>[/<proto>] ...`
    Expose(Expose),
    /// `VOLUME ["/a", "/b"]` or `VOLUME /a /b`
    Volume(Volume),
    /// `ENTRYPOINT` in shell or exec form
    Entrypoint(Entrypoint),
    /// `CMD` in shell or exec form
    Cmd(Cmd),
    /// `SHELL ["executable", "param"...]` (exec form only)
    Shell(Shell),
    /// `STOPSIGNAL <signal>`
    StopSignal(StopSignal),
    /// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD <command>`
    Healthcheck(Healthcheck),
    /// `ONBUILD <instruction>`
    Onbuild(Onbuild),
    /// `MAINTAINER <name>` (deprecated)
    Maintainer(Maintainer),
}

/// A command line in shell form (run through the image's SHELL) or exec
/// form (a JSON array, run as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Shell form: the text after the instruction (and its flags), unmodified.
    /// An instruction with no text at all (`CMD` alone) is `Shell("")`, which
    /// BuildKit runs as `<shell...> ""`.
    Shell(String),
    /// Exec form: the decoded JSON array.
    Exec(Vec<String>),
}

/// An ordered key/value pair of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key, raw.
    pub key: String,
    /// The value, raw (quotes kept; the shell lexer removes them on expansion).
    pub value: String,
}

/// `FROM [--platform=<platform>] <image> [AS <name>]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct From {
    /// The base image reference (or stage name, or `scratch`), unexpanded.
    pub image: String,
    /// The `--platform` value, unexpanded.
    pub platform: Option<String>,
    /// The stage name after `AS`, lowercased as BuildKit does.
    pub name: Option<String>,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text (continuations joined, trimmed).
    pub original: String,
}

/// One `NAME[=default]` of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDef {
    /// The argument name, unexpanded.
    pub name: String,
    /// The default after `=`, unexpanded; `None` when there is no `=`.
    pub default: Option<String>,
}

/// `ARG <name>[=<default>] [<name>[=<default>]...]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arg {
    /// The declared arguments in order.
    pub args: Vec<ArgDef>,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `ENV <key>=<value> ...` (or the legacy `ENV <key> <value>`)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    /// The variables in order.
    pub vars: Vec<KeyValue>,
    /// True for the legacy `ENV key value` form (BuildKit lints it).
    pub legacy_form: bool,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `LABEL <key>=<value> ...` (or the legacy `LABEL <key> <value>`)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The labels in order.
    pub labels: Vec<KeyValue>,
    /// True for the legacy `LABEL key value` form.
    pub legacy_form: bool,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `RUN --network=<mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The default network (the flag absent or `default`).
    #[default]
    Default,
    /// No network (`none`).
    None,
    /// The host network (`host`; needs the `network.host` entitlement).
    Host,
}

/// `RUN --security=<mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// The normal sandbox (the flag absent or `sandbox`).
    #[default]
    Sandbox,
    /// Full privileges (`insecure`; needs the `security.insecure` entitlement).
    Insecure,
}

/// `RUN [--mount=...]... [--network=...] [--security=...] <command>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The command; heredoc bodies are in `heredocs`, not in the text.
    pub command: Command,
    /// Here-documents started on the RUN line, in order.
    pub heredocs: Vec<Heredoc>,
    /// The raw `--mount` values in order. BuildKit expands variables in each
    /// option value before interpreting it, so the typed form comes from
    /// [`Run::mounts`] / [`Mount::parse`] once an expander is at hand.
    pub mounts: Vec<String>,
    /// `--network`.
    pub network: NetworkMode,
    /// `--security`.
    pub security: SecurityMode,
    /// Lines the instruction spans (including heredoc bodies).
    pub range: SourceRange,
    /// The source text of the instruction line.
    pub original: String,
}

/// The inline content of a COPY/ADD heredoc source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceContent {
    /// The heredoc name, used as the file name.
    pub path: String,
    /// The file content (for `<<-` with leading tabs removed).
    pub data: String,
    /// Whether variables in `data` are expanded (delimiter not quoted).
    pub expand: bool,
}

/// `COPY [--from=..] [--chown=..] [--chmod=..] [--link] [--parents] [--exclude=..]... <src>... <dest>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Source paths/patterns, unexpanded (heredoc sources are in `contents`).
    pub sources: Vec<String>,
    /// Heredoc sources (`COPY <<EOF /dest`).
    pub contents: Vec<SourceContent>,
    /// Destination, unexpanded.
    pub dest: String,
    /// `--from`: a stage name, stage index or image (never expanded).
    pub from: Option<String>,
    /// `--chown`, unexpanded.
    pub chown: Option<String>,
    /// `--chmod`, unexpanded.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns in order, unexpanded.
    pub excludes: Vec<String>,
    /// Whether the sources were written as a JSON array.
    pub json: bool,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `ADD [--chown=..] [--chmod=..] [--link] [--checksum=..] [--keep-git-dir] [--unpack] [--exclude=..]... <src>... <dest>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Add {
    /// Source paths/URLs, unexpanded (heredoc sources are in `contents`).
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub contents: Vec<SourceContent>,
    /// Destination, unexpanded.
    pub dest: String,
    /// `--chown`, unexpanded.
    pub chown: Option<String>,
    /// `--chmod`, unexpanded.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--checksum` (`sha256:<hex>` for URLs, a commit for git), unexpanded.
    pub checksum: Option<String>,
    /// `--keep-git-dir`; `None` when the flag is absent.
    pub keep_git_dir: Option<bool>,
    /// `--unpack`; `None` when absent (archives from the context are unpacked,
    /// remote ones are not).
    pub unpack: Option<bool>,
    /// `--exclude` patterns in order, unexpanded.
    pub excludes: Vec<String>,
    /// Whether the sources were written as a JSON array.
    pub json: bool,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `WORKDIR <path>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workdir {
    /// The path, unexpanded.
    pub path: String,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `USER <user>[:<group>]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user, unexpanded.
    pub user: String,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `EXPOSE <port>[/<proto>]...`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    /// The port words, unexpanded, sorted (BuildKit sorts them before
    /// expansion). Each may expand to several ports (`EXPOSE $PORTS`).
    pub ports: Vec<String>,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `VOLUME ["/a"]` or `VOLUME /a /b`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The volume paths, unexpanded, whitespace-trimmed.
    pub volumes: Vec<String>,
    /// Whether they were written as a JSON array.
    pub json: bool,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `ENTRYPOINT <command>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entrypoint {
    /// The command (never expanded).
    pub command: Command,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `CMD <command>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmd {
    /// The command (never expanded).
    pub command: Command,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `SHELL ["executable", "parameters"...]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shell {
    /// The shell command line (non-empty).
    pub shell: Vec<String>,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `STOPSIGNAL <signal>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSignal {
    /// The signal name or number, unexpanded.
    pub signal: String,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// What a HEALTHCHECK sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthTest {
    /// `HEALTHCHECK NONE`: disable any check inherited from the base image.
    None,
    /// `HEALTHCHECK [options] CMD <command>`.
    Cmd {
        /// The check command: shell form becomes `CMD-SHELL` in the image
        /// config, exec form `CMD`.
        command: Command,
        /// `--interval`; zero when absent (inherit/default).
        interval: Duration,
        /// `--timeout`; zero when absent.
        timeout: Duration,
        /// `--start-period`; zero when absent.
        start_period: Duration,
        /// `--start-interval`; zero when absent.
        start_interval: Duration,
        /// `--retries`; zero when absent.
        retries: u32,
    },
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD <command>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// The check.
    pub test: HealthTest,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `ONBUILD <instruction>`: a trigger stored in the image config and run
/// when the image is used as a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onbuild {
    /// The trigger's keyword, uppercased (`RUN`, `COPY`, ...).
    pub trigger: String,
    /// The trigger text as stored in the image config (`OnBuild`): the line
    /// without `ONBUILD`, followed by any heredoc bodies and delimiters.
    /// BuildKit parses it only when the trigger runs; see
    /// [`Onbuild::parse_trigger`].
    pub expression: String,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

/// `MAINTAINER <name>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintainer {
    /// The maintainer text.
    pub name: String,
    /// Lines the instruction spans.
    pub range: SourceRange,
    /// The source text.
    pub original: String,
}

impl Instruction {
    /// The instruction keyword in upper case (`FROM`, `RUN`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Arg(_) => "ARG",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Run(_) => "RUN",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Cmd(_) => "CMD",
            Instruction::Shell(_) => "SHELL",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Maintainer(_) => "MAINTAINER",
        }
    }

    /// The lines the instruction spans.
    pub fn range(&self) -> SourceRange {
        self.parts().0
    }

    /// The instruction's source text (continuations joined, trimmed): what
    /// BuildKit shows in progress output.
    pub fn original(&self) -> &str {
        self.parts().1
    }

    fn parts(&self) -> (SourceRange, &str) {
        match self {
            Instruction::From(i) => (i.range, &i.original),
            Instruction::Arg(i) => (i.range, &i.original),
            Instruction::Env(i) => (i.range, &i.original),
            Instruction::Label(i) => (i.range, &i.original),
            Instruction::Run(i) => (i.range, &i.original),
            Instruction::Copy(i) => (i.range, &i.original),
            Instruction::Add(i) => (i.range, &i.original),
            Instruction::Workdir(i) => (i.range, &i.original),
            Instruction::User(i) => (i.range, &i.original),
            Instruction::Expose(i) => (i.range, &i.original),
            Instruction::Volume(i) => (i.range, &i.original),
            Instruction::Entrypoint(i) => (i.range, &i.original),
            Instruction::Cmd(i) => (i.range, &i.original),
            Instruction::Shell(i) => (i.range, &i.original),
            Instruction::StopSignal(i) => (i.range, &i.original),
            Instruction::Healthcheck(i) => (i.range, &i.original),
            Instruction::Onbuild(i) => (i.range, &i.original),
            Instruction::Maintainer(i) => (i.range, &i.original),
        }
    }
}

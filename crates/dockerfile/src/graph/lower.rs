//! Lowering a [`BuildPlan`] to a [`Graph`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kbuild_platform::Platform;

use sha2::{Digest, Sha256};

use super::rules::{self, AddSourceKind, RunForm};
use super::{
    Chmod, ConfigOp, ConfigPatch, ExecMount, ExecOp, FileAction, FileOp, Graph, GraphTarget,
    History, ImagePin, Op, OpId, OpKind, OpMeta, SourceOp, FORMAT_VERSION,
};
use crate::instructions::{Command, HealthTest, Instruction, Mount, SourceContent};
use crate::plan::{BuildPlan, Error, ErrorKind, Source, StageBase, StageInstance, Step};

/// Resolved images by (reference as written, platform as
/// `Platform::to_string` writes it): what [`lower_pinned`] pins them to.
pub type Pins = BTreeMap<(String, String), ImagePin>;

/// Lower a plan to its op graph; see the [module docs](super). Its image
/// sources are not pinned: they are resolved when the graph runs.
pub fn lower(plan: &BuildPlan) -> Result<Graph, Error> {
    lower_pinned(plan, &Pins::new())
}

/// [`lower`], with every image source found in `pins` pinned to its
/// digests ([`ImagePin`]): the graph then builds on exactly those images
/// wherever it runs, however the tag moves. Images not in `pins` are
/// left to be resolved when the graph runs.
pub fn lower_pinned(plan: &BuildPlan, pins: &Pins) -> Result<Graph, Error> {
    let mut l = Lowering {
        ops: Vec::new(),
        index: HashMap::new(),
        stage_ops: vec![None; plan.stages.len()],
        pins,
    };
    for stage in &plan.stages {
        let mut state = match &stage.base {
            // A stage's scratch has its platform: the image config starts there.
            StageBase::Scratch => l.source(SourceOp::Scratch, Some(stage.platform.to_string())),
            StageBase::Image {
                reference,
                platform,
            } => l.image(reference, &platform.to_string()),
            StageBase::Stage(id) => l.stage_result(id.0)?,
        };
        let names = StageNames::new(plan, stage);
        if let StageBase::Image { reference, .. } = &stage.base {
            l.name(&state, names.from(reference));
        }
        // A base's ONBUILD triggers run as the stage's first steps (the
        // planner put them there); the stage does not pass them on.
        if stage.steps.first().is_some_and(|s| plan.step(*s).onbuild) {
            state = l.add(
                Some(stage.platform.to_string()),
                vec![state],
                OpKind::Config(ConfigOp {
                    patches: vec![ConfigPatch::ClearOnBuild],
                    history: None,
                }),
                OpMeta::default(),
            );
        }
        let mut cmd_set = false;
        let mut position = 1;
        for &sid in &stage.steps {
            let step = plan.step(sid);
            state = l.step(step, state, cmd_set)?;
            cmd_set |= matches!(*step.instruction, Instruction::Cmd(_));
            if is_vertex(&step.instruction) {
                position += 1;
                l.name(&state, names.step(step, position));
            }
        }
        l.stage_ops[stage.id.0] = Some(state);
    }
    let mut targets = Vec::with_capacity(plan.targets.len());
    for t in &plan.targets {
        targets.push(GraphTarget {
            platform: t.platform.to_string(),
            result: l.stage_result(t.final_stage.0)?,
        });
    }
    Ok(Graph {
        version: FORMAT_VERSION,
        ops: l.ops,
        targets,
        labels: plan.labels.clone(),
    })
}

/// Whether a step is shown as a progress vertex (metadata steps are not).
fn is_vertex(ins: &Instruction) -> bool {
    matches!(
        ins,
        Instruction::Copy(_) | Instruction::Add(_) | Instruction::Workdir(_) | Instruction::Run(_)
    )
}

/// How progress names the platform of a step, as buildx does: the platform
/// it runs on, and when that is not the target it builds for (a
/// `FROM --platform=$BUILDPLATFORM` stage), `->` and the target, without
/// the OS when it is the same: `linux/amd64->arm64`. A step shared by
/// several targets names the first.
pub fn vertex_platform(runs_on: &Platform, targets: &[Arc<Platform>]) -> String {
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

/// The progress names of one stage instance's vertices:
/// `[platform label position/total] text`.
struct StageNames {
    platform: String,
    label: String,
    total: usize,
}

impl StageNames {
    fn new(plan: &BuildPlan, stage: &StageInstance) -> StageNames {
        let total = stage
            .steps
            .iter()
            .filter(|s| is_vertex(&plan.step(**s).instruction))
            .count()
            + 1;
        StageNames {
            platform: stage.platform.to_string(),
            label: stage
                .name
                .clone()
                .unwrap_or_else(|| format!("stage-{}", stage.index)),
            total,
        }
    }

    fn from(&self, reference: &str) -> String {
        format!(
            "[{} {} 1/{}] FROM {reference}",
            self.platform, self.label, self.total
        )
    }

    fn step(&self, step: &Step, position: usize) -> String {
        format!(
            "[{} {} {position}/{}] {}",
            vertex_platform(&step.platform, &step.platforms),
            self.label,
            self.total,
            step.display
        )
    }
}

struct Lowering<'p> {
    ops: Vec<Op>,
    index: HashMap<OpId, usize>,
    stage_ops: Vec<Option<OpId>>,
    pins: &'p Pins,
}

/// What the id covers: everything but the meta.
#[derive(serde::Serialize)]
struct Hashed<'a> {
    version: u32,
    platform: &'a Option<String>,
    inputs: &'a [OpId],
    op: &'a OpKind,
}

fn op_id(platform: &Option<String>, inputs: &[OpId], op: &OpKind) -> OpId {
    let body = Hashed {
        version: FORMAT_VERSION,
        platform,
        inputs,
        op,
    };
    // The JSON goes straight into the hash. Plain structs with string keys
    // and a writer that cannot fail: serializing cannot fail.
    let mut hasher = HashWriter(Sha256::new());
    let _ = serde_json::to_writer(&mut hasher, &body);
    OpId(format!("sha256:{}", hex::encode(hasher.0.finalize())))
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn at(step: &Step, kind: ErrorKind) -> Error {
    Error::at(kind, step.lines.0, &step.display)
}

fn meta(step: &Step) -> OpMeta {
    OpMeta {
        lines: Some(step.lines),
        display: Some(step.display.to_string()),
        progress: Vec::new(),
    }
}

impl Lowering<'_> {
    fn add(
        &mut self,
        platform: Option<String>,
        inputs: Vec<OpId>,
        op: OpKind,
        meta: OpMeta,
    ) -> OpId {
        let id = op_id(&platform, &inputs, &op);
        if !self.index.contains_key(&id) {
            self.index.insert(id.clone(), self.ops.len());
            self.ops.push(Op {
                id: id.clone(),
                platform,
                inputs,
                op,
                meta,
            });
        }
        id
    }

    /// Add a progress name to an op (once).
    fn name(&mut self, id: &OpId, name: String) {
        if let Some(&i) = self.index.get(id) {
            let names = &mut self.ops[i].meta.progress;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }

    fn source(&mut self, s: SourceOp, platform: Option<String>) -> OpId {
        self.add(platform, Vec::new(), OpKind::Source(s), OpMeta::default())
    }

    fn image(&mut self, reference: &str, platform: &str) -> OpId {
        self.source(
            SourceOp::Image {
                reference: reference.to_string(),
                platform: platform.to_string(),
                pin: self
                    .pins
                    .get(&(reference.to_string(), platform.to_string()))
                    .cloned(),
            },
            Some(platform.to_string()),
        )
    }

    fn stage_result(&self, index: usize) -> Result<OpId, Error> {
        self.stage_ops
            .get(index)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::new(ErrorKind::StageUsedBeforeBuilt(index)))
    }

    fn plan_source(&mut self, s: &Source) -> Result<OpId, Error> {
        match s {
            Source::Stage(id) => self.stage_result(id.0),
            Source::Scratch => Ok(self.source(SourceOp::Scratch, None)),
            Source::Image {
                reference,
                platform,
            } => Ok(self.image(reference, &platform.to_string())),
            Source::Context(name) => Ok(self.source(
                SourceOp::Context {
                    include: Vec::new(),
                    exclude: Vec::new(),
                    dockerignore: false,
                    name: Some(name.clone()),
                },
                None,
            )),
        }
    }

    /// A scratch state holding inline files (heredocs) at `/<name>`.
    fn inline_files(&mut self, platform: &str, files: Vec<(String, String, u32)>) -> OpId {
        let scratch = self.source(SourceOp::Scratch, None);
        let actions = files
            .into_iter()
            .map(|(name, data, mode)| FileAction::Mkfile {
                path: format!("/{name}"),
                data,
                mode,
                chown: None,
            })
            .collect();
        self.add(
            Some(platform.to_string()),
            vec![scratch],
            OpKind::File(FileOp {
                actions,
                config: Vec::new(),
                history: None,
            }),
            OpMeta::default(),
        )
    }

    fn config(
        &mut self,
        step: &Step,
        state: OpId,
        patches: Vec<ConfigPatch>,
        text: String,
    ) -> OpId {
        self.add(
            Some(step.platform.to_string()),
            vec![state],
            OpKind::Config(ConfigOp {
                patches,
                history: Some(History::new(text)),
            }),
            meta(step),
        )
    }

    fn step(&mut self, step: &Step, state: OpId, cmd_set: bool) -> Result<OpId, Error> {
        if let Some((patches, text)) = config_change(step, cmd_set)? {
            return Ok(self.config(step, state, patches, text));
        }
        Ok(match &*step.instruction {
            Instruction::Workdir(w) => self.workdir(step, state, w),
            Instruction::Run(r) => self.exec(step, state, r)?,
            Instruction::Copy(c) => self.copy(step, state, c)?,
            Instruction::Add(a) => self.add_files(step, state, a)?,
            // FROM starts the stage; ARG leaves no history entry and no
            // config change; the others are config changes (above).
            _ => state,
        })
    }

    /// WORKDIR: a mkdir file op that also patches the config (`/` only
    /// patches the config).
    fn workdir(&mut self, step: &Step, state: OpId, w: &crate::instructions::Workdir) -> OpId {
        let text = format!("WORKDIR {}", w.path);
        let patch = ConfigPatch::Workdir {
            path: w.path.clone(),
        };
        if w.path == "/" {
            return self.config(step, state, vec![patch], text);
        }
        let chown = (!step.user.is_empty()).then(|| step.user.to_string());
        self.add(
            Some(step.platform.to_string()),
            vec![state],
            OpKind::File(FileOp {
                actions: vec![FileAction::Mkdir {
                    path: w.path.clone(),
                    mode: 0o755,
                    parents: true,
                    chown,
                }],
                config: vec![patch],
                history: Some(History::new(text)),
            }),
            meta(step),
        )
    }

    fn copy(
        &mut self,
        step: &Step,
        state: OpId,
        c: &crate::instructions::Copy,
    ) -> Result<OpId, Error> {
        let chmod = parse_chmod(step, c.chmod.as_deref())?;
        let dest = rules::resolve_dest(&step.workdir, &c.dest, &step.platform.os);
        let mut inputs = vec![state];
        let mut actions = Vec::new();
        if !c.sources.is_empty() {
            let src = match (&c.from, step.sources.first()) {
                (None, _) => self.source(
                    SourceOp::Context {
                        include: c.sources.clone(),
                        exclude: c.excludes.clone(),
                        dockerignore: true,
                        name: None,
                    },
                    None,
                ),
                (Some(_), Some(s)) => self.plan_source(s)?,
                (Some(from), None) => {
                    return Err(at(
                        step,
                        ErrorKind::NoSource {
                            flag: "--from=",
                            from: from.clone(),
                        },
                    ))
                }
            };
            inputs.push(src);
            actions.push(FileAction::Copy {
                input: inputs.len() - 1,
                sources: c.sources.clone(),
                dest: dest.clone(),
                chown: c.chown.clone(),
                chmod: chmod.clone(),
                excludes: c.excludes.clone(),
                parents: c.parents,
                unpack: false,
                link: c.link,
            });
        }
        self.inline_copy(
            step,
            &c.contents,
            &mut inputs,
            &mut actions,
            &dest,
            &c.chown,
            &chmod,
            c.link,
        );
        let text = rules::copy_history("COPY", &c.sources, &c.contents, &c.dest);
        Ok(self.file(step, inputs, actions, text))
    }

    /// ADD: local sources (one context input, copied first), URLs and git
    /// repositories (a source op each), then heredocs.
    fn add_files(
        &mut self,
        step: &Step,
        state: OpId,
        a: &crate::instructions::Add,
    ) -> Result<OpId, Error> {
        let chmod = parse_chmod(step, a.chmod.as_deref())?;
        let dest = rules::resolve_dest(&step.workdir, &a.dest, &step.platform.os);
        let mut inputs = vec![state];
        let mut actions = Vec::new();
        let mut local = Vec::new();
        let copy = |input: usize, sources: Vec<String>, unpack: bool| FileAction::Copy {
            input,
            sources,
            dest: dest.clone(),
            chown: a.chown.clone(),
            chmod: chmod.clone(),
            excludes: a.excludes.clone(),
            parents: false,
            unpack,
            link: a.link,
        };
        for src in &a.sources {
            let kind = rules::add_source_kind(src);
            if let Some(sum) = &a.checksum {
                rules::check_checksum(kind, sum)
                    .map_err(|source| at(step, ErrorKind::Checksum { source }))?;
            }
            let (op, sources, unpack) = match kind {
                AddSourceKind::Local => {
                    local.push(src.clone());
                    continue;
                }
                AddSourceKind::Url => {
                    let filename = url_filename(src);
                    let op = self.source(
                        SourceOp::Http {
                            url: src.clone(),
                            filename: filename.clone(),
                            checksum: a.checksum.clone(),
                        },
                        None,
                    );
                    (op, vec![format!("/{filename}")], a.unpack == Some(true))
                }
                AddSourceKind::Git => {
                    let op = self.source(git_source(src, a), None);
                    (op, vec!["/".into()], false)
                }
            };
            inputs.push(op);
            actions.push(copy(inputs.len() - 1, sources, unpack));
        }
        if !local.is_empty() {
            let op = self.source(
                SourceOp::Context {
                    include: local.clone(),
                    exclude: a.excludes.clone(),
                    dockerignore: true,
                    name: None,
                },
                None,
            );
            inputs.push(op);
            actions.insert(0, copy(inputs.len() - 1, local, a.unpack != Some(false)));
        }
        self.inline_copy(
            step,
            &a.contents,
            &mut inputs,
            &mut actions,
            &dest,
            &a.chown,
            &chmod,
            a.link,
        );
        let text = rules::copy_history("ADD", &a.sources, &a.contents, &a.dest);
        Ok(self.file(step, inputs, actions, text))
    }

    fn file(
        &mut self,
        step: &Step,
        inputs: Vec<OpId>,
        actions: Vec<FileAction>,
        text: String,
    ) -> OpId {
        self.add(
            Some(step.platform.to_string()),
            inputs,
            OpKind::File(FileOp {
                actions,
                config: Vec::new(),
                history: Some(History::new(text)),
            }),
            meta(step),
        )
    }

    /// COPY/ADD heredocs: files on a scratch state (mode 0644), copied
    /// like any source.
    #[allow(clippy::too_many_arguments)]
    fn inline_copy(
        &mut self,
        step: &Step,
        contents: &[SourceContent],
        inputs: &mut Vec<OpId>,
        actions: &mut Vec<FileAction>,
        dest: &str,
        chown: &Option<String>,
        chmod: &Option<Chmod>,
        link: bool,
    ) {
        if contents.is_empty() {
            return;
        }
        let files = contents
            .iter()
            .map(|c| (c.path.clone(), c.data.clone(), 0o644))
            .collect();
        let op = self.inline_files(&step.platform.to_string(), files);
        inputs.push(op);
        actions.push(FileAction::Copy {
            input: inputs.len() - 1,
            sources: contents.iter().map(|c| format!("/{}", c.path)).collect(),
            dest: dest.to_string(),
            chown: chown.clone(),
            chmod: chmod.clone(),
            excludes: Vec::new(),
            parents: false,
            unpack: false,
            link,
        });
    }

    fn exec(
        &mut self,
        step: &Step,
        state: OpId,
        r: &crate::instructions::Run,
    ) -> Result<OpId, Error> {
        let os = step.platform.os.as_str();
        let platform = step.platform.to_string();
        let mut inputs = vec![state];
        let mut mounts = Vec::new();
        let argv = match rules::run_form(&r.command, &r.heredocs, &step.shell, os) {
            RunForm::Argv(argv) => argv,
            RunForm::Script { name, data, argv } => {
                let op = self.inline_files(&platform, vec![(name, data, 0o755)]);
                inputs.push(op);
                mounts.push(ExecMount::Bind {
                    target: rules::HEREDOC_PIPES.to_string(),
                    input: inputs.len() - 1,
                    source: "/".into(),
                    readonly: true,
                });
                argv
            }
        };
        self.run_mounts(step, &mut inputs, &mut mounts)?;
        let env = run_env(step);
        let history = History::new(rules::run_history(&argv, &step.args));
        Ok(self.add(
            Some(platform),
            inputs,
            OpKind::Exec(ExecOp {
                argv,
                env,
                user: step.user.to_string(),
                cwd: step.workdir.to_string(),
                mounts,
                network: r.network,
                security: r.security,
                history,
            }),
            meta(step),
        ))
    }

    /// The `--mount`s of a RUN step, after any heredoc script mount: each
    /// input they read (the context, a stage, an image) added to `inputs`.
    fn run_mounts(
        &mut self,
        step: &Step,
        inputs: &mut Vec<OpId>,
        mounts: &mut Vec<ExecMount>,
    ) -> Result<(), Error> {
        let os = step.platform.os.as_str();
        let abs = |t: &str| crate::plan::resolve_workdir(&step.workdir, t, os).into_owned();
        let mut sources = step.sources.iter();
        let mut from_input = |l: &mut Lowering, inputs: &mut Vec<OpId>, from: &str| {
            let s = sources.next().ok_or_else(|| {
                at(
                    step,
                    ErrorKind::NoSource {
                        flag: "--mount from=",
                        from: from.to_string(),
                    },
                )
            })?;
            let op = l.plan_source(s)?;
            inputs.push(op);
            Ok::<usize, Error>(inputs.len() - 1)
        };
        for m in step.mounts.iter() {
            mounts.push(match m {
                Mount::Bind(b) => {
                    let input = match &b.from {
                        Some(from) => from_input(self, inputs, from)?,
                        None => {
                            let ctx = self.source(
                                SourceOp::Context {
                                    include: Vec::new(),
                                    exclude: Vec::new(),
                                    dockerignore: true,
                                    name: None,
                                },
                                None,
                            );
                            inputs.push(ctx);
                            inputs.len() - 1
                        }
                    };
                    ExecMount::Bind {
                        target: abs(&b.target),
                        input,
                        source: b.source.clone().unwrap_or_else(|| "/".into()),
                        readonly: !b.read_write,
                    }
                }
                Mount::Cache(c) => {
                    let input = match &c.from {
                        Some(from) => Some(from_input(self, inputs, from)?),
                        None => None,
                    };
                    cache_mount(c, input, &abs)
                }
                Mount::Tmpfs(t) => ExecMount::Tmpfs {
                    target: abs(&t.target),
                    size: t.size,
                },
                Mount::Secret(s) => secret_mount(s, &abs),
                Mount::Ssh(s) => {
                    let n = mounts
                        .iter()
                        .filter(|m| matches!(m, ExecMount::Ssh { .. }))
                        .count();
                    ssh_mount(s, n, &abs)
                }
            });
        }
        Ok(())
    }
}

/// An argv of CMD/ENTRYPOINT: exec form as written, shell form through the
/// stage's SHELL.
fn shell_argv(step: &Step, command: &Command) -> Vec<String> {
    match command {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut v = step.shell.to_vec();
            v.push(s.clone());
            v
        }
    }
}

/// RUN's environment: the image environment with the build args laid over it.
fn run_env(step: &Step) -> Vec<String> {
    let mut env: Vec<String> = Vec::with_capacity(step.env.len() + step.args.len());
    for (k, v) in step.env.iter().chain(step.args.iter()) {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(n, _)| n) == Some(&**k))
        {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
    }
    env
}

/// `--mount=type=cache`: the id defaults to the target.
fn cache_mount(
    c: &crate::instructions::CacheMount,
    input: Option<usize>,
    abs: &dyn Fn(&str) -> String,
) -> ExecMount {
    ExecMount::Cache {
        target: abs(&c.target),
        id: c.id.clone().unwrap_or_else(|| abs(&c.target)),
        sharing: c.sharing,
        input,
        source: c.source.clone(),
        readonly: c.read_only,
        mode: c.mode.unwrap_or(0o755),
        uid: c.uid.unwrap_or(0),
        gid: c.gid.unwrap_or(0),
    }
}

/// `--mount=type=ssh`, the `n`th of its step: the target defaults to
/// `/run/buildkit/ssh_agent.N`.
fn ssh_mount(
    s: &crate::instructions::SshMount,
    n: usize,
    abs: &dyn Fn(&str) -> String,
) -> ExecMount {
    ExecMount::Ssh {
        id: s.id.clone().unwrap_or_else(|| "default".into()),
        target: match s.target.as_deref() {
            Some(t) => abs(t),
            None => format!("/run/buildkit/ssh_agent.{n}"),
        },
        required: s.required,
        mode: s.mode.unwrap_or(0o600),
        uid: s.uid.unwrap_or(0),
        gid: s.gid.unwrap_or(0),
    }
}

/// `--mount=type=secret`: the id defaults to the target's base name, the
/// target to `/run/secrets/ID` unless the secret goes to an env variable.
fn secret_mount(s: &crate::instructions::SecretMount, abs: &dyn Fn(&str) -> String) -> ExecMount {
    let id = s.id.clone().unwrap_or_else(|| {
        let t = s.target.as_deref().unwrap_or_default();
        t.rsplit('/').next().unwrap_or(t).to_string()
    });
    let target = match (&s.target, &s.env) {
        (Some(t), _) => Some(abs(t)),
        (None, None) => Some(format!("/run/secrets/{id}")),
        (None, Some(_)) => None,
    };
    ExecMount::Secret {
        id,
        target,
        env: s.env.clone(),
        required: s.required,
        mode: s.mode.unwrap_or(0o400),
        uid: s.uid.unwrap_or(0),
        gid: s.gid.unwrap_or(0),
    }
}

/// EXPOSE's ports as config keys (`80/tcp`), each once, in order.
fn expose_ports(step: &Step, e: &crate::instructions::Expose) -> Result<Vec<String>, Error> {
    let mut ports = Vec::new();
    for w in &e.ports {
        let keys = rules::expose_keys(w).map_err(|source| {
            at(
                step,
                ErrorKind::Expose {
                    value: w.clone(),
                    source,
                },
            )
        })?;
        for k in keys {
            if !ports.contains(&k) {
                ports.push(k);
            }
        }
    }
    Ok(ports)
}

/// HEALTHCHECK's config patch (durations in nanoseconds, zero left out).
fn healthcheck_patch(test: &HealthTest) -> ConfigPatch {
    let nanos =
        |d: &std::time::Duration| (!d.is_zero()).then(|| d.as_nanos().min(u64::MAX as u128) as u64);
    match test {
        HealthTest::None => ConfigPatch::Healthcheck {
            test: vec!["NONE".into()],
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        },
        HealthTest::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test: Vec<String> = match command {
                Command::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            };
            ConfigPatch::Healthcheck {
                test,
                interval: nanos(interval),
                timeout: nanos(timeout),
                start_period: nanos(start_period),
                start_interval: nanos(start_interval),
                retries: (*retries > 0).then_some(*retries),
            }
        }
    }
}

/// ADD of a git URL: `REMOTE[#REF[:SUBDIR]]` as a git source.
fn git_source(src: &str, a: &crate::instructions::Add) -> SourceOp {
    let (remote, fragment) = match src.split_once('#') {
        Some((r, f)) => (r.to_string(), Some(f)),
        None => (src.to_string(), None),
    };
    let (reference, subdir) = match fragment.map(|f| f.split_once(':')) {
        Some(Some((r, d))) => (Some(r.to_string()), Some(d.to_string())),
        Some(None) => (fragment.map(str::to_string), None),
        None => (None, None),
    };
    SourceOp::Git {
        remote,
        reference: reference.filter(|r| !r.is_empty()),
        subdir: subdir.filter(|d| !d.is_empty()),
        keep_git_dir: a.keep_git_dir.unwrap_or(false),
        checksum: a.checksum.clone(),
    }
}

fn parse_chmod(step: &Step, value: Option<&str>) -> Result<Option<Chmod>, Error> {
    value
        .map(|v| {
            Chmod::parse(v).map_err(|source| {
                at(
                    step,
                    ErrorKind::Chmod {
                        value: v.to_string(),
                        source,
                    },
                )
            })
        })
        .transpose()
}

/// The file name of an ADD URL: its path's last segment.
fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// The config patches and history text of a metadata instruction (ENV,
/// LABEL, USER, EXPOSE, ...); `None` for the instructions that are no
/// config op (FROM, ARG, and WORKDIR, RUN, COPY, ADD, which change files).
fn config_change(step: &Step, cmd_set: bool) -> Result<Option<(Vec<ConfigPatch>, String)>, Error> {
    let shell_argv = |command: &Command| shell_argv(step, command);
    Ok(Some(match &*step.instruction {
        Instruction::From(_)
        | Instruction::Arg(_)
        | Instruction::Workdir(_)
        | Instruction::Run(_)
        | Instruction::Copy(_)
        | Instruction::Add(_) => return Ok(None),
        Instruction::Env(e) => {
            let patches = e.vars.iter().map(|kv| ConfigPatch::Env {
                key: kv.key.clone(),
                value: kv.value.clone(),
            });
            let patches = patches.collect();
            let text = crate::plan::pairs("ENV", e.vars.iter().map(|kv| (&kv.key, &kv.value)));
            (patches, text)
        }
        Instruction::Label(l) => {
            let patches = l.labels.iter().map(|kv| ConfigPatch::Label {
                key: kv.key.clone(),
                value: kv.value.clone(),
            });
            let patches = patches.collect();
            let text = crate::plan::pairs("LABEL", l.labels.iter().map(|kv| (&kv.key, &kv.value)));
            (patches, text)
        }
        Instruction::User(u) => (
            vec![ConfigPatch::User {
                user: u.user.clone(),
            }],
            format!("USER {}", u.user),
        ),
        Instruction::Expose(e) => {
            let ports = expose_ports(step, e)?;
            let text = rules::expose_history(&ports);
            (vec![ConfigPatch::ExposedPorts { ports }], text)
        }
        Instruction::Volume(v) => (
            vec![ConfigPatch::Volumes {
                paths: v.volumes.clone(),
            }],
            format!("VOLUME {}", rules::go_list(&v.volumes)),
        ),
        Instruction::Entrypoint(e) => {
            let argv = shell_argv(&e.command);
            let text = format!("ENTRYPOINT {}", rules::go_quote_list(&argv));
            let patch = ConfigPatch::Entrypoint {
                argv,
                clear_cmd: !cmd_set,
            };
            (vec![patch], text)
        }
        Instruction::Cmd(c) => {
            let argv = shell_argv(&c.command);
            let text = format!("CMD {}", rules::go_quote_list(&argv));
            (vec![ConfigPatch::Cmd { argv }], text)
        }
        Instruction::Shell(s) => (
            vec![ConfigPatch::Shell {
                argv: s.shell.clone(),
            }],
            format!("SHELL {}", rules::go_list(&s.shell)),
        ),
        Instruction::StopSignal(s) => {
            rules::check_signal(&s.signal)
                .map_err(|source| at(step, ErrorKind::StopSignal { source }))?;
            let signal = s.signal.clone();
            let text = format!("STOPSIGNAL {}", s.signal);
            (vec![ConfigPatch::StopSignal { signal }], text)
        }
        Instruction::Healthcheck(h) => {
            let patch = healthcheck_patch(&h.test);
            (vec![patch], rules::healthcheck_history(&h.test))
        }
        Instruction::Onbuild(o) => (
            vec![ConfigPatch::OnBuild {
                expression: o.expression.clone(),
            }],
            format!("ONBUILD {}", o.expression),
        ),
        Instruction::Maintainer(m) => (
            vec![ConfigPatch::Author {
                name: m.name.clone(),
            }],
            format!("MAINTAINER {}", m.name),
        ),
    }))
}

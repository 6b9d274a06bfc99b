//! The planner: BuildKit's `dockerfile2llb` dispatch, run once per target
//! platform, with identical steps merged across platforms.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use kbuild_platform::Platform;
use kbuild_shell::{Env, Lexer};

use super::display::display;
use super::error::{Error, ErrorKind};
use super::expand::expand_instruction;
use super::load::{load, parse_trigger, Loaded};
use super::model::{
    BuildPlan, Source, StageBase, StageId, StageInstance, Step, StepId, Target, Warning,
    WarningKind,
};
use super::options::{ImageConfigSource, PlanOptions};
use super::paths::resolve_workdir;
use super::scope::{default_path, default_shell, Globals, StageState, BUILTIN_ARGS, NON_ENV_ARGS};
use crate::instructions::{Arg, ArgDef, Instruction, Mount};

/// Plans `text` (a Dockerfile) for every platform of `opts`: see the
/// [module documentation](super) for the rules.
pub fn plan(
    text: &str,
    opts: &PlanOptions,
    images: &dyn ImageConfigSource,
) -> Result<BuildPlan, Error> {
    let file = load(text)?;
    if file.stages.is_empty() {
        return Err(Error::new(ErrorKind::NoStages));
    }
    if opts.platforms.is_empty() {
        return Err(Error::new(ErrorKind::NoPlatforms));
    }
    Planner::new(&file, opts, images).run()
}

/// Where a `--from` (or `from=`) points, decided once for all platforms.
#[derive(Debug, Clone)]
enum DepKind {
    Stage(usize),
    Image(String),
}

#[derive(Debug, Clone)]
struct Dep {
    kind: DepKind,
    /// The `--from` / `from=` text as written.
    from: String,
    /// Which mount of a RUN it belongs to (`None` for COPY --from).
    mount: Option<usize>,
}

/// What a FROM line resolved to for one target platform.
#[derive(Debug, Clone, PartialEq)]
enum BaseRef {
    Scratch,
    Image(String),
    Stage(usize),
}

#[derive(Debug, Clone)]
struct Resolved {
    base: BaseRef,
    platform: Option<Platform>,
}

/// A stage that has been dispatched for the current target.
struct Done {
    instance: StageId,
    platform: Platform,
    state: StageState,
    last_step: Option<StepId>,
}

/// One stage being dispatched.
struct Run {
    index: usize,
    platform: Platform,
    base: StageBase,
    state: StageState,
    prev: Option<StepId>,
    steps: Vec<StepId>,
}

struct Planner<'a> {
    file: &'a Loaded,
    opts: &'a PlanOptions,
    images: &'a dyn ImageConfigSource,
    lexer: Lexer,
    /// Dependencies of every instruction: `deps[stage][instruction]`.
    deps: Vec<Vec<Vec<Dep>>>,
    steps: Vec<Step>,
    step_bases: Vec<StageBase>,
    step_index: HashMap<u64, Vec<StepId>>,
    stages: Vec<StageInstance>,
    stage_index: HashMap<u64, Vec<StageId>>,
    targets: Vec<Target>,
    warnings: Vec<Warning>,
    warning_set: HashSet<Warning>,
    /// Names declared by an ARG of a dispatched stage or the global scope.
    consumed: HashSet<String>,
}

impl<'a> Planner<'a> {
    fn new(file: &'a Loaded, opts: &'a PlanOptions, images: &'a dyn ImageConfigSource) -> Self {
        Planner {
            file,
            opts,
            images,
            lexer: Lexer::new(file.escape),
            deps: Vec::new(),
            steps: Vec::new(),
            step_bases: Vec::new(),
            step_index: HashMap::new(),
            stages: Vec::new(),
            stage_index: HashMap::new(),
            targets: Vec::new(),
            warnings: Vec::new(),
            warning_set: HashSet::new(),
            consumed: HashSet::new(),
        }
    }

    fn run(mut self) -> Result<BuildPlan, Error> {
        self.check_stage_names()?;
        let target = self.find_target()?;
        let target_stage = self.file.stages[target]
            .from
            .name
            .clone()
            .unwrap_or_else(|| "default".to_string());

        // FROM lines are expanded for every stage, reachable or not, as
        // BuildKit does: their errors and warnings do not depend on --target.
        let mut per_platform = Vec::with_capacity(self.opts.platforms.len());
        for platform in &self.opts.platforms {
            let globals = self.globals(platform, &target_stage)?;
            let resolved = self.resolve_froms(&globals)?;
            per_platform.push((globals, resolved));
        }

        self.deps = self.collect_deps()?;
        self.check_cycles()?;

        for (platform, (globals, resolved)) in self.opts.platforms.iter().zip(&per_platform) {
            self.plan_target(platform, globals, resolved, target)?;
        }

        for arg in &self.file.meta {
            for def in &arg.args {
                self.consumed.insert(def.name.clone());
            }
        }
        let unused: Vec<String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.consumed.contains(*k) && !BUILTIN_ARGS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unused {
            self.warn(Warning {
                kind: WarningKind::UnusedBuildArg,
                line: None,
                message: format!(
                    "build-arg {key:?} was not consumed: no ARG of the stages built declares it"
                ),
            });
        }

        Ok(BuildPlan {
            steps: self.steps,
            stages: self.stages,
            targets: self.targets,
            labels: self.opts.labels.clone(),
            warnings: self.warnings,
        })
    }

    fn warn(&mut self, w: Warning) {
        if self.warning_set.insert(w.clone()) {
            self.warnings.push(w);
        }
    }

    /// The name BuildKit uses for a stage in messages.
    fn stage_name(&self, i: usize) -> String {
        match &self.file.stages[i].from.name {
            Some(n) => n.clone(),
            None => format!("stage-{i}"),
        }
    }

    fn named(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.file
            .stages
            .iter()
            .position(|s| s.from.name.as_deref() == Some(lower.as_str()))
    }

    fn check_stage_names(&self) -> Result<(), Error> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for s in &self.file.stages {
            if let Some(name) = s.from.name.as_deref() {
                if let Some(&first) = seen.get(name) {
                    return Err(Error::at(
                        ErrorKind::DuplicateStageName {
                            name: name.to_string(),
                            first_line: first,
                        },
                        s.from.range.start_line,
                        &s.from.original,
                    ));
                }
                seen.insert(name, s.from.range.start_line);
            }
        }
        Ok(())
    }

    fn find_target(&self) -> Result<usize, Error> {
        match &self.opts.target {
            None => Ok(self.file.stages.len() - 1),
            Some(t) => self.named(t).ok_or_else(|| {
                Error::new(ErrorKind::UnknownTarget {
                    target: t.clone(),
                    stages: self
                        .file
                        .stages
                        .iter()
                        .filter_map(|s| s.from.name.clone())
                        .collect(),
                })
            }),
        }
    }

    /// The global scope for one target platform: automatic args, then the
    /// ARGs before the first FROM (a `--build-arg` wins over the default).
    fn globals(&self, target: &Platform, target_stage: &str) -> Result<Globals, Error> {
        let mut g = Globals::automatic(
            &self.opts.build_platform,
            target,
            target_stage,
            &self.opts.build_args,
        );
        for arg in &self.file.meta {
            for def in &arg.args {
                let value = match (self.opts.build_args.get(&def.name), &def.default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(self.lexer.process_word(d, &g).map_err(|e| {
                        Error::at(
                            ErrorKind::Expansion(e.to_string()),
                            arg.range.start_line,
                            &arg.original,
                        )
                    })?),
                    (None, None) => None,
                };
                g.set(&def.name, value);
            }
        }
        Ok(g)
    }

    fn resolve_froms(&mut self, globals: &Globals) -> Result<Vec<Resolved>, Error> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(self.file.stages.len());
        for (i, stage) in self.file.stages.iter().enumerate() {
            let from = &stage.from;
            let at = |kind| Error::at(kind, from.range.start_line, &from.original);
            let (name, matches) = self
                .lexer
                .process_word_with_matches(&from.image, globals)
                .map_err(|e| at(ErrorKind::Expansion(e.to_string())))?;
            let mut unmatched: Vec<String> = matches.unmatched.into_iter().collect();
            if name.is_empty() {
                return Err(at(ErrorKind::BlankBaseName(from.image.clone())));
            }
            let mut platform = None;
            if let Some(expr) = &from.platform {
                let (value, m) = self
                    .lexer
                    .process_word_with_matches(expr, globals)
                    .map_err(|e| at(ErrorKind::Expansion(e.to_string())))?;
                unmatched.extend(m.unmatched);
                if value.is_empty() {
                    return Err(at(ErrorKind::EmptyPlatform(expr.clone())));
                }
                let p = Platform::parse(&value).map_err(|e| {
                    at(ErrorKind::InvalidPlatform {
                        value: value.clone(),
                        reason: e.to_string(),
                    })
                })?;
                platform = Some(p);
            }
            for arg in unmatched {
                let hint = suggest(&arg, globals.keys())
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                self.warn(Warning {
                    kind: WarningKind::UndefinedArgInFrom,
                    line: Some(from.range.start_line),
                    message: format!("FROM argument '{arg}' is not declared{hint}"),
                });
            }
            // Only stages defined earlier can be a base, and the name must
            // match exactly (stage names are lowercase; BuildKit does not fold
            // the FROM word).
            let base = if let Some(&j) = by_name.get(&name) {
                BaseRef::Stage(j)
            } else if name == "scratch" {
                BaseRef::Scratch
            } else {
                BaseRef::Image(name)
            };
            if let Some(n) = &from.name {
                by_name.insert(n.clone(), i);
            }
            out.push(Resolved { base, platform });
        }
        Ok(out)
    }

    /// `COPY --from` and `RUN --mount from=` of every instruction (BuildKit's
    /// `toCommand`): a number is a stage index, a name a stage anywhere in the
    /// file, anything else an image.
    fn collect_deps(&self) -> Result<Vec<Vec<Vec<Dep>>>, Error> {
        self.file
            .stages
            .iter()
            .map(|s| s.commands.iter().map(|ins| self.deps_of(ins)).collect())
            .collect()
    }

    fn deps_of(&self, ins: &Instruction) -> Result<Vec<Dep>, Error> {
        let at = |kind| Error::at(kind, ins.range().start_line, ins.original());
        match ins {
            Instruction::Copy(c) => {
                let Some(from) = &c.from else {
                    return Ok(Vec::new());
                };
                let kind = if let Ok(index) = from.parse::<i64>() {
                    if index < 0 || index as usize >= self.file.stages.len() {
                        return Err(at(ErrorKind::InvalidStageIndex {
                            index: from.clone(),
                            count: self.file.stages.len(),
                        }));
                    }
                    DepKind::Stage(index as usize)
                } else if let Some(i) = self.named(from) {
                    DepKind::Stage(i)
                } else {
                    DepKind::Image(from.clone())
                };
                Ok(vec![Dep {
                    kind,
                    from: from.clone(),
                    mount: None,
                }])
            }
            Instruction::Run(r) => {
                let mut deps = Vec::new();
                for (i, raw) in r.mounts.iter().enumerate() {
                    let parsed =
                        Mount::parse(raw, |w| Ok::<_, std::convert::Infallible>(w.to_string()));
                    let mount = match parsed {
                        Ok(Ok(m)) => m,
                        Ok(Err(e)) => return Err(at(ErrorKind::Invalid(e.to_string()))),
                        Err(never) => match never {},
                    };
                    if let Some(from) = mount_from(&mount) {
                        // RUN --mount looks stages up by name only.
                        let kind = match self.named(from) {
                            Some(s) => DepKind::Stage(s),
                            None => DepKind::Image(from.to_string()),
                        };
                        deps.push(Dep {
                            kind,
                            from: from.to_string(),
                            mount: Some(i),
                        });
                    }
                }
                Ok(deps)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// BuildKit's `validateCircularDependency` over `--from` edges.
    fn check_cycles(&self) -> Result<(), Error> {
        let n = self.file.stages.len();
        let edges: Vec<Vec<(usize, usize)>> = (0..n)
            .map(|s| {
                let mut e = Vec::new();
                for (ii, deps) in self.deps[s].iter().enumerate() {
                    for d in deps {
                        if let DepKind::Stage(t) = d.kind {
                            e.push((t, ii));
                        }
                    }
                }
                e
            })
            .collect();
        let mut visited = vec![false; n];
        let mut on_path = vec![false; n];
        fn visit(
            s: usize,
            edges: &[Vec<(usize, usize)>],
            visited: &mut [bool],
            on_path: &mut [bool],
            path: &mut Vec<(usize, usize)>,
        ) -> bool {
            if visited[s] {
                return false;
            }
            visited[s] = true;
            on_path[s] = true;
            for &(t, ins) in &edges[s] {
                path.push((s, ins));
                if on_path[t] || visit(t, edges, visited, on_path, path) {
                    return true;
                }
                path.pop();
            }
            on_path[s] = false;
            false
        }
        for s in 0..n {
            let mut path = Vec::new();
            if visit(s, &edges, &mut visited, &mut on_path, &mut path) {
                let kind = ErrorKind::CircularDependency {
                    stage: self.stage_name(s),
                };
                return Err(match path.first() {
                    Some(&(stage, ins)) => {
                        let ins = &self.file.stages[stage].commands[ins];
                        Error::at(kind, ins.range().start_line, ins.original())
                    }
                    None => Error::new(kind),
                });
            }
        }
        Ok(())
    }

    /// Stages the target needs: itself, its bases and `--from` stages.
    fn reachable(&self, resolved: &[Resolved], target: usize) -> Vec<bool> {
        let mut seen = vec![false; resolved.len()];
        let mut todo = vec![target];
        while let Some(s) = todo.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            if let BaseRef::Stage(b) = resolved[s].base {
                todo.push(b);
            }
            for deps in &self.deps[s] {
                for d in deps {
                    if let DepKind::Stage(t) = d.kind {
                        todo.push(t);
                    }
                }
            }
        }
        seen
    }

    fn plan_target(
        &mut self,
        target_platform: &Platform,
        globals: &Globals,
        resolved: &[Resolved],
        target: usize,
    ) -> Result<(), Error> {
        let reachable = self.reachable(resolved, target);
        let mut done: Vec<Option<Done>> = (0..resolved.len()).map(|_| None).collect();
        let mut order = Vec::new();
        for i in 0..resolved.len() {
            if !reachable[i] {
                continue;
            }
            let stage = &self.file.stages[i];
            let from = &stage.from;
            let at = |kind| Error::at(kind, from.range.start_line, &from.original);
            let (base, platform, mut state, prev) = match &resolved[i].base {
                BaseRef::Stage(b) => {
                    // The base is earlier in the file, so already done; a
                    // stage based on another inherits its platform, whatever
                    // its own --platform says (BuildKit's init()).
                    let Some(parent) = done[*b].as_ref() else {
                        return Err(at(ErrorKind::Invalid(format!(
                            "base stage {:?} was not built",
                            self.stage_name(*b)
                        ))));
                    };
                    (
                        StageBase::Stage(parent.instance),
                        parent.platform.clone(),
                        parent.state.clone(),
                        parent.last_step,
                    )
                }
                BaseRef::Scratch => {
                    let platform = resolved[i]
                        .platform
                        .clone()
                        .unwrap_or_else(|| target_platform.clone());
                    (StageBase::Scratch, platform, StageState::new(), None)
                }
                BaseRef::Image(reference) => {
                    let platform = resolved[i]
                        .platform
                        .clone()
                        .unwrap_or_else(|| target_platform.clone());
                    let config = self
                        .images
                        .image_config(reference, &platform)
                        .map_err(|reason| {
                            at(ErrorKind::ImageConfig {
                                reference: reference.clone(),
                                platform: platform.to_string(),
                                reason,
                            })
                        })?
                        .unwrap_or_default();
                    let mut st = StageState::new();
                    for entry in &config.env {
                        let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                        st.set_env(k, v.to_string());
                    }
                    if !config.working_dir.is_empty() {
                        st.workdir = resolve_workdir("/", &config.working_dir, &platform.os);
                    }
                    st.user = config.user;
                    st.shell = config.shell;
                    st.onbuild = config.on_build;
                    (
                        StageBase::Image {
                            reference: reference.clone(),
                            platform: platform.clone(),
                        },
                        platform,
                        st,
                        None,
                    )
                }
            };
            if !state.has_image_env("PATH") {
                state.set_env("PATH", default_path(&platform.os).to_string());
            }
            let triggers = std::mem::take(&mut state.onbuild);
            let mut run = Run {
                index: i,
                platform,
                base,
                state,
                prev,
                steps: Vec::new(),
            };
            let lines = (from.range.start_line, from.range.end_line);
            for trigger in &triggers {
                let ins = parse_trigger(trigger).map_err(|reason| {
                    at(ErrorKind::OnbuildTrigger {
                        trigger: trigger.clone(),
                        reason,
                    })
                })?;
                let deps = self.deps_of(&ins).map_err(|e| {
                    at(ErrorKind::OnbuildTrigger {
                        trigger: trigger.clone(),
                        reason: e.kind().to_string(),
                    })
                })?;
                self.dispatch(
                    &ins,
                    &deps,
                    true,
                    lines,
                    &mut run,
                    target_platform,
                    globals,
                    &done,
                )
                .map_err(|e| {
                    at(ErrorKind::OnbuildTrigger {
                        trigger: trigger.clone(),
                        reason: e.kind().to_string(),
                    })
                })?;
            }
            for (k, ins) in stage.commands.iter().enumerate() {
                let r = ins.range();
                let deps = std::mem::take(&mut self.deps[i][k]);
                let result = self.dispatch(
                    ins,
                    &deps,
                    false,
                    (r.start_line, r.end_line),
                    &mut run,
                    target_platform,
                    globals,
                    &done,
                );
                self.deps[i][k] = deps;
                result?;
            }
            let instance = self.add_stage(&run, target_platform);
            order.push(instance);
            done[i] = Some(Done {
                instance,
                platform: run.platform,
                state: run.state,
                last_step: run.prev,
            });
        }
        let final_stage = match done[target].as_ref() {
            Some(d) => d.instance,
            None => {
                return Err(Error::new(ErrorKind::Invalid(format!(
                    "target stage {:?} was not built",
                    self.stage_name(target)
                ))))
            }
        };
        self.targets.push(Target {
            platform: target_platform.clone(),
            stages: order,
            final_stage,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        ins: &Instruction,
        deps: &[Dep],
        onbuild: bool,
        lines: (usize, usize),
        run: &mut Run,
        target_platform: &Platform,
        globals: &Globals,
        done: &[Option<Done>],
    ) -> Result<(), Error> {
        let at = |kind| Error::at(kind, ins.range().start_line, ins.original());
        let expansion = |e: kbuild_shell::Error| at(ErrorKind::Expansion(e.to_string()));

        // Expand with the environment before the instruction.
        let mut new_args: Vec<(String, String)> = Vec::new();
        let expanded = match ins {
            Instruction::Arg(a) => {
                let mut defs = Vec::with_capacity(a.args.len());
                for def in &a.args {
                    self.consumed.insert(def.name.clone());
                    let value = if let Some(v) = self.opts.build_args.get(&def.name) {
                        Some(v.clone())
                    } else if let Some(d) = &def.default {
                        let env = Overlay {
                            first: &new_args,
                            rest: &run.state,
                        };
                        Some(self.lexer.process_word(d, &env).map_err(expansion)?)
                    } else {
                        globals.inherited(&def.name)
                    };
                    if let Some(v) = &value {
                        if !NON_ENV_ARGS.contains(&def.name.as_str()) {
                            new_args.push((def.name.clone(), v.clone()));
                        }
                    }
                    defs.push(ArgDef {
                        name: def.name.clone(),
                        default: value,
                    });
                }
                Instruction::Arg(Arg {
                    args: defs,
                    ..a.clone()
                })
            }
            _ => expand_instruction(ins, &self.lexer, &run.state).map_err(expansion)?,
        };
        let expanded = match expanded {
            Instruction::Workdir(mut w) => {
                w.path = resolve_workdir(&run.state.workdir, &w.path, &run.platform.os);
                Instruction::Workdir(w)
            }
            Instruction::Volume(v) => {
                if v.volumes.iter().any(|p| p.is_empty()) {
                    return Err(at(ErrorKind::Invalid(
                        "VOLUME specified can not be an empty string".to_string(),
                    )));
                }
                Instruction::Volume(v)
            }
            other => other,
        };

        // RUN mounts, typed and expanded.
        let mut mounts = Vec::new();
        if let Instruction::Run(r) = ins {
            for raw in &r.mounts {
                let m = Mount::parse(raw, |w| self.lexer.process_word(w, &run.state))
                    .map_err(expansion)?
                    .map_err(|e| at(ErrorKind::Invalid(e.to_string())))?;
                mounts.push(m);
            }
        }

        // What the step reads.
        let mut sources = Vec::with_capacity(deps.len());
        for dep in deps {
            match &dep.kind {
                DepKind::Stage(s) => match done[*s].as_ref() {
                    Some(d) => sources.push(Source::Stage(d.instance)),
                    None => {
                        let kind = match dep.mount {
                            None => ErrorKind::CopyFromLaterStage {
                                from: dep.from.clone(),
                                stage: if self.file.stages.len() == 1 {
                                    String::new()
                                } else {
                                    self.stage_name(run.index)
                                },
                            },
                            Some(m) => ErrorKind::MountFromLaterStage {
                                from: dep.from.clone(),
                                target: mounts.get(m).map(mount_target).unwrap_or_default(),
                            },
                        };
                        return Err(at(kind));
                    }
                },
                DepKind::Image(reference) if reference == "scratch" => {
                    sources.push(Source::Scratch)
                }
                DepKind::Image(reference) => sources.push(Source::Image {
                    reference: reference.clone(),
                    platform: target_platform.clone(),
                }),
            }
        }

        let display = display(ins, &expanded, &self.lexer, &run.state);
        let id = self.add_step(
            run,
            expanded.clone(),
            display,
            onbuild,
            lines,
            sources,
            mounts,
            target_platform,
        );
        run.prev = Some(id);
        run.steps.push(id);

        // Apply the instruction to the stage state.
        let st = &mut run.state;
        match &expanded {
            Instruction::Arg(_) => {
                for (k, v) in new_args {
                    st.set_var(&k, v, true);
                }
            }
            Instruction::Env(e) => {
                for kv in &e.vars {
                    st.set_env(&kv.key, kv.value.clone());
                }
            }
            Instruction::Workdir(w) => st.workdir = w.path.clone(),
            Instruction::User(u) => st.user = u.user.clone(),
            Instruction::Shell(s) => st.shell = s.shell.clone(),
            Instruction::Onbuild(o) => st.onbuild.push(o.expression.clone()),
            _ => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_step(
        &mut self,
        run: &Run,
        instruction: Instruction,
        display: String,
        onbuild: bool,
        lines: (usize, usize),
        sources: Vec<Source>,
        mounts: Vec<Mount>,
        target_platform: &Platform,
    ) -> StepId {
        let st = &run.state;
        let mut h = DefaultHasher::new();
        run.index.hash(&mut h);
        run.prev.hash(&mut h);
        run.base.hash(&mut h);
        run.platform.hash(&mut h);
        display.hash(&mut h);
        lines.hash(&mut h);
        sources.hash(&mut h);
        st.hash_args(&mut h);
        let key = h.finish();
        let shell_default;
        let shell: &[String] = if st.shell.is_empty() {
            shell_default = default_shell(&run.platform.os);
            &shell_default
        } else {
            &st.shell
        };
        if let Some(candidates) = self.step_index.get(&key) {
            for &id in candidates {
                let s = &self.steps[id.0];
                if s.parent == run.prev
                    && s.stage == run.index
                    && self.step_bases[id.0] == run.base
                    && s.platform == run.platform
                    && s.onbuild == onbuild
                    && s.lines == lines
                    && s.instruction == instruction
                    && s.sources == sources
                    && s.mounts == mounts
                    && s.workdir == st.workdir
                    && s.user == st.user
                    && s.shell == shell
                    && s.env == st.image_env
                    && st.args_eq(&s.args)
                {
                    let s = &mut self.steps[id.0];
                    if !s.platforms.contains(target_platform) {
                        s.platforms.push(target_platform.clone());
                        s.shared = s.platforms.len() > 1;
                    }
                    return id;
                }
            }
        }
        let id = StepId(self.steps.len());
        self.steps.push(Step {
            id,
            parent: run.prev,
            stage: run.index,
            lines,
            instruction,
            display,
            onbuild,
            platform: run.platform.clone(),
            args: st.args(),
            env: st.image_env.clone(),
            workdir: st.workdir.clone(),
            user: st.user.clone(),
            shell: shell.to_vec(),
            sources,
            mounts,
            platforms: vec![target_platform.clone()],
            shared: false,
        });
        self.step_bases.push(run.base.clone());
        self.step_index.entry(key).or_default().push(id);
        id
    }

    fn add_stage(&mut self, run: &Run, target_platform: &Platform) -> StageId {
        let mut h = DefaultHasher::new();
        run.index.hash(&mut h);
        run.platform.hash(&mut h);
        run.base.hash(&mut h);
        run.steps.hash(&mut h);
        let key = h.finish();
        if let Some(candidates) = self.stage_index.get(&key) {
            for &id in candidates {
                let s = &self.stages[id.0];
                if s.index == run.index
                    && s.platform == run.platform
                    && s.base == run.base
                    && s.steps == run.steps
                {
                    let s = &mut self.stages[id.0];
                    if !s.target_platforms.contains(target_platform) {
                        s.target_platforms.push(target_platform.clone());
                    }
                    return id;
                }
            }
        }
        let id = StageId(self.stages.len());
        self.stages.push(StageInstance {
            id,
            name: self.file.stages[run.index].from.name.clone(),
            index: run.index,
            platform: run.platform.clone(),
            base: run.base.clone(),
            steps: run.steps.clone(),
            target_platforms: vec![target_platform.clone()],
        });
        self.stage_index.entry(key).or_default().push(id);
        id
    }
}

/// ARG values declared earlier in the same ARG instruction, then the stage.
struct Overlay<'a> {
    first: &'a [(String, String)],
    rest: &'a StageState,
}

impl Env for Overlay<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.first
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.rest.get(name))
    }
}

fn mount_from(m: &Mount) -> Option<&str> {
    match m {
        Mount::Bind(b) => b.from.as_deref(),
        Mount::Cache(c) => c.from.as_deref(),
        _ => None,
    }
}

fn mount_target(m: &Mount) -> String {
    match m {
        Mount::Bind(b) => b.target.clone(),
        Mount::Cache(c) => c.target.clone(),
        Mount::Tmpfs(t) => t.target.clone(),
        Mount::Secret(s) => s.target.clone().unwrap_or_default(),
        Mount::Ssh(s) => s.target.clone().unwrap_or_default(),
    }
}

/// A declared name close to `name` (same letters in another case, or at most
/// two edits away), for "did you mean" hints.
fn suggest<'k>(name: &str, keys: &'k [String]) -> Option<&'k str> {
    let mut best: Option<(usize, &str)> = None;
    for k in keys {
        let d = if k.eq_ignore_ascii_case(name) {
            0
        } else {
            edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase())
        };
        if d <= 2 && best.map_or(true, |(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = vec!["VERSION".to_string(), "BUILDPLATFORM".to_string()];
        assert_eq!(suggest("VERSON", &keys), Some("VERSION"));
        assert_eq!(suggest("version", &keys), Some("VERSION"));
        assert_eq!(suggest("OTHER", &keys), None);
    }
}

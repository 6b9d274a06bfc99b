//! The planner: BuildKit's `dockerfile2llb` dispatch, run once per target
//! platform, with identical steps merged across platforms.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use kbuild_platform::Platform;
use kbuild_shell::{Env, Lexer};

use super::display::display;
use super::error::{Error, ErrorKind, TriggerError};
use super::expand::expand_instruction;
use super::load::{load, parse_trigger, Loaded};
use super::model::{
    BuildPlan, Source, StageBase, StageId, StageInstance, Step, StepId, Target, Warning,
    WarningKind,
};
use super::options::{ImageConfigSource, NamedContext, PlanOptions};
use super::paths::resolve_workdir;
use super::scope::{
    default_path, default_shell, FastHasher, FastMap, Globals, Memo, StageState, VarsCache,
    BUILTIN_ARGS, NON_ENV_ARGS,
};
use super::MAX_STAGE_ENV;
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
    /// A `--build-context NAME=DIR`.
    Context(String),
}

#[derive(Debug, Clone)]
struct Dep {
    kind: DepKind,
    /// The `--from` / `from=` text as written.
    from: String,
    /// Which mount of a RUN it belongs to (`None` for COPY --from).
    mount: Option<usize>,
}

/// What is known about an instruction before any platform is planned.
struct Prep {
    ins: Arc<Instruction>,
    deps: Vec<Dep>,
    /// Expansion cannot change it: no `$`, quote or escape character.
    literal: bool,
    /// What the build environment cannot change, computed once.
    fixed: Option<Derived>,
    /// What it does change, per distinct set of values it reads.
    memo: Memo<Derived>,
    /// For ARG: the instruction and text for each set of values seen.
    args_seen: std::cell::RefCell<Vec<(Vec<ArgDef>, Derived)>>,
    /// For ARG: the expanded default of its first definition.
    first_default: Memo<String>,
}

/// What an instruction becomes in a build environment.
#[derive(Clone)]
struct Derived {
    /// The expanded instruction (WORKDIR not yet resolved).
    ins: Arc<Instruction>,
    /// Its progress text.
    display: Arc<str>,
    /// Its RUN mounts, typed and expanded.
    mounts: Arc<Vec<Mount>>,
}

/// An environment where nothing is set.
struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _name: &str) -> Option<String> {
        None
    }
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
    platform: Arc<Platform>,
    state: StageState,
    last_step: Option<StepId>,
}

/// Where a stage starts: its base, platform, state and last step.
type StageStart = (StageBase, Arc<Platform>, StageState, Option<StepId>);

/// One stage being dispatched.
struct Run {
    index: usize,
    platform: Arc<Platform>,
    base: StageBase,
    /// `base`, interned: steps compare bases by this id.
    base_id: u32,
    state: StageState,
    prev: Option<StepId>,
    steps: Vec<StepId>,
}

struct Planner<'a> {
    file: &'a Loaded,
    opts: &'a PlanOptions,
    images: &'a dyn ImageConfigSource,
    lexer: Lexer,
    /// Every stage's instructions, prepared: `prep[stage][instruction]`.
    prep: Rc<Vec<Vec<Prep>>>,
    shell_linux: Arc<Vec<String>>,
    shell_windows: Arc<Vec<String>>,
    no_mounts: Arc<Vec<Mount>>,
    /// One shared copy of every platform, so steps compare them by pointer.
    platforms: FastMap<Platform, Arc<Platform>>,
    /// The one-platform list of every target platform (by its shared
    /// copy's address), shared by the steps only that platform uses.
    single: FastMap<usize, Arc<[Arc<Platform>]>>,
    /// The last list `single_platform` returned (steps come in runs of
    /// one target platform).
    last_single: Option<Arc<[Arc<Platform>]>>,
    steps: Vec<Step>,
    /// The interned base of every step's stage.
    step_bases: Vec<u32>,
    bases: FastMap<StageBase, u32>,
    /// Step lookup: key hash to the last step with it, then a chain.
    step_index: FastMap<u64, u32>,
    step_next: Vec<u32>,
    stages: Vec<StageInstance>,
    stage_index: FastMap<u64, Vec<StageId>>,
    targets: Vec<Target>,
    warnings: Vec<Warning>,
    warning_set: HashSet<Warning>,
    /// Names declared by an ARG of a dispatched stage or the global scope.
    consumed: HashSet<String, std::hash::BuildHasherDefault<FastHasher>>,
    /// Image environments ENV made, shared between stages.
    env_cache: VarsCache,
    /// ARG lists of steps, shared between stages.
    args_cache: VarsCache,
}

impl<'a> Planner<'a> {
    fn new(file: &'a Loaded, opts: &'a PlanOptions, images: &'a dyn ImageConfigSource) -> Self {
        Planner {
            file,
            opts,
            images,
            lexer: Lexer::new(file.escape),
            prep: Rc::new(Vec::new()),
            shell_linux: default_shell("linux"),
            shell_windows: default_shell("windows"),
            no_mounts: Arc::new(Vec::new()),
            platforms: FastMap::default(),
            single: FastMap::default(),
            last_single: None,
            steps: Vec::new(),
            step_bases: Vec::new(),
            bases: FastMap::default(),
            step_index: FastMap::default(),
            step_next: Vec::new(),
            stages: Vec::new(),
            stage_index: FastMap::default(),
            targets: Vec::new(),
            warnings: Vec::new(),
            warning_set: HashSet::new(),
            consumed: HashSet::default(),
            env_cache: VarsCache::default(),
            args_cache: VarsCache::default(),
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

        self.prep = Rc::new(self.prepare_all()?);
        self.check_cycles()?;

        let commands: usize = self.file.commands.iter().map(Vec::len).sum();
        let most = commands * self.opts.platforms.len();
        self.steps.reserve(most);
        self.step_bases.reserve(most);
        self.step_next.reserve(most);
        self.step_index.reserve(most);
        for (platform, (globals, resolved)) in self.opts.platforms.iter().zip(&per_platform) {
            let platform = self.intern(platform);
            self.plan_target(&platform, globals, resolved, target)?;
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

    /// The shared one-element list of `target_platform` (an interned copy).
    fn single_platform(&mut self, target_platform: &Arc<Platform>) -> Arc<[Arc<Platform>]> {
        if let Some(last) = &self.last_single {
            if last
                .first()
                .is_some_and(|p| Arc::ptr_eq(p, target_platform))
            {
                return Arc::clone(last);
            }
        }
        let list = self
            .single
            .entry(Arc::as_ptr(target_platform) as usize)
            .or_insert_with(|| Arc::from([Arc::clone(target_platform)]));
        let list = Arc::clone(list);
        self.last_single = Some(Arc::clone(&list));
        list
    }

    fn intern(&mut self, p: &Platform) -> Arc<Platform> {
        if let Some(shared) = self.platforms.get(p) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(p.clone());
        self.platforms.insert(p.clone(), Arc::clone(&shared));
        shared
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

    /// What `--from=NAME` reads when a `--build-context NAME=...` names it.
    fn named_context(&self, name: &str) -> Option<DepKind> {
        self.opts.named_contexts.get(name).map(|c| match c {
            NamedContext::Dir => DepKind::Context(name.to_string()),
            NamedContext::Image(reference) => DepKind::Image(reference.clone()),
        })
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
        // The global ARGs are bounded like a stage's environment; a name
        // declared twice is counted twice, which only errs on the safe side.
        let mut size = 0usize;
        for arg in &self.file.meta {
            for def in &arg.args {
                let at = |kind| Error::at(kind, arg.range.start_line, &arg.original);
                let value = match (self.opts.build_args.get(&def.name), &def.default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(
                        self.lexer
                            .process_word(d, &g)
                            .map_err(|e| at(ErrorKind::Expansion(e)))?,
                    ),
                    (None, None) => None,
                };
                size += def.name.len() + value.as_ref().map_or(0, String::len);
                if size > MAX_STAGE_ENV {
                    return Err(at(ErrorKind::EnvironmentTooLarge {
                        scope: "the global ARGs (before the first FROM)".to_string(),
                        limit: MAX_STAGE_ENV,
                    }));
                }
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
                .map_err(|e| at(ErrorKind::Expansion(e)))?;
            let mut unmatched: Vec<String> = matches.unmatched.into_iter().collect();
            if name.is_empty() {
                return Err(at(ErrorKind::BlankBaseName(from.image.clone())));
            }
            let mut platform = None;
            if let Some(expr) = &from.platform {
                let (value, m) = self
                    .lexer
                    .process_word_with_matches(expr, globals)
                    .map_err(|e| at(ErrorKind::Expansion(e)))?;
                unmatched.extend(m.unmatched);
                if value.is_empty() {
                    return Err(at(ErrorKind::EmptyPlatform(expr.clone())));
                }
                let p = Platform::parse(&value).map_err(|e| {
                    at(ErrorKind::InvalidPlatform {
                        value: value.clone(),
                        source: e,
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
            // A named context wins over a stage or image of that name.
            let base = if let Some(named) = self.opts.named_contexts.get(&name) {
                match named {
                    NamedContext::Image(reference) => BaseRef::Image(reference.clone()),
                    NamedContext::Dir => return Err(at(ErrorKind::DirectoryBase(name))),
                }
            } else if let Some(&j) = by_name.get(&name) {
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
    fn prepare_all(&self) -> Result<Vec<Vec<Prep>>, Error> {
        self.file
            .commands
            .iter()
            .map(|s| s.iter().map(|ins| self.prepare(ins)).collect())
            .collect()
    }

    fn prepare(&self, shared: &Arc<Instruction>) -> Result<Prep, Error> {
        let ins: &Instruction = shared;
        let deps = self.deps_of(ins)?;
        let escape = self.file.escape;
        let special = |t: &str| t.contains(['$', '\'', '"']) || t.contains(escape);
        let original = ins.original();
        let never_expanded = matches!(
            ins,
            Instruction::Run(_)
                | Instruction::Cmd(_)
                | Instruction::Entrypoint(_)
                | Instruction::Healthcheck(_)
                | Instruction::Shell(_)
                | Instruction::Onbuild(_)
                | Instruction::Maintainer(_)
        );
        let literal = never_expanded
            || !special(original)
                && match ins {
                    Instruction::Copy(c) => {
                        c.contents.iter().all(|c| !c.expand || !special(&c.data))
                    }
                    Instruction::Add(a) => {
                        a.contents.iter().all(|c| !c.expand || !special(&c.data))
                    }
                    _ => true,
                };
        let env_free_display = match ins {
            Instruction::Arg(_) => false,
            Instruction::Run(r) => {
                !original.contains('$') && r.heredocs.iter().all(|h| !h.content.contains('$'))
            }
            Instruction::Copy(_) | Instruction::Add(_) | Instruction::Workdir(_) => {
                !original.contains('$')
            }
            _ => literal,
        };
        let env_free_mounts = match ins {
            Instruction::Run(r) => r.mounts.iter().all(|m| !special(m)),
            _ => true,
        };
        let ins = Arc::clone(shared);
        let fixed = if literal && env_free_display && env_free_mounts {
            Some(self.derive(&ins, true, &NoEnv)?)
        } else {
            None
        };
        Ok(Prep {
            ins,
            deps,
            literal,
            fixed,
            memo: Memo::default(),
            first_default: Memo::default(),
            args_seen: std::cell::RefCell::new(Vec::new()),
        })
    }

    /// Expands `ins` (unless `literal`), parses its mounts and renders its
    /// progress text in the build environment `env`.
    fn derive<E: Env + ?Sized>(
        &self,
        ins: &Arc<Instruction>,
        literal: bool,
        env: &E,
    ) -> Result<Derived, Error> {
        let at = |kind| Error::at(kind, ins.range().start_line, ins.original());
        let expansion = |e: kbuild_shell::Error| at(ErrorKind::Expansion(e));
        let expanded = if literal {
            Arc::clone(ins)
        } else {
            Arc::new(expand_instruction(ins, &self.lexer, env).map_err(expansion)?)
        };
        let mounts = match &**ins {
            Instruction::Run(r) if !r.mounts.is_empty() => {
                let mut mounts = Vec::with_capacity(r.mounts.len());
                for raw in &r.mounts {
                    let m = Mount::parse(raw, |w| self.lexer.process_word(w, env))
                        .map_err(expansion)?
                        .map_err(|e| at(ErrorKind::Mount(e)))?;
                    mounts.push(m);
                }
                Arc::new(mounts)
            }
            _ => Arc::clone(&self.no_mounts),
        };
        let display = Arc::from(display(ins, &expanded, &self.lexer, env));
        Ok(Derived {
            ins: expanded,
            display,
            mounts,
        })
    }

    fn deps_of(&self, ins: &Instruction) -> Result<Vec<Dep>, Error> {
        let at = |kind| Error::at(kind, ins.range().start_line, ins.original());
        match ins {
            Instruction::Copy(c) => {
                let Some(from) = &c.from else {
                    return Ok(Vec::new());
                };
                let kind = if let Some(named) = self.named_context(from) {
                    named
                } else if let Ok(index) = from.parse::<i64>() {
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
                        Ok(Err(e)) => return Err(at(ErrorKind::Mount(e))),
                        Err(never) => match never {},
                    };
                    if let Some(from) = mount_from(&mount) {
                        // RUN --mount looks stages up by name only.
                        let kind = match (self.named_context(from), self.named(from)) {
                            (Some(named), _) => named,
                            (None, Some(s)) => DepKind::Stage(s),
                            (None, None) => DepKind::Image(from.to_string()),
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
                for (ii, prep) in self.prep[s].iter().enumerate() {
                    for d in &prep.deps {
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
                        let ins = &self.file.commands[stage][ins];
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
            for prep in &self.prep[s] {
                for d in &prep.deps {
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
        target_platform: &Arc<Platform>,
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
            let stage = self.plan_stage(i, &resolved[i], target_platform, globals, &done)?;
            order.push(stage.instance);
            done[i] = Some(stage);
        }
        let final_stage = match done[target].as_ref() {
            Some(d) => d.instance,
            None => {
                return Err(Error::new(ErrorKind::StageNotBuilt {
                    role: "target",
                    stage: self.stage_name(target),
                }))
            }
        };
        self.targets.push(Target {
            platform: (**target_platform).clone(),
            stages: order,
            final_stage,
        });
        Ok(())
    }

    /// Plans stage `i` (its base `resolved`) for `target_platform`: the
    /// ONBUILD triggers of its base, then its own instructions.
    fn plan_stage(
        &mut self,
        i: usize,
        resolved: &Resolved,
        target_platform: &Arc<Platform>,
        globals: &Globals,
        done: &[Option<Done>],
    ) -> Result<Done, Error> {
        let from = &self.file.stages[i].from;
        let at = |kind| Error::at(kind, from.range.start_line, &from.original);
        let (base, platform, mut state, prev) = self
            .stage_base(resolved, target_platform, done)
            .map_err(at)?;
        if !state.has_image_env("PATH") {
            state.set_env_shared(
                "PATH",
                default_path(&platform.os).to_string(),
                &mut self.env_cache,
            );
        }
        if state.env_len() > MAX_STAGE_ENV {
            return Err(at(ErrorKind::EnvironmentTooLarge {
                scope: format!("stage {:?}", self.stage_name(i)),
                limit: MAX_STAGE_ENV,
            }));
        }
        let triggers = std::mem::take(&mut state.onbuild);
        let next_base = self.bases.len() as u32;
        let base_id = *self.bases.entry(base.clone()).or_insert(next_base);
        let mut run = Run {
            index: i,
            platform,
            base,
            base_id,
            state,
            prev,
            steps: Vec::with_capacity(triggers.len() + self.file.commands[i].len()),
        };
        let lines = (from.range.start_line, from.range.end_line);
        for trigger in &triggers {
            let trigger_error = |source: TriggerError| {
                at(ErrorKind::OnbuildTrigger {
                    trigger: trigger.clone(),
                    source: Box::new(source),
                })
            };
            let planned = |e: Error| trigger_error(TriggerError::Plan(Box::new(e.kind().clone())));
            let ins = Arc::new(parse_trigger(trigger).map_err(trigger_error)?);
            let prep = self.prepare(&ins).map_err(planned)?;
            self.dispatch(&prep, true, lines, &mut run, target_platform, globals, done)
                .map_err(planned)?;
        }
        let preps = Rc::clone(&self.prep);
        for prep in &preps[i] {
            let r = prep.ins.range();
            self.dispatch(
                prep,
                false,
                (r.start_line, r.end_line),
                &mut run,
                target_platform,
                globals,
                done,
            )?;
        }
        let instance = self.add_stage(&run, target_platform);
        Ok(Done {
            instance,
            platform: run.platform,
            state: run.state,
            last_step: run.prev,
        })
    }

    /// Where a stage starts: its base, platform, state and last step. A
    /// stage based on another (earlier in the file, so already done)
    /// inherits its platform, whatever its own --platform says (BuildKit's
    /// init()); an image's config gives the state.
    fn stage_base(
        &mut self,
        resolved: &Resolved,
        target_platform: &Arc<Platform>,
        done: &[Option<Done>],
    ) -> Result<StageStart, ErrorKind> {
        let platform = |planner: &mut Self| match &resolved.platform {
            Some(p) => planner.intern(p),
            None => Arc::clone(target_platform),
        };
        match &resolved.base {
            BaseRef::Stage(b) => {
                let Some(parent) = done[*b].as_ref() else {
                    return Err(ErrorKind::StageNotBuilt {
                        role: "base",
                        stage: self.stage_name(*b),
                    });
                };
                Ok((
                    StageBase::Stage(parent.instance),
                    parent.platform.clone(),
                    parent.state.clone(),
                    parent.last_step,
                ))
            }
            BaseRef::Scratch => Ok((StageBase::Scratch, platform(self), StageState::new(), None)),
            BaseRef::Image(reference) => {
                let platform = platform(self);
                let state = self.image_state(reference, &platform)?;
                Ok((
                    StageBase::Image {
                        reference: reference.clone(),
                        platform: Arc::clone(&platform),
                    },
                    platform,
                    state,
                    None,
                ))
            }
        }
    }

    /// The state a stage starts with from image `reference`'s config for
    /// `platform`: its ENV, WORKDIR, USER, SHELL and ONBUILD triggers.
    fn image_state(&self, reference: &str, platform: &Platform) -> Result<StageState, ErrorKind> {
        let config = self
            .images
            .image_config(reference, platform)
            .map_err(|reason| ErrorKind::ImageConfig {
                reference: reference.to_string(),
                platform: platform.to_string(),
                reason,
            })?
            .unwrap_or_default();
        let mut st = StageState::new();
        for entry in &config.env {
            let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            st.set_env(k, v.to_string());
        }
        if !config.working_dir.is_empty() {
            st.workdir = Arc::from(resolve_workdir("/", &config.working_dir, &platform.os));
        }
        st.user = Arc::from(config.user);
        if !config.shell.is_empty() {
            st.shell = Some(Arc::new(config.shell));
        }
        st.onbuild = config.on_build;
        Ok(st)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        prep: &Prep,
        onbuild: bool,
        lines: (usize, usize),
        run: &mut Run,
        target_platform: &Arc<Platform>,
        globals: &Globals,
        done: &[Option<Done>],
    ) -> Result<(), Error> {
        let ins: &Instruction = &prep.ins;
        let at = |kind| Error::at(kind, ins.range().start_line, ins.original());

        // Expand with the environment before the instruction.
        let mut new_args: Vec<(&str, String)> = Vec::new();
        let derived = match ins {
            Instruction::Arg(a) => {
                let values = self.arg_values(prep, a, run, globals, &mut new_args)?;
                self.derived_arg(prep, a, values)
            }
            _ => match &prep.fixed {
                Some(d) => d.clone(),
                None => prep
                    .memo
                    .get_or(&run.state, |env| self.derive(&prep.ins, prep.literal, env))?,
            },
        };
        let expanded = in_stage(derived.ins, run).map_err(at)?;
        let mounts = derived.mounts;
        let sources = self
            .step_sources(prep, run, target_platform, done, &mounts)
            .map_err(at)?;

        let id = self.add_step(
            run,
            derived.display,
            Arc::clone(&expanded),
            onbuild,
            lines,
            sources,
            mounts,
            target_platform,
        );
        run.prev = Some(id);
        run.steps.push(id);
        self.apply_to_state(&expanded, new_args, run).map_err(at)
    }

    /// The values of ARG `a`'s definitions: a build argument, else the
    /// default expanded (the first with the stage's environment only,
    /// memoized; later ones also see the earlier definitions), else the
    /// global value. Those that become variables go to `new_args`.
    fn arg_values<'p>(
        &mut self,
        prep: &Prep,
        a: &'p Arg,
        run: &Run,
        globals: &Globals,
        new_args: &mut Vec<(&'p str, String)>,
    ) -> Result<Vec<Option<String>>, Error> {
        let ins: &Instruction = &prep.ins;
        let expansion = |e: kbuild_shell::Error| {
            Error::at(
                ErrorKind::Expansion(e),
                ins.range().start_line,
                ins.original(),
            )
        };
        let lexer = self.lexer;
        let mut values: Vec<Option<String>> = Vec::with_capacity(a.args.len());
        for def in &a.args {
            if !self.consumed.contains(&def.name) {
                self.consumed.insert(def.name.clone());
            }
            let value = if let Some(v) = self.opts.build_args.get(&def.name) {
                Some(v.clone())
            } else if let (Some(d), true) = (&def.default, values.is_empty()) {
                // The first definition reads only the stage's
                // environment: expand it once per set of values read.
                Some(
                    prep.first_default
                        .get_or(&run.state, |env| lexer.process_word(d, env))
                        .map_err(expansion)?,
                )
            } else if let Some(d) = &def.default {
                let env = Overlay {
                    first: new_args,
                    rest: &run.state,
                };
                Some(lexer.process_word(d, &env).map_err(expansion)?)
            } else {
                globals.inherited(&def.name)
            };
            if let Some(v) = &value {
                if !NON_ENV_ARGS.contains(&def.name.as_str()) {
                    new_args.push((def.name.as_str(), v.clone()));
                }
            }
            values.push(value);
        }
        Ok(values)
    }

    /// The ARG instruction `a` with its definitions' `values`: one seen
    /// before with the same values, else built (and kept, up to 32).
    fn derived_arg(&self, prep: &Prep, a: &Arg, values: Vec<Option<String>>) -> Derived {
        // The definitions these values make, compared without
        // building them (they are only built the first time).
        let same = |defs: &[ArgDef]| {
            defs.len() == values.len()
                && defs
                    .iter()
                    .zip(a.args.iter().zip(&values))
                    .all(|(d, (def, value))| d.name == def.name && d.default == *value)
        };
        let seen = prep
            .args_seen
            .borrow()
            .iter()
            .find(|(d, _)| same(d))
            .map(|(_, derived)| derived.clone());
        if let Some(derived) = seen {
            return derived;
        }
        let defs: Vec<ArgDef> = a
            .args
            .iter()
            .zip(values)
            .map(|(def, value)| ArgDef {
                name: def.name.clone(),
                default: value,
            })
            .collect();
        let expanded = if defs == a.args {
            Arc::clone(&prep.ins)
        } else {
            Arc::new(Instruction::Arg(Arg {
                args: defs.clone(),
                ..a.clone()
            }))
        };
        let derived = Derived {
            display: Arc::from(display(&prep.ins, &expanded, &self.lexer, &NoEnv)),
            ins: expanded,
            mounts: Arc::clone(&self.no_mounts),
        };
        let mut seen = prep.args_seen.borrow_mut();
        if seen.len() < 32 {
            seen.push((defs, derived.clone()));
        }
        derived
    }

    /// What the step of `prep` reads: the stages it copies or mounts from
    /// (done before it), images, the build context.
    fn step_sources(
        &self,
        prep: &Prep,
        run: &Run,
        target_platform: &Arc<Platform>,
        done: &[Option<Done>],
        mounts: &[Mount],
    ) -> Result<Vec<Source>, ErrorKind> {
        let mut sources = Vec::with_capacity(prep.deps.len());
        for dep in &prep.deps {
            match &dep.kind {
                DepKind::Stage(s) => match done[*s].as_ref() {
                    Some(d) => sources.push(Source::Stage(d.instance)),
                    None => {
                        return Err(match dep.mount {
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
                        });
                    }
                },
                DepKind::Image(reference) if reference == "scratch" => {
                    sources.push(Source::Scratch)
                }
                DepKind::Context(name) => sources.push(Source::Context(name.clone())),
                DepKind::Image(reference) => sources.push(Source::Image {
                    reference: reference.clone(),
                    platform: Arc::clone(target_platform),
                }),
            }
        }
        Ok(sources)
    }

    /// Applies the instruction `expanded` to the stage's state (ARG: its
    /// `new_args`); an error once the environment grows too large.
    fn apply_to_state(
        &mut self,
        expanded: &Instruction,
        new_args: Vec<(&str, String)>,
        run: &mut Run,
    ) -> Result<(), ErrorKind> {
        let st = &mut run.state;
        match expanded {
            Instruction::Arg(_) => {
                for (k, v) in new_args {
                    st.set_var(k, v, true);
                }
            }
            Instruction::Env(e) => {
                for kv in &e.vars {
                    st.set_env_shared(&kv.key, kv.value.clone(), &mut self.env_cache);
                    if st.env_len() > MAX_STAGE_ENV {
                        break;
                    }
                }
            }
            Instruction::Workdir(w) if *st.workdir != *w.path => {
                st.workdir = Arc::from(w.path.as_str());
            }
            Instruction::User(u) if *st.user != *u.user => {
                st.user = Arc::from(u.user.as_str());
            }
            Instruction::Shell(s) => st.shell = Some(Arc::new(s.shell.clone())),
            Instruction::Onbuild(o) => st.onbuild.push(o.expression.clone()),
            _ => {}
        }
        if st.env_len() > MAX_STAGE_ENV {
            return Err(ErrorKind::EnvironmentTooLarge {
                scope: format!("stage {:?}", self.stage_name(run.index)),
                limit: MAX_STAGE_ENV,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_step(
        &mut self,
        run: &mut Run,
        display: Arc<str>,
        instruction: Arc<Instruction>,
        onbuild: bool,
        lines: (usize, usize),
        sources: Vec<Source>,
        mounts: Arc<Vec<Mount>>,
        target_platform: &Arc<Platform>,
    ) -> StepId {
        let mut h = FastHasher::default();
        run.index.hash(&mut h);
        run.prev.hash(&mut h);
        run.base_id.hash(&mut h);
        (Arc::as_ptr(&run.platform) as usize).hash(&mut h);
        lines.hash(&mut h);
        onbuild.hash(&mut h);
        sources.hash(&mut h);
        let (args, args_hash) = run.state.args_shared(&mut self.args_cache);
        args_hash.hash(&mut h);
        let key = h.finish();
        let shell = match &run.state.shell {
            Some(s) => Arc::clone(s),
            None if run.platform.os == "windows" => Arc::clone(&self.shell_windows),
            None => Arc::clone(&self.shell_linux),
        };
        let st = &run.state;
        let mut next = self.step_index.get(&key).copied().unwrap_or(u32::MAX);
        while next != u32::MAX {
            let id = StepId(next as usize);
            next = self.step_next[id.0];
            let s = &self.steps[id.0];
            if s.parent == run.prev
                && s.stage == run.index
                && self.step_bases[id.0] == run.base_id
                && Arc::ptr_eq(&s.platform, &run.platform)
                && s.onbuild == onbuild
                && s.lines == lines
                && (Arc::ptr_eq(&s.instruction, &instruction) || s.instruction == instruction)
                && s.sources == sources
                && (Arc::ptr_eq(&s.mounts, &mounts) || s.mounts == mounts)
                && s.workdir == st.workdir
                && s.user == st.user
                && (Arc::ptr_eq(&s.shell, &shell) || s.shell == shell)
                && s.env.same(&st.image_env)
                && s.args.same(&args)
            {
                let s = &mut self.steps[id.0];
                if !s.platforms.iter().any(|p| Arc::ptr_eq(p, target_platform)) {
                    let mut list = s.platforms.to_vec();
                    list.push(Arc::clone(target_platform));
                    s.platforms = Arc::from(list);
                    s.shared = s.platforms.len() > 1;
                }
                return id;
            }
        }
        let id = StepId(self.steps.len());
        let platforms = self.single_platform(target_platform);
        let st = &run.state;
        self.steps.push(Step {
            id,
            parent: run.prev,
            stage: run.index,
            lines,
            instruction,
            display,
            onbuild,
            platform: Arc::clone(&run.platform),
            args,
            env: st.image_env.clone(),
            workdir: Arc::clone(&st.workdir),
            user: Arc::clone(&st.user),
            shell,
            sources,
            mounts,
            platforms,
            shared: false,
        });
        self.step_bases.push(run.base_id);
        let previous = self.step_index.insert(key, id.0 as u32);
        self.step_next.push(previous.unwrap_or(u32::MAX));
        id
    }

    fn add_stage(&mut self, run: &Run, target_platform: &Arc<Platform>) -> StageId {
        let platform: &Platform = &run.platform;
        let mut h = FastHasher::default();
        run.index.hash(&mut h);
        run.platform.hash(&mut h);
        run.base.hash(&mut h);
        run.steps.hash(&mut h);
        let key = h.finish();
        if let Some(candidates) = self.stage_index.get(&key) {
            for &id in candidates {
                let s = &self.stages[id.0];
                if s.index == run.index
                    && *s.platform == *platform
                    && s.base == run.base
                    && s.steps == run.steps
                {
                    let s = &mut self.stages[id.0];
                    if !s
                        .target_platforms
                        .iter()
                        .any(|p| Arc::ptr_eq(p, target_platform))
                    {
                        let mut list = s.target_platforms.to_vec();
                        list.push(Arc::clone(target_platform));
                        s.target_platforms = Arc::from(list);
                    }
                    return id;
                }
            }
        }
        let id = StageId(self.stages.len());
        let target_platforms = self.single_platform(target_platform);
        self.stages.push(StageInstance {
            id,
            name: self.file.stages[run.index].from.name.clone(),
            index: run.index,
            platform: Arc::clone(&run.platform),
            base: run.base.clone(),
            steps: run.steps.clone(),
            target_platforms,
        });
        self.stage_index.entry(key).or_default().push(id);
        id
    }
}

/// ARG values declared earlier in the same ARG instruction, then the stage.
struct Overlay<'a> {
    first: &'a [(&'a str, String)],
    rest: &'a StageState,
}

impl Env for Overlay<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.first
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
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

/// The expanded instruction as it applies in the stage of `run`: WORKDIR
/// resolved against the current one; an empty VOLUME refused.
fn in_stage(expanded: Arc<Instruction>, run: &Run) -> Result<Arc<Instruction>, ErrorKind> {
    match &*expanded {
        Instruction::Workdir(w) => {
            let path = resolve_workdir(&run.state.workdir, &w.path, &run.platform.os);
            if *path != *w.path {
                let path = path.into_owned();
                let mut w = w.clone();
                w.path = path;
                return Ok(Arc::new(Instruction::Workdir(w)));
            }
        }
        Instruction::Volume(v) if v.volumes.iter().any(|p| p.is_empty()) => {
            return Err(ErrorKind::EmptyVolume);
        }
        _ => {}
    }
    Ok(expanded)
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

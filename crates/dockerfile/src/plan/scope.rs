//! Variable scopes: the global (meta) args of FROM lines and the per-stage
//! state BuildKit carries from instruction to instruction.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use kbuild_platform::Platform;
use kbuild_shell::Env;

use super::model::{VarPair, Vars};

/// A small, fast, non-cryptographic hasher (the multiply-rotate scheme of
/// rustc's `FxHasher`) for the planner's internal maps: keys come from one
/// Dockerfile, so hash flooding is no concern and SipHash's cost shows.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// Build args BuildKit sets or understands without any ARG declaring them;
/// never reported as unused.
pub(crate) const BUILTIN_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "SOURCE_DATE_EPOCH",
    "BUILDKIT_INLINE_CACHE",
    "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_SBOM_SCAN_CONTEXT",
    "BUILDKIT_SBOM_SCAN_STAGE",
    "BUILDKIT_CACHE_MOUNT_NS",
    "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_SYNTAX",
];

/// Args BuildKit records but never puts in the build environment.
pub(crate) const NON_ENV_ARGS: &[&str] =
    &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// The global scope: automatic platform args, then the ARGs before the first
/// FROM, in order. A global declared without a value and given no build arg
/// is `None`: it expands to the empty string in FROM lines (BuildKit's
/// `metaArgsToMap`) but is not inherited by `ARG NAME` in a stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Globals {
    values: HashMap<String, Option<String>>,
    keys: Vec<String>,
}

impl Globals {
    /// The automatic args for one target platform, `--build-arg` overriding
    /// them as BuildKit does.
    pub(crate) fn automatic(
        build: &Platform,
        target: &Platform,
        target_stage: &str,
        build_args: &std::collections::BTreeMap<String, String>,
    ) -> Globals {
        let mut g = Globals::default();
        let auto = [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETARCH", target.architecture.clone()),
            ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
            ("TARGETSTAGE", target_stage.to_string()),
        ];
        for (key, value) in auto {
            let value = build_args.get(key).cloned().unwrap_or(value);
            g.set(key, Some(value));
        }
        g
    }

    /// Declares `key`. A declaration without value (no default, no build
    /// arg) keeps a value the key already has, as BuildKit's global env list
    /// only records values.
    pub(crate) fn set(&mut self, key: &str, value: Option<String>) {
        match self.values.get_mut(key) {
            Some(existing) => {
                if value.is_some() {
                    *existing = value;
                }
            }
            None => {
                self.values.insert(key.to_string(), value);
                self.keys.push(key.to_string());
            }
        }
    }

    /// The value `ARG key` (no default, no build arg) takes in a stage.
    pub(crate) fn inherited(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().flatten()
    }

    /// Every declared key, in declaration order.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }
}

impl Env for Globals {
    fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).map(|v| v.clone().unwrap_or_default())
    }
}

/// One variable of a stage's build environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    /// Shared with the index, so cloning a stage's state copies no names.
    key: Rc<str>,
    /// Shared too: a stage built on another, and the lookups a memoised
    /// expansion records, copy no values (a stage's environment may be
    /// up to 16 MiB).
    value: Rc<str>,
    /// Set by an ARG (true) or by ENV / the base image (false).
    from_arg: bool,
}

/// What BuildKit's dispatch state carries through a stage: the build
/// environment (ENV and ARG values in one list, the last write winning, as
/// `llb.State.AddEnv` does), the image config's own `Env` (ENV only), the
/// working directory, user, shell and pending ONBUILD triggers.
#[derive(Debug, Clone)]
pub(crate) struct StageState {
    vars: Vec<Var>,
    index: FastMap<Rc<str>, usize>,
    /// Bytes of the names and values in `vars`, kept as they change.
    env_len: usize,
    /// The image config's `Env`.
    pub(crate) image_env: Vars,
    /// The ARG values of `vars` and their hash, kept until an ARG or ENV
    /// changes them.
    args: Option<(Vars, u64)>,
    pub(crate) workdir: Arc<str>,
    pub(crate) user: Arc<str>,
    /// The SHELL set by the image or an instruction; `None`: the default.
    pub(crate) shell: Option<Arc<Vec<String>>>,
    /// ONBUILD expressions recorded so far (run by stages built on this one).
    pub(crate) onbuild: Vec<String>,
}

impl StageState {
    pub(crate) fn new() -> StageState {
        // Room for a typical stage's variables, so they are not moved as
        // the stage sets them one by one.
        const ROOM: usize = 32;
        StageState {
            vars: Vec::with_capacity(ROOM),
            index: FastMap::with_capacity_and_hasher(ROOM, Default::default()),
            env_len: 0,
            image_env: Vars::default(),
            args: None,
            workdir: Arc::from("/"),
            user: Arc::from(""),
            shell: None,
            onbuild: Vec::new(),
        }
    }

    /// Sets a variable of the build environment (replacing in place).
    pub(crate) fn set_var(&mut self, key: &str, value: String, from_arg: bool) {
        if from_arg || self.index.get(key).is_some_and(|&i| self.vars[i].from_arg) {
            self.args = None;
        }
        match self.index.get(key) {
            Some(&i) => {
                self.env_len = self.env_len - self.vars[i].value.len() + value.len();
                self.vars[i].value = Rc::from(value);
                self.vars[i].from_arg = from_arg;
            }
            None => {
                self.env_len += key.len() + value.len();
                let key: Rc<str> = Rc::from(key);
                self.index.insert(Rc::clone(&key), self.vars.len());
                self.vars.push(Var {
                    key,
                    value: Rc::from(value),
                    from_arg,
                });
            }
        }
    }

    /// ENV: the build environment and the image config both change.
    pub(crate) fn set_env(&mut self, key: &str, value: String) {
        let env = self.image_env.make_mut();
        match env.iter_mut().find(|(k, _)| **k == *key) {
            Some(entry) => entry.1 = Arc::from(value.as_str()),
            None => env.push((Arc::from(key), Arc::from(value.as_str()))),
        }
        self.set_var(key, value, false);
    }

    /// [`set_env`](StageState::set_env), sharing the changed image
    /// environment through `cache` with every stage that made the same
    /// change to the same environment (the same stage for other target
    /// platforms, mostly) instead of copying the list again.
    pub(crate) fn set_env_shared(&mut self, key: &str, value: String, cache: &mut VarsCache) {
        let old = &self.image_env;
        let pos = old.iter().position(|(k, _)| **k == *key);
        if pos.is_some_and(|p| *old[p].1 == *value) {
            // The image environment does not change.
            return self.set_var(key, value, false);
        }
        if !old.is_shared() {
            // Changed in place: no copy.
            return self.set_env(key, value);
        }
        use std::hash::{Hash, Hasher};
        let mut h = FastHasher::default();
        old.hash(&mut h);
        key.hash(&mut h);
        value.hash(&mut h);
        let candidates = cache.0.entry(h.finish()).or_default();
        let at = pos.unwrap_or(old.len());
        let len = old.len() + usize::from(pos.is_none());
        let found = candidates.iter().find(|new| {
            new.len() == len
                && new.iter().enumerate().all(|(i, (k, v))| {
                    if i == at {
                        **k == *key && **v == *value
                    } else {
                        old[i].0 == *k && old[i].1 == *v
                    }
                })
        });
        let new = match found {
            Some(new) => new.clone(),
            None => {
                let mut list = Vec::with_capacity(len);
                list.extend(old.iter().cloned());
                match pos {
                    Some(p) => list[p].1 = Arc::from(value.as_str()),
                    None => list.push((Arc::from(key), Arc::from(value.as_str()))),
                }
                let new = Vars::from(list);
                candidates.push(new.clone());
                new
            }
        };
        self.image_env = new;
        self.set_var(key, value, false);
    }

    pub(crate) fn has_image_env(&self, key: &str) -> bool {
        self.image_env.iter().any(|(k, _)| **k == *key)
    }

    /// The ARG values of the build environment, in declaration order, and
    /// a hash of them.
    #[cfg(test)]
    pub(crate) fn args(&mut self) -> (Vars, u64) {
        self.args_shared(&mut VarsCache::default())
    }

    /// [`args`](StageState::args), reusing an identical list from `cache`
    /// (made by another stage instance) instead of copying the strings.
    pub(crate) fn args_shared(&mut self, cache: &mut VarsCache) -> (Vars, u64) {
        if let Some((a, h)) = &self.args {
            return (a.clone(), *h);
        }
        use std::hash::{Hash, Hasher};
        let args = || self.vars.iter().filter(|v| v.from_arg);
        let mut h = FastHasher::default();
        let mut count = 0usize;
        for v in args() {
            v.key.hash(&mut h);
            v.value.hash(&mut h);
            count += 1;
        }
        count.hash(&mut h);
        let h = h.finish();
        let candidates = cache.0.entry(h).or_default();
        let found = candidates.iter().find(|a| {
            a.len() == count
                && a.iter()
                    .zip(args())
                    .all(|((k, v), var)| **k == *var.key && **v == *var.value)
        });
        let a = match found {
            Some(a) => a.clone(),
            None => {
                let a: Vars = args()
                    .map(|v| (Arc::from(&*v.key), Arc::from(&*v.value)))
                    .collect::<Vec<VarPair>>()
                    .into();
                candidates.push(a.clone());
                a
            }
        };
        self.args = Some((a.clone(), h));
        (a, h)
    }
}

impl StageState {
    /// The size of the build environment: the bytes of every name and value
    /// (ENV and ARG, as the lexer sees them).
    pub(crate) fn env_len(&self) -> usize {
        self.env_len
    }

    /// The value of `name` in the build environment, borrowed.
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| &*self.vars[i].value)
    }

    /// The value of `name` in the build environment, shared.
    fn value_shared(&self, name: &str) -> Option<Rc<str>> {
        self.index
            .get(name)
            .map(|&i| Rc::clone(&self.vars[i].value))
    }
}

impl Env for StageState {
    fn get(&self, name: &str) -> Option<String> {
        self.value(name).map(str::to_string)
    }
}

/// Variable lists made once and shared, by a hash: image environments
/// made by [`StageState::set_env_shared`] (hash of the environment changed,
/// the name and the value) or ARG lists made by
/// [`StageState::args_shared`] (hash of the list).
#[derive(Default)]
pub(crate) struct VarsCache(FastMap<u64, Vec<Vars>>);

/// A stage's build environment that remembers every lookup made through it.
pub(crate) struct Recording<'a> {
    inner: &'a StageState,
    seen: std::cell::RefCell<Lookups>,
}

impl Env for Recording<'_> {
    fn get(&self, name: &str) -> Option<String> {
        let value = self.inner.value_shared(name);
        let mut seen = self.seen.borrow_mut();
        if !seen.iter().any(|(k, _)| k == name) {
            seen.push((name.to_string(), value.clone()));
        }
        value.map(|v| v.to_string())
    }
}

/// Results computed from a stage's build environment, kept with the lookups
/// they made: a later environment that gives the same values for those
/// names gets the same result (the computation is deterministic in them).
pub(crate) struct Memo<T> {
    entries: std::cell::RefCell<Vec<(Lookups, T)>>,
}

/// Names read from an environment and the values they had.
type Lookups = Vec<(String, Option<Rc<str>>)>;

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo {
            entries: std::cell::RefCell::new(Vec::new()),
        }
    }
}

impl<T: Clone> Memo<T> {
    /// At most this many results are kept per computation.
    const LIMIT: usize = 32;

    pub(crate) fn get_or<E>(
        &self,
        env: &StageState,
        compute: impl FnOnce(&Recording<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        for (lookups, value) in self.entries.borrow().iter() {
            if lookups.iter().all(|(k, v)| env.value(k) == v.as_deref()) {
                return Ok(value.clone());
            }
        }
        let recording = Recording {
            inner: env,
            seen: std::cell::RefCell::new(Vec::new()),
        };
        let value = compute(&recording)?;
        let mut entries = self.entries.borrow_mut();
        if entries.len() < Self::LIMIT {
            entries.push((recording.seen.into_inner(), value.clone()));
        }
        Ok(value)
    }
}

/// BuildKit's default `PATH` for an operating system.
pub(crate) fn default_path(os: &str) -> &'static str {
    if os == "windows" {
        "c:\\Windows\\System32;c:\\Windows"
    } else {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    }
}

/// BuildKit's default shell for an operating system.
pub(crate) fn default_shell(os: &str) -> Arc<Vec<String>> {
    Arc::new(if os == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_size_follows_every_change() {
        let mut st = StageState::new();
        assert_eq!(st.env_len(), 0);
        st.set_var("A", "arg".into(), true);
        assert_eq!(st.env_len(), 4);
        st.set_env("A", "longer".into());
        assert_eq!(st.env_len(), 7);
        st.set_env_shared("BB", "x".into(), &mut VarsCache::default());
        assert_eq!(st.env_len(), 10);
        st.set_var("BB", String::new(), true);
        assert_eq!(st.env_len(), 9);
        let copy = st.clone();
        assert_eq!(copy.env_len(), 9);
    }

    #[test]
    fn arg_then_env_env_wins_and_leaves_args() {
        let mut st = StageState::new();
        st.set_var("A", "arg".into(), true);
        st.set_env("A", "env".into());
        assert_eq!(Env::get(&st, "A").as_deref(), Some("env"));
        assert!(st.args().0.is_empty());
        assert_eq!(
            st.image_env.to_vec(),
            vec![("A".to_string(), "env".to_string())]
        );
    }

    #[test]
    fn env_then_arg_arg_wins_for_the_build_but_not_the_image() {
        let mut st = StageState::new();
        st.set_env("A", "env".into());
        st.set_var("A", "arg".into(), true);
        assert_eq!(Env::get(&st, "A").as_deref(), Some("arg"));
        assert_eq!(
            st.args().0.to_vec(),
            vec![("A".to_string(), "arg".to_string())]
        );
        let (args, hash) = st.args();
        assert_eq!(st.args(), (args.clone(), hash));
        let mut other = st.clone();
        other.set_var("B", "x".into(), true);
        assert_ne!(other.args().0, args);
        other.set_env("B", "env".into());
        assert_eq!(other.args(), (args.clone(), hash));
        assert_eq!(
            st.image_env.to_vec(),
            vec![("A".to_string(), "env".to_string())]
        );
    }

    #[test]
    fn memo_reuses_results_only_for_the_same_lookups() {
        use std::cell::Cell;
        let memo: Memo<String> = Memo::default();
        let calls = Cell::new(0);
        let lexer = kbuild_shell::Lexer::new('\\');
        let run = |st: &StageState| {
            memo.get_or(st, |env| {
                calls.set(calls.get() + 1);
                lexer.process_word("${A:-$B}", env)
            })
        };
        let mut st = StageState::new();
        st.set_var("B", "b".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("b"));
        st.set_var("C", "unrelated".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("b"));
        assert_eq!(calls.get(), 1);
        st.set_var("A", "a".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("a"));
        assert_eq!(calls.get(), 2);
        // The lexer reads B even when A is set, so changing B recomputes.
        st.set_var("B", "changed".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("a"));
        st.set_var("A", "".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("changed"));
        st.set_var("A", "a".into(), true);
        st.set_var("B", "b".into(), true);
        assert_eq!(run(&st).as_deref(), Ok("a"));
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn globals_without_value_expand_empty_but_are_not_inherited() {
        let mut g = Globals::default();
        g.set("X", None);
        assert_eq!(Env::get(&g, "X").as_deref(), Some(""));
        assert_eq!(g.inherited("X"), None);
        assert_eq!(Env::get(&g, "Y"), None);
    }
}

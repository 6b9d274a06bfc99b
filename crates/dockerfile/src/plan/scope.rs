//! Variable scopes: the global (meta) args of FROM lines and the per-stage
//! state BuildKit carries from instruction to instruction.

use std::collections::HashMap;

use kbuild_platform::Platform;
use kbuild_shell::Env;

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
    key: String,
    value: String,
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
    index: HashMap<String, usize>,
    pub(crate) image_env: Vec<(String, String)>,
    pub(crate) workdir: String,
    pub(crate) user: String,
    /// The SHELL set by the image or an instruction; empty: the default.
    pub(crate) shell: Vec<String>,
    /// ONBUILD expressions recorded so far (run by stages built on this one).
    pub(crate) onbuild: Vec<String>,
}

impl StageState {
    pub(crate) fn new() -> StageState {
        StageState {
            vars: Vec::new(),
            index: HashMap::new(),
            image_env: Vec::new(),
            workdir: "/".to_string(),
            user: String::new(),
            shell: Vec::new(),
            onbuild: Vec::new(),
        }
    }

    /// Sets a variable of the build environment (replacing in place).
    pub(crate) fn set_var(&mut self, key: &str, value: String, from_arg: bool) {
        match self.index.get(key) {
            Some(&i) => {
                self.vars[i].value = value;
                self.vars[i].from_arg = from_arg;
            }
            None => {
                self.index.insert(key.to_string(), self.vars.len());
                self.vars.push(Var {
                    key: key.to_string(),
                    value,
                    from_arg,
                });
            }
        }
    }

    /// ENV: the build environment and the image config both change.
    pub(crate) fn set_env(&mut self, key: &str, value: String) {
        match self.image_env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => self.image_env.push((key.to_string(), value.clone())),
        }
        self.set_var(key, value, false);
    }

    pub(crate) fn has_image_env(&self, key: &str) -> bool {
        self.image_env.iter().any(|(k, _)| k == key)
    }

    /// The ARG values of the build environment, in declaration order.
    pub(crate) fn args(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .filter(|v| v.from_arg)
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    }

    /// Whether the ARG values equal `args` (no allocation).
    pub(crate) fn args_eq(&self, args: &[(String, String)]) -> bool {
        let mut it = args.iter();
        for v in self.vars.iter().filter(|v| v.from_arg) {
            match it.next() {
                Some((k, val)) if *k == v.key && *val == v.value => {}
                _ => return false,
            }
        }
        it.next().is_none()
    }

    pub(crate) fn hash_args<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::hash::Hash;
        for v in self.vars.iter().filter(|v| v.from_arg) {
            v.key.hash(h);
            v.value.hash(h);
        }
    }
}

impl Env for StageState {
    fn get(&self, name: &str) -> Option<String> {
        self.index.get(name).map(|&i| self.vars[i].value.clone())
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
pub(crate) fn default_shell(os: &str) -> Vec<String> {
    if os == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_then_env_env_wins_and_leaves_args() {
        let mut st = StageState::new();
        st.set_var("A", "arg".into(), true);
        st.set_env("A", "env".into());
        assert_eq!(Env::get(&st, "A").as_deref(), Some("env"));
        assert!(st.args().is_empty());
        assert_eq!(st.image_env, vec![("A".to_string(), "env".to_string())]);
    }

    #[test]
    fn env_then_arg_arg_wins_for_the_build_but_not_the_image() {
        let mut st = StageState::new();
        st.set_env("A", "env".into());
        st.set_var("A", "arg".into(), true);
        assert_eq!(Env::get(&st, "A").as_deref(), Some("arg"));
        assert_eq!(st.args(), vec![("A".to_string(), "arg".to_string())]);
        assert!(st.args_eq(&st.args()));
        assert_eq!(st.image_env, vec![("A".to_string(), "env".to_string())]);
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

//! Which cluster, as kubectl picks it: `--kubeconfig FILE` alone, else the
//! files of `$KUBECONFIG` (colon-separated; missing ones skipped; merged,
//! the first file to set a value wins), else `~/.kube/config`; the context
//! of `--context`, else the merged `current-context`; the namespace of
//! `-n/--namespace`, else the context's, else `default`.

use super::Error;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What the command line says about the cluster.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n/--namespace`.
    pub namespace: Option<String>,
}

/// A cluster to talk to.
#[derive(Clone)]
pub struct Resolved {
    /// The client configuration.
    pub config: kube::Config,
    /// The context used.
    pub context: String,
    /// The namespace builders live in.
    pub namespace: String,
    /// The files the configuration came from.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("context", &self.context)
            .field("namespace", &self.namespace)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The kubeconfig files to read, in merge order: `flag` alone (even if
/// missing: that is an error later), else the existing files of `env`
/// (`$KUBECONFIG`), else `home/.kube/config` if it exists.
pub fn files(flag: Option<&Path>, env: Option<&OsStr>, home: Option<&Path>) -> Vec<PathBuf> {
    if let Some(f) = flag {
        return vec![f.to_path_buf()];
    }
    if let Some(list) = env.filter(|v| !v.is_empty()) {
        let mut out: Vec<PathBuf> = Vec::new();
        for p in std::env::split_paths(list) {
            if !p.as_os_str().is_empty() && p.exists() && !out.contains(&p) {
                out.push(p);
            }
        }
        return out;
    }
    home.map(|h| h.join(".kube").join("config"))
        .filter(|p| p.exists())
        .into_iter()
        .collect()
}

fn shown(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads and merges `files` (see [`files`]).
pub fn merge(files: &[PathBuf]) -> Result<Kubeconfig, Error> {
    let mut merged = Kubeconfig::default();
    for f in files {
        let one = Kubeconfig::read_from(f).map_err(|source| match &source {
            kube::config::KubeconfigError::ReadConfig(e, _)
                if e.kind() == std::io::ErrorKind::NotFound =>
            {
                Error::KubeconfigMissing { path: f.clone() }
            }
            _ => Error::Kubeconfig {
                path: f.clone(),
                source: Box::new(source),
            },
        })?;
        merged = merged.merge(one).map_err(|source| Error::Kubeconfig {
            path: f.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(merged)
}

/// The context and namespace `sel` picks in `merged`: `None` when no
/// context is chosen (no `--context`, no `current-context`).
pub fn pick(merged: &Kubeconfig, sel: &Selection) -> Option<(String, String)> {
    let context = sel
        .context
        .clone()
        .or_else(|| merged.current_context.clone())
        .filter(|c| !c.is_empty())?;
    let namespace = sel
        .namespace
        .clone()
        .or_else(|| {
            merged
                .contexts
                .iter()
                .find(|c| c.name == context)
                .and_then(|c| c.context.as_ref())
                .and_then(|c| c.namespace.clone())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Some((context, namespace))
}

/// The cluster `sel` names, reading `$KUBECONFIG` and `$HOME` from the
/// environment: `Ok(None)` when there is no kubeconfig at all, or one
/// without a context to use while none was asked for (the embedded
/// builder's case); an error when what was asked for cannot be used.
pub async fn resolve(sel: &Selection) -> Result<Option<Resolved>, Error> {
    let env = std::env::var_os("KUBECONFIG");
    let home = dirs::home_dir();
    resolve_from(sel, env.as_deref(), home.as_deref()).await
}

/// [`resolve`] with the environment given.
pub async fn resolve_from(
    sel: &Selection,
    env: Option<&OsStr>,
    home: Option<&Path>,
) -> Result<Option<Resolved>, Error> {
    let files = files(sel.kubeconfig.as_deref(), env, home);
    if files.is_empty() {
        return Ok(None);
    }
    let merged = merge(&files)?;
    let Some((context, namespace)) = pick(&merged, sel) else {
        if sel.kubeconfig.is_some() || sel.context.is_some() {
            return Err(Error::NoContext {
                files: shown(&files),
            });
        }
        return Ok(None);
    };
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(merged, &options)
        .await
        .map_err(|source| Error::Context {
            files: shown(&files),
            context: context.clone(),
            source: Box::new(source),
        })?;
    config.default_namespace = namespace.clone();
    Ok(Some(Resolved {
        config,
        context,
        namespace,
        files,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(current: &str, contexts: &[(&str, Option<&str>)], server: &str) -> String {
        let mut s = String::from("apiVersion: v1\nkind: Config\n");
        if !current.is_empty() {
            s.push_str(&format!("current-context: {current}\n"));
        }
        s.push_str(&format!(
            "clusters:\n- name: c-{server}\n  cluster:\n    server: https://{server}:6443\n"
        ));
        s.push_str("users:\n- name: u\n  user:\n    token: t\n");
        s.push_str("contexts:\n");
        for (name, ns) in contexts {
            s.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: c-{server}\n    user: u\n"
            ));
            if let Some(ns) = ns {
                s.push_str(&format!("    namespace: {ns}\n"));
            }
        }
        s
    }

    fn sel(kubeconfig: Option<&Path>, context: Option<&str>, ns: Option<&str>) -> Selection {
        Selection {
            kubeconfig: kubeconfig.map(Path::to_path_buf),
            context: context.map(str::to_string),
            namespace: ns.map(str::to_string),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn flag_then_env_list_then_home_and_missing_env_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        std::fs::write(home.join(".kube/config"), "").unwrap();
        let missing = dir.path().join("missing");
        let env = std::env::join_paths([&missing, &b, &a, &b]).unwrap();
        assert_eq!(
            files(Some(&missing), Some(&env), Some(&home)),
            std::slice::from_ref(&missing)
        );
        assert_eq!(files(None, Some(&env), Some(&home)), [b.clone(), a.clone()]);
        assert_eq!(files(None, None, Some(&home)), [home.join(".kube/config")]);
        assert_eq!(
            files(None, Some(OsStr::new("")), Some(&home)),
            [home.join(".kube/config")]
        );
        assert!(files(None, None, Some(&missing)).is_empty());
    }

    #[test]
    fn merged_as_kubectl_first_file_wins_and_namespace_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let second = dir.path().join("second");
        std::fs::write(
            &first,
            kubeconfig("one", &[("one", Some("team-a"))], "first"),
        )
        .unwrap();
        std::fs::write(
            &second,
            kubeconfig("two", &[("one", Some("ignored")), ("two", None)], "second"),
        )
        .unwrap();
        let env = std::env::join_paths([&first, &second]).unwrap();
        let rt = rt();
        let r = rt
            .block_on(resolve_from(&sel(None, None, None), Some(&env), None))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.context.as_str(), r.namespace.as_str()),
            ("one", "team-a")
        );
        assert_eq!(r.config.cluster_url.to_string(), "https://first:6443/");
        assert_eq!(r.files, [first.clone(), second.clone()]);
        let r = rt
            .block_on(resolve_from(
                &sel(None, Some("two"), None),
                Some(&env),
                None,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.context.as_str(), r.namespace.as_str()),
            ("two", "default")
        );
        let r = rt
            .block_on(resolve_from(
                &sel(None, Some("two"), Some("mine")),
                Some(&env),
                None,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(r.namespace, "mine");
        assert_eq!(r.config.default_namespace, "mine");
        // --kubeconfig alone: the env list is not read.
        let r = rt
            .block_on(resolve_from(
                &sel(Some(&second), None, None),
                Some(&env),
                None,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(r.context, "two");
        assert_eq!(r.config.cluster_url.to_string(), "https://second:6443/");
    }

    #[test]
    fn no_kubeconfig_or_no_context_means_no_cluster_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        assert!(rt
            .block_on(resolve_from(&sel(None, None, None), None, Some(dir.path())))
            .unwrap()
            .is_none());
        let missing = dir.path().join("missing");
        assert!(matches!(
            rt.block_on(resolve_from(&sel(Some(&missing), None, None), None, None)),
            Err(Error::KubeconfigMissing { .. })
        ));
        let none = dir.path().join("none");
        std::fs::write(&none, kubeconfig("", &[("x", None)], "h")).unwrap();
        let env = none.clone().into_os_string();
        assert!(rt
            .block_on(resolve_from(&sel(None, None, None), Some(&env), None))
            .unwrap()
            .is_none());
        assert!(matches!(
            rt.block_on(resolve_from(&sel(Some(&none), None, None), None, None)),
            Err(Error::NoContext { .. })
        ));
        assert!(matches!(
            rt.block_on(resolve_from(
                &sel(None, Some("nope"), None),
                Some(&env),
                None
            )),
            Err(Error::Context { .. })
        ));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "clusters: [").unwrap();
        let e = rt
            .block_on(resolve_from(&sel(Some(&bad), None, None), None, None))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("kubeconfig {}: ", bad.display())),
            "{e}"
        );
    }
}

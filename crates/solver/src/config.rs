//! Config ops: image config patches applied as BuildKit's Dockerfile
//! frontend writes them (ENV replaces or appends `KEY=value`, ENTRYPOINT
//! may clear CMD, EXPOSE adds `port/proto` keys), and the history entries
//! ops leave. What to patch is decided by the frontend
//! (`kbuild_dockerfile::graph`); this module only writes it.

use kbuild_dockerfile::graph::ConfigPatch;
use kbuild_image::{ContainerConfig, Empty, HealthConfig, History, ImageConfig};
use std::collections::BTreeMap;

use crate::error::StepError;

/// The default PATH BuildKit puts into Linux images that have none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Make sure a Linux config has a PATH, as BuildKit does for every stage.
pub fn ensure_path(config: &mut ImageConfig) {
    if config.os != "linux" {
        return;
    }
    let c = config.config.get_or_insert_with(ContainerConfig::default);
    let env = c.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
}

/// Set `KEY=value` in an env list, replacing an existing key in place.
pub fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key) || e.as_str() == key)
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

fn nanos(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Apply the patches of a config (or file) op in order.
pub fn apply(config: &mut ImageConfig, patches: &[ConfigPatch]) -> Result<(), StepError> {
    for p in patches {
        apply_one(config, p)?;
    }
    Ok(())
}

fn apply_one(config: &mut ImageConfig, patch: &ConfigPatch) -> Result<(), StepError> {
    if let ConfigPatch::ClearOnBuild = patch {
        if let Some(c) = config.config.as_mut() {
            c.on_build = None;
        }
        return Ok(());
    }
    if let ConfigPatch::Author { name } = patch {
        config.author = Some(name.clone());
        return Ok(());
    }
    let c = config.config.get_or_insert_with(ContainerConfig::default);
    match patch {
        ConfigPatch::Env { key, value } => set_env(c.env.get_or_insert_with(Vec::new), key, value),
        ConfigPatch::Label { key, value } => {
            c.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(key.clone(), value.clone());
        }
        ConfigPatch::User { user } => c.user = Some(user.clone()),
        ConfigPatch::Workdir { path } => c.working_dir = Some(path.clone()),
        ConfigPatch::ExposedPorts { ports } => {
            let map = c.exposed_ports.get_or_insert_with(BTreeMap::new);
            for k in ports {
                map.insert(k.clone(), Empty {});
            }
        }
        ConfigPatch::Volumes { paths } => {
            let vols = c.volumes.get_or_insert_with(BTreeMap::new);
            for p in paths {
                if p.trim().is_empty() {
                    return Err(StepError::EmptyVolume);
                }
                vols.insert(p.clone(), Empty {});
            }
        }
        ConfigPatch::Entrypoint { argv, clear_cmd } => {
            c.entrypoint = Some(argv.clone());
            if *clear_cmd {
                c.cmd = None;
            }
        }
        ConfigPatch::Cmd { argv } => c.cmd = Some(argv.clone()),
        ConfigPatch::Shell { argv } => c.shell = Some(argv.clone()),
        ConfigPatch::StopSignal { signal } => c.stop_signal = Some(signal.clone()),
        ConfigPatch::Healthcheck {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            c.healthcheck = Some(HealthConfig {
                test: test.clone(),
                interval: nanos(*interval),
                timeout: nanos(*timeout),
                start_period: nanos(*start_period),
                start_interval: nanos(*start_interval),
                retries: retries.map(i64::from),
                ..HealthConfig::default()
            })
        }
        ConfigPatch::OnBuild { expression } => c
            .on_build
            .get_or_insert_with(Vec::new)
            .push(expression.clone()),
        ConfigPatch::ClearOnBuild | ConfigPatch::Author { .. } => {}
    }
    Ok(())
}

/// The history entry an op writes.
pub fn history(
    created: &str,
    entry: &kbuild_dockerfile::graph::History,
    empty_layer: bool,
) -> History {
    History {
        created: Some(created.to_string()),
        created_by: Some(entry.created_by.clone()),
        comment: Some(entry.comment.clone()),
        empty_layer: empty_layer.then_some(true),
        ..History::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_replaces_in_place() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        set_env(&mut env, "A", "3");
        set_env(&mut env, "C", "4");
        assert_eq!(env, vec!["A=3", "B=2", "C=4"]);
    }

    #[test]
    fn path_defaulted_for_linux_only() {
        let mut c = ImageConfig {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..ImageConfig::default()
        };
        ensure_path(&mut c);
        assert_eq!(
            c.config.as_ref().unwrap().env.as_ref().unwrap()[0],
            DEFAULT_PATH
        );
        let mut w = ImageConfig {
            os: "windows".into(),
            architecture: "amd64".into(),
            ..ImageConfig::default()
        };
        ensure_path(&mut w);
        assert!(w.config.is_none());
    }
}

//! Image config changes of the metadata instructions, written as BuildKit's
//! Dockerfile frontend writes them: ENV replaces or appends `KEY=value`,
//! ENTRYPOINT clears a CMD inherited from the base image, shell forms are
//! wrapped in the stage's SHELL, EXPOSE ranges are expanded to `port/proto`
//! keys, and every step leaves a history entry (its text by the Dockerfile
//! frontend's rules, `kbuild_dockerfile::graph`).

use kbuild_dockerfile::graph;
use kbuild_dockerfile::instructions::{Command, HealthTest, Instruction};
use kbuild_image::{ContainerConfig, Empty, HealthConfig, History, ImageConfig};
use std::collections::BTreeMap;

/// The default PATH BuildKit puts into Linux images that have none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A metadata instruction whose value cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

/// The argv a shell-form command runs with.
pub fn shell_argv(shell: &[String], cmd: &str) -> Vec<String> {
    let mut v = shell.to_vec();
    v.push(cmd.to_string());
    v
}

/// Stage-local facts the config alone does not carry.
#[derive(Debug, Clone, Default)]
pub struct StageMeta {
    /// Whether CMD was set in this stage (ENTRYPOINT keeps it then).
    pub cmd_set: bool,
}

/// The default shell when the config sets none.
pub fn default_shell(os: &str) -> Vec<String> {
    if os == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    }
}

/// The stage's current shell.
pub fn current_shell(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .as_ref()
        .and_then(|c| c.shell.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_shell(&config.os))
}

fn argv(config: &ImageConfig, command: &Command) -> Vec<String> {
    match command {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => shell_argv(&current_shell(config), s),
    }
}

/// Expand an EXPOSE word into `port/proto` keys (`8000-8002/udp` is three
/// keys), by the Dockerfile frontend's rule.
pub fn expose_keys(word: &str) -> Result<Vec<String>, ConfigError> {
    kbuild_dockerfile::graph::expose_keys(word)
        .map_err(|e| ConfigError(format!("EXPOSE {word}: {e}")))
}

fn duration_ns(d: std::time::Duration) -> Option<i64> {
    (!d.is_zero()).then(|| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Apply a metadata instruction (anything but FROM, RUN, COPY, ADD) to the
/// config; WORKDIR's directory creation is the solver's job, its config part
/// is done here. Returns the history text, or `None` when the instruction
/// leaves no history (ARG).
pub fn apply(
    config: &mut ImageConfig,
    meta: &mut StageMeta,
    ins: &Instruction,
    workdir_abs: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let os = config.os.clone();
    let c = config.config.get_or_insert_with(ContainerConfig::default);
    let text = match ins {
        Instruction::Env(e) => {
            let env = c.env.get_or_insert_with(Vec::new);
            for kv in &e.vars {
                set_env(env, &kv.key, &kv.value);
            }
            format!(
                "ENV {}",
                e.vars
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        Instruction::Label(l) => {
            let labels = c.labels.get_or_insert_with(BTreeMap::new);
            for kv in &l.labels {
                labels.insert(kv.key.clone(), kv.value.clone());
            }
            format!(
                "LABEL {}",
                l.labels
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        Instruction::User(u) => {
            c.user = Some(u.user.clone());
            format!("USER {}", u.user)
        }
        Instruction::Workdir(w) => {
            let abs = workdir_abs.unwrap_or(&w.path).to_string();
            c.working_dir = Some(abs.clone());
            format!("WORKDIR {abs}")
        }
        Instruction::Expose(e) => {
            let ports = c.exposed_ports.get_or_insert_with(BTreeMap::new);
            let mut keys = Vec::new();
            for w in &e.ports {
                for k in expose_keys(w)? {
                    ports.insert(k.clone(), Empty {});
                    keys.push(k);
                }
            }
            graph::expose_history(&keys)
        }
        Instruction::Volume(v) => {
            let vols = c.volumes.get_or_insert_with(BTreeMap::new);
            for p in &v.volumes {
                if p.trim().is_empty() {
                    return Err(ConfigError(
                        "VOLUME specified can not be an empty string".into(),
                    ));
                }
                vols.insert(p.clone(), Empty {});
            }
            format!("VOLUME {}", graph::go_list(&v.volumes))
        }
        Instruction::Entrypoint(e) => {
            let shell = c
                .shell
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| default_shell(&os));
            let args = match &e.command {
                Command::Exec(v) => v.clone(),
                Command::Shell(s) => shell_argv(&shell, s),
            };
            c.entrypoint = Some(args.clone());
            if !meta.cmd_set {
                c.cmd = None;
            }
            format!("ENTRYPOINT {}", graph::go_quote_list(&args))
        }
        Instruction::Cmd(cmd) => {
            let shell = c
                .shell
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| default_shell(&os));
            let args = match &cmd.command {
                Command::Exec(v) => v.clone(),
                Command::Shell(s) => shell_argv(&shell, s),
            };
            c.cmd = Some(args.clone());
            meta.cmd_set = true;
            format!("CMD {}", graph::go_quote_list(&args))
        }
        Instruction::Shell(s) => {
            c.shell = Some(s.shell.clone());
            format!("SHELL {}", graph::go_list(&s.shell))
        }
        Instruction::StopSignal(s) => {
            c.stop_signal = Some(s.signal.clone());
            format!("STOPSIGNAL {}", s.signal)
        }
        Instruction::Healthcheck(h) => {
            let hc = match &h.test {
                HealthTest::None => HealthConfig {
                    test: vec!["NONE".into()],
                    ..HealthConfig::default()
                },
                HealthTest::Cmd {
                    command,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                } => HealthConfig {
                    test: match command {
                        Command::Exec(v) => std::iter::once("CMD".to_string())
                            .chain(v.iter().cloned())
                            .collect(),
                        Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    },
                    interval: duration_ns(*interval),
                    timeout: duration_ns(*timeout),
                    start_period: duration_ns(*start_period),
                    start_interval: duration_ns(*start_interval),
                    retries: (*retries > 0).then_some(i64::from(*retries)),
                    ..HealthConfig::default()
                },
            };
            let text = graph::healthcheck_history(&h.test);
            c.healthcheck = Some(hc);
            text
        }
        Instruction::Onbuild(o) => {
            c.on_build
                .get_or_insert_with(Vec::new)
                .push(o.expression.clone());
            format!("ONBUILD {}", o.expression)
        }
        Instruction::Maintainer(m) => {
            config.author = Some(m.name.clone());
            format!("MAINTAINER {}", m.name)
        }
        Instruction::Arg(_) => return Ok(None),
        Instruction::From(_) | Instruction::Run(_) | Instruction::Copy(_) | Instruction::Add(_) => {
            return Err(ConfigError(format!(
                "{} is not a metadata instruction",
                ins.keyword()
            )))
        }
    };
    Ok(Some(text))
}

/// The history entry BuildKit writes for a step.
pub fn history(created: &str, created_by: String, empty_layer: bool) -> History {
    History {
        created: Some(created.to_string()),
        created_by: Some(created_by),
        comment: Some("buildkit.dockerfile.v0".to_string()),
        empty_layer: empty_layer.then_some(true),
        ..History::default()
    }
}

/// The argv of a RUN in this config (shell form through the stage's SHELL).
pub fn run_argv(config: &ImageConfig, command: &Command) -> Vec<String> {
    argv(config, command)
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

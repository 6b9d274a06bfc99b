//! Builder definitions: `$XDG_CONFIG_HOME/kubectl-build/builders.json`
//! (`~/.config/kubectl-build/builders.json` without it), written atomically
//! with [`kbuild_image::write_atomic`].

use crate::Error;
use kbuild_proto::Endpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the embedded builder.
pub const LOCAL: &str = "local";

/// The file name under the configuration directory.
pub const FILE_NAME: &str = "builders.json";

/// All builder definitions and the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The builder `kubectl build use` chose; `None` is [`LOCAL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Builders by name ([`LOCAL`] is never here).
    #[serde(default)]
    pub builders: BTreeMap<String, Builder>,
}

/// One builder: a driver and its nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Builder {
    /// `remote` or `kubernetes`.
    pub driver: String,
    /// Its nodes, in the order they were added (a kubernetes builder's
    /// nodes are its ready pods, asked from the cluster: none here).
    pub nodes: Vec<Node>,
    /// Where a kubernetes builder's Deployments are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesBuilder>,
}

/// Where a kubernetes builder lives (the cluster itself is the record:
/// its Deployments carry the builder's labels).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesBuilder {
    /// The namespace.
    pub namespace: String,
    /// The kubeconfig context it was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// One daemon of a builder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// `NAME0`, `NAME1`, ... as buildx names them.
    pub name: String,
    /// `unix:///...` or `tcp://host:port`.
    pub endpoint: String,
    /// Platforms the user assigned to this node (`create --platform`),
    /// normalized; empty when the node's own list applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// TLS to a TCP endpoint.
    #[serde(default, skip_serializing_if = "TlsOptions::is_empty")]
    pub tls: TlsOptions,
}

/// Mutual TLS to a node, from `--driver-opt cacert=...,cert=...,key=...`
/// (absolute paths, as buildx's remote driver keeps them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOptions {
    /// The CA that signed the daemon's certificate: enables TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The name to check the daemon's certificate against (default: the endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servername: Option<String>,
}

impl TlsOptions {
    /// No option set.
    pub fn is_empty(&self) -> bool {
        *self == TlsOptions::default()
    }

    /// Parses `--driver-opt` values (`key=value`, comma-separated or
    /// repeated): `cacert`, `cert`, `key` (files, made absolute) and
    /// `servername`. `cert` and `key` go together and need `cacert`.
    pub fn from_driver_opts(opts: &[String]) -> Result<TlsOptions, Error> {
        let mut tls = TlsOptions::default();
        for opt in opts
            .iter()
            .flat_map(|o| o.split(','))
            .filter(|o| !o.is_empty())
        {
            let bad = |reason| Error::DriverOpt {
                opt: opt.to_string(),
                reason,
            };
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            if value.is_empty() {
                return Err(bad("empty value"));
            }
            let file = |key: &'static str| -> Result<PathBuf, Error> {
                std::path::absolute(value)
                    .and_then(|p| std::fs::metadata(&p).map(|_| p))
                    .map_err(|source| Error::TlsFile {
                        key,
                        path: PathBuf::from(value),
                        source,
                    })
            };
            match key {
                "cacert" => tls.cacert = Some(file("cacert")?),
                "cert" => tls.cert = Some(file("cert")?),
                "key" => tls.key = Some(file("key")?),
                "servername" => tls.servername = Some(value.to_string()),
                _ => {
                    return Err(bad(
                        "unknown option; the remote driver takes cacert, cert, key and servername",
                    ))
                }
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(Error::DriverOpt {
                opt: opts.join(","),
                reason: "cert and key go together",
            });
        }
        if tls.cert.is_some() && tls.cacert.is_none() {
            return Err(Error::DriverOpt {
                opt: opts.join(","),
                reason: "a client certificate needs cacert (the CA of the daemon's certificate)",
            });
        }
        Ok(tls)
    }
}

/// The builder file: `$XDG_CONFIG_HOME/kubectl-build/builders.json`, or
/// under `~/.config` without it.
pub fn default_path() -> Result<PathBuf, Error> {
    dirs::config_dir()
        .map(|d| d.join("kubectl-build").join(FILE_NAME))
        .ok_or(Error::NoConfigDir)
}

/// Whether `name` can name a builder (as buildx: letters, digits, `-`,
/// `_`, `.`, starting with a letter or digit).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What `kubectl build create` adds.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// `--driver`.
    pub driver: String,
    /// `--endpoint`.
    pub endpoint: String,
    /// `--platform` (comma lists, repeatable).
    pub platforms: Vec<String>,
    /// `--driver-opt`.
    pub driver_opts: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Config, Error> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(Error::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes `path` atomically, creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let write_err = |source| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Read {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut data = serde_json::to_vec_pretty(self).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        data.push(b'\n');
        kbuild_image::write_atomic(path, &data).map_err(write_err)
    }

    /// Adds a builder `name` with one node, or with `append` one more node
    /// to an existing builder; returns the new node.
    pub fn create(&mut self, name: &str, spec: &NodeSpec, append: bool) -> Result<&Node, Error> {
        if name == LOCAL {
            return Err(Error::Local { action: "replaced" });
        }
        if !valid_name(name) {
            return Err(Error::InvalidName {
                name: name.to_string(),
            });
        }
        if spec.driver != "remote" {
            return Err(Error::Driver {
                driver: spec.driver.clone(),
            });
        }
        let endpoint = Endpoint::parse(&spec.endpoint).map_err(|e| Error::Endpoint(Box::new(e)))?;
        let tls = TlsOptions::from_driver_opts(&spec.driver_opts)?;
        if !tls.is_empty() && !endpoint.is_tcp() {
            return Err(Error::DriverOpt {
                opt: spec.driver_opts.join(","),
                reason: "TLS options apply to tcp:// endpoints only",
            });
        }
        let mut platforms = Vec::new();
        for list in &spec.platforms {
            let parsed = kbuild_platform::parse_list(list).map_err(|source| Error::Platforms {
                list: list.clone(),
                source: Box::new(source),
            })?;
            for p in parsed {
                let p = p.normalized().to_string();
                if !platforms.contains(&p) {
                    platforms.push(p);
                }
            }
        }
        match (self.builders.get(name), append) {
            (Some(_), false) => {
                return Err(Error::Exists {
                    name: name.to_string(),
                })
            }
            (None, true) => {
                return Err(Error::NotFound {
                    name: name.to_string(),
                })
            }
            (Some(b), true) if b.driver != spec.driver => {
                return Err(Error::Driver {
                    driver: spec.driver.clone(),
                })
            }
            _ => {}
        }
        let builder = self.builders.entry(name.to_string()).or_insert(Builder {
            driver: spec.driver.clone(),
            nodes: Vec::new(),
            kubernetes: None,
        });
        // NAME0, NAME1, ...: the first index no node uses.
        let node_name = (0..)
            .map(|i| format!("{name}{i}"))
            .find(|n| builder.nodes.iter().all(|node| &node.name != n))
            .unwrap_or_else(|| name.to_string());
        builder.nodes.push(Node {
            name: node_name,
            endpoint: endpoint.to_string(),
            platforms,
            tls,
        });
        Ok(builder.nodes.last().expect("a node was just pushed"))
    }

    /// Records kubernetes builder `name` (made in the cluster) so `use`
    /// and `ls` know it; an existing record of it is replaced.
    pub fn record_kubernetes(
        &mut self,
        name: &str,
        namespace: &str,
        context: Option<&str>,
    ) -> Result<(), Error> {
        if name == LOCAL {
            return Err(Error::Local { action: "replaced" });
        }
        if !valid_name(name) {
            return Err(Error::InvalidName {
                name: name.to_string(),
            });
        }
        match self.builders.get(name) {
            Some(b) if b.driver != crate::kubernetes::DRIVER => Err(Error::Exists {
                name: name.to_string(),
            }),
            _ => {
                self.builders.insert(
                    name.to_string(),
                    Builder {
                        driver: crate::kubernetes::DRIVER.to_string(),
                        nodes: Vec::new(),
                        kubernetes: Some(KubernetesBuilder {
                            namespace: namespace.to_string(),
                            context: context.map(str::to_string),
                        }),
                    },
                );
                Ok(())
            }
        }
    }

    /// Removes builder `name`; the default goes back to [`LOCAL`] if it was `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        if name == LOCAL {
            return Err(Error::Local { action: "removed" });
        }
        if self.builders.remove(name).is_none() {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        }
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(())
    }

    /// Makes `name` the default builder.
    pub fn use_builder(&mut self, name: &str) -> Result<(), Error> {
        if name == LOCAL {
            self.current = None;
            return Ok(());
        }
        if !self.builders.contains_key(name) {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        }
        self.current = Some(name.to_string());
        Ok(())
    }

    /// The default builder's name.
    pub fn current(&self) -> &str {
        self.current.as_deref().unwrap_or(LOCAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str) -> NodeSpec {
        NodeSpec {
            driver: "remote".into(),
            endpoint: endpoint.into(),
            platforms: vec!["linux/arm64,linux/arm/v7".into()],
            driver_opts: vec![],
        }
    }

    #[test]
    fn create_append_use_remove_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/builders.json");
        let mut c = Config::load(&path).unwrap();
        assert_eq!(c.current(), LOCAL);
        c.create("b", &spec("unix:///run/x.sock"), false).unwrap();
        assert!(matches!(
            c.create("b", &spec("unix:///run/y.sock"), false),
            Err(Error::Exists { .. })
        ));
        assert_eq!(
            c.create("b", &spec("tcp://[::1]:9").clone(), true)
                .unwrap()
                .name,
            "b1"
        );
        assert!(matches!(
            c.create("nope", &spec("unix:///a"), true),
            Err(Error::NotFound { .. })
        ));
        c.use_builder("b").unwrap();
        c.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.builders["b"].nodes[0].platforms,
            ["linux/arm64", "linux/arm/v7"]
        );
        let mut back = back;
        assert!(matches!(back.remove(LOCAL), Err(Error::Local { .. })));
        back.remove("b").unwrap();
        assert_eq!(back.current(), LOCAL);
    }

    #[test]
    fn kubernetes_builders_are_recorded_with_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builders.json");
        let mut c = Config::default();
        c.record_kubernetes("kb", "team", Some("ctx")).unwrap();
        c.record_kubernetes("kb", "other", None).unwrap();
        c.create("r", &spec("unix:///a"), false).unwrap();
        assert!(matches!(
            c.record_kubernetes("r", "team", None),
            Err(Error::Exists { .. })
        ));
        c.use_builder("kb").unwrap();
        c.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back, c);
        let kb = &back.builders["kb"];
        assert_eq!(kb.driver, "kubernetes");
        assert_eq!(kb.kubernetes.as_ref().unwrap().namespace, "other");
        // A file written before the kubernetes driver still reads.
        let old = r#"{"builders":{"r":{"driver":"remote","nodes":[]}}}"#;
        std::fs::write(&path, old).unwrap();
        assert!(Config::load(&path).unwrap().builders["r"]
            .kubernetes
            .is_none());
    }

    #[test]
    fn names_and_driver_opts_are_checked() {
        let mut c = Config::default();
        for bad in ["", "-x", "a b", "a/b"] {
            assert!(matches!(
                c.create(bad, &spec("unix:///a"), false),
                Err(Error::InvalidName { .. })
            ));
        }
        assert!(matches!(
            c.create(LOCAL, &spec("unix:///a"), false),
            Err(Error::Local { .. })
        ));
        assert!(TlsOptions::from_driver_opts(&["cacert".into()]).is_err());
        assert!(TlsOptions::from_driver_opts(&["colour=blue".into()]).is_err());
        assert!(matches!(
            TlsOptions::from_driver_opts(&["cacert=/nonexistent/ca.pem".into()]),
            Err(Error::TlsFile { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pem");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_str().unwrap();
        assert!(TlsOptions::from_driver_opts(&[format!("cacert={f},cert={f}")]).is_err());
        let ok =
            TlsOptions::from_driver_opts(&[format!("cacert={f},cert={f}"), format!("key={f}")])
                .unwrap();
        assert_eq!(ok.key.as_deref(), Some(Path::new(f)));
        let mut s = spec("unix:///a");
        s.driver_opts = vec![format!("cacert={f}")];
        assert!(matches!(
            c.create("u", &s, false),
            Err(Error::DriverOpt { .. })
        ));
    }
}

//! The driver's calls to the API server, with the user's own rights:
//! create a builder's Deployments and wait for their pods, list builders
//! and their pods by label, remove everything a builder made, and read a
//! registry secret.

use super::spec::{self, Options, Pool};
use super::{
    Error, Resolved, SecretFormatProblem, BUILDER_LABEL, MANAGED_BY, PLATFORMS_ANNOTATION,
    POOL_LABEL,
};
use crate::config::Node;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A cluster and the namespace builders live in.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: kube::Client,
    /// The namespace.
    pub namespace: String,
    /// The kubeconfig context used.
    pub context: String,
}

/// One builder pod as the API server reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodStatus {
    /// The pod.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The node it runs on.
    pub node: Option<String>,
    /// Whether its readiness probe (the daemon answering Info) passes.
    pub ready: bool,
    /// Its pool (`amd64`, `arm64`, `any`).
    pub pool: String,
    /// The platforms its pool declares.
    pub platforms: Vec<String>,
    /// Why it is not running, when the kubelet says (`ErrImagePull`, ...).
    pub waiting: Option<String>,
    /// Whether it is being deleted.
    pub terminating: bool,
    /// Whether it mounts its node's containerd socket (`--load`).
    pub containerd_socket: bool,
}

impl PodStatus {
    /// The pod as a node of a builder: its endpoint names the pod.
    pub fn node(&self) -> Node {
        Node {
            name: self.name.clone(),
            endpoint: format!("kubernetes://{}/{}", self.namespace, self.name),
            platforms: self.platforms.clone(),
            tls: Default::default(),
        }
    }
}

/// What a builder is made of.
#[derive(Clone, Debug, Default)]
pub struct BuilderPods {
    /// Its Deployments: name, pool, replicas wanted.
    pub deployments: Vec<(String, String, i32)>,
    /// Their pods.
    pub pods: Vec<PodStatus>,
}

impl BuilderPods {
    /// The pods ready to build, as nodes.
    pub fn ready_nodes(&self) -> Vec<Node> {
        self.pods
            .iter()
            .filter(|p| p.ready && !p.terminating)
            .map(PodStatus::node)
            .collect()
    }

    /// Pods wanted by the Deployments.
    pub fn wanted(&self) -> usize {
        self.deployments
            .iter()
            .map(|(_, _, r)| (*r).max(0) as usize)
            .sum()
    }
}

fn pod_status(p: &Pod, namespace: &str) -> PodStatus {
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let annotations = p.metadata.annotations.clone().unwrap_or_default();
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter().find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                let reason = w.reason.clone().unwrap_or_default();
                Some(match &w.message {
                    Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                    _ => reason,
                })
            })
        })
        .filter(|w| !w.is_empty() && w != "ContainerCreating");
    PodStatus {
        name: p.metadata.name.clone().unwrap_or_default(),
        namespace: namespace.to_string(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready,
        pool: labels.get(POOL_LABEL).cloned().unwrap_or_default(),
        platforms: annotations
            .get(PLATFORMS_ANNOTATION)
            .map(|s| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        waiting,
        terminating: p.metadata.deletion_timestamp.is_some(),
        containerd_socket: p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == spec::CONTAINERD_VOLUME)),
    }
}

impl Cluster {
    /// A client for `resolved`, in namespace `namespace` (else the resolved one).
    pub fn new(resolved: Resolved, namespace: Option<&str>) -> Result<Cluster, Error> {
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| resolved.namespace.clone());
        let context = resolved.context.clone();
        let client = kube::Client::try_from(resolved.config).map_err(|source| Error::Client {
            context: context.clone(),
            source: Box::new(source),
        })?;
        Ok(Cluster {
            client,
            namespace,
            context,
        })
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The names of the builders in the namespace (by label), sorted.
    pub async fn builders(&self) -> Result<Vec<String>, Error> {
        let list = self
            .deployments()
            .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
            .await
            .map_err(|e| Error::api("list", "deployments.apps", &self.namespace, e))?;
        let names: BTreeSet<String> = list
            .items
            .iter()
            .filter_map(|d| d.metadata.labels.as_ref()?.get(BUILDER_LABEL).cloned())
            .collect();
        Ok(names.into_iter().collect())
    }

    /// The builders of every namespace (by label) as (namespace, name),
    /// sorted: a cluster-wide list, which the user may be refused
    /// ([`Error::Forbidden`] in namespace `*`).
    pub async fn all_builders(&self) -> Result<Vec<(String, String)>, Error> {
        let api: Api<Deployment> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
            .await
            .map_err(|e| Error::api("list", "deployments.apps", "*", e))?;
        let names: BTreeSet<(String, String)> = list
            .items
            .iter()
            .filter_map(|d| {
                Some((
                    d.metadata.namespace.clone()?,
                    d.metadata.labels.as_ref()?.get(BUILDER_LABEL).cloned()?,
                ))
            })
            .collect();
        Ok(names.into_iter().collect())
    }

    /// This cluster's client in namespace `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Cluster {
        Cluster {
            namespace: namespace.to_string(),
            ..self.clone()
        }
    }

    /// Builder `name`'s Deployments and pods; `None` when it has no Deployment.
    pub async fn status(&self, name: &str) -> Result<Option<BuilderPods>, Error> {
        let selector = spec::selector(name);
        let deployments = self
            .deployments()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::api("list", "deployments.apps", &self.namespace, e))?;
        if deployments.items.is_empty() {
            return Ok(None);
        }
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::api("list", "pods", &self.namespace, e))?;
        let mut out = BuilderPods {
            deployments: deployments
                .items
                .iter()
                .map(|d| {
                    (
                        d.metadata.name.clone().unwrap_or_default(),
                        d.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(POOL_LABEL).cloned())
                            .unwrap_or_default(),
                        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )
                })
                .collect(),
            pods: pods
                .items
                .iter()
                .map(|p| pod_status(p, &self.namespace))
                .collect(),
        };
        out.pods
            .sort_by(|a, b| (&a.pool, &a.name).cmp(&(&b.pool, &b.name)));
        Ok(Some(out))
    }

    /// Creates the Deployments of `pools` for builder `name` (with
    /// `append`, next to the existing ones; a pool that exists is refused).
    /// Returns the Deployments made.
    pub async fn create(
        &self,
        name: &str,
        pools: &[Pool],
        image: &str,
        options: &Options,
        append: bool,
    ) -> Result<Vec<String>, Error> {
        let existing = match self.status(name).await {
            Ok(e) => e,
            // Without the right to list, creating says what is missing
            // for the task at hand (create deployments).
            Err(Error::Forbidden { .. }) if !append => None,
            Err(e) => return Err(e),
        };
        match (&existing, append) {
            (Some(b), false) => {
                return Err(Error::Exists {
                    builder: name.to_string(),
                    what: format!("Deployment {}", b.deployments[0].0),
                    namespace: self.namespace.clone(),
                })
            }
            (None, true) => {
                return Err(Error::NotFound {
                    builder: name.to_string(),
                    namespace: self.namespace.clone(),
                })
            }
            _ => {}
        }
        let taken: Vec<String> = existing
            .iter()
            .flat_map(|b| b.deployments.iter().map(|(n, _, _)| n.clone()))
            .collect();
        for pool in pools {
            let dep = spec::deployment_name(name, pool);
            if taken.contains(&dep) {
                return Err(Error::Exists {
                    builder: name.to_string(),
                    what: format!("Deployment {dep}"),
                    namespace: self.namespace.clone(),
                });
            }
        }
        let mut made = Vec::new();
        for pool in pools {
            let d = spec::deployment(name, &self.namespace, pool, image, options);
            self.deployments()
                .create(&PostParams::default(), &d)
                .await
                .map_err(|e| Error::api("create", "deployments.apps", &self.namespace, e))?;
            made.push(spec::deployment_name(name, pool));
        }
        Ok(made)
    }

    /// Waits until every pod builder `name`'s Deployments want is ready.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<BuilderPods, Error> {
        let started = Instant::now();
        loop {
            let status = self.status(name).await?.ok_or_else(|| Error::NotFound {
                builder: name.to_string(),
                namespace: self.namespace.clone(),
            })?;
            let ready = status.ready_nodes().len();
            if ready >= status.wanted() && ready > 0 {
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                return Err(Error::NotReady {
                    builder: name.to_string(),
                    namespace: self.namespace.clone(),
                    ready,
                    wanted: status.wanted(),
                    waited: started.elapsed(),
                    detail: status
                        .pods
                        .iter()
                        .find_map(|p| p.waiting.as_ref().map(|w| format!("pod {}: {w}", p.name))),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes everything builder `name` made (its Deployments, by label,
    /// and with them their pods) and waits until none is left.
    pub async fn remove(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let selector = spec::selector(name);
        let deployments = self
            .deployments()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::api("list", "deployments.apps", &self.namespace, e))?;
        if deployments.items.is_empty() {
            return Err(Error::NotFound {
                builder: name.to_string(),
                namespace: self.namespace.clone(),
            });
        }
        for d in &deployments.items {
            let dname = d.metadata.name.clone().unwrap_or_default();
            match self
                .deployments()
                .delete(&dname, &DeleteParams::foreground())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::api("delete", "deployments.apps", &self.namespace, e)),
            }
        }
        let started = Instant::now();
        loop {
            let left_d = self
                .deployments()
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| Error::api("list", "deployments.apps", &self.namespace, e))?;
            let left_p = self
                .pods()
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| Error::api("list", "pods", &self.namespace, e))?;
            if left_d.items.is_empty() && left_p.items.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let mut left: Vec<String> = left_d
                    .items
                    .iter()
                    .map(|d| format!("deployment/{}", d.metadata.name.clone().unwrap_or_default()))
                    .collect();
                left.extend(
                    left_p
                        .items
                        .iter()
                        .map(|p| format!("pod/{}", p.metadata.name.clone().unwrap_or_default())),
                );
                return Err(Error::NotGone {
                    builder: name.to_string(),
                    namespace: self.namespace.clone(),
                    left: left.join(", "),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The dockerconfigjson of registry secret `name`: `Ok(None)` when it
    /// does not exist.
    pub async fn registry_secret(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = match api.get(name).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(Error::api("get", "secrets", &self.namespace, e)),
        };
        let bad = |reason| Error::SecretFormat {
            name: name.to_string(),
            namespace: self.namespace.clone(),
            reason,
        };
        let kind = secret.type_.clone().unwrap_or_default();
        let data = secret.data.unwrap_or_default();
        let key = match kind.as_str() {
            "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
            "kubernetes.io/dockercfg" => return Err(bad(SecretFormatProblem::Dockercfg)),
            _ => return Err(bad(SecretFormatProblem::Type(kind.clone()))),
        };
        let bytes = data
            .get(key)
            .ok_or_else(|| bad(SecretFormatProblem::NoKey(key)))?;
        Ok(Some(bytes.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_reads_readiness_pool_platforms_and_why_it_waits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "b-arm64-1", "namespace": "ns",
                "labels": {POOL_LABEL: "arm64"},
                "annotations": {PLATFORMS_ANNOTATION: "linux/arm64,linux/arm/v7"}
            },
            "spec": {"nodeName": "n2", "containers": []},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "builder", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}
                }]
            }
        }))
        .unwrap();
        let s = pod_status(&pod, "ns");
        assert!(!s.ready);
        assert_eq!(s.node.as_deref(), Some("n2"));
        assert_eq!(s.waiting.as_deref(), Some("ErrImagePull: not found"));
        assert_eq!(s.platforms, ["linux/arm64", "linux/arm/v7"]);
        let node = s.node();
        assert_eq!(node.endpoint, "kubernetes://ns/b-arm64-1");
        assert_eq!(node.platforms, ["linux/arm64", "linux/arm/v7"]);
        let b = BuilderPods {
            deployments: vec![("b-arm64".into(), "arm64".into(), 2)],
            pods: vec![s.clone(), PodStatus { ready: true, ..s }],
        };
        assert_eq!(b.wanted(), 2);
        assert_eq!(b.ready_nodes().len(), 1);
    }
}

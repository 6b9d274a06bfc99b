//! The kubernetes driver: builders are Deployments of `kubectl-build serve`
//! pods in a namespace, created, listed and removed through the API server
//! with the user's own kubeconfig and RBAC, and reached by exec into the pod
//! (`kubectl-build dial-stdio`), so nothing listens on the pod network.
//!
//! - [`kubeconfig`]: which cluster, context and namespace, as kubectl picks them;
//! - [`spec`]: `--driver-opt` options and the Deployments they make (pure);
//! - [`api`]: create, list, remove, read a registry secret;
//! - [`dial`]: the [`crate::Dialer`] that execs into a builder pod.

pub mod api;
pub mod dial;
pub mod kubeconfig;
pub mod spec;

pub use api::{BuilderPods, Cluster, PodStatus};
pub use dial::PodDialer;
pub use kubeconfig::{Resolved, Selection};
pub use spec::{Options, Pool};

use std::path::PathBuf;

/// The driver's name in `create --driver` and `builders.json`.
pub const DRIVER: &str = "kubernetes";

/// Label every object the driver makes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-build");
/// Label naming the builder an object belongs to.
pub const BUILDER_LABEL: &str = "kubectl-build.io/builder";
/// Label naming the pool (Deployment) within the builder.
pub const POOL_LABEL: &str = "kubectl-build.io/pool";
/// Label with the pool's `kubernetes.io/arch` (absent without `--platform`).
pub const ARCH_LABEL: &str = "kubectl-build.io/arch";
/// Label with the arm variant of a 32-bit arm pool (`v6`, `v7`).
pub const VARIANT_LABEL: &str = "kubectl-build.io/variant";
/// Annotation with the pool's declared platforms, comma-separated.
pub const PLATFORMS_ANNOTATION: &str = "kubectl-build.io/platforms";
/// The container running the daemon.
pub const CONTAINER: &str = "builder";
/// Where the daemon listens inside the pod.
pub const SOCKET: &str = "unix:///run/kubectl-build/builder.sock";
/// The environment variable naming the builder image.
pub const IMAGE_ENV: &str = "KUBECTL_BUILD_BUILDER_IMAGE";
/// The binary's path in the builder image.
pub const BINARY: &str = "/usr/local/bin/kubectl-build";

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--kubeconfig` or a file of `$KUBECONFIG` could not be read or parsed.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<kube::config::KubeconfigError>,
    },
    /// `--kubeconfig` names a file that does not exist.
    #[error("--kubeconfig {}: no such file", path.display())]
    KubeconfigMissing {
        /// The file.
        path: PathBuf,
    },
    /// No context to use.
    #[error("kubeconfig {files}: no current-context; pass --context NAME")]
    NoContext {
        /// The files read.
        files: String,
    },
    /// The kubeconfig's context cannot be turned into a client.
    #[error("kubeconfig {files}, context {context}: {source}")]
    Context {
        /// The files read.
        files: String,
        /// The context.
        context: String,
        /// Why.
        source: Box<kube::config::KubeconfigError>,
    },
    /// The client could not be made (TLS material, proxy).
    #[error("cluster of context {context}: {source}")]
    Client {
        /// The context.
        context: String,
        /// Why.
        source: Box<kube::Error>,
    },
    /// The API server refused for lack of rights.
    #[error("cannot {verb} {resource} in namespace {namespace}: ask your cluster admin for the Role in deploy/rbac/role.yaml (see README, \"Kubernetes permissions\")")]
    Forbidden {
        /// `create`, `list`, `get`, `delete`.
        verb: &'static str,
        /// `deployments.apps`, `pods`, `pods/exec`, `secrets`.
        resource: &'static str,
        /// The namespace.
        namespace: String,
        /// What the API server said.
        source: Box<kube::Error>,
    },
    /// Any other failed API call.
    #[error("{verb} {resource} in namespace {namespace}: {source}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// The namespace.
        namespace: String,
        /// Why.
        source: Box<kube::Error>,
    },
    /// A malformed `--driver-opt`.
    #[error("--driver-opt {opt:?}: {reason}")]
    DriverOpt {
        /// The option.
        opt: String,
        /// Why.
        #[source]
        reason: OptProblem,
    },
    /// No builder image was named.
    #[error("no builder image: pass --driver-opt image=REGISTRY/kubectl-build/builder:TAG or set ${IMAGE_ENV}; build and push one with scripts/builder-pod-image.sh (see README, \"The builder image\")")]
    NoImage,
    /// `create` of a builder or pool that exists.
    #[error("builder {builder} already has {what} in namespace {namespace}; pass --append with other --platform values to add a pool, or remove it first with \"kubectl build rm {builder}\"")]
    Exists {
        /// The builder.
        builder: String,
        /// `a pool for linux/arm64`, `Deployment NAME`.
        what: String,
        /// The namespace.
        namespace: String,
    },
    /// No Deployment carries the builder's label.
    #[error("no builder {builder} in namespace {namespace}; \"kubectl build ls\" lists them")]
    NotFound {
        /// The builder.
        builder: String,
        /// The namespace.
        namespace: String,
    },
    /// The builder's pods did not become ready in time.
    #[error("builder {builder} in namespace {namespace}: {ready} of {wanted} pods ready after {}s{}", waited.as_secs(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NotReady {
        /// The builder.
        builder: String,
        /// The namespace.
        namespace: String,
        /// Ready pods.
        ready: usize,
        /// Pods wanted.
        wanted: usize,
        /// How long we waited.
        waited: std::time::Duration,
        /// What the pods report (an image that cannot be pulled, a crash).
        detail: Option<String>,
    },
    /// Objects were still there after `rm` waited.
    #[error("builder {builder} in namespace {namespace}: {left} still present after {}s", waited.as_secs())]
    NotGone {
        /// The builder.
        builder: String,
        /// The namespace.
        namespace: String,
        /// What is left.
        left: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// `--load` (or `-o type=containerd`) on a builder whose pods do not
    /// mount their node's containerd socket.
    #[error("--load on builder {builder} loads through each node's containerd socket, which pod(s) {pods} do not mount: recreate the builder with it, \"kubectl build rm {builder}\" then \"kubectl build create {builder} --driver kubernetes --driver-opt containerd-socket={}\" (with the --platform pools it had)", super::kubernetes::spec::CONTAINERD_DEFAULT)]
    NoContainerdSocket {
        /// The builder.
        builder: String,
        /// The pods without it.
        pods: String,
    },
    /// A registry secret named by `--registry-secret` does not exist.
    #[error("registry secret {name} not found in namespace {namespace}; create it with \"kubectl create secret docker-registry {name} --docker-server=... --docker-username=... --docker-password=...\"")]
    SecretNotFound {
        /// The secret.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// A registry secret that is not a dockerconfigjson.
    #[error("registry secret {namespace}/{name}: {reason}")]
    SecretFormat {
        /// The secret.
        name: String,
        /// The namespace.
        namespace: String,
        /// What is wrong.
        #[source]
        reason: SecretFormatProblem,
    },
    /// Its dockerconfigjson does not parse.
    #[error("registry secret {namespace}/{name}: {source}")]
    SecretCredentials {
        /// The secret.
        name: String,
        /// The namespace.
        namespace: String,
        /// Why.
        source: Box<kbuild_registry::Error>,
    },
}

/// What is wrong with a kubernetes `--driver-opt` ([`Error::DriverOpt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptProblem {
    /// A field without `=`.
    #[error("expected KEY=VALUE")]
    NotKeyValue,
    /// `KEY=` alone.
    #[error("empty value")]
    EmptyValue,
    /// `replicas=` out of range or not a number.
    #[error("replicas must be a number from 1 to 100")]
    Replicas,
    /// A `nodeselector=` pair without `=`.
    #[error("nodeselector takes LABEL=VALUE pairs, comma-separated (quote the whole option)")]
    NodeSelector,
    /// A request or limit that is not a quantity.
    #[error("not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)")]
    Quantity,
    /// `rootless=true`.
    #[error("rootless builder pods are not served: the daemon mounts overlay filesystems and registers QEMU with binfmt_misc, which need a privileged container (rootless=false, the default)")]
    Rootless,
    /// `rootless=` neither true nor false.
    #[error("rootless takes true or false")]
    RootlessBool,
    /// `containerd-socket=` that is no absolute path nor a boolean.
    #[error("containerd-socket takes an absolute path on the node, or true for /run/containerd/containerd.sock")]
    ContainerdSocket,
    /// `timeout=` that is not a positive number of seconds.
    #[error("timeout takes seconds")]
    Timeout,
    /// An option this driver does not take.
    #[error("unknown option; the kubernetes driver takes replicas, image, namespace, nodeselector, tolerations, requests.cpu, requests.memory, limits.cpu, limits.memory, rootless, containerd-socket, timeout")]
    UnknownOption,
    /// A `--platform` other than linux.
    #[error("builder pods run on linux nodes; images for other systems (COPY-only) build on any of them, so list only linux platforms here")]
    NotLinux,
    /// A toleration field without `=`.
    #[error("toleration field {0:?}: expected KEY=VALUE")]
    TolerationField(String),
    /// An unknown toleration operator.
    #[error("toleration operator {0:?}: use Equal or Exists")]
    TolerationOperator(String),
    /// An unknown toleration effect.
    #[error("toleration effect {0:?}: use NoSchedule, PreferNoSchedule or NoExecute")]
    TolerationEffect(String),
    /// `tolerationSeconds=` that is not a number.
    #[error("tolerationSeconds {value:?} is not a number")]
    TolerationSeconds {
        /// The value as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A toleration field Kubernetes does not have.
    #[error("unknown toleration field {0:?}; use key, value, operator, effect, tolerationSeconds")]
    UnknownTolerationField(String),
    /// `operator=Exists` with a value.
    #[error("a toleration with operator=Exists takes no value")]
    ExistsWithValue,
    /// No key and an operator other than Exists.
    #[error("a toleration without a key needs operator=Exists")]
    KeylessNotExists,
}

/// Why a registry secret is not a dockerconfigjson ([`Error::SecretFormat`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFormatProblem {
    /// A `kubernetes.io/dockercfg` secret.
    #[error("type kubernetes.io/dockercfg (the old format) is not read; recreate it with kubectl create secret docker-registry")]
    Dockercfg,
    /// Another secret type (named).
    #[error("type {0:?}, not kubernetes.io/dockerconfigjson; create it with kubectl create secret docker-registry")]
    Type(String),
    /// The data key the type has is missing.
    #[error("no {0} key")]
    NoKey(&'static str),
}

impl Error {
    /// Maps a failed API call: 403 to [`Error::Forbidden`] naming the verb
    /// and resource, anything else to [`Error::Api`].
    pub fn api(
        verb: &'static str,
        resource: &'static str,
        namespace: &str,
        e: kube::Error,
    ) -> Error {
        if matches!(&e, kube::Error::Api(s) if s.code == 403) {
            return Error::Forbidden {
                verb,
                resource,
                namespace: namespace.to_string(),
                source: Box::new(e),
            };
        }
        Error::Api {
            verb,
            resource,
            namespace: namespace.to_string(),
            source: Box::new(e),
        }
    }

    /// Whether this is a 404 from the API server.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.to_string(),
            message: "deployments.apps is forbidden: User \"u\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"x\"".to_string(),
            ..Default::default()
        }))
    }

    #[test]
    fn forbidden_names_the_verb_resource_namespace_and_the_role() {
        let e = Error::api("create", "deployments.apps", "x", status(403, "Forbidden"));
        assert_eq!(
            e.to_string(),
            "cannot create deployments.apps in namespace x: ask your cluster admin for the Role in deploy/rbac/role.yaml (see README, \"Kubernetes permissions\")"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::api("get", "secrets", "x", status(404, "NotFound"));
        assert!(e.is_not_found());
        assert!(e.to_string().starts_with("get secrets in namespace x: "));
    }
}

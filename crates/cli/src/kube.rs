//! The kubernetes driver on the command line: which cluster (kubectl's
//! `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, `--context`, `-n`),
//! `create/ls/rm` of builders made of pods, builds sent to those pods
//! through the API server, registry secrets read from the cluster, and the
//! two helpers that run inside a builder pod (`dial-stdio`, `health`).

use crate::args::{BuildArgs, CreateArgs, GlobalArgs, Progress as ProgressMode};
use crate::build::BuildError;
use crate::request::BuildRequest;
use kbuild_driver::kubernetes::{self as k8s, spec, Cluster, Options, PodDialer, Selection};
use kbuild_driver::{Dialer, Node, NodeInfo};
use kbuild_platform::Platform;
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The kubernetes driver's default builder, created on first use.
pub const DEFAULT_BUILDER: &str = "buildkit";

/// How long `rm` waits for the pods to go.
const RM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `ls` and builds wait for each pod's Info.
const INFO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command of the kubernetes driver could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No cluster although the command line named one.
    #[error("{flag} needs a cluster, and there is no kubeconfig: pass --kubeconfig FILE or set $KUBECONFIG (or create ~/.kube/config)")]
    NoCluster {
        /// The flag that named it.
        flag: &'static str,
    },
    /// `create --driver kubernetes` without a cluster.
    #[error("the kubernetes driver needs a cluster: pass --kubeconfig FILE or set $KUBECONFIG (or create ~/.kube/config)")]
    DriverNeedsCluster,
    /// A build on a kubernetes builder without a cluster.
    #[error("builder {name} is a kubernetes builder, and there is no kubeconfig: pass --kubeconfig FILE or set $KUBECONFIG")]
    BuilderNeedsCluster {
        /// The builder.
        name: String,
    },
    /// `--builder NAME` names no builder at all.
    #[error("no builder {name}; kubectl build ls lists them")]
    NoBuilder {
        /// The builder.
        name: String,
    },
    /// `create --endpoint` with the kubernetes driver.
    #[error("--endpoint is for the remote driver; the kubernetes driver makes its own pods")]
    Endpoint,
    /// A builder name Kubernetes cannot name its objects after.
    #[error("invalid kubernetes builder name {name:?}: use lowercase letters, digits and '-' (at most 40), as its Deployments and pods are named after it")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The kubeconfig or the API server.
    #[error(transparent)]
    Kubernetes(#[from] k8s::Error),
    /// The runtime of the command did not start.
    #[error("start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A task asking a pod ended without an answer.
    #[error("{0}")]
    Task(#[source] tokio::task::JoinError),
    /// `dial-stdio` of another endpoint than a unix socket.
    #[error("dial-stdio {addr}: only unix:// sockets")]
    NotUnix {
        /// The address as given.
        addr: String,
    },
    /// `dial-stdio` cannot connect to the daemon's socket.
    #[error("connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `dial-stdio` lost the daemon's socket or its standard output.
    #[error("dial-stdio {}: {source}", path.display())]
    Relay {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `dial-stdio` cannot flush its standard output.
    #[error("dial-stdio: standard output: {0}")]
    Stdout(#[source] std::io::Error),
}

impl From<KubeError> for BuildError {
    fn from(e: KubeError) -> Self {
        BuildError::Kube(Box::new(e))
    }
}

/// Why a pod of a kubernetes builder shows no Info in `ls`.
#[derive(Debug, thiserror::Error)]
pub enum PodProblem {
    /// The pod is ready but its daemon did not answer.
    #[error("{0}")]
    Dial(#[source] kbuild_driver::Error),
    /// What Kubernetes says the pod waits for.
    #[error("{0}")]
    Waiting(String),
    /// The pod is not ready, for no reason Kubernetes gives.
    #[error("not ready")]
    NotReady,
    /// A recorded builder whose Deployment is gone.
    #[error("no Deployment left in the cluster; kubectl build rm removes the record")]
    NoDeployment,
}

fn selection(g: &GlobalArgs) -> Selection {
    Selection {
        kubeconfig: g.kubeconfig.clone(),
        context: g.context.clone(),
        namespace: g.namespace.clone(),
    }
}

/// The flag that names a cluster, if any was given.
fn explicit(g: &GlobalArgs) -> Option<&'static str> {
    if g.kubeconfig.is_some() {
        Some("--kubeconfig")
    } else if g.context.is_some() {
        Some("--context")
    } else if g.namespace.is_some() {
        Some("--namespace")
    } else {
        None
    }
}

/// The cluster of the kubeconfig, in `namespace` (else `-n`, else the
/// context's): `None` when there is none and none was asked for.
pub async fn cluster(
    g: &GlobalArgs,
    namespace: Option<&str>,
) -> std::result::Result<Option<Cluster>, KubeError> {
    let resolved = k8s::kubeconfig::resolve(&selection(g)).await?;
    match resolved {
        Some(r) => {
            let ns = g.namespace.as_deref().or(namespace);
            Ok(Some(Cluster::new(r, ns)?))
        }
        None => match explicit(g) {
            Some(flag) => Err(KubeError::NoCluster { flag }),
            None => Ok(None),
        },
    }
}

fn image(options: &Options) -> std::result::Result<String, k8s::Error> {
    options
        .image
        .clone()
        .or_else(|| std::env::var(k8s::IMAGE_ENV).ok().filter(|v| !v.is_empty()))
        .ok_or(k8s::Error::NoImage)
}

/// Records builder `name` in the builder list (for `use`), when it can be
/// written; the cluster stays the record.
fn record(name: &str, cluster: &Cluster) {
    let saved = kbuild_driver::config::default_path().and_then(|path| {
        let mut c = kbuild_driver::Config::load(&path)?;
        c.record_kubernetes(name, &cluster.namespace, Some(&cluster.context))?;
        c.save(&path)
    });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not record the builder in the builder list");
    }
}

/// Creates builder `name` (`pools` of `options`) and waits for its pods.
async fn create_in(
    cluster: &Cluster,
    name: &str,
    pools: &[spec::Pool],
    options: &Options,
    append: bool,
) -> std::result::Result<k8s::BuilderPods, k8s::Error> {
    let image = image(options)?;
    cluster.create(name, pools, &image, options, append).await?;
    cluster
        .wait_ready(name, Duration::from_secs(options.timeout))
        .await
}

/// `kubectl build create NAME --driver kubernetes`.
pub fn create(args: &CreateArgs, g: &GlobalArgs) -> Result<ExitCode> {
    if args.endpoint.is_some() {
        return Err(KubeError::Endpoint.into());
    }
    if !spec::valid_name(&args.name) {
        return Err(KubeError::InvalidName {
            name: args.name.clone(),
        }
        .into());
    }
    let options = Options::parse(&args.driver_opts)?;
    let pools = spec::pools(&crate::builders::platform_flags(&args.platforms)?)?;
    let rt = crate::builders::runtime()?;
    let (cluster, status) = rt.block_on(async {
        let cluster = cluster(g, options.namespace.as_deref())
            .await?
            .ok_or(KubeError::DriverNeedsCluster)?;
        let status = create_in(&cluster, &args.name, &pools, &options, args.append).await?;
        Ok::<_, KubeError>((cluster, status))
    })?;
    record(&args.name, &cluster);
    eprintln!(
        "builder {} in namespace {}: {} pod(s) ready",
        args.name,
        cluster.namespace,
        status.ready_nodes().len()
    );
    println!("{}", args.name);
    Ok(ExitCode::SUCCESS)
}

/// The namespace builder `name` was recorded in, if it is a kubernetes builder of the list.
pub(crate) fn recorded(name: &str) -> Option<kbuild_driver::config::KubernetesBuilder> {
    let path = kbuild_driver::config::default_path().ok()?;
    let c = kbuild_driver::Config::load(&path).ok()?;
    c.builders.get(name)?.kubernetes.clone()
}

/// `kubectl build rm NAME` of a kubernetes builder: `Ok(None)` when `name`
/// is no kubernetes builder (neither recorded nor in the cluster).
pub fn rm(name: &str, g: &GlobalArgs) -> Result<Option<ExitCode>> {
    let rec = recorded(name);
    let rt = crate::builders::runtime()?;
    let removed = rt.block_on(async {
        let Some(cluster) = cluster(g, rec.as_ref().map(|r| r.namespace.as_str())).await? else {
            return Ok::<_, KubeError>(None);
        };
        match cluster.remove(name, RM_TIMEOUT).await {
            Ok(()) => Ok(Some(cluster.namespace.clone())),
            Err(k8s::Error::NotFound { .. }) if rec.is_none() => Ok(None),
            // Removed by someone else: only the record is left to remove.
            Err(k8s::Error::NotFound { .. }) => Ok(Some(cluster.namespace.clone())),
            Err(e) => Err(e.into()),
        }
    })?;
    let Some(namespace) = removed else {
        return Ok(None);
    };
    if rec.is_some() {
        let path = kbuild_driver::config::default_path()?;
        let mut c = kbuild_driver::Config::load(&path)?;
        c.remove(name)?;
        c.save(&path)?;
    }
    println!("{name} removed from namespace {namespace}");
    Ok(Some(ExitCode::SUCCESS))
}

/// One pod of a kubernetes builder, for `ls`.
pub struct PodRow {
    /// The builder.
    pub builder: String,
    /// Its namespace.
    pub namespace: String,
    /// The pod as a node.
    pub node: Node,
    /// The Kubernetes node it runs on.
    pub k8s_node: Option<String>,
    /// Whether it is ready.
    pub ready: bool,
    /// What it said, or why not.
    pub result: std::result::Result<NodeInfo, PodProblem>,
}

/// The kubernetes builders of the cluster (by label; with `all`, of every
/// namespace) and of the builder list, with their pods' Info, and notes
/// for the user; `Ok(empty)` without a cluster. A cluster-wide list the
/// user may not make falls back to the current namespace, with a note.
pub fn ls_rows(
    g: &GlobalArgs,
    config: &kbuild_driver::Config,
    all: bool,
) -> Result<(Vec<PodRow>, Vec<String>)> {
    let rt = crate::builders::runtime()?;
    let rows = rt.block_on(async {
        let mut notes = Vec::new();
        let Some(cluster) = cluster(g, None).await? else {
            return Ok::<_, KubeError>((Vec::new(), notes));
        };
        let names = builder_names(&cluster, config, all, &mut notes).await?;
        let dialer = Arc::new(PodDialer::new(cluster.client.clone()));
        let mut tasks = Vec::new();
        for (namespace, name) in names {
            let status = match cluster.in_namespace(&namespace).status(&name).await {
                Ok(s) => s,
                // A recorded builder in a namespace no longer ours.
                Err(e @ k8s::Error::Forbidden { .. }) if all => {
                    notes.push(format!("builder {name}: {e}"));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(status) = status else {
                tasks.push(tokio::spawn(
                    async move { no_deployment_row(name, namespace) },
                ));
                continue;
            };
            for pod in status.pods {
                let (name, namespace) = (name.clone(), namespace.clone());
                tasks.push(tokio::spawn(pod_row(dialer.clone(), name, namespace, pod)));
            }
        }
        let mut rows = Vec::new();
        for t in tasks {
            rows.push(t.await.map_err(KubeError::Task)?);
        }
        Ok((rows, notes))
    })?;
    Ok(rows)
}

/// The (namespace, name) of every kubernetes builder `ls` shows: those
/// labelled in the cluster (every namespace with `all`, else the current
/// one; a cluster-wide list the user may not make falls back to the
/// current namespace with a note) and those of the builder list.
async fn builder_names(
    cluster: &Cluster,
    config: &kbuild_driver::Config,
    all: bool,
    notes: &mut Vec<String>,
) -> std::result::Result<BTreeSet<(String, String)>, k8s::Error> {
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    let everywhere = if all {
        match cluster.all_builders().await {
            Ok(found) => Some(found),
            Err(k8s::Error::Forbidden { .. }) => {
                notes.push(format!(
                    "you may not list deployments.apps in all namespaces (a cluster-wide list needs a ClusterRole): only namespace {} is listed",
                    cluster.namespace
                ));
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    match everywhere {
        Some(found) => names.extend(found),
        None => names.extend(
            cluster
                .builders()
                .await?
                .into_iter()
                .map(|n| (cluster.namespace.clone(), n)),
        ),
    }
    for (name, b) in &config.builders {
        if let Some(k) = &b.kubernetes {
            if all || k.namespace == cluster.namespace {
                names.insert((k.namespace.clone(), name.clone()));
            }
        }
    }
    Ok(names)
}

/// The row of a recorded builder whose Deployment is gone.
fn no_deployment_row(builder: String, namespace: String) -> PodRow {
    PodRow {
        builder,
        namespace,
        node: Node {
            name: "-".into(),
            endpoint: String::new(),
            platforms: Vec::new(),
            tls: Default::default(),
        },
        k8s_node: None,
        ready: false,
        result: Err(PodProblem::NoDeployment),
    }
}

/// The row of builder `name`'s pod `pod`: its Info when it is ready, else
/// why it is not.
async fn pod_row(
    dialer: Arc<PodDialer>,
    name: String,
    namespace: String,
    pod: k8s::PodStatus,
) -> PodRow {
    let node = pod.node();
    let result = if pod.ready {
        dialer
            .dial(&name, &node, INFO_TIMEOUT)
            .await
            .map(|(_, info)| info)
            .map_err(PodProblem::Dial)
    } else {
        Err(pod
            .waiting
            .clone()
            .map_or(PodProblem::NotReady, PodProblem::Waiting))
    };
    PodRow {
        builder: name,
        namespace,
        node,
        k8s_node: pod.node.clone(),
        ready: pod.ready,
        result,
    }
}

/// `kubectl-build dial-stdio`: standard input to the daemon's socket, the
/// socket to standard output, until either side ends.
pub fn dial_stdio(addr: &str) -> Result<ExitCode> {
    let endpoint = kbuild_proto::Endpoint::parse(addr)?;
    let kbuild_proto::Endpoint::Unix(path) = endpoint else {
        return Err(KubeError::NotUnix {
            addr: addr.to_string(),
        }
        .into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(async {
        let sock = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|source| KubeError::Connect {
                path: path.clone(),
                source,
            })?;
        let (mut rd, mut wr) = sock.into_split();
        // Standard input closing (the client went away) closes our side;
        // the session ends when the daemon closes its side.
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut wr).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        });
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut rd, &mut stdout)
            .await
            .map_err(|source| KubeError::Relay {
                path: path.clone(),
                source,
            })?;
        tokio::io::AsyncWriteExt::flush(&mut stdout)
            .await
            .map_err(KubeError::Stdout)?;
        Ok::<_, KubeError>(())
    });
    // A read of standard input may still block: do not wait for it.
    rt.shutdown_background();
    done?;
    Ok(ExitCode::SUCCESS)
}

/// `kubectl-build health`: the daemon answers Info.
pub fn health(addr: &str, timeout: u64) -> Result<ExitCode> {
    let node = Node {
        name: "health".into(),
        endpoint: addr.to_string(),
        platforms: Vec::new(),
        tls: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let info = rt.block_on(kbuild_driver::info(
        "health",
        &node,
        Duration::from_secs(timeout.max(1)),
    ))?;
    println!("ok: protocol {} on {}", info.protocol, info.hostname);
    Ok(ExitCode::SUCCESS)
}

/// Where a build goes when no remote builder is chosen: a kubernetes
/// builder, or `None` for the embedded one.
pub enum Route {
    /// The embedded builder (with a note to print, when it was chosen
    /// because there is no cluster).
    Local(Option<String>),
    /// Builder `name` in the cluster; `auto`: create it when missing.
    Kubernetes {
        /// The builder.
        name: String,
        /// Its recorded namespace.
        namespace: Option<String>,
        /// Create it on first use.
        auto: bool,
    },
}

/// The route of a build for builder `name` (`None`: nothing chosen):
/// a recorded kubernetes builder, else — when a kubeconfig context is
/// usable — `name` (default `buildkit`) in the cluster, else local.
pub fn route(name: Option<&str>, g: &GlobalArgs) -> std::result::Result<Route, BuildError> {
    if let Some(n) = name {
        if let Some(rec) = recorded(n) {
            return Ok(Route::Kubernetes {
                name: n.to_string(),
                namespace: Some(rec.namespace),
                auto: false,
            });
        }
    }
    let rt = crate::builders::runtime().map_err(KubeError::Runtime)?;
    let found = rt
        .block_on(k8s::kubeconfig::resolve(&selection(g)))
        .map_err(KubeError::Kubernetes)?;
    match found {
        Some(_) => Ok(Route::Kubernetes {
            name: name.unwrap_or(DEFAULT_BUILDER).to_string(),
            namespace: None,
            auto: name.map_or(true, |n| n == DEFAULT_BUILDER),
        }),
        None => {
            if let Some(flag) = explicit(g) {
                return Err(KubeError::NoCluster { flag }.into());
            }
            match name {
                Some(n) if n != DEFAULT_BUILDER => Err(KubeError::NoBuilder {
                    name: n.to_string(),
                }
                .into()),
                _ => Ok(Route::Local(Some(
                    "no Kubernetes context (--kubeconfig, $KUBECONFIG, ~/.kube/config): building with the embedded builder; --builder local skips this check".to_string(),
                ))),
            }
        }
    }
}

/// The credentials for a build on a kubernetes builder: `--registry-secret
/// NAME` read from the cluster (missing: an error), `file:PATH` as
/// always, or without the flag the secret named like the builder when it
/// exists; then Docker's config.
async fn credentials(
    cluster: &Cluster,
    flag: Option<&str>,
    builder: &str,
) -> std::result::Result<kbuild_registry::Credentials, BuildError> {
    let (name, required) = match flag {
        Some(f) if f.starts_with("file:") => {
            return kbuild_registry::Credentials::from_registry_secret(Some(f))
                .map_err(BuildError::Credentials)
        }
        Some(f) => (f, true),
        None => (builder, false),
    };
    let docker = kbuild_registry::Credentials::docker_config().map_err(BuildError::Credentials)?;
    let kube_err =
        |e: k8s::Error| BuildError::Remote(Box::new(kbuild_driver::Error::Kubernetes(Box::new(e))));
    match cluster.registry_secret(name).await.map_err(kube_err)? {
        Some(json) => {
            let from = format!("registry secret {}/{name}", cluster.namespace);
            let creds = kbuild_registry::Credentials::from_docker_config_json(&json, &from)
                .map_err(|source| {
                    kube_err(k8s::Error::SecretCredentials {
                        name: name.to_string(),
                        namespace: cluster.namespace.clone(),
                        source: Box::new(source),
                    })
                })?;
            Ok(creds.then(docker))
        }
        None if required => Err(kube_err(k8s::Error::SecretNotFound {
            name: name.to_string(),
            namespace: cluster.namespace.clone(),
        })),
        None => Ok(docker),
    }
}

/// The options of the default builder created on first use: no node
/// socket, unless that first build loads into the nodes' containerd
/// (`--load`), which then mounts the usual socket.
fn default_options(loads: bool) -> Options {
    Options {
        containerd_socket: loads.then(|| spec::CONTAINERD_DEFAULT.to_string()),
        ..Options::default()
    }
}

/// A build on kubernetes builder `name`.
pub fn run(
    mut req: BuildRequest,
    a: &BuildArgs,
    g: &GlobalArgs,
    name: &str,
    namespace: Option<&str>,
    auto: bool,
) -> std::result::Result<(), BuildError> {
    let rt = crate::builders::runtime().map_err(KubeError::Runtime)?;
    let quiet = a.quiet || a.progress == ProgressMode::Quiet;
    let kube_err =
        |e: k8s::Error| BuildError::Remote(Box::new(kbuild_driver::Error::Kubernetes(Box::new(e))));
    // `--load` loads into the containerd of each node that builds, through
    // its socket mounted in the builder pod.
    req.load_into_containerd(&a.tags)?;
    let loads = req
        .outputs
        .iter()
        .any(|o| o.kind == kbuild_solver::options::OutputKind::Containerd);
    let (cluster, nodes, credentials) = rt.block_on(async {
        let cluster = cluster(g, namespace)
            .await?
            .ok_or_else(|| KubeError::BuilderNeedsCluster {
                name: name.to_string(),
            })?;
        let status = match cluster.status(name).await.map_err(kube_err)? {
            Some(s) if !s.ready_nodes().is_empty() => s,
            Some(_) => cluster
                .wait_ready(name, Duration::from_secs(Options::default().timeout))
                .await
                .map_err(kube_err)?,
            None if auto => {
                let options = default_options(loads);
                if !quiet {
                    eprintln!(
                        "=> creating builder {name} (kubernetes driver) in namespace {} of context {}: first use{}",
                        cluster.namespace,
                        cluster.context,
                        options
                            .containerd_socket
                            .as_deref()
                            .map(|s| format!(", mounting the nodes' containerd socket {s} for --load"))
                            .unwrap_or_default()
                    );
                }
                let status = create_in(&cluster, name, &spec::pools(&[]).map_err(kube_err)?, &options, false)
                    .await
                    .map_err(kube_err)?;
                record(name, &cluster);
                status
            }
            None => {
                return Err(kube_err(k8s::Error::NotFound {
                    builder: name.to_string(),
                    namespace: cluster.namespace.clone(),
                }))
            }
        };
        if loads {
            let without: Vec<&str> = status
                .pods
                .iter()
                .filter(|p| p.ready && !p.terminating && !p.containerd_socket)
                .map(|p| p.name.as_str())
                .collect();
            if !without.is_empty() {
                return Err(kube_err(k8s::Error::NoContainerdSocket {
                    builder: name.to_string(),
                    pods: without.join(", "),
                }));
            }
        }
        let credentials = credentials(&cluster, a.registry_secret.as_deref(), name).await?;
        Ok::<_, BuildError>((cluster, status.ready_nodes(), credentials))
    })?;
    let dialer = PodDialer::new(cluster.client.clone());
    if !quiet {
        let pods: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        eprintln!(
            "=> builder {name}: {} {} in namespace {}",
            if pods.len() == 1 { "pod" } else { "pods" },
            pods.join(", "),
            cluster.namespace
        );
    }
    // The API client's connections live on `rt`: it stays up while the
    // build's own runtime dials the pods through it.
    let result = crate::fanout::build(
        req,
        a,
        g,
        name,
        nodes,
        std::sync::Arc::new(dialer),
        Some(credentials),
    );
    drop(rt);
    result
}

/// What `--dry-run` shows for a kubernetes builder.
pub enum Preview {
    /// The builder's ready pods, asked for their Info, and the assignment.
    Pods(crate::fanout::Report),
    /// The default builder does not exist yet: the build would create it.
    NotCreated {
        /// The builder.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The platforms asked for.
        platforms: Vec<Platform>,
    },
}

impl Preview {
    /// The text printed after the plan.
    pub fn to_text(&self) -> String {
        match self {
            Preview::Pods(report) => report.to_text(),
            Preview::NotCreated {
                name,
                namespace,
                platforms,
            } => {
                let mut out = format!(
                    "\nbuilder {name} (kubernetes driver, namespace {namespace}): does not exist yet; the build would create it (one pod, on a node the scheduler picks)\nplatforms:\n"
                );
                let w = platforms
                    .iter()
                    .map(|p| p.to_string().len())
                    .max()
                    .unwrap_or(0);
                for p in platforms {
                    out.push_str(&format!(
                        "  {:<w$}  its pod  native, cross or emulated: decided by the architecture of the node it lands on, unknown until it runs\n",
                        p.to_string()
                    ));
                }
                out
            }
        }
    }

    /// The `schedule` object of `--dry-run=json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Preview::Pods(report) => report.to_json(),
            Preview::NotCreated {
                name,
                namespace,
                platforms,
            } => serde_json::json!({
                "builder": name,
                "driver": k8s::DRIVER,
                "namespace": namespace,
                "would_create": true,
                "nodes": [],
                "assignments": platforms.iter().map(|p| serde_json::json!({
                    "platform": p.to_string(),
                    "node": null,
                    "reason": "unknown until the pod runs",
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

/// `--dry-run` on kubernetes builder `name`: asks its ready pods and
/// assigns the platforms as a build would, creating nothing.
pub fn preview(
    req: &BuildRequest,
    g: &GlobalArgs,
    name: &str,
    namespace: Option<&str>,
    auto: bool,
) -> std::result::Result<Preview, BuildError> {
    let rt = crate::builders::runtime().map_err(KubeError::Runtime)?;
    let kube_err =
        |e: k8s::Error| BuildError::Remote(Box::new(kbuild_driver::Error::Kubernetes(Box::new(e))));
    rt.block_on(async {
        let cluster =
            cluster(g, namespace)
                .await?
                .ok_or_else(|| KubeError::BuilderNeedsCluster {
                    name: name.to_string(),
                })?;
        match cluster.status(name).await.map_err(kube_err)? {
            Some(status) => {
                let nodes = status.ready_nodes();
                if nodes.is_empty() {
                    return Err(kube_err(k8s::Error::NotReady {
                        builder: name.to_string(),
                        namespace: cluster.namespace.clone(),
                        ready: 0,
                        wanted: status.wanted(),
                        waited: Duration::ZERO,
                        detail: status.pods.iter().find_map(|p| {
                            p.waiting.as_ref().map(|w| format!("pod {}: {w}", p.name))
                        }),
                    }));
                }
                let dialer = PodDialer::new(cluster.client.clone());
                crate::fanout::assign_nodes(req, name, &nodes, &dialer)
                    .await
                    .map(Preview::Pods)
                    .map_err(|e| BuildError::Fanout(Box::new(e)))
            }
            None if auto => Ok(Preview::NotCreated {
                name: name.to_string(),
                namespace: cluster.namespace.clone(),
                platforms: req.platforms.clone(),
            }),
            None => Err(kube_err(k8s::Error::NotFound {
                builder: name.to_string(),
                namespace: cluster.namespace.clone(),
            })),
        }
    })
}

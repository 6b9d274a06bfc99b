//! `create --driver kubernetes` options (`--driver-opt`, in the spirit of
//! buildx's kubernetes driver) and the Deployments they make: one per node
//! pool, a pool being the `--platform` values of one architecture (pinned
//! with `kubernetes.io/arch`), or one pool for any node without
//! `--platform`.

use super::{
    Error, OptProblem, ARCH_LABEL, BINARY, BUILDER_LABEL, CONTAINER, MANAGED_BY,
    PLATFORMS_ANNOTATION, POOL_LABEL, SOCKET, VARIANT_LABEL,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, ExecAction, HostPathVolumeSource, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kbuild_platform::Platform;
use std::collections::BTreeMap;

/// Where the store of a builder pod lives (an emptyDir).
pub const STORE: &str = "/var/lib/kubectl-build";
/// The containerd socket of the node, when mounted, inside the pod.
pub const CONTAINERD_IN_POD: &str = "/run/containerd/containerd.sock";
/// The usual containerd socket of a node.
pub const CONTAINERD_DEFAULT: &str = "/run/containerd/containerd.sock";
/// The pod volume holding the node's containerd socket.
pub const CONTAINERD_VOLUME: &str = "containerd";

/// The options of `create --driver kubernetes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `replicas=N` per pool (default 1).
    pub replicas: i32,
    /// `image=REF` (else `$KUBECTL_BUILD_BUILDER_IMAGE`).
    pub image: Option<String>,
    /// `namespace=NS` (else `-n`, else the context's).
    pub namespace: Option<String>,
    /// `nodeselector="k=v,k2=v2"`.
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations="key=k,value=v,effect=NoSchedule;key=k2,operator=Exists"`.
    pub tolerations: Vec<Toleration>,
    /// `requests.cpu`, `requests.memory`.
    pub requests: BTreeMap<String, String>,
    /// `limits.cpu`, `limits.memory`.
    pub limits: BTreeMap<String, String>,
    /// `rootless=false` (the only value served: the daemon mounts overlay
    /// filesystems and registers binfmt_misc handlers, which need a
    /// privileged container).
    pub rootless: bool,
    /// `containerd-socket=PATH` (`true`: /run/containerd/containerd.sock):
    /// the node's containerd socket, mounted for `--load`.
    pub containerd_socket: Option<String>,
    /// `timeout=SECONDS` to wait for the pods to be ready (default 180).
    pub timeout: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicas: 1,
            image: None,
            namespace: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
            rootless: false,
            containerd_socket: None,
            timeout: 180,
        }
    }
}

/// Splits `s` at `sep` outside double quotes, dropping the quotes.
fn split_quoted(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|f| !f.is_empty()).collect()
}

fn quantity(opt: &str, value: &str) -> Result<String, Error> {
    // A Kubernetes quantity: a number, then an optional suffix.
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1;
    let suffix_ok = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ]
    .contains(&suffix);
    if number_ok && suffix_ok {
        Ok(value.to_string())
    } else {
        Err(Error::DriverOpt {
            opt: opt.to_string(),
            reason: OptProblem::Quantity,
        })
    }
}

fn toleration(opt: &str, text: &str) -> Result<Toleration, Error> {
    let bad = |reason: OptProblem| Error::DriverOpt {
        opt: opt.to_string(),
        reason,
    };
    let mut t = Toleration::default();
    for field in text.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| bad(OptProblem::TolerationField(field.to_string())))?;
        match k {
            "key" => t.key = Some(v.to_string()),
            "value" => t.value = Some(v.to_string()),
            "operator" => {
                t.operator = Some(match v.to_ascii_lowercase().as_str() {
                    "exists" => "Exists".to_string(),
                    "equal" => "Equal".to_string(),
                    _ => return Err(bad(OptProblem::TolerationOperator(v.to_string()))),
                })
            }
            "effect" => {
                t.effect = Some(match v.to_ascii_lowercase().as_str() {
                    "noschedule" => "NoSchedule".to_string(),
                    "prefernoschedule" => "PreferNoSchedule".to_string(),
                    "noexecute" => "NoExecute".to_string(),
                    _ => return Err(bad(OptProblem::TolerationEffect(v.to_string()))),
                })
            }
            "tolerationSeconds" => {
                t.toleration_seconds = Some(v.parse().map_err(|source| {
                    let value = v.to_string();
                    bad(OptProblem::TolerationSeconds { value, source })
                })?)
            }
            _ => return Err(bad(OptProblem::UnknownTolerationField(k.to_string()))),
        }
    }
    if t.operator.as_deref() == Some("Exists") && t.value.is_some() {
        return Err(bad(OptProblem::ExistsWithValue));
    }
    if t.key.is_none() && t.operator.as_deref() != Some("Exists") {
        return Err(bad(OptProblem::KeylessNotExists));
    }
    Ok(t)
}

impl Options {
    /// Parses `--driver-opt` values: comma-separated `KEY=VALUE` fields,
    /// double quotes keeping commas inside one value.
    pub fn parse(opts: &[String]) -> Result<Options, Error> {
        let mut o = Options::default();
        for field in opts.iter().flat_map(|s| split_quoted(s, ',')) {
            let bad = |reason: OptProblem| Error::DriverOpt {
                opt: field.clone(),
                reason,
            };
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(OptProblem::NotKeyValue))?;
            if value.is_empty() {
                return Err(bad(OptProblem::EmptyValue));
            }
            match key {
                "replicas" => {
                    o.replicas = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad(OptProblem::Replicas))?
                }
                "image" => o.image = Some(value.to_string()),
                "namespace" => o.namespace = Some(value.to_string()),
                "nodeselector" => {
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .ok_or_else(|| bad(OptProblem::NodeSelector))?;
                        o.node_selector.insert(k.to_string(), v.to_string());
                    }
                }
                "tolerations" => {
                    for t in value.split(';').filter(|t| !t.is_empty()) {
                        o.tolerations.push(toleration(&field, t)?);
                    }
                }
                "requests.cpu" | "requests.memory" => {
                    o.requests.insert(
                        key["requests.".len()..].to_string(),
                        quantity(&field, value)?,
                    );
                }
                "limits.cpu" | "limits.memory" => {
                    o.limits
                        .insert(key["limits.".len()..].to_string(), quantity(&field, value)?);
                }
                "rootless" => match value {
                    "false" => o.rootless = false,
                    "true" => return Err(bad(OptProblem::Rootless)),
                    _ => return Err(bad(OptProblem::RootlessBool)),
                },
                "containerd-socket" => {
                    o.containerd_socket = Some(match value {
                        "true" => CONTAINERD_DEFAULT.to_string(),
                        "false" => continue,
                        p if p.starts_with('/') => p.to_string(),
                        _ => return Err(bad(OptProblem::ContainerdSocket)),
                    })
                }
                "timeout" => {
                    o.timeout = value
                        .trim_end_matches('s')
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(OptProblem::Timeout))?
                }
                _ => return Err(bad(OptProblem::UnknownOption)),
            }
        }
        Ok(o)
    }
}

/// One Deployment of a builder: the platforms of one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `amd64`, `arm64`, `arm-v7`; empty for the one pool without `--platform`.
    pub name: String,
    /// The `kubernetes.io/arch` its nodes have.
    pub arch: Option<String>,
    /// The arm variant of a 32-bit arm pool.
    pub variant: Option<String>,
    /// The platforms its daemons declare (`serve --platform`).
    pub platforms: Vec<Platform>,
}

/// Groups `--platform` values into pools by architecture. A 32-bit arm
/// platform listed with linux/arm64 joins the arm64 pool, and linux/386
/// listed with linux/amd64 joins the amd64 pool: those CPUs run them
/// natively. Only linux platforms name nodes.
pub fn pools(platforms: &[Platform]) -> Result<Vec<Pool>, Error> {
    if platforms.is_empty() {
        return Ok(vec![Pool {
            name: String::new(),
            arch: None,
            variant: None,
            platforms: Vec::new(),
        }]);
    }
    let has = |arch: &str| platforms.iter().any(|p| p.architecture == arch);
    let mut out: Vec<Pool> = Vec::new();
    for p in platforms {
        if p.os != "linux" {
            return Err(Error::DriverOpt {
                opt: format!("--platform {p}"),
                reason: OptProblem::NotLinux,
            });
        }
        let p = p.normalized();
        let arch = match p.architecture.as_str() {
            "arm" if has("arm64") => "arm64",
            "386" if has("amd64") => "amd64",
            a => a,
        };
        let variant = (arch == "arm").then(|| p.variant.clone()).flatten();
        let name = match &variant {
            Some(v) => format!("{arch}-{v}"),
            None => arch.to_string(),
        };
        match out.iter_mut().find(|pool| pool.name == name) {
            Some(pool) => {
                if !pool.platforms.contains(&p) {
                    pool.platforms.push(p)
                }
            }
            None => out.push(Pool {
                name,
                arch: Some(arch.to_string()),
                variant,
                platforms: vec![p],
            }),
        }
    }
    Ok(out)
}

/// The Deployment name of `pool` of `builder`.
pub fn deployment_name(builder: &str, pool: &Pool) -> String {
    if pool.name.is_empty() {
        builder.to_string()
    } else {
        format!("{builder}-{}", pool.name)
    }
}

/// Whether `name` can name a kubernetes builder: its Deployments and pods
/// are named after it (a DNS label, short enough for the pool and the
/// pods' suffixes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The label selector of everything builder `name` made.
pub fn selector(name: &str) -> String {
    format!("{}={},{BUILDER_LABEL}={name}", MANAGED_BY.0, MANAGED_BY.1)
}

/// The labels of `pool` of `builder` (Deployment, pods).
pub fn labels(builder: &str, pool: &Pool) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (BUILDER_LABEL.to_string(), builder.to_string()),
        (
            POOL_LABEL.to_string(),
            if pool.name.is_empty() {
                "any".to_string()
            } else {
                pool.name.clone()
            },
        ),
    ]);
    if let Some(a) = &pool.arch {
        l.insert(ARCH_LABEL.to_string(), a.clone());
    }
    if let Some(v) = &pool.variant {
        l.insert(VARIANT_LABEL.to_string(), v.clone());
    }
    l
}

/// The arguments of the pod's `serve` for `platforms` (comma-separated;
/// empty: the node's own).
fn serve_args(platforms: &str) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--addr".to_string(),
        SOCKET.to_string(),
        "--install-emulation".to_string(),
    ];
    if !platforms.is_empty() {
        args.push("--platform".to_string());
        args.push(platforms.to_string());
    }
    args
}

/// The pod's volumes and the container's mounts of them: the store, and
/// the host's containerd socket when one is given.
fn store_volumes(o: &Options) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "store".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "store".to_string(),
        mount_path: STORE.to_string(),
        ..Default::default()
    }];
    if let Some(sock) = &o.containerd_socket {
        volumes.push(Volume {
            name: CONTAINERD_VOLUME.to_string(),
            host_path: Some(HostPathVolumeSource {
                path: sock.clone(),
                type_: Some("Socket".to_string()),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: CONTAINERD_VOLUME.to_string(),
            mount_path: CONTAINERD_IN_POD.to_string(),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

/// The builder container: `serve` with `args`, privileged unless
/// rootless, ready once `health` answers, with the requested resources.
fn container(image: &str, args: Vec<String>, mounts: Vec<VolumeMount>, o: &Options) -> Container {
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    Container {
        name: CONTAINER.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![BINARY.to_string()]),
        args: Some(args),
        env: None,
        security_context: Some(SecurityContext {
            privileged: Some(!o.rootless),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    BINARY.to_string(),
                    "health".to_string(),
                    "--addr".to_string(),
                    SOCKET.to_string(),
                ]),
            }),
            period_seconds: Some(2),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: (!o.requests.is_empty() || !o.limits.is_empty()).then(|| ResourceRequirements {
            requests: quantities(&o.requests),
            limits: quantities(&o.limits),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The Deployment of `pool` of builder `builder` in `namespace`, running `image`.
pub fn deployment(
    builder: &str,
    namespace: &str,
    pool: &Pool,
    image: &str,
    o: &Options,
) -> Deployment {
    let labels = labels(builder, pool);
    let platforms = pool
        .platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let annotations = (!platforms.is_empty())
        .then(|| BTreeMap::from([(PLATFORMS_ANNOTATION.to_string(), platforms.clone())]));
    let mut node_selector = o.node_selector.clone();
    if let Some(a) = &pool.arch {
        node_selector.insert("kubernetes.io/arch".to_string(), a.clone());
    }
    let (volumes, mounts) = store_volumes(o);
    let container = container(image, serve_args(&platforms), mounts, o);
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(builder, pool)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            annotations: annotations.clone(),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(o.replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (BUILDER_LABEL.to_string(), builder.to_string()),
                    (POOL_LABEL.to_string(), labels[POOL_LABEL].clone()),
                ])),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(10),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plats(s: &str) -> Vec<Platform> {
        kbuild_platform::parse_list(s).unwrap()
    }

    #[test]
    fn options_parse_like_buildx_with_quoted_lists() {
        let o = Options::parse(&[
            "replicas=2,image=reg.test/b:1".into(),
            "\"nodeselector=disk=ssd,zone=a\"".into(),
            "tolerations=\"key=dedicated,value=build,effect=NoSchedule;key=spot,operator=exists\""
                .into(),
            "requests.cpu=500m,requests.memory=256Mi,limits.memory=1Gi".into(),
            "containerd-socket=true,timeout=60s".into(),
        ])
        .unwrap();
        assert_eq!(o.replicas, 2);
        assert_eq!(o.image.as_deref(), Some("reg.test/b:1"));
        assert_eq!(
            o.node_selector,
            BTreeMap::from([("disk".into(), "ssd".into()), ("zone".into(), "a".into())])
        );
        assert_eq!(o.tolerations.len(), 2);
        assert_eq!(o.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(o.tolerations[1].operator.as_deref(), Some("Exists"));
        assert_eq!(o.requests["cpu"], "500m");
        assert_eq!(o.limits["memory"], "1Gi");
        assert_eq!(o.containerd_socket.as_deref(), Some(CONTAINERD_DEFAULT));
        assert_eq!(o.timeout, 60);
        for bad in [
            "replicas=0",
            "replicas=x",
            "colour=blue",
            "requests.cpu=lots",
            "rootless=true",
            "tolerations=operator=bogus",
            "tolerations=value=x",
            "containerd-socket=relative.sock",
            "image=",
            "nodeselector=novalue",
        ] {
            assert!(
                Options::parse(&[bad.into()]).is_err(),
                "{bad} should not parse"
            );
        }
        assert!(Options::parse(&["rootless=false".into()]).is_ok());
    }

    #[test]
    fn option_errors_keep_the_rule_and_the_parse_error() {
        let e =
            Options::parse(&["tolerations=\"key=a,tolerationSeconds=soon\"".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"--driver-opt "tolerations=key=a,tolerationSeconds=soon": tolerationSeconds "soon" is not a number"#
        );
        let want = "soon".parse::<i64>().unwrap_err();
        let Error::DriverOpt {
            reason: OptProblem::TolerationSeconds { source, .. },
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(source, &want);
        let reason = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(
            reason.as_deref(),
            Some(r#"tolerationSeconds "soon" is not a number"#)
        );
        let e = Options::parse(&["tolerations=operator=bogus".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"--driver-opt "tolerations=operator=bogus": toleration operator "bogus": use Equal or Exists"#
        );
        let e = Options::parse(&["rootless=maybe".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"--driver-opt "rootless=maybe": rootless takes true or false"#
        );
    }

    #[test]
    fn platforms_group_into_pools_by_node_architecture() {
        let p = pools(&plats("linux/amd64,linux/arm64,linux/arm/v7,linux/386")).unwrap();
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["amd64", "arm64"]);
        assert_eq!(p[1].platforms, plats("linux/arm64,linux/arm/v7"));
        assert_eq!(p[0].platforms, plats("linux/amd64,linux/386"));
        let p = pools(&plats("linux/arm/v6")).unwrap();
        assert_eq!(
            (
                p[0].name.as_str(),
                p[0].arch.as_deref(),
                p[0].variant.as_deref()
            ),
            ("arm-v6", Some("arm"), Some("v6"))
        );
        let any = pools(&[]).unwrap();
        assert_eq!(any[0].name, "");
        assert!(pools(&plats("windows/amd64")).is_err());
    }

    #[test]
    fn deployment_carries_labels_selector_resources_and_the_daemon_flags() {
        let o = Options::parse(&[
            "replicas=2,\"nodeselector=disk=ssd\",\"tolerations=key=k,value=v,effect=NoExecute\""
                .into(),
            "requests.cpu=100m,limits.memory=512Mi,containerd-socket=/run/k2/containerd.sock"
                .into(),
        ])
        .unwrap();
        let pool = pools(&plats("linux/arm64,linux/arm/v7")).unwrap().remove(0);
        let d = deployment("buildkit", "team", &pool, "reg.test/builder:1", &o);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["metadata"]["name"], "buildkit-arm64");
        assert_eq!(v["metadata"]["namespace"], "team");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "kubectl-build"
        );
        assert_eq!(
            v["metadata"]["labels"]["kubectl-build.io/builder"],
            "buildkit"
        );
        assert_eq!(
            v["metadata"]["annotations"][PLATFORMS_ANNOTATION],
            "linux/arm64,linux/arm/v7"
        );
        let spec = &v["spec"];
        assert_eq!(spec["replicas"], 2);
        assert_eq!(
            spec["selector"]["matchLabels"]["kubectl-build.io/pool"],
            "arm64"
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(
            spec["template"]["metadata"]["labels"]["kubectl-build.io/builder"],
            "buildkit"
        );
        assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "arm64");
        assert_eq!(pod["nodeSelector"]["disk"], "ssd");
        assert_eq!(pod["tolerations"][0]["effect"], "NoExecute");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "reg.test/builder:1");
        assert_eq!(
            c["args"],
            serde_json::json!([
                "serve",
                "--addr",
                SOCKET,
                "--install-emulation",
                "--platform",
                "linux/arm64,linux/arm/v7"
            ])
        );
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
        assert_eq!(c["readinessProbe"]["exec"]["command"][1], "health");
        assert_eq!(c["volumeMounts"][0]["mountPath"], STORE);
        assert_eq!(pod["volumes"][0]["emptyDir"], serde_json::json!({}));
        assert_eq!(
            pod["volumes"][1]["hostPath"]["path"],
            "/run/k2/containerd.sock"
        );
        assert_eq!(c["volumeMounts"][1]["mountPath"], CONTAINERD_IN_POD);

        // Without options or platforms: one pool, no pinning, no extras.
        let plain = deployment("b", "ns", &pools(&[]).unwrap()[0], "i", &Options::default());
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(v["metadata"]["name"], "b");
        let pod = &v["spec"]["template"]["spec"];
        assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
        assert!(pod["containers"][0].get("resources").is_none());
        assert_eq!(pod["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(
            pod["containers"][0]["args"],
            serde_json::json!(["serve", "--addr", SOCKET, "--install-emulation"])
        );
    }

    #[test]
    fn names_and_selectors() {
        assert!(valid_name("buildkit") && valid_name("b-2"));
        for bad in ["", "B", "a_b", "a.b", "-a", "a-", &"x".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(
            selector("buildkit"),
            "app.kubernetes.io/managed-by=kubectl-build,kubectl-build.io/builder=buildkit"
        );
    }
}

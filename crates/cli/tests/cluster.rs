//! Smoke test of the real two-node test cluster (`scripts/cluster.sh`,
//! through `kbuild_testkit::cluster`): both nodes are Ready, node 2 stays
//! labelled arm64, an image built and pushed by kubectl-build runs on each
//! node and is reached by port-forward through the API server, and the
//! restricted user of `deploy/rbac/role.yaml` can exec into its pods (what
//! the kubernetes driver does) but cannot create deployments outside its
//! namespace.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Run;
use kbuild_testkit::cluster::{self, Cluster};

fn cluster() -> Option<&'static Cluster> {
    cluster::shared(&common::bin())
}

fn node_label(cluster: &Cluster, node: &str, label: &str) -> String {
    let node = cluster
        .admin(&["get", "node", node, "-o", "json"])
        .ok()
        .json();
    node["metadata"]["labels"][label]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn both_nodes_are_ready_and_node2_stays_arm64() {
    let Some(cluster) = cluster() else { return };
    let nodes = cluster.admin(&["get", "nodes", "-o", "json"]).ok().json();
    let items = nodes["items"].as_array().expect("a node list");
    for name in cluster::NODES {
        let node = items
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("node {name} is not registered: {nodes}"));
        let ready = node["status"]["conditions"]
            .as_array()
            .expect("node conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("a Ready condition");
        assert_eq!(ready["status"], "True", "{name} is not Ready: {ready}");
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.34.4");
    }
    assert_eq!(
        node_label(cluster, "kbuild-node1", "kubernetes.io/arch"),
        "amd64"
    );
    assert_eq!(
        node_label(cluster, cluster::ARM64_NODE, "kubernetes.io/arch"),
        "arm64"
    );
    // The kubelet writes its own GOARCH back with its node status every 10 s
    // (nodeStatusUpdateFrequency): the label must survive that.
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(
        node_label(cluster, cluster::ARM64_NODE, "kubernetes.io/arch"),
        "arm64",
        "the kubelet's status updates put its own architecture back"
    );
    assert_eq!(
        node_label(cluster, cluster::ARM64_NODE, "beta.kubernetes.io/arch"),
        "arm64"
    );
}

#[test]
fn restricted_user_cannot_create_deployments_in_another_namespace() {
    let Some(cluster) = cluster() else { return };
    let out = cluster.user(&[
        "-n",
        "default",
        "create",
        "deployment",
        "not-allowed",
        "--image",
        "kbuild.test/busybox:1",
    ]);
    assert_ne!(
        out.code, 0,
        "the restricted user created a deployment in namespace default"
    );
    let stderr = &out.stderr;
    assert!(
        stderr.contains(&format!(
            "deployments.apps is forbidden: User \"{}\" cannot create resource \"deployments\" \
             in API group \"apps\" in the namespace \"default\"",
            cluster::USER
        )),
        "unexpected error: {stderr}"
    );
    // In its own namespace the same user may.
    let name = common::unique("allowed");
    let name = &name[..20];
    cluster
        .user(&[
            "create",
            "deployment",
            name,
            "--image",
            "kbuild.test/busybox:1",
            "--replicas",
            "0",
        ])
        .ok();
    cluster
        .user(&["delete", "deployment", name, "--wait=false"])
        .ok();
}

/// A Deployment of `image` pinned to nodes of `arch`: it prints where it runs,
/// then serves `token` over HTTP on port 8080 (busybox httpd).
fn deployment(name: &str, arch: &str, image: &str, token: &str) -> String {
    let script = format!(
        "mkdir -p /www && echo {token} > /www/index.html && \
         echo started on $NODE as $(uname -m) && exec busybox httpd -f -p 8080 -h /www"
    );
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": cluster::NAMESPACE, "labels": { "app": name } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/arch": arch },
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "command": ["sh", "-c", script],
                        "env": [{
                            "name": "NODE",
                            "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } }
                        }],
                        "ports": [{ "containerPort": 8080 }]
                    }]
                }
            }
        }
    })
    .to_string()
}

/// Kills a `kubectl port-forward` however the test ends.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16) -> String {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .expect("send a request through the port-forward");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("read the answer through the port-forward");
    answer
}

/// `kubectl apply -f -` of `manifest`, as the restricted user.
fn apply_as_user(cluster: &Cluster, manifest: &str) {
    let mut apply = cluster.kubectl_command(&cluster.user_kubeconfig());
    let mut child = apply
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    child
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(manifest.as_bytes())
        .expect("write the manifest to kubectl");
    Run::from(child.wait_with_output().expect("wait for kubectl apply")).ok();
}

/// The answer to `GET /index.html` on port 8080 of `pod`, through a
/// `kubectl port-forward` (as the admin) to a free local port.
fn get_through_port_forward(cluster: &Cluster, pod: &str) -> String {
    let mut forward = cluster.kubectl_command(&cluster.admin_kubeconfig());
    let child = forward
        .args([
            "-n",
            cluster::NAMESPACE,
            "port-forward",
            &format!("pod/{pod}"),
            ":8080",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl port-forward");
    let mut forward = Forward(child);
    let mut lines = BufReader::new(forward.0.stdout.take().expect("port-forward's stdout")).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("kubectl port-forward printed nothing"));
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port: u16 = first
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected port-forward output: {first}"));
    http_get(port)
}

#[test]
fn image_built_by_us_runs_on_each_node_with_exec_and_port_forward() {
    let Some(cluster) = cluster() else { return };
    let Some(context) = common::busybox_context() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let tag = common::unique("smoke");
    let image = format!("{}/kbuild-test/busybox:{}", cluster.registry(), &tag[..20]);
    common::run(
        store.path(),
        &[
            context.to_str().unwrap(),
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &image,
            "--push",
            "--progress",
            "plain",
        ],
        &[],
    )
    .ok();

    let token = common::unique("token");
    let mut deployments = cluster::Owned::new(cluster, "deployment");
    let placements = [("kbuild-node1", "amd64"), (cluster::ARM64_NODE, "arm64")];
    for (_, arch) in placements {
        let name = format!("smoke-{arch}-{}", &tag[6..14]);
        apply_as_user(cluster, &deployment(&name, arch, &image, &token));
        deployments.push(name);
    }

    for ((node, arch), name) in placements.iter().zip(deployments.names()) {
        let started = Instant::now();
        let rollout = cluster.user(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=180s",
        ]);
        if rollout.code != 0 {
            let events = cluster.admin_in(&["get", "events"]);
            panic!(
                "{name} did not roll out: {}\nevents in {}:\n{}",
                rollout.stderr.trim(),
                cluster::NAMESPACE,
                events.stdout
            );
        }
        let pods = cluster
            .user(&["get", "pods", "-l", &format!("app={name}"), "-o", "json"])
            .ok()
            .json();
        let pod = pods["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["status"]["phase"] == "Running"))
            .unwrap_or_else(|| panic!("no running pod of {name}: {pods}"));
        let pod_name = pod["metadata"]["name"].as_str().expect("a pod name");
        assert_eq!(
            pod["spec"]["nodeName"], *node,
            "the pod selecting kubernetes.io/arch={arch} ran elsewhere"
        );
        eprintln!("{name}: running on {node} after {:.1?}", started.elapsed());

        // Its output, read back through the API server and the node's kubelet.
        let deadline = Instant::now() + Duration::from_secs(30);
        let logs = loop {
            let logs = cluster.logs(pod_name);
            if logs.contains("started on") || Instant::now() > deadline {
                break logs;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(logs.trim(), format!("started on {node} as x86_64"));

        // exec through the API server, as the restricted user.
        let out = cluster
            .user(&["exec", pod_name, "--", "sh", "-c", "echo $((6 * 7)) $NODE"])
            .ok()
            .stdout;
        assert_eq!(out.trim(), format!("42 {node}"));

        // port-forward through the API server (the driver does not use it,
        // so the restricted user's Role does not grant it).
        let answer = get_through_port_forward(cluster, pod_name);
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
            "no 200 through the port-forward: {answer}"
        );
        assert!(
            answer.trim_end().ends_with(&token),
            "the page through the port-forward is not the pod's: {answer}"
        );
    }
}

//! The kubernetes driver against the real test cluster (`scripts/cluster.sh`
//! through `kbuild_testkit::cluster`), always as the restricted user of
//! `deploy/rbac/role.yaml`: builders made of pods, listed and removed by
//! label; the default builder `buildkit` created on first use; registry
//! secrets read through the API; RBAC errors naming the verb and resource;
//! the plugin run through kubectl; a builder pod deleted mid-build.
//!
//! The builder image is built by kubectl-build itself from
//! `deploy/builder/Dockerfile` (`scripts/builder-pod-image.sh`) and pushed to
//! the cluster's registry, tagged with the test binary's digest so later
//! runs of the same binary reuse it.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Client, Run};
use kbuild_testkit::cluster::{self, Cluster};
use kbuild_testkit::registry::TestRegistry;
use sha2::Digest;

fn cluster() -> Option<&'static Cluster> {
    cluster::shared(&common::bin())
}

/// A name for this test's objects (lowercase, short).
fn name(prefix: &str) -> String {
    let u = common::unique(prefix).to_lowercase().replace('_', "-");
    u.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The builder image in the cluster's registry, built once per binary.
fn builder_image(c: &Cluster) -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bin = common::bin();
        let digest = hex::encode(sha2::Sha256::digest(
            std::fs::read(&bin).expect("read the binary"),
        ));
        let reference = format!("{}/kubectl-build/builder:{}", c.registry(), &digest[..16]);
        let exists = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if exists {
            return reference;
        }
        let started = Instant::now();
        let work = tempfile::tempdir().unwrap();
        // A stripped copy: the image's size is mostly the test binary's
        // debug information otherwise.
        let stripped = work.path().join("kubectl-build");
        std::fs::copy(&bin, &stripped).unwrap();
        Run::from(
            Command::new("strip")
                .arg(&stripped)
                .output()
                .expect("run strip"),
        )
        .ok();
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ctx = work.path().join("image");
        Run::from(
            Command::new(checkout.join("scripts/builder-pod-image.sh"))
                .arg(&ctx)
                .env("KUBECTL_BUILD_BINARY", &stripped)
                .output()
                .expect("run scripts/builder-pod-image.sh"),
        )
        .ok();
        common::kb(
            &work.path().join("store"),
            [ctx.to_str().unwrap(), "-t", &reference, "--push"],
        )
        .builder("local")
        .plain()
        .ok();
        eprintln!(
            "builder image {reference} built and pushed in {:.1?}",
            started.elapsed()
        );
        reference
    })
}

/// A kubectl-build client as `kubeconfig`'s user, with its own builder
/// list, home and store, building with the test cluster's builder image.
fn client_as(c: &Cluster, kubeconfig: &Path) -> Client {
    let client = common::client();
    let home = client.path("home");
    client
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECTL_BUILD_BUILDER_IMAGE", builder_image(c))
        .env("HOME", home)
        .env("SOURCE_DATE_EPOCH", "0")
}

/// A kubectl-build client as the restricted user.
fn user_client(c: &Cluster) -> Client {
    client_as(c, &c.user_kubeconfig())
}

/// A kubernetes builder of the test, its Deployments deleted (as the
/// admin, by label) however the test ends: a failing assertion leaves no
/// pods behind.
struct Builder<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl<'a> Builder<'a> {
    /// Builder `name`, to be removed at the end (whoever creates it).
    fn guard(cluster: &'a Cluster, name: &str) -> Builder<'a> {
        Builder {
            cluster,
            name: name.to_string(),
        }
    }

    /// Builder `name` without what an earlier run left of it (waited for).
    fn absent(cluster: &'a Cluster, name: &str) -> Builder<'a> {
        let builder = Builder::guard(cluster, name);
        let _ = cluster.admin_in(&[
            "delete",
            "deployments",
            "-l",
            &builder.selector(),
            "--wait=true",
        ]);
        builder
    }

    /// A new builder named after `prefix`, created by `kb` with the driver
    /// and one node pool per item of `pools` (`create`, then `create
    /// --append`); `create` returns once its pods are ready.
    fn create(cluster: &'a Cluster, kb: &Client, prefix: &str, pools: &[&[&str]]) -> Builder<'a> {
        let builder = Builder::guard(cluster, &name(prefix));
        let pools: Vec<Vec<String>> = pools
            .iter()
            .map(|args| {
                ["--driver", "kubernetes"]
                    .iter()
                    .chain(args.iter())
                    .map(|a| a.to_string())
                    .collect()
            })
            .collect();
        kb.create(&builder.name, &pools);
        builder
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The label selector of everything the builder made.
    fn selector(&self) -> String {
        format!("kubectl-build.io/builder={}", self.name)
    }

    /// Everything of the builder left in the namespace (as the admin).
    fn left(&self) -> String {
        self.cluster
            .admin_in(&[
                "get",
                "deployments,replicasets,pods,configmaps,serviceaccounts,services",
                "-l",
                &self.selector(),
                "-o",
                "name",
            ])
            .ok()
            .stdout
    }

    /// The builder's pods (as the admin): pool label → (pod, node).
    fn pods(&self) -> BTreeMap<String, (String, String)> {
        let list = self
            .cluster
            .admin_in(&["get", "pods", "-l", &self.selector(), "-o", "json"])
            .ok()
            .json();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                (
                    p["metadata"]["labels"]["kubectl-build.io/pool"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    (
                        p["metadata"]["name"].as_str().unwrap().to_string(),
                        p["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Builder<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.admin_in(&[
            "delete",
            "deployments",
            "-l",
            &self.selector(),
            "--wait=false",
        ]);
    }
}

/// Docker-registry secrets of `server` for `user:password`, one per name in
/// `names`, made as the admin and deleted however the test ends.
fn registry_secrets<'a>(
    c: &'a Cluster,
    names: &[&str],
    server: &str,
    user: &str,
    password: &str,
) -> cluster::Owned<'a> {
    let mut secrets = cluster::Owned::new(c, "secret");
    for name in names {
        secrets.push(*name);
        c.admin_in(&[
            "create",
            "secret",
            "docker-registry",
            name,
            &format!("--docker-server={server}"),
            &format!("--docker-username={user}"),
            &format!("--docker-password={password}"),
        ])
        .ok();
    }
    secrets
}

/// `ctr -n k8s.io images ARGS` against node `n`'s containerd.
fn node_images(c: &Cluster, n: u8, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("--address")
        .arg(c.containerd_socket(n))
        .args(["-n", "k8s.io", "images"])
        .args(args)
        .output()
        .expect("run ctr")
}

/// Removes `image` from both nodes' containerd (where it is).
fn remove_from_nodes(c: &Cluster, image: &str) {
    for n in 1..=2 {
        let _ = node_images(c, n, &["rm", image]);
    }
}

/// An image loaded into the nodes' containerd, removed from both however
/// the test ends.
struct Loaded<'a>(&'a Cluster, String);

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        remove_from_nodes(self.0, &self.1);
    }
}

/// A plain-HTTP registry the pods reach (on `ip`, node 1's address) that
/// holds the busybox fixture for `platforms`, pushed by a local build as
/// `REGISTRY/kbuild-test/busybox:TAG`: the registry and that reference.
fn registry_with_busybox(
    kb: &Client,
    ip: Ipv4Addr,
    busybox: &Path,
    platforms: &str,
    tag: &str,
) -> (TestRegistry, String) {
    let registry = TestRegistry::start_on(ip).expect("start a registry pods reach");
    let base = format!("{}/kbuild-test/busybox:{tag}", registry.host());
    common::kb(&kb.path("local-store"), [busybox.to_str().unwrap()])
        .builder("local")
        .platform(platforms)
        .push_to(&base, &registry.host())
        .ok();
    (registry, base)
}

/// The address pods reach this machine at: node 1's InternalIP.
fn node_ip(c: &Cluster) -> Ipv4Addr {
    let out = c
        .admin(&[
            "get",
            "node",
            cluster::NODES[0],
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ])
        .ok()
        .stdout;
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("node IP {out:?}: {e}"))
}

/// A context in `kb`'s directory whose Dockerfile only copies (so
/// windows/amd64 builds too).
fn copy_context(kb: &Client, token: &str) -> String {
    let ctx = kb.context("ctx", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    std::fs::write(
        Path::new(&ctx).join("hello.txt"),
        format!("hello {token}\n"),
    )
    .unwrap();
    ctx
}

fn skopeo_index(reference: &str, creds: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    Run::from(out).ok().json()
}

/// The platforms of an index (`os/architecture[/variant]`), sorted.
fn platforms_of(index: &serde_json::Value) -> Vec<String> {
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("not an index: {index}"))
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let os_arch = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or_default(),
                p["architecture"].as_str().unwrap_or_default()
            );
            match p["variant"].as_str() {
                Some(v) => format!("{os_arch}/{v}"),
                None => os_arch,
            }
        })
        .collect();
    platforms.sort();
    platforms
}

/// The Deployment of builder `b` (as the admin sees it) carries the
/// options `create_ls_rm_with_replicas_selector_tolerations_and_resources`
/// created it with.
fn assert_deployment_has_the_options(c: &Cluster, b: &str) {
    let d = c
        .admin_in(&["get", "deployment", b, "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kubectl-build"
    );
    assert_eq!(d["metadata"]["labels"]["kubectl-build.io/builder"], b);
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeSelector"]["kubernetes.io/hostname"],
        "kbuild-node1"
    );
    assert_eq!(pod["tolerations"][0]["key"], "kbuild.test/dedicated");
    assert_eq!(pod["tolerations"][0]["effect"], "NoSchedule");
    let container = &pod["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "10m");
    assert_eq!(container["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(container["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(container["securityContext"]["privileged"], true);
    assert_eq!(d["status"]["readyReplicas"], 2, "{}", d["status"]);
}

/// `other`'s `ls` lists builder `b` from the cluster: two ready pods on
/// node 1, with their native and emulated platforms.
fn assert_listed_from_the_cluster(other: &Client, b: &str) {
    let ls = other.kb(["ls", "--format", "json"]).json();
    let entry = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == b)
        .unwrap_or_else(|| panic!("ls does not list {b}: {ls}"));
    assert_eq!(entry["driver"], "kubernetes");
    let nodes = entry["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{entry}");
    for n in nodes {
        assert_eq!(n["status"], "running", "{n}");
        assert_eq!(n["ready"], true);
        assert_eq!(n["kubernetes_node"], "kbuild-node1");
        assert!(
            n["endpoint"]
                .as_str()
                .unwrap()
                .starts_with(&format!("kubernetes://{}/{b}-", cluster::NAMESPACE)),
            "{n}"
        );
        let native: Vec<&str> = n["native_platforms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(native.contains(&"linux/amd64"), "{n}");
        assert!(
            n["emulated_platforms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["platform"] == "linux/arm64"),
            "QEMU in the builder image: {n}"
        );
    }
    let table = other.kb(["ls"]).ok().stdout;
    assert!(table.contains("on kbuild-node1"), "{table}");
}

/// `ls -A`: the restricted user `other` is told it may only list its
/// namespace, and sees `b` there; the admin lists `b` from every namespace
/// but not from its own.
fn assert_listed_in_all_namespaces(c: &Cluster, other: &Client, b: &str) {
    let out = other.kb(["ls", "-A", "--format", "json"]).ok();
    let (stderr, listed) = (&out.stderr, out.json());
    assert!(
        stderr.contains(&format!(
            "NOTE: you may not list deployments.apps in all namespaces (a cluster-wide list needs a ClusterRole): only namespace {} is listed",
            cluster::NAMESPACE
        )),
        "{stderr}"
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == b && e["namespace"] == cluster::NAMESPACE),
        "{listed}"
    );
    let admin = client_as(c, &c.admin_kubeconfig());
    let default_ns = admin.kb(["ls", "--format", "json"]).run();
    assert!(
        !default_ns.stdout.contains(b),
        "the admin's namespace is not {}: {}",
        cluster::NAMESPACE,
        default_ns.stdout
    );
    let out = admin.kb(["ls", "--all-namespaces"]).ok();
    let (stderr, table) = (out.stderr, out.stdout);
    assert!(!stderr.contains("NOTE"), "{stderr}");
    assert!(
        table.lines().any(|l| l.starts_with(b)
            && l.contains(&format!("kubernetes (namespace {})", cluster::NAMESPACE))),
        "{table}"
    );
    assert_eq!(table.matches("on kbuild-node1").count(), 2, "{table}");
}

#[test]
fn create_ls_rm_with_replicas_selector_tolerations_and_resources() {
    let Some(c) = cluster() else { return };
    let kb = user_client(c);
    let started = Instant::now();
    let builder = Builder::create(
        c,
        &kb,
        "kt-a",
        &[&[
            "--driver-opt",
            "replicas=2,\"nodeselector=kubernetes.io/hostname=kbuild-node1\"",
            "--driver-opt",
            "\"tolerations=key=kbuild.test/dedicated,value=build,effect=NoSchedule\"",
            "--driver-opt",
            "requests.cpu=10m,requests.memory=64Mi,limits.memory=2Gi",
        ]],
    );
    let b = builder.name();
    eprintln!("created with 2 ready pods in {:.1?}", started.elapsed());

    // What the cluster holds, as the admin sees it.
    assert_deployment_has_the_options(c, b);

    // ls: the builder comes from the cluster (another user's builder list
    // is empty), with both pods, their node, readiness and platforms.
    let other = user_client(c);
    assert_listed_from_the_cluster(&other, b);

    // ls -A: the restricted user may not list cluster-wide and is told so
    // in one note, and still sees its namespace; the admin sees the
    // builder from its own default namespace.
    assert_listed_in_all_namespaces(c, &other, b);

    // --load needs the nodes' containerd socket, which this builder does
    // not mount: one line saying how to recreate it, before any build.
    let ctx = copy_context(&kb, "load");
    let stderr = kb
        .kb([ctx.as_str(), "-t", "kbuild.test/never-loaded:1", "--load"])
        .builder(b)
        .fails()
        .stderr;
    assert!(
        stderr.contains(&format!("--load on builder {b} loads through each node's containerd socket, which pod(s) {b}-"))
            && stderr.contains(&format!("kubectl build create {b} --driver kubernetes --driver-opt containerd-socket=/run/containerd/containerd.sock")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // rm removes everything create made, and waits for it.
    let rm = other.kb(["rm", b]).ok().stdout;
    assert!(rm.contains(&format!("{b} removed")), "{rm}");
    assert_eq!(builder.left().trim(), "", "left after rm");
    // The creator's record of it goes too; then the name is unknown.
    kb.kb(["rm", b]).ok();
    let again = kb.kb(["rm", b]).fails().stderr;
    assert!(again.contains(&format!("no builder named {b}")), "{again}");
}

/// `--dry-run` of `ctx` for two platforms while the default builder does
/// not exist: the schedule it would have, and nothing created.
fn assert_dry_run_creates_nothing(kb: &Client, ctx: &str, builder: &Builder) {
    let dry = kb
        .kb([ctx, "--dry-run"])
        .platform("linux/amd64,linux/arm64")
        .ok()
        .stdout;
    assert!(
        dry.contains(&format!(
            "builder buildkit (kubernetes driver, namespace {}): does not exist yet; the build would create it",
            cluster::NAMESPACE
        )),
        "{dry}"
    );
    assert!(
        dry.lines()
            .any(|l| l.trim_start().starts_with("linux/arm64") && l.contains("its pod")),
        "{dry}"
    );
    assert_eq!(builder.left().trim(), "", "--dry-run created something");
}

/// kubectl in `kb`'s environment with this binary on `PATH` as the plugin
/// `kubectl-build` (which `kubectl plugin list` shows); the caller adds
/// `build` and its arguments.
fn kubectl_with_plugin(c: &Cluster, kb: &Client) -> common::Build {
    let plugins = kb.path("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(common::bin(), plugins.join("kubectl-build")).unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin_list = kb
        .command(c.kubectl())
        .env("PATH", &path)
        .args(["plugin", "list"])
        .run();
    assert!(
        plugin_list.stdout.contains("kubectl-build"),
        "{}",
        plugin_list.stdout
    );
    kb.command(c.kubectl()).env("PATH", path)
}

#[test]
fn default_builder_is_created_on_first_use_and_pushes_with_the_cluster_secret() {
    let Some(c) = cluster() else { return };
    let kb = user_client(c);
    let ip = node_ip(c);
    let (user, pass) = ("kbuild", "s3cret-k8s");
    let registry =
        TestRegistry::start_with_htpasswd_on(ip, user, pass).expect("start the auth registry");
    let host = registry.host();
    let creds = format!("{user}:{pass}");
    // No builder buildkit yet, from an earlier run.
    let builder = Builder::absent(c, "buildkit");
    let token = common::unique("tok");
    let ctx = copy_context(&kb, &token);
    // --dry-run while no builder exists: the schedule it would have,
    // and nothing is created.
    assert_dry_run_creates_nothing(&kb, &ctx, &builder);
    // The default-named secret, as a user makes it.
    let _secrets = registry_secrets(c, &["buildkit", "kt-other-secret"], &host, user, pass);
    let image = format!("{host}/kbuild-test/app:{}", &name("b")[..12]);
    let build = |extra: &[&str]| {
        kb.kb([ctx.as_str()])
            .platform("linux/amd64,linux/arm64,windows/amd64")
            .push_to(&image, &host)
            .plain()
            .args(extra)
            .run()
    };

    // (b) first use: the default builder is created, the secret named like
    // it gives the credentials.
    let started = Instant::now();
    let stderr = build(&[]).ok().stderr;
    eprintln!("first build (builder created) in {:.1?}", started.elapsed());
    assert!(
        stderr.contains(&format!(
            "=> creating builder buildkit (kubernetes driver) in namespace {}",
            cluster::NAMESPACE
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("=> builder buildkit: pod buildkit-"),
        "{stderr}"
    );
    let index = skopeo_index(&image, &creds);
    assert_eq!(
        platforms_of(&index),
        ["linux/amd64", "linux/arm64", "windows/amd64"],
        "{index}"
    );
    let digest = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("=> pushed {image}@")))
        .unwrap_or_else(|| panic!("no pushed line: {stderr}"))
        .to_string();
    assert!(builder.left().contains("deployment.apps/buildkit"));

    // (c) a named secret that does not exist is a clear error.
    let stderr = build(&["--registry-secret", "kt-missing-secret"])
        .fails()
        .stderr;
    assert!(
        stderr.contains(&format!(
            "registry secret kt-missing-secret not found in namespace {}",
            cluster::NAMESPACE
        )),
        "{stderr}"
    );
    // A named secret that exists; the builder is not created again.
    let stderr = build(&["--registry-secret", "kt-other-secret"]).ok().stderr;
    assert!(!stderr.contains("creating builder"), "{stderr}");
    assert!(
        stderr.contains(&format!("=> pushed {image}@{digest}")),
        "{stderr}"
    );

    // Without any secret the registry refuses: the credentials came from
    // the cluster, not from elsewhere.
    c.admin_in(&["delete", "secret", "buildkit"]).ok();
    let out = build(&[]);
    assert_ne!(out.code, 0, "pushed without credentials");

    // (e) through kubectl itself, the plugin on PATH: the same result.
    let stderr = kubectl_with_plugin(c, &kb)
        .arg("build")
        .arg("--root")
        .arg(kb.root())
        .arg(&ctx)
        .platform("linux/amd64,linux/arm64,windows/amd64")
        .push_to(&image, &host)
        .plain()
        .args(["--registry-secret", "kt-other-secret"])
        .ok()
        .stderr;
    assert!(
        stderr.contains(&format!("=> pushed {image}@{digest}")),
        "{stderr}"
    );

    kb.kb(["rm", "buildkit"]).ok();
    assert_eq!(builder.left().trim(), "");
}

#[test]
fn user_without_rights_in_a_namespace_gets_the_verb_and_resource() {
    let Some(c) = cluster() else { return };
    let kb = user_client(c);
    let stderr = kb
        .kb(["create", "kt-d", "--driver", "kubernetes", "-n", "default"])
        .fails()
        .stderr;
    assert!(
        stderr.contains(
            "cannot create deployments.apps in namespace default: ask your cluster admin for the Role in deploy/rbac/role.yaml"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // A build there names what it could not do.
    let ctx = copy_context(&kb, "d");
    let stderr = kb.kb([ctx.as_str(), "-n", "default"]).fails().stderr;
    assert!(
        stderr
            .contains("cannot list deployments.apps in namespace default: ask your cluster admin"),
        "{stderr}"
    );
}

#[test]
fn deleting_the_builder_pod_mid_build_fails_clearly_and_tags_nothing() {
    let Some(c) = cluster() else { return };
    let Some(busybox) = common::busybox_context() else {
        return;
    };
    let kb = user_client(c);
    // A base image with a shell, where the pod pulls it from.
    let (registry, base) = registry_with_busybox(&kb, node_ip(c), &busybox, "linux/amd64", "1");
    let host = registry.host();
    let builder = Builder::create(c, &kb, "kt-f", &[&["--platform", "linux/amd64"]]);
    let b = builder.name();
    let ctx = kb.context(
        "ctx",
        &format!("FROM {base}\nRUN echo step-started && sleep 300\n"),
    );
    let image = format!("{host}/kbuild-test/never:1");
    let mut build = kb
        .kb([ctx.as_str()])
        .builder(b)
        .platform("linux/amd64")
        .push_to(&image, &host)
        .plain()
        .spawn();
    let named = format!("=> builder {b}: pod ");
    let line = build.wait_line(&[&named]);
    let pod = line
        .split_once(&named)
        .and_then(|(_, p)| p.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pod named: {line}"))
        .to_string();
    build.wait_line(&["step-started"]);
    let deleted = Instant::now();
    c.admin_in(&["delete", "pod", &pod, "--grace-period=1", "--wait=false"])
        .ok();
    let (code, lines) = build.finish();
    let failed_after = deleted.elapsed();
    let stderr = lines.join("\n");
    assert_ne!(code, 0, "the build succeeded:\n{stderr}");
    assert!(
        failed_after < Duration::from_secs(60),
        "took {failed_after:?}"
    );
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(last.contains(&format!("builder {b}")), "{last}");
    assert!(
        last.contains(&format!("kubernetes://{}/{pod}", cluster::NAMESPACE))
            || last.contains("cancel"),
        "{last}"
    );
    eprintln!("failed {failed_after:.1?} after the pod was deleted: {last}");
    let tagged = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .status()
        .expect("run skopeo");
    assert!(!tagged.success(), "the image was tagged");
}

/// Runs `image` (never pulled) on `node` as the admin until it exits;
/// returns its log.
fn run_loaded(c: &Cluster, pod: &str, image: &str, node: &str) -> String {
    let overrides = serde_json::json!({"spec": {"nodeName": node}}).to_string();
    c.admin_in(&[
        "run",
        pod,
        &format!("--image={image}"),
        "--image-pull-policy=Never",
        "--restart=Never",
        &format!("--overrides={overrides}"),
    ])
    .ok();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let phase = c
            .admin_in(&[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.phase} {.status.containerStatuses[0].state.waiting.reason}",
            ])
            .ok()
            .stdout;
        match phase.split_whitespace().next() {
            Some("Succeeded") => break,
            Some("Failed") => panic!("pod {pod} on {node} failed: {phase}"),
            _ if Instant::now() > deadline => {
                let describe = c.admin_in(&["describe", "pod", pod]);
                panic!(
                    "pod {pod} on {node} did not finish: {phase}\n{}",
                    describe.stdout
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    c.logs(pod)
}

/// The mixed builder of
/// `mixed_cluster_builds_each_platform_on_its_node_and_loads_each_nodes_own`:
/// two pools, each mounting its node's containerd socket (both kubelets of
/// the test cluster run on this machine, each with its own); its amd64 and
/// arm64 pods, each checked to run on its node.
fn mixed_builder<'a>(c: &'a Cluster, kb: &Client) -> (Builder<'a>, String, String) {
    let socket = |n: u8| format!("containerd-socket={}", c.containerd_socket(n).display());
    let started = Instant::now();
    let builder = Builder::create(
        c,
        kb,
        "kt-mix",
        &[
            &[
                "--platform",
                "linux/amd64,linux/386",
                "--driver-opt",
                &socket(1),
            ],
            &[
                "--platform",
                "linux/arm64,linux/arm/v7",
                "--driver-opt",
                &socket(2),
            ],
        ],
    );
    eprintln!("mixed builder ready in {:.1?}", started.elapsed());
    let pods = builder.pods();
    let (amd_pod, amd_node) = pods.get("amd64").expect("an amd64 pod").clone();
    let (arm_pod, arm_node) = pods.get("arm64").expect("an arm64 pod").clone();
    assert_eq!(amd_node, cluster::NODES[0], "{pods:?}");
    assert_eq!(arm_node, cluster::ARM64_NODE, "{pods:?}");
    (builder, amd_pod, arm_pod)
}

/// The `--dry-run` table gives each platform of `schedule` to its pod,
/// natively, as for remote builders.
fn assert_dry_run_schedule(dry: &str, schedule: &[(&str, &String)]) {
    for (platform, pod) in schedule {
        assert!(
            dry.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4
                    && f[0] == *platform
                    && f[1] == pod.as_str()
                    && f[2] == format!("kubernetes://{}/{pod}", cluster::NAMESPACE)
                    && f[3] == "native"
            }),
            "{platform} → {pod} native:\n{dry}"
        );
    }
}

/// Each pod's log shows one build, of its own node's platforms only.
fn assert_each_pod_built_its_own(c: &Cluster, amd_pod: &str, arm_pod: &str) {
    let amd_log = c.logs(amd_pod);
    let arm_log = c.logs(arm_pod);
    assert!(
        amd_log.contains("build: platforms linux/amd64, linux/386"),
        "{amd_log}"
    );
    assert!(
        arm_log.contains("build: platforms linux/arm64, linux/arm/v7"),
        "{arm_log}"
    );
    let builds = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("build: platforms"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(builds(&amd_log).len(), 1, "{amd_log}");
    assert_eq!(builds(&arm_log).len(), 1, "{arm_log}");
    assert!(!builds(&amd_log)[0].contains("arm"), "{amd_log}");
    assert!(!builds(&arm_log)[0].contains("amd64"), "{arm_log}");
}

/// The index pushed as `tag` holds the four platforms, each image's `/m`
/// the `uname -m` of a native run (read through a layout under `dir`).
fn assert_each_platform_ran_natively(dir: &Path, tag: &str) {
    let index = common::skopeo_raw(tag);
    assert_eq!(
        platforms_of(&index),
        ["linux/386", "linux/amd64", "linux/arm/v7", "linux/arm64"],
        "{index}"
    );
    let unames: BTreeMap<String, String> =
        common::last_layer_file(dir, tag, "m").into_iter().collect();
    assert_eq!(unames["linux/amd64"], "x86_64", "{unames:?}");
    assert_eq!(unames["linux/arm64"], "aarch64", "{unames:?}");
    assert_eq!(unames["linux/arm/v7"], "armv7l", "{unames:?}");
    assert!(
        ["i686", "x86_64"].contains(&unames["linux/386"].as_str()),
        "{unames:?}"
    );
}

/// `--load` of `loaded` for two platforms: each pod loaded its platform
/// into its node's containerd (namespace k8s.io).
fn assert_each_node_loaded(stderr: &str, loaded: &str, amd_pod: &str, arm_pod: &str) {
    for (pod, platform) in [(amd_pod, "linux/amd64"), (arm_pod, "linux/arm64")] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("loaded {loaded}"))
                    && l.contains("namespace k8s.io")
                    && l.contains(&format!("unpacked {platform}"))
                    && l.ends_with(&format!("(node {pod})"))),
            "{pod} loads {platform}:\n{stderr}"
        );
    }
}

#[test]
fn mixed_cluster_builds_each_platform_on_its_node_and_loads_each_nodes_own() {
    let Some(c) = cluster() else { return };
    let Some(busybox) = common::busybox_context() else {
        return;
    };
    let kb = user_client(c);
    let ip = node_ip(c);
    let platforms = "linux/amd64,linux/386,linux/arm64,linux/arm/v7";
    let (registry, base) = registry_with_busybox(&kb, ip, &busybox, platforms, "4");
    let host = registry.host();
    let suffix = name("l");
    let loaded = format!("kbuild.test/kt-loaded:{}", &suffix[..12]);
    let (builder, amd_pod, arm_pod) = mixed_builder(c, &kb);
    let b = builder.name();
    // Dropped in reverse: the pods that run the loaded image go first.
    let _loaded = Loaded(c, loaded.clone());
    let mut run_pods = cluster::Owned::new(c, "pod");
    run_pods.push(format!("{b}-run-amd64"));
    run_pods.push(format!("{b}-run-arm64"));
    let schedule = [
        ("linux/amd64", &amd_pod),
        ("linux/386", &amd_pod),
        ("linux/arm64", &arm_pod),
        ("linux/arm/v7", &arm_pod),
    ];
    let ctx = kb.context(
        "ctx",
        &format!("FROM {base}\nRUN uname -m > /m\nCMD [\"cat\", \"/m\"]\n"),
    );
    let build = || kb.kb([ctx.as_str()]).builder(b);

    // --dry-run: the same table as for remote builders, nothing built.
    let dry = build().platform(platforms).arg("--dry-run").ok().stdout;
    assert_dry_run_schedule(&dry, &schedule);
    for pod in [&amd_pod, &arm_pod] {
        let log = c.logs(pod);
        assert!(!log.contains("build: platforms"), "dry-run built: {log}");
    }

    // The build: each platform's RUN in the pod on its node, one index.
    let tag = format!("{host}/kbuild-test/mix:1");
    let stderr = build()
        .platform(platforms)
        .push_to(&tag, &host)
        .plain()
        .ok()
        .stderr;
    for (platform, pod) in schedule {
        assert!(
            stderr.contains(&format!("{platform} → node {pod} (native)")),
            "{stderr}"
        );
    }
    assert_each_pod_built_its_own(c, &amd_pod, &arm_pod);
    assert_each_platform_ran_natively(kb.dir(), &tag);

    // The same build pushed to a registry that needs credentials: the
    // secret named like the builder gives them to both pods and to the
    // merged index's push.
    let (user, pass) = ("kbuild", "s3cret-mix");
    let auth =
        TestRegistry::start_with_htpasswd_on(ip, user, pass).expect("start the auth registry");
    let auth_host = auth.host();
    let secret = registry_secrets(c, &[b], &auth_host, user, pass);
    let auth_tag = format!("{auth_host}/kbuild-test/mix:1");
    build()
        .platform(platforms)
        .push_to(&auth_tag, &auth_host)
        .args(["--insecure-registry", &host])
        .plain()
        .ok();
    let index = skopeo_index(&auth_tag, &format!("{user}:{pass}"));
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(4),
        "{index}"
    );
    drop(secret);

    // --load of two platforms: each node loads its own into its
    // containerd (namespace k8s.io); pods run it without pulling.
    let stderr = build()
        .platform("linux/amd64,linux/arm64")
        .args(["-t", &loaded, "--load"])
        .plain()
        .ok()
        .stderr;
    assert_each_node_loaded(&stderr, &loaded, &amd_pod, &arm_pod);
    // -o type=containerd given explicitly goes the same way: one
    // platform, one pod, its node's containerd.
    let explicit = format!("{loaded}-explicit");
    build()
        .platform("linux/arm64")
        .output(format!("type=containerd,name={explicit}"))
        .plain()
        .ok();
    let images = |n: u8| Run::from(node_images(c, n, &["ls", "-q"])).ok().stdout;
    let (node1, node2) = (images(1), images(2));
    assert!(node2.lines().any(|l| l == explicit), "{node2}");
    assert!(!node1.lines().any(|l| l == explicit), "{node1}");
    remove_from_nodes(c, &explicit);

    let log = run_loaded(c, &run_pods.names()[0], &loaded, cluster::NODES[0]);
    assert_eq!(log.trim(), "x86_64");
    let log = run_loaded(c, &run_pods.names()[1], &loaded, cluster::ARM64_NODE);
    assert_eq!(log.trim(), "aarch64");
}

/// `prune --builder` of a kubernetes builder prunes every ready pod through
/// the API server (the same exec as a build), one line per pod.
#[test]
fn prune_builder_prunes_every_pod() {
    let Some(c) = cluster() else { return };
    let kb = user_client(c);
    let builder = Builder::create(
        c,
        &kb,
        "kt-prune",
        &[&[
            "--driver-opt",
            "replicas=2,\"nodeselector=kubernetes.io/hostname=kbuild-node1\"",
        ]],
    );
    let b = builder.name();
    // A result kept only in a pod's build cache.
    let ctx = kb.context("ctx", "FROM scratch\nCOPY data /\n");
    std::fs::write(Path::new(&ctx).join("data"), "x".repeat(8192)).unwrap();
    kb.kb([ctx.as_str(), "--builder", b]).quiet().ok();
    let out = kb.kb(["prune", "--builder", b, "--all"]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let pods: Vec<&str> = lines[..2]
        .iter()
        .map(|l| l.split(": ").next().unwrap_or(""))
        .collect();
    for pod in &pods {
        assert!(pod.starts_with(b), "{out}");
    }
    assert_ne!(pods[0], pods[1], "{out}");
    // The pod that built had blobs to free.
    assert!(
        lines[..2].iter().any(|l| !l.contains("removed 0 blobs")),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("builder {b}: 2 of 2 nodes pruned")),
        "{out}"
    );
    kb.kb(["rm", b]).ok();
}

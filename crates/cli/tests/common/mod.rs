//! Helpers shared by the command-line integration tests: run the real
//! binary, with its own store, against real registries and daemons.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubectl-build"))
}

#[allow(unused_imports)]
pub use kbuild_testkit::client::{error_lines, Build, Client, Run};

/// Run `kubectl-build` with `args`, store under `root`, extra environment `env`.
pub fn run(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Build::new(&bin(), root).args(args).envs(env).run()
}

/// `kubectl-build --root STORE ARGS` (the command is yet to run).
pub fn kb<I, S>(store: &Path, args: I) -> Build
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Build::new(&bin(), store).args(args)
}

/// A client of the binary under test, in its own scratch directory.
pub fn client() -> Client {
    Client::new(&bin())
}

/// A `kubectl-build serve` daemon of the binary under test on a unix
/// socket in `client`'s directory (serve arguments `args` added),
/// registered there as builder `name`, its one node.
pub fn serve_builder(client: &Client, name: &str, args: &[&str]) -> kbuild_testkit::node::Node {
    let node = node(client.dir(), name).args(args.iter().copied()).start();
    client.create(name, &[node.via_unix()]);
    node
}

/// A `kubectl-build serve` node of the binary under test, with its store
/// and socket in `dir` (see [`kbuild_testkit::node::Node::spec`]).
pub fn node(dir: &Path, name: &str) -> kbuild_testkit::node::NodeSpec {
    kbuild_testkit::node::Node::spec(&bin(), dir, name)
}

/// Skip (or fail under CI) when the test cannot run here.
pub fn require_root() -> bool {
    kbuild_testkit::fixtures::require_root("the local builder mounts overlayfs and needs root")
}

/// The seven Linux platforms of the busybox fixture.
pub const SEVEN: &str =
    "linux/amd64,linux/arm64,linux/arm/v7,linux/arm/v6,linux/386,linux/ppc64le,linux/s390x";

/// `skopeo inspect --raw` of a pushed reference.
pub fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("skopeo printed JSON")
}

/// Write a file, creating parents.
pub fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Writes `DIR/NAME/Dockerfile` and returns the context directory.
pub fn context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = dir.join(name);
    write(&ctx.join("Dockerfile"), dockerfile);
    ctx.to_str().expect("a UTF-8 context path").to_string()
}

/// The busybox fixture context, or `None` after [`kbuild_testkit::fixtures::skip_or_fail`].
pub fn busybox_context() -> Option<PathBuf> {
    let ctx = kbuild_testkit::fixtures::busybox_context();
    if ctx.is_none() {
        kbuild_testkit::fixtures::skip_or_fail("busybox fixtures missing: run scripts/fixtures.sh");
    }
    ctx
}

/// The name RUN tests use for the busybox base in their local store.
pub const BUSYBOX: &str = "kbuild.test/busybox:latest";

/// Builds the busybox fixture for `platforms` into `store`'s local images as
/// [`BUSYBOX`] (COPY only, so every platform builds), for `FROM` in RUN tests.
pub fn busybox_image(store: &Path, platforms: &str) -> Option<&'static str> {
    let ctx = busybox_context()?;
    run(
        store,
        &[
            ctx.to_str().unwrap(),
            "--platform",
            platforms,
            "-t",
            BUSYBOX,
            "-o",
            "type=image",
            "--progress",
            "quiet",
        ],
        &[],
    )
    .ok();
    Some(BUSYBOX)
}

/// A scratch directory and a store in it holding [`BUSYBOX`] for
/// `platforms` (see [`busybox_image`]); `None` after
/// [`kbuild_testkit::fixtures::skip_or_fail`] when not root or without the
/// fixtures.
pub fn busybox_store(platforms: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !require_root() {
        return None;
    }
    let t = tempfile::tempdir().expect("make a temporary directory");
    let store = t.path().join("store");
    busybox_image(&store, platforms)?;
    Some((t, store))
}

/// A value no file of the test machine holds before the test writes it.
pub fn unique(prefix: &str) -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("read a uuid");
    format!("{prefix}-{}", uuid.trim())
}

/// Parse one JSON document.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The blob file of `digest` in an OCI layout directory.
pub fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The image manifests of an OCI layout directory (following an index
/// one level down), as (platform or "", manifest JSON).
pub fn layout_manifests(layout: &Path) -> Vec<(String, serde_json::Value)> {
    let top = read_json(&layout.join("index.json"));
    let mut out = Vec::new();
    for d in top["manifests"].as_array().unwrap() {
        let doc = read_json(&layout_blob(layout, d["digest"].as_str().unwrap()));
        if doc["manifests"].is_array() {
            for m in doc["manifests"].as_array().unwrap() {
                let p = &m["platform"];
                let mut plat = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or("")
                );
                if let Some(v) = p["variant"].as_str() {
                    plat = format!("{plat}/{v}");
                }
                let man = read_json(&layout_blob(layout, m["digest"].as_str().unwrap()));
                out.push((plat, man));
            }
        } else {
            out.push((String::new(), doc));
        }
    }
    out
}

/// The entry names of every layer of `manifest` (in layer order), read with
/// the system's `tar`, which decompresses gzip and zstd itself.
pub fn layer_entries(layout: &Path, manifest: &serde_json::Value) -> Vec<Vec<String>> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let blob = layout_blob(layout, l["digest"].as_str().unwrap());
            let out = Command::new("tar")
                .arg("-tf")
                .arg(&blob)
                .output()
                .expect("run tar");
            assert!(
                out.status.success(),
                "tar -tf {}: {}",
                blob.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|s| s.trim_start_matches("./").to_string())
                .collect()
        })
        .collect()
}

/// `skopeo copy` of a pushed reference into a fresh OCI layout directory.
pub fn skopeo_to_layout(reference: &str, layout: &Path) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:x", layout.display()),
        ])
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every regular file under `dir` whose bytes contain `needle`; files that
/// are gzip or zstd streams (layer blobs) are searched decompressed too.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let Ok(bytes) = std::fs::read(&p) else {
                    continue;
                };
                let plain = match bytes.get(..4) {
                    Some([0x1f, 0x8b, _, _]) => decompress("gzip", &p),
                    Some([0x28, 0xb5, 0x2f, 0xfd]) => decompress("zstd", &p),
                    _ => None,
                };
                if contains(&bytes, needle) || plain.is_some_and(|b| contains(&b, needle)) {
                    found.push(p);
                }
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn decompress(tool: &str, path: &Path) -> Option<Vec<u8>> {
    let out = Command::new(tool).arg("-dc").arg(path).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// Extracts the layers of `manifest` into `dir` in order, applying OCI
/// whiteouts (`.wh.NAME` removes NAME of lower layers, `.wh..wh..opq`
/// empties its directory) as a runtime would.
pub fn unpack_layers(layout: &Path, manifest: &serde_json::Value, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let entries = layer_entries(layout, manifest);
    for (l, names) in manifest["layers"].as_array().unwrap().iter().zip(entries) {
        let whiteouts: Vec<&String> = names
            .iter()
            .filter(|n| {
                Path::new(n.as_str())
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(".wh."))
            })
            .collect();
        for w in &whiteouts {
            let path = Path::new(w.as_str());
            let parent = dir.join(path.parent().unwrap_or(Path::new("")));
            let name = path.file_name().unwrap().to_string_lossy();
            if name == ".wh..wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        let _ = std::fs::remove_dir_all(e.path())
                            .or_else(|_| std::fs::remove_file(e.path()));
                    }
                }
            } else {
                let target = parent.join(name.trim_start_matches(".wh."));
                let _ = std::fs::remove_dir_all(&target).or_else(|_| std::fs::remove_file(&target));
            }
        }
        let blob = layout_blob(layout, l["digest"].as_str().unwrap());
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&blob)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("run tar");
        assert!(st.success(), "untar {}", blob.display());
        for w in whiteouts {
            let _ = std::fs::remove_file(dir.join(w));
        }
    }
}

/// The names of the steps `--progress plain` reported as CACHED.
pub fn cached_steps(stderr: &str) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut cached = Vec::new();
    for line in stderr.lines() {
        let Some((id, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if rest.starts_with('[') {
            names.insert(id.to_string(), rest.to_string());
        } else if rest == "CACHED" {
            cached.push(names.get(id).cloned().unwrap_or_default());
        }
    }
    cached
}

/// Builds context `ctx` for `platforms` with `-o type=local,dest=DEST`
/// (plus `extra` flags), expecting success; returns `dest`.
pub fn build_local(
    store: &Path,
    ctx: &str,
    platforms: &str,
    dest: &Path,
    extra: &[&str],
) -> PathBuf {
    let output = format!("type=local,dest={}", dest.display());
    let mut args = vec![ctx, "--platform", platforms, "-o", &output];
    args.extend_from_slice(extra);
    run(store, &args, &[]).ok();
    dest.to_path_buf()
}

/// Writes `bytes` as a blob of the OCI layout directory `layout` and
/// returns its digest.
pub fn layout_put_blob(layout: &Path, bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// `skopeo inspect FLAG oci:LAYOUT` (`--raw` for the top document,
/// `--config` for a single image's config), parsed: the independent reader
/// of OCI layout directories.
pub fn skopeo_inspect_layout(layout: &Path, flag: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", flag])
        .arg(format!("oci:{}", layout.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {flag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("skopeo prints JSON")
}

/// The file `name` of the last layer of each platform's image of the
/// pushed index `reference` (copied into a new layout under `dir`), as
/// (platform, content).
pub fn last_layer_file(dir: &Path, reference: &str, name: &str) -> Vec<(String, String)> {
    let layout = dir.join(format!("layout-{}", unique("l")));
    skopeo_to_layout(reference, &layout);
    layout_manifests(&layout)
        .into_iter()
        .map(|(platform, manifest)| {
            let last = manifest["layers"]
                .as_array()
                .and_then(|l| l.last())
                .unwrap_or_else(|| panic!("{platform}: no layer: {manifest}"));
            let blob = layout_blob(&layout, last["digest"].as_str().expect("digest"));
            let out = Command::new("tar")
                .arg("-xOf")
                .arg(&blob)
                .arg(name)
                .output()
                .expect("run tar");
            assert!(
                out.status.success(),
                "{platform}: no {name} in the last layer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                platform,
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )
        })
        .collect()
}

/// Asserts `skopeo` reads `reference` with the credentials
/// `user:password`.
pub fn assert_readable_with(reference: &str, user: &str, password: &str) {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{user}:{password}"),
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a registry question of the daemon gets from [`CredentialsOnly`].
pub type CredentialsAnswer =
    Result<Option<kbuild_registry::RegistryLogin>, kbuild_driver::session::LocalError>;

/// The client side of a session a test drives by hand: it drops progress,
/// holds no secrets, was asked for no output (a streamed one is an error),
/// and answers the daemon's credentials questions with its function.
pub struct CredentialsOnly<F>(pub F);

impl<F> kbuild_driver::session::Local for CredentialsOnly<F>
where
    F: Fn(&str) -> CredentialsAnswer + Send + Sync + 'static,
{
    fn progress(&self, _: kbuild_proto::v1::ProgressEvent) {}

    fn credentials(&self, host: &str) -> CredentialsAnswer {
        (self.0)(host)
    }

    fn secret(&self, _: &str) -> Result<Option<Vec<u8>>, kbuild_driver::session::LocalError> {
        Ok(None)
    }

    fn result(
        &self,
        output: u32,
        _: Vec<u8>,
        _: bool,
    ) -> Result<(), kbuild_driver::session::LocalError> {
        Err(format!("no output was asked for, got {output}").into())
    }
}

//! `serve`, `create`, `ls`, `rm`, `use`: the daemon and the builder list.
//! The work is in kbuild-serve and kbuild-driver; this renders it.

use crate::args::{CreateArgs, GlobalArgs, LsArgs, LsFormat, ServeArgs};
use kbuild_driver::config::{self, Config, NodeSpec};
use kbuild_driver::{Node, NodeInfo, LOCAL};
use kbuild_platform::Platform;
use kbuild_proto::Endpoint;
use std::process::ExitCode;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The runtime of a builder command.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// A `--platform` value of `serve` or `create` that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("--platform {spec:?}: {source}")]
pub(crate) struct PlatformFlagError {
    /// The value as given.
    spec: String,
    /// Why it does not parse.
    #[source]
    source: kbuild_platform::Error,
}

/// `--platform` values (each a comma-separated list), normalized, each
/// platform once.
pub(crate) fn platform_flags(
    list: &[String],
) -> std::result::Result<Vec<kbuild_platform::Platform>, PlatformFlagError> {
    let mut out: Vec<kbuild_platform::Platform> = Vec::new();
    for spec in list {
        let parsed = kbuild_platform::parse_list(spec).map_err(|source| PlatformFlagError {
            spec: spec.clone(),
            source,
        })?;
        for p in parsed {
            let p = p.normalized();
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// `kubectl build serve`.
pub fn serve(args: &ServeArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let addrs = args
        .addrs
        .iter()
        .map(|a| Endpoint::parse_listen(a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let platforms = if args.platforms.is_empty() {
        None
    } else {
        Some(platform_flags(&args.platforms)?)
    };
    let tls = kbuild_serve::TlsFiles::from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_ca.clone(),
    )?;
    if args.install_emulation {
        for (platform, support) in kbuild_worker::binfmt::report() {
            if support.runs() || platform.os != "linux" {
                continue;
            }
            match kbuild_worker::binfmt::ensure(&platform) {
                Ok(action) => tracing::info!(%platform, %action, "emulation"),
                Err(e) => tracing::warn!(%platform, error = %e, "no emulation"),
            }
        }
    }
    // The store builds will use: opened (and created) now so a bad --root
    // fails at start, not at the first build.
    let (store, root) = crate::build::open_store(global)?;
    // What builds of a daemon that died left (ingest files, mounts,
    // snapshot directories) is reclaimed now; live entries are locked.
    let snaps_root = root.join("snapshots");
    let snaps = kbuild_worker::snapshot::Snapshotter::new(&snaps_root).map_err(|source| {
        crate::build::BuildError::Snapshots {
            path: snaps_root.clone(),
            source,
        }
    })?;
    crate::build::recover(&store, &snaps);
    let protocol = match args.test_protocol_version {
        Some(v) => (v, v),
        None => (
            kbuild_proto::MIN_PROTOCOL_VERSION,
            kbuild_proto::PROTOCOL_VERSION,
        ),
    };
    let config = kbuild_serve::Config {
        addrs,
        root,
        platforms,
        tls,
        insecure: args.insecure,
        protocol,
        keep_contexts: args.keep_contexts,
    };
    let rt = runtime()?;
    let served = rt.block_on(async {
        let signal = kbuild_serve::shutdown_signal()?;
        kbuild_serve::serve(config, signal).await
    });
    // Builds are cancelled by now; a blocking thread still busy for one
    // (compressing a layer nobody will use) must not keep the daemon alive.
    rt.shutdown_timeout(kbuild_serve::DRAIN_TIMEOUT / 2);
    served?;
    Ok(ExitCode::SUCCESS)
}

fn load() -> Result<(Config, std::path::PathBuf)> {
    let path = config::default_path()?;
    Ok((Config::load(&path)?, path))
}

/// `kubectl build create`.
pub fn create(args: &CreateArgs, global: &GlobalArgs) -> Result<ExitCode> {
    if args.driver == kbuild_driver::kubernetes::DRIVER {
        return crate::kube::create(args, global);
    }
    let (mut config, path) = load()?;
    let spec = NodeSpec {
        driver: args.driver.clone(),
        endpoint: args.endpoint.clone().ok_or(
            "the remote driver needs --endpoint unix:///path/to/socket or tcp://HOST:PORT",
        )?,
        platforms: args.platforms.clone(),
        driver_opts: args.driver_opts.clone(),
    };
    config.create(&args.name, &spec, args.append)?;
    config.save(&path)?;
    println!("{}", args.name);
    Ok(ExitCode::SUCCESS)
}

/// `kubectl build rm`.
pub fn rm(name: &str, global: &GlobalArgs) -> Result<ExitCode> {
    let (mut config, path) = load()?;
    let remote = config
        .builders
        .get(name)
        .is_some_and(|b| b.driver != kbuild_driver::kubernetes::DRIVER);
    if !remote && name != LOCAL {
        if let Some(code) = crate::kube::rm(name, global)? {
            return Ok(code);
        }
    }
    config.remove(name)?;
    config.save(&path)?;
    println!("{name} removed");
    Ok(ExitCode::SUCCESS)
}

/// `kubectl build use`.
pub fn use_builder(name: &str) -> Result<ExitCode> {
    let (mut config, path) = load()?;
    config.use_builder(name)?;
    config.save(&path)?;
    Ok(ExitCode::SUCCESS)
}

/// One row of `ls`: a node and what it said.
struct Row {
    builder: String,
    driver: String,
    node: Node,
    result: std::result::Result<NodeInfo, NoInfo>,
    /// A builder pod: the Kubernetes node it runs on, whether it is
    /// ready, and why it could not be asked.
    pod: Option<(Option<String>, bool, Option<String>)>,
    /// A kubernetes builder's namespace.
    namespace: Option<String>,
}

/// Why a row has no Info.
#[derive(Debug, thiserror::Error)]
enum NoInfo {
    /// The node's daemon did not answer.
    #[error(transparent)]
    Daemon(#[from] kbuild_driver::Error),
    /// The builder pod could not be asked.
    #[error(transparent)]
    Pod(#[from] crate::kube::PodProblem),
}

fn status(r: &Row) -> &'static str {
    match (&r.pod, &r.result) {
        (Some((_, false, _)), _) => "not ready",
        (Some((_, true, Some(_))), _) => "unreachable",
        (_, Ok(_)) => "running",
        (_, Err(NoInfo::Daemon(kbuild_driver::Error::Protocol { .. }))) => "version mismatch",
        (_, Err(_)) => "unreachable",
    }
}

/// What a row shows as its endpoint: a pod says where it runs.
fn endpoint_text(r: &Row) -> String {
    match &r.pod {
        Some((Some(node), _, _)) => format!("{} on {node}", r.node.endpoint),
        _ => r.node.endpoint.clone(),
    }
}

/// Why a row has no Info.
fn error_text(r: &Row) -> Option<String> {
    match (&r.pod, &r.result) {
        (Some((_, _, Some(e))), _) => Some(e.clone()),
        (_, Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

/// The embedded builder, described as a daemon would describe itself.
fn local_info() -> NodeInfo {
    let platforms = kbuild_serve::platforms(None);
    let (cpus, free_cores) = kbuild_serve::cpu_load();
    NodeInfo {
        protocol: kbuild_proto::PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: String::new(),
        native: platforms.native,
        emulated: platforms.emulated,
        running_builds: 0,
        cpus,
        free_cores,
    }
}

/// `kubectl build ls`.
pub fn ls(args: &LsArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let (config, _) = load()?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut rows = vec![Row {
        builder: LOCAL.to_string(),
        driver: "local".to_string(),
        node: Node {
            name: format!("{LOCAL}0"),
            endpoint: "local".to_string(),
            platforms: Vec::new(),
            tls: Default::default(),
        },
        result: Ok(local_info()),
        pod: None,
        namespace: None,
    }];
    // Every node at once, each within the timeout.
    let remote = runtime()?.block_on(async {
        let mut tasks = Vec::new();
        for (name, builder) in &config.builders {
            if builder.driver == kbuild_driver::kubernetes::DRIVER {
                continue;
            }
            for node in &builder.nodes {
                let (name, node, driver) = (name.clone(), node.clone(), builder.driver.clone());
                tasks.push(tokio::spawn(async move {
                    let result = kbuild_driver::info(&name, &node, timeout).await;
                    Row {
                        result: result.map_err(NoInfo::Daemon),
                        builder: name,
                        driver,
                        node,
                        pod: None,
                        namespace: None,
                    }
                }));
            }
        }
        let mut rows = Vec::new();
        for t in tasks {
            rows.push(t.await);
        }
        rows
    });
    for r in remote {
        rows.push(r?);
    }
    // Kubernetes builders: what the cluster has, by label.
    let mut unreachable_cluster = None;
    let mut notes = Vec::new();
    match crate::kube::ls_rows(global, &config, args.all_namespaces) {
        Ok((pods, n)) => {
            notes = n;
            for p in pods {
                let (result, error) = match p.result {
                    Ok(info) => (Ok(info), None),
                    Err(e) => {
                        let text = e.to_string();
                        (Err(NoInfo::Pod(e)), Some(text))
                    }
                };
                rows.push(Row {
                    builder: p.builder,
                    driver: kbuild_driver::kubernetes::DRIVER.to_string(),
                    node: p.node,
                    result,
                    pod: Some((p.k8s_node, p.ready, error)),
                    namespace: Some(p.namespace),
                });
            }
        }
        Err(e) => unreachable_cluster = Some(e.to_string()),
    }
    match args.format {
        LsFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&ls_json(&config, &rows))?
        ),
        LsFormat::Table => print!("{}", ls_table(&config, &rows)),
    }
    for n in notes {
        eprintln!("NOTE: {n}");
    }
    if let Some(e) = unreachable_cluster {
        eprintln!("WARNING: kubernetes builders not listed: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

fn platform_list(node: &Node, info: &NodeInfo) -> Vec<String> {
    // As buildx: the platforms the user assigned (marked *), then the rest.
    let mut out: Vec<String> = node.platforms.iter().map(|p| format!("{p}*")).collect();
    let known = |p: &Platform| node.platforms.iter().any(|n| *n == p.to_string());
    for p in &info.native {
        if !known(p) {
            out.push(p.to_string());
        }
    }
    for (p, _) in &info.emulated {
        if !known(p) {
            out.push(format!("{p} (emulated)"));
        }
    }
    out
}

fn ls_table(config: &Config, rows: &[Row]) -> String {
    let mut table: Vec<[String; 6]> = vec![[
        "NAME/NODE".into(),
        "DRIVER/ENDPOINT".into(),
        "STATUS".into(),
        "VERSION".into(),
        "BUILDS FREE/CPUS".into(),
        "PLATFORMS".into(),
    ]];
    let mut errors: Vec<(usize, String)> = Vec::new();
    let mut last_builder = None;
    for r in rows {
        if last_builder != Some((&r.builder, &r.namespace)) {
            let mark = if config.current() == r.builder {
                "*"
            } else {
                ""
            };
            table.push([
                format!("{}{mark}", r.builder),
                match &r.namespace {
                    Some(ns) => format!("{} (namespace {ns})", r.driver),
                    None => r.driver.clone(),
                },
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            last_builder = Some((&r.builder, &r.namespace));
        }
        let (version, load, platforms) = match &r.result {
            Ok(info) => (
                info.version.clone(),
                format!(
                    "{} {:.1}/{}",
                    info.running_builds, info.free_cores, info.cpus
                ),
                platform_list(&r.node, info).join(", "),
            ),
            Err(_) => {
                errors.push((table.len(), error_text(r).unwrap_or_default()));
                (
                    String::new(),
                    String::new(),
                    r.node
                        .platforms
                        .iter()
                        .map(|p| format!("{p}*"))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            }
        };
        table.push([
            format!("  {}", r.node.name),
            endpoint_text(r),
            status(r).to_string(),
            version,
            load,
            platforms,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            if j + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[j]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for (_, e) in errors.iter().filter(|(row, _)| *row == i) {
            out.push_str(&format!("    error: {e}\n"));
        }
    }
    out
}

fn ls_json(config: &Config, rows: &[Row]) -> serde_json::Value {
    let mut builders: Vec<serde_json::Value> = Vec::new();
    for r in rows {
        let mut node = match &r.result {
            Ok(info) => serde_json::json!({
                "name": r.node.name,
                "endpoint": r.node.endpoint,
                "status": status(r),
                "platforms": r.node.platforms,
                "version": info.version,
                "protocol": info.protocol,
                "hostname": info.hostname,
                "native_platforms": info.native.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "emulated_platforms": info.emulated.iter().map(|(p, h)| serde_json::json!({"platform": p.to_string(), "handler": h})).collect::<Vec<_>>(),
                "load": {"running_builds": info.running_builds, "cpus": info.cpus, "free_cores": info.free_cores},
            }),
            Err(_) => serde_json::json!({
                "name": r.node.name,
                "endpoint": r.node.endpoint,
                "status": status(r),
                "platforms": r.node.platforms,
                "error": error_text(r),
            }),
        };
        if let Some((k8s_node, ready, _)) = &r.pod {
            node["kubernetes_node"] = serde_json::json!(k8s_node);
            node["ready"] = serde_json::json!(ready);
        }
        match builders.last_mut() {
            Some(b)
                if b["name"] == r.builder.as_str()
                    && b.get("namespace").and_then(|n| n.as_str()) == r.namespace.as_deref() =>
            {
                if let Some(nodes) = b["nodes"].as_array_mut() {
                    nodes.push(node);
                }
            }
            _ => {
                let mut b = serde_json::json!({
                    "name": r.builder,
                    "driver": r.driver,
                    "current": config.current() == r.builder,
                    "nodes": [node],
                });
                if let Some(ns) = &r.namespace {
                    b["namespace"] = serde_json::json!(ns);
                }
                builders.push(b)
            }
        }
    }
    serde_json::Value::Array(builders)
}

//! Golden op graphs: every folder under `tests/graph/` holds a `Dockerfile`,
//! optional build options (`options.json`, the fields of `tests/plan.rs`
//! but `failing_images`) and either the whole expected graph
//! (`graph.json`, as `--dry-run=json` prints it under `graph`) or the
//! expected one-line error (`error.txt`).
//!
//! `KBUILD_BLESS=1 cargo test -p kbuild-dockerfile --test graph` rewrites
//! the `graph.json` files from the current output (review the diff).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::Path;

use kbuild_dockerfile::graph::{lower, Graph, OpKind};
use kbuild_dockerfile::plan::{plan, BaseImageConfig, PlanOptions};
use kbuild_platform::Platform;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Options {
    platforms: Option<Vec<String>>,
    build_platform: Option<String>,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    labels: BTreeMap<String, String>,
    images: BTreeMap<String, BaseImageConfig>,
}

fn lower_case(dir: &Path) -> Result<Result<Graph, String>, String> {
    let read = |name: &str| fs::read_to_string(dir.join(name));
    let dockerfile = read("Dockerfile").map_err(|e| format!("Dockerfile: {e}"))?;
    let options: Options = match read("options.json") {
        Ok(t) => serde_json::from_str(&t).map_err(|e| format!("options.json: {e}"))?,
        Err(_) => Options::default(),
    };
    let parse = |s: &str| Platform::parse(s).map_err(|e| e.to_string());
    let platforms = options
        .platforms
        .unwrap_or_else(|| vec!["linux/amd64".to_string()])
        .iter()
        .map(|p| parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = PlanOptions {
        platforms,
        build_platform: parse(options.build_platform.as_deref().unwrap_or("linux/amd64"))?,
        build_args: options.build_args,
        target: options.target,
        labels: options.labels,
        named_contexts: Default::default(),
    };
    let p = match plan(&dockerfile, &opts, &options.images) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(lower(&p).map_err(|e| e.to_string()))
}

/// What holds for every graph, whatever the case.
fn check_invariants(g: &Graph) -> Result<(), String> {
    let mut seen = HashSet::new();
    for op in &g.ops {
        for i in &op.inputs {
            if !seen.contains(i) {
                return Err(format!(
                    "{} reads {i}, which is not listed before it",
                    op.id
                ));
            }
        }
        if !seen.insert(op.id.clone()) {
            return Err(format!("{} is listed twice", op.id));
        }
        let max_input = match &op.op {
            OpKind::Source(_) => {
                if !op.inputs.is_empty() {
                    return Err(format!("source {} has inputs", op.id));
                }
                continue;
            }
            OpKind::Exec(e) => e
                .mounts
                .iter()
                .filter_map(|m| match m {
                    kbuild_dockerfile::graph::ExecMount::Bind { input, .. } => Some(*input),
                    kbuild_dockerfile::graph::ExecMount::Cache { input, .. } => *input,
                    _ => None,
                })
                .max(),
            OpKind::File(f) => f
                .actions
                .iter()
                .filter_map(|a| match a {
                    kbuild_dockerfile::graph::FileAction::Copy { input, .. } => Some(*input),
                    _ => None,
                })
                .max(),
            OpKind::Config(_) => None,
        };
        if op.inputs.is_empty() {
            return Err(format!("{} has no parent state", op.id));
        }
        if max_input.is_some_and(|i| i >= op.inputs.len()) {
            return Err(format!("{} refers to an input it does not have", op.id));
        }
    }
    for t in &g.targets {
        if !seen.contains(&t.result) {
            return Err(format!("target {} is no op", t.platform));
        }
    }
    // The JSON form reads back to the same graph.
    let json = serde_json::to_string(g).map_err(|e| e.to_string())?;
    let back: Graph = serde_json::from_str(&json).map_err(|e| format!("read back: {e}"))?;
    if back != *g {
        return Err("the graph does not read back from its JSON".into());
    }
    Ok(())
}

fn run_case(dir: &Path) -> Result<(), String> {
    let result = lower_case(dir)?;
    if let Ok(want) = fs::read_to_string(dir.join("error.txt")) {
        return match result {
            Ok(_) => Err(format!("expected error {:?}, got a graph", want.trim_end())),
            Err(e) if e == want.trim_end() => Ok(()),
            Err(e) => Err(format!("expected error\n  {}\ngot\n  {e}", want.trim_end())),
        };
    }
    let g = result.map_err(|e| format!("unexpected error: {e}"))?;
    check_invariants(&g)?;
    // Ids are stable: a second run gives the same graph.
    let again = lower_case(dir)?.map_err(|e| format!("second run: {e}"))?;
    if again != g {
        return Err("a second lowering differs".into());
    }
    // The wire form (what a client sends a builder daemon) reads back to
    // the same graph, meta included.
    let wire = g.to_json().map_err(|e| format!("to_json: {e}"))?;
    if Graph::from_json(&wire).map_err(|e| format!("from_json: {e}"))? != g {
        return Err("the graph read back from its JSON differs".into());
    }
    let got = serde_json::to_string_pretty(&g).map_err(|e| e.to_string())? + "\n";
    let path = dir.join("graph.json");
    if std::env::var_os("KBUILD_BLESS").is_some() {
        fs::write(&path, &got).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let want = fs::read_to_string(&path).map_err(|e| format!("graph.json: {e}"))?;
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        return Err(format!(
            "graph differs from graph.json from line {}:\n--- want\n{}\n--- got\n{}",
            first + 1,
            want.lines()
                .skip(first)
                .take(8)
                .collect::<Vec<_>>()
                .join("\n"),
            got.lines()
                .skip(first)
                .take(8)
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    Ok(())
}

#[test]
fn golden_graphs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graph");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .expect("tests/graph")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "golden cases missing: {}", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        if let Err(e) = run_case(dir) {
            failures.push(format!(
                "{}: {e}",
                dir.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

fn lower_text(dockerfile: &str, platforms: &[&str]) -> Graph {
    let opts = PlanOptions {
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        named_contexts: Default::default(),
    };
    let p = plan(dockerfile, &opts, &kbuild_dockerfile::plan::NoImageConfigs).unwrap();
    lower(&p).unwrap()
}

#[test]
fn ids_ignore_line_positions_and_follow_content() {
    let a = "FROM busybox\nWORKDIR /src\nCOPY . .\nRUN make\n";
    let moved = "# a comment\n\nFROM busybox\nWORKDIR /src\n\nCOPY . .\nRUN make\n";
    let changed = "FROM busybox\nWORKDIR /src\nCOPY . .\nRUN make install\n";
    let ids = |g: &Graph| g.ops.iter().map(|o| o.id.clone()).collect::<Vec<_>>();
    let (ga, gm, gc) = (
        lower_text(a, &["linux/amd64"]),
        lower_text(moved, &["linux/amd64"]),
        lower_text(changed, &["linux/amd64"]),
    );
    assert_eq!(ids(&ga), ids(&gm), "moving lines keeps every id");
    assert_ne!(ga.ops.last().unwrap().meta, gm.ops.last().unwrap().meta);
    // Only the changed RUN (the last op) gets a new id.
    let (ia, ic) = (ids(&ga), ids(&gc));
    assert_eq!(ia[..ia.len() - 1], ic[..ic.len() - 1]);
    assert_ne!(ia.last(), ic.last());
}

#[test]
fn build_platform_steps_are_one_op_for_every_target() {
    let g = lower_text(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nCOPY . /src\nARG TARGETARCH\nRUN echo $TARGETARCH > /arch\n\nFROM scratch\nCOPY --from=build /arch /\n",
        &["linux/amd64", "linux/arm64", "linux/s390x"],
    );
    let copies_of_context = g
        .ops
        .iter()
        .filter(|o| o.meta.display.as_deref() == Some("COPY . /src"))
        .count();
    assert_eq!(copies_of_context, 1);
    let runs: Vec<_> = g
        .ops
        .iter()
        .filter(|o| matches!(o.op, OpKind::Exec(_)))
        .collect();
    assert_eq!(runs.len(), 3, "one RUN per TARGETARCH");
    for r in &runs {
        assert_eq!(
            r.platform.as_deref(),
            Some("linux/amd64"),
            "runs on the build platform"
        );
    }
    let results: HashSet<_> = g.targets.iter().map(|t| &t.result).collect();
    assert_eq!(results.len(), 3);
}

#[test]
fn exec_platforms_follow_every_input_of_each_target() {
    let set = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
    // Cross-compilation: the RUN of each target runs on the build platform
    // (reached through COPY --from, not the parent chain); the release
    // stage runs nothing.
    let cross = lower_text(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\nRUN echo $TARGETARCH > /arch\n\nFROM scratch\nCOPY --from=build /arch /\n",
        &["linux/amd64", "linux/arm64", "linux/s390x"],
    );
    assert_eq!(cross.exec_platforms(), vec![set(&["linux/amd64"]); 3]);
    // A RUN in the target stage runs on the target platform.
    let native = lower_text(
        "FROM busybox\nRUN uname -m > /m\n",
        &["linux/amd64", "linux/arm/v7"],
    );
    assert_eq!(
        native.exec_platforms(),
        vec![set(&["linux/amd64"]), set(&["linux/arm/v7"])]
    );
    // COPY only: nothing runs; a RUN --mount=from reaches another stage.
    let copy_only = lower_text("FROM busybox\nCOPY a /a\n", &["linux/arm64"]);
    assert_eq!(copy_only.exec_platforms(), vec![set(&[])]);
    let mounted = lower_text(
        "FROM --platform=linux/s390x busybox AS tool\nRUN true\n\nFROM --platform=$BUILDPLATFORM busybox\nRUN --mount=from=tool,target=/t true\n",
        &["linux/arm64"],
    );
    assert_eq!(
        mounted.exec_platforms(),
        vec![set(&["linux/amd64", "linux/s390x"])]
    );
}

#[test]
fn a_serialised_graph_of_another_version_is_refused_by_version() {
    let g = lower_text("FROM busybox\nRUN true\n", &["linux/amd64"]);
    let mut v: serde_json::Value = serde_json::from_slice(&g.to_json().unwrap()).unwrap();
    v["version"] = serde_json::json!(kbuild_dockerfile::graph::FORMAT_VERSION + 1);
    // Ops a newer writer might shape differently do not matter: the
    // version is what the reader reports.
    v["ops"][0]["op"] = serde_json::json!({"type": "future"});
    let err = Graph::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "graph format version {} is not supported; this builder reads version {}",
            kbuild_dockerfile::graph::FORMAT_VERSION + 1,
            kbuild_dockerfile::graph::FORMAT_VERSION
        )
    );
    let version = kbuild_dockerfile::graph::FORMAT_VERSION;
    let err =
        Graph::from_json(format!("{{\"version\": {version}, \"ops\": 3}}").as_bytes()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "the op graph is not valid JSON of format version {version}: "
        )),
        "{err}"
    );
}

/// `lower_pinned` pins the image sources it has digests for (every op
/// that starts from them, in every stage and COPY --from), leaves the
/// others to be resolved, and the pin is part of the ids and the wire form.
#[test]
fn pinned_image_sources_carry_their_digests_in_the_id_and_the_json() {
    use kbuild_dockerfile::graph::{lower_pinned, ImagePin, Pins, SourceOp};
    let text = "FROM busybox AS a\nRUN true\n\nFROM alpine\nCOPY --from=busybox /bin/sh /sh\nCOPY --from=a /etc /etc\n";
    let opts = PlanOptions {
        platforms: vec![Platform::parse("linux/arm64").unwrap()],
        build_platform: Platform::parse("linux/amd64").unwrap(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        named_contexts: Default::default(),
    };
    let p = plan(text, &opts, &kbuild_dockerfile::plan::NoImageConfigs).unwrap();
    let pin = ImagePin {
        digest: format!("sha256:{}", "1".repeat(64)),
        manifest: format!("sha256:{}", "2".repeat(64)),
    };
    let mut pins = Pins::new();
    pins.insert(("busybox".into(), "linux/arm64".into()), pin.clone());
    // Another platform of the same image is not this pin.
    pins.insert(
        ("alpine".into(), "linux/amd64".into()),
        ImagePin {
            digest: format!("sha256:{}", "3".repeat(64)),
            manifest: format!("sha256:{}", "4".repeat(64)),
        },
    );
    let pinned = lower_pinned(&p, &pins).unwrap();
    check_invariants(&pinned).unwrap();
    let sources: Vec<(&str, &Option<ImagePin>)> = pinned
        .ops
        .iter()
        .filter_map(|o| match &o.op {
            OpKind::Source(SourceOp::Image { reference, pin, .. }) => {
                Some((reference.as_str(), pin))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sources,
        [("busybox", &Some(pin.clone())), ("alpine", &None)],
        "one busybox source for FROM and COPY --from, alpine unpinned"
    );
    let plain = lower(&p).unwrap();
    let image_ids = |g: &Graph| -> Vec<String> {
        g.ops
            .iter()
            .filter(|o| matches!(o.op, OpKind::Source(SourceOp::Image { .. })))
            .map(|o| o.id.0.clone())
            .collect()
    };
    let (a, b) = (image_ids(&pinned), image_ids(&plain));
    assert_ne!(a[0], b[0], "the pin is part of the source's id");
    assert_eq!(a[1], b[1], "an unpinned source keeps its id");
    assert_ne!(
        pinned.targets[0].result, plain.targets[0].result,
        "ids of ops that read a pinned source follow it"
    );
    let json = pinned.to_json().unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.contains(&format!(
            r#""pin":{{"digest":"{}","manifest":"{}"}}"#,
            pin.digest, pin.manifest
        )),
        "{text}"
    );
    assert_eq!(Graph::from_json(&json).unwrap(), pinned);
    assert!(!String::from_utf8(plain.to_json().unwrap())
        .unwrap()
        .contains("\"pin\""));
}

//! `Solver::solve` on graphs made by hand, as a builder daemon receives
//! them: no Dockerfile, file ops the Dockerfile never lowers to (`rm`),
//! an op two targets share, a cached rebuild, malformed graphs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kbuild_dockerfile::graph::{
    ConfigOp, ConfigPatch, FileAction, FileOp, Graph, GraphTarget, History, Op, OpId, OpKind,
    OpMeta, SourceOp, FORMAT_VERSION,
};
use kbuild_image::ContentStore;
use kbuild_solver::engine::{apply_layers, Context, SolveError, SolveOptions, Solver};
use kbuild_solver::progress::{Event, Recorder};
use kbuild_worker::snapshot::{ApplyOptions, Snapshotter};

const FILES: &str = "[linux/amd64 files 2/2] write files";

fn history(text: &str) -> History {
    History {
        created_by: text.to_string(),
        comment: "test".to_string(),
    }
}

fn op(id: &str, platform: Option<&str>, inputs: &[&str], kind: OpKind, progress: &[&str]) -> Op {
    Op {
        id: OpId(id.to_string()),
        platform: platform.map(str::to_string),
        inputs: inputs.iter().map(|i| OpId(i.to_string())).collect(),
        op: kind,
        meta: OpMeta {
            progress: progress.iter().map(|p| p.to_string()).collect(),
            ..OpMeta::default()
        },
    }
}

/// scratch → files (mkfile, mkdir, mkfile, rm) → config; both targets
/// read the same result.
fn graph() -> Graph {
    let amd64 = Some("linux/amd64");
    let mkfile = |path: &str, data: &str| FileAction::Mkfile {
        path: path.into(),
        data: data.into(),
        mode: 0o640,
        chown: None,
    };
    let files = FileOp {
        actions: vec![
            mkfile("/hello", "hi\n"),
            FileAction::Mkdir {
                path: "/d/e".into(),
                mode: 0o700,
                parents: true,
                chown: None,
            },
            mkfile("/d/e/gone", "x"),
            FileAction::Rm {
                path: "/d/e/gone".into(),
                allow_not_found: false,
            },
            FileAction::Rm {
                path: "/never".into(),
                allow_not_found: true,
            },
        ],
        config: vec![ConfigPatch::Workdir { path: "/d".into() }],
        history: Some(history("write files")),
    };
    let config = ConfigOp {
        patches: vec![
            ConfigPatch::Env {
                key: "A".into(),
                value: "1".into(),
            },
            ConfigPatch::Cmd {
                argv: vec!["/hello".into()],
            },
        ],
        history: Some(history("set env")),
    };
    Graph {
        version: FORMAT_VERSION,
        ops: vec![
            op("base", amd64, &[], OpKind::Source(SourceOp::Scratch), &[]),
            op("files", amd64, &["base"], OpKind::File(files), &[FILES]),
            op("config", amd64, &["files"], OpKind::Config(config), &[]),
        ],
        targets: ["linux/amd64", "linux/amd64"]
            .iter()
            .map(|p| GraphTarget {
                platform: p.to_string(),
                result: OpId("config".into()),
            })
            .collect(),
        labels: BTreeMap::from([("l".to_string(), "v".to_string())]),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<ContentStore>,
    snaps: Arc<Snapshotter>,
    cache_mounts: std::path::PathBuf,
}

fn env() -> Option<Env> {
    if !is_root() {
        kbuild_testkit::fixtures::skip_or_fail(
            "solve tests mount overlay filesystems: run as root",
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ContentStore::open(dir.path().join("content")).unwrap());
    let snaps = Arc::new(Snapshotter::new(dir.path().join("snapshots")).unwrap());
    let cache_mounts = dir.path().join("cache-mounts");
    Some(Env {
        _dir: dir,
        store,
        snaps,
        cache_mounts,
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn solver(e: &Env, progress: Arc<Recorder>) -> Solver {
    let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions::default()).unwrap();
    Solver::new(
        e.store.clone(),
        e.snaps.clone(),
        Arc::new(registry),
        SolveOptions {
            cache_mounts: e.cache_mounts.clone(),
            ..SolveOptions::default()
        },
        progress,
    )
}

fn no_context() -> Context {
    Context {
        dir: None,
        ignore: None,
        checksums: None,
        named: Default::default(),
    }
}

fn starts(r: &Recorder, name: &str) -> usize {
    r.events()
        .iter()
        .filter(|e| matches!(e, Event::Start { name: n, .. } if n == name))
        .count()
}

fn cached(r: &Recorder, name: &str) -> usize {
    r.events()
        .iter()
        .filter(|e| matches!(e, Event::Cached { name: n, .. } if n == name))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_graph_runs_each_op_once_and_rebuilds_from_cache() {
    let Some(e) = env() else { return };
    let g = graph();
    let rec = Arc::new(Recorder::default());
    let first = solver(&e, rec.clone())
        .solve(&g, "graph", &no_context())
        .await
        .unwrap();
    // Two targets share the file op: it ran once.
    assert_eq!(starts(&rec, FILES), 1, "{:?}", rec.events());
    assert_eq!(cached(&rec, FILES), 0);
    assert_eq!(first.images.len(), 2);
    assert_eq!(
        first.images[0].manifest.digest,
        first.images[1].manifest.digest
    );

    let img = &first.images[0].state;
    assert_eq!(img.layers.len(), 1);
    let c = img.config.config.clone().unwrap();
    assert_eq!(c.working_dir.as_deref(), Some("/d"));
    assert!(c.env.unwrap().contains(&"A=1".to_string()));
    assert_eq!(c.cmd, Some(vec!["/hello".to_string()]));
    let texts: Vec<_> = img
        .config
        .history
        .iter()
        .map(|h| (h.created_by.clone().unwrap(), h.empty_layer))
        .collect();
    assert_eq!(
        texts,
        vec![
            ("write files".to_string(), None),
            ("set env".to_string(), Some(true))
        ]
    );

    let root = tempfile::tempdir().unwrap();
    apply_layers(&e.store, &img.layers, root.path(), ApplyOptions::default()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let hello = root.path().join("hello");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hi\n");
    assert_eq!(
        std::fs::metadata(&hello).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    let d = std::fs::metadata(root.path().join("d/e")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.permissions().mode() & 0o7777, 0o700);
    assert!(!root.path().join("d/e/gone").exists(), "rm removed it");

    // Nothing changed: every op comes from the cache, digests are the same.
    let rec2 = Arc::new(Recorder::default());
    let again = solver(&e, rec2.clone())
        .solve(&g, "graph", &no_context())
        .await
        .unwrap();
    assert_eq!(cached(&rec2, FILES), 1, "{:?}", rec2.events());
    assert_eq!(again.root.digest, first.root.digest);

    // A changed file op body is a new key: it runs again.
    let mut changed = g.clone();
    if let OpKind::File(f) = &mut changed.ops[1].op {
        f.actions[0] = FileAction::Mkfile {
            path: "/hello".into(),
            data: "bye\n".into(),
            mode: 0o640,
            chown: None,
        };
    }
    changed.ops[1].id = OpId("files-2".into());
    changed.ops[2].inputs = vec![OpId("files-2".into())];
    changed.ops[2].id = OpId("config-2".into());
    for t in &mut changed.targets {
        t.result = OpId("config-2".into());
    }
    let rec3 = Arc::new(Recorder::default());
    let other = solver(&e, rec3.clone())
        .solve(&changed, "graph", &no_context())
        .await
        .unwrap();
    assert_eq!(cached(&rec3, FILES), 0);
    assert_eq!(starts(&rec3, FILES), 1);
    assert_ne!(other.root.digest, first.root.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_graphs_are_refused_naming_the_problem() {
    let Some(e) = env() else { return };
    let s = solver(&e, Arc::new(Recorder::default()));
    let mut future = graph();
    future.version = FORMAT_VERSION + 1;
    let err = s.solve(&future, "graph", &no_context()).await.unwrap_err();
    assert!(matches!(err, SolveError::GraphVersion { .. }), "{err}");

    let mut dangling = graph();
    dangling.ops[2].inputs = vec![OpId("nowhere".into())];
    let err = s
        .solve(&dangling, "graph", &no_context())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "op config: reads nowhere, which the graph does not have"
    );

    // A copy from the context without one names the op.
    let mut copy = graph();
    copy.ops.insert(
        1,
        op(
            "ctx",
            None,
            &[],
            OpKind::Source(SourceOp::Context {
                include: vec![],
                exclude: vec![],
                dockerignore: true,
                name: None,
            }),
            &[],
        ),
    );
    copy.ops[2].inputs.push(OpId("ctx".into()));
    let err = s.solve(&copy, "graph", &no_context()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{FILES}: there is no build context (the Dockerfile came from stdin); give a context directory")
    );
}

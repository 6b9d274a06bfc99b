//! Image sources pinned by the graph, against a real registry: a graph
//! planned before its base image's tag moved still builds on the image the
//! tag named when it was planned, pulled by digest without resolving the
//! tag (what a builder daemon does with a client's graph); a build that
//! resolves (`Solver::build`) takes the store's copy, and with `--pull` the
//! tag's new image.

use std::sync::Arc;

use kbuild_dockerfile::graph::{lower_pinned, Graph, ImagePin, OpKind, SourceOp};
use kbuild_dockerfile::plan::{plan, PlanOptions};
use kbuild_image::{ContentStore, Digest};
use kbuild_platform::Platform;
use kbuild_solver::engine::{resolve_configs, Context, SolveOptions, Solver};
use kbuild_solver::progress::{Event, Recorder};
use kbuild_testkit::fixtures::skip_or_fail;
use kbuild_testkit::registry::TestRegistry;
use kbuild_worker::snapshot::Snapshotter;

const AMD64: &str = "linux/amd64";

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

/// One machine's store.
struct Machine {
    _dir: tempfile::TempDir,
    store: Arc<ContentStore>,
    snaps: Arc<Snapshotter>,
    cache_mounts: std::path::PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        Machine {
            store: Arc::new(ContentStore::open(dir.path().join("content")).unwrap()),
            snaps: Arc::new(Snapshotter::new(dir.path().join("snapshots")).unwrap()),
            cache_mounts: dir.path().join("cache-mounts"),
            _dir: dir,
        }
    }

    fn solver(&self, pull: bool, progress: Arc<Recorder>) -> Solver {
        let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions::default())
            .expect("a registry client");
        Solver::new(
            self.store.clone(),
            self.snaps.clone(),
            Arc::new(registry),
            SolveOptions {
                cache_mounts: self.cache_mounts.clone(),
                pull,
                ..SolveOptions::default()
            },
            progress,
        )
    }
}

fn options(platforms: &[&str]) -> PlanOptions {
    PlanOptions {
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect(),
        build_platform: Platform::parse(AMD64).unwrap(),
        build_args: Default::default(),
        target: None,
        labels: Default::default(),
        named_contexts: Default::default(),
    }
}

fn no_context() -> Context {
    Context {
        dir: None,
        ignore: None,
        checksums: None,
        named: Default::default(),
    }
}

/// Builds an image for amd64 and arm64 holding `/base` with `text` and
/// pushes its index as `reference`; returns the amd64 image's one layer.
async fn push_base(reference: &str, text: &str) -> Digest {
    let m = Machine::new();
    let dockerfile = format!("FROM scratch\nCOPY <<EOF /base\n{text}\nEOF\n");
    let built = m
        .solver(false, Arc::new(Recorder::default()))
        .build(
            &dockerfile,
            "Dockerfile",
            &options(&[AMD64, "linux/arm64"]),
            &no_context(),
        )
        .await
        .expect("the base image builds");
    let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions::default()).unwrap();
    registry
        .push(
            &[kbuild_registry::Reference::parse(reference).unwrap()],
            &built.solved.root,
            &m.store,
        )
        .await
        .expect("the base image is pushed");
    let layers = &built.solved.images[0].state.layers;
    assert_eq!(layers.len(), 1);
    layers[0].descriptor.digest
}

/// The one layer of the amd64 image `FROM reference` built.
fn base_layer(solved: &kbuild_solver::engine::Solved) -> Digest {
    let layers = &solved.images[0].state.layers;
    assert_eq!(layers.len(), 1, "FROM the base and a LABEL: its layer only");
    layers[0].descriptor.digest
}

fn notes(r: &Recorder) -> Vec<String> {
    r.0.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Note(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_base_is_pulled_by_digest_after_its_tag_moved_and_pull_resolves_again() {
    if !is_root() {
        skip_or_fail("solve tests mount overlay filesystems: run as root");
        return;
    }
    let registry = match TestRegistry::start() {
        Ok(r) => r,
        Err(e) => {
            skip_or_fail(&e.to_string());
            return;
        }
    };
    let reference = format!("{}/pin/base:moving", registry.host());
    let first = push_base(&reference, "one").await;

    // The client plans: configs and digests from the registry (no layer).
    let client = Machine::new();
    let registry_client =
        kbuild_registry::Client::new(kbuild_registry::ClientOptions::default()).unwrap();
    let amd64 = Platform::parse(AMD64).unwrap();
    let resolved = resolve_configs(
        &client.store,
        &registry_client,
        &[(reference.clone(), amd64.clone())],
        false,
    )
    .await
    .expect("the client resolves the base");
    let pin: ImagePin = resolved.pins[&(reference.clone(), AMD64.to_string())].clone();
    assert_ne!(
        pin.digest, pin.manifest,
        "the tag names an index: the pin names it and the amd64 manifest"
    );
    let dockerfile = format!("FROM {reference}\nLABEL pinned=yes\n");
    let planned = plan(&dockerfile, &options(&[AMD64]), &resolved.configs).unwrap();
    let graph: Graph = lower_pinned(&planned, &resolved.pins).unwrap();
    let pins: Vec<&Option<ImagePin>> = graph
        .ops
        .iter()
        .filter_map(|o| match &o.op {
            OpKind::Source(SourceOp::Image { pin, .. }) => Some(pin),
            _ => None,
        })
        .collect();
    assert_eq!(pins, [&Some(pin.clone())]);
    // What a daemon receives: the wire form.
    let graph = Graph::from_json(&graph.to_json().unwrap()).unwrap();

    // The tag moves before the daemon pulls.
    let second = push_base(&reference, "two").await;
    assert_ne!(first, second);

    // A daemon with an empty store: pulled by digest (the tag now names
    // the second image: resolving it would give its layer).
    let daemon = Machine::new();
    let rec = Arc::new(Recorder::default());
    let solved = daemon
        .solver(false, rec.clone())
        .solve(&graph, "Dockerfile", &no_context())
        .await
        .expect("the pinned graph builds");
    assert_eq!(
        base_layer(&solved),
        first,
        "the base the graph was planned on"
    );
    assert!(
        notes(&rec).contains(&format!("pull {reference}@{} for {AMD64}", pin.digest)),
        "{:?}",
        notes(&rec)
    );

    // The daemon had no image of that tag: it now keeps what the tag named
    // when the client resolved it, as a pull by tag would have, so a build
    // it plans itself later finds it.
    assert_eq!(
        daemon
            .store
            .get_ref(&format!("image/{reference}"))
            .unwrap()
            .map(|d| d.to_string()),
        Some(pin.digest.clone())
    );

    // Solved again (with --pull too): the store's copy, nothing asked.
    for pull in [false, true] {
        let rec = Arc::new(Recorder::default());
        let again = daemon
            .solver(pull, rec.clone())
            .solve(&graph, "Dockerfile", &no_context())
            .await
            .unwrap();
        assert_eq!(base_layer(&again), first);
        assert!(
            notes(&rec).contains(&format!(
                "resolve {reference} for {AMD64}: local {}",
                pin.digest
            )),
            "{:?}",
            notes(&rec)
        );
    }

    // A build that plans resolves the tag: now the second image, then
    // the store's copy of it, until --pull asks the registry again.
    let builder = Machine::new();
    let build = |pull: bool| {
        let solver = builder.solver(pull, Arc::new(Recorder::default()));
        let dockerfile = dockerfile.clone();
        async move {
            solver
                .build(&dockerfile, "Dockerfile", &options(&[AMD64]), &no_context())
                .await
                .expect("the build runs")
        }
    };
    assert_eq!(base_layer(&build(false).await.solved), second);
    let third = push_base(&reference, "three").await;
    assert_eq!(
        base_layer(&build(false).await.solved),
        second,
        "without --pull the store's copy of the tag"
    );
    assert_eq!(
        base_layer(&build(true).await.solved),
        third,
        "--pull resolves the tag again"
    );
}

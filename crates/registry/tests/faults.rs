//! Pushes and pulls through `kbuild-fault-proxy` (a real process from the test
//! kit) in front of a real `docker-registry`: for every fault and request kind
//! a push either completes with every blob and manifest verified, or fails with
//! no tag and an error naming the cause, within a hard time bound.
//!
//! `random_fault_pushes` (ignored; `scripts/faults.sh` runs it) pushes through
//! random seeded faults and prints how the pushes ended.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kbuild_image::ContentStore;
use kbuild_platform::Platform;
use kbuild_registry::{Client, ClientOptions, Credentials, Error, Reference, Timeouts};
use kbuild_testkit::faults::FaultProxy;
use kbuild_testkit::fixtures::skip_or_fail;
use kbuild_testkit::registry::TestRegistry;

/// Short limits so that a fault costs about a second.
fn fault_client() -> Client {
    Client::new(ClientOptions {
        credentials: Credentials::anonymous(),
        chunk_threshold: 64 << 10,
        chunk_size: 48 << 10,
        concurrency: 2,
        max_attempts: 4,
        retry_delay: Duration::from_millis(20),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            token: Duration::from_secs(2),
            helper: Duration::from_secs(2),
        },
        ..ClientOptions::default()
    })
    .expect("client")
}

/// Longest a single push or pull through faults may take before the test fails.
const HARD_LIMIT: Duration = Duration::from_secs(30);

/// A trickle of 4 KiB every 20 ms: slow, but never silent for a whole second.
const TRICKLE: (usize, Duration) = (4096, Duration::from_millis(20));

struct Image {
    root: kbuild_image::Descriptor,
    index: Vec<u8>,
    platforms: Vec<&'static str>,
}

/// Two platforms sharing a 150 KiB layer (a chunked upload: 4 PATCHes), each
/// with a small layer and a config of its own; unique per `seed`.
fn image(store: &ContentStore, seed: u64) -> Image {
    let shared = noise(seed.wrapping_mul(100), 150 << 10);
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let own = noise(seed.wrapping_mul(100).wrapping_add(1 + i as u64), 2000);
        let (digest, bytes) = manifest(store, "linux", arch, None, &[&shared, &own]);
        entries.push((
            serde_json::json!({"os": "linux", "architecture": arch}),
            digest,
            bytes,
        ));
    }
    let (root, index) = index(store, &entries);
    Image {
        root,
        index,
        platforms: vec!["linux/amd64", "linux/arm64"],
    }
}

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// How a push ended, judged by reading the registry directly.
#[derive(Debug)]
enum Outcome {
    /// The push succeeded; the tag names the index and every manifest and blob verifies.
    Complete,
    /// The push failed and left no tag.
    FailedNoTag(String),
    /// The push failed but the tag is there (and its content verifies).
    FailedTagged(String),
    /// Anything else: a tag naming missing or wrong content, or success without it.
    Corrupt(String),
}

/// The tag's bytes, read with skopeo from the registry itself, or None.
fn tag_bytes(reference: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    out.status.success().then_some(out.stdout)
}

/// Every platform's manifest, config and layers, pulled by digest into a fresh
/// store (digests verified on the way in).
async fn content_verifies(host: &str, repo: &str, img: &Image) -> Result<(), String> {
    let (_d, dst) = store();
    let direct = fault_client();
    let by_digest = Reference::parse(&format!("{host}/{repo}@{}", img.root.digest))
        .map_err(|e| e.to_string())?;
    for p in &img.platforms {
        let platform = Platform::parse(p).map_err(|e| e.to_string())?;
        let pulled = direct
            .pull_image(&by_digest, &platform, &dst)
            .await
            .map_err(|e| format!("{p}: {e}"))?;
        for layer in &pulled.manifest.layers {
            let d = layer.digest;
            if !dst.has(&d) {
                return Err(format!("{p}: layer {d} missing"));
            }
        }
    }
    Ok(())
}

async fn judge(host: &str, repo: &str, img: &Image, result: Result<(), Error>) -> Outcome {
    let tag = tag_bytes(&format!("{host}/{repo}:1"));
    match (result, tag) {
        (Ok(()), Some(bytes)) if bytes == img.index => {
            match content_verifies(host, repo, img).await {
                Ok(()) => Outcome::Complete,
                Err(e) => Outcome::Corrupt(format!("pushed, but {e}")),
            }
        }
        (Ok(()), Some(_)) => Outcome::Corrupt("the tag names other bytes".into()),
        (Ok(()), None) => Outcome::Corrupt("the push succeeded without a tag".into()),
        (Err(e), None) => Outcome::FailedNoTag(e.to_string()),
        (Err(e), Some(bytes)) => match content_verifies(host, repo, img).await {
            Ok(()) if bytes == img.index => Outcome::FailedTagged(e.to_string()),
            Ok(()) => Outcome::Corrupt(format!("failed ({e}) and the tag names other bytes")),
            Err(v) => Outcome::Corrupt(format!("failed ({e}) leaving a tag on bad content: {v}")),
        },
    }
}

/// Pushes a fresh image to `repo` through a proxy with `rules`; returns the
/// outcome, the time it took, and what the proxy injected.
async fn push_through(
    registry: &TestRegistry,
    repo: &str,
    rules: &[String],
    seed: u64,
    client: Client,
) -> Option<(Outcome, Duration, Vec<String>)> {
    let proxy = match FaultProxy::start(&registry.host(), seed, rules, TRICKLE) {
        Ok(p) => p,
        Err(e) => {
            skip_or_fail(&e.to_string());
            return None;
        }
    };
    let (_d, src) = store();
    let img = image(&src, seed);
    let target = Reference::parse(&format!("{}/{repo}:1", proxy.host())).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(
        HARD_LIMIT,
        client.push(std::slice::from_ref(&target), &img.root, &src),
    )
    .await
    .unwrap_or_else(|_| panic!("push to {repo} with {rules:?} hung past {HARD_LIMIT:?}"));
    let took = started.elapsed();
    let injected: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.fault != "pass")
        .map(|l| format!("{} {}", l.kind, l.fault))
        .collect();
    Some((
        judge(&registry.host(), repo, &img, result).await,
        took,
        injected,
    ))
}

const PUSH_KINDS: [&str; 3] = ["blob-put", "manifest-put", "patch"];
const FAULTS: [&str; 8] = [
    "500",
    "502",
    "503",
    "reset",
    "502-after",
    "reset-after",
    "trickle",
    "hang",
];

/// Words the error must contain when `fault` made the push fail.
fn cause_words(fault: &str) -> &'static [&'static str] {
    match fault {
        "500" => &["HTTP 500"],
        "502" | "502-after" => &["HTTP 502"],
        "503" => &["HTTP 503"],
        "reset" | "reset-after" => &["broke"],
        "hang" => &["sent no reply within 1s"],
        _ => &["(a trickle must not fail)"],
    }
}

fn registry() -> Option<TestRegistry> {
    match TestRegistry::start() {
        Ok(r) => Some(r),
        Err(e) => {
            skip_or_fail(&e.to_string());
            None
        }
    }
}

/// One fault on the first request of each kind: the retries and the checks
/// after lost replies make every push complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fault_per_push_always_completes() {
    let Some(registry) = registry() else { return };
    for (k, kind) in PUSH_KINDS.iter().enumerate() {
        for (f, fault) in FAULTS.iter().enumerate() {
            let repo = format!("once/{kind}-{fault}");
            let rules = [format!("{kind}={fault}:1")];
            let Some((outcome, took, injected)) = push_through(
                &registry,
                &repo,
                &rules,
                (k * 10 + f) as u64 + 1,
                fault_client(),
            )
            .await
            else {
                return;
            };
            assert_eq!(injected, [format!("{kind} {fault}")], "{repo}");
            assert!(
                matches!(outcome, Outcome::Complete),
                "{repo}: {outcome:?} after {took:?}"
            );
        }
    }
}

/// The same fault on every request of a kind: a push completes (lost replies
/// are recognised by HEAD; a trickle is slow but moving) or fails with no tag,
/// naming the fault, within the retry budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_complete_or_fail_cleanly_naming_the_cause() {
    let Some(registry) = registry() else { return };
    for (k, kind) in PUSH_KINDS.iter().enumerate() {
        for (f, fault) in FAULTS.iter().enumerate() {
            let repo = format!("always/{kind}-{fault}");
            let rules = [format!("{kind}={fault}")];
            let Some((outcome, took, injected)) = push_through(
                &registry,
                &repo,
                &rules,
                (k * 10 + f) as u64 + 100,
                fault_client(),
            )
            .await
            else {
                return;
            };
            assert!(!injected.is_empty(), "{repo}: the fault never fired");
            assert!(took < Duration::from_secs(15), "{repo}: took {took:?}");
            let lost_reply_on_a_closing_request =
                matches!(*fault, "502-after" | "reset-after") && *kind != "patch";
            match outcome {
                Outcome::Complete => assert!(
                    *fault == "trickle" || lost_reply_on_a_closing_request,
                    "{repo}: a push through {fault} on every {kind} cannot complete"
                ),
                Outcome::FailedNoTag(message) => {
                    assert!(
                        *fault != "trickle" && !lost_reply_on_a_closing_request,
                        "{repo}: should have completed: {message}"
                    );
                    for word in cause_words(fault) {
                        assert!(message.contains(word), "{repo}: {message}");
                    }
                    assert!(message.contains("registry 127.0.0.1:"), "{repo}: {message}");
                }
                other => panic!("{repo}: {other:?}"),
            }
        }
    }
}

/// A lost reply to the PUT that closes an upload no longer fails the push, and
/// when a push does fail after one, the error names the lost reply first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_first_cause() {
    let Some(registry) = registry() else { return };
    // The first manifest put goes unanswered, every later one gets 503.
    let rules = [
        "manifest-put=hang:1".to_string(),
        "manifest-put=503".to_string(),
    ];
    let Some((outcome, took, _)) =
        push_through(&registry, "first/hang", &rules, 7, fault_client()).await
    else {
        return;
    };
    let Outcome::FailedNoTag(message) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(took < Duration::from_secs(15), "{took:?}");
    let first = message.find("first: registry 127.0.0.1:");
    let timeout = message.find("sent no reply within 1s");
    let last = message.find("last: registry");
    assert!(
        first.is_some() && first < timeout && timeout < last && message.contains("HTTP 503"),
        "{message}"
    );

    // The first closing PUT's connection breaks, every later one gets 503
    // (one blob at a time, so the first failure belongs to the blob that fails).
    let rules = ["blob-put=reset:1".to_string(), "blob-put=503".to_string()];
    let one_at_a_time = Client::new(ClientOptions {
        concurrency: 1,
        max_attempts: 3,
        retry_delay: Duration::from_millis(20),
        timeouts: Timeouts::parse("connect=2s,response=1s,idle=1s").unwrap(),
        ..ClientOptions::default()
    })
    .unwrap();
    let Some((outcome, _, _)) =
        push_through(&registry, "first/reset", &rules, 8, one_at_a_time).await
    else {
        return;
    };
    let Outcome::FailedNoTag(message) = outcome else {
        panic!("{outcome:?}")
    };
    let first = message.find("first: connection to registry");
    let last = message.find("last: registry");
    assert!(
        first.is_some() && last.is_some() && first < last && message.contains("HTTP 503"),
        "{message}"
    );
}

/// Pulls through faults on blob and manifest GETs: once, they are retried (or
/// resumed) and the image arrives verified; always, the pull fails naming the
/// cause, and the store holds nothing unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_faults() {
    let Some(registry) = registry() else { return };
    let (_d, src) = store();
    let img = image(&src, 900);
    let direct = fault_client();
    let host = registry.host();
    direct
        .push(
            &[Reference::parse(&format!("{host}/pull/img:1")).unwrap()],
            &img.root,
            &src,
        )
        .await
        .unwrap();
    for (k, kind) in ["blob-get", "manifest-get"].into_iter().enumerate() {
        for (f, fault) in FAULTS.iter().enumerate() {
            for always in [false, true] {
                let rule = if always {
                    format!("{kind}={fault}")
                } else {
                    format!("{kind}={fault}:1")
                };
                let seed = (k * 100 + f * 2) as u64 + u64::from(always);
                let proxy =
                    match FaultProxy::start(&host, seed, std::slice::from_ref(&rule), TRICKLE) {
                        Ok(p) => p,
                        Err(e) => return skip_or_fail(&e.to_string()),
                    };
                let reference = Reference::parse(&format!("{}/pull/img:1", proxy.host())).unwrap();
                let (_d, dst) = store();
                let client = fault_client();
                let started = Instant::now();
                let result = tokio::time::timeout(
                    HARD_LIMIT,
                    client.pull_image(&reference, &Platform::parse("linux/arm64").unwrap(), &dst),
                )
                .await
                .unwrap_or_else(|_| panic!("pull with {rule} hung"));
                let took = started.elapsed();
                assert!(proxy.faults_injected() > 0, "{rule}: never fired");
                let recoverable = !always || *fault == "trickle";
                match result {
                    Ok(pulled) => {
                        assert!(recoverable, "{rule}: a pull cannot get through");
                        for layer in &pulled.manifest.layers {
                            let d = layer.digest;
                            assert!(dst.has(&d), "{rule}: layer {d}");
                        }
                        assert!(dst.has(&pulled.config_digest), "{rule}");
                    }
                    Err(e) => {
                        let message = e.to_string();
                        assert!(!recoverable, "{rule}: {message}");
                        for word in cause_words(fault) {
                            assert!(message.contains(word), "{rule}: {message}");
                        }
                        assert!(took < Duration::from_secs(15), "{rule}: {took:?}");
                    }
                }
            }
        }
    }
}

/// Slow transfers that keep moving complete: an upload read 2 KiB at a time
/// never trips the 1 s idle limit, and a download longer than the response
/// and idle limits together completes, since no limit bounds a whole transfer.
/// (The upload gets a longer response limit: its clock starts once the body
/// is handed to the connection, and loopback socket buffers take all of it
/// at once while the proxy still reads slowly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_transfer_has_no_total_limit() {
    let Some(registry) = registry() else { return };
    let (_d, src) = store();
    let img = image(&src, 950);
    let host = registry.host();
    // 150 KiB at 2 KiB per 40 ms: about 3 s for the shared layer, in each direction.
    let slow = (2048, Duration::from_millis(40));
    let proxy = match FaultProxy::start(
        &host,
        1,
        &[
            "blob-put=trickle".into(),
            "patch=trickle".into(),
            "blob-get=trickle".into(),
        ],
        slow,
    ) {
        Ok(p) => p,
        Err(e) => return skip_or_fail(&e.to_string()),
    };
    let mut client_opts = ClientOptions {
        chunk_threshold: 1 << 20,
        max_attempts: 1,
        ..ClientOptions::default()
    };
    client_opts.timeouts = Timeouts::parse("connect=2s,response=10s,idle=1s").unwrap();
    let client = Client::new(client_opts.clone()).unwrap();
    let target = Reference::parse(&format!("{}/slow/img:1", proxy.host())).unwrap();
    let started = Instant::now();
    tokio::time::timeout(
        HARD_LIMIT,
        client.push(std::slice::from_ref(&target), &img.root, &src),
    )
    .await
    .expect("bounded")
    .expect("a slow push completes");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().retries, 0);
    client_opts.timeouts = Timeouts::parse("connect=2s,response=1s,idle=1s").unwrap();
    let client = Client::new(client_opts).unwrap();
    let (_d2, dst) = store();
    let started = Instant::now();
    tokio::time::timeout(
        HARD_LIMIT,
        client.pull_image(&target, &Platform::parse("linux/amd64").unwrap(), &dst),
    )
    .await
    .expect("bounded")
    .expect("a slow pull completes");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        judge(&host, "slow/img", &img, Ok(())).await,
        Outcome::Complete
    ));
}

/// `scripts/faults.sh`: KBUILD_FAULT_RUNS pushes (default 100), each through
/// one to three random faults (kind, fault, probability) from a random seed;
/// prints how they ended. Fails on any corrupt outcome, and on any failure
/// whose only injected faults were lost replies to closing PUTs and manifest
/// PUTs (the requests whose lost replies are recovered by HEAD). Failures
/// where lost replies to PATCH, POST or HEAD used up the attempts are counted
/// apart: with docker-registry a lost PATCH reply kills the session, and a
/// lost POST or HEAD reply is an ordinary retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/faults.sh"]
async fn random_fault_pushes() {
    let Some(registry) = registry() else { return };
    let runs: u64 = std::env::var("KBUILD_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let base: u64 = std::env::var("KBUILD_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("base seed {base} (KBUILD_FAULT_SEED={base} repeats this run)");
    let kinds = ["blob-put", "manifest-put", "patch", "post", "head"];
    let (mut complete, mut failed, mut tagged, mut corrupt) = (0, 0, 0, 0);
    let (mut lost_closing, mut lost_other) = (0, 0);
    let started = Instant::now();
    for run in 0..runs {
        let seed = base.wrapping_add(run.wrapping_mul(0x9E37_79B9));
        let pick = noise(seed, 9);
        let rules: Vec<String> = (0..1 + pick[0] as usize % 3)
            .map(|i| {
                let kind = kinds[pick[1 + 2 * i] as usize % kinds.len()];
                let fault = FAULTS[pick[2 + 2 * i] as usize % FAULTS.len()];
                let p = [0.1, 0.25, 0.5][pick[7] as usize % 3];
                format!("{kind}={fault}:{p}")
            })
            .collect();
        let repo = format!("random/run{run}");
        let Some((outcome, took, injected)) =
            push_through(&registry, &repo, &rules, seed, fault_client()).await
        else {
            return;
        };
        let lost_reply = |i: &String| i.ends_with("502-after") || i.ends_with("reset-after");
        let closing = |i: &String| i.starts_with("blob-put ") || i.starts_with("manifest-put ");
        let only_lost_replies = !injected.is_empty() && injected.iter().all(lost_reply);
        let only_on_closing = injected.iter().all(closing);
        match &outcome {
            Outcome::Complete => complete += 1,
            Outcome::FailedNoTag(m) => {
                failed += 1;
                if only_lost_replies && only_on_closing {
                    lost_closing += 1;
                    println!("run {run} seed {seed} {rules:?}: FAILED FROM LOST REPLIES to closing requests: {m}");
                } else if only_lost_replies {
                    lost_other += 1;
                    let short: String = m.chars().take(160).collect();
                    println!("run {run} {rules:?}: failed, no tag, lost replies to PATCH/POST/HEAD used up the attempts: {short}");
                } else {
                    let short: String = m.chars().take(160).collect();
                    println!("run {run} {rules:?}: failed, no tag: {short}");
                }
            }
            Outcome::FailedTagged(m) => {
                tagged += 1;
                println!("run {run} seed {seed} {rules:?}: failed but tagged: {m}");
            }
            Outcome::Corrupt(m) => {
                corrupt += 1;
                println!("run {run} seed {seed} {rules:?}: CORRUPT: {m}");
            }
        }
        if took > Duration::from_secs(20) {
            println!("run {run} seed {seed} {rules:?}: took {took:?}");
        }
    }
    println!(
        "fault pushes: {runs} runs in {:.0?}: {complete} complete and valid, {failed} failed with no tag ({lost_closing} from lost replies to closing PUTs or manifest PUTs, {lost_other} from lost replies to PATCH/POST/HEAD using up the attempts), {tagged} failed but tagged, {corrupt} corrupt",
        started.elapsed()
    );
    assert_eq!((corrupt, lost_closing), (0, 0));
}

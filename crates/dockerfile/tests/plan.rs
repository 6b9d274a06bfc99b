//! Table-driven planner cases: every folder under `tests/plan/` holds a
//! `Dockerfile`, the build options (`options.json`) and what the plan must
//! be (`expected.json`).
//!
//! `options.json` (every field optional):
//! `platforms` (default `["linux/amd64"]`), `build_platform` (default
//! `linux/amd64`), `build_args`, `target`, `labels`, `images` (reference →
//! base image config, a `reference@platform` key for one platform only) and
//! `failing_images` (reference → error the config source reports).
//!
//! `expected.json` (every field optional, each checked when present):
//! - `error`: the exact error message (then nothing else is checked);
//! - `text`: the lines of [`BuildPlan::to_text`];
//! - `steps` / `stages`: how many distinct steps / stage instances;
//! - `warnings`: the warnings, as displayed;
//! - `match_steps`: objects each matching at least one step of the JSON plan
//!   (every field given must be equal — objects recursively by the fields
//!   given, arrays element by element with the same length);
//! - `match_targets`: the same for the targets, in order.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kbuild_dockerfile::plan::{plan, BaseImageConfig, BuildPlan, ImageConfigSource, PlanOptions};
use kbuild_platform::Platform;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Options {
    platforms: Option<Vec<String>>,
    build_platform: Option<String>,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    labels: BTreeMap<String, String>,
    images: BTreeMap<String, BaseImageConfig>,
    failing_images: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Expected {
    error: Option<String>,
    text: Option<Vec<String>>,
    steps: Option<usize>,
    stages: Option<usize>,
    warnings: Option<Vec<String>>,
    match_steps: Vec<Value>,
    match_targets: Vec<Value>,
}

/// Configs from `images`, errors from `failing_images`.
struct Images {
    known: BTreeMap<String, BaseImageConfig>,
    failing: BTreeMap<String, String>,
}

impl ImageConfigSource for Images {
    fn image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<BaseImageConfig>, String> {
        if let Some(e) = self.failing.get(reference) {
            return Err(e.clone());
        }
        self.known.image_config(reference, platform)
    }
}

fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| subset(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(w, g)| subset(w, g))
        }
        _ => want == got,
    }
}

fn run_case(dir: &Path) -> Result<(), String> {
    let read = |name: &str| fs::read_to_string(dir.join(name));
    let dockerfile = read("Dockerfile").map_err(|e| format!("Dockerfile: {e}"))?;
    let options: Options = match read("options.json") {
        Ok(t) => serde_json::from_str(&t).map_err(|e| format!("options.json: {e}"))?,
        Err(_) => Options::default(),
    };
    let expected: Expected =
        serde_json::from_str(&read("expected.json").map_err(|e| format!("expected.json: {e}"))?)
            .map_err(|e| format!("expected.json: {e}"))?;

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
    let images = Images {
        known: options.images,
        failing: options.failing_images,
    };
    let result = plan(&dockerfile, &opts, &images);
    if let Some(want) = &expected.error {
        return match result {
            Ok(p) => Err(format!(
                "expected error {want:?}, got a plan:\n{}",
                p.to_text()
            )),
            Err(e) if e.to_string() == *want => Ok(()),
            Err(e) => Err(format!("expected error\n  {want}\ngot\n  {e}")),
        };
    }
    let p: BuildPlan = result.map_err(|e| format!("unexpected error: {e}"))?;
    check_plan(&p, &expected)
}

fn check_plan(p: &BuildPlan, expected: &Expected) -> Result<(), String> {
    let mut problems = Vec::new();
    let text = p.to_text();
    if let Some(want) = &expected.text {
        let got: Vec<&str> = text.lines().collect();
        if got != *want {
            problems.push(format!(
                "to_text differs\n--- want\n{}\n--- got\n{}",
                want.join("\n"),
                got.join("\n")
            ));
        }
    }
    if let Some(n) = expected.steps {
        if p.steps.len() != n {
            problems.push(format!("want {n} steps, got {}", p.steps.len()));
        }
    }
    if let Some(n) = expected.stages {
        if p.stages.len() != n {
            problems.push(format!("want {n} stage instances, got {}", p.stages.len()));
        }
    }
    if let Some(want) = &expected.warnings {
        let got: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        if got != *want {
            problems.push(format!("warnings: want {want:?}, got {got:?}"));
        }
    }
    let json = serde_json::to_value(p).map_err(|e| e.to_string())?;
    let empty = Vec::new();
    let steps = json["steps"].as_array().unwrap_or(&empty);
    for want in &expected.match_steps {
        if !steps.iter().any(|s| subset(want, s)) {
            let same_display: Vec<&Value> = steps
                .iter()
                .filter(|s| s["display"] == want["display"])
                .collect();
            problems.push(format!(
                "no step matches {want}\nsteps with that display: {}",
                serde_json::to_string_pretty(&same_display).unwrap_or_default()
            ));
        }
    }
    let targets = json["targets"].as_array().unwrap_or(&empty);
    for (i, want) in expected.match_targets.iter().enumerate() {
        match targets.get(i) {
            Some(t) if subset(want, t) => {}
            other => problems.push(format!("target {i}: want {want}, got {other:?}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\nplan:\n{text}", problems.join("\n")))
    }
}

#[test]
fn plan_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .expect("tests/plan exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut failed = Vec::new();
    for dir in &dirs {
        if let Err(e) = run_case(dir) {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            failed.push(format!("=== {name}\n{e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} plan cases failed:\n{}",
        failed.len(),
        dirs.len(),
        failed.join("\n\n")
    );
    assert!(dirs.len() >= 25, "only {} plan cases", dirs.len());
}

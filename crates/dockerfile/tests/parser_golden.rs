//! Golden parser tests: every folder under `tests/golden/` holds a
//! `Dockerfile` and either `expected.json` (the AST and the stages, as
//! serde JSON) or `error.txt` (the one-line error). With `UPDATE_GOLDEN=1`
//! the expectations are rewritten from the current output instead; review
//! the diff by eye against BuildKit's behaviour before committing.

use std::fs;
use std::path::{Path, PathBuf};

use kbuild_dockerfile::instructions::stages;
use kbuild_dockerfile::parser::parse;

fn render(text: &str) -> Result<String, String> {
    let ast = parse(text).map_err(|e| e.to_string())?;
    let stages = stages(&ast).map_err(|e| e.to_string())?;
    let dump = serde_json::json!({ "ast": ast, "stages": stages });
    serde_json::to_string_pretty(&dump)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

fn case_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dirs = case_dirs();
    assert!(
        dirs.len() >= 40,
        "expected at least 40 golden cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = fs::read_to_string(dir.join("Dockerfile"))
            .unwrap_or_else(|e| panic!("{name}: reading Dockerfile: {e}"));
        let (file, other, actual) = match render(&text) {
            Ok(json) => ("expected.json", "error.txt", json),
            Err(err) => ("error.txt", "expected.json", err + "\n"),
        };
        if update {
            fs::write(dir.join(file), &actual).unwrap_or_else(|e| panic!("{name}: {e}"));
            let _ = fs::remove_file(dir.join(other));
            continue;
        }
        if dir.join(other).exists() {
            failures.push(format!(
                "{name}: produced {file} but the case expects {other}:\n{actual}"
            ));
            continue;
        }
        match fs::read_to_string(dir.join(file)) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: {file} differs\n--- expected\n{expected}\n--- actual\n{actual}"
            )),
            Err(e) => failures.push(format!("{name}: missing {file} ({e}); actual:\n{actual}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

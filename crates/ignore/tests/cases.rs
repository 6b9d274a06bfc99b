//! Runs the behaviour table in `cases.txt`.

use kbuild_ignore::Matcher;

struct Case {
    name: String,
    line: usize,
    file: String,
    checks: Vec<(usize, String)>,
}

fn unescape(line: &str) -> String {
    line.replace("{sp}", " ")
        .replace("{tab}", "\t")
        .replace("{cr}", "\r")
        .replace("{bom}", "\u{feff}")
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut in_file = false;
    for (index, line) in include_str!("cases.txt").lines().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if !in_file {
                cases.push(Case {
                    name: name.to_string(),
                    line: index + 1,
                    file: String::new(),
                    checks: Vec::new(),
                });
                in_file = true;
                continue;
            }
        }
        let Some(case) = cases.last_mut() else {
            continue; // table comments
        };
        if in_file && line == "---" {
            in_file = false;
        } else if in_file {
            case.file.push_str(&unescape(line));
            case.file.push('\n');
        } else if !line.trim().is_empty() {
            case.checks.push((index + 1, line.to_string()));
        }
    }
    cases
}

#[test]
fn case_table() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut checks = 0;
    for case in &cases {
        let parsed = Matcher::parse(&case.file);
        for (line, check) in &case.checks {
            checks += 1;
            let (op, arg) = check.split_once(' ').unwrap_or((check, ""));
            let failure = match (op, &parsed) {
                ("error", Err(e)) => {
                    let want: usize = arg.parse().expect("line number");
                    let names = e.to_string().contains(&format!("on line {want}"))
                        && e.to_string().contains(&format!("{:?}", e.pattern()));
                    (e.line() != want || !names).then(|| format!("wrong error: {e}"))
                }
                ("error", Ok(_)) => Some("parsed, expected an error".to_string()),
                (_, Err(e)) => Some(format!("parse failed: {e}")),
                ("-" | "+", Ok(m)) => {
                    let want = op == "-";
                    let file = m.is_excluded(arg, false);
                    let dir = m.is_excluded(arg, true);
                    (file != want || dir != want)
                        .then(|| format!("{arg:?}: excluded as file {file}, as dir {dir}"))
                }
                ("skip" | "enter", Ok(m)) => {
                    let want = op == "enter";
                    let got = m.may_contain_included(arg);
                    (got != want).then(|| format!("may_contain_included({arg:?}) = {got}"))
                }
                _ => Some(format!("unknown check {check:?}")),
            };
            if let Some(f) = failure {
                failures.push(format!(
                    "line {line} [{}] (case at {}): {f}",
                    case.name, case.line
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checks >= 60,
        "only {checks} checks in {} cases",
        cases.len()
    );
}

/// A walker that skips what `may_contain_included` says it may skip must
/// keep exactly the paths `is_excluded` keeps.
#[test]
fn skipping_directories_loses_nothing() {
    let tree = [
        "a/b/c.txt",
        "a/b/keep.md",
        "a/LICENSE",
        "a/x/y/z.go",
        "docs/keep.md",
        "docs/sub/keep.md",
        "node_modules/p/LICENSE",
        "src/main.go",
        "src/gen/x.tmp",
        "keep",
    ];
    let files = [
        "*\n!src\n",
        "a\n!a/b/keep.md\n",
        "*\n!*/LICENSE\n",
        "**\n!**/keep.md\n",
        "docs\n!docs/*/keep.md\n",
        "a/**\n!a/x/y\n",
        "node_modules\n!node_modules/p\nnode_modules/p/*\n!node_modules/p/LICENSE\n",
        "*\n!keep\n!src/gen\nsrc/gen/*.tmp\n",
    ];
    for text in files {
        let m = Matcher::parse(text).unwrap();
        for file in tree {
            let mut dir = String::new();
            let mut reachable = true;
            for part in file.split('/').take(file.split('/').count() - 1) {
                if !dir.is_empty() {
                    dir.push('/');
                }
                dir.push_str(part);
                if m.is_excluded(&dir, true) && !m.may_contain_included(&dir) {
                    reachable = false;
                    break;
                }
            }
            if !m.is_excluded(file, false) {
                assert!(
                    reachable,
                    "{file} is kept by {text:?} but its directory {dir} was skipped"
                );
            }
        }
    }
}

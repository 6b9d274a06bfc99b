//! Runs the behaviour table in `cases.txt` and the cpuinfo samples in
//! `cpuinfo/`.

use std::path::Path;

use kbuild_platform::{arm_variant_from_cpuinfo, ErrorKind, Platform, SUPPORTED};

fn host_os() -> String {
    Platform::host().os
}

fn host_arch() -> String {
    let host = Platform::host();
    match host.variant {
        Some(v) => format!("{}/{}", host.architecture, v),
        None => host.architecture,
    }
}

fn expand(text: &str) -> String {
    let text = text
        .replace("{os}", &host_os())
        .replace("{arch}", &host_arch());
    if text == "<empty>" {
        return String::new();
    }
    text.replace("\\s", " ")
}

/// A platform column: JSON as found in an index, or a specifier.
fn platform(column: &str, line: usize) -> Platform {
    let column = expand(column);
    if column.starts_with('{') {
        serde_json::from_str(&column)
            .unwrap_or_else(|e| panic!("line {line}: bad JSON platform {column}: {e}"))
    } else {
        Platform::parse(&column)
            .unwrap_or_else(|e| panic!("line {line}: cannot parse {column:?}: {e}"))
    }
}

fn kind_name(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Empty => "empty",
        ErrorKind::Wildcard => "wildcard",
        ErrorKind::TooManyComponents => "too-many",
        ErrorKind::InvalidOs(_) => "invalid-os",
        ErrorKind::InvalidComponent(_) => "invalid-component",
        ErrorKind::UnknownOsOrArch => "unknown",
        ErrorKind::EmptyListItem(_) => "empty-item",
        _ => "other",
    }
}

fn yes_no(text: &str, line: usize) -> bool {
    match text {
        "yes" => true,
        "no" => false,
        other => panic!("line {line}: expected yes or no, found {other:?}"),
    }
}

#[test]
fn case_table() {
    let table = include_str!("cases.txt");
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for (index, raw) in table.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = trimmed.split('|').map(str::trim).collect();
        let kind = cols[0];
        *counts.entry(kind).or_default() += 1;
        let failure = match (kind, &cols[1..]) {
            ("parse", [input, expected]) => {
                let input = expand(input);
                match Platform::parse(&input) {
                    Ok(p) if p.format_all() == expand(expected) => None,
                    Ok(p) => Some(format!("parse {input:?} gave {}", p.format_all())),
                    Err(e) => Some(format!("parse {input:?} failed: {e}")),
                }
            }
            ("error", [input, expected]) => {
                let input = expand(input);
                match Platform::parse(&input) {
                    Ok(p) => Some(format!("parse {input:?} accepted as {p}")),
                    Err(e) if kind_name(e.kind()) != *expected => {
                        Some(format!("parse {input:?}: wrong error {e}"))
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let names_input = message.contains(&format!("{input:?}"));
                        let lists = SUPPORTED.iter().all(|s| message.contains(s));
                        (!names_input || !lists || e.input() != input)
                            .then(|| format!("error message incomplete: {message}"))
                    }
                }
            }
            ("roundtrip", [text]) => {
                let p = platform(text, line);
                let shown = p.to_string();
                (shown != *text || Platform::parse(&shown).as_ref() != Ok(&p))
                    .then(|| format!("{text} displays as {shown}"))
            }
            ("match" | "strict", [wanted, candidate, expected]) => {
                let w = platform(wanted, line);
                let c = platform(candidate, line);
                let got = if kind == "match" {
                    w.matches(&c)
                } else {
                    w.matches_strict(&c)
                };
                (got != yes_no(expected, line)).then(|| format!("{kind} gave {got}"))
            }
            ("best", [wanted, expected, candidates]) => {
                let w = platform(wanted, line);
                let list: Vec<Platform> = candidates
                    .split_whitespace()
                    .map(|c| platform(c, line))
                    .collect();
                let got = w.best_match(&list);
                let want = match *expected {
                    "none" => None,
                    n => Some(n.parse::<usize>().expect("index column")),
                };
                // The best candidate must also be one that matches.
                let consistent = match got {
                    Some(i) => w.matches(&list[i]),
                    None => !list.iter().any(|c| w.matches(c)),
                };
                (got != want || !consistent).then(|| format!("best gave {got:?}"))
            }
            _ => Some(format!("malformed case: {raw}")),
        };
        if let Some(f) = failure {
            failures.push(format!("line {line}: {f}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let total: usize = counts.values().sum();
    assert!(total >= 80, "only {total} cases: {counts:?}");
}

#[test]
fn supported_platforms_parse_to_themselves_and_are_supported() {
    assert_eq!(SUPPORTED.len(), 9);
    for s in SUPPORTED {
        let p = Platform::parse(s).expect("supported platform parses");
        assert_eq!(p.to_string(), *s);
        assert!(p.is_supported(), "{s}");
    }
    assert!(!Platform::parse("linux/riscv64").unwrap().is_supported());
    assert!(Platform::parse("linux/armhf").unwrap().is_supported());
}

#[test]
fn cpuinfo_samples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cpuinfo");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let (first, body) = text.split_once('\n').unwrap();
        let expected = first.strip_prefix("# expect: ").unwrap().trim();
        let got = arm_variant_from_cpuinfo(body);
        let expected = (expected != "none").then(|| expected.to_string());
        assert_eq!(got, expected, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn host_is_the_machine_uname_reports() {
    let out = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .expect("uname runs on every Linux machine");
    let machine = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = Platform::host();
    let expected = Platform::parse(&format!("{}/{machine}", host.os)).unwrap();
    // uname names the kernel's machine; a 32-bit process on a 64-bit
    // kernel would differ, which this test build is not.
    assert_eq!(
        host.architecture, expected.architecture,
        "uname -m = {machine}"
    );
    assert_eq!(host.os, std::env::consts::OS.replace("macos", "darwin"));
    assert_eq!(Platform::parse(&host.to_string()).unwrap(), host);
}

#[test]
fn serde_uses_oci_field_names() {
    let p = Platform::parse("windows(10.0.17763.1234)/amd64").unwrap();
    let mut p = p;
    p.os_features.push("win32k".into());
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"os":"windows","architecture":"amd64","os.version":"10.0.17763.1234","os.features":["win32k"]}"#
    );
    assert_eq!(serde_json::from_str::<Platform>(&json).unwrap(), p);

    let arm = Platform::parse("linux/arm/v7").unwrap();
    assert_eq!(
        serde_json::to_string(&arm).unwrap(),
        r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
    );
    let raw: Platform = serde_json::from_str(
        r#"{"architecture":"aarch64","os":"Linux","variant":"v8","os.version":""}"#,
    )
    .unwrap();
    assert_eq!(
        raw.architecture, "aarch64",
        "deserialization keeps values as found"
    );
    assert_eq!(raw.os_version, None);
    assert_eq!(raw.normalized(), Platform::parse("linux/arm64").unwrap());
    assert!(serde_json::from_str::<Platform>(r#"{"os":"linux"}"#).is_err());
}

#[test]
fn from_str_and_new_agree_with_parse() {
    let p: Platform = "linux/armhf".parse().unwrap();
    assert_eq!(p, Platform::new("linux", "arm", Some("7")));
    assert_eq!(
        Platform::new("Linux", "aarch64", Some("v8")).to_string(),
        "linux/arm64"
    );
    let empty_os = Platform {
        os: String::new(),
        ..p
    };
    assert_eq!(empty_os.to_string(), "unknown");
}

#[test]
fn parse_list_trims_dedupes_and_rejects_empty_items() {
    let list =
        kbuild_platform::parse_list(" linux/amd64 , linux/arm64 linux/arm,linux/x86_64").unwrap();
    let names: Vec<String> = list.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);

    for bad in ["", "linux/amd64,", "linux/amd64,,linux/arm64", " , "] {
        let e = kbuild_platform::parse_list(bad).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::EmptyListItem(_)),
            "{bad:?}: {e}"
        );
        assert_eq!(e.input(), bad);
    }
    let e = kbuild_platform::parse_list("linux/amd64,linux/*").unwrap_err();
    assert_eq!(e.input(), "linux/*");
    assert_eq!(
        kbuild_platform::parse_list("linux/amd64,,x").unwrap_err().to_string(),
        format!(
            "invalid platform \"linux/amd64,,x\": item 2 of the list is empty; supported platforms are {}",
            SUPPORTED.join(", ")
        )
    );
}

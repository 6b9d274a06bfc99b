//! Expansion is bounded: a word at 1 MiB, a stage's environment at 16 MiB.
//! Exceeding either is an error naming the Dockerfile line, reached before
//! anything near that size is allocated.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kbuild_dockerfile::plan::{
    plan, ErrorKind, NoImageConfigs, PlanOptions, MAX_STAGE_ENV, MAX_WORD_LEN,
};
use kbuild_platform::Platform;

fn options(platforms: &[&str]) -> PlanOptions {
    PlanOptions {
        platforms: platforms
            .iter()
            .map(|p| Platform::parse(p).expect("valid platform"))
            .collect(),
        build_platform: Platform::parse("linux/amd64").expect("valid platform"),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        named_contexts: Default::default(),
    }
}

/// `ARG A=<1000 a>` then lines each setting a variable to 1,000,000 bytes
/// (every `a` of A replaced by A).
fn million_byte_lines(keyword: &str, count: usize) -> String {
    (1..=count)
        .map(|i| format!("{keyword} V{i}=${{A//a/$A}}\n"))
        .collect()
}

#[test]
fn the_limits_are_documented_values() {
    assert_eq!(MAX_WORD_LEN, 1 << 20);
    assert_eq!(MAX_STAGE_ENV, 16 << 20);
}

#[test]
fn billion_laughs_fails_fast_on_every_platform() {
    let dockerfile = "\
FROM busybox
ARG A=aaaaaaaaaaaaaaaaaaaa
ENV B=${A//a/aaaaaaaaaaaaaaaaaaaa}
ENV C=${B//a/aaaaaaaaaaaaaaaaaaaa}
ENV D=${C//a/aaaaaaaaaaaaaaaaaaaa}
ENV E=${D//a/aaaaaaaaaaaaaaaaaaaa}
ENV F=${E//a/aaaaaaaaaaaaaaaaaaaa}
ENV G=${F//a/aaaaaaaaaaaaaaaaaaaa}
";
    let started = Instant::now();
    let err = plan(
        dockerfile,
        &options(&["linux/amd64", "linux/arm64", "linux/s390x"]),
        &NoImageConfigs,
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.line(), Some(6));
    assert_eq!(
        err.to_string(),
        "Dockerfile:6: ENV E=${D//a/aaaaaaaaaaaaaaaaaaaa}: failed to process \
         \"${D//a/aaaaaaaaaaaaaaaaaaaa}\": the expansion is longer than 1048576 bytes, \
         the limit for one word"
    );
    // The same through LABEL, COPY, WORKDIR and an ARG default.
    for (line, at) in [
        ("LABEL x=${D//a/aaaaaaaaaaaaaaaaaaaa}", 6),
        ("COPY ${D//a/aaaaaaaaaaaaaaaaaaaa} /x", 6),
        ("WORKDIR /${D//a/aaaaaaaaaaaaaaaaaaaa}", 6),
        ("ARG X=${D//a/aaaaaaaaaaaaaaaaaaaa}", 6),
    ] {
        let text = format!(
            "{}{line}\n",
            &dockerfile[..dockerfile.find("ENV E").unwrap()]
        );
        let err = plan(&text, &options(&["linux/amd64"]), &NoImageConfigs).unwrap_err();
        assert_eq!(err.line(), Some(at), "{line}: {err}");
        assert!(err.to_string().contains("limit for one word"), "{err}");
    }
}

#[test]
fn a_stage_environment_is_bounded() {
    let a = "a".repeat(1000);
    // 16 variables of 1,000,000 bytes fit in 16 MiB; a 17th does not.
    let fits = format!("FROM scratch\nARG A={a}\n{}", million_byte_lines("ENV", 16));
    let p = plan(&fits, &options(&["linux/amd64"]), &NoImageConfigs).expect("fits");
    assert_eq!(p.targets.len(), 1);

    let text = format!("FROM scratch\nARG A={a}\n{}", million_byte_lines("ENV", 17));
    let err = plan(&text, &options(&["linux/amd64"]), &NoImageConfigs).unwrap_err();
    assert_eq!(err.line(), Some(19), "{err}");
    assert!(matches!(
        err.kind(),
        ErrorKind::EnvironmentTooLarge {
            limit: MAX_STAGE_ENV,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "Dockerfile:19: ENV V17=${A//a/$A}: the environment of stage \"stage-0\" would be \
         larger than 16777216 bytes (names and values of its ENV and ARG variables), \
         the limit for one stage"
    );

    // ARG values count the same, and so does what a stage inherits.
    let text = format!(
        "FROM scratch AS base\nARG A={a}\n{}FROM base\n{}",
        million_byte_lines("ARG", 10),
        million_byte_lines("ENV", 7).replace(" V", " W")
    );
    let err = plan(&text, &options(&["linux/amd64"]), &NoImageConfigs).unwrap_err();
    assert_eq!(err.line(), Some(20), "{err}");
    assert!(err.to_string().contains("stage \"stage-1\""), "{err}");

    // Replacing a variable does not grow the environment.
    let text = format!(
        "FROM scratch\nARG A={a}\n{}",
        "ENV V=${A//a/$A}\n".repeat(40)
    );
    plan(&text, &options(&["linux/amd64"]), &NoImageConfigs).expect("one variable");
}

#[test]
fn global_args_are_bounded() {
    let a = "a".repeat(1000);
    let text = format!("ARG A={a}\n{}FROM scratch\n", million_byte_lines("ARG", 17));
    let err = plan(&text, &options(&["linux/amd64"]), &NoImageConfigs).unwrap_err();
    assert_eq!(err.line(), Some(18), "{err}");
    assert!(
        err.to_string()
            .contains("the environment of the global ARGs (before the first FROM)"),
        "{err}"
    );
}

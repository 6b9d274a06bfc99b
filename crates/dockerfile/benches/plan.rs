//! Planner throughput: a generated 2,000-line Dockerfile with 50 stages,
//! planned for the 9 platforms kubectl-build supports. Target: < 10 ms.

use std::collections::BTreeMap;
use std::fmt::Write;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kbuild_dockerfile::plan::{plan, NoImageConfigs, PlanOptions};
use kbuild_platform::Platform;

const LINES: usize = 2000;
const STAGES: usize = 50;

/// A cross-compiling builder stage on the build platform, 48 stages that
/// mix images, earlier stages, args, mounts and `--from` copies, and a final
/// scratch stage that copies from all of them (so nothing is pruned).
fn dockerfile() -> String {
    let per_stage = LINES / STAGES - 1;
    let mut out = String::new();
    let mut lines = 0;
    let mut line = |out: &mut String, text: &str| {
        out.push_str(text);
        out.push('\n');
        lines += 1;
    };
    line(&mut out, "ARG ALPINE_VERSION=3.19");
    line(&mut out, "ARG GO_VERSION=1.22");
    for stage in 0..STAGES {
        let mut body: Vec<String> = Vec::new();
        if stage == 0 {
            body.push("FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS builder".into());
            body.push("WORKDIR /src".into());
            body.push("COPY go.mod go.sum ./".into());
            body.push("RUN --mount=type=cache,target=/go/pkg/mod go mod download".into());
            body.push("COPY . .".into());
            body.push("ARG TARGETOS TARGETARCH TARGETVARIANT".into());
            body.push("ENV GOOS=$TARGETOS GOARCH=$TARGETARCH CGO_ENABLED=0".into());
        } else if stage == STAGES - 1 {
            body.push("FROM scratch AS release".into());
            for from in 1..STAGES - 1 {
                body.push(format!(
                    "COPY --from=stage-{from} /out/stage-{from} /stage-{from}"
                ));
            }
        } else if stage % 3 == 0 {
            body.push(format!("FROM stage-{} AS stage-{stage}", stage - 1));
            body.push(format!(
                "ENV STAGE={stage} PATH=$PATH:/opt/stage-{stage}/bin"
            ));
        } else if stage % 3 == 1 {
            body.push(format!("FROM alpine:${{ALPINE_VERSION}} AS stage-{stage}"));
            body.push("ARG TARGETARCH".into());
            body.push(format!("ENV STAGE={stage} ARCH=$TARGETARCH"));
        } else {
            body.push(format!(
                "FROM --platform=$BUILDPLATFORM debian:bookworm AS stage-{stage}"
            ));
            body.push(format!("ENV STAGE={stage}"));
        }
        let mut i = 0;
        while body.len() < per_stage {
            let text = match i % 10 {
                0 => format!("WORKDIR /work/s{stage}/step{i}"),
                1 if stage == 0 => format!("COPY src/{i} ./file{i}"),
                1 => format!("COPY --from=builder /src/file{i} ./file{i}"),
                2 => format!("RUN echo stage {stage} step {i} $STAGE > /tmp/s{i}"),
                3 => format!("ARG OPT{i}=value-{i}-${{STAGE}}"),
                4 => format!("LABEL org.example.stage{stage}.step{i}=\"$STAGE\""),
                5 => format!(
                    "RUN --mount=type=cache,target=/var/cache/s{stage},id=c{stage} make -j4 target{i}"
                ),
                6 => format!("ENV VAR{i}=${{OPT3:-default}}/{i}"),
                7 => format!("COPY --chown=1000:1000 src/{stage}/{i} dest/{i}/"),
                8 => format!("EXPOSE {}/tcp", 8000 + i),
                _ => format!("RUN mkdir -p /out && echo {stage} > /out/stage-{stage}"),
            };
            body.push(text);
            i += 1;
        }
        if stage == 0 {
            // The builder ends with the build itself.
            body.truncate(per_stage - 1);
            body.push("RUN go build -o /out/app .".into());
        }
        for text in &body {
            line(&mut out, text);
        }
    }
    // The release stage is last: pad it to exactly LINES lines.
    let mut extra = 0;
    while lines < LINES {
        let _ = writeln!(out, "RUN echo pad {extra}");
        lines += 1;
        extra += 1;
    }
    assert_eq!(lines, LINES, "the generator overshot");
    out
}

fn options() -> PlanOptions {
    let platforms = [
        "linux/amd64",
        "linux/386",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm/v8",
        "linux/arm64",
        "linux/ppc64le",
        "linux/s390x",
        "windows/amd64",
    ]
    .iter()
    .map(|p| Platform::parse(p).expect("known platform"))
    .collect();
    PlanOptions {
        platforms,
        build_platform: Platform::parse("linux/amd64").expect("known platform"),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        named_contexts: Default::default(),
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (Linux; `None` elsewhere). On a shared machine wall-clock figures swing
/// with the load, CPU time much less.
fn cpu_time() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // The kernel reports clock ticks; USER_HZ is 100 on Linux.
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

fn bench(c: &mut Criterion) {
    let text = dockerfile();
    let opts = options();
    let lines = text.lines().count();
    let planned = plan(&text, &opts, &NoImageConfigs).expect("the generated Dockerfile plans");
    let stages: std::collections::BTreeSet<usize> =
        planned.stages.iter().map(|s| s.index).collect();
    eprintln!(
        "generated Dockerfile: {lines} lines, {} stages planned; plan: {} steps ({} shared), {} stage instances, {} targets",
        stages.len(),
        planned.steps.len(),
        planned.steps.iter().filter(|s| s.shared).count(),
        planned.stages.len(),
        planned.targets.len()
    );
    if let Some(start) = cpu_time() {
        // KBUILD_BENCH_RUNS lowers the count for instruction counting under
        // `valgrind --tool=callgrind` (pass a filter that matches no bench).
        let runs: u32 = std::env::var("KBUILD_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(200);
        for _ in 0..runs {
            drop(black_box(plan(&text, &opts, &NoImageConfigs)));
        }
        if let Some(end) = cpu_time() {
            eprintln!(
                "CPU time per plan (incl. drop), mean of {runs}: {:?}",
                (end - start) / runs
            );
        }
    }
    c.bench_function("parse + stages only (for reference)", |b| {
        b.iter(|| {
            let ast = kbuild_dockerfile::parser::parse(black_box(&text)).expect("parses");
            kbuild_dockerfile::instructions::stages(&ast).expect("stages")
        })
    });
    // The plan is what the build keeps; freeing it is not planning, so the
    // main figure leaves its drop out (criterion's `iter_with_large_drop`).
    c.bench_function("plan 2000-line/50-stage Dockerfile for 9 platforms", |b| {
        b.iter_with_large_drop(|| plan(black_box(&text), black_box(&opts), &NoImageConfigs))
    });
    let planned = plan(&text, &opts, &NoImageConfigs).expect("plans");
    let graph = kbuild_dockerfile::graph::lower(&planned).expect("lowers");
    eprintln!("op graph: {} ops", graph.ops.len());
    c.bench_function("lower the plan to its op graph", |b| {
        b.iter_with_large_drop(|| kbuild_dockerfile::graph::lower(black_box(&planned)))
    });
    c.bench_function("plan, then drop the plan (for reference)", |b| {
        b.iter(|| plan(black_box(&text), black_box(&opts), &NoImageConfigs))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

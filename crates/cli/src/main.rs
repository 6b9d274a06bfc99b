//! `kubectl-build`: the kubectl plugin binary (`kubectl build`). It parses
//! flags, reads the Dockerfile, and hands the work to the solver; everything
//! it prints for people is rendered here.

mod args;
mod build;
mod builders;
mod fanout;
mod kube;
mod planner;
mod prune;
mod remote;
mod request;
mod signals;
mod split_outputs;

use args::{Cli, Command, DryRun};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox helper of RUN steps is this same binary, re-executed
    // single-threaded before anything else starts.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(kbuild_worker::executor::SANDBOX_FLAG))
    {
        kbuild_worker::executor::helper_main();
    }
    let cli = Cli::parse();
    // A daemon says where it listens and when it stops.
    let default_level = match cli.command {
        Some(Command::Serve(_)) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBECTL_BUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: logs kept in files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Some(Command::Doctor { install }) => doctor(install),
        Some(Command::Prune { all }) if cli.global.builder.is_some() => {
            let name = cli
                .global
                .builder
                .as_deref()
                .unwrap_or(kbuild_driver::LOCAL);
            prune::prune_builder(name, all, &cli.global)
        }
        Some(Command::Prune { all }) => {
            let report = build::prune(&cli.global, all)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => builders::serve(&args, &cli.global),
        Some(Command::Create(args)) => builders::create(&args, &cli.global),
        Some(Command::Ls(args)) => builders::ls(&args, &cli.global),
        Some(Command::Rm { name }) => builders::rm(&name, &cli.global),
        Some(Command::DialStdio { addr }) => kube::dial_stdio(&addr),
        Some(Command::Health { addr, timeout }) => kube::health(&addr, timeout),
        Some(Command::Use { name }) => builders::use_builder(&name),
        None => {
            let req = request::BuildRequest::from_args(&cli.build, &cli.global)?;
            if cli.build.dry_run.is_none() && cli.build.progress != args::Progress::Quiet {
                for w in &req.notices {
                    eprintln!("WARNING: {w}");
                }
            }
            match cli.build.dry_run {
                Some(format) => dry_run(&req, format, &cli),
                None => {
                    // Dockerfile errors that need no image stop the build
                    // before the store is opened or anything is pulled.
                    req.graph(&req.plan()?)?;
                    build::run(req, &cli.build, &cli.global)?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

/// `--dry-run`: the plan and the op graph (text or JSON), and which node
/// of a remote or kubernetes builder would build which platform.
fn dry_run(
    req: &request::BuildRequest,
    format: DryRun,
    cli: &Cli,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let plan = req.plan()?;
    // The same platform check a build makes before any work.
    kbuild_solver::engine::images_needed(&plan)?;
    req.graph(&plan)?;
    // Planned again with the base images the store holds, their sources
    // pinned as a build would pin them.
    let (plan, graph) = planner::dry_run(req, &cli.build, &cli.global, plan)?;
    // A remote or kubernetes builder: which node would build which
    // platform.
    let schedule = build::dry_run_schedule(req, &cli.global)?;
    for w in &plan.warnings {
        eprintln!("WARNING: {w}");
    }
    for e in schedule.iter().flat_map(|s| s.unreachable()) {
        eprintln!("WARNING: {e}; its platforms go to the other nodes");
    }
    match format {
        DryRun::Json => {
            // Streamed: the JSON repeats each stage's environment, so it
            // can be far larger than the plan in memory. The plan's
            // fields, and the op graph beside them.
            #[derive(serde::Serialize)]
            struct DryRun<'a, P, G> {
                #[serde(flatten)]
                plan: &'a P,
                graph: &'a G,
                #[serde(skip_serializing_if = "Option::is_none")]
                schedule: Option<serde_json::Value>,
            }
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer_pretty(
                &mut out,
                &DryRun {
                    plan: &plan,
                    graph: &graph,
                    schedule: schedule.as_ref().map(build::Schedule::to_json),
                },
            )?;
            writeln!(out)?;
            out.flush()?;
        }
        DryRun::Text => {
            print!("{}", plan.to_text());
            if let Some(s) = &schedule {
                print!("{}", s.to_text());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl build doctor`: how each supported platform's RUN steps execute here.
fn doctor(install: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let host = kbuild_platform::Platform::host();
    println!("host platform: {host}");
    let mut all_ok = true;
    if rustix::process::geteuid().is_root() {
        println!("user: root (the local builder can mount and run steps)");
    } else {
        all_ok = false;
        println!("user: not root: the local builder needs root to mount overlay filesystems and run steps; run as root");
    }
    for (platform, support) in kbuild_worker::binfmt::report() {
        let mut support = support;
        if install && !support.runs() && platform.os == "linux" {
            match kbuild_worker::binfmt::ensure(&platform) {
                Ok(action) => {
                    println!("{:<16} {action}", platform.to_string());
                    support = kbuild_worker::binfmt::support(&platform);
                }
                Err(e) => println!(
                    "{:<16} could not set up emulation: {e}",
                    platform.to_string()
                ),
            }
        }
        if !support.runs() && platform.os == "linux" {
            all_ok = false;
        }
        println!("{:<16} {support}", platform.to_string());
    }
    println!("COPY-only stages build for every platform; RUN needs the platform to run natively or by emulation.");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

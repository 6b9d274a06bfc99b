//! `kubectl-build`: the kubectl plugin binary (`kubectl build`). It parses
//! flags, reads the Dockerfile, and hands the work to the solver; everything
//! it prints for people is rendered here.

mod args;
mod build;
mod request;

use args::{Cli, Command, DryRun};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBECTL_BUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
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
        Some(Command::Doctor) => {
            request::not_yet("kubectl build doctor", "issue 4 (RUN and emulation)")
        }
        Some(Command::Prune { .. }) => {
            request::not_yet("kubectl build prune", "issue 3 (build engine)")
        }
        None => {
            let req = request::BuildRequest::from_args(&cli.build, &cli.global)?;
            for w in &req.notices {
                eprintln!("WARNING: {w}");
            }
            match cli.build.dry_run {
                Some(format) => {
                    let plan = req.plan()?;
                    for w in &plan.warnings {
                        eprintln!("WARNING: {w}");
                    }
                    match format {
                        DryRun::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                        DryRun::Text => print!("{}", plan.to_text()),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    build::run(req, &cli.build, &cli.global)?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

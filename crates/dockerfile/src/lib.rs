//! kbuild-dockerfile: Dockerfile text to a typed, per-platform build plan.
//!
//! It owns BuildKit's Dockerfile frontend semantics (dockerfile 1.x):
//!
//! - [`parser`] turns text into an [`Ast`]: parser directives, comments,
//!   line continuations, JSON (exec) or shell form per instruction, builder
//!   flags, heredocs, and the line range of every instruction.
//! - [`instructions`] turns the AST into one typed struct per instruction
//!   ([`Instruction`]) and groups them into stages. Words stay unexpanded;
//!   [`Instruction::expand`] expands exactly where BuildKit does.
//! - [`plan`] expands and resolves stages per target platform into a
//!   `BuildPlan`.
//! - [`graph`] lowers a plan to content-addressed operations (source,
//!   exec, file, config) with no Dockerfile left in them, deciding every
//!   rule that needs no image.
//!
//! ```
//! use kbuild_dockerfile::instructions::{stages, Command, Instruction};
//! use kbuild_dockerfile::parser::parse;
//!
//! let ast = parse("# syntax=docker/dockerfile:1\nFROM alpine AS base\nRUN echo \\\n  hi\n")?;
//! assert_eq!(ast.directive("syntax"), Some("docker/dockerfile:1"));
//! let grouped = stages(&ast)?;
//! assert_eq!(grouped.stages[0].name(), Some("base"));
//! match &grouped.stages[0].commands[0] {
//!     Instruction::Run(run) => assert_eq!(run.command, Command::Shell("echo   hi".into())),
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! let err = parse("FROM alpine\nCOPPY . /src\n").and_then(|ast| stages(&ast)).unwrap_err();
//! assert_eq!(err.to_string(), "Dockerfile:2: unknown instruction: COPPY (did you mean COPY?)");
//! # Ok::<(), kbuild_dockerfile::Error>(())
//! ```
#![deny(missing_docs)]

pub mod graph;
pub mod instructions;
pub mod parser;
pub mod plan;

pub use instructions::Instruction;
pub use parser::{Ast, Error, ErrorKind, SourceRange};

//! kbuild-dockerfile: Dockerfile text to a typed, per-platform build plan.
//!
//! It owns BuildKit's Dockerfile frontend semantics: [`parser`] turns text
//! into an [`parser::Ast`] (directives, continuations, heredocs, flags, line
//! ranges); [`instructions`] turns the AST into one typed struct per
//! instruction, grouped into stages.
#![deny(missing_docs)]

pub mod instructions;
pub mod parser;
pub mod plan;

pub use instructions::Instruction;
pub use parser::{Ast, Error, ErrorKind, SourceRange};

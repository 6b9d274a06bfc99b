//! Grouping instructions into build stages.

use serde::{Deserialize, Serialize};

use super::{from_ast, Arg, From, Instruction};
use crate::parser::{Ast, Error, ErrorKind};

/// One build stage: its FROM and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Position of the stage in the file (0-based); `COPY --from=<n>` refers to it.
    pub index: usize,
    /// The FROM that starts the stage.
    pub from: From,
    /// The instructions of the stage in order (never a FROM).
    pub commands: Vec<Instruction>,
}

impl Stage {
    /// The stage name (`AS name`, lowercased), if any.
    pub fn name(&self) -> Option<&str> {
        self.from.name.as_deref()
    }
}

/// A Dockerfile split into meta ARGs (before the first FROM) and stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stages {
    /// ARG instructions before the first FROM: in scope for FROM lines only.
    pub meta_args: Vec<Arg>,
    /// The stages in file order.
    pub stages: Vec<Stage>,
}

impl Stages {
    /// The stage named `name` (case-insensitive, as BuildKit compares).
    pub fn by_name(&self, name: &str) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| s.name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// Converts `ast` and groups it: ARGs before the first FROM are meta ARGs;
/// any other instruction before the first FROM is an error.
pub fn stages(ast: &Ast) -> Result<Stages, Error> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in from_ast(ast)? {
        match instruction {
            Instruction::From(from) => stages.push(Stage {
                index: stages.len(),
                from,
                commands: Vec::new(),
            }),
            Instruction::Arg(arg) if stages.is_empty() => meta_args.push(arg),
            other => match stages.last_mut() {
                Some(stage) => stage.commands.push(other),
                None => {
                    return Err(Error::new(
                        ErrorKind::NoStage,
                        Some(other.range()),
                        "no build stage in current context",
                    )
                    .with_source(other.original())
                    .in_file(&ast.file))
                }
            },
        }
    }
    Ok(Stages { meta_args, stages })
}

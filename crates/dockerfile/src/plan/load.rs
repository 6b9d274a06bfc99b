//! From text to stages, through the parser and the instruction model.

use std::sync::Arc;

use super::error::{Error, TriggerError};
use crate::instructions::{self, Arg, Instruction, Stage};
use crate::parser;

/// A parsed Dockerfile, ready to plan.
pub(crate) struct Loaded {
    /// The escape character (`# escape=` directive, `\` by default).
    pub(crate) escape: char,
    /// ARGs before the first FROM.
    pub(crate) meta: Vec<Arg>,
    /// The stages in file order (their `commands` moved to `commands`).
    pub(crate) stages: Vec<Stage>,
    /// The instructions of every stage, shared with the steps built from them.
    pub(crate) commands: Vec<Vec<Arc<Instruction>>>,
}

pub(crate) fn load(text: &str) -> Result<Loaded, Error> {
    let ast = parser::parse(text).map_err(Error::parse)?;
    let escape = ast.escape;
    let mut stages = instructions::stages(&ast).map_err(Error::parse)?;
    let commands = stages
        .stages
        .iter_mut()
        .map(|s| {
            std::mem::take(&mut s.commands)
                .into_iter()
                .map(Arc::new)
                .collect()
        })
        .collect();
    Ok(Loaded {
        escape,
        meta: stages.meta_args,
        stages: stages.stages,
        commands,
    })
}

/// Parses an ONBUILD trigger (one instruction; BuildKit parses it on its own,
/// with the default escape character).
pub(crate) fn parse_trigger(expression: &str) -> Result<Instruction, TriggerError> {
    let ast = parser::parse_named(expression, "ONBUILD").map_err(TriggerError::Parse)?;
    match ast.nodes.as_slice() {
        [node] => instructions::from_node(node).map_err(TriggerError::Parse),
        _ => Err(TriggerError::NotOne),
    }
}

//! Variable expansion hook: which fields BuildKit expands, per instruction.

use super::*;

/// Expands words the way the planner's shell lexer does for one stage
/// (environment = ARGs and ENV in scope). [`Instruction::expand`] calls it
/// on exactly the fields BuildKit expands.
pub trait Expander {
    /// The expansion error.
    type Error;
    /// Expands one word to one word (quotes removed, `$VAR`s substituted).
    fn word(&mut self, word: &str) -> Result<String, Self::Error>;
    /// Expands one word with field splitting (EXPOSE: `$PORTS` may become
    /// several ports).
    fn words(&mut self, word: &str) -> Result<Vec<String>, Self::Error>;
}

fn each<X: Expander>(x: &mut X, values: &mut [String]) -> Result<(), X::Error> {
    for v in values {
        *v = x.word(v)?;
    }
    Ok(())
}

fn opt<X: Expander>(x: &mut X, value: &mut Option<String>) -> Result<(), X::Error> {
    if let Some(v) = value {
        *v = x.word(v)?;
    }
    Ok(())
}

fn pairs<X: Expander>(x: &mut X, kvs: &mut [KeyValue]) -> Result<(), X::Error> {
    for kv in kvs {
        kv.key = x.word(&kv.key)?;
        kv.value = x.word(&kv.value)?;
    }
    Ok(())
}

impl Instruction {
    /// Expands, in place, the fields BuildKit expands: FROM image and
    /// `--platform` (BuildKit uses the global ARGs only); ARG defaults (never
    /// names; BuildKit expands a default only when no build arg overrides
    /// it, so skip the call in that case); ENV and LABEL keys and values;
    /// COPY/ADD sources, destination, `--chown`, `--chmod` (and ADD
    /// `--checksum`); WORKDIR; USER; VOLUME paths; STOPSIGNAL; EXPOSE ports
    /// (with field splitting). RUN, CMD, ENTRYPOINT, HEALTHCHECK, SHELL,
    /// ONBUILD, MAINTAINER, `--from`, `--exclude`, `--network` and
    /// `--security` are left as written; RUN `--mount` values are expanded
    /// by [`Run::parse_mounts`]; COPY/ADD heredoc bodies with `expand` set
    /// are the caller's to expand (BuildKit: `\` escapes, quotes kept).
    pub fn expand<X: Expander>(&mut self, x: &mut X) -> Result<(), X::Error> {
        match self {
            Instruction::From(i) => {
                i.image = x.word(&i.image)?;
                opt(x, &mut i.platform)
            }
            Instruction::Arg(i) => {
                for a in &mut i.args {
                    opt(x, &mut a.default)?;
                }
                Ok(())
            }
            Instruction::Env(i) => pairs(x, &mut i.vars),
            Instruction::Label(i) => pairs(x, &mut i.labels),
            Instruction::Copy(i) => {
                opt(x, &mut i.chown)?;
                opt(x, &mut i.chmod)?;
                each(x, &mut i.sources)?;
                i.dest = x.word(&i.dest)?;
                Ok(())
            }
            Instruction::Add(i) => {
                opt(x, &mut i.chown)?;
                opt(x, &mut i.chmod)?;
                opt(x, &mut i.checksum)?;
                each(x, &mut i.sources)?;
                i.dest = x.word(&i.dest)?;
                Ok(())
            }
            Instruction::Workdir(i) => {
                i.path = x.word(&i.path)?;
                Ok(())
            }
            Instruction::User(i) => {
                i.user = x.word(&i.user)?;
                Ok(())
            }
            Instruction::Volume(i) => each(x, &mut i.volumes),
            Instruction::StopSignal(i) => {
                i.signal = x.word(&i.signal)?;
                Ok(())
            }
            Instruction::Expose(i) => {
                let mut ports = Vec::with_capacity(i.ports.len());
                for p in &i.ports {
                    ports.extend(x.words(p)?);
                }
                i.ports = ports;
                Ok(())
            }
            Instruction::Run(_)
            | Instruction::Cmd(_)
            | Instruction::Entrypoint(_)
            | Instruction::Healthcheck(_)
            | Instruction::Shell(_)
            | Instruction::Onbuild(_)
            | Instruction::Maintainer(_) => Ok(()),
        }
    }
}

impl Run {
    /// The typed mounts: each `--mount` value parsed with every option
    /// value passed through `expand` first, as BuildKit does at dispatch.
    /// The outer error is the expander's, the inner one BuildKit's verdict
    /// on the mount.
    pub fn parse_mounts<E>(
        &self,
        mut expand: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<Result<Vec<Mount>, MountError>, E> {
        let mut out = Vec::with_capacity(self.mounts.len());
        for m in &self.mounts {
            match Mount::parse(m, &mut expand)? {
                Ok(m) => out.push(m),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(out))
    }
}

impl Onbuild {
    /// Parses the trigger text as BuildKit does when the image is used as a
    /// base (default escape `\`).
    pub fn parse_trigger(&self) -> Result<Instruction, crate::parser::Error> {
        let ast = crate::parser::parse_named(&self.expression, "ONBUILD")?;
        match ast.nodes.as_slice() {
            [node] => from_node(node).map_err(|e| e.in_file("ONBUILD")),
            _ => Err(crate::parser::Error::new(
                crate::parser::ErrorKind::Syntax,
                Some(self.range),
                format!(
                    "ONBUILD trigger is not one instruction: {}",
                    self.expression
                ),
            )),
        }
    }
}

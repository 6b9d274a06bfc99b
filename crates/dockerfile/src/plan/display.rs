//! Texts for people: the progress name of a step and the dry-run rendering.

use std::fmt::Write;

use kbuild_shell::{Env, Lexer};

use super::model::{BuildPlan, Source, StageBase};
use crate::instructions::{Command, Instruction};

/// The name of a step in progress output (without BuildKit's `[stage n/m]`
/// prefix), the keyword uppercased. RUN, COPY, ADD and WORKDIR — the steps
/// BuildKit shows — read as BuildKit shows them: for RUN the source text
/// with the variables that are set expanded and quotes kept, for the others
/// the source text expanded like a word. ARG, ENV and LABEL read like
/// BuildKit's image history (`ARG TARGETOS=linux`, `ENV GOOS=linux`), USER,
/// EXPOSE, VOLUME and STOPSIGNAL show their expanded words, the rest their
/// source text.
pub(crate) fn display<E: Env + ?Sized>(
    ins: &Instruction,
    expanded: &Instruction,
    lexer: &Lexer,
    env: &E,
) -> String {
    let original = ins.original();
    match expanded {
        Instruction::Run(run) => {
            let mut text = original.to_string();
            if let (Command::Shell(cmd), Some(first)) = (&run.command, run.heredocs.first()) {
                // A RUN that is a single here-document shows its first line.
                if is_single_heredoc(cmd) {
                    text.push_str(&format!(" ({})", summarize_heredoc(&first.content)));
                }
            }
            if plain(&text, lexer.escape(), false) {
                // Nothing the lexer would change.
                return uppercase_keyword(&text);
            }
            let raw = lexer.with_raw_quotes(true).with_skip_unset_env(true);
            uppercase_keyword(&raw.process_word(&text, env).unwrap_or(text))
        }
        Instruction::Copy(_) | Instruction::Add(_) | Instruction::Workdir(_) => {
            if plain(original, lexer.escape(), true) {
                return uppercase_keyword(original);
            }
            uppercase_keyword(
                &lexer
                    .process_word(original, env)
                    .unwrap_or_else(|_| original.to_string()),
            )
        }
        Instruction::Arg(a) => {
            let mut out = String::from("ARG");
            for def in &a.args {
                out.push(' ');
                out.push_str(&def.name);
                if let Some(v) = &def.default {
                    out.push('=');
                    out.push_str(v);
                }
            }
            out
        }
        Instruction::Env(e) => pairs("ENV", e.vars.iter().map(|kv| (&kv.key, &kv.value))),
        Instruction::Label(l) => pairs("LABEL", l.labels.iter().map(|kv| (&kv.key, &kv.value))),
        Instruction::User(u) => format!("USER {}", u.user),
        Instruction::Expose(e) => format!("EXPOSE {}", e.ports.join(" ")),
        Instruction::Volume(v) => format!("VOLUME {}", v.volumes.join(" ")),
        Instruction::StopSignal(s) => format!("STOPSIGNAL {}", s.signal),
        _ => uppercase_keyword(original),
    }
}

/// Whether the lexer leaves `text` as it is: no `$`, no escape character and
/// (when quotes are removed) no quote.
fn plain(text: &str, escape: char, quotes_removed: bool) -> bool {
    let special = text.contains(['$', escape]);
    let quoted = quotes_removed && text.contains(['\'', '"']);
    !special && !quoted
}

/// `KEYWORD k=v k2=v2`: how ENV and LABEL read in progress and history.
pub(crate) fn pairs<'a>(
    keyword: &str,
    kvs: impl Iterator<Item = (&'a String, &'a String)>,
) -> String {
    let mut out = keyword.to_string();
    for (k, v) in kvs {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn is_single_heredoc(cmd: &str) -> bool {
    let cmd = cmd.trim();
    cmd.starts_with("<<") && !cmd.contains(char::is_whitespace)
}

fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or("");
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first.to_string()
    }
}

fn uppercase_keyword(text: &str) -> String {
    // One allocation: `str::to_uppercase` is `char::to_uppercase` per char.
    let (kw, rest) = match text.split_once(' ') {
        Some((kw, rest)) => (kw, Some(rest)),
        None => (text, None),
    };
    let mut out = String::with_capacity(text.len());
    out.extend(kw.chars().flat_map(char::to_uppercase));
    if let Some(rest) = rest {
        out.push(' ');
        out.push_str(rest);
    }
    out
}

impl BuildPlan {
    /// The human dry-run: for every target platform, the stage instances in
    /// run order — name, the platform it runs on, its base — then each step
    /// expanded. Markers: `=` a step shared with other target platforms
    /// (built once), `+` a step an ONBUILD trigger added; `<-` lists what a
    /// step reads besides its parent.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for target in &self.targets {
            let _ = writeln!(
                out,
                "{}: target {}",
                target.platform,
                stage_label(self, target.final_stage.0)
            );
            for &sid in &target.stages {
                let stage = self.stage(sid);
                let base = match &stage.base {
                    StageBase::Scratch => "scratch".to_string(),
                    StageBase::Image {
                        reference,
                        platform,
                    } => format!("image {reference} ({platform})"),
                    StageBase::Stage(b) => format!("stage {}", stage_label(self, b.0)),
                };
                let _ = writeln!(
                    out,
                    "  stage {} on {} from {base}",
                    stage_label(self, sid.0),
                    stage.platform
                );
                for &step_id in &stage.steps {
                    let step = self.step(step_id);
                    let marker = match (step.shared, step.onbuild) {
                        (true, _) => '=',
                        (false, true) => '+',
                        (false, false) => ' ',
                    };
                    let _ = write!(out, "    {marker} {}", step.display);
                    let reads: Vec<String> = step
                        .sources
                        .iter()
                        .map(|s| match s {
                            Source::Stage(id) => format!("stage {}", stage_label(self, id.0)),
                            Source::Scratch => "scratch".to_string(),
                            Source::Image {
                                reference,
                                platform,
                            } => format!("image {reference} ({platform})"),
                            Source::Context(name) => format!("build context {name}"),
                        })
                        .collect();
                    if !reads.is_empty() {
                        let _ = write!(out, "  <- {}", reads.join(", "));
                    }
                    out.push('\n');
                }
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

fn stage_label(plan: &BuildPlan, id: usize) -> String {
    let s = &plan.stages[id];
    match &s.name {
        Some(n) => n.clone(),
        None => format!("stage-{}", s.index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_is_uppercased() {
        assert_eq!(uppercase_keyword("copy a b"), "COPY a b");
        assert_eq!(uppercase_keyword("run"), "RUN");
    }

    #[test]
    fn heredoc_summary() {
        assert_eq!(summarize_heredoc("echo hi\n"), "echo hi");
        assert_eq!(summarize_heredoc("\n  set -e\necho hi\n"), "set -e...");
        assert!(is_single_heredoc("<<EOF"));
        assert!(!is_single_heredoc("cat <<EOF"));
    }
}

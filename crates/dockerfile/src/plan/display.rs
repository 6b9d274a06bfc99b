//! Texts for people: the progress name of a step and the dry-run rendering.

use std::fmt::Write;

use kbuild_shell::{Env, Lexer};

use super::model::{BuildPlan, Source, StageBase};
use crate::instructions::{Command, Instruction};

/// The name BuildKit gives a step in progress output (without the
/// `[stage n/m]` prefix): for RUN the source text with set variables
/// expanded and quotes kept; for COPY, ADD and WORKDIR the source text
/// expanded like a word; for the others the source text. The keyword is
/// uppercased.
pub(crate) fn display<E: Env + ?Sized>(ins: &Instruction, lexer: &Lexer, env: &E) -> String {
    let original = ins.original();
    match ins {
        Instruction::Run(run) => {
            let mut text = original.to_string();
            if let (Command::Shell(cmd), Some(first)) = (&run.command, run.heredocs.first()) {
                // A RUN that is a single here-document shows its first line.
                if is_single_heredoc(cmd) {
                    text.push_str(&format!(" ({})", summarize_heredoc(&first.content)));
                }
            }
            let raw = lexer.with_raw_quotes(true).with_skip_unset_env(true);
            uppercase_keyword(&raw.process_word(&text, env).unwrap_or(text))
        }
        Instruction::Copy(_) | Instruction::Add(_) | Instruction::Workdir(_) => uppercase_keyword(
            &lexer
                .process_word(original, env)
                .unwrap_or_else(|_| original.to_string()),
        ),
        _ => uppercase_keyword(original),
    }
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
    match text.split_once(' ') {
        Some((kw, rest)) => format!("{} {rest}", kw.to_uppercase()),
        None => text.to_uppercase(),
    }
}

impl BuildPlan {
    /// The human dry-run: for every target platform, the stages in run order
    /// with their base and platform, then each step expanded. A step marked
    /// `=` is shared with other target platforms (built once); `+` marks the
    /// steps that ONBUILD triggers added.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for target in &self.targets {
            let final_name = stage_label(self, target.final_stage.0);
            let _ = writeln!(out, "{} (target stage {final_name}):", target.platform);
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
                let shared = if stage.target_platforms.len() > 1 {
                    format!(", shared by {} platforms", stage.target_platforms.len())
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "  stage {} [{}] from {base}{shared}",
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
                    let mut line = format!("   {marker} {}", step.display);
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
                        })
                        .collect();
                    if !reads.is_empty() {
                        let _ = write!(line, "    <- {}", reads.join(", "));
                    }
                    if step.shared {
                        let _ = write!(line, "    [shared by {} platforms]", step.platforms.len());
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        if !self.warnings.is_empty() {
            out.push_str("warnings:\n");
            for w in &self.warnings {
                let _ = writeln!(out, "  {w}");
            }
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

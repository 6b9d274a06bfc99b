//! Word expansion of one instruction, exactly where BuildKit applies it.

use kbuild_shell::{Env, Lexer};

use crate::instructions::{Expander, Instruction, SourceContent};

/// The stage's lexer and build environment as an [`Expander`].
struct StageExpander<'a, E: ?Sized> {
    lexer: &'a Lexer,
    env: &'a E,
}

impl<E: Env + ?Sized> Expander for StageExpander<'_, E> {
    type Error = kbuild_shell::Error;

    fn word(&mut self, word: &str) -> Result<String, Self::Error> {
        self.lexer.process_word(word, self.env)
    }

    fn words(&mut self, word: &str) -> Result<Vec<String>, Self::Error> {
        self.lexer.process_words(word, self.env)
    }
}

/// Expands the words of `ins` that BuildKit expands at dispatch, with `env`
/// (the stage's build environment before the instruction): the fields
/// [`Instruction::expand`] names, plus the body of an expanding COPY/ADD
/// heredoc source (`<<EOF`, not `<<'EOF'`), which BuildKit expands with
/// quotes left alone and `\` as escape. ARG and FROM are not handled here:
/// the planner expands them with their own environments.
pub(crate) fn expand_instruction<E: Env + ?Sized>(
    ins: &Instruction,
    lexer: &Lexer,
    env: &E,
) -> Result<Instruction, kbuild_shell::Error> {
    let mut out = ins.clone();
    out.expand(&mut StageExpander { lexer, env })?;
    let contents = match &mut out {
        Instruction::Copy(c) => &mut c.contents,
        Instruction::Add(a) => &mut a.contents,
        _ => return Ok(out),
    };
    let raw = Lexer::new('\\').with_skip_process_quotes(true);
    for SourceContent { data, expand, .. } in contents.iter_mut() {
        if *expand {
            *data = raw.process_word(data, env)?;
        }
    }
    Ok(out)
}

//! One test per parser/instruction rule that the golden folders cannot
//! express well (limits, file names, APIs used by the planner).

use kbuild_dockerfile::instructions::{
    from_ast, stages, Command, Expander, HealthTest, Instruction, Mount, Sharing,
};
use kbuild_dockerfile::parser::{parse, parse_named, ErrorKind, NodeArgs};

fn only(text: &str) -> Instruction {
    let ast = parse(text).unwrap_or_else(|e| panic!("{e}"));
    let mut all = from_ast(&ast).unwrap_or_else(|e| panic!("{e}"));
    all.pop()
        .unwrap_or_else(|| panic!("no instruction in {text:?}"))
}

#[test]
fn lines_up_to_64k_are_accepted_and_longer_rejected() {
    // 65535 bytes plus the newline fill Go's scanner buffer exactly.
    let ok_line = format!("RUN {}", "x".repeat(65535 - 4));
    assert_eq!(ok_line.len(), 65535);
    parse(&format!("FROM a\n{ok_line}\n")).unwrap();
    let long = format!("FROM a\nRUN {}\n", "x".repeat(65536));
    let err = parse(&long).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: dockerfile line greater than max allowed size of 65535"
    );
    assert_eq!(err.kind, ErrorKind::Syntax);
    // A last line without a newline may not fill the buffer either.
    let tail = format!("FROM a\nRUN {}", "x".repeat(65536 - 4));
    assert!(parse(&tail).is_err());
}

#[test]
fn parser_keeps_unknown_instructions_for_conversion_to_reject() {
    let ast = parse_named("FROM a\nCOPPY x y\n", "build/Containerfile").unwrap();
    assert_eq!(ast.nodes[1].keyword, "COPPY");
    assert_eq!(ast.nodes[1].args, NodeArgs::Empty);
}

#[test]
fn conversion_errors_carry_file_line_and_kind() {
    let ast = parse_named("FROM a\n\nCOPPY x y\n", "ctx/Dockerfile.dev").unwrap();
    assert_eq!(ast.file, "ctx/Dockerfile.dev");
    let err = from_ast(&ast).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ctx/Dockerfile.dev:3: unknown instruction: COPPY (did you mean COPY?)"
    );
    assert_eq!(err.line(), Some(3));
    assert_eq!(err.kind, ErrorKind::UnknownInstruction);
    assert_eq!(err.source_text.as_deref(), Some("COPPY x y"));
    let err = parse_named("# escape=x\nFROM a\n", "df").unwrap_err();
    assert_eq!(
        err.to_string(),
        "df:1: invalid escape token 'x' does not match ` or \\"
    );
    assert_eq!(err.source_text.as_deref(), Some("# escape=x"));
}

#[test]
fn directives_are_exposed() {
    let ast = parse("# Syntax=docker/dockerfile:1.7\n# check=skip=all\nFROM a\n").unwrap();
    assert_eq!(ast.directive("syntax"), Some("docker/dockerfile:1.7"));
    assert_eq!(ast.directive("CHECK"), Some("skip=all"));
    assert_eq!(ast.directive("escape"), None);
    assert_eq!(ast.escape, '\\');
}

#[test]
fn escape_directive_changes_continuation_and_words() {
    let ast = parse("# escape=`\nFROM a\nENV P=\"C:\\dir` \n x\"\n").unwrap();
    assert_eq!(ast.escape, '`');
    match &ast.nodes[1].args {
        NodeArgs::KeyValues { pairs, .. } => {
            assert_eq!(pairs, &vec![("P".to_string(), "\"C:\\dir x\"".to_string())])
        }
        other => panic!("unexpected {other:?}"),
    }
    // With the backtick escape a backslash no longer continues a line.
    let ast = parse("# escape=`\nFROM a\nRUN echo \\\nCMD x\n").unwrap();
    assert_eq!(ast.nodes.len(), 3);
}

#[test]
fn heredoc_bodies_are_verbatim_in_the_ast_and_chomped_in_instructions() {
    let text = "FROM a\nRUN <<-EOF\r\n\tline one\r\n\t\t  two\r\n\tEOF\r\nCMD x\n";
    let ast = parse(text).unwrap();
    assert_eq!(
        ast.nodes[1].heredocs[0].content,
        "\tline one\r\n\t\t  two\r\n"
    );
    assert_eq!(ast.nodes[1].range.start_line, 2);
    assert_eq!(ast.nodes[1].range.end_line, 5);
    assert_eq!(ast.nodes[2].range.start_line, 6);
    let Instruction::Run(run) = &from_ast(&ast).unwrap()[1] else {
        panic!("not RUN")
    };
    assert_eq!(run.heredocs[0].content, "line one\r\n  two\r\n");
    assert!(run.heredocs[0].chomp);
}

#[test]
fn heredoc_terminator_must_match_exactly() {
    let ast = parse("FROM a\nRUN <<EOF\n EOF\nEOF \nEOF\n").unwrap();
    assert_eq!(ast.nodes[1].heredocs[0].content, " EOF\nEOF \n");
}

#[test]
fn heredocs_use_backslash_even_with_backtick_escape() {
    let ast = parse("# escape=`\nFROM a\nRUN <<EOF\nx\nEOF\n").unwrap();
    assert_eq!(ast.nodes[1].heredocs.len(), 1);
}

#[test]
fn typed_mounts_from_run() {
    let Instruction::Run(run) =
        only("FROM a\nRUN --mount=type=cache,target=$D,sharing=private go build\n")
    else {
        panic!("not RUN")
    };
    let mounts = run
        .parse_mounts(|w| Ok::<_, String>(w.replace("$D", "/root/.cache")))
        .unwrap()
        .unwrap();
    match &mounts[0] {
        Mount::Cache(c) => {
            assert_eq!(c.target, "/root/.cache");
            assert_eq!(c.sharing, Sharing::Private);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Mount values are only interpreted at dispatch, as in BuildKit: a bad
    // option parses here and fails when the planner asks for typed mounts.
    let Instruction::Run(run) = only("FROM a\nRUN --mount=type=cache,target=/x,uid=abc true\n")
    else {
        panic!("not RUN")
    };
    let err = run
        .parse_mounts(|w| Ok::<_, String>(w.to_string()))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid value abc for uid");
}

struct Vars;

impl Expander for Vars {
    type Error = String;
    fn word(&mut self, word: &str) -> Result<String, String> {
        if word.contains("$BAD") {
            return Err(format!("bad word {word}"));
        }
        Ok(word.replace("$V", "v1").replace('"', ""))
    }
    fn words(&mut self, word: &str) -> Result<Vec<String>, String> {
        Ok(self
            .word(&word.replace("$PORTS", "80 443"))?
            .split(' ')
            .map(String::from)
            .collect())
    }
}

#[test]
fn expand_touches_exactly_the_fields_buildkit_expands() {
    let mut copy = only("FROM a\nCOPY --from=$V --chown=$V --chmod=$V --exclude=$V $V \"/d$V\"\n");
    copy.expand(&mut Vars).unwrap();
    let Instruction::Copy(c) = copy else {
        panic!("not COPY")
    };
    assert_eq!(c.from.as_deref(), Some("$V"));
    assert_eq!(c.chown.as_deref(), Some("v1"));
    assert_eq!(c.chmod.as_deref(), Some("v1"));
    assert_eq!(c.excludes, vec!["$V"]);
    assert_eq!(c.sources, vec!["v1"]);
    assert_eq!(c.dest, "/dv1");

    let mut run = only("FROM a\nRUN echo $V\n");
    let before = run.clone();
    run.expand(&mut Vars).unwrap();
    assert_eq!(run, before);

    let mut expose = only("FROM a\nEXPOSE $PORTS 22\n");
    expose.expand(&mut Vars).unwrap();
    let Instruction::Expose(e) = expose else {
        panic!("not EXPOSE")
    };
    assert_eq!(e.ports, vec!["80", "443", "22"]);

    let mut env = only("FROM a\nENV $V=\"$V x\"\n");
    env.expand(&mut Vars).unwrap();
    let Instruction::Env(e) = env else {
        panic!("not ENV")
    };
    assert_eq!(
        (e.vars[0].key.as_str(), e.vars[0].value.as_str()),
        ("v1", "v1 x")
    );

    let mut arg = only("FROM a\nARG $V=$V\n");
    arg.expand(&mut Vars).unwrap();
    let Instruction::Arg(a) = arg else {
        panic!("not ARG")
    };
    assert_eq!(
        (a.args[0].name.as_str(), a.args[0].default.as_deref()),
        ("$V", Some("v1"))
    );

    let mut bad = only("FROM a\nWORKDIR /$BAD\n");
    assert_eq!(bad.expand(&mut Vars).unwrap_err(), "bad word /$BAD");
}

#[test]
fn onbuild_trigger_parses_later() {
    let Instruction::Onbuild(ob) = only("FROM a\nONBUILD COPY --chown=1 . /src\n") else {
        panic!("not ONBUILD")
    };
    let Instruction::Copy(c) = ob.parse_trigger().unwrap() else {
        panic!("trigger is not COPY")
    };
    assert_eq!(c.chown.as_deref(), Some("1"));
    // An invalid trigger is accepted when defined and fails when run.
    let Instruction::Onbuild(ob) = only("FROM a\nONBUILD COPPY x y\n") else {
        panic!("not ONBUILD")
    };
    assert_eq!(ob.trigger, "COPPY");
    assert_eq!(
        ob.parse_trigger().unwrap_err().to_string(),
        "ONBUILD:1: unknown instruction: COPPY (did you mean COPY?)"
    );
}

#[test]
fn stages_group_meta_args_and_commands() {
    let ast = parse("ARG A\nARG B=1\nFROM x AS One\nRUN a\nARG C\nFROM one\nCMD b\n").unwrap();
    let s = stages(&ast).unwrap();
    assert_eq!(s.meta_args.len(), 2);
    assert_eq!(s.stages.len(), 2);
    assert_eq!(s.stages[0].name(), Some("one"));
    assert_eq!(s.stages[0].commands.len(), 2);
    assert_eq!(s.stages[1].index, 1);
    assert_eq!(s.by_name("ONE").map(|st| st.index), Some(0));
    assert!(s.by_name("two").is_none());
}

#[test]
fn instruction_accessors() {
    let i = only("FROM a\n  run   echo hi  \\\n  there\n");
    assert_eq!(i.keyword(), "RUN");
    assert_eq!(i.original(), "run   echo hi    there");
    assert_eq!((i.range().start_line, i.range().end_line), (2, 3));
    let Instruction::Run(r) = i else {
        panic!("not RUN")
    };
    assert_eq!(r.command, Command::Shell("echo hi    there".into()));
}

#[test]
fn healthcheck_flags_are_validated_only_for_cmd() {
    // BuildKit ignores flags on HEALTHCHECK NONE.
    let Instruction::Healthcheck(h) = only("FROM a\nHEALTHCHECK --bogus NONE\n") else {
        panic!()
    };
    assert_eq!(h.test, HealthTest::None);
    let err = from_ast(&parse("FROM a\nHEALTHCHECK --bogus CMD x\n").unwrap()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Flag);
    let err = from_ast(&parse("FROM a\nHEALTHCHECK --retries=x CMD x\n").unwrap()).unwrap_err();
    assert_eq!(
        err.message,
        "strconv.ParseInt: parsing \"x\": invalid syntax"
    );
    let err = from_ast(&parse("FROM a\nHEALTHCHECK --timeout=5 CMD x\n").unwrap()).unwrap_err();
    assert_eq!(err.message, "time: missing unit in duration \"5\"");
}

#[test]
fn stopsignal_and_arg_ignore_flags_like_buildkit() {
    assert!(
        matches!(only("FROM a\nSTOPSIGNAL --x SIGKILL\n"), Instruction::StopSignal(s) if s.signal == "SIGKILL")
    );
    assert!(matches!(only("FROM a\nARG --x A\n"), Instruction::Arg(a) if a.args[0].name == "A"));
}

#[test]
fn empty_continuation_lines_warn_once_per_instruction() {
    let ast = parse("FROM a\nRUN a \\\n\n  \\\n\n  b\nRUN c\n").unwrap();
    assert_eq!(ast.warnings.len(), 1);
    assert_eq!(ast.warnings[0].rule, "NoEmptyContinuation");
    assert_eq!(ast.warnings[0].range.start_line, 6);
}

#[test]
fn error_display_is_one_line() {
    let err = parse("FROM a\nRUN <<EOF\nno end\n").unwrap_err();
    assert!(!err.to_string().contains('\n'));
    assert_eq!(err.range.map(|r| (r.start_line, r.end_line)), Some((2, 3)));
}

#[test]
fn ast_and_stages_round_trip_through_json() {
    let text = "# escape=`\nARG A=1\nFROM --platform=$P img AS s\nRUN --mount=type=cache,target=/c <<EOF\nx\nEOF\n\
                COPY --chmod=644 <<'F' /f\ny\nF\nHEALTHCHECK --interval=5s CMD [\"true\"]\nONBUILD RUN z\nEXPOSE 80\n";
    let ast = parse(text).unwrap();
    let back: kbuild_dockerfile::Ast =
        serde_json::from_str(&serde_json::to_string(&ast).unwrap()).unwrap();
    assert_eq!(back, ast);
    let grouped = stages(&ast).unwrap();
    let json = serde_json::to_string(&grouped).unwrap();
    let back: kbuild_dockerfile::instructions::Stages = serde_json::from_str(&json).unwrap();
    assert_eq!(back, grouped);
}

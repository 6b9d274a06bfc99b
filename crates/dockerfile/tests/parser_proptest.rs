//! Property tests: no input makes the parser, the instruction conversion,
//! stage grouping, mount parsing or trigger parsing panic.

use kbuild_dockerfile::instructions::{from_ast, stages, Instruction, Mount};
use kbuild_dockerfile::parser::parse;
use proptest::prelude::*;

/// Dockerfile-ish fragments: keywords, flags, quotes, escapes, JSON,
/// heredoc markers, directives, continuations and odd whitespace.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM".to_string()),
        Just("from".to_string()),
        Just("RUN".to_string()),
        Just("COPY".to_string()),
        Just("ADD".to_string()),
        Just("ENV".to_string()),
        Just("LABEL".to_string()),
        Just("ARG".to_string()),
        Just("ONBUILD".to_string()),
        Just("HEALTHCHECK".to_string()),
        Just("CMD".to_string()),
        Just("SHELL".to_string()),
        Just("VOLUME".to_string()),
        Just("EXPOSE".to_string()),
        Just("NONE".to_string()),
        Just("AS".to_string()),
        Just("--mount=type=cache,target=/x".to_string()),
        Just("--mount=\"".to_string()),
        Just("--from=".to_string()),
        Just("--link".to_string()),
        Just("--interval=1ms".to_string()),
        Just("--retries=x".to_string()),
        Just("--".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-EOF".to_string()),
        Just("<<'EOF'".to_string()),
        Just("3<<E".to_string()),
        Just("EOF".to_string()),
        Just("\tEOF".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[1]".to_string()),
        Just("[".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("=".to_string()),
        Just("a=b".to_string()),
        Just("$X".to_string()),
        Just("${X:-y}".to_string()),
        Just("# escape=`".to_string()),
        Just("# syntax=x".to_string()),
        Just("#".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\u{feff}".to_string()),
        Just("\u{a0}".to_string()),
        Just("é".to_string()),
        "[a-z/.:_-]{1,8}",
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 0..40).prop_map(|t| t.join(" "))
}

fn soup_lines() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(token(), 0..8), 0..12).prop_map(|lines| {
        lines
            .iter()
            .map(|l| l.concat())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn exercise(text: &str) {
    if let Ok(ast) = parse(text) {
        let _ = stages(&ast);
        if let Ok(instructions) = from_ast(&ast) {
            for i in instructions {
                match &i {
                    Instruction::Run(run) => {
                        let _ = run.parse_mounts(|w| Ok::<_, String>(w.to_string()));
                    }
                    Instruction::Onbuild(ob) => {
                        let _ = ob.parse_trigger();
                    }
                    _ => {}
                }
                let _ = i.range();
                let _ = i.to_owned().original().len();
            }
        }
        let _ = serde_json::to_string(&ast);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn token_soup_never_panics(text in soup()) {
        exercise(&text);
    }

    #[test]
    fn token_lines_never_panic(text in soup_lines()) {
        exercise(&text);
        exercise(&format!("FROM x\n{text}"));
        exercise(&format!("FROM x\nRUN {text}"));
    }

    #[test]
    fn mount_values_never_panic(value in "[a-z=,\"$ /0-9]{0,40}") {
        let _ = Mount::parse(&value, |w| Ok::<_, String>(w.to_string()));
    }

    #[test]
    fn parse_is_deterministic(text in soup_lines()) {
        prop_assert_eq!(parse(&text), parse(&text));
    }
}

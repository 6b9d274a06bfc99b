//! Feeds arbitrary bytes (as UTF-8, lossily) through the parser, the typed
//! conversion, stage grouping, mount parsing and ONBUILD trigger parsing;
//! any panic is a bug.
#![no_main]

use kbuild_dockerfile::instructions::{from_ast, stages, Instruction};
use kbuild_dockerfile::parser::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(ast) = parse(&text) else { return };
    let _ = stages(&ast);
    let Ok(instructions) = from_ast(&ast) else {
        return;
    };
    for instruction in &instructions {
        match instruction {
            Instruction::Run(run) => {
                let _ = run.parse_mounts(|w| Ok::<_, String>(w.to_string()));
            }
            Instruction::Onbuild(onbuild) => {
                let _ = onbuild.parse_trigger();
            }
            _ => {}
        }
    }
});

//! Feeds arbitrary bytes (as UTF-8, lossily) through the parser, the typed
//! conversion, stage grouping, mount parsing, ONBUILD trigger parsing and
//! the planner (word expansion with its size limits); any panic, and any
//! run past libFuzzer's `-rss_limit_mb`, is a bug.
#![no_main]

use kbuild_dockerfile::instructions::{from_ast, stages, Instruction};
use kbuild_dockerfile::parser::parse;
use kbuild_dockerfile::plan::{plan, NoImageConfigs, PlanOptions};
use kbuild_platform::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(platform) = Platform::parse("linux/amd64") {
        let opts = PlanOptions {
            platforms: vec![platform.clone()],
            build_platform: platform,
            build_args: Default::default(),
            target: None,
            labels: Default::default(),
            named_contexts: Default::default(),
        };
        let _ = plan(&text, &opts, &NoImageConfigs);
    }
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

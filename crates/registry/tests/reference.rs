//! Reference parsing against the case table in `tests/cases/references.tsv`.

use kbuild_registry::{Error, Reference};

#[test]
fn reference_case_table() {
    let table = include_str!("cases/references.tsv");
    let mut checked = 0;
    for (n, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() && !line.contains('\t') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let (input, expected) = (cols[0], cols[1]);
        let at = format!("line {}: {input:?}", n + 1);
        match expected.strip_prefix("ERR ") {
            Some(substring) => {
                let err = Reference::parse(input).expect_err(&at);
                assert!(matches!(err, Error::InvalidReference { .. }), "{at}: {err}");
                let text = err.to_string();
                assert!(
                    text.contains(substring),
                    "{at}: {text:?} lacks {substring:?}"
                );
                assert!(
                    text.contains(&format!("{input:?}")),
                    "{at}: {text:?} does not name the input"
                );
            }
            None => {
                let r = Reference::parse(input).unwrap_or_else(|e| panic!("{at}: {e}"));
                let opt = |s: &str| (s != "-").then(|| s.to_string());
                assert_eq!(r.to_string(), expected, "{at}");
                assert_eq!(r.registry(), cols[2], "{at}");
                assert_eq!(r.repository(), cols[3], "{at}");
                assert_eq!(r.tag().map(str::to_string), opt(cols[4]), "{at}");
                assert_eq!(r.digest().map(|d| d.to_string()), opt(cols[5]), "{at}");
                // Display output parses back to the same reference.
                assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{at}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} cases ran");
}

#[test]
fn docker_hub_uses_its_api_endpoint_and_others_their_own_host() {
    assert_ne!(Reference::parse("alpine").unwrap().api_host(), "docker.io");
    assert_eq!(
        Reference::parse("127.0.0.1:5000/x").unwrap().api_host(),
        "127.0.0.1:5000"
    );
}

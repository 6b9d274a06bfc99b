//! Builder flags (`--name=value`, `--bool`, repeatable `--name=v`), checked
//! against what each instruction accepts, as BuildKit's BFlags does.

use std::collections::HashMap;

use crate::parser::suggest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    String,
    Strings,
}

/// The flags an instruction accepts and the values given.
pub(crate) struct Flags<'a> {
    /// The keyword as written (uppercased only for an error message).
    keyword: &'a str,
    defs: &'a [(&'static str, Kind)],
    strings: HashMap<&'static str, String>,
    bools: HashMap<&'static str, bool>,
    lists: HashMap<&'static str, Vec<String>>,
}

impl<'a> Flags<'a> {
    pub(crate) fn new(keyword: &'a str, defs: &'a [(&'static str, Kind)]) -> Flags<'a> {
        Flags {
            keyword,
            defs,
            strings: HashMap::new(),
            bools: HashMap::new(),
            lists: HashMap::new(),
        }
    }

    /// Reads `args` (each `--name` or `--name=value`); the error is the
    /// message to report.
    pub(crate) fn parse(mut self, args: &[String]) -> Result<Flags<'a>, String> {
        let mut used: Vec<&'static str> = Vec::new();
        for arg in args {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {arg}"));
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(def, kind)) = self.defs.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = self.defs.iter().map(|(n, _)| *n).collect();
                let msg = format!(
                    "unknown flag: --{name} for {}",
                    self.keyword.to_ascii_uppercase()
                );
                return Err(match suggest::suggest(name, &names, true) {
                    Some(s) => format!("{msg} (did you mean --{s}?)"),
                    None => msg,
                });
            };
            if used.contains(&def) && kind != Kind::Strings {
                return Err(format!("duplicate flag specified: --{name}"));
            }
            used.push(def);
            match kind {
                Kind::Bool => {
                    let value = match value {
                        None => "true".to_string(),
                        Some("") => return Err(format!("missing a value on flag: --{name}")),
                        Some(v) => v.to_ascii_lowercase(),
                    };
                    let b = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(format!(
                                "expecting boolean value for flag --{name}, not: {}",
                                arg.split_once('=').map(|(_, v)| v).unwrap_or("")
                            ))
                        }
                    };
                    self.bools.insert(def, b);
                }
                Kind::String => match value {
                    None => return Err(format!("missing a value on flag: --{name}")),
                    Some(v) => {
                        self.strings.insert(def, v.to_string());
                    }
                },
                Kind::Strings => match value {
                    None => return Err(format!("missing a value on flag: --{name}")),
                    Some(v) => self.lists.entry(def).or_default().push(v.to_string()),
                },
            }
        }
        Ok(self)
    }

    /// A string flag's value when given.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.strings.get(name).cloned()
    }

    /// A bool flag's value when given.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    /// A repeatable flag's values in order.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.lists.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPY: [(&str, Kind); 3] = [
        ("from", Kind::String),
        ("link", Kind::Bool),
        ("exclude", Kind::Strings),
    ];

    fn parse(args: &[&str]) -> Result<Flags<'static>, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Flags::new("copy", &COPY).parse(&args)
    }

    #[test]
    fn values() {
        let f = parse(&["--from=a", "--link", "--exclude=x", "--exclude=y"]).unwrap();
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert_eq!(f.bool("link"), Some(true));
        assert_eq!(f.list("exclude"), vec!["x", "y"]);
        assert_eq!(parse(&["--link=FALSE"]).unwrap().bool("link"), Some(false));
        assert_eq!(
            parse(&["--from="]).unwrap().string("from").as_deref(),
            Some("")
        );
        assert_eq!(parse(&[]).unwrap().bool("link"), None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&["--squash"]).err().unwrap(),
            "unknown flag: --squash for COPY"
        );
        assert_eq!(
            parse(&["--foo"]).err().unwrap(),
            "unknown flag: --foo for COPY (did you mean --from?)"
        );
        assert_eq!(
            parse(&["--form=x"]).err().unwrap(),
            "unknown flag: --form for COPY (did you mean --from?)"
        );
        assert_eq!(
            parse(&["--from=a", "--from=b"]).err().unwrap(),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            parse(&["--from"]).err().unwrap(),
            "missing a value on flag: --from"
        );
        assert_eq!(
            parse(&["--link="]).err().unwrap(),
            "missing a value on flag: --link"
        );
        assert_eq!(
            parse(&["--link=yes"]).err().unwrap(),
            "expecting boolean value for flag --link, not: yes"
        );
        assert_eq!(
            parse(&["--exclude"]).err().unwrap(),
            "missing a value on flag: --exclude"
        );
    }
}

//! AST nodes to typed instructions (BuildKit's `instructions.ParseInstruction`).

use super::duration::parse_interval;
use super::flags::{Flags, Kind};
use super::*;
use crate::parser::{
    chomp_content, go_quote, parse_heredoc, Ast, Error, ErrorKind, Node, NodeArgs,
};

/// Every instruction keyword, for "did you mean" suggestions.
const KEYWORDS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Converts every node of `ast` in order; the first error stops.
pub fn from_ast(ast: &Ast) -> Result<Vec<Instruction>, Error> {
    ast.nodes
        .iter()
        .map(|n| from_node(n).map_err(|e| e.in_file(&ast.file)))
        .collect()
}

/// Converts one node. Errors name the file `Dockerfile`; [`from_ast`] uses
/// the AST's file name.
pub fn from_node(node: &Node) -> Result<Instruction, Error> {
    let fail = |kind: ErrorKind, msg: String| {
        Error::new(kind, Some(node.range), msg).with_source(&node.original)
    };
    Conv { node }.convert().map_err(|(k, m)| fail(k, m))
}

type R<T> = Result<T, (ErrorKind, String)>;

fn arg_err<T>(msg: impl Into<String>) -> R<T> {
    Err((ErrorKind::Argument, msg.into()))
}

/// BuildKit's `nodeArgs`: the node's arguments as a flat word list.
fn flat_args(args: &NodeArgs, out: &mut Vec<String>) {
    match args {
        NodeArgs::Empty => {}
        NodeArgs::Text(t) => out.push(t.clone()),
        NodeArgs::Words(w) => out.extend(w.iter().cloned()),
        NodeArgs::KeyValues { pairs, legacy } => {
            for (k, v) in pairs {
                out.push(k.clone());
                out.push(v.clone());
                out.push(if *legacy {
                    String::new()
                } else {
                    "=".to_string()
                });
            }
        }
        NodeArgs::Healthcheck { test_type, command } => {
            out.push(test_type.clone());
            flat_args(command, out);
        }
        NodeArgs::Sub(child) => {
            out.push(child.keyword.clone());
            flat_args(&child.args, out);
        }
    }
}

/// BuildKit's `handleJSONArgs`.
fn command_of(args: &[String], json: bool) -> Command {
    if json {
        Command::Exec(args.to_vec())
    } else {
        Command::Shell(args.join(" "))
    }
}

fn at_least_one(keyword: &str) -> String {
    format!("{keyword} requires at least one argument")
}

fn exactly_one(keyword: &str) -> String {
    format!("{keyword} requires exactly one argument")
}

struct Conv<'a> {
    node: &'a Node,
}

impl Conv<'_> {
    fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        flat_args(&self.node.args, &mut out);
        out
    }

    fn flags<'d>(&'d self, defs: &'d [(&'static str, Kind)]) -> R<Flags<'d>> {
        Flags::new(&self.node.keyword, defs)
            .parse(&self.node.flags)
            .map_err(|m| (ErrorKind::Flag, m))
    }

    fn range(&self) -> SourceRange {
        self.node.range
    }

    fn original(&self) -> String {
        self.node.original.trim().to_string()
    }

    fn convert(&self) -> R<Instruction> {
        let mut buf = [0u8; 16];
        let keyword = crate::parser::lowercase(&self.node.keyword, &mut buf);
        Ok(match &*keyword {
            "env" => {
                self.flags(&[])?;
                let (vars, legacy_form) = self.kvps("ENV")?;
                Instruction::Env(Env {
                    vars,
                    legacy_form,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "maintainer" => {
                let arg = self.one_arg("MAINTAINER")?;
                self.flags(&[])?;
                Instruction::Maintainer(Maintainer {
                    name: arg,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "label" => {
                self.flags(&[])?;
                let (labels, legacy_form) = self.kvps("LABEL")?;
                Instruction::Label(Label {
                    labels,
                    legacy_form,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "add" => self.add()?,
            "copy" => self.copy()?,
            "from" => self.from()?,
            "onbuild" => self.onbuild()?,
            "workdir" => {
                let arg = self.one_arg("WORKDIR")?;
                self.flags(&[])?;
                Instruction::Workdir(Workdir {
                    path: arg,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "run" => self.run()?,
            "cmd" => {
                self.flags(&[])?;
                Instruction::Cmd(Cmd {
                    command: command_of(&self.args(), self.node.json),
                    range: self.range(),
                    original: self.original(),
                })
            }
            "entrypoint" => {
                self.flags(&[])?;
                Instruction::Entrypoint(Entrypoint {
                    command: command_of(&self.args(), self.node.json),
                    range: self.range(),
                    original: self.original(),
                })
            }
            "healthcheck" => self.healthcheck()?,
            "expose" => self.expose()?,
            "user" => {
                let arg = self.one_arg("USER")?;
                self.flags(&[])?;
                Instruction::User(User {
                    user: arg,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "volume" => self.volume()?,
            "stopsignal" => {
                // BuildKit never checks STOPSIGNAL's flags.
                let arg = self.one_arg("STOPSIGNAL")?;
                Instruction::StopSignal(StopSignal {
                    signal: arg,
                    range: self.range(),
                    original: self.original(),
                })
            }
            "arg" => self.arg()?,
            "shell" => self.shell()?,
            _ => {
                let msg = format!("unknown instruction: {}", self.node.keyword);
                return Err((
                    ErrorKind::UnknownInstruction,
                    crate::parser::suggest::wrap(msg, &self.node.keyword, &KEYWORDS, false),
                ));
            }
        })
    }

    /// VOLUME: one or more paths, none empty.
    fn volume(&self) -> R<Instruction> {
        let args = self.args();
        if args.is_empty() {
            return arg_err(at_least_one("VOLUME"));
        }
        self.flags(&[])?;
        let mut volumes = Vec::with_capacity(args.len());
        for v in args {
            let v = v.trim();
            if v.is_empty() {
                return arg_err("VOLUME specified can not be an empty string");
            }
            volumes.push(v.to_string());
        }
        Ok(Instruction::Volume(Volume {
            volumes,
            json: self.node.json,
            range: self.range(),
            original: self.original(),
        }))
    }

    /// ARG: `name` or `name=default` definitions (flags are never checked, as in BuildKit).
    fn arg(&self) -> R<Instruction> {
        // BuildKit never checks ARG's flags.
        let words = self.args();
        if words.is_empty() {
            return arg_err(at_least_one("ARG"));
        }
        let mut args = Vec::with_capacity(words.len());
        for w in words {
            match w.split_once('=') {
                Some(("", _)) => return arg_err("ARG names can not be blank"),
                Some((k, v)) => args.push(ArgDef {
                    name: k.to_string(),
                    default: Some(v.to_string()),
                }),
                None => args.push(ArgDef {
                    name: w,
                    default: None,
                }),
            }
        }
        Ok(Instruction::Arg(Arg {
            args,
            range: self.range(),
            original: self.original(),
        }))
    }

    /// SHELL: a JSON array.
    fn shell(&self) -> R<Instruction> {
        self.flags(&[])?;
        let args = self.args();
        if args.is_empty() {
            return arg_err(at_least_one("SHELL"));
        }
        if !self.node.json {
            return arg_err(not_json("SHELL"));
        }
        Ok(Instruction::Shell(Shell {
            shell: args,
            range: self.range(),
            original: self.original(),
        }))
    }

    /// EXPOSE: one or more ports, sorted.
    fn expose(&self) -> R<Instruction> {
        let mut ports = self.args();
        if ports.is_empty() {
            return arg_err(at_least_one("EXPOSE"));
        }
        self.flags(&[])?;
        ports.sort();
        Ok(Instruction::Expose(Expose {
            ports,
            range: self.range(),
            original: self.original(),
        }))
    }

    /// The one argument of `keyword`.
    fn one_arg(&self, keyword: &str) -> R<String> {
        let mut args = self.args();
        match args.pop() {
            Some(arg) if args.is_empty() => Ok(arg),
            _ => arg_err(exactly_one(keyword)),
        }
    }

    fn kvps(&self, keyword: &str) -> R<(Vec<KeyValue>, bool)> {
        match &self.node.args {
            NodeArgs::KeyValues { pairs, legacy } => {
                let mut vars = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    if k.is_empty() {
                        return arg_err(format!("{keyword} names can not be blank"));
                    }
                    vars.push(KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    });
                }
                Ok((vars, *legacy))
            }
            _ => arg_err(at_least_one(keyword)),
        }
    }

    fn from(&self) -> R<Instruction> {
        let args = self.args();
        let name = match args.len() {
            3 if args[1].eq_ignore_ascii_case("as") => {
                let name = args[2].to_lowercase();
                if !valid_stage_name(&name) {
                    return arg_err(format!(
                        "invalid name for build stage: {}, name can't start with a number or contain symbols",
                        go_quote(&args[2])
                    ));
                }
                Some(name)
            }
            1 => None,
            _ => return arg_err("FROM requires either one or three arguments"),
        };
        let flags = self.flags(&[("platform", Kind::String)])?;
        Ok(Instruction::From(From {
            image: args[0].clone(),
            platform: flags.string("platform").filter(|p| !p.is_empty()),
            name,
            range: self.range(),
            original: self.original(),
        }))
    }

    fn onbuild(&self) -> R<Instruction> {
        let args = self.args();
        if args.is_empty() {
            return arg_err(at_least_one("ONBUILD"));
        }
        self.flags(&[])?;
        let trigger = args[0].trim().to_uppercase();
        match trigger.as_str() {
            "ONBUILD" => return arg_err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
            "MAINTAINER" | "FROM" => {
                return arg_err(format!("{trigger} isn't allowed as an ONBUILD trigger"))
            }
            _ => {}
        }
        let mut expression = strip_onbuild(&self.node.original).to_string();
        for doc in &self.node.heredocs {
            expression.push('\n');
            expression.push_str(&doc.content);
            expression.push_str(&doc.name);
        }
        Ok(Instruction::Onbuild(Onbuild {
            trigger,
            expression,
            range: self.range(),
            original: self.original(),
        }))
    }

    fn run(&self) -> R<Instruction> {
        let flags = self.flags(&[
            ("mount", Kind::Strings),
            ("network", Kind::String),
            ("security", Kind::String),
        ])?;
        let command = command_of(&self.args(), self.node.json);
        let heredocs = self.node.heredocs.iter().map(chomped).collect();
        let mounts = flags.list("mount");
        for m in &mounts {
            mount::precheck(m).map_err(|e| (ErrorKind::Argument, e.to_string()))?;
        }
        let network = match flags.string("network").as_deref().unwrap_or("default") {
            "default" => NetworkMode::Default,
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            other => return arg_err(format!("invalid network mode {}", go_quote(other))),
        };
        let security = match flags.string("security").as_deref().unwrap_or("sandbox") {
            "sandbox" => SecurityMode::Sandbox,
            "insecure" => SecurityMode::Insecure,
            other => return arg_err(format!("security {} is not valid", go_quote(other))),
        };
        Ok(Instruction::Run(Run {
            command,
            heredocs,
            mounts,
            network,
            security,
            range: self.range(),
            original: self.original(),
        }))
    }

    /// `SourcesAndDest`: splits paths from heredoc sources; rejects a heredoc
    /// destination.
    fn sources_and_dest(
        &self,
        keyword: &str,
        args: &[String],
    ) -> R<(Vec<String>, Vec<SourceContent>, String)> {
        let (dest, srcs) = match args.split_last() {
            Some((d, s)) => (d.clone(), s),
            None => return arg_err(no_destination(keyword)),
        };
        if matches!(parse_heredoc(&dest), Ok(Some(_))) {
            return arg_err(format!(
                "{keyword} cannot accept a heredoc as a destination"
            ));
        }
        let mut sources = Vec::new();
        let mut contents = Vec::new();
        for src in srcs {
            match parse_heredoc(src) {
                Ok(Some(h)) => {
                    let body = self
                        .node
                        .heredocs
                        .iter()
                        .rev()
                        .find(|d| d.name == h.name)
                        .map(|d| d.content.clone())
                        .unwrap_or_default();
                    let data = if h.chomp { chomp_content(&body) } else { body };
                    contents.push(SourceContent {
                        path: h.name,
                        data,
                        expand: h.expand,
                    });
                }
                _ => sources.push(src.clone()),
            }
        }
        Ok((sources, contents, dest))
    }

    fn copy(&self) -> R<Instruction> {
        let args = self.args();
        if args.len() < 2 {
            return arg_err(no_destination("COPY"));
        }
        let flags = self.flags(&[
            ("chown", Kind::String),
            ("from", Kind::String),
            ("chmod", Kind::String),
            ("link", Kind::Bool),
            ("parents", Kind::Bool),
            ("exclude", Kind::Strings),
        ])?;
        let (sources, contents, dest) = self.sources_and_dest("COPY", &args)?;
        Ok(Instruction::Copy(Copy {
            sources,
            contents,
            dest,
            from: flags.string("from").filter(|s| !s.is_empty()),
            chown: flags.string("chown").filter(|s| !s.is_empty()),
            chmod: flags.string("chmod").filter(|s| !s.is_empty()),
            link: flags.bool("link").unwrap_or(false),
            parents: flags.bool("parents").unwrap_or(false),
            excludes: flags.list("exclude"),
            json: self.node.json,
            range: self.range(),
            original: self.original(),
        }))
    }

    fn add(&self) -> R<Instruction> {
        let args = self.args();
        if args.len() < 2 {
            return arg_err(no_destination("ADD"));
        }
        let flags = self.flags(&[
            ("chown", Kind::String),
            ("chmod", Kind::String),
            ("link", Kind::Bool),
            ("keep-git-dir", Kind::Bool),
            ("checksum", Kind::String),
            ("exclude", Kind::Strings),
            ("unpack", Kind::Bool),
        ])?;
        let (sources, contents, dest) = self.sources_and_dest("ADD", &args)?;
        Ok(Instruction::Add(Add {
            sources,
            contents,
            dest,
            chown: flags.string("chown").filter(|s| !s.is_empty()),
            chmod: flags.string("chmod").filter(|s| !s.is_empty()),
            link: flags.bool("link").unwrap_or(false),
            checksum: flags.string("checksum").filter(|s| !s.is_empty()),
            keep_git_dir: flags.bool("keep-git-dir"),
            unpack: flags.bool("unpack"),
            excludes: flags.list("exclude"),
            json: self.node.json,
            range: self.range(),
            original: self.original(),
        }))
    }

    fn healthcheck(&self) -> R<Instruction> {
        let args = self.args();
        if args.is_empty() {
            return arg_err(at_least_one("HEALTHCHECK"));
        }
        let test_type = args[0].to_uppercase();
        let rest = &args[1..];
        let test = if test_type == "NONE" {
            // BuildKit does not look at flags for NONE.
            if !rest.is_empty() {
                return arg_err("HEALTHCHECK NONE takes no arguments");
            }
            HealthTest::None
        } else {
            let flags = self.flags(&[
                ("interval", Kind::String),
                ("timeout", Kind::String),
                ("start-period", Kind::String),
                ("start-interval", Kind::String),
                ("retries", Kind::String),
            ])?;
            if test_type != "CMD" {
                return arg_err(format!(
                    "Unknown type {} in HEALTHCHECK (try CMD)",
                    go_quote(&test_type)
                ));
            }
            if rest.is_empty() {
                return arg_err("Missing command after HEALTHCHECK CMD");
            }
            let command = command_of(rest, self.node.json);
            let interval = |name: &str| {
                parse_interval(name, flags.string(name).as_deref())
                    // BuildKit's message is what the Dockerfile error carries.
                    .map_err(|e| (ErrorKind::Flag, e.to_string()))
            };
            let retries = match flags.string("retries").filter(|r| !r.is_empty()) {
                None => 0,
                Some(r) => match parse_go_int32(&r)? {
                    n if n < 0 => {
                        return Err((
                            ErrorKind::Flag,
                            format!("--retries cannot be negative ({n})"),
                        ))
                    }
                    n => n as u32,
                },
            };
            HealthTest::Cmd {
                command,
                interval: interval("interval")?,
                timeout: interval("timeout")?,
                start_period: interval("start-period")?,
                start_interval: interval("start-interval")?,
                retries,
            }
        };
        Ok(Instruction::Healthcheck(Healthcheck {
            test,
            range: self.range(),
            original: self.original(),
        }))
    }
}

/// BuildKit's `errNotJSON` as built for Linux (the Windows build adds a
/// hint about unescaped backslashes).
fn not_json(keyword: &str) -> String {
    format!("{keyword} requires the arguments to be in JSON form")
}

fn no_destination(keyword: &str) -> String {
    format!("{keyword} requires at least two arguments, but only one was provided. Destination could not be determined")
}

/// Go's `strconv.ParseInt(s, 10, 32)` with its error text.
fn parse_go_int32(s: &str) -> R<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            ErrorKind::Flag,
            format!("strconv.ParseInt: parsing {}: invalid syntax", go_quote(s)),
        ));
    }
    match s.parse::<i32>() {
        Ok(n) => Ok(i64::from(n)),
        Err(_) => Err((
            ErrorKind::Flag,
            format!(
                "strconv.ParseInt: parsing {}: value out of range",
                go_quote(s)
            ),
        )),
    }
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// Removes `(?i)^\s*ONBUILD\s*` (Go `\s`: tab, newline, form feed, CR, space).
fn strip_onbuild(original: &str) -> &str {
    let is_ws = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let s = original.trim_start_matches(is_ws);
    match s.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("onbuild") => s[7..].trim_start_matches(is_ws),
        _ => original,
    }
}

fn chomped(doc: &Heredoc) -> Heredoc {
    let mut doc = doc.clone();
    if doc.chomp {
        doc.content = chomp_content(&doc.content);
    }
    doc
}

//! Dockerfile rules that need no image: EXPOSE ports, ADD source kinds,
//! `--checksum` values, RUN argv with heredocs, destination paths, and the
//! history text BuildKit writes (Go's `%q`/`%v` renderings included).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::instructions::{Command, HealthTest, Heredoc, SourceContent};

/// An EXPOSE word that is not `PORT[/PROTO]` or `START-END[/PROTO]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExposeError {
    /// The protocol is not tcp, udp or sctp.
    #[error("invalid protocol {0:?}; use tcp, udp or sctp")]
    Protocol(String),
    /// The port or range is not numbers in 0-65535 (start <= end).
    #[error("invalid port; use PORT[/PROTO] or START-END[/PROTO]")]
    Port,
}

/// An EXPOSE word as image config keys (`8000-8002/udp` is three keys,
/// `80` is `80/tcp`; the protocol is lowercased).
pub fn expose_keys(word: &str) -> Result<Vec<String>, ExposeError> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(ExposeError::Protocol(proto));
    }
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ExposeError::Port);
        }
        s.parse::<u16>().map_err(|_| ExposeError::Port)
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(ExposeError::Port);
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// What an ADD source names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddSourceKind {
    /// A path or pattern in the build context.
    Local,
    /// An `http://` or `https://` URL of one file.
    Url,
    /// A git repository (`git@...`, `git://...`, `https://...x.git`, `...git#ref`).
    Git,
}

/// Classify an ADD source as BuildKit does.
pub fn add_source_kind(s: &str) -> AddSourceKind {
    if s.starts_with("git@")
        || s.starts_with("git://")
        || s.ends_with(".git")
        || s.contains(".git#")
    {
        AddSourceKind::Git
    } else if s.starts_with("http://") || s.starts_with("https://") {
        AddSourceKind::Url
    } else {
        AddSourceKind::Local
    }
}

/// A `--checksum` that cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// Given for an ADD of local files.
    #[error("--checksum can only be used with a URL or git source")]
    NotRemote,
    /// Not `ALGO:HEX` with a known algorithm and its digest length.
    #[error("invalid checksum {0:?}; use sha256:<64 hex digits> (or sha384/sha512)")]
    Digest(String),
    /// A git checksum that is not a commit hash.
    #[error("invalid git checksum {0:?}; use the full commit hash (40 or 64 hex digits)")]
    Commit(String),
}

/// Check a `--checksum` for a source of `kind`.
pub fn check_checksum(kind: AddSourceKind, value: &str) -> Result<(), ChecksumError> {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match kind {
        AddSourceKind::Local => Err(ChecksumError::NotRemote),
        AddSourceKind::Url => {
            let ok = match value.split_once(':') {
                Some(("sha256", h)) => hex(h, 64),
                Some(("sha384", h)) => hex(h, 96),
                Some(("sha512", h)) => hex(h, 128),
                _ => false,
            };
            ok.then_some(())
                .ok_or_else(|| ChecksumError::Digest(value.into()))
        }
        AddSourceKind::Git => (hex(value, 40) || hex(value, 64))
            .then_some(())
            .ok_or_else(|| ChecksumError::Commit(value.into())),
    }
}

/// A STOPSIGNAL that names no signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signal: {0}; use a name such as SIGTERM or a number")]
pub struct SignalError(pub String);

/// Signal names (without `SIG`) a Linux image may stop with.
const SIGNALS: [&str; 34] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

/// Check a STOPSIGNAL value as BuildKit does: a non-zero number, or a
/// signal name with or without `SIG`, any case (`SIGTERM`, `term`,
/// `SIGRTMIN+3`).
pub fn check_signal(value: &str) -> Result<(), SignalError> {
    if let Ok(n) = value.parse::<i64>() {
        return if n != 0 {
            Ok(())
        } else {
            Err(SignalError(value.into()))
        };
    }
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: &str, sign: char| match name.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest.strip_prefix(sign).is_some_and(|n| {
            !n.starts_with('0') && n.parse::<u8>().is_ok_and(|n| (1..=15).contains(&n))
        }),
        None => false,
    };
    if SIGNALS.contains(&name) || realtime("RTMIN", '+') || realtime("RTMAX", '-') {
        Ok(())
    } else {
        Err(SignalError(value.into()))
    }
}

/// Where a RUN heredoc whose body starts with `#!` is mounted (read-only);
/// the file is executed from there.
pub const HEREDOC_PIPES: &str = "/dev/pipes/";

/// How a shell-form RUN with heredocs runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunForm {
    /// Run this argv as is.
    Argv(Vec<String>),
    /// The command is one heredoc whose body starts with `#!`: write
    /// `name` with `data` (mode 0755) to a file mounted read-only at
    /// [`HEREDOC_PIPES`], and run `argv` (the shell running that file).
    Script {
        /// File name (the heredoc's name).
        name: String,
        /// The body.
        data: String,
        /// The command line.
        argv: Vec<String>,
    },
}

/// The command a RUN runs, as BuildKit builds it: exec form as given;
/// shell form through `shell`; a command that is only one heredoc runs its
/// body (as a `#!` script file on non-Windows platforms); other heredocs are
/// appended to the script with their delimiters so the shell reads them.
pub fn run_form(command: &Command, heredocs: &[Heredoc], shell: &[String], os: &str) -> RunForm {
    let with_shell = |script: String| {
        let mut v = shell.to_vec();
        v.push(script);
        v
    };
    match command {
        Command::Exec(v) => RunForm::Argv(v.clone()),
        Command::Shell(s) if only_heredoc(s, heredocs) => {
            let h = &heredocs[0];
            if os != "windows" && h.content.starts_with("#!") {
                RunForm::Script {
                    name: h.name.clone(),
                    data: h.content.clone(),
                    argv: with_shell(format!("{HEREDOC_PIPES}{}", h.name)),
                }
            } else {
                RunForm::Argv(with_shell(h.content.clone()))
            }
        }
        Command::Shell(s) => {
            let mut script = s.clone();
            for h in heredocs {
                script.push('\n');
                script.push_str(&h.content);
                script.push_str(&h.name);
            }
            RunForm::Argv(with_shell(script))
        }
    }
}

/// Whether a shell-form command is exactly one heredoc operator
/// (`[n]<<[-]WORD`, WORD possibly quoted) naming the only heredoc.
fn only_heredoc(command: &str, heredocs: &[Heredoc]) -> bool {
    let [h] = heredocs else {
        return false;
    };
    let rest = command
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix("<<") else {
        return false;
    };
    let word = rest.strip_prefix('-').unwrap_or(rest).trim();
    let unquoted: String = word.chars().filter(|c| !matches!(c, '\'' | '"')).collect();
    !word.contains('<') && !word.contains(char::is_whitespace) && unquoted == h.name
}

/// The history text of a RUN: BuildKit's `RUN [|N A=1 B=2 ]argv... # buildkit`,
/// the build args in scope prefixed with their count.
pub fn run_history(argv: &[String], args: &[(impl AsRef<str>, impl AsRef<str>)]) -> String {
    let mut out = String::from("RUN");
    if !args.is_empty() {
        out.push_str(&format!(" |{}", args.len()));
        for (k, v) in args {
            out.push(' ');
            out.push_str(k.as_ref());
            out.push('=');
            out.push_str(v.as_ref());
        }
    }
    for a in argv {
        out.push(' ');
        out.push_str(a);
    }
    out.push_str(" # buildkit");
    out
}

/// The history text of EXPOSE: Go's rendering of the port set,
/// `EXPOSE map[443/tcp:{} 80/tcp:{}]` (keys sorted).
pub fn expose_history(keys: &[String]) -> String {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = String::from("EXPOSE map[");
    for (i, k) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push_str(":{}");
    }
    out.push(']');
    out
}

/// The history text of COPY/ADD: `COPY a b <<EOF /dest # buildkit`
/// (sources as written, heredoc names, destination as written).
pub fn copy_history(
    keyword: &str,
    sources: &[String],
    contents: &[SourceContent],
    dest: &str,
) -> String {
    let mut out = keyword.to_string();
    for s in sources {
        out.push(' ');
        out.push_str(s);
    }
    for c in contents {
        out.push_str(" <<");
        out.push_str(&c.path);
    }
    out.push(' ');
    out.push_str(dest);
    out.push_str(" # buildkit");
    out
}

/// The history text of HEALTHCHECK: Go's `%q` of BuildKit's
/// `*HealthcheckConfig`,
/// `HEALTHCHECK &{["CMD-SHELL" "curl -f http://x/"] "5m0s" "3s" "0s" "0s" '\x03'}`.
pub fn healthcheck_history(test: &HealthTest) -> String {
    let (argv, durations, retries) = match test {
        HealthTest::None => (vec!["NONE".to_string()], [Duration::ZERO; 4], 0),
        HealthTest::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => (
            match command {
                Command::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            },
            [*interval, *timeout, *start_period, *start_interval],
            *retries,
        ),
    };
    let mut out = format!("HEALTHCHECK &{{{}", go_quote_list(&argv));
    for d in durations {
        out.push(' ');
        out.push_str(&go_quote(&go_duration(d)));
    }
    out.push(' ');
    out.push_str(&go_quote_rune(retries));
    out.push('}');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b c"]`.
pub fn go_quote_list(v: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&go_quote(s));
    }
    out.push(']');
    out
}

/// Go's `%v` of a `[]string`: `[a b c]`.
pub fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        escape_char(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `%q` of an integer: a quoted character literal (`'\x03'`).
pub fn go_quote_rune(n: u32) -> String {
    let mut out = String::from("'");
    match char::from_u32(n) {
        Some(c) => escape_char(&mut out, c, '\''),
        None => out.push('\u{fffd}'),
    }
    out.push('\'');
    out
}

fn escape_char(out: &mut String, c: char, quote: char) {
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if c.is_control() => {
            if (c as u32) < 0x10000 {
                out.push_str(&format!("\\u{:04x}", c as u32))
            } else {
                out.push_str(&format!("\\U{:08x}", c as u32))
            }
        }
        c => out.push(c),
    }
}

/// Go's `time.Duration.String` (`1m30s`, `1.5s`, `500ms`, `0s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(ns, div));
    }
    let h = ns / 3_600_000_000_000;
    let m = (ns / 60_000_000_000) % 60;
    let s = ns % 60_000_000_000;
    let secs = frac(s, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `n / div` with the fraction's trailing zeros dropped.
fn frac(n: u128, div: u128) -> String {
    let whole = n / div;
    let rest = n % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A COPY/ADD destination resolved against the working directory: a clean
/// absolute path that keeps a trailing `/` (also for `.` and `x/.`),
/// which means "into this directory". On Windows platforms `\` is a
/// separator and a drive letter is dropped.
pub fn resolve_dest(workdir: &str, dest: &str, os: &str) -> String {
    let windows = os == "windows";
    let d = if windows {
        dest.replace('\\', "/")
    } else {
        dest.to_string()
    };
    let dir = d.ends_with('/') || d == "." || d.ends_with("/.");
    let mut out = crate::plan::resolve_workdir(workdir, &d, os).into_owned();
    if dir && !out.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_forms() {
        assert_eq!(expose_keys("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expose_keys("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            expose_keys("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(
            expose_keys("80/foo"),
            Err(ExposeError::Protocol("foo".into()))
        );
        assert_eq!(expose_keys("x"), Err(ExposeError::Port));
        assert_eq!(expose_keys("9-1"), Err(ExposeError::Port));
        assert_eq!(expose_keys("+80"), Err(ExposeError::Port));
        assert_eq!(expose_keys("70000"), Err(ExposeError::Port));
    }

    #[test]
    fn signals() {
        for ok in [
            "SIGTERM",
            "term",
            "SIGKILL",
            "9",
            "SIGRTMIN+3",
            "RTMAX-1",
            "SIGRTMAX",
            "sigusr1",
        ] {
            assert_eq!(check_signal(ok), Ok(()), "{ok}");
        }
        for bad in ["0", "SIGFOO", "", "RTMIN+16", "SIGRTMIN+0", "TERM9"] {
            assert!(check_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn add_kinds_and_checksums() {
        assert_eq!(add_source_kind("a.tar"), AddSourceKind::Local);
        assert_eq!(add_source_kind("https://x/y.tgz"), AddSourceKind::Url);
        assert_eq!(
            add_source_kind("https://github.com/a/b.git#v1"),
            AddSourceKind::Git
        );
        assert_eq!(
            add_source_kind("git@github.com:a/b.git"),
            AddSourceKind::Git
        );
        let sha = format!("sha256:{}", "a".repeat(64));
        assert_eq!(check_checksum(AddSourceKind::Url, &sha), Ok(()));
        assert!(check_checksum(AddSourceKind::Url, "sha256:abc").is_err());
        assert!(check_checksum(AddSourceKind::Url, &sha.replace("sha256", "md5")).is_err());
        assert_eq!(
            check_checksum(AddSourceKind::Local, &sha),
            Err(ChecksumError::NotRemote)
        );
        assert_eq!(check_checksum(AddSourceKind::Git, &"0".repeat(40)), Ok(()));
        assert!(check_checksum(AddSourceKind::Git, "main").is_err());
    }

    #[test]
    fn go_renderings() {
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo \"hi\"\n".into()]),
            r#"["/bin/sh" "-c" "echo \"hi\"\n"]"#
        );
        assert_eq!(go_list(&["/a".into(), "/b".into()]), "[/a /b]");
        assert_eq!(go_quote_rune(0), r"'\x00'");
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_micros(1)), "1µs");
    }

    #[test]
    fn run_forms() {
        let sh = vec!["/bin/sh".to_string(), "-c".to_string()];
        let doc = |name: &str, content: &str| Heredoc {
            name: name.into(),
            content: content.into(),
            expand: true,
            chomp: false,
            file_descriptor: 0,
        };
        let script = doc("EOF", "#!/usr/bin/env python3\nprint(1)\n");
        assert_eq!(
            run_form(
                &Command::Shell("<<EOF".into()),
                std::slice::from_ref(&script),
                &sh,
                "linux"
            ),
            RunForm::Script {
                name: "EOF".into(),
                data: script.content.clone(),
                argv: vec!["/bin/sh".into(), "-c".into(), "/dev/pipes/EOF".into()],
            }
        );
        let plain = doc("EOF", "echo a\necho b\n");
        assert_eq!(
            run_form(
                &Command::Shell("<<'EOF'".into()),
                std::slice::from_ref(&plain),
                &sh,
                "linux"
            ),
            RunForm::Argv(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo a\necho b\n".into()
            ])
        );
        assert_eq!(
            run_form(
                &Command::Shell("cat <<EOF > /x".into()),
                &[plain],
                &sh,
                "linux"
            ),
            RunForm::Argv(vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat <<EOF > /x\necho a\necho b\nEOF".into()
            ])
        );
        assert_eq!(
            run_history(&sh, &[("A", "1"), ("B", "x y")]),
            "RUN |2 A=1 B=x y /bin/sh -c # buildkit"
        );
    }

    #[test]
    fn destinations() {
        assert_eq!(resolve_dest("/src", ".", "linux"), "/src/");
        assert_eq!(resolve_dest("/src", "app", "linux"), "/src/app");
        assert_eq!(resolve_dest("/src", "/out/", "linux"), "/out/");
        assert_eq!(resolve_dest("/", "C:\\app\\", "windows"), "/app/");
    }
}

//! `RUN --mount=<csv>`: BuildKit's mount option grammar.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A `RUN --mount` value that BuildKit rejects; Display is BuildKit's message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MountError {
    /// The value is empty.
    #[error("failed to parse csv mounts: EOF")]
    Empty,
    /// A quoted field is not closed, or text follows its closing quote.
    #[error("failed to parse csv mounts: parse error on line 1, column {column}: extraneous or missing \" in quoted-field")]
    QuotedField {
        /// The column at fault (1-based, in characters).
        column: usize,
    },
    /// A quote inside a field that does not start with one.
    #[error("failed to parse csv mounts: parse error on line 1, column {column}: bare \" in non-quoted-field")]
    BareQuote {
        /// The column at fault (1-based, in characters).
        column: usize,
    },
    /// `from=` uses a variable.
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    FromVariable,
    /// A field without `=` that is not a flag.
    #[error("invalid field '{0}' must be a key=value pair")]
    NotKeyValue(String),
    /// A value that is not a boolean or size.
    #[error("invalid value for {key}: {value}")]
    Value {
        /// The key.
        key: String,
        /// The expanded value.
        value: String,
    },
    /// `mode=`, `uid=` or `gid=` that is not a number.
    #[error("invalid value {value} for {key}")]
    Number {
        /// The key.
        key: String,
        /// The expanded value.
        value: String,
    },
    /// A key no mount type has.
    #[error("{}", unknown_key(.key, .field))]
    UnknownKey {
        /// The key.
        key: String,
        /// The field it is in.
        field: String,
    },
    /// A key another mount type has.
    #[error("unexpected key '{key}' for mount type '{kind}'")]
    KeyForType {
        /// The key.
        key: String,
        /// The mount type.
        kind: &'static str,
    },
    /// `mode`, `uid` or `gid` for a type without file info.
    #[error("{key} not allowed for {kind:?} type mounts")]
    FileInfo {
        /// The key.
        key: &'static str,
        /// The mount type.
        kind: &'static str,
    },
    /// `sharing=` for a type other than `cache`.
    #[error("invalid cache sharing set for {0} mount")]
    SharingNotCache(&'static str),
    /// A secret mount with `from=`.
    #[error("secret mount should not have a from")]
    SecretFrom,
    /// A secret mount with `sharing=`.
    #[error("secret mount should not define sharing")]
    SecretSharing,
    /// A secret mount that names nothing.
    #[error("invalid secret mount. one of source, target required")]
    SecretNothing,
    /// A secret mount with both `source=` and `id=`.
    #[error("both source and id can't be set")]
    SecretSourceAndId,
    /// An unknown `type=`.
    #[error("{}", unknown_type(.0))]
    UnknownType(String),
    /// An unknown `sharing=`.
    #[error("{}", unknown_sharing(.0))]
    UnknownSharing(String),
}

// BuildKit's messages for names it does not know, with the closest known
// one as a suggestion.
fn unknown_key(key: &str, field: &str) -> String {
    let msg = format!("unexpected key '{key}' in '{field}'");
    crate::parser::suggest::wrap(msg, key, &ALL_KEYS, true)
}

fn unknown_type(value: &str) -> String {
    let msg = format!("unsupported mount type {value:?}");
    crate::parser::suggest::wrap(msg, value, &ALL_TYPES, true)
}

fn unknown_sharing(value: &str) -> String {
    let msg = format!("unsupported sharing value {value:?}");
    crate::parser::suggest::wrap(msg, value, &ALL_SHARING, true)
}

/// Cache mount sharing mode (`sharing=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Concurrent builds use the cache at the same time (the default).
    #[default]
    Shared,
    /// A concurrent build gets a fresh cache of its own.
    Private,
    /// Concurrent builds wait for each other.
    Locked,
}

/// `type=bind` (the default type): a read-only (unless `rw`) view of the
/// build context or of a stage/image given by `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Mount point (`target`, `dst`, `destination`); relative paths (and
    /// the empty string when absent) resolve against the WORKDIR.
    pub target: String,
    /// Path inside `from` (`source`, `src`); `None` is its root.
    pub source: Option<String>,
    /// Stage name, image or named context; `None` is the build context.
    pub from: Option<String>,
    /// Writes are allowed but discarded (`rw`, `readwrite`, `ro=false`).
    pub read_write: bool,
}

/// `type=cache`: a persistent cache directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// Mount point.
    pub target: String,
    /// Cache id; BuildKit uses `target` when `None`.
    pub id: Option<String>,
    /// Sharing mode.
    pub sharing: Sharing,
    /// Stage/image whose `source` path seeds an empty cache.
    pub from: Option<String>,
    /// Path inside `from`.
    pub source: Option<String>,
    /// Mounted read-only (`ro`).
    pub read_only: bool,
    /// Mode of a newly created cache directory (octal); BuildKit: 0755.
    pub mode: Option<u32>,
    /// Owner uid of a new cache directory; BuildKit: 0.
    pub uid: Option<u32>,
    /// Owner gid of a new cache directory; BuildKit: 0.
    pub gid: Option<u32>,
}

/// `type=tmpfs`: an empty tmpfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Mount point.
    pub target: String,
    /// `size=` limit in bytes.
    pub size: Option<u64>,
}

/// `type=secret`: a build secret as a file and/or environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    /// Secret id (`id`, or `source`/`src`); BuildKit uses the base name of
    /// `target` when `None`.
    pub id: Option<String>,
    /// File path; BuildKit uses `/run/secrets/<id>` when `None` (and no `env`).
    pub target: Option<String>,
    /// Environment variable receiving the secret (`env=`).
    pub env: Option<String>,
    /// Fail when the secret is not provided.
    pub required: bool,
    /// File mode (octal); BuildKit: 0400.
    pub mode: Option<u32>,
    /// File owner uid; BuildKit: 0.
    pub uid: Option<u32>,
    /// File owner gid; BuildKit: 0.
    pub gid: Option<u32>,
}

/// `type=ssh`: an SSH agent socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshMount {
    /// Agent id; BuildKit uses `default` when `None`.
    pub id: Option<String>,
    /// Socket path; BuildKit uses `/run/buildkit/ssh_agent.<n>` when `None`.
    pub target: Option<String>,
    /// Fail when the agent is not provided.
    pub required: bool,
    /// Socket mode (octal); BuildKit: 0600.
    pub mode: Option<u32>,
    /// Socket owner uid; BuildKit: 0.
    pub uid: Option<u32>,
    /// Socket owner gid; BuildKit: 0.
    pub gid: Option<u32>,
}

/// A typed `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    /// `type=bind`
    Bind(BindMount),
    /// `type=cache`
    Cache(CacheMount),
    /// `type=tmpfs`
    Tmpfs(TmpfsMount),
    /// `type=secret`
    Secret(SecretMount),
    /// `type=ssh`
    Ssh(SshMount),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Cache => "cache",
            Kind::Tmpfs => "tmpfs",
            Kind::Secret => "secret",
            Kind::Ssh => "ssh",
        }
    }
}

const ALL_TYPES: [&str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];
const ALL_SHARING: [&str; 3] = ["shared", "private", "locked"];
const ALL_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "size",
    "env",
];

/// Go's strconv.ParseBool.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_u32(v: &str, radix: u32) -> Option<u32> {
    // Go's ParseUint takes no sign; Rust's from_str_radix accepts '+'.
    if v.is_empty() || v.starts_with('+') {
        return None;
    }
    u32::from_str_radix(v, radix).ok()
}

/// docker/go-units RAMInBytes: `<number>[kmgtp][i][b]`, binary multiples.
fn ram_in_bytes(v: &str) -> Option<u64> {
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
        i += 1;
    }
    let (num, mut rest) = v.split_at(i);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.contains("..") {
        return None;
    }
    let number: f64 = num.parse().ok()?;
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    let mut chars = rest.chars().peekable();
    let mut mult: f64 = 1.0;
    if let Some(c) = chars.peek().copied() {
        let m = match c.to_ascii_lowercase() {
            'k' => Some(1024f64),
            'm' => Some(1024f64.powi(2)),
            'g' => Some(1024f64.powi(3)),
            't' => Some(1024f64.powi(4)),
            'p' => Some(1024f64.powi(5)),
            _ => None,
        };
        if let Some(m) = m {
            mult = m;
            chars.next();
        }
    }
    if matches!(chars.peek(), Some('i' | 'I')) {
        chars.next();
    }
    if matches!(chars.peek(), Some('b' | 'B')) {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    Some((number * mult) as u64)
}

/// Go encoding/csv reading one record with default options.
fn read_csv_record(s: &str) -> Result<Vec<String>, MountError> {
    let line = s.split('\n').next().unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    if s.is_empty() {
        return Err(MountError::Empty);
    }
    if !line.contains('"') {
        // No quoting: the fields are the text between commas.
        return Ok(line.split(',').map(str::to_string).collect());
    }
    let mut chars: Vec<char> = Vec::with_capacity(line.len());
    chars.extend(line.chars());
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut field = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(MountError::QuotedField { column: i + 1 }),
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        field.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        match chars.get(i) {
                            None | Some(',') => break,
                            Some(_) => return Err(MountError::QuotedField { column: i + 1 }),
                        }
                    }
                    Some(c) => {
                        field.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = chars.get(i) {
                match c {
                    ',' => break,
                    '"' => return Err(MountError::BareQuote { column: i + 1 }),
                    c => field.push(*c),
                }
                i += 1;
            }
        }
        fields.push(field);
        if chars.get(i) == Some(&',') {
            i += 1;
            continue;
        }
        break;
    }
    Ok(fields)
}

/// Parse-time check BuildKit runs on each `--mount` before any expansion:
/// the value must be valid CSV and `from` must not use variables.
pub(crate) fn precheck(value: &str) -> Result<(), MountError> {
    for field in read_csv_record(value)? {
        if let Some((key, v)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") && has_variable(v) {
                return Err(MountError::FromVariable);
            }
        }
    }
    Ok(())
}

fn has_variable(v: &str) -> bool {
    // Go regexp `\$.`: a '$' followed by any character except newline.
    let b: Vec<char> = v.chars().collect();
    b.windows(2).any(|w| w[0] == '$' && w[1] != '\n')
}

impl Mount {
    /// Parses one `--mount` value as BuildKit does at dispatch: every option
    /// value goes through `expand` first (pass the stage's word expander;
    /// `|s| Ok(s.to_string())` for none), then is interpreted.
    pub fn parse<E>(
        value: &str,
        mut expand: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<Result<Mount, MountError>, E> {
        let fields = match read_csv_record(value) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let mut options = Options::default();
        for field in &fields {
            let mut buf = [0u8; 16];
            let set = match field.split_once('=') {
                Some((k, v)) => {
                    let key = crate::parser::lowercase(k, &mut buf);
                    let value = expand(v)?;
                    options.set(&key, field, value)
                }
                None => options.flag(field),
            };
            if let Err(e) = set {
                return Ok(Err(e));
            }
        }
        Ok(options.finish())
    }
}

/// The options of one `--mount`, as they are read.
struct Options {
    kind: Kind,
    from: Option<String>,
    source: Option<String>,
    target: Option<String>,
    read_only: bool,
    /// Neither `ro` nor `rw` given: the mount type decides.
    ro_auto: bool,
    id: Option<String>,
    sharing: Option<Sharing>,
    required: bool,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    env: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            kind: Kind::Bind,
            from: None,
            source: None,
            target: None,
            read_only: false,
            ro_auto: true,
            id: None,
            sharing: None,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        }
    }
}

impl Options {
    /// A field without a value (`ro`, `rw`, `required`).
    fn flag(&mut self, field: &str) -> Result<(), MountError> {
        let key = field.to_lowercase();
        match key.as_str() {
            "readonly" | "ro" => {
                self.read_only = true;
                self.ro_auto = false;
            }
            "readwrite" | "rw" => {
                self.read_only = false;
                self.ro_auto = false;
            }
            "required" if matches!(self.kind, Kind::Secret | Kind::Ssh) => self.required = true,
            "required" => return Err(self.unexpected(&key)),
            _ => return Err(MountError::NotKeyValue(field.to_string())),
        }
        Ok(())
    }

    /// `key=value` (`key` lowercased, `value` expanded) of `field`.
    fn set(&mut self, key: &str, field: &str, value: String) -> Result<(), MountError> {
        let bad = |key: &str| MountError::Value {
            key: key.to_string(),
            value: value.clone(),
        };
        let number = |radix: u32| {
            parse_u32(&value, radix).ok_or_else(|| MountError::Number {
                key: key.to_string(),
                value: value.clone(),
            })
        };
        match key {
            "type" => self.kind = parse_kind(&value)?,
            "from" => self.from = Some(value),
            "source" | "src" => self.source = Some(value),
            "target" | "dst" | "destination" => self.target = Some(value),
            "readonly" | "ro" => {
                self.read_only = parse_bool(&value).ok_or_else(|| bad(key))?;
                self.ro_auto = false;
            }
            "readwrite" | "rw" => {
                self.read_only = !parse_bool(&value).ok_or_else(|| bad(key))?;
                self.ro_auto = false;
            }
            "required" => {
                self.only_for(key, matches!(self.kind, Kind::Secret | Kind::Ssh))?;
                self.required = parse_bool(&value).ok_or_else(|| bad(key))?;
            }
            "size" => {
                self.only_for(key, self.kind == Kind::Tmpfs)?;
                self.size = Some(ram_in_bytes(&value).ok_or_else(|| bad(key))?);
            }
            "env" => {
                self.only_for(key, self.kind == Kind::Secret)?;
                self.env = Some(value);
            }
            "id" => self.id = Some(value),
            "sharing" => self.sharing = Some(parse_sharing(&value)?),
            "mode" => self.mode = Some(number(8)?),
            "uid" => self.uid = Some(number(10)?),
            "gid" => self.gid = Some(number(10)?),
            _ => {
                return Err(MountError::UnknownKey {
                    key: key.to_string(),
                    field: field.to_string(),
                })
            }
        }
        Ok(())
    }

    /// Refuses `key` unless the mount type `allowed` it.
    fn only_for(&self, key: &str, allowed: bool) -> Result<(), MountError> {
        if allowed {
            Ok(())
        } else {
            Err(self.unexpected(key))
        }
    }

    fn unexpected(&self, key: &str) -> MountError {
        MountError::KeyForType {
            key: key.to_string(),
            kind: self.kind.name(),
        }
    }

    /// Checks the options against each other and makes the mount.
    fn finish(mut self) -> Result<Mount, MountError> {
        let kind = self.kind;
        let file_info_allowed = matches!(kind, Kind::Secret | Kind::Ssh | Kind::Cache);
        if !file_info_allowed {
            for (name, set) in [
                ("mode", self.mode.is_some()),
                ("uid", self.uid.is_some()),
                ("gid", self.gid.is_some()),
            ] {
                if set {
                    return Err(MountError::FileInfo {
                        key: name,
                        kind: kind.name(),
                    });
                }
            }
        }
        if self.ro_auto {
            self.read_only = !matches!(kind, Kind::Cache | Kind::Tmpfs);
        }
        if kind == Kind::Secret {
            self.check_secret()?;
        }
        if self.sharing.is_some() && kind != Kind::Cache {
            return Err(MountError::SharingNotCache(kind.name()));
        }
        Ok(self.into_mount())
    }

    fn check_secret(&self) -> Result<(), MountError> {
        if self.from.is_some() {
            return Err(MountError::SecretFrom);
        }
        if self.sharing.is_some() {
            return Err(MountError::SecretSharing);
        }
        if self.source.is_none() && self.target.is_none() && self.id.is_none() && self.env.is_none()
        {
            return Err(MountError::SecretNothing);
        }
        if self.source.is_some() && self.id.is_some() {
            return Err(MountError::SecretSourceAndId);
        }
        Ok(())
    }

    fn into_mount(self) -> Mount {
        match self.kind {
            Kind::Bind => Mount::Bind(BindMount {
                target: self.target.unwrap_or_default(),
                source: self.source,
                from: self.from,
                read_write: !self.read_only,
            }),
            Kind::Cache => Mount::Cache(CacheMount {
                target: self.target.unwrap_or_default(),
                id: self.id,
                sharing: self.sharing.unwrap_or_default(),
                from: self.from,
                source: self.source,
                read_only: self.read_only,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            }),
            Kind::Tmpfs => Mount::Tmpfs(TmpfsMount {
                target: self.target.unwrap_or_default(),
                size: self.size,
            }),
            Kind::Secret => Mount::Secret(SecretMount {
                id: self.id.or(self.source),
                target: self.target,
                env: self.env,
                required: self.required,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            }),
            Kind::Ssh => Mount::Ssh(SshMount {
                id: self.id,
                target: self.target,
                required: self.required,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            }),
        }
    }
}

/// `type=`: the mount type.
fn parse_kind(value: &str) -> Result<Kind, MountError> {
    Ok(match value.to_lowercase().as_str() {
        "bind" => Kind::Bind,
        "cache" => Kind::Cache,
        "tmpfs" => Kind::Tmpfs,
        "secret" => Kind::Secret,
        "ssh" => Kind::Ssh,
        _ => return Err(MountError::UnknownType(value.to_string())),
    })
}

/// `sharing=`: a cache mount's sharing mode.
fn parse_sharing(value: &str) -> Result<Sharing, MountError> {
    Ok(match value.to_lowercase().as_str() {
        "shared" => Sharing::Shared,
        "private" => Sharing::Private,
        "locked" => Sharing::Locked,
        _ => return Err(MountError::UnknownSharing(value.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Mount, MountError> {
        Mount::parse::<std::convert::Infallible>(s, |v| Ok(v.to_string()))
            .unwrap_or_else(|e| match e {})
    }

    #[test]
    fn bind_defaults_read_only() {
        assert_eq!(
            p("target=/src").unwrap(),
            Mount::Bind(BindMount {
                target: "/src".into(),
                source: None,
                from: None,
                read_write: false
            })
        );
        assert_eq!(
            p("type=bind,dst=/src,from=build,src=/out,rw").unwrap(),
            Mount::Bind(BindMount {
                target: "/src".into(),
                source: Some("/out".into()),
                from: Some("build".into()),
                read_write: true
            })
        );
        assert!(
            matches!(p("destination=/x,readwrite=false").unwrap(), Mount::Bind(b) if !b.read_write)
        );
    }

    #[test]
    fn cache_options() {
        let m =
            p("type=cache,target=/root/.cache,id=pip,sharing=LOCKED,mode=0700,uid=1000,gid=1000")
                .unwrap();
        assert_eq!(
            m,
            Mount::Cache(CacheMount {
                target: "/root/.cache".into(),
                id: Some("pip".into()),
                sharing: Sharing::Locked,
                from: None,
                source: None,
                read_only: false,
                mode: Some(0o700),
                uid: Some(1000),
                gid: Some(1000),
            })
        );
        assert_eq!(
            p("type=cache,target=/c,sharing=lockd")
                .unwrap_err()
                .to_string(),
            "unsupported sharing value \"lockd\" (did you mean locked?)"
        );
        assert_eq!(
            p("type=cache,target=/c,mode=9").unwrap_err().to_string(),
            "invalid value 9 for mode"
        );
        assert_eq!(
            p("type=cache,target=/c,uid=-1").unwrap_err().to_string(),
            "invalid value -1 for uid"
        );
    }

    #[test]
    fn tmpfs_size() {
        assert_eq!(
            p("type=tmpfs,target=/t,size=64m").unwrap(),
            Mount::Tmpfs(TmpfsMount {
                target: "/t".into(),
                size: Some(64 << 20)
            })
        );
        assert_eq!(
            p("type=tmpfs,target=/t,size=100").unwrap(),
            Mount::Tmpfs(TmpfsMount {
                target: "/t".into(),
                size: Some(100)
            })
        );
        assert_eq!(
            p("type=tmpfs,target=/t,size=1GiB").unwrap(),
            Mount::Tmpfs(TmpfsMount {
                target: "/t".into(),
                size: Some(1 << 30)
            })
        );
        assert_eq!(
            p("type=tmpfs,target=/t,size=lots").unwrap_err().to_string(),
            "invalid value for size: lots"
        );
        assert_eq!(
            p("type=bind,target=/t,size=1").unwrap_err().to_string(),
            "unexpected key 'size' for mount type 'bind'"
        );
        assert_eq!(
            p("type=tmpfs,target=/t,mode=755").unwrap_err().to_string(),
            "mode not allowed for \"tmpfs\" type mounts"
        );
    }

    #[test]
    fn secret_and_ssh() {
        assert_eq!(
            p("type=secret,id=aws,target=/root/.aws/credentials,required").unwrap(),
            Mount::Secret(SecretMount {
                id: Some("aws".into()),
                target: Some("/root/.aws/credentials".into()),
                env: None,
                required: true,
                mode: None,
                uid: None,
                gid: None
            })
        );
        assert!(
            matches!(p("type=secret,id=tok,env=TOKEN").unwrap(), Mount::Secret(s) if s.env.as_deref() == Some("TOKEN"))
        );
        assert_eq!(
            p("type=secret").unwrap_err().to_string(),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(
            p("type=secret,id=a,src=b").unwrap_err().to_string(),
            "both source and id can't be set"
        );
        assert_eq!(
            p("type=secret,id=a,from=x").unwrap_err().to_string(),
            "secret mount should not have a from"
        );
        assert_eq!(
            p("type=secret,id=a,required=maybe")
                .unwrap_err()
                .to_string(),
            "invalid value for required: maybe"
        );
        assert!(matches!(p("type=ssh").unwrap(), Mount::Ssh(s) if s.id.is_none() && !s.required));
        assert_eq!(
            p("type=bind,target=/x,required").unwrap_err().to_string(),
            "unexpected key 'required' for mount type 'bind'"
        );
        assert_eq!(
            p("type=cache,target=/x,sharing=private,type=tmpfs")
                .unwrap_err()
                .to_string(),
            "invalid cache sharing set for tmpfs mount"
        );
    }

    #[test]
    fn errors_and_suggestions() {
        assert_eq!(
            p("type=bnd").unwrap_err().to_string(),
            "unsupported mount type \"bnd\" (did you mean bind?)"
        );
        assert_eq!(
            p("type=cache,targt=/x").unwrap_err().to_string(),
            "unexpected key 'targt' in 'targt=/x' (did you mean target?)"
        );
        assert_eq!(
            p("type=cache,bogus").unwrap_err().to_string(),
            "invalid field 'bogus' must be a key=value pair"
        );
        assert_eq!(
            p("").unwrap_err().to_string(),
            "failed to parse csv mounts: EOF"
        );
        assert!(p("target=a\"b")
            .unwrap_err()
            .to_string()
            .contains("bare \" in non-quoted-field"));
        assert_eq!(
            p("type=tmpfs").unwrap(),
            Mount::Tmpfs(TmpfsMount {
                target: String::new(),
                size: None
            })
        );
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            read_csv_record("\"target=/a,b\",ro").unwrap(),
            vec!["target=/a,b", "ro"]
        );
        assert_eq!(read_csv_record("a,,b").unwrap(), vec!["a", "", "b"]);
        assert_eq!(read_csv_record("\"x\"\"y\"").unwrap(), vec!["x\"y"]);
        assert!(read_csv_record("\"x\"y").is_err());
    }

    #[test]
    fn expansion_applies_to_values() {
        let m = Mount::parse::<String>("type=cache,target=$DIR,id=$ID", |v| {
            Ok(v.replace("$DIR", "/cache").replace("$ID", "x"))
        })
        .unwrap()
        .unwrap();
        assert!(
            matches!(m, Mount::Cache(c) if c.target == "/cache" && c.id.as_deref() == Some("x"))
        );
        let failed = Mount::parse::<String>("target=$X", |_| Err("bad".to_string()));
        assert_eq!(failed, Err("bad".to_string()));
    }

    #[test]
    fn precheck_rejects_from_variables() {
        assert!(precheck("type=bind,from=$STAGE,target=/x").is_err());
        assert!(precheck("type=bind,from=stage,target=$X").is_ok());
        assert!(precheck("\"").is_err());
    }
}

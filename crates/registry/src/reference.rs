//! Image references with Docker's normalization rules.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The registry name Docker uses for Docker Hub in references and credentials.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's distribution API.
pub(crate) const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Older spelling of Docker Hub's name, accepted in references and normalized away.
pub(crate) const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Tag used when a reference names neither a tag nor a digest.
const DEFAULT_TAG: &str = "latest";

/// A fully normalized image reference: `registry/repository[:tag][@digest]`.
///
/// `alpine` normalizes to `docker.io/library/alpine:latest`, `user/repo` to
/// `docker.io/user/repo:latest`; a first component with a `.` or `:` or equal to
/// `localhost` is a registry host. A reference with only a digest keeps no tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    /// `algorithm:hex`, checked (sha256, sha384 or sha512).
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes a reference as Docker does.
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let bad = |reason: String| Error::InvalidReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if input.len() > 4096 {
            return Err(bad("it is longer than 4096 characters".into()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(parse_digest(d).map_err(bad)?)),
            None => (input, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.map_or(true, |slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(bad)?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_host(first).map_err(bad)?;
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        check_path(&path).map_err(bad)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters".into()));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Registry name as written in references (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Host (and port) that serves the registry's API: Docker Hub's endpoint for
    /// `docker.io`, the registry name otherwise.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// Repository path inside the registry (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Tag, if the reference has one (`latest` is filled in when neither tag nor digest is given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest (`sha256:<hex>`; sha384 and sha512 are accepted too), if the
    /// reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: kbuild_image::Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The tag or digest to ask the registry for: the digest when pinned, else the tag.
    pub(crate) fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

/// The host that serves a registry's API.
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_ENDPOINT
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn parse_digest(text: &str) -> Result<String, String> {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return Err(format!(
            "digest {text:?} has no algorithm prefix like sha256:"
        ));
    };
    let hex_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("digest algorithm {algorithm:?} is not supported")),
    };
    if hex.len() != hex_len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {text:?} must be {hex_len} lowercase hexadecimal characters after {algorithm}:"
        ));
    }
    Ok(text.to_string())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(format!(
            "tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(inner) = host.strip_prefix('[') {
        // IPv6 literal: [::1]:5000
        let Some((addr, rest)) = inner.split_once(']') else {
            return Err(format!("registry host {host:?} has an unclosed '['"));
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "registry host {host:?} is not a valid IPv6 address"
            ));
        }
        match rest {
            "" => return Ok(()),
            r => match r.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return Err(format!("registry host {host:?} has junk after ']'")),
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!("registry host {host:?} is not a valid host name"));
    }
    if let Some(port) = port {
        if port.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("registry host {host:?} has an invalid port"));
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository name is empty".into());
    }
    for component in path.split('/') {
        check_component(component).map_err(|why| format!("repository {path:?}: {why}"))?;
    }
    Ok(())
}

/// One path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("it has an empty path component".into());
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(format!("{c:?} must be lowercase"));
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!("{c:?} must start and end with a letter or digit"));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !valid {
            return Err(format!("{c:?} has the invalid separator {sep:?}"));
        }
    }
    Ok(())
}

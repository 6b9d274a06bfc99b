//! Image references with Docker's normalization rules.

use std::fmt;
use std::str::FromStr;

use crate::error::{ComponentProblem, Error, ReferenceProblem};

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
        let bad = |reason: ReferenceProblem| Error::InvalidReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(bad(ReferenceProblem::Empty));
        }
        if input.len() > 4096 {
            return Err(bad(ReferenceProblem::TooLong));
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
            return Err(bad(ReferenceProblem::NameTooLong));
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

fn parse_digest(text: &str) -> Result<String, ReferenceProblem> {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return Err(ReferenceProblem::DigestNoAlgorithm {
            digest: text.to_string(),
        });
    };
    let (algorithm, hex_len) = match algorithm {
        "sha256" => ("sha256", 64),
        "sha384" => ("sha384", 96),
        "sha512" => ("sha512", 128),
        _ => {
            return Err(ReferenceProblem::DigestAlgorithm {
                algorithm: algorithm.to_string(),
            })
        }
    };
    if hex.len() != hex_len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceProblem::DigestHex {
            digest: text.to_string(),
            algorithm,
            hex_len,
        });
    }
    Ok(text.to_string())
}

fn check_tag(tag: &str) -> Result<(), ReferenceProblem> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(ReferenceProblem::Tag {
            tag: tag.to_string(),
        });
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), ReferenceProblem> {
    let host_text = || host.to_string();
    let (name, port) = if let Some(inner) = host.strip_prefix('[') {
        // IPv6 literal: [::1]:5000
        let Some((addr, rest)) = inner.split_once(']') else {
            return Err(ReferenceProblem::HostUnclosed { host: host_text() });
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(ReferenceProblem::HostIpv6 { host: host_text() });
        }
        match rest {
            "" => return Ok(()),
            r => match r.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return Err(ReferenceProblem::HostJunk { host: host_text() }),
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
        return Err(ReferenceProblem::HostName { host: host_text() });
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|source| ReferenceProblem::HostPort {
                host: host_text(),
                source,
            })?;
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ReferenceProblem> {
    if path.is_empty() {
        return Err(ReferenceProblem::EmptyRepository);
    }
    for component in path.split('/') {
        check_component(component).map_err(|problem| ReferenceProblem::Repository {
            path: path.to_string(),
            problem,
        })?;
    }
    Ok(())
}

/// One path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn check_component(c: &str) -> Result<(), ComponentProblem> {
    if c.is_empty() {
        return Err(ComponentProblem::Empty);
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(ComponentProblem::Uppercase(c.to_string()));
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(ComponentProblem::Edge(c.to_string()));
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
            return Err(ComponentProblem::Separator {
                component: c.to_string(),
                separator: sep.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn problem(input: &str) -> (String, ReferenceProblem) {
        match Reference::parse(input) {
            Err(e @ Error::InvalidReference { .. }) => {
                let text = e.to_string();
                let Error::InvalidReference { reason, .. } = e else {
                    unreachable!()
                };
                (text, reason)
            }
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn the_port_parse_error_is_the_source() {
        let (text, reason) = problem("localhost:99999/a");
        assert_eq!(
            text,
            r#"invalid image reference "localhost:99999/a": registry host "localhost:99999" has an invalid port"#
        );
        let ReferenceProblem::HostPort { ref source, .. } = reason else {
            panic!("{reason:?}")
        };
        assert_eq!(source, &"99999".parse::<u16>().unwrap_err());
        let e = Reference::parse("localhost:99999/a").unwrap_err();
        let port = e.source().and_then(|s| s.source()).map(|s| s.to_string());
        assert_eq!(port, Some(source.to_string()));
    }

    #[test]
    fn a_component_problem_names_the_part() {
        let (text, reason) = problem("a/b_-c");
        assert_eq!(
            text,
            r#"invalid image reference "a/b_-c": repository "a/b_-c": "b_-c" has the invalid separator "_-""#
        );
        assert_eq!(
            reason,
            ReferenceProblem::Repository {
                path: "a/b_-c".into(),
                problem: ComponentProblem::Separator {
                    component: "b_-c".into(),
                    separator: "_-".into(),
                },
            }
        );
        assert_eq!(
            problem("a@sha256:abc").0,
            r#"invalid image reference "a@sha256:abc": digest "sha256:abc" must be 64 lowercase hexadecimal characters after sha256:"#
        );
        assert_eq!(
            problem("A").0,
            r#"invalid image reference "A": repository "A": "A" must be lowercase"#
        );
    }
}

//! External build caches (`--cache-to`, `--cache-from`): what the flags
//! ask for and the format of an exported cache.
//!
//! An exported cache is an OCI image manifest whose config is a cache
//! config ([`CACHE_CONFIG_MEDIA_TYPE`], JSON: the layers, and one record
//! per op result mapping its cache key to the layer the op added and the
//! time its history entry says) and whose layers are the layer blobs. It
//! is kept as an OCI image layout (`type=local`) or pushed to a registry
//! (`type=registry`); `type=inline` puts the cache config into the image
//! config itself under [`INLINE_CACHE_KEY`], referring to the image's own
//! layers. Keys are portable (see `cache`): the same op on the same inputs
//! has the same key on every machine, so a cache exported by one builder
//! gives hits on another.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kbuild_image::{Descriptor, Digest};
use serde::{Deserialize, Serialize};

use crate::options::{err as bad, split_csv, OptionError, OptionProblem};

/// Media type of the cache config blob (the config of a cache manifest).
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kubectl-build.cache.config.v1+json";

/// The image config field holding an inline cache (BuildKit's name).
pub const INLINE_CACHE_KEY: &str = "moby.buildkit.cache.v0";

/// Which op results a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Only the steps of the images built (BuildKit's default).
    #[default]
    Min,
    /// Every step, builder stages included.
    Max,
}

/// Where `--cache-to` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDestination {
    /// An OCI image layout directory (`type=local,dest=DIR`), the cache
    /// under `tag` in its `index.json`.
    Local {
        /// The directory.
        dest: PathBuf,
        /// The tag (`tag=`, default `latest`).
        tag: String,
    },
    /// A registry reference (`type=registry,ref=REF`).
    Registry {
        /// The reference.
        reference: String,
    },
    /// The image config (`type=inline`).
    Inline,
}

/// One `--cache-to` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    /// Where.
    pub destination: CacheDestination,
    /// `mode=min|max`.
    pub mode: CacheMode,
    /// `ignore-error=true`: a failed export is a warning.
    pub ignore_error: bool,
}

/// One `--cache-from` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    /// An OCI image layout written by `--cache-to type=local`.
    Local {
        /// The directory (`src=`).
        src: PathBuf,
        /// The tag (`tag=`, default `latest`).
        tag: String,
    },
    /// A cache manifest pushed by `--cache-to type=registry`, or an image
    /// with an inline cache.
    Registry {
        /// The reference (`ref=`).
        reference: String,
    },
}

impl std::fmt::Display for CacheFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheFrom::Local { src, .. } => write!(f, "type=local,src={}", src.display()),
            CacheFrom::Registry { reference } => write!(f, "type=registry,ref={reference}"),
        }
    }
}

impl std::fmt::Display for CacheTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.destination {
            CacheDestination::Local { dest, .. } => write!(f, "type=local,dest={}", dest.display()),
            CacheDestination::Registry { reference } => write!(f, "type=registry,ref={reference}"),
            CacheDestination::Inline => f.write_str("type=inline"),
        }
    }
}

/// `key=value` fields of a CSV flag value; keys lowercased.
fn fields(flag: &'static str, spec: &str) -> Result<Vec<(String, String)>, OptionError> {
    split_csv(spec)
        .into_iter()
        .map(|field| {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| bad(flag, spec, OptionProblem::NotKeyValue(field.clone())))?;
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn parse_bool(flag: &'static str, spec: &str, key: &str, v: &str) -> Result<bool, OptionError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(
            flag,
            spec,
            OptionProblem::CacheNotBool {
                key: key.to_string(),
                value: v.to_string(),
            },
        )),
    }
}

/// Attributes buildx accepts that change nothing here: what we always do.
fn always_true(flag: &'static str, spec: &str, key: &str, v: &str) -> Result<(), OptionError> {
    if parse_bool(flag, spec, key, v)? {
        Ok(())
    } else {
        let key = key.to_string();
        Err(bad(flag, spec, OptionProblem::CacheAlwaysTrue(key)))
    }
}

impl CacheTo {
    /// Parse one `--cache-to` value as buildx does: `type=registry,ref=REF`,
    /// `type=local,dest=DIR`, `type=inline`, with `mode=min|max`,
    /// `ignore-error=true`, `tag=` (local).
    pub fn parse(spec: &str) -> Result<CacheTo, OptionError> {
        const FLAG: &str = "--cache-to";
        if !spec.contains('=') {
            return Err(bad(FLAG, spec, OptionProblem::CacheToShape));
        }
        let mut kind = None;
        let (mut dest, mut reference, mut tag, mut mode) = (None, None, None, None);
        let mut ignore_error = false;
        let mut unknown = None;
        for (k, v) in fields(FLAG, spec)? {
            match k.as_str() {
                "type" => kind = Some(v),
                "dest" => dest = Some(PathBuf::from(v)),
                "ref" => reference = Some(v),
                "tag" => tag = Some(v),
                "mode" => {
                    mode = Some(match v.as_str() {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        _ => return Err(bad(FLAG, spec, OptionProblem::CacheMode(v))),
                    })
                }
                "ignore-error" => ignore_error = parse_bool(FLAG, spec, &k, &v)?,
                "image-manifest" | "oci-mediatypes" => always_true(FLAG, spec, &k, &v)?,
                _ => unknown = unknown.or(Some(k.clone())),
            }
        }
        let kind = kind.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheToNoType))?;
        if !matches!(kind.as_str(), "local" | "registry" | "inline") {
            return Err(bad(FLAG, spec, OptionProblem::CacheToType(kind)));
        }
        if let Some(other) = unknown {
            return Err(bad(FLAG, spec, OptionProblem::CacheToAttribute(other)));
        }
        let destination = destination(spec, &kind, dest, reference, tag, mode)?;
        Ok(CacheTo {
            destination,
            mode: mode.unwrap_or_default(),
            ignore_error,
        })
    }
}

/// Where `--cache-to` of type `kind` writes, with the attributes that
/// type takes and no other.
fn destination(
    spec: &str,
    kind: &str,
    dest: Option<PathBuf>,
    reference: Option<String>,
    tag: Option<String>,
    mode: Option<CacheMode>,
) -> Result<CacheDestination, OptionError> {
    const FLAG: &str = "--cache-to";
    let only = |attribute: &'static str, set: bool, kind: &'static str| {
        if set {
            Err(bad(
                FLAG,
                spec,
                OptionProblem::CacheAttributeNotFor { attribute, kind },
            ))
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        "local" => {
            only("ref", reference.is_some(), "local")?;
            CacheDestination::Local {
                dest: dest.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheLocalDest))?,
                tag: tag.unwrap_or_else(|| "latest".to_string()),
            }
        }
        "registry" => {
            only("dest", dest.is_some(), "registry")?;
            only("tag", tag.is_some(), "registry")?;
            let reference =
                reference.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheRegistryRef))?;
            check_reference(FLAG, spec, &reference)?;
            CacheDestination::Registry { reference }
        }
        "inline" => {
            only("dest", dest.is_some(), "inline")?;
            only("ref", reference.is_some(), "inline")?;
            only("tag", tag.is_some(), "inline")?;
            if mode == Some(CacheMode::Max) {
                return Err(bad(FLAG, spec, OptionProblem::InlineModeMax));
            }
            CacheDestination::Inline
        }
        other => {
            let other = other.to_string();
            return Err(bad(FLAG, spec, OptionProblem::CacheToType(other)));
        }
    })
}

fn check_reference(flag: &'static str, spec: &str, reference: &str) -> Result<(), OptionError> {
    kbuild_registry::Reference::parse(reference)
        .map(|_| ())
        .map_err(|source| {
            let reference = reference.to_string();
            let source = Box::new(source);
            bad(
                flag,
                spec,
                OptionProblem::CacheReference { reference, source },
            )
        })
}

impl CacheFrom {
    /// Parse one `--cache-from` value as buildx does: `type=registry,ref=REF`,
    /// `type=local,src=DIR[,tag=T]`, or a bare `REF` (a registry cache or
    /// an image with an inline cache).
    pub fn parse(spec: &str) -> Result<CacheFrom, OptionError> {
        const FLAG: &str = "--cache-from";
        if !spec.contains('=') {
            let reference = spec.trim().to_string();
            check_reference(FLAG, spec, &reference)?;
            return Ok(CacheFrom::Registry { reference });
        }
        let (mut kind, mut src, mut reference, mut tag) = (None, None, None, None);
        let mut unknown = None;
        for (k, v) in fields(FLAG, spec)? {
            match k.as_str() {
                "type" => kind = Some(v),
                "src" => src = Some(PathBuf::from(v)),
                "ref" => reference = Some(v),
                "tag" => tag = Some(v),
                _ => unknown = unknown.or(Some(k.clone())),
            }
        }
        let kind = kind.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheFromNoType))?;
        if !matches!(kind.as_str(), "local" | "registry") {
            return Err(bad(FLAG, spec, OptionProblem::CacheFromType(kind)));
        }
        if let Some(other) = unknown {
            return Err(bad(FLAG, spec, OptionProblem::CacheFromAttribute(other)));
        }
        match kind.as_str() {
            "local" => {
                if reference.is_some() {
                    let (attribute, kind) = ("ref", "local");
                    let problem = OptionProblem::CacheAttributeNotFor { attribute, kind };
                    return Err(bad(FLAG, spec, problem));
                }
                Ok(CacheFrom::Local {
                    src: src.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheLocalSrc))?,
                    tag: tag.unwrap_or_else(|| "latest".to_string()),
                })
            }
            "registry" => {
                if src.is_some() || tag.is_some() {
                    return Err(bad(FLAG, spec, OptionProblem::CacheFromRegistryLocal));
                }
                let reference =
                    reference.ok_or_else(|| bad(FLAG, spec, OptionProblem::CacheRegistryRef))?;
                check_reference(FLAG, spec, &reference)?;
                Ok(CacheFrom::Registry { reference })
            }
            other => {
                let other = other.to_string();
                Err(bad(FLAG, spec, OptionProblem::CacheFromType(other)))
            }
        }
    }
}

/// Parse a build's `--cache-from` and `--cache-to` values, in order: what
/// the command line and the daemon (which gets the same strings in the
/// build's start) both read. The first value that does not parse is the
/// error.
pub fn parse_caches<F, T>(
    cache_from: &[F],
    cache_to: &[T],
) -> Result<(Vec<CacheFrom>, Vec<CacheTo>), OptionError>
where
    F: AsRef<str>,
    T: AsRef<str>,
{
    let from = cache_from
        .iter()
        .map(|s| CacheFrom::parse(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let to = cache_to
        .iter()
        .map(|s| CacheTo::parse(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((from, to))
}

/// The cache config: layers, and one record per op result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheConfig {
    /// Format version ([`FORMAT`]).
    pub version: u32,
    /// The layer blobs, sorted by digest.
    pub layers: Vec<CacheLayer>,
    /// The records, sorted by key.
    pub records: Vec<CacheRecord>,
}

/// The cache config format this builder writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// A layer blob of a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheLayer {
    /// The blob (media type, digest, size).
    pub blob: Descriptor,
    /// The digest of its uncompressed tar.
    pub diff_id: Digest,
}

/// The result of one op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CacheRecord {
    /// The op's cache key (hex sha256).
    pub key: String,
    /// Index into `layers` of the layer the op added; none for ops that
    /// change only the config or nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// `created` of the history entry the op wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// An op result as the build saw it, for export.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// Its cache key.
    pub key: String,
    /// The layer it added.
    pub layer: Option<crate::layer::LayerRef>,
    /// Its history entry's time.
    pub created: Option<String>,
    /// Whether its state goes into an image (`mode=min` exports only those).
    pub in_image: bool,
}

impl CacheConfig {
    /// The config of `records`, each key once, layers deduplicated.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Recorded>) -> CacheConfig {
        let mut by_key: BTreeMap<&str, &Recorded> = BTreeMap::new();
        for r in records {
            by_key.entry(r.key.as_str()).or_insert(r);
        }
        let mut layers: BTreeMap<Digest, CacheLayer> = BTreeMap::new();
        for r in by_key.values() {
            if let Some(l) = &r.layer {
                layers
                    .entry(l.descriptor.digest)
                    .or_insert_with(|| CacheLayer {
                        blob: Descriptor::new(
                            l.descriptor.media_type.clone(),
                            l.descriptor.digest,
                            l.descriptor.size,
                        ),
                        diff_id: l.diff_id,
                    });
            }
        }
        let index: BTreeMap<Digest, usize> =
            layers.keys().enumerate().map(|(i, d)| (*d, i)).collect();
        CacheConfig {
            version: FORMAT,
            records: by_key
                .values()
                .map(|r| CacheRecord {
                    key: r.key.clone(),
                    layer: r
                        .layer
                        .as_ref()
                        .and_then(|l| index.get(&l.descriptor.digest).copied()),
                    created: r.created.clone(),
                })
                .collect(),
            layers: layers.into_values().collect(),
        }
    }

    /// Check what an importer relies on: the version and every layer index.
    pub fn check(&self) -> Result<(), CacheConfigError> {
        if self.version != FORMAT {
            return Err(CacheConfigError::Version(self.version));
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| r.layer.is_some_and(|i| i >= self.layers.len()))
        {
            return Err(CacheConfigError::UnlistedLayer(r.key.clone()));
        }
        Ok(())
    }
}

/// A cache config an importer cannot rely on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheConfigError {
    /// A format version this builder does not read.
    #[error("cache format version {0} (this builder reads {FORMAT})")]
    Version(u32),
    /// A record (by key) whose layer index is beyond the listed layers.
    #[error("record {0} names a layer that is not listed")]
    UnlistedLayer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_caches_reads_both_flags_in_order_and_names_the_bad_one() {
        let (from, to) = parse_caches(
            &["r.example/c:a", "type=local,src=/c"],
            &["type=inline".to_string()],
        )
        .unwrap();
        assert_eq!(
            from,
            [
                CacheFrom::Registry {
                    reference: "r.example/c:a".into()
                },
                CacheFrom::Local {
                    src: "/c".into(),
                    tag: "latest".into()
                }
            ]
        );
        assert_eq!(to.len(), 1);
        assert_eq!(to[0].destination, CacheDestination::Inline);
        let none: [&str; 0] = [];
        let e = parse_caches(&none, &["type=nowhere"]).unwrap_err();
        assert_eq!((e.flag, e.value.as_str()), ("--cache-to", "type=nowhere"));
        let e = parse_caches(&["type=local"], &["type=nowhere"]).unwrap_err();
        assert_eq!(e.flag, "--cache-from");
    }

    #[test]
    fn cache_to_parses_like_buildx() {
        let c = CacheTo::parse("type=local,dest=/tmp/c,mode=max").unwrap();
        assert_eq!(c.mode, CacheMode::Max);
        assert_eq!(
            c.destination,
            CacheDestination::Local {
                dest: "/tmp/c".into(),
                tag: "latest".into()
            }
        );
        let c = CacheTo::parse("type=registry,ref=localhost:5000/a/cache:1").unwrap();
        assert_eq!(c.mode, CacheMode::Min);
        assert!(matches!(c.destination, CacheDestination::Registry { .. }));
        assert_eq!(
            CacheTo::parse("type=inline").unwrap().destination,
            CacheDestination::Inline
        );
        assert!(
            CacheTo::parse("type=registry,ref=r/a:1,ignore-error=true")
                .unwrap()
                .ignore_error
        );
        for (bad, says) in [
            ("type=gha", "unsupported cache type \"gha\""),
            ("type=local", "needs dest=DIR"),
            ("type=local,dest=/x,mode=all", "mode=\"all\""),
            (
                "type=local,dest=/x,colour=red",
                "unknown attribute \"colour\"",
            ),
            ("type=inline,mode=max", "mode=min"),
            ("type=registry", "needs ref=REF"),
            ("type=registry,ref=Bad Ref", "ref="),
            ("localhost:5000/x", "give type="),
            ("type=local,dest=/x,image-manifest=false", "not supported"),
        ] {
            let e = CacheTo::parse(bad).unwrap_err();
            assert_eq!(e.flag, "--cache-to");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn cache_from_parses_like_buildx() {
        assert_eq!(
            CacheFrom::parse("localhost:5000/a/app:1").unwrap(),
            CacheFrom::Registry {
                reference: "localhost:5000/a/app:1".into()
            }
        );
        assert_eq!(
            CacheFrom::parse("type=local,src=/c,tag=t").unwrap(),
            CacheFrom::Local {
                src: "/c".into(),
                tag: "t".into()
            }
        );
        for (bad, says) in [
            ("type=s3,bucket=x", "unsupported cache type \"s3\""),
            ("type=local", "needs src=DIR"),
            (
                "type=registry,ref=r/a,mode=max",
                "unknown attribute \"mode\"",
            ),
            ("type=local,src=/x,ref=r/a", "ref= does not apply"),
        ] {
            let e = CacheFrom::parse(bad).unwrap_err();
            assert_eq!(e.flag, "--cache-from");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn config_dedups_and_checks() {
        let layer = crate::layer::LayerRef {
            diff_id: Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            descriptor: Descriptor::new(
                kbuild_image::MEDIA_TYPE_OCI_LAYER_GZIP,
                Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap(),
                3,
            ),
        };
        let rec = |key: &str, layer: Option<crate::layer::LayerRef>| Recorded {
            key: key.into(),
            layer,
            created: Some("2024-01-01T00:00:00Z".into()),
            in_image: true,
        };
        let records = [
            rec("k2", Some(layer.clone())),
            rec("k1", Some(layer)),
            rec("k2", None),
            rec("k3", None),
        ];
        let c = CacheConfig::of(records.iter());
        assert_eq!(c.layers.len(), 1);
        let keys: Vec<(&str, Option<usize>)> = c
            .records
            .iter()
            .map(|r| (r.key.as_str(), r.layer))
            .collect();
        assert_eq!(keys, [("k1", Some(0)), ("k2", Some(0)), ("k3", None)]);
        assert!(c.check().is_ok());
        let mut broken = c.clone();
        broken.records[0].layer = Some(5);
        assert!(broken.check().is_err());
        broken.version = 9;
        assert!(broken.check().is_err());
    }
}

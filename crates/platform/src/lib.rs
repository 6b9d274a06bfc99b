//! `kbuild-platform` owns platform strings for kubectl-build: parsing,
//! normalization, formatting, matching and the host platform. Nobody else
//! parses `"linux/arm/v7"`. The semantics follow containerd's `platforms`
//! package; where this crate differs or chooses, the item docs say so.
//!
//! # Grammar
//!
//! A platform *specifier* is one of
//!
//! ```text
//! specifier  = os-part | arch | os-part "/" arch [ "/" variant ]
//! os-part    = os [ "(" os-version ")" ]
//! os         = 1*( ALPHA / DIGIT / "_" / "-" )
//! arch, variant, os-version = 1*( ALPHA / DIGIT / "_" / "-" / "." )
//! ```
//!
//! * A single component is first tried as an operating system (`linux`,
//!   `windows`, `darwin`, ... — Go's `GOOS` list): the architecture (and on
//!   32-bit arm its variant) is then the host's. Otherwise it is tried as an
//!   architecture (Go's `GOARCH` list, after normalization): `arm64` alone
//!   means `<host os>/arm64`. Anything else is an error.
//! * With two or three components the os/arch pair is taken as given, known
//!   or not (as containerd does), after normalization.
//! * `windows(10.0.17763)/amd64` sets [`Platform::os_version`]. `os.features`
//!   have no specifier syntax; they come only from OCI JSON.
//! * Wildcards (`*`), empty components, spaces and a fourth component are
//!   errors; the error names the input and lists [`SUPPORTED`].
//!
//! # Normalization
//!
//! Everything except the os version is lowercased, then:
//!
//! | input                                  | normalized          |
//! |----------------------------------------|---------------------|
//! | `macos`                                | `darwin` (os)       |
//! | `x86_64`, `x86-64`, `amd64`            | `amd64`             |
//! | `amd64/v1`                             | `amd64` (v2, v3, v4 stay) |
//! | `i386`, `i486`, `i586`, `i686`         | `386` (variant dropped) |
//! | `aarch64`, `arm64`                     | `arm64`             |
//! | `arm64/v8`, `arm64/8`, `arm64/v8.0`    | `arm64`             |
//! | `arm64/9`, `arm64/v9.0`, `arm64/8.2`   | `arm64/v9`, `arm64/v9`, `arm64/v8.2` |
//! | `arm`, `arm/7`, `armhf`                | `arm/v7`            |
//! | `arm/5`, `arm/6`, `arm/8`              | `arm/v5`, `arm/v6`, `arm/v8` |
//! | `armel`                                | `arm/v6`            |
//!
//! Unlike containerd's `Parse`, which leaves `arm/v7` as plain `arm` until
//! `Normalize` is called, [`Platform::parse`] returns the normalized form
//! (`Parse` followed by `Normalize`), so [`Display`](std::fmt::Display) of a
//! parsed 32-bit arm platform always shows its variant: `linux/arm/v7`.
//!
//! # Matching
//!
//! [`Platform::matches`] is containerd's `Only()`: the wanted platform accepts
//! an ordered list of compatible platforms (`arm64` accepts `arm64`, then
//! `arm/v8`, `arm/v7`, `arm/v6`, `arm/v5`; `amd64` accepts `amd64` then
//! `386`), and [`Platform::best_match`] picks the candidate earliest in that
//! order. [`Platform::matches_strict`] is `OnlyStrict()`: exact after
//! normalization. One deliberate difference: a 32-bit arm variant outside
//! `v5`..`v8` (`arm/v9`) has no fallbacks, so it never resolves to an
//! `arm/v7` image.
//!
//! # Known platforms
//!
//! [`Platform::parse`] accepts any well-formed `os/arch[/variant]`, as
//! containerd does. [`Platform::check_known`] tells the ones that exist
//! (Go's `GOOS`/`GOARCH` lists and the variants each architecture has) from
//! typos such as `linux/arm65`, `foo/bar` or `linux/arm/v9`.
//!
//! # Example
//!
//! ```
//! use kbuild_platform::Platform;
//!
//! let wanted = Platform::parse("linux/aarch64")?;
//! assert_eq!(wanted.to_string(), "linux/arm64");
//!
//! let index: Vec<Platform> = ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"]
//!     .iter()
//!     .map(|s| s.parse())
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(wanted.best_match(&index), Some(2));
//! assert!(wanted.matches(&index[1])); // arm64 hosts run arm/v7 binaries
//! assert!(!wanted.matches_strict(&index[1]));
//! # Ok::<(), kbuild_platform::Error>(())
//! ```

#![deny(missing_docs)]

mod error;
mod host;
mod matcher;
mod parse;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub use error::{Error, ErrorKind};
pub use host::arm_variant_from_cpuinfo;
pub use parse::parse_list;

/// The platforms kubectl-build builds for and tests; listed in parse errors.
pub const SUPPORTED: &[&str] = &[
    "linux/amd64",
    "linux/386",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm/v8",
    "linux/arm64",
    "linux/ppc64le",
    "linux/s390x",
    "windows/amd64",
];

/// An OCI platform: what an image or a runtime is built for.
///
/// Serializes with the OCI JSON field names (`os`, `architecture`,
/// `variant`, `os.version`, `os.features`), leaving out empty ones.
/// Deserialization keeps the values as found (an empty `variant` or
/// `os.version` string becomes `None`); call [`Platform::normalized`] before
/// comparing fields directly. The matchers normalize on their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, Go `GOOS` spelling: `linux`, `windows`.
    pub os: String,
    /// CPU architecture, Go `GOARCH` spelling: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// CPU variant: `v7` for `arm/v7`, `v3` for `amd64/v3`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub variant: Option<String>,
    /// OS version, used by Windows images: `10.0.17763.1234`.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty"
    )]
    pub os_version: Option<String>,
    /// Required OS features, used by Windows images: `win32k`.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|s| !s.is_empty()))
}

impl Platform {
    /// Parses and normalizes a platform specifier (see the crate docs for
    /// the grammar and the normalization table).
    pub fn parse(specifier: &str) -> Result<Platform, Error> {
        parse::parse(specifier)
    }

    /// A platform from its parts, normalized (`("linux", "aarch64", None)`
    /// gives `linux/arm64`). No validation: use [`Platform::parse`] for input.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
            os_features: Vec::new(),
        }
        .normalized()
    }

    /// The platform this process runs on, in Go names (`x86_64` is `amd64`).
    ///
    /// On 32-bit arm Linux the variant is read from `/proc/cpuinfo` the way
    /// containerd does it (see [`arm_variant_from_cpuinfo`]); when that file
    /// cannot be read or says nothing usable, `v7` is assumed. This is the
    /// only I/O in the crate. arm64 hosts report no variant (containerd reads
    /// `v8`, which normalization drops); amd64 hosts report no micro-
    /// architecture level. The Windows os version is not filled in.
    pub fn host() -> Platform {
        host::host()
    }

    /// This platform normalized as [`Platform::parse`] would (lowercase,
    /// `aarch64` → `arm64`, `arm` → `arm/v7`, ...). Empty variant or os
    /// version strings become `None`.
    pub fn normalized(&self) -> Platform {
        parse::normalize(self)
    }

    /// `os/arch[/variant]` with the os version when there is one:
    /// `windows(10.0.17763)/amd64`. Parses back to the same platform
    /// (containerd's `FormatAll`).
    pub fn format_all(&self) -> String {
        match self.os_version.as_deref() {
            Some(v) if !v.is_empty() => {
                let mut out = format!("{}({})", self.os, v);
                self.push_arch(&mut out);
                out
            }
            _ => self.to_string(),
        }
    }

    /// Whether this platform exists, as opposed to being merely well formed:
    /// its os is one of Go's `GOOS` values, its architecture one of Go's
    /// `GOARCH` values, and its variant (if any) one that architecture has:
    /// `v5` to `v8` for `arm`, `v8.1` to `v8.9` and `v9` to `v9.5` for
    /// `arm64`, `v2` to `v4` for `amd64`, none for the others. `linux/arm65`,
    /// `foo/bar` and `linux/arm/v9` are well formed ([`Platform::parse`]
    /// accepts them, as containerd does) but unknown.
    ///
    /// The error names the platform and lists [`SUPPORTED`].
    pub fn check_known(&self) -> Result<(), Error> {
        parse::check_known(self).map_err(|kind| Error::new(&self.format_all(), kind))
    }

    /// Whether this platform (normalized) is one of [`SUPPORTED`].
    pub fn is_supported(&self) -> bool {
        let formatted = self.normalized().to_string();
        SUPPORTED.contains(&formatted.as_str())
    }

    /// containerd's `Only()`: whether a runtime for `self` can run an image
    /// for `candidate`. Same os; the architecture and variant must be one
    /// of the compatible list of `self`:
    ///
    /// * `arm/vN` accepts `arm/vN` down to `arm/v5` for the known variants
    ///   (`v5` to `v8`); an unknown one such as `arm/v9` accepts only itself
    ///   (containerd would accept `arm/v8` down to `arm/v5` for it, which
    ///   turns a typo into a build from the wrong base image);
    /// * `arm64` (= `arm64/v8`) accepts `arm64`, then `arm/v8`, `arm/v7`,
    ///   `arm/v6`, `arm/v5`; `arm64/v8.x` and `arm64/v9.x` also accept the
    ///   earlier arm64 minor versions first (v9.x accepts v8.(x+5));
    /// * `amd64/vN` accepts `amd64/vN` down to `amd64`, then `386`;
    /// * anything else only itself.
    ///
    /// Like containerd, the 32-bit arm fallbacks are offered unconditionally:
    /// whether a particular arm64 machine can execute 32-bit code is a
    /// property of the machine (see `kbuild-worker`'s `binfmt`), not of the
    /// platform strings.
    ///
    /// Windows: when `self.os` is `windows` and both sides have an os
    /// version, they must be compatible as in containerd's Windows matcher:
    /// equal major and minor; below build 20348 (Windows Server 2022) the
    /// build numbers must be equal (a prefix match on `major.minor.build`,
    /// the revision is free); from 20348 on, a host of build `B` accepts
    /// container builds `20348..=B`. containerd applies this only when it
    /// runs on Windows; this crate applies it whenever the wanted os is
    /// `windows`, because a builder picks Windows images from Linux too.
    /// A missing os version on either side matches.
    ///
    /// `os.features`: when `self` lists features, the candidate must list
    /// all of them; when `self` lists none, any candidate's features match.
    pub fn matches(&self, candidate: &Platform) -> bool {
        matcher::rank(self, candidate, false).is_some()
    }

    /// containerd's `OnlyStrict()`: like [`Platform::matches`] but without
    /// the compatible fallbacks, so `arm/v7` does not accept `arm/v6` and
    /// `amd64` does not accept `386`. Both sides are normalized first, so
    /// `arm64` accepts `arm64/v8`.
    pub fn matches_strict(&self, candidate: &Platform) -> bool {
        matcher::rank(self, candidate, true).is_some()
    }

    /// The index of the candidate [`Platform::matches`] likes best, or `None`
    /// when none matches: the candidate earliest in the compatible list
    /// (exact first, then descending variants); for Windows, among
    /// candidates equally placed, the one with the highest revision (fourth
    /// os version number); remaining ties go to the earlier candidate.
    pub fn best_match<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a Platform>,
    ) -> Option<usize> {
        matcher::best(self, candidates)
    }

    fn push_arch(&self, out: &mut String) {
        if !self.architecture.is_empty() {
            out.push('/');
            out.push_str(&self.architecture);
        }
        if let Some(variant) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            out.push('/');
            out.push_str(variant);
        }
    }
}

/// `os/arch[/variant]`, without the os version (containerd's `Format`); an
/// empty os formats as `unknown`. See [`Platform::format_all`].
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.os.is_empty() {
            return f.write_str("unknown");
        }
        let mut out = self.os.clone();
        self.push_arch(&mut out);
        f.write_str(&out)
    }
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform, Error> {
        Platform::parse(s)
    }
}

use crate::error::{Error, ErrorKind};
use crate::{host, Platform};

/// Go's `GOOS` values (containerd's list), after normalization.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// Go's `GOARCH` values (containerd's list), after normalization.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// The variants a 32-bit arm platform can have (`GOARM`, plus ARMv8's
/// 32-bit mode).
const ARM_VARIANTS: &[&str] = &["v5", "v6", "v7", "v8"];

/// The variants of arm64 after normalization (plain `arm64` is v8.0).
const ARM64_VARIANTS: &[&str] = &[
    "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9", "v9", "v9.1", "v9.2",
    "v9.3", "v9.4", "v9.5",
];

/// The micro-architecture levels of amd64 after normalization (plain
/// `amd64` is v1).
const AMD64_VARIANTS: &[&str] = &["v2", "v3", "v4"];

/// Whether `p` names a platform that exists: a known os, a known
/// architecture and, when there is a variant, one that architecture has.
pub(crate) fn check_known(p: &Platform) -> Result<(), ErrorKind> {
    let p = normalize(p);
    if !KNOWN_OS.contains(&p.os.as_str()) {
        return Err(ErrorKind::UnknownOs(p.os));
    }
    if !KNOWN_ARCH.contains(&p.architecture.as_str()) {
        return Err(ErrorKind::UnknownArch(p.architecture));
    }
    let Some(variant) = p.variant else {
        return Ok(());
    };
    let known: &'static [&'static str] = match p.architecture.as_str() {
        "arm" => ARM_VARIANTS,
        "arm64" => ARM64_VARIANTS,
        "amd64" => AMD64_VARIANTS,
        _ => &[],
    };
    if known.contains(&variant.as_str()) {
        Ok(())
    } else {
        Err(ErrorKind::UnknownVariant {
            architecture: p.architecture,
            variant,
            known,
        })
    }
}

pub(crate) fn parse(specifier: &str) -> Result<Platform, Error> {
    let fail = |kind| Err(Error::new(specifier, kind));
    if specifier.is_empty() {
        return fail(ErrorKind::Empty);
    }
    if specifier.contains('*') {
        return fail(ErrorKind::Wildcard);
    }
    let parts: Vec<&str> = specifier.splitn(4, '/').collect();
    if parts.len() > 3 {
        return fail(ErrorKind::TooManyComponents);
    }
    let Some((os_name, os_version)) = split_os_part(parts[0]) else {
        return fail(ErrorKind::InvalidOs(parts[0].to_string()));
    };
    if let Some(bad) = parts[1..].iter().find(|part| !is_component(part)) {
        return fail(ErrorKind::InvalidComponent(bad.to_string()));
    }
    let os = normalize_os(os_name);
    let os_version = os_version.filter(|v| !v.is_empty()).map(str::to_string);

    let (os, (architecture, variant)) = match parts[1..] {
        [] if KNOWN_OS.contains(&os.as_str()) => {
            let host = Platform::host();
            (os, (host.architecture, host.variant))
        }
        [] => {
            // Not an os: perhaps an architecture on the host's os. An os
            // version, "windows(1)", can only belong to an os.
            let arch = normalize_arch(parts[0], None);
            if os_version.is_some() || !KNOWN_ARCH.contains(&arch.0.as_str()) {
                return fail(ErrorKind::UnknownOsOrArch);
            }
            (host::host_os().to_string(), arch)
        }
        [arch] => (os, normalize_arch(arch, None)),
        [arch, variant] => (os, normalize_arch(arch, Some(variant))),
        _ => return fail(ErrorKind::TooManyComponents),
    };
    Ok(Platform {
        os,
        architecture,
        variant,
        os_version,
        os_features: Vec::new(),
    })
}

/// `os` or `os(version)`: os is `[A-Za-z0-9_-]+`, version `[A-Za-z0-9_.-]*`.
fn split_os_part(part: &str) -> Option<(&str, Option<&str>)> {
    let (name, version) = match part.split_once('(') {
        Some((name, rest)) => (name, Some(rest.strip_suffix(')')?)),
        None => (part, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let version_ok = version.map_or(true, |v| v.bytes().all(is_component_byte));
    (name_ok && version_ok).then_some((name, version))
}

fn is_component(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(is_component_byte)
}

fn is_component_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

pub(crate) fn normalize(p: &Platform) -> Platform {
    let os = if p.os.is_empty() {
        host::host_os().to_string()
    } else {
        normalize_os(&p.os)
    };
    let (architecture, variant) = normalize_arch(&p.architecture, p.variant.as_deref());
    Platform {
        os,
        architecture,
        variant,
        os_version: p.os_version.clone().filter(|v| !v.is_empty()),
        os_features: p.os_features.clone(),
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

/// The architecture table of the crate docs. Returns `(arch, variant)`.
pub(crate) fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    let v = |s: &str| Some(s.to_string());
    match arch.as_str() {
        "i386" | "i486" | "i586" | "i686" => ("386".to_string(), None),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = variant.filter(|v| v != "v1");
            ("amd64".to_string(), variant)
        }
        "aarch64" | "arm64" => ("arm64".to_string(), variant.and_then(arm64_variant)),
        "armhf" => ("arm".to_string(), v("v7")),
        "armel" => ("arm".to_string(), v("v6")),
        "arm" => {
            let variant = match variant.as_deref() {
                None | Some("7") => v("v7"),
                Some(n @ ("5" | "6" | "8")) => Some(format!("v{n}")),
                _ => variant,
            };
            ("arm".to_string(), variant)
        }
        _ => (arch, variant),
    }
}

/// `8`, `v8` and `v8.0` are plain arm64; numeric variants get their `v`
/// and lose a `.0` minor; anything else is kept as given.
fn arm64_variant(variant: String) -> Option<String> {
    let Some((major, minor)) = arm64_version(&variant) else {
        return Some(variant);
    };
    match (major, minor) {
        (8, 0) => None,
        (major, 0) => Some(format!("v{major}")),
        (major, minor) => Some(format!("v{major}.{minor}")),
    }
}

/// `[v]MAJOR[.MINOR]` as numbers, or `None` if the variant is not that.
pub(crate) fn arm64_version(variant: &str) -> Option<(u32, u32)> {
    let digits = variant.strip_prefix('v').unwrap_or(variant);
    let (major, minor) = match digits.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (digits, None),
    };
    let number = |s: &str| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u32>().ok()
        } else {
            None
        }
    };
    let major = number(major)?;
    let minor = match minor {
        Some(minor) => number(minor)?,
        None => 0,
    };
    Some((major, minor))
}

/// Parses a list of platforms separated by commas (and, within an item, by
/// whitespace): `"linux/amd64, linux/arm64 linux/arm/v7"`. Items are
/// trimmed, normalized and deduplicated keeping the first occurrence; an
/// empty item (`"a,,b"`, a trailing comma, an empty list) is an error.
///
/// ```
/// let list = kbuild_platform::parse_list("linux/amd64,linux/arm64 linux/x86_64")?;
/// let names: Vec<String> = list.iter().map(|p| p.to_string()).collect();
/// assert_eq!(names, ["linux/amd64", "linux/arm64"]);
/// # Ok::<(), kbuild_platform::Error>(())
/// ```
pub fn parse_list(list: &str) -> Result<Vec<Platform>, Error> {
    let mut platforms: Vec<Platform> = Vec::new();
    for (index, item) in list.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(Error::new(list, ErrorKind::EmptyListItem(index + 1)));
        }
        for word in item.split_whitespace() {
            let platform = parse(word)?;
            if !platforms.contains(&platform) {
                platforms.push(platform);
            }
        }
    }
    Ok(platforms)
}

use std::cmp::Reverse;

use crate::parse::{arm64_version, normalize_arch};
use crate::Platform;

/// Windows Server 2022 (ltsc2022): from this build on, a host runs container
/// images of any build from this one up to its own.
const WINDOWS_LTSC2022: u16 = 20348;

/// Where `candidate` sits in the preference order of `wanted`: its position
/// in the compatible list, then (Windows) the higher revision first.
type Rank = (usize, Reverse<u32>);

pub(crate) fn rank(wanted: &Platform, candidate: &Platform, strict: bool) -> Option<Rank> {
    let wanted = wanted.normalized();
    let candidate = candidate.normalized();
    if wanted.os != candidate.os {
        return None;
    }
    if !wanted
        .os_features
        .iter()
        .all(|f| candidate.os_features.contains(f))
    {
        return None;
    }
    let windows = wanted.os == "windows";
    if windows && !windows_versions_compatible(&wanted, &candidate) {
        return None;
    }
    let wanted_arch = (wanted.architecture, wanted.variant);
    let position = if strict {
        (wanted_arch == (candidate.architecture.clone(), candidate.variant.clone())).then_some(0)
    } else {
        let (arch, variant) = wanted_arch;
        compatible(&arch, variant.as_deref())
            .iter()
            .position(|(a, v)| *a == candidate.architecture && *v == candidate.variant)
    }?;
    let revision = if windows {
        candidate.os_version.as_deref().map_or(0, windows_revision)
    } else {
        0
    };
    Some((position, Reverse(revision)))
}

pub(crate) fn best<'a>(
    wanted: &Platform,
    candidates: impl IntoIterator<Item = &'a Platform>,
) -> Option<usize> {
    let mut best: Option<(Rank, usize)> = None;
    for (index, candidate) in candidates.into_iter().enumerate() {
        if let Some(r) = rank(wanted, candidate, false) {
            let better = match &best {
                Some((best_rank, _)) => r < *best_rank,
                None => true,
            };
            if better {
                best = Some((r, index));
            }
        }
    }
    best.map(|(_, index)| index)
}

/// containerd's platform vector: `(arch, variant)` pairs a runtime for
/// `arch/variant` accepts, best first, all normalized.
fn compatible(arch: &str, variant: Option<&str>) -> Vec<(String, Option<String>)> {
    let mut out = vec![(arch.to_string(), variant.map(str::to_string))];
    let push = |out: &mut Vec<_>, arch: &str, variant: String| {
        out.push(normalize_arch(arch, Some(&variant)));
    };
    match arch {
        "amd64" => {
            if let Some(level) = variant.and_then(numbered_variant) {
                // Levels stop at v4: a higher one runs what v4 and below
                // run, and the list stays short.
                for lower in (1..level.min(5)).rev() {
                    push(&mut out, "amd64", format!("v{lower}"));
                }
            }
            out.push(("386".to_string(), None));
        }
        "arm" => {
            // Only the real 32-bit arm versions fall back: arm/v9 is not an
            // arm/v8 that also runs v7 code, it is a typo.
            if let Some(version) = variant.and_then(numbered_variant).filter(|v| *v <= 8) {
                for lower in (5..version).rev() {
                    push(&mut out, "arm", format!("v{lower}"));
                }
            }
        }
        "arm64" => {
            let variant = variant.unwrap_or("v8");
            if let Some((mut major, minor)) = arm64_version(variant).filter(|v| v.0 >= 8) {
                // No minor above .9 exists: a larger one (`v8.4000000000`)
                // runs what .9 and below run, and the list stays short.
                let mut minor = minor.min(10);
                if major == 9 {
                    for lower in (0..minor).rev() {
                        push(&mut out, "arm64", format!("v9.{lower}"));
                    }
                    // v9.0 branched from v8.5: v9.x is compatible with v8.(x+5).
                    minor = (minor + 5).min(9);
                    major = 8;
                    push(&mut out, "arm64", format!("v8.{minor}"));
                }
                if major == 8 {
                    for lower in (0..minor).rev() {
                        push(&mut out, "arm64", format!("v8.{lower}"));
                    }
                }
            }
            // Every arm64 v8.x / v9.x runs 32-bit arm up to v8.
            let arm = if variant.starts_with("v8.") || variant.starts_with("v9.") {
                "v8"
            } else {
                variant
            };
            let (arm_arch, arm_variant) = normalize_arch("arm", Some(arm));
            out.extend(compatible(&arm_arch, arm_variant.as_deref()));
        }
        _ => {}
    }
    out
}

/// `vN` as `N`.
fn numbered_variant(variant: &str) -> Option<u32> {
    let digits = variant.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
struct WindowsVersion {
    major: u8,
    minor: u8,
    build: u16,
}

/// `major.minor.build[.revision]`; anything unparsable counts as unknown
/// (all zero), as in containerd.
fn windows_version(text: &str) -> WindowsVersion {
    let mut parts = text.split('.');
    let (Some(major), Some(minor), Some(build)) = (parts.next(), parts.next(), parts.next()) else {
        return WindowsVersion::default();
    };
    match (major.parse(), minor.parse(), build.parse()) {
        (Ok(major), Ok(minor), Ok(build)) => WindowsVersion {
            major,
            minor,
            build,
        },
        _ => WindowsVersion::default(),
    }
}

fn windows_revision(text: &str) -> u32 {
    text.split('.')
        .nth(3)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn windows_versions_compatible(host: &Platform, container: &Platform) -> bool {
    let (Some(host), Some(container)) =
        (host.os_version.as_deref(), container.os_version.as_deref())
    else {
        return true;
    };
    let host = windows_version(host);
    if host == WindowsVersion::default() {
        return true;
    }
    let container = windows_version(container);
    if (host.major, host.minor) != (container.major, container.minor) {
        return false;
    }
    if host.build < WINDOWS_LTSC2022 {
        return host.build == container.build;
    }
    (WINDOWS_LTSC2022..=host.build).contains(&container.build)
}

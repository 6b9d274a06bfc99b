use crate::parse::normalize_arch;
use crate::Platform;

pub(crate) fn host() -> Platform {
    let arch = host_arch();
    let variant = if arch == "arm" {
        // Only 32-bit arm carries a variant that matters on the host.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Some(arm_variant_from_cpuinfo(&cpuinfo).unwrap_or_else(|| "v7".to_string()))
    } else {
        None
    };
    let (architecture, variant) = normalize_arch(arch, variant.as_deref());
    Platform {
        os: host_os().to_string(),
        architecture,
        variant,
        os_version: None,
        os_features: Vec::new(),
    }
}

/// `std::env::consts::OS` in Go's `GOOS` spelling.
pub(crate) fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// `std::env::consts::ARCH` in Go's `GOARCH` spelling.
fn host_arch() -> &'static str {
    let little = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86" => "386",
        "x86_64" => "amd64",
        "aarch64" if little => "arm64",
        "aarch64" => "arm64be",
        "arm" if little => "arm",
        "arm" => "armbe",
        "powerpc" => "ppc",
        "powerpc64" if little => "ppc64le",
        "powerpc64" => "ppc64",
        "mips" if little => "mipsle",
        "mips64" if little => "mips64le",
        "loongarch64" => "loong64",
        "riscv32" => "riscv",
        "wasm32" => "wasm",
        other => other,
    }
}

/// The 32-bit arm variant (`v5` ... `v8`) that the text of `/proc/cpuinfo`
/// describes, read as containerd does: the first `CPU architecture` field
/// (key compared case-insensitively) gives the ARM architecture version
/// (`7`, `6TEJ`, `8`, `AArch64`, ...). Raspberry Pi ARMv6 kernels report `7`;
/// when the `model name` starts with `ARMv6-compatible` the answer is `v6`.
///
/// Returns `None` when the field is missing or unknown (containerd then asks
/// `uname`, or says `unknown`; [`Platform::host`] assumes `v7`).
///
/// ```
/// let text = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nCPU architecture: 7\n";
/// assert_eq!(kbuild_platform::arm_variant_from_cpuinfo(text).as_deref(), Some("v7"));
/// ```
pub fn arm_variant_from_cpuinfo(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let mut arch = field("cpu architecture")?;
    if arch == "7" && field("model name").is_some_and(|model| model.starts_with("armv6-compatible"))
    {
        arch = "6".to_string();
    }
    let variant = match arch.as_str() {
        "8" | "aarch64" => "v8",
        "7" | "7m" | "?(12)" | "?(13)" | "?(14)" | "?(15)" | "?(16)" | "?(17)" => "v7",
        "6" | "6tej" => "v6",
        "5" | "5t" | "5te" | "5tej" => "v5",
        "4" | "4t" => "v4",
        "3" => "v3",
        _ => return None,
    };
    Some(variant.to_string())
}

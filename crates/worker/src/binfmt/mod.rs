//! Emulation: which platforms this machine can run, and registering QEMU
//! with binfmt_misc when one is missing.
//!
//! A platform is run in one of four ways ([`Support`]):
//!
//! * **native**: the host architecture;
//! * **native compat**: a 32-bit architecture the 64-bit kernel executes
//!   itself (`linux/386` on x86-64, `linux/arm/*` on arm64 hosts with
//!   AArch32). This is probed by executing a tiny static `exit(0)` program
//!   built here, because kernels can be built or booted without it. The
//!   executor sets the `PER_LINUX32` personality so `uname -m` says `i686`
//!   / `armv8l`;
//! * **emulated**: a binfmt_misc handler in `/proc/sys/fs/binfmt_misc`
//!   matches the platform's ELF header. Only handlers with the `F` flag
//!   count: the kernel opens their interpreter when they are registered,
//!   so it works inside a build's root filesystem where the interpreter
//!   path does not exist;
//! * **unsupported**, with the reason and the command that fixes it.
//!
//! [`ensure`] registers a missing QEMU handler (with `F`), taking magic and
//! mask from Debian's `/usr/lib/binfmt.d/qemu-*.conf` or
//! `/usr/share/binfmts/qemu-*`, else from a built-in table derived from the
//! ELF header of each architecture.
//!
//! ```no_run
//! use kbuild_platform::Platform;
//! use kbuild_worker::binfmt;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let arm64 = Platform::parse("linux/arm64")?;
//! let action = binfmt::ensure(&arm64)?;
//! println!("{arm64}: {action}");
//! for (platform, support) in binfmt::report() {
//!     println!("{platform}: {support}");
//! }
//! # Ok(()) }
//! ```

mod elf;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kbuild_platform::Platform;

use elf::{ElfId, CLASS32, CLASS64, LSB, MSB};

/// Where binfmt_misc lives.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// What a user runs to get emulation installed.
const FIX_INSTALL: &str = "install QEMU user emulation (`apt-get install qemu-user-static` on \
    Debian/Ubuntu) or run `kubectl build doctor --install`";

/// The `personality(2)` value for 32-bit compat mode.
pub(crate) const PER_LINUX32: u64 = 0x0008;

/// How this machine can run a platform; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// The host architecture.
    Native,
    /// A 32-bit architecture the kernel runs itself (under `PER_LINUX32`).
    NativeCompat,
    /// Through a binfmt_misc handler registered with the `F` flag.
    Emulated {
        /// The handler's name in binfmt_misc (`qemu-aarch64`).
        handler: String,
        /// Its interpreter (`/usr/libexec/qemu-binfmt/aarch64-binfmt-P`).
        interpreter: PathBuf,
        /// Its flags (`OCF`, `F`, ...).
        flags: String,
    },
    /// Cannot run here.
    Unsupported {
        /// Why, in one sentence.
        reason: String,
        /// The command or package that fixes it.
        fix: String,
    },
}

impl Support {
    /// Whether a RUN step for the platform can execute.
    pub fn runs(&self) -> bool {
        !matches!(self, Support::Unsupported { .. })
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::Native => f.write_str("native"),
            Support::NativeCompat => f.write_str("native (32-bit compat mode)"),
            Support::Emulated {
                handler,
                interpreter,
                flags,
            } => write!(
                f,
                "emulated by binfmt_misc handler {handler} ({}, flags {flags})",
                interpreter.display()
            ),
            Support::Unsupported { reason, fix } => write!(f, "unsupported: {reason}; {fix}"),
        }
    }
}

/// What [`ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing was needed: the platform already runs this way.
    AlreadySupported(Support),
    /// A registered but disabled handler was enabled.
    Enabled {
        /// The handler's name.
        handler: String,
    },
    /// A QEMU handler was registered.
    Registered {
        /// The handler's name (`qemu-aarch64`).
        handler: String,
        /// Its interpreter.
        interpreter: PathBuf,
        /// Its flags (always with `F`).
        flags: String,
        /// Whether binfmt_misc had to be mounted first.
        mounted_binfmt_misc: bool,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AlreadySupported(s) => write!(f, "{s}"),
            Action::Enabled { handler } => write!(f, "enabled binfmt_misc handler {handler}"),
            Action::Registered {
                handler,
                interpreter,
                flags,
                mounted_binfmt_misc,
            } => {
                if *mounted_binfmt_misc {
                    write!(f, "mounted binfmt_misc at {BINFMT_MISC}, ")?;
                }
                write!(
                    f,
                    "registered QEMU handler {handler} ({}) with flags {flags}",
                    interpreter.display()
                )
            }
        }
    }
}

/// Why [`ensure`] could not make a platform runnable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing here can run the platform.
    #[error("{platform} cannot run here: {reason}; {fix}")]
    Unsupported {
        /// The platform asked for.
        platform: String,
        /// Why.
        reason: String,
        /// What fixes it.
        fix: String,
    },
    /// Mounting binfmt_misc or writing to it failed.
    #[error("could not {action} {} for {platform}: {source}; run as root or {FIX_INSTALL}", path.display())]
    Io {
        /// The platform asked for.
        platform: String,
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

/// One architecture emulation knows about.
#[derive(Clone, Copy, Debug)]
struct Arch {
    /// Go's name.
    goarch: &'static str,
    /// QEMU's name (`qemu-<name>-static`, handler `qemu-<name>`).
    qemu: &'static str,
    elf: ElfId,
}

const ARCHES: &[Arch] = &[
    Arch {
        goarch: "amd64",
        qemu: "x86_64",
        elf: ElfId {
            class: CLASS64,
            data: LSB,
            machine: elf::EM_X86_64,
        },
    },
    Arch {
        goarch: "386",
        qemu: "i386",
        elf: ElfId {
            class: CLASS32,
            data: LSB,
            machine: elf::EM_386,
        },
    },
    Arch {
        goarch: "arm64",
        qemu: "aarch64",
        elf: ElfId {
            class: CLASS64,
            data: LSB,
            machine: elf::EM_AARCH64,
        },
    },
    Arch {
        goarch: "arm",
        qemu: "arm",
        elf: ElfId {
            class: CLASS32,
            data: LSB,
            machine: elf::EM_ARM,
        },
    },
    Arch {
        goarch: "ppc64le",
        qemu: "ppc64le",
        elf: ElfId {
            class: CLASS64,
            data: LSB,
            machine: elf::EM_PPC64,
        },
    },
    Arch {
        goarch: "s390x",
        qemu: "s390x",
        elf: ElfId {
            class: CLASS64,
            data: MSB,
            machine: elf::EM_S390,
        },
    },
];

/// The platforms [`report`] covers: the ones kubectl-build supports.
pub const REPORT_PLATFORMS: &[&str] = kbuild_platform::SUPPORTED;

fn arch_of(platform: &Platform) -> Option<&'static Arch> {
    let p = platform.normalized();
    ARCHES.iter().find(|a| a.goarch == p.architecture)
}

/// A binfmt_misc entry as `/proc/sys/fs/binfmt_misc/<name>` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Handler {
    name: String,
    enabled: bool,
    interpreter: PathBuf,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses an entry file; `None` for extension handlers and unreadable text.
fn parse_handler(name: &str, text: &str) -> Option<Handler> {
    let mut h = Handler {
        name: name.to_string(),
        enabled: false,
        interpreter: PathBuf::new(),
        flags: String::new(),
        offset: 0,
        magic: Vec::new(),
        mask: Vec::new(),
    };
    for line in text.lines() {
        let (key, value) = line.split_once([' ', ':']).unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "enabled" => h.enabled = true,
            "disabled" => h.enabled = false,
            "interpreter" => h.interpreter = PathBuf::from(value),
            "flags" => h.flags = value.to_string(),
            "offset" => h.offset = value.parse().ok()?,
            "magic" => h.magic = unhex(value)?,
            "mask" => h.mask = unhex(value)?,
            _ => {}
        }
    }
    (!h.magic.is_empty()).then_some(h)
}

impl Handler {
    /// Whether an executable of `elf` (EXEC or DYN) would be given to it.
    fn matches(&self, elf: ElfId) -> bool {
        [2u16, 3].iter().any(|&e_type| {
            let header = elf.header_prefix(e_type);
            let Some(window) = header.get(self.offset..self.offset + self.magic.len()) else {
                return false;
            };
            window.iter().enumerate().all(|(i, b)| {
                let m = self.mask.get(i).copied().unwrap_or(0xff);
                b & m == self.magic[i] & m
            })
        })
    }
}

fn read_handlers(dir: &Path) -> Vec<Handler> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Handler> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                return None;
            }
            let text = fs::read_to_string(e.path()).ok()?;
            parse_handler(&name, &text)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn binfmt_enabled(dir: &Path) -> bool {
    fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "enabled")
}

/// Whether the kernel runs `arch` itself, found by executing a crafted
/// `exit(0)` program once per process.
fn compat_runs(arch: &Arch) -> bool {
    static CACHE: Mutex<BTreeMap<&'static str, bool>> = Mutex::new(BTreeMap::new());
    if let Some(v) = CACHE.lock().ok().and_then(|c| c.get(arch.goarch).copied()) {
        return v;
    }
    let result = probe(arch);
    if let Ok(mut c) = CACHE.lock() {
        c.insert(arch.goarch, result);
    }
    result
}

fn probe(arch: &Arch) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(program) = arch.elf.exit0_program() else {
        return false;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let path = dir.path().join("probe");
    let written = fs::write(&path, &program)
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)));
    if written.is_err() {
        return false;
    }
    // Another thread forking while the file was open for writing can make
    // exec fail with ETXTBSY for a moment.
    for _ in 0..50 {
        match std::process::Command::new(&path).status() {
            Ok(status) => return status.success(),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
    false
}

/// Which host architectures run which others in compat mode.
fn compat_pair(host: &str, target: &str) -> bool {
    matches!((host, target), ("amd64", "386") | ("arm64", "arm"))
}

fn support_in(dir: &Path, host: &Platform, platform: &Platform) -> Support {
    let p = platform.normalized();
    if p.os == "windows" {
        return Support::Unsupported {
            reason: "Windows containers cannot run on a Linux builder".into(),
            fix: "RUN needs a Windows builder; stages that only COPY/ADD still build".into(),
        };
    }
    if p.os != "linux" {
        return Support::Unsupported {
            reason: format!(
                "the {} operating system cannot run on a Linux builder",
                p.os
            ),
            fix: "build this platform on a builder of that operating system".into(),
        };
    }
    let host = host.normalized();
    if host.os == "linux" && p.architecture == host.architecture {
        // arm hosts only run their own variant and older ones.
        let older = match (p.variant.as_deref(), host.variant.as_deref()) {
            (Some(want), Some(have)) => want <= have,
            _ => true,
        };
        if older {
            return Support::Native;
        }
    }
    let Some(arch) = arch_of(&p) else {
        return Support::Unsupported {
            reason: format!(
                "there is no emulation for the {} architecture",
                p.architecture
            ),
            fix: "build this platform on a native node".into(),
        };
    };
    let handlers: Vec<Handler> = read_handlers(dir)
        .into_iter()
        .filter(|h| h.matches(arch.elf))
        .collect();
    let global = binfmt_enabled(dir);
    if global {
        if let Some(h) = handlers.iter().find(|h| h.enabled) {
            if h.flags.contains('F') {
                return Support::Emulated {
                    handler: h.name.clone(),
                    interpreter: h.interpreter.clone(),
                    flags: h.flags.clone(),
                };
            }
            return Support::Unsupported {
                reason: format!(
                    "binfmt_misc handler {} is registered without the F flag, so its interpreter {} \
                     cannot be found inside a build's root filesystem",
                    h.name,
                    h.interpreter.display()
                ),
                fix: format!(
                    "remove it with `echo -1 > {BINFMT_MISC}/{}` and run `kubectl build doctor --install`",
                    h.name
                ),
            };
        }
    }
    if compat_pair(&host.architecture, arch.goarch) && compat_runs(arch) {
        return Support::NativeCompat;
    }
    let reason = if !dir.join("register").exists() {
        format!("binfmt_misc is not mounted at {}", dir.display())
    } else if !global {
        format!("binfmt_misc is disabled ({}/status)", dir.display())
    } else if let Some(h) = handlers.first() {
        format!("binfmt_misc handler {} is disabled", h.name)
    } else {
        format!("no binfmt_misc handler runs {} executables", arch.goarch)
    };
    Support::Unsupported {
        reason,
        fix: FIX_INSTALL.into(),
    }
}

/// How this machine can run `platform` right now (reads
/// `/proc/sys/fs/binfmt_misc`; probes 32-bit compat once per process).
pub fn support(platform: &Platform) -> Support {
    support_in(Path::new(BINFMT_MISC), &Platform::host(), platform)
}

/// [`support`] for `linux/amd64`, `386`, `arm/v6`, `arm/v7`, `arm/v8`,
/// `arm64`, `ppc64le`, `s390x` and `windows/amd64` ([`REPORT_PLATFORMS`]).
pub fn report() -> Vec<(Platform, Support)> {
    REPORT_PLATFORMS
        .iter()
        .filter_map(|s| Platform::parse(s).ok())
        .map(|p| {
            let s = support(&p);
            (p, s)
        })
        .collect()
}

/// What `uname -m` prints inside a RUN step of `platform` on an x86-64
/// host, when this crate knows (the executor's tests check it against
/// `tests/executor_cases/uname.txt`). On arm64 hosts, 32-bit arm steps run
/// in compat mode and report `armv8l` whatever their variant. Emulated
/// `arm/v8` reports `armv7l` with QEMU 7.2 (no 32-bit CPU model of it
/// reports `armv8l`), so it is not listed.
pub fn uname_machine(platform: &Platform) -> Option<&'static str> {
    let p = platform.normalized();
    Some(match (p.architecture.as_str(), p.variant.as_deref()) {
        ("amd64", _) => "x86_64",
        ("386", _) => "i686",
        ("arm64", _) => "aarch64",
        ("arm", Some("v5")) => "armv5tejl",
        ("arm", Some("v6")) => "armv6l",
        ("arm", Some("v7")) | ("arm", None) => "armv7l",
        ("ppc64le", _) => "ppc64le",
        ("s390x", _) => "s390x",
        _ => return None,
    })
}

/// What the executor sets for a step of `platform` run with `support`:
/// the personality, and environment variables for QEMU.
///
/// QEMU's default 32-bit arm CPU reports `armv7l`; arm/v6 and v5 need an
/// older model (`QEMU_CPU`), which qemu-user reads from the environment
/// even when started by binfmt_misc. The variable stays visible to the
/// step's processes: it has to, so that every program the step executes
/// (each one a fresh QEMU) gets the same CPU. QEMU 7.2 has no 32-bit model
/// that reports `armv8l`, so emulated `arm/v8` reports `armv7l`; natively
/// on arm64 it reports `armv8l`.
pub(crate) fn sandbox_settings(
    platform: &Platform,
    support: &Support,
) -> (Option<u64>, Vec<String>) {
    let p = platform.normalized();
    match support {
        Support::NativeCompat => (Some(PER_LINUX32), Vec::new()),
        Support::Emulated { .. } if p.architecture == "arm" => {
            let cpu = match p.variant.as_deref() {
                Some("v6") => Some("arm1176"),
                Some("v5") => Some("arm926"),
                _ => None,
            };
            (
                None,
                cpu.map(|c| format!("QEMU_CPU={c}")).into_iter().collect(),
            )
        }
        _ => (None, Vec::new()),
    }
}

/// A handler line for binfmt_misc's `register` file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registration {
    name: String,
    offset: String,
    /// As written to `register`: `\x7f\x45...`.
    magic: String,
    mask: String,
    interpreter: PathBuf,
    flags: String,
}

impl Registration {
    fn line(&self) -> String {
        format!(
            ":{}:M:{}:{}:{}:{}:{}",
            self.name,
            self.offset,
            self.magic,
            self.mask,
            self.interpreter.display(),
            self.flags
        )
    }

    /// Decodes `\xNN` escapes (binfmt_misc's syntax) to match the magic
    /// against an architecture.
    fn decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
                out.push(u8::from_str_radix(s.get(i + 2..i + 4)?, 16).ok()?);
                i += 4;
            } else if b[i] == b'\\' {
                out.push(*b.get(i + 1)?);
                i += 2;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Some(out)
    }

    fn handles(&self, arch: &Arch) -> bool {
        let (Some(magic), Some(mask)) = (Self::decode(&self.magic), Self::decode(&self.mask))
        else {
            return false;
        };
        let h = Handler {
            name: self.name.clone(),
            enabled: true,
            interpreter: self.interpreter.clone(),
            flags: self.flags.clone(),
            offset: self.offset.parse().unwrap_or(0),
            magic,
            mask,
        };
        h.matches(arch.elf)
    }

    fn with_fix_binary(mut self) -> Self {
        if !self.flags.contains('F') {
            self.flags.push('F');
        }
        self
    }
}

/// Parses a systemd binfmt.d line `:name:M:offset:magic:mask:interp:flags`.
fn parse_binfmt_d(text: &str) -> Option<Registration> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))?;
    let sep = line.chars().next()?;
    let fields: Vec<&str> = line[sep.len_utf8()..].split(sep).collect();
    if fields.len() < 6 || fields[1] != "M" {
        return None;
    }
    Some(Registration {
        name: fields[0].to_string(),
        offset: fields[2].to_string(),
        magic: fields[3].to_string(),
        mask: fields[4].to_string(),
        interpreter: PathBuf::from(fields[5]),
        flags: fields.get(6).copied().unwrap_or("").to_string(),
    })
}

/// Parses a binfmt-support file (`/usr/share/binfmts/qemu-*`).
fn parse_binfmts(name: &str, text: &str) -> Option<Registration> {
    let mut r = Registration {
        name: name.to_string(),
        offset: "0".into(),
        magic: String::new(),
        mask: String::new(),
        interpreter: PathBuf::new(),
        flags: String::new(),
    };
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(' ') else {
            continue;
        };
        let value = value.trim();
        match (key, value) {
            ("interpreter", v) => r.interpreter = PathBuf::from(v),
            ("magic", v) => r.magic = v.to_string(),
            ("mask", v) => r.mask = v.to_string(),
            ("offset", v) => r.offset = v.to_string(),
            ("preserve", "yes") => r.flags.push('P'),
            ("credentials", "yes") => r.flags.push('C'),
            ("fix_binary", "yes") => r.flags.push('F'),
            _ => {}
        }
    }
    (!r.magic.is_empty() && !r.interpreter.as_os_str().is_empty()).then_some(r)
}

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// The handler to register for `arch`: Debian's definition when it is
/// installed and its interpreter is a static program, else the built-in
/// one with the first static `qemu-<arch>[-static]` found.
fn registration_for(arch: &Arch, etc_roots: &[&Path]) -> Option<Registration> {
    let name = format!("qemu-{}", arch.qemu);
    let usable = |r: &Registration| r.handles(arch) && elf::is_static(&r.interpreter);
    for root in etc_roots {
        let d = root.join("usr/lib/binfmt.d").join(format!("{name}.conf"));
        if let Some(r) = fs::read_to_string(&d).ok().and_then(|t| parse_binfmt_d(&t)) {
            if usable(&r) {
                return Some(r.with_fix_binary());
            }
        }
        let s = root.join("usr/share/binfmts").join(&name);
        if let Some(r) = fs::read_to_string(&s)
            .ok()
            .and_then(|t| parse_binfmts(&name, &t))
        {
            if usable(&r) {
                return Some(r.with_fix_binary());
            }
        }
    }
    let (magic, mask) = arch.elf.magic_and_mask();
    for root in etc_roots {
        for candidate in [
            format!("usr/bin/qemu-{}-static", arch.qemu),
            format!("usr/local/bin/qemu-{}-static", arch.qemu),
            format!("usr/bin/qemu-{}", arch.qemu),
        ] {
            let path = root.join(candidate);
            if elf::is_static(&path) {
                return Some(Registration {
                    name: name.clone(),
                    offset: "0".into(),
                    magic: escape(&magic),
                    mask: escape(&mask),
                    interpreter: path,
                    flags: "F".into(),
                });
            }
        }
    }
    None
}

/// Makes `platform` runnable if it is not: enables a disabled handler, or
/// mounts binfmt_misc when needed and registers QEMU's handler with the
/// `F` flag (see the module docs for where its definition comes from).
/// Returns what was done, for the CLI to print.
///
/// Needs root (CAP_SYS_ADMIN) to change anything. Errors name the platform
/// and the fix: install QEMU, run as root, or remove a handler that lacks
/// the `F` flag.
pub fn ensure(platform: &Platform) -> Result<Action, Error> {
    let before = support(platform);
    let Support::Unsupported { reason, fix } = before.clone() else {
        return Ok(Action::AlreadySupported(before));
    };
    let step = Ensure {
        platform,
        name: platform.to_string(),
        dir: Path::new(BINFMT_MISC),
    };
    let Some(arch) = arch_of(platform).filter(|_| platform.normalized().os == "linux") else {
        return Err(step.unsupported(reason, fix));
    };
    let mounted = step.mount_and_enable()?;
    let existing: Vec<Handler> = read_handlers(step.dir)
        .into_iter()
        .filter(|h| h.matches(arch.elf))
        .collect();
    if let Some(action) = step.enable_disabled(&existing)? {
        return Ok(action);
    }
    if existing.iter().any(|h| h.enabled) {
        // Enabled but without F: support() explained it.
        return Err(step.unsupported(reason, fix));
    }
    let reg = step.registration(arch, &existing)?;
    step.register(reg, mounted)
}

/// The steps of [`ensure`] for one platform, whose errors name it.
struct Ensure<'a> {
    platform: &'a Platform,
    /// The platform as the errors name it.
    name: String,
    /// The binfmt_misc mount point.
    dir: &'a Path,
}

impl Ensure<'_> {
    fn unsupported(&self, reason: String, fix: String) -> Error {
        Error::Unsupported {
            platform: self.name.clone(),
            reason,
            fix,
        }
    }

    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            platform: self.name.clone(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Mounts binfmt_misc when it is not, and turns it on when it is off.
    /// Returns whether it was mounted here.
    fn mount_and_enable(&self) -> Result<bool, Error> {
        let mut mounted = false;
        if !self.dir.join("register").exists() {
            rustix::mount::mount(
                "binfmt_misc",
                self.dir,
                "binfmt_misc",
                rustix::mount::MountFlags::empty(),
                None,
            )
            .map_err(|e| self.io("mount binfmt_misc at", self.dir, e.into()))?;
            mounted = true;
        }
        if !binfmt_enabled(self.dir) {
            let status = self.dir.join("status");
            fs::write(&status, "1").map_err(|e| self.io("enable binfmt_misc in", &status, e))?;
        }
        Ok(mounted)
    }

    /// Enables the first disabled handler of `existing` that has the `F`
    /// flag, if there is one.
    fn enable_disabled(&self, existing: &[Handler]) -> Result<Option<Action>, Error> {
        let Some(h) = existing
            .iter()
            .find(|h| !h.enabled && h.flags.contains('F'))
        else {
            return Ok(None);
        };
        let entry = self.dir.join(&h.name);
        fs::write(&entry, "1").map_err(|e| self.io("enable the binfmt_misc handler", &entry, e))?;
        Ok(Some(Action::Enabled {
            handler: h.name.clone(),
        }))
    }

    /// The handler to register for `arch`: an installed static QEMU whose
    /// handler name is free.
    fn registration(&self, arch: &Arch, existing: &[Handler]) -> Result<Registration, Error> {
        let Some(reg) = registration_for(arch, &[Path::new("/")]) else {
            return Err(self.unsupported(
                format!(
                    "no QEMU for {} is installed (looked for a static qemu-{})",
                    arch.goarch, arch.qemu
                ),
                FIX_INSTALL.into(),
            ));
        };
        if existing.iter().any(|h| h.name == reg.name) || self.dir.join(&reg.name).exists() {
            return Err(self.unsupported(
                format!(
                    "a binfmt_misc handler named {} exists but does not run {}",
                    reg.name, arch.goarch
                ),
                format!(
                    "remove it with `echo -1 > {BINFMT_MISC}/{}` and try again",
                    reg.name
                ),
            ));
        }
        Ok(reg)
    }

    /// Registers `reg` and checks that the platform runs now.
    fn register(&self, reg: Registration, mounted: bool) -> Result<Action, Error> {
        let register = self.dir.join("register");
        // binfmt_misc wants the whole line in one write.
        let written = fs::OpenOptions::new()
            .write(true)
            .open(&register)
            .and_then(|mut f| f.write_all(reg.line().as_bytes()));
        if let Err(e) = written {
            // Another process may have registered it a moment ago.
            return match support(self.platform) {
                s @ Support::Emulated { .. } if e.raw_os_error() == Some(libc::EEXIST) => {
                    Ok(Action::AlreadySupported(s))
                }
                _ => Err(self.io("register a handler in", &register, e)),
            };
        }
        match support(self.platform) {
            Support::Unsupported { reason, fix } => Err(self.unsupported(reason, fix)),
            _ => Ok(Action::Registered {
                handler: reg.name,
                interpreter: reg.interpreter,
                flags: reg.flags,
                mounted_binfmt_misc: mounted,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_entry() {
        let text = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\n\
                    magic 7f454c460201010000000000000000000200b700\n\
                    mask ffffffffffffff00fffffffffffffffffeffffff\n";
        let h = parse_handler("qemu-aarch64", text).unwrap();
        assert!(h.enabled);
        assert_eq!(h.flags, "OCF");
        assert!(h.matches(ARCHES[2].elf));
        assert!(!h.matches(ARCHES[3].elf));
        assert!(parse_handler(
            "jar",
            "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"
        )
        .is_none());
    }

    #[test]
    fn builtin_magic_matches_only_its_arch() {
        for a in ARCHES {
            let (magic, mask) = a.elf.magic_and_mask();
            let r = Registration {
                name: a.qemu.into(),
                offset: "0".into(),
                magic: escape(&magic),
                mask: escape(&mask),
                interpreter: PathBuf::from("/x"),
                flags: "F".into(),
            };
            for b in ARCHES {
                assert_eq!(
                    r.handles(b),
                    a.goarch == b.goarch,
                    "{} vs {}",
                    a.goarch,
                    b.goarch
                );
            }
        }
    }

    #[test]
    fn parses_debian_definitions() {
        let d = ":qemu-arm:M::\\x7f\\x45\\x4c\\x46\\x01\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x28\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/arm-binfmt-P:OPF\n";
        let r = parse_binfmt_d(d).unwrap();
        assert_eq!(r.name, "qemu-arm");
        assert_eq!(r.flags, "OPF");
        assert!(r.handles(&ARCHES[3]));
        assert!(!r.handles(&ARCHES[2]));
        let s = "package qemu-user-static\ninterpreter /usr/bin/qemu-s390x-static\n\
                 magic \\x7f\\x45\\x4c\\x46\\x02\\x02\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x16\n\
                 offset 0\nmask \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\n\
                 credentials yes\nfix_binary no\n";
        let r = parse_binfmts("qemu-s390x", s).unwrap();
        assert_eq!(r.with_fix_binary().flags, "CF");
        assert!(parse_binfmts("qemu-s390x", s).unwrap().handles(&ARCHES[5]));
    }
}

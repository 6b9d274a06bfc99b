//! The system call filter of a sandboxed step: Docker's default seccomp
//! profile, kept as data in `seccomp/default.json`, compiled with libseccomp
//! into one classic BPF program for the host's native architecture and its
//! compatibility architectures.
//!
//! The program is compiled once per process by the supervisor and handed to
//! the helper as bytes, so the helper (and the step) never loads
//! libseccomp: it installs the program with `PR_SET_SECCOMP` just before it
//! executes the command.
//!
//! Emulated platforms need no table of their own: QEMU translates the
//! guest's calls into the host's, which this filter judges. A 32-bit
//! program run natively (linux/386 on x86_64, linux/arm/v7 on arm64) makes
//! calls of the compatibility architecture, which the filter also covers.

use std::io::{Read, Seek};
use std::sync::OnceLock;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

/// The profile, as data.
const DEFAULT_PROFILE: &str = include_str!("seccomp/default.json");

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The embedded profile does not parse.
    #[error("the seccomp profile is not valid: {0}")]
    Profile(#[source] serde_json::Error),
    /// libseccomp refused a step of the compilation.
    #[error("libseccomp could not {action}: {source}")]
    Compile {
        /// What was being done.
        action: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// The compiled program could not be read back.
    #[error("could not read the compiled seccomp program: {0}")]
    Export(#[source] std::io::Error),
}

#[derive(Debug, Deserialize)]
struct Profile {
    version: u32,
    default_errno: i32,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Allow,
    Errno,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    MaskedEq,
}

#[derive(Debug, Deserialize)]
struct Arg {
    index: u32,
    op: Op,
    #[serde(default)]
    value: Option<u64>,
    #[serde(default)]
    values: Vec<u64>,
    #[serde(default)]
    mask: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    action: Action,
    #[serde(default)]
    errno: Option<i32>,
    syscalls: Vec<String>,
    #[serde(default)]
    arg: Option<Arg>,
    /// Only on these host architectures (kernel names: x86_64, aarch64, ...).
    #[serde(default)]
    arches: Vec<String>,
    /// Not on these host architectures.
    #[serde(default)]
    arches_except: Vec<String>,
}

/// The host architecture in the kernel's naming, and the architectures the
/// filter covers.
fn host_arches() -> (&'static str, Vec<ScmpArch>) {
    match std::env::consts::ARCH {
        "x86_64" => (
            "x86_64",
            vec![ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32],
        ),
        "aarch64" => ("aarch64", vec![ScmpArch::Aarch64, ScmpArch::Arm]),
        "powerpc64" => ("ppc64le", vec![ScmpArch::Ppc64Le]),
        "s390x" => ("s390x", vec![ScmpArch::S390X, ScmpArch::S390]),
        "riscv64" => ("riscv64", vec![ScmpArch::Riscv64]),
        other => (other, vec![ScmpArch::Native]),
    }
}

fn compile_err(
    action: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let action = action.into();
    move |source| SeccompError::Compile { action, source }
}

/// The comparisons of a rule: one list per libseccomp rule (conditions in
/// one rule are and-ed, so a set of accepted values becomes several rules).
fn conditions(arg: &Option<Arg>) -> Vec<Vec<ScmpArgCompare>> {
    let Some(arg) = arg else {
        return vec![Vec::new()];
    };
    match arg.op {
        Op::Eq => {
            let values = arg.value.iter().chain(&arg.values);
            values
                .map(|v| vec![ScmpArgCompare::new(arg.index, ScmpCompareOp::Equal, *v)])
                .collect()
        }
        Op::Ne => arg
            .value
            .iter()
            .map(|v| vec![ScmpArgCompare::new(arg.index, ScmpCompareOp::NotEqual, *v)])
            .collect(),
        Op::MaskedEq => vec![vec![ScmpArgCompare::new(
            arg.index,
            ScmpCompareOp::MaskedEqual(arg.mask.unwrap_or(u64::MAX)),
            arg.value.unwrap_or(0),
        )]],
    }
}

/// Compiles `profile` (JSON) for this host into BPF instructions
/// (`struct sock_filter`, 8 bytes each, native endianness).
fn compile(profile: &str) -> Result<Vec<u8>, SeccompError> {
    let profile: Profile = serde_json::from_str(profile).map_err(SeccompError::Profile)?;
    debug_assert_eq!(profile.version, 1);
    let (host, arches) = host_arches();
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(profile.default_errno))
        .map_err(compile_err("create a filter"))?;
    for arch in &arches {
        filter
            .add_arch(*arch)
            .map_err(compile_err(format!("add the architecture {arch:?}")))?;
    }
    // Setuid programs (su, sudo) keep working in RUN, as under Docker: the
    // filter does not need no_new_privs, the helper installs it as root.
    filter
        .set_ctl_nnp(false)
        .map_err(compile_err("leave no_new_privs unset"))?;
    filter
        .set_act_badarch(ScmpAction::Errno(libc::ENOSYS))
        .map_err(compile_err("set the action for other architectures"))?;
    for rule in &profile.rules {
        if !rule.arches.is_empty() && !rule.arches.iter().any(|a| a == host) {
            continue;
        }
        if rule.arches_except.iter().any(|a| a == host) {
            continue;
        }
        let action = match rule.action {
            Action::Allow => ScmpAction::Allow,
            Action::Errno => ScmpAction::Errno(rule.errno.unwrap_or(profile.default_errno)),
        };
        for name in &rule.syscalls {
            // A name libseccomp does not know on any architecture (a call
            // newer than the library) is left to the default action.
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for conds in conditions(&rule.arg) {
                let added = if conds.is_empty() {
                    filter.add_rule(action, syscall)
                } else {
                    filter.add_rule_conditional(action, syscall, &conds)
                };
                added.map_err(compile_err(format!("add a rule for {name}")))?;
            }
        }
    }
    // libseccomp 2.5 exports to a descriptor only.
    let mut file = tempfile::tempfile().map_err(SeccompError::Export)?;
    filter
        .export_bpf(&file)
        .map_err(compile_err("export the program"))?;
    file.rewind().map_err(SeccompError::Export)?;
    let mut program = Vec::new();
    file.read_to_end(&mut program)
        .map_err(SeccompError::Export)?;
    Ok(program)
}

/// The default profile compiled for this host, built on first use.
pub(crate) fn default_program() -> Result<&'static [u8], &'static SeccompError> {
    static PROGRAM: OnceLock<Result<Vec<u8>, SeccompError>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile(DEFAULT_PROFILE))
        .as_ref()
        .map(Vec::as_slice)
}

/// Installs `program` (as made by [`default_program`]) on the calling
/// thread; it then applies to everything this thread executes. Called by
/// the helper, as root, just before `execve`.
pub(crate) fn install(program: &[u8]) -> std::io::Result<()> {
    const INSTRUCTION: usize = std::mem::size_of::<libc::sock_filter>();
    if program.is_empty()
        || program.len() % INSTRUCTION != 0
        || program.len() / INSTRUCTION > u16::MAX as usize
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a seccomp program of {} bytes is not whole BPF instructions",
                program.len()
            ),
        ));
    }
    let mut filters: Vec<libc::sock_filter> = program
        .chunks_exact(INSTRUCTION)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filters`, alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_for_this_host() {
        let program = default_program().expect("compiles");
        assert_eq!(program.len() % 8, 0);
        // Hundreds of rules over three architectures on x86_64.
        assert!(
            program.len() / 8 > 300,
            "{} instructions",
            program.len() / 8
        );
    }

    #[test]
    fn every_name_in_the_profile_is_a_known_system_call_somewhere() {
        let profile: Profile = serde_json::from_str(DEFAULT_PROFILE).expect("parses");
        let unknown: Vec<&str> = profile
            .rules
            .iter()
            .flat_map(|r| r.syscalls.iter())
            .filter(|n| ScmpSyscall::from_name(n).is_err())
            .map(String::as_str)
            .collect();
        // libseccomp 2.5 predates a few calls (cachestat, futex_wake, ...);
        // a typo would show here as a long list.
        assert!(unknown.len() <= 12, "unknown names: {unknown:?}");
    }

    #[test]
    fn keyctl_is_not_allowed_and_read_is() {
        let profile: Profile = serde_json::from_str(DEFAULT_PROFILE).expect("parses");
        let allowed = |name: &str| {
            profile
                .rules
                .iter()
                .any(|r| matches!(r.action, Action::Allow) && r.syscalls.iter().any(|s| s == name))
        };
        for blocked in [
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "unshare",
            "setns",
            "bpf",
            "kexec_load",
            "init_module",
        ] {
            assert!(!allowed(blocked), "{blocked} must not be allowed");
        }
        assert!(allowed("read") && allowed("execve"));
    }
}

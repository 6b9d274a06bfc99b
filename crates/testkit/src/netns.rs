//! Test hosts on this machine: each [`Host`] is a network namespace with
//! its own address, so a daemon started in it is a separate machine on the
//! network as far as its clients can tell.
//!
//! A host gets a slot `N` (0..[`SLOTS`]) taken with an exclusive `flock` on
//! `/run/kbuild-testkit/netns/N.lock`, so concurrent test processes never
//! share a slot; the lock dies with its process, and whatever a killed
//! test left under a slot's names is removed by the next owner. Slot `N`
//! is the namespace `kbt-N`, the veth pair `kbt-N` (root side) /
//! `eth0` (in the host) and the subnet `10.213.0.0/16`'s `N`th `/30`:
//! the root side holds `.1`, the host `.2`, the host's default route goes
//! through the root side and its loopback is up. Traffic between the
//! client (in the root namespace) and the hosts stays on these addresses.
//!
//! [`Host::command`] runs a program in the host (`ip netns exec`),
//! optionally pinned to one CPU with `taskset` ([`Host::pin`]); dropping
//! the host kills every process in it and removes the namespace and the
//! veth pair.

use crate::error::{output_ok, CommandError};
use kbuild_image::lock::{FileLock, LockMode};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many hosts can exist at once (the `/30`s of `10.213.0.0/16`).
pub const SLOTS: u32 = 16384;

/// Where the slot locks live.
pub const LOCK_DIR: &str = "/run/kbuild-testkit/netns";

/// A network namespace with its own address; removed when dropped.
pub struct Host {
    name: String,
    slot: u32,
    cpu: Option<usize>,
    _lock: FileLock,
}

/// Runs `ip ARGS` to the end.
fn ip(args: &[&str]) -> Result<(), CommandError> {
    output_ok(Command::new("ip").args(args).stdin(Stdio::null()))?;
    Ok(())
}

/// The process ids in namespace `name`.
fn pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process of namespace `name`, then removes it and the
/// root-side interface `veth` (which takes its peer along).
fn remove(name: &str, veth: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = pids(name);
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in left {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if Path::new("/run/netns").join(name).exists() {
        if let Err(e) = ip(&["netns", "del", name]) {
            eprintln!("test host cleanup: {e}");
        }
    }
    if Path::new("/sys/class/net").join(veth).exists() {
        if let Err(e) = ip(&["link", "del", veth]) {
            eprintln!("test host cleanup: {e}");
        }
    }
}

impl Host {
    /// Makes a new host, or returns `None` after
    /// [`skip_or_fail`](crate::fixtures::skip_or_fail) when this process
    /// cannot (not root, no `ip`).
    ///
    /// # Panics
    /// When a step fails although the prerequisites are there.
    pub fn create() -> Option<Host> {
        if !crate::fixtures::is_root() {
            crate::fixtures::skip_or_fail("test hosts need root (network namespaces)");
            return None;
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            crate::fixtures::skip_or_fail("test hosts need the ip command (iproute2)");
            return None;
        }
        std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
        let (slot, lock) = (0..SLOTS)
            .find_map(|slot| {
                let path = Path::new(LOCK_DIR).join(format!("{slot}.lock"));
                match FileLock::try_acquire(&path, LockMode::Exclusive) {
                    Ok(Some(lock)) => Some((slot, lock)),
                    Ok(None) => None,
                    Err(e) => panic!("lock {}: {e}", path.display()),
                }
            })
            .unwrap_or_else(|| panic!("all {SLOTS} test host slots are taken"));
        let host = Host {
            name: format!("kbt-{slot}"),
            slot,
            cpu: None,
            _lock: lock,
        };
        // A killed test may have left this slot's namespace behind.
        remove(&host.name, &host.name);
        let (name, peer) = (host.name.as_str(), format!("kbt-{slot}-h"));
        let cidr = |ip: Ipv4Addr| format!("{ip}/30");
        let steps: [&[&str]; 10] = [
            &["netns", "add", name],
            &["-n", name, "link", "set", "lo", "up"],
            &["link", "add", name, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", name],
            &["-n", name, "link", "set", &peer, "name", "eth0"],
            &["addr", "add", &cidr(host.gateway()), "dev", name],
            &["link", "set", name, "up"],
            &["-n", name, "addr", "add", &cidr(host.ip()), "dev", "eth0"],
            &["-n", name, "link", "set", "eth0", "up"],
            &[
                "-n",
                name,
                "route",
                "add",
                "default",
                "via",
                &host.gateway().to_string(),
            ],
        ];
        for step in steps {
            // Dropping `host` on panic removes what was made.
            ip(step).unwrap_or_else(|e| panic!("make test host {name}: {e}"));
        }
        Some(host)
    }

    /// The namespace's name (`kbt-N`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.subnet_address(2)
    }

    /// The root namespace's address on the host's link.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet_address(1)
    }

    fn subnet_address(&self, last: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + self.slot * 4 + last)
    }

    /// Runs what [`Host::command`] starts on CPU `cpu` only (`taskset`):
    /// its daemon then counts one core, as a one-core machine would.
    pub fn pin(mut self, cpu: usize) -> Host {
        self.cpu = Some(cpu);
        self
    }

    /// A command that runs `program` in the host (add its arguments).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(cpu) = self.cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        cmd.arg(program);
        cmd
    }

    /// The processes running in the host.
    pub fn pids(&self) -> Vec<u32> {
        pids(&self.name)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove(&self.name, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_their_own_addresses_and_leave_nothing_behind() {
        let (Some(a), Some(b)) = (Host::create(), Host::create()) else {
            return;
        };
        assert_ne!(a.name(), b.name());
        assert_ne!(a.ip(), b.ip());
        // Inside: loopback and the host's address; the root side answers.
        let out = a
            .command("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .expect("run ip in the host");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("127.0.0.1/8"), "{text}");
        assert!(text.contains(&format!("{}/30", a.ip())), "{text}");
        assert!(!text.contains(&b.ip().to_string()), "{text}");
        // A server in host a is reached on a's address from the root
        // namespace and from host b.
        let mut server = a
            .command("busybox")
            .args(["nc", "-l", "-p", "4321", "-e", "echo", "hello"])
            .spawn()
            .expect("start busybox nc in the host");
        let connect = |cmd: &mut Command| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = cmd.output().expect("run busybox nc");
                if String::from_utf8_lossy(&out.stdout).contains("hello") {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let addr = a.ip().to_string();
        assert!(connect(
            Command::new("busybox").args(["nc", "-w", "2", &addr, "4321"])
        ));
        let _ = server.wait();
        let mut server = a
            .command("busybox")
            .args(["nc", "-l", "-p", "4321", "-e", "echo", "hello"])
            .spawn()
            .expect("start busybox nc in the host");
        assert!(connect(
            b.command("busybox").args(["nc", "-w", "2", &addr, "4321"])
        ));
        let _ = server.wait();
        // Pinned: the program sees one CPU.
        let pinned = Host::create().expect("a third host").pin(0);
        let out = pinned.command("nproc").output().expect("run nproc");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
        // Dropping removes the namespace, the veth pair and the processes.
        let mut sleeper = a.command("sleep").arg("600").spawn().expect("sleep");
        let name = a.name().to_string();
        // `ip netns exec` enters the namespace, then becomes `sleep`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !a.pids().contains(&sleeper.id()) {
            assert!(Instant::now() < deadline, "sleep never ran in the host");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(a);
        assert!(!Path::new("/run/netns").join(&name).exists());
        assert!(!Path::new("/sys/class/net").join(&name).exists());
        let status = sleeper.wait().expect("wait for sleep");
        assert!(!status.success(), "sleep was not killed");
    }
}

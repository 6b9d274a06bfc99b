//! A `kubectl-build serve` daemon process for tests, and the certificates
//! mutual TLS needs, made with the real `openssl` CLI.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `kubectl-build serve`, its stderr collected line by line.
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Daemon {
    /// Starts `bin --root ROOT serve ARGS`.
    pub fn start(bin: &Path, root: &Path, args: &[&str]) -> Daemon {
        let mut cmd = Command::new(bin);
        cmd.arg("--root").arg(root).arg("serve").args(args);
        Daemon::spawn(cmd)
    }

    /// Starts a prepared command (for instance `ip netns exec HOST kubectl-build ... serve`),
    /// with stdin and stdout closed and stderr collected.
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .env_remove("KUBECTL_BUILD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let lines = stderr_lines(&mut child);
        Daemon {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text` and returns it.
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "the daemon never logged {text:?}; stderr so far:\n{}",
            self.stderr.join("\n")
        );
    }

    /// The endpoint of the `listening on` line that contains `scheme`.
    pub fn listening(&mut self, scheme: &str) -> String {
        let line = self.wait_for(&format!("listening on {scheme}"));
        let at = line.find(scheme).expect("scheme in line");
        line[at..]
            .split_whitespace()
            .next()
            .expect("endpoint")
            .to_string()
    }

    /// The stderr lines seen so far by `wait_for` and `listening`.
    pub fn stderr_seen(&self) -> String {
        self.stderr.join("\n")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM; returns the exit code and the rest of stderr.
    pub fn terminate(mut self) -> (i32, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait for the daemon") {
                break s.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.stderr.push(line);
                }
                panic!(
                    "the daemon did not stop within 20 s of SIGTERM; its stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        (code, self.stderr.join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of a child's piped standard error, read on a thread as the
/// child writes them.
pub(crate) fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Runs the `openssl` CLI with `args` in `dir`, panicking on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `NAME-ca.pem` and, signed by it, `NAME-server.pem` for 127.0.0.1
/// (and the address IP) and `NAME-client.pem` (keys beside them as `.key`).
pub fn make_pki(dir: &Path, name: &str, ip: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    for (leaf, ext) in [
        (
            "server",
            format!("subjectAltName=IP:127.0.0.1,IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
        ),
        (
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n".to_string(),
        ),
    ] {
        let base = format!("{name}-{leaf}");
        std::fs::write(dir.join(format!("{base}.ext")), ext).expect("write the openssl extensions file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={base}"),
                "-keyout",
                &format!("{base}.key"),
                "-out",
                &format!("{base}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{base}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{base}.ext"),
                "-out",
                &format!("{base}.pem"),
            ],
        );
    }
}

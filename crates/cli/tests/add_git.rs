//! `ADD` of a git repository, served by a real `git daemon` on loopback:
//! refs, tags, subdirectories, `--keep-git-dir`, `--checksum`, and a
//! cached rebuild that asks `ls-remote` but clones nothing.

mod common;

use common::{kb, require_root, write};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs (the git package is installed by scripts/test.sh)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git daemon` serving `base` on a free loopback port; killed on drop.
struct GitDaemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = base.join("daemon.log");
        // `git daemon` runs git-daemon as its child, which killing `git`
        // would leave behind (holding the test's stdout): start the
        // program itself.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git --exec-path");
        let program =
            Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
        let child = Command::new(program)
            .args([
                "--reuseaddr",
                "--export-all",
                "--verbose",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("git daemon starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "git daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon { child, port, log }
    }

    /// How many times a client fetched (upload-pack without ls-remote's
    /// listing only is not distinguishable, so count the log's requests).
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Request upload-pack")
            .count()
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_of_a_git_repository_checks_out_refs_and_subdirectories() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = base.join("repo.git");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    write(&repo.join("README"), "first\n");
    write(&repo.join("sub/inner.txt"), "inner one\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    write(&repo.join("README"), "second\n");
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    let daemon = GitDaemon::start(&base);
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);

    let ctx = t.path().join("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM scratch\n\
             ADD {url}#v1 /tag/\n\
             ADD {url} /head/\n\
             ADD {url}#main:sub /sub/\n\
             ADD --keep-git-dir=true --checksum={first} {url}#{first} /kept/\n"
        ),
    );
    let store = t.path().join("s");
    let build = |dest: &str| {
        kb(&store, [ctx.to_str().unwrap()])
            .platform("linux/amd64")
            .plain()
            .output(format!("type=local,dest={}", t.path().join(dest).display()))
            .run()
    };
    let r = build("o1").ok();
    let o = t.path().join("o1");
    let read = |p: &str| std::fs::read_to_string(o.join(p)).unwrap();
    assert_eq!(read("tag/README"), "first\n", "{}", r.stderr);
    assert_eq!(read("head/README"), "second\n");
    assert_eq!(read("sub/inner.txt"), "inner one\n");
    assert!(!o.join("sub/README").exists(), "only the subdirectory");
    assert!(
        !o.join("head/.git").exists(),
        "no .git without --keep-git-dir"
    );
    assert!(o.join("kept/.git").is_dir(), "--keep-git-dir keeps .git");
    assert_eq!(
        git(&o.join("kept"), &["rev-parse", "HEAD"]),
        first,
        "the commit asked for"
    );

    // A rebuild asks which commit each ref names, and clones nothing.
    let fetched = daemon.requests();
    let r = build("o2").ok();
    assert!(r.stderr.matches("CACHED").count() >= 4, "{}", r.stderr);
    let o2 = t.path().join("o2");
    assert_eq!(
        std::fs::read_to_string(o2.join("head/README")).unwrap(),
        "second\n"
    );
    // ls-remote of three refs (the full commit id needs none); no fetch.
    assert_eq!(
        daemon.requests() - fetched,
        3,
        "{}",
        std::fs::read_to_string(&daemon.log).unwrap()
    );

    // A new commit on main is a new key: that step runs again.
    write(&repo.join("README"), "third\n");
    git(&repo, &["commit", "-q", "-am", "three"]);
    build("o3").ok();
    assert_eq!(
        std::fs::read_to_string(t.path().join("o3/head/README")).unwrap(),
        "third\n"
    );
    assert_eq!(
        std::fs::read_to_string(t.path().join("o3/tag/README")).unwrap(),
        "first\n"
    );

    // Errors: a ref that does not exist, a checksum that does not match.
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM scratch\nADD {url}#nope /x/\n"),
    );
    let r = build("o4").fails();
    assert!(
        r.stderr.contains("has no branch, tag or commit \"nope\""),
        "{}",
        r.stderr
    );
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM scratch\nADD --checksum={second} {url}#v1 /x/\n"),
    );
    let r = build("o5").fails();
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert!(
        !t.path().join("o5").exists(),
        "a failed build writes no output"
    );
}

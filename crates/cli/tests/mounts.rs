//! RUN --mount of type bind, tmpfs and ssh; `kubectl build doctor`; a full
//! disk under the store. Real sandbox, real overlay, real tmpfs.

mod common;

use common::{kb, require_root, write};

#[test]
fn bind_tmpfs_and_ssh_mounts() {
    let Some((t, store)) = common::busybox_store("linux/amd64") else {
        return;
    };
    let base = common::BUSYBOX;
    let ctx = t.path().join("ctx");
    write(&ctx.join("conf/app.conf"), "from the context\n");
    // A stand-in agent socket: any socket file forwards the same way.
    let sock = t.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {base} AS data\n\
             RUN mkdir -p /srv && echo from-stage > /srv/s.txt\n\
             FROM {base}\n\
             RUN --mount=type=bind,source=conf,target=/mnt/conf cat /mnt/conf/app.conf > /out-bind\n\
             RUN --mount=type=bind,from=data,source=/srv,target=/mnt/srv cat /mnt/srv/s.txt > /out-from\n\
             RUN --mount=type=bind,source=conf,target=/mnt/rw,rw echo scribble > /mnt/rw/app.conf && cat /mnt/rw/app.conf > /out-rw\n\
             RUN --mount=type=tmpfs,target=/scratch,size=1m sh -c 'echo t > /scratch/x && grep -q tmpfs /proc/mounts && echo ok > /out-tmpfs'\n\
             RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /out-ssh\n"
        ),
    );
    let out = t.path().join("out");
    let ssh = format!("default={}", sock.display());
    kb(&store, [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["--ssh", &ssh])
        .output(format!("type=local,dest={}", out.display()))
        .ok();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("out-bind"), "from the context\n");
    assert_eq!(read("out-from"), "from-stage\n");
    assert_eq!(read("out-rw"), "scribble\n");
    assert_eq!(
        std::fs::read_to_string(ctx.join("conf/app.conf")).unwrap(),
        "from the context\n",
        "rw bind writes are discarded"
    );
    assert_eq!(read("out-tmpfs"), "ok\n");
    assert_eq!(read("out-ssh").trim(), "/run/buildkit/ssh_agent.0");
    assert!(
        !out.join("scratch/x").exists(),
        "tmpfs content is not in the image"
    );
    assert!(
        !out.join("mnt/conf/app.conf").exists(),
        "bind content is not in the image"
    );
}

#[test]
fn doctor_reports_every_platform() {
    let t = tempfile::tempdir().unwrap();
    let r = kb(&t.path().join("s"), ["doctor"]).run();
    for p in [
        "linux/amd64",
        "linux/386",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm/v8",
        "linux/arm64",
        "linux/ppc64le",
        "linux/s390x",
        "windows/amd64",
    ] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(p)),
            "{p} missing:\n{}",
            r.stdout
        );
    }
    let win = r
        .stdout
        .lines()
        .find(|l| l.starts_with("windows/amd64"))
        .unwrap();
    assert!(win.contains("unsupported"), "{win}");
    let host = kbuild_platform::Platform::host().to_string();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap();
    assert!(line.contains("native"), "{line}");
}

#[test]
fn a_full_disk_fails_cleanly() {
    if !require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mount a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(small.clone());
    let ctx = t.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // Random bytes do not compress: the layer cannot fit in 4 MB.
    let mut data = vec![0u8; 6 << 20];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut data).unwrap();
    std::fs::write(ctx.join("big.bin"), &data).unwrap();
    write(&ctx.join("Dockerfile"), "FROM scratch\nCOPY big.bin /\n");
    let r = kb(&small.join("root"), [ctx.to_str().unwrap()])
        .platform("linux/amd64")
        .args(["-t", "kbuild.test/full:1"])
        .output("type=image")
        .fails();
    let error = r.error_line();
    assert!(
        error.contains("No space left on device") || error.contains("space"),
        "{}",
        r.stderr
    );
    // Nothing half-written is visible: no image ref, every blob matches its name.
    let refs = small.join("root/content/refs/image");
    assert!(
        !refs.exists() || std::fs::read_dir(&refs).unwrap().next().is_none(),
        "no image was stored"
    );
    let blobs = small.join("root/content/blobs/sha256");
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        use sha2::Digest;
        for e in rd.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                e.file_name().to_string_lossy(),
                "blob {:?} is whole",
                e.path()
            );
        }
    }
    // Nothing stays mounted under the store.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(small.join("root").to_str().unwrap()),
        "{mounts}"
    );
}

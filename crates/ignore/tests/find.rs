//! `find_ignore_file` on real directories.

use std::fs;

use kbuild_ignore::find_ignore_file;

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().join("docker");
    fs::create_dir(&dir).unwrap();
    let dockerfile = dir.join("Dockerfile.cross");
    fs::write(&dockerfile, "FROM scratch\n").unwrap();
    fs::write(ctx.path().join(".dockerignore"), "*\n").unwrap();

    assert_eq!(
        find_ignore_file(ctx.path(), &dockerfile),
        Some(ctx.path().join(".dockerignore"))
    );

    let specific = dir.join("Dockerfile.cross.dockerignore");
    fs::write(&specific, "build\n").unwrap();
    assert_eq!(find_ignore_file(ctx.path(), &dockerfile), Some(specific));

    // Another Dockerfile beside it does not pick up that file.
    let other = dir.join("Dockerfile");
    assert_eq!(
        find_ignore_file(ctx.path(), &other),
        Some(ctx.path().join(".dockerignore"))
    );
}

#[test]
fn default_dockerfile_in_the_context() {
    let ctx = tempfile::tempdir().unwrap();
    let dockerfile = ctx.path().join("Dockerfile");
    assert_eq!(find_ignore_file(ctx.path(), &dockerfile), None);
    fs::write(ctx.path().join("Dockerfile.dockerignore"), "x\n").unwrap();
    assert_eq!(
        find_ignore_file(ctx.path(), &dockerfile),
        Some(ctx.path().join("Dockerfile.dockerignore"))
    );
}

#[test]
fn stdin_dockerfile_uses_the_context_file() {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("-.dockerignore"), "x\n").unwrap();
    assert_eq!(find_ignore_file(ctx.path(), "-"), None);
    fs::write(ctx.path().join(".dockerignore"), "x\n").unwrap();
    assert_eq!(
        find_ignore_file(ctx.path(), "-"),
        Some(ctx.path().join(".dockerignore"))
    );
}

#[test]
fn directories_are_not_ignore_files_and_symlinks_are_followed() {
    let ctx = tempfile::tempdir().unwrap();
    fs::create_dir(ctx.path().join(".dockerignore")).unwrap();
    let dockerfile = ctx.path().join("Dockerfile");
    assert_eq!(find_ignore_file(ctx.path(), &dockerfile), None);

    let target = ctx.path().join("shared.ignore");
    fs::write(&target, "x\n").unwrap();
    std::os::unix::fs::symlink(&target, ctx.path().join("Dockerfile.dockerignore")).unwrap();
    assert_eq!(
        find_ignore_file(ctx.path(), &dockerfile),
        Some(ctx.path().join("Dockerfile.dockerignore"))
    );
    fs::remove_file(&target).unwrap();
    assert_eq!(
        find_ignore_file(ctx.path(), &dockerfile),
        None,
        "dangling link"
    );
}

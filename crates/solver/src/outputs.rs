//! Outputs of a build: push to a registry, keep as a local image, OCI layout
//! (tarball or directory), docker archive, or the final filesystem (tarball
//! or directory). File outputs are written beside their destination and
//! renamed into place, so a failed export leaves nothing half-written.

use crate::engine::{apply_layers, image_ref_name, SolveError, Solved, Solver};
use crate::error::OutputError;
use crate::options::{LayerHook, Output, OutputKind};
use kbuild_image::export;
use kbuild_image::tarball::{DeterministicTar, TarOptions};
use kbuild_image::Descriptor;
use kbuild_worker::snapshot::{ApplyOptions, ApplyReport};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the outputs did, for the summary and `--metadata-file`.
#[derive(Debug, Default, Clone)]
pub struct ExportReport {
    /// Names pushed to registries.
    pub pushed: Vec<String>,
    /// Names stored as local images.
    pub stored: Vec<String>,
    /// Files and directories written.
    pub written: Vec<PathBuf>,
    /// What the Docker daemon said it loaded (`--load`).
    pub loaded: Vec<String>,
    /// What `-o type=containerd` loaded, one line each (names, socket,
    /// namespace, platforms unpacked).
    pub containerd: Vec<String>,
    /// What a filesystem output left out on purpose (device nodes,
    /// setuid/setgid bits), one line each.
    pub notes: Vec<String>,
}

fn tar_options(solver: &Solver) -> TarOptions {
    TarOptions {
        source_date_epoch: solver
            .options()
            .source_date_epoch
            .and_then(|e| u64::try_from(e).ok()),
    }
}

/// Layer uploads of a build's first push output that start while the build
/// runs: made before the build, its [`EarlyPush::hook`] goes into
/// [`crate::engine::SolveOptions::on_layer`], and [`export_with`] then only
/// waits for those uploads before it uploads the rest (configs, base image
/// layers the registry lacks) and writes manifests, index and tags. A build
/// that fails drops it, which stops the uploads: no manifest or tag is
/// written.
#[derive(Debug, Clone)]
pub struct EarlyPush {
    uploads: Arc<kbuild_registry::BlobUploads>,
}

impl EarlyPush {
    /// Uploads for the first output of `outputs` that pushes (to its first
    /// name's repository), or `None` when no output pushes.
    pub fn new(
        registry: &kbuild_registry::Client,
        store: &kbuild_image::ContentStore,
        outputs: &[Output],
    ) -> Result<Option<EarlyPush>, SolveError> {
        let Some(out) = outputs.iter().find(|o| o.push) else {
            return Ok(None);
        };
        let refs = references(out)?;
        Ok(Some(EarlyPush {
            uploads: Arc::new(registry.blob_uploads(&refs, store)),
        }))
    }

    /// The hook that starts a layer's upload (in the background, bounded
    /// with the push's other uploads): a new layer's while it is being
    /// compressed, a layer from the cache or a base image's once reported.
    pub fn hook(&self) -> LayerHook {
        let uploads = Arc::downgrade(&self.uploads);
        let streams = uploads.clone();
        LayerHook::new(move |layer| {
            if let Some(u) = uploads.upgrade() {
                u.start(&layer.digest, layer.size);
            }
        })
        .with_stream(move || streams.upgrade().and_then(|u| u.stream()))
    }

    /// How many uploads were started so far.
    pub fn started(&self) -> usize {
        self.uploads.started()
    }
}

/// Checks every registry repository the outputs push to, all at once,
/// before the build starts: an unreachable registry or refused credentials
/// fail the build before any step runs, as buildx does.
pub async fn check_push_targets(
    registry: &kbuild_registry::Client,
    outputs: &[Output],
) -> Result<(), SolveError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut checks = Vec::new();
    for out in outputs.iter().filter(|o| o.push) {
        for r in references(out)? {
            if seen.insert((r.registry().to_string(), r.repository().to_string())) {
                checks.push(async move { registry.check_push(&r).await });
            }
        }
    }
    for result in futures_util::future::join_all(checks).await {
        result?;
    }
    Ok(())
}

fn references(out: &Output) -> Result<Vec<kbuild_registry::Reference>, SolveError> {
    Ok(out
        .names
        .iter()
        .map(|n| kbuild_registry::Reference::parse(n))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Run every output in order.
pub async fn export(
    solver: &Solver,
    result: &Solved,
    outputs: &[Output],
) -> Result<ExportReport, SolveError> {
    export_with(solver, result, outputs, None).await
}

/// Run every output in order; the first push output waits for the uploads
/// `early` started during the build instead of starting them again.
pub async fn export_with(
    solver: &Solver,
    result: &Solved,
    outputs: &[Output],
    early: Option<&EarlyPush>,
) -> Result<ExportReport, SolveError> {
    let mut early = early;
    let mut report = ExportReport::default();
    for out in outputs {
        match out.kind {
            OutputKind::Registry | OutputKind::Image => {
                push_or_store(solver, result, out, &mut early, &mut report).await?
            }
            OutputKind::Oci => report.written.push(write_oci(solver, result, out).await?),
            OutputKind::Docker => write_docker(solver, result, out, &mut report).await?,
            OutputKind::Containerd => {
                let line = crate::containerd_load::export(solver, result, out).await?;
                report.containerd.push(line);
            }
            OutputKind::Local | OutputKind::Tar => {
                write_files(solver, result, out, &mut report).await?
            }
        }
    }
    Ok(report)
}

/// `type=image` and `type=registry`: names in the local store, and a push
/// (waiting for `early`'s uploads, once).
async fn push_or_store(
    solver: &Solver,
    result: &Solved,
    out: &Output,
    early: &mut Option<&EarlyPush>,
    report: &mut ExportReport,
) -> Result<(), SolveError> {
    let store = solver.store();
    if out.kind == OutputKind::Image || !out.push {
        let gate = &solver.options().outputs_gate;
        for n in &out.names {
            let name = image_ref_name(n)?;
            gate.commit(Path::new(n), || store.set_ref(&name, &result.root.digest))?;
            report.stored.push(n.clone());
        }
    }
    if out.push {
        let refs = references(out)?;
        let root = &result.root;
        match early.take() {
            Some(e) => solver.registry().push_with(&refs, root, &e.uploads).await?,
            None => solver.registry().push(&refs, root, store).await?,
        }
        report.pushed.extend(out.names.iter().cloned());
    }
    Ok(())
}

/// `type=oci`: a layout tarball (a file or standard output) or directory.
async fn write_oci(solver: &Solver, result: &Solved, out: &Output) -> Result<PathBuf, SolveError> {
    let dest = dest_of(out)?;
    let ref_name = out.names.first().map(|n| tag_of(n));
    let store = solver.store().clone();
    let root = result.root.clone();
    let opts = tar_options(solver);
    let dest2 = dest.clone();
    let as_dir = out.as_directory;
    let gate = solver.options().outputs_gate.clone();
    blocking(move || {
        if dest2 == Path::new("-") {
            crate::stdout_stage::staged(|w| {
                export::oci_layout_tar(&store, &root, w, ref_name.as_deref(), &opts)
                    .map(drop)
                    .map_err(SolveError::from)
            })
        } else if as_dir {
            export::oci_layout_dir_gated(&store, &root, &dest2, ref_name.as_deref(), Some(&gate))
                .map_err(SolveError::from)
        } else {
            export::write_file_atomically_gated(&dest2, Some(&gate), |w| {
                export::oci_layout_tar(&store, &root, w, ref_name.as_deref(), &opts).map(drop)
            })
            .map_err(SolveError::from)
        }
    })
    .await?;
    Ok(dest)
}

/// `type=docker`: one platform's archive, into a file, standard output or
/// the Docker daemon (no `dest`).
async fn write_docker(
    solver: &Solver,
    result: &Solved,
    out: &Output,
    report: &mut ExportReport,
) -> Result<(), SolveError> {
    if result.images.len() != 1 {
        return Err(OutputError::DockerOnePlatform {
            platforms: result
                .images
                .iter()
                .map(|i| i.platform.to_string())
                .collect(),
        }
        .into());
    }
    let store = solver.store().clone();
    if out.dest.is_none() {
        let loaded = load_into_docker(
            &store,
            &result.images[0].manifest,
            &out.names,
            tar_options(solver),
        )
        .await?;
        report.loaded.extend(loaded);
        return Ok(());
    }
    let dest = dest_of(out)?;
    let manifest = result.images[0].manifest.clone();
    let names = out.names.clone();
    let opts = tar_options(solver);
    let dest2 = dest.clone();
    let gate = solver.options().outputs_gate.clone();
    blocking(move || {
        if dest2 == Path::new("-") {
            crate::stdout_stage::staged(|w| {
                export::docker_archive(&store, w, &manifest, &names, &opts)
                    .map(drop)
                    .map_err(SolveError::from)
            })
        } else {
            export::write_file_atomically_gated(&dest2, Some(&gate), |w| {
                export::docker_archive(&store, w, &manifest, &names, &opts).map(drop)
            })
            .map_err(SolveError::from)
        }
    })
    .await?;
    report.written.push(dest);
    Ok(())
}

/// `type=local` and `type=tar`: the final filesystem of each platform, with
/// a note for what a directory on this machine left out.
async fn write_files(
    solver: &Solver,
    result: &Solved,
    out: &Output,
    report: &mut ExportReport,
) -> Result<(), SolveError> {
    let dest = dest_of(out)?;
    let several = result.images.len() > 1;
    let store = solver.store().clone();
    let parts: Vec<(String, Vec<crate::engine::LayerRef>)> = result
        .images
        .iter()
        .map(|i| (platform_dir(&i.platform), i.state.layers.clone()))
        .collect();
    let opts = tar_options(solver);
    let as_tar = out.kind == OutputKind::Tar;
    let dest2 = dest.clone();
    // A tarball keeps every file as it is in the image; a directory on
    // this machine gets no device nodes and no setuid/setgid bits unless
    // asked, as `docker cp`.
    let apply = ApplyOptions {
        preserve_special: as_tar || out.preserve_special,
    };
    let gate = solver.options().outputs_gate.clone();
    let left_out = blocking(move || {
        write_filesystem(&store, &parts, several, &dest2, as_tar, opts, apply, &gate)
    })
    .await?;
    if left_out.devices_skipped > 0 {
        report.notes.push(format!(
            "{}: left out {} device node(s); add preserve-special=true to -o type=local to create them",
            dest.display(),
            left_out.devices_skipped
        ));
    }
    if left_out.privileges_dropped > 0 {
        report.notes.push(format!(
            "{}: cleared setuid/setgid bits or capabilities of {} file(s); add preserve-special=true to -o type=local to keep them",
            dest.display(),
            left_out.privileges_dropped
        ));
    }
    report.written.push(dest);
    Ok(())
}

/// `--load`: stages the docker archive in a temporary file, then posts it
/// to the Docker daemon (see [`crate::docker_load`]).
async fn load_into_docker(
    store: &std::sync::Arc<kbuild_image::ContentStore>,
    manifest: &Descriptor,
    names: &[String],
    opts: TarOptions,
) -> Result<Vec<String>, SolveError> {
    let socket = crate::docker_load::socket_from(std::env::var("DOCKER_HOST").ok().as_deref())
        .map_err(OutputError::Load)?;
    let staged = tempfile::Builder::new()
        .prefix("kubectl-build-load-")
        .suffix(".tar")
        .tempfile()
        .map_err(OutputError::StageLoad)?;
    let path = staged.path().to_path_buf();
    let (store, manifest, names) = (store.clone(), manifest.clone(), names.to_vec());
    let file = staged.reopen().map_err(OutputError::StageLoad)?;
    blocking(move || {
        export::docker_archive(
            &store,
            std::io::BufWriter::new(file),
            &manifest,
            &names,
            &opts,
        )
        .map_err(SolveError::from)
        .and_then(|mut w| w.flush().map_err(io("write", &path)))
    })
    .await?;
    Ok(crate::docker_load::load(&socket, staged.path())
        .await
        .map_err(OutputError::Load)?)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SolveError> + Send + 'static,
) -> Result<T, SolveError> {
    tokio::task::spawn_blocking(f).await?
}

fn dest_of(out: &Output) -> Result<PathBuf, SolveError> {
    out.dest
        .clone()
        .ok_or(SolveError::Output(OutputError::NoDest))
}

/// `name:tag` → `tag` for the OCI layout's ref name annotation (buildx uses the tag).
/// Runs `write` into a staging file and copies it to standard output only
/// once it is whole (`-o -`): a failure half-way leaves stdout empty.
pub fn staged_stdout(
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<(), SolveError>,
) -> Result<(), SolveError> {
    crate::stdout_stage::staged(write)
}

/// A platform's directory in a several-platform filesystem output
/// (`linux_amd64`), as buildx names it.
pub fn platform_dir(p: &kbuild_platform::Platform) -> String {
    p.to_string().replace('/', "_")
}

/// An OCI layout's `org.opencontainers.image.ref.name` for image name
/// `name`: its tag.
pub fn tag_of(name: &str) -> String {
    match kbuild_registry::Reference::parse(name) {
        Ok(r) => r.tag().unwrap_or("latest").to_string(),
        Err(_) => name.to_string(),
    }
}

/// An I/O error of an output, with what was being done and where.
pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SolveError {
    let path = path.to_path_buf();
    move |source| {
        OutputError::Io {
            action,
            path,
            source,
        }
        .into()
    }
}

/// The final filesystem of each platform, as a directory tree (`local`) or
/// one tarball (`tar`); several platforms get a subdirectory each
/// (`linux_amd64/`), as buildx does.
#[allow(clippy::too_many_arguments)]
fn write_filesystem(
    store: &kbuild_image::ContentStore,
    parts: &[(String, Vec<crate::engine::LayerRef>)],
    several: bool,
    dest: &Path,
    as_tar: bool,
    opts: TarOptions,
    apply: ApplyOptions,
    gate: &kbuild_image::CommitGate,
) -> Result<ApplyReport, SolveError> {
    let mut left_out = ApplyReport::default();
    let stage = FilesystemStage::new(dest)?;
    for (name, layers) in parts {
        let dir = if several {
            stage.tree().join(name)
        } else {
            stage.tree().to_path_buf()
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let r = apply_layers(store, layers, &dir, apply)?;
        left_out.devices_skipped += r.devices_skipped;
        left_out.privileges_dropped += r.privileges_dropped;
    }
    stage.finish(as_tar, opts, gate)?;
    Ok(left_out)
}

/// The staging tree of a `type=local` or `type=tar` output: a directory
/// beside `dest` (in the temporary directory for standard output) that is
/// filled first, then renamed into place as a whole (`local`) or written as
/// one deterministic tarball (`tar`). A build daemon's client assembles the
/// platforms several nodes streamed back in one (`linux_amd64/`, ...).
pub struct FilesystemStage {
    staging: tempfile::TempDir,
    tree: PathBuf,
    dest: PathBuf,
}

/// Where staging for the output `dest` goes: beside it, so the final
/// rename stays on one filesystem (the temporary directory for `-`,
/// standard output).
pub fn staging_parent(dest: &Path) -> PathBuf {
    if dest == Path::new("-") {
        std::env::temp_dir()
    } else {
        dest.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

impl FilesystemStage {
    /// Makes the staging directory for `dest` (`-`: standard output).
    pub fn new(dest: &Path) -> Result<FilesystemStage, SolveError> {
        let parent = staging_parent(dest);
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let staging = tempfile::Builder::new()
            .prefix(".kubectl-build-")
            .tempdir_in(&parent)
            .map_err(io("create a staging directory in", &parent))?;
        let tree = staging.path().join("rootfs");
        std::fs::create_dir(&tree).map_err(io("create", &tree))?;
        Ok(FilesystemStage {
            staging,
            tree,
            dest: dest.to_path_buf(),
        })
    }

    /// The tree to fill (the output's root).
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// A scratch directory in the staging directory (same file system as
    /// the tree: its contents can be renamed into the tree).
    pub fn scratch(&self, name: &str) -> Result<PathBuf, SolveError> {
        let dir = self.staging.path().join(name);
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        Ok(dir)
    }

    /// Writes the tree to its destination: a tarball (`as_tar`, mtimes
    /// clamped by `opts`) or the directory itself; the final rename goes
    /// through `gate` (none once Ctrl-C closed it).
    pub fn finish(
        self,
        as_tar: bool,
        opts: TarOptions,
        gate: &kbuild_image::CommitGate,
    ) -> Result<(), SolveError> {
        let dest = &self.dest;
        if as_tar {
            let file = self.staging.path().join("out.tar");
            {
                let f = std::fs::File::create(&file).map_err(io("create", &file))?;
                let mut t = DeterministicTar::new(std::io::BufWriter::new(f), opts);
                t.append_dir_tree(&self.tree, "")?;
                let w = t.finish()?;
                let f = w
                    .into_inner()
                    .map_err(|e| io("write", &file)(e.into_error()))?;
                // On disk before it takes its name: a crash leaves the old file
                // or the whole new one.
                f.sync_all().map_err(io("sync", &file))?;
            }
            if dest == Path::new("-") {
                let mut f = std::fs::File::open(&file).map_err(io("open", &file))?;
                std::io::copy(&mut f, &mut std::io::stdout().lock()).map_err(io("write", dest))?;
            } else {
                gate.commit(dest, || {
                    std::fs::rename(&file, dest).map_err(io("rename into", dest))
                })?;
            }
        } else {
            gate.commit(dest, || replace_with(&self.tree, dest))?;
        }
        Ok(())
    }
}

/// Puts the finished tree `staged` (in a staging directory beside `dest`)
/// at `dest`. An existing `dest` is exchanged with it in one atomic rename
/// (`renameat2` with `RENAME_EXCHANGE`), so `dest` is always either the old
/// whole tree or the new one, never a merge of both; the old tree, now at
/// `staged`, goes with the staging directory.
fn replace_with(staged: &Path, dest: &Path) -> Result<(), SolveError> {
    if std::fs::symlink_metadata(dest).is_err() {
        return std::fs::rename(staged, dest).map_err(io("rename into", dest));
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        staged,
        rustix::fs::CWD,
        dest,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| io("replace", dest)(std::io::Error::from(e)))?;
    if std::fs::symlink_metadata(staged).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(staged).map_err(io("remove the old tree of", dest))
    } else {
        std::fs::remove_file(staged).map_err(io("remove the old", dest))
    }
}

/// `-o type=local` from a tar of the filesystem (what a build daemon
/// streams back): applied with the worker's one extractor in a staging
/// directory beside `dest`, then exchanged into place as a local build's.
pub fn local_from_tar(
    reader: impl std::io::Read,
    dest: &Path,
    apply: ApplyOptions,
) -> Result<ApplyReport, SolveError> {
    let stage = FilesystemStage::new(dest)?;
    let report = kbuild_worker::snapshot::apply_layer_to_dir_with(stage.tree(), reader, apply)
        .map_err(|source| OutputError::Apply {
            dest: dest.to_path_buf(),
            source,
        })?;
    // Not gated: Ctrl-C during a daemon's output does not yet stop this
    // rename (a local build's outputs are gated).
    stage.finish(
        false,
        TarOptions::default(),
        &kbuild_image::CommitGate::new(),
    )?;
    Ok(report)
}

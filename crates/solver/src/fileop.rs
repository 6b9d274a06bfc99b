//! File ops: copy (from a state, the build context or a download), mkfile,
//! mkdir and rm applied in order to the parent state mounted with
//! overlayfs; the upper directory becomes the op's layer. Owners are
//! resolved against the changed state's `/etc/passwd` and `/etc/group`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kbuild_dockerfile::graph::{FileAction, FileOp, Op};
use kbuild_image::{BlobWatch, ContentStore};
use kbuild_worker::snapshot::Snapshotter;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::assemble::now_rfc3339;
use crate::cache::{self, KeyParts};
use crate::checksums::ChecksumCache;
use crate::copy;
use crate::engine::{Context, State};
use crate::error::{SolveError, StepError};
use crate::fsutil::{open_file_in, open_parent_in};
use crate::layer::{self, LayerOptions};
use crate::scheduler::{step_error, Exec, Value, Vertex};
use crate::users;

/// Where a copy action reads.
enum CopyFrom {
    /// A state's layers, mounted for the copy; owners are kept.
    Layers(Vec<PathBuf>),
    /// A host directory (the context, a download); files become root's.
    Dir {
        root: PathBuf,
        ignore: Option<kbuild_ignore::Matcher>,
        /// Learns the digests of the files the copy reads (a copy run
        /// before its key is known, see [`KeyFirst::RunFirst`]); the copy
        /// then also computes its checksum for the key.
        learn: Option<Arc<ChecksumCache>>,
    },
}

/// Whether a file op's key is known before it runs.
enum KeyFirst {
    /// The key: look it up in the caches, run the op on a miss.
    Key(String),
    /// One copy from the build context, most of whose files the checksum
    /// cache does not know (a fresh store, a fresh checkout): the key
    /// would read them all just to hash them, and the copy would read them
    /// again. The copy runs first instead, hashing each file as it copies
    /// it (one read per file), and the key is computed from those digests
    /// once it is done. If the key is then found in the cache, the cached
    /// state is the result, as if it had been found first.
    RunFirst,
}

/// Run a file op on `parent`. Returns the state and whether it came
/// from the cache.
pub(crate) async fn run(
    x: &Exec<'_>,
    op: &Op,
    f: &FileOp,
    parent: Arc<State>,
    inputs: &[Value],
    vertex: &Vertex<'_>,
) -> Result<(Arc<State>, bool), SolveError> {
    let solver = x.solver;
    let fail = |e: StepError| step_error(op, e);
    let instruction = instruction_of(op);
    check_dest(f, instruction).map_err(fail)?;
    let key = match key_first(x, op, f, inputs, instruction).map_err(fail)? {
        KeyFirst::Key(key) => Some(key),
        KeyFirst::RunFirst => None,
    };
    if let (Some(key), false) = (&key, solver.opts.no_cache) {
        if let Some(st) = cached(x, op, f, &parent, key).await? {
            vertex.start();
            return Ok((st, true));
        }
    }
    let learned = key.is_none().then(|| Arc::new(ChecksumCache::in_memory()));
    let job = LayerJob::prepare(x, op, f, &parent, inputs, learned.clone()).await?;
    let permit = solver.cpu.clone().acquire_owned().await?;
    vertex.start();
    let watch = x.layer_watch(op);
    let (layer, copied) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        job.run(watch)
    })
    .await?
    .map_err(fail)?;
    let key = match key {
        Some(key) => key,
        None => {
            let key = key_after_copy(x, op, f, inputs, learned.as_deref(), copied).map_err(fail)?;
            if !solver.opts.no_cache {
                if let Some(st) =
                    cache::cached(&solver.store, &key, &parent, solver.opts.compression)?
                {
                    // Its layer is, but for a store made by another
                    // version, the one just made (its snapshot already
                    // adopted under the same diff id); otherwise what was
                    // made is left to prune.
                    tracing::debug!(%key, "a copy run before its key was found in the cache");
                    return Ok((Arc::new(st), true));
                }
            }
            key
        }
    };
    let created = now_rfc3339(solver.opts.source_date_epoch);
    let st = result_state(&parent, f, layer.as_ref(), &created, key).map_err(fail)?;
    cache::record(&solver.store, &st, layer)?;
    Ok((Arc::new(st), false))
}

/// The state recorded under `key`: in the store, else in an imported cache
/// (`--cache-from`, its layer then brought into the store).
async fn cached(
    x: &Exec<'_>,
    op: &Op,
    f: &FileOp,
    parent: &Arc<State>,
    key: &str,
) -> Result<Option<Arc<State>>, SolveError> {
    let solver = x.solver;
    if let Some(st) = cache::cached(&solver.store, key, parent, solver.opts.compression)? {
        return Ok(Some(Arc::new(st)));
    }
    let Some(hit) = x.imported.lookup(solver, key).await else {
        return Ok(None);
    };
    let created = hit
        .created
        .unwrap_or_else(|| now_rfc3339(solver.opts.source_date_epoch));
    let st = result_state(parent, f, hit.layer.as_ref(), &created, key.to_string())
        .map_err(|e| step_error(op, e))?;
    cache::record(&solver.store, &st, hit.layer)?;
    Ok(Some(Arc::new(st)))
}

/// The key of a copy that ran before it (see [`KeyFirst::RunFirst`]): the
/// copy hashed what it read and computed the checksum of the context files
/// it copied (`copied`) on its walk, so the key looks at no file again.
/// Without that checksum, the key is computed as before a copy, from the
/// digests the copy learned.
fn key_after_copy(
    x: &Exec,
    op: &Op,
    f: &FileOp,
    inputs: &[Value],
    learned: Option<&ChecksumCache>,
    copied: Option<String>,
) -> Result<String, StepError> {
    if let (Some(cache), Some(learned)) = (x.ctx.checksums.as_ref(), learned) {
        cache.absorb(learned);
    }
    let instruction = instruction_of(op);
    let (Some(sum), [a @ FileAction::Copy { input, .. }]) = (copied, f.actions.as_slice()) else {
        return key(x, op, f, inputs, instruction);
    };
    let Some(Value::Context {
        dockerignore,
        name: None,
    }) = inputs.get(*input)
    else {
        return key(x, op, f, inputs, instruction);
    };
    if let Some(cache) = x.ctx.checksums.as_ref() {
        let req = request(a, instruction).unwrap_or_default();
        cache.tree_remember(&tree_request(*dockerignore, &req), &sum);
    }
    let mut key = key_parts(x, op, inputs);
    key.push(sum);
    Ok(key.finish())
}

/// Whether the op builds a Windows image.
fn is_windows(op: &Op) -> bool {
    op.platform
        .as_deref()
        .is_some_and(|p| p.starts_with("windows/"))
}

/// What a file op's blocking thread needs to change the parent state and
/// make its layer.
struct LayerJob {
    snaps: Arc<Snapshotter>,
    store: Arc<ContentStore>,
    actions: Vec<FileAction>,
    /// The parent's layer directories (none for `--link` and Windows).
    lowers: Vec<PathBuf>,
    froms: Vec<Option<CopyFrom>>,
    instruction: &'static str,
    opts: LayerOptions,
}

impl LayerJob {
    /// Gathers the parent's layers and the copies' sources; copies from a
    /// host directory tell `learned` the digests of what they read.
    async fn prepare(
        x: &Exec<'_>,
        op: &Op,
        f: &FileOp,
        parent: &State,
        inputs: &[Value],
        learned: Option<Arc<ChecksumCache>>,
    ) -> Result<LayerJob, SolveError> {
        let solver = x.solver;
        let windows = is_windows(op);
        // --link copies do not depend on the files under them; a Linux builder
        // cannot mount Windows layers, so a Windows op writes into an empty
        // layer too.
        let link = f.actions.iter().all(|a| match a {
            FileAction::Copy { link, .. } => *link,
            _ => false,
        });
        let lowers = if link || windows {
            Vec::new()
        } else {
            solver.layer_dirs(&parent.layers).await?
        };
        let mut froms = copy_sources(x, f, inputs).await.map_err(|e| match e {
            Ok(step) => step_error(op, step),
            Err(solve) => solve,
        })?;
        if let Some(l) = &learned {
            for from in froms.iter_mut().flatten() {
                if let CopyFrom::Dir { learn, .. } = from {
                    *learn = Some(Arc::clone(l));
                }
            }
        }
        Ok(LayerJob {
            snaps: solver.snaps.clone(),
            store: solver.store.clone(),
            actions: f.actions.clone(),
            lowers,
            froms,
            instruction: instruction_of(op),
            opts: LayerOptions {
                compression: solver.opts.compression,
                source_date_epoch: solver.opts.source_date_epoch,
                windows,
            },
        })
    }

    /// Mounts the parent, applies the actions and makes the layer (while
    /// copying, for one copy from a host directory; else from the diff),
    /// telling `watch` how far its blob is written. Returns the layer and
    /// the checksum of a copy that learns digests (see [`CopyFrom::Dir`]).
    fn run(
        self,
        mut watch: Option<Box<dyn BlobWatch>>,
    ) -> Result<(Option<layer::LayerRef>, Option<String>), StepError> {
        let mount = self
            .snaps
            .mount(&self.lowers)
            .map_err(|source| StepError::Mount {
                what: "root",
                source,
            })?;
        let mut one_pass = if one_pass(&self.actions, &self.froms, self.opts.windows) {
            let started =
                layer::OnePass::start(&self.store, &self.opts, mount.upper(), watch.take());
            match started {
                Ok(p) => Some(p),
                Err(e) => {
                    let _ = mount.unmount();
                    return Err(StepError::from(e));
                }
            }
        } else {
            None
        };
        let copied = match apply(
            &self.snaps,
            mount.merged(),
            &self.actions,
            &self.froms,
            self.instruction,
            self.opts.windows,
            one_pass.as_mut().map(|p| p as &mut dyn copy::Tee),
        ) {
            Ok(copied) => copied,
            Err(e) => {
                drop(one_pass);
                let _ = mount.unmount();
                return Err(e);
            }
        };
        let Some(closing) = one_pass.and_then(layer::OnePass::close) else {
            let layer = layer::commit(
                &self.snaps,
                &self.store,
                mount,
                &self.lowers,
                &self.opts,
                watch,
            )?;
            return Ok((layer, copied));
        };
        // The unmount and its walk of the upper run while the compressor
        // thread ends the blob (its last blocks, the store's fsync).
        let snapshot = match layer::unmount(mount) {
            Ok(s) => s,
            Err(e) => {
                closing.abandon();
                return Err(e);
            }
        };
        let layer = match closing.finish() {
            Some(made) => layer::adopt_made(&self.snaps, snapshot, made)?,
            None => layer::from_snapshot(
                &self.snaps,
                &self.store,
                snapshot,
                &self.lowers,
                &self.opts,
                watch,
            )?,
        };
        Ok((layer, copied))
    }
}

/// The state after a file op that added `layer` to `parent`, its history
/// entry dated `created`.
fn result_state(
    parent: &State,
    f: &FileOp,
    layer: Option<&layer::LayerRef>,
    created: &str,
    key: String,
) -> Result<State, StepError> {
    let mut st = parent.clone();
    crate::config::apply(&mut st.config, &f.config)?;
    match (layer, &f.history) {
        (Some(l), Some(h)) => st
            .config
            .push_layer(l.diff_id, crate::config::history(created, h, false)),
        (Some(l), None) => st.config.rootfs.diff_ids.push(l.diff_id),
        (None, Some(h)) => st
            .config
            .push_empty_layer(crate::config::history(created, h, true)),
        (None, None) => {}
    }
    if let Some(l) = layer {
        st.layers.push(l.clone());
    }
    st.key = key;
    Ok(st)
}

/// `COPY` or `ADD`, for messages (from the op's Dockerfile text).
pub(crate) fn instruction_of(op: &Op) -> &'static str {
    match op.meta.display.as_deref() {
        Some(d) if d.starts_with("ADD") => "ADD",
        _ => "COPY",
    }
}

/// Several sources need a destination directory ending with `/`.
fn check_dest(f: &FileOp, instruction: &'static str) -> Result<(), StepError> {
    let mut sources = 0;
    let mut dest = None;
    for a in &f.actions {
        if let FileAction::Copy {
            sources: s,
            dest: d,
            ..
        } = a
        {
            sources += s.len();
            dest = Some(d);
        }
    }
    match dest {
        Some(d) if sources > 1 && !d.ends_with('/') => Err(StepError::DestNotDir {
            instruction,
            dest: d.clone(),
        }),
        _ => Ok(()),
    }
}

/// Whether `f`'s key is computed before it runs (see [`KeyFirst`]).
fn key_first(
    x: &Exec,
    op: &Op,
    f: &FileOp,
    inputs: &[Value],
    instruction: &'static str,
) -> Result<KeyFirst, StepError> {
    let windows = is_windows(op);
    let (a, dockerignore) = match f.actions.as_slice() {
        [a @ FileAction::Copy { input, .. }] => match inputs.get(*input) {
            Some(Value::Context {
                dockerignore,
                name: None,
            }) => (a, *dockerignore),
            _ => return key(x, op, f, inputs, instruction).map(KeyFirst::Key),
        },
        _ => return key(x, op, f, inputs, instruction).map(KeyFirst::Key),
    };
    // With imported caches a hit is likely even where the checksum cache
    // is cold (a fresh CI runner): the key comes first.
    if windows || x.ctx.checksums.is_none() || !x.imported.is_empty() {
        return key(x, op, f, inputs, instruction).map(KeyFirst::Key);
    }
    let req = request(a, instruction).unwrap_or_default();
    if cold_checksums(x.ctx, dockerignore, &req) {
        // Nothing to look up: the probe's walk would only find every file
        // unknown.
        tracing::debug!("the checksum cache knows no file: the copy runs before its key is known");
        return Ok(KeyFirst::RunFirst);
    }
    match context_probe(x.ctx, dockerignore, &req)? {
        copy::Probe::Known(sum) => {
            let mut key = key_parts(x, op, inputs);
            key.push(sum);
            Ok(KeyFirst::Key(key.finish()))
        }
        // Most of the bytes would be read for the key alone (or, with
        // --no-cache, the key is only recorded): copy first.
        copy::Probe::Unknown { unknown, total, .. }
            if x.solver.opts.no_cache || unknown >= total - unknown =>
        {
            tracing::debug!(unknown, total, "the copy runs before its key is known");
            Ok(KeyFirst::RunFirst)
        }
        // The few unknown files are hashed for the key, from the probe's
        // walk (the tree is not walked again).
        copy::Probe::Unknown { walk, .. } => {
            let sum = walk.finish(x.ctx.checksums.as_deref())?;
            if let Some(cache) = x.ctx.checksums.as_ref() {
                cache.tree_remember(&tree_request(dockerignore, &req), &sum);
            }
            let mut key = key_parts(x, op, inputs);
            key.push(sum);
            Ok(KeyFirst::Key(key.finish()))
        }
    }
}

/// What every file op's key holds before the checksums of the context
/// files it reads.
fn key_parts(x: &Exec, op: &Op, inputs: &[Value]) -> KeyParts {
    let mut key = KeyParts::default();
    key.push(op.id.0.as_bytes());
    key.push(format!(
        "source-date-epoch:{:?}",
        x.solver.opts.source_date_epoch
    ));
    for i in inputs {
        key.push(i.key().as_bytes());
    }
    key
}

/// The cache key: the op, its inputs' keys, `SOURCE_DATE_EPOCH` (file
/// times and history dates depend on it) and the checksum of every
/// context file a copy reads.
pub(crate) fn key(
    x: &Exec,
    op: &Op,
    f: &FileOp,
    inputs: &[Value],
    instruction: &'static str,
) -> Result<String, StepError> {
    let mut key = key_parts(x, op, inputs);
    for a in &f.actions {
        let FileAction::Copy { input, .. } = a else {
            continue;
        };
        if let Some(Value::Context { dockerignore, name }) = inputs.get(*input) {
            let req = request(a, instruction).unwrap_or_default();
            key.push(context_checksum(
                x.ctx,
                *dockerignore,
                name.as_deref(),
                &req,
            )?);
        }
    }
    Ok(key.finish())
}

/// The digest of the context files `req` reads (of the `--build-context`
/// directory `name`, when given).
pub(crate) fn context_checksum(
    ctx: &Context,
    dockerignore: bool,
    name: Option<&str>,
    req: &copy::Request,
) -> Result<String, StepError> {
    let sum = on_context(ctx, dockerignore, name, |src| match src.checksums {
        None => copy::checksum(src, req),
        Some(cache) => cache.tree_checksum(&tree_request(dockerignore, req), || {
            copy::checksum(src, req)
        }),
    })?;
    Ok(sum?)
}

/// `f` on the context's files as a copy reads them (of the
/// `--build-context` directory `name`, when given; the digests remembered
/// are the main context's).
fn on_context<R>(
    ctx: &Context,
    dockerignore: bool,
    name: Option<&str>,
    f: impl FnOnce(&copy::Source) -> R,
) -> Result<R, StepError> {
    let dir = ctx.root(name)?;
    let excluded = |p: &str, d: bool| dockerignore && ctx.excluded(p, d);
    let descend = |p: &str| dockerignore && ctx.may_contain_included(p);
    let src = copy::Source {
        root: dir,
        what: "build context",
        excluded: &excluded,
        may_contain_included: &descend,
        keep_owner: false,
        checksums: ctx.checksums.as_deref().filter(|_| name.is_none()),
    };
    Ok(f(&src))
}

/// What the checksum reads of the request, for a cache that knows its
/// tree's generation (a builder daemon's context copy).
fn tree_request(dockerignore: bool, req: &copy::Request) -> Vec<u8> {
    let mut key = vec![u8::from(dockerignore)];
    for list in [&req.sources, &req.excludes] {
        key.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for p in list {
            key.extend_from_slice(&(p.len() as u64).to_le_bytes());
            key.extend_from_slice(p.as_bytes());
        }
    }
    key
}

/// Whether the context's checksum cache knows no file and no checksum
/// over this request's tree (see [`context_probe`]).
fn cold_checksums(ctx: &Context, dockerignore: bool, req: &copy::Request) -> bool {
    ctx.checksums.as_ref().is_some_and(|cache| {
        cache.knows_nothing() && !cache.tree_knows(&tree_request(dockerignore, req))
    })
}

/// [`copy::checksum_probe`] of the main context's files `req` reads; for a
/// context whose tree generation is known (a builder daemon's copy), the
/// checksum remembered for it without looking at any file, and a checksum
/// the probe finds is remembered.
fn context_probe(
    ctx: &Context,
    dockerignore: bool,
    req: &copy::Request,
) -> Result<copy::Probe, StepError> {
    let tree = ctx
        .checksums
        .as_ref()
        .map(|cache| (cache, tree_request(dockerignore, req)));
    if let Some(sum) = tree.as_ref().and_then(|(c, r)| c.tree_remembered(r)) {
        return Ok(copy::Probe::Known(sum));
    }
    let probe = on_context(ctx, dockerignore, None, |src| {
        copy::checksum_probe(src, req)
    })??;
    if let (Some((cache, request)), copy::Probe::Known(sum)) = (&tree, &probe) {
        cache.tree_remember(request, sum);
    }
    Ok(probe)
}

/// The copy request of a copy action (`None` for other actions).
fn request(a: &FileAction, instruction: &'static str) -> Option<copy::Request> {
    let FileAction::Copy {
        sources,
        dest,
        chmod,
        excludes,
        parents,
        unpack,
        ..
    } = a
    else {
        return None;
    };
    Some(copy::Request {
        sources: sources.clone(),
        dest: dest.clone(),
        chown: None,
        chmod: chmod.clone(),
        excludes: excludes.clone(),
        parents: *parents,
        unpack_archives: *unpack,
        instruction,
    })
}

/// Where each input a copy action reads comes from (`None` for inputs no
/// copy reads). The outer error is a step's, the inner one the build's.
async fn copy_sources(
    x: &Exec<'_>,
    f: &FileOp,
    inputs: &[Value],
) -> Result<Vec<Option<CopyFrom>>, Result<StepError, SolveError>> {
    let mut froms = Vec::with_capacity(inputs.len());
    for (i, value) in inputs.iter().enumerate() {
        let read = f
            .actions
            .iter()
            .any(|a| matches!(a, FileAction::Copy { input, .. } if *input == i));
        if !read {
            froms.push(None);
            continue;
        }
        froms.push(Some(match value {
            Value::State(s) => CopyFrom::Layers(x.solver.layer_dirs(&s.layers).await.map_err(Err)?),
            Value::Context { dockerignore, name } => CopyFrom::Dir {
                root: x.ctx.root(name.as_deref()).map_err(Ok)?.to_path_buf(),
                ignore: if *dockerignore {
                    x.ctx.ignore.clone()
                } else {
                    None
                },
                learn: None,
            },
            Value::Download(d) => CopyFrom::Dir {
                root: d.dir().await.map_err(Ok)?,
                ignore: None,
                learn: None,
            },
        }));
    }
    Ok(froms)
}

/// Whether the layer of `actions` can be made while they run
/// ([`layer::OnePass`]): one copy from a host directory into a Linux root.
fn one_pass(actions: &[FileAction], froms: &[Option<CopyFrom>], windows: bool) -> bool {
    match actions {
        [FileAction::Copy { input, .. }] => {
            !windows && matches!(froms.get(*input), Some(Some(CopyFrom::Dir { .. })))
        }
        _ => false,
    }
}

/// Apply the actions in order to the mounted root `merged`; a copy from a
/// host directory tells `tee` what it writes. Returns the checksum of the
/// (last) copy that learns digests (see [`CopyFrom::Dir`]).
fn apply(
    snaps: &Snapshotter,
    merged: &Path,
    actions: &[FileAction],
    froms: &[Option<CopyFrom>],
    instruction: &'static str,
    windows: bool,
    mut tee: Option<&mut dyn copy::Tee>,
) -> Result<Option<String>, StepError> {
    let mut copied = None;
    let path = |p: &str| {
        if windows {
            layer::windows_path(p)
        } else {
            p.to_string()
        }
    };
    for a in actions {
        match a {
            FileAction::Copy { input, chown, .. } => {
                let mut req = request(a, instruction).unwrap_or_default();
                if let Some(spec) = chown {
                    req.chown = Some(users::chown_ids(merged, spec)?);
                }
                let from = froms.get(*input).and_then(Option::as_ref);
                if let Some(sum) = copy_from(snaps, merged, from, &req, copy::again(&mut tee))? {
                    copied = Some(sum);
                }
            }
            FileAction::Mkfile {
                path: p,
                data,
                mode,
                chown,
            } => mkfile(merged, &path(p), data, *mode, chown.as_deref())?,
            FileAction::Mkdir {
                path: p,
                mode,
                parents,
                chown,
            } => mkdir(merged, &path(p), *mode, *parents, chown.as_deref())?,
            FileAction::Rm {
                path: p,
                allow_not_found,
            } => rm(merged, &path(p), *allow_not_found)?,
        }
    }
    Ok(copied)
}

/// One copy action; returns its checksum when it learns digests (see
/// [`CopyFrom::Dir`]).
fn copy_from(
    snaps: &Snapshotter,
    merged: &Path,
    from: Option<&CopyFrom>,
    req: &copy::Request,
    tee: Option<&mut dyn copy::Tee>,
) -> Result<Option<String>, StepError> {
    match from {
        Some(CopyFrom::Layers(lowers)) => {
            let m = snaps.mount(lowers).map_err(|source| StepError::Mount {
                what: "source",
                source,
            })?;
            let none = |_: &str, _: bool| false;
            let src = copy::Source {
                root: m.merged(),
                what: "source stage",
                excluded: &none,
                may_contain_included: &|_| false,
                keep_owner: true,
                checksums: None,
            };
            let r = copy::copy(&src, req, merged);
            m.unmount().map_err(|source| StepError::Snapshot {
                action: "unmount the source",
                source,
            })?;
            r?;
            Ok(None)
        }
        Some(CopyFrom::Dir {
            root,
            ignore,
            learn,
        }) => {
            let excluded = |p: &str, d: bool| ignore.as_ref().is_some_and(|m| m.is_excluded(p, d));
            let descend = |p: &str| ignore.as_ref().is_some_and(|m| m.may_contain_included(p));
            let src = copy::Source {
                root,
                what: "build context",
                excluded: &excluded,
                may_contain_included: &descend,
                keep_owner: false,
                checksums: learn.as_deref(),
            };
            Ok(copy::copy_teed(&src, req, merged, tee, learn.is_some())?)
        }
        None => Err(StepError::NoContext),
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StepError + '_ {
    move |source| StepError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to the container path `path` (a symlink there followed as
/// the container sees it), then its mode and owner, all through one
/// descriptor opened inside `root`.
fn mkfile(
    root: &Path,
    path: &str,
    data: &str,
    mode: u32,
    chown: Option<&str>,
) -> Result<(), StepError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let at = || io_at(Path::new(path));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
    let mut file = open_file_in(root, path, flags).map_err(at())?;
    file.write_all(data.as_bytes()).map_err(at())?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(at())?;
    let (uid, gid) = match chown {
        Some(spec) => users::chown_ids(root, spec)?,
        None => (0, 0),
    };
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(at())
}

/// Makes the directory `path` (and its parents with `parents`) unless it
/// is one already.
fn mkdir(
    root: &Path,
    path: &str,
    mode: u32,
    parents: bool,
    chown: Option<&str>,
) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    let at = || io_at(Path::new(path));
    if open_file_in(root, path, OFlags::DIRECTORY | OFlags::PATH).is_ok() {
        return Ok(());
    }
    let dir = OFlags::DIRECTORY | OFlags::RDONLY;
    let ids = users::user_ids(root, chown.unwrap_or_default())?;
    let made = if parents {
        let req = copy::Request {
            chown: Some((ids.uid, ids.gid)),
            ..Default::default()
        };
        copy::mkdir_all(root, path, &req)?;
        open_file_in(root, path, dir).map_err(at())?
    } else {
        let (parent, name) = open_parent_in(root, path)
            .map_err(at())?
            .ok_or_else(|| at()(std::io::ErrorKind::AlreadyExists.into()))?;
        rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o755))
            .map_err(|e| at()(e.into()))?;
        let made = rustix::fs::openat(&parent, &name, dir | OFlags::NOFOLLOW, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|e| at()(e.into()))?;
        std::os::unix::fs::fchown(&made, Some(ids.uid), Some(ids.gid)).map_err(at())?;
        made
    };
    if mode != 0o755 || !parents {
        made.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(at())?;
    }
    Ok(())
}

/// Removes `path` (a directory with what it holds; a symlink itself, not
/// what it points to) from its parent directory opened inside `root`.
fn rm(root: &Path, path: &str, allow_not_found: bool) -> Result<(), StepError> {
    let r = open_parent_in(root, path).and_then(|found| {
        let Some((parent, name)) = found else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let st = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // Through the parent's descriptor: the directory removed is the
            // one inside the root, whatever its ancestors become meanwhile.
            let fd = format!("/proc/self/fd/{}", parent.as_raw_fd());
            std::fs::remove_dir_all(Path::new(&fd).join(&name))
        } else {
            Ok(rustix::fs::unlinkat(&parent, &name, AtFlags::empty())?)
        }
    });
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_not_found => Ok(()),
        other => other.map_err(io_at(Path::new(path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// A root whose `/link` names `host/target` by its absolute host path,
    /// and the host directory `host`, which nothing may change.
    fn root_and_host() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let host = tempfile::tempdir().unwrap();
        let abs = std::fs::canonicalize(host.path()).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(abs.strip_prefix("/").unwrap())).unwrap();
        symlink(abs.join("target"), root.path().join("link")).unwrap();
        (root, host, abs)
    }

    #[test]
    fn mkfile_through_a_symlink_writes_inside_the_root() {
        let (root, _host, abs) = root_and_host();
        mkfile(root.path(), "/link", "data", 0o640, Some("7:8")).unwrap();
        assert!(!abs.join("target").exists(), "wrote outside the root");
        let inside = root
            .path()
            .join(abs.strip_prefix("/").unwrap())
            .join("target");
        assert_eq!(std::fs::read_to_string(&inside).unwrap(), "data");
        let md = std::fs::metadata(&inside).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o640, 7, 8));
        assert!(std::fs::symlink_metadata(root.path().join("link"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn mkdir_and_rm_stay_inside_the_root() {
        let (root, _host, abs) = root_and_host();
        std::fs::create_dir(abs.join("target")).unwrap();
        std::fs::write(abs.join("target/keep"), "host").unwrap();
        // `/link` names a directory that exists on the host, not in the
        // root: it is made in the root, and `..` never climbs above it.
        mkdir(root.path(), "/../../link/sub", 0o700, true, None).unwrap();
        let inside = root
            .path()
            .join(abs.strip_prefix("/").unwrap())
            .join("target");
        let md = std::fs::metadata(inside.join("sub")).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.mode() & 0o7777, 0o700);
        mkdir(root.path(), "/one", 0o750, false, None).unwrap();
        let md = std::fs::metadata(root.path().join("one")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        // A symlink is removed itself; a directory under one is the root's.
        rm(root.path(), "/link/sub", false).unwrap();
        assert!(!inside.join("sub").exists());
        rm(root.path(), "/link", false).unwrap();
        assert!(std::fs::symlink_metadata(root.path().join("link")).is_err());
        assert!(inside.is_dir());
        assert_eq!(
            std::fs::read_to_string(abs.join("target/keep")).unwrap(),
            "host"
        );
        rm(root.path(), "/missing", true).unwrap();
        assert!(matches!(
            rm(root.path(), "/missing", false),
            Err(StepError::Io { .. })
        ));
    }
}

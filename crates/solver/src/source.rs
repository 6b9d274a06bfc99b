//! Source ops: the states a graph starts from. An image (resolved before
//! the build), an empty filesystem, the build context, a downloaded URL,
//! a git checkout.

use std::sync::Arc;
use std::time::Instant;

use kbuild_dockerfile::graph::{ImagePin, Op, SourceOp};
use kbuild_image::ImageConfig;
use kbuild_platform::Platform;

use crate::cache;
use crate::config::ensure_path;
use crate::engine::State;
use crate::error::{SolveError, StepError};
use crate::progress::Event;
use crate::scheduler::{op_name, Downloaded, Exec, Fetch, Value};

/// The value of a source op; `reader` (the op that asked first) names
/// the step in download errors.
pub(crate) async fn value(
    x: &Exec<'_>,
    op: &Op,
    s: &SourceOp,
    reader: Option<&Op>,
) -> Result<Value, SolveError> {
    let fail = |source: StepError| SolveError::Step {
        step: op_name(reader.unwrap_or(op)),
        source,
    };
    match s {
        SourceOp::Scratch => Ok(Value::State(scratch(op)?)),
        SourceOp::Image {
            reference,
            platform,
            pin,
        } => shown(x, op, || image(x, op, reference, platform, pin.as_ref())).map(Value::State),
        SourceOp::Context {
            dockerignore, name, ..
        } => {
            x.ctx.root(name.as_deref()).map_err(fail)?;
            Ok(Value::Context {
                dockerignore: *dockerignore,
                name: name.clone(),
            })
        }
        SourceOp::Http {
            url,
            filename,
            checksum,
        } => http(x, url, filename, checksum.clone()).await.map_err(fail),
        SourceOp::Git {
            remote,
            reference,
            subdir,
            keep_git_dir,
            checksum,
        } => {
            let checkout = crate::git::Checkout {
                remote: remote.clone(),
                reference: reference.clone(),
                subdir: subdir.clone(),
                keep_git_dir: *keep_git_dir,
                checksum: checksum.clone(),
            };
            git(checkout).await.map_err(fail)
        }
    }
}

/// `source` (an image's state), shown as one vertex per stage that starts
/// from the image (the pull itself happened before the build).
fn shown<R>(x: &Exec, op: &Op, source: impl FnOnce() -> R) -> R {
    let shown: Vec<(u64, Instant)> = op
        .meta
        .progress
        .iter()
        .map(|name| {
            let id = x.solver.vertex();
            x.solver.progress.event(Event::Start {
                id,
                name: name.clone(),
            });
            (id, Instant::now())
        })
        .collect();
    let st = source();
    for (id, t) in shown {
        x.solver.progress.event(Event::Done {
            id,
            elapsed: t.elapsed(),
        });
    }
    st
}

/// A URL to download, keyed by what is known of its content without the
/// body (`--checksum`, or "not modified" since the last download);
/// otherwise it is downloaded now.
async fn http(
    x: &Exec<'_>,
    url: &str,
    filename: &str,
    checksum: Option<String>,
) -> Result<Value, StepError> {
    let fetch = crate::download::Fetch::new(
        url,
        filename,
        checksum,
        x.solver.opts.network_timeouts,
        x.solver.store.root().join("downloads"),
    )?;
    let (key, dir) = match fetch.known().await? {
        Some(known) => (known.key(), tokio::sync::OnceCell::new()),
        None => {
            let (dir, known) = fetch.to_temp_dir().await?;
            let root = dir.path().to_path_buf();
            (
                known.key(),
                tokio::sync::OnceCell::new_with(Some((dir, root))),
            )
        }
    };
    Ok(Value::Download(Arc::new(Downloaded {
        key,
        fetch: Fetch::Http(fetch),
        dir,
    })))
}

/// A git checkout, keyed by the commit `ls-remote` gives for it: the clone
/// waits until one of its readers misses the cache (a commit only the
/// clone can tell is cloned now).
async fn git(checkout: crate::git::Checkout) -> Result<Value, StepError> {
    let (commit, dir) = match checkout.resolve().await? {
        Some(c) => (c, tokio::sync::OnceCell::new()),
        None => {
            let (dir, root, c) = checkout.to_temp_dir(None).await?;
            (c, tokio::sync::OnceCell::new_with(Some((dir, root))))
        }
    };
    let key = format!(
        "git:{commit}:{}:{}",
        checkout.subdir.as_deref().unwrap_or(""),
        checkout.keep_git_dir
    );
    Ok(Value::Download(Arc::new(Downloaded {
        key,
        fetch: Fetch::Git(checkout, Some(commit)),
        dir,
    })))
}

fn platform_of(op: &Op, value: &str) -> Result<Platform, SolveError> {
    Platform::parse(value).map_err(|source| SolveError::OpPlatform {
        op: op.id.clone(),
        value: value.to_string(),
        source: Box::new(source),
    })
}

/// An empty filesystem; with a platform, an empty image config for it
/// (`PATH` defaulted on Linux, working in `/` as BuildKit's empty image).
fn scratch(op: &Op) -> Result<Arc<State>, SolveError> {
    let Some(p) = &op.platform else {
        return Ok(Arc::new(State {
            layers: Vec::new(),
            config: ImageConfig::default(),
            key: cache::key(&[b"scratch"]),
        }));
    };
    let platform = platform_of(op, p)?;
    let mut config = ImageConfig::for_platform(&platform);
    ensure_path(&mut config);
    if let Some(c) = config.config.as_mut() {
        c.working_dir = Some("/".to_string());
    }
    Ok(Arc::new(State {
        layers: Vec::new(),
        config,
        key: cache::key(&[b"scratch", platform.to_string().as_bytes()]),
    }))
}

/// A resolved image's layers and config (`PATH` defaulted on Linux),
/// keyed by its manifest digest.
fn image(
    x: &Exec,
    op: &Op,
    reference: &str,
    platform: &str,
    pin: Option<&ImagePin>,
) -> Result<Arc<State>, SolveError> {
    let platform = platform_of(op, platform)?;
    let img = x
        .images
        .get(&(reference.to_string(), platform.to_string(), pin.cloned()))
        .ok_or_else(|| SolveError::InvalidOp {
            op: op.id.clone(),
            problem: crate::error::GraphProblem::Unresolved(reference.to_string()),
        })?;
    let mut config = img.config.clone();
    ensure_path(&mut config);
    Ok(Arc::new(State {
        layers: img.layers.clone(),
        config,
        key: cache::key(&[b"image", img.manifest_digest.to_string().as_bytes()]),
    }))
}

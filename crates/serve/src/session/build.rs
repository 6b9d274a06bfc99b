//! The build of one session, in the steps a local build takes (see the
//! CLI's build): the store and a session directory under `--root`, the
//! outputs as this daemon runs them, a solver configured from the
//! `BuildStart` with this session's progress, credentials, secrets and SSH
//! agents, the build itself, its outputs and caches exported, and the
//! BuildDone that reports them.

use super::{
    ClientCredentials, ClientSecrets, Finished, Session, SessionDir, SessionError, Streamed,
    WireProgress,
};
use kbuild_image::ContentStore;
use kbuild_platform::Platform;
use kbuild_proto::v1;
use kbuild_solver::checksums::ChecksumCache;
use kbuild_solver::engine::{Context, SolveOptions, Solved, Solver};
use kbuild_solver::options::{
    Output, OutputKind, SecretProvider, SecretSource, SecretSpec, SshSpec,
};
use kbuild_solver::outputs::{EarlyPush, ExportReport};
use kbuild_solver::progress::Progress;
use kbuild_solver::remote_cache::{parse_caches, CacheDestination, CacheFrom, CacheTo};
use kbuild_worker::snapshot::Snapshotter;
use std::path::PathBuf;
use std::sync::Arc;

/// What runs a session's build: its solver, the uploads of its push that
/// start while the build runs, and the `--ssh` agent sockets its RUN steps
/// mount (served as long as this is kept).
struct Prepared {
    solver: Solver,
    early_push: Option<EarlyPush>,
    _agents: crate::ssh::Agents,
}

/// The cache exports of a build, for its BuildDone: one line per
/// `--cache-to` written and one warning per export `ignore-error=true`
/// let fail.
#[derive(Default)]
struct CacheReport {
    exports: Vec<String>,
    warnings: Vec<String>,
}

impl Session {
    /// Runs the build as a local one does (see the CLI's build), with this
    /// session's progress, credentials and secrets.
    pub(super) async fn build(
        &self,
        context_dir: Option<PathBuf>,
        checksums: Option<ChecksumCache>,
    ) -> Result<Finished, SessionError> {
        let root = &self.config.root;
        let store = Arc::new(ContentStore::open(root.join("content"))?);
        let _lock = store.lock_shared()?;
        let snapshots = Snapshotter::new(root.join("snapshots"))?;
        let session_dir = SessionDir::create(root)?;
        let (mut outputs, streamed) = session_outputs(&self.start, &session_dir)?;
        let prepared = self.prepare(store.clone(), snapshots, &session_dir, &outputs)?;
        let ctx = solve_context(&self.start, context_dir, checksums)?;
        let platforms = self.platforms()?;
        unpack_native(&mut outputs, &platforms, &self.config);
        let crate::Ran { solved, warnings } =
            crate::solve_start(&prepared.solver, &self.start, &ctx).await?;
        if self.start.push_by_digest {
            pin_pushes(&mut outputs, solved.root.digest)?;
        }
        let report = kbuild_solver::outputs::export_with(
            &prepared.solver,
            &solved,
            &outputs,
            prepared.early_push.as_ref(),
        )
        .await?;
        let caches = export_caches(&prepared.solver).await?;
        let hashed = keep_checksums(&ctx);
        let done = build_done(&store, &solved, report, warnings, caches, hashed);
        Ok((done, streamed, session_dir))
    }

    /// The solver of this session, configured from its start as a local
    /// build's is from its flags.
    fn prepare(
        &self,
        store: Arc<ContentStore>,
        snapshots: Snapshotter,
        session_dir: &SessionDir,
        outputs: &[Output],
    ) -> Result<Prepared, SessionError> {
        let start = &self.start;
        let (compression, force_compression) = kbuild_solver::options::layer_compression(outputs)?;
        let (registry, timeouts) = self.registry()?;
        let (agents, ssh) = self.agents(session_dir)?;
        let secrets = self.secrets();
        let add_hosts = start
            .add_hosts
            .iter()
            .map(|h| kbuild_solver::options::parse_add_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        let network = if start.network.is_empty() {
            Default::default()
        } else {
            kbuild_solver::options::parse_network(&start.network)?
        };
        let allow_insecure = start.allow.iter().any(|a| a == "security.insecure");
        let (cache_from, cache_to) = caches(start)?;
        let progress: Arc<dyn Progress> = Arc::new(WireProgress(self.queue.clone()));
        // With a push output, layers upload while the build goes on (each new
        // one while it is compressed), as in a local build.
        let early_push = EarlyPush::new(&registry, &store, outputs)?;
        let options = SolveOptions {
            no_cache: start.no_cache,
            pull: start.pull,
            compression,
            force_compression,
            source_date_epoch: start.source_date_epoch,
            secrets,
            ssh,
            add_hosts,
            network,
            allow_insecure,
            network_timeouts: timeouts,
            cache_mounts: self.config.root.join("cache-mounts"),
            executor: kbuild_worker::executor::Executor::current_exe(),
            cancel: self.cancel.clone(),
            on_layer: early_push.as_ref().map(|e| e.hook()).unwrap_or_default(),
            annotations: start
                .annotations
                .iter()
                .map(|a| kbuild_solver::options::Annotation::parse_flag(a))
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
            shm_size: match start.shm_size {
                0 => kbuild_worker::executor::DEFAULT_SHM_SIZE,
                n => n,
            },
            provenance: provenance_request(start, outputs)?,
            outputs_gate: Default::default(),
        };
        let solver = Solver::new(
            store,
            Arc::new(snapshots),
            Arc::new(registry),
            options,
            progress,
        )
        .with_cache(cache_from, cache_to);
        Ok(Prepared {
            solver,
            early_push,
            _agents: agents,
        })
    }

    /// The registry client of the build (the start's insecure registries
    /// and timeouts) and its timeouts; its credentials are asked from the
    /// client.
    fn registry(
        &self,
    ) -> Result<(kbuild_registry::Client, kbuild_registry::Timeouts), SessionError> {
        let credentials = kbuild_registry::Credentials::from_source(Arc::new(ClientCredentials {
            queue: self.queue.clone(),
            pending: self.pending.clone(),
        }));
        let timeouts = if self.start.registry_timeouts.is_empty() {
            kbuild_registry::Timeouts::default()
        } else {
            kbuild_registry::Timeouts::parse(&self.start.registry_timeouts)?
        };
        let registry = kbuild_registry::Client::new(kbuild_registry::ClientOptions {
            insecure: self.start.insecure_registries.clone(),
            credentials,
            timeouts,
            ..Default::default()
        })?;
        Ok((registry, timeouts))
    }

    /// `--ssh`: the client's agents, relayed through sockets of this session.
    fn agents(
        &self,
        session_dir: &SessionDir,
    ) -> Result<(crate::ssh::Agents, Vec<SshSpec>), SessionError> {
        let queue = self.queue.clone();
        let (agents, sockets) = crate::ssh::serve(
            &self.start.ssh_ids,
            &session_dir.0,
            &self.pending.ssh,
            Arc::new(move |m| queue.send(m)),
        )
        .map_err(SessionError::Ssh)?;
        let ssh = sockets
            .into_iter()
            .map(|(id, path)| SshSpec {
                id,
                paths: vec![path],
            })
            .collect();
        Ok((agents, ssh))
    }

    /// `--secret`: the ids the client offers, each value asked from it
    /// when a RUN mounts it.
    fn secrets(&self) -> Vec<SecretSpec> {
        let provider = SecretProvider(Arc::new(ClientSecrets {
            queue: self.queue.clone(),
            pending: self.pending.clone(),
        }));
        self.start
            .secret_ids
            .iter()
            .map(|id| SecretSpec {
                id: id.clone(),
                source: SecretSource::Provided(provider.clone()),
            })
            .collect()
    }

    /// The platforms the start asks for, logged: one line per build in the
    /// daemon's log (`kubectl logs` of a builder pod) says which platforms
    /// this daemon builds for which client.
    fn platforms(&self) -> Result<Vec<Platform>, SessionError> {
        let platforms = crate::wire_platforms(&self.start)?;
        tracing::info!(
            client = %self.start.client_hostname,
            "build: platforms {}",
            platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(platforms)
    }
}

/// The outputs of `start` as this daemon runs them: registry, image and
/// containerd ones here; those the client writes come back as files of
/// the session directory, streamed after the build (output index, file).
fn session_outputs(
    start: &v1::BuildStart,
    session_dir: &SessionDir,
) -> Result<(Vec<Output>, Streamed), SessionError> {
    let mut outputs = Vec::new();
    let mut streamed = Vec::new();
    for (i, spec) in start.outputs.iter().enumerate() {
        let mut o = Output::parse(spec, &start.tags)?;
        match o.kind {
            OutputKind::Registry | OutputKind::Image | OutputKind::Containerd => {}
            OutputKind::Docker if o.dest.is_none() => return Err(SessionError::DockerLoad),
            OutputKind::Oci if o.as_directory => return Err(SessionError::OciDirectory),
            _ => {
                if matches!(o.kind, OutputKind::Local) {
                    // A directory of the client: sent as a tarball that
                    // keeps special files, unpacked there.
                    o.kind = OutputKind::Tar;
                    o.preserve_special = true;
                }
                let file = session_dir.0.join(format!("out-{i}"));
                o.dest = Some(file.clone());
                streamed.push((i as u32, file));
            }
        }
        outputs.push(o);
    }
    Ok((outputs, streamed))
}

/// The start's registry and inline caches; a local one is a directory of
/// the client, which this daemon cannot reach.
fn caches(start: &v1::BuildStart) -> Result<(Vec<CacheFrom>, Vec<CacheTo>), SessionError> {
    let (cache_from, cache_to) = parse_caches(&start.cache_from, &start.cache_to)?;
    if cache_from
        .iter()
        .any(|c| matches!(c, CacheFrom::Local { .. }))
        || cache_to
            .iter()
            .any(|c| matches!(c.destination, CacheDestination::Local { .. }))
    {
        return Err(SessionError::LocalCache);
    }
    Ok((cache_from, cache_to))
}

/// What the build reads as its context: the synced copy, if any, with the
/// client's `.dockerignore`.
fn solve_context(
    start: &v1::BuildStart,
    dir: Option<PathBuf>,
    checksums: Option<ChecksumCache>,
) -> Result<Context, SessionError> {
    let ignore = if start.dockerignore.is_empty() {
        None
    } else {
        Some(kbuild_ignore::Matcher::parse(&start.dockerignore).map_err(SessionError::Ignore)?)
    };
    Ok(Context {
        dir,
        ignore,
        checksums: checksums.map(std::sync::Arc::new),
        named: Default::default(),
    })
}

/// A containerd output without unpack= unpacks what this daemon builds
/// of its own native platforms (a node of a mixed cluster loads its own
/// platform), not the host's, which an emulating node differs from. Read
/// once, and only when such an output exists (binfmt is probed).
fn unpack_native(outputs: &mut [Output], platforms: &[Platform], config: &crate::Config) {
    let mut native = None;
    for t in outputs
        .iter_mut()
        .filter_map(|o| o.containerd.as_mut())
        .filter(|t| t.unpack.is_empty())
    {
        let native: &Vec<Platform> =
            native.get_or_insert_with(|| crate::platforms(config.platforms.as_deref()).native);
        t.unpack = platforms
            .iter()
            .filter(|p| native.iter().any(|n| n.matches_strict(p)))
            .cloned()
            .collect();
    }
}

/// `push_by_digest`: blobs and manifests go up, pinned to the root digest,
/// and no tag is written (the coordinator merging several daemons' results
/// does).
fn pin_pushes(outputs: &mut [Output], root: kbuild_image::Digest) -> Result<(), SessionError> {
    for o in outputs.iter_mut().filter(|o| o.push) {
        o.names = o
            .names
            .iter()
            .map(|n| kbuild_registry::Reference::parse(n).map(|r| r.with_digest(root).to_string()))
            .collect::<Result<_, _>>()?;
    }
    Ok(())
}

/// Exports the build's `--cache-to` caches.
async fn export_caches(solver: &Solver) -> Result<CacheReport, SessionError> {
    let mut report = CacheReport::default();
    for c in solver
        .export_cache()
        .await
        .map_err(|e| SessionError::CacheExport(Box::new(e)))?
    {
        match &c.ignored {
            Some(e) => report
                .warnings
                .push(format!("{e} (ignore-error=true: the build still succeeds)")),
            None => report.exports.push(format!(
                "{}: {} records, {} layers",
                c.to, c.records, c.layers
            )),
        }
    }
    Ok(report)
}

/// Logs what computing the context's checksums read and keeps the copy's
/// checksum cache for the next build; returns the bytes hashed.
fn keep_checksums(ctx: &Context) -> u64 {
    let (Some(cache), Some(dir)) = (&ctx.checksums, &ctx.dir) else {
        return 0;
    };
    let hashed = cache.hashed_bytes();
    let (looked_up, remembered) = (cache.looked_up(), cache.tree_hits());
    tracing::info!(
        hashed,
        looked_up,
        remembered,
        "context: read {hashed} bytes of context content to compute checksums; looked up {looked_up} files, {remembered} checksums remembered for this copy"
    );
    if let Err(e) = cache.save(dir) {
        tracing::warn!(error = %e, "could not keep the context checksum cache");
    }
    hashed
}

/// The BuildDone of a finished build (without the transfer counters).
fn build_done(
    store: &ContentStore,
    solved: &Solved,
    report: ExportReport,
    warnings: Vec<String>,
    caches: CacheReport,
    hashed: u64,
) -> v1::BuildDone {
    let descriptor = |d: &kbuild_image::Descriptor| v1::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        platform: None,
    };
    let config_digest = match solved.images.as_slice() {
        [one] => store
            .read(&one.manifest.digest)
            .ok()
            .and_then(|b| kbuild_image::Manifest::parse(&b).ok())
            .map(|m| m.config.digest.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    v1::BuildDone {
        root: Some(descriptor(&solved.root)),
        pushed: report.pushed,
        stored: report.stored,
        loaded: report.containerd,
        manifests: solved
            .images
            .iter()
            .map(|i| v1::Descriptor {
                platform: Some(v1::Platform::from(&i.platform)),
                ..descriptor(&i.manifest)
            })
            .collect(),
        warnings: warnings.into_iter().chain(caches.warnings).collect(),
        cache_exports: caches.exports,
        config_digest,
        context_bytes_hashed: hashed,
        ..Default::default()
    }
}

/// The provenance a session's client asked for, recorded as the client
/// would (`--provenance`, through `BuildStart.provenance`).
fn provenance_request(
    start: &v1::BuildStart,
    outputs: &[Output],
) -> Result<Option<kbuild_solver::provenance::ProvenanceRequest>, SessionError> {
    use kbuild_solver::provenance::{parse_mode, Invocation, ProvenanceRequest};
    let mode = if start.provenance.is_empty() {
        None
    } else {
        parse_mode(&start.provenance).map_err(SessionError::Provenance)?
    };
    Ok(mode.map(|mode| {
        let inv = Invocation {
            build_args: start
                .build_args
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            labels: start
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            target: (!start.target.is_empty()).then_some(start.target.as_str()),
            contexts: start
                .named_images
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            context_dirs: Vec::new(),
            has_context: start.has_context,
            dockerfile: &start.dockerfile_path,
            names: outputs
                .iter()
                .flat_map(|o| o.names.iter().map(String::as_str))
                .collect(),
        };
        ProvenanceRequest::new(mode, &inv)
    }))
}

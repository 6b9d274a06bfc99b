//! The client side of a `Builder.Build` session: send the build options,
//! the context's entries (after `.dockerignore`, digests from the
//! stat-keyed checksum cache) and then only the contents the daemon asks
//! for; answer its questions (registry credentials, secrets) from the
//! client's own sources; hand progress and streamed outputs to the caller;
//! send Cancel when asked to.

use crate::config::Node;
use crate::connect::Dialer;
use crate::Error;
use kbuild_proto::v1::{
    self, build_client_message::Message as Out, build_server_message::Message as In,
};
use kbuild_proto::Endpoint;
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Entries in one ContextManifest message.
const MANIFEST_BATCH: usize = 1000;
/// Bytes of file content in one FileChunk.
const FILE_CHUNK: usize = 256 * 1024;
/// How long a cancelled build may take to say it stopped.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// The context to send.
pub struct ContextSource {
    /// The directory.
    pub dir: PathBuf,
    /// Its `.dockerignore` rules, and their text (sent to the daemon).
    pub ignore: Option<(kbuild_ignore::Matcher, String)>,
    /// Digests known from earlier builds (saved back by the caller).
    pub checksums: Option<Arc<kbuild_solver::checksums::ChecksumCache>>,
}

/// What the session asks of the client side.
pub trait Local: Send + Sync + 'static {
    /// One progress event (render it).
    fn progress(&self, event: v1::ProgressEvent);
    /// Registry credentials for `host`. Blocking is fine (helpers run).
    fn credentials(&self, host: &str) -> Result<Option<kbuild_registry::RegistryLogin>, String>;
    /// A registry token for `request` (the Bearer challenge `host` gave the
    /// daemon, and the scopes it needs), got with this side's own
    /// credentials, so that the daemon never holds the login. `Ok(None)`:
    /// answer with the login instead (what a client without this does).
    /// Blocking is fine.
    fn registry_token(
        &self,
        _host: &str,
        _request: &kbuild_registry::TokenRequest,
    ) -> Result<Option<kbuild_registry::RegistryToken>, String> {
        Ok(None)
    }
    /// A `--secret` value (`None`: no such secret). Blocking is fine.
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, String>;
    /// A piece of output `output` (index into the outputs sent); `last`
    /// ends it. Blocking is fine.
    fn result(&self, output: u32, data: Vec<u8>, last: bool) -> Result<(), String>;
    /// The agent socket of `--ssh` id `id` (`None`: the build was given no
    /// such agent; the daemon's RUN then sees the connection closed).
    fn ssh_agent(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

/// Runs one build on `node` of `builder` to its end: `Ok(done)` when the
/// daemon finished it (check `done.error`), `Err` when the session broke.
/// `interrupt` resolves when the user asks to stop (Ctrl-C).
pub async fn build(
    builder: &str,
    node: &Node,
    dialer: &dyn Dialer,
    mut start: v1::BuildStart,
    context: Option<ContextSource>,
    local: Arc<dyn Local>,
    interrupt: impl Future<Output = ()>,
) -> Result<v1::BuildDone, Error> {
    let endpoint = Endpoint::parse(&node.endpoint).map_err(|e| Error::Endpoint(Box::new(e)))?;
    if let Some(c) = &context {
        start.has_context = true;
        start.context_path = std::fs::canonicalize(&c.dir)
            .unwrap_or_else(|_| c.dir.clone())
            .display()
            .to_string();
        start.dockerignore = c
            .ignore
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
    }
    start.client_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel::<v1::BuildClientMessage>(8);
    let send = |m: Out| {
        let tx = tx.clone();
        async move {
            tx.send(v1::BuildClientMessage { message: Some(m) })
                .await
                .is_ok()
        }
    };
    // The context is walked while the connection and the stream open, its entries sent in
    // batches as the walk goes (the bounded channels keep them in step);
    // they follow the start message, which waits for the daemon's protocol.
    let (walk_tx, mut walk_rx) = mpsc::channel::<v1::BuildClientMessage>(8);
    // Where each content is, by digest, for the daemon's FileRequests: on
    // disk, written before the entries' batch is sent.
    let root = context.as_ref().map(|c| c.dir.clone()).unwrap_or_default();
    let (mut listing, mut listed) = listing().map_err(|source| Error::Context {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut walker = {
        let tx = walk_tx;
        let context = context.map(|c| (c.dir, c.ignore.map(|(m, _)| m), c.checksums));
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut batch = Vec::with_capacity(MANIFEST_BATCH);
            let mut failed = None;
            let mut emit = |entry: Option<(v1::ContextEntry, PathBuf)>| -> bool {
                if failed.is_some() {
                    return false;
                }
                let last = entry.is_none();
                if let Some((e, _)) = entry {
                    if let Err(e) = listing.add(&e) {
                        failed = Some(e);
                        return false;
                    }
                    batch.push(e);
                }
                if last || batch.len() == MANIFEST_BATCH {
                    if let Err(e) = listing.flush() {
                        failed = Some(e);
                        return false;
                    }
                    let m = Out::Manifest(v1::ContextManifest {
                        entries: std::mem::take(&mut batch),
                        complete: last,
                    });
                    return tx
                        .blocking_send(v1::BuildClientMessage { message: Some(m) })
                        .is_ok();
                }
                true
            };
            if let Some((dir, ignore, checksums)) = &context {
                walk_dir(dir, "", ignore.as_ref(), checksums.as_deref(), &mut emit)?;
            }
            emit(None);
            match failed {
                Some(source) => Err(Error::Context {
                    path: std::env::temp_dir(),
                    source,
                }),
                None => Ok(()),
            }
        })
    };
    let (channel, info) = dialer.dial(builder, node, Duration::from_secs(10)).await?;
    if info.protocol < kbuild_proto::BUILD_PROTOCOL {
        return Err(Error::Protocol {
            builder: builder.to_string(),
            endpoint,
            daemon: info.protocol,
            client: kbuild_proto::PROTOCOL_VERSION,
            advice: "building needs protocol 2: upgrade kubectl-build on the builder's machine and restart \"kubectl-build serve\"",
        });
    }
    // A daemon of protocol 3 gets the planned graph and not the Dockerfile;
    // an older one the Dockerfile, which it plans itself.
    if info.protocol >= kbuild_proto::GRAPH_PROTOCOL && !start.graph.is_empty() {
        start.dockerfile.clear();
    } else {
        start.graph.clear();
    }
    send(Out::Start(start)).await;
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = walk_rx.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    let lost = |status: tonic::Status| Error::Lost {
        builder: builder.to_string(),
        endpoint: endpoint.clone(),
        host: info.hostname.clone(),
        source: Box::new(status),
    };
    let mut client = kbuild_proto::v1::builder_client::BuilderClient::new(channel)
        .max_decoding_message_size(16 << 20);
    let mut inbound = client
        .build(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(lost)?
        .into_inner();
    // Contents go out in the order asked, one sender task after another.
    let (files_tx, mut files_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let content_tx = tx.clone();
    let mut file_sender = tokio::spawn(async move {
        while let Some(digests) = files_rx.recv().await {
            // One request's paths looked up at once, off the async threads.
            let (back, found) = tokio::task::spawn_blocking(move || {
                let found: Vec<_> = digests
                    .into_iter()
                    .map(|d| listed.find(&d).map(|rel| (d, rel)))
                    .collect();
                (listed, found)
            })
            .await
            .map_err(|e| format!("read the list of context files: {e}"))?;
            listed = back;
            for f in found {
                let (d, rel) = f.map_err(|e| format!("read the list of context files: {e}"))?;
                let Some(rel) = rel else {
                    return Err(format!(
                        "the builder asked for {d}, which the context does not hold"
                    ));
                };
                send_file(&content_tx, &d, &root.join(rel)).await?;
            }
        }
        Ok(())
    });
    tokio::pin!(interrupt);
    // `--ssh` connections the daemon relays, by stream number.
    let mut ssh_streams: std::collections::HashMap<u32, mpsc::UnboundedSender<v1::SshData>> =
        std::collections::HashMap::new();
    let mut cancelled = false;
    let mut sender_done = false;
    let mut walked = false;
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = &mut interrupt, if !cancelled => {
                cancelled = true;
                send(Out::Cancel(v1::Cancel {})).await;
                deadline = Some(Box::pin(tokio::time::sleep(CANCEL_GRACE)));
                continue;
            }
            w = &mut walker, if !walked => {
                walked = true;
                match w {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(Error::Session { builder: builder.to_string(), reason: format!("walk the context: {e}") }),
                }
            }
            sent = &mut file_sender, if !sender_done => {
                sender_done = true;
                match sent {
                    Ok(Ok(())) => continue,
                    Ok(Err(reason)) => return Err(Error::Session { builder: builder.to_string(), reason }),
                    Err(e) => return Err(Error::Session { builder: builder.to_string(), reason: e.to_string() }),
                }
            }
            _ = async { if let Some(d) = deadline.as_mut() { d.await } else { std::future::pending().await } } => {
                return Err(Error::Cancelled { builder: builder.to_string() });
            }
        };
        let message = match message {
            Ok(Some(v1::BuildServerMessage { message: Some(m) })) => m,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(lost(tonic::Status::unavailable(
                    "the builder closed the stream before the build ended",
                )))
            }
            Err(status) => return Err(lost(status)),
        };
        match message {
            In::FileRequest(r) => {
                let _ = files_tx.send(r.digests);
            }
            In::Progress(p) => local.progress(p),
            In::CredentialsRequest(r) => {
                let local = local.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut resp = v1::CredentialsResponse {
                        host: r.host.clone(),
                        id: r.id,
                        ..Default::default()
                    };
                    // A Bearer challenge: a token for exactly the scopes
                    // asked, so that the login stays here.
                    if !r.realm.is_empty() {
                        let request = kbuild_registry::TokenRequest {
                            realm: r.realm,
                            service: (!r.service.is_empty()).then_some(r.service),
                            scopes: r.scopes,
                        };
                        let (local, host) = (local.clone(), r.host.clone());
                        let token = tokio::task::spawn_blocking(move || {
                            local.registry_token(&host, &request)
                        })
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                        let done = match token {
                            Ok(Some(t)) => {
                                resp.registry_token = t.token;
                                resp.expires_in_seconds = t.expires_in.as_secs().max(1);
                                true
                            }
                            Ok(None) => false,
                            Err(e) => {
                                resp.error = e;
                                true
                            }
                        };
                        if done {
                            let _ = tx
                                .send(v1::BuildClientMessage {
                                    message: Some(Out::Credentials(resp)),
                                })
                                .await;
                            return;
                        }
                    }
                    let host = r.host.clone();
                    let answer = tokio::task::spawn_blocking(move || local.credentials(&host))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    match answer {
                        Ok(Some(l)) => {
                            resp.username = l.username.unwrap_or_default();
                            resp.secret = l.password.unwrap_or_default();
                            resp.token = l.identity_token.unwrap_or_default();
                        }
                        Ok(None) => {}
                        Err(e) => resp.error = e,
                    }
                    let _ = tx
                        .send(v1::BuildClientMessage {
                            message: Some(Out::Credentials(resp)),
                        })
                        .await;
                });
            }
            In::SecretRequest(r) => {
                let local = local.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let id = r.id.clone();
                    let answer = tokio::task::spawn_blocking(move || local.secret(&id))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    let mut resp = v1::SecretResponse {
                        id: r.id,
                        request: r.request,
                        ..Default::default()
                    };
                    match answer {
                        Ok(Some(data)) => resp.data = data,
                        Ok(None) => resp.missing = true,
                        Err(e) => resp.error = e,
                    }
                    let _ = tx
                        .send(v1::BuildClientMessage {
                            message: Some(Out::Secret(resp)),
                        })
                        .await;
                });
            }
            In::SshOpen(o) => {
                let agent = local.ssh_agent(&o.id);
                let (to_agent, from_daemon) = mpsc::unbounded_channel();
                ssh_streams.insert(o.stream, to_agent);
                tokio::spawn(ssh_relay(agent, o.stream, from_daemon, tx.clone()));
            }
            In::Ssh(d) => {
                let (stream, eof) = (d.stream, d.eof);
                if let Some(to_agent) = ssh_streams.get(&stream) {
                    let _ = to_agent.send(d);
                }
                if eof {
                    ssh_streams.remove(&stream);
                }
            }
            In::Result(chunk) => {
                let local = local.clone();
                tokio::task::spawn_blocking(move || {
                    local.result(chunk.output, chunk.data, chunk.last)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .map_err(|reason| Error::Session {
                    builder: builder.to_string(),
                    reason,
                })?;
            }
            In::Done(done) => {
                file_sender.abort();
                walker.abort();
                if cancelled || done.cancelled {
                    return Err(Error::Cancelled {
                        builder: builder.to_string(),
                    });
                }
                if done.shutting_down {
                    return Err(Error::ShuttingDown {
                        builder: builder.to_string(),
                        endpoint: endpoint.clone(),
                        host: info.hostname.clone(),
                        reason: done.error,
                    });
                }
                return Ok(done);
            }
        }
    }
}

/// One `--ssh` agent connection a RUN on the daemon opened: joined to the
/// local agent socket `agent`; the daemon's bytes come through
/// `from_daemon`, the agent's go out as `SshData` on `tx`. Without an agent
/// (or when it cannot be reached) the connection is closed at once.
async fn ssh_relay(
    agent: Option<PathBuf>,
    stream: u32,
    mut from_daemon: mpsc::UnboundedReceiver<v1::SshData>,
    tx: mpsc::Sender<v1::BuildClientMessage>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let eof = v1::BuildClientMessage {
        message: Some(Out::Ssh(v1::SshData {
            stream,
            data: Vec::new(),
            eof: true,
        })),
    };
    let conn = match agent {
        Some(path) => match tokio::net::UnixStream::connect(&path).await {
            Ok(c) => c,
            Err(_) => {
                let _ = tx.send(eof).await;
                return;
            }
        },
        None => {
            let _ = tx.send(eof).await;
            return;
        }
    };
    let (mut read, mut write) = conn.into_split();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let m = v1::BuildClientMessage {
                        message: Some(Out::Ssh(v1::SshData {
                            stream,
                            data: buf[..n].to_vec(),
                            eof: false,
                        })),
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                _ => {
                    let _ = tx.send(eof).await;
                    return;
                }
            }
        }
    });
    while let Some(d) = from_daemon.recv().await {
        if !d.data.is_empty() && write.write_all(&d.data).await.is_err() {
            break;
        }
        if d.eof {
            break;
        }
    }
    let _ = write.shutdown().await;
    let _ = up.await;
}

/// The raw bytes of a `sha256:` digest.
fn raw_digest(digest: &str) -> Option<[u8; 32]> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(digest.strip_prefix("sha256:")?, &mut raw).ok()?;
    Some(raw)
}

/// The context's files as the walk lists them, kept in an unnamed
/// temporary file so that the client's memory stays bounded whatever the
/// size of the context: one record per file (its digest, the length of its
/// path, the path), written by [`Listing`] and searched by [`Listed`].
fn listing() -> std::io::Result<(Listing, Listed)> {
    let file = tempfile::tempfile()?;
    let read = file.try_clone()?;
    Ok((
        Listing {
            w: std::io::BufWriter::with_capacity(1 << 16, file),
        },
        Listed {
            file: read,
            cursor: Cursor::default(),
        },
    ))
}

/// The writing end of [`listing`].
struct Listing {
    w: std::io::BufWriter<std::fs::File>,
}

impl Listing {
    /// Lists `e` when it is a file.
    fn add(&mut self, e: &v1::ContextEntry) -> std::io::Result<()> {
        let Some(raw) = raw_digest(&e.digest) else {
            return Ok(());
        };
        self.w.write_all(&raw)?;
        self.w.write_all(&(e.path.len() as u32).to_le_bytes())?;
        self.w.write_all(e.path.as_bytes())
    }

    /// Makes what was listed so far readable by [`Listed`].
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// The reading end of [`listing`]: a cursor that only moves forward. The
/// daemon asks for contents in the order their entries came, each digest
/// once, so each is found after the one before it; one asked for out of
/// that order costs a scan from the start.
struct Listed {
    file: std::fs::File,
    cursor: Cursor,
}

/// A position in the records of a [`Listed`].
#[derive(Default)]
struct Cursor {
    /// Bytes read from the file; those before `at` are parsed.
    buf: Vec<u8>,
    at: usize,
    /// Where the next read starts (with `pread`: the writer's offset,
    /// which the two handles share, is left alone).
    read_to: u64,
}

/// Bytes of a record before its path.
const LISTED_HEAD: usize = 32 + 4;

impl Listed {
    /// The path (relative to the context) of a file with content `digest`.
    fn find(&mut self, digest: &str) -> std::io::Result<Option<String>> {
        let Some(raw) = raw_digest(digest) else {
            return Ok(None);
        };
        if let Some(rel) = self.cursor.scan(&self.file, &raw)? {
            return Ok(Some(rel));
        }
        // Out of order: from the start, leaving the cursor where it is.
        Cursor::default().scan(&self.file, &raw)
    }
}

impl Cursor {
    /// Reads records until one of `raw`, or the end of what was written
    /// (a record cut short there is read again once complete).
    fn scan(&mut self, file: &std::fs::File, raw: &[u8; 32]) -> std::io::Result<Option<String>> {
        loop {
            let rest = &self.buf[self.at..];
            if rest.len() >= LISTED_HEAD {
                let mut len = [0u8; 4];
                len.copy_from_slice(&rest[32..LISTED_HEAD]);
                let end = LISTED_HEAD + u32::from_le_bytes(len) as usize;
                if rest.len() >= end {
                    let found = (rest[..32] == raw[..])
                        .then(|| String::from_utf8_lossy(&rest[LISTED_HEAD..end]).into_owned());
                    self.at += end;
                    if found.is_some() {
                        return Ok(found);
                    }
                    continue;
                }
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let old = self.buf.len();
            self.buf.resize(old + (1 << 16), 0);
            let n = file.read_at(&mut self.buf[old..], self.read_to)?;
            self.buf.truncate(old + n);
            if n == 0 {
                return Ok(None);
            }
            self.read_to += n as u64;
        }
    }
}

async fn send_file(
    tx: &mpsc::Sender<v1::BuildClientMessage>,
    digest: &str,
    path: &Path,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let chunk = v1::FileChunk {
            digest: digest.to_string(),
            offset,
            data: buf[..n].to_vec(),
            last: n == 0,
        };
        offset += n as u64;
        tx.send(v1::BuildClientMessage {
            message: Some(Out::File(chunk)),
        })
        .await
        .map_err(|_| "the session ended".to_string())?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Walks the context, handing `emit` each entry (directories, files,
/// symbolic links) that `.dockerignore` keeps, with the files' digests and
/// paths, in walk order: names sorted byte-wise, a directory before what it
/// holds. A directory that is ignored is still walked (an exception may
/// bring files back); it is listed when anything under it is, so entries
/// below it wait until one is kept. `emit` returning false stops the walk
/// (the session ended).
fn walk_dir(
    root: &Path,
    rel: &str,
    ignore: Option<&kbuild_ignore::Matcher>,
    checksums: Option<&kbuild_solver::checksums::ChecksumCache>,
    emit: &mut dyn FnMut(Option<(v1::ContextEntry, PathBuf)>) -> bool,
) -> Result<(), Error> {
    match walk_below(root, rel, ignore, checksums, &mut Vec::new(), emit) {
        Ok(_) | Err(Stop::Ended) => Ok(()),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Why a walk stopped early.
enum Stop {
    /// The session ended (it reports why).
    Ended,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

/// Sends the held directories, then `entry`.
fn send(
    held: &mut Vec<(v1::ContextEntry, PathBuf)>,
    entry: (v1::ContextEntry, PathBuf),
    emit: &mut dyn FnMut(Option<(v1::ContextEntry, PathBuf)>) -> bool,
) -> Result<(), Stop> {
    for h in held.drain(..).chain(std::iter::once(entry)) {
        if !emit(Some(h)) {
            return Err(Stop::Ended);
        }
    }
    Ok(())
}

/// Walks `rel`; `held` are ignored directories above it not sent yet.
/// Returns whether anything was sent.
fn walk_below(
    root: &Path,
    rel: &str,
    ignore: Option<&kbuild_ignore::Matcher>,
    checksums: Option<&kbuild_solver::checksums::ChecksumCache>,
    held: &mut Vec<(v1::ContextEntry, PathBuf)>,
    emit: &mut dyn FnMut(Option<(v1::ContextEntry, PathBuf)>) -> bool,
) -> Result<bool, Stop> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Context { path, source }
    };
    // Each entry's metadata comes from the directory's own descriptor
    // (`statx` of a name in it), not from a lookup of its whole path.
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(err(&dir))?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<Result<_, _>>()
        .map_err(err(&dir))?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut any = false;
    for (name, dirent) in entries {
        let Some(name) = name.to_str() else {
            return Err(Stop::Failed(Error::Context {
                path: dir.join(&name),
                source: std::io::Error::other("the name is not UTF-8"),
            }));
        };
        let path = dir.join(name);
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let md = dirent.metadata().map_err(err(&path))?;
        let excluded = ignore.is_some_and(|m| m.is_excluded(&child, md.is_dir()));
        let mut entry = v1::ContextEntry {
            path: child.clone(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.len(),
            mtime_unix_nanos: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ..Default::default()
        };
        if md.is_dir() {
            if excluded {
                if !ignore.is_some_and(|m| m.may_contain_included(&child)) {
                    continue;
                }
                // Sent only when something below it is.
                let depth = held.len();
                held.push((entry, path));
                if walk_below(root, &child, ignore, checksums, held, emit)? {
                    any = true;
                }
                held.truncate(depth);
            } else {
                send(held, (entry, path), emit)?;
                any = true;
                walk_below(root, &child, ignore, checksums, held, emit)?;
            }
            continue;
        }
        if excluded {
            continue;
        }
        if md.file_type().is_symlink() {
            entry.link_target = std::fs::read_link(&path)
                .map_err(err(&path))?
                .to_string_lossy()
                .into_owned();
        } else if md.is_file() {
            entry.digest = match checksums {
                Some(c) => format!(
                    "sha256:{}",
                    c.digest(&child, &path, &md).map_err(err(&path))?
                ),
                None => hash_file(&path).map_err(err(&path))?,
            };
        } else {
            // Sockets, pipes, devices: not part of a build context.
            continue;
        }
        any = true;
        send(held, (entry, path), emit)?;
    }
    Ok(any)
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, n: u8) -> v1::ContextEntry {
        v1::ContextEntry {
            path: path.to_string(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            ..Default::default()
        }
    }

    #[test]
    fn the_listing_finds_files_in_order_out_of_order_and_only_once_written() {
        let (mut listing, mut listed) = listing().unwrap();
        let dir = v1::ContextEntry {
            path: "d".to_string(),
            ..Default::default()
        };
        listing.add(&dir).unwrap();
        // Long paths, so that the records span several reads.
        let long = "x".repeat(20_000);
        for i in 0..10u8 {
            listing.add(&file(&format!("d/{long}{i}"), i)).unwrap();
        }
        listing.add(&file("d/same", 3)).unwrap();
        listing.flush().unwrap();
        let digest = |n: u8| format!("sha256:{}", hex::encode([n; 32]));
        // In the order listed; a content listed twice is found at its first.
        assert_eq!(listed.find(&digest(1)).unwrap(), Some(format!("d/{long}1")));
        assert_eq!(listed.find(&digest(3)).unwrap(), Some(format!("d/{long}3")));
        assert_eq!(listed.find(&digest(8)).unwrap(), Some(format!("d/{long}8")));
        // Out of order: still found.
        assert_eq!(listed.find(&digest(2)).unwrap(), Some(format!("d/{long}2")));
        assert_eq!(listed.find(&digest(9)).unwrap(), Some(format!("d/{long}9")));
        // Not listed (a directory has no digest), or not yet flushed.
        assert_eq!(listed.find(&digest(42)).unwrap(), None);
        assert_eq!(listed.find("sha256:nothex").unwrap(), None);
        listing.add(&file("e", 42)).unwrap();
        assert_eq!(listed.find(&digest(42)).unwrap(), None);
        listing.flush().unwrap();
        assert_eq!(listed.find(&digest(42)).unwrap(), Some("e".to_string()));
    }
}

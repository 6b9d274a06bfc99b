//! The client side of a `Builder.Build` session: send the build options,
//! the context's entries (after `.dockerignore`, digests from the
//! stat-keyed checksum cache) and then only the contents the daemon asks
//! for; answer its questions (registry credentials, secrets) from the
//! client's own sources; hand progress and streamed outputs to the caller;
//! send Cancel when asked to.

use crate::config::Node;
use crate::connect::{Dialer, NodeInfo};
use crate::Error;
use kbuild_proto::v1::{
    self, build_client_message::Message as Out, build_server_message::Message as In,
};
use kbuild_proto::Endpoint;
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

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

/// Why the client side could not answer or take something: the daemon
/// gets its text ([`Local::credentials`], [`Local::secret`]), or the
/// session ends with it ([`Local::result`]).
pub type LocalError = Box<dyn std::error::Error + Send + Sync>;

/// What the session asks of the client side.
pub trait Local: Send + Sync + 'static {
    /// One progress event (render it).
    fn progress(&self, event: v1::ProgressEvent);
    /// Registry credentials for `host`. Blocking is fine (helpers run).
    fn credentials(&self, host: &str)
        -> Result<Option<kbuild_registry::RegistryLogin>, LocalError>;
    /// A registry token for `request` (the Bearer challenge `host` gave the
    /// daemon, and the scopes it needs), got with this side's own
    /// credentials, so that the daemon never holds the login. `Ok(None)`:
    /// answer with the login instead (what a client without this does).
    /// Blocking is fine.
    fn registry_token(
        &self,
        _host: &str,
        _request: &kbuild_registry::TokenRequest,
    ) -> Result<Option<kbuild_registry::RegistryToken>, LocalError> {
        Ok(None)
    }
    /// A `--secret` value (`None`: no such secret). Blocking is fine.
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, LocalError>;
    /// A piece of output `output` (index into the outputs sent); `last`
    /// ends it. Blocking is fine.
    fn result(&self, output: u32, data: Vec<u8>, last: bool) -> Result<(), LocalError>;
    /// The agent socket of `--ssh` id `id` (`None`: the build was given no
    /// such agent; the daemon's RUN then sees the connection closed).
    fn ssh_agent(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

/// What broke a session on the client's side ([`Error::ClientSide`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The context walk's thread failed.
    #[error("walk the context: {0}")]
    Walk(#[source] JoinError),
    /// The list of the context's files could not be searched.
    #[error("read the list of context files: {0}")]
    Listing(#[source] std::io::Error),
    /// The search of that list did not finish.
    #[error("read the list of context files: {0}")]
    ListingTask(#[source] JoinError),
    /// The daemon asked for a content the context does not have.
    #[error("the builder asked for {digest}, which the context does not hold")]
    NotInContext {
        /// The content asked for.
        digest: String,
    },
    /// A context file could not be read to send it.
    #[error("{}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The session's stream closed while a file was sent.
    #[error("the session ended")]
    Ended,
    /// The task sending the contents failed.
    #[error("{0}")]
    Sender(#[source] JoinError),
    /// A streamed output could not be taken ([`Local::result`]).
    #[error("{0}")]
    Output(#[source] LocalError),
    /// The thread taking a streamed output failed.
    #[error("{0}")]
    OutputTask(#[source] JoinError),
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
    describe_context(&mut start, context.as_ref());
    let (tx, rx) = mpsc::channel::<v1::BuildClientMessage>(8);
    // The context is walked while the connection and the stream open, its
    // entries sent in batches as the walk goes (the bounded channels keep
    // them in step); they follow the start message, which waits for the
    // daemon's protocol.
    let root = context.as_ref().map(|c| c.dir.clone()).unwrap_or_default();
    let (walk, listed) = Walk::start(context)?;
    let (channel, info) = dialer.dial(builder, node, Duration::from_secs(10)).await?;
    check_protocol(builder, &endpoint, &info)?;
    choose_plan_form(&mut start, info.protocol);
    send_message(&tx, Out::Start(start)).await;
    let walker = walk.forward(tx.clone());
    let mut session = Session {
        builder,
        endpoint,
        host: info.hostname,
        tx,
        local,
        ssh_streams: HashMap::new(),
    };
    let mut client =
        v1::builder_client::BuilderClient::new(channel).max_decoding_message_size(16 << 20);
    let inbound = client
        .build(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|status| session.lost(status))?
        .into_inner();
    let contents = Contents::start(listed, root, session.tx.clone());
    session.receive(inbound, walker, contents, interrupt).await
}

/// Fills in what the daemon is told of the client and its context.
fn describe_context(start: &mut v1::BuildStart, context: Option<&ContextSource>) {
    if let Some(c) = context {
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
}

/// Refuses a daemon too old to build.
fn check_protocol(builder: &str, endpoint: &Endpoint, info: &NodeInfo) -> Result<(), Error> {
    if info.protocol >= kbuild_proto::BUILD_PROTOCOL {
        return Ok(());
    }
    Err(Error::Protocol {
        builder: builder.to_string(),
        endpoint: endpoint.clone(),
        daemon: info.protocol,
        client: kbuild_proto::PROTOCOL_VERSION,
        advice: "building needs protocol 2: upgrade kubectl-build on the builder's machine and restart \"kubectl-build serve\"",
    })
}

/// A daemon of protocol 3 gets the planned graph and not the Dockerfile;
/// an older one the Dockerfile, which it plans itself.
fn choose_plan_form(start: &mut v1::BuildStart, protocol: u32) {
    if protocol >= kbuild_proto::GRAPH_PROTOCOL && !start.graph.is_empty() {
        start.dockerfile.clear();
    } else {
        start.graph.clear();
    }
}

/// Sends `m` on the session's stream; a closed stream is noticed by the
/// receiving side, which says why.
async fn send_message(tx: &mpsc::Sender<v1::BuildClientMessage>, m: Out) {
    let _ = tx.send(v1::BuildClientMessage { message: Some(m) }).await;
}

/// The context walk, on a blocking thread: its manifest batches, and the
/// walk's end.
struct Walk {
    batches: mpsc::Receiver<v1::BuildClientMessage>,
    walker: JoinHandle<Result<(), Error>>,
}

impl Walk {
    /// Starts walking `context` (nothing to walk without one: one empty,
    /// complete manifest). Where each content is, by digest, for the
    /// daemon's FileRequests, goes to the returned [`Listed`]: on disk,
    /// written before the entries' batch is sent.
    fn start(context: Option<ContextSource>) -> Result<(Walk, Listed), Error> {
        let (listing, listed) = listing().map_err(|source| Error::Context {
            path: std::env::temp_dir(),
            source,
        })?;
        let (tx, batches) = mpsc::channel::<v1::BuildClientMessage>(8);
        let context = context.map(|c| (c.dir, c.ignore.map(|(m, _)| m), c.checksums));
        let walker = tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut batcher = Batcher {
                batch: Vec::with_capacity(MANIFEST_BATCH),
                listing,
                tx,
                failed: None,
            };
            let mut emit = |entry| batcher.emit(entry);
            if let Some((dir, ignore, checksums)) = &context {
                walk_dir(dir, "", ignore.as_ref(), checksums.as_deref(), &mut emit)?;
            }
            emit(None);
            match batcher.failed {
                Some(source) => Err(Error::Context {
                    path: std::env::temp_dir(),
                    source,
                }),
                None => Ok(()),
            }
        });
        Ok((Walk { batches, walker }, listed))
    }

    /// Passes the manifest batches on to the session's stream; returns
    /// the walk's end.
    fn forward(self, tx: mpsc::Sender<v1::BuildClientMessage>) -> JoinHandle<Result<(), Error>> {
        let mut batches = self.batches;
        tokio::spawn(async move {
            while let Some(m) = batches.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        self.walker
    }
}

/// Gathers the walk's entries into ContextManifest batches, listing each
/// file before its batch goes out.
struct Batcher {
    batch: Vec<v1::ContextEntry>,
    listing: Listing,
    tx: mpsc::Sender<v1::BuildClientMessage>,
    /// Why the listing could not be written (the walk stops).
    failed: Option<std::io::Error>,
}

impl Batcher {
    /// Takes one entry (`None`: the walk is complete); false stops the walk.
    fn emit(&mut self, entry: Option<(v1::ContextEntry, PathBuf)>) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let last = entry.is_none();
        if let Some((e, _)) = entry {
            if let Err(e) = self.listing.add(&e) {
                self.failed = Some(e);
                return false;
            }
            self.batch.push(e);
        }
        if !last && self.batch.len() < MANIFEST_BATCH {
            return true;
        }
        if let Err(e) = self.listing.flush() {
            self.failed = Some(e);
            return false;
        }
        let m = Out::Manifest(v1::ContextManifest {
            entries: std::mem::take(&mut self.batch),
            complete: last,
        });
        self.tx
            .blocking_send(v1::BuildClientMessage { message: Some(m) })
            .is_ok()
    }
}

/// The contents the daemon asks for: they go out in the order asked, one
/// request after another.
struct Contents {
    requests: mpsc::UnboundedSender<Vec<String>>,
    sender: JoinHandle<Result<(), ClientError>>,
}

impl Contents {
    /// Starts the sender of the contents listed in `listed`, under `root`.
    fn start(listed: Listed, root: PathBuf, tx: mpsc::Sender<v1::BuildClientMessage>) -> Contents {
        let (requests, asked) = mpsc::unbounded_channel::<Vec<String>>();
        let sender = tokio::spawn(send_contents(listed, root, asked, tx));
        Contents { requests, sender }
    }
}

/// Sends the contents of each request of `asked`, found in `listed`.
async fn send_contents(
    mut listed: Listed,
    root: PathBuf,
    mut asked: mpsc::UnboundedReceiver<Vec<String>>,
    tx: mpsc::Sender<v1::BuildClientMessage>,
) -> Result<(), ClientError> {
    while let Some(digests) = asked.recv().await {
        // One request's paths looked up at once, off the async threads.
        let (back, found) = tokio::task::spawn_blocking(move || {
            let found: Vec<_> = digests
                .into_iter()
                .map(|d| listed.find(&d).map(|rel| (d, rel)))
                .collect();
            (listed, found)
        })
        .await
        .map_err(ClientError::ListingTask)?;
        listed = back;
        for f in found {
            let (digest, rel) = f.map_err(ClientError::Listing)?;
            let Some(rel) = rel else {
                return Err(ClientError::NotInContext { digest });
            };
            send_file(&tx, &digest, &root.join(rel)).await?;
        }
    }
    Ok(())
}

/// One session's state while it receives the daemon's messages.
struct Session<'a> {
    builder: &'a str,
    endpoint: Endpoint,
    /// The node's host name (from Info).
    host: String,
    tx: mpsc::Sender<v1::BuildClientMessage>,
    local: Arc<dyn Local>,
    /// `--ssh` connections the daemon relays, by stream number.
    ssh_streams: HashMap<u32, mpsc::UnboundedSender<v1::SshData>>,
}

/// What stopped waiting for the daemon's next message. It lives for one
/// turn of the receive loop, so the message is not boxed.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Message(Result<Option<v1::BuildServerMessage>, tonic::Status>),
    /// Anything else handled; wait again.
    Again,
}

impl Session<'_> {
    /// The connection broke with `status`.
    fn lost(&self, status: tonic::Status) -> Error {
        Error::Lost {
            builder: self.builder.to_string(),
            endpoint: self.endpoint.clone(),
            host: self.host.clone(),
            source: Box::new(status),
        }
    }

    fn client_side(&self, source: ClientError) -> Error {
        Error::ClientSide {
            builder: self.builder.to_string(),
            source,
        }
    }

    /// Takes the daemon's messages until its BuildDone, while the walk and
    /// the contents' sender run; `interrupt` sends Cancel and gives the
    /// daemon [`CANCEL_GRACE`] to end the build.
    async fn receive(
        &mut self,
        mut inbound: tonic::Streaming<v1::BuildServerMessage>,
        mut walker: JoinHandle<Result<(), Error>>,
        mut contents: Contents,
        interrupt: impl Future<Output = ()>,
    ) -> Result<v1::BuildDone, Error> {
        tokio::pin!(interrupt);
        let mut cancelled = false;
        let mut sender_done = false;
        let mut walked = false;
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let wake = tokio::select! {
                m = inbound.message() => Wake::Message(m),
                _ = &mut interrupt, if !cancelled => {
                    cancelled = true;
                    send_message(&self.tx, Out::Cancel(v1::Cancel {})).await;
                    deadline = Some(Box::pin(tokio::time::sleep(CANCEL_GRACE)));
                    Wake::Again
                }
                w = &mut walker, if !walked => {
                    walked = true;
                    w.map_err(|e| self.client_side(ClientError::Walk(e)))??;
                    Wake::Again
                }
                sent = &mut contents.sender, if !sender_done => {
                    sender_done = true;
                    sent.map_err(ClientError::Sender)
                        .and_then(|r| r)
                        .map_err(|e| self.client_side(e))?;
                    Wake::Again
                }
                _ = async { if let Some(d) = deadline.as_mut() { d.await } else { std::future::pending().await } } => {
                    return Err(Error::Cancelled { builder: self.builder.to_string() });
                }
            };
            let message = match wake {
                Wake::Again => continue,
                Wake::Message(Ok(Some(v1::BuildServerMessage { message: Some(m) }))) => m,
                Wake::Message(Ok(Some(_))) => continue,
                Wake::Message(Ok(None)) => {
                    return Err(self.lost(tonic::Status::unavailable(
                        "the builder closed the stream before the build ended",
                    )))
                }
                Wake::Message(Err(status)) => return Err(self.lost(status)),
            };
            if let In::Done(done) = message {
                contents.sender.abort();
                walker.abort();
                return self.finish(done, cancelled);
            }
            self.handle(message, &contents).await?;
        }
    }

    /// Answers or takes one message of the daemon (not its BuildDone).
    async fn handle(&mut self, message: In, contents: &Contents) -> Result<(), Error> {
        match message {
            In::FileRequest(r) => {
                let _ = contents.requests.send(r.digests);
            }
            In::Progress(p) => self.local.progress(p),
            In::CredentialsRequest(r) => {
                tokio::spawn(answer_credentials(self.local.clone(), r, self.tx.clone()));
            }
            In::SecretRequest(r) => {
                tokio::spawn(answer_secret(self.local.clone(), r, self.tx.clone()));
            }
            In::SshOpen(o) => {
                let agent = self.local.ssh_agent(&o.id);
                let (to_agent, from_daemon) = mpsc::unbounded_channel();
                self.ssh_streams.insert(o.stream, to_agent);
                tokio::spawn(ssh_relay(agent, o.stream, from_daemon, self.tx.clone()));
            }
            In::Ssh(d) => {
                let (stream, eof) = (d.stream, d.eof);
                if let Some(to_agent) = self.ssh_streams.get(&stream) {
                    let _ = to_agent.send(d);
                }
                if eof {
                    self.ssh_streams.remove(&stream);
                }
            }
            In::Result(chunk) => self.take_result(chunk).await?,
            In::Done(_) => {}
        }
        Ok(())
    }

    /// Hands a piece of a streamed output to the client side.
    async fn take_result(&self, chunk: v1::ResultChunk) -> Result<(), Error> {
        let local = self.local.clone();
        tokio::task::spawn_blocking(move || local.result(chunk.output, chunk.data, chunk.last))
            .await
            .map_err(ClientError::OutputTask)
            .and_then(|r| r.map_err(ClientError::Output))
            .map_err(|e| self.client_side(e))
    }

    /// The session's end: the daemon's BuildDone, unless the build was
    /// cancelled or the daemon is stopping.
    fn finish(&self, done: v1::BuildDone, cancelled: bool) -> Result<v1::BuildDone, Error> {
        if cancelled || done.cancelled {
            return Err(Error::Cancelled {
                builder: self.builder.to_string(),
            });
        }
        if done.shutting_down {
            return Err(Error::ShuttingDown {
                builder: self.builder.to_string(),
                endpoint: self.endpoint.clone(),
                host: self.host.clone(),
                reason: done.error,
            });
        }
        Ok(done)
    }
}

/// Answers a CredentialsRequest: for a Bearer challenge a token for
/// exactly the scopes asked, so that the login stays here; otherwise (or
/// when the client side has no token to give) the login.
async fn answer_credentials(
    local: Arc<dyn Local>,
    r: v1::CredentialsRequest,
    tx: mpsc::Sender<v1::BuildClientMessage>,
) {
    let mut resp = v1::CredentialsResponse {
        host: r.host.clone(),
        id: r.id,
        ..Default::default()
    };
    let answered = !r.realm.is_empty() && answer_token(&local, &r, &mut resp).await;
    if !answered {
        let host = r.host.clone();
        let answer = tokio::task::spawn_blocking(move || local.credentials(&host))
            .await
            .unwrap_or_else(|e| Err(e.into()));
        match answer {
            Ok(Some(l)) => {
                resp.username = l.username.unwrap_or_default();
                resp.secret = l.password.unwrap_or_default();
                resp.token = l.identity_token.unwrap_or_default();
            }
            Ok(None) => {}
            Err(e) => resp.error = e.to_string(),
        }
    }
    send_message(&tx, Out::Credentials(resp)).await;
}

/// Puts a token for `r`'s Bearer challenge (or why there is none) into
/// `resp`; false when the client side answers with its login instead.
async fn answer_token(
    local: &Arc<dyn Local>,
    r: &v1::CredentialsRequest,
    resp: &mut v1::CredentialsResponse,
) -> bool {
    let request = kbuild_registry::TokenRequest {
        realm: r.realm.clone(),
        service: (!r.service.is_empty()).then(|| r.service.clone()),
        scopes: r.scopes.clone(),
    };
    let (local, host) = (local.clone(), r.host.clone());
    let token = tokio::task::spawn_blocking(move || local.registry_token(&host, &request))
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match token {
        Ok(Some(t)) => {
            resp.registry_token = t.token;
            resp.expires_in_seconds = t.expires_in.as_secs().max(1);
            true
        }
        Ok(None) => false,
        Err(e) => {
            resp.error = e.to_string();
            true
        }
    }
}

/// Answers a SecretRequest from the client side's `--secret`s.
async fn answer_secret(
    local: Arc<dyn Local>,
    r: v1::SecretRequest,
    tx: mpsc::Sender<v1::BuildClientMessage>,
) {
    let id = r.id.clone();
    let answer = tokio::task::spawn_blocking(move || local.secret(&id))
        .await
        .unwrap_or_else(|e| Err(e.into()));
    let mut resp = v1::SecretResponse {
        id: r.id,
        request: r.request,
        ..Default::default()
    };
    match answer {
        Ok(Some(data)) => resp.data = data,
        Ok(None) => resp.missing = true,
        Err(e) => resp.error = e.to_string(),
    }
    send_message(&tx, Out::Secret(resp)).await;
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
) -> Result<(), ClientError> {
    use tokio::io::AsyncReadExt;
    let read_error = |source| ClientError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(read_error)?;
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
        .map_err(|_| ClientError::Ended)?;
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

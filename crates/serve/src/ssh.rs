//! `--ssh` through the daemon: for each SSH id of a build, a unix socket in
//! the session's directory that the RUN mounts as its agent. Every
//! connection a RUN makes is announced to the client (`SshOpen`) and its
//! bytes relayed both ways as `SshData` over the build session; the
//! client's agent answers. Keys never reach the builder: only the agent
//! protocol's messages pass through, in memory.

use kbuild_proto::v1::{self, build_server_message::Message as Out};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bytes read from a RUN's agent connection per message.
const CHUNK: usize = 32 * 1024;

/// The open agent connections of one session, by stream number.
#[derive(Default)]
pub(crate) struct Streams {
    next: AtomicU32,
    open: Mutex<HashMap<u32, mpsc::UnboundedSender<v1::SshData>>>,
}

impl Streams {
    /// Hands the client's bytes for `data.stream` to its connection.
    pub(crate) fn deliver(&self, data: v1::SshData) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        let eof = data.eof;
        let stream = data.stream;
        if let Some(tx) = open.get(&stream) {
            let _ = tx.send(data);
        }
        if eof {
            open.remove(&stream);
        }
    }

    /// Ends every connection (the session is over).
    pub(crate) fn close(&self) {
        if let Ok(mut open) = self.open.lock() {
            open.clear();
        }
    }
}

/// The agent sockets of one build; their listeners stop when dropped.
pub(crate) struct Agents {
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

/// Listens on `dir/ssh-N.sock` for each of `ids`; returns the listeners
/// and, per id, its socket (what the RUN mounts). `send` queues a message
/// to the client.
pub(crate) fn serve(
    ids: &[String],
    dir: &Path,
    streams: &Arc<Streams>,
    send: Arc<dyn Fn(Out) + Send + Sync>,
) -> std::io::Result<(Agents, Vec<(String, PathBuf)>)> {
    let mut agents = Agents {
        listeners: Vec::new(),
    };
    let mut sockets = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let path = dir.join(format!("ssh-{n}.sock"));
        let listener = tokio::net::UnixListener::bind(&path)?;
        let (id2, streams, send) = (id.clone(), streams.clone(), send.clone());
        agents.listeners.push(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                relay(conn, &id2, &streams, send.clone());
            }
        }));
        sockets.push((id.clone(), path));
    }
    Ok((agents, sockets))
}

/// Announces one RUN connection to the client and relays it.
fn relay(
    conn: tokio::net::UnixStream,
    id: &str,
    streams: &Arc<Streams>,
    send: Arc<dyn Fn(Out) + Send + Sync>,
) {
    let stream = streams.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<v1::SshData>();
    if let Ok(mut open) = streams.open.lock() {
        open.insert(stream, tx);
    }
    send(Out::SshOpen(v1::SshOpen {
        id: id.to_string(),
        stream,
    }));
    let (mut read, mut write) = conn.into_split();
    let up = send.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read.read(&mut buf).await {
                Ok(n) if n > 0 => up(Out::Ssh(v1::SshData {
                    stream,
                    data: buf[..n].to_vec(),
                    eof: false,
                })),
                _ => {
                    up(Out::Ssh(v1::SshData {
                        stream,
                        data: Vec::new(),
                        eof: true,
                    }));
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            if !d.data.is_empty() && write.write_all(&d.data).await.is_err() {
                break;
            }
            if d.eof {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
}

//! `--load` (`-o type=docker` without `dest`): the image as a docker
//! archive, posted to a Docker daemon's `POST /images/load` on its unix
//! socket, as `docker load` does.
//!
//! The daemon is found like the docker CLI finds it: `DOCKER_HOST`
//! (`unix://PATH`), else `/var/run/docker.sock`. The archive is staged in a
//! temporary file first, so the daemon receives a whole archive or nothing.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

/// Where the Docker daemon listens when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Why the image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error("DOCKER_HOST={0} is not supported for --load: use unix:///path/to/docker.sock")]
    UnsupportedHost(String),
    /// The daemon's socket does not answer.
    #[error("cannot reach the Docker daemon at {}: {source}; start dockerd, or set DOCKER_HOST=unix:///path/to/docker.sock", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP with the daemon failed.
    #[error("talking to the Docker daemon at {}: {source}", socket.display())]
    Http {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: hyper::Error,
    },
    /// The load request could not be formed.
    #[error("the request to the Docker daemon at {} could not be formed: {source}", socket.display())]
    Request {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: hyper::http::Error,
    },
    /// The archive could not be read.
    #[error("read the staged docker archive {}: {source}", path.display())]
    Archive {
        /// The staged archive.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon refused the archive.
    #[error("the Docker daemon at {} did not load the image: {message}", socket.display())]
    Refused {
        /// The socket.
        socket: PathBuf,
        /// The daemon's words.
        message: String,
    },
}

/// The daemon's socket from `docker_host` (the value of `DOCKER_HOST`).
pub fn socket_from(docker_host: Option<&str>) -> Result<PathBuf, LoadError> {
    match docker_host.filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
            _ => Err(LoadError::UnsupportedHost(h.to_string())),
        },
    }
}

/// Posts the docker archive at `archive` to the daemon on `socket`;
/// returns what the daemon says it loaded (`Loaded image: NAME`).
pub async fn load(socket: &Path, archive: &Path) -> Result<Vec<String>, LoadError> {
    let http = |source| LoadError::Http {
        socket: socket.to_path_buf(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| LoadError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    let driver = tokio::spawn(connection);
    let file = tokio::fs::File::open(archive)
        .await
        .map_err(|source| LoadError::Archive {
            path: archive.to_path_buf(),
            source,
        })?;
    let length = file
        .metadata()
        .await
        .map_err(|source| LoadError::Archive {
            path: archive.to_path_buf(),
            source,
        })?
        .len();
    let frames = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
    let body = StreamBody::new(frames);
    let request = hyper::Request::post("/images/load")
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONTENT_TYPE, "application/x-tar")
        .header(hyper::header::CONTENT_LENGTH, length)
        .body(body)
        .map_err(|source| LoadError::Request {
            socket: socket.to_path_buf(),
            source,
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let text: Bytes = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    driver.abort();
    let text = String::from_utf8_lossy(&text);
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}: {}", text.trim()));
        return Err(LoadError::Refused {
            socket: socket.to_path_buf(),
            message,
        });
    }
    // A stream of JSON messages; a failure arrives as one with "error"
    // after a 200.
    let mut loaded = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(e) = v["error"].as_str() {
            return Err(LoadError::Refused {
                socket: socket.to_path_buf(),
                message: e.to_string(),
            });
        }
        if let Some(s) = v["stream"].as_str() {
            for l in s.lines() {
                if let Some(name) = l
                    .strip_prefix("Loaded image: ")
                    .or_else(|| l.strip_prefix("Loaded image ID: "))
                {
                    loaded.push(name.trim().to_string());
                }
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_rules() {
        assert_eq!(socket_from(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_from(Some("")).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_from(Some("unix:///tmp/d.sock")).unwrap(),
            PathBuf::from("/tmp/d.sock")
        );
        assert!(socket_from(Some("tcp://1.2.3.4:2375")).is_err());
        assert!(socket_from(Some("unix://relative")).is_err());
    }
}

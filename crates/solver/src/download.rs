//! `http` source ops: one URL streamed to disk, hashed on the way, checked
//! against its `--checksum`, under the same connect/response/idle limits
//! as registries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// A download that failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL does not parse.
    #[error("invalid URL {url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        source: url::ParseError,
    },
    /// The HTTP client failed.
    #[error("download {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server did not answer in time.
    #[error("download {url}: no answer within {after:?}")]
    NoAnswer {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The server went silent.
    #[error("download {url}: the server sent nothing for {after:?}")]
    Idle {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The server refused.
    #[error("download {url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Its answer.
        status: reqwest::StatusCode,
    },
    /// Writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not what `--checksum` says.
    #[error("ADD {url}: checksum mismatch: --checksum={want} but the content is {got}")]
    Checksum {
        /// The URL.
        url: String,
        /// `--checksum`.
        want: String,
        /// The content's digest.
        got: String,
    },
}

/// Download `url` into `dir/name`, check `checksum`, and return the
/// content's digest (`sha256:<hex>`). The file gets mode 0600 and the
/// server's Last-Modified time.
pub async fn download(
    url: &str,
    dir: &Path,
    name: &str,
    checksum: Option<&str>,
    timeouts: &kbuild_registry::Timeouts,
) -> Result<String, DownloadError> {
    use tokio::io::AsyncWriteExt;
    let http = |source| DownloadError::Http {
        url: url.to_string(),
        source,
    };
    url::Url::parse(url).map_err(|source| DownloadError::Url {
        url: url.to_string(),
        source,
    })?;
    let client = reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .build()
        .map_err(http)?;
    let limit = timeouts.connect + timeouts.response;
    let resp = tokio::time::timeout(limit, client.get(url).send())
        .await
        .map_err(|_| DownloadError::NoAnswer {
            url: url.to_string(),
            after: limit,
        })?
        .map_err(http)?;
    if !resp.status().is_success() {
        return Err(DownloadError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_secs);
    // Streamed to disk and hashed on the way: memory stays bounded for any
    // size; no total limit, but no silence longer than the idle limit.
    let path = dir.join(name);
    let io = |source| DownloadError::Io {
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(timeouts.idle, futures_util::StreamExt::next(&mut body))
            .await
            .map_err(|_| DownloadError::Idle {
                url: url.to_string(),
                after: timeouts.idle,
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(http)?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    drop(file);
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(want) = checksum {
        if want != got {
            return Err(DownloadError::Checksum {
                url: url.to_string(),
                want: want.to_string(),
                got,
            });
        }
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    if let Some(t) = modified {
        let t = filetime::FileTime::from_unix_time(t, 0);
        let _ = filetime::set_symlink_file_times(&path, t, t);
    }
    Ok(got)
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_secs(s: &str) -> Option<i64> {
    jiff::fmt::rfc2822::parse(s)
        .ok()
        .map(|z| z.timestamp().as_second())
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(
            super::httpdate_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(super::httpdate_secs("garbage"), None);
    }
}

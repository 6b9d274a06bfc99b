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

/// What the file of a URL is, known before (or without) its body.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Known {
    /// The content digest (`sha256:<hex>`).
    pub digest: String,
    /// The server's Last-Modified time (seconds), which the file gets;
    /// `None` when unknown (with `--checksum`, before downloading).
    pub modified: Option<i64>,
}

impl Known {
    /// The readers' cache key part.
    pub fn key(&self) -> String {
        match self.modified {
            Some(t) => format!("{}@{t}", self.digest),
            None => self.digest.clone(),
        }
    }
}

/// What the last download of a URL said, to ask the server next time
/// whether it changed (`If-None-Match`, `If-Modified-Since`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    known: Known,
}

/// One URL to fetch: an `http` source op.
#[derive(Clone, Debug)]
pub struct Fetch {
    /// The URL.
    pub url: String,
    /// The file name it is stored under.
    pub filename: String,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// The connect, response and idle limits.
    pub timeouts: kbuild_registry::Timeouts,
    /// Where what earlier downloads said is kept (one file per URL).
    pub records: PathBuf,
    /// The HTTP client of this fetch: the conditional request and the
    /// download share its connection.
    client: reqwest::Client,
}

impl Fetch {
    /// A fetch of `url`, stored as `filename`; refuses a URL that does not
    /// parse.
    pub fn new(
        url: &str,
        filename: &str,
        checksum: Option<String>,
        timeouts: kbuild_registry::Timeouts,
        records: PathBuf,
    ) -> Result<Fetch, DownloadError> {
        url::Url::parse(url).map_err(|source| DownloadError::Url {
            url: url.to_string(),
            source,
        })?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .build()
            .map_err(|source| DownloadError::Http {
                url: url.to_string(),
                source,
            })?;
        Ok(Fetch {
            url: url.to_string(),
            filename: filename.to_string(),
            checksum,
            timeouts,
            records,
            client,
        })
    }

    fn record_path(&self) -> PathBuf {
        let name = hex::encode(Sha256::digest(self.url.as_bytes()));
        self.records.join(format!("{name}.json"))
    }

    fn http(&self, source: reqwest::Error) -> DownloadError {
        DownloadError::Http {
            url: self.url.clone(),
            source,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, DownloadError> {
        let limit = self.timeouts.connect + self.timeouts.response;
        tokio::time::timeout(limit, req.send())
            .await
            .map_err(|_| DownloadError::NoAnswer {
                url: self.url.clone(),
                after: limit,
            })?
            .map_err(|e| self.http(e))
    }

    /// The file's identity without downloading it, where that is possible:
    /// from `--checksum`, or when the server answers that the URL did not
    /// change since the download recorded last time (as BuildKit asks with
    /// the ETag). `None`: it must be downloaded to be known.
    pub async fn known(&self) -> Result<Option<Known>, DownloadError> {
        if let Some(digest) = &self.checksum {
            return Ok(Some(Known {
                digest: digest.clone(),
                modified: None,
            }));
        }
        let path = self.record_path();
        let record = match tokio::fs::read(&path).await {
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if r.url == self.url => r,
                _ => return Ok(None),
            },
            Err(_) => return Ok(None),
        };
        if record.etag.is_none() && record.last_modified.is_none() {
            return Ok(None);
        }
        let mut req = self.client.get(&self.url);
        if let Some(etag) = &record.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &record.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
        // The body of a changed URL is not read here: it is downloaded
        // again by the caller.
        let resp = self.send(req).await?;
        Ok((resp.status() == reqwest::StatusCode::NOT_MODIFIED).then_some(record.known))
    }

    /// Downloads the file into a new temporary directory as `filename`,
    /// checks it (against `--checksum`, or the digest it was known by),
    /// records what the server said for next time, and says what it is.
    /// The file gets mode 0600 and the server's Last-Modified time.
    pub async fn to_temp_dir(&self) -> Result<(tempfile::TempDir, Known), DownloadError> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("kbuild-add-")
            .tempdir()
            .map_err(|source| DownloadError::Io { path: tmp, source })?;
        let resp = self.send(self.client.get(&self.url)).await?;
        if !resp.status().is_success() {
            return Err(DownloadError::Status {
                url: self.url.clone(),
                status: resp.status(),
            });
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let modified = last_modified.as_deref().and_then(httpdate_secs);
        let path = dir.path().join(&self.filename);
        let digest = self.stream_to(resp, &path).await?;
        if let Some(want) = &self.checksum {
            if *want != digest {
                return Err(DownloadError::Checksum {
                    url: self.url.clone(),
                    want: want.clone(),
                    got: digest,
                });
            }
        }
        let io = |source| DownloadError::Io {
            path: path.clone(),
            source,
        };
        tokio::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .await
            .map_err(io)?;
        let known = Known { digest, modified };
        let record =
            (self.checksum.is_none() && (etag.is_some() || last_modified.is_some())).then(|| {
                Record {
                    url: self.url.clone(),
                    etag,
                    last_modified,
                    known: known.clone(),
                }
            });
        let (records, record_path, url) =
            (self.records.clone(), self.record_path(), self.url.clone());
        // File times and the record are written off the async threads.
        let kept = tokio::task::spawn_blocking(move || {
            if let Some(t) = modified {
                let t = filetime::FileTime::from_unix_time(t, 0);
                let _ = filetime::set_symlink_file_times(&path, t, t);
            }
            // Only a hint for next time: a record that cannot be kept
            // means the next build downloads again.
            match record {
                None => true,
                Some(record) => {
                    std::fs::create_dir_all(&records).is_ok()
                        && serde_json::to_vec(&record)
                            .ok()
                            .is_some_and(|b| kbuild_image::write_atomic(&record_path, &b).is_ok())
                }
            }
        })
        .await
        .unwrap_or(false);
        if !kept {
            tracing::debug!(url = %url, "could not record the download's validators");
        }
        Ok((dir, known))
    }

    /// Streams the body to `path`, hashed on the way: memory stays bounded
    /// for any size; no total limit, but no silence longer than the idle
    /// limit. Returns the content digest.
    async fn stream_to(
        &self,
        resp: reqwest::Response,
        path: &Path,
    ) -> Result<String, DownloadError> {
        use tokio::io::AsyncWriteExt;
        let io = |source| DownloadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut body = resp.bytes_stream();
        loop {
            let next =
                tokio::time::timeout(self.timeouts.idle, futures_util::StreamExt::next(&mut body))
                    .await
                    .map_err(|_| DownloadError::Idle {
                        url: self.url.clone(),
                        after: self.timeouts.idle,
                    })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| self.http(e))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }
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

//! `sha256:<hex>` digests and a writer that computes one while passing bytes on.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A content digest. Only `sha256` is produced or accepted: it is the only
/// algorithm the OCI image spec requires and the only one registries use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    bytes: [u8; 32],
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(input: &str) -> Result<Digest, Error> {
        let invalid = |reason: &'static str| Error::InvalidDigest {
            input: input.to_string(),
            reason,
        };
        let (algorithm, hex_part) = input
            .split_once(':')
            .ok_or_else(|| invalid("expected the form sha256:<64 hex digits>"))?;
        if algorithm != "sha256" {
            return Err(invalid("only the sha256 algorithm is supported"));
        }
        if hex_part.len() != 64 {
            return Err(invalid("a sha256 digest has exactly 64 hex digits"));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("the hex digits must be 0-9 or lowercase a-f"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes)
            .map_err(|_| invalid("the hex digits could not be decoded"))?;
        Ok(Digest { bytes })
    }

    /// The sha256 digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest {
            bytes: Sha256::digest(data).into(),
        }
    }

    /// Builds a digest from a raw 32-byte sha256 value.
    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Digest {
        Digest { bytes }
    }

    /// The algorithm name, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 lowercase hex digits (the blob's file name in a layout).
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest, Error> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts every byte before passing it on to `inner`.
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of the bytes written so far (the writer can keep going).
    pub fn digest(&self) -> Digest {
        Digest {
            bytes: self.hasher.clone().finalize().into(),
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = Digest {
            bytes: self.hasher.finalize().into(),
        };
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental sha256 over bytes that are not written anywhere.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hasher {
    hasher: Sha256,
    len: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(self) -> Digest {
        Digest {
            bytes: self.hasher.finalize().into(),
        }
    }
}

//! Content digests: the `sha256:<64 lowercase hex>` names of blobs and layers.
//!
//! A [`Digest`] is always valid once constructed (parsed and checked, or computed), so code that
//! holds one can build file names from it without further checks. Only sha256 is supported: it
//! is the only algorithm imgb writes, and refusing others keeps every blob path uniform.
//! [`HashingWriter`] computes a digest and a byte count while passing data through, which is how
//! blobs and layer diffIDs are hashed in the same pass that writes them.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

const ALGORITHM: &str = "sha256";
const HEX_LEN: usize = 64;

/// A validated `sha256:<hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The full text, `sha256:` followed by 64 lowercase hex digits.
    text: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid digest {text:?}: {reason} (expected `sha256:` followed by 64 lowercase hex digits)"
)]
pub struct DigestError {
    pub text: String,
    pub reason: &'static str,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let error = |reason| DigestError {
            text: text.to_owned(),
            reason,
        };
        let (algorithm, hex) = text.split_once(':').ok_or_else(|| error("missing `:`"))?;
        if algorithm != ALGORITHM {
            return Err(error("unsupported algorithm"));
        }
        if hex.len() != HEX_LEN {
            return Err(error("wrong length"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(error("not lowercase hex"));
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        let mut text = String::with_capacity(ALGORITHM.len() + 1 + HEX_LEN);
        text.push_str(ALGORITHM);
        text.push(':');
        for byte in hasher.finalize().iter() {
            text.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        Self { text }
    }

    /// The 64 hex digits, used as the file name of a blob.
    pub fn hex(&self) -> &str {
        &self.text[ALGORITHM.len() + 1..]
    }

    /// The algorithm name (always `sha256`).
    pub fn algorithm(&self) -> &str {
        ALGORITHM
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Passes writes through to `inner` while hashing them and counting bytes.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// A writer continuing content whose first part is `existing`: those bytes are hashed
    /// and counted, not written.
    pub fn after(inner: W, mut existing: impl io::Read) -> io::Result<Self> {
        let mut writer = Self::new(inner);
        let mut buffer = vec![0; 256 * 1024];
        loop {
            let read = existing.read(&mut buffer)?;
            let Some(bytes) = buffer.get(..read).filter(|bytes| !bytes.is_empty()) else {
                return Ok(writer);
            };
            writer.hasher.update(bytes);
            writer.written += read as u64;
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Returns the inner writer (not flushed), the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let accepted = buf.get(..n).unwrap_or(buf);
        self.hasher.update(accepted);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental sha256 for readers (see [`crate::store::BlobReader`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_value() {
        assert_eq!(Digest::of(b"").as_str(), EMPTY);
    }

    #[test]
    fn parse_accepts_canonical_digest_and_round_trips_through_display() {
        let digest = Digest::parse(EMPTY).unwrap();
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest.hex().len(), 64);
        assert_eq!(digest.algorithm(), "sha256");
    }

    #[test]
    fn parse_rejects_malformed_digests_with_reason() {
        let traversal = format!("sha256:{}a", "../".repeat(21));
        let cases = [
            ("e3b0c442", "missing `:`"),
            ("sha512:00", "unsupported algorithm"),
            ("sha256:abc", "wrong length"),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "not lowercase hex",
            ),
            (traversal.as_str(), "not lowercase hex"),
        ];
        for (text, reason) in cases {
            let error = Digest::parse(text).unwrap_err();
            assert_eq!(error.reason, reason, "{text}");
            assert_eq!(error.text, text);
        }
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello ").unwrap();
        writer.write_all(b"world").unwrap();
        let (inner, digest, count) = writer.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(count, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
    }

    #[test]
    fn digest_serializes_as_plain_string() {
        let digest = Digest::parse(EMPTY).unwrap();
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}

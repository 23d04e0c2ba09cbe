//! Content digests and the canonical encoding that directory (Merkle) and selection digests are
//! computed over.
//!
//! Every record is length-prefixed or fixed-width, so two different listings can never encode to
//! the same bytes. A file's digest is the plain sha256 of its bytes (what `sha256sum` prints), so
//! it can be checked with ordinary tools.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A sha256 digest; displays as `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentDigest([u8; 32]);

impl ContentDigest {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::finish(Sha256::new_with_prefix(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        text
    }

    pub(super) fn finish(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentDigest({self})")
    }
}

/// Domain tags keep a directory listing, a selection and a special file from ever hashing alike.
const DIRECTORY_DOMAIN: &[u8] = b"imgb-context-dir-v1\0";
const SELECTION_DOMAIN: &[u8] = b"imgb-context-selection-v1\0";
const SPECIAL_DOMAIN: &[u8] = b"imgb-context-special-v1\0";

/// What a parent (or a selection) records about one entry: its name, type tag, mode and content
/// digest. Ownership and timestamps are left out on purpose: a COPY without `--chown` makes
/// everything root-owned, and BuildKit's content hashes ignore timestamps too.
pub(super) fn write_node(
    hasher: &mut Sha256,
    name: &str,
    type_tag: u8,
    mode: u32,
    digest: &ContentDigest,
) {
    write_str(hasher, name);
    hasher.update([type_tag]);
    hasher.update(mode.to_le_bytes());
    hasher.update(digest.as_bytes());
}

fn write_str(hasher: &mut Sha256, text: &str) {
    // Names are bounded by PATH_MAX, far below u32::MAX; saturate rather than wrap regardless.
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_le_bytes());
    hasher.update(text.as_bytes());
}

/// Builds a directory's content digest from its children, fed in name order.
#[derive(Debug, Clone)]
pub(super) struct DirectoryHasher(Sha256);

impl DirectoryHasher {
    pub(super) fn new() -> Self {
        Self(Sha256::new_with_prefix(DIRECTORY_DOMAIN))
    }

    pub(super) fn add_child(
        &mut self,
        name: &str,
        type_tag: u8,
        mode: u32,
        digest: &ContentDigest,
    ) {
        write_node(&mut self.0, name, type_tag, mode, digest);
    }

    pub(super) fn finish(self) -> ContentDigest {
        ContentDigest::finish(self.0)
    }
}

/// Builds the digest of a source selection: per source, the number of matches, then each match
/// as a node named by its context-relative path.
#[derive(Debug, Clone)]
pub(super) struct SelectionHasher(Sha256);

impl SelectionHasher {
    pub(super) fn new() -> Self {
        Self(Sha256::new_with_prefix(SELECTION_DOMAIN))
    }

    pub(super) fn begin_source(&mut self, matches: usize) {
        let count = u64::try_from(matches).unwrap_or(u64::MAX);
        self.0.update(count.to_le_bytes());
    }

    pub(super) fn add_match(
        &mut self,
        path: &str,
        type_tag: u8,
        mode: u32,
        digest: &ContentDigest,
    ) {
        write_node(&mut self.0, path, type_tag, mode, digest);
    }

    pub(super) fn finish(self) -> ContentDigest {
        ContentDigest::finish(self.0)
    }
}

/// The content digest of a device node, fifo or socket: its file type bits and device number.
pub(super) fn special_file_digest(type_bits: u32, rdev: u64) -> ContentDigest {
    let mut hasher = Sha256::new_with_prefix(SPECIAL_DOMAIN);
    hasher.update(type_bits.to_le_bytes());
    hasher.update(rdev.to_le_bytes());
    ContentDigest::finish(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_plain_sha256_as_sha256sum_prints_it() {
        assert_eq!(
            ContentDigest::of(b"hello\n").to_string(),
            "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }
}

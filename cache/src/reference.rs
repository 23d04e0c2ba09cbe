//! Image references, normalized as Docker does: `busybox` → `docker.io/library/busybox:latest`.
//!
//! The grammar is the distribution project's (`domain/path:tag@digest`); normalization follows
//! `ParseNormalizedNamed` + `TagNameOnly`: a first component is a registry domain only if it
//! holds a `.` or `:` or is `localhost`; otherwise the domain is `docker.io`, and single-component
//! names there get `library/`. A reference without tag or digest gets `:latest`. The full form
//! ([`Reference`]'s `Display`) is the key of the image name table; [`Reference::familiar`] is
//! the short form Docker shows and writes into docker-archive `RepoTags`.

use std::fmt;

use crate::digest::Digest;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    /// The repository path below the domain (`library/busybox`).
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    pub text: String,
    pub reason: String,
}

impl Reference {
    /// Parses and normalizes `text`; a reference with neither tag nor digest gets `:latest`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let error = |reason: &str| ReferenceError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(error("empty"));
        }
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error(
                "a 64-character hex string is ambiguous (hint: write `sha256:<hex>` for a digest)",
            ));
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(Digest::parse(digest).map_err(|e| error(&e.to_string()))?),
            ),
            None => (text, None),
        };
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let split = last_slash + colon;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(error)?;
        }
        let (domain, path) = split_domain(name);
        validate_domain(domain).map_err(error)?;
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(error("repository name must be lowercase"));
        }
        for component in path.split('/') {
            validate_path_component(component).map_err(error)?;
        }
        let domain = if domain == LEGACY_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(error("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// Docker's short form: `busybox:latest`, `user/app:1`, `ghcr.io/x/y:2`.
    pub fn familiar(&self) -> String {
        let mut name = if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_PREFIX)
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            self.repository()
        };
        self.push_suffix(&mut name);
        name
    }

    fn push_suffix(&self, name: &mut String) {
        if let Some(tag) = &self.tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            name.push('@');
            name.push_str(digest.as_str());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut name = self.repository();
        self.push_suffix(&mut name);
        f.write_str(&name)
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = tag.len() <= MAX_TAG_LEN
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(
            "invalid tag (letters, digits, `_`, `.`, `-`; at most 128, not starting with `.` or `-`)",
        )
    }
}

/// `host[:port]`: dot-separated labels of letters, digits and inner dashes, or `[ipv6]`.
fn validate_domain(domain: &str) -> Result<(), &'static str> {
    const INVALID: &str = "invalid registry domain";
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || domain.starts_with('[') => (host, Some(port)),
        _ => (domain, None),
    };
    if port.is_some_and(|port| port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit())) {
        return Err(INVALID);
    }
    if let Some(ipv6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            true => Ok(()),
            false => Err(INVALID),
        };
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(INVALID)
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn validate_path_component(component: &str) -> Result<(), &'static str> {
    const INVALID: &str = "invalid repository path component (lowercase letters and digits, \
                           separated by `.`, `_`, `__` or dashes)";
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Err(INVALID);
    }
    let mut separator = Vec::new();
    for &b in bytes {
        if alnum(&b) {
            let ok = matches!(separator.as_slice(), [] | [b'.'] | [b'_'] | [b'_', b'_'])
                || separator.iter().all(|&s| s == b'-');
            if !ok {
                return Err(INVALID);
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b);
        } else {
            return Err(INVALID);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn short_names_normalize_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            full("index.docker.io/library/x"),
            "docker.io/library/x:latest"
        );
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(full("ghcr.io/org/img:tag"), "ghcr.io/org/img:tag");
        assert_eq!(full("[::1]:5000/x"), "[::1]:5000/x:latest");
    }

    #[test]
    fn digest_references_get_no_default_tag() {
        let hex = "a".repeat(64);
        let reference = Reference::parse(&format!("busybox@sha256:{hex}")).unwrap();
        assert_eq!(reference.tag(), None);
        assert_eq!(
            reference.to_string(),
            format!("docker.io/library/busybox@sha256:{hex}")
        );
        let both = Reference::parse(&format!("busybox:1@sha256:{hex}")).unwrap();
        assert_eq!(both.familiar(), format!("busybox:1@sha256:{hex}"));
    }

    #[test]
    fn familiar_form_drops_default_domain_and_library() {
        let familiar = |text: &str| Reference::parse(text).unwrap().familiar();
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/user/app:1"), "user/app:1");
        assert_eq!(familiar("localhost/app"), "localhost/app:latest");
    }

    #[test]
    fn invalid_references_say_why() {
        let reason = |text: &str| Reference::parse(text).unwrap_err().reason;
        assert!(reason("Busybox").contains("lowercase"));
        assert!(reason("").contains("empty"));
        assert!(reason(&"0".repeat(64)).contains("ambiguous"));
        assert!(reason("busybox:-x").contains("invalid tag"));
        assert!(reason("a//b").contains("path component"));
        assert!(reason("a/b-").contains("path component"));
        assert!(reason("a.b:x/c").contains("domain"));
        assert!(reason("busybox@sha256:zz").contains("digest"));
        assert!(reason(&format!("x/{}", "a".repeat(300))).contains("255"));
    }

    #[test]
    fn path_components_accept_docker_separators() {
        for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2"] {
            assert!(validate_path_component(ok).is_ok(), "{ok}");
        }
        for bad in ["_a", "a_", "a___b", "a._b", "a..b", "A"] {
            assert!(validate_path_component(bad).is_err(), "{bad}");
        }
    }
}

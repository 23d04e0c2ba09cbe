//! Who may do what on `imgb serve`: the token file, the authentication layer and the extractors
//! handlers use to demand a scope.
//!
//! Invariants:
//! - Authentication runs before routing reaches any handler, so a request without a valid
//!   token learns nothing about which builds, repositories or blobs exist: every such request
//!   gets the same 401, whatever the path.
//! - Tokens are kept only as SHA-256 digests and compared in constant time against every entry
//!   (no early exit), and are never echoed in errors or logs.
//! - Without a token file every request has write access; `serve` only allows that on unix
//!   sockets and loopback listeners (see [`super::listen`]).

use anyhow::{Context, Result, bail};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token allows. `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET/HEAD: build lists, events, results, cache blobs and manifests, metrics.
    Read,
    /// Also: submit and cancel builds, push blobs and manifests.
    Write,
}

/// The authenticated caller's rights, inserted into every request's extensions by
/// [`authenticate`] before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub scope: Scope,
}

/// The accepted tokens, loaded from `--token-file`.
#[derive(Debug)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Scope)>,
}

impl TokenTable {
    /// Reads `TOKEN SCOPE` lines (`#` comments and blank lines ignored). A malformed line stops
    /// the server with its line number, never its content. A file others can read is accepted
    /// with a warning.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading the token file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o044 != 0 {
            eprintln!(
                "warning: the token file {} is readable by group or others (mode {:o}); \
                 hint: chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let table = Self::parse(&text).map_err(|line| {
            anyhow::anyhow!(
                "{}:{line}: malformed token line (expected `TOKEN read` or `TOKEN write`)",
                path.display()
            )
        })?;
        if table.entries.is_empty() {
            bail!(
                "the token file {} holds no tokens (hint: one `TOKEN read|write` per line)",
                path.display()
            );
        }
        Ok(table)
    }

    /// Parses the file's text; `Err` is the 1-based number of the first malformed line.
    pub fn parse(text: &str) -> Result<Self, usize> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let entry = match (fields.next(), fields.next(), fields.next()) {
                (Some(token), Some("read"), None) => (token, Scope::Read),
                (Some(token), Some("write"), None) => (token, Scope::Write),
                _ => return Err(index + 1),
            };
            entries.push((token_digest(entry.0), entry.1));
        }
        Ok(Self { entries })
    }

    /// The scope `token` grants, checking every entry so the time taken does not depend on
    /// which one (if any) matched.
    fn scope_of(&self, token: &str) -> Option<Scope> {
        let presented = token_digest(token);
        let mut granted = None;
        for (digest, scope) in &self.entries {
            if bool::from(digest.ct_eq(&presented)) {
                granted = granted.max(Some(*scope));
            }
        }
        granted
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token a request carries: `Authorization: Bearer TOKEN`, or HTTP Basic with the token as
/// the password (any user name) so registry clients' `--creds` and `auths` entries work.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_user, password) = decoded.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// The authentication layer: no token file grants write to everyone; otherwise a known token
/// grants its scope and anything else is a 401 before routing continues.
pub async fn authenticate(
    State(tokens): State<Option<Arc<TokenTable>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let scope = match &tokens {
        None => Some(Scope::Write),
        Some(table) => presented_token(request.headers()).and_then(|token| table.scope_of(&token)),
    };
    let Some(scope) = scope else {
        return denied(request.uri().path(), StatusCode::UNAUTHORIZED);
    };
    request.extensions_mut().insert(Access { scope });
    next.run(request).await
}

/// A 401 or 403 in the format the path's API speaks: the OCI distribution error envelope under
/// `/v2/`, `{"error": ...}` elsewhere. The body never depends on what exists.
pub fn denied(path: &str, status: StatusCode) -> Response {
    let distribution = path == "/v2" || path.starts_with("/v2/");
    let (code, message) = if status == StatusCode::FORBIDDEN {
        (
            "DENIED",
            "this token may only read (hint: use a token with write scope)",
        )
    } else {
        (
            "UNAUTHORIZED",
            "authentication required (hint: a token from the server's --token-file, as \
             `Authorization: Bearer TOKEN` or HTTP Basic with the token as password)",
        )
    };
    let body = if distribution {
        serde_json::json!({ "errors": [{ "code": code, "message": message }] })
    } else {
        serde_json::json!({ "error": message })
    };
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        // Registry clients (skopeo, docker, imgb) answer a Basic challenge with stored creds.
        let challenge = if distribution {
            r#"Basic realm="imgb""#
        } else {
            r#"Bearer realm="imgb""#
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
    }
    response
}

/// The caller's [`Access`], or a 401 when a route was mounted outside the auth layer.
fn access_of(parts: &Parts) -> Result<Access, Response> {
    parts
        .extensions
        .get::<Access>()
        .copied()
        .ok_or_else(|| denied(parts.uri.path(), StatusCode::UNAUTHORIZED))
}

/// Extractor for handlers that only read: any authenticated caller. (The caller's [`Access`]
/// itself is in the request extensions.)
#[derive(Debug, Clone, Copy)]
pub struct RequireRead;

impl<S: Send + Sync> FromRequestParts<S> for RequireRead {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        access_of(parts).map(|_| RequireRead)
    }
}

/// Extractor for handlers that change state (submit, cancel, push): a write token, else 403.
#[derive(Debug, Clone, Copy)]
pub struct RequireWrite;

impl<S: Send + Sync> FromRequestParts<S> for RequireWrite {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let access = access_of(parts)?;
        if access.scope < Scope::Write {
            return Err(denied(parts.uri.path(), StatusCode::FORBIDDEN));
        }
        Ok(RequireWrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_name_their_scope_and_comments_are_skipped() {
        let table = TokenTable::parse("# team\n\nr3ad-token read\n  wr1te-token   write  \n")
            .expect("valid table");
        assert_eq!(table.scope_of("r3ad-token"), Some(Scope::Read));
        assert_eq!(table.scope_of("wr1te-token"), Some(Scope::Write));
        assert_eq!(table.scope_of("wr1te"), None);
        assert_eq!(table.scope_of(""), None);
    }

    #[test]
    fn malformed_token_lines_are_refused_by_number() {
        assert_eq!(TokenTable::parse("a read\nb admin\n").err(), Some(2));
        assert_eq!(TokenTable::parse("# c\nlonely\n").err(), Some(2));
        assert_eq!(TokenTable::parse("a read extra\n").err(), Some(1));
    }

    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret:x");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().expect("header value"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret:x"));
        headers.insert(
            header::AUTHORIZATION,
            "bearer tok".parse().expect("header value"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("tok"));
    }
}

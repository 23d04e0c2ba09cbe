//! Build secrets (`imgb build --remote --secret ...`): the client reads their values locally and
//! sends them at the head of the submission's body, before the context tar.
//!
//! Framing (content type [`CONTENT_TYPE`]): one line of JSON, `{"secrets":{"ID":"BASE64"}}`
//! (JSON escapes every newline inside it), then the context tar as for a plain submission.
//!
//! Invariants:
//! - Secrets never travel in the clear: over plain TCP both the client and the server must have
//!   been given `--insecure` (unix sockets and TLS are fine).
//! - Their values live in memory only: never in the options header, the work directory, the
//!   build's status, events or the server's log (a [`Secret`]'s `Debug` is redacted). The build
//!   holds them until it ends; a cancelled queued build drops them with its job.

use super::request::Refusal;
use super::upload::EMPTY_CONTEXT;
use crate::serve::listen::Transport;
use axum::body::{Body, Bytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use imgb_builder::execute::Secret;
use std::collections::BTreeMap;

/// The content type of a submission whose body starts with the secrets line.
pub const CONTENT_TYPE: &str = "application/vnd.imgb.secrets+tar";

/// The longest secrets line accepted (all values, base64, with their ids).
pub const MAX_LINE: usize = 1024 * 1024;

/// Build secrets by id.
pub type Secrets = BTreeMap<String, Secret>;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    secrets: BTreeMap<String, String>,
}

/// The line that starts a submission carrying `secrets`, newline included.
pub fn encode(secrets: &Secrets) -> Vec<u8> {
    let line = Line {
        secrets: secrets
            .iter()
            .map(|(id, secret)| (id.clone(), STANDARD.encode(&secret.0)))
            .collect(),
    };
    // A map of strings always serializes.
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Refuses `what` (build secrets, SSH agent connections) in the clear without `--insecure` on
/// the server.
pub fn check_transport(
    transport: Option<Transport>,
    insecure: bool,
    what: &str,
) -> Result<(), Refusal> {
    match transport {
        Some(Transport::Unix | Transport::Tls) => Ok(()),
        Some(Transport::Tcp) if insecure => Ok(()),
        _ => Err(Refusal {
            status: 403,
            message: format!(
                "{what} are only accepted over TLS or a unix socket; hint: start the server \
                 with --tls-cert/--tls-key (or, on a network you trust, give --insecure to \
                 both imgb serve and imgb build)"
            ),
        }),
    }
}

/// Reads the secrets line from the head of `body`; the rest of the body (the context) follows.
pub async fn split(body: Body) -> Result<(Secrets, Body), Refusal> {
    let mut stream = body.into_data_stream();
    let mut head: Vec<u8> = Vec::new();
    let rest = loop {
        let Some(chunk) = stream.next().await else {
            if head.is_empty() {
                return Err(Refusal::bad(format!(
                    "{EMPTY_CONTEXT}: send the secrets line, then the context as a tar stream"
                )));
            }
            return Err(Refusal::bad(
                "the secrets line at the head of the body has no end (a newline)",
            ));
        };
        let chunk = chunk.map_err(|error| {
            Refusal::bad(format!("the submission broke off in its secrets: {error}"))
        })?;
        let searched = head.len();
        head.extend_from_slice(&chunk);
        if let Some(end) = head[searched..].iter().position(|&byte| byte == b'\n') {
            break head.split_off(searched + end + 1);
        }
        if head.len() > MAX_LINE {
            return Err(too_long());
        }
    };
    if head.len() > MAX_LINE {
        return Err(too_long());
    }
    let secrets = decode(&head)?;
    let context =
        futures_util::stream::iter((!rest.is_empty()).then(|| Ok(Bytes::from(rest)))).chain(stream);
    Ok((secrets, Body::from_stream(context)))
}

fn too_long() -> Refusal {
    Refusal {
        status: 413,
        message: format!("the secrets line is longer than {MAX_LINE} bytes"),
    }
}

/// Parses the secrets line; errors name the field at fault, never a value.
fn decode(line: &[u8]) -> Result<Secrets, Refusal> {
    let parsed: Line = serde_json::from_slice(line).map_err(|error| {
        Refusal::bad(format!(
            "the secrets line is not {{\"secrets\":{{\"ID\":\"BASE64\"}}}} (at column {})",
            error.column()
        ))
    })?;
    parsed
        .secrets
        .into_iter()
        .map(|(id, value)| {
            let bytes = STANDARD
                .decode(value)
                .map_err(|_| Refusal::bad(format!("secret {id:?}: the value is not base64")))?;
            Ok((id, Secret(bytes)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_secrets_line_is_split_from_the_context_whatever_the_chunking() {
        let secrets: Secrets = [("tok".to_string(), Secret(b"va\nlue".to_vec()))].into();
        let mut body = encode(&secrets);
        body.extend_from_slice(b"TAR BYTES");
        for size in [1, 3, body.len()] {
            let chunks: Vec<Result<Bytes, std::io::Error>> = body
                .chunks(size)
                .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
                .collect();
            let (got, rest) = split(Body::from_stream(futures_util::stream::iter(chunks)))
                .await
                .unwrap();
            assert_eq!(got["tok"].0, b"va\nlue");
            let rest = rest.collect().await.unwrap().to_bytes();
            assert_eq!(&rest[..], b"TAR BYTES");
        }
    }

    #[tokio::test]
    async fn malformed_secrets_are_refused_without_echoing_values() {
        for (body, needle) in [
            (&b""[..], EMPTY_CONTEXT),
            (&b"{\"secrets\":{}}"[..], "no end"),
            (&b"{\"secrets\":{\"a\":\"hunter2!\"}}\n"[..], "not base64"),
            (&b"{\"secret\":{}}\n"[..], "not {"),
        ] {
            let refusal = split(Body::from(body.to_vec())).await.unwrap_err();
            assert_eq!(refusal.status, 400);
            assert!(refusal.message.contains(needle), "{}", refusal.message);
            assert!(!refusal.message.contains("hunter2"), "{}", refusal.message);
        }
    }

    #[test]
    fn secrets_travel_only_over_tls_or_a_unix_socket_unless_insecure() {
        assert!(check_transport(Some(Transport::Unix), false, "secrets").is_ok());
        assert!(check_transport(Some(Transport::Tls), false, "secrets").is_ok());
        assert_eq!(
            check_transport(Some(Transport::Tcp), false, "secrets")
                .unwrap_err()
                .status,
            403
        );
        assert!(check_transport(Some(Transport::Tcp), true, "secrets").is_ok());
        assert!(check_transport(None, true, "secrets").is_err());
    }
}

//! Receiving a build context: the request body (a tar, optionally compressed) is spooled to
//! the build's work directory with the size limit enforced as bytes arrive, then unpacked with
//! the store's safe applier in strict mode.
//!
//! Invariants: no byte beyond `--max-context-size` is written (413); an entry that is absolute,
//! contains `..` or goes through a symlink is refused by name (400) and nothing outside the
//! work directory is touched; symlinks themselves (even absolute ones) are kept as links; the
//! build's context hashing and COPY resolve them inside the context.

use super::request::Refusal;
use crate::serve::metrics::Metrics;
use axum::body::Body;
use futures_util::StreamExt;
use imgb_cache::{ApplyError, ApplyOptions, Whiteouts, apply_layer};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;

/// The start of the 400 an empty body gets (the remote client probes with one).
pub const EMPTY_CONTEXT: &str = "the build context is empty";

/// Spools `body` into `work/context.tar` and unpacks it into `work/context`, which it returns.
pub async fn receive_context(
    body: Body,
    work: &Path,
    max_bytes: u64,
    metrics: &Metrics,
) -> Result<PathBuf, Refusal> {
    let spool = work.join("context.tar");
    let context = work.join("context");
    let server_error = |what: &str, error: std::io::Error| Refusal {
        status: 500,
        message: format!("{what} {}: {error}", work.display()),
    };
    tokio::fs::create_dir_all(&context)
        .await
        .map_err(|error| server_error("creating", error))?;
    let mut file = tokio::fs::File::create(&spool)
        .await
        .map_err(|error| server_error("writing into", error))?;
    let mut received = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            Refusal::bad(format!(
                "the build context upload broke off after {received} bytes: {error}"
            ))
        })?;
        received += chunk.len() as u64;
        metrics
            .bytes_received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if received > max_bytes {
            return Err(Refusal {
                status: 413,
                message: format!(
                    "the build context is larger than the server's --max-context-size \
                     ({max_bytes} bytes); hint: exclude files with .dockerignore"
                ),
            });
        }
        file.write_all(&chunk)
            .await
            .map_err(|error| server_error("writing into", error))?;
    }
    if received == 0 {
        return Err(Refusal::bad(format!(
            "{EMPTY_CONTEXT}: send the context directory as a tar stream"
        )));
    }
    file.flush()
        .await
        .map_err(|error| server_error("writing into", error))?;
    drop(file);
    let target = context.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&spool)?;
        let result = apply_layer(input, &target, &context_options());
        std::fs::remove_file(&spool)?;
        Ok::<_, std::io::Error>(result)
    })
    .await
    .map_err(|error| Refusal {
        status: 500,
        message: format!("unpacking the build context: {error}"),
    })?
    .map_err(|error| server_error("unpacking into", error))?;
    unpacked.map_err(context_refusal)?;
    Ok(context)
}

/// How a context archive is unpacked: names as they are (no whiteouts), owners kept (as root),
/// nothing escaping.
fn context_options() -> ApplyOptions {
    ApplyOptions {
        whiteouts: Whiteouts::Literal,
        root_metadata: false,
        strict_paths: true,
        ..ApplyOptions::default()
    }
}

/// A 400 naming the entry at fault, in terms of the build context rather than of layers.
fn context_refusal(error: ApplyError) -> Refusal {
    let message = match &error {
        ApplyError::InvalidEntry { path, reason } => {
            format!("build context entry {path:?}: {reason}")
        }
        ApplyError::Resolve { path, source } => format!("build context entry {path:?}: {source}"),
        ApplyError::Entry { path, op, source } => {
            format!("build context entry {path:?}: {op}: {source}")
        }
        ApplyError::Malformed { offset, reason } => {
            format!("the build context is not a valid tar (at byte {offset}): {reason}")
        }
        ApplyError::Read(source) => {
            format!("the build context is not a complete tar stream: {source}")
        }
        other => format!("the build context: {other}"),
    };
    Refusal::bad(message)
}

//! `--progress rawjson`: one JSON object per line on stderr, for tools. Every object has an
//! `event` field; times are seconds since the build started, durations seconds.

use super::{Built, Explainer, Renderer, Summary};
use imgb_builder::solve::{OutputStream, ProgressEvent};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Instant;

pub(super) struct RawJson<W> {
    out: W,
    explainer: Explainer,
    started: Instant,
}

impl RawJson<std::io::Stderr> {
    pub(super) fn stderr(explainer: Explainer) -> Self {
        RawJson {
            out: std::io::stderr(),
            explainer,
            started: Instant::now(),
        }
    }
}

impl<W: Write> Renderer for RawJson<W> {
    fn event(&mut self, event: &ProgressEvent, now: Instant) {
        let time = (now - self.started).as_secs_f64();
        // Progress is for tools watching; a closed stderr must not fail the build.
        let _ = writeln!(self.out, "{}", event_json(event, time, &self.explainer));
    }
}

/// `started` carries the miss explanation twice: in words (`cache_miss_reason`) and as data
/// (`cache_miss`: the reason, its changes, their parts and details).
pub(crate) fn event_json(event: &ProgressEvent, time: f64, explainer: &Explainer) -> Value {
    match event {
        ProgressEvent::Started {
            vertex,
            name,
            key,
            cache_miss_reason,
        } => json!({
            "event": "started", "vertex": vertex.index(), "name": name, "time": time,
            "key": key.as_ref().map(ToString::to_string),
            "cache_miss_reason": explainer.explain(cache_miss_reason),
            "cache_miss": cache_miss_reason,
        }),
        ProgressEvent::Cached { vertex, name, key } => json!({
            "event": "cached", "vertex": vertex.index(), "name": name, "key": key.to_string(),
            "time": time,
        }),
        ProgressEvent::Output {
            vertex,
            stream,
            line,
        } => json!({
            "event": "output", "vertex": vertex.index(), "time": time,
            "stream": match stream { OutputStream::Stdout => "stdout", OutputStream::Stderr => "stderr" },
            "line": line,
        }),
        ProgressEvent::Completed { vertex, duration } => json!({
            "event": "completed", "vertex": vertex.index(), "duration": duration.as_secs_f64(),
        }),
        ProgressEvent::Failed {
            vertex,
            duration,
            error,
        } => json!({
            "event": "failed", "vertex": vertex.index(), "duration": duration.as_secs_f64(),
            "error": error,
        }),
        ProgressEvent::Cancelled { vertex } => {
            json!({"event": "cancelled", "vertex": vertex.index()})
        }
    }
}

/// The last event of a successful build.
pub(crate) fn done(summary: &Summary, built: &Built<'_>) -> Value {
    json!({
        "event": "done", "image": built.id, "digest": built.digest, "names": built.names,
        "ran": summary.ran, "cached": summary.cached, "duration": summary.elapsed.as_secs_f64(),
    })
}

/// The solver event a line of [`event_json`] describes (what a remote build's events feed the
/// local renderers); `None` for other events (`done`, a server's `queued`, ...) and for lines
/// that do not parse.
pub(crate) fn parse_event(value: &Value) -> Option<ProgressEvent> {
    let vertex = || {
        let index = value.get("vertex")?.as_u64()?;
        Some(imgb_builder::graph::VertexId::new(
            usize::try_from(index).ok()?,
        ))
    };
    let text = |field: &str| Some(value.get(field)?.as_str()?.to_string());
    let duration = || std::time::Duration::try_from_secs_f64(value.get("duration")?.as_f64()?).ok();
    let event = match value.get("event")?.as_str()? {
        "started" => ProgressEvent::Started {
            vertex: vertex()?,
            name: text("name")?,
            key: value
                .get("key")
                .and_then(|key| serde_json::from_value(key.clone()).ok()),
            cache_miss_reason: serde_json::from_value(value.get("cache_miss")?.clone()).ok()?,
        },
        "cached" => ProgressEvent::Cached {
            vertex: vertex()?,
            name: text("name")?,
            key: serde_json::from_value(value.get("key")?.clone()).ok()?,
        },
        "output" => ProgressEvent::Output {
            vertex: vertex()?,
            stream: match value.get("stream")?.as_str()? {
                "stdout" => OutputStream::Stdout,
                _ => OutputStream::Stderr,
            },
            line: text("line")?,
        },
        "completed" => ProgressEvent::Completed {
            vertex: vertex()?,
            duration: duration()?,
        },
        "failed" => ProgressEvent::Failed {
            vertex: vertex()?,
            duration: duration()?,
            error: text("error")?,
        },
        "cancelled" => ProgressEvent::Cancelled { vertex: vertex()? },
        _ => return None,
    };
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::progress::test_events::{build_events, failing_events, test_explainer};

    #[test]
    fn every_event_line_parses_back_into_its_event() {
        for (_, event) in build_events().into_iter().chain(failing_events()) {
            let line = event_json(&event, 1.5, &test_explainer());
            assert_eq!(parse_event(&line).as_ref(), Some(&event), "{line}");
        }
        assert!(parse_event(&json!({"event": "done", "image": "sha256:x"})).is_none());
    }
}

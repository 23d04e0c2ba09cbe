//! Build progress for people and tools: `plain` (BuildKit-like numbered lines with full RUN
//! output, the default when stderr is not a terminal), `tty` (the same lines for now),
//! `rawjson` (one JSON event per line) and `quiet` (only the image ID at the end).

use imgb_builder::graph::VertexId;
use imgb_builder::solve::{OutputStream, ProgressEvent};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Rawjson,
    Quiet,
}

/// What a build did, for the final line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ran: usize,
    pub cached: usize,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    mode: ProgressMode,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        Progress { mode }
    }

    /// Renders events until the solver drops its sender; returns the summary.
    pub async fn render(self, mut events: UnboundedReceiver<ProgressEvent>) -> Summary {
        let started = Instant::now();
        let mut numbers: HashMap<VertexId, usize> = HashMap::new();
        let mut summary = Summary::default();
        let mut stderr = std::io::stderr();
        while let Some(event) = events.recv().await {
            let next = numbers.len() + 1;
            let elapsed = started.elapsed().as_secs_f64();
            let line = match &event {
                ProgressEvent::Started {
                    vertex,
                    name,
                    cache_miss_reason,
                    ..
                } => {
                    let number = *numbers.entry(*vertex).or_insert(next);
                    summary.ran += 1;
                    format!("#{number} {name}\n#{number} cache miss: {cache_miss_reason}")
                }
                ProgressEvent::Cached { vertex, name, .. } => {
                    let number = *numbers.entry(*vertex).or_insert(next);
                    summary.cached += 1;
                    format!("#{number} {name}\n#{number} CACHED")
                }
                ProgressEvent::Output { vertex, line, .. } => format!(
                    "#{} {elapsed:.3} {line}",
                    numbers.get(vertex).copied().unwrap_or(0)
                ),
                ProgressEvent::Completed { vertex, duration } => {
                    format!(
                        "#{} DONE {:.1}s",
                        numbers.get(vertex).copied().unwrap_or(0),
                        duration.as_secs_f64()
                    )
                }
                ProgressEvent::Failed { vertex, error, .. } => format!(
                    "#{} ERROR: {error}",
                    numbers.get(vertex).copied().unwrap_or(0)
                ),
                ProgressEvent::Cancelled { vertex } => {
                    format!("#{} CANCELED", numbers.get(vertex).copied().unwrap_or(0))
                }
            };
            match self.mode {
                ProgressMode::Quiet => {}
                ProgressMode::Rawjson => {
                    let _ = writeln!(stderr, "{}", raw_json(&event, elapsed));
                }
                _ => {
                    let _ = writeln!(stderr, "{line}");
                }
            }
        }
        summary.elapsed = started.elapsed();
        summary
    }

    /// The last words of a successful build.
    pub fn finish(&self, summary: &Summary, image_id: &str) {
        match self.mode {
            ProgressMode::Quiet => println!("{image_id}"),
            ProgressMode::Rawjson => eprintln!(
                "{}",
                serde_json::json!({"event": "done", "image": image_id, "ran": summary.ran, "cached": summary.cached})
            ),
            _ => eprintln!(
                "built {image_id} in {:.2}s ({} steps ran, {} cached)",
                summary.elapsed.as_secs_f64(),
                summary.ran,
                summary.cached
            ),
        }
    }
}

fn raw_json(event: &ProgressEvent, elapsed: f64) -> serde_json::Value {
    match event {
        ProgressEvent::Started {
            vertex,
            name,
            key,
            cache_miss_reason,
        } => serde_json::json!({
            "event": "started", "vertex": vertex.index(), "name": name, "time": elapsed,
            "key": key.as_ref().map(ToString::to_string), "cache_miss_reason": cache_miss_reason.to_string(),
        }),
        ProgressEvent::Cached { vertex, name, key } => serde_json::json!({
            "event": "cached", "vertex": vertex.index(), "name": name, "key": key.to_string(), "time": elapsed,
        }),
        ProgressEvent::Output {
            vertex,
            stream,
            line,
        } => serde_json::json!({
            "event": "output", "vertex": vertex.index(), "time": elapsed,
            "stream": match stream { OutputStream::Stdout => "stdout", OutputStream::Stderr => "stderr" }, "line": line,
        }),
        ProgressEvent::Completed { vertex, duration } => serde_json::json!({
            "event": "completed", "vertex": vertex.index(), "duration": duration.as_secs_f64(),
        }),
        ProgressEvent::Failed {
            vertex,
            duration,
            error,
        } => serde_json::json!({
            "event": "failed", "vertex": vertex.index(), "duration": duration.as_secs_f64(), "error": error,
        }),
        ProgressEvent::Cancelled { vertex } => {
            serde_json::json!({"event": "cancelled", "vertex": vertex.index()})
        }
    }
}

//! `--progress plain`: BuildKit's numbered lines. Each step gets a number (`#3`) when it first
//! appears; its output lines carry the seconds since it started, and it ends with its duration:
//!
//! ```text
//! #3 [2/3] RUN make
//! #3 cache miss: no record
//! #3 0.214 cc -o app main.c
//! #3 DONE 1.3s
//! ```
//!
//! Step groups are separated by a blank line. Output is written as it comes, unabridged.

use super::{Built, Explainer, Renderer, Summary, seconds, summary_lines};
use imgb_builder::graph::VertexId;
use imgb_builder::solve::ProgressEvent;
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

pub(super) struct Plain<W> {
    out: W,
    explainer: Explainer,
    steps: HashMap<VertexId, Step>,
}

struct Step {
    number: usize,
    started: Instant,
}

impl<W: Write> Plain<W> {
    pub(super) fn new(out: W, explainer: Explainer) -> Self {
        Plain {
            out,
            explainer,
            steps: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn into_inner(self) -> W {
        self.out
    }

    /// The step's number, given on first sight (a blank line sets a new step apart).
    fn number(&mut self, vertex: VertexId, now: Instant, lines: &mut Vec<String>) -> usize {
        let next = self.steps.len() + 1;
        let step = self.steps.entry(vertex).or_insert_with(|| {
            if next > 1 {
                lines.push(String::new());
            }
            Step {
                number: next,
                started: now,
            }
        });
        step.number
    }

    fn lines(&mut self, event: &ProgressEvent, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        match event {
            ProgressEvent::Started {
                vertex,
                name,
                cache_miss_reason,
                ..
            } => {
                let number = self.number(*vertex, now, &mut lines);
                lines.push(format!("#{number} {name}"));
                let reason = self.explainer.explain(cache_miss_reason);
                lines.push(format!("#{number} cache miss: {reason}"));
            }
            ProgressEvent::Cached { vertex, name, .. } => {
                let number = self.number(*vertex, now, &mut lines);
                lines.push(format!("#{number} {name}"));
                lines.push(format!("#{number} CACHED"));
            }
            ProgressEvent::Output { vertex, line, .. } => {
                let number = self.number(*vertex, now, &mut lines);
                let since = self
                    .steps
                    .get(vertex)
                    .map_or(0.0, |step| (now - step.started).as_secs_f64());
                lines.push(format!("#{number} {since:.3} {line}"));
            }
            ProgressEvent::Completed { vertex, duration } => {
                let number = self.number(*vertex, now, &mut lines);
                lines.push(format!("#{number} DONE {}", seconds(*duration)));
            }
            ProgressEvent::Failed { vertex, error, .. } => {
                let number = self.number(*vertex, now, &mut lines);
                lines.push(format!("#{number} ERROR: {error}"));
            }
            ProgressEvent::Cancelled { vertex } => {
                // Steps that never started were only waiting: nothing to say about them.
                if let Some(step) = self.steps.get(vertex) {
                    lines.push(format!("#{} CANCELED", step.number));
                }
            }
        }
        lines
    }
}

impl<W: Write> Renderer for Plain<W> {
    fn event(&mut self, event: &ProgressEvent, now: Instant) {
        for line in self.lines(event, now) {
            // Progress is for people; a closed stderr must not fail the build.
            let _ = writeln!(self.out, "{line}");
        }
    }
}

/// The final lines of a successful build.
pub(super) fn summary(summary: &Summary, built: &Built<'_>) -> String {
    let (details, headline) = summary_lines(summary, built);
    let mut text = String::from("\n");
    for line in details.iter().chain([&headline]) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::progress::test_events::{
        at, build_events, failing_events, test_explainer,
    };

    fn render(events: &[(u64, ProgressEvent)]) -> String {
        let start = Instant::now();
        let mut plain = Plain::new(Vec::new(), test_explainer());
        for (millis, event) in events {
            plain.event(event, at(start, *millis));
        }
        String::from_utf8(plain.into_inner()).unwrap()
    }

    #[test]
    fn steps_are_numbered_with_output_times_since_their_start_and_durations() {
        insta::assert_snapshot!(render(&build_events()));
    }

    #[test]
    fn a_failure_names_the_step_and_waiting_steps_stay_silent() {
        insta::assert_snapshot!(render(&failing_events()));
    }
}

//! Build progress for people and tools, from the solver's [`ProgressEvent`]s:
//! - `plain` ([`plain`]): BuildKit-like numbered lines with the full RUN output, the default
//!   when stderr is not a terminal (CI, logs);
//! - `tty` ([`tty`]): a live display of the running steps with timers and the last lines of
//!   their output, finished steps printed above it; needs a terminal (falls back to `plain`);
//! - `rawjson` ([`raw_json`]): one JSON object per event and line, for tools;
//! - `quiet`: nothing but the image ID on stdout at the end.
//!
//! One loop ([`drive`]) feeds every renderer: it hands over the events that arrived together
//! as one batch, and only the tty display gets a timer tick, so output lines never cause a
//! redraw of their own.

mod plain;
pub(crate) mod raw_json;
mod tty;

use imgb_builder::solve::{MissReason, ProgressEvent};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
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

/// What a build did, for the final lines.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Steps that ran, image sources included.
    pub ran: usize,
    pub cached: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub(crate) fn count(&mut self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Started { .. } => self.ran += 1,
            ProgressEvent::Cached { .. } => self.cached += 1,
            _ => {}
        }
    }
}

/// The image a successful build made.
#[derive(Debug, Clone, Copy)]
pub struct Built<'a> {
    /// The image ID: the config digest.
    pub id: &'a str,
    /// The manifest digest.
    pub digest: &'a str,
    /// The names it was tagged with, in full form.
    pub names: &'a [String],
}

/// Shows events one way. Every event is passed in order; those that arrived together form a
/// batch, after which [`Renderer::flush`] runs.
trait Renderer {
    fn event(&mut self, event: &ProgressEvent, now: Instant);
    /// A batch ended: show what must not wait for the next tick.
    fn flush(&mut self, _now: Instant) {}
    /// Periodic: update timers and output tails (only renderers with a tick rate get it).
    fn tick(&mut self, _now: Instant) {}
    /// The solver is done; leave the terminal clean for the final lines.
    fn end(&mut self, _now: Instant) {}
}

/// Puts cache-miss explanations into words for one Dockerfile: a changed env variable that a
/// build argument declares is named as the build argument.
#[derive(Debug, Clone, Default)]
pub struct Explainer {
    build_args: Arc<BTreeSet<String>>,
}

impl Explainer {
    pub fn new(build_args: BTreeSet<String>) -> Self {
        Explainer {
            build_args: Arc::new(build_args),
        }
    }

    fn explain(&self, reason: &MissReason) -> String {
        reason.describe(&|label| self.term(label))
    }

    /// One entry per changed input, for a display that gives each its own line.
    fn explain_each(&self, reason: &MissReason) -> Vec<String> {
        reason.describe_each(&|label| self.term(label))
    }

    fn term(&self, label: &str) -> String {
        match label.strip_prefix("env ") {
            Some(name) if self.build_args.contains(name) => format!("build arg {name}"),
            _ => label.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Progress {
    mode: ProgressMode,
    explainer: Explainer,
}

impl Progress {
    pub fn new(mode: ProgressMode, explainer: Explainer) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let mode = match mode {
            ProgressMode::Auto | ProgressMode::Tty if terminal => ProgressMode::Tty,
            // A live display needs a terminal to move the cursor in.
            ProgressMode::Auto | ProgressMode::Tty => ProgressMode::Plain,
            other => other,
        };
        Progress { mode, explainer }
    }

    /// Renders events until the solver drops its sender; returns the summary.
    pub async fn render(self, events: UnboundedReceiver<ProgressEvent>) -> Summary {
        let explainer = self.explainer;
        match self.mode {
            ProgressMode::Tty => {
                let mut tty = tty::Tty::stderr(explainer);
                drive(events, &mut tty, Some(tty::TICK)).await
            }
            ProgressMode::Rawjson => {
                drive(events, &mut raw_json::RawJson::stderr(explainer), None).await
            }
            ProgressMode::Quiet => drive(events, &mut Quiet, None).await,
            ProgressMode::Auto | ProgressMode::Plain => {
                let mut plain = plain::Plain::new(std::io::stderr(), explainer);
                drive(events, &mut plain, None).await
            }
        }
    }

    /// The last words of a successful build.
    pub fn finish(&self, summary: &Summary, built: &Built<'_>) {
        match self.mode {
            ProgressMode::Quiet => println!("{}", built.id),
            ProgressMode::Rawjson => eprintln!("{}", raw_json::done(summary, built)),
            ProgressMode::Tty => eprint!("{}", tty::summary(summary, built)),
            ProgressMode::Auto | ProgressMode::Plain => {
                eprint!("{}", plain::summary(summary, built));
            }
        }
    }
}

struct Quiet;

impl Renderer for Quiet {
    fn event(&mut self, _event: &ProgressEvent, _now: Instant) {}
}

/// Feeds `renderer` until the sender is dropped, in batches of what is already queued, with a
/// tick every `tick` when given.
async fn drive(
    mut events: UnboundedReceiver<ProgressEvent>,
    renderer: &mut impl Renderer,
    tick: Option<Duration>,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut ticker = tick.map(|period| {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker
    });
    loop {
        let next = match &mut ticker {
            Some(ticker) => tokio::select! {
                event = events.recv() => event,
                _ = ticker.tick() => {
                    renderer.tick(Instant::now());
                    continue;
                }
            },
            None => events.recv().await,
        };
        let Some(first) = next else { break };
        let now = Instant::now();
        let mut event = Some(first);
        while let Some(current) = event {
            summary.count(&current);
            renderer.event(&current, now);
            event = events.try_recv().ok();
        }
        renderer.flush(now);
    }
    renderer.end(Instant::now());
    summary.elapsed = started.elapsed();
    summary
}

/// The final lines shared by `plain` and `tty`: what was written and its names, then the
/// headline with the time and counts.
fn summary_lines(summary: &Summary, built: &Built<'_>) -> (Vec<String>, String) {
    let mut details = vec![
        format!("writing image {}", built.id),
        format!("manifest {}", built.digest),
    ];
    details.extend(built.names.iter().map(|name| format!("naming to {name}")));
    let headline = format!(
        "built in {:.1}s: {} ran, {} cached",
        summary.elapsed.as_secs_f64(),
        plural(summary.ran, "step"),
        summary.cached
    );
    (details, headline)
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// BuildKit's duration format: seconds with one decimal.
fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod test_events;

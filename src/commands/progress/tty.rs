//! `--progress tty`: a live display in the style of BuildKit's.
//!
//! ```text
//!  => CACHED [build 2/4] COPY src /src                      0.0s   ← printed once, scrolls up
//!  => [internal] load metadata for busybox                  0.0s
//!  => [build 3/4] RUN make -C /src all                      0.6s   ← live: running steps,
//!  => => # cc -c util.c                                            the last lines of their
//! [+] Building 0.6s (2/4)                                          output, a status line
//! ```
//!
//! A finished step is printed above the live region (so the terminal's scrollback keeps the
//! whole build); the live region shows each running step with its timer, why it missed the
//! cache when something changed, and its last [`TAIL_LINES`] lines of output.
//!
//! [`Display`] is the state and composes frames as plain lines for a given time and terminal
//! size (so tests need no terminal); [`Tty`] feeds it and hands its frames to indicatif, which
//! moves the cursor, clears, and prints above. Frames are redrawn on the [`TICK`] and when
//! steps start or end, never per output line. Every line is cut to the terminal's width, and a
//! short terminal shows fewer output lines, then fewer steps.

use super::{Built, Explainer, Renderer, Summary, seconds, summary_lines};
use console::{Term, measure_text_width, strip_ansi_codes, truncate_str};
use imgb_builder::graph::VertexId;
use imgb_builder::solve::{MissReason, ProgressEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often timers and output tails are redrawn.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// Output lines shown under a running step, and kept for a failed one.
const TAIL_LINES: usize = 6;
/// Below this many columns for the name, the timer column is dropped.
const MIN_NAME_WIDTH: usize = 16;
/// When the terminal does not say.
const DEFAULT_SIZE: (usize, usize) = (24, 80);

/// One line of the display: text on the left, a timer right-aligned at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    text: String,
    timer: Option<String>,
}

impl Row {
    fn plain(text: String) -> Self {
        Row { text, timer: None }
    }

    fn timed(text: String, elapsed: Duration) -> Self {
        Row {
            text,
            timer: Some(seconds(elapsed)),
        }
    }

    /// The row cut to `width` columns: the text shortened with `…`, the timer kept at the right
    /// edge while the text still has [`MIN_NAME_WIDTH`] columns, dropped after that.
    fn fit(&self, width: usize) -> String {
        let width = width.max(1);
        let Some(timer) = self.timer.as_deref() else {
            return truncate_str(&self.text, width, "…").into_owned();
        };
        let timer_width = measure_text_width(timer);
        if width < MIN_NAME_WIDTH + 1 + timer_width {
            return truncate_str(&self.text, width, "…").into_owned();
        }
        let room = width - timer_width - 1;
        let text = truncate_str(&self.text, room, "…");
        let padding = room - measure_text_width(&text) + 1;
        format!("{text}{:padding$}{timer}", "")
    }
}

struct RunningStep {
    vertex: VertexId,
    name: String,
    started: Instant,
    /// Why it missed the cache, when that is news (an input changed): a row each.
    explanation: Vec<Row>,
    tail: VecDeque<String>,
}

impl RunningStep {
    fn detail_rows(&self) -> impl Iterator<Item = Row> + '_ {
        self.explanation.iter().cloned().chain(self.tail_rows())
    }

    fn tail_rows(&self) -> impl Iterator<Item = Row> + '_ {
        self.tail
            .iter()
            .map(|line| Row::plain(format!(" => => # {line}")))
    }
}

/// The state of the display; pure apart from the times it is given.
pub(super) struct Display {
    explainer: Explainer,
    started: Instant,
    running: Vec<RunningStep>,
    /// Steps cached or done.
    finished: usize,
    /// Steps that appeared so far.
    seen: usize,
    /// Rows to print above the live region at the next flush.
    to_print: Vec<Row>,
    /// A step started or ended since the last frame.
    changed: bool,
}

impl Display {
    pub(super) fn new(started: Instant, explainer: Explainer) -> Self {
        Display {
            explainer,
            started,
            running: Vec::new(),
            finished: 0,
            seen: 0,
            to_print: Vec::new(),
            changed: false,
        }
    }

    pub(super) fn apply(&mut self, event: &ProgressEvent, now: Instant) {
        match event {
            ProgressEvent::Started {
                vertex,
                name,
                cache_miss_reason,
                ..
            } => {
                self.seen += 1;
                self.running.push(RunningStep {
                    vertex: *vertex,
                    name: name.clone(),
                    started: now,
                    explanation: self.news(cache_miss_reason),
                    tail: VecDeque::with_capacity(TAIL_LINES),
                });
            }
            ProgressEvent::Cached { name, .. } => {
                self.seen += 1;
                self.finished += 1;
                self.to_print
                    .push(Row::timed(format!(" => CACHED {name}"), Duration::ZERO));
            }
            ProgressEvent::Output { vertex, line, .. } => {
                if let Some(step) = self.running.iter_mut().find(|s| s.vertex == *vertex) {
                    if step.tail.len() == TAIL_LINES {
                        step.tail.pop_front();
                    }
                    step.tail.push_back(printable(line));
                }
                return;
            }
            ProgressEvent::Completed { vertex, duration } => {
                if let Some(step) = self.take(*vertex) {
                    self.finished += 1;
                    self.to_print
                        .push(Row::timed(format!(" => {}", step.name), *duration));
                    self.to_print.extend(step.explanation);
                }
            }
            ProgressEvent::Failed {
                vertex, duration, ..
            } => {
                // The error itself follows the display, with the Dockerfile excerpt.
                if let Some(step) = self.take(*vertex) {
                    self.to_print
                        .push(Row::timed(format!(" => ERROR {}", step.name), *duration));
                    self.to_print.extend(step.tail_rows());
                }
            }
            ProgressEvent::Cancelled { vertex } => {
                if let Some(step) = self.take(*vertex) {
                    self.to_print.push(Row::timed(
                        format!(" => CANCELED {}", step.name),
                        now - step.started,
                    ));
                }
            }
        }
        self.changed = true;
    }

    /// The explanation worth showing on a terminal: only a miss where an input changed (or a
    /// record went bad) is news; a first build or `--no-cache` is expected.
    fn news(&self, reason: &MissReason) -> Vec<Row> {
        if !matches!(
            reason,
            MissReason::Changed { .. } | MissReason::InvalidRecord { .. }
        ) {
            return Vec::new();
        }
        let lead = "cache miss: ";
        let indent = " ".repeat(lead.len());
        self.explainer
            .explain_each(reason)
            .into_iter()
            .enumerate()
            .map(|(index, text)| {
                let lead = if index == 0 { lead } else { &indent };
                Row::plain(format!(" => => {lead}{text}"))
            })
            .collect()
    }

    fn take(&mut self, vertex: VertexId) -> Option<RunningStep> {
        let index = self.running.iter().position(|s| s.vertex == vertex)?;
        Some(self.running.remove(index))
    }

    /// The rows waiting to be printed above the live region, cut to `width`.
    pub(super) fn take_printed(&mut self, width: usize) -> Vec<String> {
        self.to_print.drain(..).map(|row| row.fit(width)).collect()
    }

    /// The live region at `now` on a terminal of `height` × `width`: running steps, their
    /// details, the status line last. It keeps below `height` lines (the cursor needs one):
    /// output tails give way first, then steps beyond the room left.
    pub(super) fn frame(&self, now: Instant, height: usize, width: usize) -> Vec<String> {
        let room = height.saturating_sub(2);
        let step_rows = if self.running.len() > room {
            room.saturating_sub(1)
        } else {
            self.running.len()
        };
        let (shown, hidden) = self.running.split_at(step_rows);
        let hidden = hidden.len();
        let hidden_row = hidden > 0 && room > 0;
        let mut detail_room = room - step_rows - usize::from(hidden_row);
        let mut rows = Vec::new();
        for step in shown {
            rows.push(Row::timed(format!(" => {}", step.name), now - step.started));
            let details: Vec<Row> = step.detail_rows().collect();
            let kept = details.len().min(detail_room);
            detail_room -= kept;
            rows.extend(details.into_iter().take(kept));
        }
        if hidden_row {
            rows.push(Row::plain(format!(" => … and {hidden} more running")));
        }
        rows.push(Row::plain(format!(
            "[+] Building {} ({}/{})",
            seconds(now - self.started),
            self.finished,
            self.seen
        )));
        rows.iter().map(|row| row.fit(width)).collect()
    }

    fn changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

/// An output line without escape sequences or control characters, which would move the
/// cursor under the display's feet.
fn printable(line: &str) -> String {
    strip_ansi_codes(line)
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

/// The display on stderr.
pub(super) struct Tty {
    display: Display,
    term: Term,
    live: ProgressBar,
}

impl Tty {
    pub(super) fn stderr(explainer: Explainer) -> Self {
        let term = Term::stderr();
        // indicatif limits redraws to 20 a second on top of our tick.
        let live = ProgressBar::with_draw_target(None, ProgressDrawTarget::term(term.clone(), 20));
        live.set_style(ProgressStyle::with_template("{msg}").unwrap_or_else(|_| {
            // A constant template: only a broken indicatif could reject it.
            ProgressStyle::default_spinner()
        }));
        Tty {
            display: Display::new(Instant::now(), explainer),
            term,
            live,
        }
    }

    fn size(&self) -> (usize, usize) {
        self.term
            .size_checked()
            .map_or(DEFAULT_SIZE, |(rows, columns)| {
                (usize::from(rows), usize::from(columns))
            })
    }

    fn redraw(&mut self, now: Instant) {
        let (height, width) = self.size();
        self.live
            .set_message(self.display.frame(now, height, width).join("\n"));
    }

    fn print_finished(&mut self) {
        let (_, width) = self.size();
        let printed = self.display.take_printed(width);
        if !printed.is_empty() {
            self.live.println(printed.join("\n"));
        }
    }
}

impl Renderer for Tty {
    fn event(&mut self, event: &ProgressEvent, now: Instant) {
        self.display.apply(event, now);
    }

    fn flush(&mut self, now: Instant) {
        if self.display.changed() {
            self.redraw(now);
            self.print_finished();
        }
    }

    fn tick(&mut self, now: Instant) {
        self.redraw(now);
    }

    fn end(&mut self, _now: Instant) {
        self.live.finish_and_clear();
        let (_, width) = self.size();
        for line in self.display.take_printed(width) {
            let _ = self.term.write_line(&line);
        }
    }
}

/// The final lines of a successful build.
pub(super) fn summary(summary: &Summary, built: &Built<'_>) -> String {
    let (details, headline) = summary_lines(summary, built);
    let mut text = String::new();
    for line in details {
        text.push_str(&format!(" => {line}\n"));
    }
    text.push_str(&format!("[+] {headline}\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::progress::test_events::{
        at, build_events, failing_events, test_explainer,
    };

    /// What the terminal shows after the events up to `until` ms: the printed lines, then the
    /// live frame at that time.
    fn screen(events: &[(u64, ProgressEvent)], until: u64, height: usize, width: usize) -> String {
        let start = Instant::now();
        let mut display = Display::new(start, test_explainer());
        let mut printed = Vec::new();
        for (millis, event) in events.iter().filter(|(millis, _)| *millis <= until) {
            display.apply(event, at(start, *millis));
            printed.extend(display.take_printed(width));
        }
        let frame = display.frame(at(start, until), height, width);
        format!("{}\n--- live ---\n{}", printed.join("\n"), frame.join("\n"))
    }

    #[test]
    fn running_steps_show_timers_and_their_last_output_lines() {
        insta::assert_snapshot!(screen(&build_events(), 950, 24, 80));
    }

    #[test]
    fn finished_steps_are_printed_with_durations_and_cached_marks() {
        insta::assert_snapshot!(screen(&build_events(), 2000, 24, 80));
    }

    #[test]
    fn a_narrow_terminal_cuts_names_then_drops_timers() {
        insta::assert_snapshot!("width_40", screen(&build_events(), 950, 24, 40));
        insta::assert_snapshot!("width_12", screen(&build_events(), 950, 24, 12));
    }

    #[test]
    fn a_short_terminal_gives_up_output_lines_then_steps() {
        insta::assert_snapshot!("height_6", screen(&build_events(), 950, 6, 80));
        insta::assert_snapshot!("height_3", screen(&build_events(), 950, 3, 80));
    }

    #[test]
    fn a_failed_step_keeps_its_last_output_lines() {
        insta::assert_snapshot!(screen(&failing_events(), 400, 24, 80));
    }

    #[test]
    fn every_frame_fits_the_terminal() {
        let events = build_events();
        for width in [1, 5, 20, 33, 80] {
            for height in [1, 2, 4, 10] {
                let start = Instant::now();
                let mut display = Display::new(start, test_explainer());
                for (millis, event) in &events {
                    display.apply(event, at(start, *millis));
                    let frame = display.frame(at(start, *millis), height, width);
                    assert!(frame.len() < height.max(2), "{height}×{width}: {frame:?}");
                    for line in frame.iter().chain(&display.take_printed(width)) {
                        assert!(measure_text_width(line) <= width, "{width}: {line:?}");
                    }
                }
            }
        }
    }
}

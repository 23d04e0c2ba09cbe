//! `GET /metrics`: the build service's counters in the Prometheus text format (0.0.4).
//!
//! Counters only grow and live in memory (a restart starts them at zero, as Prometheus
//! expects); gauges (builds by state, queue length) are read from the service when scraped.

use crate::serve::auth::RequireRead;
use crate::serve::builds::BuildService;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use imgb_builder::solve::ProgressEvent;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the build duration histogram's buckets.
const DURATION_BUCKETS: [f64; 8] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Steps served from the cache / executed.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Build context bytes uploaded; result and event bytes sent.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// The most builds ever running at once.
    pub running_peak: AtomicU64,
    /// Cache collections the disk watermark started, and what they freed.
    pub gc_runs: AtomicU64,
    pub gc_freed_bytes: AtomicU64,
    /// Finished builds: count per bucket (cumulative at export), sum in milliseconds.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_count: AtomicU64,
    duration_millis: AtomicU64,
}

impl Metrics {
    /// Counts a step's cache outcome.
    pub fn step(&self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Cached { .. } => self.cache_hits.fetch_add(1, Ordering::Relaxed),
            ProgressEvent::Started { .. } => self.cache_misses.fetch_add(1, Ordering::Relaxed),
            _ => return,
        };
    }

    pub fn build_finished(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(index) = DURATION_BUCKETS.iter().position(|&bound| seconds <= bound)
            && let Some(bucket) = self.duration_buckets.get(index)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.duration_millis.fetch_add(millis, Ordering::Relaxed);
    }

    pub fn running_now(&self, running: u64) {
        self.running_peak.fetch_max(running, Ordering::Relaxed);
    }

    /// The exposition text, with the service's current gauges.
    pub fn render(&self, states: &[(&str, u64)], queued: u64) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut text = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let states: Vec<_> = states
            .iter()
            .map(|(state, count)| (format!("{{state=\"{state}\"}}"), count.to_string()))
            .collect();
        family(
            "imgb_builds",
            "gauge",
            "Builds the server knows, by state.",
            &states,
        );
        let plain = |value: u64| vec![(String::new(), value.to_string())];
        family(
            "imgb_build_queue_length",
            "gauge",
            "Builds waiting for a slot.",
            &plain(queued),
        );
        family(
            "imgb_builds_running_peak",
            "gauge",
            "The most builds that ran at once since the server started.",
            &plain(load(&self.running_peak)),
        );
        family(
            "imgb_cache_hits_total",
            "counter",
            "Build steps served from the cache.",
            &plain(load(&self.cache_hits)),
        );
        family(
            "imgb_cache_misses_total",
            "counter",
            "Build steps that ran.",
            &plain(load(&self.cache_misses)),
        );
        family(
            "imgb_received_bytes_total",
            "counter",
            "Build context bytes received.",
            &plain(load(&self.bytes_received)),
        );
        family(
            "imgb_sent_bytes_total",
            "counter",
            "Build result and event bytes sent.",
            &plain(load(&self.bytes_sent)),
        );
        family(
            "imgb_gc_runs_total",
            "counter",
            "Cache collections started by the free-space watermark.",
            &plain(load(&self.gc_runs)),
        );
        family(
            "imgb_gc_freed_bytes_total",
            "counter",
            "Bytes those collections freed.",
            &plain(load(&self.gc_freed_bytes)),
        );
        let mut cumulative = 0;
        let mut histogram: Vec<_> = DURATION_BUCKETS
            .iter()
            .zip(&self.duration_buckets)
            .map(|(bound, bucket)| {
                cumulative += load(bucket);
                (format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string())
            })
            .collect();
        let count = load(&self.duration_count);
        histogram.push(("_bucket{le=\"+Inf\"}".to_string(), count.to_string()));
        histogram.push((
            "_sum".to_string(),
            format!("{}", load(&self.duration_millis) as f64 / 1000.0),
        ));
        histogram.push(("_count".to_string(), count.to_string()));
        family(
            "imgb_build_duration_seconds",
            "histogram",
            "How long finished builds ran (queueing excluded).",
            &histogram,
        );
        text
    }
}

/// `GET /metrics` (read scope).
pub fn metrics_router(service: Arc<BuildService>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(service)
}

async fn metrics(State(service): State<Arc<BuildService>>, _: RequireRead) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics_text(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.build_finished(Duration::from_secs(3));
        metrics.build_finished(Duration::from_secs(30));
        let text = metrics.render(&[("queued", 1), ("running", 2)], 1);
        assert!(
            text.contains("imgb_builds{state=\"running\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("imgb_build_queue_length 1\n"), "{text}");
        assert!(
            text.contains("imgb_build_duration_seconds_bucket{le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("imgb_build_duration_seconds_bucket{le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("imgb_build_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("imgb_build_duration_seconds_sum 33\n"),
            "{text}"
        );
    }
}

//! Fake event streams for the renderers' snapshot tests: each event with the millisecond, from
//! the start of the build, at which it arrives.

use super::Explainer;
use imgb_builder::graph::VertexId;
use imgb_builder::solve::{
    CacheKey, Change, ChangeDetail, FileChanges, MissReason, OutputStream, PathSample,
    ProgressEvent,
};
use imgb_cache::Digest;
use std::time::{Duration, Instant};

pub(super) fn at(start: Instant, millis: u64) -> Instant {
    start + Duration::from_millis(millis)
}

/// Knows `DOCS_VERSION` as a build argument.
pub(super) fn test_explainer() -> Explainer {
    Explainer::new(["DOCS_VERSION".to_string()].into())
}

/// A build arg and two context files changed; the edit also added five files.
fn docs_changed() -> MissReason {
    let change = |component: &str, detail: ChangeDetail| Change {
        component: component.to_string(),
        parts: Vec::new(),
        detail: Some(detail),
    };
    MissReason::Changed {
        changes: vec![
            Change {
                component: "instruction".to_string(),
                parts: vec![change(
                    "env DOCS_VERSION",
                    ChangeDetail::Values {
                        from: Some("1.4".to_string()),
                        to: Some("1.5".to_string()),
                    },
                )],
                detail: None,
            },
            change(
                "context files",
                ChangeDetail::Files(FileChanges {
                    modified: PathSample {
                        count: 2,
                        first: vec!["docs/index.md".to_string(), "docs/usage.md".to_string()],
                    },
                    added: PathSample {
                        count: 5,
                        first: vec![
                            "docs/a.md".to_string(),
                            "docs/b.md".to_string(),
                            "docs/c.md".to_string(),
                        ],
                    },
                    removed: PathSample::default(),
                }),
            ),
        ],
        previous_name: "[docs 2/2] RUN generate-docs --output /docs".to_string(),
    }
}

fn key(seed: &str) -> CacheKey {
    CacheKey::from(Digest::of(seed.as_bytes()))
}

fn started(vertex: usize, name: &str, reason: MissReason) -> ProgressEvent {
    ProgressEvent::Started {
        vertex: VertexId::new(vertex),
        name: name.to_string(),
        key: (reason != MissReason::Source).then(|| key(name)),
        cache_miss_reason: reason,
    }
}

fn output(vertex: usize, line: &str) -> ProgressEvent {
    ProgressEvent::Output {
        vertex: VertexId::new(vertex),
        stream: OutputStream::Stdout,
        line: line.to_string(),
    }
}

fn completed(vertex: usize, millis: u64) -> ProgressEvent {
    ProgressEvent::Completed {
        vertex: VertexId::new(vertex),
        duration: Duration::from_millis(millis),
    }
}

/// A two-stage build: a base image, a cached COPY, two RUNs side by side, one of them long and
/// chatty.
pub(super) fn build_events() -> Vec<(u64, ProgressEvent)> {
    vec![
        (
            0,
            started(
                0,
                "[internal] load metadata for busybox",
                MissReason::Source,
            ),
        ),
        (4, completed(0, 4)),
        (
            5,
            ProgressEvent::Cached {
                vertex: VertexId::new(1),
                name: "[build 2/4] COPY src /src".to_string(),
                key: key("copy"),
            },
        ),
        (
            6,
            started(2, "[build 3/4] RUN make -C /src all", MissReason::NoRecord),
        ),
        (
            6,
            started(
                3,
                "[docs 2/2] RUN generate-docs --output /docs --format html --all-pages",
                docs_changed(),
            ),
        ),
        (120, output(2, "cc -c main.c")),
        (340, output(2, "cc -c util.c")),
        (350, output(3, "writing index.html")),
        (410, output(2, "cc -c \x1b[1mnet.c\x1b[0m\r")),
        (620, output(2, "cc -c parse.c")),
        (700, output(2, "cc -c print.c")),
        (
            800,
            output(
                2,
                "cc -c main_loop_with_an_unusually_long_name_for_a_source_file.c",
            ),
        ),
        (900, output(2, "cc -o app *.o")),
        (1006, completed(3, 1000)),
        (1306, completed(2, 1300)),
    ]
}

/// A RUN that fails while another runs and a third waits for a `jobs` slot.
pub(super) fn failing_events() -> Vec<(u64, ProgressEvent)> {
    vec![
        (0, started(1, "[2/3] RUN ./configure", MissReason::NoRecord)),
        (0, started(2, "[2/3] RUN sleep 10", MissReason::NoRecord)),
        (150, output(1, "checking for cc... no")),
        (160, output(1, "about to fail")),
        (
            300,
            ProgressEvent::Failed {
                vertex: VertexId::new(1),
                duration: Duration::from_millis(300),
                error: "process \"/bin/sh -c ./configure\" did not complete successfully: \
                        exit code: 3"
                    .to_string(),
            },
        ),
        (
            301,
            ProgressEvent::Cancelled {
                vertex: VertexId::new(3),
            },
        ),
        (
            350,
            ProgressEvent::Cancelled {
                vertex: VertexId::new(2),
            },
        ),
    ]
}

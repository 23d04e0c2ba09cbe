//! # imgb-builder
//!
//! The solver. It takes a `BuildGraph` (vertices: image sources, the build context, exec steps,
//! file operations; config changes carried per stage beside the graph), derives a
//! content-addressed cache key for every vertex (canonical op definition ‖ input keys ‖ content
//! digests of the files it reads), runs every vertex whose inputs are ready in parallel (bounded
//! by `--jobs`), and assembles image configs, history and exports.
//!
//! Invariants:
//! - It knows nothing of Dockerfile syntax: the frontend is one producer of graphs.
//! - A cache key depends only on what the step can observe; metadata-only changes elsewhere and
//!   unused build args never change it.
//!
//! Built so far: the graph IR ([`graph`]) and a user-space merged view of layer snapshots
//! ([`layered`]).

pub mod context;
pub mod execute;
pub mod file_ops;
pub mod graph;
pub mod http_source;
pub mod ignore;
pub mod layered;
pub mod path_io;
pub mod solve;

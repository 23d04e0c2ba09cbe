//! Solving a [`BuildGraph`](crate::graph::BuildGraph): turning the vertices a set of roots
//! needs into results, reusing earlier results through content-addressed cache records.
//!
//! - [`result`]: what a solved vertex yields — a filesystem as a chain of layers (plus, for an
//!   image source, the image it came from), or the build context.
//! - [`key`]: the cache key of a vertex and its labelled components, so a miss can be explained.
//! - [`records`]: key → result files in the state directory's `records/`, durable and shared
//!   safely between processes, plus the per-step index that miss explanations compare against.
//! - [`remote`]: records imported with `--cache-from`, consulted after a local miss, and the
//!   steps `--cache-to` exports.
//! - [`listing`]: the context files a step selected, kept per selection digest, so a miss can
//!   name the files that changed.
//! - [`scheduler`]: runs every vertex whose inputs are ready on tokio, bounded by `jobs`,
//!   cache lookups first, and streams progress events; execution is behind [`Executor`].
//!
//! Invariants:
//! - A cache key depends only on what a step can observe: its op and the *content* of its inputs
//!   (layer diffIDs, image manifest digests, the digest of the context files it selects). Names,
//!   timestamps and secret values never enter a key. An upstream step that reruns and produces
//!   identical content therefore leaves its dependents' keys unchanged (early cut-off).
//! - A record is written only after every blob it names is in the store; a record naming a
//!   missing blob is a miss and is removed.
//! - Source vertices (images, downloads) are resolved on every build and never recorded: their
//!   identity (a manifest digest, a layer) is what keys downstream; scratch and the context need
//!   no work at all.

pub mod key;
pub mod listing;
pub mod records;
pub mod remote;
pub mod result;
pub mod scheduler;
#[cfg(test)]
mod test_support;

pub use key::{
    CacheKey, Change, ChangeDetail, KeyComponent, KeyExplanation, KeySources,
    looks_like_a_credential,
};
pub use listing::{ContextListing, FileChanges, ListedEntry, ListedKind, PathSample};
pub use records::{
    Found, Lookup, MissReason, Position, Record, RecordError, RecordProblem, RecordStore,
    record_references,
};
pub use remote::{ExportMode, RemoteError, RemoteRecords, cache_content, exported_steps};
pub use result::{Filesystem, ImageOrigin, LayerRef, Solved, SolvedInput};
pub use scheduler::{
    Cancel, ContextSelection, ExecError, Executor, Job, ListContext, OutputStream, ProgressEvent,
    Solution, SolveError, SolveOptions, SolvedVertex, Solver, VertexError,
};

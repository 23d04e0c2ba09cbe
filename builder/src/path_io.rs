//! The one I/O error shape of the builder's file code: what was being done, to which path.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}", path = path.display())]
pub struct PathIoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    pub fn new(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        PathIoError {
            op,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// For `map_err`: `fs::read(p).map_err(io_error("read", p))?`.
pub fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PathIoError + 'a {
    move |source| PathIoError::new(op, path, source)
}

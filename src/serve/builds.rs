//! The build API of `imgb serve` (owned by serve-builds; this is the placeholder the server
//! skeleton mounts until it lands).
//!
//! The contract with `super` (mod.rs):
//! - [`BuildsArgs`] is flattened into `imgb serve`'s flags;
//! - [`BuildService::new`] is called once at startup with the server's store, without a lease
//!   (a build takes its own, so prune can collect what finished builds no longer hold);
//! - [`router`] is nested at `/v1/builds` and [`metrics_router`] merged at the root, both behind
//!   the auth layer (handlers demand scopes with `super::auth::{RequireRead, RequireWrite}`);
//! - on SIGTERM/SIGINT the server stops accepting, then awaits [`BuildService::drain`] with
//!   `--shutdown-grace` before closing connections.

use axum::Router;
use imgb_cache::Store;
use std::sync::Arc;
use std::time::Duration;

/// The build service's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildsArgs {}

/// Runs and tracks builds.
#[derive(Debug)]
pub struct BuildService {}

impl BuildService {
    pub fn new(_store: Store, _args: &BuildsArgs) -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Lets running builds finish for up to `grace`, then cancels the rest and waits for them
    /// to stop.
    pub async fn drain(&self, _grace: Duration) {}
}

/// `/v1/builds` routes.
pub fn router(_service: Arc<BuildService>) -> Router {
    Router::new()
}

/// `/metrics`.
pub fn metrics_router(_service: Arc<BuildService>) -> Router {
    Router::new()
}

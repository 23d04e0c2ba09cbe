//! Subcommands that work on the state directory, one module per group.

pub mod build;
pub mod cache_opts;
pub mod images;
pub mod progress;
pub mod prune;
pub mod registry;
pub mod remote;
pub mod run;

use anyhow::{Context, Result};
use imgb_cache::{RootEnv, Store};
use std::path::PathBuf;

/// Opens the state directory `--root` (or the default) selects.
pub(crate) fn open_store(root: Option<PathBuf>) -> Result<Store> {
    let root = RootEnv::from_process(root).resolve()?;
    Store::open(&root).with_context(|| format!("opening the state directory {}", root.display()))
}

/// Opens the state directory with a lease for `purpose`: what the command uses or writes (and
/// its entries in `tmp/`) is safe from a concurrent `imgb prune` until it exits.
pub(crate) fn open_leased_store(root: Option<PathBuf>, purpose: &str) -> Result<Store> {
    let store = open_store(root)?;
    store
        .leased(purpose)
        .with_context(|| format!("taking a lease on {}", store.root().display()))
}

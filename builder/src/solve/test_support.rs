//! Builders shared by the solver's tests.

use imgb_cache::oci::{Descriptor, media_type};
use imgb_cache::{Digest, Store};

use crate::graph::{ExecOp, FileAction, Network, Op, Security};
use crate::solve::result::LayerRef;

/// `sh -c COMMAND` with `env` (`KEY=value` entries).
pub fn exec(command: &str, env: &[&str]) -> Op {
    Op::Exec(ExecOp {
        argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
        env: env.iter().map(|entry| entry.to_string()).collect(),
        cwd: "/".into(),
        user: String::new(),
        network: Network::Default,
        security: Security::Sandbox,
        mounts: Vec::new(),
        inline_files: Vec::new(),
    })
}

/// `COPY <sources> <dest>` from input 1.
pub fn copy(sources: &[&str], dest: &str) -> Op {
    Op::File {
        actions: vec![FileAction::Copy {
            input: 1,
            sources: sources.iter().map(|source| source.to_string()).collect(),
            dest: dest.into(),
            owner: None,
            mode: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            unpack_archives: false,
        }],
    }
}

/// An uncompressed layer whose tar is `content` (not stored).
pub fn layer(content: &str) -> LayerRef {
    let digest = Digest::of(content.as_bytes());
    LayerRef {
        diff_id: digest.clone(),
        blob: Descriptor::new(media_type::OCI_LAYER, digest, content.len() as u64),
    }
}

/// Like [`layer`], with the blob written to `store`.
pub fn stored_layer(store: &Store, content: &str) -> LayerRef {
    let blob = store
        .write_blob(content.as_bytes())
        .expect("write test blob");
    LayerRef {
        diff_id: blob.digest.clone(),
        blob: Descriptor::new(media_type::OCI_LAYER, blob.digest, blob.size),
    }
}

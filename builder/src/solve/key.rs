//! Cache keys: what a step's result depends on, reduced to one digest.
//!
//! `key(v) = sha256(JSON of [KEY_VERSION, components])`, where the components are labelled
//! values, in this order:
//!
//! 1. `instruction` — the vertex's definition digest: its op in canonical form. For an exec step
//!    that is the argv (after the SHELL is prepended), the environment the step sees (which is
//!    where the build args it uses appear — unused ones never reach the op), the working
//!    directory, user, network mode, mounts (secrets and SSH agents by id only, never a value)
//!    and heredoc scripts; for a file operation its actions (sources, destination, ownership,
//!    mode, flags); for an image its reference and platform.
//! 2. `input N layers` / `input N image` — for each input N (in the op's order) the *content*
//!    identity of what it produced: the digest of its diffID chain, or, for an image source, the
//!    manifest digest. Never the producing vertex's own key: a step that reruns and produces the
//!    same layers leaves its dependents' keys unchanged (early cut-off). The build context as an
//!    input contributes no component of its own: see the next item. A `COPY --link` step leaves
//!    out its base (input 0): its layer is made on scratch and rebased onto whatever base it
//!    is used with (see `Op::is_linked_copy`).
//! 3. `context files` — the digest of the files the vertex selects from the build context
//!    (paths, contents, modes, ownership), supplied by the context module. A change to a file
//!    the step does not select does not reach the key.
//! 4. `setting NAME` — build-wide settings that change what steps produce (for example
//!    `SOURCE_DATE_EPOCH`, which clamps file times in layers), sorted by name.
//!
//! Nothing else enters a key: not the vertex's name, not `--no-cache`, not the time, not how an
//! input's layers happen to be compressed, not the value of any secret. [`KEY_VERSION`] is
//! bumped whenever what a step produces for the same components changes (a new layer format,
//! different executor semantics), which retires every older record at once.
//!
//! The key is computed *from* its [`KeyExplanation`], so the two can never disagree. The
//! explanation also carries the instruction's parts (command, each env variable, each mount,
//! each file action) as digests — never values, which may hold build-arg secrets — so that a
//! miss can say which part of an instruction changed.

use std::collections::BTreeMap;
use std::fmt;

use imgb_cache::Digest;
use serde::{Deserialize, Serialize};

use crate::graph::{ExecOp, FileAction, Op};
use crate::solve::result::{Solved, SolvedInput};

/// Bumped when equal components may no longer give equal results.
pub const KEY_VERSION: u32 = 1;

/// The label of the definition digest.
pub const INSTRUCTION: &str = "instruction";
/// The label of the context selection digest.
pub const CONTEXT_FILES: &str = "context files";

/// A vertex's cache key: `sha256:<hex>` over its [`KeyExplanation`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(Digest);

impl CacheKey {
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl From<Digest> for CacheKey {
    fn from(digest: Digest) -> Self {
        CacheKey(digest)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

/// One labelled value: a digest for anything derived from the op or the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyComponent {
    pub label: String,
    pub value: String,
}

impl KeyComponent {
    fn new(label: impl Into<String>, value: impl Into<String>) -> Self {
        KeyComponent {
            label: label.into(),
            value: value.into(),
        }
    }

    /// A component whose value is the digest of `part`'s canonical JSON.
    fn digest_of(label: impl Into<String>, part: &impl Serialize) -> Self {
        // The op types are plain structs, enums, strings and numbers: serializing cannot fail.
        let bytes = serde_json::to_vec(part).unwrap_or_default();
        KeyComponent::new(label, Digest::of(&bytes).to_string())
    }
}

/// Everything a key is computed from.
#[derive(Debug, Clone, Copy)]
pub struct KeySources<'a> {
    /// [`BuildGraph::definition_digest`](crate::graph::BuildGraph::definition_digest).
    pub definition: &'a Digest,
    pub op: &'a Op,
    pub inputs: &'a [SolvedInput],
    /// The digest of the context files the vertex selects, when it reads the context.
    pub context_files: Option<&'a Digest>,
    pub settings: &'a BTreeMap<String, String>,
}

/// The labelled components a key is computed from, kept with each record so a later miss can
/// name what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExplanation {
    pub version: u32,
    /// Hashed into the key, in order.
    pub components: Vec<KeyComponent>,
    /// The parts of the instruction, for pinpointing a change; the `instruction` component
    /// already covers them.
    pub instruction_parts: Vec<KeyComponent>,
}

/// One component that differs from the last record of the same step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub component: String,
    /// For `instruction`: the parts that differ (`command`, `env NAME`, `mount /target`, ...).
    pub parts: Vec<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} changed", self.component)?;
        if !self.parts.is_empty() {
            write!(f, " ({})", self.parts.join(", "))?;
        }
        Ok(())
    }
}

impl KeyExplanation {
    pub fn derive(sources: KeySources<'_>) -> Self {
        let mut components = vec![KeyComponent::new(INSTRUCTION, sources.definition.as_str())];
        // A linked copy's layer does not depend on its base (input 0).
        let skipped = usize::from(sources.op.is_linked_copy());
        for (position, input) in sources.inputs.iter().enumerate().skip(skipped) {
            components.extend(input_identity(position, &input.result));
        }
        if let Some(selection) = sources.context_files {
            components.push(KeyComponent::new(CONTEXT_FILES, selection.as_str()));
        }
        for (name, value) in sources.settings {
            components.push(KeyComponent::new(format!("setting {name}"), value.as_str()));
        }
        KeyExplanation {
            version: KEY_VERSION,
            components,
            instruction_parts: instruction_parts(sources.op),
        }
    }

    pub fn key(&self) -> CacheKey {
        let hashed = (self.version, &self.components);
        // Integers and strings only: serializing cannot fail.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        CacheKey(Digest::of(&bytes))
    }

    /// The components that differ from `earlier` (an explanation of the same step in an
    /// earlier build), in this explanation's order; those only `earlier` had come last.
    pub fn changes_from(&self, earlier: &KeyExplanation) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.version != earlier.version {
            changes.push(Change {
                component: "cache key version".to_string(),
                parts: Vec::new(),
            });
        }
        for component in differing_labels(&self.components, &earlier.components) {
            let parts = if component == INSTRUCTION {
                differing_labels(&self.instruction_parts, &earlier.instruction_parts)
            } else {
                Vec::new()
            };
            changes.push(Change { component, parts });
        }
        changes
    }
}

/// The content identity of input `position`; none for the context, whose files enter the key
/// as the vertex's selection.
fn input_identity(position: usize, result: &Solved) -> Option<KeyComponent> {
    let filesystem = result.filesystem()?;
    Some(match &filesystem.image {
        Some(origin) => {
            KeyComponent::new(format!("input {position} image"), origin.manifest.as_str())
        }
        None => {
            // diffIDs have a fixed format, so joining them with newlines is unambiguous.
            let chain: Vec<&str> = filesystem.diff_ids().map(Digest::as_str).collect();
            KeyComponent::new(
                format!("input {position} layers"),
                Digest::of(chain.join("\n").as_bytes()).to_string(),
            )
        }
    })
}

fn instruction_parts(op: &Op) -> Vec<KeyComponent> {
    match op {
        Op::Exec(exec) => exec_parts(exec),
        Op::File { actions } => actions
            .iter()
            .map(|action| KeyComponent::digest_of(file_action_label(action), action))
            .collect(),
        // A source's definition is a reference (and platform) or nothing: one part already.
        Op::Scratch | Op::Image { .. } | Op::Context | Op::Http(_) => Vec::new(),
    }
}

fn exec_parts(exec: &ExecOp) -> Vec<KeyComponent> {
    let mut parts = vec![KeyComponent::digest_of("command", &exec.argv)];
    for variable in &exec.env {
        let (name, value) = variable.split_once('=').unwrap_or((variable, ""));
        parts.push(KeyComponent::digest_of(format!("env {name}"), &value));
    }
    parts.push(KeyComponent::digest_of("working directory", &exec.cwd));
    parts.push(KeyComponent::digest_of("user", &exec.user));
    parts.push(KeyComponent::digest_of("network", &exec.network));
    for mount in &exec.mounts {
        parts.push(KeyComponent::digest_of(
            format!("mount {}", mount.target()),
            mount,
        ));
    }
    if !exec.inline_files.is_empty() {
        parts.push(KeyComponent::digest_of("heredoc files", &exec.inline_files));
    }
    parts
}

fn file_action_label(action: &FileAction) -> String {
    match action {
        FileAction::Copy { dest, .. } => format!("copy to {dest}"),
        FileAction::Write { path, .. } => format!("write {path}"),
        FileAction::Mkdir { path, .. } => format!("mkdir {path}"),
    }
}

/// Labels whose values differ between `current` and `earlier` (a label may repeat; its values
/// are compared as a list), `current`'s order first.
fn differing_labels(current: &[KeyComponent], earlier: &[KeyComponent]) -> Vec<String> {
    let values = |components: &[KeyComponent], label: &str| -> Vec<String> {
        components
            .iter()
            .filter(|component| component.label == label)
            .map(|component| component.value.clone())
            .collect()
    };
    let mut labels: Vec<&str> = Vec::new();
    for component in current.iter().chain(earlier) {
        if !labels.contains(&component.label.as_str()) {
            labels.push(&component.label);
        }
    }
    labels
        .into_iter()
        .filter(|label| values(current, label) != values(earlier, label))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;

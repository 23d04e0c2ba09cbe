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
//! each file action) as digests, and the names of the steps its inputs come from, so that a miss
//! can say which part of an instruction or which upstream step changed. Values are kept beside
//! the digests only where they may be shown: image digests, settings, and env values whose
//! names do not look like credentials ([`looks_like_a_credential`]) — an env value may be a
//! build arg holding a secret.

use std::collections::BTreeMap;
use std::fmt;

use imgb_cache::Digest;
use serde::{Deserialize, Serialize};

use crate::graph::{ExecOp, FileAction, Op, Security};
use crate::solve::listing::FileChanges;
use crate::solve::result::{Solved, SolvedInput};

/// Bumped when equal components may no longer give equal results.
pub const KEY_VERSION: u32 = 2;

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
    /// What a change of this component may show of it; none where the value could be a secret
    /// or means nothing to people. Never hashed into the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<String>,
}

/// What of a [`KeyComponent`] enters the key (the same JSON as before `shown` existed, so keys
/// did not change with it).
#[derive(Serialize)]
struct HashedComponent<'a> {
    label: &'a str,
    value: &'a str,
}

impl KeyComponent {
    fn new(label: impl Into<String>, value: impl Into<String>) -> Self {
        KeyComponent {
            label: label.into(),
            value: value.into(),
            shown: None,
        }
    }

    /// A component whose value may be shown as it is.
    fn shown(label: impl Into<String>, value: impl Into<String>) -> Self {
        let value = value.into();
        KeyComponent {
            shown: Some(value.clone()),
            ..KeyComponent::new(label, value)
        }
    }

    /// A component whose value is the digest of `part`'s canonical JSON.
    fn digest_of(label: impl Into<String>, part: &impl Serialize) -> Self {
        // The op types are plain structs, enums, strings and numbers: serializing cannot fail.
        let bytes = serde_json::to_vec(part).unwrap_or_default();
        KeyComponent::new(label, Digest::of(&bytes).to_string())
    }
}

/// Whether an env variable or build arg named `name` looks like it holds a credential
/// (BuildKit's `SecretsUsedInArgOrEnv` patterns): its value is then never kept or shown.
pub fn looks_like_a_credential(name: &str) -> bool {
    const SENSITIVE: [&str; 10] = [
        "APIKEY",
        "AUTH",
        "CREDENTIAL",
        "CREDENTIALS",
        "KEY",
        "PASSWORD",
        "PASSWD",
        "PWD",
        "SECRET",
        "TOKEN",
    ];
    const ALLOWED: [&str; 1] = ["PUBLIC"];
    let upper = name.to_uppercase();
    let words: Vec<&str> = upper.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    words.iter().any(|word| SENSITIVE.contains(word))
        && !words.iter().any(|word| ALLOWED.contains(word))
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
    /// The names of the steps the inputs come from, in input order.
    pub input_names: &'a [String],
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
    /// The names of the steps the inputs came from, in input order (not hashed).
    #[serde(default)]
    pub input_names: Vec<String>,
}

/// One component (or part of the instruction) that differs from the last record of the same
/// step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The label: `instruction`, `input N layers`, `input N image`, `context files`,
    /// `setting NAME`; for a part of the instruction `command`, `env NAME`, `mount /target`, ...
    pub component: String,
    /// For `instruction`: the parts that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Change>,
    /// What changed, where more can be said than the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<ChangeDetail>,
}

/// What is known about a change beyond its label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeDetail {
    /// The value before and after, where it may be shown; `None` where it was not set.
    Values {
        from: Option<String>,
        to: Option<String>,
    },
    /// An input whose layers differ: the step that produced it, by its current name.
    Upstream { step: String },
    /// The context selection digests, before the scheduler compares their listings.
    Selection { from: String, to: String },
    /// The context files that differ (see [`ContextListing::changes_from`]).
    ///
    /// [`ContextListing::changes_from`]: crate::solve::ContextListing::changes_from
    Files(FileChanges),
}

impl Change {
    fn new(component: impl Into<String>) -> Self {
        Change {
            component: component.into(),
            parts: Vec::new(),
            detail: None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|label| label.to_string()))
    }
}

impl Change {
    /// The change in words, with `term` naming labels (say, `env NAME` as `build arg NAME`).
    pub fn describe(&self, term: &dyn Fn(&str) -> String) -> String {
        let name = term(&self.component);
        match &self.detail {
            Some(ChangeDetail::Values { from, to }) => {
                format!("{name} changed: {}", from_to(from, to))
            }
            Some(ChangeDetail::Upstream { step }) => {
                format!("{name} changed: `{step}` produced different files")
            }
            Some(ChangeDetail::Files(files)) => format!("{name} changed: {files}"),
            Some(ChangeDetail::Selection { .. }) | None if self.parts.is_empty() => {
                format!("{name} changed")
            }
            Some(ChangeDetail::Selection { .. }) | None => {
                let parts: Vec<String> = self
                    .parts
                    .iter()
                    .map(|part| match &part.detail {
                        Some(ChangeDetail::Values { from, to }) => {
                            format!("{}: {}", term(&part.component), from_to(from, to))
                        }
                        _ => term(&part.component),
                    })
                    .collect();
                format!("{name} changed ({})", parts.join(", "))
            }
        }
    }
}

/// Values longer than this many characters (a digest is 71) are cut with `…` in words; the
/// data keeps them whole.
const SHOWN_CHARS: usize = 80;

fn from_to(from: &Option<String>, to: &Option<String>) -> String {
    let shown = |value: &Option<String>| match value.as_deref() {
        None => "unset".to_string(),
        Some(text) if text.chars().count() > SHOWN_CHARS => {
            let cut: String = text.chars().take(SHOWN_CHARS - 1).collect();
            format!("{cut}…")
        }
        Some(text) => text.to_string(),
    };
    format!("{} → {}", shown(from), shown(to))
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
            components.push(KeyComponent::shown(
                format!("setting {name}"),
                value.as_str(),
            ));
        }
        KeyExplanation {
            version: KEY_VERSION,
            components,
            instruction_parts: instruction_parts(sources.op),
            input_names: sources.input_names.to_vec(),
        }
    }

    pub fn key(&self) -> CacheKey {
        let components: Vec<HashedComponent<'_>> = self
            .components
            .iter()
            .map(|component| HashedComponent {
                label: &component.label,
                value: &component.value,
            })
            .collect();
        let hashed = (self.version, components);
        // Integers and strings only: serializing cannot fail.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        CacheKey(Digest::of(&bytes))
    }

    /// The components that differ from `earlier` (an explanation of the same step in an
    /// earlier build), in this explanation's order; those only `earlier` had come last.
    pub fn changes_from(&self, earlier: &KeyExplanation) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.version != earlier.version {
            changes.push(Change::new("cache key version"));
        }
        for mut change in differing(&self.components, &earlier.components) {
            if change.component == INSTRUCTION {
                change.parts = differing(&self.instruction_parts, &earlier.instruction_parts);
            } else if change.component == CONTEXT_FILES {
                let value = |components: &[KeyComponent]| {
                    components
                        .iter()
                        .find(|component| component.label == CONTEXT_FILES)
                        .map(|component| component.value.clone())
                };
                if let (Some(from), Some(to)) =
                    (value(&earlier.components), value(&self.components))
                {
                    change.detail = Some(ChangeDetail::Selection { from, to });
                }
            } else if let Some(step) = input_position(&change.component)
                .filter(|_| change.detail.is_none())
                .and_then(|position| self.input_names.get(position))
            {
                change.detail = Some(ChangeDetail::Upstream { step: step.clone() });
            }
            changes.push(change);
        }
        changes
    }
}

/// `N` of an `input N ...` label.
fn input_position(label: &str) -> Option<usize> {
    label
        .strip_prefix("input ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The content identity of input `position`; none for the context, whose files enter the key
/// as the vertex's selection.
fn input_identity(position: usize, result: &Solved) -> Option<KeyComponent> {
    let filesystem = result.filesystem()?;
    Some(match &filesystem.image {
        Some(origin) => {
            KeyComponent::shown(format!("input {position} image"), origin.manifest.as_str())
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
        let mut part = KeyComponent::digest_of(format!("env {name}"), &value);
        if !looks_like_a_credential(name) {
            part.shown = Some(value.to_string());
        }
        parts.push(part);
    }
    parts.push(KeyComponent::digest_of("working directory", &exec.cwd));
    parts.push(KeyComponent::digest_of("user", &exec.user));
    parts.push(KeyComponent::digest_of("network", &exec.network));
    if exec.security == Security::Insecure {
        parts.push(KeyComponent::digest_of("security", &exec.security));
    }
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

/// The labels whose values differ between `current` and `earlier` (a label may repeat; its
/// values are compared as a list), `current`'s order first, with both values where every one
/// of them may be shown.
fn differing(current: &[KeyComponent], earlier: &[KeyComponent]) -> Vec<Change> {
    let with_label = |components: &'_ [KeyComponent], label: &str| -> Vec<KeyComponent> {
        components
            .iter()
            .filter(|component| component.label == label)
            .cloned()
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
        .filter_map(|label| {
            let now = with_label(current, label);
            let before = with_label(earlier, label);
            let values = |components: &[KeyComponent]| -> Vec<String> {
                components.iter().map(|c| c.value.clone()).collect()
            };
            if values(&now) == values(&before) {
                return None;
            }
            let mut change = Change::new(label);
            change.detail = shown_values(&before, &now);
            Some(change)
        })
        .collect()
}

/// `from → to` of a single-valued label, when each side is either absent or may be shown.
fn shown_values(before: &[KeyComponent], now: &[KeyComponent]) -> Option<ChangeDetail> {
    let side = |components: &[KeyComponent]| -> Option<Option<String>> {
        match components {
            [] => Some(None),
            [single] => single.shown.clone().map(Some),
            _ => None,
        }
    };
    Some(ChangeDetail::Values {
        from: side(before)?,
        to: side(now)?,
    })
}

#[cfg(test)]
mod tests;

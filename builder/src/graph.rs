//! The build graph: the builder's IR. Vertices are operations (image and context sources, exec
//! steps, file operations), edges are the inputs they read. It knows nothing of Dockerfiles; the
//! frontend is one producer of graphs.
//!
//! Invariants:
//! - A vertex's inputs are added before it, so vertex indices are a topological order.
//! - Adding a vertex identical to an existing one (same op, same inputs) returns the existing
//!   one: identical work in different stages is solved once.
//! - Every op serializes canonically (no maps with random order, no addresses, no timestamps), so
//!   its definition digest is stable across runs and machines.

use imgb_cache::Digest;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::HashMap;

/// A vertex in a [`BuildGraph`].
pub type VertexId = NodeIndex;

/// Network access of an exec step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// The builder's default (documented by the runner).
    Default,
    None,
    Host,
}

/// The sandbox of an exec step (`RUN --security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    Sandbox,
    /// `--security=insecure`: needs the `security.insecure` entitlement where entitlements
    /// are checked (the build service). The runner has no privileged mode, so such a step
    /// runs sandboxed like the others.
    Insecure,
}

impl Security {
    fn is_sandbox(&self) -> bool {
        *self == Security::Sandbox
    }
}

/// `uid:gid` for files a step creates or copies; names are resolved by the frontend or, when
/// they need the image's `/etc/passwd`, at solve time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub user: String,
    pub group: Option<String>,
}

impl Owner {
    /// A user or group as BuildKit's LLB reads a `--chown` part: a number, or `root` (0);
    /// anything else is a name to look up in the base's `/etc/passwd` or `/etc/group`.
    pub fn numeric_id(part: &str) -> Option<u32> {
        match part {
            "root" => Some(0),
            _ => part.parse().ok(),
        }
    }

    /// Whether no part needs a lookup in the base.
    pub fn is_numeric(&self) -> bool {
        Self::numeric_id(&self.user).is_some()
            && self
                .group
                .as_deref()
                .is_none_or(|group| Self::numeric_id(group).is_some())
    }
}

/// A mount of an exec step besides its root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecMount {
    /// A read-only (or read-write with changes discarded) view of an input's `source` path.
    Bind {
        target: String,
        input: usize,
        source: String,
        readonly: bool,
    },
    /// A persistent directory shared between builds. Two mounts share it when they agree on
    /// `id`, on the owner and mode it is created with and, with `from`, on what seeds it (as
    /// BuildKit keys cache refs by id and base); its contents never enter a key or a layer.
    Cache {
        target: String,
        id: String,
        sharing: CacheSharing,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
        /// `from=`: a new cache starts as a copy of input `from`'s `source` path.
        from: Option<usize>,
        source: String,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A secret by id: its value is never part of the graph, a cache key or a layer. An empty
    /// `target` (the `env=` form without `target=`) mounts no file.
    Secret {
        target: String,
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
        env: Option<String>,
    },
    /// An SSH agent socket forwarded by id, at `target` (a socket owned by `uid:gid`, `mode`).
    Ssh {
        target: String,
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl ExecMount {
    /// Where the mount appears in the container (empty for a secret only in the environment).
    pub fn target(&self) -> &str {
        let (ExecMount::Bind { target, .. }
        | ExecMount::Cache { target, .. }
        | ExecMount::Tmpfs { target, .. }
        | ExecMount::Secret { target, .. }
        | ExecMount::Ssh { target, .. }) = self;
        target
    }
}

/// How concurrent steps use one cache mount (`sharing=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A command run in a container over input 0 (the root filesystem); its changes become a layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ExecOp {
    pub argv: Vec<String>,
    /// `KEY=value`, in order.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]`, resolved against the root filesystem's passwd/group; empty means root.
    pub user: String,
    pub network: Network,
    /// Left out of the definition when sandboxed, so the cache keys of ordinary steps stay
    /// what they were before it was recorded.
    #[serde(skip_serializing_if = "Security::is_sandbox")]
    pub security: Security,
    pub mounts: Vec<ExecMount>,
    /// Files written before the command runs and removed after (heredoc scripts), path → data.
    pub inline_files: Vec<(String, String)>,
}

/// One change a file operation makes to its base (input 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FileAction {
    /// Copy `sources` (paths or wildcards, relative to input `input`'s root or, for the
    /// context, to the context) to `dest` (absolute, resolved inside the base's root).
    Copy {
        input: usize,
        sources: Vec<String>,
        dest: String,
        owner: Option<Owner>,
        /// Octal mode, or a symbolic mode applied per file.
        mode: Option<String>,
        /// `COPY --link`: the layer does not depend on the base's contents.
        link: bool,
        /// `COPY --parents`: keep the sources' directory structure.
        parents: bool,
        exclude: Vec<String>,
        /// ADD: extract local archives.
        unpack_archives: bool,
    },
    /// Write a file with the given contents (heredoc sources).
    Write {
        path: String,
        data: String,
        mode: u32,
        owner: Option<Owner>,
    },
    /// Create a directory and its parents (WORKDIR).
    Mkdir {
        path: String,
        mode: u32,
        owner: Option<Owner>,
    },
}

/// A remote file (ADD of a URL), checked against `checksum` when given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HttpSource {
    pub url: String,
    pub checksum: Option<String>,
    pub filename: String,
}

/// What a vertex does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The empty filesystem.
    Scratch,
    /// An image by reference, for a platform (`linux/amd64`); resolved to a manifest digest at
    /// solve time.
    Image {
        reference: String,
        platform: String,
    },
    /// The local build context.
    Context,
    Http(HttpSource),
    Exec(ExecOp),
    File {
        actions: Vec<FileAction>,
    },
}

impl Op {
    /// A file op made only of `COPY --link` actions whose owners are numeric: its layer is
    /// made on scratch and does not depend on its base (input 0), which the cache key leaves
    /// out and a cached result is rebased onto. As in BuildKit, where `--link` becomes a merge
    /// only without `--chmod`, a `--chmod` copy stays an ordinary one; so does a named
    /// `--chown`, which reads the base's `/etc/passwd` (BuildKit's merge path cannot resolve
    /// names and fails with "invalid user index: -1"; its classic worker copies onto the base,
    /// which is what imgb does).
    pub fn is_linked_copy(&self) -> bool {
        match self {
            Op::File { actions } => {
                !actions.is_empty()
                    && actions.iter().all(|action| {
                        matches!(action, FileAction::Copy { link: true, owner, mode: None, .. }
                            if owner.as_ref().is_none_or(Owner::is_numeric))
                    })
            }
            _ => false,
        }
    }
}

/// A vertex: an op, its inputs, and the label progress output shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    pub op: Op,
    pub inputs: Vec<VertexId>,
    /// `[stage 2/4] RUN make` — for people, not part of the cache key.
    pub name: String,
    /// `--no-cache` / `--no-cache-filter`: never reuse a cached result for this vertex.
    pub ignore_cache: bool,
}

/// The graph a build solves.
#[derive(Debug, Default)]
pub struct BuildGraph {
    graph: DiGraph<Vertex, usize>,
    by_definition: HashMap<(Op, Vec<VertexId>), VertexId>,
}

impl BuildGraph {
    pub fn new() -> Self {
        BuildGraph::default()
    }

    /// Adds a vertex (or returns the identical one already present). Inputs must exist.
    pub fn add(&mut self, op: Op, inputs: Vec<VertexId>, name: impl Into<String>) -> VertexId {
        let definition = (op, inputs);
        if let Some(&existing) = self.by_definition.get(&definition) {
            return existing;
        }
        let (op, inputs) = definition.clone();
        let id = self.graph.add_node(Vertex {
            op,
            inputs: inputs.clone(),
            name: name.into(),
            ignore_cache: false,
        });
        for (position, input) in inputs.iter().enumerate() {
            self.graph.add_edge(*input, id, position);
        }
        self.by_definition.insert(definition, id);
        id
    }

    /// Marks a vertex as never served from the cache.
    pub fn ignore_cache(&mut self, id: VertexId) {
        self.graph[id].ignore_cache = true;
    }

    pub fn vertex(&self, id: VertexId) -> &Vertex {
        &self.graph[id]
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Every vertex, inputs before the vertices that read them.
    pub fn vertices(&self) -> impl Iterator<Item = (VertexId, &Vertex)> {
        self.graph.node_indices().map(|id| (id, &self.graph[id]))
    }

    /// The vertices that read `id`.
    pub fn dependents(&self, id: VertexId) -> impl Iterator<Item = VertexId> + '_ {
        self.graph.neighbors_directed(id, Direction::Outgoing)
    }

    /// The vertices `roots` need (themselves included), in topological order: what a build of
    /// those roots must solve, and nothing more.
    pub fn needed_by(&self, roots: &[VertexId]) -> Vec<VertexId> {
        let mut needed = vec![false; self.graph.node_count()];
        let mut pending: Vec<VertexId> = roots.to_vec();
        while let Some(id) = pending.pop() {
            if !std::mem::replace(&mut needed[id.index()], true) {
                pending.extend(self.graph[id].inputs.iter().copied());
            }
        }
        self.graph
            .node_indices()
            .filter(|id| needed[id.index()])
            .collect()
    }

    /// The digest of a vertex's definition: its op, canonically serialized. Inputs enter the
    /// cache key separately (see `key`), as the content of what they produced.
    pub fn definition_digest(&self, id: VertexId) -> Digest {
        let bytes = serde_json::to_vec(&self.graph[id].op).unwrap_or_default();
        Digest::of(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(command: &str) -> Op {
        Op::Exec(ExecOp {
            argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            network: Network::Default,
            security: Security::Sandbox,
            mounts: Vec::new(),
            inline_files: Vec::new(),
        })
    }

    #[test]
    fn identical_vertices_are_added_once() {
        let mut graph = BuildGraph::new();
        let base = graph.add(Op::Scratch, vec![], "scratch");
        let first = graph.add(exec("make"), vec![base], "[a 1/1] RUN make");
        let second = graph.add(exec("make"), vec![base], "[b 1/1] RUN make");
        assert_eq!(first, second);
        assert_eq!(graph.len(), 2);
    }

    #[test]
    fn same_op_on_different_inputs_is_different_work() {
        let mut graph = BuildGraph::new();
        let scratch = graph.add(Op::Scratch, vec![], "scratch");
        let image = graph.add(
            Op::Image {
                reference: "busybox".into(),
                platform: "linux/amd64".into(),
            },
            vec![],
            "busybox",
        );
        assert_ne!(
            graph.add(exec("make"), vec![scratch], "a"),
            graph.add(exec("make"), vec![image], "b")
        );
    }

    #[test]
    fn needed_by_prunes_unreachable_vertices_and_keeps_topological_order() {
        let mut graph = BuildGraph::new();
        let base = graph.add(Op::Scratch, vec![], "scratch");
        let unused = graph.add(exec("unused"), vec![base], "unused");
        let context = graph.add(Op::Context, vec![], "context");
        let copy = graph.add(
            Op::File {
                actions: vec![FileAction::Copy {
                    input: 1,
                    sources: vec![".".into()],
                    dest: "/".into(),
                    owner: None,
                    mode: None,
                    link: false,
                    parents: false,
                    exclude: vec![],
                    unpack_archives: false,
                }],
            },
            vec![base, context],
            "COPY . /",
        );
        let needed = graph.needed_by(&[copy]);
        assert_eq!(needed, vec![base, context, copy]);
        assert!(!needed.contains(&unused));
        assert_eq!(graph.dependents(base).count(), 2);
    }

    #[test]
    fn definition_digest_ignores_names_and_is_stable() {
        let mut graph = BuildGraph::new();
        let base = graph.add(Op::Scratch, vec![], "scratch");
        let run = graph.add(exec("make"), vec![base], "one name");
        let mut other = BuildGraph::new();
        let other_base = other.add(Op::Scratch, vec![], "another");
        let other_run = other.add(exec("make"), vec![other_base], "another name");
        assert_eq!(
            graph.definition_digest(run),
            other.definition_digest(other_run)
        );
        assert_ne!(graph.definition_digest(run), graph.definition_digest(base));
    }
}

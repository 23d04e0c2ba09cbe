//! RUN mounts made real for one step, as BuildKit's `solver/llbsolver/mounts` does: bind
//! mounts of the context or another filesystem, tmpfs, persistent cache directories, secret
//! files, SSH agent sockets, and the heredoc scripts a step runs.
//!
//! Invariants:
//! - Everything a step's mounts hold on the host lives in one [`StepMounts`]: secret files and
//!   agent sockets in a private temp dir, cache locks, agent proxies. Dropping it when the step
//!   ends, however it ends, removes the files, releases the locks and stops the proxies.
//! - A cache instance (`mounts/<key>/<n>/`) is created whole, in `tmp/` with its owner, mode
//!   and seed, then renamed into place under a creation lock: no step mounts a half-made cache.
//! - Cache sharing holds across imgb processes (`flock`): `shared` users hold a shared lock on
//!   instance 0, `locked` an exclusive one (waiting for every other user), `private` the first
//!   instance nobody holds, creating a new one when all are busy.
//! - The cache key (`<key>`) is the mount's id, the owner and mode the cache is created with and
//!   what seeds it (as BuildKit keys cache refs by id and base), so two ids never share a cache.
//!   A step locks its caches in key order, each key once, so steps never wait in a cycle.
//! - A new instance of a key that a `--cache-from` cache exported starts as those contents
//!   (see `cache_mounts`); an instance that exists is never replaced by an import.

use super::cache_mounts::{mount_dir, unpack_cache_mount};
use super::{StoreExecutor, failed};
use crate::file_ops::{SourceRoot, apply_file_actions};
use crate::graph::{CacheSharing, ExecMount, ExecOp, FileAction};
use crate::layered::LayeredView;
use crate::solve::{ExecError, Filesystem, Job, Solved};
use imgb_cache::build_cache::CacheLayer;
use imgb_cache::{ApplyLimits, Digest, FileLock, Resource, Store};
use imgb_runner::{Mount, MountKind};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// The host side of a step's mounts; keep it alive while the step runs.
pub(super) struct StepMounts {
    pub mounts: Vec<Mount>,
    /// `NAME=value` of secrets exposed as environment variables.
    pub env: Vec<String>,
    _host_files: tempfile::TempDir,
    _cache_locks: Vec<FileLock>,
    _agents: Vec<AgentForward>,
}

/// What a cache mount needs from the store, owned so it can move to a blocking thread.
struct CacheRequest {
    key: Digest,
    sharing: CacheSharing,
    mode: u32,
    owner: (u32, u32),
    /// A view and the path in it that a new instance starts as a copy of.
    seed: Option<(LayeredView, String)>,
    /// Contents imported with `--cache-from` (their blob stored) that a new instance starts as
    /// instead; preferred to the seed, which they were made from.
    imported: Option<CacheLayer>,
}

impl StoreExecutor {
    /// Prepares every mount of `exec` on the host, in order.
    pub(super) async fn prepare_mounts(
        &self,
        job: &Job,
        exec: &ExecOp,
    ) -> Result<StepMounts, ExecError> {
        let host_files = tempfile::Builder::new()
            .prefix("mounts-")
            .tempdir_in(self.store.tmp_dir())
            .map_err(failed)?;
        let (cache_dirs, cache_locks) = self.acquire_caches(job, exec).await?;
        let mut prepared = StepMounts {
            mounts: Vec::new(),
            env: Vec::new(),
            _host_files: host_files,
            _cache_locks: cache_locks,
            _agents: Vec::new(),
        };
        for (index, mount) in exec.mounts.iter().enumerate() {
            let kind = match mount {
                ExecMount::Tmpfs { size, .. } => MountKind::Tmpfs { size_bytes: *size },
                ExecMount::Bind {
                    input,
                    source,
                    readonly,
                    ..
                } => MountKind::Bind {
                    source: self.bind_source(job, *input, source)?,
                    read_only: *readonly,
                },
                ExecMount::Cache { readonly, .. } => {
                    let dir = cache_dirs.get(&index).cloned().ok_or_else(|| {
                        failed(format!("cache mount {} was not prepared", mount.target()))
                    })?;
                    if *readonly {
                        MountKind::Bind {
                            source: dir,
                            read_only: true,
                        }
                    } else {
                        MountKind::Persistent { source: dir }
                    }
                }
                ExecMount::Secret {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                    env,
                    target,
                } => {
                    let Some(secret) = self.secrets.get(id) else {
                        if *required {
                            return Err(failed(format!(
                                "secret {id} is required but was not given \
                                 (--secret id={id},src=FILE or id={id},env=VAR)"
                            )));
                        }
                        // As BuildKit: an optional secret that was not given is not mounted.
                        continue;
                    };
                    if let Some(name) = env {
                        let name = if name.is_empty() { id } else { name };
                        prepared
                            .env
                            .push(format!("{name}={}", String::from_utf8_lossy(&secret.0)));
                    }
                    if target.is_empty() {
                        continue;
                    }
                    let file = prepared._host_files.path().join(format!("secret-{index}"));
                    fs::write(&file, &secret.0).map_err(failed)?;
                    set_owner_and_mode(&file, (*uid, *gid), *mode)?;
                    MountKind::Bind {
                        source: file,
                        read_only: true,
                    }
                }
                ExecMount::Ssh {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                    ..
                } => {
                    let Some(agent) = self.ssh_agents.get(id) else {
                        if *required {
                            return Err(failed(format!(
                                "ssh agent {id} is required but was not given (--ssh {})",
                                if id == "default" {
                                    "default".to_string()
                                } else {
                                    format!("{id}=SOCKET")
                                }
                            )));
                        }
                        continue;
                    };
                    let socket = prepared._host_files.path().join(format!("ssh-{index}"));
                    prepared._agents.push(AgentForward::start(
                        agent,
                        &socket,
                        (*uid, *gid),
                        *mode,
                    )?);
                    MountKind::Bind {
                        source: socket,
                        read_only: true,
                    }
                }
            };
            prepared.mounts.push(Mount {
                target: mount.target().to_string(),
                kind,
            });
        }
        // Heredoc scripts with a shebang are executables the command names (BuildKit mounts
        // them under /dev/pipes/): private files mounted read-only, never in the layer.
        for (index, (target, data)) in exec.inline_files.iter().enumerate() {
            let file = prepared._host_files.path().join(format!("inline-{index}"));
            fs::write(&file, data).map_err(failed)?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).map_err(failed)?;
            prepared.mounts.push(Mount {
                target: target.clone(),
                kind: MountKind::Bind {
                    source: file,
                    read_only: true,
                },
            });
        }
        Ok(prepared)
    }

    /// Locks and prepares every cache instance `exec` mounts, in key order (so two steps never
    /// wait for each other's locks in a cycle) and each key once (a step mounting one cache
    /// twice must not wait for itself). Returns each cache mount's directory by mount index.
    async fn acquire_caches(
        &self,
        job: &Job,
        exec: &ExecOp,
    ) -> Result<(BTreeMap<usize, PathBuf>, Vec<FileLock>), ExecError> {
        let mut requests: BTreeMap<String, (CacheRequest, Vec<usize>)> = BTreeMap::new();
        for (index, mount) in exec.mounts.iter().enumerate() {
            let ExecMount::Cache {
                id,
                sharing,
                mode,
                uid,
                gid,
                from,
                source,
                ..
            } = mount
            else {
                continue;
            };
            let seed = from
                .map(|input| -> Result<_, ExecError> {
                    let filesystem = StoreExecutor::input_filesystem(&job.inputs, input)?;
                    Ok((filesystem, source.as_str()))
                })
                .transpose()?;
            let key = cache_key(id, *mode, (*uid, *gid), seed);
            if let Some((_, users)) = requests.get_mut(key.hex()) {
                users.push(index);
                continue;
            }
            let request = CacheRequest {
                key: key.clone(),
                sharing: *sharing,
                mode: *mode,
                owner: (*uid, *gid),
                seed: seed
                    .map(|(filesystem, source)| -> Result<_, ExecError> {
                        let view = LayeredView::new(self.snapshots(filesystem)?);
                        Ok((view, source.to_string()))
                    })
                    .transpose()?,
                imported: self.imported_cache_mount(&key).await?,
            };
            requests.insert(key.hex().to_string(), (request, vec![index]));
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut dirs = BTreeMap::new();
            let mut locks = Vec::new();
            for (request, users) in requests.into_values() {
                let (dir, lock) = acquire_cache(&store, request)?;
                locks.push(lock);
                for index in users {
                    dirs.insert(index, dir.clone());
                }
            }
            Ok((dirs, locks))
        })
        .await
        .map_err(failed)?
    }

    /// The `--cache-from` contents of the cache mount `key` when the store has no instance of
    /// it yet (the common case being a fresh CI runner); fetched into the store.
    async fn imported_cache_mount(&self, key: &Digest) -> Result<Option<CacheLayer>, ExecError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        if cache_instance(&mount_dir(&self.store, key), 0).0.is_dir() {
            return Ok(None);
        }
        remote.cache_mount(key).await.map_err(failed)
    }

    /// The host path a bind mount of input `input`'s `source` shows.
    fn bind_source(&self, job: &Job, input: usize, source: &str) -> Result<PathBuf, ExecError> {
        let solved = job
            .inputs
            .get(input)
            .ok_or_else(|| failed(format!("bind mount input {input} missing")))?;
        Ok(match &*solved.result {
            Solved::Context => {
                let context = self
                    .context
                    .as_deref()
                    .ok_or_else(|| failed("the build has no context"))?;
                context.root().join(source.trim_start_matches('/'))
            }
            Solved::Filesystem(filesystem) => {
                let view = LayeredView::new(self.snapshots(filesystem)?);
                view.lookup(source, true)
                    .map_err(failed)?
                    .ok_or_else(|| failed(format!("{source}: not found in the mounted stage")))?
                    .host_path
            }
        })
    }
}

/// The cache's identity: id, creation owner and mode, and the content that seeds it.
pub(super) fn cache_key(
    id: &str,
    mode: u32,
    owner: (u32, u32),
    seed: Option<(&Filesystem, &str)>,
) -> Digest {
    let seed = seed.map(|(filesystem, source)| {
        let chain: Vec<&str> = filesystem.diff_ids().map(Digest::as_str).collect();
        (chain, source)
    });
    // Strings and integers only: serializing cannot fail.
    let bytes = serde_json::to_vec(&(id, mode, owner, seed)).unwrap_or_default();
    Digest::of(&bytes)
}

/// Locks the cache instance `request` may use and makes sure it exists; returns its directory.
fn acquire_cache(store: &Store, request: CacheRequest) -> Result<(PathBuf, FileLock), ExecError> {
    // Named in the build's lease first: `imgb prune --all` leaves a cache in use alone.
    let volume = Resource::CacheMount(request.key.hex().to_owned());
    store.protect(&volume).map_err(failed)?;
    let dir = mount_dir(store, &request.key);
    fs::create_dir_all(&dir).map_err(failed)?;
    let instance = |n: usize| cache_instance(&dir, n);
    let (path, lock) = match request.sharing {
        CacheSharing::Shared => {
            let (path, lock) = instance(0);
            (path, FileLock::shared(&lock).map_err(failed)?)
        }
        CacheSharing::Locked => {
            let (path, lock) = instance(0);
            (path, FileLock::exclusive(&lock).map_err(failed)?)
        }
        CacheSharing::Private => {
            let mut n = 0;
            loop {
                let (path, lock) = instance(n);
                if let Some(lock) = FileLock::try_exclusive(&lock).map_err(failed)? {
                    break (path, lock);
                }
                n += 1;
            }
        }
    };
    if !path.is_dir() {
        let _creating = FileLock::exclusive(&dir.join("create.lock")).map_err(failed)?;
        if !path.is_dir() {
            create_cache(store, &request, &path)?;
        }
    }
    Ok((path, lock))
}

/// Instance `n` of the cache mount whose instances live in `dir`: its directory and lock file.
pub(super) fn cache_instance(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    (dir.join(n.to_string()), dir.join(format!("{n}.lock")))
}

/// Makes a new cache instance at `path`: the imported contents, a copy of the seed, or an empty
/// directory with the requested owner and mode.
fn create_cache(store: &Store, request: &CacheRequest, path: &Path) -> Result<(), ExecError> {
    let fresh = tempfile::Builder::new()
        .prefix("cache-")
        .tempdir_in(store.tmp_dir())
        .map_err(failed)?;
    match (&request.imported, &request.seed) {
        (Some(imported), _) => {
            set_owner_and_mode(fresh.path(), request.owner, request.mode)?;
            unpack_cache_mount(store, imported, fresh.path()).map_err(|error| {
                failed(format!(
                    "filling the cache mount from --cache-from (blob {}): {error}",
                    imported.blob.digest
                ))
            })?;
        }
        (None, Some((view, source))) => {
            let copy = FileAction::Copy {
                input: 1,
                sources: vec![if source.is_empty() {
                    "/".to_string()
                } else {
                    source.clone()
                }],
                dest: "/".to_string(),
                owner: None,
                mode: None,
                link: false,
                parents: false,
                exclude: Vec::new(),
                unpack_archives: false,
            };
            let empty = LayeredView::new(Vec::new());
            let inputs = [None, Some(SourceRoot::View(view.clone()))];
            apply_file_actions(
                &[copy],
                &empty,
                &inputs,
                fresh.path(),
                ApplyLimits::default(),
            )
            .map_err(|error| failed(format!("seeding the cache mount: {error}")))?;
        }
        (None, None) => set_owner_and_mode(fresh.path(), request.owner, request.mode)?,
    }
    fs::rename(fresh.path(), path).map_err(|error| {
        failed(format!(
            "creating the cache mount {}: {error}",
            path.display()
        ))
    })
}

fn set_owner_and_mode(path: &Path, (uid, gid): (u32, u32), mode: u32) -> Result<(), ExecError> {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|errno| failed(format!("chown {}: {errno}", path.display())))?;
    // After chown, which clears setuid/setgid bits.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|error| failed(format!("chmod {}: {error}", path.display())))
}

/// An SSH agent forwarded through a socket of its own, so the container sees the owner and
/// mode the mount asks for whatever the agent's socket and its directory allow. Each client
/// connection is relayed to the agent; dropping the forward stops it and every relay.
struct AgentForward {
    relay: JoinHandle<()>,
}

impl AgentForward {
    fn start(agent: &Path, socket: &Path, owner: (u32, u32), mode: u32) -> Result<Self, ExecError> {
        if !agent.exists() {
            return Err(failed(format!(
                "ssh agent socket {}: not found",
                agent.display()
            )));
        }
        let listener = UnixListener::bind(socket)
            .map_err(|error| failed(format!("ssh agent socket {}: {error}", socket.display())))?;
        set_owner_and_mode(socket, owner, mode)?;
        let agent = agent.to_owned();
        let relay = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let agent = agent.clone();
                connections.spawn(async move {
                    // A failed connection reaches the client as a closed socket, which is what
                    // ssh reports when an agent goes away.
                    if let Ok(mut upstream) = UnixStream::connect(&agent).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(AgentForward { relay })
    }
}

impl Drop for AgentForward {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

//! File operations (COPY, ADD of local files, heredoc writes, WORKDIR) applied into an empty
//! "upper" directory that then becomes the step's layer: only what the step writes, with the
//! parent directories it needs, exactly as BuildKit's file ops produce them.
//!
//! BuildKit's COPY rules: a directory source copies its contents; several sources (or a
//! wildcard) need a destination ending in `/`; a file source lands at the destination, or inside
//! it when the destination ends in `/` or is an existing directory; `--parents` keeps each
//! source's path; files from the build context become `0:0` unless `--chown` says otherwise,
//! files from another stage keep their owners; `--chmod` applies to everything copied.
//!
//! ADD's archives (`unpack_archives`): a source that is a regular file holding a tar, plain or
//! compressed (detected by content, never by name), is extracted into the destination, which is
//! always a directory then (created like `mkdir -p`, new directories owned by `--chown`).
//! Entries keep their own modes and owners (`--chown` overrides the owners; `--chmod` does not
//! apply, as in BuildKit). Extraction is the cache crate's confined applier, run on the upper
//! directory with the base underneath ([`BaseBelow`]), so paths resolve as in the merged root.
//!
//! Invariants:
//! - Destination paths resolve through the base filesystem's symlinks *inside* the base (via
//!   [`LayeredView`]), as a RUN would see them; nothing is ever written outside `upper`.
//! - Sources are read from the context through its hashed selection (so what is copied is what
//!   the cache key covered) or from another stage's view; symlinks inside copied directories are
//!   copied as links, never followed.

use crate::context::glob::{self, Pattern};
use crate::context::{ContextError, EntryKind, GlobError, HashedContext, PathFilter, Selection};
use crate::graph::{FileAction, Owner};
use crate::ignore::IgnoreRules;
use crate::layered::{LayeredView, MAX_SYMLINKS, ViewEntry, ViewError};
use crate::path_io::{PathIoError, io_error};
use imgb_cache::{
    ApplyError, ApplyLimits, ApplyOptions, Below, BelowEntry, Whiteouts, apply_over, is_tar_archive,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("{source_path}: not found in {origin}")]
    NotFound {
        source_path: String,
        origin: &'static str,
    },
    #[error(
        "when using COPY with more than one source file, the destination must be a directory and end with a /"
    )]
    DestinationNotDirectory,
    #[error("{source_path}: invalid wildcard in {component:?}: {problem}")]
    BadPattern {
        source_path: String,
        component: String,
        problem: GlobError,
    },
    #[error("--chown {owner}: no such {what} in the image's /etc/{file}")]
    UnknownOwner {
        owner: String,
        what: &'static str,
        file: &'static str,
    },
    #[error("--chmod {mode}: {reason}")]
    Mode { mode: String, reason: String },
    #[error("invalid --exclude pattern: {0}")]
    Exclude(String),
    #[error("extracting the archive {archive}: {source}")]
    Unpack {
        archive: String,
        #[source]
        source: ApplyError,
    },
    #[error(
        "extracting the archive {archive}: its content passes {:.1} MiB, the disk a step may \
         write (--run-disk-max; each entry counts at least 512 bytes) (hint: raise \
         --run-disk-max if the archive is trusted)",
        *max as f64 / f64::from(1 << 20)
    )]
    ArchiveTooLarge { archive: String, max: u64 },
    #[error("the step reads input {0}, which it was not given")]
    MissingInput(usize),
    #[error(transparent)]
    Io(#[from] PathIoError),
}

/// Where a COPY reads from.
#[derive(Debug)]
pub enum SourceRoot<'a> {
    /// The build context, already hashed.
    Context(&'a HashedContext),
    /// Another stage's or an image's filesystem.
    View(LayeredView),
}

/// Applies `actions` to `upper`; `inputs[0]` is the base filesystem (its view resolves
/// destinations and owner names), `inputs[n]` what a copy with `input: n` reads. ADD's
/// archives are extracted within `unpack_limits`.
pub fn apply_file_actions(
    actions: &[FileAction],
    base: &LayeredView,
    inputs: &[Option<SourceRoot<'_>>],
    upper: &Path,
    unpack_limits: ApplyLimits,
) -> Result<(), FileOpError> {
    let writer = Writer { base, upper };
    for action in actions {
        match action {
            FileAction::Mkdir { path, mode, owner } => {
                // As BuildKit's MkdirAll: an existing directory keeps its mode, owner and
                // mtime (`WORKDIR /tmp` must not make /tmp 0755), and the layer stays empty.
                if matches!(base.lookup(path, true)?, Some(entry) if entry.is_dir()) {
                    continue;
                }
                let ids = owner
                    .as_ref()
                    .map(|owner| resolve_owner(base, owner))
                    .transpose()?;
                let target = writer.prepare_parents(path, ids)?;
                writer.make_dir(&target, *mode, ids)?;
            }
            FileAction::Write {
                path,
                data,
                mode,
                owner,
            } => {
                let ids = owner
                    .as_ref()
                    .map(|owner| resolve_owner(base, owner))
                    .transpose()?;
                let target = writer.prepare_parents(path, ids)?;
                fs::write(&target, data).map_err(io_error("write", &target))?;
                set_mode_and_owner(&target, *mode, ids.unwrap_or((0, 0)))?;
            }
            FileAction::Copy {
                input,
                sources,
                dest,
                owner,
                mode,
                parents,
                exclude,
                unpack_archives,
                ..
            } => {
                let root = inputs
                    .get(*input)
                    .and_then(Option::as_ref)
                    .ok_or(FileOpError::MissingInput(*input))?;
                let ids = owner
                    .as_ref()
                    .map(|owner| resolve_owner(base, owner))
                    .transpose()?;
                let mode = mode.as_deref().map(parse_mode).transpose()?;
                let exclude = (!exclude.is_empty())
                    .then(|| {
                        IgnoreRules::from_patterns(exclude)
                            .map_err(|error| FileOpError::Exclude(error.to_string()))
                    })
                    .transpose()?;
                let copy = CopySpec {
                    dest,
                    ids,
                    mode,
                    parents: *parents,
                    linked: Mutex::default(),
                    unpack_archives: *unpack_archives,
                    unpack_limits,
                    shareable: matches!(root, SourceRoot::View(_)),
                };
                match root {
                    SourceRoot::Context(context) => {
                        let filter = exclude.as_ref().map(|rules| rules as &dyn PathFilter);
                        let selection = context.select(sources, filter)?;
                        writer.copy_from_context(context, &selection, &copy)?;
                    }
                    SourceRoot::View(view) => writer.copy_from_view(view, sources, &copy)?,
                }
            }
        }
    }
    Ok(())
}

impl PathFilter for IgnoreRules {
    fn excluded(&self, rel: &str, _is_dir: bool) -> bool {
        self.is_excluded(rel)
    }

    fn may_include_below(&self, dir: &str) -> bool {
        self.may_reinclude_below(dir)
    }
}

/// A parsed `--chmod`: octal bits, or symbolic clauses applied to each file's mode.
#[derive(Debug, Clone)]
enum ModeChange {
    Octal(u32),
    Symbolic(Vec<(u32, char, u32)>),
}

impl ModeChange {
    fn apply(&self, current: u32, is_dir: bool) -> u32 {
        match self {
            ModeChange::Octal(bits) => *bits,
            ModeChange::Symbolic(clauses) => {
                clauses
                    .iter()
                    .fold(current & 0o7777, |mode, &(who, op, perms)| {
                        // `X` sets execute only on directories or files already executable by someone.
                        let perms = if perms & 0o1000_0000 != 0 {
                            let exec = if is_dir || current & 0o111 != 0 {
                                0o111
                            } else {
                                0
                            };
                            (perms & 0o7777) | exec
                        } else {
                            perms
                        };
                        let bits = perms & who;
                        match op {
                            '+' => mode | bits,
                            '-' => mode & !bits,
                            _ => (mode & !who) | bits,
                        }
                    })
            }
        }
    }
}

fn parse_mode(text: &str) -> Result<ModeChange, FileOpError> {
    let invalid = |reason: &str| FileOpError::Mode {
        mode: text.to_string(),
        reason: reason.to_string(),
    };
    if text.chars().all(|c| c.is_digit(8)) {
        return u32::from_str_radix(text, 8)
            .map(ModeChange::Octal)
            .map_err(|_| invalid("not an octal mode"));
    }
    let mut clauses = Vec::new();
    for clause in text.split(',') {
        let op_at = clause
            .find(['+', '-', '='])
            .ok_or_else(|| invalid("expected [ugoa]*[+-=][rwxXst]*"))?;
        let (who_text, rest) = clause.split_at(op_at);
        let mut who = 0;
        for c in who_text.chars() {
            who |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return Err(invalid("who must be u, g, o or a")),
            };
        }
        if who == 0 {
            who = 0o7777;
        }
        let op = rest.chars().next().unwrap_or('=');
        let mut perms = 0;
        for c in rest[1..].chars() {
            perms |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' => 0o1000_0000,
                's' => 0o6000,
                't' => 0o1000,
                _ => return Err(invalid("permissions must be among r, w, x, X, s, t")),
            };
        }
        clauses.push((who, op, perms));
    }
    Ok(ModeChange::Symbolic(clauses))
}

struct CopySpec<'a> {
    dest: &'a str,
    ids: Option<(u32, u32)>,
    mode: Option<ModeChange>,
    parents: bool,
    /// Files with several links already copied by this COPY, by source (device, inode): their
    /// other names become hard links to the first copy, as BuildKit keeps them.
    linked: Mutex<HashMap<(u64, u64), PathBuf>>,
    unpack_archives: bool,
    unpack_limits: ApplyLimits,
    /// The sources are snapshots (another stage or an image), which never change: a file whose
    /// owner and mode stay as they are is linked, not copied.
    shareable: bool,
}

struct Writer<'a> {
    base: &'a LayeredView,
    upper: &'a Path,
}

/// A file or directory about to be copied: where to read it and what it is.
struct Item<'a> {
    host: PathBuf,
    /// For a build context's file, the context root: no symlink may lead out of it when the
    /// file is read (the context may have changed since it was hashed).
    context_root: Option<&'a Path>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Item<'_> {
    /// The file, for reading.
    fn open(&self) -> Result<fs::File, FileOpError> {
        match self.context_root {
            Some(root) => crate::context::open_beneath(
                root,
                self.host.strip_prefix(root).unwrap_or(&self.host),
                crate::context::Symlinks::Never,
            ),
            None => fs::File::open(&self.host),
        }
        .map_err(|error| io_error("open", &self.host)(error).into())
    }
}

impl Writer<'_> {
    /// Resolves `path` through the base's symlinks, creates its parent in `upper` (with
    /// the base's metadata for directories that exist there) and returns the host path `path`
    /// itself lands at.
    fn prepare_parents(
        &self,
        path: &str,
        created_owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, FileOpError> {
        // The path itself resolves too: a destination that is a symlink in the base is written
        // through, as BuildKit does (`COPY f /link` changes the link's target).
        let resolved = self.resolve_in_base(path)?;
        let (parent, name) = resolved.rsplit_once('/').unwrap_or(("", &resolved));
        let host = self.create_dirs(parent, created_owner)?;
        Ok(if name.is_empty() {
            host
        } else {
            host.join(name)
        })
    }

    /// Creates every component of `resolved` (a path already resolved inside the base) in
    /// `upper`: with the base's metadata where the base has the directory, else 0755 owned by
    /// `created_owner` (root by default). Returns its host path.
    fn create_dirs(
        &self,
        resolved: &str,
        created_owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, FileOpError> {
        let mut host = self.upper.to_path_buf();
        let mut inside = String::new();
        for component in resolved.split('/').filter(|c| !c.is_empty()) {
            inside.push('/');
            inside.push_str(component);
            host.push(component);
            if fs::symlink_metadata(&host).is_ok() {
                continue;
            }
            match self.base.lookup(&inside, false)? {
                Some(entry) if entry.is_dir() => {
                    let meta = &entry.metadata;
                    fs::create_dir(&host).map_err(io_error("create directory", &host))?;
                    set_mode_and_owner(&host, meta.mode() & 0o7777, (meta.uid(), meta.gid()))?;
                    set_mtime(&host, meta.mtime(), meta.mtime_nsec())?;
                }
                _ => {
                    fs::create_dir(&host).map_err(io_error("create directory", &host))?;
                    set_mode_and_owner(&host, 0o755, created_owner.unwrap_or((0, 0)))?;
                }
            }
        }
        Ok(host)
    }

    /// `path` inside the base with every symlink resolved, dangling ones too (BuildKit creates
    /// their targets); components that do not exist yet are kept as written, and `..` stops at
    /// the root.
    fn resolve_in_base(&self, path: &str) -> Result<String, FileOpError> {
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let candidate = format!("/{}/{component}", resolved.join("/"));
            match self.base.lookup(&candidate, false)? {
                Some(entry) if entry.is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(ViewError::SymlinkLoop { path: candidate }.into());
                    }
                    let target = fs::read_link(&entry.host_path)
                        .map_err(io_error("readlink", &entry.host_path))?;
                    let target = target.to_string_lossy();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
                _ => resolved.push(component),
            }
        }
        Ok(format!("/{}", resolved.join("/")))
    }

    fn make_dir(&self, host: &Path, mode: u32, ids: Option<(u32, u32)>) -> Result<(), FileOpError> {
        if !host.is_dir() {
            fs::create_dir(host).map_err(io_error("create directory", host))?;
        }
        set_mode_and_owner(host, mode, ids.unwrap_or((0, 0)))
    }

    /// True when `dest` names a directory: a trailing `/`, or a directory in the base.
    fn dest_is_dir(&self, dest: &str) -> Result<bool, FileOpError> {
        if dest.ends_with('/') {
            return Ok(true);
        }
        Ok(matches!(self.base.lookup(dest, true)?, Some(entry) if entry.is_dir()))
    }

    fn copy_from_context(
        &self,
        context: &HashedContext,
        selection: &Selection<'_>,
        copy: &CopySpec<'_>,
    ) -> Result<(), FileOpError> {
        let several = selection.sources.len() > 1;
        let dest_is_dir = self.dest_is_dir(copy.dest)?;
        if several && !dest_is_dir {
            return Err(FileOpError::DestinationNotDirectory);
        }
        let item = |entry: &crate::context::Entry| Item {
            host: context.root().join(&entry.path),
            context_root: Some(context.root()),
            kind: entry.kind.clone(),
            mode: entry.mode,
            // Context files belong to root in the image unless --chown says otherwise.
            uid: 0,
            gid: 0,
        };
        for selected in &selection.sources {
            let entry = selected.entry;
            if copy.unpack_archives
                && entry.kind == EntryKind::File
                && self.unpack_if_archive(|| item(entry).open(), &selected.path, copy)?
            {
                continue;
            }
            let target_path = self.target_path(copy, &selected.path, entry.is_dir(), dest_is_dir);
            let target = self.prepare_parents(&target_path, copy.ids)?;
            if entry.is_dir() {
                self.copy_item(&item(entry), &target, copy)?;
                // Directories first, in tree order, so that every parent exists; then the
                // files and links, which are independent of each other, in parallel.
                let (dirs, leaves): (Vec<_>, Vec<_>) = selected
                    .contents
                    .iter()
                    .filter(|inner| !selected.relative_path(inner).is_empty())
                    .partition(|inner| inner.is_dir());
                let copy_inner = |inner: &&crate::context::Entry| {
                    let rel = selected.relative_path(inner);
                    self.copy_item(&item(inner), &target.join(rel), copy)
                };
                dirs.iter().try_for_each(copy_inner)?;
                leaves.par_iter().try_for_each(copy_inner)?;
                // Children change their parents' mtimes: restore directories deepest first.
                for inner in selected
                    .contents
                    .iter()
                    .rev()
                    .filter(|inner| inner.is_dir())
                {
                    let rel = selected.relative_path(inner);
                    restore_dir_mtime(&context.root().join(&inner.path), &target.join(rel))?;
                }
                restore_dir_mtime(&context.root().join(&entry.path), &target)?;
            } else {
                self.copy_item(&item(entry), &target, copy)?;
            }
        }
        Ok(())
    }

    fn copy_from_view(
        &self,
        view: &LayeredView,
        sources: &[String],
        copy: &CopySpec<'_>,
    ) -> Result<(), FileOpError> {
        let mut found: Vec<(String, ViewEntry)> = Vec::new();
        for source in sources {
            found.extend(expand_in_view(view, source)?);
        }
        let dest_is_dir = self.dest_is_dir(copy.dest)?;
        if found.len() > 1 && !dest_is_dir {
            return Err(FileOpError::DestinationNotDirectory);
        }
        for (path, entry) in found {
            if copy.unpack_archives
                && entry.metadata.is_file()
                && self.unpack_if_archive(
                    || {
                        fs::File::open(&entry.host_path)
                            .map_err(|e| io_error("open", &entry.host_path)(e).into())
                    },
                    &path,
                    copy,
                )?
            {
                continue;
            }
            let target_path = self.target_path(copy, &path, entry.is_dir(), dest_is_dir);
            let target = self.prepare_parents(&target_path, copy.ids)?;
            self.copy_view_tree(view, &entry, &target, copy)?;
        }
        Ok(())
    }

    fn copy_view_tree(
        &self,
        view: &LayeredView,
        entry: &ViewEntry,
        target: &Path,
        copy: &CopySpec<'_>,
    ) -> Result<(), FileOpError> {
        let meta = &entry.metadata;
        let kind = if entry.is_dir() {
            EntryKind::Dir
        } else if entry.is_symlink() {
            let link =
                fs::read_link(&entry.host_path).map_err(io_error("readlink", &entry.host_path))?;
            EntryKind::Symlink {
                target: link.to_string_lossy().into_owned(),
            }
        } else if meta.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other {
                type_bits: meta.mode() & 0o170000,
                rdev: meta.rdev(),
            }
        };
        let item = Item {
            host: entry.host_path.clone(),
            context_root: None,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        };
        self.copy_item(&item, target, copy)?;
        if entry.is_dir() {
            for child in view.read_dir(entry)? {
                let name = child
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                self.copy_view_tree(view, &child, &target.join(name), copy)?;
            }
            set_mtime(target, meta.mtime(), meta.mtime_nsec())?;
        }
        Ok(())
    }

    /// Extracts the archive `open` opens (each call from its start) into the destination
    /// directory when it is a tar (plain or compressed); false, with nothing written, when it
    /// is any other file.
    fn unpack_if_archive(
        &self,
        open: impl Fn() -> Result<fs::File, FileOpError>,
        source_path: &str,
        copy: &CopySpec<'_>,
    ) -> Result<bool, FileOpError> {
        if !is_tar_archive(open()?) {
            return Ok(false);
        }
        let resolved = self.resolve_in_base(copy.dest)?;
        let target = self.create_dirs(&resolved, copy.ids)?;
        let options = ApplyOptions {
            limits: copy.unpack_limits,
            owner: copy.ids,
            whiteouts: Whiteouts::Literal,
            root_metadata: false,
            ..ApplyOptions::default()
        };
        let below = BaseBelow {
            base: self.base,
            prefix: &resolved,
        };
        let archive = source_path.to_string();
        apply_over(open()?, &target, &options, Some(&below)).map_err(|source| match source {
            ApplyError::LimitExceeded {
                field: "max_tar_bytes",
                max,
                ..
            } => FileOpError::ArchiveTooLarge { archive, max },
            source => FileOpError::Unpack { archive, source },
        })?;
        Ok(true)
    }

    /// Where a matched source lands, as a path inside the image.
    fn target_path(
        &self,
        copy: &CopySpec<'_>,
        source_path: &str,
        is_dir: bool,
        dest_is_dir: bool,
    ) -> String {
        let dest = copy.dest.trim_end_matches('/');
        let source = source_path.trim_start_matches('/');
        if copy.parents {
            return format!("{dest}/{source}");
        }
        if is_dir {
            return dest.to_string();
        }
        if dest_is_dir {
            let name = source.rsplit('/').next().unwrap_or(source);
            return format!("{dest}/{name}");
        }
        dest.to_string()
    }

    /// Copies one file, link or directory entry (not its children) to `target` in `upper`.
    fn copy_item(
        &self,
        item: &Item,
        target: &Path,
        copy: &CopySpec<'_>,
    ) -> Result<(), FileOpError> {
        if let Some(parent) = target.parent()
            && !parent.exists()
        {
            fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
        }
        let owner = copy.ids.unwrap_or((item.uid, item.gid));
        match &item.kind {
            EntryKind::Dir => {
                if !target.is_dir() {
                    fs::create_dir(target).map_err(io_error("create directory", target))?;
                }
                let mode = copy
                    .mode
                    .as_ref()
                    .map_or(item.mode, |change| change.apply(item.mode, true));
                set_mode_and_owner(target, mode, owner)?;
            }
            EntryKind::File => {
                remove_existing(target)?;
                let source = item.open()?;
                let meta = source.metadata().map_err(io_error("stat", &item.host))?;
                if meta.nlink() > 1 {
                    // Held until the first copy exists: another name of the same file, copied
                    // in parallel, links to it.
                    let mut linked = copy.linked.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(first) = linked.get(&(meta.dev(), meta.ino())) {
                        return fs::hard_link(first, target)
                            .map_err(|e| io_error("hard link", target)(e).into());
                    }
                    copy_file(item, source, &meta, target, copy, owner)?;
                    linked.insert((meta.dev(), meta.ino()), target.to_path_buf());
                } else {
                    copy_file(item, source, &meta, target, copy, owner)?;
                }
            }
            EntryKind::Symlink { target: link } => {
                let meta =
                    fs::symlink_metadata(&item.host).map_err(io_error("stat", &item.host))?;
                remove_existing(target)?;
                symlink(link, target).map_err(io_error("create symlink", target))?;
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    target,
                    Some(rustix::fs::Uid::from_raw(owner.0)),
                    Some(rustix::fs::Gid::from_raw(owner.1)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|errno| FileOpError::Io(PathIoError::new("chown", target, errno)))?;
                set_mtime(target, meta.mtime(), meta.mtime_nsec())?;
            }
            EntryKind::Other { .. } => {
                // Device nodes, fifos and sockets are not copied (BuildKit skips sockets; the
                // rest need privileges a build context should not grant).
            }
        }
        Ok(())
    }
}

/// Copies the regular file `item` (open as `source`, whose metadata is `meta`) to `target`.
fn copy_file(
    item: &Item<'_>,
    mut source: fs::File,
    meta: &fs::Metadata,
    target: &Path,
    copy: &CopySpec<'_>,
    owner: (u32, u32),
) -> Result<(), FileOpError> {
    let mode = copy
        .mode
        .as_ref()
        .map_or(item.mode, |change| change.apply(item.mode, false));
    // Sharing the snapshot's inode keeps content, mode, owner and mtime; a link the
    // filesystem refuses (another device, protected_hardlinks) is a copy.
    if copy.shareable
        && (mode, owner) == (meta.mode() & 0o7777, (meta.uid(), meta.gid()))
        && fs::hard_link(&item.host, target).is_ok()
    {
        return Ok(());
    }
    fs::File::create(target)
        .and_then(|mut out| io::copy(&mut source, &mut out))
        .map_err(io_error("copy", &item.host))?;
    set_mode_and_owner(target, mode, owner)?;
    set_mtime(target, meta.mtime(), meta.mtime_nsec())
}

/// The (matched path, entry with a final symlink followed) pairs one source selects in
/// another stage or image, by the rules the context's selection uses: components before the
/// first wildcard resolve following symlinks (and must exist); the rest match names below,
/// descending only through real directories, in name order. A wildcard matching nothing
/// selects nothing, as BuildKit allows empty wildcards in COPY.
fn expand_in_view(
    view: &LayeredView,
    source: &str,
) -> Result<Vec<(String, ViewEntry)>, FileOpError> {
    let not_found = || FileOpError::NotFound {
        source_path: source.to_string(),
        origin: "the source stage",
    };
    let components: Vec<&str> = source
        .split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect();
    let Some(first_wildcard) = components.iter().position(|c| glob::has_wildcards(c)) else {
        let entry = view.lookup(source, true)?.ok_or_else(not_found)?;
        return Ok(vec![(source.trim_end_matches('/').to_string(), entry)]);
    };
    let patterns = components[first_wildcard..]
        .iter()
        .map(|component| {
            Pattern::parse(component).map_err(|problem| FileOpError::BadPattern {
                source_path: source.to_string(),
                component: (*component).to_string(),
                problem,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let base = view
        .lookup(
            &format!("/{}", components[..first_wildcard].join("/")),
            true,
        )?
        .ok_or_else(not_found)?;
    let mut candidates = vec![base];
    for (depth, pattern) in patterns.iter().enumerate() {
        let last = depth + 1 == patterns.len();
        let mut matched = Vec::new();
        for dir in candidates.iter().filter(|entry| entry.is_dir()) {
            for child in view.read_dir(dir)? {
                let name = child.path.rsplit('/').next().unwrap_or_default();
                if (last || child.is_dir()) && pattern.matches(name) {
                    matched.push(child);
                }
            }
        }
        candidates = matched;
    }
    candidates
        .into_iter()
        .map(|entry| {
            let followed = if entry.is_symlink() {
                view.lookup(&entry.path, true)?.ok_or_else(not_found)?
            } else {
                entry.clone()
            };
            Ok((entry.path, followed))
        })
        .collect()
}

/// The base filesystem under an archive extracted at `prefix` (a resolved path in the image).
struct BaseBelow<'a> {
    base: &'a LayeredView,
    prefix: &'a str,
}

impl Below for BaseBelow<'_> {
    fn entry(&self, path: &Path) -> io::Result<Option<BelowEntry>> {
        let inside = format!(
            "{}/{}",
            self.prefix.trim_end_matches('/'),
            path.to_string_lossy()
        );
        let Some(entry) = self.base.lookup(&inside, false).map_err(io::Error::other)? else {
            return Ok(None);
        };
        let meta = &entry.metadata;
        Ok(Some(if entry.is_dir() {
            BelowEntry::Dir {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
            }
        } else if entry.is_symlink() {
            let target = fs::read_link(&entry.host_path)?;
            BelowEntry::Symlink {
                target: target.into_os_string().into_encoded_bytes(),
            }
        } else {
            BelowEntry::Other
        }))
    }
}

fn remove_existing(target: &Path) -> Result<(), FileOpError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(target).map_err(|e| io_error("replace directory", target)(e).into())
        }
        Ok(_) => fs::remove_file(target).map_err(|e| io_error("replace file", target)(e).into()),
        Err(_) => Ok(()),
    }
}

fn restore_dir_mtime(source: &Path, target: &Path) -> Result<(), FileOpError> {
    let meta = fs::symlink_metadata(source).map_err(io_error("stat", source))?;
    set_mtime(target, meta.mtime(), meta.mtime_nsec())
}

fn set_mode_and_owner(path: &Path, mode: u32, (uid, gid): (u32, u32)) -> Result<(), FileOpError> {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| FileOpError::Io(PathIoError::new("chown", path, errno)))?;
    // chmod after chown: chown clears setuid/setgid bits.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_error("chmod", path)(e).into())
}

fn set_mtime(path: &Path, seconds: i64, nanos: i64) -> Result<(), FileOpError> {
    let time = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: seconds,
            tv_nsec: nanos as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: seconds,
            tv_nsec: nanos as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &time,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| FileOpError::Io(PathIoError::new("set mtime", path, errno)))
}

/// `user[:group]` → numeric ids, names looked up in the base's `/etc/passwd` and `/etc/group`
/// (`root` is 0 without a lookup, as in BuildKit). Without a group, a user named in passwd gets
/// its primary group and a numeric user the same number, as BuildKit does.
fn resolve_owner(base: &LayeredView, owner: &Owner) -> Result<(u32, u32), FileOpError> {
    let (uid, primary_gid) = match Owner::numeric_id(&owner.user) {
        Some(uid) => (uid, uid),
        None => {
            let (uid, gid) = lookup_ids(base, "passwd", &owner.user)?.ok_or_else(|| {
                FileOpError::UnknownOwner {
                    owner: owner.user.clone(),
                    what: "user",
                    file: "passwd",
                }
            })?;
            (uid, gid.unwrap_or(uid))
        }
    };
    let gid = match &owner.group {
        None => primary_gid,
        Some(group) => match Owner::numeric_id(group) {
            Some(gid) => gid,
            None => {
                lookup_ids(base, "group", group)?
                    .ok_or_else(|| FileOpError::UnknownOwner {
                        owner: group.clone(),
                        what: "group",
                        file: "group",
                    })?
                    .0
            }
        },
    };
    Ok((uid, gid))
}

/// The id (third field) of `name` in the base's `/etc/<file>`, and the fourth field as a number
/// when it is one (passwd's primary group id).
fn lookup_ids(
    base: &LayeredView,
    file: &str,
    name: &str,
) -> Result<Option<(u32, Option<u32>)>, FileOpError> {
    let Some(entry) = base.lookup(&format!("/etc/{file}"), true)? else {
        return Ok(None);
    };
    let mut text = String::new();
    io::Read::read_to_string(&mut base.open(&entry)?, &mut text)
        .map_err(io_error("read", &entry.host_path))?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next() != Some(name) {
            return None;
        }
        let id = fields.nth(1)?.parse().ok()?;
        Some((id, fields.next().and_then(|gid| gid.parse().ok())))
    }))
}

#[cfg(test)]
mod tests;

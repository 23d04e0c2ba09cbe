//! COPY/ADD source selection over a hashed context, with BuildKit's rules:
//! - a source is relative to the context root (a leading `/` too); it is cleaned lexically, a
//!   trailing `/` changes nothing, and `.` is the whole context;
//! - the components before the first one with a wildcard are resolved following symlinks; the
//!   rest are matched against the entries below, descending only through real directories, and
//!   every match that is a symlink is followed. Matches come in tree order. A wildcard matching
//!   nothing selects nothing, while a literal path that does not exist is an error;
//! - exclude patterns apply to the paths below each selected directory, relative to it, never
//!   to the selected path itself; an excluded directory stays when something below it is
//!   re-included.
//!
//! Unlike BuildKit, which clamps such paths to the context root, a source that leads out of the
//! context (`..` above the root, a symlink whose target is outside) is an error. An absolute
//! symlink target is accepted when it points into the context by its absolute path. Symlinks are
//! resolved against the hashed entries, so a path the ignore file excluded does not exist here.

use std::path::Path;

use super::digest::{ContentDigest, DirectoryHasher, SelectionHasher};
use super::glob::{self, Pattern};
use super::{ContextError, Entry, EntryKind, HashedContext, PathFilter};

/// The limit on symlinks followed while resolving one source, as Linux's `ELOOP`.
const MAX_SYMLINKS: usize = 40;

/// What a list of sources selects, and the digest a cache key uses for it.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// Covers, per source in order, how many paths matched and for each its context-relative
    /// path, type, mode and contents (for a directory, the digest of what is copied of it).
    pub digest: ContentDigest,
    pub sources: Vec<SelectedSource<'a>>,
}

/// One path a source matched.
#[derive(Debug, Clone)]
pub struct SelectedSource<'a> {
    /// Which of the requested sources matched it.
    pub source_index: usize,
    /// The matched path, relative to the context, before a final symlink is followed (its
    /// base name is what COPY names the copy); empty for the context root.
    pub path: String,
    /// What is copied: `path` with symlinks followed.
    pub entry: &'a Entry,
    /// For a directory, everything copied from below it in tree order, excluded paths left
    /// out; symlinks among them are entries of their own and are not followed.
    pub contents: Vec<&'a Entry>,
    /// The content digest of what is copied (for a directory, over `contents` only).
    pub digest: ContentDigest,
}

impl<'a> Selection<'a> {
    /// Every entry the selection copies: each matched entry, then what is copied from below it.
    pub fn entries(&self) -> impl Iterator<Item = &'a Entry> + '_ {
        self.sources
            .iter()
            .flat_map(|source| std::iter::once(source.entry).chain(source.contents.iter().copied()))
    }
}

impl SelectedSource<'_> {
    /// The path of `entry`, one of [`Self::contents`], relative to the selected directory.
    pub fn relative_path<'e>(&self, entry: &'e Entry) -> &'e str {
        relative_to(&self.entry.path, &entry.path)
    }
}

fn relative_to<'p>(base: &str, path: &'p str) -> &'p str {
    if base.is_empty() {
        return path;
    }
    path.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(path)
}

impl HashedContext {
    /// Resolves `sources` (paths or wildcards relative to the context) and digests what they
    /// select, leaving out what `exclude` matches below each selected directory.
    pub fn select<S: AsRef<str>>(
        &self,
        sources: &[S],
        exclude: Option<&dyn PathFilter>,
    ) -> Result<Selection<'_>, ContextError> {
        let mut hasher = SelectionHasher::new();
        let mut selected = Vec::new();
        for (source_index, source) in sources.iter().enumerate() {
            let matches = self.expand(source.as_ref())?;
            hasher.begin_source(matches.len());
            for (path, index) in matches {
                let entry = &self.entries[index];
                let (digest, contents) = self.copied_tree(index, exclude);
                hasher.add_match(&path, entry.kind.type_tag(), entry.mode, &digest);
                selected.push(SelectedSource {
                    source_index,
                    path,
                    entry,
                    contents,
                    digest,
                });
            }
        }
        Ok(Selection {
            digest: hasher.finish(),
            sources: selected,
        })
    }

    /// The (matched path, index of the followed entry) pairs of one source.
    fn expand(&self, requested: &str) -> Result<Vec<(String, usize)>, ContextError> {
        let components = clean(requested)?;
        let Some(first_wildcard) = components.iter().position(|c| glob::has_wildcards(c)) else {
            let index = self.resolve(requested, &components)?;
            return Ok(vec![(components.join("/"), index)]);
        };
        let patterns = components[first_wildcard..]
            .iter()
            .map(|component| {
                Pattern::parse(component).map_err(|problem| ContextError::BadPattern {
                    requested: requested.to_owned(),
                    component: (*component).to_owned(),
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let base = self.resolve(requested, &components[..first_wildcard])?;

        let mut candidates = vec![base];
        for (depth, pattern) in patterns.iter().enumerate() {
            let last = depth + 1 == patterns.len();
            candidates = candidates
                .into_iter()
                .filter(|&dir| self.entries[dir].is_dir())
                .flat_map(|dir| self.children_of(dir))
                .filter(|&child| {
                    let entry = &self.entries[child];
                    (last || entry.is_dir()) && pattern.matches(entry.name())
                })
                .collect();
        }
        candidates
            .into_iter()
            .map(|index| {
                let path = self.entries[index].path.clone();
                let followed = match self.entries[index].kind {
                    EntryKind::Symlink { .. } => {
                        self.resolve(requested, &path.split('/').collect::<Vec<_>>())?
                    }
                    _ => index,
                };
                Ok((path, followed))
            })
            .collect()
    }

    /// Follows `components` from the context root, symlinks included, like a lookup inside a
    /// chroot except that leaving the context is an error.
    fn resolve(&self, requested: &str, components: &[&str]) -> Result<usize, ContextError> {
        // Components still to walk, the next one last; symlink targets are spliced in.
        let mut pending: Vec<String> = components.iter().rev().map(|c| (*c).to_owned()).collect();
        // The directories walked into so far, innermost last; empty means the root (index 0).
        let mut walked: Vec<usize> = Vec::new();
        let mut last_link: Option<(String, String)> = None;
        let mut links_followed = 0;
        let escape = |last_link: Option<(String, String)>| {
            let (link, target) = last_link.unzip();
            ContextError::SourceEscapes {
                requested: requested.to_owned(),
                link,
                target,
            }
        };

        while let Some(component) = pending.pop() {
            match component.as_str() {
                "" | "." => {}
                ".." => {
                    if walked.pop().is_none() {
                        return Err(escape(last_link));
                    }
                }
                name => {
                    let parent = &self.entries[walked.last().copied().unwrap_or(0)];
                    if !parent.is_dir() {
                        return Err(ContextError::SourceNotADirectory {
                            requested: requested.to_owned(),
                            path: parent.path.clone(),
                        });
                    }
                    let path = if parent.path.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{}/{name}", parent.path)
                    };
                    let index =
                        self.index_of(&path)
                            .ok_or_else(|| ContextError::SourceNotFound {
                                requested: requested.to_owned(),
                                missing: path.clone(),
                            })?;
                    let EntryKind::Symlink { target } = &self.entries[index].kind else {
                        walked.push(index);
                        continue;
                    };
                    links_followed += 1;
                    if links_followed > MAX_SYMLINKS {
                        return Err(ContextError::SymlinkLoop {
                            requested: requested.to_owned(),
                            link: path,
                        });
                    }
                    last_link = Some((path, target.clone()));
                    let relative_target = if target.starts_with('/') {
                        walked.clear();
                        match self.inside_context(target) {
                            Some(inside) => inside,
                            None => return Err(escape(last_link)),
                        }
                    } else {
                        target.clone()
                    };
                    pending.extend(relative_target.rsplit('/').map(str::to_owned));
                }
            }
        }
        Ok(walked.last().copied().unwrap_or(0))
    }

    /// An absolute symlink target as a path relative to the context, if it points inside.
    fn inside_context(&self, target: &str) -> Option<String> {
        let target = Path::new(target);
        [self.canonical_root.as_path(), self.root.as_path()]
            .into_iter()
            .filter(|root| root.is_absolute())
            .find_map(|root| target.strip_prefix(root).ok())
            .and_then(|inside| inside.to_str().map(str::to_owned))
    }

    /// The digest and contents of what copying the entry at `index` copies.
    fn copied_tree(
        &self,
        index: usize,
        exclude: Option<&dyn PathFilter>,
    ) -> (ContentDigest, Vec<&Entry>) {
        let entry = &self.entries[index];
        if !entry.is_dir() {
            return (entry.digest, Vec::new());
        }
        match exclude {
            None => (entry.digest, self.subtree_at(index)[1..].iter().collect()),
            Some(filter) => {
                let mut contents = Vec::new();
                let digest = self.filtered_digest(index, &entry.path, filter, &mut contents);
                (digest, contents)
            }
        }
    }

    /// The Merkle digest of directory `index` counting only what `filter` keeps (paths relative
    /// to `base`), pushing the kept entries onto `kept` in tree order.
    fn filtered_digest<'a>(
        &'a self,
        index: usize,
        base: &str,
        filter: &dyn PathFilter,
        kept: &mut Vec<&'a Entry>,
    ) -> ContentDigest {
        let mut hasher = DirectoryHasher::new();
        for child in self.children_of(index) {
            let entry = &self.entries[child];
            let rel = relative_to(base, &entry.path);
            let excluded = filter.excluded(rel, entry.is_dir());
            let digest = if entry.is_dir() {
                if excluded && !filter.may_include_below(rel) {
                    continue;
                }
                let position = kept.len();
                kept.push(entry);
                let digest = self.filtered_digest(child, base, filter, kept);
                if excluded && kept.len() == position + 1 {
                    kept.pop();
                    continue;
                }
                digest
            } else if excluded {
                continue;
            } else {
                kept.push(entry);
                entry.digest
            };
            hasher.add_child(entry.name(), entry.kind.type_tag(), entry.mode, &digest);
        }
        hasher.finish()
    }
}

/// A source's components after lexical cleaning (as Go's `path.Clean` of `"/" + source`), but
/// a `..` that would climb above the root is an error instead of being dropped.
fn clean(requested: &str) -> Result<Vec<&str>, ContextError> {
    let mut components = Vec::new();
    for component in requested.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if components.pop().is_none() {
                    return Err(ContextError::SourceEscapes {
                        requested: requested.to_owned(),
                        link: None,
                        target: None,
                    });
                }
            }
            name => components.push(name),
        }
    }
    Ok(components)
}

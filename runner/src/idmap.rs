//! Rootless id maps for the supervisor's user namespace, written by the caller (a process cannot
//! map itself beyond its own id, and `newuidmap` must run from outside).
//!
//! The caller's uid and gid become 0 inside. When `/etc/subuid` and `/etc/subgid` grant the
//! caller ranges and `newuidmap`/`newgidmap` exist, the ranges follow from id 1 on, so images
//! with other users (and `chown` in a step) work; otherwise only root exists inside, and
//! switching to another user fails with a hint.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One `inside outside count` line of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The maps for one kind of id (uid or gid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdMap {
    pub ranges: Vec<IdRange>,
}

impl IdMap {
    /// `own` as 0, then the subordinate ranges `(start, count)` from 1 on.
    pub fn new(own: u32, subordinate: &[(u32, u32)]) -> Self {
        let mut ranges = vec![IdRange {
            inside: 0,
            outside: own,
            count: 1,
        }];
        let mut next = 1u32;
        for &(outside, count) in subordinate {
            ranges.push(IdRange {
                inside: next,
                outside,
                count,
            });
            next = next.saturating_add(count);
        }
        Self { ranges }
    }

    /// `newuidmap`'s arguments after the pid.
    fn helper_args(&self) -> Vec<String> {
        self.ranges
            .iter()
            .flat_map(|range| [range.inside, range.outside, range.count])
            .map(|id| id.to_string())
            .collect()
    }
}

/// The subordinate ranges `(start, count)` granted to `name` or `uid` in a subuid/subgid file.
pub(crate) fn subordinate_ranges(text: &str, name: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?;
            let start = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            (owner == uid || Some(owner) == name).then_some((start, count))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// The caller's user name in the host's `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

fn find_helper(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// Writes the maps of process `pid` (which has just unshared its user namespace).
pub(crate) async fn map_ids(pid: u32, use_subordinate: bool) -> Result<(), String> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let helpers = find_helper("newuidmap").zip(find_helper("newgidmap"));
    if let (true, Some((newuidmap, newgidmap))) = (use_subordinate, helpers) {
        let name = user_name(uid);
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let subuids = subordinate_ranges(&read("/etc/subuid"), name.as_deref(), uid);
        let subgids = subordinate_ranges(&read("/etc/subgid"), name.as_deref(), uid);
        if !subuids.is_empty() && !subgids.is_empty() {
            run_helper(&newuidmap, pid, &IdMap::new(uid, &subuids)).await?;
            return run_helper(&newgidmap, pid, &IdMap::new(gid, &subgids)).await;
        }
    }
    let write = |file: &str, content: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, content).map_err(|error| format!("writing {path}: {error}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

async fn run_helper(helper: &Path, pid: u32, map: &IdMap) -> Result<(), String> {
    let output = tokio::process::Command::new(helper)
        .arg(pid.to_string())
        .args(map.helper_args())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| format!("running {}: {error}", helper.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} {pid} {} failed ({}): {}",
        helper.display(),
        map.helper_args().join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_match_name_or_uid() {
        let text = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\nalice:500000:0\n";
        assert_eq!(
            subordinate_ranges(text, Some("alice"), 1000),
            vec![(100000, 65536)]
        );
        assert_eq!(subordinate_ranges(text, None, 1001), vec![(300000, 10)]);
        assert!(subordinate_ranges(text, Some("carol"), 1002).is_empty());
    }

    #[test]
    fn maps_put_the_caller_at_zero_and_ranges_after_it() {
        let map = IdMap::new(1000, &[(100000, 65536), (300000, 10)]);
        assert_eq!(
            map.helper_args(),
            [
                "0", "1000", "1", "1", "100000", "65536", "65537", "300000", "10"
            ]
        );
    }
}

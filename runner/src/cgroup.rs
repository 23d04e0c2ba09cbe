//! One control group per step, holding every process of its container, so that a fork bomb or
//! a memory hog is stopped by the kernel instead of exhausting the host.
//!
//! Both layouts are handled: the unified hierarchy (cgroup v2, `/sys/fs/cgroup` itself) and the
//! legacy one (cgroup v1, a hierarchy per controller under `/sys/fs/cgroup/<controller>`, as on
//! hybrid hosts). The step's group is created below the caller's own group in each hierarchy
//! that has a limit to enforce; the caller moves the supervisor stage into it before the
//! supervisor starts anything, so every container process is born inside it.
//!
//! Invariants: a group exists only while its step runs (removed on drop, once its processes
//! are gone; one whose imgb was killed before it could is removed by the next step created
//! beside it); a limit that was asked for but cannot be set is an error, never a silent no-op.
//!
//! The hierarchies' mount point and the caller's own groups (`/proc/self/cgroup`) are
//! parameters, so that both layouts are unit-tested against directories laid out like them
//! (this module's tests); the runner passes [`DEFAULT_ROOT`] and [`own_groups`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::Limits;

/// Where the kernel's cgroup hierarchies are mounted.
pub(crate) const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The caller's groups, one `id:controllers:path` line per hierarchy (`0::path` for v2).
pub(crate) fn own_groups() -> Result<String, String> {
    fs::read_to_string("/proc/self/cgroup")
        .map_err(|error| format!("reading /proc/self/cgroup: {error}"))
}

/// The step's control group: one directory per hierarchy involved.
#[derive(Debug)]
pub(crate) struct StepCgroup {
    /// `(controller, directory)`: with v2 one directory serves both controllers.
    groups: Vec<(Controller, PathBuf)>,
    unified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Pids,
    Memory,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Self::Pids => "pids",
            Self::Memory => "memory",
        }
    }
}

impl StepCgroup {
    /// Creates the group `name` with `limits`' process and memory limits, `None` when none is
    /// set: below the groups `own` names (as `/proc/self/cgroup` lists them), in the
    /// hierarchies mounted at `root`. `name` is `run-<pid>-<n>`, `<pid>` the caller's: see
    /// [`remove_abandoned`].
    pub(crate) fn create(
        root: &Path,
        own: &str,
        limits: &Limits,
        name: &str,
    ) -> Result<Option<Self>, String> {
        let wanted: Vec<(Controller, u64)> = [
            (Controller::Pids, limits.pids_max),
            (Controller::Memory, limits.memory_max),
        ]
        .into_iter()
        .filter_map(|(controller, limit)| Some((controller, limit?)))
        .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        let unified = root.join("cgroup.controllers").is_file();
        let mut cgroup = Self {
            groups: Vec::new(),
            unified,
        };
        for (controller, limit) in wanted {
            let dir = if unified {
                cgroup.unified_group(root, own, controller, name)?
            } else {
                cgroup.legacy_group(root, own, controller, name)?
            };
            let (file, value) = match controller {
                Controller::Pids => ("pids.max", limit.to_string()),
                Controller::Memory if unified => ("memory.max", limit.to_string()),
                Controller::Memory => ("memory.limit_in_bytes", limit.to_string()),
            };
            write(&dir.join(file), &value)?;
            if controller == Controller::Memory && unified {
                // Swapping out would let the step exceed its memory by the swap's size.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
        }
        Ok(Some(cgroup))
    }

    /// v2: one group below the caller's, with `controller` enabled for its parent's children.
    fn unified_group(
        &mut self,
        root: &Path,
        own: &str,
        controller: Controller,
        name: &str,
    ) -> Result<PathBuf, String> {
        let parent = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(|path| root.join(path.trim_start_matches('/')))
            .ok_or_else(|| "no cgroup v2 entry in /proc/self/cgroup".to_string())?;
        let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == controller.name()) {
            // Fails (EBUSY) when the caller's group holds processes itself: v2 lets only
            // leaves hold them. The hint says how to delegate a group to imgb then.
            write(
                &parent.join("cgroup.subtree_control"),
                &format!("+{}", controller.name()),
            )
            .map_err(|error| {
                format!(
                    "{error} (hint: run imgb in a cgroup of its own with the {} controller \
                     delegated, e.g. `systemd-run --scope -p Delegate=yes imgb ...`)",
                    controller.name()
                )
            })?;
        }
        let dir = parent.join(name);
        if let Some((_, existing)) = self.groups.first() {
            return Ok(existing.clone());
        }
        make_group(&dir)?;
        self.groups.push((controller, dir.clone()));
        Ok(dir)
    }

    /// v1: a group in the controller's own hierarchy, below the caller's group there.
    fn legacy_group(
        &mut self,
        root: &Path,
        own: &str,
        controller: Controller,
        name: &str,
    ) -> Result<PathBuf, String> {
        let mount = root.join(controller.name());
        let path = own
            .lines()
            .filter_map(|line| line.split_once(':')?.1.split_once(':'))
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller.name()))
            .map(|(_, path)| path.trim_start_matches('/'))
            .ok_or_else(|| {
                format!(
                    "the {} cgroup controller is not available (hint: the kernel or the \
                     container imgb runs in does not provide it)",
                    controller.name()
                )
            })?;
        let dir = mount.join(path).join(name);
        make_group(&dir)?;
        self.groups.push((controller, dir.clone()));
        Ok(dir)
    }

    /// Moves process `pid` (and the children it starts from now on) into the group.
    pub(crate) fn add(&self, pid: u32) -> Result<(), String> {
        for (_, dir) in &self.groups {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Whether the kernel refused a fork because of the process limit.
    pub(crate) fn pids_limit_reached(&self) -> bool {
        self.event_count(Controller::Pids, "pids.events", "max") > 0
    }

    /// Whether the kernel's OOM killer killed a process of the group.
    pub(crate) fn oom_killed(&self) -> bool {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.event_count(Controller::Memory, file, "oom_kill") > 0
    }

    /// A `key value` line's value in one of the group's flat-keyed files; 0 when absent.
    fn event_count(&self, controller: Controller, file: &str, key: &str) -> u64 {
        let Some((_, dir)) = self
            .groups
            .iter()
            .find(|(c, _)| *c == controller || self.unified)
        else {
            return 0;
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        for (_, dir) in &self.groups {
            // The processes are gone once the pid namespace is, but the kernel may need a
            // moment to drop the last references of an exiting group.
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Err(error) if error.kind() == io::ErrorKind::ResourceBusy => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
    }
}

fn make_group(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        remove_abandoned(parent);
    }
    fs::create_dir(dir).map_err(|error| cgroup_error("create", dir, &error))
}

/// Removes the step groups below `parent` whose imgb is gone (killed before its drop ran):
/// `run-<pid>-<n>` with no process `<pid>` any more. A group whose pid was reused waits for
/// a later sweep; the kernel refuses to remove one that still holds processes.
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let owner = entry.file_name().to_str().and_then(|name| {
            let (pid, step) = name.strip_prefix("run-")?.split_once('-')?;
            step.parse::<u64>().ok()?;
            pid.parse::<u32>().ok()
        });
        if let Some(pid) = owner
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn write(file: &Path, value: &str) -> Result<(), String> {
    fs::write(file, value)
        .map_err(|error| cgroup_error(&format!("write {value:?} to"), file, &error))
}

fn cgroup_error(op: &str, path: &Path, error: &io::Error) -> String {
    format!(
        "setting the step's resource limits: {op} {}: {error}",
        path.display()
    )
}

/// Both layouts against directories laid out like the kernel's (this machine's kernel mounts
/// v1 only, so v2 is exercised here alone; v1 also end to end, by the adversarial tests). A
/// plain directory differs from a cgroup one in two ways the tests account for: it starts
/// empty (no interface files) and `rmdir` needs it empty.
#[cfg(test)]
mod tests {
    use super::*;

    const MIB_64: u64 = 64 << 20;

    fn limits(pids_max: Option<u64>, memory_max: Option<u64>) -> Limits {
        Limits {
            pids_max,
            memory_max,
            disk_max: None,
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// A v2 mount at `root` with the caller in `imgb.scope`, whose `cgroup.subtree_control`
    /// enables `enabled`; the caller's `/proc/self/cgroup` and its group's directory.
    fn unified(root: &Path, enabled: &str) -> (String, PathBuf) {
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let own = root.join("system.slice/imgb.scope");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), enabled).unwrap();
        ("0::/system.slice/imgb.scope\n".to_string(), own)
    }

    /// Removes what the runner wrote in a group, as the kernel's `rmdir` ignores its
    /// interface files.
    fn empty_group(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }

    #[test]
    fn no_limit_creates_no_group() {
        let root = tempfile::tempdir().unwrap();
        let (own, parent) = unified(root.path(), "");
        let cgroup = StepCgroup::create(root.path(), &own, &limits(None, None), "run-1").unwrap();
        assert!(cgroup.is_none());
        assert!(!parent.join("run-1").exists());
        assert_eq!(read(&parent.join("cgroup.subtree_control")), "");
    }

    /// The step group `run-1` with `limits`, in a v2 mount made by [`unified`]; its directory.
    fn unified_step(root: &Path, enabled: &str, limits: Limits) -> (StepCgroup, PathBuf) {
        let (own, parent) = unified(root, enabled);
        let cgroup = StepCgroup::create(root, &own, &limits, "run-1")
            .unwrap()
            .unwrap();
        (cgroup, parent.join("run-1"))
    }

    #[test]
    fn v2_one_group_below_the_callers_holds_both_limits() {
        let root = tempfile::tempdir().unwrap();
        let both = limits(Some(32), Some(MIB_64));
        let (cgroup, group) = unified_step(root.path(), "memory pids\n", both);
        let parent = group.parent().unwrap();
        assert_eq!(read(&group.join("pids.max")), "32");
        assert_eq!(read(&group.join("memory.max")), MIB_64.to_string());
        assert!(!group.join("memory.limit_in_bytes").exists());
        // The swap limit is written only where the kernel offers it.
        assert!(!group.join("memory.swap.max").exists());
        // Controllers already delegated are left as they are.
        assert_eq!(
            read(&parent.join("cgroup.subtree_control")),
            "memory pids\n"
        );
        // One directory serves both controllers: the supervisor is added once.
        cgroup.add(4242).unwrap();
        assert_eq!(read(&group.join("cgroup.procs")), "4242");
        assert_eq!(fs::read_dir(parent).unwrap().count(), 3);
    }

    #[test]
    fn v2_delegates_a_missing_controller_through_subtree_control() {
        let root = tempfile::tempdir().unwrap();
        let (_cgroup, group) = unified_step(root.path(), "", limits(Some(32), None));
        let parent = group.parent().unwrap();
        assert_eq!(read(&parent.join("cgroup.subtree_control")), "+pids");
        assert_eq!(read(&group.join("pids.max")), "32");
    }

    #[test]
    fn v2_refused_delegation_fails_with_a_hint() {
        let root = tempfile::tempdir().unwrap();
        let (own, parent) = unified(root.path(), "");
        // Writing fails as the kernel's EBUSY would (the caller's group holds processes).
        fs::remove_file(parent.join("cgroup.subtree_control")).unwrap();
        fs::create_dir(parent.join("cgroup.subtree_control")).unwrap();
        let error = StepCgroup::create(root.path(), &own, &limits(None, Some(MIB_64)), "run-1")
            .unwrap_err();
        assert!(error.contains("cgroup.subtree_control"), "{error}");
        assert!(error.contains("Delegate=yes"), "{error}");
        assert!(!parent.join("run-1").exists());
    }

    #[test]
    fn v2_without_its_entry_in_proc_self_cgroup_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        unified(root.path(), "");
        let error = StepCgroup::create(
            root.path(),
            "1:name=systemd:/\n",
            &limits(Some(8), None),
            "r",
        )
        .unwrap_err();
        assert!(error.contains("no cgroup v2 entry"), "{error}");
    }

    #[test]
    fn v2_events_tell_the_limit_that_was_hit() {
        let root = tempfile::tempdir().unwrap();
        let both = limits(Some(32), Some(MIB_64));
        let (cgroup, group) = unified_step(root.path(), "memory pids\n", both);
        assert!(!cgroup.pids_limit_reached() && !cgroup.oom_killed());
        fs::write(group.join("pids.events"), "max 0\n").unwrap();
        fs::write(
            group.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 1\n",
        )
        .unwrap();
        assert!(!cgroup.pids_limit_reached() && !cgroup.oom_killed());
        fs::write(group.join("pids.events"), "max 3\n").unwrap();
        fs::write(group.join("memory.events"), "max 12\noom 1\noom_kill 1\n").unwrap();
        assert!(cgroup.pids_limit_reached() && cgroup.oom_killed());
    }

    #[test]
    fn groups_of_a_killed_imgb_are_removed_when_the_next_step_starts() {
        let root = tempfile::tempdir().unwrap();
        let (own, parent) = unified(root.path(), "memory pids\n");
        // Beyond any pid_max (2^22): no such process.
        let abandoned = parent.join("run-4294967295-3");
        let running = parent.join(format!("run-{}-0", std::process::id()));
        let foreign = parent.join("run-other");
        for dir in [&abandoned, &running, &foreign] {
            fs::create_dir(dir).unwrap();
        }
        let _cgroup = StepCgroup::create(root.path(), &own, &limits(Some(8), None), "run-1-1")
            .unwrap()
            .unwrap();
        assert!(!abandoned.exists());
        assert!(running.is_dir() && foreign.is_dir());
    }

    #[test]
    fn v2_group_is_removed_after_the_step() {
        let root = tempfile::tempdir().unwrap();
        let (cgroup, group) = unified_step(root.path(), "memory pids\n", limits(Some(32), None));
        empty_group(&group);
        drop(cgroup);
        assert!(!group.exists());
        assert!(group.parent().unwrap().is_dir());
    }

    /// A hybrid host's v1 layout: a hierarchy per controller, the caller in a different group
    /// in each.
    fn legacy(root: &Path) -> String {
        for dir in ["pids", "memory/imgb/build", "cpu,cpuacct", "unified"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        "9:name=systemd:/\n8:pids:/\n4:memory:/imgb/build\n2:cpu,cpuacct:/\n0::/\n".into()
    }

    #[test]
    fn v1_groups_in_each_controllers_hierarchy_with_its_files() {
        let root = tempfile::tempdir().unwrap();
        let own = legacy(root.path());
        let cgroup =
            StepCgroup::create(root.path(), &own, &limits(Some(32), Some(MIB_64)), "run-1")
                .unwrap()
                .unwrap();
        let pids = root.path().join("pids/run-1");
        let memory = root.path().join("memory/imgb/build/run-1");
        assert_eq!(read(&pids.join("pids.max")), "32");
        assert_eq!(
            read(&memory.join("memory.limit_in_bytes")),
            MIB_64.to_string()
        );
        assert!(!memory.join("memory.max").exists());
        cgroup.add(4242).unwrap();
        assert_eq!(read(&pids.join("cgroup.procs")), "4242");
        assert_eq!(read(&memory.join("cgroup.procs")), "4242");

        assert!(!cgroup.pids_limit_reached() && !cgroup.oom_killed());
        fs::write(pids.join("pids.events"), "max 7\n").unwrap();
        fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(cgroup.pids_limit_reached() && cgroup.oom_killed());

        empty_group(&pids);
        empty_group(&memory);
        drop(cgroup);
        assert!(!pids.exists() && !memory.exists());
        assert!(root.path().join("memory/imgb/build").is_dir());
    }

    #[test]
    fn v1_missing_controller_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        legacy(root.path());
        let error = StepCgroup::create(
            root.path(),
            "8:pids:/\n0::/\n",
            &limits(Some(32), Some(MIB_64)),
            "run-1",
        )
        .unwrap_err();
        assert!(error.contains("memory cgroup controller"), "{error}");
    }

    #[test]
    fn a_group_that_cannot_be_created_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let own = legacy(root.path());
        fs::create_dir(root.path().join("pids/run-1")).unwrap();
        let error =
            StepCgroup::create(root.path(), &own, &limits(Some(32), None), "run-1").unwrap_err();
        assert!(error.contains("pids/run-1"), "{error}");
    }
}

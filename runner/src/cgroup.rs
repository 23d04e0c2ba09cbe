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
//! are gone); a limit that was asked for but cannot be set is an error, never a silent no-op.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::Limits;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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
    /// set.
    pub(crate) fn create(limits: &Limits, name: &str) -> Result<Option<Self>, String> {
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
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|error| format!("reading /proc/self/cgroup: {error}"))?;
        let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file();
        let mut cgroup = Self {
            groups: Vec::new(),
            unified,
        };
        for (controller, limit) in wanted {
            let dir = if unified {
                cgroup.unified_group(&own, controller, name)?
            } else {
                cgroup.legacy_group(&own, controller, name)?
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
        own: &str,
        controller: Controller,
        name: &str,
    ) -> Result<PathBuf, String> {
        let parent = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(|path| Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')))
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
        own: &str,
        controller: Controller,
        name: &str,
    ) -> Result<PathBuf, String> {
        let mount = Path::new(CGROUP_ROOT).join(controller.name());
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
    fs::create_dir(dir).map_err(|error| cgroup_error("create", dir, &error))
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

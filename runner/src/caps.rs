//! Docker's default capability set, and the privilege drop right before the command starts.
//!
//! The bounding set is cut to the default set, so not even a setuid-root binary can gain more;
//! root keeps the default set as effective and permitted capabilities; any other user has
//! none (the kernel clears them at `setuid`). Inheritable and ambient sets are empty, as in
//! Docker since its CVE-2022-24769 fix.

use std::io;

use rustix::thread::{CapabilitySet, CapabilitySets};

/// Docker's (and BuildKit's) default capabilities.
pub(crate) const DEFAULT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// Cuts the bounding set to the default set, every capability the running kernel has
/// included (by number, so ones newer than this build go too). Needs `CAP_SETPCAP`, so it
/// runs before the user switch.
pub(crate) fn restrict_bounding_set() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
    let last: u32 = last
        .trim()
        .parse()
        .map_err(|error| io::Error::other(format!("/proc/sys/kernel/cap_last_cap: {error}")))?;
    for number in 0..=last.min(63) {
        let capability = CapabilitySet::from_bits_retain(1 << number);
        if !DEFAULT_CAPABILITIES.contains(capability) {
            rustix::thread::remove_capability_from_bounding_set(capability)?;
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    Ok(())
}

/// Sets the process's own sets after the user switch: the default set for uid 0, nothing for
/// anyone else.
pub(crate) fn set_process_capabilities(uid: u32) -> io::Result<()> {
    let granted = if uid == 0 {
        DEFAULT_CAPABILITIES
    } else {
        CapabilitySet::empty()
    };
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: granted,
            permitted: granted,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_matches_dockers_bitmask() {
        // `CapBnd` of a default `docker run` as /proc/self/status shows it.
        assert_eq!(DEFAULT_CAPABILITIES.bits(), 0x0000_0000_a804_25fb);
    }
}

//! A real `ssh-agent` holding a new key, and the host's `ssh-add` laid out for a container, for
//! the `RUN --mount=type=ssh` tests (local and remote builds).

use super::{run, stdout, tool};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host's `ssh-add` with the shared libraries it loads, laid out as a root filesystem.
pub fn ssh_add_rootfs(dest: &Path) -> Option<()> {
    let ssh_add = tool("ssh-add")?;
    let ldd = run(Command::new("ldd").arg(&ssh_add));
    let mut files = vec![ssh_add];
    files.extend(
        stdout(&ldd)
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(PathBuf::from),
    );
    for file in files {
        let target = dest.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
    Some(())
}

/// A running `ssh-agent` holding one new key; killed on drop.
pub struct Agent {
    pub socket: PathBuf,
    pid: String,
    /// What `ssh-add -l` prints for it.
    pub fingerprint: String,
}

impl Agent {
    pub fn start(dir: &Path) -> Option<Agent> {
        let agent = tool("ssh-agent")?;
        let keygen = tool("ssh-keygen")?;
        let socket = dir.join("agent.sock");
        let started = run(Command::new(agent).arg("-a").arg(&socket).arg("-s"));
        let pid = stdout(&started)
            .split(';')
            .find_map(|part| {
                part.trim()
                    .strip_prefix("SSH_AGENT_PID=")
                    .map(str::to_string)
            })
            .expect("ssh-agent prints its pid");
        let key = dir.join("id_ed25519");
        run(Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "imgb-test-key", "-f"])
            .arg(&key));
        let mut agent = Agent {
            socket,
            pid,
            fingerprint: String::new(),
        };
        run(Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent.socket));
        let listed = run(Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &agent.socket));
        agent.fingerprint = stdout(&listed);
        Some(agent)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

//! Where the state directory lives when the user does not say.
//!
//! Order: `--root`, then `IMGB_ROOT`, then `/var/lib/imgb` for root, else
//! `$XDG_DATA_HOME/imgb`, else `$HOME/.local/share/imgb`. [`RootEnv::resolve`] is a pure function
//! of the captured values so every branch is testable; [`RootEnv::from_process`] captures them.
//! Empty values count as unset, and a relative `XDG_DATA_HOME` or `HOME` is ignored (the XDG
//! base directory spec says relative paths there are invalid).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

const SYSTEM_ROOT: &str = "/var/lib/imgb";

/// The inputs to default root resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootEnv {
    /// The `--root` flag.
    pub flag: Option<PathBuf>,
    /// `IMGB_ROOT`.
    pub imgb_root: Option<OsString>,
    /// Whether the effective user is root.
    pub is_root: bool,
    /// `XDG_DATA_HOME`.
    pub xdg_data_home: Option<OsString>,
    /// `HOME`.
    pub home: Option<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot choose a state directory: HOME is unset or not absolute and XDG_DATA_HOME is unusable \
     (hint: pass --root or set IMGB_ROOT)"
)]
pub struct NoRootError;

impl RootEnv {
    /// Captures the flag, the environment and the effective user of this process.
    pub fn from_process(flag: Option<PathBuf>) -> Self {
        Self {
            flag,
            imgb_root: std::env::var_os("IMGB_ROOT"),
            is_root: rustix::process::geteuid().is_root(),
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
        }
    }

    /// The state directory these inputs select.
    pub fn resolve(&self) -> Result<PathBuf, NoRootError> {
        if let Some(flag) = self.flag.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            return Ok(flag.clone());
        }
        if let Some(root) = non_empty(&self.imgb_root) {
            return Ok(PathBuf::from(root));
        }
        if self.is_root {
            return Ok(PathBuf::from(SYSTEM_ROOT));
        }
        if let Some(data) = absolute(&self.xdg_data_home) {
            return Ok(data.join("imgb"));
        }
        if let Some(home) = absolute(&self.home) {
            return Ok(home.join(".local/share/imgb"));
        }
        Err(NoRootError)
    }
}

fn non_empty(value: &Option<OsString>) -> Option<&OsString> {
    value.as_ref().filter(|v| !v.is_empty())
}

fn absolute(value: &Option<OsString>) -> Option<&Path> {
    non_empty(value)
        .map(Path::new)
        .filter(|path| path.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> RootEnv {
        RootEnv {
            flag: None,
            imgb_root: None,
            is_root: false,
            xdg_data_home: Some("/home/u/.data".into()),
            home: Some("/home/u".into()),
        }
    }

    #[test]
    fn flag_wins_over_everything() {
        let env = RootEnv {
            flag: Some("/flag".into()),
            imgb_root: Some("/env".into()),
            is_root: true,
            ..env()
        };
        assert_eq!(env.resolve().unwrap(), Path::new("/flag"));
    }

    #[test]
    fn imgb_root_wins_over_user_defaults() {
        let env = RootEnv {
            imgb_root: Some("/env".into()),
            is_root: true,
            ..env()
        };
        assert_eq!(env.resolve().unwrap(), Path::new("/env"));
    }

    #[test]
    fn root_user_gets_system_directory() {
        let env = RootEnv {
            is_root: true,
            ..env()
        };
        assert_eq!(env.resolve().unwrap(), Path::new("/var/lib/imgb"));
    }

    #[test]
    fn rootless_prefers_xdg_data_home_then_home() {
        assert_eq!(env().resolve().unwrap(), Path::new("/home/u/.data/imgb"));
        let without_xdg = RootEnv {
            xdg_data_home: None,
            ..env()
        };
        assert_eq!(
            without_xdg.resolve().unwrap(),
            Path::new("/home/u/.local/share/imgb")
        );
    }

    #[test]
    fn empty_and_relative_values_count_as_unset() {
        let env = RootEnv {
            flag: Some(PathBuf::new()),
            imgb_root: Some("".into()),
            xdg_data_home: Some("relative/data".into()),
            ..env()
        };
        assert_eq!(
            env.resolve().unwrap(),
            Path::new("/home/u/.local/share/imgb")
        );
    }

    #[test]
    fn no_usable_home_is_an_error_with_hint() {
        let env = RootEnv {
            xdg_data_home: None,
            home: Some("".into()),
            ..env()
        };
        let error = env.resolve().unwrap_err();
        assert!(error.to_string().contains("--root"));
    }
}

//! `imgb run`: a command in an ephemeral container made from an image in the store, as
//! `docker run --rm` does (entrypoint, cmd, env, user and working directory from the image's
//! config, overridable by flags); output streamed, exit code returned, nothing kept.
//!
//! The container is the builder's step container (`imgb-runner`), with the image's layer
//! snapshots as its read-only layers. Standard input is not connected. Ctrl-C kills the whole
//! container. Exit codes follow `docker run`: the command's own, 128+N when a signal N killed
//! it, 125 when the container could not be set up.

use crate::commands::build::RunLimitArgs;
use crate::commands::registry::{RegistryArgs, fetch_layers};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::commands::open_leased_store;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use imgb_cache::oci::ContainerConfig;
use imgb_runner::{
    InitProgram, Network, OutputLine, OutputStream, RunError, RunSpec, RunStatus, Runner,
};
use tokio::sync::mpsc;

/// The hidden subcommand the runner re-executes imgb with.
pub const INIT_SUBCOMMAND: &str = "__init";

/// `docker run`'s code for "the container could not be started".
const SETUP_FAILED: u8 = 125;
/// What a shell reports for Ctrl-C.
const INTERRUPTED: u8 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// The host's network (what `default` means).
    Default,
    /// An own network namespace with only the loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The container's network.
    #[arg(long, value_enum, default_value_t = NetworkArg::Default)]
    network: NetworkArg,
    /// `user[:group]` (names or ids) instead of the image's user.
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// The working directory instead of the image's (created if missing).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Set an environment variable (`KEY=VALUE`, or `KEY` to pass imgb's own value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Accepted for `docker run` compatibility: the container is always removed.
    #[arg(long)]
    rm: bool,
    /// The image: a name, `name@sha256:...`, `sha256:...` or an image ID prefix.
    image: String,
    /// The command and its arguments (after `--`); default: the image's entrypoint and cmd.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    limits: RunLimitArgs,
}

pub fn run(root: Option<PathBuf>, args: &RunArgs) -> Result<ExitCode> {
    let store = open_leased_store(root, "run")?;
    let (_, image) = store.find_image(&args.image).with_context(|| {
        format!(
            "finding image {:?} (hint: `imgb images` lists them; `imgb load` adds one)",
            args.image
        )
    })?;
    // A pulled image's layers are fetched when first needed.
    fetch_layers(&args.registry, &store, &image)?;
    let lower_dirs = store
        .ensure_image_snapshots(&image)
        .with_context(|| format!("unpacking the layers of {}", args.image))?;
    let config = image.config.config.unwrap_or_default();
    let spec = run_spec(lower_dirs, &config, args, |key| std::env::var(key).ok())?;
    let runner = Runner::new(store.tmp_dir(), InitProgram::this_binary(INIT_SUBCOMMAND))
        .with_limits(args.limits.limits());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run_streaming(&runner, &spec, async {
        // On error nobody can press Ctrl-C usefully anyway: never cancel then.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }));
    match result {
        Ok(status) => Ok(ExitCode::from(exit_code(status))),
        Err(RunError::Setup(message)) => {
            eprintln!("imgb run: {message}");
            Ok(ExitCode::from(SETUP_FAILED))
        }
        Err(error) => Err(error).context("running the container"),
    }
}

/// The container spec from the image's config and the flags, as `docker run` combines them.
fn run_spec(
    lower_dirs: Vec<PathBuf>,
    config: &ContainerConfig,
    args: &RunArgs,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<RunSpec> {
    let entrypoint = config.entrypoint.clone().unwrap_or_default();
    let command = if args.command.is_empty() {
        config.cmd.clone().unwrap_or_default()
    } else {
        args.command.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(command).collect();
    if argv.is_empty() {
        bail!(
            "the image {} has no entrypoint or cmd: give a command after `--`",
            args.image
        );
    }
    let mut spec = RunSpec::new(lower_dirs, argv);
    spec.env = config.env.clone();
    for pair in &args.env {
        let pair = match pair.split_once('=') {
            Some(_) => pair.clone(),
            None => match host_env(pair) {
                Some(value) => format!("{pair}={value}"),
                // Docker leaves a variable that imgb itself lacks unset.
                None => continue,
            },
        };
        set_env(&mut spec.env, pair);
    }
    spec.user = args
        .user
        .clone()
        .or_else(|| config.user.clone())
        .unwrap_or_default();
    spec.cwd = args
        .workdir
        .clone()
        .or_else(|| config.working_dir.clone())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_string());
    spec.network = match args.network {
        NetworkArg::Default => Network::DEFAULT,
        NetworkArg::None => Network::None,
        NetworkArg::Host => Network::Host,
    };
    Ok(spec)
}

/// Replaces `KEY=...` in `env`, or appends it.
fn set_env(env: &mut Vec<String>, pair: String) {
    let key = pair.split_once('=').map_or(pair.as_str(), |(key, _)| key);
    let prefix = format!("{key}=");
    match env
        .iter_mut()
        .find(|existing| existing.starts_with(&prefix))
    {
        Some(existing) => *existing = pair,
        None => env.push(pair),
    }
}

/// Runs the container, copying its output lines to ours as they come.
async fn run_streaming(
    runner: &Runner,
    spec: &RunSpec,
    cancel: impl Future<Output = ()>,
) -> Result<RunStatus, RunError> {
    let (sender, mut receiver) = mpsc::channel::<OutputLine>(256);
    let print = async move {
        while let Some(line) = receiver.recv().await {
            // A closed stdout (`imgb run ... | head`) must not stop the container early.
            let _ = match line.stream {
                OutputStream::Stdout => std::io::stdout().write_all(&line.line),
                OutputStream::Stderr => std::io::stderr().write_all(&line.line),
            };
        }
        let _ = std::io::stdout().flush();
    };
    let (outcome, ()) = tokio::join!(runner.run(spec, sender, cancel), print);
    Ok(outcome?.status)
}

fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Exited(code) => u8::try_from(code).unwrap_or(1),
        RunStatus::Signaled(signal) => u8::try_from(128 + signal).unwrap_or(1),
        RunStatus::TimedOut | RunStatus::Cancelled => INTERRUPTED,
        // As a shell reports a command the kernel killed (SIGKILL).
        RunStatus::LimitExceeded(_) => 137,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(line: &[&str]) -> RunArgs {
        Cli::parse_from(std::iter::once("run").chain(line.iter().copied())).run
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            user: Some("app".into()),
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            working_dir: Some("/srv".into()),
            ..ContainerConfig::default()
        }
    }

    #[test]
    fn image_config_gives_the_defaults() {
        let spec = run_spec(vec![], &config(), &args(&["img"]), |_| None).unwrap();
        assert_eq!(spec.argv, ["/entry", "default"]);
        assert_eq!(spec.user, "app");
        assert_eq!(spec.cwd, "/srv");
        assert_eq!(spec.env, ["PATH=/bin", "MODE=image"]);
        assert_eq!(spec.network, Network::DEFAULT);
    }

    #[test]
    fn flags_override_like_docker_run() {
        let line = [
            "--network",
            "none",
            "-u",
            "0:0",
            "-w",
            "/tmp",
            "-e",
            "MODE=flag",
            "-e",
            "HOSTVAR",
            "-e",
            "UNSET",
            "--rm",
            "img",
            "--",
            "sh",
            "-c",
            "true",
        ];
        let host = |key: &str| (key == "HOSTVAR").then(|| "from-host".to_string());
        let spec = run_spec(vec![], &config(), &args(&line), host).unwrap();
        // A command replaces cmd but keeps the entrypoint.
        assert_eq!(spec.argv, ["/entry", "sh", "-c", "true"]);
        assert_eq!(spec.user, "0:0");
        assert_eq!(spec.cwd, "/tmp");
        assert_eq!(spec.env, ["PATH=/bin", "MODE=flag", "HOSTVAR=from-host"]);
        assert_eq!(spec.network, Network::None);
    }

    #[test]
    fn image_without_a_command_needs_one() {
        let error = run_spec(vec![], &ContainerConfig::default(), &args(&["img"]), |_| {
            None
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("give a command after `--`"),
            "{error}"
        );
    }

    #[test]
    fn signals_and_kills_map_to_docker_exit_codes() {
        assert_eq!(exit_code(RunStatus::Exited(3)), 3);
        assert_eq!(exit_code(RunStatus::Signaled(9)), 137);
        assert_eq!(exit_code(RunStatus::Cancelled), 130);
    }
}

//! Argument parsing and dispatch. Users come from `docker buildx build`, so flags follow it.

use crate::check::{self, CheckArgs};
use crate::commands::build::{self, BuildArgs};
use crate::commands::images::{self, DuArgs, ImagesArgs, InspectArgs, LoadArgs, RmArgs, SaveArgs};
use crate::commands::prune::{self, PruneArgs};
use crate::commands::registry::{self, LoginArgs, LogoutArgs, PullArgs, PushArgs};
use crate::commands::run::{self, RunArgs};
use crate::serve::{self, ServeArgs};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use imgb_builder::context::{Symlinks, open_beneath};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "imgb",
    version,
    about = "A fast, daemonless container image builder"
)]
struct Cli {
    /// The state directory (images, cache, snapshots).
    #[arg(long, global = true, env = "IMGB_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile.
    Build(Box<BuildArgs>),
    /// Check a Dockerfile: parse, validate and run the lint checks, without building.
    Check(CheckArgs),
    /// Tools for looking inside imgb.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Load images from an OCI layout or docker-archive tar (docker/podman save, skopeo).
    Load(LoadArgs),
    /// Export an image: OCI layout, docker-archive, root filesystem directory or tar.
    Save(SaveArgs),
    /// List images: names, digests, sizes, creation times.
    Images(ImagesArgs),
    /// Show an image's manifest, config and history as JSON.
    Inspect(InspectArgs),
    /// Show the state directory's disk usage by kind.
    Du(DuArgs),
    /// Remove image names (the content goes at the next prune).
    Rm(RmArgs),
    /// Pull an image (manifest, config and layers) from its registry into the store.
    Pull(PullArgs),
    /// Push a stored image to a registry: `imgb push NAME [DEST...]`.
    Push(PushArgs),
    /// Store credentials for a registry (checked first) in imgb's auth file.
    Login(LoginArgs),
    /// Remove a registry's credentials from imgb's auth file.
    Logout(LogoutArgs),
    /// Remove build cache: what named images do not use, or all of it (`--all`).
    Prune(PruneArgs),
    /// Run a command in an ephemeral container from an image (nothing is kept).
    Run(RunArgs),
    /// Serve builds and the shared build cache over HTTP (a unix socket by default).
    Serve(Box<ServeArgs>),
    /// The container init stages, which the runner re-executes imgb with.
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Print a Dockerfile's parse tree in BuildKit's dump format.
    DumpAst {
        /// The Dockerfile (`-` for standard input).
        file: PathBuf,
    },
}

pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Build(args) => build::run(cli.root, &args),
        Command::Check(args) => check::run(&args),
        Command::Debug(DebugCommand::DumpAst { file }) => dump_ast(&file),
        Command::Load(args) => images::load(cli.root, &args),
        Command::Save(args) => images::save(cli.root, &args),
        Command::Images(args) => images::images(cli.root, &args),
        Command::Inspect(args) => images::inspect(cli.root, &args),
        Command::Rm(args) => images::rm(cli.root, &args),
        Command::Du(args) => images::du(cli.root, &args),
        Command::Prune(args) => prune::prune(cli.root, &args),
        Command::Run(args) => run::run(cli.root, &args),
        Command::Serve(args) => serve::run(cli.root, &args),
        Command::Pull(args) => registry::pull(cli.root, &args),
        Command::Push(args) => registry::push(cli.root, &args),
        Command::Login(args) => registry::login(&args),
        Command::Logout(args) => registry::logout(&args),
        Command::Init { args } => Ok(imgb_runner::init::main(&args)),
    }
}

/// Reads a Dockerfile (`-` = stdin) and names the file in the error when it cannot.
pub(crate) fn read_dockerfile(path: &Path) -> Result<(String, String)> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the Dockerfile from stdin")?;
        return Ok(("<stdin>".to_string(), text));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_dockerfile(path, bytes)
}

/// The context's own `Dockerfile` (no `-f`): it may be a symlink to another file of the
/// context, never out of it, so that an untrusted context cannot make imgb read (and quote in
/// its errors) a file of the host.
pub(crate) fn read_context_dockerfile(context: &Path) -> Result<(String, String)> {
    let path = context.join("Dockerfile");
    let mut bytes = Vec::new();
    open_beneath(context, Path::new("Dockerfile"), Symlinks::Inside)
        .and_then(|mut file| std::io::Read::read_to_end(&mut file, &mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    decode_dockerfile(&path, bytes)
}

fn decode_dockerfile(path: &Path, bytes: Vec<u8>) -> Result<(String, String)> {
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!(
            "{}:{line}: the Dockerfile is not valid UTF-8",
            path.display()
        )
    })?;
    Ok((path.display().to_string(), text))
}

fn dump_ast(path: &Path) -> Result<ExitCode> {
    let (name, source) = read_dockerfile(path)?;
    match imgb_frontend::parser::parse(&source) {
        Ok(ast) => {
            print!("{}", ast.dump());
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostic) => {
            eprintln!("{}", diagnostic.with_source(&name, &source));
            Ok(ExitCode::FAILURE)
        }
    }
}

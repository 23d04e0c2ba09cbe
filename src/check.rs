//! `imgb check`: everything `imgb build` validates before it runs a step, plus the lint checks.

use crate::cli::{read_context_dockerfile, read_dockerfile};
use anyhow::{Result, bail};
use clap::Args;
use imgb_builder::context::{Symlinks, open_beneath};
use imgb_frontend::Diagnostic;
use imgb_frontend::ignore::{IgnoreRules, find_ignore_file};
use imgb_frontend::lint;
use imgb_frontend::plan::{BuildOptions, Dockerfile};
use imgb_frontend::platform::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The frontend options shared by `imgb build` and `imgb check`.
#[derive(Debug, Args)]
pub struct FrontendArgs {
    /// The Dockerfile (default: PATH/Dockerfile; `-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// The target platform (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// The build context.
    #[arg(default_value = ".")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub frontend: FrontendArgs,
}

/// A Dockerfile read and validated, with the options it was planned under.
pub struct LoadedDockerfile {
    pub name: String,
    pub source: String,
    pub dockerfile: Dockerfile,
    pub options: BuildOptions,
    pub ignore: Option<IgnoreRules>,
    /// The build context directory.
    pub context: PathBuf,
}

impl FrontendArgs {
    /// [`FrontendArgs::try_load`], printing the failure.
    pub fn load(&self) -> Result<LoadedDockerfile, ExitCode> {
        self.try_load().map_err(|text| {
            eprintln!("{text}");
            ExitCode::FAILURE
        })
    }

    /// Reads and parses the Dockerfile with its `.dockerignore`; a failure comes back in words
    /// (a diagnostic with its excerpt, or `error: ...`).
    pub fn try_load(&self) -> Result<LoadedDockerfile, String> {
        let report = |error: anyhow::Error| format!("error: {error:#}");
        let (path, read) = match &self.file {
            Some(file) => (file.clone(), read_dockerfile(file)),
            None => (
                self.path.join("Dockerfile"),
                read_context_dockerfile(&self.path),
            ),
        };
        let (name, source) = read.map_err(report)?;
        let options = self.build_options().map_err(report)?;
        let dockerfile =
            Dockerfile::parse(&name, &source).map_err(|diagnostic| diagnostic.to_string())?;
        let ignore = self.ignore_rules(&path).map_err(report)?;
        Ok(LoadedDockerfile {
            name,
            source,
            dockerfile,
            options,
            ignore,
            context: self.path.clone(),
        })
    }

    fn build_options(&self) -> Result<BuildOptions> {
        let mut build_args = BTreeMap::new();
        for arg in &self.build_args {
            let (key, value) = match arg.split_once('=') {
                Some((key, value)) => (key, Some(value.to_string())),
                None => (arg.as_str(), std::env::var(arg).ok()),
            };
            if key.is_empty() {
                bail!("--build-arg {arg:?}: the name is empty; write --build-arg KEY=VALUE");
            }
            // `--build-arg KEY` with KEY unset in the environment sets nothing, as in Docker.
            if let Some(value) = value {
                build_args.insert(key.to_string(), value);
            }
        }
        let mut options = BuildOptions {
            build_args,
            target: self.target.clone(),
            ..BuildOptions::default()
        };
        if let Some(platform) = &self.platform {
            options.target_platform = Platform::parse(platform)
                .map_err(|error| anyhow::anyhow!("--platform {platform}: {error}"))?;
        }
        Ok(options)
    }

    fn ignore_rules(&self, dockerfile: &Path) -> Result<Option<IgnoreRules>> {
        let dockerfile = (dockerfile != Path::new("-")).then_some(dockerfile);
        let Some(file) = find_ignore_file(&self.path, dockerfile.unwrap_or(Path::new("")))? else {
            return Ok(None);
        };
        // An ignore file in the context may not lead out of it (an untrusted context); one
        // beside a `-f` Dockerfile elsewhere is the user's own choice.
        let read = match file.strip_prefix(&self.path) {
            Ok(relative) => open_beneath(&self.path, relative, Symlinks::Inside)
                .and_then(std::io::read_to_string),
            Err(_) => std::fs::read_to_string(&file),
        };
        let text = read.map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        let rules = IgnoreRules::parse(&text).map_err(|error| {
            let diagnostic: Diagnostic = error.into();
            anyhow::anyhow!(
                "{}",
                diagnostic.with_source(&file.display().to_string(), &text)
            )
        })?;
        Ok(Some(rules))
    }
}

fn print_diagnostic(diagnostic: &Diagnostic) -> ExitCode {
    eprintln!("{diagnostic}");
    ExitCode::FAILURE
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let loaded = match args.frontend.load() {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let checked = lint::check(
        &loaded.dockerfile,
        &loaded.options,
        loaded.ignore.as_ref(),
        &mut |_| None,
    );
    let (warnings, _config) = match checked {
        Ok(result) => result,
        Err(diagnostic) => {
            return Ok(print_diagnostic(
                &diagnostic.with_source(&loaded.name, &loaded.source),
            ));
        }
    };
    for warning in &warnings {
        eprintln!(
            "{}\n",
            warning.clone().with_source(&loaded.name, &loaded.source)
        );
    }
    if warnings.is_empty() {
        eprintln!("Check complete, no warnings found.");
        Ok(ExitCode::SUCCESS)
    } else {
        let plural = if warnings.len() == 1 { "" } else { "s" };
        eprintln!("Check complete, {} warning{plural} found.", warnings.len());
        Ok(ExitCode::FAILURE)
    }
}

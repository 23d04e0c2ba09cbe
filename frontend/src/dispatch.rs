//! Dispatching a planned stage: its instructions in order, each expanded with the environment in
//! effect at that point (the base image's ENV, then the stage's ENV and ARG values), producing
//! the image config the stage ends with and the steps that change the filesystem.
//!
//! The semantics are BuildKit's: an ARG's value is its `--build-arg`, else its expanded default,
//! else the global ARG of the same name; ENV and ARG values both enter the environment of later
//! instructions, ENV values also the image config; all words of one ENV see the environment
//! from before it; ENTRYPOINT clears a CMD inherited from the base; a stage based on another
//! stage inherits its environment and ARG values.
//!
//! Invariants: no I/O; build args never enter the image config; every error names its line.

use crate::diagnostic::Diagnostic;
use crate::history;
use crate::instructions::{CommandForm, Healthcheck, Instruction, Origin, parse_instruction};
use crate::lower::run_argv;
use crate::plan::{BuildOptions, BuildPlan, Dockerfile, PROXY_ARGS};
use crate::shell::{Lexer, ShellError};
use std::collections::{BTreeMap, BTreeSet};

/// The default `PATH` when the base image sets none (BuildKit's Linux default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config that Dockerfile instructions read and write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `KEY=value` pairs in order.
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub user: String,
    /// Empty means the default `/bin/sh -c`.
    pub shell: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    /// ONBUILD triggers recorded for images built on this one.
    pub on_build: Vec<String>,
    /// MAINTAINER.
    pub author: Option<String>,
}

/// What a stage starts from: the base image's config, or the end state of a base stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageStart {
    pub config: ImageConfig,
    /// The environment instructions see: the config's ENV plus ARG values.
    pub env: Vec<(String, String)>,
    /// ARG values in effect (a base stage's are inherited).
    pub args: Vec<(String, String)>,
}

impl StageStart {
    /// The start of a stage built on an image with this config.
    pub fn from_image(config: ImageConfig) -> StageStart {
        StageStart {
            env: config.env.clone(),
            config,
            args: Vec::new(),
        }
    }
}

/// An instruction that changes the filesystem (RUN, COPY, ADD, WORKDIR), expanded, with the
/// state the builder needs to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub instruction: Instruction,
    /// The environment of a RUN: image ENV, ARG values and the proxy build args.
    pub env: Vec<(String, String)>,
    /// The ARG values in effect: part of the cache key of a RUN.
    pub args: Vec<(String, String)>,
    pub working_dir: String,
    pub user: String,
    pub shell: Vec<String>,
}

/// A stage after dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchedStage {
    pub steps: Vec<Step>,
    /// Where the stage ends: its image config, environment and ARG values.
    pub end: StageStart,
    /// `created_by` of every instruction that makes a history entry, in order, with whether it
    /// made a layer.
    pub history: Vec<(String, bool)>,
    pub warnings: Vec<Diagnostic>,
}

impl BuildPlan {
    /// Dispatches stage `index` from `start` (the base image's config, or the end of the base
    /// stage's dispatch).
    pub fn dispatch(
        &self,
        dockerfile: &Dockerfile,
        index: usize,
        start: StageStart,
        options: &BuildOptions,
    ) -> Result<DispatchedStage, Diagnostic> {
        let stage = &dockerfile.stages[index];
        let lexer = Lexer::new(dockerfile.ast.escape);
        let mut state = start;
        if !state.config.env.iter().any(|(key, _)| key == "PATH") {
            set_var(&mut state.config.env, "PATH", DEFAULT_PATH);
            set_var(&mut state.env, "PATH", DEFAULT_PATH);
        }
        let cmd_inherited = state.config.cmd.is_some();
        let mut cmd_set_here = false;
        let mut declared: BTreeSet<String> =
            state.args.iter().map(|(key, _)| key.clone()).collect();
        // The stage's ARG names in declaration order (a base stage's first), for RUN history.
        let mut stage_args: Vec<String> = state.args.iter().map(|(key, _)| key.clone()).collect();
        let mut out = DispatchedStage {
            steps: Vec::new(),
            end: StageStart::default(),
            history: Vec::new(),
            warnings: Vec::new(),
        };

        // The base's ONBUILD triggers run first, and are not passed on (BuildKit clears them).
        let triggers = onbuild_triggers(
            &std::mem::take(&mut state.config.on_build),
            dockerfile.ast.escape,
            &stage.from.origin,
        )?;
        for original in triggers.iter().chain(&stage.instructions) {
            let mut instruction = original.clone();
            if let Instruction::Arg(arg) = &instruction {
                let mut committed = Vec::new();
                for definition in &arg.args {
                    declared.insert(definition.name.clone());
                    if !stage_args.contains(&definition.name) {
                        stage_args.push(definition.name.clone());
                    }
                    let value = match (
                        options.build_args.get(&definition.name),
                        &definition.default,
                    ) {
                        (Some(value), _) => Some(value.clone()),
                        (None, Some(default)) => {
                            let expansion = lexer
                                .expand_word(default, &state.env[..])
                                .map_err(|e| shell_error(e, &instruction))?;
                            report_undefined(
                                &expansion.unmatched,
                                &declared,
                                &instruction,
                                &mut out.warnings,
                            );
                            Some(expansion.value)
                        }
                        (None, None) => self.global_arg(&definition.name).map(str::to_string),
                    };
                    // BuildKit records the value the ARG resolved to.
                    committed.push(match &value {
                        Some(value) => format!("{}={value}", definition.name),
                        None => definition.name.clone(),
                    });
                    if let Some(value) = value {
                        set_var(&mut state.env, &definition.name, &value);
                        set_var(&mut state.args, &definition.name, &value);
                    }
                }
                out.history
                    .push((format!("ARG {}", committed.join(" ")), false));
                continue;
            }

            let env = state.env.clone();
            let mut warnings = Vec::new();
            let mut expander = |word: &str| -> Result<String, Diagnostic> {
                let expansion = lexer
                    .expand_word(word, &env[..])
                    .map_err(|e| Diagnostic::error(e.to_string()))?;
                report_undefined(&expansion.unmatched, &declared, original, &mut warnings);
                Ok(expansion.value)
            };
            instruction.expand(&mut expander)?;
            // Heredoc sources keep their quotes, as BuildKit's raw expansion does.
            let raw_lexer = Lexer::new('\\').skip_process_quotes(true);
            let mut raw_expander = |word: &str| -> Result<String, Diagnostic> {
                let expansion = raw_lexer
                    .expand_word(word, &env[..])
                    .map_err(|e| Diagnostic::error(e.to_string()))?;
                Ok(expansion.value)
            };
            match &mut instruction {
                Instruction::Copy(copy) => copy
                    .files
                    .expand_inline_sources(&copy.origin, &mut raw_expander)?,
                Instruction::Add(add) => add
                    .files
                    .expand_inline_sources(&add.origin, &mut raw_expander)?,
                _ => {}
            }
            out.warnings.append(&mut warnings);

            let config = &mut state.config;
            let origin_code = instruction.origin().code.clone();
            match &instruction {
                Instruction::Env(env_instruction) => {
                    for var in &env_instruction.vars {
                        set_var(&mut config.env, &var.key, &var.value);
                        set_var(&mut state.env, &var.key, &var.value);
                    }
                    out.history
                        .push((history::key_values("ENV", &env_instruction.vars), false));
                }
                Instruction::Label(label) => {
                    for pair in &label.labels {
                        config.labels.insert(pair.key.clone(), pair.value.clone());
                    }
                    out.history
                        .push((history::key_values("LABEL", &label.labels), false));
                }
                Instruction::Maintainer(maintainer) => {
                    config.author = Some(maintainer.maintainer.clone());
                    out.history
                        .push((format!("MAINTAINER {}", maintainer.maintainer), false));
                }
                Instruction::Expose(expose) => {
                    config.exposed_ports.extend(expose.ports.iter().cloned());
                    out.history.push((origin_code, false));
                }
                Instruction::Volume(volume) => {
                    config.volumes.extend(volume.volumes.iter().cloned());
                    out.history.push((
                        format!("VOLUME {}", history::go_list(&volume.volumes)),
                        false,
                    ));
                }
                Instruction::User(user) => {
                    config.user = user.user.clone();
                    out.history.push((format!("USER {}", user.user), false));
                }
                Instruction::StopSignal(signal) => {
                    config.stop_signal = Some(signal.signal.clone());
                    out.history
                        .push((format!("STOPSIGNAL {}", signal.signal), false));
                }
                Instruction::Shell(shell) => {
                    config.shell = shell.shell.clone();
                    out.history
                        .push((format!("SHELL {}", history::go_list(&shell.shell)), false));
                }
                Instruction::Onbuild(onbuild) => {
                    // BuildKit records a trigger in the config only, not in the history.
                    config.on_build.push(onbuild.expression.clone());
                }
                Instruction::Healthcheck(healthcheck) => {
                    config.healthcheck = Some(healthcheck.health.clone());
                    out.history.push((origin_code, false));
                }
                Instruction::Cmd(cmd) => {
                    let argv = command_argv(&cmd.command.args, cmd.command.form, &config.shell);
                    out.history
                        .push((format!("CMD {}", history::go_quoted_list(&argv)), false));
                    config.cmd = Some(argv);
                    cmd_set_here = true;
                }
                Instruction::Entrypoint(entrypoint) => {
                    let argv = command_argv(
                        &entrypoint.command.args,
                        entrypoint.command.form,
                        &config.shell,
                    );
                    out.history.push((
                        format!("ENTRYPOINT {}", history::go_quoted_list(&argv)),
                        false,
                    ));
                    config.entrypoint = Some(argv);
                    if cmd_inherited && !cmd_set_here {
                        config.cmd = None;
                    }
                }
                Instruction::Workdir(workdir) => {
                    config.working_dir = resolve_workdir(&config.working_dir, &workdir.path);
                    // As BuildKit: the root always exists, so `WORKDIR /` makes no layer.
                    let makes_layer = config.working_dir != "/";
                    out.history
                        .push((format!("WORKDIR {}", config.working_dir), makes_layer));
                    if makes_layer {
                        out.steps.push(step(instruction.clone(), &state, options));
                    }
                }
                Instruction::Run(run) => {
                    let step = step(instruction.clone(), &state, options);
                    let (argv, _) = run_argv(
                        &step,
                        &run.command.args,
                        run.command.prepends_shell(),
                        &run.command.files,
                    )?;
                    let build_args: Vec<(String, String)> = stage_args
                        .iter()
                        .map(|name| {
                            let value = state
                                .env
                                .iter()
                                .find(|(key, _)| key == name)
                                .map(|(_, value)| value.clone())
                                .unwrap_or_default();
                            (name.clone(), value)
                        })
                        .collect();
                    out.history.push((history::run(&argv, &build_args), true));
                    out.steps.push(step);
                }
                Instruction::Copy(copy) => {
                    out.history.push((
                        history::transfer("COPY", &copy.files, &copy.options, copy.parents),
                        true,
                    ));
                    out.steps.push(step(instruction.clone(), &state, options));
                }
                Instruction::Add(add) => {
                    out.history.push((
                        history::transfer("ADD", &add.files, &add.options, false),
                        true,
                    ));
                    out.steps.push(step(instruction.clone(), &state, options));
                }
                Instruction::Arg(_) | Instruction::From(_) => {}
            }
        }
        out.end = state;
        Ok(out)
    }
}

fn step(instruction: Instruction, state: &StageStart, options: &BuildOptions) -> Step {
    let mut env = state.env.clone();
    for name in PROXY_ARGS {
        if let Some(value) = options.build_args.get(name)
            && !env.iter().any(|(key, _)| key == name)
        {
            env.push((name.to_string(), value.clone()));
        }
    }
    Step {
        instruction,
        env,
        args: state.args.clone(),
        working_dir: state.config.working_dir.clone(),
        user: state.config.user.clone(),
        shell: state.config.shell.clone(),
    }
}

/// Sets `key` in an ordered environment, replacing an earlier value in place.
fn set_var(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(existing, _)| existing == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// CMD/ENTRYPOINT argv: exec form as is, shell form wrapped in the stage's SHELL.
fn command_argv(args: &[String], form: CommandForm, shell: &[String]) -> Vec<String> {
    match form {
        CommandForm::Exec => args.to_vec(),
        CommandForm::Shell => {
            let mut argv: Vec<String> = if shell.is_empty() {
                vec!["/bin/sh".into(), "-c".into()]
            } else {
                shell.to_vec()
            };
            argv.push(args.join(" "));
            argv
        }
    }
}

/// WORKDIR: relative paths resolve against the current working directory; the result is clean
/// and absolute.
pub fn resolve_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", if current.is_empty() { "/" } else { current })
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A base's ONBUILD triggers as instructions, as BuildKit's `dispatchOnBuildTriggers` parses
/// them: each must be one instruction, with ONBUILD's own rules (no ONBUILD, FROM or
/// MAINTAINER), read with the Dockerfile's escape character. They are located at the stage's
/// FROM line, where the Dockerfile brings them in.
fn onbuild_triggers(
    triggers: &[String],
    escape: char,
    from: &Origin,
) -> Result<Vec<Instruction>, Diagnostic> {
    let at_from = |error: Diagnostic| {
        Diagnostic::error(format!(
            "ONBUILD trigger of the base image: {}",
            error.message
        ))
        .at(crate::diagnostic::Span::lines(
            from.start_line,
            from.end_line,
        ))
    };
    triggers
        .iter()
        .map(|trigger| {
            let directive = if escape == '\\' {
                String::new()
            } else {
                format!("# escape={escape}\n")
            };
            // Parsed as the ONBUILD line it came from, so ONBUILD's rules apply to it.
            let ast = crate::parser::parse(&format!("{directive}ONBUILD {trigger}\n"))
                .map_err(at_from)?;
            let [node] = ast.nodes.as_slice() else {
                return Err(at_from(Diagnostic::error(format!(
                    "{trigger:?} is not a single instruction"
                ))));
            };
            parse_instruction(node).map_err(at_from)?;
            let mut wrapped = node
                .sub
                .as_deref()
                .cloned()
                .ok_or_else(|| at_from(Diagnostic::error(format!("{trigger:?} is empty"))))?;
            wrapped.start_line = from.start_line;
            wrapped.end_line = from.end_line;
            parse_instruction(&wrapped).map_err(at_from)
        })
        .collect()
}

fn shell_error(error: ShellError, instruction: &Instruction) -> Diagnostic {
    Diagnostic::error(error.to_string()).at(instruction.span())
}

/// The UndefinedVar lint: a variable used but neither set nor declared as an ARG.
fn report_undefined(
    unmatched: &BTreeSet<String>,
    declared: &BTreeSet<String>,
    instruction: &Instruction,
    warnings: &mut Vec<Diagnostic>,
) {
    for name in unmatched.iter().filter(|name| !declared.contains(*name)) {
        warnings.push(
            Diagnostic::warning(
                "UndefinedVar",
                format!("usage of undefined variable '${name}'"),
            )
            .at(instruction.span())
            .with_hint(format!(
                "declare it with `ARG {name}` or `ENV {name}=...` before this line"
            )),
        );
    }
}

#[cfg(test)]
mod tests;

//! Lint checks: the common mistakes BuildKit's `--check` reports, as located warnings, and the
//! `# check=skip=...;error=true` directive that configures them.
//!
//! Rules that need the build's state (UndefinedVar, unused build args) come from the planner and
//! dispatcher; this module adds the rules that read the Dockerfile alone, and [`check`] runs
//! everything for `imgb check` / `imgb build --check`.

use crate::diagnostic::Diagnostic;
use crate::dispatch::{ImageConfig, StageStart};
use crate::ignore::IgnoreRules;
use crate::instructions::{CommandForm, Instruction};
use crate::plan::{Base, BuildOptions, BuildPlan, Dockerfile};
use crate::shell::Lexer;
use std::collections::{BTreeMap, BTreeSet};

/// Every rule imgb checks, BuildKit's names.
pub const RULES: [&str; 20] = [
    "ConsistentInstructionCasing",
    "CopyIgnoredFile",
    "DuplicateStageName",
    "ExposeInvalidFormat",
    "ExposeProtoCasing",
    "FromAsCasing",
    "FromPlatformFlagConstDisallowed",
    "InvalidDefaultArgInFrom",
    "JSONArgsRecommended",
    "LegacyKeyValueFormat",
    "MaintainerDeprecated",
    "MultipleInstructionsDisallowed",
    "NoEmptyContinuation",
    "RedundantTargetPlatform",
    "ReservedStageName",
    "SecretsUsedInArgOrEnv",
    "StageNameCasing",
    "UndefinedArgInFrom",
    "UndefinedVar",
    "WorkdirRelativePath",
];

/// The `# check=` directive: `skip=Rule1,Rule2` (or `skip=all`) and `error=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    pub skip: BTreeSet<String>,
    pub skip_all: bool,
    /// Warnings fail the build.
    pub error: bool,
}

impl LintConfig {
    pub fn parse(directive: &str) -> Result<LintConfig, Diagnostic> {
        let mut config = LintConfig::default();
        for part in directive
            .split(';')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Diagnostic::error(format!(
                    "invalid check option \"{part}\": expected key=value"
                ))
                .with_hint("write e.g. `# check=skip=JSONArgsRecommended;error=true`")
            })?;
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => {
                    for rule in value
                        .split(',')
                        .map(str::trim)
                        .filter(|rule| !rule.is_empty())
                    {
                        if rule.eq_ignore_ascii_case("all") {
                            config.skip_all = true;
                        } else {
                            config.skip.insert(rule.to_string());
                        }
                    }
                }
                "error" => {
                    config.error = parse_bool(value.trim()).ok_or_else(|| {
                        Diagnostic::error(format!(
                            "invalid check option error={value}: expected true or false"
                        ))
                    })?;
                }
                "experimental" => {}
                other => {
                    return Err(
                        Diagnostic::error(format!("unknown check option \"{other}\""))
                            .with_hint("the options are skip=, error= and experimental="),
                    );
                }
            }
        }
        Ok(config)
    }

    pub fn enabled(&self, rule: &str) -> bool {
        !self.skip_all && !self.skip.contains(rule)
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Runs every check on a Dockerfile: static rules, planning, and dispatch of every stage
/// (`resolve_image` supplies base image configs when they are known; without one, rules that
/// need the base image's environment are not applied to that stage). Returns the warnings
/// enabled by the `# check=` directive; errors are returned as `Err`.
pub fn check(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    ignore: Option<&IgnoreRules>,
    resolve_image: &mut dyn FnMut(&str) -> Option<ImageConfig>,
) -> Result<(Vec<Diagnostic>, LintConfig), Diagnostic> {
    let config = match dockerfile.ast.directive("check") {
        Some(directive) => LintConfig::parse(&directive.value)
            .map_err(|error| error.at_lines_if_unset(directive.line, directive.line))?,
        None => LintConfig::default(),
    };
    let mut warnings = static_rules(dockerfile, ignore);
    let plan = BuildPlan::new(dockerfile, options)?;
    warnings.extend(plan.warnings.iter().cloned());
    warnings.extend(from_rules(dockerfile, &plan));
    warnings.extend(invalid_default_base_names(dockerfile, options));
    let mut ends: BTreeMap<usize, StageStart> = BTreeMap::new();
    for stage in &plan.stages {
        let (start, base_known) = match &stage.base {
            Base::Scratch => (StageStart::default(), true),
            Base::Stage(index) => match ends.get(index) {
                Some(end) => (end.clone(), true),
                None => (StageStart::default(), false),
            },
            Base::Image(name) => match resolve_image(name) {
                Some(config) => (StageStart::from_image(config), true),
                None => (StageStart::default(), false),
            },
        };
        let dispatched = plan.dispatch(dockerfile, stage.index, start, options)?;
        warnings.extend(
            dispatched
                .warnings
                .into_iter()
                .filter(|w| base_known || w.rule != Some("UndefinedVar")),
        );
        ends.insert(
            stage.index,
            if base_known {
                dispatched.end
            } else {
                StageStart::default()
            },
        );
    }
    warnings.retain(|warning| warning.rule.is_none_or(|rule| config.enabled(rule)));
    warnings.sort_by_key(|warning| warning.line());
    warnings.dedup();
    Ok((warnings, config))
}

/// The rules that read the Dockerfile alone.
pub fn static_rules(dockerfile: &Dockerfile, ignore: Option<&IgnoreRules>) -> Vec<Diagnostic> {
    let mut warnings: Vec<Diagnostic> = dockerfile.ast.warnings.clone();
    consistent_casing(dockerfile, &mut warnings);
    let mut seen_names: BTreeSet<&str> = BTreeSet::new();
    for stage in &dockerfile.stages {
        let from = &stage.from;
        if let Some(name) = stage.name() {
            let written = last_word(&from.origin.code);
            if written != name {
                warnings.push(
                    Diagnostic::warning(
                        "StageNameCasing",
                        format!("Stage name '{written}' should be lowercase"),
                    )
                    .at(from.origin.span())
                    .with_hint(format!("write `AS {name}`")),
                );
            }
            if !seen_names.insert(name) {
                warnings.push(
                    Diagnostic::warning(
                        "DuplicateStageName",
                        format!("Duplicate stage name \"{name}\", stage names should be unique"),
                    )
                    .at(from.origin.span()),
                );
            }
            if name == "context" || name == "scratch" {
                warnings.push(
                    Diagnostic::warning(
                        "ReservedStageName",
                        format!(
                            "Stage name should not use the same name as reserved stage \"{name}\""
                        ),
                    )
                    .at(from.origin.span()),
                );
            }
            let keyword = from.origin.keyword_as_written();
            if let Some(as_word) = nth_word(&from.origin.code, |w| w.eq_ignore_ascii_case("as"))
                && is_upper(keyword) != is_upper(as_word)
            {
                warnings.push(
                    Diagnostic::warning(
                        "FromAsCasing",
                        format!("'{as_word}' and '{keyword}' keywords' casing do not match"),
                    )
                    .at(from.origin.span()),
                );
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut workdir_absolute = false;
        for instruction in &stage.instructions {
            let span = instruction.span();
            match instruction {
                Instruction::Cmd(cmd) if cmd.command.form == CommandForm::Shell => {
                    warnings.push(json_args_recommended("CMD", span));
                }
                Instruction::Entrypoint(entry) if entry.command.form == CommandForm::Shell => {
                    warnings.push(json_args_recommended("ENTRYPOINT", span));
                }
                Instruction::Maintainer(_) => warnings.push(
                    Diagnostic::warning(
                        "MaintainerDeprecated",
                        "Maintainer instruction is deprecated in favor of using label",
                    )
                    .at(span)
                    .with_hint("write `LABEL org.opencontainers.image.authors=\"...\"`"),
                ),
                Instruction::Env(env) if env.vars.iter().any(|var| var.legacy_form) => {
                    warnings.push(legacy_key_value("ENV", span));
                }
                Instruction::Label(label) if label.labels.iter().any(|var| var.legacy_form) => {
                    warnings.push(legacy_key_value("LABEL", span));
                }
                Instruction::Workdir(workdir) => {
                    if workdir.path.starts_with('/') || workdir.path.starts_with('$') {
                        workdir_absolute = true;
                    } else if !workdir_absolute {
                        warnings.push(
                            Diagnostic::warning(
                                "WorkdirRelativePath",
                                format!("Relative workdir \"{}\" can have unexpected results if the base image changes", workdir.path),
                            )
                            .at(span)
                            .with_hint("use an absolute path"),
                        );
                    }
                }
                Instruction::Expose(expose) => expose_rules(&expose.ports, span, &mut warnings),
                Instruction::Arg(arg) => {
                    for definition in &arg.args {
                        secrets_rule("ARG", &definition.name, span, &mut warnings);
                    }
                }
                _ => {}
            }
            if let Instruction::Env(env) = instruction {
                for var in &env.vars {
                    secrets_rule("ENV", &var.key, span, &mut warnings);
                }
            }
            if matches!(
                instruction,
                Instruction::Cmd(_) | Instruction::Entrypoint(_) | Instruction::Healthcheck(_)
            ) {
                let count = counts.entry(instruction.keyword()).or_default();
                *count += 1;
                if *count > 1 {
                    warnings.push(
                        Diagnostic::warning(
                            "MultipleInstructionsDisallowed",
                            format!(
                                "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                                instruction.keyword()
                            ),
                        )
                        .at(span),
                    );
                }
            }
            if let (Some(rules), Instruction::Copy(copy)) = (ignore, instruction)
                && copy.from.is_none()
            {
                ignored_sources("Copy", &copy.files.sources, rules, span, &mut warnings);
            }
            if let (Some(rules), Instruction::Add(add)) = (ignore, instruction) {
                ignored_sources("Add", &add.files.sources, rules, span, &mut warnings);
            }
        }
    }
    for arg in &dockerfile.global_args {
        for definition in &arg.args {
            secrets_rule("ARG", &definition.name, arg.origin.span(), &mut warnings);
        }
    }
    warnings
}

/// Rules on FROM that need the global ARG scope.
fn from_rules(dockerfile: &Dockerfile, plan: &BuildPlan) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    let lexer = Lexer::new(dockerfile.ast.escape);
    let declared: BTreeSet<&str> = dockerfile
        .global_args
        .iter()
        .flat_map(|arg| arg.args.iter().map(|definition| definition.name.as_str()))
        .collect();
    let predefined: BTreeSet<&str> = plan
        .global_args
        .iter()
        .map(|(key, _)| key.as_str())
        .collect();
    let defaults_only: Vec<(String, String)> = plan.global_args.clone();
    for stage in &dockerfile.stages {
        let from = &stage.from;
        let span = from.origin.span();
        for word in std::iter::once(&from.base_name).chain(from.platform.iter()) {
            let Ok(expansion) = lexer.expand_word(word, &defaults_only[..]) else {
                continue;
            };
            for name in &expansion.unmatched {
                if !declared.contains(name.as_str()) && !predefined.contains(name.as_str()) {
                    warnings.push(
                        Diagnostic::warning(
                            "UndefinedArgInFrom",
                            format!("FROM argument '{name}' is not declared"),
                        )
                        .at(span)
                        .with_hint(format!("declare `ARG {name}` before the first FROM")),
                    );
                }
            }
        }
        if let Some(platform) = &from.platform {
            if platform == "$TARGETPLATFORM" || platform == "${TARGETPLATFORM}" {
                warnings.push(
                    Diagnostic::warning(
                        "RedundantTargetPlatform",
                        format!("Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"),
                    )
                    .at(span),
                );
            } else if !platform.contains('$') {
                warnings.push(
                    Diagnostic::warning("FromPlatformFlagConstDisallowed", format!("FROM --platform flag should not use constant value \"{platform}\""))
                        .at(span)
                        .with_hint("use a build arg such as $BUILDPLATFORM, or pass --platform on the command line"),
                );
            }
        }
    }
    warnings
}

/// InvalidDefaultArgInFrom: without any `--build-arg`, every FROM must still name an image.
fn invalid_default_base_names(dockerfile: &Dockerfile, options: &BuildOptions) -> Vec<Diagnostic> {
    let defaults = BuildOptions {
        build_args: BTreeMap::new(),
        target: None,
        ..options.clone()
    };
    let Ok(plan) = BuildPlan::new(dockerfile, &defaults) else {
        return Vec::new();
    };
    let lexer = Lexer::new(dockerfile.ast.escape);
    let mut warnings = Vec::new();
    for stage in &dockerfile.stages {
        let from = &stage.from;
        let Ok(expansion) = lexer.expand_word(&from.base_name, &plan.global_args[..]) else {
            continue;
        };
        let name = expansion.value;
        if !is_valid_reference(&name) {
            let args: Vec<&str> = expansion
                .matched
                .iter()
                .chain(expansion.unmatched.iter())
                .map(String::as_str)
                .collect();
            warnings.push(
                Diagnostic::warning(
                    "InvalidDefaultArgInFrom",
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        args.join(", ")
                    ),
                )
                .at(from.origin.span())
                .with_hint("give the ARG a default that names an image"),
            );
        }
    }
    warnings
}

/// Whether `reference` is an image reference Docker would accept (`[domain/]path[:tag][@digest]`).
pub fn is_valid_reference(reference: &str) -> bool {
    imgb_cache::reference::Reference::parse(reference).is_ok()
}

fn consistent_casing(dockerfile: &Dockerfile, warnings: &mut Vec<Diagnostic>) {
    let nodes = &dockerfile.ast.nodes;
    let upper = nodes
        .iter()
        .filter(|node| is_upper(node.keyword_as_written()))
        .count();
    let lower = nodes
        .iter()
        .filter(|node| node.keyword_as_written() == node.keyword)
        .count();
    let majority_upper = upper >= lower;
    for node in nodes {
        let written = node.keyword_as_written();
        let consistent = if majority_upper {
            is_upper(written)
        } else {
            written == node.keyword
        };
        if !consistent {
            let case = if majority_upper {
                "uppercase"
            } else {
                "lowercase"
            };
            warnings.push(
                Diagnostic::warning(
                    "ConsistentInstructionCasing",
                    format!(
                        "Command '{written}' should match the case of the command majority ({case})"
                    ),
                )
                .at(node.span()),
            );
        }
    }
}

fn is_upper(word: &str) -> bool {
    word == word.to_uppercase()
}

fn last_word(code: &str) -> &str {
    code.split_whitespace().last().unwrap_or_default()
}

fn nth_word(code: &str, predicate: impl Fn(&str) -> bool) -> Option<&str> {
    code.split_whitespace().skip(1).find(|word| predicate(word))
}

fn json_args_recommended(keyword: &str, span: crate::Span) -> Diagnostic {
    Diagnostic::warning(
        "JSONArgsRecommended",
        format!("JSON arguments recommended for {keyword} to prevent unintended behavior related to OS signals"),
    )
    .at(span)
    .with_hint(format!("write {keyword} [\"executable\", \"arg\"]"))
}

fn legacy_key_value(keyword: &str, span: crate::Span) -> Diagnostic {
    Diagnostic::warning(
        "LegacyKeyValueFormat",
        format!("\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format"),
    )
    .at(span)
    .with_hint(format!("write `{keyword} key=value`"))
}

/// EXPOSE: protocols lower-case, no IP address or host-port mapping.
fn expose_rules(ports: &[String], span: crate::Span, warnings: &mut Vec<Diagnostic>) {
    for port in ports {
        if let Some((_, protocol)) = port.rsplit_once('/')
            && protocol != protocol.to_lowercase()
        {
            warnings.push(
                Diagnostic::warning(
                    "ExposeProtoCasing",
                    format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
                )
                .at(span),
            );
        }
        if port.contains(':') {
            warnings.push(
                Diagnostic::warning(
                    "ExposeInvalidFormat",
                    format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"),
                )
                .at(span),
            );
        }
    }
}

/// Names that look like credentials (BuildKit's patterns), unless they are clearly not.
fn secrets_rule(keyword: &str, name: &str, span: crate::Span, warnings: &mut Vec<Diagnostic>) {
    if imgb_builder::solve::looks_like_a_credential(name) {
        warnings.push(
            Diagnostic::warning("SecretsUsedInArgOrEnv", format!("Do not use ARG or ENV instructions for sensitive data ({keyword} \"{name}\")"))
                .at(span)
                .with_hint("pass secrets with --secret and RUN --mount=type=secret; ARG and ENV values end up in the image"),
        );
    }
}

fn ignored_sources(
    verb: &str,
    sources: &[String],
    rules: &IgnoreRules,
    span: crate::Span,
    warnings: &mut Vec<Diagnostic>,
) {
    for source in sources {
        let path = source.trim_start_matches("./").trim_start_matches('/');
        if !path.contains(['*', '?', '[']) && rules.is_excluded(path) {
            warnings.push(
                Diagnostic::warning(
                    "CopyIgnoredFile",
                    format!(
                        "Attempting to {verb} file \"{source}\" that is excluded by .dockerignore"
                    ),
                )
                .at(span),
            );
        }
    }
}

#[cfg(test)]
mod tests;

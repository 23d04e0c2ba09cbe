//! The build description: a Dockerfile split into stages, global ARGs evaluated, every FROM
//! resolved to scratch, an earlier stage or an image, the references between stages
//! (`FROM stage`, `COPY --from`, `RUN --mount=from=`) collected, and the stages the target needs
//! chosen, in an order where every stage comes after what it needs.
//!
//! Invariants: no I/O (image configs come later, from the builder); a plan only exists if every
//! referenced stage exists, no stage depends on itself or on a later stage, and every FROM names
//! something non-empty.

use crate::diagnostic::{Diagnostic, Span};
use crate::instructions::{ArgInstruction, FromInstruction, Instruction, parse_instruction};
use crate::parser::{self, Ast};
use crate::platform::Platform;
use crate::shell::Lexer;
use std::collections::{BTreeMap, BTreeSet};

/// Build args that are used without an ARG declaration (passed to RUN, kept out of history).
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Build args imgb itself understands; never reported as unused.
const BUILTIN_ARGS: [&str; 1] = ["SOURCE_DATE_EPOCH"];

/// What the user asked for: `--build-arg`, `--target`, `--platform`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub target_platform: Platform,
    pub build_platform: Platform,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
        }
    }
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Position among the stages, from 0: what `COPY --from=1` names.
    pub index: usize,
    pub from: FromInstruction,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The stage's name (`AS name`), lower-cased as BuildKit compares them.
    pub fn name(&self) -> Option<&str> {
        self.from.stage_name.as_deref()
    }

    /// `name` or `stage-N`, for messages.
    pub fn display_name(&self) -> String {
        self.name()
            .map_or_else(|| format!("stage-{}", self.index), str::to_string)
    }
}

/// A parsed and typed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub ast: Ast,
    /// ARGs before the first FROM.
    pub global_args: Vec<ArgInstruction>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// The names of every build argument the Dockerfile declares (global and per stage).
    pub fn arg_names(&self) -> BTreeSet<String> {
        let in_stages = self.stages.iter().flat_map(|stage| {
            stage
                .instructions
                .iter()
                .filter_map(|instruction| match instruction {
                    Instruction::Arg(arg) => Some(arg),
                    _ => None,
                })
        });
        self.global_args
            .iter()
            .chain(in_stages)
            .flat_map(|arg| arg.args.iter().map(|definition| definition.name.clone()))
            .collect()
    }

    /// Parses and types a Dockerfile. Diagnostics are rendered against `name` and `source`.
    pub fn parse(name: &str, source: &str) -> Result<Dockerfile, Diagnostic> {
        Dockerfile::parse_unnamed(source).map_err(|error| error.with_source(name, source))
    }

    fn parse_unnamed(source: &str) -> Result<Dockerfile, Diagnostic> {
        let ast = parser::parse(source)?;
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for node in &ast.nodes {
            match parse_instruction(node)? {
                Instruction::From(from) => {
                    stages.push(Stage {
                        index: stages.len(),
                        from,
                        instructions: Vec::new(),
                    });
                }
                instruction => match (stages.last_mut(), instruction) {
                    (Some(stage), instruction) => stage.instructions.push(instruction),
                    (None, Instruction::Arg(arg)) => global_args.push(arg),
                    (None, other) => {
                        return Err(Diagnostic::error(format!(
                            "{} instruction before the first FROM: no build stage in current context",
                            other.keyword()
                        ))
                        .at(other.span())
                        .with_hint("only ARG may come before the first FROM; start a stage with FROM"));
                    }
                },
            }
        }
        if stages.is_empty() {
            return Err(Diagnostic::error("dockerfile contains no stages to build")
                .at(Span::lines(
                    1,
                    ast.nodes.last().map_or(1, |node| node.end_line),
                ))
                .with_hint("add a FROM instruction, e.g. `FROM scratch`"));
        }
        Ok(Dockerfile {
            ast,
            global_args,
            stages,
        })
    }

    /// The stage a `--target`, `FROM` or `--from` name refers to (case-insensitive).
    pub fn stage_by_name(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_lowercase();
        self.stages
            .iter()
            .rev()
            .find(|stage| stage.name() == Some(lower.as_str()))
    }
}

/// What a stage is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference, after ARG expansion (resolved by the builder).
    Image(String),
}

/// Something a stage reads besides its base: another stage or an external image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    Stage(usize),
    Image(String),
}

/// A stage ready for the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStage {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    /// The `--platform` of its FROM, or the target platform.
    pub platform: Platform,
    /// Other stages and images it copies or mounts from (not its base).
    pub references: BTreeSet<Reference>,
}

/// Which stages to build for a target, with the global ARG values.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub stages: Vec<PlannedStage>,
    /// The stage that is the build's result.
    pub target: usize,
    /// Indices of the stages the target needs (itself included), dependencies first.
    pub needed: Vec<usize>,
    /// Global scope: the predefined platform args, then the global ARGs with their values.
    pub global_args: Vec<(String, String)>,
    pub warnings: Vec<Diagnostic>,
}

impl BuildPlan {
    /// Plans the build of `options.target` (default: the last stage).
    pub fn new(dockerfile: &Dockerfile, options: &BuildOptions) -> Result<BuildPlan, Diagnostic> {
        let lexer = Lexer::new(dockerfile.ast.escape);
        let target = match &options.target {
            None => dockerfile.stages.len() - 1,
            Some(name) => dockerfile
                .stage_by_name(name)
                .map(|stage| stage.index)
                .ok_or_else(|| {
                    let names: Vec<String> = dockerfile
                        .stages
                        .iter()
                        .filter_map(|s| s.name().map(str::to_string))
                        .collect();
                    let stages = names.join(", ");
                    let hint = match crate::suggest::closest(
                        name,
                        names.iter().map(String::as_str),
                        false,
                    ) {
                        Some(near) => format!("did you mean \"{near}\"? The stages are: {stages}"),
                        None if names.is_empty() => {
                            "the Dockerfile names no stages; name one with `FROM image AS name`"
                                .to_string()
                        }
                        None => format!("the stages are: {stages}"),
                    };
                    Diagnostic::error(format!("target stage \"{name}\" could not be found"))
                        .with_hint(hint)
                })?,
        };
        let target_name = dockerfile.stages[target].display_name();
        let global_args = evaluate_global_args(dockerfile, options, &lexer, &target_name)?;
        let mut stages = Vec::with_capacity(dockerfile.stages.len());
        for stage in &dockerfile.stages {
            stages.push(plan_stage(
                dockerfile,
                stage,
                &global_args,
                options,
                &lexer,
            )?);
        }
        let needed = needed_stages(dockerfile, &stages, target)?;
        let mut plan = BuildPlan {
            stages,
            target,
            needed,
            global_args,
            warnings: Vec::new(),
        };
        plan.warnings
            .extend(unused_build_args(dockerfile, &plan, options));
        Ok(plan)
    }

    pub fn global_arg(&self, name: &str) -> Option<&str> {
        self.global_args
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The global scope: predefined platform args, then each global ARG in order, a `--build-arg`
/// overriding its default, a default expanded with what came before it.
fn evaluate_global_args(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    lexer: &Lexer,
    target_name: &str,
) -> Result<Vec<(String, String)>, Diagnostic> {
    let mut scope: Vec<(String, String)> = Vec::new();
    scope.extend(options.build_platform.build_args("BUILD"));
    scope.extend(options.target_platform.build_args("TARGET"));
    scope.push(("TARGETSTAGE".to_string(), target_name.to_string()));
    for arg in &dockerfile.global_args {
        for definition in &arg.args {
            let value = match (
                options.build_args.get(&definition.name),
                &definition.default,
            ) {
                (Some(value), _) => Some(value.clone()),
                (None, Some(default)) => Some(
                    lexer
                        .expand_word(default, &scope[..])
                        .map_err(|error| {
                            Diagnostic::error(error.to_string()).at(arg.origin.span())
                        })?
                        .value,
                ),
                (None, None) => None,
            };
            if let Some(value) = value {
                scope.retain(|(key, _)| key != &definition.name);
                scope.push((definition.name.clone(), value));
            }
        }
    }
    Ok(scope)
}

fn plan_stage(
    dockerfile: &Dockerfile,
    stage: &Stage,
    global_args: &[(String, String)],
    options: &BuildOptions,
    lexer: &Lexer,
) -> Result<PlannedStage, Diagnostic> {
    let from = &stage.from;
    let span = from.origin.span();
    let expand = |word: &str| {
        lexer
            .expand_word(word, global_args)
            .map(|expansion| expansion.value)
            .map_err(|error| Diagnostic::error(error.to_string()).at(span))
    };
    let base_name = expand(&from.base_name)?;
    if base_name.is_empty() {
        return Err(Diagnostic::error(format!(
            "base name ({}) should not be blank",
            from.base_name
        ))
        .at(span)
        .with_hint("the FROM expands to nothing: give its ARG a default or pass --build-arg"));
    }
    let platform = match &from.platform {
        None => options.target_platform.clone(),
        Some(text) => {
            let expanded = expand(text)?;
            if expanded.is_empty() {
                return Err(Diagnostic::error(format!(
                    "empty platform value from expression {text}"
                ))
                .at(span));
            }
            Platform::parse(&expanded).map_err(|error| {
                Diagnostic::error(format!("failed to parse platform {text}: {error}")).at(span)
            })?
        }
    };
    // FROM can only name a stage defined before it; a later name is an image, as in BuildKit.
    let base = if base_name.eq_ignore_ascii_case("scratch") {
        Base::Scratch
    } else if let Some(earlier) = dockerfile.stages[..stage.index]
        .iter()
        .rev()
        .find(|s| s.name() == Some(base_name.as_str()))
    {
        Base::Stage(earlier.index)
    } else {
        Base::Image(base_name)
    };
    let mut references = BTreeSet::new();
    for instruction in &stage.instructions {
        for (name, line_span) in stage_references(instruction) {
            references.insert(resolve_reference(dockerfile, stage, &name, line_span)?);
        }
    }
    Ok(PlannedStage {
        index: stage.index,
        name: stage.name().map(str::to_string),
        base,
        platform,
        references,
    })
}

/// The `--from` values of an instruction: COPY's and every `RUN --mount` that has one.
fn stage_references(instruction: &Instruction) -> Vec<(String, Span)> {
    let span = instruction.span();
    match instruction {
        Instruction::Copy(copy) => copy.from.iter().map(|from| (from.clone(), span)).collect(),
        Instruction::Run(run) => run
            .mounts
            .iter()
            .filter_map(|mount| mount.from.clone())
            .map(|from| (from, span))
            .collect(),
        _ => Vec::new(),
    }
}

/// `--from=N` is a stage index, `--from=name` a stage (any stage: a later one is rejected when
/// ordering), anything else an image.
fn resolve_reference(
    dockerfile: &Dockerfile,
    stage: &Stage,
    name: &str,
    span: Span,
) -> Result<Reference, Diagnostic> {
    if let Ok(index) = name.parse::<usize>() {
        if index >= dockerfile.stages.len() {
            return Err(Diagnostic::error(format!("invalid stage index {index}"))
                .at(span)
                .with_hint(format!(
                    "stages are numbered from 0 to {}",
                    dockerfile.stages.len() - 1
                )));
        }
        return Ok(Reference::Stage(index));
    }
    if let Some(referenced) = dockerfile.stage_by_name(name) {
        if referenced.index == stage.index {
            return Err(Diagnostic::error(format!(
                "circular dependency detected on stage: {}",
                stage.display_name()
            ))
            .at(span)
            .with_hint("a stage cannot copy or mount from itself"));
        }
        return Ok(Reference::Stage(referenced.index));
    }
    Ok(Reference::Image(name.to_string()))
}

/// The target and every stage it reaches, each after the stages it needs. A reference to a
/// stage defined later is an error, as in BuildKit (a cycle always contains one).
fn needed_stages(
    dockerfile: &Dockerfile,
    stages: &[PlannedStage],
    target: usize,
) -> Result<Vec<usize>, Diagnostic> {
    let mut reached = BTreeSet::new();
    let mut pending = vec![target];
    while let Some(index) = pending.pop() {
        if !reached.insert(index) {
            continue;
        }
        let stage = &stages[index];
        if let Base::Stage(base) = stage.base {
            pending.push(base);
        }
        for reference in &stage.references {
            let Reference::Stage(referenced) = *reference else {
                continue;
            };
            if referenced > index {
                let user = &dockerfile.stages[index];
                let from = &dockerfile.stages[referenced];
                let line = user
                    .instructions
                    .iter()
                    .find(|instruction| {
                        stage_references(instruction)
                            .iter()
                            .any(|(name, _)| resolves_to(dockerfile, name, referenced))
                    })
                    .map_or_else(|| user.from.origin.span(), Instruction::span);
                return Err(Diagnostic::error(format!(
                    "cannot copy from stage \"{}\", it needs to be defined before current stage \"{}\"",
                    from.display_name(),
                    user.display_name()
                ))
                .at(line)
                .with_hint("move the stage you copy from above the stage that uses it"));
            }
            pending.push(referenced);
        }
    }
    // Indices ascend and every dependency has a smaller index, so ascending order is a valid
    // build order.
    Ok(reached.into_iter().collect())
}

fn resolves_to(dockerfile: &Dockerfile, name: &str, index: usize) -> bool {
    name.parse::<usize>().ok() == Some(index)
        || dockerfile.stage_by_name(name).map(|s| s.index) == Some(index)
}

/// `--build-arg`s that no global ARG and no ARG of a needed stage declares.
fn unused_build_args(
    dockerfile: &Dockerfile,
    plan: &BuildPlan,
    options: &BuildOptions,
) -> Vec<Diagnostic> {
    let mut declared: BTreeSet<&str> = BTreeSet::new();
    for arg in &dockerfile.global_args {
        declared.extend(arg.args.iter().map(|definition| definition.name.as_str()));
    }
    for &index in &plan.needed {
        for instruction in &dockerfile.stages[index].instructions {
            if let Instruction::Arg(arg) = instruction {
                declared.extend(arg.args.iter().map(|definition| definition.name.as_str()));
            }
        }
    }
    let unused: Vec<&str> = options
        .build_args
        .keys()
        .map(String::as_str)
        .filter(|name| {
            !declared.contains(name) && !PROXY_ARGS.contains(name) && !BUILTIN_ARGS.contains(name)
        })
        .filter(|name| !name.starts_with("BUILDKIT_"))
        .collect();
    if unused.is_empty() {
        return Vec::new();
    }
    vec![
        Diagnostic::warning(
            "UnusedBuildArg",
            format!(
                "one or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        )
        .with_hint("declare them with ARG in a stage the target needs, or drop the --build-arg"),
    ]
}

#[cfg(test)]
mod tests;

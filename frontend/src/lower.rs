//! Lowering: a planned and dispatched Dockerfile becomes a [`BuildGraph`], the builder's IR.
//! This is where Dockerfile semantics turn into plain operations: a RUN becomes an exec over its
//! stage's filesystem (shell prepended, heredocs turned into scripts), a COPY or ADD a file
//! operation reading the context, another stage or an image, a WORKDIR a mkdir.
//!
//! Invariants: the graph holds no secret values (secrets are mounted by id); a stage's vertices
//! only exist if the target needs the stage.

use crate::diagnostic::Diagnostic;
use crate::dispatch::{DispatchedStage, ImageConfig, StageStart, Step};
use crate::instructions::{
    CacheSharing as MountSharing, FileMode, Instruction, MountType, NetworkMode, SecurityMode,
    TransferOptions,
};
use crate::parser::{chomp_heredoc_content, parse_heredoc_word};
use crate::plan::{Base, BuildOptions, BuildPlan, Dockerfile};
use crate::platform::Platform;
use imgb_builder::graph::{
    BuildGraph, CacheSharing, ExecMount, ExecOp, FileAction, HttpSource, Network, Op, Owner,
    Security, VertexId,
};
use imgb_builder::http_source::Checksum;
use std::collections::BTreeMap;

/// The default shell of shell-form commands.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// One lowered stage: the vertex holding its filesystem and what its image config says.
#[derive(Debug, Clone)]
pub struct LoweredStage {
    pub index: usize,
    pub root: VertexId,
    pub platform: Platform,
    /// The base image, when the stage (or the stage it is built on) starts from one.
    pub base_image: Option<String>,
    /// The stage's dispatch; its history starts with that of the stages it is built on.
    pub dispatched: DispatchedStage,
    /// The vertices of the stage's own steps, in order (`--no-cache-filter` marks them).
    pub steps: Vec<VertexId>,
}

/// The whole build as a graph, with the target stage's result.
#[derive(Debug)]
pub struct Lowered {
    pub graph: BuildGraph,
    pub stages: BTreeMap<usize, LoweredStage>,
    pub target: usize,
    pub warnings: Vec<Diagnostic>,
}

impl Lowered {
    pub fn target_stage(&self) -> &LoweredStage {
        &self.stages[&self.target]
    }
}

/// Lowers the stages `plan` needs. `resolve_image` supplies the config of a base image (by
/// reference and platform); the builder reads it from the store or a registry.
pub fn lower(
    dockerfile: &Dockerfile,
    plan: &BuildPlan,
    options: &BuildOptions,
    resolve_image: &mut dyn FnMut(&str, &Platform) -> Result<ImageConfig, Diagnostic>,
) -> Result<Lowered, Diagnostic> {
    let mut graph = BuildGraph::new();
    let mut stages: BTreeMap<usize, LoweredStage> = BTreeMap::new();
    let mut warnings = plan.warnings.clone();
    let context = graph.add(Op::Context, vec![], "load build context");
    for &index in &plan.needed {
        let planned = &plan.stages[index];
        let (mut root, start, base_image) = match &planned.base {
            Base::Scratch => (
                graph.add(Op::Scratch, vec![], "scratch"),
                StageStart::default(),
                None,
            ),
            Base::Stage(base) => {
                let base_stage = &stages[base];
                (
                    base_stage.root,
                    base_stage.dispatched.end.clone(),
                    base_stage.base_image.clone(),
                )
            }
            Base::Image(reference) => {
                let config = resolve_image(reference, &planned.platform).map_err(|error| {
                    error.at_lines_if_unset(
                        dockerfile.stages[index].from.origin.start_line,
                        dockerfile.stages[index].from.origin.start_line,
                    )
                })?;
                let op = Op::Image {
                    reference: reference.clone(),
                    platform: planned.platform.to_string(),
                };
                (
                    graph.add(
                        op,
                        vec![],
                        format!("[internal] load metadata for {reference}"),
                    ),
                    StageStart::from_image(config),
                    Some(reference.clone()),
                )
            }
        };
        let mut dispatched = plan.dispatch(dockerfile, index, start, options)?;
        if let Base::Stage(base) = &planned.base {
            // An image built FROM a stage carries that stage's history, as it carries its
            // layers: BuildKit copies the whole image, history included.
            let mut history = stages[base].dispatched.history.clone();
            history.append(&mut dispatched.history);
            dispatched.history = history;
        }
        warnings.extend(dispatched.warnings.iter().cloned());
        let label = dockerfile.stages[index].display_name();
        let total = dispatched.steps.len();
        let mut steps = Vec::with_capacity(total);
        for (position, step) in dispatched.steps.iter().enumerate() {
            let name = format!(
                "[{label} {}/{total}] {}",
                position + 1,
                step.instruction.origin().code
            );
            let sources = StageSources {
                graph: &mut graph,
                stages: &stages,
                dockerfile,
                context,
                platform: &planned.platform,
            };
            let (op, extra_inputs) = lower_step(step, &name, sources)?;
            let mut inputs = vec![root];
            inputs.extend(extra_inputs);
            root = graph.add(op, inputs, name);
            steps.push(root);
        }
        stages.insert(
            index,
            LoweredStage {
                index,
                root,
                platform: planned.platform.clone(),
                base_image,
                dispatched,
                steps,
            },
        );
    }
    Ok(Lowered {
        graph,
        stages,
        target: plan.target,
        warnings,
    })
}

/// What a step may read besides its own stage: the context, other stages, images.
struct StageSources<'a> {
    graph: &'a mut BuildGraph,
    stages: &'a BTreeMap<usize, LoweredStage>,
    dockerfile: &'a Dockerfile,
    context: VertexId,
    platform: &'a Platform,
}

impl StageSources<'_> {
    /// The vertex `--from=name|index|image` reads; the context for an empty name.
    fn resolve(&mut self, from: &str) -> VertexId {
        if from.is_empty() {
            return self.context;
        }
        let stage = from
            .parse::<usize>()
            .ok()
            .filter(|index| *index < self.dockerfile.stages.len())
            .or_else(|| self.dockerfile.stage_by_name(from).map(|stage| stage.index));
        if let Some(lowered) = stage.and_then(|index| self.stages.get(&index)) {
            return lowered.root;
        }
        let op = Op::Image {
            reference: from.to_string(),
            platform: self.platform.to_string(),
        };
        self.graph
            .add(op, vec![], format!("[internal] load metadata for {from}"))
    }
}

/// The op of one step and the inputs it reads besides its stage's filesystem (input 0). `name`
/// is the step's progress name, which its downloads share (a failure names the step's line).
fn lower_step(
    step: &Step,
    name: &str,
    mut sources: StageSources<'_>,
) -> Result<(Op, Vec<VertexId>), Diagnostic> {
    match &step.instruction {
        Instruction::Run(run) => {
            let (mounts, inputs) = lower_mounts(step, run, &mut sources)?;
            let (argv, inline_files) = run_argv(
                step,
                &run.command.args,
                run.command.prepends_shell(),
                &run.command.files,
            )?;
            let op = ExecOp {
                argv,
                env: run_env(step, &mounts),
                cwd: if step.working_dir.is_empty() {
                    "/".to_string()
                } else {
                    step.working_dir.clone()
                },
                user: step.user.clone(),
                network: match run.network {
                    NetworkMode::Default => Network::Default,
                    NetworkMode::None => Network::None,
                    NetworkMode::Host => Network::Host,
                },
                security: match run.security {
                    SecurityMode::Sandbox => Security::Sandbox,
                    SecurityMode::Insecure => Security::Insecure,
                },
                mounts,
                inline_files,
            };
            Ok((Op::Exec(op), inputs))
        }
        Instruction::Copy(copy) => {
            let input = sources.resolve(copy.from.as_deref().unwrap_or_default());
            let mut actions = inline_writes(
                &copy.files.inline_sources,
                &copy.files.dest,
                step,
                &copy.options,
            );
            if !copy.files.sources.is_empty() {
                actions.push(FileAction::Copy {
                    input: 1,
                    sources: copy.files.sources.clone(),
                    dest: destination(&copy.files.dest, &step.working_dir),
                    owner: owner(&copy.options),
                    mode: mode(&copy.options),
                    link: copy.options.link,
                    parents: copy.parents,
                    exclude: copy.options.exclude.clone(),
                    unpack_archives: false,
                });
            }
            Ok((Op::File { actions }, vec![input]))
        }
        Instruction::Add(add) => {
            let mut inputs = vec![sources.context];
            let mut actions = inline_writes(
                &add.files.inline_sources,
                &add.files.dest,
                step,
                &add.options,
            );
            let dest = destination(&add.files.dest, &step.working_dir);
            let (urls, local): (Vec<&String>, Vec<&String>) =
                add.files.sources.iter().partition(|source| is_url(source));
            if let Some(checksum) = &add.checksum {
                check_checksum(step, checksum, &add.files.sources)?;
            }
            for url in urls {
                let filename = url_file_name(url);
                let http = HttpSource {
                    url: url.clone(),
                    checksum: add.checksum.clone(),
                    filename: filename.clone(),
                };
                inputs.push(sources.graph.add(Op::Http(http), vec![], name));
                actions.push(FileAction::Copy {
                    input: inputs.len(),
                    sources: vec![filename],
                    dest: dest.clone(),
                    owner: owner(&add.options),
                    mode: mode(&add.options),
                    link: add.options.link,
                    parents: false,
                    exclude: Vec::new(),
                    unpack_archives: add.unpack.unwrap_or(false),
                });
            }
            if !local.is_empty() {
                actions.push(FileAction::Copy {
                    input: 1,
                    sources: local.into_iter().cloned().collect(),
                    dest,
                    owner: owner(&add.options),
                    mode: mode(&add.options),
                    link: add.options.link,
                    parents: false,
                    exclude: add.options.exclude.clone(),
                    unpack_archives: add.unpack.unwrap_or(true),
                });
            }
            Ok((Op::File { actions }, inputs))
        }
        Instruction::Workdir(_) => Ok((
            Op::File {
                actions: vec![FileAction::Mkdir {
                    path: step.working_dir.clone(),
                    mode: 0o755,
                    owner: (!step.user.is_empty()).then(|| owner_of(&step.user)),
                }],
            },
            Vec::new(),
        )),
        other => Err(
            Diagnostic::error(format!("{} makes no filesystem change", other.keyword()))
                .at(other.span()),
        ),
    }
}

/// The mounts of a RUN and the inputs they read (numbered after the stage's filesystem), with
/// BuildKit's defaults: relative targets under the working directory, a secret's id from its
/// source or target, secrets under `/run/secrets/`, agents at `/run/buildkit/ssh_agent.N`.
fn lower_mounts(
    step: &Step,
    run: &crate::instructions::RunInstruction,
    sources: &mut StageSources<'_>,
) -> Result<(Vec<ExecMount>, Vec<VertexId>), Diagnostic> {
    let mut inputs = Vec::new();
    let mut mounts = Vec::new();
    let mut agents = 0;
    for mount in run.resolved_mounts() {
        let mode = |default: u32| mount.mode.unwrap_or(default);
        let uid = mount.uid.unwrap_or(0);
        let gid = mount.gid.unwrap_or(0);
        let target = if mount.target.is_empty() || mount.target.starts_with('/') {
            mount.target.clone()
        } else {
            crate::dispatch::resolve_workdir(&step.working_dir, &mount.target)
        };
        mounts.push(match mount.kind {
            MountType::Bind => {
                inputs.push(sources.resolve(&mount.from));
                ExecMount::Bind {
                    target,
                    input: inputs.len(),
                    source: mount.source.clone(),
                    readonly: mount.read_only,
                }
            }
            MountType::Cache => ExecMount::Cache {
                // BuildKit's documented default: the target as written, before the working
                // directory makes it absolute.
                id: if mount.cache_id.is_empty() {
                    mount.target.clone()
                } else {
                    mount.cache_id.clone()
                },
                target,
                sharing: match mount.sharing {
                    Some(MountSharing::Private) => CacheSharing::Private,
                    Some(MountSharing::Locked) => CacheSharing::Locked,
                    _ => CacheSharing::Shared,
                },
                readonly: mount.read_only,
                mode: mode(0o755),
                uid,
                gid,
                from: (!mount.from.is_empty()).then(|| {
                    inputs.push(sources.resolve(&mount.from));
                    inputs.len()
                }),
                source: mount.source.clone(),
            },
            MountType::Tmpfs => ExecMount::Tmpfs {
                target,
                size: (mount.size_limit > 0).then_some(mount.size_limit),
            },
            MountType::Secret => {
                let base_name = |path: &str| {
                    path.trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                };
                let id = [&mount.source, &mount.cache_id]
                    .into_iter()
                    .find(|id| !id.is_empty())
                    .cloned()
                    .unwrap_or_else(|| base_name(&target));
                let target = match (&mount.env, target.is_empty()) {
                    (None, true) => format!("/run/secrets/{}", base_name(&id)),
                    _ => target,
                };
                ExecMount::Secret {
                    target,
                    id,
                    required: mount.required,
                    mode: mode(0o400),
                    uid,
                    gid,
                    env: mount.env.clone(),
                }
            }
            MountType::Ssh => {
                if !mount.source.is_empty() {
                    return Err(Diagnostic::error("ssh does not support source")
                        .with_hint("name the agent with id= (as given to --ssh ID=SOCKET)")
                        .at(step.instruction.span()));
                }
                agents += 1;
                ExecMount::Ssh {
                    target: if target.is_empty() {
                        format!("/run/buildkit/ssh_agent.{}", agents - 1)
                    } else {
                        target
                    },
                    id: if mount.cache_id.is_empty() {
                        "default".to_string()
                    } else {
                        mount.cache_id.clone()
                    },
                    required: mount.required,
                    mode: mode(0o600),
                    uid,
                    gid,
                }
            }
        });
    }
    Ok((mounts, inputs))
}

/// The environment a RUN sees: its stage's, plus `SSH_AUTH_SOCK` naming the first forwarded
/// agent unless the stage sets it (as BuildKit does).
fn run_env(step: &Step, mounts: &[ExecMount]) -> Vec<String> {
    let mut env: Vec<String> = step
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let first_agent = mounts.iter().find_map(|mount| match mount {
        ExecMount::Ssh { target, .. } => Some(target),
        _ => None,
    });
    if let Some(target) = first_agent
        && !step.env.iter().any(|(key, _)| key == "SSH_AUTH_SOCK")
    {
        env.push(format!("SSH_AUTH_SOCK={target}"));
    }
    env
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// BuildKit's checks of `ADD --checksum`: one source, a URL, a valid digest.
fn check_checksum(step: &Step, checksum: &str, sources: &[String]) -> Result<(), Diagnostic> {
    let located = |message: String| Diagnostic::error(message).at(step.instruction.span());
    if sources.len() != 1 {
        return Err(located(
            "checksum can't be specified for multiple sources".to_string(),
        ));
    }
    if !sources.iter().all(|source| is_url(source)) {
        return Err(located(
            "checksum requires HTTP(S) or Git sources".to_string(),
        ));
    }
    Checksum::parse(checksum)
        .map(drop)
        .map_err(|reason| located(format!("invalid checksum {checksum:?}: {reason}")))
}

/// The file name a URL downloads to, as BuildKit names it: the last segment of the decoded
/// path (query and fragment ignored), `__unnamed__` when there is none or it cannot be decoded.
fn url_file_name(url: &str) -> String {
    const UNNAMED: &str = "__unnamed__";
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let before_query = after_scheme.split(['?', '#']).next().unwrap_or_default();
    let path = before_query.find('/').map_or("", |at| &before_query[at..]);
    let Some(decoded) = percent_decode(path) else {
        return UNNAMED.to_string();
    };
    match decoded.trim_end_matches('/').rsplit('/').next() {
        None | Some("" | "." | "..") => UNNAMED.to_string(),
        Some(name) => name.to_string(),
    }
}

/// `%XX` escapes decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail
                .get(..2)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A RUN's argv and the script files it needs (path, contents).
type RunCommand = (Vec<String>, Vec<(String, String)>);

/// The argv of a RUN, as BuildKit builds it: exec form as is; shell form through the stage's
/// SHELL; a lone heredoc runs its body (a `#!` body as a script file); other heredocs are
/// handed back to the shell inline.
pub(crate) fn run_argv(
    step: &Step,
    args: &[String],
    shell_form: bool,
    files: &[crate::instructions::InlineFile],
) -> Result<RunCommand, Diagnostic> {
    let mut inline_files = Vec::new();
    let mut args = args.to_vec();
    if let Some(first) = files.first() {
        let [command] = args.as_slice() else {
            return Err(Diagnostic::error("parsing produced an invalid run command")
                .at(step.instruction.span()));
        };
        let body = |file: &crate::instructions::InlineFile| {
            if file.chomp {
                chomp_heredoc_content(&file.data)
            } else {
                file.data.clone()
            }
        };
        if parse_heredoc_word(command)?.is_some() {
            if first.data.starts_with("#!") {
                let path = format!("/dev/pipes/{}", first.name);
                inline_files.push((path.clone(), body(first)));
                args = vec![path];
            } else {
                args = vec![body(first)];
            }
        } else {
            let mut full = command.clone();
            for file in files {
                full.push('\n');
                full.push_str(&body(file));
                full.push_str(&file.name);
            }
            args = vec![full];
        }
    }
    if shell_form {
        let mut argv: Vec<String> = if step.shell.is_empty() {
            DEFAULT_SHELL.iter().map(|part| part.to_string()).collect()
        } else {
            step.shell.clone()
        };
        argv.extend(args);
        return Ok((argv, inline_files));
    }
    Ok((args, inline_files))
}

/// Heredoc sources of COPY/ADD: files written at the destination.
fn inline_writes(
    inline: &[crate::instructions::InlineSource],
    dest: &str,
    step: &Step,
    options: &TransferOptions,
) -> Vec<FileAction> {
    let dest = destination(dest, &step.working_dir);
    let mode = match options.mode {
        Some(FileMode::Octal(bits)) => bits,
        _ => 0o644,
    };
    inline
        .iter()
        .map(|source| {
            let path = if dest.ends_with('/') {
                format!("{dest}{}", source.path)
            } else {
                dest.clone()
            };
            FileAction::Write {
                path,
                data: source.data.clone(),
                mode,
                owner: owner(options),
            }
        })
        .collect()
}

/// A destination relative to the working directory, its trailing slash kept (it means "into
/// this directory").
fn destination(dest: &str, working_dir: &str) -> String {
    let directory = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let mut resolved = crate::dispatch::resolve_workdir(working_dir, dest);
    if directory && !resolved.ends_with('/') {
        resolved.push('/');
    }
    resolved
}

fn owner(options: &TransferOptions) -> Option<Owner> {
    options.chown.as_deref().map(owner_of)
}

fn owner_of(text: &str) -> Owner {
    match text.split_once(':') {
        Some((user, group)) => Owner {
            user: user.to_string(),
            group: Some(group.to_string()),
        },
        None => Owner {
            user: text.to_string(),
            group: None,
        },
    }
}

fn mode(options: &TransferOptions) -> Option<String> {
    options.mode.as_ref().map(|mode| match mode {
        FileMode::Octal(bits) => format!("{bits:o}"),
        FileMode::Symbolic(text) => text.clone(),
    })
}

#[cfg(test)]
mod tests;

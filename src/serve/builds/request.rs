//! What a client asks the build service for: `imgb build`'s options as JSON, checked before the
//! build is queued.
//!
//! Invariants: nothing in a request names a path or reads a variable on the server. The
//! Dockerfile is a path inside the uploaded context; build arguments carry their values;
//! `type=local` caches (server directories) are refused; a file output names no `dest=` (the
//! server keeps the archive for `GET /v1/builds/{id}/result`). Privileged steps of the lowered
//! graph (base images' ONBUILD triggers included) need the entitlement both in the request's
//! `allow` and in the server's `--allow`.

use crate::check::{FrontendArgs, LoadedDockerfile};
use crate::commands::build::{BuildArgs, RunLimitArgs};
use crate::commands::cache_opts::{CacheDestination, parse_cache_from, parse_cache_to};
use crate::commands::progress::ProgressMode;
use crate::commands::registry::RegistryArgs;
use crate::commands::remote::RemoteArgs;
use crate::serve::agent_tunnel::MAX_ID;
use imgb_builder::graph::{ExecMount, Network, Op, Security, VertexId};
use imgb_cache::build_cache::CacheLocation;
use imgb_cache::{OutputKind, OutputSpec};
use imgb_frontend::lower::Lowered;
use imgb_runner::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Component, Path};

/// The header carrying a request's options (JSON) on `POST /v1/builds`.
pub const OPTIONS_HEADER: &str = "x-imgb-build-options";

/// `imgb build`'s options, named as its long flags; repeatable flags are arrays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildRequest {
    /// The Dockerfile's path inside the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `KEY=VALUE` (a bare `KEY` would read the server's environment, so it is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_arg: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<String>,
    /// `type=image,...` outputs as for `imgb build`, and at most one of `type=oci|docker|tar`
    /// without `dest=`: the archive `GET /v1/builds/{id}/result` streams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_cache_filter: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<usize>,
    /// Entitlements the client grants (`network.host`, `security.insecure`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The client's `SOURCE_DATE_EPOCH` (a `SOURCE_DATE_EPOCH` build argument wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<i64>,
    /// The ids of the SSH agents the client forwards (`--ssh ID`; the sockets stay on the
    /// client, reached through `GET /v1/builds/{id}/ssh`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
}

/// The most SSH agent ids one build may declare.
pub const MAX_SSH_IDS: usize = 16;

/// Privileges a RUN step can ask for, which the server and the request must both allow.
pub const ENTITLEMENTS: [&str; 2] = ["network.host", "security.insecure"];

/// A request the service refuses, with the HTTP status that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 (malformed), 403 (not entitled), 413 (too large).
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn bad(message: impl Into<String>) -> Self {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }
}

/// The file output a request asks for: what `GET /result` streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    Oci,
    Docker,
    Tar,
}

impl BuildRequest {
    /// Parses the options header; serde's message names an unknown field or a wrong type.
    pub fn from_json(text: &[u8]) -> Result<Self, Refusal> {
        serde_json::from_slice(text)
            .map_err(|error| Refusal::bad(format!("build options ({OPTIONS_HEADER}): {error}")))
    }

    /// Checks what can be checked without the context.
    pub fn validate(&self) -> Result<Option<ResultKind>, Refusal> {
        if let Some(file) = &self.file {
            inside_context(file)?;
        }
        if let Some(arg) = self.build_arg.iter().find(|arg| !arg.contains('=')) {
            return Err(Refusal::bad(format!(
                "build-arg {arg:?}: give KEY=VALUE (the client resolves KEY from its environment)"
            )));
        }
        for allowed in &self.allow {
            if !ENTITLEMENTS.contains(&allowed.as_str()) {
                return Err(Refusal::bad(format!(
                    "allow {allowed:?}: unknown entitlement (known: {})",
                    ENTITLEMENTS.join(", ")
                )));
            }
        }
        if self.ssh.len() > MAX_SSH_IDS {
            return Err(Refusal::bad(format!(
                "ssh: {} agent ids (at most {MAX_SSH_IDS})",
                self.ssh.len()
            )));
        }
        for (index, id) in self.ssh.iter().enumerate() {
            let malformed = id.is_empty()
                || id.len() > MAX_ID
                || id.contains(['=', ',', '/'])
                || id.chars().any(char::is_control);
            if malformed {
                return Err(Refusal::bad(format!(
                    "ssh {id:?}: an agent id is a name (at most {MAX_ID} bytes, without = , / or \
                     control characters); the socket stays with the client"
                )));
            }
            if self
                .ssh
                .get(..index)
                .is_some_and(|earlier| earlier.contains(id))
            {
                return Err(Refusal::bad(format!("ssh {id:?}: declared twice")));
            }
        }
        for spec in &self.cache_from {
            let location = parse_cache_from(spec).map_err(|e| Refusal::bad(format!("{e:#}")))?;
            refuse_server_directory("cache-from", spec, &location)?;
        }
        for spec in &self.cache_to {
            let parsed = parse_cache_to(spec).map_err(|e| Refusal::bad(format!("{e:#}")))?;
            if let CacheDestination::Location(location) = &parsed.destination {
                refuse_server_directory("cache-to", spec, location)?;
            }
        }
        let mut result = None;
        for spec in &self.output {
            let parsed = OutputSpec::parse(&format!("{spec},dest=-"))
                .or_else(|_| OutputSpec::parse(spec))
                .map_err(|error| Refusal::bad(format!("output {spec:?}: {error}")))?;
            let kind = match parsed.kind {
                OutputKind::Image => continue,
                OutputKind::Oci => ResultKind::Oci,
                OutputKind::Docker => ResultKind::Docker,
                OutputKind::Tar => ResultKind::Tar,
                OutputKind::Local => {
                    return Err(Refusal::bad(format!(
                        "output {spec:?}: type=local writes a directory on the server; ask for \
                         type=tar and unpack it (imgb build --remote does)"
                    )));
                }
            };
            if spec.split(',').any(|field| field.starts_with("dest=")) || !parsed.tar {
                return Err(Refusal::bad(format!(
                    "output {spec:?}: the server keeps the archive; leave out dest= and tar=false \
                     and fetch it from /v1/builds/{{id}}/result"
                )));
            }
            if result.replace(kind).is_some() {
                return Err(Refusal::bad(
                    "only one file output (type=oci, docker or tar) per build",
                ));
            }
        }
        Ok(result)
    }

    /// The frontend options for a context unpacked at `context`.
    pub fn frontend_args(&self, context: &Path) -> FrontendArgs {
        FrontendArgs {
            file: self.file.as_ref().map(|file| context.join(file)),
            build_args: self.build_arg.clone(),
            target: self.target.clone(),
            platform: self.platform.clone(),
            path: context.to_owned(),
        }
    }

    /// The `imgb build` arguments this request stands for, its file output written to
    /// `result` (an archive file in the build's work directory).
    pub fn build_args(&self, context: &Path, result: &Path) -> BuildArgs {
        let output = self
            .output
            .iter()
            .map(|spec| match OutputSpec::parse(spec) {
                Ok(parsed) if parsed.kind == OutputKind::Image => spec.clone(),
                _ => format!("{spec},dest={}", result.display()),
            })
            .collect();
        BuildArgs {
            frontend: self.frontend_args(context),
            tags: self.tag.clone(),
            outputs: output,
            no_cache: self.no_cache,
            no_cache_filter: self.no_cache_filter.clone(),
            push: self.push,
            pull: self.pull,
            registry: RegistryArgs::default(),
            progress: ProgressMode::Quiet,
            jobs: self.jobs,
            secrets: Vec::new(),
            ssh: Vec::new(),
            cache_to: self.cache_to.clone(),
            cache_from: self.cache_from.clone(),
            iidfile: None,
            metadata_file: None,
            allow: self.allow.clone(),
            remote: RemoteArgs::default(),
            limits: RunLimitArgs {
                pids_max: Limits::DEFAULT_PIDS_MAX,
                memory: None,
                disk_max: None,
            },
        }
    }
}

/// A relative path that stays inside the context.
fn inside_context(file: &str) -> Result<(), Refusal> {
    let escapes = Path::new(file)
        .components()
        .any(|component| !matches!(component, Component::Normal(_) | Component::CurDir));
    if escapes || file.is_empty() {
        return Err(Refusal::bad(format!(
            "file {file:?}: the Dockerfile must be a relative path inside the context"
        )));
    }
    Ok(())
}

fn refuse_server_directory(
    flag: &str,
    spec: &str,
    location: &CacheLocation,
) -> Result<(), Refusal> {
    match location {
        CacheLocation::Directory(_) => Err(Refusal::bad(format!(
            "{flag} {spec:?}: type=local names a directory on the server; use type=registry \
             (the server's own /v2/ API serves as one)"
        ))),
        CacheLocation::Registry(_) => Ok(()),
    }
}

/// Refuses a build whose lowered graph has a step needing an entitlement that the server
/// (`server_allows`) and the request do not both grant. Every exec vertex is checked, so a RUN
/// a base image's ONBUILD trigger brings in is too; the error names the step and its line.
pub fn check_entitlements(
    lowered: &Lowered,
    loaded: &LoadedDockerfile,
    request: &BuildRequest,
    server_allows: &BTreeSet<String>,
) -> Result<(), Refusal> {
    for (id, vertex) in lowered.graph.vertices() {
        let Op::Exec(exec) = &vertex.op else {
            continue;
        };
        let needed = [
            (exec.network == Network::Host).then_some("network.host"),
            (exec.security == Security::Insecure).then_some("security.insecure"),
        ];
        for entitlement in needed.into_iter().flatten() {
            let by_server = server_allows.contains(entitlement);
            let by_request = request.allow.iter().any(|allowed| allowed == entitlement);
            if by_server && by_request {
                continue;
            }
            let hint = match (by_server, by_request) {
                (false, _) => format!("the server must be started with --allow {entitlement}"),
                _ => format!("the client must pass --allow {entitlement}"),
            };
            let (location, trigger) = step_source(lowered, loaded, id);
            return Err(Refusal {
                status: 403,
                message: format!(
                    "{location}step `{}`{trigger} needs the entitlement {entitlement}, which is \
                     not granted; hint: {hint}",
                    vertex.name
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a build with a step that requires an SSH agent the request did not declare: the
/// server has no agent of its own to fall back on. (An agent that is not required is left out
/// of the step, as in a local build.)
pub fn check_ssh_ids(
    lowered: &Lowered,
    loaded: &LoadedDockerfile,
    request: &BuildRequest,
) -> Result<(), Refusal> {
    for (id, vertex) in lowered.graph.vertices() {
        let Op::Exec(exec) = &vertex.op else {
            continue;
        };
        for mount in &exec.mounts {
            let ExecMount::Ssh {
                id: agent,
                required: true,
                ..
            } = mount
            else {
                continue;
            };
            if request.ssh.contains(agent) {
                continue;
            }
            let (location, trigger) = step_source(lowered, loaded, id);
            let flag = if agent == "default" {
                "--ssh default".to_string()
            } else {
                format!("--ssh {agent}=SOCKET")
            };
            return Err(Refusal::bad(format!(
                "{location}step `{}`{trigger} requires the SSH agent {agent:?}, which the client \
                 did not declare; hint: pass {flag} to imgb build",
                vertex.name
            )));
        }
    }
    Ok(())
}

/// Where the step that made vertex `id` comes from: `Dockerfile:LINE: `, and a note when it
/// is a base image's ONBUILD trigger (located at its stage's FROM line, where no other step
/// can be).
fn step_source(
    lowered: &Lowered,
    loaded: &LoadedDockerfile,
    id: VertexId,
) -> (String, &'static str) {
    let found = lowered.stages.values().find_map(|stage| {
        let position = stage.steps.iter().position(|step| *step == id)?;
        let origin = stage.dispatched.steps.get(position)?.instruction.origin();
        let from_line = loaded
            .dockerfile
            .stages
            .get(stage.index)?
            .from
            .origin
            .start_line;
        Some((origin.start_line, origin.start_line == from_line))
    });
    match found {
        Some((line, triggered)) => (
            format!("{}:{line}: ", loaded.name),
            if triggered {
                " (an ONBUILD trigger of the base image this FROM names)"
            } else {
                ""
            },
        ),
        None => (String::new(), ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_options_and_bad_values_are_refused_by_name() {
        let error = BuildRequest::from_json(br#"{"tag":["a"],"squash":true}"#).unwrap_err();
        assert!(error.message.contains("squash"), "{}", error.message);
        let error = BuildRequest::from_json(br#"{"tag":"a"}"#).unwrap_err();
        assert_eq!(error.status, 400);
        let request = BuildRequest {
            file: Some("../Dockerfile".into()),
            ..BuildRequest::default()
        };
        assert!(
            request
                .validate()
                .unwrap_err()
                .message
                .contains("inside the context")
        );
        let request = BuildRequest {
            build_arg: vec!["HOME".into()],
            ..BuildRequest::default()
        };
        assert!(
            request
                .validate()
                .unwrap_err()
                .message
                .contains("KEY=VALUE")
        );
        let request = BuildRequest {
            cache_to: vec!["type=local,dest=/etc".into()],
            ..BuildRequest::default()
        };
        assert!(
            request
                .validate()
                .unwrap_err()
                .message
                .contains("type=registry")
        );
    }

    #[test]
    fn ssh_ids_are_names_declared_once_and_bounded_in_number() {
        let with_ids = |ids: Vec<String>| BuildRequest {
            ssh: ids,
            ..BuildRequest::default()
        };
        assert!(
            with_ids(vec!["default".into(), "git-hub.com".into()])
                .validate()
                .is_ok()
        );
        for (ids, needle) in [
            (vec![String::new()], "agent id is a name"),
            (vec!["a=/tmp/agent".into()], "agent id is a name"),
            (vec!["../x".into()], "agent id is a name"),
            (vec!["x".repeat(MAX_ID + 1)], "agent id is a name"),
            (vec!["a".into(), "a".into()], "declared twice"),
            (
                (0..=MAX_SSH_IDS).map(|n| n.to_string()).collect(),
                "at most",
            ),
        ] {
            let refusal = with_ids(ids).validate().unwrap_err();
            assert_eq!(refusal.status, 400);
            assert!(refusal.message.contains(needle), "{}", refusal.message);
        }
    }

    #[test]
    fn one_file_output_without_dest_becomes_the_result() {
        let request = BuildRequest {
            output: vec!["type=oci".into(), "type=image,name=example.com/a:b".into()],
            ..BuildRequest::default()
        };
        assert_eq!(request.validate().unwrap(), Some(ResultKind::Oci));
        let args = request.build_args(Path::new("/ctx"), Path::new("/work/result"));
        assert_eq!(args.outputs[0], "type=oci,dest=/work/result");
        assert_eq!(args.outputs[1], "type=image,name=example.com/a:b");
        for refused in ["type=oci,dest=/etc/x", "type=local", "type=oci,tar=false"] {
            let request = BuildRequest {
                output: vec![refused.into()],
                ..BuildRequest::default()
            };
            assert_eq!(request.validate().unwrap_err().status, 400, "{refused}");
        }
    }
}

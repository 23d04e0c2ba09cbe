//! `imgb build --remote URL|unix://PATH`: the build runs on an `imgb serve`, and looks here as
//! if it ran locally.
//!
//! The client reads the Dockerfile and `.dockerignore` as a local build does (so Dockerfile
//! errors show before anything is sent), streams the context as a tar of what the
//! `.dockerignore` keeps (the same walk the context hashing does), then follows the build's
//! rawjson events, feeding them to the local renderers (`--progress` as for a local build).
//! File outputs (`-o type=oci|docker|tar|local,dest=...`) are written here from the result
//! stream; `type=image` outputs and `--push` happen on the server.
//!
//! Secrets (`--secret`) are read here and sent at the head of the body (see
//! [`crate::serve::builds::secrets`]), never over plain TCP without `--insecure`. With `--ssh`,
//! once the build is accepted, a second connection is upgraded to the build's agent tunnel
//! (see [`crate::serve::builds::ssh`]): each agent connection a RUN opens on the server is
//! relayed to the agent socket named here; the same transport rule applies.
//!
//! Credentials: `--token-file F` or `$IMGB_TOKEN`, never a command-line value. Transport:
//! `unix:///path`, `http://` / `tcp://` / bare `HOST:PORT`, or `https://` (system roots plus
//! `--remote-ca`). `X-Imgb-Cache-Key` carries a digest of the Dockerfile path and the context
//! directory, on every request of a build, so a router can send a project's builds to the same
//! replica (docs/serve.md, docs/scaling.md).

use crate::commands::build::{BuildArgs, parse_secrets, parse_ssh};
use crate::commands::progress::{Built, Explainer, Progress, ProgressMode, Summary, raw_json};
use crate::serve::agent_tunnel::{self, Frame, Multiplexer};
use crate::serve::builds::request::{BuildRequest, OPTIONS_HEADER};
use crate::serve::builds::secrets::{self, Secrets};
use crate::serve::builds::ssh;
use crate::serve::builds::upload::EMPTY_CONTEXT;
use anyhow::{Context, Result, anyhow, bail};
use axum::body::{Body, Bytes};
use clap::Args;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use imgb_builder::context::{ContentDigest, EntryKind, IncludeAll, PathFilter, hash_context};
use imgb_cache::{Destination, OutputKind, OutputSpec};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// The header a router may hash to keep a project's builds on one replica.
pub const CACHE_KEY_HEADER: &str = "x-imgb-cache-key";

#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// Build on an `imgb serve`: `unix:///PATH`, `HOST:PORT`, `http://HOST:PORT` or
    /// `https://HOST:PORT`.
    #[arg(long, value_name = "URL", env = "IMGB_REMOTE")]
    pub remote: Option<String>,
    /// A file holding the server's token (else `$IMGB_TOKEN`).
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates trusted for an `https://` remote, besides the system's.
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub remote_ca: Option<PathBuf>,
    /// Send `--secret` values to a plain-TCP (`http://`) remote, readable on the way (the
    /// server must be started with `--insecure` too).
    #[arg(long = "insecure", requires = "remote")]
    pub remote_insecure: bool,
}

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Remote {
    endpoint: Endpoint,
    token: Option<String>,
    /// `X-Imgb-Cache-Key`, sent on every request of the build.
    cache_key: Option<String>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl Remote {
    pub fn new(url: &str, token_file: Option<&Path>, ca: Option<&Path>) -> Result<Self> {
        let (endpoint, secure) = parse_url(url)?;
        let token = match token_file {
            Some(path) => Some(read_token(path)?),
            None => std::env::var("IMGB_TOKEN")
                .ok()
                .filter(|token| !token.is_empty()),
        };
        let tls = if secure {
            Some(Arc::new(tls_config(ca)?))
        } else {
            if ca.is_some() {
                bail!("--remote-ca needs an https:// remote (the server's --tls-cert)");
            }
            None
        };
        Ok(Remote {
            endpoint,
            token,
            cache_key: None,
            tls,
        })
    }

    /// One request on a fresh connection.
    async fn send(&self, mut request: Request<Body>) -> Result<Response<Incoming>> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        };
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, host.parse()?);
        if let Some(key) = &self.cache_key {
            headers.insert(CACHE_KEY_HEADER, key.parse()?);
        }
        if let Some(token) = &self.token {
            headers.insert(
                hyper::header::AUTHORIZATION,
                format!("Bearer {token}")
                    .parse()
                    .context("the token holds characters a header cannot")?,
            );
        }
        let unreachable = || format!("connecting to the imgb server at {}", self.describe());
        match (&self.endpoint, &self.tls) {
            (Endpoint::Unix(path), _) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(unreachable)?;
                exchange(stream, request).await
            }
            (Endpoint::Tcp { host, port }, None) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(unreachable)?;
                exchange(stream, request).await
            }
            (Endpoint::Tcp { host, port }, Some(tls)) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(unreachable)?;
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                    .with_context(|| format!("{host} is not a valid TLS server name"))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with {}", self.describe()))?;
                exchange(stream, request).await
            }
        }
    }

    /// Whether what is sent can be read on the way: plain TCP.
    fn in_the_clear(&self) -> bool {
        matches!(self.endpoint, Endpoint::Tcp { .. }) && self.tls.is_none()
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp { host, port } => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{host}:{port}")
            }
        }
    }

    /// Sends `request`; a non-success answer becomes an error with the server's message.
    async fn call(&self, request: Request<Body>) -> Result<Response<Incoming>> {
        answered(self.send(request).await?).await
    }
}

/// A success response as it is; any other becomes an error with the server's message.
async fn answered(response: Response<Incoming>) -> Result<Response<Incoming>> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Err(anyhow!("{}", server_message(status, &body)))
}

/// The `error` of a JSON error body, else the body, with the status.
fn server_message(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| Some(value.get("error")?.as_str()?.to_string()))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    format!("the imgb server answered {status}: {message}")
}

async fn exchange<S>(stream: S, request: Request<Body>) -> Result<Response<Incoming>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("starting an HTTP exchange with the imgb server")?;
    // With upgrades: the agent tunnel takes over its connection.
    tokio::spawn(connection.with_upgrades());
    sender
        .send_request(request)
        .await
        .context("talking to the imgb server")
}

fn parse_url(url: &str) -> Result<(Endpoint, bool)> {
    if let Some(path) = url.strip_prefix("unix://") {
        return Ok((Endpoint::Unix(PathBuf::from(path)), false));
    }
    let (rest, secure) = match url.split_once("://") {
        Some(("https", rest)) => (rest, true),
        Some(("http" | "tcp", rest)) => (rest, false),
        Some((scheme, _)) => bail!(
            "--remote {url}: unknown scheme {scheme:?} (use unix://, http://, https:// or tcp://)"
        ),
        None => (url, false),
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow!("--remote {url}: expected HOST:PORT"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((Endpoint::Tcp { host, port }, secure))
}

/// The first non-empty line of a token file.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the token file {} holds no token", path.display()))
}

fn tls_config(ca: Option<&Path>) -> Result<tokio_rustls::rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for certificate in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as the registry client does.
        let _ = roots.add(certificate);
    }
    if let Some(path) = ca {
        let certificates = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading --remote-ca {}", path.display()))?;
        for certificate in certificates {
            let certificate =
                certificate.with_context(|| format!("--remote-ca {}", path.display()))?;
            roots
                .add(certificate)
                .with_context(|| format!("--remote-ca {}", path.display()))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(
        tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS settings")?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A file output this client writes from the result stream.
#[derive(Debug)]
struct LocalOutput {
    kind: OutputKind,
    dest: Destination,
}

/// Runs `imgb build` on the server `url`.
pub fn build(url: &str, args: &BuildArgs) -> Result<ExitCode> {
    let loaded = match args.frontend.load() {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let mut remote = Remote::new(
        url,
        args.remote.token_file.as_deref(),
        args.remote.remote_ca.as_deref(),
    )?;
    let secrets = parse_secrets(&args.secrets)?;
    let agents = parse_ssh(&args.ssh, std::env::var_os("SSH_AUTH_SOCK"))?;
    for (flag, what, used) in [
        ("--secret", "secrets", !secrets.is_empty()),
        ("--ssh", "SSH agent connections", !agents.is_empty()),
    ] {
        if used && remote.in_the_clear() && !args.remote.remote_insecure {
            bail!(
                "{flag}: not sending {what} to {} over plain TCP, where they can be read on the \
                 way; use an https:// or unix:// remote (or, on a network you trust, --insecure \
                 here and on imgb serve)",
                remote.describe()
            );
        }
    }
    let (mut request, local_output) = request_for(args, &loaded.context)?;
    request.ssh = agents.keys().cloned().collect();
    remote.cache_key = Some(cache_key(&loaded.context, request.file.as_deref())?);
    let filter: Box<dyn PathFilter + Send> = match loaded.ignore.clone() {
        Some(rules) => Box::new(rules),
        None => Box::new(IncludeAll),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let progress = Progress::new(args.progress, Explainer::new(loaded.dockerfile.arg_names()));
    let outcome = runtime.block_on(follow_build(
        &remote,
        (&request, &secrets, &agents),
        (&loaded.context, filter),
        &progress,
    ))?;
    drop(secrets);
    let Finished::Done { done, summary, id } = outcome else {
        if let Finished::Failed(message) = outcome {
            eprintln!("{message}");
        }
        return Ok(ExitCode::FAILURE);
    };
    if let Some(output) = &local_output {
        runtime.block_on(fetch_result(&remote, &id, output))?;
    }
    let text = |field: &str| {
        done.get(field)
            .and_then(|value| value.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (image_id, digest) = (text("image"), text("digest"));
    let names: Vec<String> = done
        .get("names")
        .and_then(|names| serde_json::from_value(names.clone()).ok())
        .unwrap_or_default();
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &image_id).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let metadata = serde_json::json!({
            "containerimage.digest": digest,
            "containerimage.config.digest": image_id,
            "image.name": names.join(","),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&metadata)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let stdout_taken = local_output
        .as_ref()
        .is_some_and(|output| output.dest == Destination::Stdout);
    if !(stdout_taken && args.progress == ProgressMode::Quiet) {
        progress.finish(
            &summary,
            &Built {
                id: &image_id,
                digest: &digest,
                names: &names,
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The request standing for `args`, and the file output written here (if any).
fn request_for(args: &BuildArgs, context: &Path) -> Result<(BuildRequest, Option<LocalOutput>)> {
    let file = match &args.frontend.file {
        None => None,
        Some(path) if path == Path::new("-") => {
            bail!(
                "-f - (stdin) cannot be sent to a --remote server; put the Dockerfile in the context"
            )
        }
        Some(path) => {
            let inside = path
                .canonicalize()
                .ok()
                .zip(context.canonicalize().ok())
                .and_then(|(file, context)| {
                    Some(
                        file.strip_prefix(context)
                            .ok()?
                            .to_string_lossy()
                            .into_owned(),
                    )
                });
            Some(inside.ok_or_else(|| {
                anyhow!(
                    "-f {}: with --remote the Dockerfile must be inside the context {}",
                    path.display(),
                    context.display()
                )
            })?)
        }
    };
    let mut output = Vec::new();
    let mut local = None;
    for spec in &args.outputs {
        let parsed = OutputSpec::parse(spec).map_err(|error| anyhow!("-o {spec}: {error}"))?;
        if parsed.kind == OutputKind::Image {
            output.push(spec.clone());
            continue;
        }
        if local.is_some() {
            bail!("-o {spec}: a --remote build writes one file output");
        }
        // The server keeps the archive; a directory output is its tar unpacked here.
        let kind = match parsed.kind {
            OutputKind::Local => OutputKind::Tar,
            kind => kind,
        };
        let fields: Vec<&str> = if spec.contains('=') {
            spec.split(',')
                .filter(|field| !field.starts_with("dest=") && !field.starts_with("type="))
                .collect()
        } else {
            Vec::new()
        };
        let kind_name = match kind {
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            _ => "tar",
        };
        output.push(
            std::iter::once(format!("type={kind_name}"))
                .chain(fields.into_iter().map(str::to_string))
                .collect::<Vec<_>>()
                .join(","),
        );
        local = Some(LocalOutput {
            kind: parsed.kind,
            dest: parsed.dest,
        });
    }
    let build_arg = args
        .frontend
        .build_args
        .iter()
        .filter_map(|arg| match arg.split_once('=') {
            Some(_) => Some(arg.clone()),
            // As locally: KEY takes the value from this environment, or sets nothing.
            None => std::env::var(arg)
                .ok()
                .map(|value| format!("{arg}={value}")),
        })
        .collect();
    let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|text| !text.is_empty())
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={text}: not a number of seconds"))
        })
        .transpose()?;
    let request = BuildRequest {
        file,
        build_arg,
        target: args.frontend.target.clone(),
        platform: args.frontend.platform.clone(),
        tag: args.tags.clone(),
        output,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        pull: args.pull,
        push: args.push,
        cache_from: args.cache_from.clone(),
        cache_to: args.cache_to.clone(),
        jobs: args.jobs,
        allow: args.allow.clone(),
        source_date_epoch,
        ssh: Vec::new(),
    };
    Ok((request, local))
}

/// Lowercase hex of the SHA-256 of the Dockerfile's path in the context and the context's
/// absolute path (docs/serve.md): the same for every build of one project from one checkout.
fn cache_key(context: &Path, file: Option<&str>) -> Result<String> {
    let context = context
        .canonicalize()
        .with_context(|| format!("build context {}", context.display()))?;
    let mut identity = file.unwrap_or("Dockerfile").as_bytes().to_vec();
    identity.push(0);
    identity.extend_from_slice(context.as_os_str().as_encoded_bytes());
    Ok(ContentDigest::of(&identity).hex())
}

/// How a remote build ended.
enum Finished {
    Done {
        id: String,
        done: serde_json::Value,
        summary: Summary,
    },
    /// The server's message (already shown progress included).
    Failed(String),
}

/// `POST /v1/builds` of `request` with `body`, which starts with the secrets line when
/// `with_secrets`.
fn submission(request: &BuildRequest, with_secrets: bool, body: Body) -> Result<Request<Body>> {
    let content_type = if with_secrets {
        secrets::CONTENT_TYPE
    } else {
        "application/x-tar"
    };
    Ok(Request::builder()
        .method(Method::POST)
        .uri("/v1/builds")
        .header(OPTIONS_HEADER, serde_json::to_string(request)?)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(body)?)
}

/// Submits the build, renders its events, and returns how it ended.
async fn follow_build(
    remote: &Remote,
    (request, secrets, agents): (&BuildRequest, &Secrets, &BTreeMap<String, PathBuf>),
    (context, filter): (&Path, Box<dyn PathFilter + Send>),
    progress: &Progress,
) -> Result<Finished> {
    let with_secrets = !secrets.is_empty();
    let head = if with_secrets {
        secrets::encode(secrets)
    } else {
        Vec::new()
    };
    let body = context_stream(head, context.to_owned(), filter);
    // Only a failure to send needs the probe: an answer says why itself.
    let answer = match remote.send(submission(request, with_secrets, body)?).await {
        Ok(answer) => answer,
        Err(sending) => return Err(why_refused(remote, request, with_secrets, sending).await),
    };
    let accepted = answered(answer).await?;
    let accepted: serde_json::Value =
        serde_json::from_slice(&accepted.into_body().collect().await?.to_bytes())
            .context("the server's answer to the submission")?;
    let id = accepted
        .get("id")
        .and_then(|id| id.as_str())
        .ok_or_else(|| anyhow!("the server accepted the build without an id"))?
        .to_string();
    // Relays the build's agent connections while this follows it; aborted when it ends.
    let _tunnel = if agents.is_empty() {
        None
    } else {
        let key = accepted
            .get("ssh_key")
            .and_then(|key| key.as_str())
            .unwrap_or_default();
        match attach_agents(remote, &id, key).await {
            Ok(upgraded) => Some(AbortOnDrop(tokio::spawn(relay_agents(
                upgraded,
                agents.clone(),
            )))),
            Err(error) => {
                // The build would wait for agents that never come.
                let cancel = Request::builder()
                    .method(Method::DELETE)
                    .uri(format!("/v1/builds/{id}"))
                    .body(Body::empty())?;
                let _ = remote.call(cancel).await;
                return Err(error.context(format!("attaching --ssh agents to build {id}")));
            }
        }
    };
    let events = Request::builder()
        .uri(format!("/v1/builds/{id}/events"))
        .body(Body::empty())?;
    let mut stream = remote.call(events).await?.into_body();
    let (sender, receiver) = mpsc::unbounded_channel();
    let renderer = tokio::spawn(progress.clone().render(receiver));
    let mut pending = Vec::new();
    let mut last = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut cancelling = false;
    loop {
        let frame = tokio::select! {
            frame = stream.frame() => frame,
            _ = &mut interrupted, if !cancelling => {
                cancelling = true;
                let cancel = Request::builder()
                    .method(Method::DELETE)
                    .uri(format!("/v1/builds/{id}"))
                    .body(Body::empty())?;
                remote.call(cancel).await?;
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.context("reading the build's events from the server")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(event) = raw_json::parse_event(&value) {
                let _ = sender.send(event);
                continue;
            }
            match value.get("event").and_then(|event| event.as_str()) {
                Some("warning") => {
                    if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
                        eprintln!("{message}");
                    }
                }
                Some("done" | "error" | "cancelled") => last = Some(value),
                _ => {}
            }
        }
    }
    drop(sender);
    let summary = renderer.await.unwrap_or_default();
    let Some(last) = last else {
        return Ok(Finished::Failed(format!(
            "error: the connection to the imgb server ended before build {id} did \
             (the server may have stopped; `GET /v1/builds` there shows its state)"
        )));
    };
    Ok(match last.get("event").and_then(|event| event.as_str()) {
        Some("done") => Finished::Done {
            id,
            done: last,
            summary,
        },
        Some("cancelled") => Finished::Failed(format!("error: build {id} was cancelled")),
        _ => Finished::Failed(
            last.get("message")
                .and_then(|message| message.as_str())
                .unwrap_or("error: the build failed on the server")
                .to_string(),
        ),
    })
}

/// Opens build `id`'s agent tunnel: `GET /v1/builds/{id}/ssh`, upgraded.
async fn attach_agents(remote: &Remote, id: &str, key: &str) -> Result<hyper::upgrade::Upgraded> {
    let request = Request::builder()
        .uri(format!("/v1/builds/{id}/ssh"))
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, ssh::UPGRADE_PROTOCOL)
        .header(ssh::KEY_HEADER, key)
        .body(Body::empty())?;
    let response = remote.send(request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        answered(response).await?;
        bail!("the imgb server did not switch to the SSH agent tunnel");
    }
    hyper::upgrade::on(response)
        .await
        .context("upgrading to the SSH agent tunnel")
}

/// Serves the server's agent connections from `agents` (id to local socket) until the tunnel
/// ends. An id that was not declared, or an agent that does not answer, closes the connection
/// (the RUN sees a dead agent).
async fn relay_agents(upgraded: hyper::upgrade::Upgraded, agents: BTreeMap<String, PathBuf>) {
    let (mut reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let (outgoing, frames) = mpsc::channel(agent_tunnel::QUEUED_FRAMES);
    let multiplexer = Multiplexer::new(outgoing);
    let writing = tokio::spawn(agent_tunnel::write_frames(writer, frames));
    loop {
        match agent_tunnel::read_frame(&mut reader).await {
            Ok(Some(Frame::Open { connection, id })) => {
                let local = match agents.get(&id) {
                    Some(socket) => tokio::net::UnixStream::connect(socket).await.ok(),
                    None => None,
                };
                let relayed =
                    local.is_some_and(|local| multiplexer.relay(connection, local).is_ok());
                if !relayed {
                    multiplexer.send(Frame::Close { connection }).await;
                }
            }
            Ok(Some(frame)) => multiplexer.deliver(frame),
            Ok(None) => break,
            Err(error) => {
                eprintln!("warning: {error}");
                break;
            }
        }
    }
    multiplexer.close_all();
    writing.abort();
}

/// A task that stops when its owner lets go of it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a submission failed while the context was being sent. A server refusing a request
/// (401, 403, bad options, secrets in the clear) answers before reading the body and closes,
/// which can reach the client as a broken pipe instead of the answer; the same request with an
/// empty body gets the answer. When that passes the checks, the context itself was refused
/// (its size) or the connection broke.
async fn why_refused(
    remote: &Remote,
    request: &BuildRequest,
    with_secrets: bool,
    sending: anyhow::Error,
) -> anyhow::Error {
    let Ok(probe) = submission(request, with_secrets, Body::empty()) else {
        return sending;
    };
    match remote.call(probe).await {
        Err(refusal) if !refusal.to_string().contains(EMPTY_CONTEXT) => refusal,
        _ => sending.context(
            "sending the build context (hint: the server refuses contexts larger than its \
             --max-context-size; a .dockerignore makes the context smaller)",
        ),
    }
}

/// `head`, then the context as a tar stream, written on a blocking thread from the walk the
/// context hashing does (so the `.dockerignore` applies the same way).
fn context_stream(head: Vec<u8>, context: PathBuf, filter: Box<dyn PathFilter + Send>) -> Body {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        if !head.is_empty() && sender.blocking_send(Ok(Bytes::from(head))).is_err() {
            return;
        }
        let writer = ChannelWriter(sender.clone());
        if let Err(error) = write_context_tar(&context, filter.as_ref(), writer) {
            let _ = sender.blocking_send(Err(std::io::Error::other(format!(
                "build context {}: {error:#}",
                context.display()
            ))));
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Body::from_stream(stream)
}

fn write_context_tar(context: &Path, filter: &dyn PathFilter, out: impl Write) -> Result<()> {
    let hashed = hash_context(context, filter, None).map_err(|error| anyhow!("{error}"))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::with_capacity(256 * 1024, out));
    archive.follow_symlinks(false);
    for entry in hashed
        .entries()
        .iter()
        .filter(|entry| !entry.path.is_empty())
    {
        let source = context.join(&entry.path);
        match entry.kind {
            EntryKind::File | EntryKind::Dir | EntryKind::Symlink { .. } => archive
                .append_path_with_name(&source, &entry.path)
                .with_context(|| format!("adding {} to the context tar", source.display()))?,
            // Devices, fifos and sockets cannot be copied into an image by COPY either.
            EntryKind::Other { .. } => {}
        }
    }
    archive
        .into_inner()
        .context("finishing the context tar")?
        .flush()
        .context("sending the context")?;
    Ok(())
}

/// Hands what is written to the request body, chunk by chunk.
struct ChannelWriter(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the server stopped reading the context"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the build's result archive to the output's destination.
async fn fetch_result(remote: &Remote, id: &str, output: &LocalOutput) -> Result<()> {
    let request = Request::builder()
        .uri(format!("/v1/builds/{id}/result"))
        .body(Body::empty())?;
    let mut body = remote.call(request).await?.into_body();
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Bytes>(8);
    let kind = output.kind;
    let dest = output.dest.clone();
    let writer = tokio::task::spawn_blocking(move || write_result(kind, &dest, receiver));
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the build result from the server")?;
        if let Ok(data) = frame.into_data()
            && sender.send(data).is_err()
        {
            break;
        }
    }
    drop(sender);
    writer.await.context("writing the build result")?
}

fn write_result(
    kind: OutputKind,
    dest: &Destination,
    chunks: std::sync::mpsc::Receiver<Bytes>,
) -> Result<()> {
    let mut reader = ChunkReader {
        chunks,
        current: Bytes::new(),
    };
    match (kind, dest) {
        (OutputKind::Local, Destination::Path(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let options = imgb_cache::ApplyOptions {
                whiteouts: imgb_cache::Whiteouts::Literal,
                root_metadata: false,
                ..imgb_cache::ApplyOptions::default()
            };
            imgb_cache::apply_layer(reader, dir, &options)
                .with_context(|| format!("unpacking the result into {}", dir.display()))?;
        }
        (_, Destination::Path(path)) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("writing {}", path.display()))?;
            std::io::copy(&mut reader, &mut file)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        (_, Destination::Stdout) => {
            std::io::copy(&mut reader, &mut std::io::stdout().lock())
                .context("writing the result to standard output")?;
        }
        (_, Destination::Store) => {}
    }
    Ok(())
}

/// Reads the chunks a channel delivers as one stream.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_name_a_socket_or_a_host_and_port() {
        assert_eq!(
            parse_url("unix:///run/imgb.sock").unwrap(),
            (Endpoint::Unix(PathBuf::from("/run/imgb.sock")), false)
        );
        let tcp = |host: &str, port| Endpoint::Tcp {
            host: host.to_string(),
            port,
        };
        assert_eq!(
            parse_url("127.0.0.1:8080").unwrap(),
            (tcp("127.0.0.1", 8080), false)
        );
        assert_eq!(parse_url("tcp://b:1").unwrap(), (tcp("b", 1), false));
        assert_eq!(
            parse_url("https://b.example:443/").unwrap(),
            (tcp("b.example", 443), true)
        );
        assert_eq!(parse_url("http://[::1]:9").unwrap(), (tcp("::1", 9), false));
        assert!(parse_url("ftp://b:1").is_err());
        assert!(parse_url("b").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        build: BuildArgs,
    }

    #[test]
    fn file_outputs_leave_their_destination_here_and_image_outputs_go_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().to_str().unwrap();
        let command = <Command as clap::Parser>::try_parse_from([
            "build",
            "-o",
            "type=oci,dest=/tmp/x.tar,name=a/b:c",
            "-o",
            "type=image,name=r/x:y",
            "--build-arg",
            "A=1",
            context,
        ])
        .unwrap();
        let (request, local) = request_for(&command.build, dir.path()).unwrap();
        assert_eq!(
            request.output,
            ["type=oci,name=a/b:c", "type=image,name=r/x:y"]
        );
        assert_eq!(request.build_arg, ["A=1"]);
        let local = local.unwrap();
        assert_eq!(local.dest, Destination::Path(PathBuf::from("/tmp/x.tar")));
        let command =
            <Command as clap::Parser>::try_parse_from(["build", "-o", "out", context]).unwrap();
        let (request, local) = request_for(&command.build, dir.path()).unwrap();
        assert_eq!(request.output, ["type=tar"]);
        assert_eq!(local.unwrap().kind, OutputKind::Local);
    }
}

//! HTTP to registries: which scheme a host speaks, which certificates it is trusted with,
//! authorization on a `401` challenge, redirects, and retries.
//!
//! Invariants:
//! - Plain HTTP only for loopback hosts and `--insecure-registry` hosts, and only after HTTPS
//!   failed (as Docker does); every other host is HTTPS, verified with the system roots plus the
//!   configured CAs and Docker's `certs.d/HOST/*.crt`.
//! - Redirects are followed here, not by the HTTP library, so the rule is visible: the
//!   `Authorization` header goes only to the registry's own origin (scheme, host, port).
//! - Tokens are cached per (host, scopes); a `401` on a cached token fetches a new one once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{AuthError, Challenge, Credentials};
use super::{RegistryConfig, RegistryError, StallLimit};

const MAX_REDIRECTS: usize = 5;
/// How much of an error body is kept for the message (registries send short JSON errors).
const ERROR_BODY_LIMIT: usize = 8 * 1024;
const TOKEN_BODY_LIMIT: usize = 1024 * 1024;
const USER_AGENT: &str = concat!("imgb/", env!("CARGO_PKG_VERSION"));
/// The OAuth2 `client_id` of refresh-token exchanges.
const OAUTH_CLIENT_ID: &str = "imgb";

/// Docker Hub's API answers on another name than its references use.
fn api_host(domain: &str) -> &str {
    if domain == "docker.io" {
        "registry-1.docker.io"
    } else {
        domain
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub(super) fn is_loopback(domain: &str) -> bool {
    let host = match domain.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => domain.split(':').next().unwrap_or(domain),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Clone)]
struct Endpoint {
    /// `https://host/` or `http://host/`.
    base: Url,
    client: reqwest::Client,
}

/// One request to a registry; `scopes` are the token scopes it needs
/// (`repository:NAME:pull`, `repository:NAME:pull,push`).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub method: Method,
    /// Relative to the registry's base (`v2/NAME/blobs/DIGEST`) or absolute (an upload
    /// location the registry returned).
    pub target: String,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    pub scopes: Vec<String>,
}

impl Call {
    pub fn new(method: Method, target: impl Into<String>, scopes: Vec<String>) -> Self {
        Self {
            method,
            target: target.into(),
            headers: HeaderMap::new(),
            body: None,
            scopes,
        }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(value) = value.parse() {
            self.headers.insert(name, value);
        }
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
}

#[derive(Debug)]
pub(super) struct Transport {
    config: RegistryConfig,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    /// (domain, scopes) → `Authorization` value.
    tokens: Mutex<HashMap<(String, String), String>>,
    credentials: Mutex<HashMap<String, Option<Credentials>>>,
}

impl Transport {
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            endpoints: Mutex::default(),
            tokens: Mutex::default(),
            credentials: Mutex::default(),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Sends `call` to `domain`, authorizing on a challenge; any status but 401/403 is returned
    /// for the caller to judge.
    pub async fn send(&self, domain: &str, call: &Call) -> Result<Response, RegistryError> {
        let endpoint = self.endpoint(domain).await?;
        let url = endpoint
            .base
            .join(&call.target)
            .map_err(|error| RegistryError::Redirect {
                url: call.target.clone(),
                reason: format!("is not a valid URL: {error}"),
            })?;
        let key = (domain.to_owned(), call.scopes.join(" "));
        let mut challenged = false;
        loop {
            let authorization = self.lock_tokens().get(&key).cloned();
            let response =
                follow(&endpoint, &call.method, url.clone(), call, authorization).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let credentials = self.credentials(domain)?;
                let authorization = self
                    .authorize(&endpoint, domain, &call.scopes, &response, credentials)
                    .await?;
                self.lock_tokens().insert(key.clone(), authorization);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Unauthorized {
                    host: domain.to_owned(),
                    url: url.to_string(),
                    detail: error_detail(response).await,
                });
            }
            return Ok(response);
        }
    }

    /// Runs `operation` again after transient failures, waiting longer each time.
    pub async fn retrying<T, F, Fut>(&self, mut operation: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 1;
        loop {
            match operation().await {
                Err(error) => match self.retry_delay(&error, attempt) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(error),
                },
                result => return result,
            }
        }
    }

    /// How long to wait before attempt `attempt + 1` after `error`; `None`: give up.
    pub fn retry_delay(&self, error: &RegistryError, attempt: u32) -> Option<Duration> {
        (error.is_transient() && attempt < self.config.attempts)
            .then(|| Duration::from_millis(200 << attempt.min(5)))
    }

    pub async fn check_login(
        &self,
        domain: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        let endpoint = self.endpoint(domain).await?;
        let call = Call::new(Method::GET, "v2/", Vec::new());
        let url = endpoint
            .base
            .join("v2/")
            .map_err(|error| RegistryError::Redirect {
                url: endpoint.base.to_string(),
                reason: error.to_string(),
            })?;
        let mut response = follow(&endpoint, &Method::GET, url.clone(), &call, None).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let authorization = self
                .authorize(&endpoint, domain, &[], &response, Some(credentials.clone()))
                .await?;
            response = follow(
                &endpoint,
                &Method::GET,
                url.clone(),
                &call,
                Some(authorization),
            )
            .await?;
        }
        match response.status() {
            status if status.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
                host: domain.to_owned(),
                url: url.to_string(),
                detail: error_detail(response).await,
            }),
            _ => Err(status_error(&Method::GET, response).await),
        }
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn credentials(&self, domain: &str) -> Result<Option<Credentials>, AuthError> {
        let mut cache = self
            .credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cache.get(domain) {
            return Ok(found.clone());
        }
        let found = self.config.credentials.lookup(domain)?;
        cache.insert(domain.to_owned(), found.clone());
        Ok(found)
    }

    /// The `Authorization` value that answers the challenge of `unauthorized_response`:
    /// basic credentials, or a bearer token from the challenge's realm for `scopes` (plus the
    /// scope the challenge names).
    async fn authorize(
        &self,
        endpoint: &Endpoint,
        domain: &str,
        scopes: &[String],
        unauthorized_response: &Response,
        credentials: Option<Credentials>,
    ) -> Result<String, RegistryError> {
        let challenge = unauthorized_response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok());
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            host: domain.to_owned(),
            url: endpoint.base.to_string(),
            detail,
        };
        let challenge = challenge.and_then(Challenge::parse).ok_or_else(|| {
            unauthorized("401 without a usable WWW-Authenticate challenge".into())
        })?;
        if let Some(token) = credentials
            .as_ref()
            .and_then(|credentials| credentials.registry_token.as_ref())
        {
            return Ok(format!("Bearer {token}"));
        }
        match challenge {
            Challenge::Basic => match credentials {
                Some(credentials) => Ok(basic(&credentials.username, &credentials.password)),
                None => Err(unauthorized(
                    "the registry needs a user name and password".into(),
                )),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let realm = Url::parse(&realm).map_err(|error| {
                    unauthorized(format!("token realm {realm:?} is not a URL: {error}"))
                })?;
                let scopes: Vec<&str> = scopes
                    .iter()
                    .chain(scope.iter())
                    .map(String::as_str)
                    .collect();
                let request = TokenRequest {
                    endpoint,
                    realm: &realm,
                    service: service.as_deref(),
                    scopes: &scopes,
                    domain,
                };
                let Some(credentials) = credentials else {
                    return request.get(None).await;
                };
                let Some(refresh_token) = &credentials.identity_token else {
                    let authorization = basic(&credentials.username, &credentials.password);
                    return request.get(Some(authorization)).await;
                };
                match request.post_refresh_token(refresh_token).await {
                    // As containerd: registries without OAuth2 POST (GCR: 404, Artifactory:
                    // 401, ACR: 400) take the refresh token as a password on GET.
                    Err(TokenError::Status(status))
                        if matches!(status.as_u16(), 400 | 401 | 404 | 405) =>
                    {
                        let authorization = basic(&credentials.username, refresh_token);
                        request.get(Some(authorization)).await
                    }
                    other => other.map_err(|error| request.error(error)),
                }
            }
        }
    }

    /// The endpoint of `domain`, found once: HTTPS, or plain HTTP where allowed and HTTPS
    /// does not answer.
    async fn endpoint(&self, domain: &str) -> Result<Endpoint, RegistryError> {
        if let Some(endpoint) = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(domain)
        {
            return Ok(endpoint.clone());
        }
        let insecure = self.config.insecure_hosts.iter().any(|host| host == domain);
        let client = self.client(domain, insecure)?;
        let host = api_host(domain);
        let parse = |scheme: &str| {
            Url::parse(&format!("{scheme}://{host}/")).map_err(|error| RegistryError::Transport {
                method: "GET".into(),
                url: format!("{scheme}://{host}/"),
                message: error.to_string(),
                hint: Some("the registry host is not valid in a URL"),
            })
        };
        let https = Endpoint {
            base: parse("https")?,
            client: client.clone(),
        };
        let endpoint = if insecure || is_loopback(domain) {
            match probe(&https).await {
                Ok(()) => https,
                Err(https_error) => {
                    let http = Endpoint {
                        base: parse("http")?,
                        client,
                    };
                    probe(&http).await.map_err(|_| https_error)?;
                    http
                }
            }
        } else {
            https
        };
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(domain.to_owned(), endpoint.clone());
        Ok(endpoint)
    }

    fn client(&self, domain: &str, insecure: bool) -> Result<reqwest::Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120));
        for path in self.ca_files(domain) {
            let certificate_error = |message: String| RegistryError::Transport {
                method: "load CA".into(),
                url: path.display().to_string(),
                message,
                hint: Some("the file must hold PEM certificates"),
            };
            let pem = std::fs::read(&path).map_err(|error| certificate_error(error.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| certificate_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(certificate_error("no certificate in the file".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        // As Docker: an insecure registry's certificate is not verified.
        builder
            .danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|error| RegistryError::Transport {
                method: "configure".into(),
                url: domain.to_owned(),
                message: error.to_string(),
                hint: None,
            })
    }

    /// The configured CA files plus Docker's `certs.d/DOMAIN/*.crt`.
    fn ca_files(&self, domain: &str) -> Vec<PathBuf> {
        let mut files = self.config.ca_files.clone();
        files.extend(crt_files(&self.config.certs_dir.join(domain)));
        files
    }
}

/// One token fetch from a challenge's realm.
struct TokenRequest<'a> {
    endpoint: &'a Endpoint,
    realm: &'a Url,
    service: Option<&'a str>,
    scopes: &'a [&'a str],
    domain: &'a str,
}

/// Why the token service gave no token.
enum TokenError {
    Transport(RegistryError),
    Status(StatusCode),
    NoToken,
}

impl TokenRequest<'_> {
    /// The docker token protocol: `GET realm?service=..&scope=..`, with basic credentials when
    /// there are any.
    async fn get(&self, authorization: Option<String>) -> Result<String, RegistryError> {
        let mut url = self.realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = self.service {
                query.append_pair("service", service);
            }
            for scope in self.scopes {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.endpoint.client.get(url);
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        self.token_of(request)
            .await
            .map_err(|error| self.error(error))
    }

    /// OAuth2: `POST realm` with the refresh token as a form (scopes space-separated).
    async fn post_refresh_token(&self, refresh_token: &str) -> Result<String, TokenError> {
        let scope = self.scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", OAUTH_CLIENT_ID),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = self.service {
            form.push(("service", service));
        }
        let request = self.endpoint.client.post(self.realm.clone()).form(&form);
        self.token_of(request).await
    }

    async fn token_of(&self, request: reqwest::RequestBuilder) -> Result<String, TokenError> {
        let response = request.send().await.map_err(|error| {
            TokenError::Transport(transport_error(&Method::GET, self.realm, &error))
        })?;
        if !response.status().is_success() {
            return Err(TokenError::Status(response.status()));
        }
        let body = read_limited(response, TOKEN_BODY_LIMIT)
            .await
            .map_err(|error| {
                TokenError::Transport(transport_error(&Method::GET, self.realm, &error))
            })?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|reply| reply.token.or(reply.access_token))
            .filter(|token| !token.is_empty())
            .ok_or(TokenError::NoToken)?;
        Ok(format!("Bearer {token}"))
    }

    fn error(&self, error: TokenError) -> RegistryError {
        let detail = match error {
            TokenError::Transport(error) => return error,
            TokenError::Status(status) => format!(
                "the token service {} answered {status}",
                self.realm.origin().ascii_serialization()
            ),
            TokenError::NoToken => "the token service sent no token".to_owned(),
        };
        RegistryError::Unauthorized {
            host: self.domain.to_owned(),
            url: self.endpoint.base.to_string(),
            detail,
        }
    }
}

fn crt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "crt"))
        .collect();
    files.sort();
    files
}

fn basic(username: &str, password: &str) -> String {
    let pair = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Whether the endpoint answers the API base. Any status counts but `400 Bad Request`, which
/// is what a TLS-only registry answers to plain HTTP (so its certificate error is reported,
/// not a confusing 400).
async fn probe(endpoint: &Endpoint) -> Result<(), RegistryError> {
    let url = endpoint
        .base
        .join("v2/")
        .unwrap_or_else(|_| endpoint.base.clone());
    let response = endpoint
        .client
        .get(url.clone())
        .send()
        .await
        .map_err(|error| transport_error(&Method::GET, &url, &error))?;
    if response.status() == StatusCode::BAD_REQUEST {
        return Err(status_error(&Method::GET, response).await);
    }
    Ok(())
}

/// Sends `call` to `url`, following redirects; `authorization` goes only to the endpoint's
/// origin.
async fn follow(
    endpoint: &Endpoint,
    method: &Method,
    mut url: Url,
    call: &Call,
    authorization: Option<String>,
) -> Result<Response, RegistryError> {
    let mut method = method.clone();
    let mut body = call.body.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = endpoint
            .client
            .request(method.clone(), url.clone())
            .headers(call.headers.clone());
        if let Some(authorization) = authorization
            .as_deref()
            .filter(|_| url.origin() == endpoint.base.origin())
        {
            request = request.header(AUTHORIZATION, authorization);
        }
        if let Some(body) = &body {
            request = request.body(body.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(&method, &url, &error))?;
        let status = response.status();
        if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let redirect = |reason: String| RegistryError::Redirect {
            url: url.to_string(),
            reason,
        };
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| redirect(format!("{status} without a Location")))?;
        let next = url
            .join(location)
            .map_err(|error| redirect(format!("to {location:?}: {error}")))?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(redirect(format!("to a {} URL", next.scheme())));
        }
        if status == StatusCode::SEE_OTHER {
            method = Method::GET;
            body = None;
        }
        url = next;
    }
    Err(RegistryError::Redirect {
        url: url.to_string(),
        reason: format!("more than {MAX_REDIRECTS} times"),
    })
}

pub(super) fn transport_error(method: &Method, url: &Url, error: &reqwest::Error) -> RegistryError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let hint = message.contains("certificate").then_some(
        "trust the registry's CA with --registry-ca FILE or /etc/docker/certs.d/HOST/ca.crt, \
         or allow it with --insecure-registry HOST",
    );
    RegistryError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        message,
        hint,
    }
}

/// A response with an unexpected status as an error, with the registry's message.
pub(super) async fn status_error(method: &Method, response: Response) -> RegistryError {
    let url = response.url().to_string();
    let status = response.status().as_u16();
    RegistryError::Status {
        method: method.to_string(),
        url,
        status,
        detail: error_detail(response).await,
    }
}

/// The messages of a distribution error body (`{"errors":[{"code","message"}]}`), else the
/// start of the body.
async fn error_detail(response: Response) -> String {
    let Ok(body) = read_limited(response, ERROR_BODY_LIMIT).await else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) => errors
            .errors
            .into_iter()
            .map(|entry| {
                [entry.code, entry.message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::from_utf8_lossy(&body)
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect(),
    }
}

/// Reads `response`'s body, handing each chunk to `sink`; fails when the body arrives slower
/// than `limit` allows.
pub(super) async fn read_body(
    mut response: Response,
    limit: StallLimit,
    mut sink: impl FnMut(&[u8]) -> Result<(), RegistryError>,
) -> Result<(), RegistryError> {
    let url = response.url().clone();
    let mut window_end = tokio::time::Instant::now() + limit.window;
    let (mut in_window, mut received) = (0u64, 0u64);
    loop {
        let next = tokio::time::timeout_at(window_end, response.chunk()).await;
        let waited_out = next.is_err();
        let chunk = match next {
            Ok(chunk) => chunk.map_err(|error| transport_error(&Method::GET, &url, &error))?,
            Err(_elapsed) => None,
        };
        if let Some(chunk) = &chunk {
            in_window += chunk.len() as u64;
            received += chunk.len() as u64;
            sink(chunk)?;
        }
        if tokio::time::Instant::now() >= window_end {
            if in_window < limit.min_bytes {
                return Err(RegistryError::Stalled {
                    url: url.to_string(),
                    received,
                    min_bytes: limit.min_bytes,
                    window: limit.window,
                });
            }
            window_end = tokio::time::Instant::now() + limit.window;
            in_window = 0;
        }
        if chunk.is_none() && !waited_out {
            return Ok(());
        }
    }
}

/// The body, cut at `limit` bytes.
pub(super) async fn read_limited(
    mut response: Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognized_with_and_without_ports() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.3.2.1:80",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn docker_hub_api_lives_on_its_own_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
    }
}

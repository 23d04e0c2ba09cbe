//! Registry credentials and authentication challenges.
//!
//! Credentials are looked up per registry host, first hit wins:
//! 1. imgb's own file, written by `imgb login` (`$IMGB_AUTH_FILE`, else
//!    `$XDG_CONFIG_HOME/imgb/auth.json`, else `~/.config/imgb/auth.json`);
//! 2. `$REGISTRY_AUTH_FILE` (podman's and skopeo's `auth.json`);
//! 3. Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
//!
//! All three share Docker's format: `credHelpers.HOST` names a helper for one host,
//! `credsStore` a helper for every host, and `auths.HOST.auth` is base64 `user:password`;
//! `auths.HOST.identitytoken` is an OAuth2 refresh token exchanged at the token realm, and
//! `auths.HOST.registrytoken` a bearer token sent as it is.
//! A helper is run as `docker-credential-NAME get` with the server on standard input; a reply
//! whose user name is `<token>` carries an identity token, as Docker reads it.
//! imgb writes only its own file (mode 0600), never Docker's: Docker's may be managed by a
//! credential store that a plain write would bypass.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;

/// Docker Hub's key in Docker's `config.json` and its credential helpers' server name.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// What a credential helper's user name is when its secret is an identity token.
const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// A user name and password (or token) for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token (`identitytoken`): exchanged for an access token at the
    /// challenge's realm instead of sending the password.
    pub identity_token: Option<String>,
    /// A bearer token for the registry itself (`registrytoken`), sent without any exchange.
    pub registry_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match (&self.registry_token, &self.identity_token) {
            (Some(_), _) => "registry token",
            (None, Some(_)) => "identity token",
            (None, None) => "password",
        };
        write!(f, "Credentials({}, {kind} <redacted>)", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid auth file: {source}", path = path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the `auth` of {host} {reason}", path = path.display())]
    BadAuthField {
        path: PathBuf,
        host: String,
        reason: &'static str,
    },
    #[error(
        "credential helper docker-credential-{helper} for {host}: {message} \
         (hint: is docker-credential-{helper} installed and on PATH?)"
    )]
    Helper {
        helper: String,
        host: String,
        message: String,
    },
    #[error("writing {path}: {source}", path = path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no place for imgb's auth file: set IMGB_AUTH_FILE, XDG_CONFIG_HOME or HOME")]
    NoAuthFile,
}

/// The files credentials are read from, in order (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct CredentialSources {
    pub files: Vec<PathBuf>,
}

impl CredentialSources {
    pub fn from_env() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let docker = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".docker")))
            .map(|dir| dir.join("config.json"));
        let files = [
            imgb_auth_file(),
            std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from),
            docker,
        ];
        Self {
            files: files.into_iter().flatten().collect(),
        }
    }

    /// The credentials for `domain` (a reference's domain, `docker.io` for Docker Hub).
    pub fn lookup(&self, domain: &str) -> Result<Option<Credentials>, AuthError> {
        for path in &self.files {
            let Some(config) = AuthConfig::read(path)? else {
                continue;
            };
            if let Some(credentials) = config.credentials(path, domain)? {
                return Ok(Some(credentials));
            }
        }
        Ok(None)
    }
}

/// `$IMGB_AUTH_FILE`, else `$XDG_CONFIG_HOME/imgb/auth.json`, else `~/.config/imgb/auth.json`.
pub fn imgb_auth_file() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    var("IMGB_AUTH_FILE").map(PathBuf::from).or_else(|| {
        var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
            .map(|dir| dir.join("imgb").join("auth.json"))
    })
}

/// Stores `credentials` for `domain` in imgb's auth file at `path` (created 0600).
pub fn save_login(path: &Path, domain: &str, credentials: &Credentials) -> Result<(), AuthError> {
    let mut document = read_document(path)?;
    let pair = format!("{}:{}", credentials.username, credentials.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(pair);
    let root = object(&mut document);
    let auths = object(root.entry("auths").or_insert_with(empty_object));
    auths.insert(domain.to_owned(), serde_json::json!({ "auth": auth }));
    write_document(path, &document)
}

/// Removes `domain` from imgb's auth file at `path`; whether it was there.
pub fn remove_login(path: &Path, domain: &str) -> Result<bool, AuthError> {
    let mut document = read_document(path)?;
    let removed = object(&mut document)
        .get_mut("auths")
        .and_then(serde_json::Value::as_object_mut)
        .and_then(|auths| auths.remove(domain))
        .is_some();
    if removed {
        write_document(path, &document)?;
    }
    Ok(removed)
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// `value` as an object, replacing whatever else it was.
fn object(value: &mut serde_json::Value) -> &mut serde_json::Map<String, serde_json::Value> {
    if !value.is_object() {
        *value = empty_object();
    }
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("replaced by an object above"),
    }
}

fn read_document(path: &Path) -> Result<serde_json::Value, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(empty_object()),
        Err(source) => Err(AuthError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes beside `path` (mode 0600) and renames over it, so a reader never sees half a file.
fn write_document(path: &Path, document: &serde_json::Value) -> Result<(), AuthError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_error = |source| AuthError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let mut bytes = serde_json::to_vec_pretty(document).unwrap_or_default();
    bytes.push(b'\n');
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("auth"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .map_err(write_error)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&staging, path))
        .map_err(|error| {
            let _ = std::fs::remove_file(&staging);
            write_error(error)
        })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl AuthConfig {
    fn read(path: &Path) -> Result<Option<Self>, AuthError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| AuthError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Docker's order: a per-host helper, the default store, then the inline entry.
    fn credentials(&self, path: &Path, domain: &str) -> Result<Option<Credentials>, AuthError> {
        let helper = self
            .cred_helpers
            .iter()
            .find(|(key, _)| normalize_key(key) == domain)
            .map(|(_, helper)| helper)
            .or(self.creds_store.as_ref());
        if let Some(helper) = helper.filter(|helper| !helper.is_empty())
            && let Some(credentials) = run_helper(helper, domain)?
        {
            return Ok(Some(credentials));
        }
        let Some(entry) = self
            .auths
            .iter()
            .find(|(key, _)| normalize_key(key) == domain)
            .map(|(_, entry)| entry)
        else {
            return Ok(None);
        };
        let (username, password) = match entry.auth.as_deref().filter(|auth| !auth.is_empty()) {
            Some(auth) => {
                let bad = |reason| AuthError::BadAuthField {
                    path: path.to_owned(),
                    host: domain.to_owned(),
                    reason,
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad("is not base64"))?;
                let text = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
                let (username, password) = text
                    .split_once(':')
                    .ok_or(bad("is not base64 of `user:password`"))?;
                (Some(username.to_owned()), Some(password.to_owned()))
            }
            None => (entry.username.clone(), entry.password.clone()),
        };
        let token = |token: &Option<String>| token.clone().filter(|token| !token.is_empty());
        let (identity_token, registry_token) =
            (token(&entry.identitytoken), token(&entry.registrytoken));
        if identity_token.is_none() && registry_token.is_none() && password.is_none() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
            identity_token,
            registry_token,
        }))
    }
}

/// A config key (`https://index.docker.io/v1/`, `http://host:5000`, `quay.io/org`) → the
/// reference domain it stands for.
fn normalize_key(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

/// Runs `docker-credential-HELPER get`; `None` when the helper has nothing for the host.
fn run_helper(helper: &str, domain: &str) -> Result<Option<Credentials>, AuthError> {
    let server = if domain == "docker.io" {
        DOCKER_HUB_SERVER
    } else {
        domain
    };
    let fail = |message: String| AuthError::Helper {
        helper: helper.to_owned(),
        host: domain.to_owned(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| fail(error.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|error| fail(error.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| fail(error.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let said = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{}: {}", output.status, said.trim())));
    }
    let reply: HelperReply = serde_json::from_str(&stdout)
        .map_err(|error| fail(format!("unreadable reply: {error}")))?;
    Ok(Some(reply.into()))
}

/// What `docker-credential-NAME get` prints.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

impl From<HelperReply> for Credentials {
    /// As Docker: the user name `<token>` marks the secret as an identity token.
    fn from(reply: HelperReply) -> Self {
        if reply.username == IDENTITY_TOKEN_USERNAME {
            Credentials {
                identity_token: Some(reply.secret),
                ..Credentials::default()
            }
        } else {
            Credentials {
                username: reply.username,
                password: reply.secret,
                ..Credentials::default()
            }
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Scheme key="value", key=token, ...`; `None` for other schemes or no realm.
    pub(super) fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        let params = parse_params(rest);
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Self::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Self::Bearer {
                realm: param("realm")?,
                service: param("service"),
                scope: param("scope"),
            })
        } else {
            None
        }
    }
}

fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_owned();
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return params;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
            value = value.trim().to_owned();
        }
        params.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_reply_for_the_token_user_is_an_identity_token() {
        let reply =
            |json: &str| Credentials::from(serde_json::from_str::<HelperReply>(json).unwrap());
        let token = reply(r#"{"ServerURL":"r","Username":"<token>","Secret":"refresh"}"#);
        assert_eq!(token.identity_token.as_deref(), Some("refresh"));
        assert_eq!((token.username.as_str(), token.password.as_str()), ("", ""));
        let password = reply(r#"{"Username":"me","Secret":"pw"}"#);
        assert_eq!(password.identity_token, None);
        assert_eq!(
            (password.username.as_str(), password.password.as_str()),
            ("me", "pw")
        );
    }

    #[test]
    fn bearer_challenge_with_quoted_and_escaped_values() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="reg\"istry",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg\"istry".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(
            Challenge::parse("Bearer realm=http://t/x , service = s"),
            Some(Challenge::Bearer {
                realm: "http://t/x".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
    }

    #[test]
    fn docker_config_keys_match_reference_domains() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("http://localhost:5000"), "localhost:5000");
        assert_eq!(normalize_key("quay.io/org"), "quay.io");
    }

    #[test]
    fn credentials_come_from_the_first_file_that_has_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("imgb.json");
        let docker = dir.path().join("config.json");
        let auth = |pair: &str| base64::engine::general_purpose::STANDARD.encode(pair);
        std::fs::write(
            &docker,
            serde_json::json!({ "auths": {
                "https://index.docker.io/v1/": { "auth": auth("hub:pw") },
                "127.0.0.1:5000": { "auth": auth("docker:old") },
                "bad.example": { "auth": "!!" },
            }})
            .to_string(),
        )
        .unwrap();
        let sources = CredentialSources {
            files: vec![first.clone(), docker],
        };
        let user = |domain| sources.lookup(domain).unwrap().map(|c| c.username);
        assert_eq!(user("docker.io").as_deref(), Some("hub"));
        assert_eq!(user("127.0.0.1:5000").as_deref(), Some("docker"));
        assert_eq!(user("ghcr.io"), None);
        let error = sources.lookup("bad.example").unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");

        let login = Credentials {
            username: "me".into(),
            password: "p:w".into(),
            ..Credentials::default()
        };
        save_login(&first, "127.0.0.1:5000", &login).unwrap();
        assert_eq!(sources.lookup("127.0.0.1:5000").unwrap(), Some(login));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&first).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(remove_login(&first, "127.0.0.1:5000").unwrap());
        assert!(!remove_login(&first, "127.0.0.1:5000").unwrap());
        assert_eq!(user("127.0.0.1:5000").as_deref(), Some("docker"));
    }
}

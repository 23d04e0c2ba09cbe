//! `imgb login`, `imgb logout`, `imgb pull` and `imgb push`, and the registry flags that
//! `imgb build` shares. The protocol is `imgb_cache::registry`'s.
//!
//! `imgb login` checks the credentials against the registry and stores them in imgb's own auth
//! file (`$IMGB_AUTH_FILE`, else `~/.config/imgb/auth.json`, mode 0600), which is read before
//! `$REGISTRY_AUTH_FILE` and Docker's `config.json`; Docker's file is never written.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use imgb_cache::oci::Platform;
use imgb_cache::registry::{Credentials, PushedImage, Registry, RegistryConfig, auth};
use imgb_cache::{
    ExportedImage, LayerCompressionChoice, Reference, Store, StoredImage, exported_image,
};

use crate::commands::open_leased_store;

/// How imgb reaches registries (shared by every command that does).
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// A registry (`host[:port]`) that may answer over plain HTTP, and whose certificate is not
    /// verified (repeatable; loopback registries never need it).
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "IMGB_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure: Vec<String>,
    /// A PEM file of CA certificates trusted for every registry, besides the system roots and
    /// `/etc/docker/certs.d/HOST/*.crt` (repeatable).
    #[arg(
        long = "registry-ca",
        value_name = "FILE",
        env = "IMGB_REGISTRY_CA",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,
}

impl RegistryArgs {
    /// The client, with `extra_insecure` hosts allowed plain HTTP too.
    pub fn client(&self, extra_insecure: impl IntoIterator<Item = String>) -> Registry {
        let mut config = RegistryConfig::from_env();
        config.insecure_hosts = self
            .insecure
            .iter()
            .cloned()
            .chain(extra_insecure)
            .collect();
        config.ca_files = self.ca_files.clone();
        Registry::new(config)
    }
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry: `host[:port]` (`docker.io` for Docker Hub).
    server: String,
    #[arg(short, long)]
    username: String,
    /// Read the password (or token) from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry: `host[:port]`.
    server: String,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `name[:tag][@digest]`.
    image: String,
    /// The platform to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The stored image: a name, `sha256:...` or an image ID prefix.
    image: String,
    /// Where to push (repeatable; default: the image's name).
    destinations: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// A multi-threaded runtime for the network work of one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `host[:port]` from what users type (`https://host/`, `host`, `docker.io`).
fn registry_host(server: &str) -> Result<String> {
    let bare = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let bare = bare.split('/').next().unwrap_or(bare);
    let reference = Reference::parse(&format!("{bare}/probe"))
        .map_err(|_| anyhow!("{server:?} is not a registry host (expected host[:port])"))?;
    Ok(match reference.domain() {
        "docker.io" if bare != "docker.io" && !bare.ends_with("docker.io") => {
            bail!("{server:?} is not a registry host (expected host[:port])")
        }
        domain => domain.to_owned(),
    })
}

pub fn login(args: &LoginArgs) -> Result<ExitCode> {
    let host = registry_host(&args.server)?;
    if !args.password_stdin {
        bail!("give the password on standard input with --password-stdin");
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Password (then Enter): ");
    }
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("the password on standard input is empty");
    }
    let credentials = Credentials {
        username: args.username.clone(),
        password,
        ..Credentials::default()
    };
    let registry = args.registry.client([]);
    runtime()?
        .block_on(registry.check_login(&host, &credentials))
        .with_context(|| format!("logging in to {host}"))?;
    let file = auth::imgb_auth_file().ok_or(auth::AuthError::NoAuthFile)?;
    auth::save_login(&file, &host, &credentials)?;
    eprintln!("Login to {host} succeeded (saved in {})", file.display());
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: &LogoutArgs) -> Result<ExitCode> {
    let host = registry_host(&args.server)?;
    let file = auth::imgb_auth_file().ok_or(auth::AuthError::NoAuthFile)?;
    if auth::remove_login(&file, &host)? {
        eprintln!("Removed the login of {host} from {}", file.display());
    } else {
        eprintln!("Not logged in to {host} (in {})", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(root: Option<PathBuf>, args: &PullArgs) -> Result<ExitCode> {
    let reference = Reference::parse(&args.image)?;
    let platform = match &args.platform {
        Some(text) => oci_platform(
            &imgb_frontend::platform::Platform::parse(text)
                .map_err(|error| anyhow!("--platform {text}: {error}"))?,
        ),
        None => Platform::host(),
    };
    let store = open_leased_store(root, "pull")?;
    let registry = args.registry.client([]);
    let image = runtime()?.block_on(async {
        let image = registry.pull_image(&store, &reference, &platform).await?;
        registry
            .ensure_blobs(&store, &image.manifest.layers)
            .await?;
        anyhow::Ok(image)
    })?;
    println!("{reference}: {}", image.descriptor.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn push(root: Option<PathBuf>, args: &PushArgs) -> Result<ExitCode> {
    let store = open_leased_store(root, "push")?;
    let (name, image) = store.find_image(&args.image)?;
    let destinations = if args.destinations.is_empty() {
        vec![name.ok_or_else(|| {
            anyhow!(
                "{} is not a name: say where to push it (imgb push IMAGE DEST)",
                args.image
            )
        })?]
    } else {
        args.destinations
            .iter()
            .map(|text| Reference::parse(text).map_err(Into::into))
            .collect::<Result<Vec<_>>>()?
    };
    let registry = args.registry.client([]);
    // Built layers gzip-compressed, as the build's own push does; media types as stored.
    let pushed = exported_image(
        &store,
        &image,
        LayerCompressionChoice::DEFAULT,
        image.manifest.is_oci(),
    )
    .context("compressing the layers to push")?;
    push_image(
        runtime()?.handle(),
        &registry,
        &store,
        &pushed,
        &destinations,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Pushes `image` to every destination and reports each on standard error.
pub fn push_image(
    runtime: &tokio::runtime::Handle,
    registry: &Registry,
    store: &Store,
    image: &ExportedImage,
    destinations: &[Reference],
) -> Result<Vec<PushedImage>> {
    let pushed = runtime
        .block_on(registry.push_image(store, image, destinations))
        .context("pushing")?;
    for result in &pushed {
        eprintln!(
            "pushed {}@{} ({} blobs uploaded, {} mounted, {} already there)",
            result.reference, result.digest, result.uploaded, result.mounted, result.already_there
        );
    }
    Ok(pushed)
}

/// Downloads the layers of `image` that the store lacks (a pulled image's layers come only
/// when something needs them).
pub fn fetch_layers(args: &RegistryArgs, store: &Store, image: &StoredImage) -> Result<()> {
    let layers = &image.manifest.layers;
    if layers
        .iter()
        .all(|layer| store.has_layer(layer, &layer.digest))
    {
        return Ok(());
    }
    runtime()?
        .block_on(args.client([]).ensure_blobs(store, layers))
        .context("fetching the image's layers from its registry")
}

/// The frontend's platform in the image model's terms.
pub fn oci_platform(platform: &imgb_frontend::platform::Platform) -> Platform {
    Platform {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        os_version: None,
        os_features: Vec::new(),
        variant: platform.variant.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_read_like_docker_login() {
        assert_eq!(registry_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(registry_host("https://ghcr.io/").unwrap(), "ghcr.io");
        assert_eq!(registry_host("docker.io").unwrap(), "docker.io");
        assert_eq!(registry_host("localhost").unwrap(), "localhost");
        assert!(registry_host("not a host").is_err());
        assert!(registry_host("busybox").is_err());
    }
}

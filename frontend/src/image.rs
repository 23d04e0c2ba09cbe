//! The image config a Dockerfile stage ends with, in OCI/Docker form: the base image's config
//! with the stage's changes, its layers and its history, as BuildKit writes them; and the way
//! back, a stored base image's config as the dispatcher's starting point.

use crate::dispatch::ImageConfig;
use crate::instructions::{CommandForm, Healthcheck};
use crate::lower::LoweredStage;
use crate::platform::Platform;
use imgb_cache::Digest;
use imgb_cache::oci::{self, Empty, HealthConfig, History};
use std::time::Duration;

/// The `comment` BuildKit puts on the history entries it writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// What the dispatcher starts a stage from, read from a stored image's config.
pub fn from_oci(config: &oci::ImageConfig) -> ImageConfig {
    let Some(container) = &config.config else {
        return ImageConfig::default();
    };
    ImageConfig {
        env: container
            .env
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (pair.clone(), String::new()),
            })
            .collect(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        user: container.user.clone().unwrap_or_default(),
        shell: container.shell.clone(),
        cmd: container.cmd.clone(),
        entrypoint: container.entrypoint.clone(),
        labels: container.labels.clone(),
        exposed_ports: container.exposed_ports.keys().cloned().collect(),
        volumes: container.volumes.keys().cloned().collect(),
        stop_signal: container.stop_signal.clone(),
        // The base's health check stays in the base config unless the stage sets one.
        healthcheck: None,
        // Run by the stage built on this image (dispatch), then cleared.
        on_build: container.on_build.clone(),
        author: config.author.clone(),
    }
}

/// The config of the image a stage produces. `base` is the base image's config (`None` for
/// scratch), `diff_ids` the stage's whole layer chain, `created` the RFC 3339 time every new
/// history entry and the config carry (`SOURCE_DATE_EPOCH` when set, for reproducible images).
pub fn stage_config(
    base: Option<&oci::ImageConfig>,
    stage: &LoweredStage,
    diff_ids: Vec<Digest>,
    created: &str,
) -> oci::ImageConfig {
    let mut image = base.cloned().unwrap_or_default();
    // The base's inline cache describes the base's build, not this one.
    image.build_cache = None;
    set_platform(&mut image, &stage.platform);
    let config = &stage.dispatched.end.config;
    let mut container = image.config.take().unwrap_or_default();
    container.env = config
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    container.cmd = config.cmd.clone();
    container.entrypoint = config.entrypoint.clone();
    container.working_dir = (!config.working_dir.is_empty()).then(|| config.working_dir.clone());
    container.user = (!config.user.is_empty()).then(|| config.user.clone());
    container.labels = config.labels.clone();
    container.exposed_ports = config
        .exposed_ports
        .iter()
        .map(|port| (normalize_port(port), Empty {}))
        .collect();
    container.volumes = config
        .volumes
        .iter()
        .map(|volume| (volume.clone(), Empty {}))
        .collect();
    container.stop_signal = config.stop_signal.clone();
    container.shell = config.shell.clone();
    // ONBUILD triggers of the base ran in this stage; only the stage's own are kept.
    container.on_build = config.on_build.clone();
    if let Some(healthcheck) = &config.healthcheck {
        container.healthcheck = Some(health_config(healthcheck));
    }
    image.config = Some(container);
    if config.author.is_some() {
        image.author = config.author.clone();
    }
    image.rootfs = oci::RootFs {
        diff_ids,
        ..oci::RootFs::default()
    };
    image.history.extend(
        stage
            .dispatched
            .history
            .iter()
            .map(|(created_by, layer)| History {
                created: Some(created.to_string()),
                created_by: Some(created_by.clone()),
                author: None,
                comment: Some(HISTORY_COMMENT.to_string()),
                empty_layer: !layer,
            }),
    );
    image.created = Some(created.to_string());
    image
}

fn set_platform(image: &mut oci::ImageConfig, platform: &Platform) {
    image.os = platform.os.clone();
    image.architecture = platform.architecture.clone();
    image.variant = platform.variant.clone();
}

/// `80` → `80/tcp`, as Docker stores exposed ports.
fn normalize_port(port: &str) -> String {
    if port.contains('/') {
        port.to_lowercase()
    } else {
        format!("{port}/tcp")
    }
}

fn health_config(healthcheck: &Healthcheck) -> HealthConfig {
    let nanos = |duration: Duration| {
        (!duration.is_zero()).then(|| duration.as_nanos().min(i64::MAX as u128) as i64)
    };
    match healthcheck {
        Healthcheck::Disabled => HealthConfig {
            test: vec!["NONE".to_string()],
            ..HealthConfig::default()
        },
        Healthcheck::Check(check) => {
            let mut test = vec![match check.form {
                CommandForm::Exec => "CMD".to_string(),
                CommandForm::Shell => "CMD-SHELL".to_string(),
            }];
            test.extend(check.command.iter().cloned());
            HealthConfig {
                test,
                interval: nanos(check.interval),
                timeout: nanos(check.timeout),
                start_period: nanos(check.start_period),
                start_interval: nanos(check.start_interval),
                retries: (check.retries > 0).then_some(i64::from(check.retries)),
            }
        }
    }
}

/// RFC 3339 UTC for `SOURCE_DATE_EPOCH` or the current time.
pub fn created_time(source_date_epoch: Option<i64>) -> String {
    let seconds = source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64)
    });
    oci::rfc3339_utc(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BuildOptions, BuildPlan, Dockerfile};
    use imgb_cache::oci::ContainerConfig;

    fn target_config(source: &str, base: Option<&oci::ImageConfig>) -> oci::ImageConfig {
        let dockerfile = Dockerfile::parse("Dockerfile", source).unwrap();
        let options = BuildOptions::default();
        let plan = BuildPlan::new(&dockerfile, &options).unwrap();
        let base_for_lowering = base.map(from_oci).unwrap_or_default();
        let lowered = crate::lower::lower(&dockerfile, &plan, &options, &mut |_, _| {
            Ok(base_for_lowering.clone())
        })
        .unwrap();
        stage_config(
            base,
            lowered.target_stage(),
            Vec::new(),
            "2024-01-01T00:00:00Z",
        )
    }

    #[test]
    fn config_carries_the_stage_settings_and_history() {
        let image = target_config(
            "FROM scratch\nENV A=1\nEXPOSE 80 53/UDP\nWORKDIR /app\nUSER 1000\nLABEL l=v\nCMD [\"run\"]\nHEALTHCHECK --interval=5s CMD check\n",
            None,
        );
        let container = image.config.as_ref().unwrap();
        assert!(container.env.contains(&"A=1".to_string()));
        assert!(
            container.exposed_ports.contains_key("80/tcp")
                && container.exposed_ports.contains_key("53/udp")
        );
        assert_eq!(container.working_dir.as_deref(), Some("/app"));
        assert_eq!(container.user.as_deref(), Some("1000"));
        assert_eq!(container.cmd, Some(vec!["run".to_string()]));
        let health = container.healthcheck.as_ref().unwrap();
        assert_eq!(health.test, vec!["CMD-SHELL", "check"]);
        assert_eq!(health.interval, Some(5_000_000_000));
        assert_eq!(image.history.len(), 7);
        assert!(
            image
                .history
                .iter()
                .all(|entry| entry.comment.as_deref() == Some(HISTORY_COMMENT))
        );
        assert_eq!(
            image
                .history
                .iter()
                .filter(|entry| !entry.empty_layer)
                .count(),
            1,
            "only WORKDIR made a layer"
        );
    }

    #[test]
    fn base_history_and_settings_are_kept() {
        let base = oci::ImageConfig {
            history: vec![History {
                created_by: Some("base layer".into()),
                ..History::default()
            }],
            config: Some(ContainerConfig {
                env: vec!["PATH=/bin".into(), "B=2".into()],
                user: Some("nobody".into()),
                ..ContainerConfig::default()
            }),
            ..oci::ImageConfig::default()
        };
        let image = target_config("FROM base\nENV C=3\n", Some(&base));
        let container = image.config.unwrap();
        assert_eq!(container.env, vec!["PATH=/bin", "B=2", "C=3"]);
        assert_eq!(container.user.as_deref(), Some("nobody"));
        assert_eq!(image.history[0].created_by.as_deref(), Some("base layer"));
        assert_eq!(image.history.len(), 2);
    }

    #[test]
    fn source_date_epoch_sets_the_created_time() {
        assert_eq!(created_time(Some(0)), "1970-01-01T00:00:00Z");
    }
}

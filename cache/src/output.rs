//! The `-o`/`--output` syntax of `docker buildx`: `type=oci,dest=out.tar,name=app:1,...`.
//!
//! Fields are comma-separated CSV (a field may be double-quoted to hold commas, `""` inside
//! quotes is a quote), each `key=value` with a case-insensitive key. As in buildx, a value with
//! no `=` at all is a shorthand: `-` means `type=tar,dest=-` and anything else
//! `type=local,dest=VALUE`. Every key is checked against the keys its type accepts, and errors
//! name the offending key and list the valid ones.

use std::fmt;
use std::path::PathBuf;

use crate::compress::Compression;
use crate::export::LayerCompressionChoice;
use crate::reference::Reference;

/// What an export produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// An OCI image layout (tar, or a directory with `tar=false`).
    Oci,
    /// A docker-archive that is also an OCI layout (as BuildKit's `type=docker` writes).
    Docker,
    /// The flattened root filesystem in a directory.
    Local,
    /// The flattened root filesystem as one tar.
    Tar,
    /// The image in the store under its names, and pushed to their registries with
    /// `push=true` (`type=registry` is `type=image,push=true`, as in buildx).
    Image,
}

impl OutputKind {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "oci" => Self::Oci,
            "docker" => Self::Docker,
            "local" => Self::Local,
            "tar" => Self::Tar,
            "image" | "registry" => Self::Image,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Oci => "oci",
            Self::Docker => "docker",
            Self::Local => "local",
            Self::Tar => "tar",
            Self::Image => "image",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        const IMAGE: &[&str] = &[
            "type",
            "dest",
            "name",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
        ];
        const OCI: &[&str] = &[
            "type",
            "dest",
            "name",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
            "tar",
        ];
        const FILES: &[&str] = &["type", "dest"];
        const REGISTRY: &[&str] = &[
            "type",
            "name",
            "push",
            "registry.insecure",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
        ];
        match self {
            Self::Oci => OCI,
            Self::Docker => IMAGE,
            Self::Local | Self::Tar => FILES,
            Self::Image => REGISTRY,
        }
    }
}

/// Where the output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Path(PathBuf),
    /// `dest=-`: standard output (tar outputs only).
    Stdout,
    /// `type=image`: the image store (and the registries, with `push=true`).
    Store,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Stdout => f.write_str("standard output"),
            Self::Store => f.write_str("the image store"),
        }
    }
}

/// A parsed `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub dest: Destination,
    /// `name=`: the names recorded in the output (empty: the caller's default).
    pub names: Vec<Reference>,
    /// `compression=` (+ `compression-level=`); `None` keeps each layer as stored.
    pub compression: Option<Compression>,
    /// `force-compression=true`: recompress layers stored with another compression.
    pub force_compression: bool,
    /// `oci-mediatypes=`; `None` is the type's default (OCI for `oci`, Docker for `docker`).
    pub oci_mediatypes: Option<bool>,
    /// `tar=false` writes an OCI layout directory.
    pub tar: bool,
    /// `push=true` (image outputs): push every name to its registry.
    pub push: bool,
    /// `registry.insecure=true`: the names' registries may answer over plain HTTP.
    pub insecure_registry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid output {spec:?}: {reason}")]
pub struct OutputSpecError {
    pub spec: String,
    /// The key at fault, when one is.
    pub key: Option<String>,
    pub reason: String,
}

impl OutputSpec {
    pub fn parse(spec: &str) -> Result<Self, OutputSpecError> {
        let fail = |key: Option<&str>, reason: String| OutputSpecError {
            spec: spec.to_owned(),
            key: key.map(str::to_owned),
            reason,
        };
        if !spec.contains('=') {
            let (kind, dest) = match spec {
                "" => return Err(fail(None, "empty".to_owned())),
                "-" => (OutputKind::Tar, Destination::Stdout),
                dir => (OutputKind::Local, Destination::Path(PathBuf::from(dir))),
            };
            return Ok(Self::new(kind, dest));
        }
        let mut fields = Vec::new();
        for field in split_csv(spec).map_err(|reason| fail(None, reason))? {
            let Some((key, value)) = field.split_once('=') else {
                return Err(fail(
                    Some(&field),
                    format!("field {field:?} is not key=value"),
                ));
            };
            fields.push((key.trim().to_ascii_lowercase(), value.to_owned()));
        }
        let kind = match fields.iter().find(|(key, _)| key == "type") {
            Some((_, value)) => OutputKind::parse(value).ok_or_else(|| {
                fail(
                    Some("type"),
                    format!(
                        "unknown type {value:?} (valid: oci, docker, local, tar, image, registry)"
                    ),
                )
            })?,
            None => return Err(fail(Some("type"), "missing type=".to_owned())),
        };
        let mut output = Self::new(kind, Destination::Stdout);
        output.push = fields
            .iter()
            .any(|(key, value)| key == "type" && value == "registry");
        let mut dest = None;
        let mut level = None;
        for (key, value) in &fields {
            if !kind.keys().contains(&key.as_str()) {
                return Err(fail(
                    Some(key),
                    format!(
                        "unknown key {key:?} for type={} (valid keys: {})",
                        kind.name(),
                        kind.keys().join(", ")
                    ),
                ));
            }
            let boolean = || {
                parse_bool(value)
                    .ok_or_else(|| fail(Some(key), format!("{key}={value:?} is not true or false")))
            };
            match key.as_str() {
                "type" => {}
                "dest" => dest = Some(value.clone()),
                "name" => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        let reference = Reference::parse(name)
                            .map_err(|error| fail(Some(key), error.to_string()))?;
                        output.names.push(reference);
                    }
                }
                "compression" => {
                    output.compression = Some(compression_named(value).ok_or_else(|| {
                        fail(
                            Some(key),
                            format!(
                                "unsupported compression {value:?} \
                                 (valid: gzip, zstd, uncompressed)"
                            ),
                        )
                    })?)
                }
                "compression-level" => {
                    level = Some(value.parse::<i32>().map_err(|_| {
                        fail(Some(key), format!("{key}={value:?} is not an integer"))
                    })?)
                }
                "force-compression" => output.force_compression = boolean()?,
                "oci-mediatypes" => output.oci_mediatypes = Some(boolean()?),
                "tar" => output.tar = boolean()?,
                "push" => output.push = boolean()?,
                "registry.insecure" => output.insecure_registry = boolean()?,
                // Every key `kind.keys()` allows has an arm above.
                _ => {}
            }
        }
        if let Some(level) = level {
            let compression = output.compression.unwrap_or(Compression::GZIP_DEFAULT);
            let leveled = match compression {
                Compression::Gzip { .. } => Compression::Gzip {
                    level: u32::try_from(level).unwrap_or(u32::MAX),
                },
                Compression::Zstd { .. } => Compression::Zstd { level },
                Compression::None => {
                    return Err(fail(
                        Some("compression-level"),
                        "compression-level needs compression=gzip or zstd".to_owned(),
                    ));
                }
            };
            let valid = leveled
                .validate()
                .map_err(|error| fail(Some("compression-level"), error.to_string()))?;
            output.compression = Some(valid);
        }
        output.dest = match dest.as_deref() {
            None if kind == OutputKind::Image => Destination::Store,
            None | Some("") => {
                return Err(fail(
                    Some("dest"),
                    format!("type={} needs dest=PATH", kind.name()),
                ));
            }
            Some("-") if matches!(kind, OutputKind::Local) || !output.tar => {
                return Err(fail(
                    Some("dest"),
                    "dest=- (standard output) needs a tar output".to_owned(),
                ));
            }
            Some("-") => Destination::Stdout,
            Some(path) => Destination::Path(PathBuf::from(path)),
        };
        Ok(output)
    }

    fn new(kind: OutputKind, dest: Destination) -> Self {
        Self {
            kind,
            dest,
            names: Vec::new(),
            compression: None,
            force_compression: false,
            oci_mediatypes: None,
            tar: true,
            push: false,
            insecure_registry: false,
        }
    }

    /// How this output compresses layers: with `compression=` (default gzip, as BuildKit),
    /// applied to every layer with `force-compression=true`.
    pub fn layer_compression(&self) -> LayerCompressionChoice {
        LayerCompressionChoice {
            compression: self.compression.unwrap_or(Compression::GZIP_DEFAULT),
            force: self.force_compression,
        }
    }

    /// Whether manifests and layers get OCI media types.
    pub fn uses_oci_media_types(&self) -> bool {
        self.oci_mediatypes.unwrap_or(match self.kind {
            // BuildKit switches docker outputs to OCI types when zstd is asked for: Docker
            // media types have no zstd layer type that Docker itself reads.
            OutputKind::Docker => matches!(self.compression, Some(Compression::Zstd { .. })),
            _ => true,
        })
    }
}

/// `gzip`, `zstd` or `uncompressed`, at the default level.
pub fn compression_named(name: &str) -> Option<Compression> {
    Some(match name {
        "gzip" => Compression::GZIP_DEFAULT,
        "zstd" => Compression::ZSTD_DEFAULT,
        "uncompressed" => Compression::None,
        _ => return None,
    })
}

/// Go's `strconv.ParseBool`, which buildx uses.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// One CSV record: fields split at commas outside double quotes.
pub fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if at_field_start => quoted = true,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_field_start = false;
    }
    if quoted {
        return Err("unterminated double quote".to_owned());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> OutputSpec {
        OutputSpec::parse(spec).unwrap()
    }

    fn error(spec: &str) -> OutputSpecError {
        OutputSpec::parse(spec).unwrap_err()
    }

    #[test]
    fn image_outputs_parse_every_key() {
        let spec = parse(
            "type=oci,dest=out.tar,name=app:1,compression=zstd,compression-level=5,\
             force-compression=true,oci-mediatypes=true,tar=false",
        );
        assert_eq!(spec.kind, OutputKind::Oci);
        assert_eq!(spec.dest, Destination::Path("out.tar".into()));
        assert_eq!(spec.names[0].to_string(), "docker.io/library/app:1");
        assert_eq!(spec.compression, Some(Compression::Zstd { level: 5 }));
        assert!(spec.force_compression && !spec.tar);
        assert_eq!(spec.oci_mediatypes, Some(true));
    }

    #[test]
    fn image_outputs_push_to_their_names_and_registry_means_push() {
        let spec = parse("type=image,name=127.0.0.1:5000/app:1,push=true,registry.insecure=true");
        assert_eq!(spec.kind, OutputKind::Image);
        assert_eq!(spec.dest, Destination::Store);
        assert!(spec.push && spec.insecure_registry);
        assert_eq!(spec.names[0].to_string(), "127.0.0.1:5000/app:1");
        assert!(parse("type=registry,name=r.example/a").push);
        assert!(!parse("type=image").push);
        assert_eq!(error("type=image,dest=x").key.as_deref(), Some("dest"));
    }

    #[test]
    fn quoted_fields_hold_commas_and_keys_are_case_insensitive() {
        let spec = parse(r#"TYPE=docker,"name=a:1,b:2","Dest=my ""file"".tar""#);
        assert_eq!(spec.kind, OutputKind::Docker);
        assert_eq!(spec.names.len(), 2);
        assert_eq!(spec.dest, Destination::Path("my \"file\".tar".into()));
        assert!(!spec.uses_oci_media_types());
        assert!(parse("type=docker,dest=x,compression=zstd").uses_oci_media_types());
    }

    #[test]
    fn layer_compression_defaults_to_gzip_like_buildkit() {
        let choice = |spec: &str| parse(spec).layer_compression();
        assert_eq!(
            choice("type=oci,dest=x"),
            LayerCompressionChoice {
                compression: Compression::GZIP_DEFAULT,
                force: false
            }
        );
        assert_eq!(
            choice("type=oci,dest=x,compression=zstd").compression,
            Compression::ZSTD_DEFAULT
        );
        assert!(choice("type=oci,dest=x,force-compression=true").force);
        assert_eq!(
            choice("type=oci,dest=x,compression=uncompressed,force-compression=1"),
            LayerCompressionChoice {
                compression: Compression::None,
                force: true
            }
        );
    }

    #[test]
    fn shorthand_values_follow_buildx() {
        assert_eq!(parse("-").kind, OutputKind::Tar);
        assert_eq!(parse("-").dest, Destination::Stdout);
        let local = parse("out/dir");
        assert_eq!(local.kind, OutputKind::Local);
        assert_eq!(local.dest, Destination::Path("out/dir".into()));
    }

    #[test]
    fn errors_name_the_bad_key() {
        let unknown = error("type=oci,dest=x,destination=y");
        assert_eq!(unknown.key.as_deref(), Some("destination"));
        assert!(
            unknown.reason.contains("valid keys: type, dest"),
            "{unknown}"
        );
        assert_eq!(
            error("type=local,dest=x,name=a").key.as_deref(),
            Some("name")
        );
        assert_eq!(
            error("type=oci,dest=x,tar=maybe").key.as_deref(),
            Some("tar")
        );
        assert_eq!(error("type=zip,dest=x").key.as_deref(), Some("type"));
        assert_eq!(error("dest=x").key.as_deref(), Some("type"));
        assert_eq!(error("type=oci").key.as_deref(), Some("dest"));
        assert_eq!(error("type=local,dest=-").key.as_deref(), Some("dest"));
        assert_eq!(
            error("type=oci,dest=-,tar=false").key.as_deref(),
            Some("dest")
        );
        assert_eq!(
            error("type=oci,dest=x,compression=brotli").key.as_deref(),
            Some("compression")
        );
        assert_eq!(
            error("type=oci,dest=x,compression-level=10").key.as_deref(),
            Some("compression-level")
        );
        assert_eq!(
            error("type=oci,dest=x,name=Bad").key.as_deref(),
            Some("name")
        );
        assert!(error(r#"type=oci,"dest=x"#).reason.contains("quote"));
        assert!(error("type=oci,dest=x,oops").reason.contains("key=value"));
    }
}

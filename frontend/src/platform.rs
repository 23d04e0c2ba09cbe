//! Platforms (`linux/amd64`, `linux/arm/v7`) and the predefined platform build args.

use std::fmt;

/// An OCI platform: operating system, architecture and optional variant, normalized as
/// containerd normalizes them (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm` → `arm/v7`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform imgb runs on (always Linux).
    pub fn host() -> Platform {
        let (architecture, variant) = normalize_arch(std::env::consts::ARCH, None);
        Platform {
            os: "linux".to_string(),
            architecture,
            variant,
        }
    }

    /// Parses `os[/arch[/variant]]` or a bare architecture (`arm64` means `linux/arm64`).
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        if parts.len() > 3 || !parts.iter().all(valid) {
            return Err(format!(
                "\"{text}\": invalid platform: expected os/arch[/variant], e.g. linux/amd64"
            ));
        }
        let lower: Vec<String> = parts.iter().map(|part| part.to_ascii_lowercase()).collect();
        let (os, arch, variant) = match lower.as_slice() {
            [single] if is_known_os(single) => {
                (single.clone(), Platform::host().architecture, None)
            }
            [single] => ("linux".to_string(), single.clone(), None),
            [os, arch] => (os.clone(), arch.clone(), None),
            [os, arch, variant] => (os.clone(), arch.clone(), Some(variant.clone())),
            _ => return Err(format!("\"{text}\": invalid platform")),
        };
        if !is_known_os(&os) {
            return Err(format!(
                "\"{text}\": unknown operating system or architecture: {os}"
            ));
        }
        let (architecture, variant) = normalize_arch(&arch, variant.as_deref());
        Ok(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// The predefined args for this platform with `prefix` `TARGET` or `BUILD`:
    /// `{prefix}PLATFORM`, `{prefix}OS`, `{prefix}ARCH`, `{prefix}VARIANT`.
    pub fn build_args(&self, prefix: &str) -> [(String, String); 4] {
        [
            (format!("{prefix}PLATFORM"), self.to_string()),
            (format!("{prefix}OS"), self.os.clone()),
            (format!("{prefix}ARCH"), self.architecture.clone()),
            (
                format!("{prefix}VARIANT"),
                self.variant.clone().unwrap_or_default(),
            ),
        ]
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "linux"
            | "windows"
            | "darwin"
            | "freebsd"
            | "netbsd"
            | "openbsd"
            | "solaris"
            | "illumos"
            | "aix"
            | "android"
            | "ios"
            | "js"
            | "wasip1"
            | "plan9"
            | "dragonfly"
    )
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let owned = |v: Option<&str>| v.map(str::to_string);
    match (arch, variant) {
        ("i386", _) => ("386".into(), None),
        ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64".into(), None),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64".into(), owned(v)),
        ("aarch64" | "arm64", Some("8" | "v8") | None) => ("arm64".into(), None),
        ("aarch64" | "arm64", v) => ("arm64".into(), owned(v)),
        ("armhf", _) => ("arm".into(), Some("v7".into())),
        ("armel", _) => ("arm".into(), Some("v6".into())),
        ("arm", None | Some("7")) => ("arm".into(), Some("v7".into())),
        ("arm", Some("5" | "6" | "8")) => ("arm".into(), variant.map(|v| format!("v{v}"))),
        (other, v) => (other.to_string(), owned(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_like_containerd() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("arm64", "linux/arm64"),
            ("Linux/AMD64", "linux/amd64"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Platform::parse(input).unwrap().to_string(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn malformed_platforms_are_rejected() {
        for input in [
            "",
            "linux//amd64",
            "linux/amd64/v1/x",
            "plan 9/x",
            "beos/amd64",
        ] {
            assert!(
                Platform::parse(input).is_err(),
                "{input:?} should be rejected"
            );
        }
    }

    #[test]
    fn predefined_args_for_amd64_have_an_empty_variant() {
        let args = Platform::parse("linux/amd64").unwrap().build_args("TARGET");
        assert_eq!(
            args[0],
            ("TARGETPLATFORM".to_string(), "linux/amd64".to_string())
        );
        assert_eq!(args[3], ("TARGETVARIANT".to_string(), String::new()));
    }
}

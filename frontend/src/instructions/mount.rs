//! `RUN --mount=<csv>` values, in BuildKit's two passes (`commands_runmount.go`):
//! - [`scan`] at parse time: the value must be valid CSV, and `from=` may not use variables
//!   (the stage planner needs it before any variable is known);
//! - [`resolve`] at expansion: every option value is expanded, then the options are interpreted
//!   and checked against the mount type.

use super::WordExpander;
use crate::diagnostic::Diagnostic;
use crate::suggest;

/// `type=` of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    /// A file or directory of the build context or another stage (the default).
    Bind,
    /// A persistent cache directory.
    Cache,
    Tmpfs,
    /// A build secret, as a file or (with `env=`) an environment variable.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

impl MountType {
    const ALL: [MountType; 5] = [
        MountType::Bind,
        MountType::Cache,
        MountType::Tmpfs,
        MountType::Secret,
        MountType::Ssh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }

    /// Whether `mode=`, `uid=` and `gid=` apply.
    fn has_file_info(self) -> bool {
        matches!(self, MountType::Secret | MountType::Ssh | MountType::Cache)
    }
}

/// `sharing=` of a cache mount: how concurrent builds share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

impl CacheSharing {
    const ALL: [CacheSharing; 3] = [
        CacheSharing::Shared,
        CacheSharing::Private,
        CacheSharing::Locked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheSharing::Shared => "shared",
            CacheSharing::Private => "private",
            CacheSharing::Locked => "locked",
        }
    }
}

/// A validated, expanded `--mount`. Text fields are empty when not given, as in BuildKit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountType,
    /// `from=`: the stage or image to mount from (bind, cache); empty for the build context.
    pub from: String,
    /// `source=` / `src=`: the path in `from`, or a secret's or SSH agent's id.
    pub source: String,
    /// `target=` / `dst=` / `destination=`: the path in the container.
    pub target: String,
    /// `ro` / `rw`; read-only by default except for cache and tmpfs mounts.
    pub read_only: bool,
    /// `size=` of a tmpfs mount, in bytes; 0 for no limit.
    pub size_limit: u64,
    /// `id=`: the cache's or secret's id.
    pub cache_id: String,
    pub sharing: Option<CacheSharing>,
    /// `required`: fail when the secret or SSH agent is missing.
    pub required: bool,
    /// `env=`: expose a secret as this environment variable (an empty name means the default).
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for Mount {
    fn default() -> Self {
        Mount {
            kind: MountType::Bind,
            from: String::new(),
            source: String::new(),
            target: String::new(),
            read_only: false,
            size_limit: 0,
            cache_id: String::new(),
            sharing: None,
            required: false,
            env: None,
            mode: None,
            uid: None,
            gid: None,
        }
    }
}

/// Every option key, for "did you mean".
const KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// The parse-time pass: checks the CSV and returns `from=` as written (the last one given).
pub(super) fn scan(spec: &str) -> Result<Option<String>, Diagnostic> {
    let mut from = None;
    for field in csv_fields(spec)? {
        if let Some((key, value)) = field.split_once('=')
            && key.eq_ignore_ascii_case("from")
        {
            // A `$` at the very end cannot start a variable.
            if value.find('$').is_some_and(|at| at + 1 < value.len()) {
                return Err(Diagnostic::error(
                    "'from' doesn't support variable expansion, define alias stage instead",
                )
                .with_hint(
                    "add `FROM <image> AS <name>` using a global ARG, then mount from=<name>",
                ));
            }
            from = Some(value.to_string());
        }
    }
    Ok(from)
}

/// The expansion pass: expands each option value with `expand` and builds the mount.
pub(super) fn resolve(spec: &str, expand: &mut WordExpander<'_>) -> Result<Mount, Diagnostic> {
    let mut mount = Mount::default();
    let mut read_only_given = false;
    for field in csv_fields(spec)? {
        let Some((key, value)) = field.split_once('=') else {
            match field.to_lowercase().as_str() {
                "readonly" | "ro" => (mount.read_only, read_only_given) = (true, true),
                "readwrite" | "rw" => (mount.read_only, read_only_given) = (false, true),
                "required" => {
                    require_secret_or_ssh(&mount, "required")?;
                    mount.required = true;
                }
                _ => {
                    return Err(Diagnostic::error(format!(
                        "invalid field '{field}' must be a key=value pair"
                    ))
                    .with_hint(
                        "mount options are key=value pairs, e.g. type=cache,target=/root/.cache",
                    ));
                }
            }
            continue;
        };
        let key = key.to_lowercase();
        let value = expand(value)?;
        match key.as_str() {
            "type" => mount.kind = mount_type(&value)?,
            "from" => mount.from = value,
            "source" | "src" => mount.source = value,
            "target" | "dst" | "destination" => mount.target = value,
            "readonly" | "ro" => {
                mount.read_only =
                    go_parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
                read_only_given = true;
            }
            "readwrite" | "rw" => {
                mount.read_only =
                    !go_parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
                read_only_given = true;
            }
            "required" => {
                require_secret_or_ssh(&mount, &key)?;
                mount.required =
                    go_parse_bool(&value).ok_or_else(|| invalid_value(&key, &value))?;
            }
            "size" => {
                if mount.kind != MountType::Tmpfs {
                    return Err(unexpected_for_type(&key, mount.kind));
                }
                mount.size_limit = ram_in_bytes(&value).ok_or_else(|| {
                    invalid_value(&key, &value)
                        .with_hint("give a size such as 64m, 1g or 512k (powers of 1024)")
                })?;
            }
            "id" => mount.cache_id = value,
            "sharing" => mount.sharing = Some(sharing(&value)?),
            "mode" => mount.mode = Some(number(&key, &value, 8)?),
            "uid" => mount.uid = Some(number(&key, &value, 10)?),
            "gid" => mount.gid = Some(number(&key, &value, 10)?),
            "env" => mount.env = Some(value),
            _ => {
                let error = Diagnostic::error(format!("unexpected key '{key}' in '{field}'"));
                return Err(match suggest::closest(&key, KEYS, true) {
                    Some(near) => error.with_hint(format!("did you mean {near}?")),
                    None => error.with_hint(format!("the mount options are {}", KEYS.join(", "))),
                });
            }
        }
    }
    check_combination(&mut mount, read_only_given)?;
    Ok(mount)
}

fn check_combination(mount: &mut Mount, read_only_given: bool) -> Result<(), Diagnostic> {
    let kind = mount.kind;
    if !kind.has_file_info() {
        for (option, given) in [
            ("mode", mount.mode.is_some()),
            ("uid", mount.uid.is_some()),
            ("gid", mount.gid.is_some()),
        ] {
            if given {
                return Err(Diagnostic::error(format!(
                    "{option} not allowed for {:?} type mounts",
                    kind.as_str()
                ))
                .with_hint("mode, uid and gid apply to cache, secret and ssh mounts"));
            }
        }
    }
    if !read_only_given {
        mount.read_only = !matches!(kind, MountType::Cache | MountType::Tmpfs);
    }
    if kind == MountType::Secret {
        if !mount.from.is_empty() {
            return Err(Diagnostic::error("secret mount should not have a from"));
        }
        if mount.sharing.is_some() {
            return Err(Diagnostic::error("secret mount should not define sharing"));
        }
        if mount.source.is_empty() && mount.target.is_empty() && mount.cache_id.is_empty() {
            return Err(
                Diagnostic::error("invalid secret mount. one of source, target required")
                    .with_hint("name the secret with id=<id> (or give its target path)"),
            );
        }
        if !mount.source.is_empty() && !mount.cache_id.is_empty() {
            return Err(Diagnostic::error("both source and id can't be set"));
        }
    }
    if mount.sharing.is_some() && kind != MountType::Cache {
        return Err(Diagnostic::error(format!(
            "invalid cache sharing set for {} mount",
            kind.as_str()
        ))
        .with_hint("sharing= applies to type=cache mounts"));
    }
    Ok(())
}

fn require_secret_or_ssh(mount: &Mount, key: &str) -> Result<(), Diagnostic> {
    match mount.kind {
        MountType::Secret | MountType::Ssh => Ok(()),
        kind => Err(unexpected_for_type(key, kind)
            .with_hint("`required` applies to secret and ssh mounts; put type= first")),
    }
}

fn unexpected_for_type(key: &str, kind: MountType) -> Diagnostic {
    Diagnostic::error(format!(
        "unexpected key '{key}' for mount type '{}'",
        kind.as_str()
    ))
}

fn invalid_value(key: &str, value: &str) -> Diagnostic {
    Diagnostic::error(format!("invalid value for {key}: {value}"))
}

fn mount_type(value: &str) -> Result<MountType, Diagnostic> {
    let lowered = value.to_lowercase();
    if let Some(kind) = MountType::ALL
        .into_iter()
        .find(|kind| kind.as_str() == lowered)
    {
        return Ok(kind);
    }
    let names = MountType::ALL.map(MountType::as_str);
    Err(with_choices(
        Diagnostic::error(format!("unsupported mount type {value:?}")),
        value,
        &names,
    ))
}

fn sharing(value: &str) -> Result<CacheSharing, Diagnostic> {
    let lowered = value.to_lowercase();
    if let Some(mode) = CacheSharing::ALL
        .into_iter()
        .find(|mode| mode.as_str() == lowered)
    {
        return Ok(mode);
    }
    let names = CacheSharing::ALL.map(CacheSharing::as_str);
    Err(with_choices(
        Diagnostic::error(format!("unsupported sharing value {value:?}")),
        value,
        &names,
    ))
}

/// Hints at the nearest choice, or lists them all.
fn with_choices(error: Diagnostic, value: &str, choices: &[&str]) -> Diagnostic {
    match suggest::closest(value, choices.iter().copied(), true) {
        Some(near) => error.with_hint(format!("did you mean {near}?")),
        None => error.with_hint(format!("use one of {}", choices.join(", "))),
    }
}

fn number(key: &str, value: &str, radix: u32) -> Result<u32, Diagnostic> {
    super::go_parse_u32(value, radix).ok_or_else(|| {
        let example = if radix == 8 {
            "an octal mode such as 0700"
        } else {
            "a number such as 1000"
        };
        Diagnostic::error(format!("invalid value {value} for {key}"))
            .with_hint(format!("give {example}"))
    })
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// docker/go-units `RAMInBytes`: a decimal number, an optional space, and an optional suffix
/// `b`, or `k`/`m`/`g`/`t`/`p` (powers of 1024) followed by nothing, `b` or `ib`, any case.
fn ram_in_bytes(text: &str) -> Option<u64> {
    let last_number_char = text.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (number, suffix) = if text[last_number_char..].starts_with(' ') {
        (&text[..last_number_char], &text[last_number_char + 1..])
    } else {
        text.split_at(last_number_char + 1)
    };
    let size: f64 = number
        .parse()
        .ok()
        .filter(|size: &f64| size.is_finite() && *size >= 0.0)?;
    let suffix = suffix.to_lowercase();
    let multiplier: f64 = match suffix.as_bytes() {
        [] | [b'b'] => 1.0,
        [prefix] | [prefix, b'b'] | [prefix, b'i', b'b'] => {
            let power = b"kmgtp".iter().position(|p| p == prefix)?;
            1024f64.powi(i32::try_from(power).ok()? + 1)
        }
        _ => return None,
    };
    // Truncation (and saturation for absurd sizes) as Go's int64(float64) gives.
    Some((size * multiplier) as u64)
}

/// One CSV record as Go's `encoding/csv` reads a single line: `,`-separated fields, a field in
/// double quotes may contain commas and `""` for a quote, a quote elsewhere is an error.
fn csv_fields(text: &str) -> Result<Vec<String>, Diagnostic> {
    let csv_error = |column: usize, problem: &str| {
        Diagnostic::error(format!(
            "failed to parse csv mounts: parse error on line 1, column {column}: {problem}"
        ))
        .with_hint(
            r#"quote a value containing commas as "key=a,b", and double any quote inside quotes"#,
        )
    };
    let chars: Vec<char> = text.chars().collect();
    let mut fields = Vec::new();
    let mut position = 0;
    loop {
        let mut field = String::new();
        if chars.get(position) == Some(&'"') {
            position += 1;
            loop {
                match chars.get(position) {
                    None => {
                        return Err(csv_error(
                            position + 1,
                            "extraneous or missing \" in quoted-field",
                        ));
                    }
                    Some('"') if chars.get(position + 1) == Some(&'"') => {
                        field.push('"');
                        position += 2;
                    }
                    Some('"') => {
                        position += 1;
                        match chars.get(position) {
                            None | Some(',') => break,
                            Some(_) => {
                                return Err(csv_error(
                                    position + 1,
                                    "extraneous or missing \" in quoted-field",
                                ));
                            }
                        }
                    }
                    Some(&c) => {
                        field.push(c);
                        position += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = chars.get(position) {
                match c {
                    ',' => break,
                    '"' => return Err(csv_error(position + 1, "bare \" in non-quoted-field")),
                    _ => field.push(c),
                }
                position += 1;
            }
        }
        fields.push(field);
        if chars.get(position) == Some(&',') {
            position += 1;
        } else {
            return Ok(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_go_encoding_csv() {
        assert_eq!(csv_fields("a=1,b=2").unwrap(), vec!["a=1", "b=2"]);
        assert_eq!(csv_fields(r#""a=1,2",b"#).unwrap(), vec!["a=1,2", "b"]);
        assert_eq!(csv_fields(r#""say ""hi""""#).unwrap(), vec![r#"say "hi""#]);
        assert_eq!(csv_fields("a,,b,").unwrap(), vec!["a", "", "b", ""]);
        assert_eq!(csv_fields("").unwrap(), vec![""]);
        assert!(
            csv_fields(r#"a="b""#)
                .unwrap_err()
                .message
                .contains("bare \" in non-quoted-field")
        );
        assert!(
            csv_fields(r#""a"b"#)
                .unwrap_err()
                .message
                .contains("extraneous or missing \" in quoted-field")
        );
        assert!(
            csv_fields(r#""unterminated"#)
                .unwrap_err()
                .message
                .starts_with("failed to parse csv mounts: ")
        );
    }

    #[test]
    fn ram_in_bytes_follows_go_units() {
        assert_eq!(ram_in_bytes("100"), Some(100));
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1.5g"), Some(3 << 29));
        assert_eq!(ram_in_bytes("1 KiB"), Some(1024));
        assert_eq!(ram_in_bytes("2kb"), Some(2048));
        assert_eq!(ram_in_bytes("10b"), Some(10));
        assert_eq!(ram_in_bytes("1P"), Some(1 << 50));
        for bad in ["", "m", "-1", "1x", "1kk", "1bb", "1 k b", "abc"] {
            assert_eq!(ram_in_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn go_parse_bool_accepts_go_spellings_only() {
        assert_eq!(go_parse_bool("T"), Some(true));
        assert_eq!(go_parse_bool("False"), Some(false));
        assert_eq!(go_parse_bool("yes"), None);
        assert_eq!(go_parse_bool("tRUE"), None);
    }
}

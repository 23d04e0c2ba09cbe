//! `--chmod` values as BuildKit accepts them: an octal mode up to `07777`, or a symbolic mode in
//! chmod(1) syntax (`u+x`, `go-w`, `u=rwx,go=rx`, `+X`), checked with the grammar of BSD's
//! `setmode` that BuildKit uses (`dchapes-mode`).

/// A validated `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMode {
    /// `0755`: the permission bits to set.
    Octal(u32),
    /// `u+x,go-w`: applied to each file's current mode when copying.
    Symbolic(String),
}

impl FileMode {
    /// Validates a (expanded) `--chmod` value with BuildKit's messages.
    pub fn parse(value: &str) -> Result<FileMode, String> {
        let not_octal = || {
            format!(
                "invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
            )
        };
        if let Some(mode) = super::go_parse_u32(value, 8) {
            return if mode > 0o7777 {
                Err(not_octal())
            } else {
                Ok(FileMode::Octal(mode))
            };
        }
        // A value that starts like a number but is not octal gets the octal message, as in BuildKit.
        if value.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(not_octal());
        }
        if is_symbolic_mode(value) {
            Ok(FileMode::Symbolic(value.to_string()))
        } else {
            Err(format!(
                "invalid chmod parameter: '{value}': invalid syntax"
            ))
        }
    }
}

/// `clause[,clause]...` where a clause is `[ugoa]*` followed by one or more actions, each an
/// operator `+`, `-` or `=` and any of `rwxXstugo`.
fn is_symbolic_mode(value: &str) -> bool {
    !value.is_empty()
        && value.split(',').all(|clause| {
            let actions = clause.trim_start_matches(['u', 'g', 'o', 'a']);
            actions.starts_with(['+', '-', '='])
                && actions.chars().all(|c| "+-=rwxXstugo".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_modes_up_to_07777() {
        assert_eq!(FileMode::parse("0755"), Ok(FileMode::Octal(0o755)));
        assert_eq!(FileMode::parse("644"), Ok(FileMode::Octal(0o644)));
        assert_eq!(FileMode::parse("7777"), Ok(FileMode::Octal(0o7777)));
        assert_eq!(
            FileMode::parse("17777"),
            Err("invalid chmod parameter: '17777'. it should be octal string and between 0 and 07777".to_string())
        );
    }

    #[test]
    fn numeric_but_not_octal_gets_the_octal_message() {
        for value in ["0788", "8", "0x755", "1e3"] {
            let error = FileMode::parse(value).unwrap_err();
            assert!(
                error.contains("it should be octal string"),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn symbolic_modes_in_chmod_syntax() {
        for value in [
            "u+x",
            "go-w",
            "u=rwx,go=rx",
            "+X",
            "a=r",
            "g=u-w",
            "o=",
            "u+x-w",
            "ug+s,+t",
        ] {
            assert_eq!(
                FileMode::parse(value),
                Ok(FileMode::Symbolic(value.to_string())),
                "{value}"
            );
        }
    }

    #[test]
    fn malformed_symbolic_modes_are_invalid_syntax() {
        for value in ["u", "ux", "u+q", "u+x,", ",u+x", "+x y", "b+x"] {
            assert!(FileMode::parse(value).is_err(), "{value}");
        }
        assert!(
            FileMode::parse("-").is_ok(),
            "a bare operator changes nothing but is valid"
        );
        assert_eq!(
            FileMode::parse("u+q"),
            Err("invalid chmod parameter: 'u+q': invalid syntax".to_string())
        );
    }
}

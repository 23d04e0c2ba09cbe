//! HEALTHCHECK: NONE, CMD in both forms, and the options with BuildKit's checks.

use std::time::Duration;

use super::*;

fn health(source: &str) -> Healthcheck {
    match instruction(source) {
        Instruction::Healthcheck(healthcheck) => healthcheck.health,
        other => panic!("not a HEALTHCHECK: {other:?}"),
    }
}

fn check(source: &str) -> HealthCheck {
    match health(source) {
        Healthcheck::Check(check) => check,
        Healthcheck::Disabled => panic!("{source} disabled the check"),
    }
}

#[test]
fn shell_form_command_is_joined_into_cmd_shell() {
    let check = check("HEALTHCHECK CMD hello world");
    assert_eq!(check.command, ["hello world"]);
    assert_eq!(check.form, CommandForm::Shell);
    assert_eq!(check.test(), ["CMD-SHELL", "hello world"]);
}

#[test]
fn exec_form_command_is_kept_as_cmd() {
    let check = check(r#"HEALTHCHECK cmd ["curl", "-f", "http://localhost/"]"#);
    assert_eq!(check.test(), ["CMD", "curl", "-f", "http://localhost/"]);
}

#[test]
fn none_disables_and_takes_no_arguments() {
    assert_eq!(health("HEALTHCHECK NONE"), Healthcheck::Disabled);
    assert_eq!(health("HEALTHCHECK none"), Healthcheck::Disabled);
    assert_eq!(
        rejection("HEALTHCHECK NONE extra").message,
        "HEALTHCHECK NONE takes no arguments"
    );
    // BuildKit does not read options for NONE, so not even unknown ones fail.
    assert_eq!(
        health("HEALTHCHECK --interval=nonsense --bogus NONE"),
        Healthcheck::Disabled
    );
}

#[test]
fn other_types_and_missing_commands_are_rejected() {
    let error = rejection("HEALTHCHECK EXEC true");
    assert_eq!(
        error.message,
        "Unknown type \"EXEC\" in HEALTHCHECK (try CMD)"
    );
    assert_eq!(error.span, Some(Span::at(1, 13, 4)));
    assert_eq!(
        rejection("HEALTHCHECK CMD []").message,
        "Missing command after HEALTHCHECK CMD"
    );
    assert_eq!(
        rejection("HEALTHCHECK --bogus=1 CMD true").message,
        "unknown flag: --bogus"
    );
}

#[test]
fn all_options_are_read() {
    let check = check(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3 CMD true",
    );
    assert_eq!(check.interval, Duration::from_secs(30));
    assert_eq!(check.timeout, Duration::from_secs(90));
    assert_eq!(check.start_period, Duration::from_millis(1500));
    assert_eq!(check.start_interval, Duration::from_millis(500));
    assert_eq!(check.retries, 3);

    let defaults = self::check("HEALTHCHECK CMD true");
    assert_eq!(
        (defaults.interval, defaults.timeout, defaults.retries),
        (Duration::ZERO, Duration::ZERO, 0)
    );
}

#[test]
fn durations_are_zero_or_at_least_a_millisecond() {
    assert_eq!(
        check("HEALTHCHECK --interval=0s CMD true").interval,
        Duration::ZERO
    );
    assert_eq!(
        check("HEALTHCHECK --interval=1ms CMD true").interval,
        Duration::from_millis(1)
    );
    for (option, name) in [
        ("--interval=50ns", "interval"),
        ("--timeout=-1s", "timeout"),
        ("--start-interval=999us", "start-interval"),
    ] {
        let error = rejection(&format!("HEALTHCHECK {option} CMD true"));
        assert_eq!(
            error.message,
            format!("Interval {name:?} cannot be less than 1ms")
        );
        assert_eq!(error.span, Some(Span::at(1, 13, option.len())));
    }
}

#[test]
fn durations_use_go_syntax_and_messages() {
    assert_eq!(
        rejection("HEALTHCHECK --interval=5 CMD true").message,
        "time: missing unit in duration \"5\""
    );
    assert_eq!(
        rejection("HEALTHCHECK --timeout=5sec CMD true").message,
        "time: unknown unit \"sec\" in duration \"5sec\""
    );
    assert_eq!(
        rejection("HEALTHCHECK --start-period=soon CMD true").message,
        "time: invalid duration \"soon\""
    );
}

#[test]
fn retries_must_be_a_non_negative_number() {
    assert_eq!(check("HEALTHCHECK --retries=0 CMD true").retries, 0);
    assert_eq!(
        rejection("HEALTHCHECK --retries=-1 CMD true").message,
        "--retries cannot be negative (-1)"
    );
    assert_eq!(
        rejection("HEALTHCHECK --retries=many CMD true").message,
        "strconv.ParseInt: parsing \"many\": invalid syntax"
    );
    assert_eq!(
        rejection("HEALTHCHECK --retries=99999999999 CMD true").message,
        "strconv.ParseInt: parsing \"99999999999\": value out of range"
    );
}

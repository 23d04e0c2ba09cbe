//! `imgb build --progress tty` under a real pseudo-terminal (`script`): the live display must
//! not get in the way of the build, and a rebuild shows its steps as cached.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::{busybox_context, imgb_ok, setup, stdout, tool};

/// Runs `imgb --root root build --progress tty ARGS` with stderr on a pty; the transcript (the
/// pty's output) comes back on stdout.
fn build_on_a_terminal(script: &Path, root: &Path, args: &[&str]) -> Output {
    let quoted: Vec<String> = [env!("CARGO_BIN_EXE_imgb"), "--root", root.to_str().unwrap()]
        .iter()
        .chain(&["build", "--progress", "tty"])
        .chain(args)
        .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
        .collect();
    Command::new(script)
        .args([
            "--quiet",
            "--return",
            "--command",
            &quoted.join(" "),
            "/dev/null",
        ])
        .output()
        .expect("script runs")
}

#[test]
fn tty_progress_builds_under_a_terminal_and_shows_the_summary() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let Some(script) = tool("script") else { return };
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"for i in 1 2 3; do echo step $i; /bin/busybox sleep 0.2; done\"]\n",
    );
    let root = dir.path().join("root");
    let context = context.to_str().unwrap();

    let first = build_on_a_terminal(&script, &root, &["-t", "tty:test", context]);
    let transcript = stdout(&first);
    assert!(first.status.success(), "{transcript}");
    assert!(transcript.contains("[+] built in"), "{transcript}");
    assert!(
        transcript.contains("naming to docker.io/library/tty:test"),
        "{transcript}"
    );
    let run = imgb_ok(
        &root,
        &["run", "tty:test", "--", "/bin/busybox", "echo", "ran"],
    );
    assert_eq!(stdout(&run), "ran\n");

    let again = build_on_a_terminal(&script, &root, &[context]);
    let transcript = stdout(&again);
    assert!(again.status.success(), "{transcript}");
    assert!(
        transcript.contains(" => CACHED [stage-0 2/2]"),
        "{transcript}"
    );
}

//! Heredocs end to end: RUN scripts (plain, with a shebang, `<<-` tab stripping, quoted
//! delimiters, several per line, as a command's standard input) and COPY sources with modes and
//! owners. Expectations follow BuildKit's dispatchRun: a lone `RUN <<EOF` runs its text with the
//! shell (`sh -c`), or, when it starts with `#!`, as an executable file under `/dev/pipes/`; any
//! other heredoc line goes to the shell whole, which expands (or not, when quoted) by itself.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use support::{BASE, TestContext, run_in, shared_root};

/// Builds `dockerfile` (on [`BASE`]) and returns the exported root filesystem's `path` contents.
fn built_files(dockerfile: &str, paths: &[&str]) -> Vec<String> {
    let Some(root) = shared_root() else {
        return Vec::new();
    };
    let context = TestContext::new(&format!("FROM {BASE}\n{dockerfile}"), &[]);
    let rootfs = context.rootfs(root, &[]);
    paths
        .iter()
        .map(|path| fs::read_to_string(rootfs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn run_heredoc_without_a_shebang_runs_in_the_shell() {
    let files = built_files(
        "ARG WHO=builder\n\
         RUN <<EOF\n\
         set -e\n\
         echo \"one $WHO\" > /script.txt\n\
         echo \"two $0\" >> /script.txt\n\
         EOF\n",
        &["script.txt"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["one builder\ntwo /bin/sh\n"]);
}

#[test]
fn run_heredoc_with_a_shebang_runs_as_its_own_program() {
    let files = built_files(
        "RUN <<EOF\n\
         #!/bin/awk -f\n\
         BEGIN { print \"from awk\" > \"/awk.txt\" }\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo \"$0\" > /shebang.txt\n\
         EOF\n",
        &["awk.txt", "shebang.txt"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["from awk\n", "/dev/pipes/EOF\n"]);
}

#[test]
fn dash_heredocs_strip_leading_tabs() {
    let files = built_files(
        "RUN <<-EOF\n\
         \techo stripped > /run.txt\n\
         \tEOF\n\
         RUN cat <<-EOF > /cat.txt\n\
         \t\tindented\n\
         \tEOF\n\
         COPY <<-EOF /copy.txt\n\
         \tcopied\n\
         \tEOF\n",
        &["run.txt", "cat.txt", "copy.txt"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["stripped\n", "indented\n", "copied\n"]);
}

#[test]
fn quoted_delimiters_keep_the_text_unexpanded() {
    let files = built_files(
        "ARG WHO=builder\n\
         RUN cat <<'EOF' > /quoted.txt\n\
         $WHO\n\
         EOF\n\
         RUN cat <<EOF > /unquoted.txt\n\
         $WHO\n\
         EOF\n\
         COPY <<\"EOF\" /copied.txt\n\
         $WHO\n\
         EOF\n",
        &["quoted.txt", "unquoted.txt", "copied.txt"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["$WHO\n", "builder\n", "$WHO\n"]);
}

#[test]
fn several_heredocs_on_one_line_feed_their_own_commands() {
    let files = built_files(
        "RUN <<FIRST cat > /first.txt && <<SECOND cat > /second.txt\n\
         I am first\n\
         FIRST\n\
         I am second\n\
         SECOND\n\
         COPY <<A <<B /both/\n\
         a\n\
         A\n\
         b\n\
         B\n",
        &["first.txt", "second.txt", "both/A", "both/B"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["I am first\n", "I am second\n", "a\n", "b\n"]);
}

#[test]
fn heredoc_feeds_a_commands_standard_input() {
    let files = built_files(
        "RUN sh -s <<EOF\n\
         echo from-stdin > /stdin.txt\n\
         EOF\n\
         RUN tr a-z A-Z <<EOF > /upper.txt\n\
         shout\n\
         EOF\n",
        &["stdin.txt", "upper.txt"],
    );
    if files.is_empty() {
        return;
    }
    assert_eq!(files, ["from-stdin\n", "SHOUT\n"]);
}

#[test]
fn copy_heredocs_take_chmod_and_chown_and_run_as_scripts() {
    let Some(root) = shared_root() else { return };
    let context = TestContext::new(
        &format!(
            "FROM {BASE}\n\
             COPY --chmod=755 <<EOF /usr/local/bin/hello\n\
             #!/bin/sh\n\
             echo hello from a heredoc\n\
             EOF\n\
             COPY --chown=bob:staff --chmod=0600 <<EOF /home/bob/secret\n\
             private\n\
             EOF\n\
             COPY <<EOF /plain\n\
             plain\n\
             EOF\n\
             CMD [\"/usr/local/bin/hello\"]\n"
        ),
        &[],
    );
    let rootfs = context.rootfs(root, &["-t", "heredoc-copy:1"]);
    let mode = |path: &str| fs::metadata(rootfs.join(path)).unwrap().mode() & 0o7777;
    assert_eq!(mode("usr/local/bin/hello"), 0o755);
    assert_eq!(mode("home/bob/secret"), 0o600);
    assert_eq!(mode("plain"), 0o644, "heredoc files default to 0644");
    let secret = fs::metadata(rootfs.join("home/bob/secret")).unwrap();
    assert_eq!((secret.uid(), secret.gid()), (1001, 1002));
    assert_eq!(
        run_in(root, "heredoc-copy:1", "/usr/local/bin/hello"),
        "hello from a heredoc\n"
    );
}

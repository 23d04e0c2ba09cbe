//! Faults in the store (issue 8, class 4): imgb SIGKILLed at random points of builds, flipped
//! bytes in stored blobs and snapshots (found at export, or before a step uses the snapshot as
//! a lower directory or COPY source), many concurrent builds on one store, and a state
//! directory that runs out of space. After each, the store opens, every blob verifies, no
//! record names a missing or partial layer, and the same build gives the image a clean build
//! in an empty state directory gives, byte for byte (`SOURCE_DATE_EPOCH`). Prune running during
//! builds is `tests/prune.rs`'s `prune_during_builds_never_removes_what_they_use`.
//!
//! The kill delays come from a seeded generator; the seed is printed, and `IMGB_FAULT_SEED`
//! replays a run.

#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use imgb_builder::solve::record_references;
use imgb_cache::{RecordRef, Store};
use support::{busybox_context, setup, stderr};

const EPOCH: &str = "1700000000";

/// Every phase a kill should be able to hit: a context copy, a RUN, an archive extraction,
/// layer commits and records after each, and the export.
const DOCKERFILE: &str = "FROM scratch\n\
    COPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir /made && for i in $(/bin/busybox seq 1 200); do echo $i > /made/f$i; done\"]\n\
    ADD payload.tar /payload/\n\
    COPY files/ /files/\n";

/// The build context: [`DOCKERFILE`] (plus `extra` lines), busybox, a 300-file archive and a
/// 100-file directory, with fixed content.
fn context(dir: &Path, busybox: &Path, extra: &str) -> PathBuf {
    let context = busybox_context(dir, busybox, &format!("{DOCKERFILE}{extra}"));
    let mut archive = tar::Builder::new(Vec::new());
    for index in 0..300u32 {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 + index) as u8).collect();
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_600_000_000);
        archive
            .append_data(&mut header, format!("d{}/f{index}", index % 7), &data[..])
            .unwrap();
    }
    fs::write(context.join("payload.tar"), archive.into_inner().unwrap()).unwrap();
    fs::create_dir_all(context.join("files")).unwrap();
    for index in 0..100 {
        fs::write(
            context.join(format!("files/f{index}")),
            format!("{index}\n"),
        )
        .unwrap();
    }
    context
}

/// `imgb build` of `context` in `root`, exporting an OCI archive to `out`. Uncompressed, so
/// every export rebuilds the built layers' tars from their snapshots and verifies them (a
/// compressed variant, once made, is reused from its blob).
fn build_command(root: &Path, context: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgb"));
    command
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!(
            "type=oci,compression=uncompressed,dest={}",
            out.display()
        ))
        .arg(context)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdin(Stdio::null());
    command
}

fn build(root: &Path, context: &Path, out: &Path) -> Output {
    build_command(root, context, out).output().unwrap()
}

/// Builds and returns the exported archive's bytes; the build must succeed.
fn build_bytes(root: &Path, context: &Path, out: &Path) -> Vec<u8> {
    let output = build(root, context, out);
    assert!(output.status.success(), "build failed: {}", stderr(&output));
    fs::read(out).unwrap()
}

/// Whether `tmp/` may hold leftovers: a killed process cannot clean up after itself; prune
/// removes what dead processes left there (`tests/prune.rs`).
#[derive(Clone, Copy, PartialEq)]
enum Leftovers {
    Allowed,
    None,
}

/// The store opens, every blob verifies, every record parses and every layer or document it
/// names is usable, and (unless `leftovers` allows them) nothing is left staged in `tmp/`.
fn assert_store_consistent(root: &Path, leftovers: Leftovers) {
    let store = Store::open(root).expect("the store opens");
    for digest in store.list_blobs().unwrap() {
        store
            .verify_blob(&digest, None)
            .unwrap_or_else(|error| panic!("blob {digest}: {error}"));
    }
    for entry in fs::read_dir(store.records_dir()).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let bytes = fs::read(entry.path()).unwrap();
        let references = record_references(&bytes)
            .unwrap_or_else(|error| panic!("record {:?}: {error}", entry.file_name()));
        for reference in references {
            match reference {
                RecordRef::Blob(digest) => assert!(store.has_blob(&digest), "{digest}"),
                RecordRef::Layer { diff_id, blob } => assert!(
                    store.has_blob(&blob) || store.snapshot(&diff_id).is_some(),
                    "record {:?} names the missing layer {diff_id}",
                    entry.file_name()
                ),
            }
        }
    }
    let staged: Vec<_> = fs::read_dir(store.tmp_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        staged.is_empty() || leftovers == Leftovers::Allowed,
        "left in tmp/: {staged:?}"
    );
}

/// Asserts two exported archives are byte-identical, without printing megabytes of bytes.
fn assert_same_archive(actual: &[u8], expected: &[u8], what: &str) {
    assert!(
        actual == expected,
        "{what}: {} bytes differ from the {} expected",
        actual.len(),
        expected.len()
    );
}

/// A small xorshift generator: reproducible delays from a printed seed.
struct Rng(u64);

impl Rng {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("IMGB_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                | 1
        })
}

#[test]
fn sigkill_at_random_points_leaves_a_store_that_rebuilds_the_same_image() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, "");
    let clean = build_bytes(
        &dir.path().join("clean-root"),
        &context,
        &dir.path().join("clean.tar"),
    );
    // How long each kind of build takes here, to spread the kills over all of it.
    let root = dir.path().join("root");
    let timed = |no_cache: bool| {
        let started = Instant::now();
        let mut command = build_command(&root, &context, &dir.path().join("timed.tar"));
        if no_cache {
            command.arg("--no-cache");
        }
        assert!(command.output().unwrap().status.success());
        started.elapsed()
    };
    timed(false);
    let durations = [timed(false), timed(true)];
    let seed = seed();
    println!(
        "IMGB_FAULT_SEED={seed} (cached build {:?}, --no-cache {:?})",
        durations[0], durations[1]
    );
    let mut rng = Rng(seed);
    for round in 0..10 {
        // Odd rounds rerun every step (copy, RUN, extraction, commits, records); even ones
        // are cache hits and the export.
        let no_cache = round % 2 == 1;
        let span = durations[usize::from(no_cache)].as_millis() as u64;
        let delay = Duration::from_millis(rng.next_below(span * 11 / 10));
        let out = dir.path().join(format!("killed-{round}.tar"));
        let mut command = build_command(&root, &context, &out);
        if no_cache {
            command.arg("--no-cache");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        println!(
            "round {round}: killed after {delay:?} (no-cache: {no_cache}, had finished: {finished})"
        );
        if let Ok(partial) = fs::read(&out) {
            assert_same_archive(
                &partial,
                &clean,
                &format!("round {round}: the killed build's export"),
            );
        }
        assert_store_consistent(&root, Leftovers::Allowed);
        let rebuilt = build_bytes(
            &root,
            &context,
            &dir.path().join(format!("rebuilt-{round}.tar")),
        );
        assert_same_archive(
            &rebuilt,
            &clean,
            &format!("round {round}: the rebuilt image"),
        );
    }
}

/// The first regular file under `dir` whose name is `name`, searched depth first.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let kind = entry.file_type().ok()?;
        if kind.is_file() && entry.file_name() == name {
            return Some(entry.path());
        }
        if kind.is_dir()
            && let Some(found) = find_file(&entry.path(), name)
        {
            return Some(found);
        }
    }
    None
}

fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_a_snapshot_is_never_exported_and_the_layer_is_rebuilt() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, "");
    let root = dir.path().join("root");
    let clean = build_bytes(&root, &context, &dir.path().join("clean.tar"));
    let snapshots = Store::open(&root).unwrap().snapshots_dir();
    let payload_file = find_file(&snapshots, "f150").expect("the ADD layer's snapshot");
    flip_byte(&payload_file);

    let output = build(&root, &context, &dir.path().join("again.tar"));
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("corrupt layer") && message.contains("building again"),
        "{message}"
    );
    let again = fs::read(dir.path().join("again.tar")).unwrap();
    assert_same_archive(&again, &clean, "the image rebuilt after the corruption");
    assert_store_consistent(&root, Leftovers::None);
}

/// A stage whose ADD layer a test damages after a first build has stored it.
const PAYLOAD_STAGE: &str = "FROM scratch AS payload\n\
    COPY busybox /bin/busybox\n\
    ADD payload.tar /payload/\n";

/// How a stored snapshot is damaged from outside imgb.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipByte,
    DeleteFile,
    AddFile,
    Chmod,
}

impl Damage {
    const ALL: [Damage; 4] = [
        Damage::FlipByte,
        Damage::DeleteFile,
        Damage::AddFile,
        Damage::Chmod,
    ];

    /// Damages the snapshot holding `file`; returns the difference the warning should name.
    fn apply(self, file: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        match self {
            Damage::FlipByte => {
                flip_byte(file);
                "/payload/d3/f150 changed (mtime)".to_owned()
            }
            Damage::DeleteFile => {
                fs::remove_file(file).unwrap();
                "/payload/d3/f150 was removed".to_owned()
            }
            Damage::AddFile => {
                fs::write(file.with_file_name("intruder"), b"not in the layer").unwrap();
                "/payload/d3/intruder was added".to_owned()
            }
            Damage::Chmod => {
                fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
                "/payload/d3/f150 changed (mode)".to_owned()
            }
        }
    }
}

/// For each kind of [`Damage`]: builds [`PAYLOAD_STAGE`] alone, damages its ADD layer's
/// snapshot, then builds `PAYLOAD_STAGE + rest`, whose new steps use that snapshot; the result
/// must be the image a clean build of it gives, and the warning must name the damage.
fn damaged_snapshot_is_rebuilt_before_use(rest: &str) {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, "");
    let full = format!("{PAYLOAD_STAGE}{rest}");
    fs::write(context.join("Dockerfile"), &full).unwrap();
    let clean = build_bytes(
        &dir.path().join("clean-root"),
        &context,
        &dir.path().join("clean.tar"),
    );
    for damage in Damage::ALL {
        let root = dir.path().join(format!("{damage:?}"));
        fs::write(context.join("Dockerfile"), PAYLOAD_STAGE).unwrap();
        build_bytes(&root, &context, &dir.path().join("stage.tar"));
        let snapshots = Store::open(&root).unwrap().snapshots_dir();
        let file = find_file(&snapshots, "f150").expect("the ADD layer's snapshot");
        let named = damage.apply(&file);

        fs::write(context.join("Dockerfile"), &full).unwrap();
        let out = dir.path().join(format!("{damage:?}.tar"));
        let output = build(&root, &context, &out);
        let message = stderr(&output);
        assert!(output.status.success(), "{damage:?}: {message}");
        assert_same_archive(
            &fs::read(&out).unwrap(),
            &clean,
            &format!("{damage:?}: the image built after the damage"),
        );
        assert!(
            message.contains("changed after it was stored")
                && message.contains(&named)
                && message.contains("building again"),
            "{damage:?}: the warning does not name {named:?}: {message}"
        );
        assert_store_consistent(&root, Leftovers::None);
    }
}

#[test]
fn a_damaged_snapshot_used_as_a_lower_dir_is_rebuilt_first() {
    // The damaged layer is not in the image: only what the RUN saw of it is.
    damaged_snapshot_is_rebuilt_before_use(
        "FROM payload AS copied\n\
         RUN [\"/bin/busybox\", \"cp\", \"-a\", \"/payload\", \"/copy\"]\n\
         FROM scratch\n\
         COPY --from=copied /copy /payload\n",
    );
}

#[test]
fn a_damaged_snapshot_used_as_a_copy_source_is_rebuilt_first() {
    damaged_snapshot_is_rebuilt_before_use("FROM scratch\nCOPY --from=payload /payload /payload\n");
}

#[test]
fn a_flipped_byte_in_a_stored_blob_is_detected_and_never_exported() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = context(dir.path(), &busybox, "");
    let root = dir.path().join("root");
    let clean_out = dir.path().join("clean.tar");
    let output = build_command(&root, &context, &clean_out)
        .args(["-t", "faults"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let clean = fs::read(&clean_out).unwrap();
    // Load the image into a second store, where its layers are stored blobs.
    let loaded_root = dir.path().join("loaded");
    support::imgb_ok(
        &loaded_root,
        &["load", "-i", dir.path().join("clean.tar").to_str().unwrap()],
    );
    let store = Store::open(&loaded_root).unwrap();
    let largest = store
        .list_blobs()
        .unwrap()
        .into_iter()
        .max_by_key(|digest| fs::metadata(store.blob_path(digest)).unwrap().len())
        .unwrap();
    flip_byte(&store.blob_path(&largest));

    let out = dir.path().join("export.tar");
    let output = support::imgb(
        &loaded_root,
        &[
            "save",
            "faults",
            "-o",
            &format!("type=oci,dest={}", out.display()),
        ],
    );
    assert!(!output.status.success(), "a corrupt blob was exported");
    let message = stderr(&output);
    assert!(
        message.contains("corrupt") && message.contains(&largest.to_string()),
        "{message}"
    );
    assert!(!out.exists(), "a partial export was left");

    // The original store still builds the same image.
    let again = build_command(&root, &context, &dir.path().join("again.tar"))
        .args(["-t", "faults"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    let again = fs::read(dir.path().join("again.tar")).unwrap();
    assert_same_archive(&again, &clean, "the original store's rebuild");
}

#[test]
fn sixteen_concurrent_builds_on_one_store_agree() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let same = context(&dir.path().join("same"), &busybox, "");
    let near = context(&dir.path().join("near"), &busybox, "ENV NEAR=1\n");
    let root = dir.path().join("root");
    let children: Vec<_> = (0..16)
        .map(|index| {
            let context = if index % 2 == 0 { &same } else { &near };
            let out = dir.path().join(format!("out-{index}.tar"));
            let child = build_command(&root, context, &out)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (index, out, child)
        })
        .collect();
    let mut outputs: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    for (index, out, child) in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "build {index}: {}",
            stderr(&output)
        );
        outputs[index % 2].push(fs::read(&out).unwrap());
    }
    for (kind, group) in outputs.iter().enumerate() {
        assert!(
            group.iter().all(|bytes| *bytes == group[0]),
            "group {kind} differs"
        );
    }
    assert!(outputs[0][0] != outputs[1][0], "ENV made no difference");
    let clean = build_bytes(
        &dir.path().join("clean"),
        &same,
        &dir.path().join("clean.tar"),
    );
    assert_same_archive(
        &outputs[0][0],
        &clean,
        "concurrent builds against a lone one",
    );
    assert_store_consistent(&root, Leftovers::None);
}

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        if !status.success() {
            eprintln!(
                "notice: cannot mount a tmpfs at {}; skipping",
                path.display()
            );
            assert!(std::env::var_os("CI").is_none(), "tmpfs mount failed in CI");
            return None;
        }
        Some(Tmpfs(path.to_owned()))
    }

    fn resize(&self, size: &str) {
        support::run(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.0),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_directory_fails_clearly_and_works_once_space_is_freed() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    // 12 MiB that do not compress, copied by a step after the busybox base.
    let context = context(dir.path(), &busybox, "COPY big /big\n");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..12 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(context.join("big"), big).unwrap();
    let root = dir.path().join("state");
    let Some(tmpfs) = Tmpfs::mount(&root, "8m") else {
        return;
    };
    let out = dir.path().join("out.tar");
    let output = build(&root, &context, &out);
    assert!(!output.status.success(), "the build fit in 8 MiB");
    let message = stderr(&output);
    assert!(
        message.to_lowercase().contains("no space left")
            && message.contains(&root.display().to_string()),
        "the error names neither the state dir nor the cause: {message}"
    );
    assert!(!out.exists());
    assert_store_consistent(&root, Leftovers::None);

    tmpfs.resize("64m");
    let output = build(&root, &context, &out);
    assert!(
        output.status.success(),
        "after freeing space: {}",
        stderr(&output)
    );
    assert_store_consistent(&root, Leftovers::None);
}

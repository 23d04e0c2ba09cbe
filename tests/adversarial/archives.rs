//! Hostile archives end to end (issue 8, class 2): `ADD archive.tar /` in real builds and
//! `imgb load` of a crafted image whose layer is then unpacked by a `RUN` (as an overlay lower
//! directory) and flattened by `imgb save -o type=local`. Whatever the entries try, nothing is
//! created, changed or linked on the host outside the image's root filesystem; device nodes,
//! fifos and setuid files stay data inside the image. Decompression bombs and archives of a
//! million entries, added locally or from a URL, stop at the step's disk limit with bounded
//! memory. The applier's own cases (containerd's breakout list, whiteouts, PAX/GNU
//! disagreements, limits) are unit tests in `cache/src/apply_tests.rs` and
//! `cache/src/tar_reader.rs`.

#[path = "../support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use support::{busybox_context, imgb, imgb_ok, setup, stderr};

/// A tar written header by header, so names can be anything (`tar::Builder` refuses `..`).
struct Hostile {
    out: tar::Builder<Vec<u8>>,
}

impl Hostile {
    fn new() -> Self {
        Self {
            out: tar::Builder::new(Vec::new()),
        }
    }

    fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> Self {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(1).unwrap();
        }
        header.set_cksum();
        self.out.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8], mode: u32) -> Self {
        self.entry(name, tar::EntryType::Regular, mode, "", data)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, 0o755, "", b"")
    }

    fn symlink(self, target: &str, name: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, target, b"")
    }

    fn finish(self) -> Vec<u8> {
        self.out.into_inner().unwrap()
    }
}

/// The entries both paths (ADD and load) receive: breakouts through `..`, absolute and
/// relative symlinks aimed at `host` (a real host directory), link-then-overwrite, and
/// a device node, a fifo, a setuid and a setgid file. Escapes that are merely confined (not
/// refused) land inside the image, where the checks look for them.
fn hostile_entries(host: &Path) -> Hostile {
    let host = host.to_str().unwrap();
    Hostile::new()
        .dir("etc/")
        .file("etc/passwd", b"inside\n", 0o644)
        .file("../../../../planted-up", b"x", 0o644)
        .symlink(host, "hostdir")
        .file("hostdir/planted", b"x", 0o644)
        .symlink("../../../../../..", "up")
        .file("up/planted-rel", b"x", 0o644)
        .symlink("/etc/passwd", "passwd-link")
        .file("passwd-link", b"overwritten\n", 0o644)
        .entry("devs/mem", tar::EntryType::Char, 0o640, "", b"")
        .entry("devs/fifo", tar::EntryType::Fifo, 0o600, "", b"")
        .file("bin/su", b"#!/bin/sh\n", 0o4755)
        .file("bin/sg", b"#!/bin/sh\n", 0o2755)
}

/// What a `RUN` in the image checks: every confined escape is inside, every special file is
/// what the archive said.
const INSIDE_CHECKS: &str = "test -f /planted-up && test -f /planted-rel \
    && test \\\"$(/bin/busybox cat /etc/passwd)\\\" = inside \
    && test \\\"$(/bin/busybox cat /passwd-link)\\\" = overwritten \
    && test -c /devs/mem && test -p /devs/fifo && test -u /bin/su && test -g /bin/sg";

/// Asserts the host saw nothing: `host` is still empty and no `planted*` file exists in the
/// test's directory tree outside the store and outputs.
fn assert_host_untouched(host: &Path, test_dir: &Path) {
    let in_host: Vec<_> = fs::read_dir(host).unwrap().collect();
    assert!(in_host.is_empty(), "written into the host dir: {in_host:?}");
    for ancestor in [test_dir, test_dir.parent().unwrap(), Path::new("/")] {
        for name in ["planted", "planted-up", "planted-rel"] {
            assert!(
                !ancestor.join(name).exists(),
                "{}/{name}",
                ancestor.display()
            );
        }
    }
}

/// `(path, entry type, mode, device major)` of every member of every layer of the OCI layout
/// in `layout` (an exported, uncompressed image).
fn layer_members(layout: &Path) -> Vec<(String, tar::EntryType, u32, Option<u32>)> {
    let mut members = Vec::new();
    for blob in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let bytes = fs::read(blob.unwrap().path()).unwrap();
        if bytes.len() < 1024 || bytes.get(257..262) != Some(b"ustar") {
            continue;
        }
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            members.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.entry_type(),
                header.mode().unwrap(),
                header.device_major().ok().flatten(),
            ));
        }
    }
    members
}

fn assert_special_files_are_layer_data(layout: &Path) {
    let members = layer_members(layout);
    let find = |path: &str| {
        members
            .iter()
            .find(|member| member.0 == path)
            .unwrap_or_else(|| panic!("{path} is not in any layer: {members:?}"))
    };
    assert_eq!(find("devs/mem").1, tar::EntryType::Char);
    assert_eq!(find("devs/mem").3, Some(1));
    assert_eq!(find("devs/fifo").1, tar::EntryType::Fifo);
    assert_eq!(find("bin/su").2 & 0o7777, 0o4755);
    assert_eq!(find("bin/sg").2 & 0o7777, 0o2755);
}

#[test]
fn add_of_a_hostile_archive_to_the_root_stays_inside_the_image() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let host = dir.path().join("host");
    fs::create_dir(&host).unwrap();
    let context = busybox_context(
        dir.path(),
        &busybox,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nADD hostile.tar /\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{INSIDE_CHECKS} && test -f {host}/planted\"]\n",
            host = host.display()
        ),
    );
    fs::write(context.join("hostile.tar"), hostile_entries(&host).finish()).unwrap();
    let layout = dir.path().join("layout");
    let output = imgb(
        &dir.path().join("root"),
        &[
            "build",
            "--progress",
            "plain",
            "-o",
            &format!(
                "type=oci,tar=false,compression=uncompressed,dest={}",
                layout.display()
            ),
            context.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_host_untouched(&host, dir.path());
    assert_special_files_are_layer_data(&layout);
}

#[test]
fn add_of_a_hardlink_to_a_host_file_fails_and_links_nothing() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let secret = dir.path().join("secret");
    fs::write(&secret, "host secret\n").unwrap();
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nADD hostile.tar /\n",
    );
    let archive = Hostile::new()
        .entry(
            "stolen",
            tar::EntryType::Link,
            0o644,
            secret.to_str().unwrap(),
            b"",
        )
        .finish();
    fs::write(context.join("hostile.tar"), archive).unwrap();
    let output = imgb(
        &dir.path().join("root"),
        &["build", "--progress", "plain", context.to_str().unwrap()],
    );
    assert!(!output.status.success(), "the hardlink was accepted");
    let message = stderr(&output);
    assert!(
        message.contains("stolen") && message.contains("hardlink target does not exist"),
        "{message}"
    );
    assert_eq!(
        fs::metadata(&secret).unwrap().nlink(),
        1,
        "the host file was linked"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A docker-archive (`docker save` format) of `crafted:latest`: the busybox binary, then
/// `hostile` as a second layer.
fn crafted_docker_archive(busybox: &Path, hostile: Vec<u8>) -> Vec<u8> {
    let base = Hostile::new()
        .file("bin/busybox", &fs::read(busybox).unwrap(), 0o755)
        .finish();
    let layers = [base, hostile];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|layer| format!("sha256:{}", sha256_hex(layer)))
        .collect();
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_names: Vec<String> = (0..layers.len())
        .map(|i| format!("layer{i}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["crafted:latest"],
        "Layers": layer_names,
    }]);
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        out.append_data(&mut header, name, data).unwrap();
    };
    add(&config_name, &config);
    for (name, layer) in layer_names.iter().zip(&layers) {
        add(name, layer);
    }
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    out.into_inner().unwrap()
}

#[test]
fn loaded_image_with_a_hostile_layer_unpacks_inside_its_root() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let host = dir.path().join("host");
    fs::create_dir(&host).unwrap();
    let archive = dir.path().join("crafted.tar");
    fs::write(
        &archive,
        crafted_docker_archive(&busybox, hostile_entries(&host).finish()),
    )
    .unwrap();
    let root = dir.path().join("root");
    imgb_ok(&root, &["load", "-i", archive.to_str().unwrap()]);

    // A RUN unpacks each layer alone, as an overlay lower directory.
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM crafted\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"{INSIDE_CHECKS} && test -f {host}/planted\"]\n",
            host = host.display()
        ),
    )
    .unwrap();
    let output = imgb(
        &root,
        &["build", "--progress", "plain", context.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_host_untouched(&host, dir.path());

    // Flattening applies the layers in order into one directory.
    let flat = dir.path().join("flat");
    imgb_ok(
        &root,
        &[
            "save",
            "crafted",
            "-o",
            &format!("type=local,dest={}", flat.display()),
        ],
    );
    assert_host_untouched(&host, dir.path());
    let inside: PathBuf = flat.join(host.strip_prefix("/").unwrap()).join("planted");
    assert!(inside.is_file(), "{} is missing", inside.display());
    assert!(flat.join("planted-up").is_file() && flat.join("planted-rel").is_file());
    assert_eq!(
        fs::read_to_string(flat.join("etc/passwd")).unwrap(),
        "inside\n"
    );
    assert_eq!(
        fs::metadata(flat.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
}

/// The disk limit the bomb tests build with, and how the error shows it.
const DISK_MAX: &str = "32m";
const DISK_MAX_SHOWN: &str = "32.0 MiB";

/// Gzip of `data` as one member; members concatenate into one stream.
fn gzip_member(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// About 1 MiB of gzip that expands to a tar holding one 1 GiB file of zeros: the header,
/// then one member of 1 MiB of zeros repeated.
fn gzip_bomb() -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_mtime(1_600_000_000);
    header.set_cksum();
    let mut bomb = gzip_member(header.as_bytes());
    let zeros = gzip_member(&vec![0u8; 1 << 20]);
    for _ in 0..1024 {
        bomb.extend_from_slice(&zeros);
    }
    bomb.extend_from_slice(&gzip_member(&[0u8; 1024]));
    bomb
}

/// A gzipped tar of `count` empty files, written to `path` as it is made.
fn write_many_entries(path: &Path, count: u32) {
    let file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut archive = tar::Builder::new(encoder);
    let mut header = tar::Header::new_ustar();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(1_600_000_000);
    for index in 0..count {
        header.set_path(format!("many/f{index}")).unwrap();
        header.set_cksum();
        archive.append(&header, std::io::empty()).unwrap();
    }
    archive.into_inner().unwrap().finish().unwrap();
}

/// Peak resident memory (`VmHWM`, KiB) of the running process `pid`, if it is still there.
fn peak_memory_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Builds `context` with `--run-disk-max` and asserts the step extracting `archive` at
/// `line` of the Dockerfile is refused with the limit named, within bounded memory, and that
/// the state directory keeps nothing of it (`marker`: a name only the archive holds).
fn assert_extraction_refused(root: &Path, context: &Path, line: &str, marker: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgb"))
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain", "--run-disk-max", DISK_MAX])
        .arg(context)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut text).unwrap();
        text
    });
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak_kib = peak_kib.max(peak_memory_kib(child.id()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let message = reader.join().unwrap();
    assert!(!status.success(), "the archive was extracted: {message}");
    assert!(
        message.contains("--run-disk-max")
            && message.contains(DISK_MAX_SHOWN)
            && message.contains("Dockerfile:")
            && message.contains(line),
        "the error names neither the limit nor the step: {message}"
    );
    assert!(
        peak_kib < 256 << 10,
        "imgb peaked at {peak_kib} KiB while extracting"
    );
    let store = imgb_cache::Store::open(root).unwrap();
    let staged: Vec<_> = fs::read_dir(store.tmp_dir()).unwrap().collect();
    assert!(staged.is_empty(), "left in tmp/: {staged:?}");
    for snapshot in fs::read_dir(store.snapshots_dir()).unwrap() {
        let snapshot = snapshot.unwrap().path();
        assert!(
            !snapshot.join(marker).exists(),
            "a snapshot of the refused step: {}",
            snapshot.display()
        );
    }
}

#[test]
fn add_of_a_gzip_bomb_stops_at_the_disk_limit() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nADD bomb.tar.gz /\n",
    );
    fs::write(context.join("bomb.tar.gz"), gzip_bomb()).unwrap();
    assert_extraction_refused(
        &dir.path().join("root"),
        &context,
        "ADD bomb.tar.gz /",
        "zeros",
    );
}

#[test]
fn add_unpack_of_a_gzip_bomb_from_a_url_stops_at_the_disk_limit() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let served = dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("bomb.tar.gz"), gzip_bomb()).unwrap();
    let server = support::http::HttpServer::start(&busybox, &served);
    let line = format!("ADD --unpack=true {} /", server.url("bomb.tar.gz"));
    let context = busybox_context(
        dir.path(),
        &busybox,
        &format!("FROM scratch\nCOPY busybox /bin/busybox\n{line}\n"),
    );
    assert_extraction_refused(&dir.path().join("root"), &context, &line, "zeros");
}

#[test]
fn add_of_a_million_entries_stops_at_the_disk_limit() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = busybox_context(dir.path(), &busybox, "FROM scratch\nADD many.tar.gz /\n");
    write_many_entries(&context.join("many.tar.gz"), 1_000_000);
    assert_extraction_refused(
        &dir.path().join("root"),
        &context,
        "ADD many.tar.gz /",
        "many",
    );
}

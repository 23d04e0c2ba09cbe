//! `ADD` end to end: local archives of every compression extracted (made with the system `tar`
//! and compressors), files that are not archives copied as they are, `--unpack=false`, hostile
//! archives confined, and URLs downloaded from a `busybox httpd` on 127.0.0.1 with and without
//! `--checksum`, re-checked on every build. Images are checked by exporting them with
//! `-o type=local`.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::http::HttpServer;
use support::{busybox_context, imgb, run, setup, stderr, tool};

/// `payload/` with `hello.txt` (0640), `bin/run.sh` (0755) and `link -> hello.txt`.
fn payload(dir: &Path) -> PathBuf {
    let payload = dir.join("payload");
    fs::create_dir_all(payload.join("bin")).unwrap();
    fs::write(payload.join("hello.txt"), "hello from the archive\n").unwrap();
    fs::set_permissions(payload.join("hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(payload.join("bin/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        payload.join("bin/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("hello.txt", payload.join("link")).unwrap();
    payload
}

/// `tar` of `payload`'s contents into `archive` with an extra compression flag.
fn make_archive(payload: &Path, archive: &Path, flag: Option<&str>) {
    let mut command = Command::new("tar");
    command.arg("-C").arg(payload);
    if let Some(flag) = flag {
        command.arg(flag);
    }
    run(command
        .arg("-cf")
        .arg(archive)
        .args(["hello.txt", "bin", "link"]));
}

/// Builds `context` into a fresh directory with `-o type=local` and returns it.
fn build_local(root: &Path, context: &Path, out: &Path) -> std::process::Output {
    imgb(
        root,
        &[
            "build",
            "--progress",
            "rawjson",
            "-o",
            &format!("type=local,dest={}", out.display()),
            context.to_str().unwrap(),
        ],
    )
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn local_archives_of_every_compression_are_extracted_and_other_files_copied() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    for compressor in ["gzip", "bzip2", "xz", "zstd"] {
        if tool(compressor).is_none() {
            return;
        }
    }
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         ADD plain.tar /x/tar/\n\
         ADD app.tar.gz /x/gz\n\
         ADD app.tar.bz2 /x/bz2/\n\
         ADD app.tar.xz /x/xz/\n\
         ADD app.tar.zst /x/zst/\n\
         ADD fake.tar.gz notes.txt /x/files/\n\
         ADD --unpack=false plain.tar /x/kept/\n\
         ADD --chown=1234:5678 --chmod=700 app.tar.gz /x/owned/\n",
    );
    let payload = payload(dir.path());
    make_archive(&payload, &context.join("plain.tar"), None);
    make_archive(&payload, &context.join("app.tar.gz"), Some("--gzip"));
    make_archive(&payload, &context.join("app.tar.bz2"), Some("--bzip2"));
    make_archive(&payload, &context.join("app.tar.xz"), Some("--xz"));
    make_archive(&payload, &context.join("app.tar.zst"), Some("--zstd"));
    fs::write(context.join("fake.tar.gz"), "only the name of an archive\n").unwrap();
    fs::write(context.join("notes.txt"), "notes\n").unwrap();

    let out = dir.path().join("out");
    let output = build_local(&dir.path().join("root"), &context, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    for kind in ["tar", "gz", "bz2", "xz", "zst", "owned"] {
        let dest = out.join("x").join(kind);
        assert_eq!(
            fs::read_to_string(dest.join("hello.txt")).unwrap(),
            "hello from the archive\n",
            "{kind}"
        );
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("hello.txt"),
            "{kind}"
        );
        assert_eq!(
            mode(&dest.join("bin/run.sh")),
            0o755,
            "{kind}: --chmod does not apply"
        );
        assert_eq!(mode(&dest.join("hello.txt")), 0o640, "{kind}");
    }
    let owned = fs::metadata(out.join("x/owned/hello.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678), "--chown applies");
    assert_eq!(
        fs::read_to_string(out.join("x/files/fake.tar.gz")).unwrap(),
        "only the name of an archive\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("x/files/notes.txt")).unwrap(),
        "notes\n"
    );
    assert_eq!(
        fs::read(out.join("x/kept/plain.tar")).unwrap(),
        fs::read(context.join("plain.tar")).unwrap(),
        "--unpack=false copies the archive as a file"
    );
    assert!(!out.join("x/kept/hello.txt").exists());
}

/// A tar whose entries try to leave the destination: `../escaped`, then an absolute symlink
/// `evil -> /` written through.
fn breakout_archive(path: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |name: &str, kind: tar::EntryType, link: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        // Raw names: `tar::Builder::append_data` would refuse `..` itself.
        let name_field = &mut header.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    };
    append("../escaped", tar::EntryType::Regular, "", b"escaped\n");
    append("evil", tar::EntryType::Symlink, "/", b"");
    append(
        "evil/bin/planted",
        tar::EntryType::Regular,
        "",
        b"planted\n",
    );
    fs::write(path, builder.into_inner().unwrap()).unwrap();
}

#[test]
fn hostile_archive_entries_stay_inside_the_destination() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let context = busybox_context(
        dir.path(),
        &busybox,
        "FROM scratch\nCOPY busybox /bin/busybox\nADD breakout.tar /dest/\n",
    );
    breakout_archive(&context.join("breakout.tar"));
    let out = dir.path().join("out");
    let output = build_local(&dir.path().join("root"), &context, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        fs::read_to_string(out.join("dest/escaped")).unwrap(),
        "escaped\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("dest/bin/planted")).unwrap(),
        "planted\n",
        "the absolute symlink resolves inside the destination"
    );
    assert!(!out.join("escaped").exists(), "nothing lands beside /dest");
    assert!(
        !out.join("bin/planted").exists(),
        "nothing lands in the image's /bin"
    );
    assert!(!dir.path().join("escaped").exists());
}

/// Writes `content` to `path` with a fixed mtime, so the server's validators change exactly
/// when the test means them to.
fn publish(path: &Path, content: &str, mtime: u64) {
    fs::write(path, content).unwrap();
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many of a rawjson build's steps ran and how many came from the cache.
fn ran_and_cached(output: &std::process::Output) -> (usize, usize) {
    let events = stderr(output);
    (
        events.matches("\"event\":\"started\"").count(),
        events.matches("\"event\":\"cached\"").count(),
    )
}

#[test]
fn url_downloads_are_verified_rechecked_and_cached() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let served = dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    publish(&served.join("tool.txt"), "version 1\n", 1_700_000_000);
    let payload = payload(dir.path());
    make_archive(&payload, &served.join("bundle.tar"), None);
    let server = HttpServer::start(&busybox, &served);
    let pinned = sha256_hex(&fs::read(served.join("bundle.tar")).unwrap());
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         ADD {tool} /dl/\n\
         ADD --checksum=sha256:{pinned} --chown=7:8 {bundle} /dl/bundle.tar\n\
         ADD --unpack=true {bundle} /unpacked/\n\
         ADD --chmod=755 {tool} /dl/renamed\n",
        tool = server.url("tool.txt"),
        bundle = server.url("bundle.tar"),
    );
    let context = busybox_context(dir.path(), &busybox, &dockerfile);
    let root = dir.path().join("root");
    let out = dir.path().join("out");

    let first = build_local(&root, &context, &out);
    assert!(first.status.success(), "{}", stderr(&first));
    let tool_file = out.join("dl/tool.txt");
    assert_eq!(fs::read_to_string(&tool_file).unwrap(), "version 1\n");
    assert_eq!(mode(&tool_file), 0o600, "downloads are 0600 as in BuildKit");
    assert_eq!(
        fs::metadata(&tool_file).unwrap().mtime(),
        1_700_000_000,
        "mtime from Last-Modified"
    );
    assert_eq!(mode(&out.join("dl/renamed")), 0o755);
    let bundle = fs::metadata(out.join("dl/bundle.tar")).unwrap();
    assert_eq!((bundle.uid(), bundle.gid()), (7, 8));
    assert_eq!(
        fs::read(out.join("dl/bundle.tar")).unwrap(),
        fs::read(served.join("bundle.tar")).unwrap(),
        "a URL is not extracted without --unpack"
    );
    assert_eq!(
        fs::read_to_string(out.join("unpacked/hello.txt")).unwrap(),
        "hello from the archive\n"
    );

    let unchanged = build_local(&root, &context, &dir.path().join("out2"));
    assert!(unchanged.status.success(), "{}", stderr(&unchanged));
    let (ran, cached) = ran_and_cached(&unchanged);
    assert_eq!(
        ran,
        3,
        "only the three download sources run (the pinned one from its record):\n{}",
        stderr(&unchanged)
    );
    assert_eq!(cached, 5, "every step hits:\n{}", stderr(&unchanged));

    // Both files change on the server. The checksum still names the recorded content, so the
    // pinned download is not fetched again (the new body would not match it); the others are.
    fs::write(served.join("bundle.tar"), "replaced\n").unwrap();
    publish(
        &served.join("tool.txt"),
        "version 2, longer\n",
        1_700_000_100,
    );
    let out3 = dir.path().join("out3");
    let changed = build_local(&root, &context, &out3);
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert_eq!(
        fs::read_to_string(out3.join("dl/tool.txt")).unwrap(),
        "version 2, longer\n"
    );
    assert_eq!(
        fs::read(out3.join("dl/bundle.tar")).unwrap(),
        fs::read(out.join("dl/bundle.tar")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(out3.join("unpacked/bundle.tar")).unwrap(),
        "replaced\n",
        "with --unpack, a download that is no archive is copied as a file"
    );
    let (ran, cached) = ran_and_cached(&changed);
    // Every ADD after the changed one sits on a changed base: all four rerun.
    assert_eq!((ran, cached), (3 + 4, 1), "{}", stderr(&changed));
    drop(server);
}

#[test]
fn wrong_checksum_fails_naming_the_line() {
    let Some((dir, busybox)) = setup() else {
        return;
    };
    let served = dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("file.txt"), "content\n").unwrap();
    let server = HttpServer::start(&busybox, &served);
    let wrong = "0".repeat(64);
    let context = busybox_context(
        dir.path(),
        &busybox,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nADD --checksum=sha256:{wrong} {} /f\n",
            server.url("file.txt")
        ),
    );
    let output = imgb(
        &dir.path().join("root"),
        &["build", "--progress", "plain", context.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("digest mismatch"), "{text}");
    assert!(
        text.contains(&sha256_hex(b"content\n")),
        "the actual digest is shown: {text}"
    );
    assert!(text.contains("Dockerfile:3"), "{text}");
}

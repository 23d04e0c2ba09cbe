//! Layer writing and application end to end: determinism, every entry type, whiteouts.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgb_cache::apply::{ApplyOptions, apply_layer};
use imgb_cache::compress::Compression;
use imgb_cache::layer::{LayerChanges, LayerOptions, write_layer, write_tar};
use imgb_cache::{Digest, Store};

const EPOCH: i64 = 1_700_000_000;

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        println!("notice: not running as root; skipping ownership, device and capability checks");
    }
    root
}

fn options(compression: Compression) -> LayerOptions {
    LayerOptions {
        compression,
        source_date_epoch: Some(EPOCH),
        threads: 0,
    }
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A tree with every kind of entry the writer supports (devices and ownership when root).
fn build_tree(base: &Path, root: bool) {
    fs::create_dir_all(base.join("etc/ssl")).unwrap();
    fs::create_dir_all(base.join("usr/bin")).unwrap();
    fs::write(base.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::write(base.join("etc/ssl/cert.pem"), vec![b'c'; 300_000]).unwrap();
    fs::write(base.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        base.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::create_dir(base.join("tmp")).unwrap();
    fs::set_permissions(base.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(base.join("shared")).unwrap();
    fs::set_permissions(base.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::hard_link(base.join("usr/bin/tool"), base.join("usr/bin/tool-alias")).unwrap();
    symlink("../etc/hosts", base.join("usr/hosts-link")).unwrap();
    symlink("/does/not/exist", base.join("dangling")).unwrap();
    let long_dir = base.join("d".repeat(120)).join("e".repeat(120));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(200)), b"long").unwrap();
    fs::write(base.join("name with spaces \u{e9}"), b"").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        base.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::lsetxattr(
        base.join("etc/hosts"),
        "user.note",
        b"binary\n\0value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::net::UnixListener::bind(base.join("socket")).unwrap();
    if root {
        let make = |name: &str, kind, major, minor| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                base.join(name),
                kind,
                rustix::fs::Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            )
            .unwrap();
        };
        make("null", rustix::fs::FileType::CharacterDevice, 1, 3);
        make("loop0", rustix::fs::FileType::BlockDevice, 7, 0);
        std::os::unix::fs::lchown(base.join("etc/hosts"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(base.join("usr/hosts-link"), Some(42), Some(43)).unwrap();
        // cap_net_raw+ep, version 2 (the bytes include a 0x0a-free mask; value is opaque here).
        let capability = [
            0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        rustix::fs::lsetxattr(
            base.join("usr/bin/tool"),
            "security.capability",
            &capability,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // Re-apply setuid: setting the capability does not touch it, but chown above might.
        fs::set_permissions(
            base.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
    }
}

/// Everything observable about a tree, keyed by relative path.
fn snapshot(base: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let meta = path.symlink_metadata().unwrap();
            let relative = path.strip_prefix(base).unwrap().to_path_buf();
            let file_type = meta.file_type();
            let detail = if file_type.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if file_type.is_symlink() {
                format!("symlink -> {}", fs::read_link(&path).unwrap().display())
            } else if file_type.is_file() {
                let first = inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| relative.clone());
                format!(
                    "file {} first={}",
                    Digest::of(&fs::read(&path).unwrap()),
                    first.display()
                )
            } else {
                format!("special rdev={}", meta.rdev())
            };
            let xattrs = list_xattrs(&path);
            out.insert(
                relative,
                format!(
                    "{detail} mode={:o} uid={} gid={} mtime={} xattrs={xattrs:?}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    if file_type.is_symlink() {
                        0
                    } else {
                        meta.mtime()
                    },
                ),
            );
        }
    }
    out
}

fn list_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut names).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let name = CString::new(name).unwrap();
        let n = rustix::fs::lgetxattr(path, name.as_c_str(), &mut value).unwrap();
        out.push((name.to_string_lossy().into_owned(), value[..n].to_vec()));
    }
    out.sort();
    out
}

/// Sets every mtime in the tree (not following symlinks) to `seconds`.
fn touch_all(base: &Path, seconds: i64) {
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            set_mtime(&path, seconds);
        }
    }
}

fn tar_entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u64, u64)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.username_bytes(), Some(&b""[..]));
            assert_eq!(header.groupname_bytes(), Some(&b""[..]));
            (
                String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                header.entry_type(),
                header.mtime().unwrap(),
                entry.size(),
            )
        })
        .collect()
}

#[test]
fn same_tree_with_different_times_gives_identical_digests() {
    let root = is_root();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    build_tree(&source, root);
    for compression in [
        Compression::None,
        Compression::GZIP_DEFAULT,
        Compression::ZSTD_DEFAULT,
    ] {
        touch_all(&source, EPOCH + 1000);
        let first = write_layer(
            &store,
            &source,
            &LayerChanges::default(),
            &options(compression),
        )
        .unwrap();
        // New mtimes (still after the epoch) and new ctimes (chmod round trip).
        touch_all(&source, EPOCH + 99_999);
        let hosts = source.join("etc/hosts");
        fs::set_permissions(&hosts, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let second = write_layer(
            &store,
            &source,
            &LayerChanges::default(),
            &options(compression),
        )
        .unwrap();
        assert_eq!(first, second, "{compression:?}");
        assert_eq!(first.media_type, compression.layer_media_type());
        assert!(store.has_blob(&first.blob.digest));
    }
}

#[test]
fn diff_id_is_the_digest_of_the_uncompressed_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    build_tree(&source, false);
    let gzip = write_layer(
        &store,
        &source,
        &LayerChanges::default(),
        &options(Compression::GZIP_DEFAULT),
    )
    .unwrap();
    let plain = write_layer(
        &store,
        &source,
        &LayerChanges::default(),
        &options(Compression::None),
    )
    .unwrap();
    assert_eq!(gzip.diff_id, plain.diff_id);
    assert_eq!(plain.blob.digest, plain.diff_id);
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&store.read_blob(&gzip.blob.digest).unwrap()[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(Digest::of(&decoded), gzip.diff_id);
    assert_eq!(decoded.len() as u64, gzip.tar_size);
}

#[test]
fn tar_is_sorted_numeric_clamped_and_skips_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    build_tree(&source, false);
    fs::write(source.join("old"), b"").unwrap();
    set_mtime(&source.join("old"), 1000);
    let mut tar = Vec::new();
    write_tar(&mut tar, &source, &LayerChanges::default(), Some(EPOCH)).unwrap();
    let entries = tar_entries(&tar);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(!names.contains(&"socket"));
    assert!(names.contains(&"etc/"));
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    assert!(position("etc/") < position("etc/hosts"));
    assert!(position("etc/hosts") < position("etc/ssl/"));
    for (name, _, mtime, _) in &entries {
        let expected = if name == "old" { 1000 } else { EPOCH as u64 };
        assert_eq!(*mtime, expected, "{name}");
    }
    let alias = entries
        .iter()
        .find(|e| e.0 == "usr/bin/tool-alias")
        .unwrap();
    assert_eq!(alias.1, tar::EntryType::Link);
    assert_eq!(alias.3, 0);
}

#[test]
fn every_entry_type_round_trips_through_each_compression() {
    let root = is_root();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    build_tree(&source, root);
    touch_all(&source, EPOCH - 50);
    fs::remove_file(source.join("socket")).unwrap();
    let expected = snapshot(&source);
    for compression in [
        Compression::None,
        Compression::Gzip { level: 1 },
        Compression::Zstd { level: 1 },
    ] {
        let layer = write_layer(
            &store,
            &source,
            &LayerChanges::default(),
            &options(compression),
        )
        .unwrap();
        let target = dir.path().join(format!("out-{}", layer.blob.digest.hex()));
        fs::create_dir(&target).unwrap();
        let blob = store
            .open_blob(&layer.blob.digest, Some(layer.blob.size))
            .unwrap();
        let stats = apply_layer(blob, &target, &ApplyOptions::default()).unwrap();
        assert_eq!(stats.tar_bytes, layer.tar_size);
        assert_eq!(stats.skipped_devices, 0);
        assert_eq!(snapshot(&target), expected, "{compression:?}");
    }
}

#[test]
fn whiteouts_and_opaque_dirs_are_written_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // The lower layer, as already unpacked.
    let target = dir.path().join("rootfs");
    for path in [
        "etc/old.conf",
        "etc/keep.conf",
        "var/lib/x/data",
        "opt/lower/file",
        "gone/f",
    ] {
        fs::create_dir_all(target.join(path).parent().unwrap()).unwrap();
        fs::write(target.join(path), b"lower").unwrap();
    }
    // The upper layer: etc/old.conf deleted, var/lib/x deleted (var absent from the upper),
    // opt made opaque with a new file, gone deleted then recreated as a file.
    let upper = dir.path().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new.conf"), b"upper").unwrap();
    fs::create_dir_all(upper.join("opt")).unwrap();
    fs::write(upper.join("opt/new"), b"upper").unwrap();
    fs::write(upper.join("gone"), b"now a file").unwrap();
    let changes = LayerChanges {
        deleted: vec!["etc/old.conf".into(), "/var/lib/x".into(), "gone".into()],
        opaque_dirs: vec!["opt".into()],
    };
    let mut tar = Vec::new();
    write_tar(&mut tar, &upper, &changes, Some(EPOCH)).unwrap();
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/.wh.old.conf",
            "etc/new.conf",
            "gone",
            "opt/",
            "opt/.wh..wh..opq",
            "opt/new",
            "var/lib/.wh.x",
        ]
    );

    let layer = write_layer(
        &store,
        &upper,
        &changes,
        &options(Compression::GZIP_DEFAULT),
    )
    .unwrap();
    let blob = store.open_blob(&layer.blob.digest, None).unwrap();
    apply_layer(blob, &target, &ApplyOptions::default()).unwrap();
    assert!(!target.join("etc/old.conf").exists());
    assert_eq!(fs::read(target.join("etc/keep.conf")).unwrap(), b"lower");
    assert_eq!(fs::read(target.join("etc/new.conf")).unwrap(), b"upper");
    assert!(!target.join("var/lib/x").exists());
    assert!(target.join("var/lib").is_dir());
    assert!(!target.join("opt/lower").exists());
    assert_eq!(fs::read(target.join("opt/new")).unwrap(), b"upper");
    assert_eq!(fs::read(target.join("gone")).unwrap(), b"now a file");
}

#[test]
fn recreated_directory_is_written_opaque() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    fs::create_dir_all(upper.join("cache")).unwrap();
    let changes = LayerChanges {
        deleted: vec!["cache".into()],
        opaque_dirs: vec![],
    };
    let mut tar = Vec::new();
    write_tar(&mut tar, &upper, &changes, None).unwrap();
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert_eq!(names, ["cache/", "cache/.wh..wh..opq"]);
}

#[test]
fn invalid_change_paths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (changes, needle) in [
        (
            LayerChanges {
                deleted: vec!["../escape".into()],
                opaque_dirs: vec![],
            },
            "..",
        ),
        (
            LayerChanges {
                deleted: vec!["/".into()],
                opaque_dirs: vec![],
            },
            "root",
        ),
        (
            LayerChanges {
                deleted: vec![],
                opaque_dirs: vec!["missing".into()],
            },
            "missing",
        ),
    ] {
        let error = write_tar(Vec::new(), dir.path(), &changes, None).unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    }
}

#[test]
fn large_layer_streams_through_parallel_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    // ~12 MiB of mixed content across several files: many gzip chunks.
    for i in 0..6u32 {
        let content: Vec<u8> = (0..2_000_000u32)
            .map(|n| (n.wrapping_mul(2_654_435_761).wrapping_add(i) >> 24) as u8 & 0x0f)
            .collect();
        fs::write(source.join(format!("blob{i}")), content).unwrap();
    }
    let first = write_layer(
        &store,
        &source,
        &LayerChanges::default(),
        &options(Compression::GZIP_DEFAULT),
    )
    .unwrap();
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let second = single.install(|| {
        write_layer(
            &store,
            &source,
            &LayerChanges::default(),
            &options(Compression::GZIP_DEFAULT),
        )
        .unwrap()
    });
    assert_eq!(first, second);
    let target = dir.path().join("out");
    fs::create_dir(&target).unwrap();
    let blob = store.open_blob(&first.blob.digest, None).unwrap();
    apply_layer(blob, &target, &ApplyOptions::default()).unwrap();
    for i in 0..6 {
        let name = format!("blob{i}");
        assert_eq!(
            fs::read(target.join(&name)).unwrap(),
            fs::read(source.join(&name)).unwrap()
        );
    }
}

#[test]
fn gnu_tar_extracts_our_layers() {
    if std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("notice: no tar binary; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    build_tree(&source, false);
    fs::remove_file(source.join("socket")).unwrap();
    let tar_path = dir.path().join("layer.tar");
    write_tar(
        fs::File::create(&tar_path).unwrap(),
        &source,
        &LayerChanges::default(),
        None,
    )
    .unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xpf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let long = PathBuf::from("d".repeat(120))
        .join("e".repeat(120))
        .join("f".repeat(200));
    assert_eq!(fs::read(out.join(long)).unwrap(), b"long");
    assert_eq!(
        fs::read_link(out.join("usr/hosts-link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"../etc/hosts"
    );
}

//! Tests for layer application, including containerd's archive breakout cases
//! (`pkg/archive/tar_test.go`, TestBreakouts) ported to hand-built archives.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;
use crate::confined::BelowEntry;
use crate::tar_format::{EntryHeader, write_end, write_header, write_padding};

/// Builds archives with arbitrary (hostile) names.
#[derive(Default)]
struct Archive {
    bytes: Vec<u8>,
}

impl Archive {
    fn entry(self, path: &str, kind: Kind, mode: u32, link: &str, content: &[u8]) -> Self {
        self.entry_with_device(path, kind, mode, link, content, (0, 0))
    }

    fn entry_with_device(
        mut self,
        path: &str,
        kind: Kind,
        mode: u32,
        link: &str,
        content: &[u8],
        device: (u32, u32),
    ) -> Self {
        let header = EntryHeader {
            path: path.as_bytes(),
            kind,
            mode,
            uid: u64::from(rustix::process::geteuid().as_raw()),
            gid: u64::from(rustix::process::getegid().as_raw()),
            size: content.len() as u64,
            mtime: 1_600_000_000,
            link: link.as_bytes(),
            device,
            xattrs: &[],
        };
        write_header(&mut self.bytes, &header).unwrap();
        self.bytes.extend_from_slice(content);
        write_padding(&mut self.bytes, content.len() as u64).unwrap();
        self
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(path, Kind::Directory, mode, "", b"")
    }

    fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.entry(path, Kind::Regular, mode, "", content)
    }

    fn symlink(self, target: &str, path: &str) -> Self {
        self.entry(path, Kind::Symlink, 0o777, target, b"")
    }

    fn link(self, target: &str, path: &str) -> Self {
        self.entry(path, Kind::HardLink, 0o777, target, b"")
    }

    fn finish(mut self) -> Vec<u8> {
        write_end(&mut self.bytes).unwrap();
        self.bytes
    }
}

/// A scratch directory with the extraction root inside it, so writes outside are detectable.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn outside(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            found.push(entry.unwrap().path());
        }
        found.sort();
        found
    }

    fn apply(&self, archive: Vec<u8>) -> Result<ApplyStats, ApplyError> {
        let before = self.outside();
        let result = apply_layer(&archive[..], &self.root(), &ApplyOptions::default());
        assert_eq!(
            self.outside(),
            before,
            "something was created beside the root"
        );
        result
    }

    fn read(&self, path: &str) -> Vec<u8> {
        fs::read(self.root().join(path)).unwrap()
    }
}

/// (dev, ino) of `path` resolved inside `root`, following symlinks as if `root` were `/`.
fn in_root_inode(root: &Path, path: &str) -> (u64, u64) {
    let confined = ConfinedRoot::open_over(root, None).unwrap();
    let mut current = clean(path.as_bytes());
    for _ in 0..40 {
        let name = current.pop().unwrap();
        let dir = confined
            .resolve_dir(&current, Missing::Stop)
            .unwrap()
            .unwrap();
        let stat = rustix::fs::statat(dir.fd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
            return (stat.st_dev, stat.st_ino);
        }
        let target = rustix::fs::readlinkat(dir.fd.as_fd(), &name, Vec::new()).unwrap();
        let target = target.as_bytes();
        let mut next = if target.starts_with(b"/") {
            Vec::new()
        } else {
            dir.path.iter().map(OsStr::to_owned).collect()
        };
        next.extend(clean(target));
        current = clean(PathBuf::from_iter(next).as_os_str().as_bytes());
    }
    panic!("symlink loop at {path}");
}

fn assert_same_file(root: &Path, a: &str, b: &str) {
    assert_eq!(in_root_inode(root, a), in_root_inode(root, b), "{a} vs {b}");
}

fn assert_invalid(result: Result<ApplyStats, ApplyError>) {
    match result {
        Err(ApplyError::InvalidEntry { .. }) => {}
        other => panic!("expected an invalid-entry error, got {other:?}"),
    }
}

const UNBROKEN: &[u8] = b"unbroken";

#[test]
fn breakout_symlink_absolute() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o755)
        .symlink("/etc", "localetc")
        .file("/localetc/unbroken", UNBROKEN, 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/unbroken"), UNBROKEN);
}

#[test]
fn breakout_symlink_up_and_out() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("/dummy/../etc", "localetc")
        .file("/localetc/unbroken", UNBROKEN, 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/unbroken"), UNBROKEN);
}

#[test]
fn breakout_symlink_multiple_absolute() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("/etc", "/dummy/etc")
        .symlink("/dummy/etc", "localetc")
        .file("/dummy/etc/unbroken", UNBROKEN, 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/unbroken"), UNBROKEN);
}

#[test]
fn breakout_symlink_multiple_relative() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o755)
        .dir("dummy", 0o755)
        .symlink("/etc", "/dummy/etc")
        .symlink("./dummy/etc", "localetc")
        .file("/dummy/etc/unbroken", UNBROKEN, 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/unbroken"), UNBROKEN);
}

#[test]
fn breakout_symlink_empty_file() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o755)
        .file("etc/emptied", b"notempty", 0o644)
        .symlink("/etc", "localetc")
        .file("/localetc/emptied", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert!(sandbox.read("etc/emptied").is_empty());
}

fn passwd_archive() -> Archive {
    Archive::default()
        .dir("etc", 0o770)
        .file("/etc/passwd", b"inside", 0o644)
}

#[test]
fn breakout_hardlink_relative() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .dir("breakouts", 0o755)
        .symlink("../../etc", "breakouts/d1")
        .link("/breakouts/d1/passwd", "breakouts/mypasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/breakouts/mypasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_down_and_out() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .dir("breakouts", 0o755)
        .dir("downandout", 0o755)
        .symlink("../downandout/../../etc", "breakouts/d1")
        .link("/breakouts/d1/passwd", "breakouts/mypasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/breakouts/mypasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_absolute() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("/etc", "localetc")
        .link("/localetc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_relative_long() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("../../../../../../../etc", "localetc")
        .link("/localetc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_relative_up_and_out() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("upandout/../../../etc", "localetc")
        .link("/localetc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_direct_relative() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive().link("../../../../../etc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd", "/etc/passwd");
}

#[test]
fn breakout_hardlink_direct_absolute() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive().link("/etc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd", "/etc/passwd");
}

#[test]
fn breakout_symlink_named_parent_directory_is_ignored() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("/etc/", "..")
        .link("/etc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/localpasswd", "/etc/passwd");
    assert!(sandbox.root().is_dir());
}

#[test]
fn breakout_symlink_with_empty_name_is_ignored() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("/etc/", "")
        .link("/etc/passwd", "localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/localpasswd", "/etc/passwd");
}

#[test]
fn breakout_symlink_parent_relative() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .symlink("/etc/", "localetc/sub/..")
        .link("/etc/passwd", "/localetc/localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/localetc/localpasswd", "/etc/passwd");
}

#[test]
fn breakout_symlink_slash_ended() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive()
        .dir("localetc/", 0o770)
        .link("/etc/passwd", "/localetc/localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "/localetc/localpasswd", "/etc/passwd");
}

fn lower_with_passwd(sandbox: &Sandbox) {
    fs::create_dir(sandbox.root().join("etc")).unwrap();
    fs::write(sandbox.root().join("etc/passwd"), b"inside").unwrap();
}

#[test]
fn breakout_symlink_overrides_directory() {
    for target in ["/etc", "../../etc"] {
        let sandbox = Sandbox::new();
        lower_with_passwd(&sandbox);
        fs::create_dir(sandbox.root().join("localetc")).unwrap();
        let archive = Archive::default()
            .symlink(target, "localetc")
            .link("/etc/passwd", "/localetc/localpasswd");
        sandbox.apply(archive.finish()).unwrap();
        assert_same_file(&sandbox.root(), "/localetc/localpasswd", "/etc/passwd");
    }
}

#[test]
fn breakout_directory_overrides_symlink() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    symlink("/etc", sandbox.root().join("localetc")).unwrap();
    let archive = Archive::default()
        .dir("/localetc/", 0o755)
        .link("/etc/passwd", "/localetc/localpasswd");
    sandbox.apply(archive.finish()).unwrap();
    assert!(
        sandbox
            .root()
            .join("localetc")
            .symlink_metadata()
            .unwrap()
            .is_dir()
    );
    assert_same_file(&sandbox.root(), "/localetc/localpasswd", "/etc/passwd");
}

#[test]
fn breakout_directory_overrides_symlink_and_hardlink() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    symlink("etc", sandbox.root().join("localetc")).unwrap();
    fs::hard_link(
        sandbox.root().join("etc/passwd"),
        sandbox.root().join("etc/localpasswd"),
    )
    .unwrap();
    let archive = Archive::default().dir("/localetc/", 0o755).file(
        "/localetc/localpasswd",
        b"different",
        0o644,
    );
    sandbox.apply(archive.finish()).unwrap();
    let root = sandbox.root();
    assert_ne!(
        in_root_inode(&root, "/localetc/localpasswd"),
        in_root_inode(&root, "/etc/passwd")
    );
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
}

#[test]
fn breakout_whiteouts_naming_parent_or_current_directory_are_refused() {
    for name in [".wh...", "etc/.wh...", ".wh..", "etc/.wh.."] {
        let sandbox = Sandbox::new();
        lower_with_passwd(&sandbox);
        let archive = Archive::default().file(name, b"", 0o644);
        assert_invalid(sandbox.apply(archive.finish()));
        assert_eq!(sandbox.read("etc/passwd"), b"inside", "{name}");
    }
}

#[test]
fn breakout_whiteout_removes_symlink_not_its_target() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    symlink("/etc", sandbox.root().join("localetc")).unwrap();
    let archive = Archive::default().file(".wh.localetc", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    assert!(sandbox.root().join("localetc").symlink_metadata().is_err());
}

#[test]
fn breakout_whiteout_through_symlinked_parent_stays_inside() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    fs::write(sandbox.root().join("etc/whitedout"), b"x").unwrap();
    symlink("/etc", sandbox.root().join("localetc")).unwrap();
    let archive = Archive::default().file("localetc/.wh.whitedout", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    assert!(!sandbox.root().join("etc/whitedout").exists());
}

#[test]
fn breakout_whiteout_prefix_in_directory_name_is_a_plain_name() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    let archive = Archive::default().file(".wh.etc/somefile", b"non-empty", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    assert_eq!(sandbox.read(".wh.etc/somefile"), b"non-empty");
}

#[test]
fn breakout_whiteout_under_dead_symlink_is_a_no_op() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    symlink("/dne", sandbox.root().join("localetc")).unwrap();
    let archive = Archive::default().file("localetc/.wh.etc", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    assert!(!sandbox.root().join("dne").exists());
}

#[test]
fn breakout_whiteout_relative_path_is_cleaned() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    symlink("/dne", sandbox.root().join("localetc")).unwrap();
    let archive = Archive::default().file("dne/../.wh.etc", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert!(!sandbox.root().join("etc").exists());
}

#[test]
fn breakout_hardlink_to_symlink_before_its_target_exists() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("etc", 0o770)
        .symlink("/etc/passwd", "localpasswd")
        .link("localpasswd", "localpasswd-dup")
        .file("/etc/passwd", b"after", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_same_file(&sandbox.root(), "localpasswd-dup", "/etc/passwd");
}

#[test]
fn breakout_hardlink_to_symlink_links_the_symlink_itself() {
    for target in ["../../../../../etc/passwd", "/etc/passwd"] {
        let sandbox = Sandbox::new();
        let archive = passwd_archive()
            .symlink(target, "passwdlink")
            .link("/passwdlink", "localpasswd");
        sandbox.apply(archive.finish()).unwrap();
        let root = sandbox.root();
        let link = root.join("localpasswd").symlink_metadata().unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(
            fs::read_link(root.join("localpasswd")).unwrap(),
            Path::new(target)
        );
        assert_same_file(&root, "/localpasswd", "/etc/passwd");
    }
}

#[test]
fn breakout_hardlink_to_symlink_does_not_chmod_outside() {
    let sandbox = Sandbox::new();
    let outside = sandbox.dir.path().join("perm400");
    fs::write(&outside, b"...").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o400)).unwrap();
    let also_outside = sandbox.dir.path().join("also-exists-outside-root");
    fs::write(&also_outside, b"...").unwrap();
    let archive = Archive::default()
        .symlink(outside.to_str().unwrap(), also_outside.to_str().unwrap())
        .link(also_outside.to_str().unwrap(), "sketchylink");
    sandbox.apply(archive.finish()).unwrap();
    let mode = fs::symlink_metadata(&outside).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o400);
    assert_eq!(fs::read(&also_outside).unwrap(), b"...");
}

#[test]
fn breakout_file_through_symlink_to_outside_directory_stays_inside() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .symlink(sandbox.dir.path().to_str().unwrap(), "escape")
        .file("escape/planted", b"x", 0o644)
        .symlink("../../../../..", "up")
        .file("up/planted2", b"x", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert!(!sandbox.dir.path().join("planted").exists());
    assert_eq!(sandbox.read("planted2"), b"x");
}

#[test]
fn breakout_hardlink_to_file_outside_via_symlink_is_confined() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.dir.path().join("secret"), b"host").unwrap();
    let archive = Archive::default()
        .symlink(sandbox.dir.path().to_str().unwrap(), "host")
        .link("host/secret", "stolen");
    assert_invalid(sandbox.apply(archive.finish()));
    assert_eq!(
        fs::metadata(sandbox.dir.path().join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn root_directory_entry_updates_root_metadata_and_other_root_entries_are_ignored() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("./", 0o711)
        .file("/", b"x", 0o644)
        .file(".", b"x", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    let meta = sandbox.root().symlink_metadata().unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o711);
}

#[test]
fn opaque_marker_keeps_only_this_layers_entries() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.root().join("d/sub")).unwrap();
    fs::write(sandbox.root().join("d/lower"), b"").unwrap();
    fs::write(sandbox.root().join("d/sub/lower"), b"").unwrap();
    fs::write(sandbox.root().join("keep"), b"").unwrap();
    // The marker comes after an entry of this layer in the same directory.
    let archive = Archive::default()
        .dir("d", 0o755)
        .file("d/-new", b"", 0o644)
        .file("d/sub/new", b"", 0o644)
        .file("d/.wh..wh..opq", b"", 0o644)
        .file("d/z", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    let root = sandbox.root();
    assert!(root.join("d/-new").exists());
    assert!(root.join("d/sub/new").exists());
    assert!(root.join("d/z").exists());
    assert!(!root.join("d/lower").exists());
    assert!(!root.join("d/sub/lower").exists());
    assert!(root.join("keep").exists());
}

#[test]
fn existing_file_is_replaced_not_written_through() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.root().join("a"), b"old").unwrap();
    fs::hard_link(sandbox.root().join("a"), sandbox.root().join("b")).unwrap();
    let archive = Archive::default().file("a", b"new", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("a"), b"new");
    assert_eq!(sandbox.read("b"), b"old");
}

#[test]
fn read_only_directory_gets_its_mode_after_its_children() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("ro", 0o555)
        .file("ro/file", b"x", 0o444);
    sandbox.apply(archive.finish()).unwrap();
    let meta = sandbox.root().join("ro").metadata().unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o555);
    assert_eq!(meta.mtime(), 1_600_000_000);
}

#[test]
fn entry_count_limit_is_enforced() {
    let sandbox = Sandbox::new();
    let mut archive = Archive::default();
    for i in 0..5 {
        archive = archive.file(&format!("f{i}"), b"", 0o644);
    }
    let options = ApplyOptions {
        limits: ApplyLimits {
            max_entries: 3,
            ..ApplyLimits::default()
        },
        ..ApplyOptions::default()
    };
    let error = apply_layer(&archive.finish()[..], &sandbox.root(), &options).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::LimitExceeded {
                field: "max_entries",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("max_entries"));
}

#[test]
fn size_limit_stops_an_archive_at_its_decompressed_size() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .file("small", &[1u8; 1000], 0o644)
        .file("large", &vec![2u8; 300_000], 0o644)
        .finish();
    let options = ApplyOptions {
        limits: ApplyLimits {
            max_tar_bytes: 100_000,
            ..ApplyLimits::default()
        },
        ..ApplyOptions::default()
    };
    let error = apply_layer(&archive[..], &sandbox.root(), &options).unwrap_err();
    match error {
        ApplyError::LimitExceeded {
            field: "max_tar_bytes",
            value,
            max: 100_000,
            ..
        } => assert!(
            value > 100_000 && value < 100_000 + 2 * (256 << 10),
            "{value}"
        ),
        other => panic!("{other}"),
    }
}

#[test]
fn path_length_limit_is_enforced() {
    let sandbox = Sandbox::new();
    let long = "a/".repeat(3000);
    let archive = Archive::default().file(&long, b"", 0o644);
    let error = sandbox.apply(archive.finish()).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::LimitExceeded {
                field: "max_path_bytes",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn expansion_ratio_limit_stops_a_compression_bomb() {
    let sandbox = Sandbox::new();
    let zeros = vec![0u8; 8 << 20];
    let archive = Archive::default().file("bomb", &zeros, 0o644).finish();
    let mut compressed = Vec::new();
    let mut encoder = flate2::write::GzEncoder::new(&mut compressed, flate2::Compression::best());
    encoder.write_all(&archive).unwrap();
    encoder.finish().unwrap();
    let options = ApplyOptions {
        limits: ApplyLimits {
            max_expansion_ratio: 100,
            expansion_floor: 1 << 20,
            ..ApplyLimits::default()
        },
        ..ApplyOptions::default()
    };
    let error = apply_layer(&compressed[..], &sandbox.root(), &options).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::LimitExceeded {
                field: "max_expansion_ratio",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn truncated_compressed_layer_is_an_error() {
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .file("f", &[7u8; 100_000], 0o644)
        .finish();
    let mut compressed = Vec::new();
    let mut encoder = flate2::write::GzEncoder::new(&mut compressed, flate2::Compression::fast());
    encoder.write_all(&archive).unwrap();
    encoder.finish().unwrap();
    compressed.truncate(compressed.len() - 6);
    assert!(sandbox.apply(compressed).is_err());
}

#[test]
fn unsupported_entry_type_is_refused_with_its_flag() {
    let sandbox = Sandbox::new();
    let mut bytes = Archive::default().file("x", b"", 0o644).bytes;
    bytes[156] = b'Z';
    let mut block = [0u8; 512];
    block.copy_from_slice(&bytes[..512]);
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    bytes.extend_from_slice(&[0u8; 1024]);
    let error = sandbox.apply(bytes).unwrap_err();
    assert!(error.to_string().contains("'Z'"), "{error}");
}

/// ADD's options: what a plain archive (not a layer) extracts as.
fn archive_options() -> ApplyOptions {
    ApplyOptions {
        whiteouts: Whiteouts::Literal,
        root_metadata: false,
        ..ApplyOptions::default()
    }
}

#[test]
fn literal_whiteouts_are_ordinary_files_and_the_root_entry_is_left_alone() {
    let sandbox = Sandbox::new();
    fs::write(sandbox.root().join("kept"), UNBROKEN).unwrap();
    fs::set_permissions(sandbox.root(), fs::Permissions::from_mode(0o751)).unwrap();
    let archive = Archive::default()
        .dir("./", 0o700)
        .file(".wh.kept", b"a file", 0o644)
        .file("sub/.wh..wh..opq", b"another", 0o600)
        .finish();
    apply_layer(&archive[..], &sandbox.root(), &archive_options()).unwrap();
    assert_eq!(sandbox.read("kept"), UNBROKEN);
    assert_eq!(sandbox.read(".wh.kept"), b"a file");
    assert_eq!(sandbox.read("sub/.wh..wh..opq"), b"another");
    let mode = fs::metadata(sandbox.root()).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o751, "the target's own mode is not the archive's");
}

#[test]
fn owner_option_overrides_every_entrys_recorded_owner() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .dir("d", 0o755)
        .file("d/f", b"x", 0o640)
        .symlink("f", "d/l")
        .finish();
    let options = ApplyOptions {
        owner: Some((1234, 5678)),
        ..archive_options()
    };
    apply_layer(&archive[..], &sandbox.root(), &options).unwrap();
    for path in ["d", "d/f", "d/l"] {
        let meta = fs::symlink_metadata(sandbox.root().join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{path}");
    }
    let mode = fs::metadata(sandbox.root().join("d/f")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o640, "modes stay the archive's");
}

/// Layers below the target, as a map from relative path to entry.
struct FakeBelow(Vec<(&'static str, BelowEntry)>);

impl Below for FakeBelow {
    fn entry(&self, path: &Path) -> io::Result<Option<BelowEntry>> {
        Ok(self
            .0
            .iter()
            .find(|(name, _)| Path::new(name) == path)
            .map(|(_, entry)| entry.clone()))
    }
}

fn below_dir(mode: u32) -> BelowEntry {
    BelowEntry::Dir {
        mode,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        mtime: 1_500_000_000,
    }
}

#[test]
fn entries_resolve_through_symlinks_and_directories_of_the_layers_below() {
    let sandbox = Sandbox::new();
    let below = FakeBelow(vec![
        (
            "lib",
            BelowEntry::Symlink {
                target: b"usr/lib".to_vec(),
            },
        ),
        ("usr", below_dir(0o751)),
        ("usr/lib", below_dir(0o750)),
        (
            "escape",
            BelowEntry::Symlink {
                target: b"/../../outside".to_vec(),
            },
        ),
        ("file", BelowEntry::Other),
    ]);
    let archive = Archive::default()
        .file("lib/libx.so", b"lib", 0o644)
        .file("escape/f", b"confined", 0o644)
        .finish();
    let before = sandbox.outside();
    apply_over(
        &archive[..],
        &sandbox.root(),
        &archive_options(),
        Some(&below),
    )
    .unwrap();
    assert_eq!(sandbox.outside(), before, "nothing written beside the root");
    assert_eq!(sandbox.read("usr/lib/libx.so"), b"lib");
    assert!(
        !sandbox.root().join("lib").exists(),
        "the lower symlink is followed, not shadowed by a directory"
    );
    let usr = fs::metadata(sandbox.root().join("usr")).unwrap();
    assert_eq!(usr.mode() & 0o7777, 0o751, "copied up with the lower mode");
    assert_eq!(
        fs::metadata(sandbox.root().join("usr/lib")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(sandbox.read("outside/f"), b"confined");

    let through_file = Archive::default().file("file/x", b"", 0o644).finish();
    let error = apply_over(
        &through_file[..],
        &sandbox.root(),
        &archive_options(),
        Some(&below),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::Resolve {
                source: ResolveError::NotADirectory(_),
                ..
            }
        ),
        "{error}"
    );
}

// Hostile archives beyond containerd's list (issue 8, class 2).

#[test]
fn containerd_directory_creation_makes_missing_parents() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.root().join("etc")).unwrap();
    let archive = Archive::default()
        .dir("/etc/subdir", 0o755)
        .dir("/etc/subdir2/", 0o755)
        .dir("/etc/subdir2/more", 0o755)
        .dir("/other/noparent-1/1", 0o755)
        .dir("/other/noparent-2/2/", 0o755);
    sandbox.apply(archive.finish()).unwrap();
    for dir in [
        "etc/subdir",
        "etc/subdir2/more",
        "other/noparent-1/1",
        "other/noparent-2/2",
    ] {
        assert!(sandbox.root().join(dir).is_dir(), "{dir}");
    }
}

#[test]
fn hardlink_then_overwrite_replaces_the_link_not_its_target() {
    let sandbox = Sandbox::new();
    let archive = passwd_archive().link("/etc/passwd", "localpasswd").file(
        "localpasswd",
        b"overwritten",
        0o644,
    );
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    assert_eq!(sandbox.read("localpasswd"), b"overwritten");
}

#[test]
fn symlink_then_overwrite_replaces_the_symlink_not_its_target() {
    let sandbox = Sandbox::new();
    let host_file = sandbox.dir.path().join("host-file");
    fs::write(&host_file, b"host").unwrap();
    let archive = passwd_archive()
        .symlink(host_file.to_str().unwrap(), "outward")
        .file("outward", b"overwritten", 0o644)
        .symlink("/etc/passwd", "inward")
        .file("inward", b"overwritten", 0o644)
        .symlink("/etc", "dirlink")
        .dir("dirlink", 0o755)
        .file("dirlink/passwd", b"new", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert_eq!(fs::read(&host_file).unwrap(), b"host");
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
    for name in ["outward", "inward"] {
        let meta = sandbox.root().join(name).symlink_metadata().unwrap();
        assert!(meta.is_file(), "{name} is a plain file now");
    }
    assert!(
        sandbox
            .root()
            .join("dirlink")
            .symlink_metadata()
            .unwrap()
            .is_dir()
    );
    assert_eq!(sandbox.read("dirlink/passwd"), b"new");
}

#[test]
fn entries_naming_the_root_never_replace_it() {
    let sandbox = Sandbox::new();
    let outside = sandbox.dir.path().to_str().unwrap().to_owned();
    let archive = passwd_archive()
        .symlink(&outside, ".")
        .symlink(&outside, "/")
        .symlink(&outside, "./")
        .link("/etc/passwd", "/")
        .link("/etc/passwd", "..")
        .entry("./..", Kind::Fifo, 0o644, "", b"")
        .file("/", b"x", 0o644)
        .file("etc/..", b"x", 0o644)
        .file("after", b"still inside", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    let meta = sandbox.root().symlink_metadata().unwrap();
    assert!(meta.is_dir(), "the root is still a directory");
    assert_eq!(sandbox.read("after"), b"still inside");
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
}

#[test]
fn opaque_marker_before_its_siblings_keeps_them() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.root().join("d")).unwrap();
    fs::write(sandbox.root().join("d/lower"), b"").unwrap();
    let archive = Archive::default()
        .file("d/.wh..wh..opq", b"", 0o644)
        .file("d/new", b"", 0o644)
        .dir("d/sub", 0o755);
    sandbox.apply(archive.finish()).unwrap();
    let root = sandbox.root();
    assert!(!root.join("d/lower").exists());
    assert!(root.join("d/new").exists());
    assert!(root.join("d/sub").is_dir());
}

#[test]
fn bare_whiteout_prefix_is_refused_in_every_mode() {
    let modes = [
        Whiteouts::Remove,
        Whiteouts::Overlay(OverlayXattrs::for_current_user()),
    ];
    for whiteouts in modes {
        for name in [".wh.", "etc/.wh."] {
            let sandbox = Sandbox::new();
            lower_with_passwd(&sandbox);
            let archive = Archive::default().file(name, b"", 0o644).finish();
            let options = ApplyOptions {
                whiteouts,
                ..ApplyOptions::default()
            };
            assert_invalid(apply_layer(&archive[..], &sandbox.root(), &options));
            assert_eq!(sandbox.read("etc/passwd"), b"inside", "{name}");
        }
    }
}

#[test]
fn whiteout_of_a_missing_path_changes_nothing() {
    let sandbox = Sandbox::new();
    lower_with_passwd(&sandbox);
    let archive = Archive::default()
        .file(".wh.nothere", b"", 0o644)
        .file("missing/dir/.wh.x", b"", 0o644)
        .file("etc/passwd/.wh.x", b"", 0o644)
        .file("missing/.wh..wh..opq", b"", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert!(
        !sandbox.root().join("missing").exists(),
        "no parent created"
    );
    assert_eq!(sandbox.read("etc/passwd"), b"inside");
}

#[test]
fn whiteout_names_ending_in_a_slash_remove_the_directory_and_inner_ones_are_plain() {
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.root().join("sub/deeper")).unwrap();
    fs::create_dir_all(sandbox.root().join("b")).unwrap();
    let archive = Archive::default()
        .dir(".wh.sub/", 0o755)
        .file("a/.wh.b/c", b"plain", 0o644);
    sandbox.apply(archive.finish()).unwrap();
    assert!(!sandbox.root().join("sub").exists());
    assert!(sandbox.root().join("b").is_dir());
    assert_eq!(sandbox.read("a/.wh.b/c"), b"plain");
}

/// An archive that never ends: the same member over and over.
struct EndlessEntries {
    member: Vec<u8>,
    at: usize,
}

impl Read for EndlessEntries {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < buf.len() {
            let rest = &self.member[self.at..];
            let n = rest.len().min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&rest[..n]);
            written += n;
            self.at = (self.at + n) % self.member.len();
        }
        Ok(written)
    }
}

#[test]
fn endless_stream_of_entries_stops_at_the_entry_limit() {
    let sandbox = Sandbox::new();
    let member = Archive::default().file(".wh.nothing", b"", 0o644).bytes;
    let endless = EndlessEntries { member, at: 0 };
    let options = ApplyOptions {
        limits: ApplyLimits {
            max_entries: 20_000,
            ..ApplyLimits::default()
        },
        ..ApplyOptions::default()
    };
    let error = apply_layer(endless, &sandbox.root(), &options).unwrap_err();
    match error {
        ApplyError::LimitExceeded {
            field: "max_entries",
            value,
            ..
        } => assert_eq!(value, 20_001),
        other => panic!("expected the entry limit, got {other}"),
    }
}

#[test]
fn nesting_deeper_than_the_depth_limit_through_symlinks_is_refused() {
    let sandbox = Sandbox::new();
    let spelled = "d/".repeat(400);
    let archive = Archive::default()
        .file(&format!("{spelled}f"), b"deep", 0o644)
        .symlink(&format!("/{spelled}"), "deep")
        .file(&format!("deep/{}f", "e/".repeat(200)), b"deeper", 0o644);
    let error = sandbox.apply(archive.finish()).unwrap_err();
    assert!(
        matches!(
            error,
            ApplyError::LimitExceeded {
                field: "max_depth",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(sandbox.read(&format!("{spelled}f")), b"deep");
    // The whole tree (as deep as the limit allows) can be whited out again.
    let whiteout = Archive::default().file(".wh.d", b"", 0o644);
    sandbox.apply(whiteout.finish()).unwrap();
    assert!(!sandbox.root().join("d").exists());
}

#[test]
fn devices_fifos_and_setuid_files_are_created_inside_the_root_only() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    // An empty host directory outside the sandbox for the archive to aim at.
    let host = tempfile::tempdir().unwrap();
    for options in [ApplyOptions::default(), archive_options()] {
        let sandbox = Sandbox::new();
        let archive = Archive::default()
            .symlink(host.path().to_str().unwrap(), "dev")
            .entry_with_device("dev/mem", Kind::CharDevice, 0o640, "", b"", (1, 1))
            .entry_with_device("dev/sda", Kind::BlockDevice, 0o660, "", b"", (8, 0))
            .entry("dev/fifo", Kind::Fifo, 0o600, "", b"")
            .file("dev/su", b"#!/bin/sh\n", 0o4755)
            .file("sgid", b"", 0o2755)
            .finish();
        let before = sandbox.outside();
        apply_layer(&archive[..], &sandbox.root(), &options).unwrap();
        assert_eq!(sandbox.outside(), before);
        assert_eq!(
            fs::read_dir(host.path()).unwrap().count(),
            0,
            "nothing created in the host directory the symlink names"
        );
        let inside = sandbox.root().join(host.path().strip_prefix("/").unwrap());
        let kind = |name: &str| fs::symlink_metadata(inside.join(name)).unwrap();
        assert!(kind("mem").file_type().is_char_device());
        assert_eq!(kind("mem").rdev(), rustix::fs::makedev(1, 1));
        assert!(kind("sda").file_type().is_block_device());
        assert!(kind("fifo").file_type().is_fifo());
        assert_eq!(kind("su").mode() & 0o7777, 0o4755, "setuid kept as data");
        let sgid = fs::metadata(sandbox.root().join("sgid")).unwrap();
        assert_eq!(sgid.mode() & 0o7777, 0o2755);
    }
}

#[test]
fn strict_paths_refuse_escaping_names_and_writes_through_symlinks_naming_the_entry() {
    let strict = ApplyOptions {
        strict_paths: true,
        ..archive_options()
    };
    let refused = [
        (
            Archive::default().file("../up", b"x", 0o644),
            "../up",
            "`..`",
        ),
        (
            Archive::default().file("/abs", b"x", 0o644),
            "/abs",
            "absolute",
        ),
        (
            Archive::default().file("f", b"x", 0o644).link("../f", "h"),
            "h",
            "`..`",
        ),
        (
            Archive::default()
                .symlink("/etc", "out")
                .file("out/passwd", b"x", 0o644),
            "out/passwd",
            "symlink",
        ),
    ];
    for (archive, entry, reason) in refused {
        let sandbox = Sandbox::new();
        let error = apply_layer(&archive.finish()[..], &sandbox.root(), &strict).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("{entry:?}")) && text.contains(reason),
            "{text}"
        );
        assert_eq!(sandbox.outside(), vec![sandbox.root()]);
    }
    // Links pointing anywhere are kept as links, never followed.
    let sandbox = Sandbox::new();
    let archive = Archive::default()
        .symlink("/etc/passwd", "abs")
        .symlink("../../x", "rel")
        .file("d/f", b"x", 0o644)
        .finish();
    apply_layer(&archive[..], &sandbox.root(), &strict).unwrap();
    assert_eq!(
        fs::read_link(sandbox.root().join("abs")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
    assert_eq!(sandbox.read("d/f"), b"x");
}

//! Canary values and the scans that look for them in whatever a build leaves: files, trees,
//! tar members and gzip/zstd streams (the secrets tests of `imgb build` and `imgb serve`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// A value no build could produce by chance.
pub fn canary(label: &str) -> String {
    let mut random = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{label}-canary-{hex}")
}

/// Where `needle` occurs in `bytes` (named by `label`), looking into tar members and gzip or
/// zstd streams; each hit is a label such as `oci.tar|blobs/sha256/ab..|etc/file`.
pub fn scan(label: &str, bytes: &[u8], needle: &[u8], hits: &mut Vec<String>) {
    let decompressor = match bytes {
        [0x1f, 0x8b, ..] => Some(["gzip", "-dc"]),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(["zstd", "-dcq"]),
        _ => None,
    };
    if let Some([program, flag]) = decompressor {
        let plain = decompress(program, flag, bytes);
        return scan(&format!("{label}|{program}"), &plain, needle, hits);
    }
    if bytes.get(257..262) == Some(b"ustar") && scan_tar(label, bytes, needle, hits).is_ok() {
        return;
    }
    if bytes.windows(needle.len()).any(|window| window == needle) {
        hits.push(label.to_owned());
    }
}

/// [`scan`] of each member of a tar: its name, link target and content.
fn scan_tar(
    label: &str,
    bytes: &[u8],
    needle: &[u8],
    hits: &mut Vec<String>,
) -> std::io::Result<()> {
    let contains = |text: &[u8]| text.windows(needle.len()).any(|window| window == needle);
    let mut found = Vec::new();
    for entry in tar::Archive::new(bytes).entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let member = format!("{label}|{name}");
        if contains(name.as_bytes()) || entry.link_name_bytes().is_some_and(|link| contains(&link))
        {
            found.push(format!("{member} (name or link)"));
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        scan(&member, &content, needle, &mut found);
    }
    hits.append(&mut found);
    Ok(())
}

fn decompress(program: &str, flag: &str, bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .arg(flag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output.stdout
}

/// Every occurrence of `needle` under `path`: in names, symlink targets and file contents.
pub fn scan_tree(path: &Path, needle: &str, hits: &mut Vec<String>) {
    let label = path.display().to_string();
    if label.contains(needle) {
        hits.push(format!("{label} (name)"));
    }
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_symlink() {
        let target = std::fs::read_link(path).unwrap();
        if target.to_string_lossy().contains(needle) {
            hits.push(format!("{label} (symlink target)"));
        }
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            scan_tree(&entry.unwrap().path(), needle, hits);
        }
    } else if meta.is_file() {
        let bytes = std::fs::read(path).unwrap();
        scan(&label, &bytes, needle.as_bytes(), hits);
    }
}

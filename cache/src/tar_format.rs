//! Byte-exact tar header encoding for deterministic layers.
//!
//! Every header is a POSIX ustar block with numeric ids only (uname/gname empty). Values that do
//! not fit ustar — paths or link targets over the field sizes, ids, sizes or mtimes too large or
//! negative, and xattrs — go into a PAX extended header written just before the entry, with
//! records in a fixed order (xattrs sorted by name) and a fixed header name. Nothing here reads
//! the clock, the user database or the environment, so equal inputs give equal bytes.

use std::io::{self, Write};

pub(crate) const BLOCK: usize = 512;

const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

/// Extended attributes as (name, value) pairs, sorted by name when written.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The entry kinds a layer may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

impl Kind {
    fn typeflag(self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::BlockDevice => b'4',
            Kind::Directory => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One entry's metadata, as it will appear in the archive.
#[derive(Debug, Clone)]
pub(crate) struct EntryHeader<'a> {
    /// Archive path: relative, `/`-separated, directories ending in `/`.
    pub path: &'a [u8],
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Content length (regular files only; 0 otherwise).
    pub size: u64,
    pub mtime: i64,
    /// Symlink target or hardlink target path.
    pub link: &'a [u8],
    pub device: (u32, u32),
    /// Sorted by name.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Writes the (PAX and) ustar header blocks for `entry`; the caller writes the content and then
/// [`write_padding`].
pub(crate) fn write_header(out: &mut impl Write, entry: &EntryHeader<'_>) -> io::Result<()> {
    let mut pax = Vec::new();
    let mut block = [0u8; BLOCK];

    match split_path(entry.path) {
        Some((prefix, name)) => {
            put_bytes(&mut block[0..100], name);
            put_bytes(&mut block[345..500], prefix);
        }
        None => {
            pax_record(&mut pax, b"path", entry.path);
            put_bytes(&mut block[0..100], truncate(entry.path, NAME_LEN));
        }
    }
    if entry.link.len() > NAME_LEN {
        pax_record(&mut pax, b"linkpath", entry.link);
    }
    put_bytes(&mut block[157..257], truncate(entry.link, NAME_LEN));

    put_octal(&mut block[100..108], u64::from(entry.mode & 0o7777));
    put_number(&mut block[108..116], &mut pax, b"uid", entry.uid);
    put_number(&mut block[116..124], &mut pax, b"gid", entry.gid);
    put_number(&mut block[124..136], &mut pax, b"size", entry.size);
    match u64::try_from(entry.mtime) {
        Ok(mtime) => put_number(&mut block[136..148], &mut pax, b"mtime", mtime),
        Err(_) => pax_record(&mut pax, b"mtime", entry.mtime.to_string().as_bytes()),
    }
    block[156] = entry.kind.typeflag();
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    if matches!(entry.kind, Kind::CharDevice | Kind::BlockDevice) {
        // Linux majors (12 bits) and minors (20 bits) always fit 7 octal digits.
        put_octal(&mut block[329..337], u64::from(entry.device.0));
        put_octal(&mut block[337..345], u64::from(entry.device.1));
    }
    for (name, value) in entry.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax_record(&mut pax, &key, value);
    }

    if !pax.is_empty() {
        write_pax_header(out, &pax)?;
    }
    set_checksum(&mut block);
    out.write_all(&block)
}

/// Zero bytes that round `size` up to a whole block.
pub(crate) fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let remainder = (size % BLOCK as u64) as usize;
    if remainder == 0 {
        return Ok(());
    }
    out.write_all(&[0u8; BLOCK][remainder..])
}

/// The end-of-archive marker: two zero blocks.
pub(crate) fn write_end(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&[0u8; 2 * BLOCK])
}

fn write_pax_header(out: &mut impl Write, records: &[u8]) -> io::Result<()> {
    let mut block = [0u8; BLOCK];
    put_bytes(&mut block[0..100], PAX_HEADER_NAME);
    put_octal(&mut block[100..108], 0o644);
    put_octal(&mut block[108..116], 0);
    put_octal(&mut block[116..124], 0);
    put_octal(&mut block[124..136], records.len() as u64);
    put_octal(&mut block[136..148], 0);
    block[156] = b'x';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    set_checksum(&mut block);
    out.write_all(&block)?;
    out.write_all(records)?;
    write_padding(out, records.len() as u64)
}

/// Splits a path into ustar (prefix, name) fields, or `None` if it needs a PAX record.
fn split_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= NAME_LEN {
        return Some((b"", path));
    }
    // The name part must be non-empty, so a directory's trailing '/' is not a split point.
    let searchable = path.get(..path.len() - 1)?;
    let first_fitting = path.len().saturating_sub(NAME_LEN + 1);
    let split = searchable
        .iter()
        .enumerate()
        .skip(first_fitting)
        .find(|&(_, &byte)| byte == b'/')
        .map(|(index, _)| index)?;
    let (prefix, name) = (path.get(..split)?, path.get(split + 1..)?);
    (prefix.len() <= PREFIX_LEN && name.len() <= NAME_LEN).then_some((prefix, name))
}

fn truncate(bytes: &[u8], len: usize) -> &[u8] {
    bytes.get(..len).unwrap_or(bytes)
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
}

/// Zero-padded octal with a trailing NUL; the caller guarantees the value fits.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    put_bytes(field, text.as_bytes());
    field[digits] = 0;
}

/// Octal when it fits the field, otherwise 0 in the field and a PAX record.
fn put_number(field: &mut [u8], pax: &mut Vec<u8>, key: &[u8], value: u64) {
    let bits = 3 * (field.len() as u32 - 1);
    if value >> bits == 0 {
        put_octal(field, value);
    } else {
        put_octal(field, 0);
        pax_record(pax, key, value.to_string().as_bytes());
    }
}

/// Appends `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself.
fn pax_record(pax: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    pax.extend_from_slice(len.to_string().as_bytes());
    pax.push(b' ');
    pax.extend_from_slice(key);
    pax.push(b'=');
    pax.extend_from_slice(value);
    pax.push(b'\n');
}

fn set_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(path: &'a [u8], link: &'a [u8]) -> EntryHeader<'a> {
        EntryHeader {
            path,
            kind: Kind::Regular,
            mode: 0o4755,
            uid: 1000,
            gid: 1000,
            size: 3,
            mtime: 1_700_000_000,
            link,
            device: (0, 0),
            xattrs: &[],
        }
    }

    /// (path, link target, size, uid, PAX records) of each entry, as the `tar` crate sees it.
    type ReadBack = Vec<(String, String, u64, u64, Vec<(String, Vec<u8>)>)>;

    fn read_back(bytes: &[u8]) -> ReadBack {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let mut pax = Vec::new();
            if let Some(extensions) = entry.pax_extensions().unwrap() {
                for extension in extensions {
                    let extension = extension.unwrap();
                    pax.push((
                        extension.key().unwrap().to_owned(),
                        extension.value_bytes().to_vec(),
                    ));
                }
            }
            out.push((path, link, entry.size(), entry.header().uid().unwrap(), pax));
        }
        out
    }

    fn archive(entry: &EntryHeader<'_>, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, entry).unwrap();
        out.extend_from_slice(content);
        write_padding(&mut out, content.len() as u64).unwrap();
        write_end(&mut out).unwrap();
        out
    }

    #[test]
    fn short_entry_is_a_single_ustar_block_with_numeric_ids_only() {
        let bytes = archive(&header(b"etc/passwd", b""), b"abc");
        assert_eq!(bytes.len(), 4 * BLOCK);
        let parsed = tar::Header::from_byte_slice(&bytes[..BLOCK]);
        assert!(parsed.as_ustar().is_some());
        assert_eq!(parsed.mode().unwrap(), 0o4755);
        assert_eq!(parsed.username_bytes(), Some(&b""[..]));
        assert_eq!(parsed.cksum().unwrap(), {
            let mut copy = [0u8; BLOCK];
            copy.copy_from_slice(&bytes[..BLOCK]);
            copy[148..156].fill(b' ');
            copy.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        let entries = read_back(&bytes);
        assert_eq!(entries[0].0, "etc/passwd");
        assert_eq!(entries[0].2, 3);
    }

    #[test]
    fn path_up_to_255_bytes_uses_ustar_prefix_split() {
        let path = format!("{}/{}", "d".repeat(150), "f".repeat(99));
        let bytes = archive(&header(path.as_bytes(), b""), b"abc");
        assert_eq!(bytes.len(), 4 * BLOCK, "no PAX header expected");
        assert_eq!(read_back(&bytes)[0].0, path);
    }

    #[test]
    fn long_path_and_link_use_pax_records() {
        let path = "p".repeat(300);
        let link = format!("/{}", "l".repeat(200));
        let mut entry = header(path.as_bytes(), link.as_bytes());
        entry.kind = Kind::Symlink;
        entry.size = 0;
        let entries = read_back(&archive(&entry, b""));
        assert_eq!(entries[0].0, path);
        assert_eq!(entries[0].1, link);
    }

    #[test]
    fn large_ids_sizes_and_negative_mtime_use_pax_records() {
        let mut entry = header(b"big", b"");
        entry.uid = 1 << 40;
        entry.mtime = -5;
        let mut out = Vec::new();
        write_header(&mut out, &entry).unwrap();
        let records = String::from_utf8_lossy(&out[BLOCK..2 * BLOCK]).into_owned();
        assert!(records.contains(" uid=1099511627776\n"), "{records}");
        assert!(records.contains(" mtime=-5\n"), "{records}");

        let mut huge = header(b"huge", b"");
        huge.size = 1 << 34;
        let mut out = Vec::new();
        write_header(&mut out, &huge).unwrap();
        let records = String::from_utf8_lossy(&out[BLOCK..2 * BLOCK]).into_owned();
        assert!(records.contains(" size=17179869184\n"), "{records}");
    }

    #[test]
    fn xattrs_are_schily_pax_records_with_binary_values() {
        let xattrs = vec![
            (
                b"security.capability".to_vec(),
                vec![1, 0, 0, 2, 0, 0x20, 0],
            ),
            (b"user.note".to_vec(), b"hi".to_vec()),
        ];
        let mut entry = header(b"bin/ping", b"");
        entry.xattrs = &xattrs;
        let entries = read_back(&archive(&entry, b"abc"));
        let pax = &entries[0].4;
        assert_eq!(pax[0].0, "SCHILY.xattr.security.capability");
        assert_eq!(pax[0].1, xattrs[0].1);
        assert_eq!(pax[1].0, "SCHILY.xattr.user.note");
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        for value_len in [0, 1, 85, 86, 87, 990, 995, 1000] {
            let mut pax = Vec::new();
            pax_record(&mut pax, b"path", &vec![b'x'; value_len]);
            let (len, _) =
                std::str::from_utf8(&pax[..pax.iter().position(|&b| b == b' ').unwrap()])
                    .map(|s| (s.parse::<usize>().unwrap(), ()))
                    .unwrap();
            assert_eq!(len, pax.len(), "value length {value_len}");
        }
    }
}

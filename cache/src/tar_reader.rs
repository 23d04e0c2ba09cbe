//! A streaming tar reader for layer application.
//!
//! Reads POSIX ustar, PAX (local headers; global headers are skipped) and GNU long names, which
//! covers what image builders emit. It exists instead of a general tar library because layer
//! input is untrusted: PAX records are parsed by their length prefix (values may hold any byte,
//! including newlines, as xattr values do), extension headers are capped in size so a hostile
//! archive cannot make us buffer gigabytes, and sparse entries are refused rather than guessed
//! at. Entry content is read through [`TarReader::read_content`]; whatever the caller leaves
//! unread is skipped by the next [`TarReader::next_entry`].

use std::io::{self, Read};

use crate::tar_format::{BLOCK, Kind, Xattrs};

/// Largest PAX or GNU long-name payload accepted.
const MAX_EXTENSION: u64 = 1 << 20;

/// What an entry is, as far as application cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Known(Kind),
    /// A type flag layers have no use for (kept for the error message).
    Unsupported(u8),
}

/// One archive member with all extension headers folded in.
#[derive(Debug, Clone, Default)]
pub(crate) struct TarEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Option<EntryKind>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub device: (u32, u32),
    pub xattrs: Xattrs,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    #[error("reading the archive failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed tar header at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
}

/// Extension values that apply to the next real entry.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    /// GNU `L` / `K` names, kept apart from PAX's so a disagreement can be refused.
    gnu_path: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Xattrs,
}

#[derive(Debug)]
pub(crate) struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner` so far.
    offset: u64,
    /// Unread content of the current entry.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            finished: false,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The next member, or `None` at the end-of-archive marker (or a clean end of input).
    pub(crate) fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        let mut pending = Pending::default();
        let mut pending_any = false;
        loop {
            if self.finished {
                return Ok(None);
            }
            self.skip(self.remaining + self.padding)?;
            self.remaining = 0;
            self.padding = 0;
            let header_offset = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                self.finished = true;
                return match pending_any {
                    true => Err(self.malformed(header_offset, "extension header with no entry")),
                    false => Ok(None),
                };
            }
            if block.iter().all(|&b| b == 0) {
                self.finished = true;
                return Ok(None);
            }
            let header =
                Header::parse(&block).map_err(|reason| self.malformed(header_offset, reason))?;
            let size = match (pending.size, header.is_extension()) {
                (Some(size), false) => size,
                _ => header.size,
            };
            self.remaining = size;
            self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            match header.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_EXTENSION {
                        return Err(self.malformed(
                            header_offset,
                            format!("extension header of {size} bytes exceeds {MAX_EXTENSION}"),
                        ));
                    }
                    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
                    self.read_content_exact(&mut data)?;
                    match header.typeflag {
                        b'x' => parse_pax(&data, &mut pending)
                            .map_err(|reason| self.malformed(header_offset, reason))?,
                        b'L' => pending.gnu_path = Some(until_nul(&data).to_vec()),
                        b'K' => pending.gnu_link = Some(until_nul(&data).to_vec()),
                        // Global headers carry archive-wide defaults layers never rely on.
                        _ => continue,
                    }
                    pending_any = true;
                }
                b'S' => {
                    return Err(self.malformed(header_offset, "sparse entries are not supported"));
                }
                _ => {
                    if pending
                        .xattrs
                        .iter()
                        .any(|(name, _)| name.starts_with(b"GNU.sparse"))
                    {
                        return Err(
                            self.malformed(header_offset, "sparse entries are not supported")
                        );
                    }
                    if let Some(conflict) = pending.disagreement(&header) {
                        return Err(self.malformed(header_offset, conflict));
                    }
                    return Ok(Some(header.into_entry(pending)));
                }
            }
        }
    }

    /// Reads the current entry's content; 0 at its end.
    pub(crate) fn read_content(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if limit == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..limit])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside an entry's content",
            ));
        }
        self.remaining -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }

    fn read_content_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            filled += self.read_content(&mut buf[filled..])?;
        }
        Ok(())
    }

    /// Fills `block`; `false` on a clean end of input before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "archive ends inside a header",
                    ));
                }
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    fn skip(&mut self, count: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.inner).take(count), &mut io::sink())?;
        self.offset += skipped;
        if skipped < count {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside an entry",
            ));
        }
        Ok(())
    }

    fn malformed(&self, offset: u64, reason: impl Into<String>) -> TarError {
        TarError::Malformed {
            offset,
            reason: reason.into(),
        }
    }
}

/// The largest size an 11-digit octal field holds: what some writers put there as a
/// placeholder when the real size is in a PAX record.
const OCTAL_SIZE_MAX: u64 = 0o777_7777_7777;

impl Pending {
    /// Why the extension headers and the header disagree about the entry, if they do. Readers
    /// resolve such conflicts differently (Go prefers the GNU name, others the last header), so
    /// a scanner and a runtime could see different files in one layer: it is refused instead.
    fn disagreement(&self, header: &Header) -> Option<String> {
        let names = [
            ("path", &self.path, &self.gnu_path),
            ("linkpath", &self.link, &self.gnu_link),
        ];
        for (what, pax, gnu) in names {
            if let (Some(pax), Some(gnu)) = (pax, gnu)
                && pax != gnu
            {
                return Some(format!(
                    "the PAX {what} {:?} and the GNU long name {:?} disagree",
                    String::from_utf8_lossy(pax),
                    String::from_utf8_lossy(gnu)
                ));
            }
        }
        match self.size {
            Some(size) if ![0, size, OCTAL_SIZE_MAX].contains(&header.size) => Some(format!(
                "the PAX size {size} and the header size {} disagree",
                header.size
            )),
            _ => None,
        }
    }
}

/// The fields of one 512-byte header block.
struct Header {
    name: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    device: (u32, u32),
}

impl Header {
    fn parse(block: &[u8; BLOCK]) -> Result<Self, String> {
        let recorded = number(&block[148..156]).map_err(|e| format!("checksum: {e}"))?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (index, &byte) in block.iter().enumerate() {
            let byte = if (148..156).contains(&index) {
                b' '
            } else {
                byte
            };
            unsigned += u64::from(byte);
            signed += i64::from(byte as i8);
        }
        if recorded != unsigned && i64::try_from(recorded).ok() != Some(signed) {
            return Err(format!(
                "checksum mismatch (recorded {recorded}, computed {unsigned})"
            ));
        }
        let field = |range: std::ops::Range<usize>, what: &str| {
            number(&block[range]).map_err(|e| format!("{what}: {e}"))
        };
        let mut name = until_nul(&block[0..100]).to_vec();
        // Only POSIX ustar has a prefix field; GNU uses those bytes for other things.
        if &block[257..263] == b"ustar\0" {
            let prefix = until_nul(&block[345..500]);
            if !prefix.is_empty() {
                let mut joined = prefix.to_vec();
                joined.push(b'/');
                joined.extend_from_slice(&name);
                name = joined;
            }
        }
        let mtime = field(136..148, "mtime")?;
        Ok(Self {
            name,
            link: until_nul(&block[157..257]).to_vec(),
            typeflag: block[156],
            mode: u32::try_from(field(100..108, "mode")? & 0o7777).unwrap_or(0),
            uid: field(108..116, "uid")?,
            gid: field(116..124, "gid")?,
            size: field(124..136, "size")?,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
            device: (
                u32::try_from(field(329..337, "devmajor")?).unwrap_or(u32::MAX),
                u32::try_from(field(337..345, "devminor")?).unwrap_or(u32::MAX),
            ),
        })
    }

    fn is_extension(&self) -> bool {
        matches!(self.typeflag, b'x' | b'g' | b'L' | b'K')
    }

    fn into_entry(self, pending: Pending) -> TarEntry {
        let path = pending.path.or(pending.gnu_path).unwrap_or(self.name);
        let kind = match self.typeflag {
            // Old archives mark directories only by a trailing slash.
            b'0' | b'\0' | b'7' if path.ends_with(b"/") => EntryKind::Known(Kind::Directory),
            b'0' | b'\0' | b'7' => EntryKind::Known(Kind::Regular),
            b'1' => EntryKind::Known(Kind::HardLink),
            b'2' => EntryKind::Known(Kind::Symlink),
            b'3' => EntryKind::Known(Kind::CharDevice),
            b'4' => EntryKind::Known(Kind::BlockDevice),
            b'5' => EntryKind::Known(Kind::Directory),
            b'6' => EntryKind::Known(Kind::Fifo),
            other => EntryKind::Unsupported(other),
        };
        TarEntry {
            path,
            link: pending.link.or(pending.gnu_link).unwrap_or(self.link),
            kind: Some(kind),
            mode: self.mode,
            uid: pending.uid.unwrap_or(self.uid),
            gid: pending.gid.unwrap_or(self.gid),
            mtime: pending.mtime.unwrap_or(self.mtime),
            device: self.device,
            xattrs: pending.xattrs,
        }
    }
}

/// Parses a numeric header field: octal text, or GNU base-256 when the high bit is set.
fn number(field: &[u8]) -> Result<u64, String> {
    if let Some((&first, rest)) = field.split_first().filter(|(first, _)| **first & 0x80 != 0) {
        if first & 0x40 != 0 {
            return Err("negative base-256 value".into());
        }
        let mut value = u64::from(first & 0x3f);
        for &byte in rest {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(byte)))
                .ok_or("base-256 value overflows")?;
        }
        return Ok(value);
    }
    let text = until_nul(field);
    let digits = text.trim_ascii();
    if digits.is_empty() {
        return Ok(0);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| "not octal text".to_string())?;
    u64::from_str_radix(digits, 8).map_err(|_| format!("not an octal number: {digits:?}"))
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// Parses `"<len> <key>=<value>\n"` records by their lengths.
fn parse_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), String> {
    while !data.is_empty() {
        // Some writers pad the payload with NULs.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= space + 1 || len > data.len() {
            return Err(format!("PAX record length {len} out of range"));
        }
        let (record, rest) = data.split_at(len);
        data = rest;
        let body = record
            .get(space + 1..len - 1)
            .filter(|_| record.last() == Some(&b'\n'))
            .ok_or("PAX record does not end in a newline")?;
        let equals = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without `=`")?;
        let (key, value) = (&body[..equals], &body[equals + 1..]);
        let decimal = |what: &str| -> Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| format!("PAX {what} is not a number"))
        };
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => pending.size = Some(decimal("size")?),
            b"uid" => pending.uid = Some(decimal("uid")?),
            b"gid" => pending.gid = Some(decimal("gid")?),
            b"mtime" => pending.mtime = Some(pax_seconds(value)?),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pending.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse") {
                    // Recorded so the entry can be refused as sparse.
                    pending.xattrs.push((key.to_vec(), Vec::new()));
                }
            }
        }
    }
    Ok(())
}

/// Whole seconds of a PAX time (`-12.5` → -12: fractions are dropped toward zero).
fn pax_seconds(value: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(value).map_err(|_| "PAX mtime is not text".to_string())?;
    let whole = text.split('.').next().unwrap_or_default();
    whole
        .parse()
        .map_err(|_| format!("PAX mtime is not a number: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar_format::{EntryHeader, write_end, write_header, write_padding};

    pub(crate) fn entry<'a>(path: &'a [u8], kind: Kind) -> EntryHeader<'a> {
        EntryHeader {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: b"",
            device: (0, 0),
            xattrs: &[],
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
        let mut reader = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            let mut content = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = reader.read_content(&mut buf)?;
                if n == 0 {
                    break;
                }
                content.extend_from_slice(&buf[..n]);
            }
            out.push((entry, content));
        }
        Ok(out)
    }

    #[test]
    fn round_trips_every_field_including_binary_xattrs_and_long_names() {
        let long_path = format!("{}/file\nwith newline", "d".repeat(300));
        let xattrs = vec![(b"security.capability".to_vec(), vec![1, b'\n', 0, b'=', 2])];
        let mut header = entry(long_path.as_bytes(), Kind::Regular);
        header.mode = 0o6755;
        header.uid = 1 << 33;
        header.gid = 7;
        header.size = 5;
        header.mtime = -3;
        header.xattrs = &xattrs;
        let mut device = entry(b"dev/null", Kind::CharDevice);
        device.device = (1, 3);
        let link_target = "t".repeat(150);
        let mut symlink = entry(b"link", Kind::Symlink);
        symlink.link = link_target.as_bytes();

        let mut bytes = Vec::new();
        write_header(&mut bytes, &header).unwrap();
        bytes.extend_from_slice(b"hello");
        write_padding(&mut bytes, 5).unwrap();
        write_header(&mut bytes, &device).unwrap();
        write_header(&mut bytes, &symlink).unwrap();
        write_end(&mut bytes).unwrap();

        let entries = read_all(&bytes).unwrap();
        assert_eq!(entries.len(), 3);
        let (file, content) = &entries[0];
        assert_eq!(file.path, long_path.as_bytes());
        assert_eq!(file.mode, 0o6755);
        assert_eq!((file.uid, file.gid, file.mtime), (1 << 33, 7, -3));
        assert_eq!(file.xattrs, xattrs);
        assert_eq!(content, b"hello");
        assert_eq!(entries[1].0.kind, Some(EntryKind::Known(Kind::CharDevice)));
        assert_eq!(entries[1].0.device, (1, 3));
        assert_eq!(entries[2].0.link, link_target.as_bytes());
    }

    #[test]
    fn reads_gnu_long_names_from_another_writer() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        let long = format!("{}/x", "n".repeat(200));
        builder.append_data(&mut header, &long, &b"ok"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let entries = read_all(&bytes).unwrap();
        assert_eq!(entries[0].0.path, long.as_bytes());
        assert_eq!(entries[0].1, b"ok");
    }

    #[test]
    fn corrupt_checksum_is_reported_with_offset() {
        let mut bytes = Vec::new();
        write_header(&mut bytes, &entry(b"a", Kind::Regular)).unwrap();
        bytes[0] = b'b';
        let error = read_all(&bytes).unwrap_err();
        assert!(
            matches!(error, TarError::Malformed { offset: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn oversized_extension_header_is_refused_without_buffering() {
        let mut bytes = Vec::new();
        let mut pax = entry(b"PaxHeader", Kind::Regular);
        pax.size = MAX_EXTENSION + 1;
        write_header(&mut bytes, &pax).unwrap();
        bytes[156] = b'x';
        // Fix the checksum after changing the type flag.
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(&bytes[..BLOCK]);
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("exceeds"), "{error}");
    }

    #[test]
    fn truncated_content_is_an_error() {
        let mut bytes = Vec::new();
        let mut file = entry(b"f", Kind::Regular);
        file.size = 1000;
        write_header(&mut bytes, &file).unwrap();
        bytes.extend_from_slice(&[1u8; 10]);
        assert!(read_all(&bytes).is_err());
    }

    /// Appends a raw header (the size field as given) followed by `data`, padded.
    fn append_raw(
        out: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        size: u64,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(size);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        out.append(&header, data).unwrap();
    }

    fn pax_records(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
        }
        out
    }

    /// An archive of extension headers (`x` with `pax`, `L` with `gnu_name`) and then one
    /// regular file `ustar-name` whose size field says `size_field` and whose content is `data`.
    fn disagreeing(
        pax: &[(&str, &str)],
        gnu_name: Option<&str>,
        size_field: u64,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        if !pax.is_empty() {
            let records = pax_records(pax);
            append_raw(
                &mut out,
                tar::EntryType::XHeader,
                "PaxHeader",
                records.len() as u64,
                &records,
            );
        }
        if let Some(name) = gnu_name {
            let mut bytes = name.as_bytes().to_vec();
            bytes.push(0);
            append_raw(
                &mut out,
                tar::EntryType::GNULongName,
                "././@LongLink",
                bytes.len() as u64,
                &bytes,
            );
        }
        append_raw(
            &mut out,
            tar::EntryType::Regular,
            "ustar-name",
            size_field,
            data,
        );
        out.into_inner().unwrap()
    }

    #[test]
    fn pax_path_and_gnu_long_name_that_disagree_are_refused() {
        // Go's reader takes the GNU name, others the last header: one layer, two trees.
        let bytes = disagreeing(&[("path", "pax-name")], Some("gnu-name"), 2, b"ok");
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("disagree"), "{error}");
        let linked = {
            let mut out = tar::Builder::new(Vec::new());
            let records = pax_records(&[("linkpath", "pax-target")]);
            append_raw(
                &mut out,
                tar::EntryType::XHeader,
                "PaxHeader",
                records.len() as u64,
                &records,
            );
            append_raw(
                &mut out,
                tar::EntryType::GNULongLink,
                "././@LongLink",
                11,
                b"gnu-target\0",
            );
            append_raw(&mut out, tar::EntryType::Symlink, "link", 0, b"");
            out.into_inner().unwrap()
        };
        let error = read_all(&linked).unwrap_err();
        assert!(error.to_string().contains("linkpath"), "{error}");
    }

    #[test]
    fn pax_path_and_gnu_long_name_that_agree_are_read() {
        let bytes = disagreeing(&[("path", "same")], Some("same"), 2, b"ok");
        let entries = read_all(&bytes).unwrap();
        assert_eq!(entries[0].0.path, b"same");
        assert_eq!(entries[0].1, b"ok");
    }

    #[test]
    fn pax_size_that_disagrees_with_the_header_size_is_refused() {
        // The content hides a second header that only one of the two sizes would reveal.
        let mut hidden = tar::Builder::new(Vec::new());
        append_raw(&mut hidden, tar::EntryType::Regular, "smuggled", 0, b"");
        let hidden = hidden.into_inner().unwrap();
        for (pax_size, size_field) in [(0, hidden.len() as u64), (hidden.len() as u64, 7)] {
            let bytes = disagreeing(
                &[("size", &pax_size.to_string())],
                None,
                size_field,
                &hidden,
            );
            let error = read_all(&bytes).unwrap_err();
            assert!(
                error.to_string().contains("PAX size"),
                "{pax_size}/{size_field}: {error}"
            );
        }
    }

    #[test]
    fn pax_size_overrides_a_zero_or_placeholder_header_size() {
        for size_field in [0, 2, OCTAL_SIZE_MAX] {
            let bytes = disagreeing(&[("size", "2")], None, size_field, b"ok");
            let entries = read_all(&bytes).unwrap();
            assert_eq!(entries[0].1, b"ok", "size field {size_field}");
        }
    }

    #[test]
    fn pax_size_that_is_not_a_number_is_refused() {
        let bytes = disagreeing(&[("size", "-1")], None, 0, b"");
        let error = read_all(&bytes).unwrap_err();
        assert!(matches!(error, TarError::Malformed { .. }), "{error}");
    }

    #[test]
    fn base256_numbers_are_decoded() {
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(number(&[0xff; 8]).is_err());
        assert_eq!(number(b"0000755\0").unwrap(), 0o755);
        assert_eq!(number(b"  755 \0\0").unwrap(), 0o755);
    }
}

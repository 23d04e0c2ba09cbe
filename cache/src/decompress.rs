//! Decompression chosen by content, never by name: gzip, bzip2, xz, zstd, or none.
//!
//! Layers only ever use gzip, zstd or nothing; archives given to `ADD` may also be bzip2 or xz
//! (what Docker's `DecompressStream` accepts). Every decoder is pure Rust and streaming, so a
//! hostile archive is bounded by the callers' limits on what they read, never buffered whole.
//!
//! [`is_tar_archive`] is BuildKit's `isArchivePath` test: a stream is an archive when, once
//! decompressed, its first tar header parses. A file that merely carries a `.tar.gz` name, a
//! damaged compressed stream, or an empty tar is not an archive.

use std::io::{self, BufReader, Cursor, Read};

use crate::tar_reader::TarReader;

const BUFFER: usize = 256 * 1024;

/// xz dictionaries above this are refused: `xz -9` uses 64 MiB, so only crafted input needs more.
const XZ_MEMORY_LIMIT_KIB: u32 = 512 * 1024;

/// How a stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCompression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl StreamCompression {
    /// Recognizes the magic numbers at the start of `head` (at least 6 bytes when available).
    pub fn detect(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, 0x08, ..] => Self::Gzip,
            [b'B', b'Z', b'h', ..] => Self::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Self::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// Picks the decoder from the stream's magic bytes; also says which it picked.
pub fn decompress<'a>(
    input: impl Read + 'a,
) -> io::Result<(StreamCompression, Box<dyn Read + 'a>)> {
    let mut input = BufReader::with_capacity(BUFFER, input);
    let mut head = [0u8; 6];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    let head = &head[..filled];
    let compression = StreamCompression::detect(head);
    let stream = Cursor::new(head.to_vec()).chain(input);
    let reader: Box<dyn Read + 'a> = match compression {
        StreamCompression::None => Box::new(stream),
        StreamCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(stream)),
        StreamCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(stream)),
        StreamCompression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            stream,
            true,
            XZ_MEMORY_LIMIT_KIB,
        )),
        StreamCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(stream)?),
    };
    Ok((compression, reader))
}

/// True when `input`, decompressed, starts with a valid tar header (see the module docs).
pub fn is_tar_archive(input: impl Read) -> bool {
    let Ok((_, stream)) = decompress(input) else {
        return false;
    };
    matches!(TarReader::new(stream).next_entry(), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_with_one_file() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &b"hello"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn compressed(tar: &[u8], compression: StreamCompression) -> Vec<u8> {
        match compression {
            StreamCompression::None => tar.to_vec(),
            StreamCompression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(tar).unwrap();
                encoder.finish().unwrap()
            }
            StreamCompression::Bzip2 => {
                let mut encoder =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                encoder.write_all(tar).unwrap();
                encoder.finish().unwrap()
            }
            StreamCompression::Xz => {
                let mut encoder =
                    lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default())
                        .unwrap();
                encoder.write_all(tar).unwrap();
                encoder.finish().unwrap()
            }
            StreamCompression::Zstd => zstd::encode_all(tar, 1).unwrap(),
        }
    }

    const ALL: [StreamCompression; 5] = [
        StreamCompression::None,
        StreamCompression::Gzip,
        StreamCompression::Bzip2,
        StreamCompression::Xz,
        StreamCompression::Zstd,
    ];

    #[test]
    fn every_compression_is_detected_by_content_and_round_trips() {
        let tar = tar_with_one_file();
        for compression in ALL {
            let bytes = compressed(&tar, compression);
            let (detected, mut stream) = decompress(&bytes[..]).unwrap();
            assert_eq!(detected, compression);
            let mut out = Vec::new();
            stream.read_to_end(&mut out).unwrap();
            assert_eq!(out, tar, "{compression:?}");
            assert!(is_tar_archive(&bytes[..]), "{compression:?}");
        }
    }

    #[test]
    fn files_that_only_look_like_archives_are_not_archives() {
        let not_tar = b"just some text that is longer than one tar block? no.".to_vec();
        assert!(!is_tar_archive(&not_tar[..]), "plain text");
        for compression in ALL {
            let bytes = compressed(&not_tar, compression);
            assert!(!is_tar_archive(&bytes[..]), "{compression:?} of text");
        }
        let mut fake_gzip = vec![0x1f, 0x8b, 0x08];
        fake_gzip.extend_from_slice(b"named .tar.gz but is not one");
        assert!(!is_tar_archive(&fake_gzip[..]), "gzip magic, garbage after");
        assert!(!is_tar_archive(&[0u8; 1024][..]), "an empty tar");
        assert!(!is_tar_archive(&[][..]), "an empty file");
    }
}

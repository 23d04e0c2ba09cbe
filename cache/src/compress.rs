//! Layer compression: none, gzip (parallel, pigz-style) or zstd (multithreaded).
//!
//! Output must be a pure function of (input bytes, algorithm, level), never of thread count,
//! write sizes or timing, because layer digests are cache keys:
//! - gzip splits the input at fixed `GZIP_CHUNK` offsets; each chunk becomes a raw deflate
//!   segment primed with the previous chunk's last 32 KiB as dictionary and ended with a sync
//!   flush (the last one with a final block), and the segments are joined under one gzip header
//!   (mtime 0, no name) and trailer. Chunks are compressed in batches on the rayon pool, so
//!   memory stays at a few chunks per thread whatever the layer size.
//! - zstd always runs in multithreaded mode with at least one worker: zstd's job splitting then
//!   depends on the parameters only, not on the worker count.

use std::io::{self, Write};

use flate2::{Compress, Crc, FlushCompress, Status};
use rayon::prelude::*;

/// Uncompressed bytes per parallel gzip chunk.
const GZIP_CHUNK: usize = 1 << 20;
/// Deflate's window: how much of the previous chunk primes the next one.
const DICTIONARY: usize = 32 * 1024;
/// Fixed gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    /// Level 0–9.
    Gzip {
        level: u32,
    },
    /// Level 1–22 (negative levels are zstd's fast modes, down to -7).
    Zstd {
        level: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {algorithm} compression level {level} (valid: {valid})")]
pub struct CompressionLevelError {
    pub algorithm: &'static str,
    pub level: i64,
    pub valid: &'static str,
}

impl Compression {
    /// gzip at zlib's default level, as `docker build` produces.
    pub const GZIP_DEFAULT: Self = Self::Gzip { level: 6 };
    /// zstd at its default level.
    pub const ZSTD_DEFAULT: Self = Self::Zstd { level: 3 };

    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn validate(self) -> Result<Self, CompressionLevelError> {
        match self {
            Self::Gzip { level } if level > 9 => Err(CompressionLevelError {
                algorithm: "gzip",
                level: i64::from(level),
                valid: "0-9",
            }),
            Self::Zstd { level } if !(-7..=22).contains(&level) || level == 0 => {
                Err(CompressionLevelError {
                    algorithm: "zstd",
                    level: i64::from(level),
                    valid: "-7..-1 or 1-22",
                })
            }
            _ => Ok(self),
        }
    }
}

/// A compressing writer; [`Compressor::finish`] writes trailers and returns the sink.
pub(crate) enum Compressor<W: Write> {
    Plain(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> std::fmt::Debug for Compressor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Compressor::Plain",
            Self::Gzip(_) => "Compressor::Gzip",
            Self::Zstd(_) => "Compressor::Zstd",
        })
    }
}

impl<W: Write> Compressor<W> {
    /// `threads` is the zstd worker count (gzip uses the rayon pool); 0 means one per core.
    pub(crate) fn new(sink: W, compression: Compression, threads: usize) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Self::Plain(sink),
            Compression::Gzip { level } => Self::Gzip(ParallelGzip::new(sink, level)),
            Compression::Zstd { level } => {
                let workers = match threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                };
                let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
                encoder.include_checksum(true)?;
                encoder.multithread(u32::try_from(workers).unwrap_or(u32::MAX))?;
                Self::Zstd(encoder)
            }
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Self::Plain(mut sink) => {
                sink.flush()?;
                Ok(sink)
            }
            Self::Gzip(gzip) => gzip.finish(),
            Self::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(sink) => sink.write(buf),
            Self::Gzip(gzip) => gzip.write(buf),
            Self::Zstd(encoder) => encoder.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing a compressor mid-stream would change its output; data is pushed at finish.
        Ok(())
    }
}

/// pigz-style gzip: fixed-size chunks compressed in parallel into one gzip member.
pub(crate) struct ParallelGzip<W> {
    sink: W,
    level: u32,
    /// Full chunks waiting for a batch.
    full: Vec<Vec<u8>>,
    /// The chunk being filled.
    current: Vec<u8>,
    /// Tail of the chunk before `full[0]` (dictionary for it).
    previous_tail: Vec<u8>,
    crc: Crc,
    started: bool,
}

impl<W: Write> ParallelGzip<W> {
    fn new(sink: W, level: u32) -> Self {
        Self {
            sink,
            level,
            full: Vec::new(),
            current: Vec::with_capacity(GZIP_CHUNK),
            previous_tail: Vec::new(),
            crc: Crc::new(),
            started: false,
        }
    }

    fn batch_len() -> usize {
        2 * rayon::current_num_threads().max(1)
    }

    /// Compresses the queued chunks; the last one closes the stream when `last_is_final`.
    fn compress_batch(&mut self, last_is_final: bool) -> io::Result<()> {
        if !self.started {
            self.sink.write_all(&GZIP_HEADER)?;
            self.started = true;
        }
        let chunks = std::mem::take(&mut self.full);
        let count = chunks.len();
        let level = self.level;
        let previous_tail = std::mem::take(&mut self.previous_tail);
        let segments: Vec<io::Result<(Vec<u8>, Crc)>> = (0..count)
            .into_par_iter()
            .map(|index| {
                let dictionary = match index.checked_sub(1) {
                    Some(before) => tail(&chunks[before]),
                    None => &previous_tail,
                };
                let flush = if last_is_final && index + 1 == count {
                    FlushCompress::Finish
                } else {
                    FlushCompress::Sync
                };
                let data = &chunks[index];
                let mut crc = Crc::new();
                crc.update(data);
                Ok((deflate_segment(data, dictionary, level, flush)?, crc))
            })
            .collect();
        for segment in segments {
            let (bytes, crc) = segment?;
            self.sink.write_all(&bytes)?;
            self.crc.combine(&crc);
        }
        if let Some(last) = chunks.last() {
            self.previous_tail = tail(last).to_vec();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        let last = std::mem::take(&mut self.current);
        self.full.push(last);
        self.compress_batch(true)?;
        self.sink.write_all(&self.crc.sum().to_le_bytes())?;
        self.sink.write_all(&self.crc.amount().to_le_bytes())?;
        self.sink.flush()?;
        Ok(self.sink)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK - self.current.len();
        let taken = buf.len().min(room);
        self.current.extend_from_slice(&buf[..taken]);
        if self.current.len() == GZIP_CHUNK {
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(GZIP_CHUNK));
            self.full.push(full);
            if self.full.len() >= Self::batch_len() {
                self.compress_batch(false)?;
            }
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tail(chunk: &[u8]) -> &[u8] {
    &chunk[chunk.len().saturating_sub(DICTIONARY)..]
}

/// Raw deflate of `data`, primed with `dictionary`, ended by `flush` (Sync or Finish).
fn deflate_segment(
    data: &[u8],
    dictionary: &[u8],
    level: u32,
    flush: FlushCompress,
) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(flate2::Compression::new(level), false);
    if !dictionary.is_empty() {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
        let input = data.get(consumed..).unwrap_or_default();
        let status = compress
            .compress_vec(input, &mut out, flush)
            .map_err(io::Error::other)?;
        let all_consumed = compress.total_in() == data.len() as u64;
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // The flush is complete once a call leaves output space unused.
            _ => all_consumed && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(input: &[u8], compression: Compression, write_size: usize) -> Vec<u8> {
        let mut compressor = Compressor::new(Vec::new(), compression, 0).unwrap();
        for piece in input.chunks(write_size.max(1)) {
            compressor.write_all(piece).unwrap();
        }
        compressor.finish().unwrap()
    }

    /// Compressible but not trivial: repeated text with a counter.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("line {i} of some layer content\n").as_bytes());
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                % 10_000;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn gzip_round_trips_across_chunk_boundaries() {
        for len in [
            0,
            1,
            GZIP_CHUNK - 1,
            GZIP_CHUNK,
            GZIP_CHUNK + 1,
            5 * GZIP_CHUNK + 77,
        ] {
            let input = sample(len);
            let compressed = compress(&input, Compression::GZIP_DEFAULT, 100_003);
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, input, "length {len}");
        }
    }

    #[test]
    fn gzip_output_does_not_depend_on_write_sizes_or_thread_count() {
        let input = sample(3 * GZIP_CHUNK + 12345);
        let reference = compress(&input, Compression::GZIP_DEFAULT, 1 << 16);
        assert_eq!(compress(&input, Compression::GZIP_DEFAULT, 7777), reference);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let serial = single.install(|| compress(&input, Compression::GZIP_DEFAULT, 1 << 20));
        assert_eq!(serial, reference);
    }

    #[test]
    fn gzip_header_is_fixed() {
        let compressed = compress(b"x", Compression::Gzip { level: 9 }, 1);
        assert_eq!(compressed[..10], GZIP_HEADER);
    }

    #[test]
    fn zstd_round_trips_and_does_not_depend_on_worker_count() {
        let input = sample(6 << 20);
        let outputs: Vec<Vec<u8>> = [1, 2, 4]
            .into_iter()
            .map(|threads| {
                let mut compressor =
                    Compressor::new(Vec::new(), Compression::ZSTD_DEFAULT, threads).unwrap();
                compressor.write_all(&input).unwrap();
                compressor.finish().unwrap()
            })
            .collect();
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);
        assert_eq!(zstd::decode_all(&outputs[0][..]).unwrap(), input);
    }

    #[test]
    fn invalid_levels_are_rejected_with_valid_range() {
        let error = Compression::Gzip { level: 10 }.validate().unwrap_err();
        assert_eq!(error.valid, "0-9");
        assert!(Compression::Zstd { level: 23 }.validate().is_err());
        assert!(Compression::Zstd { level: 0 }.validate().is_err());
        assert!(Compression::Zstd { level: 19 }.validate().is_ok());
        assert!(Compression::None.validate().is_ok());
    }
}

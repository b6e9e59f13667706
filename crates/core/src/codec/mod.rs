//! How a backup's bytes are encoded: the file suffix, the encoder the engine writes through and
//! the decoder restore and verify read through. Gzip (parallel members, readable by `zcat`)
//! is the format the original wrote and the only one so far; zstd and encryption plug in
//! here as more variants, and the rest of the host asks the format instead of assuming one.

pub mod gzip;

use std::io::{Read, Write};
use std::sync::Arc;

pub use gzip::{ParallelGzip, Progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain SQL dump in gzip members (`.sql.gz`).
    Gzip,
}

/// Every format this build reads, for listings.
pub const FORMATS: &[Format] = &[Format::Gzip];

impl Format {
    /// The end of every backup name of this format.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Gzip => ".sql.gz",
        }
    }

    /// The short name contract 0.2 gives the policy.
    pub fn id(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
        }
    }

    /// The format a backup name says it is in.
    pub fn of_name(name: &str) -> Option<Format> {
        FORMATS.iter().copied().find(|f| name.ends_with(f.suffix()))
    }

    /// An encoder writing into `sink` with `threads` compressing in parallel.
    pub fn encoder<W: Write + Send + 'static>(self, sink: W, level: u32, threads: usize, progress: Arc<Progress>) -> Encoder<W> {
        match self {
            Format::Gzip => Encoder::Gzip(ParallelGzip::new(sink, level, threads, progress)),
        }
    }

    /// The plain dump read from an encoded stream.
    pub fn decoder<'a, R: Read + 'a>(self, encoded: R) -> Box<dyn Read + 'a> {
        match self {
            // Multi: the encoder writes one gzip member per chunk.
            Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(256 * 1024, encoded))),
        }
    }
}

/// An encoder of one of the formats: a `Write` that is finished (flushing everything into the
/// sink and handing it back) or abandoned (a failed run).
pub enum Encoder<W: Write + Send + 'static> {
    Gzip(ParallelGzip<W>),
}

impl<W: Write + Send + 'static> Encoder<W> {
    /// Ends the stream; returns the sink with everything written into it.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Gzip(g) => g.finish(),
        }
    }

    /// Stops without finishing; returns the sink's first error, if it had one.
    pub fn abandon(self) -> Option<std::io::Error> {
        match self {
            Encoder::Gzip(g) => g.abandon(),
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Gzip(g) => g.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(g) => g.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_its_format() {
        assert_eq!(Format::of_name("db_backup_20251104_013000.sql.gz"), Some(Format::Gzip));
        for other in ["db.sql", "db.sql.gz.partial", "db.sql.zst", "", "gz"] {
            assert_eq!(Format::of_name(other), None, "{other}");
        }
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads() {
        let data: Vec<u8> = (0..3_000_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut enc = Format::Gzip.encoder(Vec::new(), 6, 2, Arc::default());
        enc.write_all(&data).unwrap();
        let encoded = enc.finish().unwrap();
        assert!(encoded.len() < data.len() / 4, "compressed {} of {}", encoded.len(), data.len());
        let mut back = Vec::new();
        Format::Gzip.decoder(&encoded[..]).read_to_end(&mut back).unwrap();
        assert!(back == data, "round trip differs");
    }
}

//! How a backup's bytes are encoded: the file suffix, the encoder the engine writes through and
//! the decoder restore and verify read through. A format is a compression (gzip, the original's;
//! zstd) and, optionally, age encryption on top of it (`.age`). The rest of the host asks the
//! format instead of assuming one.

pub mod gzip;
pub mod seal;
pub mod zstd;

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use gzip::{ParallelGzip, Progress};
pub use seal::{DecodeError, Keys, Recipients};

/// The compression of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One gzip member (older backups: several), readable by `zcat`.
    Gzip,
    /// One zstd frame, readable by `zstd -d`.
    Zstd,
}

impl Codec {
    /// The short name contract 0.2 gives the policy and `EF__BACKUP_FORMAT` takes.
    pub fn id(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    pub fn of_id(id: &str) -> Option<Codec> {
        [Codec::Gzip, Codec::Zstd].into_iter().find(|c| c.id() == id)
    }
}

/// How a backup file is encoded, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub codec: Codec,
    /// Encrypted with age (to the recipients configured when it was written).
    pub encrypted: bool,
}

/// Every format this build reads, for listings.
pub const FORMATS: &[Format] = &[Format::GZIP, Format::ZSTD, Format::GZIP.sealed(), Format::ZSTD.sealed()];

/// What the encoder needs besides the sink.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    /// The codec's own level (gzip 1-9, zstd 1-19).
    pub level: u32,
    /// Threads compressing in parallel.
    pub threads: usize,
    /// Who can decrypt; empty for no encryption.
    pub recipients: Recipients,
}

impl Format {
    /// The original plugin's format: a plain SQL dump in gzip (`.sql.gz`).
    pub const GZIP: Format = Format { codec: Codec::Gzip, encrypted: false };
    pub const ZSTD: Format = Format { codec: Codec::Zstd, encrypted: false };

    /// The same compression, encrypted with age.
    pub const fn sealed(self) -> Format {
        Format { codec: self.codec, encrypted: true }
    }

    /// The end of every backup name of this format.
    pub fn suffix(self) -> &'static str {
        match (self.codec, self.encrypted) {
            (Codec::Gzip, false) => ".sql.gz",
            (Codec::Zstd, false) => ".sql.zst",
            (Codec::Gzip, true) => ".sql.gz.age",
            (Codec::Zstd, true) => ".sql.zst.age",
        }
    }

    /// The compression's short name (contract 0.2's `format.codec`).
    pub fn id(self) -> &'static str {
        self.codec.id()
    }

    /// How `list` shows it: `gzip`, `zstd+age`.
    pub fn describe(self) -> String {
        format!("{}{}", self.codec.id(), if self.encrypted { "+age" } else { "" })
    }

    /// The format a backup name says it is in.
    pub fn of_name(name: &str) -> Option<Format> {
        FORMATS.iter().copied().find(|f| name.ends_with(f.suffix()))
    }

    /// An encoder writing into `sink`. Encrypted formats seal after compressing, before a byte
    /// reaches the sink: no plaintext is ever written.
    pub fn encoder<W: Write + Send + 'static>(self, sink: W, settings: &EncodeSettings, progress: Arc<Progress>) -> io::Result<Encoder<W>> {
        if self.encrypted && settings.recipients.is_empty() {
            return Err(io::Error::other("an encrypted format needs at least one age recipient"));
        }
        let sealed = if self.encrypted { seal::Sealed::age(sink, &settings.recipients)? } else { seal::Sealed::Plain(sink) };
        Ok(match self.codec {
            Codec::Gzip => Encoder::Gzip(ParallelGzip::new(sealed, settings.level, settings.threads, progress)),
            Codec::Zstd => Encoder::Zstd(zstd::ZstdEncoder::new(sealed, settings.level, settings.threads, progress)?),
        })
    }

    /// The plain dump read from an encoded stream; encrypted formats need `keys`.
    pub fn decoder<'a, R: Read + 'a>(self, encoded: R, keys: &Keys) -> Result<Box<dyn Read + 'a>, DecodeError> {
        let plain: Box<dyn Read + 'a> = if self.encrypted { keys.open(encoded)? } else { Box::new(encoded) };
        let buffered = io::BufReader::with_capacity(256 * 1024, plain);
        Ok(match self.codec {
            // Multi: backups written before the single-member encoder hold one member per chunk.
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
            Codec::Zstd => Box::new(::zstd::stream::read::Decoder::with_buffer(buffered).map_err(DecodeError::Io)?),
        })
    }
}

/// An encoder of one of the formats: a `Write` that is finished (flushing everything into the
/// sink and handing it back) or abandoned (a failed run).
pub enum Encoder<W: Write + Send + 'static> {
    Gzip(ParallelGzip<seal::Sealed<W>>),
    Zstd(zstd::ZstdEncoder<seal::Sealed<W>>),
}

impl<W: Write + Send + 'static> Encoder<W> {
    /// Ends the stream (and the encryption); returns the sink with everything written into it.
    pub fn finish(self) -> io::Result<W> {
        let sealed = match self {
            Encoder::Gzip(g) => g.finish()?,
            Encoder::Zstd(z) => z.finish()?,
        };
        sealed.finish()
    }

    /// Stops without finishing; returns the sink's first error, if it had one.
    pub fn abandon(self) -> Option<io::Error> {
        match self {
            Encoder::Gzip(g) => g.abandon(),
            Encoder::Zstd(z) => z.abandon(),
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(g) => g.flush(),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

/// Counts what passes into a sink (for progress display).
pub(crate) struct Counting<W> {
    pub inner: W,
    pub progress: Arc<Progress>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: u32, recipients: Recipients) -> EncodeSettings {
        EncodeSettings { level, threads: 2, recipients }
    }

    #[test]
    fn a_name_says_its_format() {
        let cases = [
            ("db_backup_20251104_013000.sql.gz", Some(Format::GZIP)),
            ("db_backup_20251104_013000.sql.zst", Some(Format::ZSTD)),
            ("db_backup_20251104_013000.sql.gz.age", Some(Format::GZIP.sealed())),
            ("db_backup_20251104_013000.sql.zst.age", Some(Format::ZSTD.sealed())),
        ];
        for (name, format) in cases {
            assert_eq!(Format::of_name(name), format, "{name}");
            assert!(name.ends_with(format.unwrap().suffix()));
        }
        for other in ["db.sql", "db.sql.gz.partial", "db.sql.age", "db.zst", "", "gz", "db.sql.gz.age.partial"] {
            assert_eq!(Format::of_name(other), None, "{other}");
        }
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    fn round_trip(format: Format, recipients: Recipients, keys: &Keys) -> Vec<u8> {
        let data = data();
        let level = if format.codec == Codec::Zstd { 3 } else { 6 };
        let mut enc = format.encoder(Vec::new(), &settings(level, recipients), Arc::default()).unwrap();
        enc.write_all(&data).unwrap();
        let encoded = enc.finish().unwrap();
        assert!(encoded.len() < data.len() / 4, "{format:?}: compressed {} of {}", encoded.len(), data.len());
        let mut back = Vec::new();
        format.decoder(&encoded[..], keys).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data, "{format:?}: round trip differs");
        encoded
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads() {
        for format in [Format::GZIP, Format::ZSTD] {
            round_trip(format, Recipients::default(), &Keys::none());
        }
    }

    #[test]
    fn sealed_formats_round_trip_and_need_the_key() {
        let (recipients, keys) = seal::tests::key_pair();
        let (_, other_keys) = seal::tests::key_pair();
        for format in [Format::GZIP.sealed(), Format::ZSTD.sealed()] {
            let encoded = round_trip(format, recipients.clone(), &keys);
            assert!(encoded.starts_with(b"age-encryption.org/v1\n"), "{format:?}: an age file");
            // The compressed stream never shows through (it is deterministic, so compare).
            let unsealed = Format { encrypted: false, ..format };
            let mut enc = unsealed
                .encoder(Vec::new(), &settings(if format.codec == Codec::Zstd { 3 } else { 6 }, Recipients::default()), Arc::default())
                .unwrap();
            enc.write_all(&data()).unwrap();
            let plain = enc.finish().unwrap();
            assert!(!encoded.windows(48).any(|w| w == &plain[100..148]), "{format:?}: compressed bytes appear in the age file");
            let without = format.decoder(&encoded[..], &Keys::none()).err();
            assert!(matches!(without, Some(DecodeError::NoIdentity)), "{format:?}: without a key: {without:?}");
            let other = format.decoder(&encoded[..], &other_keys).err();
            assert!(matches!(other, Some(DecodeError::WrongIdentity { .. })), "{format:?}: with another key: {other:?}");
        }
    }

    #[test]
    fn an_encrypted_format_without_recipients_is_refused() {
        let err = Format::GZIP.sealed().encoder(Vec::new(), &settings(6, Recipients::default()), Arc::default()).err().unwrap();
        assert!(err.to_string().contains("recipient"), "{err}");
    }
}

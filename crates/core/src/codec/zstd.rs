//! zstd: one frame written by libzstd's own worker threads (the frame is the same standard
//! format whatever the thread count; `zstd -d` reads it), with the content checksum on so a
//! damaged file is found by decoding alone.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Counting, Progress};

pub struct ZstdEncoder<W: Write> {
    inner: zstd::stream::write::Encoder<'static, Counting<W>>,
    progress: Arc<Progress>,
}

impl<W: Write> ZstdEncoder<W> {
    pub fn new(sink: W, level: u32, threads: usize, progress: Arc<Progress>) -> io::Result<Self> {
        let level = i32::try_from(level).map_err(io::Error::other)?;
        let mut inner = zstd::stream::write::Encoder::new(Counting { inner: sink, progress: Arc::clone(&progress) }, level)?;
        inner.include_checksum(true)?;
        // libzstd's workers compress while this thread keeps reading pg_dump; with one thread
        // requested it still moves compression off the reading thread.
        inner.multithread(u32::try_from(threads.max(1)).unwrap_or(1))?;
        Ok(ZstdEncoder { inner, progress })
    }

    pub fn finish(self) -> io::Result<W> {
        Ok(self.inner.finish()?.inner)
    }

    /// The sink is dropped with the encoder; its own error already reached the writer.
    pub fn abandon(self) -> Option<io::Error> {
        None
    }
}

impl<W: Write> Write for ZstdEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // A flush would end a zstd block early; the real flush is `finish`.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn one_checksummed_frame_at_every_thread_count() {
        let data: Vec<u8> = (0..2_000_000u32).flat_map(|i| format!("{i}\trow {}\n", i % 977).into_bytes()).collect();
        for threads in [1, 2, 4] {
            let progress = Arc::new(Progress::default());
            let mut z = ZstdEncoder::new(Vec::new(), 3, threads, Arc::clone(&progress)).unwrap();
            z.write_all(&data).unwrap();
            let out = z.finish().unwrap();
            assert_eq!(progress.bytes_in.load(Ordering::Relaxed), data.len() as u64);
            assert_eq!(progress.bytes_out.load(Ordering::Relaxed), out.len() as u64);
            let mut back = Vec::new();
            zstd::stream::read::Decoder::new(&out[..]).unwrap().single_frame().read_to_end(&mut back).unwrap();
            assert!(back == data, "threads {threads}: one frame holds everything");
            // Frame header descriptor: bit 2 is the content checksum flag.
            assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
            assert_ne!(out[4] & 0b100, 0, "content checksum on");
            // A flipped byte in the middle is found by decoding.
            let mut bad = out.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x40;
            let mut sink = Vec::new();
            assert!(zstd::stream::read::Decoder::new(&bad[..]).unwrap().read_to_end(&mut sink).is_err(), "threads {threads}");
        }
    }
}

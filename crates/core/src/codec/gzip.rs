//! Parallel gzip the way pigz does it: the input is cut into chunks that are deflated on all
//! cores, each primed with the last 32 KiB of the chunk before it as its dictionary and ended
//! with a sync flush (a byte boundary, no final block), and written in order between one gzip
//! header and one trailer whose CRC-32 is the chunks' CRCs combined. The output is a single
//! standard gzip member (RFC 1952) that every tool reads, and because each chunk may refer back
//! into the previous one, nothing of the cross-chunk redundancy is lost: the size is that of
//! one deflate stream at the same level, within a few bytes per chunk.
//!
//! Backups written before this were several independent members; the decoder still reads
//! those (`flate2::read::MultiGzDecoder`).
//!
//! Memory is bounded by the number of chunks in flight, whatever the input size.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress};

use crate::util::lock;

/// Input bytes per chunk. Each chunk sees the previous one's last [`WINDOW`] bytes, so the size
/// barely depends on it; it sets the memory in flight and the per-chunk overhead (a sync flush
/// is 4-5 bytes).
pub const CHUNK_SIZE: usize = 1 << 20;

/// Deflate's window: how far back a match may reach, and so the dictionary each chunk gets.
pub const WINDOW: usize = 32 * 1024;

/// The gzip header: deflate, no name or time (a backup's time is in its name), Unix.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
/// A final, empty, fixed-Huffman deflate block: what ends the stream after the last sync flush
/// (zlib and pigz end theirs the same way).
const LAST_BLOCK: [u8; 2] = [0x03, 0x00];

/// Counters readable while the compression runs (for progress display).
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Limits chunks in flight (queued, compressing, or waiting to be written in order).
struct Permits {
    free: Mutex<usize>,
    cond: Condvar,
}

impl Permits {
    fn acquire(&self) {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.cond.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }
    fn release(&self) {
        *lock(&self.free) += 1;
        self.cond.notify_one();
    }
}

/// A chunk to deflate: its place in the stream, the bytes before it (at most [`WINDOW`]) and
/// its own bytes.
type Job = (u64, Vec<u8>, Vec<u8>);

/// A deflated chunk: the deflate bytes, the CRC-32 of its input and the input's length.
type Deflated = (Vec<u8>, crc32fast::Hasher);

/// A `Write` that gzips into `sink` on `threads` threads. Call [`ParallelGzip::finish`] to
/// flush and get the sink back; dropping it without `finish` abandons the output.
pub struct ParallelGzip<W: Write + Send + 'static> {
    buf: Vec<u8>,
    /// The end of the chunk submitted last: the next chunk's dictionary.
    dict: Vec<u8>,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    permits: Arc<Permits>,
    failed: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// Raw deflate of `data` primed with `dict`, ended by a sync flush: a run of non-final blocks
/// that ends on a byte boundary, so the next chunk's blocks can follow it directly.
fn deflate_chunk(level: u32, dict: &[u8], data: &[u8]) -> io::Result<Deflated> {
    let mut z = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        z.set_dictionary(dict).map_err(|e| io::Error::other(format!("deflate dictionary: {e}")))?;
    }
    let mut out = Vec::with_capacity(data.len() / 3 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = z.total_in() as usize;
        z.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync).map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        // The flush is complete when all input is in and deflate left output room unused.
        if z.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok((out, crc))
}

impl<W: Write + Send + 'static> ParallelGzip<W> {
    pub fn new(sink: W, level: u32, threads: usize, progress: Arc<Progress>) -> Self {
        let threads = threads.max(1);
        let in_flight = 2 * threads + 2;
        let permits = Arc::new(Permits { free: Mutex::new(in_flight), cond: Condvar::new() });
        let failed = Arc::new(AtomicBool::new(false));
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<(u64, io::Result<Deflated>)>();
        let workers = (0..threads)
            .map(|i| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || loop {
                        // Hold the lock only to take a job, not while compressing.
                        let job = lock(&rx).recv();
                        let Ok((seq, dict, data)) = job else { return };
                        if tx.send((seq, deflate_chunk(level, &dict, &data))).is_err() {
                            return;
                        }
                    })
                    .expect("spawn a gzip worker thread")
            })
            .collect();
        drop(done_tx);
        let writer = {
            let permits = Arc::clone(&permits);
            let failed = Arc::clone(&failed);
            let progress = Arc::clone(&progress);
            std::thread::Builder::new()
                .name("gzip-writer".into())
                .spawn(move || write_in_order(sink, done_rx, &permits, &failed, &progress))
                .expect("spawn the gzip writer thread")
        };
        ParallelGzip {
            buf: Vec::with_capacity(CHUNK_SIZE),
            dict: Vec::new(),
            seq: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
            permits,
            failed,
            progress,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            // The writer stopped; its error is reported by `finish`.
            return Err(io::Error::other("the compressed output could not be written"));
        }
        self.permits.acquire();
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        let next_dict = data[data.len().saturating_sub(WINDOW)..].to_vec();
        let dict = std::mem::replace(&mut self.dict, next_dict);
        let jobs = self.jobs.as_ref().expect("jobs open until finish");
        jobs.send((self.seq, dict, data)).map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.seq += 1;
        Ok(())
    }

    /// Stops without writing what is buffered, waits for the threads, and drops the sink (so a
    /// partial file is gone when this returns). Returns the sink's error, if writing failed:
    /// that is the real cause when a `write` to this compressor failed.
    pub fn abandon(mut self) -> Option<io::Error> {
        self.failed.store(true, Ordering::Release);
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take()?.join() {
            Ok(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// Compresses what is buffered, waits for every chunk to be written, returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let flushed = if !self.buf.is_empty() { self.submit() } else { Ok(()) };
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let written = match self.writer.take().expect("writer present").join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the gzip writer thread panicked")),
        };
        // The writer's error (ENOSPC, ...) is the cause; a failed submit only follows from it.
        let sink = written?;
        flushed?;
        Ok(sink)
    }
}

impl<W: Write + Send + 'static> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.progress.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if self.buf.len() == CHUNK_SIZE {
            self.submit()?;
        }
        Ok(n)
    }

    /// Chunks are only cut at `CHUNK_SIZE`; the real flush is `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Abandoned (error path): close the queue so threads exit; they are not joined.
        self.jobs = None;
        self.failed.store(true, Ordering::Release);
    }
}

fn write_in_order<W: Write>(
    mut sink: W,
    done: Receiver<(u64, io::Result<Deflated>)>,
    permits: &Permits,
    failed: &AtomicBool,
    progress: &Progress,
) -> io::Result<W> {
    let mut pending: BTreeMap<u64, io::Result<Deflated>> = BTreeMap::new();
    let mut next = 0u64;
    let mut error: Option<io::Error> = None;
    let mut crc = crc32fast::Hasher::new();
    let put = |sink: &mut W, bytes: &[u8]| -> io::Result<()> {
        sink.write_all(bytes)?;
        progress.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    if let Err(e) = put(&mut sink, &HEADER) {
        failed.store(true, Ordering::Release);
        error = Some(e);
    }
    for (seq, chunk) in done {
        pending.insert(seq, chunk);
        while let Some(chunk) = pending.remove(&next) {
            next += 1;
            if error.is_none() {
                let result = chunk.and_then(|(deflated, chunk_crc)| {
                    put(&mut sink, &deflated)?;
                    crc.combine(&chunk_crc);
                    Ok(())
                });
                if let Err(e) = result {
                    failed.store(true, Ordering::Release);
                    error = Some(e);
                }
            }
            // Keep releasing after an error so the producer never blocks forever.
            permits.release();
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    // The trailer: CRC-32 and length (mod 2^32) of the whole input, little-endian.
    let mut trailer = [0u8; 10];
    trailer[..2].copy_from_slice(&LAST_BLOCK);
    trailer[2..6].copy_from_slice(&crc.clone().finalize().to_le_bytes());
    trailer[6..].copy_from_slice(&(crc.total_len() as u32).to_le_bytes());
    put(&mut sink, &trailer)?;
    sink.flush()?;
    Ok(sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: numbered SQL-ish lines.
        let mut v = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("{i}\tname-{}\t{}\t2025-11-04 01:30:00+08\n", i * 7919 % 1000, i % 97).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    #[test]
    fn round_trips_at_every_size_and_thread_count() {
        for len in [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * CHUNK_SIZE + 123] {
            for threads in [1, 2, 4] {
                let data = sample(len);
                let progress = Arc::new(Progress::default());
                let mut gz = ParallelGzip::new(Vec::new(), 6, threads, Arc::clone(&progress));
                // Uneven writes, to cross chunk boundaries mid-buffer.
                for piece in data.chunks(77_777) {
                    gz.write_all(piece).unwrap();
                }
                let out = gz.finish().unwrap();
                assert_eq!(gunzip(&out), data, "len {len}, threads {threads}");
                assert_eq!(progress.bytes_in.load(Ordering::Relaxed), len as u64);
                assert_eq!(progress.bytes_out.load(Ordering::Relaxed), out.len() as u64);
                assert_eq!(&out[..2], &[0x1f, 0x8b], "gzip magic");
            }
        }
    }

    #[test]
    fn the_output_is_one_gzip_member_at_every_level() {
        let data = sample(3 * CHUNK_SIZE + 4321);
        for level in 1..=9 {
            let mut gz = ParallelGzip::new(Vec::new(), level, 2, Arc::default());
            gz.write_all(&data).unwrap();
            let out = gz.finish().unwrap();
            // A single-member decoder reads everything only if there is one member; it also
            // checks the combined CRC-32 and the length in the trailer.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
            assert!(back == data, "level {level}: one member holds the whole input");
            assert_eq!(&out[out.len() - 4..], &(data.len() as u32).to_le_bytes(), "ISIZE");
        }
    }

    #[test]
    fn an_empty_input_is_an_empty_gzip_file() {
        let out = ParallelGzip::new(Vec::new(), 6, 2, Arc::default()).finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert!(back.is_empty());
        assert_eq!(out.len(), 20, "header, an empty final block, trailer: {out:?}");
    }

    /// Data that repeats at a distance shorter than the window but across chunk boundaries:
    /// independent members (the old encoder) cannot see the repeat, primed chunks do, so the
    /// output is as small as one deflate stream of the whole input.
    #[test]
    fn chunks_see_the_previous_chunk() {
        // 20 KiB of incompressible bytes, repeated: every repeat is within the window.
        let mut x = 0x2545_f491_u32;
        let block: Vec<u8> = (0..20 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let data: Vec<u8> = block.iter().copied().cycle().take(4 * CHUNK_SIZE).collect();
        let mut gz = ParallelGzip::new(Vec::new(), 6, 2, Arc::default());
        gz.write_all(&data).unwrap();
        let parallel = gz.finish().unwrap();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        one.write_all(&data).unwrap();
        let one = one.finish().unwrap();
        let mut independent = 0;
        for chunk in data.chunks(CHUNK_SIZE) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
            e.write_all(chunk).unwrap();
            independent += e.finish().unwrap().len();
        }
        assert!(
            parallel.len() <= one.len() + 64 && parallel.len() + 4 * block.len() / 2 < independent,
            "parallel {} bytes, one stream {}, independent members {independent}",
            parallel.len(),
            one.len()
        );
    }

    #[test]
    fn older_multi_member_files_still_decode() {
        let mut multi = Vec::new();
        for part in [&b"first member\n"[..], b"second member\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(4));
            e.write_all(part).unwrap();
            multi.extend(e.finish().unwrap());
        }
        let mut back = Vec::new();
        crate::codec::Format::GZIP.decoder(&multi[..], &crate::codec::Keys::none()).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, b"first member\nsecond member\n");
    }

    struct FailAfter(usize);
    impl Write for FailAfter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 < b.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn finish_reports_the_sink_error() {
        let mut gz = ParallelGzip::new(FailAfter(10), 1, 2, Arc::default());
        gz.write_all(b"a little data that ends up in one chunk").unwrap();
        let err = gz.finish().err().expect("finish reports the sink error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }

    #[test]
    fn sink_errors_surface_and_never_deadlock() {
        let data = sample(20 * CHUNK_SIZE);
        let mut gz = ParallelGzip::new(FailAfter(100_000), 1, 2, Arc::default());
        let mut write_err = None;
        for piece in data.chunks(64 * 1024) {
            if let Err(e) = gz.write_all(piece) {
                write_err = Some(e);
                break;
            }
        }
        assert!(write_err.is_some(), "the producer must learn about the failure before the end");
        let err = gz.abandon().expect("abandon reports the sink error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}

//! Parallel gzip: the input is cut into chunks that are compressed on all cores as independent
//! gzip members and written in order. Concatenated members are a standard gzip file (RFC 1952
//! §2.2): `gunzip`, `zcat` and `flate2::read::MultiGzDecoder` read it as one stream.
//!
//! Memory is bounded by the number of chunks in flight, whatever the input size.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::util::lock;

/// Input bytes per gzip member. Larger chunks compress slightly better (each member starts
/// with an empty dictionary) and cost memory; 1 MiB loses well under 1% against one stream.
pub const CHUNK_SIZE: usize = 1 << 20;

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

type Job = (u64, Vec<u8>);

/// A `Write` that gzips into `sink` on `threads` threads. Call [`ParallelGzip::finish`] to
/// flush and get the sink back; dropping it without `finish` abandons the output.
pub struct ParallelGzip<W: Write + Send + 'static> {
    buf: Vec<u8>,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    permits: Arc<Permits>,
    failed: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

fn compress_chunk(level: u32, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 3 + 64), Compression::new(level));
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write + Send + 'static> ParallelGzip<W> {
    pub fn new(sink: W, level: u32, threads: usize, progress: Arc<Progress>) -> Self {
        let threads = threads.max(1);
        let in_flight = 2 * threads + 2;
        let permits = Arc::new(Permits { free: Mutex::new(in_flight), cond: Condvar::new() });
        let failed = Arc::new(AtomicBool::new(false));
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<(u64, io::Result<Vec<u8>>)>();
        let workers = (0..threads)
            .map(|i| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || loop {
                        // Hold the lock only to take a job, not while compressing.
                        let job = lock(&rx).recv();
                        let Ok((seq, data)) = job else { return };
                        if tx.send((seq, compress_chunk(level, &data))).is_err() {
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
        ParallelGzip { buf: Vec::with_capacity(CHUNK_SIZE), seq: 0, jobs: Some(job_tx), workers, writer: Some(writer), permits, failed, progress }
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            // The writer stopped; its error is reported by `finish`.
            return Err(io::Error::other("the compressed output could not be written"));
        }
        self.permits.acquire();
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        let jobs = self.jobs.as_ref().expect("jobs open until finish");
        jobs.send((self.seq, data)).map_err(|_| io::Error::other("gzip workers stopped"))?;
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
        // An empty input still becomes a valid (empty) gzip file.
        let flushed = if !self.buf.is_empty() || self.seq == 0 { self.submit() } else { Ok(()) };
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
    done: Receiver<(u64, io::Result<Vec<u8>>)>,
    permits: &Permits,
    failed: &AtomicBool,
    progress: &Progress,
) -> io::Result<W> {
    let mut pending: BTreeMap<u64, io::Result<Vec<u8>>> = BTreeMap::new();
    let mut next = 0u64;
    let mut error: Option<io::Error> = None;
    for (seq, chunk) in done {
        pending.insert(seq, chunk);
        while let Some(chunk) = pending.remove(&next) {
            next += 1;
            if error.is_none() {
                let result = chunk.and_then(|c| {
                    sink.write_all(&c)?;
                    progress.bytes_out.fetch_add(c.len() as u64, Ordering::Relaxed);
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
    match error {
        Some(e) => Err(e),
        None => {
            sink.flush()?;
            Ok(sink)
        }
    }
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
    fn members_are_standard_gzip() {
        let data = sample(3 * CHUNK_SIZE);
        let mut gz = ParallelGzip::new(Vec::new(), 6, 2, Arc::default());
        gz.write_all(&data).unwrap();
        let out = gz.finish().unwrap();
        // A single-member decoder stops after the first member: proof that there are several,
        // each a complete gzip stream.
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut first).unwrap();
        assert_eq!(first, &data[..CHUNK_SIZE]);
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

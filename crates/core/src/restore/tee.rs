//! One read of a backup's stored bytes for two readers: the restore's main reader, which checks
//! and loads everything in order, and a read-ahead that loads later tables meanwhile
//! (`parallel::Ahead`). Both see exactly the same bytes — read once, from one pinned file or
//! object version — so the read-ahead can never load anything the main reader does not check.
//!
//! Memory is bounded: the reader in front waits while it is `window` bytes ahead of the other.
//! The bytes are the stored (compressed) ones, so the window spans ten or more times as much
//! SQL. A reader that is dropped no longer holds the other back.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex};

use crate::util::lock;

/// The stored bytes read from the source at a time.
const CHUNK: usize = 256 << 10;

pub struct TeeReader {
    shared: Arc<Shared>,
    me: usize,
    /// Where this reader reads the source into (the buffer keeps exact copies).
    scratch: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    window: u64,
}

struct State {
    /// Taken out while one reader reads from it, so that the other can go on with the buffer.
    source: Option<Box<dyn Read + Send>>,
    reading: bool,
    /// The bytes from `base` on that a reader still has to read, in the chunks they were read
    /// in: a chunk both have read is freed whole (and, at this size, given back to the system).
    buf: VecDeque<Vec<u8>>,
    /// The offset of the first chunk, and of the end of the last.
    base: u64,
    end: u64,
    pos: [u64; 2],
    attached: [bool; 2],
    eof: bool,
    /// The source's error, for both readers (io::Error is not Clone).
    error: Option<(io::ErrorKind, String)>,
}

impl State {
    /// Forgets the bytes every attached reader has read.
    fn trim(&mut self) {
        let keep_from = (0..2).filter(|&i| self.attached[i]).map(|i| self.pos[i]).min().unwrap_or(self.end);
        while let Some(first) = self.buf.front() {
            if self.base + first.len() as u64 > keep_from {
                break;
            }
            self.base += first.len() as u64;
            self.buf.pop_front();
        }
    }

    /// Copies the bytes at `at` (which the buffer holds) into `out`.
    fn copy_at(&self, at: u64, out: &mut [u8]) -> usize {
        let mut offset = self.base;
        for chunk in &self.buf {
            let chunk_end = offset + chunk.len() as u64;
            if at < chunk_end {
                let from = (at - offset) as usize;
                let n = out.len().min(chunk.len() - from);
                out[..n].copy_from_slice(&chunk[from..from + n]);
                return n;
            }
            offset = chunk_end;
        }
        0
    }
}

/// Two readers of `source`'s bytes.
pub fn tee(source: Box<dyn Read + Send>, window: usize) -> (TeeReader, TeeReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            source: Some(source),
            reading: false,
            buf: VecDeque::new(),
            base: 0,
            end: 0,
            pos: [0, 0],
            attached: [true, true],
            eof: false,
            error: None,
        }),
        changed: Condvar::new(),
        window: window as u64,
    });
    (TeeReader { shared: Arc::clone(&shared), me: 0, scratch: Vec::new() }, TeeReader { shared, me: 1, scratch: Vec::new() })
}

impl Read for TeeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let (me, other) = (self.me, 1 - self.me);
        let mut s = lock(&self.shared.state);
        loop {
            let end = s.end;
            if s.pos[me] < end {
                let n = s.copy_at(s.pos[me], out);
                s.pos[me] += n as u64;
                s.trim();
                self.shared.changed.notify_all();
                return Ok(n);
            }
            if let Some((kind, msg)) = &s.error {
                return Err(io::Error::new(*kind, msg.clone()));
            }
            if s.eof {
                return Ok(0);
            }
            let too_far = s.attached[other] && end - s.pos[other] >= self.shared.window;
            if s.reading || too_far {
                s = self.shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let mut source = s.source.take().expect("source present when nobody reads");
            s.reading = true;
            drop(s);
            self.scratch.resize(CHUNK, 0);
            // A source that panics must not leave the other reader waiting for it forever.
            let guard = Unwinding(&self.shared);
            let got = source.read(&mut self.scratch);
            std::mem::forget(guard);
            s = lock(&self.shared.state);
            s.source = Some(source);
            s.reading = false;
            match got {
                Ok(0) => s.eof = true,
                Ok(n) => {
                    s.end += n as u64;
                    s.buf.push_back(self.scratch[..n].to_vec());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => s.error = Some((e.kind(), e.to_string())),
            }
            self.shared.changed.notify_all();
        }
    }
}

/// Dropped only while a read from the source unwinds: the source is gone, and both readers
/// get an error instead of waiting for it.
struct Unwinding<'a>(&'a Shared);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.reading = false;
        s.error = Some((io::ErrorKind::Other, "reading the backup failed (the reader panicked)".into()));
        self.0.changed.notify_all();
    }
}

impl Drop for TeeReader {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.state);
        s.attached[self.me] = false;
        s.trim();
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that counts how far it was read.
    struct Counting {
        data: Vec<u8>,
        at: usize,
        read: Arc<Mutex<usize>>,
    }

    impl Read for Counting {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.data.len() - self.at).min(1000);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            *lock(&self.read) = self.at;
            Ok(n)
        }
    }

    fn source(len: usize) -> (Box<dyn Read + Send>, Vec<u8>, Arc<Mutex<usize>>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let read = Arc::new(Mutex::new(0));
        (Box::new(Counting { data: data.clone(), at: 0, read: Arc::clone(&read) }), data, read)
    }

    #[test]
    fn both_readers_get_every_byte_once_read() {
        let (src, data, _) = source(3 << 20);
        let (mut a, mut b) = tee(src, 1 << 20);
        let other = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 777];
        loop {
            let n = a.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data);
        assert!(other.join().unwrap() == data);
    }

    #[test]
    fn the_reader_in_front_waits_at_the_window() {
        let (src, _, read) = source(4 << 20);
        let (a, mut b) = tee(src, 64 << 10);
        let front = std::thread::spawn(move || {
            let mut sink = Vec::new();
            b.read_to_end(&mut sink).unwrap();
            sink.len()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        // `a` has read nothing: `b` stopped a window (plus one chunk being read) ahead.
        let ahead = *lock(&read);
        assert!(ahead <= (64 << 10) + CHUNK, "read {ahead} bytes ahead");
        assert!(!front.is_finished());
        // A reader that goes away holds nobody back.
        drop(a);
        assert_eq!(front.join().unwrap(), 4 << 20);
    }

    #[test]
    fn a_source_that_panics_leaves_no_reader_waiting() {
        struct Panicking;
        impl Read for Panicking {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("boom")
            }
        }
        let (mut a, mut b) = tee(Box::new(Panicking), 1 << 20);
        let first = std::thread::spawn(move || {
            let mut buf = [0u8; 10];
            let _ = a.read(&mut buf);
        });
        assert!(first.join().is_err(), "the source panicked");
        let mut buf = [0u8; 10];
        assert!(b.read(&mut buf).unwrap_err().to_string().contains("panicked"));
    }

    #[test]
    fn an_error_reaches_both_readers() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let (mut a, mut b) = tee(Box::new(Failing), 1 << 20);
        let mut buf = [0u8; 10];
        assert!(a.read(&mut buf).unwrap_err().to_string().contains("disk on fire"));
        assert!(b.read(&mut buf).unwrap_err().to_string().contains("disk on fire"));
    }
}

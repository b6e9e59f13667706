//! Running `pg_dump` (plain SQL) and deciding whether its output is a complete dump.
//!
//! A plain dump cut at a line boundary restores "successfully" (psql exits 0 and commits the
//! part it got), so completeness is checked on the bytes themselves: the footer comment that
//! pg_dump writes last, and the `\unrestrict` key matching the `\restrict` key of the head.

use std::io::{self, Read, Write};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::db::{tail_lines, PgTools};

const HEAD_LEN: usize = 4096;
const TAIL_LEN: usize = 4096;
const FOOTER: &[u8] = b"-- PostgreSQL database dump complete\n--\n";

/// Watches a plain dump stream go by and tells whether it ended like a complete dump.
#[derive(Debug, Default, Clone)]
pub struct Completeness {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Completeness {
    pub fn update(&mut self, data: &[u8]) {
        if self.head.len() < HEAD_LEN {
            let n = (HEAD_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
        }
        if data.len() >= TAIL_LEN {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL_LEN..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > 2 * TAIL_LEN {
                self.tail.drain(..self.tail.len() - TAIL_LEN);
            }
        }
    }

    fn restrict_key(head: &[u8]) -> Option<&[u8]> {
        head.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"\\restrict "))
    }

    /// Ok when the stream ended with pg_dump's completion footer, followed by nothing but the
    /// matching `\unrestrict` line (pg_dump 13.22/14.19/15.14/16.10/17.6 and later) and blank
    /// lines.
    pub fn verify(&self) -> Result<(), String> {
        if !self.head.starts_with(b"--\n-- PostgreSQL database dump\n--\n") {
            return Err("it does not start like a pg_dump plain-format dump".into());
        }
        let Some(at) = self.tail.windows(FOOTER.len()).rposition(|w| w == FOOTER) else {
            return Err("the \"PostgreSQL database dump complete\" footer is missing: the dump is truncated".into());
        };
        let mut key_seen = false;
        for line in self.tail[at + FOOTER.len()..].split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match (line.strip_prefix(b"\\unrestrict "), Self::restrict_key(&self.head)) {
                (Some(k), Some(want)) if k == want && !key_seen => key_seen = true,
                (Some(_), _) => return Err("the \\unrestrict key at the end does not match the \\restrict key at the start".into()),
                (None, _) => return Err("unexpected data after the dump's completion footer".into()),
            }
        }
        Ok(())
    }
}

/// Row counts of the `COPY ... FROM stdin;` blocks of a plain dump, in order of appearance.
#[derive(Debug, Default)]
pub struct CopyCounts {
    partial: Vec<u8>,
    current: Option<usize>,
    pub tables: Vec<(String, u64)>,
}

impl CopyCounts {
    pub fn update(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&rest[..nl]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..nl]);
                self.line(&line);
            }
            rest = &rest[nl + 1..];
        }
        // Only the start of a long line matters (COPY header or the `\.` end marker).
        let room = 4096usize.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    fn line(&mut self, line: &[u8]) {
        match self.current {
            Some(_) if line == b"\\." => self.current = None,
            Some(i) => self.tables[i].1 += 1,
            None => {
                if let Some(rest) = line.strip_prefix(b"COPY ") {
                    if line.ends_with(b" FROM stdin;") {
                        // `COPY schema.table (cols) FROM stdin;` -> `schema.table`
                        let name = rest.split(|&b| b == b' ').next().unwrap_or_default();
                        self.tables.push((String::from_utf8_lossy(name).into_owned(), 0));
                        self.current = Some(self.tables.len() - 1);
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot start {tool}: {err}")]
    Spawn { tool: String, err: io::Error },
    #[error("pg_dump {status}: {stderr}")]
    Failed { status: String, stderr: String },
    #[error("pg_dump exited successfully but its output is incomplete: {0}")]
    Incomplete(String),
    #[error("pg_dump ran longer than {0:?} (EF__BACKUP_TIMEOUT_SECS) and was killed")]
    Timeout(Duration),
    #[error("the backup was cancelled because ef-backup is shutting down; pg_dump was stopped")]
    Cancelled,
    #[error("reading pg_dump's output failed: {0}")]
    Read(io::Error),
    /// Writing the compressed backup failed; pg_dump was stopped.
    #[error("{0}")]
    Write(io::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct DumpStats {
    pub bytes: u64,
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    }
}

/// Streams a plain-format dump of `database` into `out`. Succeeds only when pg_dump exited 0 within `timeout` and its output is
/// complete; `out` has then received every byte. Setting `cancel` stops pg_dump.
pub fn run(
    tools: &PgTools,
    database: &str,
    timeout: Duration,
    cancel: &Arc<AtomicBool>,
    out: &mut impl Write,
) -> Result<DumpStats, DumpError> {
    let started = Instant::now();
    let tool = tools.tool("pg_dump").display().to_string();
    let mut child = tools
        .command("pg_dump", database)
        .args(["--format=plain", "--no-password"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| DumpError::Spawn { tool, err })?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        // Keep the end: that is where pg_dump says what went wrong.
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.len() > 64 * 1024 {
                all.drain(..all.len() - 32 * 1024);
            }
        }
        all
    });

    // The watchdog kills a hung or cancelled pg_dump. It only runs while the child is
    // unreaped, so the pid cannot have been reused.
    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = {
        let timed_out = Arc::clone(&timed_out);
        let cancel = Arc::clone(cancel);
        std::thread::spawn(move || loop {
            match stop_rx.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let expired = started.elapsed() >= timeout;
                    if expired || cancel.load(Ordering::SeqCst) {
                        timed_out.store(expired, Ordering::SeqCst);
                        // SAFETY: plain kill(2) on our own unreaped child.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        return;
                    }
                }
                _ => return,
            }
        })
    };

    let mut check = Completeness::default();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let copied: Result<(), DumpError> = loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(DumpError::Read(e)),
        };
        check.update(&buf[..n]);
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(DumpError::Write(e));
        }
        bytes += n as u64;
    };
    if copied.is_err() {
        let _ = child.kill();
    }
    drop(stdout);
    // pg_dump closes stdout as its last act; give it the rest of the time budget to exit.
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                timed_out.store(true, Ordering::SeqCst);
                let _ = child.kill();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    let _ = stop_tx.send(());
    let _ = watchdog.join();
    let stderr = stderr_reader.join().unwrap_or_default();

    if timed_out.load(Ordering::SeqCst) {
        return Err(DumpError::Timeout(timeout));
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(DumpError::Cancelled);
    }
    copied?;
    let status = status.ok_or_else(|| DumpError::Failed { status: "ended abnormally".into(), stderr: tail_lines(&stderr, 4) })?;
    if !status.success() {
        return Err(DumpError::Failed { status: describe(status), stderr: tail_lines(&stderr, 4) });
    }
    check.verify().map_err(DumpError::Incomplete)?;
    Ok(DumpStats { bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n-- Dumped from database version 15.18\n";
    const BODY: &str = "SET statement_timeout = 0;\nCOPY public.t (a, b) FROM stdin;\n1\tx\n2\ty\n\\.\n\nCOPY app.\"Odd\" (a) FROM stdin;\n\\.\n";
    const FOOT: &str = "--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc123\n\n";

    fn check_in_pieces(text: &str, piece: usize) -> Result<(), String> {
        let mut c = Completeness::default();
        for chunk in text.as_bytes().chunks(piece) {
            c.update(chunk);
        }
        c.verify()
    }

    #[test]
    fn complete_dumps_pass_in_any_chunking() {
        let full = format!("{HEAD}{BODY}{FOOT}");
        let big = format!("{HEAD}{}{FOOT}", BODY.repeat(2000));
        for piece in [1, 7, 100, 4096, 1 << 20] {
            assert_eq!(check_in_pieces(&full, piece), Ok(()), "piece {piece}");
            assert_eq!(check_in_pieces(&big, piece), Ok(()), "big, piece {piece}");
        }
        // Older pg_dump: no \restrict, ends right after the footer.
        let old = format!("--\n-- PostgreSQL database dump\n--\n{BODY}--\n-- PostgreSQL database dump complete\n--\n\n");
        assert_eq!(check_in_pieces(&old, 13), Ok(()));
        // A future release that drops \unrestrict: still complete.
        let no_unrestrict = format!("{HEAD}{BODY}--\n-- PostgreSQL database dump complete\n--\n\n");
        assert_eq!(check_in_pieces(&no_unrestrict, 13), Ok(()));
    }

    #[test]
    fn incomplete_dumps_fail() {
        let full = format!("{HEAD}{BODY}{FOOT}");
        // Every cut at a line boundary before the footer's end is incomplete.
        let footer_end = full.find("complete\n--\n").unwrap() + "complete\n--\n".len();
        for (i, _) in full.match_indices('\n').filter(|(i, _)| *i + 1 < footer_end) {
            let cut = &full[..i + 1];
            assert!(check_in_pieces(cut, 64).is_err(), "cut after byte {i} passed");
        }
        let wrong_key = full.replace("\\unrestrict abc123", "\\unrestrict zzz");
        assert!(check_in_pieces(&wrong_key, 64).unwrap_err().contains("does not match"));
        let trailing = format!("{full}DROP TABLE x;\n");
        assert!(check_in_pieces(&trailing, 64).unwrap_err().contains("after the dump"));
        assert!(check_in_pieces("hello\n", 64).unwrap_err().contains("does not start"));
        assert!(check_in_pieces("", 64).is_err());
    }

    #[test]
    fn copy_counts() {
        let text = format!("{HEAD}{BODY}{FOOT}");
        for piece in [1, 5, 4096] {
            let mut c = CopyCounts::default();
            for chunk in text.as_bytes().chunks(piece) {
                c.update(chunk);
            }
            assert_eq!(c.tables, vec![("public.t".to_string(), 2), ("app.\"Odd\"".to_string(), 0)], "piece {piece}");
        }
    }
}

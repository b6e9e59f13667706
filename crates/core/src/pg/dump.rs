//! Running `pg_dump` (plain SQL) and deciding whether its output is a complete dump.
//!
//! A plain dump cut at a line boundary restores "successfully" (psql exits 0 and commits the
//! part it got), so completeness is checked on the bytes themselves: the footer comment that
//! pg_dump writes last, and the `\unrestrict` key matching the `\restrict` key of the head.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::{tail_lines, PgTools, Running};
use crate::util::lock;

const HEAD_LEN: usize = 4096;
const TAIL_LEN: usize = 4096;
const FOOTER: &[u8] = b"-- PostgreSQL database dump complete\n--\n";
const HEADER: &[u8] = b"--\n-- PostgreSQL database dump\n--\n";
/// `pg_dumpall`'s (of the globals): its `\unrestrict` comes before the footer.
const CLUSTER_FOOTER: &[u8] = b"-- PostgreSQL database cluster dump complete\n--\n";
const CLUSTER_HEADER: &[u8] = b"--\n-- PostgreSQL database cluster dump\n--\n";

/// What runs: `pg_dump` of a database, or `pg_dumpall --globals-only` of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dumper {
    Database,
    /// `passwords: false` adds `--no-role-passwords` (for a user who may not read `pg_authid`).
    Globals {
        passwords: bool,
    },
}

impl Dumper {
    fn tool(self) -> &'static str {
        match self {
            Dumper::Database => "pg_dump",
            Dumper::Globals { .. } => "pg_dumpall",
        }
    }
}

/// Watches a plain dump stream go by and tells whether it ended like a complete dump.
#[derive(Debug, Default, Clone)]
pub struct Completeness {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// A `pg_dumpall` stream (other header and footer).
    cluster: bool,
}

impl Completeness {
    /// For `pg_dumpall`'s output.
    pub fn cluster() -> Completeness {
        Completeness { cluster: true, ..Completeness::default() }
    }

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
        let (header, footer, what) = if self.cluster { (CLUSTER_HEADER, CLUSTER_FOOTER, "pg_dumpall") } else { (HEADER, FOOTER, "pg_dump") };
        if !self.head.starts_with(header) {
            return Err(format!("it does not start like a {what} plain-format dump"));
        }
        let Some(at) = self.tail.windows(footer.len()).rposition(|w| w == footer) else {
            let footer = String::from_utf8_lossy(&footer[3..footer.len() - 4]);
            return Err(format!("the \"{footer}\" footer is missing: the dump is truncated"));
        };
        let mut key_seen = false;
        for line in self.tail[at + footer.len()..].split(|&b| b == b'\n') {
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

/// A schema-qualified name as PostgreSQL stores it (unquoted), so that a name read from a dump
/// compares equal to the same name read from the catalog whatever quoting the dump used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: &str, name: &str) -> QualifiedName {
        QualifiedName { schema: schema.to_string(), name: name.to_string() }
    }

    /// Parses `schema.name` at the start of `s`, each part bare or `"quoted ""like this"""`;
    /// returns the name and what follows it.
    pub fn parse(s: &str) -> Option<(QualifiedName, &str)> {
        let (schema, rest) = identifier(s)?;
        let (name, rest) = identifier(rest.strip_prefix('.')?)?;
        Some((QualifiedName { schema, name }, rest))
    }
}

/// Shown the way `format('%I.%I')` would, except that keywords are not quoted.
impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |part: &str| {
            let bare = part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if bare {
                part.to_string()
            } else {
                crate::db::quote_ident(part)
            }
        };
        write!(f, "{}.{}", show(&self.schema), show(&self.name))
    }
}

/// One SQL identifier at the start of `s`: quoted (doubled quotes inside) or bare, which
/// PostgreSQL folds to lower case.
fn identifier(s: &str) -> Option<(String, &str)> {
    if s.starts_with('"') {
        return crate::db::unquote(s, '"');
    }
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_lowercase(), &s[end..]))
}

/// A sequence's state as `setval` sets it and the sequence reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceState {
    pub last_value: i64,
    pub is_called: bool,
}

/// What a plain dump says about its own contents, read from the raw SQL stream as it goes by:
/// the rows of each `COPY ... FROM stdin;` block (count and an order-independent hash), the
/// `setval` of each sequence, the large objects it creates (with their bytes' size and hash)
/// and the versions in its head. Memory stays flat apart from one entry per large object.
#[derive(Debug, Default)]
pub struct DumpFacts {
    partial: Vec<u8>,
    current: Option<usize>,
    /// The large object `lowrite` calls write into (`lo_open` names it).
    open_lo: Option<u32>,
    /// The hash so far of a COPY row longer than `LINE_START_LEN`.
    long_row: Option<Box<LongRow>>,
    /// COPY blocks in dump order. A header whose name cannot be parsed keeps its raw text as
    /// the name (empty schema), so it shows up as missing rather than vanishing.
    pub tables: Vec<CopyBlock>,
    /// `SELECT pg_catalog.setval('name', value, is_called);` calls, in dump order.
    pub sequences: Vec<(QualifiedName, SequenceState)>,
    /// Oids of the large objects the dump creates (`lo_create`) or fills (`lo_open`): a dump
    /// made with --data-only has only the latter.
    pub large_objects: std::collections::BTreeSet<u32>,
    /// What the dump's `lowrite` calls write into each large object.
    pub lo_content: std::collections::BTreeMap<u32, LoContent>,
    /// `-- Dumped from database version 15.18 (...)`.
    pub server_version: Option<String>,
    /// `-- Dumped by pg_dump version 15.18 (...)`.
    pub pg_dump_version: Option<String>,
    /// `SET client_encoding = 'UTF8';`: the encoding of the COPY text.
    pub client_encoding: Option<String>,
}

/// The running hash of a long COPY row.
struct LongRow(xxhash_rust::xxh3::Xxh3);

impl std::fmt::Debug for LongRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LongRow")
    }
}

/// One `COPY ... FROM stdin;` block: its rows, and a hash of them that does not depend on their
/// order: the wrapping sum of every row's XXH3-128 (the row's bytes as COPY text, without the
/// newline). `COPY table TO STDOUT` of a faithful restore, under the same DateStyle,
/// IntervalStyle, extra_float_digits and TimeZone, gives the same rows and so the same hash in
/// any order; a changed, lost or duplicated row changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyBlock {
    pub table: QualifiedName,
    pub rows: u64,
    pub hash: u128,
}

/// A large object's bytes as the dump writes them.
#[derive(Debug, Clone, Default)]
pub struct LoContent {
    pub bytes: u64,
    pub sha256: sha2::Sha256,
}

/// Longest line start kept. COPY headers of wide tables and `lowrite` lines (pg_dump writes
/// 16 KiB per call, 32 KiB of hex) run long, and a header cut short would not be recognised.
const LINE_START_LEN: usize = 64 * 1024;

impl DumpFacts {
    /// The table whose rows the dump ended in, without the `\.` line that ends them.
    pub fn unterminated_copy(&self) -> Option<&QualifiedName> {
        self.current.and_then(|i| self.tables.get(i)).map(|b| &b.table)
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() && self.long_row.is_none() {
                self.line(&rest[..nl]);
            } else {
                self.piece(&rest[..nl]);
                match self.long_row.take() {
                    Some(hasher) => self.row_hash(hasher.0.digest128()),
                    None => {
                        let line = std::mem::take(&mut self.partial);
                        self.line(&line);
                    }
                }
            }
            rest = &rest[nl + 1..];
        }
        if !rest.is_empty() {
            self.piece(rest);
        }
    }

    /// Part of a line whose end has not come yet. Outside COPY data only the line's start
    /// matters (kept up to `LINE_START_LEN`); a COPY row longer than that is hashed as it comes,
    /// so that every byte of every row counts whatever its length.
    fn piece(&mut self, bytes: &[u8]) {
        if let Some(hasher) = &mut self.long_row {
            hasher.0.update(bytes);
        } else if self.current.is_some() && self.partial.len() + bytes.len() > LINE_START_LEN {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(&self.partial);
            hasher.update(bytes);
            self.partial.clear();
            self.long_row = Some(Box::new(LongRow(hasher)));
        } else {
            let room = LINE_START_LEN.saturating_sub(self.partial.len());
            self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn row_hash(&mut self, hash: u128) {
        if let Some(i) = self.current {
            let block = &mut self.tables[i];
            block.rows += 1;
            block.hash = block.hash.wrapping_add(hash);
        }
    }

    /// The dump's tables, each block's rows and hash added up (a table may come in more than
    /// one block, e.g. a data-only dump written twice).
    pub fn table_totals(&self) -> std::collections::BTreeMap<&QualifiedName, (u64, u128)> {
        let mut totals: std::collections::BTreeMap<&QualifiedName, (u64, u128)> = std::collections::BTreeMap::new();
        for b in &self.tables {
            let t = totals.entry(&b.table).or_default();
            t.0 += b.rows;
            t.1 = t.1.wrapping_add(b.hash);
        }
        totals
    }

    fn line(&mut self, line: &[u8]) {
        match self.current {
            Some(_) if line == b"\\." => self.current = None,
            Some(_) => self.row_hash(xxhash_rust::xxh3::xxh3_128(line)),
            None => {
                if let Some(hex) = line.strip_prefix(b"SELECT pg_catalog.lowrite(0, '\\x").and_then(|l| l.strip_suffix(b"');")) {
                    self.lowrite(hex);
                    return;
                }
                let line = String::from_utf8_lossy(line);
                if let Some(header) = line.strip_prefix("COPY ") {
                    if line.ends_with(" FROM stdin;") {
                        // `COPY schema.table (cols) FROM stdin;`
                        let name = QualifiedName::parse(header)
                            .map(|(n, _)| n)
                            .unwrap_or_else(|| QualifiedName { schema: String::new(), name: header.trim_end_matches(" FROM stdin;").to_string() });
                        self.tables.push(CopyBlock { table: name, rows: 0, hash: 0 });
                        self.current = Some(self.tables.len() - 1);
                    }
                } else if let Some(args) = line.strip_prefix("SELECT pg_catalog.setval(") {
                    if let Some(seq) = Self::setval(args) {
                        self.sequences.push(seq);
                    }
                } else if let Some(args) = line.strip_prefix("SELECT pg_catalog.lo_create('") {
                    if let Some(Ok(oid)) = args.split('\'').next().map(str::parse::<u32>) {
                        self.large_objects.insert(oid);
                        self.lo_content.entry(oid).or_default();
                    }
                } else if let Some(args) = line.strip_prefix("SELECT pg_catalog.lo_open('") {
                    if let Some(Ok(oid)) = args.split('\'').next().map(str::parse::<u32>) {
                        self.large_objects.insert(oid);
                        self.lo_content.entry(oid).or_default();
                        self.open_lo = Some(oid);
                    }
                } else if line.starts_with("SELECT pg_catalog.lo_close(") {
                    self.open_lo = None;
                } else if let Some(v) = line.strip_prefix("SET client_encoding = '").and_then(|v| v.strip_suffix("';")) {
                    self.client_encoding.get_or_insert_with(|| v.to_string());
                } else if let Some(v) = line.strip_prefix("-- Dumped from database version ") {
                    self.server_version.get_or_insert_with(|| v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("-- Dumped by pg_dump version ") {
                    self.pg_dump_version.get_or_insert_with(|| v.trim().to_string());
                }
            }
        }
    }

    /// `SELECT pg_catalog.lowrite(0, '\x0a1b...');`: the hex-encoded bytes go into the open
    /// large object's size and hash.
    fn lowrite(&mut self, hex: &[u8]) {
        use sha2::Digest;
        let Some(content) = self.open_lo.and_then(|oid| self.lo_content.get_mut(&oid)) else { return };
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0,
        };
        let bytes: Vec<u8> = hex.chunks_exact(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect();
        content.bytes += bytes.len() as u64;
        content.sha256.update(&bytes);
    }

    /// `'public."Odd seq"', 5, true);` -> the sequence and its state.
    fn setval(args: &str) -> Option<(QualifiedName, SequenceState)> {
        // pg_dump sets standard_conforming_strings: only doubled quotes are escapes.
        let (literal, rest) = crate::db::unquote(args, '\'')?;
        let (name, after) = QualifiedName::parse(&literal)?;
        if !after.is_empty() {
            return None;
        }
        let mut fields = rest.strip_prefix(", ")?.strip_suffix(");")?.split(", ");
        let last_value = fields.next()?.parse().ok()?;
        let is_called = match fields.next()? {
            "true" => true,
            "false" => false,
            _ => return None,
        };
        fields.next().is_none().then_some((name, SequenceState { last_value, is_called }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot start {tool}: {err}")]
    Spawn { tool: String, err: io::Error },
    #[error("{tool} {status}: {stderr}")]
    Failed { tool: &'static str, status: String, stderr: String },
    #[error("a table is locked by another session: pg_dump waited {0:?} for its lock (EF__PG_LOCK_WAIT_TIMEOUT_SECS) and gave up ({1}) — find the session holding it (pg_locks, pg_stat_activity; typically a migration or a long ALTER/VACUUM FULL), let it finish or end it, or raise EF__PG_LOCK_WAIT_TIMEOUT_SECS")]
    LockWait(Duration, String),
    #[error("the dump tool exited successfully but its output is incomplete: {0}")]
    Incomplete(String),
    #[error("the dump ran longer than {0:?} (EF__BACKUP_TIMEOUT_SECS) and was killed")]
    Timeout(Duration),
    #[error("the backup was cancelled because ef-backup is shutting down; pg_dump was stopped")]
    Cancelled,
    #[error("reading pg_dump's output failed: {0}")]
    Read(io::Error),
    /// Writing the compressed backup failed; pg_dump was stopped.
    #[error("{0}")]
    Write(io::Error),
}

#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub bytes: u64,
    /// The dump session's defaults that shape COPY text and pg_dump leaves alone (TimeZone:
    /// every timestamptz; bytea_output; lc_monetary): recorded in the manifest.
    pub session: std::collections::BTreeMap<String, String>,
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended abnormally".to_string(),
    }
}

/// Kills pg_dump's process group, unless pg_dump was already reaped: only an unreaped child
/// keeps its pid (and so the group id) from being reused, and reaping happens under the same
/// lock (`wait_briefly`), so this never signals a stranger.
fn kill_group(child: &Mutex<Child>) {
    let mut child = lock(child);
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on the process group of our own unreaped child.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    }
}

/// Ends the server session of a pg_dump that was killed: its backend would otherwise go on
/// waiting for a table lock (holding its place in the lock queue) until the lock comes free.
fn end_server_session(tools: &PgTools, database: &str, application_name: &str) {
    let sql =
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = {}", crate::db::quote_literal(application_name));
    if let Err(e) = tools.execute(database, &sql) {
        tracing::warn!("could not end the server session of the stopped pg_dump ({application_name}): {e}");
    }
}

/// Streams a plain-format dump of `database` into `out`. Succeeds only when pg_dump exited 0 within `timeout` and its output is
/// complete; `out` has then received every byte. A table lock not granted within `lock_wait`
/// fails the dump. Setting `cancel` stops pg_dump.
pub fn run(
    tools: &PgTools,
    database: &str,
    dumper: Dumper,
    timeout: Duration,
    lock_wait: Duration,
    cancel: &Arc<AtomicBool>,
    out: &mut impl Write,
) -> Result<DumpStats, DumpError> {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    let tool = tools.tool(dumper.tool()).display().to_string();
    // Unique per run, so a stopped pg_dump's server session can be found and ended.
    let application_name = format!("ef-backup-dump-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
    let mut command = tools.command_as(dumper.tool(), database, &application_name, &[]);
    match dumper {
        Dumper::Database => {
            command.args(["--format=plain", "--no-password", &format!("--lock-wait-timeout={}ms", lock_wait.as_millis())]);
        }
        Dumper::Globals { passwords } => {
            // pg_dumpall ignores the dbname of `-d` and starts in `postgres` (or template1),
            // which a user of one database may not connect to: start in that database.
            command.args(["--globals-only", "--no-password", "-l", database]);
            if !passwords {
                command.arg("--no-role-passwords");
            }
        }
    }
    // Its own process group: a stop reaches whatever pg_dump (or a wrapper script) started.
    command.process_group(0);
    // Dies with ef-backup: a `kill -9` of ef-backup (the OOM killer, a careless operator) must
    // not leave a pg_dump running beside the next run's. The signal comes when the spawning
    // thread ends, and this thread waits for pg_dump to the end.
    // SAFETY: prctl and getppid are async-signal-safe, and nothing is allocated between fork and
    // exec (the error, ESRCH: the parent is gone, is a plain code).
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let Running { child, mut stdout, stderr: stderr_reader } = crate::db::spawn(&mut command).map_err(|err| DumpError::Spawn { tool, err })?;
    let child = Arc::new(Mutex::new(child));

    // The watchdog kills a hung or cancelled pg_dump.
    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = {
        let (timed_out, cancel, child) = (Arc::clone(&timed_out), Arc::clone(cancel), Arc::clone(&child));
        std::thread::spawn(move || loop {
            match stop_rx.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let expired = started.elapsed() >= timeout;
                    if expired || cancel.load(Ordering::SeqCst) {
                        timed_out.store(expired, Ordering::SeqCst);
                        kill_group(&child);
                        return;
                    }
                }
                _ => return,
            }
        })
    };

    let mut check = if dumper == Dumper::Database { Completeness::default() } else { Completeness::cluster() };
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
        kill_group(&child);
    }
    drop(stdout);
    // pg_dump closes stdout as its last act; give it the rest of the time budget to exit.
    let status = loop {
        let polled = lock(&child).try_wait();
        match polled {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                timed_out.store(true, Ordering::SeqCst);
                kill_group(&child);
                break lock(&child).wait().ok();
            }
            Err(_) => break None,
        }
    };
    let _ = stop_tx.send(());
    let _ = watchdog.join();
    let stderr = stderr_reader.join().unwrap_or_default();

    let stopped = timed_out.load(Ordering::SeqCst) || cancel.load(Ordering::SeqCst) || copied.is_err();
    if stopped {
        end_server_session(tools, database, &application_name);
    }
    if timed_out.load(Ordering::SeqCst) {
        return Err(DumpError::Timeout(timeout));
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(DumpError::Cancelled);
    }
    copied?;
    let failed = |status: String, stderr: String| DumpError::Failed { tool: dumper.tool(), status, stderr };
    let status = status.ok_or_else(|| failed("ended abnormally".into(), tail_lines(&stderr, 4)))?;
    if !status.success() {
        let stderr = tail_lines(&stderr, 4);
        // pg_dump enforces --lock-wait-timeout with a statement_timeout around its LOCK TABLEs.
        if stderr.contains("Query was: LOCK TABLE") && stderr.contains("timeout") {
            return Err(DumpError::LockWait(lock_wait, stderr));
        }
        return Err(failed(describe(status), stderr));
    }
    check.verify().map_err(DumpError::Incomplete)?;
    Ok(DumpStats { bytes, session: Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each COPY block's table and row count.
    fn counts(f: &DumpFacts) -> Vec<(QualifiedName, u64)> {
        f.tables.iter().map(|b| (b.table.clone(), b.rows)).collect()
    }

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

    /// `pg_dumpall --globals-only` as 15.14 writes it: `\unrestrict` before the footer.
    #[test]
    fn globals_dumps() {
        let full = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict k1\n\nCREATE ROLE app;\n\n\\unrestrict k1\n\n--\n-- PostgreSQL database cluster dump complete\n--\n\n";
        let check = |text: &str| {
            let mut c = Completeness::cluster();
            for chunk in text.as_bytes().chunks(7) {
                c.update(chunk);
            }
            c.verify()
        };
        assert_eq!(check(full), Ok(()));
        let cut = &full[..full.find("\\unrestrict").unwrap()];
        assert!(check(cut).unwrap_err().contains("cluster dump complete"), "{:?}", check(cut));
        assert!(check(&format!("{full}CREATE ROLE x;\n")).is_err());
        // A database dump is not a globals dump, nor the other way round.
        let mut db = Completeness::default();
        db.update(full.as_bytes());
        assert!(db.verify().is_err());
        assert!(check(&format!("{HEAD}{BODY}{FOOT}")).is_err());
    }

    #[test]
    fn dump_facts() {
        let text = format!("{HEAD}{BODY}{FOOT}");
        for piece in [1, 5, 4096] {
            let mut c = DumpFacts::default();
            for chunk in text.as_bytes().chunks(piece) {
                c.update(chunk);
            }
            assert_eq!(counts(&c), vec![(QualifiedName::new("public", "t"), 2), (QualifiedName::new("app", "Odd"), 0)], "piece {piece}");
        }
    }

    /// Pins issue 13 item 11: the header `COPY "my schema"."my table" ...` used to yield the
    /// name `"my`, a false MISMATCH in `verify --against-dump`.
    #[test]
    fn copy_headers_with_quoted_names() {
        let text = "COPY \"my schema\".\"my \"\"odd\"\" Table\" (a, \"b c\") FROM stdin;\n1\t2\n\\.\n\
                    COPY \"Upper\".plain FROM stdin;\n\\.\n\
                    COPY public.\"a.b\" (x) FROM stdin;\nCOPY public.t FROM stdin;\n\\.\n";
        let mut c = DumpFacts::default();
        c.update(text.as_bytes());
        assert_eq!(
            counts(&c),
            vec![
                (QualifiedName::new("my schema", "my \"odd\" Table"), 1),
                (QualifiedName::new("Upper", "plain"), 0),
                // A data row that reads like a header is data.
                (QualifiedName::new("public", "a.b"), 1),
            ]
        );
        assert_eq!(c.tables[0].table.to_string(), "\"my schema\".\"my \"\"odd\"\" Table\"");
        assert_eq!(c.tables[2].table.to_string(), "public.\"a.b\"");
    }

    #[test]
    fn sequences_and_large_objects_as_pg_dump_15_writes_them() {
        let text = "SELECT pg_catalog.lo_create('16402');\nSELECT pg_catalog.lo_create('16403');\n\
                    COPY public.t (a) FROM stdin;\nSELECT pg_catalog.setval('public.in_data', 1, true);\n\\.\n\
                    SELECT pg_catalog.setval('public.\"Odd seq\"', 5, true);\n\
                    SELECT pg_catalog.setval('sch.\"it''s\"', -9223372036854775808, false);\n\
                    BEGIN;\nSELECT pg_catalog.lo_open('16402', 131072);\nSELECT pg_catalog.lowrite(0, '\\x68656c6c6f');\n\
                    SELECT pg_catalog.lo_close(0);\nSELECT pg_catalog.lo_open('16404', 131072);\nCOMMIT;\n";
        for piece in [1, 3, 4096] {
            let mut c = DumpFacts::default();
            for chunk in text.as_bytes().chunks(piece) {
                c.update(chunk);
            }
            assert_eq!(
                c.sequences,
                vec![
                    (QualifiedName::new("public", "Odd seq"), SequenceState { last_value: 5, is_called: true }),
                    (QualifiedName::new("sch", "it's"), SequenceState { last_value: i64::MIN, is_called: false }),
                ],
                "piece {piece}"
            );
            assert_eq!(c.large_objects.iter().copied().collect::<Vec<_>>(), vec![16402, 16403, 16404], "piece {piece}");
            assert_eq!(counts(&c), vec![(QualifiedName::new("public", "t"), 1)]);
        }
    }

    #[test]
    fn long_copy_header_is_still_a_header() {
        let cols: Vec<String> = (0..2000).map(|i| format!("\"column number {i}\"")).collect();
        let text = format!("COPY public.wide ({}) FROM stdin;\n1\n\\.\n", cols.join(", "));
        assert!(text.len() > 4096);
        let mut c = DumpFacts::default();
        for chunk in text.as_bytes().chunks(1000) {
            c.update(chunk);
        }
        assert_eq!(counts(&c), vec![(QualifiedName::new("public", "wide"), 1)]);
    }
}

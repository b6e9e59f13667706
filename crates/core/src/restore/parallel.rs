//! Loading a plain dump into a database over several sessions: each is a psql process in psql's
//! restricted mode for the dump's statements, plus (with more than one session) a libpq
//! connection of its own that loads table data (COPY rows) without passing them through psql.
//!
//! Safety: each psql starts with `\restrict KEY` under a key chosen at random for this load,
//! so psql refuses every backslash command that reaches it (`\!`, `\copy … from program`, `\o |cmd`,
//! also mid-line), whatever the dump contains. The dump's own `\restrict`/`\unrestrict` lines are
//! dropped here (under our key psql would reject them); the scanner keeps COPY data apart, so a row
//! that reads `\restrict x` is data, not a command. The COPY connection runs only the session
//! settings and pg_dump's own `COPY … FROM stdin` form (anything else is refused before), and
//! sends the rows as protocol data: libpq has no meta-commands to run.
//!
//! Speed: a plain dump is one sequential stream, so handing out whole tables would leave a session
//! idle while the reader feeds another one. Instead the stream is cut along pg_dump's own TOC:
//! - everything is serial (session 0, in dump order) except
//! - `TABLE DATA` COPY blocks, cut into row batches that any session loads, and
//! - `INDEX` and `CONSTRAINT` entries (index and primary-key/unique builds), which any session runs.
//!
//! Switching between serial and parallel work waits for the other side to finish (a barrier), so
//! the pre-data section is complete before data loads, all data before indexes are built, and
//! foreign keys, triggers, matview refreshes and ACLs run afterwards in dump order. Comments met
//! between index builds wait for the next barrier instead of forcing one. Every job carries the
//! session settings in force where it was cut (`SET search_path`, `default_tablespace`, …), since
//! it may run on a session that did not see them. Memory stays flat: at most one batch per session
//! is queued.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::sqlscan::{build_table, touches_no_table, Event, Scanner, StatementKind, Toc};
use crate::db::{tail_lines, DbError, PgTools, Running};
use crate::libpq::Conn;
use crate::util::lock;

/// Rows of one table are handed out in batches of about this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// Serial statements are written in writes of about this size.
const SERIAL_FLUSH_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Sessions to load with (1: one psql session, the dump in order).
    pub jobs: usize,
    /// Leave out `ALTER … OWNER TO` (restoring as a role that cannot take ownership).
    pub no_owner: bool,
    /// Leave out GRANT/REVOKE/ALTER DEFAULT PRIVILEGES.
    pub no_privileges: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { jobs: default_jobs(), no_owner: false, no_privileges: false }
    }
}

/// One session per CPU: the server's work dominates a restore, and it runs on the same machine
/// in the common case.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub sessions: usize,
    /// COPY blocks, and the batches they were cut into.
    pub copy_blocks: u64,
    pub copy_batches: u64,
    /// Index/constraint builds run in parallel.
    pub parallel_builds: u64,
    /// The dump's own `\restrict`/`\unrestrict` lines, dropped.
    pub restrict_lines_dropped: u64,
    pub owner_statements_skipped: u64,
    pub privilege_statements_skipped: u64,
    /// COPY blocks the read-ahead loaded (on a session of their own, while the loader went on).
    pub tables_read_ahead: u64,
}

/// The longest statement or COPY row held in memory: PostgreSQL refuses more (1 GB) anyway,
/// and a small gzip file could otherwise expand into one line that fills the memory.
const MAX_PENDING_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("psql session {session} of {sessions} failed ({status}): {stderr} — an SQL statement of the backup failed on this server: if it names a missing role, create it or restore with --no-owner --no-privileges; otherwise try another backup (ef-backup list)")]
    Session { session: usize, sessions: usize, status: String, stderr: String },
    #[error("session {session} of {sessions} lost its connection to the server, or could not make one ({detail}) — the backup is not at fault: check that the server is up (it may have restarted, or an administrator ended the session) and run the restore again")]
    Lost { session: usize, sessions: usize, detail: String },
    #[error("loading rows of {table} (session {session} of {sessions}) failed: {err} — the backup's data does not fit the table this server created from it; try another backup (ef-backup list)")]
    Copy { table: String, session: usize, sessions: usize, err: String },
    /// Something pg_dump never writes; it never reaches psql.
    #[error("the backup holds {what}, which pg_dump never writes: the file was not made by pg_dump or was changed since — that part never reached psql, and what ran before it went with the scratch database; check where the file came from and restore another backup (ef-backup list)")]
    Refused { what: String },
    #[error("psql session {session} of {sessions} stopped running statements: it read part of the backup differently from ef-backup (a quote or comment left open by text or a setting pg_dump never writes) and took ef-backup's own statements for part of it — the file was not made by pg_dump or was changed since; what ran went with the scratch database; check where the file came from and restore another backup (ef-backup list)")]
    Desync { session: usize, sessions: usize },
    #[error("the backup ends inside the rows of {table}, without the `\\.` line that ends them: the file was cut or changed after pg_dump wrote it — nothing of it is kept (the scratch database is dropped); restore another backup (ef-backup list)")]
    Unterminated { table: String },
    #[error("reading ahead to load {table} stopped in its rows: {err} — the backup could not be read to the end of that table; if the restore reports no other cause, try again or restore with --jobs 1")]
    ReadAhead { table: String, err: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

enum Job {
    /// Bytes for session 0, in order; no reply.
    Serial(Vec<u8>),
    /// Bytes any session may run; counted until the session has run them.
    Parallel(Vec<u8>),
    /// A batch of COPY rows any session may load, over its libpq connection: `buf` holds the
    /// session settings, then the COPY statement, then the rows. Counted like `Parallel`.
    /// `ahead`: the read-ahead's block this batch belongs to (counted there, not in
    /// `outstanding`).
    Copy { buf: Vec<u8>, settings_len: usize, statement_len: usize, ahead: Option<usize> },
    /// Reply once everything sent to this session before has run.
    Sync(Sender<()>),
}

/// What the sessions share with the loader: how much parallel work is still running, and the
/// first failure.
struct Shared {
    state: Mutex<SharedState>,
    changed: Condvar,
    /// Batch buffers written out, for the next batches: the same few buffers go round, so
    /// memory stays flat however big the database (fresh 4 MiB buffers fragment the heap).
    spare: Mutex<Vec<Vec<u8>>>,
}

#[derive(Default)]
struct SharedState {
    outstanding: usize,
    failure: Option<LoadError>,
    /// Set by the first failure or an abandoned load, never cleared (the failure itself is
    /// taken by whoever reports it): queued batches are then dropped, not loaded.
    over: bool,
    /// Who loads each `TABLE DATA` COPY block, by its number in the dump (claimed by whoever
    /// gets there first).
    blocks: Vec<Option<Block>>,
    /// The loader has run everything before the first table's rows: the tables exist.
    data_started: bool,
    /// The loader is past the tables' rows: nothing is left to read ahead for.
    ahead_stop: bool,
    /// COPY batches the read-ahead sent.
    ahead_batches: u64,
    /// The read-ahead's blocks not loaded yet, by table (kept beside `blocks` so that asking
    /// costs the same with a hundred thousand tables).
    ahead_open: std::collections::HashMap<String, usize>,
    ahead_open_total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Loader,
    /// Loaded once every batch is sent (`sent`) and loaded (`loading` back to 0).
    Ahead {
        table: String,
        sent: bool,
        loading: usize,
    },
}

impl SharedState {
    /// Claims block `k` for the loader or the read-ahead; false when the other has it.
    fn claim(&mut self, k: usize, block: Block) -> bool {
        if self.blocks.len() <= k {
            self.blocks.resize(k + 1, None);
        }
        if self.blocks[k].is_some() {
            return false;
        }
        if let Block::Ahead { table, .. } = &block {
            *self.ahead_open.entry(table.clone()).or_default() += 1;
            self.ahead_open_total += 1;
        }
        self.blocks[k] = Some(block);
        true
    }

    /// A read-ahead block of `table` (of any table, for None) is still loading.
    fn ahead_loading(&self, table: Option<&str>) -> bool {
        match table {
            None => self.ahead_open_total > 0,
            Some(t) => self.ahead_open.get(t).is_some_and(|n| *n > 0),
        }
    }

    /// Counts a batch of read-ahead block `k` sent (`by` 1), loaded (-1), or the block's last
    /// batch sent (`last`).
    fn ahead_block(&mut self, k: usize, by: isize, last: bool) {
        if let Some(Some(Block::Ahead { sent, loading, table })) = self.blocks.get_mut(k) {
            let was_open = !(*sent && *loading == 0);
            *loading = loading.saturating_add_signed(by);
            *sent |= last;
            if was_open && *sent && *loading == 0 {
                tracing::debug!("read-ahead: {table} loaded (block {k})");
                if let Some(n) = self.ahead_open.get_mut(table.as_str()) {
                    *n -= 1;
                }
                self.ahead_open_total -= 1;
            }
        }
    }
}

impl Shared {
    fn fail(&self, err: LoadError) {
        let mut s = lock(&self.state);
        s.failure.get_or_insert(err);
        s.over = true;
        self.changed.notify_all();
    }

    /// A parallel job has run: one less outstanding.
    fn done_one(&self) {
        let mut s = lock(&self.state);
        s.outstanding -= 1;
        self.changed.notify_all();
    }

    /// A batch of read-ahead block `k` is loaded.
    fn ahead_batch_done(&self, k: usize) {
        let mut s = lock(&self.state);
        s.ahead_block(k, -1, false);
        self.changed.notify_all();
    }

    /// A written batch buffer goes back for the next batches.
    fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        lock(&self.spare).push(buf);
    }

    fn failure(&self) -> Option<LoadError> {
        let mut s = lock(&self.state);
        s.failure.take()
    }
}

/// A random key of letters and digits (psql accepts only those).
fn random_key() -> Result<String, DbError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| DbError::Tool { tool: "ef-backup".into(), detail: format!("no randomness for the restrict key: {e}") })?;
    Ok(raw.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect())
}

/// One psql session of a load.
struct Session {
    index: usize,
    child: Arc<Mutex<Option<Child>>>,
    /// None once closed: psql ends its session at end of input.
    stdin: Option<std::io::BufWriter<ChildStdin>>,
    /// Our sync markers as psql prints them.
    markers: Arc<Markers>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    marker_prefix: String,
    next_marker: u64,
    /// For asking the server whether this session's backend is idle while a marker is awaited.
    probe: Probe,
    /// psql stopped running statements: see [`Session::sync`].
    stuck: bool,
}

/// A connection of this process that looks at a session's backend in `pg_stat_activity`.
struct Probe {
    tools: PgTools,
    db: String,
    conn: Option<Conn>,
}

impl Probe {
    /// When backend `pid` last changed state, if it is idle now (None: running a statement,
    /// gone, or not known).
    fn idle_since(&mut self, pid: u32) -> Option<String> {
        if self.conn.is_none() {
            self.conn = self.tools.connect(&self.db, None).ok();
        }
        let sql = format!("SELECT state_change::text FROM pg_catalog.pg_stat_activity WHERE pid = {pid} AND state LIKE 'idle%'");
        match self.conn.as_mut()?.query(&sql) {
            Ok(rows) => rows.into_iter().next().and_then(|r| r.into_iter().next()),
            Err(_) => {
                self.conn = None;
                None
            }
        }
    }
}

/// How often a wait for a marker asks whether the session's backend is idle: twice the same
/// idle state in a row, and psql has sat on ef-backup's statement for this long.
const STUCK_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// What psql printed of one session's sync markers: the highest number, and whether its output
/// has ended (psql exited).
///
/// The dump's SQL can print lines that look like markers (it can read our marker queries in
/// `pg_stat_activity` and print thousands of copies): a forged marker can at most end one of
/// our waits early — an order of statements the dump's own SQL decides anyway — but never
/// stall psql, whose output is always read to its end, nor fill memory.
#[derive(Default)]
struct Markers {
    state: Mutex<MarkersSeen>,
    changed: Condvar,
}

#[derive(Default)]
struct MarkersSeen {
    seen: u64,
    ended: bool,
    /// The session's backend, as psql printed it before the dump's first byte.
    pid: Option<u32>,
}

/// The longest line start kept while reading psql's output: a marker is far shorter, and a
/// statement may print a line of a gigabyte.
const MARKER_LINE_MAX: usize = 128;

/// Reads psql's output (`out`) to its end, noting each line that is `prefix` and a number, and
/// the first that is `pid_prefix` and a number. Statements print their results too (setval,
/// lo_open…): only our lines matter.
fn watch_markers(out: impl std::io::Read, prefix: &[u8], pid_prefix: &[u8], markers: &Markers) {
    let mut out = BufReader::with_capacity(64 << 10, out);
    let mut head = Vec::with_capacity(MARKER_LINE_MAX);
    let mut long = false;
    let number = |head: &[u8], prefix: &[u8]| {
        head.strip_prefix(prefix).and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.trim_end().parse::<u64>().ok())
    };
    let note = |head: &[u8]| {
        if let Some(n) = number(head, prefix) {
            let mut s = lock(&markers.state);
            if n > s.seen {
                s.seen = n;
                markers.changed.notify_all();
            }
        } else if let Some(pid) = number(head, pid_prefix).and_then(|p| u32::try_from(p).ok()) {
            lock(&markers.state).pid.get_or_insert(pid);
        }
    };
    loop {
        let buf = match out.fill_buf() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let read = buf.len();
        let mut rest = buf;
        while !rest.is_empty() {
            let (piece, line_ends) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            if !long && head.len() + piece.len() <= MARKER_LINE_MAX {
                head.extend_from_slice(piece);
            } else {
                long = true;
            }
            match line_ends {
                Some(i) => {
                    if !long {
                        note(&head);
                    }
                    head.clear();
                    long = false;
                    rest = &rest[i..];
                }
                None => rest = &[],
            }
        }
        out.consume(read);
    }
    lock(&markers.state).ended = true;
    markers.changed.notify_all();
}

impl Session {
    fn start(tools: &PgTools, db: &str, index: usize, key: &str, nonce: &str) -> Result<Session, DbError> {
        let Running { mut child, stdout, stderr } = crate::db::spawn(
            tools
                .command_as("psql", db, "ef-backup", &crate::db::KEEPALIVES)
                .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
                .env("PGOPTIONS", SESSION_OPTIONS)
                .stdin(Stdio::piped()),
        )
        .map_err(|err| DbError::Spawn { tool: tools.tool("psql").display().to_string(), err })?;
        let stdin = child.stdin.take().expect("piped stdin");
        // Not the restrict key: the markers go to the server, where the dump's SQL can see them.
        let marker_prefix = format!("ef_sync_{nonce}_{index}_");
        let pid_prefix = format!("ef_pid_{nonce}_{index}_");
        let markers = Arc::new(Markers::default());
        let (prefix, pid_line, seen) = (marker_prefix.clone().into_bytes(), pid_prefix.clone().into_bytes(), Arc::clone(&markers));
        std::thread::spawn(move || watch_markers(stdout, &prefix, &pid_line, &seen));
        let mut session = Session {
            index,
            child: Arc::new(Mutex::new(Some(child))),
            stdin: Some(std::io::BufWriter::with_capacity(256 << 10, stdin)),
            markers,
            stderr: Some(stderr),
            marker_prefix,
            next_marker: 0,
            probe: Probe { tools: tools.clone(), db: db.to_string(), conn: None },
            stuck: false,
        };
        // Restricted before the first byte of the dump: from here on psql runs no meta-command
        // but `\unrestrict` with this key.
        session.write(format!("\\restrict {key}\n").as_bytes());
        // Which backend is this session's, for `sync` to look at; printed before the dump's first
        // byte, so the dump cannot forge it.
        session.write(format!("SELECT '{pid_prefix}' || pg_catalog.pg_backend_pid();\n").as_bytes());
        Ok(session)
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        self.stdin.as_mut().is_some_and(|w| w.write_all(bytes).is_ok())
    }

    fn flush(&mut self) -> bool {
        self.stdin.as_mut().is_some_and(|w| w.flush().is_ok())
    }

    /// Writes a marker query and waits until psql has printed it, i.e. has run everything before.
    ///
    /// psql may never run it: where psql reads the dump differently from the scanner (a quote a
    /// crafted file leaves open in psql's eyes only — psql's lexer follows settings the server
    /// reports, which SQL can change behind the scanner's back), it takes ef-backup's statements
    /// for the inside of a string and waits for more input, forever. So a long wait looks at the
    /// session's backend: idle, in the same state twice `STUCK_CHECK` apart, means psql holds
    /// the marker without sending anything — the session is `stuck` and the load fails.
    fn sync(&mut self) -> bool {
        self.next_marker += 1;
        let marker = format!("{}{}", self.marker_prefix, self.next_marker);
        if !(self.write(format!("SELECT '{marker}';\n").as_bytes()) && self.flush()) {
            return false;
        }
        let n = self.next_marker;
        let started = std::time::Instant::now();
        let mut next_check = STUCK_CHECK;
        let mut idle_before: Option<String> = None;
        loop {
            let (s, _) = self
                .markers
                .changed
                .wait_timeout_while(lock(&self.markers.state), std::time::Duration::from_millis(500), |s| s.seen < n && !s.ended)
                .unwrap_or_else(|e| e.into_inner());
            if s.seen >= n || s.ended {
                return s.seen >= n;
            }
            let pid = s.pid;
            drop(s);
            if started.elapsed() < next_check {
                continue;
            }
            next_check += STUCK_CHECK;
            let idle = pid.and_then(|pid| self.probe.idle_since(pid));
            if idle.is_some() && idle == idle_before {
                tracing::debug!("load: psql session {} holds its marker with an idle backend: stuck", self.index);
                self.stuck = true;
                return false;
            }
            idle_before = idle;
        }
    }

    /// Ends the session (after `\unrestrict`) and tells how psql exited.
    fn close(mut self, key: &str, sessions: usize) -> Result<(), LoadError> {
        let wrote = self.write(format!("\\unrestrict {key}\n").as_bytes()) && self.flush();
        self.failed(sessions, wrote)
    }

    /// psql's exit status and the end of its stderr, as an error (None: it exited 0 and `ok`).
    fn failed(mut self, sessions: usize, ok: bool) -> Result<(), LoadError> {
        let child = lock(&self.child).take();
        if self.stuck {
            // At the end of its input psql would send the half statement it holds.
            if let Some(mut c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(LoadError::Desync { session: self.index, sessions });
        }
        drop(self.stdin.take());
        let status = match child {
            Some(mut c) => c.wait().map_err(|err| DbError::Spawn { tool: "psql".into(), err })?,
            None => return Err(LoadError::Session { session: self.index, sessions, status: "killed".into(), stderr: String::new() }),
        };
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if status.success() && ok {
            return Ok(());
        }
        let stderr = tail_lines(&stderr, 4);
        if stderr.contains("backslash commands are restricted") {
            return Err(LoadError::Refused { what: format!("a psql meta-command (psql refused it: {stderr})") });
        }
        if status.code() == Some(2) {
            // psql's "the connection to the server went bad".
            return Err(LoadError::Lost { session: self.index, sessions, detail: stderr });
        }
        let status = match status.code() {
            Some(3) => "exit status 3: an SQL statement failed".to_string(),
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        Err(LoadError::Session { session: self.index, sessions, status, stderr })
    }
}

/// Where a session's COPY connection goes: made on its first batch.
struct CopyTarget {
    tools: PgTools,
    db: String,
}

/// The table a COPY statement loads, for error messages.
fn copy_table(statement: &[u8]) -> String {
    let text = String::from_utf8_lossy(statement);
    let line = text.lines().map(str::trim).find(|l| l.starts_with("COPY ")).unwrap_or("");
    let name = line.trim_start_matches("COPY ").split(" (").next().unwrap_or("").trim_end_matches(" FROM stdin;");
    crate::db::escape_controls(&name.chars().take(120).collect::<String>())
}

/// A session's libpq connection for COPY rows, and the settings last run on it.
#[derive(Default)]
struct CopyConn {
    conn: Option<Conn>,
    applied: Vec<u8>,
}

impl CopyConn {
    fn connect(&mut self, target: &CopyTarget) -> Result<(), String> {
        self.conn = Some(target.tools.connect(&target.db, Some(SESSION_OPTIONS)).map_err(|e| e.to_string())?);
        self.applied.clear();
        Ok(())
    }

    /// Loads one batch (connecting first if needed). The batch's settings run only when they
    /// differ from the last ones run here: most batches are a table's next rows, and nothing
    /// but COPY runs on this connection.
    fn copy_batch(&mut self, target: &CopyTarget, buf: &[u8], settings_len: usize, statement_len: usize) -> Result<(), String> {
        if self.conn.is_none() {
            self.connect(target)?;
        }
        let c = self.conn.as_mut().expect("connected");
        let (settings, rest) = buf.split_at(settings_len);
        let (statement, rows) = rest.split_at(statement_len);
        if !settings.is_empty() && settings != self.applied.as_slice() {
            self.applied.clear();
            c.execute(settings).map_err(|e| e.to_string())?;
            self.applied.extend_from_slice(settings);
        }
        c.copy_in(statement, rows).map_err(|e| e.to_string())
    }

    /// The connection is gone (or was never made): the server's side, not the backup's.
    fn lost(&self) -> bool {
        self.conn.as_ref().is_none_or(Conn::lost)
    }
}

/// Where a session's work comes from.
struct Queues {
    /// This session's own (the serial statements, for session 0); closed when the load ends.
    private: Receiver<Job>,
    /// The loader's COPY batches and its index/key builds, for any session.
    copies: Option<Receiver<Job>>,
    builds: Option<Receiver<Job>>,
    /// The read-ahead's batches, for any session.
    lane: Option<Receiver<Job>>,
    /// This session takes the read-ahead's batches before the loader's.
    lane_first: bool,
}

impl Queues {
    /// The next job, None once the load is over. Rows go before builds: the read-ahead's table
    /// and its builds are what a restore waits for last, so a session with no rows of the
    /// loader's to load helps with that table before building earlier tables' indexes. The
    /// read-ahead's own session takes its rows first: loading that table is its job.
    fn next(&mut self) -> Option<Job> {
        loop {
            match self.private.try_recv() {
                Ok(j) => return Some(j),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let order = if self.lane_first { [&self.lane, &self.copies, &self.builds] } else { [&self.copies, &self.lane, &self.builds] };
            for rx in order.into_iter().flatten() {
                if let Ok(j) = rx.try_recv() {
                    return Some(j);
                }
            }
            let never = crossbeam_channel::never();
            let (copies, builds, lane) = (
                self.copies.clone().unwrap_or_else(|| never.clone()),
                self.builds.clone().unwrap_or_else(|| never.clone()),
                self.lane.clone().unwrap_or_else(|| never.clone()),
            );
            select! {
                recv(self.private) -> j => return j.ok(),
                recv(copies) -> j => match j { Ok(j) => return Some(j), Err(_) => self.copies = None },
                recv(builds) -> j => match j { Ok(j) => return Some(j), Err(_) => self.builds = None },
                recv(lane) -> j => match j { Ok(j) => return Some(j), Err(_) => self.lane = None },
            }
        }
    }
}

/// Server settings of every session: a scratch database is the unit of atomicity, nothing in it
/// counts before the swap, whose own commit flushes the WAL written before it.
const SESSION_OPTIONS: &str = "-c client_min_messages=warning -c synchronous_commit=off";

/// Runs one session's jobs until the loader hangs up.
fn work(mut session: Session, mut queues: Queues, shared: Arc<Shared>, key: String, sessions: usize, target: CopyTarget) {
    // With several sessions the rows go over a connection of our own: made now, while session 0
    // runs the dump's first statements, not when the first batch is waiting for it. A failure
    // here is tried again, and reported, at the first batch.
    let mut conn = CopyConn::default();
    if sessions > 1 {
        let _ = conn.connect(&target);
    }
    while let Some(job) = queues.next() {
        // A Sync's reply is held until a failure is recorded, so the loader, woken by the
        // dropped reply, finds psql's own reason instead of a bare "ended early".
        let mut reply = None;
        let ok = match job {
            Job::Serial(bytes) => session.write(&bytes),
            Job::Copy { buf, settings_len, statement_len, ahead } => {
                // After a failure anywhere the load is over: no more batches go to the server.
                let failed_elsewhere = lock(&shared.state).over;
                let loaded = if failed_elsewhere {
                    Err("not loaded: another session failed first".to_string())
                } else {
                    conn.copy_batch(&target, &buf, settings_len, statement_len)
                };
                let table = copy_table(&buf[settings_len..settings_len + statement_len]);
                shared.recycle(buf);
                match loaded {
                    Ok(()) if let Some(k) = ahead => shared.ahead_batch_done(k),
                    Ok(()) => shared.done_one(),
                    Err(err) => {
                        let lost = conn.lost();
                        shared.fail(if lost {
                            LoadError::Lost { session: session.index, sessions, detail: err }
                        } else {
                            LoadError::Copy { table, session: session.index, sessions, err }
                        });
                        drop(session.failed(sessions, false));
                        return;
                    }
                }
                true
            }
            Job::Parallel(bytes) => {
                let written = session.write(&bytes);
                shared.recycle(bytes);
                let ok = written && session.sync();
                if ok {
                    shared.done_one();
                }
                ok
            }
            Job::Sync(r) => {
                let ok = session.sync();
                if ok {
                    let _ = r.send(());
                } else {
                    reply = Some(r);
                }
                ok
            }
        };
        if !ok {
            let index = session.index;
            let err = session.failed(sessions, false).err().unwrap_or(LoadError::Session {
                session: index,
                sessions,
                status: "stopped answering".into(),
                stderr: String::new(),
            });
            shared.fail(err);
            drop(reply);
            return;
        }
    }
    if let Err(e) = session.close(&key, sessions) {
        shared.fail(e);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serial,
    /// COPY batches in flight.
    Data,
    /// Index and constraint builds in flight.
    Builds,
}

/// A COPY block being read.
struct Copy {
    /// Settings and the COPY statement that start every batch.
    head: Vec<u8>,
    settings_len: usize,
    /// The batch being filled: `head`, then rows.
    batch: Vec<u8>,
    parallel: bool,
    /// The read-ahead loads this block: its rows are read past.
    skip: bool,
    /// The table, as the COPY statement names it (for messages).
    table: String,
}

/// The session settings in force at a point of the dump, in order of first appearance.
#[derive(Default)]
struct Settings {
    list: Vec<(String, Vec<u8>)>,
    /// Changes with them.
    version: u64,
}

impl Settings {
    /// Takes a setting in; refuses the file when what is in force grows past what pg_dump
    /// writes (see `check`).
    fn set(&mut self, name: String, text: &[u8]) -> Result<(), LoadError> {
        // Replayed in the order they take effect: `RESET ALL` undoes everything before it, and
        // a setting set again moves to the end (an in-place update would replay
        // `SET x; RESET ALL` for `RESET ALL; SET x; RESET ALL`, leaving a session with `x` the
        // scanner believes reset).
        if name == "all" {
            self.list.clear();
        } else {
            self.list.retain(|(n, _)| *n != name);
        }
        self.list.push((name, text.to_vec()));
        self.version += 1;
        self.check()
    }

    fn text(&self) -> Vec<u8> {
        self.list.iter().flat_map(|(_, t)| t.iter().copied()).collect()
    }

    /// Refuses settings no pg_dump writes: they are kept, and replayed before every batch and
    /// on every session, so a file could otherwise pile up memory (a comment of a gigabyte
    /// before each of many `SET`s) out of a small gzip file.
    fn check(&self) -> Result<(), LoadError> {
        // Counted before summed: each `set` goes through the whole list.
        if self.list.len() > MAX_SETTINGS {
            return Err(LoadError::Refused { what: format!("more than {MAX_SETTINGS} different session settings (SET …) in force at once") });
        }
        let bytes: usize = self.list.iter().map(|(_, t)| t.len()).sum();
        if bytes > MAX_SETTINGS_BYTES {
            return Err(LoadError::Refused {
                what: format!("session settings (SET …) of more than {} KiB in force at once", MAX_SETTINGS_BYTES >> 10),
            });
        }
        Ok(())
    }
}

/// The session settings in force at once, and their text: pg_dump writes about a dozen short
/// `SET`s.
const MAX_SETTINGS: usize = 1000;
const MAX_SETTINGS_BYTES: usize = 1 << 20;
/// One index or key entry (pg_dump writes one `CREATE INDEX` or `ALTER TABLE … ADD CONSTRAINT`).
const MAX_ENTRY_BYTES: usize = 64 << 20;
/// The comments on indexes held back until the builds are done.
const MAX_DEFERRED_BYTES: usize = 256 << 20;

/// Feeds a dump to the sessions: `feed` the decompressed SQL as it arrives, then `finish`.
/// Dropping a loader that has not finished kills its sessions.
pub struct Loader {
    scanner: Scanner,
    d: Dispatch,
    ahead: Option<Ahead>,
}

/// Where each scanned piece of the dump goes.
struct Dispatch {
    opts: LoadOptions,
    serial_tx: Sender<Job>,
    private_txs: Vec<Sender<Job>>,
    shared_tx: Option<Sender<Job>>,
    builds_tx: Option<Sender<Job>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    children: Vec<Arc<Mutex<Option<Child>>>>,
    mode: Mode,
    toc: Option<Toc>,
    settings: Settings,
    serial_version: u64,
    serial_buf: Vec<u8>,
    copy: Option<Copy>,
    /// An index/constraint entry being collected (it may hold several statements), and the
    /// table it builds on (None: not known).
    entry: Option<(Vec<u8>, Option<String>)>,
    /// Builds that wait for the read-ahead to load their table (or, table unknown, every table).
    pending: Vec<(Option<String>, Vec<u8>)>,
    /// `TABLE DATA` COPY blocks met so far.
    blocks_seen: usize,
    /// Comments met between builds, run at the next barrier.
    deferred: Vec<u8>,
    stats: LoadStats,
    finished: bool,
    started: std::time::Instant,
}

impl Loader {
    /// Starts `opts.jobs` psql sessions on `db`, each in restricted mode.
    pub fn start(tools: &PgTools, db: &str, opts: LoadOptions) -> Result<Loader, LoadError> {
        let jobs = opts.jobs.max(1);
        let key = random_key()?;
        let nonce = random_key()?;
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Condvar::new(), spare: Mutex::default() });
        let (shared_tx, shared_rx) = bounded::<Job>(jobs);
        let (builds_tx, builds_rx) = bounded::<Job>(jobs);
        let mut private_txs = Vec::new();
        let mut workers = Vec::new();
        let mut children = Vec::new();
        // The read-ahead's rows go to the last session, one batch queued at a time.
        let (lane_tx, lane_rx) = bounded::<Job>(1);
        for index in 0..jobs {
            let session = Session::start(tools, db, index, &key, &nonce)?;
            children.push(Arc::clone(&session.child));
            // Serial jobs are small and many: room for a burst without blocking the reader.
            let (tx, rx) = bounded::<Job>(64);
            private_txs.push(tx);
            let (shared, key) = (Arc::clone(&shared), key.clone());
            let target = CopyTarget { tools: tools.clone(), db: db.to_string() };
            // The read-ahead's rows go to the last session first.
            let queues = Queues {
                private: rx,
                copies: Some(shared_rx.clone()),
                builds: Some(builds_rx.clone()),
                lane: (jobs > 1).then(|| lane_rx.clone()),
                lane_first: index == jobs - 1,
            };
            workers.push(std::thread::spawn(move || work(session, queues, shared, key, jobs, target)));
        }
        let d = Dispatch {
            opts: LoadOptions { jobs, ..opts },
            serial_tx: private_txs[0].clone(),
            private_txs,
            shared_tx: Some(shared_tx),
            builds_tx: Some(builds_tx),
            shared,
            workers,
            children,
            mode: Mode::Serial,
            toc: None,
            settings: Settings::default(),
            serial_version: 0,
            serial_buf: Vec::new(),
            copy: None,
            entry: None,
            pending: Vec::new(),
            blocks_seen: 0,
            deferred: Vec::new(),
            stats: LoadStats { sessions: jobs, ..LoadStats::default() },
            finished: false,
            started: std::time::Instant::now(),
        };
        let ahead = (jobs > 1).then(|| Ahead {
            scanner: Scanner::new(),
            a: AheadScan {
                shared: Arc::clone(&d.shared),
                lane: lane_tx,
                opts: d.opts,
                toc: None,
                settings: Settings::default(),
                blocks_seen: 0,
                loading: None,
                why: None,
            },
        });
        Ok(Loader { scanner: Scanner::new(), d, ahead })
    }

    /// The read-ahead of this load (once; None with one session): run it on a thread of its
    /// own, fed the same dump from its start.
    pub fn take_ahead(&mut self) -> Option<Ahead> {
        self.ahead.take()
    }

    /// Scans and dispatches the next piece of the dump.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), LoadError> {
        let d = &mut self.d;
        let mut fed = self.scanner.feed(data, &mut |ev| d.on_event(ev));
        if fed.is_ok() && self.scanner.buffered() > MAX_PENDING_BYTES {
            fed = Err(LoadError::Refused { what: format!("a statement or COPY row longer than {} MiB", MAX_PENDING_BYTES >> 20) });
        }
        if fed.is_err() {
            // Fed no more: the read-ahead, which may be waiting for the data to start (or
            // hold the reader of the stored bytes back), must stop now.
            let mut s = lock(&self.d.shared.state);
            s.over = true;
            self.d.shared.changed.notify_all();
        }
        fed
    }

    /// End of the dump: waits until every session has run everything and exited 0.
    pub fn finish(mut self) -> Result<LoadStats, LoadError> {
        // psql would end the COPY at the end of its input and keep what came after as rows (our
        // own `\unrestrict` line among them); a batch would never be sent. Neither is the dump.
        if self.scanner.in_copy() {
            return Err(LoadError::Unterminated { table: self.d.copy.as_ref().map(|c| c.table.clone()).unwrap_or_default() });
        }
        let d = &mut self.d;
        self.scanner.finish(&mut |ev| d.on_event(ev))?;
        self.d.end()
    }
}

impl Dispatch {
    fn end(&mut self) -> Result<LoadStats, LoadError> {
        self.enter(Mode::Serial)?;
        {
            let mut s = lock(&self.shared.state);
            s.ahead_stop = true;
            self.shared.changed.notify_all();
        }
        self.settle(true)?;
        self.flush_serial()?;
        self.finished = true;
        self.hang_up();
        self.stats.copy_batches += lock(&self.shared.state).ahead_batches;
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.stats)),
        }
    }

    /// Drops every sender, which ends every session (each closes with `\unrestrict` and
    /// exits), and waits for the workers.
    fn hang_up(&mut self) {
        self.shared_tx = None;
        self.builds_tx = None;
        self.private_txs.clear();
        let (dummy, _) = bounded(0);
        self.serial_tx = dummy;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn check(&self) -> Result<(), LoadError> {
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn settings_text(&self) -> Vec<u8> {
        self.settings.text()
    }

    fn on_event(&mut self, ev: Event<'_>) -> Result<(), LoadError> {
        match ev {
            Event::Toc(toc) => {
                self.flush_entry()?;
                self.toc = Some(toc);
            }
            Event::Statement { text, kind } => self.statement(text, kind)?,
            Event::Meta { command, arg, .. } => {
                if command == b"restrict" || command == b"unrestrict" {
                    self.stats.restrict_lines_dropped += 1;
                } else {
                    // Never passed on: psql would refuse it in restricted mode anyway, but `\;`
                    // is no meta-command to psql, and joins a COPY to a statement this loader
                    // would not expect data after.
                    // The file's text, shown on a terminal: never a raw escape sequence.
                    let arg: String = String::from_utf8_lossy(arg).chars().take(60).collect();
                    let command = crate::db::escape_controls(&String::from_utf8_lossy(command));
                    return Err(LoadError::Refused { what: format!("the psql meta-command \\{command} {}", crate::db::escape_controls(&arg)) });
                }
            }
            Event::Incomplete { text } => self.serial(text)?,
            Event::CopyData(rows) => match self.copy.as_mut() {
                Some(c) if c.skip => {}
                Some(c) if c.parallel => {
                    c.batch.extend_from_slice(rows);
                    if c.batch.len() - c.head.len() >= BATCH_BYTES {
                        self.dispatch_batch()?;
                    }
                }
                _ => self.serial(rows)?,
            },
            Event::CopyEnd(line) => match self.copy.as_ref() {
                Some(c) if c.skip => self.copy = None,
                Some(c) if c.parallel => {
                    self.dispatch_batch()?;
                    self.copy = None;
                }
                _ => {
                    self.serial(line)?;
                    self.copy = None;
                }
            },
        }
        Ok(())
    }

    fn toc_kind(&self) -> &str {
        self.toc.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
    }

    fn statement(&mut self, text: &[u8], kind: StatementKind) -> Result<(), LoadError> {
        let parallel = self.opts.jobs > 1;
        match kind {
            // pg_dump --no-owner leaves these out too: they switch to the object's owner.
            StatementKind::SessionSetting { name } if self.opts.no_owner && name == "session_authorization" => {
                self.stats.owner_statements_skipped += 1;
            }
            StatementKind::SessionSetting { name } => {
                // The entry collected so far ran under the previous settings.
                self.flush_entry()?;
                self.settings.set(name, text)?;
            }
            StatementKind::Owner if self.opts.no_owner => self.stats.owner_statements_skipped += 1,
            StatementKind::Privilege if self.opts.no_privileges => self.stats.privilege_statements_skipped += 1,
            StatementKind::OtherCopy => return Err(foreign_copy(text)),
            StatementKind::CopyFromStdin { .. } => {
                if !is_text_copy(text) {
                    return Err(foreign_copy(text));
                }
                self.flush_entry()?;
                self.stats.copy_blocks += 1;
                if parallel && self.toc_kind() == "TABLE DATA" {
                    let k = self.blocks_seen;
                    self.blocks_seen += 1;
                    if !lock(&self.shared.state).claim(k, Block::Loader) {
                        self.stats.tables_read_ahead += 1;
                        self.copy =
                            Some(Copy { head: Vec::new(), batch: Vec::new(), settings_len: 0, parallel: true, skip: true, table: copy_table(text) });
                        return Ok(());
                    }
                    self.enter(Mode::Data)?;
                    if k == 0 {
                        // Everything before the first table's rows has run: the read-ahead may load.
                        let mut s = lock(&self.shared.state);
                        s.data_started = true;
                        self.shared.changed.notify_all();
                    }
                    let mut head = self.settings_text();
                    let settings_len = head.len();
                    head.extend_from_slice(text);
                    self.copy =
                        Some(Copy { batch: self.fresh_batch(&head), head, settings_len, parallel: true, skip: false, table: copy_table(text) });
                } else {
                    self.serial(text)?;
                    self.copy =
                        Some(Copy { head: Vec::new(), batch: Vec::new(), settings_len: 0, parallel: false, skip: false, table: copy_table(text) });
                }
            }
            _ if parallel && matches!(self.toc_kind(), "INDEX" | "CONSTRAINT") => {
                self.enter(Mode::Builds)?;
                if self.entry.is_none() {
                    self.entry = Some((self.settings_text(), build_table(text)));
                }
                let entry = &mut self.entry.as_mut().expect("entry").0;
                entry.extend_from_slice(text);
                if entry.len() > MAX_ENTRY_BYTES {
                    return Err(LoadError::Refused { what: format!("an index or key entry of more than {} MiB", MAX_ENTRY_BYTES >> 20) });
                }
            }
            // A comment on an index only needs the index: it waits for the builds to finish.
            _ if self.mode == Mode::Builds && self.toc_kind() == "COMMENT" => {
                self.flush_entry()?;
                self.deferred.extend_from_slice(text);
                if self.deferred.len() > MAX_DEFERRED_BYTES {
                    return Err(LoadError::Refused {
                        what: format!("more than {} MiB of comments among the index builds", MAX_DEFERRED_BYTES >> 20),
                    });
                }
            }
            _ => self.serial(text)?,
        }
        Ok(())
    }

    /// Session 0, in order, after everything parallel before it.
    fn serial(&mut self, text: &[u8]) -> Result<(), LoadError> {
        self.flush_entry()?;
        self.enter(Mode::Serial)?;
        if self.blocks_seen > 0 {
            self.after_data(text)?;
        }
        if self.serial_version != self.settings.version {
            let settings = self.settings_text();
            self.serial_buf.extend_from_slice(&settings);
            self.serial_version = self.settings.version;
        }
        if text.len() >= SERIAL_FLUSH_BYTES {
            self.flush_serial()?;
            self.check()?;
            return self.serial_tx.send(Job::Serial(text.to_vec())).map_err(|_| self.gone());
        }
        self.serial_buf.extend_from_slice(text);
        if self.serial_buf.len() >= SERIAL_FLUSH_BYTES {
            self.flush_serial()?;
        }
        Ok(())
    }

    fn flush_serial(&mut self) -> Result<(), LoadError> {
        if self.serial_buf.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.serial_buf);
        self.check()?;
        self.serial_tx.send(Job::Serial(bytes)).map_err(|_| self.gone())
    }

    /// The reason a session went away: the worker records it right after it hangs up.
    fn gone(&self) -> LoadError {
        let s = lock(&self.shared.state);
        let (mut s, _) =
            self.shared.changed.wait_timeout_while(s, std::time::Duration::from_secs(30), |s| s.failure.is_none()).unwrap_or_else(|e| e.into_inner());
        s.failure.take().unwrap_or(LoadError::Session { session: 0, sessions: self.opts.jobs, status: "ended early".into(), stderr: String::new() })
    }

    fn parallel(&mut self, bytes: Vec<u8>) -> Result<(), LoadError> {
        self.send_parallel(Job::Parallel(bytes))
    }

    fn send_parallel(&mut self, job: Job) -> Result<(), LoadError> {
        self.check()?;
        {
            let mut s = lock(&self.shared.state);
            s.outstanding += 1;
        }
        let tx = match job {
            Job::Parallel(_) => self.builds_tx.as_ref(),
            _ => self.shared_tx.as_ref(),
        };
        let tx = tx.expect("loader not finished");
        tx.send(job).map_err(|_| self.gone())
    }

    fn dispatch_batch(&mut self) -> Result<(), LoadError> {
        let Some(c) = self.copy.as_mut() else { return Ok(()) };
        if c.batch.len() == c.head.len() {
            return Ok(());
        }
        let next = Self::spare_or_new(&self.shared, &c.head);
        let buf = std::mem::replace(&mut c.batch, next);
        let (settings_len, statement_len) = (c.settings_len, c.head.len() - c.settings_len);
        self.stats.copy_batches += 1;
        self.send_parallel(Job::Copy { buf, settings_len, statement_len, ahead: None })
    }

    fn fresh_batch(&self, head: &[u8]) -> Vec<u8> {
        Self::spare_or_new(&self.shared, head)
    }

    /// A batch buffer that starts with `head`: a spare one when there is one.
    fn spare_or_new(shared: &Shared, head: &[u8]) -> Vec<u8> {
        let spare = lock(&shared.spare).pop();
        let mut batch = spare.unwrap_or_else(|| Vec::with_capacity(head.len() + BATCH_BYTES + (1 << 20)));
        batch.extend_from_slice(head);
        batch
    }

    fn flush_entry(&mut self) -> Result<(), LoadError> {
        let Some((job, table)) = self.entry.take() else { return Ok(()) };
        self.stats.parallel_builds += 1;
        let named = table.as_deref().unwrap_or("(a table not named)").to_string();
        if lock(&self.shared.state).ahead_loading(table.as_deref()) {
            tracing::debug!("load: a build on {named} waits for its rows");
            self.pending.push((table, job));
            return self.dispatch_ready();
        }
        tracing::debug!("load: a build on {named} starts");
        self.parallel(job)
    }

    /// Hands out the waiting builds whose tables the read-ahead has loaded by now.
    fn dispatch_ready(&mut self) -> Result<(), LoadError> {
        let mut i = 0;
        while i < self.pending.len() {
            if lock(&self.shared.state).ahead_loading(self.pending[i].0.as_deref()) {
                i += 1;
                continue;
            }
            let (table, job) = self.pending.remove(i);
            tracing::debug!("load: a build on {} starts", table.as_deref().unwrap_or("(a table not named)"));
            self.parallel(job)?;
        }
        Ok(())
    }

    /// A serial statement met once tables' rows were loading: past the data, the read-ahead
    /// has nothing left to do, and the statement waits for its tables (and the builds waiting
    /// for them) — but for pg_dump's sequence values and large objects, which touch no table
    /// (checked on the statement, not trusted from the TOC comment).
    fn after_data(&mut self, text: &[u8]) -> Result<(), LoadError> {
        {
            let mut s = lock(&self.shared.state);
            if !s.ahead_stop {
                s.ahead_stop = true;
                self.shared.changed.notify_all();
            }
        }
        if matches!(self.toc_kind(), "SEQUENCE SET" | "BLOBS") && touches_no_table(text) {
            return Ok(());
        }
        self.settle(true)
    }

    /// Waits for the work of the current mode to finish before work of another mode starts.
    fn enter(&mut self, mode: Mode) -> Result<(), LoadError> {
        if self.mode == mode {
            return Ok(());
        }
        if self.mode != Mode::Serial {
            self.flush_entry()?;
            self.settle(false)?;
            self.mode = Mode::Serial;
            if !self.deferred.is_empty() {
                let deferred = std::mem::take(&mut self.deferred);
                self.serial(&deferred)?;
            }
        }
        if mode != Mode::Serial {
            self.flush_serial()?;
            self.sync_serial()?;
        }
        tracing::debug!("load: {:?} -> {mode:?} after {:.2} s", self.mode, self.started.elapsed().as_secs_f64());
        self.mode = mode;
        Ok(())
    }

    /// Waits until the parallel work handed out has run; with `ahead`, also until the
    /// read-ahead's tables are loaded and the builds that waited for them have run.
    fn settle(&mut self, ahead: bool) -> Result<(), LoadError> {
        loop {
            self.dispatch_ready()?;
            let mut s = lock(&self.shared.state);
            if let Some(e) = s.failure.take() {
                return Err(e);
            }
            // A build that became ready since `dispatch_ready`: hand it out before waiting.
            if self.pending.iter().any(|(t, _)| !s.ahead_loading(t.as_deref())) {
                continue;
            }
            let busy = s.outstanding > 0 || (ahead && (s.ahead_loading(None) || !self.pending.is_empty()));
            if !busy {
                return Ok(());
            }
            drop(self.shared.changed.wait(s).unwrap_or_else(|e| e.into_inner()));
        }
    }

    fn sync_serial(&self) -> Result<(), LoadError> {
        let (tx, rx) = bounded(1);
        self.check()?;
        self.serial_tx.send(Job::Sync(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Abandoned (a failed session, a damaged backup): stop every psql before it commits more,
        // and let no queued batch reach the server (nor the read-ahead send more).
        lock(&self.shared.state).over = true;
        self.shared.changed.notify_all();
        for child in &self.children {
            if let Some(c) = lock(child).as_mut() {
                let _ = c.kill();
            }
        }
        self.hang_up();
    }
}

/// Loads tables further on in the dump while the loader is busy with earlier ones, the way
/// `pg_restore -j` gives each session a table of its own: fed the same dump from its start (a
/// second decoding of the same stored bytes, see `tee`), it scans past what the loader does and
/// claims each table's COPY block the loader has not reached yet, loading its rows on the last
/// session, alone. The loader reads past the blocks it finds claimed, and builds a table's
/// indexes and keys once its rows are in, while other tables still load.
///
/// It only ever loads `TABLE DATA` rows, under the settings in force where they are, and only
/// once the loader has run everything before the first table's rows; at the first statement
/// among the tables' rows that is not a COPY (pg_dump writes none) it stops reading ahead, and
/// the loader goes on alone. The loader stays the judge of the dump: it reads and checks
/// every byte, and a failure anywhere drops the whole scratch database.
pub struct Ahead {
    scanner: Scanner,
    a: AheadScan,
}

struct AheadScan {
    shared: Arc<Shared>,
    lane: Sender<Job>,
    opts: LoadOptions,
    toc: Option<Toc>,
    settings: Settings,
    blocks_seen: usize,
    loading: Option<AheadCopy>,
    /// Why reading stopped, for a block left half loaded.
    why: Option<String>,
}

struct AheadCopy {
    k: usize,
    table: String,
    head: Vec<u8>,
    settings_len: usize,
    batch: Vec<u8>,
}

impl Ahead {
    /// Scans the next piece of the dump; false once there is nothing more to read ahead for.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        let a = &mut self.a;
        if self.scanner.feed(data, &mut |ev| a.on_event(ev)).is_err() {
            return false;
        }
        if self.scanner.buffered() > MAX_PENDING_BYTES {
            self.a.why = Some(format!("a statement or COPY row longer than {} MiB", MAX_PENDING_BYTES >> 20));
            return false;
        }
        true
    }

    /// Reading the dump failed: a table left half loaded fails the load with `why`.
    pub fn read_failed(mut self, why: String) {
        self.a.why = Some(why);
    }
}

impl AheadScan {
    fn toc_kind(&self) -> &str {
        self.toc.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
    }

    fn stopped(&self) -> bool {
        let s = lock(&self.shared.state);
        s.over || s.ahead_stop
    }

    fn on_event(&mut self, ev: Event<'_>) -> Result<(), ()> {
        match ev {
            Event::Toc(toc) => {
                if self.loading.is_none() && self.stopped() {
                    return Err(());
                }
                self.toc = Some(toc);
                Ok(())
            }
            Event::Statement { text, kind } => self.statement(text, kind),
            // Before the data the loader handles (or refuses) them; among the rows, stop.
            Event::Meta { .. } | Event::Incomplete { .. } if self.blocks_seen == 0 => Ok(()),
            Event::Meta { .. } | Event::Incomplete { .. } => Err(()),
            Event::CopyData(rows) => {
                let Some(c) = self.loading.as_mut() else { return Ok(()) };
                c.batch.extend_from_slice(rows);
                if c.batch.len() - c.head.len() >= BATCH_BYTES {
                    self.send_batch()?;
                }
                Ok(())
            }
            Event::CopyEnd(_) => {
                let Some(k) = self.loading.as_ref().map(|c| c.k) else { return Ok(()) };
                self.send_batch()?;
                {
                    let mut s = lock(&self.shared.state);
                    s.ahead_block(k, 0, true);
                    self.shared.changed.notify_all();
                }
                let c = self.loading.take().expect("loading");
                self.shared.recycle(c.batch);
                Ok(())
            }
        }
    }

    fn statement(&mut self, text: &[u8], kind: StatementKind) -> Result<(), ()> {
        match kind {
            StatementKind::SessionSetting { name } if self.opts.no_owner && name == "session_authorization" => Ok(()),
            StatementKind::SessionSetting { name } => {
                // The loader refuses the file too; reading ahead stops here.
                self.settings.set(name, text).map_err(|_| ())
            }
            StatementKind::CopyFromStdin { table } if self.toc_kind() == "TABLE DATA" && is_text_copy(text) => {
                let k = self.blocks_seen;
                self.blocks_seen += 1;
                if k == 0 {
                    // The loader's: it starts the data once everything before has run.
                    return Ok(());
                }
                let mut s = lock(&self.shared.state);
                loop {
                    if s.over || s.ahead_stop {
                        return Err(());
                    }
                    if s.data_started {
                        break;
                    }
                    s = self.shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if !s.claim(k, Block::Ahead { table: table.clone(), sent: false, loading: 0 }) {
                    return Ok(());
                }
                drop(s);
                tracing::debug!("read-ahead: loading {table} (block {k})");
                let mut head = self.settings.text();
                let settings_len = head.len();
                head.extend_from_slice(text);
                let batch = Dispatch::spare_or_new(&self.shared, &head);
                self.loading = Some(AheadCopy { k, table, head, settings_len, batch });
                Ok(())
            }
            // Before the data: the loader runs it.
            _ if self.blocks_seen == 0 => Ok(()),
            // Anything else among the tables' rows: read no further ahead.
            _ => Err(()),
        }
    }

    fn send_batch(&mut self) -> Result<(), ()> {
        let Some(c) = self.loading.as_mut() else { return Ok(()) };
        if c.batch.len() == c.head.len() {
            return Ok(());
        }
        {
            let mut s = lock(&self.shared.state);
            if s.over {
                return Err(());
            }
            s.ahead_batches += 1;
            s.ahead_block(c.k, 1, false);
        }
        let next = Dispatch::spare_or_new(&self.shared, &c.head);
        let buf = std::mem::replace(&mut c.batch, next);
        let (settings_len, statement_len) = (c.settings_len, c.head.len() - c.settings_len);
        self.lane.send(Job::Copy { buf, settings_len, statement_len, ahead: Some(c.k) }).map_err(|_| ())
    }
}

impl Drop for AheadScan {
    fn drop(&mut self) {
        // A table half loaded would never be finished: the load fails (unless it already has).
        if let Some(c) = self.loading.take() {
            if !lock(&self.shared.state).over {
                let err = self.why.take().unwrap_or_else(|| "the read-ahead stopped".into());
                self.shared.fail(LoadError::ReadAhead { table: crate::db::escape_controls(&c.table), err });
            }
        }
    }
}

/// The refusal of a COPY pg_dump would not write, showing its end (where the options are).
fn foreign_copy(statement: &[u8]) -> LoadError {
    let text = String::from_utf8_lossy(statement.trim_ascii());
    let tail: String = text.chars().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
    LoadError::Refused { what: format!("a COPY that is not pg_dump's `COPY … FROM stdin;` (…{})", crate::db::escape_controls(&tail)) }
}

/// pg_dump's COPY is always `COPY name [(columns)] FROM stdin;` in text format. Any other form
/// (BINARY, CSV, options) makes psql read the data differently from the scanner — binary data
/// runs to the end of the input — so it is refused rather than guessed at.
fn is_text_copy(statement: &[u8]) -> bool {
    // pg_dump's TOC comment lines come first.
    let mut text = statement.trim_ascii_start();
    while text.starts_with(b"--") {
        text = match memchr::memchr(b'\n', text) {
            Some(nl) => text[nl + 1..].trim_ascii_start(),
            None => return false,
        };
    }
    let Some(rest) = text.strip_prefix(b"COPY ") else { return false };
    let binary = rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"BINARY ");
    !binary && text.trim_ascii_end().ends_with(b" FROM stdin;")
}

#[cfg(test)]
mod tests {
    use super::is_text_copy;

    #[test]
    fn only_pg_dumps_copy_form_is_text_copy() {
        let table = [
            ("COPY public.t (a, b) FROM stdin;\n", true),
            ("\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: o\n--\n\nCOPY \"s p\".\"t\" (a) FROM stdin;\n", true),
            ("COPY public.t FROM stdin;", true),
            ("COPY BINARY public.t FROM stdin;\n", false),
            ("copy binary t from stdin;\n", false),
            ("COPY public.t FROM stdin WITH (FORMAT binary);\n", false),
            ("COPY public.t FROM stdin (FORMAT csv);\n", false),
            ("COPY public.t FROM STDIN;\n", false),
            ("/* c */ COPY public.t FROM stdin;\n", false),
            ("COPY public.t FROM stdin DELIMITER ',';\n", false),
        ];
        for (sql, want) in table {
            assert_eq!(is_text_copy(sql.as_bytes()), want, "{sql:?}");
        }
    }
}

#[cfg(test)]
mod marker_tests {
    use super::{lock, watch_markers, Markers, MARKER_LINE_MAX};

    /// psql's output as a dump may make it: result rows, a line far longer than any marker (with
    /// a marker-like text inside it and at its start), forged markers by the ten thousand, other
    /// sessions' markers, and ours.
    #[test]
    fn psql_output_is_read_to_its_end_and_only_whole_marker_lines_count() {
        let prefix = b"ef_sync_N0nce_0_";
        let mut out = Vec::new();
        out.extend_from_slice(b"ef_pid_N0nce_0_4242\n1\n\nsetval\n ef_sync_N0nce_0_900\nef_pid_N0nce_0_666\n");
        out.extend_from_slice(b"ef_sync_N0nce_0_800");
        out.extend(std::iter::repeat_n(b'x', 5 << 20));
        out.extend_from_slice(b"ef_sync_N0nce_0_700\n");
        for n in 1..=20_000u64 {
            out.extend_from_slice(format!("ef_sync_N0nce_1_{}\nef_sync_N0nce_0_{n}x\n", n + 50_000).as_bytes());
        }
        out.extend_from_slice(b"ef_sync_N0nce_0_41\r\nef_sync_N0nce_0_7\nef_sync_N0nce_0_\nef_sync_N0nce_0_99999999999999999999999\n");
        out.extend_from_slice(format!("ef_sync_N0nce_0_{}", "1".repeat(MARKER_LINE_MAX)).as_bytes());
        let markers = Markers::default();
        // A thread with a deadline: the reader it replaced stopped reading after 16 markers
        // nobody waited for, and psql with it.
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| watch_markers(std::io::Cursor::new(out), prefix, b"ef_pid_N0nce_0_", &markers));
            let started = std::time::Instant::now();
            while !reader.is_finished() {
                assert!(started.elapsed() < std::time::Duration::from_secs(60), "the reader stalled");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let seen = lock(&markers.state);
        assert!(seen.ended);
        // 41 (a CRLF line) is the highest whole line of prefix and number: not the one inside a
        // long line, nor another session's, nor one with text after the number, nor an
        // unterminated last line longer than a marker.
        assert_eq!(seen.seen, 41);
        // The first pid line psql printed (before the dump's first byte), not a later one.
        assert_eq!(seen.pid, Some(4242));
    }
}

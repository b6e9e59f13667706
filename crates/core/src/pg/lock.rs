//! One backup of a database at a time, across processes and replicas (`serve` and the CLI alike),
//! and one run per scheduled slot: PostgreSQL session-level advisory locks, each held by a `psql`
//! session kept open for as long as the lock is held (psql, not a driver, so the session honours
//! the same libpq settings as pg_dump: TLS, service files...). Dropping a lock ends its session,
//! which releases it; so does the process dying.
//!
//! Lock sessions connect to the maintenance database `postgres`, not to the backed-up one: a
//! database cannot be renamed while anyone is connected to it, and an idle lock session must never
//! block `restore --drop-existing` of the database it guards. Advisory locks are per database, so
//! every replica locks in the same one and the key carries the backed-up database's name.
//!
//! Errors fail closed: a lock that cannot be taken or re-checked never lets a run go ahead "anyway".
//! Lock sessions use TCP keepalives, so a dead peer ends the session (and frees the lock) within
//! about a minute instead of the kernel's two hours.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::db::{tail_lines, DbError, PgTools, Running};
use crate::engine::BackupReport;
use crate::model::{BackupFailed, BackupOutcome, ErrorKind};
use crate::util::lock;

/// `application_name` of every lock session: how an operator (or a restore) tells them apart.
pub const APPLICATION_NAME: &str = "ef-backup-lock";

/// Where lock sessions connect.
pub const LOCK_DATABASE: &str = "postgres";

/// How long a lock session may take to answer before it counts as lost.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another ef-backup process holds the {what} lock of database {db}; not starting a second one")]
    Busy { what: &'static str, db: String },
    #[error("cannot take the {what} lock of database {db}, so cannot tell whether another ef-backup process is running: {cause} — nothing was started; make sure PostgreSQL is reachable and EF__DB_USER may connect to the database {LOCK_DATABASE}")]
    Failed { what: &'static str, db: String, cause: DbError },
}

/// The run lock's session ended or stopped answering while the run was going on.
#[derive(Debug, thiserror::Error)]
#[error("the run lock of database {db} was lost ({why}): another ef-backup process may have started a backup meanwhile, so this run keeps nothing — look for whoever ended the session (pg_terminate_backend, a proxy or network timeout) and run the backup again")]
pub struct LockLost {
    pub db: String,
    pub why: String,
}

impl LockError {
    /// The run's report when the run lock was refused: busy, or failed (counted and shaped
    /// like any failed backup, so the failure reaches status, metrics and alerts).
    pub fn into_report(self, file_name: Option<String>) -> BackupReport {
        let outcome = match &self {
            LockError::Busy { .. } => BackupOutcome::Busy("another ef-backup instance".into()),
            LockError::Failed { .. } => BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: self.to_string(), file_name }),
        };
        BackupReport::only(outcome, Duration::ZERO)
    }
}

/// A stable 64-bit key for a lock name (FNV-1a): every replica derives the same key.
pub fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// One psql session holding (or trying to hold) an advisory lock.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Drained from the start ([`crate::db::stderr_tail`]); taken when the session has ended.
    stderr: Option<JoinHandle<Vec<u8>>>,
    key: i64,
}

impl Session {
    /// `pg_try_advisory_lock(key)` on a session of its own in `database`: the session when the
    /// lock was free, `None` when another session holds it.
    fn try_lock(tools: &PgTools, database: &str, key: i64) -> Result<Option<Session>, DbError> {
        let Running { mut child, stdout, stderr } = crate::db::spawn(
            tools
                .command_as("psql", database, APPLICATION_NAME, &crate::db::KEEPALIVES)
                .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
                .stdin(Stdio::piped()),
        )
        .map_err(|err| DbError::Spawn { tool: "psql".into(), err })?;
        let mut session =
            Session { stdin: child.stdin.take().expect("piped stdin"), stdout: BufReader::new(stdout), stderr: Some(stderr), child, key };
        // The session sits idle for as long as the lock is held (a whole backup, or until the
        // next slot): a server or database idle_session_timeout (PostgreSQL 14+) would end it
        // and hand the lock to another replica, so this session opts out.
        let script = format!(
            "SELECT current_setting('server_version_num')::int >= 140000 AS has_idle_timeout \\gset\n\
             \\if :has_idle_timeout\nSET idle_session_timeout = 0;\n\\endif\n\
             SELECT pg_try_advisory_lock({key});"
        );
        match session.ask(&script).as_deref() {
            Ok("t") => Ok(Some(session)),
            Ok("f") => Ok(None),
            Ok(other) => Err(DbError::Tool { tool: "psql".into(), detail: format!("unexpected answer {other:?} to pg_try_advisory_lock") }),
            Err(detail) => Err(tools.connect_error(database, detail.clone())),
        }
    }

    /// Sends `sql` and reads one line of answer, waiting at most [`ANSWER_WAIT`]. `Err` says why
    /// there was none (the session ended: psql's last words).
    fn ask(&mut self, sql: &str) -> Result<String, String> {
        let sent = writeln!(self.stdin, "{sql}").and_then(|()| self.stdin.flush());
        if self.stdout.buffer().is_empty() {
            let mut pfd = libc::pollfd { fd: self.stdout.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
            loop {
                // SAFETY: one valid pollfd for a descriptor this session owns.
                let n = unsafe { libc::poll(&mut pfd, 1, ANSWER_WAIT.as_millis() as libc::c_int) };
                if n > 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted) {
                    break;
                }
                if n == 0 {
                    return Err(format!("the lock session did not answer within {} s", ANSWER_WAIT.as_secs()));
                }
            }
        }
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => Ok(line.trim().to_string()),
            read => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                let cause = match (read, sent) {
                    (Err(e), _) | (_, Err(e)) => format!("{e}; "),
                    _ => String::new(),
                };
                Err(format!("{cause}{}", tail_lines(&stderr, 3)))
            }
        }
    }

    /// Ok while this session still holds its lock (asked of the server, not assumed).
    fn held(&mut self) -> Result<(), String> {
        // A bigint advisory key shows in pg_locks as classid = high half, objid = low half,
        // objsubid = 1.
        let (high, low) = ((self.key as u64) >> 32, self.key as u64 & 0xffff_ffff);
        let sql = format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
             AND classid = {high}::oid AND objid = {low}::oid AND objsubid = 1;"
        );
        match self.ask(&sql)?.as_str() {
            "1" => Ok(()),
            other => Err(format!("the lock session no longer holds the lock (pg_locks says {other})")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Takes a lock in [`LOCK_DATABASE`]; when that database does not exist or this user may not
/// connect to it, in the backed-up database itself (the same choice on every replica of one
/// server, so they still meet; a restore of that database then has to wait for the lock).
fn take(config: &Config, what: &'static str, name: &str) -> Result<Session, LockError> {
    let db = &config.db.name;
    let failed = |cause| LockError::Failed { what, db: db.clone(), cause };
    let tools = PgTools::for_server(&config.db, config.pg_bin.as_deref()).map_err(failed)?;
    let key = lock_key(name);
    let taken = match Session::try_lock(&tools, LOCK_DATABASE, key) {
        Err(DbError::Connect { detail, .. }) if detail.contains("does not exist") || detail.contains("permission denied") => {
            tracing::warn!(
                "lock sessions cannot use the database {LOCK_DATABASE} ({detail}); locking in {db} instead, where an idle lock session blocks `restore --drop-existing` of {db}"
            );
            Session::try_lock(&tools, db, key)
        }
        other => other,
    };
    taken.map_err(failed)?.ok_or_else(|| LockError::Busy { what, db: db.clone() })
}

/// Held for a whole backup run; see [`acquire`].
pub struct RunLock {
    session: Mutex<Session>,
    db: String,
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock").field("db", &self.db).finish()
    }
}

/// The run lock of the configured database: one backup of it at a time, whoever runs it.
pub fn acquire(config: &Config) -> Result<RunLock, LockError> {
    let session = take(config, "run", &format!("ef-backup:run:{}", config.db.name))?;
    Ok(RunLock { session: Mutex::new(session), db: config.db.name.clone() })
}

impl RunLock {
    /// Asks the server whether the lock is still this run's. Checked before the backup file is
    /// committed and before retention: a lock that was lost (its session terminated, the network
    /// cut) may be held by another process by now.
    pub fn still_held(&self) -> Result<(), LockLost> {
        let mut session = lock(&self.session);
        session.held().map_err(|why| LockLost { db: self.db.clone(), why })
    }
}

/// The lock of one scheduled slot, held until the next slot so a replica whose timer fires late
/// cannot run the same slot again.
pub struct SlotLock {
    _session: Session,
}

/// Claims scheduled slot `slot` (its start, Unix seconds) of the configured database.
pub fn claim_slot(config: &Config, slot: i64) -> Result<SlotLock, LockError> {
    take(config, "slot", &format!("ef-backup:slot:{}:{slot}", config.db.name)).map(|s| SlotLock { _session: s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_across_builds() {
        // Replicas of different versions must meet on the same key.
        assert_eq!(lock_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(lock_key("ef-backup:run:euraflow"), lock_key("ef-backup:run:euraflow"));
        assert_ne!(lock_key("ef-backup:run:a"), lock_key("ef-backup:run:b"));
    }
}

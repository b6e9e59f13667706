//! What survives a restart: every run (trigger, times, outcome, file, S3 result) and the
//! counters `/metrics` reports, in one SQLite database per deployment and database under
//! `EF__STATE_DIR`. The service loads it at start-up, so status and metrics after a restart
//! (clean or `kill -9`) are what they were; a run that the process did not live to finish is
//! marked failed ("interrupted") the next time the store is opened.
//!
//! The schema is versioned with `PRAGMA user_version`; the run history of a later issue adds
//! columns or tables in further versions. Nothing here may stop a backup: callers log a
//! failed write and carry on.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::config::{Config, DbConfig};
use crate::engine::BackupReport;
use crate::model::{BackupOutcome, LastRun, S3Outcome};
use crate::util::{hex, lock, now};

/// The schema this build writes. Version 1: `runs`, `counters`. Version 2: every run has a
/// kind (backup, drill, retention, restore, verify, notification), a database and a detail,
/// so the table is the run history and audit trail.
pub const SCHEMA_VERSION: i32 = 2;

/// Runs kept in the history; older ones are pruned (the counters keep counting).
pub const DEFAULT_HISTORY_KEEP: u32 = 5_000;

/// The message of a run the process did not live to finish.
pub const INTERRUPTED: &str = "interrupted: the process ended during the run";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {dir}: {err} (set EF__STATE_DIR to a directory this user can write)")]
    Dir { dir: PathBuf, err: std::io::Error },
    #[error(
        "cannot open the state database {path}: {err} (check that EF__STATE_DIR is writable by this user; move the file away to start a new history)"
    )]
    Open { path: PathBuf, err: String },
    #[error("the state database {path} has schema version {found}, newer than this ef-backup understands ({SCHEMA_VERSION}): run the newer ef-backup, or point EF__STATE_DIR elsewhere")]
    Newer { path: PathBuf, found: i32 },
    #[error("the state database {path} failed: {err} (check the disk under EF__STATE_DIR)")]
    Sql { path: PathBuf, err: rusqlite::Error },
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Scheduled,
    Cli,
    /// The one retry of a failed scheduled run.
    Retry,
    /// The service of itself (the notifications of its start and stop, of a rejected policy).
    Service,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
            Trigger::Cli => "cli",
            Trigger::Retry => "retry",
            Trigger::Service => "service",
        }
    }
}

/// What a run did. Only backups count towards the backup counters and `last_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Backup,
    Drill,
    Retention,
    Restore,
    Verify,
    Notification,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Drill => "drill",
            RunKind::Retention => "retention",
            RunKind::Restore => "restore",
            RunKind::Verify => "verify",
            RunKind::Notification => "notification",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Failed,
    /// Cut by the end of the process (crash, `kill -9`, power loss); counted as a failure.
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> RunOutcome {
        match s {
            "ok" => RunOutcome::Ok,
            "interrupted" => RunOutcome::Interrupted,
            _ => RunOutcome::Failed,
        }
    }
}

/// How a finished run ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub finished_at: i64,
    pub outcome: RunOutcome,
    pub file_name: Option<String>,
    pub size_bytes: Option<u64>,
    pub duration_ms: u64,
    pub message: String,
    /// `uploaded`, `failed` or `disabled`; None when no backup file was made.
    pub s3: Option<&'static str>,
    /// Retention passes (local, S3) skipped because the clock was behind the last run.
    pub clock_skips: u32,
}

impl Finished {
    /// The record of a run's outcome; None for "busy" (nothing ran).
    pub fn of(outcome: &BackupOutcome, report: Option<&BackupReport>, finished_at: i64) -> Option<Finished> {
        let duration_ms = report.map(|r| r.elapsed.as_millis() as u64).unwrap_or(0);
        let clock_skips = report.map(|r| u32::from(r.retention.clock_behind) + u32::from(r.s3_retention.clock_behind)).unwrap_or(0);
        // What an operator should know though nothing failed (globals without role passwords...).
        let notes = report.map(|r| r.notes.iter().map(|n| format!("; note: {n}")).collect::<String>()).unwrap_or_default();
        let finished = Finished::of_outcome(outcome, finished_at, duration_ms, clock_skips)?;
        Some(Finished { message: format!("{}{notes}", finished.message), ..finished })
    }

    fn of_outcome(outcome: &BackupOutcome, finished_at: i64, duration_ms: u64, clock_skips: u32) -> Option<Finished> {
        match outcome {
            BackupOutcome::Done(d) => {
                let (s3, message) = match &d.s3 {
                    S3Outcome::Failed(e) => ("failed", format!("local backup ok; S3 upload failed: {e}")),
                    S3Outcome::Uploaded(url) => ("uploaded", format!("ok, uploaded to {url}")),
                    S3Outcome::Disabled => ("disabled", "ok (S3 disabled)".to_string()),
                };
                Some(Finished {
                    finished_at,
                    outcome: RunOutcome::Ok,
                    file_name: Some(d.file_name.clone()),
                    size_bytes: Some(d.size_bytes),
                    duration_ms,
                    message,
                    s3: Some(s3),
                    clock_skips,
                })
            }
            BackupOutcome::Failed(f) => Some(Finished {
                finished_at,
                outcome: RunOutcome::Failed,
                file_name: f.file_name.clone(),
                size_bytes: None,
                duration_ms,
                message: f.message.clone(),
                s3: None,
                clock_skips,
            }),
            BackupOutcome::Several(run) => {
                let done: Vec<&crate::model::BackupDone> = run.entries.iter().filter_map(|e| e.outcome.as_ref().ok()).collect();
                let failed: Vec<String> = run
                    .entries
                    .iter()
                    .filter_map(|e| Some(format!("{} ({}): {}", e.database, crate::policy::kind_id(e.kind), e.outcome.as_ref().err()?.message)))
                    .collect();
                let s3_failed = done.iter().any(|d| matches!(d.s3, S3Outcome::Failed(_)));
                let s3 = if s3_failed {
                    "failed"
                } else if done.iter().any(|d| matches!(d.s3, S3Outcome::Uploaded(_))) {
                    "uploaded"
                } else {
                    "disabled"
                };
                let message = if failed.is_empty() {
                    format!("ok: {} files ({})", done.len(), if s3_failed { "an S3 upload failed" } else { s3 })
                } else {
                    format!("{} of {} files failed: {}", failed.len(), run.entries.len(), failed.join("; "))
                };
                Some(Finished {
                    finished_at,
                    outcome: if run.succeeded() { RunOutcome::Ok } else { RunOutcome::Failed },
                    file_name: None,
                    size_bytes: (!done.is_empty()).then(|| done.iter().map(|d| d.size_bytes).sum()),
                    duration_ms,
                    message,
                    s3: (!done.is_empty()).then_some(s3),
                    clock_skips,
                })
            }
            BackupOutcome::Busy(_) => None,
        }
    }

    pub fn last_run(&self, started_at: i64) -> LastRun {
        LastRun {
            started_at,
            finished_at: self.finished_at,
            succeeded: self.outcome == RunOutcome::Ok,
            file_name: self.file_name.clone(),
            message: self.message.clone(),
        }
    }
}

/// Counters that `/metrics` reports; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub successes: u64,
    pub failures: u64,
    pub s3_upload_failures: u64,
    pub retention_clock_skips: u64,
}

/// The last successful run, for the `ef_backup_last_*` gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSuccess {
    pub finished_at: i64,
    pub size_bytes: u64,
    pub duration_ms: u64,
}

/// What the service starts from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub last_run: Option<LastRun>,
    pub last_success: Option<LastSuccess>,
    pub totals: Totals,
}

pub struct StateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Runs found unfinished (and marked interrupted) when the store was opened.
    interrupted: usize,
}

/// The store's file name for a deployment: the database name for people, and a hash of the
/// server, database and backup directory so that deployments sharing a state directory
/// (several databases, or one database backed up to two places) never share a history.
pub fn file_name(db: &DbConfig, backup_dir: &Path) -> String {
    let label: String = db.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).take(48).collect();
    let key = format!("{}:{}/{}\n{}", db.host, db.port, db.name, backup_dir.display());
    let hash = Sha256::digest(key.as_bytes());
    format!("state-{label}-{}.sqlite", hex(&hash[..6]))
}

/// This process, as "pid:start time" (the start time tells a reused pid from the original).
fn owner_token(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); the command name (field 2) may hold spaces, so count from ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

fn owner_alive(token: &str) -> bool {
    let Some(pid) = token.split(':').next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    owner_token(pid).as_deref() == Some(token)
}

impl StateStore {
    /// Opens (creating when missing) the deployment's store in `config.state_dir`.
    pub fn open(config: &Config) -> Result<StateStore, StateError> {
        StateStore::open_in(&config.state_dir, &file_name(&config.db, &config.backup_dir))
    }

    /// Opens `dir/name`; the directory is created 0700 and the file 0600 (they hold backup
    /// names and error messages, which may name hosts and users).
    pub fn open_in(dir: &Path, name: &str) -> Result<StateStore, StateError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|err| StateError::Dir { dir: dir.to_path_buf(), err })?;
        let path = dir.join(name);
        let open_err = |err: String| StateError::Open { path: path.clone(), err };
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(|e| open_err(e.to_string()))?;
        let meta = std::fs::metadata(&path).map_err(|e| open_err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| open_err(e.to_string()))?;
        }
        let conn = Connection::open(&path).map_err(|e| open_err(e.to_string()))?;
        // serve and a CLI backup may write at once; WAL lets readers go on meanwhile.
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_err(e.to_string()))?;
        let mut store = StateStore { path, conn: Mutex::new(conn), interrupted: 0 };
        store.migrate()?;
        store.interrupted = store.mark_interrupted()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many runs were found cut by the end of their process when the store was opened.
    pub fn interrupted_at_open(&self) -> usize {
        self.interrupted
    }

    fn sql<T>(&self, r: rusqlite::Result<T>) -> Result<T, StateError> {
        r.map_err(|err| StateError::Sql { path: self.path.clone(), err })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    fn migrate(&self) -> Result<(), StateError> {
        let conn = self.conn();
        let version: i32 = self.sql(conn.query_row("PRAGMA user_version", [], |r| r.get(0)))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::Newer { path: self.path.clone(), found: version });
        }
        if version < 1 {
            self.sql(conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS runs (
                     id INTEGER PRIMARY KEY,
                     trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'scheduled', 'cli', 'retry')),
                     started_at INTEGER NOT NULL,
                     finished_at INTEGER,
                     outcome TEXT CHECK (outcome IN ('ok', 'failed', 'interrupted')),
                     file_name TEXT,
                     size_bytes INTEGER,
                     duration_ms INTEGER,
                     message TEXT,
                     s3 TEXT CHECK (s3 IN ('uploaded', 'failed', 'disabled')),
                     retention_clock_skips INTEGER NOT NULL DEFAULT 0,
                     owner TEXT
                 );
                 CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at);
                 CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            ))?;
        }
        if version < 2 {
            // Runs recorded before version 2 were all backups. The table is rebuilt because
            // SQLite cannot change a CHECK constraint: `service` is a new trigger (what the
            // service does of itself: notifications at start and stop).
            self.sql(conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE runs_v2 (
                     id INTEGER PRIMARY KEY,
                     kind TEXT NOT NULL DEFAULT 'backup'
                         CHECK (kind IN ('backup', 'drill', 'retention', 'restore', 'verify', 'notification')),
                     trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'scheduled', 'cli', 'retry', 'service')),
                     database TEXT,
                     started_at INTEGER NOT NULL,
                     finished_at INTEGER,
                     outcome TEXT CHECK (outcome IN ('ok', 'failed', 'interrupted')),
                     file_name TEXT,
                     size_bytes INTEGER,
                     duration_ms INTEGER,
                     message TEXT,
                     detail TEXT,
                     s3 TEXT CHECK (s3 IN ('uploaded', 'failed', 'disabled')),
                     retention_clock_skips INTEGER NOT NULL DEFAULT 0,
                     owner TEXT
                 );
                 INSERT INTO runs_v2 (id, trigger, started_at, finished_at, outcome, file_name, size_bytes, duration_ms, message, s3,
                                      retention_clock_skips, owner)
                     SELECT id, trigger, started_at, finished_at, outcome, file_name, size_bytes, duration_ms, message, s3,
                            retention_clock_skips, owner FROM runs;
                 DROP TABLE runs;
                 ALTER TABLE runs_v2 RENAME TO runs;
                 CREATE INDEX runs_started_at ON runs (started_at);
                 CREATE INDEX runs_kind_finished ON runs (kind, finished_at);
                 PRAGMA user_version = 2;
                 COMMIT;",
            ))?;
        }
        Ok(())
    }

    /// Marks runs whose process is gone as interrupted failures; a run another live process
    /// (serve beside a CLI backup) is still doing is left alone.
    fn mark_interrupted(&self) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = self.sql(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate))?;
        let open: Vec<(i64, Option<String>, String)> = {
            let mut q = self.sql(tx.prepare("SELECT id, owner, kind FROM runs WHERE finished_at IS NULL"))?;
            let rows = self.sql(q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))?;
            self.sql(rows.collect())?
        };
        let cut: Vec<(i64, String)> =
            open.into_iter().filter(|(_, owner, _)| !owner.as_deref().is_some_and(owner_alive)).map(|(id, _, k)| (id, k)).collect();
        for (id, kind) in &cut {
            self.sql(
                tx.execute("UPDATE runs SET finished_at = ?2, outcome = 'interrupted', message = ?3 WHERE id = ?1", params![id, now(), INTERRUPTED]),
            )?;
            // A drill cut short proved nothing either way: not counted as a failed drill (a drill
            // that never finishes shows as no successful drill, which is alerted on).
            if kind == "backup" {
                self.sql(bump(&tx, "failures", 1))?;
            }
        }
        self.sql(tx.commit())?;
        Ok(cut.len())
    }

    /// The last run, the last success and the counters.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let conn = self.conn();
        let last_run = self.sql(
            conn.query_row(
                &format!("SELECT {LAST_RUN_COLUMNS} FROM runs WHERE kind = 'backup' AND finished_at IS NOT NULL {NEWEST_FIRST} LIMIT 1"),
                [],
                last_run_row,
            )
            .optional(),
        )?;
        let last_success = self.sql(
            conn.query_row(
                "SELECT finished_at, size_bytes, duration_ms FROM runs
                 WHERE kind = 'backup' AND outcome = 'ok' ORDER BY finished_at DESC, id DESC LIMIT 1",
                [],
                |r| {
                    Ok(LastSuccess {
                        finished_at: r.get(0)?,
                        size_bytes: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                        duration_ms: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    })
                },
            )
            .optional(),
        )?;
        let counter = |name: &str| -> Result<u64, StateError> {
            let v: Option<i64> = self.sql(conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| r.get(0)).optional())?;
            Ok(v.unwrap_or(0) as u64)
        };
        let totals = Totals {
            successes: counter("successes")?,
            failures: counter("failures")?,
            s3_upload_failures: counter("s3_upload_failures")?,
            retention_clock_skips: counter("retention_clock_skips")?,
        };
        Ok(Loaded { last_run, last_success, totals })
    }

    /// When the latest recorded run started (the clock guard's reference).
    pub fn latest_start(&self) -> Result<Option<i64>, StateError> {
        self.sql(self.conn().query_row("SELECT max(started_at) FROM runs WHERE kind = 'backup'", [], |r| r.get(0)))
    }

    /// Records a run as started; returns its id for [`StateStore::finish`].
    pub fn begin(&self, trigger: Trigger, started_at: i64) -> Result<i64, StateError> {
        self.begin_run(RunKind::Backup, trigger, None, started_at)
    }

    /// Records how a run ended and counts it, in one transaction. Without an id (its start
    /// could not be recorded) the whole run is inserted now.
    pub fn finish(&self, id: Option<i64>, trigger: Trigger, started_at: i64, f: &Finished) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = self.sql(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate))?;
        let id = self.sql(run_id(&tx, id, RunKind::Backup, trigger, None, started_at))?;
        self.sql(tx.execute(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, file_name = ?4, size_bytes = ?5, duration_ms = ?6,
                 message = ?7, s3 = ?8, retention_clock_skips = ?9, owner = NULL WHERE id = ?1",
            params![
                id,
                f.finished_at,
                f.outcome.as_str(),
                f.file_name,
                f.size_bytes.map(|s| s as i64),
                f.duration_ms as i64,
                f.message,
                f.s3,
                f.clock_skips
            ],
        ))?;
        let counter = if f.outcome == RunOutcome::Ok { "successes" } else { "failures" };
        self.sql(bump(&tx, counter, 1))?;
        if f.s3 == Some("failed") {
            self.sql(bump(&tx, "s3_upload_failures", 1))?;
        }
        if f.clock_skips > 0 {
            self.sql(bump(&tx, "retention_clock_skips", u64::from(f.clock_skips)))?;
        }
        self.sql(prune(&tx, DEFAULT_HISTORY_KEEP))?;
        self.sql(tx.commit())
    }
}

/// How a run that is not a backup ended (drills, retention, restore, verify, notifications).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub finished_at: i64,
    pub outcome: RunOutcome,
    pub file_name: Option<String>,
    pub size_bytes: Option<u64>,
    pub duration_ms: u64,
    pub message: String,
    /// What else the run measured (a drill's seconds and rows, a channel...), as JSON.
    pub detail: Option<serde_json::Value>,
}

/// One run of the history, as `ef-backup history` and `GET …/backup/history` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub kind: String,
    pub trigger: String,
    pub database: Option<String>,
    pub started_at: i64,
    /// None while the run goes on.
    pub finished_at: Option<i64>,
    /// `ok`, `failed`, `interrupted`, or None while the run goes on.
    pub outcome: Option<String>,
    pub file_name: Option<String>,
    pub size_bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub message: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// What the drill metrics start from after a restart, per database.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DrillStats {
    pub database: String,
    pub last_success_at: Option<i64>,
    pub last_restore_seconds: Option<f64>,
    pub failures: u64,
    pub successes: u64,
}

fn drill_counter(database: Option<&str>, ok: bool) -> String {
    format!("drill_{}:{}", if ok { "successes" } else { "failures" }, database.unwrap_or(""))
}

impl StateStore {
    /// Records a run of `kind` as started; returns its id for [`StateStore::finish_run`].
    pub fn begin_run(&self, kind: RunKind, trigger: Trigger, database: Option<&str>, started_at: i64) -> Result<i64, StateError> {
        let conn = self.conn();
        self.sql(conn.execute(
            "INSERT INTO runs (kind, trigger, database, started_at, owner) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind.as_str(), trigger.as_str(), database, started_at, owner_token(std::process::id())],
        ))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a run that is not a backup ended (inserting it whole without an id), counts
    /// drills per database, and prunes the history to `DEFAULT_HISTORY_KEEP` runs.
    pub fn finish_run(
        &self,
        id: Option<i64>,
        kind: RunKind,
        trigger: Trigger,
        database: Option<&str>,
        started_at: i64,
        r: &RunRecord,
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = self.sql(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate))?;
        let id = self.sql(run_id(&tx, id, kind, trigger, database, started_at))?;
        self.sql(tx.execute(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, file_name = ?4, size_bytes = ?5, duration_ms = ?6,
                 message = ?7, detail = ?8, owner = NULL WHERE id = ?1",
            params![
                id,
                r.finished_at,
                r.outcome.as_str(),
                r.file_name,
                r.size_bytes.map(|s| s as i64),
                r.duration_ms as i64,
                r.message,
                r.detail.as_ref().map(|d| d.to_string())
            ],
        ))?;
        if kind == RunKind::Drill && r.outcome != RunOutcome::Interrupted {
            self.sql(bump(&tx, &drill_counter(database, r.outcome == RunOutcome::Ok), 1))?;
        }
        // A notification run's channel is its detail's `channel`.
        if kind == RunKind::Notification && r.outcome != RunOutcome::Ok {
            let channel = r.detail.as_ref().and_then(|d| d.get("channel")).and_then(|c| c.as_str()).unwrap_or("unknown");
            self.sql(bump(&tx, &format!("notification_failures:{channel}"), 1))?;
        }
        self.sql(prune(&tx, DEFAULT_HISTORY_KEEP))?;
        self.sql(tx.commit())
    }

    /// Whether a backup run started in `[from, to]`, and whether any run was recorded before
    /// `from` (a deployment that did not exist yet has missed nothing).
    pub fn backup_started_between(&self, from: i64, to: i64) -> Result<(bool, bool), StateError> {
        let conn = self.conn();
        let within: i64 =
            self.sql(
                conn.query_row("SELECT count(*) FROM runs WHERE kind = 'backup' AND started_at BETWEEN ?1 AND ?2", params![from, to], |r| r.get(0)),
            )?;
        let before: i64 = self.sql(conn.query_row("SELECT count(*) FROM runs WHERE started_at < ?1", [from], |r| r.get(0)))?;
        Ok((within > 0, before > 0))
    }

    /// The newest `limit` runs of every kind, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        let conn = self.conn();
        let mut q = self.sql(conn.prepare(
            "SELECT id, kind, trigger, database, started_at, finished_at, outcome, file_name, size_bytes, duration_ms, message, detail
             FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1",
        ))?;
        let rows = self.sql(q.query_map([limit as i64], |r| {
            Ok(HistoryEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                trigger: r.get(2)?,
                database: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                outcome: r.get(6)?,
                file_name: r.get(7)?,
                size_bytes: r.get::<_, Option<i64>>(8)?.map(|s| s as u64),
                duration_ms: r.get::<_, Option<i64>>(9)?.map(|s| s as u64),
                message: r.get(10)?,
                detail: r.get::<_, Option<String>>(11)?.and_then(|d| serde_json::from_str(&d).ok()),
            })
        }))?;
        self.sql(rows.collect())
    }

    /// The last finished run of `kind`, whatever its database (status's last drill).
    pub fn last_of_kind(&self, kind: RunKind) -> Result<Option<LastRun>, StateError> {
        let conn = self.conn();
        self.sql(
            conn.query_row(
                &format!("SELECT {LAST_RUN_COLUMNS} FROM runs WHERE kind = ?1 AND finished_at IS NOT NULL {NEWEST_FIRST} LIMIT 1"),
                params![kind.as_str()],
                last_run_row,
            )
            .optional(),
        )
    }

    /// The last finished run of `kind` for `database` (for "recovered" messages).
    pub fn last_of(&self, kind: RunKind, database: Option<&str>) -> Result<Option<LastRun>, StateError> {
        let conn = self.conn();
        self.sql(
            conn.query_row(
                &format!("SELECT {LAST_RUN_COLUMNS} FROM runs WHERE kind = ?1 AND database IS ?2 AND finished_at IS NOT NULL {NEWEST_FIRST} LIMIT 1"),
                params![kind.as_str(), database],
                last_run_row,
            )
            .optional(),
        )
    }

    /// Notifications given up, per channel (counted by [`StateStore::finish_run`] for runs of
    /// kind notification).
    pub fn notification_failures(&self) -> Result<Vec<(String, u64)>, StateError> {
        let conn = self.conn();
        let mut q = self.sql(
            conn.prepare("SELECT substr(name, 23), value FROM counters WHERE name LIKE 'notification\\_failures:%' ESCAPE '\\' ORDER BY name"),
        )?;
        let rows = self.sql(q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))))?;
        self.sql(rows.collect())
    }

    /// Per database: the last successful drill, its restore time, and the drill counters.
    pub fn drill_stats(&self) -> Result<Vec<DrillStats>, StateError> {
        let conn = self.conn();
        let mut stats: std::collections::BTreeMap<String, DrillStats> = std::collections::BTreeMap::new();
        {
            let mut q = self.sql(conn.prepare("SELECT name, value FROM counters WHERE name LIKE 'drill\\_%' ESCAPE '\\'"))?;
            let rows: Vec<(String, i64)> = self.sql(self.sql(q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))))?.collect())?;
            for (name, value) in rows {
                let Some((which, db)) = name.strip_prefix("drill_").and_then(|n| n.split_once(':')) else { continue };
                let entry = stats.entry(db.to_string()).or_insert_with(|| DrillStats { database: db.to_string(), ..DrillStats::default() });
                match which {
                    "successes" => entry.successes = value as u64,
                    "failures" => entry.failures = value as u64,
                    _ => {}
                }
            }
        }
        let mut q = self.sql(conn.prepare(
            "SELECT coalesce(database, ''), finished_at, json_extract(detail, '$.restore_seconds') FROM runs r
             WHERE kind = 'drill' AND outcome = 'ok'
               AND finished_at = (SELECT max(finished_at) FROM runs WHERE kind = 'drill' AND outcome = 'ok' AND database IS r.database)",
        ))?;
        let rows: Vec<(String, i64, Option<f64>)> = self.sql(self.sql(q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))?.collect())?;
        for (db, at, secs) in rows {
            let entry = stats.entry(db.clone()).or_insert_with(|| DrillStats { database: db, ..DrillStats::default() });
            entry.last_success_at = Some(at);
            entry.last_restore_seconds = secs;
        }
        Ok(stats.into_values().collect())
    }
}

/// The run `id`, or, when its start could not be recorded, a row inserted for it now.
fn run_id(
    tx: &rusqlite::Transaction<'_>,
    id: Option<i64>,
    kind: RunKind,
    trigger: Trigger,
    database: Option<&str>,
    started_at: i64,
) -> rusqlite::Result<i64> {
    if let Some(id) = id {
        return Ok(id);
    }
    tx.execute(
        "INSERT INTO runs (kind, trigger, database, started_at) VALUES (?1, ?2, ?3, ?4)",
        params![kind.as_str(), trigger.as_str(), database, started_at],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Keeps the newest `keep` finished runs (a run still going on is never pruned).
fn prune(tx: &rusqlite::Transaction<'_>, keep: u32) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM runs WHERE finished_at IS NOT NULL
           AND id < (SELECT id FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [i64::from(keep.max(1)) - 1],
    )
}

/// The retention passes of a backup run worth a line of the history (something deleted, or
/// skipped or failed), as records: retention is part of the audit trail.
pub fn retention_records(report: &BackupReport, at: i64) -> Vec<RunRecord> {
    let mut out = Vec::new();
    for (store, r) in [("local", &report.retention), ("s3", &report.s3_retention)] {
        if r.deleted.is_empty() && r.error.is_none() {
            continue;
        }
        let mut message = format!("{store}: {} old backup(s) deleted", r.deleted.len());
        if let Some(e) = &r.error {
            message.push_str(&format!("; {e}"));
        }
        out.push(RunRecord {
            finished_at: at,
            outcome: if r.error.is_some() { RunOutcome::Failed } else { RunOutcome::Ok },
            file_name: None,
            size_bytes: None,
            duration_ms: 0,
            message,
            detail: Some(serde_json::json!({"store": store, "deleted": r.deleted, "clock_behind": r.clock_behind})),
        });
    }
    out
}

impl StateStore {
    /// Records the retention passes of a finished backup run (see [`retention_records`]).
    pub fn record_retention(&self, trigger: Trigger, report: &BackupReport) -> Result<(), StateError> {
        for r in retention_records(report, now()) {
            self.finish_run(None, RunKind::Retention, trigger, None, r.finished_at, &r)?;
        }
        Ok(())
    }
}

/// A run recorded from start to end by a one-shot command (`ef-backup backup`). A store that
/// cannot be opened or written is logged and the backup goes on without it.
pub struct Recording {
    store: Option<StateStore>,
    id: Option<i64>,
    trigger: Trigger,
    started_at: i64,
    last_recorded_run: Option<i64>,
    previous: Option<LastRun>,
}

impl Recording {
    pub fn begin(config: &Config, trigger: Trigger, started_at: i64) -> Recording {
        let store = StateStore::open(config).map_err(|e| tracing::error!("{e}; this run is not recorded")).ok();
        if let Some(n) = store.as_ref().map(StateStore::interrupted_at_open).filter(|n| *n > 0) {
            tracing::error!("{n} earlier backup run(s) were cut by the end of their process; recorded as failed");
        }
        let log = |e: StateError| tracing::error!("{e}; the backup runs anyway");
        let last_recorded_run = store.as_ref().and_then(|s| s.latest_start().map_err(log).ok().flatten());
        let previous = store.as_ref().and_then(|s| s.load().map_err(log).ok()).and_then(|l| l.last_run);
        let id = store.as_ref().and_then(|s| s.begin(trigger, started_at).map_err(log).ok());
        Recording { store, id, trigger, started_at, last_recorded_run, previous }
    }

    /// The backup run before this one (for "recovered" messages).
    pub fn previous(&self) -> Option<LastRun> {
        self.previous.clone()
    }

    /// When the latest run recorded before this one started.
    pub fn last_recorded_run(&self) -> Option<i64> {
        self.last_recorded_run
    }

    pub fn finish(self, report: &BackupReport) {
        let (Some(store), Some(f)) = (&self.store, Finished::of(&report.outcome, Some(report), now())) else { return };
        if let Err(e) = store.finish(self.id, self.trigger, self.started_at, &f) {
            tracing::error!("{e}; this run is missing from the history");
        }
        if let Err(e) = store.record_retention(self.trigger, report) {
            tracing::error!("{e}; this run's retention is missing from the history");
        }
    }
}

/// The columns [`last_run_row`] reads, and the order that makes the first row the last run.
const LAST_RUN_COLUMNS: &str = "started_at, finished_at, outcome, file_name, message";
const NEWEST_FIRST: &str = "ORDER BY finished_at DESC, id DESC";

fn last_run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LastRun> {
    Ok(LastRun {
        started_at: r.get(0)?,
        finished_at: r.get(1)?,
        succeeded: RunOutcome::parse(&r.get::<_, String>(2)?) == RunOutcome::Ok,
        file_name: r.get(3)?,
        message: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
    })
}

fn bump(tx: &rusqlite::Transaction<'_>, name: &str, by: u64) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        params![name, by as i64],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_run(at: i64, file: &str, s3: &'static str) -> Finished {
        Finished {
            finished_at: at,
            outcome: RunOutcome::Ok,
            file_name: Some(file.into()),
            size_bytes: Some(1234),
            duration_ms: 5000,
            message: "ok".into(),
            s3: Some(s3),
            clock_skips: 0,
        }
    }

    fn failed_run(at: i64, message: &str) -> Finished {
        Finished {
            finished_at: at,
            outcome: RunOutcome::Failed,
            file_name: None,
            size_bytes: None,
            duration_ms: 10,
            message: message.into(),
            s3: None,
            clock_skips: 1,
        }
    }

    /// Pins issue 12 item 14: runs and counters survive reopening the store.
    #[test]
    fn runs_and_counters_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let empty = store.load().unwrap();
        assert!(empty.last_run.is_none() && empty.last_success.is_none() && empty.totals == Totals::default());
        assert_eq!(store.latest_start().unwrap(), None);
        let a = store.begin(Trigger::Manual, 100).unwrap();
        store.finish(Some(a), Trigger::Manual, 100, &ok_run(105, "db_backup_1.sql.gz", "failed")).unwrap();
        let b = store.begin(Trigger::Scheduled, 200).unwrap();
        store.finish(Some(b), Trigger::Scheduled, 200, &failed_run(201, "pg_dump failed")).unwrap();
        // A run whose start could not be recorded is still counted.
        store.finish(None, Trigger::Cli, 300, &ok_run(302, "db_backup_3.sql.gz", "uploaded")).unwrap();
        drop(store);

        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        assert_eq!(store.interrupted_at_open(), 0);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.totals, Totals { successes: 2, failures: 1, s3_upload_failures: 1, retention_clock_skips: 1 });
        let last = loaded.last_run.unwrap();
        assert_eq!((last.started_at, last.finished_at, last.succeeded), (300, 302, true));
        assert_eq!(last.file_name.as_deref(), Some("db_backup_3.sql.gz"));
        assert_eq!(loaded.last_success, Some(LastSuccess { finished_at: 302, size_bytes: 1234, duration_ms: 5000 }));
        assert_eq!(store.latest_start().unwrap(), Some(300));
        let trigger: String = store.conn().query_row("SELECT trigger FROM runs WHERE started_at = 300", [], |r| r.get(0)).unwrap();
        assert_eq!(trigger, "cli");
    }

    /// Pins issue 12 item 14: a run cut by the end of its process is recorded as failed
    /// (interrupted) when the store is opened again, and counted as a failure.
    #[test]
    fn a_run_whose_process_died_is_marked_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let id = store.begin(Trigger::Scheduled, 500).unwrap();
        // As if another process (long dead) had started it.
        store.conn().execute("UPDATE runs SET owner = '999999999:1' WHERE id = ?1", [id]).unwrap();
        // This process's own unfinished run is alive: left alone.
        store.begin(Trigger::Manual, 600).unwrap();
        drop(store);

        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        assert_eq!(store.interrupted_at_open(), 1);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.totals.failures, 1);
        let last = loaded.last_run.unwrap();
        assert_eq!((last.started_at, last.succeeded, last.message.as_str()), (500, false, INTERRUPTED));
        let open: i64 = store.conn().query_row("SELECT count(*) FROM runs WHERE finished_at IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(open, 1, "the live process's run is still open");
        assert_eq!(store.latest_start().unwrap(), Some(600));
    }

    #[test]
    fn files_are_private_and_named_per_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        StateStore::open_in(&state, "s.sqlite").unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(state.join("s.sqlite")).unwrap().permissions().mode() & 0o777, 0o600);

        let db = |name: &str, port| DbConfig { host: "h".into(), port, name: name.into(), user: "u".into(), password: None };
        let a = file_name(&db("app", 5432), Path::new("/b"));
        // Pinned: a deployment finds its history under this name, whichever build wrote it.
        assert_eq!(a, "state-app-a67a5c25827a.sqlite");
        assert_ne!(a, file_name(&db("app", 5433), Path::new("/b")));
        assert_ne!(a, file_name(&db("app", 5432), Path::new("/c")));
        assert_ne!(a, file_name(&db("other", 5432), Path::new("/b")));
        assert!(file_name(&db("a/../b c", 5432), Path::new("/b")).starts_with("state-a____b_c-"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        store.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let err = StateStore::open_in(dir.path(), "s.sqlite").err().unwrap().to_string();
        assert!(err.contains("schema version 99") && err.contains("EF__STATE_DIR"), "{err}");
    }

    fn drill(at: i64, ok: bool, secs: f64) -> RunRecord {
        RunRecord {
            finished_at: at,
            outcome: if ok { RunOutcome::Ok } else { RunOutcome::Failed },
            file_name: Some(format!("app_backup_{at}.sql.gz")),
            size_bytes: Some(10),
            duration_ms: (secs * 1000.0) as u64,
            message: if ok { "ok".into() } else { "table t: 3 rows, the manifest says 4".into() },
            detail: Some(serde_json::json!({"restore_seconds": secs, "rows": 4})),
        }
    }

    /// Pins issue 17 (history): every kind of run is kept with its database and detail,
    /// newest first; drills count per database and do not touch the backup counters or the
    /// backup's `last_run`; all of it survives a reopen.
    #[test]
    fn the_history_keeps_every_kind_of_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let b = store.begin(Trigger::Scheduled, 100).unwrap();
        store.finish(Some(b), Trigger::Scheduled, 100, &ok_run(105, "app_backup_100.sql.gz", "disabled")).unwrap();
        let d = store.begin_run(RunKind::Drill, Trigger::Scheduled, Some("app"), 200).unwrap();
        store.finish_run(Some(d), RunKind::Drill, Trigger::Scheduled, Some("app"), 200, &drill(210, true, 2.5)).unwrap();
        store.finish_run(None, RunKind::Drill, Trigger::Cli, Some("app"), 300, &drill(301, false, 1.0)).unwrap();
        store.finish_run(None, RunKind::Drill, Trigger::Cli, Some("shop"), 400, &drill(402, true, 0.5)).unwrap();
        let verify = RunRecord { detail: None, ..drill(501, true, 0.0) };
        store.finish_run(None, RunKind::Verify, Trigger::Cli, Some("app"), 500, &verify).unwrap();
        drop(store);

        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.totals, Totals { successes: 1, failures: 0, s3_upload_failures: 0, retention_clock_skips: 0 }, "drills are not backups");
        assert_eq!(loaded.last_run.unwrap().started_at, 100);
        assert_eq!(store.latest_start().unwrap(), Some(100), "the clock guard looks at backups");
        let recent = store.recent(10).unwrap();
        let kinds: Vec<(&str, Option<&str>, i64)> = recent.iter().map(|e| (e.kind.as_str(), e.database.as_deref(), e.started_at)).collect();
        assert_eq!(
            kinds,
            [
                ("verify", Some("app"), 500),
                ("drill", Some("shop"), 400),
                ("drill", Some("app"), 300),
                ("drill", Some("app"), 200),
                ("backup", None, 100)
            ]
        );
        assert_eq!(recent[3].detail, Some(serde_json::json!({"restore_seconds": 2.5, "rows": 4})));
        assert_eq!((recent[2].outcome.as_deref(), recent[2].trigger.as_str()), (Some("failed"), "cli"));
        assert_eq!(store.recent(2).unwrap().len(), 2);
        let stats = store.drill_stats().unwrap();
        assert_eq!(
            stats,
            [
                DrillStats { database: "app".into(), last_success_at: Some(210), last_restore_seconds: Some(2.5), failures: 1, successes: 1 },
                DrillStats { database: "shop".into(), last_success_at: Some(402), last_restore_seconds: Some(0.5), failures: 0, successes: 1 },
            ]
        );
        let last = store.last_of(RunKind::Drill, Some("app")).unwrap().unwrap();
        assert_eq!((last.started_at, last.succeeded), (300, false));
        assert!(store.last_of(RunKind::Drill, Some("nope")).unwrap().is_none());
    }

    /// Pins issue 17: notification outcomes are runs of the history; failures count per channel
    /// and survive a reopen.
    #[test]
    fn notification_outcomes_are_recorded_and_failures_counted_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let sent = |ok: bool, channel: &str| RunRecord {
            finished_at: 9,
            outcome: if ok { RunOutcome::Ok } else { RunOutcome::Failed },
            file_name: None,
            size_bytes: None,
            duration_ms: 5,
            message: format!("backup-failed to {channel}"),
            detail: Some(serde_json::json!({"channel": channel, "event": "backup-failed"})),
        };
        store.finish_run(None, RunKind::Notification, Trigger::Scheduled, None, 8, &sent(false, "webhook")).unwrap();
        store.finish_run(None, RunKind::Notification, Trigger::Scheduled, None, 8, &sent(false, "webhook")).unwrap();
        store.finish_run(None, RunKind::Notification, Trigger::Scheduled, None, 8, &sent(true, "email")).unwrap();
        store.finish_run(None, RunKind::Notification, Trigger::Scheduled, None, 8, &sent(false, "slack")).unwrap();
        drop(store);
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        assert_eq!(store.notification_failures().unwrap(), [("slack".to_string(), 1), ("webhook".to_string(), 2)]);
        assert_eq!(store.recent(10).unwrap().iter().filter(|r| r.kind == "notification").count(), 4);
    }

    /// Pins issue 17 (audit trail): a retention pass that deleted or failed is a run of the
    /// history; one that did nothing is not.
    #[test]
    fn retention_passes_are_recorded_when_they_did_something() {
        let mut report = crate::engine::BackupReport {
            retention: crate::retention::RetentionReport { deleted: vec!["a.sql.gz".into(), "b.sql.gz".into()], ..Default::default() },
            ..crate::engine::BackupReport::only(BackupOutcome::Busy(String::new()), std::time::Duration::ZERO)
        };
        let r = retention_records(&report, 5);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].outcome, r[0].message.as_str()), (RunOutcome::Ok, "local: 2 old backup(s) deleted"));
        report.retention = crate::retention::RetentionReport::default();
        report.s3_retention.error = Some("clock behind".into());
        report.s3_retention.clock_behind = true;
        let r = retention_records(&report, 5);
        assert_eq!((r.len(), r[0].outcome), (1, RunOutcome::Failed));
        assert_eq!(r[0].detail.as_ref().unwrap()["store"], "s3");
        report.s3_retention = crate::retention::RetentionReport::default();
        assert!(retention_records(&report, 5).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        report.retention.deleted = vec!["x.sql.gz".into()];
        store.record_retention(Trigger::Scheduled, &report).unwrap();
        assert_eq!(store.recent(5).unwrap()[0].kind, "retention");
    }

    /// Pins issue 17: a drill cut by a crash is recorded as interrupted, and counted neither
    /// as a backup failure nor as a failed drill (it proved nothing; a service restart during a
    /// drill must not page anyone).
    #[test]
    fn an_interrupted_drill_is_recorded_but_not_counted_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let id = store.begin_run(RunKind::Drill, Trigger::Scheduled, Some("app"), 500).unwrap();
        store.conn().execute("UPDATE runs SET owner = '999999999:1' WHERE id = ?1", [id]).unwrap();
        drop(store);
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        assert_eq!(store.interrupted_at_open(), 1);
        assert_eq!(store.load().unwrap().totals.failures, 0, "not a backup failure");
        assert!(store.drill_stats().unwrap().iter().all(|d| d.failures == 0), "not a failed drill");
        assert_eq!(store.recent(1).unwrap()[0].outcome.as_deref(), Some("interrupted"));
    }

    #[test]
    fn the_history_is_pruned_by_count_but_never_a_running_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let running = store.begin_run(RunKind::Drill, Trigger::Scheduled, Some("app"), 1).unwrap();
        for at in 2..12 {
            store.finish_run(None, RunKind::Verify, Trigger::Cli, None, at, &drill(at, true, 0.0)).unwrap();
        }
        let mut conn = store.conn();
        let tx = conn.transaction().unwrap();
        prune(&tx, 4).unwrap();
        tx.commit().unwrap();
        drop(conn);
        let left: Vec<i64> = store.recent(100).unwrap().iter().map(|e| e.started_at).collect();
        assert_eq!(left, [11, 10, 9, 8, 1], "the 4 newest by id, and the run still going on");
        assert!(store.recent(100).unwrap().iter().any(|e| e.id == running));
    }

    /// A version-1 store (every run a backup) opens as version 2 with its runs as backups.
    #[test]
    fn a_version_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, trigger TEXT NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER,
                 outcome TEXT, file_name TEXT, size_bytes INTEGER, duration_ms INTEGER, message TEXT, s3 TEXT,
                 retention_clock_skips INTEGER NOT NULL DEFAULT 0, owner TEXT);
             CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO runs (trigger, started_at, finished_at, outcome, message) VALUES ('cli', 7, 8, 'ok', 'ok');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = StateStore::open_in(dir.path(), "s.sqlite").unwrap();
        let version: i32 = store.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.recent(5).unwrap()[0].kind, "backup");
        assert_eq!(store.load().unwrap().last_run.unwrap().started_at, 7);
    }
}

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

/// The schema this build writes. Version 1: `runs`, `counters`.
pub const SCHEMA_VERSION: i32 = 1;

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
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
            Trigger::Cli => "cli",
            Trigger::Retry => "retry",
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
    fn as_str(self) -> &'static str {
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
        Ok(())
    }

    /// Marks runs whose process is gone as interrupted failures; a run another live process
    /// (serve beside a CLI backup) is still doing is left alone.
    fn mark_interrupted(&self) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = self.sql(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate))?;
        let open: Vec<(i64, Option<String>)> = {
            let mut q = self.sql(tx.prepare("SELECT id, owner FROM runs WHERE finished_at IS NULL"))?;
            let rows = self.sql(q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))))?;
            self.sql(rows.collect())?
        };
        let cut: Vec<i64> = open.into_iter().filter(|(_, owner)| !owner.as_deref().is_some_and(owner_alive)).map(|(id, _)| id).collect();
        for id in &cut {
            self.sql(
                tx.execute("UPDATE runs SET finished_at = ?2, outcome = 'interrupted', message = ?3 WHERE id = ?1", params![id, now(), INTERRUPTED]),
            )?;
        }
        if !cut.is_empty() {
            self.sql(bump(&tx, "failures", cut.len() as u64))?;
        }
        self.sql(tx.commit())?;
        Ok(cut.len())
    }

    /// The last run, the last success and the counters.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let conn = self.conn();
        let last_run = self.sql(
            conn.query_row(
                "SELECT started_at, finished_at, outcome, file_name, message FROM runs
                 WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1",
                [],
                |r| {
                    Ok(LastRun {
                        started_at: r.get(0)?,
                        finished_at: r.get(1)?,
                        succeeded: RunOutcome::parse(&r.get::<_, String>(2)?) == RunOutcome::Ok,
                        file_name: r.get(3)?,
                        message: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    })
                },
            )
            .optional(),
        )?;
        let last_success = self.sql(
            conn.query_row(
                "SELECT finished_at, size_bytes, duration_ms FROM runs
                 WHERE outcome = 'ok' ORDER BY finished_at DESC, id DESC LIMIT 1",
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
        self.sql(self.conn().query_row("SELECT max(started_at) FROM runs", [], |r| r.get(0)))
    }

    /// Records a run as started; returns its id for [`StateStore::finish`].
    pub fn begin(&self, trigger: Trigger, started_at: i64) -> Result<i64, StateError> {
        let conn = self.conn();
        self.sql(conn.execute(
            "INSERT INTO runs (trigger, started_at, owner) VALUES (?1, ?2, ?3)",
            params![trigger.as_str(), started_at, owner_token(std::process::id())],
        ))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a run ended and counts it, in one transaction. Without an id (its start
    /// could not be recorded) the whole run is inserted now.
    pub fn finish(&self, id: Option<i64>, trigger: Trigger, started_at: i64, f: &Finished) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = self.sql(conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate))?;
        let id = match id {
            Some(id) => id,
            None => {
                self.sql(tx.execute("INSERT INTO runs (trigger, started_at) VALUES (?1, ?2)", params![trigger.as_str(), started_at]))?;
                tx.last_insert_rowid()
            }
        };
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
        self.sql(tx.commit())
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
}

impl Recording {
    pub fn begin(config: &Config, trigger: Trigger, started_at: i64) -> Recording {
        let store = StateStore::open(config).map_err(|e| tracing::error!("{e}; this run is not recorded")).ok();
        if let Some(n) = store.as_ref().map(StateStore::interrupted_at_open).filter(|n| *n > 0) {
            tracing::error!("{n} earlier backup run(s) were cut by the end of their process; recorded as failed");
        }
        let log = |e: StateError| tracing::error!("{e}; the backup runs anyway");
        let last_recorded_run = store.as_ref().and_then(|s| s.latest_start().map_err(log).ok().flatten());
        let id = store.as_ref().and_then(|s| s.begin(trigger, started_at).map_err(log).ok());
        Recording { store, id, trigger, started_at, last_recorded_run }
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
    }
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
}

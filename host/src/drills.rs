//! Running restore drills for the CLI (`ef-backup drill`) and the service (the policy's drill
//! schedule): one backup after another, each recorded in the history and told to the channels.
//! Never two drills at once in one process; a drill holds no backup lock, so backups go on.

use std::sync::Mutex;

use crate::alerts::Alerts;
use crate::config::drill::DrillPlace;
use crate::config::Config;
use crate::drill::{self, cluster, DrillReport};
use crate::model::{Event, EventKind, PolicyConfig};
use crate::policy::Policy;
use crate::restore::Source;
use crate::state::{RunKind, RunOutcome, RunRecord, StateStore, Trigger};
use crate::util::now;

/// One drill at a time in this process (the scheduler's, or a CLI's).
static DRILLING: Mutex<()> = Mutex::new(());

/// One backup drilled: the report, or why it could not be drilled or did not restore.
#[derive(Debug)]
pub struct Drilled {
    pub backup: String,
    pub database: Option<String>,
    pub started_at: i64,
    pub result: Result<DrillReport, String>,
}

impl Drilled {
    pub fn passed(&self) -> bool {
        self.result.as_ref().is_ok_and(DrillReport::passed)
    }

    /// One line for the log, the history and the messages.
    pub fn summary(&self) -> String {
        match &self.result {
            Ok(r) => r.summary(),
            Err(e) => format!("{}: {e}", self.backup),
        }
    }
}

/// Where drills can run, or why they cannot (for status and the start-up log).
pub fn availability(config: &Config) -> Result<String, String> {
    match &config.drill {
        DrillPlace::Server(db) => Ok(format!("on the drill server {}:{} (EF__DRILL_DB_HOST)", db.host, db.port)),
        DrillPlace::Throwaway { os_user } => {
            // SAFETY: geteuid has no preconditions; getpwnam reads the user database with a
            // NUL-terminated name and its result is only compared with null.
            let root = unsafe { libc::geteuid() } == 0;
            let name = std::ffi::CString::new(os_user.as_str()).map_err(|_| format!("EF__DRILL_OS_USER {os_user:?} holds a NUL byte"))?;
            if root && unsafe { libc::getpwnam(name.as_ptr()) }.is_null() {
                return Err(format!(
                    "ef-backup runs as root and the OS user {os_user:?} that would run the throwaway server does not exist: create it \
                     (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {os_user}), set EF__DRILL_OS_USER to \
                     another unprivileged user (not postgres), or name a separate drill server with EF__DRILL_DB_HOST"
                ));
            }
            let newest = (13..=40).rev().find_map(|m| cluster::find_server_bins(m, config.pg_bin.as_deref()).ok());
            match newest {
                Some(bins) => Ok(format!("on a throwaway PostgreSQL server per drill (newest installed: {}, run as {os_user})", bins.major)),
                None => Err("no PostgreSQL server binaries (initdb, postgres) under EF__PG_BIN or /usr/lib/postgresql/*/bin, and no \
                     EF__DRILL_DB_HOST: install the server package of your PostgreSQL version (e.g. apt-get install postgresql-15) or \
                     name a separate drill server"
                    .into()),
            }
        }
    }
}

/// Drills each of `names` (local backups, or paths) in turn. `state`: the history to record
/// in (None when it cannot be opened: the drills still run and are told).
pub fn run(
    config: &Config,
    policy: &dyn Policy,
    view: &PolicyConfig,
    names: &[String],
    trigger: Trigger,
    alerts: &Alerts,
    state: Option<&StateStore>,
) -> Vec<Drilled> {
    // A drill that panicked poisons the lock; the next one must still run.
    let _one_at_a_time = match DRILLING.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            tracing::warn!("a restore drill is already running in this process; not starting another");
            return Vec::new();
        }
    };
    let log = |e: crate::state::StateError| tracing::error!("{e}; the drill runs anyway");
    let mut out = Vec::new();
    for name in names {
        let path = if std::path::Path::new(name).is_absolute() { std::path::PathBuf::from(name) } else { config.backup_dir.join(name) };
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| name.clone());
        let entry = crate::model::BackupEntry { name: file_name.clone(), size_bytes: 0, modified: 0 };
        let database = policy.recognise(view, &[entry]).ok().and_then(|r| r.into_iter().next()).map(|(_, i)| i.database);
        let previous = state.and_then(|s| s.last_of(RunKind::Drill, database.as_deref()).map_err(log).ok().flatten());
        let started_at = now();
        let id = state.and_then(|s| s.begin_run(RunKind::Drill, trigger, database.as_deref(), started_at).map_err(log).ok());
        tracing::info!("restore drill of {file_name} starting");
        let mut source = Source::file(&path, &config.keys);
        let result = drill::drill(&mut source, &config.trusted_keys, &config.drill, &config.db, config.pg_bin.as_deref()).map_err(|e| e.to_string());
        let drilled = Drilled {
            backup: file_name.clone(),
            database: database.clone().or_else(|| result.as_ref().ok().and_then(|r| r.database.clone())),
            started_at,
            result,
        };
        // Ctrl-C or SIGTERM (the CLI drops the scratch database on them, which fails the
        // load): the drill proved nothing either way, so it is recorded as interrupted, told
        // to nobody, and no further backup is drilled.
        if let Some(sig) = crate::signals::received() {
            tracing::warn!("restore drill of {file_name} interrupted by signal {sig}");
            if let Some(s) = state {
                let record = RunRecord {
                    finished_at: now(),
                    outcome: RunOutcome::Interrupted,
                    file_name: Some(file_name.clone()),
                    size_bytes: None,
                    duration_ms: 0,
                    message: format!("interrupted by signal {sig}"),
                    detail: None,
                };
                if let Err(e) = s.finish_run(id, RunKind::Drill, trigger, drilled.database.as_deref(), started_at, &record) {
                    tracing::error!("{e}; this drill is missing from the history");
                }
            }
            out.push(drilled);
            break;
        }
        let passed = drilled.passed();
        let summary = drilled.summary();
        if passed {
            tracing::info!("restore drill passed: {summary}");
        } else {
            tracing::error!("restore drill FAILED: {summary}");
        }
        if let Some(s) = state {
            let r = drilled.result.as_ref().ok();
            let record = RunRecord {
                finished_at: now(),
                outcome: if passed { RunOutcome::Ok } else { RunOutcome::Failed },
                file_name: Some(file_name.clone()),
                size_bytes: r.map(|r| r.stored_bytes),
                duration_ms: r.map(|r| ((r.restore_seconds + r.verify_seconds) * 1000.0) as u64).unwrap_or(0),
                message: summary.clone(),
                detail: r.map(DrillReport::detail),
            };
            if let Err(e) = s.finish_run(id, RunKind::Drill, trigger, drilled.database.as_deref(), started_at, &record) {
                tracing::error!("{e}; this drill is missing from the history");
            }
        }
        let kind = if passed { EventKind::DrillSucceeded } else { EventKind::DrillFailed };
        let event =
            Event { databases: drilled.database.iter().cloned().collect(), file_name: Some(file_name), previous, ..Event::new(kind, now(), summary) };
        alerts.emit(policy, view, &event);
        out.push(drilled);
    }
    out
}

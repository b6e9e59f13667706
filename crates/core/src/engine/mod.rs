//! One backup run: policy name → pg_dump → the codec's encoder → the local `name.partial`
//! (required) and the mirror's upload (best effort) → fsync → rename, then retention in each
//! store as the policy decides. The outcome goes back to the policy to be shaped.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{Format, Progress};
use crate::config::Config;
use crate::db::{DbError, PgTools};
use crate::dump::{self, DumpError};
use crate::model::{BackupDone, BackupEntry, BackupFailed, BackupOutcome, ErrorKind, S3Outcome, Target};
use crate::policy::{self, Policy, PolicyError};
use crate::retention::{self, Guard, Selection};
use crate::store::local::{LocalError, LocalStore, PartialFile};
use crate::store::{Mirror, Upload};
use crate::util::mb;

/// A `.partial` of ours that no writer holds is removed once it has not been written to for
/// this long: the grace covers the instants a live writer does not hold its lock (between
/// creating the file and locking it, and between closing it and the rename of the commit).
pub const PARTIAL_MIN_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("backup of database {db} failed: {err}")]
    Dump { db: String, err: DumpError },
    #[error("writing the backup {path} failed: {err}{hint}")]
    Write { path: String, err: std::io::Error, hint: String },
    #[error(transparent)]
    LockLost(#[from] crate::lock::LockLost),
    #[error(transparent)]
    NoRoom(#[from] crate::space::NoRoom),
}

impl BackupError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Policy(_) => ErrorKind::Policy,
            BackupError::Db(DbError::Connect { .. } | DbError::Tool { .. } | DbError::Sql { .. }) => ErrorKind::Dump,
            BackupError::Db(_) => ErrorKind::Config,
            BackupError::Local(_) | BackupError::Write { .. } | BackupError::NoRoom(_) => ErrorKind::Storage,
            BackupError::LockLost(_) => ErrorKind::Dump,
            BackupError::Dump { err: DumpError::Timeout(_), .. } => ErrorKind::Timeout,
            BackupError::Dump { err: DumpError::Cancelled, .. } => ErrorKind::Internal,
            BackupError::Dump { .. } => ErrorKind::Dump,
        }
    }
}

fn write_hint(err: &std::io::Error, dir: &std::path::Path) -> String {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!(
            " — the backup file system is full (the backup directory holds {}): free space in EF__BACKUP_DIR or point it at a larger disk",
            crate::space::occupancy(dir)
        ),
        Some(libc::EROFS) => " — the backup file system is read-only: point EF__BACKUP_DIR at a writable directory".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => " — permission denied: make EF__BACKUP_DIR writable for this user".into(),
        _ => String::new(),
    }
}

pub use crate::retention::RetentionReport;

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub outcome: BackupOutcome,
    pub retention: RetentionReport,
    pub s3_retention: RetentionReport,
    /// Uncompressed bytes pg_dump produced (0 on failure).
    pub dump_bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub now: i64,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Set to stop the backup (pg_dump is killed, nothing is kept).
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
    /// When the last run recorded in the state store started (Unix seconds): a `now` earlier
    /// than this means the clock went backwards.
    pub last_recorded_run: Option<i64>,
    /// The run lock this run holds: re-checked before the commit and before retention.
    pub run_lock: Option<Arc<crate::lock::RunLock>>,
}

struct Done {
    name: String,
    path: String,
    size: u64,
    dump_bytes: u64,
    s3: S3Outcome,
}

/// The compressed stream's destinations: the local file (its errors fail the backup) and the
/// S3 upload (its errors are recorded by the upload and only reported).
struct Sinks {
    file: PartialFile,
    s3: Option<Box<dyn Upload>>,
}

impl std::io::Write for Sinks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        if let Some(s3) = &mut self.s3 {
            s3.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn progress_bar(progress: &Arc<Progress>, enabled: bool) -> Option<(indicatif::ProgressBar, std::thread::JoinHandle<()>)> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"));
    let (b, p) = (bar.clone(), Arc::clone(progress));
    let ticker = std::thread::spawn(move || {
        let started = Instant::now();
        while !b.is_finished() {
            let (read, written) = (p.bytes_in.load(Ordering::Relaxed), p.bytes_out.load(Ordering::Relaxed));
            let rate = read as f64 / started.elapsed().as_secs_f64().max(0.001) / 1048576.0;
            b.set_message(format!("pg_dump {} → gzip {} ({rate:.1} MB/s)", mb(read), mb(written)));
            b.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Some((bar, ticker))
}

/// Where the plain dump comes from: `pg_dump` ([`PgDump`]) in production; the engine's unit
/// tests write a dump of their own (or fail half-way) to test everything after it.
pub trait DumpSource {
    /// Writes the whole dump into `out`; stops early when `cancel` is set.
    fn dump(&self, cancel: &Arc<AtomicBool>, out: &mut dyn std::io::Write) -> Result<dump::DumpStats, DumpError>;
}

/// `pg_dump` of the configured database, with the backup timeout and the lock wait.
pub struct PgDump {
    tools: PgTools,
    database: String,
    timeout: Duration,
    lock_wait: Duration,
}

impl PgDump {
    /// Finds the client tools that match the server (the lookup's failure fails the run).
    pub fn for_config(config: &Config) -> Result<PgDump, DbError> {
        Ok(PgDump {
            tools: PgTools::for_server(&config.db, config.pg_bin.as_deref())?,
            database: config.db.name.clone(),
            timeout: Duration::from_secs(config.timeout_secs),
            lock_wait: Duration::from_secs(config.lock_wait_timeout_secs),
        })
    }
}

impl DumpSource for PgDump {
    /// The database's properties first (one comment line, see `restore::props::header_line`:
    /// a plain dump carries no owner, ACL, settings or comment of the database itself), then
    /// pg_dump's output.
    fn dump(&self, cancel: &Arc<AtomicBool>, mut out: &mut dyn std::io::Write) -> Result<dump::DumpStats, DumpError> {
        if let Some(line) = self.properties_line() {
            out.write_all(line.as_bytes()).map_err(DumpError::Write)?;
        }
        dump::run(&self.tools, &self.database, self.timeout, self.lock_wait, cancel, &mut out)
    }
}

impl PgDump {
    /// The backup's first line; None (with a warning) when the properties cannot be read or do
    /// not fit: the backup itself never fails for them.
    fn properties_line(&self) -> Option<String> {
        use crate::restore::props;
        // Read from the database itself: the role may connect nowhere else. pg_dump meets the
        // same server next: if it cannot work either, it says why.
        let mut properties = match props::read(&self.tools, &self.database, &self.database) {
            Ok(p) => p?,
            Err(e) => {
                tracing::warn!("the backup goes without the database's own properties (owner, ACL, settings, comment): {e}");
                return None;
            }
        };
        match props::object_roles(&self.tools, &self.database) {
            Ok(roles) => properties.object_roles = roles,
            Err(e) => tracing::warn!("the backup goes without the list of roles its objects name (a restore checks for them up front): {e}"),
        }
        let line = props::header_line(&properties);
        // Restore reads at most this much of it; a longer line would make the backup unreadable.
        if line.len() > props::HEADER_MAX {
            tracing::warn!(
                "the database's own properties (owner, ACL, settings, comment, roles) take {} KiB, more than a backup carries ({} KiB): \
                 this backup goes without them (a restore with --drop-existing keeps the replaced database's)",
                line.len() >> 10,
                props::HEADER_MAX >> 10
            );
            return None;
        }
        Some(line)
    }
}

/// Makes the run's [`DumpSource`] when the run gets that far (a run the policy could not name
/// never looks for pg_dump).
pub type SourceFactory<'a> = &'a dyn Fn() -> Result<Box<dyn DumpSource + 'a>, BackupError>;

fn dump_to_file(
    config: &Config,
    policy: &dyn Policy,
    source: SourceFactory<'_>,
    store: &LocalStore,
    s3: Option<&dyn Mirror>,
    name: &str,
    opts: &BackupOptions,
) -> Result<Done, BackupError> {
    // The whole run, upload included, ends by the backup timeout.
    let deadline = Instant::now() + Duration::from_secs(config.timeout_secs);
    let source = source()?;
    store.ensure_dir()?;
    let newest = store.list().ok().and_then(|l| crate::catalog::recognised(policy, &config.policy, &l).ok()).and_then(|r| r.into_iter().next());
    crate::space::check_room(store.dir(), newest.map_or(0, |r| r.backup.size_bytes))?;
    let file = store.create(name)?;
    let path = store.path_of(name).display().to_string();
    tracing::info!("开始备份数据库到: {path}");
    let upload = s3.map(|s3| {
        tracing::info!("开始上传到 S3: {}", s3.url(name));
        s3.upload(name)
    });
    let sinks = Sinks { file, s3: upload };
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(&progress, opts.progress);
    // The only format so far; the policy's name was checked to end in its suffix.
    let mut gz = Format::Gzip.encoder(sinks, config.gzip_level, config.compression_threads(), Arc::clone(&progress));
    // Progress is read from the compressor's counters (`progress_bar`), not from pg_dump.
    let dumped = source.dump(&opts.cancel, &mut gz);
    if let Some((bar, ticker)) = bar {
        bar.finish_and_clear();
        let _ = ticker.join();
    }
    let write_err = |err: std::io::Error| BackupError::Write { path: path.clone(), hint: write_hint(&err, store.dir()), err };
    let stats = match dumped {
        Ok(stats) => stats,
        Err(err) => {
            let sink_err = gz.abandon();
            return Err(match err {
                DumpError::Write(e) => write_err(sink_err.unwrap_or(e)),
                err => BackupError::Dump { db: config.db.name.clone(), err },
            });
        }
    };
    let Sinks { file, s3: mut upload } = gz.finish().map_err(write_err)?;
    if let Some(lock) = &opts.run_lock {
        lock.still_held()?;
    }
    // The last part travels while the local file is fsynced; completing waits for the local
    // commit: if that fails, dropping the upload aborts it, so S3 never holds a backup that
    // failed here. An upload that fell behind sends its rest from the committed file.
    if let Some(upload) = &mut upload {
        upload.seal();
    }
    let (committed, size) = file.commit()?;
    tracing::info!("本地数据库备份成功: {name} ({})", mb(size));
    let s3 = match upload.map(|u| u.finish(&committed, deadline, &opts.cancel)) {
        None => S3Outcome::Disabled,
        Some(Ok(url)) => {
            tracing::info!("✓ S3 上传成功: {name}");
            S3Outcome::Uploaded(url)
        }
        Some(Err(e)) => {
            tracing::error!("✗ S3 上传失败: {name}: {e} (the local backup is kept)");
            S3Outcome::Failed(e)
        }
    };
    Ok(Done { name: name.to_string(), path, size, dump_bytes: stats.bytes, s3 })
}

/// The running policy as retention's [`Selection`]: recognition per name
/// ([`Policy::recognise`]), so an odd name is only "not ours" and never stops retention.
struct PolicySelection<'a> {
    policy: &'a dyn Policy,
    config: &'a crate::model::PolicyConfig,
}

impl Selection for PolicySelection<'_> {
    fn recognise(&self, listing: &[BackupEntry]) -> Result<Vec<(BackupEntry, crate::model::NameInfo)>, String> {
        self.policy.recognise(self.config, listing).map_err(|e| e.to_string())
    }

    fn select_expired(
        &self,
        listing: &[BackupEntry],
        ours: &[(BackupEntry, crate::model::NameInfo)],
        now: i64,
        target: Target,
    ) -> Result<Vec<String>, String> {
        let selected = self.policy.select_expired_among(listing, ours, now, target, self.config).map_err(|e| e.to_string())?;
        policy::log_reasons(&selected, target);
        Ok(selected.into_iter().map(|(n, _)| n).collect())
    }
}

/// S3 retention: the same contract as local, against the bucket listing under the prefix.
pub fn apply_s3_retention(s3: &dyn Mirror, policy: &dyn Policy, config: &Config, guard: &Guard, just_written: &str) -> RetentionReport {
    // Uploads older than a backup can run are dead: abort them so their parts stop costing.
    // Only names this deployment's policy recognises: another database's deployment under the
    // same prefix may have a live upload. (An upload cut off under a previous policy's names is
    // left to the bucket's AbortIncompleteMultipartUpload lifecycle rule; see README, S3.)
    let cfg = &config.policy;
    let ours = |n: &str| matches!(policy.parse_name(cfg, n), Ok(Some(_)));
    match s3.abort_stale_uploads(Duration::from_secs(config.timeout_secs + 3600), &ours) {
        Ok(0) => {}
        Ok(n) => tracing::info!("aborted {n} incomplete S3 upload(s) left by interrupted runs"),
        Err(e) => tracing::warn!("could not check for incomplete S3 uploads: {e}"),
    }
    retention::apply(s3, &PolicySelection { policy, config: cfg }, guard, just_written, config.retention_days)
}

/// The original's start-up line about S3.
pub fn log_s3_state(config: &Config) {
    match &config.s3 {
        Some(s3) => tracing::info!("✓ S3 备份已启用: bucket={}, retention={}天", s3.bucket, config.retention_days),
        None => tracing::info!("S3 备份未启用 (set EF__AWS_ACCESS_KEY_ID, EF__AWS_SECRET_ACCESS_KEY and EF__AWS_S3_BACKUP_BUCKET to enable it)"),
    }
}

/// Deletes what the policy selects among the listed local backups, unless a safety rule of
/// the host keeps it ([`Guard::decide`]). Never fails the backup: problems are logged and reported.
pub fn apply_local_retention(store: &LocalStore, policy: &dyn Policy, config: &Config, guard: &Guard, just_written: &str) -> RetentionReport {
    let selection = PolicySelection { policy, config: &config.policy };
    retention::apply(store, &selection, guard, just_written, config.retention_days)
}

/// Removes the `.partial` files of this deployment's names that no live writer holds: a
/// crashed run's leftover on a nearly full disk would otherwise make every later backup fail
/// with ENOSPC. Other partials (another deployment's, a foreign tool's) are left alone.
pub fn remove_abandoned_partials(store: &LocalStore, policy: &dyn Policy, config: &Config) {
    let partials = store.list_partials();
    if partials.is_empty() {
        return;
    }
    let entries: Vec<BackupEntry> = partials.iter().map(BackupEntry::from).collect();
    let ours = match policy.recognise(&config.policy, &entries) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("left partial files in {} alone: {e}", store.dir().display());
            return;
        }
    };
    for (b, _) in ours {
        match store.remove_abandoned_partial(&b.name, PARTIAL_MIN_IDLE) {
            Ok(true) => {
                tracing::info!("removed {}{}, left over by an interrupted backup ({})", b.name, crate::store::local::PARTIAL_SUFFIX, mb(b.size_bytes))
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Runs one backup, named by the policy. Always returns an outcome (done or failed) for the
/// policy to shape; a failure leaves no file under a final name and deletes nothing.
pub fn run(config: &Config, policy: &dyn Policy, s3: Option<&dyn Mirror>, opts: BackupOptions) -> BackupReport {
    let name = policy.backup_name(&config.policy, opts.now);
    run_named(config, policy, s3, name, opts)
}

/// [`run`] with the policy's naming decision already taken (the service needs the name
/// before the run, to answer "busy").
pub fn run_named(
    config: &Config,
    policy: &dyn Policy,
    s3: Option<&dyn Mirror>,
    name: Result<String, PolicyError>,
    opts: BackupOptions,
) -> BackupReport {
    let pg_dump = || Ok(Box::new(PgDump::for_config(config)?) as Box<dyn DumpSource>);
    run_from(config, policy, &pg_dump, s3, name, opts)
}

/// [`run_named`] with the dump taken from `source` instead of pg_dump.
pub fn run_from(
    config: &Config,
    policy: &dyn Policy,
    source: SourceFactory<'_>,
    s3: Option<&dyn Mirror>,
    name: Result<String, PolicyError>,
    opts: BackupOptions,
) -> BackupReport {
    let started = Instant::now();
    let store = LocalStore::new(&config.backup_dir);
    let (name, result) = match name {
        Ok(name) => {
            remove_abandoned_partials(&store, policy, config);
            let result = dump_to_file(config, policy, source, &store, s3, &name, &opts);
            (Some(name), result)
        }
        Err(e) => (None, Err(e.into())),
    };
    let finished_at = opts.now + started.elapsed().as_secs() as i64;
    match result {
        Ok(done) => {
            let guard = Guard { now: opts.now, min_keep: config.min_keep, last_recorded_run: opts.last_recorded_run };
            // A lost run lock means another process may be running retention right now.
            let lost = opts.run_lock.as_ref().and_then(|l| l.still_held().err()).map(|e| e.to_string());
            if let Some(e) = &lost {
                tracing::error!("retention skipped, nothing deleted: {e}");
            }
            let skipped = |e: &String| RetentionReport { error: Some(e.clone()), ..Default::default() };
            let retention = lost.as_ref().map_or_else(|| apply_local_retention(&store, policy, config, &guard, &done.name), skipped);
            // Old S3 copies go only after a new one arrived.
            let s3_retention = match (&done.s3, s3, &lost) {
                (_, _, Some(e)) => skipped(e),
                (S3Outcome::Uploaded(_), Some(s3), None) => apply_s3_retention(s3, policy, config, &guard, &done.name),
                _ => RetentionReport::default(),
            };
            BackupReport {
                outcome: BackupOutcome::Done(BackupDone {
                    file_name: done.name,
                    path: done.path,
                    size_bytes: done.size,
                    started_at: opts.now,
                    finished_at,
                    s3: done.s3,
                }),
                retention,
                s3_retention,
                dump_bytes: done.dump_bytes,
                elapsed: started.elapsed(),
            }
        }
        Err(err) => {
            tracing::error!("数据库备份失败: {err}");
            BackupReport {
                outcome: BackupOutcome::Failed(BackupFailed { kind: err.kind(), message: err.to_string(), file_name: name }),
                retention: RetentionReport::default(),
                s3_retention: RetentionReport::default(),
                dump_bytes: 0,
                elapsed: started.elapsed(),
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! One backup run: policy name → pg_dump → parallel gzip → `name.partial` → fsync → rename,
//! then local retention as the policy decides. The outcome goes back to the policy to be shaped.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::compress::{ParallelGzip, Progress};
use crate::config::Config;
use crate::db::{DbError, PgTools};
use crate::dump::{self, DumpError};
use crate::policy::{self, BackupDone, BackupEntry, BackupFailed, BackupOutcome, ErrorKind, Policy, PolicyError, S3Outcome, Target};
use crate::store::local::{LocalError, LocalStore};

/// Partial files older than this are leftovers of crashed runs.
pub const STALE_PARTIAL: Duration = Duration::from_secs(86_400);

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
    Write { path: String, err: std::io::Error, hint: &'static str },
}

impl BackupError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Policy(_) => ErrorKind::Policy,
            BackupError::Db(DbError::Connect { .. } | DbError::Tool { .. }) => ErrorKind::Dump,
            BackupError::Db(_) => ErrorKind::Config,
            BackupError::Local(_) | BackupError::Write { .. } => ErrorKind::Storage,
            BackupError::Dump { err: DumpError::Timeout(_), .. } => ErrorKind::Timeout,
            BackupError::Dump { .. } => ErrorKind::Dump,
        }
    }
}

fn write_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => " — the backup file system is full: free space in EF__BACKUP_DIR or point it at a larger disk",
        Some(libc::EROFS) => " — the backup file system is read-only: point EF__BACKUP_DIR at a writable directory",
        Some(libc::EACCES) | Some(libc::EPERM) => " — permission denied: make EF__BACKUP_DIR writable for this user",
        _ => "",
    }
}

/// What retention did after a good backup.
#[derive(Debug, Default, Clone)]
pub struct RetentionReport {
    pub deleted: Vec<String>,
    /// Set when retention was skipped or partly failed; the backup itself is still good.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub outcome: BackupOutcome,
    pub retention: RetentionReport,
    /// Uncompressed bytes pg_dump produced (0 on failure).
    pub dump_bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct BackupOptions {
    pub now: i64,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

struct Done {
    name: String,
    path: String,
    size: u64,
    dump_bytes: u64,
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / (1024.0 * 1024.0))
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

fn dump_to_file(config: &Config, store: &LocalStore, name: &str, opts: &BackupOptions) -> Result<Done, BackupError> {
    let tools = PgTools::for_server(&config.db, config.pg_bin.as_deref())?;
    store.ensure_dir()?;
    let file = store.create(name)?;
    let path = store.path_of(name).display().to_string();
    tracing::info!("开始备份数据库到: {path}");
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(&progress, opts.progress);
    let mut gz = ParallelGzip::new(file, config.gzip_level, config.compression_threads(), Arc::clone(&progress));
    let dumped = dump::run(&tools, &config.db.name, Duration::from_secs(config.timeout_secs), &mut gz, |_| {});
    if let Some((bar, ticker)) = bar {
        bar.finish_and_clear();
        let _ = ticker.join();
    }
    let write_err = |err: std::io::Error| BackupError::Write { path: path.clone(), hint: write_hint(&err), err };
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
    let file = gz.finish().map_err(write_err)?;
    let (_, size) = file.commit()?;
    Ok(Done { name: name.to_string(), path, size, dump_bytes: stats.bytes })
}

/// Deletes exactly what the policy selects among the listed local backups. Never fails the
/// backup: problems are logged and reported.
pub fn apply_local_retention(store: &LocalStore, policy: &Policy, config: &Config, now: i64) -> RetentionReport {
    let mut report = RetentionReport::default();
    let listing = match store.list() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("本地备份清理已跳过: {e}");
            report.error = Some(e.to_string());
            return report;
        }
    };
    let entries: Vec<BackupEntry> = listing.iter().map(BackupEntry::from).collect();
    let expired = match policy.select_expired(&entries, now, Target::Local, &policy::policy_config(config)) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("本地备份清理已跳过 (retention skipped, nothing deleted): {e}");
            report.error = Some(e.to_string());
            return report;
        }
    };
    for name in expired {
        match store.delete(&name) {
            Ok(()) => {
                tracing::info!("已删除过期本地备份: {name}");
                report.deleted.push(name);
            }
            Err(e) => {
                tracing::warn!("{e}");
                report.error = Some(e.to_string());
            }
        }
    }
    if !report.deleted.is_empty() {
        tracing::info!("✓ 本地备份清理完成，删除了 {} 个旧备份", report.deleted.len());
    }
    for cleaned in store.clean_partials(STALE_PARTIAL) {
        match cleaned {
            Ok(name) => tracing::info!("removed {name}, left over by an interrupted backup"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    report
}

/// Runs one backup. Always returns an outcome (done or failed) for the policy to shape; a
/// failure leaves no file under a final name and deletes nothing.
pub fn run(config: &Config, policy: &Policy, opts: BackupOptions) -> BackupReport {
    let started = Instant::now();
    let store = LocalStore::new(&config.backup_dir);
    let pconfig = policy::policy_config(config);
    let (name, result) = match policy.backup_name(&pconfig, opts.now) {
        Ok(name) => {
            let result = dump_to_file(config, &store, &name, &opts);
            (Some(name), result)
        }
        Err(e) => (None, Err(e.into())),
    };
    let finished_at = opts.now + started.elapsed().as_secs() as i64;
    match result {
        Ok(done) => {
            tracing::info!("本地数据库备份成功: {} ({})", done.name, mb(done.size));
            let retention = apply_local_retention(&store, policy, config, opts.now);
            BackupReport {
                outcome: BackupOutcome::Done(BackupDone {
                    file_name: done.name,
                    path: done.path,
                    size_bytes: done.size,
                    started_at: opts.now,
                    finished_at,
                    s3: S3Outcome::Disabled,
                }),
                retention,
                dump_bytes: done.dump_bytes,
                elapsed: started.elapsed(),
            }
        }
        Err(err) => {
            tracing::error!("数据库备份失败: {err}");
            BackupReport {
                outcome: BackupOutcome::Failed(BackupFailed { kind: err.kind(), message: err.to_string(), file_name: name }),
                retention: RetentionReport::default(),
                dump_bytes: 0,
                elapsed: started.elapsed(),
            }
        }
    }
}

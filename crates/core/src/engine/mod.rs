//! One backup run: policy name → pg_dump → the codec's encoder → the local `name.partial`
//! (required) and the mirror's upload (best effort) → fsync → rename, then retention in each
//! store as the policy decides. The outcome goes back to the policy to be shaped.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Progress;
use crate::config::{Config, Databases, GlobalsMode};
use crate::db::{DbError, PgTools};
use crate::dump::{self, DumpError, Dumper};
use crate::model::{
    BackupDone, BackupEntry, BackupFailed, BackupKind, BackupOutcome, BackupRun, ErrorKind, NameInfo, PolicyConfig, RunEntry, S3Outcome, Target,
};
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
    #[error("backup of {db} failed: {err}")]
    Dump { db: String, err: DumpError },
    #[error("writing the backup {path} failed: {err}{hint}")]
    Write { path: String, err: std::io::Error, hint: String },
    #[error(transparent)]
    LockLost(#[from] crate::lock::LockLost),
    #[error(transparent)]
    NoRoom(#[from] crate::space::NoRoom),
    #[error("{0}")]
    NothingToBackUp(String),
}

impl BackupError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Policy(_) => ErrorKind::Policy,
            BackupError::Db(DbError::Connect { .. } | DbError::Tool { .. } | DbError::Sql { .. }) => ErrorKind::Dump,
            BackupError::Db(_) | BackupError::NothingToBackUp(_) => ErrorKind::Config,
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
    /// Every file of the run (the globals first), whatever `outcome` shows.
    pub entries: Vec<RunEntry>,
    /// What the run says that is no failure (globals without role passwords...).
    pub notes: Vec<String>,
    /// The policy's view the run named and kept files under (None when it never asked the server).
    pub view: Option<PolicyConfig>,
    pub retention: RetentionReport,
    pub s3_retention: RetentionReport,
    /// Uncompressed bytes pg_dump produced (0 on failure).
    pub dump_bytes: u64,
    pub elapsed: Duration,
}

impl BackupReport {
    /// The report of a run that wrote nothing and kept nothing: only its outcome.
    pub fn only(outcome: BackupOutcome, elapsed: Duration) -> BackupReport {
        BackupReport {
            outcome,
            entries: Vec::new(),
            notes: Vec::new(),
            view: None,
            retention: RetentionReport::default(),
            s3_retention: RetentionReport::default(),
            dump_bytes: 0,
            elapsed,
        }
    }
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
    /// What went wrong with the manifest (the backup itself is good).
    manifest_problem: Option<String>,
}

/// The compressed stream's destinations: the local file (its errors fail the backup) and the
/// S3 upload (its errors are recorded by the upload and only reported). The SHA-256 of the
/// stored bytes goes into the manifest.
struct Sinks {
    file: PartialFile,
    s3: Option<Box<dyn Upload>>,
    sha256: sha2::Sha256,
}

impl std::io::Write for Sinks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        self.file.write_all(buf)?;
        self.sha256.update(buf);
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

/// The plain dump on its way to the encoder: what it holds (tables, sequences, large objects,
/// versions) is read as it passes, for the manifest.
struct Watched<'a> {
    inner: &'a mut dyn std::io::Write,
    facts: &'a mut crate::dump::DumpFacts,
}

impl std::io::Write for Watched<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.facts.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where the plain dump comes from: `pg_dump` or `pg_dumpall` ([`PgDump`]) in production; the
/// engine's unit tests write a dump of their own (or fail half-way) to test everything after it.
pub trait DumpSource {
    /// Writes the whole dump into `out`; stops early when `cancel` is set.
    fn dump(&self, cancel: &Arc<AtomicBool>, out: &mut dyn std::io::Write) -> Result<dump::DumpStats, DumpError>;
}

/// What the server says before a run dumps anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// The databases that accept connections, templates excluded (asked only for
    /// `EF__DB_NAMES=*`; empty otherwise).
    pub databases: Vec<String>,
    /// `pg_control_system()`'s: the globals' label without `EF__DEPLOYMENT_NAME`.
    pub system_identifier: Option<String>,
    /// Whether the user may read `pg_authid` (role passwords).
    pub can_read_passwords: bool,
}

/// The server a run backs up: what it holds, and a dump of one file of the run.
pub trait Server: Sync {
    fn survey(&self, list_databases: bool) -> Result<Survey, BackupError>;
    /// The dump of `file` (a database, or the globals with or without role passwords; their
    /// backup lists `databases`, the run's).
    fn source(&self, file: &NameInfo, passwords: bool, databases: &[String]) -> Result<Box<dyn DumpSource + '_>, BackupError>;
}

/// The configured PostgreSQL server, through its client tools (found on first use: a run the
/// policy could not name never looks for them).
pub struct PgServer<'a> {
    config: &'a Config,
    tools: std::sync::OnceLock<PgTools>,
}

impl<'a> PgServer<'a> {
    pub fn new(config: &'a Config) -> PgServer<'a> {
        PgServer { config, tools: std::sync::OnceLock::new() }
    }

    fn tools(&self) -> Result<&PgTools, DbError> {
        if let Some(t) = self.tools.get() {
            return Ok(t);
        }
        let found = PgTools::for_server(&self.config.db, self.config.pg_bin.as_deref())?;
        Ok(self.tools.get_or_init(|| found))
    }
}

impl Server for PgServer<'_> {
    fn survey(&self, list_databases: bool) -> Result<Survey, BackupError> {
        let tools = self.tools()?;
        let db = &self.config.db.name;
        let asked = tools
            .query(db, "SELECT (SELECT system_identifier::text FROM pg_control_system()), has_table_privilege('pg_catalog.pg_authid', 'SELECT')");
        // A server that will not say (a managed service restricting pg_control_system) costs the
        // globals their label, never the run: the dumps go on.
        let row = asked.unwrap_or_else(|e| {
            tracing::warn!("the server did not tell its system identifier or whether role passwords are readable: {e}");
            Vec::new()
        });
        let (system_identifier, can_read_passwords) = match row.first().map(Vec::as_slice) {
            Some([id, read]) => (Some(id.clone()).filter(|i| !i.is_empty()), read == "t"),
            _ => (None, false),
        };
        let databases = if list_databases {
            let rows = tools.query(db, "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")?;
            rows.into_iter().filter_map(|r| r.into_iter().next()).collect()
        } else {
            Vec::new()
        };
        Ok(Survey { databases, system_identifier, can_read_passwords })
    }

    fn source(&self, file: &NameInfo, passwords: bool, databases: &[String]) -> Result<Box<dyn DumpSource + '_>, BackupError> {
        let (database, dumper) = match file.kind {
            BackupKind::Database => (file.database.clone(), Dumper::Database),
            // pg_dumpall starts in the database the user may connect to.
            BackupKind::Globals => (self.config.db.name.clone(), Dumper::Globals { passwords }),
        };
        Ok(Box::new(PgDump {
            tools: self.tools()?,
            database,
            dumper,
            run_databases: databases.to_vec(),
            timeout: Duration::from_secs(self.config.timeout_secs),
            lock_wait: Duration::from_secs(self.config.lock_wait_timeout_secs),
        }))
    }
}

/// `pg_dump` of one database (or `pg_dumpall --globals-only`), with the backup timeout and
/// the lock wait.
pub struct PgDump<'a> {
    tools: &'a PgTools,
    database: String,
    dumper: Dumper,
    run_databases: Vec<String>,
    timeout: Duration,
    lock_wait: Duration,
}

impl DumpSource for PgDump<'_> {
    /// A database's properties first (one comment line, see `restore::props::header_line`:
    /// a plain dump carries no owner, ACL, settings or comment of the database itself), then
    /// pg_dump's output. The globals start with the run's databases
    /// (`restore::globals::header_line`: what `restore --all` restores with them).
    fn dump(&self, cancel: &Arc<AtomicBool>, mut out: &mut dyn std::io::Write) -> Result<dump::DumpStats, DumpError> {
        let first = match self.dumper {
            Dumper::Database => self.properties_line(),
            Dumper::Globals { passwords } => Some(crate::restore::globals::header_line(&crate::restore::globals::GlobalsHeader {
                databases: self.run_databases.clone(),
                passwords,
            })),
        };
        if let Some(line) = first {
            out.write_all(line.as_bytes()).map_err(DumpError::Write)?;
        }
        let session = match self.dumper {
            Dumper::Database => self.session_settings(),
            Dumper::Globals { .. } => Default::default(),
        };
        let stats = dump::run(self.tools, &self.database, self.dumper, self.timeout, self.lock_wait, cancel, &mut out)?;
        Ok(dump::DumpStats { session, ..stats })
    }
}

impl PgDump<'_> {
    /// The session defaults pg_dump's session gets too (same role, database and server) and
    /// leaves alone, that shape its COPY text: for the manifest. Never fails the backup.
    fn session_settings(&self) -> std::collections::BTreeMap<String, String> {
        const NAMES: [&str; 3] = ["TimeZone", "bytea_output", "lc_monetary"];
        let sql = format!("SELECT {}", NAMES.map(|n| format!("pg_catalog.current_setting('{n}')")).join(", "));
        match self.tools.query(&self.database, &sql) {
            Ok(rows) => match rows.into_iter().next() {
                Some(values) if values.len() == NAMES.len() => NAMES.iter().map(|n| n.to_ascii_lowercase()).zip(values).collect(),
                _ => Default::default(),
            },
            Err(e) => {
                tracing::warn!("the manifest of the backup of {} goes without the session's TimeZone and bytea_output: {e}", self.database);
                Default::default()
            }
        }
    }

    /// The backup's first line; None (with a warning) when the properties cannot be read or do
    /// not fit: the backup itself never fails for them.
    fn properties_line(&self) -> Option<String> {
        use crate::restore::props;
        // Read from the database itself: the role may connect nowhere else. pg_dump meets the
        // same server next: if it cannot work either, it says why.
        let mut properties = match props::read(self.tools, &self.database, &self.database) {
            Ok(p) => p?,
            Err(e) => {
                tracing::warn!("the backup of {} goes without the database's own properties (owner, ACL, settings, comment): {e}", self.database);
                return None;
            }
        };
        match props::object_roles(self.tools, &self.database) {
            Ok(roles) => properties.object_roles = roles,
            Err(e) => tracing::warn!(
                "the backup of {} goes without the list of roles its objects name (a restore checks for them up front): {e}",
                self.database
            ),
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

/// One file of a run, as the policy named it.
struct File {
    info: NameInfo,
    name: String,
}

#[allow(clippy::too_many_arguments)]
fn dump_to_file(
    config: &Config,
    view: &PolicyConfig,
    policy: &dyn Policy,
    source: &dyn DumpSource,
    store: &LocalStore,
    s3: Option<&dyn Mirror>,
    what: &File,
    opts: &BackupOptions,
    progress_bar_on: bool,
) -> Result<Done, BackupError> {
    let name = what.name.as_str();
    let started = crate::util::now();
    let s3_store = s3;
    // The whole run, upload included, ends by the backup timeout.
    let deadline = Instant::now() + Duration::from_secs(config.timeout_secs);
    store.ensure_dir()?;
    // Room for another backup as large as the newest of the same database (or the globals).
    let newest = store
        .list()
        .ok()
        .and_then(|l| crate::catalog::recognised(policy, view, &l).ok())
        .and_then(|r| r.into_iter().find(|r| r.info.database == what.info.database && r.info.kind == what.info.kind));
    crate::space::check_room(store.dir(), newest.map_or(0, |r| r.backup.size_bytes))?;
    let file = store.create(name)?;
    // No backup of this name exists (create made sure): a manifest or signature under it is
    // left from one deleted by hand, and must not vouch for the new file.
    store.delete_companions(name);
    let path = store.path_of(name).display().to_string();
    tracing::info!("开始备份数据库到: {path}");
    let upload = s3.map(|s3| {
        tracing::info!("开始上传到 S3: {}", s3.url(name));
        s3.upload(name)
    });
    let sinks = Sinks { file, s3: upload, sha256: Default::default() };
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(&progress, progress_bar_on);
    // The policy's name was checked to end in the configured format's suffix.
    let mut gz = config.format.encoder(sinks, &config.encode_settings(), Arc::clone(&progress)).map_err(|err| BackupError::Write {
        path: path.clone(),
        hint: String::new(),
        err,
    })?;
    // Progress is read from the compressor's counters (`progress_bar`), not from pg_dump.
    let mut facts = crate::dump::DumpFacts::default();
    let dumped = source.dump(&opts.cancel, &mut Watched { inner: &mut gz, facts: &mut facts });
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
                err => BackupError::Dump { db: what.info.database.clone(), err },
            });
        }
    };
    let Sinks { file, s3: mut upload, sha256 } = gz.finish().map_err(write_err)?;
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
    use sha2::Digest;
    let written = crate::manifest::Written {
        backup: name,
        database: &what.info.database,
        globals: what.info.kind == BackupKind::Globals,
        format: config.format,
        settings: &config.encode_settings(),
        dump_bytes: stats.bytes,
        stored_bytes: size,
        sha256: sha256.finalize().into(),
        started,
        finished: crate::util::now(),
        session: &stats.session,
    };
    let mirror = match &s3 {
        S3Outcome::Uploaded(_) => s3_store,
        _ => None,
    };
    let manifest_problem = write_manifest(config, store, mirror, &written, &facts).err();
    if let Some(problem) = &manifest_problem {
        tracing::error!("the backup {name} is good, but its manifest: {problem}");
    }
    Ok(Done { name: name.to_string(), path, size, dump_bytes: stats.bytes, s3, manifest_problem })
}

/// Writes the manifest (and its signature, first, so that a manifest is never seen unsigned)
/// beside the committed backup, and copies both to the mirror that holds the backup.
fn write_manifest(
    config: &Config,
    store: &LocalStore,
    mirror: Option<&dyn Mirror>,
    written: &crate::manifest::Written<'_>,
    facts: &crate::dump::DumpFacts,
) -> Result<(), String> {
    use crate::manifest::{manifest_name, Manifest};
    let manifest = Manifest::new(written, facts).map_err(|e| e.to_string())?;
    let bytes = manifest.to_bytes();
    let name = manifest_name(written.backup);
    let mut files = Vec::new();
    if let Some(key) = &config.signing_key {
        let signature = key.sign(&bytes, written.backup).map_err(|e| e.to_string())?;
        files.push((crate::sign::signature_name(&name), signature.into_bytes()));
    }
    files.push((name, bytes));
    for (file, content) in &files {
        store.write_companion(file, content).map_err(|e| format!("writing {file} failed: {e}"))?;
    }
    if let Some(mirror) = mirror {
        for (file, content) in &files {
            mirror.put_small(file, content).map_err(|e| format!("the local copy was written, the copy in S3 failed: {e}"))?;
        }
    }
    Ok(())
}

/// The running policy as retention's [`Selection`]: recognition per name
/// ([`Policy::recognise`]), so an odd name is only "not ours" and never stops retention.
struct PolicySelection<'a> {
    policy: &'a dyn Policy,
    config: &'a PolicyConfig,
}

impl Selection for PolicySelection<'_> {
    fn recognise(&self, listing: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, String> {
        self.policy.recognise(self.config, listing).map_err(|e| e.to_string())
    }

    fn select_expired(&self, listing: &[BackupEntry], ours: &[(BackupEntry, NameInfo)], now: i64, target: Target) -> Result<Vec<String>, String> {
        let selected = self.policy.select_expired_among(listing, ours, now, target, self.config).map_err(|e| e.to_string())?;
        policy::log_reasons(&selected, target);
        Ok(selected.into_iter().map(|(n, _)| n).collect())
    }
}

/// S3 retention: the same contract as local, against the bucket listing under the prefix.
/// `written`: the files this run uploaded; only their databases' (and the globals') old copies
/// may go.
pub fn apply_s3_retention(
    s3: &dyn Mirror,
    policy: &dyn Policy,
    config: &Config,
    view: &PolicyConfig,
    guard: &Guard,
    written: &[(String, NameInfo)],
) -> RetentionReport {
    // Uploads older than a backup can run are dead: abort them so their parts stop costing.
    // Only names this deployment's policy recognises: another database's deployment under the
    // same prefix may have a live upload. (An upload cut off under a previous policy's names is
    // left to the bucket's AbortIncompleteMultipartUpload lifecycle rule; see README, S3.)
    let ours = |n: &str| matches!(policy.parse_name(view, n), Ok(Some(_)));
    match s3.abort_stale_uploads(Duration::from_secs(config.timeout_secs + 3600), &ours) {
        Ok(0) => {}
        Ok(n) => tracing::info!("aborted {n} incomplete S3 upload(s) left by interrupted runs"),
        Err(e) => tracing::warn!("could not check for incomplete S3 uploads: {e}"),
    }
    retention::apply(s3, &PolicySelection { policy, config: view }, guard, written, config.retention_days)
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
pub fn apply_local_retention(
    store: &LocalStore,
    policy: &dyn Policy,
    config: &Config,
    view: &PolicyConfig,
    guard: &Guard,
    written: &[(String, NameInfo)],
) -> RetentionReport {
    retention::apply(store, &PolicySelection { policy, config: view }, guard, written, config.retention_days)
}

/// Removes the `.partial` files of this deployment's names that no live writer holds: a
/// crashed run's leftover on a nearly full disk would otherwise make every later backup fail
/// with ENOSPC. Other partials (another deployment's, a foreign tool's) are left alone.
pub fn remove_abandoned_partials(store: &LocalStore, policy: &dyn Policy, view: &PolicyConfig) {
    let partials = store.list_partials();
    if partials.is_empty() {
        return;
    }
    // A partial manifest or signature is recognised by its backup's name.
    let backup_of = |name: &str| crate::manifest::backup_of_companion(name).unwrap_or(name).to_string();
    let entries: Vec<BackupEntry> = partials.iter().map(|p| BackupEntry { name: backup_of(&p.name), ..BackupEntry::from(p) }).collect();
    let ours: std::collections::BTreeSet<String> = match policy.recognise(view, &entries) {
        Ok(o) => o.into_iter().map(|(b, _)| b.name).collect(),
        Err(e) => {
            tracing::warn!("left partial files in {} alone: {e}", store.dir().display());
            return;
        }
    };
    for p in partials.iter().filter(|p| ours.contains(&backup_of(&p.name))) {
        match store.remove_abandoned_partial(&p.name, PARTIAL_MIN_IDLE) {
            Ok(true) => {
                tracing::info!("removed {}{}, left over by an interrupted backup ({})", p.name, crate::store::local::PARTIAL_SUFFIX, mb(p.size_bytes))
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Runs one backup run, named by the policy. Always returns an outcome (done or failed) for
/// the policy to shape; a file that fails leaves nothing under a final name and deletes nothing.
pub fn run(config: &Config, policy: &dyn Policy, s3: Option<&dyn Mirror>, opts: BackupOptions) -> BackupReport {
    let name = policy.backup_name(&config.policy, opts.now);
    run_named(config, policy, s3, name, opts)
}

/// [`run`] with the policy's name for the first database's dump already taken (the service
/// needs it before the run, to answer "busy").
pub fn run_named(
    config: &Config,
    policy: &dyn Policy,
    s3: Option<&dyn Mirror>,
    name: Result<String, PolicyError>,
    opts: BackupOptions,
) -> BackupReport {
    run_from(config, policy, &PgServer::new(config), s3, name, opts)
}

/// The policy's view as the server completes it (the databases of `EF__DB_NAMES=*`, the
/// globals' label), for commands that list or pick backups; the configured view, with a
/// warning, when the server cannot be asked (the globals are then not recognised).
pub fn resolved_view(config: &Config) -> PolicyConfig {
    let all = matches!(config.databases, Databases::All { .. });
    if config.deployment_name.is_some() && !all {
        return config.policy.clone();
    }
    let server = PgServer::new(config);
    match server.survey(all).and_then(|survey| Ok((databases_of(config, &survey)?, survey))) {
        Ok((databases, survey)) => config.policy_resolved(databases, survey.system_identifier.as_deref()),
        Err(e) => {
            tracing::warn!("the server could not be asked which databases and globals this deployment has ({e}); listing as configured");
            config.policy.clone()
        }
    }
}

/// The run once the server has answered: the policy's view, the files with their names, the
/// files refused before any dump, and what to say about the globals.
struct Plan {
    view: PolicyConfig,
    files: Vec<File>,
    refused: Vec<RunEntry>,
    globals_passwords: bool,
    notes: Vec<String>,
}

fn failed_entry(info: &NameInfo, kind: ErrorKind, message: String) -> RunEntry {
    RunEntry { database: info.database.clone(), kind: info.kind, outcome: Err(BackupFailed { kind, message, file_name: None }) }
}

/// The databases of the run: as configured, or as the server lists them.
fn databases_of(config: &Config, survey: &Survey) -> Result<Vec<String>, BackupError> {
    match &config.databases {
        Databases::One(db) => Ok(vec![db.clone()]),
        Databases::Listed(dbs) => Ok(dbs.clone()),
        Databases::All { exclude } => {
            // A name with control characters would reach logs and file names: such a database
            // is left out, loudly (rename it to back it up).
            for odd in survey.databases.iter().filter(|d| d.chars().any(char::is_control)) {
                tracing::error!("database {odd:?} is not backed up: its name holds control characters; rename it (ALTER DATABASE … RENAME TO …)");
            }
            let found: Vec<String> = survey.databases.iter().filter(|d| !exclude.contains(d) && !d.chars().any(char::is_control)).cloned().collect();
            if found.is_empty() {
                return Err(BackupError::NothingToBackUp(format!(
                    "EF__DB_NAMES=* found no database to back up (the server lists {:?}, EF__DB_EXCLUDE removes {exclude:?}): \
                     check that EF__DB_USER may see the databases, or list them in EF__DB_NAMES",
                    survey.databases
                )));
            }
            Ok(found)
        }
    }
}

/// Whether and how the globals are taken; `Err` is the reason a required one cannot be.
fn globals_of(config: &Config, policy: &dyn Policy, view: &PolicyConfig, survey: &Survey, notes: &mut Vec<String>) -> Result<Option<String>, String> {
    let user = &config.db.user;
    match (config.globals, &view.globals_label) {
        (GlobalsMode::Off, _) => Ok(None),
        (GlobalsMode::Auto, _) if !policy.names_globals() => {
            notes.push(
                "the globals (roles, tablespaces) were not backed up: the policy implements contract 0.1.0, which cannot name them; \
                 use a 0.2 policy, or set EF__BACKUP_GLOBALS=false to silence this"
                    .into(),
            );
            Ok(None)
        }
        (GlobalsMode::Auto, None) => {
            notes.push("the globals (roles, tablespaces) were not backed up: the server did not tell its system identifier; set EF__DEPLOYMENT_NAME to label them".into());
            Ok(None)
        }
        (GlobalsMode::Required, _) if !survey.can_read_passwords => Err(format!(
            "EF__BACKUP_GLOBALS=true needs the role passwords, but {user} may not read pg_authid (not a superuser): back up as a superuser, \
             or set EF__BACKUP_GLOBALS=auto to take the globals without passwords"
        )),
        (GlobalsMode::Required, None) => {
            Err("EF__BACKUP_GLOBALS=true, but the server did not tell its system identifier to label the globals: set EF__DEPLOYMENT_NAME".into())
        }
        (_, Some(label)) => {
            if !survey.can_read_passwords {
                notes.push(format!(
                    "the globals were backed up without role passwords: {user} may not read pg_authid (not a superuser), so roles \
                     restored from them get no password. Back up as a superuser to keep passwords, or set EF__BACKUP_GLOBALS=false"
                ));
            }
            Ok(Some(label.clone()))
        }
    }
}

fn plan(config: &Config, policy: &dyn Policy, server: &dyn Server, first_name: String, now: i64) -> Result<Plan, BackupError> {
    let survey = server.survey(matches!(config.databases, Databases::All { .. }))?;
    let databases = databases_of(config, &survey)?;
    let view = config.policy_resolved(databases.clone(), survey.system_identifier.as_deref());
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    let globals = match globals_of(config, policy, &view, &survey, &mut notes) {
        Ok(label) => label,
        Err(why) => {
            let label = view.globals_label.clone().unwrap_or_else(|| "globals".into());
            refused.push(failed_entry(&NameInfo { database: label, kind: BackupKind::Globals, run_at: now }, ErrorKind::Config, why));
            None
        }
    };
    let globals = globals.map(|label| NameInfo { database: label, kind: BackupKind::Globals, run_at: now });
    let mut files = Vec::new();
    for info in globals.into_iter().chain(databases.iter().map(|db| NameInfo::dump(db, now))) {
        let first = info.kind == BackupKind::Database && info.database == config.policy.database;
        match if first { Ok(first_name.clone()) } else { policy.name_file(&view, &info) } {
            Ok(name) => files.push(File { info, name }),
            Err(e) if info.kind == BackupKind::Globals && config.globals == GlobalsMode::Auto => {
                notes.push(format!("the globals were not backed up: {e}"))
            }
            Err(e) => refused.push(failed_entry(&info, ErrorKind::Policy, e.to_string())),
        }
    }
    Ok(Plan { view, files, refused, globals_passwords: survey.can_read_passwords, notes })
}

/// [`run_named`] against `server` instead of the configured PostgreSQL.
pub fn run_from(
    config: &Config,
    policy: &dyn Policy,
    server: &dyn Server,
    s3: Option<&dyn Mirror>,
    name: Result<String, PolicyError>,
    opts: BackupOptions,
) -> BackupReport {
    let started = Instant::now();
    let store = LocalStore::new(&config.backup_dir);
    let finished_at = || opts.now + started.elapsed().as_secs() as i64;
    let named = name.as_ref().ok().cloned();
    let plan = match name.map_err(BackupError::from).and_then(|first| plan(config, policy, server, first, opts.now)) {
        Ok(plan) => plan,
        Err(err) => {
            tracing::error!("数据库备份失败: {err}");
            let failed = BackupFailed { kind: err.kind(), message: err.to_string(), file_name: named };
            let outcome = if config.several_databases() {
                let entry = RunEntry { database: config.db.name.clone(), kind: BackupKind::Database, outcome: Err(failed) };
                BackupOutcome::Several(BackupRun { started_at: opts.now, finished_at: finished_at(), entries: vec![entry], notes: Vec::new() })
            } else {
                BackupOutcome::Failed(failed)
            };
            return BackupReport::only(outcome, started.elapsed());
        }
    };
    for note in &plan.notes {
        tracing::warn!("{note}");
    }
    remove_abandoned_partials(&store, policy, &plan.view);

    // The globals first (a restore needs the roles before the databases), then the databases,
    // `EF__BACKUP_PARALLEL_DBS` at a time; each file succeeds or fails on its own.
    let (globals, databases): (Vec<&File>, Vec<&File>) = plan.files.iter().partition(|f| f.info.kind == BackupKind::Globals);
    let one_at_a_time = config.parallel_dbs <= 1 || databases.len() <= 1;
    // Each file's entry, its dump's size, and a note (a manifest that could not be written).
    type Result3 = (RunEntry, u64, Option<String>);
    let dump_one = |file: &File| -> Result3 {
        let done = server
            .source(&file.info, plan.globals_passwords, &plan.view.databases)
            .and_then(|source| dump_to_file(config, &plan.view, policy, &*source, &store, s3, file, &opts, opts.progress && one_at_a_time));
        let (outcome, bytes, note) = match done {
            Ok(d) => {
                let note = d.manifest_problem.map(|p| format!("{} was written, but its manifest: {p}", d.name));
                let done =
                    BackupDone { file_name: d.name, path: d.path, size_bytes: d.size, started_at: opts.now, finished_at: finished_at(), s3: d.s3 };
                (Ok(done), d.dump_bytes, note)
            }
            Err(err) => {
                tracing::error!("数据库备份失败: {err}");
                (Err(BackupFailed { kind: err.kind(), message: err.to_string(), file_name: Some(file.name.clone()) }), 0, None)
            }
        };
        (RunEntry { database: file.info.database.clone(), kind: file.info.kind, outcome }, bytes, note)
    };
    let mut results: Vec<Result3> = globals.iter().map(|f| dump_one(f)).collect();
    if one_at_a_time {
        results.extend(databases.iter().map(|f| dump_one(f)));
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<Result3>>> = databases.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..config.parallel_dbs.min(databases.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(file) = databases.get(i) else { return };
                    let result = dump_one(file);
                    *crate::util::lock(&slots[i]) = Some(result);
                });
            }
        });
        results.extend(slots.into_iter().filter_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner())));
    }
    let dump_bytes = results.iter().map(|(_, b, _)| b).sum();
    let mut notes = plan.notes.clone();
    notes.extend(results.iter().filter_map(|(_, _, note)| note.clone()));
    let mut entries: Vec<RunEntry> = plan.refused.clone();
    for (entry, _, _) in results {
        match &entry.outcome {
            // EF__BACKUP_GLOBALS=auto never fails a run for the globals.
            Err(f) if entry.kind == BackupKind::Globals && config.globals == GlobalsMode::Auto => {
                tracing::warn!("the globals backup failed; EF__BACKUP_GLOBALS=auto does not fail the run for it");
                notes.push(format!("the globals backup failed (EF__BACKUP_GLOBALS=auto does not fail the run for it): {}", f.message))
            }
            // With one database the response shows only its dump's upload: say this one's.
            Ok(d) if entry.kind == BackupKind::Globals && !config.several_databases() => {
                if let S3Outcome::Failed(why) = &d.s3 {
                    notes.push(format!("the globals backup's S3 upload failed (the local copy stands): {why}"));
                }
                entries.push(entry)
            }
            _ => entries.push(entry),
        }
    }
    entries.sort_by_key(|e| e.kind != BackupKind::Globals);

    let (retention, s3_retention) = retention_after(config, policy, &plan.view, &store, s3, &entries, &opts);
    let run = BackupRun { started_at: opts.now, finished_at: finished_at(), entries: entries.clone(), notes: notes.clone() };
    let outcome = if config.several_databases() { BackupOutcome::Several(run) } else { single_outcome(&run, &config.policy.database) };
    BackupReport { outcome, entries, notes, view: Some(plan.view), retention, s3_retention, dump_bytes, elapsed: started.elapsed() }
}

/// Retention in each store, only where this run wrote a new file: a database whose dump failed
/// keeps all its old backups, and old S3 copies of a database go only after its new one arrived.
fn retention_after(
    config: &Config,
    policy: &dyn Policy,
    view: &PolicyConfig,
    store: &LocalStore,
    s3: Option<&dyn Mirror>,
    entries: &[RunEntry],
    opts: &BackupOptions,
) -> (RetentionReport, RetentionReport) {
    let info = |e: &RunEntry| NameInfo { database: e.database.clone(), kind: e.kind, run_at: opts.now };
    let written: Vec<(String, NameInfo)> = entries.iter().filter_map(|e| Some((e.outcome.as_ref().ok()?.file_name.clone(), info(e)))).collect();
    let uploaded: Vec<(String, NameInfo)> = entries
        .iter()
        .filter_map(|e| e.outcome.as_ref().ok().filter(|d| matches!(d.s3, S3Outcome::Uploaded(_))).map(|d| (d.file_name.clone(), info(e))))
        .collect();
    if written.is_empty() {
        return Default::default();
    }
    let guard = Guard { now: opts.now, min_keep: config.min_keep, last_recorded_run: opts.last_recorded_run };
    // A lost run lock means another process may be running retention right now.
    if let Some(e) = opts.run_lock.as_ref().and_then(|l| l.still_held().err()).map(|e| e.to_string()) {
        tracing::error!("retention skipped, nothing deleted: {e}");
        let skipped = RetentionReport { error: Some(e), ..Default::default() };
        return (skipped.clone(), if uploaded.is_empty() { RetentionReport::default() } else { skipped });
    }
    let local = apply_local_retention(store, policy, config, view, &guard, &written);
    let remote = match s3 {
        Some(s3) if !uploaded.is_empty() => apply_s3_retention(s3, policy, config, view, &guard, &uploaded),
        _ => RetentionReport::default(),
    };
    (local, remote)
}

/// The original's answer for one database: its dump's outcome; a required globals backup that
/// failed fails the run too (the dump stands, and the message says so).
fn single_outcome(run: &BackupRun, database: &str) -> BackupOutcome {
    let dump = run.entries.iter().find(|e| e.kind == BackupKind::Database && e.database == database);
    let globals_failed = run.entries.iter().find_map(|e| e.outcome.as_ref().err().filter(|_| e.kind == BackupKind::Globals));
    match (dump.map(|e| &e.outcome), globals_failed) {
        (Some(Ok(done)), None) => BackupOutcome::Done(done.clone()),
        (Some(Ok(done)), Some(g)) => BackupOutcome::Failed(BackupFailed {
            kind: g.kind,
            message: format!("the globals backup failed: {} (the database's backup {} was written and stands)", g.message, done.file_name),
            file_name: Some(done.file_name.clone()),
        }),
        (Some(Err(f)), _) => BackupOutcome::Failed(f.clone()),
        (None, _) => BackupOutcome::Failed(BackupFailed {
            kind: ErrorKind::Internal,
            message: format!("the run wrote no backup of {database}"),
            file_name: None,
        }),
    }
}

#[cfg(test)]
mod tests;

//! The host's own words for what a policy decides and is told: backups, outcomes, the status,
//! responses. Everything speaks these; each WIT version the policy runtime runs
//! (`ef_backup_policy_wasm::v0_1`, …) converts to and from them at the edge, so a second contract version can
//! sit beside the first without its generated types reaching storage, the engine or the API.

/// Seconds since the Unix epoch.
pub type UnixSeconds = i64;

/// What the policy is told about the deployment (`EF__*` settings, and its own `EF__POLICY_*`
/// ones in `settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The first of `databases` (what a 0.1.0 policy is told; `postgres` when every database
    /// is backed up and the server has not been asked yet).
    pub database: String,
    /// The databases this deployment backs up: `EF__DB_NAME`, or `EF__DB_NAMES` as listed or as
    /// found on the server (`*`, minus `EF__DB_EXCLUDE`) at the last run.
    pub databases: Vec<String>,
    /// The label of this server's globals backups: `EF__DEPLOYMENT_NAME`, or `pg<system
    /// identifier>` once the server has been asked; None before that.
    pub globals_label: Option<String>,
    pub backup_dir: String,
    pub s3: Option<PolicyS3Config>,
    /// `EF__POLICY_<NAME>` → (`name` in lower case, value), in a stable order.
    pub settings: Vec<(String, String)>,
    /// The format new backups are written in: their names end with its suffix.
    pub format: crate::codec::Format,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyS3Config {
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub retention_days: u32,
}

/// When backups run: cron expressions (seconds field first) in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSchedule {
    pub crons: Vec<String>,
    pub timezone: String,
    pub description: String,
    /// When to prove the newest backup restores (contract 0.2; validated, not run yet).
    pub drill_crons: Vec<String>,
}

/// Where a retention decision applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Local,
    S3,
}

impl Target {
    /// The store's id as contract 0.2 and the logs name it.
    pub fn id(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::S3 => "s3",
        }
    }
}

/// What a backup file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackupKind {
    /// One database (`pg_dump`).
    Database,
    /// The server's roles and tablespaces (`pg_dumpall --globals-only`).
    Globals,
}

/// What the policy reads from one of its names: the database (for globals, the server's
/// label), the kind, and when the run it belongs to started (the files of one run share it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameInfo {
    pub database: String,
    pub kind: BackupKind,
    pub run_at: UnixSeconds,
}

impl NameInfo {
    /// A dump of `database` from the run started at `run_at`.
    pub fn dump(database: &str, run_at: UnixSeconds) -> NameInfo {
        NameInfo { database: database.to_string(), kind: BackupKind::Database, run_at }
    }
}

/// A stored backup as listed by a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEntry {
    pub name: String,
    pub size_bytes: u64,
    pub modified: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Outcome {
    Disabled,
    /// The object's URL.
    Uploaded(String),
    /// Why the upload failed (the local backup stands).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDone {
    pub file_name: String,
    pub path: String,
    pub size_bytes: u64,
    pub started_at: UnixSeconds,
    pub finished_at: UnixSeconds,
    pub s3: S3Outcome,
}

/// What kind of thing failed: the response's status and the exit code follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Config,
    Dump,
    Storage,
    Timeout,
    Policy,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFailed {
    pub kind: ErrorKind,
    pub message: String,
    pub file_name: Option<String>,
}

/// One file of a run: a database's dump or the server's globals, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEntry {
    pub database: String,
    pub kind: BackupKind,
    pub outcome: Result<BackupDone, BackupFailed>,
}

/// A run of several databases (`EF__DB_NAMES`): every file it wrote or failed to write, the
/// globals first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRun {
    pub started_at: UnixSeconds,
    pub finished_at: UnixSeconds,
    pub entries: Vec<RunEntry>,
    /// What an operator should know that is no failure (globals without role passwords...).
    pub notes: Vec<String>,
}

impl BackupRun {
    pub fn succeeded(&self) -> bool {
        !self.entries.is_empty() && self.entries.iter().all(|e| e.outcome.is_ok())
    }
}

/// How one backup run ended. With one database configured (`EF__DB_NAME`, the original's
/// setting) a run is `Done` or `Failed`, as the original answered; with several, `Several`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutcome {
    Done(BackupDone),
    Failed(BackupFailed),
    /// Another backup is running: its name.
    Busy(String),
    Several(BackupRun),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub started_at: UnixSeconds,
    pub finished_at: UnixSeconds,
    pub succeeded: bool,
    pub file_name: Option<String>,
    pub message: String,
}

/// Which policy file runs, and which contract version it implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPolicy {
    pub path: String,
    pub sha256: String,
    pub wit_version: String,
}

/// What the status endpoint knows, for the policy to shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub now: UnixSeconds,
    pub config: PolicyConfig,
    pub policy: LoadedPolicy,
    pub local_backups: Vec<BackupEntry>,
    /// The policy's own among them, with the run time each name carries (what
    /// [`crate::policy::Policy::recognise`] found).
    pub recognised: Vec<(BackupEntry, NameInfo)>,
    pub last_run: Option<LastRun>,
    pub next_run: Option<UnixSeconds>,
    pub running: Option<String>,
    /// The last restore drill.
    pub last_drill: Option<LastRun>,
    /// Whether scheduled drills run, and if not, why.
    pub drills: String,
    /// The newest runs of every kind, newest first.
    pub recent_runs: Vec<RunSummary>,
}

/// One run of the history, as the policy sees it in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub kind: String,
    pub database: Option<String>,
    pub started_at: UnixSeconds,
    pub finished_at: Option<UnixSeconds>,
    /// `ok`, `failed`, `interrupted` or `running`.
    pub outcome: String,
    pub file_name: Option<String>,
    pub message: String,
}

/// A response the API sends as it is: a status code and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// The level of a line the policy logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What happened, for notifications (contract 0.2's `event-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    BackupStarted,
    BackupSucceeded,
    BackupFailed,
    S3UploadFailed,
    RetentionSkipped,
    DrillSucceeded,
    DrillFailed,
    MissedSlot,
    PolicyRejected,
    ServiceStarted,
    ServiceStopped,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::BackupStarted,
        EventKind::BackupSucceeded,
        EventKind::BackupFailed,
        EventKind::S3UploadFailed,
        EventKind::RetentionSkipped,
        EventKind::DrillSucceeded,
        EventKind::DrillFailed,
        EventKind::MissedSlot,
        EventKind::PolicyRejected,
        EventKind::ServiceStarted,
        EventKind::ServiceStopped,
    ];

    /// The id webhooks, logs and the history use.
    pub fn id(self) -> &'static str {
        match self {
            EventKind::BackupStarted => "backup-started",
            EventKind::BackupSucceeded => "backup-succeeded",
            EventKind::BackupFailed => "backup-failed",
            EventKind::S3UploadFailed => "s3-upload-failed",
            EventKind::RetentionSkipped => "retention-skipped",
            EventKind::DrillSucceeded => "drill-succeeded",
            EventKind::DrillFailed => "drill-failed",
            EventKind::MissedSlot => "missed-slot",
            EventKind::PolicyRejected => "policy-rejected",
            EventKind::ServiceStarted => "service-started",
            EventKind::ServiceStopped => "service-stopped",
        }
    }
}

/// How a good backup compares with the previous good backup of the same database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeChange {
    pub database: String,
    pub previous_bytes: u64,
    pub bytes: u64,
    pub previous_rows: Option<u64>,
    pub rows: Option<u64>,
}

/// Something an operator may want to hear about (contract 0.2's `event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub at: i64,
    /// The host's account: English, never a secret.
    pub detail: String,
    /// The databases concerned; empty for the whole deployment.
    pub databases: Vec<String>,
    pub file_name: Option<String>,
    pub outcome: Option<BackupOutcome>,
    /// The previous run of the same kind: lets a message say "recovered".
    pub previous: Option<LastRun>,
    pub changes: Vec<SizeChange>,
}

impl Event {
    pub fn new(kind: EventKind, at: i64, detail: impl Into<String>) -> Event {
        Event { kind, at, detail: detail.into(), databases: Vec::new(), file_name: None, outcome: None, previous: None, changes: Vec::new() }
    }
}

/// A message for one notification channel, as the policy shaped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: crate::config::notify::Channel,
    pub subject: String,
    pub body: String,
}

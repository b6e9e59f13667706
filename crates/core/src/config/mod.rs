//! Configuration: read once from the environment (and an optional `.env` file) into a typed
//! [`Config`]. Nothing else in the program reads environment variables.

pub mod drill;
pub mod envfile;
pub mod notify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::codec::{Codec, EncodeSettings, Format, Keys, Recipients};
use crate::model::{PolicyConfig, PolicyS3Config};

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("cannot read {path}: {err} (fix the file or pass --env-file with another path)")]
    EnvFile { path: PathBuf, err: std::io::Error },
    #[error("{path}, {err} (the file is read as systemd's EnvironmentFile= reads it; fix it or pass --env-file with another path)")]
    EnvSyntax { path: PathBuf, err: envfile::EnvFileError },
    #[error("cannot determine the current directory: {0}")]
    Cwd(std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub endpoint_url: Option<String>,
    /// `EF__S3_OBJECT_LOCK_DAYS` / `EF__S3_OBJECT_LOCK_MODE`: every object uploaded with a
    /// retain-until date, so no credential of this host can erase it before then.
    pub object_lock: Option<ObjectLock>,
}

/// S3 Object Lock retention for every uploaded object (the bucket must have Object Lock on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// S3's two retention modes: GOVERNANCE can be lifted by a user with
/// `s3:BypassGovernanceRetention`; COMPLIANCE by nobody, the root account included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Which databases a run backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// `EF__DB_NAME` (the original's setting): one database, the original's responses.
    One(String),
    /// `EF__DB_NAMES=a,b,c`.
    Listed(Vec<String>),
    /// `EF__DB_NAMES=*`: every database that accepts connections, templates excluded, minus
    /// `EF__DB_EXCLUDE`; found on the server at each run.
    All { exclude: Vec<String> },
}

/// `EF__BACKUP_GLOBALS`: the server's roles and tablespaces with every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalsMode {
    /// With role passwords when the user may read them, else without (said in the log and the
    /// status); never fails a run; skipped with a warning under a policy that cannot name them.
    Auto,
    /// With role passwords, or the run fails.
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `db.name` is the database sessions connect to: `EF__DB_NAME`, the first of
    /// `EF__DB_NAMES`, or `postgres` for `EF__DB_NAMES=*`.
    pub db: DbConfig,
    pub databases: Databases,
    pub globals: GlobalsMode,
    /// `EF__DEPLOYMENT_NAME`: labels the globals backups instead of the server's system identifier.
    pub deployment_name: Option<String>,
    /// `EF__BACKUP_PARALLEL_DBS`: databases dumped at once.
    pub parallel_dbs: usize,
    /// Absolute.
    pub backup_dir: PathBuf,
    /// None: use the default policy next to the binary or from the build.
    pub policy_path: Option<PathBuf>,
    /// `EF__BACKUP_POLICY_CACHE_DIR`: compiled policies (default `~/.cache/ef-backup`; `off` disables).
    pub policy_cache_dir: Option<PathBuf>,
    /// `EF__BACKUP_POLICY_SHA256`: the only policy file accepted (lower-case hex).
    pub policy_sha256: Option<String>,
    /// `EF__PG_BIN`: directory of the PostgreSQL client tools to prefer.
    pub pg_bin: Option<PathBuf>,
    pub s3: Option<S3Config>,
    /// `EF__S3_PART_SIZE_MB`: size of the first 1000 multipart parts (later ones grow).
    pub s3_part_size: usize,
    /// `EF__BACKUP_RETENTION_DAYS`: S3 retention, passed to the policy.
    pub retention_days: u32,
    pub gzip_level: u32,
    /// `EF__BACKUP_FORMAT` (gzip, the default, or zstd) and, with `EF__BACKUP_AGE_RECIPIENTS`,
    /// encrypted: the format every new backup is written in.
    pub format: Format,
    /// `EF__BACKUP_ZSTD_LEVEL`.
    pub zstd_level: u32,
    /// `EF__BACKUP_AGE_RECIPIENTS`: the age public keys backups are encrypted to (inline, or a
    /// file of them); empty for no encryption.
    pub age_recipients: Recipients,
    /// `EF__BACKUP_AGE_IDENTITY_FILE`: where restore and verify find the private key (a CLI
    /// `--identity` overrides it).
    pub keys: Keys,
    /// `EF__BACKUP_SIGNING_KEY`: the minisign key every manifest is signed with.
    pub signing_key: Option<std::sync::Arc<crate::sign::SigningKey>>,
    /// `EF__BACKUP_TRUSTED_KEYS`: when set, restore and verify refuse a backup whose manifest is
    /// missing or not signed by one of these keys (unless told `--allow-unsigned`).
    pub trusted_keys: crate::sign::TrustedKeys,
    /// Compression threads; 0 means one per CPU.
    pub threads: usize,
    pub timeout_secs: u64,
    /// `EF__SHUTDOWN_GRACE_SECS`: how long a running backup may finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    pub admin_token: Option<Secret>,
    pub http_addr: String,
    pub log_format: LogFormat,
    /// `EF__POLICY_<KEY>` as (key in lower case, value), sorted by key.
    pub policy_settings: Vec<(String, String)>,
    /// `EF__STATE_DIR`: run history, counters and the last outcome survive restarts here.
    pub state_dir: PathBuf,
    /// `EF__BACKUP_MIN_KEEP`: retention never leaves fewer recognised backups than this in a
    /// place, whatever the policy answers.
    pub min_keep: u32,
    /// `EF__PG_LOCK_WAIT_TIMEOUT_SECS`: pg_dump's `--lock-wait-timeout`.
    pub lock_wait_timeout_secs: u64,
    /// `EF__BACKUP_RETRY_DELAY_SECS`: a failed scheduled backup is retried once after this
    /// long; 0 disables the retry.
    pub retry_delay_secs: u64,
    /// `EF__HTTP_MAX_CONNECTIONS`: admin API connections served at once.
    pub http_max_connections: usize,
    /// `EF__BACKUP_MISSED_SLOT_MINUTES`: a scheduled backup that has not started this long
    /// after its slot is a missed slot (notified).
    pub missed_slot_minutes: u64,
    /// `EF__DRILL_*`: where restore drills restore.
    pub drill: drill::DrillPlace,
    /// `EF__NOTIFY_*`: where events are reported (webhook, Slack, Telegram, e-mail, heartbeat).
    pub notify: notify::NotifyConfig,
    /// Things an operator should fix that do not stop the program (logged at start-up).
    pub warnings: Vec<String>,
    /// Derived once from the fields above: what the policy is told about the deployment.
    pub policy: PolicyConfig,
}

/// Measured with `bench/backup.sh --corpora all --levels` (README, "Performance"): the original
/// promised gzip's maximum compression, and level 8 is the only zlib-rs level within 0.5% of
/// `gzip -9`'s size on every corpus (4-6% smaller on most); levels 3-6 are up to 11% larger on
/// jsonb, 9 is larger than 8 everywhere. Level 4 is the fast choice (about 30% less wall time
/// on the app corpus).
pub const DEFAULT_GZIP_LEVEL: u32 = 8;
/// Measured with `bench/backup.sh --corpora all --zstd-levels` (README, "Performance"): on this
/// data level 1 is smaller than zstd's usual 3 on four corpora of five (0.690 against 0.773 of
/// gzip -9 on the app corpus; the stock `zstd -1` agrees) and as fast or faster; only pgbench's
/// runs of spaces favour 3. Higher levels cost time without getting smaller here.
pub const DEFAULT_ZSTD_LEVEL: u32 = 1;
pub const DEFAULT_TIMEOUT_SECS: u64 = 4 * 3600;
pub const DEFAULT_MIN_KEEP: u32 = 3;
pub const DEFAULT_LOCK_WAIT_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_RETRY_DELAY_SECS: u64 = 600;
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;

struct Vars<'a>(&'a BTreeMap<String, String>);

impl Vars<'_> {
    /// Unset and empty are the same: `.env` templates often carry `VAR=`.
    fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|s| s.as_str()).filter(|s| !s.trim().is_empty())
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).trim().to_string()
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &self,
        var: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.get(var) else { return Ok(default) };
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(ConfigError::Invalid { var, reason: format!("{raw:?} is not a whole number from {min} to {max} (default {default})") }),
        }
    }
}

impl Config {
    /// The policy's view of the deployment (computed once, in [`Config::from_vars`]).
    fn policy_view(&self) -> PolicyConfig {
        let databases = match &self.databases {
            Databases::One(db) => vec![db.clone()],
            Databases::Listed(dbs) => dbs.clone(),
            Databases::All { .. } => Vec::new(),
        };
        PolicyConfig {
            database: databases.first().cloned().unwrap_or_else(|| self.db.name.clone()),
            databases,
            globals_label: self.deployment_name.clone(),
            backup_dir: self.backup_dir.display().to_string(),
            s3: self.s3.as_ref().map(|s| PolicyS3Config {
                bucket: s.bucket.clone(),
                region: s.region.clone(),
                prefix: s.prefix.clone(),
                retention_days: self.retention_days,
            }),
            settings: self.policy_settings.clone(),
            format: self.format,
        }
    }

    /// Reads the process environment, with `env_file` underneath it (variables already in the
    /// environment win, as with docker and systemd). A missing default `.env` is fine.
    pub fn load(env_file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut vars = BTreeMap::new();
        let (path, required) = match env_file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(".env"), false),
        };
        if required || path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|err| ConfigError::EnvFile { path: path.clone(), err })?;
            let pairs = envfile::parse(&text).map_err(|err| ConfigError::EnvSyntax { path: path.clone(), err })?;
            vars.extend(pairs);
        }
        vars.extend(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))));
        let cwd = std::env::current_dir().map_err(ConfigError::Cwd)?;
        Config::from_vars(&vars, &cwd)
    }

    /// Pure: the variables in, a validated config out. Relative paths are taken from `cwd`.
    pub fn from_vars(vars: &BTreeMap<String, String>, cwd: &Path) -> Result<Config, ConfigError> {
        let v = Vars(vars);
        let databases = databases(&v)?;
        let db = DbConfig {
            host: v.string("EF__DB_HOST", "localhost"),
            port: v.number("EF__DB_PORT", 5432u16, 1, u16::MAX)?,
            name: match &databases {
                Databases::One(db) => db.clone(),
                Databases::Listed(dbs) => dbs[0].clone(),
                Databases::All { .. } => "postgres".to_string(),
            },
            user: v.string("EF__DB_USER", "euraflow"),
            password: v.get("EF__DB_PASSWORD").map(Secret::new),
        };
        for (var, value) in [("EF__DB_HOST", &db.host), ("EF__DB_USER", &db.user)] {
            if value.chars().any(|c| c.is_control()) {
                return Err(ConfigError::Invalid { var, reason: "contains control characters".into() });
            }
        }

        let absolute = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        let backup_dir = absolute(&v.string("EF__BACKUP_DIR", "backups"));
        let policy_path = v.get("EF__BACKUP_POLICY").map(|p| absolute(p.trim()));
        let pg_bin = v.get("EF__PG_BIN").map(|p| absolute(p.trim()));
        let policy_cache_dir = match v.get("EF__BACKUP_POLICY_CACHE_DIR").map(str::trim) {
            Some("off") => None,
            Some(dir) => Some(absolute(dir)),
            None => v.get("HOME").map(|h| Path::new(h.trim()).join(".cache/ef-backup")),
        };
        let policy_sha256 = v.get("EF__BACKUP_POLICY_SHA256").map(|h| h.trim().to_ascii_lowercase());
        if let Some(h) = &policy_sha256 {
            if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    var: "EF__BACKUP_POLICY_SHA256",
                    reason: format!("{h:?} is not a SHA-256 in hex (64 characters)"),
                });
            }
        }

        let s3 = s3_config(&v)?;
        let admin_token = v.get("EF__ADMIN_TOKEN").map(|t| Secret::new(t.trim()));
        let log_format = match v.get("EF__LOG_FORMAT").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::Invalid { var: "EF__LOG_FORMAT", reason: format!("{other:?} is not `text` or `json`") }),
        };
        // An empty value means "use the policy's default": it is not passed at all.
        let policy_settings = vars
            .iter()
            .filter_map(|(k, val)| Some((k.strip_prefix("EF__POLICY_")?.to_ascii_lowercase(), val.trim().to_string())))
            .filter(|(k, val)| !k.is_empty() && !val.is_empty())
            .collect();
        let state_dir = match v.get("EF__STATE_DIR") {
            Some(dir) => absolute(dir.trim()),
            None => default_state_dir(&v, &cwd.join(".ef-backup-state")),
        };
        let age_recipients = match v.get("EF__BACKUP_AGE_RECIPIENTS").map(str::trim) {
            None => Recipients::default(),
            // Inline keys start like one; anything else names a recipients file.
            Some(keys) if keys.starts_with("age1") => {
                Recipients::parse(keys).map_err(|reason| ConfigError::Invalid { var: "EF__BACKUP_AGE_RECIPIENTS", reason })?
            }
            Some(path) => {
                let text = std::fs::read_to_string(absolute(path)).map_err(|e| ConfigError::Invalid {
                    var: "EF__BACKUP_AGE_RECIPIENTS",
                    reason: format!("{path:?} is neither age public keys (age1…) nor a readable recipients file: {e}"),
                })?;
                let keys = Recipients::parse(&text)
                    .map_err(|reason| ConfigError::Invalid { var: "EF__BACKUP_AGE_RECIPIENTS", reason: format!("{path}: {reason}") })?;
                if keys.is_empty() {
                    return Err(ConfigError::Invalid {
                        var: "EF__BACKUP_AGE_RECIPIENTS", reason: format!("{path} holds no age public key (age1…)")
                    });
                }
                keys
            }
        };
        let signing_key = match v.get("EF__BACKUP_SIGNING_KEY").map(str::trim) {
            None => None,
            Some(path) => Some(std::sync::Arc::new(
                crate::sign::SigningKey::load(&absolute(path))
                    .map_err(|e| ConfigError::Invalid { var: "EF__BACKUP_SIGNING_KEY", reason: e.to_string() })?,
            )),
        };
        let trusted_keys = match v.get("EF__BACKUP_TRUSTED_KEYS").map(str::trim) {
            None => crate::sign::TrustedKeys::default(),
            // Inline keys start like one (minisign's ed25519 keys all begin `RW`).
            Some(keys) if keys.starts_with("RW") => {
                crate::sign::TrustedKeys::parse(keys).map_err(|reason| ConfigError::Invalid { var: "EF__BACKUP_TRUSTED_KEYS", reason })?
            }
            Some(path) => {
                let text = std::fs::read_to_string(absolute(path)).map_err(|e| ConfigError::Invalid {
                    var: "EF__BACKUP_TRUSTED_KEYS",
                    reason: format!("{path:?} is neither minisign public keys (RW…) nor a readable file of them: {e}"),
                })?;
                crate::sign::TrustedKeys::parse(&text)
                    .map_err(|reason| ConfigError::Invalid { var: "EF__BACKUP_TRUSTED_KEYS", reason: format!("{path}: {reason}") })?
            }
        };
        if v.get("EF__BACKUP_TRUSTED_KEYS").is_some() && trusted_keys.is_empty() {
            return Err(ConfigError::Invalid {
                var: "EF__BACKUP_TRUSTED_KEYS",
                reason: "holds no minisign public key (RW…): unset it to accept unsigned backups".into(),
            });
        }
        let codec = match v.get("EF__BACKUP_FORMAT").map(|s| s.trim().to_ascii_lowercase()) {
            None => Codec::Gzip,
            Some(id) => Codec::of_id(&id)
                .ok_or_else(|| ConfigError::Invalid { var: "EF__BACKUP_FORMAT", reason: format!("{id:?} is not `gzip` (the default) or `zstd`") })?,
        };
        let format = Format { codec, encrypted: !age_recipients.is_empty() };
        let mut warnings = Vec::new();
        if let Some(s3) = &s3 {
            if !s3.prefix.is_empty() && !s3.prefix.ends_with('/') {
                warnings.push(format!(
                    "EF__S3_PREFIX={p:?} has no trailing slash, so keys are `{p}<name>` (e.g. {p}{db}_backup_…), not a folder; \
                     ef-backup keeps using exactly this layout. To use a folder instead, set EF__S3_PREFIX={p}/ and move the \
                     existing objects first, e.g. `aws s3 mv s3://{b}/ s3://{b}/{p}/ --recursive --exclude '*' --include '{p}*'` \
                     (and strip the old prefix from each name), or older backups will no longer be listed or expired",
                    p = s3.prefix,
                    b = s3.bucket,
                    db = db.name,
                ));
            }
        }

        let globals = match v.get("EF__BACKUP_GLOBALS").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("auto") => GlobalsMode::Auto,
            Some("true") => GlobalsMode::Required,
            Some("false") => GlobalsMode::Off,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "EF__BACKUP_GLOBALS",
                    reason: format!(
                        "{other:?} is not `auto` (the default: with role passwords when readable), `true` (with passwords, or fail) or `false`"
                    ),
                })
            }
        };
        let deployment_name = v.get("EF__DEPLOYMENT_NAME").map(|s| s.trim().to_string());
        if let Some(name) = &deployment_name {
            if name.len() > 63 || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                return Err(ConfigError::Invalid {
                    var: "EF__DEPLOYMENT_NAME",
                    reason: format!("{name:?} must be 1 to 63 letters, digits, `-` or `_` (it is part of backup names)"),
                });
            }
        }

        let drill = drill::parse(&v, &db)?;
        let mut config = Config {
            db,
            databases,
            globals,
            deployment_name,
            parallel_dbs: v.number("EF__BACKUP_PARALLEL_DBS", 1usize, 1, 64)?,
            backup_dir,
            policy_path,
            policy_cache_dir,
            policy_sha256,
            pg_bin,
            s3,
            s3_part_size: v.number("EF__S3_PART_SIZE_MB", 8usize, 5, 5120)? << 20,
            retention_days: v.number("EF__BACKUP_RETENTION_DAYS", 30u32, 1, 36_500)?,
            gzip_level: v.number("EF__BACKUP_GZIP_LEVEL", DEFAULT_GZIP_LEVEL, 1, 9)?,
            format,
            zstd_level: v.number("EF__BACKUP_ZSTD_LEVEL", DEFAULT_ZSTD_LEVEL, 1, 19)?,
            age_recipients,
            keys: v.get("EF__BACKUP_AGE_IDENTITY_FILE").map(|p| Keys::from_file(absolute(p.trim()))).unwrap_or_default(),
            signing_key,
            trusted_keys,
            threads: v.number("EF__BACKUP_THREADS", 0usize, 0, 256)?,
            timeout_secs: v.number("EF__BACKUP_TIMEOUT_SECS", DEFAULT_TIMEOUT_SECS, 1, 7 * 86_400)?,
            shutdown_grace_secs: v.number("EF__SHUTDOWN_GRACE_SECS", 60u64, 0, 86_400)?,
            admin_token,
            http_addr: v.string("EF__HTTP_ADDR", "127.0.0.1:8080"),
            log_format,
            policy_settings,
            state_dir,
            min_keep: v.number("EF__BACKUP_MIN_KEEP", DEFAULT_MIN_KEEP, 1, 100_000)?,
            lock_wait_timeout_secs: v.number("EF__PG_LOCK_WAIT_TIMEOUT_SECS", DEFAULT_LOCK_WAIT_TIMEOUT_SECS, 1, 86_400)?,
            retry_delay_secs: v.number("EF__BACKUP_RETRY_DELAY_SECS", DEFAULT_RETRY_DELAY_SECS, 0, 86_400)?,
            http_max_connections: v.number("EF__HTTP_MAX_CONNECTIONS", DEFAULT_HTTP_MAX_CONNECTIONS, 1, 10_000)?,
            missed_slot_minutes: v.number("EF__BACKUP_MISSED_SLOT_MINUTES", 30u64, 1, 7 * 24 * 60)?,
            drill,
            notify: notify::parse(&v)?,
            warnings,
            policy: PolicyConfig {
                database: String::new(),
                databases: Vec::new(),
                globals_label: None,
                backup_dir: String::new(),
                s3: None,
                settings: Vec::new(),
                format: Format::GZIP,
            },
        };
        config.policy = config.policy_view();
        Ok(config)
    }

    /// The policy's view once the server has said which databases there are (`EF__DB_NAMES=*`)
    /// and what its system identifier is (the globals' label without `EF__DEPLOYMENT_NAME`).
    pub fn policy_resolved(&self, databases: Vec<String>, system_identifier: Option<&str>) -> PolicyConfig {
        let mut view = self.policy.clone();
        if let Some(first) = databases.first() {
            view.database = first.clone();
        }
        view.databases = databases;
        if view.globals_label.is_none() {
            view.globals_label = system_identifier.map(|id| format!("pg{id}-{}", self.selection_key()));
        }
        view
    }

    /// Eight hex digits that tell this deployment's database selection apart from another's on
    /// the same server (`EF__DB_NAME=a` from `EF__DB_NAMES=b,c` from `*`): two deployments of one
    /// server sharing a directory or prefix each keep their own globals, never the other's.
    pub fn selection_key(&self) -> String {
        let canonical = match &self.databases {
            Databases::One(db) => format!("one\n{db}"),
            Databases::Listed(dbs) => {
                let mut dbs = dbs.clone();
                dbs.sort();
                format!("list\n{}", dbs.join("\n"))
            }
            Databases::All { exclude } => {
                let mut exclude = exclude.clone();
                exclude.sort();
                format!("all\n{}", exclude.join("\n"))
            }
        };
        format!("{:08x}", crate::lock::lock_key(&canonical) as u64 as u32)
    }

    /// Whether the configuration names several databases (the run's response lists them all).
    pub fn several_databases(&self) -> bool {
        !matches!(self.databases, Databases::One(_))
    }

    /// Compression threads to use.
    /// How the engine encodes a new backup.
    pub fn encode_settings(&self) -> EncodeSettings {
        let level = match self.format.codec {
            Codec::Gzip => self.gzip_level,
            Codec::Zstd => self.zstd_level,
        };
        EncodeSettings { level, threads: self.compression_threads(), recipients: self.age_recipients.clone() }
    }

    pub fn compression_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

/// A database name as PostgreSQL takes it: 1 to 63 bytes, no control characters.
fn database_name(var: &'static str, name: &str) -> Result<String, ConfigError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control()) {
        return Err(ConfigError::Invalid { var, reason: format!("{name:?} is not a database name (1 to 63 bytes, no control characters)") });
    }
    Ok(name.to_string())
}

/// `EF__DB_NAME` (one database, default `euraflow`) or `EF__DB_NAMES` (a list, or `*` with
/// `EF__DB_EXCLUDE`); never both, so a leftover `EF__DB_NAME` cannot silently narrow a run.
fn databases(v: &Vars) -> Result<Databases, ConfigError> {
    let list = |var: &'static str, raw: &str| -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
            let name = database_name(var, part)?;
            if name == "*" || out.contains(&name) {
                return Err(ConfigError::Invalid { var, reason: format!("{name:?} appears twice or mixes `*` with names") });
            }
            out.push(name);
        }
        Ok(out)
    };
    let exclude = v.get("EF__DB_EXCLUDE").map(|raw| list("EF__DB_EXCLUDE", raw)).transpose()?;
    match (v.get("EF__DB_NAME"), v.get("EF__DB_NAMES").map(str::trim)) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            var: "EF__DB_NAMES",
            reason:
                "set together with EF__DB_NAME: set EF__DB_NAME for one database (the original's behaviour) or EF__DB_NAMES for several, not both"
                    .into(),
        }),
        (_, Some("*")) => Ok(Databases::All { exclude: exclude.unwrap_or_default() }),
        (one, names) => {
            if exclude.is_some() {
                return Err(ConfigError::Invalid {
                    var: "EF__DB_EXCLUDE",
                    reason: "only applies to EF__DB_NAMES=* (every database): list the databases you want in EF__DB_NAMES instead".into(),
                });
            }
            match names {
                Some(raw) => {
                    let dbs = list("EF__DB_NAMES", raw)?;
                    if dbs.is_empty() {
                        return Err(ConfigError::Invalid { var: "EF__DB_NAMES", reason: "lists no database: `a,b,c` or `*`".into() });
                    }
                    Ok(Databases::Listed(dbs))
                }
                None => Ok(Databases::One(database_name("EF__DB_NAME", one.unwrap_or("euraflow"))?)),
            }
        }
    }
}

/// Where state lives when `EF__STATE_DIR` is not set: the directory systemd made for the unit
/// (`StateDirectory=` sets `STATE_DIRECTORY`), `/var/lib/ef-backup` when this user may write
/// there, else the user's XDG state directory; `fallback` when none of those is known.
fn default_state_dir(v: &Vars, fallback: &Path) -> PathBuf {
    if let Some(dir) = v.get("STATE_DIRECTORY").and_then(|d| d.split(':').next()) {
        return PathBuf::from(dir.trim());
    }
    let system = Path::new("/var/lib/ef-backup");
    if writable_dir(system) {
        return system.to_path_buf();
    }
    if let Some(x) = v.get("XDG_STATE_HOME").filter(|x| Path::new(x.trim()).is_absolute()) {
        return Path::new(x.trim()).join("ef-backup");
    }
    if let Some(home) = v.get("HOME").filter(|h| Path::new(h.trim()).is_absolute()) {
        return Path::new(home.trim()).join(".local/state/ef-backup");
    }
    fallback.to_path_buf()
}

fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) on a NUL-terminated path.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

const S3_REQUIRED: [&str; 3] = ["EF__AWS_ACCESS_KEY_ID", "EF__AWS_SECRET_ACCESS_KEY", "EF__AWS_S3_BACKUP_BUCKET"];

/// S3 is on when all three required variables are set, off when none is; a partial set is an
/// error, because a typo must not silently turn off the off-site copy.
fn s3_config(v: &Vars) -> Result<Option<S3Config>, ConfigError> {
    let present: Vec<&str> = S3_REQUIRED.iter().copied().filter(|var| v.get(var).is_some()).collect();
    if present.is_empty() {
        if let Some(var) = ["EF__S3_OBJECT_LOCK_DAYS", "EF__S3_OBJECT_LOCK_MODE"].into_iter().find(|var| v.get(var).is_some()) {
            return Err(ConfigError::Invalid { var, reason: format!("set, but S3 is off: set {} too, or unset {var}", S3_REQUIRED.join(", ")) });
        }
        return Ok(None);
    }
    if let Some(missing) = S3_REQUIRED.iter().copied().find(|var| v.get(var).is_none()) {
        return Err(ConfigError::Invalid {
            var: missing,
            reason: format!(
                "not set, but {} is: set all of {} to enable S3 backups, or none to disable them",
                present.join(" and "),
                S3_REQUIRED.join(", ")
            ),
        });
    }
    let bucket = v.string("EF__AWS_S3_BACKUP_BUCKET", "");
    let valid_bucket =
        (3..=63).contains(&bucket.len()) && bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !valid_bucket {
        return Err(ConfigError::Invalid {
            var: "EF__AWS_S3_BACKUP_BUCKET",
            reason: format!("{bucket:?} is not a valid bucket name (3-63 characters: a-z, 0-9, '-', '.')"),
        });
    }
    let prefix = v.string("EF__S3_PREFIX", "");
    let object_lock = object_lock(v)?;
    if prefix.starts_with('/') || prefix.contains("..") || prefix.chars().any(|c| c.is_control()) {
        return Err(ConfigError::Invalid {
            var: "EF__S3_PREFIX",
            reason: format!("{prefix:?} must be a relative key prefix such as `db/euraflow/`"),
        });
    }
    Ok(Some(S3Config {
        access_key_id: v.string("EF__AWS_ACCESS_KEY_ID", ""),
        secret_access_key: Secret::new(v.get("EF__AWS_SECRET_ACCESS_KEY").unwrap_or_default().trim()),
        bucket,
        region: v.string("EF__AWS_REGION", "us-east-1"),
        prefix,
        endpoint_url: v.get("EF__AWS_ENDPOINT_URL").or_else(|| v.get("AWS_ENDPOINT_URL_S3")).map(|s| s.trim().to_string()),
        object_lock,
    }))
}

/// Ten years: past that a mistyped number would lock the bucket's storage bill for good.
const MAX_LOCK_DAYS: u32 = 3650;

fn object_lock(v: &Vars) -> Result<Option<ObjectLock>, ConfigError> {
    let mode = match v.get("EF__S3_OBJECT_LOCK_MODE").map(|m| m.trim().to_ascii_uppercase()) {
        None => None,
        Some(m) if m == "GOVERNANCE" => Some(LockMode::Governance),
        Some(m) if m == "COMPLIANCE" => Some(LockMode::Compliance),
        Some(m) => {
            return Err(ConfigError::Invalid {
                var: "EF__S3_OBJECT_LOCK_MODE",
                reason: format!("{m:?} is not an S3 Object Lock mode: GOVERNANCE or COMPLIANCE"),
            })
        }
    };
    if v.get("EF__S3_OBJECT_LOCK_DAYS").is_none() {
        return match mode {
            None => Ok(None),
            Some(_) => Err(ConfigError::Invalid {
                var: "EF__S3_OBJECT_LOCK_DAYS",
                reason: "not set, but EF__S3_OBJECT_LOCK_MODE is: set how many days every uploaded object is locked".into(),
            }),
        };
    }
    let days = v.number("EF__S3_OBJECT_LOCK_DAYS", 1, 1, MAX_LOCK_DAYS)?;
    Ok(Some(ObjectLock { mode: mode.unwrap_or(LockMode::Governance), days }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_vars(&vars, Path::new("/srv/app"))
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.db, DbConfig { host: "localhost".into(), port: 5432, name: "euraflow".into(), user: "euraflow".into(), password: None });
        assert_eq!(c.backup_dir, PathBuf::from("/srv/app/backups"));
        assert_eq!((c.retention_days, c.gzip_level, c.timeout_secs), (30, DEFAULT_GZIP_LEVEL, DEFAULT_TIMEOUT_SECS));
        assert!(c.s3.is_none() && c.admin_token.is_none() && c.policy_path.is_none());
        assert_eq!(c.http_addr, "127.0.0.1:8080");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (pairs, var) in [
            (vec![("EF__DB_PORT", "abc")], "EF__DB_PORT"),
            (vec![("EF__DB_PORT", "70000")], "EF__DB_PORT"),
            (vec![("EF__BACKUP_RETENTION_DAYS", "0")], "EF__BACKUP_RETENTION_DAYS"),
            (vec![("EF__BACKUP_GZIP_LEVEL", "10")], "EF__BACKUP_GZIP_LEVEL"),
            (vec![("EF__BACKUP_TIMEOUT_SECS", "-1")], "EF__BACKUP_TIMEOUT_SECS"),
            (vec![("EF__LOG_FORMAT", "xml")], "EF__LOG_FORMAT"),
            (vec![("EF__DB_NAME", "a\nb")], "EF__DB_NAME"),
        ] {
            let err = load(&pairs).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { var: v, .. } if v == var), "{pairs:?}: {err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn database_selection() {
        assert_eq!(load(&[]).unwrap().databases, Databases::One("euraflow".into()));
        let c = load(&[("EF__DB_NAMES", " a, b ,c,")]).unwrap();
        assert_eq!(c.databases, Databases::Listed(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!((c.db.name.as_str(), c.policy.databases.len(), c.several_databases()), ("a", 3, true));
        let c = load(&[("EF__DB_NAMES", "*"), ("EF__DB_EXCLUDE", "scratch,tmp")]).unwrap();
        assert_eq!(c.databases, Databases::All { exclude: vec!["scratch".into(), "tmp".into()] });
        assert_eq!((c.db.name.as_str(), c.policy.databases.len()), ("postgres", 0));
        let resolved = c.policy_resolved(vec!["a".into(), "b".into()], Some("7716"));
        assert_eq!(resolved.database, "a");
        assert_eq!(resolved.globals_label, Some(format!("pg7716-{}", c.selection_key())));
        // Each selection its own label on the same server; the order of a list does not matter.
        let keys: Vec<String> = [
            vec![("EF__DB_NAMES", "a,b")],
            vec![("EF__DB_NAMES", "b,a")],
            vec![("EF__DB_NAME", "a")],
            vec![("EF__DB_NAMES", "a")],
            vec![("EF__DB_NAMES", "*")],
            vec![("EF__DB_NAMES", "*"), ("EF__DB_EXCLUDE", "x")],
        ]
        .iter()
        .map(|v| load(v).unwrap().selection_key())
        .collect();
        assert_eq!(keys[0], keys[1]);
        let mut distinct = [&keys[0], &keys[2], &keys[3], &keys[4], &keys[5]].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5, "{keys:?}");
        assert!(keys.iter().all(|k| k.len() == 8 && k.bytes().all(|c| c.is_ascii_hexdigit())), "{keys:?}");
        let named = load(&[("EF__DEPLOYMENT_NAME", "prod-eu")]).unwrap();
        assert_eq!(named.policy_resolved(vec!["x".into()], Some("7716")).globals_label.as_deref(), Some("prod-eu"));
        for (pairs, var) in [
            (vec![("EF__DB_NAME", "x"), ("EF__DB_NAMES", "a,b")], "EF__DB_NAMES"),
            (vec![("EF__DB_NAMES", "a,a")], "EF__DB_NAMES"),
            (vec![("EF__DB_NAMES", "a,*")], "EF__DB_NAMES"),
            (vec![("EF__DB_NAMES", ",")], "EF__DB_NAMES"),
            (vec![("EF__DB_EXCLUDE", "a")], "EF__DB_EXCLUDE"),
            (vec![("EF__BACKUP_GLOBALS", "yes")], "EF__BACKUP_GLOBALS"),
            (vec![("EF__DEPLOYMENT_NAME", "a/b")], "EF__DEPLOYMENT_NAME"),
            (vec![("EF__BACKUP_PARALLEL_DBS", "0")], "EF__BACKUP_PARALLEL_DBS"),
        ] {
            let err = load(&pairs).unwrap_err();
            assert!(err.to_string().starts_with(var), "{pairs:?}: {err}");
        }
        assert_eq!(load(&[("EF__BACKUP_GLOBALS", "FALSE")]).unwrap().globals, GlobalsMode::Off);
        assert_eq!(load(&[]).unwrap().globals, GlobalsMode::Auto);
    }

    #[test]
    fn s3_all_or_nothing() {
        let err = load(&[("EF__AWS_ACCESS_KEY_ID", "AK"), ("EF__AWS_S3_BACKUP_BUCKET", "bkt")]).unwrap_err();
        assert!(err.to_string().starts_with("EF__AWS_SECRET_ACCESS_KEY: not set"), "{err}");
        let c = load(&[
            ("EF__AWS_ACCESS_KEY_ID", "AK"),
            ("EF__AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("EF__AWS_S3_BACKUP_BUCKET", "my-bucket"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        let s3 = c.s3.unwrap();
        assert_eq!((s3.bucket.as_str(), s3.region.as_str()), ("my-bucket", "us-east-1"));
        assert_eq!(s3.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(!format!("{s3:?}").contains("very-secret"));
        let err = load(&[("EF__AWS_ACCESS_KEY_ID", "AK"), ("EF__AWS_SECRET_ACCESS_KEY", "s"), ("EF__AWS_S3_BACKUP_BUCKET", "B!")]).unwrap_err();
        assert!(err.to_string().starts_with("EF__AWS_S3_BACKUP_BUCKET"), "{err}");
    }

    #[test]
    fn object_lock_settings() {
        let s3 = [("EF__AWS_ACCESS_KEY_ID", "AK"), ("EF__AWS_SECRET_ACCESS_KEY", "s"), ("EF__AWS_S3_BACKUP_BUCKET", "bkt")];
        let lock = |extra: &[(&'static str, &'static str)]| {
            let mut vars = s3.to_vec();
            vars.extend_from_slice(extra);
            load(&vars).map(|c| c.s3.unwrap().object_lock)
        };
        assert_eq!(lock(&[]).unwrap(), None);
        assert_eq!(lock(&[("EF__S3_OBJECT_LOCK_DAYS", "35")]).unwrap(), Some(ObjectLock { mode: LockMode::Governance, days: 35 }));
        assert_eq!(
            lock(&[("EF__S3_OBJECT_LOCK_DAYS", "7"), ("EF__S3_OBJECT_LOCK_MODE", "compliance")]).unwrap(),
            Some(ObjectLock { mode: LockMode::Compliance, days: 7 })
        );
        for (extra, var) in [
            (vec![("EF__S3_OBJECT_LOCK_DAYS", "0")], "EF__S3_OBJECT_LOCK_DAYS"),
            (vec![("EF__S3_OBJECT_LOCK_DAYS", "99999")], "EF__S3_OBJECT_LOCK_DAYS"),
            (vec![("EF__S3_OBJECT_LOCK_DAYS", "7"), ("EF__S3_OBJECT_LOCK_MODE", "forever")], "EF__S3_OBJECT_LOCK_MODE"),
            (vec![("EF__S3_OBJECT_LOCK_MODE", "COMPLIANCE")], "EF__S3_OBJECT_LOCK_DAYS"),
        ] {
            let err = lock(&extra).unwrap_err().to_string();
            assert!(err.starts_with(var), "{extra:?}: {err}");
        }
        // Without S3 a lock setting is a mistake, not something to ignore.
        let err = load(&[("EF__S3_OBJECT_LOCK_DAYS", "7")]).unwrap_err().to_string();
        assert!(err.starts_with("EF__S3_OBJECT_LOCK_DAYS: set, but S3 is off"), "{err}");
    }

    #[test]
    fn secrets_never_debug_printed() {
        let c = load(&[("EF__DB_PASSWORD", "hunter2-db"), ("EF__ADMIN_TOKEN", "tok-0123456789abcdef")]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-db") && !dbg.contains("tok-0123456789abcdef"), "{dbg}");
        assert_eq!(c.db.password.unwrap().expose(), "hunter2-db");
    }

    #[test]
    fn state_dir_defaults() {
        let c = load(&[("STATE_DIRECTORY", "/var/lib/ef-backup-unit:/other")]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ef-backup-unit"));
        let c = load(&[("EF__STATE_DIR", "st"), ("STATE_DIRECTORY", "/x")]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/app/st"));
        if !writable_dir(Path::new("/var/lib/ef-backup")) {
            let c = load(&[("XDG_STATE_HOME", "/home/u/.st"), ("HOME", "/home/u")]).unwrap();
            assert_eq!(c.state_dir, PathBuf::from("/home/u/.st/ef-backup"));
            let c = load(&[("HOME", "/home/u")]).unwrap();
            assert_eq!(c.state_dir, PathBuf::from("/home/u/.local/state/ef-backup"));
        }
    }

    /// Pins issue 12: `EF__S3_PREFIX=prod` silently meant keys `prod<name>`.
    #[test]
    fn s3_prefix_without_slash_is_warned_about() {
        let s3 = [("EF__AWS_ACCESS_KEY_ID", "AK"), ("EF__AWS_SECRET_ACCESS_KEY", "s"), ("EF__AWS_S3_BACKUP_BUCKET", "bkt")];
        let mut vars = s3.to_vec();
        vars.push(("EF__S3_PREFIX", "prod"));
        let c = load(&vars).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("EF__S3_PREFIX=\"prod\"") && c.warnings[0].contains("aws s3 mv"), "{}", c.warnings[0]);
        vars.pop();
        vars.push(("EF__S3_PREFIX", "prod/"));
        assert!(load(&vars).unwrap().warnings.is_empty());
    }

    #[test]
    fn policy_settings_and_paths() {
        let c = load(&[
            ("EF__POLICY_EMPTY", " "),
            ("EF__POLICY_LOCAL_KEEP_LAST", "3"),
            ("EF__POLICY_", "x"),
            ("EF__BACKUP_POLICY", "p/x.wasm"),
            ("EF__BACKUP_DIR", "/abs"),
        ])
        .unwrap();
        assert_eq!(c.policy_settings, vec![("local_keep_last".to_string(), "3".to_string())]);
        assert_eq!(c.policy_path, Some(PathBuf::from("/srv/app/p/x.wasm")));
        assert_eq!(c.backup_dir, PathBuf::from("/abs"));
    }
}

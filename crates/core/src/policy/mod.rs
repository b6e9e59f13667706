//! What the host asks of a backup policy, whichever runtime answers (the WebAssembly one in
//! `ef-backup-policy-wasm`, or a native one in tests), and the host's own rules around it: the
//! names it accepts, the crons it accepts, its fallback response when a policy cannot shape one.

pub mod native;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::Format;
use crate::config::notify::Channel;
use crate::model::{
    BackupEntry, BackupKind, BackupOutcome, BackupSchedule, Event, EventKind, HttpResponse, LoadedPolicy, NameInfo, Notification, PolicyConfig,
    Status, Target,
};

/// Retention reasons of one answer that are logged, and how much of each.
const REASON_LINES: usize = 50;
const REASON_MAX_CHARS: usize = 300;

/// The decisions a policy takes. Every answer is already validated by the implementation (a
/// name is a plain file name, a response is JSON with a status in 200-599, a selection names
/// only listed backups): the engine acts on what it gets.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Which policy this is, for the status response and the logs.
    fn loaded(&self) -> LoadedPolicy;
    fn schedule(&self, config: &PolicyConfig) -> Result<BackupSchedule, PolicyError>;
    /// The name of one file of a run: `file.database`'s dump, or the server's globals under
    /// `file.database` = the globals label; the run started at `file.run_at`.
    fn name_file(&self, config: &PolicyConfig, file: &NameInfo) -> Result<String, PolicyError>;
    /// The name of the (first) database's dump of a run started at `now` (Unix seconds).
    fn backup_name(&self, config: &PolicyConfig, now: i64) -> Result<String, PolicyError> {
        self.name_file(config, &NameInfo::dump(&config.database, now))
    }
    /// Whether the policy can name the globals (contract 0.2 and later).
    fn names_globals(&self) -> bool {
        true
    }
    /// What a name of this deployment's holds and when its run started; None when the name is
    /// not one this deployment writes (another database's, another tool's, not a backup).
    fn parse_name(&self, config: &PolicyConfig, name: &str) -> Result<Option<NameInfo>, PolicyError>;
    /// The entries of a listing that are this policy's, with the time each name carries. A
    /// name the policy fails on is only "not ours": it never stops the listing.
    fn recognise(&self, config: &PolicyConfig, backups: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, PolicyError>;
    /// Which of `ours` (recognised among `backups`) may be deleted from `target`, each with the
    /// policy's reason when it gives one. The host's safety rules still decide (`retention::Guard`).
    fn select_expired_among(
        &self,
        backups: &[BackupEntry],
        ours: &[(BackupEntry, NameInfo)],
        now: i64,
        target: Target,
        config: &PolicyConfig,
    ) -> Result<Vec<(String, Option<String>)>, PolicyError>;
    fn shape_backup_response(&self, outcome: &BackupOutcome) -> Result<HttpResponse, PolicyError>;
    fn shape_status(&self, status: &Status) -> Result<HttpResponse, PolicyError>;
    /// The messages `event` sends, each for one channel; None when the policy does not shape
    /// notifications (contract 0.1.0): the host then uses [`fallback_notifications`].
    fn shape_notification(&self, config: &PolicyConfig, now: i64, event: &Event) -> Result<Option<Vec<Notification>>, PolicyError>;
    /// Which of `ours` (the local store's recognised backups, newest first) a scheduled drill
    /// restores; None when the policy does not choose (contract 0.1.0): the host then uses
    /// [`fallback_drill_selection`]. Only names among `ours` are returned.
    fn select_drill(&self, config: &PolicyConfig, now: i64, ours: &[(BackupEntry, NameInfo)]) -> Result<Option<Vec<String>>, PolicyError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("policy {path} is not a WebAssembly file (it starts with {magic}); build one with scripts/build-policy.sh")]
    NotWasm { path: PathBuf, magic: String },
    #[error("policy {path} is a core WebAssembly module, not a component; build it for the wasm32-wasip2 target (scripts/build-policy.sh)")]
    CoreModule { path: PathBuf },
    #[error("policy {path} is not a valid component (truncated or corrupt?): {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("policy {path} implements euraflow:backup@{found}, this host accepts {accepted}; rebuild the policy against a supported wit/ version")]
    Version { path: PathBuf, found: String, accepted: String },
    #[error("policy {path} does not export euraflow:backup/policy (it exports: {exports}); is it a backup policy?")]
    NotAPolicy { path: PathBuf, exports: String },
    #[error("policy {path} needs imports this host does not provide: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("policy {path}: {call} trapped: {reason}")]
    Trap { path: PathBuf, call: &'static str, reason: String },
    #[error("policy {path}: {call} ran longer than {limit:?} and was stopped")]
    Timeout { path: PathBuf, call: &'static str, limit: Duration },
    #[error("policy {path}: {call} returned an invalid value: {reason}")]
    BadOutput { path: PathBuf, call: &'static str, reason: String },
    #[error("policy {path} logged errors while it was checked, so it refuses this configuration: {messages}; fix what it names (an empty EF__POLICY_* value means the policy's default) and start again")]
    ErrorLogged { path: PathBuf, messages: String },
    #[error("policy {path} implements contract 0.1.0, which {what}; use a 0.2 policy (the default one is), or change the setting")]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("policy {path} has SHA-256 {found}, but EF__BACKUP_POLICY_SHA256 pins {pinned}; refusing it")]
    Pinned { path: PathBuf, found: String, pinned: String },
}

/// Refuses a policy that cannot do what the configuration asks: a 0.1.0 policy names one
/// database's dumps only, so neither `EF__DB_NAMES` nor `EF__BACKUP_GLOBALS=true` can run under
/// it (with `auto`, the globals are skipped with a warning at each run).
pub fn check_fits(policy: &dyn Policy, config: &crate::config::Config) -> Result<(), PolicyError> {
    let path = || PathBuf::from(policy.loaded().path);
    if policy.names_globals() {
        return Ok(());
    }
    if config.several_databases() {
        return Err(PolicyError::Unsupported { path: path(), what: "cannot name the backups of several databases (EF__DB_NAMES)" });
    }
    if config.globals == crate::config::GlobalsMode::Required {
        return Err(PolicyError::Unsupported { path: path(), what: "cannot name the globals backup EF__BACKUP_GLOBALS=true asks for" });
    }
    if config.format != Format::GZIP {
        return Err(PolicyError::Unsupported {
            path: path(),
            what: "names every backup .sql.gz, so it cannot name zstd (EF__BACKUP_FORMAT) or encrypted (EF__BACKUP_AGE_RECIPIENTS) backups",
        });
    }
    Ok(())
}

/// A guest's message as one line of the host's log: line breaks, terminal escapes and the
/// other control characters (C0, C1, U+2028/U+2029, bidi overrides) are shown escaped, so a
/// guest can neither forge log lines nor hide text.
pub fn escape_log(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The host's own response when the policy cannot shape one (it trapped or answered nonsense):
/// the same envelope as the default policy, so clients still get `success` and the cause.
pub fn fallback_backup_response(outcome: &BackupOutcome) -> HttpResponse {
    let (status, body) = match outcome {
        BackupOutcome::Done(d) => (
            200,
            serde_json::json!({"success": true, "message": "backup succeeded (the policy could not shape this response)",
                "data": {"backup_file": d.file_name, "backup_path": d.path, "file_size_bytes": d.size_bytes}}),
        ),
        BackupOutcome::Failed(f) => (
            500,
            serde_json::json!({"success": false, "message": format!("backup failed: {}", f.message),
                "data": {"backup_file": f.file_name, "error": f.message}}),
        ),
        BackupOutcome::Busy(name) => (
            409,
            serde_json::json!({"success": false, "message": format!("a backup is already running: {name}"),
                "data": {"running_backup": name}}),
        ),
        BackupOutcome::Several(run) => {
            let backups: Vec<serde_json::Value> = run
                .entries
                .iter()
                .map(|e| match &e.outcome {
                    Ok(d) => serde_json::json!({"database": e.database, "kind": kind_id(e.kind), "success": true,
                        "backup_file": d.file_name, "backup_path": d.path, "file_size_bytes": d.size_bytes}),
                    Err(f) => serde_json::json!({"database": e.database, "kind": kind_id(e.kind), "success": false,
                        "backup_file": f.file_name, "error": f.message}),
                })
                .collect();
            let ok = run.succeeded();
            let failed = run.entries.iter().filter(|e| e.outcome.is_err()).count();
            let message = if ok {
                format!("backup of {} files succeeded", run.entries.len())
            } else {
                format!("{failed} of {} backups failed", run.entries.len())
            };
            (if ok { 200 } else { 500 }, serde_json::json!({"success": ok, "message": message, "data": {"backups": backups, "notes": run.notes}}))
        }
    };
    HttpResponse { status, body: body.to_string() }
}

/// What the host sends when the policy does not shape notifications (a 0.1.0 policy) or
/// failed to: failures and recoveries to every channel but the heartbeat, and the heartbeat's
/// start, success and fail pings; in English, from the host's own account of the event.
pub fn fallback_notifications(event: &Event) -> Vec<Notification> {
    let all_but_heartbeat = [Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email];
    let to = |channels: &[Channel], subject: String| -> Vec<Notification> {
        channels.iter().map(|&channel| Notification { channel, subject: subject.clone(), body: event.detail.clone() }).collect()
    };
    let what = if event.databases.is_empty() { String::from("ef-backup") } else { event.databases.join(", ") };
    let recovered = event.previous.as_ref().is_some_and(|p| !p.succeeded);
    let mut out = Vec::new();
    match event.kind {
        EventKind::BackupStarted => out.extend(to(&[Channel::Heartbeat], format!("[ef-backup] backup of {what} started"))),
        EventKind::BackupSucceeded => {
            out.extend(to(&[Channel::Heartbeat], format!("[ef-backup] backup of {what} succeeded")));
            if recovered {
                out.extend(to(&all_but_heartbeat, format!("[ef-backup] backup of {what} recovered")));
            }
        }
        EventKind::BackupFailed => {
            out.extend(to(&[Channel::Heartbeat], format!("[ef-backup] backup of {what} failed")));
            out.extend(to(&all_but_heartbeat, format!("[ef-backup] backup of {what} failed")));
        }
        EventKind::DrillSucceeded if recovered => out.extend(to(&all_but_heartbeat, format!("[ef-backup] restore drill of {what} recovered"))),
        EventKind::DrillSucceeded | EventKind::ServiceStarted | EventKind::ServiceStopped => {}
        EventKind::S3UploadFailed => out.extend(to(&all_but_heartbeat, format!("[ef-backup] S3 upload of {what} failed"))),
        EventKind::RetentionSkipped => out.extend(to(&all_but_heartbeat, format!("[ef-backup] retention of {what} skipped"))),
        EventKind::DrillFailed => out.extend(to(&all_but_heartbeat, format!("[ef-backup] restore drill of {what} failed"))),
        EventKind::MissedSlot => out.extend(to(&all_but_heartbeat, format!("[ef-backup] scheduled backup of {what} did not start"))),
        EventKind::PolicyRejected => out.extend(to(&all_but_heartbeat, "[ef-backup] policy reload rejected".to_string())),
    }
    out
}

/// The drill the host runs when the policy does not choose: the newest dump of each database.
pub fn fallback_drill_selection(ours: &[(BackupEntry, NameInfo)]) -> Vec<String> {
    let mut newest: std::collections::BTreeMap<&str, (&BackupEntry, i64)> = std::collections::BTreeMap::new();
    for (entry, info) in ours.iter().filter(|(_, i)| i.kind == BackupKind::Database) {
        let slot = newest.entry(info.database.as_str()).or_insert((entry, info.run_at));
        if (info.run_at, &entry.name) > (slot.1, &slot.0.name) {
            *slot = (entry, info.run_at);
        }
    }
    newest.into_values().map(|(e, _)| e.name.clone()).collect()
}

/// How responses and logs name a kind of backup.
pub fn kind_id(kind: crate::model::BackupKind) -> &'static str {
    match kind {
        crate::model::BackupKind::Database => "database",
        crate::model::BackupKind::Globals => "globals",
    }
}

/// A backup name becomes a file name and an S3 key: a plain, printable file name.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    // 240 leaves room for `.partial` under the usual 255-byte file name limit, and for the
    // default policy's longest name (a 63-byte database name, percent-encoded: 189 + 30).
    if name.is_empty() || name.len() > 240 {
        return Err("must be 1 to 240 bytes long");
    }
    if name.contains('/') || name.contains('\\') {
        return Err("must not contain a path separator");
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("must not start with '.' or contain '..'");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain whitespace or control characters");
    }
    // Listings only ever show names of a known format: a backup of another name would never
    // be listed again, so never recognised, never deleted.
    if Format::of_name(name).is_none() {
        return Err("must end with the suffix of a backup format (.sql.gz, .sql.zst, .sql.gz.age, .sql.zst.age)");
    }
    Ok(())
}

/// Five fields (or six, seconds first) of digits, `*`, `,`, `-` and `/`: the syntax every cron
/// shares; the scheduler parses the rest.
pub fn validate_cron(cron: &str) -> Result<(), &'static str> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err("expected five fields (minute hour day-of-month month day-of-week), or six with seconds first");
    }
    if fields.iter().any(|f| !f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c))) {
        return Err("fields may only contain digits and * , - /");
    }
    Ok(())
}

/// Logs the reasons a policy (0.2) gave for the deletions it selected in a real retention run:
/// one line per backup, at most [`REASON_LINES`], each reason cut short and escaped, so a
/// policy cannot flood the log with them. (`policy check` and `policy bench` do not log them:
/// their listings are samples.)
pub fn log_reasons(selected: &[(String, Option<String>)], target: Target) {
    let store = target.id();
    let reasons: Vec<(&String, &String)> = selected.iter().filter_map(|(n, r)| Some((n, r.as_ref()?))).collect();
    for (name, reason) in reasons.iter().take(REASON_LINES) {
        let reason: String = reason.chars().take(REASON_MAX_CHARS).collect();
        tracing::info!("the policy selects {name:?} for deletion ({store}): {}", escape_log(&reason));
    }
    if reasons.len() > REASON_LINES {
        tracing::info!("the policy selects {} more backups for deletion ({store}); reasons not logged", reasons.len() - REASON_LINES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("euraflow_backup_20251104_013000.sql.gz").is_ok());
        for bad in ["", "a/b.sql.gz", "..sql.gz", "../x.sql.gz", ".hidden.sql.gz", "a b.sql.gz", "a\n.sql.gz", "x.sql", "a\\b.sql.gz"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&format!("{}.sql.gz", "a".repeat(240))).is_err());
        // The default policy's name for the longest database name PostgreSQL allows, all multi-byte.
        assert!(validate_name(&format!("{}_backup_20251104_013000.sql.gz", "%E6%95%B0".repeat(21))).is_ok());
        assert!(validate_name("my%2Edb_backup_20251104_013000.sql.gz").is_ok());
    }

    #[test]
    fn crons() {
        for ok in ["0 1,13 * * *", "*/15 * * * 1-5", "0 0 1 * *", "*/5 * * * * *"] {
            assert!(validate_cron(ok).is_ok(), "{ok}");
        }
        for bad in ["", "0 1 * *", "0 0 1 * * * *", "0 1 * * MON", "@daily", "0 1 * * ?"] {
            assert!(validate_cron(bad).is_err(), "{bad}");
        }
    }

    /// Pins issue 12 (guest log lines cannot forge log lines): control characters of a
    /// guest's message are escaped, so one `log` call is one line of the host's log.
    #[test]
    fn log_messages_are_escaped() {
        assert_eq!(escape_log("plain: ünïcode 北京 ok"), "plain: ünïcode 北京 ok");
        assert_eq!(escape_log("a\nERROR forged\r\tb"), "a\\nERROR forged\\r\\tb");
        assert_eq!(escape_log("\u{1b}[31mred\u{7}\u{0}"), "\\u{001b}[31mred\\u{0007}\\u{0000}");
        assert_eq!(escape_log("c1\u{85}\u{9b}"), "c1\\u{0085}\\u{009b}");
        assert_eq!(escape_log("ls\u{2028}ps\u{2029}rlo\u{202e}x"), "ls\\u{2028}ps\\u{2029}rlo\\u{202e}x");
        let all: String = (0u32..0x110000).filter_map(char::from_u32).collect();
        let escaped = escape_log(&all);
        assert!(!escaped.chars().any(|c| c.is_control() || ('\u{2028}'..='\u{2029}').contains(&c)), "nothing breaks a line");
    }
}

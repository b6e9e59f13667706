//! The smallest complete ef-backup policy. Copy this directory, rename the crate, change the
//! decisions below, then:
//!
//! ```sh
//! scripts/build-policy.sh path/to/your-policy        # prints the .wasm path
//! ef-backup policy check path/to/your_policy.wasm    # every export, with sample inputs
//! EF__BACKUP_POLICY=/path/to/your_policy.wasm ef-backup serve   # or swap it under a running serve
//! ```
//!
//! Rules of the contract (`wit/0.2.0/backup-policy.wit`): no filesystem, network,
//! environment or clock — everything comes in as arguments (the time and a random seed in
//! `ctx`); each call gets a fresh instance, 64 MiB and 1 s; a name is a plain file name ending in
//! the format's suffix that says which database and kind it holds, and `parse-name` reads that
//! back; `select-expired` answers with a decision and a reason for each backup it was given
//! (the host keeps the newest whatever it says); responses are JSON with a status of 200-599
//! (2xx exactly when the backup succeeded). Settings come from `EF__POLICY_<KEY>` variables in
//! `config.settings`.

// Point `path` at the ef-backup repository's wit/ directory (or a copy of it).
wit_bindgen::generate!({ world: "backup-policy", path: "../../../wit/0.2.0" });

use euraflow::backup::types::{
    BackupEntry, BackupKind, BackupOutcome, Channel, Config, Event, EventKind, HttpResponse, NameInfo, NameRequest, Notification, RetentionDecision,
    Status,
};
use serde_json::json;

/// The suffixes of the formats the host writes (`request.format.suffix`).
const SUFFIXES: [&str; 4] = [".sql.gz", ".sql.zst", ".sql.gz.age", ".sql.zst.age"];

/// How many backups of each database to keep (setting `keep`, e.g. `EF__POLICY_KEEP=10`).
pub fn keep(config: &Config) -> usize {
    config.settings.iter().find(|(k, _)| k == "keep").and_then(|(_, v)| v.trim().parse().ok()).filter(|&n| n >= 1).unwrap_or(7)
}

/// The database as it appears in names: letters, digits and `_` only.
fn db_part(database: &str) -> String {
    database.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// `<database>-<unix seconds><suffix>` (the globals: `<label>-globals-<unix seconds><suffix>`):
/// simple, sortable, recognisable.
pub fn backup_name(request: &NameRequest) -> String {
    let kind = if request.kind == BackupKind::Globals { "globals-" } else { "" };
    format!("{}-{kind}{}{}", db_part(&request.database), request.run_at, request.format.suffix)
}

/// What one of our names says; none for anything else (another database's, a stray file).
pub fn parse_name(config: &Config, name: &str) -> Option<NameInfo> {
    let rest = SUFFIXES.iter().find_map(|s| name.strip_suffix(s))?;
    let dumps = config.databases.iter().map(|db| (db, BackupKind::Database));
    dumps.chain(config.globals_label.iter().map(|l| (l, BackupKind::Globals))).find_map(|(db, kind)| {
        let rest = rest.strip_prefix(&db_part(db))?.strip_prefix('-')?;
        let digits = if kind == BackupKind::Globals { rest.strip_prefix("globals-")? } else { rest };
        let run_at: i64 = digits.parse().ok().filter(|t: &i64| *t >= 0 && digits.bytes().all(|c| c.is_ascii_digit()))?;
        Some(NameInfo { database: db.clone(), kind, run_at })
    })
}

/// Keep the newest `keep` of each database (and of the globals); the rest expire.
pub fn select_expired(config: &Config, backups: &[BackupEntry]) -> Vec<RetentionDecision> {
    let keep = keep(config);
    let mut sorted: Vec<&BackupEntry> = backups.iter().collect();
    sorted.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.name.cmp(&a.name)));
    let mut seen: Vec<(&str, BackupKind)> = Vec::new();
    sorted
        .into_iter()
        .map(|b| {
            seen.push((&b.info.database, b.info.kind));
            let rank = seen.iter().filter(|k| **k == (b.info.database.as_str(), b.info.kind)).count();
            let delete = rank > keep;
            let reason = if delete { format!("not one of the {keep} newest (EF__POLICY_KEEP)") } else { format!("one of the {keep} newest") };
            RetentionDecision { name: b.name.clone(), delete, reason }
        })
        .collect()
}

pub fn shape_backup(outcome: &BackupOutcome) -> HttpResponse {
    let (status, body) = match outcome {
        BackupOutcome::Done(d) => {
            let s3 = d.copies.iter().find(|c| c.store == "s3").map(|c| &c.result);
            (
                200,
                json!({"success": true, "message": "backup done", "data": {"backup_file": d.file_name, "backup_path": d.path,
                    "file_size_bytes": d.size_bytes, "s3_uploaded": matches!(s3, Some(Ok(_))),
                    "s3_error": match s3 { Some(Err(e)) => Some(e.clone()), _ => None }}}),
            )
        }
        BackupOutcome::Failed(f) => (500, json!({"success": false, "message": f.message, "data": {"backup_file": f.file_name}})),
        BackupOutcome::Busy(n) => (409, json!({"success": false, "message": "busy", "data": {"running_backup": n}})),
        // A run of several databases (EF__DB_NAMES): one entry per file, the globals first.
        BackupOutcome::Several(run) => {
            let ok = run.entries.iter().all(|e| e.outcome.is_ok());
            let files: Vec<_> = run
                .entries
                .iter()
                .map(|e| match &e.outcome {
                    Ok(d) => json!({"database": e.database, "success": true, "backup_file": d.file_name}),
                    Err(f) => json!({"database": e.database, "success": false, "error": f.message}),
                })
                .collect();
            (
                if ok { 200 } else { 500 },
                json!({"success": ok, "message": if ok { "backup done" } else { "backup failed" }, "data": {"backups": files}}),
            )
        }
    };
    HttpResponse { status, body: body.to_string() }
}

/// `local_backups` holds only the backups `parse-name` recognised.
pub fn shape_status(s: &Status) -> HttpResponse {
    let body = json!({"local_backups": {"count": s.local_backups.len(), "backup_dir": s.config.backup_dir},
        "s3": {"enabled": s.config.s3.is_some()}, "schedule": "daily at 04:00 UTC", "policy": {"sha256": s.policy.sha256},
        "next_run_at": s.next_run, "running_backup": s.running});
    HttpResponse { status: 200, body: body.to_string() }
}

/// Tell every channel about failures, and about the first success after one; stay quiet
/// otherwise (no heartbeat pings: add `Channel::Heartbeat` messages to have them).
pub fn shape_notification(event: &Event) -> Vec<Notification> {
    let all = [Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email];
    let message = |subject: &str, body: String| {
        all.iter().map(|&channel| Notification { channel, subject: subject.to_string(), body: body.clone() }).collect::<Vec<_>>()
    };
    let recovered = event.previous.as_ref().is_some_and(|p| !p.succeeded);
    match (event.kind, &event.outcome) {
        (EventKind::BackupFailed, Some(BackupOutcome::Failed(f))) => message("backup failed", f.message.clone()),
        (EventKind::BackupFailed | EventKind::DrillFailed | EventKind::MissedSlot, _) => message("ef-backup needs attention", event.detail.clone()),
        (EventKind::BackupSucceeded, Some(BackupOutcome::Done(d))) if recovered => message("backup recovered", format!("{} is done", d.file_name)),
        _ => Vec::new(),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::euraflow::backup::types::*;
    use super::exports::euraflow::backup::policy::Guest;

    struct Template;

    impl Guest for Template {
        fn schedule(_config: Config) -> BackupSchedule {
            BackupSchedule { crons: vec!["0 4 * * *".into()], timezone: "UTC".into(), description: "daily at 04:00 UTC".into(), drill_crons: vec![] }
        }
        fn backup_name(_ctx: Context, _config: Config, request: NameRequest) -> String {
            super::backup_name(&request)
        }
        fn parse_name(config: Config, name: String) -> Option<NameInfo> {
            super::parse_name(&config, &name)
        }
        // Every store alike: local, s3 and any other.
        fn select_expired(_ctx: Context, config: Config, _store: StoreId, backups: Vec<BackupEntry>) -> Vec<RetentionDecision> {
            super::select_expired(&config, &backups)
        }
        fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
            super::shape_backup(&outcome)
        }
        fn shape_status(status: Status) -> HttpResponse {
            super::shape_status(&status)
        }
        fn shape_notification(_ctx: Context, _config: Config, event: Event) -> Vec<Notification> {
            super::shape_notification(&event)
        }
        // Drill the newest backup of the listing (newest first) only.
        fn select_drill(_ctx: Context, _config: Config, backups: Vec<BackupEntry>) -> Vec<String> {
            backups.iter().find(|b| b.info.kind == BackupKind::Database).map(|b| b.name.clone()).into_iter().collect()
        }
    }

    super::export!(Template with_types_in super);
}

#[cfg(test)]
mod tests {
    use super::euraflow::backup::types::{BackupDone, BackupFailed, ErrorKind, Format, LastRun};
    use super::*;

    fn config(keep: &str) -> Config {
        Config {
            databases: vec!["app".into()],
            globals_label: Some("app".into()),
            backup_dir: "/b".into(),
            s3: None,
            settings: vec![("keep".into(), keep.into())],
        }
    }

    fn request(kind: BackupKind, run_at: i64) -> NameRequest {
        let format = Format { suffix: ".sql.gz".into(), codec: "gzip".into(), encrypted: false };
        NameRequest { database: "app".into(), kind, format, run_at }
    }

    #[test]
    fn names_and_retention() {
        let c = config("2");
        assert_eq!(backup_name(&request(BackupKind::Database, 42)), "app-42.sql.gz");
        assert_eq!(backup_name(&request(BackupKind::Globals, 42)), "app-globals-42.sql.gz");
        let info = parse_name(&c, "app-42.sql.zst").unwrap();
        assert_eq!((info.database.as_str(), info.kind, info.run_at), ("app", BackupKind::Database, 42));
        assert!(matches!(parse_name(&c, "app-globals-42.sql.gz"), Some(NameInfo { kind: BackupKind::Globals, run_at: 42, .. })));
        for foreign in ["other-42.sql.gz", "app-42.txt", "app-+42.sql.gz", "app--42.sql.gz", "app-42.sql.gz.partial"] {
            assert!(parse_name(&c, foreign).is_none(), "{foreign}");
        }
        let listing: Vec<BackupEntry> = [10, 30, 20, 40]
            .iter()
            .map(|t| backup_name(&request(BackupKind::Database, *t)))
            .chain(["app-globals-5.sql.gz".to_string()])
            .map(|name| BackupEntry { info: parse_name(&c, &name).unwrap(), name, size_bytes: 1, modified: 0 })
            .collect();
        let decisions = select_expired(&c, &listing);
        assert_eq!(decisions.len(), listing.len(), "a decision for every backup");
        let expired: Vec<&str> = decisions.iter().filter(|d| d.delete).map(|d| d.name.as_str()).collect();
        assert_eq!(expired, ["app-20.sql.gz", "app-10.sql.gz"], "the globals count on their own");
        assert_eq!(keep(&config("x")), 7);
    }

    #[test]
    fn notifications() {
        let event = |kind, outcome, previous| Event {
            kind,
            at: 43,
            detail: "detail".into(),
            databases: vec![],
            file_name: None,
            outcome: Some(outcome),
            previous,
            changes: vec![],
        };
        let failed = BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: "pg_dump failed".into(), file_name: None });
        let n = shape_notification(&event(EventKind::BackupFailed, failed, None));
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].subject, "backup failed");
        let run = |succeeded| LastRun { started_at: 0, finished_at: 1, succeeded, file_name: None, message: String::new() };
        let done = || {
            let file_name = "app-42.sql.gz".to_string();
            BackupOutcome::Done(BackupDone {
                path: format!("/b/{file_name}"),
                file_name,
                size_bytes: 1,
                started_at: 42,
                finished_at: 43,
                copies: vec![],
            })
        };
        let recovered = shape_notification(&event(EventKind::BackupSucceeded, done(), Some(run(false))));
        assert_eq!((recovered[0].subject.as_str(), recovered[0].body.as_str()), ("backup recovered", "app-42.sql.gz is done"));
        assert!(shape_notification(&event(EventKind::BackupSucceeded, done(), Some(run(true)))).is_empty());
    }
}

//! The smallest complete ef-backup policy. Copy this directory, rename the crate, change the
//! decisions below, then:
//!
//! ```sh
//! scripts/build-policy.sh path/to/your-policy        # prints the .wasm path
//! ef-backup policy check path/to/your_policy.wasm    # every export, with sample inputs
//! EF__BACKUP_POLICY=/path/to/your_policy.wasm ef-backup serve   # or swap it under a running serve
//! ```
//!
//! Rules of the contract (`wit/backup-policy.wit`): no filesystem, network, environment or
//! clock — everything comes in as arguments; each call gets a fresh instance, 64 MiB and 1 s;
//! names must be plain `*.sql.gz` file names; `select-expired` may only return names from the
//! listing it got that `parse-name` recognises, and never the newest; responses are JSON with a
//! status of 200-599 (2xx exactly when the backup succeeded). Settings come from
//! `EF__POLICY_<KEY>` variables in `config.settings`.

// Point `path` at the ef-backup repository's wit/ directory (or a copy of it).
wit_bindgen::generate!({ world: "backup-policy", path: "../../../wit/0.1.0" });

use euraflow::backup::types::{BackupEntry, BackupOutcome, Config, HttpResponse, S3Outcome, Status};
use serde_json::json;

/// How many of our backups to keep (setting `keep`, e.g. `EF__POLICY_KEEP=10`).
pub fn keep(config: &Config) -> usize {
    config.settings.iter().find(|(k, _)| k == "keep").and_then(|(_, v)| v.trim().parse().ok()).filter(|&n| n >= 1).unwrap_or(7)
}

/// `<database>-<unix seconds>.sql.gz`: simple, sortable, recognisable.
pub fn backup_name(config: &Config, now: i64) -> String {
    let db: String = config.database.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    format!("{db}-{now}.sql.gz")
}

pub fn parse_name(config: &Config, name: &str) -> Option<i64> {
    let prefix = backup_name(config, 0);
    let prefix = prefix.strip_suffix("0.sql.gz")?;
    name.strip_prefix(prefix)?.strip_suffix(".sql.gz")?.parse().ok().filter(|t: &i64| *t >= 0)
}

/// Keep the newest `keep` of ours; the rest expire. Never the newest, never a foreign name.
pub fn select_expired(config: &Config, backups: &[BackupEntry]) -> Vec<String> {
    let mut ours: Vec<(i64, &str)> = backups.iter().filter_map(|b| Some((parse_name(config, &b.name)?, b.name.as_str()))).collect();
    ours.sort_by(|a, b| b.cmp(a));
    ours.into_iter().skip(keep(config)).map(|(_, n)| n.to_string()).collect()
}

pub fn shape_backup(outcome: &BackupOutcome) -> HttpResponse {
    let (status, body) = match outcome {
        BackupOutcome::Done(d) => (
            200,
            json!({"success": true, "message": "backup done", "data": {"backup_file": d.file_name, "backup_path": d.path,
                "file_size_bytes": d.size_bytes, "s3_uploaded": matches!(d.s3, S3Outcome::Uploaded(_)),
                "s3_error": match &d.s3 { S3Outcome::Failed(e) => Some(e.clone()), _ => None }}}),
        ),
        BackupOutcome::Failed(f) => (500, json!({"success": false, "message": f.message, "data": {"backup_file": f.file_name}})),
        BackupOutcome::Busy(n) => (409, json!({"success": false, "message": "busy", "data": {"running_backup": n}})),
    };
    HttpResponse { status, body: body.to_string() }
}

pub fn shape_status(s: &Status) -> HttpResponse {
    let ours: Vec<&BackupEntry> = s.local_backups.iter().filter(|b| parse_name(&s.config, &b.name).is_some()).collect();
    let body = json!({"local_backups": {"count": ours.len(), "backup_dir": s.config.backup_dir},
        "s3": {"enabled": s.config.s3.is_some()}, "schedule": "daily at 04:00 UTC", "policy": {"sha256": s.policy.sha256},
        "next_run_at": s.next_run, "running_backup": s.running});
    HttpResponse { status: 200, body: body.to_string() }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::euraflow::backup::types::*;
    use super::exports::euraflow::backup::policy::Guest;

    struct Template;

    impl Guest for Template {
        fn schedule(_config: Config) -> BackupSchedule {
            BackupSchedule { crons: vec!["0 4 * * *".into()], timezone: "UTC".into(), description: "daily at 04:00 UTC".into() }
        }
        fn backup_name(config: Config, now: i64) -> String {
            super::backup_name(&config, now)
        }
        fn parse_name(config: Config, name: String) -> Option<i64> {
            super::parse_name(&config, &name)
        }
        fn select_expired(backups: Vec<BackupEntry>, _now: i64, _target: Target, config: Config) -> Vec<String> {
            super::select_expired(&config, &backups)
        }
        fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
            super::shape_backup(&outcome)
        }
        fn shape_status(status: Status) -> HttpResponse {
            super::shape_status(&status)
        }
    }

    super::export!(Template with_types_in super);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keep: &str) -> Config {
        Config { database: "app".into(), backup_dir: "/b".into(), s3: None, settings: vec![("keep".into(), keep.into())] }
    }

    #[test]
    fn names_and_retention() {
        let c = config("2");
        assert_eq!(backup_name(&c, 42), "app-42.sql.gz");
        assert_eq!(parse_name(&c, "app-42.sql.gz"), Some(42));
        assert_eq!(parse_name(&c, "other-42.sql.gz"), None);
        let listing: Vec<BackupEntry> = [10, 30, 20, 40]
            .iter()
            .map(|t| BackupEntry { name: backup_name(&c, *t), size_bytes: 1, modified: 0 })
            .chain([BackupEntry { name: "notes.sql.gz".into(), size_bytes: 1, modified: 0 }])
            .collect();
        assert_eq!(select_expired(&c, &listing), ["app-20.sql.gz", "app-10.sql.gz"]);
        assert_eq!(keep(&config("x")), 7);
    }
}

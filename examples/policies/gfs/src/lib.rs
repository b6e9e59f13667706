//! An example ef-backup policy, to copy and adapt.
//!
//! - Names: `<database>_YYYYMMDD_HHMMSS.sql.gz`, UTC.
//! - Schedule: every day at 02:30 UTC.
//! - Retention (local and S3 alike): grandfather-father-son. Keep the 14 newest backups, the
//!   newest of each of the last 14 days that have backups, of the last 8 weeks and of the last
//!   12 months. Everything else of ours expires; names that are not ours are never touched.
//! - Responses: the original plugin's JSON shape, with English messages.
//!
//! Build: `scripts/build-policy.sh examples/policies/gfs`; check: `ef-backup policy check
//! <the printed path>`; deploy: point `EF__BACKUP_POLICY` at it (a running `serve` picks it up).

wit_bindgen::generate!({ world: "backup-policy", path: "../../../wit/0.1.0" });

pub use euraflow::backup::types;
use serde_json::json;
use types::{BackupEntry, BackupOutcome, BackupSchedule, Config, HttpResponse, S3Outcome, Status};

pub const KEEP_LAST: usize = 14;
pub const KEEP_DAILY: usize = 14;
pub const KEEP_WEEKLY: usize = 8;
pub const KEEP_MONTHLY: usize = 12;
const SUFFIX: &str = ".sql.gz";

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m as i64 + 9) % 12) + 2) / 5 + d as i64 - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The database part of a name: letters, digits, `-` and `_` only.
pub fn db_part(database: &str) -> String {
    let s: String = database.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if s.is_empty() {
        "db".into()
    } else {
        s
    }
}

pub fn backup_name(config: &Config, now: i64) -> String {
    let (y, m, d) = civil(now.div_euclid(86_400));
    let s = now.rem_euclid(86_400);
    format!("{}_{y:04}{m:02}{d:02}_{:02}{:02}{:02}{SUFFIX}", db_part(&config.database), s / 3600, s / 60 % 60, s % 60)
}

pub fn parse_name(config: &Config, name: &str) -> Option<i64> {
    let stamp = name.strip_prefix(&db_part(&config.database))?.strip_prefix('_')?.strip_suffix(SUFFIX)?;
    let b = stamp.as_bytes();
    if b.len() != 15 || b[8] != b'_' || !stamp.bytes().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| stamp[r].parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (n(0..4)?, n(4..6)? as u32, n(6..8)? as u32, n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&mo) || d == 0 || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    // Reject dates like Feb 30th: they do not survive the round trip.
    (civil(days) == (y, mo, d)).then_some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Grandfather-father-son: the names among `backups` (of ours) that no rule keeps.
pub fn select_expired(config: &Config, backups: &[BackupEntry]) -> Vec<String> {
    let mut ours: Vec<(&str, i64)> = backups.iter().filter_map(|b| Some((b.name.as_str(), parse_name(config, &b.name)?))).collect();
    ours.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
    let mut keep = vec![false; ours.len()];
    for k in keep.iter_mut().take(KEEP_LAST) {
        *k = true;
    }
    let day = |t: i64| t.div_euclid(86_400);
    // Weeks start on Monday (1970-01-01 was a Thursday).
    let week = |t: i64| (day(t) + 3).div_euclid(7);
    let month = |t: i64| {
        let (y, m, _) = civil(day(t));
        y * 12 + m as i64
    };
    for (bucket, count) in [(&day as &dyn Fn(i64) -> i64, KEEP_DAILY), (&week, KEEP_WEEKLY), (&month, KEEP_MONTHLY)] {
        let mut seen = Vec::new();
        for (i, (_, t)) in ours.iter().enumerate() {
            let b = bucket(*t);
            if !seen.contains(&b) {
                if seen.len() == count {
                    break;
                }
                seen.push(b);
                keep[i] = true; // newest of its bucket: the list is newest first
            }
        }
    }
    ours.iter().zip(keep).filter(|(_, k)| !k).map(|((n, _), _)| n.to_string()).collect()
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1048576.0 * 100.0).round() / 100.0
}

fn respond(status: u16, body: serde_json::Value) -> HttpResponse {
    HttpResponse { status, body: body.to_string() }
}

pub fn shape_backup(outcome: &BackupOutcome) -> HttpResponse {
    match outcome {
        BackupOutcome::Done(d) => {
            let (message, uploaded, error) = match &d.s3 {
                S3Outcome::Uploaded(_) => ("Backup succeeded and was uploaded to S3", true, None),
                S3Outcome::Disabled => ("Backup succeeded (local only: S3 is not configured)", false, None),
                S3Outcome::Failed(e) => ("Backup succeeded locally, but the S3 upload failed", false, Some(e.clone())),
            };
            let stamp = d.file_name.strip_suffix(SUFFIX).and_then(|n| n.get(n.len().saturating_sub(15)..)).unwrap_or_default();
            respond(
                200,
                json!({"success": true, "message": message, "data": {
                    "backup_file": d.file_name, "backup_path": d.path, "file_size_bytes": d.size_bytes,
                    "file_size_mb": mb(d.size_bytes), "timestamp": stamp, "s3_uploaded": uploaded, "s3_error": error}}),
            )
        }
        BackupOutcome::Failed(f) => respond(
            500,
            json!({"success": false, "message": format!("Backup failed: {}", f.message),
                "data": {"backup_file": f.file_name, "error": f.message}}),
        ),
        BackupOutcome::Busy(name) => {
            respond(409, json!({"success": false, "message": format!("A backup is already running: {name}"), "data": {"running_backup": name}}))
        }
    }
}

pub fn schedule() -> BackupSchedule {
    BackupSchedule { crons: vec!["30 2 * * *".into()], timezone: "UTC".into(), description: "daily at 02:30 UTC".into() }
}

pub fn shape_status(s: &Status) -> HttpResponse {
    let mut ours: Vec<(&BackupEntry, i64)> = s.local_backups.iter().filter_map(|b| Some((b, parse_name(&s.config, &b.name)?))).collect();
    ours.sort_by_key(|b| std::cmp::Reverse(b.1));
    let total: u64 = ours.iter().map(|(b, _)| b.size_bytes).sum();
    let recent: Vec<_> =
        ours.iter().take(5).map(|(b, _)| json!({"filename": b.name, "size_mb": mb(b.size_bytes), "created_at": b.modified as f64})).collect();
    respond(
        200,
        json!({
            "local_backups": {"count": ours.len(), "total_size_mb": mb(total), "retention": "gfs: 14 last, 14 daily, 8 weekly, 12 monthly",
                "backup_dir": s.config.backup_dir, "recent": recent},
            "s3": {"enabled": s.config.s3.is_some(), "bucket": s.config.s3.as_ref().map(|c| c.bucket.clone()),
                "region": s.config.s3.as_ref().map(|c| c.region.clone())},
            "schedule": schedule().description,
            "policy": {"name": "gfs", "path": s.policy.path, "sha256": s.policy.sha256, "wit_version": s.policy.wit_version},
            "last_run": s.last_run.as_ref().map(|r| json!({"success": r.succeeded, "backup_file": r.file_name, "message": r.message})),
            "next_run_at": s.next_run.map(|t| t as f64),
            "running_backup": s.running,
        }),
    )
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::exports::euraflow::backup::policy::Guest;
    use super::types::{BackupEntry, BackupOutcome, BackupSchedule, Config, HttpResponse, Status, Target};

    struct Gfs;

    impl Guest for Gfs {
        fn schedule(_config: Config) -> BackupSchedule {
            super::schedule()
        }
        fn backup_name(config: Config, now: i64) -> String {
            super::backup_name(&config, now)
        }
        fn parse_name(config: Config, name: String) -> Option<i64> {
            super::parse_name(&config, &name)
        }
        // GFS treats local and S3 alike, and counts from the newest backup, not from `now`.
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

    super::export!(Gfs with_types_in super);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_762_191_000; // 2025-11-03 17:30:00 UTC

    fn config() -> Config {
        Config { database: "euraflow".into(), backup_dir: "/b".into(), s3: None, settings: vec![] }
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        let c = config();
        assert_eq!(backup_name(&c, NOW), "euraflow_20251103_173000.sql.gz");
        assert_eq!(parse_name(&c, "euraflow_20251103_173000.sql.gz"), Some(NOW));
        let other = Config { database: "other db".into(), ..config() };
        assert_eq!(backup_name(&other, NOW), "other-db_20251103_173000.sql.gz");
        for foreign in [
            "other-db_20251103_173000.sql.gz",
            "euraflow_backup_20251103_173000.sql.gz",
            "euraflow_20250230_173000.sql.gz",
            "euraflow_20251103_173000.sql.gz.partial",
            "euraflow_2025110_173000.sql.gz",
        ] {
            assert_eq!(parse_name(&c, foreign), None, "{foreign}");
        }
        let mut t = 946_684_800;
        while t < 1_900_000_000 {
            assert_eq!(parse_name(&c, &backup_name(&c, t)), Some(t));
            t += 7_919;
        }
    }

    #[test]
    fn gfs_keeps_last_daily_weekly_monthly() {
        let c = config();
        // Twice a day for two years.
        let listing: Vec<BackupEntry> =
            (0..1460).map(|i| BackupEntry { name: backup_name(&c, NOW - i * DAY / 2), size_bytes: 1, modified: 0 }).collect();
        let expired = select_expired(&c, &listing);
        let kept: Vec<&BackupEntry> = listing.iter().filter(|b| !expired.contains(&b.name)).collect();
        // 14 last (7 days) + daily fills 7 more days + 8 weeks adds 6 + 12 months adds ~10.
        assert!(kept.len() >= 14 + 7 + 6 && kept.len() <= 14 + 14 + 8 + 12, "{}", kept.len());
        assert_eq!(kept[0].name, listing[0].name, "the newest survives");
        let oldest_kept = kept.iter().filter_map(|b| parse_name(&c, &b.name)).min().unwrap();
        assert!(NOW - oldest_kept > 300 * DAY && NOW - oldest_kept < 366 * DAY, "monthly reach: {}", (NOW - oldest_kept) / DAY);
        let foreign = BackupEntry { name: "notes.sql.gz".into(), size_bytes: 1, modified: 0 };
        assert!(!select_expired(&c, &[foreign]).contains(&"notes.sql.gz".to_string()));
    }

    #[test]
    fn all_old_keeps_the_last_ones() {
        let c = config();
        let listing: Vec<BackupEntry> =
            (0..30).map(|i| BackupEntry { name: backup_name(&c, NOW - (1000 + i) * DAY), size_bytes: 1, modified: 0 }).collect();
        let expired = select_expired(&c, &listing);
        assert!(expired.len() <= 30 - KEEP_LAST);
        assert!(!expired.contains(&listing[0].name));
    }

    #[test]
    fn english_responses_in_the_original_shape() {
        let done = BackupOutcome::Done(types::BackupDone {
            file_name: "euraflow_20251103_173000.sql.gz".into(),
            path: "/b/euraflow_20251103_173000.sql.gz".into(),
            size_bytes: 12_345_678,
            started_at: NOW,
            finished_at: NOW,
            s3: S3Outcome::Disabled,
        });
        let r = shape_backup(&done);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(v["message"], "Backup succeeded (local only: S3 is not configured)");
        assert_eq!(v["data"]["timestamp"], "20251103_173000");
        assert_eq!(v["data"]["file_size_mb"], 11.77);
        assert_eq!(shape_backup(&BackupOutcome::Busy("x".into())).status, 409);
    }
}

//! An example ef-backup policy, to copy and adapt.
//!
//! - Names: `<database>_YYYYMMDD_HHMMSS<format suffix>`, UTC; the globals
//!   `<label>_globals_YYYYMMDD_HHMMSS<format suffix>`.
//! - Schedule: every day at 02:30 UTC; no restore drills.
//! - Retention (every store alike): grandfather-father-son, for each database (and the globals)
//!   on its own. Keep the 14 newest backups, the newest of each of the last 14 days that have
//!   backups, of the last 8 weeks and of the last 12 months. Everything else expires, each
//!   decision with its reason; names that are not ours never reach the policy.
//! - Responses: the original plugin's JSON shape, with English messages; notifications when a
//!   backup fails and when one succeeds after a failure.
//!
//! Build: `scripts/build-policy.sh examples/policies/gfs`; check: `ef-backup policy check
//! <the printed path>`; deploy: point `EF__BACKUP_POLICY` at it (a running `serve` picks it up).

wit_bindgen::generate!({ world: "backup-policy", path: "../../../wit/0.2.0" });

pub use euraflow::backup::types;
use serde_json::json;
use types::{
    BackupEntry, BackupKind, BackupOutcome, BackupSchedule, Channel, Config, Event, EventKind, HttpResponse, NameInfo, NameRequest, Notification,
    RetentionDecision, Status,
};

pub const KEEP_LAST: usize = 14;
pub const KEEP_DAILY: usize = 14;
pub const KEEP_WEEKLY: usize = 8;
pub const KEEP_MONTHLY: usize = 12;
/// The suffixes of the formats the host writes (`request.format.suffix`).
pub const SUFFIXES: [&str; 4] = [".sql.gz", ".sql.zst", ".sql.gz.age", ".sql.zst.age"];
const GLOBALS: &str = "globals_";

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

pub fn backup_name(request: &NameRequest) -> String {
    let t = request.run_at;
    let (y, m, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    let kind = if request.kind == BackupKind::Globals { GLOBALS } else { "" };
    let suffix = &request.format.suffix;
    format!("{}_{kind}{y:04}{m:02}{d:02}_{:02}{:02}{:02}{suffix}", db_part(&request.database), s / 3600, s / 60 % 60, s % 60)
}

/// What one of our names says: a dump of one of `config.databases` or the globals under
/// `config.globals-label`, and the run's time.
pub fn parse_name(config: &Config, name: &str) -> Option<NameInfo> {
    let rest = SUFFIXES.iter().find_map(|s| name.strip_suffix(s))?;
    let after = |db: &str| rest.strip_prefix(&db_part(db))?.strip_prefix('_');
    let dumps = config.databases.iter().filter_map(|db| Some((db, BackupKind::Database, parse_stamp(after(db)?)?)));
    let globals = config.globals_label.iter().filter_map(|l| Some((l, BackupKind::Globals, parse_stamp(after(l)?.strip_prefix(GLOBALS)?)?)));
    dumps.chain(globals).next().map(|(db, kind, run_at)| NameInfo { database: db.clone(), kind, run_at })
}

/// `YYYYMMDD_HHMMSS` (UTC) as Unix seconds.
fn parse_stamp(stamp: &str) -> Option<i64> {
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

/// Grandfather-father-son, for each database (and kind) on its own: a decision with its reason
/// for every backup.
pub fn select_expired(backups: &[BackupEntry]) -> Vec<RetentionDecision> {
    let mut groups: Vec<Vec<&BackupEntry>> = Vec::new();
    for b in backups {
        match groups.iter_mut().find(|g| g[0].info.database == b.info.database && g[0].info.kind == b.info.kind) {
            Some(g) => g.push(b),
            None => groups.push(vec![b]),
        }
    }
    groups.into_iter().flat_map(gfs).collect()
}

fn gfs(mut ours: Vec<&BackupEntry>) -> Vec<RetentionDecision> {
    ours.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.name.cmp(&a.name)));
    let mut why: Vec<Option<String>> = vec![None; ours.len()];
    for w in why.iter_mut().take(KEEP_LAST) {
        *w = Some(format!("one of the {KEEP_LAST} newest"));
    }
    let day = |t: i64| t.div_euclid(86_400);
    // Weeks start on Monday (1970-01-01 was a Thursday).
    let week = |t: i64| (day(t) + 3).div_euclid(7);
    let month = |t: i64| {
        let (y, m, _) = civil(day(t));
        y * 12 + m as i64
    };
    for (bucket, count, unit) in [(&day as &dyn Fn(i64) -> i64, KEEP_DAILY, "days"), (&week, KEEP_WEEKLY, "weeks"), (&month, KEEP_MONTHLY, "months")]
    {
        let mut seen = Vec::new();
        for (i, b) in ours.iter().enumerate() {
            let key = bucket(b.info.run_at);
            if !seen.contains(&key) {
                if seen.len() == count {
                    break;
                }
                seen.push(key);
                // The newest of its bucket: the list is newest first.
                why[i].get_or_insert_with(|| format!("the newest of one of the last {count} {unit} with backups"));
            }
        }
    }
    ours.iter()
        .zip(why)
        .map(|(b, why)| RetentionDecision {
            name: b.name.clone(),
            delete: why.is_none(),
            reason: why.unwrap_or_else(|| {
                format!("gfs: not one of the {KEEP_LAST} newest, nor the newest of a day, week or month still kept ({KEEP_DAILY} daily, {KEEP_WEEKLY} weekly, {KEEP_MONTHLY} monthly)")
            }),
        })
        .collect()
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
            let (message, uploaded, error) = match d.copies.iter().find(|c| c.store == "s3").map(|c| &c.result) {
                Some(Ok(_)) => ("Backup succeeded and was uploaded to S3", true, None),
                None => ("Backup succeeded (local only: S3 is not configured)", false, None),
                Some(Err(e)) => ("Backup succeeded locally, but the S3 upload failed", false, Some(e.clone())),
            };
            let stamp =
                SUFFIXES.iter().find_map(|s| d.file_name.strip_suffix(s)).and_then(|n| n.get(n.len().saturating_sub(15)..)).unwrap_or_default();
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
        BackupOutcome::Several(run) => {
            let ok = run.entries.iter().all(|e| e.outcome.is_ok());
            let files: Vec<_> = run
                .entries
                .iter()
                .map(|e| match &e.outcome {
                    Ok(d) => json!({"database": e.database, "success": true, "backup_file": d.file_name, "file_size_bytes": d.size_bytes}),
                    Err(f) => json!({"database": e.database, "success": false, "backup_file": f.file_name, "error": f.message}),
                })
                .collect();
            let message = if ok { "Backup succeeded" } else { "Backup failed for some databases" };
            respond(if ok { 200 } else { 500 }, json!({"success": ok, "message": message, "data": {"backups": files, "notes": run.notes}}))
        }
    }
}

pub fn schedule() -> BackupSchedule {
    BackupSchedule { crons: vec!["30 2 * * *".into()], timezone: "UTC".into(), description: "daily at 02:30 UTC".into(), drill_crons: vec![] }
}

/// `local_backups` holds only the backups `parse-name` recognised.
pub fn shape_status(s: &Status) -> HttpResponse {
    let mut ours: Vec<&BackupEntry> = s.local_backups.iter().collect();
    ours.sort_by_key(|b| std::cmp::Reverse(b.info.run_at));
    let total: u64 = ours.iter().map(|b| b.size_bytes).sum();
    let recent: Vec<_> =
        ours.iter().take(5).map(|b| json!({"filename": b.name, "size_mb": mb(b.size_bytes), "created_at": b.modified as f64})).collect();
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

/// Failures (and the first success after one) to Slack and email only; every backup pings
/// the heartbeat; drills are drilled by the host's default choice (the newest of each database).
pub fn shape_notification(config: &Config, event: &Event) -> Vec<Notification> {
    let dbs = if event.databases.is_empty() { config.databases.join(", ") } else { event.databases.join(", ") };
    let told = |subject: String, body: String| -> Vec<Notification> {
        [Channel::Slack, Channel::Email].into_iter().map(|channel| Notification { channel, subject: subject.clone(), body: body.clone() }).collect()
    };
    let ping = |subject: &str| Notification { channel: Channel::Heartbeat, subject: subject.to_string(), body: event.detail.clone() };
    let recovered = event.previous.as_ref().is_some_and(|p| !p.succeeded);
    match event.kind {
        EventKind::BackupStarted => vec![ping("backup started")],
        EventKind::BackupFailed => {
            let body = match &event.outcome {
                Some(BackupOutcome::Failed(f)) => f.message.clone(),
                Some(BackupOutcome::Several(run)) => run
                    .entries
                    .iter()
                    .filter_map(|e| Some(format!("{}: {}", e.database, e.outcome.as_ref().err()?.message)))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => event.detail.clone(),
            };
            let mut out = vec![ping("backup failed")];
            out.extend(told(format!("Backup of {dbs} failed"), body));
            out
        }
        EventKind::BackupSucceeded => {
            let mut out = vec![ping("backup succeeded")];
            if let (true, Some(BackupOutcome::Done(d))) = (recovered, &event.outcome) {
                out.extend(told(
                    format!("Backup of {dbs} recovered"),
                    format!("{} ({} MB) succeeded after a failed run", d.file_name, mb(d.size_bytes)),
                ));
            }
            out
        }
        EventKind::DrillFailed | EventKind::S3UploadFailed | EventKind::MissedSlot => {
            told(format!("ef-backup: {} ({dbs})", event.detail), event.detail.clone())
        }
        _ => Vec::new(),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::exports::euraflow::backup::policy::Guest;
    use super::types::{
        BackupEntry, BackupOutcome, BackupSchedule, Config, Context, Event, HttpResponse, NameInfo, NameRequest, Notification, RetentionDecision,
        Status,
    };

    struct Gfs;

    impl Guest for Gfs {
        fn schedule(_config: Config) -> BackupSchedule {
            super::schedule()
        }
        fn backup_name(_ctx: Context, _config: Config, request: NameRequest) -> String {
            super::backup_name(&request)
        }
        fn parse_name(config: Config, name: String) -> Option<NameInfo> {
            super::parse_name(&config, &name)
        }
        // GFS treats every store alike, and counts from the newest backup, not from `now`.
        fn select_expired(_ctx: Context, _config: Config, _store: String, backups: Vec<BackupEntry>) -> Vec<RetentionDecision> {
            super::select_expired(&backups)
        }
        fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
            super::shape_backup(&outcome)
        }
        fn shape_status(status: Status) -> HttpResponse {
            super::shape_status(&status)
        }
        fn shape_notification(_ctx: Context, config: Config, event: Event) -> Vec<Notification> {
            super::shape_notification(&config, &event)
        }
        // The newest dump of each database, every time the drill schedule fires.
        fn select_drill(_ctx: Context, _config: Config, backups: Vec<BackupEntry>) -> Vec<String> {
            let mut seen: Vec<String> = Vec::new();
            let mut out = Vec::new();
            for b in backups.iter().filter(|b| b.info.kind == super::BackupKind::Database) {
                if !seen.contains(&b.info.database) {
                    seen.push(b.info.database.clone());
                    out.push(b.name.clone());
                }
            }
            out
        }
    }

    super::export!(Gfs with_types_in super);
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::{BackupDone, BackupFailed, CopyOutcome, ErrorKind, Format, LastRun};

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_762_191_000; // 2025-11-03 17:30:00 UTC

    fn config() -> Config {
        Config { databases: vec!["euraflow".into()], globals_label: Some("euraflow".into()), backup_dir: "/b".into(), s3: None, settings: vec![] }
    }

    fn request(database: &str, kind: BackupKind, suffix: &str, run_at: i64) -> NameRequest {
        NameRequest { database: database.into(), kind, format: Format { suffix: suffix.into(), codec: "gzip".into(), encrypted: false }, run_at }
    }

    fn name(t: i64) -> String {
        backup_name(&request("euraflow", BackupKind::Database, ".sql.gz", t))
    }

    fn entry(c: &Config, name: String) -> BackupEntry {
        BackupEntry { info: parse_name(c, &name).expect("ours"), name, size_bytes: 1, modified: 0 }
    }

    fn expired(decisions: &[RetentionDecision]) -> Vec<&str> {
        decisions.iter().filter(|d| d.delete).map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        let c = config();
        assert_eq!(name(NOW), "euraflow_20251103_173000.sql.gz");
        let info = parse_name(&c, "euraflow_20251103_173000.sql.gz").unwrap();
        assert_eq!((info.database.as_str(), info.kind, info.run_at), ("euraflow", BackupKind::Database, NOW));
        assert_eq!(backup_name(&request("other db", BackupKind::Database, ".sql.gz", NOW)), "other-db_20251103_173000.sql.gz");
        let globals = backup_name(&request("euraflow", BackupKind::Globals, ".sql.zst.age", NOW));
        assert_eq!(globals, "euraflow_globals_20251103_173000.sql.zst.age");
        assert_eq!(parse_name(&c, &globals).map(|i| (i.kind, i.run_at)), Some((BackupKind::Globals, NOW)));
        for foreign in [
            "other-db_20251103_173000.sql.gz",
            "euraflow_backup_20251103_173000.sql.gz",
            "euraflow_20250230_173000.sql.gz",
            "euraflow_20251103_173000.sql.gz.partial",
            "euraflow_2025110_173000.sql.gz",
            "euraflow_20251103_173000.dump",
        ] {
            assert!(parse_name(&c, foreign).is_none(), "{foreign}");
        }
        let mut t = 946_684_800;
        while t < 1_900_000_000 {
            assert_eq!(parse_name(&c, &name(t)).map(|i| i.run_at), Some(t));
            t += 7_919;
        }
    }

    #[test]
    fn gfs_keeps_last_daily_weekly_monthly() {
        let c = config();
        // Twice a day for two years.
        let listing: Vec<BackupEntry> = (0..1460).map(|i| entry(&c, name(NOW - i * DAY / 2))).collect();
        let decisions = select_expired(&listing);
        assert_eq!(decisions.len(), listing.len(), "a decision for every backup");
        let expired = expired(&decisions);
        let kept: Vec<&BackupEntry> = listing.iter().filter(|b| !expired.contains(&b.name.as_str())).collect();
        // 14 last (7 days) + daily fills 7 more days + 8 weeks adds 6 + 12 months adds ~10.
        assert!(kept.len() >= 14 + 7 + 6 && kept.len() <= 14 + 14 + 8 + 12, "{}", kept.len());
        assert_eq!(kept[0].name, listing[0].name, "the newest survives");
        let oldest_kept = kept.iter().map(|b| b.info.run_at).min().unwrap();
        assert!(NOW - oldest_kept > 300 * DAY && NOW - oldest_kept < 366 * DAY, "monthly reach: {}", (NOW - oldest_kept) / DAY);
        let reason = |n: &str| decisions.iter().find(|d| d.name == n).unwrap().reason.as_str();
        assert_eq!(reason(&listing[0].name), "one of the 14 newest");
        assert_eq!(reason(&listing[20].name), "the newest of one of the last 14 days with backups");
        assert!(reason(&listing[1459].name).starts_with("gfs: not one of the 14 newest"), "{}", reason(&listing[1459].name));
    }

    #[test]
    fn all_old_keeps_the_last_ones() {
        let c = config();
        let listing: Vec<BackupEntry> = (0..30).map(|i| entry(&c, name(NOW - (1000 + i) * DAY))).collect();
        let decisions = select_expired(&listing);
        let expired = expired(&decisions);
        assert!(expired.len() <= 30 - KEEP_LAST);
        assert!(!expired.contains(&listing[0].name.as_str()));
    }

    /// Each database and the globals keep their own newest backups.
    #[test]
    fn each_database_on_its_own() {
        let c = Config { databases: vec!["euraflow".into(), "shop".into()], ..config() };
        let mut listing: Vec<BackupEntry> = (0..40).map(|i| entry(&c, name(NOW - i * DAY))).collect();
        listing.push(entry(&c, backup_name(&request("shop", BackupKind::Database, ".sql.gz", NOW - 1000 * DAY))));
        listing.push(entry(&c, backup_name(&request("euraflow", BackupKind::Globals, ".sql.gz", NOW - 1000 * DAY))));
        let decisions = select_expired(&listing);
        assert_eq!(decisions.len(), listing.len());
        let expired = expired(&decisions);
        assert!(!expired.is_empty());
        assert_eq!(
            (listing[40].name.as_str(), listing[41].name.as_str()),
            ("shop_20230207_173000.sql.gz", "euraflow_globals_20230207_173000.sql.gz")
        );
        for alone in &listing[40..] {
            assert!(!expired.contains(&alone.name.as_str()), "{}", alone.name);
            assert_eq!(decisions.iter().find(|d| d.name == alone.name).unwrap().reason, "one of the 14 newest");
        }
    }

    fn done(copies: Vec<CopyOutcome>) -> BackupOutcome {
        BackupOutcome::Done(BackupDone {
            file_name: "euraflow_20251103_173000.sql.gz".into(),
            path: "/b/euraflow_20251103_173000.sql.gz".into(),
            size_bytes: 12_345_678,
            started_at: NOW,
            finished_at: NOW,
            copies,
        })
    }

    #[test]
    fn english_responses_in_the_original_shape() {
        let r = shape_backup(&done(vec![]));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(v["message"], "Backup succeeded (local only: S3 is not configured)");
        assert_eq!(v["data"]["timestamp"], "20251103_173000");
        assert_eq!(v["data"]["file_size_mb"], 11.77);
        let failed = shape_backup(&done(vec![CopyOutcome { store: "s3".into(), result: Err("NoSuchBucket".into()) }]));
        let v: serde_json::Value = serde_json::from_str(&failed.body).unwrap();
        assert_eq!((v["data"]["s3_uploaded"].clone(), v["data"]["s3_error"].clone()), (json!(false), json!("NoSuchBucket")));
        assert_eq!(shape_backup(&BackupOutcome::Busy("x".into())).status, 409);
    }

    #[test]
    fn notifications() {
        let c = config();
        let run = |succeeded| LastRun { started_at: 0, finished_at: 1, succeeded, file_name: None, message: String::new() };
        let event = |kind, outcome, previous| Event {
            kind,
            at: NOW,
            detail: "detail".into(),
            databases: vec![],
            file_name: None,
            outcome: Some(outcome),
            previous,
            changes: vec![],
        };
        let channels = |n: &[Notification]| n.iter().map(|n| n.channel).collect::<Vec<_>>();
        let failed = BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: "pg_dump failed".into(), file_name: None });
        let n = shape_notification(&c, &event(EventKind::BackupFailed, failed, Some(run(true))));
        assert_eq!(channels(&n), [Channel::Heartbeat, Channel::Slack, Channel::Email]);
        assert_eq!((n[1].subject.as_str(), n[1].body.as_str()), ("Backup of euraflow failed", "pg_dump failed"));
        let n = shape_notification(&c, &event(EventKind::BackupSucceeded, done(vec![]), Some(run(false))));
        assert_eq!(n[1].subject, "Backup of euraflow recovered");
        assert_eq!(channels(&shape_notification(&c, &event(EventKind::BackupSucceeded, done(vec![]), Some(run(true))))), [Channel::Heartbeat]);
        assert_eq!(channels(&shape_notification(&c, &event(EventKind::BackupSucceeded, done(vec![]), None))), [Channel::Heartbeat]);
    }
}

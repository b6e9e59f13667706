//! `ef-backup policy check`: load a component and exercise every export with sample inputs,
//! so a broken policy is caught before it is deployed.

use std::fmt::Write as _;

use ef_backup_core::config::notify::Channel;

use super::{
    BackupDone, BackupEntry, BackupFailed, BackupOutcome, ErrorKind, Event, EventKind, LastRun, Policy, PolicyConfig, PolicyError, S3Outcome, Status,
    Target, WasmPolicy,
};

const HOUR: i64 = 3600;

/// What a check found, ready to print.
#[derive(Debug)]
pub struct Report {
    pub lines: Vec<String>,
}

/// Runs every export once (retention for both targets) and checks the answers for consistency.
/// An error-level log of the policy fails the check: it is how a policy says it refuses its
/// settings (an invalid `EF__POLICY_*` value).
pub fn run(policy: &WasmPolicy, config: &PolicyConfig, now: i64) -> Result<Report, PolicyError> {
    // `EF__DB_NAMES=*` names its databases only once the server has listed them: the check
    // samples with the database a name is asked for, so the policy can recognise it.
    let mut sample = config.clone();
    if sample.databases.is_empty() {
        sample.databases = vec![sample.database.clone()];
    }
    let config = &sample;
    let (report, errors) = policy.collect_error_logs(|| exercise(policy, config, now));
    if errors.is_empty() {
        return report;
    }
    // Each call parses the settings again, so the same message comes several times.
    let mut messages: Vec<String> = Vec::new();
    for m in errors {
        let m = if m.contains("EF__POLICY_") { m } else { format!("an EF__POLICY_* setting was rejected by the policy: {m}") };
        if !messages.contains(&m) {
            messages.push(m);
        }
    }
    Err(PolicyError::ErrorLogged { path: policy.info().path.clone(), messages: messages.join("; ") })
}

fn exercise(policy: &WasmPolicy, config: &PolicyConfig, now: i64) -> Result<Report, PolicyError> {
    let info = policy.info();
    let mut lines = vec![
        format!("policy:      {}", info.path.display()),
        format!("sha256:      {}", info.sha256),
        format!("size:        {} bytes", info.size_bytes),
        format!("wit package: euraflow:backup@{}", info.wit_version),
    ];

    let schedule = policy.schedule(config)?;
    lines.push(format!("schedule:    {} ({}) — {}", schedule.crons.join(" | "), schedule.timezone, schedule.description));
    // Contract 0.2 has room for restore drills; this host checks them but does not run them yet.
    for cron in &schedule.drill_crons {
        ef_backup_core::policy::validate_cron(cron).map_err(|e| policy.bad("schedule", format!("drill cron {cron:?}: {e}")))?;
    }
    if !schedule.drill_crons.is_empty() {
        lines.push(format!("drills:      {} (this host does not run drills yet)", schedule.drill_crons.join(" | ")));
    }

    let name = policy.backup_name(config, now)?;
    lines.push(format!("sample name: {name}"));
    match policy.parse_name(config, &name)? {
        Some(_) => {}
        None => {
            return Err(policy
                .bad("parse-name", format!("does not recognise the policy's own name {name:?}: listing and retention would ignore every backup")))
        }
    }

    // Twice a day for 60 days, plus a name no policy should claim.
    let mut listing = Vec::new();
    for i in 0..120 {
        let t = now - i * 12 * HOUR;
        listing.push(BackupEntry { name: policy.backup_name(config, t)?, size_bytes: 1 << 20, modified: t });
    }
    listing.push(BackupEntry { name: "not-a-backup-of-this-policy.sql.gz".into(), size_bytes: 1, modified: now - 400 * 24 * HOUR });
    for target in [Target::Local, Target::S3] {
        let expired = policy.select_expired(&listing, now, target, config)?;
        lines.push(format!(
            "retention {:<5} of {} backups 12 h apart, keeps {}, deletes {}",
            match target {
                Target::Local => "local:",
                Target::S3 => "s3:",
            },
            listing.len() - 1,
            listing.len() - 1 - expired.len(),
            expired.len()
        ));
    }

    let done = |s3: S3Outcome| {
        BackupOutcome::Done(BackupDone {
            file_name: name.clone(),
            path: format!("{}/{name}", config.backup_dir),
            size_bytes: 12_345_678,
            started_at: now,
            finished_at: now + 10,
            s3,
        })
    };
    let outcomes = [
        ("success, S3 uploaded", done(S3Outcome::Uploaded(format!("s3://bucket/{name}")))),
        ("success, S3 off", done(S3Outcome::Disabled)),
        ("success, S3 failed", done(S3Outcome::Failed("sample S3 error".into()))),
        ("failure", BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: "sample error".into(), file_name: Some(name.clone()) })),
        ("busy", BackupOutcome::Busy(name.clone())),
    ];
    let mut responses = String::new();
    for (label, outcome) in &outcomes {
        let r = policy.shape_backup_response(outcome)?;
        let success_like = matches!(outcome, BackupOutcome::Done(_));
        if success_like != (200..300).contains(&r.status) {
            return Err(policy.bad(
                "shape-backup-response",
                format!("{label}: HTTP {} (a {} must be {})", r.status, label, if success_like { "2xx" } else { "non-2xx" }),
            ));
        }
        let _ = write!(responses, "{}{label} → {}", if responses.is_empty() { "" } else { ", " }, r.status);
    }
    lines.push(format!("responses:   {responses}"));

    let status = Status {
        now,
        config: config.clone(),
        policy: policy.loaded(),
        local_backups: listing[..14].to_vec(),
        recognised: policy.recognise(config, &listing[..14])?,
        last_run: None,
        next_run: Some(now + 12 * HOUR),
        running: None,
        last_drill: None,
        drills: "on: every day".into(),
        recent_runs: Vec::new(),
    };
    let r = policy.shape_status(&status)?;
    lines.push(format!("status:      {} ({} bytes of JSON)", r.status, r.body.len()));

    if policy.info().wit_version != "0.1.0" {
        let ran = |ok: bool| LastRun {
            started_at: now - 12 * HOUR,
            finished_at: now - 12 * HOUR + 10,
            succeeded: ok,
            file_name: None,
            message: String::new(),
        };
        let event = |kind: EventKind, outcome: &BackupOutcome, previous: Option<LastRun>| Event {
            outcome: Some(outcome.clone()),
            previous,
            databases: config.databases.clone(),
            ..Event::new(kind, now, "a sample event of `policy check`")
        };
        let events = [
            ("failure", event(EventKind::BackupFailed, &outcomes[3].1, Some(ran(true)))),
            ("recovered", event(EventKind::BackupSucceeded, &outcomes[1].1, Some(ran(false)))),
            ("success", event(EventKind::BackupSucceeded, &outcomes[1].1, Some(ran(true)))),
            ("drill failure", Event { databases: config.databases.clone(), ..Event::new(EventKind::DrillFailed, now, "sample") }),
        ];
        let mut shaped = Vec::new();
        for (label, event) in events {
            let m = policy.shape_notification(config, now, &event)?.unwrap_or_default();
            if label.contains("failure") && !m.iter().any(|m| m.channel != Channel::Heartbeat) {
                return Err(policy.bad("shape-notification", format!("a {label} sends no message: operators would never hear of it")));
            }
            let to: Vec<&str> = m.iter().map(|m| m.channel.as_str()).collect();
            shaped.push(format!("{label} → {}", if to.is_empty() { "none".to_string() } else { to.join("+") }));
        }
        lines.push(format!("notices:     {}", shaped.join(", ")));
    }
    Ok(Report { lines })
}

/// Time per backup spent in the policy after load: the calls one backup makes (name,
/// retention for both targets over `listing_len` entries, response), each in a fresh
/// instance as in production. Returns (mean, max) per backup and the calls per backup.
pub fn bench(
    policy: &WasmPolicy,
    config: &PolicyConfig,
    now: i64,
    rounds: usize,
    listing_len: usize,
) -> Result<(std::time::Duration, std::time::Duration, usize), PolicyError> {
    let listing: Vec<BackupEntry> = (0..listing_len as i64)
        .map(|i| Ok(BackupEntry { name: policy.backup_name(config, now - i * 12 * HOUR)?, size_bytes: 1 << 20, modified: now }))
        .collect::<Result<_, PolicyError>>()?;
    let mut total = std::time::Duration::ZERO;
    let mut max = std::time::Duration::ZERO;
    for _ in 0..rounds.max(1) {
        let t = std::time::Instant::now();
        let name = policy.backup_name(config, now)?;
        policy.select_expired(&listing, now, Target::Local, config)?;
        policy.select_expired(&listing, now, Target::S3, config)?;
        let done = BackupOutcome::Done(BackupDone {
            file_name: name.clone(),
            path: name,
            size_bytes: 1,
            started_at: now,
            finished_at: now,
            s3: S3Outcome::Disabled,
        });
        policy.shape_backup_response(&done)?;
        let took = t.elapsed();
        total += took;
        max = max.max(took);
    }
    Ok((total / rounds.max(1) as u32, max, 4))
}

//! What a finished run tells the notification channels: the events of a backup report (and a
//! drill's), with the previous run for "recovered" messages and, for a good backup, how it
//! compares with the previous good backup of each database. Pure functions of what the run
//! found; the host hands the events to the policy to shape and to the notifier to deliver.

use std::path::Path;

use crate::engine::BackupReport;
use crate::manifest::{manifest_name, Manifest};
use crate::model::{BackupEntry, RunEntry};
use crate::model::{BackupKind, BackupOutcome, Event, EventKind, LastRun, NameInfo, S3Outcome, SizeChange};

/// The databases a run's outcome is about, in run order: its database dumps (the globals'
/// label only when the run wrote nothing else, as it names no database of the operator's).
fn databases(outcome: &BackupOutcome, entries: &[RunEntry], fallback: &[String]) -> Vec<String> {
    let entries: &[RunEntry] = match (entries.is_empty(), outcome) {
        (false, _) => entries,
        (true, BackupOutcome::Several(run)) => &run.entries,
        _ => return fallback.to_vec(),
    };
    let dumps: Vec<String> = entries.iter().filter(|e| e.kind == BackupKind::Database).map(|e| e.database.clone()).collect();
    if dumps.is_empty() {
        entries.iter().map(|e| e.database.clone()).collect()
    } else {
        dumps
    }
}

/// The events of a finished backup run: succeeded or failed (with `previous`, the run before
/// it, and `changes`), an S3 upload that failed, retention skipped for the clock. Nothing for
/// a run that did not start (busy).
pub fn of_backup(report: &BackupReport, at: i64, configured: &[String], previous: Option<LastRun>, changes: Vec<SizeChange>) -> Vec<Event> {
    let outcome = &report.outcome;
    let dbs = databases(outcome, &report.entries, configured);
    let event = |kind, detail: String| Event { databases: dbs.clone(), outcome: Some(outcome.clone()), ..Event::new(kind, at, detail) };
    let mut events = Vec::new();
    let done: Vec<&crate::model::BackupDone> = match outcome {
        BackupOutcome::Done(d) => vec![d],
        BackupOutcome::Several(run) => run.entries.iter().filter_map(|e| e.outcome.as_ref().ok()).collect(),
        BackupOutcome::Failed(_) | BackupOutcome::Busy(_) => Vec::new(),
    };
    match outcome {
        BackupOutcome::Busy(_) => return events,
        BackupOutcome::Failed(f) => {
            events.push(Event { file_name: f.file_name.clone(), previous, ..event(EventKind::BackupFailed, f.message.clone()) });
        }
        BackupOutcome::Several(run) if !run.succeeded() => {
            let failed: Vec<String> = run
                .entries
                .iter()
                .filter_map(|e| Some(format!("{} ({}): {}", e.database, crate::policy::kind_id(e.kind), e.outcome.as_ref().err()?.message)))
                .collect();
            let detail = format!("{} of {} files failed: {}", failed.len(), run.entries.len(), failed.join("; "));
            events.push(Event { previous, ..event(EventKind::BackupFailed, detail) });
        }
        BackupOutcome::Done(d) => {
            let detail = format!("{} ({} bytes) written in {:.1} s", d.file_name, d.size_bytes, report.elapsed.as_secs_f64());
            events.push(Event { file_name: Some(d.file_name.clone()), previous, changes, ..event(EventKind::BackupSucceeded, detail) });
        }
        BackupOutcome::Several(run) => {
            let detail = format!("{} files written in {:.1} s", run.entries.len(), report.elapsed.as_secs_f64());
            events.push(Event { previous, changes, ..event(EventKind::BackupSucceeded, detail) });
        }
    }
    for d in done {
        if let S3Outcome::Failed(e) = &d.s3 {
            events.push(Event { file_name: Some(d.file_name.clone()), ..event(EventKind::S3UploadFailed, e.clone()) });
        }
    }
    for (place, r) in [("local", &report.retention), ("S3", &report.s3_retention)] {
        if r.clock_behind {
            let detail = format!(
                "{place} retention deleted nothing: the clock is earlier than the last recorded run ({})",
                r.error.as_deref().unwrap_or("check the host's time")
            );
            events.push(event(EventKind::RetentionSkipped, detail));
        }
    }
    events
}

/// Total rows of a backup's tables, from its manifest beside it (None without one, or when its
/// content is sealed: an encrypted backup's row counts are not readable without the key).
fn rows_of(dir: &Path, name: &str) -> Option<u64> {
    let bytes = std::fs::read(dir.join(manifest_name(name))).ok()?;
    let manifest = Manifest::parse(&bytes).ok()?;
    Some(manifest.content?.tables.iter().map(|t| t.rows).sum())
}

/// For each database dump the run wrote, its size and rows against the newest earlier dump of
/// the same database among `recognised` (the backup directory, after the run).
pub fn size_changes(report: &BackupReport, dir: &Path, recognised: &[(BackupEntry, NameInfo)]) -> Vec<SizeChange> {
    let written: Vec<(String, &crate::model::BackupDone)> = match &report.outcome {
        BackupOutcome::Done(d) => {
            recognised.iter().find(|(b, _)| b.name == d.file_name).map(|(_, i)| vec![(i.database.clone(), d)]).unwrap_or_default()
        }
        BackupOutcome::Several(run) => run
            .entries
            .iter()
            .filter(|e| e.kind == BackupKind::Database)
            .filter_map(|e| Some((e.database.clone(), e.outcome.as_ref().ok()?)))
            .collect(),
        _ => Vec::new(),
    };
    let mut changes = Vec::new();
    for (database, done) in written {
        let Some((_, this)) = recognised.iter().find(|(b, _)| b.name == done.file_name) else { continue };
        let previous = recognised
            .iter()
            .filter(|(b, i)| i.database == database && i.kind == BackupKind::Database && b.name != done.file_name && i.run_at < this.run_at)
            .max_by_key(|(b, i)| (i.run_at, b.name.clone()));
        if let Some((prev, _)) = previous {
            changes.push(SizeChange {
                database,
                previous_bytes: prev.size_bytes,
                bytes: done.size_bytes,
                previous_rows: rows_of(dir, &prev.name),
                rows: rows_of(dir, &done.file_name),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackupDone, BackupFailed, BackupRun, ErrorKind};

    fn done(name: &str, size: u64, s3: S3Outcome) -> BackupDone {
        BackupDone { file_name: name.into(), path: format!("/b/{name}"), size_bytes: size, started_at: 1, finished_at: 2, s3 }
    }

    fn report(outcome: BackupOutcome) -> BackupReport {
        BackupReport::only(outcome, std::time::Duration::from_secs(3))
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_run_tells_what_happened_and_nothing_for_busy() {
        let dbs = vec!["app".to_string()];
        let ok = report(BackupOutcome::Done(done("app_1.sql.gz", 10, S3Outcome::Disabled)));
        let e = of_backup(&ok, 5, &dbs, None, Vec::new());
        assert_eq!(kinds(&e), [EventKind::BackupSucceeded]);
        assert_eq!((e[0].databases.clone(), e[0].file_name.as_deref(), e[0].at), (dbs.clone(), Some("app_1.sql.gz"), 5));

        let s3 = report(BackupOutcome::Done(done("app_1.sql.gz", 10, S3Outcome::Failed("NoSuchBucket".into()))));
        let e = of_backup(&s3, 5, &dbs, None, Vec::new());
        assert_eq!(kinds(&e), [EventKind::BackupSucceeded, EventKind::S3UploadFailed]);
        assert_eq!(e[1].detail, "NoSuchBucket");

        let failed =
            report(BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: "password authentication failed".into(), file_name: None }));
        let previous = LastRun { started_at: 1, finished_at: 2, succeeded: true, file_name: None, message: "ok".into() };
        let e = of_backup(&failed, 5, &dbs, Some(previous.clone()), Vec::new());
        assert_eq!(kinds(&e), [EventKind::BackupFailed]);
        assert_eq!((e[0].detail.as_str(), e[0].previous.as_ref()), ("password authentication failed", Some(&previous)));

        assert!(of_backup(&report(BackupOutcome::Busy("x".into())), 5, &dbs, None, Vec::new()).is_empty());

        let mut skipped = report(BackupOutcome::Done(done("app_1.sql.gz", 10, S3Outcome::Disabled)));
        skipped.retention.clock_behind = true;
        assert_eq!(kinds(&of_backup(&skipped, 5, &dbs, None, Vec::new())), [EventKind::BackupSucceeded, EventKind::RetentionSkipped]);
    }

    #[test]
    fn a_run_of_several_fails_when_one_file_failed() {
        let entries = vec![
            RunEntry { database: "a".into(), kind: BackupKind::Database, outcome: Ok(done("a_1.sql.gz", 1, S3Outcome::Disabled)) },
            RunEntry {
                database: "b".into(),
                kind: BackupKind::Database,
                outcome: Err(BackupFailed { kind: ErrorKind::Dump, message: "boom".into(), file_name: None }),
            },
        ];
        let run = BackupRun { started_at: 1, finished_at: 2, entries: entries.clone(), notes: Vec::new() };
        let mut r = report(BackupOutcome::Several(run));
        r.entries = entries;
        let e = of_backup(&r, 5, &[], None, Vec::new());
        assert_eq!(kinds(&e), [EventKind::BackupFailed]);
        assert_eq!(e[0].databases, ["a", "b"]);
        // The globals of a run are no database of the operator's: not named.
        let mut with_globals = r.entries.clone();
        with_globals
            .insert(0, RunEntry { database: "pg42-ab".into(), kind: BackupKind::Globals, outcome: Ok(done("g.sql.gz", 1, S3Outcome::Disabled)) });
        r.entries = with_globals;
        assert_eq!(of_backup(&r, 5, &[], None, Vec::new())[0].databases, ["a", "b"]);
        assert_eq!(e[0].detail, "1 of 2 files failed: b (database): boom");
    }

    #[test]
    fn changes_compare_with_the_previous_dump_of_the_same_database() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |name: &str, size: u64, db: &str, run_at: i64| {
            (BackupEntry { name: name.into(), size_bytes: size, modified: run_at }, NameInfo::dump(db, run_at))
        };
        let recognised = vec![
            entry("app_3.sql.gz", 400, "app", 3),
            entry("app_2.sql.gz", 1000, "app", 2),
            entry("app_1.sql.gz", 2000, "app", 1),
            entry("other_2.sql.gz", 9, "other", 2),
        ];
        let manifest = |rows: u64| {
            serde_json::json!({"manifest_version": 1, "backup": "x", "database": "app", "kind": "database", "format": "gzip", "level": 8,
                "recipients": [], "server_version": null, "pg_dump_version": null, "ef_backup_version": "0", "dump_bytes": 1,
                "stored_bytes": 1, "sha256": "00", "started": "", "finished": "",
                "content": {"copy_settings": {}, "tables": [{"schema": "public", "name": "t", "rows": rows, "rows_xxh3_sum": "0"}],
                    "sequences": [], "large_objects": []}})
            .to_string()
        };
        std::fs::write(dir.path().join(manifest_name("app_2.sql.gz")), manifest(100)).unwrap();
        std::fs::write(dir.path().join(manifest_name("app_3.sql.gz")), manifest(7)).unwrap();
        let r = report(BackupOutcome::Done(done("app_3.sql.gz", 400, S3Outcome::Disabled)));
        let changes = size_changes(&r, dir.path(), &recognised);
        assert_eq!(changes, [SizeChange { database: "app".into(), previous_bytes: 1000, bytes: 400, previous_rows: Some(100), rows: Some(7) }]);
        // The first backup of a database has nothing to compare with.
        let first = report(BackupOutcome::Done(done("app_1.sql.gz", 2000, S3Outcome::Disabled)));
        assert!(size_changes(&first, dir.path(), &recognised).is_empty());
    }
}

//! The engine against a dump source of the test's own, the real local store in a temporary
//! directory, an in-memory mirror and a native policy: everything after pg_dump, without
//! PostgreSQL. (The end-to-end tests run the same paths with pg_dump and S3.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::model::{BackupOutcome, ErrorKind, S3Outcome, Target};
use crate::policy::native::NativePolicy;
use crate::store::memory::MemoryStore;
use crate::store::BackupStore as _;

const NOW: i64 = 1_762_191_000;
const DAY: i64 = 86_400;

fn config(dir: &Path) -> Config {
    let vars: BTreeMap<String, String> = [
        ("EF__BACKUP_DIR", dir.join("backups").display().to_string()),
        ("EF__STATE_DIR", dir.join("state").display().to_string()),
        ("EF__DB_NAME", "app".to_string()),
        ("EF__BACKUP_THREADS", "2".to_string()),
        // The host keeps at least this many whatever the policy says; 1 lets the tests see the
        // policy's keep count at work.
        ("EF__BACKUP_MIN_KEEP", "1".to_string()),
        ("EF__BACKUP_GLOBALS", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Config::from_vars(&vars, dir).unwrap()
}

/// Writes `data` in pieces, then fails with `fail` if set (after `fail_after` bytes).
struct Scripted {
    data: Vec<u8>,
    fail_after: Option<usize>,
}

impl DumpSource for Scripted {
    fn dump(&self, cancel: &Arc<AtomicBool>, out: &mut dyn Write) -> Result<dump::DumpStats, DumpError> {
        let end = self.fail_after.unwrap_or(self.data.len());
        for piece in self.data[..end].chunks(100_000) {
            if cancel.load(Ordering::SeqCst) {
                return Err(DumpError::Cancelled);
            }
            out.write_all(piece).map_err(DumpError::Write)?;
        }
        match self.fail_after {
            Some(_) => Err(DumpError::Failed { tool: "pg_dump", status: "exited with status 1".into(), stderr: "connection lost".into() }),
            None => {
                Ok(dump::DumpStats { bytes: self.data.len() as u64, session: [("timezone".to_string(), "UTC".to_string())].into_iter().collect() })
            }
        }
    }
}

/// The server of the tests: what its survey says, and a [`Scripted`] dump of every file (a
/// database listed in `failing` fails half-way).
struct FakeServer {
    survey: Survey,
    data: Vec<u8>,
    fail_after: Option<usize>,
    failing: Vec<String>,
    /// Set when a source was asked for (pg_dump looked for).
    asked: AtomicBool,
}

impl FakeServer {
    fn new(data: Vec<u8>, fail_after: Option<usize>) -> FakeServer {
        let survey = Survey { databases: Vec::new(), system_identifier: Some("42".into()), can_read_passwords: true };
        FakeServer { survey, data, fail_after, failing: Vec::new(), asked: AtomicBool::new(false) }
    }
}

impl Server for FakeServer {
    fn survey(&self, _: bool) -> Result<Survey, BackupError> {
        Ok(self.survey.clone())
    }

    fn source(&self, file: &NameInfo, _: bool, _: &[String]) -> Result<Box<dyn DumpSource + '_>, BackupError> {
        self.asked.store(true, Ordering::SeqCst);
        let fail_after = if self.failing.contains(&file.database) { Some(self.data.len() / 2) } else { self.fail_after };
        Ok(Box::new(Scripted { data: self.data.clone(), fail_after }))
    }
}

fn dump_text() -> Vec<u8> {
    let mut d = b"--\n-- PostgreSQL database dump\n--\n\nCOPY public.t (a) FROM stdin;\n".to_vec();
    for i in 0..200_000 {
        d.extend_from_slice(format!("{i}\trow {i}\n").as_bytes());
    }
    d.extend_from_slice(b"\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n");
    d
}

struct Run {
    _dir: tempfile::TempDir,
    config: Config,
    policy: NativePolicy,
    mirror: MemoryStore,
}

impl Run {
    fn new(keep: usize) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        Run { config, _dir: dir, policy: NativePolicy::keeping(keep), mirror: MemoryStore::new(Target::S3) }
    }

    fn local(&self) -> LocalStore {
        LocalStore::new(&self.config.backup_dir)
    }

    /// Puts an earlier backup of this deployment (or any name) in both stores.
    fn earlier(&self, name: &str, at: i64) {
        let local = self.local();
        local.ensure_dir().unwrap();
        std::fs::write(local.path_of(name), b"old").unwrap();
        self.mirror.put(name, b"old", at);
    }

    fn backup(&self, source: Scripted, now: i64) -> BackupReport {
        self.backup_from(&FakeServer::new(source.data, source.fail_after), now)
    }

    fn backup_from(&self, server: &FakeServer, now: i64) -> BackupReport {
        let name = self.policy.backup_name(&self.config.policy, now);
        let opts = BackupOptions { now, ..Default::default() };
        run_from(&self.config, &self.policy, server, Some(&self.mirror as &dyn Mirror), name, opts)
    }

    fn local_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(&self.config.backup_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }
}

fn decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::codec::Format::GZIP.decoder(bytes, &crate::codec::Keys::none()).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn a_run_writes_the_same_backup_to_every_store_and_applies_retention_in_each() {
    let run = Run::new(2);
    run.earlier(&format!("app_backup_{}.sql.gz", NOW - 2 * DAY), NOW - 2 * DAY);
    run.earlier(&format!("app_backup_{}.sql.gz", NOW - DAY), NOW - DAY);
    run.earlier("other_backup_1.sql.gz", NOW - 9 * DAY);
    let data = dump_text();
    let report = run.backup(Scripted { data: data.clone(), fail_after: None }, NOW);

    let BackupOutcome::Done(done) = &report.outcome else { panic!("{:?}", report.outcome) };
    let name = format!("app_backup_{NOW}.sql.gz");
    assert_eq!(done.file_name, name);
    let local = std::fs::read(run.local().path_of(&name)).unwrap();
    assert_eq!(done.size_bytes, local.len() as u64);
    assert!(decoded(&local) == data, "the local file decodes to the dump");
    assert_eq!(run.mirror.bytes(&name).as_deref(), Some(&local[..]), "the mirror holds the same bytes");
    assert_eq!(done.s3, S3Outcome::Uploaded(format!("memory://s3/{name}")));
    assert_eq!(report.dump_bytes, data.len() as u64);
    // keep 2: the oldest of ours goes in both stores; the foreign name stays.
    let oldest = format!("app_backup_{}.sql.gz", NOW - 2 * DAY);
    assert_eq!(report.retention.deleted, std::slice::from_ref(&oldest));
    assert_eq!(report.s3_retention.deleted, std::slice::from_ref(&oldest));
    assert!(!run.local_names().contains(&oldest));
    assert!(!run.mirror.names().contains(&oldest));
    assert!(run.local_names().contains(&"other_backup_1.sql.gz".to_string()));
    assert!(run.mirror.names().contains(&"other_backup_1.sql.gz".to_string()));
    assert!(run.mirror.open_uploads().is_empty());
}

#[test]
fn a_dump_that_fails_half_way_leaves_no_file_aborts_the_upload_and_deletes_nothing() {
    let run = Run::new(1);
    run.earlier(&format!("app_backup_{}.sql.gz", NOW - 2 * DAY), NOW - 2 * DAY);
    run.earlier(&format!("app_backup_{}.sql.gz", NOW - DAY), NOW - DAY);
    let before_local = run.local_names();
    let before_mirror = run.mirror.names();
    let report = run.backup(Scripted { data: dump_text(), fail_after: Some(1_500_000) }, NOW);

    let BackupOutcome::Failed(failed) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert_eq!(failed.kind, ErrorKind::Dump);
    assert!(failed.message.contains("connection lost"), "{}", failed.message);
    assert_eq!(failed.file_name.as_deref(), Some(format!("app_backup_{NOW}.sql.gz").as_str()));
    assert_eq!(run.local_names(), before_local, "no new file, no .partial, nothing deleted");
    assert_eq!(run.mirror.names(), before_mirror);
    assert_eq!(run.mirror.aborted_uploads(), [format!("app_backup_{NOW}.sql.gz")]);
    assert!(run.policy.asked.lock().unwrap().is_empty(), "retention was never asked");
}

#[test]
fn a_failed_upload_keeps_the_local_backup_and_spares_the_mirrors_old_copies() {
    let run = Run::new(1);
    let old = format!("app_backup_{}.sql.gz", NOW - DAY);
    run.earlier(&old, NOW - DAY);
    run.mirror.fail_uploads.store(true, Ordering::SeqCst);
    let report = run.backup(Scripted { data: dump_text(), fail_after: None }, NOW);

    let BackupOutcome::Done(done) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(matches!(&done.s3, S3Outcome::Failed(e) if e.contains("test switch")), "{:?}", done.s3);
    assert!(run.local_names().contains(&done.file_name));
    // Locally the new backup replaces the old one; in the mirror the old copy is all there is.
    assert_eq!(report.retention.deleted, std::slice::from_ref(&old));
    assert!(report.s3_retention.deleted.is_empty());
    assert_eq!(run.mirror.names(), [old]);
    let asked: Vec<Target> = run.policy.asked.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(asked, [Target::Local], "the mirror's retention is not even asked");
}

/// Issue 16: a good run leaves a manifest (signed when a key is set) beside the backup in both
/// stores, recording the stored bytes and the dump's rows; a failed run leaves none.
#[test]
fn a_good_run_writes_a_signed_manifest_in_both_stores_and_a_failed_one_none() {
    use sha2::Digest;
    let mut run = Run::new(3);
    let (key, public) = crate::sign::tests::key_pair();
    run.config.signing_key = Some(Arc::new(key));
    let report = run.backup(Scripted { data: dump_text(), fail_after: None }, NOW);
    let BackupOutcome::Done(done) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let name = &done.file_name;
    let manifest_name = crate::manifest::manifest_name(name);
    let local = std::fs::read(run.local().path_of(&manifest_name)).unwrap();
    assert_eq!(run.mirror.bytes(&manifest_name).as_deref(), Some(&local[..]), "the same manifest in the mirror");
    let m = crate::manifest::Manifest::parse(&local).unwrap();
    let stored = std::fs::read(run.local().path_of(name)).unwrap();
    assert_eq!(m.sha256, crate::util::hex(&sha2::Sha256::digest(&stored)));
    assert_eq!((m.stored_bytes, m.dump_bytes), (stored.len() as u64, dump_text().len() as u64));
    let content = m.content.as_ref().unwrap();
    assert_eq!((content.tables.len(), content.tables[0].rows), (1, 200_000));
    assert_eq!(content.copy_settings["timezone"], "UTC");
    let signature = std::fs::read_to_string(run.local().path_of(&crate::sign::signature_name(&manifest_name))).unwrap();
    assert!(crate::sign::TrustedKeys::parse(&public).unwrap().check(&local, &signature).is_ok());
    assert!(run.mirror.bytes(&crate::sign::signature_name(&manifest_name)).is_some());
    let listed = run.mirror.list_backups().unwrap();
    assert!(listed.iter().all(|b| b.name == *name && b.manifest), "companions are not listed as backups: {listed:?}");

    let before = run.local_names();
    let failed = run.backup(Scripted { data: dump_text(), fail_after: Some(1000) }, NOW + 60);
    assert!(matches!(failed.outcome, BackupOutcome::Failed(_)));
    assert_eq!(run.local_names(), before, "no manifest of a failed run");
}

#[test]
fn a_run_the_policy_cannot_name_touches_nothing() {
    let run = Run::new(1);
    run.earlier(&format!("app_backup_{}.sql.gz", NOW - DAY), NOW - DAY);
    run.policy.fail_naming.store(true, Ordering::SeqCst);
    let before = run.local_names();
    let server = FakeServer::new(Vec::new(), None);
    let report = run.backup_from(&server, NOW);

    let BackupOutcome::Failed(failed) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert_eq!(failed.kind, ErrorKind::Policy);
    assert_eq!(failed.file_name, None);
    assert!(!server.asked.load(Ordering::SeqCst));
    assert_eq!(run.local_names(), before);
    assert!(run.mirror.aborted_uploads().is_empty() && run.mirror.open_uploads().is_empty());
}

#[test]
fn a_retention_answer_the_policy_cannot_give_deletes_nothing_and_is_reported() {
    let run = Run::new(1);
    let old = format!("app_backup_{}.sql.gz", NOW - DAY);
    run.earlier(&old, NOW - DAY);
    run.policy.fail_retention.store(true, Ordering::SeqCst);
    let report = run.backup(Scripted { data: dump_text(), fail_after: None }, NOW);

    assert!(matches!(report.outcome, BackupOutcome::Done(_)), "{:?}", report.outcome);
    assert!(report.retention.deleted.is_empty() && report.s3_retention.deleted.is_empty());
    assert!(report.retention.error.as_deref().is_some_and(|e| e.contains("test switch")), "{:?}", report.retention);
    assert!(run.local_names().contains(&old) && run.mirror.names().contains(&old));
}

#[test]
fn a_cancelled_run_leaves_nothing_behind() {
    let run = Run::new(1);
    let cancel = Arc::new(AtomicBool::new(true));
    let name = run.policy.backup_name(&run.config.policy, NOW);
    let opts = BackupOptions { now: NOW, cancel, ..Default::default() };
    let report = run_from(&run.config, &run.policy, &FakeServer::new(dump_text(), None), Some(&run.mirror), name, opts);

    assert!(matches!(report.outcome, BackupOutcome::Failed(_)), "{:?}", report.outcome);
    assert!(run.local_names().is_empty(), "{:?}", run.local_names());
    assert!(run.mirror.names().is_empty());
    assert_eq!(run.mirror.aborted_uploads().len(), 1);
}

fn config_with(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let mut vars: BTreeMap<String, String> = [
        ("EF__BACKUP_DIR", dir.join("backups").display().to_string()),
        ("EF__STATE_DIR", dir.join("state").display().to_string()),
        ("EF__BACKUP_THREADS", "2".to_string()),
        ("EF__BACKUP_MIN_KEEP", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(&vars, dir).unwrap()
}

/// Several databases and the globals: the globals first, each file on its own; the database
/// whose dump fails keeps every old backup, the others' old ones go.
#[test]
fn a_run_of_several_databases_fails_only_the_failing_ones_file_and_keeps_its_old_backups() {
    let mut run = Run::new(1);
    run.config = config_with(run._dir.path(), &[("EF__DB_NAMES", "shop,crm,hr"), ("EF__BACKUP_PARALLEL_DBS", "2")]);
    for db in ["shop", "crm", "hr"] {
        run.earlier(&format!("{db}_backup_{}.sql.gz", NOW - DAY), NOW - DAY);
    }
    run.earlier(&format!("crm_backup_{}.sql.gz", NOW - 2 * DAY), NOW - 2 * DAY);
    // The globals' label: the server's identifier (42) and this deployment's selection key.
    let label = run.config.policy_resolved(Vec::new(), Some("42")).globals_label.unwrap();
    run.earlier(&format!("{label}_globals_{}.sql.gz", NOW - DAY), NOW - DAY);
    let mut server = FakeServer::new(dump_text(), None);
    server.failing = vec!["crm".into()];
    let report = run.backup_from(&server, NOW);

    let BackupOutcome::Several(r) = &report.outcome else { panic!("{:?}", report.outcome) };
    let got: Vec<(&str, BackupKind, bool)> = r.entries.iter().map(|e| (e.database.as_str(), e.kind, e.outcome.is_ok())).collect();
    assert_eq!(
        got,
        [
            (label.as_str(), BackupKind::Globals, true),
            ("shop", BackupKind::Database, true),
            ("crm", BackupKind::Database, false),
            ("hr", BackupKind::Database, true)
        ]
    );
    assert!(!r.succeeded());
    let names = run.local_names();
    for written in [format!("shop_backup_{NOW}.sql.gz"), format!("hr_backup_{NOW}.sql.gz"), format!("{label}_globals_{NOW}.sql.gz")] {
        assert!(names.contains(&written), "{written} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with(&format!("crm_backup_{NOW}"))), "no crm file, no partial: {names:?}");
    let mut deleted = report.retention.deleted.clone();
    deleted.sort();
    let old = |db: &str, infix: &str| format!("{db}_{infix}_{}.sql.gz", NOW - DAY);
    let mut want = vec![old("hr", "backup"), old(&label, "globals"), old("shop", "backup")];
    want.sort();
    assert_eq!(deleted, want, "keep 1: the written ones' old backups go");
    // The policy (keep 1) selects crm's older backup; the run wrote none of crm, so both stay.
    assert!(names.contains(&old("crm", "backup")) && names.contains(&format!("crm_backup_{}.sql.gz", NOW - 2 * DAY)), "{names:?}");
}

/// With one database and `EF__BACKUP_GLOBALS=auto`, a globals dump that fails is a note, not a
/// failure: the original's answer for the database; with `true` the run fails, the dump stands.
#[test]
fn a_failed_globals_dump_fails_the_run_only_when_required() {
    for (mode, fails) in [("auto", false), ("true", true)] {
        let mut run = Run::new(5);
        run.config = config_with(run._dir.path(), &[("EF__DB_NAME", "app"), ("EF__BACKUP_GLOBALS", mode)]);
        let mut server = FakeServer::new(dump_text(), None);
        server.failing = run.config.policy_resolved(Vec::new(), Some("42")).globals_label.into_iter().collect();
        let report = run.backup_from(&server, NOW);
        let dump = format!("app_backup_{NOW}.sql.gz");
        assert!(run.local_names().contains(&dump), "{mode}: {:?}", run.local_names());
        match (&report.outcome, fails) {
            (BackupOutcome::Done(d), false) => {
                assert_eq!(d.file_name, dump);
                assert!(report.notes.iter().any(|n| n.contains("globals backup failed")), "{:?}", report.notes);
            }
            (BackupOutcome::Failed(f), true) => {
                assert!(f.message.contains("globals backup failed") && f.message.contains("was written"), "{}", f.message);
                assert_eq!(f.file_name.as_deref(), Some(dump.as_str()));
            }
            (other, _) => panic!("{mode}: {other:?}"),
        }
    }
}

/// With one database the response shows its dump's upload only: the globals' failed upload is
/// said in the run's notes (and so in its status message).
#[test]
fn a_failed_globals_upload_is_noted_when_one_database_is_backed_up() {
    let mut run = Run::new(5);
    run.config = config_with(run._dir.path(), &[("EF__DB_NAME", "app"), ("EF__BACKUP_GLOBALS", "auto")]);
    run.mirror.fail_uploads.store(true, Ordering::SeqCst);
    let report = run.backup_from(&FakeServer::new(dump_text(), None), NOW);
    assert!(matches!(&report.outcome, BackupOutcome::Done(d) if matches!(d.s3, S3Outcome::Failed(_))), "{:?}", report.outcome);
    assert!(report.notes.iter().any(|n| n.contains("globals backup's S3 upload failed")), "{:?}", report.notes);
}

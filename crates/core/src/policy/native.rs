//! A policy written in Rust, for the unit tests of the engine, the catalog and the service
//! (and for an embedding app that wants no WebAssembly): names `<database>_backup_<unix>.sql.gz`
//! (and `_globals_` for the globals), keeps the newest `keep` of each database and kind, answers
//! in the original's JSON envelope. Its switches make it fail the way a broken component does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{fallback_backup_response, Policy, PolicyError};
use crate::model::{
    BackupEntry, BackupKind, BackupOutcome, BackupSchedule, Event, HttpResponse, LoadedPolicy, NameInfo, Notification, PolicyConfig, Status, Target,
};
use crate::util::lock;

#[derive(Debug)]
pub struct NativePolicy {
    /// Backups retention keeps in each store (the newest by the time in the name).
    pub keep: usize,
    /// `backup-name` fails.
    pub fail_naming: AtomicBool,
    /// `select-expired` fails.
    pub fail_retention: AtomicBool,
    /// Every retention question asked: (store, names offered).
    pub asked: Mutex<Vec<(Target, Vec<String>)>>,
}

impl NativePolicy {
    pub fn keeping(keep: usize) -> NativePolicy {
        NativePolicy { keep, fail_naming: AtomicBool::new(false), fail_retention: AtomicBool::new(false), asked: Mutex::default() }
    }

    fn fails(&self, call: &'static str) -> PolicyError {
        PolicyError::BadOutput { path: "native".into(), call, reason: "the test switch is on".into() }
    }
}

impl Policy for NativePolicy {
    fn loaded(&self) -> LoadedPolicy {
        LoadedPolicy { path: "native".into(), sha256: String::new(), wit_version: "native".into() }
    }

    fn schedule(&self, _: &PolicyConfig) -> Result<BackupSchedule, PolicyError> {
        Ok(BackupSchedule {
            crons: vec!["0 30 1 * * *".into()],
            timezone: "UTC".into(),
            description: "daily at 01:30 UTC".into(),
            drill_crons: vec![],
        })
    }

    fn name_file(&self, config: &PolicyConfig, file: &NameInfo) -> Result<String, PolicyError> {
        if self.fail_naming.load(Ordering::SeqCst) {
            return Err(self.fails("backup-name"));
        }
        let infix = match file.kind {
            BackupKind::Database => "backup",
            BackupKind::Globals => "globals",
        };
        Ok(format!("{}_{infix}_{}{}", file.database, file.run_at, config.format.suffix()))
    }

    /// `<db>_backup_<unix><suffix>` (a dump of one of `config.databases`) and
    /// `<label>_globals_<unix><suffix>` (the globals under `config.globals_label`), in any format.
    fn parse_name(&self, config: &PolicyConfig, name: &str) -> Result<Option<NameInfo>, PolicyError> {
        let Some(format) = crate::codec::Format::of_name(name) else { return Ok(None) };
        let rest = &name[..name.len() - format.suffix().len()];
        let Some((head, time)) = rest.rsplit_once('_') else { return Ok(None) };
        let (database, kind) = match (head.strip_suffix("_backup"), head.strip_suffix("_globals")) {
            (Some(db), _) if config.databases.iter().any(|d| d == db) => (db, BackupKind::Database),
            (_, Some(label)) if config.globals_label.as_deref() == Some(label) => (label, BackupKind::Globals),
            _ => return Ok(None),
        };
        Ok(time.parse().ok().map(|run_at| NameInfo { database: database.to_string(), kind, run_at }))
    }

    fn recognise(&self, config: &PolicyConfig, backups: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, PolicyError> {
        Ok(backups.iter().filter_map(|b| Some((b.clone(), self.parse_name(config, &b.name).ok()??))).collect())
    }

    fn select_expired_among(
        &self,
        _: &[BackupEntry],
        ours: &[(BackupEntry, NameInfo)],
        _: i64,
        target: Target,
        _: &PolicyConfig,
    ) -> Result<Vec<(String, Option<String>)>, PolicyError> {
        lock(&self.asked).push((target, ours.iter().map(|(b, _)| b.name.clone()).collect()));
        if self.fail_retention.load(Ordering::SeqCst) {
            return Err(self.fails("select-expired"));
        }
        // The newest `keep` of each database and kind.
        let mut by_age: Vec<&(BackupEntry, NameInfo)> = ours.iter().collect();
        by_age.sort_by_key(|(_, i)| std::cmp::Reverse(i.run_at));
        let mut seen: std::collections::HashMap<(&str, BackupKind), usize> = std::collections::HashMap::new();
        Ok(by_age
            .iter()
            .filter(|(_, i)| {
                let n = seen.entry((i.database.as_str(), i.kind)).or_default();
                *n += 1;
                *n > self.keep
            })
            .map(|(b, _)| (b.name.clone(), Some(format!("beyond the newest {}", self.keep))))
            .collect())
    }

    fn shape_backup_response(&self, outcome: &BackupOutcome) -> Result<HttpResponse, PolicyError> {
        Ok(fallback_backup_response(outcome))
    }

    fn shape_status(&self, status: &Status) -> Result<HttpResponse, PolicyError> {
        let last = status.last_run.as_ref().map(|r| serde_json::json!({"succeeded": r.succeeded, "message": r.message}));
        let body = serde_json::json!({"success": true, "data": {"backups": status.recognised.len(), "last_run": last, "running": status.running}});
        Ok(HttpResponse { status: 200, body: body.to_string() })
    }

    fn shape_notification(&self, _: &PolicyConfig, _: i64, event: &Event) -> Result<Option<Vec<Notification>>, PolicyError> {
        Ok(Some(super::fallback_notifications(event)))
    }

    fn select_drill(&self, _: &PolicyConfig, _: i64, ours: &[(BackupEntry, NameInfo)]) -> Result<Option<Vec<String>>, PolicyError> {
        Ok(Some(super::fallback_drill_selection(ours)))
    }
}

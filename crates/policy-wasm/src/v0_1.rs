//! `euraflow:backup@0.1.0`, released and frozen: the host bindings wasmtime generates for its
//! world, and the conversions between its types and the host's own ([`ef_backup_core::model`]). The only
//! place that knows the generated names; the next contract version gets a module of its own
//! beside this one.

// Exports are async so that a call can be abandoned while the guest waits in a WASI import
// (a sleep, a pollable): the epoch deadline stops only guest code (see `policy::run_until`).
wasmtime::component::bindgen!({ world: "backup-policy", path: "../../wit/0.1.0", exports: { default: async } });

use wasmtime::Store;

use super::{run_until, State};
use ef_backup_core::model;
use euraflow::backup::types as wit;
use exports::euraflow::backup::policy::Guest as Exports;

/// The contract version this module speaks.
pub const VERSION: &str = "0.1.0";

pub use BackupPolicy as World;
pub use BackupPolicyPre as WorldPre;

impl wit::Host for State {}

impl BackupPolicyImports for State {
    fn log(&mut self, level: wit::Level, message: String) {
        let level = match level {
            wit::Level::Trace => model::Level::Trace,
            wit::Level::Debug => model::Level::Debug,
            wit::Level::Info => model::Level::Info,
            wit::Level::Warn => model::Level::Warn,
            wit::Level::Error => model::Level::Error,
        };
        self.log(level, message);
    }
}

fn s3_config(c: &model::PolicyS3Config) -> wit::S3Config {
    wit::S3Config { bucket: c.bucket.clone(), region: c.region.clone(), prefix: c.prefix.clone(), retention_days: c.retention_days }
}

fn config(c: &model::PolicyConfig) -> wit::Config {
    wit::Config { database: c.database.clone(), backup_dir: c.backup_dir.clone(), s3: c.s3.as_ref().map(s3_config), settings: c.settings.clone() }
}

fn entry(e: &model::BackupEntry) -> wit::BackupEntry {
    wit::BackupEntry { name: e.name.clone(), size_bytes: e.size_bytes, modified: e.modified }
}

fn target(t: model::Target) -> wit::Target {
    match t {
        model::Target::Local => wit::Target::Local,
        model::Target::S3 => wit::Target::S3,
    }
}

fn s3_outcome(o: &model::S3Outcome) -> wit::S3Outcome {
    match o {
        model::S3Outcome::Disabled => wit::S3Outcome::Disabled,
        model::S3Outcome::Uploaded(url) => wit::S3Outcome::Uploaded(url.clone()),
        model::S3Outcome::Failed(why) => wit::S3Outcome::Failed(why.clone()),
    }
}

fn error_kind(k: model::ErrorKind) -> wit::ErrorKind {
    match k {
        model::ErrorKind::Config => wit::ErrorKind::Config,
        model::ErrorKind::Dump => wit::ErrorKind::Dump,
        model::ErrorKind::Storage => wit::ErrorKind::Storage,
        model::ErrorKind::Timeout => wit::ErrorKind::Timeout,
        model::ErrorKind::Policy => wit::ErrorKind::Policy,
        model::ErrorKind::Internal => wit::ErrorKind::Internal,
    }
}

/// None for a run of several databases, which 0.1.0 cannot express (the host never configures
/// a 0.1.0 policy for several).
fn outcome(o: &model::BackupOutcome) -> Option<wit::BackupOutcome> {
    Some(match o {
        model::BackupOutcome::Done(d) => wit::BackupOutcome::Done(wit::BackupDone {
            file_name: d.file_name.clone(),
            path: d.path.clone(),
            size_bytes: d.size_bytes,
            started_at: d.started_at,
            finished_at: d.finished_at,
            s3: s3_outcome(&d.s3),
        }),
        model::BackupOutcome::Failed(f) => {
            wit::BackupOutcome::Failed(wit::BackupFailed { kind: error_kind(f.kind), message: f.message.clone(), file_name: f.file_name.clone() })
        }
        model::BackupOutcome::Busy(name) => wit::BackupOutcome::Busy(name.clone()),
        model::BackupOutcome::Several(_) => return None,
    })
}

fn status(s: &model::Status) -> wit::Status {
    wit::Status {
        now: s.now,
        config: config(&s.config),
        policy: wit::LoadedPolicy { path: s.policy.path.clone(), sha256: s.policy.sha256.clone(), wit_version: s.policy.wit_version.clone() },
        local_backups: s.local_backups.iter().map(entry).collect(),
        last_run: s.last_run.as_ref().map(|r| wit::LastRun {
            started_at: r.started_at,
            finished_at: r.finished_at,
            succeeded: r.succeeded,
            file_name: r.file_name.clone(),
            message: r.message.clone(),
        }),
        next_run: s.next_run,
        running: s.running.clone(),
    }
}

fn response(r: wit::HttpResponse) -> model::HttpResponse {
    model::HttpResponse { status: r.status, body: r.body }
}

/// The exports of one instance, called like plain functions in the host's types: each call
/// blocks until the guest answers, traps or `deadline` passes.
pub struct Calls<'a> {
    exports: &'a Exports,
    deadline: std::time::Instant,
}

impl<'a> Calls<'a> {
    pub fn new(world: &'a World, deadline: std::time::Instant) -> Calls<'a> {
        Calls { exports: world.euraflow_backup_policy(), deadline }
    }

    pub fn schedule(&self, store: &mut Store<State>, c: &model::PolicyConfig) -> wasmtime::Result<model::BackupSchedule> {
        let s = run_until(self.deadline, self.exports.call_schedule(store, &config(c)))?;
        Ok(model::BackupSchedule { crons: s.crons, timezone: s.timezone, description: s.description, drill_crons: Vec::new() })
    }

    /// 0.1.0 names one database's dumps only (the host never asks it for the globals).
    pub fn name_file(&self, store: &mut Store<State>, c: &model::PolicyConfig, file: &model::NameInfo) -> wasmtime::Result<String> {
        if file.kind != model::BackupKind::Database {
            return Err(wasmtime::Error::msg("contract 0.1.0 cannot name the globals"));
        }
        let c = model::PolicyConfig { database: file.database.clone(), ..c.clone() };
        run_until(self.deadline, self.exports.call_backup_name(store, &config(&c), file.run_at))
    }

    /// 0.1.0 names say only the time: every one is a dump of the one database.
    pub fn parse_name(&self, store: &mut Store<State>, c: &model::PolicyConfig, name: &str) -> wasmtime::Result<Option<model::NameInfo>> {
        Ok(run_until(self.deadline, self.exports.call_parse_name(store, &config(c), name))?.map(|t| model::NameInfo::dump(&c.database, t)))
    }

    /// 0.1.0 is given the whole listing, as it always was (it picks out its own names).
    pub fn select_expired(
        &self,
        store: &mut Store<State>,
        backups: &[model::BackupEntry],
        _ours: &[(model::BackupEntry, model::NameInfo)],
        now: i64,
        t: model::Target,
        c: &model::PolicyConfig,
    ) -> wasmtime::Result<Vec<(String, Option<String>)>> {
        let backups: Vec<wit::BackupEntry> = backups.iter().map(entry).collect();
        let names = run_until(self.deadline, self.exports.call_select_expired(store, &backups, now, target(t), &config(c)))?;
        // 0.1.0 gives no reasons.
        Ok(names.into_iter().map(|n| (n, None)).collect())
    }

    pub fn shape_backup_response(&self, store: &mut Store<State>, o: &model::BackupOutcome) -> wasmtime::Result<model::HttpResponse> {
        match outcome(o) {
            Some(o) => run_until(self.deadline, self.exports.call_shape_backup_response(store, &o)).map(response),
            None => Ok(ef_backup_core::policy::fallback_backup_response(o)),
        }
    }

    pub fn shape_status(&self, store: &mut Store<State>, s: &model::Status) -> wasmtime::Result<model::HttpResponse> {
        run_until(self.deadline, self.exports.call_shape_status(store, &status(s))).map(response)
    }
}

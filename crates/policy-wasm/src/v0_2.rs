//! `euraflow:backup@0.2.0` (released and frozen): the host bindings wasmtime generates for its
//! world, and the conversions between its types and the host's own ([`ef_backup_core::model`]).
//!
//! Where 0.2 asks for more than the host's model holds today, the host fills it in here: the
//! format (gzip, unencrypted), the kind (a database dump), the store id of a target, a context
//! with `now` and a fresh random seed, and the name-info of every backup it passes back (asked
//! of the same instance's `parse-name`: only recognised backups ever go back to the policy).

wasmtime::component::bindgen!({ world: "backup-policy", path: "../../wit/0.2.0", exports: { default: async } });

use wasmtime::Store;

use super::{run_until, State};
use ef_backup_core::model;
use euraflow::backup::types as wit;
use exports::euraflow::backup::policy::Guest as Exports;

/// The contract version this module speaks.
pub const VERSION: &str = "0.2.0";

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

fn format(f: ef_backup_core::codec::Format) -> wit::Format {
    wit::Format { suffix: f.suffix().into(), codec: f.id().into(), encrypted: f.encrypted }
}

fn context(now: i64) -> wit::Context {
    let mut seed = [0u8; 8];
    // A policy that uses the seed only spreads or samples with it: without randomness it still
    // gets a value that changes with the time.
    if getrandom::getrandom(&mut seed).is_err() {
        seed = now.to_le_bytes();
    }
    wit::Context { now, seed: u64::from_le_bytes(seed) }
}

fn config(c: &model::PolicyConfig) -> wit::Config {
    wit::Config {
        databases: c.databases.clone(),
        globals_label: c.globals_label.clone(),
        backup_dir: c.backup_dir.clone(),
        s3: c.s3.as_ref().map(|s| wit::S3Config {
            bucket: s.bucket.clone(),
            region: s.region.clone(),
            prefix: s.prefix.clone(),
            retention_days: s.retention_days,
        }),
        settings: c.settings.clone(),
    }
}

fn event_kind(k: model::EventKind) -> wit::EventKind {
    use model::EventKind as K;
    match k {
        K::BackupStarted => wit::EventKind::BackupStarted,
        K::BackupSucceeded => wit::EventKind::BackupSucceeded,
        K::BackupFailed => wit::EventKind::BackupFailed,
        K::S3UploadFailed => wit::EventKind::S3UploadFailed,
        K::RetentionSkipped => wit::EventKind::RetentionSkipped,
        K::DrillSucceeded => wit::EventKind::DrillSucceeded,
        K::DrillFailed => wit::EventKind::DrillFailed,
        K::MissedSlot => wit::EventKind::MissedSlot,
        K::PolicyRejected => wit::EventKind::PolicyRejected,
        K::ServiceStarted => wit::EventKind::ServiceStarted,
        K::ServiceStopped => wit::EventKind::ServiceStopped,
    }
}

fn channel(c: wit::Channel) -> ef_backup_core::config::notify::Channel {
    use ef_backup_core::config::notify::Channel as C;
    match c {
        wit::Channel::Webhook => C::Webhook,
        wit::Channel::Slack => C::Slack,
        wit::Channel::Telegram => C::Telegram,
        wit::Channel::Email => C::Email,
        wit::Channel::Heartbeat => C::Heartbeat,
    }
}

/// The store id a target has in this contract.
pub fn store_id(t: model::Target) -> &'static str {
    match t {
        model::Target::Local => "local",
        model::Target::S3 => "s3",
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

fn done(d: &model::BackupDone) -> wit::BackupDone {
    let copies = match &d.s3 {
        model::S3Outcome::Disabled => Vec::new(),
        model::S3Outcome::Uploaded(url) => vec![wit::CopyOutcome { store: "s3".into(), result: Ok(url.clone()) }],
        model::S3Outcome::Failed(why) => vec![wit::CopyOutcome { store: "s3".into(), result: Err(why.clone()) }],
    };
    wit::BackupDone {
        file_name: d.file_name.clone(),
        path: d.path.clone(),
        size_bytes: d.size_bytes,
        started_at: d.started_at,
        finished_at: d.finished_at,
        copies,
    }
}

fn failed(f: &model::BackupFailed) -> wit::BackupFailed {
    wit::BackupFailed { kind: error_kind(f.kind), message: f.message.clone(), file_name: f.file_name.clone() }
}

fn outcome(o: &model::BackupOutcome) -> wit::BackupOutcome {
    match o {
        model::BackupOutcome::Done(d) => wit::BackupOutcome::Done(done(d)),
        model::BackupOutcome::Failed(f) => wit::BackupOutcome::Failed(failed(f)),
        model::BackupOutcome::Busy(name) => wit::BackupOutcome::Busy(name.clone()),
        model::BackupOutcome::Several(run) => wit::BackupOutcome::Several(wit::BackupRun {
            started_at: run.started_at,
            finished_at: run.finished_at,
            entries: run
                .entries
                .iter()
                .map(|e| wit::RunEntry { database: e.database.clone(), kind: kind(e.kind), outcome: e.outcome.as_ref().map(done).map_err(failed) })
                .collect(),
            notes: run.notes.clone(),
        }),
    }
}

fn last_run(r: &model::LastRun) -> wit::LastRun {
    wit::LastRun {
        started_at: r.started_at,
        finished_at: r.finished_at,
        succeeded: r.succeeded,
        file_name: r.file_name.clone(),
        message: r.message.clone(),
    }
}

fn response(r: wit::HttpResponse) -> model::HttpResponse {
    model::HttpResponse { status: r.status, body: r.body }
}

fn kind(k: model::BackupKind) -> wit::BackupKind {
    match k {
        model::BackupKind::Database => wit::BackupKind::Database,
        model::BackupKind::Globals => wit::BackupKind::Globals,
    }
}

/// Backups the host recognised (through `parse_name`: this deployment's database dumps), with
/// the name-info that implies. Never asked of the guest again: recognition already gave each
/// name its own budget and took a trap on one name as "not ours".
fn entries(ours: &[(model::BackupEntry, model::NameInfo)]) -> Vec<wit::BackupEntry> {
    ours.iter()
        .map(|(b, i)| wit::BackupEntry {
            name: b.name.clone(),
            size_bytes: b.size_bytes,
            modified: b.modified,
            info: wit::NameInfo { database: i.database.clone(), kind: kind(i.kind), run_at: i.run_at },
        })
        .collect()
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
        Ok(model::BackupSchedule { crons: s.crons, timezone: s.timezone, description: s.description, drill_crons: s.drill_crons })
    }

    pub fn name_file(&self, store: &mut Store<State>, c: &model::PolicyConfig, file: &model::NameInfo) -> wasmtime::Result<String> {
        let request = wit::NameRequest { database: file.database.clone(), kind: kind(file.kind), format: format(c.format), run_at: file.run_at };
        run_until(self.deadline, self.exports.call_backup_name(store, context(file.run_at), &config(c), &request))
    }

    /// What a name of this deployment's says: a dump of one of its databases, or the globals
    /// under its label. A name the policy gives another database or label is not one of the
    /// backups the host manages here: none, so it is never counted or deleted.
    pub fn parse_name(&self, store: &mut Store<State>, c: &model::PolicyConfig, name: &str) -> wasmtime::Result<Option<model::NameInfo>> {
        let ours = self.name_info(store, c, name)?.and_then(|i| {
            let kind = match i.kind {
                wit::BackupKind::Database if c.databases.contains(&i.database) => model::BackupKind::Database,
                wit::BackupKind::Globals if c.globals_label.as_ref() == Some(&i.database) => model::BackupKind::Globals,
                _ => return None,
            };
            Some(model::NameInfo { database: i.database, kind, run_at: i.run_at })
        });
        Ok(ours)
    }

    fn name_info(&self, store: &mut Store<State>, c: &model::PolicyConfig, name: &str) -> wasmtime::Result<Option<wit::NameInfo>> {
        run_until(self.deadline, self.exports.call_parse_name(&mut *store, &config(c), name))
    }

    /// The names the policy decides to delete, each with its reason.
    pub fn select_expired(
        &self,
        store: &mut Store<State>,
        ours: &[(model::BackupEntry, model::NameInfo)],
        now: i64,
        t: model::Target,
        c: &model::PolicyConfig,
    ) -> wasmtime::Result<Vec<(String, Option<String>)>> {
        let entries = entries(ours);
        let store_id = store_id(t).to_string();
        let decisions = run_until(self.deadline, self.exports.call_select_expired(&mut *store, context(now), &config(c), &store_id, &entries))?;
        Ok(decisions.into_iter().filter(|d| d.delete).map(|d| (d.name, Some(d.reason))).collect())
    }

    pub fn shape_backup_response(&self, store: &mut Store<State>, o: &model::BackupOutcome) -> wasmtime::Result<model::HttpResponse> {
        run_until(self.deadline, self.exports.call_shape_backup_response(store, &outcome(o))).map(response)
    }

    pub fn shape_status(&self, store: &mut Store<State>, s: &model::Status) -> wasmtime::Result<model::HttpResponse> {
        let mut local_backups = entries(&s.recognised);
        local_backups.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.name.cmp(&a.name)));
        let status = wit::Status {
            now: s.now,
            config: config(&s.config),
            policy: wit::LoadedPolicy { path: s.policy.path.clone(), sha256: s.policy.sha256.clone(), wit_version: s.policy.wit_version.clone() },
            local_backups,
            last_run: s.last_run.as_ref().map(last_run),
            next_run: s.next_run,
            running: s.running.clone(),
            last_drill: s.last_drill.as_ref().map(last_run),
            drills: s.drills.clone(),
            recent_runs: s
                .recent_runs
                .iter()
                .map(|r| wit::RunRecord {
                    kind: r.kind.clone(),
                    database: r.database.clone(),
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    outcome: r.outcome.clone(),
                    file_name: r.file_name.clone(),
                    message: r.message.clone(),
                })
                .collect(),
        };
        run_until(self.deadline, self.exports.call_shape_status(store, &status)).map(response)
    }

    pub fn shape_notification(
        &self,
        store: &mut Store<State>,
        c: &model::PolicyConfig,
        now: i64,
        e: &model::Event,
    ) -> wasmtime::Result<Vec<model::Notification>> {
        let event = wit::Event {
            kind: event_kind(e.kind),
            at: e.at,
            detail: e.detail.clone(),
            databases: e.databases.clone(),
            file_name: e.file_name.clone(),
            outcome: e.outcome.as_ref().map(outcome),
            previous: e.previous.as_ref().map(last_run),
            changes: e
                .changes
                .iter()
                .map(|c| wit::SizeChange {
                    database: c.database.clone(),
                    previous_bytes: c.previous_bytes,
                    bytes: c.bytes,
                    previous_rows: c.previous_rows,
                    rows: c.rows,
                })
                .collect(),
        };
        let m = run_until(self.deadline, self.exports.call_shape_notification(store, context(now), &config(c), &event))?;
        Ok(m.into_iter().map(|m| model::Notification { channel: channel(m.channel), subject: m.subject, body: m.body }).collect())
    }

    pub fn select_drill(
        &self,
        store: &mut Store<State>,
        c: &model::PolicyConfig,
        now: i64,
        ours: &[(model::BackupEntry, model::NameInfo)],
    ) -> wasmtime::Result<Vec<String>> {
        let mut entries = entries(ours);
        entries.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.name.cmp(&a.name)));
        run_until(self.deadline, self.exports.call_select_drill(store, context(now), &config(c), &entries))
    }
}

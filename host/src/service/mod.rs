//! The long-running plugin: one backup at a time in this process (and, through a PostgreSQL
//! advisory lock, across replicas), the last run's outcome, metrics, and status. The HTTP
//! layer (`api`) and the scheduler (`schedule`) both go through here.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::alerts::Alerts;
use crate::config::Config;
use crate::engine::{self, BackupOptions, BackupReport};
use crate::lock::{self, LockError, SlotLock};
use crate::metrics::{Gauges, Metrics};
use crate::model::{BackupEntry, BackupOutcome, Event, EventKind, HttpResponse, LastRun, RunSummary, Status};
use crate::policy::{self, Policy, PolicyError, WasmPolicy};
use crate::schedule::{Schedule, ScheduleError};
use crate::state::{Finished, StateStore, Trigger};
use crate::store::local::LocalStore;
use crate::store::Mirror;
use crate::util::{lock, now};

/// How long a listing of the backup directory and the policy's recognition of it serve
/// status and `/metrics` before they are computed again (a finished run refreshes it at once).
pub const LISTING_TTL: Duration = Duration::from_secs(2);

/// What a run that another instance (a replica, a CLI backup) holds the lock of is busy with.
pub const OTHER_INSTANCE: &str = "another ef-backup instance";

/// What the service answers for a backup request.
#[derive(Debug, Clone)]
pub struct BackupRun {
    pub outcome: BackupOutcome,
    /// None when the backup did not run (busy).
    pub report: Option<BackupReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the new policy's schedule is invalid: {0}")]
    Schedule(#[from] ScheduleError),
}

/// The backup directory as status and `/metrics` last saw it.
struct Listing {
    at: Instant,
    entries: Vec<BackupEntry>,
    /// The policy's own among them, with their run times.
    recognised: Vec<(BackupEntry, crate::model::NameInfo)>,
}

pub struct Service {
    config: Config,
    policy: RwLock<Arc<dyn Policy>>,
    s3: Option<Arc<dyn Mirror>>,
    state: StateStore,
    /// The running backup's name: set means busy. Never two pg_dumps at once from here.
    /// Cleared by [`RunningGuard`] however the run ends.
    running: Mutex<Option<String>>,
    /// Woken when `running` is cleared (shutdown waits on it).
    idle: tokio::sync::Notify,
    /// Set by shutdown: no run starts any more.
    closing: AtomicBool,
    last_run: Mutex<Option<LastRun>>,
    next_run: Mutex<Option<i64>>,
    /// The lock of the last scheduled slot this replica ran, held until the next slot so a
    /// replica whose timer fires late cannot run the same slot again.
    slot_lock: Mutex<Option<SlotLock>>,
    cancel: Arc<AtomicBool>,
    listing: Mutex<Option<Arc<Listing>>>,
    /// One listing computation at a time; callers arriving meanwhile wait (without a thread)
    /// and share its result.
    listing_refresh: tokio::sync::Mutex<()>,
    /// The policy's view as the last run resolved it (the databases `EF__DB_NAMES=*` found, the
    /// globals' label): status and `/metrics` recognise backups under it.
    view: Mutex<crate::model::PolicyConfig>,
    /// Each file of this process's last run: (database, kind, written).
    last_entries: Mutex<Vec<(String, crate::model::BackupKind, bool)>>,
    pub metrics: Metrics,
    /// The notification channels.
    alerts: Alerts,
    /// Where drills run, or why they cannot (status and the start-up log).
    drills: Result<String, String>,
}

fn busy(what: impl Into<String>) -> BackupRun {
    BackupRun { outcome: BackupOutcome::Busy(what.into()), report: None }
}

fn internal_failure(message: String, file_name: Option<String>) -> BackupOutcome {
    BackupOutcome::Failed(crate::model::BackupFailed { kind: crate::model::ErrorKind::Internal, message, file_name })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Clears `running` when dropped: on success, failure, panic, or a task that is dropped.
struct RunningGuard(Arc<Service>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *lock(&self.0.running) = None;
        self.0.idle.notify_waiters();
    }
}

impl Service {
    /// The service, starting from what `state` recorded (last run, counters).
    pub fn new(config: Config, policy: Arc<dyn Policy>, s3: Option<Arc<dyn Mirror>>, state: StateStore, alerts: Alerts) -> Arc<Service> {
        let metrics = Metrics::default();
        let mut last_run = None;
        match state.load() {
            Ok(loaded) => {
                metrics.load(&loaded);
                last_run = loaded.last_run;
            }
            Err(e) => tracing::error!("{e}; status and metrics start from zero"),
        }
        if state.interrupted_at_open() > 0 {
            tracing::error!(
                "{} backup run(s) were cut by the end of the previous process (crash, kill -9, power loss); recorded as failed",
                state.interrupted_at_open()
            );
        }
        let drills = crate::drills::availability(&config);
        Arc::new(Service {
            alerts,
            drills,
            view: Mutex::new(config.policy.clone()),
            config,
            policy: RwLock::new(policy),
            s3,
            state,
            running: Mutex::new(None),
            idle: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            last_run: Mutex::new(last_run),
            next_run: Mutex::new(None),
            slot_lock: Mutex::new(None),
            cancel: Arc::new(AtomicBool::new(false)),
            listing: Mutex::new(None),
            listing_refresh: tokio::sync::Mutex::new(()),
            last_entries: Mutex::new(Vec::new()),
            metrics,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the policy file again and, when it passes `policy check` (and the pin, if any)
    /// and its schedule is valid (known zone, every cron fires within a year), makes it the
    /// running policy; otherwise the current one stays and the error is returned. Returns the
    /// new policy's schedule when the policy changed. Blocking: call it off the async threads.
    /// `path` is the policy file as configured (not the running policy's display path, which
    /// loses a path that is not UTF-8).
    pub fn reload(&self, path: &std::path::Path) -> Result<Option<Schedule>, ReloadError> {
        let current = self.policy().loaded();
        let fresh = load_checked(&self.config, path)?;
        if fresh.info().sha256 == current.sha256 {
            return Ok(None);
        }
        let schedule = Schedule::from_policy(&fresh.schedule(&self.config.policy)?)?;
        schedule.validate(chrono::Utc::now())?;
        tracing::info!(
            "policy reloaded: {} (euraflow:backup@{}, sha256 {}, was {})",
            path.display(),
            fresh.info().wit_version,
            fresh.info().sha256,
            current.sha256
        );
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        *lock(&self.listing) = None;
        Ok(Some(schedule))
    }

    /// Asks the server, off the async threads, for what the policy's view needs before the first
    /// run (the globals' label, the databases of `EF__DB_NAMES=*`), so that status and `/metrics`
    /// count this deployment's globals right after a restart. A run that finishes first wins.
    pub fn resolve_view_in_background(self: &Arc<Self>) {
        let svc = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let view = crate::engine::resolved_view(&svc.config);
            let mut current = lock(&svc.view);
            if *current == svc.config.policy {
                *current = view;
                *lock(&svc.listing) = None;
            }
        });
    }

    pub fn set_next_run(&self, at: Option<i64>) {
        *lock(&self.next_run) = at;
    }

    pub fn status_next_run(&self) -> Option<i64> {
        *lock(&self.next_run)
    }

    /// The last run's message (for the shutdown log line).
    pub fn last_message(&self) -> Option<String> {
        lock(&self.last_run).as_ref().map(|r| r.message.clone())
    }

    /// Whether shutdown has begun.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> Option<String> {
        lock(&self.running).clone()
    }

    /// Stops a running backup (pg_dump is killed, its partial file removed, its S3 upload
    /// aborted). Used when shutting down after the grace period.
    pub fn cancel_running(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// From now on no backup starts; waits until the running one (if any) has ended and
    /// been recorded, including one whose HTTP client went away.
    pub async fn wait_idle(&self) {
        self.closing.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running().is_none() {
                return;
            }
            notified.await;
        }
    }

    /// Takes the advisory lock of a scheduled slot; false when another replica holds it.
    /// When the lock cannot be taken, the slot goes on to the run lock, which cannot be taken
    /// either: the slot is then recorded as a failed run (visible in status, metrics and alerts)
    /// rather than skipped with only a log line, and no pg_dump runs without the run lock.
    pub async fn claim_slot(self: &Arc<Self>, slot: i64) -> bool {
        let svc = Arc::clone(self);
        let claimed = tokio::task::spawn_blocking(move || match lock::claim_slot(&svc.config, slot) {
            Ok(l) => {
                *lock(&svc.slot_lock) = Some(l);
                true
            }
            Err(LockError::Busy { .. }) => false,
            Err(e) => {
                tracing::error!("{e}");
                true
            }
        })
        .await;
        claimed.unwrap_or(true)
    }

    /// Runs a backup now, unless one is running here or on another replica (then `busy`).
    /// The run is a task of its own: when the caller goes away (an HTTP client that gave up,
    /// a proxy timeout), the run goes on to the end and is recorded; only the answer is lost.
    pub async fn backup(self: &Arc<Self>, trigger: Trigger) -> BackupRun {
        let svc = Arc::clone(self);
        match tokio::spawn(svc.run(trigger)).await {
            Ok(run) => run,
            Err(e) => {
                let message = format!("the backup task failed: {e}");
                tracing::error!("{message}");
                BackupRun { outcome: internal_failure(message, None), report: None }
            }
        }
    }

    async fn run(self: Arc<Self>, trigger: Trigger) -> BackupRun {
        if self.closing.load(Ordering::SeqCst) {
            return busy("none (ef-backup is shutting down)");
        }
        if let Some(current) = self.running() {
            self.metrics.busy_rejections_total.fetch_add(1, Ordering::Relaxed);
            return busy(current);
        }
        let started = now();
        // The policy names the run before it is claimed, so that a refused request can say
        // which backup is running; the call runs on a blocking thread, under no lock.
        let policy = self.policy();
        let (p, config) = (Arc::clone(&policy), self.config.policy.clone());
        let path = std::path::PathBuf::from(policy.loaded().path);
        let name = tokio::task::spawn_blocking(move || p.backup_name(&config, started))
            .await
            .unwrap_or_else(|e| Err(PolicyError::Trap { path, call: "backup-name", reason: format!("the naming task failed: {e}") }));
        let guard = {
            let mut running = lock(&self.running);
            if self.closing.load(Ordering::SeqCst) {
                return busy("none (ef-backup is shutting down)");
            }
            if let Some(current) = running.as_ref() {
                self.metrics.busy_rejections_total.fetch_add(1, Ordering::Relaxed);
                return busy(current.clone());
            }
            *running = Some(name.as_ref().map(String::clone).unwrap_or_else(|_| "a backup".into()));
            RunningGuard(Arc::clone(&self))
        };
        let svc = Arc::clone(&self);
        let joined = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            svc.run_blocking(&*policy, name, started, trigger)
        })
        .await;
        joined.unwrap_or_else(|e| {
            // run_blocking catches the engine's panics; this is the recording itself failing.
            let message = format!("the backup task failed: {e}");
            tracing::error!("{message}");
            BackupRun { outcome: internal_failure(message, None), report: None }
        })
    }

    fn run_blocking(&self, policy: &dyn Policy, name: Result<String, PolicyError>, started: i64, trigger: Trigger) -> BackupRun {
        // Across replicas and the CLI: one backup of this database at a time. A lock that cannot
        // be taken fails the run (fail closed): it is recorded and alerted on, and no pg_dump runs.
        let run_lock = match lock::acquire(&self.config) {
            Ok(l) => Arc::new(l),
            Err(LockError::Busy { .. }) => {
                tracing::info!("another ef-backup instance is running a backup of this database; not starting a second one");
                self.metrics.busy_rejections_total.fetch_add(1, Ordering::Relaxed);
                return busy(OTHER_INSTANCE);
            }
            Err(e) => {
                tracing::error!("数据库备份失败: {e}");
                let report = e.into_report(name.ok());
                let id = self.state.begin(trigger, started).map_err(|e| tracing::error!("{e}")).ok();
                let previous = lock(&self.last_run).clone();
                self.record(trigger, id, started, &report.outcome, Some(&report));
                self.tell(policy, &report, previous);
                return BackupRun { outcome: report.outcome.clone(), report: Some(report) };
            }
        };
        let last_recorded_run = self.state.latest_start().unwrap_or_else(|e| {
            tracing::error!("{e}; the backup runs without the clock check");
            None
        });
        let id = self.state.begin(trigger, started).map_err(|e| tracing::error!("{e}; the backup runs anyway")).ok();
        let view = lock(&self.view).clone();
        let started_event = Event {
            databases: view.databases.clone(),
            ..Event::new(EventKind::BackupStarted, started, format!("{} backup started", trigger.as_str()))
        };
        self.alerts.emit(policy, &view, &started_event);
        let opts = BackupOptions { now: started, progress: false, cancel: Arc::clone(&self.cancel), last_recorded_run, run_lock: Some(run_lock) };
        let file_name = name.as_ref().ok().cloned();
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| engine::run_named(&self.config, policy, self.s3.as_deref(), name, opts)));
        let run = match ran {
            Ok(report) => BackupRun { outcome: report.outcome.clone(), report: Some(report) },
            Err(panic) => {
                let message = format!("the backup stopped on an internal error: {}", panic_message(&*panic));
                tracing::error!("{message}");
                BackupRun { outcome: internal_failure(message, file_name), report: None }
            }
        };
        let previous = lock(&self.last_run).clone();
        self.record(trigger, id, started, &run.outcome, run.report.as_ref());
        match &run.report {
            Some(report) => self.tell(policy, report, previous),
            // The engine panicked: still a failed backup that someone must hear of.
            None => {
                let detail = match &run.outcome {
                    BackupOutcome::Failed(f) => f.message.clone(),
                    _ => "the backup stopped on an internal error".into(),
                };
                let event = Event {
                    databases: view.databases.clone(),
                    outcome: Some(run.outcome.clone()),
                    previous,
                    ..Event::new(EventKind::BackupFailed, now(), detail)
                };
                self.alerts.emit(policy, &view, &event);
            }
        }
        run
    }

    /// The events of a finished run, to the channels.
    fn tell(&self, policy: &dyn Policy, report: &BackupReport, previous: Option<LastRun>) {
        // The size changes need a listing of the backup directory: not after every run of a
        // deployment that tells nobody.
        if !self.alerts.is_active() {
            return;
        }
        let view = lock(&self.view).clone();
        let recognised = self.compute_listing().recognised;
        let changes = crate::events::size_changes(report, &self.config.backup_dir, &recognised);
        for event in crate::events::of_backup(report, now(), &view.databases, previous, changes) {
            self.alerts.emit(policy, &view, &event);
        }
    }

    /// Tells the channels of something the service saw (started, stopped, a rejected policy,
    /// a missed slot), off the async threads.
    pub async fn announce(self: &Arc<Self>, kind: EventKind, detail: String) {
        let svc = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            let view = lock(&svc.view).clone();
            let event = Event { databases: view.databases.clone(), ..Event::new(kind, now(), detail) };
            svc.alerts.emit(&*svc.policy(), &view, &event);
        })
        .await;
    }

    /// At start-up: the latest slot whose grace time has passed, when no backup started within
    /// it (the service was down, or never got to it), is a missed slot. A backup of that window
    /// in the backup directory (another replica's, a CLI run's) is no miss, and neither is a
    /// slot before the deployment's first recorded run.
    pub async fn check_missed_at_start(self: &Arc<Self>, schedule: &crate::schedule::Schedule) {
        let grace = chrono::Duration::minutes(self.config.missed_slot_minutes as i64);
        let Some(slot) = schedule.latest_at(chrono::Utc::now() - grace) else { return };
        let (from, to) = (slot.timestamp(), (slot + grace).timestamp());
        let svc = Arc::clone(self);
        let missed = tokio::task::spawn_blocking(move || {
            let (started, known) = svc.state.backup_started_between(from, to).unwrap_or((true, false));
            let on_disk = svc.compute_listing().recognised.iter().any(|(_, i)| (from..=to).contains(&i.run_at));
            known && !started && !on_disk
        })
        .await
        .unwrap_or(false);
        if missed {
            let label = slot.with_timezone(&schedule.zone).format("%Y-%m-%d %H:%M:%S %Z");
            let detail = format!(
                "no backup started within {} minutes after the {label} slot (ef-backup was not running then?)",
                self.config.missed_slot_minutes
            );
            tracing::warn!("missed slot: {detail}");
            self.announce(EventKind::MissedSlot, detail).await;
        }
    }

    /// Waits (at most `deadline`) for queued notifications: at shutdown.
    pub async fn flush_notifications(&self, deadline: Duration) {
        self.alerts.flush(deadline).await;
    }

    /// Where drills run, or why they cannot.
    pub fn drills(&self) -> &Result<String, String> {
        &self.drills
    }

    /// The drills the policy picks among the local backups, run one after another on a blocking
    /// thread. Holds no backup lock: a backup slot during a drill runs.
    pub async fn drill(self: &Arc<Self>, trigger: Trigger) -> Vec<crate::drills::Drilled> {
        if let Err(why) = &self.drills {
            tracing::warn!("restore drill skipped: {why}");
            return Vec::new();
        }
        let svc = Arc::clone(self);
        let ran = tokio::task::spawn_blocking(move || {
            let policy = svc.policy();
            let view = lock(&svc.view).clone();
            let listing = svc.compute_listing();
            let mut ours = listing.recognised.clone();
            ours.sort_by(|a, b| b.1.run_at.cmp(&a.1.run_at).then_with(|| b.0.name.cmp(&a.0.name)));
            let names = match policy.select_drill(&view, now(), &ours) {
                Ok(Some(names)) => names,
                Ok(None) => policy::fallback_drill_selection(&ours),
                Err(e) => {
                    tracing::error!("{e}; drilling the newest backup of each database instead");
                    policy::fallback_drill_selection(&ours)
                }
            };
            if names.is_empty() {
                tracing::info!("restore drill: no backup to drill");
                return Vec::new();
            }
            crate::drills::run(&svc.config, &*policy, &view, &names, trigger, &svc.alerts, Some(&svc.state))
        })
        .await;
        ran.unwrap_or_else(|e| {
            tracing::error!("the drill task failed: {e}");
            Vec::new()
        })
    }

    /// Counts the run, makes it the last run and writes it to the state store. A store that
    /// fails is logged; the run's result stands.
    fn record(&self, trigger: Trigger, id: Option<i64>, started: i64, outcome: &BackupOutcome, report: Option<&BackupReport>) {
        if let Some(view) = report.and_then(|r| r.view.clone()) {
            *lock(&self.view) = view;
        }
        if let Some(r) = report.filter(|r| !r.entries.is_empty()) {
            *lock(&self.last_entries) = r.entries.iter().map(|e| (e.database.clone(), e.kind, e.outcome.is_ok())).collect();
        }
        let Some(finished) = Finished::of(outcome, report, now()) else { return };
        self.metrics.count(&finished);
        tracing::info!("{} backup run recorded: {}", trigger.as_str(), finished.message);
        *lock(&self.last_run) = Some(finished.last_run(started));
        *lock(&self.listing) = None;
        if let Err(e) = self.state.finish(id, trigger, started, &finished) {
            tracing::error!("{e}; this run will be missing from the history after a restart");
        }
        if let Some(r) = report {
            if let Err(e) = self.state.record_retention(trigger, r) {
                tracing::error!("{e}; this run's retention is missing from the history");
            }
        }
    }

    /// The response for a backup run, shaped by the policy (or by the host when the policy
    /// cannot), on a blocking thread.
    pub async fn shape_backup(&self, outcome: BackupOutcome) -> HttpResponse {
        let policy = self.policy();
        let shaped = tokio::task::spawn_blocking(move || {
            policy.shape_backup_response(&outcome).unwrap_or_else(|e| {
                tracing::error!("{e}");
                policy::fallback_backup_response(&outcome)
            })
        })
        .await;
        shaped.unwrap_or_else(|e| HttpResponse {
            status: 500,
            body: serde_json::json!({"success": false, "message": format!("the response could not be shaped: {e}")}).to_string(),
        })
    }

    fn compute_listing(&self) -> Listing {
        let entries: Vec<BackupEntry> = match LocalStore::new(&self.config.backup_dir).list() {
            Ok(l) => l.iter().map(BackupEntry::from).collect(),
            Err(e) => {
                tracing::warn!("{e}");
                Vec::new()
            }
        };
        let view = lock(&self.view).clone();
        let recognised = self.policy().recognise(&view, &entries).unwrap_or_default();
        tracing::debug!("backup directory listed for status and metrics: {} files, {} recognised", entries.len(), recognised.len());
        Listing { at: Instant::now(), entries, recognised }
    }

    /// The backup directory and its recognised count, at most [`LISTING_TTL`] old. However
    /// many callers come at once, one computes (on one blocking thread) and all share it.
    async fn listing(self: &Arc<Self>) -> Arc<Listing> {
        let fresh = |l: &Option<Arc<Listing>>| l.as_ref().filter(|l| l.at.elapsed() < LISTING_TTL).cloned();
        if let Some(l) = fresh(&lock(&self.listing)) {
            return l;
        }
        let _turn = self.listing_refresh.lock().await;
        if let Some(l) = fresh(&lock(&self.listing)) {
            return l;
        }
        let svc = Arc::clone(self);
        let computed = tokio::task::spawn_blocking(move || svc.compute_listing()).await;
        let listing = Arc::new(computed.unwrap_or_else(|_| Listing { at: Instant::now(), entries: Vec::new(), recognised: Vec::new() }));
        *lock(&self.listing) = Some(Arc::clone(&listing));
        listing
    }

    /// The status response, shaped by the policy.
    pub async fn status(self: &Arc<Self>) -> HttpResponse {
        let listing = self.listing().await;
        let svc = Arc::clone(self);
        let (last_drill, recent_runs) = tokio::task::spawn_blocking(move || (svc.last_drill(), svc.recent_runs(10))).await.unwrap_or_default();
        let policy = self.policy();
        let status = Status {
            now: now(),
            config: lock(&self.view).clone(),
            policy: policy.loaded(),
            local_backups: listing.entries.clone(),
            recognised: listing.recognised.clone(),
            last_run: lock(&self.last_run).clone(),
            next_run: *lock(&self.next_run),
            running: self.running(),
            last_drill,
            drills: match &self.drills {
                Ok(on) => format!("on: {on}"),
                Err(why) => format!("off: {why}"),
            },
            recent_runs,
        };
        let shaped = tokio::task::spawn_blocking(move || policy.shape_status(&status)).await;
        let shaped = shaped.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
        shaped.unwrap_or_else(|e| {
            tracing::error!("{e}");
            HttpResponse {
                status: 500,
                body: serde_json::json!({"success": false, "message": format!("the backup policy could not shape the status: {e}")}).to_string(),
            }
        })
    }

    /// The last drill of any database (status shows one).
    fn last_drill(&self) -> Option<LastRun> {
        self.state.last_of_kind(crate::state::RunKind::Drill).unwrap_or_else(|e| {
            tracing::error!("{e}");
            None
        })
    }

    /// The newest `n` runs of the history, for status.
    fn recent_runs(&self, n: usize) -> Vec<RunSummary> {
        let runs = self.state.recent(n).unwrap_or_else(|e| {
            tracing::error!("{e}");
            Vec::new()
        });
        runs.into_iter()
            .map(|r| RunSummary {
                kind: r.kind,
                database: r.database,
                started_at: r.started_at,
                finished_at: r.finished_at,
                outcome: r.outcome.unwrap_or_else(|| "running".into()),
                file_name: r.file_name,
                message: r.message.unwrap_or_default(),
            })
            .collect()
    }

    /// The history's newest runs (the API's `history`).
    pub fn history(&self, limit: usize) -> Result<Vec<crate::state::HistoryEntry>, crate::state::StateError> {
        self.state.recent(limit)
    }

    /// Prometheus text.
    pub async fn metrics_text(self: &Arc<Self>) -> String {
        let listing = self.listing().await;
        let mut per_database: Vec<crate::metrics::PerDatabase> = Vec::new();
        for (_, info) in &listing.recognised {
            let kind = crate::policy::kind_id(info.kind);
            match per_database.iter_mut().find(|d| d.database == info.database && d.kind == kind) {
                Some(d) => {
                    d.on_disk += 1;
                    d.newest_run_at = d.newest_run_at.max(info.run_at);
                }
                None => per_database.push(crate::metrics::PerDatabase {
                    database: info.database.clone(),
                    kind,
                    on_disk: 1,
                    newest_run_at: info.run_at,
                    last_run_ok: None,
                }),
            }
        }
        for (database, kind, ok) in lock(&self.last_entries).iter() {
            let kind = crate::policy::kind_id(*kind);
            match per_database.iter_mut().find(|d| &d.database == database && d.kind == kind) {
                Some(d) => d.last_run_ok = Some(*ok),
                None => per_database.push(crate::metrics::PerDatabase {
                    database: database.clone(),
                    kind,
                    on_disk: 0,
                    newest_run_at: 0,
                    last_run_ok: Some(*ok),
                }),
            }
        }
        per_database.sort_by(|a, b| (a.kind, &a.database).cmp(&(b.kind, &b.database)));
        // From the history, off the async threads.
        let svc = Arc::clone(self);
        let (drills, notification_failures) = tokio::task::spawn_blocking(move || {
            let drills = svc.state.drill_stats().unwrap_or_else(|e| {
                tracing::error!("{e}");
                Vec::new()
            });
            (drills, svc.state.notification_failures().unwrap_or_default())
        })
        .await
        .unwrap_or_default();
        self.metrics.render(&Gauges {
            drills,
            notification_failures,
            per_database,
            backups_on_disk: listing.recognised.len() as u64,
            running: self.running().is_some(),
            next_run: *lock(&self.next_run),
        })
    }
}

/// Loads a policy and runs `policy check` on it: a component that does not answer every
/// call sensibly never becomes the running policy.
pub fn load_checked(config: &Config, path: &std::path::Path) -> Result<WasmPolicy, crate::policy::PolicyError> {
    let policy = WasmPolicy::load_cached(path, config.policy_cache_dir.as_deref())?;
    if let Some(pinned) = &config.policy_sha256 {
        if !pinned.eq_ignore_ascii_case(&policy.info().sha256) {
            return Err(crate::policy::PolicyError::Pinned { path: path.to_path_buf(), found: policy.info().sha256.clone(), pinned: pinned.clone() });
        }
    }
    crate::policy::check::run(&policy, &config.policy, now())?;
    ef_backup_core::policy::check_fits(&policy, config)?;
    Ok(policy)
}

#[cfg(test)]
mod tests;

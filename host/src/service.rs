//! The long-running plugin: one backup at a time in this process (and, through a PostgreSQL
//! advisory lock, across replicas), the last run's outcome, metrics, and status. The HTTP
//! layer (`api`) and the scheduler (`schedule`) both go through here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::lock::{self, LockError, SlotLock};
use crate::engine::{self, BackupOptions, BackupReport};
use crate::metrics::{Gauges, Metrics};
use crate::policy::{self, BackupEntry, BackupOutcome, HttpResponse, LastRun, Policy, S3Outcome, Status};
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;

/// What the service answers for a backup request.
#[derive(Debug, Clone)]
pub struct BackupRun {
    pub outcome: BackupOutcome,
    /// None when the backup did not run (busy).
    pub report: Option<BackupReport>,
}

pub struct Service {
    config: Config,
    policy: RwLock<Arc<Policy>>,
    s3: Option<S3Store>,
    /// Held for the whole of a run, so shutdown can wait for it.
    run_lock: tokio::sync::Mutex<()>,
    /// The running backup's name: set means busy. Never two pg_dumps at once from here.
    running: Mutex<Option<String>>,
    last_run: Mutex<Option<LastRun>>,
    next_run: Mutex<Option<i64>>,
    /// The lock of the last scheduled slot this replica ran, held until the next slot so a
    /// replica whose timer fires late cannot run the same slot again.
    slot_lock: Mutex<Option<SlotLock>>,
    cancel: Arc<AtomicBool>,
    pub metrics: Metrics,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    pub fn new(config: Config, policy: Policy, s3: Option<S3Store>) -> Arc<Service> {
        Arc::new(Service {
            config,
            policy: RwLock::new(Arc::new(policy)),
            s3,
            run_lock: tokio::sync::Mutex::new(()),
            running: Mutex::new(None),
            last_run: Mutex::new(None),
            next_run: Mutex::new(None),
            slot_lock: Mutex::new(None),
            cancel: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the policy file again and, when it passes `policy check` (and the pin, if any),
    /// makes it the running policy; otherwise the current one stays and the error is returned.
    /// Returns the new policy's schedule when the policy changed.
    pub fn reload(&self) -> Result<Option<crate::policy::BackupSchedule>, crate::policy::PolicyError> {
        let current = self.policy();
        let path = current.info().path.clone();
        let fresh = load_checked(&self.config, &path)?;
        if fresh.info().sha256 == current.info().sha256 {
            return Ok(None);
        }
        let schedule = fresh.schedule(&policy::policy_config(&self.config))?;
        tracing::info!(
            "policy reloaded: {} (euraflow:backup@{}, sha256 {}, was {})",
            path.display(),
            fresh.info().wit_version,
            fresh.info().sha256,
            current.info().sha256
        );
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(Some(schedule))
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

    pub fn running(&self) -> Option<String> {
        lock(&self.running).clone()
    }

    /// Stops a running backup (pg_dump is killed, its partial file removed, its S3 upload
    /// aborted). Used when shutting down after the grace period.
    pub fn cancel_running(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Waits until no backup runs (and none can start).
    pub async fn wait_idle(&self) {
        let _guard = self.run_lock.lock().await;
    }

    /// Takes the advisory lock of a scheduled slot; false when another replica holds it.
    /// When the lock cannot be taken, the slot goes on to the run lock, which cannot be taken
    /// either: the slot is then recorded as a failed run (visible in status, metrics and alerts)
    /// rather than skipped with only a log line, and no pg_dump runs without the run lock.
    pub async fn claim_slot(self: &Arc<Self>, slot: i64) -> bool {
        let svc = Arc::clone(self);
        let claimed = tokio::task::spawn_blocking(move || {
            match lock::claim_slot(&svc.config, slot) {
                Ok(l) => {
                    *lock(&svc.slot_lock) = Some(l);
                    true
                }
                Err(LockError::Busy { .. }) => false,
                Err(e) => {
                    tracing::error!("{e}");
                    true
                }
            }
        })
        .await;
        claimed.unwrap_or(true)
    }

    /// Runs a backup now, unless one is running here or on another replica (then `busy`).
    pub async fn backup(self: &Arc<Self>) -> BackupRun {
        let policy = self.policy();
        let started = now();
        // `running` is the in-process lock: checked and set in one step, with the name the
        // policy chose, so a refused request can always say which backup is running.
        let name = {
            let mut running = lock(&self.running);
            if let Some(current) = running.as_ref() {
                self.metrics.busy_rejections_total.fetch_add(1, Ordering::Relaxed);
                return BackupRun { outcome: BackupOutcome::Busy(current.clone()), report: None };
            }
            let name = policy.backup_name(&policy::policy_config(&self.config), started);
            *running = Some(name.as_ref().map(String::clone).unwrap_or_else(|_| "a backup".into()));
            name
        };
        // Free whenever `running` was empty; held so that shutdown can wait for the run.
        let guard = self.run_lock.lock().await;
        let svc = Arc::clone(self);
        let policy_for_run = Arc::clone(&policy);
        let joined = tokio::task::spawn_blocking(move || {
            // Across replicas and the CLI: one backup of this database at a time.
            let run_lock = match lock::acquire(&svc.config) {
                Ok(l) => Arc::new(l),
                Err(LockError::Busy { .. }) => return None,
                Err(e) => {
                    tracing::error!("数据库备份失败: {e}");
                    return Some(e.into_report(name.ok()));
                }
            };
            let opts = BackupOptions {
                now: started,
                progress: false,
                cancel: Arc::clone(&svc.cancel),
                last_recorded_run: None,
                run_lock: Some(run_lock),
            };
            Some(engine::run_named(&svc.config, &policy_for_run, svc.s3.as_ref(), name, opts))
        })
        .await;
        drop(guard);
        *lock(&self.running) = None;
        let report = match joined {
            Ok(Some(report)) => report,
            Ok(None) => {
                tracing::info!("another ef-backup instance is running a backup of this database; not starting a second one");
                self.metrics.busy_rejections_total.fetch_add(1, Ordering::Relaxed);
                return BackupRun { outcome: BackupOutcome::Busy("another ef-backup instance".into()), report: None };
            }
            Err(e) => {
                let message = format!("the backup task failed: {e}");
                tracing::error!("{message}");
                let outcome = BackupOutcome::Failed(policy::BackupFailed { kind: policy::ErrorKind::Internal, message, file_name: None });
                self.record(&outcome, started, None);
                return BackupRun { outcome, report: None };
            }
        };
        self.record(&report.outcome, started, Some(&report));
        BackupRun { outcome: report.outcome.clone(), report: Some(report) }
    }

    fn record(&self, outcome: &BackupOutcome, started: i64, report: Option<&BackupReport>) {
        let finished = now();
        let m = &self.metrics;
        let last = match outcome {
            BackupOutcome::Done(d) => {
                m.successes_total.fetch_add(1, Ordering::Relaxed);
                m.last_success_timestamp.store(finished, Ordering::Relaxed);
                m.last_size_bytes.store(d.size_bytes, Ordering::Relaxed);
                m.last_duration_ms.store(report.map(|r| r.elapsed.as_millis() as u64).unwrap_or(0), Ordering::Relaxed);
                let message = match &d.s3 {
                    S3Outcome::Failed(e) => {
                        m.s3_upload_failures_total.fetch_add(1, Ordering::Relaxed);
                        format!("local backup ok; S3 upload failed: {e}")
                    }
                    S3Outcome::Uploaded(url) => format!("ok, uploaded to {url}"),
                    S3Outcome::Disabled => "ok (S3 disabled)".into(),
                };
                LastRun { started_at: started, finished_at: finished, succeeded: true, file_name: Some(d.file_name.clone()), message }
            }
            BackupOutcome::Failed(f) => {
                m.failures_total.fetch_add(1, Ordering::Relaxed);
                LastRun { started_at: started, finished_at: finished, succeeded: false, file_name: f.file_name.clone(), message: f.message.clone() }
            }
            BackupOutcome::Busy(_) => return,
        };
        *lock(&self.last_run) = Some(last);
    }

    /// The response for a backup run, shaped by the policy (or by the host when the policy
    /// cannot).
    pub fn shape_backup(&self, outcome: &BackupOutcome) -> HttpResponse {
        self.policy().shape_backup_response(outcome).unwrap_or_else(|e| {
            tracing::error!("{e}");
            policy::fallback_backup_response(outcome)
        })
    }

    fn local_listing(&self) -> Vec<BackupEntry> {
        match LocalStore::new(&self.config.backup_dir).list() {
            Ok(l) => l.iter().map(BackupEntry::from).collect(),
            Err(e) => {
                tracing::warn!("{e}");
                Vec::new()
            }
        }
    }

    /// The status response, shaped by the policy.
    pub async fn status(self: &Arc<Self>) -> HttpResponse {
        let svc = Arc::clone(self);
        let listing = tokio::task::spawn_blocking(move || svc.local_listing()).await.unwrap_or_default();
        let policy = self.policy();
        let status = Status {
            now: now(),
            config: policy::policy_config(&self.config),
            policy: policy.loaded(),
            local_backups: listing,
            last_run: lock(&self.last_run).clone(),
            next_run: *lock(&self.next_run),
            running: self.running(),
        };
        policy.shape_status(&status).unwrap_or_else(|e| {
            tracing::error!("{e}");
            HttpResponse {
                status: 500,
                body: serde_json::json!({"success": false, "message": format!("the backup policy could not shape the status: {e}")})
                    .to_string(),
            }
        })
    }

    /// Prometheus text.
    pub async fn metrics_text(self: &Arc<Self>) -> String {
        let svc = Arc::clone(self);
        let on_disk = tokio::task::spawn_blocking(move || {
            let listing = svc.local_listing();
            svc.policy().recognise(&policy::policy_config(&svc.config), &listing).map(|r| r.len() as u64).unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        self.metrics.render(&Gauges { backups_on_disk: on_disk, running: self.running().is_some(), next_run: *lock(&self.next_run) })
    }
}

/// Loads a policy and runs `policy check` on it: a component that does not answer every
/// call sensibly never becomes the running policy.
pub fn load_checked(config: &Config, path: &std::path::Path) -> Result<Policy, crate::policy::PolicyError> {
    let policy = Policy::load_cached(path, config.policy_cache_dir.as_deref())?;
    if let Some(pinned) = &config.policy_sha256 {
        if !pinned.eq_ignore_ascii_case(&policy.info().sha256) {
            return Err(crate::policy::PolicyError::Pinned {
                path: path.to_path_buf(),
                found: policy.info().sha256.clone(),
                pinned: pinned.clone(),
            });
        }
    }
    crate::policy::check::run(&policy, &policy::policy_config(config), now())?;
    Ok(policy)
}

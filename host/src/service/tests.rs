//! The service with a native policy, an in-memory mirror and a PostgreSQL that is not there:
//! what it records, shows and refuses, without a database or a WebAssembly component. (The
//! end-to-end tests run it with both.)

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::model::Target;
use crate::policy::native::NativePolicy;
use crate::store::memory::MemoryStore;

fn config(dir: &Path) -> Config {
    let vars: BTreeMap<String, String> = [
        ("EF__BACKUP_DIR", dir.join("backups").display().to_string()),
        ("EF__STATE_DIR", dir.join("state").display().to_string()),
        ("EF__DB_NAME", "app".to_string()),
        // Nothing listens there: the run lock cannot be taken.
        ("EF__DB_HOST", "127.0.0.1".to_string()),
        ("EF__DB_PORT", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Config::from_vars(&vars, dir).unwrap()
}

fn service(dir: &Path) -> Arc<Service> {
    let config = config(dir);
    let state = StateStore::open(&config).unwrap();
    let mirror: Arc<dyn Mirror> = Arc::new(MemoryStore::new(Target::S3));
    Service::new(config, Arc::new(NativePolicy::keeping(3)), Some(mirror), state, crate::alerts::Alerts::none())
}

fn body(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap()
}

#[tokio::test]
async fn a_run_that_cannot_take_its_lock_fails_closed_is_recorded_and_leaves_the_service_usable() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let run = svc.backup(Trigger::Manual).await;

    let BackupOutcome::Failed(failed) = &run.outcome else { panic!("{:?}", run.outcome) };
    assert_eq!(failed.file_name.as_deref().map(|n| n.starts_with("app_backup_")), Some(true), "{failed:?}");
    assert_eq!(svc.running(), None, "not left busy");
    let text = svc.metrics_text().await;
    assert!(text.contains("\nef_backup_failures_total 1\n"), "{text}");
    assert!(text.contains("\nef_backup_running 0\n"), "{text}");
    let status = body(&svc.status().await);
    assert_eq!(status["data"]["last_run"]["succeeded"], false, "{status}");
    assert!(std::fs::read_dir(dir.path().join("backups")).map_or(true, |mut d| d.next().is_none()), "no file written");

    // The next request runs (and fails) again: nothing stayed claimed.
    assert!(matches!(svc.backup(Trigger::Manual).await.outcome, BackupOutcome::Failed(_)));
    assert!(svc.metrics_text().await.contains("\nef_backup_failures_total 2\n"));

    // A restart finds the outcome in the state store.
    drop(svc);
    let again = service(dir.path());
    assert_eq!(body(&again.status().await)["data"]["last_run"]["succeeded"], false);
    assert!(again.metrics_text().await.contains("\nef_backup_failures_total 2\n"));
}

#[tokio::test]
async fn status_and_metrics_count_only_the_policys_backups() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for f in ["app_backup_100.sql.gz", "app_backup_200.sql.gz", "other_backup_1.sql.gz", "notes.txt", "app_backup_300.sql.gz.partial"] {
        std::fs::write(backups.join(f), b"x").unwrap();
    }
    let svc = service(dir.path());
    let status = body(&svc.status().await);
    assert_eq!(status["data"]["backups"], 2, "{status}");
    assert_eq!(status["data"]["last_run"], serde_json::Value::Null);
    assert!(svc.metrics_text().await.contains("\nef_backup_backups_on_disk 2\n"));
}

#[tokio::test]
async fn once_shutting_down_no_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    svc.wait_idle().await;
    let run = svc.backup(Trigger::Scheduled).await;
    assert!(matches!(&run.outcome, BackupOutcome::Busy(why) if why.contains("shutting down")), "{:?}", run.outcome);
    assert!(run.report.is_none());
    assert!(svc.metrics_text().await.contains("\nef_backup_failures_total 0\n"), "a refused run is not a failed one");
}

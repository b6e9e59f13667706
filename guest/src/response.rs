//! Response bodies, in the exact JSON shapes of the original plugin's README.

use serde::Serialize;

use crate::civil::DateTime;
use crate::policy::{self, Settings};
use crate::types::{BackupDone, BackupFailed, BackupKind, BackupOutcome, BackupRun, ErrorKind, HttpResponse, Status};

/// How many backups `recent` lists.
pub const RECENT: usize = 5;

pub(crate) fn mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0
}

fn json(status: u16, body: &impl Serialize) -> HttpResponse {
    // Serialising plain structs of strings and numbers cannot fail.
    HttpResponse { status, body: serde_json::to_string(body).expect("serialisable body") }
}

#[derive(Serialize)]
struct Envelope<D: Serialize> {
    success: bool,
    message: String,
    data: D,
}

#[derive(Serialize)]
struct Done {
    backup_file: String,
    backup_path: String,
    file_size_bytes: u64,
    file_size_mb: f64,
    timestamp: String,
    s3_uploaded: bool,
    s3_error: Option<String>,
}

#[derive(Serialize)]
struct Failed {
    backup_file: Option<String>,
    error_kind: &'static str,
    error: String,
}

#[derive(Serialize)]
struct Busy {
    running_backup: String,
}

pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Config => "config",
        ErrorKind::Dump => "dump",
        ErrorKind::Storage => "storage",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Policy => "policy",
        ErrorKind::Internal => "internal",
    }
}

/// The store id of the copy the original's `s3_uploaded` / `s3_error` fields report on. Copies
/// to other stores do not appear in the response (the original had none).
pub const S3_STORE: &str = "s3";

fn done(d: &BackupDone) -> HttpResponse {
    let (message, s3_uploaded, s3_error) = match d.copies.iter().find(|c| c.store == S3_STORE).map(|c| &c.result) {
        Some(Ok(_)) => ("数据库备份成功（含S3）", true, None),
        None => ("数据库备份成功（仅本地，S3 未启用）", false, None),
        Some(Err(e)) => ("数据库备份成功（仅本地，S3 上传失败）", false, Some(e.clone())),
    };
    let timestamp = policy::name_timestamp(&d.file_name)
        .map(str::to_string)
        .unwrap_or_else(|| DateTime::from_unix(d.started_at, policy::ZONE_OFFSET_SECS).compact());
    json(
        200,
        &Envelope {
            success: true,
            message: message.to_string(),
            data: Done {
                backup_file: d.file_name.clone(),
                backup_path: d.path.clone(),
                file_size_bytes: d.size_bytes,
                file_size_mb: mb(d.size_bytes),
                timestamp,
                s3_uploaded,
                s3_error,
            },
        },
    )
}

fn failed(f: &BackupFailed) -> HttpResponse {
    let status = match f.kind {
        ErrorKind::Timeout => 504,
        ErrorKind::Config => 503,
        _ => 500,
    };
    json(
        status,
        &Envelope {
            success: false,
            message: format!("数据库备份失败: {}", f.message),
            data: Failed { backup_file: f.file_name.clone(), error_kind: kind_name(f.kind), error: f.message.clone() },
        },
    )
}

pub(crate) fn kind_label(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Database => "database",
        BackupKind::Globals => "globals",
    }
}

/// A run of several databases: one entry per file, each in the shape of the single-database
/// response's `data` (with `database`, `kind` and `success` in front); 200 when every file was
/// written, else 500.
fn several(run: &BackupRun) -> HttpResponse {
    let entries: Vec<serde_json::Value> = run
        .entries
        .iter()
        .map(|e| {
            let body: serde_json::Value = match &e.outcome {
                Ok(d) => serde_json::from_str(&done(d).body).unwrap_or_default(),
                Err(f) => serde_json::from_str(&failed(f).body).unwrap_or_default(),
            };
            let data = body.get("data").cloned().unwrap_or_default();
            let mut entry = serde_json::json!({"database": e.database, "kind": kind_label(e.kind), "success": e.outcome.is_ok()});
            if let (Some(entry), Some(data)) = (entry.as_object_mut(), data.as_object()) {
                entry.extend(data.clone());
            }
            entry
        })
        .collect();
    let failed = run.entries.iter().filter(|e| e.outcome.is_err()).count();
    let ok = failed == 0 && !run.entries.is_empty();
    let message = if ok {
        format!("数据库备份成功: {} 个文件", run.entries.len())
    } else {
        format!("数据库备份失败: {failed}/{} 个文件失败", run.entries.len())
    };
    let body = serde_json::json!({"success": ok, "message": message, "data": {"backups": entries, "notes": run.notes}});
    HttpResponse { status: if ok { 200 } else { 500 }, body: body.to_string() }
}

pub fn backup(outcome: &BackupOutcome) -> HttpResponse {
    match outcome {
        BackupOutcome::Done(d) => done(d),
        BackupOutcome::Failed(f) => failed(f),
        BackupOutcome::Several(run) => several(run),
        BackupOutcome::Busy(running) => json(
            409,
            &Envelope {
                success: false, message: format!("已有备份正在进行: {running}，请稍后再试"), data: Busy { running_backup: running.clone() }
            },
        ),
    }
}

#[derive(Serialize)]
struct StatusBody {
    local_backups: LocalBackups,
    s3: S3Status,
    schedule: String,
    // Additive fields, after the original's three.
    policy: PolicyInfo,
    last_run: Option<LastRun>,
    next_run_at: Option<f64>,
    running_backup: Option<String>,
    /// Per database (and the globals): how many recognised backups, and the newest.
    databases: Vec<DbStatus>,
    /// The last restore drill, and whether drills run (and if not, why).
    last_drill: Option<LastRun>,
    drills: String,
    /// The newest runs of every kind (the host's history).
    recent_runs: Vec<RunRow>,
}

#[derive(Serialize)]
struct RunRow {
    kind: String,
    database: Option<String>,
    outcome: String,
    file: Option<String>,
    message: String,
    started_at: f64,
    finished_at: Option<f64>,
}

#[derive(Serialize)]
struct DbStatus {
    database: String,
    kind: &'static str,
    count: usize,
    newest_backup: String,
    newest_at: f64,
}

#[derive(Serialize)]
struct PolicyInfo {
    path: String,
    sha256: String,
    wit_version: String,
}

#[derive(Serialize)]
struct LocalBackups {
    count: usize,
    total_size_mb: f64,
    retention_days: u32,
    backup_dir: String,
    recent: Vec<Recent>,
}

#[derive(Serialize)]
struct Recent {
    filename: String,
    size_mb: f64,
    created_at: f64,
}

#[derive(Serialize)]
struct S3Status {
    enabled: bool,
    bucket: Option<String>,
    region: Option<String>,
    retention_days: u32,
}

#[derive(Serialize)]
struct LastRun {
    success: bool,
    backup_file: Option<String>,
    message: String,
    started_at: f64,
    finished_at: f64,
}

/// The host lists only the backups `parse-name` recognised, each with what it said: all of them
/// count, newest run first.
pub fn status(s: &Status, settings: &Settings) -> HttpResponse {
    let mut ours: Vec<&crate::types::BackupEntry> = s.local_backups.iter().collect();
    ours.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.name.cmp(&a.name)));
    let total: u64 = ours.iter().map(|b| b.size_bytes).sum();
    let body = StatusBody {
        local_backups: LocalBackups {
            count: ours.len(),
            total_size_mb: mb(total),
            retention_days: settings.local_retention_days,
            backup_dir: s.config.backup_dir.clone(),
            recent: ours
                .iter()
                .take(RECENT)
                .map(|b| Recent { filename: b.name.clone(), size_mb: mb(b.size_bytes), created_at: b.modified as f64 })
                .collect(),
        },
        s3: S3Status {
            enabled: s.config.s3.is_some(),
            bucket: s.config.s3.as_ref().map(|c| c.bucket.clone()),
            region: s.config.s3.as_ref().map(|c| c.region.clone()),
            retention_days: settings.s3_retention_days,
        },
        schedule: policy::schedule(settings).description,
        policy: PolicyInfo { path: s.policy.path.clone(), sha256: s.policy.sha256.clone(), wit_version: s.policy.wit_version.clone() },
        last_run: s.last_run.as_ref().map(|r| LastRun {
            success: r.succeeded,
            backup_file: r.file_name.clone(),
            message: r.message.clone(),
            started_at: r.started_at as f64,
            finished_at: r.finished_at as f64,
        }),
        next_run_at: s.next_run.map(|t| t as f64),
        running_backup: s.running.clone(),
        databases: per_database(&ours),
        last_drill: s.last_drill.as_ref().map(|r| LastRun {
            success: r.succeeded,
            backup_file: r.file_name.clone(),
            message: r.message.clone(),
            started_at: r.started_at as f64,
            finished_at: r.finished_at as f64,
        }),
        drills: s.drills.clone(),
        recent_runs: s
            .recent_runs
            .iter()
            .map(|r| RunRow {
                kind: r.kind.clone(),
                database: r.database.clone(),
                outcome: r.outcome.clone(),
                file: r.file_name.clone(),
                message: r.message.clone(),
                started_at: r.started_at as f64,
                finished_at: r.finished_at.map(|t| t as f64),
            })
            .collect(),
    };
    json(200, &body)
}

/// `ours` (newest first) grouped by database and kind, in order of each group's newest backup.
fn per_database(ours: &[&crate::types::BackupEntry]) -> Vec<DbStatus> {
    let mut out: Vec<DbStatus> = Vec::new();
    for b in ours {
        let kind = kind_label(b.info.kind);
        match out.iter_mut().find(|d| d.database == b.info.database && d.kind == kind) {
            Some(d) => d.count += 1,
            None => out.push(DbStatus {
                database: b.info.database.clone(),
                kind,
                count: 1,
                newest_backup: b.name.clone(),
                newest_at: b.info.run_at as f64,
            }),
        }
    }
    out
}

/// The databases a message is about, for its subject.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{config, entry as recognised};
    use crate::types::{BackupEntry, CopyOutcome, LastRun as WitLastRun, LoadedPolicy};

    fn loaded() -> LoadedPolicy {
        LoadedPolicy { path: "/p.wasm".into(), sha256: "ab".into(), wit_version: "0.2.0".into() }
    }

    fn done_with(copies: Vec<CopyOutcome>) -> BackupOutcome {
        BackupOutcome::Done(BackupDone {
            file_name: "euraflow_backup_20251104_013000.sql.gz".into(),
            path: "/path/to/backups/euraflow_backup_20251104_013000.sql.gz".into(),
            size_bytes: 12_345_678,
            started_at: 1_762_191_000,
            finished_at: 1_762_191_010,
            copies,
        })
    }

    fn copy(store: &str, result: Result<&str, &str>) -> CopyOutcome {
        CopyOutcome { store: store.into(), result: result.map(str::to_string).map_err(str::to_string) }
    }

    #[test]
    fn success_with_s3_is_byte_for_byte_the_originals() {
        let r = backup(&done_with(vec![copy("s3", Ok("s3://b/k"))]));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            r#"{"success":true,"message":"数据库备份成功（含S3）","data":{"backup_file":"euraflow_backup_20251104_013000.sql.gz","backup_path":"/path/to/backups/euraflow_backup_20251104_013000.sql.gz","file_size_bytes":12345678,"file_size_mb":11.77,"timestamp":"20251104_013000","s3_uploaded":true,"s3_error":null}}"#
        );
    }

    #[test]
    fn s3_off_and_s3_failed_say_so() {
        let off = backup(&done_with(vec![]));
        assert_eq!(off.status, 200);
        assert!(off.body.contains(r#""message":"数据库备份成功（仅本地，S3 未启用）""#), "{}", off.body);
        assert!(off.body.contains(r#""s3_uploaded":false,"s3_error":null"#), "{}", off.body);

        let failed = backup(&done_with(vec![copy("s3", Err("NoSuchBucket: the bucket does not exist"))]));
        assert_eq!(failed.status, 200);
        assert!(failed.body.contains("S3 上传失败"), "{}", failed.body);
        assert!(failed.body.contains(r#""s3_uploaded":false,"s3_error":"NoSuchBucket: the bucket does not exist""#), "{}", failed.body);
    }

    #[test]
    fn failures_are_not_2xx() {
        for (kind, code) in [(ErrorKind::Dump, 500), (ErrorKind::Timeout, 504), (ErrorKind::Config, 503), (ErrorKind::Storage, 500)] {
            let r =
                backup(&BackupOutcome::Failed(BackupFailed { kind, message: "pg_dump exited with status 1: \"quoted\"".into(), file_name: None }));
            assert_eq!(r.status, code);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["success"], false);
            assert_eq!(v["data"]["error"], "pg_dump exited with status 1: \"quoted\"");
            assert_eq!(v["data"]["backup_file"], serde_json::Value::Null);
        }
        let busy = backup(&BackupOutcome::Busy("euraflow_backup_20251104_013000.sql.gz".into()));
        assert_eq!(busy.status, 409);
        assert!(busy.body.contains(r#""running_backup":"euraflow_backup_20251104_013000.sql.gz""#));
    }

    #[test]
    fn status_shape() {
        let entry = |name: &str, size: u64, modified: i64| BackupEntry { size_bytes: size, modified, ..recognised(name) };
        let st = Status {
            now: 1_762_191_000,
            config: config(&[], Some(30)),
            policy: loaded(),
            local_backups: vec![
                entry("euraflow_backup_20251103_130000.sql.gz", 12_345_678, 1_762_146_000),
                entry("euraflow_backup_20251104_010000.sql.gz", 12_345_678, 1_762_189_200),
            ],
            last_run: Some(WitLastRun {
                started_at: 1_762_189_200,
                finished_at: 1_762_189_210,
                succeeded: true,
                file_name: Some("euraflow_backup_20251104_010000.sql.gz".into()),
                message: "ok".into(),
            }),
            next_run: Some(1_762_232_400),
            running: None,
            last_drill: Some(WitLastRun {
                started_at: 1_762_203_600,
                finished_at: 1_762_203_630,
                succeeded: false,
                file_name: Some("euraflow_backup_20251104_010000.sql.gz".into()),
                message: "table public.t: 2 rows restored, the backup holds 3".into(),
            }),
            drills: "on".into(),
            recent_runs: vec![crate::types::RunRecord {
                kind: "drill".into(),
                database: Some("euraflow".into()),
                started_at: 1_762_203_600,
                finished_at: None,
                outcome: "running".into(),
                file_name: None,
                message: String::new(),
            }],
        };
        let r = status(&st, &Settings::default());
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            concat!(
                r#"{"local_backups":{"count":2,"total_size_mb":23.55,"retention_days":7,"backup_dir":"/var/backups","recent":["#,
                r#"{"filename":"euraflow_backup_20251104_010000.sql.gz","size_mb":11.77,"created_at":1762189200.0},"#,
                r#"{"filename":"euraflow_backup_20251103_130000.sql.gz","size_mb":11.77,"created_at":1762146000.0}]},"#,
                r#""s3":{"enabled":true,"bucket":"b","region":"us-east-1","retention_days":30},"#,
                r#""schedule":"每天北京时间 01:00 和 13:00","#,
                r#""policy":{"path":"/p.wasm","sha256":"ab","wit_version":"0.2.0"},"#,
                r#""last_run":{"success":true,"backup_file":"euraflow_backup_20251104_010000.sql.gz","message":"ok","started_at":1762189200.0,"finished_at":1762189210.0},"#,
                r#""next_run_at":1762232400.0,"running_backup":null,"#,
                r#""databases":[{"database":"euraflow","kind":"database","count":2,"newest_backup":"euraflow_backup_20251104_010000.sql.gz","newest_at":1762189200.0}],"#,
                r#""last_drill":{"success":false,"backup_file":"euraflow_backup_20251104_010000.sql.gz","message":"table public.t: 2 rows restored, the backup holds 3","started_at":1762203600.0,"finished_at":1762203630.0},"#,
                r#""drills":"on","#,
                r#""recent_runs":[{"kind":"drill","database":"euraflow","outcome":"running","file":null,"message":"","started_at":1762203600.0,"finished_at":null}]}"#
            )
        );
    }

    #[test]
    fn status_per_database_counts_each_database_and_the_globals() {
        let e = |name: &str, database: &str, kind: BackupKind, run_at: i64| BackupEntry {
            name: name.into(),
            size_bytes: 1,
            modified: run_at,
            info: crate::types::NameInfo { database: database.into(), kind, run_at },
        };
        let ours = [
            e("shop_backup_2", "shop", BackupKind::Database, 2),
            e("pg1-ab_globals_2", "pg1-ab", BackupKind::Globals, 2),
            e("crm_backup_1", "crm", BackupKind::Database, 1),
            e("shop_backup_1", "shop", BackupKind::Database, 1),
        ];
        let refs: Vec<&BackupEntry> = ours.iter().collect();
        let got: Vec<(String, &str, usize, String)> =
            per_database(&refs).into_iter().map(|d| (d.database, d.kind, d.count, d.newest_backup)).collect();
        assert_eq!(
            got,
            [
                ("shop".to_string(), "database", 2, "shop_backup_2".to_string()),
                ("pg1-ab".to_string(), "globals", 1, "pg1-ab_globals_2".to_string()),
                ("crm".to_string(), "database", 1, "crm_backup_1".to_string())
            ]
        );
    }

    #[test]
    fn status_without_s3() {
        let mut st_config = config(&[], None);
        st_config.backup_dir = "/b".into();
        let st = Status {
            now: 0,
            config: st_config,
            policy: loaded(),
            local_backups: vec![],
            last_run: None,
            next_run: None,
            running: None,
            last_drill: None,
            drills: String::new(),
            recent_runs: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&status(&st, &Settings::default()).body).unwrap();
        assert_eq!(v["s3"], serde_json::json!({"enabled": false, "bucket": null, "region": null, "retention_days": 30}));
        assert_eq!(v["local_backups"]["count"], 0);
        assert_eq!(v["local_backups"]["total_size_mb"], 0.0);
    }

    /// Copies to stores other than `s3` leave the original's fields alone; the `s3` copy is
    /// found wherever it is in the list.
    #[test]
    fn only_the_s3_copy_is_reported() {
        let other_only = backup(&done_with(vec![copy("gcs", Err("down"))]));
        assert!(other_only.body.contains(r#""message":"数据库备份成功（仅本地，S3 未启用）""#), "{}", other_only.body);
        let both = backup(&done_with(vec![copy("gcs", Err("down")), copy("s3", Ok("s3://b/k"))]));
        assert!(both.body.contains(r#""s3_uploaded":true,"s3_error":null"#), "{}", both.body);
    }

    /// The timestamp comes from the name whatever the format's suffix, else from the start.
    #[test]
    fn timestamp_for_every_suffix() {
        for (name, want) in [
            ("euraflow_backup_20251104_013000.sql.zst.age", "20251104_013000"),
            ("srv_globals_20251104_013000.sql.gz", "20251104_013000"),
            ("odd.sql.gz", "20251104_013000"),
        ] {
            let outcome = BackupOutcome::Done(BackupDone {
                file_name: name.into(),
                path: format!("/b/{name}"),
                size_bytes: 1,
                started_at: 1_762_191_000,
                finished_at: 1_762_191_001,
                copies: vec![],
            });
            let v: serde_json::Value = serde_json::from_str(&backup(&outcome).body).unwrap();
            assert_eq!(v["data"]["timestamp"], want, "{name}");
        }
    }
}

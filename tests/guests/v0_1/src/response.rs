//! Response bodies, in the exact JSON shapes of the original plugin's README.

use serde::Serialize;

use crate::civil::DateTime;
use crate::policy::{self, Settings};
use crate::types::{BackupDone, BackupFailed, BackupOutcome, ErrorKind, HttpResponse, S3Outcome, Status};

/// How many backups `recent` lists.
pub const RECENT: usize = 5;

fn mb(bytes: u64) -> f64 {
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

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Config => "config",
        ErrorKind::Dump => "dump",
        ErrorKind::Storage => "storage",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Policy => "policy",
        ErrorKind::Internal => "internal",
    }
}

fn done(d: &BackupDone) -> HttpResponse {
    let (message, s3_uploaded, s3_error) = match &d.s3 {
        S3Outcome::Uploaded(_) => ("数据库备份成功（含S3）", true, None),
        S3Outcome::Disabled => ("数据库备份成功（仅本地，S3 未启用）", false, None),
        S3Outcome::Failed(e) => ("数据库备份成功（仅本地，S3 上传失败）", false, Some(e.clone())),
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

pub fn backup(outcome: &BackupOutcome) -> HttpResponse {
    match outcome {
        BackupOutcome::Done(d) => done(d),
        BackupOutcome::Failed(f) => failed(f),
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

pub fn status(s: &Status, settings: &Settings) -> HttpResponse {
    let names = policy::Names::new(&s.config.database, settings.legacy_prefix.as_deref());
    let mut ours: Vec<(&crate::types::BackupEntry, i64)> = s.local_backups.iter().filter_map(|b| names.parse(&b.name).map(|t| (b, t))).collect();
    ours.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.name.cmp(&a.0.name)));
    let total: u64 = ours.iter().map(|(b, _)| b.size_bytes).sum();
    let body = StatusBody {
        local_backups: LocalBackups {
            count: ours.len(),
            total_size_mb: mb(total),
            retention_days: settings.local_retention_days,
            backup_dir: s.config.backup_dir.clone(),
            recent: ours
                .iter()
                .take(RECENT)
                .map(|(b, _)| Recent { filename: b.name.clone(), size_mb: mb(b.size_bytes), created_at: b.modified as f64 })
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
    };
    json(200, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::config;
    use crate::types::{BackupEntry, LastRun as WitLastRun, LoadedPolicy};

    fn loaded() -> LoadedPolicy {
        LoadedPolicy { path: "/p.wasm".into(), sha256: "ab".into(), wit_version: "0.1.0".into() }
    }

    fn done_with(s3: S3Outcome) -> BackupOutcome {
        BackupOutcome::Done(BackupDone {
            file_name: "euraflow_backup_20251104_013000.sql.gz".into(),
            path: "/path/to/backups/euraflow_backup_20251104_013000.sql.gz".into(),
            size_bytes: 12_345_678,
            started_at: 1_762_191_000,
            finished_at: 1_762_191_010,
            s3,
        })
    }

    #[test]
    fn success_with_s3_is_byte_for_byte_the_originals() {
        let r = backup(&done_with(S3Outcome::Uploaded("s3://b/k".into())));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            r#"{"success":true,"message":"数据库备份成功（含S3）","data":{"backup_file":"euraflow_backup_20251104_013000.sql.gz","backup_path":"/path/to/backups/euraflow_backup_20251104_013000.sql.gz","file_size_bytes":12345678,"file_size_mb":11.77,"timestamp":"20251104_013000","s3_uploaded":true,"s3_error":null}}"#
        );
    }

    #[test]
    fn s3_off_and_s3_failed_say_so() {
        let off = backup(&done_with(S3Outcome::Disabled));
        assert_eq!(off.status, 200);
        assert!(off.body.contains(r#""message":"数据库备份成功（仅本地，S3 未启用）""#), "{}", off.body);
        assert!(off.body.contains(r#""s3_uploaded":false,"s3_error":null"#), "{}", off.body);

        let failed = backup(&done_with(S3Outcome::Failed("NoSuchBucket: the bucket does not exist".into())));
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
        let entry = |name: &str, size: u64, modified: i64| BackupEntry { name: name.into(), size_bytes: size, modified };
        let st = Status {
            now: 1_762_191_000,
            config: config(&[], Some(30)),
            policy: loaded(),
            local_backups: vec![
                entry("euraflow_backup_20251103_130000.sql.gz", 12_345_678, 1_762_146_000),
                entry("foreign.sql.gz", 999_999_999, 1_762_146_000),
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
                r#""policy":{"path":"/p.wasm","sha256":"ab","wit_version":"0.1.0"},"#,
                r#""last_run":{"success":true,"backup_file":"euraflow_backup_20251104_010000.sql.gz","message":"ok","started_at":1762189200.0,"finished_at":1762189210.0},"#,
                r#""next_run_at":1762232400.0,"running_backup":null}"#
            )
        );
    }

    #[test]
    fn status_without_s3() {
        let mut st_config = config(&[], None);
        st_config.backup_dir = "/b".into();
        let st = Status { now: 0, config: st_config, policy: loaded(), local_backups: vec![], last_run: None, next_run: None, running: None };
        let v: serde_json::Value = serde_json::from_str(&status(&st, &Settings::default()).body).unwrap();
        assert_eq!(v["s3"], serde_json::json!({"enabled": false, "bucket": null, "region": null, "retention_days": 30}));
        assert_eq!(v["local_backups"]["count"], 0);
        assert_eq!(v["local_backups"]["total_size_mb"], 0.0);
    }
}

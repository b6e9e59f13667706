//! Component-level tests: the host loads the real default policy component (built by
//! scripts/build-policy.sh) and checks every export's answers, JSON bytes included.

use std::path::PathBuf;

use ef_backup_policy_wasm::{
    self as policy, BackupDone, BackupEntry, BackupFailed, BackupOutcome, ErrorKind, Policy, PolicyConfig, PolicyError, S3Outcome, Status, Target,
    WasmPolicy,
};

const NOW: i64 = 1_762_191_000; // 2025-11-04 01:30:00 in Beijing
const DAY: i64 = 86_400;

fn wasm_path() -> PathBuf {
    let path = std::env::var_os("EF_TEST_POLICY_WASM").map(PathBuf::from).unwrap_or_else(policy::default_policy_path);
    assert!(path.is_file(), "{} missing: build it with scripts/build-policy.sh (scripts/test.sh does)", path.display());
    path
}

/// Compiled once per test binary: compiling with Cranelift dominates a debug test run.
fn load() -> &'static WasmPolicy {
    static POLICY: std::sync::OnceLock<WasmPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| WasmPolicy::load(&wasm_path()).expect("the default policy loads"))
}

fn config(s3_days: Option<u32>, settings: &[(&str, &str)]) -> PolicyConfig {
    PolicyConfig {
        database: "euraflow".into(),
        databases: vec!["euraflow".into()],
        globals_label: None,
        backup_dir: "/path/to/backups".into(),
        s3: s3_days.map(|d| policy::PolicyS3Config {
            bucket: "your-backup-bucket-name".into(),
            region: "us-east-1".into(),
            prefix: String::new(),
            retention_days: d,
        }),
        settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        format: ef_backup_core::codec::Format::GZIP,
    }
}

fn entry(name: String, modified: i64) -> BackupEntry {
    BackupEntry { name, size_bytes: 12_345_678, modified }
}

#[test]
fn identity() {
    let p = load();
    assert_eq!(p.info().wit_version, "0.2.0");
    assert_eq!(p.info().sha256.len(), 64);
}

#[test]
fn schedule_is_beijing_01_and_13() {
    let s = load().schedule(&config(None, &[])).unwrap();
    assert_eq!(s.crons, ["0 1,13 * * *"]);
    assert_eq!(s.timezone, "Asia/Shanghai");
    assert_eq!(s.description, "每天北京时间 01:00 和 13:00");
}

#[test]
fn names_round_trip() {
    let p = load();
    let c = config(None, &[]);
    assert_eq!(p.backup_name(&c, NOW).unwrap(), "euraflow_backup_20251104_013000.sql.gz");
    assert_eq!(p.parse_name(&c, "euraflow_backup_20251104_013000.sql.gz").unwrap(), Some(policy::NameInfo::dump("euraflow", NOW)));
    for foreign in ["notes.sql.gz", "euraflow_backup_20251104_013000.sql.gz.partial", "euraflow_backup_2025.sql.gz"] {
        assert_eq!(p.parse_name(&c, foreign).unwrap(), None, "{foreign}");
    }
}

/// The host tells the policy the format; the default policy's names end with its suffix and
/// are recognised again, whatever the format.
#[test]
fn names_carry_every_formats_suffix() {
    let p = load();
    for format in ef_backup_core::codec::FORMATS {
        let c = PolicyConfig { format: *format, ..config(None, &[]) };
        let name = p.backup_name(&c, NOW).unwrap();
        assert_eq!(name, format!("euraflow_backup_20251104_013000{}", format.suffix()));
        assert_eq!(p.parse_name(&c, &name).unwrap(), Some(policy::NameInfo::dump("euraflow", NOW)), "{name}");
    }
}

#[test]
fn retention_local_and_s3() {
    let p = load();
    let c = config(Some(30), &[]);
    // Twice a day for 40 days, newest first, plus foreign files that must survive.
    let mut listing: Vec<BackupEntry> = (0..80).map(|i| entry(p.backup_name(&c, NOW - i * DAY / 2).unwrap(), NOW)).collect();
    listing.push(entry("manual_before_upgrade.sql.gz".into(), NOW - 400 * DAY));
    listing.push(entry("euraflow_backup_copy.sql.gz".into(), NOW - 400 * DAY));

    // The order of the answer is the policy's; what counts is the set.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let local = sorted(p.select_expired(&listing, NOW, Target::Local, &c).unwrap());
    // Kept: 7 days (i = 0..=14, 15 backups). Deleted: the other 65.
    let want: Vec<String> = sorted((15..80).map(|i| p.backup_name(&c, NOW - i * DAY / 2).unwrap()).collect());
    assert_eq!(local, want);

    let s3 = sorted(p.select_expired(&listing, NOW, Target::S3, &c).unwrap());
    let want: Vec<String> = sorted((61..80).map(|i| p.backup_name(&c, NOW - i * DAY / 2).unwrap()).collect());
    assert_eq!(s3, want);
}

#[test]
fn retention_keeps_minimum_when_all_are_old() {
    let p = load();
    let c = config(Some(30), &[("local_keep_last", "3"), ("s3_keep_last", "2")]);
    let listing: Vec<BackupEntry> = (0..10).map(|i| entry(p.backup_name(&c, NOW - (100 + i) * DAY).unwrap(), NOW)).collect();
    assert_eq!(p.select_expired(&listing, NOW, Target::Local, &c).unwrap().len(), 7);
    let s3 = p.select_expired(&listing, NOW, Target::S3, &c).unwrap();
    assert_eq!(s3.len(), 8);
    assert!(!s3.contains(&listing[0].name) && !s3.contains(&listing[1].name));
}

fn done(s3: S3Outcome) -> BackupOutcome {
    BackupOutcome::Done(BackupDone {
        file_name: "euraflow_backup_20251104_013000.sql.gz".into(),
        path: "/path/to/backups/euraflow_backup_20251104_013000.sql.gz".into(),
        size_bytes: 12_345_678,
        started_at: NOW,
        finished_at: NOW + 9,
        s3,
    })
}

#[test]
fn backup_response_bytes_match_the_original_readme() {
    let r = load().shape_backup_response(&done(S3Outcome::Uploaded("s3://b/k".into()))).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"success":true,"message":"数据库备份成功（含S3）","data":{"backup_file":"euraflow_backup_20251104_013000.sql.gz","backup_path":"/path/to/backups/euraflow_backup_20251104_013000.sql.gz","file_size_bytes":12345678,"file_size_mb":11.77,"timestamp":"20251104_013000","s3_uploaded":true,"s3_error":null}}"#
    );
}

#[test]
fn backup_response_variants() {
    let p = load();
    let off = p.shape_backup_response(&done(S3Outcome::Disabled)).unwrap();
    assert_eq!(off.status, 200);
    assert!(off.body.contains(r#""message":"数据库备份成功（仅本地，S3 未启用）""#), "{}", off.body);
    let failed_s3 = p.shape_backup_response(&done(S3Outcome::Failed("AccessDenied".into()))).unwrap();
    assert!(failed_s3.body.contains(r#""s3_uploaded":false,"s3_error":"AccessDenied""#), "{}", failed_s3.body);
    let failed = p
        .shape_backup_response(&BackupOutcome::Failed(BackupFailed {
            kind: ErrorKind::Dump,
            message: "pg_dump exited with status 1".into(),
            file_name: None,
        }))
        .unwrap();
    assert_eq!(failed.status, 500);
    assert_eq!(
        failed.body,
        r#"{"success":false,"message":"数据库备份失败: pg_dump exited with status 1","data":{"backup_file":null,"error_kind":"dump","error":"pg_dump exited with status 1"}}"#
    );
    let busy = p.shape_backup_response(&BackupOutcome::Busy("x.sql.gz".into())).unwrap();
    assert_eq!(busy.status, 409);
}

#[test]
fn status_bytes() {
    let p = load();
    let local_backups =
        vec![entry("euraflow_backup_20251104_130000.sql.gz".into(), 1_730_707_200), entry("someone_elses.sql.gz".into(), 1_730_707_200)];
    let recognised = p.recognise(&config(Some(30), &[]), &local_backups).unwrap();
    assert_eq!(recognised.len(), 1);
    let st = Status {
        now: NOW,
        config: config(Some(30), &[]),
        policy: p.loaded(),
        local_backups,
        recognised,
        last_run: None,
        next_run: None,
        running: None,
        last_drill: None,
        drills: String::new(),
        recent_runs: Vec::new(),
    };
    let r = p.shape_status(&st).unwrap();
    assert_eq!(r.status, 200);
    let loaded = p.loaded();
    let want = [
        r#"{"local_backups":{"count":1,"total_size_mb":11.77,"retention_days":7,"backup_dir":"/path/to/backups","#,
        r#""recent":[{"filename":"euraflow_backup_20251104_130000.sql.gz","size_mb":11.77,"created_at":1730707200.0}]},"#,
        r#""s3":{"enabled":true,"bucket":"your-backup-bucket-name","region":"us-east-1","retention_days":30},"#,
        r#""schedule":"每天北京时间 01:00 和 13:00","#,
        &format!(r#""policy":{{"path":{},"sha256":"{}","wit_version":"0.2.0"}},"#, serde_json::json!(loaded.path), loaded.sha256),
        r#""last_run":null,"next_run_at":null,"running_backup":null,"#,
        r#""databases":[{"database":"euraflow","kind":"database","count":1,"newest_backup":"euraflow_backup_20251104_130000.sql.gz","newest_at":1762232400.0}],"#,
        r#""last_drill":null,"drills":"","recent_runs":[]}"#,
    ]
    .concat();
    assert_eq!(r.body, want);
}

#[test]
fn selections_come_from_the_listing_and_spare_the_newest() {
    let p = load();
    let c = config(None, &[]);
    let listing: Vec<BackupEntry> = (0..30).map(|i| entry(p.backup_name(&c, NOW - i * DAY).unwrap(), NOW)).collect();
    let expired = p.select_expired(&listing, NOW, Target::Local, &c).unwrap();
    assert!(!expired.is_empty());
    assert!(expired.iter().all(|n| listing.iter().any(|b| &b.name == n)));
    assert!(!expired.contains(&listing[0].name), "the newest backup is never selected");
}

#[test]
fn policy_check_runs_every_export() {
    let p = load();
    let report = policy::check::run(p, &config(Some(30), &[]), NOW).unwrap();
    let text = report.lines.join("\n");
    assert!(text.contains("wit package: euraflow:backup@0.2.0"), "{text}");
    assert!(text.contains("sample name: euraflow_backup_20251104_013000.sql.gz"), "{text}");
    assert!(text.contains("busy → 409"), "{text}");
}

#[test]
fn truncated_component_is_a_clean_error() {
    let bytes = std::fs::read(wasm_path()).unwrap();
    for cut in [9, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = WasmPolicy::from_bytes(std::path::Path::new("cut.wasm"), &bytes[..cut]).unwrap_err();
        assert!(matches!(err, PolicyError::Invalid { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().starts_with("policy cut.wasm is not a valid component"), "{err}");
    }
}

/// The hostile test guest (tests/guests/hostile, built by scripts/test.sh), compiled once.
fn hostile() -> &'static WasmPolicy {
    static POLICY: std::sync::OnceLock<WasmPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let path = std::env::var_os("EF_TEST_HOSTILE_WASM").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm/wasm32-wasip2/wasm-release/ef_test_hostile_policy.wasm")
        });
        assert!(path.is_file(), "{} missing: build it with scripts/build-policy.sh tests/guests/hostile", path.display());
        WasmPolicy::load(&path).expect("the hostile policy loads")
    })
}

/// `backup-name` of the hostile guest told to misbehave with `mode`, on a thread of its own:
/// a host that let the guest hold its thread would hang the test, so it gives up after 20 s
/// (compiling the guest, once, takes a few seconds of that).
fn hostile_backup_name(mode: &'static str) -> (Result<String, PolicyError>, std::time::Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let policy = hostile();
        let started = std::time::Instant::now();
        let r = policy.backup_name(&config(None, &[("hostile", mode)]), NOW);
        let _ = tx.send((r, started.elapsed()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|_| panic!("{mode}: the guest held the host thread for 20 s"))
}

/// Pins issue 12 item 15: the 1 s per call covers waits in WASI imports, not only guest code:
/// a `std::thread::sleep` (a monotonic-clock pollable) and a pollable that is never ready end
/// as a timeout after about a second, and the same policy answers the next call.
#[test]
fn a_guest_blocked_in_wasi_times_out_and_the_host_stays_usable() {
    for mode in ["backup-name:sleep", "backup-name:pollable", "backup-name:loop"] {
        let (result, took) = hostile_backup_name(mode);
        let err = result.unwrap_err();
        assert!(matches!(err, PolicyError::Timeout { call: "backup-name", .. }), "{mode}: {err}");
        assert!(err.to_string().contains("backup-name ran longer than 1s and was stopped"), "{err}");
        assert!(took < std::time::Duration::from_secs(5), "{mode}: stopped only after {took:?}");
        let (fine, _) = hostile_backup_name("none:none");
        assert_eq!(fine.unwrap(), format!("hostile_{NOW}.sql.gz"), "after {mode}");
    }
}

/// Pins issue 12 item 15: the host's resource table of a call is bounded; a guest that opens
/// handles (here pollables) without end traps instead of growing the host's memory.
#[test]
fn a_guest_hoarding_host_handles_is_stopped() {
    let (result, _) = hostile_backup_name("backup-name:handles");
    let err = result.unwrap_err();
    assert!(matches!(err, PolicyError::Trap { call: "backup-name", .. }), "{err}");
    assert!(err.to_string().contains(&format!("more than {} host handles", policy::RESOURCE_LIMIT)), "{err}");
}

/// Pins issue 12 (invalid `EF__POLICY_*` values reach the operator): the default policy logs an
/// invalid value at error level, and `policy check` fails naming the variable; an unknown key
/// (maybe meant for another policy) only warns.
#[test]
fn policy_check_fails_on_an_invalid_setting() {
    let p = load();
    let err = policy::check::run(p, &config(None, &[("local_keep_last", "abc")]), NOW).unwrap_err();
    assert!(matches!(err, PolicyError::ErrorLogged { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("EF__POLICY_LOCAL_KEEP_LAST=\"abc\""), "{text}");
    assert_eq!(text.matches("EF__POLICY_LOCAL_KEEP_LAST=").count(), 1, "once, not once per call: {text}");
    policy::check::run(p, &config(None, &[("some_other_policys_key", "1")]), NOW).expect("an unknown key only warns");
}

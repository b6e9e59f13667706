//! Offsite copies an attacker cannot erase (issue 16 item 5), against moto: every upload is
//! under S3 Object Lock for EF__S3_OBJECT_LOCK_DAYS, retention never removes a locked backup,
//! and a deployment that may not delete at all keeps uploading and skips retention with a
//! warning.
//!
//! What moto does not do, so these tests cannot show: it ignores the lock headers of a
//! multipart upload's start (ef-backup then sets the retention on the finished object, the
//! path these tests take), it sets a retention on an object in a bucket without Object Lock
//! instead of refusing, and a plain delete in a locked bucket only adds a delete marker (as S3
//! does) rather than failing.

use std::path::Path;

use ef_backup_e2e::{backup_json, ef, own_db, s3, tempdir, vars, S3};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A bucket of the test's own, on the shared server.
fn bucket(s3: &S3, label: &str, locked: bool) -> S3 {
    let name = format!("ef-{label}-{}", std::process::id());
    let mut args = vec!["mkbucket", name.as_str()];
    if locked {
        args.push("locked");
    }
    s3.probe(&args);
    S3 { bucket: name, ..s3.clone() }
}

/// Old backups of `db` under the default policy's names, in January 2020 (long expired).
fn plant(s3: &S3, dir: &Path, prefix: &str, db: &str, days: &[u32], lock_until: Option<i64>) -> Vec<String> {
    let body = dir.join("old.sql.gz");
    std::fs::write(&body, b"old").unwrap();
    let names: Vec<String> = days.iter().map(|d| format!("{db}_backup_202001{d:02}_010000.sql.gz")).collect();
    for n in &names {
        let key = format!("{prefix}{n}");
        match lock_until {
            Some(until) => s3.probe(&["put-locked", &s3.bucket, &key, body.to_str().unwrap(), "GOVERNANCE", &until.to_string()]),
            None => s3.probe(&["put", &s3.bucket, &key, body.to_str().unwrap()]),
        };
    }
    names
}

fn s3_names(db: &str, backups: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let list = ef(db, backups, env, &["list", "--json"]);
    assert!(list.ok(), "{}", list.all());
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    v.as_array().unwrap().iter().filter(|r| r["location"] == "s3").map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_upload_is_locked_and_retention_leaves_locked_backups() {
    let db = own_db("ef_e2e_s3_lock");
    let s3 = bucket(&s3(), "locked", true);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let prefix = "lock/";
    let locked = plant(&s3, dir.path(), prefix, db, &[1, 2], Some(now() + 3 * DAY));
    let unlocked = plant(&s3, dir.path(), prefix, db, &[3, 4], None);
    let list = s3.vars(prefix);
    let env = vars(
        &list,
        &[
            ("EF__S3_OBJECT_LOCK_DAYS", "2"),
            ("EF__S3_OBJECT_LOCK_MODE", "COMPLIANCE"),
            ("EF__POLICY_S3_KEEP_LAST", "1"),
            ("EF__BACKUP_RETENTION_DAYS", "1"),
            ("EF__BACKUP_MIN_KEEP", "1"),
        ],
    );
    let started = now();
    let (run, v) = backup_json(db, &backups, &env, &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!((&v["data"]["s3_uploaded"], &v["data"]["s3_error"]), (&serde_json::json!(true), &serde_json::Value::Null), "{v}");
    let name = v["data"]["backup_file"].as_str().unwrap();

    let head = s3.probe_json(&["head", &s3.bucket, &format!("{prefix}{name}")]);
    assert_eq!(head["lock_mode"], "COMPLIANCE", "{head}");
    let until = head["lock_until"].as_i64().unwrap_or_else(|| panic!("the new backup is locked: {head}"));
    assert!((started + 2 * DAY - 60..=now() + 2 * DAY + 60).contains(&until), "locked for 2 days from the run: {until} (run at {started})");

    for n in &locked {
        assert!(run.stderr.contains(&format!("S3 retention keeps {n:?}")), "{n}: {}", run.stderr);
        assert!(run.stderr.contains("its S3 Object Lock holds it until"), "{}", run.stderr);
        assert!(!run.stderr.contains(&format!("S3 retention deleted: {n}")), "{n}: {}", run.stderr);
    }
    for n in &unlocked {
        assert!(run.stderr.contains(&format!("S3 retention deleted: {n}")), "{n}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("S3 备份清理失败"), "{}", run.stderr);
    let mut expected: Vec<String> = locked.iter().cloned().chain([name.to_string()]).collect();
    expected.sort();
    let mut listed = s3_names(db, &backups, &env);
    listed.sort();
    assert_eq!(listed, expected, "the locked backups stay listed and restorable");
}

#[test]
fn a_deployment_that_may_not_delete_keeps_uploading_and_skips_retention_with_a_warning() {
    let db = own_db("ef_e2e_s3_nodelete");
    let s3 = bucket(&s3(), "nodelete", false);
    s3.probe(&["deny-delete", &s3.bucket]);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let prefix = "immutable/";
    let old = plant(&s3, dir.path(), prefix, db, &[1, 2], None);
    let list = s3.vars(prefix);
    let env = vars(&list, &[("EF__POLICY_S3_KEEP_LAST", "1"), ("EF__BACKUP_RETENTION_DAYS", "1"), ("EF__BACKUP_MIN_KEEP", "1")]);
    for round in 0..2 {
        // Names carry the second: two runs in one second would be one name.
        std::thread::sleep(std::time::Duration::from_millis(1100 * round));
        let (run, v) = backup_json(db, &backups, &env, &[]);
        assert!(run.ok(), "round {round}: a refused delete is not a failed run (exit 0): {}", run.all());
        assert_eq!(v["data"]["s3_uploaded"], true, "round {round}: {v}");
        assert!(run.stderr.contains("S3 retention skipped: this deployment may not delete objects"), "{}", run.stderr);
        assert!(run.stderr.contains("AccessDenied"), "the store's answer is named: {}", run.stderr);
        assert!(!run.stderr.contains("S3 备份清理失败"), "{}", run.stderr);
    }
    let listed = s3_names(db, &backups, &env);
    assert_eq!(listed.len(), old.len() + 2, "nothing was deleted, both runs uploaded: {listed:?}");
    for n in &old {
        assert!(listed.contains(n), "{n}: {listed:?}");
    }
}

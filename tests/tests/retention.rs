//! Retention can never be disabled or fooled (issue 12 items 5-8): an odd file name, a guest
//! that traps or hangs on one name, a future-dated name, another database's backups in the
//! same directory, or a crashed run's partial file on a full disk.

use std::path::Path;
use std::time::{Duration, Instant};

use ef_backup_e2e::{ef, files, http, psql, s3, tempdir, Mount, Run, Serve};

/// A small database of its own, created once per name.
fn small_db(name: &'static str, rows: u32) -> &'static str {
    static MADE: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if !made.contains(&name) {
        psql("postgres", &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        psql(name, &format!("CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, {rows}) i"));
        made.push(name);
    }
    name
}

fn hostile() -> String {
    std::env::var("EF_TEST_HOSTILE_WASM").expect("EF_TEST_HOSTILE_WASM (scripts/test.sh builds it)")
}

/// Old backups of `db` under the default policy's names, one a day in January 2020.
fn old_backups(dir: &Path, db_part: &str, days: std::ops::RangeInclusive<u32>) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = days.map(|d| format!("{db_part}_backup_202001{d:02}_010000.sql.gz")).collect();
    for n in &names {
        std::fs::write(dir.join(n), b"old").unwrap();
    }
    names
}

fn backup(db: &str, dir: &Path, extra: &[(&str, &str)]) -> (Run, String) {
    let run = ef(db, dir, extra, &["backup", "--json"]);
    assert!(run.ok(), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    let name = v["data"]["backup_file"].as_str().map(str::to_string).unwrap_or_default();
    (run, name)
}

/// Our well-formed backups in `dir` (not the odd names the tests plant).
fn ours(dir: &Path, prefix: &str) -> Vec<String> {
    files(dir).into_iter().filter(|f| f.starts_with(prefix) && f.ends_with(".sql.gz") && f.is_ascii()).collect()
}

fn metric(port: u16, name: &str) -> f64 {
    let body = http(port, "GET", "/metrics", &[], b"").body;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Pins issue 12 item 5: a name that made the default policy trap (a byte slice inside `年`)
/// is just not ours: retention still runs, status answers 200 and /metrics counts our backups.
#[test]
fn an_odd_name_does_not_stop_retention_status_or_metrics() {
    let db = small_db("ef_e2e_ret_odd", 100);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backups(&backups, db, 1..=6);
    let odd = [format!("{db}_backup_2025年1_013000.sql.gz"), "euraflow_backup_2025年1_013000.sql.gz".to_string(), "年.sql.gz".to_string()];
    for n in &odd {
        std::fs::write(backups.join(n), b"odd").unwrap();
    }
    let serve = Serve::start(db, dir.path(), &[("EF__POLICY_LOCAL_KEEP_LAST", "3"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0")]);
    let r = serve.post("/api/ef/v1/backup/manual");
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json()["data"]["backup_file"].as_str().unwrap().to_string();
    let mut want = vec![old[4].clone(), old[5].clone(), new];
    want.sort();
    assert_eq!(ours(&backups, &format!("{db}_backup_2")), want, "retention ran: the 3 newest of ours stay");
    assert!(odd.iter().all(|n| backups.join(n).exists()), "odd names are foreign, never deleted");
    let st = serve.get("/api/ef/v1/backup/status");
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.json()["local_backups"]["count"], 3, "{}", st.body);
    assert_eq!(metric(serve.port, "ef_backup_backups_on_disk"), 3.0);
    assert!(!serve.log_text().contains("trapped"), "{}", serve.log_text());
}

/// Pins issue 12 item 5 for any guest: one that traps (or hangs) on one name loses only that
/// name; the others are still recognised, retention runs and `list` works. The failure is
/// logged once per name, as a warning.
#[test]
fn a_guest_that_traps_or_hangs_on_one_name_loses_only_that_name() {
    let db = small_db("ef_e2e_ret_hostile", 100);
    let policy = hostile();
    for mode in ["parse-name:trap-non-ascii", "parse-name:loop-non-ascii"] {
        let dir = tempdir();
        let backups = dir.path().join("backups");
        std::fs::create_dir_all(&backups).unwrap();
        let old: Vec<String> = (1..=6).map(|i| format!("hostile_{}.sql.gz", 1_600_000_000 + i)).collect();
        for n in old.iter().chain(["hostile_年.sql.gz".to_string(), "é.sql.gz".to_string()].iter()) {
            std::fs::write(backups.join(n), b"old").unwrap();
        }
        let vars = [("EF__BACKUP_POLICY", policy.as_str()), ("EF__POLICY_HOSTILE", mode)];
        let started = Instant::now();
        let (run, _) = backup(db, &backups, &vars);
        assert!(started.elapsed() < Duration::from_secs(60), "{mode}: hung");
        assert!(!run.stderr.contains("retention skipped"), "{mode}: {}", run.stderr);
        let after = files(&backups);
        assert_eq!(after.iter().filter(|f| f.starts_with("hostile_1")).count(), 3, "{mode}: the hostile policy keeps 3: {after:?}");
        assert!(after.contains(&"hostile_年.sql.gz".to_string()) && after.contains(&"é.sql.gz".to_string()), "{mode}");
        let warned = run.stderr.lines().filter(|l| l.contains("WARN") && l.contains("parse-name") && l.contains("hostile_年.sql.gz")).count();
        assert_eq!(warned, 1, "{mode}: one warning for the name: {}", run.stderr);

        let list = ef(db, &backups, &vars, &["list", "--json"]);
        assert!(list.ok(), "{mode}: {}", list.all());
        let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3, "{mode}: {}", list.stdout);
    }
}

/// Pins issue 12 item 6: a name dated years ahead is not "the newest": with a policy that
/// keeps only its newest, it made retention delete the backup just written and every real
/// one. The host keeps the EF__BACKUP_MIN_KEEP (3) newest real ones and logs the oddity;
/// the future-dated file itself stays the policy's call (the default policy keeps it).
#[test]
fn a_future_dated_name_cannot_make_retention_delete_real_backups() {
    let db = small_db("ef_e2e_ret_future", 100);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backups(&backups, db, 1..=5);
    let future = format!("{db}_backup_20991231_010000.sql.gz");
    std::fs::write(backups.join(&future), b"from the future").unwrap();
    let keep_one = [("EF__POLICY_LOCAL_KEEP_LAST", "1"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0")];
    let (run, new) = backup(db, &backups, &keep_one);
    let mut want = vec![old[3].clone(), old[4].clone(), new.clone(), future.clone()];
    want.sort();
    assert_eq!(ours(&backups, &format!("{db}_backup_")), want, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{future:?} is dated more than a day in the future")), "{}", run.stderr);
    assert!(run.stderr.contains("it is among the newest EF__BACKUP_MIN_KEEP backups"), "{}", run.stderr);
}

/// Pins issue 12 items 6 and "S3 retention logs the names it deleted": S3 retention goes
/// through the same rules, and names each object it deleted.
#[test]
fn s3_retention_keeps_the_minimum_and_logs_each_deleted_name() {
    let db = small_db("ef_e2e_ret_s3", 100);
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let prefix = format!("ret-{}/", std::process::id());
    let body = dir.path().join("old.sql.gz");
    std::fs::write(&body, b"old").unwrap();
    let old: Vec<String> = (1..=5).map(|d| format!("{db}_backup_202001{d:02}_010000.sql.gz")).collect();
    for n in &old {
        s3.probe(&["put", &s3.bucket, &format!("{prefix}{n}"), body.to_str().unwrap()]);
    }
    let foreign = format!("{prefix}euraflow_backup_20200101_010000.sql.gz");
    s3.probe(&["put", &s3.bucket, &foreign, body.to_str().unwrap()]);
    let vars = s3.vars(&prefix);
    let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("EF__POLICY_S3_KEEP_LAST", "1"), ("EF__BACKUP_RETENTION_DAYS", "1")]);
    let (run, _) = backup(db, &backups, &env);
    // Policy: keep 1 (the new one). Host: keep 3 (the new one and the 2 newest old ones).
    for n in &old[..3] {
        assert!(run.stderr.contains(&format!("S3 retention deleted: {n}")), "{n}: {}", run.stderr);
    }
    for n in &old[3..] {
        assert!(!run.stderr.contains(&format!("S3 retention deleted: {n}")), "{n}: {}", run.stderr);
        assert!(run.stderr.contains(&format!("S3 retention keeps {n:?}")), "{n}: {}", run.stderr);
    }
    let list = ef(db, &backups, &env, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    let in_s3 = v.as_array().unwrap().iter().filter(|r| r["location"] == "s3").count();
    assert_eq!(in_s3, 3, "{}", list.stdout);
    assert!(list.stderr.contains("1 backup(s) named euraflow_backup_*.sql.gz in s3://"), "{}", list.stderr);
}

/// Pins issue 12 item 7: names carry the database, so deployments of different databases
/// sharing one directory never delete (or count) each other's backups, even with tight
/// retention; a database name that is no safe file name gets an encoded, distinct prefix.
#[test]
fn two_databases_sharing_a_directory_never_delete_each_others_backups() {
    let a = small_db("ef_e2e_ret_a", 100);
    let b = small_db("ef_e2e_ret_b", 100);
    let odd = small_db("ef e2e/ret.c", 100);
    let odd_part = "ef%20e2e%2Fret%2Ec";
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let tight = [("EF__POLICY_LOCAL_KEEP_LAST", "1"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0"), ("EF__BACKUP_MIN_KEEP", "1")];
    let mut newest = std::collections::BTreeMap::new();
    for round in 0..2 {
        for (db, part) in [(a, a), (b, b), (odd, odd_part)] {
            old_backups(&backups, part, 1..=3);
            let (run, name) = backup(db, &backups, &tight);
            assert!(name.starts_with(&format!("{part}_backup_")), "{name}");
            newest.insert(part, name);
            let present = files(&backups);
            for (other, their_newest) in &newest {
                assert!(present.contains(their_newest), "round {round}: {db}'s run deleted {other}'s {their_newest}: {}", run.stderr);
            }
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Each keeps exactly its own newest; the others' files were never counted as its own.
    for part in [a, b, odd_part] {
        assert_eq!(ours(&backups, &format!("{part}_backup_")), [newest[part].clone()], "{:?}", files(&backups));
    }
    let list = ef(a, &backups, &[], &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, [newest[a].as_str()]);
}

/// Pins issue 12 item 7 (legacy names): `euraflow_backup_*` files in the directory of a
/// deployment of another database are never orphaned silently: start-up says how many and
/// what to do; with EF__POLICY_LEGACY_PREFIX=euraflow they are this deployment's again.
#[test]
fn legacy_names_are_announced_and_can_be_adopted() {
    let db = small_db("ef_e2e_ret_legacy", 100);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let legacy = old_backups(&backups, "euraflow", 1..=4);
    let list = ef(db, &backups, &[], &["list", "--json"]);
    assert!(list.ok(), "{}", list.all());
    assert_eq!(list.stdout.trim(), "[]");
    assert!(list.stderr.contains("4 backup(s) named euraflow_backup_*.sql.gz in"), "{}", list.stderr);
    assert!(list.stderr.contains("EF__POLICY_LEGACY_PREFIX=euraflow"), "{}", list.stderr);
    assert!(list.stderr.contains(&format!("\"{db}_backup_${{f#euraflow_backup_}}\"")), "{}", list.stderr);

    let serve = Serve::start(db, dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log_text().contains("4 backup(s) named euraflow_backup_*.sql.gz") {
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(serve);

    let adopt = [("EF__POLICY_LEGACY_PREFIX", "euraflow"), ("EF__POLICY_LOCAL_KEEP_LAST", "2"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0")];
    let list = ef(db, &backups, &adopt, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "{}", list.stdout);
    assert!(!list.stderr.contains("not managed by this deployment"), "{}", list.stderr);
    let (_, new) = backup(db, &backups, &adopt);
    assert!(new.starts_with(&format!("{db}_backup_")), "new backups get the new name: {new}");
    // Keep 2 by the policy, 3 by EF__BACKUP_MIN_KEEP: the new one and the two newest legacy ones.
    let mut want = vec![legacy[2].clone(), legacy[3].clone(), new];
    want.sort();
    assert_eq!(files(&backups).into_iter().filter(|f| f.ends_with(".sql.gz")).collect::<Vec<_>>(), want);
}

/// Pins issue 12 item 8: a crashed run's partial of our name is removed before the next
/// backup starts, so it cannot fill the disk for ever (it made every later backup fail with
/// ENOSPC); partials that are not ours stay.
#[test]
fn a_stale_partial_on_a_full_disk_is_removed_before_the_backup() {
    let db = small_db("ef_e2e_ret_partial", 20_000);
    let dir = tempdir();
    // The disk: room for two backups; the stale partial leaves room for half of one.
    let (_, probe) = backup(db, &dir.path().join("probe"), &[]);
    let size = std::fs::metadata(dir.path().join("probe").join(&probe)).unwrap().len();
    let disk = 2 * size + (1 << 20);
    let foreign = ["euraflow_backup_20200101_010000.sql.gz.partial", "notes.partial"];
    let backups = dir.path().join("backups");
    let _mount = Mount::tmpfs(&backups, &format!("{}k", disk / 1024));
    let stale = backups.join(format!("{db}_backup_20200101_010000.sql.gz.partial"));
    std::fs::write(&stale, vec![1u8; (disk - 2 * (100 << 10) - 64 * 1024 - size / 2) as usize]).unwrap();
    // Closed at once: an open descriptor would keep the space after the unlink (a crashed writer holds none).
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(std::time::SystemTime::now() - Duration::from_secs(3 * 86_400)).unwrap();
    for n in foreign {
        std::fs::write(backups.join(n), vec![7u8; 100 << 10]).unwrap();
    }
    let run = ef(db, &backups, &[], &["backup", "--json"]);
    let ls = std::process::Command::new("ls").arg("-la").arg(&backups).output().unwrap();
    assert!(run.ok(), "the backup fits once the stale partial is gone: {}\n{}", run.all(), String::from_utf8_lossy(&ls.stdout));
    assert!(!stale.exists());
    assert!(run.stderr.contains("left over by an interrupted backup"), "{}", run.stderr);
    assert!(foreign.iter().all(|n| backups.join(n).exists()), "{:?}", files(&backups));
    assert_eq!(ours(&backups, &format!("{db}_backup_")).len(), 1);
}

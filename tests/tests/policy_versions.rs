//! Both contract versions, through the real binary: a component built from the released
//! `euraflow:backup@0.1.0` (tests/guests/v0_1, today's default policy as it was when 0.1.0 was
//! frozen) keeps loading, checking and backing up, and the default policy (0.2.0, frozen since
//! drills and notifications landed) does the same and takes over the 0.1.0 policy's backups
//! (the names did not change).

use ef_backup_e2e::{ef, files, psql, tempdir};

fn v01() -> String {
    std::env::var("EF_TEST_V01_WASM").expect("EF_TEST_V01_WASM (scripts/test.sh builds it)")
}

fn db() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        psql("postgres", "DROP DATABASE IF EXISTS ef_e2e_versions WITH (FORCE)");
        psql("postgres", "CREATE DATABASE ef_e2e_versions");
        psql("ef_e2e_versions", "CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i");
    });
    "ef_e2e_versions"
}

#[test]
fn a_0_1_0_component_loads_checks_and_backs_up() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let v01 = v01();
    let with = [("EF__BACKUP_POLICY", v01.as_str())];
    let check = ef(db(), &backups, &with, &["policy", "check"]);
    assert!(check.ok(), "{}", check.all());
    assert!(check.stdout.contains("wit package: euraflow:backup@0.1.0"), "{}", check.stdout);
    assert!(!check.stdout.contains("notices:"), "0.1.0 cannot shape notifications: {}", check.stdout);

    for _ in 0..2 {
        let run = ef(db(), &backups, &with, &["backup"]);
        assert!(run.ok(), "{}", run.all());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let made = files(&backups);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().all(|n| n.starts_with("ef_e2e_versions_backup_") && n.ends_with(".sql.gz")), "{made:?}");
    let list = ef(db(), &backups, &with, &["list"]);
    assert!(list.ok(), "{}", list.all());
    assert!(made.iter().all(|n| list.stdout.contains(n.as_str())), "{}", list.stdout);
}

#[test]
fn the_default_0_2_0_policy_checks_backs_up_and_takes_over_0_1_0_backups() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let v01 = v01();
    let old = ef(db(), &backups, &[("EF__BACKUP_POLICY", v01.as_str())], &["backup"]);
    assert!(old.ok(), "{}", old.all());
    let old_name = files(&backups).pop().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let check = ef(db(), &backups, &[], &["policy", "check"]);
    assert!(check.ok(), "{}", check.all());
    assert!(check.stdout.contains("wit package: euraflow:backup@0.2.0"), "{}", check.stdout);
    assert!(!check.stderr.contains("pre-release"), "0.2.0 is released: {}", check.stderr);
    assert!(check.stdout.contains("notices:     failure → "), "{}", check.stdout);
    assert!(!check.stderr.contains("for deletion"), "sample retention is not logged as if it were real: {}", check.stderr);

    let run = ef(db(), &backups, &[], &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let names = files(&backups);
    assert_eq!(names.len(), 2, "{names:?}");
    let list = ef(db(), &backups, &[], &["list"]);
    assert!(list.ok(), "{}", list.all());
    assert!(list.stdout.contains(&old_name), "the 0.2 policy recognises the 0.1.0 policy's backup: {}", list.stdout);
}

#[test]
fn a_0_2_0_policy_names_its_retention_reasons_in_the_log() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    // Keep one local backup: every older one is selected, with the policy's reason logged.
    let keep_one = [("EF__POLICY_LOCAL_KEEP_LAST", "1"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0"), ("EF__BACKUP_MIN_KEEP", "1")];
    for _ in 0..3 {
        let run = ef(db(), &backups, &keep_one, &["backup"]);
        assert!(run.ok(), "{}", run.all());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let run = ef(db(), &backups, &keep_one, &["backup"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stderr.contains("the policy selects \"ef_e2e_versions_backup_"), "{}", run.stderr);
    assert!(run.stderr.contains("for deletion (local): "), "{}", run.stderr);
    assert_eq!(files(&backups).len(), 1, "{:?}", files(&backups));
}

/// Found by review: the host asked a 0.2 policy's `parse-name` again for every listed name
/// inside the single second of `select-expired` (and of `shape-status`), so a directory with
/// enough other files made every answer time out: retention never ran, the disk filled. Now
/// recognition runs once, each name on its own budget, and the 0.2 calls get its result.
#[test]
fn many_other_files_do_not_stop_a_0_2_0_policys_retention() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for i in 0..60_000 {
        std::fs::write(backups.join(format!("other_{i}.sql.gz")), b"").unwrap();
    }
    let keep_one = [("EF__POLICY_LOCAL_KEEP_LAST", "1"), ("EF__POLICY_LOCAL_RETENTION_DAYS", "0"), ("EF__BACKUP_MIN_KEEP", "1")];
    for _ in 0..2 {
        let run = ef(db(), &backups, &keep_one, &["backup"]);
        assert!(run.ok(), "{}", run.all());
        assert!(!run.stderr.contains("retention skipped"), "{}", run.stderr);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ours: Vec<String> = files(&backups).into_iter().filter(|n| n.starts_with("ef_e2e_versions_backup_")).collect();
    assert_eq!(ours.len(), 1, "retention ran: {ours:?}");
    assert_eq!(files(&backups).len(), 60_001);
}

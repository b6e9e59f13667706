//! One backup at a time, really: the run lock that `serve` and the CLI share, what happens when
//! it is lost or cannot be taken, and that ef-backup's own idle lock sessions never block a
//! restore. The real binary against a real PostgreSQL (and S3 server).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ef_backup_e2e::{drop_db, ef, ef_command, env, fake_pg_bin, files, free_port, own_db, psql, s3, tempdir, Run, Serve};

const MANUAL: &str = "/api/ef/v1/backup/manual";

/// ef-backup's run-lock key for `db` (FNV-1a of its lock name), as pg_locks shows it.
fn run_key(db: &str) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("ef-backup:run:{db}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 32, h & 0xffff_ffff)
}

/// The backend holding `db`'s run lock, once one does (waits up to `limit`).
fn run_lock_holder(db: &str, limit: Duration) -> Option<String> {
    let (high, low) = run_key(db);
    let sql =
        format!("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = {high}::oid AND objid = {low}::oid AND objsubid = 1");
    let deadline = Instant::now() + limit;
    loop {
        let pid = psql("postgres", &sql);
        if !pid.is_empty() {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backups_in(dir: &Path) -> Vec<String> {
    files(dir).into_iter().filter(|f| f.contains(".sql.gz")).collect()
}

/// Pins issue 12 item 11: a run lock whose session is terminated mid-backup (pg_terminate_backend,
/// as a DBA or a connection pooler's reaper would) is noticed before the commit: the run fails
/// saying the lock was lost and keeps nothing, since another process may be backing up by then.
/// (Before, the CLI took no run lock at all, and `serve` never looked at its lock again.)
#[test]
fn a_run_lock_terminated_mid_backup_fails_the_run_and_keeps_nothing() {
    let db = own_db("ef_lock_lost");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let bin = fake_pg_bin(dir.path(), "sleep 4\nexec \"$REAL\" \"$@\"");
    let child = ef_command(db, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())])
        .arg("backup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let holder = run_lock_holder(db, Duration::from_secs(30)).expect("the CLI backup takes the run lock");
    let app = psql("postgres", &format!("SELECT application_name || ' ' || datname FROM pg_stat_activity WHERE pid = {holder}"));
    assert_eq!(app, "ef-backup-lock postgres", "lock sessions are named and live in the maintenance database");
    assert_eq!(psql("postgres", &format!("SELECT pg_terminate_backend({holder})")), "t");
    let run: Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("the run lock of database ef_lock_lost was lost"), "{}", run.all());
    assert!(backups_in(&backups).is_empty(), "nothing committed, no partial left: {:?}", files(&backups));
    drop_db(db);
}

/// Pins issue 12 item 12: a CLI `backup` during a `serve` backup of the same database answers
/// busy with its own exit code (3) and starts no second pg_dump (before, it ran one alongside).
#[test]
fn a_cli_backup_during_a_serve_backup_answers_busy() {
    let db = own_db("ef_lock_busy");
    let dir = tempdir();
    let slow = fake_pg_bin(&dir.path().join("slow"), "sleep 4\nexec \"$REAL\" \"$@\"");
    let serve = Serve::start(db, &dir.path().join("serve"), &[("EF__PG_BIN", slow.to_str().unwrap())]);
    let (port, auth) = (serve.port, serve.auth());
    let manual = std::thread::spawn(move || ef_backup_e2e::http(port, "POST", MANUAL, &[("Authorization", &auth)], b""));
    run_lock_holder(db, Duration::from_secs(30)).expect("serve takes the run lock");

    let counted = dir.path().join("cli-pg_dump-runs");
    let bin = fake_pg_bin(&dir.path().join("cli"), &format!("echo run >> {}\nexec \"$REAL\" \"$@\"", counted.display()));
    let cli_backups = dir.path().join("cli-backups");
    let run: Run = ef_command(db, &cli_backups, &[("EF__PG_BIN", bin.to_str().unwrap())]).arg("backup").output().unwrap().into();
    assert_eq!(run.code, Some(3), "busy: {}", run.all());
    assert!(run.all().contains("another ef-backup process holds the run lock of database ef_lock_busy"), "{}", run.all());
    assert!(!counted.exists(), "the CLI started a pg_dump while serve was backing up");
    assert!(backups_in(&cli_backups).is_empty(), "{:?}", files(&cli_backups));

    let r = manual.join().unwrap();
    assert_eq!(r.status, 200, "the serve backup itself is unaffected: {}", r.body);
    drop(serve);
    drop_db(db);
}

/// Pins issue 12 item 12 (smaller things): a CLI `backup` whose local backup succeeded but whose
/// S3 upload failed exits 4, not 0 (a cron job or systemd timer must notice), and keeps the
/// local file.
#[test]
fn local_ok_but_s3_failed_has_its_own_exit_code() {
    let db = own_db("ef_lock_s3_down");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let s3 = s3();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let vars = s3.vars("s3-down/");
    let mut extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("EF__AWS_ENDPOINT_URL", &unreachable));
    let run = ef(db, &backups, &extra, &["backup"]);
    assert_eq!(run.code, Some(4), "{}", run.all());
    assert!(run.stdout.contains("upload FAILED"), "{}", run.all());
    let kept = backups_in(&backups);
    assert_eq!(kept.len(), 1, "the local backup is kept: {kept:?}");
    assert!(kept[0].ends_with(".sql.gz"), "{kept:?}");
    drop_db(db);
}

/// Pins issue 12 item 11 (fail closed): when `serve` cannot take the run lock, the backup is
/// not run "anyway" (before: a warning, then a pg_dump without the lock); it fails and says why.
#[test]
fn a_run_lock_that_cannot_be_taken_fails_the_run() {
    let db = own_db("ef_lock_fails");
    let dir = tempdir();
    // A psql that refuses the long-lived sessions (lock sessions read SQL from stdin: no -c)
    // and runs everything else.
    let bin = fake_pg_bin(dir.path(), "exec \"$REAL\" \"$@\"");
    let psql_path = bin.join("psql");
    std::fs::remove_file(&psql_path).unwrap();
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" -c \"*|*--version*) exec {real} \"$@\";; esac\necho 'psql: error: lock sessions are refused by this test' >&2\nexit 2\n",
        real = env().pg_bin.join("psql").display()
    );
    std::fs::write(&psql_path, script).unwrap();
    std::fs::set_permissions(&psql_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let serve = Serve::start(db, &dir.path().join("serve"), &[("EF__PG_BIN", bin.to_str().unwrap())]);
    let r = serve.post(MANUAL);
    assert_eq!(r.status, 500, "{}", r.body);
    let body = r.json();
    assert_eq!(body["success"], false, "{}", r.body);
    let message = body["message"].as_str().unwrap_or_default().to_string() + &r.body;
    assert!(message.contains("cannot take the run lock of database ef_lock_fails"), "{}", r.body);
    assert!(message.contains("lock sessions are refused by this test"), "{}", r.body);
    assert!(backups_in(&dir.path().join("serve/backups")).is_empty(), "no backup ran without the lock");
    drop(serve);
    drop_db(db);
}

/// Pins issue 12 item 13: the idle session holding a scheduled slot's lock (kept until the next
/// slot) never blocks `restore --drop-existing` of the backed-up database. Before, that session
/// was connected to the database itself, so the restore failed with "stop the application".
#[test]
fn an_idle_slot_lock_never_blocks_a_restore_of_the_database() {
    let db = own_db("ef_lock_restore");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let run = ef(db, &backups, &[], &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let name = backups_in(&backups).pop().unwrap();

    // One slot a minute, a few seconds from now: the slot runs (its backup fails at once, so no
    // pg_dump stays connected) and then its lock session sits idle until the next minute.
    let second = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3) % 60;
    let cron = format!("{second} * * * * *");
    let failing = fake_pg_bin(dir.path(), "exit 1");
    let serve = Serve::start(db, &dir.path().join("serve"), &[("EF__PG_BIN", failing.to_str().unwrap()), ("EF__POLICY_SCHEDULE_CRON", &cron)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log_text().contains("数据库备份失败") {
        assert!(Instant::now() < deadline, "the slot never ran: {}", serve.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = psql("postgres", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted");
    assert_ne!(held, "0", "the slot's lock is held: {}", serve.log_text());

    let run = ef(db, &backups, &[], &["restore", &name, "--target-db", db, "--drop-existing"]);
    assert!(run.ok(), "restore with serve's slot lock held: {}", run.all());
    assert_eq!(psql(db, "SELECT count(*) FROM t"), "2000");
    drop(serve);
    drop_db(db);
}

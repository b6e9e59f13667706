//! Backup, restore, verify and retention through the real binary and a real PostgreSQL.

use std::path::Path;
use std::time::Duration;

use ef_backup_e2e::{compare_dbs, drop_db, ef, ef_command, env, fake_pg_bin, files, gunzip, psql, sample_db, tempdir, Mount, Run};

/// Backs up `db` into `dir` and returns the new backup's file name.
fn backup_ok(db: &str, dir: &Path, extra: &[(&str, &str)]) -> (String, serde_json::Value) {
    let run = ef(db, dir, extra, &["backup", "--json"]);
    assert!(run.ok(), "backup failed: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    (v["data"]["backup_file"].as_str().unwrap().to_string(), v)
}

/// Tests that count scratch databases left behind run one at a time: one would see another's
/// scratch database mid-run.
static SCRATCH_COUNTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn round_trip_restores_every_table_equal() {
    let _serial = SCRATCH_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (name, v) = backup_ok(src, &backups, &[]);

    // The response is the original plugin's shape.
    assert_eq!(v["success"], true);
    assert_eq!(v["message"], "数据库备份成功（仅本地，S3 未启用）");
    let data = v["data"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    let mut want = vec!["backup_file", "backup_path", "file_size_bytes", "file_size_mb", "timestamp", "s3_uploaded", "s3_error"];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    let path = backups.join(&name);
    assert_eq!(data["backup_path"], path.to_str().unwrap());
    assert_eq!(data["file_size_bytes"], std::fs::metadata(&path).unwrap().len());
    // Names carry the database (issue 12 item 7).
    let prefix = format!("{src}_backup_");
    assert!(name.starts_with(&prefix) && name.ends_with(".sql.gz"), "{name}");
    assert_eq!(data["timestamp"].as_str().unwrap(), &name[prefix.len()..name.len() - ".sql.gz".len()]);
    assert_eq!(data["s3_uploaded"], false);
    assert_eq!(files(&backups), std::slice::from_ref(&name), "only the backup, no partial file");

    // A standard gzip file: gunzip -t and MultiGzDecoder read it, and it is the whole dump.
    let st = std::process::Command::new("gunzip").arg("-t").arg(&path).status().unwrap();
    assert!(st.success(), "gunzip -t");
    let sql = gunzip(&path);
    let text = String::from_utf8_lossy(&sql);
    // ef-backup's line with the database's own properties (a comment for any SQL reader), then
    // pg_dump's output.
    let (first, dump) = text.split_once('\n').unwrap();
    assert!(first.starts_with("-- ef-backup database properties v1: {"), "{first}");
    assert!(dump.starts_with("--\n-- PostgreSQL database dump\n"));
    assert!(text.contains("-- PostgreSQL database dump complete"));
    assert!(text.contains("北京"), "Chinese text survives byte-exact");

    // Restore into a new database: every table, sequence, view, function and large object equal.
    let target = "ef_e2e_roundtrip";
    drop_db(target);
    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    let (same, report) = compare_dbs(src, target);
    assert!(same, "restored database differs: {report}");

    // verify: scratch restore + compare against the live database, then the scratch db is gone.
    let run = ef(src, &backups, &[], &["verify"]);
    assert!(run.ok(), "verify: {}", run.all());
    assert!(run.stdout.contains("verify: OK"), "{}", run.stdout);
    assert!(run.stdout.contains("app.events"), "{}", run.stdout);
    let run = ef(src, &backups, &[], &["verify", &name, "--against-dump"]);
    assert!(run.ok() && run.stdout.contains("match the dump's COPY blocks"), "{}", run.all());
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_verify\\_%' OR datname LIKE 'ef\\_restore\\_%'"), "0");

    // A change in the live database makes verify fail, naming the table.
    psql(target, "SELECT 1");
    let run = ef(target, &backups, &[], &["verify", &name]);
    assert!(run.ok(), "{}", run.all());
    psql(target, "DELETE FROM app.events WHERE id IN (SELECT id FROM app.events LIMIT 3)");
    let run = ef(target, &backups, &[], &["verify", &name]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.lines().any(|l| l.starts_with("app.events") && l.contains("MISMATCH")), "{}", run.stdout);
    drop_db(target);
}

#[test]
fn restore_refuses_to_clobber_and_leaves_target_unchanged_on_failure() {
    let _serial = SCRATCH_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (name, _) = backup_ok(src, &backups, &[]);
    let target = "ef_e2e_clobber";
    drop_db(target);
    psql("postgres", &format!("CREATE DATABASE {target}"));
    psql(target, "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)");

    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", target]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("already exists and is not empty; pass --drop-existing"), "{}", run.stderr);
    assert_eq!(psql(target, "SELECT x FROM keep_me"), "42");

    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", "ef_e2e_does_not_exist"]);
    assert!(run.stderr.contains("does not exist; pass --create"), "{}", run.stderr);

    // A backup cut before its footer: refused before anything is created or replaced.
    let sql = gunzip(&backups.join(&name));
    let cut = sql.len() * 2 / 3;
    let cut = cut + sql[cut..].iter().position(|&b| b == b'\n').unwrap() + 1; // at a line boundary
    let truncated = dir.path().join("truncated.sql.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&truncated).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &sql[..cut]).unwrap();
    enc.finish().unwrap();
    let run = ef(src, &backups, &[], &["restore", truncated.to_str().unwrap(), "--target-db", target, "--drop-existing"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("footer is missing"), "{}", run.stderr);
    assert_eq!(psql(target, "SELECT x FROM keep_me"), "42", "target untouched");

    // Corrupt gzip: same.
    let mut bytes = std::fs::read(backups.join(&name)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let corrupt = dir.path().join("corrupt.sql.gz");
    std::fs::write(&corrupt, &bytes).unwrap();
    let run = ef(src, &backups, &[], &["restore", corrupt.to_str().unwrap(), "--target-db", target, "--drop-existing"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("is damaged"), "{}", run.stderr);
    assert_eq!(psql(target, "SELECT x FROM keep_me"), "42", "target untouched");

    // --drop-existing with a good backup replaces it.
    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", target, "--drop-existing"]);
    assert!(run.ok(), "{}", run.all());
    let (same, report) = compare_dbs(src, target);
    assert!(same, "{report}");
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_%\\_%\\_%'"), "0", "no scratch databases left");
    drop_db(target);
}

/// An older good backup that every failing run must leave alone.
fn old_backup(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{}_backup_20200101_010000.sql.gz", sample_db()));
    let content = b"older good backup".to_vec();
    std::fs::write(&p, &content).unwrap();
    (p, content)
}

fn assert_failed_cleanly(run: &Run, dir: &Path, old: &(std::path::PathBuf, Vec<u8>), needle: &str) {
    assert_eq!(run.code, Some(1), "must fail: {}", run.all());
    assert!(run.all().contains(needle), "expected {needle:?} in: {}", run.all());
    assert!(!run.all().contains("panicked"), "{}", run.all());
    assert!(!run.all().contains(&env().db_password), "password leaked: {}", run.all());
    assert_eq!(files(dir), [old.0.file_name().unwrap().to_str().unwrap().to_string()], "no new or partial file");
    assert_eq!(std::fs::read(&old.0).unwrap(), old.1, "older backup untouched");
}

#[test]
fn connection_failures_are_clear_and_leave_nothing() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backup(&backups);
    let src = sample_db();

    let run = ef(src, &backups, &[("EF__DB_PASSWORD", "wrong-password-xyz")], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "password authentication failed");
    assert!(!run.all().contains("wrong-password-xyz"), "the password never appears: {}", run.all());

    let run = ef("ef_e2e_no_such_db", &backups, &[], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "database \"ef_e2e_no_such_db\" does not exist");

    let run = ef(src, &backups, &[("EF__DB_PORT", "1")], &["backup", "--json"]);
    assert_failed_cleanly(&run, &backups, &old, "Connection refused");
    assert!(run.all().contains("check EF__DB_HOST"), "says what to do: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["success"], false);
    assert!(v["message"].as_str().unwrap().starts_with("数据库备份失败: "), "{v}");
}

#[test]
fn pg_dump_failures_leave_no_file_that_looks_good() {
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backup(&backups);

    // Output cut at a line boundary, exit status 0: only the footer check can tell.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\" | head -n 3000\nexit 0");
    let run = ef(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "output is incomplete");

    // Exits non-zero with a message on stderr.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\" | head -c 100000\necho 'pg_dump: error: simulated failure' >&2\nexit 1");
    let run = ef(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "pg_dump exited with status 1: pg_dump: error: simulated failure");

    // Hangs: killed after EF__BACKUP_TIMEOUT_SECS.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\" | head -c 100000\nexec sleep 120");
    let started = std::time::Instant::now();
    let run = ef(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap()), ("EF__BACKUP_TIMEOUT_SECS", "2")], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "ran longer than 2s (EF__BACKUP_TIMEOUT_SECS) and was killed");
    assert!(started.elapsed() < Duration::from_secs(60), "the timeout bounded the run");
}

#[test]
fn a_pg_dump_of_another_major_version_is_refused() {
    // Only one PostgreSQL is installed here, so the other version is a pg_dump that reports
    // 14, and the real ones are hidden: the run gets its own mount namespace with an empty
    // /usr/lib/postgresql, and no PATH to search.
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backup(&backups);
    let bin = dir.path().join("pg14");
    std::fs::create_dir_all(&bin).unwrap();
    let pg_dump = bin.join("pg_dump");
    std::fs::write(&pg_dump, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n").unwrap();
    std::fs::set_permissions(&pg_dump, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::copy(env().pg_bin.join("psql"), bin.join("psql")).unwrap();
    let server_major = {
        let out = std::process::Command::new(env().pg_bin.join("pg_dump")).arg("--version").output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(2).unwrap().split('.').next().unwrap().to_string()
    };

    let ef = ef_command(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())]);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("if [ -d /usr/lib/postgresql ]; then mount -t tmpfs -o size=1m tmpfs /usr/lib/postgresql || exit 99; fi; PATH=/nonexistent exec \"$0\" \"$@\"")
        .arg(ef.get_program())
        .arg("backup");
    for (k, v) in ef.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(ef.get_current_dir().unwrap());
    let run: Run = cmd.stdin(std::process::Stdio::null()).output().unwrap().into();
    assert_ne!(run.code, Some(99), "hiding /usr/lib/postgresql needs root: {}", run.all());
    assert_failed_cleanly(
        &run,
        &backups,
        &old,
        &format!("the server runs PostgreSQL {server_major}, but no pg_dump {server_major} was found (found: 14 in {})", bin.display()),
    );
    assert!(run.all().contains(&format!("install postgresql-client-{server_major} or point EF__PG_BIN")), "{}", run.all());
}

#[test]
fn pg_dump_killed_mid_stream() {
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let old = old_backup(&backups);
    let pidfile = dir.path().join("pg_dump.pid");
    let bin =
        fake_pg_bin(dir.path(), &format!("\"$REAL\" \"$@\" | head -c 300000\necho $$ > {}.tmp && mv {0}.tmp {0}\nexec sleep 120", pidfile.display()));
    let spawn = || {
        ef_command(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())])
            .arg("backup")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pidfile.exists() {
        assert!(std::time::Instant::now() < deadline, "fake pg_dump never started");
        // Exit 3: another test is backing up the sample database; take the next turn.
        if child.try_wait().unwrap().is_some_and(|st| st.code() == Some(3)) {
            child = spawn();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The .partial file exists while the dump is in progress...
    assert!(files(&backups).iter().any(|f| f.ends_with(".sql.gz.partial")), "{:?}", files(&backups));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let st = std::process::Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
    assert!(st.success());
    let run: Run = child.wait_with_output().unwrap().into();
    // ...and is gone after the failure.
    assert_failed_cleanly(&run, &backups, &old, "pg_dump was killed by signal 9");
}

#[test]
fn full_and_read_only_file_systems() {
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("small");
    let mount = Mount::tmpfs(&backups, "256k");
    let old = old_backup(&backups);
    let run = ef(src, &backups, &[], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "No space left on device");
    assert!(run.all().contains("the backup file system is full"), "{}", run.all());

    mount.remount_ro();
    let run = ef(src, &backups, &[], &["backup"]);
    assert_failed_cleanly(&run, &backups, &old, "Read-only file system");
}

#[test]
fn retention_deletes_only_what_the_policy_selects() {
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // Ten old backups (all far outside the 7-day window) and files that are not ours.
    let old: Vec<String> = (1..=10).map(|d| format!("{src}_backup_202001{d:02}_010000.sql.gz")).collect();
    for n in &old {
        std::fs::write(backups.join(n), b"old").unwrap();
    }
    // Another database's backup (the original's name) is as foreign as a note.
    let foreign = [
        "notes.txt",
        "manual_dump.sql.gz",
        "ef_e2e_sample_backup_latest.sql.gz",
        "ef_e2e_sample_backup_20200101_010000.sql",
        "euraflow_backup_20200101_010000.sql.gz",
    ];
    for n in foreign {
        std::fs::write(backups.join(n), b"not ours").unwrap();
    }
    let (name, _) = backup_ok(src, &backups, &[("EF__POLICY_LOCAL_KEEP_LAST", "3")]);
    let mut want: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
    want.extend([old[8].clone(), old[9].clone(), name]);
    want.sort();
    assert_eq!(files(&backups), want, "the 3 newest (the new one + 2 old) and every foreign file survive");

    // The default keeps 14 whatever their age: nothing more goes.
    let before = files(&backups);
    std::thread::sleep(Duration::from_millis(1100)); // a new second, a new name
    let (second, _) = backup_ok(src, &backups, &[]);
    let mut want = before.clone();
    want.push(second);
    want.sort();
    assert_eq!(files(&backups), want);

    // list shows ours only, newest first.
    let run = ef(src, &backups, &[], &["list", "--json"]);
    assert!(run.ok(), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[2..], [old[9].as_str(), old[8].as_str()]);
}

#[test]
fn the_password_never_reaches_pg_dump_argv() {
    let src = sample_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let argv = dir.path().join("argv.txt");
    let bin = fake_pg_bin(dir.path(), &format!("printf '%s\\n' \"$0\" \"$@\" > {}\nexec \"$REAL\" \"$@\"", argv.display()));
    let run = ef(src, &backups, &[("EF__PG_BIN", bin.to_str().unwrap()), ("EF__DB_PASSWORD", &env().db_password)], &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let args = std::fs::read_to_string(&argv).unwrap();
    assert!(args.contains("--format=plain"), "{args}");
    assert!(!args.contains(&env().db_password), "password in argv: {args}");
    assert!(!run.all().contains(&format!("={}", env().db_password)), "{}", run.all());
}

//! The client tools ef-backup starts: what they see of its environment, how a locked table, a
//! timeout and a signal end them, and what they leave behind (nothing). The real binary against
//! a real PostgreSQL.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ef_backup_e2e::{drop_db, ef, ef_command, env, fake_pg_bin, files, own_db, psql, tempdir, Run};

/// A psql session holding `LOCK TABLE t IN ACCESS EXCLUSIVE MODE` in `db` (as a migration
/// would) until dropped; its backend pid.
struct TableLock {
    child: Child,
    pid: String,
}

impl TableLock {
    fn hold(db: &str) -> TableLock {
        let e = env();
        let mut child = Command::new(e.pg_bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", &e.pg_port, "-U", &e.db_user, "-d", db])
            .env("PGPASSWORD", &e.db_password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "BEGIN;\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\nSELECT pg_backend_pid();").unwrap();
        let mut pid = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut pid).unwrap();
        TableLock { child, pid: pid.trim().to_string() }
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ef-backup backup`, failing the test when it has not ended within `limit` (killed then).
fn backup_within(db: &str, backups: &Path, extra: &[(&str, &str)], limit: Duration) -> Run {
    let mut child = ef_command(db, backups, extra).arg("backup").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the backup was still running after {limit:?}: {}", Run::from(child.wait_with_output().unwrap()).all());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap().into()
}

/// Processes whose command line contains every one of `parts`.
fn processes_with(parts: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| parts.iter().all(|p| c.contains(p)))
        .collect()
}

/// Server sessions in `db` other than `except`, waiting up to `limit` for them to go.
fn other_sessions(db: &str, except: &str, limit: Duration) -> String {
    let sql = format!(
        "SELECT string_agg(pid || ' ' || application_name || ' ' || state, ', ') FROM pg_stat_activity WHERE datname = '{db}' AND pid <> {except}"
    );
    let deadline = Instant::now() + limit;
    loop {
        let left = psql("postgres", &sql);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pins issue 12 "pg_dump and psql never see ef-backup's own secrets": every `EF__*` and `AWS_*`
/// variable is removed from their environment (before, they inherited all of it: the admin token,
/// the AWS keys), while the operator's `PG*` settings stay — `PGSSLMODE`, and `PGSERVICE`, which
/// used to be removed. A service file's host does not override EF__DB_HOST.
#[test]
fn client_tools_get_the_operators_pg_settings_and_none_of_our_secrets() {
    let db = own_db("ef_proc_env");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let envs = dir.path().join("envs");
    std::fs::create_dir_all(&envs).unwrap();
    let bin = dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let psql_path = bin.join("psql");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then env > {envs}/version.$$; else env > {envs}/psql.$$; fi\nexec {real} \"$@\"\n",
        envs = envs.display(),
        real = env().pg_bin.join("psql").display()
    );
    std::fs::write(&psql_path, script).unwrap();
    std::fs::set_permissions(&psql_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = fake_pg_bin(dir.path(), &format!("env > {}/pg_dump.$$\nexec \"$REAL\" \"$@\"", envs.display()));
    let service_file = dir.path().join("pg_service.conf");
    std::fs::write(&service_file, "[efsvc]\nhost=no-such-host.invalid\nsslmode=prefer\n").unwrap();
    let extra = [
        ("EF__PG_BIN", bin.to_str().unwrap()),
        ("EF__ADMIN_TOKEN", "admin-token-must-not-leak"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-must-not-leak"),
        ("AWS_PROFILE", "prod"),
        ("PGSSLMODE", "prefer"),
        ("PGSERVICEFILE", service_file.to_str().unwrap()),
        ("PGSERVICE", "efsvc"),
    ];
    let run = ef(db, &backups, &extra, &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let dumped: Vec<(String, String)> = files(&envs).into_iter().map(|f| (f.clone(), std::fs::read_to_string(envs.join(f)).unwrap())).collect();
    for tool in ["pg_dump.", "psql.", "version."] {
        assert!(dumped.iter().any(|(f, _)| f.starts_with(tool)), "no {tool}* in {:?}", files(&envs));
    }
    for (file, text) in &dumped {
        let leaked: Vec<&str> = text.lines().filter(|l| l.starts_with("EF__") || l.starts_with("AWS_")).collect();
        assert!(leaked.is_empty(), "{file} saw {leaked:?}");
        for kept in ["PGSSLMODE=prefer", "PGSERVICE=efsvc"] {
            assert!(text.lines().any(|l| l == kept), "{file} lacks {kept}: {text}");
        }
        // The password reaches the tools that connect, from EF__DB_PASSWORD.
        let password = format!("PGPASSWORD={}", env().db_password);
        assert_eq!(text.lines().any(|l| l == password), !file.starts_with("version."), "{file}");
    }
    drop_db(db);
}

/// Pins issue 12 "pg_dump runs with --lock-wait-timeout": a table held by DDL fails the backup
/// after EF__PG_LOCK_WAIT_TIMEOUT_SECS with a message that says so (before, pg_dump waited until
/// the whole backup timed out, or for ever).
#[test]
fn a_locked_table_fails_the_backup_after_the_lock_wait_timeout() {
    let db = own_db("ef_proc_lockwait");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let held = TableLock::hold(db);
    let started = Instant::now();
    let run = backup_within(db, &backups, &[("EF__PG_LOCK_WAIT_TIMEOUT_SECS", "2"), ("EF__BACKUP_TIMEOUT_SECS", "60")], Duration::from_secs(90));
    assert_eq!(run.code, Some(1), "{}", run.all());
    for part in ["a table is locked by another session", "EF__PG_LOCK_WAIT_TIMEOUT_SECS", "LOCK TABLE public.t"] {
        assert!(run.stderr.contains(part), "{part:?} not in {}", run.all());
    }
    assert!(started.elapsed() < Duration::from_secs(50), "it gave up at the lock wait, not the backup timeout");
    assert!(files(&backups).iter().all(|f| !f.contains(".sql.gz")), "{:?}", files(&backups));
    drop(held);
    drop_db(db);
}

/// Pins issue 12 "pg_dump runs in its own process group; timeout/cancel kills the group and ends
/// its server session": a pg_dump stopped by EF__BACKUP_TIMEOUT_SECS while it waits for a table
/// lock leaves neither a process (here a wrapper script's child, which killing pg_dump's pid alone
/// would orphan) nor a backend still queued for the lock.
#[test]
fn a_timed_out_pg_dump_leaves_no_process_and_no_server_session() {
    let db = own_db("ef_proc_timeout");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    // Not `exec`: the real pg_dump is the wrapper's child.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\"");
    let held = TableLock::hold(db);
    // Before, killing the wrapper alone left the real pg_dump holding the output pipe: the
    // backup hung.
    let run = backup_within(db, &backups, &[("EF__PG_BIN", bin.to_str().unwrap()), ("EF__BACKUP_TIMEOUT_SECS", "2")], Duration::from_secs(60));
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("EF__BACKUP_TIMEOUT_SECS"), "{}", run.all());
    assert_eq!(other_sessions(db, &held.pid, Duration::from_secs(5)), "", "a backend of the stopped pg_dump is still there");
    let left = processes_with(&["pg_dump", "ef_proc_timeout"]);
    assert!(left.is_empty(), "pg_dump processes left: {left:?}");
    assert!(files(&backups).iter().all(|f| !f.contains(".sql.gz")), "{:?}", files(&backups));
    drop(held);
    drop_db(db);
}

/// Pins issue 12 "a CLI backup ended by SIGTERM/SIGINT removes its .partial": the signal cancels
/// the run (pg_dump's group is killed, the partial file removed) and the exit code is 128 + the
/// signal. Before, the signal killed ef-backup outright and the .partial stayed.
#[test]
fn a_signal_ends_a_cli_backup_without_leaving_its_partial_file() {
    let db = own_db("ef_proc_signal");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let dir = tempdir();
        let backups = dir.path().join("backups");
        let bin = fake_pg_bin(dir.path(), "sleep 37\nexec \"$REAL\" \"$@\"");
        let child = ef_command(db, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())])
            .arg("backup")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !files(&backups).iter().any(|f| f.ends_with(".partial")) {
            assert!(Instant::now() < deadline, "the backup never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let run: Run = child.wait_with_output().unwrap().into();
        assert_eq!(run.code, Some(code), "SIG{signal}: {}", run.all());
        assert!(run.stderr.contains("partial backup file removed"), "{}", run.all());
        assert_eq!(files(&backups), Vec::<String>::new(), "SIG{signal}: nothing left");
        // No other test starts a `sleep 37`.
        assert!(processes_with(&["sleep 37"]).is_empty(), "the fake pg_dump's sleep was killed with its group");
    }
    drop_db(db);
}

/// Pins a defect the 300-cycle chaos run found: `kill -9` of ef-backup left its pg_dump (here
/// the wrapper script pg_dump runs as) alive, beside the next run's pg_dump. pg_dump now gets
/// SIGKILL when ef-backup dies.
#[test]
fn pg_dump_dies_with_a_killed_ef_backup() {
    let db = own_db("ef_proc_orphan");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    // `exec`: the wrapper is the process ef-backup started; no other test sleeps 41 s.
    let bin = fake_pg_bin(dir.path(), "exec sleep 41");
    let mut child =
        ef_command(db, &backups, &[("EF__PG_BIN", bin.to_str().unwrap())]).arg("backup").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with(&["sleep 41"]).is_empty() {
        assert!(Instant::now() < deadline, "the fake pg_dump never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&["sleep 41"]).is_empty() {
        assert!(Instant::now() < deadline, "pg_dump outlived the ef-backup that ran it: {:?}", processes_with(&["sleep 41"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_db(db);
}

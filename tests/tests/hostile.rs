//! Hostile policy components (tests/guests/): each misbehaviour is refused or contained, with a
//! clear error naming the policy file and the call; nothing the guest says is acted on
//! unchecked, and backups already on disk are kept.

use std::time::{Duration, Instant};

use ef_backup_e2e::{ef, ef_command, files, free_port, psql, tempdir, Run, Serve, TOKEN};

fn hostile() -> String {
    std::env::var("EF_TEST_HOSTILE_WASM").expect("EF_TEST_HOSTILE_WASM (scripts/test.sh builds it)")
}

fn small_db() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        psql("postgres", "DROP DATABASE IF EXISTS ef_e2e_hostile WITH (FORCE)");
        psql("postgres", "CREATE DATABASE ef_e2e_hostile");
        psql("ef_e2e_hostile", "CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i");
    });
    "ef_e2e_hostile"
}

fn run_with(mode: &str, dir: &std::path::Path, args: &[&str]) -> (Run, Duration) {
    let started = Instant::now();
    let policy = hostile();
    let run = ef(small_db(), dir, &[("EF__BACKUP_POLICY", policy.as_str()), ("EF__POLICY_HOSTILE", mode)], args);
    (run, started.elapsed())
}

fn assert_one_clean_line(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(!run.all().contains("panicked"), "{}", run.all());
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ef-backup: error: policy "), "{last}");
    assert!(last.contains("ef_test_hostile_policy.wasm"), "names the policy file: {last}");
    for n in needles {
        assert!(last.contains(n), "expected {n:?} in {last}");
    }
}

#[test]
fn policy_check_refuses_every_misbehaviour() {
    let dir = tempdir();
    for (mode, needles) in [
        ("backup-name:loop", vec!["backup-name ran longer than 1s and was stopped"]),
        ("backup-name:alloc", vec!["backup-name trapped", "memory limit of 64 MiB"]),
        ("schedule:trap", vec!["schedule trapped", "unreachable"]),
        ("backup-name:slash", vec!["backup-name returned an invalid value", "path separator"]),
        ("backup-name:dots", vec!["backup-name returned an invalid value", "'..'"]),
        ("select-expired:foreign", vec!["select-expired returned an invalid value", "not in the listing"]),
        ("select-expired:newest", vec!["select-expired returned an invalid value", "the newest backup"]),
        ("shape-status:json", vec!["shape-status returned an invalid value", "not JSON"]),
        ("shape-status:status", vec!["shape-status returned an invalid value", "999"]),
        ("parse-name:loop", vec!["parse-name ran longer than 1s"]),
        // Issue 12 item 15: waits in WASI imports are bounded too, and so are host handles.
        ("backup-name:sleep", vec!["backup-name ran longer than 1s and was stopped"]),
        ("backup-name:pollable", vec!["backup-name ran longer than 1s and was stopped"]),
        ("backup-name:handles", vec!["backup-name trapped", "host handles"]),
    ] {
        let (run, took) = run_with(mode, dir.path(), &["policy", "check", &hostile()]);
        assert_one_clean_line(&run, &needles);
        assert!(took < Duration::from_secs(30), "{mode}: took {took:?}");
    }
    let (run, _) = run_with("none:none", dir.path(), &["policy", "check", &hostile()]);
    assert!(run.ok(), "the hostile policy behaves when told to: {}", run.all());
}

#[test]
fn a_guest_that_imports_what_the_host_does_not_grant_is_refused() {
    let dir = tempdir();
    let greedy = std::env::var("EF_TEST_GREEDY_WASM").unwrap();
    let run = ef(small_db(), dir.path(), &[], &["policy", "check", &greedy]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("needs imports this host does not provide") && run.stderr.contains("read-secrets"), "{}", run.stderr);
}

#[test]
fn the_sandbox_has_no_filesystem_environment_network_or_clock() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (run, _) = run_with("backup-name:snoop", &backups, &["backup", "--json"]);
    assert!(run.ok(), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    // It saw no directory entries, no variables, no network and a clock stuck at 1970.
    assert_eq!(v["message"], "hostile");
    assert_eq!(files(&backups), ["snoop_fs0_env0_net0_clock0.sql.gz"]);
}

#[test]
fn bad_names_fail_the_backup_and_write_nothing() {
    let dir = tempdir();
    let backups = dir.path().join("deep/backups");
    std::fs::create_dir_all(&backups).unwrap();
    for mode in ["backup-name:slash", "backup-name:dots", "backup-name:loop", "backup-name:trap"] {
        let (run, _) = run_with(mode, &backups, &["backup", "--json"]);
        assert_eq!(run.code, Some(1), "{mode}: {}", run.all());
        let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        assert_eq!(v["success"], false, "{mode}");
        assert!(run.stderr.contains("ef_test_hostile_policy.wasm: backup-name"), "{mode}: {}", run.stderr);
        assert!(files(&backups).is_empty(), "{mode}: {:?}", files(&backups));
    }
    assert!(!dir.path().join("etc").exists() && !std::path::Path::new("/etc/evil.sql.gz").exists());
}

#[test]
fn bad_retention_answers_are_skipped_and_nothing_is_deleted() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let old: Vec<String> = (1..=6).map(|i| format!("hostile_{}.sql.gz", 1_600_000_000 + i)).collect();
    for n in old.iter().chain(["keep-me.sql.gz".to_string()].iter()) {
        std::fs::write(backups.join(n), b"old").unwrap();
    }
    for mode in ["select-expired:foreign", "select-expired:newest", "select-expired:loop", "select-expired:trap", "select-expired:alloc"] {
        let before = files(&backups);
        let (run, _) = run_with(mode, &backups, &["backup", "--json"]);
        assert!(run.ok(), "{mode}: the backup itself is good: {}", run.all());
        if mode == "select-expired:newest" {
            // Issue 12 item 6: the host's safety rules keep it; the rest of an answer would stand.
            assert!(run.stderr.contains("which the policy selected: it is the backup just written"), "{mode}: {}", run.stderr);
        } else {
            assert!(run.stderr.contains("retention skipped, nothing deleted"), "{mode}: {}", run.stderr);
            assert!(run.stderr.contains("select-expired"), "{mode}: {}", run.stderr);
        }
        let after = files(&backups);
        assert!(before.iter().all(|f| after.contains(f)), "{mode}: something was deleted");
        assert_eq!(after.len(), before.len() + 1, "{mode}");
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Behaving again, retention runs and keeps the 3 newest of its own; foreign files stay.
    let (run, _) = run_with("none:none", &backups, &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let after = files(&backups);
    assert_eq!(after.iter().filter(|f| f.starts_with("hostile_")).count(), 3, "{after:?}");
    assert!(after.contains(&"keep-me.sql.gz".to_string()));
}

#[test]
fn serve_rejects_a_hostile_replacement_and_keeps_serving() {
    let dir = tempdir();
    let policy = dir.path().join("policy.wasm");
    std::fs::copy(&ef_backup_e2e::env().wasm, &policy).unwrap();
    let serve = Serve::start(small_db(), dir.path(), &[("EF__BACKUP_POLICY", policy.to_str().unwrap()), ("EF__POLICY_HOSTILE", "backup-name:loop")]);
    let before = serve.get("/api/ef/v1/backup/status").json()["policy"]["sha256"].clone();
    let tmp = dir.path().join("new.wasm");
    std::fs::copy(hostile(), &tmp).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log_text().contains("policy reload rejected") {
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(serve.log_text().contains("backup-name ran longer than 1s"), "{}", serve.log_text());
    let st = serve.get("/api/ef/v1/backup/status");
    assert_eq!(st.status, 200);
    assert_eq!(st.json()["policy"]["sha256"], before, "the last good policy keeps running");
    // The other tests of this file back up the same database from the CLI at the same time:
    // their turn comes first, as an operator's retry would wait for it (`ef` does the same).
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = serve.post("/api/ef/v1/backup/manual");
        if r.status != 409 || !r.body.contains("another ef-backup instance") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["data"]["backup_file"].as_str().unwrap().starts_with("ef_e2e_hostile_backup_"));
}

/// Pins issue 12 (invalid `EF__POLICY_*` values reach the operator): the default policy logs an
/// invalid value at error level, and both `policy check` and `serve` refuse to start, naming
/// the variable; an empty value means the policy's default.
#[test]
fn an_invalid_policy_setting_stops_policy_check_and_serve() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let bad = [("EF__POLICY_LOCAL_KEEP_LAST", "abc")];
    let run = ef(small_db(), &backups, &bad, &["policy", "check"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ef-backup: error: policy ") && last.contains("EF__POLICY_LOCAL_KEEP_LAST=\"abc\""), "{last}");

    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut child = ef_command(small_db(), &backups, &[bad[0], ("EF__ADMIN_TOKEN", TOKEN), ("EF__HTTP_ADDR", &addr)])
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("serve started with EF__POLICY_LOCAL_KEEP_LAST=abc");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EF__POLICY_LOCAL_KEEP_LAST=\"abc\""), "{stderr}");

    let run = ef(small_db(), &backups, &[("EF__POLICY_LOCAL_KEEP_LAST", "")], &["policy", "check"]);
    assert!(run.ok(), "an empty value is the default: {}", run.all());
}

/// Pins issue 12 item 2 (policy calls never run on async worker threads, nor under a lock that
/// status or metrics need). A policy whose status shaping spins until the 1 s deadline traps it
/// is asked for the status by 8 clients at once; meanwhile `/healthz` and `/metrics` must keep
/// answering at once. Before the fix `shape-status` ran on the async workers (as many as
/// cores): 8 spinning calls held every worker for seconds and both endpoints waited with them.
#[test]
fn slow_policy_calls_do_not_hold_the_api() {
    let dir = tempdir();
    let policy = hostile();
    let serve = Serve::start(small_db(), dir.path(), &[("EF__BACKUP_POLICY", policy.as_str()), ("EF__POLICY_HOSTILE", "shape-status:loop-if-empty")]);
    let port = serve.port;
    let auth = serve.auth();
    let started = Instant::now();
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || ef_backup_e2e::http(port, "GET", "/api/ef/v1/backup/status", &[("Authorization", &auth)], b"").status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1500) {
        for path in ["/healthz", "/metrics"] {
            let t = Instant::now();
            let r = ef_backup_e2e::http(port, "GET", path, &[], b"");
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            worst = worst.max(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let statuses: Vec<u16> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    // The guard did stop each spinning call: the host answered for the policy.
    assert!(statuses.iter().all(|s| *s == 500), "{statuses:?}");
    assert!(serve.log_text().contains("shape-status ran longer than 1s"), "{}", serve.log_text());
    assert!(worst < Duration::from_millis(500), "/healthz or /metrics waited {worst:?} behind the policy's calls");
}

//! `ef-backup serve`: the admin API, the schedule across replicas, shutdown; the real binary
//! against a real PostgreSQL and a real S3-compatible server.

use std::time::Duration;

use ef_backup_e2e::{drop_db, ef, fake_pg_bin, files, http, post_concurrently, psql, s3, sample_db, tempdir, Serve, TOKEN};

const MANUAL: &str = "/api/ef/v1/backup/manual";
const STATUS: &str = "/api/ef/v1/backup/status";

/// The service takes a cross-replica lock per database, so tests backing up the shared sample
/// database through `serve` take turns (as replicas would).
fn sample_db_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn s3_vars(prefix: &str) -> Vec<(&'static str, String)> {
    s3().vars(prefix)
}

fn borrow<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn manual_backup_and_status_over_http() {
    let _turn = sample_db_turn();
    let dir = tempdir();
    let s3 = s3();
    let owned = s3_vars("serve-manual/");
    let serve = Serve::start(sample_db(), dir.path(), &borrow(&owned));

    let r = serve.post(MANUAL);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["message"], "数据库备份成功（含S3）");
    let data = &v["data"];
    let name = data["backup_file"].as_str().unwrap();
    let path = dir.path().join("backups").join(name);
    assert_eq!(data["backup_path"], path.to_str().unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(data["file_size_bytes"], size);
    assert_eq!(data["file_size_mb"], ((size as f64 / 1048576.0) * 100.0).round() / 100.0);
    assert_eq!(data["s3_uploaded"], true);
    let head = s3.probe_json(&["head", &s3.bucket, &format!("serve-manual/{name}")]);
    assert_eq!(head["size"], size);
    assert_eq!(head["sse"], "AES256");

    let st = serve.get(STATUS);
    assert_eq!(st.status, 200, "{}", st.body);
    let st = st.json();
    assert_eq!(st["local_backups"]["count"], 1);
    assert_eq!(st["local_backups"]["recent"][0]["filename"], name);
    assert_eq!(st["local_backups"]["retention_days"], 7);
    assert_eq!(st["s3"]["enabled"], true);
    assert_eq!(st["s3"]["bucket"], s3.bucket.as_str());
    assert_eq!(st["schedule"], "每天北京时间 01:00 和 13:00");
    assert_eq!(st["last_run"]["success"], true);
    assert_eq!(st["last_run"]["backup_file"], name);
    let next = st["next_run_at"].as_f64().unwrap() as i64;
    // 01:00 or 13:00 in Beijing: 17:00 or 05:00 UTC, within the next 12 hours.
    assert!(next % 86_400 == 17 * 3600 || next % 86_400 == 5 * 3600, "next_run_at {next}");
    let log = serve.log_text();
    assert!(log.contains("Database backup plugin initializing..."), "{log}");
    assert!(log.contains("✓ S3 备份已启用: bucket=ef-test-backups, retention=30天"), "{log}");
    assert!(log.contains("next backup at"), "{log}");
    assert!(!log.contains(TOKEN) && !log.contains(&s3.secret_key), "no secrets in the log");
}

#[test]
fn authentication_and_malformed_requests() {
    let dir = tempdir();
    let serve = Serve::start(sample_db(), dir.path(), &[]);
    for (label, headers) in [
        ("missing", vec![]),
        ("wrong", vec![("Authorization", "Bearer not-the-token-0123456789")]),
        ("other scheme", vec![("Authorization", "Basic dGVzdDp0ZXN0")]),
        ("empty bearer", vec![("Authorization", "Bearer ")]),
        ("token without scheme", vec![("Authorization", TOKEN)]),
    ] {
        for (method, path) in [("POST", MANUAL), ("GET", STATUS), ("GET", "/api/ef/v1/backup/history"), ("GET", "/api/ef/v1/backup/history?limit=5")]
        {
            let r = http(serve.port, method, path, &headers, b"");
            assert_eq!(r.status, 401, "{label} {method} {path}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"ef-backup\""), "{label}");
            assert_eq!(r.json()["success"], false);
        }
    }
    assert!(files(&dir.path().join("backups")).is_empty(), "no backup without a token");
    // Case-insensitive scheme, as RFC 7235 says.
    let r = http(serve.port, "GET", STATUS, &[("Authorization", &format!("bearer {TOKEN}"))], b"");
    assert_eq!(r.status, 200);

    let auth = serve.auth();
    let h = [("Authorization", auth.as_str())];
    let r = http(serve.port, "GET", MANUAL, &h, b"");
    assert_eq!((r.status, r.json()["success"].clone()), (405, serde_json::json!(false)), "{}", r.body);
    let r = http(serve.port, "GET", "/api/ef/v1/backup/nothing", &h, b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["success"], false);
    let r = http(serve.port, "POST", MANUAL, &h, &vec![b'{'; 64 * 1024]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["success"], false);
    let r = http(serve.port, "POST", MANUAL, &h, b"{not json");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(files(&dir.path().join("backups")).is_empty(), "malformed requests start no backup");

    let r = http(serve.port, "GET", "/healthz", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    let r = http(serve.port, "GET", "/api/ef/v1/backup/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, include_str!("../../host/openapi.json"));
    assert!(!serve.log_text().contains(TOKEN));
}

#[test]
fn serve_refuses_to_start_without_a_proper_token() {
    let dir = tempdir();
    for (token, needle) in [(None, "EF__ADMIN_TOKEN is not set"), (Some("short-token"), "EF__ADMIN_TOKEN is too short (11 characters")] {
        let mut vars = vec![("EF__HTTP_ADDR", "127.0.0.1:1")];
        if let Some(t) = token {
            vars.push(("EF__ADMIN_TOKEN", t));
        }
        let run = ef(sample_db(), &dir.path().join("b"), &vars, &["serve"]);
        assert_eq!(run.code, Some(1), "{}", run.all());
        assert!(run.stderr.contains(needle) && run.stderr.contains("openssl rand -hex 32"), "{}", run.stderr);
        if let Some(t) = token {
            assert!(!run.all().contains(t));
        }
    }
}

/// pg_dump that takes a while: long enough for requests to overlap a running backup.
fn slow_pg_dump(dir: &std::path::Path, secs: u32) -> std::path::PathBuf {
    fake_pg_bin(dir, &format!("sleep {secs}\nexec \"$REAL\" \"$@\""))
}

#[test]
fn concurrent_triggers_give_one_backup_and_409s() {
    let _turn = sample_db_turn();
    let dir = tempdir();
    let bin = slow_pg_dump(dir.path(), 3);
    let serve = Serve::start(sample_db(), dir.path(), &[("EF__PG_BIN", bin.to_str().unwrap())]);
    let port = serve.port;
    let auth = serve.auth();
    let replies: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles = ef_backup_e2e::post_concurrently(port, &auth, MANUAL, 6);
        // While the backup runs: 200 status requests at once, all answered.
        std::thread::sleep(Duration::from_millis(800));
        let statuses: Vec<_> = (0..200)
            .map(|_| {
                let auth = auth.clone();
                s.spawn(move || http(port, "GET", STATUS, &[("Authorization", &auth)], b""))
            })
            .collect();
        let mut running_seen = 0;
        for h in statuses {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            if r.json()["running_backup"].is_string() {
                running_seen += 1;
            }
        }
        assert!(running_seen > 0, "status shows the running backup");
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<_> = replies.iter().filter(|(s, _)| *s == 200).collect();
    let busy: Vec<_> = replies.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!((ok.len(), busy.len()), (1, 5), "{replies:?}");
    let name = ok[0].1["data"]["backup_file"].as_str().unwrap();
    for (_, b) in &busy {
        assert_eq!(b["success"], false);
        assert_eq!(b["data"]["running_backup"], name, "409 names the running backup");
    }
    assert_eq!(files(&dir.path().join("backups")), [name.to_string()], "exactly one backup file");
    let metrics = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    let samples = parse_prometheus(&metrics.body);
    assert_eq!(samples["ef_backup_busy_rejections_total"], 5.0);
    assert_eq!(samples["ef_backup_successes_total"], 1.0);
    assert_eq!(samples["ef_backup_backups_on_disk"], 1.0);
    assert!(samples["ef_backup_last_success_timestamp_seconds"] > 1.7e9);
    let db = sample_db();
    assert_eq!(samples[&format!("ef_backup_database_last_run_success{{database=\"{db}\",kind=\"database\"}}")], 1.0);
}

/// Parses the Prometheus text format strictly enough to catch malformed output: comment
/// lines are HELP/TYPE for the metric that follows; samples are `name value`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                assert!(["counter", "gauge"].contains(&parts.next().unwrap()), "{line}");
                typed.insert(name.to_string());
            }
            continue;
        }
        // `name value` or `name{label="value",…} value` (a label value may hold spaces).
        let (sample, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name = match sample.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(!quoted.trim_end_matches('"').contains('\n'), "{line}");
                }
                name
            }
            None => sample,
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        assert!(typed.contains(name), "{name} has no TYPE line");
        out.insert(sample.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")));
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn two_replicas_run_each_scheduled_slot_once() {
    let _turn = sample_db_turn();
    let dir = tempdir();
    let every = [("EF__POLICY_SCHEDULE_CRON", "*/3 * * * * *")];
    let mut a = Serve::start(sample_db(), &dir.path().join("a"), &every);
    let mut b = Serve::start(sample_db(), &dir.path().join("b"), &every);
    std::thread::sleep(Duration::from_secs(11));
    // A clean stop: a slot that is running finishes (no partial file).
    assert_eq!(a.terminate(Duration::from_secs(60)), Some(0), "{}", a.log_text());
    assert_eq!(b.terminate(Duration::from_secs(60)), Some(0), "{}", b.log_text());
    let names_a = files(&dir.path().join("a/backups"));
    let names_b = files(&dir.path().join("b/backups"));
    let mut all: Vec<&String> = names_a.iter().chain(names_b.iter()).collect();
    all.sort();
    assert!(all.len() >= 3, "slots every 3 s for 11 s: {all:?}");
    // Names carry the start second; a slot run twice would give two names within a second.
    let stamps: Vec<i64> = all
        .iter()
        .map(|n| {
            let t = &n[format!("{}_backup_", sample_db()).len()..n.len() - ".sql.gz".len()];
            let (d, hms) = t.split_once('_').unwrap();
            let secs = |s: &str| s.parse::<i64>().unwrap();
            secs(d) * 86_400 + secs(&hms[..2]) * 3600 + secs(&hms[2..4]) * 60 + secs(&hms[4..])
        })
        .collect();
    for w in stamps.windows(2) {
        assert!(w[1] - w[0] >= 2, "two backups for one slot: {all:?}");
    }
    assert!(names_a.iter().all(|n| !n.ends_with(".partial")) && names_b.iter().all(|n| !n.ends_with(".partial")));
    let skipped = |d: &str| {
        std::fs::read_dir(dir.path().join(d)).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".log")
                && std::fs::read_to_string(e.path()).unwrap().contains("another ef-backup instance is running the")
        })
    };
    assert!(skipped("a") || skipped("b"), "a replica logged that it skipped a slot");
}

#[test]
fn the_cross_replica_lock_outlives_idle_session_timeout() {
    // The run lock lives in a psql session that sits idle while the backup runs: a database
    // with idle_session_timeout must not end that session and hand the lock to a replica.
    let db = "ef_e2e_idle_timeout";
    drop_db(db);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    psql("postgres", &format!("ALTER DATABASE {db} SET idle_session_timeout = '1s'"));
    let dir = tempdir();
    let bin = slow_pg_dump(dir.path(), 4);
    let a = Serve::start(db, &dir.path().join("a"), &[("EF__PG_BIN", bin.to_str().unwrap())]);
    let b = Serve::start(db, &dir.path().join("b"), &[]);
    let running = post_concurrently(a.port, &a.auth(), MANUAL, 1).pop().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let r = b.post(MANUAL);
    assert_eq!(r.status, 409, "replica b must not start while a runs: {}\n{}", r.body, a.log_text());
    assert!(r.body.contains("another ef-backup instance"), "{}", r.body);
    let (status, v) = running.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true, "{v}");
    drop(a);
    drop(b);
    drop_db(db);
}

#[test]
fn sigterm_mid_backup_cancels_cleanly() {
    let dir = tempdir();
    let s3 = s3();
    let owned = s3_vars("serve-sigterm/");
    let mut vars = borrow(&owned);
    // Some output, then a hang: the backup is mid-stream when SIGTERM comes.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\" | head -c 9000000\nexec sleep 120");
    vars.extend([("EF__PG_BIN", bin.to_str().unwrap()), ("EF__SHUTDOWN_GRACE_SECS", "1"), ("EF__S3_PART_SIZE_MB", "5")]);
    let mut serve = Serve::start(ef_backup_e2e::big_db(), dir.path(), &vars);
    let port = serve.port;
    let auth = serve.auth();
    let request = std::thread::spawn(move || http(port, "POST", MANUAL, &[("Authorization", &auth)], b""));
    let backups = dir.path().join("backups");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !files(&backups).iter().any(|f| f.ends_with(".partial")) {
        assert!(std::time::Instant::now() < deadline, "the backup never started: {}", serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let code = serve.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", serve.log_text());
    let reply = request.join().unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("cancelled because ef-backup is shutting down"), "{}", reply.body);
    assert!(files(&backups).is_empty(), "no partial or final file: {:?}", files(&backups));
    assert_eq!(s3.open_uploads("serve-sigterm/"), Vec::<String>::new(), "no incomplete upload left");
    let log = serve.log_text();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("grace period over: cancelling backup"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

//! Notifications (issue 17 item 2) through the real binary: a failed backup (wrong password)
//! and the recovery after it reach a local webhook receiver with a valid HMAC signature, Slack
//! and Telegram endpoints, and the heartbeat's start, fail and success pings; an e-mail reaches
//! a real SMTP server (aiosmtpd); no message carries a secret; every outcome is in the history;
//! a channel that is down delays nothing; scheduled drills run in serve and their metrics
//! survive a restart.

use std::path::Path;
use std::time::Duration;

use hmac::Mac;

use ef_backup_e2e::{ef, env, free_port, own_db, psql, tempdir, Answer, Received, Receiver, Serve};

const SECRET: &str = "whsec-0123456789-abcdef";
const BOT_TOKEN: &str = "123456:AAbbCCddEEff";
const WAIT: Duration = Duration::from_secs(60);

fn signature_ok(r: &Received) -> bool {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    r.header("X-EF-Backup-Signature") == Some(&format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

fn webhook_event(r: &Received, event: &str) -> bool {
    r.path == "/hook/k3y" && serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|v| v["event"] == event)
}

#[test]
fn a_failure_and_its_recovery_reach_every_channel_signed_and_without_secrets() {
    let db = own_db("ef_e2e_notify");
    let work = tempdir();
    let dir = work.path().join("b");
    let r = Receiver::start(Answer::Ok);
    let (hook, slack, ping, tg) = (r.url("/hook/k3y"), r.url("/slack/T0/B0/s3cretpath"), r.url("/ping/0f1e2d3c"), r.url("/tg"));
    let channels = [
        ("EF__NOTIFY_WEBHOOK_URL", hook.as_str()),
        ("EF__NOTIFY_WEBHOOK_SECRET", SECRET),
        ("EF__NOTIFY_SLACK_URL", slack.as_str()),
        ("EF__NOTIFY_HEARTBEAT_URL", ping.as_str()),
        ("EF__NOTIFY_TELEGRAM_BOT_TOKEN", BOT_TOKEN),
        ("EF__NOTIFY_TELEGRAM_CHAT_ID", "-100200300"),
        ("EF__NOTIFY_TELEGRAM_API_URL", tg.as_str()),
    ];
    let mut wrong = channels.to_vec();
    wrong.push(("EF__DB_PASSWORD", "not-the-password"));
    let run = ef(db, &dir, &wrong, &["backup"]);
    assert!(!run.ok(), "{}", run.all());

    // The CLI waits for its messages before it exits: they are all there now.
    let got = r.received();
    let paths: Vec<&str> = got.iter().map(|q| q.path.as_str()).collect();
    // The password is refused before the run starts (its lock session cannot log in): a fail
    // ping without a start.
    assert!(paths.contains(&"/ping/0f1e2d3c/fail"), "{paths:?}");
    assert!(!paths.contains(&"/ping/0f1e2d3c"), "no success ping for a failure: {paths:?}");
    let failed = got.iter().find(|q| webhook_event(q, "backup-failed")).unwrap_or_else(|| panic!("{paths:?}"));
    assert!(signature_ok(failed), "{:?}", failed.headers);
    let body = failed.json();
    assert!(body["subject"].as_str().unwrap().contains("数据库备份失败"), "{body}");
    assert_eq!(body["data"]["outcome"]["success"], false, "{body}");
    assert_eq!(body["data"]["databases"][0], db, "{body}");
    let slack_msg = got.iter().find(|q| q.path == "/slack/T0/B0/s3cretpath").expect("slack");
    assert!(slack_msg.json()["text"].as_str().unwrap().contains("数据库备份失败"), "{}", String::from_utf8_lossy(&slack_msg.body));
    let telegram = got.iter().find(|q| q.path == format!("/tg/bot{BOT_TOKEN}/sendMessage")).expect("telegram");
    assert_eq!(telegram.json()["chat_id"], -100200300);
    for q in &got {
        let text = String::from_utf8_lossy(&q.body);
        for secret in ["not-the-password", &env().db_password, SECRET, BOT_TOKEN, "s3cretpath"] {
            assert!(!text.contains(secret), "{secret:?} in a message to {}: {text}", q.path);
        }
    }
    // Nor in what the run printed or logged.
    for secret in [SECRET, BOT_TOKEN, "s3cretpath", "k3y"] {
        assert!(!run.all().contains(secret), "{secret:?} in the output: {}", run.all());
    }

    // The next backup works: a recovery to every channel, a success ping.
    let run = ef(db, &dir, &channels, &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let got = r.received();
    let recovered = got.iter().find(|q| webhook_event(q, "backup-succeeded")).expect("the recovery");
    assert!(signature_ok(recovered));
    assert!(recovered.json()["subject"].as_str().unwrap().contains("已恢复"), "{}", recovered.json());
    assert!(got.iter().any(|q| q.path == "/ping/0f1e2d3c"), "the success ping");

    // A third, ordinary success tells only the heartbeat (a second later: names carry the second).
    std::thread::sleep(Duration::from_millis(1100));
    let before = r.received().len();
    let run = ef(db, &dir, &channels, &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let new: Vec<String> = r.received()[before..].iter().map(|q| q.path.clone()).collect();
    assert_eq!(new, ["/ping/0f1e2d3c/start", "/ping/0f1e2d3c"], "only pings");

    // Every delivery is in the history.
    let history = ef(db, &dir, &[], &["history", "--json", "--limit", "100"]);
    let runs: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", history.all()));
    let notes: Vec<&serde_json::Value> = runs.as_array().unwrap().iter().filter(|r| r["kind"] == "notification").collect();
    assert_eq!(notes.len(), got.len() + 2, "{runs}");
    assert!(notes.iter().all(|n| n["outcome"] == "ok"), "{runs}");
    assert!(notes.iter().any(|n| n["detail"]["channel"] == "telegram" && n["detail"]["event"] == "backup-failed"), "{runs}");
}

/// A channel that never answers holds up neither the backup nor the other channels: the
/// heartbeat's success ping arrives while the webhook's request still hangs.
#[test]
fn a_channel_that_is_down_delays_nothing() {
    let db = own_db("ef_e2e_notify_down");
    let work = tempdir();
    let down = Receiver::start(Answer::Hang);
    let up = Receiver::start(Answer::Ok);
    let (hook, ping) = (down.url("/hook/k3y"), up.url("/ping/abc"));
    let serve =
        Serve::start(db, work.path(), &[("EF__NOTIFY_WEBHOOK_URL", &hook), ("EF__NOTIFY_HEARTBEAT_URL", &ping), ("EF__NOTIFY_TIMEOUT_SECS", "300")]);
    // A failure first, so the webhook has something to hang on.
    psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    let failed = serve.post("/api/ef/v1/backup/manual");
    psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    assert_eq!(failed.status, 500, "{}", failed.body);
    down.wait_for(WAIT, |q| q.path == "/hook/k3y").expect("the webhook was called");
    let ok = serve.post("/api/ef/v1/backup/manual");
    assert_eq!(ok.status, 200, "{}", ok.body);
    up.wait_for(WAIT, |q| q.path == "/ping/abc").unwrap_or_else(|got| panic!("no success ping: {got:?}"));
    assert!(down.hanging() >= 1, "the webhook is still hanging");
    let metrics = serve.get("/metrics");
    assert!(metrics.body.contains("ef_backup_notification_failures_total"), "{}", metrics.body);
}

fn smtp_sink(dir: &Path) -> (std::process::Child, u16, std::path::PathBuf) {
    let python = std::env::var("EF_TEST_S3_PYTHON").expect("EF_TEST_S3_PYTHON: run through scripts/test.sh");
    let port = free_port();
    let maildir = dir.join("maildir");
    let child = std::process::Command::new(python)
        .args(["-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .args(["-l", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(dir.join("smtp.log")).unwrap())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < end, "the SMTP sink did not start: {:?}", std::fs::read_to_string(dir.join("smtp.log")));
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port, maildir)
}

/// Subject and body of each message in a maildir, decoded by Python's own e-mail parser.
fn mails(maildir: &Path) -> Vec<String> {
    let python = std::env::var("EF_TEST_S3_PYTHON").unwrap();
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| {
            let out = std::process::Command::new(&python)
                .args([
                    "-c",
                    "import email, email.header, email.policy, sys\n\
                     m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)\n\
                     print('To:', m['To']); print('Subject:', m['Subject']); print(m.get_content())",
                ])
                .arg(e.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

#[test]
fn email_reaches_an_smtp_server_and_never_goes_out_in_clear_with_a_password() {
    let db = own_db("ef_e2e_notify_mail");
    let work = tempdir();
    let dir = work.path().join("b");
    let (mut sink, port, maildir) = smtp_sink(work.path());
    let plain = format!("smtp://127.0.0.1:{port}");
    let mail = [("EF__NOTIFY_EMAIL_FROM", "ef-backup@example.com"), ("EF__NOTIFY_EMAIL_TO", "ops@example.com, dba@example.com")];
    let mut vars = vec![("EF__NOTIFY_SMTP_URL", plain.as_str()), ("EF__NOTIFY_SMTP_PLAINTEXT", "true"), ("EF__DB_PASSWORD", "wrong")];
    vars.extend_from_slice(&mail);
    let run = ef(db, &dir, &vars, &["backup"]);
    assert!(!run.ok(), "{}", run.all());
    let got = mails(&maildir);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("To: ops@example.com, dba@example.com"), "{}", got[0]);
    assert!(got[0].contains("Subject: [ef-backup] 数据库备份失败"), "{}", got[0]);
    assert!(got[0].contains("password authentication failed"), "{}", got[0]);

    // With a password and no TLS on offer, nothing is sent (STARTTLS is required).
    let with_password = format!("smtp://ef:mailpass@127.0.0.1:{port}");
    let mut vars = vec![("EF__NOTIFY_SMTP_URL", with_password.as_str()), ("EF__DB_PASSWORD", "wrong")];
    vars.extend_from_slice(&mail);
    let run = ef(db, &dir, &vars, &["backup"]);
    assert!(!run.ok());
    assert_eq!(mails(&maildir).len(), 1, "no second mail");
    assert!(run.stderr.contains("STARTTLS") && !run.all().contains("mailpass"), "{}", run.all());
    let history = ef(db, &dir, &[], &["history", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap();
    let last_mail = runs.as_array().unwrap().iter().find(|r| r["kind"] == "notification").unwrap();
    assert_eq!((last_mail["outcome"].as_str(), last_mail["detail"]["channel"].as_str()), (Some("failed"), Some("email")), "{runs}");
    let _ = sink.kill();
    let _ = sink.wait();
}

/// Scheduled drills in serve: the policy's drill crons run them (every 5 s here), a backup
/// asked for meanwhile runs, status shows the last drill, and the drill metrics come back
/// from the history after a restart.
#[test]
fn serve_drills_on_the_policys_schedule_and_keeps_their_record() {
    let db = own_db("ef_e2e_drill_serve");
    let work = tempdir();
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [work.path(), tmp.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let vars = [("EF__POLICY_DRILL_CRON", "*/5 * * * * *"), ("TMPDIR", tmp.to_str().unwrap())];
    let mut serve = Serve::start(db, work.path(), &vars);
    let first = serve.post("/api/ef/v1/backup/manual");
    assert_eq!(first.status, 200, "{}", first.body);
    let sample = format!("ef_backup_last_drill_success_timestamp_seconds{{database=\"{db}\"}}");
    let end = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = serve.get("/metrics").body;
        if m.contains(&sample) {
            assert!(m.contains(&format!("ef_backup_last_drill_restore_seconds{{database=\"{db}\"}}")), "{m}");
            break;
        }
        assert!(std::time::Instant::now() < end, "no drill passed: {}", serve.log_text());
        // Backups go on between (and during) drills; names have a second's resolution.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(serve.post("/api/ef/v1/backup/manual").status, 200, "{}", serve.log_text());
    }
    let status = serve.get("/api/ef/v1/backup/status").json();
    assert_eq!(status["last_drill"]["success"], true, "{status}");
    assert!(status["drills"].as_str().unwrap().starts_with("on:"), "{status}");
    assert!(status["recent_runs"].as_array().unwrap().iter().any(|r| r["kind"] == "drill"), "{status}");
    // A backup and a drill at least: the limit is obeyed, newest first.
    let history = serve.get("/api/ef/v1/backup/history?limit=2").json();
    let runs = history["data"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{history}");
    assert!(runs[0]["started_at"].as_i64() >= runs[1]["started_at"].as_i64(), "{history}");
    assert!(serve.get("/api/ef/v1/backup/history").json()["data"]["runs"].as_array().unwrap().iter().any(|r| r["kind"] == "drill"));
    assert_eq!(serve.get("/api/ef/v1/backup/history?limit=0").status, 400);
    assert_eq!(serve.terminate(Duration::from_secs(120)), Some(0), "{}", serve.log_text());
    assert!(!serve.log_text().contains("FAILED"), "{}", serve.log_text());

    // After a restart, before any new drill, the metrics come from the history.
    let serve = Serve::start(db, work.path(), &[("EF__POLICY_DRILL_CRON", "off")]);
    let m = serve.get("/metrics").body;
    assert!(m.contains(&sample) && m.contains(&format!("ef_backup_drill_failures_total{{database=\"{db}\"}} 0")), "{m}");
}

/// A slot that passed while ef-backup was not running is told at the next start (missed
/// slot); a deployment that had never run before has missed nothing.
#[test]
fn a_slot_missed_while_down_is_told_at_start() {
    let db = own_db("ef_e2e_notify_missed");
    let work = tempdir();
    let r = Receiver::start(Answer::Ok);
    let hook = r.url("/hook/k3y");
    let vars = [("EF__NOTIFY_WEBHOOK_URL", hook.as_str()), ("EF__POLICY_SCHEDULE_CRON", "*/5 * * * *"), ("EF__BACKUP_MISSED_SLOT_MINUTES", "1")];
    // Never run before: nothing missed.
    let serve = Serve::start(db, &work.path().join("fresh"), &vars);
    assert!(r.wait_for(Duration::from_secs(3), |q| webhook_event(q, "missed-slot")).is_err(), "{}", serve.log_text());
    drop(serve);
    // A backup an hour ago (the last before ef-backup went down), then a start now: the slots
    // since then passed without one.
    let dir = work.path().join("down");
    std::fs::create_dir_all(&dir).unwrap();
    let an_hour_ago = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 3600).to_string();
    let run = ef(db, &dir.join("backups"), &[], &["backup", "--now", &an_hour_ago]);
    assert!(run.ok(), "{}", run.all());
    let serve = Serve::start(db, &dir, &vars);
    let missed = r.wait_for(WAIT, |q| webhook_event(q, "missed-slot")).unwrap_or_else(|got| panic!("{got:?}\n{}", serve.log_text()));
    assert!(missed.json()["subject"].as_str().unwrap().contains("定时备份未执行"), "{}", missed.json());
}

/// A policy file replaced by something that is no policy is refused — the running policy
/// stays — and the channels hear of it.
#[test]
fn a_rejected_policy_reload_is_told() {
    let db = own_db("ef_e2e_notify_reload");
    let work = tempdir();
    let r = Receiver::start(Answer::Ok);
    let hook = r.url("/hook/k3y");
    let policy = work.path().join("policy.wasm");
    std::fs::copy(&env().wasm, &policy).unwrap();
    let serve = Serve::start(db, work.path(), &[("EF__NOTIFY_WEBHOOK_URL", &hook), ("EF__BACKUP_POLICY", policy.to_str().unwrap())]);
    let next = work.path().join("policy.wasm.new");
    std::fs::write(&next, b"not a component").unwrap();
    std::fs::rename(&next, &policy).unwrap();
    let told = r.wait_for(WAIT, |q| webhook_event(q, "policy-rejected")).unwrap_or_else(|got| panic!("{got:?}\n{}", serve.log_text()));
    let body = told.json();
    assert!(body["subject"].as_str().unwrap().contains("策略重新加载被拒绝"), "{body}");
    assert!(body["body"].as_str().unwrap().contains("not a WebAssembly file"), "{body}");
    // The running policy still answers.
    assert_eq!(serve.post("/api/ef/v1/backup/manual").status, 200, "{}", serve.log_text());
}

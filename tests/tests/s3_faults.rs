//! S3 faults against the real binary, a real S3-compatible server (moto) and a proxy in front
//! of it that slows, stalls or cuts the traffic: the store can never slow the local backup
//! beyond a bound, hold a cancelled run, or lose someone else's object.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ef_backup_e2e::{backup_json, big_db, ef, ef_command, fake_pg_bin, files, http, s3, sample_db, tempdir, vars, Proxy, Serve, S3};

const MANUAL: &str = "/api/ef/v1/backup/manual";
const LOCAL_DONE: &str = "本地数据库备份成功";

/// The tests back up the same databases, whose run lock lets one backup run at a time (a
/// `serve` run would answer busy): one test at a time.
static ONE_BACKUP: Mutex<()> = Mutex::new(());

fn proxied(s3: &S3) -> (Proxy, S3) {
    let addr: std::net::SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(addr);
    let via = S3 { endpoint: proxy.endpoint(), ..s3.clone() };
    (proxy, via)
}

fn download(s3: &S3, key: &str, to: &Path) -> Vec<u8> {
    s3.probe(&["get", &s3.bucket, key, to.to_str().unwrap()]);
    std::fs::read(to).unwrap()
}

/// A running `ef-backup backup --json` whose stderr lines are collected with the time each
/// arrived, so a test can see when the local backup was committed while the upload goes on.
struct Watched {
    child: std::process::Child,
    started: Instant,
    lines: Arc<Mutex<Vec<(Duration, String)>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watched {
    fn start(db: &str, dir: &Path, env: &[(&str, &str)]) -> Watched {
        let started = Instant::now();
        let mut child =
            ef_command(db, dir, env).args(["backup", "--json"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((started.elapsed(), line));
            }
        });
        Watched { child, started, lines, reader }
    }

    /// When a line containing `needle` arrived (after the start), waiting up to `limit`.
    fn wait_for(&self, needle: &str, limit: Duration) -> Duration {
        loop {
            if let Some((at, _)) = self.lines.lock().unwrap().iter().find(|(_, l)| l.contains(needle)) {
                return *at;
            }
            assert!(self.started.elapsed() < limit, "no {needle:?} within {limit:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    fn finish(self) -> (String, serde_json::Value) {
        let out = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let log = self.lines.lock().unwrap().iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{log}"));
        (log, v)
    }
}

/// Pins issue 12 item 10: the compressor handed each part to the upload and waited while two
/// were in flight, so a slow store stretched the local backup (and pg_dump's snapshot) to the
/// store's speed. Now the local backup is committed at local speed; the upload falls behind,
/// and after the commit it catches up from the local file as the next parts of the same
/// upload: the object is complete and verified.
#[test]
fn a_throttled_store_does_not_slow_the_local_backup() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let db = big_db();

    let t = Instant::now();
    let (run, v) = backup_json(db, &dir.path().join("local-only"), &[], &["--no-s3"]);
    let local_only = t.elapsed();
    assert!(run.ok() && v["success"] == true, "{}", run.all());

    let (proxy, via) = proxied(&s3);
    // 100 kB/s per connection: a 20 MB backup would take minutes at the store's pace.
    proxy.throttle(100_000);
    let list = via.vars("throttled/");
    let backups = dir.path().join("backups");
    let watched = Watched::start(db, &backups, &vars(&list, &[("EF__S3_PART_SIZE_MB", "5")]));
    let committed = watched.wait_for(LOCAL_DONE, local_only * 3 + Duration::from_secs(120));
    assert!(
        committed < local_only * 3 + Duration::from_secs(5),
        "the local backup took {committed:?} with a throttled store, {local_only:?} without S3: {}",
        watched.log()
    );
    // The store recovers: the catch-up finishes well within the backup timeout.
    proxy.restore();
    let (log, v) = watched.finish();
    assert_eq!(v["data"]["s3_uploaded"], true, "{v}\n{log}");
    assert!(log.contains("S3 upload fell behind the local backup"), "{log}");
    assert!(log.contains("S3 upload catching up from the local backup"), "{log}");
    let name = v["data"]["backup_file"].as_str().unwrap();
    let key = format!("throttled/{name}");
    let head = s3.probe_json(&["head", &s3.bucket, &key]);
    let size = v["data"]["file_size_bytes"].as_u64().unwrap();
    let parts: u64 = head["etag"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(parts, size.div_ceil(5 << 20), "streamed and caught-up parts make one upload: {}", head["etag"]);
    assert!(download(&s3, &key, &dir.path().join("copy")) == std::fs::read(backups.join(name)).unwrap(), "S3 object differs");
    assert_eq!(s3.open_uploads("throttled/"), Vec::<String>::new());
}

/// Starts `serve` on `db` with S3 through `via`, shutdown grace 0 (SIGTERM cancels the run).
fn serve_with(db: &str, dir: &Path, via: &S3, prefix: &str, more: &[(&str, &str)]) -> Serve {
    let list = via.vars(prefix);
    let mut env = vars(&list, &[("EF__SHUTDOWN_GRACE_SECS", "0"), ("EF__S3_PART_SIZE_MB", "5")]);
    env.extend_from_slice(more);
    Serve::start(db, dir, &env)
}

fn wait_log(serve: &Serve, needle: &str, limit: Duration) {
    let t = Instant::now();
    while !serve.log_text().contains(needle) {
        assert!(t.elapsed() < limit, "no {needle:?} within {limit:?}: {}", serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pins issue 12 item 10: with the store stalled, the compressor blocked on the upload, and a
/// cancelled run then waited for the stalled requests (minutes of SDK timeouts) before it could
/// end. Cancelled mid-dump, the run ends (and `serve` exits) within 5 s.
#[test]
fn a_stalled_store_does_not_hold_a_run_cancelled_mid_dump() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let (proxy, via) = proxied(&s3);
    // 1 byte/s: every request through the proxy hangs.
    proxy.throttle(1);
    // Some output, then a hang: the backup is mid-dump when SIGTERM comes.
    let bin = fake_pg_bin(dir.path(), "\"$REAL\" \"$@\" | head -c 9000000\nexec sleep 120");
    let mut serve = serve_with(big_db(), dir.path(), &via, "stalled-dump/", &[("EF__PG_BIN", bin.to_str().unwrap())]);
    let (port, auth) = (serve.port, serve.auth());
    let request = std::thread::spawn(move || http(port, "POST", MANUAL, &[("Authorization", &auth)], b""));
    let backups = dir.path().join("backups");
    let t = Instant::now();
    while !files(&backups).iter().any(|f| f.ends_with(".partial")) {
        assert!(t.elapsed() < Duration::from_secs(30), "the backup never started: {}", serve.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let code = serve.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", serve.log_text());
    assert!(t.elapsed() < Duration::from_secs(5));
    let reply = request.join().unwrap();
    assert!(reply.body.contains("cancelled"), "{}", reply.body);
    assert!(files(&backups).is_empty(), "no partial or final file: {:?}", files(&backups));
}

/// Pins: a run that failed while the store had not yet answered the start of its upload left
/// that upload behind: the upload task was stopped with its request at the store, which made
/// the upload after the run had given up on it (until a sweep an hour later). Now the run waits
/// for that answer, as long as for an abort, and aborts the upload.
#[test]
fn a_run_that_fails_while_its_upload_starts_leaves_no_upload() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let (proxy, via) = proxied(&s3);
    // The store makes the upload at once; its answer reaches ef-backup 1.5 s later.
    proxy.hold_upload_starts(Duration::from_millis(1500));
    // pg_dump fails 0.5 s in, while that answer is held.
    let bin = fake_pg_bin(dir.path(), "sleep 0.5\necho 'pg_dump: error: server closed the connection unexpectedly' >&2\nexit 1");
    let list = via.vars("held-start/");
    let run = ef(sample_db(), &dir.path().join("backups"), &vars(&list, &[("EF__PG_BIN", bin.to_str().unwrap())]), &["backup", "--json"]);
    assert!(!run.ok() && run.all().contains("server closed the connection unexpectedly"), "{}", run.all());
    // Whatever was still on its way has arrived by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s3.open_uploads("held-start/"), Vec::<String>::new(), "{}", run.all());
}

/// Pins issue 12 item 10: after the local commit, finishing the upload waited for the stalled
/// store without looking at the cancel flag. Cancelled then, the run ends within 5 s, keeps its
/// local backup and reports the upload as failed.
#[test]
fn a_stalled_store_does_not_hold_a_run_cancelled_after_the_local_commit() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let (proxy, via) = proxied(&s3);
    proxy.throttle(1);
    let mut serve = serve_with(big_db(), dir.path(), &via, "stalled-upload/", &[]);
    let (port, auth) = (serve.port, serve.auth());
    let request = std::thread::spawn(move || http(port, "POST", MANUAL, &[("Authorization", &auth)], b""));
    wait_log(&serve, LOCAL_DONE, Duration::from_secs(120));
    let t = Instant::now();
    let code = serve.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", serve.log_text());
    assert!(t.elapsed() < Duration::from_secs(5));
    let reply = request.join().unwrap();
    let v = reply.json();
    assert_eq!(v["data"]["s3_uploaded"], false, "{v}");
    let err = v["data"]["s3_error"].as_str().unwrap();
    assert!(err.contains("the upload was stopped because the backup was cancelled"), "{err}");
    let backups = dir.path().join("backups");
    let name = v["data"]["backup_file"].as_str().unwrap();
    assert_eq!(files(&backups), [name.to_string()], "the local backup is kept");
}

/// The name a backup taken at `now` gets (learnt from a local-only run, so the test follows
/// the policy's naming).
fn name_at(db: &str, dir: &Path, now: &str) -> String {
    let (run, v) = backup_json(db, dir, &[], &["--no-s3", "--now", now]);
    assert!(run.ok(), "{}", run.all());
    v["data"]["backup_file"].as_str().unwrap().to_string()
}

/// Pins issue 12 item 7 (S3 part): an upload replaced whatever object had the backup's name.
/// An object already there is someone else's: the upload fails with that said, and the object
/// stays as it was.
#[test]
fn an_existing_object_is_never_replaced() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let db = sample_db();
    let now = "1700000000";
    let name = name_at(db, &dir.path().join("probe"), now);
    let key = format!("exists/{name}");
    let theirs = dir.path().join("theirs");
    std::fs::write(&theirs, b"someone else's object").unwrap();
    s3.probe(&["put", &s3.bucket, &key, theirs.to_str().unwrap()]);

    let list = s3.vars("exists/");
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(db, &backups, &vars(&list, &[]), &["--now", now]);
    assert_eq!(run.code, Some(4), "the local backup succeeds, S3 failed (exit 4): {}", run.all());
    assert_eq!(v["data"]["backup_file"], name.as_str());
    assert_eq!(v["data"]["s3_uploaded"], false, "{v}");
    let err = v["data"]["s3_error"].as_str().unwrap();
    assert!(err.contains(&format!("an object named s3://{}/{key} already exists", s3.bucket)) && err.contains("not overwritten"), "{err}");
    assert_eq!(download(&s3, &key, &dir.path().join("after")), b"someone else's object");
    assert_eq!(s3.open_uploads("exists/"), Vec::<String>::new());
}

/// Pins issue 12 item 7 (S3 part): an object that appears under the name while the upload
/// runs (after the check before it started) made the completion replace it, and a failed
/// verification would then have deleted it. The completion sends `If-None-Match: *`: the store
/// refuses (412), the upload fails, and the other object is neither replaced nor deleted.
#[test]
fn an_object_created_during_the_upload_is_neither_replaced_nor_deleted() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let (proxy, via) = proxied(&s3);
    // Slow enough that the upload is still running when the local backup is committed.
    proxy.throttle(100_000);
    let list = via.vars("raced/");
    let backups = dir.path().join("backups");
    let watched = Watched::start(big_db(), &backups, &vars(&list, &[("EF__S3_PART_SIZE_MB", "5")]));
    watched.wait_for(LOCAL_DONE, Duration::from_secs(120));
    let name = files(&backups).into_iter().find(|f| !f.ends_with(".partial")).expect("the committed backup");
    let key = format!("raced/{name}");
    let theirs = dir.path().join("theirs");
    std::fs::write(&theirs, b"written meanwhile by someone else").unwrap();
    s3.probe(&["put", &s3.bucket, &key, theirs.to_str().unwrap()]);
    proxy.restore();
    let (log, v) = watched.finish();
    assert_eq!(v["data"]["s3_uploaded"], false, "{v}\n{log}");
    let err = v["data"]["s3_error"].as_str().unwrap();
    assert!(err.contains("already exists") && err.contains("not overwritten"), "{err}");
    assert!(!err.contains("deleted"), "{err}");
    assert_eq!(download(&s3, &key, &dir.path().join("after")), b"written meanwhile by someone else");
    assert_eq!(s3.open_uploads("raced/"), Vec::<String>::new());
}

/// Pins issue 12 (smaller things): `list` failed as a whole when S3 was unreachable, hiding the
/// local backups. Now it lists them, says in one line why S3 could not be listed, and exits 1.
#[test]
fn list_shows_local_backups_when_s3_is_unreachable() {
    let _one = ONE_BACKUP.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(sample_db(), &backups, &[], &["--no-s3"]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap();
    let (proxy, via) = proxied(&s3);
    proxy.cut();
    let list = via.vars("unreachable/");
    let env = vars(&list, &[]);
    let run = ef(sample_db(), &backups, &env, &["list"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.contains(name), "the local backup is listed: {}", run.all());
    let line = run.stdout.lines().find(|l| l.contains("could not be listed")).unwrap_or_else(|| panic!("{}", run.all()));
    assert!(line.starts_with(&format!("S3 s3://{}/unreachable/: could not be listed: listing s3://", s3.bucket)), "{line}");
    assert!(!line.contains('{') && !line.contains("DispatchFailure"), "one readable line, no Debug dump: {line}");

    let run = ef(sample_db(), &backups, &env, &["list", "--json"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    let rows: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert!(run.stderr.contains("could not be listed"), "{}", run.stderr);
}

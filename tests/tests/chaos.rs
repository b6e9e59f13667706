//! Chaos: many backup cycles through the real `serve`, with faults injected at random points
//! (seeded, reproducible), and the invariants of "nothing lost" checked after every cycle and
//! at the end.
//!
//! Each cycle the seeded RNG picks one [`Fault`]; its injector runs the cycle's backup under
//! it. The invariants, checked after every cycle unless said otherwise (a breach is an
//! "invariant violation" in the summary):
//!
//! 1. Every file with a final name is a complete dump (gzip intact, the dump's footer), and at
//!    the end every one restores to a copy equal to the source database.
//! 2. Every S3 object has a final name; at the end, each equals a local backup or is itself a
//!    complete dump, and no incomplete multipart upload is left.
//! 3. A failure is visible: the response says so, an error log line names its cause, and
//!    /metrics counts it.
//! 4. The newest good backup and the policy's minimum (the default policy: everything younger
//!    than 7 days; GFS: its 14 newest; never fewer than 3) are never deleted, and foreign
//!    files are never touched.
//! 5. Two pg_dumps never overlap.
//! 6. No `.partial` outlives the clean-up rule (a day).
//! 7. A backup is attempted at every scheduled slot while serve runs (the default policy, the
//!    clock right): checked at the end, from the log.
//! 8. No run is lost from history: the state store holds every finished run, as many as
//!    /metrics counts, across restarts and kills.
//!
//! Besides these, each fault checks what it must (or must not) cause, e.g. a backup with
//! PostgreSQL down must fail; a breach counts as a violation too. The service log must hold
//! no panic.
//!
//! `EF_CHAOS_CYCLES` (default 30) and `EF_CHAOS_SEED` (default: from the clock; printed, and
//! printed again on failure) make soak runs and replays:
//! `EF_CHAOS_CYCLES=300 EF_CHAOS_SEED=42 scripts/test.sh -p ef-backup-e2e --test chaos`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ef_backup_e2e::{compare_dbs_on, ef_command, env, files, free_port, http, pg_cluster, tempdir, HttpReply, Mount, PrivateS3, Proxy, Serve};

const MANUAL: &str = "/api/ef/v1/backup/manual";
const STATUS: &str = "/api/ef/v1/backup/status";
const FOOTER: &[u8] = b"-- PostgreSQL database dump complete\n--\n";

/// xorshift64*: small, seeded, good enough to pick faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The faults. The seeded RNG picks one per cycle by its index in [`Fault::ALL`], so a new fault
/// goes at the end: anywhere else, every recorded seed would replay a different run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Nothing,
    KillPgDump,
    RestartPostgres,
    S3Down,
    S3Slow,
    DiskFull,
    SigkillServe,
    SwapPolicyGood,
    SwapPolicyBroken,
    ConcurrentTriggers,
    WrongTokens,
    ClientHangsUp,
    S3Throttled,
    OddNames,
    ClockBackADay,
    ClockForwardAMonth,
    LockSessionTerminated,
    ConcurrentCliBackup,
    RestartServe,
}

impl Fault {
    const ALL: [Fault; 19] = [
        Fault::Nothing,
        Fault::KillPgDump,
        Fault::RestartPostgres,
        Fault::S3Down,
        Fault::S3Slow,
        Fault::DiskFull,
        Fault::SigkillServe,
        Fault::SwapPolicyGood,
        Fault::SwapPolicyBroken,
        Fault::ConcurrentTriggers,
        Fault::WrongTokens,
        Fault::ClientHangsUp,
        Fault::S3Throttled,
        Fault::OddNames,
        Fault::ClockBackADay,
        Fault::ClockForwardAMonth,
        Fault::LockSessionTerminated,
        Fault::ConcurrentCliBackup,
        Fault::RestartServe,
    ];

    fn pick(rng: &mut Rng) -> Fault {
        Fault::ALL[rng.below(Fault::ALL.len() as u64) as usize]
    }

    /// The name the cycle log and the summary print.
    fn name(self) -> &'static str {
        match self {
            Fault::Nothing => "none",
            Fault::KillPgDump => "kill pg_dump",
            Fault::RestartPostgres => "restart PostgreSQL",
            Fault::S3Down => "S3 down",
            Fault::S3Slow => "S3 slow",
            Fault::DiskFull => "disk full",
            Fault::SigkillServe => "SIGKILL serve",
            Fault::SwapPolicyGood => "swap policy (good)",
            Fault::SwapPolicyBroken => "swap policy (broken)",
            Fault::ConcurrentTriggers => "concurrent triggers",
            Fault::WrongTokens => "wrong tokens",
            Fault::ClientHangsUp => "client hangs up",
            Fault::S3Throttled => "S3 throttled",
            Fault::OddNames => "odd names appear",
            Fault::ClockBackADay => "clock back a day",
            Fault::ClockForwardAMonth => "clock forward a month",
            Fault::LockSessionTerminated => "lock session terminated",
            Fault::ConcurrentCliBackup => "concurrent CLI backup",
            Fault::RestartServe => "restart serve",
        }
    }

    /// Runs the cycle's backup under this fault; the faults that pick a moment take it from `rng`.
    fn inject(self, w: &mut World, rng: &mut Rng) {
        match self {
            Fault::Nothing => no_fault(w),
            Fault::KillPgDump => kill_pg_dump(w, rng),
            Fault::RestartPostgres => restart_postgres(w),
            Fault::S3Down => s3_down(w),
            Fault::S3Slow => s3_slow(w),
            Fault::DiskFull => disk_full(w),
            Fault::SigkillServe => sigkill_serve(w, rng),
            Fault::SwapPolicyGood => swap_policy_good(w),
            Fault::SwapPolicyBroken => swap_policy_broken(w),
            Fault::ConcurrentTriggers => concurrent_triggers(w),
            Fault::WrongTokens => wrong_tokens(w),
            Fault::ClientHangsUp => client_hangs_up(w, rng),
            Fault::S3Throttled => s3_throttled(w),
            Fault::OddNames => odd_names_appear(w),
            Fault::ClockBackADay => clock_back_a_day(w),
            Fault::ClockForwardAMonth => clock_forward_a_month(w),
            Fault::LockSessionTerminated => lock_session_terminated(w, rng),
            Fault::ConcurrentCliBackup => concurrent_cli_backup(w),
            Fault::RestartServe => restart_serve(w),
        }
    }
}

// `ALL` in declaration order, each variant once: index i is the i-th fault, as the seeds expect.
const _: () = {
    let mut i = 0;
    while i < Fault::ALL.len() {
        assert!(Fault::ALL[i] as usize == i);
        i += 1;
    }
};

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A plain backup: the baseline every other fault is measured against.
fn no_fault(w: &mut World) {
    w.backup();
}

/// pg_dump killed (-9) at a random moment of its run: a failure must say so; a final name, if
/// any, must be a complete dump.
fn kill_pg_dump(w: &mut World, rng: &mut Rng) {
    let t = Instant::now();
    let req = w.trigger_in_background();
    if let Some(pid) = w.wait_for_pidfile(t) {
        std::thread::sleep(Duration::from_millis(100 + rng.below(700)));
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
    w.record_reply(req);
}

/// PostgreSQL stopped for one backup, which must fail; started again for the next cycle.
fn restart_postgres(w: &mut World) {
    pg_cluster(&["stop", w.pg_dir.to_str().unwrap()]);
    let (status, v) = w.backup();
    if status == 200 {
        w.violation(format!("a backup with PostgreSQL down succeeded: {v}"));
    }
    pg_cluster(&["start", w.pg_dir.to_str().unwrap(), &w.pg_port.clone()]);
}

/// The network to S3 cut: the local backup may succeed, but must not claim the upload.
fn s3_down(w: &mut World) {
    w.proxy.cut();
    let (status, v) = w.backup();
    if status == 200 && v["data"]["s3_uploaded"] != false {
        w.violation(format!("S3 down, yet s3_uploaded is not false: {v}"));
    }
    w.proxy.restore();
}

/// S3 at 1 MiB/s per connection for one backup: an upload that lags behind the dump.
fn s3_slow(w: &mut World) {
    w.proxy.throttle(1 << 20);
    w.backup();
    w.proxy.restore();
}

/// The backup disk full but for 64 KiB: the backup must fail.
fn disk_full(w: &mut World) {
    let free = free_bytes(&w.backups);
    let filler = w.backups.join("filler.bin");
    let _ = std::fs::write(&filler, vec![0u8; free.saturating_sub(64 * 1024) as usize]);
    let (status, v) = w.backup();
    if status == 200 {
        w.violation(format!("a backup on a full disk succeeded: {v}"));
    }
    std::fs::remove_file(&filler).unwrap();
}

/// serve killed (-9) at a random moment of a backup and started again: the checks after the
/// cycle (history, files, slots) find what the kill left.
fn sigkill_serve(w: &mut World, rng: &mut Rng) {
    let t = Instant::now();
    let port = w.serve().port;
    let auth = w.serve().auth();
    // The request dies with the server: its reply is not expected.
    let req = std::thread::spawn(move || ef_backup_e2e::try_http(port, "POST", MANUAL, &[("Authorization", &auth)], b""));
    w.wait_for_pidfile(t);
    std::thread::sleep(Duration::from_millis(rng.below(1200)));
    w.close_slots();
    if let Some(mut s) = w.serve.take() {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    let _ = req.join();
    w.start_serve();
}

/// A good policy file swapped in while serve runs: it must be loaded and used.
fn swap_policy_good(w: &mut World) {
    // To the GFS policy for one backup and back: the default policy's schedule is the
    // one whose slots are checked, so it should run most of the time.
    w.close_slots();
    for policy in [1, 0] {
        w.current_policy = policy;
        let src = w.good_policies[policy].clone();
        let reloads = w.logs().matches("policy reloaded").count();
        w.install_policy(&src);
        if !w.wait_for_log("policy reloaded", reloads + 1) {
            w.violation("a good policy file was not loaded".into());
        }
        if policy == 1 {
            w.backup();
        }
    }
    w.open_slots(3);
}

/// A broken policy file swapped in: it must be rejected, and the last good one keep working.
fn swap_policy_broken(w: &mut World) {
    let rejected = w.logs().matches("policy reload rejected").count();
    let broken = w.dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0garbage").unwrap();
    w.install_policy(&broken);
    if !w.wait_for_log("policy reload rejected", rejected + 1) {
        w.violation("a broken policy file was not rejected".into());
    }
    let (status, v) = w.backup();
    if status != 200 {
        w.violation(format!("the last good policy should keep working: {v}"));
    }
    let src = w.good_policies[w.current_policy].clone();
    w.install_policy(&src);
}

/// Four manual triggers at once: at most one may run.
fn concurrent_triggers(w: &mut World) {
    let replies: Vec<(u16, serde_json::Value)> =
        ef_backup_e2e::post_concurrently(w.serve().port, &w.serve().auth(), MANUAL, 4).into_iter().map(|h| h.join().unwrap()).collect();
    let ran = replies.iter().filter(|(s, _)| *s != 409).count();
    // None runs when a scheduled slot took the run lock first: all four are refused.
    if ran > 1 {
        w.violation(format!("{ran} of 4 concurrent triggers ran a backup: {replies:?}"));
    }
    for (s, v) in &replies {
        w.record(*s, v);
    }
}

/// Requests with a wrong token between good ones: every one refused (401), the good ones answered.
fn wrong_tokens(w: &mut World) {
    w.wrong_token(MANUAL, "POST");
    w.wrong_token(STATUS, "GET");
    w.status_checks(3);
    w.wrong_token(STATUS, "GET");
    w.backup();
}

/// A client that hangs up mid-backup: the run still ends and is counted, and the service is not left busy.
fn client_hangs_up(w: &mut World, rng: &mut Rng) {
    let before = w.counted();
    let listing: BTreeSet<String> = files(&w.backups).into_iter().collect();
    post_and_hang_up(w.serve().port, &w.serve().auth(), Duration::from_millis(100 + rng.below(900)));
    match w.wait_for_run_counted(before) {
        None => w.violation("a manual run whose client hung up was never recorded (or never ended)".into()),
        Some(after) if after.0 > before.0 => {
            let new: Vec<String> =
                files(&w.backups).into_iter().filter(|n| n.ends_with(".sql.gz") && n.starts_with("chaos_") && !listing.contains(n)).collect();
            w.good.extend(new);
        }
        Some(_) => w.failed += 1,
    }
    // The service is not wedged: the next request runs.
    let (status, v) = w.backup();
    if status == 409 {
        w.violation(format!("after a client hung up, the next request was refused as busy: {v}"));
    }
}

/// S3 at 32 KiB/s, far below the dump rate: the local backup must not wait for the store.
fn s3_throttled(w: &mut World) {
    w.proxy.throttle(32 * 1024);
    let t = Instant::now();
    let (status, v) = w.backup();
    if status != 200 {
        w.violation(format!("a throttled store failed the local backup: HTTP {status} {v}"));
    }
    if t.elapsed() > Duration::from_secs(40) {
        w.violation(format!("a throttled store held the run for {:?}", t.elapsed()));
    }
    w.proxy.restore();
}

/// Odd names in the backup directory: retention, status and /metrics must work beside them.
fn odd_names_appear(w: &mut World) {
    // A foreign name the default policy once trapped on, and a recognised name dated 40
    // days ahead (a valid dump): neither may stop retention, and the future one must not
    // count as the newest backup.
    let odd = w.backups.join("chaos_backup_2025年1_013000.sql.gz");
    if !odd.exists() {
        std::fs::write(&odd, b"not a backup").unwrap();
        w.foreign.push((odd, b"not a backup".to_vec()));
    }
    if let Some(newest) = w.good.last().cloned().filter(|n| w.backups.join(n).exists()) {
        let future = format!("chaos_backup_{}.sql.gz", compact(unix_now() + 40 * 86_400));
        let _ = std::fs::copy(w.backups.join(&newest), w.backups.join(future));
    }
    let (status, v) = w.backup();
    if status != 200 {
        w.violation(format!("a backup beside odd names failed: HTTP {status} {v}"));
    }
    if w.serve().get(STATUS).status != 200 {
        w.violation("status fails beside odd names".into());
    }
    if metric(w.serve().port, "ef_backup_backups_on_disk").partial_cmp(&1.0).is_none_or(|o| o.is_lt()) {
        w.violation("/metrics counts no backups beside odd names".into());
    }
}

/// serve's clock a day behind for one backup: retention must not delete by it.
fn clock_back_a_day(w: &mut World) {
    // Whole days: the scheduler's slots keep their time of day, so slots stay checked.
    let before: Vec<String> = files(&w.backups).into_iter().filter(|n| n.ends_with(".sql.gz")).collect();
    let skips = metric(w.serve().port, "ef_backup_retention_clock_skips_total");
    // Only a clock earlier than a recorded run is known to be wrong.
    let history = w.counted();
    w.set_clock("-1d");
    let (status, _) = w.backup();
    w.set_clock("+0");
    if status == 200 {
        let after = files(&w.backups);
        let gone: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
        if !gone.is_empty() {
            w.violation(format!("retention ran with the clock a day back and deleted {gone:?}"));
        }
        if history.0 + history.1 > 0.0
            && metric(w.serve().port, "ef_backup_retention_clock_skips_total").partial_cmp(&skips).is_none_or(|o| o.is_le())
        {
            w.violation("retention skipped for a clock behind the history was not counted in /metrics".into());
        }
    }
}

/// serve's clock a month ahead for one backup (retention then off until the clock catches up).
fn clock_forward_a_month(w: &mut World) {
    // Not across a scheduled slot: an upload that S3 began at +30 days and that is left by a
    // run whose completion met the clock going back can only be told stale 30 days later
    // (seed 1796602926834633589 on a fresh clone: a slot at the cycle's first second).
    let to_slot = SLOT_EVERY - unix_now().rem_euclid(SLOT_EVERY);
    if to_slot <= 4 {
        std::thread::sleep(Duration::from_secs(to_slot as u64 + 1));
        w.wait_idle();
    }
    w.set_clock("+30d");
    w.backup();
    w.set_clock("+0");
    w.jumped_forward = true;
}

/// The session holding the run lock terminated mid-backup: a failure must say so like any other.
fn lock_session_terminated(w: &mut World, rng: &mut Rng) {
    let t = Instant::now();
    let req = w.trigger_in_background();
    if w.wait_for_pidfile(t).is_some() {
        std::thread::sleep(Duration::from_millis(rng.below(800)));
        let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'ef-backup-lock'";
        let _ = ef_backup_e2e::psql_on(&w.pg_port, "postgres", sql);
    }
    w.record_reply(req);
}

/// A CLI backup while serve's backup runs: the CLI must answer busy (exit 3), or run on its
/// own if serve's run had just ended.
fn concurrent_cli_backup(w: &mut World) {
    let t = Instant::now();
    let req = w.trigger_in_background();
    if w.wait_for_pidfile(t).is_some() {
        let vars = w.vars();
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = ef_command("chaos", &w.backups, &borrowed).args(["backup", "--json"]).output().unwrap();
        match out.status.code() {
            Some(3) => w.cli_busy += 1,
            // The serve run may have ended just before: then the CLI ran on its own.
            Some(0) | Some(4) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if let Some(name) = v["data"]["backup_file"].as_str() {
                    w.good.push(name.to_string());
                }
            }
            other => w.violation(format!("a CLI backup during a serve backup exited {other:?}: {}", String::from_utf8_lossy(&out.stderr))),
        }
    }
    w.record_reply(req);
}

/// serve stopped (SIGTERM) and started again: its counts must survive.
fn restart_serve(w: &mut World) {
    let remembered = |w: &World| {
        let p = w.serve().port;
        (metric(p, "ef_backup_successes_total"), metric(p, "ef_backup_failures_total"), metric(p, "ef_backup_last_success_timestamp_seconds"))
    };
    let before = remembered(w);
    w.close_slots();
    if let Some(mut s) = w.serve.take() {
        s.terminate(Duration::from_secs(60));
    }
    w.start_serve();
    let after = remembered(w);
    // A scheduled slot may have run in between; the counts may only grow by it.
    if after.0 < before.0 || after.1 < before.1 || after.2 < before.2 || after.0 + after.1 > before.0 + before.1 + 1.0 {
        w.violation(format!("state did not survive a restart: before {before:?}, after {after:?}"));
    }
}

/// Every scheduled slot, in the default policy's zone (Beijing, UTC+8).
const SLOT_EVERY: i64 = 15;
const ZONE_OFFSET: i64 = 8 * 3600;

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `YYYYMMDD_HHMMSS` of Unix time `t` in UTC+8 (the default policy's names).
fn compact(t: i64) -> String {
    let local = t + ZONE_OFFSET;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}_{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `HH:MM:SS` of a slot as the scheduler's log line shows it.
fn slot_label(t: i64) -> String {
    let secs = (t + ZONE_OFFSET).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn metric(port: u16, name: &str) -> f64 {
    let m = http(port, "GET", "/metrics", &[], b"");
    m.body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

struct World {
    dir: PathBuf,
    pg_dir: PathBuf,
    pg_port: String,
    backups: PathBuf,
    policy_file: PathBuf,
    good_policies: [PathBuf; 2],
    current_policy: usize,
    s3: PrivateS3,
    proxy: Proxy,
    serve: Option<Serve>,
    pidfile: PathBuf,
    overlaps: PathBuf,
    // What happened.
    faults: BTreeMap<&'static str, u32>,
    good: Vec<String>,
    failed: u32,
    status_ok: u32,
    rejected_tokens: u32,
    checked: BTreeSet<String>,
    foreign: Vec<(PathBuf, Vec<u8>)>,
    violations: Vec<String>,
    /// The libfaketime clock file `serve` reads (`+0`, `-1d`, `+30d`).
    clock_file: PathBuf,
    /// Windows (Unix seconds) in which every slot must have been attempted; the last may be open.
    slot_windows: Vec<(i64, Option<i64>)>,
    /// After a jump forward, retention is off until the clock catches up (by design), and the
    /// default policy's "younger than 7 days" no longer protects the rest.
    jumped_forward: bool,
    cli_busy: u32,
}

impl World {
    fn vars(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("EF__DB_PORT".into(), self.pg_port.clone()),
            ("EF__BACKUP_POLICY".into(), self.policy_file.display().to_string()),
            ("EF__PG_BIN".into(), self.dir.join("fakebin").display().to_string()),
            ("EF__BACKUP_TIMEOUT_SECS".into(), "30".into()),
            ("EF__SHUTDOWN_GRACE_SECS".into(), "2".into()),
            ("EF__S3_PART_SIZE_MB".into(), "5".into()),
            ("EF__POLICY_SCHEDULE_CRON".into(), format!("*/{SLOT_EVERY} * * * * *")),
            ("EF__BACKUP_RETRY_DELAY_SECS".into(), "0".into()),
            // The clock faults move serve's wall clock (not its monotonic one, which drives timers).
            ("LD_PRELOAD".into(), libfaketime()),
            ("FAKETIME_TIMESTAMP_FILE".into(), self.clock_file.display().to_string()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
        let via_proxy = ef_backup_e2e::S3 { endpoint: self.proxy.endpoint(), ..self.s3.s3.clone() };
        v.extend(via_proxy.vars("chaos/").into_iter().map(|(k, v)| (k.to_string(), v)));
        v
    }

    fn start_serve(&mut self) {
        let vars = self.vars();
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.serve = Some(Serve::start("chaos", &self.dir, &borrowed));
        if self.current_policy == 0 {
            self.open_slots(3);
        }
    }

    /// Slots from `delay` seconds on must be attempted (the default policy runs, the clock is right).
    fn open_slots(&mut self, delay: i64) {
        if !matches!(self.slot_windows.last(), Some((_, None))) {
            self.slot_windows.push((unix_now() + delay, None));
        }
    }

    fn close_slots(&mut self) {
        if let Some((_, end @ None)) = self.slot_windows.last_mut() {
            *end = Some(unix_now());
        }
    }

    fn set_clock(&mut self, offset: &str) {
        let tmp = self.clock_file.with_extension("new");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, &self.clock_file).unwrap();
    }

    /// (successes, failures) as /metrics counts them.
    fn counted(&self) -> (f64, f64) {
        let port = self.serve().port;
        (metric(port, "ef_backup_successes_total"), metric(port, "ef_backup_failures_total"))
    }

    /// Waits until no backup runs and `before` + 1 runs were counted; returns the new counts.
    fn wait_for_run_counted(&self, before: (f64, f64)) -> Option<(f64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let now = self.counted();
            if metric(self.serve().port, "ef_backup_running") == 0.0 && now.0 + now.1 > before.0 + before.1 {
                return Some(now);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// The state store's (finished runs, good file names), through python3's sqlite3.
    fn history(&self) -> Option<(u64, BTreeSet<String>)> {
        let state = ef_backup_e2e::state_dir_of(&self.backups);
        let db = files(&state).into_iter().find(|f| f.starts_with("state-chaos-") && f.ends_with(".sqlite"))?;
        let script = "import sqlite3,sys,json\nc=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n\
            n=c.execute(\"SELECT count(*) FROM runs WHERE kind='backup' AND finished_at IS NOT NULL\").fetchone()[0]\n\
            ok=[r[0] for r in c.execute(\"SELECT file_name FROM runs WHERE kind='backup' AND outcome='ok'\")]\nprint(json.dumps([n,ok]))";
        let out = Command::new("python3").args(["-c", script]).arg(state.join(db)).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let names = v[1].as_array()?.iter().filter_map(|n| n.as_str().map(str::to_string)).collect();
        Some((v[0].as_u64()?, names))
    }

    fn serve(&self) -> &Serve {
        self.serve.as_ref().expect("serve running")
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for f in files(&self.dir).iter().filter(|f| f.starts_with("serve-") && f.ends_with(".log")) {
            all.push_str(&std::fs::read_to_string(self.dir.join(f)).unwrap_or_default());
        }
        all
    }

    fn violation(&mut self, what: String) {
        eprintln!("INVARIANT VIOLATED: {what}");
        self.violations.push(what);
    }

    /// One manual backup over HTTP, its outcome recorded (invariant 3); a 409 because a
    /// scheduled slot is running is retried.
    fn backup(&mut self) -> (u16, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.serve().post(MANUAL);
            let v = r.json();
            if r.status == 409 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            self.record(r.status, &v);
            return (r.status, v);
        }
    }

    /// A manual trigger on a thread of its own, so that a fault can land while its backup runs.
    fn trigger_in_background(&self) -> JoinHandle<HttpReply> {
        let (port, auth) = (self.serve().port, self.serve().auth());
        std::thread::spawn(move || http(port, "POST", MANUAL, &[("Authorization", &auth)], b""))
    }

    /// Records the reply to [`World::trigger_in_background`].
    fn record_reply(&mut self, req: JoinHandle<HttpReply>) {
        let r = req.join().unwrap();
        let v = r.json();
        self.record(r.status, &v);
    }

    /// Waits (a while) for a scheduled run to end, so a fault lands on the cycle's own backup.
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && metric(self.serve().port, "ef_backup_running") != 0.0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_foreign(&self, name: &str) -> bool {
        self.foreign.iter().any(|(p, _)| p.file_name().is_some_and(|f| f == name))
    }

    /// Counts a backup's outcome; a failure must be visible (invariant 3).
    fn record(&mut self, status: u16, v: &serde_json::Value) {
        match status {
            200 if v["success"] == true => {
                let name = v["data"]["backup_file"].as_str().unwrap().to_string();
                if !self.backups.join(&name).is_file() {
                    self.violation(format!("API said {name} succeeded, but the file is missing"));
                }
                self.good.push(name);
            }
            409 => {}
            _ => {
                self.failed += 1;
                let message = v["message"].as_str().unwrap_or_default().to_string();
                if v["success"] != false || message.is_empty() {
                    self.violation(format!("a failed backup must say so: HTTP {status} {v}"));
                }
                // The same failure in an error log line, and in /metrics.
                let cause = v["data"]["error"].as_str().unwrap_or(&message).to_string();
                let head: String = cause.chars().take(40).collect();
                if !self.logs().lines().any(|l| l.contains("ERROR") && l.contains(&head)) {
                    self.violation(format!("no error log line names the cause {head:?}"));
                }
                let m = http(self.serve().port, "GET", "/metrics", &[], b"");
                let failures = m.body.lines().find_map(|l| l.strip_prefix("ef_backup_failures_total ")).and_then(|v| v.parse::<f64>().ok());
                if failures.unwrap_or(0.0) < 1.0 {
                    self.violation(format!("/metrics does not count the failure: {:?}", failures));
                }
            }
        }
    }

    fn status_checks(&mut self, n: usize) {
        for _ in 0..n {
            let r = self.serve().get(STATUS);
            if r.status == 200 {
                self.status_ok += 1;
            } else {
                self.violation(format!("authorized status answered {}: {}", r.status, r.body));
            }
        }
    }

    fn wrong_token(&mut self, path: &str, method: &str) {
        let r = http(self.serve().port, method, path, &[("Authorization", "Bearer wrong-token-0123456789abcdef")], b"");
        if r.status == 401 {
            self.rejected_tokens += 1;
        } else {
            self.violation(format!("a wrong token got {} on {method} {path}", r.status));
        }
    }

    fn wait_for_pidfile(&self, since: Instant) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(meta) = std::fs::metadata(&self.pidfile) {
                if meta.modified().ok().is_some_and(|m| m.elapsed().unwrap_or_default() < since.elapsed()) {
                    return std::fs::read_to_string(&self.pidfile).ok().map(|s| s.trim().to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn install_policy(&mut self, src: &Path) {
        let tmp = self.dir.join("policy.tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, &self.policy_file).unwrap();
    }

    fn wait_for_log(&self, needle: &str, at_least: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.logs().matches(needle).count() >= at_least {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The invariants that hold after every cycle: 1 (complete dumps; restores are checked at
    /// the end), 4 and 6 on the backup directory, 2 (final names) on the bucket, 8 and 5.
    fn check(&mut self) {
        let listing = files(&self.backups);
        // Invariant 1.
        for name in listing.iter().filter(|n| n.ends_with(".sql.gz")) {
            if self.is_foreign(name) || self.checked.contains(name) {
                continue;
            }
            match complete_dump(&self.backups.join(name)) {
                Ok(()) => {
                    self.checked.insert(name.clone());
                }
                Err(e) => self.violation(format!("{name} has a final name but {e}")),
            }
        }
        // Invariant 6.
        for name in listing.iter().filter(|n| n.ends_with(".partial")) {
            let age = std::fs::metadata(self.backups.join(name)).and_then(|m| m.modified()).map(|m| m.elapsed().unwrap_or_default());
            if age.is_ok_and(|a| a > Duration::from_secs(86_400)) {
                self.violation(format!("{name} is older than the clean-up rule"));
            }
        }
        // Invariant 4.
        if let Some(newest) = self.good.last().cloned() {
            if !listing.contains(&newest) {
                self.violation(format!("the newest good backup {newest} was deleted"));
            }
        }
        // The default policy keeps everything younger than 7 days: every good backup it named
        // must still be there; the GFS policy keeps at least its 14 newest.
        let default_named: Vec<&String> =
            if self.jumped_forward { Vec::new() } else { self.good.iter().filter(|n| n.starts_with("chaos_backup_")).collect() };
        let missing: Vec<&&String> = default_named.iter().filter(|n| !listing.contains(n)).collect();
        if !missing.is_empty() {
            self.violation(format!("good backups deleted: {missing:?}"));
        }
        // Both name the database `chaos`: the default policy `chaos_backup_…`, GFS `chaos_…`.
        let gfs = |n: &String| n.starts_with("chaos_") && !n.starts_with("chaos_backup_");
        let gfs_good = self.good.iter().filter(|n| gfs(n)).count();
        let gfs_present = listing.iter().filter(|n| gfs(n) && n.ends_with(".sql.gz")).count();
        if gfs_present < gfs_good.min(14) {
            self.violation(format!("GFS minimum count broken: {gfs_present} of {gfs_good} present"));
        }
        for (path, content) in self.foreign.clone() {
            if std::fs::read(&path).ok().as_ref() != Some(&content) {
                self.violation(format!("foreign file {} was touched", path.display()));
            }
        }
        // Invariant 2, the names; the contents are checked at the end.
        let keys: Vec<String> = serde_json::from_value(self.s3.s3.probe_json(&["list", &self.s3.s3.bucket, "chaos/"])).unwrap();
        for k in &keys {
            if !k.ends_with(".sql.gz") {
                self.violation(format!("S3 object {k} has no final name"));
            }
        }
        // Invariant 4: never fewer than the minimum count of this deployment's backups (EF__BACKUP_MIN_KEEP 3).
        let ours = listing.iter().filter(|n| n.starts_with("chaos_") && n.ends_with(".sql.gz") && !n.contains('年')).count();
        if ours < self.good.len().min(3) {
            self.violation(format!("fewer than the minimum of 3 backups kept: {ours}"));
        }
        // Invariant 8: every finished run is in the history, as many as /metrics counts (a
        // scheduled run may finish between the two reads: a few tries).
        let mut last = String::new();
        let consistent = (0..5).any(|_| {
            let counted = self.counted();
            match self.history() {
                Some((rows, ok)) if rows as f64 == counted.0 + counted.1 => {
                    let missing: Vec<&String> = self.good.iter().filter(|g| !ok.contains(*g)).collect();
                    if missing.is_empty() {
                        return true;
                    }
                    last = format!("good backups missing from the history: {missing:?}");
                }
                other => last = format!("history {:?} vs /metrics {counted:?}", other.map(|(n, ok)| (n, ok.len()))),
            }
            std::thread::sleep(Duration::from_millis(500));
            false
        });
        if !consistent {
            self.violation(format!("a run is lost from history: {last}"));
        }
        // Invariant 5, as the fake pg_dump's lock saw it.
        let overlaps = std::fs::read_to_string(&self.overlaps).unwrap_or_default();
        if !overlaps.is_empty() {
            self.violation(format!("two pg_dumps ran at once: {overlaps}"));
            std::fs::write(&self.overlaps, b"").unwrap();
        }
    }
}

fn libfaketime() -> String {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libfaketime (scripts/setup.sh installs the faketime package)")
        .to_string()
}

/// Sends an authorized manual trigger on a raw connection and hangs up after `after`.
fn post_and_hang_up(port: u16, auth: &str, after: Duration) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!("POST {MANUAL} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    std::thread::sleep(after);
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// Invariant 7: every slot of every window has a log line saying it was attempted (run, or
/// skipped because a backup ran or another instance had it).
fn missed_slots(windows: &[(i64, Option<i64>)], logs: &str, end: i64) -> Vec<String> {
    let seen: BTreeSet<String> = logs
        .lines()
        .filter_map(|l| {
            let at = l
                .find("scheduled backup for ")
                .map(|i| i + "scheduled backup for ".len())
                .or_else(|| l.find(" backup; this one skips it").or_else(|| l.find(" backup: ")).and_then(|_| l.find(" the ").map(|i| i + 5)))?;
            // `YYYY-MM-DD HH:MM:SS ZONE`: the time of day identifies a slot within one run.
            l.get(at + 11..at + 19).map(str::to_string)
        })
        .collect();
    let mut missed = Vec::new();
    for (start, stop) in windows {
        let stop = stop.unwrap_or(end) - 2;
        let mut t = start.div_euclid(SLOT_EVERY) * SLOT_EVERY + SLOT_EVERY;
        while t <= stop {
            if !seen.contains(&slot_label(t)) {
                missed.push(slot_label(t));
            }
            t += SLOT_EVERY;
        }
    }
    missed
}

/// gunzip -t and the footer: what a good backup must be.
fn complete_dump(path: &Path) -> Result<(), String> {
    let mut sql = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).map_err(|e| e.to_string())?)
        .read_to_end(&mut sql)
        .map_err(|e| format!("is not valid gzip ({e})"))?;
    let tail = &sql[sql.len().saturating_sub(300)..];
    if tail.windows(FOOTER.len()).any(|w| w == FOOTER) {
        Ok(())
    } else {
        Err("does not end with the dump's footer".into())
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

fn run_chaos(seed: u64, cycles: usize) {
    let e = env();
    let dir = tempdir();
    let d = dir.path().to_path_buf();

    // A cluster of its own: this test stops and starts it.
    let pg_dir = d.join("pg");
    let pg_port = free_port().to_string();
    pg_cluster(&["start", pg_dir.to_str().unwrap(), &pg_port]);
    pg_cluster(&["seed", pg_dir.to_str().unwrap(), &pg_port, "chaos", "5"]);

    // S3 behind a proxy that the faults cut and slow; its clock a day behind, so uploads that
    // a fault leaves incomplete count as stale and the next good run aborts them.
    let s3 = PrivateS3::start(&d.join("s3"), free_port(), true);
    s3.clock("-1d");
    let proxy = Proxy::start(s3.s3.endpoint.trim_start_matches("http://").parse().unwrap());

    // pg_dump that takes a second (so faults land mid-backup) and records overlaps. The lock is
    // held by the wrapper and the pg_dump it becomes, not by its `sleep` (which would outlive a
    // wrapper killed with ef-backup and count as an overlap that no pg_dump made).
    let pidfile = d.join("pg_dump.pid");
    let overlaps = d.join("overlaps");
    let lock = d.join("pg_dump.lock");
    std::fs::write(&overlaps, b"").unwrap();
    ef_backup_e2e::fake_pg_bin(
        &d,
        &format!(
            "exec 9>{lock}\nflock -n 9 || echo \"overlap at $(date +%T.%N)\" >> {ov}\necho $$ > {pid}.tmp && mv {pid}.tmp {pid}\nsleep 1 9>&-\nexec \"$REAL\" \"$@\"",
            lock = lock.display(),
            ov = overlaps.display(),
            pid = pidfile.display()
        ),
    );

    let backups = d.join("backups");
    let mount = Mount::tmpfs(&backups, "48m");
    let mut foreign = Vec::new();
    for (name, content) in [("foreign_manual.sql.gz", b"keep me".to_vec()), ("notes.txt", b"operator notes".to_vec())] {
        std::fs::write(backups.join(name), &content).unwrap();
        foreign.push((backups.join(name), content));
    }

    let policy_file = d.join("policy.wasm");
    let gfs = PathBuf::from(std::env::var("EF_TEST_GFS_WASM").expect("EF_TEST_GFS_WASM"));
    std::fs::copy(&e.wasm, &policy_file).unwrap();
    let mut w = World {
        dir: d.clone(),
        pg_dir,
        pg_port,
        backups,
        policy_file,
        good_policies: [e.wasm.clone(), gfs],
        current_policy: 0,
        s3,
        proxy,
        serve: None,
        pidfile,
        overlaps,
        faults: BTreeMap::new(),
        good: Vec::new(),
        failed: 0,
        status_ok: 0,
        rejected_tokens: 0,
        checked: BTreeSet::new(),
        foreign,
        violations: Vec::new(),
        clock_file: d.join("serve-clock"),
        slot_windows: Vec::new(),
        jumped_forward: false,
        cli_busy: 0,
    };
    w.set_clock("+0");
    w.start_serve();
    let mut rng = Rng(seed | 1);
    let started = Instant::now();

    for cycle in 0..cycles {
        let fault = Fault::pick(&mut rng);
        *w.faults.entry(fault.name()).or_default() += 1;
        eprintln!("chaos cycle {cycle}: {fault}");
        // Names have one-second resolution: one backup per second at most.
        std::thread::sleep(Duration::from_millis(1100));
        w.wait_idle();
        fault.inject(&mut w, &mut rng);
        w.status_checks(2);
        w.check();
        // About 6 s a cycle here; a run far slower than that is stuck somewhere.
        assert!(started.elapsed() < Duration::from_secs(600 + 20 * cycles as u64), "chaos run out of time (seed {seed})");
    }

    // A last clean cycle: the aborts of uploads that faults left behind happen here.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, v) = w.backup();
    if status != 200 || v["data"]["s3_uploaded"] != true {
        w.violation(format!("the final clean backup did not fully succeed: {v}"));
    }
    w.check();
    // serve's schedule keeps running: a slot that starts now has an upload in flight that is
    // not a leftover. Stopped gracefully first, serve must leave none (it finishes or aborts).
    w.close_slots();
    if let Some(mut s) = w.serve.take() {
        if s.terminate(Duration::from_secs(60)) != Some(0) {
            w.violation("serve did not exit 0 on SIGTERM".to_string());
        }
    }
    let uploads = w.s3.s3.probe_json(&["uploads", &w.s3.s3.bucket]);
    if !uploads.as_array().unwrap().is_empty() {
        w.violation(format!("incomplete multipart uploads left: {uploads}"));
    }
    // Invariant 2: every object equals a local good backup or is itself a complete dump.
    let keys: Vec<String> = serde_json::from_value(w.s3.s3.probe_json(&["list", &w.s3.s3.bucket, "chaos/"])).unwrap();
    for key in &keys {
        let copy = d.join("s3-object.sql.gz");
        w.s3.s3.probe(&["get", &w.s3.s3.bucket, key, copy.to_str().unwrap()]);
        let local = w.backups.join(key.trim_start_matches("chaos/"));
        let same = std::fs::read(&local).ok() == std::fs::read(&copy).ok();
        if !same {
            if let Err(e) = complete_dump(&copy) {
                w.violation(format!("S3 object {key} matches no local backup and {e}"));
            }
        }
    }
    // Invariant 1, restores: every backup on disk restores to the source database.
    let mut restores = 0;
    let on_disk: Vec<String> = files(&w.backups).into_iter().filter(|n| n.ends_with(".sql.gz") && !w.is_foreign(n)).collect();
    for name in &on_disk {
        let vars = w.vars();
        let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = ef_command("chaos", &w.backups, &borrowed)
            .args(["restore", name, "--target-db", "chaos_check", "--create", "--drop-existing"])
            .output()
            .unwrap();
        if !out.status.success() {
            w.violation(format!("{name} does not restore: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let (same, report) = compare_dbs_on(&w.pg_port, "chaos", "chaos_check");
        if !same {
            w.violation(format!("{name} restores to something else: {report}"));
        }
        restores += 1;
    }

    let logs = w.logs();
    let missed = missed_slots(&w.slot_windows, &logs, unix_now());
    let slots_checked: i64 = w.slot_windows.iter().map(|(a, b)| (b.unwrap_or(*a) - a).max(0) / SLOT_EVERY).sum();
    if !missed.is_empty() {
        w.violation(format!("scheduled slots with no attempt while serve ran: {missed:?}"));
    }
    eprintln!("\nchaos summary (seed {seed}):");
    eprintln!("  cycles                {cycles} (+1 clean)");
    for (f, n) in &w.faults {
        eprintln!("  fault {f:<22} {n}");
    }
    eprintln!("  backups good          {}", w.good.len());
    eprintln!("  backups failed        {}", w.failed);
    eprintln!("  restores checked      {restores}");
    eprintln!("  status requests ok    {}", w.status_ok);
    eprintln!("  wrong tokens refused  {}", w.rejected_tokens);
    eprintln!("  CLI backups refused   {}", w.cli_busy);
    eprintln!("  slots checked         {slots_checked}");
    eprintln!("  invariant violations  {}", w.violations.len());
    assert!(!logs.contains("panicked"), "a panic in the service log (seed {seed})");
    assert!(w.violations.is_empty(), "seed {seed}: {} invariant violations:\n{}", w.violations.len(), w.violations.join("\n"));
    assert!(w.good.len() >= cycles / 4, "too few good backups to mean anything (seed {seed})");
    drop(mount);
    pg_cluster(&["stop", w.pg_dir.to_str().unwrap()]);
}

#[test]
fn nothing_is_lost_under_faults() {
    let cycles = std::env::var("EF_CHAOS_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed = std::env::var("EF_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("chaos: seed {seed}, {cycles} cycles (replay with EF_CHAOS_SEED={seed})");
    let result = std::panic::catch_unwind(|| run_chaos(seed, cycles));
    if let Err(e) = result {
        eprintln!("chaos FAILED with seed {seed}: replay with EF_CHAOS_SEED={seed} EF_CHAOS_CYCLES={cycles}");
        std::panic::resume_unwind(e);
    }
}

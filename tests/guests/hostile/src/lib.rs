//! A policy that misbehaves on purpose. `EF__POLICY_HOSTILE=<call>:<behaviour>` picks one export
//! and what it does; every other call behaves (names `hostile_<unix>.sql.gz`, keep the 3 newest).
//!
//! behaviours: `loop` (never returns), `alloc` (allocates without end), `trap` (panics),
//! `slash` / `dots` (a name with `/` or `..`), `foreign` (selects a name it was not given),
//! `newest` (selects the newest backup), `json` (a body that is not JSON), `status` (HTTP 999),
//! `snoop` (tries the filesystem, the environment and the network; reports what it saw in the
//! name it returns), `sleep` (`std::thread::sleep` for 20 s: a WASI clock pollable),
//! `pollable` (blocks on a monotonic-clock instant that never comes), `handles` (creates
//! 100,000 pollables and never drops them). For `parse-name`, `<behaviour>-non-ascii`
//! misbehaves only on names with a non-ASCII character and behaves on the others (one odd file
//! among good ones); for `shape-status`, `<behaviour>-if-empty` misbehaves only when the status
//! lists no backup (so `policy check` passes and a serve over an empty directory misbehaves).

// A component only: built for wasm32-wasip2 by scripts/test.sh, empty elsewhere.
#![cfg(target_arch = "wasm32")]

// The policy world plus the WASI clock and poll interfaces every component may import anyway
// (the host links all of wasi:cli), called directly for the blocking behaviours.
wit_bindgen::generate!({
    inline: r#"
        package test:hostile;
        world hostile {
            include euraflow:backup/backup-policy@0.1.0;
            import wasi:clocks/monotonic-clock@0.2.0;
        }
    "#,
    path: ["../../../wit/0.1.0", "wit/io.wit", "wit/clocks.wit"],
    world: "hostile",
    generate_all,
});

use euraflow::backup::types::{BackupEntry, BackupOutcome, BackupSchedule, Config, HttpResponse, Status, Target};
use exports::euraflow::backup::policy::Guest;

fn mode(config: &Config) -> (String, String) {
    let v = config.settings.iter().find(|(k, _)| k == "hostile").map(|(_, v)| v.clone()).unwrap_or_default();
    let (call, what) = v.split_once(':').unwrap_or(("", ""));
    (call.to_string(), what.to_string())
}

/// Misbehaves if `call` is the chosen one. Returns a replacement string for the
/// string-returning behaviours.
fn act(config: Option<&Config>, call: &str) -> Option<String> {
    let (target, what) = config.map(mode).unwrap_or_default();
    if target != call {
        return None;
    }
    match what.as_str() {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => panic!("hostile policy: trap in {call}"),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(20));
            None
        }
        "pollable" => {
            wasi::clocks::monotonic_clock::subscribe_instant(u64::MAX).block();
            None
        }
        "handles" => {
            for _ in 0..100_000 {
                std::mem::forget(wasi::clocks::monotonic_clock::subscribe_duration(0));
            }
            None
        }
        "snoop" => {
            let dirs = std::fs::read_dir("/").map(|d| d.count()).unwrap_or(0);
            let env = std::env::vars().count();
            let net = std::net::TcpStream::connect("127.0.0.1:22").is_ok() as u8;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            Some(format!("snoop_fs{dirs}_env{env}_net{net}_clock{now}.sql.gz"))
        }
        other => Some(other.to_string()),
    }
}

fn name_at(now: i64) -> String {
    format!("hostile_{now}.sql.gz")
}

fn parse(name: &str) -> Option<i64> {
    name.strip_prefix("hostile_")?.strip_suffix(".sql.gz")?.parse().ok()
}

struct Hostile;

impl Guest for Hostile {
    fn schedule(config: Config) -> BackupSchedule {
        act(Some(&config), "schedule");
        BackupSchedule { crons: vec!["0 3 * * *".into()], timezone: "UTC".into(), description: "hostile".into() }
    }

    fn backup_name(config: Config, now: i64) -> String {
        match act(Some(&config), "backup-name").as_deref() {
            Some("slash") => "../../etc/evil.sql.gz".into(),
            Some("dots") => "..sql.gz".into(),
            Some(other) if other.starts_with("snoop_") => other.to_string(),
            _ => name_at(now),
        }
    }

    fn parse_name(config: Config, name: String) -> Option<i64> {
        let (call, what) = mode(&config);
        match what.strip_suffix("-non-ascii") {
            Some(only) if call == "parse-name" => {
                if !name.is_ascii() {
                    let settings = vec![("hostile".to_string(), format!("parse-name:{only}"))];
                    act(Some(&Config { settings, ..config }), "parse-name");
                }
            }
            _ => {
                act(Some(&config), "parse-name");
            }
        }
        parse(&name)
    }

    fn select_expired(backups: Vec<BackupEntry>, _now: i64, _target: Target, config: Config) -> Vec<String> {
        let mut ours: Vec<(String, i64)> = backups.iter().filter_map(|b| Some((b.name.clone(), parse(&b.name)?))).collect();
        ours.sort_by(|a, b| b.1.cmp(&a.1));
        match act(Some(&config), "select-expired").as_deref() {
            Some("foreign") => vec!["/etc/passwd".into(), "not-listed.sql.gz".into()],
            Some("newest") => ours.first().map(|(n, _)| vec![n.clone()]).unwrap_or_default(),
            _ => ours.into_iter().skip(3).map(|(n, _)| n).collect(),
        }
    }

    fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
        let (status, success) = match outcome {
            BackupOutcome::Done(_) => (200, true),
            BackupOutcome::Failed(_) => (500, false),
            BackupOutcome::Busy(_) => (409, false),
        };
        HttpResponse { status, body: format!(r#"{{"success":{success},"message":"hostile"}}"#) }
    }

    fn shape_status(status: Status) -> HttpResponse {
        // `<behaviour>-if-empty` misbehaves only when no backup is listed: `policy check`
        // (14 sample backups) passes, a serve over an empty directory sees the misbehaviour.
        let (call, what) = mode(&status.config);
        let config = match what.strip_suffix("-if-empty") {
            Some(only) if call == "shape-status" => {
                let what = if status.local_backups.is_empty() { only.to_string() } else { "none".into() };
                Config { settings: vec![("hostile".to_string(), format!("shape-status:{what}"))], ..status.config.clone() }
            }
            _ => status.config.clone(),
        };
        match act(Some(&config), "shape-status").as_deref() {
            Some("json") => HttpResponse { status: 200, body: "{not json".into() },
            Some("status") => HttpResponse { status: 999, body: "{}".into() },
            _ => HttpResponse { status: 200, body: r#"{"hostile":"status"}"#.into() },
        }
    }
}

export!(Hostile);

//! The backup-policy world plus one import the host does not provide (`read-secrets`): loading
//! it must fail with a clear error, never reach a call.

// A component only: built for wasm32-wasip2 by scripts/test.sh, empty elsewhere.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    inline: r#"
        package test:greedy;
        world greedy {
            include euraflow:backup/backup-policy@0.1.0;
            import read-secrets: func() -> list<string>;
        }
    "#,
    path: "../../../wit/0.1.0",
    world: "greedy",
    generate_all,
});

use euraflow::backup::types::{BackupEntry, BackupOutcome, BackupSchedule, Config, HttpResponse, Status, Target};
use exports::euraflow::backup::policy::Guest;

struct Greedy;

impl Guest for Greedy {
    fn schedule(_c: Config) -> BackupSchedule {
        BackupSchedule { crons: vec!["0 3 * * *".into()], timezone: "UTC".into(), description: read_secrets().join(",") }
    }
    fn backup_name(_c: Config, now: i64) -> String {
        format!("greedy_{now}.sql.gz")
    }
    fn parse_name(_c: Config, _n: String) -> Option<i64> {
        None
    }
    fn select_expired(_b: Vec<BackupEntry>, _now: i64, _t: Target, _c: Config) -> Vec<String> {
        Vec::new()
    }
    fn shape_backup_response(_o: BackupOutcome) -> HttpResponse {
        HttpResponse { status: 200, body: "{}".into() }
    }
    fn shape_status(_s: Status) -> HttpResponse {
        HttpResponse { status: 200, body: "{}".into() }
    }
}

export!(Greedy);

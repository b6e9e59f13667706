//! A test fixture: the default ef-backup policy exactly as it was for `euraflow:backup@0.1.0`
//! (a copy of `guest/` before it moved to 0.2), built from the released contract in
//! `wit/0.1.0`. It proves that a 0.1.0 component keeps working; do not change its behaviour
//! (scripts/test.sh builds it and hands the tests its path as `EF_TEST_V01_WASM`).
//!
//! The decisions live in plain Rust modules (`policy`, `retention`, `response`, `civil`) that are
//! unit-tested natively with `cargo test`; this file only binds them to the WIT exports.

wit_bindgen::generate!({ world: "backup-policy", path: "../../../wit/0.1.0" });

pub mod civil;
pub mod policy;
pub mod response;
pub mod retention;

pub use euraflow::backup::types;

#[cfg(target_arch = "wasm32")]
mod component {
    use super::exports::euraflow::backup::policy::Guest;
    use super::types::{BackupEntry, BackupOutcome, BackupSchedule, Config, HttpResponse, Level, Status, Target};
    use super::{log, policy, response};

    struct DefaultPolicy;

    /// An invalid value is an error: the host's start-up `policy check` refuses to run with it.
    /// An unknown key only warns: it may be meant for another policy.
    fn warn_all(warnings: Vec<String>) {
        for w in warnings {
            let level = if w.contains("not a setting of the default policy") { Level::Warn } else { Level::Error };
            log(level, &w);
        }
    }

    impl Guest for DefaultPolicy {
        fn schedule(config: Config) -> BackupSchedule {
            let (settings, warnings) = policy::Settings::parse(&config);
            warn_all(warnings);
            policy::schedule(&settings)
        }

        fn backup_name(config: Config, now: i64) -> String {
            policy::Names::of(&config).backup_name(now)
        }

        // Setting warnings are not logged here: the host calls this once per listed file.
        fn parse_name(config: Config, name: String) -> Option<i64> {
            policy::Names::of(&config).parse(&name)
        }

        fn select_expired(backups: Vec<BackupEntry>, now: i64, target: Target, config: Config) -> Vec<String> {
            let (settings, warnings) = policy::Settings::parse(&config);
            warn_all(warnings);
            let names = policy::Names::new(&config.database, settings.legacy_prefix.as_deref());
            let expired = policy::select_expired(&backups, now, target, &settings, &names);
            log(Level::Debug, &format!("retention ({target:?}): {} listed, {} expired", backups.len(), expired.len()));
            expired
        }

        fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
            response::backup(&outcome)
        }

        fn shape_status(status: Status) -> HttpResponse {
            let (settings, warnings) = policy::Settings::parse(&status.config);
            warn_all(warnings);
            response::status(&status, &settings)
        }
    }

    super::export!(DefaultPolicy with_types_in super);
}

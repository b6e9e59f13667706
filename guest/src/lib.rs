//! The default ef-backup policy, compiled to a WASI Preview 2 component implementing
//! `euraflow:backup@0.2.0` (the 0.1.0 original is kept as a test fixture in
//! `tests/guests/v0_1`).
//!
//! The decisions live in plain Rust modules (`policy`, `retention`, `response`, `civil`) that are
//! unit-tested natively with `cargo test`; this file only binds them to the WIT exports.

wit_bindgen::generate!({ world: "backup-policy", path: "../wit/0.2.0", additional_derives: [PartialEq, Eq] });

pub mod civil;
pub mod drill;
pub mod notify;
pub mod policy;
pub mod response;
pub mod retention;

pub use euraflow::backup::types;

#[cfg(target_arch = "wasm32")]
mod component {
    use super::exports::euraflow::backup::policy::Guest;
    use super::types::{
        BackupEntry, BackupOutcome, BackupSchedule, Config, Context, Event, HttpResponse, Level, NameInfo, NameRequest, Notification,
        RetentionDecision, Status,
    };
    use super::{drill, log, notify, policy, response};

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

        fn backup_name(_ctx: Context, _config: Config, request: NameRequest) -> String {
            if !policy::SUFFIXES.contains(&request.format.suffix.as_str()) {
                log(
                    Level::Warn,
                    &format!(
                        "format suffix {:?} is not one the default policy recognises ({}): its backups will not be listed, counted or deleted",
                        request.format.suffix,
                        policy::SUFFIXES.join(", ")
                    ),
                );
            }
            policy::backup_name(&request)
        }

        // Setting warnings are not logged here: the host calls this once per listed file.
        fn parse_name(config: Config, name: String) -> Option<NameInfo> {
            policy::Names::of(&config).parse(&name)
        }

        fn select_expired(ctx: Context, config: Config, store: String, backups: Vec<BackupEntry>) -> Vec<RetentionDecision> {
            let (settings, warnings) = policy::Settings::parse(&config);
            warn_all(warnings);
            let decisions = policy::select_expired(&backups, ctx.now, &store, &settings);
            let expired = decisions.iter().filter(|d| d.delete).count();
            log(Level::Debug, &format!("retention ({store}): {} listed, {expired} expired", backups.len()));
            decisions
        }

        fn shape_backup_response(outcome: BackupOutcome) -> HttpResponse {
            response::backup(&outcome)
        }

        fn shape_status(status: Status) -> HttpResponse {
            let (settings, warnings) = policy::Settings::parse(&status.config);
            warn_all(warnings);
            response::status(&status, &settings)
        }

        fn shape_notification(_ctx: Context, config: Config, event: Event) -> Vec<Notification> {
            let (settings, warnings) = policy::Settings::parse(&config);
            warn_all(warnings);
            notify::notifications(&config, &settings, &event)
        }

        fn select_drill(ctx: Context, _config: Config, backups: Vec<BackupEntry>) -> Vec<String> {
            drill::select(&backups, ctx.now, ctx.seed)
        }
    }

    super::export!(DefaultPolicy with_types_in super);
}

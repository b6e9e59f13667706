//! ef-backup: PostgreSQL backups to gzip files (and S3), with the backup policy as a
//! WebAssembly component.
//!
//! This crate is the service around the engine: the admin API ([`api`]), the schedule
//! ([`schedule`]), the runs and their state ([`service`]), metrics, the embeddable server
//! ([`serve`]) and the command line's output ([`cli`]). The engine and everything it needs is
//! `ef-backup-core` (re-exported below under its module names, so `ef_backup::engine` and the
//! other paths of earlier releases still resolve); the policy runtime is
//! `ef-backup-policy-wasm`, the S3 store `ef-backup-store-s3`.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod drills;
pub mod exit;
pub mod metrics;
pub mod schedule;
pub mod serve;
pub mod service;

pub use ef_backup_core::{
    catalog, codec, config, db, drill, dump, engine, events, libpq, lock, manifest, model, pg, provenance, restore, retention, sign, signals, space,
    state, util, verify,
};

/// The policy: the trait and the host's rules ([`ef_backup_core::policy`]) and the WebAssembly
/// runtime that implements it ([`ef_backup_policy_wasm`]).
pub mod policy {
    pub use ef_backup_core::policy::*;
    pub use ef_backup_policy_wasm::*;
}

/// Where backups are kept: the traits, the local directory and the in-memory store
/// ([`ef_backup_core::store`]), and the S3 store ([`ef_backup_store_s3`]).
pub mod store {
    pub use ef_backup_core::store::*;
    pub use ef_backup_store_s3 as s3;
}

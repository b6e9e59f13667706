//! ef-backup: PostgreSQL backups to gzip files (and S3), with the backup policy as a
//! WebAssembly component.
//!
//! Data flows one way: [`config`] → [`policy`] decisions → engine ([`dump`] → [`compress`] →
//! [`store`]) → result → the policy shapes the response.

pub mod api;
pub mod cli;
pub mod compress;
pub mod config;
pub mod db;
pub mod dump;
pub mod engine;
pub mod exit;
pub mod libpq;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod serve;
pub mod service;
pub mod signals;
pub mod space;
pub mod state;
pub mod store;
pub mod util;
pub mod verify;

//! ef-backup: PostgreSQL backups to gzip files (and S3), with the backup policy as a
//! WebAssembly component.
//!
//! Data flows one way: [`config`] → [`policy`] decisions → engine ([`dump`] → [`compress`] →
//! [`store`]) → result → the policy shapes the response.

pub mod config;
pub mod policy;

//! ef-backup's core: everything a backup and a restore do, without the policy runtime, the S3
//! SDK or the HTTP server (those plug in through [`policy::Policy`] and [`store::Mirror`]).
//!
//! Data flows one way: [`config`] → [`policy`] decisions → [`engine`] ([`pg::dump`] →
//! [`codec`] → [`store`]s) → result → the policy shapes the response. [`retention`] and
//! [`catalog`] read the stores through the same narrow traits; [`restore`] and [`verify`] read
//! a backup through [`store::Mirror::open`] or a local file and the codec's decoder.

pub mod catalog;
pub mod codec;
pub mod config;
pub mod drill;
pub mod engine;
pub mod events;
pub mod manifest;
pub mod model;
pub mod pg;
pub mod policy;
pub mod provenance;
pub mod restore;
pub mod retention;
pub mod sign;
pub mod signals;
pub mod space;
pub mod state;
pub mod store;
pub mod util;
pub mod verify;

// Short paths for the PostgreSQL modules, which most of the crate uses.
pub use pg::{db, dump, libpq, lock};

//! Shared helpers for the end-to-end tests. They run the real `ef-backup` binary against the
//! real PostgreSQL cluster that `scripts/test.sh` starts, and read its settings from the
//! environment that script exports.
//!
//! One module per concern; the tests use the flat `ef_backup_e2e::name` paths re-exported
//! here, so moving a helper between modules changes no test.

mod ef;
mod env;
mod fake_pg;
mod fs;
mod http;
mod net;
mod pg;
mod receiver;
mod s3;
mod serve;

pub use ef::{backup_json, ef, ef_command, state_dir_of, vars, Run};
pub use env::{env, TestEnv};
pub use fake_pg::fake_pg_bin;
pub use fs::{age_key, all_files, files, gunzip, minisign_key, sha256_hex, tempdir, Mount};
pub use http::{http, post_concurrently, try_http, HttpReply};
pub use net::{free_port, Proxy};
pub use pg::{big_db, compare_dbs, compare_dbs_on, drop_db, own_db, pg_cluster, psql, psql_on, sample_db, Cluster};
pub use receiver::{Answer, Received, Receiver};
pub use s3::{s3, PrivateS3, S3};
pub use serve::{Serve, TOKEN};

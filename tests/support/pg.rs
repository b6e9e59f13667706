//! The test cluster's side: SQL as the superuser, databases made and dropped, and the
//! comparison a restore is judged by.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::env;

/// Runs SQL as the test superuser and returns psql's unaligned output.
pub fn psql(db: &str, sql: &str) -> String {
    psql_on(&env().pg_port, db, sql)
}

/// [`psql`] on the cluster at `port` (a test's own cluster).
pub fn psql_on(port: &str, db: &str, sql: &str) -> String {
    let e = env();
    let out = Command::new(e.pg_bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", port, "-U", &e.db_user, "-d", db, "-c", sql])
        .env("PGPASSWORD", &e.db_password)
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn drop_db(db: &str) {
    psql("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
}

/// The sample database (varied types, Chinese text, jsonb, bytea, arrays, a view, a
/// sequence, functions, indexes, large objects), seeded once per test binary.
pub fn sample_db() -> &'static str {
    static SEEDED: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_e2e_sample";
    SEEDED.get_or_init(|| {
        let e = env();
        let out = Command::new("bash")
            .arg(e.testenv.join("pg-cluster.sh"))
            .args(["seed", e.pg_dir.to_str().unwrap(), &e.pg_port, NAME, "20"])
            .env("PGPASSWORD", &e.db_password)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "seeding failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    NAME
}

/// A database whose backup is several S3 parts: ~40 MB of random hex, which gzip can only
/// halve.
pub fn big_db() -> &'static str {
    static MADE: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_e2e_big";
    MADE.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(NAME, "CREATE TABLE noise AS SELECT i, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 600000) i");
    });
    NAME
}

/// A small database of a test's own (dropped and created afresh), so its locks and sessions
/// meet no other test's.
pub fn own_db(name: &str) -> &str {
    drop_db(name);
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    psql(name, "CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, 2000) i");
    name
}

/// `pg-cluster.sh compare`: per-table counts and checksums, schema, sequences, large objects.
pub fn compare_dbs(a: &str, b: &str) -> (bool, String) {
    compare_dbs_on(&env().pg_port, a, b)
}

/// [`compare_dbs`] on the cluster listening on `port`.
pub fn compare_dbs_on(port: &str, a: &str, b: &str) -> (bool, String) {
    let e = env();
    let out =
        Command::new("bash").arg(e.testenv.join("pg-cluster.sh")).args(["compare", port, a, b]).env("PGPASSWORD", &e.db_password).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `scripts/testenv/pg-cluster.sh` with `args`, as the test superuser; its stdout.
pub fn pg_cluster(args: &[&str]) -> String {
    let e = env();
    let out =
        Command::new("bash").arg(e.testenv.join("pg-cluster.sh")).args(args).env("PGPASSWORD", &e.db_password).current_dir("/").output().unwrap();
    assert!(out.status.success(), "pg-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A brand-new PostgreSQL cluster of a test's own (initdb, nothing in it but the superuser),
/// stopped when dropped: the "new server" of a disaster recovery.
pub struct Cluster {
    pub dir: std::path::PathBuf,
    pub port: String,
}

impl Cluster {
    pub fn start(dir: &std::path::Path) -> Cluster {
        let port = crate::free_port().to_string();
        pg_cluster(&["start", dir.to_str().unwrap(), &port]);
        Cluster { dir: dir.to_path_buf(), port }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(env().testenv.join("pg-cluster.sh")).args(["stop", self.dir.to_str().unwrap()]).current_dir("/").output();
    }
}

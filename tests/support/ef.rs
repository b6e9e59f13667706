//! Running the real `ef-backup` binary: a clean configuration per deployment (nothing leaks
//! in from the caller's environment or a `.env`), and what a run printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::env;

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// `ef-backup` with a clean configuration: the test cluster, `db`, the built policy and
/// `backup_dir`; `extra` adds or overrides variables.
pub fn ef_command(db: &str, backup_dir: &Path, extra: &[(&str, &str)]) -> Command {
    let e = env();
    let mut cmd = Command::new(&e.bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("EF__") || k.starts_with("AWS_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("EF__DB_HOST", "127.0.0.1")
        .env("EF__DB_PORT", &e.pg_port)
        .env("EF__DB_USER", &e.db_user)
        .env("EF__DB_PASSWORD", &e.db_password)
        .env("EF__DB_NAME", db)
        .env("EF__BACKUP_DIR", backup_dir)
        .env("EF__BACKUP_POLICY", &e.wasm)
        .env("EF__STATE_DIR", state_dir_of(backup_dir))
        .env("EF__LOG", "info")
        // The suites written before the globals count and compare the files of one database;
        // the globals' own tests (tests/globals.rs) set `auto` (the default) or `true`.
        .env("EF__BACKUP_GLOBALS", "false")
        // No .env from wherever the tests run.
        .current_dir(backup_dir.parent().unwrap_or(Path::new("/")));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// The state directory `ef_command` gives a deployment backing up into `backup_dir`: beside it,
/// so each test's deployment has its own history and nothing lands in the user's home.
pub fn state_dir_of(backup_dir: &Path) -> PathBuf {
    let name = backup_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    backup_dir.with_file_name(format!("{name}.state"))
}

/// Runs `ef-backup`. One backup of a database runs at a time (a second one exits 3, busy), so a
/// `backup` of a database another test is backing up waits for its turn, as an operator's retry
/// would; tests of the busy answer itself use `ef_command`.
pub fn ef(db: &str, backup_dir: &Path, extra: &[(&str, &str)], args: &[&str]) -> Run {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let run: Run = ef_command(db, backup_dir, extra).args(args).stdin(Stdio::null()).output().unwrap().into();
        if run.code != Some(3) || args.first() != Some(&"backup") || std::time::Instant::now() > deadline {
            return run;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `list` (e.g. [`S3::vars`](crate::S3::vars)) as borrowed pairs, with `more` after it (later ones win).
pub fn vars<'a>(list: &'a [(&'static str, String)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = list.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.extend_from_slice(more);
    v
}

/// `ef-backup backup --json` (plus `extra_args`) and its response body.
pub fn backup_json(db: &str, dir: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["backup", "--json"];
    args.extend_from_slice(extra_args);
    let run = ef(db, dir, env, &args);
    let v = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    (run, v)
}

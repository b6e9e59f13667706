//! The settings `scripts/test.sh` exports (binary, policy, cluster, state dir), read once:
//! the tests run only through that script, and a missing variable says so.

use std::path::PathBuf;
use std::sync::OnceLock;

pub struct TestEnv {
    pub bin: PathBuf,
    pub wasm: PathBuf,
    pub pg_port: String,
    pub pg_dir: PathBuf,
    pub pg_bin: PathBuf,
    pub testenv: PathBuf,
    pub state: PathBuf,
    pub db_user: String,
    pub db_password: String,
}

pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the end-to-end tests through scripts/test.sh"))
}

pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| TestEnv {
        bin: var("EF_TEST_BIN").into(),
        wasm: var("EF_TEST_POLICY_WASM").into(),
        pg_port: var("EF_TEST_PG_PORT"),
        pg_dir: var("EF_TEST_PG_DIR").into(),
        pg_bin: var("PG_BIN").into(),
        testenv: var("EF_TEST_TESTENV").into(),
        state: var("EF_TEST_STATE").into(),
        db_user: var("EF__DB_USER"),
        db_password: var("EF__DB_PASSWORD"),
    })
}

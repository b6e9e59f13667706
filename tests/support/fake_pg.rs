//! A stand-in `pg_dump` for EF__PG_BIN: the one way the tests make the dump itself slow,
//! fail or misbehave without touching the cluster.

use std::path::{Path, PathBuf};

use crate::env;

/// A directory holding a fake `pg_dump` (a shell script around the real one) and the real
/// `psql`, for EF__PG_BIN: how the tests make pg_dump misbehave.
pub fn fake_pg_bin(dir: &Path, body: &str) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = env().pg_bin.join("pg_dump");
    let script = format!("#!/bin/sh\nREAL={real}\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n{body}\n", real = real.display());
    let path = bin.join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let psql = bin.join("psql");
    if !psql.exists() {
        std::os::unix::fs::symlink(env().pg_bin.join("psql"), psql).unwrap();
    }
    bin
}

//! Swapping the policy under a running `serve`: names, retention and messages change over
//! HTTP, without a restart; a broken file is rejected and the last good policy keeps running.

use std::path::Path;
use std::time::{Duration, Instant};

use ef_backup_e2e::{env, files, psql, tempdir, Serve};

fn install(src: &Path, dst: &Path) {
    // Replace atomically, as the README tells operators to.
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn wait_for_policy(serve: &Serve, sha: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = serve.get("/api/ef/v1/backup/status");
        assert_eq!(st.status, 200, "{}", st.body);
        let v = st.json();
        if v["policy"]["sha256"] == sha {
            return v;
        }
        assert!(Instant::now() < deadline, "policy {sha} never loaded: {}\n{}", st.body, serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn swap_to_gfs_and_back_without_restarting() {
    let db = "ef_e2e_swap";
    psql("postgres", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(db, "CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, 1000) i");
    let dir = tempdir();
    let policy = dir.path().join("policy.wasm");
    let default = env().wasm.clone();
    let gfs = std::path::PathBuf::from(std::env::var("EF_TEST_GFS_WASM").expect("EF_TEST_GFS_WASM (scripts/test.sh builds it)"));
    install(&default, &policy);
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // Old backups under both naming schemes: each policy must delete only its own.
    let old_default: Vec<String> = (1..=20).map(|d| format!("{db}_backup_202001{d:02}_010000.sql.gz")).collect();
    let default_named = |f: &&String| f.starts_with(&format!("{db}_backup_"));
    let gfs_named = |f: &&String| f.starts_with(&format!("{db}_")) && !default_named(f);
    let old_gfs: Vec<String> = (1..=20).map(|d| format!("{db}_202001{d:02}_010000.sql.gz")).collect();
    for n in old_default.iter().chain(&old_gfs) {
        std::fs::write(backups.join(n), b"old").unwrap();
    }
    let serve = Serve::start(db, dir.path(), &[("EF__BACKUP_POLICY", policy.to_str().unwrap())]);
    let pid = serve.child.id();

    let v = wait_for_policy(&serve, &sha256(&default));
    assert_eq!(v["schedule"], "每天北京时间 01:00 和 13:00");
    let r = serve.post("/api/ef/v1/backup/manual").json();
    assert_eq!(r["message"], "数据库备份成功（仅本地，S3 未启用）");
    let first = r["data"]["backup_file"].as_str().unwrap().to_string();
    assert!(default_named(&&first), "{first}");
    // Default retention: 14 newest of its own kept; all GFS-named files untouched.
    let now_files = files(&backups);
    assert_eq!(now_files.iter().filter(default_named).count(), 14, "{now_files:?}");
    assert!(old_gfs.iter().all(|n| now_files.contains(n)));

    install(&gfs, &policy);
    let v = wait_for_policy(&serve, &sha256(&gfs));
    assert_eq!(v["schedule"], "daily at 02:30 UTC");
    assert_eq!(v["policy"]["name"], "gfs");
    std::thread::sleep(Duration::from_millis(1100));
    let r = serve.post("/api/ef/v1/backup/manual").json();
    assert_eq!(r["message"], "Backup succeeded (local only: S3 is not configured)");
    let second = r["data"]["backup_file"].as_str().unwrap().to_string();
    assert!(gfs_named(&&second), "{second}");
    let after = files(&backups);
    // GFS keeps the 14 newest of its names (plus daily/weekly/monthly among them); it never
    // touches the default policy's files.
    assert!(after.iter().filter(gfs_named).count() < 21, "{after:?}");
    assert!(after.contains(&second) && after.contains(&first));
    assert_eq!(after.iter().filter(default_named).count(), 14);

    // A broken file is rejected; GFS keeps running.
    std::fs::write(dir.path().join("broken"), b"not a component").unwrap();
    install(&dir.path().join("broken"), &policy);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log_text().contains("policy reload rejected, the running policy stays") {
        assert!(Instant::now() < deadline, "{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = serve.get("/api/ef/v1/backup/status").json();
    assert_eq!(v["policy"]["sha256"], sha256(&gfs));
    std::thread::sleep(Duration::from_millis(1100));
    let r = serve.post("/api/ef/v1/backup/manual");
    assert_eq!(r.status, 200);
    assert!(r.json()["data"]["backup_file"].as_str().unwrap().starts_with(&format!("{db}_")));

    // SIGHUP makes it look again; back to the default.
    install(&default, &policy);
    let st = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    let v = wait_for_policy(&serve, &sha256(&default));
    assert_eq!(v["schedule"], "每天北京时间 01:00 和 13:00");
    assert_eq!(serve.child.id(), pid, "same process throughout");
    assert!(serve.log_text().contains("policy reloaded"), "{}", serve.log_text());
}

#[test]
fn pinned_policy_refuses_other_files() {
    let dir = tempdir();
    let run = ef_backup_e2e::ef(
        "postgres",
        &dir.path().join("b"),
        &[("EF__ADMIN_TOKEN", ef_backup_e2e::TOKEN), ("EF__HTTP_ADDR", "127.0.0.1:1"), ("EF__BACKUP_POLICY_SHA256", &"0".repeat(64))],
        &["serve"],
    );
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("but EF__BACKUP_POLICY_SHA256 pins 0000"), "{}", run.stderr);
}

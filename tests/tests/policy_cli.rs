//! `ef-backup policy check` and configuration errors, through the real binary.

use ef_backup_e2e::{ef, env, sha256_hex, tempdir};

fn assert_clean_failure(run: &ef_backup_e2e::Run, needle: &str) {
    assert_ne!(run.code, Some(0), "must fail: {}", run.all());
    assert!(run.code.is_some(), "must exit, not die by a signal");
    assert!(!run.all().contains("panicked") && !run.all().contains("RUST_BACKTRACE"), "no panic: {}", run.all());
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error: {:?}", run.stderr);
    assert!(lines[0].starts_with("ef-backup: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "expected {needle:?} in {}", lines[0]);
}

#[test]
fn check_accepts_the_built_component() {
    let dir = tempdir();
    let run = ef("unused", dir.path(), &[], &["policy", "check"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("wit package: euraflow:backup@0.2.0"), "{}", run.stdout);
    assert!(run.stdout.contains("schedule:    0 1,13 * * * (Asia/Shanghai) — 每天北京时间 01:00 和 13:00"), "{}", run.stdout);
    assert!(run.stdout.contains("sample name: unused_backup_"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("sha256:      {}", sha256_hex(&std::fs::read(&env().wasm).unwrap()))), "{}", run.stdout);
}

#[test]
fn check_refuses_broken_files_cleanly() {
    let dir = tempdir();
    let wasm = std::fs::read(&env().wasm).unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &wasm[..wasm.len() / 3]).unwrap();
    let text = dir.path().join("policy.wasm");
    std::fs::write(&text, "this is not webassembly\n").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"").unwrap();

    for (file, needle) in [
        (&truncated, "is not a valid component (truncated or corrupt?)"),
        (&text, "is not a WebAssembly file"),
        (&core, "is a core WebAssembly module, not a component"),
        (&empty, "is not a WebAssembly file (it starts with nothing (empty file))"),
        (&dir.path().join("missing.wasm"), "cannot read policy"),
    ] {
        let run = ef("unused", dir.path(), &[], &["policy", "check", file.to_str().unwrap()]);
        assert_clean_failure(&run, needle);
    }
    // The same file through EF__BACKUP_POLICY.
    let run = ef("unused", dir.path(), &[("EF__BACKUP_POLICY", text.to_str().unwrap())], &["policy", "check"]);
    assert_clean_failure(&run, "is not a WebAssembly file");
}

#[test]
fn invalid_configuration_names_the_variable() {
    let dir = tempdir();
    for (var, value) in [("EF__DB_PORT", "five"), ("EF__BACKUP_GZIP_LEVEL", "11"), ("EF__BACKUP_TIMEOUT_SECS", "0")] {
        let run = ef("unused", dir.path(), &[(var, value)], &["policy", "check"]);
        assert_clean_failure(&run, var);
    }
    let run = ef("unused", dir.path(), &[("EF__AWS_ACCESS_KEY_ID", "AKIA1"), ("EF__AWS_SECRET_ACCESS_KEY", "s3cr3t-value")], &["list"]);
    assert_clean_failure(&run, "EF__AWS_S3_BACKUP_BUCKET: not set");
    assert!(!run.all().contains("s3cr3t-value"));
}

#[test]
fn env_file_is_read_and_environment_wins() {
    let dir = tempdir();
    let env_file = dir.path().join("custom.env");
    std::fs::write(&env_file, "EF__BACKUP_GZIP_LEVEL=12\n").unwrap();
    let run = ef("unused", dir.path(), &[], &["--env-file", env_file.to_str().unwrap(), "policy", "check"]);
    assert_clean_failure(&run, "EF__BACKUP_GZIP_LEVEL");
    let run = ef("unused", dir.path(), &[("EF__BACKUP_GZIP_LEVEL", "5")], &["--env-file", env_file.to_str().unwrap(), "policy", "check"]);
    assert!(run.ok(), "{}", run.all());
    let run = ef("unused", dir.path(), &[], &["--env-file", dir.path().join("nope.env").to_str().unwrap(), "policy", "check"]);
    assert_clean_failure(&run, "nope.env");
}

#[test]
fn example_policies_pass_policy_check() {
    let dir = tempdir();
    for (var, schedule) in [("EF_TEST_GFS_WASM", "daily at 02:30 UTC"), ("EF_TEST_TEMPLATE_WASM", "daily at 04:00 UTC")] {
        let wasm = std::env::var(var).unwrap_or_else(|_| panic!("{var} (scripts/test.sh builds it)"));
        let run = ef("unused", dir.path(), &[], &["policy", "check", &wasm]);
        assert!(run.ok(), "{var}: {}", run.all());
        assert!(run.stdout.contains(schedule), "{}", run.stdout);
    }
}

#[test]
fn compiled_policies_are_cached_and_bad_cache_entries_replaced() {
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let vars = [("EF__BACKUP_POLICY_CACHE_DIR", cache.to_str().unwrap())];
    let run = ef("unused", dir.path(), &vars, &["policy", "check"]);
    assert!(run.ok(), "{}", run.all());
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let artifact = &entries[0];
    assert!(artifact.to_str().unwrap().ends_with(".cwasm"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let good_len = std::fs::metadata(artifact).unwrap().len();
    // A damaged cache entry is not trusted: the policy is compiled again and the entry rewritten.
    std::fs::write(artifact, b"garbage").unwrap();
    let run = ef("unused", dir.path(), &vars, &["policy", "check"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(std::fs::metadata(artifact).unwrap().len(), good_len);
    // A cache directory others can write to is not used at all.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_file(artifact).unwrap();
    let run = ef("unused", dir.path(), &vars, &["policy", "check"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stderr.contains("not using") && run.stderr.contains("as the policy cache"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

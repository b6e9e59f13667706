//! S3 through the real binary against a real S3-compatible server (moto, authentication on).

use std::path::Path;

use ef_backup_e2e::{backup_json, big_db, compare_dbs, drop_db, ef, files, free_port, s3, sample_db, tempdir, vars, PrivateS3, Proxy, S3};

fn assert_same_bytes(s3: &S3, key: &str, local: &Path, scratch: &Path) {
    let copy = scratch.join("downloaded.sql.gz");
    s3.probe(&["get", &s3.bucket, key, copy.to_str().unwrap()]);
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(local).unwrap(), "S3 object differs from {}", local.display());
}

#[test]
fn upload_is_encrypted_infrequent_access_and_identical() {
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let list = s3.vars("roundtrip/");
    let (run, v) = backup_json(sample_db(), &backups, &vars(&list, &[]), &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(v["success"], true);
    assert_eq!(v["message"], "数据库备份成功（含S3）");
    assert_eq!(v["data"]["s3_uploaded"], true);
    assert_eq!(v["data"]["s3_error"], serde_json::Value::Null);
    let name = v["data"]["backup_file"].as_str().unwrap();
    for line in [
        "✓ S3 备份已启用: bucket=ef-test-backups, retention=30天".to_string(),
        format!("开始上传到 S3: s3://ef-test-backups/roundtrip/{name}"),
        format!("✓ S3 上传成功: {name}"),
    ] {
        assert!(run.stderr.contains(&line), "log line {line:?} missing: {}", run.stderr);
    }
    let key = format!("roundtrip/{name}");
    let head = s3.probe_json(&["head", &s3.bucket, &key]);
    assert_eq!(head["sse"], "AES256");
    assert_eq!(head["storage_class"], "STANDARD_IA");
    assert_eq!(head["size"], v["data"]["file_size_bytes"]);
    assert_same_bytes(&s3, &key, &backups.join(name), dir.path());
    assert!(!run.all().contains(&s3.secret_key), "the secret never appears");
}

#[test]
fn large_backup_goes_up_in_several_parts() {
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let list = s3.vars("multipart/");
    let (run, v) = backup_json(big_db(), &backups, &vars(&list, &[("EF__S3_PART_SIZE_MB", "5")]), &[]);
    assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap();
    let size = v["data"]["file_size_bytes"].as_u64().unwrap();
    assert!(size > 15 << 20, "the test database must give several 5 MiB parts, got {size} bytes");
    let key = format!("multipart/{name}");
    let head = s3.probe_json(&["head", &s3.bucket, &key]);
    let parts: u64 = head["etag"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(parts, size.div_ceil(5 << 20), "ETag {}", head["etag"]);
    assert_same_bytes(&s3, &key, &backups.join(name), dir.path());
    assert_eq!(s3.open_uploads("multipart/"), Vec::<String>::new());
}

#[test]
fn s3_failures_keep_the_local_backup_and_say_why() {
    let s3 = s3();
    let dir = tempdir();
    let db = sample_db();
    for (label, overrides, needle) in [
        ("wrong secret", vec![("EF__AWS_SECRET_ACCESS_KEY", "not-the-secret-1234567")], "SignatureDoesNotMatch"),
        ("unknown key", vec![("EF__AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")], "InvalidAccessKeyId"),
        ("missing bucket", vec![("EF__AWS_S3_BACKUP_BUCKET", "no-such-bucket-here")], "NoSuchBucket"),
    ] {
        let backups = dir.path().join(label.replace(' ', "-"));
        let list = s3.vars("failures/");
        let (run, v) = backup_json(db, &backups, &vars(&list, &overrides), &[]);
        assert_eq!(run.code, Some(4), "{label}: the local backup succeeds, S3 failed (exit 4): {}", run.all());
        assert_eq!(v["success"], true, "{label}");
        assert_eq!(v["message"], "数据库备份成功（仅本地，S3 上传失败）", "{label}");
        assert_eq!(v["data"]["s3_uploaded"], false, "{label}");
        let err = v["data"]["s3_error"].as_str().unwrap_or_else(|| panic!("{label}: s3_error set: {v}"));
        assert!(err.contains(needle), "{label}: {err}");
        let name = v["data"]["backup_file"].as_str().unwrap();
        assert_eq!(files(&backups), [name.to_string()], "{label}");
        assert!(!run.all().contains("not-the-secret-1234567") && !run.all().contains(&s3.secret_key), "{label}: secret leaked");
    }
}

#[test]
fn s3_retention_with_an_injected_now() {
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let db = sample_db();
    let list = s3.vars("retention/");
    // The policy's decisions, without the host's minimum count (tests/tests/retention.rs has that).
    let env = vars(&list, &[("EF__POLICY_S3_KEEP_LAST", "1"), ("EF__BACKUP_MIN_KEEP", "1")]);
    // Foreign objects under the prefix and beside it: never touched.
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, b"not a backup").unwrap();
    for key in
        ["retention/manual.sql.gz", "retention/euraflow_backup_20200101_000000.sql.gz.bak", "retention/old/euraflow_backup_20200101_000000.sql.gz"]
    {
        s3.probe(&["put", &s3.bucket, key, foreign.to_str().unwrap()]);
    }
    let day = 86_400i64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut names = Vec::new();
    for age in [40, 35, 31, 20] {
        let at = (now - age * day).to_string();
        let (run, v) = backup_json(db, &backups, &env, &["--now", &at]);
        assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
        names.push(v["data"]["backup_file"].as_str().unwrap().to_string());
    }
    let (run, v) = backup_json(db, &backups, &env, &[]);
    assert!(run.ok(), "{}", run.all());
    let newest = v["data"]["backup_file"].as_str().unwrap().to_string();
    assert!(run.stderr.contains("开始删除 S3 中 3 个超过30天的旧备份..."), "{}", run.stderr);
    assert!(run.stderr.contains("✓ S3 备份清理完成，删除了 3 个旧备份"), "{}", run.stderr);
    let mut keys: Vec<String> = serde_json::from_value(s3.probe_json(&["list", &s3.bucket, "retention/"])).unwrap();
    keys.sort();
    let mut want = vec![
        format!("retention/{}", names[3]),
        format!("retention/{newest}"),
        "retention/euraflow_backup_20200101_000000.sql.gz.bak".to_string(),
        "retention/manual.sql.gz".to_string(),
        "retention/old/euraflow_backup_20200101_000000.sql.gz".to_string(),
    ];
    want.sort();
    assert_eq!(keys, want);
    // Local retention keeps 7 days / 14 backups: all five stay on disk.
    assert_eq!(files(&backups).len(), 5);
}

#[test]
fn restore_and_verify_straight_from_s3() {
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let src = sample_db();
    let list = s3.vars("restore/");
    let env = vars(&list, &[]);
    let (run, v) = backup_json(src, &backups, &env, &[]);
    assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    // Only the S3 copy remains.
    std::fs::remove_file(backups.join(&name)).unwrap();

    let target = "ef_e2e_from_s3";
    drop_db(target);
    let run = ef(src, &backups, &env, &["restore", "--from-s3", &name, "--target-db", target, "--create"]);
    assert!(run.ok(), "{}", run.all());
    let (same, report) = compare_dbs(src, target);
    assert!(same, "{report}");
    drop_db(target);

    let url = format!("s3://{}/restore/{name}", s3.bucket);
    let run = ef(src, &backups, &env, &["restore", &url, "--target-db", target, "--create"]);
    assert!(run.ok(), "{}", run.all());
    let (same, report) = compare_dbs(src, target);
    assert!(same, "{report}");
    drop_db(target);

    let run = ef(src, &backups, &env, &["verify", "--from-s3"]);
    assert!(run.ok() && run.stdout.contains("verify: OK"), "{}", run.all());
    let run = ef(src, &backups, &env, &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(rows.as_array().unwrap().iter().any(|r| r["location"] == "s3" && r["name"] == name.as_str()), "{rows}");
}

#[test]
fn an_object_that_fails_verification_is_deleted() {
    // A store (here: a proxy in front of it) whose completion reports an ETag other than the
    // one computed while streaming: the object must not stay under a backup's name.
    let s3 = s3();
    let dir = tempdir();
    let addr: std::net::SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(addr);
    proxy.corrupt_etags();
    let via_proxy = S3 { endpoint: proxy.endpoint(), ..s3.clone() };
    let list = via_proxy.vars("unverified/");
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(sample_db(), &backups, &vars(&list, &[]), &[]);
    assert_eq!(run.code, Some(4), "the local backup succeeds, S3 failed (exit 4): {}", run.all());
    assert_eq!(v["data"]["s3_uploaded"], false, "{v}");
    let err = v["data"]["s3_error"].as_str().unwrap();
    assert!(err.contains("does not match") && err.contains("the object was deleted"), "{err}");
    let name = v["data"]["backup_file"].as_str().unwrap();
    assert_eq!(files(&backups), [name.to_string()]);
    assert_eq!(s3.probe_json(&["list", &s3.bucket, "unverified/"]), serde_json::json!([]), "the object is gone");
    assert_eq!(s3.open_uploads("unverified/"), Vec::<String>::new());
}

#[test]
fn store_cut_off_mid_upload_leaves_no_incomplete_upload_behind() {
    let dir = tempdir();
    let private = PrivateS3::start(&dir.path().join("s3"), free_port(), true);
    // Uploads started now look a day old to the store (its clock is moved back), so the next
    // run treats a leftover as dead.
    private.clock("-1d");
    let addr: std::net::SocketAddr = private.s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(addr);
    proxy.cut_after(7 << 20);
    let via_proxy = S3 { endpoint: proxy.endpoint(), ..private.s3.clone() };
    let list = via_proxy.vars("");
    let env = vars(&list, &[("EF__S3_PART_SIZE_MB", "5")]);
    let backups = dir.path().join("backups");

    let (run, v) = backup_json(big_db(), &backups, &env, &[]);
    assert!(proxy.is_cut(), "the proxy was cut during the upload");
    assert_eq!(run.code, Some(4), "the local backup succeeds, S3 failed (exit 4): {}", run.all());
    assert_eq!(v["data"]["s3_uploaded"], false);
    let err = v["data"]["s3_error"].as_str().unwrap().to_string();
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let st = std::process::Command::new("gunzip").arg("-t").arg(backups.join(&name)).status().unwrap();
    assert!(st.success(), "the local backup is whole");
    // The store is unreachable, so the abort could not get through either: the upload is
    // still there, and the error says who cleans it up.
    let uploads = private.s3.probe_json(&["uploads", &private.s3.bucket]);
    assert_eq!(uploads.as_array().unwrap().len(), 1, "{uploads}");
    assert!(err.contains("a later backup run will abort it"), "{err}");

    proxy.restore();
    private.clock("+0");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The same deployment (database) as the cut run: only its own uploads are its to abort.
    let (run, v) = backup_json(big_db(), &backups, &vars(&list, &[]), &[]);
    assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
    assert!(run.stderr.contains("aborted 1 incomplete S3 upload(s)"), "{}", run.stderr);
    assert_eq!(private.s3.probe_json(&["uploads", &private.s3.bucket]), serde_json::json!([]));
}

//! The manifest beside every backup, its signature and `verify --offline` (issue 16 item 4),
//! through the real binary: what the manifest records is checked against the live database
//! (row counts, and each table's row hash recomputed from `COPY … TO STDOUT` under the recorded
//! settings), stock `minisign` checks the signature, a flipped byte or an edited manifest fails
//! `verify --offline`, and with EF__BACKUP_TRUSTED_KEYS a planted backup (locally and in the
//! bucket) is refused while the deployment's own restores.

use std::path::Path;
use std::process::Command;

use ef_backup_e2e::{all_files, backup_json, compare_dbs, drop_db, ef, env, minisign_key, psql, s3, tempdir, vars};

/// A database of this suite's own: rows with text, timestamps in a time zone, floats, a
/// sequence and a large object.
fn db() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const NAME: &str = "ef_e2e_manifest";
    MADE.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(
            NAME,
            "CREATE TABLE items (id serial PRIMARY KEY, body text, at timestamptz, f float8); \
             INSERT INTO items (body, at, f) SELECT md5(g::text) || ' 备份', '2026-01-01 00:00:00+08'::timestamptz + g * interval '1 minute', g / 7.0 \
               FROM generate_series(1, 5000) g; \
             CREATE TABLE empty_one (a int); \
             SELECT lo_from_bytea(0, decode(repeat('cd', 3000), 'hex'))",
        );
    });
    NAME
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The wrapping sum of XXH3-128 over the rows `COPY table TO STDOUT` gives under the settings
/// the manifest recorded: what a restore compares to prove itself faithful.
fn live_row_hash(database: &str, table: &str, settings: &serde_json::Value) -> (u64, String) {
    let e = env();
    let mut cmd = Command::new(e.pg_bin.join("psql"));
    cmd.args(["-X", "-q", "-h", "127.0.0.1", "-p", &e.pg_port, "-U", &e.db_user, "-d", database]).env("PGPASSWORD", &e.db_password);
    for (k, v) in settings.as_object().unwrap() {
        cmd.arg("-c").arg(format!("SET {k} = '{}'", v.as_str().unwrap()));
    }
    cmd.arg("-c").arg(format!("COPY {table} TO STDOUT"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut rows = 0;
    let mut sum = 0u128;
    for row in out.stdout.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
        rows += 1;
        sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(row));
    }
    (rows, format!("{sum:032x}"))
}

#[test]
fn the_manifest_records_what_the_database_holds() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(db(), &backups, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap();
    let file = backups.join(name);
    let m = read_json(&backups.join(format!("{name}.manifest.json")));
    assert_eq!(m["backup"], name);
    assert_eq!(m["database"], db());
    assert_eq!((&m["format"], &m["kind"]), (&serde_json::json!("gzip"), &serde_json::json!("database")));
    assert_eq!(m["sha256"], sha256_of(&file), "the SHA-256 of the stored bytes");
    assert_eq!(m["stored_bytes"], std::fs::metadata(&file).unwrap().len());
    assert!(m["server_version"].as_str().unwrap().starts_with("15."), "{m}");
    assert!(m["pg_dump_version"].as_str().unwrap().starts_with("15."), "{m}");
    assert!(m["recipients"].as_array().unwrap().is_empty());

    let content = &m["content"];
    let settings = &content["copy_settings"];
    let server_tz = psql(db(), "SHOW TimeZone");
    assert_eq!(settings["timezone"], server_tz.trim(), "the session's TimeZone is recorded");
    let tables: Vec<&serde_json::Value> = content["tables"].as_array().unwrap().iter().collect();
    let items = tables.iter().find(|t| t["name"] == "items").unwrap_or_else(|| panic!("{content}"));
    let (rows, hash) = live_row_hash(db(), "public.items", settings);
    assert_eq!((items["rows"].as_u64().unwrap(), items["rows_xxh3_sum"].as_str().unwrap()), (rows, hash.as_str()));
    assert_eq!(rows, 5000);
    let empty = tables.iter().find(|t| t["name"] == "empty_one").unwrap();
    assert_eq!(empty["rows"], 0);
    // Under another time zone the same rows read differently: the recorded one matters.
    let mut other = settings.clone();
    other["timezone"] = serde_json::json!(if server_tz.trim() == "Pacific/Chatham" { "UTC" } else { "Pacific/Chatham" });
    assert_ne!(live_row_hash(db(), "public.items", &other).1, hash);

    let seq = &content["sequences"].as_array().unwrap()[0];
    assert_eq!(
        (&seq["name"], &seq["last_value"], &seq["is_called"]),
        (&serde_json::json!("items_id_seq"), &serde_json::json!(5000), &serde_json::json!(true))
    );
    let lo = &content["large_objects"].as_array().unwrap()[0];
    assert_eq!(lo["bytes"], 3000);
    let lo_sha = psql(db(), "SELECT encode(sha256(lo_get(oid)), 'hex') FROM pg_largeobject_metadata");
    assert_eq!(lo["sha256"], lo_sha.trim());

    let offline = ef(db(), &backups, &[], &["verify", "--offline", name]);
    assert!(offline.ok(), "{}", offline.all());
    assert!(offline.stdout.contains("content") && offline.stdout.contains("match the manifest"), "{}", offline.stdout);
    let list = ef(db(), &backups, &[], &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    assert_eq!(rows[0]["manifest"], true, "{rows}");
}

/// `verify --offline` reads the backup once and names what differs: a flipped byte anywhere,
/// a manifest whose counts were edited, and a backup without manifest still decodes.
#[test]
fn verify_offline_finds_a_flipped_byte_and_an_edited_manifest() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(db(), &backups, &[("EF__BACKUP_FORMAT", "zstd")], &[]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let file = backups.join(&name);
    let manifest = backups.join(format!("{name}.manifest.json"));
    let good = std::fs::read(&file).unwrap();
    let ok = ef(db(), &backups, &[], &["verify", "--offline", &name, "--json"]);
    assert!(ok.ok(), "{}", ok.all());
    let report: serde_json::Value = serde_json::from_str(ok.stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // One flipped bit at the start, the middle and the end: the SHA-256 says so every time.
    for at in [40, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(&file, &bad).unwrap();
        let run = ef(db(), &backups, &[], &["verify", "--offline", &name]);
        assert_eq!(run.code, Some(1), "byte {at}: {}", run.all());
        assert!(run.stdout.contains("FAILED"), "byte {at}: {}", run.stdout);
    }
    std::fs::write(&file, &good).unwrap();

    // The manifest says one row more than the backup holds.
    let original = std::fs::read(&manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let items = m["content"]["tables"].as_array_mut().unwrap().iter_mut().find(|t| t["name"] == "items").unwrap();
    items["rows"] = serde_json::json!(5001);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let run = ef(db(), &backups, &[], &["verify", "--offline", &name]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.contains("table public.items: 5000 rows in the backup, 5001 in the manifest"), "{}", run.stdout);

    // No manifest: still decodes and is complete; says there is nothing to compare with.
    std::fs::remove_file(&manifest).unwrap();
    let run = ef(db(), &backups, &[], &["verify", "--offline", &name]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("no manifest"), "{}", run.stdout);
    let list = ef(db(), &backups, &[], &["list"]);
    assert!(list.stdout.lines().any(|l| l.starts_with(&name) && l.contains(" no ")), "{}", list.stdout);
}

/// Encrypted: the manifest's content is sealed to the recipients; `verify --offline` opens it
/// with the identity, and without one still checks the bytes and says what it could not.
#[test]
fn an_encrypted_backups_manifest_reveals_no_content() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let key = dir.path().join("key.txt");
    assert!(Command::new("age-keygen").arg("-o").arg(&key).output().unwrap().status.success());
    let public = String::from_utf8(Command::new("age-keygen").arg("-y").arg(&key).output().unwrap().stdout).unwrap();
    let (run, v) = backup_json(db(), &backups, &[("EF__BACKUP_AGE_RECIPIENTS", public.trim())], &[]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(backups.join(format!("{name}.manifest.json"))).unwrap();
    // Quoted: base64 never holds a quote, so only the JSON itself could.
    assert!(!text.contains("\"items\"") && !text.contains("\"rows\""), "table names and counts are sealed: {text}");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["recipients"], serde_json::json!([public.trim()]));
    assert_eq!(m["sha256"], sha256_of(&backups.join(&name)));
    let run = ef(db(), &backups, &[], &["verify", "--offline", &name, "--identity", key.to_str().unwrap()]);
    assert!(run.ok() && run.stdout.contains("match the manifest"), "{}", run.all());
    let run = ef(db(), &backups, &[], &["verify", "--offline", &name]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.contains("--identity"), "says what is missing: {}", run.stdout);
}

#[test]
fn signed_manifests_check_with_stock_minisign_and_trusted_keys_refuse_planted_backups() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (sk, pk, _) = minisign_key(dir.path(), "host");
    let (other_sk, _, _) = minisign_key(dir.path(), "attacker");
    let s3 = s3();
    let s3vars = s3.vars("signed/");
    let signing = vars(&s3vars, &[("EF__BACKUP_SIGNING_KEY", sk.to_str().unwrap())]);
    let (run, v) = backup_json(db(), &backups, &signing, &["--now", "1767225600"]);
    assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let manifest = backups.join(format!("{name}.manifest.json"));
    let check = Command::new("minisign").arg("-Vm").arg(&manifest).arg("-p").arg(&pk).output().unwrap();
    assert!(check.status.success(), "stock minisign: {}", String::from_utf8_lossy(&check.stderr));
    let keys: Vec<String> = serde_json::from_value(s3.probe_json(&["list-all", &s3.bucket, "signed/"])).unwrap();
    for suffix in ["", ".manifest.json", ".manifest.json.minisig"] {
        assert!(keys.contains(&format!("signed/{name}{suffix}")), "{suffix}: {keys:?}");
    }

    let trusting = vars(&s3vars, &[("EF__BACKUP_TRUSTED_KEYS", pk.to_str().unwrap())]);
    // The copy in the bucket, streamed once, without a database.
    let offline = ef(db(), &backups, &trusting, &["verify", "--offline", "--from-s3", &name]);
    assert!(offline.ok() && offline.stdout.contains("OK: the backup is what its signed manifest says"), "{}", offline.all());
    let target = "ef_e2e_manifest_trusted";
    for from in [vec![name.as_str()], vec!["--from-s3", name.as_str()]] {
        drop_db(target);
        let mut args = vec!["restore", "--create", "--target-db", target];
        args.extend(&from);
        let run = ef(db(), &backups, &trusting, &args);
        assert!(run.ok() && run.stdout.contains("signed by trusted key"), "{from:?}: {}", run.all());
        let (same, report) = compare_dbs(db(), target);
        assert!(same, "{report}");
    }
    drop_db(target);

    // Planted: a backup of something else, named like this deployment's, with a manifest that
    // records its true hash, signed by another key — and the same without any signature.
    let source_dir = dir.path().join("elsewhere");
    let (run, v) = backup_json(db(), &source_dir, &[("EF__BACKUP_SIGNING_KEY", other_sk.to_str().unwrap())], &["--now", "1767312000"]);
    assert!(run.ok(), "{}", run.all());
    let forged = v["data"]["backup_file"].as_str().unwrap().to_string();
    let forged = forged.as_str();
    assert_ne!(forged, name, "another name of the same deployment's pattern");
    for file in all_files(&source_dir) {
        std::fs::copy(source_dir.join(&file), backups.join(&file)).unwrap();
        s3.probe(&["put", &s3.bucket, &format!("signed/{file}"), source_dir.join(&file).to_str().unwrap()]);
    }
    let exists = || psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'")).trim().to_string();
    for from in [vec![forged], vec!["--from-s3", forged]] {
        let mut args = vec!["restore", "--create", "--target-db", target];
        args.extend(&from);
        let run = ef(db(), &backups, &trusting, &args);
        assert!(!run.ok(), "{from:?}: {}", run.all());
        assert!(run.stderr.contains("refusing") && run.stderr.contains("not in EF__BACKUP_TRUSTED_KEYS"), "{}", run.stderr);
        assert_eq!(exists(), "0", "nothing restored");
        let mut args = vec!["verify", "--offline"];
        args.extend(&from);
        let run = ef(db(), &backups, &trusting, &args);
        assert!(!run.ok() && run.stderr.contains("refusing"), "verify too: {}", run.all());
    }
    std::fs::remove_file(backups.join(format!("{forged}.manifest.json.minisig"))).unwrap();
    let run = ef(db(), &backups, &trusting, &["restore", forged, "--create", "--target-db", target]);
    assert!(!run.ok() && run.stderr.contains("its manifest is not signed"), "{}", run.all());
    let run = ef(db(), &backups, &trusting, &["restore", forged, "--create", "--target-db", target, "--allow-unsigned"]);
    assert!(run.ok() && run.stdout.contains("NOT trusted, accepted with --allow-unsigned"), "{}", run.all());
    assert!(run.stderr.contains("--allow-unsigned"), "logged: {}", run.stderr);
    drop_db(target);

    // A genuine signed manifest (and signature) of one backup put beside another file.
    for suffix in [".manifest.json", ".manifest.json.minisig"] {
        std::fs::copy(backups.join(format!("{name}{suffix}")), backups.join(format!("{forged}{suffix}"))).unwrap();
    }
    let run = ef(db(), &backups, &trusting, &["verify", forged]);
    assert!(!run.ok() && run.stderr.contains(&format!("is the manifest of {name:?}")), "{}", run.all());

    // The deployment's own signed manifest beside other bytes, SQL that would leave a trace
    // outside the scratch database: the bytes are checked before any of it runs.
    let role = "ef_e2e_planted_role";
    psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
    let planted = format!("--\n-- PostgreSQL database dump\n--\n\nCREATE ROLE {role};\nCREATE TABLE t (a int);\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, planted.as_bytes()).unwrap();
    let file = backups.join(&name);
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, gz.finish().unwrap()).unwrap();
    for args in [vec!["restore", name.as_str(), "--create", "--target-db", target], vec!["verify", name.as_str()]] {
        let run = ef(db(), &backups, &trusting, &args);
        assert!(!run.ok() && run.stderr.contains("not the") && run.stderr.contains("its manifest records"), "{args:?}: {}", run.all());
        let made = psql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"));
        assert_eq!(made.trim(), "0", "{args:?}: not one statement of the swapped file ran");
        assert_eq!(exists(), "0");
    }
    std::fs::write(&file, good).unwrap();
}

/// Retention deletes a backup's manifest and signature with it, locally and in S3.
#[test]
fn retention_deletes_the_manifest_with_its_backup() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (sk, _, _) = minisign_key(dir.path(), "host");
    let s3 = s3();
    let s3vars = s3.vars("manifest-retention/");
    let env = vars(
        &s3vars,
        &[
            ("EF__BACKUP_SIGNING_KEY", sk.to_str().unwrap()),
            ("EF__POLICY_LOCAL_KEEP_LAST", "1"),
            ("EF__POLICY_LOCAL_RETENTION_DAYS", "1"),
            ("EF__POLICY_S3_KEEP_LAST", "1"),
            ("EF__BACKUP_RETENTION_DAYS", "1"),
            ("EF__BACKUP_MIN_KEEP", "1"),
        ],
    );
    let mut names = Vec::new();
    for now in ["1767225600", "1767398400", "1767571200"] {
        let (run, v) = backup_json(db(), &backups, &env, &["--now", now]);
        assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
        names.push(v["data"]["backup_file"].as_str().unwrap().to_string());
    }
    let newest = names.last().unwrap();
    let want: Vec<String> = ["", ".manifest.json", ".manifest.json.minisig"].iter().map(|s| format!("{newest}{s}")).collect();
    assert_eq!(all_files(&backups), want);
    let mut keys: Vec<String> = serde_json::from_value(s3.probe_json(&["list-all", &s3.bucket, "manifest-retention/"])).unwrap();
    keys.sort();
    assert_eq!(keys, want.iter().map(|k| format!("manifest-retention/{k}")).collect::<Vec<_>>());
}

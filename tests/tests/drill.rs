//! Restore drills (issue 17 item 1) through the real binary: a good backup restores on a
//! throwaway PostgreSQL that ef-backup starts (initdb as the unprivileged `ef-drill` user, a
//! private socket) and matches its manifest; a backup changed after it was written (one value in
//! a COPY block, re-compressed so gzip is valid) fails, with the manifest as it was and with a
//! manifest made to match its bytes; a backup without a manifest is checked against its own
//! COPY blocks; with trusted keys an unsigned backup is refused; the history keeps every drill;
//! and nothing — no process, no directory — is left behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use ef_backup_e2e::{age_key, backup_json, drop_db, ef, env, gunzip, minisign_key, psql, psql_on, sha256_hex, tempdir, Cluster};

/// A database of this suite's own: text in two scripts, timestamps in a time zone, floats,
/// bytea, jsonb, a sequence moved on, a quoted table name and a large object.
fn db() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const NAME: &str = "ef_e2e_drill";
    MADE.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(
            NAME,
            "CREATE TABLE items (id serial PRIMARY KEY, body text, at timestamptz, f float8, raw bytea, doc jsonb); \
             INSERT INTO items (body, at, f, raw, doc) SELECT md5(g::text) || ' 备份 ü', '2026-01-01 00:00:00+08'::timestamptz + g * interval '1 minute', \
               g / 7.0, decode(md5(g::text), 'hex'), jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)) FROM generate_series(1, 3000) g; \
             CREATE TABLE \"Odd Name\" (\"a b\" int); INSERT INTO \"Odd Name\" SELECT generate_series(1, 10); \
             CREATE SEQUENCE counter; SELECT setval('counter', 42); \
             SELECT lo_from_bytea(0, decode(repeat('ab', 5000), 'hex'))",
        );
    });
    NAME
}

/// A temporary directory the `ef-drill` user can pass through (the throwaway cluster lives in
/// it), so that what a drill leaves behind can be looked for.
fn drill_tmp(parent: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("tmp");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [parent, dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    dir
}

/// Processes whose command line mentions `needle` (a throwaway cluster's directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn drill_json(dir: &Path, tmp: &Path, extra: &[(&str, &str)], args: &[&str]) -> (ef_backup_e2e::Run, serde_json::Value) {
    let mut env = vec![("TMPDIR", tmp.to_str().unwrap())];
    env.extend_from_slice(extra);
    let mut all = vec!["drill", "--json"];
    all.extend_from_slice(args);
    let run = ef(db(), dir, &env, &all);
    let v = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    (run, v)
}

/// The dump with one value of the `items` COPY block changed, gzip-compressed again.
fn changed_backup(path: &Path) -> Vec<u8> {
    let sql = String::from_utf8(gunzip(path)).unwrap();
    let start = sql.find("COPY public.items ").expect("the items COPY block");
    let row = start + sql[start..].find('\n').unwrap() + 1;
    // The first row's body, md5('1') = c4ca…, becomes d4ca…: same length, still valid text,
    // and no key or constraint notices.
    assert!(sql[row..].starts_with("1\tc4ca4238"), "{}", &sql[row..row + 40]);
    let changed = format!("{}d{}", &sql[..row + 2], &sql[row + 3..]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(changed.as_bytes()).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_good_backup_passes_a_changed_one_fails_and_nothing_is_left_behind() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let (run, v) = backup_json(db(), &dir, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let path = dir.join(&name);

    // A good backup: restored on a throwaway server and equal to its manifest.
    let (run, report) = drill_json(&dir, &tmp, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let r = &report[0];
    assert_eq!((r["backup"].as_str(), r["ok"].as_bool()), (Some(name.as_str()), Some(true)), "{report}");
    assert!(r["server"].as_str().unwrap().contains("throwaway PostgreSQL"), "{r}");
    assert!(r["reference"].as_str().unwrap().contains("manifest"), "{r}");
    assert_eq!(r["tables"], 2, "{r}");
    assert_eq!(r["rows"], 3010, "{r}");
    assert_eq!(r["problem_count"], 0, "{r}");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "the throwaway cluster's directory is gone");
    let tmp_text = tmp.to_str().unwrap().to_string();
    assert!(processes_mentioning(&tmp_text).is_empty(), "{:?}", processes_mentioning(&tmp_text));

    // One value changed inside a COPY block, gzip valid, the manifest as it was.
    let good = std::fs::read(&path).unwrap();
    let changed = changed_backup(&path);
    std::fs::write(&path, &changed).unwrap();
    let (run, report) = drill_json(&dir, &tmp, &[], &[&name]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert_eq!(report[0]["ok"], false, "{report}");
    let error = report[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("SHA-256") && error.contains("manifest"), "{report}");

    // The same change under a manifest made to vouch for these bytes (its SHA-256 and size
    // rewritten, the content as the dump really was): the rows themselves give it away.
    let manifest_path = dir.join(format!("{name}.manifest.json"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["sha256"] = serde_json::json!(sha256_hex(&changed));
    manifest["stored_bytes"] = serde_json::json!(changed.len());
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let (run, report) = drill_json(&dir, &tmp, &[], &[&name]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    let problems = report[0]["problems"].to_string();
    assert!(problems.contains("public.items") && problems.contains("content differs"), "{report}");

    // Without a manifest (a backup from before manifests): checked against its own COPY
    // blocks, which the changed file still satisfies row for row — so the good file is used.
    std::fs::write(&path, &good).unwrap();
    std::fs::remove_file(&manifest_path).unwrap();
    let _ = std::fs::remove_file(dir.join(format!("{name}.manifest.json.minisig")));
    let (run, report) = drill_json(&dir, &tmp, &[], &[&name]);
    assert!(run.ok(), "{}", run.all());
    assert!(report[0]["reference"].as_str().unwrap().contains("COPY blocks"), "{report}");
    assert!(report[0]["notes"].to_string().contains("row count only"), "{report}");

    // Every drill is in the history, newest first.
    let history = ef(db(), &dir, &[], &["history", "--json", "--limit", "10"]);
    assert!(history.ok(), "{}", history.all());
    let runs: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap();
    let drills: Vec<(&str, &str)> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "drill")
        .map(|r| (r["outcome"].as_str().unwrap(), r["database"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(drills, [("ok", db()), ("failed", db()), ("failed", db()), ("ok", db())], "{runs}");
    let text = ef(db(), &dir, &[], &["history"]);
    assert!(text.ok() && text.stdout.contains("drill") && text.stdout.contains("backup"), "{}", text.all());

    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "nothing left in TMPDIR after four drills");
    assert!(processes_mentioning(&tmp_text).is_empty(), "{:?}", processes_mentioning(&tmp_text));
}

/// With trusted signing keys, a drill refuses a backup its manifest does not vouch for (it
/// would run the backup's SQL), like restore does.
#[test]
fn trusted_keys_refuse_an_unsigned_backup() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let (run, _) = backup_json(db(), &dir, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let (_, pk, _) = minisign_key(work.path(), "trusted");
    let (run, report) = drill_json(&dir, &tmp, &[("EF__BACKUP_TRUSTED_KEYS", pk.to_str().unwrap())], &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(report[0]["error"].as_str().unwrap().contains("not signed"), "{report}");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "no cluster was even started");
}

/// A drill cannot run where it would need a user that does not exist: it says why and what to
/// do, and no drill is recorded as passed.
#[test]
fn a_missing_drill_user_is_named() {
    let work = tempdir();
    let dir = work.path().join("b");
    let (run, _) = backup_json(db(), &dir, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let run = ef(db(), &dir, &[("EF__DRILL_OS_USER", "ef-no-such-user")], &["drill"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("ef-no-such-user") && run.stderr.contains("useradd"), "{}", run.all());
}

/// `EF__DRILL_DB_*` for the server at `host:port`, as the test superuser.
fn drill_server<'a>(host: &'a str, port: &'a str) -> [(&'static str, &'a str); 4] {
    let e = env();
    [("EF__DRILL_DB_HOST", host), ("EF__DRILL_DB_PORT", port), ("EF__DRILL_DB_USER", &e.db_user), ("EF__DRILL_DB_PASSWORD", &e.db_password)]
}

/// An encrypted backup drills on a separate drill server (`EF__DRILL_DB_HOST`) with the age
/// identity given for it, checked against its sealed manifest; without the identity the drill
/// says what it needs. Nothing is left on the drill server.
#[test]
fn an_encrypted_backup_on_a_drill_server() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let (identity, public) = age_key(work.path(), "key.txt");
    let (run, v) = backup_json(db(), &dir, &[("EF__BACKUP_AGE_RECIPIENTS", &public)], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(v["data"]["backup_file"].as_str().unwrap().ends_with(".sql.gz.age"), "{v}");
    // A separate drill server: a cluster of the test's own.
    let own = Cluster::start(&work.path().join("drill-server"));
    let server = drill_server("127.0.0.1", &own.port);
    let (run, report) = drill_json(&dir, &tmp, &server, &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(report[0]["error"].as_str().unwrap().contains("EF__BACKUP_AGE_IDENTITY_FILE"), "{report}");

    let mut with_key = server.to_vec();
    with_key.push(("EF__BACKUP_AGE_IDENTITY_FILE", identity.to_str().unwrap()));
    let (run, report) = drill_json(&dir, &tmp, &with_key, &[]);
    assert!(run.ok(), "{}", run.all());
    let r = &report[0];
    assert_eq!(r["server"], format!("drill server 127.0.0.1:{}", own.port), "{r}");
    assert!(r["reference"].as_str().unwrap().contains("manifest"), "{r}");
    assert_eq!((r["tables"].as_u64(), r["rows"].as_u64()), (Some(2), Some(3010)), "{r}");
    let scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_drill\\_%'";
    assert_eq!(psql_on(&own.port, "postgres", scratch), "0", "scratch databases are dropped");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "no throwaway cluster was started");
}

/// Pins: the production server under another name (`localhost` for EF__DB_HOST=127.0.0.1) was
/// accepted as the drill server — the configuration compares host strings — and the backup's
/// SQL ran on production. The servers' system identifiers tell them apart now; nothing is
/// created there.
#[test]
fn the_production_server_under_another_name_is_refused_as_drill_server() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let (run, _) = backup_json(db(), &dir, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_drill\\_%'";
    let before = psql("postgres", scratch);
    let alias = drill_server("localhost", &env().pg_port);
    let (run, report) = drill_json(&dir, &tmp, &alias, &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    let error = report[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("is the production server") && error.contains("system identifier"), "{report}");
    assert_eq!(psql("postgres", scratch), before, "no scratch database was made on production");
}

/// A drill killed with SIGKILL is recorded as interrupted at the next start, and its
/// throwaway server dies with it (only its directory stays, as documented).
#[test]
fn a_drill_killed_mid_run_is_recorded_and_takes_its_server_along() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let big = ef_backup_e2e::big_db();
    let run = ef(big, &dir, &[], &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let mut child = ef_backup_e2e::ef_command(big, &dir, &[("TMPDIR", tmp.to_str().unwrap())])
        .arg("drill")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the throwaway server is up and loading.
    let tmp_text = tmp.to_str().unwrap().to_string();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !processes_mentioning(&tmp_text).iter().any(|p| p.contains("postgres")) {
        assert!(std::time::Instant::now() < end, "the throwaway server never started");
        assert!(child.try_wait().unwrap().is_none(), "the drill ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !processes_mentioning(&tmp_text).is_empty() {
        assert!(std::time::Instant::now() < end, "left running: {:?}", processes_mentioning(&tmp_text));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let history = ef(big, &dir, &[], &["history", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", history.all()));
    let drill = runs.as_array().unwrap().iter().find(|r| r["kind"] == "drill").unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(drill["outcome"], "interrupted", "{runs}");
}

/// The backup's SQL runs as a role without superuser rights on the throwaway server: a
/// function planted by a production role, called by a CHECK constraint while the rows load,
/// cannot run a program there (it could on a superuser session). The drill fails, naming why,
/// and the program never runs.
#[test]
fn a_backups_functions_cannot_run_programs_during_a_drill() {
    let db = "ef_e2e_drill_hostile";
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    // Where the drill server's OS user could write, so a program that ran would leave it.
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = out.join("pwned");
    drop_db(db);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    let me = &env().db_user;
    psql(
        db,
        &format!(
            "CREATE FUNCTION sneaky(int) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$ BEGIN \
               IF current_user <> '{me}' THEN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch {}'); END IF; \
               RETURN true; END $f$; \
             CREATE TABLE t (a int CHECK (sneaky(a))); INSERT INTO t SELECT generate_series(1, 5);",
            marker.display()
        ),
    );
    let run = ef(db, &dir, &[], &["backup"]);
    assert!(run.ok(), "{}", run.all());
    let (run, report) = {
        let run = ef(db, &dir, &[("TMPDIR", tmp.to_str().unwrap())], &["drill", "--json"]);
        let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
        (run, v)
    };
    assert_eq!(run.code, Some(1), "{}", run.all());
    let error = report[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("permission denied") || error.contains("superuser"), "{report}");
    assert!(!marker.exists(), "the backup's program ran");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "nothing left behind");
}

/// A manifest that is there but unusable is damage, not an older backup: the drill fails
/// instead of checking row counts only.
#[test]
fn a_damaged_manifest_fails_the_drill() {
    let work = tempdir();
    let dir = work.path().join("b");
    let tmp = drill_tmp(work.path());
    let (run, v) = backup_json(db(), &dir, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap();
    std::fs::write(dir.join(format!("{name}.manifest.json")), b"{\"manifest_version\": 1, \"backu").unwrap();
    let (run, report) = drill_json(&dir, &tmp, &[], &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(report[0]["error"].as_str().unwrap().contains("manifest is unusable"), "{report}");
}

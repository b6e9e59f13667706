//! A run backs up the server's globals (roles, memberships, role settings, tablespaces) beside
//! its databases, and several databases in one run (`EF__DB_NAMES`), each file on its own: its
//! own name, entry, retention and failure. Against the real server and the real binary.

use std::path::Path;

use ef_backup_e2e::{backup_json, drop_db, ef, files, gunzip, own_db, psql, psql_on, tempdir, Cluster, Serve};

/// The test server's system identifier: the globals' label is `pg<it>-<selection key>`.
fn system_identifier() -> String {
    psql("postgres", "SELECT system_identifier FROM pg_control_system()")
}

/// The label of the one globals backup in `dir`, checked to carry the server's identifier.
fn label_in(dir: &Path) -> String {
    let globals = globals_files(dir);
    assert_eq!(globals.len(), 1, "{:?}", files(dir));
    let label = globals[0].split_once("_globals_").unwrap().0.to_string();
    let prefix = format!("pg{}-", system_identifier());
    assert!(label.starts_with(&prefix) && label.len() == prefix.len() + 8, "{label}");
    label
}

fn globals_files(dir: &Path) -> Vec<String> {
    files(dir).into_iter().filter(|f| f.contains("_globals_")).collect()
}

/// A login role that is no superuser, owning `db`: what EuraFlow's `euraflow` user is.
fn app_role(role: &str, db: &str) -> (&'static str, String) {
    psql("postgres", &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD 'app-pw-1'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"));
    psql("postgres", &format!("ALTER DATABASE \"{db}\" OWNER TO {role}"));
    psql(db, &format!("ALTER TABLE t OWNER TO {role}"));
    ("app-pw-1", role.to_string())
}

#[test]
fn the_default_takes_the_globals_with_passwords_beside_the_dump_and_keeps_the_originals_response() {
    let db = own_db("ef_glob_default");
    let dir = tempdir();
    let backups = dir.path().join("b");
    let (run, v) = backup_json(db, &backups, &[("EF__BACKUP_GLOBALS", "auto")], &[]);
    assert!(run.ok(), "{}", run.all());
    // The original's response, for the database's dump only: the same keys as ever.
    let data = v["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["backup_file", "backup_path", "file_size_bytes", "file_size_mb", "s3_error", "s3_uploaded", "timestamp"]);
    let dump = data["backup_file"].as_str().unwrap();
    assert!(dump.starts_with("ef_glob_default_backup_"), "{dump}");

    let label = label_in(&backups);
    let globals = globals_files(&backups);
    // The same run: the same time in both names.
    assert_eq!(globals[0], dump.replace("ef_glob_default_backup_", &format!("{label}_globals_")));
    let text = String::from_utf8(gunzip(&backups.join(&globals[0]))).unwrap();
    // ef-backup's line first (the run's databases: what `restore --all` restores), then pg_dumpall's.
    let (first, body) = text.split_once('\n').unwrap();
    assert_eq!(first, r#"-- ef-backup globals v1: {"databases":["ef_glob_default"],"passwords":true}"#);
    assert!(body.starts_with("--\n-- PostgreSQL database cluster dump\n--\n"), "{}", &body[..200.min(body.len())]);
    assert!(text.contains("-- PostgreSQL database cluster dump complete"));
    assert!(text.contains("CREATE ROLE postgres;"));
    assert!(text.contains("PASSWORD 'SCRAM-SHA-256$"), "the superuser takes role passwords");
    assert!(!run.all().contains("without role passwords"), "{}", run.all());

    // A globals backup is no database to verify or restore: the error says what restores it.
    let run = ef(db, &backups, &[], &["verify", &globals[0]]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("globals") && run.stderr.contains("restore --all"), "{}", run.stderr);

    // `list` shows both.
    let listed = ef(db, &backups, &[("EF__BACKUP_GLOBALS", "auto")], &["list", "--json"]);
    assert!(listed.ok(), "{}", listed.all());
    assert!(listed.stdout.contains(&globals[0]) && listed.stdout.contains(dump), "{}", listed.stdout);
    drop_db(db);
}

#[test]
fn a_user_who_cannot_read_passwords_gets_globals_without_them_and_true_fails_loudly() {
    let db = own_db("ef_glob_nopw");
    let (password, role) = app_role("ef_glob_app", db);
    let dir = tempdir();
    let backups = dir.path().join("b");
    let as_app = [("EF__DB_USER", role.as_str()), ("EF__DB_PASSWORD", password)];

    let mut env = as_app.to_vec();
    env.push(("EF__BACKUP_GLOBALS", "auto"));
    let (run, v) = backup_json(db, &backups, &env, &[]);
    assert!(run.ok(), "auto never fails the run for the globals: {}", run.all());
    assert_eq!(v["success"], true);
    assert!(run.stderr.contains("without role passwords") && run.stderr.contains("pg_authid"), "{}", run.stderr);
    let globals = globals_files(&backups);
    assert_eq!(globals.len(), 1, "{:?}", files(&backups));
    let text = String::from_utf8(gunzip(&backups.join(&globals[0]))).unwrap();
    assert!(text.contains(&format!("CREATE ROLE {role};")), "the roles are there");
    assert!(!text.contains("PASSWORD"), "and no password");

    // `true` wants the passwords: the run fails and says what to do; the dump stands.
    let before = files(&backups).len();
    let mut env = as_app.to_vec();
    env.push(("EF__BACKUP_GLOBALS", "true"));
    let (run, v) = backup_json(db, &backups, &env, &["--now", "1762191000"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert_eq!(v["success"], false);
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("EF__BACKUP_GLOBALS=true") && message.contains("pg_authid") && message.contains("was written"), "{message}");
    assert_eq!(files(&backups).len(), before + 1, "the database's dump is written, no globals: {:?}", files(&backups));
    drop_db(db);
}

#[test]
fn several_databases_each_get_their_own_file_and_entry_and_one_failing_fails_only_its_own() {
    let (a, b, locked) = (own_db("ef_multi_a"), own_db("ef_multi_b"), own_db("ef_multi_locked"));
    let (password, role) = app_role("ef_multi_app", a);
    // Not the same rows as a: verify must compare each dump with its own database.
    psql(b, "INSERT INTO t VALUES (0, 'only in b')");
    psql("postgres", &format!("ALTER DATABASE {b} OWNER TO {role}"));
    psql(b, &format!("ALTER TABLE t OWNER TO {role}"));
    // The app role may not connect to this one: its dump fails with permission denied.
    psql("postgres", &format!("REVOKE CONNECT ON DATABASE {locked} FROM PUBLIC"));
    let dir = tempdir();
    let backups = dir.path().join("b");
    let names = format!("{a},{b}");
    let env = [("EF__DB_NAME", ""), ("EF__DB_NAMES", names.as_str()), ("EF__BACKUP_GLOBALS", "auto"), ("EF__BACKUP_PARALLEL_DBS", "2")];
    let (run, v) = backup_json(a, &backups, &env, &[]);
    assert!(run.ok(), "{}", run.all());
    let entries = v["data"]["backups"].as_array().unwrap();
    let who: Vec<(&str, &str, bool)> =
        entries.iter().map(|e| (e["database"].as_str().unwrap(), e["kind"].as_str().unwrap(), e["success"].as_bool().unwrap())).collect();
    let label = label_in(&backups);
    assert_eq!(who, [(label.as_str(), "globals", true), (a, "database", true), (b, "database", true)], "the globals first");
    for e in entries {
        assert!(backups.join(e["backup_file"].as_str().unwrap()).is_file(), "{e}");
    }
    assert_eq!(files(&backups).len(), 3);
    // verify compares each dump with its own database: the newest (by name, b's), and a's.
    let a_dump = entries[1]["backup_file"].as_str().unwrap();
    for args in [vec!["verify"], vec!["verify", a_dump]] {
        let run = ef(a, &backups, &env, &args);
        assert!(run.ok(), "{args:?}: {}", run.all());
    }

    // As the app role, with a database it may not connect to: that one fails, the others stand.
    let names = format!("{a},{locked},{b}");
    let env = [
        ("EF__DB_NAME", ""),
        ("EF__DB_NAMES", names.as_str()),
        ("EF__BACKUP_GLOBALS", "false"),
        ("EF__DB_USER", role.as_str()),
        ("EF__DB_PASSWORD", password),
    ];
    let (run, v) = backup_json(a, &backups, &env, &["--now", "1762191000"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert_eq!(v["success"], false);
    let entries = v["data"]["backups"].as_array().unwrap();
    let by_db = |db: &str| entries.iter().find(|e| e["database"] == db).unwrap_or_else(|| panic!("{db} in {v}"));
    assert_eq!(by_db(a)["success"], true);
    assert_eq!(by_db(b)["success"], true);
    assert_eq!(by_db(locked)["success"], false);
    let error = by_db(locked)["error"].as_str().unwrap();
    assert!(error.contains("permission denied") || error.contains("CONNECT"), "{error}");
    let written: Vec<String> = files(&backups).into_iter().filter(|f| f.contains("20251104_013000")).collect();
    assert_eq!(written.len(), 2, "a and b, nothing of {locked}: {written:?}");
    assert!(!files(&backups).iter().any(|f| f.contains(".partial")));
    for db in [a, b, locked] {
        drop_db(db);
    }
}

/// `EF__DB_NAMES=*` on a server of its own: every database that takes connections, templates
/// and `EF__DB_EXCLUDE` left out.
#[test]
fn every_database_of_a_server_minus_the_excluded() {
    let dir = tempdir();
    let cluster = Cluster::start(&dir.path().join("pg"));
    for db in ["shop", "crm", "scratch"] {
        psql_on(&cluster.port, "postgres", &format!("CREATE DATABASE {db}"));
        psql_on(&cluster.port, db, "CREATE TABLE t AS SELECT 1 AS a");
    }
    // A name that would forge a log line: left out, and said so.
    psql_on(&cluster.port, "postgres", "CREATE DATABASE \"evil\nERROR forged\"");
    let backups = dir.path().join("backups");
    let env = [
        ("EF__DB_PORT", cluster.port.as_str()),
        ("EF__DB_NAME", ""),
        ("EF__DB_NAMES", "*"),
        ("EF__DB_EXCLUDE", "scratch"),
        ("EF__BACKUP_GLOBALS", "false"),
    ];
    let (run, v) = backup_json("unused", &backups, &env, &[]);
    assert!(run.ok(), "{}", run.all());
    let mut dbs: Vec<&str> = v["data"]["backups"].as_array().unwrap().iter().map(|e| e["database"].as_str().unwrap()).collect();
    dbs.sort();
    assert_eq!(dbs, ["crm", "postgres", "shop"]);
    assert!(run.stderr.contains(r#"database "evil\nERROR forged" is not backed up"#), "{}", run.stderr);
    assert_eq!(files(&backups).len(), 3, "{:?}", files(&backups));

    // The service starts with `*` (its policy check samples a database it can name) and, once it
    // has asked the server, counts every database's backups.
    let serve = Serve::start("unused", dir.path(), &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = ef_backup_e2e::http(serve.port, "GET", "/metrics", &[], b"").body;
        if ["crm", "postgres", "shop"]
            .iter()
            .all(|db| metrics.contains(&format!("ef_backup_database_backups_on_disk{{database=\"{db}\",kind=\"database\"}} 1\n")))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The service answers a run of several databases with every entry, and `/metrics` carries a
/// `database` label: the newest backup of each, and whether the last run wrote it.
#[test]
fn the_service_reports_every_database_and_labels_its_metrics() {
    let (a, b) = (own_db("ef_multi_serve_a"), own_db("ef_multi_serve_b"));
    let dir = tempdir();
    let names = format!("{a},{b},ef_multi_serve_gone");
    let serve = Serve::start(a, dir.path(), &[("EF__DB_NAME", ""), ("EF__DB_NAMES", names.as_str()), ("EF__BACKUP_GLOBALS", "auto")]);
    let reply = serve.post("/api/ef/v1/backup/manual");
    assert_eq!(reply.status, 500, "one database does not exist: {}", reply.body);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let ok: Vec<(String, bool)> = v["data"]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["database"].as_str().unwrap().to_string(), e["success"].as_bool().unwrap()))
        .collect();
    let label = label_in(&dir.path().join("backups"));
    assert_eq!(ok, [(label.clone(), true), (a.to_string(), true), (b.to_string(), true), ("ef_multi_serve_gone".to_string(), false)]);
    let metrics = ef_backup_e2e::http(serve.port, "GET", "/metrics", &[], b"").body;
    for (db, kind, success) in [(a, "database", 1), (b, "database", 1), (label.as_str(), "globals", 1), ("ef_multi_serve_gone", "database", 0)] {
        let sample = format!("ef_backup_database_last_run_success{{database=\"{db}\",kind=\"{kind}\"}} {success}\n");
        assert!(metrics.contains(&sample), "{sample} in {metrics}");
    }
    assert!(metrics.contains(&format!("ef_backup_database_backups_on_disk{{database=\"{a}\",kind=\"database\"}} 1\n")), "{metrics}");
    // A database of the last run with nothing on disk shows 0 backups, newest at 0: alertable.
    assert!(metrics.contains("ef_backup_database_backups_on_disk{database=\"ef_multi_serve_gone\",kind=\"database\"} 0\n"), "{metrics}");
    assert!(
        metrics.contains("ef_backup_database_newest_backup_timestamp_seconds{database=\"ef_multi_serve_gone\",kind=\"database\"} 0\n"),
        "{metrics}"
    );
    let status = serve.get("/api/ef/v1/backup/status");
    assert!(status.body.contains("ef_multi_serve_gone"), "the last run's message names the failure: {}", status.body);
    // The default policy's status lists each database and the globals with their newest backup.
    let v: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let mut per: Vec<(String, String, u64)> = v["databases"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", status.body))
        .iter()
        .map(|d| (d["database"].as_str().unwrap().to_string(), d["kind"].as_str().unwrap().to_string(), d["count"].as_u64().unwrap()))
        .collect();
    per.sort();
    let mut want =
        vec![(a.to_string(), "database".to_string(), 1), (b.to_string(), "database".to_string(), 1), (label.clone(), "globals".to_string(), 1)];
    want.sort();
    assert_eq!(per, want, "{}", status.body);
    for db in [a, b] {
        drop_db(db);
    }
}

/// Two deployments of one server — `EF__DB_NAME=a` and `EF__DB_NAMES=b,c` — share a bucket
/// prefix and run at the same second, three times, with retention keeping one of each: each
/// keeps its own globals (their labels differ) and neither deletes or overwrites the other's.
#[test]
fn two_deployments_sharing_a_prefix_never_touch_each_others_backups() {
    let s3 = ef_backup_e2e::s3();
    let (a, b, c) = (own_db("ef_share_a"), own_db("ef_share_b"), own_db("ef_share_c"));
    let dir = tempdir();
    let prefix = "shared-deployments/";
    let keep_one = [
        ("EF__BACKUP_GLOBALS", "auto"),
        ("EF__BACKUP_MIN_KEEP", "1"),
        ("EF__BACKUP_RETENTION_DAYS", "1"),
        ("EF__POLICY_S3_KEEP_LAST", "1"),
        ("EF__POLICY_LOCAL_KEEP_LAST", "1"),
        ("EF__POLICY_LOCAL_RETENTION_DAYS", "1"),
    ];
    let vars = s3.vars(prefix);
    let names = format!("{b},{c}");
    let one = ef_backup_e2e::vars(&vars, &keep_one);
    let mut several = one.clone();
    several.extend([("EF__DB_NAME", ""), ("EF__DB_NAMES", names.as_str())]);
    const DAY: i64 = 86_400;
    let now = 1_762_191_000;
    for at in [now - 40 * DAY, now - 20 * DAY, now] {
        let at = at.to_string();
        let first = ef(a, &dir.path().join("a"), &one, &["backup", "--json", "--now", &at]);
        let second = ef(a, &dir.path().join("bc"), &several, &["backup", "--json", "--now", &at]);
        assert!(first.ok() && second.ok(), "{}\n{}", first.all(), second.all());
    }
    let mut keys: Vec<String> = serde_json::from_value(s3.probe_json(&["list", &s3.bucket, prefix])).unwrap();
    keys.sort();
    let stamp = "20251104_013000";
    let labels: Vec<String> = keys.iter().filter_map(|k| k.strip_prefix(prefix)?.split_once("_globals_").map(|(l, _)| l.to_string())).collect();
    assert_eq!(labels.len(), 2, "one globals backup per deployment: {keys:?}");
    assert_ne!(labels[0], labels[1]);
    for db in [a, b, c] {
        assert!(keys.contains(&format!("{prefix}{db}_backup_{stamp}.sql.gz")), "{db} in {keys:?}");
    }
    assert!(keys.iter().all(|k| k.contains(stamp)), "each kept only its newest, and only its own went: {keys:?}");
    assert_eq!(keys.len(), 5, "{keys:?}");
    for db in [a, b, c] {
        drop_db(db);
    }
}

/// A restarted service counts the globals already on disk before its first run: it asks the
/// server for their label at start-up.
#[test]
fn a_restarted_service_knows_its_globals_before_its_first_run() {
    let db = own_db("ef_glob_restart");
    let dir = tempdir();
    let auto = [("EF__BACKUP_GLOBALS", "auto")];
    let (run, _) = backup_json(db, &dir.path().join("backups"), &auto, &[]);
    assert!(run.ok(), "{}", run.all());
    let label = label_in(&dir.path().join("backups"));
    let serve = Serve::start(db, dir.path(), &auto);
    let want = format!("ef_backup_database_backups_on_disk{{database=\"{label}\",kind=\"globals\"}} 1\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = ef_backup_e2e::http(serve.port, "GET", "/metrics", &[], b"").body;
        if metrics.contains(&want) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{want} never in {metrics}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop_db(db);
}

/// A server that will not tell its system identifier (a managed service restricting
/// pg_control_system) costs the globals their label — said in the log — and never the run;
/// with EF__DEPLOYMENT_NAME they are taken all the same.
#[test]
fn a_server_that_hides_its_identity_never_fails_the_run() {
    let dir = tempdir();
    let cluster = Cluster::start(&dir.path().join("pg"));
    for s in ["CREATE ROLE ef_hidden LOGIN PASSWORD 'hidden-pw'", "CREATE DATABASE app OWNER ef_hidden"] {
        psql_on(&cluster.port, "postgres", s);
    }
    // Function privileges are per database: in the one ef-backup connects to.
    psql_on(&cluster.port, "app", "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC");
    let base =
        [("EF__DB_PORT", cluster.port.as_str()), ("EF__DB_USER", "ef_hidden"), ("EF__DB_PASSWORD", "hidden-pw"), ("EF__BACKUP_GLOBALS", "auto")];
    let backups = dir.path().join("b");
    let (run, v) = backup_json("app", &backups, &base, &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(v["success"], true);
    assert!(run.stderr.contains("did not tell its system identifier"), "{}", run.stderr);
    assert!(globals_files(&backups).is_empty(), "{:?}", files(&backups));

    // Nor may the user connect anywhere but its own database (pg_dumpall starts in `postgres`
    // unless told otherwise).
    for db in ["postgres", "template1"] {
        psql_on(&cluster.port, "postgres", &format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"));
    }
    let mut named = base.to_vec();
    named.push(("EF__DEPLOYMENT_NAME", "hidden"));
    let (run, _) = backup_json("app", &backups, &named, &["--now", "1762191000"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(globals_files(&backups), ["hidden_globals_20251104_013000.sql.gz"]);
}

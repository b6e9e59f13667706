//! The worst day for a whole server: it is gone, and a brand-new cluster (initdb, nothing in it
//! but its superuser) gets everything back with `restore --all` from one run of
//! `EF__DB_NAMES=*` — roles with their memberships and settings first, then every database
//! with its rows, large objects, sequences, owners, grants, ACL and settings.

use ef_backup_e2e::{ef, psql_on, tempdir, Cluster};

/// Everything the test compares between the old and the new server (the superuser itself, which
/// the new server has with its own password, left out).
fn server_state(port: &str) -> Vec<(String, String)> {
    let q = |db: &str, sql: &str| psql_on(port, db, sql);
    let mut out = vec![
        (
            "roles".to_string(),
            q(
                "postgres",
                "SELECT string_agg(concat_ws(':', rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolconnlimit, \
                 rolpassword IS NOT NULL), ' ' ORDER BY rolname) FROM pg_authid WHERE rolname !~ '^pg_' AND rolname <> 'postgres'",
            ),
        ),
        (
            "memberships".to_string(),
            q(
                "postgres",
                "SELECT string_agg(r.rolname || '>' || m.rolname || ':' || a.admin_option, ' ' ORDER BY r.rolname, m.rolname) \
                 FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member",
            ),
        ),
        (
            "role settings".to_string(),
            q(
                "postgres",
                "SELECT string_agg(r.rolname || '=' || array_to_string(s.setconfig, ','), ' ' ORDER BY r.rolname) \
                 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0",
            ),
        ),
        (
            "databases".to_string(),
            q(
                "postgres",
                "SELECT string_agg(concat_ws(' | ', datname, pg_get_userbyid(datdba), datconnlimit, array_to_string(datacl, ','), \
                 shobj_description(oid, 'pg_database'), (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)), \
                 E'\\n' ORDER BY datname) FROM pg_database d WHERE NOT datistemplate AND datname <> 'postgres'",
            ),
        ),
    ];
    out.push((
        "shop".into(),
        q(
            "shop",
            "SELECT concat_ws(' | ', (SELECT count(*) || ':' || md5(string_agg(id || note, ',' ORDER BY id)) FROM orders), \
             (SELECT tableowner FROM pg_tables WHERE tablename = 'orders'), has_table_privilege('ef_reader', 'orders', 'SELECT'), \
             (SELECT last_value FROM orders_id_seq), (SELECT count(*) FROM pg_largeobject_metadata))",
        ),
    ));
    out.push((
        "crm".into(),
        q("crm", "SELECT concat_ws(' | ', (SELECT count(*) FROM contacts), (SELECT tableowner FROM pg_tables WHERE tablename = 'contacts'))"),
    ));
    out
}

#[test]
fn a_whole_server_comes_back_on_a_brand_new_cluster() {
    let dir = tempdir();
    let old = Cluster::start(&dir.path().join("old"));
    let sql = |db: &str, s: &str| psql_on(&old.port, db, s);
    // A tablespace whose directory the new server will not have.
    let space = dir.path().join("fast-disk");
    std::fs::create_dir(&space).unwrap();
    let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if root {
        // The clusters run as the postgres OS user when the tests run as root.
        assert!(std::process::Command::new("chown").args(["postgres:postgres", space.to_str().unwrap()]).status().unwrap().success());
    }
    sql("postgres", &format!("CREATE TABLESPACE ef_fast LOCATION '{}'", space.display()));
    for s in [
        "CREATE ROLE ef_shop_owner LOGIN PASSWORD 'shop-pw'",
        "CREATE ROLE ef_crm_owner LOGIN PASSWORD 'crm-pw' CONNECTION LIMIT 7",
        "CREATE ROLE ef_reader NOLOGIN",
        "GRANT ef_reader TO ef_crm_owner WITH ADMIN OPTION",
        "ALTER ROLE ef_shop_owner SET work_mem = '8MB'",
        "CREATE DATABASE shop OWNER ef_shop_owner",
        "CREATE DATABASE crm OWNER ef_crm_owner CONNECTION LIMIT 11",
        "ALTER DATABASE shop SET statement_timeout = '42s'",
        "REVOKE CONNECT ON DATABASE crm FROM PUBLIC",
        "GRANT CONNECT ON DATABASE crm TO ef_reader",
        "COMMENT ON DATABASE shop IS '商店'",
    ] {
        sql("postgres", s);
    }
    sql(
        "shop",
        "CREATE TABLE orders (id serial PRIMARY KEY, note text); INSERT INTO orders (note) SELECT '订单 ' || g FROM generate_series(1, 700) g; \
         ALTER TABLE orders OWNER TO ef_shop_owner; GRANT SELECT ON orders TO ef_reader; SELECT lo_from_bytea(0, 'a large object')",
    );
    sql("crm", "CREATE TABLE contacts AS SELECT g AS id FROM generate_series(1, 300) g; ALTER TABLE contacts OWNER TO ef_crm_owner");
    let want = server_state(&old.port);
    assert!(want.iter().any(|(_, v)| v.contains("ef_shop_owner=work_mem=8MB")), "{want:?}");

    let backups = dir.path().join("backups");
    let all = [("EF__DB_PORT", old.port.as_str()), ("EF__DB_NAME", ""), ("EF__DB_NAMES", "*"), ("EF__BACKUP_GLOBALS", "true")];
    let s3 = ef_backup_e2e::s3();
    let prefix = format!("dr-{}/", std::process::id());
    let s3_vars = s3.vars(&prefix);
    let with_s3 = ef_backup_e2e::vars(&s3_vars, &all);
    let run = ef("unused", &backups, &with_s3, &["backup", "--json"]);
    assert!(run.ok(), "backup: {}", run.all());
    let sysid = psql_on(&old.port, "postgres", "SELECT system_identifier FROM pg_control_system()");
    let globals: Vec<String> = ef_backup_e2e::files(&backups).into_iter().filter(|f| f.contains("_globals_")).collect();
    assert_eq!(globals.len(), 1, "{globals:?}");
    let label = globals[0].split_once("_globals_").unwrap().0.to_string();
    assert!(label.starts_with(&format!("pg{sysid}-")), "{label}");
    let shop_dump = ef_backup_e2e::files(&backups).into_iter().find(|f| f.starts_with("shop_backup_")).unwrap();
    drop(old); // the server is gone
    std::fs::rename(&space, dir.path().join("fast-disk-gone")).unwrap();

    let new = Cluster::start(&dir.path().join("new"));
    let on_new = [("EF__DB_PORT", new.port.as_str()), ("EF__DB_NAME", ""), ("EF__DB_NAMES", "*")];
    // Without the old server's label the new server's is tried: the error names the labels there.
    let run = ef("unused", &backups, &on_new, &["restore", "--all"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("--label") && run.stderr.contains(&label), "{}", run.stderr);
    // One database alone: its owner is missing there; the error names the globals of its run.
    let run = ef("shop", &backups, &[("EF__DB_PORT", new.port.as_str())], &["restore", &shop_dump, "--target-db", "shop", "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("\"ef_shop_owner\""), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("the globals backup of the same run is {}", globals[0])), "{}", run.stderr);

    // From the bucket: the local backup directory is gone with the server.
    std::fs::remove_dir_all(&backups).unwrap();
    let on_new_s3 = ef_backup_e2e::vars(&s3_vars, &on_new);
    let run = ef("unused", &backups, &on_new_s3, &["restore", "--all", "--from-s3", "--label", &label, "--jobs", "2"]);
    assert!(run.ok(), "restore --all: {}", run.all());
    assert!(run.stdout.contains("roles created: ef_crm_owner, ef_reader, ef_shop_owner"), "{}", run.stdout);
    assert!(run.stdout.contains("roles already there, left exactly as they were: postgres"), "{}", run.stdout);
    assert!(run.stdout.contains("database postgres: skipped"), "{}", run.stdout);
    assert!(run.stdout.contains("done: the globals and 2 database(s) restored, 1 system database(s) skipped"), "{}", run.stdout);
    let problems: Vec<&str> = run.stdout.lines().filter(|l| l.contains("problem:")).collect();
    assert_eq!(problems.len(), 1, "{}", run.stdout);
    assert!(problems[0].contains("CREATE TABLESPACE ef_fast") && problems[0].contains("create the directory"), "{}", problems[0]);
    let got = server_state(&new.port);
    for ((what, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(g, w, "{what} differs after restore --all");
    }
    // The roles log in with their old passwords.
    let login = std::process::Command::new(ef_backup_e2e::env().pg_bin.join("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &new.port, "-U", "ef_shop_owner", "-d", "shop", "-c", "SELECT current_setting('work_mem')"])
        .env("PGPASSWORD", "shop-pw")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), "8MB", "{}", String::from_utf8_lossy(&login.stderr));

    // Again onto the same server: the roles are there and stay as they are; the databases exist.
    psql_on(&new.port, "postgres", "ALTER ROLE ef_reader CONNECTION LIMIT 3");
    let run = ef("unused", &backups, &on_new_s3, &["restore", "--all", "--from-s3", "--label", &label]);
    assert_eq!(run.code, Some(1), "the databases exist: {}", run.all());
    assert!(run.stdout.contains("left exactly as they were: ef_crm_owner, ef_reader, ef_shop_owner, postgres"), "{}", run.stdout);
    assert!(run.stdout.contains("--drop-existing"), "{}", run.stdout);
    assert_eq!(psql_on(&new.port, "postgres", "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'ef_reader'"), "3", "left as it was");
}

/// A globals backup taken without role passwords (a user who is no superuser) restores its
/// roles, and the restore names the ones that can log in but got no password.
#[test]
fn roles_from_a_passwordless_globals_backup_are_listed() {
    let dir = tempdir();
    let old = Cluster::start(&dir.path().join("old"));
    for s in ["CREATE ROLE ef_app LOGIN PASSWORD 'app-pw'", "CREATE DATABASE app OWNER ef_app"] {
        psql_on(&old.port, "postgres", s);
    }
    psql_on(&old.port, "app", "CREATE TABLE t AS SELECT 1 AS a; ALTER TABLE t OWNER TO ef_app");
    let backups = dir.path().join("backups");
    let as_app = [
        ("EF__DB_PORT", old.port.as_str()),
        ("EF__DB_USER", "ef_app"),
        ("EF__DB_PASSWORD", "app-pw"),
        ("EF__BACKUP_GLOBALS", "auto"),
        ("EF__DEPLOYMENT_NAME", "prod"),
    ];
    let run = ef("app", &backups, &as_app, &["backup"]);
    assert!(run.ok(), "backup: {}", run.all());
    drop(old);

    let new = Cluster::start(&dir.path().join("new"));
    let run = ef("app", &backups, &[("EF__DB_PORT", new.port.as_str()), ("EF__DEPLOYMENT_NAME", "prod")], &["restore", "--all"]);
    assert!(run.ok(), "restore --all: {}", run.all());
    assert!(run.stdout.contains("got no password") && run.stdout.contains("ef_app"), "{}", run.stdout);
    assert_eq!(psql_on(&new.port, "app", "SELECT tableowner FROM pg_tables WHERE tablename = 't'"), "ef_app");
    assert_eq!(psql_on(&new.port, "postgres", "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'ef_app'"), "t");
}

/// A globals backup is untrusted input too: only the statements a globals backup holds run,
/// one per call; anything else is refused and reported, and a psql meta-command makes the whole
/// file refused before anything runs.
#[test]
fn a_crafted_globals_backup_runs_nothing_but_globals_statements() {
    let dir = tempdir();
    let server = Cluster::start(&dir.path().join("pg"));
    psql_on(&server.port, "postgres", "CREATE DATABASE victim");
    let marker = dir.path().join("pwned");
    let write = |name: &str, body: &str| {
        let backups = dir.path().join("backups");
        std::fs::create_dir_all(&backups).unwrap();
        let text = format!(
            "-- ef-backup globals v1: {{\"databases\":[],\"passwords\":true}}\n--\n-- PostgreSQL database cluster dump\n--\n\n{body}\n--\n-- PostgreSQL database cluster dump complete\n--\n\n"
        );
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(backups.join(name)).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        gz.finish().unwrap();
        backups
    };
    let env = [("EF__DB_PORT", server.port.as_str()), ("EF__DEPLOYMENT_NAME", "crafted")];
    let evil =
        "CREATE ROLE ef_crafted_ok;\nDROP DATABASE victim;\nCREATE ROLE ef_crafted_super SUPERUSER;\nALTER ROLE postgres WITH PASSWORD 'taken';\n";
    let backups = write("crafted_globals_20251104_013000.sql.gz", evil);
    let run = ef("victim", &backups, &env, &["restore", "--all"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("roles created: ef_crafted_ok"), "{}", run.stdout);
    let refused = run.stdout.lines().filter(|l| l.contains("problem: refused")).count();
    assert_eq!(refused, 2, "DROP DATABASE and CREATE ROLE … SUPERUSER are refused: {}", run.stdout);
    assert_eq!(psql_on(&server.port, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'victim'"), "1");
    assert!(!marker.exists());
    assert_eq!(psql_on(&server.port, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'ef_crafted_super'"), "0");
    // The superuser exists: its password is left as it was (the suite still logs in with it).
    assert_eq!(psql_on(&server.port, "postgres", "SELECT 1"), "1");

    // A meta-command or a COPY anywhere: the file is refused before any statement runs.
    for (body, why) in [
        (format!("CREATE ROLE ef_crafted_two;\n\\! touch {}\n", marker.display()), "meta-command"),
        (format!("CREATE ROLE ef_crafted_two;\nCOPY (SELECT 1) TO PROGRAM 'touch {}';\n", marker.display()), "holds a COPY"),
    ] {
        std::fs::remove_dir_all(dir.path().join("backups")).unwrap();
        let backups = write("crafted_globals_20251104_013000.sql.gz", &body);
        let run = ef("victim", &backups, &env, &["restore", "--all"]);
        assert_eq!(run.code, Some(1), "{}", run.all());
        assert!(run.stderr.contains(why), "{}", run.stderr);
        assert_eq!(psql_on(&server.port, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'ef_crafted_two'"), "0");
        assert!(!marker.exists());
    }
}

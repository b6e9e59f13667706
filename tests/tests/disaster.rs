//! Disaster recovery of one database: the server is gone, and a brand-new cluster (initdb,
//! nothing in it but its superuser) gets the backup. The restore names the roles the new server
//! lacks before it creates anything; once they are there (from the old server's roles, what a
//! globals backup holds), the database comes back with its rows, its owner, ACL, settings,
//! comment and connection limit, and its objects' owners.

use std::process::{Command, Stdio};

use ef_backup_e2e::{drop_db, ef, env, psql, psql_on, tempdir, Cluster};

/// The old server's roles, applied to the new one the way an operator restores a globals
/// backup: `pg_dumpall --roles-only | psql` (its `CREATE ROLE postgres` fails, and psql goes on).
fn copy_roles(to_port: &str) {
    let e = env();
    let dumped = Command::new(e.pg_bin.join("pg_dumpall"))
        .args(["--roles-only", "-h", "127.0.0.1", "-p", &e.pg_port, "-U", &e.db_user])
        .env("PGPASSWORD", &e.db_password)
        .output()
        .unwrap();
    assert!(dumped.status.success(), "pg_dumpall: {}", String::from_utf8_lossy(&dumped.stderr));
    let mut psql = Command::new(e.pg_bin.join("psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", to_port, "-U", &e.db_user, "-d", "postgres"])
        .env("PGPASSWORD", &e.db_password)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(psql.stdin.as_mut().unwrap(), &dumped.stdout).unwrap();
    drop(psql.stdin.take());
    psql.wait().unwrap();
}

#[test]
fn a_database_comes_back_on_a_brand_new_server() {
    let e = env();
    let (owner, reader) = ("ef_dr_owner", "ef_dr_reader");
    for role in [owner, reader] {
        psql("postgres", &format!("DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"));
    }
    let src = "ef_dr_app";
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src} OWNER {owner} CONNECTION LIMIT 9"));
    psql(
        src,
        &format!(
            "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, '订单 ' || g FROM generate_series(1, 500) g; \
             ALTER TABLE orders OWNER TO {owner}; GRANT SELECT ON orders TO {reader}"
        ),
    );
    for sql in [
        format!("REVOKE CONNECT ON DATABASE {src} FROM PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {src} TO {reader}"),
        format!("ALTER DATABASE {src} SET statement_timeout = '42s'"),
        format!("COMMENT ON DATABASE {src} IS 'the app'"),
    ] {
        psql("postgres", &sql);
    }
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let run = ef(src, &backups, &[], &["backup", "--json"]);
    assert!(run.ok(), "backup: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let rows = |port: &str| psql_on(port, src, "SELECT count(*) || ':' || md5(string_agg(id || note, ',' ORDER BY id)) FROM orders");
    let properties = |port: &str| {
        psql_on(
            port,
            "postgres",
            &format!(
                "SELECT concat_ws(' | ', pg_get_userbyid(datdba), datconnlimit, array_to_string(datacl, ','), shobj_description(oid, 'pg_database'), \
                 (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0)) \
                 FROM pg_database d WHERE datname = '{src}'"
            ),
        )
    };
    let (want_rows, want_properties) = (rows(&e.pg_port), properties(&e.pg_port));
    assert!(want_properties.contains("statement_timeout=42s") && want_properties.contains("the app"), "{want_properties}");

    let new = Cluster::start(&dir.path().join("new-server"));
    let on_new = [("EF__DB_PORT", new.port.as_str())];
    let user_databases =
        || psql_on(&new.port, "postgres", "SELECT count(*) FROM pg_database WHERE NOT datname IN ('postgres', 'template0', 'template1')");

    // The new server has none of the roles: the restore says which, and creates nothing.
    let run = ef(src, &backups, &on_new, &["restore", &name, "--target-db", src, "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains(&format!("\"{owner}\"")) && run.stderr.contains(&format!("\"{reader}\"")), "{}", run.stderr);
    assert_eq!(user_databases(), "0");

    // With the old server's roles there, the database comes back as it was.
    copy_roles(&new.port);
    let run = ef(src, &backups, &on_new, &["restore", &name, "--target-db", src, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert_eq!(rows(&new.port), want_rows);
    assert_eq!(properties(&new.port), want_properties);
    assert_eq!(psql_on(&new.port, src, "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"), owner);
    assert_eq!(psql_on(&new.port, src, &format!("SELECT has_table_privilege('{reader}', 'orders', 'SELECT')")), "t");
    drop_db(src);
}

//! Database-level properties through `ef-backup restore` against the real cluster: what
//! `--drop-existing` keeps, what `--create` takes from its options, the system databases a
//! restore refuses, and the client tools refused at start-up.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ef_backup_e2e::{drop_db, ef, env, files, gunzip, psql, psql_on, tempdir, Cluster};

/// Roles the tests give databases to (cluster-wide, so created once and never dropped).
fn roles() {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        for role in ["ef_props_owner", "ef_props_reader"] {
            psql("postgres", &format!("DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"));
        }
    });
}

/// A tablespace in a directory the server's OS user owns (the cluster runs as `postgres` when
/// the tests run as root, see scripts/testenv/pg-cluster.sh).
fn tablespace() -> &'static str {
    static MADE: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_props_ts";
    MADE.get_or_init(|| {
        let dir = env().state.join("e2e").join("props_tablespace");
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let st = std::process::Command::new("chown").arg("postgres:").arg(&dir).status().unwrap();
            assert!(st.success(), "chown postgres {}", dir.display());
        }
        if psql("postgres", &format!("SELECT count(*) FROM pg_tablespace WHERE spcname = '{NAME}'")) == "0" {
            psql("postgres", &format!("CREATE TABLESPACE {NAME} LOCATION '{}'", dir.display()));
        }
    });
    NAME
}

fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Backs `db` up with `ef-backup backup` and returns the file.
fn backup_of(db: &str, dir: &Path) -> PathBuf {
    let run = ef(db, dir, &[], &["backup", "--json"]);
    assert!(run.ok(), "backup of {db}: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    dir.join(v["data"]["backup_file"].as_str().unwrap())
}

/// Everything database-level about `db`, one line per property, ACL items sorted (the order
/// of equal ACLs depends on the order of the GRANTs).
fn properties(db: &str) -> String {
    psql(
        "postgres",
        &format!(
            "SELECT concat_ws(E'\\n', 'owner ' || pg_get_userbyid(d.datdba), 'encoding ' || pg_encoding_to_char(d.encoding), \
             'collate ' || d.datcollate, 'ctype ' || d.datctype, 'provider ' || d.datlocprovider::text, 'connlimit ' || d.datconnlimit, \
             'tablespace ' || t.spcname, 'template ' || d.datistemplate, 'allowconn ' || d.datallowconn, \
             'acl ' || (SELECT string_agg(a::text, ' ' ORDER BY a::text) FROM unnest(d.datacl) a), \
             'comment ' || shobj_description(d.oid, 'pg_database'), \
             (SELECT string_agg('setting ' || coalesce(r.rolname, '*') || ' ' || s.setconfig::text, E'\\n' ORDER BY r.rolname NULLS FIRST) \
              FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid)) \
             FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = '{db}'"
        ),
    )
}

/// Creates `db` owned by ef_props_owner, LATIN1 with the C locale, in tablespace `ts`, with a
/// connection limit of 7, CONNECT revoked from PUBLIC, a quoted search_path list and a per-role
/// setting; then runs `more` (from postgres).
fn database_with_properties(db: &str, ts: &str, more: &[String]) {
    psql(
        "postgres",
        &format!(
            "CREATE DATABASE {db} TEMPLATE template0 OWNER ef_props_owner ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' \
             TABLESPACE {ts} CONNECTION LIMIT 7"
        ),
    );
    let common = [
        format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"),
        format!("ALTER DATABASE {db} SET search_path = \"$user\", public, \"My Schema\""),
        format!("ALTER ROLE ef_props_reader IN DATABASE {db} SET work_mem = '3MB'"),
    ];
    for sql in common.iter().chain(more) {
        psql("postgres", sql);
    }
}

// Pins: `restore --drop-existing` gives the restored database the owner, ACL (CONNECT revoked
// from PUBLIC, granted to a role), database and per-role settings (a quoted search_path list,
// default_transaction_read_only, which would break the load if applied first), comment,
// encoding, collation, connection limit and tablespace of the database it replaces. Before,
// all of them were lost: the restored database was the connecting role's, UTF8, with the
// default ACL and no settings or comment.
#[test]
fn drop_existing_keeps_the_database_level_properties() {
    roles();
    let ts = tablespace();
    let target = "ef_props_target";
    drop_db(target);
    database_with_properties(
        target,
        ts,
        &[
            format!("GRANT CONNECT ON DATABASE {target} TO ef_props_reader"),
            format!("ALTER DATABASE {target} SET default_transaction_read_only = on"),
            format!("COMMENT ON DATABASE {target} IS 'the app''s database'"),
        ],
    );
    psql(target, "BEGIN READ WRITE; CREATE TABLE kept_rows (a int, s text); INSERT INTO kept_rows VALUES (1, 'café'), (2, 'naïve'); COMMIT");
    let before = properties(target);
    let oid_before = psql("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{target}'"));
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(target, &backups);
    // Something for the restore to undo, so the test sees the backup's contents came back.
    psql(target, "BEGIN READ WRITE; DELETE FROM kept_rows WHERE a = 2; COMMIT");

    let run = ef(target, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--drop-existing"]);
    assert!(run.ok(), "restore: {}", run.all());

    assert_ne!(psql("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{target}'")), oid_before, "the database was replaced");
    let after = properties(target);
    assert_eq!(after, before, "database-level properties kept");
    for expected in [
        "owner ef_props_owner",
        "encoding LATIN1",
        "collate C",
        "connlimit 7",
        &format!("tablespace {ts}"),
        "comment the app's database",
        "ef_props_reader=c/ef_props_owner",
        "setting ef_props_reader {work_mem=3MB}",
        "default_transaction_read_only=on",
    ] {
        assert!(after.contains(expected), "{expected:?} in {after}");
    }
    assert!(!after.contains(" =c/") && !after.contains("{=c/"), "CONNECT stays revoked from PUBLIC: {after}");
    assert_eq!(psql(target, "SHOW search_path"), "\"$user\", public, \"My Schema\"");
    assert_eq!(psql(target, "SHOW default_transaction_read_only"), "on");
    assert_eq!(psql(target, "SELECT string_agg(s, ',' ORDER BY a) FROM kept_rows"), "café,naïve");
    // By oid: the other tests' restores run meanwhile, with scratch databases of their own.
    assert_eq!(psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE oid = {oid_before}")), "0", "the replaced database was dropped");
    assert!(run.stdout.contains("owner: ef_props_owner (kept from the replaced database)"), "{}", run.stdout);
    assert!(run.stdout.contains("encoding: LATIN1 (kept from the replaced database)"), "{}", run.stdout);
    drop_db(target);
}

// Pins: `restore --create` takes owner, encoding, locale, tablespace and connection limit from
// its options and says where each came from; without them, the connecting role and
// template0's. Before, these options did not exist and the report named no property.
#[test]
fn create_takes_its_options_and_says_which_it_used() {
    roles();
    let ts = tablespace();
    let src = "ef_props_create_src";
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src}"));
    psql(src, "CREATE TABLE created_rows (a int); INSERT INTO created_rows VALUES (1), (2), (3)");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);

    let target = "ef_props_created";
    drop_db(target);
    let run = ef(
        src,
        &backups,
        &[],
        &[
            "restore",
            file.to_str().unwrap(),
            "--target-db",
            target,
            "--create",
            "--owner",
            "ef_props_owner",
            "--encoding",
            "LATIN1",
            "--locale",
            "C",
            "--tablespace",
            ts,
            "--connection-limit",
            "3",
        ],
    );
    assert!(run.ok(), "restore: {}", run.all());
    for line in [
        "owner: ef_props_owner (--owner)",
        "encoding: LATIN1 (--encoding)",
        "locale: LC_COLLATE C, LC_CTYPE C (--locale)",
        &format!("tablespace: {ts} (--tablespace)"),
        "connection limit: 3 (--connection-limit)",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in {}", run.stdout);
    }
    let props = properties(target);
    for expected in ["owner ef_props_owner", "encoding LATIN1", "collate C", "ctype C", "provider c", "connlimit 3", &format!("tablespace {ts}")] {
        assert!(props.contains(expected), "{expected:?} in {props}");
    }
    assert_eq!(psql(target, "SELECT count(*) FROM created_rows"), "3");
    drop_db(target);

    // Without options: the backup's own properties (this one's are the defaults of a new
    // database)...
    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    let template0 = properties("template0");
    let encoding = template0.lines().find_map(|l| l.strip_prefix("encoding ")).unwrap().to_string();
    for line in [
        format!("owner: {} (the backup's)", env().db_user),
        format!("encoding: {encoding} (the backup's)"),
        "connection limit: none (the backup's)".into(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in {}", run.stdout);
    }
    drop_db(target);

    // ... and from a backup without them (made by an earlier release): the connecting role,
    // template0's encoding and locale.
    let old_style = backups.join("old_style.sql.gz");
    strip_properties_line(&file, &old_style);
    let run = ef(src, &backups, &[], &["restore", old_style.to_str().unwrap(), "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    for line in [
        format!("owner: {} (the connecting role)", env().db_user),
        format!("encoding: {encoding} (template0's)"),
        "connection limit: none (default)".into(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in {}", run.stdout);
    }
    let props = properties(target);
    assert!(props.contains(&format!("owner {}", env().db_user)), "{props}");
    assert!(!props.contains("comment"), "template0's comment is not copied: {props}");
    assert!(props.contains("template false") && props.contains("allowconn true"), "{props}");
    drop_db(target);
    drop_db(src);
}

/// Writes `from` without its first line (ef-backup's properties line) to `to`: a backup as an
/// earlier release wrote it.
fn strip_properties_line(from: &Path, to: &Path) {
    let sql = gunzip(from);
    let at = sql.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert!(sql.starts_with(b"-- ef-backup database properties v1: "), "the backup starts with its properties line");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(to).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &sql[at..]).unwrap();
    gz.finish().unwrap();
}

// Pins issue 15 item 4: a database restored where it does not exist (`--create`, e.g. onto a
// new server) gets the owner, ACL, database and per-role settings, comment, encoding, locale,
// tablespace and connection limit it had when it was backed up: each backup's first line
// carries them. Before, a plain dump carried none and the restored database was the
// connecting role's, with template0's encoding, the default ACL and no settings.
#[test]
fn create_gives_the_new_database_the_backups_properties() {
    roles();
    let ts = tablespace();
    let src = "ef_props_travel_src";
    drop_db(src);
    database_with_properties(
        src,
        ts,
        &[
            format!("GRANT CONNECT, TEMPORARY ON DATABASE {src} TO ef_props_reader WITH GRANT OPTION"),
            format!("COMMENT ON DATABASE {src} IS 'travels with the backup'"),
        ],
    );
    psql(src, "CREATE TABLE travel_rows (a int, s text); INSERT INTO travel_rows VALUES (1, 'café')");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);
    let before = properties(src).replace(src, "DB");
    drop_db(src);

    let target = "ef_props_travel_new";
    drop_db(target);
    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert_eq!(properties(target).replace(target, "DB"), before, "the backup's database-level properties");
    for line in ["owner: ef_props_owner (the backup's)", "encoding: LATIN1 (the backup's)", "connection limit: 7 (the backup's)"] {
        assert!(run.stdout.contains(line), "{line:?} in {}", run.stdout);
    }
    assert!(run.stdout.contains(&format!("tablespace: {ts} (the backup's)")), "{}", run.stdout);
    assert_eq!(psql(target, "SHOW search_path"), "\"$user\", public, \"My Schema\"");
    assert_eq!(psql(target, "SELECT s FROM travel_rows"), "café");
    drop_db(target);
}

// Pins issue 15 item 4, on a server that lacks a role: the restore still succeeds, owned by the
// connecting role, and the report says which role is missing, where roles come from, and what
// of the backup's properties could not be given.
#[test]
fn create_says_which_roles_of_the_backup_are_missing() {
    let src = "ef_props_gone_src";
    let role = "ef_props_gone_role";
    drop_db(src);
    psql("postgres", &format!("DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"));
    psql("postgres", &format!("CREATE DATABASE {src} OWNER {role}"));
    psql("postgres", &format!("ALTER ROLE {role} IN DATABASE {src} SET work_mem = '5MB'"));
    psql("postgres", &format!("COMMENT ON DATABASE {src} IS 'kept'"));
    psql(src, "CREATE TABLE gone_rows (a int); INSERT INTO gone_rows VALUES (1)");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);
    drop_db(src);
    psql("postgres", &format!("DROP ROLE {role}"));

    let target = "ef_props_gone_new";
    drop_db(target);
    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert!(
        run.stdout.contains(&format!("the backup's owner \"{role}\" is not a role on this server")) && run.stdout.contains("globals backup"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("left out: SET work_mem FOR ROLE {role}")), "{}", run.stdout);
    let props = properties(target);
    assert!(props.contains(&format!("owner {}", env().db_user)) && props.contains("comment kept"), "{props}");
    assert_eq!(psql(target, "SELECT count(*) FROM gone_rows"), "1");
    drop_db(target);
}

// Pins the review of issue 15 item 4: a role that is not a superuser restores a backup onto a
// new database with what it may give. It may not make the backup's owner the owner (not a member
// of it): the database is its own, and the report says why; a per-role setting (needs
// CREATEROLE) and a superuser-only setting are refused by the server: the restore still
// succeeds and lists them, without their values. `--no-owner` keeps the connecting role as
// owner even where the backup's owner could be used. Before the fix the restore failed at
// CREATE DATABASE … OWNER, or after the whole load at the first refused setting.
#[test]
fn a_role_that_may_not_set_everything_restores_what_it_may() {
    roles();
    let restorer = "ef_props_restorer";
    let password = "ef-props-Restorer-3";
    psql(
        "postgres",
        &format!("DO $$ BEGIN CREATE ROLE {restorer} LOGIN CREATEDB PASSWORD '{password}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
    );
    let src = "ef_props_limited_src";
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src} OWNER ef_props_owner"));
    psql("postgres", &format!("ALTER ROLE ef_props_reader IN DATABASE {src} SET work_mem = '7MB'"));
    psql("postgres", &format!("ALTER DATABASE {src} SET log_min_duration_statement = 4321"));
    psql("postgres", &format!("COMMENT ON DATABASE {src} IS 'limited'"));
    // The table is the restorer's: the dump's own OWNER TO may then run as the restorer.
    psql(src, &format!("CREATE TABLE limited_rows (a int); INSERT INTO limited_rows VALUES (1), (2); ALTER TABLE limited_rows OWNER TO {restorer}"));
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);

    let target = "ef_props_limited_new";
    drop_db(target);
    let as_restorer = [("EF__DB_USER", restorer), ("EF__DB_PASSWORD", password)];
    let run = ef(src, &backups, &as_restorer, &["restore", file.to_str().unwrap(), "--target-db", target, "--create", "--no-owner"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert!(run.stdout.contains(&format!("owner: {restorer} (the connecting role (--no-owner))")), "{}", run.stdout);
    drop_db(target);

    let run = ef(src, &backups, &as_restorer, &["restore", file.to_str().unwrap(), "--target-db", target, "--create"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert!(run.stdout.contains("\"ef_props_owner\" exists, but") && run.stdout.contains("may not make it the owner"), "{}", run.stdout);
    let refused = run.stdout.lines().find(|l| l.trim_start().starts_with("refused:")).unwrap_or_else(|| panic!("no refused line: {}", run.stdout));
    assert!(refused.contains("SET \"work_mem\"") && refused.contains("SET \"log_min_duration_statement\""), "{refused}");
    assert!(!refused.contains("7MB") && !refused.contains("4321"), "values are not shown: {refused}");
    let props = properties(target);
    assert!(props.contains(&format!("owner {restorer}")) && props.contains("comment limited"), "{props}");
    assert_eq!(psql(target, "SELECT count(*) FROM limited_rows"), "2");
    drop_db(target);
    drop_db(src);
}

// Pins issue 15 item 5 (a restore onto a server without the roles): the backup lists the roles
// its objects name, and a restore that would need ones this server lacks stops before it
// creates anything, naming them and the two ways out. Before, it failed on the first
// `ALTER TABLE … OWNER TO` in the middle of the load.
#[test]
fn a_restore_names_the_roles_this_server_lacks_before_it_starts() {
    let (owner, reader) = ("ef_props_tmp_owner", "ef_props_tmp_reader");
    for role in [owner, reader] {
        psql("postgres", &format!("DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"));
    }
    let src = "ef_props_roles_src";
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src}"));
    psql(src, &format!("CREATE TABLE role_rows (a int); INSERT INTO role_rows VALUES (1); ALTER TABLE role_rows OWNER TO {owner}; GRANT SELECT ON role_rows TO {reader}"));
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);
    let first = String::from_utf8_lossy(&gunzip(&file)).lines().next().unwrap().to_string();
    assert!(first.contains(&format!("\"owners\":[\"{owner}\"]")) && first.contains(&format!("\"grantees\":[\"{reader}\"]")), "{first}");
    drop_db(src);
    for role in [owner, reader] {
        psql("postgres", &format!("DROP ROLE {role}"));
    }

    let target = "ef_props_roles_new";
    drop_db(target);
    let scratch = || psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_restore\\_%'");
    let scratch_before = scratch();
    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    for expected in
        [format!("as owners: \"{owner}\""), format!("in grants or policies: \"{reader}\""), "nothing was restored".into(), "--no-owner".into()]
    {
        assert!(run.stderr.contains(&expected), "{expected:?} in {}", run.stderr);
    }
    assert_eq!(psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'")), "0", "nothing created");
    assert_eq!(scratch(), scratch_before, "no scratch database was made");

    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create", "--no-owner", "--no-privileges"]);
    assert!(run.ok(), "restore: {}", run.all());
    assert_eq!(psql(target, "SELECT count(*) FROM role_rows"), "1");
    drop_db(target);
}

// Pins: template0, template1 and postgres are refused as targets without --allow-system-db.
// Before, a restore into template1 succeeded and every new database carried the backup's
// tables.
#[test]
fn system_databases_are_refused_without_the_flag() {
    let src = "ef_props_system_src";
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src}"));
    psql(src, "CREATE TABLE must_not_spread (a int)");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let file = backup_of(src, &backups);
    for db in ["template1", "postgres", "template0"] {
        let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", db, "--drop-existing"]);
        assert_eq!(run.code, Some(1), "{db}: {}", run.all());
        assert!(run.stderr.contains(&format!("refusing to restore into {db}: it is a system database")), "{db}: {}", run.stderr);
        assert!(run.stderr.contains("pass --allow-system-db"), "{}", run.stderr);
    }
    for db in ["template1", "postgres"] {
        assert_eq!(psql(db, "SELECT count(*) FROM pg_class WHERE relname = 'must_not_spread'"), "0", "{db} untouched");
    }
    drop_db(src);
}

// Pins: with --allow-system-db, `postgres` itself can be replaced. A restore keeps one session
// on `postgres` for its catalog queries (instead of a login per query); had it kept that session
// into the swap, PostgreSQL would refuse to rename the database ("being accessed by other
// users"). On a server of the test's own: replacing the shared server's `postgres` would cut
// every other test's sessions.
#[test]
fn postgres_itself_can_be_replaced_with_the_flag() {
    let dir = tempdir();
    let own = Cluster::start(&dir.path().join("pg"));
    let on_own = [("EF__DB_PORT", own.port.as_str())];
    psql_on(&own.port, "postgres", "CREATE TABLE kept_before (a int); INSERT INTO kept_before VALUES (1), (2)");
    let backups = dir.path().join("backups");
    let run = ef("postgres", &backups, &on_own, &["backup", "--json"]);
    assert!(run.ok(), "backup: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let file = backups.join(v["data"]["backup_file"].as_str().unwrap());
    psql_on(&own.port, "postgres", "DROP TABLE kept_before; CREATE TABLE added_after (a int)");

    let run =
        ef("postgres", &backups, &on_own, &["restore", file.to_str().unwrap(), "--target-db", "postgres", "--drop-existing", "--allow-system-db"]);
    assert!(run.ok(), "restore into postgres: {}", run.all());
    assert_eq!(psql_on(&own.port, "postgres", "SELECT count(*) FROM kept_before"), "2");
    assert_eq!(psql_on(&own.port, "postgres", "SELECT count(*) FROM pg_class WHERE relname = 'added_after'"), "0");
    let leftovers = "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_%'";
    assert_eq!(psql_on(&own.port, "template1", leftovers), "0", "no scratch or replaced database is left");
}

// Pins: client tools whose psql has no \restrict are refused at tool selection, for every
// command, naming the version found and the minimum of its major. Before, any psql of the
// server's major was used.
#[test]
fn a_psql_without_restrict_is_refused_at_start_up() {
    let dir = tempdir();
    let bin = dir.path().join("oldbin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = env().pg_bin.clone();
    std::os::unix::fs::symlink(real.join("pg_dump"), bin.join("pg_dump")).unwrap();
    let major = {
        let out = std::process::Command::new(real.join("psql")).arg("--version").output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(2).unwrap().split('.').next().unwrap().parse::<u32>().unwrap()
    };
    let minimum = match major {
        13 => "13.22",
        14 => "14.19",
        15 => "15.14",
        16 => "16.10",
        17 => "17.6",
        _ => return, // every psql from 18 has \restrict: nothing to refuse
    };
    // A psql of the server's major, one release before \restrict; it still works, so only the
    // version check can stop it.
    let (old_major, old_minor) = minimum.split_once('.').unwrap();
    let old = format!("{old_major}.{}", old_minor.parse::<u32>().unwrap() - 1);
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'psql (PostgreSQL) {old}'; exit 0; fi\nexec {} \"$@\"\n",
        real.join("psql").display()
    );
    std::fs::write(bin.join("psql"), script).unwrap();
    std::fs::set_permissions(bin.join("psql"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let some_file = dir.path().join("some.sql.gz");
    std::fs::write(&some_file, b"never read").unwrap();
    for args in [&["backup"][..], &["restore", some_file.to_str().unwrap(), "--target-db", "ef_props_never", "--create"]] {
        let run = ef("postgres", &backups, &[("EF__PG_BIN", bin.to_str().unwrap())], args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.all());
        assert!(run.stderr.contains(&format!("is version {old}, which has no restricted mode")), "{}", run.stderr);
        assert!(run.stderr.contains(&format!("must be {minimum} or later")), "{}", run.stderr);
        assert!(run.stderr.contains("CVE-2025-8714"), "{}", run.stderr);
    }
    assert!(files(&backups).is_empty(), "no backup written");
}

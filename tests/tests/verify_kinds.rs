//! `verify` sees every kind of thing a restore brings back (issue 13, items 10–12): tables, large
//! objects, sequences, the schema and materialized views' populated state, one report line per
//! kind; and `--against-dump` reads COPY headers whose names need quoting.

use std::path::Path;

use ef_backup_e2e::{drop_db, ef, psql, tempdir, Run};

/// Backs up `db` into `dir` and returns the backup's path.
fn backup(db: &str, dir: &Path) -> String {
    let run = ef(db, dir, &[], &["backup", "--json"]);
    assert!(run.ok(), "backup failed: {}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    dir.join(v["data"]["backup_file"].as_str().unwrap()).to_str().unwrap().to_string()
}

/// `verify --json` of `backup` against `db`: the run and its report.
fn verify_json(db: &str, dir: &Path, backup: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["verify", backup, "--json"];
    args.extend_from_slice(extra);
    let run = ef(db, dir, &[], &args);
    let v = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    (run, v)
}

/// (kind, result) of every kind in a JSON report.
fn results(v: &serde_json::Value) -> Vec<(String, String)> {
    v["kinds"]
        .as_array()
        .unwrap_or_else(|| panic!("no kinds in {v}"))
        .iter()
        .map(|k| (k["kind"].as_str().unwrap().to_string(), k["result"].as_str().unwrap().to_string()))
        .collect()
}

fn mismatched(v: &serde_json::Value) -> Vec<String> {
    results(v).into_iter().filter(|(_, r)| r == "MISMATCH").map(|(k, _)| k).collect()
}

fn kind<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["kinds"].as_array().unwrap().iter().find(|k| k["kind"] == name).unwrap_or_else(|| panic!("no kind {name} in {v}"))
}

/// Held by each test: `no_scratch_left` would see the other test's scratch database.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn no_scratch_left() {
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_verify\\_%'"), "0");
}

const SEED: &str = "
    CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric);
    INSERT INTO items (name, price) SELECT 'item ' || i, i * 1.5 FROM generate_series(1, 100) i;
    CREATE TABLE docs (id int PRIMARY KEY, body oid NOT NULL);
    INSERT INTO docs SELECT i, lo_from_bytea(0, convert_to(repeat('document ' || i, 1000 * i), 'UTF8')) FROM generate_series(1, 3) i;
    CREATE SEQUENCE counter START 10;
    SELECT nextval('counter'), nextval('counter');
    CREATE SEQUENCE untouched;
    CREATE VIEW cheap AS SELECT * FROM items WHERE price < 10;
    CREATE FUNCTION add_tax(numeric) RETURNS numeric LANGUAGE sql AS 'SELECT $1 * 1.2';
    CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(price) AS total FROM items;
    CREATE MATERIALIZED VIEW later AS SELECT max(id) AS top FROM items WITH NO DATA;
";

/// On main, deleting 2 of 3 large objects, moving a sequence and adding a view or a function
/// left `verify` saying OK (exit 0), an unpopulated materialized view made it fail with an SQL
/// error, and the report had no per-kind lines. Each change below must now exit 1 and name
/// exactly its kind; nothing changed must exit 0 with every kind ok.
#[test]
fn verify_names_each_kind_of_difference() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = "ef_e2e_verify_kinds";
    let copy = "ef_e2e_verify_kinds_changed";
    drop_db(base);
    drop_db(copy);
    psql("postgres", &format!("CREATE DATABASE {base}"));
    psql(base, SEED);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let path = backup(base, &backups);

    let (run, v) = verify_json(base, &backups, &path, &[]);
    assert!(run.ok(), "{}", run.all());
    let all_ok: Vec<(String, String)> =
        ["tables", "large_objects", "sequences", "schema", "matview_state"].iter().map(|k| (k.to_string(), "ok".to_string())).collect();
    assert_eq!(results(&v), all_ok, "{v}");
    assert_eq!(kind(&v, "large_objects")["restored"], 3);
    assert_eq!(kind(&v, "sequences")["restored"], 3, "counter, untouched, items_id_seq");
    assert_eq!(kind(&v, "matview_state")["restored"], 2);
    no_scratch_left();

    // The human report: one line per kind.
    let run = ef(base, &backups, &[], &["verify", &path]);
    assert!(run.ok() && run.stdout.contains("verify: OK"), "{}", run.all());
    for label in ["tables", "large objects", "sequences", "schema", "matview state"] {
        assert!(run.stdout.lines().any(|l| l.starts_with(label) && l.contains(" ok ")), "no ok line for {label}: {}", run.stdout);
    }

    let changes: &[(&str, &str)] = &[
        ("SELECT lo_unlink(body) FROM docs WHERE id > 1", "large_objects"),
        ("SELECT lo_put(body, 0, '\\x44'::bytea) FROM docs WHERE id = 2", "large_objects"),
        ("SELECT setval('counter', 500)", "sequences"),
        ("SELECT setval('untouched', 1, true)", "sequences"),
        ("CREATE VIEW extra_view AS SELECT id FROM items", "schema"),
        ("CREATE FUNCTION extra_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'", "schema"),
        ("CREATE INDEX items_name ON items (name)", "schema"),
        ("COMMENT ON TABLE items IS 'changed'", "schema"),
        ("GRANT SELECT ON items TO PUBLIC", "schema"),
        ("UPDATE items SET name = 'changed' WHERE id = 42", "tables"),
        ("REFRESH MATERIALIZED VIEW totals WITH NO DATA", "matview_state"),
        ("REFRESH MATERIALIZED VIEW later", "matview_state"),
    ];
    for (change, want) in changes {
        drop_db(copy);
        psql("postgres", &format!("CREATE DATABASE {copy} TEMPLATE {base}"));
        psql(copy, change);
        let (run, v) = verify_json(copy, &backups, &path, &[]);
        assert_eq!(run.code, Some(1), "{change}: {}", run.all());
        assert_eq!(v["ok"], false);
        assert_eq!(mismatched(&v), [*want], "{change}: {v}");
        assert!(!kind(&v, want)["differences"].as_array().unwrap().is_empty(), "{change}: {v}");
    }

    // What differs is shown: the first lines of the schema difference, the sequence's values.
    let run = ef(copy, &backups, &[], &["verify", &path]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stdout.lines().any(|l| l.starts_with("matview state") && l.contains("MISMATCH")), "{}", run.stdout);
    assert!(run.stdout.contains("public.later: backup not populated, reference populated"), "{}", run.stdout);
    assert!(run.stdout.contains("verify: FAILED — MISMATCH in matview state against live database"), "{}", run.stdout);
    drop_db(copy);
    psql("postgres", &format!("CREATE DATABASE {copy} TEMPLATE {base}"));
    psql(copy, "CREATE VIEW extra_view AS SELECT id FROM items; SELECT setval('counter', 500)");
    let (_, v) = verify_json(copy, &backups, &path, &[]);
    assert_eq!(mismatched(&v), ["sequences", "schema"]);
    let schema = kind(&v, "schema")["differences"].to_string();
    assert!(schema.contains("only in the reference: CREATE VIEW public.extra_view AS"), "{schema}");
    let sequences = kind(&v, "sequences")["differences"].to_string();
    assert!(sequences.contains("public.counter: backup last_value 11 is_called true, reference last_value 500 is_called true"), "{sequences}");
    no_scratch_left();
    drop_db(copy);
    drop_db(base);
}

/// On main, `COPY "my schema"."my table" (...) FROM stdin;` was read as the table `"my`: a false
/// MISMATCH (exit 1) from `verify --against-dump` for any name that needs quoting. It must pass,
/// and also compare the dump's setval calls and large objects.
#[test]
fn against_dump_reads_quoted_names() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = "ef_e2e_verify_quoted";
    drop_db(db);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(
        db,
        r#"
        CREATE SCHEMA "My ""odd"" schema";
        CREATE TABLE "My ""odd"" schema"."my table" (id serial PRIMARY KEY, "b c" text, "Upper" int);
        INSERT INTO "My ""odd"" schema"."my table" ("b c", "Upper") SELECT 'row ' || i, i FROM generate_series(1, 3) i;
        CREATE TABLE public."Mixed Case" (x int);
        INSERT INTO public."Mixed Case" VALUES (1), (2);
        CREATE TABLE "My ""odd"" schema"."it's" (v text);
        INSERT INTO "My ""odd"" schema"."it's" VALUES ('a');
        CREATE SEQUENCE "My ""odd"" schema"."Seq 1" START 7;
        SELECT nextval('"My ""odd"" schema"."Seq 1"');
        SELECT lo_from_bytea(0, 'one'), lo_from_bytea(0, 'two');
        "#,
    );
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let path = backup(db, &backups);

    let (run, v) = verify_json(db, &backups, &path, &["--against-dump"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        results(&v),
        [("tables", "ok"), ("large_objects", "ok"), ("sequences", "ok"), ("schema", "not compared"), ("matview_state", "not compared")]
            .map(|(k, r)| (k.to_string(), r.to_string())),
        "{v}"
    );
    let tables: Vec<(String, u64)> =
        v["tables"].as_array().unwrap().iter().map(|t| (t["table"].as_str().unwrap().to_string(), t["reference_rows"].as_u64().unwrap())).collect();
    assert_eq!(
        tables,
        [
            ("\"My \"\"odd\"\" schema\".\"it's\"".to_string(), 1),
            ("\"My \"\"odd\"\" schema\".\"my table\"".to_string(), 3),
            ("public.\"Mixed Case\"".to_string(), 2)
        ]
    );
    assert_eq!(kind(&v, "large_objects")["reference"], 2);
    assert_eq!(kind(&v, "sequences")["reference"], 2, "\"Seq 1\" and my table's id sequence");

    // The human report says plainly what was not compared.
    let run = ef(db, &backups, &[], &["verify", &path, "--against-dump"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.lines().any(|l| l.starts_with("schema") && l.contains("not compared against the dump")), "{}", run.stdout);
    assert!(run.stdout.contains("match the dump's COPY blocks"), "{}", run.stdout);

    // And against the live database the same names meet the catalog's.
    let (run, v) = verify_json(db, &backups, &path, &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(mismatched(&v).is_empty(), "{v}");
    no_scratch_left();
    drop_db(db);
}

//! A parallel restore must bring back exactly what a serial one does. The database below holds
//! what a splitter of plain dumps gets wrong: partitions (indexes attached to a parent), a table
//! big enough to be cut into row batches, quoted names, triggers (which must not fire during the
//! load), materialized views (populated and not), large objects, sequences, a rule with several
//! actions, an index with CLUSTER ON, comments on indexes, foreign keys, NOT VALID checks, and
//! function bodies holding TOC-like comments, `;`, quotes and `COPY … FROM stdin;` text.

use std::sync::OnceLock;

use ef_backup_e2e::{compare_dbs, drop_db, ef, ef_command, gunzip, psql, tempdir, Run};

const SEED: &str = r#"
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."my ""table""" (id int PRIMARY KEY, "a b" text);
INSERT INTO "Odd Schema"."my ""table""" SELECT g, 'row ' || g FROM generate_series(1, 5000) g;

CREATE TABLE public.big (id bigint PRIMARY KEY, h text, j jsonb);
INSERT INTO public.big SELECT g, md5(g::text) || md5((g * 7)::text), jsonb_build_object('g', g, 'h', md5(g::text))
  FROM generate_series(1, 150000) g;
CREATE INDEX big_h ON public.big (h);
COMMENT ON INDEX public.big_h IS 'comment; -- Name: x; Type: INDEX; Schema: public; Owner: y';

CREATE TABLE public.meas (id int, at date, v numeric, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.meas_2024 PARTITION OF public.meas FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.meas_2025 PARTITION OF public.meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX meas_v ON public.meas (v);
INSERT INTO public.meas SELECT g, date '2024-01-01' + (g % 700), g * 1.5 FROM generate_series(1, 30000) g;

CREATE TABLE public.audit (id serial PRIMARY KEY, msg text);
CREATE FUNCTION public.log_it() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
--
-- Name: fake; Type: TABLE; Schema: public; Owner: nobody
--
  INSERT INTO public.audit (msg) VALUES ('x; y '' -- z $$ COPY t FROM stdin;');
  RETURN NEW;
END $body$;
CREATE TRIGGER meas_log AFTER INSERT ON public.meas_2024 FOR EACH ROW EXECUTE FUNCTION public.log_it();
CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$ SELECT E'COPY x FROM stdin;\n\\.\n' || ';' $$;

CREATE MATERIALIZED VIEW public.mv AS SELECT at, count(*) AS c FROM public.meas GROUP BY at;
CREATE UNIQUE INDEX mv_at ON public.mv (at);
CREATE MATERIALIZED VIEW public.mv_empty AS SELECT 1 AS x WITH NO DATA;

SELECT lo_from_bytea(0, convert_to(repeat('large object ' || g, 1000), 'UTF8')) FROM generate_series(1, 5) g;

CREATE TABLE public.parent (id int PRIMARY KEY);
CREATE TABLE public.child (id int PRIMARY KEY, p int REFERENCES public.parent (id));
INSERT INTO public.parent SELECT generate_series(1, 100);
INSERT INTO public.child SELECT g, g % 100 + 1 FROM generate_series(1, 1000) g;
CREATE INDEX child_p ON public.child (p);
ALTER TABLE public.child CLUSTER ON child_p;
ALTER TABLE public.child ADD CONSTRAINT child_chk CHECK (id > 0) NOT VALID;
ALTER TABLE public.parent ADD CONSTRAINT parent_u UNIQUE (id);
COMMENT ON CONSTRAINT parent_u ON public.parent IS 'unique; really';

CREATE TABLE public.r1 (x int);
CREATE TABLE public.r2 (x int);
CREATE RULE r_ins AS ON INSERT TO public.r1 DO ALSO (INSERT INTO public.r2 VALUES (NEW.x); INSERT INTO public.r2 VALUES (NEW.x + 1));
INSERT INTO public.r1 VALUES (1), (10);

CREATE SEQUENCE public.s;
SELECT setval('public.s', 42);
CREATE SEQUENCE public.s_uncalled;
SELECT setval('public.s_uncalled', 7, false);
CREATE TABLE public.g (id int GENERATED ALWAYS AS IDENTITY, v int, w int GENERATED ALWAYS AS (v * 2) STORED);
INSERT INTO public.g (v) SELECT generate_series(1, 10);
"#;

fn tricky_db() -> &'static str {
    static SEEDED: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_e2e_tricky";
    SEEDED.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(NAME, SEED);
    });
    NAME
}

#[test]
fn parallel_restore_equals_serial_restore_table_by_table() {
    let src = tricky_db();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let name = backup(src, &backups);

    let mut targets = Vec::new();
    for jobs in ["1", "2", "4"] {
        let target = format!("ef_e2e_tricky_j{jobs}");
        drop_db(&target);
        let run = ef(src, &backups, &[], &["restore", &name, "--target-db", &target, "--create", "--jobs", jobs]);
        assert!(run.ok(), "--jobs {jobs}: {}", run.all());
        if jobs != "1" {
            // The parallel paths really ran: the big table went in several batches, and the
            // index and key builds were handed out.
            let batches = stat(&run.stdout, "COPY batches");
            let builds = stat(&run.stdout, "parallel builds");
            assert!(batches >= 5, "--jobs {jobs}: {}", run.stdout);
            assert!(builds >= 8, "--jobs {jobs}: {}", run.stdout);
        }
        let (same, report) = compare_dbs(src, &target);
        assert!(same, "--jobs {jobs} differs from the source: {report}");
        // Triggers did not fire during the load; the audit table is as it was (empty).
        assert_eq!(psql(&target, "SELECT count(*) FROM public.audit"), psql(src, "SELECT count(*) FROM public.audit"));
        assert_eq!(psql(&target, "SELECT relispopulated FROM pg_class WHERE relname = 'mv_empty'"), "f");
        assert_eq!(psql(&target, "SELECT relispopulated FROM pg_class WHERE relname = 'mv'"), "t");
        assert_eq!(psql(&target, "SELECT i.indisclustered FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'child_p'"), "t");
        assert_eq!(
            psql(&target, "SELECT obj_description('public.big_h'::regclass, 'pg_class')"),
            "comment; -- Name: x; Type: INDEX; Schema: public; Owner: y"
        );
        targets.push(target);
    }
    let (same, report) = compare_dbs(&targets[0], &targets[2]);
    assert!(same, "serial and parallel restores differ: {report}");
    for t in targets {
        drop_db(&t);
    }
}

/// SQL of a first table that holds the loader back while the read-ahead scans on, however busy
/// the machine. The loader hands a table's rows out batch by batch and only waits when every
/// session is busy and the queue is full (16 MiB): this table is bigger than that (22 MB) and
/// its check sleeps 1 ms on every 100th row (3 s in all), so the loader is held there for a
/// second or so (CI once caught the loader first when the whole table fitted in the queue).
fn holding_table(table: &str) -> String {
    format!(
        "CREATE FUNCTION {table}_slow(n int) RETURNS boolean LANGUAGE sql AS $$ SELECT n % 100 <> 0 OR pg_catalog.pg_sleep(0.001) IS NOT NULL $$;
         CREATE TABLE {table} (id int CHECK ({table}_slow(id)), t text);
         INSERT INTO {table} SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 300000) g;\n"
    )
}

/// A database whose first table takes a while to load ([`holding_table`]), so that the
/// read-ahead reaches the next tables first: their keys and indexes, a foreign key between
/// them, a sequence and a large object after the rows.
fn ahead_seed() -> String {
    format!("CREATE SCHEMA a;\n{}{AHEAD_REST}", holding_table("a.first"))
}

/// [`ahead_seed`] after its first table.
const AHEAD_REST: &str = r#"
CREATE SCHEMA b;
CREATE TABLE b.second (id int PRIMARY KEY, v text);
INSERT INTO b.second SELECT g, md5((g * 3)::text) FROM generate_series(1, 100000) g;
CREATE INDEX second_v ON b.second (v);
ALTER TABLE b.second ADD CONSTRAINT second_v_u UNIQUE (v);
COMMENT ON INDEX b.second_v IS 'on the read-ahead''s table';
CREATE TABLE b.third (id int PRIMARY KEY, s int REFERENCES b.second (id));
INSERT INTO b.third SELECT g, g FROM generate_series(1, 1000) g;
CREATE TABLE b.audit (n int);
CREATE TABLE b.t2 (x int);
INSERT INTO b.t2 SELECT generate_series(1, 50);
CREATE FUNCTION b.audit_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO b.audit VALUES (NEW.x); RETURN NEW; END $$;
CREATE SEQUENCE b.seq;
SELECT setval('b.seq', 77);
SELECT lo_from_bytea(0, convert_to('large object', 'UTF8'));
"#;

/// The read-ahead loads later tables on a session of its own while the first one loads, their
/// key and index builds wait for their rows, and the result equals a serial restore.
#[test]
fn later_tables_are_read_ahead_and_their_builds_wait_for_their_rows() {
    let src = "ef_e2e_ahead";
    let Seeded { dir, backups, name, sql } = seeded_backup(src, &ahead_seed());

    for jobs in ["2", "1"] {
        let target = format!("ef_e2e_ahead_j{jobs}");
        drop_db(&target);
        let debug = [("EF__LOG", "ef_backup_core=debug,info")];
        let run = ef(src, &backups, &debug, &["restore", &name, "--target-db", &target, "--create", "--jobs", jobs]);
        assert!(run.ok(), "--jobs {jobs}: {}", run.all());
        let ahead = stat(&run.stdout, "tables read ahead");
        if jobs == "1" {
            assert_eq!(ahead, 0, "{}", run.stdout);
        } else {
            // b.second (and the later tables) went in on a session of their own, and the
            // builds on each table read ahead started only once all of its rows were in.
            assert!(ahead >= 2, "{}", run.stdout);
            let at = |line: &str| run.stderr.find(line).unwrap_or_else(|| panic!("{line:?} not logged: {}", run.stderr));
            for (table, builds_expected) in [("b.second", 3), ("b.third", 1)] {
                let loading = at(&format!("read-ahead: loading {table} "));
                let loaded = at(&format!("read-ahead: {table} loaded"));
                assert!(loading < loaded, "{}", run.stderr);
                let builds: Vec<usize> = run.stderr.match_indices(&format!("load: a build on {table} starts")).map(|(i, _)| i).collect();
                assert_eq!(builds.len(), builds_expected, "{table}: {}", run.stderr);
                assert!(builds.iter().all(|b| *b > loaded), "{table}: {}", run.stderr);
            }
        }
        let (same, report) = compare_dbs(src, &target);
        assert!(same, "--jobs {jobs} differs from the source: {report}");
        assert_eq!(psql(&target, "SELECT obj_description('b.second_v'::regclass, 'pg_class')"), "on the read-ahead's table");
        drop_db(&target);
    }

    // Cut in the middle of the read-ahead's table: the restore fails as damaged (it neither
    // hangs nor reports the read-ahead's half-loaded table as the cause), and leaves nothing.
    let at = find(&sql, b"COPY b.second ") + 1_000_000;
    let cut = at + sql[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let truncated = dir.path().join("cut.sql.gz");
    write_gz(&truncated, &sql[..cut]);
    let target = "ef_e2e_ahead_cut";
    drop_db(target);
    let child = ef_command(src, &backups, &[])
        .args(["restore", truncated.to_str().unwrap(), "--target-db", target, "--create", "--jobs", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("footer is missing"), "{}", run.stderr);
    assert_nothing_left(target, pid);
    drop_db(src);
}

/// pg_dump writes nothing but table rows between the first table's rows and the last's. A
/// file that does (here a trigger created between them) must restore as psql would run it:
/// the read-ahead stops there, so no row after the trigger goes in before the trigger exists.
#[test]
fn the_read_ahead_stops_at_anything_but_table_rows() {
    let src = "ef_e2e_ahead_stop";
    let Seeded { dir, backups, sql, .. } = seeded_backup(src, &ahead_seed());
    let file = dir.path().join("crafted.sql.gz");
    let trigger = b"\nCREATE TRIGGER t2_audit AFTER INSERT ON b.t2 FOR EACH ROW EXECUTE FUNCTION b.audit_it();\n";
    write_gz(&file, &splice(&sql, rows_end(&sql, b"COPY a.first "), trigger));

    for jobs in ["1", "2"] {
        let target = format!("ef_e2e_ahead_stop_j{jobs}");
        drop_db(&target);
        let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", &target, "--create", "--jobs", jobs]);
        assert!(run.ok(), "--jobs {jobs}: {}", run.all());
        // Every row of b.t2 went in after the trigger, as in the file.
        assert_eq!(psql(&target, "SELECT count(*) FROM b.audit"), "50", "--jobs {jobs}: {}", run.stdout);
        drop_db(&target);
    }
    drop_db(src);
}

/// What follows the tables' rows runs after all of them are in, whatever its TOC comment
/// claims: a statement labelled as a sequence value (which may run while tables still load)
/// that reads a table the read-ahead is still loading must see all of its rows, as it would
/// from psql.
#[test]
fn a_statement_after_the_rows_waits_for_them_whatever_its_toc_comment_says() {
    let src = "ef_e2e_ahead_label";
    // The second table checks every row slowly (a sleep each), so that it is still loading when
    // the loader gets to the statement after it; the first holds the loader back, so that the
    // read-ahead gets to the second one first.
    let seed = holding_table("a_first")
        + "CREATE INDEX a_first_id ON a_first (id);
         CREATE FUNCTION slowly(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.0001); RETURN true; END $$;
         CREATE TABLE b_second (id int CHECK (slowly(id)), t text);
         INSERT INTO b_second SELECT g, md5(g::text) FROM generate_series(1, 2000) g;";
    let Seeded { dir, backups, sql, .. } = seeded_backup(src, &seed);
    let labelled = b"\n--\n-- Name: counted; Type: SEQUENCE SET; Schema: public; Owner: -\n--\n\nCREATE TABLE public.counted AS SELECT count(*) AS n FROM public.b_second;\n";
    let file = dir.path().join("labelled.sql.gz");
    write_gz(&file, &splice(&sql, rows_end(&sql, b"COPY public.b_second "), labelled));

    let target = "ef_e2e_ahead_label_j2";
    drop_db(target);
    let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", target, "--create", "--jobs", "2"]);
    assert!(run.ok(), "{}", run.all());
    assert!(stat(&run.stdout, "tables read ahead") >= 1, "the big table was not read ahead: {}", run.stdout);
    assert_eq!(psql(target, "SELECT n FROM public.counted"), "2000", "{}", run.stdout);
    drop_db(target);
    drop_db(src);
}

/// A file the restore refuses before the first table's rows (a psql meta-command in its
/// pre-data), with more stored bytes after the second table's COPY than the read-ahead may lag
/// behind: the refusal ends the restore; the read-ahead, waiting for the data to start, must
/// not hold the restore's reading of the rest (the gzip check) back forever.
#[test]
fn a_file_refused_before_its_rows_does_not_hang_the_read_ahead() {
    let src = "ef_e2e_ahead_refused";
    // md5 text compresses about 2:1: over 40 MiB of gzip after b_big's COPY.
    let seed = "CREATE TABLE a_small (x int); INSERT INTO a_small VALUES (1);
         CREATE TABLE b_big (a text, b text, c text);
         INSERT INTO b_big SELECT md5(g::text), md5((g + 1)::text), md5((g + 2)::text) FROM generate_series(1, 1200000) g;";
    let Seeded { dir, backups, sql, .. } = seeded_backup(src, seed);
    let file = dir.path().join("refused.sql.gz");
    write_gz(&file, &splice(&sql, find(&sql, b"CREATE TABLE public.a_small"), b"\\connect other\n"));
    assert!(std::fs::metadata(&file).unwrap().len() > 36 << 20, "too small to test the window");

    let target = "ef_e2e_ahead_refused_j2";
    drop_db(target);
    let mut child = ef_command(src, &backups, &[])
        .args(["restore", file.to_str().unwrap(), "--target-db", target, "--create", "--jobs", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the restore of a refused file hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = child.id();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("psql meta-command \\connect"), "{}", run.stderr);
    assert_nothing_left(target, pid);
    drop_db(src);
}

/// Neither the target nor the scratch database of the restore run by process `pid` (named
/// after it; other tests' restores may be under way) is there.
fn assert_nothing_left(target: &str, pid: u32) {
    let sql = format!("SELECT count(*) FROM pg_database WHERE datname = '{target}' OR datname LIKE 'ef\\_restore\\_{pid}\\_%'");
    assert_eq!(psql("postgres", &sql), "0", "a database was left behind");
}

/// A database seeded afresh and backed up with the real binary.
struct Seeded {
    dir: tempfile::TempDir,
    backups: std::path::PathBuf,
    name: String,
    /// The backup's SQL, for crafting files from.
    sql: Vec<u8>,
}

fn seeded_backup(src: &str, seed: &str) -> Seeded {
    drop_db(src);
    psql("postgres", &format!("CREATE DATABASE {src}"));
    psql(src, seed);
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let name = backup(src, &backups);
    let sql = gunzip(&backups.join(&name));
    Seeded { dir, backups, name, sql }
}

/// Where the COPY rows after `copy` end (after their `\.` line).
fn rows_end(sql: &[u8], copy: &[u8]) -> usize {
    let at = find(sql, copy);
    at + find(&sql[at..], b"\n\\.\n") + 4
}

/// `sql` with `insert` put in at `at`.
fn splice(sql: &[u8], at: usize, insert: &[u8]) -> Vec<u8> {
    [&sql[..at], insert, &sql[at..]].concat()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

fn write_gz(path: &std::path::Path, data: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, data).unwrap();
    enc.finish().unwrap();
}

/// `--no-owner` / `--no-privileges`: restoring as a role that cannot take ownership works, and
/// the grants are left out.
#[test]
fn no_owner_and_no_privileges_leave_those_statements_out() {
    let src = "ef_e2e_owned";
    drop_db(src);
    psql("postgres", "DO $$ BEGIN CREATE ROLE ef_e2e_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    psql("postgres", "DO $$ BEGIN CREATE ROLE ef_e2e_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
    psql("postgres", &format!("CREATE DATABASE {src}"));
    psql(src, "CREATE TABLE t (x int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO ef_e2e_owner; GRANT SELECT ON t TO ef_e2e_reader");
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let name = backup(src, &backups);

    let target = "ef_e2e_owned_plain";
    drop_db(target);
    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", target, "--create"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(psql(target, "SELECT tableowner FROM pg_tables WHERE tablename = 't'"), "ef_e2e_owner");
    assert_eq!(psql(target, "SELECT has_table_privilege('ef_e2e_reader', 't', 'SELECT')"), "t");
    drop_db(target);

    let run = ef(src, &backups, &[], &["restore", &name, "--target-db", target, "--create", "--no-owner", "--no-privileges"]);
    assert!(run.ok(), "{}", run.all());
    let me = psql("postgres", "SELECT current_user");
    assert_eq!(psql(target, "SELECT tableowner FROM pg_tables WHERE tablename = 't'"), me);
    assert_eq!(psql(target, "SELECT has_table_privilege('ef_e2e_reader', 't', 'SELECT')"), "f");
    assert_eq!(psql(target, "SELECT x FROM t"), "1");
    drop_db(target);

    // A dump made with --use-set-session-authorization switches to each owner: --no-owner
    // leaves those switches out as pg_dump's own --no-owner does.
    let sql = "--\n-- PostgreSQL database dump\n--\n\nSET client_encoding = 'UTF8';\nGRANT CREATE ON SCHEMA public TO ef_e2e_owner;\nSET SESSION AUTHORIZATION 'ef_e2e_owner';\n\
               CREATE TABLE public.s (x int);\nRESET SESSION AUTHORIZATION;\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
    let file = dir.path().join("ssa.sql.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&file).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, sql.as_bytes()).unwrap();
    enc.finish().unwrap();
    for (flags, owner) in [(&[][..], "ef_e2e_owner".to_string()), (&["--no-owner"][..], me.clone())] {
        let mut args = vec!["restore", file.to_str().unwrap(), "--target-db", target, "--create"];
        args.extend_from_slice(flags);
        let run = ef(src, &backups, &[], &args);
        assert!(run.ok(), "{flags:?}: {}", run.all());
        assert_eq!(psql(target, "SELECT tableowner FROM pg_tables WHERE tablename = 's'"), owner, "{flags:?}");
        drop_db(target);
    }
    drop_db(src);
}

/// Backs `db` up into `dir` with the real binary; the new backup's file name.
fn backup(db: &str, dir: &std::path::Path) -> String {
    let run = ef(db, dir, &[], &["backup", "--json"]);
    assert!(run.ok(), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    v["data"]["backup_file"].as_str().unwrap().to_string()
}

/// A number from the restore's summary line, e.g. "12 COPY batches".
fn stat(stdout: &str, what: &str) -> u64 {
    let at = stdout.find(what).unwrap_or_else(|| panic!("{what:?} not in {stdout}"));
    stdout[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

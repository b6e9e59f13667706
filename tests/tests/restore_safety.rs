//! A backup file is untrusted input: nothing in it may run a command on the host that restores
//! or verifies it. psql runs under a restrict key of ef-backup's own, so every meta-command from
//! the file is refused — at the start of a line, mid-line, before the file's own `\restrict`, or
//! in a file that has none — and the scratch database is dropped.
//!
//! Each of these restored and ran `\!` (as the user running ef-backup) before restricted mode:
//! the marker file was created and restore exited 0.

use std::io::Write;
use std::path::{Path, PathBuf};

use ef_backup_e2e::{drop_db, ef, ef_command, psql, s3, sample_db, tempdir};

/// A complete-looking plain dump (head, footer, matching `\restrict` keys when `keyed`) around `body`.
fn dump(body: &str, keyed: bool) -> String {
    let (r, u) = if keyed { ("\\restrict abc\n", "\n\\unrestrict abc\n") } else { ("", "") };
    format!(
        "--\n-- PostgreSQL database dump\n--\n\n{r}\nSET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\n\n{body}\n--\n-- PostgreSQL database dump complete\n--\n{u}\n"
    )
}

fn gz(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    enc.write_all(sql.as_bytes()).unwrap();
    enc.finish().unwrap();
    path
}

/// The crafted files, each trying to create `marker` through psql.
fn crafted(marker: &Path) -> Vec<(&'static str, String)> {
    let m = marker.display();
    vec![
        // The reproduction: `\!` ahead of the file's own `\restrict`.
        (
            "bang_before_restrict",
            format!(
                "--\n-- PostgreSQL database dump\n--\n\n\\! touch {m}\n\\restrict abc\nCREATE TABLE t(a int);\n\
                 --\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n"
            ),
        ),
        // An older-style dump without any `\restrict` line.
        ("no_restrict", dump(&format!("CREATE TABLE t(a int);\n\\! touch {m}\n"), false)),
        // Mid-line: psql runs a backslash command wherever it meets one outside quotes.
        ("bang_mid_line", dump(&format!("CREATE TABLE t(a int); \\! touch {m}\n"), true)),
        ("copy_from_program", dump(&format!("CREATE TABLE t(a text);\n\\copy t from program 'touch {m}'\n"), true)),
        ("output_to_pipe", dump(&format!("CREATE TABLE t(a int);\n\\o |touch {m}\nSELECT 1;\n"), true)),
        // The file's own `\unrestrict` followed by a command: the key psql runs under is not the file's.
        ("unrestrict_then_bang", dump(&format!("CREATE TABLE t(a int);\n\\unrestrict abc\n\\! touch {m}\n"), true)),
    ]
}

/// The tests here count scratch databases left behind: one at a time, or one would see another's
/// scratch database mid-run.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch_dbs() -> String {
    psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'ef\\_verify\\_%' OR datname LIKE 'ef\\_restore\\_%'")
}

/// Runs ef-backup with `args` and fails the test if it has not ended within `limit` seconds
/// (it is killed then): for crafted files that once made it hang. Its output is drained
/// meanwhile, so that a full pipe of ours is never what stalls it. Returns its exit code, stdout
/// and stderr.
fn run_within(backups: &Path, args: &[&str], limit: u64) -> (Option<i32>, String, String) {
    let started = std::time::Instant::now();
    let mut child =
        ef_command(sample_db(), backups, &[]).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > std::time::Duration::from_secs(limit) {
            let _ = child.kill();
            panic!("{args:?} hung (killed after {limit} s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn crafted_backups_run_no_command_through_restore_or_verify() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let marker = dir.path().join("pwned");
    let src = sample_db();
    for (name, sql) in crafted(&marker) {
        let file = gz(&backups, &format!("{name}.sql.gz"), &sql);
        let target = format!("ef_e2e_evil_{name}");
        drop_db(&target);
        for jobs in ["1", "2"] {
            let run = ef(src, &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", &target, "--create", "--jobs", jobs]);
            assert!(!marker.exists(), "{name}: restore --jobs {jobs} ran the file's command: {}", run.all());
            assert_eq!(run.code, Some(1), "{name}: restore --jobs {jobs} must fail: {}", run.all());
            assert!(run.stderr.contains("the target was not touched"), "{name}: {}", run.stderr);
            let exists = psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"));
            assert_eq!(exists, "0", "{name}: nothing restored");
        }
        let run = ef(src, &backups, &[], &["verify", file.to_str().unwrap()]);
        assert!(!marker.exists(), "{name}: verify ran the file's command: {}", run.all());
        assert_eq!(run.code, Some(1), "{name}: {}", run.all());
        assert_eq!(scratch_dbs(), "0", "{name}: scratch database dropped");
    }
}

#[test]
fn crafted_backup_in_s3_runs_no_command_through_verify() {
    let _serial = serial();
    let s3 = s3();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let marker = dir.path().join("pwned");
    let (name, sql) = crafted(&marker).swap_remove(0);
    let file = gz(dir.path(), "evil.sql.gz", &sql);
    let object = format!("{}_backup_20250101_013000.sql.gz", sample_db());
    let key = format!("evil-{name}/{object}");
    s3.probe(&["put", &s3.bucket, &key, file.to_str().unwrap()]);
    let vars = s3.vars(&format!("evil-{name}/"));
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for args in [vec!["verify", "--from-s3", object.as_str()], vec!["verify", "--from-s3"]] {
        let run = ef(sample_db(), &backups, &env, &args);
        assert!(!marker.exists(), "{args:?} ran the file's command: {}", run.all());
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.all());
        assert_eq!(scratch_dbs(), "0");
    }
    let target = "ef_e2e_evil_s3";
    drop_db(target);
    let run = ef(sample_db(), &backups, &env, &["restore", "--from-s3", object.as_str(), "--target-db", target, "--create"]);
    assert!(!marker.exists(), "restore --from-s3 ran the file's command: {}", run.all());
    assert_eq!(run.code, Some(1), "{}", run.all());
}

/// COPY data is data: a row that reads `\restrict x` or `\unrestrict x` must neither be taken
/// for the file's restrict lines (and dropped) nor make psql stop.
#[test]
fn copy_rows_that_read_like_restrict_lines_restore_exactly() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // `\r` in COPY text is a carriage return and `\u` an escaped `u`: pg_dump writes the first for
    // a value starting with CR; the second is what a hand-edited dump may hold.
    let body = "CREATE TABLE public.t (v text, n int);\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n\
                COPY public.t (v, n) FROM stdin;\nplain\t1\n\\restrict x\t2\n\\unrestrict x\t3\n\\\\restrict y\t4\n\\.\n";
    let file = gz(&backups, "rows.sql.gz", &dump(body, true));
    for jobs in ["1", "3"] {
        let target = format!("ef_e2e_restrict_rows_{jobs}");
        drop_db(&target);
        let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", &target, "--create", "--jobs", jobs]);
        assert!(run.ok(), "--jobs {jobs}: {}", run.all());
        assert_eq!(psql(&target, "SELECT count(*) FROM t"), "4");
        assert_eq!(psql(&target, "SELECT v = E'\\restrict x' FROM t WHERE n = 2"), "t", "CR + 'estrict x'");
        assert_eq!(psql(&target, "SELECT v FROM t WHERE n = 3"), "unrestrict x");
        assert_eq!(psql(&target, "SELECT v FROM t WHERE n = 4"), "\\restrict y");
        drop_db(&target);
    }
}

/// Files that would make psql read the stream differently from ef-backup's scanner: refused
/// before psql sees them, instead of COPY data being run as SQL, SQL swallowed as COPY data, or
/// a parallel restore hanging on a sync marker that psql took for data.
#[test]
fn files_psql_would_read_differently_are_refused() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let data_entry = "\n--\n-- Data for Name: v; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.v (a) FROM stdin;\n1\n\\.\n";
    let cases = [
        // `\;` joins the COPY to the SELECT: the server enters COPY mode where the scanner saw SQL.
        (
            "joined_copy",
            dump(
                &format!("CREATE TABLE public.t (a text);\nCREATE TABLE public.v (a int);\nSELECT 1\\; COPY public.t (a) FROM stdin;\n{data_entry}"),
                true,
            ),
            "meta-command",
        ),
        // Binary COPY data runs to the end of the input in psql.
        (
            "binary_copy",
            dump(&format!("CREATE TABLE public.t (a text);\nCREATE TABLE public.v (a int);\nCOPY BINARY public.t FROM stdin;\n{data_entry}"), true),
            "not pg_dump's",
        ),
        ("csv_copy", dump("CREATE TABLE public.t (a text);\nCOPY public.t FROM stdin (FORMAT csv);\nx\n\\.\n", true), "not pg_dump's"),
        // The file's text in the message, with terminal escape sequences in it (a title, the
        // clipboard): they reached the terminal raw (found by review).
        ("escape_in_meta_command", dump("CREATE TABLE public.t (a text);\n\\! \x1b]52;c;cHduZWQ=\x07 \x1b[2J\n", true), "meta-command"),
        (
            "escape_in_copy",
            dump("CREATE TABLE public.t (a text);\nCOPY public.t FROM stdin (FORMAT csv) /* \x1b[2J */;\nx\n\\.\n", true),
            "not pg_dump's",
        ),
    ];
    for (name, sql, want) in cases {
        let file = gz(&backups, &format!("{name}.sql.gz"), &sql);
        let target = format!("ef_e2e_desync_{name}");
        drop_db(&target);
        for jobs in ["1", "2"] {
            let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", &target, "--create", "--jobs", jobs]);
            assert_eq!(run.code, Some(1), "{name} --jobs {jobs}: {}", run.all());
            assert!(run.stderr.contains("which pg_dump never writes") && run.stderr.contains(want), "{name} --jobs {jobs}: {}", run.stderr);
            assert!(!run.all().contains('\x1b') && !run.all().contains('\x07'), "{name} --jobs {jobs}: a raw control character: {:?}", run.stderr);
            assert_eq!(psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'")), "0");
            assert_eq!(scratch_dbs(), "0", "{name}");
        }
    }
    // A NUL byte: psql would cut the line there and miss the `\.` that ends the COPY data.
    let nul = dump("CREATE TABLE public.t (a text);\nCREATE TABLE public.u (a int);\nCOPY public.t (a) FROM stdin;\nx\0zz\n\\.\nINSERT INTO public.u VALUES (1);\n", true);
    let file = gz(&backups, "nul.sql.gz", &nul);
    let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_desync_nul", "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(run.stderr.contains("is damaged") && run.stderr.contains("NUL byte"), "{}", run.stderr);
    assert_eq!(scratch_dbs(), "0");
}

/// The reason an SQL statement failed reaches the operator with any number of sessions (a race
/// once reported "ended early" instead), and a dump that marks its own database a template
/// still leaves no scratch database behind.
#[test]
fn sql_errors_are_named_and_leave_nothing() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let body = "CREATE TABLE public.t (a int);\nSELECT 1/0;\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.t (a) FROM stdin;\n1\n\\.\n";
    let file = gz(&backups, "err.sql.gz", &dump(body, true));
    for round in 0..3 {
        let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_err", "--create", "--jobs", "2"]);
        assert_eq!(run.code, Some(1), "round {round}: {}", run.all());
        assert!(run.stderr.contains("division by zero"), "round {round}: {}", run.stderr);
        assert_eq!(scratch_dbs(), "0");
    }
    let body = "DO $$BEGIN EXECUTE format($f$ALTER DATABASE %I IS_TEMPLATE true$f$, current_database()); END$$;\nSELECT 1/0;\n";
    let file = gz(&backups, "template.sql.gz", &dump(body, true));
    let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_err", "--create"]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert_eq!(scratch_dbs(), "0", "the template-marked scratch database is dropped: {}", run.stderr);
}

/// Rows that do not fit their table fail the restore with the server's reason and the table's
/// name, whether they went through psql (`--jobs 1`) or over a session's own COPY connection
/// (`--jobs 2`), and the scratch database goes.
#[test]
fn bad_copy_rows_are_named_and_leave_nothing() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let mut rows = String::new();
    for i in 0..50_000 {
        rows.push_str(&format!("{i}\n"));
    }
    let body = format!("CREATE TABLE public.\"odd t\" (a int);\n\n--\n-- Data for Name: odd t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.\"odd t\" (a) FROM stdin;\n{rows}not-a-number\n\\.\n");
    let file = gz(&backups, "badrow.sql.gz", &dump(&body, true));
    for jobs in ["1", "2"] {
        let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_badrow", "--create", "--jobs", jobs]);
        assert_eq!(run.code, Some(1), "--jobs {jobs}: {}", run.all());
        assert!(run.stderr.contains("invalid input syntax for type integer: \"not-a-number\""), "--jobs {jobs}: {}", run.stderr);
        if jobs == "2" {
            assert!(run.stderr.contains("loading rows of public.\"odd t\""), "{}", run.stderr);
        }
        assert_eq!(scratch_dbs(), "0");
        assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'ef_e2e_badrow'"), "0");
    }
}

/// A file that makes the scanner and the server disagree on `standard_conforming_strings`
/// (`RESET ALL; SET standard_conforming_strings = off; RESET ALL`) hides a `COPY … TO STDOUT`
/// in what the scanner takes for one `COPY … FROM stdin`. Found by review: the session's own
/// COPY connection was replayed the settings in first-seen order (ending "off"), ran the
/// hidden COPY, and waited for ever on it — restore and verify hung at 100% CPU. Now the
/// settings replay in the order they take effect, the COPY goes alone (extended protocol), and
/// a COPY nobody asked for fails the load: the command ends with an error and leaves nothing.
#[test]
fn a_copy_hidden_behind_a_settings_trick_fails_and_never_hangs() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    // Not `dump()`: its prelude sets standard_conforming_strings before the trick, which hides it.
    let sql = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nRESET ALL;\nSET standard_conforming_strings = off;\nRESET ALL;\n\
               CREATE TABLE public.t (a text);\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n\
               COPY public.t FROM stdin NULL '\\''; COPY (SELECT 1) TO STDOUT; SELECT 1 -- '\n FROM stdin;\nx\n\\.\n\n\
               --\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n";
    let file = gz(&backups, "hidden.sql.gz", sql);
    for args in
        [vec!["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_hidden", "--create", "--jobs", "2"], vec!["verify", file.to_str().unwrap()]]
    {
        let (code, _, stderr) = run_within(&backups, &args, 90);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(scratch_dbs(), "0");
    }
}

/// A dump can read ef-backup's sync-marker queries in `pg_stat_activity` and print copies of
/// them by the thousand. The reader of psql's output stopped reading after 16 markers nobody
/// waited for; psql then blocked writing its output and the restore hung for good (in `serve`,
/// a drill wedged the drill slot). Now psql's output is always read to its end: the restore
/// finishes, and what the dump holds is restored.
#[test]
fn forged_sync_markers_never_stall_a_restore_or_verify() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let toc = |name: &str, kind: &str| format!("\n--\n-- Name: {name}; Type: {kind}; Schema: public; Owner: -\n--\n\n");
    // Two index builds of a second each, on two tables: both sessions take one, so both have
    // run a marker query by the time the next statement (serial, on the first session) looks for
    // one; the build after it keeps the other session open meanwhile.
    let body = format!(
        "{slow}CREATE FUNCTION public.slow(integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$BEGIN PERFORM pg_catalog.pg_sleep(1); RETURN $1; END$$;\n\
         {forge}CREATE FUNCTION public.forge() RETURNS SETOF text LANGUAGE plpgsql AS $$\n\
         DECLARE nonce text;\n\
         BEGIN\n\
           FOR i IN 1..400 LOOP\n\
             SELECT substring(query FROM 'ef_sync_([A-Za-z0-9]+)_') INTO nonce FROM pg_catalog.pg_stat_activity\n\
               WHERE pid <> pg_catalog.pg_backend_pid() AND query LIKE 'SELECT ''ef\\_sync\\_%' LIMIT 1;\n\
             EXIT WHEN nonce IS NOT NULL;\n\
             PERFORM pg_catalog.pg_sleep(0.05);\n\
           END LOOP;\n\
           IF nonce IS NULL THEN RAISE EXCEPTION 'no sync marker of another session to forge: %', (SELECT string_agg(pid || ':' || coalesce(backend_type, '') || ':' || left(regexp_replace(query, '\\s+', ' ', 'g'), 50), ' / ') FROM pg_catalog.pg_stat_activity); END IF;\n\
           RETURN QUERY SELECT 'ef_sync_' || nonce || '_' || s || '_' || g FROM generate_series(0, 3) s, generate_series(1, 50000) g;\n\
         END$$;\n\
         {t}CREATE TABLE public.t (a integer);\n\
         {u}CREATE TABLE public.u (a integer);\n\
         {t_data}COPY public.t (a) FROM stdin;\n1\n2\n\\.\n\
         {u_data}COPY public.u (a) FROM stdin;\n3\n\\.\n\
         {t_i}CREATE INDEX t_slow ON public.t USING btree (public.slow(a));\n\
         {u_i}CREATE INDEX u_slow ON public.u USING btree (public.slow(a));\n\
         {forged}SELECT * FROM public.forge();\n\
         {after}CREATE INDEX u_plain ON public.u USING btree (a);\n",
        slow = toc("slow(integer)", "FUNCTION"),
        forge = toc("forge()", "FUNCTION"),
        t = toc("t", "TABLE"),
        u = toc("u", "TABLE"),
        t_data = toc("t", "TABLE DATA"),
        u_data = toc("u", "TABLE DATA"),
        t_i = toc("t_slow", "INDEX"),
        u_i = toc("u_slow", "INDEX"),
        forged = toc("t forge", "FK CONSTRAINT"),
        after = toc("u_plain", "INDEX"),
    );
    let file = gz(&backups, "forged.sql.gz", &dump(&body, true));
    drop_db("ef_e2e_forged");
    for args in [
        vec!["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_forged", "--create", "--jobs", "2"],
        // Against the dump itself: the sample database it would be compared with by default is another.
        vec!["verify", file.to_str().unwrap(), "--against-dump", "--jobs", "2"],
    ] {
        let (code, out, err) = run_within(&backups, &args, 120);
        // The dump itself is fine, and the forging found a marker to copy (it fails otherwise).
        assert_eq!(code, Some(0), "{args:?}: {out}\n{err}");
        assert_eq!(scratch_dbs(), "0");
    }
    assert_eq!(psql("ef_e2e_forged", "SELECT string_agg(a::text, ',' ORDER BY a) FROM t"), "1,2");
    assert_eq!(
        psql("ef_e2e_forged", "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'"),
        "t_slow,u_plain,u_slow"
    );
    drop_db("ef_e2e_forged");
}

/// Text psql reads differently from ef-backup's scanner leaves a quote open in psql's eyes only:
/// psql 15 takes `1E` for one (bad) number where the scanner saw `E'…'`, an escape string; or a
/// `set_config` the scanner does not follow turns `standard_conforming_strings` off, and psql's
/// lexer with it. psql then took ef-backup's next statement for the inside of a string and
/// waited for more input: the restore hung for good (found by review). Now a session whose
/// backend sits idle while psql holds ef-backup's statement fails the load, naming the cause.
#[test]
fn text_psql_reads_differently_fails_the_load_instead_of_hanging() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let rows = "\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.t (a) FROM stdin;\n1\n\\.\n";
    let files = [
        ("junk_number", format!("CREATE TABLE public.t (a integer);\nSELECT 1E'\\' ';\n{rows}")),
        (
            "set_config",
            format!(
                "CREATE TABLE public.t (a integer);\nSELECT pg_catalog.set_config('standard_conforming_strings', 'off', false), 1;\nSELECT 'x\\';\n{rows}"
            ),
        ),
    ];
    for (name, body) in files {
        let file = gz(&backups, &format!("{name}.sql.gz"), &dump(&body, true));
        for args in [
            vec!["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_desync", "--create", "--jobs", "2"],
            vec!["verify", file.to_str().unwrap(), "--against-dump", "--jobs", "2"],
        ] {
            let (code, _, stderr) = run_within(&backups, &args, 120);
            assert_eq!(code, Some(1), "{name}: {args:?}: {stderr}");
            assert!(stderr.contains("read part of the backup differently from ef-backup"), "{name}: {args:?}: {stderr}");
            assert_eq!(scratch_dbs(), "0", "{name}: {args:?}");
        }
    }
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'ef_e2e_desync'"), "0");
}

/// A dump whose last table's rows lack the `\.` line that ends them, its footer intact: psql
/// ends the COPY at the end of its input and keeps everything after as rows (ef-backup's own
/// `\unrestrict` line with its key among them), and a parallel load never sent the last batch
/// — both restored "successfully" (found by review). Every way of reading it now fails.
#[test]
fn a_dump_ending_inside_a_tables_rows_fails_every_way() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let body = "CREATE TABLE public.t (a text);\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.t (a) FROM stdin;\nrow1\nrow2\n";
    let file = gz(&backups, "unterminated.sql.gz", &dump(body, true));
    drop_db("ef_e2e_unterminated");
    let f = file.to_str().unwrap();
    for args in [
        vec!["restore", f, "--target-db", "ef_e2e_unterminated", "--create", "--jobs", "1"],
        vec!["restore", f, "--target-db", "ef_e2e_unterminated", "--create", "--jobs", "2"],
        vec!["verify", f, "--against-dump"],
        vec!["verify", f, "--offline"],
    ] {
        let run = ef(sample_db(), &backups, &[], &args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.all());
        assert!(run.all().contains("ends inside the rows of public.t, without the `\\.` line"), "{args:?}: {}", run.all());
        assert_eq!(scratch_dbs(), "0", "{args:?}");
    }
    assert_eq!(psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'ef_e2e_unterminated'"), "0");
}

/// A session whose connection the server ends (a restart, `pg_terminate_backend`) is the
/// server's doing, not the backup's: the error said "an SQL statement of the backup failed …
/// try another backup", which sends a tired operator away from a good backup (found by
/// review). Now it says the connection was lost and to run the restore again.
#[test]
fn a_lost_connection_is_not_blamed_on_the_backup() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let body = "CREATE TABLE public.t (a integer);\nSELECT pg_catalog.pg_sleep(60);\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.t (a) FROM stdin;\n1\n\\.\n";
    let file = gz(&backups, "sleepy.sql.gz", &dump(body, true));
    for jobs in ["1", "2"] {
        let child = ef_command(sample_db(), &backups, &[])
            .args(["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_lost", "--create", "--jobs", jobs])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The server ends the session that runs the dump's long statement.
        let started = std::time::Instant::now();
        loop {
            let ended = psql(
                "postgres",
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity WHERE query = 'SELECT pg_catalog.pg_sleep(60);' AND pid <> pg_catalog.pg_backend_pid()",
            );
            if ended != "0" {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "--jobs {jobs}: the dump's statement never ran");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--jobs {jobs}: {stderr}");
        assert!(stderr.contains("lost its connection to the server"), "--jobs {jobs}: {stderr}");
        assert!(stderr.contains("the backup is not at fault"), "--jobs {jobs}: {stderr}");
        assert!(!stderr.contains("try another backup"), "--jobs {jobs}: {stderr}");
        assert_eq!(scratch_dbs(), "0", "--jobs {jobs}");
    }
}

/// What the loader keeps of a dump is bounded, not only each statement: the session settings
/// in force (replayed before every batch, on every session) and an index entry. A few KiB of
/// gzip made of settings that each carry a long comment piled up without limit.
#[test]
fn settings_and_entries_no_pg_dump_writes_are_refused_before_they_pile_up() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    drop_db("ef_e2e_piles");
    let pad = "x".repeat(1024);
    let settings: String = (0..900).map(|i| format!("/* {pad}{pad} */ SET ef_e2e.x{i} = 1;\n")).collect();
    // Many short ones: each SET goes through the list of those in force, so their number is
    // capped too (100,000 of them took minutes).
    let many: String = (0..100_000).map(|i| format!("SET ef_e2e.y{i} = 1;\n")).collect();
    let entry = format!(
        "CREATE TABLE public.t (a integer);\n\n--\n-- Name: t_a; Type: INDEX; Schema: public; Owner: -\n--\n\nCREATE INDEX t_a ON public.t (a);\n{}",
        "SELECT 1; -- padding\n".repeat(70 << 20 >> 4)
    );
    for (name, body, what, jobs) in [
        ("settings", settings.as_str(), "session settings (SET …) of more than 1024 KiB", &["1", "2"][..]),
        ("many_settings", many.as_str(), "more than 1000 different session settings (SET …)", &["2"][..]),
        ("entry", entry.as_str(), "an index or key entry of more than 64 MiB", &["2"][..]),
    ] {
        let file = gz(&backups, &format!("{name}.sql.gz"), &dump(body, true));
        for jobs in jobs {
            let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_piles", "--create", "--jobs", jobs]);
            assert_eq!(run.code, Some(1), "{name} --jobs {jobs}: {}", run.all());
            assert!(run.stderr.contains(what), "{name} --jobs {jobs}: {}", run.stderr);
            assert_eq!(scratch_dbs(), "0", "{name} --jobs {jobs}");
        }
    }
}

/// Server notices raised while rows load (a trigger of a crafted file, once per row) never
/// reach the terminal raw: libpq's default printed them on stderr, escape sequences and all,
/// one line per row (found by review). They go to the debug log, escaped.
#[test]
fn server_notices_during_a_load_never_reach_stderr_raw() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let mut rows = String::new();
    for i in 0..2000 {
        rows.push_str(&format!("{i}\n"));
    }
    let body = format!(
        "CREATE TABLE public.t (a int);\nCREATE FUNCTION public.shout() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE WARNING '%', E'\\x1b[31mred\\x1b[0m'; RETURN NEW; END$$;\nCREATE TRIGGER shout BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.shout();\n\n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\nCOPY public.t (a) FROM stdin;\n{rows}\\.\n"
    );
    let file = gz(&backups, "shout.sql.gz", &dump(&body, true));
    drop_db("ef_e2e_shout");
    let run = ef(sample_db(), &backups, &[], &["restore", file.to_str().unwrap(), "--target-db", "ef_e2e_shout", "--create", "--jobs", "2"]);
    assert!(run.ok(), "{}", run.all());
    assert!(!run.stderr.contains('\u{1b}'), "a raw escape reached stderr: {:?}", &run.stderr[..run.stderr.len().min(300)]);
    assert!(run.stderr.lines().count() < 50, "{} lines on stderr", run.stderr.lines().count());
    assert_eq!(psql("ef_e2e_shout", "SELECT count(*) FROM t"), "2000");
    drop_db("ef_e2e_shout");
}

/// The README's advice — restore an untrusted file as a role that is not a superuser — must be
/// possible: such a role (CREATEDB, owning the target) once failed with "permission denied for
/// tablespace pg_default".
#[test]
fn a_role_that_is_not_a_superuser_restores_and_verifies() {
    let _serial = serial();
    let role = "ef_e2e_restorer";
    let password = "ef-e2e-Restorer-7";
    psql(
        "postgres",
        &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
    );
    let src = "ef_e2e_restorer_src";
    let target = "ef_e2e_restorer_tgt";
    drop_db(src);
    drop_db(target);
    psql("postgres", &format!("CREATE DATABASE {src} OWNER {role}"));
    psql("postgres", &format!("CREATE DATABASE {target} OWNER {role}"));
    psql(src, &format!("SET ROLE {role}; CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000); CREATE INDEX t_x ON t (x)"));
    psql(target, &format!("SET ROLE {role}; CREATE TABLE old (x int)"));
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let as_role = [("EF__DB_USER", role), ("EF__DB_PASSWORD", password)];
    let run = ef(src, &backups, &as_role, &["backup", "--json"]);
    assert!(run.ok(), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    let run = ef(src, &backups, &as_role, &["restore", &name, "--target-db", target, "--drop-existing"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(psql(target, "SELECT count(*) FROM t"), "1000");
    assert_eq!(psql("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{target}'")), role);
    drop_db(target);
    let run = ef(src, &backups, &as_role, &["restore", &name, "--target-db", target, "--create"]);
    assert!(run.ok(), "{}", run.all());
    let run = ef(src, &backups, &as_role, &["verify", &name]);
    assert!(run.ok(), "{}", run.all());
    drop_db(target);
    drop_db(src);
}

/// Ctrl-C or SIGTERM during a restore or verify used to kill ef-backup where it stood and
/// leave its scratch database behind; now the scratch database is dropped (which also ends a
/// file that sleeps) and the command exits 128 + the signal.
#[test]
fn an_interrupted_restore_or_verify_leaves_no_scratch_database() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let file = gz(&backups, "slow.sql.gz", &dump("CREATE TABLE public.t (a int);\nSELECT pg_sleep(120);\n", true));
    let target = "ef_e2e_interrupted";
    drop_db(target);
    for (args, signal, code) in [
        (vec!["restore", file.to_str().unwrap(), "--target-db", target, "--create"], "-INT", 130),
        (vec!["verify", file.to_str().unwrap()], "-TERM", 143),
    ] {
        let child = ef_command(sample_db(), &backups, &[])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the load is under way (the scratch database exists), then interrupt.
        let started = std::time::Instant::now();
        while scratch_dbs() == "0" {
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{args:?}: no scratch database appeared");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let sent = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{args:?}: pg_sleep was not cut short");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains("interrupted"), "{args:?}: {stderr}");
        assert_eq!(scratch_dbs(), "0", "{args:?}: scratch database left: {stderr}");
        assert_eq!(psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'")), "0");
    }
}

/// A crafted properties line (ef-backup's first line of a backup) is refused as damage before
/// anything is created, through `restore` and `verify`: not JSON, a wrong type, a connection
/// limit below -1, a line without its end within 256 KiB. A name or setting in it can only ever
/// reach the server quoted (unit tests in `restore::props`).
#[test]
fn crafted_properties_lines_are_refused_before_anything_is_created() {
    let _serial = serial();
    let dir = tempdir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let prefix = "-- ef-backup database properties v1: ";
    let body = dump("CREATE TABLE public.t (a int);\n", true);
    let long = format!("{prefix}{{\"comment\": \"{}\"", "x".repeat(300 << 10));
    let target = "ef_e2e_crafted_props";
    drop_db(target);
    for (case, first) in [
        ("not JSON", format!("{prefix}{{owner\n")),
        ("wrong type", format!("{prefix}{{\"owner\": 7}}\n")),
        ("limit below -1", format!("{prefix}{{\"owner\":\"x\",\"encoding\":\"UTF8\",\"collate\":\"C\",\"ctype\":\"C\",\"connection_limit\":-9,\"tablespace\":\"pg_default\",\"is_template\":false,\"allow_connections\":true,\"settings\":[]}}\n")),
        ("no end", format!("{long}\n")),
    ] {
        let file = gz(&backups, "crafted.sql.gz", &format!("{first}{body}"));
        let before = scratch_dbs();
        for args in [vec!["restore", file.to_str().unwrap(), "--target-db", target, "--create"], vec!["verify", file.to_str().unwrap()]] {
            let run = ef(sample_db(), &backups, &[], &args);
            assert_eq!(run.code, Some(1), "{case} {args:?}: {}", run.all());
            assert!(run.stderr.contains("is damaged") && run.stderr.contains("database properties line"), "{case} {args:?}: {}", run.stderr);
        }
        assert_eq!(scratch_dbs(), before, "{case}: no scratch database left");
        assert_eq!(psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'")), "0", "{case}");
    }
}

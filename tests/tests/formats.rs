//! Every backup format through the real binary and the stock tools: gzip as one member
//! (`gzip -t`, `zcat | psql`), zstd (`zstd -t`, `zstd -dc | psql`), both encrypted with age
//! (`age -d` with the identity), from the local directory and from S3; a directory mixing every
//! format and an older multi-member gzip file; the wrong key, no key and a flipped byte; and an
//! encrypted backup's file never holding a plaintext byte while it is written.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ef_backup_e2e::{age_key, backup_json, compare_dbs, drop_db, ef, ef_command, env, files, psql, s3, tempdir, vars};

/// A database of this suite's own: a table with text and a large object.
fn db() -> &'static str {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const NAME: &str = "ef_e2e_formats";
    MADE.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(
            NAME,
            "CREATE TABLE notes (id int PRIMARY KEY, body text, doc jsonb); \
             INSERT INTO notes SELECT g, repeat(md5(g::text), 3) || ' 备份 ' || g, jsonb_build_object('n', g, 'tag', 't' || (g % 7)) FROM generate_series(1, 30000) g; \
             SELECT lo_from_bytea(0, decode(repeat('ab', 5000), 'hex'))",
        );
    });
    NAME
}

/// `cmd` fed `input`; its stdout.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The plain dump inside a backup file, decoded by the stock tools only.
fn stock_decode(file: &Path, identity: Option<&Path>) -> Vec<u8> {
    let mut bytes = std::fs::read(file).unwrap();
    let name = file.to_string_lossy();
    if name.ends_with(".age") {
        bytes = pipe(Command::new("age").arg("-d").arg("-i").arg(identity.expect("an identity")), &bytes);
    }
    if name.contains(".sql.zst") {
        pipe(Command::new("zstd").args(["-d", "-c", "-q"]), &bytes)
    } else {
        pipe(Command::new("gzip").args(["-d", "-c"]), &bytes)
    }
}

/// `psql` into a fresh database `target` from a plain dump, as an operator would without
/// ef-backup (the dump's `\restrict` line needs psql 15.14+).
fn psql_load(target: &str, dump: &[u8]) {
    drop_db(target);
    psql("postgres", &format!("CREATE DATABASE {target}"));
    let e = env();
    let mut cmd = Command::new(e.pg_bin.join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &e.pg_port, "-U", &e.db_user, "-d", target])
        .env("PGPASSWORD", &e.db_password);
    pipe(&mut cmd, dump);
}

fn assert_same(a: &str, b: &str) {
    let (same, report) = compare_dbs(a, b);
    assert!(same, "{a} differs from {b}: {report}");
}

#[test]
fn gzip_is_one_member_that_stock_tools_read() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (run, v) = backup_json(db(), &backups, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let file = backups.join(v["data"]["backup_file"].as_str().unwrap());
    assert!(file.to_string_lossy().ends_with(".sql.gz"), "{file:?}");
    let t = Command::new("gzip").arg("-t").arg(&file).output().unwrap();
    assert!(t.status.success(), "gzip -t: {}", String::from_utf8_lossy(&t.stderr));
    // A single-member reader stops after the first member: it reads everything only if the
    // file is one member (older backups were one member per MiB).
    let bytes = std::fs::read(&file).unwrap();
    let (mut one, mut all) = (Vec::new(), Vec::new());
    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut one).unwrap();
    flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut all).unwrap();
    assert!(all.len() > 2 << 20, "the dump spans several chunks: {} bytes", all.len());
    assert_eq!(one.len(), all.len(), "one gzip member");
    let target = "ef_e2e_formats_zcat";
    psql_load(target, &stock_decode(&file, None));
    assert_same(db(), target);
    drop_db(target);
}

#[test]
fn zstd_round_trips_locally_through_s3_and_through_the_stock_tool() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let s3 = s3();
    let s3vars = s3.vars("formats-zstd/");
    let env = vars(&s3vars, &[("EF__BACKUP_FORMAT", "zstd")]);
    let (run, v) = backup_json(db(), &backups, &env, &[]);
    assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
    let name = v["data"]["backup_file"].as_str().unwrap().to_string();
    assert!(name.ends_with(".sql.zst"), "{name}");
    let file = backups.join(&name);
    let t = Command::new("zstd").args(["-t", "-q"]).arg(&file).output().unwrap();
    assert!(t.status.success(), "zstd -t: {}", String::from_utf8_lossy(&t.stderr));
    let target = "ef_e2e_formats_zstd_cli";
    psql_load(target, &stock_decode(&file, None));
    assert_same(db(), target);

    let got = dir.path().join("from-s3.sql.zst");
    s3.probe(&["get", &s3.bucket, &format!("formats-zstd/{name}"), got.to_str().unwrap()]);
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&file).unwrap(), "the bucket holds the same bytes");

    for (target, args) in [
        ("ef_e2e_formats_zstd_local", vec!["restore", name.as_str(), "--create"]),
        ("ef_e2e_formats_zstd_s3", vec!["restore", "--from-s3", name.as_str(), "--create"]),
    ] {
        drop_db(target);
        let mut args = args.clone();
        args.extend(["--target-db", target]);
        let run = ef(db(), &backups, &env, &args);
        assert!(run.ok(), "{args:?}: {}", run.all());
        assert_same(db(), target);
        drop_db(target);
    }
    let verify = ef(db(), &backups, &env, &["verify", &name]);
    assert!(verify.ok(), "{}", verify.all());
    drop_db(target);
}

#[test]
fn encrypted_backups_decrypt_only_with_the_key() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (identity, public) = age_key(dir.path(), "key.txt");
    let (other_identity, _) = age_key(dir.path(), "other.txt");
    let s3 = s3();
    let s3vars = s3.vars("formats-age/");
    for (format, suffix, now) in [("gzip", ".sql.gz.age", "1762189200"), ("zstd", ".sql.zst.age", "1762192800")] {
        let env = vars(&s3vars, &[("EF__BACKUP_FORMAT", format), ("EF__BACKUP_AGE_RECIPIENTS", &public)]);
        let (run, v) = backup_json(db(), &backups, &env, &["--now", now]);
        assert!(run.ok() && v["data"]["s3_uploaded"] == true, "{}", run.all());
        let name = v["data"]["backup_file"].as_str().unwrap().to_string();
        assert!(name.ends_with(suffix), "{name}");
        let file = backups.join(&name);
        let bytes = std::fs::read(&file).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{name}: an age file");
        assert!(!bytes.windows(public.len()).any(|w| w == public.as_bytes()), "age stanzas never carry the recipient's key");
        let got = dir.path().join(format!("from-s3{suffix}"));
        s3.probe(&["get", &s3.bucket, &format!("formats-age/{name}"), got.to_str().unwrap()]);
        assert!(std::fs::read(&got).unwrap() == bytes, "{name}: the bucket holds the same encrypted bytes");

        // The stock age decrypts it; the dump inside loads with psql.
        let target = format!("ef_e2e_formats_age_cli_{format}");
        psql_load(&target, &stock_decode(&file, Some(&identity)));
        assert_same(db(), &target);
        drop_db(&target);

        let target = format!("ef_e2e_formats_age_{format}");
        drop_db(&target);
        let no_key = ef(db(), &backups, &env, &["restore", &name, "--target-db", &target, "--create"]);
        assert!(!no_key.ok() && no_key.stderr.contains("--identity") && no_key.stderr.contains("encrypted with age"), "{}", no_key.all());
        let wrong = ef(db(), &backups, &env, &["restore", &name, "--target-db", &target, "--create", "--identity", other_identity.to_str().unwrap()]);
        assert!(!wrong.ok() && wrong.stderr.contains("none of the identities in") && wrong.stderr.contains("other.txt"), "{}", wrong.all());
        let exists = psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"));
        assert_eq!(exists.trim(), "0", "a refused restore creates nothing");

        let ok = ef(db(), &backups, &env, &["restore", &name, "--target-db", &target, "--create", "--identity", identity.to_str().unwrap()]);
        assert!(ok.ok(), "{}", ok.all());
        assert_same(db(), &target);
        drop_db(&target);
        // From S3, with the identity from the environment.
        let with_file = [env.clone(), vec![("EF__BACKUP_AGE_IDENTITY_FILE", identity.to_str().unwrap())]].concat();
        let ok = ef(db(), &backups, &with_file, &["restore", "--from-s3", &name, "--target-db", &target, "--create"]);
        assert!(ok.ok(), "{}", ok.all());
        assert_same(db(), &target);
        drop_db(&target);
        let verify = ef(db(), &backups, &with_file, &["verify", &name]);
        assert!(verify.ok(), "{}", verify.all());
    }
}

/// Poll the backup's partial file while pg_dump writes it: whenever it has bytes, they begin
/// as an age file, so not one plaintext (or merely compressed) byte reached the disk.
#[test]
fn an_encrypted_backup_never_writes_plaintext_while_it_runs() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (_, public) = age_key(dir.path(), "key.txt");
    // A database of its own (another suite's backup of a shared one would make this one busy).
    let db = "ef_e2e_formats_big";
    drop_db(db);
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(db, "CREATE TABLE noise AS SELECT i, md5(i::text) || md5((i * 7)::text) AS t FROM generate_series(1, 400000) i");
    let mut child = ef_command(db, &backups, &[("EF__BACKUP_AGE_RECIPIENTS", &public), ("EF__BACKUP_THREADS", "1")])
        .args(["backup", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = 0;
    while child.try_wait().unwrap().is_none() {
        for name in files(&backups) {
            // The backup's partial file; not its manifest's (JSON beside it, its content sealed),
            // which a slow poll can catch being written too.
            if name.ends_with(".partial") && !name.contains(".manifest.json") {
                let mut head = Vec::new();
                if let Ok(f) = std::fs::File::open(backups.join(&name)) {
                    f.take(22).read_to_end(&mut head).unwrap();
                }
                if !head.is_empty() {
                    assert!(b"age-encryption.org/v1\n".starts_with(&head) || head.starts_with(b"age-encryption.org/v1\n"), "{name} begins {head:?}");
                    seen += 1;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(seen > 0, "the partial file was never seen with bytes in it: the check proved nothing");
    let made = files(&backups);
    assert!(made.len() == 1 && made[0].ends_with(".sql.gz.age"), "{made:?}");
    drop_db(db);
}

/// One directory with every format and a multi-member gzip file from before: `list` shows each
/// with its format, and each restores.
#[test]
fn a_directory_of_every_format_lists_and_restores() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (identity, public) = age_key(dir.path(), "key.txt");
    let formats = [("gzip", ""), ("zstd", ""), ("gzip", public.as_str()), ("zstd", public.as_str())];
    let mut names = Vec::new();
    for (i, (format, recipients)) in formats.iter().enumerate() {
        let now = (1_762_189_200 + 3600 * i as i64).to_string();
        let (run, v) = backup_json(db(), &backups, &[("EF__BACKUP_FORMAT", format), ("EF__BACKUP_AGE_RECIPIENTS", recipients)], &["--now", &now]);
        assert!(run.ok(), "{}", run.all());
        names.push(v["data"]["backup_file"].as_str().unwrap().to_string());
    }
    // An older backup as the previous encoder wrote it: one gzip member per chunk.
    let dump = stock_decode(&backups.join(&names[0]), None);
    let mut multi = Vec::new();
    for part in dump.chunks(1 << 20) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(4));
        e.write_all(part).unwrap();
        multi.extend(e.finish().unwrap());
    }
    let old = "ef_e2e_formats_backup_20251103_013000.sql.gz";
    std::fs::write(backups.join(old), &multi).unwrap();
    names.push(old.to_string());

    let list = ef(db(), &backups, &[], &["list", "--json"]);
    assert!(list.ok(), "{}", list.all());
    let rows: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    let shown: Vec<(String, String, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["format"].as_str().unwrap().to_string(), r["encrypted"].as_bool().unwrap()))
        .collect();
    for name in &names {
        let want_format = if name.contains(".sql.zst") { "zstd" } else { "gzip" };
        assert!(shown.contains(&(name.clone(), want_format.into(), name.ends_with(".age"))), "{name} in {shown:?}");
    }
    let text = ef(db(), &backups, &[], &["list"]);
    assert!(text.stdout.contains("zstd+age") && text.stdout.contains("gzip+age"), "{}", text.stdout);

    let target = "ef_e2e_formats_mixed";
    for name in &names {
        drop_db(target);
        let run = ef(db(), &backups, &[], &["restore", name, "--target-db", target, "--create", "--identity", identity.to_str().unwrap()]);
        assert!(run.ok(), "{name}: {}", run.all());
        assert_same(db(), target);
    }
    drop_db(target);
}

/// A flipped byte in the middle of a backup of every format is found before anything is
/// restored: the target is never created.
#[test]
fn a_flipped_byte_is_found_in_every_format() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    let (identity, public) = age_key(dir.path(), "key.txt");
    let formats = [("gzip", ""), ("zstd", ""), ("gzip", public.as_str()), ("zstd", public.as_str())];
    for (i, (format, recipients)) in formats.iter().enumerate() {
        let now = (1_762_189_200 + 3600 * i as i64).to_string();
        let (run, v) = backup_json(db(), &backups, &[("EF__BACKUP_FORMAT", format), ("EF__BACKUP_AGE_RECIPIENTS", recipients)], &["--now", &now]);
        assert!(run.ok(), "{}", run.all());
        let name = v["data"]["backup_file"].as_str().unwrap().to_string();
        let file = backups.join(&name);
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        let bad = dir.path().join(format!("bad-{name}"));
        std::fs::write(&bad, &bytes).unwrap();
        let target = "ef_e2e_formats_flipped";
        drop_db(target);
        let run =
            ef(db(), &backups, &[], &["restore", bad.to_str().unwrap(), "--target-db", target, "--create", "--identity", identity.to_str().unwrap()]);
        assert!(!run.ok(), "{name}: a damaged file restored: {}", run.all());
        assert!(run.stderr.contains("damaged"), "{name}: {}", run.all());
        let exists = psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"));
        assert_eq!(exists.trim(), "0", "{name}: nothing restored");
    }
}

#[test]
fn bad_format_settings_are_refused_with_the_variable_named() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    for (env, says) in [
        (vec![("EF__BACKUP_FORMAT", "xz")], "EF__BACKUP_FORMAT"),
        (vec![("EF__BACKUP_AGE_RECIPIENTS", "age1notakey")], "EF__BACKUP_AGE_RECIPIENTS"),
        (vec![("EF__BACKUP_AGE_RECIPIENTS", "/nonexistent/recipients.txt")], "neither age public keys"),
        (vec![("EF__BACKUP_ZSTD_LEVEL", "30")], "EF__BACKUP_ZSTD_LEVEL"),
    ] {
        let run = ef(db(), &backups, &env, &["backup"]);
        assert!(!run.ok() && run.stderr.contains(says), "{env:?}: {}", run.all());
    }
    assert!(files(&backups).iter().all(|f| !f.contains(".sql")), "nothing written: {:?}", files(&backups));
    // A 0.1.0 policy names every backup .sql.gz: it cannot name another format.
    let v01 = std::env::var("EF_TEST_V01_WASM").expect("EF_TEST_V01_WASM (scripts/test.sh builds it)");
    let run = ef(db(), &backups, &[("EF__BACKUP_POLICY", &v01), ("EF__BACKUP_FORMAT", "zstd")], &["backup"]);
    assert!(!run.ok() && run.stderr.contains("EF__BACKUP_FORMAT"), "{}", run.all());
}

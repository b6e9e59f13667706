//! Shared helpers for the end-to-end tests. They run the real `ef-backup` binary against the
//! real PostgreSQL cluster that `scripts/test.sh` starts, and read its settings from the
//! environment that script exports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub struct TestEnv {
    pub bin: PathBuf,
    pub wasm: PathBuf,
    pub pg_port: String,
    pub pg_dir: PathBuf,
    pub pg_bin: PathBuf,
    pub testenv: PathBuf,
    pub state: PathBuf,
    pub db_user: String,
    pub db_password: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the end-to-end tests through scripts/test.sh"))
}

pub fn env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| TestEnv {
        bin: var("EF_TEST_BIN").into(),
        wasm: var("EF_TEST_POLICY_WASM").into(),
        pg_port: var("EF_TEST_PG_PORT"),
        pg_dir: var("EF_TEST_PG_DIR").into(),
        pg_bin: var("PG_BIN").into(),
        testenv: var("EF_TEST_TESTENV").into(),
        state: var("EF_TEST_STATE").into(),
        db_user: var("EF__DB_USER"),
        db_password: var("EF__DB_PASSWORD"),
    })
}

/// A scratch directory under the test state dir (traversable by the postgres user).
pub fn tempdir() -> tempfile::TempDir {
    let base = env().state.join("e2e");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("t").tempdir_in(base).unwrap()
}

/// Runs SQL as the test superuser and returns psql's unaligned output.
pub fn psql(db: &str, sql: &str) -> String {
    psql_on(&env().pg_port, db, sql)
}

/// [`psql`] on the cluster at `port` (a test's own cluster).
pub fn psql_on(port: &str, db: &str, sql: &str) -> String {
    let e = env();
    let out = Command::new(e.pg_bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", port, "-U", &e.db_user, "-d", db, "-c", sql])
        .env("PGPASSWORD", &e.db_password)
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn drop_db(db: &str) {
    psql("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
}

/// The sample database (varied types, Chinese text, jsonb, bytea, arrays, a view, a
/// sequence, functions, indexes, large objects), seeded once per test binary.
pub fn sample_db() -> &'static str {
    static SEEDED: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_e2e_sample";
    SEEDED.get_or_init(|| {
        let e = env();
        let out = Command::new("bash")
            .arg(e.testenv.join("pg-cluster.sh"))
            .args(["seed", e.pg_dir.to_str().unwrap(), &e.pg_port, NAME, "20"])
            .env("PGPASSWORD", &e.db_password)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "seeding failed: {}", String::from_utf8_lossy(&out.stderr));
    });
    NAME
}

/// `pg-cluster.sh compare`: per-table counts and checksums, schema, sequences, large objects.
pub fn compare_dbs(a: &str, b: &str) -> (bool, String) {
    compare_dbs_on(&env().pg_port, a, b)
}

/// [`compare_dbs`] on the cluster listening on `port`.
pub fn compare_dbs_on(port: &str, a: &str, b: &str) -> (bool, String) {
    let e = env();
    let out =
        Command::new("bash").arg(e.testenv.join("pg-cluster.sh")).args(["compare", port, a, b]).env("PGPASSWORD", &e.db_password).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// `ef-backup` with a clean configuration: the test cluster, `db`, the built policy and
/// `backup_dir`; `extra` adds or overrides variables.
pub fn ef_command(db: &str, backup_dir: &Path, extra: &[(&str, &str)]) -> Command {
    let e = env();
    let mut cmd = Command::new(&e.bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("EF__") || k.starts_with("AWS_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("EF__DB_HOST", "127.0.0.1")
        .env("EF__DB_PORT", &e.pg_port)
        .env("EF__DB_USER", &e.db_user)
        .env("EF__DB_PASSWORD", &e.db_password)
        .env("EF__DB_NAME", db)
        .env("EF__BACKUP_DIR", backup_dir)
        .env("EF__BACKUP_POLICY", &e.wasm)
        .env("EF__STATE_DIR", state_dir_of(backup_dir))
        .env("EF__LOG", "info")
        // No .env from wherever the tests run.
        .current_dir(backup_dir.parent().unwrap_or(Path::new("/")));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// The state directory `ef_command` gives a deployment backing up into `backup_dir`: beside it,
/// so each test's deployment has its own history and nothing lands in the user's home.
pub fn state_dir_of(backup_dir: &Path) -> PathBuf {
    let name = backup_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    backup_dir.with_file_name(format!("{name}.state"))
}

/// Runs `ef-backup`. One backup of a database runs at a time (a second one exits 3, busy), so a
/// `backup` of a database another test is backing up waits for its turn, as an operator's retry
/// would; tests of the busy answer itself use `ef_command`.
pub fn ef(db: &str, backup_dir: &Path, extra: &[(&str, &str)], args: &[&str]) -> Run {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let run: Run = ef_command(db, backup_dir, extra).args(args).stdin(Stdio::null()).output().unwrap().into();
        if run.code != Some(3) || args.first() != Some(&"backup") || std::time::Instant::now() > deadline {
            return run;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `list` (e.g. [`S3::vars`]) as borrowed pairs, with `more` after it (later ones win).
pub fn vars<'a>(list: &'a [(&'static str, String)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = list.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.extend_from_slice(more);
    v
}

/// `ef-backup backup --json` (plus `extra_args`) and its response body.
pub fn backup_json(db: &str, dir: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["backup", "--json"];
    args.extend_from_slice(extra_args);
    let run = ef(db, dir, env, &args);
    let v = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    (run, v)
}

/// A small database of a test's own (dropped and created afresh), so its locks and sessions
/// meet no other test's.
pub fn own_db(name: &str) -> &str {
    drop_db(name);
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    psql(name, "CREATE TABLE t AS SELECT i, md5(i::text) AS v FROM generate_series(1, 2000) i");
    name
}

/// Files in a directory, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// A directory holding a fake `pg_dump` (a shell script around the real one) and the real
/// `psql`, for EF__PG_BIN: how the tests make pg_dump misbehave.
pub fn fake_pg_bin(dir: &Path, body: &str) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = env().pg_bin.join("pg_dump");
    let script = format!("#!/bin/sh\nREAL={real}\nif [ \"$1\" = --version ]; then exec \"$REAL\" --version; fi\n{body}\n", real = real.display());
    let path = bin.join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let psql = bin.join("psql");
    if !psql.exists() {
        std::os::unix::fs::symlink(env().pg_bin.join("psql"), psql).unwrap();
    }
    bin
}

/// Mounts a tmpfs of `size` at `dir`; unmounted on drop. The tests run as root (CI does).
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(st.success(), "mount tmpfs on {} failed: the file-system tests need root", dir.display());
        Mount(dir.to_path_buf())
    }
    pub fn remount_ro(&self) {
        let st = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The S3 test server (moto with SigV4 authentication) that scripts/test.sh starts, or one a
/// test starts for itself.
#[derive(Clone)]
pub struct S3 {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

pub fn s3() -> S3 {
    S3 {
        endpoint: var("EF_TEST_S3_ENDPOINT"),
        access_key: var("EF_TEST_S3_ACCESS_KEY"),
        secret_key: var("EF_TEST_S3_SECRET_KEY"),
        bucket: var("EF_TEST_S3_BUCKET"),
    }
}

impl S3 {
    /// The `EF__AWS_*` settings for ef-backup, keys below `prefix`.
    pub fn vars(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("EF__AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("EF__AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("EF__AWS_S3_BACKUP_BUCKET", self.bucket.clone()),
            ("EF__AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("EF__S3_PREFIX", prefix.to_string()),
        ]
    }

    /// Runs tests/support/s3probe.py against this server.
    pub fn probe(&self, args: &[&str]) -> String {
        let out = Command::new(var("EF_TEST_S3_PYTHON"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("support/s3probe.py"))
            .args(args)
            .env("EF_PROBE_ENDPOINT", &self.endpoint)
            .env("EF_PROBE_ACCESS_KEY", &self.access_key)
            .env("EF_PROBE_SECRET_KEY", &self.secret_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "s3probe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn probe_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.probe(args)).unwrap()
    }

    /// Keys of the incomplete multipart uploads in the bucket under `prefix`.
    pub fn open_uploads(&self, prefix: &str) -> Vec<String> {
        let uploads = self.probe_json(&["uploads", &self.bucket]);
        uploads.as_array().unwrap().iter().map(|u| u["key"].as_str().unwrap().to_string()).filter(|k| k.starts_with(prefix)).collect()
    }
}

/// A private moto server for tests that stop it or move its clock; stopped on drop.
pub struct PrivateS3 {
    pub s3: S3,
    dir: PathBuf,
}

fn s3_script() -> PathBuf {
    env().testenv.join("s3-server.sh")
}

impl PrivateS3 {
    /// With `faketime`, the server runs under libfaketime so [`PrivateS3::clock`] can move
    /// the time it stamps on uploads and objects.
    pub fn start(dir: &Path, port: u16, faketime: bool) -> PrivateS3 {
        std::fs::create_dir_all(dir).unwrap();
        // Share the installed venv (see scripts/test.sh).
        let venv = Path::new(&var("EF_TEST_S3_PYTHON")).parent().unwrap().parent().unwrap().to_path_buf();
        let _ = std::os::unix::fs::symlink(&venv, dir.join("venv"));
        let out = Command::new("bash")
            .arg(s3_script())
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .env("BUCKET", "private-bucket")
            .env("S3_FAKETIME", if faketime { "1" } else { "0" })
            .output()
            .unwrap();
        assert!(out.status.success(), "private S3 server: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("export {k}="))).unwrap_or_else(|| panic!("{k} in {text}")).to_string();
        PrivateS3 {
            s3: S3 {
                endpoint: get("AWS_ENDPOINT_URL_S3"),
                access_key: get("EF__AWS_ACCESS_KEY_ID"),
                secret_key: get("EF__AWS_SECRET_ACCESS_KEY"),
                bucket: "private-bucket".into(),
            },
            dir: dir.to_path_buf(),
        }
    }

    /// Moves the server's clock, e.g. `-1d` or `+0`.
    pub fn clock(&self, offset: &str) {
        let st = Command::new("bash").arg(s3_script()).args(["clock", self.dir.to_str().unwrap(), offset]).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(s3_script()).args(["stop", self.dir.to_str().unwrap()]).status();
    }
}

/// A free TCP port on loopback (bind, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP proxy on loopback in front of a server, which the test can cut: every connection is
/// closed and new ones are refused, as when the network to S3 goes away.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    /// Bytes forwarded towards the server.
    upstream_bytes: std::sync::atomic::AtomicU64,
    /// Cut automatically once this many bytes went upstream (0: never).
    cut_after: std::sync::atomic::AtomicU64,
    /// Forwarding rate limit per connection and direction, bytes per second (0: none).
    throttle: std::sync::atomic::AtomicU64,
    /// Change the first hex digit of every `<ETag>` element in responses: a store that
    /// reports an object other than the one uploaded.
    corrupt_etags: std::sync::atomic::AtomicBool,
}

/// Flips the first hex digit after each `<ETag>` in `buf` (lengths stay the same, so the
/// response's Content-Length stays right). The element sits in one small XML body, which
/// arrives in one read.
fn corrupt_etags(buf: &mut [u8]) {
    const TAG: &[u8] = b"<ETag>";
    let mut i = 0;
    while let Some(at) = buf[i..].windows(TAG.len()).position(|w| w == TAG) {
        i += at + TAG.len();
        let quote = [&b"&quot;"[..], b"&#34;", b"&#x22;", b"\""].into_iter().find(|q| buf[i..].starts_with(q));
        let j = i + quote.map_or(0, <[u8]>::len);
        if let Some(c) = buf.get_mut(j).filter(|c| c.is_ascii_hexdigit()) {
            *c = if *c == b'0' { b'1' } else { b'0' };
        }
    }
}

impl Proxy {
    pub fn start(target: std::net::SocketAddr) -> Proxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.cut.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                for (mut from, mut to, up) in [(client.try_clone().unwrap(), server.try_clone().unwrap(), true), (server, client, false)] {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if st.cut.load(SeqCst) {
                                break;
                            }
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if up {
                                let total = st.upstream_bytes.fetch_add(n as u64, SeqCst) + n as u64;
                                let limit = st.cut_after.load(SeqCst);
                                if limit > 0 && total >= limit {
                                    st.cut.store(true, SeqCst);
                                    break;
                                }
                            }
                            if !up && st.corrupt_etags.load(SeqCst) {
                                corrupt_etags(&mut buf[..n]);
                            }
                            let bps = st.throttle.load(SeqCst);
                            if bps > 0 {
                                std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / bps as f64));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut_after(&self, bytes: u64) {
        self.state.cut_after.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.state.cut_after.store(0, std::sync::atomic::Ordering::SeqCst);
        self.state.throttle.store(0, std::sync::atomic::Ordering::SeqCst);
        self.state.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection now and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every `<ETag>` in the store's XML answers wrong (see [`ProxyState`]).
    pub fn corrupt_etags(&self) {
        self.state.corrupt_etags.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Slows forwarding to `bytes_per_sec` per connection and direction.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.throttle.store(bytes_per_sec, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A database whose backup is several S3 parts: ~40 MB of random hex, which gzip can only
/// halve.
pub fn big_db() -> &'static str {
    static MADE: OnceLock<()> = OnceLock::new();
    const NAME: &str = "ef_e2e_big";
    MADE.get_or_init(|| {
        drop_db(NAME);
        psql("postgres", &format!("CREATE DATABASE {NAME}"));
        psql(NAME, "CREATE TABLE noise AS SELECT i, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 600000) i");
    });
    NAME
}

/// A response read by [`http`].
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", self.body))
    }
}

/// A plain HTTP/1.1 request (one connection, `Connection: close`): enough to talk to the
/// service without an HTTP client library.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    try_http(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// [`http`] that reports a broken connection (the server was killed) instead of panicking.
pub fn try_http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpReply, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    assert!(
        headers.iter().all(|(k, v)| !(k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))),
        "chunked responses are not expected"
    );
    Ok(HttpReply { status, headers, body: body.to_string() })
}

/// Fires `n` authorized POSTs to `path` at once; join the handles for (status, JSON body).
pub fn post_concurrently(port: u16, auth: &str, path: &'static str, n: usize) -> Vec<std::thread::JoinHandle<(u16, serde_json::Value)>> {
    (0..n)
        .map(|_| {
            let auth = auth.to_string();
            std::thread::spawn(move || {
                let r = http(port, "POST", path, &[("Authorization", &auth)], b"");
                (r.status, r.json())
            })
        })
        .collect()
}

/// A running `ef-backup serve`; killed (SIGKILL) on drop if still running. Its log goes to
/// `log` in its directory.
pub struct Serve {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
    pub token: String,
}

pub const TOKEN: &str = "test-token-0123456789abcdef";

impl Serve {
    pub fn start(db: &str, dir: &Path, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let log = dir.join(format!("serve-{port}.log"));
        std::fs::create_dir_all(dir).unwrap();
        let backups = dir.join("backups");
        let addr = format!("127.0.0.1:{port}");
        let mut vars: Vec<(&str, &str)> = vec![("EF__ADMIN_TOKEN", TOKEN), ("EF__HTTP_ADDR", &addr)];
        vars.extend_from_slice(extra);
        let child = ef_command(db, &backups, &vars)
            .arg("serve")
            .stdout(std::fs::File::create(dir.join(format!("serve-{port}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let serve = Serve { child, port, log, token: TOKEN.to_string() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "serve did not come up: {}", serve.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        serve
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn get(&self, path: &str) -> HttpReply {
        http(self.port, "GET", path, &[("Authorization", &self.auth())], b"")
    }

    pub fn post(&self, path: &str) -> HttpReply {
        http(self.port, "POST", path, &[("Authorization", &self.auth())], b"")
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit code.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<i32> {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(std::time::Instant::now() < deadline, "serve did not exit after SIGTERM: {}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The PostgreSQL client tools: finding a `pg_dump`/`psql` that matches the server, and running
//! them. The password travels in their environment (never in argv, where `ps` shows it to every
//! user); host, port, user and database travel in a conninfo string in argv, where they win over a
//! service file (`PGSERVICE`) the operator may use for TLS settings. ef-backup's own settings
//! (`EF__*`, `AWS_*`) never reach a client tool; the operator's `PG*` variables do.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::DbConfig;
use crate::libpq::Conn;
use crate::util::lock;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no PostgreSQL client tools found (looked for psql in {looked}); install the postgresql-client package or set EF__PG_BIN")]
    NoClient { looked: String },
    #[error("cannot connect to PostgreSQL at {host}:{port} (database {db}, user {user}): {detail} — check EF__DB_HOST, EF__DB_PORT, EF__DB_USER and EF__DB_PASSWORD, and that database {db} exists and the user may connect to it (EF__DB_NAME is the one backed up; restore creates databases from \"postgres\")")]
    Connect { host: String, port: u16, db: String, user: String, detail: String },
    #[error("the server runs PostgreSQL {server}, but no pg_dump {server} was found (found: {found}); install postgresql-client-{server} or point EF__PG_BIN at its bin directory — a pg_dump of another major version cannot be trusted with this server")]
    VersionMismatch { server: u32, found: String },
    #[error("the server runs PostgreSQL {server}, but ef-backup needs PostgreSQL 13 or later (a restore replaces a database with DROP DATABASE ... WITH (FORCE), which 13 introduced) — upgrade the server")]
    ServerTooOld { server: String },
    #[error("{tool} is version {found}, which has no restricted mode (\\restrict); PostgreSQL {major} client tools must be {minimum} — without it a backup file can run shell commands on this host through psql meta-commands (CVE-2025-8714); install a current postgresql-client-{major} or point EF__PG_BIN at one")]
    ClientTooOld { tool: String, found: String, major: u32, minimum: String },
    #[error("cannot tell which version {tool} is (`{tool} --version` printed none), so cannot make sure it has restricted mode (\\restrict, CVE-2025-8714) — point EF__PG_BIN at the bin directory of PostgreSQL client tools 13.22, 14.19, 15.14, 16.10, 17.6 or later")]
    ClientVersionUnknown { tool: String },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("the server refused a statement: {detail}")]
    Sql { detail: String },
    #[error("cannot run {tool}: {err}")]
    Spawn { tool: String, err: std::io::Error },
}

/// Client tools of one major version, matching the server.
#[derive(Debug, Clone)]
pub struct PgTools {
    pub bin_dir: PathBuf,
    pub server_major: u32,
    db: DbConfig,
    /// Set by [`PgTools::for_maintenance`]: queries to the maintenance database share one
    /// connection instead of a login each.
    admin: Option<AdminSession>,
}

/// The maintenance database, whose connection [`PgTools::for_maintenance`] keeps. Only this
/// one: an idle session on `template1` would make everyone's plain `CREATE DATABASE` fail, and
/// on the database being restored would stop it being renamed.
const ADMIN_DB: &str = "postgres";
/// A kept connection idle longer than this is closed rather than reused: the server may have
/// dropped it meanwhile (idle_session_timeout, a restart), and a new login costs little then.
const ADMIN_IDLE: Duration = Duration::from_secs(60);

/// The idle connection to [`ADMIN_DB`] between two queries of one operation (a restore or
/// verify runs a dozen catalog queries before its load: a login each cost 15 ms). Taken out
/// while a query runs, so threads never wait on each other for it: a second thread opens its
/// own connection.
#[derive(Clone, Default)]
struct AdminSession(Arc<Mutex<Option<(Conn, Instant)>>>);

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSession")
    }
}

/// Server settings of ef-backup's own queries.
const QUERY_OPTIONS: &str = "-c standard_conforming_strings=on";

/// TCP keepalives for every connection that may sit waiting on the server (a lock session, a
/// restore's psql sessions, this process's libpq connections): a server that goes silent is
/// noticed within a minute or two, not the system's two hours (idle 30 s, then a probe every
/// 10 s; 3 unanswered probes end the connection).
pub const KEEPALIVES: [(&str, &str); 4] = [("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "3")];

/// The last lines of a tool's stderr, trimmed, for error messages. Control characters are
/// escaped, so a tool's output (which may quote data or server messages) cannot forge log lines
/// or terminal escapes in ours.
pub fn tail_lines(stderr: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let all: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = all[all.len().saturating_sub(lines)..].iter().map(|l| escape_controls(l)).collect::<Vec<_>>().join(" | ");
    if tail.is_empty() {
        "(no error output)".to_string()
    } else {
        tail
    }
}

/// `text` with every control character (CR, ESC, NUL, ...; tabs too) written as an escape.
pub fn escape_controls(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Reads a child's stderr on a thread of its own, keeping the end (where a tool says what went
/// wrong) and at most 64 KiB.
pub fn stderr_tail(mut stderr: impl std::io::Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.len() > 64 * 1024 {
                all.drain(..all.len() - 32 * 1024);
            }
        }
        all
    })
}

/// A client tool started by [`spawn`]: the child, its stdout, and its stderr drained by
/// [`stderr_tail`] (join it once the child has exited, for what the tool said last).
pub struct Running {
    pub child: Child,
    pub stdout: ChildStdout,
    pub stderr: JoinHandle<Vec<u8>>,
}

/// Starts a client tool made by [`PgTools::command`] or [`PgTools::command_as`] (which give it its
/// environment) with stdout piped and stderr drained on a thread of its own, so a tool that says a
/// lot never blocks on a full stderr pipe. stdin, a process group and the like stay the caller's
/// to set on `command`; so does naming the tool in a spawn error.
pub fn spawn(command: &mut Command) -> std::io::Result<Running> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = stderr_tail(child.stderr.take().expect("piped stderr"));
    Ok(Running { child, stdout, stderr })
}

/// Candidate bin directories, best first: the configured one, then Debian's per-version
/// directories (newest first), then whatever is on PATH.
fn candidate_dirs(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = configured {
        dirs.push(d.to_path_buf());
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versioned.into_iter().map(|(_, p)| p));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// A client tool's version, as `--version` prints it: `psql (PostgreSQL) 15.18 (Debian ...)`,
/// `16beta1`, `17rc1`, `18devel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientVersion {
    pub major: u32,
    /// `None` for a pre-release (devel, beta, rc), which comes before the major's `.0`.
    pub minor: Option<u32>,
    /// The version word as printed, for messages.
    pub text: String,
}

/// The first minor release of each major that has psql's `\restrict` (the fix for
/// CVE-2025-8714); every 18 has it.
const RESTRICT_SINCE: [(u32, u32); 5] = [(13, 22), (14, 19), (15, 14), (16, 10), (17, 6)];

impl ClientVersion {
    pub fn parse(version_output: &str) -> Option<ClientVersion> {
        let word = version_output.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let digits = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
        let major = word[..digits].parse().ok()?;
        let rest = &word[digits..];
        let minor = match rest.strip_prefix('.') {
            Some(m) => Some(m.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?),
            None if rest.is_empty() => Some(0),
            None => None,
        };
        Some(ClientVersion { major, minor, text: word.to_string() })
    }

    /// `Err(minimum)` when this version's psql cannot run a stream in restricted mode.
    pub fn check_restrict(&self) -> Result<(), String> {
        if self.major >= 18 {
            return Ok(());
        }
        match RESTRICT_SINCE.iter().find(|(major, _)| *major == self.major) {
            Some((_, since)) if self.minor.is_some_and(|m| m >= *since) => Ok(()),
            Some((major, since)) => Err(format!("{major}.{since} or later")),
            None => Err(format!(
                "one of {} or later (no release of {} has it)",
                RESTRICT_SINCE.iter().map(|(a, b)| format!("{a}.{b}")).collect::<Vec<_>>().join(", "),
                self.major
            )),
        }
    }
}

/// `cmd` without ef-backup's own settings (`EF__*`: the database password, the admin token...;
/// `AWS_*`: S3 keys) in its environment; everything else, the operator's `PG*` variables
/// included, is inherited.
fn without_our_settings(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        let k = std::os::unix::ffi::OsStrExt::as_bytes(key.as_os_str());
        if k.starts_with(b"EF__") || k.starts_with(b"AWS_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// What a client tool's `--version` reports, `None` when it cannot be run or read.
fn tool_version(tool: &Path) -> Option<ClientVersion> {
    let out = without_our_settings(Command::new(tool)).arg("--version").stdin(Stdio::null()).output().ok()?;
    ClientVersion::parse(&String::from_utf8_lossy(&out.stdout))
}

/// `90624` → `9.6.24`, `150018` → `15.18`.
fn server_version_text(num: u32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

/// Refuses a psql without `\restrict`: restore and verify feed it backup files, and only
/// restricted mode stops a meta-command in one from running. Checked for every command, so
/// an old client is found at start-up, not on the day of a restore.
fn check_psql(psql: &Path) -> Result<(), DbError> {
    let tool = psql.display().to_string();
    let Some(version) = tool_version(psql) else {
        return Err(DbError::ClientVersionUnknown { tool });
    };
    version.check_restrict().map_err(|minimum| DbError::ClientTooOld { tool, found: version.text.clone(), major: version.major, minimum })
}

impl PgTools {
    /// Asks the server for its version, then picks the client tools of the same major version.
    pub fn for_server(db: &DbConfig, configured_bin: Option<&Path>) -> Result<PgTools, DbError> {
        PgTools::for_server_via(db, configured_bin, &db.name)
    }

    /// [`PgTools::for_server`], asking the server's version over a connection to `probe_db`:
    /// a restore onto a new server cannot connect to the database it is about to create.
    pub fn for_server_via(db: &DbConfig, configured_bin: Option<&Path>, probe_db: &str) -> Result<PgTools, DbError> {
        PgTools::find(db, configured_bin, probe_db, None)
    }

    /// [`PgTools::for_server_via`] the maintenance database `postgres`, for restore, verify and
    /// drills: their queries to it share one connection (see [`AdminSession`]), the version
    /// probe's first, until this value and its clones are dropped. Call
    /// [`PgTools::forget_admin_session`] before renaming or dropping `postgres` itself.
    pub fn for_maintenance(db: &DbConfig, configured_bin: Option<&Path>) -> Result<PgTools, DbError> {
        PgTools::find(db, configured_bin, ADMIN_DB, Some(AdminSession::default()))
    }

    fn find(db: &DbConfig, configured_bin: Option<&Path>, probe_db: &str, admin: Option<AdminSession>) -> Result<PgTools, DbError> {
        let dirs = candidate_dirs(configured_bin);
        // No client tools at all is said before the server is asked anything.
        if !dirs.iter().any(|d| d.join("psql").is_file()) {
            return Err(DbError::NoClient { looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ") });
        }
        let probe = PgTools { admin: admin.clone(), ..PgTools::queries_only(db) };
        let num = probe.query_value(probe_db, "SHOW server_version_num")?;
        let server_num =
            num.trim().parse::<u32>().map_err(|_| DbError::Tool { tool: "psql".into(), detail: format!("unexpected server_version_num {num:?}") })?;
        if server_num < 130_000 {
            return Err(DbError::ServerTooOld { server: server_version_text(server_num) });
        }
        let server_major = server_num / 10_000;
        let mut found = Vec::new();
        for dir in &dirs {
            let pg_dump = dir.join("pg_dump");
            if !pg_dump.is_file() {
                continue;
            }
            match tool_version(&pg_dump).map(|v| v.major) {
                Some(m) if m == server_major && dir.join("psql").is_file() => {
                    check_psql(&dir.join("psql"))?;
                    return Ok(PgTools { bin_dir: dir.clone(), server_major, db: db.clone(), admin });
                }
                Some(m) => found.push(format!("{m} in {}", dir.display())),
                None => found.push(format!("unknown version in {}", dir.display())),
            }
        }
        found.dedup();
        Err(DbError::VersionMismatch { server: server_major, found: if found.is_empty() { "none".into() } else { found.join(", ") } })
    }

    /// For ef-backup's own queries (libpq, in this process) to a server whose client tools are
    /// not needed: no tool lookup, no version check, no `--version` run.
    pub fn queries_only(db: &DbConfig) -> PgTools {
        PgTools { bin_dir: PathBuf::new(), server_major: 0, db: db.clone(), admin: None }
    }

    /// Closes the kept connection to the maintenance database, if any.
    pub fn forget_admin_session(&self) {
        if let Some(a) = &self.admin {
            lock(&a.0).take();
        }
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A client tool connecting to `database` as application `ef-backup`.
    pub fn command(&self, name: &str, database: &str) -> Command {
        self.command_as(name, database, "ef-backup", &[])
    }

    /// A client tool connecting to `database` as `application_name`, with `extra` conninfo
    /// parameters (keepalives...). None of these is a secret: they go in argv (`-d`), where they
    /// win over a service file; the password goes in the environment.
    pub fn command_as(&self, name: &str, database: &str, application_name: &str, extra: &[(&str, &str)]) -> Command {
        let mut cmd = without_our_settings(Command::new(self.tool(name)));
        let port = self.db.port.to_string();
        let mut params = self.params(&port, database, application_name);
        params.extend_from_slice(extra);
        cmd.arg("-d").arg(conninfo(&params)).stdin(Stdio::null());
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            cmd.env("PGCONNECT_TIMEOUT", "10");
        }
        match &self.db.password {
            Some(p) => cmd.env("PGPASSWORD", p.expose()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }

    /// The connection parameters every session of ef-backup gives, tools and in-process alike.
    fn params<'a>(&'a self, port: &'a str, database: &'a str, application_name: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("host", self.db.host.as_str()),
            ("port", port),
            ("user", self.db.user.as_str()),
            ("dbname", database),
            ("application_name", application_name),
        ]
    }

    /// A libpq connection in this process to `database`, with the parameters psql gets from
    /// [`PgTools::command`] plus `options` (server settings, as in PGOPTIONS; None: the
    /// environment's PGOPTIONS); the password goes in memory. (`main` removes PGPASSWORD from
    /// the environment, so libpq cannot fall back to it: the password comes only from
    /// EF__DB_PASSWORD, as for the client tools.)
    pub fn connect(&self, database: &str, options: Option<&str>) -> Result<Conn, DbError> {
        let port = self.db.port.to_string();
        let mut params = self.params(&port, database, "ef-backup");
        params.extend_from_slice(&[
            // Names and text come back as Rust strings: UTF-8 whatever the database's encoding
            // (psql got the same from the UTF-8 locale).
            ("client_encoding", "UTF8"),
        ]);
        params.extend_from_slice(&KEEPALIVES);
        // Without it libpq reads PGOPTIONS, as the client tools do.
        if let Some(o) = options {
            params.push(("options", o));
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            params.push(("connect_timeout", "10"));
        }
        if let Some(p) = &self.db.password {
            params.push(("password", p.expose()));
        }
        Conn::connect(&params).map_err(|e| self.connect_error(database, e.to_string()))
    }

    /// Runs SQL and returns the rows of its last statement, over a libpq connection of this
    /// process (a psql per query cost a process start and a login each: 25 ms, several times per
    /// command). A connection failure is [`DbError::Connect`] with libpq's reason.
    pub fn query(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, DbError> {
        let session = self.admin.as_ref().filter(|_| database == ADMIN_DB);
        let kept = session.and_then(|s| lock(&s.0).take()).filter(|(_, idle_since)| idle_since.elapsed() < ADMIN_IDLE);
        let reused = kept.is_some();
        // The statements ef-backup builds quote literals for standard_conforming_strings=on
        // (`quote_literal`); a server or role configured otherwise must not change what they mean.
        let mut conn = match kept {
            Some((conn, _)) => conn,
            None => self.connect(database, Some(QUERY_OPTIONS))?,
        };
        let mut result = conn.query(sql);
        if reused && result.is_err() && conn.lost() {
            // The kept session is gone (the server restarted or ended it): the statement found no
            // backend, or died with it. Once more on a new login, as without the kept session;
            // ef-backup's statements there are catalog reads and CREATE/DROP/ALTER DATABASE,
            // which a second run repeats or refuses with their own clear error.
            conn = self.connect(database, Some(QUERY_OPTIONS))?;
            result = conn.query(sql);
        }
        if let Some(s) = session.filter(|_| conn.reusable()) {
            *lock(&s.0) = Some((conn, Instant::now()));
        }
        result.map_err(|e| DbError::Sql { detail: e.to_string() })
    }

    /// "Cannot connect to `database`" with the client's reason.
    pub fn connect_error(&self, database: &str, detail: String) -> DbError {
        DbError::Connect { host: self.db.host.clone(), port: self.db.port, db: database.to_string(), user: self.db.user.clone(), detail }
    }

    /// One value of a one-row, one-column query.
    pub fn query_value(&self, database: &str, sql: &str) -> Result<String, DbError> {
        let rows = self.query(database, sql)?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or_default())
    }

    /// Runs statements (no result), e.g. CREATE/DROP/ALTER DATABASE.
    pub fn execute(&self, database: &str, sql: &str) -> Result<(), DbError> {
        self.query(database, sql).map(drop)
    }
}

/// A libpq conninfo string: `key='value'` pairs, quotes and backslashes escaped.
pub fn conninfo(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))).collect::<Vec<_>>().join(" ")
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled: a safe SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The inverse of [`quote_ident`] and [`quote_literal`]: the `quote`-delimited token at the start
/// of `s` (doubled quotes inside stand for one), and what follows it; `None` when `s` does not
/// start with `quote` or the token is not closed.
pub fn unquote(s: &str, quote: char) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix(quote)?;
    let mut out = String::new();
    loop {
        let at = rest.find(quote)?;
        out.push_str(&rest[..at]);
        rest = &rest[at + quote.len_utf8()..];
        match rest.strip_prefix(quote) {
            Some(after) => {
                out.push(quote);
                rest = after;
            }
            None => return Some((out, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn unquoting_inverts_quoting() {
        for text in ["", "a", "a\"b", "it's", "\"\"", "''", "x y.z"] {
            let ident = format!("{} rest", quote_ident(text));
            assert_eq!(unquote(&ident, '"'), Some((text.to_string(), " rest")), "{text:?}");
            let literal = format!("{}, 1", quote_literal(text));
            assert_eq!(unquote(&literal, '\''), Some((text.to_string(), ", 1")), "{text:?}");
        }
        assert_eq!(unquote("\"open", '"'), None);
        assert_eq!(unquote("bare", '"'), None);
    }

    #[test]
    fn client_versions_parse_and_restrict_support_is_decided_per_major() {
        // (--version output, major, minor, accepted, minimum named when refused)
        let table: &[(&str, u32, Option<u32>, bool, &str)] = &[
            ("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", 15, Some(18), true, ""),
            ("psql (PostgreSQL) 15.14", 15, Some(14), true, ""),
            ("psql (PostgreSQL) 15.13", 15, Some(13), false, "15.14 or later"),
            ("psql (PostgreSQL) 13.22", 13, Some(22), true, ""),
            ("psql (PostgreSQL) 13.21", 13, Some(21), false, "13.22 or later"),
            ("psql (PostgreSQL) 14.19", 14, Some(19), true, ""),
            ("psql (PostgreSQL) 14.18", 14, Some(18), false, "14.19 or later"),
            ("psql (PostgreSQL) 16.10", 16, Some(10), true, ""),
            ("psql (PostgreSQL) 16.9", 16, Some(9), false, "16.10 or later"),
            ("psql (PostgreSQL) 16beta1", 16, None, false, "16.10 or later"),
            ("psql (PostgreSQL) 17.6", 17, Some(6), true, ""),
            ("psql (PostgreSQL) 17rc1", 17, None, false, "17.6 or later"),
            ("psql (PostgreSQL) 18devel", 18, None, true, ""),
            ("psql (PostgreSQL) 18.0", 18, Some(0), true, ""),
            ("psql (PostgreSQL) 19beta2", 19, None, true, ""),
            ("pg_dump (PostgreSQL) 14.11", 14, Some(11), false, "14.19 or later"),
            ("psql (PostgreSQL) 12.22", 12, Some(22), false, "no release of 12 has it"),
            ("psql (PostgreSQL) 9.6.24", 9, Some(6), false, "13.22, 14.19, 15.14, 16.10, 17.6 or later"),
        ];
        for (text, major, minor, accepted, minimum) in table {
            let v = ClientVersion::parse(text).unwrap_or_else(|| panic!("{text}: not parsed"));
            assert_eq!((v.major, v.minor), (*major, *minor), "{text}");
            match v.check_restrict() {
                Ok(()) => assert!(accepted, "{text} accepted"),
                Err(m) => {
                    assert!(!accepted, "{text} refused ({m})");
                    assert!(m.contains(minimum), "{text}: {m}");
                }
            }
        }
        assert_eq!(ClientVersion::parse("psql (PostgreSQL)"), None);
        assert_eq!(ClientVersion::parse(""), None);
    }

    #[test]
    fn server_versions_print_as_postgresql_does() {
        assert_eq!(server_version_text(150018), "15.18");
        assert_eq!(server_version_text(120022), "12.22");
        assert_eq!(server_version_text(90624), "9.6.24");
    }

    #[test]
    fn stderr_tail() {
        assert_eq!(tail_lines(b"a\n\n b \nc\nd\n", 2), "c | d");
        assert_eq!(tail_lines(b"", 2), "(no error output)");
    }

    /// Pins issue 12 item "pg_dump stderr cannot forge log lines": a carriage return or an escape
    /// sequence in a tool's stderr used to reach the log as is, so it could overwrite the line on
    /// a terminal or fake a log line of its own.
    #[test]
    fn stderr_tail_escapes_control_characters() {
        let forged = b"pg_dump: error: x\r2026-01-01T00:00:00Z  INFO backup ok\x1b[2K\x00\x07";
        let tail = tail_lines(forged, 2);
        assert_eq!(tail, "pg_dump: error: x\\r2026-01-01T00:00:00Z  INFO backup ok\\u{1b}[2K\\u{0}\\u{7}");
        assert!(!tail.chars().any(char::is_control), "{tail:?}");
        assert_eq!(tail_lines("ERROR:  relation «表» \t locked".as_bytes(), 1), "ERROR:  relation «表» \\t locked");
    }

    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(conninfo(&[("host", "db"), ("dbname", "it's a \\ name")]), "host='db' dbname='it\\'s a \\\\ name'");
    }
}

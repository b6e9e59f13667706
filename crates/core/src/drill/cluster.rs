//! A throwaway PostgreSQL cluster for restore drills: initdb into a fresh private directory, a
//! postmaster on a unix socket in that directory only (no TCP), removed without a trace after.
//!
//! Why a cluster of our own: a drill must never touch production, and a scratch server of the
//! backup's major version, owned by this process, is the one place where restoring an arbitrary
//! backup as superuser harms nothing.
//!
//! Security: authentication is `trust`, so the only thing keeping other local users out is the
//! directory holding the socket — created 0700, owned by the server's OS user (root passes it
//! anyway). The server's superuser can run programs as that OS user (`COPY … FROM PROGRAM`), so
//! the OS user should own nothing worth protecting: on a host that also runs production
//! PostgreSQL, a dedicated user is safer than `postgres`.
//!
//! Nothing may be left behind, even when the drill panics: [`Throwaway`]'s `Drop` kills every
//! process of the cluster and removes the directory. The postmaster's children call `setsid()`
//! (PostgreSQL makes each one a group leader), so signalling the postmaster's process group does
//! not reach them; instead every process whose working directory is inside the cluster's
//! directory (all of PostgreSQL's processes `chdir` to the data directory) or that descends from
//! the postmaster is stopped, then killed. If ef-backup itself is killed with SIGKILL, the
//! postmaster gets SIGKILL from the kernel (`PR_SET_PDEATHSIG`) and its children end when they
//! notice; only the directory stays (`ef-drill-<pid>-*` of a pid no longer running).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::libpq::{Conn, PqError};

/// The superuser `initdb` creates; the only role of the cluster.
const SUPERUSER: &str = "ef_drill";
/// Only names the socket file (`.s.PGSQL.5432`): no TCP port is opened.
const PORT: u16 = 5432;
/// `sun_path` is 108 bytes, NUL included.
const MAX_SOCKET_PATH: usize = 107;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// initdb takes seconds; a hung one (a full disk, a stuck filesystem) must not hang the drill.
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
const LOG_LINES: usize = 20;

/// Server settings for a cluster that lives for one drill: durability buys nothing when the
/// directory is removed afterwards, speed and a small footprint do.
const SETTINGS: &[(&str, &str)] = &[
    // The unix socket only.
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("ssl", "off"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("synchronous_commit", "off"),
    // A restore's COPY into a table created in the same transaction then writes no WAL.
    ("wal_level", "minimal"),
    ("max_wal_senders", "0"),
    ("archive_mode", "off"),
    ("shared_buffers", "128MB"),
    // A restore holds a lock per table, index and sequence in one transaction: with few
    // connections the lock table (max_locks_per_transaction × connections) would be smaller
    // than a default production server's, and a schema that restores there would fail here.
    ("max_locks_per_transaction", "256"),
    // Dynamic shared memory in files of the data directory instead of /dev/shm: a killed
    // server's segments go with the directory instead of staying in RAM, and a container's
    // 64 MB /dev/shm cannot fail a parallel query.
    ("dynamic_shared_memory_type", "mmap"),
    // The data is written once and read once; vacuuming it would take CPU from the restore.
    ("autovacuum", "off"),
    ("logging_collector", "off"),
];

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no PostgreSQL {major} server for the restore drill (looked in: {looked}); install the PostgreSQL {major} server (Debian: postgresql-{major}, RHEL: postgresql{major}-server) or point EF__PG_BIN at a bin directory holding its initdb and postgres — or set EF__DRILL_DB_HOST to drill on an existing server that is not production")]
    NoServerBins { major: u32, looked: String },
    #[error("ef-backup runs as root, so the drill server must run as an unprivileged OS user, and {problem}; create a system user for it (e.g. `adduser --system --group --no-create-home ef-drill`) and set EF__DRILL_OS_USER to it, or set EF__DRILL_DB_HOST to drill on an existing server that is not production")]
    User { user: String, problem: String },
    #[error("the drill server's socket would be {path} ({len} bytes), longer than the 107 bytes a unix socket path may have; put the drill's directory under a shorter path")]
    SocketPath { path: PathBuf, len: usize },
    #[error("{what} {}: {err}", .path.display())]
    Io { what: &'static str, path: PathBuf, err: io::Error },
    #[error("initdb of the drill server failed ({status}){hint}: {log}")]
    Initdb { status: String, hint: String, log: String },
    #[error("the drill server did not start: {detail}; its log: {log}")]
    Start { detail: String, log: String },
    #[error("the drill server {detail}; its log: {log}")]
    Stop { detail: String, log: String },
}

impl ClusterError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClusterError + 'a {
        move |err| ClusterError::Io { what, path: path.to_path_buf(), err }
    }
}

/// `initdb` and `postgres` of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBins {
    pub dir: PathBuf,
    pub major: u32,
}

/// The major version of a `server_version_num` (150018 → 15; 90624 → 9).
pub fn major_of_version_num(server_version_num: u32) -> u32 {
    server_version_num / 10000
}

/// Finds initdb and postgres of `major`: first in `configured` (EF__PG_BIN), then
/// /usr/lib/postgresql/<major>/bin (Debian), then /usr/pgsql-<major>/bin (RHEL). A directory
/// counts only when both tools are there and report that major version.
pub fn find_server_bins(major: u32, configured: Option<&Path>) -> Result<ServerBins, ClusterError> {
    let mut candidates: Vec<PathBuf> = configured.map(Path::to_path_buf).into_iter().collect();
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
    let mut looked = Vec::new();
    for dir in candidates {
        match check_server_dir(&dir, major) {
            Ok(()) => return Ok(ServerBins { dir, major }),
            Err(why) => looked.push(format!("{} ({why})", dir.display())),
        }
    }
    Err(ClusterError::NoServerBins { major, looked: looked.join("; ") })
}

fn check_server_dir(dir: &Path, major: u32) -> Result<(), String> {
    for tool in ["initdb", "postgres"] {
        let path = dir.join(tool);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            _ => return Err(format!("no {tool}")),
        }
        match tool_major(&path) {
            Some(m) if m == major => {}
            Some(m) => return Err(format!("{tool} is PostgreSQL {m}")),
            None => return Err(format!("`{tool} --version` did not say its version")),
        }
    }
    Ok(())
}

/// The major version `tool --version` reports ("postgres (PostgreSQL) 15.18 (Debian …)").
fn tool_major(tool: &Path) -> Option<u32> {
    // --version is answered before PostgreSQL's refusal to run as root.
    let out = Command::new(tool).arg("--version").env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).output().ok()?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major(version: &str) -> Option<u32> {
    let rest = &version[version.find("(PostgreSQL) ")? + "(PostgreSQL) ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The uid and gid the cluster's processes run as (when we are root).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn lookup_user(name: &str) -> Result<RunAs, ClusterError> {
    let user_err = |problem: String| ClusterError::User { user: name.to_string(), problem };
    let cname = std::ffi::CString::new(name).map_err(|_| user_err(format!("the user name {name:?} holds a NUL byte")))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: pwd and buf outlive the call; getpwnam_r (unlike getpwnam) keeps no static
        // state, so other threads looking up users cannot clobber the result.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(user_err(format!("user {name:?} could not be looked up: {}", io::Error::from_raw_os_error(rc))));
        }
        if found.is_null() {
            return Err(user_err(format!("OS user {name:?} (EF__DRILL_OS_USER) does not exist")));
        }
        if pwd.pw_uid == 0 {
            return Err(user_err(format!("OS user {name:?} (EF__DRILL_OS_USER) is root, which PostgreSQL refuses to run as")));
        }
        return Ok(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid });
    }
}

/// "C.UTF-8" when this system's C library has it (glibc 2.35+ builds it in; Debian has it), so
/// the cluster's default is UTF-8 aware; otherwise "C", which accepts UTF8 encoding too.
fn cluster_locale() -> &'static str {
    // SAFETY: a NUL-terminated name; a returned locale is freed at once.
    unsafe {
        let loc = libc::newlocale(libc::LC_ALL_MASK, c"C.UTF-8".as_ptr(), std::ptr::null_mut());
        if loc.is_null() {
            "C"
        } else {
            libc::freelocale(loc);
            "C.UTF-8"
        }
    }
}

/// The settings every child (initdb, postgres) gets.
fn child_command(program: &Path, dir: &Path, run_as: Option<RunAs>, locale: &str) -> Command {
    let mut cmd = Command::new(program);
    // The parent's environment may hold EF__DB_PASSWORD, AWS keys, PG* settings of production:
    // none of it belongs to the drill server.
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("LANG", locale).env("LC_ALL", locale);
    // Our own working directory may not be searchable by the server's user (/root).
    cmd.current_dir(dir).stdin(Stdio::null());
    // A group of its own: a terminal's Ctrl-C goes to ef-backup, which stops the drill in order,
    // instead of straight to the server.
    cmd.process_group(0);
    if let Some(r) = run_as {
        // std applies gid, then setgroups(0) (dropping root's supplementary groups), then uid —
        // all before the pre_exec closure below.
        cmd.uid(r.uid).gid(r.gid);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (sigprocmask, prctl, getppid), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // signals::on_first blocks SIGINT and SIGTERM in every thread, and exec keeps the
            // mask: the server must take the SIGINT that stops it.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Set after the uid switch above, which would clear it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl: nobody would ever kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd
}

/// The thread the postmaster was spawned from. PR_SET_PDEATHSIG fires when the spawning
/// *thread* ends, not the process: spawned from a caller's thread (a pool thread that ends
/// when idle, say) the server would be killed in the middle of a drill. This thread lives
/// until the cluster is gone.
struct Keeper {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    fn spawn(mut cmd: Command) -> io::Result<(Child, Keeper)> {
        let (child_tx, child_rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("ef-drill-server".into()).spawn(move || {
            let spawned = cmd.spawn();
            let ok = spawned.is_ok();
            if child_tx.send(spawned).is_ok() && ok {
                // Returns when the Sender is dropped: Keeper::release.
                let _ = released.recv();
            }
        })?;
        let mut keeper = Keeper { release: Some(release), thread: Some(thread) };
        match child_rx.recv() {
            Ok(Ok(child)) => Ok((child, keeper)),
            Ok(Err(err)) => {
                keeper.release();
                Err(err)
            }
            Err(_) => {
                keeper.release();
                Err(io::Error::other("the thread spawning the drill server ended"))
            }
        }
    }

    /// Only once the server is dead: ending the thread SIGKILLs it.
    fn release(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Server {
    child: Child,
    keeper: Keeper,
}

/// A running throwaway cluster. [`Throwaway::stop`] shuts it down and removes it; dropping it
/// without `stop` (an error, a panic) kills it and removes it.
pub struct Throwaway {
    /// Canonical: processes are recognised by their working directory under it.
    dir: PathBuf,
    data: PathBuf,
    server: Option<Server>,
    /// The postmaster's System V segment (key, id), which survives a SIGKILLed server.
    shm: Option<(libc::key_t, libc::c_int)>,
    finished: bool,
}

impl Throwaway {
    /// initdb into a new directory `ef-drill-<pid>-<random>` under `base_dir` (default: the
    /// system's temporary directory) and start a server there that listens on a unix socket in
    /// that directory only; returns once it accepts connections. As root, the cluster runs as
    /// `os_user` (which must exist and not be root); otherwise as ourselves, `os_user` unused.
    pub fn start(bins: &ServerBins, os_user: &str, base_dir: Option<&Path>) -> Result<Throwaway, ClusterError> {
        // SAFETY: geteuid cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 { Some(lookup_user(os_user)?) } else { None };
        let dir = make_private_dir(base_dir, run_as)?;
        let mut cluster = Throwaway { data: dir.join("data"), dir, server: None, shm: None, finished: false };
        // From here on, an early return drops `cluster`, which removes the directory.
        let socket = cluster.dir.join(format!(".s.PGSQL.{PORT}"));
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ClusterError::SocketPath { path: socket, len });
        }
        let locale = cluster_locale();
        cluster.initdb(bins, run_as, locale)?;
        cluster.spawn_server(bins, run_as, locale)?;
        cluster.wait_ready()?;
        cluster.shm = shm_ids(&cluster.data);
        tracing::debug!(dir = %cluster.dir.display(), pid = cluster.pid(), major = bins.major, "drill server started");
        Ok(cluster)
    }

    /// The directory holding the server's socket: the `host` to connect to.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        PORT
    }

    /// The cluster's only role, a superuser; no password (trust over the private socket).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The postmaster's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }

    /// A libpq connection to `dbname` as the superuser.
    pub fn connect(&self, dbname: &str) -> Result<Conn, PqError> {
        let host = self.dir.to_string_lossy();
        let port = PORT.to_string();
        Conn::connect(&[
            ("host", &host),
            ("port", &port),
            ("user", SUPERUSER),
            ("dbname", dbname),
            ("application_name", "ef-backup drill"),
            // The operator's PGSSLMODE etc. are meant for production, not for this socket.
            ("sslmode", "disable"),
            ("gssencmode", "disable"),
            ("connect_timeout", "10"),
        ])
    }

    /// Fast shutdown (SIGINT; after 30 s every process of the cluster is killed), then the
    /// directory is removed — also when the shutdown failed. An error when the server had died
    /// before, or something could not be removed.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        let result = self.shutdown(true);
        self.finished = true;
        result
    }

    fn initdb(&mut self, bins: &ServerBins, run_as: Option<RunAs>, locale: &str) -> Result<(), ClusterError> {
        let log_path = self.dir.join("initdb.log");
        let (out, err) = log_files(&log_path)?;
        let mut cmd = child_command(&bins.dir.join("initdb"), &self.dir, run_as, locale);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=reject", "--encoding=UTF8"])
            .arg(format!("--locale={locale}"))
            .arg("--no-sync")
            .stdout(out)
            .stderr(err);
        let failed = |status: String, this: &Self| ClusterError::Initdb { status, hint: this.access_hint(run_as), log: log_tail(&log_path) };
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            // Also where a user who cannot enter the directory fails (its chdir).
            Err(e) => return Err(failed(format!("cannot run {}: {e}", bins.dir.join("initdb").display()), self)),
        };
        match wait_timeout(&mut child, INITDB_TIMEOUT) {
            Ok(Some(s)) if s.success() => Ok(()),
            Ok(Some(s)) => Err(failed(s.to_string(), self)),
            Ok(None) | Err(_) => {
                // initdb's own children (postgres --boot/--single) stay in its group.
                // SAFETY: plain signal calls on a pid we spawned and have not reaped.
                unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
                Err(failed(format!("did not finish within {} s", INITDB_TIMEOUT.as_secs()), self))
            }
        }
    }

    fn spawn_server(&mut self, bins: &ServerBins, run_as: Option<RunAs>, locale: &str) -> Result<(), ClusterError> {
        let (out, err) = log_files(&self.dir.join("server.log"))?;
        let mut cmd = child_command(&bins.dir.join("postgres"), &self.dir, run_as, locale);
        cmd.arg("-D").arg(&self.data).arg("-k").arg(&self.dir).arg("-p").arg(PORT.to_string());
        for (name, value) in SETTINGS {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.arg("-c").arg(format!("max_connections={}", max_connections()));
        cmd.stdout(out).stderr(err);
        let (child, keeper) = Keeper::spawn(cmd).map_err(ClusterError::io("cannot run", &bins.dir.join("postgres")))?;
        self.server = Some(Server { child, keeper });
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            let Some(server) = self.server.as_mut() else { return Err(self.start_error("it was not started".into())) };
            match server.child.try_wait() {
                Ok(Some(status)) => return Err(self.start_error(format!("it exited ({status})"))),
                Ok(None) => {}
                Err(e) => return Err(self.start_error(format!("cannot watch it: {e}"))),
            }
            let last = match self.connect("postgres") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() >= READY_TIMEOUT {
                return Err(self.start_error(format!("it did not accept connections within {} s (last: {last})", READY_TIMEOUT.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_error(&self, detail: String) -> ClusterError {
        ClusterError::Start { detail, log: log_tail(&self.dir.join("server.log")) }
    }

    /// Why initdb may have failed as another user: a directory above ours it cannot enter.
    fn access_hint(&self, run_as: Option<RunAs>) -> String {
        let Some(r) = run_as else { return String::new() };
        match self.dir.ancestors().skip(1).find(|a| !searchable(a, r)) {
            Some(a) => format!("; note: uid {} cannot enter {} — choose a base directory every user may enter", r.uid, a.display()),
            None => String::new(),
        }
    }

    fn shutdown(&mut self, graceful: bool) -> Result<(), ClusterError> {
        let mut result = Ok(());
        // Read before the server goes: a clean shutdown removes postmaster.pid (and the segment).
        let shm = self.shm.take().or_else(|| shm_ids(&self.data));
        if let Some(mut server) = self.server.take() {
            let pid = server.child.id() as libc::pid_t;
            let mut exited = match server.child.try_wait() {
                Ok(Some(status)) => {
                    if graceful {
                        result = Err(self.stop_error(format!("had stopped by itself before the drill ended ({status})")));
                    }
                    true
                }
                _ => false,
            };
            if graceful && !exited {
                // SAFETY: signalling our unreaped child.
                unsafe { libc::kill(pid, libc::SIGINT) };
                match wait_timeout(&mut server.child, STOP_TIMEOUT) {
                    Ok(Some(status)) if status.success() => exited = true,
                    Ok(Some(status)) => {
                        result = Err(self.stop_error(format!("ended with {status} on shutdown")));
                        exited = true;
                    }
                    _ => {
                        tracing::warn!(dir = %self.dir.display(), "the drill server did not shut down within {} s; killing it", STOP_TIMEOUT.as_secs())
                    }
                }
            }
            kill_cluster(&self.dir, (!exited).then_some(pid));
            if !exited {
                let _ = server.child.wait();
            }
            server.keeper.release();
        } else {
            // initdb's leftovers, if any.
            kill_cluster(&self.dir, None);
        }
        if let Some((key, id)) = shm {
            remove_shm(key, id);
        }
        if let Err(e) = remove_dir(&self.dir) {
            result = result.and(Err(e));
        }
        tracing::debug!(dir = %self.dir.display(), "drill server removed");
        result
    }

    fn stop_error(&self, detail: String) -> ClusterError {
        ClusterError::Stop { detail, log: log_tail(&self.dir.join("server.log")) }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            if let Err(e) = self.shutdown(false) {
                tracing::warn!("removing the drill server: {e}");
            }
        }
    }
}

/// Enough for a restore's parallel sessions (one per core by default) plus verify's.
fn max_connections() -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    20.max(cores + 10)
}

/// `ef-drill-<pid>-<random>`, mode 0700, owned by the server's user; canonical.
fn make_private_dir(base: Option<&Path>, run_as: Option<RunAs>) -> Result<PathBuf, ClusterError> {
    let base = match base {
        Some(b) => b.to_path_buf(),
        None => std::env::temp_dir(),
    };
    let base = std::fs::canonicalize(&base).map_err(ClusterError::io("cannot use the drill's base directory", &base))?;
    let mut attempts = 0;
    let dir = loop {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| ClusterError::Io {
            what: "no random name for a directory in",
            path: base.clone(),
            err: io::Error::other(e.to_string()),
        })?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("ef-drill-{}-{hex}", std::process::id()));
        // mkdir does not follow a symlink planted at the name: it fails with AlreadyExists.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 5 => attempts += 1,
            Err(e) => return Err(ClusterError::Io { what: "cannot create the drill directory", path: dir, err: e }),
        }
    };
    let setup = || -> Result<(), ClusterError> {
        // The umask only takes bits away; make it exactly 0700 whatever it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(ClusterError::io("cannot set the mode of", &dir))?;
        if let Some(r) = run_as {
            std::os::unix::fs::chown(&dir, Some(r.uid), Some(r.gid)).map_err(ClusterError::io("cannot hand over", &dir))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Whether a process of `r` (its primary group only: std drops supplementary groups) may enter
/// `dir`, by the mode bits (ACLs are not read).
fn searchable(dir: &Path, r: RunAs) -> bool {
    let Ok(m) = std::fs::metadata(dir) else { return false };
    let mode = m.mode();
    if m.uid() == r.uid {
        mode & 0o100 != 0
    } else if m.gid() == r.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// stdout and stderr of a child, both appending to `path` (created by us, read only by us). The
/// directory belongs to the drill's OS user, who could plant a symlink at the name: it is never
/// followed (ef-backup may be root), neither here nor in [`log_tail`].
fn log_files(path: &Path) -> Result<(File, File), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(ClusterError::io("cannot create the log", path))?;
    let err = out.try_clone().map_err(ClusterError::io("cannot create the log", path))?;
    Ok((out, err))
}

/// The last lines of a log, on one line, control characters escaped.
fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 16 * 1024;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let cut = len > TAIL_BYTES && f.seek(SeekFrom::Start(len - TAIL_BYTES)).is_ok();
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    if cut {
        // The first line was cut in the middle.
        let start = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        buf.drain(..start);
    }
    crate::db::tail_lines(&buf, LOG_LINES)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process as /proc shows it.
struct Proc {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    /// Start time (clock ticks after boot): tells a process from a later one with its pid.
    start: u64,
}

fn read_proc(pid: libc::pid_t) -> Option<(Proc, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // Field 22 of stat; rest starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((Proc { pid, ppid, start }, state))
}

fn all_procs() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter_map(|pid| Some(read_proc(pid)?.0)).collect()
}

/// Kills every process of the cluster in `dir`: `root` (the postmaster, when still running),
/// its descendants, and any process working inside `dir` (a backend orphaned by a postmaster
/// that died before us). Each is stopped first, so none can fork a process we would miss; once
/// no new one turns up, all are killed. Returns when they are gone (5 s at most).
fn kill_cluster(dir: &Path, root: Option<libc::pid_t>) {
    let me = std::process::id() as libc::pid_t;
    let mut caught: HashMap<libc::pid_t, u64> = HashMap::new();
    if let Some(pid) = root {
        // SAFETY: plain signal calls; pids are only signalled while they are known to be ours.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        caught.insert(pid, read_proc(pid).map_or(0, |(p, _)| p.start));
    }
    loop {
        let mut new = false;
        for p in all_procs() {
            if p.pid == me || caught.contains_key(&p.pid) {
                continue;
            }
            let works_here = std::fs::read_link(format!("/proc/{}/cwd", p.pid)).is_ok_and(|cwd| cwd.starts_with(dir));
            if caught.contains_key(&p.ppid) || works_here {
                unsafe { libc::kill(p.pid, libc::SIGSTOP) };
                caught.insert(p.pid, p.start);
                new = true;
            }
        }
        if !new {
            break;
        }
    }
    if caught.is_empty() {
        return;
    }
    tracing::debug!(dir = %dir.display(), processes = caught.len(), "killing the drill server's processes");
    for &pid in caught.keys() {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Some(pid) = root {
        // Anything that joined the postmaster's group between the scans.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while caught.iter().any(|(&pid, &start)| alive(pid, start)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alive: not gone, not a zombie (its pid still taken, but nothing left to run), not replaced.
fn alive(pid: libc::pid_t, start: u64) -> bool {
    match read_proc(pid) {
        Some((p, state)) => p.start == start && state != 'Z' && state != 'X',
        None => false,
    }
}

/// The postmaster's System V segment from postmaster.pid (line 7: key and id).
fn shm_ids(data: &Path) -> Option<(libc::key_t, libc::c_int)> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let mut fields = text.lines().nth(6)?.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A killed postmaster leaves its (small) System V segment behind, and no later server will
/// ever clean it up: the data directory it belonged to is gone. Only removed when it still has
/// the key and nobody is attached. After a clean shutdown it is gone already.
fn remove_shm(key: libc::key_t, id: libc::c_int) {
    // SAFETY: IPC_STAT writes into ds, which outlives the call.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 && ds.shm_perm.__key == key && ds.shm_nattch == 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn remove_dir(dir: &Path) -> Result<(), ClusterError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A process killed in the middle of a write may still finish it.
            Err(_) if tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(ClusterError::Io { what: "cannot remove the drill directory", path: dir.to_path_buf(), err }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest installed server; CI installs one, so none is a failure unless
    /// EF_TEST_NO_PG is set.
    fn bins() -> Option<ServerBins> {
        let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        majors.sort_unstable();
        let found = majors.iter().rev().find_map(|&m| find_server_bins(m, None).ok());
        if found.is_none() {
            assert!(
                std::env::var_os("EF_TEST_NO_PG").is_some(),
                "no PostgreSQL server binaries found (scripts/setup.sh installs them); set EF_TEST_NO_PG=1 to skip"
            );
        }
        found
    }

    fn start() -> Option<Throwaway> {
        let bins = bins()?;
        Some(Throwaway::start(&bins, "postgres", None).unwrap())
    }

    /// Processes that still belong to the cluster in `dir`: their command line names it or
    /// they work inside it.
    fn leftovers(dir: &Path) -> Vec<String> {
        let needle = dir.to_string_lossy().into_owned();
        all_procs()
            .into_iter()
            .filter(|p| alive(p.pid, p.start))
            .filter_map(|p| {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let cwd = std::fs::read_link(format!("/proc/{}/cwd", p.pid)).ok();
                (cmdline.contains(&needle) || cwd.is_some_and(|c| c.starts_with(dir))).then(|| format!("{}: {cmdline}", p.pid))
            })
            .collect()
    }

    fn children(pid: u32) -> Vec<(libc::pid_t, u64)> {
        all_procs().into_iter().filter(|p| p.ppid == pid as libc::pid_t).map(|p| (p.pid, p.start)).collect()
    }

    fn shm_exists(id: libc::c_int) -> bool {
        // SAFETY: IPC_STAT writes into ds, which outlives the call.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 }
    }

    fn assert_gone(dir: &Path, pids: &[(libc::pid_t, u64)]) {
        assert!(!dir.exists(), "{} is left", dir.display());
        assert_eq!(leftovers(dir), Vec::<String>::new());
        let living: Vec<_> = pids.iter().filter(|&&(pid, start)| alive(pid, start)).collect();
        assert!(living.is_empty(), "processes of the cluster still run: {living:?}");
    }

    #[test]
    fn serves_on_its_socket_only_and_stops_without_a_trace() {
        let Some(bins) = bins() else { return };
        // A base directory of our own, searchable by the server's user.
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = Throwaway::start(&bins, "postgres", Some(base.path())).unwrap();
        let dir = cluster.socket_dir().to_path_buf();
        assert!(dir.starts_with(std::fs::canonicalize(base.path()).unwrap()));
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

        let host = dir.to_string_lossy().into_owned();
        let port = cluster.port().to_string();
        let mut conn = Conn::connect(&[("host", &host), ("port", &port), ("user", cluster.superuser()), ("dbname", "postgres")]).unwrap();
        conn.execute(b"CREATE DATABASE x").unwrap();
        assert_eq!(conn.query("SELECT 1").unwrap(), vec![vec!["1".to_string()]]);
        assert_eq!(conn.query("SHOW listen_addresses").unwrap(), vec![vec![String::new()]]);
        assert_eq!(conn.query("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").unwrap(), vec![vec!["t".to_string()]]);
        assert_eq!(conn.query("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'x'").unwrap(), vec![vec!["UTF8".to_string()]]);

        let pid = cluster.pid().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let postgres = lookup_user("postgres").unwrap();
            let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert_eq!(uid_line.split_whitespace().nth(1).unwrap(), postgres.uid.to_string(), "{uid_line}");
            // Root's supplementary groups are dropped, and postgres's own are not added.
            let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
            assert_eq!(groups.trim_end(), "Groups:");
        }
        let mut pids = children(pid);
        assert!(!pids.is_empty());
        pids.push((pid as libc::pid_t, read_proc(pid as libc::pid_t).unwrap().0.start));

        drop(conn);
        cluster.stop().unwrap();
        assert_gone(&dir, &pids);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn drop_without_stop_kills_even_a_busy_backend() {
        let Some(cluster) = start() else { return };
        let dir = cluster.socket_dir().to_path_buf();
        let mut busy = cluster.connect("postgres").unwrap();
        let spinning = std::thread::spawn(move || busy.execute(b"DO $$BEGIN LOOP PERFORM 1; END LOOP; END$$"));
        // A backend spinning in PL/pgSQL never looks whether its postmaster is alive; only a
        // kill of its own ends it (backends are not in the postmaster's process group).
        let mut conn = cluster.connect("postgres").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let backend: libc::pid_t = loop {
            let rows = conn.query("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'DO %'").unwrap();
            if let Some(row) = rows.first() {
                break row[0].parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the busy query never showed");
            std::thread::sleep(Duration::from_millis(50));
        };
        let pid = cluster.pid().unwrap();
        let mut pids = children(pid);
        assert!(pids.iter().any(|&(p, _)| p == backend));
        pids.push((pid as libc::pid_t, read_proc(pid as libc::pid_t).unwrap().0.start));

        let (_, shm) = cluster.shm.unwrap();
        assert!(shm_exists(shm));
        drop(cluster);
        assert_gone(&dir, &pids);
        assert!(!shm_exists(shm), "a killed server's System V segment is left");
        assert!(spinning.join().unwrap().is_err());
        drop(conn);
    }

    #[test]
    fn a_panic_in_the_drill_leaves_nothing_behind() {
        let Some(bins) = bins() else { return };
        let seen = std::sync::Mutex::new(None);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let cluster = Throwaway::start(&bins, "postgres", None).unwrap();
            let _conn = cluster.connect("postgres").unwrap();
            let pid = cluster.pid().unwrap();
            let mut pids = children(pid);
            pids.push((pid as libc::pid_t, read_proc(pid as libc::pid_t).unwrap().0.start));
            *seen.lock().unwrap() = Some((cluster.socket_dir().to_path_buf(), pids));
            panic!("the drill failed");
        }));
        assert!(outcome.is_err());
        let (dir, pids) = seen.lock().unwrap().take().unwrap();
        assert_gone(&dir, &pids);
    }

    #[test]
    fn outlives_the_thread_that_started_it() {
        let Some(bins) = bins() else { return };
        let cluster = std::thread::spawn(move || Throwaway::start(&bins, "postgres", None).unwrap()).join().unwrap();
        // PR_SET_PDEATHSIG would have fired when that thread ended, had it spawned the server.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(cluster.connect("postgres").unwrap().query("SELECT 1").unwrap(), vec![vec!["1".to_string()]]);
        cluster.stop().unwrap();
    }

    /// Run by `dies_with_us` in a process of its own: holds a cluster until killed.
    #[test]
    fn holds_a_cluster_until_killed() {
        let Some(out) = std::env::var_os("EF_TEST_DRILL_HOLD") else { return };
        let cluster = start().unwrap();
        std::fs::write(out, format!("{}\n{}", cluster.pid().unwrap(), cluster.socket_dir().display())).unwrap();
        std::thread::sleep(Duration::from_secs(120));
    }

    #[test]
    fn dies_with_us() {
        if bins().is_none() {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let out = scratch.path().join("held");
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "drill::cluster::tests::holds_a_cluster_until_killed", "--nocapture"])
            .env("EF_TEST_DRILL_HOLD", &out)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let text = loop {
            match std::fs::read_to_string(&out) {
                Ok(t) if t.contains('\n') => break t,
                _ if Instant::now() < deadline && holder.try_wait().unwrap().is_none() => std::thread::sleep(Duration::from_millis(50)),
                _ => panic!("the holder never started a cluster"),
            }
        };
        let (pid, dir) = text.split_once('\n').unwrap();
        let (pid, dir): (libc::pid_t, PathBuf) = (pid.parse().unwrap(), PathBuf::from(dir));
        let start = read_proc(pid).unwrap().0.start;
        // SAFETY: our child.
        unsafe { libc::kill(holder.id() as libc::pid_t, libc::SIGKILL) };
        holder.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let survived = alive(pid, start);
        // What a killed ef-backup leaves: the directory (and the server's children, until they
        // notice) and the System V segment. Cleaned up here as Drop would have.
        let shm = shm_ids(&dir.join("data"));
        kill_cluster(&dir, None);
        if let Some((key, id)) = shm {
            remove_shm(key, id);
        }
        remove_dir(&dir).unwrap();
        assert!(!survived, "the postmaster outlived the process that started it");
    }

    #[test]
    fn the_server_inherits_no_secret() {
        // Edition 2021: set_var is safe; nothing else in this crate's tests reads this variable.
        std::env::set_var("EF__DB_PASSWORD", "topsecret");
        let Some(cluster) = start() else { return };
        let pid = cluster.pid().unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let mut names: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v.split(|&b| b == b'=').next().unwrap()).into_owned())
            .collect();
        names.sort();
        assert!(!environ.windows(b"topsecret".len()).any(|w| w == b"topsecret"));
        assert_eq!(names, ["LANG", "LC_ALL", "PATH"]);
        cluster.stop().unwrap();
    }

    #[test]
    fn a_missing_os_user_is_named_and_nothing_is_left() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let Some(bins) = bins() else { return };
        let base = tempfile::tempdir().unwrap();
        let err = Throwaway::start(&bins, "ef-no-such-user", Some(base.path())).err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, ClusterError::User { .. }), "{text}");
        assert!(text.contains("\"ef-no-such-user\"") && text.contains("EF__DRILL_OS_USER") && text.contains("EF__DRILL_DB_HOST"), "{text}");
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_base_directory_the_server_user_cannot_enter_is_pointed_out() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let Some(bins) = bins() else { return };
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = Throwaway::start(&bins, "postgres", Some(base.path())).err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, ClusterError::Initdb { .. }), "{text}");
        assert!(text.contains(&format!("cannot enter {}", std::fs::canonicalize(base.path()).unwrap().display())), "{text}");
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_major_not_installed_names_where_it_looked() {
        let err = find_server_bins(99, Some(Path::new("/nonexistent/ef-pg-bin"))).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClusterError::NoServerBins { major: 99, .. }));
        for place in ["/nonexistent/ef-pg-bin (no initdb)", "/usr/lib/postgresql/99/bin", "/usr/pgsql-99/bin", "EF__PG_BIN"] {
            assert!(text.contains(place), "{place} missing from: {text}");
        }
    }

    #[test]
    fn a_configured_directory_of_another_major_is_passed_over() {
        let Some(bins) = bins() else { return };
        let other = bins.major + 1;
        let text = find_server_bins(other, Some(&bins.dir)).unwrap_err().to_string();
        assert!(text.contains(&format!("{} (initdb is PostgreSQL {})", bins.dir.display(), bins.major)), "{text}");
        assert_eq!(find_server_bins(bins.major, Some(&bins.dir)).unwrap(), bins);
    }

    #[test]
    fn versions() {
        assert_eq!(major_of_version_num(150018), 15);
        assert_eq!(major_of_version_num(90624), 9);
        assert_eq!(major_of_version_num(170000), 17);
        assert_eq!(parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(15));
        assert_eq!(parse_major("initdb (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1\n"), Some(18));
        assert_eq!(parse_major("something else"), None);
    }
}

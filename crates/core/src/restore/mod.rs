//! Restoring a plain `.sql.gz` (the original plugin ran `pg_restore` on it, which cannot work).
//!
//! A restore never leaves the target half-done: the dump goes into a fresh scratch database,
//! and only when gzip, the dump's footer and psql all succeeded is the scratch database renamed
//! into place. `psql --single-transaction` alone would not do: the large-object section of a
//! plain dump carries its own BEGIN/COMMIT and ends the outer transaction early.

pub mod parallel;
pub mod sqlscan;
mod tee;

use std::io::{self, BufRead, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::codec::{DecodeError, Format, Keys};
use crate::db::{quote_ident, quote_literal, DbError, PgTools};
use crate::dump::{Completeness, DumpFacts};
use crate::store::Mirror;
use crate::util::lock;
use parallel::{LoadError, LoadOptions, LoadStats, Loader};

pub mod all;
pub mod globals;
pub mod props;
pub mod swap;

/// Where a backup is read from.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    /// A backup of a mirror store (S3): `name` as the store lists it.
    Store {
        store: std::sync::Arc<dyn Mirror>,
        name: String,
    },
}

/// A backup to read, and the keys that decrypt it if it is encrypted.
#[derive(Clone)]
pub struct Source {
    pub origin: Origin,
    pub keys: Keys,
    /// The SHA-256 its (trusted) manifest records: a stream whose bytes end up hashing to
    /// anything else fails as damaged, before anything restored from it is put in place.
    pub sha256: Option<[u8; 32]>,
    /// The very bytes [`Source::verify_and_pin`] checked: later reads get them, whatever
    /// replaces the file or object meanwhile.
    pin: Option<Pin>,
}

#[derive(Debug, Clone)]
enum Pin {
    /// The file as it was opened: a new file under the same name is not read.
    File(std::sync::Arc<std::fs::File>),
    /// The object version with this ETag: a replaced object fails the read.
    Etag(String),
}

/// Reads a pinned file from the start, by position, so readers never share an offset.
struct PinnedFile {
    file: std::sync::Arc<std::fs::File>,
    at: u64,
}

impl Read for PinnedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Source {
    pub fn file(path: impl Into<PathBuf>, keys: &Keys) -> Source {
        Source { origin: Origin::File(path.into()), keys: keys.clone(), sha256: None, pin: None }
    }

    pub fn store(store: std::sync::Arc<dyn Mirror>, name: impl Into<String>, keys: &Keys) -> Source {
        Source { origin: Origin::Store { store, name: name.into() }, keys: keys.clone(), sha256: None, pin: None }
    }

    /// The backup's file (object) name, without directory or key prefix.
    pub fn file_name(&self) -> String {
        let full = match &self.origin {
            Origin::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Origin::Store { name, .. } => name.clone(),
        };
        full.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// A small file beside the backup (its manifest or signature), at most `max` bytes; None
    /// when there is none.
    pub fn companion(&self, suffix: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
        match &self.origin {
            Origin::File(p) => {
                let mut path = p.clone().into_os_string();
                path.push(suffix);
                let path = PathBuf::from(path);
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
                };
                let mut bytes = Vec::new();
                file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if bytes.len() as u64 > max {
                    return Err(format!("{} is larger than {max} bytes: not a file ef-backup wrote", path.display()));
                }
                Ok(Some(bytes))
            }
            Origin::Store { store, name } => store.get_small(&format!("{name}{suffix}"), max),
        }
    }

    pub fn label(&self) -> String {
        match &self.origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Store { store, name } => store.url(name),
        }
    }

    /// The stored bytes, undecoded (the pinned ones once [`Source::verify_and_pin`] ran).
    pub fn raw(&self) -> Result<Box<dyn Read + Send>, RestoreError> {
        let open_err = |err: String| RestoreError::Open { backup: self.label(), err };
        Ok(match (&self.origin, &self.pin) {
            (Origin::File(_), Some(Pin::File(file))) => Box::new(PinnedFile { file: std::sync::Arc::clone(file), at: 0 }),
            (Origin::File(p), _) => Box::new(std::fs::File::open(p).map_err(|e| open_err(e.to_string()))?),
            (Origin::Store { store, name }, Some(Pin::Etag(etag))) => store.open_at(name, Some(etag)).map_err(open_err)?.0,
            (Origin::Store { store, name }, _) => store.open(name).map_err(open_err)?,
        })
    }

    /// Reads the whole stored backup once and checks it against [`Source::sha256`], before a
    /// single byte of it reaches psql; then pins what was read (the open file, or the S3
    /// object's ETag), so that the restore reads exactly the bytes that were checked. Without
    /// this, a file swapped in beside a genuine signed manifest would run its SQL before the
    /// hash at the end of the stream caught it.
    pub fn verify_and_pin(&mut self) -> Result<(), RestoreError> {
        use sha2::Digest;
        let Some(want) = self.sha256 else { return Ok(()) };
        let open_err = |err: String| RestoreError::Open { backup: self.label(), err };
        let mut hasher = sha2::Sha256::new();
        let read_err = |e: io::Error| RestoreError::Damaged { backup: self.label(), reason: format!("reading it failed: {e}") };
        let pin = match &self.origin {
            Origin::File(p) => {
                let file = std::fs::File::open(p).map_err(|e| open_err(e.to_string()))?;
                let meta = file.metadata().map_err(|e| open_err(e.to_string()))?;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                let mut original = PinnedFile { file: std::sync::Arc::new(file), at: 0 };
                match others_may_write(std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::mode(&meta), me) {
                    // Only its owner (this user, or root) can change it: the open file is pinned.
                    None => {
                        io::copy(&mut original, &mut hasher).map_err(read_err)?;
                        Some(Pin::File(original.file))
                    }
                    // Someone else could rewrite it in place between this check and the
                    // restore's read of the same open file: the bytes checked are copied as
                    // they are read, and the restore reads the copy (unlinked, this user's).
                    Some(who) => {
                        let dir = std::env::temp_dir();
                        tracing::info!(
                            "{}: {who} may write it, so the bytes checked are copied to a private file in {} and restored from there",
                            self.label(),
                            dir.display()
                        );
                        let copy_err = |e: io::Error| {
                            open_err(format!(
                                "{who} may write it, and copying it to a private file in {} failed: {e} — free space there (or set TMPDIR), or make the file writable by its owner only (chmod go-w; chown it to the user running ef-backup)",
                                dir.display()
                            ))
                        };
                        let mut copy = io::BufWriter::with_capacity(256 << 10, tempfile::tempfile_in(&dir).map_err(copy_err)?);
                        let mut buf = vec![0u8; 256 << 10];
                        loop {
                            let n = match original.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                Err(e) => return Err(read_err(e)),
                            };
                            sha2::Digest::update(&mut hasher, &buf[..n]);
                            io::Write::write_all(&mut copy, &buf[..n]).map_err(copy_err)?;
                        }
                        let copy = copy.into_inner().map_err(|e| copy_err(e.into_error()))?;
                        Some(Pin::File(std::sync::Arc::new(copy)))
                    }
                }
            }
            Origin::Store { store, name } => {
                let (mut reader, etag) = store.open_at(name, None).map_err(open_err)?;
                // Without a version to ask for, a later read could get other bytes.
                let etag = etag.ok_or_else(|| open_err("the store names no version (ETag) of it, so the bytes checked cannot be pinned".into()))?;
                io::copy(&mut reader, &mut hasher).map_err(read_err)?;
                Some(Pin::Etag(etag))
            }
        };
        let got: [u8; 32] = hasher.finalize().into();
        if got != want {
            return Err(hash_mismatch(self, &got, &want));
        }
        self.pin = pin;
        Ok(())
    }

    /// The format the name says. A file of another name (a copy renamed by hand) is read as
    /// gzip, the original's format, unless it starts like an age file; the decoder says so
    /// clearly when it is neither.
    fn format(&self) -> Format {
        Format::of_name(&self.label()).unwrap_or(Format::GZIP)
    }

    /// The plain dump of `encoded` (this backup's bytes, possibly counted on the way).
    fn decode<'a>(&self, encoded: impl Read + 'a) -> Result<Box<dyn Read + 'a>, RestoreError> {
        let mut encoded = io::BufReader::with_capacity(256 * 1024, encoded);
        let mut format = self.format();
        if !format.encrypted && crate::codec::seal::looks_like_age(&mut encoded) {
            format = format.sealed();
        }
        format.decoder(encoded, &self.keys).map_err(|e| match e {
            DecodeError::Io(e) => corrupt(self, e),
            e @ DecodeError::NotAge(_) => damaged(self, e.to_string()),
            other => RestoreError::Key { backup: self.label(), reason: other.to_string() },
        })
    }

    /// The plain dump of this backup.
    pub(crate) fn decoded(&self) -> Result<Box<dyn Read>, RestoreError> {
        self.decode(self.raw()?)
    }
}

/// Who besides this user (uid `me`) and root may write a file of owner `uid` and `mode`: its
/// owner, its group or everyone (None: nobody).
fn others_may_write(uid: u32, mode: u32, me: u32) -> Option<String> {
    if uid != me && uid != 0 {
        Some(format!("its owner (uid {uid})"))
    } else if mode & 0o020 != 0 {
        Some("its group".into())
    } else if mode & 0o002 != 0 {
        Some("everyone".into())
    } else {
        None
    }
}

/// Where administrative statements (CREATE/ALTER/DROP DATABASE) are run from.
pub const MAINTENANCE_DB: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot open backup {backup}: {err}")]
    Open { backup: String, err: String },
    #[error("cannot decrypt backup {backup}: {reason}; nothing was restored")]
    Key { backup: String, reason: String },
    #[error("backup {backup} is damaged: {reason}; nothing was restored — use another backup (ef-backup list)")]
    Damaged { backup: String, reason: String },
    #[error("backup {backup} holds a server's globals (roles, tablespaces), not a database: `ef-backup restore --all` restores it with the databases of its run")]
    GlobalsBackup { backup: String },
    #[error("database {db} already exists and is not empty; pass --drop-existing to replace it (the current contents are dropped only after the restore succeeded)")]
    TargetNotEmpty { db: String },
    #[error("database {db} does not exist; pass --create to create it")]
    TargetMissing { db: String },
    #[error("loading the backup into scratch database {db} failed, the target was not touched: {err}")]
    Load { db: String, err: LoadError },
    #[error("refusing to restore into {db}: it is a system database ({why}) — restore into another database, or pass --allow-system-db if you really mean to replace it")]
    SystemDb { db: String, why: &'static str },
    #[error("backup {backup} names roles this server does not have — as owners: {owners}; in grants or policies: {grantees} — nothing was restored: create them first (a globals backup of the same server holds them; `pg_dumpall --globals-only` writes one), or restore with --no-owner (leaves out the owners) and --no-privileges (leaves out the grants)")]
    MissingRoles { backup: String, owners: String, grantees: String },
    #[error(transparent)]
    Properties(#[from] props::ApplyError),
    #[error(transparent)]
    Swap(#[from] swap::SwapError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What a pass over a backup file found.
#[derive(Debug, Default)]
pub struct BackupCheck {
    pub compressed_bytes: u64,
    /// The SHA-256 of the stored bytes.
    pub sha256: [u8; 32],
    pub dump_bytes: u64,
    /// What the dump says it holds: COPY row counts, sequence values, large objects (empty when
    /// the reader asked for [`Facts::Skip`]).
    pub facts: DumpFacts,
    /// How the dump was loaded (when it was).
    pub load: LoadStats,
    /// The database's properties, from the backup's first line (None: a backup without it).
    pub properties: Option<props::DbProps>,
}

/// Role names for a message: quoted (a name may hold anything), or "none".
fn list(roles: &[String]) -> String {
    if roles.is_empty() {
        return "none".into();
    }
    roles.iter().map(|r| format!("{:?}", r)).collect::<Vec<_>>().join(", ")
}

fn damaged(source: &Source, reason: impl Into<String>) -> RestoreError {
    RestoreError::Damaged { backup: source.label(), reason: reason.into() }
}

fn hash_mismatch(source: &Source, got: &[u8; 32], want: &[u8; 32]) -> RestoreError {
    let (got, want) = (crate::util::hex(got), crate::util::hex(want));
    damaged(source, format!("its bytes hash to SHA-256 {got}, not the {want} its manifest records: it was changed or damaged after it was written"))
}

/// The stream failed to decode: a damaged file (or a failing store, whose error says so).
fn corrupt(source: &Source, e: io::Error) -> RestoreError {
    damaged(source, format!("{} data is corrupt or truncated ({e})", source.format().describe()))
}

/// Reads a whole backup: gzip integrity (every member's CRC and length), the dump's footer,
/// and the rows of each COPY block. Calls `sink` with the SQL as it goes.
pub fn scan(source: &Source, sink: impl FnMut(&[u8]) -> Result<(), RestoreError>) -> Result<BackupCheck, RestoreError> {
    scan_from(source, source.raw()?, Facts::Collect, sink)
}

/// Whether a read of a backup collects what the dump holds ([`BackupCheck::facts`]): hashing
/// every row is a tenth of a restore's client CPU, and only comparisons need it (`verify
/// --against-dump`, `verify --offline`, drills) — a restore's integrity is the stored bytes'
/// hash and gzip's CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facts {
    Collect,
    Skip,
}

/// [`scan`] of `raw`, the source's stored bytes.
fn scan_from(
    source: &Source,
    raw: Box<dyn Read + Send>,
    collect: Facts,
    mut sink: impl FnMut(&[u8]) -> Result<(), RestoreError>,
) -> Result<BackupCheck, RestoreError> {
    let mut counted = Counted { inner: raw, bytes: 0, sha256: Default::default() };
    let mut gz = io::BufReader::with_capacity(256 * 1024, source.decode(&mut counted)?);
    let gzip_err = |e: io::Error| corrupt(source, e);
    // ef-backup's own first line (the database's properties) is not part of the dump: it is
    // read here and never reaches psql or the dump's checks.
    let (first, properties) = first_line(source, &mut gz)?;
    if matches!(globals::parse_header(&first), Ok(Some(_))) {
        return Err(RestoreError::GlobalsBackup { backup: source.label() });
    }
    let mut complete = Completeness::default();
    let mut facts = DumpFacts::default();
    let mut dump_bytes = 0u64;
    let mut take = |chunk: &[u8]| -> Result<(), RestoreError> {
        // No pg_dump output holds a NUL byte, and psql would cut the line there — reading COPY
        // data differently from the scanner.
        if memchr::memchr(0, chunk).is_some() {
            return Err(damaged(source, "it contains a NUL byte, which no pg_dump output does"));
        }
        complete.update(chunk);
        if collect == Facts::Collect {
            facts.update(chunk);
        }
        dump_bytes += chunk.len() as u64;
        sink(chunk)
    };
    if properties.is_none() {
        take(&first)?;
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(gzip_err(e)),
        };
        take(&buf[..n])?;
    }
    complete.verify().map_err(|r| damaged(source, r))?;
    // A restore's loader finds this too (it follows COPY data whether or not facts are kept).
    if let Some(table) = facts.unterminated_copy() {
        return Err(damaged(source, format!("it ends inside the rows of {table}, without the `\\.` line that ends them")));
    }
    drop(gz);
    // The decoder may stop before the end (bytes after the last gzip member or zstd frame are
    // an error there, but not every path reads that far): the hash covers every byte.
    io::copy(&mut counted, &mut io::sink()).map_err(|e| corrupt(source, e))?;
    use sha2::Digest;
    let sha256: [u8; 32] = counted.sha256.finalize().into();
    if let Some(want) = source.sha256.filter(|want| *want != sha256) {
        return Err(hash_mismatch(source, &sha256, &want));
    }
    Ok(BackupCheck { compressed_bytes: counted.bytes, sha256, dump_bytes, facts, load: LoadStats::default(), properties })
}

/// The database properties a backup carries in its first line, read without reading the rest
/// (restore plans the new database before it loads it).
pub fn backup_properties(source: &Source) -> Result<Option<props::DbProps>, RestoreError> {
    Ok(first_line(source, &mut io::BufReader::new(source.decoded()?))?.1)
}

/// The decoded stream's first line (at most [`props::HEADER_MAX`] bytes) and the properties it
/// carries, if it is ef-backup's properties line.
fn first_line(source: &Source, decoded: &mut impl BufRead) -> Result<(Vec<u8>, Option<props::DbProps>), RestoreError> {
    let mut first = Vec::new();
    let read = decoded.take(props::HEADER_MAX as u64).read_until(b'\n', &mut first);
    read.map_err(|e| corrupt(source, e))?;
    let properties = props::properties_of(&first).map_err(|r| damaged(source, r))?;
    Ok((first, properties))
}

struct Counted<R> {
    inner: R,
    bytes: u64,
    sha256: sha2::Sha256,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.sha256.update(&buf[..n]);
        Ok(n)
    }
}

/// A scratch database name: unique per process and moment, short enough for PostgreSQL.
pub fn scratch_name(purpose: &str) -> String {
    format!("ef_{purpose}_{}_{}", std::process::id(), crate::util::now().max(0))
}

fn database_exists(tools: &PgTools, db: &str) -> Result<bool, DbError> {
    Ok(tools.query_value(MAINTENANCE_DB, &format!("SELECT count(*) FROM pg_database WHERE datname = {}", quote_literal(db)))? != "0")
}

/// True when `db` holds no user relations or functions.
fn database_is_empty(tools: &PgTools, db: &str) -> Result<bool, DbError> {
    let sql = "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
             + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))";
    Ok(tools.query_value(db, sql)? == "0")
}

/// Drops a scratch database when dropped itself, unless kept.
pub struct Scratch<'a> {
    tools: &'a PgTools,
    pub name: String,
    keep: bool,
}

impl<'a> Scratch<'a> {
    fn new(tools: &'a PgTools, name: &str) -> Scratch<'a> {
        *lock(&LIVE_SCRATCH) = Some((tools.clone(), name.to_string()));
        Scratch { tools, name: name.to_string(), keep: false }
    }
}

/// Drops `name` even when the dump's own SQL marked it a template, which DROP refuses.
fn drop_scratch(tools: &PgTools, name: &str) -> Result<(), DbError> {
    let _ = tools.execute(MAINTENANCE_DB, &format!("ALTER DATABASE {} IS_TEMPLATE false", quote_ident(name)));
    tools.execute(MAINTENANCE_DB, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)))
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        lock(&LIVE_SCRATCH).take();
        if !self.keep {
            if let Err(e) = drop_scratch(self.tools, &self.name) {
                tracing::warn!("could not drop scratch database {}: {e} (drop it by hand)", self.name);
            }
        }
    }
}

/// The scratch database being loaded, for the signal watcher. (Once renamed into place it no
/// longer exists under this name, so dropping it by name can never hit the restored target.)
static LIVE_SCRATCH: std::sync::Mutex<Option<(PgTools, String)>> = std::sync::Mutex::new(None);

/// The signal that interrupted a restore or verify, if one did.
pub fn interrupted_by() -> Option<i32> {
    crate::signals::received()
}

/// For `restore` and `verify`: SIGINT and SIGTERM drop the scratch database being loaded
/// (which ends its psql sessions, so the command fails and exits) instead of killing the
/// process and leaving the database behind. Call before any thread is started.
pub fn drop_scratch_on_signal() {
    crate::signals::on_first(|sig| {
        let live = lock(&LIVE_SCRATCH).clone();
        match live {
            Some((tools, name)) => {
                eprintln!("ef-backup: interrupted: dropping scratch database {name}");
                if let Err(e) = drop_scratch(&tools, &name) {
                    eprintln!("ef-backup: could not drop scratch database {name}: {e} (drop it by hand)");
                }
            }
            None => std::process::exit(128 + sig),
        }
    });
}

/// Creates `name` with `create_sql` and restores the backup into it, checking the stream as it
/// goes: the file is read once, and a backup that turns out damaged (gzip, an incomplete dump)
/// or an SQL error drops the database again, so nothing half-restored is left behind.
pub fn restore_into_new<'a>(
    tools: &'a PgTools,
    source: &Source,
    name: &str,
    create_sql: &str,
    load: LoadOptions,
    facts: Facts,
) -> Result<(Scratch<'a>, BackupCheck), RestoreError> {
    tools.execute(MAINTENANCE_DB, create_sql)?;
    let scratch = Scratch::new(tools, name);
    let load_err = |err| RestoreError::Load { db: name.to_string(), err };
    let mut loader = Loader::start(tools, name, load).map_err(load_err)?;
    let raw = source.raw()?;
    let (raw, ahead) = match loader.take_ahead() {
        Some(ahead) => {
            let (main, second) = tee::tee(raw, READ_AHEAD_WINDOW);
            let source = source.clone();
            (Box::new(main) as Box<dyn Read + Send>, Some(std::thread::spawn(move || read_ahead(&source, second, ahead))))
        }
        None => (raw, None),
    };
    // After a session fails, the rest is still read and checked: garbage from a corrupt gzip
    // member reaches psql before the member's CRC does, and "the backup is damaged" is the
    // truer report than psql's syntax error.
    let mut failed = None;
    let scanned = scan_from(source, raw, facts, |data| {
        if failed.is_none() {
            failed = loader.feed(data).err();
        }
        // An interrupted run must not first read the rest of a big file. A refusal is final
        // for psql (nothing more is fed), but the rest is still read: a gzip stream is one
        // member, its CRC comes last, and garbage from a damaged byte can look like a statement
        // pg_dump never writes — "the backup is damaged" is then the true report.
        if failed.is_some() && interrupted_by().is_some() {
            return Err(load_err(failed.take().expect("a failure")));
        }
        Ok(())
    });
    // A damaged stream is found before `finish`, which would hand psql the cut-off statement at
    // the end; dropping the loader stops every session first.
    let mut check = match (scanned, failed) {
        (Err(e), _) => return Err(e),
        (Ok(_), Some(e)) => return Err(load_err(e)),
        (Ok(check), None) => check,
    };
    check.load = loader.finish().map_err(load_err)?;
    if let Some(thread) = ahead {
        let _ = thread.join();
    }
    Ok((scratch, check))
}

/// How far (in stored bytes) the read-ahead may get in front of the restore's own reading, or
/// the restore in front of it: the memory a restore may use for that.
const READ_AHEAD_WINDOW: usize = 32 << 20;

/// Feeds the read-ahead the dump as the restore reads it: the same stored bytes, decoded again
/// (ef-backup's properties line left out the same way). Ends when it has nothing more to do.
fn read_ahead(source: &Source, raw: tee::TeeReader, mut ahead: parallel::Ahead) {
    let fail = |ahead: parallel::Ahead, e: RestoreError| ahead.read_failed(e.to_string());
    let mut dump = match source.decode(raw) {
        Ok(d) => io::BufReader::with_capacity(256 * 1024, d),
        Err(e) => return fail(ahead, e),
    };
    match first_line(source, &mut dump) {
        Ok((first, None)) if !ahead.feed(&first) => return,
        Ok(_) => {}
        Err(e) => return fail(ahead, e),
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match dump.read(&mut buf) {
            Ok(0) => return,
            // The restore refuses it (see `scan`); nothing from here on is loaded.
            Ok(n) if memchr::memchr(0, &buf[..n]).is_some() => return ahead.read_failed("it contains a NUL byte".into()),
            Ok(n) if !ahead.feed(&buf[..n]) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(ahead, corrupt(source, e)),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub create: bool,
    pub drop_existing: bool,
    /// Allow `template0`, `template1` or `postgres` as the target.
    pub allow_system_db: bool,
    /// Properties for the restored database; they win over the replaced database's.
    pub create_with: props::CreateOptions,
    pub load: LoadOptions,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub target: String,
    pub replaced_existing: bool,
    pub check: BackupCheck,
    pub elapsed: Duration,
    /// The restored database's owner, encoding, locale, tablespace and connection limit, and
    /// where each came from.
    pub properties: Vec<props::PropertyUsed>,
    /// The replaced database, when it could not be dropped after the swap.
    pub leftover: Option<swap::Leftover>,
}

/// Why a database is refused as a target without `--allow-system-db`.
fn system_database(db: &str) -> Option<&'static str> {
    match db {
        "template0" => Some("the pristine template that pg_dump and CREATE DATABASE ... TEMPLATE template0 rely on"),
        "template1" => Some("every new database is copied from template1, so all of them would carry the backup's tables"),
        "postgres" => Some("the default database that tools and ef-backup itself connect to"),
        _ => None,
    }
}

/// Restores `source` into database `target`: refuses up front when the target's state does not
/// match the options, restores into a scratch database created with the target's properties
/// (or the options'), applies the rest of them, then swaps it into place.
pub fn restore(tools: &PgTools, source: &Source, target: &str, opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    if let Some(why) = system_database(target).filter(|_| !opts.allow_system_db) {
        return Err(RestoreError::SystemDb { db: target.into(), why });
    }
    // A database cannot be renamed by a session connected to it.
    let admin_db = if target == MAINTENANCE_DB { "template1" } else { MAINTENANCE_DB };
    let exists = database_exists(tools, target)?;
    match exists {
        false if !opts.create => return Err(RestoreError::TargetMissing { db: target.into() }),
        true if !opts.drop_existing && !database_is_empty(tools, target)? => return Err(RestoreError::TargetNotEmpty { db: target.into() }),
        _ => {}
    }
    let from_file = backup_properties(source)?;
    // Before anything is created: a dump naming roles this server lacks fails on the first
    // `OWNER TO` or `GRANT` otherwise, after part of the load.
    if let Some(p) = &from_file {
        let (owners, grantees) = props::missing_roles(tools, admin_db, &p.object_roles, opts.load.no_owner, opts.load.no_privileges)?;
        if !owners.is_empty() || !grantees.is_empty() {
            return Err(RestoreError::MissingRoles { backup: source.label(), owners: list(&owners), grantees: list(&grantees) });
        }
    }
    // Only a database that is created takes the backup's properties; a replaced one keeps its own.
    let from_backup = if exists { None } else { from_file };
    let create_with = props::CreateOptions { no_owner: opts.load.no_owner, no_privileges: opts.load.no_privileges, ..opts.create_with.clone() };
    let plan = props::plan(tools, admin_db, target, exists, &create_with, from_backup.as_ref())?;
    let scratch_db = scratch_name("restore");
    tracing::info!("restoring {} into scratch database {scratch_db}", source.label());
    let (mut scratch, check) = restore_into_new(tools, source, &scratch_db, &plan.create_sql(&scratch_db), opts.load, Facts::Skip)?;
    // The plan came from a first look at the file, the data from a second read.
    if !exists && check.properties != from_backup {
        return Err(damaged(source, "its database properties line changed while it was read (was the file replaced meanwhile?)"));
    }
    let refused = plan.apply_after_load(tools, admin_db, &scratch_db, target)?;
    let old = scratch_name("replaced");
    if target == MAINTENANCE_DB {
        // Renaming `postgres` waits for no session of ours to be on it.
        tools.forget_admin_session();
    }
    let leftover = swap::swap(
        &swap::Swap { target, scratch: &scratch_db, old: exists.then_some(old.as_str()), old_is_template: plan.props.is_template },
        |sql| tools.execute(admin_db, sql),
        |names| Ok(tools.query(admin_db, &swap::exists_query(names))?.into_iter().filter_map(|row| row.into_iter().next()).collect()),
    )
    .inspect_err(|e| {
        // Said now, not only once the error reaches the terminal: dropping the scratch database
        // first can take a while against a failing server, and an operator may interrupt it.
        if matches!(e, swap::SwapError::RollbackFailed { .. } | swap::SwapError::Unknown { .. }) {
            tracing::error!("{e}");
        }
    })?;
    scratch.keep = true;
    let mut properties = plan.used;
    if !refused.is_empty() {
        properties.push(props::PropertyUsed {
            name: "refused",
            value: refused.join("; "),
            from: "the backup's, which this role may not set: run them as a role that may (a superuser, or with CREATEROLE for per-role settings)"
                .into(),
        });
    }
    Ok(RestoreReport { target: target.into(), replaced_existing: exists, check, elapsed: started.elapsed(), properties, leftover })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn who_else_may_write_a_file() {
        // (owner, mode, me, who)
        let table: &[(u32, u32, u32, Option<&str>)] = &[
            (1000, 0o100600, 1000, None),
            (1000, 0o100644, 1000, None),
            (0, 0o100600, 1000, None),
            (1000, 0o100660, 1000, Some("its group")),
            (1000, 0o100606, 1000, Some("everyone")),
            (1001, 0o100600, 1000, Some("its owner (uid 1001)")),
            (1001, 0o100600, 0, Some("its owner (uid 1001)")),
            (0, 0o100666, 0, Some("its group")),
        ];
        for (i, (uid, mode, me, who)) in table.iter().enumerate() {
            assert_eq!(others_may_write(*uid, *mode, *me).as_deref(), *who, "case {i}");
        }
    }

    /// A file others may write could be rewritten in place after its hash was checked, through
    /// the very file the restore then reads (found by review): its SQL ran before the hash at
    /// the end of the stream caught it. The restore reads the bytes that were checked.
    #[test]
    fn the_checked_bytes_are_restored_though_others_rewrite_the_file_in_place() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let good = b"checked bytes of a backup".repeat(50_000);
        let evil = b"CRAFTED BYTES OF A BACKUP".repeat(50_000);
        // (mode, whether the restore must still read the checked bytes)
        for (mode, private_copy) in [(0o666, true), (0o620, true), (0o600, false)] {
            let path = dir.path().join(format!("app_backup_{mode:o}.sql.gz"));
            std::fs::write(&path, &good).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let mut source = Source::file(&path, &Keys::none());
            source.sha256 = Some(sha2::Sha256::digest(&good).into());
            source.verify_and_pin().unwrap();
            // The rewrite an attacker would time for the moment the check is done.
            std::io::Write::write_all(&mut std::fs::OpenOptions::new().write(true).open(&path).unwrap(), &evil).unwrap();
            let mut read = Vec::new();
            source.raw().unwrap().read_to_end(&mut read).unwrap();
            // Only its owner (this user) can write a 0600 file: pinning the open file is enough
            // there, and it shows that the rewrite took place.
            let expected: &[u8] = if private_copy { &good } else { &evil };
            assert!(read == expected, "mode {mode:o}: read the {} bytes", if read == good { "checked" } else { "rewritten" });
        }
    }
}

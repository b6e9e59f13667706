//! The local backup directory: listing, atomic creation (`name.partial` → fsync → rename →
//! fsync dir), and deletion of exactly the names the caller got from a listing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StoredBackup;
use crate::codec::Format;

pub const PARTIAL_SUFFIX: &str = ".partial";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot create the backup directory {path}: {err} (check EF__BACKUP_DIR and its permissions)")]
    CreateDir { path: PathBuf, err: io::Error },
    #[error("cannot list the backup directory {path}: {err}")]
    List { path: PathBuf, err: io::Error },
    #[error("cannot create {path}: {err} (is EF__BACKUP_DIR writable?)")]
    Create { path: PathBuf, err: io::Error },
    #[error("{path} already exists; refusing to overwrite a backup")]
    Exists { path: PathBuf },
    #[error("cannot finish {path}: {err}")]
    Commit { path: PathBuf, err: io::Error },
    #[error("the backup file {path} is in place but its directory entry may not be durable: syncing the directory failed ({err}) — a power loss now could lose it; check the disk (dmesg) and run a backup again")]
    NotDurable { path: PathBuf, err: io::Error },
    #[error("cannot delete {path}: {err}")]
    Delete { path: PathBuf, err: io::Error },
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

impl LocalStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ensure_dir(&self) -> Result<(), LocalError> {
        fs::create_dir_all(&self.dir).map_err(|err| LocalError::CreateDir { path: self.dir.clone(), err })
    }

    /// Regular files named as a backup of a known format (`*.sql.gz`), sorted by name. A missing directory lists as empty.
    pub fn list(&self) -> Result<Vec<StoredBackup>, LocalError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(LocalError::List { path: self.dir.clone(), err }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| LocalError::List { path: self.dir.clone(), err })?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if Format::of_name(&name).is_none() {
                continue;
            }
            // Symlinks are not followed: a link is not a backup we made.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().map(unix_secs).unwrap_or(0);
            let manifest = self.path_of(&crate::manifest::manifest_name(&name)).is_file();
            out.push(StoredBackup { name, size_bytes: meta.len(), modified, manifest });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Starts writing `name` as `name.partial` (mode 0600: a dump holds every row).
    pub fn create(&self, name: &str) -> Result<PartialFile, LocalError> {
        let path = self.path_of(name);
        if path.exists() {
            return Err(LocalError::Exists { path });
        }
        let partial = self.path_of(&format!("{name}{PARTIAL_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|err| LocalError::Create { path: partial.clone(), err })?;
        // Held until the file is closed: tells `remove_abandoned_partial` in any process that this
        // partial has a live writer. Best effort: where flock is unsupported, the age rule applies.
        // SAFETY: flock on a descriptor owned by `file`.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(PartialFile { file: Some(file), partial, path, dir: self.dir.clone(), bytes: 0 })
    }

    /// Deletes `name`, which must be a plain file name of this directory.
    pub fn delete(&self, name: &str) -> Result<(), LocalError> {
        let path = self.path_of(name);
        debug_assert!(!name.contains('/'));
        fs::remove_file(&path).map_err(|err| LocalError::Delete { path, err })
    }

    /// Removes the files that accompany a deleted backup (manifest, signature); absent ones are
    /// fine (backups older than manifests), others are logged.
    pub fn delete_companions(&self, name: &str) {
        let manifest = crate::manifest::manifest_name(name);
        for companion in [crate::sign::signature_name(&manifest), manifest] {
            match fs::remove_file(self.path_of(&companion)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => tracing::warn!("cannot delete {}: {e}", self.path_of(&companion).display()),
                _ => {}
            }
        }
    }

    /// Writes a small file beside a backup (its manifest or signature) the way a backup is
    /// written: partial file, fsync, rename that never replaces.
    pub fn write_companion(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, LocalError> {
        let mut file = self.create(name)?;
        io::Write::write_all(&mut file, bytes).map_err(|err| LocalError::Create { path: self.path_of(name), err })?;
        Ok(file.commit()?.0)
    }

    /// `*.sql.gz.partial` regular files (and partial manifests and signatures:
    /// `*.sql.gz.manifest.json.partial`), each under the name it would become.
    pub fn list_partials(&self) -> Vec<StoredBackup> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<StoredBackup> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?.strip_suffix(PARTIAL_SUFFIX)?.to_string();
                let meta = e.metadata().ok()?;
                // A manifest or signature being written counts as its backup's.
                let backup = crate::manifest::backup_of_companion(&name).unwrap_or(&name);
                (Format::of_name(backup).is_some() && meta.is_file()).then(|| StoredBackup {
                    name,
                    size_bytes: meta.len(),
                    modified: meta.modified().map(unix_secs).unwrap_or(0),
                    manifest: false,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes `name.partial` when no live writer holds it and it has not been written to for
    /// `min_idle`. A writer holds an exclusive `flock` on its partial file from [`LocalStore::create`]
    /// until the file is closed, and the kernel drops it when the writer dies, so "unlocked" means
    /// "abandoned" whatever its age. On a file system without `flock` it falls back to age: a
    /// day untouched. Ok(true) when it was removed.
    pub fn remove_abandoned_partial(&self, name: &str, min_idle: Duration) -> Result<bool, LocalError> {
        let path = self.path_of(&format!("{name}{PARTIAL_SUFFIX}"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(LocalError::Delete { path, err }),
        };
        let meta = file.metadata().map_err(|err| LocalError::Delete { path: path.clone(), err })?;
        let idle = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
        if !meta.is_file() || idle < min_idle {
            return Ok(false);
        }
        // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let err = io::Error::last_os_error();
            let unsupported = matches!(err.raw_os_error(), Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL));
            if !(unsupported && idle > Duration::from_secs(86_400)) {
                return Ok(false);
            }
        }
        fs::remove_file(&path).map_err(|err| LocalError::Delete { path, err })?;
        Ok(true)
    }
}

/// A backup being written. It becomes visible under its final name only through
/// [`PartialFile::commit`]; dropped without it, the partial file is removed.
#[derive(Debug)]
pub struct PartialFile {
    file: Option<File>,
    partial: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    bytes: u64,
}

impl PartialFile {
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Flushes the data to disk, renames into place (never over an existing file, even one
    /// that appeared while this backup ran), then flushes the directory entry.
    pub fn commit(mut self) -> Result<(PathBuf, u64), LocalError> {
        let file = self.file.take().expect("file present until commit");
        let err = |err| LocalError::Commit { path: self.path.clone(), err };
        file.sync_all().map_err(err)?;
        drop(file);
        match rename_noreplace(&self.partial, &self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(LocalError::Exists { path: self.path.clone() }),
            Err(e) => return Err(err(e)),
        }
        // From here the file is under its final name: the drop must not remove anything.
        self.partial = PathBuf::new();
        let path = std::mem::take(&mut self.path);
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|err| LocalError::NotDurable { path: path.clone(), err })?;
        Ok((path, self.bytes))
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`: renameat2's
/// RENAME_NOREPLACE, or where the file system lacks it, link + unlink (link never replaces).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: two valid C strings, both relative to the working directory or absolute.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, cfrom.as_ptr(), libc::AT_FDCWD, cto.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)) {
        return Err(e);
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.as_mut().expect("file present until commit").write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("file present until commit").flush()
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_becomes_final_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut p = store.create("a.sql.gz").unwrap();
        p.write_all(b"data").unwrap();
        assert!(dir.path().join("a.sql.gz.partial").exists());
        assert!(store.list().unwrap().is_empty(), "partial files are not backups");
        let (path, bytes) = p.commit().unwrap();
        assert_eq!((path, bytes), (dir.path().join("a.sql.gz"), 4));
        assert!(!dir.path().join("a.sql.gz.partial").exists());
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size_bytes), ("a.sql.gz", 4));

        let mut dropped = store.create("b.sql.gz").unwrap();
        dropped.write_all(b"half").unwrap();
        drop(dropped);
        assert!(!dir.path().join("b.sql.gz.partial").exists() && !dir.path().join("b.sql.gz").exists());

        assert!(matches!(store.create("a.sql.gz"), Err(LocalError::Exists { .. })));
    }

    /// Pins issue 12 item "the local commit never replaces an existing file": a file that
    /// appears under the final name while the backup runs (another deployment's backup of the
    /// same name) is kept, and the commit fails instead of renaming over it.
    #[test]
    fn commit_never_replaces_a_file_that_appeared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut p = store.create("a.sql.gz").unwrap();
        p.write_all(b"ours").unwrap();
        fs::write(dir.path().join("a.sql.gz"), b"theirs").unwrap();
        assert!(matches!(p.commit(), Err(LocalError::Exists { .. })));
        assert_eq!(fs::read(dir.path().join("a.sql.gz")).unwrap(), b"theirs");
        assert!(!dir.path().join("a.sql.gz.partial").exists());

        fs::write(dir.path().join("x"), b"x").unwrap();
        fs::write(dir.path().join("y"), b"y").unwrap();
        assert_eq!(rename_noreplace(&dir.path().join("x"), &dir.path().join("y")).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("y")).unwrap(), b"y");
        rename_noreplace(&dir.path().join("x"), &dir.path().join("z")).unwrap();
        assert!(!dir.path().join("x").exists() && dir.path().join("z").exists());
    }

    #[test]
    fn listing_skips_non_backups() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["x.sql.gz", "notes.txt", "y.sql.gz.partial", "z.sql"] {
            fs::write(dir.path().join(f), b"1").unwrap();
        }
        fs::create_dir(dir.path().join("d.sql.gz")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("x.sql.gz"), dir.path().join("link.sql.gz")).unwrap();
        let names: Vec<String> = LocalStore::new(dir.path()).list().unwrap().into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["x.sql.gz"]);
        assert!(LocalStore::new(dir.path().join("missing")).list().unwrap().is_empty());
    }

    /// Pins issue 12 item 8: a partial nobody writes any more is removed whatever its age; one
    /// a live writer holds, or written to within the grace, is not.
    #[test]
    fn abandoned_partials_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let age = |name: &str, secs: u64| {
            let f = File::options().write(true).open(dir.path().join(name)).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
        };
        fs::write(dir.path().join("crashed.sql.gz.partial"), b"1").unwrap();
        age("crashed.sql.gz.partial", 120);
        fs::write(dir.path().join("fresh.sql.gz.partial"), b"1").unwrap();
        let live = store.create("live.sql.gz").unwrap();
        age("live.sql.gz.partial", 3 * 86_400);
        fs::write(dir.path().join("other.partial"), b"1").unwrap();
        fs::write(dir.path().join("x.sql.gz"), b"1").unwrap();
        fs::write(dir.path().join("x.sql.gz.manifest.json.partial"), b"{").unwrap();
        age("x.sql.gz.manifest.json.partial", 120);

        let listed: Vec<String> = store.list_partials().into_iter().map(|b| b.name).collect();
        assert_eq!(listed, ["crashed.sql.gz", "fresh.sql.gz", "live.sql.gz", "x.sql.gz.manifest.json"]);
        assert!(store.remove_abandoned_partial("x.sql.gz.manifest.json", Duration::from_secs(60)).unwrap());
        let idle = Duration::from_secs(60);
        assert!(store.remove_abandoned_partial("crashed.sql.gz", idle).unwrap());
        assert!(!store.remove_abandoned_partial("fresh.sql.gz", idle).unwrap(), "written within the grace");
        assert!(!store.remove_abandoned_partial("live.sql.gz", idle).unwrap(), "its writer holds the lock");
        assert!(!store.remove_abandoned_partial("missing.sql.gz", idle).unwrap());
        assert!(!dir.path().join("crashed.sql.gz.partial").exists());
        assert!(dir.path().join("fresh.sql.gz.partial").exists() && dir.path().join("live.sql.gz.partial").exists());
        drop(live);
        assert!(dir.path().join("other.partial").exists() && dir.path().join("x.sql.gz").exists());
    }
}

//! Where backups are kept, behind two narrow traits (rustic_core's backend idea):
//! [`BackupStore`] is what retention and listings need of any store (list, delete), and
//! [`Mirror`] what the engine and restore need of a store each new backup is copied to beside
//! the local file (upload, download). `local` is the backup directory; the S3 store lives in
//! the `ef-backup-store-s3` crate; `memory` is a store in memory for tests of everything above.

pub mod local;
pub mod memory;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::model::{BackupEntry, Target};

/// One stored backup, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredBackup {
    pub name: String,
    pub size_bytes: u64,
    /// Unix seconds (file mtime, or S3 LastModified).
    pub modified: i64,
    /// A manifest (`NAME.manifest.json`) sits beside it.
    pub manifest: bool,
}

impl From<&StoredBackup> for BackupEntry {
    fn from(b: &StoredBackup) -> Self {
        BackupEntry { name: b.name.clone(), size_bytes: b.size_bytes, modified: b.modified }
    }
}

/// What became of a batch of deletions: the names gone, the names the store keeps on purpose
/// (with why), and the last error met (the other names were still tried).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub names: Vec<String>,
    /// Not tried: the store protects them (an S3 Object Lock retain-until date not reached).
    pub kept: Vec<(String, String)>,
    pub error: Option<String>,
    /// The store refused deleting for lack of permission: a deployment made immutable on
    /// purpose (no `s3:DeleteObject`), where expiry is the store's own job.
    pub not_permitted: bool,
}

/// What retention and listings need of a store: which one it is, its listing, and deleting
/// by name.
pub trait BackupStore {
    /// The store the policy's retention answer is asked for.
    fn target(&self) -> Target;
    /// The backups in the store (names of a known format only; no partial files or uploads).
    fn list_backups(&self) -> Result<Vec<StoredBackup>, String>;
    /// Deletes these listed names.
    fn delete_backups(&self, names: &[String]) -> Deleted;
}

/// A store every new backup is copied to while it is written locally, best effort: its
/// failures are reported, never raised into the local backup (today: S3).
pub trait Mirror: BackupStore + Send + Sync + std::fmt::Debug {
    /// Where `name` is (or would be) in this store, as the logs and responses show it.
    fn url(&self, name: &str) -> String;
    /// Starts the copy of `name`; the engine writes the encoded stream into it.
    fn upload(&self, name: &str) -> Box<dyn Upload>;
    /// Reads a stored backup, or a file beside one (its manifest), for restore and verify.
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, String>;
    /// Reads a stored backup and says which version it is (an ETag); given one, reads that
    /// version or fails. A store without versions answers None and reads what is there.
    fn open_at(&self, name: &str, version: Option<&str>) -> Result<(Box<dyn Read + Send>, Option<String>), String>;
    /// Stores a small file beside a backup (its manifest or signature), under the same
    /// protection as the backup (encryption at rest, object lock).
    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    /// Reads a small file beside a backup (at most `max` bytes); None when there is none.
    fn get_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, String>;
    /// Ends uploads of names `ours` accepts that started more than `older_than` ago (an
    /// interrupted run's); returns how many.
    fn abort_stale_uploads(&self, older_than: Duration, ours: &dyn Fn(&str) -> bool) -> Result<usize, String>;
}

/// One copy in progress. Dropping it before [`Upload::finish`] aborts it, so a store never
/// holds a backup that failed locally.
pub trait Upload: Write + Send {
    /// Nothing more will be written: the last part may start travelling.
    fn seal(&mut self);
    /// Completes the copy once the local file is committed at `committed` (an upload that
    /// fell behind sends its rest from there); returns its URL.
    fn finish(self: Box<Self>, committed: &Path, deadline: Instant, cancel: &AtomicBool) -> Result<String, String>;
}

impl BackupStore for local::LocalStore {
    fn target(&self) -> Target {
        Target::Local
    }

    fn list_backups(&self) -> Result<Vec<StoredBackup>, String> {
        self.list().map_err(|e| e.to_string())
    }

    fn delete_backups(&self, names: &[String]) -> Deleted {
        let mut out = Deleted::default();
        for name in names {
            match self.delete(name) {
                Ok(()) => {
                    out.names.push(name.clone());
                    self.delete_companions(name);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    out.error = Some(e.to_string());
                }
            }
        }
        out
    }
}

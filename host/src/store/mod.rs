//! Where backups are kept. `local` is the backup directory, `s3` a bucket prefix; both offer
//! [`BackupStore`], the narrow face retention works through (rustic_core's backend idea), so
//! retention is written once and tested against an in-memory store.

pub mod local;
pub mod s3;

use crate::model::Target;

/// One stored backup, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackup {
    pub name: String,
    pub size_bytes: u64,
    /// Unix seconds (file mtime, or S3 LastModified).
    pub modified: i64,
}

impl From<&StoredBackup> for crate::model::BackupEntry {
    fn from(b: &StoredBackup) -> Self {
        crate::model::BackupEntry { name: b.name.clone(), size_bytes: b.size_bytes, modified: b.modified }
    }
}

/// What became of a batch of deletions: the names gone, and the last error met (the other
/// names were still tried).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub names: Vec<String>,
    pub error: Option<String>,
}

/// What retention needs of a store: which one it is, its listing, and deleting by name.
pub trait BackupStore {
    /// The store the policy's retention answer is asked for.
    fn target(&self) -> Target;
    /// The backups in the store (names of this suffix only; no partial files or uploads).
    fn list_backups(&self) -> Result<Vec<StoredBackup>, String>;
    /// Deletes these listed names.
    fn delete_backups(&self, names: &[String]) -> Deleted;
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
                Ok(()) => out.names.push(name.clone()),
                Err(e) => {
                    tracing::warn!("{e}");
                    out.error = Some(e.to_string());
                }
            }
        }
        out
    }
}

impl BackupStore for s3::S3Store {
    fn target(&self) -> Target {
        Target::S3
    }

    fn list_backups(&self) -> Result<Vec<StoredBackup>, String> {
        self.list().map_err(|e| e.to_string())
    }

    fn delete_backups(&self, names: &[String]) -> Deleted {
        match self.delete(names) {
            Ok(names) => Deleted { names, error: None },
            Err(e) => Deleted { names: Vec::new(), error: Some(e.to_string()) },
        }
    }
}

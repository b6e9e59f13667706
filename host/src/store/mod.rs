//! Where backups are kept. `local` is the backup directory; S3 follows the same shape.

pub mod local;
pub mod s3;

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

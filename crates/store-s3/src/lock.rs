//! S3 Object Lock in one place: the lock a new object gets, whether a lock read back holds,
//! and setting it after the fact where a store ignored the headers of the object's creation.

use aws_sdk_s3::operation::put_object_retention::builders::PutObjectRetentionFluentBuilder;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode};
use ef_backup_core::config::LockMode;

use crate::S3Store;

/// A lock the store reports up to this much earlier than asked still counts as set (the store
/// may round the date).
const LOCK_SLACK: i64 = 60;

impl S3Store {
    /// The mode and retain-until date (unix seconds) of an object created now, when
    /// `EF__S3_OBJECT_LOCK_DAYS` is set.
    pub(crate) fn new_lock(&self) -> Option<(LockMode, i64)> {
        self.object_lock.map(|l| (l.mode, crate::unix_now() + i64::from(l.days) * 86_400))
    }

    /// The request that locks `key` in `mode` until `until` (unix seconds).
    pub(crate) fn set_retention(&self, key: &str, mode: LockMode, until: i64) -> PutObjectRetentionFluentBuilder {
        let mode = match mode {
            LockMode::Governance => ObjectLockRetentionMode::Governance,
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        };
        let retention = ObjectLockRetention::builder().mode(mode).retain_until_date(DateTime::from_secs(until)).build();
        self.client.put_object_retention().bucket(&self.bucket).key(key).retention(retention)
    }
}

/// The mode as a creation header (`x-amz-object-lock-mode`).
pub(crate) fn header_mode(mode: LockMode) -> ObjectLockMode {
    match mode {
        LockMode::Governance => ObjectLockMode::Governance,
        LockMode::Compliance => ObjectLockMode::Compliance,
    }
}

/// Whether the retain-until date a HEAD reported (`held`) keeps the object until `until`.
pub(crate) fn holds(held: Option<i64>, until: i64) -> bool {
    held.is_some_and(|held| held >= until - LOCK_SLACK)
}

//! A store in memory, with switches that make it fail the way real stores do: for the unit
//! tests of the engine, retention, the catalog and the service, which need a store they can
//! look into and break without a bucket.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BackupStore, Deleted, Mirror, StoredBackup, Upload};
use crate::model::Target;
use crate::util::lock;

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<String, (Vec<u8>, i64)>,
    /// Uploads started and not finished (or dropped), by name.
    open_uploads: Vec<String>,
    /// Uploads dropped before they were finished (aborted), by name.
    aborted: Vec<String>,
}

/// Backups by name, with their bytes and modification time. Clones share the same contents.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    target: Target,
    inner: Arc<Mutex<Inner>>,
    /// Listing fails.
    pub fail_list: Arc<AtomicBool>,
    /// Every upload fails at its end (after taking the whole stream).
    pub fail_uploads: Arc<AtomicBool>,
    /// Deleting fails for every name.
    pub fail_delete: Arc<AtomicBool>,
}

impl MemoryStore {
    pub fn new(target: Target) -> MemoryStore {
        MemoryStore { target, inner: Arc::default(), fail_list: Arc::default(), fail_uploads: Arc::default(), fail_delete: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Puts a backup in place, as an earlier run would have.
    pub fn put(&self, name: &str, bytes: &[u8], modified: i64) {
        self.lock().objects.insert(name.to_string(), (bytes.to_vec(), modified));
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().objects.get(name).map(|(b, _)| b.clone())
    }

    /// Uploads dropped unfinished: the store got no object for them.
    pub fn aborted_uploads(&self) -> Vec<String> {
        self.lock().aborted.clone()
    }

    /// Uploads begun and neither finished nor dropped.
    pub fn open_uploads(&self) -> Vec<String> {
        self.lock().open_uploads.clone()
    }
}

impl BackupStore for MemoryStore {
    fn target(&self) -> Target {
        self.target
    }

    fn list_backups(&self) -> Result<Vec<StoredBackup>, String> {
        if self.fail_list.load(Ordering::SeqCst) {
            return Err(format!("listing the {} store failed (test switch)", self.target.id()));
        }
        let inner = self.lock();
        Ok(inner
            .objects
            .iter()
            .filter(|(n, _)| !crate::manifest::is_companion(n))
            .map(|(n, (b, t))| StoredBackup {
                name: n.clone(),
                size_bytes: b.len() as u64,
                modified: *t,
                manifest: inner.objects.contains_key(&crate::manifest::manifest_name(n)),
            })
            .collect())
    }

    fn delete_backups(&self, names: &[String]) -> Deleted {
        if self.fail_delete.load(Ordering::SeqCst) {
            return Deleted { error: Some("deleting failed (test switch)".into()), ..Deleted::default() };
        }
        let mut inner = self.lock();
        let deleted: Vec<String> = names.iter().filter(|n| inner.objects.remove(n.as_str()).is_some()).cloned().collect();
        for n in &deleted {
            let manifest = crate::manifest::manifest_name(n);
            inner.objects.remove(&crate::sign::signature_name(&manifest));
            inner.objects.remove(&manifest);
        }
        Deleted { names: deleted, ..Deleted::default() }
    }
}

impl Mirror for MemoryStore {
    fn url(&self, name: &str) -> String {
        format!("memory://{}/{name}", self.target.id())
    }

    fn upload(&self, name: &str) -> Box<dyn Upload> {
        self.lock().open_uploads.push(name.to_string());
        Box::new(MemoryUpload { store: self.clone(), name: name.to_string(), data: Vec::new(), sealed: false, done: false })
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, String> {
        let bytes = self.bytes(name).ok_or_else(|| format!("{} does not exist", self.url(name)))?;
        Ok(Box::new(Cursor::new(bytes)))
    }

    /// The version is a hash of the bytes, as an ETag would be.
    fn open_at(&self, name: &str, version: Option<&str>) -> Result<(Box<dyn Read + Send>, Option<String>), String> {
        let bytes = self.bytes(name).ok_or_else(|| format!("{} does not exist", self.url(name)))?;
        let etag = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
        if version.is_some_and(|v| v != etag) {
            return Err(format!("{}: PreconditionFailed (the object was replaced)", self.url(name)));
        }
        Ok((Box::new(Cursor::new(bytes)), Some(etag)))
    }

    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        if self.fail_uploads.load(Ordering::SeqCst) {
            return Err(format!("uploading {name} failed (test switch)"));
        }
        self.lock().objects.insert(name.to_string(), (bytes.to_vec(), crate::util::now()));
        Ok(())
    }

    fn get_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
        match self.bytes(name) {
            Some(b) if b.len() as u64 > max => Err(format!("{} is larger than {max} bytes", self.url(name))),
            other => Ok(other),
        }
    }

    fn abort_stale_uploads(&self, _older_than: Duration, _ours: &dyn Fn(&str) -> bool) -> Result<usize, String> {
        Ok(0)
    }
}

struct MemoryUpload {
    store: MemoryStore,
    name: String,
    data: Vec<u8>,
    sealed: bool,
    done: bool,
}

impl Write for MemoryUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        assert!(!self.sealed, "written after seal");
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Upload for MemoryUpload {
    fn seal(&mut self) {
        self.sealed = true;
    }

    fn finish(mut self: Box<Self>, _committed: &Path, _deadline: Instant, _cancel: &AtomicBool) -> Result<String, String> {
        self.done = true;
        self.store.lock().open_uploads.retain(|n| n != &self.name);
        if self.store.fail_uploads.load(Ordering::SeqCst) {
            return Err(format!("uploading {} failed (test switch)", self.name));
        }
        let now = crate::util::now();
        self.store.lock().objects.insert(self.name.clone(), (std::mem::take(&mut self.data), now));
        Ok(self.store.url(&self.name))
    }
}

impl Drop for MemoryUpload {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.store.lock();
            inner.open_uploads.retain(|n| n != &self.name);
            inner.aborted.push(self.name.clone());
        }
    }
}

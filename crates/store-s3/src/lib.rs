//! S3 (or any S3-compatible store): streamed multipart upload while the backup is being
//! compressed, listing, batch deletion and streamed download.
//!
//! The upload is a side copy: an S3 failure is recorded and reported, never raised into the
//! local backup, and a slow store never slows it: the stream feeds the upload only while it
//! keeps up, and the rest is sent from the committed local file. Every upload either completes
//! (and is verified) or is aborted, so no incomplete multipart upload keeps costing money;
//! uploads that could not even be aborted (the store was unreachable) are aborted by a later
//! run. A completed upload never replaces an existing object.

mod lock;
mod upload;

use std::future::Future;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use ef_backup_core::codec::Format;
use ef_backup_core::config::{ObjectLock, S3Config};
use ef_backup_core::model::Target;
use ef_backup_core::store::{BackupStore, Deleted, Mirror, StoredBackup, Upload};
use tokio::runtime::Handle;
pub use upload::{part_size, S3Upload};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct S3Error(pub String);

/// A readable one-line description of an SDK error: the service's code and message when
/// there is one, the transport's cause otherwise. Never contains credentials (the SDK does
/// not put them in errors; the signature is not the secret).
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    let hint = |code: &str| match code {
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" => " — check EF__AWS_ACCESS_KEY_ID and EF__AWS_SECRET_ACCESS_KEY",
        "NoSuchBucket" => " — check EF__AWS_S3_BACKUP_BUCKET (and EF__AWS_REGION)",
        "AccessDenied" => " — the IAM policy lacks a permission ef-backup needs (see README, IAM policy)",
        _ => "",
    };
    match err.as_service_error().and_then(|e| e.code().map(|c| (c.to_string(), e.message().unwrap_or_default().to_string()))) {
        Some((code, msg)) => one_line(&format!("{what}: {code}: {msg}{}", hint(&code))),
        None => format!("{what}: {}", error_chain(err)),
    }
}

/// An error and its sources as one line, each cause once. (The SDK's `DisplayErrorContext`
/// appends a Debug dump of the whole error, which is neither one line nor readable.)
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = one_line(&e.to_string());
        // Wrappers often repeat their source's text; keep each cause once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    if parts.is_empty() {
        "unknown error".to_string()
    } else {
        parts.join(": ")
    }
}

/// Line breaks and runs of blanks become one space: an error is one log line.
/// How long one small PUT (a manifest) may take.
const SMALL_PUT_WAIT: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn unix(t: &aws_sdk_s3::primitives::DateTime) -> i64 {
    t.secs()
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    handle: Handle,
    part_size: usize,
    object_lock: Option<ObjectLock>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

impl S3Store {
    /// A client for `cfg`, running its I/O on `handle`. Credentials, region and endpoint come
    /// from the typed config only (no profile files, no instance metadata lookups).
    pub fn new(cfg: &S3Config, part_size: usize, handle: Handle) -> S3Store {
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(&cfg.access_key_id, cfg.secret_access_key.expose(), None, None, "ef-backup"))
            // Checksums only where the API requires them: what S3-compatible stores accept.
            // Integrity is checked by Content-MD5 per part and the multipart ETag instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .stalled_stream_protection(StalledStreamProtectionConfig::enabled().grace_period(Duration::from_secs(30)).build());
        if let Some(endpoint) = &cfg.endpoint_url {
            b = b.endpoint_url(endpoint).force_path_style(true);
        }
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            handle,
            part_size,
            object_lock: cfg.object_lock,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The same client pointed at another bucket, keys taken whole (for `s3://bucket/key`).
    pub fn in_bucket(&self, bucket: &str) -> S3Store {
        S3Store { bucket: bucket.to_string(), prefix: String::new(), ..self.clone() }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// Backups directly under the prefix (`*.sql.gz`, no deeper keys), every page.
    pub fn list(&self) -> Result<Vec<StoredBackup>, S3Error> {
        self.handle.block_on(async {
            let mut out = Vec::new();
            let mut manifests = std::collections::HashSet::new();
            let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&self.prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| S3Error(describe(&format!("listing s3://{}/{}", self.bucket, self.prefix), &e)))?;
                for o in page.contents() {
                    let Some(name) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                    if let Some(backup) = name.strip_suffix(ef_backup_core::manifest::MANIFEST_SUFFIX) {
                        manifests.insert(backup.to_string());
                    }
                    if name.contains('/') || Format::of_name(name).is_none() {
                        continue;
                    }
                    out.push(StoredBackup {
                        name: name.to_string(),
                        size_bytes: o.size().unwrap_or(0).max(0) as u64,
                        modified: o.last_modified().map(unix).unwrap_or(0),
                        manifest: false,
                    });
                }
            }
            for b in &mut out {
                b.manifest = manifests.contains(&b.name);
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    /// The names retention must keep, with why: still under an Object Lock, or their lock
    /// could not be read. S3 itself refuses to remove a locked object version, but in a bucket
    /// with Object Lock (always versioned) a plain delete "succeeds" by hiding the object
    /// behind a delete marker: the backup would vanish from every listing while still costing
    /// storage. Looking first keeps it listed and restorable; a name whose lock cannot be read
    /// (an error, no answer) is kept this time rather than guessed about, and the second value
    /// says why (the retention did not finish: reported as its error).
    async fn protected(&self, names: &[String]) -> (Vec<(String, String)>, Option<String>) {
        let now = unix_now();
        let mut kept = Vec::new();
        let mut unreadable = None;
        for name in names {
            let head = self.client.head_object().bucket(&self.bucket).key(self.key(name)).send();
            match tokio::time::timeout(SMALL_PUT_WAIT, head).await {
                Ok(Ok(head)) => {
                    if let Some(until) = head.object_lock_retain_until_date().map(unix).filter(|until| *until > now) {
                        kept.push((name.clone(), format!("its S3 Object Lock holds it until {}", ef_backup_core::util::format_time(until))));
                    }
                }
                // Gone already: the delete is a no-op.
                Ok(Err(e)) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
                Ok(Err(e)) => {
                    let why = describe(&format!("reading the Object Lock of {}", self.url(name)), &e);
                    kept.push((name.clone(), format!("{why}; it is kept this time")));
                    unreadable = Some(why);
                }
                Err(_) => {
                    let why = format!("reading the Object Lock of {}: no answer within {} s", self.url(name), SMALL_PUT_WAIT.as_secs());
                    kept.push((name.clone(), format!("{why}; it is kept this time")));
                    unreadable = Some(why);
                }
            }
        }
        (kept, unreadable)
    }

    /// Deletes `keys` (object names under the prefix) in batches; the names deleted, or the
    /// names deleted so far with the error and whether it was a refusal for lack of permission.
    async fn delete_keys(&self, keys: &[String]) -> Result<Vec<String>, (Vec<String>, String, bool)> {
        let mut deleted = Vec::new();
        for batch in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = batch.iter().filter_map(|n| ObjectIdentifier::builder().key(self.key(n)).build().ok()).collect();
            let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| (deleted.clone(), e.to_string(), false))?;
            let out = match self.client.delete_objects().bucket(&self.bucket).delete(delete).send().await {
                Ok(out) => out,
                Err(e) => return Err((deleted, describe("deleting old backups", &e), e.code() == Some("AccessDenied"))),
            };
            let failed: Vec<String> = out.errors().iter().filter_map(|e| e.key().map(str::to_string)).collect();
            deleted.extend(batch.iter().filter(|n| !failed.contains(&self.key(n))).cloned());
            if let Some(e) = out.errors().first() {
                let error =
                    format!("deleting {}: {}: {}", e.key().unwrap_or_default(), e.code().unwrap_or_default(), e.message().unwrap_or_default());
                let denied = out.errors().iter().all(|e| e.code() == Some("AccessDenied"));
                return Err((deleted, error, denied));
            }
        }
        Ok(deleted)
    }

    /// Deletes the named backups, except those under an object lock, then the manifests and
    /// signatures of the ones deleted (a backup that stays keeps them).
    pub fn delete(&self, names: &[String]) -> Result<Deleted, S3Error> {
        self.handle.block_on(async {
            let (kept, unreadable) = self.protected(names).await;
            let names: Vec<String> = names.iter().filter(|n| !kept.iter().any(|(k, _)| k == *n)).cloned().collect();
            let (deleted, failure) = match self.delete_keys(&names).await {
                Ok(d) => (d, None),
                Err((d, error, denied)) => (d, Some((error, denied))),
            };
            // Keys that do not exist (backups older than manifests) delete as a no-op.
            let companions: Vec<String> = deleted
                .iter()
                .flat_map(|n| {
                    let manifest = ef_backup_core::manifest::manifest_name(n);
                    [ef_backup_core::sign::signature_name(&manifest), manifest]
                })
                .collect();
            let companion_failure = self.delete_keys(&companions).await.err().map(|(_, e, denied)| (e, denied));
            let (error, not_permitted) = match failure.or(companion_failure).or(unreadable.map(|e| (e, false))) {
                Some((e, denied)) => (Some(e), denied),
                None => (None, false),
            };
            Ok(Deleted { names: deleted, kept, error, not_permitted })
        })
    }

    /// Aborts incomplete multipart uploads of backups started more than `older_than` ago:
    /// leftovers of runs whose abort could not reach the store. Only uploads this deployment
    /// could have started are touched: keys directly under the prefix whose names `ours`
    /// accepts (the caller builds it from the policy's recognition); an upload younger than
    /// `older_than` may belong to a run still going (here or in another process) and is left
    /// alone. Every page of the listing is looked at.
    pub fn abort_stale_uploads(&self, older_than: Duration, ours: impl Fn(&str) -> bool) -> Result<usize, S3Error> {
        let cutoff = SystemTime::now() - older_than;
        let cutoff = cutoff.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        // The listing runs on the runtime; `ours` (a policy call) runs here, outside it.
        let candidates = self.handle.block_on(async {
            let list_page = |after: Option<(String, String)>| {
                let mut req = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(&self.prefix).max_uploads(UPLOADS_PAGE);
                if let Some((key, id)) = after {
                    req = req.key_marker(key).upload_id_marker(id);
                }
                async move {
                    let out = req.send().await.map_err(|e| S3Error(describe("listing incomplete uploads", &e)))?;
                    let uploads = out
                        .uploads()
                        .iter()
                        .filter_map(|u| {
                            Some(OpenUpload { key: u.key()?.to_string(), id: u.upload_id()?.to_string(), initiated: u.initiated().map(unix) })
                        })
                        .collect();
                    let next = match (out.is_truncated(), out.next_key_marker(), out.next_upload_id_marker()) {
                        (Some(true), Some(k), id) => Some((k.to_string(), id.unwrap_or_default().to_string())),
                        _ => None,
                    };
                    Ok(UploadPage { uploads, next })
                }
            };
            stale_uploads(list_page, &self.prefix, cutoff, |_| true).await
        })?;
        let stale: Vec<OpenUpload> = candidates.into_iter().filter(|u| u.key.strip_prefix(&self.prefix).is_some_and(&ours)).collect();
        for u in &stale {
            let abort = self.client.abort_multipart_upload().bucket(&self.bucket).key(&u.key).upload_id(&u.id).send();
            self.handle.block_on(abort).map_err(|e| S3Error(describe(&format!("aborting the incomplete upload of {}", u.key), &e)))?;
            tracing::info!("aborted the incomplete S3 upload of {} (started {}, by an interrupted run)", u.key, u.initiated.unwrap_or(0));
        }
        Ok(stale.len())
    }

    /// Stores a small object beside a backup (its manifest or signature): one PUT with its
    /// MD5, SSE, and the backup's Object Lock (set afterwards where the store ignored it).
    pub fn put_small(&self, name: &str, bytes: &[u8]) -> Result<(), S3Error> {
        use aws_sdk_s3::types::ServerSideEncryption;
        use base64::Engine as _;
        use md5::Digest as _;
        let key = self.key(name);
        let url = self.url(name);
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes));
        let lock = self.new_lock();
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec()))
            .content_md5(md5)
            .content_type(if name.ends_with(".json") { "application/json" } else { "text/plain" })
            .server_side_encryption(ServerSideEncryption::Aes256);
        if let Some((mode, until)) = lock {
            put = put.object_lock_mode(lock::header_mode(mode)).object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(until));
        }
        self.handle.block_on(async {
            let timed = |what: &str| S3Error(format!("{what} {url}: no answer within {} s", SMALL_PUT_WAIT.as_secs()));
            tokio::time::timeout(SMALL_PUT_WAIT, put.send())
                .await
                .map_err(|_| timed("uploading"))?
                .map_err(|e| S3Error(describe(&format!("uploading {url}"), &e)))?;
            let Some((mode, until)) = lock else { return Ok(()) };
            let head = tokio::time::timeout(SMALL_PUT_WAIT, self.client.head_object().bucket(&self.bucket).key(&key).send())
                .await
                .map_err(|_| timed("checking"))?
                .map_err(|e| S3Error(describe(&format!("checking {url}"), &e)))?;
            if lock::holds(head.object_lock_retain_until_date().map(unix), until) {
                return Ok(());
            }
            tokio::time::timeout(SMALL_PUT_WAIT, self.set_retention(&key, mode, until).send())
                .await
                .map_err(|_| timed("locking"))?
                .map_err(|e| S3Error(describe(&format!("locking {url} (it is stored, NOT under Object Lock)"), &e)))?;
            Ok(())
        })
    }

    /// A small object beside a backup (its manifest or signature), at most `max` bytes; None
    /// when there is no such key.
    pub fn get_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, S3Error> {
        let key = self.key(name);
        let url = self.url(name);
        self.handle.block_on(async {
            let got = tokio::time::timeout(SMALL_PUT_WAIT, self.client.get_object().bucket(&self.bucket).key(&key).send())
                .await
                .map_err(|_| S3Error(format!("downloading {url}: no answer within {} s", SMALL_PUT_WAIT.as_secs())))?;
            let out = match got {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
                Err(e) => return Err(S3Error(describe(&format!("downloading {url}"), &e))),
            };
            let too_large = || S3Error(format!("{url} is larger than {max} bytes: not a file ef-backup wrote"));
            if out.content_length().unwrap_or(0).max(0) as u64 > max {
                return Err(too_large());
            }
            // Read with the cap as it comes: a store need not say the length.
            let mut body = out.body;
            let mut bytes = Vec::new();
            let read = async {
                while let Some(chunk) = body.try_next().await.map_err(|e| S3Error(format!("downloading {url}: {}", error_chain(&e))))? {
                    if (bytes.len() + chunk.len()) as u64 > max {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(())
            };
            tokio::time::timeout(SMALL_PUT_WAIT, read).await.map_err(|_| S3Error(format!("downloading {url}: stalled")))??;
            Ok(Some(bytes))
        })
    }

    /// Streams an object's bytes (for restore and verify, without a temporary file).
    pub fn open(&self, name: &str) -> Result<S3Reader, S3Error> {
        Ok(self.open_at(name, None)?.0)
    }

    /// Streams an object's bytes and says its ETag; with `etag`, only that version (If-Match:
    /// a replaced object fails with PreconditionFailed instead of reading other bytes).
    pub fn open_at(&self, name: &str, etag: Option<&str>) -> Result<(S3Reader, Option<String>), S3Error> {
        let key = self.key(name);
        let mut get = self.client.get_object().bucket(&self.bucket).key(&key);
        if let Some(etag) = etag {
            get = get.if_match(etag);
        }
        let out = self.handle.block_on(get.send()).map_err(|e| {
            let replaced = if etag.is_some() && e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
                " (the object was replaced since it was checked against its manifest)"
            } else {
                ""
            };
            S3Error(format!("{}{replaced}", describe(&format!("downloading s3://{}/{key}", self.bucket), &e)))
        })?;
        let version = out.e_tag().map(str::to_string);
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<bytes::Bytes>>(4);
        let mut body = out.body;
        self.handle.spawn(async move {
            loop {
                match body.try_next().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(format!("download interrupted: {}", error_chain(&e)))));
                        return;
                    }
                }
            }
        });
        Ok((S3Reader { rx, chunk: bytes::Bytes::new() }, version))
    }
}

/// ListMultipartUploads page size (the API's maximum).
const UPLOADS_PAGE: i32 = 1000;

/// An incomplete multipart upload as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
struct OpenUpload {
    key: String,
    id: String,
    initiated: Option<i64>,
}

/// One page of ListMultipartUploads, and the (key, upload id) markers of the next one.
struct UploadPage {
    uploads: Vec<OpenUpload>,
    next: Option<(String, String)>,
}

/// Walks every page that `list_page(markers)` returns and keeps the uploads that are ours
/// (directly under `prefix`, accepted by `ours`) and started before `cutoff`. A store that
/// answers with the markers it was given would loop for ever: that ends the walk.
async fn stale_uploads<F, Fut>(mut list_page: F, prefix: &str, cutoff: i64, ours: impl Fn(&str) -> bool) -> Result<Vec<OpenUpload>, S3Error>
where
    F: FnMut(Option<(String, String)>) -> Fut,
    Fut: Future<Output = Result<UploadPage, S3Error>>,
{
    let mut stale = Vec::new();
    let mut after = None;
    loop {
        let page = list_page(after.clone()).await?;
        for u in page.uploads {
            let Some(name) = u.key.strip_prefix(prefix) else { continue };
            let old = u.initiated.is_some_and(|t| t < cutoff);
            if old && !name.contains('/') && ours(name) {
                stale.push(u);
            }
        }
        match page.next {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            _ => return Ok(stale),
        }
    }
}

/// A blocking reader over a download running on the runtime.
pub struct S3Reader {
    rx: std::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(Ok(c)) => self.chunk = c,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Splits `s3://bucket/key`.
pub fn parse_url(url: &str) -> Option<(&str, &str)> {
    let (bucket, key) = url.strip_prefix("s3://")?.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty() && !key.ends_with('/')).then_some((bucket, key))
}

/// The bucket prefix as one of the host's stores: retention and listings through
/// [`BackupStore`], the engine's copy and restore's download through [`Mirror`].
impl BackupStore for S3Store {
    fn target(&self) -> Target {
        Target::S3
    }

    fn list_backups(&self) -> Result<Vec<StoredBackup>, String> {
        self.list().map_err(|e| e.to_string())
    }

    fn delete_backups(&self, names: &[String]) -> Deleted {
        match self.delete(names) {
            Ok(deleted) => deleted,
            Err(e) => Deleted { error: Some(e.to_string()), ..Deleted::default() },
        }
    }
}

impl Mirror for S3Store {
    fn url(&self, name: &str) -> String {
        S3Store::url(self, name)
    }

    fn upload(&self, name: &str) -> Box<dyn Upload> {
        Box::new(S3Store::upload(self, name))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, String> {
        Ok(Box::new(S3Store::open(self, name).map_err(|e| e.to_string())?))
    }

    fn open_at(&self, name: &str, version: Option<&str>) -> Result<(Box<dyn Read + Send>, Option<String>), String> {
        let (reader, etag) = S3Store::open_at(self, name, version).map_err(|e| e.to_string())?;
        Ok((Box::new(reader), etag))
    }

    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        S3Store::put_small(self, name, bytes).map_err(|e| e.to_string())
    }

    fn get_small(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
        S3Store::get_small(self, name, max).map_err(|e| e.to_string())
    }

    fn abort_stale_uploads(&self, older_than: Duration, ours: &dyn Fn(&str) -> bool) -> Result<usize, String> {
        S3Store::abort_stale_uploads(self, older_than, ours).map_err(|e| e.to_string())
    }
}

impl Upload for S3Upload {
    fn seal(&mut self) {
        S3Upload::seal(self)
    }

    fn finish(self: Box<Self>, committed: &Path, deadline: Instant, cancel: &AtomicBool) -> Result<String, String> {
        S3Upload::finish(*self, committed, deadline, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str, id: &str, initiated: i64) -> OpenUpload {
        OpenUpload { key: key.into(), id: id.into(), initiated: Some(initiated) }
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/k.sql.gz"), Some(("b", "k.sql.gz")));
        assert_eq!(parse_url("s3://b/p/q/k.sql.gz"), Some(("b", "p/q/k.sql.gz")));
        for bad in ["s3://b", "s3://b/", "s3:///k", "http://b/k", "b/k", "s3://b/dir/"] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }

    /// Pins issue 12 item 9: the clean-up read only the first page of ListMultipartUploads
    /// (1,000 uploads), and it must touch only this deployment's old uploads.
    #[test]
    fn stale_uploads_walks_every_page_and_keeps_only_old_uploads_of_ours() {
        let pages = [
            vec![upload("p/a_backup_1.sql.gz", "1", 10), upload("p/other_backup_1.sql.gz", "2", 10)],
            vec![upload("p/a_backup_2.sql.gz", "3", 10), upload("p/sub/a_backup_3.sql.gz", "4", 10)],
            // Started after the cutoff: maybe a live run of another process.
            vec![upload("p/a_backup_4.sql.gz", "5", 500), upload("p/a_backup_5.sql.gz", "6", 99)],
        ];
        let mut asked = Vec::new();
        let list_page = |after: Option<(String, String)>| {
            asked.push(after.clone());
            let i = after.map_or(0, |(_, id)| id.parse::<usize>().unwrap());
            let next = (i + 1 < pages.len()).then(|| (format!("k{i}"), (i + 1).to_string()));
            let page = UploadPage { uploads: pages[i].clone(), next };
            async move { Ok(page) }
        };
        let ours = |n: &str| n.starts_with("a_backup_");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let stale = rt.block_on(stale_uploads(list_page, "p/", 100, ours)).unwrap();
        let ids: Vec<&str> = stale.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["1", "3", "6"]);
        assert_eq!(asked, [None, Some(("k0".into(), "1".into())), Some(("k1".into(), "2".into()))]);
    }

    #[test]
    fn a_store_repeating_its_markers_does_not_loop() {
        let list_page = |_after: Option<(String, String)>| async {
            Ok(UploadPage { uploads: vec![upload("a_backup_1.sql.gz", "1", 1)], next: Some(("k".into(), "i".into())) })
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let stale = rt.block_on(stale_uploads(list_page, "", 100, |_: &str| true)).unwrap();
        assert_eq!(stale.len(), 2, "the first page and the one that repeated the markers");
    }

    /// Pins issue 12 (smaller things): transport errors were shown through the SDK's
    /// `DisplayErrorContext`, which appends a multi-line Debug dump of the error.
    #[test]
    fn transport_errors_are_one_readable_line() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::SdkError;
        use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "tcp connect error:\n  Connection refused (os error 111)");
        let err: SdkError<ListObjectsV2Error, HttpResponse> = SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(io)));
        let text = describe("listing s3://b/p/", &err);
        assert!(!text.contains('\n'), "{text}");
        assert!(!text.contains("DispatchFailure") && !text.contains('{'), "no Debug dump: {text}");
        assert!(text.starts_with("listing s3://b/p/: ") && text.contains("Connection refused (os error 111)"), "{text}");
    }
}

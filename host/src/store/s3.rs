//! S3 (or any S3-compatible store): streamed multipart upload while the backup is being
//! compressed, listing, batch deletion and streamed download.
//!
//! The upload is a side copy: an S3 failure is recorded and reported, never raised into the
//! local backup. Every upload either completes (and is verified) or is aborted, so no
//! incomplete multipart upload keeps costing money; uploads that could not even be aborted
//! (the store was unreachable) are aborted by a later run.

use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use base64::Engine as _;
use md5::{Digest, Md5};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::StoredBackup;
use crate::config::S3Config;

/// Parts uploading at once; with the part being filled and one queued, memory stays at a
/// few parts whatever the backup size.
const PARTS_IN_FLIGHT: usize = 2;
/// S3 allows 10,000 parts of at most 5 GiB.
const MAX_PARTS: u32 = 10_000;
const MAX_PART: usize = 5 << 30;

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
        Some((code, msg)) => format!("{what}: {code}: {msg}{}", hint(&code)),
        None => format!("{what}: {}", DisplayErrorContext(err)),
    }
}

fn unix(t: &aws_sdk_s3::primitives::DateTime) -> i64 {
    t.secs()
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    handle: Handle,
    part_size: usize,
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
        S3Store { client: Client::from_conf(b.build()), bucket: cfg.bucket.clone(), prefix: cfg.prefix.clone(), handle, part_size }
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
            let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&self.prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| S3Error(describe(&format!("listing s3://{}/{}", self.bucket, self.prefix), &e)))?;
                for o in page.contents() {
                    let Some(name) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                    if name.contains('/') || !name.ends_with(super::local::SUFFIX) {
                        continue;
                    }
                    out.push(StoredBackup {
                        name: name.to_string(),
                        size_bytes: o.size().unwrap_or(0).max(0) as u64,
                        modified: o.last_modified().map(unix).unwrap_or(0),
                    });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    /// Deletes the named backups in batches; returns the names deleted.
    pub fn delete(&self, names: &[String]) -> Result<Vec<String>, S3Error> {
        self.handle.block_on(async {
            let mut deleted = Vec::new();
            for batch in names.chunks(1000) {
                let ids: Vec<ObjectIdentifier> =
                    batch.iter().filter_map(|n| ObjectIdentifier::builder().key(self.key(n)).build().ok()).collect();
                let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| S3Error(e.to_string()))?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| S3Error(describe("deleting old backups", &e)))?;
                let failed: Vec<String> = out.errors().iter().filter_map(|e| e.key().map(str::to_string)).collect();
                deleted.extend(batch.iter().filter(|n| !failed.contains(&self.key(n))).cloned());
                if let Some(e) = out.errors().first() {
                    return Err(S3Error(format!(
                        "deleting {}: {}: {}",
                        e.key().unwrap_or_default(),
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    )));
                }
            }
            Ok(deleted)
        })
    }

    /// Aborts incomplete multipart uploads of backups (keys directly under the prefix whose
    /// names `is_ours` accepts) started more than `older_than` ago: leftovers of runs whose
    /// abort could not reach the store.
    pub fn abort_stale_uploads(&self, older_than: Duration, is_ours: impl Fn(&str) -> bool) -> Result<usize, S3Error> {
        let cutoff = SystemTime::now() - older_than;
        let cutoff = cutoff.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.handle.block_on(async {
            let mut aborted = 0;
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .send()
                .await
                .map_err(|e| S3Error(describe("listing incomplete uploads", &e)))?;
            for u in out.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                let Some(name) = key.strip_prefix(&self.prefix) else { continue };
                let old = u.initiated().map(unix).is_some_and(|t| t < cutoff);
                if old && !name.contains('/') && is_ours(name) {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                        .map_err(|e| S3Error(describe("aborting an incomplete upload", &e)))?;
                    aborted += 1;
                }
            }
            Ok(aborted)
        })
    }

    /// Starts a multipart upload of `name`; bytes written to the returned sink go to S3.
    pub fn upload(&self, name: &str) -> S3Upload {
        let (tx, rx) = mpsc::channel::<Msg>(1);
        let task = self.handle.spawn(upload_task(self.client.clone(), self.bucket.clone(), self.key(name), rx));
        S3Upload {
            tx: Some(tx),
            buf: Vec::with_capacity(self.part_size),
            parts: 0,
            base_part: self.part_size,
            bytes: 0,
            task: Some(task),
            handle: self.handle.clone(),
            store: self.clone(),
            name: name.to_string(),
            error: None,
        }
    }

    /// Streams an object's bytes (for restore and verify, without a temporary file).
    pub fn open(&self, name: &str) -> Result<S3Reader, S3Error> {
        let key = self.key(name);
        let out = self
            .handle
            .block_on(self.client.get_object().bucket(&self.bucket).key(&key).send())
            .map_err(|e| S3Error(describe(&format!("downloading s3://{}/{key}", self.bucket), &e)))?;
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
                        let _ = tx.send(Err(io::Error::other(format!("download interrupted: {e}"))));
                        return;
                    }
                }
            }
        });
        Ok(S3Reader { rx, chunk: bytes::Bytes::new() })
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

enum Msg {
    Part { number: i32, data: Vec<u8> },
    /// All parts sent: complete the upload. Dropping the sender without it aborts.
    Complete,
}

/// A completed upload: the ETag the store reports (if any) and the one computed from the
/// parts' MD5s.
struct Completed {
    etag: Option<String>,
    expected: String,
}

/// The ETag S3 computes for a multipart upload: md5 of the parts' md5s (in part order), `-`
/// part count.
fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut all = Md5::new();
    for m in part_md5s {
        all.update(m);
    }
    let hex: String = all.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{}", part_md5s.len())
}

async fn upload_task(client: Client, bucket: String, key: String, mut rx: mpsc::Receiver<Msg>) -> Result<Completed, String> {
    let created = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .storage_class(StorageClass::StandardIa)
        .content_type("application/gzip")
        .send()
        .await
        .map_err(|e| describe("starting the upload", &e))?;
    let upload_id = created.upload_id().ok_or("the store returned no upload id")?.to_string();

    let result = async {
        let mut in_flight: JoinSet<Result<(CompletedPart, [u8; 16]), String>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut complete = false;
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Part { number, data } => {
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        parts.push(in_flight.join_next().await.expect("non-empty").map_err(|e| e.to_string())??);
                    }
                    let req = client.upload_part().bucket(&bucket).key(&key).upload_id(&upload_id).part_number(number);
                    in_flight.spawn(async move {
                        // Hashed here, not by the writer that feeds the upload: that writer is a
                        // stage of the compression pipeline, where hashing a part (about 10 ms
                        // per 8 MiB) would delay every compressed chunk queued behind it.
                        let (md5, data) = tokio::task::spawn_blocking(move || (<[u8; 16]>::from(Md5::digest(&data)), data))
                            .await
                            .map_err(|e| e.to_string())?;
                        let req = req.content_md5(base64::engine::general_purpose::STANDARD.encode(md5)).body(ByteStream::from(data));
                        // The part's integrity is checked by S3 against its Content-MD5 (which
                        // the signature covers), so hashing the whole body again for SigV4
                        // would only cost CPU while the dump is being compressed.
                        let out = req
                            .customize()
                            .disable_payload_signing()
                            .send()
                            .await
                            .map_err(|e| describe(&format!("uploading part {number}"), &e))?;
                        tracing::debug!("S3 part {number} uploaded");
                        Ok((CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build(), md5))
                    });
                }
                Msg::Complete => {
                    complete = true;
                    break;
                }
            }
        }
        while let Some(done) = in_flight.join_next().await {
            parts.push(done.map_err(|e| e.to_string())??);
        }
        if !complete {
            return Err("upload abandoned".to_string());
        }
        parts.sort_by_key(|(p, _)| p.part_number());
        let expected = multipart_etag(&parts.iter().map(|(_, md5)| *md5).collect::<Vec<_>>());
        let parts: Vec<CompletedPart> = parts.into_iter().map(|(p, _)| p).collect();
        tracing::debug!("S3 parts uploaded: completing the upload of {} parts", parts.len());
        let out = client
            .complete_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| describe("completing the upload", &e))?;
        Ok(Completed { etag: out.e_tag().map(str::to_string), expected })
    }
    .await;

    if let Err(e) = &result {
        if let Err(abort) = client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(&upload_id).send().await {
            return Err(format!(
                "{e}; aborting the incomplete upload also failed ({}), a later backup run will abort it",
                describe("abort", &abort)
            ));
        }
    }
    result
}

/// The sink side of an upload. Writes never fail: after an S3 error the rest is discarded and
/// the error is reported by [`S3Upload::finish`].
pub struct S3Upload {
    tx: Option<mpsc::Sender<Msg>>,
    buf: Vec<u8>,
    parts: u32,
    base_part: usize,
    bytes: u64,
    task: Option<tokio::task::JoinHandle<Result<Completed, String>>>,
    handle: Handle,
    store: S3Store,
    name: String,
    error: Option<String>,
}

/// Part `n` (1-based) is `base` for the first 1000 parts, then doubles every 1000 parts: any
/// size up to 5 TiB fits in 10,000 parts, and small backups keep small parts.
pub fn part_size(base: usize, n: u32) -> usize {
    (base << ((n.saturating_sub(1) / 1000).min(20))).min(MAX_PART)
}

impl S3Upload {
    fn send_part(&mut self) {
        if self.error.is_some() {
            self.buf.clear();
            return;
        }
        self.parts += 1;
        if self.parts > MAX_PARTS {
            self.error = Some("the backup needs more than 10,000 parts".into());
            return;
        }
        let data = std::mem::take(&mut self.buf);
        self.buf = Vec::with_capacity(part_size(self.base_part, self.parts + 1));
        let msg = Msg::Part { number: self.parts as i32, data };
        if self.tx.as_ref().expect("open until finish").blocking_send(msg).is_err() {
            // The task stopped: its error is collected in finish.
            self.error = Some(String::new());
        }
    }

    /// Sends what is buffered as the last part, without completing: the caller can overlap
    /// that upload with its own work (the local fsync) and still decide whether to complete.
    pub fn seal(&mut self) {
        if !self.buf.is_empty() || self.parts == 0 {
            self.send_part();
        }
    }

    /// Completes the upload and verifies it: the object under the key has the backup's size,
    /// and its ETag (as the completion and a HEAD report it) is the multipart ETag computed
    /// from the parts' MD5s. S3 checked each part against its Content-MD5, so a match means
    /// the object holds exactly our bytes. Returns the `s3://` URL, or the error.
    pub fn finish(mut self) -> Result<String, String> {
        self.seal();
        if self.error.is_none() {
            let _ = self.tx.as_ref().expect("open").blocking_send(Msg::Complete);
        }
        self.tx = None;
        let task = self.task.take().expect("task present");
        let done = self.handle.block_on(task);
        // Our own reason to stop (too many parts) comes first; the task then abandoned it.
        if let Some(own) = self.error.take().filter(|e| !e.is_empty()) {
            return Err(match done {
                Ok(Err(e)) => format!("{own} ({e})"),
                _ => own,
            });
        }
        let Completed { etag, expected } = match done {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("upload task failed: {e}")),
        };
        let key = self.store.key(&self.name);
        let head = self
            .handle
            .block_on(self.store.client.head_object().bucket(&self.store.bucket).key(&key).send())
            .map_err(|e| format!("{} (the upload completed but is unverified)", describe("checking the uploaded object", &e)))?;
        let size = head.content_length().unwrap_or(-1);
        if size != self.bytes as i64 {
            return Err(self.discard(format!("the uploaded object has {size} bytes, the backup {}", self.bytes)));
        }
        let reported: Vec<&str> = etag.as_deref().into_iter().chain(head.e_tag()).collect();
        if let Some(wrong) = reported.iter().find(|e| e.trim_matches('"') != expected) {
            return Err(self.discard(format!("the uploaded object's ETag {wrong} does not match the {expected} computed while streaming")));
        }
        if reported.is_empty() {
            return Err(self.discard("the store reported no ETag for the uploaded object, so it cannot be verified".to_string()));
        }
        Ok(self.store.url(&self.name))
    }

    /// A completed object that failed verification must not stay under a backup's name,
    /// where it would look good to list, retention and restore.
    fn discard(&self, why: String) -> String {
        let key = self.store.key(&self.name);
        match self.handle.block_on(self.store.client.delete_object().bucket(&self.store.bucket).key(&key).send()) {
            Ok(_) => format!("{why}; the object was deleted"),
            Err(e) => format!("{why}; deleting it also failed ({}): delete s3://{}/{key} by hand", describe("delete", &e), self.store.bucket),
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.bytes += data.len() as u64;
        if self.error.is_some() {
            return Ok(data.len());
        }
        let mut rest = data;
        while !rest.is_empty() {
            let want = part_size(self.base_part, self.parts + 1);
            let n = rest.len().min(want - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == want {
                self.send_part();
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Not finished: closing the channel without `Complete` makes the task abort the
        // upload; wait for it so nothing is left behind when the process exits.
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = self.handle.block_on(task);
        }
    }
}

/// Splits `s3://bucket/key`.
pub fn parse_url(url: &str) -> Option<(&str, &str)> {
    let (bucket, key) = url.strip_prefix("s3://")?.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty() && !key.ends_with('/')).then_some((bucket, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/k.sql.gz"), Some(("b", "k.sql.gz")));
        assert_eq!(parse_url("s3://b/p/q/k.sql.gz"), Some(("b", "p/q/k.sql.gz")));
        for bad in ["s3://b", "s3://b/", "s3:///k", "http://b/k", "b/k", "s3://b/dir/"] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        // Value from Python: hashlib.md5(md5(b"part one") + md5(b"part two")).hexdigest() + "-2"
        let parts: Vec<[u8; 16]> = [&b"part one"[..], b"part two"].iter().map(|p| Md5::digest(p).into()).collect();
        assert_eq!(multipart_etag(&parts), "0732917abc3288784e318ac0aab1757a-2");
    }

    #[test]
    fn part_sizes_grow_so_any_backup_fits() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        assert_eq!(part_size(base, 10_000), MAX_PART.min(base << 9));
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(base, n) as u64).sum();
        assert!(total > 5 << 40, "10,000 parts hold more than S3's 5 TiB object limit: {total}");
        assert!((1..=MAX_PARTS).all(|n| part_size(base, n) >= 5 << 20 && part_size(base, n) <= MAX_PART));
    }
}

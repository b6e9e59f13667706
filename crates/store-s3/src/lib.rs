//! S3 (or any S3-compatible store): streamed multipart upload while the backup is being
//! compressed, listing, batch deletion and streamed download.
//!
//! The upload is a side copy: an S3 failure is recorded and reported, never raised into the
//! local backup, and a slow store never slows it: the stream feeds the upload only while it
//! keeps up, and the rest is sent from the committed local file. Every upload either completes
//! (and is verified) or is aborted, so no incomplete multipart upload keeps costing money;
//! uploads that could not even be aborted (the store was unreachable) are aborted by a later
//! run. A completed upload never replaces an existing object.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use base64::Engine as _;
use md5::{Digest, Md5};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use ef_backup_core::codec::Format;
use ef_backup_core::config::S3Config;
use ef_backup_core::model::Target;
use ef_backup_core::store::{BackupStore, Deleted, Mirror, StoredBackup, Upload};

/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Parts the stream may hand over that are not stored yet (uploading or waiting). Past that
/// the upload is behind by more than it may hold in memory (these plus the part being
/// filled: 4 parts): the stream stops feeding it, so the compressor and pg_dump never wait
/// for the store, and the rest is sent from the committed local file.
const MAX_QUEUED_PARTS: usize = 3;
/// How long the run waits for the store to confirm an abort (or a clean-up delete) before it
/// ends without it; a later run aborts leftovers.
const ABORT_WAIT: Duration = Duration::from_secs(2);
/// How often a wait for the store looks at the cancel flag and the deadline.
const STOP_POLL: Duration = Duration::from_millis(100);
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
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
                    if name.contains('/') || Format::of_name(name).is_none() {
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
                let ids: Vec<ObjectIdentifier> = batch.iter().filter_map(|n| ObjectIdentifier::builder().key(self.key(n)).build().ok()).collect();
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

    /// Starts a multipart upload of `name`; bytes written to the returned sink go to S3.
    pub fn upload(&self, name: &str) -> S3Upload {
        // Unbounded as a channel, bounded by `Shared::queued`: a send never waits.
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let shared = Arc::new(Shared::default());
        let task = self.handle.spawn(upload_task(self.client.clone(), self.bucket.clone(), self.key(name), rx, Arc::clone(&shared)));
        S3Upload {
            tx: Some(tx),
            buf: Vec::with_capacity(self.part_size),
            parts: 0,
            sent: 0,
            base_part: self.part_size,
            bytes: 0,
            behind: false,
            shared,
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
                        let _ = tx.send(Err(io::Error::other(format!("download interrupted: {}", error_chain(&e)))));
                        return;
                    }
                }
            }
        });
        Ok(S3Reader { rx, chunk: bytes::Bytes::new() })
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

enum Msg {
    Part {
        number: i32,
        data: Vec<u8>,
    },
    /// Everything was handed over: upload what the stream could not send from the committed
    /// local file (if anything), then complete. Without it the upload is never completed.
    Finish(Option<CatchUp>),
}

/// The tail of the backup that the stream did not send because the upload fell behind: bytes
/// `offset..offset + len` of the committed local file, as parts `first_part` onwards.
struct CatchUp {
    path: PathBuf,
    offset: u64,
    len: u64,
    first_part: u32,
    base_part: usize,
}

impl CatchUp {
    /// (part number, offset in the file, length) of each part.
    fn parts(&self) -> Result<Vec<(u32, u64, usize)>, String> {
        let mut out = Vec::new();
        let (mut at, end, mut n) = (self.offset, self.offset + self.len, self.first_part);
        while at < end {
            if n > MAX_PARTS {
                return Err("the backup needs more than 10,000 parts".into());
            }
            let len = (part_size(self.base_part, n) as u64).min(end - at) as usize;
            out.push((n, at, len));
            at += len as u64;
            n += 1;
        }
        Ok(out)
    }
}

/// What the stream and the upload task share: how many parts were handed over and are not yet
/// stored (the measure of "behind"), and the upload's id once the store gave it (so an
/// abandoned upload can be aborted without waiting for the task).
#[derive(Default)]
struct Shared {
    queued: AtomicUsize,
    upload_id: OnceLock<String>,
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
    let hex = ef_backup_core::util::hex(&all.finalize());
    format!("{hex}-{}", part_md5s.len())
}

fn already_exists(bucket: &str, key: &str) -> String {
    format!(
        "an object named s3://{bucket}/{key} already exists in the bucket; it belongs to someone else or an earlier run — not overwritten \
         (check that no other deployment writes under EF__S3_PREFIX, then move or delete that object if it is not needed)"
    )
}

/// Where a part's bytes are: handed over by the stream, or in the committed local file.
enum PartData {
    Bytes(Vec<u8>),
    File { path: PathBuf, offset: u64, len: usize },
}

type PartResult = Result<(CompletedPart, [u8; 16]), String>;

/// The parts of one upload: at most [`PARTS_IN_FLIGHT`] uploading at once.
struct Parts<'a> {
    client: &'a Client,
    bucket: &'a str,
    key: &'a str,
    upload_id: &'a str,
    shared: &'a Arc<Shared>,
    in_flight: JoinSet<PartResult>,
    done: Vec<(CompletedPart, [u8; 16])>,
}

impl Parts<'_> {
    async fn join_one(&mut self) -> Result<(), String> {
        if let Some(done) = self.in_flight.join_next().await {
            self.done.push(done.map_err(|e| format!("an upload task failed: {e}"))??);
        }
        Ok(())
    }

    async fn add(&mut self, number: u32, data: PartData, from_stream: bool) -> Result<(), String> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let req = self.client.upload_part().bucket(self.bucket).key(self.key).upload_id(self.upload_id).part_number(number as i32);
        let shared = Arc::clone(self.shared);
        self.in_flight.spawn(async move {
            // Read and hashed here, not by the writer that feeds the upload: that writer is a
            // stage of the compression pipeline, where hashing a part (about 10 ms per 8 MiB)
            // would delay every compressed chunk queued behind it.
            let prepared = tokio::task::spawn_blocking(move || -> io::Result<([u8; 16], Vec<u8>)> {
                let data = match data {
                    PartData::Bytes(d) => d,
                    PartData::File { path, offset, len } => {
                        let mut d = vec![0u8; len];
                        std::fs::File::open(&path)?.read_exact_at(&mut d, offset)?;
                        d
                    }
                };
                Ok((<[u8; 16]>::from(Md5::digest(&data)), data))
            })
            .await;
            let result = async {
                let (md5, data) = prepared
                    .map_err(|e| format!("hashing part {number} failed: {e}"))?
                    .map_err(|e| format!("reading part {number} from the local backup failed: {e}"))?;
                let req = req.content_md5(base64::engine::general_purpose::STANDARD.encode(md5)).body(ByteStream::from(data));
                // The part's integrity is checked by S3 against its Content-MD5 (which the
                // signature covers), so hashing the whole body again for SigV4 would only cost
                // CPU while the dump is being compressed.
                let out = req.customize().disable_payload_signing().send().await.map_err(|e| describe(&format!("uploading part {number}"), &e))?;
                tracing::debug!("S3 part {number} uploaded");
                Ok((CompletedPart::builder().part_number(number as i32).set_e_tag(out.e_tag().map(str::to_string)).build(), md5))
            }
            .await;
            if from_stream {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
            result
        });
        Ok(())
    }
}

async fn upload_task(
    client: Client,
    bucket: String,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Shared>,
) -> Result<Completed, String> {
    // The completion below refuses to replace an object (If-None-Match), but not every
    // S3-compatible store honours that header: looking first keeps those from overwriting too.
    match client.head_object().bucket(&bucket).key(&key).send().await {
        Ok(_) => return Err(already_exists(&bucket, &key)),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        // A HEAD answer has no body, so a denied or mis-signed one carries no error code: the
        // start below fails with the store's own explanation, and the completion's
        // If-None-Match still refuses to replace an object.
        Err(e) => tracing::debug!("{}", describe("checking that the key is free", &e)),
    }
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
    let _ = shared.upload_id.set(upload_id.clone());

    let result = async {
        let mut parts = Parts {
            client: &client,
            bucket: &bucket,
            key: &key,
            upload_id: &upload_id,
            shared: &shared,
            in_flight: JoinSet::new(),
            done: Vec::new(),
        };
        let catch_up = loop {
            match rx.recv().await {
                Some(Msg::Part { number, data }) => parts.add(number as u32, PartData::Bytes(data), true).await?,
                Some(Msg::Finish(catch_up)) => break catch_up,
                None => return Err("upload abandoned".to_string()),
            }
        };
        if let Some(c) = catch_up {
            let list = c.parts()?;
            tracing::info!("S3 upload catching up from the local backup: {} part(s) from byte {}", list.len(), c.offset);
            for (number, offset, len) in list {
                parts.add(number, PartData::File { path: c.path.clone(), offset, len }, false).await?;
            }
        }
        while !parts.in_flight.is_empty() {
            parts.join_one().await?;
        }
        let mut done = parts.done;
        done.sort_by_key(|(p, _)| p.part_number());
        let expected = multipart_etag(&done.iter().map(|(_, md5)| *md5).collect::<Vec<_>>());
        let done: Vec<CompletedPart> = done.into_iter().map(|(p, _)| p).collect();
        tracing::debug!("S3 parts uploaded: completing the upload of {} parts", done.len());
        let out = client
            .complete_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await
            .map_err(|e| {
                // 412: an object appeared under the key while we uploaded. It is someone
                // else's: report it, and never let the verification path delete it.
                if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
                    already_exists(&bucket, &key)
                } else {
                    describe("completing the upload", &e)
                }
            })?;
        Ok(Completed { etag: out.e_tag().map(str::to_string), expected })
    }
    .await;

    if let Err(e) = &result {
        let abort = client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(&upload_id).send();
        let failed = match tokio::time::timeout(ABORT_WAIT, abort).await {
            Ok(Ok(_)) => None,
            Ok(Err(abort)) => Some(describe("abort", &abort)),
            Err(_) => Some(format!("no answer within {} s", ABORT_WAIT.as_secs())),
        };
        if let Some(failed) = failed {
            return Err(format!("{e}; aborting the incomplete upload also failed ({failed}), a later backup run will abort it"));
        }
    }
    result
}

/// Why waiting for the store stopped before it answered.
enum Stop {
    Cancelled,
    Deadline,
}

impl Stop {
    fn describe(&self) -> &'static str {
        match self {
            Stop::Cancelled => "the upload was stopped because the backup was cancelled",
            Stop::Deadline => {
                "the upload did not finish within the backup's time limit (EF__BACKUP_TIMEOUT_SECS): the store is too slow or unreachable"
            }
        }
    }
}

/// The sink side of an upload. Writes never fail and never wait for the store: parts are
/// handed to the upload task while it keeps up; once [`MAX_QUEUED_PARTS`] are waiting, the
/// stream stops feeding it and [`S3Upload::finish`] sends the rest from the committed local
/// file. After an S3 error the rest is discarded and the error is reported by `finish`.
pub struct S3Upload {
    tx: Option<mpsc::UnboundedSender<Msg>>,
    buf: Vec<u8>,
    /// Parts handed to the task.
    parts: u32,
    /// Bytes in those parts: where a catch-up starts.
    sent: u64,
    base_part: usize,
    bytes: u64,
    /// The upload fell behind: the stream no longer feeds it.
    behind: bool,
    shared: Arc<Shared>,
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
        if self.error.is_some() || self.behind {
            self.buf = Vec::new();
            return;
        }
        if self.shared.queued.load(Ordering::Acquire) >= MAX_QUEUED_PARTS {
            // Waiting here would hold the compressor, and through it pg_dump and its
            // snapshot: the local backup goes on, the upload catches up after the commit.
            self.behind = true;
            self.buf = Vec::new();
            tracing::info!(
                "S3 upload fell behind the local backup ({MAX_QUEUED_PARTS} parts waiting at byte {}): the local backup goes on at local speed; the rest is uploaded from the local file once it is committed",
                self.sent
            );
            return;
        }
        self.parts += 1;
        if self.parts > MAX_PARTS {
            self.error = Some("the backup needs more than 10,000 parts".into());
            return;
        }
        let data = std::mem::take(&mut self.buf);
        self.sent += data.len() as u64;
        self.buf = Vec::with_capacity(part_size(self.base_part, self.parts + 1));
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.as_ref().expect("open until finish").send(Msg::Part { number: self.parts as i32, data }).is_err() {
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

    /// Runs `fut` on the runtime until it is done, `cancel` is set or `deadline` passes.
    fn bounded<F: Future>(&self, fut: F, deadline: Instant, cancel: &AtomicBool) -> Result<F::Output, Stop> {
        self.handle.block_on(async {
            let mut fut = std::pin::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tokio::time::sleep(STOP_POLL) => {
                        if cancel.load(Ordering::SeqCst) {
                            return Err(Stop::Cancelled);
                        }
                        if Instant::now() >= deadline {
                            return Err(Stop::Deadline);
                        }
                    }
                }
            }
        })
    }

    /// Stops the upload task wherever it is and aborts the upload, waiting at most
    /// [`ABORT_WAIT`] for the store: a stalled store cannot hold the run. Says what became of
    /// the upload, or why the abort did not get through.
    fn abandon(&mut self) -> Result<&'static str, String> {
        self.tx = None;
        let Some(task) = self.task.take() else { return Ok("nothing was left to abort") };
        if task.is_finished() {
            // It completed nothing (completion needs `finish`) and aborted on its own error.
            return Ok("the incomplete upload was aborted");
        }
        task.abort();
        let Some(id) = self.shared.upload_id.get() else {
            // The store never answered the start; a later run aborts what it may still create.
            return Ok("the store had not started the upload yet");
        };
        let key = self.store.key(&self.name);
        let abort = self.store.client.abort_multipart_upload().bucket(&self.store.bucket).key(&key).upload_id(id).send();
        match self.handle.block_on(async { tokio::time::timeout(ABORT_WAIT, abort).await }) {
            Ok(Ok(_)) => Ok("the incomplete upload was aborted"),
            Ok(Err(e)) => Err(describe("abort", &e)),
            Err(_) => Err(format!("no answer within {} s", ABORT_WAIT.as_secs())),
        }
    }

    fn stopped(&mut self, stop: Stop) -> String {
        match self.abandon() {
            Ok(what) => format!("{}; {what}", stop.describe()),
            Err(e) => format!("{}; aborting the incomplete upload failed ({e}), a later backup run will abort it", stop.describe()),
        }
    }

    /// Completes the upload and verifies it: the object under the key has the backup's size,
    /// and its ETag (as the completion and a HEAD report it) is the multipart ETag computed
    /// from the parts' MD5s. S3 checked each part against its Content-MD5, so a match means
    /// the object holds exactly our bytes. What the stream could not send is read from
    /// `committed`, the local backup file. Gives up (and aborts) when `cancel` is set or at
    /// `deadline`. Returns the `s3://` URL, or the error.
    pub fn finish(mut self, committed: &Path, deadline: Instant, cancel: &AtomicBool) -> Result<String, String> {
        self.seal();
        if self.error.is_none() {
            let catch_up = self.behind.then(|| CatchUp {
                path: committed.to_path_buf(),
                offset: self.sent,
                len: self.bytes - self.sent,
                first_part: self.parts + 1,
                base_part: self.base_part,
            });
            // A closed channel means the task ended: its error is collected below.
            let _ = self.tx.as_ref().expect("open").send(Msg::Finish(catch_up));
        }
        self.tx = None;
        let mut task = self.task.take().expect("task present");
        let done = match self.bounded(&mut task, deadline, cancel) {
            Ok(done) => done,
            Err(stop) => {
                self.task = Some(task);
                return Err(self.stopped(stop));
            }
        };
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
            Err(e) => return Err(format!("the upload task failed: {e}")),
        };
        let key = self.store.key(&self.name);
        let head = self.bounded(self.store.client.head_object().bucket(&self.store.bucket).key(&key).send(), deadline, cancel);
        let head = match head {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => return Err(format!("{} (the upload completed but is unverified)", describe("checking the uploaded object", &e))),
            Err(stop) => return Err(format!("{} (the upload completed but is unverified)", stop.describe())),
        };
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
    /// where it would look good to list, retention and restore. Only ever called for an
    /// object this upload completed: the completion refuses to replace another's.
    fn discard(&self, why: String) -> String {
        let key = self.store.key(&self.name);
        let delete = self.store.client.delete_object().bucket(&self.store.bucket).key(&key).send();
        match self.handle.block_on(async { tokio::time::timeout(ABORT_WAIT, delete).await }) {
            Ok(Ok(_)) => format!("{why}; the object was deleted"),
            Ok(Err(e)) => format!("{why}; deleting it also failed ({}): delete s3://{}/{key} by hand", describe("delete", &e), self.store.bucket),
            Err(_) => format!("{why}; deleting it got no answer: delete s3://{}/{key} by hand", self.store.bucket),
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.bytes += data.len() as u64;
        if self.error.is_some() || self.behind {
            return Ok(data.len());
        }
        let mut rest = data;
        while !rest.is_empty() && !self.behind && self.error.is_none() {
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
        // Not finished (the local backup failed or was cancelled): nothing may stay behind
        // half-uploaded, but a stalled store must not hold the run's end either.
        if let Err(e) = self.abandon() {
            tracing::warn!("aborting the incomplete S3 upload of {} failed ({e}); a later backup run will abort it", self.name);
        }
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
            Ok(names) => Deleted { names, error: None },
            Err(e) => Deleted { names: Vec::new(), error: Some(e.to_string()) },
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

    fn upload(key: &str, id: &str, initiated: i64) -> OpenUpload {
        OpenUpload { key: key.into(), id: id.into(), initiated: Some(initiated) }
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

    #[test]
    fn catch_up_continues_the_part_numbers_and_sizes() {
        let base = 5 << 20;
        let c = CatchUp { path: PathBuf::new(), offset: 3 * base as u64, len: 2 * base as u64 + 7, first_part: 4, base_part: base };
        let o = 3 * base as u64;
        assert_eq!(c.parts().unwrap(), [(4, o, base), (5, o + base as u64, base), (6, o + 2 * base as u64, 7)]);
        let none = CatchUp { len: 0, ..c };
        assert_eq!(none.parts().unwrap(), []);
        let too_many =
            CatchUp { path: PathBuf::new(), offset: 0, len: part_size(base, MAX_PARTS) as u64 + 1, first_part: MAX_PARTS, base_part: base };
        assert!(too_many.parts().unwrap_err().contains("10,000 parts"));
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

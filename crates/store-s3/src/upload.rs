//! The upload beside the local write: the stream hands parts to a task on the runtime while the
//! store keeps up (at most [`MAX_QUEUED_PARTS`] waiting), never waits for it, and sends what it
//! could not from the committed local file; every part carries its Content-MD5 and the completed
//! object's ETag is checked against the parts'. A dropped upload is aborted.

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use base64::Engine as _;
use ef_backup_core::codec::Format;
use ef_backup_core::config::LockMode;
use md5::{Digest, Md5};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{describe, S3Store};

/// Parts uploading at once.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// Parts the stream may hand over that are not stored yet (uploading or waiting). Past that
/// the upload is behind by more than it may hold in memory (these plus the part being
/// filled: 4 parts): the stream stops feeding it, so the compressor and pg_dump never wait
/// for the store, and the rest is sent from the committed local file.
pub(crate) const MAX_QUEUED_PARTS: usize = 3;
/// How long the run waits for the store to confirm an abort (or a clean-up delete) before it
/// ends without it; a later run aborts leftovers.
pub(crate) const ABORT_WAIT: Duration = Duration::from_secs(2);
/// How often a wait for the store looks at the cancel flag and the deadline.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(100);
/// S3 allows 10,000 parts of at most 5 GiB.
pub(crate) const MAX_PARTS: u32 = 10_000;
pub(crate) const MAX_PART: usize = 5 << 30;

impl S3Store {
    /// Starts a multipart upload of `name`; bytes written to the returned sink go to S3.
    pub fn upload(&self, name: &str) -> S3Upload {
        // Unbounded as a channel, bounded by `Shared::queued`: a send never waits.
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let shared = Arc::new(Shared::default());
        let lock = self.new_lock();
        let object = NewObject { content_type: content_type(name), lock };
        let task = self.handle.spawn(upload_task(self.client.clone(), self.bucket.clone(), self.key(name), object, rx, Arc::clone(&shared)));
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
            lock,
        }
    }
}

/// What an object is created with besides its bytes.
pub(crate) struct NewObject {
    content_type: &'static str,
    /// Object Lock mode and retain-until date (unix seconds).
    lock: Option<(LockMode, i64)>,
}

fn content_type(name: &str) -> &'static str {
    match Format::of_name(name) {
        Some(f) if f.encrypted => "application/octet-stream",
        Some(f) if f == Format::ZSTD => "application/zstd",
        _ => "application/gzip",
    }
}

pub(crate) enum Msg {
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
pub(crate) struct CatchUp {
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
pub(crate) struct Shared {
    queued: AtomicUsize,
    upload_id: OnceLock<String>,
    /// The request that starts the upload has been sent: from here the store may make the
    /// upload even when no answer arrives.
    starting: AtomicBool,
}

/// A completed upload: the ETag the store reports (if any) and the one computed from the
/// parts' MD5s.
pub(crate) struct Completed {
    etag: Option<String>,
    expected: String,
}

/// The ETag S3 computes for a multipart upload: md5 of the parts' md5s (in part order), `-`
/// part count.
pub(crate) fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut all = Md5::new();
    for m in part_md5s {
        all.update(m);
    }
    let hex = ef_backup_core::util::hex(&all.finalize());
    format!("{hex}-{}", part_md5s.len())
}

pub(crate) fn already_exists(bucket: &str, key: &str) -> String {
    format!(
        "an object named s3://{bucket}/{key} already exists in the bucket; it belongs to someone else or an earlier run — not overwritten \
         (check that no other deployment writes under EF__S3_PREFIX, then move or delete that object if it is not needed)"
    )
}

/// Where a part's bytes are: handed over by the stream, or in the committed local file.
pub(crate) enum PartData {
    Bytes(Vec<u8>),
    File { path: PathBuf, offset: u64, len: usize },
}

type PartResult = Result<(CompletedPart, [u8; 16]), String>;

/// The parts of one upload: at most [`PARTS_IN_FLIGHT`] uploading at once.
pub(crate) struct Parts<'a> {
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

pub(crate) async fn upload_task(
    client: Client,
    bucket: String,
    key: String,
    object: NewObject,
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
    let mut create = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .storage_class(StorageClass::StandardIa)
        .content_type(object.content_type);
    if let Some((mode, until)) = object.lock {
        create = create.object_lock_mode(crate::lock::header_mode(mode)).object_lock_retain_until_date(DateTime::from_secs(until));
    }
    shared.starting.store(true, Ordering::SeqCst);
    let created = create.send().await.map_err(|e| describe("starting the upload", &e))?;
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
pub(crate) enum Stop {
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
    lock: Option<(LockMode, i64)>,
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
        let Some(mut task) = self.task.take() else { return Ok("nothing was left to abort") };
        if !task.is_finished() && self.shared.upload_id.get().is_none() && self.shared.starting.load(Ordering::SeqCst) {
            // The start is at the store, unanswered: stopping the task now would leave behind
            // the upload the store makes meanwhile. With the stream closed the task aborts it
            // itself once it has the id; that is waited for as long as an abort is.
            let _ = self.handle.block_on(async { tokio::time::timeout(ABORT_WAIT, &mut task).await });
        }
        if task.is_finished() {
            // It completed nothing (completion needs `finish`) and aborted on its own error.
            return Ok(if self.shared.upload_id.get().is_some() {
                "the incomplete upload was aborted"
            } else {
                "the store did not start the upload"
            });
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
        if let Some((mode, until)) = self.lock {
            let held = head.object_lock_retain_until_date().map(crate::unix);
            if !crate::lock::holds(held, until) {
                self.lock_object(mode, until, held, deadline, cancel)?;
            }
        }
        Ok(self.store.url(&self.name))
    }

    /// Sets the object's retention after the fact: some S3-compatible stores take an
    /// upload's lock headers only on a single PUT, never on a multipart upload's start. A
    /// backup that is stored and verified but not locked is reported as a failed copy (it is
    /// kept): the operator asked for copies nobody here can erase, and this one is not.
    fn lock_object(&self, mode: LockMode, until: i64, held: Option<i64>, deadline: Instant, cancel: &AtomicBool) -> Result<(), String> {
        let key = self.store.key(&self.name);
        let put = self.store.set_retention(&key, mode, until).send();
        let unlocked = |why: String| {
            format!(
                "{why}: {} is stored and verified but NOT under Object Lock (it held {}). Check that the bucket was created with \
                 Object Lock enabled and that the IAM user may s3:PutObjectRetention",
                self.store.url(&self.name),
                held.map(ef_backup_core::util::format_time).unwrap_or_else(|| "no lock".into())
            )
        };
        match self.bounded(put, deadline, cancel) {
            Ok(Ok(_)) => {
                tracing::debug!("locked {key} until {}", ef_backup_core::util::format_time(until));
                Ok(())
            }
            Ok(Err(e)) => Err(unlocked(describe("locking the uploaded object", &e))),
            Err(stop) => Err(unlocked(stop.describe().to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        // Value from Python: hashlib.md5(md5(b"part one") + md5(b"part two")).hexdigest() + "-2"
        let parts: Vec<[u8; 16]> = [&b"part one"[..], b"part two"].iter().map(|p| Md5::digest(p).into()).collect();
        assert_eq!(multipart_etag(&parts), "0732917abc3288784e318ac0aab1757a-2");
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

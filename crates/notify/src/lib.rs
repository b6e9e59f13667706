//! Notifications: delivers messages to the channels of [`NotifyConfig`] (a generic JSON
//! webhook, Slack or Mattermost, Telegram, e-mail, a healthchecks.io-style heartbeat) without
//! ever holding up the caller.
//!
//! [`Notifier::send`] only queues. Each configured channel has its own queue and its own
//! delivery task, so a channel that is down delays nothing but its own later messages, and a
//! channel's messages arrive in the order they were sent (a heartbeat's `/start` before its
//! success ping). A message is retried with exponential backoff (1 s, 2 s, 4 s … at most 60 s
//! apart) until it is delivered, is refused for good (an HTTP 4xx other than 408 and 429, an
//! SMTP 5xx, an SMTP server without the required STARTTLS), or `EF__NOTIFY_RETRY_SECS` have
//! passed since it was sent. Delivered and failed messages are counted per channel for
//! `/metrics`.
//!
//! The variables are documented in [`ef_backup_core::config::notify`]. Credentials in URLs are
//! never logged: an endpoint shows as its scheme and host (`https://hooks.slack.com/…`), and
//! error texts are scrubbed of every configured secret.

mod email;
mod http;
mod redact;
mod tls;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ef_backup_core::config::notify::{Channel, NotifyConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use http::signature;

/// Messages waiting per channel; past that, new ones are dropped (and counted), so a channel
/// that is down for long cannot grow memory without bound.
pub const QUEUE_CAPACITY: usize = 256;
/// Backoff between attempts starts here and doubles…
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// …up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What kind of heartbeat ping an event is (None = not a heartbeat event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// `<url>/start`: a backup began (healthchecks measures the run time from here).
    Start,
    /// `<url>`: it succeeded.
    Success,
    /// `<url>/fail`: it failed.
    Fail,
}

/// One notification for one channel.
#[derive(Debug, Clone)]
pub struct Message {
    pub channel: Channel,
    pub subject: String,
    pub body: String,
    /// The event id, e.g. `backup-failed`.
    pub event: String,
    /// For [`Channel::Heartbeat`]: which URL to ping; heartbeat messages without one are ignored.
    pub ping: Option<Ping>,
    /// The structured event, sent as `data` by the generic webhook.
    pub payload: serde_json::Value,
}

impl Message {
    pub fn new(channel: Channel, event: impl Into<String>, subject: impl Into<String>, body: impl Into<String>) -> Message {
        Message { channel, subject: subject.into(), body: body.into(), event: event.into(), ping: None, payload: serde_json::Value::Null }
    }
}

/// How one message ended, for a caller that keeps a record of deliveries (the run history).
#[derive(Debug, Clone)]
pub struct Settled {
    pub channel: Channel,
    /// The event id, e.g. `backup-failed`.
    pub event: String,
    pub subject: String,
    /// Delivered after this many attempts, or why not (already scrubbed of secrets).
    pub outcome: Result<u32, String>,
}

/// Called once for every message that is settled: delivered, given up, or dropped.
pub type OnSettled = Arc<dyn Fn(Settled) + Send + Sync>;

/// A channel that could not be set up (an address lettre cannot parse, no TLS configuration).
#[derive(Debug, thiserror::Error)]
#[error("notifications by {channel}: {reason}")]
pub struct NotifyError {
    pub channel: Channel,
    pub reason: String,
}

/// Checks that every configured channel can be set up, without starting anything: for a
/// start-up check that fails fast (the configuration has already been validated by core; this
/// adds what only the delivery code knows, such as lettre's address parser).
pub fn validate(config: &NotifyConfig) -> Result<(), NotifyError> {
    let (_, errors) = transport::Transport::build(config);
    errors.into_iter().next().map_or(Ok(()), Err)
}

/// Handle to the delivery tasks; cheap to clone. Dropping the last handle lets the tasks finish
/// what is queued and end.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("channels", &self.channels()).finish_non_exhaustive()
    }
}

struct Inner {
    /// Indexed by [`Channel`]; `None` for a channel that is not configured.
    queues: [Option<mpsc::Sender<Queued>>; 5],
    shared: Arc<Shared>,
}

struct Queued {
    id: u64,
    message: Message,
    queued_at: Instant,
}

/// What the handles and the delivery tasks share.
struct Shared {
    next_id: AtomicU64,
    /// Messages accepted and not yet settled (delivered, failed, or dropped by `flush`), with
    /// their channel and event for the log. Settling removes the entry, so each message is
    /// counted exactly once whichever side settles it.
    pending: Mutex<HashMap<u64, (Channel, String, String)>>,
    /// Woken whenever `pending` becomes empty.
    idle: tokio::sync::Notify,
    delivered: [AtomicU64; 5],
    failed: [AtomicU64; 5],
    on_settled: Option<OnSettled>,
    /// Messages settled whose `on_settled` call has not returned yet: `flush` waits for them
    /// too, so a command that exits after it has every outcome recorded.
    reporting: AtomicU64,
}

impl Shared {
    fn idle_now(&self, pending: &HashMap<u64, (Channel, String, String)>) -> bool {
        pending.is_empty() && self.reporting.load(Ordering::SeqCst) == 0
    }

    fn report(&self, channel: Channel, event: &str, subject: &str, outcome: Result<u32, String>) {
        if let Some(f) = &self.on_settled {
            f(Settled { channel, event: event.to_string(), subject: subject.to_string(), outcome });
        }
    }

    fn is_pending(&self, id: u64) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id)
    }

    /// Removes `id` from the pending set; false when `flush` already gave it up.
    fn settle(&self, id: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let removed = pending.remove(&id).is_some();
        if self.idle_now(&pending) {
            self.idle.notify_waiters();
        }
        removed
    }

    /// Settles `id` and, when it was still pending, reports `outcome` before `flush` can see the
    /// queue idle.
    fn settle_and_report(&self, id: u64, channel: Channel, event: &str, subject: &str, outcome: Result<u32, String>) -> bool {
        self.reporting.fetch_add(1, Ordering::SeqCst);
        let settled = self.settle(id);
        if settled {
            self.report(channel, event, subject, outcome);
        }
        self.reporting.fetch_sub(1, Ordering::SeqCst);
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if self.idle_now(&pending) {
            self.idle.notify_waiters();
        }
        settled
    }

    fn count_failure(&self, channel: Channel) {
        self.failed[channel as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Notifier {
    /// Starts the delivery tasks on the current tokio runtime, one per configured channel, each
    /// with a bounded queue ([`QUEUE_CAPACITY`]). A channel that cannot be set up is logged and
    /// left unconfigured, so its messages count as failures ([`validate`] reports it up front).
    ///
    /// Panics outside a tokio runtime.
    pub fn start(config: &NotifyConfig) -> Notifier {
        Notifier::start_with(config, None)
    }

    /// [`Notifier::start`], calling `on_settled` once for every message when it is settled.
    pub fn start_with(config: &NotifyConfig, on_settled: Option<OnSettled>) -> Notifier {
        let (transport, errors) = transport::Transport::build(config);
        for err in errors {
            tracing::error!(channel = %err.channel, "{err}; messages for this channel are dropped");
        }
        let transport = Arc::new(transport);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            idle: tokio::sync::Notify::new(),
            delivered: Default::default(),
            failed: Default::default(),
            on_settled,
            reporting: AtomicU64::new(0),
        });
        let retry = Duration::from_secs(config.retry_secs);
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let queues = Channel::ALL.map(|channel| {
            if !transport.has(channel) {
                return None;
            }
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(run(channel, rx, transport.clone(), shared.clone(), timeout, retry));
            Some(tx)
        });
        Notifier { inner: Arc::new(Inner { queues, shared }) }
    }

    /// Queues `message`. Never blocks and never fails the caller: a full queue or a channel
    /// that is not configured drops the message, logs it and counts it as a failure.
    pub fn send(&self, message: Message) {
        let channel = message.channel;
        if channel == Channel::Heartbeat && message.ping.is_none() {
            tracing::debug!(event = %message.event, "not a heartbeat event: nothing to ping");
            return;
        }
        let shared = &self.inner.shared;
        let Some(queue) = &self.inner.queues[channel as usize] else {
            tracing::warn!(%channel, event = %message.event, "notification dropped: the {channel} channel is not configured");
            shared.count_failure(channel);
            shared.report(channel, &message.event, &message.subject, Err(format!("dropped: the {channel} channel is not configured")));
            return;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (event, subject) = (message.event.clone(), message.subject.clone());
        // Registered before it is queued, so the delivery task always finds it.
        shared.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (channel, event.clone(), subject.clone()));
        if let Err(err) = queue.try_send(Queued { id, message, queued_at: Instant::now() }) {
            shared.settle(id);
            let why = match err {
                mpsc::error::TrySendError::Full(_) => format!("{QUEUE_CAPACITY} messages are already waiting"),
                mpsc::error::TrySendError::Closed(_) => "its delivery task has ended".to_string(),
            };
            tracing::warn!(%channel, %event, "notification dropped: {why}");
            shared.count_failure(channel);
            shared.report(channel, &event, &subject, Err(format!("dropped: {why}")));
        }
    }

    /// Waits until every queued message is settled (delivered or failed for good), or
    /// `deadline` passes; then the messages still waiting are logged as dropped, counted as
    /// failures and no longer retried.
    pub async fn flush(&self, deadline: Duration) {
        let shared = &self.inner.shared;
        let end = Instant::now() + deadline;
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so an emptying in between is not missed.
            idle.as_mut().enable();
            if shared.idle_now(&shared.pending.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            if tokio::time::timeout_at(end, idle).await.is_err() {
                break;
            }
        }
        let dropped: Vec<(Channel, String, String)> = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = pending.drain().map(|(_, v)| v).collect();
            shared.idle.notify_waiters();
            dropped
        };
        for (channel, event, subject) in dropped {
            tracing::warn!(%channel, %event, "notification dropped: not delivered within {} s of the flush", deadline.as_secs_f32());
            shared.count_failure(channel);
            shared.report(channel, &event, &subject, Err(format!("dropped: not delivered within {} s of the flush", deadline.as_secs_f32())));
        }
    }

    /// Messages that were not delivered: failed after retries, refused, or dropped.
    pub fn failures(&self) -> u64 {
        self.inner.shared.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// [`Notifier::failures`] per channel, every channel listed (0 included), in
    /// [`Channel::ALL`] order.
    pub fn failures_by_channel(&self) -> Vec<(Channel, u64)> {
        Channel::ALL.into_iter().map(|c| (c, self.inner.shared.failed[c as usize].load(Ordering::Relaxed))).collect()
    }

    /// Messages delivered.
    pub fn delivered(&self) -> u64 {
        self.inner.shared.delivered.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// [`Notifier::delivered`] per channel, in [`Channel::ALL`] order.
    pub fn delivered_by_channel(&self) -> Vec<(Channel, u64)> {
        Channel::ALL.into_iter().map(|c| (c, self.inner.shared.delivered[c as usize].load(Ordering::Relaxed))).collect()
    }

    /// The channels that are set up and have a delivery task.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL.into_iter().filter(|&c| self.inner.queues[c as usize].is_some()).collect()
    }
}

/// One channel's delivery task: its messages one after another, in order.
async fn run(
    channel: Channel,
    mut rx: mpsc::Receiver<Queued>,
    transport: Arc<transport::Transport>,
    shared: Arc<Shared>,
    timeout: Duration,
    retry: Duration,
) {
    while let Some(queued) = rx.recv().await {
        if !shared.is_pending(queued.id) {
            continue; // given up by `flush`
        }
        let event = &queued.message.event;
        let endpoint = transport.endpoint(channel);
        let result = deliver(&transport, &queued, &shared, timeout, retry).await;
        let subject = &queued.message.subject;
        let outcome = match &result {
            Ok(attempts) => Ok(*attempts),
            Err((failure, attempts)) => {
                let why = if failure.permanent { "refused" } else { "gave up" };
                Err(format!("{why} after {attempts} attempt(s) to {endpoint}: {}", failure.message))
            }
        };
        if !shared.settle_and_report(queued.id, channel, event, subject, outcome) {
            continue; // already counted as dropped by `flush`
        }
        match result {
            Ok(attempts) => {
                shared.delivered[channel as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%channel, %event, %endpoint, attempts, "notification delivered");
            }
            Err((failure, attempts)) => {
                shared.count_failure(channel);
                let why = if failure.permanent { "refused" } else { "gave up" };
                tracing::error!(%channel, %event, %endpoint, attempts, "notification not delivered ({why}): {}", failure.message);
            }
        }
    }
}

/// Attempts until delivered, refused, or out of retry time; the number of attempts made.
async fn deliver(
    transport: &transport::Transport,
    queued: &Queued,
    shared: &Shared,
    timeout: Duration,
    retry: Duration,
) -> Result<u32, (transport::Failure, u32)> {
    let (channel, event) = (queued.message.channel, &queued.message.event);
    // The retry window runs from when the message was sent, not from when its turn came: a
    // backlog behind a dead channel expires instead of adding one window per message.
    let give_up_at = queued.queued_at + retry;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = match tokio::time::timeout(timeout, transport.deliver(&queued.message)).await {
            Ok(result) => result,
            Err(_) => Err(transport::Failure::transient(format!("no answer within {} s", timeout.as_secs()))),
        };
        let failure = match result {
            Ok(()) => return Ok(attempt),
            Err(f) if f.permanent => return Err((f, attempt)),
            Err(f) => f,
        };
        let wait = backoff.max(failure.retry_after.unwrap_or_default()).min(MAX_BACKOFF);
        if Instant::now() + wait > give_up_at || !shared.is_pending(queued.id) {
            return Err((failure, attempt));
        }
        tracing::warn!(
            %channel, %event, endpoint = %transport.endpoint(channel), attempt,
            "notification attempt failed, retrying in {} s: {}", wait.as_secs(), failure.message
        );
        tokio::time::sleep(wait).await;
        if !shared.is_pending(queued.id) {
            return Err((failure, attempt));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

//! Events to messages to channels: the policy shapes each event into messages (each for one
//! channel), the notifier delivers them in the background. Nothing here waits on a channel or
//! fails a run: a policy that cannot shape an event gets the host's own messages instead
//! ([`policy::fallback_notifications`]), and a message for a channel that is not configured is
//! dropped.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use ef_backup_notify::{Message, Notifier, OnSettled, Ping, Settled};

use crate::config::notify::Channel;
use crate::config::Config;
use crate::model::{BackupOutcome, Event, EventKind, PolicyConfig};
use crate::policy::{self, Policy};
use crate::state::{RunKind, RunOutcome, RunRecord, StateStore, Trigger};

/// The deployment's notification channels; inert when none is configured.
#[derive(Clone)]
pub struct Alerts {
    notifier: Option<Notifier>,
}

impl Alerts {
    /// Starts delivery on the current tokio runtime (none when no channel is configured). Each
    /// message's outcome goes to the run history as a run of kind `notification` (`trigger`:
    /// `cli` for a command, `service` for serve).
    pub fn start(config: &Config, trigger: Trigger) -> Alerts {
        if config.notify.is_empty() {
            return Alerts { notifier: None };
        }
        if let Err(e) = ef_backup_notify::validate(&config.notify) {
            tracing::error!("{e}; that channel gets no messages");
        }
        // A connection of its own: outcomes are written from the delivery tasks.
        let history = match StateStore::open(config) {
            Ok(s) => Some(Arc::new(Mutex::new(s))),
            Err(e) => {
                tracing::error!("{e}; notification outcomes are not recorded");
                None
            }
        };
        let on_settled: Option<OnSettled> = history.map(|store| -> OnSettled { Arc::new(move |s: Settled| record(&store, trigger, s)) });
        let notifier = Notifier::start_with(&config.notify, on_settled);
        tracing::info!("notifications to: {}", notifier.channels().iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "));
        Alerts { notifier: Some(notifier) }
    }

    pub fn none() -> Alerts {
        Alerts { notifier: None }
    }

    /// Whether any channel is configured (otherwise an event needs no preparing).
    pub fn is_active(&self) -> bool {
        self.notifier.is_some()
    }

    /// Shapes `event` with the policy and queues its messages. Blocking (the policy call):
    /// call it off the async threads.
    pub fn emit(&self, policy: &dyn Policy, view: &PolicyConfig, event: &Event) {
        let Some(notifier) = &self.notifier else { return };
        let notifications = match policy.shape_notification(view, event.at, event) {
            Ok(Some(n)) => n,
            Ok(None) => policy::fallback_notifications(event),
            Err(e) => {
                tracing::error!("{e}; the {} event is sent as the host words it", event.kind.id());
                policy::fallback_notifications(event)
            }
        };
        let configured = notifier.channels();
        let payload = payload(event);
        for n in notifications {
            if !configured.contains(&n.channel) {
                continue;
            }
            let ping = if n.channel == Channel::Heartbeat { ping_of(event.kind) } else { None };
            if n.channel == Channel::Heartbeat && ping.is_none() {
                continue;
            }
            tracing::debug!("notification {} → {}: {}", event.kind.id(), n.channel.as_str(), n.subject);
            notifier.send(Message {
                channel: n.channel,
                subject: n.subject,
                body: n.body,
                event: event.kind.id().to_string(),
                ping,
                payload: payload.clone(),
            });
        }
    }

    /// Waits until every queued message is delivered or given up, at most `deadline` (the CLI,
    /// before it exits).
    pub async fn flush(&self, deadline: Duration) {
        if let Some(n) = &self.notifier {
            n.flush(deadline).await;
        }
    }

    /// Messages given up (after retries, or dropped), per configured channel.
    pub fn failures_by_channel(&self) -> Vec<(Channel, u64)> {
        self.notifier.as_ref().map(Notifier::failures_by_channel).unwrap_or_default()
    }
}

/// One message's outcome as a run of the history. Written before the message counts as settled
/// (a command's flush waits for it); one small SQLite write on the channel's delivery task.
fn record(store: &Arc<Mutex<StateStore>>, trigger: Trigger, s: Settled) {
    let write = || {
        let at = crate::util::now();
        let (outcome, message) = match &s.outcome {
            Ok(attempts) => (RunOutcome::Ok, format!("{} to {}: delivered ({attempts} attempt(s)): {}", s.event, s.channel.as_str(), s.subject)),
            Err(why) => (RunOutcome::Failed, format!("{} to {}: NOT delivered: {why}", s.event, s.channel.as_str())),
        };
        let r = RunRecord {
            finished_at: at,
            outcome,
            file_name: None,
            size_bytes: None,
            duration_ms: 0,
            message,
            detail: Some(serde_json::json!({"channel": s.channel.as_str(), "event": s.event, "subject": s.subject})),
        };
        let store = crate::util::lock(store);
        if let Err(e) = store.finish_run(None, RunKind::Notification, trigger, None, at, &r) {
            tracing::error!("{e}; this notification's outcome is missing from the history");
        }
    };
    // Off the async worker when there is one to hand the work to (both runtimes ef-backup
    // starts are multi-threaded); written before the message counts as settled either way.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}

/// Which heartbeat URL an event pings: only a backup's start and end do.
fn ping_of(kind: EventKind) -> Option<Ping> {
    match kind {
        EventKind::BackupStarted => Some(Ping::Start),
        EventKind::BackupSucceeded => Some(Ping::Success),
        EventKind::BackupFailed => Some(Ping::Fail),
        _ => None,
    }
}

/// The event as the generic webhook's `data`: what a receiver needs to act without parsing
/// the message (never a secret: the detail is the host's own account, already free of them).
fn payload(e: &Event) -> serde_json::Value {
    let outcome = e.outcome.as_ref().map(|o| match o {
        BackupOutcome::Done(d) => serde_json::json!({"success": true, "files": [{"name": d.file_name, "size_bytes": d.size_bytes}]}),
        BackupOutcome::Failed(f) => serde_json::json!({"success": false, "error": f.message, "file": f.file_name}),
        BackupOutcome::Busy(name) => serde_json::json!({"success": false, "busy": name}),
        BackupOutcome::Several(run) => serde_json::json!({"success": run.succeeded(), "files": run.entries.iter().map(|x| match &x.outcome {
            Ok(d) => serde_json::json!({"database": x.database, "kind": policy::kind_id(x.kind), "name": d.file_name, "size_bytes": d.size_bytes}),
            Err(f) => serde_json::json!({"database": x.database, "kind": policy::kind_id(x.kind), "error": f.message}),
        }).collect::<Vec<_>>()}),
    });
    serde_json::json!({
        "kind": e.kind.id(),
        "at": e.at,
        "detail": e.detail,
        "databases": e.databases,
        "file_name": e.file_name,
        "outcome": outcome,
        "previous": e.previous.as_ref().map(|p| serde_json::json!({"succeeded": p.succeeded, "started_at": p.started_at, "message": p.message})),
        "changes": e.changes.iter().map(|c| serde_json::json!({"database": c.database, "previous_bytes": c.previous_bytes, "bytes": c.bytes,
            "previous_rows": c.previous_rows, "rows": c.rows})).collect::<Vec<_>>(),
    })
}

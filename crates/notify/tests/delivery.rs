//! HTTP channels against real local servers.

mod common;

use std::time::{Duration, Instant};

use common::{silent, Receiver};
use ef_backup_core::config::notify::{TelegramConfig, WebhookConfig};
use ef_backup_core::config::Secret;
use ef_backup_notify::{Channel, Message, Notifier, NotifyConfig, Ping, QUEUE_CAPACITY};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> NotifyConfig {
    NotifyConfig { retry_secs: 30, timeout_secs: 5, ..NotifyConfig::default() }
}

fn webhook(url: String) -> Option<WebhookConfig> {
    Some(WebhookConfig { url: Secret::new(url), secret: None })
}

fn message(channel: Channel, event: &str) -> Message {
    Message::new(channel, event, "Backup failed", "pg_dump exited with 1")
}

#[tokio::test]
async fn webhook_body_is_signed() {
    let recv = Receiver::ok().await;
    let notifier = Notifier::start(&NotifyConfig {
        webhook: Some(WebhookConfig { url: Secret::new(recv.url("/hook/in")), secret: Some(Secret::new("whsec-123")) }),
        ..config()
    });
    let mut m = message(Channel::Webhook, "backup-failed");
    m.payload = json!({"database": "euraflow", "error": "pg_dump exited with 1"});
    notifier.send(m);
    notifier.flush(WAIT).await;

    let got = recv.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook/in"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Recomputed independently of the crate: what a receiver would do.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-123").unwrap();
    mac.update(&r.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-ef-backup-signature"), Some(expected.as_str()));
    assert_eq!(ef_backup_notify::signature(b"whsec-123", &r.body), expected);
    assert_eq!(
        r.json(),
        json!({
            "event": "backup-failed",
            "subject": "Backup failed",
            "body": "pg_dump exited with 1",
            "data": {"database": "euraflow", "error": "pg_dump exited with 1"},
        })
    );
    assert_eq!((notifier.delivered(), notifier.failures()), (1, 0));
}

#[tokio::test]
async fn webhook_without_secret_is_unsigned() {
    let recv = Receiver::ok().await;
    let notifier = Notifier::start(&NotifyConfig { webhook: webhook(recv.url("/h")), ..config() });
    notifier.send(message(Channel::Webhook, "backup-succeeded"));
    notifier.flush(WAIT).await;
    let got = recv.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-ef-backup-signature"), None);
}

#[tokio::test]
async fn slack_text() {
    let recv = Receiver::ok().await;
    let notifier = Notifier::start(&NotifyConfig { slack: Some(Secret::new(recv.url("/services/T0/B0/x"))), ..config() });
    notifier.send(message(Channel::Slack, "backup-failed"));
    notifier.flush(WAIT).await;
    let got = recv.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/services/T0/B0/x");
    assert_eq!(got[0].json(), json!({"text": "*Backup failed*\npg_dump exited with 1"}));
    assert_eq!(notifier.delivered_by_channel()[Channel::Slack as usize], (Channel::Slack, 1));
}

fn telegram(api_url: String) -> Option<TelegramConfig> {
    Some(TelegramConfig { token: Secret::new("123456:ABC-def"), chat_id: "-1001234".into(), api_url })
}

#[tokio::test]
async fn telegram_send_message() {
    let recv = Receiver::start(vec![], (200, r#"{"ok":true,"result":{"message_id":1}}"#)).await;
    let notifier = Notifier::start(&NotifyConfig { telegram: telegram(recv.url("")), ..config() });
    notifier.send(message(Channel::Telegram, "backup-failed"));
    notifier.flush(WAIT).await;
    let got = recv.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/bot123456:ABC-def/sendMessage");
    assert_eq!(got[0].json(), json!({"chat_id": -1001234, "text": "Backup failed\n\npg_dump exited with 1", "disable_web_page_preview": true}));
    assert_eq!((notifier.delivered(), notifier.failures()), (1, 0));
}

#[tokio::test]
async fn telegram_ok_false_is_a_failure() {
    let recv = Receiver::start(vec![], (200, r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#)).await;
    let notifier = Notifier::start(&NotifyConfig { telegram: telegram(recv.url("/")), ..config() });
    notifier.send(message(Channel::Telegram, "backup-failed"));
    notifier.flush(WAIT).await;
    // The answer is definite: not retried.
    assert_eq!(recv.requests().len(), 1);
    assert_eq!(notifier.delivered(), 0);
    assert_eq!(
        notifier.failures_by_channel(),
        vec![(Channel::Webhook, 0), (Channel::Slack, 0), (Channel::Telegram, 1), (Channel::Email, 0), (Channel::Heartbeat, 0)]
    );
}

#[tokio::test]
async fn heartbeat_pings() {
    let recv = Receiver::ok().await;
    let notifier = Notifier::start(&NotifyConfig { heartbeat: Some(Secret::new(recv.url("/ping/5f1e/"))), ..config() });
    for (ping, event) in
        [(Some(Ping::Start), "backup-started"), (None, "retention"), (Some(Ping::Success), "backup-succeeded"), (Some(Ping::Fail), "backup-failed")]
    {
        notifier.send(Message { ping, ..message(Channel::Heartbeat, event) });
    }
    notifier.flush(WAIT).await;
    let got = recv.requests();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/ping/5f1e/start", "/ping/5f1e", "/ping/5f1e/fail"]);
    assert_eq!(got[2].text(), "pg_dump exited with 1");
    // A message that is not a heartbeat event is neither a delivery nor a failure.
    assert_eq!((notifier.delivered(), notifier.failures()), (3, 0));
}

#[tokio::test]
async fn retried_until_delivered() {
    let recv = Receiver::start(vec![(500, "down"), (503, "still down")], (200, "ok")).await;
    let notifier = Notifier::start(&NotifyConfig { webhook: webhook(recv.url("/h")), ..config() });
    notifier.send(message(Channel::Webhook, "backup-failed"));
    notifier.flush(WAIT).await;
    let got = recv.requests();
    assert_eq!(got.len(), 3);
    // The same body every time (a receiver may deduplicate on it).
    assert!(got.iter().all(|r| r.body == got[0].body));
    assert_eq!((notifier.delivered(), notifier.failures()), (1, 0));
}

#[tokio::test]
async fn refusal_is_not_retried() {
    let recv = Receiver::start(vec![], (400, r#"{"error":"bad payload"}"#)).await;
    let notifier = Notifier::start(&NotifyConfig { webhook: webhook(recv.url("/h")), ..config() });
    notifier.send(message(Channel::Webhook, "backup-failed"));
    notifier.flush(WAIT).await;
    assert_eq!(recv.requests().len(), 1);
    assert_eq!((notifier.delivered(), notifier.failures()), (0, 1));
}

#[tokio::test]
async fn rate_limit_is_retried() {
    let recv = Receiver::start(vec![(429, "slow down")], (200, "ok")).await;
    let notifier = Notifier::start(&NotifyConfig { slack: Some(Secret::new(recv.url("/s"))), ..config() });
    notifier.send(message(Channel::Slack, "backup-failed"));
    notifier.flush(WAIT).await;
    assert_eq!(recv.requests().len(), 2);
    assert_eq!((notifier.delivered(), notifier.failures()), (1, 0));
}

#[tokio::test]
async fn a_hanging_channel_delays_no_other() {
    let hang = silent().await;
    let recv = Receiver::ok().await;
    let notifier = Notifier::start(&NotifyConfig {
        telegram: telegram(format!("http://{hang}")),
        webhook: webhook(recv.url("/h")),
        timeout_secs: 10,
        retry_secs: 300,
        ..NotifyConfig::default()
    });
    let started = Instant::now();
    for _ in 0..3 {
        notifier.send(message(Channel::Telegram, "backup-failed"));
    }
    notifier.send(message(Channel::Webhook, "backup-failed"));
    assert!(started.elapsed() < Duration::from_millis(100), "send took {:?}", started.elapsed());

    recv.wait_for(1, Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Telegram is still trying its first message.
    assert_eq!(notifier.failures(), 0);
}

#[tokio::test]
async fn unconfigured_channels_and_full_queues_drop_and_count() {
    let hang = silent().await;
    let notifier = Notifier::start(&NotifyConfig { webhook: webhook(format!("http://{hang}/h")), ..config() });
    assert_eq!(notifier.channels(), vec![Channel::Webhook]);

    notifier.send(message(Channel::Slack, "backup-failed"));
    assert_eq!(notifier.failures_by_channel()[Channel::Slack as usize], (Channel::Slack, 1));

    // One in flight at most, QUEUE_CAPACITY waiting; the rest are dropped at once.
    let sent = QUEUE_CAPACITY + 50;
    let started = Instant::now();
    for _ in 0..sent {
        notifier.send(message(Channel::Webhook, "backup-failed"));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let dropped = notifier.failures_by_channel()[Channel::Webhook as usize].1;
    assert!((49..=50).contains(&dropped), "{dropped}");

    // The flush deadline gives up the rest, each counted once.
    let started = Instant::now();
    notifier.flush(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(notifier.failures_by_channel()[Channel::Webhook as usize].1, sent as u64);
    assert_eq!(notifier.delivered(), 0);
}

#[tokio::test]
async fn flush_returns_at_once_when_idle() {
    let notifier = Notifier::start(&NotifyConfig::default());
    assert!(notifier.channels().is_empty());
    let started = Instant::now();
    notifier.flush(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn https_goes_through_rustls() {
    // Answers plain text to the ClientHello: the handshake must fail cleanly (no panic for a
    // missing crypto provider, no fallback to plain HTTP).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        }
    });
    let notifier = Notifier::start(&NotifyConfig { webhook: webhook(format!("https://{addr}/h")), retry_secs: 0, ..config() });
    let started = Instant::now();
    notifier.send(message(Channel::Webhook, "backup-failed"));
    notifier.flush(WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!((notifier.delivered(), notifier.failures()), (0, 1));
}

//! No credential reaches the log: every failing delivery below has its secret in the URL, the
//! token, the remote answer or the password, and the captured log output must not contain it.
//! (A test binary of its own: it installs the process-wide tracing subscriber.)

mod common;

use std::time::Duration;

use common::{capture_logs, refused, Receiver};
use ef_backup_core::config::notify::{EmailConfig, SmtpConfig, SmtpSecurity, TelegramConfig, WebhookConfig};
use ef_backup_core::config::Secret;
use ef_backup_notify::{Channel, Message, Notifier, NotifyConfig, Ping};

#[tokio::test]
async fn failures_are_logged_without_secrets() {
    let log = capture_logs();

    // The service echoes the whole request path, token included, in its error answer.
    let echo =
        Receiver::start(vec![(500, "no route for /hooks/SEKRET-webhook-path (token SEKRET-webhook-path)")], (403, "forbidden: SEKRET-slack-path"))
            .await;
    let down = refused().await;
    let notifier = Notifier::start(&NotifyConfig {
        webhook: Some(WebhookConfig { url: Secret::new(echo.url("/hooks/SEKRET-webhook-path")), secret: Some(Secret::new("SEKRET-hmac")) }),
        slack: Some(Secret::new(format!("http://user:SEKRET-basic@{}/services/SEKRET-slack-path", echo.addr))),
        telegram: Some(TelegramConfig { token: Secret::new("999:SEKRET-bot-token"), chat_id: "42".into(), api_url: format!("http://{down}") }),
        heartbeat: Some(Secret::new(format!("http://{down}/ping/SEKRET-uuid"))),
        email: Some(EmailConfig {
            smtp: SmtpConfig {
                security: SmtpSecurity::Plain,
                host: "127.0.0.1".into(),
                port: down.port(),
                user: Some("alerts".into()),
                password: Some(Secret::new("SEKRET-smtp-pw")),
            },
            from: "backup@example.com".into(),
            to: vec!["ops@example.com".into()],
        }),
        timeout_secs: 5,
        // One retry for the webhook's 500, so the retry warning is checked too.
        retry_secs: 2,
    });
    for channel in Channel::ALL {
        notifier.send(Message { ping: Some(Ping::Fail), ..Message::new(channel, "backup-failed", "Backup failed", "boom") });
    }
    notifier.flush(Duration::from_secs(20)).await;
    let text = log.text();
    assert_eq!(notifier.failures(), 5, "{text}");
    assert!(!text.contains("SEKRET"), "{text}");
    // Still useful: which endpoint, and why.
    for expected in [
        format!("http://{}/…", echo.addr),
        format!("http://{down}/…"),
        format!("smtp://127.0.0.1:{}", down.port()),
        "HTTP 500".into(),
        "HTTP 403".into(),
        "retrying in".into(),
        "could not connect".into(),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in {text}");
    }
}

//! The e-mail channel against a minimal local SMTP server.

mod common;

use std::time::Duration;

use common::{capture_logs, SmtpSink};
use ef_backup_core::config::notify::{EmailConfig, SmtpConfig, SmtpSecurity};
use ef_backup_core::config::Secret;
use ef_backup_notify::{Channel, Message, Notifier, NotifyConfig};

fn config(sink: &SmtpSink, security: SmtpSecurity, password: Option<&str>) -> NotifyConfig {
    NotifyConfig {
        email: Some(EmailConfig {
            smtp: SmtpConfig {
                security,
                host: "127.0.0.1".into(),
                port: sink.addr.port(),
                user: password.map(|_| "alerts@example.com".into()),
                password: password.map(Secret::new),
            },
            from: "EF Backup <backup@example.com>".into(),
            to: vec!["ops@example.com".into(), "dba@example.com".into()],
        }),
        timeout_secs: 5,
        retry_secs: 0,
        ..NotifyConfig::default()
    }
}

#[tokio::test]
async fn starttls_is_required_before_credentials() {
    // Offers AUTH but not STARTTLS: what a downgrading man in the middle would show.
    let log = capture_logs();
    let sink = SmtpSink::start(&["AUTH PLAIN LOGIN", "8BITMIME"]).await;
    let notifier = Notifier::start(&config(&sink, SmtpSecurity::StartTls, Some("hunter2-smtp")));
    notifier.send(Message::new(Channel::Email, "backup-failed", "Backup failed", "boom"));
    notifier.flush(Duration::from_secs(10)).await;

    assert_eq!(notifier.failures_by_channel()[Channel::Email as usize], (Channel::Email, 1));
    assert_eq!(notifier.delivered(), 0);
    let lines = sink.lines();
    assert!(lines.iter().any(|l| l.starts_with("EHLO")), "{lines:?}");
    for l in &lines {
        let verb = l.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        assert!(!["AUTH", "MAIL", "RCPT", "DATA"].contains(&verb.as_str()), "sent {l:?} without TLS: {lines:?}");
        assert!(!l.contains("hunter2"), "{lines:?}");
    }
    // The log says what to change.
    let text = log.text();
    assert!(text.contains("STARTTLS is not supported") && text.contains("use smtps://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn implicit_tls_does_not_talk_plain() {
    let sink = SmtpSink::start(&["AUTH PLAIN LOGIN"]).await;
    let notifier = Notifier::start(&config(&sink, SmtpSecurity::Implicit, Some("hunter2-smtp")));
    notifier.send(Message::new(Channel::Email, "backup-failed", "Backup failed", "boom"));
    notifier.flush(Duration::from_secs(10)).await;
    assert_eq!(notifier.failures(), 1);
    // The client's first bytes are a TLS ClientHello, not SMTP.
    assert!(!sink.lines().iter().any(|l| l.starts_with("EHLO") || l.starts_with("AUTH")), "{:?}", sink.lines());
}

#[tokio::test]
async fn plaintext_relay_delivers() {
    let sink = SmtpSink::start(&["8BITMIME"]).await;
    let notifier = Notifier::start(&config(&sink, SmtpSecurity::Plain, None));
    notifier.send(Message::new(Channel::Email, "backup-failed", "Backup failed: euraflow", "pg_dump exited with 1\nsee the log"));
    notifier.flush(Duration::from_secs(10)).await;
    assert_eq!((notifier.delivered(), notifier.failures()), (1, 0));

    let lines = sink.lines();
    let rcpts: Vec<&String> = lines.iter().filter(|l| l.starts_with("RCPT")).collect();
    assert_eq!(rcpts.len(), 2, "{lines:?}");
    assert!(lines.iter().any(|l| l == "MAIL FROM:<backup@example.com>" || l.starts_with("MAIL FROM:<backup@example.com>")), "{lines:?}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let data = &messages[0];
    for header in
        ["Subject: Backup failed: euraflow", "From: \"EF Backup\" <backup@example.com>", "Date: ", "Message-ID: <", "Content-Type: text/plain"]
    {
        assert!(data.contains(header), "{header:?} not in {data}");
    }
    assert!(data.contains("ops@example.com") && data.contains("dba@example.com"), "{data}");
    assert!(data.contains("pg_dump exited with 1\r\nsee the log"), "{data}");
}

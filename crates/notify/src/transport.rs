//! Everything one delivery attempt needs, set up once at start: the HTTP client, the SMTP
//! transport, each channel's endpoint, and the secrets to scrub from errors.

use std::time::Duration;

use ef_backup_core::config::notify::{endpoint, NotifyConfig};

use crate::redact::Redactor;
use crate::{email, http, Channel, Message, NotifyError};

/// Why an attempt failed; `message` is already scrubbed of secrets.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Retrying cannot help (the service refused the request itself).
    pub(crate) permanent: bool,
    pub(crate) message: String,
    /// The service asked to wait this long (HTTP `Retry-After`, Telegram's `retry_after`).
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn transient(message: impl Into<String>) -> Failure {
        Failure { permanent: false, message: message.into(), retry_after: None }
    }
    pub(crate) fn permanent(message: impl Into<String>) -> Failure {
        Failure { permanent: true, message: message.into(), retry_after: None }
    }
}

pub(crate) struct Transport {
    pub(crate) http: Option<http::Http>,
    pub(crate) email: Option<email::Email>,
    pub(crate) redactor: Redactor,
}

impl Transport {
    /// Sets up every configured channel; one that cannot be set up is left out and reported.
    pub(crate) fn build(config: &NotifyConfig) -> (Transport, Vec<NotifyError>) {
        let mut redactor = Redactor::default();
        let mut errors = Vec::new();
        if let Some(w) = &config.webhook {
            redactor.add(w.url.expose());
            if let Some(s) = &w.secret {
                redactor.add(s.expose());
            }
        }
        if let Some(url) = &config.slack {
            redactor.add(url.expose());
        }
        if let Some(t) = &config.telegram {
            redactor.add(t.token.expose());
        }
        if let Some(url) = &config.heartbeat {
            redactor.add(url.expose());
        }
        if let Some(p) = config.email.as_ref().and_then(|e| e.smtp.password.as_ref()) {
            redactor.add(p.expose());
        }
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let http = match http::Http::build(config, timeout) {
            Ok(http) => http,
            Err(err) => {
                errors.extend(err);
                None
            }
        };
        let email = match config.email.as_ref().map(|e| email::Email::build(e, timeout)).transpose() {
            Ok(email) => email,
            Err(reason) => {
                errors.push(NotifyError { channel: Channel::Email, reason });
                None
            }
        };
        (Transport { http, email, redactor }, errors)
    }

    pub(crate) fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email.is_some(),
            _ => self.http.as_ref().is_some_and(|h| h.has(channel)),
        }
    }

    /// What a log may say about where `channel` delivers to: scheme, host and port.
    pub(crate) fn endpoint(&self, channel: Channel) -> String {
        match channel {
            Channel::Email => self.email.as_ref().map_or_else(String::new, |e| e.endpoint.clone()),
            _ => self.http.as_ref().and_then(|h| h.url(channel)).map_or_else(String::new, endpoint),
        }
    }

    /// One attempt; the caller bounds its time.
    pub(crate) async fn deliver(&self, message: &Message) -> Result<(), Failure> {
        let result = match message.channel {
            Channel::Email => match &self.email {
                Some(email) => email.send(message).await,
                None => Err(Failure::permanent("the email channel is not configured")),
            },
            channel => match &self.http {
                Some(http) => http.send(message).await,
                None => Err(Failure::permanent(format!("the {channel} channel is not configured"))),
            },
        };
        result.map_err(|f| Failure { message: self.redactor.scrub(&f.message), ..f })
    }
}

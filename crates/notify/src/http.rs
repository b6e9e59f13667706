//! The HTTP channels: generic webhook, Slack/Mattermost, Telegram and heartbeat.

use std::time::Duration;

use ef_backup_core::config::notify::NotifyConfig;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::json;
use sha2::Sha256;

use crate::redact::{error_chain, one_line, truncate};
use crate::transport::Failure;
use crate::{tls, Channel, Message, NotifyError, Ping};

/// The header carrying the webhook body's HMAC.
pub const SIGNATURE_HEADER: &str = "X-EF-Backup-Signature";
/// Telegram refuses longer messages (4096 characters) outright.
const TELEGRAM_MAX_CHARS: usize = 4000;
/// Slack truncates past 40,000 characters; cut first, visibly.
const SLACK_MAX_BYTES: usize = 38_000;
/// healthchecks.io keeps a ping's body as its log; more is not useful there.
const HEARTBEAT_MAX_BYTES: usize = 10_000;
/// Of a response, only an error description is used.
const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// The value of `X-EF-Backup-Signature` for `body`: `sha256=` and the lower-case hex
/// HMAC-SHA256 of the exact body bytes, keyed with `EF__NOTIFY_WEBHOOK_SECRET`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) struct Http {
    client: reqwest::Client,
    webhook: Option<Webhook>,
    slack: Option<String>,
    telegram: Option<Telegram>,
    /// Without a trailing `/`.
    heartbeat: Option<String>,
}

struct Webhook {
    url: String,
    key: Option<Vec<u8>>,
}

struct Telegram {
    /// `{api}/bot{token}/sendMessage`.
    url: String,
    chat_id: serde_json::Value,
}

impl Http {
    /// `None` when no HTTP channel is configured; the error names every HTTP channel that
    /// cannot work because the client could not be built.
    pub(crate) fn build(config: &NotifyConfig, timeout: Duration) -> Result<Option<Http>, Vec<NotifyError>> {
        let channels: Vec<Channel> = config.channels().into_iter().filter(|&c| c != Channel::Email).collect();
        if channels.is_empty() {
            return Ok(None);
        }
        let fail = |reason: String| channels.iter().map(|&channel| NotifyError { channel, reason: reason.clone() }).collect::<Vec<_>>();
        let tls = tls::client_config().map_err(fail)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // A redirect would be followed with the body dropped or re-sent elsewhere; the
            // operator should configure the final URL instead.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("ef-backup/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("HTTP client setup: {}", error_chain(&e.without_url()))))?;
        Ok(Some(Http {
            client,
            webhook: config
                .webhook
                .as_ref()
                .map(|w| Webhook { url: w.url.expose().to_string(), key: w.secret.as_ref().map(|s| s.expose().as_bytes().to_vec()) }),
            slack: config.slack.as_ref().map(|s| s.expose().to_string()),
            telegram: config.telegram.as_ref().map(|t| Telegram {
                url: format!("{}/bot{}/sendMessage", t.api_url.trim_end_matches('/'), t.token.expose()),
                // Telegram takes both; a number is what its own clients send for numeric ids.
                chat_id: t.chat_id.parse::<i64>().map_or_else(|_| json!(t.chat_id), |n| json!(n)),
            }),
            heartbeat: config.heartbeat.as_ref().map(|h| h.expose().trim_end_matches('/').to_string()),
        }))
    }

    pub(crate) fn has(&self, channel: Channel) -> bool {
        self.url(channel).is_some()
    }

    /// The channel's URL (a secret: only for [`ef_backup_core::config::notify::endpoint`]).
    pub(crate) fn url(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Webhook => self.webhook.as_ref().map(|w| w.url.as_str()),
            Channel::Slack => self.slack.as_deref(),
            Channel::Telegram => self.telegram.as_ref().map(|t| t.url.as_str()),
            Channel::Heartbeat => self.heartbeat.as_deref(),
            Channel::Email => None,
        }
    }

    pub(crate) async fn send(&self, message: &Message) -> Result<(), Failure> {
        let unconfigured = || Failure::permanent(format!("the {} channel is not configured", message.channel));
        match message.channel {
            Channel::Webhook => {
                let webhook = self.webhook.as_ref().ok_or_else(unconfigured)?;
                let body = serde_json::to_vec(&json!({
                    "event": message.event,
                    "subject": message.subject,
                    "body": message.body,
                    "data": message.payload,
                }))
                .map_err(|e| Failure::permanent(format!("cannot encode the message: {e}")))?;
                let mut request = self.client.post(&webhook.url).header(CONTENT_TYPE, "application/json");
                if let Some(key) = &webhook.key {
                    request = request.header(SIGNATURE_HEADER, signature(key, &body));
                }
                expect_success(exchange(request.body(body)).await?)
            }
            Channel::Slack => {
                let url = self.slack.as_ref().ok_or_else(unconfigured)?;
                let text = truncate(&format!("*{}*\n{}", message.subject, message.body), SLACK_MAX_BYTES);
                expect_success(exchange(self.client.post(url).json(&json!({ "text": text }))).await?)
            }
            Channel::Telegram => {
                let telegram = self.telegram.as_ref().ok_or_else(unconfigured)?;
                let text = truncate_chars(&format!("{}\n\n{}", message.subject, message.body), TELEGRAM_MAX_CHARS);
                let request = self.client.post(&telegram.url).json(&json!({
                    "chat_id": telegram.chat_id,
                    "text": text,
                    "disable_web_page_preview": true,
                }));
                telegram_answer(exchange(request).await?)
            }
            Channel::Heartbeat => {
                let base = self.heartbeat.as_ref().ok_or_else(unconfigured)?;
                let url = match message.ping {
                    Some(Ping::Start) => format!("{base}/start"),
                    Some(Ping::Success) => base.clone(),
                    Some(Ping::Fail) => format!("{base}/fail"),
                    None => return Ok(()),
                };
                let body = truncate(&message.body, HEARTBEAT_MAX_BYTES);
                expect_success(exchange(self.client.post(url).header(CONTENT_TYPE, "text/plain; charset=utf-8").body(body)).await?)
            }
            Channel::Email => Err(unconfigured()),
        }
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
}

async fn exchange(request: RequestBuilder) -> Result<Answer, Failure> {
    let mut response = request.send().await.map_err(request_error)?;
    let status = response.status();
    let retry_after =
        response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    // Only the start of the answer matters (an error description); a broken body after a
    // success status is still a delivery.
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_RESPONSE_BYTES);
    Ok(Answer { status, retry_after, body: String::from_utf8_lossy(&body).into_owned() })
}

/// reqwest's errors print the whole URL, credentials included: never shown; what failed and
/// why is.
fn request_error(err: reqwest::Error) -> Failure {
    let err = err.without_url();
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // reqwest's and hyper's own wrappers ("error sending request", "client error (Connect)")
    // say nothing the kind above does not.
    let chain = error_chain(&err);
    let cause =
        chain.split(": ").filter(|part| *part != "error sending request" && !part.starts_with("client error (")).collect::<Vec<_>>().join(": ");
    let message = format!("{what}: {}", if cause.is_empty() { chain } else { cause });
    if err.is_builder() {
        Failure::permanent(message)
    } else {
        Failure::transient(message)
    }
}

fn expect_success(answer: Answer) -> Result<(), Failure> {
    if answer.status.is_success() {
        return Ok(());
    }
    Err(status_failure(answer.status, answer.retry_after, &answer.body))
}

/// Timeouts (408), rate limits (429) and server errors pass; any other refusal will be
/// repeated, so it is not retried.
fn status_failure(status: StatusCode, retry_after: Option<Duration>, detail: &str) -> Failure {
    let detail = one_line(detail, 300);
    let mut message = format!("HTTP {status}");
    if status.is_redirection() {
        message.push_str(" (redirects are not followed: configure the URL it redirects to)");
    }
    if !detail.is_empty() {
        message = format!("{message}: {detail}");
    }
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Failure { retry_after, ..Failure::transient(message) }
    } else {
        Failure::permanent(message)
    }
}

/// The Bot API answers `{"ok": true, …}` or `{"ok": false, "error_code", "description",
/// "parameters": {"retry_after"}}`; `ok: false` is a failure whatever the HTTP status.
fn telegram_answer(answer: Answer) -> Result<(), Failure> {
    let parsed: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
    let ok = parsed.as_ref().and_then(|v| v.get("ok")).and_then(|v| v.as_bool());
    if answer.status.is_success() && ok == Some(true) {
        return Ok(());
    }
    let description = parsed.as_ref().and_then(|v| v.get("description")).and_then(|v| v.as_str()).map(str::to_string);
    let retry_after =
        parsed.as_ref().and_then(|v| v.pointer("/parameters/retry_after")).and_then(|v| v.as_u64()).map(Duration::from_secs).or(answer.retry_after);
    if answer.status.is_success() {
        let why = match ok {
            Some(false) => description.unwrap_or_else(|| "no description".into()),
            _ => format!("not a Bot API answer: {}", one_line(&answer.body, 200)),
        };
        return Err(Failure::permanent(format!("Telegram answered ok:false: {why}")));
    }
    Err(status_failure(answer.status, retry_after, description.as_deref().unwrap_or(&answer.body)))
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..text[..end].char_indices().last().map_or(0, |(i, _)| i)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for (code, permanent) in [(400, true), (401, true), (404, true), (301, true), (408, false), (429, false), (500, false), (503, false)] {
            let f = status_failure(StatusCode::from_u16(code).unwrap(), None, "x");
            assert_eq!(f.permanent, permanent, "{code}");
            assert!(f.message.starts_with(&format!("HTTP {code}")), "{}", f.message);
        }
    }

    #[test]
    fn telegram_answers() {
        let answer = |status: u16, body: &str| Answer { status: StatusCode::from_u16(status).unwrap(), retry_after: None, body: body.into() };
        assert!(telegram_answer(answer(200, r#"{"ok":true,"result":{}}"#)).is_ok());
        let f = telegram_answer(answer(200, r#"{"ok":false,"description":"Bad Request: chat not found"}"#)).unwrap_err();
        assert!(f.permanent && f.message.contains("chat not found"), "{f:?}");
        let f = telegram_answer(answer(429, r#"{"ok":false,"description":"Too Many Requests","parameters":{"retry_after":7}}"#)).unwrap_err();
        assert!(!f.permanent && f.retry_after == Some(Duration::from_secs(7)), "{f:?}");
        assert!(telegram_answer(answer(200, "<html>")).unwrap_err().permanent);
    }

    #[test]
    fn telegram_text_is_cut_by_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        let t = truncate_chars(&"я".repeat(5000), TELEGRAM_MAX_CHARS);
        assert_eq!(t.chars().count(), TELEGRAM_MAX_CHARS);
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(signature(b"Jefe", b"what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}

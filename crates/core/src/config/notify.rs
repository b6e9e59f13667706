//! Notification channels: where ef-backup reports what happened (delivered by the
//! `ef-backup-notify` crate). Every channel is off until its variables are set; any number may
//! be on at once.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `EF__NOTIFY_WEBHOOK_URL` | generic webhook: each event is POSTed as JSON `{"event", "subject", "body", "data"}` (`http://` or `https://`) |
//! | `EF__NOTIFY_WEBHOOK_SECRET` | optional: signs each webhook body; the request carries `X-EF-Backup-Signature: sha256=<hex>`, the HMAC-SHA256 of the exact body bytes with this secret |
//! | `EF__NOTIFY_SLACK_URL` | Slack or Mattermost incoming webhook: POST `{"text": "*subject*\nbody"}` |
//! | `EF__NOTIFY_TELEGRAM_BOT_TOKEN` | Telegram bot token (from @BotFather); set together with the chat id |
//! | `EF__NOTIFY_TELEGRAM_CHAT_ID` | the chat, group or channel the bot writes to: a number (`-100…` for groups and channels) or `@channelname` |
//! | `EF__NOTIFY_TELEGRAM_API_URL` | Bot API base URL (default `https://api.telegram.org`; for a self-hosted Bot API server) |
//! | `EF__NOTIFY_SMTP_URL` | e-mail: `smtps://[user[:password]@]host[:port]` (TLS from the first byte, default port 465) or `smtp://[user[:password]@]host[:port]` (STARTTLS required, default port 587); user and password percent-encoded (`@` as `%40`) |
//! | `EF__NOTIFY_SMTP_PLAINTEXT` | `true`: `smtp://` sends without TLS (a local relay only: anything in the URL, the password too, then crosses the network in clear); default `false`, and a server that does not offer STARTTLS is refused |
//! | `EF__NOTIFY_EMAIL_FROM` | the sender: `backup@example.com` or `EF Backup <backup@example.com>` |
//! | `EF__NOTIFY_EMAIL_TO` | the recipients, comma-separated; all of them get one message |
//! | `EF__NOTIFY_HEARTBEAT_URL` | dead-man's switch (healthchecks.io style): `<url>/start` when a backup starts, `<url>` when it succeeded, `<url>/fail` when it failed; the service alerts when the pings stop |
//! | `EF__NOTIFY_TIMEOUT_SECS` | how long one delivery attempt may take (default 10, 1 to 300) |
//! | `EF__NOTIFY_RETRY_SECS` | how long a message keeps being retried after a failed attempt (default 300, 0 to 86400; 0 = one attempt) |
//!
//! The webhook, Slack, Telegram and heartbeat URLs, the bot token, the webhook secret and the
//! SMTP password are credentials: they are kept as [`Secret`]s and never printed, in errors
//! included. Logs name an endpoint by its scheme and host only ([`endpoint`]).

use std::fmt;

use super::{ConfigError, Secret, Vars};

pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_RETRY_SECS: u64 = 300;
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";
pub const SMTPS_PORT: u16 = 465;
pub const SUBMISSION_PORT: u16 = 587;

/// A kind of notification destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Webhook,
    Slack,
    Telegram,
    Email,
    Heartbeat,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email, Channel::Heartbeat];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Slack => "slack",
            Channel::Telegram => "telegram",
            Channel::Email => "email",
            Channel::Heartbeat => "heartbeat",
        }
    }

    /// The inverse of [`Channel::as_str`] (case and surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Channel> {
        let s = s.trim();
        Channel::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: Secret,
    /// HMAC-SHA256 key for `X-EF-Backup-Signature`.
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramConfig {
    pub token: Secret,
    /// A number (`-100…` for groups and channels) or `@channelname`.
    pub chat_id: String,
    /// Without a trailing `/`.
    pub api_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://`: the connection must be upgraded with STARTTLS before anything else is sent.
    StartTls,
    /// `smtp://` with `EF__NOTIFY_SMTP_PLAINTEXT=true`: no TLS at all.
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub security: SmtpSecurity,
    pub host: String,
    pub port: u16,
    /// Percent-decoded; with a password, or neither.
    pub user: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    pub smtp: SmtpConfig,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
    /// Slack or Mattermost incoming-webhook URL.
    pub slack: Option<Secret>,
    pub telegram: Option<TelegramConfig>,
    pub email: Option<EmailConfig>,
    /// healthchecks.io-style ping URL, without a trailing `/`.
    pub heartbeat: Option<Secret>,
    /// Per delivery attempt.
    pub timeout_secs: u64,
    /// How long a message keeps being retried; 0 = one attempt.
    pub retry_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            slack: None,
            telegram: None,
            email: None,
            heartbeat: None,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            retry_secs: DEFAULT_RETRY_SECS,
        }
    }
}

impl NotifyConfig {
    /// No channel is configured.
    pub fn is_empty(&self) -> bool {
        self.channels().is_empty()
    }

    /// The configured channels, in [`Channel::ALL`] order.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL.into_iter().filter(|&c| self.has(c)).collect()
    }

    pub fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::Webhook => self.webhook.is_some(),
            Channel::Slack => self.slack.is_some(),
            Channel::Telegram => self.telegram.is_some(),
            Channel::Email => self.email.is_some(),
            Channel::Heartbeat => self.heartbeat.is_some(),
        }
    }
}

/// What may be shown of a URL that holds a credential in its path, query or user part: its
/// scheme, host and port, e.g. `https://hooks.slack.com/…`. Never fails: a string that is not
/// a URL shows as `<url>`.
pub fn endpoint(url: &str) -> String {
    let Some((scheme, rest)) = url.trim().split_once("://") else { return "<url>".into() };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if scheme.is_empty() || host.is_empty() || !scheme.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c)) {
        return "<url>".into();
    }
    format!("{}://{host}/…", scheme.to_ascii_lowercase())
}

/// Reads the `EF__NOTIFY_*` variables.
pub(super) fn parse(v: &Vars) -> Result<NotifyConfig, ConfigError> {
    let webhook = match (v.get("EF__NOTIFY_WEBHOOK_URL"), v.get("EF__NOTIFY_WEBHOOK_SECRET")) {
        (Some(url), secret) => Some(WebhookConfig { url: http_url("EF__NOTIFY_WEBHOOK_URL", url)?, secret: secret.map(|s| Secret::new(s.trim())) }),
        (None, Some(_)) => return Err(unused("EF__NOTIFY_WEBHOOK_SECRET", "EF__NOTIFY_WEBHOOK_URL")),
        (None, None) => None,
    };
    let slack = v.get("EF__NOTIFY_SLACK_URL").map(|url| http_url("EF__NOTIFY_SLACK_URL", url)).transpose()?;
    let heartbeat = v
        .get("EF__NOTIFY_HEARTBEAT_URL")
        .map(|url| {
            let url = http_url("EF__NOTIFY_HEARTBEAT_URL", url)?;
            // `/start` and `/fail` are appended: `…/uuid/` must not become `…/uuid//start`.
            Ok(Secret::new(url.expose().strip_suffix('/').unwrap_or(url.expose())))
        })
        .transpose()?;
    Ok(NotifyConfig {
        webhook,
        slack,
        telegram: telegram(v)?,
        email: email(v)?,
        heartbeat,
        timeout_secs: v.number("EF__NOTIFY_TIMEOUT_SECS", DEFAULT_TIMEOUT_SECS, 1, 300)?,
        retry_secs: v.number("EF__NOTIFY_RETRY_SECS", DEFAULT_RETRY_SECS, 0, 86_400)?,
    })
}

fn unused(var: &'static str, needs: &str) -> ConfigError {
    ConfigError::Invalid { var, reason: format!("set, but {needs} is not: set {needs} too, or unset {var}") }
}

/// An `http://` or `https://` URL with a host. The value is a credential, so the reason never
/// quotes it.
fn http_url(var: &'static str, raw: &str) -> Result<Secret, ConfigError> {
    let url = raw.trim();
    let invalid = |what: &str| ConfigError::Invalid {
        var,
        reason: format!(
            "{what}: expected an http:// or https:// URL such as https://hooks.example.com/… (the value is not shown: it holds a credential)"
        ),
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains blanks or control characters"));
    }
    let Some((scheme, rest)) = url.split_once("://") else { return Err(invalid("is not a URL")) };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(invalid("has a scheme other than http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_and_port(host_port).ok_or_else(|| invalid("has no valid host[:port]"))?;
    Ok(Secret::new(url))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port `None` when absent.
fn host_and_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if v6.is_empty() || !v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return None;
        }
        (format!("[{v6}]"), if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() || !host.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_') {
            return None;
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => Some(p.parse::<u16>().ok().filter(|&p| p > 0)?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Telegram is on with both the token and the chat id; one without the other is a mistake.
fn telegram(v: &Vars) -> Result<Option<TelegramConfig>, ConfigError> {
    let (token, chat) = (v.get("EF__NOTIFY_TELEGRAM_BOT_TOKEN"), v.get("EF__NOTIFY_TELEGRAM_CHAT_ID"));
    let (token, chat_id) = match (token, chat) {
        (None, None) => {
            return match v.get("EF__NOTIFY_TELEGRAM_API_URL") {
                Some(_) => Err(unused("EF__NOTIFY_TELEGRAM_API_URL", "EF__NOTIFY_TELEGRAM_BOT_TOKEN")),
                None => Ok(None),
            }
        }
        (Some(_), None) => return Err(half("EF__NOTIFY_TELEGRAM_CHAT_ID", "EF__NOTIFY_TELEGRAM_BOT_TOKEN")),
        (None, Some(_)) => return Err(half("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "EF__NOTIFY_TELEGRAM_CHAT_ID")),
        (Some(t), Some(c)) => (t.trim(), c.trim()),
    };
    // The token becomes part of the request path: nothing that could change the path.
    if !token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b':' || c == b'_' || c == b'-') {
        return Err(ConfigError::Invalid {
            var: "EF__NOTIFY_TELEGRAM_BOT_TOKEN",
            reason: "is not a bot token (letters, digits, `:`, `_` and `-`, as @BotFather gives it; the value is not shown)".into(),
        });
    }
    let numeric = chat_id.strip_prefix('-').unwrap_or(chat_id);
    let valid_chat = (!numeric.is_empty() && numeric.bytes().all(|c| c.is_ascii_digit()))
        || chat_id.strip_prefix('@').is_some_and(|name| !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    if !valid_chat {
        return Err(ConfigError::Invalid {
            var: "EF__NOTIFY_TELEGRAM_CHAT_ID",
            reason: format!("{chat_id:?} is not a chat id: a number (groups and channels start with -100) or @channelname"),
        });
    }
    let api_url = match v.get("EF__NOTIFY_TELEGRAM_API_URL") {
        None => DEFAULT_TELEGRAM_API_URL.to_string(),
        Some(url) => {
            let url = http_url("EF__NOTIFY_TELEGRAM_API_URL", url)?;
            url.expose().trim_end_matches('/').to_string()
        }
    };
    Ok(Some(TelegramConfig { token: Secret::new(token), chat_id: chat_id.to_string(), api_url }))
}

fn half(missing: &'static str, set: &str) -> ConfigError {
    ConfigError::Invalid { var: missing, reason: format!("not set, but {set} is: set both to notify through Telegram, or neither") }
}

const EMAIL_VARS: [&str; 3] = ["EF__NOTIFY_SMTP_URL", "EF__NOTIFY_EMAIL_FROM", "EF__NOTIFY_EMAIL_TO"];

/// E-mail is on with the SMTP URL, the sender and the recipients; a partial set is an error.
fn email(v: &Vars) -> Result<Option<EmailConfig>, ConfigError> {
    let plaintext = match v.get("EF__NOTIFY_SMTP_PLAINTEXT").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "EF__NOTIFY_SMTP_PLAINTEXT",
                reason: format!("{other:?} is not `true` (send without TLS, for a local relay) or `false` (the default)"),
            })
        }
    };
    let present: Vec<&str> = EMAIL_VARS.iter().copied().filter(|var| v.get(var).is_some()).collect();
    if present.is_empty() {
        if v.get("EF__NOTIFY_SMTP_PLAINTEXT").is_some() {
            return Err(unused("EF__NOTIFY_SMTP_PLAINTEXT", "EF__NOTIFY_SMTP_URL"));
        }
        return Ok(None);
    }
    if let Some(missing) = EMAIL_VARS.iter().copied().find(|var| v.get(var).is_none()) {
        return Err(ConfigError::Invalid {
            var: missing,
            reason: format!("not set, but {} is: set all of {} to notify by e-mail, or none", present.join(" and "), EMAIL_VARS.join(", ")),
        });
    }
    let smtp = smtp_url(v.get("EF__NOTIFY_SMTP_URL").unwrap_or_default(), plaintext)?;
    let from = v.get("EF__NOTIFY_EMAIL_FROM").unwrap_or_default().trim();
    if from.contains(',') || !address_ok(from) {
        return Err(ConfigError::Invalid {
            var: "EF__NOTIFY_EMAIL_FROM",
            reason: format!("{from:?} is not one e-mail address (local@domain, or `Name <local@domain>`)"),
        });
    }
    let mut to: Vec<String> = Vec::new();
    for addr in v.get("EF__NOTIFY_EMAIL_TO").unwrap_or_default().split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if !address_ok(addr) {
            return Err(ConfigError::Invalid {
                var: "EF__NOTIFY_EMAIL_TO",
                reason: format!("{addr:?} is not an e-mail address (a comma-separated list of local@domain or `Name <local@domain>`)"),
            });
        }
        if !to.iter().any(|a| a == addr) {
            to.push(addr.to_string());
        }
    }
    if to.is_empty() {
        return Err(ConfigError::Invalid { var: "EF__NOTIFY_EMAIL_TO", reason: "lists no address: `ops@example.com,dba@example.com`".into() });
    }
    Ok(Some(EmailConfig { smtp, from: from.to_string(), to }))
}

/// `local@domain`, optionally as `Name <local@domain>`: enough to catch a wrong variable or a
/// typo here; the notify crate parses the addresses fully.
fn address_ok(s: &str) -> bool {
    if s.chars().any(|c| c.is_control()) {
        return false;
    }
    let addr = match s.rsplit_once('<') {
        Some((_, rest)) => match rest.strip_suffix('>') {
            Some(a) => a.trim(),
            None => return false,
        },
        None => s,
    };
    let Some((local, domain)) = addr.rsplit_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !addr.chars().any(|c| c.is_whitespace() || "<>,;\"".contains(c))
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// `smtps://[user[:password]@]host[:port]` or `smtp://…`. The URL may hold a password: no
/// reason quotes it.
fn smtp_url(raw: &str, plaintext: bool) -> Result<SmtpConfig, ConfigError> {
    const VAR: &str = "EF__NOTIFY_SMTP_URL";
    let invalid = |what: &str| ConfigError::Invalid {
        var: VAR,
        reason: format!(
            "{what}: expected smtps://[user[:password]@]host[:port] (TLS) or smtp://[user[:password]@]host[:port] (STARTTLS), \
             user and password percent-encoded (the value is not shown: it may hold a password)"
        ),
    };
    let url = raw.trim();
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains blanks or control characters"));
    }
    let Some((scheme, rest)) = url.split_once("://") else { return Err(invalid("is not a URL")) };
    let security = match scheme.to_ascii_lowercase().as_str() {
        "smtps" if plaintext => {
            return Err(ConfigError::Invalid {
                var: "EF__NOTIFY_SMTP_PLAINTEXT",
                reason: "only applies to smtp:// URLs, and EF__NOTIFY_SMTP_URL is smtps://: unset EF__NOTIFY_SMTP_PLAINTEXT".into(),
            })
        }
        "smtps" => SmtpSecurity::Implicit,
        "smtp" if plaintext => SmtpSecurity::Plain,
        "smtp" => SmtpSecurity::StartTls,
        _ => return Err(invalid("has a scheme other than smtps or smtp")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(invalid("has a path or query"));
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = host_and_port(host_port).ok_or_else(|| invalid("has no valid host[:port]"))?;
    let port = port.unwrap_or(if security == SmtpSecurity::Implicit { SMTPS_PORT } else { SUBMISSION_PORT });
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = percent_decode(user).ok_or_else(|| invalid("has a user that is not valid percent-encoded UTF-8"))?;
            let password = match password {
                Some(p) => Some(percent_decode(p).ok_or_else(|| invalid("has a password that is not valid percent-encoded UTF-8"))?),
                None => None,
            };
            match (user.is_empty(), password) {
                (true, _) => return Err(invalid("has a password but no user")),
                (false, None) => return Err(invalid("has a user but no password (user:password@host)")),
                (false, Some(p)) if p.is_empty() => return Err(invalid("has a user but an empty password")),
                (false, Some(p)) => (Some(user), Some(Secret::new(p))),
            }
        }
    };
    Ok(SmtpConfig { security, host, port, user, password })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<NotifyConfig, ConfigError> {
        let vars: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(&Vars(&vars))
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        load(pairs).unwrap_err().to_string()
    }

    #[test]
    fn nothing_set_is_empty() {
        let c = load(&[]).unwrap();
        assert!(c.is_empty() && c.channels().is_empty());
        assert_eq!(c, NotifyConfig::default());
        assert_eq!((c.timeout_secs, c.retry_secs), (10, 300));
        // Empty means unset, as everywhere in the configuration.
        assert!(load(&[("EF__NOTIFY_WEBHOOK_URL", " "), ("EF__NOTIFY_SMTP_URL", "")]).unwrap().is_empty());
    }

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Channel::parse(" Telegram "), Some(Channel::Telegram));
        assert_eq!(Channel::parse("sms"), None);
    }

    #[test]
    fn every_channel() {
        let c = load(&[
            ("EF__NOTIFY_WEBHOOK_URL", "https://hooks.example.com/in/abc"),
            ("EF__NOTIFY_WEBHOOK_SECRET", "whsec"),
            ("EF__NOTIFY_SLACK_URL", "https://hooks.slack.com/services/T0/B0/xyz"),
            ("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "123456:ABC-def_ghi"),
            ("EF__NOTIFY_TELEGRAM_CHAT_ID", "-1001234567890"),
            ("EF__NOTIFY_SMTP_URL", "smtps://alerts%40example.com:p%40ss:w@smtp.example.com"),
            ("EF__NOTIFY_EMAIL_FROM", "EF Backup <backup@example.com>"),
            ("EF__NOTIFY_EMAIL_TO", "ops@example.com, dba@example.com,,ops@example.com"),
            ("EF__NOTIFY_HEARTBEAT_URL", "https://hc-ping.com/5f1e/"),
            ("EF__NOTIFY_TIMEOUT_SECS", "5"),
            ("EF__NOTIFY_RETRY_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(c.channels(), Channel::ALL.to_vec());
        assert!(!c.is_empty());
        let webhook = c.webhook.as_ref().unwrap();
        assert_eq!((webhook.url.expose(), webhook.secret.as_ref().unwrap().expose()), ("https://hooks.example.com/in/abc", "whsec"));
        assert_eq!(c.slack.as_ref().unwrap().expose(), "https://hooks.slack.com/services/T0/B0/xyz");
        let tg = c.telegram.as_ref().unwrap();
        assert_eq!((tg.token.expose(), tg.chat_id.as_str(), tg.api_url.as_str()), ("123456:ABC-def_ghi", "-1001234567890", DEFAULT_TELEGRAM_API_URL));
        let email = c.email.as_ref().unwrap();
        assert_eq!(
            email.smtp,
            SmtpConfig {
                security: SmtpSecurity::Implicit,
                host: "smtp.example.com".into(),
                port: 465,
                user: Some("alerts@example.com".into()),
                password: Some(Secret::new("p@ss:w")),
            }
        );
        assert_eq!(email.from, "EF Backup <backup@example.com>");
        assert_eq!(email.to, vec!["ops@example.com".to_string(), "dba@example.com".to_string()]);
        assert_eq!(c.heartbeat.as_ref().unwrap().expose(), "https://hc-ping.com/5f1e");
        assert_eq!((c.timeout_secs, c.retry_secs), (5, 0));

        let dbg = format!("{c:?}");
        for secret in ["hooks.example.com/in/abc", "whsec", "T0/B0/xyz", "ABC-def_ghi", "p@ss:w", "5f1e"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
    }

    #[test]
    fn telegram_needs_both_and_valid_values() {
        let e = err(&[("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "1:tok")]);
        assert!(e.starts_with("EF__NOTIFY_TELEGRAM_CHAT_ID: not set, but EF__NOTIFY_TELEGRAM_BOT_TOKEN is"), "{e}");
        let e = err(&[("EF__NOTIFY_TELEGRAM_CHAT_ID", "42")]);
        assert!(e.starts_with("EF__NOTIFY_TELEGRAM_BOT_TOKEN: not set"), "{e}");
        let e = err(&[("EF__NOTIFY_TELEGRAM_API_URL", "http://127.0.0.1:8081")]);
        assert!(e.starts_with("EF__NOTIFY_TELEGRAM_API_URL: set, but"), "{e}");
        let e = err(&[("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "1:tok/../x"), ("EF__NOTIFY_TELEGRAM_CHAT_ID", "42")]);
        assert!(e.starts_with("EF__NOTIFY_TELEGRAM_BOT_TOKEN") && !e.contains("tok/"), "{e}");
        for bad in ["abc", "-", "@", "@a b", "12x"] {
            let e = err(&[("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "1:tok"), ("EF__NOTIFY_TELEGRAM_CHAT_ID", bad)]);
            assert!(e.starts_with("EF__NOTIFY_TELEGRAM_CHAT_ID"), "{bad}: {e}");
        }
        for good in ["42", "-1001234567890", "@my_channel"] {
            let c = load(&[("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "1:tok"), ("EF__NOTIFY_TELEGRAM_CHAT_ID", good)]).unwrap();
            assert_eq!(c.telegram.unwrap().chat_id, good);
        }
        let c = load(&[
            ("EF__NOTIFY_TELEGRAM_BOT_TOKEN", "1:tok"),
            ("EF__NOTIFY_TELEGRAM_CHAT_ID", "42"),
            ("EF__NOTIFY_TELEGRAM_API_URL", "http://127.0.0.1:8081/"),
        ])
        .unwrap();
        assert_eq!(c.telegram.unwrap().api_url, "http://127.0.0.1:8081");
    }

    #[test]
    fn urls_must_be_http_and_are_never_quoted() {
        for var in ["EF__NOTIFY_WEBHOOK_URL", "EF__NOTIFY_SLACK_URL", "EF__NOTIFY_HEARTBEAT_URL"] {
            for bad in [
                "ftp://host/sekrit-token",
                "hooks.slack.com/sekrit-token",
                "https:///sekrit-token",
                "https://ho st/sekrit-token",
                "https://h:99999/sekrit-token",
                "https://h:/sekrit-token",
            ] {
                let e = err(&[(var, bad)]);
                assert!(e.starts_with(var), "{var}={bad}: {e}");
                assert!(!e.contains("sekrit"), "{var}={bad}: {e}");
            }
        }
        for good in ["http://127.0.0.1:8080/hook", "https://[::1]:8443/h?x=1", "HTTPS://user:pw@example.com", "https://example.com"] {
            assert!(load(&[("EF__NOTIFY_WEBHOOK_URL", good)]).is_ok(), "{good}");
        }
        let e = err(&[("EF__NOTIFY_WEBHOOK_SECRET", "s3cr3t")]);
        assert!(e.starts_with("EF__NOTIFY_WEBHOOK_SECRET: set, but EF__NOTIFY_WEBHOOK_URL is not") && !e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn timeouts_are_bounded() {
        for (var, bad) in
            [("EF__NOTIFY_TIMEOUT_SECS", "0"), ("EF__NOTIFY_TIMEOUT_SECS", "301"), ("EF__NOTIFY_RETRY_SECS", "-1"), ("EF__NOTIFY_RETRY_SECS", "x")]
        {
            assert!(err(&[(var, bad)]).starts_with(var), "{var}={bad}");
        }
    }

    #[test]
    fn smtp_security_and_ports() {
        let email = |url: &str, plain: Option<&str>| {
            let mut vars = vec![("EF__NOTIFY_SMTP_URL", url), ("EF__NOTIFY_EMAIL_FROM", "a@b.c"), ("EF__NOTIFY_EMAIL_TO", "d@e.f")];
            if let Some(p) = plain {
                vars.push(("EF__NOTIFY_SMTP_PLAINTEXT", p));
            }
            load(&vars).map(|c| c.email.unwrap().smtp)
        };
        let s = email("smtps://mail.example.com", None).unwrap();
        assert_eq!((s.security, s.port, s.user, s.password), (SmtpSecurity::Implicit, 465, None, None));
        // smtp:// never means "plain text if the server offers nothing better".
        let s = email("smtp://u:p@mail.example.com/", None).unwrap();
        assert_eq!((s.security, s.port, s.user.as_deref()), (SmtpSecurity::StartTls, 587, Some("u")));
        let s = email("smtp://mail.example.com:2525", Some("false")).unwrap();
        assert_eq!((s.security, s.port), (SmtpSecurity::StartTls, 2525));
        let s = email("SMTP://127.0.0.1:1025", Some("TRUE")).unwrap();
        assert_eq!((s.security, s.host.as_str(), s.port), (SmtpSecurity::Plain, "127.0.0.1", 1025));
        let s = email("smtp://[::1]:25", Some("true")).unwrap();
        assert_eq!(s.host, "[::1]");

        let e = email("smtps://mail.example.com", Some("true")).unwrap_err().to_string();
        assert!(e.starts_with("EF__NOTIFY_SMTP_PLAINTEXT: only applies to smtp://"), "{e}");
        let e = email("smtp://mail.example.com", Some("yes")).unwrap_err().to_string();
        assert!(e.starts_with("EF__NOTIFY_SMTP_PLAINTEXT"), "{e}");
        let e = err(&[("EF__NOTIFY_SMTP_PLAINTEXT", "true")]);
        assert!(e.starts_with("EF__NOTIFY_SMTP_PLAINTEXT: set, but EF__NOTIFY_SMTP_URL is not"), "{e}");

        for bad in [
            "http://u:hunter2pw@mail.example.com",
            "smtps://u:hunter2pw@",
            "smtps://u:hunter2pw@mail.example.com/path",
            "smtps://u:hunter2pw@mail.example.com:0",
            "smtps://:hunter2pw@mail.example.com",
            "smtps://u:hunter2pw%zz@mail.example.com",
            "smtps://u@mail.example.com",
            "smtps://u:@mail.example.com",
            "mail.example.com:hunter2pw",
        ] {
            let e = email(bad, None).unwrap_err().to_string();
            assert!(e.starts_with("EF__NOTIFY_SMTP_URL"), "{bad}: {e}");
            assert!(!e.contains("hunter2pw"), "{bad}: {e}");
        }
    }

    #[test]
    fn email_all_or_nothing_and_addresses() {
        let e = err(&[("EF__NOTIFY_SMTP_URL", "smtps://u:topsecret@mail.example.com")]);
        assert!(e.starts_with("EF__NOTIFY_EMAIL_FROM: not set, but EF__NOTIFY_SMTP_URL is"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");
        let e = err(&[("EF__NOTIFY_EMAIL_FROM", "a@b.c"), ("EF__NOTIFY_EMAIL_TO", "d@e.f")]);
        assert!(e.starts_with("EF__NOTIFY_SMTP_URL: not set"), "{e}");
        let base = [("EF__NOTIFY_SMTP_URL", "smtps://mail.example.com")];
        for (from, to, var) in [
            ("a@b.c, d@e.f", "x@y.z", "EF__NOTIFY_EMAIL_FROM"),
            ("not-an-address", "x@y.z", "EF__NOTIFY_EMAIL_FROM"),
            ("Name <a@b.c", "x@y.z", "EF__NOTIFY_EMAIL_FROM"),
            ("a@b.c", "x@y.z, broken", "EF__NOTIFY_EMAIL_TO"),
            ("a@b.c", "x@y..z", "EF__NOTIFY_EMAIL_TO"),
            ("a@b.c", " , ", "EF__NOTIFY_EMAIL_TO"),
        ] {
            let mut vars = base.to_vec();
            vars.extend([("EF__NOTIFY_EMAIL_FROM", from), ("EF__NOTIFY_EMAIL_TO", to)]);
            let e = err(&vars);
            assert!(e.starts_with(var), "{from} / {to}: {e}");
        }
    }

    #[test]
    fn part_of_the_config_and_never_printed() {
        let vars: BTreeMap<String, String> =
            [("EF__NOTIFY_SLACK_URL", "https://hooks.slack.com/services/T0/B0/leakme"), ("EF__NOTIFY_RETRY_SECS", "60")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let c = super::super::Config::from_vars(&vars, std::path::Path::new("/srv/app")).unwrap();
        assert_eq!((c.notify.channels(), c.notify.retry_secs), (vec![Channel::Slack], 60));
        assert!(!format!("{c:?}").contains("leakme"));
    }

    #[test]
    fn endpoints_show_scheme_and_host_only() {
        assert_eq!(endpoint("https://hooks.slack.com/services/T0/B0/xyz"), "https://hooks.slack.com/…");
        assert_eq!(endpoint("HTTP://user:pw@127.0.0.1:8080?token=t"), "http://127.0.0.1:8080/…");
        assert_eq!(endpoint("https://api.telegram.org/bot1:tok/sendMessage"), "https://api.telegram.org/…");
        assert_eq!(endpoint("no url at all, tok"), "<url>");
    }
}

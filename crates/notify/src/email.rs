//! The e-mail channel: one plain-text message to all recipients, over SMTP with implicit TLS,
//! required STARTTLS, or (explicitly configured) no TLS.

use std::time::Duration;

use ef_backup_core::config::notify::{EmailConfig, SmtpSecurity};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::redact::one_line;
use crate::tls;
use crate::transport::Failure;
use crate::Message;

pub(crate) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    security: SmtpSecurity,
    /// `smtps://host:port`: no user, no password.
    pub(crate) endpoint: String,
}

impl Email {
    pub(crate) fn build(config: &EmailConfig, timeout: Duration) -> Result<Email, String> {
        let mailbox = |var: &str, addr: &str| addr.parse::<Mailbox>().map_err(|e| format!("{var}: {addr:?} is not an e-mail address: {e}"));
        let from = mailbox("EF__NOTIFY_EMAIL_FROM", &config.from)?;
        let to = config.to.iter().map(|a| mailbox("EF__NOTIFY_EMAIL_TO", a)).collect::<Result<Vec<_>, _>>()?;
        let smtp = &config.smtp;
        // Core keeps IPv6 literals bracketed, as in the URL; sockets and certificates want them bare.
        let host = smtp.host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls_parameters = || {
            // The same trust as the HTTP channels: the system's CA store, else the built-in roots.
            let store = if tls::roots().native { CertificateStore::Default } else { CertificateStore::WebpkiRoots };
            TlsParameters::builder(host.clone()).certificate_store(store).build_rustls().map_err(|e| format!("TLS setup: {e}"))
        };
        let tls = match smtp.security {
            SmtpSecurity::Implicit => Tls::Wrapper(tls_parameters()?),
            // Required, not Opportunistic: a server (or a man in the middle) that does not offer
            // STARTTLS gets neither the password nor the message.
            SmtpSecurity::StartTls => Tls::Required(tls_parameters()?),
            SmtpSecurity::Plain => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(smtp.port).tls(tls).timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string()));
        }
        let scheme = if smtp.security == SmtpSecurity::Implicit { "smtps" } else { "smtp" };
        Ok(Email { transport: builder.build(), from, to, security: smtp.security, endpoint: format!("{scheme}://{}:{}", smtp.host, smtp.port) })
    }

    pub(crate) async fn send(&self, message: &Message) -> Result<(), Failure> {
        let mut builder = lettre::Message::builder().from(self.from.clone()).subject(message.subject.clone()).message_id(None).date_now();
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let email = builder
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|e| Failure::permanent(format!("cannot build the e-mail: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(err) => Err(self.failure(&err)),
        }
    }

    fn failure(&self, err: &lettre::transport::smtp::Error) -> Failure {
        let mut text = one_line(&crate::redact::error_chain(err), 400);
        if err.is_client() && self.security == SmtpSecurity::StartTls && text.contains("STARTTLS") {
            text.push_str(
                " (EF__NOTIFY_SMTP_URL is smtp://, which requires STARTTLS: use smtps:// if the server takes TLS on its own port, \
                 or set EF__NOTIFY_SMTP_PLAINTEXT=true for a local relay)",
            );
        }
        // A 5xx reply or a client-side refusal (no STARTTLS, no usable AUTH mechanism) will be
        // the same next time; 4xx replies, timeouts and network errors may not.
        if err.is_permanent() || err.is_client() {
            Failure::permanent(format!("SMTP: {text}"))
        } else {
            Failure::transient(format!("SMTP: {text}"))
        }
    }
}

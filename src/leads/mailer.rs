//! The SMTP client for lead e-mails: lettre's async transport on tokio, secured as
//! configured ([`SmtpTls`]), authenticating when a user and password are set.
//!
//! A new connection is made for every e-mail (lettre's pool is not enabled): leads are rare,
//! and a fresh connection has no stale state to trip over after the server restarts.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{SmtpSettings, SmtpTls};

/// Commands in one SMTP exchange at most (greeting, EHLO, STARTTLS, EHLO, AUTH with two
/// prompts, MAIL, RCPT for a few recipients, DATA, the data, QUIT): lettre's timeout bounds
/// each network operation, this bounds a server that trickles its answers.
const OPERATIONS_PER_EXCHANGE: u32 = 16;

/// Sends lead e-mails through the configured server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port (security)`, for logs.
    server: String,
    exchange_timeout: Duration,
}

impl Mailer {
    /// Builds the transport (no connection is made yet).
    pub fn new(settings: &SmtpSettings) -> Result<Mailer, String> {
        let from: Mailbox = settings.from.parse().map_err(|e| {
            format!(
                "smtp.from \"{}\" is not a mailbox ({e}): write it as \"AI Bot <bot@example.com>\"",
                settings.from
            )
        })?;
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters(&settings.host)?),
            SmtpTls::StartTls => Tls::Required(tls_parameters(&settings.host)?),
            SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters(&settings.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout));
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            server: format!(
                "{}:{} ({})",
                settings.host,
                settings.port,
                describe(settings.tls)
            ),
            exchange_timeout: settings.timeout.saturating_mul(OPERATIONS_PER_EXCHANGE),
        })
    }

    /// The `From` mailbox of every lead e-mail.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The server, for logs: `host:port (security)`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one e-mail. The error says what went wrong in terms of the server's answer or
    /// the connection; it never holds the password.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        match tokio::time::timeout(self.exchange_timeout, self.transport.send(message)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(format!("SMTP server {}: {e}", self.server)),
            Err(_) => Err(format!(
                "SMTP server {}: no complete exchange within {:?}",
                self.server, self.exchange_timeout
            )),
        }
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, String> {
    TlsParameters::new(host.to_string()).map_err(|e| {
        format!(
            "cannot set up TLS for the SMTP server {host}: {e}; check the system's CA \
             certificates, or set smtp.tls = \"none\" for a local relay"
        )
    })
}

fn describe(tls: SmtpTls) -> &'static str {
    match tls {
        SmtpTls::Implicit => "implicit TLS",
        SmtpTls::StartTls => "STARTTLS",
        SmtpTls::Opportunistic => "STARTTLS if offered",
        SmtpTls::None => "plain text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(tls: SmtpTls) -> SmtpSettings {
        SmtpSettings {
            host: "smtp.example.com".into(),
            port: 587,
            user: Some("bot@example.com".into()),
            password: Some(Secret::new("hunter2")),
            tls,
            from: "AI Bot <bot@example.com>".into(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn every_security_mode_builds() {
        for tls in [
            SmtpTls::Implicit,
            SmtpTls::StartTls,
            SmtpTls::Opportunistic,
            SmtpTls::None,
        ] {
            let mailer = Mailer::new(&settings(tls)).unwrap();
            assert_eq!(mailer.from().to_string(), "AI Bot <bot@example.com>");
            assert!(mailer.server().starts_with("smtp.example.com:587 ("));
        }
    }

    #[test]
    fn a_bad_from_says_how_to_write_it() {
        let mut bad = settings(SmtpTls::None);
        bad.from = "AI Bot".into();
        let err = Mailer::new(&bad).err().unwrap();
        assert!(err.contains("\"AI Bot <bot@example.com>\""), "{err}");
    }

    #[tokio::test]
    async fn errors_name_the_server_and_never_the_password() {
        // A port that was just free: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut closed = settings(SmtpTls::None);
        closed.host = "127.0.0.1".into();
        closed.port = port;
        let mailer = Mailer::new(&closed).unwrap();
        let message = Message::builder()
            .from(mailer.from().clone())
            .to("sales@example.com".parse().unwrap())
            .subject("s")
            .body(String::from("b"))
            .unwrap();
        let err = mailer.send(message).await.unwrap_err();
        assert!(
            err.starts_with(&format!("SMTP server 127.0.0.1:{port} (plain text): ")),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

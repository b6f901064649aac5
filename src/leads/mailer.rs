//! The SMTP client for lead e-mails: one connection per e-mail, secured as configured
//! ([`SmtpTls`]), and a password that only travels encrypted.
//!
//! The exchange is driven step by step on a lettre connection (connect, STARTTLS, then
//! [`next_step`] decides, AUTH, the message) rather than through lettre's transport, which
//! authenticates whatever became of STARTTLS: with `opportunistic`, a man-in-the-middle who
//! removes STARTTLS from the server's EHLO answer would read the password. Here the
//! password goes over an unencrypted connection only when `tls = "none"` says so or the
//! server is on this machine ([`Reach::Loopback`]). Otherwise the attempt stops before AUTH
//! (nothing of the lead is sent either), the lead stays queued and is retried like after
//! any failure, and the refusal is counted (`lead_delivery_refused_total{reason}`). Without
//! a login, `opportunistic` still falls back to plain text: there is no secret to protect.
//!
//! Loopback needs both: the configured host *names* this machine (`localhost`, or an IP
//! literal such as `127.0.0.1` or `::1`) *and* every address it resolves to is a loopback
//! address. A name of another machine that resolves to a loopback address (an `/etc/hosts`
//! entry, a tunnel, a forged DNS answer) counts as remote: what a resolver says never lifts
//! the requirement. The connection goes to exactly the addresses that were checked.
//!
//! For tests, the process environment variable [`LOOPBACK_IS_REMOTE_VAR`] set to `1` makes
//! loopback count as remote, so the refusal can be seen against a test server on
//! `127.0.0.1`.
//!
//! A new connection is made for every e-mail: leads are rare, and a fresh connection has no
//! stale state to trip over after the server restarts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;

use crate::config::{SmtpSettings, SmtpTls};
use crate::metrics::DeliveryRefusal;

/// Commands in one SMTP exchange at most (greeting, EHLO, STARTTLS, EHLO, AUTH with two
/// prompts, MAIL, RCPT for a few recipients, DATA, the data, QUIT): lettre's timeout bounds
/// each network operation, this bounds a server that trickles its answers.
const OPERATIONS_PER_EXCHANGE: u32 = 16;

/// The process environment variable that makes an SMTP server on a loopback address count
/// as remote (value `1` or `true`): a testing aid, so that the refusal to send the password
/// unencrypted can be exercised against a test server on `127.0.0.1`.
pub const LOOPBACK_IS_REMOTE_VAR: &str = "CHATBOT_PROXY_SMTP_LOOPBACK_IS_REMOTE";

/// Where the SMTP server is, as far as the password is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On this machine: the connection never leaves it, so plain text cannot be overheard.
    Loopback,
    /// Anywhere else.
    Remote,
}

/// Whether a loopback server may be trusted with plain text (see [`LOOPBACK_IS_REMOTE_VAR`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackPolicy {
    /// The default: a server on a loopback address is [`Reach::Loopback`].
    Trusted,
    /// Tests only: every server is [`Reach::Remote`].
    AsRemote,
}

impl LoopbackPolicy {
    /// The policy [`LOOPBACK_IS_REMOTE_VAR`] asks for (`Trusted` when it is not set).
    pub fn from_env() -> LoopbackPolicy {
        let value = std::env::var(LOOPBACK_IS_REMOTE_VAR).unwrap_or_default();
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => {
                log::warn!(
                    "{LOOPBACK_IS_REMOTE_VAR} is set: an SMTP server on a loopback address is \
                     treated as remote (a testing aid; unset it in production)"
                );
                LoopbackPolicy::AsRemote
            }
            "" | "0" | "false" => LoopbackPolicy::Trusted,
            _ => {
                log::warn!(
                    "{LOOPBACK_IS_REMOTE_VAR} is neither 1 nor 0: ignored (loopback SMTP servers \
                     are trusted with plain text)"
                );
                LoopbackPolicy::Trusted
            }
        }
    }
}

/// What to do once the connection is set up (after STARTTLS, where it was done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Log in, then send.
    Authenticate,
    /// Send without logging in (no credentials are configured).
    SendWithoutLogin,
    /// Stop here: nothing more is sent to this server.
    Refuse(DeliveryRefusal),
}

/// The rule for the password: it goes only over an encrypted connection, unless the
/// operator chose plain text (`tls = "none"`) or the server is on this machine.
pub fn next_step(tls: SmtpTls, encrypted: bool, has_credentials: bool, reach: Reach) -> Step {
    if !has_credentials {
        return Step::SendWithoutLogin;
    }
    if encrypted || tls == SmtpTls::None || reach == Reach::Loopback {
        Step::Authenticate
    } else {
        Step::Refuse(DeliveryRefusal::PlaintextAuth)
    }
}

/// Whether `host` (as configured) names this machine: `localhost` or a loopback IP literal
/// (`127.0.0.0/8`, `::1`, `::ffff:127.x.y.z`; IPv6 with or without brackets).
pub fn names_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || ip_literal(host).is_some_and(is_loopback)
}

/// Where a server is: loopback only when its name says so, every address it resolved to
/// agrees, and the policy trusts loopback.
pub fn reach(host: &str, addresses: &[SocketAddr], policy: LoopbackPolicy) -> Reach {
    let loopback = policy == LoopbackPolicy::Trusted
        && names_loopback(host)
        && !addresses.is_empty()
        && addresses.iter().all(|a| is_loopback(a.ip()));
    if loopback {
        Reach::Loopback
    } else {
        Reach::Remote
    }
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Why an e-mail was not sent. Neither variant ever holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The proxy declined to go on with this server; the message says what to change.
    Refused {
        refusal: DeliveryRefusal,
        message: String,
    },
    /// The server or the connection failed.
    Failed(String),
}

impl SendError {
    /// The refusal, when the proxy declined rather than the server failing.
    pub fn refusal(&self) -> Option<DeliveryRefusal> {
        match self {
            SendError::Refused { refusal, .. } => Some(*refusal),
            SendError::Failed(_) => None,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Refused { message, .. } | SendError::Failed(message) => f.write_str(message),
        }
    }
}

/// Sends lead e-mails through the configured server.
pub struct Mailer {
    host: String,
    port: u16,
    tls: SmtpTls,
    /// For implicit TLS and STARTTLS; `None` with `tls = "none"`.
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Lettre's bound on each network operation.
    timeout: Duration,
    loopback: LoopbackPolicy,
    from: Mailbox,
    /// `host:port (security)`, for logs.
    server: String,
    exchange_timeout: Duration,
}

impl Mailer {
    /// A mailer for `settings`, trusting loopback servers unless [`LOOPBACK_IS_REMOTE_VAR`]
    /// says otherwise. No connection is made yet.
    pub fn new(settings: &SmtpSettings) -> Result<Mailer, String> {
        Mailer::with_policy(settings, LoopbackPolicy::from_env())
    }

    /// [`Mailer::new`] with an explicit loopback policy.
    pub fn with_policy(
        settings: &SmtpSettings,
        loopback: LoopbackPolicy,
    ) -> Result<Mailer, String> {
        let from: Mailbox = settings.from.parse().map_err(|e| {
            format!(
                "smtp.from \"{}\" is not a mailbox ({e}): write it as \"AI Bot <bot@example.com>\"",
                settings.from
            )
        })?;
        let tls_parameters = match settings.tls {
            SmtpTls::None => None,
            SmtpTls::Implicit | SmtpTls::StartTls | SmtpTls::Opportunistic => {
                Some(tls_parameters(&settings.host)?)
            }
        };
        let credentials = match (&settings.user, &settings.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    "the SMTP user is set without a password: give the password too \
                            (smtp.password, or SMTP_PASS), or remove the user for a server \
                            without login"
                        .to_string(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "the SMTP password is set without a user: give the user too \
                            (smtp.user, or SMTP_USER), or remove the password"
                        .to_string(),
                )
            }
        };
        Ok(Mailer {
            host: settings.host.clone(),
            port: settings.port,
            tls: settings.tls,
            tls_parameters,
            credentials,
            hello: ClientId::default(),
            timeout: settings.timeout,
            loopback,
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
    /// the connection, or why the proxy declined to go on; it never holds the password.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        let email = message.formatted();
        let exchange = self.exchange(message.envelope(), &email);
        match tokio::time::timeout(self.exchange_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Failed(format!(
                "SMTP server {}: no complete exchange within {:?}",
                self.server, self.exchange_timeout
            ))),
        }
    }

    /// One exchange: resolve, connect, secure, decide on the login, send, and say goodbye in
    /// the background (the e-mail is accepted by then: a slow goodbye must not fail it).
    async fn exchange(&self, envelope: &Envelope, email: &[u8]) -> Result<(), SendError> {
        let addresses = self.resolve().await?;
        let reach = reach(&self.host, &addresses, self.loopback);
        let implicit = match self.tls {
            SmtpTls::Implicit => self.tls_parameters.clone(),
            _ => None,
        };
        let mut connection = AsyncSmtpConnection::connect_tokio1(
            addresses.as_slice(),
            Some(self.timeout),
            &self.hello,
            implicit,
            None,
        )
        .await
        .map_err(|e| self.failed(e))?;
        let starttls = match self.tls {
            SmtpTls::StartTls => true,
            SmtpTls::Opportunistic => connection.can_starttls(),
            SmtpTls::Implicit | SmtpTls::None => false,
        };
        if let (true, Some(parameters)) = (starttls, &self.tls_parameters) {
            connection
                .starttls(parameters.clone(), &self.hello)
                .await
                .map_err(|e| self.failed(e))?;
        }
        let step = next_step(
            self.tls,
            connection.is_encrypted(),
            self.credentials.is_some(),
            reach,
        );
        match (step, &self.credentials) {
            (Step::Authenticate, Some(credentials)) => {
                connection
                    .auth(DEFAULT_MECHANISMS, credentials)
                    .await
                    .map_err(|e| self.failed(e))?;
            }
            (Step::Refuse(refusal), _) => {
                say_goodbye(connection);
                return Err(self.refused(refusal));
            }
            _ => {}
        }
        connection
            .send(envelope, email)
            .await
            .map_err(|e| self.failed(e))?;
        say_goodbye(connection);
        Ok(())
    }

    /// The server's addresses; an IP literal is its own address.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, SendError> {
        if let Some(ip) = ip_literal(&self.host) {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.failed(format!("cannot resolve {}: {e}", self.host)))?
            .collect();
        if addresses.is_empty() {
            return Err(self.failed(format!("{} has no address", self.host)));
        }
        Ok(addresses)
    }

    fn failed(&self, e: impl fmt::Display) -> SendError {
        SendError::Failed(format!("SMTP server {}: {e}", self.server))
    }

    fn refused(&self, refusal: DeliveryRefusal) -> SendError {
        let message = match refusal {
            DeliveryRefusal::PlaintextAuth => format!(
                "SMTP server {}: the connection is not encrypted (the server did not offer \
                 STARTTLS), so the SMTP password was not sent and neither was the e-mail; \
                 enable STARTTLS on the server, use tls = \"implicit\" (port 465) or \
                 \"starttls\", or set tls = \"none\" (SMTP_TLS=none) to send the password \
                 unencrypted on purpose",
                self.server
            ),
        };
        SendError::Refused { refusal, message }
    }
}

/// Ends a session politely without making anyone wait for the server's answer.
fn say_goodbye(mut connection: AsyncSmtpConnection) {
    tokio::spawn(async move { connection.abort().await });
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

    const ALL_TLS: [SmtpTls; 4] = [
        SmtpTls::Implicit,
        SmtpTls::StartTls,
        SmtpTls::Opportunistic,
        SmtpTls::None,
    ];

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

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_security_mode_builds() {
        for tls in ALL_TLS {
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

    #[test]
    fn a_user_without_password_or_a_password_without_user_is_refused() {
        let mut no_password = settings(SmtpTls::StartTls);
        no_password.password = None;
        let err = Mailer::new(&no_password).err().unwrap();
        assert!(err.contains("user is set without a password"), "{err}");
        let mut no_user = settings(SmtpTls::StartTls);
        no_user.user = None;
        let err = Mailer::new(&no_user).err().unwrap();
        assert!(err.contains("password is set without a user"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let mut neither = no_user;
        neither.password = None;
        assert!(Mailer::new(&neither).is_ok());
    }

    #[test]
    fn the_password_goes_only_over_encryption_unless_plain_text_is_chosen_or_local() {
        use Reach::{Loopback, Remote};
        let refuse = Step::Refuse(DeliveryRefusal::PlaintextAuth);
        for tls in ALL_TLS {
            // Encrypted: always log in.
            for reach in [Loopback, Remote] {
                assert_eq!(next_step(tls, true, true, reach), Step::Authenticate);
            }
            // Plain text on this machine: the exemption.
            assert_eq!(next_step(tls, false, true, Loopback), Step::Authenticate);
            // No credentials: nothing secret, send as configured.
            for reach in [Loopback, Remote] {
                for encrypted in [true, false] {
                    assert_eq!(
                        next_step(tls, encrypted, false, reach),
                        Step::SendWithoutLogin
                    );
                }
            }
        }
        // Plain text to a remote server: only when the operator chose "none".
        assert_eq!(
            next_step(SmtpTls::None, false, true, Remote),
            Step::Authenticate
        );
        for tls in [SmtpTls::Opportunistic, SmtpTls::StartTls, SmtpTls::Implicit] {
            assert_eq!(next_step(tls, false, true, Remote), refuse, "{tls:?}");
        }
    }

    #[test]
    fn loopback_names_are_localhost_and_loopback_literals() {
        for host in [
            "localhost",
            "LocalHost",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(names_loopback(host), "{host}");
        }
        for host in [
            "smtp.example.com",
            "localhost.example.com",
            "mylocalhost",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "[::2]",
            "::ffff:10.0.0.1",
            "",
        ] {
            assert!(!names_loopback(host), "{host}");
        }
    }

    #[test]
    fn loopback_needs_the_name_and_every_address_and_the_policy() {
        use LoopbackPolicy::{AsRemote, Trusted};
        let local = [addr("127.0.0.1:25"), addr("[::1]:25")];
        assert_eq!(reach("localhost", &local, Trusted), Reach::Loopback);
        assert_eq!(reach("127.0.0.1", &local[..1], Trusted), Reach::Loopback);
        // The knob for tests.
        assert_eq!(reach("localhost", &local, AsRemote), Reach::Remote);
        assert_eq!(reach("127.0.0.1", &local[..1], AsRemote), Reach::Remote);
        // A remote name that resolves to loopback stays remote.
        assert_eq!(reach("smtp.example.com", &local, Trusted), Reach::Remote);
        // A loopback name with any address elsewhere is remote.
        let mixed = [addr("127.0.0.1:25"), addr("192.0.2.7:25")];
        assert_eq!(reach("localhost", &mixed, Trusted), Reach::Remote);
        assert_eq!(reach("localhost", &[], Trusted), Reach::Remote);
    }

    #[test]
    fn a_refusal_says_what_to_change_and_never_holds_the_password() {
        let mailer = Mailer::new(&settings(SmtpTls::Opportunistic)).unwrap();
        let err = mailer.refused(DeliveryRefusal::PlaintextAuth);
        assert_eq!(err.refusal(), Some(DeliveryRefusal::PlaintextAuth));
        let text = err.to_string();
        assert!(
            text.starts_with("SMTP server smtp.example.com:587 (STARTTLS if offered): "),
            "{text}"
        );
        assert!(text.contains("tls = \"none\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(SendError::Failed("x".into()).refusal(), None);
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
        let err = mailer.send(message).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("SMTP server 127.0.0.1:{port} (plain text): ")),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

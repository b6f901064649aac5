//! The set-up most end-to-end tests share: the stub upstream, maybe a test SMTP server for
//! lead e-mails, and a proxy configured with their addresses.
//!
//! [`Setup`] starts them in that order (the SMTP server already stopped, or refusing mail, if
//! the test asks) and hands back a [`Rig`] that owns all three, so each is stopped when the
//! test ends. A test destructures it: `let Rig { stub, smtp, proxy } = Setup::new()...`.

use super::{Launch, Proxy, Stub};
use crate::smtp_server::SmtpServer;

/// What a test starts. `S` is `()` without an SMTP server and [`SmtpServer`] with one.
#[must_use = "nothing runs until Setup::start_with_toml"]
pub struct Setup<S = ()> {
    smtp: S,
    launch: Launch,
}

/// A running stub, SMTP server (if asked for) and proxy.
///
/// Bind every part when destructuring, `_stub` for one the test does not use: a part left to
/// `_` or `..` is dropped, and its process stopped, at the end of the `let`.
pub struct Rig<S = ()> {
    pub stub: Stub,
    pub smtp: S,
    pub proxy: Proxy,
}

impl Setup {
    /// The stub and the proxy, no SMTP server.
    pub fn new() -> Setup {
        Setup {
            smtp: (),
            launch: Proxy::launch(),
        }
    }

    /// With a test SMTP server that accepts mail.
    pub fn smtp(self) -> Setup<SmtpServer> {
        Setup {
            smtp: SmtpServer::start(),
            launch: self.launch,
        }
    }

    /// With a test SMTP server that is stopped (connections refused) when the proxy starts,
    /// until the test calls [`SmtpServer::restart`].
    pub fn smtp_stopped(self) -> Setup<SmtpServer> {
        let mut setup = self.smtp();
        setup.smtp.stop();
        setup
    }

    /// With a test SMTP server that answers MAIL FROM with `reply` (e.g. `451 4.3.0 Try again
    /// later`) until the test calls [`SmtpServer::accept_mail`].
    pub fn smtp_refusing(self, reply: &str) -> Setup<SmtpServer> {
        let setup = self.smtp();
        setup.smtp.refuse_mail(reply);
        setup
    }
}

impl<S> Setup<S> {
    /// Starts the stub, then the proxy in TOML mode with the configuration that `toml` writes
    /// for this stub and SMTP server (`[server] listen` is the harness's, see
    /// [`Launch::start`]); waits until the proxy is ready.
    pub fn start_with_toml(self, toml: impl FnOnce(&Stub, &S) -> String) -> Rig<S> {
        let stub = Stub::start();
        let text = toml(&stub, &self.smtp);
        let proxy = self.launch.toml(&text).start();
        Rig {
            stub,
            smtp: self.smtp,
            proxy,
        }
    }
}

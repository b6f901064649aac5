//! The process: Pingora's server settings, the proxy service (and the metrics endpoint
//! beside it, when configured), the drain that stops it (see [`crate::shutdown`]) and the
//! hand-over of the listening sockets to a new process (`--upgrade`).

use crate::config::{ClientTimeouts, Config, ServerSettings};
use crate::downstream::{GuardedHttp, Timeouts};
use crate::metrics::MetricsEndpoint;
use crate::proxy::ChatbotProxy;
use crate::shutdown::{Drain, Signals};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use std::time::Duration;

/// Pingora's own shutdown timer is a backstop: it waits this much longer than the drain
/// limit, so the [`Drain`] service, which ends the process at the limit, always acts first.
const BACKSTOP_SECONDS: u64 = 2;
/// Then Pingora gives its runtimes this long to stop before dropping what still runs.
const RUNTIME_STOP_SECONDS: u64 = 1;

/// A Pingora server configured from our settings (threads, drain limit, upgrade socket),
/// not from Pingora's YAML. `upgrade`: take the listening sockets over from the running
/// process (`--upgrade`) when [`run`] starts it.
///
/// Pingora's grace period (a fixed wait after the shutdown starts) is set past the drain
/// limit, so Pingora itself never cuts a stream before the limit; the [`Drain`] service that
/// [`add_proxy`] adds ends the process as soon as nothing is in flight, or at the limit.
pub fn pingora_server(settings: &ServerSettings, upgrade: bool) -> Server {
    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.drain_timeout_seconds + BACKSTOP_SECONDS),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_STOP_SECONDS),
        upgrade_sock: settings.upgrade_sock.clone(),
        // The proxy service's own connector: one bundle file, not the whole certs directory.
        ca_file: crate::ca_roots::bundle_file(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    Server::new_with_opt_and_conf(opt, conf)
}

/// Takes the listening sockets over when started with `--upgrade` (waiting a few seconds
/// for the old process to send them on SIGQUIT), then runs until shutdown with our
/// [`Signals`]. Call it after every service was added: a process that cannot start (the
/// journal, the configuration) fails before it takes the old process's sockets.
pub fn run(mut server: Server, settings: &ServerSettings) {
    let upgrading = server.options.as_ref().is_some_and(|opt| opt.upgrade);
    if upgrading {
        log::info!(
            "upgrade: waiting for the running process to hand over its listening sockets \
             through {} (send it SIGQUIT now)",
            settings.upgrade_sock
        );
    }
    server.bootstrap();
    if upgrading {
        log::info!("upgrade: listening sockets received");
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            grace_period: Duration::from_secs(settings.grace_period_seconds),
        }),
    });
}

/// Add the proxy service for `config`, and beside it the lead delivery service, the drain
/// and, when `metrics_listen` is configured, the metrics endpoint, to `server`.
pub fn add_proxy(server: &mut Server, config: Config) -> Result<(), crate::app::StartError> {
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics_listen.clone();
    let drain_limit = Duration::from_secs(config.server.drain_timeout_seconds);
    let state = crate::app::AppState::new(config)?;
    let drain = Drain {
        requests: state.in_flight.clone(),
        leads: state.leads.clone(),
        limit: drain_limit,
    };
    let delivery = pingora::services::background::background_service(
        "lead delivery",
        state.leads.delivery_service(),
    );
    if let Some(addr) = metrics_listen {
        let endpoint = MetricsEndpoint::new(state.metrics.clone(), state.leads.clone());
        let mut metrics = pingora::services::listening::Service::new("metrics".into(), endpoint);
        metrics.add_tcp(&addr);
        server.add_service(metrics);
        log::info!("metrics on http://{addr}/metrics");
    }
    let timeouts = client_timeouts(&state.config.server.timeouts);
    let mut service = pingora::services::listening::Service::new(
        "chatbot-proxy".into(),
        GuardedHttp::new(ChatbotProxy::new(state), timeouts),
    );
    service.add_listener(ListenerConfig::tcp(listen).l4_buffer(browser_buffers()));
    server.add_service(service);
    server.add_service(delivery);
    server.add_service(pingora::services::background::background_service(
        "drain", drain,
    ));
    Ok(())
}

/// The transport buffers of a browser connection: no read buffer. Pingora's default is 64 KiB
/// per connection, zeroed when the connection is accepted and kept for as long as it is open:
/// most of the memory of a held chat stream. Without TLS to decrypt, it saves no read either:
/// the HTTP parser reads headers and bodies into buffers of its own. Writes keep Pingora's
/// small buffer (one segment), which the connection flushes after every chunk of a stream.
fn browser_buffers() -> L4BufferSettings {
    L4BufferSettings {
        read: Some(0),
        write: None,
    }
}

/// The connection deadlines of the browser side.
fn client_timeouts(configured: &ClientTimeouts) -> Timeouts {
    Timeouts {
        keepalive: configured.keepalive,
        header: configured.request_header,
        stalled_reader: configured.stalled_reader,
    }
}

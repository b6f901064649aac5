//! The process: Pingora's server settings, and the proxy service (and the metrics endpoint
//! beside it, when configured).

use crate::config::{ClientTimeouts, Config, ServerSettings};
use crate::downstream::{GuardedHttp, Timeouts};
use crate::metrics::MetricsEndpoint;
use crate::proxy::ChatbotProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// A Pingora server configured from our settings (threads, grace period), not from
/// Pingora's YAML, with its default 300 s grace period replaced by ours.
pub fn pingora_server(settings: &ServerSettings) -> Server {
    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// Add the proxy service for `config`, and beside it the lead delivery service and, when
/// `metrics_listen` is configured, the metrics endpoint, to `server`.
pub fn add_proxy(server: &mut Server, config: Config) -> Result<(), crate::app::StartError> {
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics_listen.clone();
    let state = crate::app::AppState::new(config)?;
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
    let proxy = pingora_proxy::http_proxy(&server.configuration, ChatbotProxy::new(state));
    let mut service = pingora::services::listening::Service::new(
        "chatbot-proxy".into(),
        GuardedHttp::new(proxy, timeouts),
    );
    service.add_tcp(&listen);
    server.add_service(service);
    server.add_service(delivery);
    Ok(())
}

/// The connection deadlines of the browser side.
fn client_timeouts(configured: &ClientTimeouts) -> Timeouts {
    Timeouts {
        keepalive: configured.keepalive,
        header: configured.request_header,
        stalled_reader: configured.stalled_reader,
    }
}

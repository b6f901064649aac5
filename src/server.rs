//! The process: Pingora's server settings, the proxy service (and the metrics endpoint
//! beside it, when configured), and the demo set-up.

use crate::config::{
    Config, LeadSettings, Limits, Secret, ServerSettings, StreamFormat, Tenant, UpstreamApi,
    UpstreamSettings,
};
use crate::metrics::MetricsEndpoint;
use crate::proxy::{AppState, ChatbotProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::time::Duration;

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
pub fn add_proxy(server: &mut Server, config: Config) -> Result<(), String> {
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics_listen.clone();
    let state = AppState::new(config)?;
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
    let mut service = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        ChatbotProxy::new(state),
        "chatbot-proxy",
    );
    service.add_tcp(&listen);
    server.add_service(service);
    server.add_service(delivery);
    Ok(())
}

/// The configuration of `chatbot-proxy demo`: one tenant for `localhost`, talking to the
/// bundled stub at `stub_listen`.
pub fn demo_config(listen: &str, stub_listen: &str) -> Config {
    Config {
        server: ServerSettings {
            listen: listen.to_string(),
            prefix: "/open-ai".into(),
            threads: 2,
            grace_period_seconds: 0,
            graceful_shutdown_timeout_seconds: 5,
        },
        upstream: UpstreamSettings {
            base_url: format!("http://{stub_listen}/v1"),
            tls: false,
            host: stub_listen
                .rsplit_once(':')
                .map_or(stub_listen, |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string(),
            port: stub_listen
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(80),
            base_path: "/v1".into(),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
        },
        limits: Limits {
            max_body_bytes: 32 * 1024,
            max_message_chars: 4000,
        },
        tenants: vec![Tenant {
            name: "demo".into(),
            domains: ["localhost", "127.0.0.1"]
                .map(|d| d.parse().expect("valid entry"))
                .into(),
            api_key: Secret::new("sk-demo"),
            api: UpstreamApi::Assistants {
                assistant_id: "asst_demo".into(),
            },
            lead_recipients: vec!["owner@localhost".into()],
            lead_tool: "sendEmail".into(),
            stream_format: StreamFormat::OpenAi,
        }],
        smtp: None,
        metrics_listen: None,
        leads: LeadSettings {
            dir: "data".into(),
            max_per_conversation: 3,
            max_per_tenant_per_hour: 100,
            max_tool_rounds: 5,
            send_timeout: Duration::from_secs(5),
        },
    }
}

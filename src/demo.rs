//! The `stub` and `demo` subcommands of the binary (cargo feature `stub`, on by default): the
//! stub OpenAI upstream alone, or with the proxy in front of it and a demo tenant. A module of
//! `main.rs`, not of the library; a production build (`--no-default-features`) leaves it out.
//! The demo also serves a sample web page (two pages, on a port of its own) that embeds the
//! proxy's widget with its one `<script>` tag, so a newcomer sees it working in a browser.

use async_trait::async_trait;
use chatbot_proxy::config::{
    Config, LeadSettings, Limits, Secret, ServerSettings, StreamFormat, Tenant, UpstreamApi,
    UpstreamSettings,
};
use chatbot_proxy::server;
use clap::Subcommand;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum Command {
    /// Run the stub OpenAI API (for tests, benchmarks and trying things out).
    Stub {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Milliseconds between two streamed events (a message's `[stub:slow=MS]` wins).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
    },
    /// Run the proxy against the bundled stub, with a demo tenant for `localhost`.
    Demo {
        /// Address the proxy listens on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// Address the stub listens on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        stub_listen: String,
        /// Milliseconds between two streamed events, so the reply is seen arriving.
        #[arg(long, default_value_t = 60)]
        pace_ms: u64,
        /// Address of the sample web page that embeds the widget.
        #[arg(long, default_value = "127.0.0.1:3001")]
        page_listen: String,
    },
}

/// Run `command` until the process is stopped.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Stub {
            listen,
            threads,
            pace_ms,
        } => {
            let settings = ServerSettings {
                listen: listen.clone(),
                prefix: String::new(),
                threads,
                drain_timeout_seconds: 1,
                ..ServerSettings::default()
            };
            let mut server = server::pingora_server(&settings, false);
            server.add_service(openai_stub::stub_service(
                &listen,
                Duration::from_millis(pace_ms),
            ));
            log::info!("stub OpenAI API listening on http://{listen}/v1");
            server::run(server, &settings);
            ExitCode::SUCCESS
        }
        Command::Demo {
            listen,
            stub_listen,
            pace_ms,
            page_listen,
        } => {
            let config = demo_config(&listen, &stub_listen);
            let settings = config.server.clone();
            let mut server = server::pingora_server(&settings, false);
            server.add_service(openai_stub::stub_service(
                &stub_listen,
                Duration::from_millis(pace_ms),
            ));
            if let Err(e) = server::add_proxy(&mut server, config) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let proxy_url = format!("http://localhost:{}", port_of(&listen));
            let mut page = pingora::services::listening::Service::new(
                "demo page".to_string(),
                DemoPage { proxy_url },
            );
            page.add_tcp(&page_listen);
            server.add_service(page);
            print_demo_banner(&listen, &page_listen);
            server::run(server, &settings);
            ExitCode::SUCCESS
        }
    }
}

/// The configuration of `chatbot-proxy demo`: one tenant for `localhost`, talking to the
/// bundled stub at `stub_listen`.
fn demo_config(listen: &str, stub_listen: &str) -> Config {
    Config {
        server: ServerSettings {
            listen: listen.to_string(),
            prefix: "/open-ai".into(),
            threads: 2,
            drain_timeout_seconds: 5,
            ..ServerSettings::default()
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
            ..UpstreamSettings::default()
        },
        limits: Limits {
            max_body_bytes: 32 * 1024,
            max_message_chars: 4000,
            // conversation handles: the secret is generated in the leads directory
            session_secret: None,
            conversation_ttl: Duration::from_secs(24 * 3600),
            max_messages_per_conversation: 50,
            ..Limits::default()
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
            redact_run_objects: false,
            rate_limit: None,
            daily_token_budget: None,
            turnstile_secret: None,
            turnstile_site_key: None,
            max_output_tokens: None,
        }],
        smtp: None,
        metrics_listen: None,
        leads: LeadSettings {
            dir: "data".into(),
            max_per_conversation: 3,
            max_per_tenant_per_hour: 100,
            max_tool_rounds: 5,
            send_timeout: Duration::from_secs(5),
            max_per_address_per_day: 5,
        },
    }
}

/// The port of a `host:port` address (`3000` if it has none).
fn port_of(listen: &str) -> &str {
    listen.rsplit_once(':').map_or("3000", |(_, p)| p)
}

/// The sample site: `/` and `/about`, each embedding the widget from `proxy_url`.
struct DemoPage {
    proxy_url: String,
}

#[async_trait]
impl ServeHttp for DemoPage {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let title = match session.req_header().uri.path() {
            "/" => Some("Welcome"),
            "/about" => Some("About us"),
            _ => None,
        };
        let (status, body) = match title {
            Some(title) => (
                200,
                include_str!("embed/demo-page.html")
                    .replace("{{TITLE}}", title)
                    .replace("{{PROXY}}", &self.proxy_url),
            ),
            None => (404, "not found".to_string()),
        };
        http::Response::builder()
            .status(status)
            .header("Content-Type", "text/html; charset=utf-8")
            .header("Content-Length", body.len())
            .header("Cache-Control", "no-store")
            .body(body.into_bytes())
            .expect("a valid response")
    }
}

fn print_demo_banner(listen: &str, page_listen: &str) {
    let port = port_of(listen);
    let page = format!("http://localhost:{}/", port_of(page_listen));
    let base = format!("http://localhost:{port}/open-ai");
    let base_js = format!("http://localhost:{port}");
    println!(
        "\nchatbot-proxy demo: proxy on {listen}, stub OpenAI upstream in-process (no key needed).\n\
         See the widget in a browser: open {page} (a sample site embedding {base_js}/widget.js).\n\
         Stream a reply (creates a thread, then sends a message):\n\n  \
         T=$(curl -s -H 'Origin: http://localhost' {base}/create-thread | sed -E 's/.*\"id\":\"([^\"]+)\".*/\\1/') && \
         curl -N -H 'Origin: http://localhost' -H 'Content-Type: application/json' \
         -d \"{{\\\"threadId\\\":\\\"$T\\\",\\\"message\\\":\\\"Hello there\\\"}}\" {base}/process-message\n"
    );
}

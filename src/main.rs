//! The `chatbot-proxy` command: run the proxy, check a configuration, or run the stub
//! upstream (alone, or with the proxy as a demo).

use chatbot_proxy::{config, logging, server, stub};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Small, short-lived allocations dominate a proxy's heap traffic; mimalloc serves them faster
/// than glibc's malloc (measured with scripts/bench/run).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Edge proxy for embeddable OpenAI chatbot widgets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file. Without it, the configuration comes from the environment
    /// (DOMAINS, OPENAI_API_KEYS, ASSISTANT_IDS, ...) and a `.env` file in the working directory.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,

    /// Check the configuration and exit.
    #[arg(long, short = 't')]
    test: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
    },
}

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Stub {
            listen,
            threads,
            pace_ms,
        }) => {
            let mut server = server::pingora_server(&config::ServerSettings {
                listen: listen.clone(),
                prefix: String::new(),
                threads,
                grace_period_seconds: 0,
                graceful_shutdown_timeout_seconds: 1,
            });
            server.add_service(stub::stub_service(&listen, Duration::from_millis(pace_ms)));
            log::info!("stub OpenAI API listening on http://{listen}/v1");
            server.run_forever()
        }
        Some(Command::Demo {
            listen,
            stub_listen,
            pace_ms,
        }) => {
            let config = server::demo_config(&listen, &stub_listen);
            let mut server = server::pingora_server(&config.server);
            server.add_service(stub::stub_service(
                &stub_listen,
                Duration::from_millis(pace_ms),
            ));
            if let Err(e) = server::add_proxy(&mut server, config) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            print_demo_banner(&listen);
            server.run_forever()
        }
        None => run_proxy(cli.config, cli.test),
    }
}

fn run_proxy(path: Option<PathBuf>, test_only: bool) -> ExitCode {
    let config = match config::load(path.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for tenant in &config.tenants {
        logging::register_secret(tenant.api_key.expose());
    }
    if let Some(password) = config.smtp.as_ref().and_then(|s| s.password.as_ref()) {
        logging::register_secret(password.expose());
    }
    if test_only {
        println!("configuration OK: {} tenants", config.tenants.len());
        return ExitCode::SUCCESS;
    }
    log::info!(
        "chatbot-proxy listening on {} (prefix {}), {} tenants, upstream {}",
        config.server.listen,
        config.server.prefix,
        config.tenants.len(),
        config.upstream.base_url
    );
    let mut server = server::pingora_server(&config.server);
    if let Err(e) = server::add_proxy(&mut server, config) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    server.run_forever()
}

fn print_demo_banner(listen: &str) {
    let port = listen.rsplit_once(':').map_or("3000", |(_, p)| p);
    let base = format!("http://localhost:{port}/open-ai");
    println!(
        "\nchatbot-proxy demo: proxy on {listen}, stub OpenAI upstream in-process (no key needed).\n\
         Stream a reply (creates a thread, then sends a message):\n\n  \
         T=$(curl -s -H 'Origin: http://localhost' {base}/create-thread | sed -E 's/.*\"id\":\"([^\"]+)\".*/\\1/') && \
         curl -N -H 'Origin: http://localhost' -H 'Content-Type: application/json' \
         -d \"{{\\\"threadId\\\":\\\"$T\\\",\\\"message\\\":\\\"Hello there\\\"}}\" {base}/process-message\n"
    );
}

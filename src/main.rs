//! The `chatbot-proxy` command: run the proxy, check a configuration, or (with the default
//! `stub` feature, see `demo.rs`) run the stub upstream, alone or with the proxy as a demo.

mod allocator;
#[cfg(feature = "stub")]
mod demo;
mod healthcheck;

use chatbot_proxy::{config, logging, server};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Small, short-lived allocations dominate a proxy's heap traffic; mimalloc serves them faster
/// than glibc's malloc (measured with scripts/bench/run). Its settings: `allocator`.
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

    /// Zero-downtime upgrade: take the listening sockets over from the running process
    /// (through `[server] upgrade_sock`), which then finishes its requests in flight and
    /// exits. Start this process first, then send SIGQUIT to the old one within 5 s.
    #[arg(long, short = 'u')]
    upgrade: bool,

    /// Probe a running proxy's `GET /healthz` on this machine and exit 0 if it answers 200
    /// (container health checks without a shell). Target: PORT or ADDR, else $PORT, else 3000.
    #[arg(long, value_name = "PORT|ADDR", num_args = 0..=1, default_missing_value = "")]
    health_check: Option<String>,

    #[cfg(feature = "stub")]
    #[command(subcommand)]
    command: Option<demo::Command>,
}

fn main() -> ExitCode {
    allocator::tune();
    logging::init();
    let cli = Cli::parse();
    if let Some(target) = cli.health_check.as_deref() {
        return healthcheck::run(target);
    }
    #[cfg(feature = "stub")]
    if let Some(command) = cli.command {
        return demo::run(command);
    }
    run_proxy(cli.config, cli.test, cli.upgrade)
}

fn run_proxy(path: Option<PathBuf>, test_only: bool, upgrade: bool) -> ExitCode {
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
    let settings = config.server.clone();
    let mut server = server::pingora_server(&settings, upgrade);
    if let Err(e) = server::add_proxy(&mut server, config) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    server::run(server, &settings);
    ExitCode::SUCCESS
}

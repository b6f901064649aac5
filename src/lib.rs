//! chatbot-proxy: an edge proxy on Pingora that lets any website embed an AI chatbot widget
//! without exposing its OpenAI key.
//!
//! The public modules are what the `chatbot-proxy` binary and the integration tests use; the
//! others (named without a link below) are the crate's own.
//!
//! A map of the crate, from the outside in:
//! - [`config`]: the TOML file or the old service's environment, validated.
//! - [`origin`] and [`tenant`]: which website is calling, and which tenant serves it.
//! - `routes`, [`request`], `errors`, `respond`: the widget-facing HTTP API; `embed`: the
//!   proxy's own embeddable widget (`/widget.js`) and its public `widget-config`.
//! - [`dialect`]: how widget operations map to an upstream API (one module per API).
//! - [`upstream`]: the HTTP client to OpenAI, on Pingora's connector; `upstream_call`: one
//!   exchange on a tenant's behalf, its failures counted, logged and mapped in one place;
//!   `ca_roots`: the trusted roots its TLS reads (one bundle file, for a fast start).
//! - [`sse`], [`widget`] and `relay`: event-stream framing (upstream's, the old widget's),
//!   and streaming it to the browser.
//! - `turn`: one answer across upstream streams, with tool calls in between, and how the
//!   stream ended (`StreamOutcome`).
//! - [`leads`]: the lead tool: validation, durable journal, e-mail delivery, caps.
//! - `budget`: daily token budgets per tenant; `cancel`: stopping upstream work nobody will
//!   read (a visitor who left, an answer cut short).
//! - `conversation`: the handles create-thread gives out and process-message checks, and one
//!   answer at a time per conversation (a lock in the [`store`]); `session_key`: the secret
//!   that signs handles, configured or generated once.
//! - `app`: the state every request shares, built once at start-up.
//! - `downstream`: deadlines on the browser side of every connection (keep-alive, header,
//!   stalled readers); `redact`: the system prompt kept out of raw streams.
//! - [`handle`], [`client_addr`], [`rate`]: signed conversation handles, the client address
//!   behind trusted proxies, and rate values (the pure cores of abuse control); [`store`]:
//!   counters, locks and slots shared by a fleet through Redis, or kept in-process;
//!   `limits`: requests per visitor and per tenant, and streams per visitor, counted on it;
//!   [`turnstile`]: the optional bot check on create-thread.
//! - `proxy` and [`server`]: the Pingora service and the process around it, which
//!   [`shutdown`] stops without cutting what is in flight; [`logging`]
//!   keeps secrets out of every log line; [`metrics`] counts what they do and serves
//!   `GET /metrics` on a listener of its own.
//!
//! The stand-in for OpenAI's API used by tests, the demo and benchmarks is a crate of its own
//! (`stub/`, `openai_stub`), linked into the binary only with the default `stub` feature.

mod app;
mod budget;
mod ca_roots;
mod cancel;
pub mod client_addr;
pub mod config;
mod conversation;
pub mod dialect;
pub mod domain;
mod downstream;
mod embed;
mod errors;
pub mod handle;
pub mod leads;
mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;
mod proxy;
pub mod rate;
mod redact;
mod relay;
pub mod request;
mod respond;
mod routes;
pub mod server;
mod session_key;
pub mod shutdown;
pub mod sse;
pub mod store;
pub mod tenant;
mod turn;
pub mod turnstile;
pub mod upstream;
mod upstream_call;
pub mod widget;

pub use app::StartError;
pub use errors::ApiError;

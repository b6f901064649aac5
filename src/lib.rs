//! chatbot-proxy: an edge proxy on Pingora that lets any website embed an AI chatbot widget
//! without exposing its OpenAI key.
//!
//! A map of the crate, from the outside in:
//! - [`config`]: the TOML file or the old service's environment, validated.
//! - [`origin`] and [`tenant`]: which website is calling, and which tenant serves it.
//! - [`routes`], [`request`], [`errors`], [`respond`]: the widget-facing HTTP API.
//! - [`dialect`]: how widget operations map to an upstream API (one module per API).
//! - [`upstream`]: the HTTP client to OpenAI, on Pingora's connector.
//! - [`sse`], [`widget`] and [`relay`]: event-stream framing (upstream's, the old widget's),
//!   and streaming it to the browser.
//! - [`turn`]: one answer across upstream streams, with tool calls in between.
//! - [`leads`]: the lead tool: validation, durable journal, e-mail delivery, caps.
//! - [`runs`]: one answer at a time per conversation.
//! - [`proxy`] and [`server`]: the Pingora service and the process around it; [`logging`]
//!   keeps secrets out of every log line; [`metrics`] counts what they do and serves
//!   `GET /metrics` on a listener of its own.
//! - [`stub`]: a stand-in for OpenAI's API, for tests, the demo and benchmarks.

pub mod config;
pub mod dialect;
pub mod domain;
pub mod errors;
pub mod leads;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod relay;
pub mod request;
pub mod respond;
pub mod routes;
pub mod runs;
pub mod server;
pub mod sse;
pub mod stub;
pub mod tenant;
pub mod turn;
pub mod upstream;
pub mod widget;

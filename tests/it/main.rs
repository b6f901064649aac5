//! The integration tests, as one test binary: each module is one area of the proxy's
//! behaviour, tested black-box through the real `chatbot-proxy` binary (started by the
//! [`harness`] on loopback ports) or, for the pure parts, through the library.
//!
//! One binary instead of one per file: the harness is compiled once, and the tests of every
//! area run in parallel in one process. Run one area with `cargo test --test it lead_capture::`.

mod harness;
mod redis_server;
mod smtp_server;

mod budgets;
mod client_timeouts;
mod config_modes;
mod handles;
mod healthcheck;
mod lead_capture;
mod lead_delivery;
mod lead_flood;
mod limits;
mod logging;
mod metrics;
mod old_widget;
mod properties;
mod redaction;
mod responses_api;
mod shutdown;
mod store_redis;
mod threads_and_streams;
mod turnstile;
mod upstream_addresses;
mod upstream_errors;
mod validation;
mod whitelist_cors;
mod widget_js;
mod widget_v1;

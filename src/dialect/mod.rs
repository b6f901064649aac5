//! Upstream dialects: how widget operations map to an upstream API, and what its events mean.
//!
//! The widget speaks one protocol (create a thread, send a message, read a stream). Each
//! upstream API gets one module that knows its paths, bodies and event names; nothing else in
//! the proxy spells an upstream path. The relay only asks a dialect what an event means
//! ([`Signal`]).

pub mod assistants;

/// What an upstream stream event means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Nothing special: forward and go on.
    Progress,
    /// The run (or response) finished successfully.
    Completed,
    /// The run ended without success (`failed`, `cancelled`, `expired`, `incomplete`); the
    /// text is the final status.
    Ended(String),
    /// The run waits for tool outputs.
    RequiresAction,
    /// The upstream reported an error inside the stream.
    ErrorEvent,
    /// The end-of-stream marker (`event: done`, `data: [DONE]`).
    Done,
}

//! Upstream dialects: how widget operations map to an upstream API, and what its events mean.
//!
//! The widget speaks one protocol (create a thread, send a message, read a stream). Each
//! upstream API gets one module that knows its paths, bodies and event names; nothing else in
//! the proxy spells an upstream path. [`Dialect`] picks the module for a tenant, and an
//! [`EventReader`] follows one upstream stream, telling the relay what each event means
//! ([`Signal`]) and collecting the tool calls the model asks for, the tokens the stream
//! reports using ([`Usage`]) and, on the Assistants API, the run's id (to cancel it).

pub mod assistants;
pub mod created;
pub mod responses;

use crate::config::{Tenant, UpstreamApi};
use crate::request::IdRule;
use crate::sse::SseEvent;
use crate::upstream::UpstreamRequest;

/// The fields `T` names of the JSON object `data`, every other member skipped rather than
/// built into a `Value` (events of a stream go through here, most of them large objects of
/// which one field matters). `None` when `data` is not an object, or a named field is
/// repeated or of another type (as a `Value` lookup would find no value of that type).
fn fields_of<'a, T: serde::Deserialize<'a>>(data: &'a str) -> Option<T> {
    if !data.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(data).ok()
}

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
    /// The model waits for tool outputs ([`EventReader::take_tool_calls`] has them).
    RequiresAction,
    /// The upstream reported an error inside the stream.
    ErrorEvent,
    /// The end-of-stream marker (`event: done`, `data: [DONE]`).
    Done,
}

/// One function call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The id the output must name (`call_...`).
    pub call_id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as the model wrote them: a JSON text, not trusted.
    pub arguments: String,
}

/// The tool calls of one round, with what the dialect needs to answer them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRound {
    /// The run waiting for the outputs (Assistants API); `None` for the Responses API.
    pub run_id: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// Tokens an upstream stream reports using, from its terminal event (`usage` of a run,
/// `response.usage` of a response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
    /// Everything, as the upstream adds it up (`total_tokens`).
    pub total: u64,
}

impl Usage {
    /// The usage in a JSON object with these keys for input and output (`total_tokens` is
    /// the total, or their sum when missing); `None` unless it is an object with numbers.
    pub fn from_json(usage: &serde_json::Value, input: &str, output: &str) -> Option<Usage> {
        let count = |key: &str| usage.get(key).and_then(serde_json::Value::as_u64);
        let (input, output) = (count(input)?, count(output)?);
        let total = count("total_tokens").unwrap_or(input.saturating_add(output));
        Some(Usage {
            input,
            output,
            total,
        })
    }

    /// What `self` holds beyond `earlier`, an older report of the same (growing) count.
    pub fn beyond(self, earlier: Usage) -> Usage {
        Usage {
            input: self.input.saturating_sub(earlier.input),
            output: self.output.saturating_sub(earlier.output),
            total: self.total.saturating_sub(earlier.total),
        }
    }
}

/// The answer to one tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub call_id: String,
    pub output: String,
}

/// The upstream API of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Assistants,
    Responses,
}

impl Dialect {
    pub fn of(tenant: &Tenant) -> Dialect {
        match tenant.api {
            UpstreamApi::Assistants { .. } => Dialect::Assistants,
            UpstreamApi::Responses { .. } => Dialect::Responses,
        }
    }

    /// The shape of this API's conversation ids.
    pub fn id_rule(self) -> IdRule {
        match self {
            Dialect::Assistants => assistants::ID_RULE,
            Dialect::Responses => responses::ID_RULE,
        }
    }

    /// Create a conversation (a thread, or a Conversations API conversation).
    pub fn create_conversation(self, tenant: &Tenant) -> UpstreamRequest {
        match self {
            Dialect::Assistants => assistants::create_thread(),
            Dialect::Responses => responses::create_conversation(tenant),
        }
    }

    /// A non-streamed call that must succeed before the turn's stream starts, if any.
    pub fn prepare_turn(self, conversation: &str, message: &str) -> Option<UpstreamRequest> {
        match self {
            Dialect::Assistants => Some(assistants::add_message(conversation, message)),
            Dialect::Responses => None,
        }
    }

    /// The streamed request that answers the user's message. `safety_identifier` stands for
    /// the visitor (see [`crate::handle::safety_identifier`]) where the API takes one.
    pub fn start_turn(
        self,
        tenant: &Tenant,
        conversation: &str,
        message: &str,
        safety_identifier: &str,
    ) -> UpstreamRequest {
        match &tenant.api {
            UpstreamApi::Assistants { assistant_id } => {
                assistants::start_run(conversation, assistant_id, tenant.max_output_tokens)
            }
            UpstreamApi::Responses { .. } => {
                responses::create_response(tenant, conversation, message.into(), safety_identifier)
            }
        }
    }

    /// The streamed request that hands tool outputs back and continues the answer.
    pub fn continue_turn(
        self,
        tenant: &Tenant,
        conversation: &str,
        round: &ToolRound,
        outputs: &[ToolOutput],
        safety_identifier: &str,
    ) -> UpstreamRequest {
        match self {
            Dialect::Assistants => assistants::submit_tool_outputs(
                conversation,
                round.run_id.as_deref().unwrap_or_default(),
                outputs,
            ),
            Dialect::Responses => responses::create_response(
                tenant,
                conversation,
                responses::tool_outputs(outputs),
                safety_identifier,
            ),
        }
    }

    /// The conversation's messages, for the widget's final `end` event.
    pub fn list_messages(self, conversation: &str) -> UpstreamRequest {
        match self {
            Dialect::Assistants => assistants::list_messages(conversation),
            Dialect::Responses => responses::list_items(conversation),
        }
    }

    /// A reader for one upstream stream of this API.
    pub fn reader(self) -> EventReader {
        match self {
            Dialect::Assistants => EventReader::Assistants(assistants::Reader::default()),
            Dialect::Responses => EventReader::Responses(responses::Reader::default()),
        }
    }

    /// `POST .../runs/{run}/cancel` for an answer nobody will read (Assistants API); `None`
    /// for the Responses API, whose answer stops when its stream is closed.
    pub fn cancel_turn(self, conversation: &str, run_id: &str) -> Option<UpstreamRequest> {
        match self {
            Dialect::Assistants => Some(assistants::cancel_run(conversation, run_id)),
            Dialect::Responses => None,
        }
    }

    /// Whether a run's usage covers all its streams so far (Assistants API: a run goes on
    /// across tool-output rounds), rather than one stream alone (a response).
    pub fn usage_is_cumulative(self) -> bool {
        self == Dialect::Assistants
    }

    /// Whether an upstream error body says the conversation is busy with another answer.
    pub fn is_busy_error(self, body: &serde_json::Value) -> bool {
        match self {
            Dialect::Assistants => assistants::is_run_active_error(body),
            Dialect::Responses => responses::is_busy_error(body),
        }
    }
}

/// Follows one upstream stream.
#[derive(Debug)]
pub enum EventReader {
    Assistants(assistants::Reader),
    Responses(responses::Reader),
}

impl EventReader {
    /// What `event` means.
    pub fn observe(&mut self, event: &SseEvent) -> Signal {
        match self {
            EventReader::Assistants(r) => r.observe(event),
            EventReader::Responses(r) => r.observe(event),
        }
    }

    /// The tool calls of the round that ended in [`Signal::RequiresAction`].
    pub fn take_tool_calls(&mut self) -> Option<ToolRound> {
        match self {
            EventReader::Assistants(r) => r.take_tool_calls(),
            EventReader::Responses(r) => r.take_tool_calls(),
        }
    }

    /// The usage reported by the stream's last terminal event, if any.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            EventReader::Assistants(r) => r.usage(),
            EventReader::Responses(r) => r.usage(),
        }
    }

    /// The run's id, once an event named it (Assistants API).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            EventReader::Assistants(r) => r.run_id(),
            EventReader::Responses(_) => None,
        }
    }

    /// Whether `event` carries text of the answer (time to first token).
    pub fn is_text_delta(&self, event: &SseEvent) -> bool {
        match self {
            EventReader::Assistants(_) => assistants::is_text_delta(event),
            EventReader::Responses(_) => responses::is_text_delta(event),
        }
    }
}

//! Stub OpenAI upstream: an in-memory imitation of the parts of the OpenAI
//! API the proxy uses (Assistants threads/messages/runs and Responses +
//! Conversations), speaking the wire format of `tests/fixtures/openai-wire/*.sse`
//! at the workspace root (same event names in the same order, same JSON keys in
//! the same order; ids and unix-second timestamps generated; a run's `expires_at`
//! is `created_at + 600`). Tests, the README demo and benchmarks use it
//! instead of OpenAI. It is a crate of its own, not part of the proxy: the
//! `chatbot-proxy` binary links it only with its default `stub` feature.
//!
//! Start it with [`stub_service`] (a Pingora listening service for
//! `chatbot-proxy stub --listen ADDR` and the in-process demo); the base
//! path is `/v1`, e.g. `upstream.base_url = "http://127.0.0.1:8090/v1"`.
//!
//! # Every response
//! Headers `openai-organization: org-stub` and `x-request-id: req_<32 hex>`.
//! Errors: `{"error":{"message":"...","type":"invalid_request_error","param":null,"code":...}}`
//! (429 uses type `requests`, 500 type `server_error`). Unknown route: 404
//! (`Invalid URL (METHOD PATH)`); known route, wrong method: 405 with
//! `code: "method_not_allowed"` and `Allow`; request body over 1 MiB: 413
//! (`code: "body_too_large"`, connection closed); a POST body that is not a
//! JSON object: 400 (an empty body counts as `{}`). JSON replies carry
//! `Content-Length`; connections are kept alive after every completed
//! response.
//!
//! # Keys (`Authorization: Bearer <key>`)
//! - missing / not `Bearer`: 401. Any other key is accepted, except:
//! - `sk-stub-401` -> 401 (`code: "invalid_api_key"`) on every request;
//! - `sk-stub-403` -> 403 on every request;
//! - `sk-stub-429` -> 429 with `Retry-After: 7` (`code: "rate_limit_exceeded"`);
//! - `sk-stub-500` -> 500;
//! - `sk-stub-hang` -> no response at all: the connection is held 120 s
//!   (ends earlier when the client closes or the server shuts down), then closed.
//!
//! # Assistants API (requires `OpenAI-Beta: assistants=v2`, else 400 `invalid_beta`)
//! - `POST /v1/threads` (`metadata`, `messages` optional) -> thread object
//!   `{"id":"thread_<24 alnum>","object":"thread","created_at","metadata","tool_resources":{}}`.
//! - `GET /v1/threads/{id}` -> the thread.
//! - `POST /v1/threads/{id}/messages` `{"role":"user","content":"..."}` (content may also be
//!   an array of `{"type":"text","text":"..."}`) -> message object. 404
//!   `No thread found with id '...'.`; 400 `Can't add messages to thread_X while a run run_Y is active.`
//! - `GET /v1/threads/{id}/messages` -> `{"object":"list","data":[newest first],"first_id","last_id","has_more":false}`
//!   (`?order=asc` for oldest first). Assistant replies are stored as messages.
//! - `POST /v1/threads/{id}/runs` `{"assistant_id","stream":true}` (`model`, `instructions`,
//!   `metadata` optional) -> event stream. `"stream"` must be `true` (else 400);
//!   a second run while one is active -> 400. The reply is decided by the directives of
//!   the thread's last user message (below).
//! - `POST /v1/threads/{tid}/runs/{rid}/submit_tool_outputs`
//!   `{"tool_outputs":[{"tool_call_id","output"}],"stream":true}` -> 400 unless the run is in
//!   `requires_action` and the ids are exactly the pending ones (any order, no duplicates);
//!   else the stream of `assistants-submit-tool-outputs-stream.sse` replying
//!   `Tool output: <out1> | <out2>` (outputs in the order of the calls), or, with
//!   `[stub:rounds=N]`, the same calls again (new ids) until N rounds were asked.
//! - `GET /v1/threads/{tid}/runs/{rid}` -> run object; `POST .../runs/{rid}/cancel` -> an
//!   active run becomes `cancelled` (400 otherwise).
//!
//! A run is active (blocks new messages and runs) from its creation until its stream
//! ends; a run that ends in `requires_action` stays active until its continuation ends.
//! The final state is committed just before the event that reveals it
//! (`thread.run.completed`, `thread.run.requires_action`, `thread.run.failed`, ...), or when
//! the connection closes, so a client that has seen that event never meets the old state.
//!
//! Streams (`content-type: text/event-stream; charset=utf-8`, `cache-control: no-cache`,
//! chunked, each event `event: NAME\ndata: JSON\n\n` in its own chunk):
//! - plain: `thread.run.created`, `.queued`, `.in_progress`, `thread.run.step.created`,
//!   `.in_progress`, `thread.message.created`, `.in_progress`, one `thread.message.delta` per
//!   word of `You said: <message>` (first delta with `"annotations":[]`), `thread.message.completed`
//!   (full text), `thread.run.step.completed`, `thread.run.completed`, `done` (`data: [DONE]`).
//! - tool calls: `thread.run.created`, `.queued`, `.in_progress`, `thread.run.step.created`,
//!   `.in_progress` (type `tool_calls`), per call one `thread.run.step.delta` with id and name
//!   then deltas with the arguments in pieces of 8 chars, `thread.run.requires_action`, `done`.
//! - continuation: `thread.run.step.completed` (the tool step, with outputs),
//!   `thread.run.queued`, `thread.run.in_progress`, then as plain from the message step on.
//!
//! # Responses API + Conversations (no `OpenAI-Beta` needed)
//! - `POST /v1/conversations` (`metadata`, `items` optional) ->
//!   `{"id":"conv_<48 hex>","object":"conversation","created_at","metadata"}`; `GET /v1/conversations/{id}`.
//! - `GET /v1/conversations/{id}/items` -> list of items, oldest first (`?order=desc` for
//!   newest first): user messages `{"type":"message","id","status":"completed","role":"user","content":[{"type":"input_text","text"}]}`,
//!   assistant messages (`output_text` content), `function_call` (`call_id`, `name`,
//!   `arguments`) and `function_call_output` (`call_id`, `output`) items, in order.
//! - `POST /v1/responses` `{"model","input","stream":true}` (`conversation` as id or `{"id"}`,
//!   `instructions`, `tools`, `metadata` optional; `model` required). `input` is a string or an
//!   array of `{"role":"user","content":...}` / `{"type":"message",...}` /
//!   `{"type":"function_call_output","call_id","output"}` items. Stream as
//!   `responses-create-stream.sse` (no `[DONE]`): `response.created`, `response.in_progress`,
//!   `response.output_item.added`, `response.content_part.added`, word deltas
//!   `response.output_text.delta`, `response.output_text.done`, `response.content_part.done`,
//!   `response.output_item.done`, `response.completed`.
//!   Function calls: per call `response.output_item.added` (`function_call`, `in_progress`,
//!   `arguments:""`), `response.function_call_arguments.delta` pieces,
//!   `response.function_call_arguments.done`, `response.output_item.done` (`completed`), then
//!   `response.completed` listing the calls in `output`. Continue with a new response on the
//!   same conversation whose input holds a `function_call_output` for exactly every pending
//!   `call_id` (else 400 `No tool output found for function call call_X.` /
//!   `No tool call found for function call output with call_id call_X.`); it replies
//!   `Tool output: <out1> | <out2>` (or asks again under `[stub:rounds=N]`).
//!   A second response while one streams on the same conversation -> 400 `conversation_locked`.
//!   Without `conversation` the response is stateless.
//!
//! # Token usage (predictable counts, in OpenAI's shape)
//! - Assistants: run objects carry `usage` `{"prompt_tokens","completion_tokens","total_tokens"}`
//!   in `thread.run.requires_action` and `thread.run.completed` (null in the other run events,
//!   and in failed, cancelled, expired and incomplete runs). Each stream of a run adds
//!   `prompt_tokens` = 20 + the words of the user message (directives removed) and
//!   `completion_tokens` = 8 per function call asked for (a tool-call round) or one per word
//!   delta of the text answer; a run's `usage` is the sum over all its streams so far, so
//!   after one round with one call the completed run of `look up` answering `Tool output: done`
//!   reports 44 + 11 = 55. Run steps carry their own stream's part.
//! - Responses: `response.completed` and `response.incomplete` carry
//!   `response.usage` `{"input_tokens","output_tokens","output_tokens_details":{"reasoning_tokens":0},"total_tokens"}`
//!   for that response alone: `input_tokens` = 20 + the whitespace-separated words of the user
//!   text of its input as sent (directives not removed; 20 for a tool-outputs input),
//!   `output_tokens` = 8 per function call, or one per word delta of the text written.
//!   `response.failed` has `usage: null`.
//!
//! # Directives (`[stub:...]` anywhere in the last user message)
//! Directives are removed from the text before it is echoed (`hi [stub:slow=5]` -> `You said: hi`).
//! Unknown names and bad values are removed and ignored.
//! - `[stub:tool_calls=[{"name":"sendEmail","arguments":"{\"to\":\"a@b.c\"}"}]]` : ask for these
//!   function calls (ids `call_<24 alnum>`); `arguments` is a JSON string (an object is also
//!   accepted). The directive ends at the `]` after the JSON array.
//! - `[stub:rounds=N]` (with tool_calls, N >= 1, default 1): ask for the calls N times in a row.
//! - `[stub:fail]` : Assistants: created, queued, in_progress, `thread.run.failed` (last_error
//!   `{"code":"server_error","message":"Sorry, something went wrong."}`), `done`.
//!   Responses: created, in_progress, `response.failed` (same `error`).
//! - `[stub:cancel]` / `[stub:expire]` : as fail with `thread.run.cancelled` / `thread.run.expired`
//!   (Responses: like `[stub:fail]`).
//! - `[stub:incomplete]` : Responses: two text deltas, the done events with the partial text
//!   (item status `incomplete`), `response.incomplete` (`incomplete_details.reason:
//!   "max_output_tokens"`). Assistants: `thread.run.incomplete` instead of the text, then `done`.
//! - `[stub:error_event]` : the stream up to the first text delta, then `event: error`
//!   (Assistants `{"error":{"message":"Sorry, something went wrong.","type":"server_error"}}`,
//!   Responses `{"type":"error","code":"server_error","message":"...","param":null}`), no done;
//!   the response itself ends normally.
//! - `[stub:cut]` : the stream up to the first text delta, then the TCP connection is closed
//!   without the terminating chunk.
//! - `[stub:slow=MS]` : MS ms between two events (max 120000).
//! - `[stub:hang_after=N]` : N events, then silence for 120 s (ends early if the client closes
//!   or the server shuts down), then the connection is closed without the terminating chunk.
//!   N >= the number of events: silence after the last event. 0: headers only.
//! - `[stub:chunking=split]` (or `[stub:split]`) : every event written in two writes cut in the
//!   middle of its `data:` line (1 ms apart).
//! - `[stub:crlf]` : CRLF line ends in the event stream.
//!
//! Outcome directives (fail, cancel, expire, incomplete, error_event, cut, hang_after) apply to
//! the stream that carries the text answer, i.e. after the last tool-call round; slow,
//! chunking and crlf apply to every stream of the run / conversation turn. A run that ends
//! by `error_event` or `cut` is `failed`.
//!
//! # Test introspection (no key needed, not logged)
//! - `GET /__stub/requests` -> JSON array, oldest first, of every other request received:
//!   `{"method","path" (with `?query`),"headers":{lowercase name: value},"body":"<utf8>"}`
//!   (the `authorization` header included; at most 10000 kept).
//! - `DELETE /__stub/requests` -> 204, clears the log. `GET /__stub/health` -> 200 `{"status":"ok"}`.
//! - `GET /__stub/stats` -> `{"open_streams": N}`: event streams being written right now (a
//!   stream counts until its last write, its cut, or the moment its reader is found gone).

mod assistants;
mod conversations;
mod directives;
mod http;
mod responses;
mod state;
mod threads;
mod wire;

pub use http::StubApp;

/// The stub as a Pingora service listening on `listen` (e.g. `127.0.0.1:8090`);
/// add it to a `pingora::server::Server`.
/// `pace`: the pause between two events of a stream whose message sets no `[stub:slow=MS]`.
pub fn stub_service(
    listen: &str,
    pace: std::time::Duration,
) -> pingora::services::listening::Service<StubApp> {
    let mut service = pingora::services::listening::Service::new(
        "openai stub".to_string(),
        StubApp::with_pace(pace),
    );
    service.add_tcp(listen);
    service
}

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod examples;

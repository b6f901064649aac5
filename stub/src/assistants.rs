//! Assistants API wire objects (thread, message, run, run step, deltas) and
//! the builders of whole run streams, following
//! `assistants-create-run-stream.sse`, `assistants-create-run-requires-action.sse`
//! and `assistants-submit-tool-outputs-stream.sse`.
//!
//! Every object is a struct whose fields are declared in the order of the
//! example files, so the serialized JSON has the same key order.

use serde::Serialize;
use serde_json::Value;

use super::directives::{argument_pieces, word_deltas, Outcome};
use super::state::{alnum_id, now, PendingCall, RunStatus, StoredMessage, StoredRun, StoredThread};
use super::wire::{Ending, Event, Plan};

/// Seconds between a run's creation and its expiry.
pub const RUN_TTL: u64 = 600;
/// Characters per `thread.run.step.delta` arguments piece.
const ARG_PIECE: usize = 8;
const FAIL_MESSAGE: &str = "Sorry, something went wrong.";

// ---------------------------------------------------------------- objects

#[derive(Debug, Clone, Serialize)]
pub struct ThreadObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub metadata: Value,
    pub tool_resources: Value,
}

impl ThreadObject {
    pub fn from_thread(t: &StoredThread) -> ThreadObject {
        ThreadObject {
            id: t.id.clone(),
            object: "thread",
            created_at: t.created_at,
            metadata: t.metadata.clone(),
            tool_resources: Value::Object(Default::default()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TextValue {
    pub value: String,
    pub annotations: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextContent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: TextValue,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub assistant_id: Option<String>,
    pub thread_id: String,
    pub run_id: Option<String>,
    pub status: &'static str,
    pub incomplete_details: Option<Value>,
    pub incomplete_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub role: &'static str,
    pub content: Vec<TextContent>,
    pub metadata: Value,
}

impl MessageObject {
    /// A stored (completed) message as served by the REST endpoints.
    pub fn from_stored(thread_id: &str, m: &StoredMessage) -> MessageObject {
        MessageObject {
            id: m.id.clone(),
            object: "thread.message",
            created_at: m.created_at,
            assistant_id: m.assistant_id.clone(),
            thread_id: thread_id.to_string(),
            run_id: m.run_id.clone(),
            status: "completed",
            incomplete_details: None,
            incomplete_at: None,
            completed_at: Some(m.created_at),
            role: m.role,
            content: vec![text_content(&m.text)],
            metadata: empty_object(),
        }
    }
}

fn text_content(text: &str) -> TextContent {
    TextContent {
        kind: "text",
        text: TextValue {
            value: text.to_string(),
            annotations: Vec::new(),
        },
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, Serialize)]
pub struct DeltaText {
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeltaContent {
    pub index: u32,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: DeltaText,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageDeltaBody {
    pub content: Vec<DeltaContent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageDelta {
    pub id: String,
    pub object: &'static str,
    pub delta: MessageDeltaBody,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolParameters {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub properties: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: String,
    pub parameters: ToolParameters,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Serialize)]
pub struct TruncationStrategy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub last_messages: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }

    /// This usage and `other` together.
    fn plus(self, other: Usage) -> Usage {
        Usage::new(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub code: &'static str,
    pub message: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallFunction {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequiredCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: CallFunction,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubmitToolOutputs {
    pub tool_calls: Vec<RequiredCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequiredAction {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub submit_tool_outputs: SubmitToolOutputs,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub assistant_id: String,
    pub thread_id: String,
    pub status: &'static str,
    pub started_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub required_action: Option<RequiredAction>,
    pub last_error: Option<LastError>,
    pub model: String,
    pub instructions: Option<String>,
    pub tools: Vec<ToolDef>,
    pub metadata: Value,
    pub temperature: f64,
    pub top_p: f64,
    pub max_completion_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    pub truncation_strategy: TruncationStrategy,
    pub incomplete_details: Option<IncompleteDetails>,
    pub usage: Option<Usage>,
    pub response_format: &'static str,
    pub tool_choice: &'static str,
    pub parallel_tool_calls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageCreation {
    pub message_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepFunction {
    pub name: String,
    pub arguments: String,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: StepFunction,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StepDetails {
    MessageCreation {
        #[serde(rename = "type")]
        kind: &'static str,
        message_creation: MessageCreation,
    },
    ToolCalls {
        #[serde(rename = "type")]
        kind: &'static str,
        tool_calls: Vec<StepToolCall>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct StepObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub run_id: String,
    pub assistant_id: String,
    pub thread_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub cancelled_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub last_error: Option<LastError>,
    pub step_details: StepDetails,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstDeltaFunction {
    pub name: String,
    pub arguments: String,
    pub output: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NextDeltaFunction {
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StepDeltaCall {
    /// First delta of a call: id, name, empty arguments, `output: null`.
    First {
        index: usize,
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        function: FirstDeltaFunction,
    },
    /// Later deltas: a piece of the arguments.
    Next {
        index: usize,
        #[serde(rename = "type")]
        kind: &'static str,
        function: NextDeltaFunction,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct StepDeltaDetails {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub tool_calls: Vec<StepDeltaCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepDeltaBody {
    pub step_details: StepDeltaDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepDelta {
    pub id: String,
    pub object: &'static str,
    pub delta: StepDeltaBody,
}

/// `event: error` data of the Assistants stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamError {
    pub error: StreamErrorDetail,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamErrorDetail {
    pub message: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

// ---------------------------------------------------------------- runs

/// The run facts every event of a run needs.
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub run_id: String,
    pub thread_id: String,
    pub assistant_id: String,
    pub model: String,
    pub instructions: Option<String>,
    pub metadata: Value,
    pub tools: Vec<ToolDef>,
    pub created_at: u64,
    /// Rough prompt size for `usage`.
    pub prompt_tokens: u64,
    /// What the run's earlier streams used: the run's `usage` adds this stream's to it.
    pub prior_usage: Usage,
}

impl RunCtx {
    pub fn from_run(run: &StoredRun) -> RunCtx {
        let mut tools: Vec<ToolDef> = Vec::new();
        for call in &run.directives.tool_calls {
            if tools.iter().all(|t| t.function.name != call.name) {
                tools.push(ToolDef {
                    kind: "function",
                    function: FunctionDef {
                        name: call.name.clone(),
                        description: format!("Stub function {}", call.name),
                        parameters: ToolParameters {
                            kind: "object",
                            properties: empty_object(),
                        },
                    },
                });
            }
        }
        RunCtx {
            run_id: run.id.clone(),
            thread_id: run.thread_id.clone(),
            assistant_id: run.assistant_id.clone(),
            model: run.model.clone(),
            instructions: run.instructions.clone(),
            metadata: run.metadata.clone(),
            tools,
            created_at: run.created_at,
            prompt_tokens: 20 + run.directives.text.split_whitespace().count() as u64,
            prior_usage: Usage::new(run.usage.0, run.usage.1),
        }
    }

    /// A run object with the given status; every "ended" field is null and
    /// `expires_at` is `created_at + 600`.
    pub fn run(&self, status: &'static str, started_at: Option<u64>) -> RunObject {
        RunObject {
            id: self.run_id.clone(),
            object: "thread.run",
            created_at: self.created_at,
            assistant_id: self.assistant_id.clone(),
            thread_id: self.thread_id.clone(),
            status,
            started_at,
            expires_at: Some(self.created_at + RUN_TTL),
            cancelled_at: None,
            failed_at: None,
            completed_at: None,
            required_action: None,
            last_error: None,
            model: self.model.clone(),
            instructions: self.instructions.clone(),
            tools: self.tools.clone(),
            metadata: self.metadata.clone(),
            temperature: 1.0,
            top_p: 1.0,
            max_completion_tokens: None,
            max_prompt_tokens: None,
            truncation_strategy: TruncationStrategy {
                kind: "auto",
                last_messages: None,
            },
            incomplete_details: None,
            usage: None,
            response_format: "auto",
            tool_choice: "auto",
            parallel_tool_calls: true,
        }
    }

    /// The run object for the stored state of `run` (REST `GET`, cancel).
    pub fn run_for_state(&self, run: &StoredRun) -> RunObject {
        let mut obj = self.run(run.status.as_str(), run.started_at);
        match run.status {
            RunStatus::InProgress => {}
            RunStatus::RequiresAction => obj.required_action = Some(required_action(&run.pending)),
            RunStatus::Completed => {
                obj.expires_at = None;
                obj.completed_at = run.ended_at;
            }
            RunStatus::Failed => {
                obj.expires_at = None;
                obj.failed_at = run.ended_at;
                obj.last_error = Some(server_error());
            }
            RunStatus::Cancelled => {
                obj.expires_at = None;
                obj.cancelled_at = run.ended_at;
            }
            RunStatus::Expired => {}
            RunStatus::Incomplete => {
                obj.expires_at = None;
                obj.incomplete_details = Some(IncompleteDetails {
                    reason: "max_completion_tokens",
                });
            }
        }
        obj
    }

    fn step(
        &self,
        id: &str,
        created_at: u64,
        kind: &'static str,
        details: StepDetails,
    ) -> StepObject {
        StepObject {
            id: id.to_string(),
            object: "thread.run.step",
            created_at,
            run_id: self.run_id.clone(),
            assistant_id: self.assistant_id.clone(),
            thread_id: self.thread_id.clone(),
            kind,
            status: "in_progress",
            cancelled_at: None,
            completed_at: None,
            expires_at: Some(self.created_at + RUN_TTL),
            failed_at: None,
            last_error: None,
            step_details: details,
            usage: None,
        }
    }

    fn message(&self, id: &str, created_at: u64) -> MessageObject {
        MessageObject {
            id: id.to_string(),
            object: "thread.message",
            created_at,
            assistant_id: Some(self.assistant_id.clone()),
            thread_id: self.thread_id.clone(),
            run_id: Some(self.run_id.clone()),
            status: "in_progress",
            incomplete_details: None,
            incomplete_at: None,
            completed_at: None,
            role: "assistant",
            content: Vec::new(),
            metadata: empty_object(),
        }
    }
}

fn server_error() -> LastError {
    LastError {
        code: "server_error",
        message: FAIL_MESSAGE,
    }
}

fn required_action(calls: &[PendingCall]) -> RequiredAction {
    RequiredAction {
        kind: "submit_tool_outputs",
        submit_tool_outputs: SubmitToolOutputs {
            tool_calls: calls
                .iter()
                .map(|c| RequiredCall {
                    id: c.call_id.clone(),
                    kind: "function",
                    function: CallFunction {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect(),
        },
    }
}

/// How a run stream starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// `POST /threads/{id}/runs`: created, queued, in_progress.
    Create,
    /// `submit_tool_outputs`: the tool step completes (with the outputs),
    /// then queued, in_progress.
    Continue {
        tool_step_id: String,
        tool_step_created_at: u64,
        started_at: u64,
        calls: Vec<PendingCall>,
        outputs: Vec<String>,
    },
}

/// What the run does after it started.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Reply with text; `outcome` decides how the stream ends.
    Text { text: String, outcome: Outcome },
    /// Ask for these function calls (ids already chosen).
    ToolCalls { calls: Vec<PendingCall> },
}

/// The state a run reaches when its stream is over.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub status: RunStatus,
    pub started_at: u64,
    pub ended_at: u64,
    /// The assistant message to store (completed text answers).
    pub message: Option<StoredMessage>,
    /// Pending calls when `status` is `RequiresAction`.
    pub pending: Vec<PendingCall>,
    /// The tool-calls step of a `RequiresAction` run.
    pub tool_step: Option<(String, u64)>,
    /// The run's `usage` after this stream (all its streams so far), when it reports one.
    pub usage: Option<Usage>,
}

/// Build the whole event stream of a run and the state it leaves behind.
pub fn run_plan(ctx: &RunCtx, start: Start, answer: Answer) -> (Plan, RunEnd) {
    let t = now();
    let mut events = Vec::new();
    let started_at = match &start {
        Start::Create => {
            events.push(Event::json("thread.run.created", &ctx.run("queued", None)));
            events.push(Event::json("thread.run.queued", &ctx.run("queued", None)));
            t
        }
        Start::Continue {
            tool_step_id,
            tool_step_created_at,
            started_at,
            calls,
            outputs,
        } => {
            let tool_calls = calls
                .iter()
                .zip(outputs)
                .map(|(c, out)| StepToolCall {
                    id: c.call_id.clone(),
                    kind: "function",
                    function: StepFunction {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                        output: Some(out.clone()),
                    },
                })
                .collect();
            let mut step = ctx.step(
                tool_step_id,
                *tool_step_created_at,
                "tool_calls",
                StepDetails::ToolCalls {
                    kind: "tool_calls",
                    tool_calls,
                },
            );
            step.status = "completed";
            step.completed_at = Some(t);
            step.usage = Some(Usage::new(ctx.prompt_tokens, calls.len() as u64 * 8));
            events.push(Event::json("thread.run.step.completed", &step));
            events.push(Event::json(
                "thread.run.queued",
                &ctx.run("queued", Some(*started_at)),
            ));
            *started_at
        }
    };
    events.push(Event::json(
        "thread.run.in_progress",
        &ctx.run("in_progress", Some(started_at)),
    ));
    let mut end = RunEnd {
        status: RunStatus::Completed,
        started_at,
        ended_at: t,
        message: None,
        pending: Vec::new(),
        tool_step: None,
        usage: None,
    };
    let mut ending = Ending::Finish;
    let commit_at;
    match answer {
        Answer::ToolCalls { calls } => {
            tool_call_events(ctx, &calls, t, started_at, &mut events, &mut end);
            // Commit before `thread.run.requires_action`.
            commit_at = events.len() - 2;
            end.status = RunStatus::RequiresAction;
            end.pending = calls;
        }
        Answer::Text { text, outcome } => match outcome {
            Outcome::Complete | Outcome::ErrorEvent | Outcome::Cut => {
                let msg = text_events(ctx, &text, outcome, t, started_at, &mut events);
                commit_at = match outcome {
                    // Before `thread.run.completed` (then `done`).
                    Outcome::Complete => events.len() - 2,
                    // Before the `error` event.
                    Outcome::ErrorEvent => events.len() - 1,
                    _ => events.len(),
                };
                match outcome {
                    Outcome::Complete => {
                        end.message = Some(msg);
                        end.usage = Some(ctx.prior_usage.plus(answer_usage(ctx, &text)));
                    }
                    Outcome::Cut => {
                        end.status = RunStatus::Failed;
                        ending = Ending::Cut;
                    }
                    _ => end.status = RunStatus::Failed,
                }
            }
            Outcome::Fail | Outcome::Cancel | Outcome::Expire | Outcome::Incomplete => {
                let mut run = ctx.run("failed", Some(started_at));
                let name = match outcome {
                    Outcome::Fail => {
                        run.expires_at = None;
                        run.failed_at = Some(t);
                        run.last_error = Some(server_error());
                        end.status = RunStatus::Failed;
                        "thread.run.failed"
                    }
                    Outcome::Cancel => {
                        run.status = "cancelled";
                        run.expires_at = None;
                        run.cancelled_at = Some(t);
                        end.status = RunStatus::Cancelled;
                        "thread.run.cancelled"
                    }
                    Outcome::Expire => {
                        run.status = "expired";
                        end.status = RunStatus::Expired;
                        "thread.run.expired"
                    }
                    _ => {
                        run.status = "incomplete";
                        run.expires_at = None;
                        run.incomplete_details = Some(IncompleteDetails {
                            reason: "max_completion_tokens",
                        });
                        end.status = RunStatus::Incomplete;
                        "thread.run.incomplete"
                    }
                };
                commit_at = events.len();
                events.push(Event::json(name, &run));
                events.push(Event::done());
            }
        },
    }
    let plan = Plan {
        events,
        ending,
        commit_at,
    };
    (plan, end)
}

/// Message-creation step with the text deltas. With `Complete` the stream
/// goes on to `thread.run.completed` and `done`; with `ErrorEvent` it stops
/// after the first delta with an `error` event; with `Cut` it stops after
/// the first delta. Returns the assistant message to store.
fn text_events(
    ctx: &RunCtx,
    text: &str,
    outcome: Outcome,
    t: u64,
    started_at: u64,
    events: &mut Vec<Event>,
) -> StoredMessage {
    let step_id = alnum_id("step");
    let msg_id = alnum_id("msg");
    let details = StepDetails::MessageCreation {
        kind: "message_creation",
        message_creation: MessageCreation {
            message_id: msg_id.clone(),
        },
    };
    let step = ctx.step(&step_id, t, "message_creation", details);
    events.push(Event::json("thread.run.step.created", &step));
    events.push(Event::json("thread.run.step.in_progress", &step));
    let msg = ctx.message(&msg_id, t);
    events.push(Event::json("thread.message.created", &msg));
    events.push(Event::json("thread.message.in_progress", &msg));
    let deltas = word_deltas(text);
    let take = if outcome == Outcome::Complete {
        deltas.len()
    } else {
        1
    };
    for (i, piece) in deltas.iter().take(take).enumerate() {
        let delta = MessageDelta {
            id: msg_id.clone(),
            object: "thread.message.delta",
            delta: MessageDeltaBody {
                content: vec![DeltaContent {
                    index: 0,
                    kind: "text",
                    text: DeltaText {
                        value: piece.clone(),
                        annotations: (i == 0).then(Vec::new),
                    },
                }],
            },
        };
        events.push(Event::json("thread.message.delta", &delta));
    }
    match outcome {
        Outcome::Complete => {
            let usage = answer_usage(ctx, text);
            let mut done_msg = msg.clone();
            done_msg.status = "completed";
            done_msg.completed_at = Some(t);
            done_msg.content = vec![text_content(text)];
            events.push(Event::json("thread.message.completed", &done_msg));
            let mut done_step = step;
            done_step.status = "completed";
            done_step.completed_at = Some(t);
            done_step.usage = Some(usage);
            events.push(Event::json("thread.run.step.completed", &done_step));
            let mut run = ctx.run("completed", Some(started_at));
            run.expires_at = None;
            run.completed_at = Some(t);
            run.usage = Some(ctx.prior_usage.plus(usage));
            events.push(Event::json("thread.run.completed", &run));
            events.push(Event::done());
        }
        Outcome::ErrorEvent => events.push(Event::json(
            "error",
            &StreamError {
                error: StreamErrorDetail {
                    message: FAIL_MESSAGE,
                    kind: "server_error",
                },
            },
        )),
        _ => {}
    }
    StoredMessage {
        id: msg_id,
        created_at: t,
        role: "assistant",
        text: text.to_string(),
        assistant_id: Some(ctx.assistant_id.clone()),
        run_id: Some(ctx.run_id.clone()),
    }
}

/// What the message step of a text answer uses: the prompt, and one completion token per
/// word delta.
fn answer_usage(ctx: &RunCtx, text: &str) -> Usage {
    Usage::new(ctx.prompt_tokens, word_deltas(text).len() as u64)
}

/// Tool-calls step, argument deltas, `thread.run.requires_action`, `done`.
fn tool_call_events(
    ctx: &RunCtx,
    calls: &[PendingCall],
    t: u64,
    started_at: u64,
    events: &mut Vec<Event>,
    end: &mut RunEnd,
) {
    let step_id = alnum_id("step");
    let step = ctx.step(
        &step_id,
        t,
        "tool_calls",
        StepDetails::ToolCalls {
            kind: "tool_calls",
            tool_calls: Vec::new(),
        },
    );
    events.push(Event::json("thread.run.step.created", &step));
    events.push(Event::json("thread.run.step.in_progress", &step));
    let step_delta = |call: StepDeltaCall| StepDelta {
        id: step_id.clone(),
        object: "thread.run.step.delta",
        delta: StepDeltaBody {
            step_details: StepDeltaDetails {
                kind: "tool_calls",
                tool_calls: vec![call],
            },
        },
    };
    for (index, call) in calls.iter().enumerate() {
        let first = StepDeltaCall::First {
            index,
            id: call.call_id.clone(),
            kind: "function",
            function: FirstDeltaFunction {
                name: call.name.clone(),
                arguments: String::new(),
                output: None,
            },
        };
        events.push(Event::json("thread.run.step.delta", &step_delta(first)));
        for piece in argument_pieces(&call.arguments, ARG_PIECE) {
            let next = StepDeltaCall::Next {
                index,
                kind: "function",
                function: NextDeltaFunction { arguments: piece },
            };
            events.push(Event::json("thread.run.step.delta", &step_delta(next)));
        }
    }
    let mut run = ctx.run("requires_action", Some(started_at));
    run.required_action = Some(required_action(calls));
    let usage = ctx
        .prior_usage
        .plus(Usage::new(ctx.prompt_tokens, calls.len() as u64 * 8));
    run.usage = Some(usage);
    end.usage = Some(usage);
    events.push(Event::json("thread.run.requires_action", &run));
    events.push(Event::done());
    end.tool_step = Some((step_id, t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directives::Directives;
    use crate::examples::{example, keys_in_order};
    use std::collections::HashMap;

    fn ctx(with_tools: bool) -> RunCtx {
        let mut d = Directives::default();
        if with_tools {
            d.tool_calls = vec![crate::directives::ToolCallSpec {
                name: "get_current_weather".into(),
                arguments: r#"{"location":"San Francisco, CA"}"#.into(),
            }];
        }
        let run = StoredRun {
            id: alnum_id("run"),
            thread_id: alnum_id("thread"),
            assistant_id: "asst_123".into(),
            model: "gpt-4o".into(),
            instructions: None,
            metadata: empty_object(),
            created_at: now(),
            started_at: None,
            ended_at: None,
            status: RunStatus::InProgress,
            directives: d,
            rounds_done: 0,
            pending: Vec::new(),
            tool_step_id: None,
            tool_step_created_at: 0,
            usage: (0, 0),
        };
        RunCtx::from_run(&run)
    }

    fn names_without_repeats(names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if out.last().map(String::as_str) != Some(*n) {
                out.push(n.to_string());
            }
        }
        out
    }

    /// Every generated event: valid JSON (or `[DONE]`) with the same keys
    /// in the same order and nesting as one example event of the same name
    /// (deltas come in several shapes).
    fn check_against_example(plan: &Plan, file: &str) {
        let ex = example(file);
        let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
        for (n, d) in &ex {
            by_name.entry(n.as_str()).or_default().push(d.as_str());
        }
        for ev in &plan.events {
            if ev.data == "[DONE]" {
                assert_eq!(ev.name, "done");
                continue;
            }
            let _: Value = serde_json::from_str(&ev.data).expect("valid JSON");
            let candidates = by_name
                .get(ev.name.as_str())
                .unwrap_or_else(|| panic!("{} not in {file}", ev.name));
            let got = keys_in_order(&ev.data);
            let matched = candidates.iter().any(|d| keys_in_order(d) == got);
            assert!(matched, "{} does not match {file}: {}", ev.name, ev.data);
        }
    }

    #[test]
    fn default_text_stream_matches_example_sequence() {
        let c = ctx(false);
        let (plan, end) = run_plan(
            &c,
            Start::Create,
            Answer::Text {
                text: "You said: Hello there".into(),
                outcome: Outcome::Complete,
            },
        );
        assert_eq!(plan.ending, Ending::Finish);
        assert_eq!(end.status, RunStatus::Completed);
        assert_eq!(end.message.as_ref().unwrap().text, "You said: Hello there");
        let expected = [
            "thread.run.created",
            "thread.run.queued",
            "thread.run.in_progress",
            "thread.run.step.created",
            "thread.run.step.in_progress",
            "thread.message.created",
            "thread.message.in_progress",
            "thread.message.delta",
            "thread.message.delta",
            "thread.message.delta",
            "thread.message.delta",
            "thread.message.completed",
            "thread.run.step.completed",
            "thread.run.completed",
            "done",
        ];
        assert_eq!(plan.names(), expected);
        {
            let ex = example("assistants-create-run-stream.sse");
            let ex_names: Vec<&str> = ex.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names_without_repeats(&plan.names()),
                names_without_repeats(&ex_names)
            );
        }
        check_against_example(&plan, "assistants-create-run-stream.sse");
        // First delta carries annotations, later ones do not; the message
        // completed event carries the full text.
        assert!(plan.events[7]
            .data
            .contains(r#""value":"You","annotations":[]"#));
        assert!(plan.events[8].data.contains(r#""value":" said:"}"#));
        assert!(plan.events[11]
            .data
            .contains(r#""value":"You said: Hello there","annotations":[]"#));
        let created: Value = serde_json::from_str(&plan.events[0].data).unwrap();
        assert_eq!(
            created["expires_at"].as_u64().unwrap(),
            created["created_at"].as_u64().unwrap() + 600
        );
        assert!(created["started_at"].is_null());
    }

    #[test]
    fn requires_action_stream_matches_example() {
        let c = ctx(true);
        let calls = crate::state::new_pending(&[crate::directives::ToolCallSpec {
            name: "get_current_weather".into(),
            arguments: r#"{"location":"San Francisco, CA","unit":"fahrenheit"}"#.into(),
        }]);
        let (plan, end) = run_plan(
            &c,
            Start::Create,
            Answer::ToolCalls {
                calls: calls.clone(),
            },
        );
        assert_eq!(end.status, RunStatus::RequiresAction);
        assert_eq!(end.pending, calls);
        let names = plan.names();
        assert_eq!(names.last(), Some(&"done"));
        assert_eq!(names[names.len() - 2], "thread.run.requires_action");
        {
            let ex = example("assistants-create-run-requires-action.sse");
            let ex_names: Vec<&str> = ex
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| *n != "thread.created")
                .collect();
            assert_eq!(
                names_without_repeats(&names),
                names_without_repeats(&ex_names)
            );
        }
        check_against_example(&plan, "assistants-create-run-requires-action.sse");
        // The argument pieces rebuild the arguments.
        let mut args = String::new();
        for ev in plan
            .events
            .iter()
            .filter(|e| e.name == "thread.run.step.delta")
        {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            args.push_str(
                v["delta"]["step_details"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap(),
            );
        }
        assert_eq!(args, calls[0].arguments);
        let ra: Value = serde_json::from_str(&plan.events[names.len() - 2].data).unwrap();
        assert_eq!(
            ra["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"],
            Value::String(calls[0].call_id.clone())
        );
    }

    #[test]
    fn submit_tool_outputs_stream_matches_example() {
        let c = ctx(true);
        let calls = crate::state::new_pending(&[crate::directives::ToolCallSpec {
            name: "get_current_weather".into(),
            arguments: r#"{"location":"San Francisco, CA"}"#.into(),
        }]);
        let start = Start::Continue {
            tool_step_id: alnum_id("step"),
            tool_step_created_at: now(),
            started_at: now(),
            calls,
            outputs: vec!["70 degrees and sunny.".into()],
        };
        let (plan, end) = run_plan(
            &c,
            start,
            Answer::Text {
                text: "Tool output: 70 degrees and sunny.".into(),
                outcome: Outcome::Complete,
            },
        );
        assert_eq!(end.status, RunStatus::Completed);
        let names = plan.names();
        {
            let ex = example("assistants-submit-tool-outputs-stream.sse");
            let ex_names: Vec<&str> = ex.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names_without_repeats(&names),
                names_without_repeats(&ex_names)
            );
        }
        check_against_example(&plan, "assistants-submit-tool-outputs-stream.sse");
        assert!(plan.events[0]
            .data
            .contains(r#""output":"70 degrees and sunny.""#));
    }

    #[test]
    fn terminal_outcomes() {
        let c = ctx(false);
        for (outcome, name, status) in [
            (Outcome::Fail, "thread.run.failed", RunStatus::Failed),
            (
                Outcome::Cancel,
                "thread.run.cancelled",
                RunStatus::Cancelled,
            ),
            (Outcome::Expire, "thread.run.expired", RunStatus::Expired),
            (
                Outcome::Incomplete,
                "thread.run.incomplete",
                RunStatus::Incomplete,
            ),
        ] {
            let (plan, end) = run_plan(
                &c,
                Start::Create,
                Answer::Text {
                    text: "x".into(),
                    outcome,
                },
            );
            assert_eq!(
                plan.names(),
                [
                    "thread.run.created",
                    "thread.run.queued",
                    "thread.run.in_progress",
                    name,
                    "done"
                ]
            );
            assert_eq!(end.status, status);
            assert!(end.message.is_none());
        }
        let (plan, _) = run_plan(
            &c,
            Start::Create,
            Answer::Text {
                text: "x".into(),
                outcome: Outcome::Fail,
            },
        );
        assert!(plan.events[3].data.contains(
            r#""last_error":{"code":"server_error","message":"Sorry, something went wrong."}"#
        ));
        let (plan, _) = run_plan(
            &c,
            Start::Create,
            Answer::Text {
                text: "a b c".into(),
                outcome: Outcome::ErrorEvent,
            },
        );
        assert_eq!(plan.names().last(), Some(&"error"));
        assert_eq!(plan.names().len(), 9);
        assert_eq!(
            plan.events[8].data,
            r#"{"error":{"message":"Sorry, something went wrong.","type":"server_error"}}"#
        );
        let (plan, end) = run_plan(
            &c,
            Start::Create,
            Answer::Text {
                text: "a b c".into(),
                outcome: Outcome::Cut,
            },
        );
        assert_eq!(plan.ending, Ending::Cut);
        assert_eq!(plan.names().last(), Some(&"thread.message.delta"));
        assert_eq!(end.status, RunStatus::Failed);
    }
}

//! In-memory state of the stub: threads with their messages and runs,
//! conversations with their items, and the request log; plus id and
//! timestamp generation.
//!
//! Everything lives in one [`Store`] behind a `std::sync::Mutex` that is
//! only ever held for short synchronous sections (never across an await).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::directives::{Directives, ToolCallSpec};

/// Most requests kept in the request log (oldest dropped first).
pub const MAX_LOGGED_REQUESTS: usize = 10_000;

/// Current unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(0);
static ID_SEED: once_cell::sync::Lazy<u64> = once_cell::sync::Lazy::new(|| {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    nanos ^ (u64::from(std::process::id()) << 32)
});

/// Next 64 pseudo-random bits (splitmix64 over a global counter).
fn next_random() -> u64 {
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = ID_SEED.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut bits = next_random();
    let mut left = 10; // 6-bit draws per u64
    while out.len() < len {
        if left == 0 {
            bits = next_random();
            left = 10;
        }
        let idx = (bits & 0x3F) as usize % alphabet.len();
        bits >>= 6;
        left -= 1;
        out.push(alphabet[idx] as char);
    }
    out
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// `prefix` + `_` + 24 random alphanumerics (`thread_…`, `run_…`, `call_…`).
pub fn alnum_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_from(ALNUM, 24))
}

/// `prefix` + `_` + 48 lowercase hex digits (`resp_…`, `conv_…`, `msg_…` of
/// the Responses API, like the example stream).
pub fn hex_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_from(HEX, 48))
}

/// A new `x-request-id` value.
pub fn request_id() -> String {
    format!("req_{}", random_from(HEX, 32))
}

/// A stored thread message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: String,
    pub created_at: u64,
    pub role: &'static str,
    pub text: String,
    pub assistant_id: Option<String>,
    pub run_id: Option<String>,
}

/// A function call waiting for its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
}

/// Run lifecycle as far as the stub tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// The run's stream is being written.
    InProgress,
    RequiresAction,
    Completed,
    Failed,
    Cancelled,
    Expired,
    Incomplete,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::InProgress => "in_progress",
            RunStatus::RequiresAction => "requires_action",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Expired => "expired",
            RunStatus::Incomplete => "incomplete",
        }
    }
}

/// A run of a thread.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub id: String,
    pub thread_id: String,
    pub assistant_id: String,
    pub model: String,
    pub instructions: Option<String>,
    pub metadata: Value,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub status: RunStatus,
    /// Directives of the user message that started the run.
    pub directives: Directives,
    /// Tool-call rounds already asked for.
    pub rounds_done: u32,
    /// Calls of the current `requires_action` (empty otherwise).
    pub pending: Vec<PendingCall>,
    /// Id of the current tool-calls run step.
    pub tool_step_id: Option<String>,
    pub tool_step_created_at: u64,
    /// Tokens the run used in its streams so far, `(prompt, completion)`: a run's `usage`
    /// adds up every stream of the run (tool-call rounds and the answer).
    pub usage: (u64, u64),
}

impl StoredRun {
    /// A run blocks its thread while it streams or waits for tool outputs.
    pub fn is_active(&self) -> bool {
        matches!(
            self.status,
            RunStatus::InProgress | RunStatus::RequiresAction
        )
    }
}

/// A thread with its messages (oldest first) and runs.
#[derive(Debug, Clone)]
pub struct StoredThread {
    pub id: String,
    pub created_at: u64,
    pub metadata: Value,
    pub messages: Vec<StoredMessage>,
    pub runs: HashMap<String, StoredRun>,
    pub active_run: Option<String>,
}

impl StoredThread {
    /// Id of the run currently blocking the thread, if any.
    pub fn blocking_run(&self) -> Option<&str> {
        let id = self.active_run.as_deref()?;
        self.runs
            .get(id)
            .filter(|r| r.is_active())
            .map(|r| r.id.as_str())
    }
}

/// One item of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvItem {
    UserMessage {
        id: String,
        text: String,
    },
    AssistantMessage {
        id: String,
        status: &'static str,
        text: String,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        id: String,
        call_id: String,
        output: String,
    },
}

/// A conversation of the Responses API.
#[derive(Debug, Clone)]
pub struct StoredConversation {
    pub id: String,
    pub created_at: u64,
    pub metadata: Value,
    pub items: Vec<ConvItem>,
    /// A response is being streamed on this conversation.
    pub busy: bool,
    /// Function calls of the last response that still need an output.
    pub pending: Vec<PendingCall>,
    /// Directives of the last user message.
    pub directives: Directives,
    /// Tool-call rounds already asked for since the last user message.
    pub rounds_done: u32,
}

/// One entry of the request log, as served by `GET /__stub/requests`.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// All mutable state.
#[derive(Debug, Default)]
pub struct Inner {
    pub threads: HashMap<String, StoredThread>,
    pub conversations: HashMap<String, StoredConversation>,
    pub log: VecDeque<LoggedRequest>,
}

/// The shared store.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// Lock the state (a poisoned lock is recovered: the data stays usable).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a request to the log.
    pub fn log_request(&self, entry: LoggedRequest) {
        let mut inner = self.lock();
        if inner.log.len() >= MAX_LOGGED_REQUESTS {
            inner.log.pop_front();
        }
        inner.log.push_back(entry);
    }
}

impl Inner {
    /// Create a thread, optionally with initial user messages.
    pub fn create_thread(
        &mut self,
        metadata: Value,
        messages: Vec<(&'static str, String)>,
    ) -> &StoredThread {
        let id = alnum_id("thread");
        let created_at = now();
        let messages = messages
            .into_iter()
            .map(|(role, text)| StoredMessage {
                id: alnum_id("msg"),
                created_at,
                role,
                text,
                assistant_id: None,
                run_id: None,
            })
            .collect();
        let thread = StoredThread {
            id: id.clone(),
            created_at,
            metadata,
            messages,
            runs: HashMap::new(),
            active_run: None,
        };
        self.threads.entry(id).or_insert(thread)
    }

    /// Create a conversation.
    pub fn create_conversation(
        &mut self,
        metadata: Value,
        items: Vec<ConvItem>,
    ) -> &StoredConversation {
        let id = hex_id("conv");
        let conv = StoredConversation {
            id: id.clone(),
            created_at: now(),
            metadata,
            items,
            busy: false,
            pending: Vec::new(),
            directives: Directives::default(),
            rounds_done: 0,
        };
        self.conversations.entry(id).or_insert(conv)
    }
}

/// Turn directive tool calls into pending calls with fresh `call_` ids.
pub fn new_pending(calls: &[ToolCallSpec]) -> Vec<PendingCall> {
    calls
        .iter()
        .map(|c| PendingCall {
            call_id: alnum_id("call"),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_right_shape_and_differ() {
        let a = alnum_id("run");
        let b = alnum_id("run");
        assert_ne!(a, b);
        assert!(a.starts_with("run_"));
        assert_eq!(a.len(), 4 + 24);
        assert!(a[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        let r = hex_id("resp");
        assert_eq!(r.len(), 5 + 48);
        assert!(r[5..].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(request_id().starts_with("req_"));
    }

    #[test]
    fn log_is_bounded() {
        let store = Store::default();
        for i in 0..(MAX_LOGGED_REQUESTS + 5) {
            store.log_request(LoggedRequest {
                method: "GET".into(),
                path: format!("/{i}"),
                headers: BTreeMap::new(),
                body: String::new(),
            });
        }
        let inner = store.lock();
        assert_eq!(inner.log.len(), MAX_LOGGED_REQUESTS);
        assert_eq!(inner.log.front().map(|e| e.path.as_str()), Some("/5"));
    }
}

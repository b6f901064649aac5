//! Stopping upstream work that nobody will read.
//!
//! An answer can end before its run does: the visitor left mid-answer, the model asked for
//! tools more than `max_tool_rounds` times, or handing it the tool outputs failed. Left
//! alone, the upstream would go on generating (and billing) tokens, and an Assistants run
//! would keep its thread locked until it expires, 10 minutes later. [`abandon`] stops it:
//! - Assistants API: `POST /threads/{t}/runs/{r}/cancel` with the tenant's key. The run id is
//!   the one the stream named (`thread.run.created`); when the visitor left before it
//!   arrived, the stream is read on until it does. The upstream stream stays open until the
//!   cancel is answered, then it is closed.
//! - Responses API: the upstream connection is closed (never returned to the pool), which
//!   stops the response.
//!
//! The work happens in the background: the visitor's response never waits for it. A cancel
//! that fails is logged (and counted in `upstream_errors_total`); the run then ends on its own.

use crate::config::Tenant;
use crate::dialect::Dialect;
use crate::metrics::Metrics;
use crate::sse::SseParser;
use crate::upstream::{UpstreamClient, UpstreamResponse};
use crate::upstream_call::UpstreamCall;
use std::sync::Arc;
use std::time::Duration;

/// How long a stream is read for the run id of an answer being abandoned.
const FIND_RUN_ID_WITHIN: Duration = Duration::from_secs(10);

/// An answer whose upstream work must stop.
pub struct Abandoned<'a> {
    pub upstream_client: &'a Arc<UpstreamClient>,
    pub metrics: &'a Arc<Metrics>,
    pub tenant: &'a Tenant,
    pub dialect: Dialect,
    pub conversation: &'a str,
    /// Why, for the log: the stream outcome (`client_gone`, `tool_rounds_exceeded`, ...).
    pub why: &'static str,
}

impl Abandoned<'_> {
    /// Stop the run `run_id` (if known) and close `upstream` (if still open), in the
    /// background.
    pub fn abandon(self, run_id: Option<String>, upstream: Option<UpstreamResponse>) {
        if self.dialect == Dialect::Responses {
            // Closing the connection is what stops a response.
            drop(upstream);
            return;
        }
        if run_id.is_none() && upstream.is_none() {
            log::warn!(
                "tenant {}: cannot cancel the abandoned answer ({}): its run id is unknown",
                self.tenant.name,
                self.why
            );
            return;
        }
        let client = Arc::clone(self.upstream_client);
        let metrics = Arc::clone(self.metrics);
        let tenant = self.tenant.clone();
        let dialect = self.dialect;
        let conversation = self.conversation.to_string();
        let why = self.why;
        tokio::spawn(async move {
            let mut upstream = upstream;
            let run_id = match (run_id, upstream.as_mut()) {
                (Some(id), _) => Some(id),
                (None, Some(stream)) => find_run_id(dialect, stream).await,
                (None, None) => None,
            };
            let request = run_id
                .as_deref()
                .and_then(|run| dialect.cancel_turn(&conversation, run));
            let Some(request) = request else {
                log::warn!(
                    "tenant {}: cannot cancel the abandoned answer ({why}): the stream never \
                     named its run",
                    tenant.name
                );
                return;
            };
            let call = UpstreamCall::new(&client, &metrics, &tenant);
            // A failure is logged and counted by the call itself.
            if let Ok(answer) = call.send("cancelling an abandoned answer", &request).await {
                let _ = answer.read_all().await;
                log::info!(
                    "tenant {}: cancelled run {} of an abandoned answer ({why})",
                    tenant.name,
                    run_id.unwrap_or_default()
                );
            }
            // Only now is the stream closed, so the run is cancelled rather than left running.
            drop(upstream);
        });
    }
}

/// Read `upstream` until an event names the run (or it ends, breaks or takes too long).
async fn find_run_id(dialect: Dialect, upstream: &mut UpstreamResponse) -> Option<String> {
    let mut parser = SseParser::new();
    let mut reader = dialect.reader();
    let search = async {
        while let Ok(Some(chunk)) = upstream.next_chunk().await {
            for event in parser.push(&chunk).ok()? {
                reader.observe(&event);
                if let Some(id) = reader.run_id() {
                    return Some(id.to_string());
                }
            }
        }
        None
    };
    tokio::time::timeout(FIND_RUN_ID_WITHIN, search)
        .await
        .ok()
        .flatten()
}

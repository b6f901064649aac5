//! One answer to one user message, from the first upstream stream to the last byte.
//!
//! A turn is one or more upstream streams ("legs") relayed on the same client response: when
//! the model asks for tools, the turn answers every call (the lead tool captures a lead; any
//! other tool is declined), hands the outputs back upstream, and relays the continuation,
//! for at most `max_tool_rounds` rounds. When the last leg ends, the turn closes the client
//! stream the way the framing wants: unchanged, or with the widget's `end` or `system.error`.

use crate::config::Tenant;
use crate::dialect::{Dialect, Signal, ToolCall, ToolOutput, ToolRound};
use crate::leads::LeadSource;
use crate::metrics::UpstreamErrorKind;
use crate::proxy::AppState;
use crate::relay::{Framing, LegEnd, Relay};
use crate::upstream::{UpstreamError, UpstreamResponse};
use crate::widget;

/// What the turn is about.
pub struct Turn<'a> {
    pub state: &'a AppState,
    pub tenant: &'a Tenant,
    pub dialect: Dialect,
    pub conversation: &'a str,
    /// The calling site's origin, for lead e-mails.
    pub site: &'a str,
}

impl Turn<'_> {
    /// Relay `upstream` and its continuations to `relay`; returns the access-log outcome.
    pub async fn stream(
        &self,
        relay: &mut Relay<'_>,
        mut upstream: UpstreamResponse,
    ) -> &'static str {
        let mut rounds = 0;
        loop {
            let mut reader = self.dialect.reader();
            let end = relay.pump(&mut upstream, &mut reader, rounds > 0).await;
            if end.last() != Some(&Signal::RequiresAction) {
                return self.close(relay, end, upstream).await;
            }
            upstream.release_in_background();
            let round = reader.take_tool_calls().unwrap_or(ToolRound {
                run_id: None,
                calls: Vec::new(),
            });
            if rounds >= self.state.config.leads.max_tool_rounds {
                log::warn!(
                    "tenant {}: the model asked for tools more than {rounds} times in one answer",
                    self.tenant.name
                );
                relay
                    .fail(
                        "tool_rounds_exceeded",
                        "The assistant asked for too many tool calls.",
                    )
                    .await;
                return "tool_rounds_exceeded";
            }
            rounds += 1;
            // Leads are captured even when the browser has gone: the visitor already gave them.
            let outputs = self.answer(&round.calls).await;
            let next = self
                .dialect
                .continue_turn(self.tenant, self.conversation, &round, &outputs);
            match self.state.upstream.send(&next, &self.tenant.api_key).await {
                Ok(response) if response.is_success() => {
                    if relay.client_gone() {
                        response.release_in_background();
                        return "client_gone";
                    }
                    upstream = response;
                }
                Ok(response) => {
                    self.state.metrics.upstream_status(response.status);
                    log::warn!(
                        "tenant {}: submitting tool outputs: upstream answered {}",
                        self.tenant.name,
                        response.status
                    );
                    relay
                        .fail("tool_outputs_failed", "Error submitting tool outputs")
                        .await;
                    return "tool_outputs_failed";
                }
                Err(e) => {
                    self.upstream_failed(&e);
                    log::warn!("tenant {}: submitting tool outputs: {e}", self.tenant.name);
                    relay
                        .fail("tool_outputs_failed", "Error submitting tool outputs")
                        .await;
                    return "tool_outputs_failed";
                }
            }
        }
    }

    /// The output for each tool call, in order.
    async fn answer(&self, calls: &[ToolCall]) -> Vec<ToolOutput> {
        let mut outputs = Vec::with_capacity(calls.len());
        for call in calls {
            let output = if call.name == self.tenant.lead_tool {
                if self.tenant.lead_recipients.is_empty() {
                    "The message could not be sent: this site has no lead recipients configured. \
                     Tell the visitor to use the site's contact page instead."
                        .to_string()
                } else {
                    let source = LeadSource {
                        tenant: self.tenant,
                        site: self.site,
                        conversation: self.conversation,
                    };
                    self.state.leads.capture(&source, &call.arguments).await
                }
            } else {
                format!(
                    "The tool `{}` is not available in this chat. Continue without it.",
                    call.name
                )
            };
            outputs.push(ToolOutput {
                call_id: call.call_id.clone(),
                output,
            });
        }
        outputs
    }

    /// End the client stream after the last leg.
    async fn close(
        &self,
        relay: &mut Relay<'_>,
        end: LegEnd,
        upstream: UpstreamResponse,
    ) -> &'static str {
        let widget = matches!(relay.framing(), Framing::WidgetV1(_));
        match end {
            LegEnd::ClientGone { .. } => "client_gone",
            LegEnd::Done { last }
            | LegEnd::EndedEarly {
                last: last @ Some(_),
            } => {
                upstream.release_in_background();
                match last {
                    Some(Signal::Completed) if widget => self.end_with_messages(relay).await,
                    Some(Signal::Ended(status)) if widget => {
                        let message =
                            format!("The assistant could not finish its answer (run {status}).");
                        relay.fail("run_ended", &message).await;
                        "run_ended"
                    }
                    None if widget => ended_early(relay).await,
                    Some(Signal::Ended(_)) => {
                        relay.finish().await;
                        "run_ended"
                    }
                    _ => {
                        relay.finish().await;
                        "completed"
                    }
                }
            }
            LegEnd::ErrorEvent => {
                if widget {
                    relay
                        .fail("upstream_error_event", "The assistant reported an error.")
                        .await;
                } else {
                    // The upstream's error event was relayed as it came.
                    relay.finish().await;
                }
                "upstream_error_event"
            }
            LegEnd::EndedEarly { last: None } => ended_early(relay).await,
            LegEnd::Broken(e) => {
                self.upstream_failed(&e);
                log::warn!("tenant {}: stream broken: {e}", self.tenant.name);
                let message = match e {
                    UpstreamError::Timeout(_) => "The assistant stopped answering in time.",
                    _ => "The connection to the assistant broke.",
                };
                relay.fail("upstream_stream_failed", message).await;
                "upstream_broken"
            }
            LegEnd::Garbled => {
                self.state.metrics.upstream_error(UpstreamErrorKind::Broken);
                relay
                    .fail(
                        "upstream_stream_failed",
                        "The assistant sent an unreadable stream.",
                    )
                    .await;
                "upstream_garbled"
            }
        }
    }

    /// Count a failed upstream exchange.
    fn upstream_failed(&self, e: &UpstreamError) {
        self.state.metrics.upstream_error(UpstreamErrorKind::of(e));
    }

    /// The widget's final `end` event, with the conversation's messages.
    async fn end_with_messages(&self, relay: &mut Relay<'_>) -> &'static str {
        let request = self.dialect.list_messages(self.conversation);
        let list = match self
            .state
            .upstream
            .send(&request, &self.tenant.api_key)
            .await
        {
            Ok(response) if response.is_success() => match response.json().await {
                Ok(list) => Some(list),
                Err(e) => {
                    self.upstream_failed(&e);
                    log::warn!("tenant {}: listing messages: {e}", self.tenant.name);
                    None
                }
            },
            Ok(response) => {
                self.state.metrics.upstream_status(response.status);
                log::warn!(
                    "tenant {}: listing messages: upstream answered {}",
                    self.tenant.name,
                    response.status
                );
                None
            }
            Err(e) => {
                self.upstream_failed(&e);
                log::warn!("tenant {}: listing messages: {e}", self.tenant.name);
                None
            }
        };
        match list {
            Some(list) => {
                relay
                    .write(widget::end(widget::messages_from_list(self.dialect, &list)))
                    .await;
                relay.finish().await;
                "completed"
            }
            None => {
                relay
                    .fail(
                        "messages_unavailable",
                        "The conversation could not be loaded.",
                    )
                    .await;
                "messages_unavailable"
            }
        }
    }
}

/// End a stream whose upstream stopped before the run finished.
async fn ended_early(relay: &mut Relay<'_>) -> &'static str {
    relay
        .fail(
            "upstream_stream_failed",
            "The assistant's answer ended unexpectedly.",
        )
        .await;
    "upstream_ended_early"
}

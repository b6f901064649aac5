//! One answer to one user message, from the first upstream stream to the last byte.
//!
//! A turn is one or more upstream streams ("legs") relayed on the same client response: when
//! the model asks for tools, the turn answers every call (the lead tool captures a lead; any
//! other tool is declined), hands the outputs back upstream, and relays the continuation,
//! for at most `max_tool_rounds` rounds. When the last leg ends, the turn closes the client
//! stream the way the framing wants: unchanged, or with the widget's `end` or `system.error`.
//! The tokens each leg reports are counted ([`crate::budget`]); a turn that ends before its
//! run (the visitor left, too many tool rounds, tool outputs refused) stops the upstream work
//! ([`crate::cancel`]).

use crate::app::AppState;
use crate::budget::{self, Meter};
use crate::cancel::Abandoned;
use crate::config::Tenant;
use crate::dialect::{Dialect, Signal, ToolCall, ToolOutput, ToolRound};
use crate::leads::LeadSource;
use crate::relay::{Framing, LegEnd, Relay};
use crate::upstream::{UpstreamError, UpstreamResponse};
use crate::upstream_call::UpstreamCall;
use crate::widget;

/// How a streamed answer ended: the access log's `outcome` and the `outcome` label of
/// `stream_outcomes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamOutcome {
    /// The run completed and the stream was closed normally.
    Completed,
    /// The browser went away before the end.
    ClientGone,
    /// The run ended without completing (failed, cancelled, expired, incomplete).
    RunEnded,
    /// The upstream sent an error event.
    UpstreamErrorEvent,
    /// The upstream connection broke or went silent.
    UpstreamBroken,
    /// The upstream sent something that is not an event stream.
    UpstreamGarbled,
    /// The upstream stream stopped before the run finished.
    UpstreamEndedEarly,
    /// The model asked for tools more than `max_tool_rounds` times.
    ToolRoundsExceeded,
    /// Handing the tool outputs back upstream failed.
    ToolOutputsFailed,
    /// The widget's final `end` event could not list the conversation's messages.
    MessagesUnavailable,
}

impl StreamOutcome {
    /// The label, in the access log and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Completed => "completed",
            StreamOutcome::ClientGone => "client_gone",
            StreamOutcome::RunEnded => "run_ended",
            StreamOutcome::UpstreamErrorEvent => "upstream_error_event",
            StreamOutcome::UpstreamBroken => "upstream_broken",
            StreamOutcome::UpstreamGarbled => "upstream_garbled",
            StreamOutcome::UpstreamEndedEarly => "upstream_ended_early",
            StreamOutcome::ToolRoundsExceeded => "tool_rounds_exceeded",
            StreamOutcome::ToolOutputsFailed => "tool_outputs_failed",
            StreamOutcome::MessagesUnavailable => "messages_unavailable",
        }
    }
}

/// What the turn is about.
pub struct Turn<'a> {
    pub state: &'a AppState,
    pub tenant: &'a Tenant,
    pub dialect: Dialect,
    pub conversation: &'a str,
    /// The calling site's origin, for lead e-mails.
    pub site: &'a str,
    /// The visitor's address, for the per-address lead cap.
    pub client_ip: Option<std::net::IpAddr>,
    /// The visitor as the upstream's abuse controls see them (a hash of the handle).
    pub safety_identifier: &'a str,
}

impl Turn<'_> {
    /// Relay `upstream` and its continuations to `relay`; returns how the stream ended.
    pub async fn stream(
        &self,
        relay: &mut Relay<'_>,
        mut upstream: UpstreamResponse,
    ) -> StreamOutcome {
        let mut rounds = 0;
        let mut meter = Meter::new(self.dialect);
        let mut run_id = None;
        loop {
            let mut reader = self.dialect.reader();
            let end = relay.pump(&mut upstream, &mut reader, rounds > 0).await;
            budget::spend(self.state, self.tenant, meter.fresh(reader.usage())).await;
            if let Some(id) = reader.run_id() {
                run_id = Some(id.to_string());
            }
            if end.last() != Some(&Signal::RequiresAction) {
                // Boxed, like the tool-output call below: this future lives as long as the
                // stream and is as large as its largest state, so the states that come once
                // (the end, a tool round) are kept out of it.
                return Box::pin(self.close(relay, end, upstream, run_id)).await;
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
                let outcome = StreamOutcome::ToolRoundsExceeded;
                self.abandon(outcome, round.run_id, None);
                return outcome;
            }
            rounds += 1;
            // Leads are captured even when the browser has gone: the visitor already gave them.
            let outputs = Box::pin(self.answer(&round.calls)).await;
            let next = self.dialect.continue_turn(
                self.tenant,
                self.conversation,
                &round,
                &outputs,
                self.safety_identifier,
            );
            let sent = Box::pin(self.upstream().send("submitting tool outputs", &next)).await;
            match sent {
                Ok(response) => {
                    if relay.client_gone() {
                        let outcome = StreamOutcome::ClientGone;
                        self.abandon(outcome, round.run_id, Some(response));
                        return outcome;
                    }
                    upstream = response;
                }
                Err(_failure) => {
                    relay
                        .fail("tool_outputs_failed", "Error submitting tool outputs")
                        .await;
                    // The run still waits for outputs: free the conversation.
                    let outcome = StreamOutcome::ToolOutputsFailed;
                    self.abandon(outcome, round.run_id, None);
                    return outcome;
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
                        client_ip: self.client_ip,
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

    /// Stop the upstream work of this answer, which ends before its run (see [`crate::cancel`]).
    fn abandon(
        &self,
        why: StreamOutcome,
        run_id: Option<String>,
        upstream: Option<UpstreamResponse>,
    ) {
        let abandoned = Abandoned {
            upstream_client: &self.state.upstream,
            metrics: &self.state.metrics,
            tenant: self.tenant,
            dialect: self.dialect,
            conversation: self.conversation,
            why: why.as_str(),
        };
        abandoned.abandon(run_id, upstream);
    }

    /// End the client stream after the last leg; `run_id`: the run, once a stream named it.
    async fn close(
        &self,
        relay: &mut Relay<'_>,
        end: LegEnd,
        upstream: UpstreamResponse,
        run_id: Option<String>,
    ) -> StreamOutcome {
        let widget = matches!(relay.framing(), Framing::WidgetV1(_));
        match end {
            LegEnd::ClientGone {
                last: Some(Signal::Completed | Signal::Ended(_)),
            } => {
                // The run is over: nothing left to stop.
                upstream.release_in_background();
                StreamOutcome::ClientGone
            }
            LegEnd::ClientGone { .. } => {
                let outcome = StreamOutcome::ClientGone;
                self.abandon(outcome, run_id, Some(upstream));
                outcome
            }
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
                        StreamOutcome::RunEnded
                    }
                    None if widget => ended_early(relay).await,
                    Some(Signal::Ended(_)) => {
                        relay.finish().await;
                        StreamOutcome::RunEnded
                    }
                    _ => {
                        relay.finish().await;
                        StreamOutcome::Completed
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
                StreamOutcome::UpstreamErrorEvent
            }
            LegEnd::EndedEarly { last: None } => ended_early(relay).await,
            LegEnd::Broken(e) => {
                let message = match e {
                    UpstreamError::Timeout(_) => "The assistant stopped answering in time.",
                    _ => "The connection to the assistant broke.",
                };
                self.upstream().failed("streaming the answer", e);
                relay.fail("upstream_stream_failed", message).await;
                StreamOutcome::UpstreamBroken
            }
            LegEnd::Garbled => {
                let garbled = UpstreamError::Broken("the answer is not an event stream".into());
                self.upstream().failed("streaming the answer", garbled);
                relay
                    .fail(
                        "upstream_stream_failed",
                        "The assistant sent an unreadable stream.",
                    )
                    .await;
                StreamOutcome::UpstreamGarbled
            }
        }
    }

    /// The upstream, as this tenant talks to it.
    fn upstream(&self) -> UpstreamCall<'_> {
        self.state.upstream_call(self.tenant)
    }

    /// The widget's final `end` event, with the conversation's messages.
    async fn end_with_messages(&self, relay: &mut Relay<'_>) -> StreamOutcome {
        let request = self.dialect.list_messages(self.conversation);
        match self.upstream().json("listing messages", &request).await {
            Ok(list) => {
                relay
                    .write(widget::end(widget::messages_from_list(self.dialect, &list)))
                    .await;
                relay.finish().await;
                StreamOutcome::Completed
            }
            Err(_failure) => {
                relay
                    .fail(
                        "messages_unavailable",
                        "The conversation could not be loaded.",
                    )
                    .await;
                StreamOutcome::MessagesUnavailable
            }
        }
    }
}

/// End a stream whose upstream stopped before the run finished.
async fn ended_early(relay: &mut Relay<'_>) -> StreamOutcome {
    relay
        .fail(
            "upstream_stream_failed",
            "The assistant's answer ended unexpectedly.",
        )
        .await;
    StreamOutcome::UpstreamEndedEarly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_the_fixed_names() {
        let all = [
            StreamOutcome::Completed,
            StreamOutcome::ClientGone,
            StreamOutcome::RunEnded,
            StreamOutcome::UpstreamErrorEvent,
            StreamOutcome::UpstreamBroken,
            StreamOutcome::UpstreamGarbled,
            StreamOutcome::UpstreamEndedEarly,
            StreamOutcome::ToolRoundsExceeded,
            StreamOutcome::ToolOutputsFailed,
            StreamOutcome::MessagesUnavailable,
        ];
        let names: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "completed",
                "client_gone",
                "run_ended",
                "upstream_error_event",
                "upstream_broken",
                "upstream_garbled",
                "upstream_ended_early",
                "tool_rounds_exceeded",
                "tool_outputs_failed",
                "messages_unavailable",
            ]
        );
    }
}

//! The stream relay: upstream event-stream bytes to the browser, as they arrive.
//!
//! In the `openai` framing each upstream chunk is written to the client unchanged and at once
//! (Pingora flushes every chunk of a chunked body). In the `widget-v1` framing the events the
//! widget knows are translated, what is ready at the same moment (the upstream bytes already
//! there when the relay reads: [`UpstreamResponse::next_chunk`] takes them all) is merged by
//! [`widget::coalesce`], and each resulting event is written on its own, at least
//! [`WIDGET_WRITE_GAP`] after the previous one (the completed message or `system.error`,
//! which carry the final text, [`FULL_TEXT_GAP`] apart from both neighbours): the old widget
//! takes each `read()` as one event, and writes sent back to back could reach it as one read
//! (what arrives during the pause goes into the next write). Either way the same bytes go
//! through the SSE parser and the dialect's [`EventReader`], so the relay knows when the run
//! ended, failed, was cut, or waits for tool outputs. After a `requires_action` the rest of that upstream
//! stream (its `done`) is held back: the continuation follows on the same response.

use crate::dialect::{Dialect, EventReader, Signal};
use crate::redact::RunObjectRedactor;
use crate::respond;
use crate::sse::{encode_event, SseParser};
use crate::store::Held;
use crate::upstream::{UpstreamError, UpstreamResponse};
use crate::widget;
use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::time::{Duration, Instant};

/// The least time between two writes of the `widget-v1` framing, so that the browser reads
/// them apart (a busy browser may take a while to read).
pub const WIDGET_WRITE_GAP: Duration = Duration::from_millis(50);

/// The least time between a `widget-v1` write that carries the final text (a completed
/// message, a `system.error`) and its neighbours: were it read together with another event,
/// the widget would lose that text. A completed answer's last three writes take about twice
/// this plus [`WIDGET_WRITE_GAP`].
pub const FULL_TEXT_GAP: Duration = Duration::from_millis(250);

/// How events are framed for the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Upstream bytes unchanged.
    Raw,
    /// The old service's framing, translated from this dialect's events.
    WidgetV1(Dialect),
}

/// How one upstream stream ("leg") ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEnd {
    /// The upstream sent its end-of-stream marker; `last` is the run's final signal
    /// (`Completed`, `Ended`, `RequiresAction`) if one was seen.
    Done { last: Option<Signal> },
    /// The upstream reported an error event; nothing more will come.
    ErrorEvent,
    /// The upstream body ended without an end-of-stream marker (the Responses API has none).
    EndedEarly { last: Option<Signal> },
    /// The upstream connection broke or went silent.
    Broken(UpstreamError),
    /// The upstream sent something that is not an event stream.
    Garbled,
    /// The browser went away; `last` as for `Done`.
    ClientGone { last: Option<Signal> },
}

impl LegEnd {
    /// The run's final signal, if the leg saw one.
    pub fn last(&self) -> Option<&Signal> {
        match self {
            LegEnd::Done { last } | LegEnd::EndedEarly { last } | LegEnd::ClientGone { last } => {
                last.as_ref()
            }
            _ => None,
        }
    }
}

/// The client side of a streamed answer.
pub struct Relay<'s> {
    session: &'s mut ServerSession,
    framing: Framing,
    /// Body bytes written to the client so far.
    pub bytes_sent: usize,
    /// False once the client sent unexpected bytes: we stop watching for its close then.
    watch_client: bool,
    /// Blanks the system prompt in run objects of the raw framing (`redact_run_objects`).
    redactor: Option<RunObjectRedactor>,
    client_gone: bool,
    /// When the first text of the answer was written to the client (time to first token).
    pub first_text: Option<Instant>,
    /// The conversation's lock: freed before the stream's last byte, so a browser that sends
    /// its next message as soon as this answer ended never finds it still locked.
    lock: Option<Held>,
    /// When the last `widget-v1` write went out, and how long the next one must wait after
    /// it (see [`WIDGET_WRITE_GAP`]).
    last_widget_write: Option<(Instant, Duration)>,
}

impl<'s> Relay<'s> {
    /// Write the event-stream header. `None` if the client is already gone. A client that
    /// stops reading is dropped by the connection's stalled-reader limit
    /// ([`crate::downstream`]), so it cannot pin an upstream stream.
    pub async fn start(
        session: &'s mut ServerSession,
        cors_origin: Option<&str>,
        framing: Framing,
    ) -> Option<Relay<'s>> {
        let chunked = !session.is_http2() && session.req_header().version != http::Version::HTTP_10;
        let header = respond::event_stream_header(cors_origin, chunked);
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            session.set_keepalive(None);
            return None;
        }
        Some(Relay {
            session,
            framing,
            bytes_sent: 0,
            watch_client: true,
            client_gone: false,
            redactor: None,
            first_text: None,
            lock: None,
            last_widget_write: None,
        })
    }

    /// Blank `instructions` and `tools` in the run objects of the raw framing.
    pub fn redact_run_objects(&mut self) {
        self.redactor = Some(RunObjectRedactor::default());
    }

    /// Keep the conversation's lock until the stream ends (see [`Relay::finish`]).
    pub fn hold_until_end(&mut self, lock: Held) {
        self.lock = Some(lock);
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the client went away.
    pub fn client_gone(&self) -> bool {
        self.client_gone
    }

    /// Waits until a `widget-v1` write that needs `apart` from the previous one may follow it
    /// (the previous one may need more).
    async fn pace(&self, apart: Duration) {
        if let (Framing::WidgetV1(_), Some((last, after))) = (self.framing, self.last_widget_write)
        {
            tokio::time::sleep_until((last + apart.max(after)).into()).await;
        }
    }

    /// Write bytes to the client at once (in `widget-v1`, once the previous write is
    /// [`WIDGET_WRITE_GAP`] old). `false` if the client is gone.
    pub async fn write(&mut self, bytes: Bytes) -> bool {
        self.write_apart(bytes, WIDGET_WRITE_GAP).await
    }

    /// As [`Relay::write`], `apart` from the previous and the next write in `widget-v1`.
    async fn write_apart(&mut self, bytes: Bytes, apart: Duration) -> bool {
        if self.client_gone {
            return false;
        }
        self.pace(apart).await;
        let n = bytes.len();
        if self
            .session
            .write_response_body(bytes, false)
            .await
            .is_err()
        {
            self.client_gone = true;
            self.session.set_keepalive(None);
            return false;
        }
        self.bytes_sent += n;
        if let Framing::WidgetV1(_) = self.framing {
            self.last_widget_write = Some((Instant::now(), apart));
        }
        true
    }

    /// Forward one upstream stream until it ends; `reader` tells what each event means.
    /// `continuation`: the stream continues the answer after tool outputs.
    pub async fn pump(
        &mut self,
        upstream: &mut UpstreamResponse,
        reader: &mut EventReader,
        continuation: bool,
    ) -> LegEnd {
        let mut parser = SseParser::new();
        let mut last = None;
        // After `requires_action`, nothing more of this leg reaches the client.
        let mut holding = false;
        let widget = matches!(self.framing, Framing::WidgetV1(_));
        loop {
            if widget {
                // Let what arrives until the next write may go out become one write (the
                // upstream's `next_chunk` takes every chunk already there).
                self.pace(WIDGET_WRITE_GAP).await;
            }
            let next = tokio::select! {
                next = upstream.next_chunk() => next,
                () = watch_close(self.session, &mut self.watch_client) => {
                    self.client_gone = true;
                    self.session.set_keepalive(None);
                    return LegEnd::ClientGone { last };
                }
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) if parser.has_partial() => {
                    return LegEnd::Broken(UpstreamError::Broken(
                        "the stream ended inside an event".into(),
                    ))
                }
                Ok(None) => return LegEnd::EndedEarly { last },
                Err(e) => return LegEnd::Broken(e),
            };
            let Ok(events) = parser.push_with_ends(&chunk) else {
                return LegEnd::Garbled;
            };

            let mut raw_upto = if holding { 0 } else { chunk.len() };
            let mut writes = Vec::new();
            let mut ended = None;
            let mut text = false;
            for (event, end) in &events {
                let signal = reader.observe(event);
                text |= !holding && reader.is_text_delta(event);
                if let (Framing::WidgetV1(dialect), false) = (self.framing, holding) {
                    writes.extend(widget::translate_event(
                        dialect,
                        event,
                        &signal,
                        continuation,
                    ));
                }
                match signal {
                    Signal::Progress => {}
                    Signal::Done => ended = Some(LegEnd::Done { last: last.clone() }),
                    Signal::ErrorEvent => ended = Some(LegEnd::ErrorEvent),
                    Signal::RequiresAction => {
                        if !holding {
                            raw_upto = *end;
                            holding = true;
                        }
                        last = Some(Signal::RequiresAction);
                    }
                    s @ (Signal::Completed | Signal::Ended(_)) => last = Some(s),
                }
                if ended.is_some() {
                    break;
                }
            }

            let delivered = match self.framing {
                Framing::Raw if raw_upto > 0 => {
                    let raw = chunk.slice(..raw_upto);
                    match &mut self.redactor {
                        None => self.write(raw).await,
                        Some(redactor) => {
                            let bytes = redactor.push(&raw);
                            bytes.is_empty() || self.write(Bytes::from(bytes)).await
                        }
                    }
                }
                Framing::Raw => !self.client_gone,
                Framing::WidgetV1(_) => {
                    let mut ok = !self.client_gone;
                    for event in widget::coalesce(writes) {
                        let apart = if widget::is_full_text(&event) {
                            FULL_TEXT_GAP
                        } else {
                            WIDGET_WRITE_GAP
                        };
                        ok = self.write_apart(widget::frame(&event), apart).await;
                        if !ok {
                            break;
                        }
                    }
                    ok
                }
            };
            if !delivered {
                return LegEnd::ClientGone { last };
            }
            if text && self.first_text.is_none() {
                self.first_text = Some(Instant::now());
            }
            if let Some(end) = ended {
                return end;
            }
        }
    }

    /// End the stream with a final error event: `event: error` carrying `code` and `message`
    /// in the `openai` framing, a `system.error` with `message` in the widget's.
    pub async fn fail(&mut self, code: &str, message: &str) {
        let event = match self.framing {
            Framing::Raw => {
                let data = json!({"error": {"code": code, "message": message}}).to_string();
                encode_event(Some("error"), &data)
            }
            Framing::WidgetV1(_) => widget::system_error(message),
        };
        self.write_apart(event, FULL_TEXT_GAP).await;
        self.finish().await;
    }

    /// End the response body, freeing the conversation's lock first.
    pub async fn finish(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        if self.client_gone {
            return;
        }
        if self
            .session
            .write_response_body(bytes::Bytes::new(), true)
            .await
            .is_err()
        {
            self.client_gone = true;
            self.session.set_keepalive(None);
        }
    }
}

/// Resolves when the client closes its connection (or resets its HTTP/2 stream).
async fn watch_close(session: &mut ServerSession, watching: &mut bool) {
    if *watching {
        match session.read_body_or_idle(true).await {
            Err(_) => return,
            // The client sent more bytes (e.g. a pipelined request): nothing to learn from
            // them now; stop watching so this branch does not spin.
            Ok(_) => *watching = false,
        }
    }
    std::future::pending::<()>().await
}

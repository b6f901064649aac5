//! The stream relay: upstream event-stream bytes to the browser, as they arrive.
//!
//! Each upstream chunk is written to the client unchanged and at once (Pingora flushes every
//! chunk of a chunked body). Beside that, the same bytes go through the SSE parser so the
//! relay knows when the run ended, failed or was cut. A broken upstream ends the client
//! response with a final `event: error`; a client that goes away ends the upstream read, which
//! closes that upstream connection.

use crate::dialect::Signal;
use crate::respond;
use crate::sse::{encode_event, SseEvent, SseParser};
use crate::upstream::{UpstreamError, UpstreamResponse};
use bytes::Bytes;
use pingora_proxy::Session;
use serde_json::json;

/// How one upstream stream ("leg") ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEnd {
    /// The upstream sent its end-of-stream marker; `last` is the run's final signal
    /// (`Completed`, `Ended`, `RequiresAction`) if one was seen.
    Done { last: Option<Signal> },
    /// The upstream reported an error event; nothing more will come.
    ErrorEvent,
    /// The upstream body ended (cleanly) without an end-of-stream marker.
    EndedEarly { last: Option<Signal> },
    /// The upstream connection broke or went silent.
    Broken(UpstreamError),
    /// The upstream sent something that is not an event stream.
    Garbled,
    /// The browser went away.
    ClientGone,
}

/// The client side of a streamed answer.
pub struct Relay<'s> {
    session: &'s mut Session,
    /// Body bytes written to the client so far.
    pub bytes_sent: usize,
    /// False once the client sent unexpected bytes: we stop watching for its close then.
    watch_client: bool,
    client_gone: bool,
}

impl<'s> Relay<'s> {
    /// Write the event-stream header. `None` if the client is already gone.
    pub async fn start(session: &'s mut Session, cors_origin: Option<&str>) -> Option<Relay<'s>> {
        let downstream = session.as_downstream();
        let chunked =
            !downstream.is_http2() && session.req_header().version != http::Version::HTTP_10;
        let header = respond::event_stream_header(cors_origin, chunked);
        if session
            .write_response_header(Box::new(header), false)
            .await
            .is_err()
        {
            session.set_keepalive(None);
            return None;
        }
        Some(Relay {
            session,
            bytes_sent: 0,
            watch_client: true,
            client_gone: false,
        })
    }

    /// Whether the client went away.
    pub fn client_gone(&self) -> bool {
        self.client_gone
    }

    /// Write bytes to the client at once. `false` if the client is gone.
    pub async fn write(&mut self, bytes: Bytes) -> bool {
        if self.client_gone {
            return false;
        }
        let n = bytes.len();
        if self
            .session
            .write_response_body(Some(bytes), false)
            .await
            .is_err()
        {
            self.client_gone = true;
            self.session.set_keepalive(None);
            return false;
        }
        self.bytes_sent += n;
        true
    }

    /// Forward one upstream stream until it ends; `classify` tells what each event means.
    pub async fn pump(
        &mut self,
        upstream: &mut UpstreamResponse,
        classify: fn(&SseEvent) -> Signal,
    ) -> LegEnd {
        let mut parser = SseParser::new();
        let mut last = None;
        loop {
            let next = tokio::select! {
                next = upstream.next_chunk() => next,
                () = watch_close(self.session, &mut self.watch_client) => {
                    self.client_gone = true;
                    self.session.set_keepalive(None);
                    return LegEnd::ClientGone;
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
            let events = match parser.push(&chunk) {
                Ok(events) => events,
                Err(_) => return LegEnd::Garbled,
            };
            if !self.write(chunk).await {
                return LegEnd::ClientGone;
            }
            for event in &events {
                match classify(event) {
                    Signal::Progress => {}
                    Signal::Done => return LegEnd::Done { last },
                    Signal::ErrorEvent => return LegEnd::ErrorEvent,
                    s @ (Signal::Completed | Signal::Ended(_) | Signal::RequiresAction) => {
                        last = Some(s)
                    }
                }
            }
        }
    }

    /// End the stream with a final `event: error` carrying `code` and `message`.
    pub async fn fail(&mut self, code: &str, message: &str) {
        let data = json!({"error": {"code": code, "message": message}}).to_string();
        self.write(encode_event(Some("error"), &data)).await;
        self.finish().await;
    }

    /// End the response body.
    pub async fn finish(&mut self) {
        if self.client_gone {
            return;
        }
        if self.session.write_response_body(None, true).await.is_err() {
            self.client_gone = true;
            self.session.set_keepalive(None);
        }
    }
}

/// Resolves when the client closes its connection (or resets its HTTP/2 stream).
async fn watch_close(session: &mut Session, watching: &mut bool) {
    if *watching {
        match session.as_downstream_mut().read_body_or_idle(true).await {
            Err(_) => return,
            // The client sent more bytes (e.g. a pipelined request): nothing to learn from
            // them now; stop watching so this branch does not spin.
            Ok(_) => *watching = false,
        }
    }
    std::future::pending::<()>().await
}

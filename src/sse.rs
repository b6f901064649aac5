//! Server-sent-event framing: an incremental parser and a small encoder.
//!
//! The proxy relays the upstream `text/event-stream` body to the browser
//! byte for byte. Beside that, it feeds the very same bytes to an
//! [`SseParser`] to learn which events went by (`thread.run.requires_action`,
//! `thread.run.failed`, `done`, ...). The parser therefore never changes the
//! relayed bytes, accepts chunks cut anywhere (mid-line, mid-CRLF, mid-UTF-8
//! sequence), does no I/O, and keeps at most one pending event in memory,
//! bounded by a configurable limit.
//!
//! Parsing follows the WHATWG HTML "event stream interpretation" rules:
//! lines end in CRLF, LF or a lone CR; a leading UTF-8 byte order mark is
//! skipped; `field: value` loses one optional space after the colon; lines
//! starting with `:` are comments; `data` lines are joined with `\n`; a blank
//! line dispatches the event unless it has no data; `id` sets the last event
//! ID (ignored when it contains NUL); `retry` takes ASCII digits only; unknown
//! fields are ignored; bytes that are not UTF-8 become U+FFFD.
//!
//! [`encode_event`] writes an event the parser reads back unchanged; the
//! proxy uses it for the events it emits itself (such as its final `error`).

use std::fmt;

use bytes::Bytes;

/// Default bound on one pending event (its data, its type and the line
/// being read): 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, or `"message"` when the event had none (or an empty one).
    pub event: String,
    /// The `data` lines joined with `\n` (no trailing newline).
    pub data: String,
    /// The stream's last event ID when this event was dispatched. Per the
    /// spec it persists from one event to the next until another `id` field
    /// changes it; `None` while it is unset or empty.
    pub id: Option<String>,
}

/// Why the parser gave up on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A single pending event (or line) grew beyond the parser's limit.
    EventTooLarge,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::EventTooLarge => {
                f.write_str("a server-sent event exceeded the maximum allowed size")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental event-stream parser for one stream.
///
/// Feed every chunk of the body to [`push`](Self::push) in order; call
/// [`finish`](Self::finish) when the body ends. After an
/// [`SseError::EventTooLarge`] the parser is spent: every later `push`
/// returns the same error (and events completed earlier in the failing
/// chunk are not returned).
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the current line not yet terminated.
    line: Vec<u8>,
    /// The last chunk ended in CR: an LF opening the next chunk belongs to it.
    skip_lf: bool,
    /// While the start of the stream is undecided: how many BOM bytes matched.
    bom_matched: Option<usize>,
    data: String,
    event_type: String,
    last_event_id: String,
    retry_ms: Option<u64>,
    /// A field line has been read since the last blank line.
    in_event: bool,
    failed: bool,
    /// Set by `finish` when it discarded an incomplete event.
    ended_cut: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default limit of [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that fails once one pending event (its data and type plus
    /// the line being read) would exceed `max_event_bytes` bytes.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            skip_lf: false,
            bom_matched: Some(0),
            data: String::new(),
            event_type: String::new(),
            last_event_id: String::new(),
            retry_ms: None,
            in_event: false,
            failed: false,
            ended_cut: false,
        }
    }

    /// Parses the next chunk of the stream and returns every event it
    /// completed, in order (often none, sometimes several).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        Ok(self
            .push_with_ends(chunk)?
            .into_iter()
            .map(|(event, _)| event)
            .collect())
    }

    /// Like [`push`](Self::push), and with each event the offset in `chunk` just past the
    /// line end that completed it: `chunk[..end]` holds everything up to and including that
    /// event, so a relay can forward a chunk up to an event and hold back the rest.
    pub fn push_with_ends(&mut self, chunk: &[u8]) -> Result<Vec<(SseEvent, usize)>, SseError> {
        if self.failed {
            return Err(SseError::EventTooLarge);
        }
        self.ended_cut = false;
        let mut events = Vec::new();
        let mut ended = Vec::new();
        let mut rest = self.skip_bom(chunk);
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            let line_part = &rest[..end];
            let after = &rest[end + 1..];
            rest = if rest[end] == b'\r' {
                match after.first() {
                    Some(b'\n') => &after[1..],
                    Some(_) => after,
                    None => {
                        self.skip_lf = true;
                        after
                    }
                }
            } else {
                after
            };
            let outcome = if self.line.is_empty() {
                self.take_line(line_part, &mut events)
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(line_part);
                let outcome = self.take_line(&line, &mut events);
                line.clear();
                self.line = line;
                outcome
            };
            outcome?;
            let end = chunk.len() - rest.len();
            ended.extend(events.drain(..).map(|event| (event, end)));
        }
        if !rest.is_empty() {
            self.check_size(self.line.len() + rest.len())?;
            self.line.extend_from_slice(rest);
        }
        Ok(ended)
    }

    /// Ends the stream. As the spec requires, an event still missing its
    /// terminating blank line is discarded, so this always returns `None`;
    /// ask [`has_partial`](Self::has_partial) (before or after this call)
    /// whether the stream was cut inside an event. The parser is then reset
    /// and could read a new stream.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let cut = self.has_partial();
        *self = Self::with_max_event_bytes(self.max_event_bytes);
        self.ended_cut = cut;
        None
    }

    /// True when the bytes received so far end inside an event: an
    /// unterminated line, or field lines not yet closed by a blank line
    /// (or an event that was rejected as too large). Trailing comments and
    /// blank lines do not count. After [`finish`](Self::finish) it tells
    /// whether `finish` discarded such an event, until the next `push`.
    pub fn has_partial(&self) -> bool {
        self.failed
            || self.ended_cut
            || self.in_event
            || !self.line.is_empty()
            || self.bom_matched.is_some_and(|n| n > 0)
    }

    /// The last reconnection time sent in a valid `retry` field, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Consumes a byte order mark at the very start of the stream, even
    /// when it arrives split over several chunks.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let Some(mut matched) = self.bom_matched else {
            return chunk;
        };
        let mut used = 0;
        while matched < BOM.len() {
            let Some(&byte) = chunk.get(used) else {
                self.bom_matched = Some(matched);
                return &[];
            };
            if byte != BOM[matched] {
                // Not a BOM after all: the bytes held back are content.
                self.line.extend_from_slice(&BOM[..matched]);
                break;
            }
            matched += 1;
            used += 1;
        }
        self.bom_matched = None;
        &chunk[used..]
    }

    fn check_size(&mut self, line_len: usize) -> Result<(), SseError> {
        let pending = line_len + self.data.len() + self.event_type.len();
        if pending > self.max_event_bytes {
            self.failed = true;
            self.line = Vec::new();
            self.data = String::new();
            self.event_type = String::new();
            return Err(SseError::EventTooLarge);
        }
        Ok(())
    }

    /// Interprets one complete line (without its line end).
    fn take_line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if let Some(event) = self.dispatch() {
                events.push(event);
            }
            return Ok(());
        }
        self.check_size(line.len())?;
        if line[0] == b':' {
            return Ok(());
        }
        self.in_event = true;
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                // The line and its `\n` in one allocation (not one for each).
                self.data.reserve(value.len() + 1);
                push_lossy(&mut self.data, value);
                self.data.push('\n');
            }
            b"event" => {
                self.event_type.clear();
                push_lossy(&mut self.event_type, value);
            }
            b"id" if !value.contains(&0) => {
                self.last_event_id.clear();
                push_lossy(&mut self.last_event_id, value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Only ASCII digits, so only an overflow can fail: ignore it then.
                let digits = String::from_utf8_lossy(value);
                self.retry_ms = digits.parse().ok().or(self.retry_ms);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.in_event = false;
        if self.data.is_empty() {
            self.event_type.clear();
            return None;
        }
        self.data.pop();
        let event = if self.event_type.is_empty() {
            String::from("message")
        } else {
            std::mem::take(&mut self.event_type)
        };
        let id = (!self.last_event_id.is_empty()).then(|| self.last_event_id.clone());
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id,
        })
    }
}

/// Appends `bytes` as text, invalid UTF-8 replaced by U+FFFD. Checked first as a whole: the
/// standard check has a fast path for ASCII that the lossy conversion lacks, and event data
/// (JSON) is nearly all ASCII.
fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Encodes one event: `event: NAME\n` when a name is given, one `data: `
/// line per line of `data`, then the blank line that dispatches it.
///
/// Line breaks in `data` (LF, CRLF or lone CR) each start a new `data:`
/// line, so the parser returns them as `\n`; data without CR round-trips
/// exactly, and empty data is sent as one empty `data:` line. CR and LF are
/// removed from the event name, which could otherwise inject fields.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.map_or(0, str::len) + 16);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend(name.bytes().filter(|&b| b != b'\r' && b != b'\n'));
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest.as_bytes()[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn event_ends_point_just_past_the_dispatching_blank_line() {
        let chunk = b"event: a\ndata: 1\n\nevent: done\r\ndata: [DONE]\r\n\r\nevent: c";
        let mut parser = SseParser::new();
        let ends = parser.push_with_ends(chunk).unwrap();
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[0].0.event, "a");
        assert_eq!(&chunk[..ends[0].1], b"event: a\ndata: 1\n\n");
        assert_eq!(ends[1].0.event, "done");
        assert_eq!(
            &chunk[ends[0].1..ends[1].1],
            b"event: done\r\ndata: [DONE]\r\n\r\n"
        );
        // An event completed by a later chunk ends inside that chunk.
        let ends = parser.push_with_ends(b"\ndata: 3\n\n").unwrap();
        assert_eq!(ends[0].0.event, "c");
        assert_eq!(ends[0].1, 10);
    }

    use super::*;

    const CREATE_RUN: &str =
        include_str!("../tests/fixtures/openai-wire/assistants-create-run-stream.sse");
    const REQUIRES_ACTION: &str =
        include_str!("../tests/fixtures/openai-wire/assistants-create-run-requires-action.sse");
    const SUBMIT_TOOL_OUTPUTS: &str =
        include_str!("../tests/fixtures/openai-wire/assistants-submit-tool-outputs-stream.sse");
    const RESPONSES: &str =
        include_str!("../tests/fixtures/openai-wire/responses-create-stream.sse");

    /// The example streams without the `...` lines marking omitted events.
    fn wire(example: &str) -> String {
        let mut text = String::new();
        for line in example.lines().filter(|line| *line != "...") {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn fixtures() -> Vec<(&'static str, String)> {
        vec![
            ("create-run", wire(CREATE_RUN)),
            ("requires-action", wire(REQUIRES_ACTION)),
            ("submit-tool-outputs", wire(SUBMIT_TOOL_OUTPUTS)),
            ("responses", wire(RESPONSES)),
        ]
    }

    /// Feeds the chunks in order to a fresh parser and collects every event.
    fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.push(chunk).expect("stream within limits"));
        }
        assert!(!parser.has_partial(), "stream should end between events");
        assert_eq!(parser.finish(), None);
        events
    }

    fn parse(bytes: &[u8]) -> Vec<SseEvent> {
        parse_chunks([bytes])
    }

    fn names(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.event.as_str()).collect()
    }

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn example_streams_give_the_expected_events_with_json_data() {
        let expected: [(&str, &[&str]); 4] = [
            (
                "create-run",
                &[
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
                    "thread.message.completed",
                    "thread.run.step.completed",
                    "thread.run.completed",
                    "done",
                ],
            ),
            (
                "requires-action",
                &[
                    "thread.created",
                    "thread.run.created",
                    "thread.run.queued",
                    "thread.run.in_progress",
                    "thread.run.step.created",
                    "thread.run.step.in_progress",
                    "thread.run.step.delta",
                    "thread.run.step.delta",
                    "thread.run.step.delta",
                    "thread.run.step.delta",
                    "thread.run.step.delta",
                    "thread.run.requires_action",
                    "done",
                ],
            ),
            (
                "submit-tool-outputs",
                &[
                    "thread.run.step.completed",
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
                    "thread.message.delta",
                    "thread.message.completed",
                    "thread.run.step.completed",
                    "thread.run.completed",
                    "done",
                ],
            ),
            (
                "responses",
                &[
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.completed",
                ],
            ),
        ];
        for ((name, text), (expected_name, expected_events)) in fixtures().iter().zip(expected) {
            assert_eq!(*name, expected_name);
            let events = parse(text.as_bytes());
            assert_eq!(names(&events), expected_events, "{name}");
            for event in &events {
                assert_eq!(event.id, None, "{name}");
                if event.event == "done" {
                    assert_eq!(event.data, "[DONE]", "{name}");
                } else if let Err(err) = serde_json::from_str::<serde_json::Value>(&event.data) {
                    panic!("{name}: {} data is not JSON: {err}", event.event);
                }
            }
        }
    }

    #[test]
    fn requires_action_data_carries_the_tool_call() {
        let events = parse(wire(REQUIRES_ACTION).as_bytes());
        let run = events
            .iter()
            .find(|e| e.event == "thread.run.requires_action")
            .expect("requires_action event");
        let run: serde_json::Value = serde_json::from_str(&run.data).unwrap();
        assert_eq!(
            run["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"],
            "call_XXNp8YGaFrjrSjgqxtC8JJ1B"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for (name, text) in fixtures() {
            let bytes = text.as_bytes();
            let whole = parse(bytes);
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(parse_chunks([a, b]), whole, "{name} cut at {cut}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        for (name, text) in fixtures() {
            let bytes = text.as_bytes();
            assert_eq!(parse_chunks(bytes.chunks(1)), parse(bytes), "{name}");
        }
    }

    #[test]
    fn crlf_and_lone_cr_line_ends_give_the_same_events() {
        for (name, text) in fixtures() {
            let lf = parse(text.as_bytes());
            for line_end in ["\r\n", "\r"] {
                let converted = text.replace('\n', line_end);
                let bytes = converted.as_bytes();
                assert_eq!(parse(bytes), lf, "{name} {line_end:?}");
                // A CR closing one chunk and the LF opening the next are one line end.
                for cut in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    assert_eq!(parse_chunks([a, b]), lf, "{name} {line_end:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn mixed_line_ends_in_one_stream() {
        let events = parse(b"data: a\r\ndata: b\rdata: c\n\r\nevent: x\rdata: d\r\r");
        assert_eq!(
            events,
            vec![
                message("a\nb\nc"),
                SseEvent {
                    event: "x".into(),
                    data: "d".into(),
                    id: None
                }
            ]
        );
    }

    #[test]
    fn cr_then_lf_in_separate_chunks_is_one_line_end() {
        // Were the LF a second line end, it would dispatch `a` without `b`.
        let events = parse_chunks([&b"data: a\r"[..], b"\ndata: b\n\n"]);
        assert_eq!(events, vec![message("a\nb")]);
        // An empty chunk between them changes nothing.
        let events = parse_chunks([&b"data: a\r"[..], b"", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![message("a\nb")]);
    }

    #[test]
    fn pseudo_random_chunking_gives_the_same_events() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (name, text) in fixtures() {
            for line_end in ["\n", "\r\n", "\r"] {
                let converted = text.replace('\n', line_end);
                let bytes = converted.as_bytes();
                let whole = parse(bytes);
                for round in 0..50 {
                    let mut chunks = Vec::new();
                    let mut rest = bytes;
                    while !rest.is_empty() {
                        let len = (next() % 300) as usize; // zero-length chunks included
                        let (chunk, tail) = rest.split_at(len.min(rest.len()));
                        chunks.push(chunk);
                        rest = tail;
                    }
                    assert_eq!(
                        parse_chunks(chunks),
                        whole,
                        "{name} {line_end:?} round {round}"
                    );
                }
            }
        }
    }

    #[test]
    fn several_events_in_one_chunk() {
        let mut parser = SseParser::new();
        let events = parser
            .push(b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\ndata: 3\n\nevent: c\ndata: 4")
            .unwrap();
        assert_eq!(names(&events), ["a", "b", "message"]);
        assert_eq!(events[2].data, "3");
        assert!(parser.has_partial());
        let events = parser.push(b"\n\n").unwrap();
        assert_eq!(names(&events), ["c"]);
        assert_eq!(events[0].data, "4");
        assert!(!parser.has_partial());
    }

    #[test]
    fn comments_are_ignored() {
        let events =
            parse(b": keep-alive\n\n:\ndata: a\n: inside an event\ndata: b\n\n: trailing\n");
        assert_eq!(events, vec![message("a\nb")]);
    }

    #[test]
    fn data_lines_join_with_newlines() {
        let events = parse(b"data: first\ndata:\ndata:  indented\ndata:third\n\n");
        assert_eq!(events, vec![message("first\n\n indented\nthird")]);
    }

    #[test]
    fn field_values_lose_one_leading_space_only() {
        let events = parse(b"event:  spaced\ndata:no-space\ndata: a: b\n\n");
        assert_eq!(events[0].event, " spaced");
        assert_eq!(events[0].data, "no-space\na: b");
    }

    #[test]
    fn a_field_name_without_colon_has_an_empty_value() {
        // `data` alone adds an empty line; the event is still dispatched.
        assert_eq!(parse(b"data\n\n"), vec![message("")]);
        assert_eq!(parse(b"data\ndata\n\n"), vec![message("\n")]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        let events = parse(b"event: ping\n\nid: 1\n\nretry: 10\n\n\n\nevent: real\ndata: x\n\n");
        assert_eq!(names(&events), ["real"]);
    }

    #[test]
    fn event_type_does_not_leak_into_the_next_event() {
        let events = parse(b"event: orphan\n\ndata: a\n\nevent: typed\ndata: b\n\ndata: c\n\n");
        assert_eq!(names(&events), ["message", "typed", "message"]);
    }

    #[test]
    fn empty_event_field_means_message() {
        assert_eq!(parse(b"event:\ndata: x\n\n")[0].event, "message");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let events = parse(b"foo: bar\nDATA: shout\nevent : spaced-name\ndata: kept\n\n");
        assert_eq!(events, vec![message("kept")]);
    }

    #[test]
    fn id_persists_until_changed_and_ignores_nul() {
        let events =
            parse(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\0\ndata: c\n\nid\ndata: d\n\nid: 9\n\n");
        let ids: Vec<Option<&str>> = events.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some("7"), Some("7"), Some("7"), None]);
        // An `id` in an event without data still updates the last event ID.
        let events = parse(b"id: 9\n\ndata: e\n\n");
        assert_eq!(events[0].id.as_deref(), Some("9"));
    }

    #[test]
    fn retry_takes_ascii_digits_only() {
        let mut parser = SseParser::new();
        assert_eq!(parser.retry_ms(), None);
        parser.push(b"retry: 1500\n\n").unwrap();
        assert_eq!(parser.retry_ms(), Some(1500));
        parser
            .push(b"retry: 2s\n\nretry: -1\n\nretry:\n\nretry: 99999999999999999999999\n\n")
            .unwrap();
        assert_eq!(parser.retry_ms(), Some(1500));
        parser.push(b"retry:30\n\n").unwrap();
        assert_eq!(parser.retry_ms(), Some(30));
    }

    #[test]
    fn leading_bom_is_skipped_even_when_split() {
        let stream = b"\xEF\xBB\xBFevent: a\ndata: 1\n\n";
        let expected = vec![SseEvent {
            event: "a".into(),
            data: "1".into(),
            id: None,
        }];
        assert_eq!(parse(stream), expected);
        assert_eq!(parse_chunks(stream.chunks(1)), expected);
        assert_eq!(parse_chunks([&stream[..2], &stream[2..]]), expected);
    }

    #[test]
    fn bom_is_skipped_only_at_the_start() {
        // A second BOM makes the field name unknown, so the line is ignored.
        let events = parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: hidden\n\ndata: shown\n\n");
        assert_eq!(events, vec![message("shown")]);
        let events = parse(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(events, vec![message("a")]);
    }

    #[test]
    fn bytes_resembling_a_bom_start_are_content() {
        // EF BB followed by something else is not a BOM: the bytes stay.
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"\xEF").unwrap(), vec![]);
        assert!(parser.has_partial());
        let events = parser.push(b"\xBBX\ndata: after\n\n").unwrap();
        assert_eq!(events, vec![message("after")]);

        // Were they dropped as a BOM, `x` would be dispatched too.
        let stream = b"\xEF\xBBdata: x\n\ndata: y\n\n";
        assert_eq!(parse(stream), vec![message("y")]);
        assert_eq!(parse_chunks(stream.chunks(1)), vec![message("y")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse(b"event: \xFF\xFE\ndata: caf\xC3\xA9 \xC3\n\n");
        assert_eq!(events[0].event, "\u{FFFD}\u{FFFD}");
        assert_eq!(events[0].data, "caf\u{e9} \u{FFFD}");
        // A multi-byte character cut between chunks is reassembled.
        let events = parse_chunks([&b"data: caf\xC3"[..], b"\xA9\n\n"]);
        assert_eq!(events, vec![message("caf\u{e9}")]);
    }

    #[test]
    fn an_event_over_the_limit_is_an_error() {
        let mut parser = SseParser::with_max_event_bytes(64);
        let small = parser.push(b"data: fits\n\n").unwrap();
        assert_eq!(small, vec![message("fits")]);

        // Many small data lines add up.
        let mut err = None;
        for _ in 0..20 {
            if let Err(e) = parser.push(b"data: 0123456789\n") {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SseError::EventTooLarge));
        // The parser stays failed.
        assert_eq!(parser.push(b"\n"), Err(SseError::EventTooLarge));
        assert!(parser.has_partial());
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_in_any_chunking() {
        let long = format!("data: {}\n\n", "x".repeat(100));
        let mut parser = SseParser::with_max_event_bytes(64);
        assert_eq!(parser.push(long.as_bytes()), Err(SseError::EventTooLarge));

        // An endless line is stopped before its end arrives.
        let mut parser = SseParser::with_max_event_bytes(64);
        let results: Vec<_> = long.as_bytes().chunks(10).map(|c| parser.push(c)).collect();
        assert!(results[..6].iter().all(Result::is_ok));
        assert_eq!(
            results[6],
            Err(SseError::EventTooLarge),
            "70 bytes buffered"
        );

        // Comment lines count too, whole or split, so any flood of bytes is bounded.
        let comment = [&b":"[..], &[b'z'; 100], b"\n"].concat();
        let mut parser = SseParser::with_max_event_bytes(64);
        assert_eq!(parser.push(&comment), Err(SseError::EventTooLarge));
        let mut parser = SseParser::with_max_event_bytes(64);
        assert!(parser.push(&comment[..50]).is_ok());
        assert_eq!(parser.push(&comment[50..]), Err(SseError::EventTooLarge));
    }

    #[test]
    fn default_limit_is_one_mebibyte() {
        let body = "y".repeat(DEFAULT_MAX_EVENT_BYTES - 100);
        let mut parser = SseParser::default();
        let events = parser.push(format!("data: {body}\n\n").as_bytes()).unwrap();
        assert_eq!(events[0].data.len(), body.len());
        let body = "y".repeat(DEFAULT_MAX_EVENT_BYTES + 1);
        let result = parser.push(format!("data: {body}\n\n").as_bytes());
        assert_eq!(result, Err(SseError::EventTooLarge));
    }

    #[test]
    fn size_error_reads_as_a_sentence() {
        let err: Box<dyn std::error::Error> = Box::new(SseError::EventTooLarge);
        assert_eq!(
            err.to_string(),
            "a server-sent event exceeded the maximum allowed size"
        );
    }

    #[test]
    fn a_cut_stream_is_reported_by_has_partial() {
        let text = wire(CREATE_RUN);
        let bytes = text.as_bytes();
        let cut = text.find("event: thread.run.completed").unwrap() + 40;
        let mut parser = SseParser::new();
        let events = parser.push(&bytes[..cut]).unwrap();
        assert_eq!(events.last().unwrap().event, "thread.run.step.completed");
        assert!(parser.has_partial());
        assert_eq!(parser.finish(), None);
        assert!(parser.has_partial(), "finish keeps the answer");
        // The next stream starts clean.
        assert_eq!(parser.push(b"data: new\n\n").unwrap(), vec![message("new")]);
        assert!(!parser.has_partial());
    }

    #[test]
    fn has_partial_distinguishes_where_a_stream_stops() {
        let cases: [(&[u8], bool); 8] = [
            (b"", false),
            (b"data: a\n\n", false),
            (b"data: a\n\n: comment\n", false),
            (b"data: a\n\n\n", false),
            (b"data: a\r\n\r", false),
            (b"data: a\n", true),
            (b"data: a", true),
            (b"event: done\n", true),
        ];
        for (stream, partial) in cases {
            let mut parser = SseParser::new();
            parser.push(stream).unwrap();
            assert_eq!(
                parser.has_partial(),
                partial,
                "{:?}",
                String::from_utf8_lossy(stream)
            );
            assert_eq!(parser.finish(), None);
            assert_eq!(parser.has_partial(), partial);
        }
    }

    #[test]
    fn encoder_writes_the_wire_format() {
        assert_eq!(
            encode_event(
                Some("error"),
                r#"{"error":{"code":"upstream_stream_failed"}}"#
            ),
            Bytes::from_static(
                b"event: error\ndata: {\"error\":{\"code\":\"upstream_stream_failed\"}}\n\n"
            )
        );
        assert_eq!(
            encode_event(None, "a\nb"),
            Bytes::from_static(b"data: a\ndata: b\n\n")
        );
        assert_eq!(encode_event(None, ""), Bytes::from_static(b"data: \n\n"));
    }

    #[test]
    fn encoded_events_round_trip() {
        let cases: [(Option<&str>, &str); 8] = [
            (Some("done"), "[DONE]"),
            (None, "plain"),
            (None, ""),
            (Some("x"), "\n"),
            (Some("multi"), "one\ntwo\n\nfour\n"),
            (Some(" spaced"), " leading space"),
            (Some("a:b"), "data: inside"),
            (Some("thread.run.failed"), "{\"k\": \"é ✓\"}"),
        ];
        let mut stream = Vec::new();
        for (event, data) in cases {
            let encoded = encode_event(event, data);
            assert_eq!(
                parse(&encoded),
                vec![SseEvent {
                    event: event.unwrap_or("message").to_owned(),
                    data: data.to_owned(),
                    id: None,
                }]
            );
            stream.extend_from_slice(&encoded);
        }
        assert_eq!(parse(&stream).len(), cases.len());
    }

    #[test]
    fn encoder_normalizes_carriage_returns_and_sanitizes_names() {
        let encoded = encode_event(Some("evil\r\ndata: injected"), "a\r\nb\rc");
        assert_eq!(
            encoded,
            Bytes::from_static(b"event: evildata: injected\ndata: a\ndata: b\ndata: c\n\n")
        );
        let events = parse(&encoded);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "a\nb\nc");
    }
}

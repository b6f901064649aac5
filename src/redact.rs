//! Keeping a tenant's system prompt out of browsers (`redact_run_objects`).
//!
//! In the `openai` stream format the upstream bytes reach the browser unchanged, and some
//! events carry the whole run: `thread.run.*` events (Assistants API) hold a run object,
//! `response.*` events (Responses API) hold `{"response": {...}}`, both with the tenant's
//! `instructions` and `tools`. [`RunObjectRedactor`] blanks those two values (`""` and `[]`)
//! in such objects and leaves every other byte as it was: the JSON is not re-serialized, only
//! the two values' spans are replaced. It works line by line over the raw stream, so events
//! split across chunks are handled; a line is held back only until its end arrives.

/// Filters a raw event stream, blanking `instructions` and `tools` in run objects.
#[derive(Debug, Default)]
pub struct RunObjectRedactor {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

impl RunObjectRedactor {
    /// Feed stream bytes; returns the bytes that can be sent now (complete lines).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + self.partial.len());
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A line ends at LF, CR or CRLF; a CR at the very end may be the first half of a
            // CRLF, which does not matter: the line is complete either way.
            let (line, tail) = rest.split_at(i);
            let end_len = if tail.starts_with(b"\r\n") { 2 } else { 1 };
            self.partial.extend_from_slice(line);
            let line = std::mem::take(&mut self.partial);
            match redact_data_line(&line) {
                Some(redacted) => out.extend_from_slice(&redacted),
                None => out.extend_from_slice(&line),
            }
            out.extend_from_slice(&tail[..end_len]);
            rest = &tail[end_len..];
        }
        self.partial.extend_from_slice(rest);
        out
    }
}

/// A `data:` line whose JSON is a run object (or holds one in `response`), redacted; `None`
/// when the line is anything else or has nothing to redact.
pub fn redact_data_line(line: &[u8]) -> Option<Vec<u8>> {
    let value = line.strip_prefix(b"data:")?;
    let text = std::str::from_utf8(value).ok()?;
    let redacted = redact_json(text)?;
    let mut out = Vec::with_capacity(5 + redacted.len());
    out.extend_from_slice(b"data:");
    out.extend_from_slice(redacted.as_bytes());
    Some(out)
}

/// `json` with `instructions` and `tools` blanked in the run object it is or carries in
/// `response`; `None` when it is neither or nothing changed. Whitespace, key order and every
/// other value stay byte for byte.
pub fn redact_json(json: &str) -> Option<String> {
    let top = members(json, 0)?;
    let mut spans = Vec::new();
    let is_run = top
        .iter()
        .any(|m| m.key == "object" && &json[m.value.clone()] == "\"thread.run\"");
    if is_run {
        spans.extend(blank_spans(json, &top));
    }
    if let Some(response) = top.iter().find(|m| m.key == "response") {
        if let Some(inner) = members(json, response.value.start) {
            spans.extend(blank_spans(json, &inner));
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(json.len());
    let mut at = 0;
    for (span, blank) in spans {
        out.push_str(&json[at..span.start]);
        out.push_str(blank);
        at = span.end;
    }
    out.push_str(&json[at..]);
    Some(out)
}

/// The spans of `instructions` and `tools` values that are not blank yet, with their blanks.
fn blank_spans(json: &str, members: &[Member]) -> Vec<(std::ops::Range<usize>, &'static str)> {
    members
        .iter()
        .filter_map(|m| {
            let blank = match m.key.as_str() {
                "instructions" => "\"\"",
                "tools" => "[]",
                _ => return None,
            };
            let value = &json[m.value.clone()];
            (value != blank && value != "null").then(|| (m.value.clone(), blank))
        })
        .collect()
}

/// One member of a JSON object: its key (unescaped) and the byte span of its value.
#[derive(Debug)]
struct Member {
    key: String,
    value: std::ops::Range<usize>,
}

/// The members of the object starting at `start` (after whitespace); `None` if there is no
/// well-formed object there.
fn members(json: &str, start: usize) -> Option<Vec<Member>> {
    let bytes = json.as_bytes();
    let mut i = skip_ws(bytes, start);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(bytes, i + 1);
    let mut out = Vec::new();
    if bytes.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = skip_string(bytes, i)?;
        let key: String = serde_json::from_str(&json[i..key_end]).ok()?;
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(bytes, i + 1);
        let value_end = skip_value(bytes, value_start)?;
        out.push(Member {
            key,
            value: value_start..value_end,
        });
        i = skip_ws(bytes, value_end);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string starting at `i` (just past its closing quote).
fn skip_string(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match bytes.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The end of the JSON value starting at `i`.
fn skip_value(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => skip_string(bytes, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match bytes.get(j)? {
                    b'"' => {
                        j = skip_string(bytes, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(b) = bytes.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"{"id":"run_1","object":"thread.run","instructions":"Secret \"prompt\" {x}","tools":[{"type":"function","function":{"name":"sendEmail","parameters":{"a":[1,"]"]}}}],"status":"queued"}"#;

    #[test]
    fn a_run_object_loses_its_instructions_and_tools_and_nothing_else() {
        let out = redact_json(RUN).unwrap();
        assert_eq!(
            out,
            r#"{"id":"run_1","object":"thread.run","instructions":"","tools":[],"status":"queued"}"#
        );
    }

    #[test]
    fn a_response_event_is_redacted_inside_its_response() {
        let event = r#"{"type":"response.created","sequence_number":0, "response" : {"id":"resp_1","instructions": "Be nice" ,"tools":[{"type":"file_search"}],"model":"gpt"}}"#;
        assert_eq!(
            redact_json(event).unwrap(),
            r#"{"type":"response.created","sequence_number":0, "response" : {"id":"resp_1","instructions": "" ,"tools":[],"model":"gpt"}}"#
        );
    }

    #[test]
    fn other_objects_are_left_alone() {
        for json in [
            r#"{"id":"step_1","object":"thread.run.step","instructions":"x"}"#,
            r#"{"id":"msg_1","object":"thread.message.delta","delta":{"content":[]}}"#,
            r#"{"type":"response.output_text.delta","delta":"instructions"}"#,
            r#"{"object":"thread.run","instructions":null,"tools":[]}"#,
            "[DONE]",
            "not json",
            r#"{"object":"thread.run","instructions":"unterminated"#,
        ] {
            assert_eq!(redact_json(json), None, "{json}");
        }
    }

    #[test]
    fn the_stream_filter_redacts_lines_split_across_chunks_and_keeps_line_ends() {
        let stream = format!(
            "event: thread.run.created\r\ndata: {RUN}\r\n\r\nevent: done\ndata: [DONE]\n\n"
        );
        let expected = format!(
            "event: thread.run.created\r\ndata: {}\r\n\r\nevent: done\ndata: [DONE]\n\n",
            redact_json(RUN).unwrap()
        );
        for split in 0..stream.len() {
            let mut redactor = RunObjectRedactor::default();
            let mut out = redactor.push(&stream.as_bytes()[..split]);
            out.extend(redactor.push(&stream.as_bytes()[split..]));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "split at {split}"
            );
        }
    }

    #[test]
    fn bytes_of_a_stream_without_run_objects_pass_unchanged() {
        let stream = b"event: thread.message.delta\ndata: {\"delta\":1}\n\n: comment\n\n";
        let mut redactor = RunObjectRedactor::default();
        assert_eq!(redactor.push(stream), stream.to_vec());
    }
}

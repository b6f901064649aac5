//! Parsing of `[stub:...]` directives embedded in a user message.
//!
//! Pure functions only: [`parse`] takes the raw message text and returns the
//! behaviour it asks for plus the message with every recognised directive
//! removed. Unknown directive names and unusable values are removed from the
//! text and otherwise ignored; text that does not form a closed directive is
//! left as it is. The full list of directives is documented in the crate root (`lib.rs`).

use serde_json::Value;

/// Upper bound for `[stub:slow=MS]` (two minutes).
const MAX_SLOW_MS: u64 = 120_000;
/// Upper bound for `[stub:rounds=N]`.
const MAX_ROUNDS: u32 = 100;

/// One function call asked for by `[stub:tool_calls=...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallSpec {
    /// Function name.
    pub name: String,
    /// Arguments as the JSON *string* the model would produce.
    pub arguments: String,
}

/// How the stream that carries the text answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Normal completion.
    #[default]
    Complete,
    /// `[stub:fail]`
    Fail,
    /// `[stub:cancel]`
    Cancel,
    /// `[stub:expire]`
    Expire,
    /// `[stub:incomplete]`
    Incomplete,
    /// `[stub:error_event]`
    ErrorEvent,
    /// `[stub:cut]`
    Cut,
}

/// Everything a message asks of the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The message with all directives removed, trimmed.
    pub text: String,
    /// Function calls to request (empty: answer with text).
    pub tool_calls: Vec<ToolCallSpec>,
    /// Number of tool-call rounds (>= 1); only meaningful with `tool_calls`.
    pub rounds: u32,
    /// How the answering stream ends.
    pub outcome: Outcome,
    /// Pause between two events, in milliseconds.
    pub slow_ms: u64,
    /// Go silent after this many events.
    pub hang_after: Option<usize>,
    /// Write every event in two pieces cut mid-line.
    pub split: bool,
    /// Use CRLF line ends in the event stream.
    pub crlf: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            text: String::new(),
            tool_calls: Vec::new(),
            rounds: 1,
            outcome: Outcome::Complete,
            slow_ms: 0,
            hang_after: None,
            split: false,
            crlf: false,
        }
    }
}

const OPEN: &str = "[stub:";

/// Parse every `[stub:...]` directive out of `message`.
pub fn parse(message: &str) -> Directives {
    let mut d = Directives::default();
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find(OPEN) {
        text.push_str(&rest[..pos]);
        let after = &rest[pos + OPEN.len()..];
        match parse_one(after, &mut d) {
            Some(consumed) => rest = &after[consumed..],
            None => {
                // Not a closed directive: keep the opening text and go on.
                text.push_str(OPEN);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    d.text = text.trim().to_string();
    d
}

/// Parse one directive body (the text after `[stub:`), apply it to `d` and
/// return how many bytes it used including the closing `]`.
fn parse_one(after: &str, d: &mut Directives) -> Option<usize> {
    let name_len = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    let name = &after[..name_len];
    if name.is_empty() {
        return None;
    }
    let tail = &after[name_len..];
    if tail.starts_with(']') {
        apply_flag(name, d);
        return Some(name_len + 1);
    }
    let value_src = tail.strip_prefix('=')?;
    let value_start = name_len + 1;
    if name == "tool_calls" {
        if let Some((calls, used)) = parse_tool_calls(value_src) {
            d.tool_calls = calls;
            return Some(value_start + used);
        }
    }
    // Plain value: up to the first `]`.
    let end = value_src.find(']')?;
    apply_value(name, value_src[..end].trim(), d);
    Some(value_start + end + 1)
}

fn apply_flag(name: &str, d: &mut Directives) {
    match name {
        "fail" => d.outcome = Outcome::Fail,
        "cancel" => d.outcome = Outcome::Cancel,
        "expire" => d.outcome = Outcome::Expire,
        "incomplete" => d.outcome = Outcome::Incomplete,
        "error_event" => d.outcome = Outcome::ErrorEvent,
        "cut" => d.outcome = Outcome::Cut,
        "crlf" => d.crlf = true,
        "split" => d.split = true,
        _ => {}
    }
}

fn apply_value(name: &str, value: &str, d: &mut Directives) {
    match name {
        "slow" => {
            if let Ok(ms) = value.parse::<u64>() {
                d.slow_ms = ms.min(MAX_SLOW_MS);
            }
        }
        "hang_after" => {
            if let Ok(n) = value.parse::<usize>() {
                d.hang_after = Some(n);
            }
        }
        "rounds" => {
            if let Ok(n) = value.parse::<u32>() {
                d.rounds = n.clamp(1, MAX_ROUNDS);
            }
        }
        "chunking" => d.split = value == "split",
        _ => {}
    }
}

/// Parse the JSON array of a `tool_calls` directive at the start of `src`
/// and the `]` closing the directive. Returns the calls and the bytes used.
fn parse_tool_calls(src: &str) -> Option<(Vec<ToolCallSpec>, usize)> {
    let mut stream = serde_json::Deserializer::from_str(src).into_iter::<Value>();
    let value = stream.next()?.ok()?;
    let json_end = stream.byte_offset();
    let after_json = &src[json_end..];
    let ws = after_json.len() - after_json.trim_start().len();
    if !after_json[ws..].starts_with(']') {
        return None;
    }
    let items = value.as_array()?;
    let calls = items.iter().filter_map(tool_call_from_value).collect();
    Some((calls, json_end + ws + 1))
}

fn tool_call_from_value(v: &Value) -> Option<ToolCallSpec> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    if name.is_empty() {
        return None;
    }
    let arguments = match obj.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        // Be lenient: an object (or anything else) is sent as its JSON text.
        Some(other) => other.to_string(),
    };
    Some(ToolCallSpec { name, arguments })
}

/// Split `text` into word deltas: the first word, then every following word
/// with the spaces before it. Concatenating the pieces gives `text` back.
pub fn word_deltas(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut prev_space = false;
    for ch in text.chars() {
        if ch == ' ' && !prev_space && !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        prev_space = ch == ' ';
        current.push(ch);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Split a tool-call arguments string into pieces of at most `size` chars
/// (never splitting a character). An empty string gives no pieces.
pub fn argument_pieces(arguments: &str, size: usize) -> Vec<String> {
    let size = size.max(1);
    let chars: Vec<char> = arguments.chars().collect();
    chars
        .chunks(size)
        .map(|c| c.iter().collect::<String>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_message_has_no_directives() {
        let d = parse("  hello there ");
        assert_eq!(
            d,
            Directives {
                text: "hello there".into(),
                ..Directives::default()
            }
        );
    }

    #[test]
    fn flags_and_values() {
        let d = parse("hi [stub:slow=25] [stub:crlf][stub:chunking=split] [stub:hang_after=3]");
        assert_eq!(d.text, "hi");
        assert_eq!(d.slow_ms, 25);
        assert!(d.crlf);
        assert!(d.split);
        assert_eq!(d.hang_after, Some(3));
        assert_eq!(d.outcome, Outcome::Complete);
    }

    #[test]
    fn outcomes_last_wins() {
        assert_eq!(parse("[stub:fail]").outcome, Outcome::Fail);
        assert_eq!(parse("[stub:cancel]").outcome, Outcome::Cancel);
        assert_eq!(parse("[stub:expire]").outcome, Outcome::Expire);
        assert_eq!(parse("[stub:incomplete]").outcome, Outcome::Incomplete);
        assert_eq!(parse("[stub:error_event]").outcome, Outcome::ErrorEvent);
        assert_eq!(parse("[stub:cut]").outcome, Outcome::Cut);
        assert_eq!(parse("[stub:fail] [stub:cut]").outcome, Outcome::Cut);
    }

    #[test]
    fn tool_calls_with_nested_brackets_and_escaped_json() {
        let msg = r#"mail me [stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ann\",\"email\":\"ann@example.com\",\"message\":\"hi ]] [x]\"}"}]] please"#;
        let d = parse(msg);
        assert_eq!(d.text, "mail me  please");
        assert_eq!(
            d.tool_calls,
            vec![ToolCallSpec {
                name: "sendEmail".into(),
                arguments: r#"{"name":"Ann","email":"ann@example.com","message":"hi ]] [x]"}"#
                    .into(),
            }]
        );
        assert_eq!(d.rounds, 1);
    }

    #[test]
    fn tool_calls_lenient_arguments_and_rounds() {
        let d = parse(
            r#"[stub:tool_calls=[{"name":"a","arguments":{"x":1}},{"name":"b"},{"arguments":"{}"}]][stub:rounds=3]"#,
        );
        assert_eq!(d.text, "");
        assert_eq!(d.tool_calls.len(), 2);
        assert_eq!(d.tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(d.tool_calls[1].arguments, "{}");
        assert_eq!(d.rounds, 3);
        assert_eq!(parse("[stub:rounds=0]").rounds, 1);
    }

    #[test]
    fn tool_calls_with_spaces_around_json() {
        let d = parse(r#"[stub:tool_calls= [{"name":"f","arguments":"{}"}] ]"#);
        assert_eq!(d.tool_calls.len(), 1);
        assert_eq!(d.text, "");
    }

    #[test]
    fn invalid_tool_calls_json_is_ignored() {
        let d = parse(r#"x [stub:tool_calls=[{"name":]] y"#);
        assert!(d.tool_calls.is_empty());
        // The directive ends at the first `]`; the rest stays text.
        assert_eq!(d.text, "x ] y");
    }

    #[test]
    fn unclosed_or_malformed_directives_stay_text() {
        assert_eq!(parse("a [stub:fail").text, "a [stub:fail");
        assert_eq!(parse("a [stub:]").text, "a [stub:]");
        assert_eq!(parse("a [stub:slow 5]").text, "a [stub:slow 5]");
        let d = parse("a [stub:slow=abc] [stub:whatever] b");
        assert_eq!(d.text, "a   b");
        assert_eq!(d.slow_ms, 0);
    }

    #[test]
    fn unicode_is_safe() {
        let d = parse("héllo [stub:fail] wörld ✓");
        assert_eq!(d.text, "héllo  wörld ✓");
        assert_eq!(d.outcome, Outcome::Fail);
    }

    #[test]
    fn word_deltas_roundtrip() {
        assert_eq!(word_deltas("You said: hi"), vec!["You", " said:", " hi"]);
        assert_eq!(word_deltas("a  b "), vec!["a", "  b", " "]);
        assert!(word_deltas("").is_empty());
        let t = "  lead ing and trailing  ";
        assert_eq!(word_deltas(t).concat(), t);
    }

    #[test]
    fn argument_pieces_split_on_chars() {
        assert_eq!(argument_pieces("abcdefg", 3), vec!["abc", "def", "g"]);
        assert!(argument_pieces("", 3).is_empty());
        assert_eq!(argument_pieces("é✓x", 2).concat(), "é✓x");
    }
}

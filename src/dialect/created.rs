//! The conversation object the upstream created, answered to the widget with the
//! conversation's handle in place of the upstream id (`id` and `thread_id` both the handle).
//!
//! The answer is the upstream object's own text, compacted, with those two members set: no
//! tree of values is built and printed again. The result is the text `serde_json` prints for
//! the same edit on a parsed `Value` (members in their order, `thread_id` last when new);
//! where the two could differ (a repeated key in any object, a number with a fraction or an exponent, a
//! `\u` or `\/` escape, which `serde_json` would print its own way) [`Created::parse`] says
//! `None` and the caller takes the `Value` path.

use serde::de::IgnoredAny;
use std::ops::Range;

/// The members of the upstream's JSON object, as spans of its text.
pub struct Created<'a> {
    text: &'a [u8],
    /// Each member: its key (without quotes, escapes as they are) and its value.
    members: Vec<(Range<usize>, Range<usize>)>,
}

impl<'a> Created<'a> {
    /// `text` if it is one JSON object that the fast path prints exactly as `serde_json`
    /// would (see the module's doc).
    pub fn parse(text: &'a [u8]) -> Option<Created<'a>> {
        serde_json::from_slice::<IgnoredAny>(text).ok()?;
        let mut scan = Scan { text, at: 0 };
        scan.skip_ws();
        let members = scan.object()?;
        Some(Created { text, members })
    }

    /// The value of member `name` if it is a string (the fast path has no escapes to decode
    /// but `\"` and `\\`, which no valid id has: those are left to the caller's check).
    pub fn str(&self, name: &str) -> Option<&'a str> {
        let (_, value) = self
            .members
            .iter()
            .find(|(k, _)| self.key(k) == name.as_bytes())?;
        let raw = &self.text[value.clone()];
        let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        std::str::from_utf8(inner).ok()
    }

    fn key(&self, key: &Range<usize>) -> &'a [u8] {
        &self.text[key.clone()]
    }

    /// The object, compact, with `id` and `thread_id` set to `handle` (`thread_id` added last
    /// when the upstream had none).
    pub fn with_handle(&self, handle: &str) -> Vec<u8> {
        let quoted = serde_json::to_string(handle).expect("a string serializes");
        let mut out = Vec::with_capacity(self.text.len() + 2 * quoted.len() + 16);
        out.push(b'{');
        let mut has_thread_id = false;
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let name = self.key(key);
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
            has_thread_id |= name == b"thread_id";
            if name == b"id" || name == b"thread_id" {
                out.extend_from_slice(quoted.as_bytes());
            } else {
                compact(&self.text[value.clone()], &mut out);
            }
        }
        if !has_thread_id {
            if !self.members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"thread_id\":");
            out.extend_from_slice(quoted.as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// `value` (valid JSON) without the whitespace between its tokens.
fn compact(value: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in value {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
}

/// A cursor over JSON text already known to be valid.
struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string, quotes included; `None` for an escape `serde_json` would print otherwise.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(start..self.at),
                b'\\' => match self.next()? {
                    b'u' | b'/' => return None,
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// An object's members (keys without their quotes); `None` for a repeated key (which
    /// `serde_json` would fold into one) or where the fast path does not apply.
    fn object(&mut self) -> Option<Vec<(Range<usize>, Range<usize>)>> {
        self.expect(b'{')?;
        let mut members: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(8);
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(members);
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            let key = key.start + 1..key.end - 1;
            let name = &self.text[key.clone()];
            if members.iter().any(|(k, _)| &self.text[k.clone()] == name) {
                return None;
            }
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            members.push((key, value));
            self.skip_ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(members),
                _ => return None,
            }
        }
    }

    /// One value of any kind; `None` where the fast path does not apply. (Nesting is
    /// bounded: `serde_json` refused text nested deeper than its recursion limit.)
    fn value(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' => {
                self.object()?;
            }
            b'[' => {
                self.at += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.at += 1;
                } else {
                    loop {
                        self.skip_ws();
                        self.value()?;
                        self.skip_ws();
                        match self.next()? {
                            b',' => continue,
                            b']' => break,
                            _ => return None,
                        }
                    }
                }
            }
            _ => {
                while let Some(b) = self.peek() {
                    match b {
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' => break,
                        b'.' | b'e' | b'E' if self.after_digit() => return None,
                        _ => self.at += 1,
                    }
                }
            }
        }
        Some(start..self.at)
    }

    /// Whether the byte before the cursor is a digit (so `.`, `e` or `E` is in a number).
    fn after_digit(&self) -> bool {
        self.at > 0 && self.text[self.at - 1].is_ascii_digit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the `Value` path prints for the same edit.
    fn by_value(text: &str, handle: &str) -> String {
        let mut v: Value = serde_json::from_str(text).unwrap();
        v["id"] = Value::String(handle.into());
        v["thread_id"] = Value::String(handle.into());
        v.to_string()
    }

    #[test]
    fn the_answer_is_what_the_value_path_prints() {
        for text in [
            r#"{"id":"thread_abc","object":"thread","created_at":1699012949,"metadata":{},"tool_resources":{}}"#,
            "{\n  \"id\": \"thread_abc\",\n  \"object\": \"thread\",\n  \"metadata\": {\"a\": [1, 2, {\"b\": null}], \"q\": \"say \\\"hi\\\" \\\\ there\"},\n  \"ok\": true\n}",
            r#"{"object":"conversation","id":"conv_1","thread_id":"old","n":-3}"#,
            r#"{"id":"thread_x","s":"a,b}c]d{e[f: g"}"#,
            r#"{"id":"thread_x","t":"é ✓"}"#,
            r#"{"id":"c","metadata":{"tenant":"t","k":{"k":[[],{},[{"k":"k"}]]}},"e":[]}"#,
        ] {
            let created = Created::parse(text.as_bytes()).expect(text);
            let out = created.with_handle("thread_abc.TOKEN");
            assert_eq!(String::from_utf8(out).unwrap(), by_value(text, "thread_abc.TOKEN"));
        }
        let empty = Created::parse(b"{}").unwrap();
        assert_eq!(empty.with_handle("h"), br#"{"thread_id":"h"}"#);
    }

    #[test]
    fn the_id_is_read_as_a_string_only() {
        let created = Created::parse(br#"{"id":"thread_abc","n":1}"#).unwrap();
        assert_eq!(created.str("id"), Some("thread_abc"));
        assert_eq!(created.str("n"), None);
        assert_eq!(created.str("missing"), None);
        let numeric = Created::parse(br#"{"id":12}"#).unwrap();
        assert_eq!(numeric.str("id"), None);
    }

    #[test]
    fn text_the_value_path_would_print_otherwise_is_left_to_it() {
        for text in [
            r#"{"id":"a","id":"b"}"#,
            r#"{"id":"a","x":1.5}"#,
            r#"{"id":"a","x":[1e3]}"#,
            r#"{"id":"a","x":"\u00e9"}"#,
            r#"{"id":"a","x":"a\/b"}"#,
            r#"{"id":"a","m":{"k":1,"k":2}}"#,
            r#"{"id":"a","m":[{"k":1},{"k":[{"z":0,"z":0}]}]}"#,
            r#"{"i\u0064":"a"}"#,
            r#"["id"]"#,
            r#"{"id":"a"} trailing"#,
            r#"{"id":"a""#,
            "",
        ] {
            assert!(Created::parse(text.as_bytes()).is_none(), "{text}");
        }
        // Not numbers: letters inside strings and literals.
        assert!(Created::parse(br#"{"id":"1.5e3","ok":true,"no":false}"#).is_some());
    }
}

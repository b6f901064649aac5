//! `.env` files read the way the old NestJS service read them (Node's `dotenv`).
//!
//! The compatibility contract is the `.env` files already deployed, and those hold unquoted
//! JSON arrays such as `DOMAINS=["a.com","b.com"]`. Node's `dotenv` keeps such a value as it
//! is; shell-like parsers (the `dotenvy` crate) strip the inner quotes and break it. So the
//! rules here are Node's, whose line pattern is
//! `NAME (= | ": ") ( '...' | "..." | `...` | [^#\r\n]+ )? blanks (#comment)?`:
//! - optional `export `; `#` comment lines and blank lines;
//! - a quoted value may span lines and hold escaped quotes (`\'`); it ends at the last quote
//!   that is followed by nothing but blanks or a comment on its line;
//! - otherwise (also when a quote never closes that way) the value is the rest of the line up
//!   to a `#`; either way it is trimmed and loses one pair of surrounding quotes;
//! - in double quotes `\n` and `\r` become line breaks; no variable expansion;
//! - a line Node cannot read is skipped (here: and its number reported, never its content).

/// What a `.env` text holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dotenv {
    /// The variables, in order (a later line wins over an earlier one when merged).
    pub vars: Vec<(String, String)>,
    /// 1-based numbers of the lines that are not `NAME=value` and were skipped.
    pub skipped_lines: Vec<usize>,
}

/// Parse a `.env` text.
pub fn parse(text: &str) -> Dotenv {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Dotenv::default();
    let mut i = 0;
    while i < lines.len() {
        let number = i + 1;
        let line = lines[i];
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = split_assignment(trimmed) else {
            out.skipped_lines.push(number);
            continue;
        };
        let start = value.trim_start();
        let quoted = start
            .chars()
            .next()
            .filter(|c| matches!(c, '\'' | '"' | '`'))
            .and_then(|q| {
                // The closing quote may be on a later line.
                let mut body = start[1..].to_string();
                let mut used = 0;
                loop {
                    if let Some(end) = closing_quote(&body, q) {
                        return Some((format!("{q}{}{q}", &body[..end]), used));
                    }
                    if has_unescaped(&body, q) {
                        return None;
                    }
                    let next = lines.get(i + used)?;
                    body.push('\n');
                    body.push_str(next);
                    used += 1;
                }
            });
        let raw = match quoted {
            Some((raw, used)) => {
                i += used;
                raw
            }
            None => value.split('#').next().unwrap_or_default().to_string(),
        };
        out.vars.push((name.to_string(), unquote(raw.trim())));
    }
    out
}

/// `NAME=value` or `NAME: value` (with `export ` before), as name and the text after the sign.
fn split_assignment(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    if name.is_empty() {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    if let Some(value) = rest.strip_prefix('=') {
        return Some((name, value));
    }
    let value = rest.strip_prefix(':')?;
    value.starts_with([' ', '\t']).then_some((name, value))
}

/// Where the quote closing a quoted value is in `body` (the text after the opening quote):
/// of the quotes the value may end at (any escaped one, and the first unescaped one), the
/// last followed by nothing but blanks or a comment on its line. As Node's greedy pattern.
fn closing_quote(body: &str, quote: char) -> Option<usize> {
    let mut best = None;
    let mut after_backslash = false;
    for (at, c) in body.char_indices() {
        if c == quote {
            let rest_of_line = body[at + 1..].split('\n').next().unwrap_or_default();
            let rest = rest_of_line.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                best = Some(at);
            }
            if !after_backslash {
                break;
            }
        }
        after_backslash = c == '\\';
    }
    best
}

/// Whether `body` holds a quote not preceded by a backslash (the value cannot go past it).
fn has_unescaped(body: &str, quote: char) -> bool {
    let mut after_backslash = false;
    body.chars().any(|c| {
        let found = c == quote && !after_backslash;
        after_backslash = c == '\\';
        found
    })
}

/// Drop one pair of surrounding quotes; in double quotes, `\n` and `\r` become line breaks.
fn unquote(value: &str) -> String {
    let mut chars = value.chars();
    let (first, last) = (chars.next(), chars.next_back());
    match (first, last) {
        (Some(q @ ('\'' | '"' | '`')), Some(l)) if q == l => {
            let inner = &value[1..value.len() - 1];
            if q == '"' {
                inner.replace("\\n", "\n").replace("\\r", "\r")
            } else {
                inner.to_string()
            }
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text).vars
    }

    fn one(text: &str) -> String {
        vars(text).remove(0).1
    }

    #[test]
    fn unquoted_json_arrays_keep_their_quotes_as_node_dotenv_does() {
        assert_eq!(
            one("DOMAINS=[\"a.example\",\"b.example\"]\n"),
            "[\"a.example\",\"b.example\"]"
        );
        assert_eq!(one("DOMAINS = [\"a.example\"]  \r\n"), "[\"a.example\"]");
    }

    #[test]
    fn quoted_values_lose_their_quotes() {
        assert_eq!(one("DOMAINS='[\"a.example\"]'"), "[\"a.example\"]");
        assert_eq!(one("A=\"x y\" # comment"), "x y");
        assert_eq!(one("A=`x`"), "x");
        assert_eq!(one("A=\"line\\nbreak\""), "line\nbreak");
        assert_eq!(one("A='line\\nstays'"), "line\\nstays");
    }

    #[test]
    fn a_backslash_before_the_closing_quote_is_kept() {
        assert_eq!(
            vars("A='C:\\dir\\'\nNEXT=1"),
            [
                ("A".to_string(), "C:\\dir\\".to_string()),
                ("NEXT".into(), "1".into())
            ]
        );
        assert_eq!(one("A='it\\'s'"), "it\\'s");
    }

    #[test]
    fn a_quote_that_does_not_end_the_value_makes_it_unquoted() {
        // Node: the quoted form fails, the plain form takes the line, one pair of
        // surrounding quotes goes.
        assert_eq!(one("A='it''s'"), "it''s");
        assert_eq!(one("A='x' y # note"), "'x' y");
        assert_eq!(
            vars("KEY=\"unterminated\\\"\nB=2\n"),
            [
                ("KEY".to_string(), "unterminated\\".to_string()),
                ("B".into(), "2".into())
            ]
        );
    }

    #[test]
    fn quoted_values_may_span_lines() {
        assert_eq!(
            vars("A=\"first\nsecond\"\nB=2\n"),
            [
                ("A".to_string(), "first\nsecond".to_string()),
                ("B".into(), "2".into())
            ]
        );
    }

    #[test]
    fn comments_blank_lines_export_and_colons_are_understood() {
        assert_eq!(
            vars("# settings\n\nexport PORT=3000\nSMTP_HOST=mail.example # the relay\nX: 1\n"),
            [
                ("PORT".to_string(), "3000".to_string()),
                ("SMTP_HOST".into(), "mail.example".into()),
                ("X".into(), "1".into())
            ]
        );
        assert_eq!(one("EMPTY="), "");
    }

    #[test]
    fn lines_that_are_not_assignments_are_skipped_and_numbered() {
        let parsed = parse("A=1\nnot a variable\n=3\nB=2\n");
        assert_eq!(
            parsed.vars,
            [("A".to_string(), "1".to_string()), ("B".into(), "2".into())]
        );
        assert_eq!(parsed.skipped_lines, [2, 3]);
    }
}

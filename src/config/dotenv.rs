//! `.env` files read the way the old NestJS service read them (Node's `dotenv`).
//!
//! The compatibility contract is the `.env` files already deployed, and those hold unquoted
//! JSON arrays such as `DOMAINS=["a.com","b.com"]`. Node's `dotenv` keeps such a value as it
//! is; shell-like parsers (the `dotenvy` crate) strip the inner quotes and break it. So the
//! rules here are Node's: `NAME=value` per line, optional `export `, `#` comment lines; a
//! value in single, double or back quotes may span lines and loses its quotes (in double
//! quotes `\n` and `\r` become line breaks); an unquoted value ends at a `#` and is trimmed.
//! No variable expansion.

/// A line that is not `NAME=value` (or a quoted value that never closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    /// 1-based line number.
    pub line: usize,
    /// The variable the line names, when it looks like it names one.
    pub name: Option<String>,
}

/// The variables of a `.env` text, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut vars = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let line = lines[i].trim_end_matches('\r');
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let error = |name: Option<&str>| DotenvError {
            line: start + 1,
            name: name.map(str::to_string),
        };
        let Some((name, value)) = body.split_once('=') else {
            return Err(error(None));
        };
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_name {
            return Err(error(None));
        }
        let value = value.trim_start();
        let quote = value
            .chars()
            .next()
            .filter(|c| matches!(c, '\'' | '"' | '`'));
        let value = match quote {
            None => value
                .split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            Some(q) => {
                // The closing quote may be on a later line.
                let mut text = value[1..].to_string();
                loop {
                    if let Some(end) = closing_quote(&text, q) {
                        text.truncate(end);
                        break;
                    }
                    let Some(next) = lines.get(i) else {
                        return Err(error(Some(name)));
                    };
                    text.push('\n');
                    text.push_str(next.trim_end_matches('\r'));
                    i += 1;
                }
                if q == '"' {
                    text = text.replace("\\n", "\n").replace("\\r", "\r");
                }
                text
            }
        };
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

/// Where the unescaped `quote` closing a quoted value is in `text`, if it is there.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == quote && !escaped => return Some(at),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap()
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
        assert_eq!(one("A='it''s'"), "it");
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
    fn comments_blank_lines_and_export_are_understood() {
        assert_eq!(
            vars("# settings\n\nexport PORT=3000\nSMTP_HOST=mail.example # the relay\n"),
            [
                ("PORT".to_string(), "3000".to_string()),
                ("SMTP_HOST".into(), "mail.example".into())
            ]
        );
        assert_eq!(one("EMPTY="), "");
    }

    #[test]
    fn malformed_lines_are_reported_by_number() {
        assert_eq!(
            parse("A=1\nnot a variable\n"),
            Err(DotenvError {
                line: 2,
                name: None
            })
        );
        assert_eq!(
            parse("A=1\n\nKEY=\"unterminated\\\"\n"),
            Err(DotenvError {
                line: 3,
                name: Some("KEY".into())
            })
        );
    }
}

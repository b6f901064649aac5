//! A lead: the visitor's name, e-mail address and message that the assistant passes to the
//! lead tool, checked before anything is stored or sent, and the e-mail that carries it.
//!
//! Everything here is pure: [`parse`] turns the model's raw `arguments` string into a
//! [`Lead`] or the list of [`Problem`]s to tell the assistant, and [`email`] builds the
//! message for the tenant. Header safety does not rest on validation alone: [`email`] also
//! flattens control characters in the header fields it writes, because leads replayed from
//! the journal on disk did not pass through [`parse`] in this process.

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Address, Message};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest e-mail address accepted, in characters (the SMTP limit on a path).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest message accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 5000;

/// A validated lead: `name` and `email` are single-line and trimmed, `email` parses as an
/// address, `message` has `\n` line ends and no control characters but `\n` and `\t`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lead {
    pub name: String,
    pub email: String,
    pub message: String,
}

/// Why the arguments were refused, in terms the assistant can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The arguments are not a JSON object.
    NotAnObject,
    /// A field is absent, `null` or blank.
    Missing(Field),
    /// A field is not a JSON string.
    NotText(Field),
    /// A field is longer than its limit (in characters).
    TooLong(Field, usize),
    /// The name holds a line break or another control character.
    NameNotOneLine,
    /// The e-mail address does not parse as an address.
    BadEmail,
}

/// The three fields of the lead tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Email,
    Message,
}

impl Field {
    /// The JSON key of the field.
    pub fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Email => "email",
            Field::Message => "message",
        }
    }

    /// The field in words.
    pub fn words(self) -> &'static str {
        match self {
            Field::Name => "the name",
            Field::Email => "the e-mail address",
            Field::Message => "the message",
        }
    }
}

/// Parses and validates the raw `arguments` of a lead-tool call.
pub fn parse(arguments: &str) -> Result<Lead, Vec<Problem>> {
    let object = match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => object,
        _ => return Err(vec![Problem::NotAnObject]),
    };
    let mut problems = Vec::new();
    let name = text(&object, Field::Name, MAX_NAME_CHARS, &mut problems);
    let email = text(&object, Field::Email, MAX_EMAIL_CHARS, &mut problems);
    let message = text(&object, Field::Message, MAX_MESSAGE_CHARS, &mut problems);

    if let Some(name) = &name {
        if name.chars().any(char::is_control) {
            problems.push(Problem::NameNotOneLine);
        }
    }
    if let Some(email) = &email {
        if email.chars().any(|c| c.is_control() || c.is_whitespace())
            || email.parse::<Address>().is_err()
        {
            problems.push(Problem::BadEmail);
        }
    }
    match (name, email, message) {
        (Some(name), Some(email), Some(message)) if problems.is_empty() => Ok(Lead {
            name,
            email,
            message,
        }),
        _ => Err(problems),
    }
}

/// One string field, trimmed; the message also gets its line ends and control characters
/// cleaned before its length is checked. Records a problem and returns `None` when unusable.
fn text(
    object: &Map<String, Value>,
    field: Field,
    max_chars: usize,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let raw = match object.get(field.key()) {
        None | Some(Value::Null) => {
            problems.push(Problem::Missing(field));
            return None;
        }
        Some(Value::String(raw)) => raw,
        Some(_) => {
            problems.push(Problem::NotText(field));
            return None;
        }
    };
    let value = match field {
        Field::Message => clean_message(raw),
        Field::Name | Field::Email => raw.trim().to_string(),
    };
    if value.is_empty() {
        problems.push(Problem::Missing(field));
        None
    } else if value.chars().count() > max_chars {
        problems.push(Problem::TooLong(field, max_chars));
        None
    } else {
        Some(value)
    }
}

/// `\r\n` and `\r` become `\n`; control characters other than `\n` and `\t` are dropped.
fn clean_message(raw: &str) -> String {
    raw.replace("\r\n", "\n")
        .replace('\r', "\n")
        .chars()
        .filter(|&c| c == '\n' || c == '\t' || !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

/// Control characters (line breaks included) replaced by spaces: for header fields.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Which lead an e-mail carries and where it came from: the id makes the Message-ID, the
/// site and conversation make the footer.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The lead's id: the e-mail's Message-ID is `<{id}@{domain of From}>`, the same on
    /// every attempt, so a copy sent again after a crash can be recognised.
    pub lead_id: &'a str,
    /// The calling website's origin.
    pub site: &'a str,
    /// The conversation (`thread_...` or `conv_...`).
    pub conversation: &'a str,
}

/// The e-mail for the tenant: From `from`, To every recipient, Reply-To the visitor,
/// Subject `New message from {name} - {email}`, a Message-ID made from the lead id, a
/// plain-text body of the message with the site and conversation in a footer. Fails
/// (saying what to fix) when a recipient or the visitor's address is not an address, or
/// there are no recipients.
pub fn email(
    lead: &Lead,
    from: &Mailbox,
    recipients: &[String],
    context: Context<'_>,
) -> Result<Message, String> {
    if recipients.is_empty() {
        let advice = "set lead_recipients in its configuration (the lead stays in the journal)";
        return Err(format!("the tenant has no lead recipients: {advice}"));
    }
    let name = one_line(&lead.name);
    let address: Address = lead.email.trim().parse().map_err(|e| {
        format!("the visitor's e-mail address does not parse ({e}); the lead stays in the journal")
    })?;
    let reply_to = Mailbox::new((!name.is_empty()).then(|| name.clone()), address);

    let mut builder = Message::builder()
        .from(from.clone())
        .reply_to(reply_to)
        .subject(format!("New message from {name} - {}", lead.email.trim()))
        .message_id(Some(format!(
            "<{}@{}>",
            one_line(context.lead_id),
            from.email.domain()
        )))
        .header(ContentType::TEXT_PLAIN);
    for recipient in recipients {
        let mailbox: Mailbox = recipient.parse().map_err(|e| {
            format!(
                "lead recipient \"{recipient}\" is not an e-mail address ({e}): \
                 fix lead_recipients in the tenant's configuration"
            )
        })?;
        builder = builder.to(mailbox);
    }
    let body = format!(
        "{}\n\n-- \nSent by the chatbot on {}\nConversation: {}",
        lead.message,
        one_line(context.site),
        one_line(context.conversation),
    );
    builder
        .body(body)
        .map_err(|e| format!("the lead e-mail could not be built: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(name: &str, email: &str, message: &str) -> Lead {
        Lead {
            name: name.into(),
            email: email.into(),
            message: message.into(),
        }
    }

    fn from() -> Mailbox {
        "AI Bot <bot@example.com>".parse().unwrap()
    }

    const CONTEXT: Context<'static> = Context {
        lead_id: "lead_1767225600123_5f0c2a9e41b7d380",
        site: "https://www.example.com",
        conversation: "thread_abc123",
    };

    fn formatted(message: &Message) -> String {
        String::from_utf8(message.formatted()).unwrap()
    }

    /// The header block, one entry per header (continuation lines unfolded).
    fn headers(message: &Message) -> Vec<String> {
        let text = formatted(message);
        let head = text.split("\r\n\r\n").next().unwrap();
        let mut headers: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                headers.last_mut().unwrap().push_str(line);
            } else {
                headers.push(line.to_string());
            }
        }
        headers
    }

    fn header_names(message: &Message) -> Vec<String> {
        headers(message)
            .iter()
            .map(|h| h.split(':').next().unwrap().to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn good_arguments_make_a_lead() {
        let lead = parse(
            r#"{"name":" Ada Lovelace ","email":"ada@example.net","message":"Call me.\r\nThanks"}"#,
        )
        .unwrap();
        assert_eq!(lead.name, "Ada Lovelace");
        assert_eq!(lead.email, "ada@example.net");
        assert_eq!(lead.message, "Call me.\nThanks");
    }

    #[test]
    fn extra_fields_are_ignored() {
        assert!(parse(r#"{"name":"A","email":"a@b.co","message":"m","phone":"123"}"#).is_ok());
    }

    #[test]
    fn arguments_that_are_not_a_json_object_are_refused() {
        for arguments in ["", "not json", "[1,2]", "\"text\"", "{\"name\":"] {
            assert_eq!(
                parse(arguments),
                Err(vec![Problem::NotAnObject]),
                "{arguments}"
            );
        }
    }

    #[test]
    fn missing_blank_and_null_fields_are_each_reported() {
        let problems = parse(r#"{"name":"  ","message":null}"#).unwrap_err();
        assert_eq!(
            problems,
            vec![
                Problem::Missing(Field::Name),
                Problem::Missing(Field::Email),
                Problem::Missing(Field::Message),
            ]
        );
    }

    #[test]
    fn fields_must_be_text() {
        let problems = parse(r#"{"name":42,"email":"a@b.co","message":["hi"]}"#).unwrap_err();
        assert_eq!(
            problems,
            vec![
                Problem::NotText(Field::Name),
                Problem::NotText(Field::Message)
            ]
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for email in [
            "ada",
            "ada@",
            "@example.net",
            "ada lovelace@example.net",
            "a@b\r\nBcc: x@y.z",
        ] {
            let arguments = serde_json::json!({"name": "Ada", "email": email, "message": "hi"});
            assert_eq!(
                parse(&arguments.to_string()),
                Err(vec![Problem::BadEmail]),
                "{email:?}"
            );
        }
    }

    #[test]
    fn names_with_line_breaks_are_refused() {
        let arguments = serde_json::json!({
            "name": "Eve\r\nBcc: victim@example.org", "email": "eve@example.net", "message": "hi"
        });
        assert_eq!(
            parse(&arguments.to_string()),
            Err(vec![Problem::NameNotOneLine])
        );
    }

    #[test]
    fn limits_are_counted_in_characters() {
        // "ada@" + four 60-letter labels + a last label + ".com": 254 or 255 characters.
        let address = |last_label: &str| {
            format!("ada@{}.{last_label}.com", vec!["x".repeat(60); 4].join("."))
        };
        assert_eq!(address("ab").len(), MAX_EMAIL_CHARS);
        let at_limit = serde_json::json!({
            "name": "é".repeat(MAX_NAME_CHARS),
            "email": address("ab"),
            "message": "ü".repeat(MAX_MESSAGE_CHARS),
        });
        assert!(parse(&at_limit.to_string()).is_ok());

        let over = serde_json::json!({
            "name": "é".repeat(MAX_NAME_CHARS + 1),
            "email": address("abc"),
            "message": "ü".repeat(MAX_MESSAGE_CHARS + 1),
        });
        assert_eq!(
            parse(&over.to_string()).unwrap_err(),
            vec![
                Problem::TooLong(Field::Name, 200),
                Problem::TooLong(Field::Email, 254),
                Problem::TooLong(Field::Message, 5000),
            ]
        );
    }

    #[test]
    fn message_control_characters_are_dropped() {
        let arguments =
            serde_json::json!({"name": "A", "email": "a@b.co", "message": "a\u{0}b\tc\rd"});
        assert_eq!(parse(&arguments.to_string()).unwrap().message, "ab\tc\nd");
    }

    #[test]
    fn the_email_has_the_exact_subject_reply_to_recipients_and_footer() {
        let recipients = vec![
            "sales@example.com".to_string(),
            "Boss <boss@example.com>".to_string(),
        ];
        let message = email(
            &lead("Ada Lovelace", "ada@example.net", "Please call me."),
            &from(),
            &recipients,
            CONTEXT,
        )
        .unwrap();
        let headers = headers(&message);
        assert!(
            headers
                .contains(&"Subject: New message from Ada Lovelace - ada@example.net".to_string()),
            "{headers:?}"
        );
        assert!(
            headers.contains(&"Reply-To: \"Ada Lovelace\" <ada@example.net>".to_string()),
            "{headers:?}"
        );
        assert!(
            headers.contains(&"From: \"AI Bot\" <bot@example.com>".to_string()),
            "{headers:?}"
        );
        assert!(
            headers.contains(&"To: sales@example.com, Boss <boss@example.com>".to_string()),
            "{headers:?}"
        );
        assert!(
            headers.contains(
                &"Message-ID: <lead_1767225600123_5f0c2a9e41b7d380@example.com>".to_string()
            ),
            "{headers:?}"
        );

        let envelope = message.envelope();
        assert_eq!(envelope.from().unwrap().to_string(), "bot@example.com");
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["sales@example.com", "boss@example.com"]);

        let text = formatted(&message);
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            body,
            "Please call me.\r\n\r\n-- \r\nSent by the chatbot on https://www.example.com\r\n\
             Conversation: thread_abc123"
        );
    }

    #[test]
    fn line_breaks_in_header_fields_cannot_add_headers() {
        // A lead replayed from disk never went through `parse`: the e-mail must still be safe.
        let evil = lead(
            "Eve\r\nBcc: victim@example.org\r\nX-Injected: 1",
            "eve@example.net",
            "hi\r\n.\r\nMAIL FROM:<x@y.z>",
        );
        let message = email(&evil, &from(), &["sales@example.com".into()], CONTEXT).unwrap();
        let names = header_names(&message);
        assert!(!names.contains(&"bcc".to_string()), "{names:?}");
        assert!(!names.contains(&"x-injected".to_string()), "{names:?}");
        for name in ["subject", "reply-to", "from", "to"] {
            assert_eq!(
                names.iter().filter(|n| *n == name).count(),
                1,
                "{name} in {names:?}"
            );
        }
        let to: Vec<String> = message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(to, ["sales@example.com"]);
    }

    #[test]
    fn a_lead_without_recipients_or_with_a_bad_recipient_cannot_be_built() {
        let ada = lead("Ada", "ada@example.net", "hi");
        let err = email(&ada, &from(), &[], CONTEXT).unwrap_err();
        assert!(err.contains("set lead_recipients"), "{err}");
        let err = email(&ada, &from(), &["not an address".into()], CONTEXT).unwrap_err();
        assert!(err.contains("fix lead_recipients"), "{err}");
    }
}

//! The tool output: one sentence per outcome of a lead-tool call, written for the assistant
//! to relay to the visitor or to act on (ask again, apologise). All wording lives here.

use super::lead::Problem;

/// The e-mail reached the tenant's mail server.
pub fn sent(email: &str) -> String {
    format!("The message was sent to the team. They will reply to {email}.")
}

/// The lead is in the journal on disk; it is (or will be, once SMTP is configured) e-mailed
/// in the background.
pub fn queued(email: &str) -> String {
    format!(
        "The message was saved and queued for delivery; the team will receive it shortly \
         and reply to {email}."
    )
}

/// The journal could not be written and the immediate attempt did not succeed: the lead
/// lives only in memory until it is delivered.
pub fn not_saved(email: &str) -> String {
    format!(
        "The message was accepted and will be e-mailed to the team as soon as possible, but \
         it could not be saved because of a server problem. If the visitor does not hear \
         back, ask them to contact the team directly. Replies go to {email}."
    )
}

/// The conversation already sent as many lead e-mails as allowed.
pub fn conversation_cap(limit: u32) -> String {
    format!(
        "The message was not sent: this conversation has already sent the most messages \
         allowed ({limit}). Tell the visitor the team has their earlier message and will be \
         in touch; do not call the tool again in this conversation."
    )
}

/// The lead is saved, but the tenant's e-mails of this hour are all sent: it goes out in a
/// later hour.
pub fn deferred(email: &str) -> String {
    format!(
        "The message was saved and will be delivered to the team later: this website has \
         received many messages in the last hour, so it goes out within the next hours. The \
         team will reply to {email}."
    )
}

/// The visitor's address already left as many leads today as allowed.
pub fn address_cap(limit: u32) -> String {
    let messages = if limit == 1 { "message" } else { "messages" };
    format!(
        "The message was not sent: this visitor already sent {limit} {messages} today, the \
         most allowed. Tell the visitor the team has their earlier messages and will be in \
         touch; do not call the tool again today."
    )
}

/// The arguments were refused; `tool` is the name of the lead tool, to call again.
pub fn invalid(problems: &[Problem], tool: &str) -> String {
    if problems.contains(&Problem::NotAnObject) {
        return format!(
            "The message was not sent: the arguments were not a JSON object with the fields \
             \"name\", \"email\" and \"message\". Call {tool} again with those three fields."
        );
    }
    let listed: Vec<String> = problems.iter().map(describe).collect();
    format!(
        "The message was not sent: {}. Ask the visitor for the missing or corrected details, \
         then call {tool} again.",
        listed.join("; ")
    )
}

fn describe(problem: &Problem) -> String {
    match problem {
        Problem::NotAnObject => "the arguments were not a JSON object".to_string(),
        Problem::Missing(field) => format!("{} is missing", field.words()),
        Problem::NotText(field) => format!("{} (\"{}\") must be text", field.words(), field.key()),
        Problem::TooLong(field, max) => {
            format!("{} is longer than {max} characters", field.words())
        }
        Problem::NameNotOneLine => {
            "the name must be a single line without control characters".to_string()
        }
        Problem::BadEmail => {
            "the e-mail address is not valid (expected e.g. name@example.com)".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leads::lead::{Field, MAX_MESSAGE_CHARS};

    #[test]
    fn problems_are_listed_in_one_sentence_with_the_tool_name() {
        let text = invalid(
            &[Problem::Missing(Field::Name), Problem::BadEmail],
            "sendEmail",
        );
        assert_eq!(
            text,
            "The message was not sent: the name is missing; the e-mail address is not valid \
             (expected e.g. name@example.com). Ask the visitor for the missing or corrected \
             details, then call sendEmail again."
        );
    }

    #[test]
    fn arguments_that_are_not_json_ask_for_the_three_fields() {
        let text = invalid(&[Problem::NotAnObject], "sendEmail");
        assert!(
            text.contains("\"name\", \"email\" and \"message\""),
            "{text}"
        );
        assert!(
            text.ends_with("Call sendEmail again with those three fields."),
            "{text}"
        );
    }

    #[test]
    fn limits_are_stated() {
        let text = invalid(&[Problem::TooLong(Field::Message, MAX_MESSAGE_CHARS)], "t");
        assert!(
            text.contains("the message is longer than 5000 characters"),
            "{text}"
        );
    }
}

//! Widget-v1 events that are ready at the same moment, merged into the writes the old widget
//! reads correctly.
//!
//! The widget takes each `read()` of the body as one `data: <json>` event and silently drops
//! a read holding two, so the relay never writes two events at once. What the widget shows
//! is the text it accumulated (deltas appended, a completed message replacing it), or, while
//! there is no text yet, the last other event's label. Hence, for the events of one moment:
//! - consecutive text deltas become one delta carrying their texts (and annotations) joined;
//! - a completed message supersedes the deltas right before it, and is written on its own:
//!   what follows it goes in a later write (it carries the full final text, which must never
//!   be lost to a merged read);
//! - every other event (run created, requires action, run completed, a delta of another
//!   shape) is written as it is, on its own.
//!
//! Pure: events in stream order in, one event per write out.

use serde_json::Value;

/// What an event does to what the widget shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A delta of plain text: appended.
    Delta,
    /// The completed message: replaces the text.
    Completed,
    /// Any other event, written as it is.
    Other,
}

fn kind(event: &Value) -> Kind {
    match event.get("event").and_then(Value::as_str) {
        Some("thread.message.delta") if delta_text(event).is_some() => Kind::Delta,
        Some("thread.message.completed") => Kind::Completed,
        _ => Kind::Other,
    }
}

/// The `text` object of a delta holding exactly one text part (what the widget reads).
fn delta_text(event: &Value) -> Option<&Value> {
    let parts = event.pointer("/delta/content")?.as_array()?;
    let [part] = parts.as_slice() else {
        return None;
    };
    let text = part.get("text")?;
    text.get("value")?.as_str()?;
    Some(text)
}

/// Appends `later`'s text (and annotations) to the plain-text delta `into`.
fn append_delta(into: &mut Value, later: &Value) {
    let Some(later) = delta_text(later) else {
        return;
    };
    let Some(text) = into.pointer_mut("/delta/content/0/text") else {
        return;
    };
    let joined = format!(
        "{}{}",
        text["value"].as_str().unwrap_or_default(),
        later["value"].as_str().unwrap_or_default()
    );
    text["value"] = Value::String(joined);
    let more = later
        .get("annotations")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    if let (Some(more), Some(text)) = (more, text.as_object_mut()) {
        let list = text
            .entry("annotations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            list.extend(more.iter().cloned());
        } else {
            *list = Value::Array(more.clone());
        }
    }
}

/// Whether `event` carries the answer's full text (a completed message): it must never be
/// read together with another event.
pub fn is_full_text(event: &Value) -> bool {
    kind(event) == Kind::Completed
}

/// `events` (all ready now, in stream order) as the fewest writes that leave the widget
/// showing what the events one by one would: each element is one event, to be written on
/// its own (see the module documentation for the rules).
pub fn coalesce(events: Vec<Value>) -> Vec<Value> {
    let mut writes = Vec::new();
    // The deltas of the write being built, merged.
    let mut text: Option<Value> = None;
    for event in events {
        match (kind(&event), &mut text) {
            (Kind::Delta, Some(merged)) => append_delta(merged, &event),
            (Kind::Delta, None) => text = Some(event),
            // Supersedes the deltas before it.
            (Kind::Completed, _) => {
                text = None;
                writes.push(event);
            }
            (Kind::Other, _) => {
                writes.extend(text.take());
                writes.push(event);
            }
        }
    }
    writes.extend(text);
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created() -> Value {
        json!({"event": "thread.run.created", "status": "queued"})
    }
    fn requires_action() -> Value {
        json!({"event": "thread.run.requires_action", "status": "requires_action"})
    }
    fn run_completed() -> Value {
        json!({"event": "thread.run.completed", "status": "completed"})
    }
    fn delta(text: &str) -> Value {
        json!({"event": "thread.message.delta",
               "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]}})
    }
    fn completed(text: &str) -> Value {
        json!({"event": "thread.message.completed", "status": "completed",
               "content": [{"type": "text", "text": {"value": text, "annotations": []}}]})
    }

    /// What the old widget shows after it read `reads`, one event each, as its parser does
    /// it: (text, shown as an error). A read that is not exactly one event is dropped.
    fn widget_shows(reads: &[String]) -> (String, bool) {
        let mut text = String::new();
        let mut shown = ("Thinking ...".to_string(), false);
        for read in reads {
            let Some(data) = read.strip_prefix("data: ") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let name = event["event"].as_str().unwrap_or("no-response");
            let label = match name {
                "thread.message.delta" => event["delta"]["content"][0]["text"]["value"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                "thread.message.completed" => event["content"][0]["text"]["value"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                "thread.run.created" => "Processing ...".into(),
                "thread.run.requires_action" => "Performing thread action ...".into(),
                "system.error" => event["content"].as_str().unwrap().to_string(),
                other => other.to_string(),
            };
            match name {
                "thread.message.delta" => text.push_str(&label),
                "thread.message.completed" => text = label,
                _ if text.is_empty() => {
                    shown = (label, name == "system.error");
                    continue;
                }
                _ => {}
            }
            if name == "system.error" {
                shown = (text.clone(), true);
            } else if !text.is_empty() {
                shown = (text.clone(), false);
            }
        }
        shown
    }

    fn frames(events: &[Value]) -> Vec<String> {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    }

    /// The writes for `events`, after asserting the widget shows the same from them as
    /// from the events one by one.
    fn checked(events: Vec<Value>) -> Vec<Value> {
        let one_by_one = widget_shows(&frames(&events));
        let writes = coalesce(events);
        assert_eq!(widget_shows(&frames(&writes)), one_by_one, "{writes:#?}");
        writes
    }

    #[test]
    fn consecutive_deltas_become_one() {
        let writes = checked(vec![created(), delta("You"), delta(" said:"), delta(" hi")]);
        assert_eq!(writes, [created(), delta("You said: hi")]);
    }

    #[test]
    fn the_completed_message_supersedes_deltas_and_is_written_alone() {
        let writes = checked(vec![
            created(),
            delta("You"),
            delta(" said"),
            completed("You said"),
            run_completed(),
        ]);
        assert_eq!(writes, [created(), completed("You said"), run_completed()]);
        let writes = checked(vec![completed("One"), delta("Two"), completed("Two")]);
        assert_eq!(writes, [completed("One"), completed("Two")]);
        let writes = checked(vec![completed("One"), delta("Two"), delta(" more")]);
        assert_eq!(writes, [completed("One"), delta("Two more")]);
    }

    #[test]
    fn other_events_are_written_as_they_are() {
        assert_eq!(
            checked(vec![created(), requires_action()]),
            [created(), requires_action()]
        );
        assert_eq!(
            checked(vec![
                delta("Let me"),
                delta(" check"),
                requires_action(),
                delta("Done")
            ]),
            [delta("Let me check"), requires_action(), delta("Done")]
        );
        assert_eq!(checked(vec![]), Vec::<Value>::new());
    }

    #[test]
    fn deltas_keep_their_first_shape_and_join_annotations() {
        let first = json!({"event": "thread.message.delta", "delta": {"content": [
            {"index": 0, "type": "text", "text": {"value": "See ", "annotations": []}}]}});
        let cited = json!({"event": "thread.message.delta", "delta": {"content": [
            {"index": 0, "type": "text", "text": {"value": "the file【4:0†a.pdf】",
             "annotations": [{"type": "file_citation", "text": "【4:0†a.pdf】"}]}}]}});
        let writes = coalesce(vec![first, cited]);
        assert_eq!(
            writes,
            [
                json!({"event": "thread.message.delta", "delta": {"content": [
                {"index": 0, "type": "text", "text": {"value": "See the file【4:0†a.pdf】",
                 "annotations": [{"type": "file_citation", "text": "【4:0†a.pdf】"}]}}]}})
            ]
        );
    }

    #[test]
    fn a_delta_of_another_shape_is_written_on_its_own() {
        let image = json!({"event": "thread.message.delta", "delta": {"content": [
            {"index": 0, "type": "image_file", "image_file": {"file_id": "file_1"}}]}});
        let writes = coalesce(vec![delta("a"), image.clone(), delta("b"), delta("c")]);
        assert_eq!(writes, [delta("a"), image.clone(), delta("bc")]);
        let writes = coalesce(vec![image.clone(), completed("x")]);
        assert_eq!(writes, [image, completed("x")]);
    }

    #[test]
    fn every_split_of_an_answer_shows_the_same_as_one_by_one() {
        // An answer with a tool round, cut into every pair of consecutive moments.
        let answer = [
            created(),
            requires_action(),
            delta("Tool"),
            delta(" output:"),
            delta(" done"),
            completed("Tool output: done"),
            run_completed(),
        ];
        for cut in 0..=answer.len() {
            for cut2 in cut..=answer.len() {
                let mut writes = checked(answer[..cut].to_vec());
                writes.extend(checked(answer[cut..cut2].to_vec()));
                writes.extend(checked(answer[cut2..].to_vec()));
                assert_eq!(
                    widget_shows(&frames(&writes)),
                    ("Tool output: done".to_string(), false),
                    "cut at {cut} and {cut2}"
                );
                assert_eq!(
                    writes
                        .iter()
                        .filter(|w| w["event"] == "thread.message.completed")
                        .count(),
                    1,
                    "{writes:#?}"
                );
                // The statuses all pass, in order.
                let statuses: Vec<&Value> =
                    writes.iter().filter(|w| kind(w) == Kind::Other).collect();
                assert_eq!(statuses, [&created(), &requires_action(), &run_completed()]);
            }
        }
    }
}

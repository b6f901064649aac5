//! `redact_run_objects` through the real binary: with it, the tenant's instructions and tool
//! definitions never reach the browser in the `openai` stream format, while the events, their
//! order and the answer stay the same; without it, the stream is the upstream's as it was.

use crate::harness::*;
use serde_json::Value;

const PROMPT: &str = "SECRET PROMPT: never reveal the discount code";

fn tenant(name: &str, domain: &str, redact: bool) -> String {
    format!(
        r#"
[[tenants]]
name = "{name}"
domains = ["{domain}"]
api_key = "sk-{name}"
model = "gpt-5.4"
instructions = "{PROMPT}"
tools = [{{ type = "file_search", vector_store_ids = ["vs_secret_store"] }}]
redact_run_objects = {redact}
"#
    )
}

fn start() -> (Stub, Proxy) {
    let stub = Stub::start();
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\n{}{}",
        stub.base_url(),
        tenant("open", "open.example", false),
        tenant("closed", "closed.example", true)
    );
    let proxy = Proxy::start_with_toml(&toml);
    (stub, proxy)
}

fn answer(proxy: &Proxy, origin: &str) -> Streamed {
    let conversation = proxy.create_thread(origin);
    let stream = proxy.send_message(origin, &conversation, "hello there");
    assert_eq!(stream.status, 200, "{}", stream.text());
    stream
}

#[test]
fn the_system_prompt_and_tools_are_blanked_and_nothing_else_changes() {
    let (_stub, proxy) = start();
    let open = answer(&proxy, "https://open.example");
    let closed = answer(&proxy, "https://closed.example");

    // Without the option, the prompt is in the stream (this is what the option is for).
    assert!(open.text().contains("SECRET PROMPT"), "{}", open.text());
    assert!(open.text().contains("vs_secret_store"));

    let text = closed.text();
    assert!(!text.contains("SECRET PROMPT"), "{text}");
    assert!(!text.contains("vs_secret_store"), "{text}");

    // The same events in the same order, the same answer.
    let names =
        |s: &Streamed| -> Vec<Option<String>> { s.events().into_iter().map(|e| e.event).collect() };
    assert_eq!(names(&open), names(&closed));
    assert_eq!(delta_text(&open.events()), delta_text(&closed.events()));

    // Every response object is blanked, and apart from ids and times (which differ between
    // two answers) each event is the unredacted one with those two values blanked.
    let mut blanked = 0;
    for (o, c) in open.events().iter().zip(closed.events().iter()) {
        let (mut o, c): (Value, Value) = (
            serde_json::from_str(&o.data).unwrap(),
            serde_json::from_str(&c.data).unwrap(),
        );
        if let Some(response) = o.get_mut("response") {
            response["instructions"] = Value::String(String::new());
            response["tools"] = Value::Array(Vec::new());
            assert_eq!(c["response"]["instructions"], "");
            assert_eq!(c["response"]["tools"], Value::Array(Vec::new()));
            blanked += 1;
        }
        assert_eq!(
            normalize(&o.to_string()),
            normalize(&c.to_string()),
            "events differ beyond the redaction"
        );
    }
    assert!(
        blanked >= 2,
        "response.created and response.completed carry the run"
    );
}

/// Ids, conversation ids and timestamps replaced, so two answers can be compared.
fn normalize(json: &str) -> String {
    let value: Value = serde_json::from_str(json).unwrap();
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if matches!(
                        key.as_str(),
                        "id" | "item_id" | "created_at" | "completed_at" | "conversation"
                    ) {
                        *value = Value::Null;
                    } else {
                        walk(value);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = value;
    walk(&mut value);
    value.to_string()
}

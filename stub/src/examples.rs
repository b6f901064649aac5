//! Test support: the reference wire examples (`tests/fixtures/openai-wire/` at the workspace
//! root, one copy shared with the proxy's tests), read for comparison with what the stub writes.

use serde_json::Value;

const WIRE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/openai-wire");

/// (event name, data) pairs of an example file, `...` lines skipped. A missing file fails the
/// test: the comparison must never be skipped silently.
pub fn example(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{WIRE_DIR}/{file}"))
        .unwrap_or_else(|e| panic!("reading the wire example {file}: {e}"));
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = Some(n.to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((name.take().unwrap_or_default(), d.to_string()));
        }
    }
    out
}

/// Every object key with its nesting depth (objects and arrays each count as a level), in
/// document order. The inside of a tool's `parameters` schema is left out: the examples use a
/// real schema, the stub an empty one.
pub fn keys_in_order(raw: &str) -> Vec<(usize, String)> {
    let value: Value =
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
    let mut out = Vec::new();
    walk(&value, 1, &mut out);
    out
}

fn walk(value: &Value, depth: usize, out: &mut Vec<(usize, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                out.push((depth, key.clone()));
                if key != "parameters" {
                    walk(child, depth + 1, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| walk(item, depth + 1, out)),
        _ => {}
    }
}

#[test]
fn keys_come_in_document_order_with_their_depth() {
    assert_eq!(
        keys_in_order(r#"{"b":1,"a":{"c":[{"e":1}],"parameters":{"x":1}},"d":"x\":"}"#),
        [
            (1, "b".to_string()),
            (1, "a".into()),
            (2, "c".into()),
            (4, "e".into()),
            (2, "parameters".into()),
            (1, "d".into())
        ]
    );
}

//! `relay/openapi.yaml` against the server: the same operations on both sides, and each
//! operation's example request answered with the documented status and a body that has
//! the documented required properties.

mod api_support;

use std::collections::BTreeSet;

use api_support::{FakeApi, authorized};
use relay::http::Operation;
use serde_json::Value;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn document() -> Value {
    let text = include_str!("../openapi.yaml");
    serde_yaml_ng::from_str(text).expect("openapi.yaml parses")
}

/// `#/components/...` references resolved, once or through a chain.
fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("local references only");
        node = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} resolves"));
    }
    node
}

/// The document's operations: (method, path, operation object).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

#[test]
fn the_document_and_the_server_have_the_same_operations() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.0."));
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = Operation::ALL
        .iter()
        .map(|op| (op.method().to_string(), op.path().to_owned()))
        .collect();
    assert_eq!(documented, served);

    // The running router: each documented method of each documented path is routed, and
    // any other method there is 405 (the router serves nothing the table does not name).
    let api = FakeApi::start();
    let example = |name: &str| {
        resolve(&doc, &doc["components"]["parameters"][name])["example"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for path in doc["paths"].as_object().unwrap().keys() {
        let concrete = ["room", "endpoint", "track"]
            .iter()
            .fold(path.clone(), |p, name| {
                p.replace(&format!("{{{name}}}"), &example(name))
            });
        for method in METHODS {
            let body = matches!(method, "POST" | "PUT" | "PATCH").then_some("{}");
            let answer = authorized(&api, method, &concrete, body);
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert_ne!(answer.status, 405, "{method} {path}");
                assert!(
                    answer.status != 404 || answer.json["field"].is_string(),
                    "{method} {path} is not routed: {}",
                    answer.json
                );
            } else {
                assert_eq!(answer.status, 405, "{method} {path}: {}", answer.json);
            }
        }
    }
}

/// Each operation in [`Operation::ALL`]'s order (which creates what the next ones need),
/// with the document's example parameters and body.
#[test]
fn examples_get_the_documented_answers() {
    let doc = document();
    let api = FakeApi::start();
    let documented = operations(&doc);
    for op in Operation::ALL {
        let method = op.method().to_string();
        let (_, path, operation) = documented
            .iter()
            .find(|(m, p, _)| *m == method && p == op.path())
            .unwrap_or_else(|| panic!("{op:?} is documented"));
        let item = &doc["paths"][path.as_str()];
        let mut concrete = path.clone();
        for parameter in item["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(&doc, parameter);
            let name = parameter["name"].as_str().unwrap();
            concrete = concrete.replace(
                &format!("{{{name}}}"),
                parameter["example"].as_str().unwrap(),
            );
        }
        assert!(
            !concrete.contains('{'),
            "{path}: every parameter has an example"
        );
        let body = operation
            .pointer("/requestBody/content/application~1json/example")
            .map(Value::to_string);
        let responses = operation["responses"].as_object().unwrap();
        let success: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
        let [status] = success.as_slice() else {
            panic!("{method} {path}: one success status, not {success:?}")
        };
        let answer = authorized(&api, &method, &concrete, body.as_deref());
        let what = format!("{method} {concrete}: {}", answer.json);
        assert_eq!(answer.status.to_string(), **status, "{what}");
        assert_eq!(answer.status, op.status(), "{what}");
        let schema =
            resolve(&doc, &responses[status.as_str()]).pointer("/content/application~1json/schema");
        match schema {
            Some(schema) => check(&doc, schema, &answer.json, &what),
            None => assert_eq!(answer.json, Value::Null, "{what}: no body documented"),
        }
        // Errors are ApiErrors as documented, too.
        for status in responses.keys().filter(|s| !s.starts_with('2')) {
            let error = resolve(&doc, &responses[status.as_str()]);
            let schema = error
                .pointer("/content/application~1json/schema")
                .unwrap_or_else(|| panic!("{what}: {status} has a body"));
            assert_eq!(
                schema["$ref"], "#/components/schemas/ApiError",
                "{what}: {status}"
            );
        }
    }
}

/// A light check of `value` against `schema`: types, required properties, array items,
/// enums, recursively; `nullable` and `allOf` understood.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if value.is_null() {
        assert!(schema["nullable"] == true, "{at}: null where not nullable");
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, part, value, at);
    }
    if let Some(options) = schema["enum"].as_array() {
        assert!(options.contains(value), "{at}: {value} not in {options:?}");
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object"));
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                assert!(object.contains_key(name), "{at}: no {name}");
            }
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                if let Some(field) = object.get(name) {
                    check(doc, property, field, &format!("{at}.{name}"));
                }
            }
        }
        Some("array") => {
            for (i, item) in value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array"))
                .iter()
                .enumerate()
            {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => assert!(value.is_string(), "{at}: {value} is not a string"),
        Some("integer") => assert!(
            value.is_u64() || value.is_i64(),
            "{at}: {value} is not an integer"
        ),
        Some("boolean") => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        _ => {}
    }
}

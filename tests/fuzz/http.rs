//! The HTTP API's JSON bodies and query strings, through the same parse and
//! check functions the handlers call.

use claro::node::inputs::{
    hotfolder_definition, job_query, script_addition, setting_write, submission, token_request,
    transfer_target,
};
use claro::state::Command;
use claro::web::access::Role;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::harness::{mutate, random_bytes, run, text, Bytes, Rng};

/// A JSON value of random shape, at most `depth` deep.
fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => json!(rng.gen::<f64>() * 1e300),
        4 => json!(text(rng)),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let fields = (0..rng.gen_range(0..4)).map(|_| (text(rng), value(rng, depth - 1)));
            Value::Object(fields.collect())
        }
    }
}

/// A body close to what an endpoint takes: its fields, each sometimes of
/// another type, sometimes missing, sometimes joined by an unknown one.
fn body_like(rng: &mut Rng, fields: &[(&str, Value)]) -> Value {
    let mut object = serde_json::Map::new();
    for (name, good) in fields {
        match rng.gen_range(0..6) {
            0 => {}
            1 => {
                object.insert(name.to_string(), value(rng, 2));
            }
            _ => {
                object.insert(name.to_string(), good.clone());
            }
        }
    }
    if rng.gen_bool(0.1) {
        object.insert(text(rng), value(rng, 1));
    }
    Value::Object(object)
}

/// Script code: random text, or nesting deeper than the engine allows.
fn code(rng: &mut Rng) -> String {
    const OPEN: [(&str, &str); 5] = [
        ("(", ")"),
        ("[", "]"),
        ("{", "}"),
        ("-", ""),
        ("if true {", "}"),
    ];
    if rng.gen() {
        return text(rng);
    }
    let (open, close) = OPEN[rng.gen_range(0..OPEN.len())];
    let depth = rng.gen_range(1..20_000);
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// The good fields of each endpoint's body, with random values of their
/// own type.
fn endpoint_fields(rng: &mut Rng, endpoint: u32) -> Vec<(&'static str, Value)> {
    match endpoint {
        0 => vec![
            ("script", json!(code(rng))),
            ("stored", json!(text(rng))),
            ("args", json!([text(rng), text(rng)])),
            ("priority", json!(rng.gen::<i32>())),
            ("max_attempts", json!(rng.gen::<u32>())),
            ("timeout_s", json!(rng.gen::<u64>())),
        ],
        1 => vec![("name", json!(text(rng)))],
        2 => vec![("name", json!(text(rng))), ("code", json!(code(rng)))],
        3 => vec![("value", json!(text(rng)))],
        4 => vec![("name", json!(text(rng))), ("role", json!("operator"))],
        _ => vec![
            ("name", json!(text(rng))),
            (
                "action",
                json!({"command": {"argv": [text(rng), "{input}"]}}),
            ),
            ("include", json!([text(rng)])),
            ("stable_ms", json!(rng.gen::<u64>())),
            ("priority", json!(rng.gen::<i32>())),
            ("on_success", json!(text(rng))),
        ],
    }
}

/// Body bytes for `endpoint`: a near-valid body, mutated JSON, deeply
/// nested JSON, or random bytes.
fn body(rng: &mut Rng, endpoint: u32) -> Bytes {
    let fields = endpoint_fields(rng, endpoint);
    let good = body_like(rng, &fields).to_string().into_bytes();
    Bytes(match rng.gen_range(0..6) {
        0 => random_bytes(rng, 64),
        1 => mutate(rng, &good),
        2 => {
            let depth = rng.gen_range(1..10_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        _ => good,
    })
}

/// Feeds a body to the endpoint's parser; what it accepts must be valid.
fn check_body(endpoint: u32, body: &[u8]) {
    match endpoint {
        0 => {
            for role in [Role::Viewer, Role::Operator, Role::Admin] {
                if let Ok((specs, _)) = submission(role, body) {
                    assert!(!specs.is_empty(), "an accepted submission has a job");
                    let jobs: Vec<(String, _)> = specs
                        .into_iter()
                        .enumerate()
                        .map(|(i, spec)| {
                            spec.validate().expect("an accepted submission is valid");
                            (format!("0123456789abcdef{i:04x}"), spec)
                        })
                        .collect();
                    Command::JobsSubmit { jobs, at_ms: 1 }
                        .validate()
                        .expect("an accepted batch is valid");
                }
            }
        }
        1 => {
            let _ = transfer_target(body);
        }
        2 => {
            if let Ok((_, command)) = script_addition(body, 1) {
                command.validate().expect("an accepted script is valid");
            }
        }
        3 => {
            if let Ok(command) = setting_write("k%2Fe%ffy+%", body) {
                command.validate().expect("an accepted setting is valid");
            }
        }
        4 => {
            let _ = token_request(body);
        }
        _ => {
            if let Ok(def) = hotfolder_definition(body) {
                def.validate().expect("an accepted hotfolder is valid");
            }
        }
    }
}

#[test]
fn http_bodies() {
    run(
        "http_bodies",
        12_000,
        |rng| {
            let endpoint = rng.gen_range(0..6);
            (endpoint, body(rng, endpoint))
        },
        |(endpoint, body)| check_body(*endpoint, &body.0),
    );
}

/// `GET jobs?QUERY`: parameters in any order, repeated, percent-encoded
/// (invalid UTF-8 and cut-off escapes too), unknown.
#[test]
fn job_queries() {
    const KEYS: [&str; 8] = [
        "state",
        "kind",
        "instance",
        "hotfolder",
        "before",
        "limit",
        "x",
        "",
    ];
    const VALUES: [&str; 8] = ["queued", "script", "500", "501", "0", "%", "%f", "%ff%fe"];
    run(
        "job_queries",
        30_000,
        |rng| {
            let pairs = (0..rng.gen_range(0..5)).map(|_| {
                let k = KEYS[rng.gen_range(0..KEYS.len())];
                let v = if rng.gen() {
                    VALUES[rng.gen_range(0..VALUES.len())].to_string()
                } else {
                    text(rng)
                };
                format!("{k}={v}")
            });
            pairs.collect::<Vec<_>>().join("&")
        },
        |query| {
            if let Ok((_, limit)) = job_query(query) {
                assert!((1..=claro::node::inputs::JOBS_PAGE_MAX).contains(&limit));
            }
        },
    );
}

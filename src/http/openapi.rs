//! Completes the generated OpenAPI document with what the route annotations do not say: the
//! problem responses every operation can give, from one catalogue ([`PROBLEMS`]), so a client
//! generated from the document knows every status and every stable `type` it may see.
//!
//! The rules follow the layers, not each handler: every operation can time out (408), fail
//! (500) or be shed (503); an API-key operation can be refused (401); a path with an id can
//! name nothing (404); a JSON body can be malformed (400), too large (413), of the wrong media
//! type (415) or invalid (422); a query can be malformed (400); an `Idempotency-Key` can be in
//! use (409) or reused (422).

use serde_json::{Map, Value, json};

use super::error::PROBLEM_TYPE_PREFIX;

/// Every problem `type` cause with its HTTP status: the catalogue the document, the README's
/// error table and the tests share.
pub const PROBLEMS: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("invalid_query", 400),
    ("unauthorized", 401),
    ("invalid_signature", 401),
    ("not_found", 404),
    ("unknown_route", 404),
    ("unknown_provider", 404),
    ("unknown_message", 404),
    ("receipts_disabled", 404),
    ("number_blocked", 403),
    ("sim_swap_recent", 403),
    ("wrong_scope", 403),
    ("method_not_allowed", 405),
    ("request_timeout", 408),
    ("verification_locked", 409),
    ("verification_aborted", 409),
    ("verification_already_approved", 409),
    ("send_limit_reached", 409),
    ("idempotency_key_in_use", 409),
    ("verification_expired", 410),
    ("payload_too_large", 413),
    ("unsupported_media_type", 415),
    ("invalid_request", 422),
    ("invalid_phone", 422),
    ("country_not_allowed", 422),
    ("premium_rate_number", 422),
    ("shared_cost_number", 422),
    ("voip_number", 422),
    ("fixed_line_number", 422),
    ("non_mobile_number", 422),
    ("customer_unknown", 422),
    ("customer_phone_missing", 422),
    ("gate_not_configured", 422),
    ("webhooks_not_configured", 422),
    ("invalid_code", 422),
    ("idempotency_key_reused", 422),
    ("sms_text_too_long", 422),
    ("resend_cooldown", 429),
    ("rate_limited", 429),
    ("prefix_blocked", 429),
    ("internal", 500),
    ("sms_delivery_failed", 502),
    ("customer_directory_unavailable", 503),
    ("overloaded", 503),
    ("service_unavailable", 503),
    ("sim_swap_unavailable", 503),
];

/// The causes the catalogue gives `status`.
pub fn causes(status: u16) -> Vec<&'static str> {
    PROBLEMS
        .iter()
        .filter(|(_, s)| *s == status)
        .map(|(cause, _)| *cause)
        .collect()
}

fn problem_schema() -> Value {
    let types: Vec<String> = PROBLEMS
        .iter()
        .map(|(cause, _)| format!("{PROBLEM_TYPE_PREFIX}{cause}"))
        .collect();
    json!({
        "type": "object",
        "description": "An RFC 9457 problem. `type` is `urn:orderguard:problem:<cause>`; the cause names are stable. Some causes add members: `field` (invalid_request), `attempts_remaining` (invalid_code), `resend_available_at` (resend_cooldown), `verification_id` and, for an order, `order_id` (sms_delivery_failed), `country` (country_not_allowed).",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "enum": types},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "field": {"type": "string"},
            "attempts_remaining": {"type": "integer", "minimum": 0},
            "resend_available_at": {"type": "string"},
            "verification_id": {"type": "string"},
            "order_id": {"type": "string"},
            "country": {"type": "string"}
        },
        "additionalProperties": true
    })
}

/// A problem response for `status`: its causes named in the description and the schema.
fn problem_response(status: u16, description: Option<&str>) -> Value {
    let types: Vec<String> = causes(status)
        .iter()
        .map(|cause| format!("{PROBLEM_TYPE_PREFIX}{cause}"))
        .collect();
    let listed: Vec<String> = causes(status).iter().map(|c| format!("`{c}`")).collect();
    let description = description
        .map(str::to_owned)
        .unwrap_or_else(|| format!("Problem: {}", listed.join(", ")));
    json!({
        "description": description,
        "content": {
            "application/problem+json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Problem"},
                        {"type": "object", "properties": {"type": {"type": "string", "enum": types}}}
                    ]
                }
            }
        }
    })
}

/// Links from the operations that create resources to those that act on them (OpenAPI 3.1
/// `links`), so clients and stateful testers can follow start → check, hold → read.
const LINKS: &[(&str, &str, &str, &[&str])] = &[
    (
        "/v1/verifications",
        "post",
        "201",
        &[
            "get_verification",
            "check_code",
            "resend_code",
            "cancel_verification",
        ],
    ),
    (
        "/v1/orders",
        "post",
        "202",
        &["get_order", "get_verification", "check_code"],
    ),
];

/// Adds the problem responses of the shared layers to every operation of `document`, the
/// links between operations, and the constraints the annotations cannot express.
pub fn complete(document: &mut Value) {
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("Problem".to_owned(), problem_schema());
        for name in ["StartVerification", "HoldOrder"] {
            if let Some(ip) = schemas
                .get_mut(name)
                .and_then(|schema| schema.pointer_mut("/properties/client_ip"))
            {
                *ip = json!({
                    "description": "The buyer's IP address (IPv4 or IPv6) as the shop saw it; only a keyed hash of it is kept.",
                    "anyOf": [
                        {"type": "string", "format": "ipv4"},
                        {"type": "string", "format": "ipv6"},
                        {"type": "null"}
                    ],
                    "example": "203.0.113.7"
                });
            }
        }
    }
    for (path, method, status, targets) in LINKS {
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        );
        if let Some(response) = document
            .pointer_mut(&pointer)
            .and_then(Value::as_object_mut)
        {
            let id = if *path == "/v1/orders" {
                // An order's own id for the order; its verification's for the verification.
                |target: &str| {
                    if target == "get_order" {
                        "$response.body#/id"
                    } else {
                        "$response.body#/verification_id"
                    }
                }
            } else {
                |_: &str| "$response.body#/id"
            };
            let links: Map<String, Value> = targets
                .iter()
                .map(|target| {
                    (
                        (*target).to_owned(),
                        json!({"operationId": target, "parameters": {"id": id(target)}}),
                    )
                })
                .collect();
            response.insert("links".to_owned(), Value::Object(links));
        }
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if let Some(operation) = operation.as_object_mut() {
                complete_operation(path, method, operation);
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let parameters: Vec<(String, String)> = operation
        .get("parameters")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["in"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body_types: Vec<String> = operation
        .get("requestBody")
        .and_then(|body| body.get("content"))
        .and_then(Value::as_object)
        .map(|content| content.keys().cloned().collect())
        .unwrap_or_default();
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let page = path.starts_with("/w/") || path.starts_with("/demo/");

    let mut statuses: Vec<u16> = vec![408, 500, 503];
    if secured {
        statuses.push(401);
    }
    if parameters.iter().any(|(_, place)| place == "path") {
        statuses.push(404);
    }
    if parameters.iter().any(|(_, place)| place == "query") && !page {
        statuses.push(400);
    }
    if !body_types.is_empty() {
        statuses.extend([413, 415, 422]);
        if body_types.iter().any(|t| t.contains("json")) {
            statuses.push(400);
        }
    }
    if parameters.iter().any(|(name, _)| name == "Idempotency-Key") {
        statuses.extend([409, 422]);
    }
    let _ = method;
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            if parameter["name"] == "Idempotency-Key" {
                parameter["schema"] = json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"});
            }
        }
    }
    let responses = operation
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    for status in statuses {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(status, None));
    }
    // Statuses the annotations list without a body are problems too (HTML pages keep theirs).
    for (status, response) in responses.iter_mut() {
        let Ok(code) = status.parse::<u16>() else {
            continue;
        };
        if code >= 400 && response.get("content").is_none() && !causes(code).is_empty() {
            let description = response["description"].as_str().map(str::to_owned);
            *response = problem_response(code, description.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_error_table_names_every_cause() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let table = readme
            .split("| status | `type` cause |")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("the README's error table");
        for (cause, status) in PROBLEMS {
            let row = table
                .lines()
                .find(|line| line.starts_with(&format!("| {status} |")))
                .unwrap_or_else(|| panic!("no row for {status}"));
            assert!(
                row.contains(&format!("`{cause}`")),
                "{cause} not in the {status} row"
            );
        }
    }

    #[test]
    fn every_cause_is_listed_once_with_a_client_or_server_error_status() {
        let mut seen = std::collections::BTreeSet::new();
        for (cause, status) in PROBLEMS {
            assert!(seen.insert(*cause), "{cause} twice");
            assert!((400..600).contains(status), "{cause}: {status}");
        }
    }
}

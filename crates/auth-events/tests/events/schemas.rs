//! What is published, checked against `docs/events/*.json`, with a validator
//! for the small part of JSON Schema those files use.

use std::path::Path;

use auth_core::{Clock, DomainEvent, EventKind, EventSink, SessionId, SystemClock};
use auth_events::InProcessBus;
use serde_json::{Value, json};

use super::user;

pub fn schema(kind: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../docs/events/{kind}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Errors of `value` against `schema` (type, const, enum, format, required,
/// properties, additionalProperties).
pub fn violations(schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        out.push(format!("{at}: {value} is not {expected}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {options:?}"));
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("array") => value.is_array(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return out;
    }
    match (schema.get("format").and_then(Value::as_str), value.as_str()) {
        (Some("uuid"), Some(s)) if uuid::Uuid::parse_str(s).is_err() => out.push(format!("{at}: {s} is not a uuid")),
        (Some("date-time"), Some(s))
            if time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_err() =>
        {
            out.push(format!("{at}: {s} is not an RFC 3339 date-time"))
        }
        _ => {}
    }
    if let Some(object) = value.as_object() {
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                out.push(format!("{at}: missing {name}"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, member) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => out.extend(violations(sub, member, &format!("{at}.{name}"))),
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    out.push(format!("{at}: unexpected member {name}"))
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn the_validator_catches_what_the_schemas_forbid() {
    let deleted = schema("user.deleted");
    let id = uuid::Uuid::new_v4().to_string();
    let good = json!({
        "specversion": "1.0", "id": id, "source": "gatehouse/auth-service", "type": "user.deleted",
        "time": "2026-11-27T10:00:00Z", "subject": id, "datacontenttype": "application/json",
        "data": {"user_id": id}
    });
    assert_eq!(violations(&deleted, &good, "$"), Vec::<String>::new());
    let mut with_pii = good.clone();
    with_pii["data"]["email"] = json!("alice@example.com");
    assert_eq!(violations(&deleted, &with_pii, "$").len(), 1);
    let mut bad = good.clone();
    bad["time"] = json!("yesterday");
    bad["type"] = json!("user.registered");
    bad.as_object_mut().unwrap().remove("subject");
    assert_eq!(violations(&deleted, &bad, "$").len(), 3);
}

#[tokio::test]
async fn every_event_published_on_the_bus_matches_its_schema() {
    let bus = InProcessBus::default();
    let mut received = bus.subscribe();
    let u = user();
    let now = SystemClock.now();
    let session = SessionId::new();
    let events = [
        DomainEvent::registered(&u, "password", now),
        DomainEvent::logged_in(u.id, session, now),
        DomainEvent::logged_out(u.id, session, now),
        DomainEvent::password_reset(u.id, now),
        DomainEvent::password_changed(u.id, now),
        DomainEvent::email_verified(u.id, now),
        DomainEvent::deleted(u.id, now),
        DomainEvent::roles_changed(u.id, &["admin".to_owned(), "user".to_owned()], 3, now),
        DomainEvent::disabled(u.id, 4, now),
        DomainEvent::enabled(u.id, now),
    ];
    let kinds: std::collections::BTreeSet<_> = events.iter().map(|e| e.kind.subject()).collect();
    for kind in EventKind::ALL {
        assert!(kinds.contains(kind.subject()), "{} is published but not checked here", kind.subject());
    }
    assert_eq!(bus.deliver(&events).await, events.len());
    for event in &events {
        let published = serde_json::to_value(received.recv().await.unwrap()).unwrap();
        let kind = event.kind.subject();
        assert_eq!(violations(&schema(kind), &published, "$"), Vec::<String>::new(), "{kind}: {published}");
    }
}

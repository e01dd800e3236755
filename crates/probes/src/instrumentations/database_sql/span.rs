//! A database CLIENT span per the OpenTelemetry database semantic conventions (stable since
//! semconv 1.33): named `{db.operation.name} {db.collection.name}`, with the query's text
//! sanitized, and an error with the driver's code when the database refused.

use std::borrow::Cow;

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::{ErrorCode, Operation, SqlEvent};
use super::query::{operation_and_collection, sanitize};
use super::SYSTEMS;

pub(super) fn span(e: SqlEvent, clock: &MonotonicClock) -> Span {
    let system = match usize::from(e.system).checked_sub(1).and_then(|i| SYSTEMS.get(i)) {
        Some(system) => system,
        None => "other_sql",
    };
    let mut attrs = Vec::with_capacity(7);
    attrs.push(KeyValue::new("db.system.name", system));
    let (operation, collection) = match e.op {
        Some(Operation::Begin) => (Some("BEGIN".to_string()), None),
        Some(Operation::Commit) => (Some("COMMIT".to_string()), None),
        Some(Operation::Rollback) => (Some("ROLLBACK".to_string()), None),
        _ => operation_and_collection(&e.query),
    };
    if !e.query.is_empty() {
        attrs.push(KeyValue::new("db.query.text", sanitize(&e.query)));
    }
    let name: Cow<'static, str> = match (&operation, &collection) {
        (Some(op), Some(collection)) => format!("{op} {collection}").into(),
        (Some(op), None) => op.clone().into(),
        _ => system.into(),
    };
    if let Some(op) = operation {
        attrs.push(KeyValue::new("db.operation.name", op));
    }
    if let Some(collection) = collection {
        attrs.push(KeyValue::new("db.collection.name", collection));
    }
    let status = if e.failed {
        let code = match e.code {
            Some(ErrorCode::Text(code)) => Some(code),
            Some(ErrorCode::Number(n)) => Some(n.to_string()),
            None => None,
        };
        match code {
            Some(code) => {
                attrs.push(KeyValue::new("db.response.status_code", code.clone()));
                attrs.push(KeyValue::new("error.type", code));
            }
            None => attrs.push(KeyValue::new("error.type", "_OTHER")),
        }
        Status::Error { message: String::new() }
    } else {
        Status::Unset
    };
    e.header.span(clock, name, SpanKind::Client, attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentations::database_sql::event::tests::sample;
    use trace::AttributeValue;

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a AttributeValue> {
        s.attribute(k)
    }

    #[test]
    fn a_query_is_named_by_operation_and_collection_with_its_text_sanitized() {
        let q = "SELECT name FROM users WHERE id = $1 AND name <> 'bob'";
        let s = span(sample(Operation::Query, q), &MonotonicClock::new());
        assert_eq!((s.name.as_ref(), s.kind), ("SELECT users", SpanKind::Client));
        assert_eq!(attr(&s, "db.system.name"), Some(&"postgresql".into()));
        assert_eq!(
            attr(&s, "db.query.text"),
            Some(&"SELECT name FROM users WHERE id = $1 AND name <> ?".to_string().into())
        );
        assert_eq!(attr(&s, "db.operation.name"), Some(&"SELECT".to_string().into()));
        assert_eq!(attr(&s, "db.collection.name"), Some(&"users".to_string().into()));
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn transactions_and_unknown_drivers() {
        let mut e = sample(Operation::Commit, "");
        e.system = 0;
        let s = span(e, &MonotonicClock::new());
        assert_eq!(s.name, "COMMIT");
        assert_eq!(attr(&s, "db.system.name"), Some(&"other_sql".into()));
        assert!(attr(&s, "db.query.text").is_none());
        let s = span(sample(Operation::Exec, "VACUUM"), &MonotonicClock::new());
        assert_eq!(s.name, "VACUUM");
        let s = span(sample(Operation::Exec, "?"), &MonotonicClock::new());
        assert_eq!(s.name, "postgresql", "no operation: the system names it");
    }

    #[test]
    fn a_refused_query_is_an_error_with_the_drivers_code() {
        let mut e = sample(Operation::Exec, "DELETE FROM missing");
        (e.failed, e.code) = (true, Some(ErrorCode::Text("42P01".into())));
        let s = span(e, &MonotonicClock::new());
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "db.response.status_code"), Some(&"42P01".to_string().into()));
        assert_eq!(attr(&s, "error.type"), Some(&"42P01".to_string().into()));
        let mut e = sample(Operation::Query, "SELECT 1");
        e.failed = true;
        let s = span(e, &MonotonicClock::new());
        assert_eq!(attr(&s, "error.type"), Some(&"_OTHER".into()));
    }
}

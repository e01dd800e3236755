//! A database CLIENT span per the OpenTelemetry database semantic conventions (stable since
//! semconv 1.33): named `{db.operation.name} {db.collection.name}`, with the query's text
//! sanitized, and an error with the driver's code when the database refused.

use std::borrow::Cow;

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::{ErrorCode, Operation, SqlEvent};
use super::query::{operation_and_collection, sanitize};
use super::SYSTEMS;
use crate::SpanOptions;

pub(super) fn span(e: SqlEvent, clock: &MonotonicClock, options: &SpanOptions) -> Span {
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
        let text = if options.raw_db_queries { e.query.clone() } else { sanitize(&e.query) };
        attrs.push(KeyValue::new("db.query.text", text));
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
    if !e.namespace.is_empty() {
        attrs.push(KeyValue::new("db.namespace", e.namespace.clone()));
    }
    if let Some((address, _, port)) = e.peer {
        // The socket's peer: the conventions' server.address when no host name is known.
        attrs.push(KeyValue::new("server.address", address.to_string()));
        attrs.push(KeyValue::new("server.port", i64::from(port)));
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

    /// The span with the default options: queries sanitized.
    fn sanitized(e: SqlEvent) -> Span {
        span(e, &MonotonicClock::new(), &SpanOptions::default())
    }

    #[test]
    fn a_query_is_named_by_operation_and_collection_with_its_text_sanitized() {
        let q = "SELECT name FROM users WHERE id = $1 AND name <> 'bob'";
        let s = sanitized(sample(Operation::Query, q));
        assert_eq!((s.name.as_ref(), s.kind), ("SELECT users", SpanKind::Client));
        assert_eq!(attr(&s, "db.system.name"), Some(&"postgresql".into()));
        assert_eq!(
            attr(&s, "db.query.text"),
            Some(&"SELECT name FROM users WHERE id = $1 AND name <> ?".to_string().into())
        );
        assert_eq!(attr(&s, "db.operation.name"), Some(&"SELECT".to_string().into()));
        assert_eq!(attr(&s, "db.collection.name"), Some(&"users".to_string().into()));
        assert_eq!(attr(&s, "server.address"), Some(&"127.0.0.1".to_string().into()));
        assert_eq!(attr(&s, "server.port"), Some(&5432.into()));
        assert_eq!(attr(&s, "db.namespace"), Some(&"shop".to_string().into()));
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn raw_text_only_when_asked() {
        let q = "UPDATE users SET name = 'bob' WHERE id = 2";
        let raw = SpanOptions { raw_db_queries: true };
        let s = span(sample(Operation::Exec, q), &MonotonicClock::new(), &raw);
        assert_eq!(attr(&s, "db.query.text"), Some(&q.to_string().into()));
    }

    #[test]
    fn transactions_and_unknown_drivers() {
        let mut e = sample(Operation::Commit, "");
        (e.system, e.namespace) = (0, String::new());
        let s = sanitized(e);
        assert_eq!(s.name, "COMMIT");
        assert_eq!(attr(&s, "db.system.name"), Some(&"other_sql".into()));
        assert!(attr(&s, "db.query.text").is_none());
        assert!(attr(&s, "db.namespace").is_none(), "a driver that does not tell");
        let s = sanitized(sample(Operation::Exec, "VACUUM"));
        assert_eq!(s.name, "VACUUM");
        let s = sanitized(sample(Operation::Exec, "?"));
        assert_eq!(s.name, "postgresql", "no operation: the system names it");
    }

    #[test]
    fn a_refused_query_is_an_error_with_the_drivers_code() {
        let mut e = sample(Operation::Exec, "DELETE FROM missing");
        (e.failed, e.code) = (true, Some(ErrorCode::Text("42P01".into())));
        let s = sanitized(e);
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "db.response.status_code"), Some(&"42P01".to_string().into()));
        assert_eq!(attr(&s, "error.type"), Some(&"42P01".to_string().into()));
        let mut e = sample(Operation::Query, "SELECT 1");
        e.failed = true;
        let s = sanitized(e);
        assert_eq!(attr(&s, "error.type"), Some(&"_OTHER".into()));
    }
}

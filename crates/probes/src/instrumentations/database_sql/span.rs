//! A database CLIENT span per the OpenTelemetry database semantic conventions (stable since
//! semconv 1.33): named `{db.operation.name} {db.collection.name}`, with the query's text
//! sanitized, and an error with the driver's code when the database refused.

use std::borrow::Cow;
use std::net::IpAddr;

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::{ErrorCode, Operation, SqlEvent};
use super::query::{operation_and_collection, sanitize};
use super::SYSTEMS;
use crate::event::SpanHeader;
use crate::SpanOptions;

pub(super) fn span(e: SqlEvent, clock: &MonotonicClock, options: &SpanOptions) -> Span {
    let system = match usize::from(e.system).checked_sub(1).and_then(|i| SYSTEMS.get(i)) {
        Some(system) => system,
        None => "other_sql",
    };
    let operation = match e.op {
        Some(Operation::Begin) => Some("BEGIN"),
        Some(Operation::Commit) => Some("COMMIT"),
        Some(Operation::Rollback) => Some("ROLLBACK"),
        _ => None,
    };
    let code = match e.code {
        Some(ErrorCode::Text(code)) => Some(code),
        Some(ErrorCode::Number(n)) => Some(n.to_string()),
        None => None,
    };
    SqlSpan {
        system,
        operation,
        texts: if e.query.is_empty() { vec![] } else { vec![e.query] },
        batch_size: None,
        namespace: e.namespace,
        peer: e.peer,
        failed: e.failed,
        code,
    }
    .span(e.header, clock, options)
}

/// What a SQL client span tells, whichever library's call it is (database/sql, pgx).
pub(crate) struct SqlSpan {
    pub system: &'static str,
    /// The operation of one with no text (BEGIN, COMMIT, ROLLBACK); else it is parsed from
    /// the text.
    pub operation: Option<&'static str>,
    /// The statement as captured; a batch's first ones.
    pub texts: Vec<String>,
    /// A batch's number of statements (0: not known); None for one statement.
    pub batch_size: Option<u32>,
    pub namespace: String,
    /// (server address, client port, server port) of the connection.
    pub peer: Option<(IpAddr, u16, u16)>,
    pub failed: bool,
    /// The database's error code (SQLSTATE, MySQL's error number).
    pub code: Option<String>,
}

impl SqlSpan {
    pub(crate) fn span(
        self,
        header: SpanHeader,
        clock: &MonotonicClock,
        options: &SpanOptions,
    ) -> Span {
        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::new("db.system.name", self.system));
        // A batch of one statement is that statement, as the conventions model it.
        let batch = self.batch_size.filter(|&n| n != 1);
        let parsed: Vec<_> = self.texts.iter().map(|t| operation_and_collection(t)).collect();
        let (operation, collection) = match (self.operation, batch) {
            (Some(op), _) => (Some(op.to_string()), None),
            (None, None) => parsed.into_iter().next().unwrap_or_default(),
            (None, Some(size)) => {
                // BATCH, or BATCH SELECT (and its collection) when every statement is known
                // and the same.
                let (ops, collections): (Vec<_>, Vec<_>) = parsed.into_iter().unzip();
                let all_known = size as usize == ops.len();
                let op = all_known.then(|| the_same(ops)).flatten();
                let collection = op.as_ref().and(the_same(collections));
                (Some(op.map_or("BATCH".to_string(), |op| format!("BATCH {op}"))), collection)
            }
        };
        if !self.texts.is_empty() {
            let mut text = self
                .texts
                .iter()
                .map(|t| if options.raw_db_queries { t.clone() } else { sanitize(t) })
                .collect::<Vec<_>>()
                .join("; ");
            if batch.is_some_and(|n| n as usize > self.texts.len()) {
                text.push_str("; ...");
            }
            attrs.push(KeyValue::new("db.query.text", text));
        }
        let name: Cow<'static, str> = match (&operation, &collection) {
            (Some(op), Some(collection)) => format!("{op} {collection}").into(),
            (Some(op), None) => op.clone().into(),
            _ => self.system.into(),
        };
        if let Some(op) = operation {
            attrs.push(KeyValue::new("db.operation.name", op));
        }
        if let Some(collection) = collection {
            attrs.push(KeyValue::new("db.collection.name", collection));
        }
        if let Some(size) = batch.filter(|&n| n > 1) {
            attrs.push(KeyValue::new("db.operation.batch.size", i64::from(size)));
        }
        if !self.namespace.is_empty() {
            attrs.push(KeyValue::new("db.namespace", self.namespace));
        }
        if let Some((address, _, port)) = self.peer {
            // The socket's peer: the conventions' server.address when no host name is known.
            attrs.push(KeyValue::new("server.address", address.to_string()));
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        let status = if self.failed {
            match self.code {
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
        header.span(clock, name, SpanKind::Client, attrs, status)
    }
}

/// The value every one of `values` has, if they all have the same.
fn the_same(values: Vec<Option<String>>) -> Option<String> {
    let mut values = values.into_iter();
    let first = values.next().flatten()?;
    values.all(|v| v.as_ref() == Some(&first)).then_some(first)
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

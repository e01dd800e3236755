//! pgx's spans follow the database conventions as database/sql's do (`SqlSpan`): the system
//! is always PostgreSQL, and a batch is one span (`BATCH`, or `BATCH SELECT users` when every
//! statement is the same) with `db.operation.batch.size`.

use trace::{MonotonicClock, Span};

use super::event::{Operation, PgxEvent};
use crate::instrumentations::database_sql::span::SqlSpan;
use crate::SpanOptions;

pub(super) fn span(e: PgxEvent, clock: &MonotonicClock, options: &SpanOptions) -> Span {
    SqlSpan {
        system: "postgresql",
        operation: None,
        texts: e.texts.into_iter().filter(|t| !t.is_empty()).collect(),
        batch_size: (e.op == Some(Operation::Batch)).then_some(e.batch_size),
        namespace: e.namespace,
        peer: e.peer,
        failed: e.failed,
        code: e.code,
    }
    .span(e.header, clock, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentations::pgx::event::tests::sample;
    use trace::{AttributeValue, SpanKind, Status};

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a AttributeValue> {
        s.attribute(k)
    }

    fn sanitized(e: PgxEvent) -> Span {
        span(e, &MonotonicClock::new(), &SpanOptions::default())
    }

    fn string(s: &str) -> AttributeValue {
        s.to_string().into()
    }

    #[test]
    fn a_query_is_a_postgresql_span_named_by_operation_and_collection() {
        let s = sanitized(sample(Operation::Query, &["SELECT name FROM users WHERE id = 1"]));
        assert_eq!((s.name.as_ref(), s.kind), ("SELECT users", SpanKind::Client));
        assert_eq!(attr(&s, "db.system.name"), Some(&"postgresql".into()));
        assert_eq!(attr(&s, "db.query.text"), Some(&string("SELECT name FROM users WHERE id = ?")));
        assert_eq!(attr(&s, "db.namespace"), Some(&string("shop")));
        assert_eq!(attr(&s, "server.port"), Some(&5432.into()));
        assert!(attr(&s, "db.operation.batch.size").is_none());
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn a_transactions_statements_are_named_by_their_text() {
        assert_eq!(sanitized(sample(Operation::Exec, &["begin"])).name, "BEGIN");
        assert_eq!(sanitized(sample(Operation::Exec, &["commit"])).name, "COMMIT");
    }

    #[test]
    fn a_batch_is_one_span_with_its_size() {
        let same = sample(Operation::Batch, &["SELECT a FROM t WHERE id = $1"; 2]);
        let s = sanitized(same);
        assert_eq!(s.name, "BATCH SELECT t");
        assert_eq!(attr(&s, "db.operation.name"), Some(&string("BATCH SELECT")));
        assert_eq!(attr(&s, "db.collection.name"), Some(&string("t")));
        assert_eq!(attr(&s, "db.operation.batch.size"), Some(&2.into()));
        let mixed = sample(Operation::Batch, &["SELECT a FROM t", "UPDATE t SET a = 'x'"]);
        let s = sanitized(mixed);
        assert_eq!(s.name, "BATCH");
        assert_eq!(attr(&s, "db.query.text"), Some(&string("SELECT a FROM t; UPDATE t SET a = ?")));
        assert!(attr(&s, "db.collection.name").is_none());
    }

    #[test]
    fn a_batch_longer_than_what_was_read_says_so() {
        let mut e = sample(Operation::Batch, &["SELECT 1", "SELECT 2"]);
        e.batch_size = 9;
        let s = sanitized(e);
        assert_eq!(s.name, "BATCH", "the unread statements may be anything");
        assert_eq!(attr(&s, "db.query.text"), Some(&string("SELECT ?; SELECT ?; ...")));
        assert_eq!(attr(&s, "db.operation.batch.size"), Some(&9.into()));
        let one = sample(Operation::Batch, &["DELETE FROM t"]);
        let s = sanitized(one);
        assert_eq!(s.name, "DELETE t", "a batch of one is that statement");
        assert!(attr(&s, "db.operation.batch.size").is_none());
    }

    #[test]
    fn a_refused_statement_carries_its_sqlstate() {
        let mut e = sample(Operation::Query, &["SELECT 1 / 0"]);
        (e.failed, e.code) = (true, Some("22012".into()));
        let s = sanitized(e);
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "db.response.status_code"), Some(&string("22012")));
        assert_eq!(attr(&s, "error.type"), Some(&string("22012")));
    }
}

//! A Redis CLIENT span per the OpenTelemetry database semantic conventions for Redis: named
//! by the command, `db.query.text` with the command and its key but no values, the database
//! index as `db.namespace`, and a refused reply's error prefix as its status code. A pipeline
//! is one span, a batch (`BATCH`, or `BATCH SET` when every command is a SET), and a
//! transaction one named `MULTI`, each with `db.operation.batch.size`.

use std::borrow::Cow;

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::{Command, Operation, RedisEvent};
use crate::semconv::split_host_port;

/// Commands whose second argument is not a key, or is a secret (AUTH's password): only their
/// name is shown.
const NO_KEY: &[&str] = &[
    "ACL",
    "AUTH",
    "BGREWRITEAOF",
    "BGSAVE",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "DEBUG",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "HELLO",
    "INFO",
    "LASTSAVE",
    "MEMORY",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "OBJECT",
    "PING",
    "PSUBSCRIBE",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "READONLY",
    "READWRITE",
    "REPLICAOF",
    "RESET",
    "ROLE",
    "SAVE",
    "SCAN",
    "SCRIPT",
    "SELECT",
    "SHUTDOWN",
    "SLAVEOF",
    "SLOWLOG",
    "SUBSCRIBE",
    "SWAPDB",
    "SYNC",
    "TIME",
    "UNSUBSCRIBE",
    "WAIT",
    "XINFO",
    "XGROUP",
];

/// "SET user:2 ?": the command, its key where it has one, and a `?` per other argument.
fn query_text(c: &Command, name: &str) -> String {
    let mut text = name.to_string();
    let mut shown = 1;
    if let Some(key) = c.key.as_deref().filter(|_| !NO_KEY.contains(&name)) {
        text.push(' ');
        text.push_str(key);
        shown = 2;
    }
    for _ in shown..c.argc.min(64) {
        text.push_str(" ?");
    }
    text
}

pub(super) fn span(e: RedisEvent, clock: &MonotonicClock) -> Span {
    let mut attrs = Vec::with_capacity(8);
    attrs.push(KeyValue::new("db.system.name", "redis"));
    let names: Vec<String> = e.commands.iter().map(|c| c.name.to_ascii_uppercase()).collect();
    let transaction =
        e.op == Some(Operation::Pipeline) && names.first().is_some_and(|n| n == "MULTI");
    // A pipeline of one command is that command, as the conventions model it.
    let single = e.op == Some(Operation::Command) || (!transaction && e.total_commands == 1);
    let (operation, texts, batch): (Cow<'static, str>, Vec<String>, Option<u32>) = if single {
        let name = names.first().cloned().unwrap_or_default();
        let text = e.commands.first().map(|c| query_text(c, &name));
        (name.into(), text.into_iter().collect(), None)
    } else {
        // A transaction's MULTI and EXEC are go-redis's wrapping, not the application's.
        let (skip, wrapping) = if transaction { (1, 2) } else { (0, 0) };
        let inner: Vec<(&Command, &String)> = e
            .commands
            .iter()
            .zip(&names)
            .skip(skip)
            .filter(|(_, n)| !(transaction && *n == "EXEC"))
            .collect();
        let size = e.total_commands.saturating_sub(wrapping);
        let texts = inner.iter().map(|(c, n)| query_text(c, n)).collect();
        let operation: Cow<'static, str> = if transaction {
            "MULTI".into()
        } else {
            match inner.first() {
                Some((_, first))
                    if e.total_commands as usize == inner.len()
                        && inner.iter().all(|(_, n)| n == first) =>
                {
                    format!("BATCH {first}").into()
                }
                _ => "BATCH".into(),
            }
        };
        (operation, texts, Some(size))
    };
    if !texts.is_empty() {
        let mut text = texts.join("; ");
        if batch.is_some_and(|n| n as usize > texts.len()) {
            text.push_str("; ...");
        }
        attrs.push(KeyValue::new("db.query.text", text));
    }
    if !operation.is_empty() {
        attrs.push(KeyValue::new("db.operation.name", operation.to_string()));
    }
    if let Some(size) = batch.filter(|&n| n != 1) {
        attrs.push(KeyValue::new("db.operation.batch.size", i64::from(size)));
    }
    attrs.push(KeyValue::new("db.namespace", e.db.to_string()));
    if e.network == "unix" {
        attrs.push(KeyValue::new("server.address", e.addr.clone()));
    } else if !e.addr.is_empty() {
        let (host, port) = split_host_port(&e.addr);
        attrs.push(KeyValue::new("server.address", host.to_string()));
        if let Some(port) = port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    let status = if e.failed {
        // A refused reply starts with its error code: "WRONGTYPE ...", "ERR ...".
        match e.error.as_deref().and_then(|m| m.split_whitespace().next()) {
            Some(code) if code.bytes().all(|b| b.is_ascii_uppercase()) => {
                attrs.push(KeyValue::new("db.response.status_code", code.to_string()));
                attrs.push(KeyValue::new("error.type", code.to_string()));
            }
            _ => attrs.push(KeyValue::new("error.type", "_OTHER")),
        }
        Status::Error { message: e.error.clone().unwrap_or_default() }
    } else {
        Status::Unset
    };
    let name: Cow<'static, str> = if operation.is_empty() { "redis".into() } else { operation };
    e.header.span(clock, name, SpanKind::Client, attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentations::go_redis::event::tests::{command, sample};
    use trace::AttributeValue;

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a AttributeValue> {
        s.attribute(k)
    }

    fn text(s: &Span) -> Option<String> {
        match attr(s, "db.query.text") {
            Some(AttributeValue::String(t)) => Some(t.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_command_is_named_by_itself_with_its_key_and_no_values() {
        let s = span(
            sample(Operation::Command, vec![command("set", Some("user:2"), 3)]),
            &MonotonicClock::new(),
        );
        assert_eq!((s.name.as_ref(), s.kind), ("SET", SpanKind::Client));
        assert_eq!(attr(&s, "db.system.name"), Some(&"redis".into()));
        assert_eq!(text(&s).as_deref(), Some("SET user:2 ?"));
        assert_eq!(attr(&s, "db.operation.name"), Some(&"SET".to_string().into()));
        assert_eq!(attr(&s, "db.namespace"), Some(&"0".to_string().into()));
        assert_eq!(attr(&s, "server.address"), Some(&"127.0.0.1".to_string().into()));
        assert_eq!(attr(&s, "server.port"), Some(&6379.into()));
        assert!(attr(&s, "db.operation.batch.size").is_none());
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn secrets_and_non_keys_are_not_shown() {
        let s = span(
            sample(Operation::Command, vec![command("auth", Some("hunter2"), 2)]),
            &MonotonicClock::new(),
        );
        assert_eq!(text(&s).as_deref(), Some("AUTH ?"));
        let s = span(
            sample(Operation::Command, vec![command("hello", Some("3"), 5)]),
            &MonotonicClock::new(),
        );
        assert_eq!(text(&s).as_deref(), Some("HELLO ? ? ? ?"));
    }

    #[test]
    fn pipelines_are_batches_and_transactions_multi() {
        let cmds = vec![
            command("set", Some("a"), 3),
            command("incr", Some("n"), 2),
            command("get", Some("a"), 2),
        ];
        let s = span(sample(Operation::Pipeline, cmds), &MonotonicClock::new());
        assert_eq!(s.name, "BATCH");
        assert_eq!(text(&s).as_deref(), Some("SET a ?; INCR n; GET a"));
        assert_eq!(attr(&s, "db.operation.batch.size"), Some(&3.into()));

        let gets = vec![command("get", Some("a"), 2), command("get", Some("b"), 2)];
        let s = span(sample(Operation::Pipeline, gets), &MonotonicClock::new());
        assert_eq!(s.name, "BATCH GET");

        let one = vec![command("select", Some("2"), 2)];
        let s = span(sample(Operation::Pipeline, one), &MonotonicClock::new());
        assert_eq!((s.name.as_ref(), text(&s).as_deref()), ("SELECT", Some("SELECT ?")));
        assert!(attr(&s, "db.operation.batch.size").is_none(), "one command is no batch");

        let tx = vec![
            command("multi", None, 1),
            command("set", Some("a"), 3),
            command("incr", Some("n"), 2),
            command("exec", None, 1),
        ];
        let s = span(sample(Operation::Pipeline, tx), &MonotonicClock::new());
        assert_eq!(s.name, "MULTI");
        assert_eq!(text(&s).as_deref(), Some("SET a ?; INCR n"));
        assert_eq!(attr(&s, "db.operation.batch.size"), Some(&2.into()));
    }

    #[test]
    fn a_long_pipeline_says_it_was_cut() {
        let mut e = sample(Operation::Pipeline, vec![command("get", Some("a"), 2); 8]);
        e.total_commands = 20;
        let s = span(e, &MonotonicClock::new());
        assert_eq!(s.name, "BATCH", "the commands not seen may differ");
        assert!(text(&s).unwrap().ends_with("GET a; ..."));
        assert_eq!(attr(&s, "db.operation.batch.size"), Some(&20.into()));
    }

    #[test]
    fn a_refused_reply_is_an_error_with_its_prefix() {
        let mut e = sample(Operation::Command, vec![command("lpush", Some("user:1"), 3)]);
        (e.failed, e.error) = (true, Some("WRONGTYPE Operation against a key".into()));
        let s = span(e, &MonotonicClock::new());
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "db.response.status_code"), Some(&"WRONGTYPE".to_string().into()));
        assert_eq!(attr(&s, "error.type"), Some(&"WRONGTYPE".to_string().into()));
        let mut e = sample(Operation::Command, vec![command("get", Some("k"), 2)]);
        e.failed = true;
        let s = span(e, &MonotonicClock::new());
        assert_eq!(attr(&s, "error.type"), Some(&"_OTHER".into()));
    }

    #[test]
    fn a_unix_socket_is_the_address() {
        let mut e = sample(Operation::Command, vec![command("get", Some("k"), 2)]);
        (e.network, e.addr, e.db) = ("unix".into(), "/run/redis.sock".into(), 2);
        let s = span(e, &MonotonicClock::new());
        assert_eq!(attr(&s, "server.address"), Some(&"/run/redis.sock".to_string().into()));
        assert!(attr(&s, "server.port").is_none());
        assert_eq!(attr(&s, "db.namespace"), Some(&"2".to_string().into()));
    }
}

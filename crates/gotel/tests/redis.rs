//! go-redis client spans, end to end: the redis fixture (go-redis v9 and v8, both linked)
//! against a real, private Redis server, spans checked at a real OpenTelemetry Collector, for
//! builds across Go versions, go-redis versions, plain and stripped.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
/// The fixture's -db: the spans' db.namespace.
const DB_INDEX: &str = "2";

/// The CLIENT spans directly under the server span of the request to `path`, in start order.
/// Spans a new connection's set-up makes (HELLO, SELECT) are children of the command that
/// needed the connection, not of the request.
fn request<'a>(spans: &'a [ReceivedSpan], path: &str) -> Vec<&'a ReceivedSpan> {
    let server = spans
        .iter()
        .find(|s| s.kind() == SERVER && s.attr_str("url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path} in {spans:#?}"));
    children_of(spans, server)
}

/// (name, db.query.text) of each span.
fn named(spans: &[&ReceivedSpan]) -> Vec<(String, Option<String>)> {
    spans.iter().map(|s| (s.name().to_string(), s.attr_str("db.query.text"))).collect()
}

fn pair(name: &str, text: &str) -> (String, Option<String>) {
    (name.to_string(), Some(text.to_string()))
}

/// Every kind of Redis work the fixture does, with the fixture build `build` (under
/// target/fixtures) through go-redis `client` (v9 or v8).
fn every_command(build: &str, client: &str) {
    let Some(()) = privileged() else { return };
    let tag = format!("{}-{client}", build.replace('/', "-"));
    let redis = Redis::start(&tag);
    let collector = Collector::start(&format!("redis-{tag}"));
    let port = free_port();
    let fx = fixture(build);
    let (addr, server) = (format!("127.0.0.1:{port}"), redis.addr());
    let args = [
        "run",
        "--",
        fx.to_str().unwrap(),
        "-addr",
        &addr,
        "-redis",
        &server,
        "-db",
        DB_INDEX,
        "-client",
        client,
    ];
    let mut gotel = gotel(&args, Some(&collector), &[("OTEL_SERVICE_NAME", "cache")]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log(&format!("attached go-redis {client}"), WAIT);

    for path in ["/get", "/miss", "/set", "/pipeline", "/tx", "/goroutine"] {
        assert_eq!(http_get(port, path).0, 200, "{path}");
    }
    assert_eq!(http_get(port, "/fail").0, 500);
    // 7 server spans, a command or pipeline span each, and the start-up SET. A new
    // connection's HELLO and SELECT are spans too, so the server spans are waited for by
    // themselves: each arrives after the commands of its request, which end before it.
    collector.wait_for_span_count(|s| s.kind() == SERVER, 7, WAIT);
    let spans =
        collector.wait_for_span_count(|s| s.attr_str("db.system.name").is_some(), 7 + 1, WAIT);

    let redis_spans: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.attr_str("db.system.name").is_some()).collect();
    for s in &redis_spans {
        assert_eq!(s.kind(), CLIENT, "{s:#?}");
        assert_eq!(s.attr_str("db.system.name").as_deref(), Some("redis"));
        assert_eq!(s.resource_str("service.name").as_deref(), Some("cache"));
        assert_eq!(s.attr_str("db.namespace").as_deref(), Some(DB_INDEX), "{s:#?}");
        assert_eq!(s.attr_str("server.address").as_deref(), Some("127.0.0.1"), "{s:#?}");
        assert_eq!(s.attr_int("server.port"), Some(i64::from(redis.port)), "{s:#?}");
        assert_eq!(s.attr_str("db.operation.name").as_deref(), Some(s.name()), "{s:#?}");
    }
    // A new connection's set-up is under the command that needed it, in its trace.
    let is_redis = |id: &str| redis_spans.iter().find(|s| s.hex("spanId") == id);
    for s in &redis_spans {
        if let Some(outer) = is_redis(&s.hex("parentSpanId")) {
            assert_eq!(s.hex("traceId"), outer.hex("traceId"));
            let setup = ["HELLO", "SELECT", "BATCH", "BATCH CLIENT", "CLIENT"];
            assert!(setup.contains(&s.name()), "a connection's set-up: {s:#?}");
        }
    }

    // The start-up SET: a root, as no request was being served.
    let roots: Vec<&&ReceivedSpan> =
        redis_spans.iter().filter(|s| s.hex("parentSpanId").is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name(), "SET");
    assert_eq!(roots[0].attr_str("db.query.text").as_deref(), Some("SET user:1 ?"));

    let get = request(&spans, "/get");
    assert_eq!(named(&get), [pair("GET", "GET user:1")]);
    assert_eq!(get[0].status_code(), 0);
    assert!(get[0].attr_int("db.operation.batch.size").is_none());

    let miss = request(&spans, "/miss");
    assert_eq!(named(&miss), [pair("GET", "GET user:missing")]);
    assert_eq!(miss[0].status_code(), 0, "redis.Nil is no error");

    assert_eq!(named(&request(&spans, "/set")), [pair("SET", "SET user:2 ?")]);

    let pipeline = request(&spans, "/pipeline");
    assert_eq!(named(&pipeline), [pair("BATCH", "SET user:3 ?; INCR visits; GET user:3")]);
    assert_eq!(pipeline[0].attr_int("db.operation.batch.size"), Some(3));
    assert_eq!(pipeline[0].status_code(), 0);

    let tx = request(&spans, "/tx");
    assert_eq!(named(&tx), [pair("MULTI", "SET user:4 ?; INCR visits")]);
    assert_eq!(tx[0].attr_int("db.operation.batch.size"), Some(2));

    let fail = request(&spans, "/fail");
    assert_eq!(named(&fail), [pair("LPUSH", "LPUSH user:1 ?")]);
    assert_eq!(fail[0].status_code(), 2, "an error");
    assert_eq!(fail[0].attr_str("db.response.status_code").as_deref(), Some("WRONGTYPE"));
    assert_eq!(fail[0].attr_str("error.type").as_deref(), Some("WRONGTYPE"));

    // From a goroutine the handler started: still under the request.
    assert_eq!(named(&request(&spans, "/goroutine")), [pair("GET", "GET user:1")]);

    // Every command counts in db.client.operation.duration, by operation and outcome, and
    // in the service graph as an edge to the database.
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let points = collector.settled_metric_points();
    // Every span is in now, the connections' set-up commands too.
    let spans = collector.spans();
    let redis_spans: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.attr_str("db.system.name").is_some()).collect();
    let last = |metric: &str, operation: &str| {
        let of = points.iter().filter(|p| {
            p.metric == metric && p.attr_str("db.operation.name").as_deref() == Some(operation)
        });
        of.map(|p| p.count).max()
    };
    let count_of = |name: &str| redis_spans.iter().filter(|s| s.name() == name).count() as u64;
    let db = "db.client.operation.duration";
    assert_eq!(last(db, "GET"), Some(count_of("GET")), "{points:#?}");
    assert_eq!(last(db, "MULTI"), Some(1));
    let lpush = points.iter().find(|p| p.attr_str("db.operation.name").as_deref() == Some("LPUSH"));
    assert_eq!(lpush.and_then(|p| p.attr_str("error.type")).as_deref(), Some("WRONGTYPE"));
    assert!(points.iter().filter(|p| p.metric == db).all(|p| {
        p.attr_str("db.system.name").as_deref() == Some("redis")
            && p.attr("db.query.text").is_none()
    }));
    let edge = points.iter().filter(|p| {
        p.metric == "traces_service_graph_request_total"
            && p.attr_str("connection_type").as_deref() == Some("database")
    });
    let edge = edge.max_by_key(|p| p.count).expect("an edge to the database");
    assert_eq!(edge.attr_str("client").as_deref(), Some("cache"));
    assert_eq!(edge.attr_str("server").as_deref(), Some(DB_INDEX));
    assert_eq!(edge.count, redis_spans.len() as u64, "every command");
}

#[test]
fn every_command_v9_go1_19() {
    every_command("redis-go1.19", "v9");
}

#[test]
fn every_command_v9_go1_27_stripped() {
    every_command("redis-go1.27-stripped", "v9");
}

#[test]
fn every_command_v9_go1_27_pie_stripped() {
    every_command("redis-go1.27-pie-stripped", "v9");
}

#[test]
fn every_command_v8_go1_21() {
    every_command("redis-go1.21", "v8");
}

#[test]
fn every_command_v8_go1_24_stripped() {
    every_command("redis-go1.24-stripped", "v8");
}

/// The go-redis v9 releases where the functions gotel probes change (fixtures/redis/RESEARCH.md).
#[test]
fn every_command_v9_0_0_stripped() {
    every_command("redis/redis-v9.0.0-stripped", "v9");
}

#[test]
fn every_command_v9_newest_stripped() {
    every_command("redis/redis-v9.23.0-stripped", "v9");
}

#[test]
fn every_command_v8_11_0() {
    every_command("redis/redis-v8.11.0", "v8");
}

/// A distribution's build (GOPATH mode, stripped: buildinfo lists no modules, go-redis states
/// no version): each go-redis's version is told by its struct layout, matched against the
/// offsets database, and every command is traced.
fn gopath_build(client: &str, module: &str) {
    let build = "redis/redis-v9.7.3-gopath";
    let text = inspect(&fixture(build));
    assert!(text.contains("modules        (none)"), "{text}");
    let library = text.lines().find(|l| l.contains(&format!("library {module} "))).unwrap_or("");
    assert!(library.contains("(from the layout: matches v"), "{module}: {text}");
    every_command(build, client);
}

#[test]
fn every_command_gopath_build_v9() {
    gopath_build("v9", "github.com/redis/go-redis/v9");
}

#[test]
fn every_command_gopath_build_v8() {
    gopath_build("v8", "github.com/go-redis/redis/v8");
}

/// 200 requests at once, each making one GET from a goroutine it started: every GET's span
/// arrives, under its own request's span.
#[test]
fn concurrent_commands_keep_their_parents() {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let redis = Redis::start("concurrent");
    let collector = Collector::start("redis-concurrent");
    let port = free_port();
    let fx = fixture("redis-go1.26");
    let (addr, server) = (format!("127.0.0.1:{port}"), redis.addr());
    let args = ["run", "--", fx.to_str().unwrap(), "-addr", &addr, "-redis", &server];
    let gotel = gotel(&args, Some(&collector), &[]);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("attached go-redis v9", WAIT);
    const N: usize = 200;
    let statuses = concurrent_gets(port, "/goroutine", N);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let spans =
        collector.wait_for_span_count(|s| s.kind() == SERVER || s.name() == "GET", 2 * N, WAIT);
    assert_one_child_per_request(&spans, N, "GET");
}

//! net/http server spans, end to end: real uprobes on real Go binaries, spans checked at a real
//! OpenTelemetry Collector.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn by_path<'a>(spans: &'a [ReceivedSpan], path: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no span for {path} in {spans:#?}"))
}

/// Every kind of request, on a fixture built with `go`: exact names, attributes, statuses,
/// durations, times and resource. `fallback` forces the reference tools' placement (entry and
/// one uprobe per RET, as on kernels before 6.6) instead of probes on emulated instructions.
fn every_request_kind(go: &str, routed: bool, fallback: bool) {
    let Some(()) = privileged() else { return };
    let collector = Collector::start(go);
    let port = free_port();
    let fx = fixture(&format!("httpserver-{go}"));
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["run"];
    if fallback {
        args.extend(["--probe-placement", "entry-ret", "--no-uprobe-multi"]);
    }
    args.extend(["--", fx.to_str().unwrap(), "-addr", &addr]);
    let mut gotel = gotel(
        &args,
        Some(&collector),
        &[
            ("OTEL_SERVICE_NAME", "shop"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
        ],
    );
    wait_for_port(port, WAIT);
    let target_pid = gotel.children()[0];
    let placed = if fallback {
        "ServeHTTP: entry on the first instruction, exit at"
    } else {
        "ServeHTTP: entry on the stack-check jump; exit at net/http.(*response).finishRequest (on the stack-check jump)"
    };
    gotel.wait_for_log(placed, WAIT);

    let t0 = unix_nanos_now();
    assert_eq!(http_get(port, "/hello").0, 200);
    assert_eq!(http_get(port, "/users/7?fields=name&x=1").0, 200);
    assert_eq!(http_get(port, "/missing").0, 404);
    assert_eq!(http_get(port, "/status/500").0, 500);
    assert_eq!(http_get(port, "/slow?ms=50").0, 200);
    let t1 = unix_nanos_now();

    let spans = collector.wait_for_spans(5, WAIT);
    let arrived = unix_nanos_now();
    assert_eq!(spans.len(), 5, "one span per request: {spans:#?}");

    let hello = by_path(&spans, "/hello");
    assert_eq!(hello.name(), if routed { "GET /hello" } else { "GET" });
    assert_eq!(hello.kind(), 2, "SERVER");
    assert_eq!(hello.attr_str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(hello.attr_int("http.response.status_code"), Some(200));
    assert_eq!(hello.attr_str("url.scheme").as_deref(), Some("http"));
    assert_eq!(hello.attr("url.query"), None);
    assert_eq!(hello.attr_str("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(hello.attr_str("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(hello.attr_int("server.port"), Some(i64::from(port)));
    assert_eq!(hello.attr_str("client.address").as_deref(), Some("127.0.0.1"));
    assert!(hello.attr_int("client.port").is_some_and(|p| p > 0));
    assert_eq!(hello.status_code(), 0, "UNSET");

    let user = by_path(&spans, "/users/7");
    assert_eq!(user.name(), if routed { "GET /users/{id}" } else { "GET" });
    assert_eq!(user.attr_str("url.query").as_deref(), Some("fields=name&x=1"));
    if routed {
        assert_eq!(user.attr_str("http.route").as_deref(), Some("/users/{id}"));
    }

    let missing = by_path(&spans, "/missing");
    assert_eq!(missing.name(), "GET", "no route matched");
    assert_eq!(missing.attr_int("http.response.status_code"), Some(404));
    assert_eq!(missing.status_code(), 0, "4xx is not a server error");

    let failed = by_path(&spans, "/status/500");
    assert_eq!(failed.attr_int("http.response.status_code"), Some(500));
    assert_eq!(failed.status_code(), 2, "ERROR for 5xx");
    assert_eq!(failed.attr_str("error.type").as_deref(), Some("500"));

    let slow = by_path(&spans, "/slow");
    let d = slow.duration();
    assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(70), "slow took {d:?}");

    let mut span_ids = HashSet::new();
    for s in &spans {
        let (start, end) = (s.nanos("startTimeUnixNano"), s.nanos("endTimeUnixNano"));
        // Each request started between t0 and t1 on the wall clock (allow 1 ms of clock
        // error). Its span ends after its response is written, which can be after the client
        // read it and took t1, but before the span reached the collector.
        assert!(
            start + 1_000_000 >= t0 && start <= t1 + 1_000_000 && end <= arrived,
            "{} outside the test's window: start {start}, end {end}, t0 {t0}, t1 {t1}, arrived \
             {arrived}",
            s.name()
        );
        assert!(start <= end);
        let (trace, span) = (s.hex("traceId"), s.hex("spanId"));
        assert_eq!(trace.len(), 32);
        assert_eq!(span.len(), 16);
        assert!(trace != "0".repeat(32) && span != "0".repeat(16));
        assert!(span_ids.insert(span), "span ids are unique");
        assert_eq!(s.hex("parentSpanId"), "", "a request without traceparent is a root");

        assert_eq!(s.resource_str("service.name").as_deref(), Some("shop"));
        assert_eq!(s.resource_str("deployment.environment").as_deref(), Some("e2e"));
        assert_eq!(s.resource_int("process.pid"), Some(i64::from(target_pid)));
        assert_eq!(s.resource_str("process.runtime.name").as_deref(), Some("go"));
        assert!(s.resource_str("process.runtime.version").is_some_and(|v| v.starts_with(go)));
        let exe = s.resource_str("process.executable.path").unwrap();
        assert_eq!(std::path::Path::new(&exe), fx.canonicalize().unwrap());
        assert!(s.resource_str("host.name").is_some_and(|h| !h.is_empty()));
        assert_eq!(s.resource_str("telemetry.distro.name").as_deref(), Some("gotel"));
    }

    // SIGTERM: gotel stops the program, flushes and exits.
    let status = gotel.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert!(!status.success(), "the program was terminated: {status}");
    assert!(gotel.log().iter().any(|l| l.contains("5 spans, 5 exported")), "{:?}", gotel.log());
}

#[test]
fn every_request_kind_go1_22_entry_and_one_uprobe_per_ret() {
    every_request_kind("go1.22", false, true);
}

#[test]
fn every_request_kind_go1_26() {
    every_request_kind("go1.26", true, false);
}

/// Without OTEL_SERVICE_NAME in the program's environment: gotel's flag, else the file's name.
#[test]
fn service_name_falls_back_to_the_flag_then_the_executable() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("names");
    let fx = fixture("httpserver-go1.26");
    for (extra, expected) in
        [(vec!["--service-name", "billing"], "billing"), (vec![], "httpserver-go1.26")]
    {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["run"];
        args.extend(extra);
        args.extend(["--", fx.to_str().unwrap(), "-addr", &addr]);
        let _gotel = gotel(&args, Some(&collector), &[]);
        wait_for_port(port, WAIT);
        let before = collector.spans().len();
        assert_eq!(http_get(port, "/hello").0, 200);
        let spans = collector.wait_for_spans(before + 1, WAIT);
        assert_eq!(spans.last().unwrap().resource_str("service.name").as_deref(), Some(expected));
    }
}

/// attach --exe covers processes of that file that start later, and only those.
#[test]
fn attach_exe_traces_processes_started_later() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("exe");
    // A private copy: a file of its own (inode), so other tests' processes are not ours.
    let dir = TempDir::new("attach-exe");
    let exe = dir.0.join("inventory");
    std::fs::copy(fixture("httpserver-go1.26"), &exe).unwrap();
    let exe_str = exe.to_str().unwrap().to_string();
    let gotel = gotel(&["attach", "--exe", &exe_str], Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);

    let (p1, p2) = (free_port(), free_port());
    let first = start_fixture(&exe, p1);
    let second = start_fixture(&exe, p2);
    wait_for_port(p1, WAIT);
    wait_for_port(p2, WAIT);
    assert_eq!(http_get(p1, "/hello").0, 200);
    assert_eq!(http_get(p2, "/users/1").0, 200);
    let spans = collector.wait_for_spans(2, WAIT);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let pids: HashSet<i64> = spans.iter().filter_map(|s| s.resource_int("process.pid")).collect();
    assert_eq!(pids, HashSet::from([i64::from(first.pid()), i64::from(second.pid())]));
    assert!(spans.iter().all(|s| s.resource_str("service.name").as_deref() == Some("inventory")));
}

/// attach --pid instruments one running process and exits when it does.
#[test]
fn attach_pid_traces_a_running_process_and_follows_its_exit() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("pid");
    let port = free_port();
    let mut target = start_fixture(&fixture("httpserver-go1.22"), port);
    wait_for_port(port, WAIT);
    assert_eq!(http_get(port, "/hello").0, 200, "served before gotel");
    let pid = target.pid().to_string();
    let mut gotel = gotel(&["attach", "--pid", &pid], Some(&collector), &[]);
    gotel.wait_for_log("tracing pid", WAIT);
    assert_eq!(http_get(port, "/slow?ms=5").0, 200);
    let spans = collector.wait_for_spans(1, WAIT);
    assert_eq!(spans.len(), 1, "only requests after attach");
    assert_eq!(spans[0].attr_str("url.query").as_deref(), Some("ms=5"));
    assert_eq!(spans[0].resource_int("process.pid"), Some(i64::from(target.pid())));
    target.signal_and_wait(libc::SIGKILL, WAIT);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gotel.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "gotel should exit with its target");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Killing gotel outright leaves the program serving, with its probes gone.
#[test]
fn the_target_keeps_serving_when_gotel_is_killed() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("kill");
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let mut gotel = gotel(
        &["run", "--", fx.to_str().unwrap(), "-addr", &format!("127.0.0.1:{port}")],
        Some(&collector),
        &[],
    );
    wait_for_port(port, WAIT);
    let target = gotel.children()[0];
    assert_eq!(http_get(port, "/hello").0, 200);
    gotel.signal_and_wait(libc::SIGKILL, WAIT);
    for _ in 0..20 {
        assert_eq!(http_get(port, "/users/2").0, 200);
    }
    assert!(std::path::Path::new(&format!("/proc/{target}")).exists(), "target alive");
    // SAFETY: the orphaned fixture is ours to stop.
    unsafe { libc::kill(target as i32, libc::SIGKILL) };
}

/// No OTLP endpoint: spans are printed on the terminal.
#[test]
fn without_an_endpoint_spans_are_printed() {
    let Some(()) = privileged() else { return };
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gotel"));
    cmd.args([
        "run",
        "--no-color",
        "--",
        fx.to_str().unwrap(),
        "-addr",
        &format!("127.0.0.1:{port}"),
    ])
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .env_remove("OTEL_TRACES_EXPORTER")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut gotel = Proc::new(cmd.spawn().unwrap());
    wait_for_port(port, WAIT);
    assert_eq!(http_get(port, "/users/9").0, 200);
    std::thread::sleep(Duration::from_millis(500));
    gotel.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    let mut out = String::new();
    std::io::Read::read_to_string(gotel.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let line = out.lines().find(|l| l.contains("SERVER")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("httpserver-go1.26") && line.contains("GET /users/{id}"), "{line}");
    assert!(line.contains(" 200 ") && line.contains("url.path=/users/9"), "{line}");
}

/// OTLP over gRPC reaches the collector too.
#[test]
fn grpc_export() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("grpc");
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let endpoint = collector.grpc_endpoint();
    let addr = format!("127.0.0.1:{port}");
    let _gotel = gotel(
        &[
            "run",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--",
            fx.to_str().unwrap(),
            "-addr",
            &addr,
        ],
        None,
        &[],
    );
    wait_for_port(port, WAIT);
    assert_eq!(http_get(port, "/hello").0, 200);
    let spans = collector.wait_for_spans(1, WAIT);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name(), "GET /hello");
}

/// A collector that is down costs counted drops; the program never notices.
#[test]
fn a_collector_that_is_down_does_not_hurt_the_target() {
    let Some(()) = privileged() else { return };
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let fx = fixture("httpserver-go1.26");
    let mut gotel = gotel(
        &[
            "run",
            "--otlp-endpoint",
            &dead,
            "--",
            fx.to_str().unwrap(),
            "-addr",
            &format!("127.0.0.1:{port}"),
        ],
        None,
        &[],
    );
    wait_for_port(port, WAIT);
    for _ in 0..10 {
        assert_eq!(http_get(port, "/hello").0, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    gotel.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    let log = gotel.log().join("\n");
    assert!(log.contains("10 spans, 0 exported"), "{log}");
    assert!(log.contains("10 dropped (export failed)"), "{log}");
}

/// The go1.26 httpserver fixture run under gotel with `env`, spans to a collector of its own:
/// (collector, gotel, port, "127.0.0.1:port").
fn served(tag: &str, env: &[(&str, &str)]) -> (Collector, Proc, u16, String) {
    let collector = Collector::start(tag);
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let gotel = gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), env);
    wait_for_port(port, WAIT);
    (collector, gotel, port, addr)
}

/// Sends `head` (a request line and headers, without the blank line) as one HTTP/1.1 request
/// with `Connection: close`; the response's status.
fn raw_request(port: u16, head: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head).unwrap();
    s.write_all(b"\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let text = String::from_utf8_lossy(&resp);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Requests no well-behaved client sends: malformed traceparent headers (each ignored: the span
/// starts a trace of its own; a later version's extra field is allowed), a 64 KiB header,
/// 1,000 headers, a path that is not UTF-8 once decoded, a 100 KB query. The target answers each as without gotel, and each span arrives
/// right: the path as valid UTF-8 (invalid bytes replaced, as OTLP's strings must be), the
/// query cut at the 256 bytes the probe copies.
#[test]
fn bad_input_gives_right_spans_and_harms_nothing() {
    let Some(()) = privileged() else { return };
    let (collector, _gotel, port, addr) = served("bad-input", &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let malformed = [
        format!("00-{trace}-b7ad6b7169203331"),    // a field missing
        format!("00-{trace}-b7ad6b71692033zz-01"), // not hex
        format!("ff-{trace}-b7ad6b7169203331-01"), // version ff is invalid
        format!("zz-{trace}-b7ad6b7169203331-01"), // version not hex (found by fuzzing)
        "00-00000000000000000000000000000000-b7ad6b7169203331-01".to_string(), // zero trace id
        format!("00-{trace}-0000000000000000-01"), // zero parent id
        format!("00-{}-B7AD6B7169203331-01", trace.to_uppercase()), // upper case
        format!("00-{trace}-b7ad6b7169203331-01-"), // version 00 with a trailing field
        String::new(),
    ];
    for (i, value) in malformed.iter().enumerate() {
        let head = format!("GET /hello?case={i} HTTP/1.1\r\nHost: {addr}\r\ntraceparent: {value}");
        assert_eq!(raw_request(port, head.as_bytes()), 200, "{value:?}");
    }
    // A later version with a field more: its first four fields are read as version 00's.
    let future = format!("cc-{trace}-b7ad6b7169203331-01-what-comes-next");
    let head = format!("GET /hello?case=future HTTP/1.1\r\nHost: {addr}\r\ntraceparent: {future}");
    assert_eq!(raw_request(port, head.as_bytes()), 200);
    let big = "x".repeat(64 * 1024);
    let head = format!("GET /hello?case=big HTTP/1.1\r\nHost: {addr}\r\nX-Big: {big}");
    assert_eq!(raw_request(port, head.as_bytes()), 200);
    let many: String = (0..1000).map(|i| format!("\r\nX-H{i}: {i}")).collect();
    let head = format!("GET /hello?case=many HTTP/1.1\r\nHost: {addr}{many}");
    assert_eq!(raw_request(port, head.as_bytes()), 200);
    let head = format!("GET /users/%ff%fe%41?case=utf8 HTTP/1.1\r\nHost: {addr}");
    assert_eq!(raw_request(port, head.as_bytes()), 200);
    let query = format!("case=long&q={}", "y".repeat(100_000));
    let head = format!("GET /hello?{query} HTTP/1.1\r\nHost: {addr}");
    assert_eq!(raw_request(port, head.as_bytes()), 200);

    let n = malformed.len() + 5;
    let spans = collector.wait_for_spans(n, WAIT);
    assert_eq!(spans.len(), n, "one span per request, none lost with a bad one in the batch");
    let case = |c: &str| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| {
                let q = s.attr_str("url.query").unwrap_or_default();
                q == format!("case={c}") || q.starts_with(&format!("case={c}&"))
            })
            .unwrap_or_else(|| panic!("no span for case {c}: {spans:#?}"))
    };
    for (i, value) in malformed.iter().enumerate() {
        let s = case(&i.to_string());
        assert_eq!(s.hex("parentSpanId"), "", "{value:?} is ignored");
        assert_ne!(s.hex("traceId"), trace, "{value:?} is ignored");
        assert_eq!(s.name(), "GET /hello");
    }
    let joined = case("future");
    assert_eq!(
        (joined.hex("traceId"), joined.hex("parentSpanId")),
        (trace.into(), "b7ad6b7169203331".into())
    );
    for c in ["big", "many"] {
        let s = case(c);
        assert_eq!((s.name(), s.attr_int("http.response.status_code")), ("GET /hello", Some(200)));
    }
    let utf8 = case("utf8");
    assert_eq!(utf8.attr_str("url.path").as_deref(), Some("/users/\u{fffd}\u{fffd}A"));
    assert_eq!(utf8.name(), "GET /users/{id}");
    let long = case("long").attr_str("url.query").unwrap();
    assert_eq!(long.len(), 256, "cut at the probe's copy");
    assert!(query.starts_with(&long));
}

/// A target's environment holds secrets beside its OTEL_* variables: gotel reads
/// /proc/PID/environ for the resource, keeps only what the resource conventions name, and
/// nothing else leaves it, neither in what it exports nor in its own logs, at debug level.
#[test]
fn a_secret_in_the_targets_environment_never_leaves_the_agent() {
    let Some(()) = privileged() else { return };
    let secret = "s3cr3t-7f1d2c9e";
    let env = [
        ("GOTEL_LOG", "debug"),
        ("DB_PASSWORD", secret),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("OTEL_SERVICE_NAME", "shop"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging"),
    ];
    let (collector, gotel, port, _) = served("secret", &env);
    assert_eq!(http_get(port, "/hello").0, 200);
    let spans = collector.wait_for_spans(1, WAIT);
    assert_eq!(spans.len(), 1);
    // The environment was read: its OTEL_* variables are in the resource.
    assert_eq!(spans[0].resource_str("service.name").as_deref(), Some("shop"));
    assert_eq!(spans[0].resource_str("deployment.environment.name").as_deref(), Some("staging"));
    assert!(!collector.raw().contains(secret), "exported: {}", collector.raw());
    let log = gotel.log();
    assert!(log.iter().any(|l| l.contains("DEBUG")), "the agent logged at debug level");
    assert!(!log.iter().any(|l| l.contains(secret)), "logged: {log:#?}");
}

/// A handler that panics: net/http recovers it and closes the connection (the client gets no
/// response, as without gotel), and the span ends there, an error of type "panic"; under a
/// middleware that recovers it, the span is the 500 the middleware answered. Nothing of a
/// panicked request stays behind: the requests after it get spans of their own, right.
#[test]
fn a_handler_that_panics_gives_an_error_span_and_leaves_nothing_behind() {
    let Some(()) = privileged() else { return };
    let (collector, _gotel, port, addr) = served("panic", &[]);
    for _ in 0..3 {
        let head = format!("GET /panic HTTP/1.1\r\nHost: {addr}");
        assert_eq!(raw_request(port, head.as_bytes()), 0, "no response, as net/http does");
        assert_eq!(http_get(port, "/recovered").0, 500);
        assert_eq!(http_get(port, "/hello").0, 200);
    }
    let spans = collector.wait_for_spans(9, WAIT);
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let of = |path: &str| -> Vec<&ReceivedSpan> {
        spans.iter().filter(|s| s.attr_str("url.path").as_deref() == Some(path)).collect()
    };
    for s in of("/panic") {
        assert_eq!(s.name(), "GET /panic");
        assert_eq!(s.attr_str("error.type").as_deref(), Some("panic"));
        assert_eq!(s.attr_int("http.response.status_code"), None);
        assert_eq!(s.span["status"]["code"], 2, "an error");
    }
    for s in of("/recovered") {
        assert_eq!(s.attr_int("http.response.status_code"), Some(500));
        assert_eq!(s.attr_str("error.type").as_deref(), Some("500"));
    }
    for s in of("/hello") {
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.hex("parentSpanId"), "", "no stale parent");
        assert_eq!(s.span["status"].get("code"), None, "unset");
    }
    let ids: std::collections::HashSet<String> = spans.iter().map(|s| s.hex("traceId")).collect();
    assert_eq!(ids.len(), 9, "each request its own trace");
}

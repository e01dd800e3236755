//! What goes wrong on gotel's side, and what the traced program sees of it: nothing. The ring
//! buffer overflowing while gotel is stopped, a collector that fails, hangs or drops the
//! connection, gotel killed outright and started again. Real uprobes on a real Go program; the
//! collector's faults come from a small server in the test (no collector can be told to fail).

mod support;

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// gotel running the go1.26 httpserver fixture with `env`, exporting to `endpoint`.
fn traced(endpoint: &str, env: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let args = ["run", "--otlp-endpoint", endpoint, "--", fx.to_str().unwrap(), "-addr", &addr];
    let gotel = gotel(&args, None, env);
    wait_for_port(port, WAIT);
    (gotel, port)
}

/// The number before `what` in gotel's exit line ("12 spans, 3 dropped (queue full)"), 0 when
/// the line does not mention it.
fn counted(log: &[String], what: &str) -> u64 {
    let line = log.iter().rev().find(|l| l.contains(" spans")).cloned().unwrap_or_default();
    line.split(", ")
        .flat_map(|part| part.split(": "))
        .find_map(|part| {
            part.strip_suffix(what).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// gotel stopped (SIGSTOP) while the program serves 3,000 requests: its 1 MiB ring buffer
/// fills, the kernel side counts what it could not write, and the program answers every
/// request as before. Resumed, gotel exports what the buffer held, each span its own request's:
/// spans + lost = requests, none wrong.
#[test]
fn a_full_ring_buffer_is_counted_and_no_span_is_wrong() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("ringbuf-full");
    let (mut gotel, port) = traced(
        &collector.http_endpoint(),
        &[("GOTEL_RING_BUFFER_MIB", "1"), ("OTEL_METRICS_EXPORTER", "none")],
    );
    assert_eq!(http_get(port, "/hello").0, 200);
    collector.wait_for_spans(1, WAIT);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(gotel.pid() as i32, libc::SIGSTOP) };
    const N: usize = 3000;
    for i in 0..N {
        assert_eq!(http_get(port, &format!("/users/{i}?i={i}")), (200, format!("user {i}\n")));
    }
    // SAFETY: as above.
    unsafe { libc::kill(gotel.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(1));
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let log = gotel.log();
    let lost = counted(&log, "lost in the kernel (ring buffer full)");
    let spans = counted(&log, "spans");
    assert!(lost > 0, "a 1 MiB buffer cannot hold {N} events: {log:?}");
    assert_eq!(spans + lost, N as u64 + 1, "every request a span or counted lost: {log:?}");
    let received = collector.wait_for_spans(spans as usize, WAIT);
    assert_eq!(received.len() as u64, spans);
    for s in received.iter().filter(|s| s.attr_str("url.path").as_deref() != Some("/hello")) {
        let i = s.attr_str("url.query").unwrap().trim_start_matches("i=").to_string();
        assert_eq!(s.attr_str("url.path"), Some(format!("/users/{i}")), "its own request's path");
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
    }
}

/// How the fake collector fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answers every request with this status (and `Retry-After: 1` on 503).
    Status(u16),
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and closes the connection.
    Close,
}

/// An OTLP/HTTP endpoint that fails every export as `fault`; counts the requests it read.
struct FailingCollector {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl FailingCollector {
    fn start(fault: Fault) -> FailingCollector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || serve_failing(conn, fault, &counter));
            }
        });
        FailingCollector { port, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

fn serve_failing(mut conn: TcpStream, fault: Fault, requests: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    while read_http_message(&mut reader).is_some() {
        requests.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::Status(code) => {
                let retry = if code == 503 { "Retry-After: 1\r\n" } else { "" };
                let head = format!("HTTP/1.1 {code} Failing\r\n{retry}Content-Length: 0\r\n\r\n");
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
            }
            Fault::Hang => {
                // Holds the connection until the client gives up on it.
                let _ = reader.read_to_end(&mut Vec::new());
                return;
            }
            Fault::Close => return,
        }
    }
}

/// `n` requests to the program, each answered as without gotel and fast: the exporter's
/// trouble never reaches the program.
fn serve_unharmed(port: u16, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        assert_eq!(http_get(port, &format!("/users/{i}")), (200, format!("user {i}\n")));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
}

/// A collector that answers 500: not retried (the OTLP spec calls it permanent), dropped and
/// counted as export failures; every span accounted for.
#[test]
fn a_collector_answering_500_costs_counted_drops_and_no_retries() {
    let Some(()) = privileged() else { return };
    let failing = FailingCollector::start(Fault::Status(500));
    let (mut gotel, port) = traced(&failing.endpoint(), &[("OTEL_METRICS_EXPORTER", "none")]);
    serve_unharmed(port, 50);
    std::thread::sleep(Duration::from_millis(500));
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let log = gotel.log();
    assert_eq!(counted(&log, "spans"), 50, "{log:?}");
    assert_eq!(counted(&log, "dropped (export failed)"), 50, "{log:?}");
    let batches = failing.requests();
    assert!((1..=50).contains(&batches), "each batch sent once: {batches}");
}

/// A collector that answers 503 with Retry-After: gotel waits as told and retries, and the
/// spans are dropped and counted when gotel stops; the program never waits.
#[test]
fn a_collector_answering_503_is_retried_after_its_delay() {
    let Some(()) = privileged() else { return };
    let failing = FailingCollector::start(Fault::Status(503));
    let (mut gotel, port) = traced(&failing.endpoint(), &[("OTEL_METRICS_EXPORTER", "none")]);
    serve_unharmed(port, 20);
    std::thread::sleep(Duration::from_millis(3500));
    let tries = failing.requests();
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    // One batch: sent at once, then once a second as Retry-After asks, not every 100-400 ms.
    assert!((2..=5).contains(&tries), "tries in 3.5 s: {tries}");
    let log = gotel.log();
    assert_eq!(counted(&log, "dropped (export failed)"), 20, "{log:?}");
}

/// A collector that accepts and never answers, or closes each connection: the exporter times
/// out and retries with backoff while its queue stays bounded (OTEL_BSP_MAX_QUEUE_SIZE); what
/// has no room is dropped and counted, the kernel side loses nothing, and every span is
/// accounted for at exit.
fn a_stuck_collector(fault: Fault) {
    let Some(()) = privileged() else { return };
    let failing = FailingCollector::start(fault);
    let env = [
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "20"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
    ];
    let (mut gotel, port) = traced(&failing.endpoint(), &env);
    const N: u64 = 200;
    serve_unharmed(port, N as usize);
    std::thread::sleep(Duration::from_secs(2));
    let tries = failing.requests();
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let log = gotel.log();
    let queue_full = counted(&log, "dropped (queue full)");
    let failed = counted(&log, "dropped (export failed)");
    assert_eq!(counted(&log, "spans"), N, "{log:?}");
    assert_eq!(counted(&log, "exported"), 0, "{log:?}");
    assert_eq!(queue_full + failed, N, "every span accounted for: {log:?}");
    assert!(queue_full >= N - 20 - 2 * 10, "the queue held at most its bound: {log:?}");
    assert_eq!(counted(&log, "lost in the kernel (ring buffer full)"), 0, "{log:?}");
    // Retried with backoff: a handful of tries, not a tight loop.
    assert!((2..=15).contains(&tries), "{fault:?}: {tries} tries");
}

#[test]
fn a_collector_that_hangs_costs_bounded_counted_drops() {
    a_stuck_collector(Fault::Hang);
}

#[test]
fn a_collector_that_closes_connections_costs_bounded_counted_drops() {
    a_stuck_collector(Fault::Close);
}

/// Whether the kernel still has any of these program or link ids.
fn any_left(what: &str, ids: &HashSet<u64>) -> bool {
    ids.iter().any(|id| {
        std::process::Command::new("bpftool")
            .args([what, "show", "id", &id.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// gotel SIGKILLed while the program serves a steady stream on a kept-alive connection: the
/// kernel drops every program and link gotel held (the socket layer's sock_ops among them),
/// the connection keeps working, the program's answers stay the same. A gotel started again
/// attaches the same probes once (as many links as the first) and gives each request one span.
#[test]
fn gotel_killed_under_load_and_started_again() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("kill-restart");
    let dir = TempDir::new("kill-restart");
    let exe = dir.0.join("orders");
    std::fs::copy(fixture("httpserver-go1.26"), &exe).unwrap();
    let exe_str = exe.to_str().unwrap().to_string();
    let attach = ["attach", "--exe", exe_str.as_str()];
    let env = [("OTEL_METRICS_EXPORTER", "none")];
    let mut first = gotel(&attach, Some(&collector), &env);
    first.wait_for_log("tracing every process", WAIT);
    let port = free_port();
    let _target = start_fixture(&exe, port);
    wait_for_port(port, WAIT);

    let mut conn = KeptAlive::open(port);
    for i in 0..20 {
        assert_eq!(conn.get(&format!("/users/{i}")), format!("user {i}\n"));
    }
    collector.wait_for_spans(20, WAIT);
    let BpfHeld { progs, links, .. } = bpf_held_by(first.pid());
    assert!(!progs.is_empty() && !links.is_empty(), "gotel holds programs and links");
    let types: HashSet<String> = progs.iter().map(|&id| prog_type(id)).collect();
    assert!(types.contains("sock_ops"), "the socket layer's program among them: {types:?}");

    // Killed between two requests of a stream that does not stop for it.
    let stream = std::thread::spawn(move || {
        for i in 20..400 {
            assert_eq!(conn.get(&format!("/users/{i}")), format!("user {i}\n"));
        }
        conn
    });
    std::thread::sleep(Duration::from_millis(50));
    first.signal_and_wait(libc::SIGKILL, WAIT);
    let mut conn = stream.join().expect("the kept-alive connection served on");
    let deadline = Instant::now() + Duration::from_secs(5);
    while any_left("prog", &progs) || any_left("link", &links) {
        assert!(Instant::now() < deadline, "gotel's programs or links outlived it");
        std::thread::sleep(Duration::from_millis(100));
    }

    let second = gotel(&attach, Some(&collector), &env);
    second.wait_for_log("tracing every process", WAIT);
    for i in 0..30 {
        assert_eq!(conn.get(&format!("/users/{i}?after=restart")), format!("user {i}\n"));
    }
    let restarted = |s: &ReceivedSpan| s.attr_str("url.query").as_deref() == Some("after=restart");
    collector.wait_for_span_count(restarted, 30, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let count = collector.spans().iter().filter(|s| restarted(s)).count();
    assert_eq!(count, 30, "one span a request: no duplicate probes");
    let links_again = bpf_held_by(second.pid()).links;
    assert_eq!(links_again.len(), links.len(), "the same links as the first gotel");
}

/// One HTTP/1.1 connection, kept alive across requests.
struct KeptAlive {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeptAlive {
    fn open(port: u16) -> KeptAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        KeptAlive { stream, reader }
    }

    /// GETs `path` on this connection: the body (every status accepted).
    fn get(&mut self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream.write_all(req.as_bytes()).expect("send on the kept-alive connection");
        let response = read_http_message(&mut self.reader);
        String::from_utf8(response.expect("a response on the kept-alive connection").body).unwrap()
    }
}

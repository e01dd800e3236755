//! Outgoing traceparent at the socket layer: a server gotel does not instrument receives a
//! traceparent that names the client span gotel exported, and every other byte of each
//! request (large, chunked, several on one kept-alive connection) arrives unchanged.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The chain fixture sends, to `recorder`: one GET, three 1 MiB POSTs on one connection, and
/// two chunked 300 kB POSTs. Returns what arrived, the spans exported and gotel's log.
fn send_through_gotel(
    inject: &str,
    recorder: &Recorder,
) -> (Vec<RecordedRequest>, Vec<ReceivedSpan>) {
    let collector = Collector::start(&format!("inject-{inject}"));
    let port = free_port();
    let fx = fixture("chain-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let mut gotel = gotel(
        &["run", "--inject-traceparent", inject, "--", fx.to_str().unwrap(), "-addr", &addr],
        Some(&collector),
        &[],
    );
    wait_for_port(port, WAIT);
    let before = recorder.requests().len();
    let sink = format!("http://127.0.0.1:{}/sink", recorder.port);
    let calls = [
        format!("/fetch?url={sink}"),
        format!("/post?url={sink}&size=1048576&count=3"),
        format!("/post?url={sink}&size=300000&chunked=1&count=2"),
    ];
    for c in &calls {
        assert_eq!(http_get(port, c).0, 200, "{c}");
    }
    let spans = collector.wait_for_spans(9, WAIT);
    assert_eq!(spans.len(), 9, "3 server spans and 6 client spans");
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    if inject != "off" {
        let log = gotel.log().join("\n");
        assert!(
            log.contains(
                "traceparent injected into 6 requests (0 not HTTP/1.x, 0 no room, 0 dropped)"
            ),
            "{log}"
        );
    }
    (recorder.requests()[before..].to_vec(), spans)
}

/// The chain fixture on another host, not traced (gotel run traces only its own child): its
/// /headers echoes the headers a request arrived with.
struct Remote {
    /// Where the server listens, on the other host.
    addr: String,
    headers_url: String,
    _server: Proc,
    host: OtherHost,
}

impl Remote {
    fn start(subnet: u8) -> Remote {
        let host = OtherHost::create(subnet);
        let port = free_port();
        let server = Proc::new(
            host.command(&fixture("chain-go1.26"))
                .args(["-addr", &format!("{}:{port}", host.theirs)])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let addr = format!("{}:{port}", host.theirs);
        let headers_url = format!("http://{addr}/headers");
        Remote { addr, headers_url, _server: server, host }
    }

    /// Has the traced chain fixture at `port` fetch /headers (with `query` added to its
    /// /fetch call), waiting for the remote server to start: what the server received.
    fn fetch_headers(&self, port: u16, query: &str) -> String {
        self.fetch_headers_with(port, query, &[])
    }

    /// `fetch_headers`, the request to the traced fixture carrying `headers`.
    fn fetch_headers_with(&self, port: u16, query: &str, headers: &[(&str, &str)]) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let path = format!("/fetch?url={}{query}", self.headers_url);
            let (status, body) = http_get_with(port, &path, headers);
            if status == 200 {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "{status}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The chain fixture on this host under `gotel run`, exporting to a collector of its own:
/// (the collector, gotel, the fixture's port).
fn traced_chain(tag: &str) -> (Collector, Proc, u16) {
    let collector = Collector::start(tag);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let fx = fixture("chain-go1.26");
    let gotel = gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    (collector, gotel, port)
}

fn without_traceparent(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let Some(start) = text.find("\r\ntraceparent: ") else { return raw.to_vec() };
    let end = start + 2 + text[start + 2..].find("\r\n").unwrap();
    let mut out = raw[..start].to_vec();
    out.extend_from_slice(&raw[end..]);
    out
}

#[test]
fn traceparent_reaches_an_uninstrumented_server_and_nothing_else_changes() {
    let Some(()) = privileged() else { return };
    let recorder = Recorder::start();
    let (with, spans) = send_through_gotel("all", &recorder);
    let (without, spans_off) = send_through_gotel("off", &recorder);
    assert_eq!(spans_off.len(), 9, "with injection off, spans still come");
    assert_eq!(with.len(), 6);
    assert_eq!(without.len(), 6);

    for (w, o) in with.iter().zip(&without) {
        assert!(!o.head.contains("traceparent"), "off means off: {}", o.head);
        // The second line is the inserted one; it names an exported client span.
        let line = w.head.lines().nth(1).unwrap();
        let value = line.strip_prefix("traceparent: ").unwrap_or_else(|| panic!("{}", w.head));
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{value}");
        let client = spans
            .iter()
            .find(|s| s.kind() == 3 && s.hex("spanId") == parts[2])
            .unwrap_or_else(|| panic!("no client span {value}"));
        assert_eq!(client.hex("traceId"), parts[1]);
        assert_eq!(w.head.matches("traceparent").count(), 1);
        // Byte for byte the same request, but for that line.
        assert_eq!(without_traceparent(&w.raw), o.raw, "request bytes changed");
        assert_eq!(w.body, o.body);
    }
    let sizes: Vec<usize> = with.iter().map(|r| r.body.len()).collect();
    assert_eq!(sizes, [0, 1048576, 1048576, 1048576, 300000, 300000]);
    let pattern: Vec<u8> = (0..1048576).map(|i| (i % 251) as u8).collect();
    assert_eq!(with[1].body, pattern, "a 1 MiB body arrives intact");
    assert_eq!(with[4].body, pattern[..300000], "a chunked body arrives intact");
    assert!(
        with[5].raw.windows(9).any(|w| w == b"\r\n\r\n0\r\n\r\n"[..9].as_ref())
            || with[5].head.contains("chunked")
    );
}

/// The default mode injects where the peer is on another host: a server in another network
/// namespace, not instrumented, receives the traceparent; loopback peers do not.
#[test]
fn by_default_only_requests_to_other_hosts_get_a_traceparent() {
    let Some(()) = privileged() else { return };
    let remote = Remote::start(7);
    let local = Recorder::start();
    let (collector, _gotel, port) = traced_chain("inject-remote");
    let echoed = remote.fetch_headers(port, "");
    let line = echoed
        .lines()
        .find_map(|l| l.strip_prefix("Traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent reached the other host: {echoed}"));
    let parts: Vec<&str> = line.split('-').collect();
    assert_eq!(parts.len(), 4, "{line}");
    assert_eq!(http_get(port, &format!("/fetch?url=http://127.0.0.1:{}/x", local.port)).0, 200);
    let spans = collector.wait_for_spans(4, WAIT);
    let client = spans
        .iter()
        .find(|s| s.kind() == 3 && s.hex("spanId") == parts[2])
        .expect("the traceparent names the exported client span");
    assert_eq!(client.hex("traceId"), parts[1]);
    let to_loopback = local.requests();
    assert_eq!(to_loopback.len(), 1);
    assert!(
        !to_loopback[0].head.contains("traceparent"),
        "loopback peers are linked, not injected"
    );
}

/// A request that carries a traceparent already (an SDK in the program set it) gets no second
/// one: the server on the other host receives exactly the program's, and gotel's client span
/// links to the context it names, so the two traces stay joined.
#[test]
fn a_request_with_a_traceparent_of_its_own_gets_no_second_one() {
    let Some(()) = privileged() else { return };
    let remote = Remote::start(8);
    let (collector, mut gotel, port) = traced_chain("inject-own");
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let echoed = remote.fetch_headers(port, &format!("&traceparent={theirs}"));
    let received: Vec<&str> =
        echoed.lines().filter_map(|l| l.strip_prefix("Traceparent: ")).collect();
    assert_eq!(received, [theirs], "exactly the program's own traceparent: {echoed}");
    let spans = collector.wait_for_spans(2, WAIT);
    let client = spans.iter().find(|s| s.kind() == 3).expect("a client span");
    let links = client.span["links"].as_array().cloned().unwrap_or_default();
    assert_eq!(links.len(), 1, "{:?}", client.span);
    assert_eq!(links[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(links[0]["spanId"], "00f067aa0ba902b7");
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let log = gotel.log().join("\n");
    assert!(log.contains("traceparent injected into 0 requests"), "{log}");
    assert!(log.contains("1 with a traceparent of their own"), "{log}");
}

/// Sockets in the injection sockhash, on the kernel under test: a traced Go client's socket to
/// another host gets every readiness wakeup (1000 request/reply rounds, half read at once so
/// only the poller's wakeup brings the reply), and ioctl(FIONREAD) answers on it as gotel's own
/// check at start-up said it would (this machine's kernel answers 0, and gotel warns).
#[test]
fn enrolled_sockets_get_their_wakeups_and_fionread_is_as_reported() {
    let Some(()) = privileged() else { return };
    let remote = Remote::start(9);
    let (_collector, mut gotel, port) = traced_chain("inject-readiness");
    remote.fetch_headers(port, ""); // an HTTP call: the process's sockets are enrolled from now
    let (status, report) = http_get(port, &format!("/readiness?addr={}&n=1000", remote.addr));
    assert_eq!(status, 200, "{report}");
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let log = gotel.log().join("\n");
    assert!(report.contains("stalls=0 "), "{report}");
    let warned = log.contains("answers ioctl(FIONREAD) with 0 on sockets in a sockhash");
    let expected =
        if warned { "fionread_right=0 fionread_wrong=500" } else { "fionread_right=500" };
    assert!(report.contains(expected), "gotel's check ({warned}) against {report}\n{log}");
    assert!(!log.contains("outgoing injection off"), "{log}");
}

/// nginx on the other host as an HTTP/1.1 reverse proxy in front of the server: the
/// traceparent line gotel added passes it, once, and names the exported client span.
#[test]
fn traceparent_passes_an_nginx_proxy() {
    let Some(()) = privileged() else { return };
    let mut remote = Remote::start(10);
    let dir = TempDir::new("inject-nginx");
    let proxy = free_port();
    let server = format!(
        "listen {}:{proxy}; location / {{ proxy_pass http://{}; }}",
        remote.host.theirs, remote.addr
    );
    let _nginx = remote.host.nginx(&dir.0, &server);
    remote.headers_url = format!("http://{}:{proxy}/headers", remote.host.theirs);
    let (collector, _gotel, port) = traced_chain("inject-nginx");
    let echoed = remote.fetch_headers(port, "");
    let received: Vec<&str> =
        echoed.lines().filter_map(|l| l.strip_prefix("Traceparent: ")).collect();
    assert_eq!(received.len(), 1, "{echoed}");
    let parts: Vec<&str> = received[0].split('-').collect();
    let spans = collector.wait_for_spans(2, WAIT);
    let client =
        spans.iter().find(|s| s.kind() == 3 && s.hex("spanId") == parts[2]).unwrap_or_else(|| {
            panic!("the traceparent behind the proxy names no client span: {echoed}")
        });
    assert_eq!(client.hex("traceId"), parts[1]);
}

/// A request that joined a trace with a tracestate: the call its handler makes to another
/// host carries the trace's traceparent (naming gotel's client span) and the tracestate,
/// unchanged.
#[test]
fn the_tracestate_of_a_joined_trace_goes_on_with_the_traceparent() {
    let Some(()) = privileged() else { return };
    let remote = Remote::start(28);
    let (collector, _gotel, port) = traced_chain("inject-tracestate");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let echoed = remote.fetch_headers_with(
        port,
        "",
        &[("traceparent", incoming.as_str()), ("tracestate", state)],
    );
    let parent: Vec<&str> =
        echoed.lines().filter_map(|l| l.strip_prefix("Traceparent: ")).collect();
    let states: Vec<&str> = echoed.lines().filter_map(|l| l.strip_prefix("Tracestate: ")).collect();
    assert_eq!((parent.len(), states.as_slice()), (1, &[state][..]), "{echoed}");
    let parts: Vec<&str> = parent[0].split('-').collect();
    assert_eq!(parts[1], trace, "the incoming trace goes on: {echoed}");
    let spans = collector.wait_for_spans(2, WAIT);
    assert!(
        spans.iter().any(|s| s.kind() == 3 && s.hex("spanId") == parts[2]),
        "the traceparent names gotel's client span: {echoed}"
    );
}

/// A connection the program opened before gotel started is left alone: the request gotel then
/// traces on it reaches the server on the other host with no traceparent, and the exit line
/// counts it. A connection opened after gotel started gets one.
#[test]
fn connections_opened_before_gotel_started_are_left_alone_and_counted() {
    let Some(()) = privileged() else { return };
    let remote = Remote::start(23);
    let port = free_port();
    let mut chain = start_fixture(&fixture("chain-go1.26"), port);
    wait_for_port(port, WAIT);
    let first = remote.fetch_headers(port, ""); // opens the kept-alive connection
    assert!(!first.to_lowercase().contains("traceparent"), "{first}");
    let collector = Collector::start("inject-older-connection");
    let pid = chain.pid().to_string();
    let mut gotel = gotel(&["attach", "--pid", &pid], Some(&collector), &[]);
    gotel.wait_for_log("propagation:", WAIT);
    let on_old = remote.fetch_headers(port, "");
    assert!(!on_old.to_lowercase().contains("traceparent"), "older connection: {on_old}");
    // Eight at once: new connections are dialled under gotel, and the older one, idle, takes
    // whichever requests find it free first (one or more).
    let c = format!("http://{}/c", remote.addr);
    assert_eq!(http_get(port, &format!("/fanout?url={c}&n=8")), (200, "fanout: 8\n".into()));
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    chain.stop(libc::SIGTERM, WAIT);
    let log = gotel.log().join("\n");
    let number_before = |what: &str| -> usize {
        let at = log.find(what).unwrap_or_else(|| panic!("no {what:?} in {log}"));
        log[..at].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let older = number_before("requests on connections opened before gotel started");
    let injected = number_before("requests (0 not HTTP/1.x");
    assert!(older >= 1 && injected >= 1, "{log}");
    assert_eq!(older + injected, 9, "each request injected or counted: {log}");
}

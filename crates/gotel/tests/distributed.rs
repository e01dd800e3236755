//! One trace across services: A -> B -> C (C called from a goroutine of B's handler and from a
//! goroutine that one started), all traced by one gotel, spans checked at a real collector.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

struct Services {
    _procs: Vec<Proc>,
    a_port: u16,
    pids: [u32; 3],
}

/// How A reaches B, and B reaches C.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hops {
    Http,
    Http2OverTls,
    /// HTTP over a unix socket (no 4-tuple: linked through the kernel's socket pair).
    UnixSocket,
}

/// Starts C, B and A from one private copy of the chain fixture (one inode, one attachment),
/// its sockets beside it. A serves plain HTTP on a port; B and C as `hops` says.
fn start_chain(exe: &std::path::Path, hops: Hops) -> Services {
    let (a, b, c) = (free_port(), free_port(), free_port());
    // Where each listens (-addr), and how its caller names it (-next).
    let socket = |port: u16| exe.with_file_name(format!("{port}.sock"));
    let listen = |port: u16| match hops {
        Hops::UnixSocket if port != a => format!("unix:{}", socket(port).display()),
        _ => format!("127.0.0.1:{port}"),
    };
    let url = |port: u16| match hops {
        Hops::UnixSocket => listen(port),
        Hops::Http2OverTls => format!("https://127.0.0.1:{port}"),
        Hops::Http => format!("http://127.0.0.1:{port}"),
    };
    let start = |port: u16, next: Option<u16>| {
        let mut cmd = std::process::Command::new(exe);
        let listen = listen(port);
        cmd.arg("-addr").arg(&listen);
        if let Some(n) = next {
            cmd.arg("-next").arg(url(n));
        }
        if hops == Hops::Http2OverTls && port != a {
            cmd.args(["-tls", "-h2"]);
        }
        let p = Proc::new(cmd.stderr(std::process::Stdio::null()).spawn().unwrap());
        match listen.strip_prefix("unix:") {
            Some(path) => wait_for_unix_socket(std::path::Path::new(path), WAIT),
            None => wait_for_port(port, WAIT),
        }
        p
    };
    let pc = start(c, None);
    let pb = start(b, Some(c));
    let pa = start(a, Some(b));
    let pids = [pa.pid(), pb.pid(), pc.pid()];
    Services { _procs: vec![pc, pb, pa], a_port: a, pids }
}

/// Every request to A must come back as exactly one trace of seven spans, linked right.
fn check_traces(spans: &[ReceivedSpan], requests: usize, pids: [u32; 3]) {
    let mut traces: HashMap<String, Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans {
        traces.entry(s.hex("traceId")).or_default().push(s);
    }
    let complete = traces.values().filter(|t| t.len() == 7).count();
    assert_eq!(traces.len(), requests, "one trace per request ({complete} complete)");
    for (id, t) in &traces {
        assert_eq!(t.len(), 7, "trace {id}: {:#?}", t.iter().map(|s| s.name()).collect::<Vec<_>>());
        let pid = |s: &&ReceivedSpan| s.resource_int("process.pid").unwrap() as u32;
        let find = |kind: i64, service: u32, what: &str| -> Vec<&&ReceivedSpan> {
            t.iter()
                .filter(|s| s.kind() == kind && pid(s) == service)
                .filter(|s| {
                    let text = format!(
                        "{} {}",
                        s.attr_str("url.path").unwrap_or_default(),
                        s.attr_str("url.full").unwrap_or_default()
                    );
                    text.contains(what)
                })
                .collect()
        };
        let [a, b, c] = pids;
        let (server, client) = (2, 3);
        let server_a = find(server, a, "/a");
        assert_eq!(server_a.len(), 1, "trace {id}");
        assert_eq!(server_a[0].hex("parentSpanId"), "", "A is the root");
        let a_to_b = find(client, a, "/b");
        assert_eq!(a_to_b.len(), 1);
        assert_eq!(a_to_b[0].hex("parentSpanId"), server_a[0].hex("spanId"));
        let server_b = find(server, b, "/b");
        assert_eq!(server_b.len(), 1);
        assert_eq!(server_b[0].hex("parentSpanId"), a_to_b[0].hex("spanId"), "across processes");
        for from in ["from=goroutine", "from=nested"] {
            let b_to_c = find(client, b, from);
            assert_eq!(b_to_c.len(), 1, "{from}");
            assert_eq!(b_to_c[0].hex("parentSpanId"), server_b[0].hex("spanId"), "{from}");
            let server_c: Vec<_> = find(server, c, "/c")
                .into_iter()
                .filter(|s| s.attr_str("url.query").as_deref() == Some(from))
                .collect();
            assert_eq!(server_c.len(), 1, "{from}");
            assert_eq!(server_c[0].hex("parentSpanId"), b_to_c[0].hex("spanId"), "{from}");
        }
    }
}

fn chain_under_load(fixture_name: &str, requests: usize) {
    chain_of(fixture_name, Hops::Http, requests);
}

/// `requests` at once through A, B and C from `fixture_name`, B and C reached over `hops`
/// (over HTTP/2, many requests share a connection, told apart by stream id).
fn chain_of(fixture_name: &str, hops: Hops, requests: usize) {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let collector = Collector::start(fixture_name);
    let dir = TempDir::new(&format!("chain-{fixture_name}"));
    let exe = dir.0.join("chain");
    std::fs::copy(fixture(fixture_name), &exe).unwrap();
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    let services = start_chain(&exe, hops);

    let port = services.a_port;
    let clients: Vec<_> =
        (0..requests).map(|_| std::thread::spawn(move || http_get(port, "/a"))).collect();
    for c in clients {
        let (status, body) = c.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.trim(), "a: 200 OK", "the chain answered");
    }
    let spans = collector.wait_for_spans(requests * 7, WAIT);
    check_traces(&spans, requests, services.pids);
    if hops == Hops::Http2OverTls {
        let over_h2 = spans
            .iter()
            .filter(|s| s.attr_str("network.protocol.version").as_deref() == Some("2"))
            .count();
        assert_eq!(over_h2, requests * 6, "A's client, B and C's spans are HTTP/2's");
    }
    eprintln!("{fixture_name}: {requests} requests, {requests} complete traces of 7 spans");
}

/// HTTP/2 over TLS on one host: each server span is the child of the client span whose
/// stream it serves (by connection and stream id), before Go 1.23 (RoundTrip), after, and from
/// Go 1.27 (net/http/internal/http2, where the GC may reuse a Request before it ends: its
/// fields are copied where it begins; before that, such spans read another request).
#[test]
fn http2_over_tls_one_trace_per_request_go1_19() {
    chain_of("chain-go1.19", Hops::Http2OverTls, 50);
}

#[test]
fn http2_over_tls_one_trace_per_request_go1_26_under_200_concurrent() {
    chain_of("chain-go1.26", Hops::Http2OverTls, 200);
}

#[test]
fn http2_over_tls_one_trace_per_request_go1_27_under_200_concurrent() {
    chain_of("chain-go1.27", Hops::Http2OverTls, 200);
}

/// HTTP over unix sockets (as containerd and docker serve): the server span at the other end
/// of the socket pair is the client span's child, 200 requests at once.
#[test]
fn over_unix_sockets_one_trace_per_request_go1_26_under_200_concurrent() {
    chain_of("chain-go1.26", Hops::UnixSocket, 200);
}

#[test]
fn over_unix_sockets_one_trace_per_request_go1_19_stripped() {
    chain_of("chain-go1.19-stripped", Hops::UnixSocket, 50);
}

#[test]
fn one_trace_per_request_across_three_services_go1_22() {
    chain_under_load("chain-go1.22", 50);
}

#[test]
fn one_trace_per_request_across_three_services_go1_26_under_200_concurrent() {
    chain_under_load("chain-go1.26", 200);
}

#[test]
fn one_trace_per_request_across_three_services_stripped() {
    chain_under_load("chain-go1.26-stripped", 50);
}

/// Loaded at a random address: what the probes compare with link-time addresses (the
/// goroutine probe's `go` statement ranges) must allow for the load bias.
#[test]
fn one_trace_per_request_across_three_services_stripped_pie() {
    chain_under_load("chain-go1.27-pie-stripped", 50);
}

/// A W3C traceparent on the incoming request: the whole chain joins that trace, under that
/// parent, with any number of other headers (bucket maps before Go 1.24, swiss tables after).
fn joins_incoming_trace(fixture_name: &str) {
    let Some(()) = privileged() else { return };
    let collector = Collector::start(&format!("tp-{fixture_name}"));
    let dir = TempDir::new(&format!("tp-{fixture_name}"));
    let exe = dir.0.join("chain");
    std::fs::copy(fixture(fixture_name), &exe).unwrap();
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    let services = start_chain(&exe, Hops::Http);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for extra_headers in [0, 12, 60] {
        let parent = format!("00f067aa0ba902{extra_headers:02x}");
        let traceparent = format!("00-{trace}-{parent}-01");
        let names: Vec<String> = (0..extra_headers).map(|i| format!("X-Extra-{i}")).collect();
        let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        headers.push(("traceparent", &traceparent));
        headers.push(("tracestate", "vendor=abc,other=1"));
        let before = collector.spans().len();
        assert_eq!(http_get_with(services.a_port, "/a", &headers).0, 200);
        let spans = collector.wait_for_spans(before + 7, WAIT);
        let mine = &spans[before..];
        assert_eq!(mine.len(), 7);
        assert!(mine.iter().all(|s| s.hex("traceId") == trace), "all in the given trace");
        let root: Vec<_> = mine.iter().filter(|s| s.hex("parentSpanId") == parent).collect();
        assert_eq!(root.len(), 1, "one span is the remote parent's child");
        assert_eq!(root[0].attr_str("url.path").as_deref(), Some("/a"));
        assert_eq!(root[0].span["traceState"], "vendor=abc,other=1", "tracestate kept");
    }
    // 26 header lines, Host among them: before Go 1.24 a third of such maps put one of the two
    // in an overflow bucket, and in any Go now and then a map group ends on a page nothing has
    // written yet (read_window in gotel.h). Both once hid the traceparent.
    let names: Vec<String> = (0..22).map(|i| format!("X-Extra-{i}")).collect();
    let before = collector.spans().len();
    const REQUESTS: usize = 50;
    for i in 0..REQUESTS {
        let traceparent = format!("00-{trace}-{:016x}-01", 0xabc000 + i);
        let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        headers.push(("traceparent", &traceparent));
        headers.push(("tracestate", "vendor=abc,other=1"));
        assert_eq!(http_get_with(services.a_port, "/a", &headers).0, 200);
    }
    let spans = collector.wait_for_spans(before + 7 * REQUESTS, WAIT);
    let roots: Vec<_> = spans[before..]
        .iter()
        .filter(|s| s.hex("parentSpanId").starts_with("0000000000abc"))
        .collect();
    assert_eq!(roots.len(), REQUESTS, "every request's traceparent is found");
    assert!(roots.iter().all(|s| s.span["traceState"] == "vendor=abc,other=1"), "every tracestate");
}

#[test]
fn an_incoming_traceparent_is_joined_go1_22() {
    joins_incoming_trace("chain-go1.22");
}

#[test]
fn an_incoming_traceparent_is_joined_go1_26() {
    joins_incoming_trace("chain-go1.26");
}

/// traceidratio keeps whole traces or nothing, across services; parent-based sampling honours
/// the sampled flag of an incoming traceparent.
#[test]
fn sampling_keeps_whole_traces_and_follows_the_callers_flag() {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let collector = Collector::start("sampling");
    let dir = TempDir::new("sampling");
    let exe = dir.0.join("chain");
    std::fs::copy(fixture("chain-go1.26"), &exe).unwrap();
    let env =
        [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")];
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &env);
    gotel.wait_for_log("tracing every process", WAIT);
    let services = start_chain(&exe, Hops::Http);

    const N: usize = 100;
    for _ in 0..N {
        assert_eq!(http_get(services.a_port, "/a").0, 200);
    }
    // The caller's flag wins over the ratio: 00 drops, 01 keeps.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let sampled = "00-33333333333333333333333333333333-4444444444444444-01";
    assert_eq!(http_get_with(services.a_port, "/a", &[("traceparent", unsampled)]).0, 200);
    assert_eq!(http_get_with(services.a_port, "/a", &[("traceparent", sampled)]).0, 200);
    std::thread::sleep(Duration::from_secs(2));
    let spans = collector.spans();
    let mut traces: HashMap<String, usize> = HashMap::new();
    for s in &spans {
        *traces.entry(s.hex("traceId")).or_default() += 1;
    }
    assert!(traces.values().all(|&n| n == 7), "whole traces only: {traces:?}");
    assert!(!traces.contains_key("11111111111111111111111111111111"), "flag 00 is not sampled");
    assert_eq!(traces.get("33333333333333333333333333333333"), Some(&7), "flag 01 is sampled");
    let kept = traces.len() - 1;
    assert!((25..=75).contains(&kept), "about half of {N} kept: {kept}");
    eprintln!("traceidratio 0.5: kept {kept} of {N} traces, each whole");
}

/// How the xnet fixture's A calls B with golang.org/x/net/http2's client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum XnetClient {
    /// An http2.Transport used directly, over TLS.
    StandaloneTls,
    /// The same, HTTP/2 with prior knowledge on a plain connection (h2c).
    StandaloneH2c,
    /// net/http's Transport upgraded by http2.ConfigureTransport, over TLS: net/http's span,
    /// x/net's streams.
    Configured,
}

/// A and B from one copy of the xnet fixture built against `version`, both traced by one gotel:
/// B serves with `serve` ("-tls" or "-h2c"), A calls it at `scheme`://B with `-client mode`.
struct XnetPair {
    collector: Collector,
    _gotel: Proc,
    a: Proc,
    b: Proc,
    a_port: u16,
    b_port: u16,
    _dir: TempDir,
}

fn start_xnet(version: &str, name: &str, serve: &str, scheme: &str, mode: &str) -> XnetPair {
    let collector = Collector::start(name);
    let dir = TempDir::new(name);
    let exe = dir.0.join("xnet");
    std::fs::copy(fixture(&format!("xnet/xnet-{version}")), &exe).unwrap();
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    let (a_port, b_port) = (free_port(), free_port());
    let start = |args: &[&str]| {
        let child = std::process::Command::new(&exe)
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Proc::new(child)
    };
    let b_addr = format!("127.0.0.1:{b_port}");
    let b = start(&["-addr", &b_addr, serve]);
    wait_for_port(b_port, WAIT);
    let (a_addr, next) = (format!("127.0.0.1:{a_port}"), format!("{scheme}://{b_addr}"));
    let a = start(&["-addr", &a_addr, "-next", &next, "-client", mode]);
    wait_for_port(a_port, WAIT);
    XnetPair { collector, _gotel: gotel, a, b, a_port, b_port, _dir: dir }
}

/// `requests` at once to A's /a, which calls B's /c with x/net's HTTP/2 client (both from the
/// xnet fixture built against `version`): each a trace of A's server span, its CLIENT span
/// (HTTP/2, status 200) and B's server span, the client span's child by connection and stream.
fn xnet_client(version: &str, client: XnetClient, requests: usize) {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let (serve, scheme, mode) = match client {
        XnetClient::StandaloneTls => ("-tls", "https", "standalone"),
        XnetClient::StandaloneH2c => ("-h2c", "http", "standalone"),
        XnetClient::Configured => ("-tls", "https", "configure"),
    };
    let name = format!("xnet-{version}-{client:?}");
    let pair = start_xnet(version, &name, serve, scheme, mode);
    let (a, b, collector) = (pair.a_port, pair.b_port, &pair.collector);
    let (a_pid, b_pid) = (pair.a.pid(), pair.b.pid());

    let calls: Vec<_> =
        (0..requests).map(|_| std::thread::spawn(move || http_get(a, "/a"))).collect();
    for c in calls {
        let (status, body) = c.join().unwrap();
        assert_eq!((status, body.trim()), (200, "a: 200 OK HTTP/2.0"), "A called B over HTTP/2");
    }
    let spans = collector.wait_for_spans(requests * 3, WAIT);
    let mut traces: HashMap<String, Vec<&ReceivedSpan>> = HashMap::new();
    for s in &spans {
        traces.entry(s.hex("traceId")).or_default().push(s);
    }
    assert_eq!(traces.len(), requests, "one trace per request");
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap() as u32;
    for (id, t) in &traces {
        let names: Vec<_> = t.iter().map(|s| s.name()).collect();
        assert_eq!(t.len(), 3, "trace {id}: {names:?}");
        let one = |kind: i64, p: u32| -> &ReceivedSpan {
            let found: Vec<_> = t.iter().filter(|s| s.kind() == kind && pid(s) == p).collect();
            assert_eq!(found.len(), 1, "trace {id}: {names:?}");
            found[0]
        };
        let (server, client_kind) = (2, 3);
        let (a_server, a_client, b_server) =
            (one(server, a_pid), one(client_kind, a_pid), one(server, b_pid));
        assert_eq!(a_client.hex("parentSpanId"), a_server.hex("spanId"), "trace {id}");
        assert_eq!(b_server.hex("parentSpanId"), a_client.hex("spanId"), "by stream, {id}");
        assert_eq!(a_client.name(), "GET");
        assert_eq!(a_client.attr_int("http.response.status_code"), Some(200));
        assert_eq!(a_client.attr_str("network.protocol.version").as_deref(), Some("2"));
        assert_eq!(a_client.attr_str("url.full"), Some(format!("{scheme}://127.0.0.1:{b}/c")));
        assert_eq!(b_server.attr_str("network.protocol.version").as_deref(), Some("2"));
    }
    eprintln!("{name}: {requests} requests, {requests} traces of 3 spans, linked by stream");
}

#[test]
fn xnet_http2_transport_over_tls_oldest() {
    xnet_client("v0.1.0", XnetClient::StandaloneTls, 100);
}

#[test]
fn xnet_http2_configured_transport_over_tls_oldest() {
    xnet_client("v0.1.0", XnetClient::Configured, 100);
}

#[test]
fn xnet_http2_transport_over_tls_newest() {
    xnet_client("v0.63.0", XnetClient::StandaloneTls, 100);
}

#[test]
fn xnet_http2_transport_h2c_newest() {
    xnet_client("v0.63.0", XnetClient::StandaloneH2c, 100);
}

#[test]
fn xnet_http2_configured_transport_over_tls_newest() {
    xnet_client("v0.63.0", XnetClient::Configured, 100);
}

/// On Go 1.27 x/net's Transport hands each request to net/http's own HTTP/2 client
/// (transport_wrap.go): one span still, linked by net/http's streams.
#[test]
fn xnet_http2_transport_over_tls_newest_on_go1_27() {
    xnet_client("v0.63.0+go1.27", XnetClient::StandaloneTls, 100);
}

#[test]
fn xnet_http2_transport_h2c_newest_on_go1_27() {
    xnet_client("v0.63.0+go1.27", XnetClient::StandaloneH2c, 100);
}

#[test]
fn xnet_http2_configured_transport_over_tls_newest_on_go1_27() {
    xnet_client("v0.63.0+go1.27", XnetClient::Configured, 100);
}

/// An HTTP/2 handler that panics (B's /panic, called by A with x/net's client over TLS): the
/// server resets the stream, and B's span ends there, an error of type "panic", the child of
/// A's client span, which failed.
fn an_http2_handler_panics(version: &str) {
    let Some(()) = privileged() else { return };
    let pair = start_xnet(version, &format!("h2-panic-{version}"), "-tls", "https", "standalone");
    let (a, collector) = (pair.a_port, &pair.collector);
    for _ in 0..3 {
        let (status, body) = http_get(a, "/a?to=/panic");
        assert_eq!(status, 200);
        assert!(body.starts_with("a: ") && !body.contains("200 OK"), "the call failed: {body}");
    }
    let spans = collector.wait_for_spans(9, WAIT);
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap() as u32;
    let panicked: Vec<_> = spans.iter().filter(|s| pid(s) == pair.b.pid()).collect();
    assert_eq!(panicked.len(), 3);
    for s in panicked {
        assert_eq!(s.attr_str("url.path").as_deref(), Some("/panic"));
        assert_eq!(s.attr_str("error.type").as_deref(), Some("panic"));
        assert_eq!(s.attr_str("network.protocol.version").as_deref(), Some("2"));
        let parent = spans.iter().find(|p| p.hex("spanId") == s.hex("parentSpanId"));
        let parent = parent.expect("the client span is the parent");
        assert_eq!((parent.kind(), parent.span["status"]["code"].as_i64()), (3, Some(2)));
    }
}

#[test]
fn an_http2_handler_that_panics_gives_an_error_span_go1_26() {
    an_http2_handler_panics("v0.63.0");
}

#[test]
fn an_http2_handler_that_panics_gives_an_error_span_go1_27() {
    an_http2_handler_panics("v0.63.0+go1.27");
}

/// Client calls that fail end their spans where the error comes back: a refused connection
/// (no connection made), a peer that closes without answering (the round trip's error), and
/// a 404 (a successful round trip, which ends on the jump testing its error, with a
/// status). Each client span is the child of the handler that called, and exactly one.
fn failed_calls_end_their_client_spans(version: &str) {
    let Some(()) = privileged() else { return };
    let collector = Collector::start(&format!("client-errors-{version}"));
    let port = free_port();
    let fx = fixture(&format!("chain-go{version}"));
    let addr = format!("127.0.0.1:{port}");
    let gotel = gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    let log = gotel.log().join("\n");
    assert!(log.contains("roundTrip: entry on the stack-check jump, exit on the jump"), "{log}");
    let refused = free_port();
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closing = closer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in closer.incoming().take(1).flatten() {
            let mut head = [0u8; 1024];
            let _ = std::io::Read::read(&mut &conn, &mut head);
        } // dropped: closed without an answer
    });
    let calls = [
        (format!("http://127.0.0.1:{refused}/x"), 502),
        (format!("http://127.0.0.1:{closing}/y"), 502),
        (format!("http://127.0.0.1:{port}/missing"), 200), // /fetch passes the body on
    ];
    for (url, status) in &calls {
        assert_eq!(http_get(port, &format!("/fetch?url={url}")).0, *status, "{url}");
    }
    let spans = collector.wait_for_spans(7, WAIT);
    assert_eq!(spans.len(), 7, "3 /fetch, 3 client, 1 /missing: {spans:#?}");
    let clients: Vec<_> = calls
        .iter()
        .map(|(url, _)| {
            let of_url: Vec<_> = spans
                .iter()
                .filter(|s| s.kind() == 3 && s.attr_str("url.full").as_deref() == Some(url))
                .collect();
            assert_eq!(of_url.len(), 1, "one client span for {url}: {spans:#?}");
            of_url[0]
        })
        .collect();
    for client in &clients {
        let parent = spans.iter().find(|p| p.hex("spanId") == client.hex("parentSpanId"));
        let parent = parent.expect("the /fetch handler's span is the parent");
        assert_eq!(parent.attr_str("url.path").as_deref(), Some("/fetch"));
        assert_eq!(client.status_code(), 2, "an error: {client:#?}");
    }
    let error_type = |i: usize| clients[i].attr_str("error.type");
    assert_eq!(error_type(0).as_deref(), Some("_OTHER"), "refused");
    assert_eq!(error_type(1).as_deref(), Some("_OTHER"), "closed without an answer");
    assert_eq!(error_type(2).as_deref(), Some("404"));
    assert_eq!(clients[2].attr_int("http.response.status_code"), Some(404));
    let missing = spans.iter().find(|s| s.attr_str("url.path").as_deref() == Some("/missing"));
    assert_eq!(missing.unwrap().hex("parentSpanId"), clients[2].hex("spanId"));
}

#[test]
fn failed_calls_end_their_client_spans_go1_19() {
    failed_calls_end_their_client_spans("1.19");
}

#[test]
fn failed_calls_end_their_client_spans_go1_26() {
    failed_calls_end_their_client_spans("1.26");
}

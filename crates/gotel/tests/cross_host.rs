//! Traces across hosts, one gotel per host: separate agents with separate BPF state, the other
//! host a network namespace behind a veth pair. gRPC over h2c: the HEADERS frame a client call
//! sends carries the traceparent its gotel adds, and the server's gotel continues the trace.

mod support;

use std::collections::HashSet;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(30);
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// Waits until something listens at `addr` (on the other host).
fn wait_for_addr(addr: &str) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn grpc_spans(collector: &Collector, kind: i64, n: usize) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans: Vec<ReceivedSpan> = collector
            .spans()
            .into_iter()
            .filter(|s| s.attr_str("rpc.system").is_some() && s.kind() == kind)
            .collect();
        if spans.len() >= n || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server on another host under its own gotel (`attach --exe` on a private copy),
/// listening at `listen` there, exporting to a collector of its own that the client side
/// shares. Dropped in reverse order: the server, its gotel, the host.
struct Greeter {
    /// Where the server listens.
    addr: String,
    _server: Proc,
    _gotel: Proc,
    dir: TempDir,
    collector: Collector,
    host: OtherHost,
}

impl Greeter {
    /// The gRPC fixture `fixture_name`'s server.
    fn start(fixture_name: &str, subnet: u8, listen: Option<&str>, args: &[&str]) -> Greeter {
        let exe = fixture(&format!("grpc/{fixture_name}"));
        Greeter::serve(&exe, fixture_name, subnet, listen, "-serve", args)
    }

    /// `fixture` with `addr_flag` naming where it listens, and `args`.
    fn serve(
        fixture: &std::path::Path,
        name: &str,
        subnet: u8,
        listen: Option<&str>,
        addr_flag: &str,
        args: &[&str],
    ) -> Greeter {
        let host = OtherHost::create(subnet);
        let tag = format!("cross-{name}-{subnet}");
        let collector = Collector::start(&tag);
        let dir = TempDir::new(&tag);
        let exe = dir.0.join("server");
        std::fs::copy(fixture, &exe).unwrap();
        let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
        gotel.wait_for_log("tracing every process", WAIT);
        let addr = listen.map_or_else(|| format!("{}:{}", host.theirs, free_port()), String::from);
        let server = Proc::new(
            host.command(&exe)
                .args([addr_flag, &addr])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        if listen.is_none() {
            wait_for_addr(&addr);
        }
        Greeter { addr, _server: server, _gotel: gotel, dir, collector, host }
    }
}

/// The Greeter of `across_hosts`, and `client_args` run through another gotel on this one
/// (`server_args` for the server): (the client's gotel log, the spans).
fn across_hosts(
    fixture_name: &str,
    subnet: u8,
    (server_args, client_args): (&[&str], &[&str]),
    calls: usize,
) -> (String, Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    let greeter = Greeter::start(fixture_name, subnet, None, server_args);
    let client_exe = fixture(&format!("grpc/{fixture_name}"));
    let mut args = vec!["run", "--", client_exe.to_str().unwrap(), "-client", &greeter.addr];
    args.extend_from_slice(client_args);
    let mut client = gotel(&args, Some(&greeter.collector), &[]);
    let status = client.signal_and_wait(0, WAIT); // no signal: it ends with its calls
    assert!(status.success(), "{:?}", client.log());
    let servers = grpc_spans(&greeter.collector, SERVER, calls);
    let clients = grpc_spans(&greeter.collector, CLIENT, calls);
    (client.log().join("\n"), servers, clients)
}

/// Checks that every call is accounted for: each server span is the child of its own client
/// span where its HEADERS frame got a field, else a root (never a wrong parent), and every
/// stream was injected or counted as left alone for want of room. Returns how many were
/// injected.
fn every_call_accounted(log: &str, servers: &[ReceivedSpan], clients: &[ReceivedSpan]) -> usize {
    let calls = clients.len();
    assert_eq!(servers.len(), calls, "one span per call and side: {log}");
    assert!(servers.iter().all(|s| s.attr_int("rpc.grpc.status_code") == Some(0)), "{log}");
    assert!(!log.contains("made no sense"), "{log}");
    let number_before = |what: &str| -> usize {
        let at = log.find(what).unwrap_or_else(|| panic!("no {what:?} in {log}"));
        let digits = log[..at].trim_end().rsplit(' ').next().unwrap();
        digits.trim_start_matches('(').parse().unwrap()
    };
    let (injected, no_room) = (number_before("HTTP/2 streams"), number_before("no room"));
    if !log.contains("queued in part") {
        assert_eq!(injected + no_room, calls, "every stream injected or counted: {log}");
    }
    let client_ids: HashSet<(String, String)> =
        clients.iter().map(|s| (s.hex("traceId"), s.hex("spanId"))).collect();
    assert_eq!(client_ids.len(), calls, "distinct client spans");
    let children: HashSet<(String, String)> = servers
        .iter()
        .map(|s| (s.hex("traceId"), s.hex("parentSpanId")))
        .filter(|parent| client_ids.contains(parent))
        .collect();
    let roots = servers.iter().filter(|s| s.hex("parentSpanId").is_empty()).count();
    let strays: Vec<_> = servers
        .iter()
        .filter(|s| !s.hex("parentSpanId").is_empty())
        .filter(|s| !client_ids.contains(&(s.hex("traceId"), s.hex("parentSpanId"))))
        .map(|s| (s.hex("traceId"), s.hex("parentSpanId"), s.nanos("startTimeUnixNano")))
        .collect();
    assert!(strays.is_empty(), "server spans under no client span of theirs: {strays:?}");
    assert_eq!((children.len(), roots), (injected, calls - injected), "{log}");
    eprintln!("complete traces: {injected}/{calls}");
    injected
}

/// 200 calls at once on one connection to a server on another host: every server span is the
/// child of its own client span, in its trace, but for calls whose HEADERS went out while the
/// fresh connection's send buffer was too full to add to safely (counted; at least 3 in 4 are
/// linked).
fn h2c_calls_continue_the_trace(fixture_name: &str, subnet: u8) {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let args = ["-n", "200", "-concurrency", "200"];
    let (log, servers, clients) = across_hosts(fixture_name, subnet, (&[], &args), 200);
    let linked = every_call_accounted(&log, &servers, &clients);
    assert!(linked >= 150, "{linked} of 200 calls linked: {log}");
}

#[test]
fn h2c_across_hosts_grpc_v1_40() {
    h2c_calls_continue_the_trace("grpc-v1.40.0", 11);
}

#[test]
fn h2c_across_hosts_grpc_v1_85() {
    h2c_calls_continue_the_trace("grpc-v1.85.0", 12);
}

#[test]
fn h2c_across_hosts_grpc_v1_77_stripped() {
    h2c_calls_continue_the_trace("grpc-v1.77.0-stripped", 13);
}

/// A call whose metadata has a traceparent already gets no second one: the server continues
/// the caller's trace.
#[test]
fn h2c_a_traceparent_of_the_callers_own_is_kept() {
    let Some(()) = privileged() else { return };
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let args = ["-n", "5", "-traceparent", theirs];
    let (log, servers, clients) = across_hosts("grpc-v1.85.0", 14, (&[], &args), 5);
    assert_eq!((servers.len(), clients.len()), (5, 5));
    assert!(log.contains("and 0 HTTP/2 streams"), "{log}");
    assert!(log.contains("5 with a traceparent of their own"), "{log}");
    for s in &servers {
        assert_eq!(s.hex("traceId"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.hex("parentSpanId"), "00f067aa0ba902b7");
    }
    // gotel's client spans link to the context the call carried: the traces stay joined.
    for c in &clients {
        let links = c.span["links"].as_array().cloned().unwrap_or_default();
        assert_eq!(links.len(), 1, "{:?}", c.span);
        assert_eq!(links[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(links[0]["spanId"], "00f067aa0ba902b7");
    }
}

/// 3 MiB each way, 16 calls at once: hundreds of DATA frames per call, their headers cut
/// across sends, around the HEADERS frames that get a field. Every byte arrives as sent (the
/// client checks each reply), no socket loses its place, and every call is accounted for.
/// Alone 32 of 32 are linked; beside the rest of the suite the server reads more slowly, the
/// send buffer is fuller when HEADERS go out, and 18-23 were (the rest counted as no room).
#[test]
fn h2c_large_messages_arrive_byte_exact() {
    let Some(()) = privileged() else { return };
    let args = ["-n", "32", "-concurrency", "16", "-size", "3145728"];
    let (log, servers, clients) = across_hosts("grpc-v1.85.0", 15, (&[], &args), 32);
    let linked = every_call_accounted(&log, &servers, &clients);
    assert!(linked >= 12, "{linked} of 32 calls linked: {log}");
}

/// Send and receive buffers of 64 KiB against 256 KiB messages: the client's writes go out in
/// pieces and the server reads slowly. Where the send buffer is too full to be sure the
/// kernel queues a message whole, nothing is added (counted as no room): a message queued in part is handed back to
/// the program, which would resend bytes already sent if an addition were in the part handed
/// back. Every call succeeds with its bytes intact, no socket loses its place, and each server
/// span is its own client span's child or, where its HEADERS were left alone, a root.
#[test]
fn h2c_small_socket_buffers_never_break_a_call() {
    let Some(()) = privileged() else { return };
    let small = ["-sockbuf", "65536"];
    let args = ["-n", "64", "-concurrency", "16", "-size", "262144", "-sockbuf", "65536"];
    let (log, servers, clients) = across_hosts("grpc-v1.85.0", 16, (&small, &args), 64);
    every_call_accounted(&log, &servers, &clients);
}

/// nginx on the other host as a proxy in front of a gRPC server (`grpc_pass`, h2c on both
/// legs): it forwards the field gotel added to the HEADERS frame as metadata, and the server's
/// gotel continues the trace behind the proxy.
#[test]
fn h2c_through_an_nginx_grpc_proxy() {
    let Some(()) = privileged() else { return };
    let backend = format!("127.0.0.1:{}", free_port());
    let greeter = Greeter::start("grpc-v1.85.0", 17, Some(&backend), &[]);
    let addr = format!("{}:{}", greeter.host.theirs, free_port());
    let server = format!("listen {addr} http2; location / {{ grpc_pass grpc://{backend}; }}");
    let _nginx = greeter.host.nginx(&greeter.dir.0, &server);
    wait_for_addr(&addr);
    let client_exe = fixture("grpc/grpc-v1.85.0");
    let args = ["run", "--", client_exe.to_str().unwrap(), "-client", &addr, "-n", "20"];
    let mut client = gotel(&args, Some(&greeter.collector), &[]);
    assert!(client.signal_and_wait(0, WAIT).success(), "{:?}", client.log());
    let log = client.log().join("\n");
    let servers = grpc_spans(&greeter.collector, SERVER, 20);
    let clients = grpc_spans(&greeter.collector, CLIENT, 20);
    let linked = every_call_accounted(&log, &servers, &clients);
    assert_eq!(linked, 20, "every call through the proxy continues its trace: {log}");
}

/// Streaming calls across hosts: an HTTP request here makes a server-streaming gRPC call to
/// the other host (the fixture's /stream), and the streaming server span there is the child of
/// its client span, itself the child of the HTTP server span.
#[test]
fn h2c_streaming_calls_across_hosts() {
    let Some(()) = privileged() else { return };
    let greeter = Greeter::start("grpc-v1.85.0", 18, None, &[]);
    let port = free_port();
    let front = fixture("grpc/grpc-v1.85.0");
    let http = format!("127.0.0.1:{port}");
    let args =
        ["run", "--", front.to_str().unwrap(), "-http", &http, "-grpc-target", &greeter.addr];
    let _front = gotel(&args, Some(&greeter.collector), &[]);
    wait_for_port(port, WAIT);
    for _ in 0..5 {
        let (status, body) = http_get(port, "/stream?n=3");
        assert_eq!(status, 200, "{body}");
    }
    let servers = grpc_spans(&greeter.collector, SERVER, 5);
    let clients = grpc_spans(&greeter.collector, CLIENT, 5);
    assert_eq!((servers.len(), clients.len()), (5, 5));
    let http_servers: Vec<ReceivedSpan> = greeter
        .collector
        .spans()
        .into_iter()
        .filter(|s| s.kind() == SERVER && s.attr_str("rpc.system").is_none())
        .collect();
    for s in &servers {
        assert!(s.name().ends_with("/Count"), "{}", s.name());
        let client = clients
            .iter()
            .find(|c| c.hex("spanId") == s.hex("parentSpanId"))
            .unwrap_or_else(|| panic!("streaming server span under no client span: {:?}", s.span));
        assert_eq!(client.hex("traceId"), s.hex("traceId"));
        let parent = client.hex("parentSpanId");
        assert!(http_servers.iter().any(|h| h.hex("spanId") == parent), "{:?}", client.span);
    }
}

/// The chain fixture serving HTTPS (HTTP/1.1) on another host under its own gotel, and the
/// chain fixture on this one under another, exporting to the same collector: (the server,
/// the client's gotel, the client's port).
fn https_across_hosts(subnet: u8) -> (Greeter, Proc, u16) {
    let server =
        Greeter::serve(&fixture("chain-go1.26"), "https", subnet, None, "-addr", &["-tls"]);
    let port = free_port();
    let client_exe = fixture("chain-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let args = ["run", "--", client_exe.to_str().unwrap(), "-addr", &addr];
    let client = gotel(&args, Some(&server.collector), &[]);
    wait_for_port(port, WAIT);
    (server, client, port)
}

/// The parent of each server span at `server_port`: the client span (of its trace) that sent
/// its request, or None for a root. Panics on a server span under any other span: a wrong
/// parent is worse than none.
fn https_parents(collector: &Collector, server_port: &str, n: usize) -> Vec<Option<String>> {
    let at_server = |s: &ReceivedSpan| {
        s.kind() == SERVER
            && s.attr_int("server.port").is_some_and(|p| p.to_string() == server_port)
    };
    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let spans = collector.spans();
        let servers = spans.iter().filter(|s| at_server(s)).count();
        let clients = spans.iter().filter(|s| s.kind() == CLIENT).count();
        if (servers >= n && clients >= n) || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let clients: HashSet<(String, String)> = spans
        .iter()
        .filter(|s| s.kind() == CLIENT)
        .map(|s| (s.hex("traceId"), s.hex("spanId")))
        .collect();
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| at_server(s)).collect();
    assert_eq!(servers.len(), n, "one server span per request");
    servers
        .iter()
        .map(|s| {
            let parent = s.hex("parentSpanId");
            if parent.is_empty() {
                return None;
            }
            assert!(clients.contains(&(s.hex("traceId"), parent.clone())), "stray: {:?}", s.span);
            Some(parent)
        })
        .collect()
}

/// HTTP/1.1 over TLS, 200 requests at once, each on a connection of its own, then three
/// 4 MiB POSTs on one kept-alive connection: every server span on the other host is the child
/// of its own client span here (the client span rode in a TCP option its gotel wrote and the
/// server's read), each reply arrives as sent, and the exit line counts what was sent.
#[test]
fn https_requests_continue_the_trace_across_hosts() {
    let Some(()) = privileged() else { return };
    let (server, mut client, port) = https_across_hosts(19);
    let url = format!("https://{}/c", server.addr);
    let (status, body) = http_get(port, &format!("/fanout?url={url}&n=200"));
    assert_eq!((status, body.as_str()), (200, "fanout: 200\n"));
    let (status, body) = http_get(port, &format!("/post?url={url}&size=4194304&count=3"));
    assert_eq!((status, body.as_str()), (200, "posted\n"));
    let server_port = server.addr.rsplit(':').next().unwrap();
    let parents = https_parents(&server.collector, server_port, 203);
    client.signal_and_wait(libc::SIGTERM, WAIT);
    let log = client.log().join("\n");
    let linked = parents.iter().flatten().count();
    let distinct: HashSet<&String> = parents.iter().flatten().collect();
    assert_eq!(distinct.len(), linked, "no client span is the parent of two requests");
    eprintln!("complete traces over TLS: {linked}/203");
    assert!(log.contains(&format!("{linked} TLS requests' spans sent in a TCP option")), "{log}");
    assert!(linked >= 200, "{linked}/203 linked: {log}");
}

/// Server spans that are the child of their own client span (its trace, its id), counted;
/// the rest must be roots. Panics on any other parent, or on two servers under one client.
fn linked_or_roots(servers: &[ReceivedSpan], clients: &[ReceivedSpan]) -> usize {
    assert_eq!(servers.len(), clients.len(), "one span per call and side");
    let client_ids: HashSet<(String, String)> =
        clients.iter().map(|s| (s.hex("traceId"), s.hex("spanId"))).collect();
    let mut parents = HashSet::new();
    for s in servers {
        let parent = s.hex("parentSpanId");
        if parent.is_empty() {
            continue;
        }
        let key = (s.hex("traceId"), parent);
        assert!(client_ids.contains(&key), "under no client span of its call: {:?}", s.span);
        assert!(parents.insert(key), "two server spans under one client span");
    }
    parents.len()
}

/// The number in `log` just before `what`.
fn number_before(log: &str, what: &str) -> usize {
    let at = log.find(what).unwrap_or_else(|| panic!("no {what:?} in {log}"));
    log[..at].trim_end().rsplit(' ').next().unwrap().trim_start_matches('(').parse().unwrap()
}

/// gRPC over TLS, one call at a time: every call's HEADERS go out on a segment of their own,
/// whose TCP option carries the client span (its id tagged with the stream id), and every
/// server span on the other host is its client span's child.
fn grpc_over_tls_one_at_a_time(fixture_name: &str, subnet: u8) {
    let Some(()) = privileged() else { return };
    let args = ["-tls", "-n", "50"];
    let (log, servers, clients) = across_hosts(fixture_name, subnet, (&["-tls"], &args), 50);
    assert!(servers.iter().all(|s| s.attr_int("rpc.grpc.status_code") == Some(0)), "{log}");
    let linked = linked_or_roots(&servers, &clients);
    assert_eq!(linked, 50, "{log}");
    assert_eq!(number_before(&log, "gRPC streams' over TLS sent"), 50, "{log}");
}

#[test]
fn grpc_over_tls_across_hosts_grpc_v1_40() {
    grpc_over_tls_one_at_a_time("grpc-v1.40.0", 20);
}

#[test]
fn grpc_over_tls_across_hosts_grpc_v1_85() {
    grpc_over_tls_one_at_a_time("grpc-v1.85.0", 21);
}

/// 200 calls at once on one TLS connection: a segment carries one option, and a burst of
/// HEADERS shares few segments, so only some calls can be linked. Every call succeeds, each
/// linked server span is under its own client span (never another's), the rest are roots,
/// and the exit line accounts for every stream: sent, passed over for a newer one on its
/// segment, or not queued (queue full).
#[test]
fn grpc_over_tls_200_at_once_links_what_segments_carry() {
    let Some(()) = privileged() else { return };
    let args = ["-tls", "-n", "200", "-concurrency", "200"];
    let (log, servers, clients) = across_hosts("grpc-v1.85.0", 22, (&["-tls"], &args), 200);
    assert!(servers.iter().all(|s| s.attr_int("rpc.grpc.status_code") == Some(0)), "{log}");
    let linked = linked_or_roots(&servers, &clients);
    let sent = number_before(&log, "gRPC streams' over TLS sent");
    let shared = number_before(&log, "sharing a segment");
    let full = number_before(&log, " queue full)");
    assert_eq!(sent + shared + full, 200, "every stream accounted for: {log}");
    assert!(linked <= sent && linked > 0, "{linked} linked, {sent} sent: {log}");
    eprintln!("complete traces, gRPC over TLS, 200 at once: {linked}/200");
}

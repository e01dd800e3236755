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
        Greeter::serve(gotel, &exe, fixture_name, subnet, listen, "-serve", args)
    }

    /// `fixture` with `addr_flag` naming where it listens, and `args`, under a gotel that
    /// `launch` starts.
    fn serve(
        launch: Launch,
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
        let gotel = launch(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
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
    let (injected, no_room) = (number_before(log, "HTTP/2 streams"), number_before(log, "no room"));
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
fn h2c_across_hosts_grpc_v1_14() {
    h2c_calls_continue_the_trace("grpc-v1.14.0", 41);
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

/// How a test starts gotel: [`gotel`], or as an unprivileged user.
type Launch = fn(&[&str], Option<&Collector>, &[(&str, &str)]) -> Proc;

/// The chain fixture serving on another host under its own gotel (`server_args`: HTTPS with
/// HTTP/1.1 only, HTTP/2 too, h2c), and the chain fixture on this one (with `client_args`)
/// under another, exporting to the same collector; both gotels started by `launch`: (the
/// server, the client's gotel, the client's port).
fn chain_across_hosts(
    launch: Launch,
    subnet: u8,
    server_args: &[&str],
    client_args: &[&str],
) -> (Greeter, Proc, u16) {
    let chain = fixture("chain-go1.26");
    let server = Greeter::serve(launch, &chain, "chain", subnet, None, "-addr", server_args);
    let port = free_port();
    let client_exe = fixture("chain-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["run", "--", client_exe.to_str().unwrap(), "-addr", &addr];
    args.extend_from_slice(client_args);
    let client = launch(&args, Some(&server.collector), &[]);
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
    let (server, mut client, port) = chain_across_hosts(gotel, 19, &["-tls"], &[]);
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

/// The same as a user holding only the capabilities the README documents, on both hosts:
/// gotel attaches to root's processes, and the client span rides in the TCP option all the
/// same (CAP_NET_ADMIN lets gotel attach its socket-layer program).
#[test]
fn https_across_hosts_as_nobody_with_the_documented_capabilities() {
    let Some(()) = privileged() else { return };
    let as_nobody: Launch =
        |args, collector, env| gotel_as_nobody(DOCUMENTED_CAPS, args, collector, env);
    let (server, mut client, port) = chain_across_hosts(as_nobody, 37, &["-tls"], &[]);
    let url = format!("https://{}/c", server.addr);
    let (status, body) = http_get(port, &format!("/fanout?url={url}&n=50"));
    assert_eq!((status, body.as_str()), (200, "fanout: 50\n"));
    let server_port = server.addr.rsplit(':').next().unwrap();
    let parents = https_parents(&server.collector, server_port, 50);
    client.signal_and_wait(libc::SIGTERM, WAIT);
    let log = client.log().join("\n");
    assert!(!log.contains("without CAP_"), "nothing is missing: {log}");
    let linked = parents.iter().flatten().count();
    assert!(log.contains(&format!("{linked} TLS requests' spans sent in a TCP option")), "{log}");
    eprintln!("complete traces over TLS as nobody: {linked}/50");
    assert!(linked >= 48, "{linked}/50 linked: {log}");
}

/// nginx terminating TLS on the other host, in front of the HTTPS server there: the TCP
/// option rides only to nginx, so the server behind it makes root spans; every request still
/// succeeds, and none is put under a client span that did not send it.
#[test]
fn https_through_a_tls_terminating_proxy_makes_roots_and_breaks_nothing() {
    let Some(()) = privileged() else { return };
    let (server, mut client, port) = chain_across_hosts(gotel, 27, &["-tls"], &[]);
    let dir = &server.dir.0;
    let (cert, key) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=gotel-proxy", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl made no certificate");
    let proxy = format!("{}:{}", server.host.theirs, free_port());
    let conf = format!(
        "listen {proxy} ssl; ssl_certificate {}; ssl_certificate_key {}; \
         location / {{ proxy_pass https://{}; }}",
        cert.display(),
        key.display(),
        server.addr
    );
    let _nginx = server.host.nginx(dir, &conf);
    wait_for_addr(&proxy);
    let (status, body) = http_get(port, &format!("/fanout?url=https://{proxy}/c&n=50"));
    assert_eq!((status, body.as_str()), (200, "fanout: 50\n"));
    let server_port = server.addr.rsplit(':').next().unwrap();
    let parents = https_parents(&server.collector, server_port, 50);
    client.signal_and_wait(libc::SIGTERM, WAIT);
    let log = client.log().join("\n");
    assert_eq!(parents.iter().flatten().count(), 0, "behind the proxy, roots: {log}");
    assert_eq!(number_before(&log, "TLS requests' spans sent"), 50, "{log}");
}

/// Through the client chain at `port`, to `server`'s /c over `scheme`: three 4 MiB POSTs and
/// 50 small ones, one after another, then 200 GETs at once, every reply as sent. Returns the
/// server's port and the parents of the first 53 server spans.
fn one_at_a_time_then_200<'s>(
    server: &'s Greeter,
    port: u16,
    scheme: &str,
) -> (&'s str, Vec<Option<String>>) {
    let url = format!("{scheme}://{}/c", server.addr);
    let (status, body) = http_get(port, &format!("/post?url={url}&size=4194304&count=3"));
    assert_eq!((status, body.as_str()), (200, "posted\n"));
    let (status, body) = http_get(port, &format!("/post?url={url}&size=10&count=50"));
    assert_eq!((status, body.as_str()), (200, "posted\n"));
    let server_port = server.addr.rsplit(':').next().unwrap();
    let one_at_a_time = https_parents(&server.collector, server_port, 53);
    let (status, body) = http_get(port, &format!("/fanout?url={url}&n=200"));
    assert_eq!((status, body.as_str()), (200, "fanout: 200\n"));
    (server_port, one_at_a_time)
}

/// HTTP/2 over TLS between net/http's client and server on two hosts: 53 requests one after
/// another on one connection (three of them 4 MiB POSTs), each of whose HEADERS rides a segment
/// whose TCP option carries its client span, tagged with the stream id: every server span is
/// its client span's child. Then 200 at once on that connection: every reply arrives as sent,
/// a linked server span is under its own client span, never another's, and the exit line
/// accounts for every stream (sent, passed over for a newer one on its segment, queue full).
#[test]
fn http2_over_tls_continues_the_trace_across_hosts() {
    let Some(()) = privileged() else { return };
    let (server, mut client, port) = chain_across_hosts(gotel, 24, &["-tls", "-h2"], &[]);
    let (server_port, one_at_a_time) = one_at_a_time_then_200(&server, port, "https");
    let parents = https_parents(&server.collector, server_port, 253);
    client.signal_and_wait(libc::SIGTERM, WAIT);
    let log = client.log().join("\n");
    let servers: Vec<ReceivedSpan> = server
        .collector
        .spans()
        .into_iter()
        .filter(|s| {
            s.kind() == SERVER && s.attr_str("network.protocol.version").as_deref() == Some("2")
        })
        .collect();
    assert_eq!(servers.len(), 253, "every request went over HTTP/2: {log}");
    let linked = |p: &[Option<String>]| p.iter().flatten().collect::<HashSet<_>>().len();
    assert_eq!(linked(&one_at_a_time), 53, "one at a time, all linked: {log}");
    assert_eq!(parents.iter().flatten().count(), linked(&parents), "two under one client span");
    let at_once = linked(&parents) - 53;
    let sent = number_before(&log, "HTTP/2 streams' over TLS sent");
    let shared = number_before(&log, "sharing a segment");
    let full = number_before(&log, " queue full)");
    assert_eq!(sent + shared + full, 253, "every stream accounted for: {log}");
    assert!(at_once > 0 && at_once + 53 <= sent, "{at_once} linked, {sent} sent: {log}");
    eprintln!("complete traces, HTTP/2 over TLS: 53/53 one at a time, {at_once}/200 at once");
}

/// net/http's HTTP/2 without TLS (h2c, Go 1.24's Protocols) on both hosts: each stream's
/// HEADERS frame gets a traceparent field, and a tracestate where the trace has one (the reply
/// from /headers shows the server read them),
/// 53 one after another all linked, then 200 at once on the connection: every reply as sent,
/// every stream injected or counted as left alone for want of room, no wrong parent.
#[test]
fn net_http_h2c_continues_the_trace_across_hosts() {
    let Some(()) = privileged() else { return };
    let (server, mut client, port) = chain_across_hosts(gotel, 25, &["-h2c"], &["-h2c"]);
    let (server_port, one_at_a_time) = one_at_a_time_then_200(&server, port, "http");
    // A trace joined with a tracestate over 127 bytes (an HPACK length of two bytes).
    let state = format!("congo={},rojo=00f067aa0ba902b7", "t61rcWkgMzE".repeat(15));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, headers) = http_get_with(
        port,
        &format!("/fetch?url=http://{}/headers", server.addr),
        &[("traceparent", incoming), ("tracestate", &state)],
    );
    assert_eq!(status, 200);
    assert!(headers.contains(&format!("Tracestate: {state}\n")), "{headers}");
    let parents = https_parents(&server.collector, server_port, 254);
    client.signal_and_wait(libc::SIGTERM, WAIT);
    let log = client.log().join("\n");
    assert!(headers.lines().any(|l| l.starts_with("Traceparent: 00-")), "{headers}");
    let linked = |p: &[Option<String>]| p.iter().flatten().collect::<HashSet<_>>().len();
    assert_eq!(linked(&one_at_a_time), 53, "one at a time, all linked: {log}");
    assert_eq!(parents.iter().flatten().count(), linked(&parents), "two under one client span");
    let (injected, no_room) =
        (number_before(&log, "HTTP/2 streams"), number_before(&log, "no room"));
    assert_eq!(injected + no_room, 254, "every stream injected or counted: {log}");
    assert_eq!(linked(&parents), injected, "{log}");
    assert!(!log.contains("made no sense"), "{log}");
    eprintln!("complete traces, net/http h2c: 53/53 one at a time, {}/200 at once", injected - 54);
}

/// A W3C-aware server that is neither Go nor gotel's, on another host with no gotel: Python,
/// grpcio for gRPC over h2c and the standard library for HTTP/1.1, each request's context
/// read by OpenTelemetry's own propagator. 50 gRPC calls (8 at once) and 50 HTTP requests (at
/// once) from Go programs under gotel here: every traceparent it received parses, and names
/// the gotel client span that sent it; every call got one or was counted as left alone.
#[test]
fn a_python_server_reads_the_injected_traceparent() {
    let Some(()) = privileged() else { return };
    let host = OtherHost::create(26);
    let dir = TempDir::new("interop");
    let record = dir.0.join("requests.jsonl");
    let grpc_addr = format!("{}:{}", host.theirs, free_port());
    let http_addr = format!("{}:{}", host.theirs, free_port());
    let (python, script) = interop_server();
    let _server = Proc::new(
        host.command(&python)
            .arg(script)
            .args(["--grpc", &grpc_addr, "--http", &http_addr])
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_addr(&grpc_addr);
    wait_for_addr(&http_addr);
    let collector = Collector::start("interop");

    let grpc_exe = fixture("grpc/grpc-v1.85.0");
    let args = ["-client", &grpc_addr, "-n", "50", "-concurrency", "8"];
    let mut grpc_client = gotel(
        &[&["run", "--", grpc_exe.to_str().unwrap()], &args[..]].concat(),
        Some(&collector),
        &[],
    );
    assert!(grpc_client.signal_and_wait(0, WAIT).success(), "{:?}", grpc_client.log());
    let grpc_log = grpc_client.log().join("\n");

    let port = free_port();
    let chain_exe = fixture("chain-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let mut chain =
        gotel(&["run", "--", chain_exe.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    let (status, body) = http_get(port, &format!("/fanout?url=http://{http_addr}/c&n=50"));
    assert_eq!((status, body.as_str()), (200, "fanout: 50\n"));
    chain.signal_and_wait(libc::SIGTERM, WAIT);
    let http_log = chain.log().join("\n");

    let clients: HashSet<(String, String)> = collector
        .wait_for_spans(100, WAIT)
        .iter()
        .filter(|s| s.kind() == CLIENT)
        .map(|s| (s.hex("traceId"), s.hex("spanId")))
        .collect();
    assert_eq!(clients.len(), 100, "a client span per call");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (protocol, injected) in [
        ("grpc", number_before(&grpc_log, "HTTP/2 streams")),
        ("http", number_before(&http_log, "requests (")),
    ] {
        let received: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["protocol"] == protocol).collect();
        assert_eq!(received.len(), 50, "{protocol}: every request reached the server");
        let carried: Vec<_> = received.iter().filter(|r| !r["traceparent"].is_null()).collect();
        for r in &carried {
            assert_eq!(r["valid"], true, "{protocol}: the propagator parsed it: {r}");
            let ids =
                (r["trace_id"].as_str().unwrap().into(), r["span_id"].as_str().unwrap().into());
            assert!(clients.contains(&ids), "{protocol}: names no client span of gotel's: {r}");
        }
        assert_eq!(carried.len(), injected, "{protocol}: as the exit line counts");
        assert!(injected >= 38, "{protocol}: {injected}/50 carried a traceparent");
        eprintln!("interop, {protocol}: {injected}/50 received a traceparent, each parsed right");
    }
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
    assert_eq!(number_before(&log, "HTTP/2 streams' over TLS sent"), 50, "{log}");
}

/// grpc before 1.17 holds a TLS connection as a credentials.tlsConn value.
#[test]
fn grpc_over_tls_across_hosts_grpc_v1_14() {
    grpc_over_tls_one_at_a_time("grpc-v1.14.0", 42);
}

/// grpc 1.17 to 1.31 wraps it in credentials/internal.syscallConn.
#[test]
fn grpc_over_tls_across_hosts_grpc_v1_24() {
    grpc_over_tls_one_at_a_time("grpc-v1.24.0-stripped", 43);
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
    let sent = number_before(&log, "HTTP/2 streams' over TLS sent");
    let shared = number_before(&log, "sharing a segment");
    let full = number_before(&log, " queue full)");
    assert_eq!(sent + shared + full, 200, "every stream accounted for: {log}");
    assert!(linked <= sent && linked > 0, "{linked} linked, {sent} sent: {log}");
    eprintln!("complete traces, gRPC over TLS, 200 at once: {linked}/200");
}

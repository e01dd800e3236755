//! gRPC spans end to end, on fixtures built against several grpc-go versions
//! (scripts/build-grpc-fixtures.sh): server and client spans of unary and server-streaming
//! RPCs, OK and error statuses, client and server linked on one host through the HTTP/2 stream,
//! 200 concurrent calls, stripped builds, and HTTP -> gRPC -> HTTP in one trace.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const SAY_HELLO: &str = "demo.Greeter/SayHello";
const COUNT: &str = "demo.Greeter/Count";

fn grpc_fixture(name: &str) -> PathBuf {
    fixture(&format!("grpc/{name}"))
}

/// A private copy of the gRPC fixture `fixture_name` under `gotel attach --exe`, exporting to a
/// collector of its own (`tag`): (the collector, the copy's directory, the copy, gotel).
fn attached_copy(tag: &str, fixture_name: &str) -> (Collector, TempDir, PathBuf, Proc) {
    let collector = Collector::start(tag);
    let dir = TempDir::new(tag);
    let exe = dir.0.join("greeter");
    std::fs::copy(grpc_fixture(fixture_name), &exe).unwrap();
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    (collector, dir, exe, gotel)
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// The gRPC spans of one kind the collector has, in arrival order.
fn grpc_spans(collector: &Collector, kind: i64) -> Vec<ReceivedSpan> {
    let spans = collector.spans().into_iter();
    spans.filter(|s| s.attr_str("rpc.system").is_some() && s.kind() == kind).collect()
}

/// Waits until `servers` server spans and `clients` client spans are in (or the time is up);
/// returns (servers, clients). The two sides of a call may arrive in different export batches.
fn wait_for_grpc_spans(
    collector: &Collector,
    servers: usize,
    clients: usize,
) -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = (grpc_spans(collector, SERVER), grpc_spans(collector, CLIENT));
        let all_in = found.0.len() >= servers && found.1.len() >= clients;
        if all_in || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every kind of RPC the fixture makes, through its HTTP front, and 200 concurrent calls.
fn rpcs_become_linked_spans(fixture_name: &str) {
    let Some(()) = privileged() else { return };
    let (collector, _dir, exe, gotel) =
        attached_copy(&format!("grpc-{fixture_name}"), fixture_name);
    assert!(gotel.log().join("\n").contains("attached gRPC server"), "{:?}", gotel.log());

    let (grpc_port, http_port) = (free_port(), free_port());
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let _server = start_program(&exe, &["-serve", &grpc_addr]);
    let _front = start_program(
        &exe,
        &["-http", &format!("127.0.0.1:{http_port}"), "-grpc-target", &grpc_addr],
    );
    wait_for_port(grpc_port, WAIT);
    wait_for_port(http_port, WAIT);

    // (request to the front, span name, gRPC status code, span is an error)
    let cases = [
        ("/call?name=alice", SAY_HELLO, 0, false),
        ("/call?name=missing", SAY_HELLO, 5, false), // NOT_FOUND is the caller's problem
        ("/call?name=boom", SAY_HELLO, 13, true),    // INTERNAL is the server's
        ("/stream?n=3", COUNT, 0, false),
        ("/stream?n=5&fail=2", COUNT, 3, false), // INVALID_ARGUMENT after 2 messages
    ];
    for (i, (path, name, code, server_error)) in cases.iter().enumerate() {
        http_get(http_port, path);
        let (servers, clients) = wait_for_grpc_spans(&collector, i + 1, i + 1);
        assert_eq!(servers.len(), i + 1, "{path}: one gRPC server span");
        assert_eq!(clients.len(), i + 1, "{path}: one gRPC client span");
        let method = name.rsplit('/').next().unwrap();
        for s in [&servers[i], &clients[i]] {
            assert_eq!(s.name(), *name, "{path}");
            assert_eq!(s.attr_str("rpc.system").as_deref(), Some("grpc"));
            assert_eq!(s.attr_str("rpc.service").as_deref(), Some("demo.Greeter"));
            assert_eq!(s.attr_str("rpc.method").as_deref(), Some(method));
            assert_eq!(s.attr_int("rpc.grpc.status_code"), Some(*code), "{path}");
            assert_eq!(s.attr_int("server.port"), Some(i64::from(grpc_port)));
            assert!(s.duration() > Duration::ZERO && s.duration() < WAIT);
        }
        let (server, client) = (&servers[i], &clients[i]);
        assert_eq!(server.status_code() == 2, *server_error, "{path}: server status");
        assert_eq!(client.status_code() == 2, *code != 0, "{path}: client status");
        assert_eq!(server.attr_str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(client.attr_str("server.address").as_deref(), Some("127.0.0.1"));
        // One host: the server span is the client span's child, found through the stream.
        assert_eq!(server.hex("parentSpanId"), client.hex("spanId"), "{path}: linked");
        assert_eq!(server.hex("traceId"), client.hex("traceId"), "{path}: one trace");
        // The client call is a child of the HTTP request the front was serving.
        let front = collector
            .wait_for_span(|s| s.hex("spanId") == client.hex("parentSpanId"), WAIT)
            .unwrap_or_else(|| panic!("{path}: the client span's parent is exported"));
        assert_eq!(front.attr_str("url.path").as_deref(), path.split('?').next());
    }

    // 200 calls in flight at once: one server and one client span each, pairwise linked.
    let out = Command::new(&exe)
        .args(["-client", &grpc_addr, "-n", "200", "-concurrency", "200"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (servers, clients) = wait_for_grpc_spans(&collector, cases.len() + 200, cases.len() + 200);
    pairwise_linked(&servers[cases.len()..], &clients[cases.len()..], 200);
}

/// `n` calls, all OK: one server and one client span each, each server span's parent its own
/// client span.
fn pairwise_linked(servers: &[ReceivedSpan], clients: &[ReceivedSpan], n: usize) {
    assert_eq!((servers.len(), clients.len()), (n, n), "one span per call and side");
    assert!(servers.iter().chain(clients).all(|s| s.attr_int("rpc.grpc.status_code") == Some(0)));
    let client_ids: std::collections::HashSet<String> =
        clients.iter().map(|s| s.hex("spanId")).collect();
    assert_eq!(client_ids.len(), n, "distinct client spans");
    let parents: std::collections::HashSet<String> =
        servers.iter().map(|s| s.hex("parentSpanId")).collect();
    assert_eq!(parents, client_ids, "each server span's parent is its own client span");
}

/// gRPC over a unix socket (as containerd serves): 100 calls, 8 at a time, pairwise linked on
/// the socket pair (no 4-tuple: the kernel's two sockets key it); and counted in the RPC
/// duration histograms and the service graph.
#[test]
fn grpc_over_a_unix_socket_v1_85() {
    let Some(()) = privileged() else { return };
    let (collector, dir, exe, mut gotel) = attached_copy("grpc-unix", "grpc-v1.85.0");
    let path = dir.0.join("greeter.sock");
    let socket = format!("unix:{}", path.display());
    let _server = start_program(&exe, &["-serve", &socket]);
    wait_for_unix_socket(&path, WAIT);
    let out = Command::new(&exe)
        .args(["-client", &socket, "-n", "100", "-concurrency", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (servers, clients) = wait_for_grpc_spans(&collector, 100, 100);
    pairwise_linked(&servers, &clients, 100);

    // The last export at exit carries every call (cumulative: the last point of a series).
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
    let points = collector.settled_metric_points();
    let counts = series_counts(&points, |p| (p.metric.clone(), format!("{:?}", p.attributes)));
    for p in &points {
        if p.metric.starts_with("rpc.") {
            assert_eq!(p.unit, "ms");
            assert_eq!(p.attr_str("rpc.system").as_deref(), Some("grpc"), "{p:?}");
            assert_eq!(p.attr("rpc.grpc.status_code"), Some(0.into()), "{p:?}");
        }
    }
    let total = |metric: &str| -> u64 {
        counts.iter().filter(|((m, _), _)| m == metric).map(|(_, n)| n).sum()
    };
    assert_eq!(total("rpc.server.duration"), 100, "{counts:#?}");
    assert_eq!(total("rpc.client.duration"), 100, "{counts:#?}");
    assert_eq!(total("traces_service_graph_request_total"), 100, "client and server paired");
}

// grpc-go before 1.40 (fixtures/grpc/RESEARCH.md, "Before v1.40"): the first and last version
// of each layout gotel reads, built with Go 1.19.

#[test]
fn grpc_oldest_supported_v1_14() {
    rpcs_become_linked_spans("grpc-v1.14.0");
}

#[test]
fn grpc_v1_16_last_with_the_tls_conn_value() {
    rpcs_become_linked_spans("grpc-v1.16.0-stripped");
}

#[test]
fn grpc_v1_17_first_with_syscall_conn() {
    rpcs_become_linked_spans("grpc-v1.17.0");
}

#[test]
fn grpc_v1_24_last_without_the_streams_transport() {
    rpcs_become_linked_spans("grpc-v1.24.0-stripped");
}

#[test]
fn grpc_v1_25_first_with_the_streams_transport() {
    rpcs_become_linked_spans("grpc-v1.25.0");
}

#[test]
fn grpc_v1_28_last_with_the_public_status() {
    rpcs_become_linked_spans("grpc-v1.28.0");
}

#[test]
fn grpc_v1_29_first_with_internal_status() {
    rpcs_become_linked_spans("grpc-v1.29.0-stripped");
}

#[test]
fn grpc_v1_31_last_with_credentials_internal() {
    rpcs_become_linked_spans("grpc-v1.31.1");
}

#[test]
fn grpc_v1_32_first_with_internal_credentials() {
    rpcs_become_linked_spans("grpc-v1.32.0");
}

#[test]
fn grpc_v1_39_last_before_1_40() {
    rpcs_become_linked_spans("grpc-v1.39.1-stripped");
}

#[test]
fn grpc_v1_40() {
    rpcs_become_linked_spans("grpc-v1.40.0");
}

#[test]
fn grpc_v1_66_first_with_the_transport_interface_on_the_stream() {
    rpcs_become_linked_spans("grpc-v1.66.2");
}

#[test]
fn grpc_v1_68_last_with_one_stream_type() {
    rpcs_become_linked_spans("grpc-v1.68.1");
}

#[test]
fn grpc_v1_69_server_stream_split() {
    rpcs_become_linked_spans("grpc-v1.69.0");
}

#[test]
fn grpc_v1_71_first_with_csattempt_transport_stream() {
    rpcs_become_linked_spans("grpc-v1.71.0");
}

#[test]
fn grpc_v1_76_last_with_the_stream_by_pointer() {
    rpcs_become_linked_spans("grpc-v1.76.0");
}

#[test]
fn grpc_newest_v1_85() {
    rpcs_become_linked_spans("grpc-v1.85.0");
}

#[test]
fn grpc_stripped_v1_77_stream_by_value() {
    rpcs_become_linked_spans("grpc-v1.77.0-stripped");
}

/// A distribution's build: GOPATH mode, grpc-go a package under GOPATH/src (or, `vendored`,
/// under the project's vendor directory), stripped, so buildinfo lists no modules
/// (scripts/build-gopath-fixture.sh). The version is read from the grpc-go user agent string the
/// binary carries, and every kind of RPC is traced and linked.
fn gopath_build(version: &str, vendored: bool) {
    let fixture_name = format!("grpc-v{version}-gopath{}", if vendored { "-vendor" } else { "" });
    let text = inspect(&grpc_fixture(&fixture_name));
    assert!(text.contains("modules        (none)"), "{text}");
    let vendor_line = "vendored       gotel.dev/grpc/vendor/... (GOPATH mode";
    assert_eq!(text.contains(vendor_line), vendored, "{text}");
    let learned = format!(
        "library google.golang.org/grpc v{version} (from grpc.Version, in grpc-go's user agent \
         string in the binary)"
    );
    assert_eq!(text.matches(&learned).count(), 2, "server and client: {text}");
    rpcs_become_linked_spans(&fixture_name);
}

#[test]
fn grpc_gopath_build_with_no_modules_v1_60() {
    gopath_build("1.60.1", false);
}

/// As Debian 12 builds: its grpc-go 1.33 with its Go 1.19.
#[test]
fn grpc_gopath_build_as_debian_12_v1_33_go1_19() {
    gopath_build("1.33.3", false);
}

/// Vendored before modules: every grpc-go symbol and type is named
/// "gotel.dev/grpc/vendor/google.golang.org/grpc...".
#[test]
fn grpc_gopath_vendored_v1_33() {
    gopath_build("1.33.3", true);
}

/// HTTP -> gRPC -> HTTP, one trace: the front's gRPC call is its HTTP span's child, the gRPC
/// server span the call's child, and the handler's HTTP call and the server it reaches follow.
#[test]
fn a_grpc_handlers_http_call_is_its_child() {
    let Some(()) = privileged() else { return };
    let (collector, _dir, exe, _gotel) = attached_copy("grpc-chain", "grpc-v1.85.0");
    let (grpc_port, http_port) = (free_port(), free_port());
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let next = format!("http://127.0.0.1:{http_port}/hello");
    let _server = start_program(&exe, &["-serve", &grpc_addr, "-next", &next]);
    let _front = start_program(
        &exe,
        &["-http", &format!("127.0.0.1:{http_port}"), "-grpc-target", &grpc_addr],
    );
    wait_for_port(grpc_port, WAIT);
    wait_for_port(http_port, WAIT);
    http_get(http_port, "/call?name=chain");
    // front /call (HTTP server), its gRPC client span, SayHello (gRPC server), the handler's
    // GET (HTTP client), /hello (HTTP server)
    let spans = collector.wait_for_spans(5, WAIT);
    let call = spans
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/call"))
        .expect("the front's /call span");
    let grpc_client = spans
        .iter()
        .find(|s| s.name() == SAY_HELLO && s.kind() == CLIENT)
        .expect("the gRPC client span");
    let grpc = spans
        .iter()
        .find(|s| s.name() == SAY_HELLO && s.kind() == SERVER)
        .expect("the gRPC server span");
    let client = spans
        .iter()
        .find(|s| s.kind() == CLIENT && s.attr_str("rpc.system").is_none())
        .expect("the handler's HTTP client span");
    assert_eq!(grpc_client.hex("parentSpanId"), call.hex("spanId"), "HTTP -> gRPC");
    assert_eq!(grpc.hex("parentSpanId"), grpc_client.hex("spanId"), "gRPC client -> server");
    assert_eq!(grpc.hex("traceId"), call.hex("traceId"), "one trace from the first hop");
    let hello = spans
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/hello"))
        .expect("the /hello server span");
    assert_eq!(client.hex("parentSpanId"), grpc.hex("spanId"), "in-process child");
    assert_eq!(client.hex("traceId"), grpc.hex("traceId"));
    assert_eq!(hello.hex("parentSpanId"), client.hex("spanId"), "same-host child");
    assert_eq!(hello.hex("traceId"), grpc.hex("traceId"), "one trace across the hops");
}

/// A caller gotel does not trace sends a W3C traceparent in its metadata: the server span joins
/// that trace. The frame moves from the 2nd to the 4th argument of operateHeaders in grpc 1.60.
fn joins_incoming_traceparent(fixture_name: &str) {
    let Some(()) = privileged() else { return };
    let (collector, _dir, exe, _gotel) =
        attached_copy(&format!("grpc-tp-{fixture_name}"), fixture_name);
    let grpc_port = free_port();
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let _server = start_program(&exe, &["-serve", &grpc_addr]);
    wait_for_port(grpc_port, WAIT);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traceparent = format!("00-{trace}-{parent}-01");
    // The untraced original binary is the caller.
    let out = Command::new(grpc_fixture(fixture_name))
        .args(["-client", &grpc_addr, "-n", "3", "-traceparent", &traceparent])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (servers, clients) = wait_for_grpc_spans(&collector, 3, 0);
    assert!(clients.is_empty(), "the caller is not traced");
    assert_eq!(servers.len(), 3);
    for s in &servers {
        assert_eq!(s.hex("traceId"), trace, "joins the caller's trace");
        assert_eq!(s.hex("parentSpanId"), parent, "the caller's span is the parent");
    }
}

#[test]
fn grpc_incoming_traceparent_v1_14() {
    joins_incoming_traceparent("grpc-v1.14.0");
}

#[test]
fn grpc_incoming_traceparent_v1_40() {
    joins_incoming_traceparent("grpc-v1.40.0");
}

#[test]
fn grpc_incoming_traceparent_v1_59_last_with_the_frame_second() {
    joins_incoming_traceparent("grpc-v1.59.0");
}

#[test]
fn grpc_incoming_traceparent_v1_60_first_with_the_frame_fourth() {
    joins_incoming_traceparent("grpc-v1.60.1");
}

#[test]
fn grpc_incoming_traceparent_v1_85_stripped() {
    joins_incoming_traceparent("grpc-v1.85.0-stripped");
}

//! gotel as an unprivileged user holding only the capabilities it documents: the core works
//! (HTTP server and client spans linked on one host, gRPC of another user's processes), a
//! missing capability is named with what it turns off, and without the two it cannot do
//! without gotel exits saying so.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// The chain fixture calling itself under `gotel run` as nobody with `caps`, exporting to a
/// collector of its own (`tag`): three requests
/// to /one, each a server span, a client span and the server span of the call, linked.
fn chain_as_nobody(tag: &str, caps: &str) -> Proc {
    let collector = Collector::start(tag);
    let port = free_port();
    let fx = fixture("chain-go1.26");
    let (addr, next) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let args = ["run", "--", fx.to_str().unwrap(), "-addr", &addr, "-next", &next];
    let gotel = gotel_as_nobody(caps, &args, Some(&collector), &[("OTEL_SERVICE_NAME", "shop")]);
    wait_for_port(port, WAIT);
    for _ in 0..3 {
        assert_eq!(http_get(port, "/one").0, 200);
    }
    let spans = collector.wait_for_spans(9, WAIT);
    assert_eq!(spans.len(), 9, "{spans:#?}");
    let clients: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind() == CLIENT).collect();
    assert_eq!(clients.len(), 3);
    for c in clients {
        let server = spans.iter().find(|s| s.hex("parentSpanId") == c.hex("spanId"));
        let server = server.unwrap_or_else(|| panic!("the call's server span: {spans:#?}"));
        assert_eq!((server.kind(), server.hex("traceId")), (SERVER, c.hex("traceId")));
    }
    assert!(spans.iter().all(|s| s.resource_str("service.name").as_deref() == Some("shop")));
    gotel
}

#[test]
fn the_core_runs_as_nobody_with_the_five_capabilities() {
    let Some(()) = privileged() else { return };
    let gotel = chain_as_nobody("least-privilege-core", DOCUMENTED_CAPS);
    let warnings: Vec<String> =
        gotel.log().into_iter().filter(|l| l.contains("without CAP_")).collect();
    assert!(warnings.is_empty(), "nothing is missing: {warnings:?}");

    // gRPC processes of another user (root), every process of their executable.
    let collector = Collector::start("least-privilege-grpc");
    let dir = TempDir::new("least-privilege-grpc");
    let exe = dir.0.join("greeter");
    std::fs::copy(fixture("grpc/grpc-v1.85.0"), &exe).unwrap();
    let attach = ["attach", "--exe", exe.to_str().unwrap()];
    let gotel = gotel_as_nobody(DOCUMENTED_CAPS, &attach, Some(&collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = start_program(&exe, &["-serve", &addr]);
    wait_for_port(port, WAIT);
    let out = Command::new(&exe).args(["-client", &addr, "-n", "20"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grpc = |kind| {
        let spans = collector.wait_for_span_count(|s| s.kind() == kind, 20, WAIT);
        spans.into_iter().filter(|s| s.kind() == kind).collect::<Vec<_>>()
    };
    let (servers, clients) = (grpc(SERVER), grpc(CLIENT));
    assert_eq!((servers.len(), clients.len()), (20, 20));
    for s in &servers {
        assert!(clients.iter().any(|c| c.hex("spanId") == s.hex("parentSpanId")), "linked");
        assert_eq!(s.resource_str("service.name").as_deref(), Some("greeter"));
    }
}

#[test]
fn without_net_admin_gotel_says_what_is_off_and_traces_on() {
    let Some(()) = privileged() else { return };
    let gotel = chain_as_nobody(
        "least-privilege-no-net-admin",
        "+bpf,+perfmon,+sys_ptrace,+dac_read_search",
    );
    let log = gotel.log().join("\n");
    assert!(log.contains("without CAP_NET_ADMIN: propagation at the socket layer"), "{log}");
}

#[test]
fn without_perfmon_gotel_exits_naming_it() {
    let Some(()) = privileged() else { return };
    let fx = fixture("chain-go1.26");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = ["run", "--", fx.to_str().unwrap(), "-addr", &addr];
    let mut gotel =
        gotel_as_nobody("+bpf,+sys_ptrace,+dac_read_search,+net_admin", &args, None, &[]);
    let status = gotel.signal_and_wait(0, WAIT);
    assert_eq!(status.code(), Some(2), "{:?}", gotel.log());
    gotel.wait_for_log("missing: CAP_PERFMON", WAIT);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the program never ran");
}

/// Fleet mode as nobody: the daemon sees root's processes start (its exec tracepoint and
/// /proc), traces the one its rule selects, and serves its endpoints.
#[test]
fn the_daemon_runs_as_nobody_with_the_documented_capabilities() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("least-privilege-daemon");
    let dir = TempDir::new("least-privilege-daemon");
    let exe = dir.0.join("orders");
    std::fs::copy(fixture("httpserver-go1.26"), &exe).unwrap();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let rule = format!("exe={}", exe.display());
    let args = ["daemon", "--metrics-addr", &metrics, "--instrument", &rule];
    let env = [("GOTEL_CONFIG", "/dev/null")];
    let daemon = gotel_as_nobody(DOCUMENTED_CAPS, &args, Some(&collector), &env);
    daemon.wait_for_log("scanning for Go processes", WAIT);
    let port = free_port();
    let target = start_fixture(&exe, port);
    wait_for_port(port, WAIT);
    daemon.wait_for_log(&format!("tracing pid {} (", target.pid()), WAIT);
    assert_eq!(http_get(port, "/users/7").0, 200);
    let spans = collector.wait_for_spans(1, WAIT);
    assert_eq!(spans[0].name(), "GET /users/{id}");
    assert_eq!(spans[0].resource_str("service.name").as_deref(), Some("orders"));
    assert_eq!(http_get(metrics_port, "/healthz").0, 200);
    let log = daemon.log().join("\n");
    assert!(!log.contains("without CAP_") && !log.contains("not watching execs"), "{log}");
}

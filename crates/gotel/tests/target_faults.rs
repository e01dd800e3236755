//! What goes wrong on the traced program's side: killed mid-request, a handler blocked for
//! good, 10,000 requests in flight at once, its binary replaced on disk, an exec into another
//! program, a fork without exec. In each the program behaves exactly as without gotel, no
//! state of one request reaches a later one, and what a request that never ended left in
//! gotel's maps is accounted for. (Handlers that panic: http_server.rs and distributed.rs.)

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// One daemon at a time: each scans every process on the host.
static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `gotel daemon` tracing `exe=` each of `exes`, metrics on a port of its own.
fn daemon(collector: &Collector, exes: &[&Path]) -> Proc {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["daemon", "--metrics-addr", &metrics, "--poll-interval", "100ms"];
    let rules: Vec<String> = exes.iter().map(|e| format!("exe={}", e.display())).collect();
    for rule in &rules {
        args.extend(["--instrument", rule]);
    }
    let d = gotel(&args, Some(collector), &[("GOTEL_CONFIG", "/dev/null")]);
    d.wait_for_log("scanning for Go processes", WAIT);
    d
}

/// The raw response to `GET path` on a new connection, its Date header taken out (the one
/// line that differs between two runs of the same program).
fn raw_get(port: u16, path: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split_inclusive("\r\n").filter(|l| !l.starts_with("Date: ")).collect::<String>().into()
}

/// gotel logged that `pid` exited: how many map entries it removed for it.
fn removed_at_exit(gotel: &Proc, pid: u32) -> usize {
    let needle = format!("pid {pid} exited");
    gotel.wait_for_log(&needle, WAIT);
    let log = gotel.log();
    let line = log.iter().find(|l| l.contains(&needle)).unwrap();
    let count = line.split(&needle).nth(1).and_then(|r| r.split('(').nth(1));
    count.and_then(|r| r.split(' ').next()?.parse().ok()).unwrap()
}

/// `gotel attach --exe` on `exe`.
fn attach_exe(collector: &Collector, exe: &Path) -> Proc {
    let gotel = gotel(&["attach", "--exe", exe.to_str().unwrap()], Some(collector), &[]);
    gotel.wait_for_log("tracing every process", WAIT);
    gotel
}

/// The go1.26 httpserver fixture under `gotel run`, and beside it the same program without
/// gotel, whose answers are the reference.
struct Beside {
    collector: Collector,
    gotel: Proc,
    port: u16,
    reference_port: u16,
    _reference: Proc,
}

fn beside(tag: &str) -> Beside {
    let fx = fixture("httpserver-go1.26");
    let reference_port = free_port();
    let _reference = start_fixture(&fx, reference_port);
    let collector = Collector::start(tag);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let gotel = gotel(&["run", "--", fx.to_str().unwrap(), "-addr", &addr], Some(&collector), &[]);
    wait_for_port(port, WAIT);
    wait_for_port(reference_port, WAIT);
    Beside { collector, gotel, port, reference_port, _reference }
}

/// A program SIGKILLed while a request is in its handler: the client sees the connection
/// drop, as without gotel; gotel (the daemon, or `attach --exe`) removes the request's entry
/// from its maps when it sees the exit (so a later process given the same pid cannot find
/// it); the program started again gets spans of its own, none with a parent.
fn killed_mid_request(tag: &str, under: fn(&Collector, &Path) -> Proc) {
    let collector = Collector::start(tag);
    let dir = TempDir::new(tag);
    let exe = copy_fixture("httpserver-go1.26", &dir.0.join("payments"));
    let d = under(&collector, &exe);
    let port = free_port();
    let mut target = start_fixture(&exe, port);
    wait_for_port(port, WAIT);
    let deadline = Instant::now() + WAIT;
    while collector.spans().is_empty() {
        assert!(Instant::now() < deadline, "gotel never traced the program");
        let _ = http_get(port, "/hello?warm=1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = target.pid();
    d.wait_for_log(&format!("tracing pid {pid} ("), WAIT);
    let in_flight = std::thread::spawn(move || raw_get(port, "/slow?ms=60000"));
    let deadline = Instant::now() + WAIT;
    while keys_of_process(&map_keys(d.pid(), "server_calls"), pid) == 0 {
        assert!(Instant::now() < deadline, "the slow request never showed in server_calls");
        std::thread::sleep(Duration::from_millis(50));
    }
    target.signal_and_wait(libc::SIGKILL, WAIT);
    assert!(in_flight.join().unwrap().is_empty(), "no response: the program died");
    assert!(removed_at_exit(&d, pid) >= 1, "{:?}", d.log());
    assert_eq!(keys_of_process(&map_keys(d.pid(), "server_calls"), pid), 0);

    let _again = start_fixture(&exe, port);
    wait_for_port(port, WAIT);
    // Until a request after the restart shows (a warm-up span may still arrive before it).
    let after_kill = |s: &ReceivedSpan| s.attr_str("url.query").as_deref() == Some("after=kill");
    let deadline = Instant::now() + WAIT;
    while !collector.spans().iter().any(after_kill) {
        assert!(Instant::now() < deadline, "the restarted program is not traced");
        assert_eq!(http_get(port, "/users/1?after=kill").0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.attr_str("url.path").as_deref() != Some("/slow")));
    let after: Vec<_> = spans.iter().filter(|s| after_kill(s)).collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|s| s.hex("parentSpanId").is_empty()), "no stale parent");
}

#[test]
fn a_target_killed_mid_request_leaves_nothing_behind_under_the_daemon() {
    let Some(()) = privileged() else { return };
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    killed_mid_request("killed-under-daemon", |collector, exe| daemon(collector, &[exe]));
}

#[test]
fn a_target_killed_mid_request_leaves_nothing_behind_under_attach_exe() {
    let Some(()) = privileged() else { return };
    killed_mid_request("killed-under-attach", attach_exe);
}

/// A handler blocked for good: its request's entry stays while it is in flight (its span will
/// come if it ever ends), every other request on the program gets its own span, right, and the
/// answers are byte for byte those of the program without gotel.
#[test]
fn a_handler_blocked_for_good_harms_no_other_request() {
    let Some(()) = privileged() else { return };
    let Beside { collector, gotel, port, reference_port, _reference } = beside("blocked");
    let target = gotel.children()[0];
    std::thread::spawn(move || raw_get(port, "/slow?ms=600000"));
    for i in 0..100 {
        let path = format!("/users/{i}?blocked=beside");
        assert_eq!(raw_get(port, &path), raw_get(reference_port, &path), "{path}");
    }
    let spans = collector.wait_for_spans(100, WAIT);
    assert_eq!(spans.len(), 100, "the blocked request has no span yet");
    assert!(spans.iter().all(|s| s.hex("parentSpanId").is_empty()));
    let ids: HashSet<String> = spans.iter().map(|s| s.hex("traceId")).collect();
    assert_eq!(ids.len(), 100);
    let users: HashSet<String> = spans.iter().filter_map(|s| s.attr_str("url.path")).collect();
    assert_eq!(users.len(), 100, "each span its own request's");
    let entries = keys_of_process(&map_keys(gotel.pid(), "server_calls"), target);
    assert_eq!(entries, 1, "only the blocked request is in flight");
}

/// 10,000 requests in their handlers at the same moment (a barrier releases them together):
/// one span each, none lost or mixed with another. The 10,000 spans end within milliseconds,
/// so the ring buffer and the export queue must hold them all: the default 4 MiB ring can fill
/// before the debug build drains it (a CI run lost 1,281, counted "ring buffer full"), and with the default OTEL_BSP_MAX_QUEUE_SIZE (2,048, as the SDKs have it)
/// the rest are dropped and counted as "queue full".
#[test]
fn ten_thousand_requests_in_flight_at_once() {
    let Some(()) = privileged() else { return };
    raise_fd_limit();
    let collector = Collector::start("ten-thousand");
    let port = free_port();
    let fx = fixture("httpserver-go1.26");
    let addr = format!("127.0.0.1:{port}");
    let args = ["run", "--", fx.to_str().unwrap(), "-addr", &addr];
    let _gotel = gotel(
        &args,
        Some(&collector),
        &[("OTEL_BSP_MAX_QUEUE_SIZE", "10000"), ("GOTEL_RING_BUFFER_MIB", "16")],
    );
    wait_for_port(port, WAIT);
    const N: usize = 10_000;
    let clients: Vec<_> = (0..N)
        .map(|i| {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || http_get(port, &format!("/barrier?n={N}&i={i}")))
                .unwrap()
        })
        .collect();
    for c in clients {
        let (status, body) = c.join().unwrap();
        assert_eq!((status, body.trim()), (200, "released"), "all {N} were in flight together");
    }
    let spans = collector.wait_for_spans(N, Duration::from_secs(60));
    assert_eq!(spans.len(), N);
    let queries: HashSet<String> = spans.iter().filter_map(|s| s.attr_str("url.query")).collect();
    let expected: HashSet<String> = (0..N).map(|i| format!("n={N}&i={i}")).collect();
    assert_eq!(queries, expected, "each span carries its own request's query");
    let ports: HashSet<i64> = spans.iter().filter_map(|s| s.attr_int("client.port")).collect();
    assert_eq!(ports.len(), N, "each span carries its own connection");
    assert!(spans.iter().all(|s| s.attr_int("http.response.status_code") == Some(200)));
}

/// The binary replaced on disk (a new file renamed over it, as deployments do) while
/// `attach --exe` traces its path: the running process keeps its file and its spans, a process
/// started from the new file is traced too, and the old file's probes go when its last
/// process exits.
#[test]
fn a_binary_replaced_on_disk_while_attached() {
    let Some(()) = privileged() else { return };
    let collector = Collector::start("replaced");
    let dir = TempDir::new("replaced");
    let exe = copy_fixture("httpserver-go1.26", &dir.0.join("catalog"));
    let gotel = attach_exe(&collector, &exe);
    let links = bpf_held_by(gotel.pid()).links.len();
    let port = free_port();
    let mut old = start_fixture(&exe, port);
    wait_for_port(port, WAIT);
    assert_eq!(http_get(port, "/users/1").0, 200);
    copy_fixture("httpserver-go1.26", &dir.0.join("catalog"));
    gotel.wait_for_log("was replaced: the new file is traced too", WAIT);
    assert_eq!(http_get(port, "/users/2").0, 200);
    let new_port = free_port();
    let new = start_fixture(&exe, new_port);
    wait_for_port(new_port, WAIT);
    assert_eq!(http_get(new_port, "/users/3").0, 200);
    let spans = collector.wait_for_spans(3, WAIT);
    assert_eq!(spans.len(), 3);
    let pid_of = |path: &str| {
        let span = spans.iter().find(|s| s.attr_str("url.path").as_deref() == Some(path));
        span.and_then(|s| s.resource_int("process.pid")).map(|p| p as u32)
    };
    assert_eq!(pid_of("/users/1"), Some(old.pid()));
    assert_eq!(pid_of("/users/2"), Some(old.pid()), "the old file's process is traced on");
    assert_eq!(pid_of("/users/3"), Some(new.pid()), "the new file is traced");
    assert!(bpf_held_by(gotel.pid()).links.len() > links, "probes on both files");
    old.signal_and_wait(libc::SIGKILL, WAIT);
    let deadline = Instant::now() + WAIT;
    while bpf_held_by(gotel.pid()).links.len() != links {
        assert!(Instant::now() < deadline, "the old file's probes outlived its last process");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A traced program execs another Go program (same pid, another file), as a server that
/// upgrades itself in place does: the daemon sees the exec, traces the new program with its
/// own probes and service name, and lets the old file go.
#[test]
fn a_target_that_execs_another_program() {
    let Some(()) = privileged() else { return };
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start("exec");
    let dir = TempDir::new("exec");
    let before = copy_fixture("httpserver-go1.26", &dir.0.join("gateway-v1"));
    let after = copy_fixture("httpserver-go1.24", &dir.0.join("gateway-v2"));
    let d = daemon(&collector, &[&before, &after]);
    let (port, next_port) = (free_port(), free_port());
    let target = start_fixture(&before, port);
    wait_for_port(port, WAIT);
    let deadline = Instant::now() + WAIT;
    while collector.spans().is_empty() {
        assert!(Instant::now() < deadline, "the daemon never traced gateway-v1");
        let _ = http_get(port, "/hello?v=1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let exec = format!("/exec?into={}&arg=-addr&arg=127.0.0.1:{next_port}", after.display());
    let (status, body) = http_get(port, &exec);
    assert_eq!((status, body.trim()), (200, format!("exec {}", after.display()).as_str()));
    wait_for_port(next_port, WAIT);
    let v2 = |s: &ReceivedSpan| s.resource_str("service.name").as_deref() == Some("gateway-v2");
    let deadline = Instant::now() + WAIT;
    while !collector.spans().iter().any(v2) {
        assert!(Instant::now() < deadline, "gateway-v2 is not traced: {:?}", d.log());
        assert_eq!(http_get(next_port, "/users/7?v=2").0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = collector.spans();
    let pid = Some(i64::from(target.pid()));
    assert!(spans.iter().filter(|s| v2(s)).all(|s| s.resource_int("process.pid") == pid));
    assert!(spans.iter().filter(|s| v2(s)).all(|s| s.name() == "GET /users/{id}"));
    d.wait_for_log(&format!("detached from {}", before.display()), WAIT);
}

/// A handler forks a copy of the program that exits without exec: the program answers as
/// without gotel, byte for byte, and the requests after it get their spans.
#[test]
fn a_fork_without_exec() {
    let Some(()) = privileged() else { return };
    let Beside { collector, gotel, port, reference_port, _reference } = beside("fork");
    for path in ["/fork", "/users/5", "/fork", "/hello"] {
        let (traced, untraced) = (raw_get(port, path), raw_get(reference_port, path));
        assert_eq!(String::from_utf8_lossy(&traced), String::from_utf8_lossy(&untraced));
    }
    assert!(String::from_utf8_lossy(&raw_get(port, "/fork")).ends_with("child exited 3\n"));
    let spans = collector.wait_for_spans(5, WAIT);
    let paths: Vec<String> = spans.iter().filter_map(|s| s.attr_str("url.path")).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/fork").count(), 3, "{paths:?}");
    assert_eq!(spans.len(), 5, "{paths:?}");
    assert!(!gotel.log().iter().any(|l| l.contains("ERROR") || l.contains("WARN")));
}

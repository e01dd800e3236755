//! Fleet mode end to end: `gotel daemon` finds Go processes as they start, traces those its
//! rules select within a second, shares probes per executable file, follows restarts and
//! binaries replaced in place, and leaves no fds, links or memory behind under churn.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// One daemon at a time: each scans every process on the host, and the timings measured here
/// (traced within a second of start) should not pay for the other test's churn.
static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// In the daemon's OTLP headers and in a target's environment: it must never leave the agent.
const SECRET: &str = "s3cr3t-0b6c41d7";

fn start(exe: &Path, port: u16, env: &[(&str, &str)]) -> (Proc, Instant) {
    let mut cmd = Command::new(exe);
    cmd.arg("-addr").arg(format!("127.0.0.1:{port}"));
    cmd.env_remove("OTEL_SERVICE_NAME").stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    (Proc::new(cmd.spawn().expect("start a fixture")), started)
}

/// Waits until the process listens, then until one second after its start, and sends one
/// request: a span for it proves the process was traced within a second of starting.
fn request_one_second_after(port: u16, started: Instant, path: &str) {
    wait_for_port(port, WAIT);
    let at = started + Duration::from_secs(1);
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    assert_eq!(http_get(port, path).0, 200);
}

fn status(metrics_port: u16) -> serde_json::Value {
    let (code, body) = http_get(metrics_port, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The status line the daemon's endpoint answers a request whose head is `len` bytes long.
fn refused_head(port: u16, len: usize) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!("GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(len));
    let _ = conn.write_all(head.as_bytes()); // it may close before reading the rest
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

fn daemon(collector: &Collector, metrics_port: u16, rules: &[&str], extra: &[&str]) -> Proc {
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut args = vec!["daemon", "--metrics-addr", &metrics, "--inject-traceparent", "off"];
    for rule in rules {
        args.extend(["--instrument", rule]);
    }
    args.extend(extra);
    let headers = format!("authorization=Bearer {SECRET}");
    let env = [("GOTEL_CONFIG", "/dev/null"), ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str())];
    let d = gotel(&args, Some(collector), &env);
    d.wait_for_log("scanning for Go processes", WAIT);
    assert!(!d.log().join("\n").contains("not watching execs"), "{:?}", d.log());
    d
}

#[test]
fn the_daemon_traces_what_its_rules_select_within_a_second() {
    let Some(()) = privileged() else { return };
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start("daemon-rules");
    let dir = TempDir::new("daemon-rules");
    let svc = |name: &str| dir.0.join(name);
    let alpha = copy_fixture("httpserver-go1.26", &svc("svc-alpha"));
    let beta = copy_fixture("httpserver-go1.22-stripped", &svc("svc-beta"));
    let debug = copy_fixture("httpserver-go1.23", &svc("svc-debug"));
    let other = copy_fixture("httpserver-go1.24", &svc("other"));
    let portly = copy_fixture("httpserver-go1.21", &svc("portly"));
    let portly_port = free_port();

    let metrics_port = free_port();
    let select_svc = format!("exe={}/svc-*", dir.0.display());
    let select_port = format!("ports={portly_port}");
    let d = daemon(
        &collector,
        metrics_port,
        &[&select_svc, &select_port],
        &["--exclude", "name=*-debug", "--poll-interval", "200ms"],
    );

    let mut procs = Vec::new();
    let mut expect = Vec::new(); // (port, service.name) of the traced requests
    for (exe, env, traced) in [
        (&alpha, vec![], Some("svc-alpha")),
        (
            &beta,
            vec![("OTEL_SERVICE_NAME", "beta-from-env"), ("DB_PASSWORD", SECRET)],
            Some("beta-from-env"),
        ),
        (&debug, vec![], None),
        (&other, vec![], None),
        (&portly, vec![], Some("portly")),
    ] {
        let port = if exe == &portly { portly_port } else { free_port() };
        let (p, started) = start(exe, port, &env);
        // A port rule can match only once the port listens: its second counts from then.
        let started = match exe == &portly {
            true => {
                wait_for_port(port, WAIT);
                Instant::now()
            }
            false => started,
        };
        request_one_second_after(port, started, "/hello");
        if let Some(name) = traced {
            expect.push((port, name.to_string(), p.pid()));
        }
        procs.push((exe.clone(), port, p));
    }

    // A restart: a new pid running the same file.
    let (alpha_port, alpha_proc) = {
        let i = procs.iter().position(|(e, _, _)| e == &alpha).unwrap();
        let (_, port, mut old) = procs.remove(i);
        old.signal_and_wait(libc::SIGTERM, WAIT);
        let (p, started) = start(&alpha, port, &[]);
        request_one_second_after(port, started, "/users/restarted");
        (port, p)
    };
    // A binary replaced in place: new processes run a new inode (here a newer Go), the old
    // process keeps the old one; both are traced.
    copy_fixture("httpserver-go1.27", &beta);
    let beta2_port = free_port();
    let (beta2, started) = start(&beta, beta2_port, &[("OTEL_SERVICE_NAME", "beta-from-env")]);
    request_one_second_after(beta2_port, started, "/users/replaced");

    let total = expect.len() + 2;
    collector.wait_for_spans(total, WAIT);
    std::thread::sleep(Duration::from_millis(500)); // anything extra would show up now
    let spans = collector.spans();
    for (port, service, pid) in &expect {
        let span = spans
            .iter()
            .find(|s| s.resource_int("process.pid") == Some(i64::from(*pid)))
            .unwrap_or_else(|| panic!("no span from {service} (pid {pid})"));
        assert_eq!(span.resource_str("service.name").as_deref(), Some(service.as_str()));
        assert_eq!(span.attr_int("server.port"), Some(i64::from(*port)));
    }
    let restarted =
        spans.iter().find(|s| s.attr_str("url.path").as_deref() == Some("/users/restarted"));
    let restarted = restarted.expect("the restarted process is traced");
    assert_eq!(restarted.resource_int("process.pid"), Some(i64::from(alpha_proc.pid())));
    assert_eq!(restarted.attr_int("server.port"), Some(i64::from(alpha_port)));
    let replaced =
        spans.iter().find(|s| s.attr_str("url.path").as_deref() == Some("/users/replaced"));
    let replaced = replaced.expect("the replaced binary is traced");
    assert!(replaced.resource_str("process.runtime.version").unwrap().starts_with("go1.27"));
    assert_eq!(spans.len(), total, "the excluded and unmatched processes produced nothing");

    let log = d.log().join("\n");
    assert!(log.contains(&format!("not tracing pid {} ", procs[1].2.pid())), "{log}");
    assert!(log.contains("exclude rule #1"), "{log}");
    // Every trace the exec rules started within the second; say how fast. (The port rule's
    // counts from when the port listens, which the log does not say: it is left out.)
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| !l.contains("instrument rule #2"))
        .filter_map(|l| l.split(" ms after it started").next()?.rsplit("; ").next()?.parse().ok())
        .collect();
    assert_eq!(delays.len(), total - 1, "{log}");
    assert!(delays.iter().all(|&ms| ms < 1000), "traced within 1 s of start: {delays:?} ms");
    eprintln!("start-to-traced delays: {delays:?} ms");

    let s = status(metrics_port);
    assert_eq!(s["processes"].as_array().unwrap().len(), total - 1, "{s}"); // old alpha exited
    let files = s["executables"].as_array().unwrap().len();
    assert_eq!(files, 4, "alpha, beta old and new, portly: {s}");
    // The services' request durations follow the daemon's own metrics.
    let metrics = http_get(metrics_port, "/metrics").1;
    let replaced_count = metrics.lines().find(|l| {
        l.starts_with("http_server_request_duration_seconds_count{job=\"beta-from-env\"")
    });
    assert!(replaced_count.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    // No secret of the daemon's or a target's is shown or exported or logged.
    let shown = [s.to_string(), metrics, collector.raw(), d.log().join("\n")];
    assert!(shown.iter().all(|text| !text.contains(SECRET)), "{shown:#?}");
    // Whatever reaches the port is bounded: a 64 KiB head is refused, the endpoints serve on.
    assert_eq!(
        refused_head(metrics_port, 64 * 1024),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(http_get(metrics_port, "/healthz"), (200, "ok\n".to_string()));

    // Gone processes detach their executables.
    drop(procs);
    drop(alpha_proc);
    drop(beta2);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(metrics_port);
        if s["executables"].as_array().unwrap().is_empty() {
            assert!(s["processes"].as_array().unwrap().is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "executables still attached: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = http_get(metrics_port, "/metrics").1;
    assert!(metrics.contains("gotel_processes_instrumented 0\n"), "{metrics}");
    assert!(metrics.contains("gotel_attach_failures_total 0\n"), "{metrics}");
}

/// What the daemon holds: open fds, of which BPF links and perf events, and resident memory.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    fds: usize,
    probe_fds: usize,
    rss_kib: u64,
}

fn footprint(pid: u32) -> Footprint {
    let mut fds = 0;
    let mut probe_fds = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        fds += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target.contains("bpf_link") || target.contains("perf_event") {
            probe_fds += 1;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.trim().parse().ok())
        .unwrap();
    Footprint { fds, probe_fds, rss_kib }
}

/// The footprint once its open fds hold still for 200 ms (at most 5 s): a connection of ours
/// to the daemon's endpoints may still be closing on its side when we look.
fn settled_footprint(pid: u32) -> Footprint {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = footprint(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = footprint(pid);
        if now.fds == last.fds || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn wait_until_idle(metrics_port: u16) {
    let deadline = Instant::now() + WAIT;
    while !status(metrics_port)["executables"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "executables still attached");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200)); // our /status connection closes
}

#[test]
fn churn_leaves_nothing_behind() {
    let Some(()) = privileged() else { return };
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start("daemon-churn");
    let dir = TempDir::new("daemon-churn");
    let exe = copy_fixture("httpserver-go1.26-stripped", &dir.0.join("short-lived"));
    let metrics_port = free_port();
    let rule = format!("exe={}", exe.display());
    let d = daemon(&collector, metrics_port, &[&rule], &["--poll-interval", "100ms"]);

    const BATCH: usize = 10;
    let run_batch = || {
        let procs: Vec<(Proc, u16)> = (0..BATCH)
            .map(|_| {
                let port = free_port();
                (start(&exe, port, &[]).0, port)
            })
            .collect();
        for (_, port) in &procs {
            wait_for_port(*port, WAIT);
        }
        // Every process is traced before it goes.
        let pids: Vec<u32> = procs.iter().map(|(p, _)| p.pid()).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let s = status(metrics_port);
            let traced: Vec<u64> = s["processes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["pid"].as_u64())
                .collect();
            if pids.iter().all(|p| traced.contains(&u64::from(*p))) {
                break;
            }
            assert!(Instant::now() < deadline, "not all of {pids:?} traced: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(procs);
        wait_until_idle(metrics_port);
    };

    // Warm-up: the first attaches raise the allocator's high-water mark (glibc moves large
    // buffers from mmap to the heap after the first is freed); from there memory is flat.
    run_batch();
    run_batch();
    let before = settled_footprint(d.pid());
    let churned = 200;
    for _ in 0..churned / BATCH {
        run_batch();
    }
    let after = settled_footprint(d.pid());
    let s = status(metrics_port);
    assert_eq!(s["counters"]["processes_traced_total"], (churned + 2 * BATCH) as u64, "{s}");
    eprintln!("churn of {churned} processes: before {before:?}, after {after:?}");
    assert_eq!(after.fds, before.fds, "open fds back to where they were");
    // Only the daemon's own exec watch remains: no probe of a gone process is left.
    assert_eq!(after.probe_fds, before.probe_fds, "no BPF links or perf events left: {after:?}");
    assert!(before.probe_fds <= 1, "between batches no uprobe is attached: {before:?}");
    assert!(
        after.rss_kib <= before.rss_kib + 4096,
        "RSS grew by more than 4 MiB: {before:?} -> {after:?}"
    );
}

/// A process that execs its Go program late (an entrypoint script's `exec`, after the daemon
/// judged the shell) is judged again at the exec and traced.
#[test]
fn a_late_exec_is_traced() {
    let Some(()) = privileged() else { return };
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let collector = Collector::start("daemon-exec");
    let dir = TempDir::new("daemon-exec");
    let exe = copy_fixture("httpserver-go1.26-stripped", &dir.0.join("svc-wrapped"));
    let metrics_port = free_port();
    let rule = format!("exe={}", exe.display());
    let _d = daemon(&collector, metrics_port, &[&rule], &["--poll-interval", "100ms"]);
    let port = free_port();
    let script = format!("sleep 1; exec {} -addr 127.0.0.1:{port}", exe.display());
    let shell = Command::new("sh").args(["-c", &script]).spawn().expect("sh");
    let shell = Proc::new(shell);
    std::thread::sleep(Duration::from_millis(300)); // the shell is seen, and is not Go
    wait_for_port(port, WAIT);
    let deadline = Instant::now() + WAIT;
    while status(metrics_port)["processes"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the exec'd program is not traced");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(port, "/hello").0, 200);
    let spans = collector.wait_for_spans(1, WAIT);
    assert_eq!(spans[0].resource_int("process.pid"), Some(i64::from(shell.pid())));
    assert_eq!(spans[0].resource_str("service.name").as_deref(), Some("svc-wrapped"));
}

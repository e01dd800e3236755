//! End-to-end test support: a real OpenTelemetry Collector, gotel itself, Go fixtures built by
//! scripts/build-fixtures.sh, and a plain HTTP client. Tests need root to attach uprobes: without
//! it they skip loudly, except under CI (CI=true) where skipping would hide a broken machine.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A private copy of a fixture at `to`, a file (inode) of its own: written under another name,
/// then renamed, as deployments replace a running binary (the old inode lives on in the
/// processes that run it).
pub fn copy_fixture(fixture_name: &str, to: &Path) -> PathBuf {
    let tmp = to.with_extension("new");
    std::fs::copy(fixture(fixture_name), &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
    to.to_path_buf()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// None (after saying why, loudly) when this machine cannot run privileged tests.
pub fn privileged() -> Option<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(());
    }
    let msg =
        "end-to-end test needs root (uprobes, BPF maps): SKIPPED. Run as root: scripts/test.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (and CI=true: refusing to pass without running)");
    }
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    None
}

pub fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("GOTEL_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/fixtures"));
    let p = dir.join(name);
    assert!(p.exists(), "fixture {} missing: run scripts/build-fixtures.sh", p.display());
    p
}

/// The Python of the interop server's environment (scripts/build-interop.sh), and the server.
pub fn interop_server() -> (PathBuf, PathBuf) {
    let python = repo_root().join("target/tools/interop-venv/bin/python");
    assert!(python.exists(), "{} missing: run scripts/build-interop.sh", python.display());
    (python, repo_root().join("fixtures/interop/w3c_server.py"))
}

/// A port nothing listens on, for a server a test starts. Taken below the kernel's ephemeral
/// range (32768 on), where a port the kernel hands out could be taken again by any outgoing
/// connection before the server binds it (a collector once failed to start so), and handed out
/// once per test process, so tests running in parallel never pick the same one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20000;
    const PORTS: u16 = 12000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries run one after another: each starts elsewhere in the range.
    let start = (std::process::id() % u32::from(PORTS)) as u16;
    for _ in 0..PORTS {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) % PORTS) % PORTS;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + PORTS);
}

/// Waits until something listens at the unix socket `path`.
pub fn wait_for_unix_socket(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens at {} after {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn unix_nanos_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Proc(pub Child, Option<Arc<Mutex<Vec<String>>>>);

impl Proc {
    pub fn new(child: Child) -> Self {
        Proc(child, None)
    }

    /// Keeps the child's stderr lines (echoed to ours) for `wait_for_log`.
    pub fn capturing_stderr(mut child: Child) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("  | {line}");
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Proc(child, Some(lines))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.1.as_ref().map(|l| l.lock().unwrap().clone()).unwrap_or_default()
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} in {within:?}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit, at most `within`.
    pub fn signal_and_wait(&mut self, signal: i32, within: Duration) -> std::process::ExitStatus {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pid {} still running {within:?} after signal {signal}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// If it still runs: sends `signal` and waits for the exit, at most `within`, never
    /// panicking (for drops, where what is left is killed after).
    pub fn stop(&mut self, signal: i32, within: Duration) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(self.pid() as i32, signal) };
            let deadline = Instant::now() + within;
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The pids of this process's children.
    pub fn children(&self) -> Vec<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a `gotel run` stops its program too; SIGKILL if that does not do.
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, Duration::from_secs(5));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("gotel-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real OpenTelemetry Collector: OTLP in, JSON lines out.
pub struct Collector {
    pub http_port: u16,
    pub grpc_port: u16,
    out: PathBuf,
    metrics_out: PathBuf,
    _dir: TempDir,
    _proc: Proc,
}

impl Collector {
    pub fn start(tag: &str) -> Collector {
        let bin = std::env::var_os("GOTEL_COLLECTOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/tools/otelcol-gotel"));
        assert!(
            bin.exists(),
            "collector {} missing: run scripts/build-collector.sh",
            bin.display()
        );
        let dir = TempDir::new(&format!("collector-{tag}"));
        let (http_port, grpc_port) = (free_port(), free_port());
        let out = dir.0.join("spans.jsonl");
        let metrics_out = dir.0.join("metrics.jsonl");
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:{grpc_port} }}\n      \
             http: {{ endpoint: 127.0.0.1:{http_port} }}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n  \
             file/metrics:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics: {{ level: none }}\n    logs: {{ level: warn }}\n  \
             pipelines:\n    traces: {{ receivers: [otlp], exporters: [file] }}\n    \
             metrics: {{ receivers: [otlp], exporters: [file/metrics] }}\n",
            out.display(),
            metrics_out.display()
        );
        let config_path = dir.0.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let proc = Proc::new(
            Command::new(&bin)
                .arg("--config")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the collector"),
        );
        wait_for_port(http_port, Duration::from_secs(20));
        wait_for_port(grpc_port, Duration::from_secs(20));
        Collector { http_port, grpc_port, out, metrics_out, _dir: dir, _proc: proc }
    }

    /// The metric points once the exporter that sent them has exited: after its last export
    /// arrived and the collector's file stopped growing (it flushes every 100 ms).
    pub fn settled_metric_points(&self) -> Vec<ReceivedPoint> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut size = None;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = std::fs::metadata(&self.metrics_out).map(|m| m.len()).ok();
            if (now.is_some() && now == size) || Instant::now() > deadline {
                return self.metric_points();
            }
            size = now;
        }
    }

    /// Every histogram and sum point received so far, in arrival order (a sum's value as its
    /// count).
    pub fn metric_points(&self) -> Vec<ReceivedPoint> {
        let text = std::fs::read_to_string(&self.metrics_out).unwrap_or_default();
        let mut points = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            for rm in v["resourceMetrics"].as_array().into_iter().flatten() {
                let resource = attrs(&rm["resource"]["attributes"]);
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for m in sm["metrics"].as_array().into_iter().flatten() {
                        let (h, sum, exponential) =
                            match (m.get("sum"), m.get("exponentialHistogram")) {
                                (Some(s), _) => (s, true, false),
                                (_, Some(e)) => (e, false, true),
                                _ => (&m["histogram"], false, false),
                            };
                        for p in h["dataPoints"].as_array().into_iter().flatten() {
                            let number = |v: &Value| {
                                v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()).unwrap_or(0)
                            };
                            points.push(ReceivedPoint {
                                metric: m["name"].as_str().unwrap_or_default().to_string(),
                                unit: m["unit"].as_str().unwrap_or_default().to_string(),
                                temporality: h["aggregationTemporality"].as_i64().unwrap_or(0),
                                attributes: attrs(&p["attributes"]),
                                resource: resource.clone(),
                                count: number(if sum { &p["asInt"] } else { &p["count"] }),
                                sum: p["sum"].as_f64().unwrap_or(0.0),
                                exponential,
                                buckets: if exponential {
                                    &p["positive"]["bucketCounts"]
                                } else {
                                    &p["bucketCounts"]
                                }
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(number)
                                .collect(),
                            });
                        }
                    }
                }
            }
        }
        points
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Everything the collector wrote out so far, as its file exporter wrote it.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Every span received so far, each with its resource attributes merged in under "resource".
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let text = self.raw();
        let mut spans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                let resource = attrs(&rs["resource"]["attributes"]);
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        spans.push(ReceivedSpan { span: s.clone(), resource: resource.clone() });
                    }
                }
            }
        }
        spans
    }

    /// Waits until at least `n` spans arrived; returns them all.
    pub fn wait_for_spans(&self, n: usize, within: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until at least `n` spans matching `counted` arrived; returns every span.
    pub fn wait_for_span_count(
        &self,
        counted: impl Fn(&ReceivedSpan) -> bool,
        n: usize,
        within: Duration,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if spans.iter().filter(|s| counted(s)).count() >= n || Instant::now() >= deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a span matching `wanted` arrived. Spans of one request may come in
    /// different export batches, so a test looking for a related span must wait for it too.
    pub fn wait_for_span(
        &self,
        wanted: impl Fn(&ReceivedSpan) -> bool,
        within: Duration,
    ) -> Option<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.spans().into_iter().find(&wanted);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn attrs(list: &Value) -> Vec<(String, Value)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let v = &kv["value"];
            let value = if let Some(s) = v.get("stringValue") {
                s.clone()
            } else if let Some(i) = v.get("intValue") {
                // OTLP JSON writes 64-bit ints as strings.
                Value::from(i.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0))
            } else if let Some(b) = v.get("boolValue") {
                b.clone()
            } else {
                v.clone()
            };
            (kv["key"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

/// The count of each series `key` names: summed over its delta points, the latest (the
/// largest) of its cumulative ones.
pub fn series_counts<K: Eq + std::hash::Hash>(
    points: &[ReceivedPoint],
    key: impl Fn(&ReceivedPoint) -> K,
) -> std::collections::HashMap<K, u64> {
    let mut out = std::collections::HashMap::new();
    for p in points {
        let n = out.entry(key(p)).or_insert(0);
        match p.temporality {
            1 => *n += p.count,
            _ => *n = p.count.max(*n),
        }
    }
    out
}

/// One histogram data point as the collector's file exporter wrote it.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    pub metric: String,
    pub unit: String,
    /// 1 = DELTA, 2 = CUMULATIVE.
    pub temporality: i64,
    /// A base-2 exponential histogram's (its positive buckets in `buckets`).
    pub exponential: bool,
    pub attributes: Vec<(String, Value)>,
    pub resource: Vec<(String, Value)>,
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<u64>,
}

impl ReceivedPoint {
    pub fn attr(&self, key: &str) -> Option<Value> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_string))
    }
    pub fn resource_str(&self, key: &str) -> Option<String> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    }
}

#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub span: Value,
    pub resource: Vec<(String, Value)>,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        self.span["name"].as_str().unwrap_or_default()
    }
    pub fn kind(&self) -> i64 {
        self.span["kind"].as_i64().unwrap_or(0)
    }
    pub fn attr(&self, key: &str) -> Option<Value> {
        attrs(&self.span["attributes"]).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| v.as_str().map(str::to_string))
    }
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(|v| v.as_i64())
    }
    pub fn resource_str(&self, key: &str) -> Option<String> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    }
    pub fn resource_int(&self, key: &str) -> Option<i64> {
        self.resource.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_i64())
    }
    /// 2 = ERROR, 0 = UNSET.
    pub fn status_code(&self) -> i64 {
        self.span["status"]["code"].as_i64().unwrap_or(0)
    }
    pub fn nanos(&self, field: &str) -> u64 {
        self.span[field].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
    }
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.nanos("endTimeUnixNano").saturating_sub(self.nanos("startTimeUnixNano")),
        )
    }
    pub fn hex(&self, field: &str) -> String {
        self.span[field].as_str().unwrap_or_default().to_string()
    }
}

/// What `gotel inspect` prints for the executable at `path`.
pub fn inspect(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gotel")).arg("inspect").arg(path).output().unwrap();
    assert!(out.status.success(), "gotel inspect {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// gotel with OTLP pointed at `collector` (when given), its stderr captured.
pub fn gotel(args: &[&str], collector: Option<&Collector>, env: &[(&str, &str)]) -> Proc {
    gotel_command(Command::new(env!("CARGO_BIN_EXE_gotel")), args, collector, env)
}

/// The capabilities gotel needs, as the README documents them ("Privileges and kernel"), in
/// setpriv's spelling.
pub const DOCUMENTED_CAPS: &str = "+bpf,+perfmon,+sys_ptrace,+dac_read_search,+net_admin";

/// `gotel`, run as user nobody holding only the capabilities `caps` ("+bpf,+perfmon"),
/// through util-linux's setpriv.
pub fn gotel_as_nobody(
    caps: &str,
    args: &[&str],
    collector: Option<&Collector>,
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_gotel"));
    gotel_command(cmd, args, collector, env)
}

fn gotel_command(
    mut cmd: Command,
    args: &[&str],
    collector: Option<&Collector>,
    env: &[(&str, &str)],
) -> Proc {
    cmd.args(args)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_METRICS_EXPORTER")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = collector {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", c.http_endpoint());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::capturing_stderr(cmd.spawn().expect("start gotel"))
}

/// `exe` with `args`, without gotel, its output discarded.
pub fn start_program(exe: &Path, args: &[&str]) -> Proc {
    let child = Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    Proc::new(child)
}

/// A fixture started directly, without gotel.
pub fn start_fixture(path: &Path, port: u16) -> Proc {
    start_program(path, &["-addr", &format!("127.0.0.1:{port}")])
}

/// Lets this test process hold many sockets at once.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Sends one HTTP/1.1 request on a new connection; returns (status, body).
/// `n` GETs of `path` to `port` at once, each on its own thread and connection: their statuses.
pub fn concurrent_gets(port: u16, path: &str, n: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|_| s.spawn(move || http_get(port, path).0)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The spans whose parent is `parent`, in start order; each is checked to be in its trace.
pub fn children_of<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut children: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.hex("parentSpanId") == parent.hex("spanId"))
        .inspect(|s| assert_eq!(s.hex("traceId"), parent.hex("traceId")))
        .collect();
    children.sort_by_key(|s| s.nanos("startTimeUnixNano"));
    children
}

/// There are `n` SERVER spans, and under each exactly one span, named `name`, in its trace.
pub fn assert_one_child_per_request(spans: &[ReceivedSpan], n: usize, name: &str) {
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind() == 2).collect();
    assert_eq!(servers.len(), n);
    for server in servers {
        let children = children_of(spans, server);
        assert_eq!(children.len(), 1, "one {name} under each request");
        assert_eq!(children[0].name(), name);
    }
}

pub fn http_get(port: u16, path_and_query: &str) -> (u16, String) {
    http_get_with(port, path_and_query, &[])
}

/// As `http_get`, with extra request headers.
pub fn http_get_with(port: u16, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// One request as a plain HTTP/1.1 server received it: the exact bytes, and the decoded body.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request line and headers, up to and including the blank line.
    pub head: String,
    /// Everything as it arrived (head and the body as framed, chunked or not).
    pub raw: Vec<u8>,
    pub body: Vec<u8>,
    /// Which accepted connection it came on (0, 1, ...).
    pub connection: usize,
}

/// A small HTTP/1.1 server gotel does not instrument: records every request (keep-alive,
/// Content-Length or chunked bodies) and answers 200 "ok".
pub struct Recorder {
    pub port: u16,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&requests);
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().map_while(Result::ok).enumerate() {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || serve_recorded(conn, n, &sink));
            }
        });
        Recorder { port, requests }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_recorded(conn: TcpStream, connection: usize, sink: &Mutex<Vec<RecordedRequest>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    while let Some(HttpMessage { head, raw, body }) = read_http_message(&mut reader) {
        sink.lock().unwrap().push(RecordedRequest { head, raw, body, connection });
        if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

/// One HTTP/1.1 message, request or response.
pub struct HttpMessage {
    /// Start line and headers, up to and including the blank line.
    pub head: String,
    /// Everything as it arrived (head and the body as framed, chunked or not).
    pub raw: Vec<u8>,
    pub body: Vec<u8>,
}

/// Reads the next message off `reader`: its body framed by Content-Length, chunked, or
/// absent. None at the end of the stream or on an error.
pub fn read_http_message(reader: &mut impl BufRead) -> Option<HttpMessage> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut raw = head.as_bytes().to_vec();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
        raw.extend_from_slice(&body);
    } else if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).ok()?;
            raw.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(HttpMessage { head, raw, body })
}

/// A private PostgreSQL server on a loopback port: its own data directory, trust
/// authentication for the superuser `gotel`, stopped (fast shutdown) and removed on drop.
/// PostgreSQL refuses to run as root, so it runs as the `postgres` user Debian's package made.
pub struct Postgres {
    pub port: u16,
    proc: Option<Proc>,
    _dir: TempDir,
}

impl Postgres {
    pub fn start(tag: &str) -> Postgres {
        let bin = postgres_bin_dir();
        let dir = TempDir::new(&format!("postgres-{tag}"));
        let data = dir.0.join("data");
        let as_postgres = |program: &str| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
                .arg(bin.join(program));
            cmd
        };
        let chown = Command::new("chown").args(["postgres:postgres"]).arg(&dir.0).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown {} to postgres", dir.0.display());
        let out = as_postgres("initdb")
            .args(["--auth=trust", "--username=gotel", "--no-sync", "--encoding=UTF8", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", dir.0.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let proc = Proc::new(child);
        wait_for_port(port, Duration::from_secs(30));
        Postgres { port, proc: Some(proc), _dir: dir }
    }

    /// A lib/pq or pgx connection string for the `postgres` database.
    pub fn dsn(&self) -> String {
        format!("postgres://gotel@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            // SIGINT: fast shutdown, which ends the backends too (SIGTERM waits for clients).
            proc.stop(libc::SIGINT, Duration::from_secs(10));
        }
    }
}

/// The newest PostgreSQL server Debian installed (scripts/setup.sh).
fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("no PostgreSQL server in /usr/lib/postgresql: run scripts/setup.sh")
}

/// A private MariaDB server on a loopback port, with a user `gotel` that needs no password
/// and a database `gotel`; stopped and removed on drop. It runs as the `mysql` user Debian's
/// package made.
pub struct Mariadb {
    pub port: u16,
    proc: Option<Proc>,
    _dir: TempDir,
}

impl Mariadb {
    pub fn start(tag: &str) -> Mariadb {
        let dir = TempDir::new(&format!("mariadb-{tag}"));
        let data = dir.0.join("data");
        let socket = dir.0.join("mysqld.sock");
        let chown = Command::new("chown").args(["mysql:mysql"]).arg(&dir.0).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown {} to mysql", dir.0.display());
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .args(["--auth-root-authentication-method=socket"])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("run mariadb-install-db (scripts/setup.sh installs mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.0.join("mysqld.pid").display()))
            .arg(format!("--port={port}"))
            .args(["--max-connections=300", "--innodb-buffer-pool-size=16M", "--skip-log-bin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let proc = Proc::new(child);
        wait_for_port(port, Duration::from_secs(30));
        let sql =
            "CREATE USER 'gotel'@'%'; GRANT ALL ON *.* TO 'gotel'@'%'; CREATE DATABASE gotel;";
        let out = Command::new("mariadb")
            .args(["--no-defaults", "--user=root"])
            .arg(format!("--socket={}", socket.display()))
            .args(["-e", sql])
            .output()
            .expect("run mariadb");
        assert!(out.status.success(), "mariadb: {}", String::from_utf8_lossy(&out.stderr));
        Mariadb { port, proc: Some(proc), _dir: dir }
    }

    /// A go-sql-driver/mysql data source name for the `gotel` database.
    pub fn dsn(&self) -> String {
        format!("gotel@tcp(127.0.0.1:{})/gotel", self.port)
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            // SIGTERM is MariaDB's clean shutdown; Proc's own drop kills what is left.
            proc.stop(libc::SIGTERM, Duration::from_secs(20));
        }
    }
}

/// A private Redis server on a loopback port, persisting nothing, with its working directory
/// under a temporary directory; stopped on drop.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    _dir: TempDir,
}

impl Redis {
    pub fn start(tag: &str) -> Redis {
        let dir = TempDir::new(&format!("redis-{tag}"));
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/setup.sh installs redis-server)");
        let proc = Proc::new(child);
        wait_for_port(port, Duration::from_secs(30));
        Redis { port, proc: Some(proc), _dir: dir }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop(libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

/// A network namespace with a veth pair: another host, as far as the client can tell. Each
/// test that makes one picks its own `subnet` (10.203.subnet.0/30), so tests run in parallel.
pub struct OtherHost {
    pub name: String,
    host_veth: String,
    /// Our address on the pair, and theirs.
    pub ours: String,
    pub theirs: String,
}

impl OtherHost {
    pub fn create(subnet: u8) -> OtherHost {
        let id = std::process::id() % 10_000;
        let (name, host_veth, peer) = (
            format!("gotel-t{id}-{subnet}"),
            format!("gth{id}x{subnet}"),
            format!("gtp{id}x{subnet}"),
        );
        let (ours, theirs) = (format!("10.203.{subnet}.1"), format!("10.203.{subnet}.2"));
        let ip = |args: &str| {
            let ok = std::process::Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args}");
        };
        ip(&format!("netns add {name}"));
        ip(&format!("link add {host_veth} type veth peer name {peer}"));
        ip(&format!("link set {peer} netns {name}"));
        ip(&format!("addr add {ours}/30 dev {host_veth}"));
        ip(&format!("link set {host_veth} up"));
        ip(&format!("netns exec {name} ip addr add {theirs}/30 dev {peer}"));
        ip(&format!("netns exec {name} ip link set {peer} up"));
        ip(&format!("netns exec {name} ip link set lo up"));
        OtherHost { name, host_veth, ours, theirs }
    }

    /// A private nginx on the other host serving one `server { ... }` block (its body), its
    /// files in `dir`.
    pub fn nginx(&self, dir: &Path, server: &str) -> Proc {
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {d}/{t};"))
            .collect();
        let text = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{}}\nhttp {{ access_log off; {temp}\nserver {{ {server} }} }}\n"
        );
        std::fs::write(&conf, text).unwrap();
        let child = self
            .command(Path::new("/usr/sbin/nginx"))
            .args(["-c", conf.to_str().unwrap(), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (Debian's nginx-light, from scripts/setup.sh)");
        Proc::new(child)
    }

    /// `exe` with `args`, run on the other host.
    pub fn command(&self, exe: &Path) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(exe);
        cmd
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_veth]).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The ids of the BPF programs, links and maps a process holds open.
#[derive(Debug, Default)]
pub struct BpfHeld {
    pub progs: HashSet<u64>,
    pub links: HashSet<u64>,
    pub maps: HashSet<u64>,
}

/// What `pid` holds, from its fds' fdinfo (a link's names its program too).
pub fn bpf_held_by(pid: u32) -> BpfHeld {
    let mut held = BpfHeld::default();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().map_while(Result::ok) {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines() {
            let id = |key: &str| line.strip_prefix(key).and_then(|v| v.trim().parse().ok());
            if let Some(id) = id("link_id:") {
                held.links.insert(id);
            } else if let Some(id) = id("prog_id:") {
                held.progs.insert(id);
            } else if let Some(id) = id("map_id:") {
                held.maps.insert(id);
            }
        }
    }
    held
}

fn bpftool(args: &[&str]) -> Value {
    let out = Command::new("bpftool").arg("-j").args(args).output();
    let out = out.expect("bpftool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The type of BPF program `id` as bpftool names it (`sock_ops`, `sk_msg`, `kprobe`, ...).
pub fn prog_type(id: u64) -> String {
    bpftool(&["prog", "show", "id", &id.to_string()])["type"].as_str().unwrap_or("?").to_string()
}

/// The keys, as bytes, of the map called `name` that process `holder` (a gotel) holds.
pub fn map_keys(holder: u32, name: &str) -> Vec<Vec<u8>> {
    let id = bpf_held_by(holder)
        .maps
        .into_iter()
        .find(|id| bpftool(&["map", "show", "id", &id.to_string()])["name"] == name)
        .unwrap_or_else(|| panic!("pid {holder} holds no map {name}"));
    let entries = bpftool(&["map", "dump", "id", &id.to_string()]);
    let byte = |b: &Value| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_array().unwrap().iter().filter_map(byte).collect())
        .collect()
}

/// How many of `keys` (struct goroutine_key: the pid first) are the process `pid`'s.
pub fn keys_of_process(keys: &[Vec<u8>], pid: u32) -> usize {
    keys.iter().filter(|k| k.get(..4) == Some(&pid.to_ne_bytes()[..])).count()
}

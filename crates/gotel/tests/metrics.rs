//! Metrics end to end: request-duration histograms from every request, sampled or not, as a
//! real OpenTelemetry Collector receives them over OTLP and as a real Prometheus scrapes them.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// Requests that succeed: to the chain's /one (a server span, a client span to /c and a server
/// span for /c), or each to its own /users/{id}.
const CALLS: usize = 150;
/// Requests answered 404.
const MISSES: usize = 20;

/// `fixture` serving on a port of its own (`-addr`, then `fixture_args`), under `gotel run`
/// (with `gotel_args`) with every trace dropped by the sampler.
fn unsampled(
    collector: &Collector,
    fixture_name: &str,
    fixture_args: &[&str],
    env: &[(&str, &str)],
    gotel_args: &[&str],
) -> (Proc, u16) {
    let port = free_port();
    let fx = fixture(fixture_name);
    let addr = format!("127.0.0.1:{port}");
    let fixture_args: Vec<String> =
        fixture_args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
    let mut argv = vec!["run"];
    argv.extend(gotel_args);
    argv.extend(["--", fx.to_str().unwrap(), "-addr", &addr]);
    argv.extend(fixture_args.iter().map(String::as_str));
    let mut all_env = vec![("OTEL_SERVICE_NAME", "shop"), ("OTEL_TRACES_SAMPLER", "always_off")];
    all_env.extend(env);
    let gotel = gotel(&argv, Some(collector), &all_env);
    wait_for_port(port, WAIT);
    gotel.wait_for_log("metrics: request durations from every span", WAIT);
    (gotel, port)
}

/// Counts per (metric, route or server port, status), summed over delta points or taken from
/// the last cumulative one.
fn counts(points: &[ReceivedPoint]) -> HashMap<(String, String, String), u64> {
    series_counts(points, |p| {
        let series =
            p.attr_str("http.route").or_else(|| p.attr("server.port").map(|v| v.to_string()));
        let status = p.attr("http.response.status_code").map(|v| v.to_string()).unwrap_or_default();
        (p.metric.clone(), series.unwrap_or_default(), status)
    })
}

fn every_request_counts(protocol: &str, temporality: &str, aggregation: &str) {
    let Some(()) = privileged() else { return };
    let collector = Collector::start(&format!("metrics-{temporality}"));
    let endpoint = match protocol {
        "grpc" => collector.grpc_endpoint(),
        _ => collector.http_endpoint(),
    };
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality),
        ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", aggregation),
    ];
    let next = ["-next", "http://127.0.0.1:{port}"];
    let (mut gotel, port) = unsampled(&collector, "chain-go1.26", &next, &env, &[]);
    for _ in 0..CALLS {
        assert_eq!(http_get(port, "/one").0, 200);
    }
    for _ in 0..MISSES {
        assert_eq!(http_get(port, "/nowhere").0, 404);
    }
    // SIGTERM stops the program, and the agent's last export carries whatever is left.
    gotel.signal_and_wait(libc::SIGTERM, WAIT);

    let all_points = collector.settled_metric_points();
    let (graph, points): (Vec<ReceivedPoint>, Vec<ReceivedPoint>) =
        all_points.into_iter().partition(|p| p.metric.starts_with("traces_service_graph"));
    let spans = collector.spans();
    assert!(spans.is_empty(), "always_off: no span is exported, got {}", spans.len());
    let want_temporality = if temporality == "delta" { 1 } else { 2 };
    assert!(points.iter().all(|p| p.temporality == want_temporality), "{points:#?}");
    let counts = counts(&points);
    let server = "http.server.request.duration".to_string();
    let client = "http.client.request.duration".to_string();
    // The chain's ServeMux has no patterns (its go.mod predates Go 1.22's): no route.
    let want = [
        ((server.clone(), String::new(), "200".into()), 2 * CALLS as u64),
        ((server, String::new(), "404".into()), MISSES as u64),
        ((client, port.to_string(), "200".into()), CALLS as u64),
    ];
    for (key, n) in &want {
        assert_eq!(counts.get(key), Some(n), "{key:?} in {counts:#?}");
    }
    assert_eq!(counts.len(), want.len(), "no other series: {counts:#?}");
    let exponential = aggregation == "base2_exponential_bucket_histogram";
    for p in &points {
        assert_eq!(p.exponential, exponential, "{p:?}");
        assert_eq!(p.unit, "s");
        assert_eq!(p.buckets.iter().sum::<u64>(), p.count, "buckets add up: {p:?}");
        assert!(p.sum > 0.0 && p.sum < p.count as f64, "durations in seconds: {p:?}");
        assert_eq!(p.resource_str("service.name").as_deref(), Some("shop"));
        assert_eq!(p.attr_str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(p.attr("url.path"), None, "never a raw path");
    }
    // The service graph: each /one's call to /c pairs its client span with /c's server span;
    // the requests the test sent come from the user.
    assert!(graph.iter().all(|p| p.temporality == want_temporality), "{graph:#?}");
    let edges = series_counts(&graph, |p| {
        (
            p.metric.clone(),
            p.attr_str("client").unwrap_or_default(),
            p.attr_str("server").unwrap_or_default(),
            p.attr_str("connection_type").unwrap_or_default(),
        )
    });
    let edge = |metric: &str, client: &str, connection: &str| {
        let key =
            (metric.to_string(), client.to_string(), "shop".to_string(), connection.to_string());
        edges.get(&key).copied()
    };
    let total = "traces_service_graph_request_total";
    assert_eq!(edge(total, "shop", ""), Some(CALLS as u64), "{edges:#?}");
    assert_eq!(edge(total, "user", "virtual_node"), Some((CALLS + MISSES) as u64), "{edges:#?}");
    let client_seconds = "traces_service_graph_request_client_seconds";
    assert_eq!(edge(client_seconds, "shop", ""), Some(CALLS as u64), "{edges:#?}");
    assert_eq!(edge("traces_service_graph_request_failed_total", "shop", ""), None);
    assert!(
        gotel.log().iter().any(|l| l.contains(&format!("{} unsampled", 3 * CALLS + MISSES))),
        "the summary counts the unsampled spans: {:?}",
        gotel.log()
    );
}

#[test]
fn every_request_counts_with_the_sampler_at_always_off_cumulative_over_http() {
    every_request_counts("http/protobuf", "cumulative", "explicit_bucket_histogram");
}

#[test]
fn every_request_counts_with_the_sampler_at_always_off_delta_exponential_over_grpc() {
    every_request_counts("grpc", "delta", "base2_exponential_bucket_histogram");
}

/// `%`-encodes a PromQL query for a URL.
fn encode_query(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The JSON of a GET to a plain HTTP server on loopback.
fn get_json(port: u16, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body = resp.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

#[test]
fn a_real_prometheus_scrapes_every_request_by_route() {
    let Some(()) = privileged() else { return };
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(prometheus.exists(), "prometheus missing: run scripts/setup.sh");
    let collector = Collector::start("metrics-prometheus");
    let scrape_port = free_port();
    let scrape_addr = format!("127.0.0.1:{scrape_port}");
    let prometheus_flag = ["--prometheus-addr", scrape_addr.as_str()];
    let (mut gotel, port) = unsampled(&collector, "httpserver-go1.26", &[], &[], &prometheus_flag);

    let dir = TempDir::new("prometheus");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: gotel\n    \
             honor_labels: true\n    static_configs:\n      - targets: ['{scrape_addr}']\n"
        ),
    )
    .unwrap();
    let web_port = free_port();
    let _prometheus = Proc::new(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    wait_for_port(web_port, WAIT);
    // Each request a path of its own, all of one route.
    for id in 0..CALLS {
        assert_eq!(http_get(port, &format!("/users/{id}")).0, 200);
    }
    for _ in 0..MISSES {
        assert_eq!(http_get(port, "/nowhere").0, 404);
    }

    let query = |q: &str| {
        let v = get_json(web_port, &format!("/api/v1/query?query={}", encode_query(q)))?;
        v["data"]["result"].as_array().cloned()
    };
    let series = "http_server_request_duration_seconds_count{http_route=\"/users/{id}\"}";
    let deadline = Instant::now() + WAIT;
    let result = loop {
        let result = query(series).unwrap_or_default();
        let value = result.first().and_then(|r| r["value"][1].as_str().map(str::to_string));
        if value.as_deref() == Some(&CALLS.to_string()) || Instant::now() > deadline {
            break result;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(result.len(), 1, "one series: {result:#?}");
    let metric = &result[0]["metric"];
    assert_eq!(result[0]["value"][1], CALLS.to_string(), "{result:#?}");
    assert_eq!(metric["job"], "shop", "{metric}");
    assert_eq!(metric["http_request_method"], "GET");
    assert_eq!(metric["http_response_status_code"], "200");
    assert_eq!(
        metric["instance"].as_str().map(|i| i.ends_with(&format!(":{}", gotel.children()[0]))),
        Some(true)
    );
    let misses =
        query("http_server_request_duration_seconds_count{http_response_status_code=\"404\"}")
            .unwrap_or_default();
    assert_eq!(
        misses.first().map(|r| r["value"][1].clone()),
        Some(Value::from(MISSES.to_string()))
    );
    let all = query("count(http_server_request_duration_seconds_count)").unwrap_or_default();
    assert_eq!(all.first().map(|r| r["value"][1].clone()), Some(Value::from("2")), "two series");
    let buckets = query(
        "http_server_request_duration_seconds_bucket{http_route=\"/users/{id}\",le=\"+Inf\"}",
    )
    .unwrap_or_default();
    assert_eq!(
        buckets.first().map(|r| r["value"][1].clone()),
        Some(Value::from(CALLS.to_string()))
    );
    let info = query("target_info{job=\"shop\"}").unwrap_or_default();
    assert_eq!(
        info.first().map(|r| r["metric"]["process_runtime_name"].clone()),
        Some(Value::from("go"))
    );
    gotel.signal_and_wait(libc::SIGTERM, WAIT);
}

//! Metrics from every span the probes saw, sampled or not: the semantic conventions' duration
//! histograms per process, kept in the agent and read by the OTLP exporter and the Prometheus
//! endpoint, configured by the SDK's variables (OTEL_METRICS_EXPORTER, OTEL_METRIC_EXPORT_*,
//! OTEL_EXPORTER_OTLP_METRICS_*, OTEL_EXPORTER_PROMETHEUS_*).

mod exponential;
mod histograms;
mod otlp;
mod prometheus;
mod service_graph;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use histograms::{
    Distribution, Histograms, MetricPoints, Point, ProcessMetrics, Temporality,
    DEFAULT_CARDINALITY_LIMIT,
};
#[cfg(test)] // the traces encoder's oracle converts attributes so too
pub(crate) use otlp::key_value;
pub use otlp::{encode_metrics, MetricsExporter};
pub use prometheus::prometheus_text;
pub use service_graph::{ServiceGraph, PAIR_WAIT};

use crate::otlp::{number, ConfigError, OtlpConfig, Signal};

/// The wall clock, as metric points' times are.
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Where metrics go, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub otlp: Option<OtlpConfig>,
    /// OTEL_METRIC_EXPORT_INTERVAL.
    pub interval: Duration,
    /// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: delta and lowmemory both make the
    /// histograms delta.
    pub temporality: Temporality,
    /// Where to serve the Prometheus text format: the flag, or OTEL_METRICS_EXPORTER=prometheus
    /// at OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT.
    pub prometheus: Option<SocketAddr>,
    pub cardinality_limit: usize,
    /// OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=
    /// base2_exponential_bucket_histogram: OTLP gets exponential histograms (Prometheus keeps
    /// the explicit buckets).
    pub exponential: bool,
}

impl MetricsConfig {
    /// The settings from the environment (`get`) and the flags; OTLP follows the traces'
    /// endpoint unless OTEL_METRICS_EXPORTER says otherwise.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        otlp_endpoint: Option<String>,
        otlp_protocol: Option<String>,
        prometheus_flag: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let exporters = get("OTEL_METRICS_EXPORTER").unwrap_or_default();
        let wants = |name: &str| exporters.split(',').any(|x| x.trim() == name);
        if let Some(other) = exporters
            .split(',')
            .map(str::trim)
            .find(|x| !x.is_empty() && !["otlp", "prometheus", "none"].contains(x))
        {
            return Err(ConfigError::Choice {
                var: "OTEL_METRICS_EXPORTER",
                value: other.to_string(),
                choices: "otlp, prometheus or none (comma-separated)",
            });
        }
        // OTLP when OTEL_METRICS_EXPORTER asks for it, or, unset, when an OTLP endpoint is
        // configured (the terminal view needs no collector); without otlp in it, none.
        let otlp = match exporters.is_empty() || wants("otlp") {
            true => OtlpConfig::for_signal(Signal::Metrics, get, otlp_endpoint, otlp_protocol)?,
            false => None,
        };
        let millis = |var, default| number(get, var, default);
        let interval = Duration::from_millis(millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?.max(1));
        let var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
        let temporality = match get(var).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("cumulative") => Temporality::Cumulative,
            Some("delta" | "lowmemory") => Temporality::Delta,
            Some(other) => {
                return Err(ConfigError::Choice {
                    var,
                    value: other.to_string(),
                    choices: "cumulative, delta or lowmemory",
                })
            }
        };
        let prometheus = match prometheus_flag {
            Some(addr) => Some(addr),
            None if wants("prometheus") => {
                let host = get("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or("localhost".into());
                let port = millis("OTEL_EXPORTER_PROMETHEUS_PORT", 9464)?;
                let value = format!("{host}:{port}");
                let addr = value.to_socket_addrs().ok().and_then(|mut a| a.next());
                Some(addr.ok_or(ConfigError::Address {
                    var: "OTEL_EXPORTER_PROMETHEUS_HOST/PORT",
                    value,
                })?)
            }
            None => None,
        };
        let limit = millis("GOTEL_METRICS_CARDINALITY_LIMIT", DEFAULT_CARDINALITY_LIMIT as u64)?;
        let var = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION";
        let exponential = match get(var).as_deref().map(str::trim) {
            None | Some("explicit_bucket_histogram") => false,
            Some("base2_exponential_bucket_histogram") => true,
            Some(other) => {
                return Err(ConfigError::Choice {
                    var,
                    value: other.to_string(),
                    choices: "explicit_bucket_histogram or base2_exponential_bucket_histogram",
                })
            }
        };
        Ok(MetricsConfig {
            otlp,
            interval,
            temporality,
            prometheus,
            cardinality_limit: limit as usize,
            exponential,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1 as pb;
    use prost::Message;
    use trace::metric::{HTTP_SERVER_REQUEST_DURATION, RPC_SERVER_DURATION};
    use trace::{AttributeValue, KeyValue, ProcessResource, Span, SpanKind, Status};

    use super::*;
    use crate::otlp::tests::env;

    fn resource(pid: u32, name: &str) -> Arc<ProcessResource> {
        let attributes = vec![
            ("service.name".to_string(), AttributeValue::from(name.to_string())),
            ("host.name".to_string(), AttributeValue::from("h")),
        ];
        Arc::new(ProcessResource { pid, attributes })
    }

    fn server_span(route: &str, status: i64, millis: u64) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_000_000,
            end_unix_nanos: 1_000_000 + millis * 1_000_000,
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", format!("/raw{route}")),
                KeyValue::new("http.route", route.to_string()),
                KeyValue::new("http.response.status_code", status),
            ],
            status: Status::Unset,
            trace_state: String::new(),
            links: vec![],
        }
    }

    #[test]
    fn a_histogram_keeps_the_metrics_attributes_and_buckets_by_upper_bound() {
        let mut h = Histograms::new(100, 0);
        let r = resource(7, "shop");
        for millis in [3, 5, 7, 20_000] {
            h.record(&r, &HTTP_SERVER_REQUEST_DURATION, &server_span("/a", 200, millis));
        }
        let all = h.collect(Temporality::Cumulative, 9);
        assert_eq!(all.len(), 1);
        let point = &all[0].metrics[0].points[0];
        let keys: Vec<&str> = point.attributes.iter().map(|a| a.key).collect();
        assert_eq!(keys, ["http.request.method", "http.route", "http.response.status_code"]);
        let d = &point.distribution;
        assert_eq!(d.count, 4);
        // 3 and 5 ms in (0, 0.005], 7 ms in (0.005, 0.01], 20 s above 10 s.
        assert_eq!((d.buckets[0], d.buckets[1], d.buckets[14]), (2, 1, 1));
        assert_eq!((d.min, d.max), (0.003, 20.0));
        assert!((d.sum - 20.015).abs() < 1e-9);
    }

    #[test]
    fn past_the_cap_measurements_go_to_the_overflow_series_and_are_counted() {
        let mut h = Histograms::new(3, 0);
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        for route in ["/1", "/2", "/3", "/4", "/1"] {
            h.record(&a, &HTTP_SERVER_REQUEST_DURATION, &server_span(route, 200, 1));
        }
        h.record(&b, &HTTP_SERVER_REQUEST_DURATION, &server_span("/9", 200, 1));
        assert_eq!(h.overflowed(), 2, "/3 and /4: 2 sets and the overflow series make 3");
        let all = h.collect(Temporality::Cumulative, 9);
        let points = &all[0].metrics[0].points;
        assert_eq!(points.len(), 3);
        let overflow = points
            .iter()
            .find(|p| {
                p.attributes == [KeyValue::new("otel.metric.overflow", AttributeValue::Bool(true))]
            })
            .expect("an overflow series");
        assert_eq!(overflow.distribution.count, 2);
        assert_eq!(points.iter().map(|p| p.distribution.count).sum::<u64>(), 5, "nothing lost");
        assert_eq!(all[1].metrics[0].points.len(), 1, "the cap is per process");
    }

    #[test]
    fn delta_points_cover_the_interval_and_series_of_gone_processes_go() {
        let mut h = Histograms::new(100, 5);
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        h.record(&a, &HTTP_SERVER_REQUEST_DURATION, &server_span("/a", 200, 1));
        h.record(&b, &RPC_SERVER_DURATION, &server_span("/b", 200, 1));
        let first = h.collect(Temporality::Delta, 10);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].metrics[0].points[0].start_unix_nanos, 5);
        h.record(&a, &HTTP_SERVER_REQUEST_DURATION, &server_span("/a", 200, 1));
        let second = h.collect(Temporality::Delta, 20);
        assert_eq!(second.len(), 1, "b measured nothing since");
        let p = &second[0].metrics[0].points[0];
        assert_eq!((p.start_unix_nanos, p.distribution.count), (10, 1));
        let cumulative = h.collect(Temporality::Cumulative, 30);
        assert_eq!(cumulative[0].metrics[0].points[0].distribution.count, 2);
        h.retain_processes(|pid| pid != 2);
        let left = h.collect(Temporality::Cumulative, 40);
        assert_eq!(left.len(), 1, "process 2's series are gone");
        assert_eq!((left[0].resource.pid, left[0].metrics[0].points.len()), (1, 1));
    }

    #[test]
    fn the_otlp_request_decodes_as_the_collector_reads_it() {
        let mut h = Histograms::new(100, 0);
        h.record(&resource(7, "shop"), &RPC_SERVER_DURATION, &server_span("/a", 0, 12));
        let bytes = encode_metrics(&h.collect(Temporality::Delta, 99), Temporality::Delta, 99);
        let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let rm = &req.resource_metrics[0];
        assert_eq!(rm.resource.as_ref().unwrap().attributes[0].key, "service.name");
        let m = &rm.scope_metrics[0].metrics[0];
        assert_eq!((m.name.as_str(), m.unit.as_str()), ("rpc.server.duration", "ms"));
        let Some(pb::metric::Data::Histogram(hist)) = &m.data else { panic!("a histogram") };
        assert_eq!(hist.aggregation_temporality, pb::AggregationTemporality::Delta as i32);
        let p = &hist.data_points[0];
        assert_eq!((p.count, p.sum, p.time_unix_nano), (1, Some(12.0), 99));
        assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
        assert_eq!(p.bucket_counts[3], 1, "12 ms in (10, 25]");
    }

    #[test]
    fn exponential_histograms_go_to_otlp_when_asked_for() {
        let mut h = Histograms::new(100, 0).with_exponential_buckets();
        for millis in [1, 10, 10_000] {
            h.record(
                &resource(7, "shop"),
                &HTTP_SERVER_REQUEST_DURATION,
                &server_span("/a", 200, millis),
            );
        }
        let bytes =
            encode_metrics(&h.collect(Temporality::Cumulative, 9), Temporality::Cumulative, 9);
        let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(pb::metric::Data::ExponentialHistogram(e)) = &m.data else { panic!("{m:?}") };
        let p = &e.data_points[0];
        let positive = p.positive.as_ref().unwrap();
        assert_eq!((p.count, positive.bucket_counts.iter().sum::<u64>()), (3, 3));
        assert!(p.scale > 0 && positive.bucket_counts.len() <= 160, "{p:?}");
        let c = MetricsConfig::from_env(
            env(&[(
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                "base2_exponential_bucket_histogram",
            )]),
            None,
            None,
            None,
        );
        assert!(c.unwrap().exponential);
    }

    #[test]
    fn the_prometheus_text_names_units_and_labels_as_the_compatibility_spec_says() {
        let mut h = Histograms::new(100, 0);
        h.record(
            &resource(7, "shop"),
            &HTTP_SERVER_REQUEST_DURATION,
            &server_span("/a\"b", 200, 30),
        );
        let text = prometheus_text(&h.collect(Temporality::Cumulative, 1));
        assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"), "{text}");
        let labels = r#"job="shop",instance="h:7",http_request_method="GET",http_route="/a\"b",http_response_status_code="200""#;
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 0"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("_bucket{{{labels},le=\"0.05\"}} 1")), "{text}");
        assert!(text.contains(&format!("_bucket{{{labels},le=\"+Inf\"}} 1")), "{text}");
        assert!(text.contains(&format!("http_server_request_duration_seconds_count{{{labels}}} 1")));
        assert!(text.contains(
            r#"target_info{job="shop",instance="h:7",service_name="shop",host_name="h"} 1"#
        ));
    }

    fn client_span(id: u8, address: &str, millis: u64) -> Span {
        let mut s = server_span("/x", 200, millis);
        s.kind = SpanKind::Client;
        s.span_id = [id; 8];
        s.attributes = vec![KeyValue::new("server.address", address.to_string())];
        s
    }

    /// (client, server, connection_type) -> request count, per the Prometheus text.
    fn edges(h: &mut Histograms) -> Vec<String> {
        let text = prometheus_text(&h.collect(Temporality::Cumulative, 1));
        text.lines()
            .filter(|l| l.starts_with("traces_service_graph_request_total{"))
            .map(|l| l.split_once(",client=").unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn the_service_graph_pairs_a_client_with_its_server_and_else_names_the_peer() {
        let (mut h, mut g) = (Histograms::new(100, 0), ServiceGraph::default());
        let (front, orders) = (resource(1, "front"), resource(2, "orders"));
        let t0 = Instant::now();
        // A pair: the server ends first and waits for its client.
        let mut served = server_span("/o", 500, 3);
        served.parent_span_id = Some([5; 8]);
        served.status = Status::Error { message: String::new() };
        g.observe(&orders, &served, t0, &mut h);
        g.observe(&front, &client_span(5, "orders.internal", 4), t0, &mut h);
        // A root server span: from the user. A client whose server is not seen: to its peer.
        g.observe(&front, &server_span("/", 200, 5), t0, &mut h);
        g.observe(&front, &client_span(6, "api.example", 9), t0, &mut h);
        // A database call is an edge at once.
        let mut query = client_span(7, "db", 1);
        query.attributes.push(KeyValue::new("db.system.name", "postgresql"));
        query.attributes.push(KeyValue::new("db.namespace", "shop"));
        g.observe(&front, &query, t0, &mut h);
        // A server whose client is on another host never pairs.
        let mut remote = server_span("/r", 200, 1);
        remote.parent_span_id = Some([8; 8]);
        g.observe(&orders, &remote, t0, &mut h);
        g.expire(t0 + Duration::from_millis(100), &mut h);
        assert_eq!(edges(&mut h).len(), 3, "the peer waits for its server first");
        g.expire(t0 + PAIR_WAIT, &mut h);
        let mut e = edges(&mut h);
        e.sort();
        assert_eq!(
            e,
            [
                r#""front",server="api.example",connection_type="virtual_node"} 1"#,
                r#""front",server="orders"} 1"#,
                r#""front",server="shop",connection_type="database"} 1"#,
                r#""user",server="front",connection_type="virtual_node"} 1"#,
            ]
        );
        assert_eq!(g.unpaired_and_dropped(), (1, 0));
        let text = prometheus_text(&h.collect(Temporality::Cumulative, 1));
        assert!(text.contains("# TYPE traces_service_graph_request_total counter"), "{text}");
        assert!(text.contains(r#"traces_service_graph_request_failed_total{job="front",instance="h:1",client="front",server="orders"} 1"#), "{text}");
        assert!(text.contains(r#"traces_service_graph_request_server_seconds_bucket{job="front",instance="h:1",client="front",server="orders",le="0.005"} 1"#), "{text}");
        assert!(text.contains(r#"traces_service_graph_request_client_seconds_count{job="front",instance="h:1",client="front",server="orders"} 1"#), "{text}");
        let bytes =
            encode_metrics(&h.collect(Temporality::Cumulative, 1), Temporality::Cumulative, 1);
        let req = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let total = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == "traces_service_graph_request_total")
            .unwrap();
        let Some(pb::metric::Data::Sum(sum)) = &total.data else { panic!("a sum") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points.len(), 4);
    }

    #[test]
    fn metrics_follow_the_otlp_endpoint_unless_told_otherwise() {
        let c = MetricsConfig::from_env(env(&[]), None, None, None).unwrap();
        assert_eq!((c.otlp, c.prometheus), (None, None), "the terminal view needs no collector");
        let c = MetricsConfig::from_env(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://c:4318/v1/metrics");
        assert_eq!((c.interval, c.temporality), (Duration::from_secs(60), Temporality::Cumulative));
        let c = MetricsConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "LowMemory"),
            ]),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.otlp, None, "prometheus alone");
        assert_eq!(c.prometheus, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!((c.interval, c.temporality), (Duration::from_millis(500), Temporality::Delta));
        let grpc = MetricsConfig::from_env(
            env(&[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ]),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(grpc.otlp.unwrap().endpoint, "http://localhost:4317");
        let bad = MetricsConfig::from_env(
            env(&[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes")]),
            None,
            None,
            None,
        );
        assert!(matches!(bad, Err(ConfigError::Choice { .. })));
        let unknown = MetricsConfig::from_env(
            env(&[("OTEL_METRICS_EXPORTER", "otlp,logging")]),
            None,
            None,
            None,
        );
        assert!(matches!(unknown, Err(ConfigError::Choice { var: "OTEL_METRICS_EXPORTER", .. })));
    }
}

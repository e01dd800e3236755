//! Metrics over OTLP: every OTEL_METRIC_EXPORT_INTERVAL the histograms are collected, encoded
//! as an ExportMetricsServiceRequest and sent on a thread of their own, with the traces'
//! transport and retries; a last export goes out at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use trace::{AttributeValue, KeyValue, Shape};

use super::histograms::{Histograms, MetricPoints, Point, ProcessMetrics, Temporality};
use crate::encode::{SCOPE_NAME, SCOPE_VERSION};
use crate::otlp::{send_with_retry, Client, OtlpConfig};

fn any_value(v: &AttributeValue) -> pb_common::AnyValue {
    use pb_common::any_value::Value;
    let value = match v {
        AttributeValue::String(s) => Value::StringValue(s.to_string()),
        AttributeValue::Int(i) => Value::IntValue(*i),
        AttributeValue::Bool(b) => Value::BoolValue(*b),
    };
    pb_common::AnyValue { value: Some(value) }
}

pub(crate) fn key_value(key: &str, value: &AttributeValue) -> pb_common::KeyValue {
    pb_common::KeyValue { key: key.to_string(), value: Some(any_value(value)) }
}

fn attributes(point: &Point) -> Vec<pb_common::KeyValue> {
    point.attributes.iter().map(|KeyValue { key, value }| key_value(key, value)).collect()
}

/// A count's points: a monotonic sum.
fn sum(m: &MetricPoints, temporality: i32, now_unix_nanos: u64) -> pb::metric::Data {
    let data_points = m
        .points
        .iter()
        .map(|point| pb::NumberDataPoint {
            attributes: attributes(point),
            start_time_unix_nano: point.start_unix_nanos,
            time_unix_nano: now_unix_nanos,
            value: Some(pb::number_data_point::Value::AsInt(point.distribution.count as i64)),
            ..Default::default()
        })
        .collect();
    pb::metric::Data::Sum(pb::Sum {
        data_points,
        aggregation_temporality: temporality,
        is_monotonic: true,
    })
}

/// A histogram's points in their base-2 exponential buckets.
fn exponential(m: &MetricPoints, temporality: i32, now_unix_nanos: u64) -> pb::metric::Data {
    let data_points = m
        .points
        .iter()
        .filter_map(|point| {
            let d = &point.distribution;
            let e = d.exponential.as_ref()?;
            Some(pb::ExponentialHistogramDataPoint {
                attributes: attributes(point),
                start_time_unix_nano: point.start_unix_nanos,
                time_unix_nano: now_unix_nanos,
                count: d.count,
                sum: Some(d.sum),
                scale: e.scale,
                zero_count: e.zero_count,
                positive: Some(pb::exponential_histogram_data_point::Buckets {
                    offset: e.offset,
                    bucket_counts: e.counts.clone(),
                }),
                min: Some(d.min),
                max: Some(d.max),
                ..Default::default()
            })
        })
        .collect();
    pb::metric::Data::ExponentialHistogram(pb::ExponentialHistogram {
        data_points,
        aggregation_temporality: temporality,
    })
}

/// A histogram's points in the unit's explicit buckets.
fn explicit(m: &MetricPoints, temporality: i32, now_unix_nanos: u64) -> pb::metric::Data {
    let data_points = m
        .points
        .iter()
        .map(|point| {
            let d = &point.distribution;
            pb::HistogramDataPoint {
                attributes: attributes(point),
                start_time_unix_nano: point.start_unix_nanos,
                time_unix_nano: now_unix_nanos,
                count: d.count,
                sum: Some(d.sum),
                bucket_counts: d.buckets.clone(),
                explicit_bounds: m.metric.unit.boundaries().to_vec(),
                min: Some(d.min),
                max: Some(d.max),
                ..Default::default()
            }
        })
        .collect();
    pb::metric::Data::Histogram(pb::Histogram { data_points, aggregation_temporality: temporality })
}

fn metric(m: &MetricPoints, temporality: i32, now_unix_nanos: u64) -> pb::Metric {
    let exponential_kept = m.points.iter().any(|p| p.distribution.exponential.is_some());
    let (unit, data) = match m.metric.shape {
        Shape::Count => ("1", sum(m, temporality, now_unix_nanos)),
        Shape::Histogram if exponential_kept => {
            (m.metric.unit.ucum(), exponential(m, temporality, now_unix_nanos))
        }
        Shape::Histogram => (m.metric.unit.ucum(), explicit(m, temporality, now_unix_nanos)),
    };
    pb::Metric {
        name: m.metric.name.to_string(),
        description: m.metric.description.to_string(),
        unit: unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// The request for `processes`, each under its resource, taken at `now_unix_nanos`.
pub fn encode_metrics(
    processes: &[ProcessMetrics],
    temporality: Temporality,
    now_unix_nanos: u64,
) -> Vec<u8> {
    let temporality = match temporality {
        Temporality::Cumulative => pb::AggregationTemporality::Cumulative,
        Temporality::Delta => pb::AggregationTemporality::Delta,
    } as i32;
    let resource_metrics = processes
        .iter()
        .map(|p| pb::ResourceMetrics {
            resource: Some(Resource {
                attributes: p.resource.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                scope: Some(pb_common::InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: SCOPE_VERSION.to_string(),
                    ..Default::default()
                }),
                metrics: p.metrics.iter().map(|m| metric(m, temporality, now_unix_nanos)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }.encode_to_vec()
}

/// What the metrics exporter did, for the agent's status lines.
#[derive(Debug, Default)]
pub struct MetricsExportStats {
    pub exports: AtomicU64,
    pub failed: AtomicU64,
}

pub struct MetricsExporter {
    closing: tokio::sync::watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
    stats: Arc<MetricsExportStats>,
}

impl MetricsExporter {
    /// Exports `histograms` every `interval` as `temporality`; `alive` tells which processes
    /// still run (the series of the others go after their last export).
    pub fn start(
        config: OtlpConfig,
        histograms: Arc<Mutex<Histograms>>,
        interval: Duration,
        temporality: Temporality,
        alive: fn(u32) -> bool,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (closing, mut closing_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let stats = Arc::new(MetricsExportStats::default());
        let st = Arc::clone(&stats);
        std::thread::Builder::new().name("gotel-metrics-otlp".into()).spawn(move || {
            runtime.block_on(async move {
                let Some(mut client) = Client::new(&config) else { return };
                loop {
                    // A retry's wait may have seen shutdown begin already.
                    let last = *closing_rx.borrow()
                        || tokio::select! {
                            _ = tokio::time::sleep(interval) => false,
                            _ = closing_rx.changed() => true,
                        };
                    let (request, points) = {
                        let Ok(mut h) = histograms.lock() else { return };
                        let now = super::unix_nanos_now();
                        let processes = h.collect(temporality, now);
                        h.retain_processes(alive);
                        let points: usize =
                            processes.iter().flat_map(|p| &p.metrics).map(|m| m.points.len()).sum();
                        (encode_metrics(&processes, temporality, now), points)
                    };
                    if points > 0 {
                        let sent = send_with_retry(
                            &mut client,
                            &config,
                            Bytes::from(request),
                            (points as u64, "metric points"),
                            &mut closing_rx,
                        )
                        .await;
                        let counter = if sent { &st.exports } else { &st.failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if last {
                        break;
                    }
                }
            });
            let _ = done_tx.send(());
        })?;
        Ok(MetricsExporter { closing, done, stats })
    }

    /// (exports delivered, exports that failed)
    pub fn stats_snapshot(&self) -> (u64, u64) {
        (self.stats.exports.load(Ordering::Relaxed), self.stats.failed.load(Ordering::Relaxed))
    }

    /// Sends a last export, waiting at most `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        let _ = self.closing.send(true);
        self.done.recv_timeout(timeout).is_ok()
    }
}

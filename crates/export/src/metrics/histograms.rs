//! Duration histograms per process, metric and attribute set, from every span the probes saw.
//! The number of attribute sets per process and metric is capped: measurements past the cap go
//! to one overflow series (`otel.metric.overflow=true`, as the SDK specification does) and are
//! counted.

use std::collections::HashMap;
use std::sync::Arc;

use trace::{AttributeValue, DurationMetric, KeyValue, ProcessResource, Span};

use super::exponential::Exponential;

/// Attribute sets per process and metric, the overflow series included: the SDK's default
/// cardinality limit.
pub const DEFAULT_CARDINALITY_LIMIT: usize = 2000;

/// Counts, sum, extremes and bucket counts of some durations, in the metric's unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// One count per bucket: `boundaries.len() + 1`, the last one unbounded above.
    pub buckets: Vec<u64>,
    /// The same values in base-2 exponential buckets, when OTLP asks for those.
    pub exponential: Option<Exponential>,
}

impl Distribution {
    fn new(metric: &DurationMetric, exponential: bool) -> Self {
        Distribution {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: vec![0; metric.unit.boundaries().len() + 1],
            exponential: exponential.then(Exponential::default),
        }
    }

    fn record(&mut self, boundaries: &[f64], value: f64) {
        if let Some(e) = &mut self.exponential {
            e.record(value);
        }
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        // Buckets are (previous, boundary]: upper bounds inclusive, as OTLP and Prometheus say.
        let at = boundaries.partition_point(|&b| b < value);
        self.buckets[at] += 1;
    }
}

/// Which points an export carries: everything since the start, or since the last export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// One series' value as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attributes: Vec<KeyValue>,
    pub start_unix_nanos: u64,
    pub distribution: Distribution,
}

/// One metric's points for one process.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoints {
    pub metric: &'static DurationMetric,
    pub points: Vec<Point>,
}

/// Everything exported for one process, under its resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessMetrics {
    pub resource: Arc<ProcessResource>,
    pub metrics: Vec<MetricPoints>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    pid: u32,
    metric: &'static str,
    attributes: Vec<KeyValue>,
}

#[derive(Debug)]
struct Series {
    metric: &'static DurationMetric,
    start_unix_nanos: u64,
    total: Distribution,
    /// Since the last delta export.
    recent: Distribution,
}

pub struct Histograms {
    limit: usize,
    series: HashMap<SeriesKey, Series>,
    /// Attribute sets per (process, metric): what the cap counts.
    sets: HashMap<(u32, &'static str), usize>,
    resources: HashMap<u32, Arc<ProcessResource>>,
    /// Measurements that went to an overflow series.
    overflowed: u64,
    /// When the last delta export was taken: the next one's start.
    last_delta_unix_nanos: u64,
    /// Also keep base-2 exponential buckets.
    exponential: bool,
}

impl Histograms {
    /// Histograms capped at `limit` attribute sets per process and metric (at least 2: one set
    /// and the overflow series).
    pub fn new(limit: usize, now_unix_nanos: u64) -> Self {
        Histograms {
            limit: limit.max(2),
            series: HashMap::new(),
            sets: HashMap::new(),
            resources: HashMap::new(),
            overflowed: 0,
            last_delta_unix_nanos: now_unix_nanos,
            exponential: false,
        }
    }

    /// Histograms that keep base-2 exponential buckets too, for OTLP.
    pub fn with_exponential_buckets(mut self) -> Self {
        self.exponential = true;
        self
    }

    /// Counts `span`'s duration in `metric`, with the metric's attributes that the span has.
    pub fn record(
        &mut self,
        resource: &Arc<ProcessResource>,
        metric: &'static DurationMetric,
        span: &Span,
    ) {
        let attributes: Vec<KeyValue> = metric
            .attributes
            .iter()
            .filter_map(|k| span.attributes.iter().find(|a| a.key == *k).cloned())
            .collect();
        self.record_with(
            resource,
            metric,
            attributes,
            span.start_unix_nanos,
            span.duration_nanos(),
        );
    }

    /// Counts a duration of `nanos` that began at `start_unix_nanos` in `metric`, with
    /// `attributes`.
    pub fn record_with(
        &mut self,
        resource: &Arc<ProcessResource>,
        metric: &'static DurationMetric,
        attributes: Vec<KeyValue>,
        start_unix_nanos: u64,
        nanos: u64,
    ) {
        let pid = resource.pid;
        let mut key = SeriesKey { pid, metric: metric.name, attributes };
        if !self.series.contains_key(&key) {
            let sets = self.sets.entry((pid, metric.name)).or_insert(0);
            if *sets + 1 >= self.limit {
                self.overflowed += 1;
                key.attributes =
                    vec![KeyValue::new("otel.metric.overflow", AttributeValue::Bool(true))];
            }
            if !self.series.contains_key(&key) {
                *sets += 1;
                self.series.insert(
                    key.clone(),
                    Series {
                        metric,
                        start_unix_nanos,
                        total: Distribution::new(metric, self.exponential),
                        recent: Distribution::new(metric, self.exponential),
                    },
                );
                self.resources.entry(pid).or_insert_with(|| Arc::clone(resource));
            }
        }
        let series = self.series.get_mut(&key).expect("inserted above");
        let value = metric.unit.of_nanos(nanos);
        let boundaries = metric.unit.boundaries();
        series.total.record(boundaries, value);
        series.recent.record(boundaries, value);
    }

    /// Measurements that went to an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Series held now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The points to export now, grouped by process and metric, in a stable order. Delta
    /// points cover the time since the last delta export (series without measurements in it
    /// are left out) and start the next interval.
    pub fn collect(
        &mut self,
        temporality: Temporality,
        now_unix_nanos: u64,
    ) -> Vec<ProcessMetrics> {
        let delta_start = self.last_delta_unix_nanos;
        if temporality == Temporality::Delta {
            self.last_delta_unix_nanos = now_unix_nanos;
        }
        let mut by_process: Vec<ProcessMetrics> = Vec::new();
        let mut keys: Vec<(u32, &str, String, &SeriesKey)> = self
            .series
            .keys()
            .map(|k| {
                let shown: Vec<String> =
                    k.attributes.iter().map(|a| format!("{}={}", a.key, a.value)).collect();
                (k.pid, k.metric, shown.join(","), k)
            })
            .collect();
        keys.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let mut out: Vec<(u32, &'static DurationMetric, Point)> = Vec::new();
        for (.., key) in keys {
            let series = &self.series[key];
            let (start_unix_nanos, distribution) = match temporality {
                Temporality::Cumulative => (series.start_unix_nanos, series.total.clone()),
                Temporality::Delta if series.recent.count == 0 => continue,
                Temporality::Delta => (delta_start, series.recent.clone()),
            };
            out.push((
                key.pid,
                series.metric,
                Point { attributes: key.attributes.clone(), start_unix_nanos, distribution },
            ));
        }
        if temporality == Temporality::Delta {
            for series in self.series.values_mut() {
                series.recent = Distribution::new(series.metric, self.exponential);
            }
        }
        for (pid, metric, point) in out {
            if by_process.last().is_none_or(|p| p.resource.pid != pid) {
                let resource = Arc::clone(&self.resources[&pid]);
                by_process.push(ProcessMetrics { resource, metrics: Vec::new() });
            }
            let process = by_process.last_mut().expect("pushed above");
            if process.metrics.last().is_none_or(|m| m.metric.name != metric.name) {
                process.metrics.push(MetricPoints { metric, points: Vec::new() });
            }
            process.metrics.last_mut().expect("pushed above").points.push(point);
        }
        by_process
    }

    /// Drops the series of processes `alive` says are gone (after their last export).
    pub fn retain_processes(&mut self, alive: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self.resources.keys().copied().filter(|&pid| !alive(pid)).collect();
        for pid in gone {
            self.resources.remove(&pid);
            self.series.retain(|k, _| k.pid != pid);
            self.sets.retain(|(p, _), _| *p != pid);
        }
    }
}

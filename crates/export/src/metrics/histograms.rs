//! Duration histograms per process, metric and attribute set, from every span the probes saw.
//! The number of attribute sets per process and metric is capped: measurements past the cap go
//! to one overflow series (`otel.metric.overflow=true`, as the SDK specification does) and are
//! counted.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

    /// Counts `value`, which falls in bucket `at` (`bucket_of`).
    fn record(&mut self, at: usize, value: f64) {
        if let Some(e) = &mut self.exponential {
            e.record(value);
        }
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.buckets[at] += 1;
    }
}

/// The bucket of `value` among `boundaries`. Buckets are (previous, boundary]: upper bounds
/// inclusive, as OTLP and Prometheus say.
fn bucket_of(boundaries: &[f64], value: f64) -> usize {
    boundaries.partition_point(|&b| b < value)
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

#[derive(Debug)]
struct SeriesKey {
    pid: u32,
    /// Metrics are statics: one address each, compared as such.
    metric: &'static DurationMetric,
    attributes: Vec<KeyValue>,
}

impl SeriesKey {
    fn is<'a>(
        &self,
        pid: u32,
        metric: &'static DurationMetric,
        attributes: impl Iterator<Item = Attribute<'a>>,
    ) -> bool {
        self.pid == pid
            && std::ptr::eq(self.metric, metric)
            && same_attributes(&self.attributes, attributes)
    }
}

/// A fast hash for the few short strings of a series (the Fx hash of rustc): a measurement
/// is looked up by the hash of its borrowed attributes, and only a new series copies them.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.write_u64(u64::from_le_bytes(word.try_into().expect("chunks of 8")));
        }
        // The last few bytes folded into a word: no copy of a length only known at run time.
        let rest = words.remainder();
        if !rest.is_empty() {
            self.write_u64(rest.iter().rev().fold(0, |word, &b| word << 8 | u64::from(b)));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = BuildHasherDefault<FxHasher>;

/// An attribute's value as a measurement passes it in, borrowed: finding the series it counts
/// in allocates nothing, only filing a new series copies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a AttributeValue> for Value<'a> {
    fn from(v: &'a AttributeValue) -> Self {
        match v {
            AttributeValue::String(s) => Value::Str(s),
            AttributeValue::Int(i) => Value::Int(*i),
            AttributeValue::Bool(b) => Value::Bool(*b),
        }
    }
}

impl Value<'_> {
    fn to_owned(self) -> AttributeValue {
        match self {
            Value::Str(s) => AttributeValue::String(s.to_string().into()),
            Value::Int(i) => AttributeValue::Int(i),
            Value::Bool(b) => AttributeValue::Bool(b),
        }
    }
}

/// A borrowed attribute: (key, value).
pub type Attribute<'a> = (&'static str, Value<'a>);

fn borrowed(kv: &KeyValue) -> Attribute<'_> {
    (kv.key, Value::from(&kv.value))
}

/// Whether two attribute keys are the same. Keys are literals: the same one is often at the
/// same address, and others of one length mostly differ in their first byte; only the rest
/// take a call to memcmp (which were a tenth of the agent's time).
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.as_bytes().first() == b.as_bytes().first()
        && (std::ptr::eq(a, b) || a == b)
}

/// Whether a series' attributes are these, in this order.
fn same_attributes<'a>(owned: &[KeyValue], mut these: impl Iterator<Item = Attribute<'a>>) -> bool {
    owned.iter().all(|kv| {
        these
            .next()
            .is_some_and(|(key, value)| same_key(kv.key, key) && Value::from(&kv.value) == value)
    }) && these.next().is_none()
}

/// The hash of attributes' values. Their keys are not hashed: a metric's keys are few and
/// fixed, and they are compared when a series is found.
fn values_hash<'a>(attributes: impl Iterator<Item = Attribute<'a>>) -> u64 {
    let mut h = FxHasher::default();
    for (_, value) in attributes {
        match value {
            Value::Str(s) => {
                h.write(s.as_bytes());
                h.write_u64(s.len() as u64);
            }
            Value::Int(i) => h.write_u64(i as u64 ^ 1 << 62),
            Value::Bool(b) => h.write_u64(u64::from(b) ^ 2 << 62),
        }
    }
    h.finish()
}

/// The hash a series of attributes with `values` (`values_hash`) is filed under.
fn series_hash(values: u64, pid: u32, metric: &'static DurationMetric) -> u64 {
    let mut h = FxHasher(values);
    h.write_u64(u64::from(pid));
    h.write_u64(std::ptr::from_ref(metric) as u64);
    h.finish()
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
    /// By `series_hash`: the (almost always one) series of that hash.
    series: HashMap<u64, Vec<(SeriesKey, Series)>, Fx>,
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
            series: HashMap::default(),
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
        let attributes = metric
            .attributes
            .iter()
            .filter_map(|k| span.attributes.iter().find(|a| same_key(a.key, k)))
            .map(borrowed);
        let values = values_hash(attributes.clone());
        let nanos = span.duration_nanos();
        self.record_in(resource, metric, attributes, values, span.start_unix_nanos, nanos);
    }

    /// Counts each (metric, duration of nanoseconds) of `measurements`, all with `attributes`
    /// and begun at `start_unix_nanos`.
    pub(crate) fn record_with(
        &mut self,
        resource: &Arc<ProcessResource>,
        measurements: &[(&'static DurationMetric, u64)],
        attributes: &[Attribute<'_>],
        start_unix_nanos: u64,
    ) {
        let values = values_hash(attributes.iter().copied());
        for &(metric, nanos) in measurements {
            let attributes = attributes.iter().copied();
            self.record_in(resource, metric, attributes, values, start_unix_nanos, nanos);
        }
    }

    fn record_in<'a>(
        &mut self,
        resource: &Arc<ProcessResource>,
        metric: &'static DurationMetric,
        attributes: impl Iterator<Item = Attribute<'a>> + Clone,
        values: u64,
        start_unix_nanos: u64,
        nanos: u64,
    ) {
        let pid = resource.pid;
        let hash = series_hash(values, pid, metric);
        let filed = self.series.get_mut(&hash).and_then(|b| {
            let at = b.iter().position(|(k, _)| k.is(pid, metric, attributes.clone()))?;
            Some(&mut b[at].1)
        });
        let series = match filed {
            Some(series) => series,
            None => {
                let owned =
                    attributes.map(|(key, value)| KeyValue { key, value: value.to_owned() });
                let (hash, at) =
                    self.add_series(resource, metric, hash, owned.collect(), start_unix_nanos);
                &mut self.series.get_mut(&hash).expect("filed above")[at].1
            }
        };
        let value = metric.unit.of_nanos(nanos);
        let at = bucket_of(metric.unit.boundaries(), value);
        series.total.record(at, value);
        series.recent.record(at, value);
    }

    /// Files a new series, or past the cap finds (or files) the overflow series: where it is.
    fn add_series(
        &mut self,
        resource: &Arc<ProcessResource>,
        metric: &'static DurationMetric,
        mut hash: u64,
        mut attributes: Vec<KeyValue>,
        start_unix_nanos: u64,
    ) -> (u64, usize) {
        let pid = resource.pid;
        let sets = self.sets.entry((pid, metric.name)).or_insert(0);
        if *sets + 1 >= self.limit {
            self.overflowed += 1;
            attributes = vec![KeyValue::new("otel.metric.overflow", AttributeValue::Bool(true))];
            let overflow = || attributes.iter().map(borrowed);
            hash = series_hash(values_hash(overflow()), pid, metric);
            let filed = self.series.get(&hash);
            if let Some(at) =
                filed.and_then(|b| b.iter().position(|(k, _)| k.is(pid, metric, overflow())))
            {
                return (hash, at);
            }
        }
        *sets += 1;
        self.resources.entry(pid).or_insert_with(|| Arc::clone(resource));
        let series = Series {
            metric,
            start_unix_nanos,
            total: Distribution::new(metric, self.exponential),
            recent: Distribution::new(metric, self.exponential),
        };
        let filed = self.series.entry(hash).or_default();
        filed.push((SeriesKey { pid, metric, attributes }, series));
        (hash, filed.len() - 1)
    }

    /// Measurements that went to an overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
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
        let mut keys: Vec<(u32, &str, String, &SeriesKey, &Series)> = self
            .series
            .values()
            .flatten()
            .map(|(k, series)| {
                let shown: Vec<String> =
                    k.attributes.iter().map(|a| format!("{}={}", a.key, a.value)).collect();
                (k.pid, k.metric.name, shown.join(","), k, series)
            })
            .collect();
        keys.sort_unstable_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let mut out: Vec<(u32, &'static DurationMetric, Point)> = Vec::new();
        for (.., key, series) in keys {
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
            for (_, series) in self.series.values_mut().flatten() {
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
            self.series.retain(|_, filed| {
                filed.retain(|(k, _)| k.pid != pid);
                !filed.is_empty()
            });
            self.sets.retain(|(p, _), _| *p != pid);
        }
    }
}

//! The terminal view's line per service every few seconds: the rate, error share and latency
//! percentiles of its server spans (sampled or not) in the window just ended. Latencies are
//! kept in log-spaced buckets 2% wide, so a window costs the same memory at any rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trace::{ProcessResource, Span, SpanKind, Status};

/// Each bucket's upper bound is this factor times the previous one's.
const GROWTH: f64 = 1.02;

#[derive(Default)]
struct Window {
    requests: u64,
    errors: u64,
    /// Bucket index -> requests in it.
    latencies: BTreeMap<u32, u64>,
}

impl Window {
    fn record(&mut self, nanos: u64, failed: bool) {
        self.requests += 1;
        self.errors += u64::from(failed);
        let bucket = ((nanos.max(1) as f64).ln() / GROWTH.ln()).ceil() as u32;
        *self.latencies.entry(bucket).or_default() += 1;
    }

    /// The upper bound of the bucket holding the `q` quantile, in nanoseconds.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.requests as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&bucket, &n) in &self.latencies {
            seen += n;
            if seen >= rank {
                return GROWTH.powi(bucket as i32) as u64;
            }
        }
        0
    }
}

pub struct Summary {
    every: Duration,
    started: Instant,
    services: BTreeMap<String, Window>,
}

impl Summary {
    pub fn new(every: Duration, now: Instant) -> Self {
        Summary { every, started: now, services: BTreeMap::new() }
    }

    /// Counts `span` if it is a request a service served.
    pub fn count(&mut self, resource: &ProcessResource, span: &Span) {
        if span.kind != SpanKind::Server {
            return;
        }
        let window = match self.services.get_mut(resource.service_name()) {
            Some(w) => w,
            None => self.services.entry(resource.service_name().to_string()).or_default(),
        };
        window.record(span.duration_nanos(), matches!(span.status, Status::Error { .. }));
    }

    /// When the window is over: a line per service that served requests in it (none if no
    /// service did), and the next window begins.
    pub fn lines(&mut self, now: Instant) -> Option<Vec<String>> {
        let elapsed = now.duration_since(self.started);
        if elapsed < self.every {
            return None;
        }
        self.started = now;
        let seconds = elapsed.as_secs_f64();
        let lines = std::mem::take(&mut self.services)
            .into_iter()
            .map(|(service, w)| {
                format!(
                    "{service}: {:.1} req/s, {:.1}% errors, p50 {}, p99 {} (last {:.0} s)",
                    w.requests as f64 / seconds,
                    w.errors as f64 * 100.0 / w.requests as f64,
                    crate::console::format_duration(w.quantile(0.5)),
                    crate::console::format_duration(w.quantile(0.99)),
                    seconds
                )
            })
            .collect();
        Some(lines)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn span(kind: SpanKind, millis: u64, failed: bool) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            name: "GET".into(),
            kind,
            start_unix_nanos: 0,
            end_unix_nanos: millis * 1_000_000,
            attributes: vec![],
            status: if failed { Status::Error { message: String::new() } } else { Status::Unset },
            trace_state: String::new(),
            links: vec![],
        }
    }

    #[test]
    fn a_window_gives_rate_errors_and_percentiles_per_service() {
        let t0 = Instant::now();
        let mut s = Summary::new(Duration::from_secs(5), t0);
        let shop = Arc::new(ProcessResource {
            pid: 1,
            attributes: vec![("service.name".into(), "shop".into())],
        });
        for i in 1..=100 {
            s.count(&shop, &span(SpanKind::Server, i, i > 95));
        }
        s.count(&shop, &span(SpanKind::Client, 1000, true));
        assert_eq!(s.lines(t0 + Duration::from_secs(1)), None, "the window is not over");
        let lines = s.lines(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(lines.len(), 1);
        // p50 is 50 ms and p99 99 ms, each within a bucket (2%) above.
        assert!(lines[0].starts_with("shop: 20.0 req/s, 5.0% errors, p50 50."), "{}", lines[0]);
        assert!(lines[0].contains("p99 99.") || lines[0].contains("p99 100."), "{}", lines[0]);
        assert_eq!(s.lines(t0 + Duration::from_secs(10)), Some(vec![]), "a quiet window");
    }
}

//! The histograms in the Prometheus text format (0.0.4), named as the OpenTelemetry to
//! Prometheus compatibility specification says: dots to underscores, the unit as a suffix
//! (`http_server_request_duration_seconds`), each series labelled `job` (service.namespace/
//! service.name) and `instance` (service.instance.id, else host.name:process.pid, so two
//! processes of one service stay apart), and the rest of each resource in `target_info`. One
//! agent speaks for many services: scrape it with `honor_labels: true` to keep their labels.

use std::fmt::Write;

use trace::{AttributeValue, DurationMetric, DurationUnit, ProcessResource, Shape};

use super::histograms::ProcessMetrics;

/// A metric or label name as Prometheus allows it: [a-zA-Z_:][a-zA-Z0-9_:]*, the rest `_`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The family's name: a histogram's ends with its unit, a count's with `_total` (once).
fn family_name(metric: &DurationMetric) -> String {
    let suffix = match (metric.shape, metric.unit) {
        (Shape::Count, _) => "_total",
        (Shape::Histogram, DurationUnit::Seconds) => "_seconds",
        (Shape::Histogram, DurationUnit::Milliseconds) => "_milliseconds",
    };
    let name = sanitize(metric.name);
    match name.ends_with(suffix) {
        true => name,
        false => name + suffix,
    }
}

fn resource_str<'a>(resource: &'a ProcessResource, key: &str) -> Option<&'a str> {
    resource.attributes.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        AttributeValue::String(s) => Some(s.as_ref()),
        _ => None,
    })
}

/// `job="…",instance="…"` for a process's series.
fn identity(resource: &ProcessResource) -> String {
    let job = match resource_str(resource, "service.namespace") {
        Some(ns) => format!("{ns}/{}", resource.service_name()),
        None => resource.service_name().to_string(),
    };
    let instance = match resource_str(resource, "service.instance.id") {
        Some(id) => id.to_string(),
        None => format!("{}:{}", resource_str(resource, "host.name").unwrap_or(""), resource.pid),
    };
    format!("job=\"{}\",instance=\"{}\"", escape(&job), escape(&instance))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// The exposition of `processes` (cumulative points).
pub fn prometheus_text(processes: &[ProcessMetrics]) -> String {
    let mut out = String::new();
    if !processes.is_empty() {
        out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
        for p in processes {
            let mut labels = identity(&p.resource);
            for (k, v) in &p.resource.attributes {
                let _ = write!(labels, ",{}=\"{}\"", sanitize(k), escape(&v.to_string()));
            }
            let _ = writeln!(out, "target_info{{{labels}}} 1");
        }
    }
    // One family per metric, every process's series under it.
    let mut families: Vec<&'static trace::DurationMetric> = Vec::new();
    for m in processes.iter().flat_map(|p| &p.metrics) {
        if !families.iter().any(|f| f.name == m.metric.name) {
            families.push(m.metric);
        }
    }
    for metric in families {
        let name = family_name(metric);
        let kind = match metric.shape {
            Shape::Count => "counter",
            Shape::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", metric.description);
        let boundaries = metric.unit.boundaries();
        for p in processes {
            let id = identity(&p.resource);
            for m in p.metrics.iter().filter(|m| m.metric.name == metric.name) {
                for point in &m.points {
                    let mut labels = id.clone();
                    for a in &point.attributes {
                        let _ = write!(
                            labels,
                            ",{}=\"{}\"",
                            sanitize(a.key),
                            escape(&a.value.to_string())
                        );
                    }
                    let d = &point.distribution;
                    if metric.shape == Shape::Count {
                        let _ = writeln!(out, "{name}{{{labels}}} {}", d.count);
                        continue;
                    }
                    let mut cumulative = 0;
                    for (i, n) in d.buckets.iter().enumerate() {
                        cumulative += n;
                        let le = boundaries.get(i).copied().unwrap_or(f64::INFINITY);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                            number(le)
                        );
                    }
                    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", number(d.sum));
                    let _ = writeln!(out, "{name}_count{{{labels}}} {}", d.count);
                }
            }
        }
    }
    out
}

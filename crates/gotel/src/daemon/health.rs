//! The daemon's own health, served over HTTP: /metrics (Prometheus text format), /status (JSON,
//! read by `gotel status`) and /healthz. The collect loop publishes a snapshot; the server
//! thread only reads it.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use export::metrics::Histograms;

use crate::endpoint::{Limits, Response};
use serde_json::json;

/// Everything the endpoints report, as of the last publish.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessStatus>,
    pub executables: Vec<ExecutableStatus>,
    pub processes_seen: u64,
    pub processes_traced_total: u64,
    pub attach_failures: u64,
    pub spans: u64,
    pub spans_exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub dropped_implausible: u64,
    pub ringbuf_lost: u64,
    pub pods_known: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub pid: u32,
    pub service_name: String,
    pub exe: String,
    pub why: String,
    pub traced_after_ms: u128,
}

#[derive(Debug, Clone)]
pub struct ExecutableStatus {
    pub path: String,
    pub go_version: String,
    pub processes: usize,
    pub instrumentations: Vec<&'static str>,
}

#[derive(Clone)]
pub struct Health {
    started: Instant,
    snapshot: Arc<Mutex<Snapshot>>,
    /// The traced services' metrics, shown after the daemon's own.
    services: Option<Arc<Mutex<Histograms>>>,
}

impl Health {
    pub fn new(services: Option<Arc<Mutex<Histograms>>>) -> Self {
        Health { started: Instant::now(), snapshot: Arc::default(), services }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        if let Ok(mut s) = self.snapshot.lock() {
            *s = snapshot;
        }
    }

    fn current(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Serves the endpoints on a thread of their own.
    pub fn serve(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let health = self.clone();
        crate::endpoint::serve(addr, "gotel-metrics", Limits::default(), move |path| {
            let (body, content_type) = match path {
                "/metrics" => (health.prometheus(), crate::prometheus::CONTENT_TYPE),
                "/status" => (health.status_json(), "application/json"),
                "/healthz" => ("ok\n".to_string(), "text/plain"),
                _ => return None,
            };
            Some(Response { body, content_type })
        })?;
        Ok(())
    }

    pub fn prometheus(&self) -> String {
        let s = self.current();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP gotel_{name} {help}\n# TYPE gotel_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "gotel_{name}{labels} {value}");
            }
        };
        metric(
            "processes_instrumented",
            "gauge",
            "Processes being traced now.",
            &[("", s.processes.len() as u64)],
        );
        metric(
            "executables_attached",
            "gauge",
            "Executable files carrying probes now.",
            &[("", s.executables.len() as u64)],
        );
        metric(
            "processes_discovered_total",
            "counter",
            "User processes examined.",
            &[("", s.processes_seen)],
        );
        metric(
            "processes_traced_total",
            "counter",
            "Processes that started being traced.",
            &[("", s.processes_traced_total)],
        );
        metric(
            "attach_failures_total",
            "counter",
            "Executables gotel could not attach to.",
            &[("", s.attach_failures)],
        );
        metric("spans_total", "counter", "Spans assembled.", &[("", s.spans)]);
        metric(
            "spans_exported_total",
            "counter",
            "Spans accepted by the collector.",
            &[("", s.spans_exported)],
        );
        metric(
            "spans_dropped_total",
            "counter",
            "Spans lost, by reason.",
            &[
                ("{reason=\"queue_full\"}", s.dropped_queue_full),
                ("{reason=\"export_failed\"}", s.dropped_export_failed),
                ("{reason=\"implausible\"}", s.dropped_implausible),
                ("{reason=\"ringbuf_full\"}", s.ringbuf_lost),
            ],
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &[("", self.started.elapsed().as_secs())],
        );
        if let Some(pods) = s.pods_known {
            metric("kubernetes_pods", "gauge", "Pods known on this node.", &[("", pods as u64)]);
        }
        if let Some(services) = &self.services {
            out += &crate::prometheus::exposition(services);
        }
        out
    }

    pub fn status_json(&self) -> String {
        let s = self.current();
        let processes: Vec<_> = s
            .processes
            .iter()
            .map(|p| {
                json!({"pid": p.pid, "service_name": p.service_name, "exe": p.exe,
                       "why": p.why, "traced_after_ms": p.traced_after_ms})
            })
            .collect();
        let executables: Vec<_> = s
            .executables
            .iter()
            .map(|e| {
                json!({"path": e.path, "go_version": e.go_version, "processes": e.processes,
                       "instrumentations": e.instrumentations})
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "processes": processes,
            "executables": executables,
            "counters": {
                "processes_discovered": s.processes_seen,
                "processes_traced_total": s.processes_traced_total,
                "attach_failures": s.attach_failures,
                "spans": s.spans,
                "spans_exported": s.spans_exported,
                "dropped_queue_full": s.dropped_queue_full,
                "dropped_export_failed": s.dropped_export_failed,
                "dropped_implausible": s.dropped_implausible,
                "ringbuf_lost": s.ringbuf_lost,
            },
            "kubernetes_pods": s.pods_known,
        })
        .to_string()
    }
}

/// `gotel status`: asks the daemon at `addr` and prints what it says.
pub fn print_status(addr: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| {
        anyhow::anyhow!(
            "no gotel daemon answers on {addr} ({e}); is it running, with --metrics-addr?"
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("{addr} answered, but not as a gotel daemon: {e}"))?;
    let c = &v["counters"];
    println!(
        "gotel daemon {} up {} s: {} processes traced, {} executables attached",
        v["version"].as_str().unwrap_or("?"),
        v["uptime_seconds"],
        v["processes"].as_array().map_or(0, Vec::len),
        v["executables"].as_array().map_or(0, Vec::len),
    );
    println!(
        "spans: {} assembled, {} exported; dropped: {} queue full, {} export failed, {} implausible, \
         {} ring buffer full; attach failures: {}",
        c["spans"], c["spans_exported"], c["dropped_queue_full"], c["dropped_export_failed"],
        c["dropped_implausible"], c["ringbuf_lost"], c["attach_failures"],
    );
    for e in v["executables"].as_array().into_iter().flatten() {
        println!(
            "  {} ({}): {} processes, {}",
            e["path"].as_str().unwrap_or("?"),
            e["go_version"].as_str().unwrap_or("?"),
            e["processes"],
            e["instrumentations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    for p in v["processes"].as_array().into_iter().flatten() {
        println!(
            "  pid {:>7}  {:<24} {}  ({})",
            p["pid"],
            p["service_name"].as_str().unwrap_or("?"),
            p["exe"].as_str().unwrap_or("?"),
            p["why"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text() {
        let health = Health::new(None);
        health.publish(Snapshot {
            processes: vec![ProcessStatus {
                pid: 7,
                service_name: "shop".into(),
                exe: "/app/shop".into(),
                why: "instrument rule #1".into(),
                traced_after_ms: 120,
            }],
            spans: 10,
            ringbuf_lost: 2,
            ..Default::default()
        });
        let text = health.prometheus();
        assert!(text.contains(
            "# TYPE gotel_processes_instrumented gauge\ngotel_processes_instrumented 1\n"
        ));
        assert!(text.contains("gotel_spans_dropped_total{reason=\"ringbuf_full\"} 2\n"));
        assert!(text.contains("gotel_spans_total 10\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("gotel_"), "{line}");
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        }
        let status: serde_json::Value = serde_json::from_str(&health.status_json()).unwrap();
        assert_eq!(status["processes"][0]["service_name"], "shop");
        assert_eq!(status["counters"]["ringbuf_lost"], 2);
    }
}

//! `--prometheus-addr` (or OTEL_METRICS_EXPORTER=prometheus) for `run` and `attach`: the
//! services' metrics at /metrics in the Prometheus text format, served on a thread of its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use export::metrics::{prometheus_text, Histograms, Temporality};

/// The exposition of `histograms` as they stand (cumulative, as Prometheus expects).
pub fn exposition(histograms: &Mutex<Histograms>) -> String {
    match histograms.lock() {
        Ok(mut h) => {
            prometheus_text(&h.collect(Temporality::Cumulative, export::metrics::unix_nanos_now()))
        }
        Err(_) => String::new(),
    }
}

pub fn serve(addr: SocketAddr, histograms: Arc<Mutex<Histograms>>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("serving Prometheus metrics on {addr}: {e}"))?;
    std::thread::Builder::new().name("gotel-prometheus".into()).spawn(move || {
        for request in server.incoming_requests() {
            if request.url() != "/metrics" {
                let _ = request.respond(tiny_http::Response::empty(404));
                continue;
            }
            let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                .expect("a valid header");
            let body = exposition(&histograms);
            let _ = request.respond(tiny_http::Response::from_string(body).with_header(header));
            crate::memory::release_freed(); // an exposition of many series is megabytes
        }
    })?;
    Ok(())
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

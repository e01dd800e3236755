//! `--prometheus-addr` (or OTEL_METRICS_EXPORTER=prometheus) for `run` and `attach`: the
//! services' metrics at /metrics in the Prometheus text format, served on a thread of its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use export::metrics::{prometheus_text, Histograms, Temporality};

use crate::endpoint::{Limits, Response};

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
    crate::endpoint::serve(addr, "gotel-prometheus", Limits::default(), move |path| {
        (path == "/metrics")
            .then(|| Response { body: exposition(&histograms), content_type: CONTENT_TYPE })
    })?;
    Ok(())
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

//! The running agent: attach probes to executables, then read the ring buffer and hand spans
//! to the exporters until told to stop.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use export::console::Console;
use export::metrics::{Histograms, MetricsConfig, MetricsExporter, ServiceGraph, PAIR_WAIT};
use export::otlp::{OtlpConfig, OtlpExporter};
use goinfo::GoBinary;
use probes::inject::{InjectMode, Injection, Sides};
use probes::{Assembled, Assembler, AttachOptions, Attached, EventError, Selection, SharedMaps};
use trace::{AgentIdentity, ResourceCache};

use crate::cli::AgentArgs;

/// Probes attached to one executable.
pub struct Instrumented {
    pub go_version: String,
    attached: Vec<Attached>,
    /// Which ends of propagation at the socket layer have something to do.
    injection: Sides,
}

impl Instrumented {
    /// Which ends of propagation at the socket layer have something to do here.
    pub fn wants_injection(&self) -> Sides {
        self.injection
    }

    pub fn instrumentations(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.attached.iter().map(|a| a.instrumentation)
    }
}

/// An executable where no instrumentation applies (a Go program with no HTTP in it).
#[derive(Debug)]
pub struct NothingToInstrument(String);

impl std::fmt::Display for NothingToInstrument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nothing to instrument in {}", self.0)
    }
}

impl std::error::Error for NothingToInstrument {}

/// Analyses `exe` and attaches every instrumentation that applies, saying which do not and
/// why. `attach_path` names the same file as the kernel should resolve it (the path itself, or
/// /proc/PID/exe).
pub fn instrument(
    exe: &Path,
    attach_path: &Path,
    shared: &SharedMaps,
    options: AttachOptions,
) -> anyhow::Result<Instrumented> {
    let bin = GoBinary::open(exe)?;
    let go_version = bin.build_info().go_version.clone();
    let plans = probes::plan_all(&bin);
    let selection = Selection::of(&plans);
    let skipped: Vec<String> = selection.skipped.iter().map(|s| s.to_string()).collect();
    for skip in &skipped {
        tracing::info!("{}: skipped {skip}", exe.display());
    }
    if selection.attach.is_empty() {
        return Err(
            NothingToInstrument(format!("{}: {}", exe.display(), skipped.join("; "))).into()
        );
    }
    let injection = selection.injection();
    let (attached, failed) = selection.attach(attach_path, shared, options);
    for (name, e) in &failed {
        tracing::warn!("{}: {name} failed to attach, the others trace on: {e:#}", exe.display());
    }
    if attached.is_empty() {
        let reasons: Vec<String> = failed.iter().map(|(n, e)| format!("{n}: {e:#}")).collect();
        anyhow::bail!("attaching to {}: {}", exe.display(), reasons.join("; "));
    }
    drop(plans);
    drop(bin);
    // The binary and its DWARF were read into the heap.
    crate::memory::release_freed();
    for a in &attached {
        let links = if a.multi { "" } else { " (one uprobe per RET)" };
        tracing::info!(
            "attached {} to {} ({go_version}){links}: {}",
            a.instrumentation,
            exe.display(),
            a.probes.join("; ")
        );
    }
    Ok(Instrumented { go_version, attached, injection })
}

/// Decoded events -> spans -> exporters.
pub struct Pipeline {
    assembler: Assembler,
    console: Option<Console<std::io::Stdout>>,
    otlp: Option<OtlpExporter>,
    spans: u64,
    bad_events: u64,
    /// Processes already warned about implausible events (one warning each).
    warned_pids: std::collections::HashSet<u32>,
    /// Every span's duration, sampled or not, when metrics are on.
    histograms: Option<Arc<Mutex<Histograms>>>,
    /// Client and server spans paired into the service graph's edges (in `histograms`).
    graph: ServiceGraph,
    /// When the last drain of the ring buffer ended: the graph's halves wait (seconds) from
    /// then, with no clock read per span.
    drained_at: Instant,
    metrics_exporter: Option<MetricsExporter>,
    /// When series of processes that exited are dropped next, with no exporter to do it.
    next_metrics_sweep: Instant,
    /// Spans the sampler dropped, counted in metrics only.
    unsampled: u64,
}

/// How often the terminal view prints its line per service.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// How often series of exited processes are dropped when only Prometheus reads them.
const METRICS_SWEEP: Duration = Duration::from_secs(60);

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Pipeline {
    /// The pipeline `args` and the environment ask for; `serves_metrics` when an endpoint of
    /// the caller's (the daemon's /metrics) shows them, so they are counted whatever else is on.
    pub fn new(args: &AgentArgs, serves_metrics: bool) -> anyhow::Result<Self> {
        let otlp_config = OtlpConfig::from_env(
            |k| std::env::var(k).ok(),
            args.otlp_endpoint.clone(),
            args.otlp_protocol.clone(),
        )?;
        let otlp = match otlp_config {
            Some(cfg) => {
                tracing::info!("exporting spans over OTLP {} to {}", cfg.protocol, cfg.endpoint);
                Some(OtlpExporter::start(cfg).context("starting the OTLP exporter")?)
            }
            None => None,
        };
        let console = (otlp.is_none() || args.console).then(|| {
            let terminal = std::io::stdout().is_terminal();
            let console = Console::new(std::io::stdout(), !args.no_color && terminal);
            match terminal {
                true => console.with_summary(SUMMARY_EVERY),
                false => console,
            }
        });
        if console.is_some() && otlp.is_none() {
            tracing::info!("printing spans here (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)");
        }
        let identity = AgentIdentity::from_env(args.service_name.clone());
        let metrics = MetricsConfig::from_env(
            |k| std::env::var(k).ok(),
            args.otlp_endpoint.clone(),
            args.otlp_protocol.clone(),
            args.prometheus_addr,
        )?;
        let (histograms, metrics_exporter) = start_metrics(&metrics, serves_metrics)?;
        Ok(Pipeline {
            assembler: Assembler::new(ResourceCache::new(identity), args.span_options()),
            console,
            otlp,
            spans: 0,
            bad_events: 0,
            warned_pids: Default::default(),
            histograms,
            graph: ServiceGraph::default(),
            drained_at: Instant::now(),
            metrics_exporter,
            next_metrics_sweep: Instant::now() + METRICS_SWEEP,
            unsampled: 0,
        })
    }

    /// The histograms, when metrics are on: what a metrics endpoint shows.
    pub fn histograms(&self) -> Option<&Arc<Mutex<Histograms>>> {
        self.histograms.as_ref()
    }

    /// Whether spans the sampler dropped count here (metrics, the terminal's line per
    /// service): then the probes must write their events too.
    pub fn counts_unsampled(&self) -> bool {
        self.histograms.is_some() || self.console.as_ref().is_some_and(Console::summarizes)
    }

    pub fn resources(&mut self) -> &mut ResourceCache {
        self.assembler.resources()
    }

    fn on_sample(&mut self, bytes: &[u8]) {
        let Assembled { resource, span, sampled, metric } = match self.assembler.assemble(bytes) {
            Ok(assembled) => assembled,
            Err(EventError::Unreadable(e)) => {
                self.bad_events += 1;
                tracing::warn!(error = %e, "skipping an event gotel cannot read");
                return;
            }
            Err(EventError::Implausible { pid, why }) => {
                self.bad_events += 1;
                if self.warned_pids.insert(pid) {
                    tracing::warn!(
                        "pid {pid}: dropping spans that read wrong values ({why}): the field \
                         offsets for this executable are likely wrong; please report its Go \
                         version"
                    );
                }
                return;
            }
        };
        if let Some(mut h) = self.histograms.as_ref().and_then(|h| h.lock().ok()) {
            if let Some(metric) = metric {
                h.record(&resource, metric, &span);
            }
            self.graph.observe(&resource, &span, self.drained_at, &mut h);
        }
        if let Some(console) = &mut self.console {
            console.count(&resource, &span);
        }
        if !sampled {
            self.unsampled += 1;
            return;
        }
        self.spans += 1;
        match (&mut self.otlp, &mut self.console) {
            (Some(otlp), Some(console)) => {
                otlp.export(&resource, &span);
                console.push(resource, span);
            }
            (Some(otlp), None) => otlp.export(&resource, &span),
            (None, Some(console)) => console.push(resource, span),
            (None, None) => {}
        }
    }

    /// After each drain of the ring buffer: what has waited its time goes out.
    fn tick(&mut self) {
        let now = Instant::now();
        self.drained_at = now;
        if let Some(otlp) = &mut self.otlp {
            otlp.tick();
        }
        if let Some(console) = &mut self.console {
            console.tick(now);
        }
        if let Some(mut h) = self.histograms.as_ref().and_then(|h| h.lock().ok()) {
            self.graph.expire(now, &mut h);
            if self.metrics_exporter.is_none() && now >= self.next_metrics_sweep {
                h.retain_processes(process_alive);
                self.next_metrics_sweep = now + METRICS_SWEEP;
            }
        }
    }

    /// What the pipeline has counted so far.
    pub fn counters(&self) -> PipelineCounters {
        let (exported, dropped_queue_full, dropped_export_failed) =
            self.otlp.as_ref().map(OtlpExporter::stats_snapshot).unwrap_or_default();
        PipelineCounters {
            spans: self.spans,
            bad_events: self.bad_events,
            exported,
            dropped_queue_full,
            dropped_export_failed,
        }
    }

    /// Flushes every exporter and reports what happened.
    pub fn finish(mut self, shared: &SharedMaps, injection: Option<&Injection>) {
        self.tick();
        if let Some(console) = &mut self.console {
            console.flush();
        }
        let probe = shared.stats();
        let mut summary = format!("{} spans", self.spans);
        if let Some(mut otlp) = self.otlp.take() {
            let sent_all = otlp.shutdown(Duration::from_secs(5));
            let s = otlp.stats_snapshot();
            summary += &format!(
                ", {} exported, {} dropped (queue full), {} dropped (export failed)",
                s.0, s.1, s.2
            );
            if !sent_all {
                summary += ", export still pending at exit";
            }
        }
        if self.unsampled > 0 {
            summary += &format!(", {} unsampled (counted in metrics only)", self.unsampled);
        }
        if let Some(mut h) = self.histograms.as_ref().and_then(|h| h.lock().ok()) {
            // Clients still waiting for their server go to their peers, in the last export.
            self.graph.expire(Instant::now() + PAIR_WAIT, &mut h);
        }
        let (unpaired, graph_dropped) = self.graph.unpaired_and_dropped();
        if unpaired + graph_dropped > 0 {
            summary += &format!(
                ", service graph: {unpaired} server spans whose client was not seen here, \
                 {graph_dropped} spans not paired (too many waiting)"
            );
        }
        if let Some(mut metrics) = self.metrics_exporter.take() {
            let sent_all = metrics.shutdown(Duration::from_secs(5));
            let (exports, failed) = metrics.stats_snapshot();
            summary += &format!(", metrics exported {exports} times ({failed} failed)");
            if !sent_all {
                summary += ", the last metrics export still pending at exit";
            }
        }
        if let Some(h) = self.histograms.as_ref().and_then(|h| h.lock().ok()) {
            if h.overflowed() > 0 {
                summary += &format!(
                    ", {} measurements past the cardinality limit (in otel.metric.overflow \
                     series)",
                    h.overflowed()
                );
            }
        }
        if probe.ringbuf_full > 0 {
            summary += &format!(", {} lost in the kernel (ring buffer full)", probe.ringbuf_full);
        }
        if probe.requests_reused > 0 {
            summary += &format!(
                ", {} HTTP/2 requests whose Request was freed before they ended (no route \
                 pattern)",
                probe.requests_reused
            );
        }
        if probe.entries_repeated > 0 {
            summary += &format!(
                ", {} HTTP server entries run again as the stack grew (the request kept its \
                 span)",
                probe.entries_repeated
            );
        }
        if probe.returns_without_entry > 0 {
            summary += &format!(
                ", {} calls ended without a recorded start (in flight at attach)",
                probe.returns_without_entry
            );
        }
        if let Some(i) = injection.map(Injection::stats) {
            if probe.requests_on_older_connections > 0 {
                summary += &format!(
                    ", {} requests on connections opened before gotel started (left alone)",
                    probe.requests_on_older_connections
                );
            }
            summary += &format!(
                ", traceparent injected into {} requests ({} not HTTP/1.x, {} no room, {} \
                 dropped) and {} HTTP/2 streams",
                i.injected, i.skipped_not_http1, i.skipped_no_room, i.dropped, i.h2_injected
            );
            summary += &format!(
                ", {} TLS requests' spans sent in a TCP option ({} found no option space), {} \
                 received, {} HTTP/2 streams' over TLS sent ({} sharing a segment with a newer \
                 one, {} queue full), {} received",
                i.tls_sent,
                i.tls_no_space,
                i.tls_received,
                i.tls_streams_sent,
                i.tls_streams_shared,
                probe.tls_streams_full,
                i.tls_streams_received
            );
            let left_alone: Vec<String> = [
                (i.skipped_has_traceparent, "with a traceparent of their own"),
                (i.h2_skipped_split, "HEADERS frames cut across sends"),
                (i.h2_skipped_too_big, "HEADERS frames too big"),
                (i.h2_skipped_padded, "HEADERS frames padded"),
                (i.h2_lost, "HTTP/2 sockets whose frames made no sense"),
                (i.h2_partly_sent, "HTTP/2 sockets whose sends were queued in part"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            if !left_alone.is_empty() {
                summary += &format!(" (left alone: {})", left_alone.join(", "));
            }
        }
        if self.bad_events > 0 {
            summary += &format!(", {} unreadable or implausible events", self.bad_events);
        }
        tracing::info!("{summary}");
    }
}

/// The histograms and their OTLP exporter, as `config` asks (and with `serves_metrics`).
#[allow(clippy::type_complexity)]
fn start_metrics(
    config: &MetricsConfig,
    serves_metrics: bool,
) -> anyhow::Result<(Option<Arc<Mutex<Histograms>>>, Option<MetricsExporter>)> {
    if config.otlp.is_none() && config.prometheus.is_none() && !serves_metrics {
        return Ok((None, None));
    }
    let now = export::metrics::unix_nanos_now();
    let mut histograms = Histograms::new(config.cardinality_limit, now);
    if config.exponential && config.otlp.is_some() {
        histograms = histograms.with_exponential_buckets();
    }
    let histograms = Arc::new(Mutex::new(histograms));
    let exporter = match &config.otlp {
        Some(otlp) => {
            tracing::info!(
                "exporting metrics over OTLP {} to {} every {} ms ({:?})",
                otlp.protocol,
                otlp.endpoint,
                config.interval.as_millis(),
                config.temporality
            );
            let exporter = MetricsExporter::start(
                otlp.clone(),
                Arc::clone(&histograms),
                config.interval,
                config.temporality,
                process_alive,
            )
            .context("starting the OTLP metrics exporter")?;
            Some(exporter)
        }
        None => None,
    };
    crate::memory::map_large_allocations();
    if let Some(addr) = config.prometheus {
        crate::prometheus::serve(addr, Arc::clone(&histograms))?;
        tracing::info!("metrics in the Prometheus format on http://{addr}/metrics");
    }
    tracing::info!(
        "metrics: request durations from every span, sampled or not (the probes write events \
         for unsampled spans too)"
    );
    Ok((Some(histograms), exporter))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineCounters {
    pub spans: u64,
    pub bad_events: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
}

/// Reads events until `stop` says so (it is asked after every drain, and may look after the
/// pipeline), then drains and hands the pipeline back for `finish`.
pub fn collect(
    shared: &SharedMaps,
    pipeline: Pipeline,
    mut stop: impl FnMut(&mut Pipeline) -> bool,
) -> anyhow::Result<Pipeline> {
    let pipeline = Rc::new(RefCell::new(pipeline));
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    let sink = Rc::clone(&pipeline);
    builder
        .add(shared.events(), move |bytes: &[u8]| {
            sink.borrow_mut().on_sample(bytes);
            0
        })
        .context("reading the events ring buffer")?;
    let ring = builder.build().context("reading the events ring buffer")?;
    // Attaching took a while: the first events' time is from now.
    pipeline.borrow_mut().tick();
    loop {
        // The programs wake us only once plenty is waiting; the timeout picks up the rest.
        let _ = ring.poll(Duration::from_millis(50));
        let _ = ring.consume();
        pipeline.borrow_mut().tick();
        if stop(&mut pipeline.borrow_mut()) {
            let _ = ring.consume();
            break;
        }
    }
    drop(ring);
    Rc::try_unwrap(pipeline)
        .map(RefCell::into_inner)
        .map_err(|_| anyhow::anyhow!("internal: pipeline still borrowed"))
}

/// A stop flag raised by SIGINT or SIGTERM.
pub fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

pub fn stopped(flag: &std::sync::atomic::AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

/// What both warnings about a socket's receive side in the sockhash name as the cause.
const SOCKMAP_REGRESSION: &str =
    "the sockmap receive regression reported for 6.6.128+, 6.12.75+, 6.18.14+, 6.19+";

/// Starts propagation at the socket layer as asked, for `sides`, and says which paths are on.
pub fn start_propagation(shared: &SharedMaps, mode: InjectMode, sides: Sides) -> Option<Injection> {
    let always = "in-process across goroutines, same host through the TCP connection map, \
                  incoming traceparent headers";
    let injection = match mode {
        _ if sides == Sides::default() => {
            tracing::info!(
                "propagation: {always}; no HTTP or gRPC client or server traced, nothing to \
                 inject into"
            );
            return None;
        }
        InjectMode::Off => {
            tracing::info!(
                "propagation: {always}; outgoing injection off (--inject-traceparent=off)"
            );
            return None;
        }
        _ => Injection::start(shared, mode, sides),
    };
    match injection {
        Ok(i) if !i.sides.send => {
            tracing::info!(
                "propagation: {always}; client spans from other hosts' gotel in a TCP option \
                 (HTTP/1.1 and HTTP/2 over TLS) (sockops on {})",
                i.cgroup.display()
            );
            Some(i)
        }
        Ok(i) if i.receive_side.as_ref().is_ok_and(|c| !c.woken) => {
            tracing::warn!(
                "propagation: {always}; outgoing injection off: on this kernel a socket in a \
                 sockhash missed the wakeup for data it was waiting for ({SOCKMAP_REGRESSION}): \
                 enrolling client sockets could stall their programs"
            );
            None
        }
        Ok(i) => {
            let peers = if mode == InjectMode::All { "every peer" } else { "peers on other hosts" };
            tracing::info!(
                "propagation: {always}; traceparent injected into plaintext HTTP/1.1 requests \
                 and h2c streams (gRPC, net/http) to {peers}; HTTP/1.1 over TLS \
                 carries the client span in a TCP option, HTTP/2 over TLS (gRPC, net/http) the \
                 span of each stream{} (sockops on {})",
                if i.sides.receive { ", and this host's servers read it" } else { "" },
                i.cgroup.display()
            );
            match &i.receive_side {
                Ok(c) if !c.fionread_right => tracing::warn!(
                    "this kernel answers ioctl(FIONREAD) with 0 on sockets in a sockhash \
                     ({SOCKMAP_REGRESSION}): client sockets enrolled for injection read it so; \
                     Go's runtime never asks, and wakeups were seen to arrive; \
                     --inject-traceparent=off if a traced program calls it"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("the sockhash's receive side could not be checked: {e}"),
            }
            Some(i)
        }
        Err(e) => {
            tracing::warn!("propagation: {always}; outgoing injection off: {e}");
            None
        }
    }
}

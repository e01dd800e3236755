//! OTLP export, configured the way every OpenTelemetry SDK is (OTEL_EXPORTER_OTLP_* and
//! OTEL_BSP_*): spans are encoded into a batch as they come, and whole batches are sent on a
//! thread of its own so the probes' consumer never waits; when the queue is full, spans are
//! dropped and counted. The transport (HTTP or gRPC, with retries) is
//! shared with the metrics exporter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use trace::{ProcessResource, Span};

use crate::RequestEncoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value}: unsupported OTLP protocol (use grpc or http/protobuf)")]
    Protocol { var: &'static str, value: String },
    #[error("{var}={value}: not a number of milliseconds")]
    Number { var: &'static str, value: String },
    #[error("{var}={value}: an OTLP endpoint must start with http:// (TLS is not supported yet)")]
    Endpoint { var: &'static str, value: String },
    #[error("{var}={value}: use {choices}")]
    Choice { var: &'static str, value: String, choices: &'static str },
    #[error("{var}={value}: not an address to listen on")]
    Address { var: &'static str, value: String },
}

/// What an OTLP exporter sends: each has its own variables, HTTP path and gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

/// A signal's environment variables, after the generic OTEL_EXPORTER_OTLP_* ones.
struct SignalVars {
    protocol: &'static str,
    endpoint: &'static str,
    headers: &'static str,
    timeout: &'static str,
    exporter: &'static str,
    http_path: &'static str,
    grpc_path: &'static str,
}

impl Signal {
    fn vars(self) -> &'static SignalVars {
        match self {
            Signal::Traces => &SignalVars {
                protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                exporter: "OTEL_TRACES_EXPORTER",
                http_path: "/v1/traces",
                grpc_path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            },
            Signal::Metrics => &SignalVars {
                protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                exporter: "OTEL_METRICS_EXPORTER",
                http_path: "/v1/metrics",
                grpc_path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub signal: Signal,
    /// For HTTP the full URL of the traces resource; for gRPC the server's base URL.
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub max_batch_size: usize,
}

impl OtlpConfig {
    /// Reads the OTLP settings for spans; `None` when no endpoint is configured and
    /// OTEL_TRACES_EXPORTER does not ask for otlp. Flags (`endpoint`, `protocol`) beat the
    /// environment.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        endpoint: Option<String>,
        protocol: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        Self::for_signal(Signal::Traces, get, endpoint, protocol)
    }

    /// The settings of `signal`'s exporter: `None` when no endpoint is configured and its
    /// exporter variable (OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER) does not ask for otlp.
    pub(crate) fn for_signal(
        signal: Signal,
        get: impl Fn(&str) -> Option<String>,
        endpoint: Option<String>,
        protocol: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let vars = signal.vars();
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let (proto_var, proto_value) = match protocol {
            Some(p) => ("--otlp-protocol", Some(p)),
            None => match get(vars.protocol) {
                Some(p) => (vars.protocol, Some(p)),
                None => ("OTEL_EXPORTER_OTLP_PROTOCOL", get("OTEL_EXPORTER_OTLP_PROTOCOL")),
            },
        };
        let protocol = match proto_value.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(ConfigError::Protocol { var: proto_var, value: other.to_string() })
            }
        };
        // A signal-specific endpoint is used as is; a base endpoint gets the signal's path for
        // HTTP.
        let base = |e: &str| match protocol {
            Protocol::Grpc => e.to_string(),
            Protocol::HttpProtobuf => format!("{}{}", e.trim_end_matches('/'), vars.http_path),
        };
        let (var, url) = if let Some(e) = endpoint {
            ("--otlp-endpoint", Some(base(&e)))
        } else if let Some(e) = get(vars.endpoint) {
            (vars.endpoint, Some(e))
        } else if let Some(e) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(base(&e)))
        } else if get(vars.exporter).is_some_and(|v| v.split(',').any(|x| x.trim() == "otlp")) {
            let default = match protocol {
                Protocol::Grpc => "http://localhost:4317",
                Protocol::HttpProtobuf => "http://localhost:4318",
            };
            (vars.exporter, Some(base(default)))
        } else {
            ("", None)
        };
        let Some(endpoint) = url else { return Ok(None) };
        if !endpoint.starts_with("http://") {
            return Err(ConfigError::Endpoint { var, value: endpoint });
        }
        let millis = |var, default| number(get, var, default);
        let headers = get(vars.headers)
            .or_else(|| get("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| trace::parse_resource_attributes(&h))
            .unwrap_or_default();
        let timeout = match get(vars.timeout) {
            Some(_) => millis(vars.timeout, 10_000)?,
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
        };
        Ok(Some(OtlpConfig {
            signal,
            endpoint,
            protocol,
            headers,
            timeout: Duration::from_millis(timeout),
            schedule_delay: Duration::from_millis(millis("OTEL_BSP_SCHEDULE_DELAY", 5_000)?),
            max_queue_size: millis("OTEL_BSP_MAX_QUEUE_SIZE", 2_048)?.max(1) as usize,
            max_batch_size: millis("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.max(1) as usize,
        }))
    }
}

/// The number `var` holds (of `get`, blank as unset), else `default`.
pub(crate) fn number(
    get: impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(var).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Number { var, value: v }),
    }
}

/// What the exporter did, for the agent's status lines.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
}

/// An encoded export request and the spans it carries.
struct Request {
    bytes: Bytes,
    spans: usize,
}

pub struct OtlpExporter {
    /// Whole requests: one wakeup of the export thread per batch, not per span.
    tx: Option<mpsc::UnboundedSender<Request>>,
    /// Spans in requests the export thread has not taken yet: with the open request's,
    /// bounded by max_queue_size.
    queued: Arc<AtomicUsize>,
    /// The request being filled, encoded on the caller's thread as spans come.
    open: RequestEncoder,
    /// When the open request got its first span: it goes out a schedule delay later at most.
    opened: Instant,
    closing: tokio::sync::watch::Sender<bool>,
    stats: Arc<ExportStats>,
    done: std::sync::mpsc::Receiver<()>,
    config: OtlpConfig,
}

impl OtlpExporter {
    pub fn start(config: OtlpConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = std::sync::mpsc::channel();
        let stats = Arc::new(ExportStats::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let (cfg, st, q) = (config.clone(), Arc::clone(&stats), Arc::clone(&queued));
        std::thread::Builder::new().name("gotel-otlp".into()).spawn(move || {
            runtime.block_on(run(cfg, rx, q, closing_rx, st));
            let _ = done_tx.send(());
        })?;
        Ok(OtlpExporter {
            tx: Some(tx),
            queued,
            open: RequestEncoder::default(),
            opened: Instant::now(),
            closing,
            stats,
            done,
            config,
        })
    }

    /// Encodes `span` into the open request, which goes out once it holds a batch
    /// (OTEL_BSP_MAX_EXPORT_BATCH_SIZE). Never blocks: with the queue full
    /// (OTEL_BSP_MAX_QUEUE_SIZE) the span is dropped and counted.
    pub fn export(&mut self, resource: &Arc<ProcessResource>, span: &Span) {
        if self.tx.is_none() {
            return;
        }
        if self.queued.load(Ordering::Relaxed) + self.open.len() >= self.config.max_queue_size {
            self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.open.is_empty() {
            self.opened = Instant::now();
        }
        self.open.push(resource, span);
        if self.open.len() >= self.config.max_batch_size {
            self.send_open();
        }
    }

    /// Sends the open request once its first span has waited the schedule delay
    /// (OTEL_BSP_SCHEDULE_DELAY); call it now and then.
    pub fn tick(&mut self) {
        if !self.open.is_empty() && self.opened.elapsed() >= self.config.schedule_delay {
            self.send_open();
        }
    }

    fn send_open(&mut self) {
        let Some(tx) = &self.tx else { return };
        let spans = self.open.len();
        if spans == 0 {
            return;
        }
        let bytes = Bytes::from(self.open.finish());
        self.queued.fetch_add(spans, Ordering::Relaxed);
        if tx.send(Request { bytes, spans }).is_err() {
            self.queued.fetch_sub(spans, Ordering::Relaxed);
            self.stats.dropped_queue_full.fetch_add(spans as u64, Ordering::Relaxed);
        }
    }

    /// (exported, dropped because the queue was full, dropped because export failed)
    pub fn stats_snapshot(&self) -> (u64, u64, u64) {
        (
            self.stats.exported.load(Ordering::Relaxed),
            self.stats.dropped_queue_full.load(Ordering::Relaxed),
            self.stats.dropped_export_failed.load(Ordering::Relaxed),
        )
    }

    /// Sends the open request and what is queued, waiting at most `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        self.send_open();
        self.tx.take();
        let _ = self.closing.send(true);
        self.done.recv_timeout(timeout).is_ok()
    }
}

pub(crate) enum Client {
    Http(reqwest::Client),
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
}

impl Client {
    /// The client `config` asks for (inside a tokio runtime), or None after saying why not.
    pub(crate) fn new(config: &OtlpConfig) -> Option<Client> {
        match config.protocol {
            Protocol::HttpProtobuf => {
                match reqwest::Client::builder().timeout(config.timeout).build() {
                    Ok(c) => Some(Client::Http(c)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create the OTLP HTTP client; nothing will be exported");
                        None
                    }
                }
            }
            Protocol::Grpc => {
                match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
                    Ok(ep) => Some(Client::Grpc(tonic::client::Grpc::new(
                        ep.timeout(config.timeout).connect_lazy(),
                    ))),
                    Err(e) => {
                        tracing::error!(error = %e, endpoint = %config.endpoint, "bad OTLP gRPC endpoint");
                        None
                    }
                }
            }
        }
    }
}

async fn run(
    config: OtlpConfig,
    mut rx: mpsc::UnboundedReceiver<Request>,
    queued: Arc<AtomicUsize>,
    mut closing: tokio::sync::watch::Receiver<bool>,
    stats: Arc<ExportStats>,
) {
    let Some(mut client) = Client::new(&config) else { return };
    while let Some(Request { bytes, spans }) = rx.recv().await {
        queued.fetch_sub(spans, Ordering::Relaxed);
        let n = spans as u64;
        // Encoded once; a retry resends the same bytes.
        if send_with_retry(&mut client, &config, bytes, (n, "spans"), &mut closing).await {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        } else {
            stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Retries transient failures with exponential backoff, as the OTLP spec asks; gives up after
/// a budget, or at once when shutdown begins, and reports whether the request (of `items`, as
/// the log calls them) was delivered.
pub(crate) async fn send_with_retry(
    client: &mut Client,
    config: &OtlpConfig,
    request: Bytes,
    (items, what): (u64, &'static str),
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let budget = Duration::from_secs(30);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = match client {
            Client::Http(http) => send_http(http, config, request.clone()).await,
            Client::Grpc(grpc) => send_grpc(grpc, config, request.clone()).await,
        };
        match result {
            Ok(()) => return true,
            Err(Failure { retryable, message, retry_after }) => {
                let shutting_down = *closing.borrow();
                // The server's Retry-After, where it gave one, in place of our own backoff.
                let wait = retry_after.unwrap_or(backoff);
                if !retryable || shutting_down || started.elapsed() + wait > budget {
                    tracing::warn!(
                        endpoint = %config.endpoint,
                        error = %message,
                        "OTLP export failed; {items} {what} dropped"
                    );
                    return false;
                }
                tracing::debug!(error = %message, retry_in = ?wait, "OTLP export failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = closing.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

struct Failure {
    retryable: bool,
    message: String,
    /// How long the server asked us to wait (HTTP Retry-After, in seconds).
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable(message: String) -> Failure {
        Failure { retryable: true, message, retry_after: None }
    }
}

async fn send_http(
    http: &reqwest::Client,
    config: &OtlpConfig,
    request: Bytes,
) -> Result<(), Failure> {
    let mut req =
        http.post(&config.endpoint).header("content-type", "application/x-protobuf").body(request);
    for (k, v) in &config.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map(Duration::from_secs);
            Err(Failure {
                retryable: matches!(code, 429 | 502 | 503 | 504),
                message: format!("HTTP {code} from collector"),
                retry_after,
            })
        }
        Err(e) => Err(Failure::retryable(e.to_string())),
    }
}

async fn send_grpc(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    config: &OtlpConfig,
    request: Bytes,
) -> Result<(), Failure> {
    if let Err(e) = grpc.ready().await {
        return Err(Failure::retryable(format!("gRPC: {e}")));
    }
    let mut req = tonic::Request::new(request);
    for (k, v) in &config.headers {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()), v.parse())
        {
            req.metadata_mut().insert(k, v);
        }
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(config.signal.vars().grpc_path);
    match grpc.unary(req, path, EncodedCodec).await {
        Ok(_) => Ok(()),
        Err(status) => {
            use tonic::Code;
            let retryable = matches!(
                status.code(),
                Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::OutOfRange
                    | Code::Unavailable
                    | Code::DataLoss
            );
            Err(Failure {
                retryable,
                message: format!("gRPC {:?}: {}", status.code(), status.message()),
                retry_after: None,
            })
        }
    }
}

/// Sends a request already encoded and ignores the response's body: an Export*ServiceResponse
/// carries nothing gotel acts on.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment of `pairs` alone.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn nothing_configured_means_no_otlp() {
        assert_eq!(OtlpConfig::from_env(env(&[]), None, None), Ok(None));
    }

    #[test]
    fn http_is_the_default_and_the_base_endpoint_gets_the_traces_path() {
        let c = OtlpConfig::from_env(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.schedule_delay, Duration::from_secs(5));
        assert_eq!((c.max_queue_size, c.max_batch_size), (2048, 512));
    }

    #[test]
    fn the_traces_endpoint_is_used_as_is_and_grpc_keeps_the_base() {
        let c = OtlpConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9/custom"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret"),
            ]),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://c:9/custom");
        assert_eq!(c.schedule_delay, Duration::from_millis(200));
        assert_eq!(c.headers, vec![("api-key".to_string(), "s=cret".to_string())]);
        let g = OtlpConfig::from_env(env(&[]), Some("http://c:4317".into()), Some("grpc".into()))
            .unwrap()
            .unwrap();
        assert_eq!((g.protocol, g.endpoint.as_str()), (Protocol::Grpc, "http://c:4317"));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = OtlpConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
            None,
            None,
        );
        assert_eq!(
            e,
            Err(ConfigError::Protocol {
                var: "OTEL_EXPORTER_OTLP_PROTOCOL",
                value: "http/json".into()
            })
        );
        let e =
            OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")]), None, None);
        assert!(matches!(e, Err(ConfigError::Endpoint { .. })));
        let e = OtlpConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ]),
            None,
            None,
        );
        assert!(matches!(e, Err(ConfigError::Number { var: "OTEL_BSP_SCHEDULE_DELAY", .. })));
    }

    #[test]
    fn otel_traces_exporter_otlp_alone_uses_the_default_endpoint() {
        let c = OtlpConfig::from_env(env(&[("OTEL_TRACES_EXPORTER", "otlp")]), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn a_collector_that_is_down_costs_counted_drops_not_a_hang() {
        let mut cfg = OtlpConfig::from_env(env(&[]), Some("http://127.0.0.1:9".into()), None)
            .unwrap()
            .unwrap();
        cfg.schedule_delay = Duration::from_millis(10);
        cfg.max_queue_size = 4;
        let mut exporter = OtlpExporter::start(cfg).unwrap();
        let resource = Arc::new(ProcessResource { pid: 1, attributes: vec![] });
        let span = Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            name: "GET".into(),
            kind: trace::SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![],
            status: trace::Status::Unset,
            trace_state: String::new(),
            links: Vec::new(),
        };
        for _ in 0..100 {
            exporter.export(&resource, &span);
        }
        let (_, queue_full, _) = exporter.stats_snapshot();
        assert!(queue_full > 0, "a queue of 4 cannot take 100 spans at once");
        let started = Instant::now();
        assert!(exporter.shutdown(Duration::from_secs(10)), "shutdown finishes within its budget");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

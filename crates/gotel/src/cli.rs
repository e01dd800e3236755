//! Command-line arguments, turned once into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use probes::inject::InjectMode;
use probes::Placement;

#[derive(Debug, Parser)]
#[command(
    name = "gotel",
    version,
    about = "Zero-code OpenTelemetry for Go services, with eBPF",
    long_about = "Zero-code OpenTelemetry for Go services, with eBPF.\n\n\
        Spans are printed on the terminal unless an OTLP endpoint is configured \
        (--otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter for gotel's own messages (e.g. info, debug, gotel=debug).
    #[arg(long, global = true, env = "GOTEL_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a Go program with probes already attached, so its first request is traced.
    Run {
        #[command(flatten)]
        agent: AgentArgs,
        /// The program and its arguments.
        #[arg(required = true, last = true, value_name = "PROGRAM")]
        program: Vec<String>,
    },
    /// Instrument running processes: one by pid, or every process of an executable.
    Attach {
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        target: AttachTarget,
    },
    /// Instrument every selected Go process on this host, as they come and go (fleet mode).
    Daemon(DaemonArgs),
    /// Ask a running daemon what it instruments and what it has counted.
    Status {
        /// The daemon's metrics address.
        #[arg(long, env = "GOTEL_METRICS_ADDR", default_value = discovery::config::DEFAULT_METRICS_ADDR)]
        addr: String,
    },
    /// Show what gotel sees in a Go executable, and which instrumentations would apply.
    Inspect {
        /// Path to the executable.
        executable: PathBuf,
    },
}

/// Every key of the config file can be given here or in the environment instead (flags win).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// YAML config file (default: /etc/gotel/gotel.yaml when it exists).
    #[arg(long, env = "GOTEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print which processes would be instrumented and why, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// A rule selecting processes, replacing the file's `instrument` list (repeatable; in the
    /// environment separate rules with ';'): exe=GLOB,name=GLOB,ports=8000-8999,
    /// container=true,k8s.namespace=GLOB,k8s.pod=GLOB,k8s.label.KEY=GLOB,k8s.annotation.KEY=GLOB
    #[arg(long, env = "GOTEL_INSTRUMENT", value_delimiter = ';', value_name = "RULE")]
    pub instrument: Vec<String>,
    /// A rule excluding processes, replacing the file's `exclude` list (same form).
    #[arg(long, env = "GOTEL_EXCLUDE", value_delimiter = ';', value_name = "RULE")]
    pub exclude: Vec<String>,
    /// Keep the default exclusions (gotel, telemetry collectors, kube-system...)? true/false.
    #[arg(long, env = "GOTEL_DEFAULT_EXCLUDES")]
    pub default_excludes: Option<bool>,
    /// Where /metrics, /status and /healthz are served ("off" to disable).
    #[arg(long, env = "GOTEL_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// How often /proc is scanned for new processes (e.g. 250ms).
    #[arg(long, env = "GOTEL_POLL_INTERVAL")]
    pub poll_interval: Option<String>,
    /// Read pod metadata from the Kubernetes API: auto (when in a cluster), on or off.
    #[arg(long, env = "GOTEL_KUBERNETES")]
    pub kubernetes: Option<discovery::config::KubernetesMode>,
    /// This node's name, to watch only its pods (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "GOTEL_NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AttachTarget {
    /// A running process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// An executable file: every process running it, now and later.
    #[arg(long)]
    pub exe: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// service.name for processes that do not set OTEL_SERVICE_NAME themselves.
    #[arg(long)]
    pub service_name: Option<String>,
    /// OTLP base endpoint (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf (overrides OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long)]
    pub otlp_protocol: Option<String>,
    /// Serve the services' metrics at http://ADDR/metrics in the Prometheus text format (as
    /// OTEL_METRICS_EXPORTER=prometheus does at OTEL_EXPORTER_PROMETHEUS_HOST:PORT).
    #[arg(long, env = "GOTEL_PROMETHEUS_ADDR", value_name = "ADDR")]
    pub prometheus_addr: Option<std::net::SocketAddr>,
    /// Also print spans on the terminal when exporting over OTLP.
    #[arg(long)]
    pub console: bool,
    /// Never color the terminal view.
    #[arg(long)]
    pub no_color: bool,
    /// One uprobe per RET instead of one uprobe_multi link per function (for kernels before
    /// 6.6, or to compare).
    #[arg(long)]
    pub no_uprobe_multi: bool,
    /// Add a W3C traceparent line to outgoing plaintext HTTP/1.1 requests at the socket layer:
    /// off, remote (peers on other hosts; the default) or all (loopback peers too).
    #[arg(long, env = "GOTEL_INJECT_TRACEPARENT", value_parser = parse_inject)]
    pub inject_traceparent: Option<InjectMode>,
    /// Size of the ring buffer that carries events to gotel, in MiB (a power of two). Larger
    /// rides out longer stalls at high span rates; it counts twice in gotel's RSS.
    #[arg(long, env = "GOTEL_RING_BUFFER_MIB", default_value_t = probes::DEFAULT_RINGBUF_MIB,
          value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
    /// Where uprobes go: emulated (on instructions the kernel does not single-step, where the
    /// code allows; far cheaper on VMs) or entry-ret (function entry and every RET).
    #[arg(long, default_value = "emulated", value_parser = parse_placement)]
    pub probe_placement: Placement,
    /// db.query.text of database spans: sanitized (every literal replaced by ?, the default)
    /// or raw (as the application wrote it, values included: they may be secrets).
    #[arg(long, env = "GOTEL_DB_QUERY_TEXT", default_value = "sanitized",
          value_parser = parse_query_text)]
    pub db_query_text: QueryText,
}

/// How database spans show their queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryText {
    Sanitized,
    Raw,
}

fn parse_query_text(s: &str) -> Result<QueryText, String> {
    match s {
        "sanitized" => Ok(QueryText::Sanitized),
        "raw" => Ok(QueryText::Raw),
        other => Err(format!("{other:?}: use sanitized or raw")),
    }
}

impl AgentArgs {
    pub fn inject_mode(&self) -> InjectMode {
        self.inject_traceparent.unwrap_or(InjectMode::Remote)
    }

    pub fn span_options(&self) -> probes::SpanOptions {
        probes::SpanOptions { raw_db_queries: self.db_query_text == QueryText::Raw }
    }
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1024 => Ok(n),
        _ => Err(format!("{s:?}: a power of two from 1 to 1024")),
    }
}

fn parse_placement(s: &str) -> Result<Placement, String> {
    match s {
        "emulated" => Ok(Placement::Emulated),
        "entry-ret" => Ok(Placement::EntryRet),
        other => Err(format!("{other:?}: use emulated or entry-ret")),
    }
}

pub fn parse_inject(s: &str) -> Result<InjectMode, String> {
    [InjectMode::Off, InjectMode::Remote, InjectMode::All]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("{s:?}: use off, remote or all"))
}

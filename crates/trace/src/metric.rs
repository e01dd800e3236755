//! The duration histograms the semantic conventions define for kinds of spans: which one a
//! span counts in, and which of its attributes the histogram keeps (a bounded few: never a raw
//! path or a query); and the service graph's, which count pairs of spans.

/// One metric of durations: a semantic-convention histogram, or a count of them.
#[derive(Debug, PartialEq, Eq)]
pub struct DurationMetric {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: DurationUnit,
    pub shape: Shape,
    /// The span attributes a measurement keeps, in this order; those a span lacks are left out.
    pub attributes: &'static [&'static str],
}

/// What is exported of the durations measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Their distribution, in buckets.
    Histogram,
    /// How many there were: a monotonic sum.
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    Seconds,
    Milliseconds,
}

impl DurationUnit {
    /// The UCUM unit the conventions name.
    pub fn ucum(self) -> &'static str {
        match self {
            DurationUnit::Seconds => "s",
            DurationUnit::Milliseconds => "ms",
        }
    }

    pub fn of_nanos(self, nanos: u64) -> f64 {
        match self {
            DurationUnit::Seconds => nanos as f64 / 1e9,
            DurationUnit::Milliseconds => nanos as f64 / 1e6,
        }
    }

    /// The explicit bucket boundaries: those the conventions advise for durations in seconds,
    /// the SDK's default ones for milliseconds.
    pub fn boundaries(self) -> &'static [f64] {
        match self {
            DurationUnit::Seconds => {
                &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
            }
            DurationUnit::Milliseconds => &[
                0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0,
                5000.0, 7500.0, 10000.0,
            ],
        }
    }
}

pub static HTTP_SERVER_REQUEST_DURATION: DurationMetric = DurationMetric {
    name: "http.server.request.duration",
    description: "Duration of HTTP server requests.",
    unit: DurationUnit::Seconds,
    shape: Shape::Histogram,
    attributes: &[
        "http.request.method",
        "url.scheme",
        "http.route",
        "http.response.status_code",
        "error.type",
        "network.protocol.version",
    ],
};

pub static HTTP_CLIENT_REQUEST_DURATION: DurationMetric = DurationMetric {
    name: "http.client.request.duration",
    description: "Duration of HTTP client requests.",
    unit: DurationUnit::Seconds,
    shape: Shape::Histogram,
    attributes: &[
        "http.request.method",
        "server.address",
        "server.port",
        "http.response.status_code",
        "error.type",
        "network.protocol.version",
    ],
};

/// RPC metrics as of semantic conventions 1.37, which gotel's gRPC spans follow (rpc.system,
/// rpc.service, rpc.method, rpc.grpc.status_code); the conventions ask an instrumentation on
/// them to keep their names and units.
pub static RPC_SERVER_DURATION: DurationMetric = DurationMetric {
    name: "rpc.server.duration",
    description: "Measures the duration of inbound RPC.",
    unit: DurationUnit::Milliseconds,
    shape: Shape::Histogram,
    attributes: &["rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "error.type"],
};

pub static RPC_CLIENT_DURATION: DurationMetric = DurationMetric {
    name: "rpc.client.duration",
    description: "Measures the duration of outbound RPC.",
    unit: DurationUnit::Milliseconds,
    shape: Shape::Histogram,
    attributes: &[
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "rpc.grpc.status_code",
        "error.type",
        "server.address",
        "server.port",
    ],
};

pub static DB_CLIENT_OPERATION_DURATION: DurationMetric = DurationMetric {
    name: "db.client.operation.duration",
    description: "Duration of database client operations.",
    unit: DurationUnit::Seconds,
    shape: Shape::Histogram,
    attributes: &[
        "db.system.name",
        "db.namespace",
        "db.operation.name",
        "db.collection.name",
        "db.response.status_code",
        "error.type",
        "server.address",
        "server.port",
    ],
};

/// The service graph's edges, as Tempo's metrics generator (and OBI) name them, so Grafana's
/// service graph reads them: the attributes are `client`, `server` and, for an edge to
/// something gotel does not trace itself, `connection_type` (`virtual_node`, `database`).
pub const SERVICE_GRAPH_ATTRIBUTES: &[&str] = &["client", "server", "connection_type"];

pub static SERVICE_GRAPH_REQUEST_TOTAL: DurationMetric = DurationMetric {
    name: "traces_service_graph_request_total",
    description: "Requests between two nodes of the service graph.",
    unit: DurationUnit::Seconds,
    shape: Shape::Count,
    attributes: SERVICE_GRAPH_ATTRIBUTES,
};

pub static SERVICE_GRAPH_REQUEST_FAILED_TOTAL: DurationMetric = DurationMetric {
    name: "traces_service_graph_request_failed_total",
    description: "Failed requests between two nodes of the service graph.",
    unit: DurationUnit::Seconds,
    shape: Shape::Count,
    attributes: SERVICE_GRAPH_ATTRIBUTES,
};

pub static SERVICE_GRAPH_REQUEST_SERVER: DurationMetric = DurationMetric {
    name: "traces_service_graph_request_server_seconds",
    description: "Durations of requests between two nodes, as the server saw them.",
    unit: DurationUnit::Seconds,
    shape: Shape::Histogram,
    attributes: SERVICE_GRAPH_ATTRIBUTES,
};

pub static SERVICE_GRAPH_REQUEST_CLIENT: DurationMetric = DurationMetric {
    name: "traces_service_graph_request_client_seconds",
    description: "Durations of requests between two nodes, as the client saw them.",
    unit: DurationUnit::Seconds,
    shape: Shape::Histogram,
    attributes: SERVICE_GRAPH_ATTRIBUTES,
};

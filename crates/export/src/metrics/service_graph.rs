//! The service graph: an edge per pair of services that talk, counted from every request
//! (sampled or not). A client span and the server span that is its child on this host make
//! one edge, `client` -> `server`. A client span whose server gotel does not see makes an edge
//! to what it says of its peer (`server.address`; a database call's `db.namespace` or
//! `db.system.name`, as `connection_type=database`); a server span without a parent, an edge
//! from `user`. Edges are recorded under the client's process (the server's for `user`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trace::metric::{
    SERVICE_GRAPH_REQUEST_CLIENT, SERVICE_GRAPH_REQUEST_FAILED_TOTAL, SERVICE_GRAPH_REQUEST_SERVER,
    SERVICE_GRAPH_REQUEST_TOTAL,
};
use trace::{AttributeValue, ProcessResource, Span, SpanKind, Status};

use super::histograms::Value;
use super::Histograms;

/// How long one half of a pair waits for the other (a server span usually ends first).
pub const PAIR_WAIT: Duration = Duration::from_secs(2);
/// Halves waiting at most: past it a new one is not kept, and counted.
const MAX_WAITING: usize = 65_536;

/// One span of a pair, as the edge needs it.
struct Half {
    resource: Arc<ProcessResource>,
    start_unix_nanos: u64,
    nanos: u64,
    failed: bool,
    /// A client's peer, should its server never show up.
    peer: Option<String>,
}

enum Waiting {
    Client(Half),
    Server(Half),
}

#[derive(Default)]
pub struct ServiceGraph {
    /// By the client span's id (a server span's parent).
    waiting: HashMap<[u8; 8], Waiting>,
    deadlines: VecDeque<([u8; 8], Instant)>,
    /// Server spans whose client never showed up (on another host, say).
    unpaired: u64,
    /// Halves not kept: too many waiting.
    dropped: u64,
}

impl ServiceGraph {
    /// Server spans whose client never showed up, and halves not kept.
    pub fn unpaired_and_dropped(&self) -> (u64, u64) {
        (self.unpaired, self.dropped)
    }

    /// Takes `span` as one half of an edge, or the whole of one.
    pub fn observe(
        &mut self,
        resource: &Arc<ProcessResource>,
        span: &Span,
        now: Instant,
        into: &mut Histograms,
    ) {
        let half = |peer| Half {
            resource: Arc::clone(resource),
            start_unix_nanos: span.start_unix_nanos,
            nanos: span.duration_nanos(),
            failed: matches!(span.status, Status::Error { .. }),
            peer,
        };
        match span.kind {
            SpanKind::Server => match span.parent_span_id {
                None => {
                    let server = half(None);
                    let name = server.resource.service_name();
                    record(into, &server, Edge::virtual_node("user", name, Some(&server), None));
                }
                Some(parent) => match self.waiting.remove(&parent) {
                    Some(Waiting::Client(client)) => pair(into, &client, &half(None)),
                    Some(other) => {
                        self.waiting.insert(parent, other);
                    }
                    None => self.wait(parent, Waiting::Server(half(None)), now),
                },
            },
            SpanKind::Client => {
                if let Some(db) = database(span) {
                    let client = half(None);
                    let mut edge = Edge::virtual_node(
                        client.resource.service_name(),
                        &db,
                        None,
                        Some(&client),
                    );
                    edge.connection_type = "database";
                    return record(into, &client, edge);
                }
                match self.waiting.remove(&span.span_id) {
                    Some(Waiting::Server(server)) => pair(into, &half(None), &server),
                    Some(other) => {
                        self.waiting.insert(span.span_id, other);
                    }
                    None => {
                        let peer = string(span, "server.address");
                        self.wait(span.span_id, Waiting::Client(half(peer)), now);
                    }
                }
            }
            SpanKind::Internal => {}
        }
    }

    /// Ends the halves that waited PAIR_WAIT: a client's edge goes to its peer.
    pub fn expire(&mut self, now: Instant, into: &mut Histograms) {
        while let Some(&(id, deadline)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            match self.waiting.remove(&id) {
                Some(Waiting::Client(c)) => {
                    let peer = c.peer.as_deref().unwrap_or("unknown");
                    let edge = Edge::virtual_node(c.resource.service_name(), peer, None, Some(&c));
                    record(into, &c, edge);
                }
                Some(Waiting::Server(_)) => self.unpaired += 1,
                None => {}
            }
        }
    }

    fn wait(&mut self, id: [u8; 8], half: Waiting, now: Instant) {
        if self.waiting.len() >= MAX_WAITING {
            self.dropped += 1;
            return;
        }
        self.waiting.insert(id, half);
        self.deadlines.push_back((id, now + PAIR_WAIT));
    }
}

fn string(span: &Span, key: &str) -> Option<String> {
    match span.attribute(key) {
        Some(AttributeValue::String(s)) if !s.is_empty() => Some(s.to_string()),
        _ => None,
    }
}

/// A database call's node: the database it is to, else the system.
fn database(span: &Span) -> Option<String> {
    string(span, "db.system.name")?;
    string(span, "db.namespace").or_else(|| string(span, "db.system.name"))
}

/// One request between two nodes, with what each side measured of it.
struct Edge<'a> {
    client: &'a str,
    server: &'a str,
    connection_type: &'static str,
    server_nanos: Option<u64>,
    client_nanos: Option<u64>,
    failed: bool,
}

impl<'a> Edge<'a> {
    /// An edge of which one side is a span here and the other only a name.
    fn virtual_node(
        client: &'a str,
        server: &'a str,
        server_half: Option<&Half>,
        client_half: Option<&Half>,
    ) -> Self {
        Edge {
            client,
            server,
            connection_type: "virtual_node",
            server_nanos: server_half.map(|h| h.nanos),
            client_nanos: client_half.map(|h| h.nanos),
            failed: server_half.or(client_half).is_some_and(|h| h.failed),
        }
    }
}

fn pair(into: &mut Histograms, client: &Half, server: &Half) {
    let edge = Edge {
        client: client.resource.service_name(),
        server: server.resource.service_name(),
        connection_type: "",
        server_nanos: Some(server.nanos),
        client_nanos: Some(client.nanos),
        failed: client.failed || server.failed,
    };
    record(into, client, edge);
}

/// Records `edge` under the process of `owner`, the span it is dated by.
fn record(into: &mut Histograms, owner: &Half, edge: Edge<'_>) {
    // Borrowed: the series exists but for a new edge, and finding it allocates nothing.
    let all = [
        ("client", Value::Str(edge.client)),
        ("server", Value::Str(edge.server)),
        ("connection_type", Value::Str(edge.connection_type)),
    ];
    let attributes = &all[..if edge.connection_type.is_empty() { 2 } else { 3 }];
    // Each metric of the edge: one hash of the attributes for all of them.
    let mut measurements = [(&SERVICE_GRAPH_REQUEST_TOTAL, 0); 4];
    let mut n = 1;
    let mut count = |metric, nanos| {
        measurements[n] = (metric, nanos);
        n += 1;
    };
    if edge.failed {
        count(&SERVICE_GRAPH_REQUEST_FAILED_TOTAL, 0);
    }
    if let Some(nanos) = edge.server_nanos {
        count(&SERVICE_GRAPH_REQUEST_SERVER, nanos);
    }
    if let Some(nanos) = edge.client_nanos {
        count(&SERVICE_GRAPH_REQUEST_CLIENT, nanos);
    }
    into.record_with(&owner.resource, &measurements[..n], attributes, owner.start_unix_nanos);
}

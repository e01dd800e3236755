//! Spans from probe events: clock conversion, OpenTelemetry semantic conventions and the
//! resource of the process each span came from.

mod clock;
mod http;
mod resource;
mod rpc;
mod span;

pub use clock::MonotonicClock;
pub use http::{http_client_span, http_server_span};
pub use resource::{
    parse_resource_attributes, AgentIdentity, ProcessHints, ProcessResource, ResourceCache,
};
pub use rpc::{grpc_client_span, grpc_server_span};
pub use span::{AttributeValue, KeyValue, Span, SpanKind, Status};

use std::sync::Arc;

use probes::event::Event;

/// Turns decoded events into spans with epoch times and their process's resource.
pub struct Assembler {
    clock: MonotonicClock,
    resources: ResourceCache,
}

impl Assembler {
    pub fn new(resources: ResourceCache) -> Self {
        Assembler { clock: MonotonicClock::new(), resources }
    }

    pub fn assemble(&mut self, event: Event) -> (Arc<ProcessResource>, Span) {
        self.clock.refresh_if_stale();
        let resource = self.resources.get(event.header().pid);
        let span = match event {
            Event::HttpServer(e) => http_server_span(e, &self.clock),
            Event::HttpClient(e) => http_client_span(e, &self.clock),
            Event::GrpcServer(e) => grpc_server_span(e, &self.clock),
            Event::GrpcClient(e) => grpc_client_span(e, &self.clock),
        };
        (resource, span)
    }

    pub fn resources(&mut self) -> &mut ResourceCache {
        &mut self.resources
    }
}

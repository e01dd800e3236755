//! A gRPC server span per the OpenTelemetry RPC semantic conventions for gRPC: an error only
//! for the codes that are the server's own failure.

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::GrpcServerEvent;
use crate::instrumentations::grpc::{code_name, push_rpc};

/// The status codes the conventions count as a server's own failure; the rest (NotFound,
/// InvalidArgument...) are the caller's business and leave the server span unset.
const SERVER_ERROR_CODES: &[i32] = &[2, 4, 12, 13, 14, 15];

pub(super) fn span(e: GrpcServerEvent, clock: &MonotonicClock) -> Span {
    let mut attrs = Vec::with_capacity(9);
    let name = push_rpc(&mut attrs, &e.method);
    if let Some(code) = e.status_code {
        attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if let Some((client, client_port, server_port)) = e.peer {
        attrs.push(KeyValue::new("server.port", i64::from(server_port)));
        attrs.push(KeyValue::new("client.address", client.to_string()));
        attrs.push(KeyValue::new("client.port", i64::from(client_port)));
    }
    let status = match e.status_code {
        Some(code) if SERVER_ERROR_CODES.contains(&code) => {
            attrs.push(KeyValue::new("error.type", code_name(code)));
            Status::Error { message: e.status_message }
        }
        _ => Status::Unset,
    };
    e.header.span(clock, name, SpanKind::Server, attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::AttributeValue;

    fn event(method: &str, code: Option<i32>) -> GrpcServerEvent {
        GrpcServerEvent {
            header: crate::event::SpanHeader {
                pid: 1,
                start_ns: 10,
                end_ns: 20,
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: [0; 8],
            },
            status_code: code,
            status_message: "boom".into(),
            method: method.into(),
            stream_id: 1,
            peer: Some(("10.0.0.2".parse().unwrap(), 41000, 50051)),
        }
    }

    #[test]
    fn names_and_attributes_follow_the_rpc_conventions() {
        let clock = MonotonicClock::new();
        let s = span(event("/demo.Greeter/SayHello", Some(0)), &clock);
        assert_eq!(s.name, "demo.Greeter/SayHello");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.attribute("rpc.system"), Some(&AttributeValue::from("grpc")));
        assert_eq!(s.attribute("rpc.service"), Some(&AttributeValue::from("demo.Greeter")));
        assert_eq!(s.attribute("rpc.method"), Some(&AttributeValue::from("SayHello")));
        assert_eq!(s.attribute("rpc.grpc.status_code"), Some(&AttributeValue::Int(0)));
        assert_eq!(s.attribute("server.port"), Some(&AttributeValue::Int(50051)));
        assert_eq!(s.attribute("client.address"), Some(&AttributeValue::from("10.0.0.2")));
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn server_errors_are_the_servers_codes_only() {
        let clock = MonotonicClock::new();
        let not_found = span(event("/a.B/C", Some(5)), &clock);
        assert_eq!(not_found.status, Status::Unset, "NOT_FOUND is the caller's");
        let internal = span(event("/a.B/C", Some(13)), &clock);
        assert_eq!(internal.status, Status::Error { message: "boom".into() });
        assert_eq!(internal.attribute("error.type"), Some(&AttributeValue::from("INTERNAL")));
        let odd = span(event("nonsense", None), &clock);
        assert_eq!(odd.name, "grpc");
        assert_eq!(odd.attribute("rpc.grpc.status_code"), None);
    }
}

//! gRPC events as spans, per the OpenTelemetry RPC semantic conventions for gRPC.

use std::borrow::Cow;

use probes::event::{GrpcClientEvent, GrpcServerEvent};

use crate::{KeyValue, MonotonicClock, Span, SpanKind, Status};

/// The status codes the conventions count as a server's own failure; the rest (NotFound,
/// InvalidArgument...) are the caller's business and leave the server span unset.
const SERVER_ERROR_CODES: &[i32] = &[2, 4, 12, 13, 14, 15];

const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// "/pkg.Service/Method" -> ("pkg.Service", "Method"), if it has that shape.
fn service_and_method(full: &str) -> Option<(&str, &str)> {
    let (service, method) = full.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

/// rpc.system, rpc.service and rpc.method; returns the span name.
fn push_rpc(attrs: &mut Vec<KeyValue>, full_method: &str) -> Cow<'static, str> {
    attrs.push(KeyValue::new("rpc.system", "grpc"));
    match service_and_method(full_method) {
        Some((service, method)) => {
            attrs.push(KeyValue::new("rpc.service", service.to_string()));
            attrs.push(KeyValue::new("rpc.method", method.to_string()));
            format!("{service}/{method}").into()
        }
        None => "grpc".into(),
    }
}

fn code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|c| CODE_NAMES.get(c)).copied().unwrap_or("UNKNOWN")
}

/// A CLIENT span: every status but OK is an error for the caller.
pub fn grpc_client_span(e: GrpcClientEvent, clock: &MonotonicClock) -> Span {
    let mut attrs = Vec::with_capacity(9);
    let name = push_rpc(&mut attrs, &e.method);
    attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(e.status_code)));
    // server.address is the target the application named; the socket's peer is the network's.
    let target = e.target.rsplit("///").next().unwrap_or(&e.target);
    let (host, port) = crate::http::split_host_port(target);
    if !host.is_empty() {
        attrs.push(KeyValue::new("server.address", host.to_string()));
    }
    match (port, e.peer) {
        (Some(port), _) => attrs.push(KeyValue::new("server.port", i64::from(port))),
        (None, Some((_, _, port))) => attrs.push(KeyValue::new("server.port", i64::from(port))),
        _ => {}
    }
    if let Some((address, _, port)) = e.peer {
        attrs.push(KeyValue::new("network.peer.address", address.to_string()));
        attrs.push(KeyValue::new("network.peer.port", i64::from(port)));
    }
    let status = if e.status_code != 0 {
        attrs.push(KeyValue::new("error.type", code_name(e.status_code)));
        Status::Error { message: e.status_message }
    } else {
        Status::Unset
    };
    crate::http::span(&e.header, clock, name, SpanKind::Client, attrs, status)
}

pub fn grpc_server_span(e: GrpcServerEvent, clock: &MonotonicClock) -> Span {
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
    crate::http::span(&e.header, clock, name, SpanKind::Server, attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttributeValue;
    use probes::event::{GrpcClientEvent, SpanHeader};

    fn event(method: &str, code: Option<i32>) -> GrpcServerEvent {
        GrpcServerEvent {
            header: SpanHeader {
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
        let s = grpc_server_span(event("/demo.Greeter/SayHello", Some(0)), &clock);
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
    fn client_spans_name_the_target_and_fail_on_any_code_but_ok() {
        let clock = MonotonicClock::new();
        let e = GrpcClientEvent {
            header: event("/a.B/C", None).header,
            status_code: 5,
            status_message: "no such user".into(),
            method: "/demo.Greeter/SayHello".into(),
            target: "dns:///greeter.shop:50051".into(),
            stream_id: 1,
            peer: Some(("10.1.2.3".parse().unwrap(), 40000, 50051)),
        };
        let s = grpc_client_span(e.clone(), &clock);
        assert_eq!(s.name, "demo.Greeter/SayHello");
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.attribute("server.address"), Some(&AttributeValue::from("greeter.shop")));
        assert_eq!(s.attribute("server.port"), Some(&AttributeValue::Int(50051)));
        assert_eq!(s.attribute("network.peer.address"), Some(&AttributeValue::from("10.1.2.3")));
        assert_eq!(s.attribute("error.type"), Some(&AttributeValue::from("NOT_FOUND")));
        assert_eq!(s.status, Status::Error { message: "no such user".into() });
        let ok = grpc_client_span(GrpcClientEvent { status_code: 0, ..e }, &clock);
        assert_eq!(ok.status, Status::Unset);
        assert_eq!(ok.attribute("rpc.grpc.status_code"), Some(&AttributeValue::Int(0)));
    }

    #[test]
    fn server_errors_are_the_servers_codes_only() {
        let clock = MonotonicClock::new();
        let not_found = grpc_server_span(event("/a.B/C", Some(5)), &clock);
        assert_eq!(not_found.status, Status::Unset, "NOT_FOUND is the caller's");
        let internal = grpc_server_span(event("/a.B/C", Some(13)), &clock);
        assert_eq!(internal.status, Status::Error { message: "boom".into() });
        assert_eq!(internal.attribute("error.type"), Some(&AttributeValue::from("INTERNAL")));
        let odd = grpc_server_span(event("nonsense", None), &clock);
        assert_eq!(odd.name, "grpc");
        assert_eq!(odd.attribute("rpc.grpc.status_code"), None);
    }
}

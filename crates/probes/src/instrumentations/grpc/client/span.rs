//! A gRPC client span per the OpenTelemetry RPC semantic conventions for gRPC: every status
//! but OK is an error for the caller.

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::GrpcClientEvent;
use crate::instrumentations::grpc::{code_name, push_rpc};
use crate::semconv::split_host_port;

pub(super) fn span(e: GrpcClientEvent, clock: &MonotonicClock) -> Span {
    let mut attrs = Vec::with_capacity(9);
    let name = push_rpc(&mut attrs, &e.method);
    attrs.push(KeyValue::new("rpc.grpc.status_code", i64::from(e.status_code)));
    // server.address is the target the application named; the socket's peer is the network's.
    let target = e.target.rsplit("///").next().unwrap_or(&e.target);
    let (host, port) = split_host_port(target);
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
    let mut span = e.header.span(clock, name, SpanKind::Client, attrs, status);
    span.links.extend(e.link);
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::AttributeValue;

    #[test]
    fn client_spans_name_the_target_and_fail_on_any_code_but_ok() {
        let clock = MonotonicClock::new();
        let e = GrpcClientEvent {
            header: crate::event::test_header(),
            status_code: 5,
            status_message: "no such user".into(),
            method: "/demo.Greeter/SayHello".into(),
            target: "dns:///greeter.shop:50051".into(),
            stream_id: 1,
            peer: Some(("10.1.2.3".parse().unwrap(), 40000, 50051)),
            link: None,
        };
        let s = span(e.clone(), &clock);
        assert_eq!(s.name, "demo.Greeter/SayHello");
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.attribute("server.address"), Some(&AttributeValue::from("greeter.shop")));
        assert_eq!(s.attribute("server.port"), Some(&AttributeValue::Int(50051)));
        assert_eq!(s.attribute("network.peer.address"), Some(&AttributeValue::from("10.1.2.3")));
        assert_eq!(s.attribute("error.type"), Some(&AttributeValue::from("NOT_FOUND")));
        assert_eq!(s.status, Status::Error { message: "no such user".into() });
        let ok = span(GrpcClientEvent { status_code: 0, ..e }, &clock);
        assert_eq!(ok.status, Status::Unset);
        assert_eq!(ok.attribute("rpc.grpc.status_code"), Some(&AttributeValue::Int(0)));
    }
}

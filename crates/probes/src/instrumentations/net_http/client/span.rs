//! An HTTP client span per the OpenTelemetry HTTP semantic conventions: named by method, an
//! error for 4xx, 5xx and transport failures.

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::HttpClientEvent;
use crate::instrumentations::net_http::{known_method, protocol_version, push_method};
use crate::semconv::split_host_port;

/// A CLIENT span per the HTTP client conventions: named by method, errors for 4xx/5xx and
/// transport failures. url.full never carries user:password (gotel does not read URL.User).
pub(super) fn span(e: HttpClientEvent, clock: &MonotonicClock) -> Span {
    let method = if e.method.is_empty() { "GET" } else { e.method.as_str() };
    let known = known_method(method);
    let mut attrs = Vec::with_capacity(10);
    push_method(&mut attrs, method, known);
    let scheme = if e.scheme.is_empty() { "http" } else { e.scheme.as_str() };
    let query = if e.query.is_empty() { String::new() } else { format!("?{}", e.query) };
    attrs.push(KeyValue::new("url.full", format!("{scheme}://{}{}{query}", e.host, e.path)));
    let (host, port) = split_host_port(&e.host);
    if !host.is_empty() {
        attrs.push(KeyValue::new("server.address", host.to_string()));
    }
    let default_port = match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    if let Some(port) = port.or(default_port) {
        attrs.push(KeyValue::new("server.port", i64::from(port)));
    }
    if e.status != 0 {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(e.status)));
    }
    if e.proto_major != 0 {
        let version = protocol_version(e.proto_major, e.proto_minor);
        attrs.push(KeyValue::new("network.protocol.version", version));
    }
    let status = if e.failed {
        attrs.push(KeyValue::new("error.type", "_OTHER"));
        Status::Error { message: "transport error".into() }
    } else if e.status >= 400 {
        attrs.push(KeyValue::new("error.type", e.status.to_string()));
        Status::Error { message: String::new() }
    } else {
        Status::Unset
    };
    let name = known.unwrap_or("HTTP").into();
    let mut span = e.header.span(clock, name, SpanKind::Client, attrs, status);
    span.links.extend(e.link);
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::AttributeValue;

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a AttributeValue> {
        s.attribute(k)
    }

    fn client(status: u16, failed: bool, host: &str) -> HttpClientEvent {
        HttpClientEvent {
            header: crate::event::SpanHeader {
                pid: 1,
                start_ns: 0,
                end_ns: 10,
                trace_id: [1; 16],
                span_id: [3; 8],
                parent_span_id: [2; 8],
            },
            status,
            proto_major: if failed { 0 } else { 1 },
            proto_minor: 1,
            failed,
            method: String::new(),
            scheme: "http".into(),
            host: host.into(),
            path: "/orders".into(),
            query: "id=7".into(),
            link: None,
        }
    }

    #[test]
    fn client_spans_follow_the_client_conventions() {
        let s = span(client(200, false, "b.internal"), &MonotonicClock::new());
        assert_eq!((s.name.as_ref(), s.kind), ("GET", SpanKind::Client));
        assert_eq!(s.parent_span_id, Some([2; 8]));
        assert_eq!(attr(&s, "url.full"), Some(&"http://b.internal/orders?id=7".into()));
        assert_eq!(attr(&s, "server.address"), Some(&"b.internal".into()));
        assert_eq!(attr(&s, "server.port"), Some(&80.into()), "the scheme's default port");
        assert_eq!(attr(&s, "network.protocol.version"), Some(&"1.1".into()));
        assert_eq!(s.status, Status::Unset);

        let s = span(client(404, false, "b:8080"), &MonotonicClock::new());
        assert_eq!(attr(&s, "server.port"), Some(&8080.into()));
        assert!(matches!(s.status, Status::Error { .. }), "4xx is a client error");
        assert_eq!(attr(&s, "error.type"), Some(&"404".into()));

        let s = span(client(0, true, "down:1"), &MonotonicClock::new());
        assert!(attr(&s, "http.response.status_code").is_none());
        assert_eq!(attr(&s, "error.type"), Some(&"_OTHER".into()));
        assert!(matches!(s.status, Status::Error { .. }));
    }
}

//! net/http server events as spans, per the OpenTelemetry HTTP semantic conventions
//! (stable since semconv 1.23).

use std::borrow::Cow;

use probes::event::{HttpClientEvent, HttpServerEvent, SpanHeader};

use crate::{KeyValue, MonotonicClock, Span, SpanKind, Status};

const KNOWN_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"];

/// The method as the conventions' constant, None for one they do not know.
fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|m| *m == method)
}

/// network.protocol.version: constants for the versions there are.
fn protocol_version(major: u8, minor: u8) -> Cow<'static, str> {
    match (major, minor) {
        (1, 1) => "1.1".into(),
        (1, 0) => "1.0".into(),
        (2, _) => "2".into(),
        (3, _) => "3".into(),
        (major, minor) => format!("{major}.{minor}").into(),
    }
}

/// The route of a ServeMux pattern "[METHOD ][HOST]/[PATH]": its path part.
fn route_of(pattern: &str) -> Option<&str> {
    let rest = match pattern.split_once(' ') {
        Some((method, rest)) if !method.contains('/') => rest.trim_start(),
        _ => pattern,
    };
    rest.find('/').map(|i| &rest[i..])
}

/// Splits "host:port", "[v6]:port", "host" into (host, port).
pub(crate) fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (s, None),
    }
}

/// Takes the event by value: its strings move into the span rather than being copied.
pub fn http_server_span(e: HttpServerEvent, clock: &MonotonicClock) -> Span {
    let known = known_method(&e.method);
    let route = route_of(&e.pattern);
    let name: Cow<'static, str> = match (known, route) {
        (Some(method), Some(route)) => format!("{method} {route}").into(),
        (Some(method), None) => method.into(),
        (None, Some(route)) => format!("HTTP {route}").into(),
        (None, None) => "HTTP".into(),
    };

    let mut attrs = Vec::with_capacity(14);
    push_method(&mut attrs, &e.method, known);
    attrs.push(KeyValue::new("url.path", e.path));
    if !e.query.is_empty() {
        attrs.push(KeyValue::new("url.query", e.query));
    }
    attrs.push(KeyValue::new("url.scheme", if e.tls { "https" } else { "http" }));
    if let Some(route) = route {
        attrs.push(KeyValue::new("http.route", route.to_string()));
    }
    // 0: the probe could not read it (HTTP/2 on a Go without known offsets).
    if e.status != 0 {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(e.status)));
    }
    attrs.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(e.proto_major, e.proto_minor),
    ));
    let (host, port) = split_host_port(&e.host);
    if !host.is_empty() {
        attrs.push(KeyValue::new("server.address", host.to_string()));
    }
    if let Some(port) = port {
        attrs.push(KeyValue::new("server.port", i64::from(port)));
    }
    let (client, client_port) = split_host_port(&e.remote_addr);
    if !client.is_empty() {
        attrs.push(KeyValue::new("client.address", client.to_string()));
    }
    if let Some(port) = client_port {
        attrs.push(KeyValue::new("client.port", i64::from(port)));
    }
    // Server spans are errors for 5xx only: a 4xx is the client's mistake.
    let status = if e.status >= 500 {
        attrs.push(KeyValue::new("error.type", e.status.to_string()));
        Status::Error { message: String::new() }
    } else {
        Status::Unset
    };

    let mut span = span(&e.header, clock, name, SpanKind::Server, attrs, status);
    span.trace_state = e.tracestate;
    span
}

/// A CLIENT span per the HTTP client conventions: named by method, errors for 4xx/5xx and
/// transport failures. url.full never carries user:password (gotel does not read URL.User).
pub fn http_client_span(e: HttpClientEvent, clock: &MonotonicClock) -> Span {
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
    span(&e.header, clock, name, SpanKind::Client, attrs, status)
}

/// http.request.method, as _OTHER plus the original for a method the conventions do not know.
fn push_method(attrs: &mut Vec<KeyValue>, method: &str, known: Option<&'static str>) {
    if let Some(method) = known {
        attrs.push(KeyValue::new("http.request.method", method));
    } else {
        attrs.push(KeyValue::new("http.request.method", "_OTHER"));
        attrs.push(KeyValue::new("http.request.method_original", method.to_string()));
    }
}

/// The span of an event: its ids, parent (none when all zero) and epoch times.
pub(crate) fn span(
    header: &SpanHeader,
    clock: &MonotonicClock,
    name: Cow<'static, str>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    status: Status,
) -> Span {
    let parent = header.parent_span_id;
    Span {
        trace_id: header.trace_id,
        span_id: header.span_id,
        parent_span_id: (parent != [0; 8]).then_some(parent),
        name,
        kind,
        start_unix_nanos: clock.to_unix_nanos(header.start_ns),
        end_unix_nanos: clock.to_unix_nanos(header.end_ns),
        attributes,
        status,
        trace_state: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttributeValue;

    fn event(method: &str, path: &str, query: &str, pattern: &str, status: u16) -> HttpServerEvent {
        HttpServerEvent {
            header: SpanHeader {
                pid: 1,
                start_ns: 1_000_000,
                end_ns: 51_000_000,
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_span_id: [0; 8],
            },
            status,
            proto_major: 1,
            proto_minor: 1,
            tls: false,
            method: method.into(),
            path: path.into(),
            query: query.into(),
            host: "localhost:8080".into(),
            remote_addr: "[::1]:40000".into(),
            pattern: pattern.into(),
            tracestate: String::new(),
        }
    }

    fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a AttributeValue> {
        s.attribute(k)
    }

    #[test]
    fn a_routed_request_is_named_by_method_and_route() {
        let s = http_server_span(
            event("GET", "/users/7", "x=1", "GET /users/{id}", 200),
            &MonotonicClock::new(),
        );
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.duration_nanos(), 50_000_000);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(attr(&s, "http.route"), Some(&"/users/{id}".into()));
        assert_eq!(attr(&s, "url.query"), Some(&"x=1".into()));
        assert_eq!(attr(&s, "server.address"), Some(&"localhost".into()));
        assert_eq!(attr(&s, "server.port"), Some(&8080.into()));
        assert_eq!(attr(&s, "client.address"), Some(&"::1".into()));
        assert_eq!(attr(&s, "client.port"), Some(&40000.into()));
        assert_eq!(attr(&s, "network.protocol.version"), Some(&"1.1".into()));
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn unrouted_5xx_and_unknown_methods() {
        let s = http_server_span(event("GET", "/x", "", "", 503), &MonotonicClock::new());
        assert_eq!(s.name, "GET");
        assert!(attr(&s, "url.query").is_none());
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "error.type"), Some(&"503".into()));

        let s = http_server_span(event("BREW", "/pot", "", "", 404), &MonotonicClock::new());
        assert_eq!(s.name, "HTTP");
        assert_eq!(attr(&s, "http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(attr(&s, "http.request.method_original"), Some(&"BREW".into()));
        assert_eq!(s.status, Status::Unset, "4xx is not a server error");
    }

    fn client(status: u16, failed: bool, host: &str) -> HttpClientEvent {
        HttpClientEvent {
            header: SpanHeader {
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
        }
    }

    #[test]
    fn client_spans_follow_the_client_conventions() {
        let s = http_client_span(client(200, false, "b.internal"), &MonotonicClock::new());
        assert_eq!((s.name.as_ref(), s.kind), ("GET", SpanKind::Client));
        assert_eq!(s.parent_span_id, Some([2; 8]));
        assert_eq!(attr(&s, "url.full"), Some(&"http://b.internal/orders?id=7".into()));
        assert_eq!(attr(&s, "server.address"), Some(&"b.internal".into()));
        assert_eq!(attr(&s, "server.port"), Some(&80.into()), "the scheme's default port");
        assert_eq!(attr(&s, "network.protocol.version"), Some(&"1.1".into()));
        assert_eq!(s.status, Status::Unset);

        let s = http_client_span(client(404, false, "b:8080"), &MonotonicClock::new());
        assert_eq!(attr(&s, "server.port"), Some(&8080.into()));
        assert!(matches!(s.status, Status::Error { .. }), "4xx is a client error");
        assert_eq!(attr(&s, "error.type"), Some(&"404".into()));

        let s = http_client_span(client(0, true, "down:1"), &MonotonicClock::new());
        assert!(attr(&s, "http.response.status_code").is_none());
        assert_eq!(attr(&s, "error.type"), Some(&"_OTHER".into()));
        assert!(matches!(s.status, Status::Error { .. }));
    }

    #[test]
    fn routes_from_patterns_with_and_without_method_or_host() {
        assert_eq!(route_of("GET /a/{b}"), Some("/a/{b}"));
        assert_eq!(route_of("/static/"), Some("/static/"));
        assert_eq!(route_of("example.com/x"), Some("/x"));
        assert_eq!(route_of("POST example.com/x"), Some("/x"));
        assert_eq!(route_of(""), None);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}

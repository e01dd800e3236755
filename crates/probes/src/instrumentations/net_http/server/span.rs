//! An HTTP server span per the OpenTelemetry HTTP semantic conventions: named `{method}
//! {route}`, an error for 5xx only.

use std::borrow::Cow;

use trace::{KeyValue, MonotonicClock, Span, SpanKind, Status};

use super::event::HttpServerEvent;
use crate::instrumentations::net_http::{known_method, protocol_version, push_method};
use crate::semconv::into_host_port;

/// The route of a ServeMux pattern "[METHOD ][HOST]/[PATH]": its path part.
fn route_of(pattern: &str) -> Option<&str> {
    let rest = match pattern.split_once(' ') {
        Some((method, rest)) if !method.contains('/') => rest.trim_start(),
        _ => pattern,
    };
    rest.find('/').map(|i| &rest[i..])
}

/// Takes the event by value: its strings move into the span rather than being copied.
pub(super) fn span(e: HttpServerEvent, clock: &MonotonicClock) -> Span {
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
    let (host, port) = into_host_port(e.host);
    if !host.is_empty() {
        attrs.push(KeyValue::new("server.address", host));
    }
    if let Some(port) = port {
        attrs.push(KeyValue::new("server.port", i64::from(port)));
    }
    let (client, client_port) = into_host_port(e.remote_addr);
    if !client.is_empty() {
        attrs.push(KeyValue::new("client.address", client));
    }
    if let Some(port) = client_port {
        attrs.push(KeyValue::new("client.port", i64::from(port)));
    }
    // Server spans are errors for 5xx only: a 4xx is the client's mistake. A handler that
    // panicked sent no whole response, whatever status it had set.
    let status = if e.panicked {
        attrs.push(KeyValue::new("error.type", "panic"));
        Status::Error { message: "the handler panicked".into() }
    } else if e.status >= 500 {
        attrs.push(KeyValue::new("error.type", e.status.to_string()));
        Status::Error { message: String::new() }
    } else {
        Status::Unset
    };

    let mut span = e.header.span(clock, name, SpanKind::Server, attrs, status);
    span.trace_state = e.tracestate;
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace::AttributeValue;

    fn event(method: &str, path: &str, query: &str, pattern: &str, status: u16) -> HttpServerEvent {
        HttpServerEvent {
            header: crate::event::SpanHeader {
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
            panicked: false,
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
        let s =
            span(event("GET", "/users/7", "x=1", "GET /users/{id}", 200), &MonotonicClock::new());
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
        let s = span(event("GET", "/x", "", "", 503), &MonotonicClock::new());
        assert_eq!(s.name, "GET");
        assert!(attr(&s, "url.query").is_none());
        assert!(matches!(s.status, Status::Error { .. }));
        assert_eq!(attr(&s, "error.type"), Some(&"503".into()));

        let s = span(event("BREW", "/pot", "", "", 404), &MonotonicClock::new());
        assert_eq!(s.name, "HTTP");
        assert_eq!(attr(&s, "http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(attr(&s, "http.request.method_original"), Some(&"BREW".into()));
        assert_eq!(s.status, Status::Unset, "4xx is not a server error");
    }

    #[test]
    fn a_handler_that_panicked_is_an_error_with_the_status_it_had_set() {
        let mut e = event("GET", "/panic", "", "GET /panic", 0);
        e.panicked = true;
        let s = span(e, &MonotonicClock::new());
        assert_eq!(s.name, "GET /panic");
        assert!(attr(&s, "http.response.status_code").is_none(), "no status was written");
        assert_eq!(attr(&s, "error.type"), Some(&"panic".into()));
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
}

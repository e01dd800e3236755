//! `struct http_server_event` (http_server.bpf.c): one request served.

use trace::{MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpServerEvent {
    pub header: SpanHeader,
    pub status: u16,
    pub proto_major: u8,
    pub proto_minor: u8,
    pub tls: bool,
    /// The handler panicked and net/http closed the connection: no response was finished.
    pub panicked: bool,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    pub remote_addr: String,
    /// The ServeMux pattern that matched ("GET /users/{id}"); empty when unknown.
    pub pattern: String,
    /// The W3C tracestate that came with an incoming traceparent.
    pub tracestate: String,
}

/// (length offset, bytes offset, capacity) of each captured string, in the struct's order.
const METHOD: (usize, usize, usize) = (64, 76, 16);
const PATH: (usize, usize, usize) = (66, 92, 256);
const QUERY: (usize, usize, usize) = (68, 348, 256);
const HOST: (usize, usize, usize) = (70, 604, 128);
const REMOTE_ADDR: (usize, usize, usize) = (72, 732, 64);
const PATTERN: (usize, usize, usize) = (74, 796, 128);
const TRACESTATE: (usize, usize, usize) = (924, 926, 256);

/// The bytes the BPF program would write for `e`: for tests and benchmarks of what follows.
pub fn encode(e: &HttpServerEvent) -> Vec<u8> {
    let mut b = EventBytes::new(HttpServerEvent::SIZE, super::KIND, &e.header);
    b.put(56, &e.status.to_le_bytes());
    b.put(58, &[e.proto_major, e.proto_minor, u8::from(e.tls), u8::from(e.panicked)]);
    let s = |(len_at, at, cap), v| (len_at, at, cap, v);
    b.strings(&[
        s(METHOD, &e.method),
        s(PATH, &e.path),
        s(QUERY, &e.query),
        s(HOST, &e.host),
        s(REMOTE_ADDR, &e.remote_addr),
        s(PATTERN, &e.pattern),
        s(TRACESTATE, &e.tracestate),
    ]);
    b.0
}

impl SpanEvent for HttpServerEvent {
    /// sizeof(struct http_server_event), padded to 8.
    const SIZE: usize = 1184;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let string = |(len_at, at, cap)| f.string(len_at, at, cap);
        HttpServerEvent {
            header: SpanHeader::decode(&f),
            status: f.u16(56),
            proto_major: f.u8(58),
            proto_minor: f.u8(59),
            tls: f.u8(60) != 0,
            panicked: f.u8(61) != 0,
            method: string(METHOD),
            path: string(PATH),
            query: string(QUERY),
            host: string(HOST),
            remote_addr: string(REMOTE_ADDR),
            pattern: string(PATTERN),
            tracestate: string(TRACESTATE),
        }
    }

    fn implausible(&self) -> Option<String> {
        if !super::super::is_token(&self.method) {
            return Some(format!(
                "a served request's HTTP method {:?} is not a method",
                self.method
            ));
        }
        if !(1..=3).contains(&self.proto_major) {
            return Some(format!("HTTP major version {} is not 1, 2 or 3", self.proto_major));
        }
        None
    }

    fn span(self, clock: &MonotonicClock, _: &SpanOptions) -> Span {
        super::span::span(self, clock)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> HttpServerEvent {
        HttpServerEvent {
            header: crate::event::test_header(),
            status: 404,
            proto_major: 1,
            proto_minor: 1,
            tls: false,
            panicked: false,
            method: "GET".into(),
            path: "/users/7".into(),
            query: "a=1".into(),
            host: "localhost:8080".into(),
            remote_addr: "127.0.0.1:5555".into(),
            pattern: "GET /users/{id}".into(),
            tracestate: "vendor=x".into(),
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(HttpServerEvent::decode(&encode(&e)), e);
    }

    #[test]
    fn values_that_cannot_be_what_the_fields_hold_are_implausible() {
        assert_eq!(sample().implausible(), None);
        let mut garbage = sample();
        garbage.method = "\u{1}\u{7f}x".into();
        assert!(garbage.implausible().unwrap().contains("not a method"));
        let mut bad_proto = sample();
        bad_proto.proto_major = 77;
        assert!(bad_proto.implausible().is_some());
    }

    #[test]
    fn a_captured_length_past_its_buffer_is_clamped() {
        let mut bytes = encode(&sample());
        bytes[64..66].copy_from_slice(&500u16.to_le_bytes()); // method_len beyond 16
        assert_eq!(HttpServerEvent::decode(&bytes).method.len(), 16);
    }
}

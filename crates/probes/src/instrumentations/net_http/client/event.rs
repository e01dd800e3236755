//! `struct http_client_event` (http_client.bpf.c): one call made by net/http's Transport.

use trace::{Link, MonotonicClock, Span};

use crate::event::{EventBytes, Fields, SpanEvent, SpanHeader};
use crate::SpanOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientEvent {
    pub header: SpanHeader,
    /// 0 when there was no response.
    pub status: u16,
    /// Of the response; 0 without one.
    pub proto_major: u8,
    pub proto_minor: u8,
    /// The round trip returned an error.
    pub failed: bool,
    pub method: String,
    pub scheme: String,
    /// URL host, with the port if the URL has one.
    pub host: String,
    pub path: String,
    pub query: String,
    /// The context of a traceparent the request carried already, with injection on.
    pub link: Option<Link>,
}

/// (length offset, bytes offset, capacity) of each captured string.
const METHOD: (usize, usize, usize) = (64, 76, 16);
const SCHEME: (usize, usize, usize) = (66, 92, 16);
const HOST: (usize, usize, usize) = (68, 108, 128);
const PATH: (usize, usize, usize) = (70, 236, 256);
const QUERY: (usize, usize, usize) = (72, 492, 256);
/// `struct span_link`.
const LINK: usize = 748;

/// The bytes the BPF program would write for `e`.
pub fn encode(e: &HttpClientEvent) -> Vec<u8> {
    let mut b = EventBytes::new(HttpClientEvent::SIZE, super::KIND, &e.header);
    b.put(56, &e.status.to_le_bytes());
    b.put(58, &[e.proto_major, e.proto_minor, u8::from(e.failed)]);
    let s = |(len_at, at, cap), v| (len_at, at, cap, v);
    b.strings(&[
        s(METHOD, &e.method),
        s(SCHEME, &e.scheme),
        s(HOST, &e.host),
        s(PATH, &e.path),
        s(QUERY, &e.query),
    ]);
    b.link(LINK, e.link);
    b.0
}

impl SpanEvent for HttpClientEvent {
    /// sizeof(struct http_client_event), padded to 8.
    const SIZE: usize = 784;

    fn decode(bytes: &[u8]) -> Self {
        let f = Fields(bytes);
        let string = |(len_at, at, cap)| f.string(len_at, at, cap);
        HttpClientEvent {
            header: SpanHeader::decode(&f),
            status: f.u16(56),
            proto_major: f.u8(58),
            proto_minor: f.u8(59),
            failed: f.u8(60) != 0,
            method: string(METHOD),
            scheme: string(SCHEME),
            host: string(HOST),
            path: string(PATH),
            query: string(QUERY),
            link: f.link(LINK),
        }
    }

    fn implausible(&self) -> Option<String> {
        // net/http sends "" as GET.
        let bad = !self.method.is_empty() && !super::super::is_token(&self.method);
        bad.then(|| format!("a client request's HTTP method {:?} is not a method", self.method))
    }

    fn span(self, clock: &MonotonicClock, _: &SpanOptions) -> Span {
        super::span::span(self, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = HttpClientEvent {
            header: crate::event::test_header(),
            status: 503,
            proto_major: 1,
            proto_minor: 1,
            failed: false,
            method: "POST".into(),
            scheme: "http".into(),
            host: "b.internal:8080".into(),
            path: "/orders".into(),
            query: "id=1".into(),
            link: Some(Link { trace_id: [7; 16], span_id: [8; 8], sampled: true }),
        };
        assert_eq!(HttpClientEvent::decode(&encode(&e)), e);
        assert_eq!(e.implausible(), None);
        let unset = HttpClientEvent { method: String::new(), ..e.clone() };
        assert_eq!(unset.implausible(), None, "an empty method is GET");
        let garbage = HttpClientEvent { method: "G\u{0}T".into(), ..e };
        assert!(garbage.implausible().is_some());
    }
}
